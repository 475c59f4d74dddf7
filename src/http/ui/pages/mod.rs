//! The console's pages, one file per area.

pub mod account;
pub mod error_page;
pub mod key;
pub mod key_form;
pub mod keys;
pub mod sign_in;
