//! The one place where domain errors become HTTP answers: a status and a JSON body
//! `{"detail": "..."}`, the shape the original HTTP key service used.

use std::borrow::Cow;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::domain::Error;

/// An error answer of the REST API. Built from a `domain::Error` (the status comes from
/// the match below), or for a request the domain never saw (a body that is not JSON,
/// an unknown path).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: Cow<'static, str>,
    /// Sent as `Retry-After` (seconds) with a 429, or a 503 for a server at capacity.
    retry_after_secs: Option<u64>,
}

/// `Retry-After` of a 503 for a server at its capacity (gRPC's RESOURCE_EXHAUSTED):
/// calls are short, so a slot is likely free by then.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong. For 422 it starts with the name of the offending field.
    pub detail: String,
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let retry_after_secs = match err {
            Error::Throttled { retry_after_secs } => Some(retry_after_secs),
            // Full now, with room again as soon as a call finishes.
            Error::Overloaded(_) => Some(OVERLOADED_RETRY_AFTER_SECS),
            _ => None,
        };
        let (status, detail): (_, Cow<'static, str>) = match err {
            // FastAPI, which the original service used, answers bad input with 422.
            Error::InvalidArgument { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, err.to_string().into())
            }
            Error::Unauthenticated(msg) => (StatusCode::UNAUTHORIZED, msg.into()),
            Error::PermissionDenied(msg) => (StatusCode::FORBIDDEN, msg.into()),
            Error::NotFound(msg) => (StatusCode::NOT_FOUND, msg.into()),
            // 400, not 409: the original service answered a taken username with 400,
            // and clients written against it treat every duplicate that way.
            Error::AlreadyExists(msg) => (StatusCode::BAD_REQUEST, msg.into()),
            // As in Google's gRPC-to-HTTP table: a valid request the current state refuses.
            Error::FailedPrecondition(msg) => (StatusCode::BAD_REQUEST, msg.into()),
            Error::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, err.to_string().into()),
            Error::Unavailable | Error::Overloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, err.to_string().into())
            }
            Error::Internal(detail) => {
                // The detail is for operators; the client gets nothing it could use.
                tracing::error!(error = %detail, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        };
        Self {
            status,
            detail,
            retry_after_secs,
        }
    }
}

impl ApiError {
    /// The same status with the original service's exact wording, which its clients
    /// match on (`Username already registered.`, `Incorrect username or password.`).
    pub fn with_detail(self, detail: &'static str) -> Self {
        Self {
            detail: detail.into(),
            ..self
        }
    }

    /// A request body the domain never saw: not JSON, or a field missing or of the
    /// wrong type. `field` is one of our field names or `body`; nothing of the sent
    /// value is echoed, since it may be a password.
    pub fn invalid_body(field: &str, reason: &str) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!("{field}: {reason}").into(),
            retry_after_secs: None,
        }
    }

    pub fn body_too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: "request body is too large".into(),
            retry_after_secs: None,
        }
    }

    /// The request was not done by its deadline (KMS_REQUEST_TIMEOUT_SECONDS):
    /// nearly always a body that stopped arriving, since the database's own waits end
    /// before it with a 503.
    pub fn timed_out() -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            detail: "the request took longer than the server allows".into(),
            retry_after_secs: None,
        }
    }

    /// The request had all arrived but was not answered by its deadline
    /// (KMS_REQUEST_TIMEOUT_SECONDS): gRPC's DEADLINE_EXCEEDED, 504 in Google's table.
    pub fn deadline_exceeded() -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            detail: "the request took longer than the server allows".into(),
            retry_after_secs: None,
        }
    }

    /// Spelled as FastAPI spells them, for clients that compare.
    pub fn unknown_path() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            detail: "Not Found".into(),
            retry_after_secs: None,
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            detail: "Method Not Allowed".into(),
            retry_after_secs: None,
        }
    }

    /// The status and message, for the web console's pages: one mapping for both.
    pub(super) fn parts(&self) -> (StatusCode, &str) {
        (self.status, &self.detail)
    }

    #[cfg(test)]
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                detail: self.detail.into_owned(),
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 section 3: a 401 names the scheme the client should use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            // RFC 9110 section 10.2.3: the delay in seconds.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_and_detail(err: Error) -> (u16, String) {
        let api = ApiError::from(err);
        (api.status.as_u16(), api.detail.into_owned())
    }

    #[test]
    fn every_domain_error_has_its_status() {
        assert_eq!(
            status_and_detail(Error::invalid("service_name", "must not be empty")),
            (422, "service_name: must not be empty".into())
        );
        assert_eq!(status_and_detail(Error::Unauthenticated("x")).0, 401);
        assert_eq!(status_and_detail(Error::PermissionDenied("x")).0, 403);
        assert_eq!(status_and_detail(Error::NotFound("x".into())).0, 404);
        assert_eq!(status_and_detail(Error::AlreadyExists("x".into())).0, 400);
        assert_eq!(status_and_detail(Error::Unavailable).0, 503);
        assert_eq!(
            status_and_detail(Error::Throttled {
                retry_after_secs: 4
            }),
            (429, "too many failed logins; retry in 4 s".into())
        );
    }

    #[test]
    fn a_429_says_when_to_retry() {
        let response = ApiError::from(Error::Throttled {
            retry_after_secs: 8,
        })
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "8");
        let response = ApiError::from(Error::Unavailable).into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let response = ApiError::from(Error::Overloaded("full")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let (status, detail) = status_and_detail(Error::Internal("SELECT secret FROM t".into()));
        assert_eq!(status, 500);
        assert_eq!(detail, "internal error");
    }

    #[test]
    fn a_401_names_the_bearer_scheme() {
        let response = ApiError::from(Error::Unauthenticated("no")).into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = ApiError::unknown_path().into_response();
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
