//! Limits that keep one client from taking the server down: message sizes, time,
//! concurrency, connections (`connections.rs`), and failed-login throttling.

use std::time::Duration;

use super::{ConfigError, ConnectionLimits, ServeArgs};
use crate::domain::throttle::ThrottleSettings;

/// Limits that keep one client from taking the server down.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
    pub connections: ConnectionLimits,
    /// How precisely a key's last_used_at is kept (KMS_LAST_USED_RESOLUTION_SECONDS).
    pub last_used_resolution: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            shutdown_grace: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            last_used_resolution: Duration::from_secs(60),
        }
    }
}

impl ServeArgs {
    pub(super) fn limits(&self) -> Result<Limits, ConfigError> {
        let out_of_range = |name: &str| ConfigError(format!("{name} is out of range"));
        Ok(Limits {
            max_request_bytes: usize::try_from(self.max_request_bytes)
                .map_err(|_| out_of_range("KMS_MAX_REQUEST_BYTES"))?,
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_concurrent_requests: usize::try_from(self.max_concurrent_requests)
                .map_err(|_| out_of_range("KMS_MAX_CONCURRENT_REQUESTS"))?,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            connections: self.connections.resolve()?,
            last_used_resolution: Duration::from_secs(self.last_used_resolution_seconds),
        })
    }

    pub(super) fn login_throttle(&self) -> Result<ThrottleSettings, ConfigError> {
        if self.login_lockout_max_seconds < self.login_lockout_base_seconds {
            return Err(ConfigError(
                "KMS_LOGIN_LOCKOUT_MAX_SECONDS must be at least KMS_LOGIN_LOCKOUT_BASE_SECONDS"
                    .into(),
            ));
        }
        Ok(ThrottleSettings {
            max_failures: self.login_max_failures,
            failure_window: Duration::from_secs(self.login_failure_window_seconds),
            lockout_base: Duration::from_secs(self.login_lockout_base_seconds),
            lockout_max: Duration::from_secs(self.login_lockout_max_seconds),
            max_wait: Duration::from_secs(self.login_wait_seconds),
            ..ThrottleSettings::default()
        })
    }
}
