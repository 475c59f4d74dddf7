//! Schema migrations (sea-orm-migration). Kept apart from the entities in `src/store`
//! because the two preludes clash. Each step is append-only: never edit a released one.

use sea_orm_migration::prelude::*;

mod m20261125_000001_initial;
mod m20261125_000002_one_current_secret;
mod m20261125_000003_signing_keys;
mod m20261125_000004_sessions;
mod m20261125_000005_audit;
pub mod m20261201_000006_usernames_fold_case;
mod m20261201_000007_issued_secret_digests;
mod m20261216_000001_audit_event_count;
mod m20261217_000001_key_policy;
mod m20261218_000001_keyring;
mod m20261218_000002_login_guards;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial::Migration),
            Box::new(m20261125_000002_one_current_secret::Migration),
            Box::new(m20261125_000003_signing_keys::Migration),
            Box::new(m20261125_000004_sessions::Migration),
            Box::new(m20261125_000005_audit::Migration),
            Box::new(m20261201_000006_usernames_fold_case::Migration),
            Box::new(m20261201_000007_issued_secret_digests::Migration),
            Box::new(m20261216_000001_audit_event_count::Migration),
            Box::new(m20261217_000001_key_policy::Migration),
            Box::new(m20261218_000001_keyring::Migration),
            Box::new(m20261218_000002_login_guards::Migration),
        ]
    }
}
