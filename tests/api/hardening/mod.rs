//! Fixes found by probing the first release as an outside attacker would.

mod auth;
mod ops;
