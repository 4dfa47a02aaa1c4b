//! `cairn.v1.Cluster`: the cluster map ([`Command::ClusterStatus`]) in protobuf form.

use std::sync::Arc;

use cairn_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{execute, observed, unexpected};
use crate::balancer::ManageError;
use crate::command::Command;
use crate::node::Node;
use crate::reply::{ClusterStatus, NodeState, Reply, ShardInfo};

/// The `Cluster` service over one node.
#[derive(Debug)]
pub(super) struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        observed("status", async move {
            match execute(&self.node, Command::ClusterStatus).await? {
                Reply::Cluster(status) => Ok(Response::new(status_to_pb(status))),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        observed("remove_node", async move {
            let id = request.into_inner().id;
            match self.node.remove_node(&id).await {
                Ok(()) => Ok(Response::new(pb::RemoveNodeResponse {})),
                Err(e) => Err(manage_status(e)),
            }
        })
        .await
    }

    async fn split_shard(
        &self,
        request: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardResponse>, Status> {
        observed("split_shard", async move {
            let request = request.into_inner();
            let at = match request.at_slot.map(u16::try_from) {
                None => None,
                Some(Ok(slot)) if slot < crate::slot::SLOT_COUNT => Some(slot),
                Some(_) => {
                    return Err(Status::invalid_argument(format!(
                        "at_slot must be below {}",
                        crate::slot::SLOT_COUNT
                    )));
                }
            };
            match self.node.split_shard(request.shard, at).await {
                Ok(crate::balancer::Managed::Split {
                    shard,
                    child,
                    first_slot,
                }) => Ok(Response::new(pb::SplitShardResponse {
                    shard,
                    child,
                    first_slot: u32::from(first_slot),
                })),
                Ok(other) => Err(Status::internal(format!(
                    "unexpected answer to a split: {other:?}"
                ))),
                Err(e) => Err(manage_status(e)),
            }
        })
        .await
    }
}

/// The status of a management request that was not carried out.
fn manage_status(e: ManageError) -> Status {
    match e {
        ManageError::UnknownNode(why) | ManageError::UnknownShard(why) => Status::not_found(why),
        ManageError::Refused(why) => Status::failed_precondition(why),
        ManageError::Failed(e) => super::status_of(e),
    }
}

fn status_to_pb(status: ClusterStatus) -> pb::StatusResponse {
    pb::StatusResponse {
        node_id: status.node_id,
        nodes: status
            .nodes
            .into_iter()
            .map(|n| pb::NodeInfo {
                id: n.id,
                grpc_addr: n.grpc_addr,
                http_addr: n.http_addr,
                resp_addr: n.resp_addr,
                state: match n.state {
                    NodeState::Up => pb::NodeState::Up,
                    NodeState::Down => pb::NodeState::Down,
                    NodeState::Leaving => pb::NodeState::Leaving,
                } as i32,
            })
            .collect(),
        shards: status.shards.into_iter().map(shard_to_pb).collect(),
        moves: status
            .moves
            .into_iter()
            .map(|m| pb::MoveInfo {
                shard: m.shard,
                from: m.from,
                to: m.to,
                sent_bytes: m.sent_bytes,
                total_bytes: m.total_bytes,
                elapsed_ms: m.elapsed_ms,
            })
            .collect(),
        metadata: status.metadata.map(|m| shard_to_pb(*m)),
    }
}

fn shard_to_pb(s: ShardInfo) -> pb::ShardInfo {
    pb::ShardInfo {
        id: s.id,
        slots: s
            .slots
            .into_iter()
            .map(|(start, end)| pb::SlotRange {
                start: start.into(),
                end: end.into(),
            })
            .collect(),
        replicas: s.replicas,
        learners: s.learners,
        leader: s.leader,
        term: s.raft.term,
        last_log_index: s.raft.last_log_index,
        commit_index: s.raft.committed,
        applied_index: s.raft.applied,
    }
}
