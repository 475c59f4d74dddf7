//! A connection's socket closed the way a graceful HTTP/2 close needs (a lingering
//! close, as web servers do it). When the server ends a connection (shutdown, or
//! idleness) it sends GOAWAY, finishes the calls in progress, and closes. A client that
//! sent a new request just before the GOAWAY reached it has bytes in flight the server
//! never reads, and closing a socket with unread data makes the kernel answer with a
//! reset: the client then loses the GOAWAY itself and sees a broken connection where it
//! should have seen a refused stream it may retry elsewhere.
//!
//! So the socket is handed back when HTTP is done with it (`Lingering`'s drop), and
//! `close` ends the sending side (FIN, after everything written) and reads and drops
//! what the client still sends until it closes too, within a bound.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};

/// A connection's socket, returned through `Returned` when the HTTP (and TLS) layers
/// above it drop it.
pub struct Lingering {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

/// Where the socket comes back.
pub type Returned = oneshot::Receiver<TcpStream>;

impl Lingering {
    pub fn new(stream: TcpStream) -> (Self, Returned) {
        let (back, returned) = oneshot::channel();
        (
            Self {
                stream: Some(stream),
                back: Some(back),
            },
            returned,
        )
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        // Taken only in `drop`: never seen empty while in use.
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // Nobody waiting: the socket is simply closed.
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// As the socket's (true): hyper writes each answer's frames with one `writev`.
    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Ends the connection: FIN after everything written, then what the peer still sends
/// is read and dropped until it closes its side, for at most `within`.
pub async fn close(mut stream: TcpStream, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        // Already done when the HTTP layer shut the stream down itself.
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The server answers, then closes while the client's last request is still unread.
    async fn client_sees(linger: bool) -> (Vec<u8>, io::Result<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut wrapped, returned) = Lingering::new(server);
        client.write_all(b"late request").await.unwrap();
        wrapped.write_all(b"goaway").await.unwrap();
        let mut seen = vec![0u8; 6];
        client.read_exact(&mut seen).await.unwrap();
        // Let the request arrive, unread, before the server lets go of the socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(wrapped);
        let server = returned.await.unwrap();
        let closing = tokio::spawn(async move {
            if linger {
                close(server, Duration::from_secs(5)).await;
            } else {
                drop(server);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let end = client.read(&mut [0u8; 16]).await;
        drop(client);
        closing.await.unwrap();
        (seen, end)
    }

    #[tokio::test]
    async fn a_lingering_close_ends_with_fin_not_a_reset() {
        let (seen, end) = client_sees(true).await;
        assert_eq!(seen, b"goaway");
        assert_eq!(end.unwrap(), 0, "a clean end of stream");
        // What it prevents: the same close without lingering resets the connection.
        let (_, end) = client_sees(false).await;
        assert_eq!(
            end.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }
}
