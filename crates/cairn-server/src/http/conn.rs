//! Connection caps for the HTTP and gRPC front ends (the RESP front end has its own): at most
//! `max_connections` open client connections per front end (`--max-connections`); one more is
//! accepted and closed at once (HTTP first gets a JSON 503), so a flood of connections cannot
//! exhaust file descriptors or memory. An admitted connection that moves no bytes either way
//! for [`CONNECTION_IDLE_TIMEOUT`] is closed, so slow or silent clients cannot hold slots
//! forever. Every admitted connection is counted in the `cairn_connections` gauge until it
//! closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Longest wait, once shutdown begins, for open connections to finish their requests; after
/// it the front end stops anyway (a client that ignores HTTP/2 GOAWAY or keeps a request
/// running must not hold the node's shutdown hostage).
pub(crate) const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no bytes read or written for this long is closed (clients reconnect:
/// tonic channels and HTTP keep-alive pools do so on their own).
pub(crate) const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// What an HTTP client over the cap receives before the connection closes.
const HTTP_TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 77\r\n\r\n\
{\"code\":\"too_many_connections\",\"message\":\"max number of connections reached\"}";

/// Counts the open connections of one front end against its cap.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    frontend: &'static str,
    open: Arc<AtomicUsize>,
    max: usize,
    idle_timeout: Duration,
}

impl ConnectionLimit {
    pub(crate) fn new(frontend: &'static str, max: usize) -> Self {
        ConnectionLimit {
            frontend,
            open: Arc::new(AtomicUsize::new(0)),
            max,
            idle_timeout: CONNECTION_IDLE_TIMEOUT,
        }
    }

    /// The same cap with another idle timeout.
    #[cfg(test)]
    fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// A slot for one more connection, or `None` when the cap is reached.
    fn admit(&self) -> Option<Slot> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| {
            crate::metrics::connections(self.frontend, 1.0);
            Slot {
                limit: self.clone(),
            }
        })
    }

    /// Accept the next connection within the cap. Connections over the cap are closed (after
    /// `refusal` is written, when given); accept errors are logged and retried.
    pub(crate) async fn accept<L: Incoming>(
        &self,
        listener: &mut L,
        refusal: Option<&'static [u8]>,
    ) -> (Tracked<L::Conn>, SocketAddr) {
        loop {
            let (mut stream, addr) = match listener.next().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(frontend = self.frontend, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            match self.admit() {
                Some(slot) => {
                    return (Tracked::new(stream, addr, slot, self.idle_timeout), addr);
                }
                None => {
                    tracing::debug!(frontend = self.frontend, %addr, max = self.max, "connection refused: cap reached");
                    if let Some(bytes) = refusal {
                        tokio::spawn(async move {
                            let _ = stream.write_all(bytes).await;
                            let _ = stream.shutdown().await;
                        });
                    }
                }
            }
        }
    }
}

/// Where a front end's connections come from: a TCP listener, or the listener of the node's
/// peer network (the gRPC front end, which peers reach too).
pub(crate) trait Incoming: Send {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and where it came from.
    fn next(&mut self) -> BoxFuture<'_, io::Result<(Self::Conn, SocketAddr)>>;
}

impl Incoming for TcpListener {
    type Conn = TcpStream;

    fn next(&mut self) -> BoxFuture<'_, io::Result<(TcpStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, addr) = self.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((stream, addr))
        })
    }
}

/// A listener of the node's peer network.
pub(crate) struct NetworkListener(pub(crate) Box<dyn cairn_raft::transport::Listener>);

impl Incoming for NetworkListener {
    type Conn = cairn_raft::transport::BoxConn;

    fn next(&mut self) -> BoxFuture<'_, io::Result<(Self::Conn, SocketAddr)>> {
        self.0.accept()
    }
}

/// A shutdown signal for a server's graceful shutdown, and a future that resolves
/// [`SHUTDOWN_DRAIN_TIMEOUT`] after that signal fired: race the server against the latter.
pub(crate) fn shutdown_with_deadline(
    shutdown: impl std::future::Future + Send + 'static,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (fired_tx, mut fired_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = fired_tx.send(true);
    };
    let deadline = async move {
        if fired_rx.wait_for(|fired| *fired).await.is_err() {
            // The signal was dropped unfired: the server ended on its own; never time out.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_DRAIN_TIMEOUT).await;
    };
    (signal, deadline)
}

/// One admitted connection's place under the cap; released when dropped.
#[derive(Debug)]
struct Slot {
    limit: ConnectionLimit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::connections(self.limit.frontend, -1.0);
    }
}

/// A connection that holds its [`Slot`] for as long as it is open, and fails with
/// `TimedOut` once it has moved no bytes for its idle timeout.
pub(crate) struct Tracked<S = TcpStream> {
    stream: S,
    /// Where the connection came from.
    remote: SocketAddr,
    _slot: Slot,
    idle_timeout: Duration,
    /// When bytes last moved in either direction.
    last_active: Instant,
    /// Fires at or before `last_active + idle_timeout`; re-armed lazily when it fires early, so
    /// reads and writes only store an `Instant`.
    idle: Pin<Box<Sleep>>,
}

impl<S> std::fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("remote", &self.remote)
            .field("last_active", &self.last_active)
            .finish()
    }
}

impl<S> Tracked<S> {
    fn new(stream: S, remote: SocketAddr, slot: Slot, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Tracked {
            stream,
            remote,
            _slot: slot,
            idle_timeout,
            last_active: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Record progress on the stream.
    fn touch<T>(&mut self, progress: Poll<T>) -> Poll<T> {
        if progress.is_ready() {
            self.last_active = Instant::now();
        }
        progress
    }

    /// While the stream is pending: `Err(TimedOut)` once it has been idle too long, else
    /// arrange to be woken when it would be.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_active + self.idle_timeout;
            if deadline <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle too long",
                ));
            }
            self.idle.as_mut().reset(deadline);
        }
        Ok(())
    }

    /// Pass `poll` through, recording progress, or fail a pending poll once idle too long.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match self.touch(poll) {
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.guard(cx, poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl<S> tonic::transport::server::Connected for Tracked<S> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(self.remote),
        }
    }
}

/// The HTTP listener: a TCP listener under a [`ConnectionLimit`].
#[derive(Debug)]
pub(super) struct CappedListener {
    pub(super) listener: TcpListener,
    pub(super) limit: ConnectionLimit,
}

impl axum::serve::Listener for CappedListener {
    type Io = Tracked;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Tracked, SocketAddr) {
        self.limit
            .accept(&mut self.listener, Some(HTTP_TOO_MANY_CONNECTIONS))
            .await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_body_matches_its_content_length() {
        let text = std::str::from_utf8(HTTP_TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let limit = ConnectionLimit::new("http", 2);
        let a = limit.admit().unwrap();
        let _b = limit.admit().unwrap();
        assert!(limit.admit().is_none());
        drop(a);
        assert!(limit.admit().is_some());
    }

    #[tokio::test]
    async fn silent_connections_time_out_and_free_their_slot() {
        use tokio::io::AsyncReadExt as _;
        let mut listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limit = ConnectionLimit::new("http", 1).with_idle_timeout(Duration::from_millis(50));
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server_side, _) = limit.accept(&mut listener, None).await;
        assert!(
            limit.admit().is_none(),
            "the accepted connection holds the only slot"
        );
        let mut buf = [0u8; 1];
        let error = server_side.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(server_side);
        assert!(limit.admit().is_some());
    }
}
