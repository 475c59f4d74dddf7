//! The rules of the KMS: validation, roles, the key format, token claims, and the two
//! services that apply them over the store. No transport or ORM types in signatures.

pub mod api_key;
pub mod audit;
pub mod audit_watch;
pub mod auth;
pub mod cache;
pub mod caller;
pub mod cluster;
pub mod error;
pub mod keyring;
pub mod keys;
pub mod master_key;
pub mod paging;
pub mod policy;
pub mod sessions;
pub mod signing;
pub mod throttle;
pub mod token;
pub mod users;
pub mod validate;

pub use caller::{Caller, Roles};
pub use error::{Error, Result};

use crate::{crypto::CryptoError, store::StoreError};

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                Self::Unavailable
            }
            StoreError::Conflict | StoreError::Config(_) | StoreError::Other(_) => {
                Self::Internal(err.to_string())
            }
        }
    }
}

impl From<CryptoError> for Error {
    fn from(err: CryptoError) -> Self {
        match err {
            CryptoError::Busy => {
                Self::Overloaded("too many password checks waiting; retry in a moment")
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// A number of seconds as a duration; out of range is a bug upstream (settings and
/// inputs are bounded before they get here), reported, never a panic.
pub fn seconds(n: i64) -> Result<chrono::Duration> {
    chrono::Duration::try_seconds(n)
        .ok_or_else(|| Error::Internal(format!("duration out of range: {n}")))
}

/// Fails closed: only a caller whose role set contains `admin` passes.
pub fn require_admin(caller: &Caller) -> Result<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Error::PermissionDenied("this call needs the admin role"))
    }
}
