//! The one place where domain errors become gRPC statuses.

use tonic::Status;

use crate::domain::Error;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::AlreadyExists(msg) => Status::already_exists(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::Throttled { retry_after_secs } => {
                let mut status = Status::resource_exhausted(err.to_string());
                // The delay in seconds, as HTTP's Retry-After, for clients that back
                // off without parsing the message.
                status
                    .metadata_mut()
                    .insert("retry-after", retry_after_secs.into());
                status
            }
            Error::Unavailable => Status::unavailable(err.to_string()),
            Error::Overloaded(_) => Status::resource_exhausted(err.to_string()),
            Error::Internal(detail) => {
                // The detail is for operators; the client gets nothing it could use.
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
