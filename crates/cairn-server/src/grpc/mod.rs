//! The gRPC front end: `cairn.v1.Kv`, `cairn.v1.Cluster` and the standard `grpc.health.v1`
//! service on the node's gRPC address.
//!
//! It is a thin codec: each RPC decodes its protobuf request into one
//! [`crate::command::Command`], calls [`Node::execute`], and encodes the
//! [`crate::reply::Reply`] or maps the [`CommandError`] to a gRPC status. No key-value semantics
//! live here.

mod cluster;
mod kv;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use cairn_proto::v1::cluster_server::ClusterServer;
use cairn_proto::v1::kv_server::KvServer;
use tonic::{Code, Status};

use crate::command::Command;
use crate::error::CommandError;
use crate::http::conn::{ConnectionLimit, NetworkListener};
use crate::node::Node;
use crate::reply::Reply;

pub use kv::{BATCH_OPS_MAX, SCAN_LIMIT_DEFAULT, SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX};
pub(crate) use kv::{fit_page, resume_after, ttl_from_now};

/// Front-end label of this module in metrics.
const FRONTEND: &str = "grpc";
/// Bytes a gRPC message may carry besides its value: the key (at most
/// [`cairn_storage::KEY_BYTES_MAX`]) and protobuf framing.
const MESSAGE_OVERHEAD_BYTES: usize = cairn_storage::KEY_BYTES_MAX + 64 * 1024;
/// Concurrent requests served on one HTTP/2 connection; further ones wait.
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;
/// HTTP/2 flow-control window this server grants a connection (every stream together): how
/// much a peer may send before the server has taken it. hyper's default (1 MiB) made a
/// replica copy (256 KiB snapshot chunks) wait for a window update every few chunks (the
/// measurements: docs/benchmarks.md, "Flow-control windows"). Memory is bounded by what the
/// server has not read yet, which its handlers read as it comes.
const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
/// The window of one stream (one snapshot, one append stream, one request).
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// The largest HTTP/2 frame a peer may send this server: a snapshot chunk in one or two frames
/// rather than sixteen of the default 16 KiB.
const FRAME_BYTES_MAX: u32 = 256 << 10;

/// Serve gRPC on `addr` until `shutdown` resolves, then drain in-flight requests; at most
/// `max_connections` client connections are open at once (`--max-connections`).
pub async fn serve(
    node: Arc<Node>,
    addr: SocketAddr,
    max_connections: usize,
    shutdown: impl Future + Send + 'static,
) -> anyhow::Result<()> {
    // Peers reach the node here too, so it listens on the node's peer network (TCP outside
    // tests).
    let listener = NetworkListener(
        node.network()
            .listen(addr)
            .await
            .with_context(|| format!("binding the gRPC address {addr}"))?,
    );
    let limit = ConnectionLimit::new(FRONTEND, max_connections);
    let incoming = futures::stream::unfold((listener, limit), |(mut listener, limit)| async move {
        let (stream, _) = limit.accept(&mut listener, None).await;
        Some((Ok::<_, std::io::Error>(stream), (listener, limit)))
    });
    // A request carries at most one value at the configured limit (a batch's values together
    // share the same budget), plus its key and framing.
    let message_bytes_max = node.options().value_bytes_max + MESSAGE_OVERHEAD_BYTES;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KvServer<kv::KvService>>().await;
    health
        .set_serving::<ClusterServer<cluster::ClusterService>>()
        .await;

    let kv = KvServer::new(kv::KvService::new(node.clone()))
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(usize::MAX);
    // Node-to-node Raft traffic shares the client port (one connection per node pair).
    // Peers' append streams end when the server shuts down, or it would drain them forever.
    let (stopping, ending) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let peer = cairn_raft::RaftService::new(node.groups().clone())
        .ending_streams_on(ending)
        .into_server();
    let peer_node = crate::peer::NodeService::new(node.clone()).into_server();
    let cluster = ClusterServer::new(cluster::ClusterService::new(node));
    tracing::info!(%addr, "gRPC front end listening");
    let (signal, deadline) = crate::http::conn::shutdown_with_deadline(shutdown);
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES_MAX)
        .add_service(health_service)
        .add_service(kv)
        .add_service(cluster)
        .add_service(peer)
        .add_service(peer_node)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        result = server => result.context("gRPC server failed"),
        () = deadline => {
            tracing::warn!("gRPC connections still open after the shutdown drain timeout; closing");
            Ok(())
        }
    }
}

/// Run one RPC, recording it in the metrics under its method name (including requests
/// refused before they reach the node). NOT_FOUND and FAILED_PRECONDITION are answers, not
/// errors; any other failure status counts as an error.
async fn observed<T>(
    method: &'static str,
    rpc: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = rpc.await;
    let ok = match &result {
        Ok(_) => true,
        Err(status) => matches!(status.code(), Code::NotFound | Code::FailedPrecondition),
    };
    crate::metrics::observe(FRONTEND, method, started.elapsed(), ok);
    result
}

/// Execute `command` on `node`, mapping a failure to its gRPC status.
async fn execute(node: &Node, command: Command) -> Result<Reply, Status> {
    node.execute(command).await.map_err(status_of)
}

/// The gRPC status for a command failure (see the code table in `proto/cairn/v1/kv.proto`).
pub(super) fn status_of(error: CommandError) -> Status {
    let message = error.to_string();
    let message = message.strip_prefix("ERR ").unwrap_or(&message).to_string();
    match error {
        CommandError::NoSuchKey => Status::not_found(message),
        CommandError::NotInteger
        | CommandError::Overflow
        | CommandError::NotFloat
        | CommandError::NanOrInfinity
        | CommandError::InvalidExpireTime(_)
        | CommandError::OffsetOutOfRange
        | CommandError::StringTooLong
        | CommandError::KeyTooLarge { .. }
        | CommandError::ValueTooLarge { .. }
        | CommandError::Syntax
        | CommandError::Invalid(_) => Status::invalid_argument(message),
        CommandError::CrossSlot => Status::invalid_argument(message),
        // Nothing was written: any request may be retried as it is.
        CommandError::ShuttingDown
        | CommandError::TryAgain(_)
        | CommandError::Locked(_)
        | CommandError::TxnAborted
        | CommandError::ReadChanged => Status::unavailable(message),
        // The write may or may not have happened: UNKNOWN, so that no client retries it blindly.
        CommandError::OutcomeUnknown(_) => Status::unknown(message),
        CommandError::Fatal(_) | CommandError::Storage(_) => Status::internal(message),
    }
}

/// A reply variant the executor's contract rules out for this command.
fn unexpected(reply: &Reply) -> Status {
    tracing::error!(?reply, "executor returned an unexpected reply variant");
    Status::internal("unexpected reply from the executor")
}
