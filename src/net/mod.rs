//! The listeners: accepting connections under the limits, TLS, and the HTTP/1 and
//! HTTP/2 settings, for the gRPC port and the HTTP port alike. tonic's and axum's own
//! `serve` have no bound on silent connections, slow request heads or the number of
//! connections, so the server drives hyper itself here.

pub mod budget;
pub mod client_addr;
mod conn;
pub mod limiter;
mod linger;
pub mod request_id;
mod tls;

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tower::Service;

pub use budget::Budgets;
pub use client_addr::{ClientAddr, TrustedProxies};
pub use conn::Timeouts;
pub use limiter::{ConnectionLimiter, PeerCounter, PeerSlot, RateLimitedLog};
pub use tls::{TlsError, server_config};

/// A dead peer (crashed host, pulled cable, half-open connection) is found by the
/// kernel, not by HTTP/2 pings: after this long without a packet from the peer it is
/// probed...
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// ...every this long...
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and dropped after this many probes go unanswered (about 80 s in all).
const TCP_KEEPALIVE_RETRIES: u32 = 2;
/// Data sent and not acknowledged for this long drops the connection too: a peer
/// that vanished while an answer or a stream's events were on their way.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(80);

/// Which protocols a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// gRPC: HTTP/2 only.
    Http2,
    /// The HTTP side: HTTP/1.1 and HTTP/2.
    Any,
}

/// The settings every connection of a listener gets.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub timeouts: Timeouts,
    /// Streams (calls) open at once on one HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Whose `x-forwarded-for` names the client (`client_addr`).
    pub trusted_proxies: TrustedProxies,
}

fn builder(protocols: Protocols, settings: &ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Http2 {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.timeouts.handshake)
        .keep_alive(true);
    // No HTTP/2 keepalive pings: with them hyper takes a lock and reads the clock on
    // every frame received (2% of a `health` call's samples, BENCHMARKS.md). A peer that
    // goes away while a call is open (a Watch stream) is found by the kernel's
    // keepalive and user timeout instead (`tune`); pings a client sends are still
    // answered.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams);
    builder
}

/// Accepts on `listener` until `stop` turns true, then waits for its connections to
/// close (the caller bounds that wait with the shutdown grace).
pub async fn serve<S, B>(
    listener: TcpListener,
    protocols: Protocols,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    limiter: ConnectionLimiter,
    settings: ConnSettings,
    stop: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let shared = Arc::new(conn::Listener {
        tls,
        builder: builder(protocols, &settings),
        timeouts: settings.timeouts,
        trusted_proxies: settings.trusted_proxies,
    });
    let accept_errors = RateLimitedLog::new(Duration::from_secs(10));
    let mut connections = JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = stopping.changed() => {
                if changed.is_err() || *stopping.borrow() {
                    break;
                }
                continue;
            }
            // Reap finished connection tasks as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: the descriptor table is full. Back off, or the
                // loop would spin on a listener that stays readable.
                accept_errors.note(|suppressed| {
                    tracing::warn!(error = %e, suppressed, "accepting a connection failed");
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(admitted) = limiter.admit(peer.ip()) else {
            // Dropping the stream closes it: the refusal is the closed connection.
            continue;
        };
        tune(&stream);
        connections.spawn(conn::serve(
            stream,
            peer,
            admitted,
            service.clone(),
            shared.clone(),
            stop.clone(),
        ));
    }
    // Stop accepting at once: the kernel refuses new clients instead of queueing them.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// TCP_NODELAY (Nagle would hold small responses back behind a delayed ACK for up to
/// 40 ms), keepalive probes and the user timeout: a dead peer's connection is closed
/// within about 80 s, whether it was silent or had data on its way.
fn tune(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    if let Err(e) = socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// The client address of a request served by `serve`: its TCP peer, or whom a
/// trusted proxy forwarded it for (`client_addr`). For the login throttle, the
/// per-address budgets and audit rows. `None` for a request that came another way
/// (a router driven directly in a unit test).
pub fn client_addr<B>(req: &Request<B>) -> Option<std::net::IpAddr> {
    req.extensions().get::<ClientAddr>().map(|client| client.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_find_dead_peers_in_the_kernel() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        tune(&stream);
        let socket = socket2::SockRef::from(&stream);
        assert!(stream.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE);
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            TCP_KEEPALIVE_RETRIES
        );
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(TCP_USER_TIMEOUT));
    }
}
