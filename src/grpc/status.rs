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

/// The name gRPC gives a code, as grpcurl and the other gRPC tools print it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
