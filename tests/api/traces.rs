//! Traces (OpenTelemetry over OTLP/gRPC): `kms serve` runs as a process with
//! OTEL_EXPORTER_OTLP_ENDPOINT pointing at an OTLP trace receiver served by the test.
//! A call that sends a W3C `traceparent` is continued: its server span has the RPC
//! semantic-convention attributes, the database spans sit under it, and no attribute
//! anywhere holds the API key, the access token or the admin password. Without the
//! variable, nothing is exported.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kms::proto::kms::v1 as pb;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};

use crate::{
    both_backends,
    common::{ADMIN_PASSWORD, Backend, authed},
    http_client::Http,
    process::Cluster,
};

/// A traceparent as a caller (an upstream service) would send it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const REST_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{PARENT_SPAN_ID}-01")
}

/// An OTLP trace receiver: keeps every export, counts connections.
#[derive(Clone, Default)]
struct Receiver {
    exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.exports.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Self::default();
        let connections = receiver.connections.clone();
        let incoming = TcpListenerStream::new(listener).map(move |conn| {
            connections.fetch_add(1, Ordering::SeqCst);
            conn
        });
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| &e.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    /// Every attribute value exported (resources, spans, events), as text.
    fn attribute_values(&self) -> Vec<String> {
        let exports = self.exports.lock().unwrap();
        let mut values = Vec::new();
        for resource_spans in exports.iter().flat_map(|e| &e.resource_spans) {
            if let Some(resource) = &resource_spans.resource {
                values.extend(resource.attributes.iter().map(text));
            }
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                values.push(span.name.clone());
                values.extend(span.attributes.iter().map(text));
                for event in &span.events {
                    values.push(event.name.clone());
                    values.extend(event.attributes.iter().map(text));
                }
                if let Some(status) = &span.status {
                    values.push(status.message.clone());
                }
            }
        }
        values
    }
}

fn text(kv: &KeyValue) -> String {
    format!("{}={:?}", kv.key, kv.value)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `span` has `ancestor` above it in `all` (parent links by span id).
fn descends_from(span: &Span, ancestor: &Span, all: &[Span]) -> bool {
    let by_id: HashMap<&[u8], &Span> = all.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let mut current = span;
    for _ in 0..32 {
        if current.parent_span_id == ancestor.span_id {
            return true;
        }
        match by_id.get(current.parent_span_id.as_slice()) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

fn is_list_keys(s: &Span) -> bool {
    string_attr(s, "rpc.method") == Some("ListKeys")
}

async fn spans_arrive(backend: Backend) {
    let (receiver, addr) = Receiver::start().await;
    let endpoint = format!("http://{addr}");
    let cluster = Cluster::new(
        &backend,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let server = cluster.start("traced").await;
    let token = server.admin_token().await;
    let secret = server
        .keys()
        .create_key(authed(
            pb::CreateKeyRequest {
                service_name: "traced".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert!(!secret.is_empty());

    // A gRPC call continuing the caller's trace; ListKeys always reads the database.
    let mut request = authed(
        pb::ListKeysRequest {
            page_size: 10,
            page_token: String::new(),
        },
        &token,
    );
    request
        .metadata_mut()
        .insert("traceparent", traceparent(TRACE_ID).parse().unwrap());
    server.keys().list_keys(request).await.unwrap();
    // The secret travels in a request: it must not reach an attribute.
    let verified = server
        .keys()
        .verify_key(authed(
            pb::VerifyKeyRequest {
                api_key: secret.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid);
    // A REST request, continuing another trace.
    let reply = Http::new(server.http_addr())
        .get("/keys/traced")
        .bearer(&token)
        .header("traceparent", &traceparent(REST_TRACE_ID))
        .send()
        .await;
    assert_eq!(reply.status, 200, "{}", reply.detail());

    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = |spans: &[Span]| {
        spans.iter().any(is_list_keys)
            && spans
                .iter()
                .any(|s| string_attr(s, "http.route") == Some("/keys/{service_name}"))
            && spans
                .iter()
                .any(|s| string_attr(s, "rpc.method") == Some("VerifyKey"))
            && spans
                .iter()
                .any(|s| hex(&s.trace_id) == TRACE_ID && string_attr(s, "db.system").is_some())
    };
    while !wanted(&receiver.spans()) {
        assert!(
            Instant::now() < deadline,
            "spans did not arrive: {:#?}\n--- log ---\n{}",
            receiver
                .spans()
                .iter()
                .map(|s| (&s.name, hex(&s.trace_id)))
                .collect::<Vec<_>>(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = receiver.spans();

    let rpc = spans.iter().find(|s| is_list_keys(s)).unwrap();
    assert_eq!(rpc.name, "kms.v1.Keys/ListKeys");
    assert_eq!(rpc.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(string_attr(rpc, "rpc.system"), Some("grpc"));
    assert_eq!(string_attr(rpc, "rpc.service"), Some("kms.v1.Keys"));
    assert_eq!(attr(rpc, "rpc.grpc.status_code"), Some(&Value::IntValue(0)));
    assert_eq!(hex(&rpc.trace_id), TRACE_ID, "the caller's trace continues");
    assert_eq!(hex(&rpc.parent_span_id), PARENT_SPAN_ID);

    let expected_db = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgresql",
    };
    let db = spans
        .iter()
        .filter(|s| string_attr(s, "db.system").is_some() && descends_from(s, rpc, &spans))
        .collect::<Vec<_>>();
    assert!(!db.is_empty(), "no database span under the RPC span");
    for span in &db {
        assert_eq!(string_attr(span, "db.system"), Some(expected_db));
        assert!(string_attr(span, "db.operation").is_some());
        assert!(string_attr(span, "db.statement").is_none(), "no SQL text");
    }

    // Statement spans belong to calls: a background query starts no trace.
    for span in spans
        .iter()
        .filter(|s| string_attr(s, "db.system").is_some())
    {
        assert!(
            !span.parent_span_id.is_empty(),
            "a database span without a call"
        );
    }

    let rest = spans
        .iter()
        .find(|s| string_attr(s, "http.route") == Some("/keys/{service_name}"))
        .unwrap();
    assert_eq!(rest.name, "GET /keys/{service_name}");
    assert_eq!(rest.kind, 2);
    assert_eq!(hex(&rest.trace_id), REST_TRACE_ID);
    assert_eq!(hex(&rest.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(
        attr(rest, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );

    for value in receiver.attribute_values() {
        for (what, secret) in [
            ("API key", secret.as_str()),
            ("access token", token.as_str()),
            ("admin password", ADMIN_PASSWORD),
        ] {
            assert!(!value.contains(secret), "{what} in an attribute: {value}");
        }
    }
    let resource = receiver.exports.lock().unwrap()[0].resource_spans[0]
        .resource
        .clone()
        .unwrap();
    let service = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value);
    assert_eq!(service, Some(Value::StringValue("kms".into())));
    // The log lines of the call carry its trace id.
    assert!(
        server
            .log_text()
            .lines()
            .any(|l| l.contains("call finished") && l.contains(TRACE_ID)),
        "{}",
        server.log_text()
    );
}

/// Without OTEL_EXPORTER_OTLP_ENDPOINT, nothing is exported: not even to an endpoint
/// named by the exporter's other variables, and no trace id is recorded.
async fn nothing_without_endpoint(backend: Backend) {
    let (receiver, addr) = Receiver::start().await;
    let endpoint = format!("http://{addr}");
    let cluster = Cluster::new(
        &backend,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let server = cluster.start("untraced").await;
    let token = server.admin_token().await;
    let mut request = authed(
        pb::ListKeysRequest {
            page_size: 10,
            page_token: String::new(),
        },
        &token,
    );
    request
        .metadata_mut()
        .insert("traceparent", traceparent(TRACE_ID).parse().unwrap());
    server.keys().list_keys(request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!server.log_text().contains(TRACE_ID));
    drop(server);
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 0);
    assert!(receiver.spans().is_empty());
}

both_backends!(spans_arrive, nothing_without_endpoint);
