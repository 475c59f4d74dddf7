//! A ledger of every API key secret ever stored, by SHA-256 digest. Revocation and
//! rotation delete secret rows; the digest stays here, so a revoked or rotated-out
//! secret is burned: importing it again, under any name, is refused (a unique
//! violation on this table, race-free), and so it never verifies again.
//!
//! Filled from the secrets stored now. Secrets the previous release already deleted
//! (revoked keys, grace periods over) left no trace and cannot be listed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_pk_auto, binary_len, timestamp_with_time_zone};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IssuedSecretDigests {
    Table,
    Id,
    Digest,
    IssuedAt,
}

#[derive(DeriveIden)]
enum ApiKeySecrets {
    Table,
    Digest,
    CreatedAt,
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
                    .table(IssuedSecretDigests::Table)
                    .col(big_pk_auto(IssuedSecretDigests::Id))
                    .col(binary_len(IssuedSecretDigests::Digest, 32).unique_key())
                    .col(timestamp_with_time_zone(IssuedSecretDigests::IssuedAt))
                    .to_owned(),
            )
            .await?;
        let backfill = Query::insert()
            .into_table(IssuedSecretDigests::Table)
            .columns([IssuedSecretDigests::Digest, IssuedSecretDigests::IssuedAt])
            .select_from(
                Query::select()
                    .columns([ApiKeySecrets::Digest, ApiKeySecrets::CreatedAt])
                    .from(ApiKeySecrets::Table)
                    .to_owned(),
            )
            .map_err(|e| DbErr::Migration(e.to_string()))?
            .to_owned();
        manager.exec_stmt(backfill).await
    }
}
