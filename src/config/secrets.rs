//! The secrets `serve` needs: the master key that seals API key secrets, the HS256
//! secret (only when HS256 signs), and the bootstrap admin. Each comes from a flag or
//! `KMS_*` variable, or a file named by one, else from the original service's names
//! (`legacy`). Only reading happens here; `--dev` fills the gaps in `dev.rs`.

use std::{fs, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use super::{ConfigError, LegacyEnv, MasterKeyRewrapArgs, ServeArgs};
use crate::{
    crypto::{
        master::Master,
        pkcs11::{Pkcs11Key, Pkcs11Settings},
        sealing::MasterKey,
    },
    domain::token::MIN_HS256_SECRET_BYTES,
};

const PIN_VAR: &str = "KMS_MASTER_KEY_PKCS11_PIN";

/// Where the master key is.
#[derive(Clone, Debug)]
pub enum MasterKeySource {
    /// In memory: KMS_MASTER_KEY, its file, the original service's SECRET_KEY, or
    /// `--dev`'s generated file.
    Key(MasterKey),
    /// An AES-256 key inside a PKCS#11 token, used only through the token.
    Pkcs11(Pkcs11Settings),
}

impl MasterKeySource {
    /// The key's bytes, when they are in memory.
    pub fn key(&self) -> Option<&MasterKey> {
        match self {
            Self::Key(key) => Some(key),
            Self::Pkcs11(_) => None,
        }
    }

    /// Ready to use: a token is loaded and logged in to here. Errors name the setting.
    pub fn open(&self) -> Result<Master, ConfigError> {
        match self {
            Self::Key(key) => {
                Master::software(key).map_err(|e| ConfigError(format!("master key: {e}")))
            }
            Self::Pkcs11(settings) => {
                let key = Pkcs11Key::open(settings).map_err(|e| ConfigError(e.to_string()))?;
                Master::pkcs11(key).map_err(|e| {
                    ConfigError(format!(
                        "{}: the key cannot be used: {e}",
                        "KMS_MASTER_KEY_PKCS11_KEY_LABEL"
                    ))
                })
            }
        }
    }
}

/// The token PIN from KMS_MASTER_KEY_PKCS11_PIN: never a command-line flag. `Debug`
/// prints nothing of it.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn from_env() -> Option<Self> {
        std::env::var(PIN_VAR)
            .ok()
            .filter(|pin| !pin.is_empty())
            .map(|pin| Self(Zeroizing::new(pin)))
    }

    pub fn new(pin: &str) -> Self {
        Self(Zeroizing::new(pin.to_owned()))
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

const DEV_ADMIN_USERNAME: &str = "admin";

/// The JWT signing secret. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct JwtSecret(Zeroizing<Vec<u8>>);

impl JwtSecret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, ConfigError> {
        if bytes.len() < MIN_HS256_SECRET_BYTES {
            return Err(ConfigError(format!(
                "KMS_JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes"
            )));
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The original service's `SECRET_KEY`, which may be shorter than the floor: the
    /// caller has warned about it.
    pub(crate) fn legacy(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

/// The admin to create at start when none exists. `password: None` means generate a
/// random one and show it once (dev mode).
#[derive(Clone)]
pub struct BootstrapAdmin {
    pub username: String,
    pub password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    /// The master key as given: KMS_MASTER_KEY, its file, or the original service's
    /// SECRET_KEY. None when nothing gives one.
    pub(super) fn given_master_key(
        &self,
        legacy: &LegacyEnv,
    ) -> Result<Option<MasterKey>, ConfigError> {
        match (&self.master_key, &self.master_key_file) {
            (Some(_), Some(_)) => Err(ConfigError(
                "set KMS_MASTER_KEY or KMS_MASTER_KEY_FILE, not both".into(),
            )),
            (Some(b64), None) => parse_master_key(b64, "KMS_MASTER_KEY").map(Some),
            (None, Some(path)) => read_master_key_file(path).map(Some),
            (None, None) => legacy.master_key(),
        }
    }

    /// The PKCS#11 master key's settings, when any is given: all of them then, and no
    /// other master key setting.
    pub(super) fn pkcs11_settings(&self) -> Result<Option<Pkcs11Settings>, ConfigError> {
        let any = self.master_key_pkcs11_module.is_some()
            || self.master_key_pkcs11_token_label.is_some()
            || self.master_key_pkcs11_key_label.is_some()
            || self.master_key_pkcs11_pin_file.is_some()
            || self.master_key_pkcs11_pin.is_some();
        if !any {
            return Ok(None);
        }
        if self.master_key.is_some() || self.master_key_file.is_some() {
            return Err(ConfigError(
                "the master key is given twice: set KMS_MASTER_KEY (or KMS_MASTER_KEY_FILE) or the KMS_MASTER_KEY_PKCS11_* settings, not both".into(),
            ));
        }
        let key_label = self.master_key_pkcs11_key_label.clone().ok_or_else(|| {
            ConfigError("KMS_MASTER_KEY_PKCS11_KEY_LABEL is not set: name the AES-256 key in the token that is the master key".into())
        })?;
        self.pkcs11_token(key_label).map(Some)
    }

    /// The token settings (module, token label, PIN) with the key `key_label`.
    fn pkcs11_token(&self, key_label: String) -> Result<Pkcs11Settings, ConfigError> {
        let module = self.master_key_pkcs11_module.clone().ok_or_else(|| {
            ConfigError("KMS_MASTER_KEY_PKCS11_MODULE is not set: the path of the token's PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so)".into())
        })?;
        let token_label = self.master_key_pkcs11_token_label.clone().ok_or_else(|| {
            ConfigError("KMS_MASTER_KEY_PKCS11_TOKEN_LABEL is not set: the label of the token that holds the master key".into())
        })?;
        let pin = match (
            &self.master_key_pkcs11_pin,
            &self.master_key_pkcs11_pin_file,
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set KMS_MASTER_KEY_PKCS11_PIN or KMS_MASTER_KEY_PKCS11_PIN_FILE, not both"
                        .into(),
                ));
            }
            (Some(pin), None) => pin.0.clone(),
            (None, Some(path)) => {
                let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "KMS_MASTER_KEY_PKCS11_PIN_FILE: cannot read {}: {e}",
                        path.display()
                    ))
                })?);
                Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, None) => {
                return Err(ConfigError(
                    "KMS_MASTER_KEY_PKCS11_PIN_FILE (or KMS_MASTER_KEY_PKCS11_PIN) is not set: the token's user PIN".into(),
                ));
            }
        };
        Ok(Pkcs11Settings {
            module,
            token_label,
            pin,
            key_label,
        })
    }

    /// The HS256 secret as given: KMS_JWT_SECRET, its file, or SECRET_KEY.
    pub(super) fn given_jwt_secret(
        &self,
        legacy: &LegacyEnv,
    ) -> Result<Option<JwtSecret>, ConfigError> {
        match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(_), Some(_)) => Err(ConfigError(
                "set KMS_JWT_SECRET or KMS_JWT_SECRET_FILE, not both".into(),
            )),
            (Some(s), None) => JwtSecret::new(s.as_bytes().to_vec()).map(Some),
            (None, Some(path)) => read_jwt_secret_file(path).map(Some),
            (None, None) => legacy.jwt_secret(),
        }
    }

    pub(super) fn bootstrap_admin(&self) -> Result<Option<BootstrapAdmin>, ConfigError> {
        match (
            &self.bootstrap_admin_username,
            &self.bootstrap_admin_password,
        ) {
            (Some(username), Some(password)) => Ok(Some(BootstrapAdmin {
                username: username.clone(),
                password: Some(Zeroizing::new(password.clone())),
            })),
            // Dev mode fills in either half: username `admin`, a generated password.
            (username, password) if self.dev => Ok(Some(BootstrapAdmin {
                username: username
                    .clone()
                    .unwrap_or_else(|| DEV_ADMIN_USERNAME.to_owned()),
                password: password.clone().map(Zeroizing::new),
            })),
            (None, None) => Ok(None),
            _ => Err(ConfigError(
                "KMS_BOOTSTRAP_ADMIN_USERNAME and KMS_BOOTSTRAP_ADMIN_PASSWORD must be set together"
                    .into(),
            )),
        }
    }
}

/// With the master key in a token, only the HS256 secret can be missing.
pub(super) fn require_jwt_secret(
    jwt_secret: Option<&JwtSecret>,
    hs256: bool,
) -> Result<(), ConfigError> {
    if hs256 && jwt_secret.is_none() {
        return Err(ConfigError(
            "refusing to start without a JWT signing secret for KMS_JWT_ALGORITHM=HS256 (KMS_JWT_SECRET: at least 32 bytes, or KMS_JWT_SECRET_FILE: a file holding it)".into(),
        ));
    }
    Ok(())
}

/// The master key, which is always needed; the JWT secret is needed only for HS256
/// (EdDSA and RS256 keys are generated and kept, sealed, in the database). A refusal
/// names everything missing and how to provide it.
pub(super) fn require(
    master_key: Option<MasterKey>,
    jwt_secret: Option<&JwtSecret>,
    hs256: bool,
) -> Result<MasterKey, ConfigError> {
    let master_missing = master_key.is_none();
    let secret_missing = hs256 && jwt_secret.is_none();
    match master_key {
        Some(m) if !secret_missing => Ok(m),
        _ => {
            let mut missing = Vec::new();
            if master_missing {
                missing.push("a master key (KMS_MASTER_KEY: base64 of 32 random bytes, e.g. `openssl rand -base64 32`, or KMS_MASTER_KEY_FILE: a file holding it)");
            }
            if secret_missing {
                missing.push("a JWT signing secret for KMS_JWT_ALGORITHM=HS256 (KMS_JWT_SECRET: at least 32 bytes, e.g. `openssl rand -base64 48`, or KMS_JWT_SECRET_FILE: a file holding it)");
            }
            let note = if hs256 {
                ""
            } else {
                " (KMS_JWT_SECRET is needed only with KMS_JWT_ALGORITHM=HS256: the default EdDSA signing keys are generated and stored sealed in the database)"
            };
            Err(ConfigError(format!(
                "refusing to start without {}{note}. For a local trial with generated secrets, run `kms serve --dev`.",
                missing.join(" and ")
            )))
        }
    }
}

fn parse_master_key(b64: &str, name: &str) -> Result<MasterKey, ConfigError> {
    let invalid = || ConfigError(format!("{name} must be base64 of exactly 32 bytes"));
    let bytes = Zeroizing::new(STANDARD.decode(b64.trim()).map_err(|_| invalid())?);
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| invalid())?;
    Ok(MasterKey::from_bytes(key))
}

pub(super) fn read_master_key_file(path: &Path) -> Result<MasterKey, ConfigError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read master key file {}: {e}",
            path.display()
        ))
    })?);
    parse_master_key(&text, &format!("the master key file {}", path.display()))
}

pub(super) fn read_jwt_secret_file(path: &Path) -> Result<JwtSecret, ConfigError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read JWT secret file {}: {e}",
            path.display()
        ))
    })?);
    JwtSecret::new(text.trim().as_bytes().to_vec())
}

impl MasterKeyRewrapArgs {
    /// The configuration with the current master key, and the new master key. A new
    /// PKCS#11 key is in the token of the KMS_MASTER_KEY_PKCS11_* settings: those of
    /// the current key when it is in a token too, otherwise given without
    /// KMS_MASTER_KEY_PKCS11_KEY_LABEL beside the current KMS_MASTER_KEY(_FILE).
    pub fn resolve(mut self) -> Result<(super::Config, MasterKeySource), ConfigError> {
        let new = match (&self.new_master_key_file, self.new_pkcs11_key_label.take()) {
            (Some(path), None) => MasterKeySource::Key(read_master_key_file(path)?),
            (None, Some(label)) => {
                let token = self.serve.pkcs11_token(label)?;
                if self.serve.master_key_pkcs11_key_label.is_none() {
                    // The token settings were for the new key only.
                    self.serve.master_key_pkcs11_module = None;
                    self.serve.master_key_pkcs11_token_label = None;
                    self.serve.master_key_pkcs11_pin = None;
                    self.serve.master_key_pkcs11_pin_file = None;
                }
                MasterKeySource::Pkcs11(token)
            }
            _ => {
                return Err(ConfigError(
                    "give one of --new-master-key-file and --new-pkcs11-key-label".into(),
                ));
            }
        };
        Ok((self.serve.resolve()?, new))
    }
}

impl super::Config {
    /// The master key, ready to use.
    pub fn open_master_key(&self) -> Result<Master, ConfigError> {
        self.master_key.open()
    }
}
