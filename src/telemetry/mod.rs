//! Logging, metrics and traces (`traces.rs`).
//!
//! Logs go to stderr, written in batches by a thread of their own (`writer.rs`; call
//! `flush` before exiting) (stdout carries only what the CLI prints for a person, such as the
//! one-time bootstrap password). `RUST_LOG` filters (default `info`); `KMS_LOG_FORMAT=json`
//! switches to JSON lines. Dependencies that could print request headers or SQL
//! parameters at debug level are held at `warn` unless named explicitly.

pub mod call;
mod direct;
pub mod metrics;
pub mod traces;
mod writer;

use std::io::IsTerminal;

use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, LevelFilter, Targets, dynamic_filter_fn},
    layer::{Filter, SubscriberExt},
    registry::LookupSpan,
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
    let shape = if json {
        call::Shape::Json
    } else {
        call::Shape::Text {
            ansi: std::io::stderr().is_terminal(),
        }
    };
    let logs = call::layer(shape, writer::BatchedStderr::start());
    // A panic's message goes straight to stderr: the lines before it go first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        writer::flush();
        previous(info);
    }));
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
            .with_filter(LogFilter::new(&user, QUIET.iter()).boxed().and(in_a_call))
    });
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(LogFilter::new(&user, QUIET.iter().chain([&LOG_QUIET])).boxed()))
        .with(otel)
        .try_init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are not exported");
    }
    Telemetry { traces }
}

/// `RUST_LOG` (default `info`), with the `quiet` directives for crates it does not name.
///
/// A filter of targets and levels only (the usual case) is a `Targets`: it decides once
/// per callsite and keeps nothing per span. `EnvFilter` is kept for filters that name
/// spans or fields (`[rpc{method=...}]`): it records every span it sees and takes a
/// shared lock on every span entry and exit to do so, which cost a `health` call about
/// 1.5 us of CPU on two cores (BENCHMARKS.md).
enum LogFilter {
    Targets(Box<Targets>),
    Env(Box<EnvFilter>),
}

impl LogFilter {
    fn new<'a>(user: &str, quiet: impl Iterator<Item = &'a &'a str> + Clone) -> Self {
        // Directives as `EnvFilter` reads them: empty ones between commas are skipped.
        let directives: Vec<&str> = user.split(',').filter(|d| !d.is_empty()).collect();
        let unnamed = || {
            quiet.clone().filter_map(|directive| {
                let (target, level) = directive.split_once('=')?;
                (!names(&directives, target)).then_some((target, level))
            })
        };
        // Only plain `target=level` and `level` directives, as both filters read them
        // alike: anything else (spans, fields, spaces, an empty target) is the
        // `EnvFilter`'s to accept or refuse, as before.
        let plain = directives.iter().all(|d| {
            !d.starts_with('=') && !d.contains(|c: char| c.is_whitespace() || "[]{}".contains(c))
        });
        if !directives.is_empty()
            && plain
            && let Ok(mut targets) = directives.join(",").parse::<Targets>()
        {
            for (target, level) in unnamed() {
                if let Ok(level) = level.parse::<LevelFilter>() {
                    targets = targets.with_target(target, level);
                }
            }
            return Self::Targets(Box::new(targets));
        }
        let mut filter =
            EnvFilter::try_new(user).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        for (target, level) in unnamed() {
            if let Ok(d) = format!("{target}={level}").parse() {
                filter = filter.add_directive(d);
            }
        }
        // Span and field directives select by the `rpc` span: make it for every call.
        if user.contains('[') {
            call::make_spans();
        }
        Self::Env(Box::new(filter))
    }

    fn boxed<S>(self) -> Box<dyn Filter<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'l> LookupSpan<'l>,
    {
        match self {
            Self::Targets(t) => t,
            Self::Env(e) => e,
        }
    }
}

/// Whether `directives` name `target` or a module of it (`h2`, `h2::proto`; not
/// `h2c`).
fn names(directives: &[&str], target: &str) -> bool {
    directives.iter().any(|d| {
        let named = d.split(['=', '[']).next().unwrap_or_default().trim();
        named == target
            || named
                .strip_prefix(target)
                .is_some_and(|rest| rest.starts_with("::"))
    })
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

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    fn targets(user: &str) -> Targets {
        match LogFilter::new(user, QUIET.iter().chain([&LOG_QUIET])) {
            LogFilter::Targets(t) => *t,
            LogFilter::Env(_) => panic!("{user} should be a Targets filter"),
        }
    }

    #[test]
    fn levels_and_targets_need_no_per_span_filter() {
        let t = targets("info");
        assert!(t.would_enable("kms::grpc::observe", &Level::INFO));
        assert!(!t.would_enable("kms::grpc::observe", &Level::DEBUG));
        let t = targets("info,kms=debug");
        assert!(t.would_enable("kms::domain", &Level::DEBUG));
        assert!(!t.would_enable("tonic", &Level::DEBUG));
        let t = targets("warn,");
        assert!(
            !t.would_enable("kms", &Level::INFO),
            "an empty directive is no directive"
        );
        assert!(!t.would_enable("kms::grpc::observe", &Level::INFO));
    }

    #[test]
    fn crates_that_could_log_secrets_stay_quiet_unless_named() {
        let t = targets("trace");
        for quiet in ["h2", "hyper", "tower", "sqlx", "rustls", "axum", "sea_orm"] {
            assert!(!t.would_enable(quiet, &Level::INFO), "{quiet}");
            assert!(t.would_enable(quiet, &Level::WARN), "{quiet}");
        }
        assert!(t.would_enable("kms", &Level::TRACE));
        let t = targets("info,h2=debug");
        assert!(t.would_enable("h2::proto", &Level::DEBUG));
        assert!(!t.would_enable("hyper", &Level::INFO));
        // Naming another crate whose name starts alike does not name the quiet one.
        let t = targets("trace,hyper_util=debug");
        assert!(!t.would_enable("hyper::proto", &Level::INFO));
        assert!(t.would_enable("hyper_util", &Level::DEBUG));
        let t = targets("trace,h2::proto=debug");
        assert!(t.would_enable("h2::proto", &Level::DEBUG));
    }

    #[test]
    fn span_and_field_filters_and_bad_input_keep_the_env_filter() {
        for user in [
            "[rpc{method=/kms.v1.Keys/GetKey}]=debug",
            "",
            ",",
            "kms=loud",
            "debug, sqlx=warn",
            "=debug",
            "info ",
        ] {
            assert!(
                matches!(LogFilter::new(user, QUIET.iter()), LogFilter::Env(_)),
                "{user:?}"
            );
        }
    }
}
