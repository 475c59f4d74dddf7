//! The sweeper: what has expired, and deleting it in small batches that never hold up
//! calls, so that years of operation do not grow the database without bound.
//!
//! What is gone, and why deleting it changes no answer:
//! - audit events older than `KMS_AUDIT_RETENTION_SECONDS` (0 keeps them all);
//! - refresh tokens that expired one access-token lifetime ago, spent or not: Refresh
//!   refuses an expired token whether or not its row exists, and a spent token kept
//!   for reuse detection is kept until it expires;
//! - sessions whose refresh chain ended (logged out, revoked for reuse, or past
//!   `KMS_SESSION_MAX_LIFETIME_SECONDS`) at least one access-token lifetime ago. Every
//!   call's token check looks its session up, so a session stays as long as any access
//!   token it issued may still be presented: each was issued while the chain was live,
//!   and lives one access-token lifetime. A login abandoned before its maximum
//!   lifetime waits for it (see `store::Sweep::Sessions`);
//! - rotated-out API key secrets past their grace, and any secret of a revoked key:
//!   VerifyKey answers NOT_FOUND for both already. The ledger of issued digests
//!   (`issued_secret_digests`) is never swept: it keeps a burned secret refused
//!   forever, even if someone imports it again.
//!
//! One replica sweeps at a time (see `store::sweep` for the lock); a replica that finds
//! another one sweeping leaves the rest of the pass to it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::store::{Batch, Store, StoreError, Sweep, SweptRows};

/// Rows deleted per transaction: a few milliseconds of a write lock.
pub const BATCH_ROWS: u64 = 500;
/// Between two batches: room for the calls queued behind the last one.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSettings {
    /// How long audit events are kept; `None`: forever (`KMS_AUDIT_RETENTION_SECONDS=0`).
    pub audit_retention: Option<Duration>,
    /// The pause between passes (`KMS_SWEEP_INTERVAL_SECONDS`).
    pub interval: Duration,
    /// How long an access token lives (`KMS_ACCESS_TOKEN_TTL_SECONDS`): how long a
    /// session outlives the end of its refresh chain.
    pub access_token_ttl: Duration,
    /// `KMS_SESSION_MAX_LIFETIME_SECONDS`, for sessions a previous release inserted
    /// without an end (see `store::sessions::chain_end`).
    pub session_max_lifetime: Duration,
    /// `KMS_LOGIN_FAILURE_WINDOW_SECONDS`: a username quiet this long has nothing left
    /// in the shared login throttle.
    pub login_failure_window: Duration,
}

impl SweepSettings {
    pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(7_776_000);
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
}

/// The deletions of one pass at `now`, in order. Pure: the clock is the caller's.
pub fn plan(now: DateTime<Utc>, settings: &SweepSettings) -> Vec<Sweep> {
    let ago = |d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let tokens_gone = ago(settings.access_token_ttl);
    let mut plan = Vec::with_capacity(5);
    if let Some(retention) = settings.audit_retention {
        plan.push(Sweep::AuditEvents {
            before: ago(retention),
        });
    }
    plan.push(Sweep::RetiredSecrets { before: now });
    plan.push(Sweep::RevokedKeySecrets);
    plan.push(Sweep::RefreshTokens {
        expired_by: tokens_gone,
    });
    plan.push(Sweep::Sessions {
        ended_by: tokens_gone,
        unset_created_by: ago(settings
            .access_token_ttl
            .saturating_add(settings.session_max_lifetime)),
    });
    plan.push(Sweep::LoginGuards {
        quiet_before: ago(settings.login_failure_window),
        now,
    });
    plan
}

/// How one pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub deleted: SweptRows,
    /// Another replica was sweeping, and was left the rest of the pass.
    pub yielded: bool,
    /// Shutdown began during the pass.
    pub stopped: bool,
}

#[derive(Clone)]
pub struct Sweeper {
    store: Store,
    settings: SweepSettings,
}

impl Sweeper {
    pub fn new(store: Store, settings: SweepSettings) -> Self {
        Self { store, settings }
    }

    /// One pass at `now`: each deletion of the plan, batch after batch, until a batch
    /// finds fewer rows than it may take, another replica is found sweeping, or
    /// `stop` turns true. Each committed batch's deletions go to `record` at once, so
    /// that a long pass (a backlog after an upgrade) shows its progress.
    pub async fn pass(
        &self,
        now: DateTime<Utc>,
        stop: &mut watch::Receiver<bool>,
        record: &impl Fn(&SweptRows),
    ) -> Result<PassReport, StoreError> {
        let mut report = PassReport {
            deleted: SweptRows::default(),
            yielded: false,
            stopped: false,
        };
        for sweep in plan(now, &self.settings) {
            loop {
                if stopping(stop) {
                    report.stopped = true;
                    return Ok(report);
                }
                match self.store.sweep_batch(sweep, BATCH_ROWS).await? {
                    Batch::Busy => {
                        report.yielded = true;
                        return Ok(report);
                    }
                    Batch::Done { picked, rows } => {
                        record(&rows);
                        report.deleted = report.deleted + rows;
                        if picked < BATCH_ROWS {
                            break;
                        }
                    }
                }
                tokio::select! {
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(BATCH_PAUSE) => {}
                }
            }
        }
        Ok(report)
    }

    /// Sweeps every interval until `stop` turns true, handing each batch's deletions
    /// to `record` (the metrics). A failed pass is logged and tried again at the next
    /// interval.
    pub async fn run(self, mut stop: watch::Receiver<bool>, record: impl Fn(&SweptRows)) {
        tracing::info!(
            interval_s = self.settings.interval.as_secs(),
            audit_retention_s = self.settings.audit_retention.map(|d| d.as_secs()),
            "sweeper started"
        );
        loop {
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(self.settings.interval) => {}
            }
            if stopping(&mut stop) {
                return;
            }
            let started = std::time::Instant::now();
            match self.pass(Utc::now(), &mut stop, &record).await {
                Ok(report) => {
                    log_pass(&report, started.elapsed());
                    if report.stopped {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweep pass failed; trying again at the next interval")
                }
            }
        }
    }
}

/// Shutdown began, or whoever would signal it is gone.
fn stopping(stop: &mut watch::Receiver<bool>) -> bool {
    stop.has_changed().is_err() || *stop.borrow_and_update()
}

fn log_pass(report: &PassReport, elapsed: Duration) {
    let d = &report.deleted;
    macro_rules! pass_event {
        ($level:ident) => {
            tracing::$level!(
                audit_events = d.audit_events,
                refresh_tokens = d.refresh_tokens,
                sessions = d.sessions,
                api_key_secrets = d.api_key_secrets,
                yielded = report.yielded,
                elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "sweep pass"
            )
        };
    }
    if d.total() > 0 {
        pass_event!(info);
    } else {
        pass_event!(debug);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(retention: Option<u64>) -> SweepSettings {
        SweepSettings {
            audit_retention: retention.map(Duration::from_secs),
            interval: Duration::from_secs(300),
            access_token_ttl: Duration::from_secs(3600),
            session_max_lifetime: Duration::from_secs(86_400),
            login_failure_window: Duration::from_secs(300),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_pass_deletes_what_every_rule_says_is_gone() {
        let now = at(1_800_000_000);
        let plan = plan(now, &settings(Some(7_776_000)));
        assert_eq!(
            plan,
            [
                Sweep::AuditEvents {
                    before: at(1_800_000_000 - 7_776_000)
                },
                Sweep::RetiredSecrets { before: now },
                Sweep::RevokedKeySecrets,
                // A session and its tokens outlive the chain by one access-token
                // lifetime: tokens issued at its last moment are checked against it.
                Sweep::RefreshTokens {
                    expired_by: at(1_800_000_000 - 3600)
                },
                Sweep::Sessions {
                    ended_by: at(1_800_000_000 - 3600),
                    unset_created_by: at(1_800_000_000 - 3600 - 86_400),
                },
                // The throttle forgets a name quiet for its failure window.
                Sweep::LoginGuards {
                    quiet_before: at(1_800_000_000 - 300),
                    now,
                },
            ]
        );
    }

    #[test]
    fn retention_zero_keeps_the_audit_trail() {
        let plan = plan(at(1_800_000_000), &settings(None));
        assert!(!plan.iter().any(|s| matches!(s, Sweep::AuditEvents { .. })));
        assert_eq!(plan.len(), 5);
    }

    #[test]
    fn huge_settings_saturate_instead_of_overflowing() {
        let mut s = settings(Some(u64::MAX / 2));
        s.access_token_ttl = Duration::MAX;
        s.session_max_lifetime = Duration::MAX;
        let plan = plan(at(0), &s);
        assert_eq!(
            plan[0],
            Sweep::AuditEvents {
                before: DateTime::<Utc>::MIN_UTC
            }
        );
    }

    #[test]
    fn counts_add_up_per_table() {
        let a = SweptRows {
            audit_events: 3,
            refresh_tokens: 1,
            sessions: 0,
            api_key_secrets: 2,
            login_guards: 1,
        };
        let sum = a + a;
        assert_eq!(sum.total(), 14);
        assert_eq!(
            sum.by_table(),
            [
                ("audit_events", 6),
                ("refresh_tokens", 2),
                ("sessions", 0),
                ("api_key_secrets", 4),
                ("login_guards", 2)
            ]
        );
    }
}
