//! The rate limit across replicas that share a database.
//!
//! Each window is cut into ten buckets. A replica takes a share of a key's limit for
//! the current bucket from the database (`Store::lease_rate`: the key row locked, then
//! one conditional grant), in chunks of about 2% of the limit, and spends it from
//! memory; a share left unused when its bucket ends is not returned. The database
//! grants at most `requests + requests / 10 + 1` over any eleven consecutive buckets,
//! and every span of one window lies inside eleven buckets, so all replicas together
//! give at most that many VALID answers in any span: within the contract's
//! `requests x 1.1 + replicas`. A client asking for more gets at least `requests` in a
//! window, less only the unused ends of chunks (under a chunk per replica and bucket).
//! Each server also keeps its own exact limit (`rate`), so one replica alone never
//! goes past `requests`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use super::RateLimit;
use crate::{
    domain::Result,
    store::{LeaseAsk, Store},
};

const BUCKETS_PER_WINDOW: i64 = 10;
/// A span of one window touches at most this many buckets.
const SPAN_BUCKETS: i64 = BUCKETS_PER_WINDOW + 1;
/// Shares held for more keys than this are dropped (they are only a cache).
const HELD_MAX: usize = 100_000;

/// What the database grants over `SPAN_BUCKETS` buckets.
pub fn cap(requests: i64) -> i64 {
    requests + requests / 10 + 1
}

/// How much of the limit a replica asks for at a time.
pub fn chunk(requests: i64) -> i64 {
    (requests / 50).max(1)
}

#[derive(Debug, Clone, Copy)]
struct Held {
    bucket_start_ms: i64,
    left: i64,
}

#[derive(Debug)]
pub struct Leases {
    store: Store,
    held: Mutex<HashMap<i64, Held>>,
}

/// The current bucket of a limit: (start, width), in Unix milliseconds.
pub fn bucket(limit: RateLimit, now_ms: i64) -> (i64, i64) {
    let width = (limit.window_seconds.saturating_mul(1000) / BUCKETS_PER_WINDOW).max(1);
    (now_ms - now_ms.rem_euclid(width), width)
}

impl Leases {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            held: Mutex::default(),
        }
    }

    /// One request of the key's limit across replicas: `Ok(false)` when none is left.
    pub async fn take(&self, key_id: i64, limit: RateLimit, now_ms: i64) -> Result<bool> {
        let (start, width) = bucket(limit, now_ms);
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(h) = held.get_mut(&key_id)
                && h.bucket_start_ms == start
                && h.left > 0
            {
                h.left -= 1;
                return Ok(true);
            }
        }
        let granted = self
            .store
            .lease_rate(LeaseAsk {
                key_id,
                bucket_start_ms: start,
                bucket_ms: width,
                span_buckets: SPAN_BUCKETS,
                cap: cap(limit.requests),
                want: chunk(limit.requests),
            })
            .await?;
        if granted == 0 {
            return Ok(false);
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= HELD_MAX {
            held.clear();
        }
        let h = held.entry(key_id).or_insert(Held {
            bucket_start_ms: start,
            left: 0,
        });
        if h.bucket_start_ms != start {
            *h = Held {
                bucket_start_ms: start,
                left: 0,
            };
        }
        h.left += granted - 1;
        Ok(true)
    }

    /// Returns one request taken by a call that then failed a later check.
    pub fn give_back(&self, key_id: i64, limit: RateLimit, now_ms: i64) {
        let (start, _) = bucket(limit, now_ms);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = held.get_mut(&key_id)
            && h.bucket_start_ms == start
        {
            h.left += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_inside_the_contracts_bound() {
        for requests in [1, 9, 10, 99, 100, 1_000, 1_000_000_000] {
            // requests x 1.1 + 1 replica, in integers.
            assert!(cap(requests) * 10 <= requests * 11 + 10, "{requests}");
            assert!(cap(requests) >= requests);
            assert!(chunk(requests) >= 1 && chunk(requests) * 50 <= requests.max(50));
        }
        let limit = RateLimit {
            requests: 10,
            window_seconds: 2,
        };
        assert_eq!(bucket(limit, 1_234), (1_200, 200));
    }
}
