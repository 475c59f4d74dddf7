//! Bearer credentials (RFC 6750) in the `authorization` header, read and decided the
//! same way by every transport: gRPC metadata are HTTP/2 headers, so the gRPC auth
//! layer, Envoy's ext_authz check and the REST API share this one reading of a token,
//! one verdict on it and one wording of each refusal. Each transport turns the
//! refusal into its answer through its single error map (`grpc/status.rs`,
//! `http/error.rs`), so the two cannot drift apart.

use std::sync::Arc;

use http::{HeaderMap, header::AUTHORIZATION};

use crate::domain::{
    Caller, Error,
    sessions::{AuthFailure, Authenticator},
};

/// The refusal of a call that needs a token and was sent none.
pub const MISSING_TOKEN: &str = "missing bearer access token";
/// The refusal of an `authorization` header of another scheme, or without a token.
pub const NOT_BEARER: &str = "authorization header must be 'Bearer <access token>'";
/// The refusal of a token that does not verify: forged, expired, or its login revoked.
pub const INVALID_TOKEN: &str = "invalid or expired access token";

/// The token in an `authorization` header value of the form `Bearer <token>`; `None`
/// for any other scheme or an empty token.
pub fn bearer_token(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        // The scheme is case-insensitive (RFC 6750 section 2.1, RFC 9110 section 11.1).
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Some(token.trim())
        }
        _ => None,
    }
}

/// The token from `authorization: Bearer <token>`. `Ok(None)`: no header. `Err` names
/// what is wrong with the header, for an UNAUTHENTICATED / 401 answer.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two headers could make two layers disagree about who is calling.
    if values.next().is_some() {
        return Err("more than one authorization header");
    }
    let value = value
        .to_str()
        .map_err(|_| "malformed authorization header")?;
    bearer_token(value).map(Some).ok_or(NOT_BEARER)
}

/// Why a sent bearer token did not yield a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// Malformed, invalid, expired or revoked: UNAUTHENTICATED / 401.
    Rejected(&'static str),
    /// The login behind the token could not be checked: UNAVAILABLE / 503.
    Unavailable,
}

impl From<BearerError> for Error {
    fn from(err: BearerError) -> Self {
        match err {
            BearerError::Rejected(reason) => Error::Unauthenticated(reason),
            BearerError::Unavailable => Error::Unavailable,
        }
    }
}

/// The caller a token names, signature and login both checked.
pub async fn verify(
    authenticator: &Authenticator,
    token: &str,
) -> Result<Arc<Caller>, BearerError> {
    authenticator.caller(token).await.map_err(refusal)
}

/// The refusal of a token that did not yield a caller.
fn refusal(failure: AuthFailure) -> BearerError {
    match failure {
        AuthFailure::Invalid => BearerError::Rejected(INVALID_TOKEN),
        AuthFailure::Unavailable => BearerError::Unavailable,
    }
}

/// Whether `token` is still an admin's: signature, expiry, login and role, checked as
/// for a new call. For streams that outlive the check made when they opened (the audit
/// watch, over gRPC and in the console), which end when this fails.
pub async fn still_admin(authenticator: &Authenticator, token: &str) -> Result<(), Error> {
    let caller = verify(authenticator, token).await?;
    crate::domain::require_admin(&caller)
}

/// The caller named by the request's bearer token. `Ok(None)`: no token was sent,
/// which each transport decides about (see `required`). A token that is sent must
/// verify, signature and login both: an expired, forged or logged-out one is an
/// error, never a silent anonymous call.
pub async fn caller(
    authenticator: &Authenticator,
    headers: &HeaderMap,
) -> Result<Option<Arc<Caller>>, BearerError> {
    match from_headers(headers).map_err(BearerError::Rejected)? {
        Some(token) => verify(authenticator, token).await.map(Some),
        None => Ok(None),
    }
}

/// `caller` decided without awaiting anything: the header alone, or the token and its
/// login from the caches. `None` when `caller` must be awaited (nothing cached).
pub fn cached_caller(
    authenticator: &Authenticator,
    headers: &HeaderMap,
) -> Option<Result<Option<Arc<Caller>>, BearerError>> {
    let token = match from_headers(headers) {
        Ok(Some(token)) => token,
        Ok(None) => return Some(Ok(None)),
        Err(reason) => return Some(Err(BearerError::Rejected(reason))),
    };
    let cached = authenticator.cached_caller(token)?;
    Some(cached.map(Some).map_err(refusal))
}

/// For a call that needs a caller: none is a refusal, never a pass.
pub fn required<C>(caller: Option<C>) -> Result<C, Error> {
    caller.ok_or(Error::Unauthenticated(MISSING_TOKEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_bearer_scheme_with_a_token_counts() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bEaReR  abc "), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearer   ", "abc", ""] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refusals_become_the_domain_errors_both_transports_map() {
        let rejected = Error::from(BearerError::Rejected(INVALID_TOKEN));
        assert!(matches!(rejected, Error::Unauthenticated(INVALID_TOKEN)));
        assert!(matches!(
            Error::from(BearerError::Unavailable),
            Error::Unavailable
        ));
        assert!(matches!(
            required::<Caller>(None),
            Err(Error::Unauthenticated(MISSING_TOKEN))
        ));
    }

    #[test]
    fn header_shapes() {
        assert_eq!(from_headers(&HeaderMap::new()), Ok(None));
        assert_eq!(from_headers(&headers(&["Bearer t"])), Ok(Some("t")));
        assert!(from_headers(&headers(&["Bearer a", "Bearer b"])).is_err());
        assert!(from_headers(&headers(&["Token t"])).is_err());
    }
}
