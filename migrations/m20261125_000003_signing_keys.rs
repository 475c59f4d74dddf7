//! Token signing keys, shared by every replica: private halves sealed under the master
//! key, public halves as JWKs for `/.well-known/jwks.json`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_pk_auto, binary, string_len, text, timestamp_with_time_zone, timestamp_with_time_zone_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Id,
    Kid,
    Algorithm,
    PrivateSealed,
    PublicJwk,
    CreatedAt,
    RetiredAt,
    VerifyUntil,
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
                    .table(SigningKeys::Table)
                    .col(big_pk_auto(SigningKeys::Id))
                    .col(string_len(SigningKeys::Kid, 64).unique_key())
                    .col(string_len(SigningKeys::Algorithm, 16))
                    .col(binary(SigningKeys::PrivateSealed))
                    .col(text(SigningKeys::PublicJwk))
                    .col(timestamp_with_time_zone(SigningKeys::CreatedAt))
                    // NULL: the key that signs new tokens.
                    .col(timestamp_with_time_zone_null(SigningKeys::RetiredAt))
                    // After rotation: until when tokens it signed may still be valid.
                    .col(timestamp_with_time_zone_null(SigningKeys::VerifyUntil))
                    .to_owned(),
            )
            .await?;
        // One signing key per algorithm at a time, even when replicas start together.
        manager
            .create_index(
                Index::create()
                    .name("uq_signing_keys_current")
                    .table(SigningKeys::Table)
                    .col(SigningKeys::Algorithm)
                    .unique()
                    .and_where(Expr::col(SigningKeys::RetiredAt).is_null())
                    .to_owned(),
            )
            .await
    }
}
