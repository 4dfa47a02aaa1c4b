//! Placement: who replicates what, reconciled by the groups' leaders every
//! [`RECONCILE_INTERVAL`].
//!
//! Which nodes hold a shard, which vote and which lead is the balancer's choice
//! ([`crate::balancer`], on the metadata leader). A group's leader keeps the rest: it drops
//! the learners of nodes removed from the cluster, and, for the metadata group (and every
//! shard of a cluster created with `--replicas-everywhere`), adds each node of the map that
//! the group lacks as a learner. It reports its shard's placement to the map
//! ([`report_shards`]), and a node deletes its replicas that the map shows dropped
//! ([`remove_dropped_replicas`]). The group's membership is the authority on its replicas.
//! One change per group per round.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

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

/// Whether the map's placement of a shard shows node `me` dropped from the shard's group,
/// for a replica there whose newest known membership has log id `known` as (term, index).
///
/// The placement lists the membership its leader (of term `placement.term`) had committed
/// with no change pending, so it is the newest membership in that leader's log. The node is
/// dropped when the placement does not list it and either
/// - that membership is at least as new as the replica's (a newer committed membership that
///   lacks the node is a removal after whatever added it: it can no longer count this
///   replica's acknowledgements), or
/// - the replica's membership came from an older term than the placement's and is not in
///   the placement leader's log (a membership entry there would make the leader's newest one
///   at least as new). Every entry committed in an older term is in a later leader's log, so
///   the change that added this replica was never committed and never will be: a deposed
///   leader's. Without this rule that replica would wait for a newer membership that may
///   never come, and stay on disk.
pub fn dropped_by(placement: &crate::meta::ShardPlacement, me: u64, known: (u64, u64)) -> bool {
    let (known_term, known_index) = known;
    !placement.members().any(|m| m == me)
        && (placement.membership_index >= known_index || placement.term > known_term)
}

/// Deletes this node's replicas of shards whose groups dropped it ([`dropped_by`]). A
/// replica that knows no membership at all waits [`UNINITIALISED_REPLICA_GRACE`] without
/// hearing from a leader first, and any dropped replica [`DROPPED_REPLICA_GRACE`] from when
/// this incarnation of it was first found dropped, and as long again without hearing from
/// its group.
pub async fn remove_dropped_replicas(node: &Node) {
    let me = node.raft_id();
    let mut dropped = std::collections::HashMap::new();
    for shard in node.shards().list() {
        let Some(placement) = node.meta().shard(shard.id) else {
            continue;
        };
        if shard.group.leading().is_some() {
            continue;
        }
        let known_id = shard.group.membership_log_id();
        if !dropped_by(&placement, me, known_id.unwrap_or((0, 0))) {
            continue;
        }
        let known = known_id.map_or(0, |(_, index)| index);
        if known == 0 && shard.group.in_touch(UNINITIALISED_REPLICA_GRACE) {
            continue;
        }
        let generation = node.shards().generation(shard.id);
        let seen = node.dropped.lock().get(&shard.id).copied();
        let still_sent_to = shard.group.leader_sent_within(DROPPED_REPLICA_GRACE);
        let now = Instant::now();
        let (since, keep) = dropped_grace(seen, generation, now, still_sent_to);
        if keep {
            dropped.insert(shard.id, (generation, since));
            continue;
        }
        let removed = node
            .shards()
            .remove_replica(shard.id, placement.term, placement.membership_index, known)
            .await;
        if let Err(e) = removed {
            tracing::error!(shard = shard.id, error = %e, "cannot remove a dropped replica");
            dropped.insert(shard.id, (generation, since));
        }
    }
    *node.dropped.lock() = dropped;
}

/// For a replica found dropped this round: from when its grace runs, and whether it is kept
/// (rather than deleted now). `seen` is what earlier rounds kept of this shard's replica
/// (its incarnation and when that was first found dropped), `generation` the replica's
/// incarnation now, and `leader_sent_recently` whether a leader sent it an append or a
/// snapshot within [`DROPPED_REPLICA_GRACE`].
///
/// - The grace runs from when this incarnation was first found dropped: a replica created
///   again after a removal starts a new one. (The old one's timer, kept from the round that
///   removed it, would have it deleted as soon as it is found dropped, which a new learner is
///   for a moment, while its snapshot's membership predates its own addition; its leader
///   still counts it, and would find its log gone backwards.)
/// - A replica its group's leader still sends to is counted by that leader (a leader
///   replicates only to the members of its newest membership): the map is behind, and
///   deleting the replica now would leave the leader a follower whose log went back.
fn dropped_grace(
    seen: Option<(u32, Instant)>,
    generation: u32,
    now: Instant,
    leader_sent_recently: bool,
) -> (Instant, bool) {
    let since = match seen {
        Some((incarnation, since)) if incarnation == generation => since,
        _ => now,
    };
    let keep = now.duration_since(since) < DROPPED_REPLICA_GRACE || leader_sent_recently;
    (since, keep)
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
    // A change of the voters its leader did not finish (it lost its term, or stopped
    // waiting, between the joint configuration and the new one) is finished first: until
    // then the group reports no placement, so the balancer would plan against a stale one.
    // Voters the change drops stay learners when every node holds the group.
    if let Some(voters) = group.unfinished_change() {
        // (Checked again by the proposer when it takes the change, after what is queued
        // before it.)
        let change = GroupChange::FinishChange { retain: everywhere };
        match submit(proposals, change).await {
            Ok(()) => tracing::info!(
                group = name,
                ?voters,
                "unfinished change of voters finished"
            ),
            Err(e) => {
                tracing::debug!(group = name, error = %e, "cannot finish a change of voters")
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A dropped replica is kept for [`DROPPED_REPLICA_GRACE`] from when its own incarnation
    /// was first found dropped, then deleted; a new incarnation (created again after a
    /// removal) starts its own grace, whatever the old one's timer says.
    #[test]
    fn the_grace_of_a_dropped_replica_belongs_to_its_incarnation() {
        let start = Instant::now();
        let later = start + DROPPED_REPLICA_GRACE + Duration::from_millis(1);
        // First found dropped: kept, its grace from now.
        assert_eq!(dropped_grace(None, 4, start, false), (start, true));
        // Within the grace: kept, the grace still from when it was first found.
        let within = start + DROPPED_REPLICA_GRACE / 2;
        assert_eq!(
            dropped_grace(Some((4, start)), 4, within, false),
            (start, true)
        );
        // Past it: deleted. The grace is a bound, not a minimum: at its end the replica goes.
        assert_eq!(
            dropped_grace(Some((4, start)), 4, later, false),
            (start, false)
        );
        let last = start + DROPPED_REPLICA_GRACE - Duration::from_millis(1);
        assert_eq!(
            dropped_grace(Some((4, start)), 4, last, false),
            (start, true)
        );
        assert_eq!(
            dropped_grace(Some((4, start)), 4, start + DROPPED_REPLICA_GRACE, false),
            (start, false)
        );
        // The replica was created again (a learner just added back, whose snapshot's
        // membership predates its addition): the old incarnation's expired timer does not
        // count, its own grace starts now.
        assert_eq!(
            dropped_grace(Some((4, start)), 5, later, false),
            (later, true)
        );
    }

    /// A dropped replica that a leader sent to within the grace is kept however long ago it
    /// was first found dropped: that leader still counts it, and the map is behind.
    #[test]
    fn a_dropped_replica_a_leader_still_sends_to_is_kept() {
        let start = Instant::now();
        let later = start + DROPPED_REPLICA_GRACE * 10;
        assert_eq!(
            dropped_grace(Some((4, start)), 4, later, true),
            (start, true)
        );
        assert_eq!(
            dropped_grace(Some((4, start)), 4, later, false),
            (start, false)
        );
    }

    /// Shard 1's placement as a leader of `term` reports it: voters 1 and 2, committed at
    /// membership index 20.
    fn placement(term: u64) -> crate::meta::ShardPlacement {
        crate::meta::ShardPlacement {
            shard: 1,
            term,
            membership_index: 20,
            leader: 1,
            voters: [1, 2].into(),
            learners: BTreeSet::new(),
            caught_up: BTreeSet::new(),
            first_slot: 0,
            last_slot: 100,
            live_bytes: 0,
            children: Vec::new(),
        }
    }

    #[test]
    fn a_member_is_never_dropped() {
        let mut with_learner = placement(9);
        with_learner.learners.insert(3);
        for known in [(0, 0), (3, 5), (9, 30), (12, 40)] {
            assert!(!dropped_by(&placement(9), 2, known));
            assert!(
                !dropped_by(&with_learner, 3, known),
                "a learner is a member"
            );
        }
    }

    #[test]
    fn a_committed_membership_as_new_as_the_replicas_drops_it() {
        assert!(dropped_by(&placement(9), 3, (0, 0)));
        assert!(dropped_by(&placement(9), 3, (9, 20)));
        assert!(dropped_by(&placement(9), 3, (4, 12)));
    }

    /// Node 3 heard of a membership at index 25 that the placement (index 20) does not
    /// show. From a leader of the placement's term or later, it may be a change not yet
    /// committed (or reported): node 3 stays. From an older term, it is not in the
    /// placement leader's log, so it was a deposed leader's and never commits: node 3 goes.
    #[test]
    fn a_newer_membership_counts_only_from_the_placements_term_or_later() {
        assert!(!dropped_by(&placement(9), 3, (9, 25)));
        assert!(!dropped_by(&placement(9), 3, (10, 25)));
        assert!(dropped_by(&placement(9), 3, (8, 25)));
    }
}
