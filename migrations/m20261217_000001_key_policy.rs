//! Keys that carry policy: scopes and metadata (JSON text), an enabled flag, a rate
//! limit, credits and the time of the last valid verification. Keys of the first
//! release get no scopes, no metadata, enabled, no limit, unlimited credits, never used.
//!
//! `rate_leases`: the share of each key's rate limit that replicas sharing a database
//! have taken, per tenth of its window (see `domain::policy::lease`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, boolean, text, timestamp_with_time_zone_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Scopes,
    Metadata,
    Enabled,
    RateLimitRequests,
    RateLimitWindowSeconds,
    Remaining,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum RateLeases {
    Table,
    KeyId,
    BucketStartMs,
    Count,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        let columns = [
            text(ApiKeys::Scopes).default("[]").to_owned(),
            text(ApiKeys::Metadata).default("{}").to_owned(),
            boolean(ApiKeys::Enabled).default(true).to_owned(),
            big_integer_null(ApiKeys::RateLimitRequests),
            big_integer_null(ApiKeys::RateLimitWindowSeconds),
            big_integer_null(ApiKeys::Remaining),
            timestamp_with_time_zone_null(ApiKeys::LastUsedAt),
        ];
        for column in columns {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(RateLeases::Table)
                    .col(big_integer(RateLeases::KeyId))
                    .col(big_integer(RateLeases::BucketStartMs))
                    .col(big_integer(RateLeases::Count))
                    .primary_key(
                        Index::create()
                            .col(RateLeases::KeyId)
                            .col(RateLeases::BucketStartMs),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
