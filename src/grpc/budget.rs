//! Which budget (`net::budget`) a gRPC call is served from.

use super::auth_layer::{Access, access};
pub use crate::net::budget::{Budgets, Class, Slot};

const UNLIMITED: &[&str] = &["/grpc.health.v1.Health/Check"];

/// The budget of a call to `path`; `streaming` from the method table, `has_token`
/// whether an `authorization` header came along (Register with an admin token is an
/// API call; without one it is public).
pub fn class(path: &str, streaming: bool, has_token: bool) -> Class {
    if UNLIMITED.contains(&path) {
        return Class::Unlimited;
    }
    if streaming {
        return Class::Stream;
    }
    match access(path) {
        Access::Public => Class::Public,
        Access::Optional if !has_token => Class::Public,
        Access::Optional | Access::Required => Class::Api,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_classed_by_token_and_kind() {
        assert_eq!(
            class("/grpc.health.v1.Health/Check", false, false),
            Class::Unlimited
        );
        assert_eq!(
            class("/grpc.health.v1.Health/Watch", true, false),
            Class::Stream
        );
        assert_eq!(
            class(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                true,
                false
            ),
            Class::Stream
        );
        assert_eq!(class("/kms.v1.Auth/Login", false, true), Class::Public);
        assert_eq!(class("/kms.v1.Auth/Register", false, false), Class::Public);
        assert_eq!(class("/kms.v1.Auth/Register", false, true), Class::Api);
        assert_eq!(class("/kms.v1.Keys/VerifyKey", false, true), Class::Api);
        assert_eq!(class("/kms.v1.Keys/VerifyKey", false, false), Class::Api);
        assert_eq!(
            class("/envoy.service.auth.v3.Authorization/Check", false, false),
            Class::Public
        );
    }
}
