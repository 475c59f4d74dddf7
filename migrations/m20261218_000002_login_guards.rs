//! `login_guards`: the login throttle's per-username counters shared by the replicas
//! of one PostgreSQL database (a SQLite database serves one server, whose in-memory
//! counters are exact). A row exists only while a username has failures to remember
//! or attempts running; `pending` counts attempts admitted and not yet settled, each
//! reservation expiring at `pending_until` should its replica die.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{integer, string, timestamp_with_time_zone_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LoginGuards {
    Table,
    Username,
    Failures,
    LastFailure,
    LockedUntil,
    Pending,
    PendingUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LoginGuards::Table)
                    .col(string(LoginGuards::Username).primary_key())
                    .col(integer(LoginGuards::Failures).default(0))
                    .col(timestamp_with_time_zone_null(LoginGuards::LastFailure))
                    .col(timestamp_with_time_zone_null(LoginGuards::LockedUntil))
                    .col(integer(LoginGuards::Pending).default(0))
                    .col(timestamp_with_time_zone_null(LoginGuards::PendingUntil))
                    .to_owned(),
            )
            .await
    }
}
