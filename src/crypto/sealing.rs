//! AES-256-GCM sealing of secrets under the master key.
//!
//! Layout of a sealed blob: `[version: 1][nonce: 12][ciphertext + tag]`. The version
//! byte leaves room for master-key rotation. Nonces are random: at 96 bits the collision
//! bound stays negligible for far more secrets than a KMS holds (NIST SP 800-38D, 2^32
//! messages per key).

use std::sync::Arc;

use aws_lc_rs::aead::{
    AES_256_GCM, Aad, LessSafeKey, NONCE_LEN as AEAD_NONCE_LEN, Nonce, UnboundKey,
};
use aws_lc_rs::cipher::{AES_256, EncryptingKey, UnboundCipherKey};
use zeroize::Zeroizing;

use super::{CryptoError, random};

const VERSION: u8 = 1;
const NONCE_LEN: usize = AEAD_NONCE_LEN;

/// The 32-byte master key. Its `Debug` prints nothing of the key.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_bytes(random::bytes()?))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// `E_K(block)`: one AES-256 block (ECB), for a fingerprint of the key that reveals
    /// nothing of it; a PKCS#11 master key computes the same inside its token
    /// (`Pkcs11Key::encrypt_block`).
    pub fn encrypt_block(&self, block: &[u8; 16]) -> Result<[u8; 16], CryptoError> {
        let key = UnboundCipherKey::new(&AES_256, self.expose()).map_err(|_| CryptoError::Seal)?;
        let key = EncryptingKey::ecb(key).map_err(|_| CryptoError::Seal)?;
        let mut out = *block;
        key.encrypt(&mut out).map_err(|_| CryptoError::Seal)?;
        Ok(out)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Seals and opens secrets; `aad` binds a ciphertext to its owner (the service name),
/// so a ciphertext moved to another row does not open.
///
/// "LessSafe" is aws-lc's name for a key that takes caller-made nonces: ours are fresh
/// random 96-bit values per seal (see the module comment).
#[derive(Clone)]
pub struct Sealer {
    cipher: Arc<LessSafeKey>,
}

impl Sealer {
    pub fn new(key: &MasterKey) -> Self {
        // A 32-byte key is exactly what AES-256-GCM takes, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
        Self {
            cipher: Arc::new(LessSafeKey::new(unbound)),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random::bytes()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        let mut in_out = plaintext.to_vec();
        self.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Seal)?;
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::Open)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce_bytes, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes.try_into().map_err(|_| CryptoError::Open)?;
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                in_out.as_mut_slice(),
            )
            .map_err(|_| CryptoError::Open)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&MasterKey::generate().unwrap())
    }

    #[test]
    fn round_trip() {
        let s = sealer();
        let sealed = s.seal(b"kms_secret", b"billing").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert!(!sealed.windows(10).any(|w| w == b"kms_secret"));
        assert_eq!(&*s.open(&sealed, b"billing").unwrap(), b"kms_secret");
    }

    #[test]
    fn nonces_differ() {
        let s = sealer();
        assert_ne!(s.seal(b"x", b"a").unwrap(), s.seal(b"x", b"a").unwrap());
    }

    #[test]
    fn wrong_aad_key_or_tamper_fails() {
        let s = sealer();
        let sealed = s.seal(b"secret", b"billing").unwrap();
        assert!(s.open(&sealed, b"payments").is_err());
        assert!(sealer().open(&sealed, b"billing").is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open(&tampered, b"billing").is_err());
        assert!(s.open(&[], b"billing").is_err());
        assert!(s.open(&[VERSION, 1, 2], b"billing").is_err());
    }

    /// Blobs sealed by earlier releases (with the RustCrypto `aes-gcm` crate) still
    /// open: AES-256-GCM is one algorithm whoever implements it. This blob was made in
    /// the same layout by a third implementation (OpenSSL, through Python's
    /// `cryptography`): key [7; 32], nonce 00..0b, AAD "billing", plaintext
    /// "kms_secret".
    #[test]
    fn opens_what_the_previous_implementation_sealed() {
        let s = Sealer::new(&MasterKey::from_bytes([7; 32]));
        let sealed = hex(FIXTURE);
        assert_eq!(&*s.open(&sealed, b"billing").unwrap(), b"kms_secret");
    }

    const FIXTURE: &str =
        "01000102030405060708090a0b73ec9a2f6e6cba3b12c6dd05aa6a93e31d9a269fecad355e9359";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// FIPS-197 appendix C.3, AES-256.
    #[test]
    fn encrypt_block_is_aes_256() {
        let key = MasterKey::from_bytes(std::array::from_fn(|i| i as u8));
        let block: [u8; 16] = hex("00112233445566778899aabbccddeeff").try_into().unwrap();
        let expected = hex("8ea2b7ca516745bfeafc49904b496089");
        assert_eq!(key.encrypt_block(&block).unwrap().to_vec(), expected);
    }

    #[test]
    fn debug_redacts() {
        let key = MasterKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }
}
