//! The Redis-protocol (RESP2/RESP3) front end: a tokio TCP listener, one task per connection,
//! a cap on connections, and the translation of Redis commands into node commands.
//!
//! Framing and encoding live in `cairn-resp`; command semantics live in the node. This module
//! only maps between them with Redis's exact argument rules and reply shapes.

pub mod cluster;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod introspection;
pub mod pubsub;
pub mod render;
pub mod session;
pub mod table;
pub mod tracking;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::Node;
use session::{ClientRegistry, RespStats, Session, Shared};

/// Reply sent to a connection over the cap, as Redis words it.
pub const MAX_CLIENTS_ERROR: &[u8] = b"-ERR max number of clients reached\r\n";

/// Bind the RESP listener (separate from [`serve_listener`] so the caller knows the port is
/// open before it reports readiness).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for RESP on {addr}: {e}"))
}

/// Accept connections until `shutdown` turns true, then wait for open connections to finish
/// their current batch. With `redirect` (`--resp-redirect`), keyed requests whose shard
/// another node leads are answered `MOVED` instead of being forwarded ([`cluster::redirect`]).
pub async fn serve_listener(
    listener: TcpListener,
    node: Arc<Node>,
    max_connections: usize,
    redirect: bool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        node,
        stats: RespStats::default(),
        clients: ClientRegistry::default(),
        max_connections,
        redirect,
        tracking: Default::default(),
        notifier: Default::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let (mut stream, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        RespStats::add(&shared.stats.connections_received, 1);
        if shared.stats.connected.load(Ordering::Relaxed) >= max_connections {
            RespStats::add(&shared.stats.rejected_connections, 1);
            tasks.spawn(async move {
                let _ = stream.write_all(MAX_CLIENTS_ERROR).await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(addr);
        let id = shared.stats.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Session::new(id, addr, local);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        shared.stats.connected.fetch_add(1, Ordering::Relaxed);
        shared.clients.register(&session);
        crate::metrics::connections(connection::FRONTEND, 1.0);
        tasks.spawn(async move {
            connection::serve(stream, session, shared.clone(), shutdown).await;
            shared.clients.remove(id);
            shared.tracking.close(id);
            shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            crate::metrics::connections(connection::FRONTEND, -1.0);
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
