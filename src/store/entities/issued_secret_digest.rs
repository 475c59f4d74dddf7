use sea_orm::entity::prelude::*;

/// Every API key secret ever stored, by digest; never deleted (see the migration
/// `m20261201_000007_issued_secret_digests`). A secret whose digest is here cannot
/// be stored again.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "issued_secret_digests")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// SHA-256 of the secret.
    #[sea_orm(unique)]
    pub digest: Vec<u8>,
    pub issued_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
