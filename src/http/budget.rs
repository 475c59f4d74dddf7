//! The REST API's share of the server's capacity: the same budgets (`net::budget`) and
//! the same deadline (KMS_REQUEST_TIMEOUT_SECONDS) as gRPC. Over a budget a request is
//! answered 503 with `Retry-After` at once, as gRPC answers RESOURCE_EXHAUSTED, never
//! queued; past its deadline it is answered 504 (or 408 when its body never came).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::error::ApiError;
use crate::{
    domain::Error,
    net::{self, Budgets, budget::Class},
};

/// The budget of a REST request to `path`. Health is never refused (load balancers
/// must see it under load); the key routes need an admin token, like the gRPC calls
/// they mirror; Register is an API call with a token and public without, as on gRPC;
/// the rest (Login, the JWKS, the documents, unknown paths) is public.
pub fn class(path: &str, has_token: bool) -> Class {
    match path {
        "/health" => Class::Unlimited,
        "/keys" => Class::Api,
        p if p.starts_with("/keys/") => Class::Api,
        "/register" if has_token => Class::Api,
        _ => Class::Public,
    }
}

/// Takes the request's slot for as long as it runs (its response is small and sent
/// whole), or refuses it at once.
pub async fn admit(budgets: Budgets, req: Request, next: Next) -> Response {
    let class = class(
        req.uri().path(),
        req.headers().contains_key(header::AUTHORIZATION),
    );
    match budgets.acquire(class, net::client_addr(&req)) {
        Ok(_slot) => next.run(req).await,
        Err(message) => {
            tracing::debug!(path = %req.uri().path(), "REST request refused: over its budget");
            ApiError::from(Error::Overloaded(message)).into_response()
        }
    }
}

/// A request, its body included, must be done by its deadline: a client that sends
/// a body a byte a minute must not hold a connection and a handler for ever, and a
/// handler that takes too long is answered for.
pub async fn within(deadline: Duration, req: Request, next: Next) -> Response {
    let body_read = Arc::new(AtomicBool::new(false));
    let flag = body_read.clone();
    let req = req.map(|body| Body::new(WatchedBody::new(body, flag)));
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) if body_read.load(Ordering::Acquire) => {
            ApiError::deadline_exceeded().into_response()
        }
        Err(_) => {
            let mut response = ApiError::timed_out().into_response();
            // The unread rest of the body makes the connection unusable.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// A request body that notes when it has all arrived, so that a deadline can tell a
/// client that never finished sending (408) from a server too slow to answer (504).
struct WatchedBody {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl WatchedBody {
    fn new(inner: Body, done: Arc<AtomicBool>) -> Self {
        if inner.is_end_stream() {
            done.store(true, Ordering::Release);
        }
        Self { inner, done }
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classed_as_their_grpc_twins() {
        assert_eq!(class("/health", false), Class::Unlimited);
        assert_eq!(class("/login", true), Class::Public);
        assert_eq!(class("/register", false), Class::Public);
        assert_eq!(class("/register", true), Class::Api);
        assert_eq!(class("/keys", false), Class::Api);
        assert_eq!(class("/keys/billing/rotate", true), Class::Api);
        assert_eq!(class("/keysx", true), Class::Public);
        assert_eq!(class("/.well-known/jwks.json", false), Class::Public);
        assert_eq!(class("/metrics", false), Class::Public);
    }
}
