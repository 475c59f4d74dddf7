//! AES-256-GCM sealing of secrets under the master key.
//!
//! Layout of a sealed blob: `[version: 1][nonce: 12][ciphertext + tag]`. The version
//! byte leaves room for master-key rotation. Nonces are random: at 96 bits the collision
//! bound stays negligible for far more secrets than a KMS holds (NIST SP 800-38D, 2^32
//! messages per key).

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

use super::{CryptoError, random};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

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
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Seals and opens secrets; `aad` binds a ciphertext to its owner (the service name),
/// so a ciphertext moved to another row does not open.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    pub fn new(key: &MasterKey) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.expose().into()),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random::bytes()?;
        let nonce = Nonce::from(nonce_bytes);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::Open)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce_bytes, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes.try_into().map_err(|_| CryptoError::Open)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
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

    #[test]
    fn debug_redacts() {
        let key = MasterKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }
}
