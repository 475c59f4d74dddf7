//! The console's session: a cookie holding the login's access and refresh tokens, the
//! CSRF token and two times, sealed with the keyring (AES-256-GCM under the current
//! data key) and base64url-encoded. Nothing is kept on the server beyond the login the
//! tokens name, so a session works on every replica and after a restart, and ends the
//! moment its login does (sign-out, role or password change, user deleted): each
//! request checks the access token with the same `Authenticator` as the REST API.
//!
//! The cookie is re-issued on every answer with `seen` moved on: idle for
//! `IDLE_SECONDS` it is refused (and the browser drops it, `Max-Age`), and it never
//! outlives `ABSOLUTE_SECONDS` from sign-in (nor the login's own maximum lifetime,
//! `KMS_SESSION_MAX_LIFETIME_SECONDS`, when that is shorter). The times are inside the seal, so a client
//! cannot extend them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{crypto::random, domain::keyring::Keyring};

pub const COOKIE: &str = "kms_ui";
/// Binds a sealed value to this use: a sealed API key secret is no session cookie.
const AAD: &[u8] = b"kms web console session v1";
/// Idle timeout: a session unused this long is over.
pub const IDLE_SECONDS: i64 = 15 * 60;
/// Absolute cap from sign-in, whatever the activity (or the login's maximum
/// lifetime, if shorter: `Payload::is_live`).
pub const ABSOLUTE_SECONDS: i64 = 12 * 3600;
/// The access token is renewed (Refresh) when it has less than this left.
pub const REFRESH_MARGIN_SECONDS: i64 = 120;
/// Cookies larger than this are not even opened (browsers keep at most 4 KiB).
const MAX_COOKIE_BYTES: usize = 4096;
/// `kms_ui` cookies of one request that are tried; the rest are ignored.
const MAX_SESSION_COOKIES: usize = 2;

/// The login's tokens. Never logged: no `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// What the cookie carries. Without `tokens` it is a visitor's: only the CSRF token of
/// the sign-in form.
#[derive(Clone, Serialize, Deserialize)]
pub struct Payload {
    pub csrf: String,
    /// Unix seconds: when this session began (sign-in, or the first visit).
    pub created: i64,
    /// Unix seconds: the last request.
    pub seen: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("created", &self.created)
            .field("seen", &self.seen)
            .field("signed_in", &self.tokens.is_some())
            .finish_non_exhaustive()
    }
}

impl Payload {
    /// A visitor's session: a fresh CSRF token, no login.
    pub fn visitor(now: i64) -> Result<Self, crate::crypto::CryptoError> {
        Ok(Self {
            csrf: new_csrf_token()?,
            created: now,
            seen: now,
            tokens: None,
        })
    }

    /// A signed-in session: a new CSRF token too, so nothing learnt before sign-in
    /// carries over.
    pub fn signed_in(tokens: Tokens, now: i64) -> Result<Self, crate::crypto::CryptoError> {
        Ok(Self {
            tokens: Some(tokens),
            ..Self::visitor(now)?
        })
    }

    /// Whether the session may still be used at `now`: not idle too long, not past
    /// its absolute cap (`ABSOLUTE_SECONDS`, or the login's `max_lifetime` in seconds
    /// if shorter), and not from the future (beyond a minute of clock skew between
    /// replicas).
    pub fn is_live(&self, now: i64, max_lifetime: i64) -> bool {
        now - self.seen <= IDLE_SECONDS
            && now - self.created <= ABSOLUTE_SECONDS.min(max_lifetime)
            && self.seen <= now + 60
            && self.created <= self.seen
    }
}

pub fn new_csrf_token() -> Result<String, crate::crypto::CryptoError> {
    Ok(URL_SAFE_NO_PAD.encode(random::bytes::<32>()?))
}

/// Seals the payload for the cookie.
pub fn seal(keyring: &Keyring, payload: &Payload) -> Option<String> {
    let json = Zeroizing::new(serde_json::to_vec(payload).ok()?);
    match keyring.seal(&json, AAD) {
        Ok(sealed) => Some(URL_SAFE_NO_PAD.encode(sealed.bytes)),
        Err(e) => {
            tracing::error!(error = %e, "the console session could not be sealed");
            None
        }
    }
}

/// Whether a sealed value fits in a cookie: browsers drop cookies whose name and
/// value pass 4 KiB, silently, and keep sending the previous one.
pub fn fits(sealed: &str) -> bool {
    COOKIE.len() + 1 + sealed.len() <= MAX_COOKIE_BYTES
}

/// Whether a session signed in with `tokens` fits in a cookie (a user with many
/// long roles has a large access token).
pub fn signed_in_fits(keyring: &Keyring, tokens: &Tokens, now: i64) -> bool {
    Payload::signed_in(tokens.clone(), now)
        .ok()
        .and_then(|p| seal(keyring, &p))
        .is_some_and(|sealed| fits(&sealed))
}

/// Opens a cookie value; `None` for anything not sealed by this KMS as a session.
/// Only data keys already in memory are tried (`Keyring::open_loaded`): the cookie
/// comes from anyone, so it must not reach the master key or the database.
pub fn open(keyring: &Keyring, value: &str) -> Option<Payload> {
    if value.len() > MAX_COOKIE_BYTES {
        return None;
    }
    let sealed = URL_SAFE_NO_PAD.decode(value).ok()?;
    let plain = keyring.open_loaded(&sealed, AAD).ok()?;
    serde_json::from_slice(&plain).ok()
}

/// The values of the `kms_ui` cookies of a request, in order, at most
/// `MAX_SESSION_COOKIES` of them: a browser sends one (two while an old path's
/// cookie lingers), and each costs an AES-GCM open.
pub fn cookie_values(headers: &http::HeaderMap) -> Vec<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .take(MAX_SESSION_COOKIES)
        .collect()
}

/// The `Set-Cookie` value: `HttpOnly` (no script reads it), `SameSite=Strict` (no
/// other site's page sends it), `Secure` under TLS, only under `/ui`, and dropped by
/// the browser once idle for `IDLE_SECONDS`.
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/ui; Max-Age={IDLE_SECONDS}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(created: i64, seen: i64) -> Payload {
        Payload {
            csrf: "c".into(),
            created,
            seen,
            tokens: None,
        }
    }

    #[test]
    fn idle_and_absolute_limits() {
        let t = 1_000_000;
        assert!(payload(t, t).is_live(t, i64::MAX));
        assert!(payload(t, t).is_live(t + IDLE_SECONDS, i64::MAX));
        assert!(!payload(t, t).is_live(t + IDLE_SECONDS + 1, i64::MAX));
        // Active all along, but past the absolute cap.
        let late = t + ABSOLUTE_SECONDS + 1;
        assert!(!payload(t, late - 10).is_live(late, i64::MAX));
        // From the future, or seen before it was made: forged or broken.
        assert!(!payload(t, t + 3600).is_live(t, i64::MAX));
        assert!(!payload(t, t - 10).is_live(t, i64::MAX));
        // A login that may live only an hour: so does the session.
        assert!(payload(t, t + 3000).is_live(t + 3600, 3600));
        assert!(!payload(t, t + 3000).is_live(t + 3601, 3600));
    }

    #[test]
    fn four_kib_cookies_fit() {
        assert!(fits(&"a".repeat(MAX_COOKIE_BYTES - COOKIE.len() - 1)));
        assert!(!fits(&"a".repeat(MAX_COOKIE_BYTES - COOKIE.len())));
    }

    #[test]
    fn cookie_flags() {
        let c = set_cookie("v", false);
        assert!(c.starts_with("kms_ui=v; Path=/ui;"), "{c}");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "{c}");
        assert!(set_cookie("v", true).ends_with("; Secure"));
        assert!(clear_cookie(true).contains("Max-Age=0"));
    }

    #[test]
    fn cookie_values_are_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; kms_ui=x; b=2".parse().unwrap());
        h.append(http::header::COOKIE, "kms_ui=y".parse().unwrap());
        assert_eq!(cookie_values(&h), vec!["x", "y"]);
        h.append(http::header::COOKIE, "kms_ui=z".parse().unwrap());
        assert_eq!(cookie_values(&h), vec!["x", "y"], "only the first two");
    }

    #[test]
    fn debug_shows_no_token() {
        let mut p = payload(1, 1);
        p.csrf = "CSRFVALUE".into();
        p.tokens = Some(Tokens {
            access: "ACCESS".into(),
            refresh: "REFRESH".into(),
        });
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("ACCESS") && !shown.contains("REFRESH") && !shown.contains("CSRFVALUE")
        );
    }
}
