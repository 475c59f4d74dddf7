//! Whether the configured master key is the one this database's secrets were sealed
//! with. Checked at start and by the offline commands that open sealed data, so that a
//! wrong key is refused with a message that says so, instead of a server that starts
//! and then fails every GetKey (HS256) or an "internal error" from the command line.

use super::signing;
use crate::{
    crypto::sealing::Sealer,
    store::{SealedSample, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Names the value that did not open (a service name or a public `kid`), never
    /// any key material.
    #[error(
        "the configured master key (KMS_MASTER_KEY / KMS_MASTER_KEY_FILE) does not open the secrets stored in this database ({0} does not decrypt with it). Start with the master key this database was used with"
    )]
    Mismatch(String),
    #[error("cannot read the stored secrets to check the master key: {0}")]
    Store(#[from] StoreError),
}

/// Opens the newest stored sealed value of each kind (an API key secret, a signing
/// key); an empty database passes. Whatever the JWT algorithm: an HS256 server has no
/// use for signing keys but stores API key secrets all the same.
pub async fn check(store: &Store, sealer: &Sealer) -> Result<(), MasterKeyError> {
    let samples = store.sealed_samples().await?;
    let opens = |sample: &SealedSample, aad: &[u8]| sealer.open(&sample.sealed, aad).is_ok();
    if let Some(secret) = &samples.api_key_secret
        && !opens(secret, secret.owner.as_bytes())
    {
        return Err(MasterKeyError::Mismatch(format!(
            "the API key secret of service '{}'",
            secret.owner
        )));
    }
    if let Some(key) = &samples.signing_key
        && !opens(key, &signing::aad(&key.owner))
    {
        return Err(MasterKeyError::Mismatch(format!(
            "the token signing key {}",
            key.owner
        )));
    }
    Ok(())
}
