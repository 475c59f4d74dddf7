//! The console's pages, one file per area.

pub mod account;
pub mod audit;
pub mod audit_live;
pub mod error_page;
pub mod key;
pub mod key_form;
pub mod keyring;
pub mod keys;
pub mod sign_in;
pub mod users;
