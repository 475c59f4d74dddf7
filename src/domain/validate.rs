//! Input rules from shared/API.md. Each check names the field it rejects.

use super::error::{Error, Result};

pub const SERVICE_NAME_MAX: usize = 64;
pub const USERNAME_MAX: usize = 64;
pub const ROLE_MAX: usize = 32;
/// Roles per user: they travel in every access token (and the console's cookie).
pub const ROLES_MAX: usize = 32;
pub const PASSWORD_MAX_BYTES: usize = 1024;
pub const DESCRIPTION_MAX: usize = 1024;
pub const IMPORTED_KEY_MIN: usize = 32;
pub const IMPORTED_KEY_MAX: usize = 256;
/// Longest `ttl_seconds` accepted: 100 years, far past any sane key lifetime and far
/// inside what timestamps can represent.
pub const TTL_MAX_SECONDS: i64 = 100 * 366 * 24 * 3600;
/// Longest rotation grace period: 30 days.
pub const GRACE_MAX_SECONDS: i64 = 30 * 24 * 3600;
pub const PAGE_SIZE_DEFAULT: u64 = 50;
pub const PAGE_SIZE_MAX: u64 = 1000;

fn check_chars(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    what: &str,
) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if !value.chars().all(allowed) {
        return Err(Error::invalid(field, format!("may contain only {what}")));
    }
    Ok(())
}

pub fn service_name(value: &str) -> Result<()> {
    check_chars(
        "service_name",
        value,
        SERVICE_NAME_MAX,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
        "A-Z a-z 0-9 . _ -",
    )
}

pub fn username(value: &str) -> Result<()> {
    check_chars(
        "username",
        value,
        USERNAME_MAX,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'),
        "A-Z a-z 0-9 . _ @ -",
    )
}

pub fn role(value: &str) -> Result<()> {
    check_chars(
        "roles",
        value,
        ROLE_MAX,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'),
        "a-z 0-9 _ -",
    )
}

/// A user's role list: at most `ROLES_MAX` distinct roles (repeats are one role, as
/// the set stored), each a valid role.
pub fn roles(values: &[String]) -> Result<()> {
    let distinct: std::collections::BTreeSet<&str> = values.iter().map(String::as_str).collect();
    if distinct.len() > ROLES_MAX {
        return Err(Error::invalid(
            "roles",
            format!("at most {ROLES_MAX} roles per user"),
        ));
    }
    values.iter().try_for_each(|r| role(r))
}

/// Passwords are measured in bytes (what argon2 hashes), not characters.
pub fn password(field: &'static str, value: &str, min_bytes: usize) -> Result<()> {
    if value.len() < min_bytes {
        return Err(Error::invalid(
            field,
            format!("must be at least {min_bytes} bytes"),
        ));
    }
    if value.len() > PASSWORD_MAX_BYTES {
        return Err(Error::invalid(
            field,
            format!("must be at most {PASSWORD_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub fn description(value: &str) -> Result<()> {
    if value.chars().count() > DESCRIPTION_MAX {
        return Err(Error::invalid(
            "description",
            format!("must be at most {DESCRIPTION_MAX} characters"),
        ));
    }
    // PostgreSQL text cannot hold NUL; other control characters only make logs and
    // terminals lie.
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid(
            "description",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An exact-match filter of the audit trail. Recorded values never hold control
/// characters (the store replaces them), so a filter with one could match nothing; and
/// PostgreSQL text cannot even hold NUL.
pub fn audit_filter(field: &'static str, value: &str) -> Result<()> {
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// An imported secret: 32..256 printable ASCII characters, no spaces.
pub fn imported_api_key(value: &str) -> Result<()> {
    if !(IMPORTED_KEY_MIN..=IMPORTED_KEY_MAX).contains(&value.len()) {
        return Err(Error::invalid(
            "api_key",
            format!("must be {IMPORTED_KEY_MIN}..{IMPORTED_KEY_MAX} characters"),
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "api_key",
            "may contain only printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

pub fn ttl_seconds(value: i64) -> Result<()> {
    if value < 0 {
        return Err(Error::invalid("ttl_seconds", "must not be negative"));
    }
    if value > TTL_MAX_SECONDS {
        return Err(Error::invalid(
            "ttl_seconds",
            format!("must be at most {TTL_MAX_SECONDS}"),
        ));
    }
    Ok(())
}

pub fn grace_period_seconds(value: i64) -> Result<()> {
    if !(0..=GRACE_MAX_SECONDS).contains(&value) {
        return Err(Error::invalid(
            "grace_period_seconds",
            format!("must be between 0 and {GRACE_MAX_SECONDS} (30 days)"),
        ));
    }
    Ok(())
}

/// `page_size` 0 means the default; larger than the maximum is clamped.
pub fn page_size(value: i32) -> Result<u64> {
    match u64::try_from(value) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(PAGE_SIZE_DEFAULT),
        Ok(n) => Ok(n.min(PAGE_SIZE_MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> &'static str {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn service_names() {
        assert!(service_name("billing-api.v2_x").is_ok());
        assert!(service_name(&"a".repeat(64)).is_ok());
        assert_eq!(field_of(service_name("").unwrap_err()), "service_name");
        assert!(service_name(&"a".repeat(65)).is_err());
        assert!(service_name("has space").is_err());
        assert!(service_name("slash/").is_err());
        assert!(service_name("nul\0").is_err());
        assert!(service_name("é").is_err());
    }

    #[test]
    fn usernames_allow_at_sign() {
        assert!(username("alice@example.com").is_ok());
        assert!(username("a+b").is_err());
        assert!(username(&"u".repeat(65)).is_err());
    }

    #[test]
    fn a_user_has_at_most_32_roles() {
        let many: Vec<String> = (0..33).map(|i| format!("r{i}")).collect();
        assert!(roles(&many[..32]).is_ok());
        assert!(matches!(
            roles(&many),
            Err(Error::InvalidArgument { field: "roles", .. })
        ));
        assert!(roles(&["Admin".to_owned()]).is_err());
        // Repeats are one role: ten thousand "user" are the set {user}.
        assert!(roles(&vec!["user".to_owned(); 10_000]).is_ok());
    }

    #[test]
    fn roles_are_lowercase() {
        assert!(role("admin").is_ok());
        assert!(role("ops_team-2").is_ok());
        assert!(role("Admin").is_err());
        assert!(role("").is_err());
        assert!(role(&"r".repeat(33)).is_err());
        assert_eq!(field_of(role("a,b").unwrap_err()), "roles");
    }

    #[test]
    fn passwords_by_bytes() {
        assert!(password("password", "123456789012", 12).is_ok());
        assert!(password("password", "12345678901", 12).is_err());
        assert!(password("password", &"x".repeat(1024), 12).is_ok());
        assert!(password("password", &"x".repeat(1025), 12).is_err());
        // 4 two-byte characters are 8 bytes
        assert!(password("password", "éééé", 8).is_ok());
    }

    #[test]
    fn imported_keys() {
        assert!(imported_api_key(&"k".repeat(32)).is_ok());
        assert!(imported_api_key(&"k".repeat(31)).is_err());
        assert!(imported_api_key(&"k".repeat(257)).is_err());
        assert!(imported_api_key(&format!("{} x", "k".repeat(40))).is_err());
        assert!(imported_api_key(&format!("{}\u{7f}", "k".repeat(40))).is_err());
    }

    #[test]
    fn numbers() {
        assert!(ttl_seconds(0).is_ok());
        assert!(ttl_seconds(-1).is_err());
        assert!(ttl_seconds(i64::MAX).is_err());
        assert!(grace_period_seconds(0).is_ok());
        assert!(grace_period_seconds(GRACE_MAX_SECONDS).is_ok());
        assert!(grace_period_seconds(GRACE_MAX_SECONDS + 1).is_err());
        assert!(grace_period_seconds(-1).is_err());
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert_eq!(page_size(7).unwrap(), 7);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn audit_filters() {
        assert!(audit_filter("actor", "root").is_ok());
        assert!(audit_filter("actor", "\u{202e}x").is_ok());
        assert_eq!(
            field_of(audit_filter("target", "a\0").unwrap_err()),
            "target"
        );
        assert!(audit_filter("action", "login\n").is_err());
    }

    #[test]
    fn descriptions() {
        assert!(description("line one\nline two").is_ok());
        assert!(description("nul\0").is_err());
        assert!(description(&"d".repeat(1025)).is_err());
    }
}
