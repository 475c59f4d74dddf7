//! Refusals that anyone can cause at will (a failed or throttled login, a failed key
//! verification, a refused password change), coalesced so that a flood of them writes a
//! bounded number of audit rows, however fast it comes.
//!
//! Within a window (10 s, starting at the first refusal after a quiet one):
//! - the first event of a kind (action, outcome, actor, target, source) is written at
//!   once, with count 1;
//! - its repeats are counted in memory and written as one row with their count when the
//!   window ends (or at shutdown);
//! - past `per_source` kinds from one source (an attacker varying the username or the
//!   key), further kinds fold into one row per (source, action, outcome), target `*`;
//! - past `capacity` tracked rows in all (many sources), further events fold into one
//!   row per (action, outcome), with actor, target and client address `*`.
//!
//! So a window writes at most `2 * capacity` rows plus one per (action, outcome) pair,
//! and memory holds at most `capacity` entries plus those pairs. Every event is in
//! exactly one row's count: the trail stays complete, only coarser under a flood.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use sea_orm::{DatabaseConnection, EntityTrait};

use super::{
    AuditRecord,
    audit::{active_counted, audit_batch_len},
    entities::audit_event,
};

/// Recorded for a field that several coalesced events disagree on.
pub const ANY: &str = "*";

/// An event and how many identical ones its row stands for.
pub type Row = (AuditRecord, i64);

/// The bounds, see the module comment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window: Duration,
    pub per_source: usize,
    pub capacity: usize,
}

impl Limits {
    /// At most (2 * 500 + pairs) rows per 10 s: about 100 rows/s in all, and
    /// (2 * 10 + pairs) per 10 s, about 2.4 rows/s, from any one source.
    pub const DEFAULT: Self = Self {
        window: Duration::from_secs(10),
        per_source: 10,
        capacity: 500,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    action: &'static str,
    outcome: &'static str,
    actor: String,
    target: String,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SourceKind {
    action: &'static str,
    outcome: &'static str,
    source: String,
}

/// Events not yet written: the latest of them (its time and request id), and how many.
#[derive(Debug)]
struct Tally {
    latest: AuditRecord,
    count: i64,
}

impl Tally {
    fn new(record: AuditRecord) -> Self {
        Self {
            latest: record,
            count: 1,
        }
    }

    /// Counts `record`. A field the events disagree on becomes `*` (the client address:
    /// `fallback`, the source they share).
    fn add(&mut self, mut record: AuditRecord, fallback_addr: &str) {
        if record.actor != self.latest.actor {
            record.actor = ANY.to_owned();
        }
        if record.target != self.latest.target {
            record.target = ANY.to_owned();
        }
        if record.client_addr != self.latest.client_addr {
            record.client_addr = Some(fallback_addr.to_owned()).filter(|a| !a.is_empty());
        }
        self.latest = record;
        self.count += 1;
    }

    fn row(self) -> Row {
        (self.latest, self.count)
    }
}

/// The pure state: which kinds this window has seen, and what is not yet written.
#[derive(Debug)]
pub struct Coalescer {
    limits: Limits,
    window_started: Option<Instant>,
    /// Each kind written at once this window, with its repeats since (if any).
    kinds: HashMap<Kind, Option<Tally>>,
    kinds_per_source: HashMap<String, usize>,
    by_source: HashMap<SourceKind, Tally>,
    overflow: HashMap<(&'static str, &'static str), Tally>,
}

impl Coalescer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            window_started: None,
            kinds: HashMap::new(),
            kinds_per_source: HashMap::new(),
            by_source: HashMap::new(),
            overflow: HashMap::new(),
        }
    }

    /// Counts a refusal from `source` (a client address, grouped as the caller sees
    /// fit; empty when unknown). Returns the rows to write now: those of a window that
    /// has ended, and this event when it is the first of its kind.
    pub fn add(&mut self, record: AuditRecord, source: String, now: Instant) -> Vec<Row> {
        let mut rows = self.roll(now);
        self.window_started.get_or_insert(now);
        let kind = Kind {
            action: record.action,
            outcome: record.outcome,
            actor: record.actor.clone(),
            target: record.target.clone(),
            source,
        };
        if let Some(repeats) = self.kinds.get_mut(&kind) {
            match repeats {
                Some(tally) => tally.add(record, &kind.source),
                None => *repeats = Some(Tally::new(record)),
            }
            return rows;
        }
        let tracked = self.kinds.len() + self.by_source.len();
        let from_source = self.kinds_per_source.get(&kind.source).copied();
        if tracked < self.limits.capacity && from_source.unwrap_or(0) < self.limits.per_source {
            *self
                .kinds_per_source
                .entry(kind.source.clone())
                .or_default() += 1;
            self.kinds.insert(kind, None);
            rows.push((record, 1));
            return rows;
        }
        let source_kind = SourceKind {
            action: kind.action,
            outcome: kind.outcome,
            source: kind.source,
        };
        if let Some(tally) = self.by_source.get_mut(&source_kind) {
            tally.add(record, &source_kind.source);
        } else if tracked < self.limits.capacity && from_source.is_some() {
            let mut first = record;
            first.target = ANY.to_owned();
            self.by_source.insert(source_kind, Tally::new(first));
        } else {
            let pair = (record.action, record.outcome);
            let mut first = record;
            first.actor = ANY.to_owned();
            first.target = ANY.to_owned();
            first.client_addr = Some(ANY.to_owned());
            match self.overflow.get_mut(&pair) {
                Some(tally) => tally.add(first, ANY),
                None => {
                    self.overflow.insert(pair, Tally::new(first));
                }
            }
        }
        rows
    }

    /// The counts of a window that has ended, oldest first; nothing before then.
    pub fn roll(&mut self, now: Instant) -> Vec<Row> {
        match self.window_started {
            Some(started) if now.saturating_duration_since(started) >= self.limits.window => {
                self.drain()
            }
            _ => Vec::new(),
        }
    }

    /// Every count not yet written, whether or not its window has ended (shutdown),
    /// oldest first; the next event starts a new window.
    pub fn drain(&mut self) -> Vec<Row> {
        self.window_started = None;
        self.kinds_per_source.clear();
        let mut rows: Vec<Row> = self
            .kinds
            .drain()
            .filter_map(|(_, repeats)| repeats)
            .chain(self.by_source.drain().map(|(_, tally)| tally))
            .chain(self.overflow.drain().map(|(_, tally)| tally))
            .map(Tally::row)
            .collect();
        rows.sort_by_key(|(record, _)| record.at);
        rows
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.kinds.len() + self.by_source.len() + self.overflow.len()
    }
}

/// How often the writer ends a window that no new refusal ended.
const TICK: Duration = Duration::from_secs(1);
/// Rows waiting for the writer. A window makes at most about 1,000 (see `Limits`), so
/// this fills only when the database has been down for several windows; then rows are
/// dropped and counted, never waited for.
const QUEUE_MAX: usize = 4_096;
const BATCH_MAX: usize = 256;

/// One store's coalescer and its writer, shared by the store's clones.
#[derive(Debug)]
pub struct Refusals {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    coalescer: Coalescer,
    /// To the writer, which starts with the first refusal; `None` before and after
    /// close.
    queue: Option<tokio::sync::mpsc::Sender<Row>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    closed: bool,
    dropped: u64,
}

impl Refusals {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                coalescer: Coalescer::new(limits),
                queue: None,
                writer: None,
                closed: false,
                dropped: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; a half-counted event is better than none.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a refusal; never waits.
    pub fn add(self: &Arc<Self>, db: &DatabaseConnection, record: AuditRecord, source: String) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let rows = state.coalescer.add(record, source, Instant::now());
        if rows.is_empty() {
            return;
        }
        if state.queue.is_none() {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::error!("audit events dropped: no runtime to write them");
                return;
            };
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
            state.writer = Some(runtime.spawn(write(db.clone(), Arc::downgrade(self), rx)));
            state.queue = Some(tx);
        }
        for row in rows {
            let sent = state
                .queue
                .as_ref()
                .is_some_and(|q| q.try_send(row).is_ok());
            if !sent {
                state.dropped += 1;
                // Logged on the first drop and every thousandth after it.
                if state.dropped % 1000 == 1 {
                    tracing::warn!(dropped = state.dropped, "audit queue full: events dropped");
                }
            }
        }
    }

    /// The counts of a window that has ended.
    fn roll(&self, now: Instant) -> Vec<Row> {
        self.lock().coalescer.roll(now)
    }

    /// Stops counting and writes everything not yet written: what the writer has
    /// queued, then every count, ended window or not. Waits at most `wait` for the
    /// writer.
    pub async fn close(&self, db: &DatabaseConnection, wait: Duration) {
        let (pending, writer) = {
            let mut state = self.lock();
            state.closed = true;
            // Dropping the sender lets the writer finish the queue and end.
            state.queue = None;
            (state.coalescer.drain(), state.writer.take())
        };
        if let Some(writer) = writer
            && tokio::time::timeout(wait, writer).await.is_err()
        {
            tracing::warn!("audit writer did not finish before shutdown");
        }
        let mut pending = pending;
        write_rows(db, &mut pending).await;
    }
}

/// Writes queued rows in batches; on each tick, ends a window nobody else ended. Ends
/// when the queue is closed (the store closed or gone) or the coalescer is gone.
async fn write(
    db: DatabaseConnection,
    refusals: Weak<Refusals>,
    mut rx: tokio::sync::mpsc::Receiver<Row>,
) {
    let mut rows = Vec::with_capacity(BATCH_MAX);
    loop {
        match tokio::time::timeout(TICK, rx.recv_many(&mut rows, BATCH_MAX)).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => match refusals.upgrade() {
                Some(refusals) => rows.extend(refusals.roll(Instant::now())),
                None => return,
            },
        }
        write_rows(&db, &mut rows).await;
    }
}

/// Writes and empties `rows`, in the statement sizes `audit_batch_len` gives. A
/// failure is logged with how many events the lost rows stood for.
async fn write_rows(db: &DatabaseConnection, rows: &mut Vec<Row>) {
    while !rows.is_empty() {
        let batch: Vec<Row> = rows.drain(..audit_batch_len(rows.len())).collect();
        let events: i64 = batch.iter().map(|(_, count)| count).sum();
        let written = audit_event::Entity::insert_many(
            batch
                .into_iter()
                .map(|(record, count)| active_counted(record, count)),
        )
        .exec_without_returning(db)
        .await;
        if let Err(e) = written {
            tracing::error!(error = %e, events, "audit events could not be recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn refusal(action: &'static str, actor: &str, target: &str, addr: &str) -> AuditRecord {
        AuditRecord {
            at: Utc::now(),
            actor: actor.to_owned(),
            action,
            target: target.to_owned(),
            outcome: "denied",
            client_addr: Some(addr.to_owned()),
            request_id: "r".into(),
        }
    }

    fn total(rows: &[Row]) -> i64 {
        rows.iter().map(|(_, count)| count).sum()
    }

    const LIMITS: Limits = Limits {
        window: Duration::from_secs(10),
        per_source: 3,
        capacity: 8,
    };

    #[test]
    fn a_burst_is_one_row_at_once_and_one_with_the_count() {
        let mut c = Coalescer::new(LIMITS);
        let t0 = Instant::now();
        let first = c.add(
            refusal("login_throttled", "anonymous", "ghost", "192.0.2.1"),
            "192.0.2.1".into(),
            t0,
        );
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, 1);
        for i in 1..2_000u64 {
            let later = t0 + Duration::from_millis(i * 4);
            let rows = c.add(
                refusal("login_throttled", "anonymous", "ghost", "192.0.2.1"),
                "192.0.2.1".into(),
                later,
            );
            assert!(rows.is_empty());
        }
        assert!(c.roll(t0 + Duration::from_secs(9)).is_empty());
        let rest = c.roll(t0 + Duration::from_secs(10));
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, 1_999);
        assert_eq!(rest[0].0.target, "ghost");
        assert_eq!(c.tracked(), 0);
        // The next burst is a new one: recorded at once again.
        let again = c.add(
            refusal("login_throttled", "anonymous", "ghost", "192.0.2.1"),
            "192.0.2.1".into(),
            t0 + Duration::from_secs(11),
        );
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn varied_targets_from_one_source_fold_into_one_row() {
        let mut c = Coalescer::new(LIMITS);
        let t0 = Instant::now();
        let mut rows = Vec::new();
        for i in 0..1_000 {
            rows.extend(c.add(
                refusal("key_verify", "eve", &format!("k{i}"), "192.0.2.9"),
                "192.0.2.9".into(),
                t0,
            ));
        }
        assert_eq!(rows.len(), LIMITS.per_source);
        let rest = c.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0.target, ANY);
        assert_eq!(rest[0].0.actor, "eve");
        assert_eq!(rest[0].0.client_addr.as_deref(), Some("192.0.2.9"));
        assert_eq!(total(&rows) + total(&rest), 1_000);
    }

    #[test]
    fn many_sources_are_bounded_in_memory_and_rows() {
        let mut c = Coalescer::new(LIMITS);
        let t0 = Instant::now();
        let mut rows = Vec::new();
        let mut events = 0;
        for round in 0..3 {
            for source in 0..100 {
                for action in ["login", "key_verify"] {
                    let addr = format!("198.51.100.{source}");
                    let target = format!("t{round}");
                    rows.extend(c.add(refusal(action, "a", &target, &addr), addr.clone(), t0));
                    events += 1;
                    assert!(c.tracked() <= LIMITS.capacity + 2);
                }
            }
        }
        let rest = c.drain();
        let pairs = 2;
        assert!(
            rows.len() + rest.len() <= 2 * LIMITS.capacity + pairs,
            "{} rows",
            rows.len() + rest.len()
        );
        assert_eq!(total(&rows) + total(&rest), events);
        let overflow: Vec<_> = rest
            .iter()
            .filter(|(r, _)| r.client_addr.as_deref() == Some(ANY))
            .collect();
        assert_eq!(overflow.len(), pairs);
        assert!(
            overflow
                .iter()
                .all(|(r, _)| r.actor == ANY && r.target == ANY)
        );
    }

    #[test]
    fn repeats_that_differ_keep_only_what_they_share() {
        let mut c = Coalescer::new(LIMITS);
        let t0 = Instant::now();
        // Two addresses of one IPv6 /64: one source, one kind.
        let source = "2001:db8:1:2::/64".to_owned();
        c.add(
            refusal("login", "anonymous", "bob", "2001:db8:1:2::1"),
            source.clone(),
            t0,
        );
        c.add(
            refusal("login", "anonymous", "bob", "2001:db8:1:2::2"),
            source.clone(),
            t0,
        );
        c.add(
            refusal("login", "anonymous", "bob", "2001:db8:1:2::3"),
            source.clone(),
            t0,
        );
        let rest = c.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, 2);
        assert_eq!(rest[0].0.client_addr.as_deref(), Some(source.as_str()));
        assert_eq!(rest[0].0.target, "bob");
    }

    #[test]
    fn any_sequence_is_counted_exactly_and_bounded() {
        use proptest::prelude::*;
        let events = proptest::collection::vec((0u8..3, 0u8..40, 0u8..12, 0u64..25_000), 0..600);
        proptest!(ProptestConfig::with_cases(64), |(events in events)| {
            let mut c = Coalescer::new(LIMITS);
            let t0 = Instant::now();
            let mut rows = Vec::new();
            let mut sorted = events.clone();
            sorted.sort_by_key(|e| e.3);
            for (action, target, source, ms) in &sorted {
                let action = ["login", "login_throttled", "key_verify"][usize::from(*action)];
                let addr = format!("203.0.113.{source}");
                rows.extend(c.add(refusal(action, "x", &format!("t{target}"), &addr), addr, t0 + Duration::from_millis(*ms)));
                prop_assert!(c.tracked() <= LIMITS.capacity + 3);
            }
            rows.extend(c.drain());
            prop_assert_eq!(total(&rows), i64::try_from(sorted.len()).unwrap());
            // Windows start at a refusal and last 10 s: at most 3 in 25 s.
            prop_assert!(rows.len() <= 3 * (2 * LIMITS.capacity + 3));
        });
    }

    /// Counts still in memory at shutdown are written by `Store::close`, not lost.
    #[tokio::test]
    async fn close_writes_what_is_still_counted() {
        use crate::store::{AuditFilter, Store, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display()),
            max_connections: 2,
        };
        let store = Store::connect(&options).await.unwrap();
        store.migrate().await.unwrap();
        let addr = "192.0.2.1";
        for _ in 0..1_000 {
            store.audit_refusal(
                refusal("login_throttled", "anonymous", "ghost", addr),
                addr.into(),
            );
        }
        for i in 0..50 {
            store.audit_refusal(
                refusal("key_verify", "eve", &format!("k{i}"), addr),
                addr.into(),
            );
        }
        store.close().await.unwrap();

        let store = Store::connect(&options).await.unwrap();
        let rows = store
            .list_audit(&AuditFilter::default(), None, 1_000)
            .await
            .unwrap();
        let sum: i64 = rows.iter().map(|r| r.count).sum();
        assert_eq!(sum, 1_050);
        // 10 kinds from the source at once, the repeats of the first, and one fold.
        assert_eq!(rows.len(), Limits::DEFAULT.per_source + 2, "{rows:#?}");
        let folded = rows.iter().find(|r| r.target == ANY).unwrap();
        assert_eq!((folded.action.as_str(), folded.count), ("key_verify", 41));
        store.close().await.unwrap();
    }
}
