use sea_orm::entity::prelude::*;

/// One login: the family of refresh tokens it produced and the access tokens issued
/// with its id (`sid` claim).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: i64,
    pub created_at: DateTimeUtc,
    /// When the login's refresh chain ends (`KMS_SESSION_MAX_LIFETIME_SECONDS` after
    /// Login). NULL only for a session a previous release inserted during a rolling
    /// upgrade: see `store::sessions::chain_end`.
    pub max_expires_at: Option<DateTimeUtc>,
    /// Set by logout or refresh-token reuse: every token of the login is refused.
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::user::Entity",
        from = "Column::UserId",
        to = "super::user::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::user::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
