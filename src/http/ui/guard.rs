//! The console's request layer: opens the session cookie, checks the login behind it
//! (renewing the access token when it is about to expire), refuses state-changing
//! requests without the CSRF token, and re-issues the cookie on the answer. Handlers
//! see the outcome as a `Session` in the request extensions, and change it by putting
//! a `SessionChange` into the response's.

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use std::sync::Arc;

use chrono::Utc;
use zeroize::Zeroizing;

use super::{
    csrf,
    pages::error_page,
    session::{self, Payload, REFRESH_MARGIN_SECONDS, Tokens},
};
use crate::{
    domain::{Caller, Error, sessions::AuthFailure},
    http::HttpState,
};

/// The session as this request found it. Its `Debug` leaves out the CSRF token.
#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    pub caller: Option<Caller>,
    /// The access token `caller` came from, for a stream to check it again while it
    /// lasts (the live audit view).
    pub access_token: Option<Arc<Zeroizing<String>>>,
    /// A signed-in session ended (idle, expired, signed out elsewhere): the sign-in
    /// page says so.
    pub ended: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("caller", &self.caller.as_ref().map(|c| &c.subject))
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Set on a response to sign in or out, or to say the request was not the user's.
#[derive(Clone)]
pub enum SessionChange {
    SignIn(Tokens),
    SignOut,
    /// The page's own background request (the live audit stream reconnecting): the
    /// session is checked as for any request, but the idle clock keeps running, so
    /// an open page does not keep an unattended session alive.
    Background,
}

struct Loaded {
    payload: Payload,
    caller: Option<Caller>,
    ended: bool,
}

/// Why no session could be loaded; `renewed` when a refresh succeeded before the
/// failure: the answer must carry the new tokens all the same, or the browser keeps
/// the spent refresh token and its next request looks like a reuse (which ends the
/// login).
struct Failed {
    error: Error,
    renewed: Option<Payload>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error,
            renewed: None,
        }
    }
}

pub async fn layer(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let now = Utc::now().timestamp();
    let loaded = match load(&state, request.headers(), now).await {
        Ok(loaded) => loaded,
        Err(Failed { error, renewed }) => {
            let mut response = error_page::from_domain(error);
            if let Some(mut payload) = renewed {
                payload.seen = now;
                set_cookie(&mut response, &state, &payload);
            }
            return response;
        }
    };
    let Loaded {
        mut payload,
        caller,
        ended,
    } = loaded;
    let secure = state.ui.secure_cookie;
    let request = if csrf::is_safe(request.method()) {
        request
    } else {
        match csrf::check(request, &payload.csrf, state.max_request_bytes).await {
            Ok(request) => request,
            Err(status) => {
                let mut response = error_page::refused(status);
                payload.seen = now;
                set_cookie(&mut response, &state, &payload);
                return response;
            }
        }
    };
    let mut request = request;
    let access_token = caller
        .as_ref()
        .and(payload.tokens.as_ref())
        .map(|t| Arc::new(Zeroizing::new(t.access.clone())));
    request.extensions_mut().insert(Session {
        csrf: payload.csrf.clone(),
        caller,
        access_token,
        ended,
    });
    let mut response = next.run(request).await;
    let change = response.extensions_mut().remove::<SessionChange>();
    match after_answer(payload, change, now) {
        Ok(Some(payload)) => set_cookie(&mut response, &state, &payload),
        Ok(None) => {
            if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(secure)) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        Err(e) => return error_page::from_domain(e.into()),
    }
    response
}

/// The session the answer leaves: `None` once signed out. Only the user's own
/// requests move the idle clock.
fn after_answer(
    mut payload: Payload,
    change: Option<SessionChange>,
    now: i64,
) -> Result<Option<Payload>, crate::crypto::CryptoError> {
    match change {
        Some(SessionChange::SignOut) => return Ok(None),
        Some(SessionChange::SignIn(tokens)) => payload = Payload::signed_in(tokens, now)?,
        Some(SessionChange::Background) => {}
        None => payload.seen = now,
    }
    Ok(Some(payload))
}

/// Re-issues the cookie; one grown too large for a browser to keep (a refresh
/// brought a larger access token) is cleared instead, which ends the session, rather
/// than leave the browser the previous one with a spent refresh token.
fn set_cookie(response: &mut Response, state: &HttpState, payload: &Payload) {
    let secure = state.ui.secure_cookie;
    let Some(sealed) = session::seal(&state.keyring, payload) else {
        return;
    };
    let cookie = if session::fits(&sealed) {
        session::set_cookie(&sealed, secure)
    } else {
        tracing::warn!(
            bytes = sealed.len(),
            "a console session no longer fits in a cookie (its access token is too large: many or long roles); the session ends"
        );
        session::clear_cookie(secure)
    };
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// The session of the request's cookie, the login behind it checked.
async fn load(state: &HttpState, headers: &http::HeaderMap, now: i64) -> Result<Loaded, Failed> {
    let mut found = None;
    for value in session::cookie_values(headers) {
        if let Some(payload) = session::open(&state.keyring, value) {
            found = Some(payload);
            break;
        }
    }
    let visitor = |ended| -> Result<Loaded, Failed> {
        Ok(Loaded {
            payload: Payload::visitor(now).map_err(Error::from)?,
            caller: None,
            ended,
        })
    };
    let Some(mut payload) = found else {
        return visitor(false);
    };
    if !payload.is_live(now, state.auth.session_max_lifetime_seconds()) {
        if let Some(tokens) = &payload.tokens {
            end_login(state, &tokens.access).await;
            return visitor(true);
        }
        return visitor(false);
    }
    let Some(tokens) = payload.tokens.clone() else {
        return Ok(Loaded {
            payload,
            caller: None,
            ended: false,
        });
    };
    let current = match state.authenticator.authenticate(&tokens.access).await {
        Ok(claims) => Some(claims),
        Err(AuthFailure::Invalid) => None,
        Err(AuthFailure::Unavailable) => return Err(Error::Unavailable.into()),
    };
    if let Some(claims) = &current
        && claims.exp - now > refresh_margin(claims.exp - claims.iat)
    {
        let caller = claims.caller();
        return Ok(Loaded {
            payload,
            caller: Some(caller),
            ended: false,
        });
    }
    // About to expire, or expired: the refresh token gets a new one, if the login
    // still stands (sign-out, a role or password change and deleting the user revoke
    // it, and then this fails).
    match state
        .ui
        .renewals
        .refresh(&state.auth, &state.metrics, &tokens.refresh)
        .await
    {
        Ok(fresh) => {
            let access = fresh.access.clone();
            payload.tokens = Some(fresh);
            let claims = match state.authenticator.authenticate(&access).await {
                Ok(claims) => claims,
                Err(AuthFailure::Unavailable) => {
                    return Err(Failed {
                        error: Error::Unavailable,
                        renewed: Some(payload),
                    });
                }
                Err(AuthFailure::Invalid) => return visitor(true),
            };
            Ok(Loaded {
                payload,
                caller: Some(claims.caller()),
                ended: false,
            })
        }
        Err(Error::Unauthenticated(_) | Error::InvalidArgument { .. }) => match current {
            // The login's refresh chain is over, its last access token is not yet.
            Some(claims) => Ok(Loaded {
                payload,
                caller: Some(claims.caller()),
                ended: false,
            }),
            None => visitor(true),
        },
        Err(other) => Err(other.into()),
    }
}

/// How long before its expiry an access token is renewed: `REFRESH_MARGIN_SECONDS`,
/// or half the lifetime of tokens shorter than twice that (so that a short
/// KMS_ACCESS_TOKEN_TTL_SECONDS does not mean a refresh on every request).
fn refresh_margin(lifetime: i64) -> i64 {
    REFRESH_MARGIN_SECONDS.min(lifetime / 2)
}

/// Best effort: the login of a session that timed out (or could not be kept in a
/// cookie) is ended, so its refresh token is worth nothing.
pub async fn end_login(state: &HttpState, access: &str) {
    if let Ok(claims) = state.authenticator.authenticate(access).await
        && let Err(e) = state.auth.logout(&claims.caller()).await
    {
        tracing::warn!(error = %e, "a timed-out console session could not be logged out");
    }
}

/// The session of the request (the layer always sets one).
fn session(parts: &Parts) -> Session {
    parts
        .extensions
        .get::<Session>()
        .cloned()
        .unwrap_or(Session {
            csrf: String::new(),
            caller: None,
            access_token: None,
            ended: false,
        })
}

/// Any request: the session, signed in or not.
pub struct Visitor(pub Session);

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        Ok(Self(session(parts)))
    }
}

/// A signed-in user; others are sent to the sign-in page.
pub struct SignedIn {
    pub caller: Caller,
    pub csrf: String,
}

impl<S: Send + Sync> FromRequestParts<S> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let session = session(parts);
        match session.caller {
            Some(caller) => Ok(Self {
                caller,
                csrf: session.csrf,
            }),
            None if session.ended => Err(Redirect::to("/ui/login?ended=1").into_response()),
            None => Err(Redirect::to("/ui/login").into_response()),
        }
    }
}

/// A signed-in admin; other users get a 403 page (the domain checks again).
pub struct Admin(pub SignedIn);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let signed_in = SignedIn::from_request_parts(parts, state).await?;
        if signed_in.caller.is_admin() {
            Ok(Self(signed_in))
        } else {
            Err(error_page::forbidden(&signed_in))
        }
    }
}

/// A 303 to `to` (after a POST: the browser follows with a GET).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// `response` with a session change for the layer to apply.
pub fn with_change(mut response: Response, change: SessionChange) -> Response {
    response.extensions_mut().insert(change);
    response
}

#[cfg(test)]
mod tests {
    use super::{Payload, SessionChange, after_answer};

    #[test]
    fn only_the_users_requests_move_the_idle_clock() {
        let mut payload = Payload::visitor(1_000).unwrap();
        payload.seen = 1_000;
        let later = 1_600;
        let moved = after_answer(payload.clone(), None, later).unwrap().unwrap();
        assert_eq!(moved.seen, later);
        let kept = after_answer(payload.clone(), Some(SessionChange::Background), later)
            .unwrap()
            .unwrap();
        assert_eq!(
            kept.seen, 1_000,
            "the live page's reconnects are not activity"
        );
        assert!(
            after_answer(payload, Some(SessionChange::SignOut), later)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn debug_shows_no_csrf_token() {
        let session = super::Session {
            csrf: "CSRFVALUE".into(),
            caller: None,
            access_token: Some(std::sync::Arc::new("TOKENVALUE".to_owned().into())),
            ended: false,
        };
        let shown = format!("{session:?}");
        assert!(!shown.contains("CSRFVALUE") && !shown.contains("TOKENVALUE"));
    }

    #[test]
    fn short_tokens_are_renewed_at_half_life() {
        assert_eq!(super::refresh_margin(3600), 120);
        assert_eq!(super::refresh_margin(60), 30);
        assert_eq!(super::refresh_margin(1), 0);
    }
}
