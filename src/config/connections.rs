//! Bounds on what a client can hold open: connections, streams, and how long a silent
//! one is kept. Each has a safe default; README "Hostile clients" explains them.

use std::time::Duration;

use clap::Args;

use super::ConfigError;

#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Connections held at once over both listeners (lowered to fit the descriptor
    /// limit). At the cap, the longest-idle connection is closed to admit a new one.
    #[arg(long, env = "KMS_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_connections: u64,
    /// Connections one client address may hold (IPv6 counted per /64).
    #[arg(long, env = "KMS_MAX_CONNECTIONS_PER_PEER", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_peer: u64,
    /// Time for a TLS handshake, a connection's first request, and each HTTP/1
    /// request head.
    #[arg(long, env = "KMS_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout_seconds: u64,
    /// A connection with no call in progress for this long is closed.
    #[arg(long, env = "KMS_CONNECTION_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub connection_idle_timeout_seconds: u64,
    /// Calls open at once on one HTTP/2 connection.
    #[arg(long, env = "KMS_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub http2_max_concurrent_streams: u32,
    /// Long-lived streams (health Watch, reflection) open at once; they have a
    /// budget of their own and never take the slots of unary calls.
    #[arg(long, env = "KMS_MAX_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_streams: u64,
    /// Long-lived streams one client address may hold.
    #[arg(long, env = "KMS_MAX_STREAMS_PER_PEER", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_streams_per_peer: u64,
    /// A reflection stream whose client sends nothing for this long is ended.
    #[arg(long, env = "KMS_STREAM_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stream_idle_timeout_seconds: u64,
    /// Calls without an access token (Login, Register, Refresh, ValidateToken,
    /// GetJwks, ext_authz Check) one client address may have in progress at once.
    #[arg(long, env = "KMS_MAX_PUBLIC_CALLS_PER_PEER", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_public_calls_per_peer: u64,
}

/// The resolved bounds.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_max_streams: u32,
    pub max_streams: usize,
    pub max_streams_per_peer: usize,
    pub stream_idle_timeout: Duration,
    pub max_public_calls_per_peer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_peer: 512,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_max_streams: 256,
            max_streams: 256,
            max_streams_per_peer: 16,
            stream_idle_timeout: Duration::from_secs(60),
            max_public_calls_per_peer: 256,
        }
    }
}

impl ConnectionArgs {
    pub fn resolve(&self) -> Result<ConnectionLimits, ConfigError> {
        let count = |value: u64, name: &str| {
            usize::try_from(value).map_err(|_| ConfigError(format!("{name} is out of range")))
        };
        Ok(ConnectionLimits {
            max_connections: count(self.max_connections, "KMS_MAX_CONNECTIONS")?,
            max_connections_per_peer: count(
                self.max_connections_per_peer,
                "KMS_MAX_CONNECTIONS_PER_PEER",
            )?,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_seconds),
            idle_timeout: Duration::from_secs(self.connection_idle_timeout_seconds),
            http2_max_streams: self.http2_max_concurrent_streams,
            max_streams: count(self.max_streams, "KMS_MAX_STREAMS")?,
            max_streams_per_peer: count(self.max_streams_per_peer, "KMS_MAX_STREAMS_PER_PEER")?,
            stream_idle_timeout: Duration::from_secs(self.stream_idle_timeout_seconds),
            max_public_calls_per_peer: count(
                self.max_public_calls_per_peer,
                "KMS_MAX_PUBLIC_CALLS_PER_PEER",
            )?,
        })
    }
}
