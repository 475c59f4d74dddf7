use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique among rows with `revoked_at` NULL (a partial unique index).
    pub service_name: String,
    pub description: String,
    /// 0: never expires. Kept so that rotation can renew `expires_at`.
    pub ttl_seconds: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// JSON array of strings, sorted and unique.
    pub scopes: String,
    /// JSON object of strings.
    pub metadata: String,
    pub enabled: bool,
    /// Both set or both NULL (no limit).
    pub rate_limit_requests: Option<i64>,
    pub rate_limit_window_seconds: Option<i64>,
    /// Credits left; NULL: unlimited.
    pub remaining: Option<i64>,
    /// Written in coarse batches, not per verification.
    pub last_used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::api_key_secret::Entity")]
    Secrets,
}

impl Related<super::api_key_secret::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Secrets.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
