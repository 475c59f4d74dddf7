//! Extractors of the REST API: who is calling (from the bearer token), the
//! `{service_name}` path segment, and JSON bodies whose errors name the field without
//! echoing what was sent.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE, request::Parts},
};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::{HttpState, error::ApiError};
use crate::{
    bearer,
    domain::{Caller, Error},
};

/// The verified caller; without a token the request is answered 401.
pub struct Authenticated(pub Arc<Caller>);

/// The verified caller when a token is sent (Register: an admin token grants roles).
/// A token that is sent must verify: an expired one is 401, not an anonymous call.
pub struct MaybeAuthenticated(pub Option<Arc<Caller>>);

async fn caller(parts: &Parts, state: &HttpState) -> Result<Option<Arc<Caller>>, ApiError> {
    bearer::caller(&state.authenticator, &parts.headers)
        .await
        .map_err(|e| Error::from(e).into())
}

impl FromRequestParts<HttpState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        let caller = caller(parts, state).await?;
        Ok(Self(bearer::required(caller)?))
    }
}

impl FromRequestParts<HttpState> for MaybeAuthenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        caller(parts, state).await.map(Self)
    }
}

/// The `{service_name}` path segment, percent-decoded. The domain validates it.
pub struct ServiceName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ServiceName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(name)| Self(name))
            // The only way a single `{service_name}` segment fails: it decodes to
            // something that is not UTF-8.
            .map_err(|_| Error::invalid("service_name", "is not valid UTF-8").into())
    }
}

/// A JSON body, required.
pub struct JsonBody<T>(pub T);

/// A JSON body that may be left out (an empty body is `None`).
pub struct MaybeJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json(req.headers());
        let bytes = read(req, state).await?;
        if !json_type {
            return Err(not_json_type());
        }
        parse(&bytes).map(Self)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for MaybeJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json(req.headers());
        let bytes = read(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !json_type {
            return Err(not_json_type());
        }
        parse(&bytes).map(|body| Self(Some(body)))
    }
}

/// The body, within the router's `DefaultBodyLimit` (KMS_MAX_REQUEST_BYTES).
async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::body_too_large(),
            _ => ApiError::invalid_body("body", "could not be read"),
        })
}

/// What FastAPI parses as JSON: no content type at all, `application/json` or
/// `application/*+json`. Refusing `text/plain` and forms also keeps browsers from
/// sending these requests cross-site without a CORS preflight.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn not_json_type() -> ApiError {
    ApiError::invalid_body("body", "must be JSON (Content-Type: application/json)")
}

/// Parses the whole body. Errors name the field by its path (a field of our request
/// types) but never carry serde's message, which quotes the value sent.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also fill a struct from an array, which no client means.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::invalid_body("body", "field required")),
        Some(_) => return Err(ApiError::invalid_body("body", "must be a JSON object")),
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        match e.inner().classify() {
            Category::Data if path != "." => ApiError::invalid_body(&path, "has the wrong type"),
            Category::Data => ApiError::invalid_body("body", "must be a JSON object"),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::invalid_body("body", "is not valid JSON")
            }
        }
    })?;
    // Trailing bytes after the object make the whole body invalid, as in serde_json::from_slice.
    deserializer
        .end()
        .map_err(|_| ApiError::invalid_body("body", "is not valid JSON"))?;
    Ok(value)
}

/// A field every request of this kind must carry. Fields are `Option` in the request
/// types so that a missing one is answered here, by name, and not by serde.
pub fn required<T>(field: &'static str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid_body(field, "field required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: Option<String>,
        count: Option<i64>,
    }

    fn detail(bytes: &[u8]) -> String {
        let err = parse::<Body>(bytes).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        format!("{err:?}")
    }

    #[test]
    fn errors_name_the_field_and_never_echo_the_value() {
        let d = detail(br#"{"name": 12345678, "count": 1}"#);
        assert!(d.contains("name: has the wrong type"), "{d}");
        assert!(!d.contains("12345678"), "{d}");
        let d = detail(br#"{"name": "x", "count": "secret-value"}"#);
        assert!(
            d.contains("count: has the wrong type") && !d.contains("secret-value"),
            "{d}"
        );
        assert!(detail(b"{\"name\": ").contains("body: is not valid JSON"));
        assert!(detail(b"{} trailing").contains("body: is not valid JSON"));
        assert!(detail(b"[1]").contains("body: must be a JSON object"));
        assert!(detail(b"[]").contains("body: must be a JSON object"));
        assert!(detail(b"\"text\"").contains("body: must be a JSON object"));
        assert!(detail(b" ").contains("body: field required"));
        assert!(parse::<Body>(br#"{"unknown": true}"#).is_ok());
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(is_json(&HeaderMap::new()));
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
    }
}
