//! The master key: the root of the key hierarchy. It wraps the data keys of the
//! keyring and opens values the previous release sealed with it directly; it seals
//! nothing else. It lives in memory (from a file or the environment) or inside a
//! PKCS#11 token, where it is only ever used, never read.
//!
//! Its id is a non-secret fingerprint, the same wherever the key is: the first 8 bytes
//! of SHA-256 of the AES encryption of one fixed block, in hex, after `mk-`. The block
//! is not a GCM counter block of any seal (those start with a random 96-bit nonce), and
//! the hash hides even the one block the key encrypted.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{
    CryptoError, digest,
    pkcs11::Pkcs11Key,
    sealing::{MasterKey, Sealer},
};

/// The block whose encryption names the key.
const ID_BLOCK: [u8; 16] = *b"KMS master key 1";

#[derive(Clone)]
enum Backend {
    Software(Sealer),
    Pkcs11(Arc<Pkcs11Key>),
}

#[derive(Clone)]
pub struct Master {
    backend: Backend,
    id: String,
}

impl Master {
    pub fn software(key: &MasterKey) -> Result<Self, CryptoError> {
        let sealer = Sealer::new(key);
        let id = fingerprint(&key.encrypt_block(&ID_BLOCK)?);
        Ok(Self {
            backend: Backend::Software(sealer),
            id,
        })
    }

    /// A key inside a PKCS#11 token: every operation on it runs in the token.
    pub fn pkcs11(key: Pkcs11Key) -> Result<Self, CryptoError> {
        let id = fingerprint(&key.encrypt_block(&ID_BLOCK)?);
        Ok(Self {
            backend: Backend::Pkcs11(Arc::new(key)),
            id,
        })
    }

    /// The non-secret fingerprint, `mk-` and 16 hex digits.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// AES-256-GCM under the master key, in the sealing layout. Blocks on a token.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.backend {
            Backend::Software(sealer) => sealer.seal(plaintext, aad),
            Backend::Pkcs11(key) => key.seal(plaintext, aad),
        }
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match &self.backend {
            Backend::Software(sealer) => sealer.open(sealed, aad),
            Backend::Pkcs11(key) => key.open_sealed(sealed, aad),
        }
    }
}

fn fingerprint(encrypted: &[u8; 16]) -> String {
    let hash = digest::sha256(encrypted);
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("mk-{hex}")
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_names_the_key_without_revealing_it() {
        let a = Master::software(&MasterKey::from_bytes([7; 32])).unwrap();
        let again = Master::software(&MasterKey::from_bytes([7; 32])).unwrap();
        let b = Master::software(&MasterKey::from_bytes([8; 32])).unwrap();
        assert_eq!(a.id(), again.id());
        assert_ne!(a.id(), b.id());
        assert!(
            a.id().starts_with("mk-") && a.id().len() == 19,
            "{}",
            a.id()
        );
        assert!(!format!("{a:?}").contains("07"));
    }

    #[test]
    fn seals_and_opens_like_the_sealer() {
        let key = MasterKey::from_bytes([7; 32]);
        let master = Master::software(&key).unwrap();
        let sealed = master.seal(b"data key", b"aad").unwrap();
        assert_eq!(
            &*Sealer::new(&key).open(&sealed, b"aad").unwrap(),
            b"data key"
        );
        assert!(master.open(&sealed, b"other").is_err());
    }
}
