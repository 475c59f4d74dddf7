//! Prometheus metrics, in a registry per server (tests run many servers in one
//! process). gRPC metrics use go-grpc-prometheus' names and labels, so existing
//! dashboards work unchanged.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Seconds; go-grpc-prometheus' default buckets with finer steps below 10 ms, where a
/// KMS's hot calls live.
const HANDLING_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Inner {
    registry: Registry,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_handling_seconds: HistogramVec,
    pub login_attempts: IntCounterVec,
    pub key_verifications: IntCounterVec,
    /// `key_verifications`' children, invalid then valid.
    verifications: [OnceLock<IntCounter>; 2],
    pub tokens_issued: IntCounterVec,
    pub keys_active: IntGauge,
    pub sweeper_deleted_rows: IntCounterVec,
}

/// Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::ops::Deref for Metrics {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let rpc = ["grpc_type", "grpc_service", "grpc_method"];
        let grpc_started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &rpc,
        )?;
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let grpc_handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(HANDLING_BUCKETS.to_vec()),
            &rpc,
        )?;
        let login_attempts = IntCounterVec::new(
            Opts::new("kms_login_attempts_total", "Login attempts by outcome."),
            &["outcome"],
        )?;
        let key_verifications = IntCounterVec::new(
            Opts::new(
                "kms_key_verifications_total",
                "API key verifications (VerifyKey and ext_authz) by outcome.",
            ),
            &["outcome"],
        )?;
        let tokens_issued = IntCounterVec::new(
            Opts::new("kms_tokens_issued_total", "Access tokens issued, by kind."),
            &["kind"],
        )?;
        let keys_active = IntGauge::new(
            "kms_keys_active",
            "API keys that are not revoked (refreshed at each scrape).",
        )?;
        registry.register(Box::new(grpc_started.clone()))?;
        registry.register(Box::new(grpc_handled.clone()))?;
        registry.register(Box::new(grpc_handling_seconds.clone()))?;
        registry.register(Box::new(login_attempts.clone()))?;
        registry.register(Box::new(key_verifications.clone()))?;
        registry.register(Box::new(tokens_issued.clone()))?;
        let sweeper_deleted_rows = IntCounterVec::new(
            Opts::new(
                "kms_sweeper_deleted_rows_total",
                "Rows the sweeper deleted (expired audit events, logins and secrets), by table.",
            ),
            &["table"],
        )?;
        registry.register(Box::new(keys_active.clone()))?;
        registry.register(Box::new(sweeper_deleted_rows.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self(Arc::new(Inner {
            registry,
            grpc_started,
            grpc_handled,
            grpc_handling_seconds,
            login_attempts,
            key_verifications,
            verifications: [OnceLock::new(), OnceLock::new()],
            tokens_issued,
            keys_active,
            sweeper_deleted_rows,
        })))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub fn login(&self, outcome: &str) {
        self.login_attempts.with_label_values(&[outcome]).inc();
    }

    pub fn verification(&self, valid: bool) {
        let outcome = if valid { "valid" } else { "invalid" };
        // The child is looked up once (created on first use, as `with_label_values`
        // would), not hashed and locked for on every verification.
        self.verifications[usize::from(valid)]
            .get_or_init(|| self.key_verifications.with_label_values(&[outcome]))
            .inc();
    }

    pub fn token_issued(&self, kind: &str) {
        self.tokens_issued.with_label_values(&[kind]).inc();
    }

    /// A login's answer, on any transport: its outcome, and on success the tokens it
    /// issued (`with_refresh`: a refresh token besides the access token).
    pub fn login_answered<T>(&self, result: &Result<T, crate::domain::Error>, with_refresh: bool) {
        self.login(login_outcome(result));
        if result.is_ok() {
            self.token_issued("access");
            if with_refresh {
                self.token_issued("refresh");
            }
        }
    }

    /// A refresh's new pair of tokens, on any transport (the console's renewals too).
    pub fn tokens_renewed(&self) {
        self.token_issued("access");
        self.token_issued("refresh");
    }

    /// Adds one sweep batch's deletions (every table, zeros included, so that each
    /// series exists from the first pass).
    pub fn swept(&self, deleted: &crate::store::SweptRows) {
        for (table, rows) in deleted.by_table() {
            self.sweeper_deleted_rows
                .with_label_values(&[table])
                .inc_by(rows);
        }
    }
}

/// The `outcome` label of a Login, whichever API it came through: `success`,
/// `failure` (wrong username or password), `throttled` (refused unchecked after too
/// many failures), `invalid` (malformed request) or `error` (the server could not
/// decide).
pub fn login_outcome<T>(result: &Result<T, crate::domain::Error>) -> &'static str {
    use crate::domain::Error;
    match result {
        Ok(_) => "success",
        Err(Error::Unauthenticated(_)) => "failure",
        Err(Error::Throttled { .. }) => "throttled",
        Err(Error::InvalidArgument { .. }) => "invalid",
        Err(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_standard_names() {
        let m = Metrics::new().unwrap();
        m.grpc_started
            .with_label_values(&["unary", "kms.v1.Keys", "GetKey"])
            .inc();
        m.login("success");
        m.swept(&crate::store::SweptRows {
            audit_events: 7,
            ..Default::default()
        });
        let text = m.render().unwrap();
        assert!(text.contains(r#"kms_sweeper_deleted_rows_total{table="audit_events"} 7"#));
        assert!(text.contains(r#"kms_sweeper_deleted_rows_total{table="sessions"} 0"#));
        assert!(text.contains(
            r#"grpc_server_started_total{grpc_method="GetKey",grpc_service="kms.v1.Keys",grpc_type="unary"} 1"#
        ));
        assert!(text.contains(r#"kms_login_attempts_total{outcome="success"} 1"#));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
