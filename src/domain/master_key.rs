//! Whether the configured master key opens this database's secrets. Checked when the
//! keyring is opened (at start and by the offline commands that open sealed data), so
//! that a wrong key is refused with a message that says so, instead of a server that
//! starts and then fails every GetKey (HS256) or an "internal error" from the command
//! line. It runs before the first data key is made, so that a wrong master key given
//! to a database of the previous release never wraps a keyring.

use super::{keyring::Keyring, signing};
use crate::store::{SealedSample, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Names the value that did not open (a service name or a public `kid`) and the
    /// master key's public id, never any key material.
    #[error(
        "the configured master key ({master_key_id}) does not open the secrets stored in this database ({what} does not decrypt with it). Start with the master key this database was used with"
    )]
    Mismatch { what: String, master_key_id: String },
    #[error("cannot read the stored secrets to check the master key: {0}")]
    Store(#[from] StoreError),
}

/// Opens the newest stored sealed value of each kind (an API key secret, a signing
/// key); an empty database passes. Whatever the JWT algorithm: an HS256 server has no
/// use for signing keys but stores API key secrets all the same.
pub async fn check(store: &Store, keyring: &Keyring) -> Result<(), MasterKeyError> {
    let samples = store.sealed_samples().await?;
    let mismatch = |what: String| MasterKeyError::Mismatch {
        what,
        master_key_id: keyring.master_key_id().to_owned(),
    };
    let opens =
        async |sample: &SealedSample, aad: &[u8]| keyring.open(&sample.sealed, aad).await.is_ok();
    if let Some(secret) = &samples.api_key_secret
        && !opens(secret, secret.owner.as_bytes()).await
    {
        return Err(mismatch(format!(
            "the API key secret of service '{}'",
            secret.owner
        )));
    }
    if let Some(key) = &samples.signing_key
        && !opens(key, &signing::aad(&key.owner)).await
    {
        return Err(mismatch(format!("the token signing key {}", key.owner)));
    }
    Ok(())
}
