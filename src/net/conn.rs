//! One accepted connection: its TLS handshake, HTTP serving, and the bounds on how
//! long it may sit silent. A connection must send its first request within the
//! handshake bound and is closed once it has had no request in progress for the idle
//! bound (gRPC's MAX_CONNECTION_IDLE); HTTP/1 request heads must arrive within the
//! handshake bound too (hyper's header timeout). Bodies are bounded by the call
//! deadline, in the layers.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpStream, sync::watch};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::{
    client_addr::{ClientAddr, TrustedProxies},
    limiter::{Admitted, ConnState},
    linger::{self, Lingering},
};

/// Bounds on one connection's silence.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TLS handshake, first request, and each HTTP/1 request head.
    pub handshake: Duration,
    /// No request in progress for this long: the connection is closed.
    pub idle: Duration,
}

/// How long a connection told to close gets to finish what it was saying before it
/// is dropped, and then how long its socket lingers for the peer to close its side: a
/// peer that ignores GOAWAY must not keep its descriptor.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every connection of one listener shares.
pub(super) struct Listener {
    pub tls: Option<TlsAcceptor>,
    pub builder: auto::Builder<TokioExecutor>,
    pub timeouts: Timeouts,
    pub trusted_proxies: TrustedProxies,
}

/// Serves one accepted connection to the end. `stop` asks for a graceful close
/// (server shutdown); the connection's own state can ask for one too (idle eviction).
pub(super) async fn serve<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    service: S,
    listener: Arc<Listener>,
    stop: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = admitted.state.clone();
    let service = TowerToHyperService::new(Tracked {
        inner: service,
        state: state.clone(),
        peer,
        trusted_proxies: listener.trusted_proxies.clone(),
    });
    let (builder, timeouts) = (&listener.builder, listener.timeouts);
    // The socket comes back when HTTP is done with it, to be closed without
    // resetting a client's last request (`linger`).
    let (stream, mut returned) = Lingering::new(stream);
    let served = match &listener.tls {
        None => {
            drive(
                builder,
                TokioIo::new(stream),
                service,
                &state,
                timeouts,
                stop,
            )
            .await;
            true
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(timeouts.handshake, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    drive(
                        builder,
                        TokioIo::new(stream),
                        service,
                        &state,
                        timeouts,
                        stop,
                    )
                    .await;
                    true
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    false
                }
            }
        }
    };
    // A peer that never got to HTTP has no request to lose: closed at once.
    if served && let Ok(stream) = returned.try_recv() {
        linger::close(stream, CLOSE_GRACE).await;
    }
    drop(admitted);
}

async fn drive<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<S>,
    state: &ConnState,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = Closing::No;
    loop {
        let check_in = match closing {
            Closing::No => next_check(state, timeouts),
            // Asked to close: look again until it is idle and its grace is over.
            Closing::Idle(_) => Duration::from_millis(100),
            // Shutdown: in-flight calls finish within the server's grace, which
            // ends this task from outside.
            Closing::Shutdown => Duration::from_secs(3600),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = state.close.notified(), if closing == Closing::No => {
                // Before its first request a connection has nothing to finish.
                if !state.has_started() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = Closing::Idle(tokio::time::Instant::now());
            }
            changed = stop.changed(), if closing != Closing::Shutdown => {
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = Closing::Shutdown;
                }
            }
            () = tokio::time::sleep(check_in) => match closing {
                Closing::No => {
                    if !state.has_started() {
                        if state.idle_for() >= timeouts.handshake {
                            return;
                        }
                    } else if state.is_idle() && state.idle_for() >= timeouts.idle {
                        conn.as_mut().graceful_shutdown();
                        closing = Closing::Idle(tokio::time::Instant::now());
                    }
                }
                Closing::Idle(since) => {
                    // A peer that ignores GOAWAY must not keep its descriptor.
                    if since.elapsed() >= CLOSE_GRACE && state.is_idle() {
                        return;
                    }
                }
                Closing::Shutdown => {}
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// Closed for idleness or to make room, at this instant.
    Idle(tokio::time::Instant),
    Shutdown,
}

/// When to look at the connection's idleness next.
fn next_check(state: &ConnState, timeouts: Timeouts) -> Duration {
    let bound = if state.has_started() {
        timeouts.idle
    } else {
        timeouts.handshake
    };
    if state.is_idle() {
        bound
            .saturating_sub(state.idle_for())
            .max(Duration::from_millis(10))
    } else {
        bound
    }
}

/// Stamps each request with its client address (the one decision of `client_addr`,
/// for both transports; the peer's own address is not kept: nothing reads it, and
/// each extension is an allocation on every call), and counts it as in progress until
/// its response body is finished or dropped.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
    peer: SocketAddr,
    trusted_proxies: TrustedProxies,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let client = self.trusted_proxies.client(self.peer.ip(), req.headers());
        req.extensions_mut().insert(ClientAddr(client));
        self.state.request_started();
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(InProgress(self.state.clone())),
        }
    }
}

/// A request in progress on its connection; ends when dropped.
struct InProgress(Arc<ConnState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InProgress>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(Ok(response)) = this.inner.poll(cx) else {
            return Poll::Pending;
        };
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InProgress>,
    }
}

impl<B: HttpBody> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
