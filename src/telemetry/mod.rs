//! Logging, metrics and traces (`traces.rs`).
//!
//! Logs go to stderr, written in batches by a thread of their own (`writer.rs`; call
//! `flush` before exiting) (stdout carries only what the CLI prints for a person, such as the
//! one-time bootstrap password). `RUST_LOG` filters (default `info`); `KMS_LOG_FORMAT=json`
//! switches to JSON lines. Dependencies that could print request headers or SQL
//! parameters at debug level are held at `warn` unless named explicitly.

pub mod metrics;
pub mod traces;
mod writer;

use std::io::IsTerminal;

use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, dynamic_filter_fn},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use metrics::Metrics;
pub use writer::flush;

const DEFAULT_FILTER: &str = "info";
/// Appended to every filter: these crates log frames, headers or statements at
/// debug/trace, which could include bearer tokens or sealed secrets.
const QUIET: &[&str] = &[
    "h2=warn",
    "hyper=warn",
    "tower=warn",
    "sqlx=warn",
    "rustls=warn",
    "axum=warn",
];
/// Held down in the log only: SeaORM's statement spans (no parameters) go to traces.
const LOG_QUIET: &str = "sea_orm=warn";

/// Installs the log subscriber, and the OpenTelemetry layer when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call inside the tokio runtime (the trace
/// exporter's channel lives on it), and `shutdown` the result before the runtime ends
/// so the last spans are sent.
pub fn init() -> Telemetry {
    let user = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let json = std::env::var("KMS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer::BatchedStderr::start());
    // A panic's message goes straight to stderr: the lines before it go first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        writer::flush();
        previous(info);
    }));
    let logs = if json {
        logs.json().with_current_span(true).boxed()
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    let (traces, failed) = match traces::start() {
        Ok(traces) => (traces, None),
        Err(e) => (None, Some(e)),
    };
    // SeaORM's statement spans are wanted in traces, not in the log; and only inside
    // a call's span: the background pollers' queries would otherwise each start a
    // trace of their own, every few seconds.
    let in_a_call = dynamic_filter_fn(|meta, cx| {
        !meta.target().starts_with("sea_orm") || cx.lookup_current().is_some()
    });
    let otel = traces.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_filter(filter(&user, QUIET.iter()).and(in_a_call))
    });
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter(&user, QUIET.iter().chain([&LOG_QUIET]))))
        .with(otel)
        .try_init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are not exported");
    }
    Telemetry { traces }
}

/// `RUST_LOG` (default `info`), with the `quiet` directives for crates it does not name.
fn filter<'a>(user: &str, quiet: impl Iterator<Item = &'a &'a str>) -> EnvFilter {
    let mut filter = EnvFilter::try_new(user).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    for directive in quiet {
        let target = directive.split('=').next().unwrap_or_default();
        if !user.contains(target)
            && let Ok(d) = directive.parse()
        {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// What `init` started that must be stopped at exit.
#[must_use = "call shutdown before the runtime ends, or the last spans are lost"]
pub struct Telemetry {
    traces: Option<traces::Traces>,
}

impl Telemetry {
    /// Flushes the spans and log lines still queued. Blocks: call it outside async
    /// code.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
        writer::flush();
    }
}
