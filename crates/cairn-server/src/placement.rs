//! Placement: who replicates what, reconciled by the groups' leaders every
//! [`RECONCILE_INTERVAL`].
//!
//! The rule (until shards live on R nodes only, see docs/design.md): every node in the
//! cluster map holds a replica of every group, a voter or a learner. Which nodes vote and
//! which lead is the balancer's choice ([`crate::balancer`], on the metadata leader); a
//! group's leader keeps the rest: it adds each node of the map that the group lacks as a
//! learner, and drops the learners of nodes removed from the cluster. The group's
//! membership is the authority on its replicas. One change per group per round.

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_raft::{Group, NodeAddr};
use tokio::sync::mpsc;

use crate::error::CommandError;
use crate::meta::NodeRecord;
use crate::node::Node;
use crate::proposer::{GroupChange, Proposal, ProposalOp};

/// How often each node reconciles the groups it leads.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// Entries a learner may lag its leader's log and still be promoted (it catches up with the
/// next appends).
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 16;

/// One round: the membership of every group this node leads.
pub async fn reconcile(node: &Node) {
    let records = node.meta().nodes();
    if records.is_empty() {
        return;
    }
    let removed: BTreeSet<u64> = node.meta().removals().iter().map(|r| r.raft_id).collect();
    let meta = node.meta();
    if meta.group.leading().is_some() {
        reconcile_group("meta", &meta.group, &meta.proposals, &records, &removed).await;
    }
    for shard in &node.shards().list {
        if shard.group.leading().is_none() {
            continue;
        }
        let name = format!("shard {}", shard.id);
        reconcile_group(&name, &shard.group, &shard.proposals, &records, &removed).await;
    }
}

/// Hands a change of the group to its proposer (which orders it with the writes; a change
/// reads no clock, so it is proposed at time 0).
pub(crate) async fn submit(
    proposals: &mpsc::Sender<Proposal>,
    change: GroupChange,
) -> Result<(), CommandError> {
    crate::proposer::submit(proposals, ProposalOp::Change(change), 0)
        .await
        .map(|_| ())
}

/// Makes one membership change toward the rule: adds a node of the map the group lacks as
/// a learner, or drops the learner of a removed node.
async fn reconcile_group(
    name: &str,
    group: &Group,
    proposals: &mpsc::Sender<Proposal>,
    records: &[NodeRecord],
    removed: &BTreeSet<u64>,
) {
    if !group.membership_settled() {
        return;
    }
    let status = group.status();
    let members: BTreeSet<u64> = status.voters.union(&status.learners).copied().collect();
    // A node that lost its data directory and joined again under a new id may answer at the
    // address of its old record: one process must never hold two memberships (it would count
    // as two voters), so such a node waits until its old id leaves the group.
    let taken = |addr: &str| status.nodes.values().any(|a| a.grpc == addr);
    if let Some(new) = records
        .iter()
        .find(|r| !members.contains(&r.raft_id) && !taken(&r.grpc_addr))
    {
        let addr = NodeAddr {
            grpc: new.grpc_addr.clone(),
        };
        let change = GroupChange::AddLearner {
            id: new.raft_id,
            addr,
        };
        match submit(proposals, change).await {
            Ok(()) => tracing::info!(group = name, node = new.raft_id, "learner added"),
            Err(e) => {
                tracing::debug!(group = name, node = new.raft_id, error = %e, "cannot add learner")
            }
        }
        return;
    }
    // The balancer removes a node's votes before its record, so a removed node that still
    // votes means a removal decided on a stale view: counted, and its vote is replaced by
    // the balancer (a node missing from the map is dead to the planner).
    let voting: Vec<u64> = status.voters.intersection(removed).copied().collect();
    if !voting.is_empty() {
        tracing::error!(group = name, nodes = ?voting, "a removed node still votes");
        metrics::counter!(crate::metrics::REMOVED_NODES_VOTING_TOTAL).increment(1);
    }
    // Its learner goes here.
    let gone: BTreeSet<u64> = status.learners.intersection(removed).copied().collect();
    if !gone.is_empty() {
        match submit(proposals, GroupChange::RemoveLearners(gone.clone())).await {
            Ok(()) => {
                tracing::info!(group = name, nodes = ?gone, "learners of removed nodes dropped")
            }
            Err(e) => tracing::debug!(group = name, error = %e, "cannot drop learners"),
        }
    }
}
