//! `cairn.peer.v1.Node`: what nodes ask each other besides Raft messages. A node joins the
//! cluster through any member (`Join`, answered by the metadata leader), and any node forwards
//! a client's command to the node that leads the command's shard (`Forward`).
//!
//! Forwarded commands and their results cross the wire in postcard's encoding of
//! [`Command`] and `Result<Reply, CommandError>`, an internal format bound to the build (nodes
//! of one cluster run one version). The service shares the node's gRPC address and, through
//! [`Peers`], the one connection per node pair that Raft traffic uses.
//!
//! Failures keep the outcome honest: a forwarded read that fails in transit is `TRYAGAIN`
//! (nothing changed); a forwarded write that may have reached the leader is `outcome unknown`,
//! unless the connection was never made.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::peer as pb;
use cairn_raft::Peers;
use tonic::{Request, Response, Status};

use crate::command::Command;
use crate::error::CommandError;
use crate::meta::{NodeRecord, Removal, RemovalCause};
use crate::node::Node;
use crate::reply::Reply;

/// Most times a command is forwarded before a node answers `TRYAGAIN` (leaders that moved
/// twice within one request).
pub const FORWARD_HOPS_MAX: u32 = 2;
/// How long a small forwarded write may take, including its commit on the leader (a large
/// one longer, for its bytes).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded read may take before it is answered `TRYAGAIN` (and retried, by then
/// perhaps toward a new leader).
pub const FORWARD_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest forwarded message: a command or a reply (many values of a multi-key command, a
/// whole-keyspace read's part) of up to 512 MiB, Redis's largest bulk, plus framing.
const FORWARD_MESSAGE_BYTES_MAX: usize = 512 * 1024 * 1024 + 1024 * 1024;
/// Largest message the node service sends: a forwarded reply, or a follow message (which
/// its followers take up to [`crate::node::follow::FOLLOW_MESSAGE_BYTES_MAX`]).
const SERVICE_MESSAGE_BYTES_MAX: usize =
    if FORWARD_MESSAGE_BYTES_MAX > crate::node::follow::FOLLOW_MESSAGE_BYTES_MAX {
        FORWARD_MESSAGE_BYTES_MAX
    } else {
        crate::node::follow::FOLLOW_MESSAGE_BYTES_MAX
    };
/// How long a joining node keeps asking before it gives up.
pub const JOIN_WAIT: Duration = Duration::from_secs(60);
/// Pause between join attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How long one join request may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream of a `Follow` call ([`Node::serve_follow`]).
pub type FollowStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::FollowMessage, Status>> + Send + 'static>,
>;

/// The service over one node.
#[derive(Debug)]
pub struct NodeService {
    node: Arc<Node>,
}

impl NodeService {
    pub fn new(node: Arc<Node>) -> NodeService {
        NodeService { node }
    }

    pub fn into_server(self) -> pb::node_server::NodeServer<NodeService> {
        pb::node_server::NodeServer::new(self)
            .max_decoding_message_size(FORWARD_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(SERVICE_MESSAGE_BYTES_MAX)
    }
}

fn encode_result(result: &Result<Reply, CommandError>) -> Vec<u8> {
    postcard::to_stdvec(result).expect("a result serialises")
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = request.into_inner();
        let meta = self.node.meta();
        if !meta.is_leader() {
            let redirect = meta
                .leader_addr()
                .ok_or_else(|| Status::unavailable("the metadata group has no leader"))?;
            return Ok(Response::new(pb::JoinResponse {
                redirect,
                ..Default::default()
            }));
        }
        let config = meta
            .config()
            .ok_or_else(|| Status::unavailable("the cluster map is not written yet"))?;
        if r.name.len() != 40 || !r.name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(
                "a node name is 40 hexadecimal characters",
            ));
        }
        let name = r.name.clone();
        if let Some(gone) = meta.removals().into_iter().find(|g| g.name == name) {
            return Err(refused(&gone));
        }
        let raft_id = meta
            .register(NodeRecord {
                raft_id: 0,
                name: r.name,
                grpc_addr: r.grpc_addr,
                http_addr: r.http_addr,
                resp_addr: r.resp_addr,
                down: false,
                leaving: false,
            })
            .await
            .map_err(
                |e| match meta.removals().into_iter().find(|g| g.name == name) {
                    // Removed meanwhile (the check above read a replica that lagged).
                    Some(gone) => refused(&gone),
                    None => Status::unavailable(e.to_string()),
                },
            )?;
        tracing::info!(raft_id, "node admitted to the cluster");
        Ok(Response::new(pb::JoinResponse {
            redirect: String::new(),
            raft_id,
            shards: config.shards,
        }))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let r = request.into_inner();
        let command: Command = postcard::from_bytes(&r.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        let scope = scope_of(&r)?;
        let floor = r.floor.map(|f| (f.shard, f.index));
        let execute = self.node.execute_forwarded(command, r.hops, r.stale, scope);
        let result = match floor {
            Some(floor) => crate::node::READ_FLOOR.scope(floor, execute).await,
            None => execute.await,
        };
        Ok(Response::new(pb::ForwardResponse {
            result: encode_result(&result).into(),
        }))
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<FollowStream>, Status> {
        let r = request.into_inner();
        let after = (!r.from_now).then_some(r.after);
        self.node.serve_follow(r.shard, after).map(Response::new)
    }

    async fn manage(
        &self,
        request: Request<pb::ManageRequest>,
    ) -> Result<Response<pb::ManageResponse>, Status> {
        let request: crate::balancer::Manage = postcard::from_bytes(&request.into_inner().request)
            .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
        let result = crate::balancer::serve(&self.node, request).await;
        Ok(Response::new(pb::ManageResponse {
            result: postcard::to_stdvec(&result)
                .expect("a result serialises")
                .into(),
        }))
    }
}

/// Whether `status` says the request never left this node: the connection it needed was
/// never made. tonic wraps every failure to establish a connection (refused, unreachable,
/// connect timeout) in [`tonic::ConnectError`] and keeps it in the status's source chain; a
/// failure after the connection existed never carries one, so its request may have arrived.
fn never_sent(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = cause {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn forward_request(
    command: &Command,
    hops: u32,
    stale: bool,
    scope: Option<crate::node::Scope>,
) -> pb::ForwardRequest {
    pb::ForwardRequest {
        command: postcard::to_stdvec(command)
            .expect("a command serialises")
            .into(),
        hops,
        stale,
        shard: scope.map(|s| s.shard),
        slots: scope
            .and_then(|s| s.slots)
            .map(|(first, last)| pb::SlotRange {
                first: first.into(),
                last: last.into(),
            }),
        floor: None,
    }
}

/// What a forwarded request is limited to, as [`forward_request`] wrote it.
fn scope_of(request: &pb::ForwardRequest) -> Result<Option<crate::node::Scope>, Status> {
    let slots = match &request.slots {
        Some(range) => Some(slot_range(range)?),
        None => None,
    };
    Ok(request
        .shard
        .map(|shard| crate::node::Scope { shard, slots }))
}

/// A slot range from the wire: both ends slots, in order.
fn slot_range(range: &pb::SlotRange) -> Result<(u16, u16), Status> {
    let slot = |n: u32| {
        u16::try_from(n)
            .ok()
            .filter(|&s| s < crate::slot::SLOT_COUNT)
    };
    match (slot(range.first), slot(range.last)) {
        (Some(first), Some(last)) if first <= last => Ok((first, last)),
        _ => Err(Status::invalid_argument(format!(
            "bad slot range {}-{}",
            range.first, range.last
        ))),
    }
}

/// How long a forwarded command of `bytes` (encoded) waits for its answer. A read is safe to
/// give up on early (the caller retries it); a write waits for its commit, and a large one
/// for its bytes to cross twice (to the leader, then from it to a follower, which the
/// leader's own wait allows for: `proposer::commit_wait`).
pub(crate) fn forward_timeout(is_write: bool, bytes: usize) -> Duration {
    if is_write {
        let crossing = crate::proposer::commit_wait(bytes) - crate::proposer::COMMIT_WAIT;
        FORWARD_TIMEOUT + crossing * 2
    } else {
        FORWARD_READ_TIMEOUT
    }
}

/// Sends `command` to the node at gRPC address `addr` (which leads its shard, or forwards it
/// once more), as forward number `hops`; `scope` limits a FLUSHDB or a whole-keyspace read
/// to one shard.
pub async fn forward(
    peers: &Peers,
    addr: &str,
    command: &Command,
    hops: u32,
    stale: bool,
    scope: Option<crate::node::Scope>,
    floor: Option<(u32, u64)>,
) -> Result<Reply, CommandError> {
    let is_write = command.is_write();
    let lost = |why: String| {
        if is_write {
            CommandError::OutcomeUnknown(format!("forwarding to {addr} failed: {why}"))
        } else {
            CommandError::TryAgain(format!("forwarding to {addr} failed: {why}"))
        }
    };
    let channel = peers
        .channel(addr)
        .map_err(|e| CommandError::TryAgain(format!("bad peer address {addr}: {e}")))?;
    let mut client = pb::node_client::NodeClient::new(channel)
        .max_decoding_message_size(FORWARD_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(FORWARD_MESSAGE_BYTES_MAX);
    let mut request = forward_request(command, hops, stale, scope);
    request.floor = floor.map(|(shard, index)| pb::ReadFloor { shard, index });
    let timeout = forward_timeout(is_write, request.command.len());
    match tokio::time::timeout(timeout, client.forward(request)).await {
        Err(_) => Err(lost(format!("no answer within {timeout:?}"))),
        Ok(Err(status)) if never_sent(&status) => Err(CommandError::TryAgain(format!(
            "node {addr} is unreachable: {}",
            status.message()
        ))),
        Ok(Err(status)) => Err(lost(status.message().to_string())),
        Ok(Ok(response)) => match postcard::from_bytes(&response.into_inner().result) {
            // The node that took the request failed (its disk, its log): its shards fail over
            // to other nodes, so for the client this is a write of unknown outcome (or a read
            // to retry), not this node's failure.
            Ok(Err(CommandError::Fatal(why))) => Err(lost(format!("node {addr} failed: {why}"))),
            Ok(result) => result,
            Err(e) => Err(lost(format!("undecodable answer: {e}"))),
        },
    }
}

/// The gRPC metadata key of a refused `Join` that names the node's
/// [`crate::meta::RemovalCause`].
pub const REMOVED_METADATA: &str = "cairn-removed";

/// The status a removed node's `Join` is refused with: FAILED_PRECONDITION, the
/// [`Removal::refusal`], and the cause in the [`REMOVED_METADATA`] metadata.
fn refused(gone: &Removal) -> Status {
    let mut status = Status::failed_precondition(gone.refusal());
    status.metadata_mut().insert(
        REMOVED_METADATA,
        tonic::metadata::MetadataValue::from_static(gone.cause.as_str()),
    );
    status
}

/// The cluster refused to admit a node because it was removed from it (or the node found
/// its removal in its own replica of the map).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Removed {
    /// The refusal, in words.
    pub reason: String,
    /// Why it was removed; `None` when a refusal did not say (a metadata leader of an older
    /// build): the node then stops but keeps its data.
    pub cause: Option<RemovalCause>,
}

impl From<&Removal> for Removed {
    fn from(removal: &Removal) -> Removed {
        Removed {
            reason: removal.refusal(),
            cause: Some(removal.cause),
        }
    }
}

/// Asks the cluster that `addr` belongs to to admit this node; follows redirects to the
/// metadata leader and retries for up to [`JOIN_WAIT`]. Returns the Raft id and shard count.
pub async fn join(peers: &Peers, addr: &str, me: &NodeRecord) -> anyhow::Result<(u64, u32)> {
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    let mut target = addr.to_string();
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut client = pb::node_client::NodeClient::new(peers.channel(&target)?);
            let response = client
                .join(pb::JoinRequest {
                    name: me.name.clone(),
                    grpc_addr: me.grpc_addr.clone(),
                    http_addr: me.http_addr.clone(),
                    resp_addr: me.resp_addr.clone(),
                })
                .await?;
            anyhow::Ok(response.into_inner())
        };
        match tokio::time::timeout(JOIN_TIMEOUT, attempt).await {
            Ok(Ok(r)) if !r.redirect.is_empty() => {
                tracing::info!(leader = %r.redirect, "joining through the metadata leader");
                target = r.redirect;
                continue;
            }
            Ok(Ok(r)) if r.raft_id > 0 && r.shards > 0 => return Ok((r.raft_id, r.shards)),
            Ok(Ok(r)) => last_error = format!("malformed answer {r:?}"),
            Ok(Err(e)) => {
                if let Some(status) = e.downcast_ref::<Status>() {
                    if status.code() == tonic::Code::FailedPrecondition {
                        let cause = status
                            .metadata()
                            .get(REMOVED_METADATA)
                            .and_then(|v| v.to_str().ok())
                            .and_then(RemovalCause::parse);
                        return Err(Removed {
                            reason: status.message().to_string(),
                            cause,
                        }
                        .into());
                    }
                }
                last_error = format!("{e:#}")
            }
            Err(_) => last_error = "timed out".into(),
        }
        tracing::info!(via = %target, error = %last_error, "join not answered yet; retrying");
        target = addr.to_string();
        tokio::time::sleep(JOIN_RETRY).await;
    }
    anyhow::bail!("could not join the cluster through {addr} within {JOIN_WAIT:?}: {last_error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Scope;

    #[test]
    fn a_forwarded_scope_crosses_the_wire_whole_and_bad_slots_are_refused() {
        let cmd = Command::DbSize;
        for scope in [
            None,
            Some(Scope::shard(7)),
            Some(Scope {
                shard: 7,
                slots: Some((0, 16383)),
            }),
            Some(Scope {
                shard: 9,
                slots: Some((4096, 4096)),
            }),
        ] {
            let request = forward_request(&cmd, 1, false, scope);
            assert_eq!(scope_of(&request).unwrap(), scope);
        }
        for (first, last) in [(5, 4), (0, 16384), (70000, 70001)] {
            let mut request = forward_request(&cmd, 1, false, Some(Scope::shard(1)));
            request.slots = Some(pb::SlotRange { first, last });
            let refused = scope_of(&request).unwrap_err();
            assert_eq!(
                refused.code(),
                tonic::Code::InvalidArgument,
                "{first}-{last}"
            );
        }
    }

    #[tokio::test]
    async fn a_write_to_a_node_that_refuses_connections_is_retriable() {
        // A port nobody listens on: bind, note the port, close.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let peers = Peers::new();
        let write = Command::IncrBy {
            key: bytes::Bytes::from_static(b"k"),
            delta: 1,
        };
        match forward(&peers, &addr, &write, 1, false, None, None).await {
            Err(CommandError::TryAgain(why)) => assert!(why.contains("unreachable"), "{why}"),
            other => panic!("a connection never made must be retriable, got {other:?}"),
        }
    }

    /// The same on a network other than TCP: a dial the network refuses (a cut link) is
    /// wrapped by tonic as a connection never made, so the write is retriable.
    #[tokio::test]
    async fn a_write_over_a_cut_link_of_the_in_memory_network_is_retriable() {
        use cairn_raft::transport::Network as _;
        use cairn_raft::transport::memory::MemoryNetwork;
        let net = MemoryNetwork::new();
        let (me, peer) = ("192.0.2.1:7070", "192.0.2.2:7070");
        let _listening = net
            .node(peer.parse().unwrap())
            .listen(peer.parse().unwrap())
            .await
            .unwrap();
        net.cut(me.parse().unwrap(), peer.parse().unwrap());
        let peers = Peers::over(std::sync::Arc::new(net.node(me.parse().unwrap())));
        let write = Command::IncrBy {
            key: bytes::Bytes::from_static(b"k"),
            delta: 1,
        };
        match forward(&peers, peer, &write, 1, false, None, None).await {
            Err(CommandError::TryAgain(why)) => assert!(why.contains("unreachable"), "{why}"),
            other => panic!("a connection never made must be retriable, got {other:?}"),
        }
        assert_eq!(
            net.connections(me.parse().unwrap(), peer.parse().unwrap()),
            0
        );
    }

    #[tokio::test]
    async fn a_write_whose_connection_dies_after_sending_is_of_unknown_outcome() {
        const KEY: &[u8] = b"the-request-arrived";
        // A peer that accepts the connection, reads the request, then hangs up unanswered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peer = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the request's body (which holds the key) has arrived.
            while !received.windows(KEY.len()).any(|w| w == KEY) {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            received.windows(KEY.len()).any(|w| w == KEY)
        });
        let peers = Peers::new();
        let write = Command::IncrBy {
            key: bytes::Bytes::from_static(KEY),
            delta: 1,
        };
        let result = forward(&peers, &addr, &write, 1, false, None, None).await;
        assert!(peer.await.unwrap(), "the request reached the peer");
        match result {
            Err(CommandError::OutcomeUnknown(_)) => {}
            other => {
                panic!("a write that may have arrived must be of unknown outcome, got {other:?}")
            }
        }
    }

    /// A peer that accepts a connection and reads what comes, then hangs up (`hang_up`) or
    /// holds the connection open without a word.
    async fn silent_peer(hang_up: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let mut received = 0;
            // Until the request's body (its HTTP/2 preface, headers and data) has arrived.
            while received < 64 {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received += n,
                }
            }
            if !hang_up {
                std::future::pending::<()>().await;
            }
        });
        addr
    }

    /// A read lost in transit changed nothing: it is answered `TRYAGAIN` (the client retries
    /// it, by then perhaps toward a new leader), whether the peer hung up or never answered.
    #[tokio::test]
    async fn a_read_lost_in_transit_is_retriable() {
        let read = Command::Get {
            key: bytes::Bytes::from_static(b"k"),
        };
        let peers = Peers::new();
        let addr = silent_peer(true).await;
        match forward(&peers, &addr, &read, 1, false, None, None).await {
            Err(CommandError::TryAgain(_)) => {}
            other => panic!("a read the peer hung up on must be retriable, got {other:?}"),
        }
        let addr = silent_peer(false).await;
        let began = std::time::Instant::now();
        match forward(&peers, &addr, &read, 1, false, None, None).await {
            Err(CommandError::TryAgain(why)) => assert!(why.contains("no answer"), "{why}"),
            other => panic!("an unanswered read must be retriable, got {other:?}"),
        }
        let waited = began.elapsed();
        assert!(waited >= FORWARD_READ_TIMEOUT, "{waited:?}");
        // A read gives up at its own short bound, never at a write's.
        assert!(waited < FORWARD_TIMEOUT, "{waited:?}");
    }

    /// A read waits its fixed short bound whatever its size; a write waits for its commit,
    /// and a large one also for its bytes to cross twice at the slowest rate the peer network
    /// assumes (a 48 MiB value at 2 MiB/s: 24 s each way).
    #[test]
    fn a_forwarded_write_waits_for_its_bytes_to_cross_twice() {
        assert_eq!(forward_timeout(false, 0), FORWARD_READ_TIMEOUT);
        assert_eq!(forward_timeout(false, 48 << 20), FORWARD_READ_TIMEOUT);
        let small = forward_timeout(true, 100);
        assert!(small >= FORWARD_TIMEOUT && small < FORWARD_TIMEOUT + Duration::from_millis(1));
        let rate = cairn_raft::network::APPEND_BYTES_PER_SEC_MIN;
        let large = forward_timeout(true, 48 << 20);
        let crossing = Duration::from_secs_f64((48u64 << 20) as f64 / rate as f64);
        assert_eq!(large, FORWARD_TIMEOUT + crossing * 2);
        assert!(
            large >= FORWARD_TIMEOUT + Duration::from_secs(48),
            "{large:?}"
        );
        // The leader's own commit wait allows for one crossing; the forwarder's two.
        assert!(large > crate::proposer::commit_wait(48 << 20));
    }

    type Floor = Option<(u32, u64)>;

    /// A node service whose every forwarded command is answered with `answer`.
    #[derive(Debug, Clone)]
    struct Answering {
        answer: Result<Reply, CommandError>,
        /// The floor of every request it took, in order.
        floors: Arc<parking_lot::Mutex<Vec<Floor>>>,
    }

    impl Answering {
        fn new(answer: Result<Reply, CommandError>) -> Answering {
            Answering {
                answer,
                floors: Arc::default(),
            }
        }
    }

    #[tonic::async_trait]
    impl pb::node_server::Node for Answering {
        async fn join(
            &self,
            _: Request<pb::JoinRequest>,
        ) -> Result<Response<pb::JoinResponse>, Status> {
            Err(Status::unimplemented("join"))
        }

        async fn forward(
            &self,
            request: Request<pb::ForwardRequest>,
        ) -> Result<Response<pb::ForwardResponse>, Status> {
            let floor = request.into_inner().floor.map(|f| (f.shard, f.index));
            self.floors.lock().push(floor);
            Ok(Response::new(pb::ForwardResponse {
                result: encode_result(&self.answer).into(),
            }))
        }

        type FollowStream = FollowStream;

        async fn follow(
            &self,
            _: Request<pb::FollowRequest>,
        ) -> Result<Response<FollowStream>, Status> {
            Err(Status::unimplemented("follow"))
        }

        async fn manage(
            &self,
            _: Request<pb::ManageRequest>,
        ) -> Result<Response<pb::ManageResponse>, Status> {
            Err(Status::unimplemented("manage"))
        }
    }

    /// Serves `service` on a fresh loopback port, for the rest of the test.
    async fn serve(service: Answering) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::node_server::NodeServer::new(service))
                .serve_with_incoming(incoming),
        );
        addr
    }

    /// A node whose disk or log failed answers its forwarded commands `Fatal`: that is the
    /// failure of the node that took them, not of this one, whose client sees a read to retry
    /// or a write of unknown outcome (the shard fails over elsewhere). Other answers, errors
    /// included, pass through as they are.
    #[tokio::test]
    async fn a_failed_node_answer_is_retriable_or_unknown_never_fatal_here() {
        let peers = Peers::new();
        let read = Command::Get {
            key: bytes::Bytes::from_static(b"k"),
        };
        let write = Command::IncrBy {
            key: bytes::Bytes::from_static(b"k"),
            delta: 1,
        };
        let failed = serve(Answering::new(Err(CommandError::Fatal(
            "the log's fsync failed".into(),
        ))))
        .await;
        match forward(&peers, &failed, &read, 1, false, None, None).await {
            Err(CommandError::TryAgain(why)) => assert!(why.contains("fsync failed"), "{why}"),
            other => panic!("a read answered by a failed node must be retriable, got {other:?}"),
        }
        match forward(&peers, &failed, &write, 1, false, None, None).await {
            Err(CommandError::OutcomeUnknown(why)) => {
                assert!(why.contains("fsync failed"), "{why}")
            }
            other => {
                panic!("a write answered by a failed node is of unknown outcome, got {other:?}")
            }
        }
        let answered = serve(Answering::new(Ok(Reply::Int(41)))).await;
        assert_eq!(
            forward(&peers, &answered, &write, 1, false, None, None).await,
            Ok(Reply::Int(41))
        );
        let refused = serve(Answering::new(Err(CommandError::TryAgain(
            "the shard is splitting".into(),
        ))))
        .await;
        assert_eq!(
            forward(&peers, &refused, &read, 1, false, None, None).await,
            Err(CommandError::TryAgain("the shard is splitting".into()))
        );
        assert_eq!(
            forward(&peers, &refused, &write, 1, false, None, None).await,
            Err(CommandError::TryAgain("the shard is splitting".into()))
        );
    }

    /// A forwarded read's floor crosses the wire as the forwarder gave it.
    #[tokio::test]
    async fn a_read_floor_crosses_to_the_serving_node() {
        let peers = Peers::new();
        let service = Answering::new(Ok(Reply::Int(1)));
        let floors = service.floors.clone();
        let addr = serve(service).await;
        let read = Command::DbSize;
        forward(&peers, &addr, &read, 1, true, None, Some((3, 77)))
            .await
            .unwrap();
        forward(&peers, &addr, &read, 1, false, None, None)
            .await
            .unwrap();
        assert_eq!(*floors.lock(), vec![Some((3, 77)), None]);
    }
}
