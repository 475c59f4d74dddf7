//! The keyring's rows: data keys wrapped by the master key, and the sealed values
//! (API key secrets, private signing keys) with the data key that sealed each one.
//! Every change to the keyring is announced, so that other replicas load it at once.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::Expr,
};

use super::{
    AuditRecord, Store, StoreError,
    audit::insert_audit,
    changes::{Change, announce},
    entities::{api_key, api_key_secret, data_key, signing_key},
};

pub use data_key::Model as StoredDataKey;

/// Serialises keyring changes between replicas (an advisory lock taken inside the
/// transaction; "kmsk" in ASCII). SQLite has one writer at a time anyway.
const KEYRING_LOCK: i64 = 0x6b6d_736b;

/// A data key ready to store, wrapped for its id.
#[derive(Debug, Clone)]
pub struct NewDataKey {
    pub id: i64,
    pub wrapped: Vec<u8>,
    pub master_key_id: String,
}

/// What storing a data key came to.
#[derive(Debug, PartialEq, Eq)]
pub enum DataKeyInsert {
    Inserted,
    /// Asked to store only a first key, and there is one (another replica's).
    NotEmpty,
    /// The keyring is wrapped by another master key (this one's id in it).
    OtherMaster(String),
    /// Another replica took this id a moment earlier: wrap for the next and retry.
    IdTaken,
}

/// The two kinds of sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    /// Associated data: the service name.
    ApiKeySecret,
    /// Associated data: made from the `kid`.
    SigningKey,
}

/// Which sealed values a query wants.
#[derive(Debug, Clone, Copy)]
pub enum SealedBy {
    /// Sealed directly under the master key (the previous release).
    MasterKey,
    /// Anything but this data key (including the previous release's).
    NotDataKey(i64),
}

/// A stored sealed value with what its associated data is made from.
#[derive(Debug, Clone)]
pub struct SealedValue {
    pub kind: SealedKind,
    pub row_id: i64,
    pub owner: String,
    pub sealed: Vec<u8>,
}

/// A value sealed anew: stored only if the row still holds `old`.
#[derive(Debug, Clone)]
pub struct Resealed {
    pub kind: SealedKind,
    pub row_id: i64,
    pub old: Vec<u8>,
    pub sealed: Vec<u8>,
    pub data_key_id: i64,
}

/// Why a master key rewrap was not stored.
#[derive(Debug, PartialEq, Eq)]
pub enum MasterRewrap {
    Done,
    /// The keyring is wrapped by another master key than the old one given.
    OtherMaster(String),
    /// The keyring or the previous release's values changed meanwhile: run again.
    Changed,
}

async fn lock(txn: &DatabaseTransaction) -> Result<(), StoreError> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [KEYRING_LOCK.into()],
        ))
        .await?;
    }
    Ok(())
}

fn filter_api(by: SealedBy) -> Condition {
    let col = api_key_secret::Column::DataKeyId;
    match by {
        SealedBy::MasterKey => Condition::all().add(col.is_null()),
        SealedBy::NotDataKey(id) => Condition::any().add(col.is_null()).add(col.ne(id)),
    }
}

fn filter_signing(by: SealedBy) -> Condition {
    let col = signing_key::Column::DataKeyId;
    match by {
        SealedBy::MasterKey => Condition::all().add(col.is_null()),
        SealedBy::NotDataKey(id) => Condition::any().add(col.is_null()).add(col.ne(id)),
    }
}

impl Store {
    /// Every data key, oldest first.
    pub async fn data_keys(&self) -> Result<Vec<StoredDataKey>, StoreError> {
        Ok(data_key::Entity::find()
            .order_by_asc(data_key::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Stores a data key, which becomes the current one, after checking in the same
    /// transaction that the keyring is wrapped by the same master key.
    pub async fn insert_data_key(
        &self,
        new: NewDataKey,
        only_if_empty: bool,
        now: DateTime<Utc>,
        audit: Option<AuditRecord>,
    ) -> Result<DataKeyInsert, StoreError> {
        let txn = self.db.begin().await?;
        lock(&txn).await?;
        let existing = data_key::Entity::find().all(&txn).await?;
        if only_if_empty && !existing.is_empty() {
            return Ok(DataKeyInsert::NotEmpty);
        }
        if let Some(other) = existing
            .iter()
            .find(|k| k.master_key_id != new.master_key_id)
        {
            return Ok(DataKeyInsert::OtherMaster(other.master_key_id.clone()));
        }
        if existing.iter().any(|k| k.id >= new.id) {
            return Ok(DataKeyInsert::IdTaken);
        }
        let row = data_key::ActiveModel {
            id: Set(new.id),
            wrapped: Set(new.wrapped),
            master_key_id: Set(new.master_key_id),
            created_at: Set(now),
        };
        match data_key::Entity::insert(row)
            .exec(&txn)
            .await
            .map_err(StoreError::from)
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Ok(DataKeyInsert::IdTaken),
            Err(e) => return Err(e),
        }
        if let Some(record) = audit {
            insert_audit(&txn, record).await?;
        }
        announce(&txn, Change::Keyring).await?;
        txn.commit().await?;
        Ok(DataKeyInsert::Inserted)
    }

    /// How many values each data key sealed; `None`: directly under the master key.
    pub async fn sealed_counts(&self) -> Result<Vec<(Option<i64>, i64)>, StoreError> {
        let mut counts: Vec<(Option<i64>, i64)> = api_key_secret::Entity::find()
            .select_only()
            .column(api_key_secret::Column::DataKeyId)
            .column_as(api_key_secret::Column::Id.count(), "n")
            .group_by(api_key_secret::Column::DataKeyId)
            .into_tuple()
            .all(&self.db)
            .await?;
        let signing: Vec<(Option<i64>, i64)> = signing_key::Entity::find()
            .select_only()
            .column(signing_key::Column::DataKeyId)
            .column_as(signing_key::Column::Id.count(), "n")
            .group_by(signing_key::Column::DataKeyId)
            .into_tuple()
            .all(&self.db)
            .await?;
        for (id, n) in signing {
            match counts.iter_mut().find(|(k, _)| *k == id) {
                Some((_, total)) => *total += n,
                None => counts.push((id, n)),
            }
        }
        Ok(counts)
    }

    /// How many values `by` matches.
    pub async fn count_sealed(&self, by: SealedBy) -> Result<i64, StoreError> {
        let secrets = api_key_secret::Entity::find()
            .filter(filter_api(by))
            .count(&self.db)
            .await?;
        let signing = signing_key::Entity::find()
            .filter(filter_signing(by))
            .count(&self.db)
            .await?;
        Ok(i64::try_from(secrets + signing).unwrap_or(i64::MAX))
    }

    /// Up to `limit` values of one kind that `by` matches, with row ids above `after`,
    /// in id order (so that a caller walks each table once).
    pub async fn sealed_values(
        &self,
        kind: SealedKind,
        by: SealedBy,
        after: i64,
        limit: u64,
    ) -> Result<Vec<SealedValue>, StoreError> {
        Ok(match kind {
            SealedKind::ApiKeySecret => api_key_secret::Entity::find()
                .find_also_related(api_key::Entity)
                .filter(filter_api(by))
                .filter(api_key_secret::Column::Id.gt(after))
                .order_by_asc(api_key_secret::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await?
                .into_iter()
                .filter_map(|(secret, key)| {
                    key.map(|key| SealedValue {
                        kind,
                        row_id: secret.id,
                        owner: key.service_name,
                        sealed: secret.sealed,
                    })
                })
                .collect(),
            SealedKind::SigningKey => signing_key::Entity::find()
                .filter(filter_signing(by))
                .filter(signing_key::Column::Id.gt(after))
                .order_by_asc(signing_key::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await?
                .into_iter()
                .map(|key| SealedValue {
                    kind,
                    row_id: key.id,
                    owner: key.kid,
                    sealed: key.private_sealed,
                })
                .collect(),
        })
    }

    /// Stores re-sealed values in one short transaction; a row that changed or went
    /// meanwhile is left alone. Returns how many were stored.
    pub async fn reseal(&self, values: Vec<Resealed>) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        let stored = reseal_in(&txn, values).await?;
        txn.commit().await?;
        Ok(stored)
    }

    /// Wraps every data key anew under another master key and moves the values the
    /// previous release sealed directly under the old one, all in one transaction:
    /// afterwards the old master key opens nothing. `rewrapped` must hold every data
    /// key, each wrapped for the same id; `legacy` every value sealed by the old master
    /// key, re-sealed under a data key.
    pub async fn rewrap_master(
        &self,
        old_master_key_id: &str,
        rewrapped: Vec<NewDataKey>,
        legacy: Vec<Resealed>,
        audit: AuditRecord,
    ) -> Result<MasterRewrap, StoreError> {
        let txn = self.db.begin().await?;
        lock(&txn).await?;
        let existing = data_key::Entity::find().all(&txn).await?;
        if let Some(other) = existing
            .iter()
            .find(|k| k.master_key_id != old_master_key_id)
        {
            return Ok(MasterRewrap::OtherMaster(other.master_key_id.clone()));
        }
        let mut ids: Vec<i64> = existing.iter().map(|k| k.id).collect();
        let mut given: Vec<i64> = rewrapped.iter().map(|k| k.id).collect();
        ids.sort_unstable();
        given.sort_unstable();
        if ids != given {
            return Ok(MasterRewrap::Changed);
        }
        for key in rewrapped {
            data_key::Entity::update_many()
                .col_expr(data_key::Column::Wrapped, Expr::value(key.wrapped))
                .col_expr(
                    data_key::Column::MasterKeyId,
                    Expr::value(key.master_key_id),
                )
                .filter(data_key::Column::Id.eq(key.id))
                .exec(&txn)
                .await?;
        }
        reseal_in(&txn, legacy).await?;
        let left = api_key_secret::Entity::find()
            .filter(filter_api(SealedBy::MasterKey))
            .count(&txn)
            .await?
            + signing_key::Entity::find()
                .filter(filter_signing(SealedBy::MasterKey))
                .count(&txn)
                .await?;
        if left > 0 {
            return Ok(MasterRewrap::Changed);
        }
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::Keyring).await?;
        txn.commit().await?;
        Ok(MasterRewrap::Done)
    }
}

async fn reseal_in(txn: &DatabaseTransaction, values: Vec<Resealed>) -> Result<u64, StoreError> {
    let mut stored = 0;
    for value in values {
        let result = match value.kind {
            SealedKind::ApiKeySecret => {
                api_key_secret::Entity::update_many()
                    .col_expr(api_key_secret::Column::Sealed, Expr::value(value.sealed))
                    .col_expr(
                        api_key_secret::Column::DataKeyId,
                        Expr::value(Some(value.data_key_id)),
                    )
                    .filter(api_key_secret::Column::Id.eq(value.row_id))
                    .filter(api_key_secret::Column::Sealed.eq(value.old))
                    .exec(txn)
                    .await?
            }
            SealedKind::SigningKey => {
                signing_key::Entity::update_many()
                    .col_expr(
                        signing_key::Column::PrivateSealed,
                        Expr::value(value.sealed),
                    )
                    .col_expr(
                        signing_key::Column::DataKeyId,
                        Expr::value(Some(value.data_key_id)),
                    )
                    .filter(signing_key::Column::Id.eq(value.row_id))
                    .filter(signing_key::Column::PrivateSealed.eq(value.old))
                    .exec(txn)
                    .await?
            }
        };
        stored += result.rows_affected;
    }
    Ok(stored)
}
