//! Authenticating a presented access token: its signature and claims, then the login
//! behind it. A token is refused once its session is logged out or its family caught
//! reusing a refresh token, and once its user's roles or password changed (the user's
//! token version moved on) or the user was deleted.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    Caller,
    cache::TtlCache,
    cluster::Caches,
    signing::SigningKeys,
    token::{Claims, TokenAuthority, TokenError},
};
use crate::store::{Change, SessionState, Store, StoreError};

/// Tokens whose signature and claims checked out, so that a peer presenting the same
/// token on every call pays for the signature once. Only the exact token string hits;
/// its expiry is checked again on every hit, and its login on every call. (A signing
/// key leaves the key set only after every token it signed has expired, so a rotation
/// never makes an entry wrong.)
const VERIFIED_TOKENS_MAX: usize = 8_192;
const VERIFIED_TOKEN_TTL: Duration = Duration::from_secs(60);
/// The least time between two reloads of the signing keys for an unknown `kid`.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the login behind a verified token still holds: its session exists, is not
/// revoked, and belongs to the token's user at the token's version.
fn login_holds(
    verified: Arc<Verified>,
    state: Option<&SessionState>,
) -> Result<Arc<Verified>, AuthFailure> {
    let claims = &verified.claims;
    match state {
        Some(s) if !s.revoked && s.token_version == claims.ver && s.username == claims.sub => {
            Ok(verified)
        }
        _ => Err(AuthFailure::Invalid),
    }
}

/// A token whose signature and claims checked out, with the caller it names, made
/// once per token rather than on every call that presents it.
#[derive(Debug)]
struct Verified {
    claims: Arc<Claims>,
    caller: Arc<Caller>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Bad, expired, revoked or outdated: the caller must log in again.
    Invalid,
    /// The database could not say: answer UNAVAILABLE, never a pass.
    Unavailable,
}

pub struct Authenticator {
    tokens: Arc<TokenAuthority>,
    store: Store,
    caches: Arc<Caches>,
    verified: TtlCache<String, Arc<Verified>>,
    /// Asymmetric signing keys, reloaded when a token names an unknown one.
    signing: Option<SigningKeys>,
    last_reload: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(tokens: Arc<TokenAuthority>, store: Store, caches: Arc<Caches>) -> Self {
        Self {
            tokens,
            store,
            caches,
            verified: TtlCache::new(VERIFIED_TOKENS_MAX, VERIFIED_TOKEN_TTL),
            signing: None,
            last_reload: Mutex::new(None),
        }
    }

    pub fn with_signing_keys(mut self, signing: Option<SigningKeys>) -> Self {
        self.signing = signing;
        self
    }

    pub fn tokens(&self) -> &Arc<TokenAuthority> {
        &self.tokens
    }

    pub async fn authenticate(&self, token: &str) -> Result<Arc<Claims>, AuthFailure> {
        self.check(token).await.map(|v| v.claims.clone())
    }

    /// The caller a token names, checked as `authenticate` checks it (one shared
    /// `Caller` per token: the hot path builds none).
    pub async fn caller(&self, token: &str) -> Result<Arc<Caller>, AuthFailure> {
        self.check(token).await.map(|v| v.caller.clone())
    }

    /// `caller` answered from the caches alone, without awaiting anything: `None` when
    /// the token or its session is not cached (then `caller` must fetch). The same
    /// checks as `caller`, in the same order, so the two always agree.
    pub fn cached_caller(&self, token: &str) -> Option<Result<Arc<Caller>, AuthFailure>> {
        let verified = match self.cached_token(token)? {
            Ok(verified) => verified,
            Err(failure) => return Some(Err(failure)),
        };
        let state = self.caches.cached_session(&verified.claims.sid)?;
        Some(login_holds(verified, state.as_deref()).map(|v| v.caller.clone()))
    }

    async fn check(&self, token: &str) -> Result<Arc<Verified>, AuthFailure> {
        let verified = self.verify_token(token).await?;
        let state = self.session(&verified.claims.sid).await?;
        login_holds(verified, state.as_deref())
    }

    /// The verified-token cache's answer: `None` when the token is not in it.
    fn cached_token(&self, token: &str) -> Option<Result<Arc<Verified>, AuthFailure>> {
        let verified = self.verified.get(token)?;
        let now = chrono::Utc::now().timestamp();
        Some(if verified.claims.exp > now {
            Ok(verified)
        } else {
            Err(AuthFailure::Invalid)
        })
    }

    /// The signature and claims, from the cache of verified tokens when this exact
    /// token checked out before.
    async fn verify_token(&self, token: &str) -> Result<Arc<Verified>, AuthFailure> {
        if let Some(cached) = self.cached_token(token) {
            return cached;
        }
        let seen = self.verified.generation();
        let claims = match self.tokens.verify(token) {
            Ok(claims) => claims,
            // Boxed: the reload's query would otherwise sit inline in every call's future
            // (see `KeyService::check_presented_key`).
            Err(TokenError::UnknownKey) if Box::pin(self.reload_keys()).await => self
                .tokens
                .verify(token)
                .map_err(|_| AuthFailure::Invalid)?,
            Err(_) => return Err(AuthFailure::Invalid),
        };
        let verified = Arc::new(Verified {
            caller: Arc::new(claims.caller()),
            claims: Arc::new(claims),
        });
        self.verified
            .insert(token.to_owned(), verified.clone(), seen);
        Ok(verified)
    }

    async fn session(&self, sid: &str) -> Result<Option<Arc<SessionState>>, AuthFailure> {
        let fetch = || async {
            let state = self.store.session_state(sid).await;
            state.map(|s| s.map(Arc::new)).map_err(|e| match e {
                StoreError::Unavailable(_) => AuthFailure::Unavailable,
                other => {
                    tracing::error!(error = %other, "session lookup failed");
                    AuthFailure::Unavailable
                }
            })
        };
        self.caches.session(sid, fetch).await
    }

    /// Re-reads the signing keys when a token names one this replica does not know:
    /// another replica may have rotated a moment ago. At most once a second, so that
    /// made-up `kid`s cannot turn into a database load. `true` when keys were reloaded.
    async fn reload_keys(&self) -> bool {
        let Some(signing) = &self.signing else {
            return false;
        };
        {
            let Ok(mut last) = self.last_reload.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < KEY_RELOAD_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match signing.refresh(&self.tokens).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "signing keys could not be reloaded");
                false
            }
        }
    }

    /// Drops what is known about a session (logout, reuse detection).
    pub fn forget_session(&self, sid: &str) {
        self.caches.apply(&Change::Session(sid.to_owned()));
    }

    /// Drops what is known about a user's sessions (role or password change).
    pub fn forget_user(&self, username: &str) {
        self.caches.apply(&Change::User(username.to_owned()));
    }
}
