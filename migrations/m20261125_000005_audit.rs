//! The audit trail: one row per security event, never a secret.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_pk_auto, string_len, string_len_null, timestamp_with_time_zone,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    At,
    Actor,
    Action,
    Target,
    Outcome,
    ClientAddr,
    RequestId,
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
                    .table(AuditEvents::Table)
                    .col(big_pk_auto(AuditEvents::Id))
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(string_len(AuditEvents::Actor, 64))
                    .col(string_len(AuditEvents::Action, 32))
                    .col(string_len(AuditEvents::Target, 128))
                    .col(string_len(AuditEvents::Outcome, 16))
                    .col(string_len_null(AuditEvents::ClientAddr, 64))
                    .col(string_len(AuditEvents::RequestId, 64))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_audit_events_actor", AuditEvents::Actor),
            ("idx_audit_events_action", AuditEvents::Action),
            ("idx_audit_events_target", AuditEvents::Target),
            ("idx_audit_events_at", AuditEvents::At),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
