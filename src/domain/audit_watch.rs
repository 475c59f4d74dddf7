//! WatchAuditEvents: the audit trail as a stream, for shipping to a SIEM. A watcher
//! first gets the stored events after its `after_id`, in id order, then new ones as they
//! commit on any replica.
//!
//! One `AuditTail` per server follows the table while anyone watches: it polls for
//! rows above the highest id it has seen every `POLL` (so rows written by other
//! replicas arrive within a second, on either database) and hands each new row to
//! every watcher once. On PostgreSQL ids are taken before commit, so a row can appear
//! after a higher one: the tail keeps looking below the highest id for up to
//! `GAP_PATIENCE` (an id that never appears was rolled back).
//!
//! Memory is bounded whatever the readers do: the replay reads a page at a time at
//! the reader's pace; live rows wait in one broadcast buffer of `BUFFER` shared by all
//! watchers, and each stream's own channel holds `STREAM_BUFFER`. A reader that falls
//! more than `BUFFER` live rows behind is ended with RESOURCE_EXHAUSTED; it resumes
//! with `after_id` = the last id it received, losing nothing.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, broadcast, mpsc, watch};

use super::{Caller, Error, Result, audit::AuditEvent, require_admin};
use crate::store::Store;

/// How often the tail looks for new rows while anyone watches.
const POLL: Duration = Duration::from_millis(250);
/// Rows read per query, in the replay and by the tail.
const PAGE: u64 = 500;
/// How long a missing id below the highest seen is waited for.
const GAP_PATIENCE: Duration = Duration::from_secs(5);
/// Rows below the newest the tail looks at when it starts following: ones still
/// committing then.
const LOOKBACK: i64 = 100;
/// Rows a watcher may fall behind the tail before its stream is ended.
const BUFFER: usize = 1024;
/// Rows queued for one stream's client.
const STREAM_BUFFER: usize = 64;
/// How long a new watch waits for the tail to read the table (the database down).
const TAIL_START: Duration = Duration::from_secs(5);

pub const FELL_BEHIND: &str = "the reader fell too far behind the audit stream; watch again with after_id = the last id received";

/// The shared follower of the audit table.
#[derive(Clone, Debug)]
pub struct AuditTail {
    store: Store,
    tx: broadcast::Sender<Arc<AuditEvent>>,
    /// Every id at or below it has been handed out (or given up): never sent again.
    floor: Arc<AtomicI64>,
    wake: Arc<Notify>,
}

impl AuditTail {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tx: broadcast::channel(BUFFER).0,
            floor: Arc::new(AtomicI64::new(i64::MAX)),
            wake: Arc::default(),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<AuditEvent>> {
        let rx = self.tx.subscribe();
        self.wake.notify_one();
        rx
    }

    /// Follows the table while anyone watches, until `stop` changes.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut state: Option<Following> = None;
        loop {
            if self.tx.receiver_count() == 0 {
                // Nobody watches: forget the position; start over when someone does.
                state = None;
                self.floor.store(i64::MAX, Ordering::Release);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = self.wake.notified() => continue,
                }
            }
            let following = match &mut state {
                Some(following) => following,
                None => match self.store.max_audit_id().await {
                    Ok(max) => {
                        let following = Following::new(max.saturating_sub(LOOKBACK));
                        self.floor.store(following.floor, Ordering::Release);
                        state.insert(following)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the audit stream cannot read the audit table");
                        if pause(&mut stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.store.audit_after(following.floor, PAGE).await {
                Ok(rows) => {
                    let full = rows.len() as u64 == PAGE;
                    for row in rows {
                        if following.seen.insert(row.id) {
                            // No receiver left is fine: the next turn notices.
                            let _ = self.tx.send(Arc::new(row.into()));
                        }
                    }
                    following.advance(Instant::now());
                    self.floor.store(following.floor, Ordering::Release);
                    if full {
                        // More waiting: no pause.
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the audit stream cannot read the audit table")
                }
            }
            if pause(&mut stop).await {
                return;
            }
        }
    }
}

/// Sleeps one poll interval; `true` when stopping.
async fn pause(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(POLL) => false,
    }
}

/// Where the tail is: every id up to `floor` handed out, `seen` those above it.
struct Following {
    floor: i64,
    seen: BTreeSet<i64>,
    /// Since when the id right above `floor` has been missing.
    gap_since: Option<Instant>,
}

impl Following {
    fn new(floor: i64) -> Self {
        Self {
            floor,
            seen: BTreeSet::new(),
            gap_since: None,
        }
    }

    /// Moves `floor` over the ids seen in a row, and over a gap missing for longer
    /// than `GAP_PATIENCE`.
    fn advance(&mut self, now: Instant) {
        while let Some(&lowest) = self.seen.first() {
            if lowest == self.floor + 1 {
                self.seen.pop_first();
                self.floor = lowest;
                self.gap_since = None;
                continue;
            }
            let since = *self.gap_since.get_or_insert(now);
            if now.duration_since(since) < GAP_PATIENCE {
                break;
            }
            // Rolled back: jump the whole gap.
            self.floor = lowest - 1;
            self.gap_since = None;
        }
    }
}

/// Starts a watch: stored events after `after_id`, then live ones, on the returned
/// channel; an `Err` item ends it.
pub fn watch(
    tail: &AuditTail,
    caller: &Caller,
    after_id: i64,
) -> Result<mpsc::Receiver<Result<AuditEvent>>> {
    require_admin(caller)?;
    if after_id < 0 {
        return Err(Error::invalid("after_id", "must not be negative"));
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    // Subscribed before the replay reads: nothing committed meanwhile is missed.
    let live = tail.subscribe();
    tokio::spawn(produce(tail.clone(), live, after_id, tx));
    Ok(rx)
}

async fn produce(
    tail: AuditTail,
    mut live: broadcast::Receiver<Arc<AuditEvent>>,
    after_id: i64,
    tx: mpsc::Sender<Result<AuditEvent>>,
) {
    // The replay starts once the tail knows where it stands: every row it will not
    // hand out is then below what the replay reads (rows committing meanwhile come
    // both ways, and are sent once).
    let started = Instant::now();
    while tail.floor.load(Ordering::Acquire) == i64::MAX {
        if started.elapsed() > TAIL_START {
            let _ = tx.send(Err(Error::Unavailable)).await;
            return;
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    // Ids sent above the tail's floor: the tail may still hand them out.
    let mut sent = BTreeSet::new();
    let mut cursor = after_id;
    loop {
        let rows = match tail.store.audit_after(cursor, PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let Some(last) = rows.last() else { break };
        cursor = last.id;
        for row in rows {
            sent.insert(row.id);
            if tx.send(Ok(row.into())).await.is_err() {
                return;
            }
        }
        forget_below(&mut sent, tail.floor.load(Ordering::Acquire));
    }
    loop {
        let event = tokio::select! {
            () = tx.closed() => return,
            event = live.recv() => event,
        };
        match event {
            Ok(event) => {
                if event.id <= after_id || !sent.insert(event.id) {
                    continue;
                }
                forget_below(&mut sent, tail.floor.load(Ordering::Acquire));
                if tx.send(Ok((*event).clone())).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let _ = tx.send(Err(Error::Overloaded(FELL_BEHIND))).await;
                return;
            }
            // The server is stopping.
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `floor` is `i64::MAX` until the tail has read the table: nothing is known then.
fn forget_below(sent: &mut BTreeSet<i64>, floor: i64) {
    if floor == i64::MAX {
        return;
    }
    while sent.first().is_some_and(|&id| id <= floor) {
        sent.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_moves_over_ids_in_a_row_and_waits_at_a_gap() {
        let t0 = Instant::now();
        let mut f = Following::new(10);
        f.seen.extend([11, 12, 14, 15]);
        f.advance(t0);
        assert_eq!(f.floor, 12, "13 is missing");
        // 13 commits late.
        f.seen.insert(13);
        f.advance(t0 + Duration::from_secs(1));
        assert_eq!((f.floor, f.seen.len()), (15, 0));
        // 16 never comes (rolled back): given up after the patience.
        f.seen.insert(17);
        f.advance(t0 + Duration::from_secs(2));
        assert_eq!(f.floor, 15);
        f.advance(t0 + Duration::from_secs(2) + GAP_PATIENCE);
        assert_eq!((f.floor, f.seen.len()), (17, 0));
    }

    #[test]
    fn sent_ids_are_forgotten_below_the_floor() {
        let mut sent: BTreeSet<i64> = [3, 5, 8].into();
        forget_below(&mut sent, i64::MAX);
        assert_eq!(sent.len(), 3, "the tail has not read yet");
        forget_below(&mut sent, 5);
        assert_eq!(sent, [8].into());
    }
}
