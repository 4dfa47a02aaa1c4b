//! The server side of the peer network: `cairn.peer.v1.Raft`, dispatching each message to its
//! group's Raft by group id.
//!
//! [`Groups`] is the node's registry of the groups it hosts; the server adds a group when it
//! starts one and removes it when it stops it. A message for a group this node does not host
//! (not created yet, or removed) is `NOT_FOUND`, and one addressed to another node id
//! `FAILED_PRECONDITION`; the sender treats both as unreachable and retries later. A snapshot is received into the group's replica and checked chunk by chunk;
//! only a complete, checked snapshot reaches `Raft::install_full_snapshot`.

use std::io;
use std::sync::Arc;

use cairn_proto::peer::{self as pb, append_response::Outcome, snapshot_message::Part};
use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{
    decode_applied, decode_entry, decode_opt_log_id, decode_vote, encode_opt_log_id, encode_vote,
};
use crate::group::Groups;
use crate::snapshot::{Chunk, Manifest};
use crate::types::{Snapshot, SnapshotMeta, TypeConfig};
use cairn_storage::checkpoint::FileInfo;

/// `cairn.peer.v1.Raft` over a node's [`Groups`].
#[derive(Debug, Clone)]
pub struct RaftService {
    groups: Arc<Groups>,
    /// Turns true when the server shuts down: `Appends` streams then stop reading and end
    /// once their appends are answered (a server drains open streams before it stops, and a
    /// peer's stream would otherwise never end).
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl RaftService {
    pub fn new(groups: Arc<Groups>) -> RaftService {
        RaftService {
            groups,
            stopping: None,
        }
    }

    /// Ends `Appends` streams when `stopping` turns true (see the field).
    pub fn ending_streams_on(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::raft_server::RaftServer<RaftService> {
        pb::raft_server::RaftServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }
}

/// The group a message is for, after checking that it is for this node: an address can pass
/// from a node to another with a new identity (its data directory lost, joined again), and a
/// message meant for the old one must not count as the new one's acknowledgement or vote.
fn find(groups: &Groups, target: u64, id: u64) -> Result<crate::group::Group, Status> {
    check_target(groups, target)?;
    groups.get(id).ok_or_else(|| not_hosted(id))
}

/// [`find`] for a leader's message (an append or a snapshot) of term `term`: a group this
/// node does not host yet is opened, if the node's [`crate::group::GroupHost`] agrees (it was
/// just added to the group). Votes never open one: a node without a replica has no vote.
async fn find_for_leader(
    groups: &Groups,
    target: u64,
    id: u64,
    vote: &[u8],
) -> Result<crate::group::Group, Status> {
    check_target(groups, target)?;
    if let Some(group) = groups.get(id) {
        return Ok(group);
    }
    if !groups.has_host() {
        return Err(not_hosted(id));
    }
    let term = decode_vote(vote).map_err(invalid)?.leader_id.term;
    groups
        .get_or_open(id, term)
        .await
        .ok_or_else(|| not_hosted(id))
}

fn check_target(groups: &Groups, target: u64) -> Result<(), Status> {
    if target != groups.node() {
        return Err(Status::failed_precondition(format!(
            "message for node {target} reached node {}",
            groups.node()
        )));
    }
    Ok(())
}

fn not_hosted(id: u64) -> Status {
    Status::not_found(format!("group {id} is not hosted on this node"))
}

/// Room for a message's fields around its largest payload.
const MESSAGE_SLACK: usize = 64 * 1024;

fn invalid(e: io::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

fn raft_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// Most appends in flight on one `Appends` stream (received and not yet answered); the
/// stream stops reading beyond it.
pub const APPENDS_IN_FLIGHT_MAX: usize = 4096;
/// Most appends or replies in one message of an `Appends` stream.
pub const APPENDS_PER_MESSAGE_MAX: usize = 256;
/// Most bytes of entries in one append that carries more than one entry; a longer run of
/// entries goes in parts ([`crate::network`] answers openraft `PartialSuccess` for the first).
pub const APPEND_BYTES_MAX: usize = 8 << 20;
/// Largest append (in bytes of entries) that goes on a node pair's shared `Appends` stream; a
/// larger one goes on a unary `Append` call, an HTTP/2 stream of its own, so that it crosses
/// beside the stream's messages (every group's heartbeats among them) instead of ahead of
/// them. A stream message is read whole before the next one: one of several mebibytes held
/// up every heartbeat on the link for as long as it took to cross, past election timeouts on
/// a link slower than loopback.
pub const STREAM_APPEND_BYTES_MAX: usize = 256 * 1024;
/// Most bytes of appends in one message of an `Appends` stream that carries more than one:
/// what a heartbeat behind it waits for at most.
pub const APPENDS_MESSAGE_BYTES_MAX: usize = 1 << 20;
/// Largest message the service takes: one append of a single entry as large as a WAL record
/// may be (larger than [`APPEND_BYTES_MAX`], which bounds only appends of several), or a
/// snapshot chunk (at most 1 MiB from any sender so far), with room for the fields around
/// them.
pub const MESSAGE_BYTES_MAX: usize = cairn_wal::RECORD_PAYLOAD_BYTES_MAX + MESSAGE_SLACK;

/// One append, for the unary `Append` and for each append of an `Appends` stream.
async fn append_one(groups: &Groups, req: pb::AppendRequest) -> Result<pb::AppendResponse, Status> {
    let group = find_for_leader(groups, req.target, req.group, &req.vote).await?;
    let leader_in_touch = !req.leader_out_of_touch;
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: decode_vote(&req.vote).map_err(invalid)?,
        prev_log_id: decode_opt_log_id(&req.prev_log_id).map_err(invalid)?,
        entries: req
            .entries
            .iter()
            .map(decode_entry)
            .collect::<io::Result<_>>()
            .map_err(invalid)?,
        leader_commit: decode_opt_log_id(&req.leader_commit).map_err(invalid)?,
    };
    let response = group.raft.append_entries(rpc).await.map_err(raft_failed)?;
    if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
        group.sent_by_leader();
        if leader_in_touch {
            group.heard_from_leader();
        }
    }
    let mut reply = pb::AppendResponse::default();
    match response {
        AppendEntriesResponse::Success => reply.set_outcome(Outcome::Success),
        AppendEntriesResponse::PartialSuccess(upto) => {
            reply.set_outcome(Outcome::PartialSuccess);
            reply.partial = encode_opt_log_id(upto.as_ref());
        }
        AppendEntriesResponse::Conflict => reply.set_outcome(Outcome::Conflict),
        AppendEntriesResponse::HigherVote(vote) => {
            reply.set_outcome(Outcome::HigherVote);
            reply.vote = encode_vote(&vote);
        }
    }
    Ok(reply)
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        append_one(&self.groups, request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendsStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<pb::AppendReplies, Status>> + Send + 'static>>;

    async fn appends(
        &self,
        request: Request<Streaming<pb::AppendBatch>>,
    ) -> Result<Response<Self::AppendsStream>, Status> {
        let mut incoming = request.into_inner();
        let (replies, mut answered) = mpsc::channel::<pb::TaggedReply>(APPENDS_IN_FLIGHT_MAX);
        let groups = self.groups.clone();
        let mut stopping = self.stopping.clone();
        // Each append runs on its own task: a follower answers after the fdatasync that covers
        // the entries, and one group's wait must not hold up another's.
        tokio::spawn(async move {
            loop {
                let stop = async {
                    match stopping.as_mut() {
                        Some(rx) => drop(rx.wait_for(|stopping| *stopping).await),
                        None => std::future::pending().await,
                    }
                };
                let batch = tokio::select! {
                    batch = incoming.next() => batch,
                    () = stop => None,
                };
                let Some(Ok(batch)) = batch else {
                    break;
                };
                for tagged in batch.appends {
                    let (groups, replies) = (groups.clone(), replies.clone());
                    let Ok(permit) = replies.reserve_owned().await else {
                        return;
                    };
                    tokio::spawn(async move {
                        let reply = match tagged.request {
                            None => Err(Status::invalid_argument("an append without its request")),
                            Some(request) => append_one(&groups, request).await,
                        };
                        permit.send(match reply {
                            Ok(response) => pb::TaggedReply {
                                id: tagged.id,
                                response: Some(response),
                                code: 0,
                                error: String::new(),
                            },
                            Err(status) => pb::TaggedReply {
                                id: tagged.id,
                                response: None,
                                code: status.code() as u32,
                                error: status.message().to_string(),
                            },
                        });
                    });
                }
            }
        });
        // Replies go out as they complete, every reply that is ready in one message.
        let outgoing = futures::stream::poll_fn(move |cx| {
            let mut batch = Vec::new();
            while batch.len() < APPENDS_PER_MESSAGE_MAX {
                match answered.poll_recv(cx) {
                    std::task::Poll::Ready(Some(reply)) => batch.push(reply),
                    std::task::Poll::Ready(None) if batch.is_empty() => {
                        return std::task::Poll::Ready(None);
                    }
                    std::task::Poll::Ready(None) | std::task::Poll::Pending => break,
                }
            }
            if batch.is_empty() {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(Some(Ok(pb::AppendReplies { replies: batch })))
            }
        });
        Ok(Response::new(Box::pin(outgoing)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let req = request.into_inner();
        let group = find(&self.groups, req.target, req.group)?;
        if group.voting_embargoed() && !req.leadership_transfer {
            return Err(Status::unavailable(
                "this replica restarted less than one lease ago and does not vote yet",
            ));
        }
        // A replica whose log names no membership with it in (one just created for its
        // group's leader, still catching up) does not vote, where the node asks so
        // (`Group::vote_only_as_member`).
        if !group.may_vote() {
            return Err(Status::unavailable(
                "this replica's log does not yet name it a member: it does not vote",
            ));
        }
        let rpc = VoteRequest::<TypeConfig> {
            vote: decode_vote(&req.vote).map_err(invalid)?,
            last_log_id: decode_opt_log_id(&req.last_log_id).map_err(invalid)?,
            leadership_transfer: req.leadership_transfer,
        };
        let response = if req.pre_vote {
            group.raft.pre_vote(rpc).await
        } else {
            group.raft.vote(rpc).await
        }
        .map_err(raft_failed)?;
        Ok(Response::new(pb::VoteResponse {
            vote: encode_vote(&response.vote),
            granted: response.vote_granted,
            last_log_id: encode_opt_log_id(response.last_log_id.as_ref()),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        use openraft::raft::{TransferLeaderError, TransferLeaderRequest};
        use pb::transfer_leader_response::Outcome as T;
        let req = request.into_inner();
        let group = find(&self.groups, req.target, req.group)?;
        let rpc = TransferLeaderRequest::<TypeConfig>::new(
            decode_vote(&req.from_leader).map_err(invalid)?,
            req.to_node,
            decode_opt_log_id(&req.last_log_id).map_err(invalid)?,
        );
        let response = group
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(raft_failed)?;
        let mut reply = pb::TransferLeaderResponse::default();
        match response {
            Ok(()) => reply.set_outcome(T::Accepted),
            Err(TransferLeaderError::VoteChanged { actual, .. }) => {
                reply.set_outcome(T::VoteChanged);
                reply.vote = encode_vote(&actual);
            }
            Err(TransferLeaderError::LogNotFlushed { actual, .. }) => {
                reply.set_outcome(T::LogNotFlushed);
                reply.last_log_id = encode_opt_log_id(actual.as_ref());
            }
        }
        Ok(Response::new(reply))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotMessage>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(Part::Header(header)) = stream.next().await.transpose()?.and_then(|m| m.part)
        else {
            return Err(Status::invalid_argument(
                "a snapshot stream starts with its header",
            ));
        };
        let group =
            find_for_leader(&self.groups, header.target, header.group, &header.vote).await?;
        let vote = decode_vote(&header.vote).map_err(invalid)?;
        let (last_log_id, last_membership) = decode_applied(&header.meta).map_err(invalid)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let manifest = Manifest {
            files: header
                .files
                .into_iter()
                .map(|f| FileInfo {
                    name: f.name,
                    len: f.len,
                })
                .collect(),
            last_sequence: header.last_sequence,
        };
        // Every file operation of the transfer (creating the staging directory, each chunk's
        // CRC and write, the fsyncs and the engine's opening at the end) runs on a blocking
        // thread: on a runtime thread it would hold up the client requests queued there.
        let sm = group.sm.clone();
        let mut incoming = off_runtime(move || sm.receive_snapshot(manifest)).await?;
        while let Some(message) = stream.next().await {
            let Some(Part::Chunk(chunk)) = message?.part else {
                return Err(Status::invalid_argument("a second snapshot header"));
            };
            let chunk = Chunk {
                file: chunk.file,
                offset: chunk.offset,
                data: chunk.data,
                crc: chunk.crc32c,
            };
            incoming = off_runtime(move || incoming.write(&chunk).map(|()| incoming)).await?;
        }
        let staged = {
            let meta = meta.clone();
            off_runtime(move || incoming.finish(&meta)).await?
        };
        let asked = vote;
        let response = group
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: staged,
                },
            )
            .await
            .map_err(raft_failed)?;
        if response.vote == asked {
            group.sent_by_leader();
            group.heard_from_leader();
        }
        Ok(Response::new(pb::SnapshotResponse {
            vote: encode_vote(&response.vote),
        }))
    }
}

/// Runs the file operation `op` on a blocking thread; its error is the stream's
/// `InvalidArgument` (the transfer is refused, and the leader sends it again later).
async fn off_runtime<T: Send + 'static>(
    op: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| Status::internal(format!("a snapshot transfer's thread failed: {e}")))?
        .map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::raft_server::Raft as _;

    #[tokio::test]
    async fn messages_for_another_node_id_are_refused() {
        let service = RaftService::new(Arc::new(Groups::new(7)));
        let vote = |target| pb::VoteRequest {
            group: 1,
            target,
            ..Default::default()
        };
        let refused = service.vote(Request::new(vote(8))).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("node 8 reached node 7"));
        // Addressed to this node, the message gets as far as the group lookup.
        let passed = service.vote(Request::new(vote(7))).await.unwrap_err();
        assert_eq!(passed.code(), tonic::Code::NotFound);

        let append = pb::AppendRequest {
            group: 1,
            target: 0,
            ..Default::default()
        };
        let refused = service.append(Request::new(append)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let transfer = pb::TransferLeaderRequest {
            group: 1,
            target: 9,
            ..Default::default()
        };
        let refused = service
            .transfer_leader(Request::new(transfer))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    }
}
