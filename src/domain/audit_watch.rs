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
    /// Where the tail started following (`i64::MAX` while nobody watches): it hands
    /// out every row above it.
    start: Arc<AtomicI64>,
    /// The highest id handed out (or `start`): a watch that subscribes now will be
    /// handed the rows above it.
    sent_high: Arc<AtomicI64>,
    wake: Arc<Notify>,
}

impl AuditTail {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tx: broadcast::channel(BUFFER).0,
            floor: Arc::new(AtomicI64::new(i64::MAX)),
            start: Arc::new(AtomicI64::new(i64::MAX)),
            sent_high: Arc::new(AtomicI64::new(i64::MAX)),
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
                for position in [&self.floor, &self.start, &self.sent_high] {
                    position.store(i64::MAX, Ordering::Release);
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    () = self.wake.notified() => continue,
                }
            }
            let following = match &mut state {
                Some(following) => following,
                None => match self.store.max_audit_id().await {
                    Ok(max) => {
                        // Ids start at 1: nothing lies at or below 0.
                        let following = Following::new(max.saturating_sub(LOOKBACK).max(0));
                        self.start.store(following.floor, Ordering::Release);
                        self.sent_high.store(following.floor, Ordering::Release);
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
            // Rows that committed late, below the highest seen (only while a gap is
            // open), then the new rows above it: a gap never holds up new rows.
            let high = following.high();
            let late = if following.seen.is_empty() {
                Ok(Vec::new())
            } else {
                self.store.audit_between(following.floor, high, PAGE).await
            };
            let new = match late {
                Ok(late) => {
                    self.hand_out(following, late);
                    self.store.audit_after(high, PAGE).await
                }
                Err(e) => Err(e),
            };
            match new {
                Ok(rows) => {
                    let full = rows.len() as u64 == PAGE;
                    self.hand_out(following, rows);
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

impl AuditTail {
    /// Sends each row not handed out yet.
    fn hand_out(&self, following: &mut Following, rows: Vec<crate::store::StoredAuditEvent>) {
        for row in rows {
            if following.seen.insert(row.id) {
                self.sent_high.fetch_max(row.id, Ordering::AcqRel);
                // No receiver left is fine: the next turn notices.
                let _ = self.tx.send(Arc::new(row.into()));
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

    /// The highest id handed out.
    fn high(&self) -> i64 {
        self.seen
            .last()
            .copied()
            .unwrap_or(self.floor)
            .max(self.floor)
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
    // Read before subscribing: every row the tail hands out after this is above it
    // (but for late commits), and is queued for this watch.
    let handed_out = tail.sent_high.load(Ordering::Acquire);
    // Subscribed before the replay reads: nothing committed meanwhile is missed.
    let live = tail.subscribe();
    tokio::spawn(produce(tail.clone(), live, after_id, handed_out, tx));
    Ok(rx)
}

async fn produce(
    tail: AuditTail,
    mut live: broadcast::Receiver<Arc<AuditEvent>>,
    after_id: i64,
    handed_out: i64,
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
    // Replayed ids the tail hands out to this watch too (those above what it had
    // handed out when this watch subscribed, or above where it started following for
    // it): each is skipped once when it comes, then forgotten.
    let tail_start = if handed_out == i64::MAX {
        tail.start.load(Ordering::Acquire)
    } else {
        handed_out
    };
    let mut overlap = BTreeSet::new();
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
            if row.id > tail_start {
                overlap.insert(row.id);
            }
            if tx.send(Ok(row.into())).await.is_err() {
                return;
            }
        }
    }
    loop {
        let event = tokio::select! {
            () = tx.closed() => return,
            event = live.recv() => event,
        };
        match event {
            Ok(event) => {
                if event.id <= after_id || overlap.remove(&event.id) {
                    continue;
                }
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
}
