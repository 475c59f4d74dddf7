//! Users and their roles.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::{
    Store, StoreError,
    entities::{user, user_role},
};

/// A user as stored: the PHC hash, never a password.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub token_version: i64,
}

impl Store {
    /// Inserts a user with its roles in one transaction. `Conflict`: username taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        roles: &[String],
        now: DateTime<Utc>,
    ) -> Result<StoredUser, StoreError> {
        let txn = self.db.begin().await?;
        let inserted = user::Entity::insert(user::ActiveModel {
            id: NotSet,
            username: Set(username.to_owned()),
            password_hash: Set(password_hash),
            token_version: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_with_returning(&txn)
        .await?;
        if !roles.is_empty() {
            user_role::Entity::insert_many(roles.iter().map(|role| user_role::ActiveModel {
                user_id: Set(inserted.id),
                role: Set(role.clone()),
            }))
            .exec(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(StoredUser {
            id: inserted.id,
            username: inserted.username,
            password_hash: inserted.password_hash,
            roles: roles.to_vec(),
            token_version: inserted.token_version,
        })
    }

    pub async fn find_user(&self, username: &str) -> Result<Option<StoredUser>, StoreError> {
        let found = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(&self.db)
            .await?;
        match found {
            Some(found) => Ok(Some(self.with_roles(found, &self.db).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn with_roles(
        &self,
        found: user::Model,
        db: &impl ConnectionTrait,
    ) -> Result<StoredUser, StoreError> {
        let roles = user_role::Entity::find()
            .filter(user_role::Column::UserId.eq(found.id))
            .order_by_asc(user_role::Column::Role)
            .all(db)
            .await?
            .into_iter()
            .map(|r| r.role)
            .collect();
        Ok(StoredUser {
            id: found.id,
            username: found.username,
            password_hash: found.password_hash,
            roles,
            token_version: found.token_version,
        })
    }

    pub async fn set_password_hash(
        &self,
        user_id: i64,
        password_hash: String,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, password_hash.into())
            .col_expr(user::Column::UpdatedAt, now.into())
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn any_user_has_role(&self, role: &str) -> Result<bool, StoreError> {
        Ok(user_role::Entity::find()
            .filter(user_role::Column::Role.eq(role))
            .limit(1)
            .one(&self.db)
            .await?
            .is_some())
    }
}
