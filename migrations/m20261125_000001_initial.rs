//! Users with their roles, and API keys with their secrets.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_pk_auto, binary, binary_len, string_len, text, timestamp_with_time_zone,
    timestamp_with_time_zone_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    PasswordHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum UserRoles {
    Table,
    UserId,
    Role,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    ServiceName,
    Description,
    TtlSeconds,
    CreatedAt,
    UpdatedAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum ApiKeySecrets {
    Table,
    Id,
    ApiKeyId,
    Digest,
    Sealed,
    KeyPrefix,
    CreatedAt,
    RetiresAt,
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
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(string_len(Users::Username, 64).unique_key())
                    .col(text(Users::PasswordHash))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UserRoles::Table)
                    .col(big_integer(UserRoles::UserId))
                    .col(string_len(UserRoles::Role, 32))
                    .primary_key(Index::create().col(UserRoles::UserId).col(UserRoles::Role))
                    .foreign_key(
                        ForeignKey::create()
                            .from(UserRoles::Table, UserRoles::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // "Does any admin exist?" at start-up.
        manager
            .create_index(
                Index::create()
                    .name("idx_user_roles_role")
                    .table(UserRoles::Table)
                    .col(UserRoles::Role)
                    .to_owned(),
            )
            .await?;

        // ListKeys orders by service_name: byte order on every backend (SQLite's
        // default), not PostgreSQL's locale collation, so pages come out alike.
        let mut service_name = string_len(ApiKeys::ServiceName, 64);
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            service_name.extra("COLLATE \"C\"");
        }
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(big_pk_auto(ApiKeys::Id))
                    .col(service_name)
                    .col(text(ApiKeys::Description))
                    .col(big_integer(ApiKeys::TtlSeconds))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone(ApiKeys::UpdatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .to_owned(),
            )
            .await?;
        // One live key per name; revoked rows stay as tombstones and free the name.
        // The database enforces it, so concurrent CreateKey calls cannot both win.
        manager
            .create_index(
                Index::create()
                    .name("uq_api_keys_live_service_name")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::ServiceName)
                    .unique()
                    .and_where(Expr::col(ApiKeys::RevokedAt).is_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeySecrets::Table)
                    .col(big_pk_auto(ApiKeySecrets::Id))
                    .col(big_integer(ApiKeySecrets::ApiKeyId))
                    .col(binary_len(ApiKeySecrets::Digest, 32).unique_key())
                    .col(binary(ApiKeySecrets::Sealed))
                    .col(string_len(ApiKeySecrets::KeyPrefix, 16))
                    .col(timestamp_with_time_zone(ApiKeySecrets::CreatedAt))
                    // NULL: the key's current secret. Set: rotated out, verifies until then.
                    .col(timestamp_with_time_zone_null(ApiKeySecrets::RetiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ApiKeySecrets::Table, ApiKeySecrets::ApiKeyId)
                            .to(ApiKeys::Table, ApiKeys::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_key_secrets_api_key_id")
                    .table(ApiKeySecrets::Table)
                    .col(ApiKeySecrets::ApiKeyId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
