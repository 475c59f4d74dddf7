//! Who may use the server's capacity, on gRPC and REST alike: one set of budgets per
//! server, shared by both listeners, so that a call counts the same whichever way it
//! came. Calls are served from separate budgets so that one kind cannot starve another:
//! - `Api`: calls that carry an access token (or need one): the global limit
//!   (`KMS_MAX_CONCURRENT_REQUESTS`);
//! - `Public`: calls without a token (Login, Register, Refresh, ValidateToken,
//!   GetJwks, ext_authz Check, their REST twins): a pool of the same size of their own,
//!   and at most `KMS_MAX_PUBLIC_CALLS_PER_PEER` in progress per client address;
//! - `Stream`: long-lived streams (health Watch, reflection): `KMS_MAX_STREAMS`, and
//!   `KMS_MAX_STREAMS_PER_PEER` per client address;
//! - health checks are never refused: probes must answer under load.
//!
//! Which class a call is belongs to its transport (`grpc::budget`, `http::budget`).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{PeerCounter, PeerSlot};
use crate::config::Limits;

/// The budget a call is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Unlimited,
    Api,
    Public,
    Stream,
}

/// A call's place in its budget, given back when dropped.
pub struct Slot {
    _global: Option<OwnedSemaphorePermit>,
    _peer: Option<PeerSlot>,
}

/// How long the API budget must have refused every call, without granting one,
/// before health reports NOT_SERVING.
const REFUSING_FOR: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Budgets {
    api: Arc<Semaphore>,
    public: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    public_per_peer: PeerCounter,
    streams_per_peer: PeerCounter,
    api_state: Arc<ApiState>,
}

/// When the API budget last granted and last refused a slot (ms since `epoch`; 0 =
/// never): health reads them.
struct ApiState {
    epoch: Instant,
    last_grant: AtomicU64,
    last_refusal: AtomicU64,
}

impl ApiState {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl Budgets {
    pub fn new(limits: &Limits) -> Self {
        let calls = limits.max_concurrent_requests.max(1);
        let connections = &limits.connections;
        Self {
            api: Arc::new(Semaphore::new(calls)),
            public: Arc::new(Semaphore::new(calls)),
            streams: Arc::new(Semaphore::new(connections.max_streams.max(1))),
            public_per_peer: PeerCounter::new(connections.max_public_calls_per_peer),
            streams_per_peer: PeerCounter::new(connections.max_streams_per_peer),
            api_state: Arc::new(ApiState {
                epoch: Instant::now(),
                last_grant: AtomicU64::new(0),
                last_refusal: AtomicU64::new(0),
            }),
        }
    }

    /// A slot for a call of `class` from `peer`, or the message of its refusal
    /// (RESOURCE_EXHAUSTED).
    pub fn acquire(&self, class: Class, peer: Option<IpAddr>) -> Result<Slot, &'static str> {
        match class {
            Class::Unlimited => Ok(Slot {
                _global: None,
                _peer: None,
            }),
            Class::Api => {
                let state = &self.api_state;
                match self.api.clone().try_acquire_owned() {
                    Ok(permit) => {
                        state.last_grant.store(state.now(), Ordering::Relaxed);
                        Ok(Slot {
                            _global: Some(permit),
                            _peer: None,
                        })
                    }
                    Err(_) => {
                        state.last_refusal.store(state.now(), Ordering::Relaxed);
                        Err("the server is at its concurrency limit; retry with backoff")
                    }
                }
            }
            Class::Public => self.acquire_shared(
                &self.public,
                &self.public_per_peer,
                peer,
                "the server is at its limit of calls without a token; retry with backoff",
                "too many calls without a token from this address at once; retry with backoff",
            ),
            Class::Stream => self.acquire_shared(
                &self.streams,
                &self.streams_per_peer,
                peer,
                "the server is at its limit of open streams; retry later",
                "too many open streams from this address; close some and retry",
            ),
        }
    }

    fn acquire_shared(
        &self,
        global: &Arc<Semaphore>,
        per_peer: &PeerCounter,
        peer: Option<IpAddr>,
        global_full: &'static str,
        peer_full: &'static str,
    ) -> Result<Slot, &'static str> {
        let peer_slot = match peer {
            Some(ip) => Some(per_peer.try_acquire(ip).ok_or(peer_full)?),
            None => None,
        };
        let permit = global
            .clone()
            .try_acquire_owned()
            .map_err(|_| global_full)?;
        Ok(Slot {
            _global: Some(permit),
            _peer: peer_slot,
        })
    }

    /// True while the API budget refuses every call: it refused one within the last
    /// second and granted none for a second. Health then says NOT_SERVING, so that a
    /// load balancer stops sending calls that would only be refused.
    pub fn refusing_everything(&self) -> bool {
        let state = &self.api_state;
        let now = state.now();
        let refused = state.last_refusal.load(Ordering::Relaxed);
        let granted = state.last_grant.load(Ordering::Relaxed);
        let window = u64::try_from(REFUSING_FOR.as_millis()).unwrap_or(u64::MAX);
        refused != 0
            && now.saturating_sub(refused) < window
            && now.saturating_sub(granted) >= window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_public_calls_never_take_api_slots() {
        let mut limits = Limits {
            max_concurrent_requests: 2,
            ..Limits::default()
        };
        limits.connections.max_streams = 3;
        limits.connections.max_streams_per_peer = 2;
        let budgets = Budgets::new(&limits);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let _s1 = budgets.acquire(Class::Stream, Some(a)).unwrap();
        let _s2 = budgets.acquire(Class::Stream, Some(a)).unwrap();
        assert!(budgets.acquire(Class::Stream, Some(a)).is_err(), "per peer");
        let _s3 = budgets.acquire(Class::Stream, Some(b)).unwrap();
        assert!(budgets.acquire(Class::Stream, Some(b)).is_err(), "global");
        let _p1 = budgets.acquire(Class::Public, Some(a)).unwrap();
        let _p2 = budgets.acquire(Class::Public, Some(b)).unwrap();
        // The API budget is untouched by all of that.
        let _a1 = budgets.acquire(Class::Api, Some(a)).unwrap();
        let _a2 = budgets.acquire(Class::Api, Some(a)).unwrap();
        assert!(budgets.acquire(Class::Api, Some(a)).is_err());
        assert!(budgets.acquire(Class::Unlimited, Some(a)).is_ok());
    }

    #[test]
    fn refusing_everything_needs_a_recent_refusal_and_no_grant() {
        let limits = Limits {
            max_concurrent_requests: 1,
            ..Limits::default()
        };
        let budgets = Budgets::new(&limits);
        assert!(!budgets.refusing_everything());
        let _held = budgets.acquire(Class::Api, None).unwrap();
        assert!(budgets.acquire(Class::Api, None).is_err());
        // A grant happened within the second: still serving.
        assert!(!budgets.refusing_everything());
        budgets.api_state.last_grant.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(budgets.acquire(Class::Api, None).is_err());
        assert!(budgets.refusing_everything());
    }
}
