//! The outermost layer: every call gets its log context (method, request id, subject:
//! `telemetry::call`; a tracing span too when traces are exported), the
//! go-grpc-prometheus metrics, a server-side deadline, and a slot in its budget
//! (`budget.rs`). Over a budget a call is answered RESOURCE_EXHAUSTED at once instead
//! of queueing without bound. A reflection stream whose client falls silent is ended.

use std::{
    borrow::Cow,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{Histogram, IntCounter};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty};

use super::budget::{self, Budgets, Class, Slot};
use crate::{
    domain::audit::{self, RequestMeta},
    net::request_id,
    telemetry::{
        Metrics,
        call::{self, CallLog},
        traces,
    },
};

/// Methods whose names are used as metric labels as they are; any other path is
/// labelled `unknown`, so a client cannot mint label values.
const KNOWN_METHODS: &[&str] = &[
    "/kms.v1.Auth/Register",
    "/kms.v1.Auth/Login",
    "/kms.v1.Auth/ValidateToken",
    "/kms.v1.Auth/GetJwks",
    "/kms.v1.Auth/Refresh",
    "/kms.v1.Auth/Logout",
    "/kms.v1.Auth/RotateSigningKey",
    "/kms.v1.Keys/CreateKey",
    "/kms.v1.Keys/GetKey",
    "/kms.v1.Keys/ListKeys",
    "/kms.v1.Keys/RotateKey",
    "/kms.v1.Keys/RevokeKey",
    "/kms.v1.Keys/VerifyKey",
    "/kms.v1.Keys/UpdateKey",
    "/kms.v1.Keyring/GetKeyring",
    "/kms.v1.Keyring/RotateDataKey",
    "/kms.v1.Keyring/RewrapSecrets",
    "/kms.v1.Users/ListUsers",
    "/kms.v1.Users/GetUser",
    "/kms.v1.Users/SetRoles",
    "/kms.v1.Users/DeleteUser",
    "/kms.v1.Users/ChangePassword",
    "/kms.v1.Audit/ListAuditEvents",
    "/kms.v1.Audit/WatchAuditEvents",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/envoy.service.auth.v3.Authorization/Check",
];

/// Go's codes, 0 to 16: the handled counter's `grpc_code` values.
const CODES: usize = 17;

/// One method's metric children (its label values fixed), each looked up in its vector
/// once, on the first call that records it (when `with_label_values` would have created
/// it), instead of hashing the labels and taking the vector's lock on every call.
struct MethodMetrics {
    labels: (&'static str, &'static str, &'static str),
    started: OnceLock<IntCounter>,
    seconds: OnceLock<Histogram>,
    handled: [OnceLock<IntCounter>; CODES],
}

/// The children of every known method, and of `unknown` last.
struct MetricTable {
    metrics: Metrics,
    methods: Box<[MethodMetrics]>,
}

impl MetricTable {
    fn new(metrics: Metrics) -> Self {
        let methods = KNOWN_METHODS
            .iter()
            .map(|path| labels(path))
            .chain(std::iter::once(UNKNOWN))
            .map(|labels| MethodMetrics {
                labels,
                started: OnceLock::new(),
                seconds: OnceLock::new(),
                handled: std::array::from_fn(|_| OnceLock::new()),
            })
            .collect();
        Self { metrics, methods }
    }

    /// The entry of `path`: its place in `KNOWN_METHODS`, or the last one.
    fn method(&self, path: &str) -> usize {
        KNOWN_METHODS
            .iter()
            .position(|known| *known == path)
            .unwrap_or(KNOWN_METHODS.len())
    }

    fn entry(&self, method: usize) -> Option<&MethodMetrics> {
        self.methods.get(method).or_else(|| self.methods.last())
    }

    fn started(&self, method: usize) {
        if let Some(m) = self.entry(method) {
            let (kind, service, name) = m.labels;
            m.started
                .get_or_init(|| {
                    self.metrics
                        .grpc_started
                        .with_label_values(&[kind, service, name])
                })
                .inc();
        }
    }

    fn finished(&self, method: usize, code: Code, elapsed: Duration) {
        let Some(m) = self.entry(method) else {
            return;
        };
        let (kind, service, name) = m.labels;
        // `Code` is 0..=16, the array's length.
        let index = usize::try_from(code as i32).unwrap_or(0).min(CODES - 1);
        if let Some(handled) = m.handled.get(index) {
            handled
                .get_or_init(|| {
                    self.metrics.grpc_handled.with_label_values(&[
                        kind,
                        service,
                        name,
                        code_label(code),
                    ])
                })
                .inc();
        }
        m.seconds
            .get_or_init(|| {
                self.metrics
                    .grpc_handling_seconds
                    .with_label_values(&[kind, service, name])
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    table: Arc<MetricTable>,
    budgets: Budgets,
    deadline: Duration,
    stream_idle: Duration,
}

impl ObserveLayer {
    pub fn new(
        metrics: Metrics,
        budgets: Budgets,
        deadline: Duration,
        stream_idle: Duration,
    ) -> Self {
        Self {
            table: Arc::new(MetricTable::new(metrics)),
            budgets,
            deadline,
            stream_idle,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

const UNKNOWN: (&str, &str, &str) = ("unary", "unknown", "unknown");

/// go-grpc-prometheus labels of a method, bounded to known services.
/// (grpc_type, grpc_service, grpc_method), borrowed from the known-method table: a call
/// allocates nothing for its labels.
fn labels(path: &str) -> (&'static str, &'static str, &'static str) {
    let Some((service, method)) = KNOWN_METHODS
        .iter()
        .find(|known| **known == path)
        .and_then(|known| known.trim_start_matches('/').split_once('/'))
    else {
        return UNKNOWN;
    };
    let kind = match path {
        "/grpc.health.v1.Health/Watch" | "/kms.v1.Audit/WatchAuditEvents" => "server_stream",
        p if p.contains("ServerReflection/") => "bidi_stream",
        _ => "unary",
    };
    (kind, service, method)
}

/// Go's names for the codes (`codes.Code.String()`), as go-grpc-prometheus exports.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The request id and client address, for audit rows.
fn request_meta<B>(req: &Request<B>, client: Option<std::net::IpAddr>) -> RequestMeta {
    RequestMeta {
        request_id: request_id::of(req.headers()),
        client_addr: client,
    }
}

/// Every answer carries the call's request id, refusals by the layer's limits too.
fn with_request_id<B>(mut response: Response<B>, id: Option<HeaderValue>) -> Response<B> {
    if let Some(id) = id {
        response.headers_mut().insert(request_id::HEADER, id);
    }
    response
}

/// Header names made once (a `&str` name is parsed on every lookup).
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The client's own deadline (`grpc-timeout`, e.g. `250m`): work past it is wasted.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from)
}

/// One call's bookkeeping, completed exactly once: when its status is known, or when
/// the response is dropped unfinished (the client went away).
struct CallRecord {
    table: Arc<MetricTable>,
    /// The method's entry in `table`.
    method: usize,
    started: Instant,
    /// The traces' span (none when traces are not exported).
    span: Span,
    log: Arc<CallLog>,
    _slot: Option<Slot>,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.started.elapsed();
        self.table.finished(self.method, code, elapsed);
        traces::grpc_finished(&self.span, code);
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let code = code_label(code);
        // Written by whoever polls the response (the connection's task): as the call.
        call::in_call(self.log.clone(), || {
            let _in_span = self.span.enter();
            match code {
                "Internal" | "Unknown" | "DataLoss" | "Unavailable" => {
                    tracing::warn!(code, latency_ms, "call failed");
                }
                _ => tracing::info!(code, latency_ms, "call finished"),
            }
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The response body, watched for the trailers that carry the final status.
struct ObservedBody {
    inner: Body,
    record: CallRecord,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    this.record.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.record.finish(status.code()),
            Poll::Ready(None) => this.record.finish(Code::Unknown),
            Poll::Pending => {}
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let table = self.layer.table.clone();
        let method = table.method(path);
        table.started(method);
        let labels = table.entry(method).map_or(UNKNOWN, |m| m.labels);
        let client = crate::net::client_addr(&req);
        let meta = request_meta(&req, client);
        // Any other path is the client's: escaped, so that it cannot pose as the
        // rest of a log line.
        let method_name = KNOWN_METHODS.get(method).map_or_else(
            || Cow::Owned(path.escape_debug().to_string()),
            |known| Cow::Borrowed(*known),
        );
        // The log shows the call without a span (`telemetry::call`); a span is made
        // for the traces when they are exported, and when `RUST_LOG` selects by span.
        let span = if traces::enabled() || call::spans_wanted() {
            let span = tracing::info_span!(
                "rpc",
                method = %method_name,
                request_id = %meta.request_id,
                subject = Empty,
                otel.name = Empty,
                otel.kind = Empty,
                trace_id = Empty
            );
            traces::grpc_call(&span, labels.1, labels.2, req.headers());
            span
        } else {
            Span::none()
        };
        let id_header = request_id::value(&meta.request_id);
        let log = CallLog::new(method_name, meta.request_id.clone());
        let streaming = labels.0 != "unary";
        let class = budget::class(
            path,
            streaming,
            req.headers().contains_key(http::header::AUTHORIZATION),
        );
        let slot = match self.layer.budgets.acquire(class, client) {
            Ok(slot) => slot,
            Err(message) => {
                let mut record = CallRecord {
                    table,
                    method,
                    started: Instant::now(),
                    span,
                    log,
                    _slot: None,
                    done: false,
                };
                record.finish(Code::ResourceExhausted);
                let response =
                    with_request_id(Status::resource_exhausted(message).into_http(), id_header);
                return Box::pin(async move { Ok(response) });
            }
        };
        let mut record = CallRecord {
            table,
            method,
            started: Instant::now(),
            span: span.clone(),
            log: log.clone(),
            _slot: Some(slot),
            done: false,
        };
        // Streams (health Watch, reflection) live as long as the client wants; a
        // reflection stream's client must keep talking, or it is ended.
        let deadline = (class != Class::Unlimited && !streaming).then(|| {
            client_timeout(req.headers())
                .map_or(self.layer.deadline, |t| t.min(self.layer.deadline))
        });
        let stream_idle = self.layer.stream_idle;
        let req = if streaming {
            req.map(|body| Body::new(IdleBody::new(body, stream_idle)))
        } else {
            req.map(Body::new)
        };
        // The inner services' `call` runs here, before the future is polled: as the
        // call too.
        let started = call::in_call(log.clone(), || span.in_scope(|| inner.call(req)));
        let future = call::scope(log, audit::scope(meta, started).instrument(span));
        Box::pin(async move {
            let response = match deadline {
                Some(limit) => match tokio::time::timeout(limit, future).await {
                    Ok(result) => result?,
                    Err(_) => {
                        record.finish(Code::DeadlineExceeded);
                        return Ok(with_request_id(
                            Status::deadline_exceeded(
                                "the call took longer than the server allows",
                            )
                            .into_http(),
                            id_header,
                        ));
                    }
                },
                None => future.await?,
            };
            let response = with_request_id(response, id_header);
            if let Some(code) = status_code(response.headers()) {
                // Trailers-only response: the status is already known.
                record.finish(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                Body::new(ObservedBody {
                    inner: body,
                    record,
                }),
            ))
        })
    }
}

/// A streaming call's request body that fails once the client has sent nothing for
/// `idle`: the service then sees the stream end with an error and closes it.
struct IdleBody<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleBody<B> {
    fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> HttpBody for IdleBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Status::cancelled(
                    "the stream was idle for longer than the server allows",
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
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
    fn labels_are_bounded() {
        assert_eq!(
            labels("/kms.v1.Keys/GetKey"),
            ("unary", "kms.v1.Keys", "GetKey")
        );
        assert_eq!(labels("/grpc.health.v1.Health/Watch").0, "server_stream");
        assert_eq!(
            labels("/evil.Service/AAAA"),
            ("unary", "unknown", "unknown")
        );
        assert_eq!(labels("garbage").1, "unknown");
        assert_eq!(labels("/kms.v1.Keys/Zzz123").2, "unknown");
    }

    #[test]
    fn the_metric_table_labels_each_method_as_the_vectors_would() {
        let metrics = Metrics::new().unwrap();
        let table = MetricTable::new(metrics.clone());
        let get = table.method("/kms.v1.Keys/GetKey");
        let evil = table.method("/evil.Service/AAAA");
        assert_eq!(
            table.entry(get).unwrap().labels,
            labels("/kms.v1.Keys/GetKey")
        );
        assert_eq!(table.entry(evil).unwrap().labels, UNKNOWN);
        table.started(get);
        table.finished(get, Code::NotFound, Duration::from_millis(2));
        table.started(evil);
        table.finished(evil, Code::Unimplemented, Duration::from_millis(1));
        let c = |labels: &[&str]| metrics.grpc_handled.with_label_values(labels).get();
        assert_eq!(c(&["unary", "kms.v1.Keys", "GetKey", "NotFound"]), 1);
        assert_eq!(c(&["unary", "unknown", "unknown", "Unimplemented"]), 1);
        assert_eq!(
            metrics
                .grpc_started
                .with_label_values(&["unary", "kms.v1.Keys", "GetKey"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .grpc_handling_seconds
                .with_label_values(&["unary", "kms.v1.Keys", "GetKey"])
                .get_sample_count(),
            1
        );
    }

    #[test]
    fn client_deadlines_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(client_timeout(&headers), None);
        headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(client_timeout(&headers), Some(Duration::from_millis(250)));
        headers.insert("grpc-timeout", HeaderValue::from_static("3S"));
        assert_eq!(client_timeout(&headers), Some(Duration::from_secs(3)));
        for bad in ["", "m", "12x", "999999999S", "-1S"] {
            headers.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
            assert_eq!(client_timeout(&headers), None, "{bad}");
        }
    }

    #[test]
    fn go_code_names() {
        assert_eq!(code_label(Code::Cancelled), "Canceled");
        assert_eq!(code_label(Code::Unauthenticated), "Unauthenticated");
    }
}
