//! `cairn server`: open the node, start the front ends, serve until shutdown, stop cleanly.
//!
//! Shutdown order: stop accepting and let connections finish their current batch, then stop
//! the writer (which drains its queue and syncs every engine), then return.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{LogFormat, ServerConfig};
use crate::node::{Node, NodeOptions};

/// Install the tracing subscriber (idempotent: a second call keeps the first).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A future that resolves once `rx` turns true (or its sender is gone).
pub async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// How long startup waits for a front end to accept connections before logging "ready" anyway
/// (a front end that fails to bind stops the server through its task's error instead).
pub const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait until `addr` accepts TCP connections (an unspecified IP is probed on loopback).
async fn wait_listening(addr: std::net::SocketAddr) {
    let mut probe = addr;
    if probe.ip().is_unspecified() {
        probe.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while tokio::net::TcpStream::connect(probe).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Run a node until `shutdown` resolves.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    init_logging(config.log_format);
    crate::metrics::init();
    let options = NodeOptions {
        data_dir: config.data_dir.clone(),
        shards: config.shards,
        value_bytes_max: config.value_bytes_max,
        sync: config.sync,
        grpc_addr: config.grpc_addr,
        http_addr: config.http_addr,
        resp_addr: config.resp_addr,
        io: Arc::new(cairn_io::StdIo),
        clock: cairn_storage::clock::system(),
        network: Arc::new(cairn_raft::transport::Tcp),
        tuning: crate::node::StorageTuning::default(),
        join: config.join.clone(),
        replicas: config.replicas,
        replicas_only: !config.replicas_everywhere,
        down_after: std::time::Duration::from_millis(config.down_after_ms),
        replace_down_after: std::time::Duration::from_millis(config.replace_down_after_ms),
        balance: crate::balance::Limits {
            moves_max: config.balance_moves_max,
            ..crate::balance::Limits::default()
        },
        move_bytes_per_sec: config.move_bytes_per_sec,
        split_shard_bytes: config.split_shard_bytes,
        watch_history: config.watch_history,
        follow_linger: crate::node::FOLLOW_LINGER,
    };
    let node: Arc<Node> = Node::open(options).await?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let resp_listener = crate::resp::bind(config.resp_addr).await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::resp::serve_listener(
        resp_listener,
        node.clone(),
        config.max_connections,
        config.resp_redirect,
        stop_rx.clone(),
    ));
    let (max_conns, stop) = (config.max_connections, || shutdown_signal(stop_rx.clone()));
    tasks.spawn(crate::grpc::serve(
        node.clone(),
        config.grpc_addr,
        max_conns,
        stop(),
    ));
    tasks.spawn(crate::http::serve(
        node.clone(),
        config.http_addr,
        max_conns,
        stop(),
    ));
    let background = tokio::spawn(
        node.clone()
            .run_background(shutdown_signal(stop_rx.clone())),
    );

    // "ready" means every front end accepts connections (they bind in their own tasks).
    for addr in [config.http_addr, config.grpc_addr] {
        wait_listening(addr).await;
    }
    tracing::info!(
        resp = %config.resp_addr,
        http = %config.http_addr,
        grpc = %config.grpc_addr,
        data_dir = %config.data_dir.display(),
        node_id = node.id(),
        "ready"
    );

    // Serve until asked to stop, until a front end fails, or until the cluster removes this
    // node (its clients then reconnect elsewhere: cluster clients refresh their maps on a
    // closed connection).
    let mut failure = None;
    let mut removal = None;
    let mut removed = node.removal();
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Ok(Some(removed)) = async { removed.wait_for(Option::is_some).await.map(|r| r.clone()) } => {
            // Drained on request, it did what it was asked: it exits 0, so a service manager
            // that restarts failed processes leaves it stopped. Replaced, it fails. (The
            // balancer task logged why when it learnt it.)
            if removed.cause != Some(crate::meta::RemovalCause::Left) {
                failure = Some(anyhow::anyhow!(removed.reason.clone()));
            }
            removal = Some(removed);
        }
        Some(ended) = tasks.join_next() => {
            let error = match ended {
                Ok(Ok(())) => anyhow::anyhow!("a front end stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a front end panicked: {e}"),
            };
            tracing::error!(error = %error, "front end failed; shutting down");
            failure = Some(error);
        }
    }
    let _ = stop_tx.send(true);
    // Watch streams never end by themselves: end them, or the front ends' drains would wait.
    node.stop_watches();
    while let Some(ended) = tasks.join_next().await {
        if let Ok(Err(e)) = ended {
            tracing::warn!(error = %e, "front end ended with an error");
        }
    }
    let _ = background.await;
    node.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("clean shutdown failed: {e}"))?;
    if let Some(removed) = removal {
        // Removed, the node cleans up: its replicas live elsewhere now. Only when the cluster
        // said why: a refusal that did not (a metadata leader of an older build) is no
        // ground to delete anything.
        if removed.cause.is_none() {
            tracing::error!(
                data_dir = %config.data_dir.display(),
                "the cluster refused this node without saying why; its data is kept"
            );
            return Err(failure.unwrap_or_else(|| anyhow::anyhow!(removed.reason)));
        }
        let io = cairn_io::StdIo;
        crate::shards::NodeIdentity::load(&io, &config.data_dir)?
            .ok_or_else(|| anyhow::anyhow!("{} has no node.toml", config.data_dir.display()))?
            .forget(&io, &config.data_dir, &removed.reason)?;
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "deleted this node's replicas and log; node.toml stays, recording the removal"
        );
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
