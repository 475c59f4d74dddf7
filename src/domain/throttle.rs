//! Login throttling: failed logins are counted per username and per client address,
//! and a key that fails too often is locked out for a time that doubles with every
//! further failure, so guessing a password gets slower the longer it goes on.
//!
//! The counters live in this process's memory, and, for usernames, also in the
//! database when replicas share a PostgreSQL database (`shared`): an attempt is
//! admitted by this replica's counters first (a flood of refusals costs no database
//! work), then by the shared row of its username, so that N replicas give a guesser
//! one allowance, not N. Each admitted attempt costs two short writes there (admit,
//! settle); logins are paced by argon2 anyway. Addresses are counted per replica.
//!
//! Attempts still running are not failures. While the failures counted plus the
//! attempts running reach a key's allowance, a new attempt waits (asynchronously,
//! for at most `ThrottleSettings::max_wait`) until one of them settles, and then asks
//! again: so parallel guesses are serialized near the limit, and parallel correct
//! logins merely queue. Only failures lock a key out.
//!
//! The rules are pure, in `state` (its every method takes the current `Instant`, so
//! tests drive the clock instead of sleeping); this module shares that state between
//! the logins of the process, and only `LoginThrottle::admit` waits.

mod shared;
mod state;

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio::sync::Notify;

use shared::Settled;
use state::State;

use crate::store::Store;

/// How soon an attempt asks again when another replica's attempts hold the places
/// its username has left.
const SHARED_RETRY: Duration = Duration::from_millis(50);

/// A client address may fail this many times more than one username before it is
/// locked: people behind one NAT or proxy share an address and mistype passwords
/// independently, while a spray of one guess per account from one host is still
/// stopped after a few dozen guesses.
pub const ADDRESS_FAILURE_FACTOR: u32 = 4;

/// How long an attempt waits by default for attempts of the same username or address
/// to settle (`KMS_LOGIN_WAIT_SECONDS`): many argon2 checks' worth on a busy server,
/// and far less than a client's usual deadline.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);

/// Keys tracked per table by default (usernames, addresses). An entry is well under
/// 200 bytes, so the two tables stay within a few tens of MiB under any flood.
pub const DEFAULT_MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures of one username within the window before it is locked; a client
    /// address gets `ADDRESS_FAILURE_FACTOR` times as many.
    pub max_failures: u32,
    /// A key's failures are forgotten once it has been quiet (no failure and no
    /// lockout) this long.
    pub failure_window: Duration,
    /// The first lockout; each further failure doubles it.
    pub lockout_base: Duration,
    /// The longest lockout.
    pub lockout_max: Duration,
    /// Keys tracked per table at most (see `state::Table::make_room` for what is
    /// dropped).
    pub max_tracked: usize,
    /// Longest an attempt waits for earlier attempts of its username or address to
    /// settle before it is refused as busy (never as a failure).
    pub max_wait: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            failure_window: Duration::from_secs(300),
            lockout_base: Duration::from_secs(1),
            lockout_max: Duration::from_secs(900),
            max_tracked: DEFAULT_MAX_TRACKED,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

/// Why an attempt may not go on to the password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures: the key is locked out for this long. The only refusal that
    /// says anything about passwords.
    Locked(Duration),
    /// The attempts the key has left are all running. `State::admit` answers this to
    /// mean "ask again when one settles"; `LoginThrottle::admit` waits for that, and
    /// answers it only when the wait ran out.
    Busy,
}

/// The throttle shared by every login of this process. Cheap to clone.
#[derive(Clone)]
pub struct LoginThrottle {
    state: Arc<Mutex<State>>,
    /// Woken whenever an attempt settles or is dropped: waiters ask again.
    settled: Arc<Notify>,
    max_wait: Duration,
    /// The usernames' counters all replicas share, on a shared database.
    shared: Option<Shared>,
}

/// The database side of the throttle (`shared`).
#[derive(Clone)]
struct Shared {
    store: Store,
    settings: ThrottleSettings,
}

impl Shared {
    async fn admit(&self, username: &str) -> Result<(), Refusal> {
        let key = shared::key(username);
        let now = Utc::now();
        let settings = &self.settings;
        match self
            .store
            .update_login_guard(&key, |row| shared::admit(row, &key, now, settings))
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                // The login cannot go on anyway (it reads the user next), and the
                // replica's own counters still hold.
                tracing::warn!(error = %e, "the shared login throttle is unavailable");
                Ok(())
            }
        }
    }

    /// Settles in the background: `Attempt`'s methods are not async, and the place
    /// stays reserved (other replicas wait) until the write lands.
    fn settle(&self, username: &str, how: Settled) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, settings, key) = (
            self.store.clone(),
            self.settings.clone(),
            shared::key(username),
        );
        runtime.spawn(async move {
            let now = Utc::now();
            if let Err(e) = store
                .update_login_guard(&key, |row| {
                    (shared::settle(row, &key, now, &settings, how), ())
                })
                .await
            {
                tracing::warn!(error = %e, "a login could not be counted by the shared throttle");
            }
        });
    }
}

impl LoginThrottle {
    /// Counters in this process only.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            max_wait: settings.max_wait,
            state: Arc::new(Mutex::new(State::new(settings))),
            settled: Arc::new(Notify::new()),
            shared: None,
        }
    }

    /// As `new`, with the usernames' counters also shared through `store` when other
    /// replicas share it (PostgreSQL); a SQLite database serves one server.
    pub fn for_store(settings: ThrottleSettings, store: &Store) -> Self {
        let mut throttle = Self::new(settings.clone());
        if store.is_shared() {
            throttle.shared = Some(Shared {
                store: store.clone(),
                settings,
            });
        }
        throttle
    }

    /// Lets a login attempt go on to the password check, waiting while the attempts
    /// its username or address have left are all running (one of them may be the
    /// failure that locks it). `Refusal::Locked` when failures lock it out;
    /// `Refusal::Busy` when `max_wait` passed without a place. Dropping the future
    /// (the call's deadline) abandons the wait. The returned `Attempt` must be
    /// settled with `failed` or `succeeded`; dropped unsettled (the store failed, the
    /// call was cancelled) it counts for nothing.
    pub async fn admit(&self, username: &str, client: Option<IpAddr>) -> Result<Attempt, Refusal> {
        let deadline = tokio::time::Instant::now() + self.max_wait;
        loop {
            // Registered before asking, so a settle between the answer and the wait
            // is not missed.
            let settled = self.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            match self.try_admit(username, client, Instant::now()) {
                Err(Refusal::Busy) => {}
                Err(locked) => return Err(locked),
                Ok(mut attempt) => {
                    let Some(shared) = &self.shared else {
                        return Ok(attempt);
                    };
                    match shared.admit(username).await {
                        Ok(()) => {
                            attempt.shared = Some(shared.clone());
                            return Ok(attempt);
                        }
                        Err(Refusal::Locked(wait)) => return Err(Refusal::Locked(wait)),
                        // Other replicas' attempts hold the places left: ask again.
                        Err(Refusal::Busy) => {
                            drop(attempt);
                            let retry = tokio::time::Instant::now() + SHARED_RETRY;
                            if retry >= deadline {
                                return Err(Refusal::Busy);
                            }
                            tokio::time::sleep_until(retry).await;
                            continue;
                        }
                    }
                }
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(Refusal::Busy);
            }
        }
    }

    /// One look, no waiting: what `admit` asks each time.
    pub fn try_admit(
        &self,
        username: &str,
        client: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt, Refusal> {
        let address = client.map(address_key);
        self.lock().admit(username, address, now)?;
        Ok(Attempt {
            throttle: self.clone(),
            username: username.to_owned(),
            address,
            settled: false,
            shared: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No code panics while holding the lock, and counters left half-updated would
        // only be off by one attempt: better than refusing every login from then on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles under the lock, then wakes the waiters to ask again.
    fn settle(&self, update: impl FnOnce(&mut State)) {
        update(&mut self.lock());
        self.settled.notify_waiters();
    }
}

/// An admitted login attempt. While it runs it holds one of the attempts its keys
/// have left, so that a burst of parallel guesses cannot all pass the check before
/// the first failure is counted: the others wait for it.
pub struct Attempt {
    throttle: LoginThrottle,
    username: String,
    address: Option<IpAddr>,
    settled: bool,
    /// Holding a place in the shared counters too.
    shared: Option<Shared>,
}

impl Attempt {
    /// The password was wrong (or the user unknown): counts against both keys.
    pub fn failed(mut self, now: Instant) {
        self.settled = true;
        let (username, address) = (&self.username, self.address);
        self.throttle
            .settle(|state| state.fail(username, address, now));
        if let Some(shared) = &self.shared {
            shared.settle(username, Settled::Failed);
        }
    }

    /// The password was right: the username starts afresh. The address keeps its
    /// failures, or a sprayer could clear them with one account of its own.
    pub fn succeeded(mut self) {
        self.settled = true;
        let (username, address) = (&self.username, self.address);
        self.throttle
            .settle(|state| state.succeed(username, address));
        if let Some(shared) = &self.shared {
            shared.settle(username, Settled::Succeeded);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            let (username, address) = (&self.username, self.address);
            self.throttle
                .settle(|state| state.release(username, address));
            if let Some(shared) = &self.shared {
                shared.settle(username, Settled::Released);
            }
        }
    }
}

/// The key an address is counted under. IPv6 addresses are grouped by /64, the
/// smallest block a subscriber is usually given: one host has billions of addresses
/// in it and could otherwise use a fresh one for every guess.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// The answer when `LoginThrottle::admit` found no place within `max_wait`: the
/// server is busy with this username's or address's other attempts, which says
/// nothing about the password.
pub fn busy() -> super::Error {
    super::Error::Overloaded(
        "too many concurrent logins for this username or client address; retry in a moment",
    )
}

/// A wait in whole seconds, rounded up: "retry in 0 s" would invite a retry that is
/// refused again.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Settings and addresses both test modules of the throttle use.
#[cfg(test)]
mod fixtures {
    use super::*;

    pub fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    pub fn settings(max_failures: u32) -> ThrottleSettings {
        ThrottleSettings {
            max_failures,
            failure_window: secs(60),
            lockout_base: secs(1),
            lockout_max: secs(16),
            max_tracked: 1000,
            max_wait: secs(5),
        }
    }

    pub fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Refusal::Locked,
        fixtures::{ip, secs, settings},
        *,
    };

    #[test]
    fn an_unsettled_attempt_counts_for_nothing() {
        let throttle = LoginThrottle::new(settings(1));
        let now = Instant::now();
        let attempt = throttle.try_admit("alice", ip(1), now).unwrap();
        assert!(throttle.try_admit("alice", ip(1), now).is_err());
        drop(attempt);
        let attempt = throttle.try_admit("alice", ip(1), now).unwrap();
        attempt.succeeded();
        {
            let state = throttle.lock();
            assert!(state.usernames.entries.is_empty() && state.addresses.entries.is_empty());
        }
        throttle.try_admit("alice", ip(1), now).unwrap().failed(now);
        assert_eq!(
            throttle.try_admit("alice", ip(2), now).err(),
            Some(Locked(secs(1)))
        );
    }

    /// `n` logins of `users` from one address at once through `admit`, each holding
    /// its place a moment before it settles as `correct` says. The refusals, in order.
    async fn burst(
        throttle: &LoginThrottle,
        users: impl Fn(usize) -> String,
        n: usize,
        correct: bool,
    ) -> Vec<Refusal> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let throttle = throttle.clone();
                let user = users(i);
                tokio::spawn(async move {
                    let attempt = throttle.admit(&user, ip(1)).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if correct {
                        attempt.succeeded();
                    } else {
                        attempt.failed(Instant::now());
                    }
                    Ok::<_, Refusal>(())
                })
            })
            .collect();
        let mut refused = Vec::new();
        for task in tasks {
            if let Err(refusal) = task.await.unwrap() {
                refused.push(refusal);
            }
        }
        refused
    }

    #[tokio::test]
    async fn parallel_correct_logins_wait_for_a_place_and_all_pass() {
        let throttle = LoginThrottle::new(settings(3));
        // One user, more logins at once than its allowance.
        assert_eq!(burst(&throttle, |_| "alice".into(), 10, true).await, []);
        // Many users behind one address: more than the address's allowance (12).
        assert_eq!(burst(&throttle, |i| format!("user{i}"), 30, true).await, []);
        let state = throttle.lock();
        assert!(state.usernames.entries.is_empty() && state.addresses.entries.is_empty());
    }

    #[tokio::test]
    async fn parallel_wrong_guesses_get_no_more_checks_than_the_allowance() {
        let throttle = LoginThrottle::new(settings(3));
        let refused = burst(&throttle, |_| "alice".into(), 10, false).await;
        // 3 password checks, then the lockout for everyone who waited.
        assert_eq!(refused.len(), 7, "{refused:?}");
        assert!(
            refused.iter().all(|r| matches!(r, Locked(_))),
            "{refused:?}"
        );
        let state = throttle.lock();
        assert_eq!(state.usernames.entries["alice"].failures, 3);
    }

    #[tokio::test]
    async fn the_wait_for_a_place_is_bounded_and_counts_for_nothing() {
        let throttle = LoginThrottle::new(ThrottleSettings {
            max_wait: Duration::from_millis(100),
            ..settings(2)
        });
        let now = Instant::now();
        let held: Vec<_> = (0..2)
            .map(|_| throttle.try_admit("alice", None, now).unwrap())
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(
            throttle.admit("alice", None).await.err(),
            Some(Refusal::Busy)
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(held);
        // No failure was counted: the allowance is whole again.
        assert!(throttle.lock().usernames.entries.is_empty());
        // A place that frees up during the wait is taken at once.
        let first = throttle.try_admit("bob", None, now).unwrap();
        let second = throttle.try_admit("bob", None, now).unwrap();
        let waiter = tokio::spawn({
            let throttle = throttle.clone();
            async move { throttle.admit("bob", None).await.map(Attempt::succeeded) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.succeeded();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        drop(second);
    }

    #[test]
    fn ipv6_addresses_count_per_64_block() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), IpAddr::from([192, 0, 2, 7]));
        let v4 = IpAddr::from([192, 0, 2, 7]);
        assert_eq!(address_key(v4), v4);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(secs(4)), 4);
        assert_eq!(retry_after_secs(Duration::from_millis(4001)), 5);
    }
}
