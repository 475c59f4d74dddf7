//! The one error type of the domain. `grpc::status` maps it to gRPC codes in a single
//! exhaustive match, so every new variant is a decision there.

/// What went wrong, phrased for the caller. `Internal` carries detail for the log only:
/// its `Display` is generic so that no SQL, crypto or secret text reaches a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The call is valid but the system is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many failed logins for the username or the client address: refused
    /// without looking at the password.
    #[error("too many failed logins; retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("the database is unavailable, try again later")]
    Unavailable,
    /// More of this kind of work is waiting than the server will queue: shed at once
    /// rather than answered late (a login flood must not starve other calls).
    #[error("{0}")]
    Overloaded(&'static str),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
