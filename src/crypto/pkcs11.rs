//! The master key inside a PKCS#11 token (a hardware security module, or SoftHSM in
//! tests). The key never leaves the token: sealing, opening and the fingerprint block
//! are computed by the token (`C_Encrypt`/`C_Decrypt`).
//!
//! Sealed values have exactly the layout of [`super::sealing`]
//! (`[version 1][nonce 12][ciphertext + tag]`, AES-256-GCM, 128-bit tag): PKCS#11's
//! `CKM_AES_GCM` output is `ciphertext || tag`, as aws-lc's is. The nonce is ours
//! (random, 96 bits), never the token's, so the layout does not depend on the vendor.
//!
//! Each module is loaded and initialised once per process and never finalised: two
//! keys on the same module (the old and new master key during a rewrap) share it, and
//! PKCS#11 allows one `C_Initialize` per process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use zeroize::Zeroizing;

use super::{CryptoError, random};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;
const TAG_LEN: usize = 16;
const KEY_LEN: Ulong = Ulong::new(32);

const MODULE_SETTING: &str = "KMS_MASTER_KEY_PKCS11_MODULE";
const TOKEN_SETTING: &str = "KMS_MASTER_KEY_PKCS11_TOKEN_LABEL";
const PIN_SETTING: &str = "KMS_MASTER_KEY_PKCS11_PIN";
const KEY_SETTING: &str = "KMS_MASTER_KEY_PKCS11_KEY_LABEL";

/// Where the master key lives. `Debug` never prints the PIN.
#[derive(Clone)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: Zeroizing<String>,
    pub key_label: String,
}

impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("key_label", &self.key_label)
            .finish()
    }
}

/// Why the master key could not be opened. Each message starts with the setting to
/// fix; none carries the PIN.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("{MODULE_SETTING}: {path} cannot be used as a PKCS#11 module: {reason}")]
    Module { path: String, reason: String },
    #[error("{TOKEN_SETTING}: no token labelled {wanted:?}; tokens found: {found}")]
    TokenLabel { wanted: String, found: String },
    #[error("{PIN_SETTING}: the token {token:?} refused the login: {reason}")]
    Pin { token: String, reason: String },
    #[error("{KEY_SETTING}: {reason}")]
    KeyLabel { reason: String },
    /// A failure no setting explains (the token stopped answering, out of sessions...).
    #[error("PKCS#11 token {token:?}: {step} failed: {reason}")]
    Token {
        token: String,
        step: &'static str,
        reason: String,
    },
}

/// An AES-256 key held by a PKCS#11 token. `Send + Sync`; `Debug` names the token and
/// the key label only.
pub struct Pkcs11Key {
    module: Pkcs11,
    token_label: String,
    key_label: String,
    pin: AuthPin,
    /// A PKCS#11 session runs one operation at a time; calls are rare (start, data key
    /// rotation, rewrap), so one session behind a lock is enough.
    live: Mutex<Option<Live>>,
}

struct Live {
    session: Session,
    key: ObjectHandle,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Key {
    /// Loads the module, logs in to the token and finds the key; every failure names
    /// the setting at fault.
    pub fn open(settings: &Pkcs11Settings) -> Result<Self, Pkcs11Error> {
        let module = load_module(&settings.module)?;
        let key = Self {
            module,
            token_label: settings.token_label.clone(),
            key_label: settings.key_label.clone(),
            pin: AuthPin::from(settings.pin.as_str()),
            live: Mutex::new(None),
        };
        let live = key.connect(true)?;
        *key.lock() = Some(live);
        Ok(key)
    }

    /// AES-256-GCM inside the token, in the layout of [`super::sealing::Sealer::seal`].
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce: [u8; NONCE_LEN] = random::bytes()?;
        let sealed = self
            .with_session(|live| {
                let mut iv = nonce;
                let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
                live.session
                    .encrypt(&Mechanism::AesGcm(params), live.key, plaintext)
            })
            .map_err(|err| err.into_crypto("seal"))?;
        if sealed.len() != plaintext.len() + TAG_LEN {
            tracing::error!(
                key_label = %self.key_label,
                got = sealed.len(),
                "the PKCS#11 token returned an AES-GCM output of unexpected length"
            );
            return Err(CryptoError::Seal);
        }
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Self::seal`] (or a [`super::sealing::Sealer`] with the same key
    /// bytes) sealed.
    pub fn open_sealed(
        &self,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::Open)?;
        if version != VERSION || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.with_session(|live| {
            let mut iv = [0u8; NONCE_LEN];
            iv.copy_from_slice(nonce);
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            live.session
                .decrypt(&Mechanism::AesGcm(params), live.key, ciphertext)
                .map(Zeroizing::new)
        })
        .map_err(|err| match err {
            // The spec's answers to a tag that does not verify (wrong key or AAD,
            // tampered data).
            CallError::Token(CkError::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                _,
            )) => CryptoError::Open,
            // SoftHSM 2.6 answers a bad tag with CKR_GENERAL_ERROR, as a failing token
            // would: a token that still encrypts refused the data, not the call.
            CallError::Token(CkError::Pkcs11(
                RvError::GeneralError | RvError::FunctionFailed,
                _,
            )) if self.answers() => CryptoError::Open,
            other => other.into_crypto("open"),
        })
    }

    /// Whether the token still computes with the key (one block).
    fn answers(&self) -> bool {
        self.encrypt_block(&[0; 16]).is_ok()
    }

    /// `E_K(block)`: one AES block encrypted by the token (ECB), for a fingerprint of
    /// the key that reveals nothing of it.
    pub fn encrypt_block(&self, block: &[u8; 16]) -> Result<[u8; 16], CryptoError> {
        let out = self
            .with_session(|live| live.session.encrypt(&Mechanism::AesEcb, live.key, block))
            .map_err(|err| err.into_crypto("encrypt_block"))?;
        out.as_slice().try_into().map_err(|_| {
            CryptoError::Hsm(format!(
                "AES-ECB of one block returned {} bytes, not 16",
                out.len()
            ))
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Live>> {
        // A panic mid-call leaves at worst a session in an unknown state; the retry
        // below replaces any session that misbehaves.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the session; when the session or login was lost (token reset,
    /// idle timeout, another process logging out), opens a new one and tries once more.
    fn with_session<T>(&self, op: impl Fn(&Live) -> Result<T, CkError>) -> Result<T, CallError> {
        let mut live = self.lock();
        if let Some(current) = live.as_ref() {
            match op(current) {
                Ok(value) => return Ok(value),
                Err(err) if session_lost(&err) => {
                    tracing::warn!(
                        token_label = %self.token_label,
                        error = %err,
                        "PKCS#11 session lost; opening a new one"
                    );
                }
                Err(err) => return Err(CallError::Token(err)),
            }
        }
        // Close the old session before opening the next one.
        *live = None;
        let fresh = self.connect(false).map_err(CallError::Reconnect)?;
        let result = op(&fresh).map_err(CallError::Token);
        *live = Some(fresh);
        result
    }

    /// Finds the token, opens a session, logs in and finds the key.
    fn connect(&self, first: bool) -> Result<Live, Pkcs11Error> {
        let token_err = |step: &'static str| {
            let token = self.token_label.clone();
            move |err: CkError| Pkcs11Error::Token {
                token,
                step,
                reason: err.to_string(),
            }
        };
        let slot = self.find_slot()?;
        let session = self
            .module
            .open_ro_session(slot)
            .map_err(token_err("opening a session"))?;
        match session.login(UserType::User, Some(&self.pin)) {
            // Login is per application and token: another key of this process on the
            // same token already logged in (the PIN is the token's, so the same).
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(rv, _)) if pin_refused(rv).is_some() => {
                return Err(Pkcs11Error::Pin {
                    token: self.token_label.clone(),
                    reason: pin_refused(rv).unwrap_or_default().to_owned(),
                });
            }
            Err(err) => return Err(token_err("login")(err)),
        }
        let key = self.find_key(&session, first)?;
        Ok(Live { session, key })
    }

    fn find_slot(&self) -> Result<cryptoki::slot::Slot, Pkcs11Error> {
        let step_err = |step: &'static str| {
            let token = self.token_label.clone();
            move |err: CkError| Pkcs11Error::Token {
                token,
                step,
                reason: err.to_string(),
            }
        };
        let wanted = self.token_label.trim();
        let mut found = Vec::new();
        for slot in self
            .module
            .get_slots_with_token()
            .map_err(step_err("listing the slots"))?
        {
            let info = self
                .module
                .get_token_info(slot)
                .map_err(step_err("reading a token's information"))?;
            // PKCS#11 pads labels to 32 bytes with spaces.
            let label = info.label().trim();
            if label == wanted {
                return Ok(slot);
            }
            found.push(format!("{label:?}"));
        }
        Err(Pkcs11Error::TokenLabel {
            wanted: wanted.to_owned(),
            found: if found.is_empty() {
                "none".to_owned()
            } else {
                found.join(", ")
            },
        })
    }

    fn find_key(&self, session: &Session, first: bool) -> Result<ObjectHandle, Pkcs11Error> {
        let label = &self.key_label;
        let token = &self.token_label;
        let key_err = |reason: String| Pkcs11Error::KeyLabel { reason };
        let ck_err = |step: &'static str| {
            let token = token.clone();
            move |err: CkError| Pkcs11Error::Token {
                token,
                step,
                reason: err.to_string(),
            }
        };
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(ck_err("searching for the key"))?;
        let handle = match handles.as_slice() {
            [one] => *one,
            [] => {
                return Err(key_err(format!(
                    "no secret key labelled {label:?} in the token {token:?}"
                )));
            }
            many => {
                return Err(key_err(format!(
                    "{} secret keys are labelled {label:?} in the token {token:?}; \
                     exactly one must be",
                    many.len()
                )));
            }
        };
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::Private,
                ],
            )
            .map_err(ck_err("reading the key's attributes"))?;
        let props = KeyProps::from_attributes(&attrs);
        if props.key_type != Some(KeyType::AES) || props.value_len != Some(KEY_LEN) {
            return Err(key_err(format!(
                "the key labelled {label:?} in the token {token:?} is not AES-256 \
                 (type {}, {} bytes)",
                props
                    .key_type
                    .map_or_else(|| "unknown".to_owned(), |t| t.to_string()),
                props
                    .value_len
                    .map_or_else(|| "unknown".to_owned(), |n| (*n).to_string()),
            )));
        }
        if !(props.encrypt && props.decrypt) {
            return Err(key_err(format!(
                "the key labelled {label:?} in the token {token:?} does not allow both \
                 encrypt and decrypt (CKA_ENCRYPT and CKA_DECRYPT)"
            )));
        }
        // pkcs11-tool's defaults make a key neither sensitive nor private: usable by
        // anyone who can open a session, without the PIN.
        if first && (props.extractable || !props.sensitive || !props.private) {
            tracing::warn!(
                key_label = %label,
                extractable = props.extractable,
                sensitive = props.sensitive,
                private = props.private,
                "the PKCS#11 master key is not locked in the token; make it with \
                 CKA_SENSITIVE and CKA_PRIVATE true and CKA_EXTRACTABLE false \
                 (pkcs11-tool --keygen --key-type AES:32 --sensitive --private)"
            );
        }
        Ok(handle)
    }
}

/// What the key's attributes say; an attribute the token does not report counts as
/// the unsafe or unusable answer.
struct KeyProps {
    key_type: Option<KeyType>,
    value_len: Option<Ulong>,
    encrypt: bool,
    decrypt: bool,
    extractable: bool,
    sensitive: bool,
    private: bool,
}

impl KeyProps {
    fn from_attributes(attrs: &[Attribute]) -> Self {
        let mut props = Self {
            key_type: None,
            value_len: None,
            encrypt: false,
            decrypt: false,
            extractable: true,
            sensitive: false,
            private: false,
        };
        for attr in attrs {
            match attr {
                Attribute::KeyType(t) => props.key_type = Some(*t),
                Attribute::ValueLen(n) => props.value_len = Some(*n),
                Attribute::Encrypt(b) => props.encrypt = *b,
                Attribute::Decrypt(b) => props.decrypt = *b,
                Attribute::Extractable(b) => props.extractable = *b,
                Attribute::Sensitive(b) => props.sensitive = *b,
                Attribute::Private(b) => props.private = *b,
                _ => {}
            }
        }
        props
    }
}

/// Loaded and initialised modules, by path; see the module comment for why they stay.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn load_module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let module_err = |reason: String| Pkcs11Error::Module {
        path: path.display().to_string(),
        reason,
    };
    let module = Pkcs11::new(path).map_err(|err| match err {
        CkError::LibraryLoading(e) => module_err(format!("cannot load it ({e})")),
        CkError::MissingSymbol(symbol) => {
            module_err(format!("it has no {symbol}: not a PKCS#11 module"))
        }
        other => module_err(other.to_string()),
    })?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process (another library) initialised it already.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(module_err(format!("C_Initialize failed: {err}"))),
    }
    modules.insert(path.to_owned(), module.clone());
    Ok(module)
}

/// Why the token refused the PIN, for the message; `None` when the failure is not
/// about the PIN.
fn pin_refused(rv: RvError) -> Option<&'static str> {
    match rv {
        RvError::PinIncorrect => Some("wrong PIN"),
        RvError::PinLocked => Some("the user PIN is locked (too many wrong attempts)"),
        RvError::PinExpired => Some("the user PIN has expired"),
        RvError::PinInvalid | RvError::PinLenRange => {
            Some("the PIN has invalid characters or length")
        }
        RvError::UserPinNotInitialized => Some("the token's user PIN is not initialised"),
        _ => None,
    }
}

/// Errors after which a new session (and login) may succeed.
fn session_lost(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

/// A call to the token that failed: the call itself, or opening a new session after
/// the old one was lost.
enum CallError {
    Token(CkError),
    Reconnect(Pkcs11Error),
}

impl CallError {
    fn into_crypto(self, what: &str) -> CryptoError {
        match self {
            Self::Token(err) => CryptoError::Hsm(format!("{what}: {err}")),
            Self::Reconnect(err) => CryptoError::Hsm(format!("{what}: {err}")),
        }
    }
}

#[cfg(test)]
#[path = "../../tests/api/common/softhsm.rs"]
mod softhsm;

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::softhsm::{self, KEY, PIN, SoftHsm, TOKEN};
    use super::*;
    use crate::crypto::sealing::{MasterKey, Sealer};

    /// Runs `body` against its own SoftHSM (see `softhsm::isolated`), made by `setup`.
    macro_rules! with_softhsm {
        ($name:ident, $setup:expr, $body:expr) => {
            softhsm::isolated(
                &softhsm::test_path(module_path!(), stringify!($name)),
                $setup,
                $body,
            )
        };
    }

    fn settings() -> Pkcs11Settings {
        Pkcs11Settings {
            module: SoftHsm::module(),
            token_label: TOKEN.into(),
            pin: Zeroizing::new(PIN.into()),
            key_label: KEY.into(),
        }
    }

    fn standard(hsm: &SoftHsm) {
        hsm.init_token(TOKEN, PIN);
        hsm.keygen_aes256(TOKEN, PIN, KEY);
    }

    fn open_err(settings: &Pkcs11Settings) -> String {
        let err = Pkcs11Key::open(settings).unwrap_err().to_string();
        assert!(!err.contains(PIN), "the PIN leaked: {err}");
        err
    }

    /// Everything `tracing` writes while `f` runs on this thread.
    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[test]
    fn opens_seals_and_opens_inside_the_token() {
        with_softhsm!(opens_seals_and_opens_inside_the_token, standard, || {
            let (key, logs) = logs_of(|| Pkcs11Key::open(&settings()).unwrap());
            assert!(
                !logs.contains("WARN"),
                "a sensitive key earns no warning: {logs}"
            );
            let sealed = key.seal(b"data key bytes", b"keyring").unwrap();
            assert_eq!(sealed[0], VERSION);
            assert_eq!(sealed.len(), 1 + NONCE_LEN + 14 + TAG_LEN);
            assert!(!sealed.windows(8).any(|w| w == b"data key"));
            assert_eq!(
                &*key.open_sealed(&sealed, b"keyring").unwrap(),
                b"data key bytes"
            );
            assert_ne!(sealed, key.seal(b"data key bytes", b"keyring").unwrap());
            assert_eq!(
                &*key.open_sealed(&key.seal(b"", b"").unwrap(), b"").unwrap(),
                b""
            );

            assert!(matches!(
                key.open_sealed(&sealed, b"other"),
                Err(CryptoError::Open)
            ));
            for i in [0, 1, NONCE_LEN + 1, sealed.len() - 1] {
                let mut tampered = sealed.clone();
                tampered[i] ^= 1;
                let opened = key.open_sealed(&tampered, b"keyring");
                assert!(
                    matches!(opened, Err(CryptoError::Open)),
                    "byte {i}: {opened:?}"
                );
            }
            assert!(matches!(
                key.open_sealed(&[], b"keyring"),
                Err(CryptoError::Open)
            ));
            assert!(matches!(
                key.open_sealed(&sealed[..NONCE_LEN + TAG_LEN], b"keyring"),
                Err(CryptoError::Open)
            ));
            // A failed decryption leaves the session usable.
            assert_eq!(
                &*key.open_sealed(&sealed, b"keyring").unwrap(),
                b"data key bytes"
            );

            let block = key.encrypt_block(&[0x42; 16]).unwrap();
            assert_eq!(block, key.encrypt_block(&[0x42; 16]).unwrap());
            assert_ne!(block, [0x42; 16]);
        });
    }

    /// Token and software compute the same AES-256-GCM and AES block: a key imported
    /// with a known value (extractable, so the opening warns) seals what `Sealer`
    /// opens and opens what it seals.
    #[test]
    fn agrees_with_the_software_key() {
        with_softhsm!(
            agrees_with_the_software_key,
            |hsm| hsm.init_token(TOKEN, PIN),
            || {
                let bytes: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);
                import_key(&bytes, "known");
                let settings = Pkcs11Settings {
                    key_label: "known".into(),
                    ..settings()
                };
                let (key, logs) = logs_of(|| Pkcs11Key::open(&settings).unwrap());
                assert!(logs.contains("WARN") && logs.contains("known"), "{logs}");
                assert!(!logs.contains(PIN));

                let software = MasterKey::from_bytes(bytes);
                let sealer = Sealer::new(&software);
                let by_token = key.seal(b"secret", b"aad").unwrap();
                assert_eq!(&*sealer.open(&by_token, b"aad").unwrap(), b"secret");
                let by_software = sealer.seal(b"secret 2", b"aad").unwrap();
                assert_eq!(
                    &*key.open_sealed(&by_software, b"aad").unwrap(),
                    b"secret 2"
                );
                let other = Sealer::new(&MasterKey::generate().unwrap());
                let by_other = other.seal(b"secret", b"aad").unwrap();
                assert!(matches!(
                    key.open_sealed(&by_other, b"aad"),
                    Err(CryptoError::Open)
                ));
                assert!(other.open(&by_token, b"aad").is_err());
                let shown = format!("{key:?}");
                assert!(shown.contains("known") && !shown.contains(PIN), "{shown}");

                for block in [[0u8; 16], [0xa5; 16]] {
                    assert_eq!(
                        key.encrypt_block(&block).unwrap(),
                        software.encrypt_block(&block).unwrap()
                    );
                }
            }
        );
    }

    /// A token object with a known value, as an operator must never make one.
    fn import_key(bytes: &[u8; 32], label: &str) {
        let module = load_module(&SoftHsm::module()).unwrap();
        let slot = module
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| module.get_token_info(*s).unwrap().label().trim() == TOKEN)
            .unwrap();
        let session = module.open_rw_session(slot).unwrap();
        session
            .login(UserType::User, Some(&AuthPin::from(PIN)))
            .unwrap();
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Value(bytes.to_vec()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ])
            .unwrap();
    }

    /// `pkcs11-tool --keygen` without `--sensitive --private` makes a key anyone with a
    /// session can use: it opens, with a warning naming the label only.
    #[test]
    fn warns_about_a_key_made_with_pkcs11_tool_defaults() {
        with_softhsm!(
            warns_about_a_key_made_with_pkcs11_tool_defaults,
            |hsm| {
                hsm.init_token(TOKEN, PIN);
                hsm.run(hsm.pkcs11_tool(TOKEN, PIN).args([
                    "--keygen",
                    "--key-type",
                    "AES:32",
                    "--label",
                    "plain",
                ]));
            },
            || {
                let settings = Pkcs11Settings {
                    key_label: "plain".into(),
                    ..settings()
                };
                let (key, logs) = logs_of(|| Pkcs11Key::open(&settings).unwrap());
                assert!(logs.contains("WARN") && logs.contains("plain"), "{logs}");
                assert!(
                    logs.contains("private=false") && !logs.contains(PIN),
                    "{logs}"
                );
                let sealed = key.seal(b"x", b"a").unwrap();
                assert_eq!(&*key.open_sealed(&sealed, b"a").unwrap(), b"x");
            }
        );
    }

    #[test]
    fn recovers_a_lost_login_once() {
        with_softhsm!(recovers_a_lost_login_once, standard, || {
            let key = Pkcs11Key::open(&settings()).unwrap();
            let sealed = key.seal(b"x", b"a").unwrap();
            key.lock().as_ref().unwrap().session.logout().unwrap();
            let (opened, logs) = logs_of(|| key.open_sealed(&sealed, b"a").unwrap());
            assert_eq!(&*opened, b"x");
            assert!(logs.contains("opening a new one"), "{logs}");
            key.lock().as_ref().unwrap().session.logout().unwrap();
            assert!(key.seal(b"y", b"a").is_ok());
        });
    }

    #[test]
    fn wrong_pin_names_the_pin_setting_not_the_pin() {
        with_softhsm!(
            wrong_pin_names_the_pin_setting_not_the_pin,
            standard,
            || {
                let err = open_err(&Pkcs11Settings {
                    pin: Zeroizing::new("9999-wrong-pin".into()),
                    ..settings()
                });
                assert!(err.starts_with("KMS_MASTER_KEY_PKCS11_PIN:"), "{err}");
                assert!(err.contains("wrong PIN") && !err.contains("9999"), "{err}");
                // The right PIN still opens (SoftHSM locks only after many failures).
                Pkcs11Key::open(&settings()).unwrap();
            }
        );
    }

    #[test]
    fn unknown_token_names_the_token_setting_and_lists_tokens() {
        with_softhsm!(
            unknown_token_names_the_token_setting_and_lists_tokens,
            standard,
            || {
                let err = open_err(&Pkcs11Settings {
                    token_label: "nope".into(),
                    ..settings()
                });
                assert!(
                    err.starts_with("KMS_MASTER_KEY_PKCS11_TOKEN_LABEL:"),
                    "{err}"
                );
                assert!(
                    err.contains("\"nope\"") && err.contains("\"kms-test\""),
                    "{err}"
                );
                // Labels are compared without PKCS#11's space padding.
                Pkcs11Key::open(&Pkcs11Settings {
                    token_label: format!("{TOKEN}   "),
                    ..settings()
                })
                .unwrap();
            }
        );
    }

    #[test]
    fn key_label_errors_name_the_key_setting() {
        with_softhsm!(
            key_label_errors_name_the_key_setting,
            |hsm| {
                standard(hsm);
                hsm.keygen_aes256(TOKEN, PIN, "twice");
                hsm.keygen_aes256(TOKEN, PIN, "twice");
                hsm.run(
                    hsm.pkcs11_tool(TOKEN, PIN)
                        .args(["--keygen", "--key-type", "AES:16", "--sensitive"])
                        .args(["--label", "aes128"]),
                );
            },
            || {
                for (label, says) in [
                    ("missing", "no secret key labelled \"missing\""),
                    ("twice", "2 secret keys are labelled \"twice\""),
                    ("aes128", "is not AES-256"),
                ] {
                    let err = open_err(&Pkcs11Settings {
                        key_label: label.into(),
                        ..settings()
                    });
                    assert!(err.starts_with("KMS_MASTER_KEY_PKCS11_KEY_LABEL:"), "{err}");
                    assert!(err.contains(says), "{err}");
                }
            }
        );
    }

    /// No SoftHSM needed: the module is refused before any token is looked at.
    #[test]
    fn a_bad_module_names_the_module_setting() {
        for path in ["/nonexistent/libpkcs11.so", "libz.so.1"] {
            let err = open_err(&Pkcs11Settings {
                module: path.into(),
                ..settings()
            });
            assert!(err.starts_with("KMS_MASTER_KEY_PKCS11_MODULE:"), "{err}");
            assert!(err.contains(path), "{err}");
        }
        let err = open_err(&Pkcs11Settings {
            module: "libz.so.1".into(),
            ..settings()
        });
        assert!(err.contains("not a PKCS#11 module"), "{err}");
    }

    #[test]
    fn debug_never_prints_the_pin() {
        let shown = format!("{:?}", settings());
        assert!(
            shown.contains("<redacted>") && !shown.contains(PIN),
            "{shown}"
        );
    }

    #[test]
    fn key_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pkcs11Key>();
    }
}
