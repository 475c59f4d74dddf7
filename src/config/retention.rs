//! How long things are kept: the audit trail, logins, and how often the sweeper
//! deletes what has expired (`domain::sweeper`).

use std::time::Duration;

use super::ServeArgs;
use crate::domain::sweeper::SweepSettings;

pub const DEFAULT_SESSION_MAX_LIFETIME_SECONDS: i64 = 2_592_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `None`: audit events are kept forever (`KMS_AUDIT_RETENTION_SECONDS=0`).
    pub audit_events: Option<Duration>,
    pub sweep_interval: Duration,
    /// How long after Login its refresh chain ends.
    pub session_max_lifetime_seconds: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            audit_events: Some(SweepSettings::DEFAULT_AUDIT_RETENTION),
            sweep_interval: SweepSettings::DEFAULT_INTERVAL,
            session_max_lifetime_seconds: DEFAULT_SESSION_MAX_LIFETIME_SECONDS,
        }
    }
}

impl Retention {
    /// The sweeper's settings, given how long access tokens live.
    pub fn sweep_settings(
        &self,
        access_token_ttl_seconds: i64,
        login_failure_window: Duration,
    ) -> SweepSettings {
        let secs = |n: i64| Duration::from_secs(u64::try_from(n).unwrap_or(0));
        SweepSettings {
            audit_retention: self.audit_events,
            interval: self.sweep_interval,
            access_token_ttl: secs(access_token_ttl_seconds),
            session_max_lifetime: secs(self.session_max_lifetime_seconds),
            login_failure_window,
        }
    }
}

impl ServeArgs {
    pub(super) fn retention(&self) -> Retention {
        Retention {
            audit_events: (self.audit_retention_seconds > 0)
                .then(|| Duration::from_secs(self.audit_retention_seconds)),
            sweep_interval: Duration::from_secs(self.sweep_interval_seconds),
            session_max_lifetime_seconds: self.session_max_lifetime_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn retention(extra: &[&str]) -> Result<Retention, clap::Error> {
        let mut argv = vec!["kms", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(a) => Ok(a.retention()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_keep_ninety_days_and_sweep_every_five_minutes() {
        // Whatever the test's own environment says is not what is asked here.
        for name in [
            "KMS_AUDIT_RETENTION_SECONDS",
            "KMS_SWEEP_INTERVAL_SECONDS",
            "KMS_SESSION_MAX_LIFETIME_SECONDS",
        ] {
            if std::env::var_os(name).is_some() {
                return;
            }
        }
        assert_eq!(retention(&[]).unwrap(), Retention::default());
        let r = Retention::default();
        assert_eq!(r.audit_events, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.sweep_interval, Duration::from_secs(300));
        assert_eq!(r.session_max_lifetime_seconds, 30 * 86_400);
    }

    #[test]
    fn zero_retention_keeps_everything_and_the_interval_is_at_least_a_second() {
        let r = retention(&["--audit-retention-seconds", "0"]).unwrap();
        assert_eq!(r.audit_events, None);
        assert!(retention(&["--sweep-interval-seconds", "0"]).is_err());
        assert!(retention(&["--session-max-lifetime-seconds", "0"]).is_err());
        let r = retention(&[
            "--sweep-interval-seconds",
            "1",
            "--session-max-lifetime-seconds",
            "2",
        ])
        .unwrap();
        assert_eq!(r.sweep_interval, Duration::from_secs(1));
        assert_eq!(r.session_max_lifetime_seconds, 2);
    }

    #[test]
    fn the_sweeper_waits_one_access_token_lifetime() {
        let s = Retention::default().sweep_settings(900, Duration::from_secs(300));
        assert_eq!(s.access_token_ttl, Duration::from_secs(900));
        assert_eq!(s.session_max_lifetime, Duration::from_secs(2_592_000));
        assert_eq!(s.audit_retention, Some(Duration::from_secs(7_776_000)));
    }
}
