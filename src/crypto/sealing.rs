//! AES-256-GCM sealing: of data keys under the master key, and of secrets under a data
//! key (or, as the previous release did, directly under the master key).
//!
//! Layouts of a sealed blob:
//! - `[1][nonce: 12][ciphertext + tag]`: sealed by the key that opens it, known from
//!   context (a data key wrapped by the master key; a secret of the previous release);
//! - `[2][data key id: 4, big-endian][nonce: 12][ciphertext + tag]`: a secret sealed
//!   under that data key of the keyring.
//!
//! Nonces are random: at 96 bits the collision bound stays negligible for far more
//! values than one data key seals (NIST SP 800-38D, 2^32 messages per key), and
//! rotating the data key starts the count again.

use std::sync::Arc;

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN as AEAD_NONCE_LEN, Nonce, UnboundKey},
    cipher::{AES_256, EncryptingKey, UnboundCipherKey},
};
use zeroize::Zeroizing;

use super::{CryptoError, random};

const VERSION: u8 = 1;
const DATA_KEY_VERSION: u8 = 2;
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

    /// AES-256 of one block (ECB), for the master key's fingerprint
    /// (`crypto::master`): what a PKCS#11 token computes with CKM_AES_ECB.
    pub fn encrypt_block(&self, block: &[u8; 16]) -> Result<[u8; 16], CryptoError> {
        let key = UnboundCipherKey::new(&AES_256, self.expose())
            .and_then(EncryptingKey::ecb)
            .map_err(|_| CryptoError::Seal)?;
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
        self.seal_framed(&[VERSION], plaintext, aad)
    }

    /// `header`, then the nonce and the ciphertext with its tag.
    fn seal_framed(
        &self,
        header: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random::bytes()?;
        let mut out =
            Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(header);
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
        match sealed.split_first() {
            Some((&VERSION, rest)) => self.open_body(rest, aad),
            _ => Err(CryptoError::Open),
        }
    }

    /// Opens `[nonce][ciphertext + tag]`.
    fn open_body(&self, body: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if body.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce_bytes, ciphertext) = body.split_at(NONCE_LEN);
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

/// Which key opens a sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedUnder {
    /// Sealed directly under the master key (the previous release's secrets).
    MasterKey,
    DataKey(u32),
}

/// Reads the header of a sealed value; `Err` when it has none this version knows.
pub fn sealed_under(sealed: &[u8]) -> Result<SealedUnder, CryptoError> {
    match sealed {
        [VERSION, ..] => Ok(SealedUnder::MasterKey),
        [DATA_KEY_VERSION, a, b, c, d, ..] => {
            Ok(SealedUnder::DataKey(u32::from_be_bytes([*a, *b, *c, *d])))
        }
        _ => Err(CryptoError::Open),
    }
}

/// A data key of the keyring: AES-256-GCM, its id written into every value it seals.
#[derive(Clone)]
pub struct DataKey {
    id: u32,
    sealer: Sealer,
}

impl DataKey {
    /// `bytes` must be 32 bytes long (an unwrapped data key).
    pub fn new(id: u32, bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Open)?;
        Ok(Self {
            id,
            sealer: Sealer::new(&MasterKey::from_bytes(key)),
        })
    }

    /// 32 fresh random bytes for a new data key.
    pub fn generate_bytes() -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        Ok(Zeroizing::new(random::bytes()?))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut header = [DATA_KEY_VERSION; 5];
        header[1..].copy_from_slice(&self.id.to_be_bytes());
        self.sealer.seal_framed(&header, plaintext, aad)
    }

    /// Opens a value this key sealed; anything else is `Err`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match sealed_under(sealed)? {
            SealedUnder::DataKey(id) if id == self.id => self.sealer.open_body(&sealed[5..], aad),
            _ => Err(CryptoError::Open),
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
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
    fn data_keys_name_themselves_in_what_they_seal() {
        let key = DataKey::new(7, &[3; 32]).unwrap();
        let sealed = key.seal(b"kms_secret", b"billing").unwrap();
        assert_eq!(sealed_under(&sealed).unwrap(), SealedUnder::DataKey(7));
        assert_eq!(&*key.open(&sealed, b"billing").unwrap(), b"kms_secret");
        assert!(key.open(&sealed, b"payments").is_err());
        // Another id, or the same bytes under another id, does not open it.
        assert!(
            DataKey::new(8, &[3; 32])
                .unwrap()
                .open(&sealed, b"billing")
                .is_err()
        );
        assert!(
            DataKey::new(7, &[4; 32])
                .unwrap()
                .open(&sealed, b"billing")
                .is_err()
        );
        assert!(DataKey::new(7, &[3; 31]).is_err());
        let legacy = Sealer::new(&MasterKey::from_bytes([3; 32]))
            .seal(b"x", b"a")
            .unwrap();
        assert_eq!(sealed_under(&legacy).unwrap(), SealedUnder::MasterKey);
        assert!(key.open(&legacy, b"a").is_err());
        assert!(sealed_under(&[2, 0, 0]).is_err());
        assert!(sealed_under(&[]).is_err());
        assert!(format!("{key:?}").contains("id: 7"));
    }

    #[test]
    fn debug_redacts() {
        let key = MasterKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }
}
