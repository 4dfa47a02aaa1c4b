//! The client side of the peer network: openraft's `RaftNetworkFactory` over gRPC
//! (`cairn.peer.v1.Raft`, see `proto/cairn/peer/v1/raft.proto`).
//!
//! [`Peers`] holds one tonic channel, one HTTP/2 connection, per peer address; every group on
//! this node sends through it, so many groups share one connection per node pair. Appends
//! (entries and heartbeats, nearly all of the traffic) go on one long-lived `Appends` stream
//! per node pair ([`AppendLink`]): every append waiting when the link's task runs goes out in
//! one message, and replies come back the same way, matched by id, instead of an HTTP/2
//! stream per append. Votes, leadership transfers and snapshots are RPCs of their own.
//! [`GroupNetwork`] is one group's factory: it stamps the group id and the target node's id
//! on every message. Snapshots stream as a header and then the checkpoint's chunks, read from
//! disk as the stream is polled.
//!
//! A transport failure (connection refused, reset, deadline) is `Unreachable`, and openraft
//! backs off; a reply that does not decode is a `NetworkError`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::peer::raft_client::RaftClient;
use cairn_proto::peer::{self as pb, append_response::Outcome, snapshot_message::Part};
use futures::StreamExt;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::codec::{
    decode_opt_log_id, decode_vote, encode_applied, encode_entry, encode_opt_log_id, encode_vote,
};
use crate::rate::{SendRate, Transfer, Transfers};
use crate::snapshot::{CHUNK_BYTES_DEFAULT, ShardSnapshot};
use crate::transport::{BoxConn, Network, Tcp};
use crate::types::{NodeAddr, Snapshot, TypeConfig, Vote};

/// HTTP/2 keepalive toward peers: a dead peer is noticed without waiting for an RPC.
const KEEPALIVE: Duration = crate::transport::KEEPALIVE;

/// Connections to peers, shared by every group on the node.
#[derive(Debug)]
pub struct Peers {
    /// What the connections run over.
    network: Arc<dyn Network>,
    channels: Mutex<HashMap<String, Channel>>,
    /// The `Appends` stream to each peer address, shared by every group.
    links: Mutex<HashMap<String, Arc<AppendLink>>>,
    /// The bound on the bytes per second of snapshots sent, every group together.
    snapshot_rate: Arc<SendRate>,
    /// The snapshots being sent.
    transfers: Arc<Transfers>,
}

impl Default for Peers {
    fn default() -> Peers {
        Peers::new()
    }
}

impl Peers {
    /// Peers reached over TCP.
    pub fn new() -> Peers {
        Peers::over(Arc::new(Tcp))
    }

    /// Peers reached over `network`.
    pub fn over(network: Arc<dyn Network>) -> Peers {
        Peers {
            network,
            channels: Mutex::default(),
            links: Mutex::default(),
            snapshot_rate: Arc::new(SendRate::new(0)),
            transfers: Arc::default(),
        }
    }

    /// The snapshots these peers are sending, with their progress.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.transfers.list()
    }

    /// Bounds the snapshots these peers send to `bytes_per_sec`, all groups together (0: no
    /// bound).
    pub fn with_snapshot_rate(mut self, bytes_per_sec: u64) -> Peers {
        self.snapshot_rate = Arc::new(SendRate::new(bytes_per_sec));
        self
    }

    /// What the connections run over.
    pub fn network(&self) -> &Arc<dyn Network> {
        &self.network
    }

    /// The channel to `addr` (`host:port`), connected lazily (through the network) and
    /// reconnected by tonic.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(crate::transport::CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(Dial {
                network: self.network.clone(),
                addr: addr.to_string(),
            });
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The append stream to `addr`, opened on first use.
    fn link(&self, addr: &str) -> Result<Arc<AppendLink>, tonic::transport::Error> {
        if let Some(link) = self.links.lock().get(addr) {
            return Ok(link.clone());
        }
        let channel = self.channel(addr)?;
        let mut links = self.links.lock();
        Ok(links
            .entry(addr.to_string())
            .or_insert_with(|| AppendLink::start(channel))
            .clone())
    }

    /// A network factory for `group`.
    pub fn group(self: &Arc<Self>, group: u64) -> GroupNetwork {
        GroupNetwork {
            peers: self.clone(),
            group,
            leader_out_of_touch: Arc::default(),
        }
    }
}

/// tonic's connector: every connection of a channel is dialled through the network (tonic
/// wraps a failure in `ConnectError`, so callers can tell a request that never left).
#[derive(Debug, Clone)]
struct Dial {
    network: Arc<dyn Network>,
    addr: String,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Dial {
    type Response = hyper_util::rt::TokioIo<BoxConn>;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, std::io::Result<Self::Response>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let dialing = self.network.dial(&self.addr);
        Box::pin(async move { dialing.await.map(hyper_util::rt::TokioIo::new) })
    }
}

/// One group's network factory.
#[derive(Debug, Clone)]
pub struct GroupNetwork {
    peers: Arc<Peers>,
    group: u64,
    /// Set by the group while it leads without a quorum's recent acknowledgement; carried on
    /// every append (see `Group::in_touch`).
    leader_out_of_touch: Arc<std::sync::atomic::AtomicBool>,
}

impl GroupNetwork {
    /// The flag its appends carry ([`GroupNetwork::leader_out_of_touch`]).
    pub(crate) fn leader_out_of_touch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.leader_out_of_touch.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerConn {
        PeerConn {
            group: self.group,
            target,
            leader_out_of_touch: self.leader_out_of_touch.clone(),
            client: self
                .peers
                .channel(&node.grpc)
                .map(RaftClient::new)
                .map_err(|e| e.to_string()),
            link: self.peers.link(&node.grpc).map_err(|e| e.to_string()),
            snapshot_rate: self.peers.snapshot_rate.clone(),
            transfers: self.peers.transfers.clone(),
        }
    }
}

/// One group's connection to one peer.
#[derive(Debug)]
pub struct PeerConn {
    group: u64,
    target: u64,
    leader_out_of_touch: Arc<std::sync::atomic::AtomicBool>,
    /// The client, or why the peer's address is unusable.
    client: Result<RaftClient<Channel>, String>,
    /// The node pair's append stream, or why the peer's address is unusable.
    link: Result<Arc<AppendLink>, String>,
    /// The node's bound on snapshot bytes per second.
    snapshot_rate: Arc<SendRate>,
    /// The node's snapshots under way.
    transfers: Arc<Transfers>,
}

/// A snapshot's messages as they are sent: each chunk waits for its share of the node's
/// snapshot `rate`, then counts in the transfer's `progress` (listed while the stream lives).
fn paced(
    parts: impl futures::Stream<Item = Part> + Send + 'static,
    rate: Arc<SendRate>,
    progress: crate::rate::TransferGuard,
) -> impl futures::Stream<Item = pb::SnapshotMessage> + Send + 'static {
    let progress = Arc::new(progress);
    parts.then(move |part| {
        let (rate, progress) = (rate.clone(), progress.clone());
        async move {
            if let Part::Chunk(chunk) = &part {
                rate.take(chunk.data.len()).await;
                progress.sent(chunk.data.len() as u64);
            }
            pb::SnapshotMessage { part: Some(part) }
        }
    })
}

/// `parts` as a stream whose every item is taken on a blocking thread: a chunk is read from
/// disk and checksummed there, not on one of the node's runtime threads, which serve client
/// requests meanwhile (a runtime thread held for a megabyte's read and CRC delays every
/// request queued behind it).
fn read_off_runtime<I>(parts: I) -> impl futures::Stream<Item = Part> + Send + 'static
where
    I: Iterator<Item = Part> + Send + 'static,
{
    futures::stream::unfold(Some(parts), |parts| async move {
        let mut parts = parts?;
        let (parts, part) = tokio::task::spawn_blocking(move || {
            let part = parts.next();
            (parts, part)
        })
        .await
        .ok()?;
        part.map(|part| (part, Some(parts)))
    })
}

fn unreachable(e: &(impl std::error::Error + 'static)) -> Unreachable<TypeConfig> {
    Unreachable::new(e)
}

fn bad_reply(e: std::io::Error) -> NetworkError<TypeConfig> {
    NetworkError::new(&e)
}

impl PeerConn {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        self.client
            .clone()
            .map_err(|why| unreachable(&std::io::Error::other(format!("peer address: {why}"))))
    }

    fn link(&self) -> Result<Arc<AppendLink>, Unreachable<TypeConfig>> {
        self.link
            .clone()
            .map_err(|why| unreachable(&std::io::Error::other(format!("peer address: {why}"))))
    }

    /// Runs `call` within `ttl`; a timeout or a transport status is `Unreachable`.
    async fn call<T>(
        &self,
        ttl: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Unreachable<TypeConfig>> {
        match tokio::time::timeout(ttl, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(unreachable(&status)),
            Err(elapsed) => Err(unreachable(&elapsed)),
        }
    }

    async fn vote_rpc(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        pre_vote: bool,
        ttl: Duration,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = pb::VoteRequest {
            group: self.group,
            vote: encode_vote(&rpc.vote),
            last_log_id: encode_opt_log_id(rpc.last_log_id.as_ref()),
            leadership_transfer: rpc.leadership_transfer,
            pre_vote,
            target: self.target,
        };
        let mut client = self.client()?;
        let reply = self.call(ttl, client.vote(request)).await?;
        let decoded = (|| {
            Ok::<_, std::io::Error>(VoteResponse {
                vote: decode_vote(&reply.vote)?,
                vote_granted: reply.granted,
                last_log_id: decode_opt_log_id(&reply.last_log_id)?,
            })
        })();
        decoded.map_err(|e| bad_reply(e).into())
    }
}

/// Most appends waiting to be put on a node pair's stream; senders wait beyond it.
const LINK_QUEUE_MAX: usize = 4096;
/// Most appends in one message of the stream.
const LINK_BATCH_MAX: usize = crate::service::APPENDS_PER_MESSAGE_MAX;
use crate::service::{APPEND_BYTES_MAX, APPENDS_MESSAGE_BYTES_MAX, STREAM_APPEND_BYTES_MAX};

type AppendReply = Result<pb::AppendResponse, tonic::Status>;

/// About what `request` takes on the wire: its entries and a bound on the fields around them.
fn append_bytes(request: &pb::AppendRequest) -> usize {
    const FIELDS_BYTES_MAX: usize = 256;
    request.entries.iter().map(|e| e.len() + 8).sum::<usize>() + FIELDS_BYTES_MAX
}

/// One node pair's `Appends` stream: every group's appends to that peer (of at most
/// [`STREAM_APPEND_BYTES_MAX`]) go out on it, as many per message as are waiting when the
/// link task gets to run, and replies are matched to their callers by id. The stream is opened on first use and again after it breaks; a
/// break fails every append in flight on it (openraft sees `Unreachable` and retries).
#[derive(Debug)]
pub(crate) struct AppendLink {
    queue:
        tokio::sync::mpsc::Sender<(pb::AppendRequest, tokio::sync::oneshot::Sender<AppendReply>)>,
}

/// Appends sent on one stream and not answered yet, by id; once the stream has ended, why.
type Pending = Arc<Mutex<PendingState>>;

#[derive(Debug, Default)]
struct PendingState {
    callers: HashMap<u64, tokio::sync::oneshot::Sender<AppendReply>>,
    ended: Option<tonic::Status>,
}

impl AppendLink {
    fn start(channel: Channel) -> Arc<AppendLink> {
        let (queue, mut waiting) = tokio::sync::mpsc::channel::<(
            pb::AppendRequest,
            tokio::sync::oneshot::Sender<AppendReply>,
        )>(LINK_QUEUE_MAX);
        tokio::spawn(async move {
            let mut next_id = 0u64;
            // The open stream: where batches go, and its unanswered appends.
            let mut open: Option<(tokio::sync::mpsc::Sender<pb::AppendBatch>, Pending)> = None;
            // An append that did not fit in the last message: the next one starts with it.
            let mut carried = None;
            loop {
                let first = match carried.take() {
                    Some(first) => first,
                    None => match waiting.recv().await {
                        Some(first) => first,
                        None => break,
                    },
                };
                let mut bytes = append_bytes(&first.0);
                let mut batch = vec![first];
                while batch.len() < LINK_BATCH_MAX {
                    match waiting.try_recv() {
                        Ok(more) => {
                            let more_bytes = append_bytes(&more.0);
                            if bytes + more_bytes > APPENDS_MESSAGE_BYTES_MAX {
                                carried = Some(more);
                                break;
                            }
                            bytes += more_bytes;
                            batch.push(more);
                        }
                        Err(_) => break,
                    }
                }
                if open
                    .as_ref()
                    .is_none_or(|(tx, pending)| tx.is_closed() || pending.lock().ended.is_some())
                {
                    open = Some(Self::open(channel.clone()));
                }
                let (tx, pending) = open.as_ref().expect("opened above");
                let mut appends = Vec::with_capacity(batch.len());
                {
                    let mut pending = pending.lock();
                    // Callers that gave up (their deadline passed) are dropped here, so a peer
                    // that never answers some appends cannot grow the map without bound.
                    if pending.callers.len() >= LINK_QUEUE_MAX {
                        pending.callers.retain(|_, caller| !caller.is_closed());
                    }
                    for (request, reply) in batch {
                        // Its caller gave up (its deadline passed): sending it would only
                        // hold up the appends behind it.
                        if reply.is_closed() {
                            continue;
                        }
                        if let Some(why) = &pending.ended {
                            let _ = reply.send(Err(why.clone()));
                            continue;
                        }
                        next_id += 1;
                        pending.callers.insert(next_id, reply);
                        appends.push(pb::TaggedAppend {
                            id: next_id,
                            request: Some(request),
                        });
                    }
                }
                if appends.is_empty() {
                    continue;
                }
                if tx.send(pb::AppendBatch { appends }).await.is_err() {
                    // The stream ended while we were sending: its reader fails what it held.
                    open = None;
                }
            }
        });
        Arc::new(AppendLink { queue })
    }

    /// Opens a stream on `channel`; a task reads its replies until it ends, then fails every
    /// append still waiting on it.
    fn open(channel: Channel) -> (tokio::sync::mpsc::Sender<pb::AppendBatch>, Pending) {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<pb::AppendBatch>(LINK_QUEUE_MAX / LINK_BATCH_MAX);
        let pending: Pending = Arc::default();
        let outgoing = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let failure = match RaftClient::new(channel).appends(outgoing).await {
                Err(status) => status,
                Ok(response) => {
                    let mut replies = response.into_inner();
                    loop {
                        match replies.next().await {
                            Some(Ok(message)) => {
                                let mut pending = reader_pending.lock();
                                for reply in message.replies {
                                    let Some(caller) = pending.callers.remove(&reply.id) else {
                                        continue;
                                    };
                                    let _ = caller.send(match (reply.code, reply.response) {
                                        (0, Some(response)) => Ok(response),
                                        (0, None) => Err(tonic::Status::internal(
                                            "an append reply without its response",
                                        )),
                                        (code, _) => Err(tonic::Status::new(
                                            tonic::Code::from(code as i32),
                                            reply.error,
                                        )),
                                    });
                                }
                            }
                            Some(Err(status)) => break status,
                            None => break tonic::Status::unavailable("append stream ended"),
                        }
                    }
                }
            };
            // Under one lock: no append joins the stream after its callers are failed.
            let mut pending = reader_pending.lock();
            for (_, caller) in pending.callers.drain() {
                let _ = caller.send(Err(failure.clone()));
            }
            pending.ended = Some(failure);
        });
        (tx, pending)
    }

    /// Sends `request` on the stream and waits for its reply.
    async fn append(&self, request: pb::AppendRequest) -> AppendReply {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send((request, reply))
            .await
            .map_err(|_| tonic::Status::unavailable("append link stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("append stream broke")))
    }
}

/// The slowest a peer link is assumed to carry an append (and the follower to write and
/// sync it), for its deadline: see [`append_deadline`]. 2 MiB/s (about 17 Mbit/s) is well
/// below any link between servers; a deadline too long costs little, since a follower that
/// is gone is noticed by its heartbeats (a call of their own) and a broken connection fails
/// the append at once, while one too short fails the append every time it is sent. (At
/// 16 MiB/s a 12 MiB value on a 4 MiB/s link stalled its shard.)
pub const APPEND_BYTES_PER_SEC_MIN: u64 = 2 << 20;

/// How long an append of `bytes` of entries may take: openraft's deadline (`ttl`, the
/// heartbeat interval, which fits a heartbeat) plus the time its bytes take at
/// [`APPEND_BYTES_PER_SEC_MIN`]. With openraft's deadline alone, an append of a few
/// mebibytes on a slower link timed out each time it was sent, and the follower (or, without
/// a majority, the shard) never got past it.
pub fn append_deadline(ttl: Duration, bytes: usize) -> Duration {
    ttl + Duration::from_secs_f64(bytes as f64 / APPEND_BYTES_PER_SEC_MIN as f64)
}

/// An append request on the wire, with as many of `rpc`'s entries as fit in
/// [`APPEND_BYTES_MAX`] (at least one): how many it took is the second value.
pub(crate) fn encode_append(
    group: u64,
    target: u64,
    rpc: &AppendEntriesRequest<TypeConfig>,
    leader_out_of_touch: bool,
) -> (pb::AppendRequest, usize) {
    let mut entries = Vec::new();
    let mut bytes = 0;
    for entry in &rpc.entries {
        let encoded = encode_entry(entry);
        if !entries.is_empty() && bytes + encoded.len() > APPEND_BYTES_MAX {
            break;
        }
        bytes += encoded.len();
        entries.push(encoded);
    }
    let taken = entries.len();
    let request = pb::AppendRequest {
        group,
        target,
        leader_out_of_touch,
        vote: encode_vote(&rpc.vote),
        prev_log_id: encode_opt_log_id(rpc.prev_log_id.as_ref()),
        entries,
        leader_commit: encode_opt_log_id(rpc.leader_commit.as_ref()),
    };
    (request, taken)
}

fn decode_append_response(
    reply: &pb::AppendResponse,
) -> std::io::Result<AppendEntriesResponse<TypeConfig>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    Ok(match reply.outcome() {
        Outcome::Success => AppendEntriesResponse::Success,
        Outcome::PartialSuccess => {
            AppendEntriesResponse::PartialSuccess(decode_opt_log_id(&reply.partial)?)
        }
        Outcome::Conflict => AppendEntriesResponse::Conflict,
        Outcome::HigherVote => AppendEntriesResponse::HigherVote(decode_vote(&reply.vote)?),
        Outcome::Unspecified => return Err(bad("append reply without an outcome")),
    })
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = ShardSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let out = self
            .leader_out_of_touch
            .load(std::sync::atomic::Ordering::Relaxed);
        // A run of entries too long for one message goes in parts: the first part's success
        // is openraft's `PartialSuccess`, and it sends the rest next. (The peer refuses a
        // message past its limit, and openraft would send the same run again and again.)
        let (request, taken) = encode_append(self.group, self.target, &rpc, out);
        let bytes: usize = request.entries.iter().map(|e| e.len()).sum();
        let deadline = append_deadline(option.hard_ttl(), bytes);
        // A large append on the shared stream would hold up every group's messages behind
        // it while it crosses: it goes on a call of its own. (openraft sends one append at a
        // time to a follower, so the two ways cannot reorder one group's appends.)
        let reply = if bytes > STREAM_APPEND_BYTES_MAX {
            let mut client = self.client()?;
            self.call(deadline, client.append(request)).await?
        } else {
            let link = self.link()?;
            let append = async { link.append(request).await.map(tonic::Response::new) };
            self.call(deadline, append).await?
        };
        let response = decode_append_response(&reply).map_err(bad_reply)?;
        Ok(match response {
            AppendEntriesResponse::Success if taken < rpc.entries.len() => {
                AppendEntriesResponse::PartialSuccess(Some(rpc.entries[taken - 1].log_id))
            }
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_rpc(rpc, false, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        use openraft::raft::TransferLeaderError;
        use pb::transfer_leader_response::Outcome as T;
        let request = pb::TransferLeaderRequest {
            group: self.group,
            from_leader: encode_vote(req.from_leader()),
            to_node: *req.to_node_id(),
            last_log_id: encode_opt_log_id(req.last_log_id()),
            target: self.target,
        };
        let mut client = self.client()?;
        let reply = self
            .call(option.hard_ttl(), client.transfer_leader(request))
            .await?;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let decoded = match reply.outcome() {
            T::Accepted => Ok(Ok(())),
            T::VoteChanged => decode_vote(&reply.vote).map(|actual| {
                Err(TransferLeaderError::VoteChanged {
                    expected: *req.from_leader(),
                    actual,
                })
            }),
            T::LogNotFlushed => decode_opt_log_id(&reply.last_log_id).map(|actual| {
                Err(TransferLeaderError::LogNotFlushed {
                    expected: req.last_log_id().cloned(),
                    actual,
                })
            }),
            T::Unspecified => Err(bad("transfer reply without an outcome")),
        };
        decoded.map_err(|e| bad_reply(e).into())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_rpc(rpc, true, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let manifest = snapshot.snapshot.manifest().map_err(|e| unreachable(&e))?;
        let header = pb::SnapshotHeader {
            group: self.group,
            vote: encode_vote(&vote),
            meta: encode_applied(
                snapshot.meta.last_log_id.as_ref(),
                &snapshot.meta.last_membership,
            ),
            files: manifest
                .files
                .iter()
                .map(|f| pb::SnapshotFile {
                    name: f.name.clone(),
                    len: f.len,
                })
                .collect(),
            last_sequence: manifest.last_sequence,
            target: self.target,
        };
        let chunks = snapshot
            .snapshot
            .chunks(CHUNK_BYTES_DEFAULT)
            .map_err(|e| unreachable(&e))?;
        // A chunk that cannot be read ends the stream early; the receiver refuses the
        // incomplete transfer and the leader tries again later.
        let target = self.target;
        let parts =
            std::iter::once(Part::Header(header)).chain(chunks.map_while(move |c| match c {
                Ok(c) => Some(Part::Chunk(pb::SnapshotChunk {
                    file: c.file,
                    offset: c.offset,
                    data: c.data,
                    crc32c: c.crc,
                })),
                Err(e) => {
                    tracing::warn!(target, error = %e, "reading a snapshot chunk failed");
                    None
                }
            }));
        let total: u64 = manifest.files.iter().map(|f| f.len).sum();
        let progress = self.transfers.begin(self.group, self.target, total);
        let stream = paced(
            read_off_runtime(parts),
            self.snapshot_rate.clone(),
            progress,
        );
        let mut client = self.client()?;
        let send = async {
            match client.snapshot(stream).await {
                Ok(reply) => Ok(reply.into_inner()),
                Err(status) => Err(unreachable(&status)),
            }
        };
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply?,
        };
        let vote = decode_vote(&reply.vote).map_err(|e| StreamingError::Network(bad_reply(e)))?;
        Ok(SnapshotResponse { vote })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Transfers;

    #[test]
    fn an_append_has_time_for_its_bytes_and_a_heartbeat_only_openraft_s() {
        let ttl = Duration::from_millis(150);
        assert_eq!(append_deadline(ttl, 0), ttl);
        // 16 MiB, the default largest value: 8 s more at the slowest link assumed.
        assert_eq!(append_deadline(ttl, 16 << 20), ttl + Duration::from_secs(8));
        assert!(append_deadline(ttl, 64 << 20) >= Duration::from_secs(32));
    }

    fn chunk(bytes: usize) -> Part {
        Part::Chunk(pb::SnapshotChunk {
            file: 0,
            offset: 0,
            data: vec![0; bytes].into(),
            crc32c: 0,
        })
    }

    /// Three chunks of 0.5 MB at 1 MB/s: the stream takes a second (the first chunk goes at
    /// once), and the transfer is listed with its bytes sent until the stream is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_stream_keeps_to_the_rate_and_reports_its_progress() {
        let rate = Arc::new(SendRate::new(1_000_000));
        let transfers = Arc::new(Transfers::default());
        let parts = vec![chunk(500_000), chunk(500_000), chunk(500_000)];
        let begin = tokio::time::Instant::now();
        let mut stream = Box::pin(paced(
            read_off_runtime(parts.into_iter()),
            rate,
            transfers.begin(1, 2, 1_500_000),
        ));
        let mut sent = Vec::new();
        while stream.next().await.is_some() {
            sent.push((begin.elapsed(), transfers.list()[0].sent_bytes));
        }
        assert_eq!(
            sent,
            vec![
                (Duration::ZERO, 500_000),
                (Duration::from_millis(500), 1_000_000),
                (Duration::from_secs(1), 1_500_000),
            ]
        );
        drop(stream);
        assert!(transfers.list().is_empty());
    }

    /// Every connection of one `Peers` draws on the same rate and the same transfer list.
    #[tokio::test]
    async fn every_connection_shares_the_nodes_rate_and_transfers() {
        let peers = Arc::new(Peers::new().with_snapshot_rate(1234));
        let mut factory = peers.group(7);
        let addr = NodeAddr {
            grpc: "127.0.0.1:1".into(),
        };
        let a = factory.new_client(2, &addr).await;
        let b = factory.new_client(3, &addr).await;
        assert!(Arc::ptr_eq(&a.snapshot_rate, &b.snapshot_rate));
        assert!(Arc::ptr_eq(&a.snapshot_rate, &peers.snapshot_rate));
        assert_eq!(a.snapshot_rate.bytes_per_sec(), 1234);
        assert!(Arc::ptr_eq(&a.transfers, &peers.transfers));
    }
}
