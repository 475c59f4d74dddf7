//! The gRPC transport: thin handlers that read the caller, call the domain and map the
//! result, plus the layer that authenticates bearer tokens.

pub mod auth_layer;
mod auth_service;
mod convert;
mod keys_service;
mod status;

pub use auth_layer::AuthLayer;
pub use auth_service::AuthApi;
pub use keys_service::KeysApi;
