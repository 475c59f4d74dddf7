//! The listeners: accepting connections under the limits, TLS, and the HTTP/1 and
//! HTTP/2 settings, for the gRPC port and the HTTP port alike. tonic's and axum's own
//! `serve` have no bound on silent connections, slow request heads or the number of
//! connections, so the server drives hyper itself here.

pub mod budget;
pub mod client_addr;
mod conn;
pub mod limiter;
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

/// Idle time before the kernel probes a silent peer, so connections from crashed
/// clients are reaped instead of held open.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

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
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        // A peer that stops answering pings while a call is open (a Watch stream,
        // a half-open TCP connection) is dropped.
        .keep_alive_interval(Some(settings.timeouts.idle))
        .keep_alive_timeout(Duration::from_secs(20));
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
/// 40 ms) and keepalive probes.
fn tune(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// The client address of a request served by `serve`: its TCP peer, or whom a
/// trusted proxy forwarded it for (`client_addr`). For the login throttle, the
/// per-address budgets and audit rows. `None` for a request that came another way
/// (a router driven directly in a unit test).
pub fn client_addr<B>(req: &Request<B>) -> Option<std::net::IpAddr> {
    req.extensions().get::<ClientAddr>().map(|client| client.0)
}
