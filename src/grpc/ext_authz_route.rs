//! What an Envoy route asks of ext_authz (`context_extensions`), and the rate-limit
//! headers of its answers.

use crate::domain::keys::RateLimitStatus;

/// `context_extensions` a route may set.
pub const REQUIRED_SCOPES: &str = "kms_required_scopes";
pub const REQUIRED_ROLES: &str = "kms_required_roles";

/// What a route asks of a request, from its `context_extensions`: `None` when the
/// route does not name that kind of credential.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Route {
    pub(super) scopes: Option<Vec<String>>,
    pub(super) roles: Option<Vec<String>>,
}

impl Route {
    /// From the values of `kms_required_scopes` and `kms_required_roles`, when set.
    pub(super) fn of(scopes: Option<&str>, roles: Option<&str>) -> Self {
        let list = |value: Option<&str>| {
            value.map(|v| v.split_ascii_whitespace().map(str::to_owned).collect())
        };
        Self {
            scopes: list(scopes),
            roles: list(roles),
        }
    }

    /// A route naming only one kind refuses the other.
    pub(super) fn takes_keys(&self) -> bool {
        self.scopes.is_some() || self.roles.is_none()
    }

    pub(super) fn takes_tokens(&self) -> bool {
        self.roles.is_some() || self.scopes.is_none()
    }
}

/// Whole seconds from now until `at`, rounded up, never negative.
pub(super) fn seconds_until(at: chrono::DateTime<chrono::Utc>) -> i64 {
    let ms = (at - chrono::Utc::now()).num_milliseconds().max(0);
    (ms + 999) / 1000
}

/// The `ratelimit-*` headers (draft-ietf-httpapi-ratelimit-headers) for a limit.
pub(super) fn rate_limit_headers(status: &RateLimitStatus) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", status.limit.to_string()),
        ("ratelimit-remaining", status.remaining.to_string()),
        (
            "ratelimit-reset",
            seconds_until(status.reset_at).to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_naming_one_kind_refuses_the_other() {
        let ext = |pairs: &[(&str, &str)]| {
            let value = |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            Route::of(value(REQUIRED_SCOPES), value(REQUIRED_ROLES))
        };
        let open = ext(&[]);
        assert!(open.takes_keys() && open.takes_tokens());
        let keys = ext(&[(REQUIRED_SCOPES, "a  b:read ")]);
        assert_eq!(keys.scopes, Some(vec!["a".into(), "b:read".into()]));
        assert!(keys.takes_keys() && !keys.takes_tokens());
        let tokens = ext(&[(REQUIRED_ROLES, "admin")]);
        assert!(!tokens.takes_keys() && tokens.takes_tokens());
        let both = ext(&[(REQUIRED_ROLES, "admin"), (REQUIRED_SCOPES, "")]);
        assert!(both.takes_keys() && both.takes_tokens());
    }
}
