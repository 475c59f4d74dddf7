//! Bulk loading for benchmarks (`kms-bench seed`): many keys or users in large
//! multi-row INSERTs, one transaction per batch. Nothing here is audited, and nothing
//! calls it at run time: the server never seeds.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    EntityTrait, TransactionTrait,
};

use super::{
    NewKey, Store, StoreError,
    entities::{api_key, api_key_secret, issued_secret_digest, user, user_role},
};

/// Rows per INSERT statement: the key row's 14 bound columns each stay under SQLite's
/// 32,766 bound parameters (28,000) and PostgreSQL's 65,535. (4,000 rows stopped
/// fitting when the key policy's columns came: "too many SQL variables".)
const SEED_BATCH_ROWS: usize = 2_000;

impl Store {
    /// Inserts live keys, each with its current secret, in one transaction: the keys
    /// in multi-row INSERTs of at most `SEED_BATCH_ROWS`, then their secrets. Service
    /// names must be free and secrets new (a clash fails the whole call). Returns the
    /// number of keys inserted.
    pub async fn seed_keys(
        &self,
        keys: Vec<NewKey>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        let mut inserted = 0u64;
        let mut rest = keys;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(SEED_BATCH_ROWS));
            let batch = std::mem::replace(&mut rest, tail);
            let rows = api_key::Entity::insert_many(batch.iter().map(|k| api_key::ActiveModel {
                id: NotSet,
                service_name: Set(k.service_name.clone()),
                description: Set(k.description.clone()),
                ttl_seconds: Set(k.ttl_seconds),
                created_at: Set(now),
                updated_at: Set(now),
                expires_at: Set(k.expires_at),
                revoked_at: Set(None),
                scopes: Set(k.policy.scopes_json()),
                metadata: Set(k.policy.metadata_json()),
                enabled: Set(k.policy.enabled),
                rate_limit_requests: Set(k.policy.rate_limit.map(|l| l.0)),
                rate_limit_window_seconds: Set(k.policy.rate_limit.map(|l| l.1)),
                remaining: Set(k.policy.remaining),
                last_used_at: Set(None),
            }))
            .exec_with_returning(&txn)
            .await?;
            // RETURNING promises no order: match the ids by service name.
            let ids: std::collections::HashMap<String, i64> =
                rows.into_iter().map(|r| (r.service_name, r.id)).collect();
            // Into the ledger of issued secrets too, as every stored secret goes
            // (`insert_secret`): a seeded secret, once revoked, is burned as well.
            issued_secret_digest::Entity::insert_many(batch.iter().map(|k| {
                issued_secret_digest::ActiveModel {
                    id: NotSet,
                    digest: Set(k.secret.digest.clone()),
                    issued_at: Set(now),
                }
            }))
            .exec_without_returning(&txn)
            .await?;
            let mut secrets = Vec::with_capacity(batch.len());
            for k in batch {
                let id = *ids.get(&k.service_name).ok_or_else(|| {
                    StoreError::Other("a seeded key is missing from RETURNING".into())
                })?;
                secrets.push(api_key_secret::ActiveModel {
                    id: NotSet,
                    api_key_id: Set(id),
                    digest: Set(k.secret.digest),
                    sealed: Set(k.secret.sealed),
                    data_key_id: Set(k.secret.data_key_id),
                    key_prefix: Set(k.secret.key_prefix),
                    created_at: Set(now),
                    retires_at: Set(None),
                });
            }
            inserted += api_key_secret::Entity::insert_many(secrets)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(inserted)
    }

    /// Inserts users that all share one PHC `password_hash`, each with `role`, in one
    /// transaction. Usernames must be free. Returns the number of users inserted.
    pub async fn seed_users(
        &self,
        usernames: Vec<String>,
        password_hash: &str,
        role: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        let mut inserted = 0u64;
        for batch in usernames.chunks(SEED_BATCH_ROWS) {
            let rows = user::Entity::insert_many(batch.iter().map(|name| user::ActiveModel {
                id: NotSet,
                username: Set(name.clone()),
                password_hash: Set(password_hash.to_owned()),
                token_version: Set(0),
                created_at: Set(now),
                updated_at: Set(now),
            }))
            .exec_with_returning(&txn)
            .await?;
            inserted +=
                user_role::Entity::insert_many(rows.iter().map(|u| user_role::ActiveModel {
                    user_id: Set(u.id),
                    role: Set(role.to_owned()),
                }))
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(inserted)
    }
}
