//! Connection caps for the HTTP and gRPC front ends (the RESP front end has its own): at most
//! `max_connections` open client connections per front end (`--max-connections`); one more is
//! accepted and closed at once (HTTP first gets a JSON 503), so a flood of connections cannot
//! exhaust file descriptors or memory. Every admitted connection is counted in the
//! `cairn_connections` gauge until it closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait, once shutdown begins, for open connections to finish their requests; after
/// it the front end stops anyway (a client that ignores HTTP/2 GOAWAY or keeps a request
/// running must not hold the node's shutdown hostage).
pub(crate) const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
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
}

impl ConnectionLimit {
    pub(crate) fn new(frontend: &'static str, max: usize) -> Self {
        ConnectionLimit {
            frontend,
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
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
    pub(crate) async fn accept(
        &self,
        listener: &TcpListener,
        refusal: Option<&'static [u8]>,
    ) -> (Tracked, SocketAddr) {
        loop {
            let (mut stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(frontend = self.frontend, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            match self.admit() {
                Some(slot) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Tracked {
                            stream,
                            _slot: slot,
                        },
                        addr,
                    );
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

/// A TCP stream that holds its [`Slot`] for as long as it is open.
#[derive(Debug)]
pub(crate) struct Tracked {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
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
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
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
            .accept(&self.listener, Some(HTTP_TOO_MANY_CONNECTIONS))
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
}
