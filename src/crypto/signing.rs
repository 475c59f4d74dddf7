//! Ed25519 signing keys for access tokens.

use zeroize::Zeroizing;

use super::{CryptoError, random};

/// PKCS#8 v1 header of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A fresh Ed25519 private key as PKCS#8 DER, from the OS CSPRNG.
pub fn generate_ed25519_pkcs8() -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let seed = Zeroizing::new(random::bytes::<32>()?);
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(seed.as_slice());
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_shape() {
        let der = generate_ed25519_pkcs8().unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], ED25519_PKCS8_PREFIX);
        assert_ne!(*der, *generate_ed25519_pkcs8().unwrap());
    }
}
