//! The secrets `serve` needs: the master key that seals API key secrets, the HS256
//! secret (only when HS256 signs), and the bootstrap admin. Each comes from a flag or
//! `KMS_*` variable, or a file named by one, else from the original service's names
//! (`legacy`). Only reading happens here; `--dev` fills the gaps in `dev.rs`.

use std::{fs, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use super::{ConfigError, LegacyEnv, ServeArgs};
use crate::{
    crypto::{master::Master, sealing::MasterKey},
    domain::token::MIN_HS256_SECRET_BYTES,
};

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

/// The new master key of `kms master-key rewrap`, from a file.
pub fn new_master_key_from_file(path: &Path) -> Result<Master, ConfigError> {
    let key = read_master_key_file(path)?;
    Master::software(&key).map_err(|e| ConfigError(format!("new master key: {e}")))
}

impl super::Config {
    /// The new master key of `kms master-key rewrap`, in the configured PKCS#11 token.
    pub fn open_new_pkcs11_master_key(&self, _label: &str) -> Result<Master, ConfigError> {
        Err(ConfigError(
            "PKCS#11 master keys are not wired in yet".into(),
        ))
    }

    /// The master key, ready to use.
    pub fn open_master_key(&self) -> Result<Master, ConfigError> {
        Master::software(&self.master_key).map_err(|e| ConfigError(format!("master key: {e}")))
    }
}
