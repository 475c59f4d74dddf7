//! A small concurrent cache with a time to live, a size bound and race-free
//! invalidation.
//!
//! The race it closes: a reader fetches from the database, a writer commits a change
//! and invalidates, then the reader stores what it fetched before the change. Every
//! invalidation moves a generation counter on; a reader takes the generation before
//! it fetches and its insert is dropped if the generation moved in between.

use std::{
    borrow::Borrow,
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, Hash},
    sync::{
        Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use foldhash::{SharedSeed, fast::SeedableRandomState};

const SHARDS: usize = 16;

/// The caches' hasher: foldhash, several times faster than std's SipHash on the
/// 300-byte access tokens the token cache is keyed by. Its weaker guarantee against
/// chosen collisions matters little here: every seed comes from the system's random
/// generator and is never shown, and what is inserted was verified first (signed
/// tokens, their sessions, stored keys' digests), so a client cannot fill a shard
/// with keys of its choosing.
fn random_state() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let random = || {
        crate::crypto::random::bytes::<8>()
            .map(u64::from_le_bytes)
            // Without the system's generator (it does not fail on Linux), the
            // address-based seed foldhash makes for itself.
            .unwrap_or_else(|_| SeedableRandomState::default().hash_one(0u8))
    };
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random()));
    SeedableRandomState::with_seed(random(), shared)
}

/// One shard: entries with the time they were stored.
type Shard<K, V> = HashMap<K, (Instant, V), SeedableRandomState>;

pub struct TtlCache<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    hasher: SeedableRandomState,
    ttl: Duration,
    shard_capacity: usize,
    generation: AtomicU64,
}

impl<K, V> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("ttl", &self.ttl)
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish_non_exhaustive()
    }
}

/// Seen before a fetch; an insert made with an outdated one is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(random_state())))
                .collect(),
            hasher: random_state(),
            ttl,
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            generation: AtomicU64::new(0),
        }
    }

    /// A critical section here never panics, so a poisoned lock still guards
    /// consistent data: take it rather than give up (an invalidation must not be lost).
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, Shard<K, V>> {
        // SHARDS is a small constant: the remainder fits any usize.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(key);
        let (at, value) = shard.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    /// Stores `value` unless something was invalidated since `seen` was taken.
    pub fn insert(&self, key: K, value: V, seen: Generation) {
        let mut shard = self.shard(&key);
        // Checked under the shard lock: an invalidation bumps the generation before it
        // takes any lock, so it either sees this entry or this insert sees its bump.
        if self.generation.load(Ordering::SeqCst) != seen.0 {
            return;
        }
        if shard.len() >= self.shard_capacity && !shard.contains_key(&key) {
            let ttl = self.ttl;
            shard.retain(|_, (at, _)| at.elapsed() < ttl);
            if shard.len() >= self.shard_capacity {
                // Still full of live entries: make room by dropping an arbitrary one.
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key, (Instant::now(), value));
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.shard(key).remove(key);
    }

    /// Drops every entry for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|k, (_, v)| keep(k, v));
        }
    }

    pub fn clear(&self) {
        self.retain(|_, _| false);
    }

    /// A read through the cache: answered from it when `trusted`; otherwise `fetch`
    /// is called and awaited and its value kept (when `trusted` and `keep` likes it),
    /// unless an invalidation happened while it was being fetched. The fetch's future
    /// (a database query, kilobytes of state) is made and boxed only on a miss, so a
    /// hit neither builds nor moves it.
    pub async fn get_or_fetch<Q, E, F>(
        &self,
        trusted: bool,
        key: &Q,
        fetch: impl FnOnce() -> F,
        keep: impl FnOnce(&V) -> bool,
    ) -> Result<V, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = Result<V, E>>,
    {
        if trusted && let Some(hit) = self.get(key) {
            return Ok(hit);
        }
        let seen = self.generation();
        let value = Box::pin(fetch()).await?;
        if trusted && keep(&value) {
            self.insert(key.to_owned(), value.clone(), seen);
        }
        Ok(value)
    }

    /// `get_or_fetch` for a cache of found things only: `fetch` may find nothing,
    /// which is never kept.
    pub async fn get_or_fetch_found<Q, E, F>(
        &self,
        trusted: bool,
        key: &Q,
        fetch: impl FnOnce() -> F,
        keep: impl FnOnce(&V) -> bool,
    ) -> Result<Option<V>, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = Result<Option<V>, E>>,
    {
        if trusted && let Some(hit) = self.get(key) {
            return Ok(Some(hit));
        }
        let seen = self.generation();
        let found = Box::pin(fetch()).await?;
        if trusted
            && let Some(value) = &found
            && keep(value)
        {
            self.insert(key.to_owned(), value.clone(), seen);
        }
        Ok(found)
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_expires() {
        let cache = TtlCache::new(100, Duration::from_millis(50));
        let seen = cache.generation();
        cache.insert("a".to_owned(), 1, seen);
        assert_eq!(cache.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn an_insert_racing_an_invalidation_is_dropped() {
        let cache = TtlCache::new(100, Duration::from_secs(60));
        let seen = cache.generation();
        // ...the reader fetches; meanwhile a writer commits and invalidates...
        cache.remove("a");
        cache.insert("a".to_owned(), 1, seen);
        assert_eq!(cache.get("a"), None);
        let seen = cache.generation();
        cache.insert("a".to_owned(), 2, seen);
        assert_eq!(cache.get("a"), Some(2));
    }

    #[test]
    fn retain_and_clear_invalidate() {
        let cache = TtlCache::new(100, Duration::from_secs(60));
        for i in 0..10 {
            let seen = cache.generation();
            cache.insert(i, i % 2, seen);
        }
        cache.retain(|_, v| *v == 0);
        assert_eq!(cache.len(), 5);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&2), Some(0));
        cache.clear();
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn get_or_fetch_keeps_only_trusted_liked_values() {
        let cache: TtlCache<String, Option<u32>> = TtlCache::new(100, Duration::from_secs(60));
        let fetched = |v| async move { Ok::<_, ()>(v) };
        let keep = |v: &Option<u32>| v.is_some();
        assert_eq!(
            cache.get_or_fetch(true, "a", || fetched(None), keep).await,
            Ok(None)
        );
        assert_eq!(cache.get("a"), None, "disliked: not kept");
        assert_eq!(
            cache
                .get_or_fetch(false, "a", || fetched(Some(1)), keep)
                .await,
            Ok(Some(1))
        );
        assert_eq!(cache.get("a"), None, "untrusted: not kept");
        assert_eq!(
            cache
                .get_or_fetch(true, "a", || fetched(Some(2)), keep)
                .await,
            Ok(Some(2))
        );
        assert_eq!(
            cache
                .get_or_fetch(true, "a", || fetched(Some(3)), keep)
                .await,
            Ok(Some(2)),
            "a hit"
        );
        assert_eq!(
            cache
                .get_or_fetch(false, "a", || fetched(Some(3)), keep)
                .await,
            Ok(Some(3)),
            "untrusted: no hit"
        );
        let failed = async { Err::<Option<u32>, _>("down") };
        assert_eq!(
            cache.get_or_fetch(true, "b", || failed, keep).await,
            Err("down")
        );
    }

    #[tokio::test]
    async fn get_or_fetch_found_keeps_only_trusted_liked_finds() {
        let cache: TtlCache<String, u32> = TtlCache::new(100, Duration::from_secs(60));
        let fetched = |v| async move { Ok::<_, ()>(v) };
        let odd = |v: &u32| v % 2 == 1;
        assert_eq!(
            cache
                .get_or_fetch_found(true, "a", || fetched(None), odd)
                .await,
            Ok(None)
        );
        assert_eq!(
            cache
                .get_or_fetch_found(true, "a", || fetched(Some(2)), odd)
                .await,
            Ok(Some(2))
        );
        assert_eq!(cache.get("a"), None, "disliked: not kept");
        assert_eq!(
            cache
                .get_or_fetch_found(false, "a", || fetched(Some(1)), odd)
                .await,
            Ok(Some(1))
        );
        assert_eq!(cache.get("a"), None, "untrusted: not kept");
        assert_eq!(
            cache
                .get_or_fetch_found(true, "a", || fetched(Some(3)), odd)
                .await,
            Ok(Some(3))
        );
        assert_eq!(
            cache
                .get_or_fetch_found(true, "a", || fetched(None), odd)
                .await,
            Ok(Some(3)),
            "a hit"
        );
        assert_eq!(
            cache
                .get_or_fetch_found(false, "a", || fetched(None), odd)
                .await,
            Ok(None),
            "untrusted: no hit"
        );
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = TtlCache::new(64, Duration::from_secs(60));
        for i in 0..10_000 {
            let seen = cache.generation();
            cache.insert(i, i, seen);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(!cache.is_empty());
    }
}
