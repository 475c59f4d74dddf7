//! The audit trail: who did what to what, when, from where, with what outcome.
//!
//! The transport knows the request id and the client address; the domain knows the
//! event. Rather than thread the former through every signature of two transports,
//! each transport runs a call inside `scope`, and `event` reads it when it builds a
//! row. Outside a request (start-up, the CLI) the fields are simply empty.

use std::{future::Future, net::IpAddr};

use chrono::{DateTime, Utc};

use super::{Caller, Error, Result, paging, require_admin, throttle::address_key, validate};
use crate::store::{AuditFilter, AuditRecord, Store, StoredAuditEvent, audit_batch_len};

tokio::task_local! {
    static REQUEST: RequestMeta;
}

/// What the transport knows about the current call.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    /// Formatted only when an audit row is written, not on every call.
    pub client_addr: Option<std::net::IpAddr>,
}

/// Runs `f` with `meta` as the current call's metadata. The task-local's own future,
/// not an `async fn` around it: that would hold `f` twice (once as the argument, once
/// inside the awaited scope), and every call's future would grow by the whole of it.
pub fn scope<F: Future>(meta: RequestMeta, f: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(meta, f)
}

pub const ANONYMOUS: &str = "anonymous";

/// The request id a client sent (`x-request-id`) when it is sane: 1..64 characters of
/// `A-Z a-z 0-9 . _ -`; otherwise a fresh random one.
pub fn request_id(sent: Option<&str>) -> String {
    match sent {
        Some(id)
            if (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            id.to_owned()
        }
        _ => fresh_request_id(),
    }
}

/// Unique, not secret: a random prefix drawn once per process and a counter, so that
/// no call pays a trip to the OS random number generator for its id.
fn fresh_request_id() -> String {
    use std::{
        fmt::Write,
        sync::{
            OnceLock,
            atomic::{AtomicU64, Ordering},
        },
    };
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| crate::crypto::random::base62(10).unwrap_or_default());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The prefix, `-` and at most 16 hex digits: one allocation of the right size.
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('-');
    let _ = write!(id, "{n:x}");
    id
}

/// Actions, as stored and filtered on.
pub mod action {
    pub const LOGIN: &str = "login";
    pub const LOGIN_THROTTLED: &str = "login_throttled";
    pub const REGISTER: &str = "register";
    pub const TOKEN_REFRESH: &str = "token_refresh";
    pub const TOKEN_REUSE: &str = "token_reuse_detected";
    pub const LOGOUT: &str = "logout";
    pub const KEY_CREATE: &str = "key_create";
    pub const KEY_GET: &str = "key_get";
    pub const KEY_ROTATE: &str = "key_rotate";
    pub const KEY_REVOKE: &str = "key_revoke";
    pub const KEY_UPDATE: &str = "key_update";
    pub const KEY_VERIFY: &str = "key_verify";
    pub const ROLES_SET: &str = "roles_set";
    pub const USER_DELETE: &str = "user_delete";
    pub const PASSWORD_CHANGE: &str = "password_change";
    pub const SIGNING_KEY_ROTATE: &str = "signing_key_rotate";
    pub const DATA_KEY_ROTATE: &str = "data_key_rotate";
    pub const SECRETS_REWRAP: &str = "secrets_rewrap";
    pub const MASTER_KEY_REWRAP: &str = "master_key_rewrap";

    /// Every action, for filters that offer them (the console's audit page).
    pub const ALL: &[&str] = &[
        LOGIN,
        LOGIN_THROTTLED,
        REGISTER,
        TOKEN_REFRESH,
        TOKEN_REUSE,
        LOGOUT,
        KEY_CREATE,
        KEY_GET,
        KEY_ROTATE,
        KEY_REVOKE,
        KEY_UPDATE,
        KEY_VERIFY,
        ROLES_SET,
        USER_DELETE,
        PASSWORD_CHANGE,
        SIGNING_KEY_ROTATE,
        DATA_KEY_ROTATE,
        SECRETS_REWRAP,
        MASTER_KEY_REWRAP,
    ];
}

pub mod outcome {
    pub const SUCCESS: &str = "success";
    pub const FAILURE: &str = "failure";
    pub const DENIED: &str = "denied";
}

/// The row for an event of the current call. `target` must never be a secret.
pub fn event(
    actor: &str,
    action: &'static str,
    target: &str,
    outcome: &'static str,
) -> AuditRecord {
    let meta = REQUEST.try_with(Clone::clone).unwrap_or_default();
    AuditRecord {
        at: Utc::now(),
        actor: if actor.is_empty() {
            ANONYMOUS.to_owned()
        } else {
            actor.to_owned()
        },
        action,
        target: target.to_owned(),
        outcome,
        client_addr: meta.client_addr.map(|ip| ip.to_string()),
        request_id: meta.request_id,
    }
}

/// Appends an event that changes nothing else (a read, a refusal). A failure to record
/// it is logged, not turned into the caller's error: the answer stands either way.
///
/// A refusal (any outcome but success) is something anyone can cause at will, as fast
/// as they can send: it is counted rather than written row by row. The first of a
/// burst is written at once (in the background: the refusal does not wait for the
/// database), its repeats from the same source as one row with their count, within
/// bounds per source and in all (`store::audit_coalesce`). Successes are written as
/// they happen.
pub async fn append(store: &Store, record: AuditRecord) {
    if record.outcome != outcome::SUCCESS {
        let source = source_of(record.client_addr.as_deref());
        store.audit_refusal(record, source);
        return;
    }
    if let Err(e) = store.audit(record).await {
        tracing::error!(error = %e, "audit event could not be recorded");
    }
}

/// The source a refusal is counted against: its client address, grouped as the login
/// throttle groups addresses (an IPv6 client controls a whole /64); empty if unknown.
fn source_of(client_addr: Option<&str>) -> String {
    match client_addr
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(address_key)
    {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => format!("{v6}/64"),
        None => String::new(),
    }
}

/// How many events may wait for the background writer, and how many it writes at once.
const QUEUE_MAX: usize = 4_096;
const BATCH_MAX: usize = 256;

/// An event for the writer, with whoever waits for it to be committed.
struct Queued {
    record: AuditRecord,
    committed: tokio::sync::oneshot::Sender<bool>,
}

/// Events that must be on disk before the call answers (reading a secret), written by
/// a background writer in batches, one transaction each: the caller waits for the
/// commit of the batch that holds its event, so concurrent reads share one commit
/// (group commit) instead of paying one each. (Refusals go through `append`.)
#[derive(Debug, Clone)]
pub struct AuditQueue {
    tx: tokio::sync::mpsc::Sender<Queued>,
    /// How long `record` waits for its commit: the store's own bound, so that an
    /// outage answers UNAVAILABLE as fast as a direct query would.
    wait: std::time::Duration,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record.fmt(f)
    }
}

impl AuditQueue {
    /// Starts the writer; it ends once every handle is dropped and the queue is empty.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
        let wait = store.wait();
        tokio::spawn(write_batches(store, rx));
        Self { tx, wait }
    }

    /// Waits until the event is committed; `Unavailable` if it could not be, or not
    /// within the store's wait (the writer may be stuck on an earlier batch during an
    /// outage). An event given up on may still be written later: the trail then shows
    /// a read that was refused, never misses one that was answered.
    pub async fn record(&self, record: AuditRecord) -> Result<()> {
        let (committed, done) = tokio::sync::oneshot::channel();
        let queued = Queued { record, committed };
        let committed = async {
            self.tx.send(queued).await.map_err(|_| Error::Unavailable)?;
            match done.await {
                Ok(true) => Ok(()),
                _ => Err(Error::Unavailable),
            }
        };
        tokio::time::timeout(self.wait, committed)
            .await
            .map_err(|_| Error::Unavailable)?
    }
}

/// Writes what is queued, oldest first, in batches the store takes as one statement;
/// whatever does not fit a batch waits for the next one, topped up from the queue.
async fn write_batches(store: Store, mut rx: tokio::sync::mpsc::Receiver<Queued>) {
    let mut queued = Vec::with_capacity(BATCH_MAX);
    loop {
        if queued.is_empty() {
            if rx.recv_many(&mut queued, BATCH_MAX).await == 0 {
                return;
            }
        } else {
            while queued.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(more) => queued.push(more),
                    Err(_) => break,
                }
            }
        }
        let count = audit_batch_len(queued.len());
        let (records, waiting): (Vec<_>, Vec<_>) = queued
            .drain(..count)
            .map(|q| (q.record, q.committed))
            .unzip();
        let written = store.audit_many(records).await;
        if let Err(e) = &written {
            tracing::error!(error = %e, count, "audit events could not be recorded");
        }
        for committed in waiting {
            // The caller may have gone away (cancelled): nothing to tell then.
            let _ = committed.send(written.is_ok());
        }
    }
}

pub fn actor(caller: Option<&Caller>) -> &str {
    caller.map_or(ANONYMOUS, |c| c.subject.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub client_addr: String,
    pub request_id: String,
    pub count: i64,
}

impl From<StoredAuditEvent> for AuditEvent {
    fn from(e: StoredAuditEvent) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            client_addr: e.client_addr.unwrap_or_default(),
            request_id: e.request_id,
            count: e.count,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Store,
    tail: super::audit_watch::AuditTail,
}

impl AuditLog {
    pub fn new(store: Store, tail: super::audit_watch::AuditTail) -> Self {
        Self { store, tail }
    }

    /// Admin: stored events after `after_id`, then live ones (`audit_watch`).
    pub fn watch(
        &self,
        caller: &Caller,
        after_id: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<AuditEvent>>> {
        super::audit_watch::watch(&self.tail, caller, after_id)
    }

    /// Admin: events newest first, filtered, paginated.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: AuditFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String)> {
        require_admin(caller)?;
        let size = validate::page_size(page_size)?;
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since > until
        {
            return Err(Error::invalid("since", "must not be after until"));
        }
        let before = paging::decode(page_token, |id| {
            id.parse::<i64>()
                .map(|_| ())
                .map_err(|_| Error::invalid("page_token", "malformed"))
        })?
        .and_then(|id| id.parse::<i64>().ok());
        let rows = self.store.list_audit(&filter, before, size + 1).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
        let (rows, next) = paging::page(rows.into_iter().zip(ids).collect(), size, |(_, id)| id);
        Ok((rows.into_iter().map(|(e, _)| e.into()).collect(), next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some("abc-123_x.y")), "abc-123_x.y");
        for bad in [Some(""), Some("has space"), Some("é"), None] {
            let id = request_id(bad);
            assert!(!id.is_empty() && id.is_ascii(), "{id}");
        }
        assert_ne!(request_id(None), request_id(None));
        assert_ne!(request_id(Some(&"x".repeat(65))), "x".repeat(65));
    }

    #[test]
    fn refusals_are_counted_per_address_or_ipv6_64() {
        assert_eq!(source_of(Some("192.0.2.7")), "192.0.2.7");
        assert_eq!(source_of(Some("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(source_of(Some("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(source_of(Some("2001:db8:1:2::9")), "2001:db8:1:2::/64");
        assert_eq!(source_of(Some("not an address")), "");
        assert_eq!(source_of(None), "");
    }
}
