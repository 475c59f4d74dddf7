//! Database health: a background probe that keeps the gRPC health service and the HTTP
//! `/health` endpoint in step with whether the database answers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::Store;

/// How often the database is probed, and how long one probe may take.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The services reported: overall ("") and each public service.
pub const SERVICES: &[&str] = &["", "kms.v1.Auth", "kms.v1.Keys"];

/// Whether the server is serving: the database answered the last probe and the API
/// is admitting calls. Cheap to clone and read.
#[derive(Clone, Debug)]
pub struct DbHealth(Arc<AtomicBool>);

impl DbHealth {
    pub fn new(serving: bool) -> Self {
        Self(Arc::new(AtomicBool::new(serving)))
    }

    pub fn is_serving(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sets every reported service's status. `serve` calls it once before it accepts
/// connections, so that no probe ever finds a service unregistered.
pub async fn report(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Probes until `stop` changes, flipping both health views on every change (and only
/// then: a Watch stream hears of changes, nothing else). Recovery
/// needs no restart: the pool reconnects on its own, the probe just notices. Health
/// also says NOT_SERVING while `refusing_everything` does: a server whose API answers
/// nothing but RESOURCE_EXHAUSTED must not tell its load balancer it is serving.
pub async fn monitor(
    store: Store,
    reporter: HealthReporter,
    health: DbHealth,
    refusing_everything: impl Fn() -> bool + Send,
    mut stop: watch::Receiver<bool>,
) {
    // `serve` reported the starting status before accepting; reporting it again here
    // would send every Watch stream a second, unchanged status.
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
        let database = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await,
            Ok(Ok(()))
        );
        let saturated = refusing_everything();
        let serving = database && !saturated;
        if serving != health.0.swap(serving, Ordering::Relaxed) {
            if serving {
                tracing::info!("database reachable and calls admitted again: SERVING");
            } else if !database {
                tracing::warn!("database unreachable: NOT_SERVING");
            } else {
                tracing::warn!(
                    "every API call is being refused at the concurrency limit: NOT_SERVING"
                );
            }
            report(&reporter, serving).await;
        }
    }
    // Shutting down: tell load balancers to stop sending calls here.
    report(&reporter, false).await;
}
