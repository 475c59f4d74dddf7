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
/// layers' own services do (a generated server's clone is an `Arc`'s). The clone is
/// called without `poll_ready`: only services that are always ready belong here
/// (generated servers and `ExtAuthzServer` are; a tower limit around one is not).
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
#[derive(Clone)]
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
        // One service a name: a second would never be reached.
        debug_assert!(
            self.routes.iter().all(|route| route.name() != S::NAME),
            "{} added twice",
            S::NAME
        );
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

    /// A service that answers OK with its name and the path it was called with.
    #[derive(Clone)]
    struct Echo<const N: usize>;

    impl NamedService for Echo<1> {
        const NAME: &'static str = "test.v1.Echo";
    }

    impl NamedService for Echo<2> {
        const NAME: &'static str = "test.v1.Other";
    }

    impl<const N: usize> Service<Request<Body>> for Echo<N>
    where
        Echo<N>: NamedService,
    {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Answer;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let mut answer = Status::new(tonic::Code::Ok, "").into_http::<Body>();
            let headers = answer.headers_mut();
            headers.insert("x-service", http::HeaderValue::from_static(Self::NAME));
            if let Ok(path) = http::HeaderValue::from_str(req.uri().path()) {
                headers.insert("x-path", path);
            }
            Box::pin(std::future::ready(Ok(answer)))
        }
    }

    /// (grpc-status, the service that answered, the path it saw)
    async fn answer(dispatch: &mut Dispatch, path: &str) -> [Option<String>; 3] {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::empty())
            .expect("a path the test can send");
        let Ok(response) = dispatch.call(req).await;
        ["grpc-status", "x-service", "x-path"].map(|name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
    }

    #[tokio::test]
    async fn a_call_goes_to_the_service_its_path_names_and_no_other() {
        let mut dispatch = Dispatch::builder().add(Echo::<1>).add(Echo::<2>).build();
        let ok = |service: &str, path: &str| {
            [
                Some("0".to_owned()),
                Some(service.to_owned()),
                Some(path.to_owned()),
            ]
        };
        for (path, service) in [
            ("/test.v1.Echo/Say", "test.v1.Echo"),
            // The one added second is found too.
            ("/test.v1.Other/Say", "test.v1.Other"),
            // The service's own code decides its methods: an empty one, one with more
            // segments, one percent-encoded (nothing is decoded on the way).
            ("/test.v1.Echo/", "test.v1.Echo"),
            ("/test.v1.Echo/Say/more", "test.v1.Echo"),
            ("/test.v1.Echo/S%61y", "test.v1.Echo"),
        ] {
            assert_eq!(
                answer(&mut dispatch, path).await,
                ok(service, path),
                "{path}"
            );
        }
        // No service of that name (a prefix or an extension of one is not it, nor a
        // percent-encoded one): 12, UNIMPLEMENTED, from no service.
        for path in [
            "/test.v1.Third/Say",
            "/test.v1.Ech/Say",
            "/test.v1.EchoX/Say",
            "/test.v1.Ech%6F/Say",
            "//test.v1.Echo/Say",
            "/test.v1.Echo",
            "/",
            "*",
            "/Say",
        ] {
            assert_eq!(
                answer(&mut dispatch, path).await,
                [Some("12".to_owned()), None, None],
                "{path}"
            );
        }
    }
}
