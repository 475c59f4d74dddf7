//! The `x-request-id` header, read from a request and put on its answer the same way
//! by both transports.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::domain::audit;

/// The header's name, made once: a name given as `&str` is parsed on every use.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the one the client sent when it is sane, else a fresh one
/// (`audit::request_id` decides).
pub fn of(headers: &HeaderMap) -> String {
    audit::request_id(headers.get(&HEADER).and_then(|v| v.to_str().ok()))
}

/// The answer's header value for `id`. Marked never-indexed: over HTTP/2 a value
/// that is new on every call would otherwise be inserted into the connection's HPACK
/// table on each answer, evicting the entries that do repeat (`grpc-status`,
/// `content-type`) and costing the insertion for nothing.
pub fn value(id: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(id).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_id_is_kept_and_answered_unindexed() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(of(&headers), "abc-123");
        let answered = value("abc-123").unwrap();
        assert_eq!(answered, "abc-123");
        assert!(answered.is_sensitive());
        headers.insert(HEADER, HeaderValue::from_static("bad id"));
        assert_ne!(of(&headers), "bad id");
        assert!(!of(&HeaderMap::new()).is_empty());
    }
}
