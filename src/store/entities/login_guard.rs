use sea_orm::entity::prelude::*;

/// The shared login throttle's counters of one username (PostgreSQL replicas).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "login_guards")]
pub struct Model {
    /// The username, folded to lower case.
    #[sea_orm(primary_key, auto_increment = false)]
    pub username: String,
    pub failures: i32,
    pub last_failure: Option<DateTimeUtc>,
    pub locked_until: Option<DateTimeUtc>,
    /// Attempts admitted on any replica and not yet settled.
    pub pending: i32,
    /// When the pending reservations lapse (a replica that died holding them).
    pub pending_until: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
