//! Token signing keys.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
    sea_query::Expr,
};

use super::{
    AuditRecord, Store, StoreError,
    audit::insert_audit,
    changes::{Change, announce},
    entities::signing_key,
};

pub use signing_key::Model as StoredSigningKey;

/// A key ready to store: its private half already sealed.
#[derive(Debug, Clone)]
pub struct NewSigningKey {
    pub kid: String,
    pub algorithm: String,
    pub private_sealed: Vec<u8>,
    /// The data key that sealed it.
    pub data_key_id: Option<i64>,
    pub public_jwk: String,
}

fn active(new: NewSigningKey, now: DateTime<Utc>) -> signing_key::ActiveModel {
    signing_key::ActiveModel {
        id: NotSet,
        kid: Set(new.kid),
        algorithm: Set(new.algorithm),
        private_sealed: Set(new.private_sealed),
        public_jwk: Set(new.public_jwk),
        created_at: Set(now),
        retired_at: Set(None),
        verify_until: Set(None),
        data_key_id: Set(new.data_key_id),
    }
}

impl Store {
    /// Every key that signs or may still verify a token, oldest first.
    pub async fn signing_keys_in_use(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredSigningKey>, StoreError> {
        Ok(signing_key::Entity::find()
            .order_by_asc(signing_key::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .filter(|k| k.retired_at.is_none() || k.verify_until.is_some_and(|t| t > now))
            .collect())
    }

    /// Stores the first key of an algorithm. `Ok(false)`: another replica stored one
    /// first (the partial unique index allows one current key per algorithm).
    pub async fn insert_first_signing_key(
        &self,
        new: NewSigningKey,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match signing_key::Entity::insert(active(new, now))
            .exec(&self.db)
            .await
            .map_err(StoreError::from)
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Retires the current key of the algorithm (it keeps verifying until
    /// `verify_until`), stores the new one, and forgets keys no token can need.
    pub async fn rotate_signing_key(
        &self,
        new: NewSigningKey,
        now: DateTime<Utc>,
        verify_until: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        // Writing first serialises concurrent rotations (row or database lock).
        signing_key::Entity::update_many()
            .col_expr(signing_key::Column::RetiredAt, Expr::value(Some(now)))
            .col_expr(
                signing_key::Column::VerifyUntil,
                Expr::value(Some(verify_until)),
            )
            .filter(signing_key::Column::Algorithm.eq(new.algorithm.clone()))
            .filter(signing_key::Column::RetiredAt.is_null())
            .exec(&txn)
            .await?;
        let spent: Vec<i64> = signing_key::Entity::find()
            .filter(signing_key::Column::RetiredAt.is_not_null())
            .all(&txn)
            .await?
            .into_iter()
            .filter(|k| k.verify_until.is_some_and(|t| t <= now))
            .map(|k| k.id)
            .collect();
        if !spent.is_empty() {
            signing_key::Entity::delete_many()
                .filter(signing_key::Column::Id.is_in(spent))
                .exec(&txn)
                .await?;
        }
        signing_key::Entity::insert(active(new, now))
            .exec(&txn)
            .await?;
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::SigningKeys).await?;
        txn.commit().await?;
        Ok(())
    }
}
