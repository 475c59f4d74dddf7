//! OpenTelemetry traces, sent over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (`OTEL_SERVICE_NAME`, default `kms`). Unset, no layer is installed: spans
//! cost what they cost without OpenTelemetry, and nothing is exported.
//!
//! Spans: one server span per gRPC call (`grpc/observe.rs`) and per REST request
//! (`http/rest.rs`), with a W3C `traceparent` continued, and SeaORM's statement spans
//! under them (`db.system`, `db.operation`; never the statement's parameters).
//! Attributes hold only method names, routes, codes and the caller's subject: never a
//! secret, token, password or key.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const DEFAULT_SERVICE_NAME: &str = "kms";

/// Set once, when the OpenTelemetry layer is installed: the request paths ask it
/// before doing any tracing-only work.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` was set at start).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporting tracer provider; flushes and stops on `shutdown`.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Sends the spans still queued, then stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("kms: traces could not be flushed: {e}");
        }
    }

    pub(super) fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("kms")
    }
}

/// The provider when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Must run inside a tokio
/// runtime: the tonic channel to the collector lives on it. The batch processor
/// (its own thread; `OTEL_BSP_*` tune it) exports from there.
pub(super) fn start() -> Result<Option<Traces>, String> {
    if std::env::var_os(ENDPOINT).is_none_or(|v| v.is_empty()) {
        return Ok(None);
    }
    // The exporter reads the endpoint (and OTEL_EXPORTER_OTLP_* options) itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP trace exporter: {e}"))?;
    // The environment detector reads OTEL_SERVICE_NAME; only its default is ours.
    let mut resource = Resource::builder();
    if std::env::var_os(SERVICE_NAME).is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Traces { provider }))
}

/// Reads W3C trace-context headers from an HTTP/gRPC request.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a server span named `name`, continuing the caller's `traceparent`
/// when it sent a valid one, and records its trace id on it (the JSON log lines
/// inside it carry it). `span` must declare `otel.name`, `otel.kind` and `trace_id`.
/// Does nothing when traces are off.
fn server_span(span: &Span, name: &str, headers: &HeaderMap) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        // Fails only once the span has started; it has not yet.
        let _ = span.set_parent(parent);
    }
    span.record("otel.name", name);
    span.record("otel.kind", "server");
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// A gRPC call's server span, with the RPC semantic-convention attributes. `service`
/// and `method` come from the known-method table (`unknown` otherwise): a client
/// cannot mint span names.
pub fn grpc_call(span: &Span, service: &'static str, method: &'static str, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    server_span(span, &format!("{service}/{method}"), headers);
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service);
    span.set_attribute("rpc.method", method);
}

/// gRPC codes that are the server's failure, not the caller's (the RPC semantic
/// conventions): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS.
const SERVER_ERRORS: &[tonic::Code] = &[
    tonic::Code::Unknown,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
];

/// Records a gRPC call's final status on its span.
pub fn grpc_finished(span: &Span, code: tonic::Code) {
    if !enabled() {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
    if SERVER_ERRORS.contains(&code) {
        span.set_status(opentelemetry::trace::Status::error(code.description()));
    }
}

/// A REST request's server span: `span` declares `otel.name`, `otel.kind` and
/// `trace_id`; `route` is the matched route template, never the raw path.
pub fn http_request(span: &Span, method: &http::Method, route: &str, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    server_span(span, &format!("{method} {route}"), headers);
    span.set_attribute("http.request.method", method.as_str().to_owned());
    span.set_attribute("http.route", route.to_owned());
}

/// Records a REST response's status on its span; a 5xx marks it failed.
pub fn http_finished(span: &Span, status: http::StatusCode) {
    if !enabled() {
        return;
    }
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn off_without_endpoint() {
        // The test environment has no OTLP endpoint: nothing starts.
        if std::env::var_os(ENDPOINT).is_none() {
            assert!(matches!(start(), Ok(None)));
            assert!(!enabled());
        }
    }
}
