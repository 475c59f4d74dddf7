//! Usernames unique without regard to case: `Admin` beside `admin` would be two users
//! that ext_authz forwards upstream as two subjects, one of them easily mistaken for
//! the other. Usernames are ASCII, so `lower()` folds them exactly on both backends.
//!
//! A database of the previous release may already hold such pairs. The migration must
//! not fail on them (the server would not start): it names them in a warning and
//! makes a plain index instead, and the server refuses new case-insensitive
//! duplicates in code either way (`Store::create_user`), race-free where the unique
//! index exists.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, Statement},
};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Made when no two usernames fold to the same: the database enforces the rule.
pub const UNIQUE_INDEX: &str = "uq_users_username_lower";
/// Made instead when some do: lookups stay fast, the rule is enforced in code.
pub const PLAIN_INDEX: &str = "idx_users_username_lower";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let collisions = db
            .query_all_raw(Statement::from_string(
                manager.get_database_backend(),
                "SELECT username FROM users WHERE lower(username) IN \
                 (SELECT lower(username) FROM users GROUP BY lower(username) \
                 HAVING COUNT(*) > 1) ORDER BY lower(username), username",
            ))
            .await?
            .iter()
            .map(|row| row.try_get::<String>("", "username"))
            .collect::<Result<Vec<_>, _>>()?;
        if collisions.is_empty() {
            db.execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {UNIQUE_INDEX} ON users (lower(username))"
            ))
            .await?;
        } else {
            // Names only: nothing secret, and what the operator needs to resolve it.
            tracing::warn!(
                usernames = ?collisions,
                "usernames that differ only in case exist: new ones are refused, but \
                 these stay until an admin deletes all but one of each group; the \
                 database index on lower(username) is not unique until then (see README, \
                 Users)"
            );
            db.execute_unprepared(&format!(
                "CREATE INDEX {PLAIN_INDEX} ON users (lower(username))"
            ))
            .await?;
        }
        Ok(())
    }
}
