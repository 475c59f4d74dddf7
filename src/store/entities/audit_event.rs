use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: DateTimeUtc,
    /// The subject of the caller's token, the username logging in, or "anonymous".
    pub actor: String,
    pub action: String,
    /// What the event is about: a service name, a username, a kid, a key prefix.
    pub target: String,
    pub outcome: String,
    pub client_addr: Option<String>,
    pub request_id: String,
    /// How many identical events the row stands for: 1, or more for a coalesced burst
    /// of refusals (see `store::audit_coalesce`).
    pub count: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
