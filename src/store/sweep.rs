//! The sweeper's deletions, one small batch per transaction (`domain::sweeper` decides
//! what has expired and runs the batches).
//!
//! On PostgreSQL each batch first takes `pg_try_advisory_xact_lock(SWEEP_LOCK)`: when
//! another replica holds it (it is deleting a batch right now) the batch deletes
//! nothing and says so, and this replica leaves the pass to that one. The lock is a
//! transaction lock, released at commit or rollback, so it can neither outlive a
//! batch nor be left behind on a pooled connection by a cancelled pass. Rows are
//! picked with `FOR UPDATE SKIP LOCKED`: a batch never waits for a call's transaction
//! to release a row it is about to delete, and a call waits at most one batch.
//! SQLite serves one server: no lock, and its single writer takes batches in turn with
//! calls (each batch begins IMMEDIATE, see `sweep_batch`).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
    sea_query::{LockBehavior, LockType, Query},
};

use super::{
    Store, StoreError,
    entities::{api_key, api_key_secret, audit_event, login_guard, refresh_token, session},
};

/// Replicas take turns sweeping on this advisory lock ("kmsw" in ASCII). Advisory
/// locks are per database: deployments in separate schemas of one database take turns
/// too, which costs them only a pass now and then.
pub const SWEEP_LOCK: i64 = 0x6b6d_7377;

/// One kind of deletion, with the instants the domain computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Audit events recorded before `before`.
    AuditEvents { before: DateTime<Utc> },
    /// Refresh tokens, spent or not, that expired at or before `expired_by`.
    RefreshTokens { expired_by: DateTime<Utc> },
    /// Sessions whose refresh chain ended at or before `ended_by`: revoked then, or
    /// past their maximum lifetime. A session without `max_expires_at` (inserted by a
    /// previous release) counts as ending at its login time plus the configured
    /// lifetime, so as ended when it logged in at or before `unset_created_by`. Their
    /// refresh tokens go with them. (A login abandoned earlier, whose refresh tokens
    /// all expired, is kept until its maximum lifetime: finding those would mean
    /// looking at every live session in every batch. Its expired tokens go on their
    /// own.)
    Sessions {
        ended_by: DateTime<Utc>,
        unset_created_by: DateTime<Utc>,
    },
    /// Rotated-out secrets whose grace ended before `before`.
    RetiredSecrets { before: DateTime<Utc> },
    /// Secrets of revoked keys (RevokeKey deletes them; this catches any left behind).
    /// The digest ledger (`issued_secret_digests`) is never touched.
    RevokedKeySecrets,
    /// The shared login throttle's rows of usernames quiet since `quiet_before` (their
    /// failures forgotten by the throttle's own rules) with no attempt running at `now`
    /// (reservations lapsed): names tried once, by typo or by a sprayer.
    LoginGuards {
        quiet_before: DateTime<Utc>,
        now: DateTime<Utc>,
    },
}

/// Rows one batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweptRows {
    pub audit_events: u64,
    pub refresh_tokens: u64,
    pub sessions: u64,
    pub api_key_secrets: u64,
    pub login_guards: u64,
}

impl SweptRows {
    pub fn total(&self) -> u64 {
        self.by_table().iter().map(|(_, n)| n).sum()
    }

    /// Each count with its table's name (the metric's `table` label).
    pub fn by_table(&self) -> [(&'static str, u64); 5] {
        [
            ("audit_events", self.audit_events),
            ("refresh_tokens", self.refresh_tokens),
            ("sessions", self.sessions),
            ("api_key_secrets", self.api_key_secrets),
            ("login_guards", self.login_guards),
        ]
    }
}

impl std::ops::Add for SweptRows {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            audit_events: self.audit_events.saturating_add(other.audit_events),
            refresh_tokens: self.refresh_tokens.saturating_add(other.refresh_tokens),
            sessions: self.sessions.saturating_add(other.sessions),
            api_key_secrets: self.api_key_secrets.saturating_add(other.api_key_secrets),
            login_guards: self.login_guards.saturating_add(other.login_guards),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// `picked` rows matched (at most the limit); `rows` were deleted.
    Done { picked: u64, rows: SweptRows },
    /// Another replica is sweeping (PostgreSQL): nothing was done.
    Busy,
}

impl Store {
    /// Deletes at most `limit` rows of one kind (sessions: with their refresh tokens)
    /// in one short transaction.
    pub async fn sweep_batch(&self, sweep: Sweep, limit: u64) -> Result<Batch, StoreError> {
        // SQLite: the write lock from the start (waiting for it like any writer). A
        // deferred transaction that reads first cannot wait for it later: SQLite
        // refuses the upgrade at once (SQLITE_BUSY) when another connection wrote
        // meanwhile.
        let txn = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?;
        if !try_lock(&txn).await? {
            txn.rollback().await?;
            return Ok(Batch::Busy);
        }
        let backend = txn.get_database_backend();
        let mut rows = SweptRows::default();
        let picked = match sweep {
            Sweep::AuditEvents { before } => {
                let ids: Vec<i64> = skip_locked(
                    audit_event::Entity::find()
                        .select_only()
                        .column(audit_event::Column::Id)
                        .filter(audit_event::Column::At.lt(before))
                        .order_by_asc(audit_event::Column::At),
                    backend,
                )
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
                rows.audit_events =
                    delete_ids::<audit_event::Entity, _>(&txn, audit_event::Column::Id, &ids)
                        .await?;
                ids.len()
            }
            Sweep::RefreshTokens { expired_by } => {
                let ids: Vec<i64> = skip_locked(
                    refresh_token::Entity::find()
                        .select_only()
                        .column(refresh_token::Column::Id)
                        .filter(refresh_token::Column::ExpiresAt.lte(expired_by)),
                    backend,
                )
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
                rows.refresh_tokens =
                    delete_ids::<refresh_token::Entity, _>(&txn, refresh_token::Column::Id, &ids)
                        .await?;
                ids.len()
            }
            Sweep::Sessions {
                ended_by,
                unset_created_by,
            } => {
                let ids: Vec<String> = skip_locked(
                    session::Entity::find()
                        .select_only()
                        .column(session::Column::Id)
                        .filter(chain_ended(ended_by, unset_created_by)),
                    backend,
                )
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
                if !ids.is_empty() {
                    // Explicitly, not by the cascade: to count them.
                    rows.refresh_tokens = refresh_token::Entity::delete_many()
                        .filter(refresh_token::Column::SessionId.is_in(ids.clone()))
                        .exec(&txn)
                        .await?
                        .rows_affected;
                    rows.sessions = session::Entity::delete_many()
                        .filter(session::Column::Id.is_in(ids.clone()))
                        .exec(&txn)
                        .await?
                        .rows_affected;
                }
                ids.len()
            }
            Sweep::RetiredSecrets { before } => {
                let ids: Vec<i64> = skip_locked(
                    api_key_secret::Entity::find()
                        .select_only()
                        .column(api_key_secret::Column::Id)
                        .filter(api_key_secret::Column::RetiresAt.is_not_null())
                        .filter(api_key_secret::Column::RetiresAt.lt(before)),
                    backend,
                )
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
                rows.api_key_secrets =
                    delete_ids::<api_key_secret::Entity, _>(&txn, api_key_secret::Column::Id, &ids)
                        .await?;
                ids.len()
            }
            Sweep::RevokedKeySecrets => {
                let revoked = Query::select()
                    .column(api_key::Column::Id)
                    .from(api_key::Entity)
                    .and_where(api_key::Column::RevokedAt.is_not_null())
                    .to_owned();
                let ids: Vec<i64> = skip_locked(
                    api_key_secret::Entity::find()
                        .select_only()
                        .column(api_key_secret::Column::Id)
                        .filter(api_key_secret::Column::ApiKeyId.in_subquery(revoked)),
                    backend,
                )
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
                rows.api_key_secrets =
                    delete_ids::<api_key_secret::Entity, _>(&txn, api_key_secret::Column::Id, &ids)
                        .await?;
                ids.len()
            }
            Sweep::LoginGuards { quiet_before, now } => {
                let quiet = |column: login_guard::Column| {
                    Condition::any()
                        .add(column.is_null())
                        .add(column.lt(quiet_before))
                };
                let names: Vec<String> = skip_locked(
                    login_guard::Entity::find()
                        .select_only()
                        .column(login_guard::Column::Username)
                        .filter(quiet(login_guard::Column::LastFailure))
                        .filter(quiet(login_guard::Column::LockedUntil))
                        .filter(
                            Condition::any()
                                .add(login_guard::Column::Pending.eq(0))
                                .add(login_guard::Column::PendingUntil.lt(now)),
                        ),
                    backend,
                )
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
                if !names.is_empty() {
                    rows.login_guards = login_guard::Entity::delete_many()
                        .filter(login_guard::Column::Username.is_in(names.clone()))
                        .exec(&txn)
                        .await?
                        .rows_affected;
                }
                names.len()
            }
        };
        txn.commit().await?;
        Ok(Batch::Done {
            picked: u64::try_from(picked).unwrap_or(u64::MAX),
            rows,
        })
    }
}

/// The sessions `Sweep::Sessions` deletes (see there). Each condition has an index,
/// so a batch never scans the live sessions.
fn chain_ended(ended_by: DateTime<Utc>, unset_created_by: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(session::Column::RevokedAt.lte(ended_by))
        .add(session::Column::MaxExpiresAt.lte(ended_by))
        .add(
            Condition::all()
                .add(session::Column::MaxExpiresAt.is_null())
                .add(session::Column::CreatedAt.lte(unset_created_by)),
        )
}

fn skip_locked<E: EntityTrait>(
    query: sea_orm::Select<E>,
    backend: DbBackend,
) -> sea_orm::Select<E> {
    if backend == DbBackend::Postgres {
        query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
    } else {
        query
    }
}

async fn delete_ids<E, C>(
    txn: &DatabaseTransaction,
    column: C,
    ids: &[i64],
) -> Result<u64, StoreError>
where
    E: EntityTrait,
    C: ColumnTrait,
{
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(E::delete_many()
        .filter(column.is_in(ids.iter().copied()))
        .exec(txn)
        .await?
        .rows_affected)
}

/// `true` when this transaction may sweep: always on SQLite; on PostgreSQL when no
/// other replica's batch holds the sweep lock.
async fn try_lock(txn: &DatabaseTransaction) -> Result<bool, StoreError> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(true);
    }
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            [SWEEP_LOCK.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<bool>("", "locked")?,
        None => false,
    })
}
