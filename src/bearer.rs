//! Bearer credentials (RFC 6750) in the `authorization` header, read the same way by
//! every transport: gRPC metadata are HTTP/2 headers, so the gRPC auth layer, Envoy's
//! ext_authz check and the REST API share this one reading of a token.

use http::{HeaderMap, header::AUTHORIZATION};

use crate::domain::{
    Caller,
    sessions::{AuthFailure, Authenticator},
};

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
    bearer_token(value)
        .map(Some)
        .ok_or("authorization header must be 'Bearer <access token>'")
}

/// Why a sent bearer token did not yield a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// Malformed, invalid, expired or revoked: UNAUTHENTICATED / 401.
    Rejected(&'static str),
    /// The login behind the token could not be checked: UNAVAILABLE / 503.
    Unavailable,
}

/// The caller named by the request's bearer token. `Ok(None)`: no token was sent,
/// which each transport decides about. A token that is sent must verify, signature
/// and login both: an expired, forged or logged-out one is an error, never a silent
/// anonymous call.
pub async fn caller(
    authenticator: &Authenticator,
    headers: &HeaderMap,
) -> Result<Option<Caller>, BearerError> {
    let Some(token) = from_headers(headers).map_err(BearerError::Rejected)? else {
        return Ok(None);
    };
    match authenticator.authenticate(token).await {
        Ok(claims) => Ok(Some(claims.caller())),
        Err(AuthFailure::Invalid) => Err(BearerError::Rejected("invalid or expired access token")),
        Err(AuthFailure::Unavailable) => Err(BearerError::Unavailable),
    }
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
    fn header_shapes() {
        assert_eq!(from_headers(&HeaderMap::new()), Ok(None));
        assert_eq!(from_headers(&headers(&["Bearer t"])), Ok(Some("t")));
        assert!(from_headers(&headers(&["Bearer a", "Bearer b"])).is_err());
        assert!(from_headers(&headers(&["Token t"])).is_err());
    }
}
