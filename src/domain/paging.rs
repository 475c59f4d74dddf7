//! Page tokens for keyset pagination: opaque to clients, the last key of the page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{Error, Result};

const VERSION: &str = "v1:";

pub fn encode(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{VERSION}{last}"))
}

/// The key a page starts after; `None` for the first page. `valid` checks the key the
/// way the listed names are checked, so a token can only name a possible row.
pub fn decode(token: &str, valid: impl Fn(&str) -> Result<()>) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || Error::invalid("page_token", "is malformed; pass next_page_token unchanged");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let last = text.strip_prefix(VERSION).ok_or_else(malformed)?;
    valid(last).map_err(|_| malformed())?;
    Ok(Some(last.to_owned()))
}

/// Splits a fetched `size + 1` rows into the page and its `next_page_token`.
pub fn page<T>(mut rows: Vec<T>, size: u64, key: impl Fn(&T) -> &str) -> (Vec<T>, String) {
    let more = rows.len() as u64 > size;
    rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let next = match rows.last() {
        Some(last) if more => encode(key(last)),
        _ => String::new(),
    };
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validate;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let t = encode("billing");
        assert_eq!(
            decode(&t, validate::service_name).unwrap().as_deref(),
            Some("billing")
        );
        assert_eq!(decode("", validate::service_name).unwrap(), None);
        for bad in [
            "%%%",
            "bm90LXYx",
            &URL_SAFE_NO_PAD.encode("v1:bad name"),
            &URL_SAFE_NO_PAD.encode("v1:"),
        ] {
            match decode(bad, validate::service_name) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "page_token"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn pages_know_whether_more_follow() {
        let (rows, next) = page(vec!["a", "b", "c"], 2, |s| s);
        assert_eq!(rows, ["a", "b"]);
        assert_eq!(decode(&next, |_| Ok(())).unwrap().as_deref(), Some("b"));
        let (rows, next) = page(vec!["a", "b"], 2, |s| s);
        assert_eq!((rows.len(), next.as_str()), (2, ""));
    }
}
