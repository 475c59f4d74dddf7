//! The keyring: data keys, each wrapped (AES-256-GCM) by the master key, seal the API
//! key secrets and the private signing keys; the master key seals nothing else.
//!
//! `data_keys.id` is given by the server (the next number, under the keyring lock), so
//! that the wrapped key can be bound to its id before the row exists. `master_key_id`
//! is the non-secret fingerprint of the master key that wrapped the row.
//!
//! `data_key_id` on each sealed value says which data key sealed it; NULL means sealed
//! directly under the master key by the previous release. Those rows keep opening with
//! the master key until `RewrapSecrets` moves them under the current data key: no
//! manual step at upgrade.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, binary, string, timestamp_with_time_zone,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DataKeys {
    Table,
    Id,
    Wrapped,
    MasterKeyId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeySecrets {
    Table,
    DataKeyId,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    DataKeyId,
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
                    .table(DataKeys::Table)
                    .col(big_integer(DataKeys::Id).primary_key())
                    .col(binary(DataKeys::Wrapped))
                    .col(string(DataKeys::MasterKeyId))
                    .col(timestamp_with_time_zone(DataKeys::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeySecrets::Table)
                    .add_column(big_integer_null(ApiKeySecrets::DataKeyId))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SigningKeys::Table)
                    .add_column(big_integer_null(SigningKeys::DataKeyId))
                    .to_owned(),
            )
            .await?;
        // RewrapSecrets and the keyring's counts look rows up by data key.
        manager
            .create_index(
                Index::create()
                    .name("api_key_secrets_data_key")
                    .table(ApiKeySecrets::Table)
                    .col(ApiKeySecrets::DataKeyId)
                    .to_owned(),
            )
            .await
    }
}
