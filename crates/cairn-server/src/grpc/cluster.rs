//! `cairn.v1.Cluster`: the cluster map ([`Command::ClusterStatus`]) in protobuf form.

use std::sync::Arc;

use cairn_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{execute, observed, unexpected};
use crate::command::Command;
use crate::node::Node;
use crate::reply::{ClusterStatus, NodeState, Reply};

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
                } as i32,
            })
            .collect(),
        shards: status
            .shards
            .into_iter()
            .map(|s| pb::ShardInfo {
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
            })
            .collect(),
    }
}
