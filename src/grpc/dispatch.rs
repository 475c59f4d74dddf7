//! The gRPC services behind the layers, each found by the service name in the call's
//! path (`/kms.v1.Keys/VerifyKey` goes to `kms.v1.Keys`), the service's own generated
//! code then finding the method. A path no service owns is UNIMPLEMENTED, as in tonic.
//!
//! This replaces tonic's `Routes`, an axum router: per call it boxed the request body
//! into axum's and again into tonic's, matched the path in a route tree, stored the
//! matched route in the request, cloned a boxed service and wrapped its future twice,
//! about 0.8 us of a VerifyKey call's CPU on the machine of BENCHMARKS.md's seventh
//! round, for what a comparison of the service name decides.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Status, body::Body, codegen::BoxFuture, server::NamedService};
use tower::Service;

type Answer = BoxFuture<Response<Body>, Infallible>;

/// A service called through a shared reference: a clone of it takes the call, as the
/// layers' own services do (a generated server's clone is an `Arc`'s).
trait Route: Send + Sync {
    fn name(&self) -> &'static str;
    fn take(&self, req: Request<Body>) -> Answer;
}

struct Named<S>(S);

impl<S> Route for Named<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
        + NamedService
        + Clone
        + Send
        + Sync,
{
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn take(&self, req: Request<Body>) -> Answer {
        self.0.clone().call(req)
    }
}

/// The services, cheap to clone (the layers clone their inner service on every call).
#[derive(Clone, Default)]
pub struct Dispatch {
    routes: Arc<[Box<dyn Route>]>,
}

/// Collects the services; `build` freezes them.
#[derive(Default)]
pub struct DispatchBuilder {
    routes: Vec<Box<dyn Route>>,
}

impl DispatchBuilder {
    /// Adds a generated (or hand-written) server. The services called most belong
    /// first: the name is compared in the order added.
    #[must_use]
    pub fn add<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.routes.push(Box::new(Named(service)));
        self
    }

    pub fn build(self) -> Dispatch {
        Dispatch {
            routes: self.routes.into(),
        }
    }
}

impl Dispatch {
    pub fn builder() -> DispatchBuilder {
        DispatchBuilder::default()
    }

    fn route(&self, path: &str) -> Option<&dyn Route> {
        let (service, _method) = path.strip_prefix('/')?.split_once('/')?;
        self.routes
            .iter()
            .find(|route| route.name() == service)
            .map(|route| &**route)
    }
}

impl Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    /// Every service here is always ready (generated servers are).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.route(req.uri().path()) {
            Some(route) => route.take(req),
            None => Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Echo;

    impl NamedService for Echo {
        const NAME: &'static str = "test.v1.Echo";
    }

    impl Service<Request<Body>> for Echo {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Answer;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let mut answer = Status::new(tonic::Code::Ok, "").into_http::<Body>();
            let path = http::HeaderValue::from_str(req.uri().path());
            if let Ok(path) = path {
                answer.headers_mut().insert("x-path", path);
            }
            Box::pin(std::future::ready(Ok(answer)))
        }
    }

    async fn answer(dispatch: &mut Dispatch, path: &str) -> (Option<String>, Option<String>) {
        let req = Request::builder()
            .uri(path)
            .body(Body::empty())
            .unwrap_or_default();
        let Ok(response) = dispatch.call(req).await;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (header("grpc-status"), header("x-path"))
    }

    #[tokio::test]
    async fn a_call_goes_to_the_service_its_path_names_and_no_other() {
        let mut dispatch = Dispatch::builder().add(Echo).build();
        assert_eq!(
            answer(&mut dispatch, "/test.v1.Echo/Say").await,
            (Some("0".into()), Some("/test.v1.Echo/Say".into()))
        );
        // The service's own code decides its methods, an empty one too.
        assert_eq!(
            answer(&mut dispatch, "/test.v1.Echo/").await.1.as_deref(),
            Some("/test.v1.Echo/")
        );
        // No service of that name (a prefix or an extension of one is not it): 12.
        for path in [
            "/test.v1.Other/Say",
            "/test.v1.Ech/Say",
            "/test.v1.EchoX/Say",
            "/test.v1.Echo",
            "/",
            "/Say",
        ] {
            assert_eq!(
                answer(&mut dispatch, path).await,
                (Some("12".into()), None),
                "{path}"
            );
        }
    }
}
