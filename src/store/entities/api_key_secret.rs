use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_key_secrets")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub api_key_id: i64,
    /// SHA-256 of the secret: the VerifyKey lookup index.
    #[sea_orm(unique)]
    pub digest: Vec<u8>,
    /// The secret sealed with AES-256-GCM under the master key, for GetKey.
    pub sealed: Vec<u8>,
    pub key_prefix: String,
    pub created_at: DateTimeUtc,
    /// NULL for the current secret; for a rotated-out one, the end of its grace period.
    pub retires_at: Option<DateTimeUtc>,
    /// The data key that sealed `sealed`; NULL: the master key (the first release).
    pub data_key_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::api_key::Entity",
        from = "Column::ApiKeyId",
        to = "super::api_key::Column::Id",
        on_delete = "Cascade"
    )]
    ApiKey,
}

impl Related<super::api_key::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ApiKey.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
