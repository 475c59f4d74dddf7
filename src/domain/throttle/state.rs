//! The pure state machine of the login throttle: two tables of counters (usernames,
//! client addresses) and the rules that admit, fail, settle and evict. Every method
//! takes the current `Instant`, so tests drive the clock instead of sleeping; the
//! waiting lives in the parent module's `LoginThrottle`.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{ADDRESS_FAILURE_FACTOR, Refusal, ThrottleSettings};

/// Both tables, under one lock so that an attempt is admitted by both or by neither.
pub(super) struct State {
    settings: ThrottleSettings,
    pub(super) usernames: Table<String>,
    pub(super) addresses: Table<IpAddr>,
}

impl State {
    pub(super) fn new(settings: ThrottleSettings) -> Self {
        let user_limit = settings.max_failures;
        let address_limit = settings.max_failures.saturating_mul(ADDRESS_FAILURE_FACTOR);
        Self {
            usernames: Table::new(user_limit),
            addresses: Table::new(address_limit),
            settings,
        }
    }

    /// A lockout of either key wins over a busy one (the longer lockout if both are
    /// locked): waiting for a place would only end in the lockout.
    pub(super) fn admit(
        &mut self,
        username: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let settings = &self.settings;
        let user = self.usernames.check(username, now, settings);
        let address = match address {
            Some(key) => self
                .addresses
                .check(&key, now, settings)
                .map(|()| Some(key)),
            None => Ok(None),
        };
        let address = match (user, address) {
            (Ok(()), Ok(address)) => address,
            (Err(Refusal::Locked(a)), Err(Refusal::Locked(b))) => {
                return Err(Refusal::Locked(a.max(b)));
            }
            (Err(Refusal::Locked(wait)), _) | (_, Err(Refusal::Locked(wait))) => {
                return Err(Refusal::Locked(wait));
            }
            (Err(Refusal::Busy), _) | (_, Err(Refusal::Busy)) => return Err(Refusal::Busy),
        };
        self.usernames.reserve(username, now, settings);
        if let Some(address) = address {
            self.addresses.reserve(&address, now, settings);
        }
        Ok(())
    }

    pub(super) fn fail(&mut self, username: &str, address: Option<IpAddr>, now: Instant) {
        self.usernames.fail(username, now, &self.settings);
        if let Some(address) = address {
            self.addresses.fail(&address, now, &self.settings);
        }
    }

    pub(super) fn succeed(&mut self, username: &str, address: Option<IpAddr>) {
        self.usernames.forget_failures(username);
        if let Some(address) = address {
            self.addresses.release(&address);
        }
    }

    pub(super) fn release(&mut self, username: &str, address: Option<IpAddr>) {
        self.usernames.release(username);
        if let Some(address) = address {
            self.addresses.release(&address);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// Failures since the key was last quiet for a whole window.
    pub(super) failures: u32,
    last_failure: Option<Instant>,
    locked_until: Option<Instant>,
    /// Admitted attempts not yet settled.
    pub(super) in_flight: u32,
}

impl Entry {
    const NEW: Self = Self {
        failures: 0,
        last_failure: None,
        locked_until: None,
        in_flight: 0,
    };

    /// The window counts from the end of the lockout, not from the failure: with a
    /// lockout longer than the window, a guesser who waits it out must not come back
    /// to a clean slate, or the backoff would never grow past the first lockout.
    fn quiet_from(&self) -> Option<Instant> {
        match (self.last_failure, self.locked_until) {
            (Some(failed), Some(locked)) => Some(failed.max(locked)),
            (failed, locked) => failed.or(locked),
        }
    }

    /// Forgets the failures once the key has been quiet for a whole window.
    fn expire(&mut self, now: Instant, window: Duration) {
        if self
            .quiet_from()
            .is_some_and(|quiet| now.saturating_duration_since(quiet) >= window)
        {
            self.failures = 0;
            self.last_failure = None;
            self.locked_until = None;
        }
    }

    /// Nothing worth keeping: no failures to remember and no attempt running.
    fn is_idle(&self, now: Instant, window: Duration) -> bool {
        let mut probe = *self;
        probe.expire(now, window);
        probe.failures == 0 && probe.in_flight == 0
    }
}

pub(super) struct Table<K> {
    /// Failures allowed before a lockout.
    limit: u32,
    pub(super) entries: HashMap<K, Entry>,
}

impl<K: TableKey> Table<K> {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            entries: HashMap::new(),
        }
    }

    /// `Locked` when the key is locked out; `Busy` when the attempts it has left are
    /// already running (one of them may be the failure that locks it: ask again when
    /// it has settled).
    fn check(
        &mut self,
        key: &K::Ref,
        now: Instant,
        settings: &ThrottleSettings,
    ) -> Result<(), Refusal> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Ok(());
        };
        entry.expire(now, settings.failure_window);
        if let Some(wait) = entry
            .locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
        {
            return Err(Refusal::Locked(wait));
        }
        // After a lockout, one attempt at a time: its failure locks the key again.
        let left = self.limit.saturating_sub(entry.failures).max(1);
        if entry.in_flight >= left {
            return Err(Refusal::Busy);
        }
        Ok(())
    }

    fn reserve(&mut self, key: &K::Ref, now: Instant, settings: &ThrottleSettings) {
        if !self.entries.contains_key(key) {
            self.make_room(now, settings);
        }
        let entry = self.entries.entry(K::to_key(key)).or_insert(Entry::NEW);
        entry.in_flight = entry.in_flight.saturating_add(1);
    }

    fn fail(&mut self, key: &K::Ref, now: Instant, settings: &ThrottleSettings) {
        if !self.entries.contains_key(key) {
            // Not expected: entries with an attempt running are never evicted. Should
            // it happen anyway, the failure still counts.
            self.make_room(now, settings);
        }
        let entry = self.entries.entry(K::to_key(key)).or_insert(Entry::NEW);
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.expire(now, settings.failure_window);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = Some(now);
        if let Some(excess) = entry.failures.checked_sub(self.limit) {
            // Never `None` in practice: the lockout is at most `lockout_max`.
            entry.locked_until = now.checked_add(lockout(excess, settings));
        }
    }

    fn forget_failures(&mut self, key: &K::Ref) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures = 0;
            entry.last_failure = None;
            entry.locked_until = None;
        }
        self.release(key);
    }

    fn release(&mut self, key: &K::Ref) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.failures == 0 && entry.in_flight == 0 {
                self.entries.remove(key);
            }
        }
    }

    /// Called before a new key is added to a full table. The eviction rule: drop
    /// every idle entry (failures forgotten, nothing running); if the table is still
    /// more than 7/8 full, drop entries with the fewest failures, least recently
    /// failed first, down to 7/8. A flood of random names or addresses, one failure
    /// each, thus evicts its own entries and not the ones under sustained attack
    /// (which have the most failures). Entries with attempts running are kept, so
    /// the table holds at most `max_tracked` plus the logins in flight. Each sweep
    /// is O(n) and frees at least n/8 places, so its cost per insert stays constant.
    fn make_room(&mut self, now: Instant, settings: &ThrottleSettings) {
        let capacity = settings.max_tracked.max(1);
        if self.entries.len() < capacity {
            return;
        }
        let window = settings.failure_window;
        self.entries.retain(|_, entry| !entry.is_idle(now, window));
        let target = capacity - (capacity / 8).max(1);
        let excess = self.entries.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        let mut candidates: Vec<(u32, Option<Instant>, K)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.in_flight == 0)
            .map(|(key, entry)| (entry.failures, entry.last_failure, key.clone()))
            .collect();
        let excess = excess.min(candidates.len());
        if excess == 0 {
            return;
        }
        if excess < candidates.len() {
            candidates.select_nth_unstable_by(excess - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        }
        for (_, _, key) in candidates.into_iter().take(excess) {
            self.entries.remove(key.borrow());
        }
    }
}

/// base * 2^excess, capped at the maximum.
pub(super) fn lockout(excess: u32, settings: &ThrottleSettings) -> Duration {
    let factor = 1u32.checked_shl(excess).unwrap_or(u32::MAX);
    settings
        .lockout_base
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(settings.lockout_max)
}

/// Lets `Table<String>` be asked about a `&str` without allocating.
pub(super) trait TableKey: Eq + Hash + Clone + Borrow<Self::Ref> {
    type Ref: ?Sized + Eq + Hash;
    fn to_key(key: &Self::Ref) -> Self;
}

impl TableKey for String {
    type Ref = str;
    fn to_key(key: &str) -> Self {
        key.to_owned()
    }
}

impl TableKey for IpAddr {
    type Ref = IpAddr;
    fn to_key(key: &IpAddr) -> Self {
        *key
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            Refusal::Locked,
            fixtures::{ip, secs, settings},
        },
        *,
    };
    /// One whole wrong-password attempt: admitted, then failed.
    fn fail(
        state: &mut State,
        user: &str,
        addr: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        state.admit(user, addr, now)?;
        state.fail(user, addr, now);
        Ok(())
    }

    #[test]
    fn locks_after_max_failures_for_the_base_time() {
        let t0 = Instant::now();
        let mut s = State::new(settings(3));
        for _ in 0..3 {
            fail(&mut s, "alice", None, t0).unwrap();
        }
        assert_eq!(s.admit("alice", None, t0), Err(Locked(secs(1))));
        assert_eq!(
            s.admit("alice", None, t0 + Duration::from_millis(400)),
            Err(Locked(Duration::from_millis(600)))
        );
        // Other usernames are not affected.
        s.admit("bob", None, t0).unwrap();
        // Once the lockout is over, the next attempt is admitted.
        s.admit("alice", None, t0 + secs(1)).unwrap();
    }

    #[test]
    fn every_further_failure_doubles_the_lockout_up_to_the_cap() {
        let mut now = Instant::now();
        let mut s = State::new(settings(2));
        fail(&mut s, "alice", None, now).unwrap();
        let mut waits = Vec::new();
        for _ in 0..7 {
            fail(&mut s, "alice", None, now).unwrap();
            let Err(Locked(wait)) = s.admit("alice", None, now) else {
                panic!("alice should be locked");
            };
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn lockout_never_overflows() {
        let s = settings(1);
        assert_eq!(lockout(0, &s), secs(1));
        assert_eq!(lockout(3, &s), secs(8));
        assert_eq!(lockout(31, &s), secs(16));
        assert_eq!(lockout(u32::MAX, &s), secs(16));
        let huge = ThrottleSettings {
            lockout_base: Duration::MAX,
            lockout_max: Duration::MAX,
            ..s
        };
        assert_eq!(lockout(40, &huge), Duration::MAX);
    }

    #[test]
    fn success_resets_the_username_but_not_the_address() {
        let t0 = Instant::now();
        let mut s = State::new(settings(2));
        fail(&mut s, "alice", ip(1), t0).unwrap();
        fail(&mut s, "alice", ip(1), t0).unwrap();
        let t1 = t0 + secs(1);
        s.admit("alice", ip(1), t1).unwrap();
        s.succeed("alice", ip(1));
        assert!(!s.usernames.entries.contains_key("alice"));
        // A fresh allowance: one more failure does not lock.
        fail(&mut s, "alice", ip(1), t1).unwrap();
        s.admit("alice", ip(1), t1).unwrap();
        s.release("alice", ip(1));
        let address = s.addresses.entries.get(&IpAddr::from([10, 0, 0, 1]));
        assert_eq!(address.map(|e| (e.failures, e.in_flight)), Some((3, 0)));
    }

    #[test]
    fn quiet_keys_forget_their_failures_after_the_window() {
        let t0 = Instant::now();
        let mut s = State::new(settings(3));
        fail(&mut s, "alice", None, t0).unwrap();
        fail(&mut s, "alice", None, t0 + secs(30)).unwrap();
        // 60 s after the last failure: counting starts again.
        let t1 = t0 + secs(90);
        fail(&mut s, "alice", None, t1).unwrap();
        fail(&mut s, "alice", None, t1).unwrap();
        s.admit("alice", None, t1).unwrap();
        s.fail("alice", None, t1);
        assert!(s.admit("alice", None, t1).is_err());
        // Within the window failures add up, however slowly they come.
        let mut s = State::new(settings(3));
        for i in 0..3 {
            fail(&mut s, "bob", None, t0 + secs(59 * i)).unwrap();
        }
        assert!(s.admit("bob", None, t0 + secs(118)).is_err());
    }

    #[test]
    fn the_window_counts_from_the_end_of_the_lockout() {
        // A lockout longer than the window must not hand a patient guesser a clean
        // slate: the backoff keeps growing.
        let t0 = Instant::now();
        let mut s = State::new(ThrottleSettings {
            failure_window: secs(5),
            lockout_base: secs(10),
            lockout_max: secs(100),
            ..settings(1)
        });
        fail(&mut s, "alice", None, t0).unwrap();
        assert_eq!(s.admit("alice", None, t0), Err(Locked(secs(10))));
        fail(&mut s, "alice", None, t0 + secs(10)).unwrap();
        assert_eq!(s.admit("alice", None, t0 + secs(10)), Err(Locked(secs(20))));
        // Quiet for a whole window after the lockout ended: forgotten.
        let later = t0 + secs(30 + 5);
        fail(&mut s, "alice", None, later).unwrap();
        assert_eq!(s.admit("alice", None, later), Err(Locked(secs(10))));
    }

    #[test]
    fn an_address_fails_several_times_more_than_a_username() {
        let t0 = Instant::now();
        let mut s = State::new(settings(2));
        let limit = 2 * ADDRESS_FAILURE_FACTOR;
        for n in 0..limit {
            fail(&mut s, &format!("user{n}"), ip(7), t0).unwrap();
        }
        assert_eq!(s.admit("someone-new", ip(7), t0), Err(Locked(secs(1))));
        // Other addresses, and calls with no known address, are not affected.
        s.admit("someone-new", ip(8), t0).unwrap();
        s.release("someone-new", ip(8));
        s.admit("someone-new", None, t0).unwrap();
    }

    #[test]
    fn the_longer_wait_wins_when_both_keys_are_locked() {
        let t0 = Instant::now();
        let mut s = State::new(settings(1));
        // alice: locked 1 s, then 2 s; the address (limit 4) locked at its 4th failure.
        fail(&mut s, "alice", ip(1), t0).unwrap();
        fail(&mut s, "alice", ip(1), t0 + secs(1)).unwrap();
        fail(&mut s, "bob", ip(1), t0 + secs(1)).unwrap();
        fail(&mut s, "carol", ip(1), t0 + secs(1)).unwrap();
        let now = t0 + secs(1);
        assert_eq!(s.admit("alice", ip(1), now), Err(Locked(secs(2))));
        assert_eq!(s.admit("dave", ip(1), now), Err(Locked(secs(1))));
        // A refused attempt reserves nothing in the table that would have let it in.
        assert!(!s.usernames.entries.contains_key("dave"));
    }

    #[test]
    fn attempts_in_flight_use_up_the_allowance() {
        // A burst of parallel guesses must not all pass the check before the first
        // failure is counted.
        let t0 = Instant::now();
        let mut s = State::new(settings(3));
        for _ in 0..3 {
            s.admit("alice", None, t0).unwrap();
        }
        // Busy, not locked: no failure has been counted; the caller waits.
        assert_eq!(s.admit("alice", None, t0), Err(Refusal::Busy));
        s.release("alice", None);
        s.admit("alice", None, t0).unwrap();
        // After a lockout, one attempt at a time.
        let mut s = State::new(settings(1));
        fail(&mut s, "bob", None, t0).unwrap();
        let t1 = t0 + secs(1);
        s.admit("bob", None, t1).unwrap();
        assert!(s.admit("bob", None, t1).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_random_keys() {
        let t0 = Instant::now();
        let mut s = State::new(ThrottleSettings {
            max_tracked: 64,
            ..settings(3)
        });
        // The victim has been guessed at and is locked.
        for _ in 0..3 {
            fail(&mut s, "victim", None, t0).unwrap();
        }
        for n in 0..10_000u32 {
            let addr = Some(IpAddr::from(n.to_be_bytes()));
            fail(&mut s, &format!("random{n}"), addr, t0).unwrap();
            assert!(s.usernames.entries.len() <= 64);
            assert!(s.addresses.entries.len() <= 64);
        }
        // One failure each: the flood evicted its own entries, not the victim's lock.
        assert_eq!(s.admit("victim", None, t0), Err(Locked(secs(1))));
    }

    #[test]
    fn idle_entries_go_first_when_the_table_is_full() {
        let t0 = Instant::now();
        let mut s = State::new(ThrottleSettings {
            max_tracked: 8,
            ..settings(3)
        });
        for n in 0..8 {
            fail(&mut s, &format!("old{n}"), None, t0).unwrap();
        }
        // A window later they are all forgotten and make way together.
        let later = t0 + secs(61);
        fail(&mut s, "new", None, later).unwrap();
        assert_eq!(s.usernames.entries.len(), 1);
    }
}
