//! What a replica may keep in memory, and how it learns that another replica changed
//! it.
//!
//! The caches answer the hot paths (VerifyKey, and the login check behind every
//! token) without a database round trip. A change made on this replica invalidates its
//! entries at once, after the commit. A change made on another replica arrives as a
//! PostgreSQL notification sent by the committing transaction (`store::Change`).
//!
//! Notifications can be missed only while the listening connection is down, so the
//! caches are trusted only while the channel proves that it delivers: each replica
//! notifies itself every `BEAT_INTERVAL`, and a replica whose latest heard beat was
//! sent more than `TRUST_WINDOW` ago stops answering from its caches (every lookup
//! goes to the database) until beats come through again. PostgreSQL delivers
//! notifications in commit order, so a beat heard means every change committed before
//! that beat was sent has been heard too: a change made anywhere is honoured
//! everywhere within `TRUST_WINDOW`. After a reconnection the caches start empty.
//! SQLite serves one replica, whose caches are always trusted.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{
    cache::TtlCache, keyring::Keyring, policy::Policy, signing::SigningKeys, token::TokenAuthority,
};
use crate::store::{Change, ChangeFeed, Heard, KeyWithSecret, SessionState, Store};

/// How often a replica sends itself a heartbeat over the channel.
pub const BEAT_INTERVAL: Duration = Duration::from_millis(200);
/// The oldest a heard heartbeat may be for the caches to be trusted: the bound on how
/// long another replica's change can go unnoticed.
pub const TRUST_WINDOW: Duration = Duration::from_millis(900);
/// A silent channel for this long is presumed dead (a half-open connection) and is
/// connected anew.
const SILENCE_LIMIT: Duration = Duration::from_secs(3);
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Entry lifetimes: a bound on staleness for changes made outside any KMS process
/// (hand-edited rows), not the mechanism replicas rely on.
///
/// Keys are kept longer than sessions: every KMS change to a key invalidates it at
/// once (here, or within TRUST_WINDOW on the other replicas), and each entry that runs
/// out is read again, so with N keys in use the database sees N / KEY_TTL reads a
/// second (10 s made 1,000 a second for 10,000 keys in use, a third of the server's
/// CPU in the 1,000,000-key bench).
const KEY_TTL: Duration = Duration::from_secs(60);
const SESSION_TTL: Duration = Duration::from_secs(10);
const KEYS_MAX: usize = 200_000;
/// GetKey reads by admins: far fewer names than verified secrets.
const CURRENT_MAX: usize = 10_000;
const SESSIONS_MAX: usize = 100_000;

/// A verified API key secret, as VerifyKey needs it. Times are checked on every hit,
/// so an entry never outlives its key's expiry or its secret's grace period.
#[derive(Debug, Clone)]
pub struct CachedKey {
    pub key_id: i64,
    pub service_name: Arc<str>,
    pub policy: Arc<Policy>,
    pub key_expires_at: Option<DateTime<Utc>>,
    pub secret_retires_at: Option<DateTime<Utc>>,
}

impl CachedKey {
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.stops_at().is_none_or(|t| t > now)
    }

    /// When this secret stops verifying: the end of its grace period (already capped
    /// at the expiry it was issued under) or the key's expiry, whichever is first;
    /// `None`: never. What VerifyKey reports as `expires_at`.
    pub fn stops_at(&self) -> Option<DateTime<Utc>> {
        match (self.key_expires_at, self.secret_retires_at) {
            (Some(key), Some(secret)) => Some(key.min(secret)),
            (key, secret) => key.or(secret),
        }
    }
}

#[derive(Debug)]
enum Trust {
    /// One replica (SQLite): every change passes through this process.
    Local,
    /// Several replicas: trusted while the change feed proves it delivers.
    Feed {
        epoch: Instant,
        last_beat_ms: AtomicU64,
    },
}

/// The fields are private: every read goes through a read-through method that asks
/// `trusted` itself, so no caller can answer from a cache the feed no longer vouches
/// for, nor store into one.
#[derive(Debug)]
pub struct Caches {
    /// Verified API key secrets by SHA-256 digest.
    keys: TtlCache<[u8; 32], CachedKey>,
    /// Each live key with its current secret (still sealed) by service name, for
    /// GetKey. Only found keys are kept: creating a key needs no invalidation.
    current: TtlCache<String, Option<Arc<KeyWithSecret>>>,
    /// Login state by session id (`None`: no such session).
    sessions: TtlCache<String, Option<Arc<SessionState>>>,
    trust: Trust,
    replica: String,
}

impl Caches {
    /// Caches for a single replica: always trusted.
    pub fn local() -> Self {
        Self::with_trust(Trust::Local)
    }

    /// Caches for one of several replicas: trusted only while the feed beats.
    pub fn clustered() -> Self {
        Self::with_trust(Trust::Feed {
            epoch: Instant::now(),
            // Nothing heard yet: not trusted until the first beat comes back.
            last_beat_ms: AtomicU64::new(0),
        })
    }

    pub fn for_store(store: &Store) -> Self {
        if store.is_shared() {
            Self::clustered()
        } else {
            Self::local()
        }
    }

    fn with_trust(trust: Trust) -> Self {
        let id: [u8; 8] = crate::crypto::random::bytes().unwrap_or_default();
        Self {
            keys: TtlCache::new(KEYS_MAX, KEY_TTL),
            current: TtlCache::new(CURRENT_MAX, KEY_TTL),
            sessions: TtlCache::new(SESSIONS_MAX, SESSION_TTL),
            trust,
            replica: id.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Whether entries may be used and stored now.
    pub fn trusted(&self) -> bool {
        match &self.trust {
            Trust::Local => true,
            Trust::Feed {
                epoch,
                last_beat_ms,
            } => {
                let last = last_beat_ms.load(Ordering::Acquire);
                // 0 means never: the first beat is sent a little after the epoch.
                last > 0 && millis(epoch.elapsed()).saturating_sub(last) <= millis(TRUST_WINDOW)
            }
        }
    }

    fn beat(&self) -> Option<Change> {
        match &self.trust {
            Trust::Local => None,
            Trust::Feed { epoch, .. } => Some(Change::Beat {
                replica: self.replica.clone(),
                // Never 0, which means "never heard".
                sent_ms: millis(epoch.elapsed()).max(1),
            }),
        }
    }

    fn heard_beat(&self, sent_ms: u64) {
        if let Trust::Feed { last_beat_ms, .. } = &self.trust {
            last_beat_ms.fetch_max(sent_ms, Ordering::AcqRel);
        }
    }

    /// A verified secret by digest: from the cache when trusted, else `fetch`ed. What
    /// `fetch` finds is kept (when trusted) only if `keep` likes it.
    pub async fn key_by_digest<E, F>(
        &self,
        digest: &[u8; 32],
        fetch: impl FnOnce() -> F,
        keep: impl FnOnce(&CachedKey) -> bool,
    ) -> Result<Option<CachedKey>, E>
    where
        F: Future<Output = Result<Option<CachedKey>, E>>,
    {
        self.keys
            .get_or_fetch_found(self.trusted(), digest, fetch, keep)
            .await
    }

    /// The live key of that name with its current secret; only found keys are kept.
    pub async fn current_key<E, F>(
        &self,
        service_name: &str,
        fetch: impl FnOnce() -> F,
    ) -> Result<Option<Arc<KeyWithSecret>>, E>
    where
        F: Future<Output = Result<Option<Arc<KeyWithSecret>>, E>>,
    {
        self.current
            .get_or_fetch(self.trusted(), service_name, fetch, Option::is_some)
            .await
    }

    /// The login state of a session; "no such session" is kept too (session ids are
    /// never reused).
    pub async fn session<E, F>(
        &self,
        sid: &str,
        fetch: impl FnOnce() -> F,
    ) -> Result<Option<Arc<SessionState>>, E>
    where
        F: Future<Output = Result<Option<Arc<SessionState>>, E>>,
    {
        self.sessions
            .get_or_fetch(self.trusted(), sid, fetch, |_| true)
            .await
    }

    /// The login state of a session when the cache can answer without a fetch (`None`:
    /// ask `session`). The same trust rule as `session`.
    pub fn cached_session(&self, sid: &str) -> Option<Option<Arc<SessionState>>> {
        if !self.trusted() {
            return None;
        }
        self.sessions.get(sid)
    }

    /// Forgets what GetKey keeps of a key whose last-used time was just written.
    pub fn forget_current(&self, service_name: &str) {
        self.current.remove(service_name);
    }

    /// Forgets whatever `change` made stale.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Key(name) => {
                self.current.remove(name.as_str());
                self.keys.retain(|_, k| *k.service_name != **name);
            }
            Change::Session(sid) => self.sessions.remove(sid.as_str()),
            Change::User(name) => self
                .sessions
                .retain(|_, s| s.as_ref().is_none_or(|s| s.username != *name)),
            Change::SigningKeys | Change::Keyring | Change::Beat { .. } => {}
        }
    }

    pub fn clear(&self) {
        self.keys.clear();
        self.current.clear();
        self.sessions.clear();
    }
}

/// Loads data keys another replica added, off the listening task.
fn reload_keyring(keyring: &Keyring) {
    let keyring = keyring.clone();
    tokio::spawn(async move {
        if let Err(e) = keyring.load().await {
            tracing::warn!(error = %e, "the keyring could not be reloaded");
        }
    });
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Follows the other replicas until `stop` changes: applies their changes to the
/// caches, reloads signing keys when they rotate, and keeps the heartbeat going.
/// Returns at once on SQLite.
pub async fn follow(
    store: Store,
    caches: Arc<Caches>,
    signing: Option<(SigningKeys, Arc<TokenAuthority>)>,
    keyring: Keyring,
    mut stop: watch::Receiver<bool>,
) {
    if !store.is_shared() {
        return;
    }
    let mut quiet_errors = false;
    loop {
        let feed = tokio::select! {
            _ = stop.changed() => return,
            feed = ChangeFeed::connect(&store) => feed,
        };
        match feed {
            Ok(Some(feed)) => {
                quiet_errors = false;
                tracing::debug!("listening for changes from other replicas");
                listen(feed, &caches, signing.as_ref(), &keyring, &mut stop).await;
                if *stop.borrow() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                if !quiet_errors {
                    tracing::warn!(error = %e, "cannot listen for other replicas' changes; caches bypassed until then");
                    quiet_errors = true;
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// One connection's life: returns when it is lost for good or `stop` changes.
async fn listen(
    mut feed: ChangeFeed,
    caches: &Arc<Caches>,
    signing: Option<&(SigningKeys, Arc<TokenAuthority>)>,
    keyring: &Keyring,
    stop: &mut watch::Receiver<bool>,
) {
    let beats = tokio::spawn(send_beats(feed.sender(), caches.clone(), stop.clone()));
    // Whatever was cached before this connection listened may have missed a change.
    let mut fresh = true;
    loop {
        let heard = tokio::select! {
            _ = stop.changed() => break,
            heard = tokio::time::timeout(SILENCE_LIMIT, feed.next()) => heard,
        };
        match heard {
            Ok(Ok(Heard::Change(change))) => {
                if fresh {
                    caches.clear();
                    fresh = false;
                }
                match &change {
                    Change::Beat { replica, sent_ms } if *replica == caches.replica => {
                        caches.heard_beat(*sent_ms);
                    }
                    Change::Keyring => reload_keyring(keyring),
                    Change::SigningKeys => {
                        if let Some((keys, tokens)) = signing {
                            let (keys, tokens) = (keys.clone(), tokens.clone());
                            tokio::spawn(async move {
                                if let Err(e) = keys.refresh(&tokens).await {
                                    tracing::warn!(error = %e, "signing keys could not be reloaded");
                                }
                            });
                        }
                    }
                    _ => caches.apply(&change),
                }
            }
            Ok(Ok(Heard::Unknown)) => {}
            Ok(Ok(Heard::Reconnected)) => {
                tracing::info!("change feed reconnected; caches start over");
                fresh = true;
                // A rotation may have gone unheard.
                reload_keyring(keyring);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "change feed lost");
                break;
            }
            Err(_) => {
                tracing::warn!("change feed silent; reconnecting");
                break;
            }
        }
    }
    beats.abort();
}

async fn send_beats(
    sender: crate::store::ChangeSender,
    caches: Arc<Caches>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(BEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(beat) = caches.beat() else {
            return;
        };
        match tokio::time::timeout(TRUST_WINDOW, sender.send(&beat)).await {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                tracing::debug!(error = %e, "heartbeat not sent");
                failing = true;
            }
            _ => failing = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> CachedKey {
        CachedKey {
            key_id: 1,
            service_name: name.into(),
            policy: Arc::new(Policy {
                scopes: Arc::new([]),
                metadata: Arc::default(),
                enabled: true,
                rate_limit: None,
                has_credits: false,
            }),
            key_expires_at: None,
            secret_retires_at: None,
        }
    }

    #[test]
    fn a_secret_stops_at_the_first_of_its_grace_end_and_its_key_expiry() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        let at = |key_expires_at, secret_retires_at| CachedKey {
            key_expires_at,
            secret_retires_at,
            ..key("k")
        };
        assert_eq!(at(None, None).stops_at(), None);
        assert_eq!(at(Some(t(50)), None).stops_at(), Some(t(50)));
        assert_eq!(at(None, Some(t(20))).stops_at(), Some(t(20)));
        assert_eq!(at(Some(t(50)), Some(t(20))).stops_at(), Some(t(20)));
        assert_eq!(at(Some(t(10)), Some(t(20))).stops_at(), Some(t(10)));
        assert!(at(Some(t(50)), Some(t(20))).valid_at(t(19)));
        assert!(!at(Some(t(50)), Some(t(20))).valid_at(t(20)));
    }

    #[test]
    fn a_clustered_replica_trusts_only_recent_beats() {
        let caches = Caches::clustered();
        assert!(!caches.trusted(), "nothing heard yet");
        let Some(Change::Beat { sent_ms, .. }) = caches.beat() else {
            panic!("a clustered replica beats");
        };
        caches.heard_beat(sent_ms);
        assert!(caches.trusted());
        if let Trust::Feed { last_beat_ms, .. } = &caches.trust {
            last_beat_ms.store(1, Ordering::Release);
        }
        std::thread::sleep(TRUST_WINDOW + Duration::from_millis(20));
        assert!(!caches.trusted(), "a stale beat is no proof");
        assert!(Caches::local().trusted());
        assert!(Caches::local().beat().is_none());
    }

    #[test]
    fn changes_drop_what_they_make_stale() {
        let caches = Caches::local();
        let seen = caches.keys.generation();
        caches.keys.insert([1; 32], key("a"), seen);
        let seen = caches.keys.generation();
        caches.keys.insert([2; 32], key("b"), seen);
        caches.apply(&Change::Key("a".into()));
        assert!(caches.keys.get(&[1; 32]).is_none());
        assert!(caches.keys.get(&[2; 32]).is_some());

        let state = |user: &str| {
            Some(Arc::new(SessionState {
                username: user.into(),
                token_version: 1,
                revoked: false,
            }))
        };
        for (sid, user) in [("s1", "alice"), ("s2", "alice"), ("s3", "bob")] {
            let seen = caches.sessions.generation();
            caches.sessions.insert(sid.into(), state(user), seen);
        }
        caches.apply(&Change::User("alice".into()));
        assert!(caches.sessions.get("s1").is_none());
        assert!(caches.sessions.get("s2").is_none());
        assert!(caches.sessions.get("s3").is_some());
        caches.apply(&Change::Session("s3".into()));
        assert!(caches.sessions.get("s3").is_none());
    }

    #[test]
    fn entries_check_expiry_and_grace_on_every_hit() {
        let now = Utc::now();
        let mut k = key("a");
        assert!(k.valid_at(now));
        k.secret_retires_at = Some(now);
        assert!(!k.valid_at(now));
        k.secret_retires_at = None;
        k.key_expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!k.valid_at(now));
    }
}
