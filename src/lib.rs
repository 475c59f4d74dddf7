//! KMS: a gRPC key-management server. API keys for services (`kms.v1.Keys`) and users
//! with JWT access tokens (`kms.v1.Auth`), on SQLite or PostgreSQL.
//!
//! Layers, with data flowing one way: `grpc` and `http` (transports) -> `domain` (rules) ->
//! `store` (SeaORM). `crypto` holds the primitives; `server` assembles everything.
//! `cli` is the admin command line, a gRPC client of the server.

pub mod bearer;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod http;
#[path = "../migrations/mod.rs"]
pub mod migrations;
pub mod net;
mod private_file;
pub mod proto;
pub mod server;
pub mod store;
pub mod telemetry;
