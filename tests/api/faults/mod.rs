//! Faults (see RELIABILITY.md): races, a database outage, `kill -9` mid-stream, overload. The
//! answers stay the specified codes, nothing acknowledged is lost, and the service
//! recovers by itself. Run this group alone, with KMS_TEST_POSTGRES_URL set, with
//! `cargo test --test api -- --include-ignored faults:: cluster::` (cluster: the
//! two-replica test).

mod audit_flood;
mod crash;
mod hostile_clients;
mod outage;
mod overload;
mod races;

use std::sync::Arc;

use kms::proto::kms::v1 as pb;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};

fn create(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        api_key: None,
        description: String::new(),
        ttl_seconds: 0,
        ..Default::default()
    }
}

/// A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones
/// refused) and restored on the same port.
pub struct Proxy {
    port: u16,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the PostgreSQL of `base`: (proxy, the URL through it, upstream).
    pub async fn in_front_of(base: &str) -> (Self, String, String) {
        let url = url_parts::Parts::parse(base);
        let proxy = Self::start(0, url.host_port.clone()).await;
        let proxied = url.with_host_port(&format!("127.0.0.1:{}", proxy.port));
        (proxy, proxied, url.host_port)
    }

    pub async fn start(port: u16, upstream: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Notify::new());
        let stop = cut.clone();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        pipes.spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                }
            }
            pipes.abort_all();
        });
        Self { port, cut, task }
    }

    pub async fn cut(self) -> u16 {
        self.cut.notify_one();
        self.task.await.unwrap();
        self.port
    }
}

/// Just enough URL handling to swap the host:port of a postgres:// URL.
pub mod url_parts {
    pub struct Parts {
        prefix: String,
        pub host_port: String,
        suffix: String,
    }

    impl Parts {
        pub fn parse(url: &str) -> Self {
            let (scheme, rest) = url.split_once("://").unwrap();
            let (authority, suffix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (userinfo, host_port) = match authority.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h.to_owned()),
                None => (String::new(), authority.to_owned()),
            };
            let host_port = if host_port.contains(':') {
                host_port
            } else {
                format!("{host_port}:5432")
            };
            Self {
                prefix: format!("{scheme}://{userinfo}"),
                host_port,
                suffix: suffix.to_owned(),
            }
        }

        pub fn with_host_port(&self, host_port: &str) -> String {
            format!("{}{host_port}{}", self.prefix, self.suffix)
        }
    }
}
