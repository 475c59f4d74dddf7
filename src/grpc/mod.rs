//! The gRPC transport: thin handlers that read the caller, call the domain and map the
//! result, plus the layer that authenticates bearer tokens and the Envoy ext_authz
//! service that authenticates HTTP requests for sidecars.

mod audit_service;
pub mod auth_layer;
mod auth_service;
pub mod budget;
pub mod codec;
mod convert;
mod dispatch;
mod ext_authz;
mod ext_authz_request;
mod ext_authz_route;
mod keyring_service;
mod keys_service;
pub mod observe;
mod status;

pub use status::code_name;
mod users_service;

pub use audit_service::AuditApi;
pub use auth_layer::AuthLayer;
pub use auth_service::AuthApi;
pub use dispatch::Dispatch;
pub use ext_authz::{ExtAuthz, ExtAuthzServer};
pub use keyring_service::KeyringApi;
pub use keys_service::KeysApi;
pub use observe::ObserveLayer;
pub use users_service::UsersApi;

/// The client's address, as the listener decided it (`crate::net::client_addr`): the
/// TCP peer, or whom a trusted proxy forwarded the call for.
fn client_ip<T>(request: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<crate::net::ClientAddr>()
        .map(|client| client.0)
}
