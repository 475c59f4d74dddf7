//! The policy columns of API keys: UpdateKey, credits spent by a conditional update
//! (exact on any number of replicas), and last-used times written in batches.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
    sea_query::{CaseStatement, Expr, ExprTrait, SimpleExpr},
};

use super::{
    AuditRecord, Store, StoreError,
    audit::insert_audit,
    changes::{Change, announce},
    entities::{api_key, api_key_secret},
    keys::KeyWithSecret,
};

/// The policy of a key as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredPolicy {
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub enabled: bool,
    /// `(requests, window_seconds)`.
    pub rate_limit: Option<(i64, i64)>,
    pub remaining: Option<i64>,
}

impl StoredPolicy {
    /// Keys of the first release: no scopes or metadata, enabled, no limits.
    pub fn open() -> Self {
        Self {
            enabled: true,
            ..Self::default()
        }
    }

    pub fn scopes_json(&self) -> String {
        serde_json::to_string(&self.scopes).unwrap_or_else(|_| "[]".into())
    }

    pub fn metadata_json(&self) -> String {
        serde_json::to_string(&self.metadata).unwrap_or_else(|_| "{}".into())
    }

    /// Reads a row's policy. A column that does not parse (edited by hand) reads as
    /// empty, and is logged.
    pub fn of(key: &api_key::Model) -> Self {
        fn parse<T: serde::de::DeserializeOwned + Default>(
            name: &str,
            what: &str,
            text: &str,
        ) -> T {
            serde_json::from_str(text).unwrap_or_else(|e| {
                tracing::error!(service_name = %name, error = %e, "stored key {what} do not parse");
                T::default()
            })
        }
        Self {
            scopes: parse(&key.service_name, "scopes", &key.scopes),
            metadata: parse(&key.service_name, "metadata", &key.metadata),
            enabled: key.enabled,
            rate_limit: key.rate_limit_requests.zip(key.rate_limit_window_seconds),
            remaining: key.remaining,
        }
    }
}

/// The columns UpdateKey changes: `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
    pub rate_limit: Option<Option<(i64, i64)>>,
    pub remaining: Option<Option<i64>>,
    /// `(ttl_seconds, expires_at)`.
    pub ttl: Option<(i64, Option<DateTime<Utc>>)>,
}

/// What spending credits came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent; what is left.
    Spent(i64),
    /// Fewer credits than the cost: nothing spent; what is left.
    Short(i64),
    /// The key has no credits (unlimited) or is gone.
    Unlimited,
}

impl Store {
    /// Changes the live key of that name in one transaction with its audit record and
    /// the announcement to other replicas. `None` when there is no such key.
    pub async fn update_key(
        &self,
        service_name: &str,
        update: KeyUpdate,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Option<KeyWithSecret>, StoreError> {
        let txn = self.db.begin().await?;
        let mut query = api_key::Entity::update_many()
            .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
            .filter(api_key::Column::ServiceName.eq(service_name))
            .filter(api_key::Column::RevokedAt.is_null());
        let policy_json = StoredPolicy {
            scopes: update.scopes.clone().unwrap_or_default(),
            metadata: update.metadata.clone().unwrap_or_default(),
            ..StoredPolicy::default()
        };
        let mut sets: Vec<(api_key::Column, SimpleExpr)> = Vec::new();
        let mut set = |column: api_key::Column, value: SimpleExpr| sets.push((column, value));
        if let Some(description) = update.description {
            set(api_key::Column::Description, Expr::value(description));
        }
        if update.scopes.is_some() {
            set(
                api_key::Column::Scopes,
                Expr::value(policy_json.scopes_json()),
            );
        }
        if update.metadata.is_some() {
            set(
                api_key::Column::Metadata,
                Expr::value(policy_json.metadata_json()),
            );
        }
        if let Some(enabled) = update.enabled {
            set(api_key::Column::Enabled, Expr::value(enabled));
        }
        if let Some(limit) = update.rate_limit {
            set(
                api_key::Column::RateLimitRequests,
                Expr::value(limit.map(|l| l.0)),
            );
            set(
                api_key::Column::RateLimitWindowSeconds,
                Expr::value(limit.map(|l| l.1)),
            );
        }
        if let Some(remaining) = update.remaining {
            set(api_key::Column::Remaining, Expr::value(remaining));
        }
        if let Some((ttl_seconds, expires_at)) = update.ttl {
            set(api_key::Column::TtlSeconds, Expr::value(ttl_seconds));
            set(api_key::Column::ExpiresAt, Expr::value(expires_at));
        }
        for (column, value) in sets {
            query = query.col_expr(column, value);
        }
        let Some(key) = query.exec_with_returning(&txn).await?.into_iter().next() else {
            return Ok(None);
        };
        let secret = api_key_secret::Entity::find()
            .filter(api_key_secret::Column::ApiKeyId.eq(key.id))
            .filter(api_key_secret::Column::RetiresAt.is_null())
            .one(&txn)
            .await?
            .ok_or_else(|| StoreError::Other("a live key without a current secret".into()))?;
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::Key(service_name.to_owned())).await?;
        txn.commit().await?;
        Ok(Some(KeyWithSecret { key, secret }))
    }

    /// Spends `cost` credits of a live key if it has that many: one conditional
    /// update, so that concurrent spenders on any number of replicas never spend more
    /// than there was. A cost of 0 spends nothing and reads what is left.
    pub async fn spend_credits(&self, key_id: i64, cost: i64) -> Result<Spend, StoreError> {
        if cost > 0 {
            let spent = api_key::Entity::update_many()
                .col_expr(
                    api_key::Column::Remaining,
                    Expr::col(api_key::Column::Remaining).sub(cost),
                )
                .filter(api_key::Column::Id.eq(key_id))
                .filter(api_key::Column::RevokedAt.is_null())
                .filter(api_key::Column::Remaining.gte(cost))
                .exec_with_returning(&self.db)
                .await?;
            if let Some(row) = spent.into_iter().next() {
                return Ok(row.remaining.map_or(Spend::Unlimited, Spend::Spent));
            }
        }
        let left: Option<Option<i64>> = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::Remaining)
            .filter(api_key::Column::Id.eq(key_id))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(match left.flatten() {
            None => Spend::Unlimited,
            Some(left) if left >= cost => Spend::Spent(left),
            Some(left) => Spend::Short(left),
        })
    }

    /// Records when keys were last used, in one transaction: one UPDATE per
    /// `TOUCH_CHUNK` keys, each key's time picked by a CASE on its id. (One statement
    /// per key made a minute's batch of 10,000 keys in use 10,000 statements, holding
    /// SQLite's one write lock meanwhile.)
    pub async fn touch_keys(&self, used: &[(i64, DateTime<Utc>)]) -> Result<(), StoreError> {
        /// Three bound values a key: well inside SQLite's and PostgreSQL's limits.
        const TOUCH_CHUNK: usize = 500;
        if used.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        for chunk in used.chunks(TOUCH_CHUNK) {
            let mut times: Option<CaseStatement> = None;
            for (id, at) in chunk {
                let when = api_key::Column::Id.eq(*id);
                let at = Expr::value(Some(*at));
                times = Some(match times {
                    None => Expr::case(when, at),
                    Some(times) => times.case(when, at),
                });
            }
            let Some(times) = times else { continue };
            api_key::Entity::update_many()
                .col_expr(
                    api_key::Column::LastUsedAt,
                    times.finally(Expr::col(api_key::Column::LastUsedAt)).into(),
                )
                .filter(api_key::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

/// A request for a share of a key's rate limit (`domain::policy::lease`).
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk {
    pub key_id: i64,
    /// The start of the current bucket and the width of one, in Unix milliseconds.
    pub bucket_start_ms: i64,
    pub bucket_ms: i64,
    /// How many buckets one check spans, and how much they may hold together.
    pub span_buckets: i64,
    pub cap: i64,
    pub want: i64,
}

impl Store {
    /// Takes up to `want` of a key's rate limit for the current bucket: as much as
    /// the last `span_buckets` buckets leave under `cap`. The key row is locked first,
    /// so replicas asking at once are served one after another. 0: none left.
    pub async fn lease_rate(&self, ask: LeaseAsk) -> Result<i64, StoreError> {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let pg = |sql: &str, values: Vec<sea_orm::Value>| {
            Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
        };
        let oldest = ask.bucket_start_ms - (ask.span_buckets - 1) * ask.bucket_ms;
        let txn = self.db.begin().await?;
        txn.execute_raw(pg(
            "SELECT id FROM api_keys WHERE id = $1 FOR UPDATE",
            vec![ask.key_id.into()],
        ))
        .await?;
        let used: i64 = txn
            .query_one_raw(pg(
                "SELECT COALESCE(SUM(count), 0)::BIGINT AS used FROM rate_leases \
                 WHERE key_id = $1 AND bucket_start_ms >= $2",
                vec![ask.key_id.into(), oldest.into()],
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "used"))
            .transpose()?
            .unwrap_or(0);
        let grant = std::cmp::max(std::cmp::min(ask.want, ask.cap - used), 0);
        if grant > 0 {
            txn.execute_raw(pg(
                "INSERT INTO rate_leases (key_id, bucket_start_ms, count) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_id, bucket_start_ms) \
                 DO UPDATE SET count = rate_leases.count + EXCLUDED.count",
                vec![ask.key_id.into(), ask.bucket_start_ms.into(), grant.into()],
            ))
            .await?;
        }
        txn.execute_raw(pg(
            "DELETE FROM rate_leases WHERE key_id = $1 AND bucket_start_ms < $2",
            vec![ask.key_id.into(), oldest.into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(grant)
    }
}
