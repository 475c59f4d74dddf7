//! Checks of the policy fields a client sends: each failure names its field.

use std::collections::BTreeMap;

use super::RateLimit;
use crate::domain::{Error, Result};

pub const METADATA_MAX_ENTRIES: usize = 32;
pub const METADATA_KEY_MAX: usize = 64;
pub const METADATA_VALUE_MAX_BYTES: usize = 1024;
pub const REQUESTS_MAX: i64 = 1_000_000_000;
pub const WINDOW_SECONDS_MAX: i64 = 86_400;
pub const REMAINING_MAX: i64 = 1_000_000_000_000;
pub const COST_MAX: i64 = 1_000_000;

/// The fields UpdateKey's mask may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskPath {
    Description,
    Scopes,
    Metadata,
    Enabled,
    RateLimit,
    Remaining,
    TtlSeconds,
}

pub fn metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > METADATA_MAX_ENTRIES {
        return Err(Error::invalid("metadata", "at most 32 entries"));
    }
    for (key, value) in metadata {
        let key_ok = (1..=METADATA_KEY_MAX).contains(&key.len())
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !key_ok {
            return Err(Error::invalid(
                "metadata",
                "keys must be 1..64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        if value.len() > METADATA_VALUE_MAX_BYTES {
            return Err(Error::invalid(
                "metadata",
                format!("the value of '{key}' is longer than 1024 bytes"),
            ));
        }
    }
    Ok(())
}

pub fn rate_limit(limit: Option<RateLimit>) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    if !(1..=REQUESTS_MAX).contains(&limit.requests) {
        return Err(Error::invalid(
            "rate_limit.requests",
            "must be 1..1000000000",
        ));
    }
    if !(1..=WINDOW_SECONDS_MAX).contains(&limit.window_seconds) {
        return Err(Error::invalid(
            "rate_limit.window_seconds",
            "must be 1..86400",
        ));
    }
    Ok(())
}

pub fn remaining(remaining: Option<i64>) -> Result<()> {
    match remaining {
        Some(n) if !(0..=REMAINING_MAX).contains(&n) => {
            Err(Error::invalid("remaining", "must be 0..1000000000000"))
        }
        _ => Ok(()),
    }
}

pub fn cost(cost: Option<i64>) -> Result<()> {
    match cost {
        Some(n) if !(0..=COST_MAX).contains(&n) => {
            Err(Error::invalid("cost", "must be 0..1000000"))
        }
        _ => Ok(()),
    }
}

/// The mask's paths, each known and none twice; an empty mask is refused.
pub fn mask(paths: &[String]) -> Result<Vec<MaskPath>> {
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "name at least one field to change",
        ));
    }
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let known = match path.as_str() {
            "description" => MaskPath::Description,
            "scopes" => MaskPath::Scopes,
            "metadata" => MaskPath::Metadata,
            "enabled" => MaskPath::Enabled,
            "rate_limit" => MaskPath::RateLimit,
            "remaining" => MaskPath::Remaining,
            "ttl_seconds" => MaskPath::TtlSeconds,
            other => {
                // Paths are client text: shown only when short and printable.
                let shown: String = other.chars().take(64).filter(|c| !c.is_control()).collect();
                return Err(Error::invalid(
                    "update_mask",
                    format!(
                        "unknown path '{shown}'; known: description, scopes, metadata, \
                         enabled, rate_limit, remaining, ttl_seconds"
                    ),
                ));
            }
        };
        if !out.contains(&known) {
            out.push(known);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn field(e: Error) -> &'static str {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn edges() {
        let rl = |requests, window_seconds| {
            rate_limit(Some(RateLimit {
                requests,
                window_seconds,
            }))
        };
        assert!(rl(1, 1).is_ok() && rl(REQUESTS_MAX, WINDOW_SECONDS_MAX).is_ok());
        assert_eq!(field(rl(0, 1).unwrap_err()), "rate_limit.requests");
        assert_eq!(
            field(rl(1, 86_401).unwrap_err()),
            "rate_limit.window_seconds"
        );
        assert!(remaining(Some(0)).is_ok() && remaining(Some(REMAINING_MAX)).is_ok());
        assert_eq!(field(remaining(Some(-1)).unwrap_err()), "remaining");
        assert_eq!(field(cost(Some(COST_MAX + 1)).unwrap_err()), "cost");
        assert!(cost(None).is_ok() && cost(Some(0)).is_ok());
        assert_eq!(field(mask(&[]).unwrap_err()), "update_mask");
        assert_eq!(field(mask(&["nope".into()]).unwrap_err()), "update_mask");
        assert_eq!(
            mask(&["enabled".into(), "enabled".into()]).unwrap(),
            vec![MaskPath::Enabled]
        );
        let mut m = BTreeMap::new();
        m.insert("team".to_owned(), "x".repeat(1024));
        assert!(metadata(&m).is_ok());
        m.insert("big".to_owned(), "x".repeat(1025));
        assert_eq!(field(metadata(&m).unwrap_err()), "metadata");
        let many: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(metadata(&many).is_err());
    }

    proptest! {
        #[test]
        fn rate_limits_pass_exactly_inside_their_bounds(requests in any::<i64>(), window_seconds in any::<i64>()) {
            let ok = rate_limit(Some(RateLimit { requests, window_seconds })).is_ok();
            prop_assert_eq!(ok, (1..=REQUESTS_MAX).contains(&requests) && (1..=WINDOW_SECONDS_MAX).contains(&window_seconds));
        }

        #[test]
        fn counts_pass_exactly_inside_their_bounds(n in any::<i64>()) {
            prop_assert_eq!(remaining(Some(n)).is_ok(), (0..=REMAINING_MAX).contains(&n));
            prop_assert_eq!(cost(Some(n)).is_ok(), (0..=COST_MAX).contains(&n));
        }

        #[test]
        fn metadata_keys(key in "\\PC{0,70}") {
            let m: BTreeMap<_, _> = [(key.clone(), String::new())].into();
            let expected = (1..=64).contains(&key.len())
                && key.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
            prop_assert_eq!(metadata(&m).is_ok(), expected);
        }

        #[test]
        fn unknown_mask_paths_are_refused(path in "[a-z_.]{0,20}") {
            let known = ["description", "scopes", "metadata", "enabled", "rate_limit", "remaining", "ttl_seconds"];
            prop_assert_eq!(mask(std::slice::from_ref(&path)).is_ok(), known.contains(&path.as_str()));
        }
    }
}
