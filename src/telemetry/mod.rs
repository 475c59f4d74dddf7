//! Logging and metrics.
//!
//! Logs go to stderr, written in batches by a thread of their own (`writer.rs`; call
//! `flush` before exiting) (stdout carries only what the CLI prints for a person, such as the
//! one-time bootstrap password). `RUST_LOG` filters (default `info`); `KMS_LOG_FORMAT=json`
//! switches to JSON lines. Dependencies that could print request headers or SQL
//! parameters at debug level are held at `warn` unless named explicitly.

pub mod metrics;
mod writer;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
    "sea_orm=warn",
    "rustls=warn",
    "axum=warn",
];

pub fn init() {
    let user = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let mut filter = EnvFilter::try_new(&user).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    for directive in QUIET {
        let target = directive.split('=').next().unwrap_or_default();
        if !user.contains(target)
            && let Ok(d) = directive.parse()
        {
            filter = filter.add_directive(d);
        }
    }
    let json = std::env::var("KMS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer::BatchedStderr::start());
    // A panic's message goes straight to stderr: the lines before it go first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        writer::flush();
        previous(info);
    }));
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
