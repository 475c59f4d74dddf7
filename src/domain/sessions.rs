//! Authenticating a presented access token: its signature and claims, then the login
//! behind it. A token is refused once its session is logged out or its family caught
//! reusing a refresh token, and once its user's roles or password changed (the user's
//! token version moved on) or the user was deleted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::token::{Claims, TokenAuthority};
use crate::store::{SessionState, Store, StoreError};

/// How long a session's state is trusted without asking the database. Changes made on
/// this replica take effect at once (the entry is dropped); other replicas notice
/// within this time.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most; past this the cache starts over, which costs a lookup each.
const CACHE_MAX: usize = 100_000;

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
        }
    }

    pub fn tokens(&self) -> &Arc<TokenAuthority> {
        &self.tokens
    }

    pub async fn authenticate(&self, token: &str) -> Result<Claims, AuthFailure> {
        let claims = self
            .tokens
            .verify(token)
            .map_err(|_| AuthFailure::Invalid)?;
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
