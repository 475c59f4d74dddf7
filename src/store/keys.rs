//! API keys and their secrets. A key has one current secret (`retires_at` NULL) and
//! any number of rotated-out ones still inside their grace period.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
    sea_query::Expr,
};

use super::{
    AuditRecord, Store, StoreError,
    audit::insert_audit,
    changes::{Change, announce},
    entities::{api_key, api_key_secret, issued_secret_digest},
    key_policy::StoredPolicy,
};

/// A secret ready to store: digest and sealed form only.
#[derive(Debug, Clone)]
pub struct NewSecret {
    pub digest: Vec<u8>,
    pub sealed: Vec<u8>,
    /// The data key that sealed it.
    pub data_key_id: Option<i64>,
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub service_name: String,
    pub description: String,
    pub ttl_seconds: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub secret: NewSecret,
    pub policy: StoredPolicy,
}

#[derive(Debug, Clone)]
pub struct KeyWithSecret {
    pub key: api_key::Model,
    pub secret: api_key_secret::Model,
}

/// What RotateKey asks of the store.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub secret: NewSecret,
    /// When the old secret stops verifying; `None`: at once (it is deleted).
    pub old_retires_at: Option<DateTime<Utc>>,
}

/// Why CreateKey conflicted.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateConflict {
    ServiceName,
    Secret,
}

impl Store {
    /// Inserts a key with its first secret. `CreateConflict` says why not: a live key
    /// of that name, or a secret stored before (live, in grace, rotated out or
    /// revoked: see `insert_secret`).
    pub async fn create_key(
        &self,
        new: NewKey,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Result<KeyWithSecret, CreateConflict>, StoreError> {
        let txn = self.db.begin().await?;
        let key = match api_key::Entity::insert(api_key::ActiveModel {
            id: NotSet,
            service_name: Set(new.service_name),
            description: Set(new.description),
            ttl_seconds: Set(new.ttl_seconds),
            created_at: Set(now),
            updated_at: Set(now),
            expires_at: Set(new.expires_at),
            revoked_at: Set(None),
            scopes: Set(new.policy.scopes_json()),
            metadata: Set(new.policy.metadata_json()),
            enabled: Set(new.policy.enabled),
            rate_limit_requests: Set(new.policy.rate_limit.map(|l| l.0)),
            rate_limit_window_seconds: Set(new.policy.rate_limit.map(|l| l.1)),
            remaining: Set(new.policy.remaining),
            last_used_at: Set(None),
        })
        .exec_with_returning(&txn)
        .await
        .map_err(StoreError::from)
        {
            Err(StoreError::Conflict) => return Ok(Err(CreateConflict::ServiceName)),
            other => other?,
        };
        match insert_secret(&txn, key.id, new.secret, now).await {
            Err(StoreError::Conflict) => Ok(Err(CreateConflict::Secret)),
            Err(e) => Err(e),
            Ok(secret) => {
                insert_audit(&txn, audit).await?;
                txn.commit().await?;
                Ok(Ok(KeyWithSecret { key, secret }))
            }
        }
    }

    /// The live key of that name with its current secret.
    pub async fn current_key(
        &self,
        service_name: &str,
    ) -> Result<Option<KeyWithSecret>, StoreError> {
        let found = api_key_secret::Entity::find()
            .find_also_related(api_key::Entity)
            .filter(api_key::Column::ServiceName.eq(service_name))
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key_secret::Column::RetiresAt.is_null())
            .one(&self.db)
            .await?;
        Ok(found.and_then(|(secret, key)| key.map(|key| KeyWithSecret { key, secret })))
    }

    /// Live keys after `after` in service-name order, with their current secrets.
    /// Live keys by service name, after `after`, those starting with `prefix` only.
    /// The prefix is a range of names (`service_name` sorts bytewise, `COLLATE "C"`
    /// on PostgreSQL), so no LIKE pattern is built from what a user typed.
    pub async fn list_keys(
        &self,
        after: Option<&str>,
        prefix: &str,
        limit: u64,
    ) -> Result<Vec<KeyWithSecret>, StoreError> {
        let mut query = api_key_secret::Entity::find()
            .find_also_related(api_key::Entity)
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key_secret::Column::RetiresAt.is_null());
        if let Some(after) = after {
            query = query.filter(api_key::Column::ServiceName.gt(after));
        }
        if !prefix.is_empty() {
            query = query.filter(api_key::Column::ServiceName.gte(prefix));
            if let Some(end) = prefix_end(prefix) {
                query = query.filter(api_key::Column::ServiceName.lt(end));
            }
        }
        let rows = query
            .order_by_asc(api_key::Column::ServiceName)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(secret, key)| key.map(|key| KeyWithSecret { key, secret }))
            .collect())
    }

    /// Replaces the current secret of a live key. `None` when there is no such key.
    /// `renew_expiry` maps the key's `ttl_seconds` to its new `expires_at`.
    pub async fn rotate_key(
        &self,
        service_name: &str,
        rotation: Rotation,
        now: DateTime<Utc>,
        renew_expiry: impl FnOnce(i64) -> Option<DateTime<Utc>>,
        audit: AuditRecord,
    ) -> Result<Option<KeyWithSecret>, StoreError> {
        let txn = self.db.begin().await?;
        // Writing first takes the row lock (PostgreSQL) or the write lock (SQLite) before
        // anything is read, so concurrent rotations of one key run one after another
        // and exactly one secret ends up current.
        let Some(locked) = api_key::Entity::update_many()
            .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
            .filter(api_key::Column::ServiceName.eq(service_name))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec_with_returning(&txn)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let expires_at = renew_expiry(locked.ttl_seconds);
        let key = api_key::Entity::update_many()
            .col_expr(api_key::Column::ExpiresAt, Expr::value(expires_at))
            .filter(api_key::Column::Id.eq(locked.id))
            .exec_with_returning(&txn)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                StoreError::Other("rotated key vanished inside its transaction".into())
            })?;

        // Every secret so far lived under the old expiry; renewing the key must not
        // revive one that expired, nor stretch one past it. Cap them all at it.
        let cap = |t: DateTime<Utc>| locked.expires_at.map_or(t, |expiry| t.min(expiry));
        let retired = api_key_secret::Entity::find()
            .filter(api_key_secret::Column::ApiKeyId.eq(key.id))
            .filter(api_key_secret::Column::RetiresAt.is_not_null())
            .all(&txn)
            .await?;
        let mut spent = Vec::new();
        for secret in retired {
            let Some(retires_at) = secret.retires_at else {
                continue;
            };
            let capped = cap(retires_at);
            if capped <= now {
                // Grace over: of no further use.
                spent.push(secret.id);
            } else if capped != retires_at {
                api_key_secret::Entity::update_many()
                    .col_expr(api_key_secret::Column::RetiresAt, Expr::value(capped))
                    .filter(api_key_secret::Column::Id.eq(secret.id))
                    .exec(&txn)
                    .await?;
            }
        }
        let current = Condition::all()
            .add(api_key_secret::Column::ApiKeyId.eq(key.id))
            .add(api_key_secret::Column::RetiresAt.is_null());
        match rotation.old_retires_at.map(cap).filter(|t| *t > now) {
            Some(retires_at) => {
                api_key_secret::Entity::update_many()
                    .col_expr(api_key_secret::Column::RetiresAt, Expr::value(retires_at))
                    .filter(current)
                    .exec(&txn)
                    .await?;
            }
            // No grace, or the key had already expired: the old secret ends now.
            None => {
                api_key_secret::Entity::delete_many()
                    .filter(current)
                    .exec(&txn)
                    .await?;
            }
        }
        if !spent.is_empty() {
            api_key_secret::Entity::delete_many()
                .filter(api_key_secret::Column::Id.is_in(spent))
                .exec(&txn)
                .await?;
        }
        let secret = insert_secret(&txn, key.id, rotation.secret, now).await?;
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::Key(service_name.to_owned())).await?;
        txn.commit().await?;
        Ok(Some(KeyWithSecret { key, secret }))
    }

    /// Revokes the live key of that name and destroys all its secrets. The key row
    /// stays as a tombstone. `false` when there is no such key.
    pub async fn revoke_key(
        &self,
        service_name: &str,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let revoked = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(Some(now)))
            .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
            .filter(api_key::Column::ServiceName.eq(service_name))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec_with_returning(&txn)
            .await?;
        let ids: Vec<i64> = revoked.iter().map(|k| k.id).collect();
        if ids.is_empty() {
            return Ok(false);
        }
        api_key_secret::Entity::delete_many()
            .filter(api_key_secret::Column::ApiKeyId.is_in(ids))
            .exec(&txn)
            .await?;
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::Key(service_name.to_owned())).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Keys not revoked (expired ones included).
    pub async fn count_live_keys(&self) -> Result<u64, StoreError> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::RevokedAt.is_null())
            .count(&self.db)
            .await?)
    }

    /// The secret with this digest and its key, whatever their state.
    pub async fn find_secret(&self, digest: &[u8]) -> Result<Option<KeyWithSecret>, StoreError> {
        let found = api_key_secret::Entity::find()
            .find_also_related(api_key::Entity)
            .filter(api_key_secret::Column::Digest.eq(digest.to_vec()))
            .one(&self.db)
            .await?;
        Ok(found.and_then(|(secret, key)| key.map(|key| KeyWithSecret { key, secret })))
    }
}

/// Stores a secret, and its digest in the ledger of every secret ever issued, which
/// outlives the secret row: `Conflict` if the secret was ever stored before, whatever
/// became of it, so a burned secret never comes back under another key.
async fn insert_secret(
    txn: &DatabaseTransaction,
    api_key_id: i64,
    secret: NewSecret,
    now: DateTime<Utc>,
) -> Result<api_key_secret::Model, StoreError> {
    issued_secret_digest::Entity::insert(issued_secret_digest::ActiveModel {
        id: NotSet,
        digest: Set(secret.digest.clone()),
        issued_at: Set(now),
    })
    .exec(txn)
    .await?;
    Ok(api_key_secret::Entity::insert(api_key_secret::ActiveModel {
        id: NotSet,
        api_key_id: Set(api_key_id),
        digest: Set(secret.digest),
        sealed: Set(secret.sealed),
        data_key_id: Set(secret.data_key_id),
        key_prefix: Set(secret.key_prefix),
        created_at: Set(now),
        retires_at: Set(None),
    })
    .exec_with_returning(txn)
    .await?)
}

/// The least string greater than every string starting with `prefix`: the prefix with
/// its last byte below 0x7f raised by one (service names are ASCII). `None`: no bound.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[cfg(test)]
mod prefix_tests {
    use super::prefix_end;

    #[test]
    fn the_end_of_a_prefix_range() {
        assert_eq!(prefix_end("bill").as_deref(), Some("bilm"));
        assert_eq!(prefix_end("a-").as_deref(), Some("a."));
        assert_eq!(prefix_end("z\u{7f}").as_deref(), Some("{"));
        assert_eq!(prefix_end(""), None);
    }
}
