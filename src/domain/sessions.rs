//! Authenticating a presented access token: its signature and claims, then the login
//! behind it. A token is refused once its session is logged out or its family caught
//! reusing a refresh token, and once its user's roles or password changed (the user's
//! token version moved on) or the user was deleted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    signing::SigningKeys,
    token::{Claims, TokenAuthority, TokenError},
};
use crate::store::{SessionState, Store, StoreError};

/// How long a session's state is trusted without asking the database. Changes made on
/// this replica take effect at once (the entry is dropped); other replicas notice
/// within this time.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most; past this the cache starts over, which costs a lookup each.
const CACHE_MAX: usize = 100_000;
/// The least time between two reloads of the signing keys for an unknown `kid`.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

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
    cache: Mutex<HashMap<String, (Instant, Option<SessionState>)>>,
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
    pub fn new(tokens: Arc<TokenAuthority>, store: Store) -> Self {
        Self {
            tokens,
            store,
            cache: Mutex::new(HashMap::new()),
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

    pub async fn authenticate(&self, token: &str) -> Result<Claims, AuthFailure> {
        let claims = match self.tokens.verify(token) {
            Ok(claims) => claims,
            Err(TokenError::UnknownKey) if self.reload_keys().await => self
                .tokens
                .verify(token)
                .map_err(|_| AuthFailure::Invalid)?,
            Err(_) => return Err(AuthFailure::Invalid),
        };
        let state = self.session(&claims.sid).await?;
        match state {
            Some(s) if !s.revoked && s.token_version == claims.ver && s.username == claims.sub => {
                Ok(claims)
            }
            _ => Err(AuthFailure::Invalid),
        }
    }

    async fn session(&self, sid: &str) -> Result<Option<SessionState>, AuthFailure> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, state)) = cache.get(sid)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(state.clone());
        }
        let state = self.store.session_state(sid).await.map_err(|e| match e {
            StoreError::Unavailable(_) => AuthFailure::Unavailable,
            other => {
                tracing::error!(error = %other, "session lookup failed");
                AuthFailure::Unavailable
            }
        })?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(sid.to_owned(), (Instant::now(), state.clone()));
        }
        Ok(state)
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
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(sid);
        }
    }

    /// Drops what is known about a user's sessions (role or password change).
    pub fn forget_user(&self, username: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, state)| state.as_ref().is_none_or(|s| s.username != username));
        }
    }
}
