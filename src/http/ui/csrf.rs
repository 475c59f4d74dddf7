//! CSRF: every state-changing request of the console (sign-in included) carries the
//! session's token in the form field `csrf_token`, compared in constant time. It is
//! checked here, before any handler, for every method but GET and HEAD, so a new form
//! cannot forget it. (The session cookie is `SameSite=Strict` as well.)

use axum::{
    body::{Body, to_bytes},
    extract::Request,
    http::{Method, StatusCode, header::CONTENT_TYPE},
};
use subtle::ConstantTimeEq;

pub const FIELD: &str = "csrf_token";
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// The request back, its body read once and put back, when it is a form whose
/// `csrf_token` is `expected`. Otherwise the status to refuse it with: 403, or 413
/// for a body over `max_bytes`.
pub async fn check(
    request: Request,
    expected: &str,
    max_bytes: usize,
) -> Result<Request, StatusCode> {
    let (parts, body) = request.into_parts();
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(FORM_TYPE));
    if !is_form {
        return Err(StatusCode::FORBIDDEN);
    }
    let bytes = to_bytes(body, max_bytes)
        .await
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)?;
    let sent = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(name, _)| name == FIELD))
        .map(|(_, value)| value);
    match sent {
        Some(sent) if tokens_match(&sent, expected) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(StatusCode::FORBIDDEN),
    }
}

/// Constant time in the content; the length of the token is no secret.
pub fn tokens_match(sent: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str, content_type: &str) -> Request {
        Request::post("/ui/x")
            .header(CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn only_a_form_with_the_token_passes() {
        let ok = check(form("a=1&csrf_token=tok", FORM_TYPE), "tok", 1024).await;
        let request = ok.unwrap();
        let body = to_bytes(request.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"a=1&csrf_token=tok", "the body is kept");
        for (body, ct) in [
            ("a=1", FORM_TYPE),
            ("csrf_token=other", FORM_TYPE),
            ("csrf_token=", FORM_TYPE),
            ("csrf_token=tok", "text/plain"),
            ("csrf_token=tok", "multipart/form-data"),
        ] {
            assert_eq!(
                check(form(body, ct), "tok", 1024).await.err(),
                Some(StatusCode::FORBIDDEN),
                "{body} {ct}"
            );
        }
        let big = format!("csrf_token=tok&x={}", "a".repeat(2000));
        assert_eq!(
            check(form(&big, FORM_TYPE), "tok", 1024).await.err(),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[test]
    fn an_empty_expected_token_matches_nothing() {
        assert!(!tokens_match("", ""));
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("ab", "abc"));
    }
}
