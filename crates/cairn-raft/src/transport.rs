//! The peer-network seam: every connection a node opens to another node and every connection
//! its gRPC address accepts goes through a [`Network`].
//!
//! Raft traffic, forwarded commands and joins all run over gRPC on the node's `--grpc-addr`;
//! tonic speaks HTTP/2 over whatever byte stream the network hands it. In production that is
//! TCP ([`Tcp`]). A test or a deterministic simulation supplies another network: [`memory`]
//! connects nodes in one process through in-memory pipes and cuts links between them on
//! command, so a whole cluster runs without a socket. Nothing above this module knows which
//! network it runs on.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

pub mod memory;

/// How long a TCP connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP keepalive toward peers: a dead peer is noticed without waiting for an RPC.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// A byte stream between two nodes (or a client and a node).
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// A connection of any network.
pub type BoxConn = Box<dyn Conn>;

/// What a node's connections run over.
pub trait Network: Send + Sync + fmt::Debug + 'static {
    /// Opens a connection to the node whose gRPC address is `addr` (`host:port`).
    fn dial(&self, addr: &str) -> BoxFuture<'static, io::Result<BoxConn>>;

    /// Starts accepting the connections made to `addr`, this node's gRPC address.
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
}

/// Connections arriving at one address.
pub trait Listener: Send + 'static {
    /// The next connection and the address it came from.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, SocketAddr)>>;
}

/// TCP: what a node runs on outside tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tcp;

impl Network for Tcp {
    fn dial(&self, addr: &str) -> BoxFuture<'static, io::Result<BoxConn>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {addr} took over {CONNECT_TIMEOUT:?}"),
                        )
                    })??;
            stream.set_nodelay(true)?;
            socket2::SockRef::from(&stream)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(KEEPALIVE))?;
            Ok(Box::new(stream) as BoxConn)
        })
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TcpAcceptor(listener)) as Box<dyn Listener>)
        })
    }
}

struct TcpAcceptor(tokio::net::TcpListener);

impl Listener for TcpAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, SocketAddr)>> {
        Box::pin(async move {
            let (stream, from) = self.0.accept().await?;
            // Small RPCs (votes, appends, forwarded commands) must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as BoxConn, from))
        })
    }
}
