//! `audit_events.count`: how many identical events a row stands for. Refusals that
//! anyone can cause at will are coalesced (one row per burst, with the count), so that
//! a flood cannot grow the table without bound. Every earlier row stands for one.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::big_integer;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Count,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuditEvents::Table)
                    .add_column(big_integer(AuditEvents::Count).default(1))
                    .to_owned(),
            )
            .await
    }
}
