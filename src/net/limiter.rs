//! Who may hold a connection: a cap on connections in total (kept under the process's
//! descriptor limit, with a reserve for the database, log files and the listeners
//! themselves) and per client address. At the total cap an idle connection is
//! closed to make room, so a crowd of silent sockets cannot lock out a health probe
//! or a real client; a peer at its own cap is refused.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::domain::throttle::address_key;

/// Descriptors kept free for everything that is not a client connection: the
/// database pool, the listeners, log and lock files, the argon2 threads' needs.
pub const DESCRIPTOR_RESERVE: u64 = 128;

/// Counts per client address, capped. Addresses are grouped like the login throttle
/// groups them (IPv6 by /64), or one host could take a fresh address per connection.
#[derive(Clone)]
pub struct PeerCounter {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerCounter {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            counts: Arc::default(),
        }
    }

    /// One more for `ip`, or `None` when it holds `max` already.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<PeerSlot> {
        let key = address_key(ip);
        let mut counts = self.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counter: self.clone(),
            key,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A count off by one after a panic elsewhere is better than refusing everyone.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held while the counted thing lives; gives its place back when dropped.
pub struct PeerSlot {
    counter: PeerCounter,
    key: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counter.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The live state of one connection, shared between its task and the limiter.
pub struct ConnState {
    /// Requests in progress (a request counts until its response body is done).
    active: AtomicUsize,
    /// Milliseconds since the limiter's epoch when the last request ended (or the
    /// connection was accepted).
    last_active_ms: AtomicU64,
    /// Whether a request was ever received: before the first one, the (shorter)
    /// handshake bound applies.
    started: std::sync::atomic::AtomicBool,
    /// Tells the connection's task to close (idle eviction).
    pub(super) close: Notify,
    epoch: Instant,
}

impl ConnState {
    fn new(epoch: Instant) -> Self {
        Self {
            active: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(millis_since(epoch)),
            started: std::sync::atomic::AtomicBool::new(false),
            close: Notify::new(),
            epoch,
        }
    }

    pub fn request_started(&self) {
        self.started.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn request_finished(&self) {
        self.last_active_ms
            .store(millis_since(self.epoch), Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request in progress (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if !self.is_idle() {
            return Duration::ZERO;
        }
        let last = self.last_active_ms.load(Ordering::Relaxed);
        Duration::from_millis(millis_since(self.epoch).saturating_sub(last))
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This client address holds its share of connections.
    PeerCap,
    /// The server holds its total, and none of them is idle.
    TotalCap,
}

/// The connections of every listener of this process: the descriptor limit is the
/// process's, so one count covers gRPC and HTTP alike.
#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    max_total: usize,
    per_peer: PeerCounter,
    live: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    epoch: Instant,
    refusals: RateLimitedLog,
}

impl ConnectionLimiter {
    /// `max_total` is lowered to fit the descriptor limit; the figure in force is
    /// logged at start by the caller through `max_total()`.
    pub fn new(max_total: usize, max_per_peer: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total: max_total.max(1),
                per_peer: PeerCounter::new(max_per_peer),
                live: Mutex::default(),
                next_id: AtomicU64::new(0),
                epoch: Instant::now(),
                refusals: RateLimitedLog::new(Duration::from_secs(10)),
            }),
        }
    }

    pub fn max_total(&self) -> usize {
        self.inner.max_total
    }

    /// Admits a connection from `peer`, closing an idle one first when the total is
    /// reached. The returned guard is the connection's place: drop it when it closes.
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refusal> {
        let Some(peer_slot) = self.inner.per_peer.try_acquire(peer) else {
            self.inner
                .refusals
                .note(|suppressed| tracing::warn!(%peer, suppressed, "connection refused: this client address holds KMS_MAX_CONNECTIONS_PER_PEER connections"));
            return Err(Refusal::PeerCap);
        };
        let mut live = self.lock();
        if live.len() >= self.inner.max_total {
            // The idle connection that has been idle longest makes room; one that is
            // serving a call is never cut.
            let victim = live
                .iter()
                .filter(|(_, state)| state.is_idle())
                .max_by_key(|(_, state)| state.idle_for())
                .map(|(id, state)| (*id, state.clone()));
            match victim {
                Some((id, state)) => {
                    live.remove(&id);
                    state.close.notify_one();
                    self.inner.refusals.note(|suppressed| {
                        tracing::warn!(
                            suppressed,
                            max = self.inner.max_total,
                            "connection limit reached: closing the longest-idle connection to admit a new one"
                        );
                    });
                }
                None => {
                    self.inner.refusals.note(|suppressed| {
                        tracing::warn!(%peer, suppressed, max = self.inner.max_total, "connection refused: KMS_MAX_CONNECTIONS reached and every connection is busy");
                    });
                    return Err(Refusal::TotalCap);
                }
            }
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(self.inner.epoch));
        live.insert(id, state.clone());
        Ok(Admitted {
            limiter: self.clone(),
            id,
            state,
            _peer: peer_slot,
        })
    }

    /// Connections held now.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// An admitted connection's place under the limits.
pub struct Admitted {
    limiter: ConnectionLimiter,
    id: u64,
    pub state: Arc<ConnState>,
    _peer: PeerSlot,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limiter.lock().remove(&self.id);
    }
}

/// The connection cap in force: the configured one, lowered to what the descriptor
/// limit allows after the reserve. Raises the soft descriptor limit to the hard one
/// first, as Go's runtime and nginx do, since the default soft limit (1024) is a
/// relic of `select()`.
pub fn fit_to_descriptors(configured: usize) -> usize {
    let soft = raise_descriptor_limit();
    match soft {
        Some(soft) => {
            let room = soft.saturating_sub(DESCRIPTOR_RESERVE).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

#[cfg(target_os = "linux")]
fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum)
        && current < max
    {
        limit.current = Some(max);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit.current = Some(current);
        }
    }
    limit.current
}

#[cfg(not(target_os = "linux"))]
fn raise_descriptor_limit() -> Option<u64> {
    None
}

/// A warning that is logged at most once per `every`, with the number of times it was
/// suppressed in between: a flood must not turn into a flood of log lines.
pub struct RateLimitedLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log(suppressed)` if the last line is older than `every`.
    pub fn note(&self, log: impl FnOnce(u64)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => state.1 += 1,
            _ => {
                let suppressed = std::mem::take(&mut state.1);
                state.0 = Some(now);
                drop(state);
                log(suppressed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peers_are_capped_and_given_back() {
        let counter = PeerCounter::new(2);
        let a = counter.try_acquire(ip("10.0.0.1")).unwrap();
        let _b = counter.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(counter.try_acquire(ip("10.0.0.1")).is_none());
        assert!(counter.try_acquire(ip("10.0.0.2")).is_some());
        drop(a);
        assert!(counter.try_acquire(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn ipv6_peers_are_grouped_by_64() {
        let counter = PeerCounter::new(1);
        let _a = counter.try_acquire(ip("2001:db8::1")).unwrap();
        assert!(counter.try_acquire(ip("2001:db8::ffff:1")).is_none());
        assert!(counter.try_acquire(ip("2001:db8:0:1::1")).is_some());
    }

    #[tokio::test]
    async fn the_total_cap_evicts_an_idle_connection_but_never_a_busy_one() {
        let limiter = ConnectionLimiter::new(2, 10);
        let busy = limiter.admit(ip("10.0.0.1")).unwrap();
        busy.state.request_started();
        let idle = limiter.admit(ip("10.0.0.2")).unwrap();
        // Full: the idle one is told to close and the newcomer is admitted.
        let third = limiter.admit(ip("10.0.0.3")).unwrap();
        tokio::time::timeout(Duration::from_secs(1), idle.state.close.notified())
            .await
            .unwrap();
        assert_eq!(limiter.live(), 2);
        // Now both are busy: refused.
        third.state.request_started();
        assert_eq!(limiter.admit(ip("10.0.0.4")).err(), Some(Refusal::TotalCap));
        drop(idle);
        assert_eq!(limiter.live(), 2);
    }

    #[test]
    fn a_peer_at_its_cap_is_refused() {
        let limiter = ConnectionLimiter::new(100, 1);
        let _a = limiter.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limiter.admit(ip("10.0.0.1")).err(), Some(Refusal::PeerCap));
    }

    #[test]
    fn rate_limited_log_counts_what_it_suppressed() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.note(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, vec![0]);
    }
}
