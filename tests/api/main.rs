#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Integration tests through the real gRPC surface: each test starts the server
//! in-process on 127.0.0.1:0 with a fresh database and talks to it with the generated
//! clients. Every behaviour test runs on SQLite, and on PostgreSQL (each test in its
//! own schema of KMS_TEST_POSTGRES_URL). The PostgreSQL tests are `#[ignore]`d, so
//! that plain `cargo test` needs no database: `-- --include-ignored` runs them.
//!
//! One test binary on purpose: each file in tests/ links the whole crate again.

mod audit;
mod audit_stream;
mod auth;
mod cli;
mod cli_client;
mod cluster;
mod common;
mod console;
mod edge;
mod ext_authz;
mod faults;
mod hardening;
mod hostile;
mod http_client;
mod image;
mod keyring;
mod keys;
mod ops;
mod policy;
mod process;
mod replicas;
mod rest;
mod retention;
mod sessions;
mod signing;
mod throttle;
mod traces;
mod transports_agree;
mod user_creator;
mod users;
