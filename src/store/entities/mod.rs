//! SeaORM entities, one per table (see `migrations/` for the schema).

pub mod api_key;
pub mod api_key_secret;
pub mod audit_event;
pub mod data_key;
pub mod issued_secret_digest;
pub mod login_guard;
pub mod refresh_token;
pub mod session;
pub mod signing_key;
pub mod user;
pub mod user_role;
