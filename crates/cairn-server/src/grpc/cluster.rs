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
                Err(ManageError::UnknownNode(why)) => Err(Status::not_found(why)),
                Err(ManageError::Refused(why)) => Err(Status::failed_precondition(why)),
                Err(ManageError::Failed(e)) => Err(super::status_of(e)),
            }
        })
        .await
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
