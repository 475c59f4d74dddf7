//! The bare baseline: a tonic server with one unary no-op method and nothing else (no
//! layers, no logging, no database), run as a separate process (`kms-bench
//! bare-server`) on the same tokio runtime settings as `kms serve`. Every ratio in the
//! report divides a KMS scenario by this server's figure, measured in the same round
//! with a call of the same shape: what a call costs beyond tonic and hyper themselves.
//!
//! The method is `grpc.health.v1.Health/Check` answering SERVING without looking at
//! anything, so the client is the same `HealthClient` as the KMS `health` scenario
//! and the bytes on the wire are the same; `Watch` (the service's other method) is
//! UNIMPLEMENTED. The request's `service` field pads the message when a baseline must
//! match a larger KMS request (ext_authz Check); the server ignores it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

struct Bare;

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for Bare {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the bare baseline has one method"))
    }
}

/// Serves the bare baseline on `addr` until killed (the `bare-server` command). tonic's
/// plain `Server::builder()`: its defaults, TCP_NODELAY on as the KMS sets it.
///
/// A subscriber that wants nothing is installed first, as any server installs one:
/// without any, `tracing` hands the TRACE spans h2 makes (several a call: each poll
/// of the connection, each frame it queues or encodes) to its `log` fallback, 3% of
/// a bare call's profile samples that no real server pays (BENCHMARKS.md, fifth
/// round). With it they are turned away at their call sites, as the KMS's own filter
/// turns them away.
pub async fn serve(addr: SocketAddr) -> Result<(), String> {
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new())
        .map_err(|e| format!("the bare server's subscriber: {e}"))?;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(HealthServer::new(Bare))
        .serve(addr)
        .await
        .map_err(|e| format!("the bare server failed: {e}"))
}

/// The bare server as a child process of the bench.
pub struct BareServer {
    child: Child,
    pub url: String,
}

impl BareServer {
    /// Starts `kms-bench bare-server` (this executable) on a free loopback port and
    /// waits until it answers.
    pub async fn start() -> Result<Self, String> {
        let exe: PathBuf =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let addr = crate::server::free_addr()?;
        let mut child = Command::new(exe)
            .args(["bare-server", "--addr", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the bare server: {e}"))?;
        let url = format!("http://{addr}");
        let began = Instant::now();
        loop {
            if let Ok(true) = crate::server::health_serving(&url).await {
                return Ok(Self { child, url });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the bare server exited ({status}) before serving"));
            }
            if began.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the bare server did not answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
