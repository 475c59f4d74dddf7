//! Bearer credentials (RFC 6750) in the `authorization` header, read the same way by
//! every transport: gRPC metadata are HTTP/2 headers, so the gRPC auth layer, Envoy's
//! ext_authz check and the REST API share this one reading of a token.

use http::{HeaderMap, header::AUTHORIZATION};

use crate::domain::{Caller, token::TokenAuthority};

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

/// The caller named by the request's bearer token. `Ok(None)`: no token was sent,
/// which each transport decides about. A token that is sent must verify: an expired
/// or forged one is an error, never a silent anonymous call.
pub fn caller(
    tokens: &TokenAuthority,
    headers: &HeaderMap,
) -> Result<Option<Caller>, &'static str> {
    match from_headers(headers)? {
        Some(token) => tokens
            .verify(token)
            .map(|claims| Some(claims.caller()))
            .map_err(|_| "invalid or expired access token"),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Roles;

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

    #[test]
    fn a_sent_token_must_verify() {
        let tokens = TokenAuthority::hs256(b"0123456789abcdef0123456789abcdef", "kms", "kms", 60);
        let now = chrono::Utc::now().timestamp();
        let good = tokens.issue("alice", &Roles::user(), now).unwrap().token;
        let found = caller_of(&tokens, &[&format!("Bearer {good}")]).unwrap();
        assert_eq!(found.unwrap().subject, "alice");
        assert_eq!(caller_of(&tokens, &[]), Ok(None));
        assert!(caller_of(&tokens, &["Bearer forged"]).is_err());
    }

    fn caller_of(tokens: &TokenAuthority, values: &[&str]) -> Result<Option<Caller>, &'static str> {
        caller(tokens, &headers(values))
    }
}
