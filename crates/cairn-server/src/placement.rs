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
/// Entries a group's log may hold past its purge point when the group takes a new member.
/// Beyond that, its leader checkpoints the group and purges the log first, so the newcomer
/// copies a snapshot (an engine checkpoint streamed in chunks: 160 MB/s measured on
/// loopback) instead of replaying the log entry by entry (8 MB/s). scripts/bench-elastic.sh
/// measures both.
pub const NEWCOMER_LOG_ENTRIES_MAX: u64 = cairn_raft::config::LOG_KEPT_BEHIND_SNAPSHOT;
/// How long a leader waits for the checkpoint it takes for a newcomer.
const NEWCOMER_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// One round: the membership of every group this node leads.
pub async fn reconcile(node: &Node) {
    let records = node.meta().nodes();
    if records.is_empty() {
        return;
    }
    let removed: BTreeSet<u64> = node.meta().removals().iter().map(|r| r.raft_id).collect();
    let meta = node.meta();
    if meta.group.leading().is_some() {
        reconcile_group(
            "meta",
            &meta.group,
            &meta.proposals,
            &records,
            &removed,
            true,
        )
        .await;
    }
    // With data on the voters only, the balancer alone adds a shard's learners.
    let everywhere = !meta.config().is_some_and(|c| c.replicas_only);
    for shard in &node.shards().list() {
        if shard.group.leading().is_none() {
            continue;
        }
        let name = format!("shard {}", shard.id);
        let (group, proposals) = (&shard.group, &shard.proposals);
        reconcile_group(&name, group, proposals, &records, &removed, everywhere).await;
    }
    report_shards(node).await;
    remove_dropped_replicas(node).await;
}

/// How long a replica stays after the map shows it dropped, before it is deleted: writes its
/// proposer took while it led the shard settle meanwhile (their commit reaches it with the
/// group's last messages to it), rather than end `outcome unknown` with the group.
pub const DROPPED_REPLICA_GRACE: Duration = Duration::from_secs(3);

/// How long a replica created for a leader that never told it its group's membership may
/// wait for that leader before it counts as dropped (the leader's membership change failed,
/// or a deposed leader's message created it).
pub const UNINITIALISED_REPLICA_GRACE: Duration = Duration::from_secs(60);

/// Deletes this node's replicas of shards whose groups dropped it: the map's placement of
/// the shard, reported by its leader from a committed membership at least as new as the
/// newest membership this replica knows, does not list this node. (A newer committed
/// membership that lacks this node is a removal after whatever added it: it can no longer
/// count this replica's acknowledgements.) A replica that knows no membership at all waits
/// [`UNINITIALISED_REPLICA_GRACE`] without hearing from a leader first, and any dropped
/// replica [`DROPPED_REPLICA_GRACE`].
pub async fn remove_dropped_replicas(node: &Node) {
    let me = node.raft_id();
    let mut dropped = std::collections::HashMap::new();
    for shard in node.shards().list() {
        let Some(placement) = node.meta().shard(shard.id) else {
            continue;
        };
        if placement.members().any(|m| m == me) || shard.group.leading().is_some() {
            continue;
        }
        let known = shard.group.membership_index();
        if placement.membership_index < known {
            continue;
        }
        if known == 0 && shard.group.in_touch(UNINITIALISED_REPLICA_GRACE) {
            continue;
        }
        let since = node
            .dropped
            .lock()
            .get(&shard.id)
            .copied()
            .unwrap_or_else(std::time::Instant::now);
        dropped.insert(shard.id, since);
        if since.elapsed() < DROPPED_REPLICA_GRACE {
            continue;
        }
        let removed = node
            .shards()
            .remove_replica(shard.id, placement.term, known)
            .await;
        if let Err(e) = removed {
            tracing::error!(shard = shard.id, error = %e, "cannot remove a dropped replica");
        }
    }
    *node.dropped.lock() = dropped;
}

/// Reports every shard this node leads whose placement the map does not tell as it is
/// ([`crate::meta::ShardPlacement`]), to the metadata leader. A report this node sent less
/// than [`REPORT_AGAIN_AFTER`] ago is not sent again while the map's replica here has not
/// caught up with it.
pub async fn report_shards(node: &Node) {
    let mut sent = Vec::new();
    for shard in &node.shards().list() {
        let Some(report) = placement_of(shard) else {
            continue;
        };
        if node
            .meta()
            .shard(shard.id)
            .is_some_and(|known| !known.replaced_by(&report))
        {
            continue;
        }
        let recent = node
            .reported
            .lock()
            .get(&shard.id)
            .is_some_and(|(last, at)| *last == report && at.elapsed() < REPORT_AGAIN_AFTER);
        if !recent {
            sent.push(report);
        }
    }
    for report in sent {
        let result = if node.meta().is_leader() {
            node.meta().report_shard(&report).await.map(|_| ())
        } else {
            match node.meta().leader_addr() {
                None => continue,
                Some(addr) => {
                    let request = crate::balancer::Manage::ReportShard(report.clone());
                    crate::balancer::ask(node, &addr, &request)
                        .await
                        .map(|_| ())
                        .map_err(|e| CommandError::TryAgain(e.to_string()))
                }
            }
        };
        match result {
            Ok(()) => {
                node.reported
                    .lock()
                    .insert(report.shard, (report, std::time::Instant::now()));
            }
            Err(e) => {
                tracing::debug!(shard = report.shard, error = %e, "shard placement not reported")
            }
        }
    }
}

/// How long a leader waits before reporting a placement again that the map's replica here
/// does not show yet.
const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// Shard `shard` as this node, leading it with a settled membership, would report it.
fn placement_of(shard: &crate::shard::Shard) -> Option<crate::meta::ShardPlacement> {
    let term = shard.group.leading()?.term();
    let (membership_index, voters, learners) = shard.group.committed_membership()?;
    let (first_slot, last_slot) = shard.slots()?;
    let last = shard.group.status().last_log_index.unwrap_or(0);
    let replicated = shard.group.replicated().unwrap_or_default();
    let caught_up = learners
        .iter()
        .copied()
        .filter(|l| {
            replicated
                .get(l)
                .is_some_and(|m| m + PROMOTE_LAG_ENTRIES_MAX >= last)
        })
        .collect();
    let stats = shard.engine().stats();
    Some(crate::meta::ShardPlacement {
        shard: shard.id,
        term,
        membership_index,
        leader: shard.group.status().node,
        voters,
        learners,
        caught_up,
        first_slot,
        last_slot,
        live_bytes: stats.disk_bytes.saturating_sub(stats.dead_bytes),
        children: crate::shards::ShardRecord::read(&shard.engine())
            .map(|r| r.children.iter().map(|c| c.id).collect())
            .unwrap_or_default(),
    })
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
/// a learner (when the group is to be `everywhere`), or drops the learner of a removed node.
async fn reconcile_group(
    name: &str,
    group: &Group,
    proposals: &mpsc::Sender<Proposal>,
    records: &[NodeRecord],
    removed: &BTreeSet<u64>,
    everywhere: bool,
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
        .filter(|_| everywhere)
        .find(|r| !members.contains(&r.raft_id) && !taken(&r.grpc_addr))
    {
        snapshot_for_newcomer(name, group, &status).await;
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

/// Before a new member joins the group: checkpoints it and purges the log, when the log is
/// long enough that copying a snapshot beats replaying it ([`NEWCOMER_LOG_ENTRIES_MAX`]).
/// Followers that are caught up need none of the purged entries.
pub(crate) async fn snapshot_for_newcomer(
    name: &str,
    group: &Group,
    status: &cairn_raft::GroupStatus,
) {
    let last = status.last_log_index.unwrap_or(0);
    let purged = status.purged.unwrap_or(0);
    let Some(applied) = status.applied else {
        return;
    };
    if last.saturating_sub(purged) <= NEWCOMER_LOG_ENTRIES_MAX {
        return;
    }
    let result = async {
        let snapshot = group.snapshot(applied, NEWCOMER_SNAPSHOT_WAIT).await?;
        group.purge(snapshot, NEWCOMER_SNAPSHOT_WAIT).await
    }
    .await;
    match result {
        Ok(()) => tracing::info!(
            group = name,
            "log purged behind a checkpoint for a new member"
        ),
        Err(e) => tracing::debug!(group = name, error = %e, "no checkpoint for the new member"),
    }
}
