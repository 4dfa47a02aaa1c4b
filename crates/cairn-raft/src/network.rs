//! The client side of the peer network: openraft's `RaftNetworkFactory` over gRPC
//! (`cairn.peer.v1.Raft`, see `proto/cairn/peer/v1/raft.proto`).
//!
//! [`Peers`] holds one tonic channel, one HTTP/2 connection, per peer address; every group on
//! this node sends through it, each RPC a stream of that connection, so many groups share one
//! connection per node pair. [`GroupNetwork`] is one group's factory: it stamps the group id on
//! every message. Snapshots stream as a header and then the checkpoint's chunks, read from disk
//! as the stream is polled.
//!
//! A transport failure (connection refused, reset, deadline) is `Unreachable`, and openraft
//! backs off; a reply that does not decode is a `NetworkError`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::peer::raft_client::RaftClient;
use cairn_proto::peer::{self as pb, append_response::Outcome, snapshot_message::Part};
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
use crate::snapshot::{CHUNK_BYTES_DEFAULT, ShardSnapshot};
use crate::types::{NodeAddr, Snapshot, TypeConfig, Vote};

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP and HTTP/2 keepalive toward peers: a dead peer is noticed without waiting for an RPC.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Connections to peers, shared by every group on the node.
#[derive(Debug, Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// The channel to `addr` (`host:port`), connected lazily and reconnected by tonic.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(KEEPALIVE))
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A network factory for `group`.
    pub fn group(self: &Arc<Self>, group: u64) -> GroupNetwork {
        GroupNetwork {
            peers: self.clone(),
            group,
        }
    }
}

/// One group's network factory.
#[derive(Debug, Clone)]
pub struct GroupNetwork {
    peers: Arc<Peers>,
    group: u64,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerConn {
        PeerConn {
            group: self.group,
            target,
            client: self
                .peers
                .channel(&node.grpc)
                .map(RaftClient::new)
                .map_err(|e| e.to_string()),
        }
    }
}

/// One group's connection to one peer.
#[derive(Debug)]
pub struct PeerConn {
    group: u64,
    target: u64,
    /// The client, or why the peer's address is unusable.
    client: Result<RaftClient<Channel>, String>,
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

/// An append request on the wire.
pub(crate) fn encode_append(
    group: u64,
    target: u64,
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> pb::AppendRequest {
    pb::AppendRequest {
        group,
        target,
        vote: encode_vote(&rpc.vote),
        prev_log_id: encode_opt_log_id(rpc.prev_log_id.as_ref()),
        entries: rpc.entries.iter().map(encode_entry).collect(),
        leader_commit: encode_opt_log_id(rpc.leader_commit.as_ref()),
    }
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
        let request = encode_append(self.group, self.target, &rpc);
        let mut client = self.client()?;
        let reply = self.call(option.hard_ttl(), client.append(request)).await?;
        decode_append_response(&reply).map_err(|e| bad_reply(e).into())
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
        let stream = futures::stream::iter(parts.map(|p| pb::SnapshotMessage { part: Some(p) }));
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
