use sea_orm::entity::prelude::*;

/// A data key of the keyring, wrapped (AES-256-GCM) by the master key.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "data_keys")]
pub struct Model {
    /// Given by the server: 1, 2, 3... in order of creation; the newest is current.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i64,
    /// The key sealed under the master key, bound to its id.
    pub wrapped: Vec<u8>,
    /// The fingerprint of the master key that wrapped it (not secret).
    pub master_key_id: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
