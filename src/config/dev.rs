//! `--dev`: the one part of configuration that writes files. It keeps the data folder
//! private and generates, once, the secrets that nothing else gave: the master key,
//! and the HS256 secret when HS256 signs. Later starts read the same files back.

use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD};

use super::{
    ConfigError, JwtSecret,
    secrets::{read_jwt_secret_file, read_master_key_file},
};
use crate::{
    crypto::{random, sealing::MasterKey},
    private_file,
};

pub(super) const MASTER_KEY_FILE: &str = "master.key";
pub(super) const JWT_SECRET_FILE: &str = "jwt.secret";

/// Fills in the master key and (with `hs256`) the JWT secret from files under
/// `data_dir`, generating each file the first time. Secrets already given are kept;
/// `master_key` is `None` when the master key is in a PKCS#11 token.
pub(super) fn fill_in_secrets(
    data_dir: &Path,
    master_key: Option<&mut Option<MasterKey>>,
    jwt_secret: &mut Option<JwtSecret>,
    hs256: bool,
) -> Result<(), ConfigError> {
    let master_key = master_key.filter(|key| key.is_none());
    // An existing folder is made private even when nothing is generated into it: it
    // holds the database by default, and secrets from earlier starts.
    if master_key.is_some() || (hs256 && jwt_secret.is_none()) || data_dir.exists() {
        ensure_private_dir(data_dir)?;
    }
    if let Some(master_key) = master_key {
        let path = data_dir.join(MASTER_KEY_FILE);
        if !path.exists() {
            let key = random::bytes::<32>().map_err(|e| ConfigError(e.to_string()))?;
            write_private_file(&path, STANDARD.encode(key).as_bytes())?;
        }
        *master_key = Some(read_master_key_file(&path)?);
    }
    if hs256 && jwt_secret.is_none() {
        let path = data_dir.join(JWT_SECRET_FILE);
        if !path.exists() {
            let secret = random::bytes::<48>().map_err(|e| ConfigError(e.to_string()))?;
            write_private_file(&path, STANDARD.encode(secret).as_bytes())?;
        }
        *jwt_secret = Some(read_jwt_secret_file(&path)?);
    }
    Ok(())
}

/// The data folder holds secrets: owner-only. A new one is created 0700; an existing
/// one that other users may read or enter is tightened to 0700, and refused when that
/// fails (it belongs to someone else, a read-only mount): never used as it is.
fn ensure_private_dir(dir: &Path) -> Result<(), ConfigError> {
    match private_file::ensure_private_dir(dir) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => {
            tracing::warn!(path = %dir.display(), was = %format!("{mode:o}"), "the data folder was open to other users: made private (0700)");
            Ok(())
        }
        Err(e) => Err(ConfigError(format!(
            "cannot use the data folder {}: {e}. Run `chmod 700` on it as its owner, or set KMS_DATA_DIR to a folder of your own",
            dir.display()
        ))),
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    private_file::write_new_private(path, contents)
        .map_err(|e| ConfigError(format!("cannot create {}: {e}", path.display())))
}
