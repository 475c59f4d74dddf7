//! last_used_at without a database write per verification: VALID answers note the
//! time in memory, and a background task writes the newest time of each used key once
//! per resolution (`KMS_LAST_USED_RESOLUTION_SECONDS`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use chrono::{DateTime, Utc};

use crate::{domain::cluster::Caches, store::Store};

const SHARDS: usize = 16;

/// Key id -> (service name, newest VALID answer) not yet written.
type Pending = HashMap<i64, (Arc<str>, DateTime<Utc>)>;

#[derive(Debug)]
pub struct LastUsed {
    shards: Box<[Mutex<Pending>]>,
}

impl LastUsed {
    /// Starts the writer; it stops once the returned tracker is dropped.
    pub fn start(store: Store, caches: Arc<Caches>, resolution: Duration) -> Arc<Self> {
        let tracker = Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        });
        tokio::spawn(write_every(
            Arc::downgrade(&tracker),
            store,
            caches,
            resolution.max(Duration::from_secs(1)),
        ));
        tracker
    }

    pub fn record(&self, key_id: i64, service_name: &Arc<str>, at: DateTime<Utc>) {
        // SHARDS is small: the remainder fits any usize.
        let index = key_id.rem_euclid(SHARDS as i64) as usize;
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get_mut(&key_id) {
            Some(entry) => entry.1 = entry.1.max(at),
            None => {
                shard.insert(key_id, (service_name.clone(), at));
            }
        }
    }

    fn take(&self) -> Pending {
        let mut all = Pending::new();
        for shard in &self.shards {
            all.extend(std::mem::take(
                &mut *shard.lock().unwrap_or_else(PoisonError::into_inner),
            ));
        }
        all
    }
}

async fn write_every(tracker: Weak<LastUsed>, store: Store, caches: Arc<Caches>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(tracker) = tracker.upgrade() else {
            return;
        };
        let pending = tracker.take();
        drop(tracker);
        let used: Vec<(i64, DateTime<Utc>)> =
            pending.iter().map(|(id, (_, at))| (*id, *at)).collect();
        match store.touch_keys(&used).await {
            // What GetKey keeps of these keys now shows an old last_used_at.
            Ok(()) => {
                for (name, _) in pending.values() {
                    caches.forget_current(name);
                }
            }
            Err(e) => tracing::warn!(error = %e, keys = used.len(), "last-used times not written"),
        }
    }
}
