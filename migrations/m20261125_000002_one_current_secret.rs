//! At most one current secret per key, enforced by the database rather than only by
//! the rotation's row lock.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeySecrets {
    Table,
    ApiKeyId,
    RetiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("uq_api_key_secrets_current")
                    .table(ApiKeySecrets::Table)
                    .col(ApiKeySecrets::ApiKeyId)
                    .unique()
                    .and_where(Expr::col(ApiKeySecrets::RetiresAt).is_null())
                    .to_owned(),
            )
            .await
    }
}
