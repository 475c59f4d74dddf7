//! A tower layer in front of every service: it checks `authorization: Bearer <jwt>`
//! and puts the `Caller` into the request extensions. Which methods need a token is
//! decided here, in one list; a method not listed needs one (fail closed).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::domain::{
    Caller,
    sessions::{AuthFailure, Authenticator},
};

/// How a method treats the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed; a token sent along is ignored (so a client holding a stale
    /// token can still log in).
    Public,
    /// A token is optional, but one that is sent must be valid (Register: an admin
    /// token grants roles; an expired one must not silently downgrade the call).
    Optional,
    /// A valid token is required.
    Required,
}

/// Methods that do not require a token. Everything else does.
const NO_TOKEN_REQUIRED: &[(&str, Access)] = &[
    ("/kms.v1.Auth/Login", Access::Public),
    ("/kms.v1.Auth/ValidateToken", Access::Public),
    // The refresh token is the credential: no access token needed (it may have expired).
    ("/kms.v1.Auth/Refresh", Access::Public),
    ("/kms.v1.Auth/Register", Access::Optional),
    // Public keys: publishing them is their purpose.
    ("/kms.v1.Auth/GetJwks", Access::Public),
    ("/grpc.health.v1.Health/Check", Access::Public),
    ("/grpc.health.v1.Health/Watch", Access::Public),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Public,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Access::Public,
    ),
    // Envoy's ext_authz filter: the sidecar asks us to authenticate the requests it
    // carries, not itself, so the call holds no KMS token of its own. Unlike VerifyKey,
    // anyone who reaches this method can test API keys without a token: protect the
    // port with mTLS (KMS_TLS_CLIENT_CA) or a network policy that admits only the
    // sidecars.
    ("/envoy.service.auth.v3.Authorization/Check", Access::Public),
];

pub fn access(path: &str) -> Access {
    NO_TOKEN_REQUIRED
        .iter()
        .find(|(method, _)| *method == path)
        .map_or(Access::Required, |(_, access)| *access)
}

/// Shared with ext_authz, which reads the same header from Envoy's CheckRequest.
pub(super) use crate::bearer::bearer_token;

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthMiddleware<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, B> Service<Request<B>> for AuthMiddleware<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call; leave a clone behind
        // (tower's guidance, as in tonic's examples/src/tower/server.rs).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = access(req.uri().path());
        // Public methods ignore any token sent along (a stale one must not stop a login).
        let token = match access {
            Access::Public => Ok(None),
            _ => crate::bearer::from_headers(req.headers()).map(|t| t.map(str::to_owned)),
        };
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let token = match token {
                Ok(token) => token,
                Err(problem) => return Ok(Status::unauthenticated(problem).into_http()),
            };
            match (token, access) {
                (Some(token), _) => match authenticator.authenticate(&token).await {
                    Ok(claims) => {
                        let caller = claims.caller();
                        // The observe layer's span for this call shows who made it.
                        tracing::Span::current().record("subject", caller.subject.as_str());
                        req.extensions_mut().insert(caller);
                    }
                    Err(AuthFailure::Invalid) => {
                        return Ok(
                            Status::unauthenticated("invalid or expired access token").into_http()
                        );
                    }
                    Err(AuthFailure::Unavailable) => {
                        return Ok(Status::unavailable(
                            "cannot check the access token now, try again later",
                        )
                        .into_http());
                    }
                },
                (None, Access::Public | Access::Optional) => {}
                (None, Access::Required) => {
                    return Ok(Status::unauthenticated("missing bearer access token").into_http());
                }
            }
            inner.call(req).await
        })
    }
}

/// The caller a handler acts for. Missing means the layer did not authenticate this
/// method, which for a handler that needs a caller is a denial, never a pass.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing bearer access token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_methods_require_a_token() {
        assert_eq!(access("/kms.v1.Keys/VerifyKey"), Access::Required);
        assert_eq!(access("/kms.v1.Keys/CreateKey"), Access::Required);
        assert_eq!(access("/kms.v1.Auth/Logout"), Access::Required);
        assert_eq!(access("/kms.v1.Auth/RotateSigningKey"), Access::Required);
        assert_eq!(access("/unknown.Service/Method"), Access::Required);
        assert_eq!(access("/kms.v1.Auth/Login"), Access::Public);
        assert_eq!(access("/kms.v1.Auth/Refresh"), Access::Public);
        assert_eq!(access("/kms.v1.Auth/Register"), Access::Optional);
        // No prefix tricks.
        assert_eq!(
            access("/kms.v1.Auth/Login/../../kms.v1.Keys/GetKey"),
            Access::Required
        );
    }
}
