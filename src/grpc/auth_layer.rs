//! A tower layer in front of every service: it checks `authorization: Bearer <jwt>`
//! the way the REST API does (`crate::bearer`), answers a refusal through the one
//! error map (`status.rs`), and puts the `Caller` into the request extensions. Which
//! methods need a token is decided here, in one list; a method not listed needs one
//! (fail closed).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::{
    bearer,
    domain::{Caller, Error, sessions::Authenticator},
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

/// kms.v1 methods that do not require a token. Every other kms.v1 method does.
const NO_TOKEN_REQUIRED: &[(&str, Access)] = &[
    ("/kms.v1.Auth/Login", Access::Public),
    ("/kms.v1.Auth/ValidateToken", Access::Public),
    // The refresh token is the credential: no access token needed (it may have expired).
    ("/kms.v1.Auth/Refresh", Access::Public),
    ("/kms.v1.Auth/Register", Access::Optional),
    // Public keys: publishing them is their purpose.
    ("/kms.v1.Auth/GetJwks", Access::Public),
];

/// Services all of whose methods are public: any method, known or not, goes through
/// without a token, so that one the service lacks is answered UNIMPLEMENTED by the
/// router (a client probing health or reflection is told the truth, not asked for a
/// token it could never need).
const PUBLIC_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    // Envoy's ext_authz filter: the sidecar asks us to authenticate the requests it
    // carries, not itself, so the call holds no KMS token of its own. Unlike VerifyKey,
    // anyone who reaches this service can test API keys without a token: protect the
    // port with mTLS (KMS_TLS_CLIENT_CA) or a network policy that admits only the
    // sidecars.
    "envoy.service.auth.v3.Authorization",
];

pub fn access(path: &str) -> Access {
    if let Some((_, access)) = NO_TOKEN_REQUIRED.iter().find(|(method, _)| *method == path) {
        return *access;
    }
    // `/<service>/<method>`, the method one non-empty segment: no prefix tricks.
    let public_service = path
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            PUBLIC_SERVICES.contains(&service) && !method.is_empty() && !method.contains('/')
        });
    if public_service {
        Access::Public
    } else {
        Access::Required
    }
}

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

pin_project_lite::pin_project! {
    /// A call the layer let through goes straight to the service (its future as it
    /// is); one whose token must be fetched goes through the boxed check first; one it
    /// refused at once is answered with the refusal.
    #[project = AuthFutureProj]
    pub enum AuthFuture<F, E> {
        Through { #[pin] inner: F },
        Checked { inner: BoxFuture<Result<Response<Body>, E>> },
        Refused { response: Option<Response<Body>> },
    }
}

impl<F, E> std::future::Future for AuthFuture<F, E>
where
    F: std::future::Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Through { inner } => inner.poll(cx),
            AuthFutureProj::Checked { inner } => inner.as_mut().poll(cx),
            // Taken once: a future is not polled again after it is ready.
            AuthFutureProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| Status::internal("polled after completion").into_http()))),
        }
    }
}

impl<S, B> Service<Request<B>> for AuthMiddleware<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call; leave a clone behind
        // (tower's guidance, as in tonic's examples/src/tower/server.rs).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = access(req.uri().path());
        // Public methods ignore any token sent along (a stale one must not stop a
        // login). Otherwise the token is read and checked as REST checks it.
        if access == Access::Public {
            return AuthFuture::Through {
                inner: inner.call(req),
            };
        }
        // A token whose check the caches can answer (every call of a client that
        // called a moment ago) is decided here, and the call goes on as a public
        // one would: no boxed future, nothing awaited. Only a token or login not
        // cached yet is checked in the boxed future, which may reach the database.
        if let Some(sent) = bearer::cached_caller(&self.authenticator, req.headers()) {
            return match admit(access, sent, &mut req) {
                Ok(()) => AuthFuture::Through {
                    inner: inner.call(req),
                },
                Err(refused) => AuthFuture::Refused {
                    response: Some(refused),
                },
            };
        }
        let authenticator = self.authenticator.clone();
        let inner = Box::pin(async move {
            let sent = bearer::caller(&authenticator, req.headers()).await;
            if let Err(refused) = admit(access, sent, &mut req) {
                return Ok(refused);
            }
            inner.call(req).await
        });
        AuthFuture::Checked { inner }
    }
}

/// The layer's verdict on a call that reads a token, given what the token yielded:
/// the caller is put into the request, or the refusal is the answer.
fn admit<B>(
    access: Access,
    sent: Result<Option<Arc<Caller>>, bearer::BearerError>,
    req: &mut Request<B>,
) -> Result<(), Response<Body>> {
    let caller = match access {
        Access::Public => Ok(None),
        Access::Optional => sent.map_err(Error::from),
        Access::Required => sent
            .map_err(Error::from)
            .and_then(bearer::required)
            .map(Some),
    };
    match caller {
        Ok(Some(caller)) => {
            // The call's log lines show who made it.
            crate::telemetry::call::record_subject(&caller.subject);
            req.extensions_mut().insert(caller);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(refusal) => Err(Status::from(refusal).into_http()),
    }
}

/// The caller a handler acts for, taken out of the request (no copy of its name and
/// roles on every call). Missing means the layer did not authenticate this method,
/// which for a handler that needs a caller is a denial, never a pass.
pub fn caller<T>(req: &mut tonic::Request<T>) -> Result<Arc<Caller>, Status> {
    Ok(bearer::required(optional_caller(req))?)
}

/// The caller of a method whose token is optional (Register): `None` when no token
/// was sent. The one place that knows how the layer stores the caller.
pub fn optional_caller<T>(req: &mut tonic::Request<T>) -> Option<Arc<Caller>> {
    req.extensions_mut().remove::<Arc<Caller>>()
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
        // Unknown kms.v1 methods still need a token (fail closed).
        assert_eq!(access("/kms.v1.Keys/Nope"), Access::Required);
        assert_eq!(access("/kms.v1.Nope/Nope"), Access::Required);
    }

    fn caller() -> Arc<Caller> {
        Arc::new(Caller {
            subject: "alice".into(),
            roles: Default::default(),
            session_id: "s1".into(),
        })
    }

    fn status_of(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    /// The verdict both paths (cached and awaited) share: who gets through, and what
    /// a refusal answers.
    #[test]
    fn admit_lets_callers_through_and_answers_refusals() {
        let mut req = Request::new(());
        assert!(admit(Access::Required, Ok(Some(caller())), &mut req).is_ok());
        assert_eq!(
            req.extensions()
                .get::<Arc<Caller>>()
                .map(|c| c.subject.as_str()),
            Some("alice")
        );

        // No token: a required one is UNAUTHENTICATED (16), an optional one passes
        // without a caller.
        let mut req = Request::new(());
        let refused = admit(Access::Required, Ok(None), &mut req).unwrap_err();
        assert_eq!(status_of(&refused), Some("16"));
        assert!(req.extensions().get::<Arc<Caller>>().is_none());
        let mut req = Request::new(());
        assert!(admit(Access::Optional, Ok(None), &mut req).is_ok());
        assert!(req.extensions().get::<Arc<Caller>>().is_none());

        // A bad token is refused even where one is optional; an unreadable login is
        // UNAVAILABLE (14), never a pass.
        for access in [Access::Required, Access::Optional] {
            let mut req = Request::new(());
            let refused = admit(
                access,
                Err(bearer::BearerError::Rejected(bearer::INVALID_TOKEN)),
                &mut req,
            )
            .unwrap_err();
            assert_eq!(status_of(&refused), Some("16"));
            let mut req = Request::new(());
            let refused =
                admit(access, Err(bearer::BearerError::Unavailable), &mut req).unwrap_err();
            assert_eq!(status_of(&refused), Some("14"));
            assert!(req.extensions().get::<Arc<Caller>>().is_none());
        }
    }

    #[test]
    fn every_method_of_a_public_service_is_public() {
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.health.v1.Health/List",
            "/grpc.health.v1.Health/Nope",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/Other",
            "/envoy.service.auth.v3.Authorization/Check",
            "/envoy.service.auth.v3.Authorization/Nope",
        ] {
            assert_eq!(access(path), Access::Public, "{path}");
        }
        for path in [
            "/grpc.health.v1.Health/",
            "/grpc.health.v1.Health",
            "/grpc.health.v1.Health/a/b",
            "/grpc.health.v1.Health/../../kms.v1.Keys/GetKey",
            "grpc.health.v1.Health/Check",
            "/grpc.health.v1.HealthX/Check",
            "/x/grpc.health.v1.Health/Check",
        ] {
            assert_eq!(access(path), Access::Required, "{path}");
        }
    }
}
