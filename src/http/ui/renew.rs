//! Renewing a session's access token with its refresh token, once per token on this
//! replica. A refresh token is spent by its first use and a second use revokes the
//! whole login (reuse detection), so two requests of one browser that both find the
//! access token about to expire (two tabs, a double click) would otherwise sign the
//! user out. Here the second waits for the first and takes its result.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

use super::session::Tokens;
use crate::{
    crypto::digest,
    domain::{Result, auth::AuthService},
    telemetry::Metrics,
};

/// How long the result of a refresh is handed to requests that present the same
/// (now spent) refresh token.
const SHARED_FOR: Duration = Duration::from_secs(30);

/// By the digest of the refresh token spent: when, and what it was exchanged for.
type Recent = HashMap<[u8; 32], (Instant, Tokens)>;

/// Refreshes of this replica: one at a time (they are rare, once per access token
/// lifetime per session), the recent ones by the digest of the token they spent.
#[derive(Clone, Default)]
pub struct Renewals {
    recent: Arc<Mutex<Recent>>,
}

impl std::fmt::Debug for Renewals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewals").finish_non_exhaustive()
    }
}

impl Renewals {
    pub async fn refresh(
        &self,
        auth: &AuthService,
        metrics: &Metrics,
        presented: &str,
    ) -> Result<Tokens> {
        let key = digest::sha256(presented.as_bytes());
        let mut recent = self.recent.lock().await;
        recent.retain(|_, (at, _)| at.elapsed() < SHARED_FOR);
        if let Some((_, tokens)) = recent.get(&key) {
            return Ok(tokens.clone());
        }
        let fresh = auth.refresh(presented).await?;
        metrics.tokens_renewed();
        let tokens = Tokens {
            access: fresh.access.token,
            refresh: fresh.refresh_token,
        };
        recent.insert(key, (Instant::now(), tokens.clone()));
        Ok(tokens)
    }
}
