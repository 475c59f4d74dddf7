//! Users and their roles.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func},
};

use super::{
    AuditRecord, Store, StoreError,
    audit::insert_audit,
    changes::{Change, announce},
    entities::{session, user, user_role},
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
    /// Inserts a user with its roles in one transaction. `Conflict`: the username is
    /// taken, without regard to case.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: String,
        roles: &[String],
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<StoredUser, StoreError> {
        let txn = self.db.begin().await?;
        // The unique index on lower(username) makes this race-free; a database whose
        // migration found existing case collisions has a plain index, and then this
        // check is what keeps new ones out.
        let folded = user::Entity::find()
            .filter(
                Expr::expr(Func::lower(Expr::col(user::Column::Username)))
                    .eq(username.to_ascii_lowercase()),
            )
            .one(&txn)
            .await?;
        if folded.is_some() {
            return Err(StoreError::Conflict);
        }
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
        insert_audit(&txn, audit).await?;
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

/// The outcome of a change that must not leave the KMS without an admin.
#[derive(Debug)]
pub enum AdminGuarded<T> {
    Done(T),
    NotFound,
    /// It would remove the last admin.
    LastAdmin,
}

/// The user with its timestamps, for listings.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub user: StoredUser,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Locks every admin role row (PostgreSQL) or the database (SQLite) before anything is
/// read, so that two concurrent demotions cannot each see the other admin and both
/// proceed.
async fn lock_admins(db: &impl ConnectionTrait) -> Result<(), StoreError> {
    user_role::Entity::update_many()
        .col_expr(user_role::Column::Role, Expr::col(user_role::Column::Role))
        .filter(user_role::Column::Role.eq(ROLE_ADMIN))
        .exec(db)
        .await?;
    Ok(())
}

async fn admins_other_than(db: &impl ConnectionTrait, user_id: i64) -> Result<u64, StoreError> {
    Ok(user_role::Entity::find()
        .filter(user_role::Column::Role.eq(ROLE_ADMIN))
        .filter(user_role::Column::UserId.ne(user_id))
        .count(db)
        .await?)
}

const ROLE_ADMIN: &str = "admin";

impl Store {
    pub async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let found = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(&self.db)
            .await?;
        match found {
            Some(found) => {
                let (created_at, updated_at) = (found.created_at, found.updated_at);
                Ok(Some(UserRecord {
                    user: self.with_roles(found, &self.db).await?,
                    created_at,
                    updated_at,
                }))
            }
            None => Ok(None),
        }
    }

    /// Users after `after` in username order, with their roles (two queries a page).
    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let mut query = user::Entity::find();
        if let Some(after) = after {
            query = query.filter(user::Column::Username.gt(after));
        }
        let users = query
            .order_by_asc(user::Column::Username)
            .limit(limit)
            .all(&self.db)
            .await?;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let mut roles: std::collections::HashMap<i64, Vec<String>> = Default::default();
        if !ids.is_empty() {
            for r in user_role::Entity::find()
                .filter(user_role::Column::UserId.is_in(ids))
                .order_by_asc(user_role::Column::Role)
                .all(&self.db)
                .await?
            {
                roles.entry(r.user_id).or_default().push(r.role);
            }
        }
        Ok(users
            .into_iter()
            .map(|u| UserRecord {
                created_at: u.created_at,
                updated_at: u.updated_at,
                user: StoredUser {
                    roles: roles.remove(&u.id).unwrap_or_default(),
                    id: u.id,
                    username: u.username,
                    password_hash: u.password_hash,
                    token_version: u.token_version,
                },
            })
            .collect())
    }

    /// Replaces a user's roles and bumps their token version, so tokens carrying the
    /// old roles stop working.
    pub async fn set_roles(
        &self,
        username: &str,
        roles: &[String],
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<AdminGuarded<UserRecord>, StoreError> {
        let txn = self.db.begin().await?;
        lock_admins(&txn).await?;
        let Some(found) = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(&txn)
            .await?
        else {
            return Ok(AdminGuarded::NotFound);
        };
        if !roles.iter().any(|r| r == ROLE_ADMIN) && admins_other_than(&txn, found.id).await? == 0 {
            let is_admin = user_role::Entity::find()
                .filter(user_role::Column::UserId.eq(found.id))
                .filter(user_role::Column::Role.eq(ROLE_ADMIN))
                .one(&txn)
                .await?
                .is_some();
            if is_admin {
                return Ok(AdminGuarded::LastAdmin);
            }
        }
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(found.id))
            .exec(&txn)
            .await?;
        if !roles.is_empty() {
            user_role::Entity::insert_many(roles.iter().map(|role| user_role::ActiveModel {
                user_id: Set(found.id),
                role: Set(role.clone()),
            }))
            .exec(&txn)
            .await?;
        }
        let updated = bump_version(&txn, found.id, now).await?;
        let record = UserRecord {
            created_at: updated.created_at,
            updated_at: updated.updated_at,
            user: self.with_roles(updated, &txn).await?,
        };
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(AdminGuarded::Done(record))
    }

    /// Deletes a user; sessions and roles go with it (foreign keys cascade).
    pub async fn delete_user(
        &self,
        username: &str,
        audit: AuditRecord,
    ) -> Result<AdminGuarded<()>, StoreError> {
        let txn = self.db.begin().await?;
        lock_admins(&txn).await?;
        let Some(found) = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(&txn)
            .await?
        else {
            return Ok(AdminGuarded::NotFound);
        };
        let is_admin = user_role::Entity::find()
            .filter(user_role::Column::UserId.eq(found.id))
            .filter(user_role::Column::Role.eq(ROLE_ADMIN))
            .one(&txn)
            .await?
            .is_some();
        if is_admin && admins_other_than(&txn, found.id).await? == 0 {
            return Ok(AdminGuarded::LastAdmin);
        }
        // Explicitly, not only by cascade: SQLite enforces foreign keys only when the
        // connection enabled them, and the order keeps constraints satisfied anyway.
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(found.id))
            .exec(&txn)
            .await?;
        user::Entity::delete_by_id(found.id).exec(&txn).await?;
        insert_audit(&txn, audit).await?;
        announce(&txn, Change::User(found.username)).await?;
        txn.commit().await?;
        Ok(AdminGuarded::Done(()))
    }

    /// A new password: the hash, and a bumped token version (every token issued before
    /// stops working).
    pub async fn change_password(
        &self,
        user_id: i64,
        password_hash: String,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, password_hash.into())
            .filter(user::Column::Id.eq(user_id))
            .exec(&txn)
            .await?;
        bump_version(&txn, user_id, now).await?;
        insert_audit(&txn, audit).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Invalidates every token the user holds: a new token version (access tokens carry
/// the old one) and every open login revoked (refresh tokens die with it).
async fn bump_version(
    db: &impl ConnectionTrait,
    user_id: i64,
    now: DateTime<Utc>,
) -> Result<user::Model, StoreError> {
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(Some(now)))
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    let updated = user::Entity::update_many()
        .col_expr(
            user::Column::TokenVersion,
            Expr::col(user::Column::TokenVersion).add(1),
        )
        .col_expr(user::Column::UpdatedAt, Expr::value(now))
        .filter(user::Column::Id.eq(user_id))
        .exec_with_returning(db)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Other("user vanished inside its transaction".into()))?;
    announce(db, Change::User(updated.username.clone())).await?;
    Ok(updated)
}
