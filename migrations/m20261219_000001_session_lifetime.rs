//! Years of operation: a login's refresh chain ends `KMS_SESSION_MAX_LIFETIME_SECONDS`
//! after Login (`sessions.max_expires_at`), and the sweeper deletes what has expired.
//!
//! Existing sessions get their login time plus the default lifetime (30 days, the value
//! of the release that added this step; a later change of the default does not change
//! this step). The column stays nullable: a server of the previous release sharing the
//! database during a rolling upgrade inserts sessions without it, and those are read as
//! ending at their login time plus the configured lifetime.
//!
//! The indexes serve the sweeper's batches (`store::sweep`): without them each batch
//! would scan its whole table. `audit_events.at` has had its index from the start.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::timestamp_with_time_zone_null;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The default of `KMS_SESSION_MAX_LIFETIME_SECONDS` when this step was written.
const FILL_LIFETIME_SECONDS: i64 = 2_592_000;

#[derive(DeriveIden)]
enum Sessions {
    Table,
    MaxExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum ApiKeySecrets {
    Table,
    RetiresAt,
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
                    .table(Sessions::Table)
                    .add_column(timestamp_with_time_zone_null(Sessions::MaxExpiresAt))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let fill = match db.get_database_backend() {
            DbBackend::Postgres => format!(
                "UPDATE sessions SET max_expires_at = created_at + interval '{FILL_LIFETIME_SECONDS} seconds' \
                 WHERE max_expires_at IS NULL"
            ),
            // Timestamps are RFC 3339 text here, compared as text: write the same shape
            // (UTC, `T`, `+00:00`) so that comparisons with new rows stay in order.
            _ => format!(
                "UPDATE sessions SET max_expires_at = \
                 strftime('%Y-%m-%dT%H:%M:%f', created_at, '+{FILL_LIFETIME_SECONDS} seconds') || '+00:00' \
                 WHERE max_expires_at IS NULL"
            ),
        };
        db.execute_unprepared(&fill).await?;
        for (name, mut index) in [
            (
                "idx_sessions_max_expires_at",
                Index::create()
                    .table(Sessions::Table)
                    .col(Sessions::MaxExpiresAt)
                    .to_owned(),
            ),
            (
                "idx_sessions_revoked_at",
                Index::create()
                    .table(Sessions::Table)
                    .col(Sessions::RevokedAt)
                    .to_owned(),
            ),
            (
                "idx_refresh_tokens_expires_at",
                Index::create()
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::ExpiresAt)
                    .to_owned(),
            ),
            (
                "idx_api_key_secrets_retires_at",
                Index::create()
                    .table(ApiKeySecrets::Table)
                    .col(ApiKeySecrets::RetiresAt)
                    .to_owned(),
            ),
        ] {
            manager.create_index(index.name(name).to_owned()).await?;
        }
        Ok(())
    }
}
