//! Fixes from the hardening issue (an outside attacker's probe of the first release).

mod auth;
mod ops;
