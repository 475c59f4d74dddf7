//! The rate limit of one server: at most `requests` VALID answers for a key in any
//! span of `window_seconds`, kept in memory.
//!
//! Each key has a log of its recent VALID answers. Answers close together share one
//! entry (a granule of 1/1024 of the window) that counts them all and expires with the
//! latest of them: a coarser log can only refuse a little early, never let one too
//! many through, and stays within ~1024 entries per key whatever the limit is.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};

use super::RateLimit;

const SHARDS: usize = 16;
const GRANULES_PER_WINDOW: i64 = 1024;
/// Every this many calls a shard drops the logs with nothing left in their window.
const SWEEP_EVERY: u32 = 4096;

/// What the limit looks like to one call (times in Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: i64,
    pub remaining: i64,
    /// When one more call passes: now, when `remaining` is above 0.
    pub reset_at_ms: i64,
}

#[derive(Debug)]
struct Entry {
    first_ms: i64,
    last_ms: i64,
    count: i64,
}

#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<Entry>,
    total: i64,
    /// Kept so that a sweep knows when the log is empty.
    window_ms: i64,
}

impl Log {
    fn prune(&mut self, now_ms: i64) {
        while let Some(front) = self.entries.front() {
            if front.last_ms + self.window_ms > now_ms {
                break;
            }
            self.total -= front.count;
            self.entries.pop_front();
        }
    }

    /// When the log holds fewer than `requests` live answers again.
    fn reset_at(&self, requests: i64, now_ms: i64) -> i64 {
        let mut excess = self.total - requests + 1;
        if excess <= 0 {
            return now_ms;
        }
        for entry in &self.entries {
            excess -= entry.count;
            if excess <= 0 {
                return entry.last_ms + self.window_ms;
            }
        }
        now_ms
    }
}

#[derive(Debug, Default)]
struct Shard {
    logs: HashMap<i64, Log>,
    calls: u32,
}

#[derive(Debug)]
pub struct Limiter {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Limiter {
    fn shard(&self, key_id: i64) -> std::sync::MutexGuard<'_, Shard> {
        // SHARDS is small: the remainder fits any usize.
        let index = key_id.rem_euclid(SHARDS as i64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one request of the key's limit: `Ok` when it passes (and is counted),
    /// `Err` when the limit is used up (nothing counted).
    pub fn take(
        &self,
        key_id: i64,
        limit: RateLimit,
        now_ms: i64,
    ) -> Result<LimitState, LimitState> {
        let window_ms = limit.window_seconds.saturating_mul(1000);
        let mut shard = self.shard(key_id);
        shard.calls = shard.calls.wrapping_add(1);
        if shard.calls.is_multiple_of(SWEEP_EVERY) {
            shard.logs.retain(|_, log| {
                log.prune(now_ms);
                !log.entries.is_empty()
            });
        }
        let log = shard.logs.entry(key_id).or_default();
        log.window_ms = window_ms;
        log.prune(now_ms);
        if log.total >= limit.requests {
            return Err(LimitState {
                limit: limit.requests,
                remaining: 0,
                reset_at_ms: log.reset_at(limit.requests, now_ms),
            });
        }
        let granule = (window_ms / GRANULES_PER_WINDOW).max(1);
        match log.entries.back_mut() {
            Some(last) if now_ms < last.first_ms + granule => {
                last.count += 1;
                last.last_ms = last.last_ms.max(now_ms);
            }
            _ => log.entries.push_back(Entry {
                first_ms: now_ms,
                last_ms: now_ms,
                count: 1,
            }),
        }
        log.total += 1;
        Ok(LimitState {
            limit: limit.requests,
            remaining: limit.requests - log.total,
            reset_at_ms: log.reset_at(limit.requests, now_ms),
        })
    }

    /// Gives back a request taken by a call that then failed a later check (a failed
    /// check spends nothing). Taken from the newest entry: it then expires no earlier
    /// than the returned request would have, which only errs towards refusing.
    pub fn give_back(&self, key_id: i64) {
        let mut shard = self.shard(key_id);
        if let Some(log) = shard.logs.get_mut(&key_id)
            && let Some(last) = log.entries.back_mut()
        {
            last.count -= 1;
            log.total -= 1;
            if last.count <= 0 {
                log.entries.pop_back();
            }
        }
    }

    /// The state without taking anything (for a refusal made before the limit check).
    pub fn peek(&self, key_id: i64, limit: RateLimit, now_ms: i64) -> LimitState {
        let mut shard = self.shard(key_id);
        let Some(log) = shard.logs.get_mut(&key_id) else {
            return LimitState {
                limit: limit.requests,
                remaining: limit.requests,
                reset_at_ms: now_ms,
            };
        };
        log.window_ms = limit.window_seconds.saturating_mul(1000);
        log.prune(now_ms);
        LimitState {
            limit: limit.requests,
            remaining: (limit.requests - log.total).max(0),
            reset_at_ms: log.reset_at(limit.requests, now_ms),
        }
    }

    /// Drops a key's counts (revocation).
    pub fn forget(&self, key_id: i64) {
        self.shard(key_id).logs.remove(&key_id);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: RateLimit = RateLimit {
        requests: 3,
        window_seconds: 10,
    };

    #[test]
    fn counts_remaining_and_says_when_one_more_passes() {
        let l = Limiter::default();
        assert_eq!(l.take(1, LIMIT, 0).unwrap().remaining, 2);
        assert_eq!(l.take(1, LIMIT, 4_000).unwrap().remaining, 1);
        let last = l.take(1, LIMIT, 5_000).unwrap();
        assert_eq!((last.remaining, last.reset_at_ms), (0, 10_000));
        let refused = l.take(1, LIMIT, 9_999).unwrap_err();
        assert_eq!((refused.remaining, refused.reset_at_ms), (0, 10_000));
        assert_eq!(l.take(1, LIMIT, 10_000).unwrap().remaining, 0);
        assert!(l.take(2, LIMIT, 10_000).is_ok(), "keys are apart");
        l.give_back(1);
        assert!(l.take(1, LIMIT, 10_001).is_ok());
        l.forget(1);
        assert_eq!(l.peek(1, LIMIT, 10_002).remaining, 3);
    }

    proptest! {
        /// Never more than `requests` passes in any span of the window, whatever the
        /// call times, and a call passes whenever the exact count allows it... or was
        /// refused only because a granule merged it with a later call.
        #[test]
        fn never_more_than_requests_in_any_window(
            requests in 1i64..8, window_seconds in 1i64..4,
            gaps in proptest::collection::vec(0i64..1500, 1..200),
        ) {
            let limit = RateLimit { requests, window_seconds };
            let window_ms = window_seconds * 1000;
            let l = Limiter::default();
            let mut now = 0;
            let mut passed: Vec<i64> = Vec::new();
            for gap in gaps {
                now += gap;
                let exact_in_window = passed.iter().filter(|t| **t + window_ms > now).count() as i64;
                match l.take(7, limit, now) {
                    Ok(_) => {
                        prop_assert!(exact_in_window < requests);
                        passed.push(now);
                    }
                    Err(state) => prop_assert!(state.reset_at_ms > now),
                }
            }
            for (i, t) in passed.iter().enumerate() {
                let in_span = passed[i..].iter().filter(|u| **u < t + window_ms).count() as i64;
                prop_assert!(in_span <= requests);
            }
        }
    }
}
