//! Placement: who replicates what, reconciled by the groups' leaders every
//! [`RECONCILE_INTERVAL`].
//!
//! The rule (until the balancer of issue 9 moves replicas): every node in the cluster map
//! replicates every group. The metadata group has up to [`META_VOTERS_MAX`] voters; each
//! shard up to the cluster's `replicas` setting; every other node is a learner, which
//! receives the log and serves stale reads but does not vote. A group's membership is the
//! authority on its replicas; its leader compares it with the map and makes one change per
//! round: add a node it lacks as a learner, or promote a learner that has caught up to voter
//! while the group has fewer voters than it should. Shard leaders spread over the voters:
//! shard `s` prefers voter `s mod voters` (in id order), and a leader hands leadership to the
//! preferred voter once that voter is up and holds the whole log.
//!
//! Failure detection: the metadata leader hears from every node (each is a member of its
//! group, so it acknowledges heartbeats every 100 ms). A node not heard from for longer than
//! `--down-after-ms` is marked down in the map; a down node is not promoted to voter and is
//! not handed leadership, and `CLUSTER NODES`/`cairn cluster status` show it as down.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cairn_raft::{Group, NodeAddr};
use tokio::sync::mpsc;

use crate::error::CommandError;
use crate::meta::{META_VOTERS_MAX, NodeRecord};
use crate::node::Node;
use crate::proposer::{GroupChange, Proposal, ProposalOp};

/// How often each node reconciles the groups it leads.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// Entries a learner may lag its leader's log and still be promoted (it catches up with the
/// next appends).
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 16;

/// How long a shard's leader waits before asking for a handover again after one was refused
/// (each attempt holds the shard's writes while its entries in flight land and the target
/// catches up, so a target that keeps lagging must not make that happen every round).
pub const HANDOVER_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The metadata leader's memory of when it started hearing from nodes.
#[derive(Debug, Default)]
pub struct Liveness {
    /// The metadata term this node led when it started watching, and when.
    leading_since: Option<(u64, Instant)>,
    /// When each node first appeared in the map during this watch.
    first_seen: HashMap<u64, Instant>,
}

/// One round: failure detection (as metadata leader), then membership and leader placement
/// of every group this node leads.
pub async fn reconcile(node: &Node) {
    let records = node.meta().nodes();
    if records.is_empty() {
        return;
    }
    let meta = node.meta();
    if let Some(term) = meta.group.leading() {
        detect_failures(node, &records, term.term()).await;
        let voters = META_VOTERS_MAX.min(records.len());
        reconcile_group("meta", &meta.group, &meta.proposals, &records, voters).await;
    }
    let replicas = meta.config().map_or(1, |c| c.replicas as usize);
    for shard in &node.shards().list {
        if shard.group.leading().is_none() {
            continue;
        }
        let name = format!("shard {}", shard.id);
        if reconcile_group(&name, &shard.group, &shard.proposals, &records, replicas).await {
            continue;
        }
        balance_leader(
            node,
            &name,
            &shard.group,
            &shard.proposals,
            shard.id as usize,
            &records,
        )
        .await;
    }
}

async fn detect_failures(node: &Node, records: &[NodeRecord], term: u64) {
    let Some(heard) = node.meta().group.heard_from() else {
        return;
    };
    let down_after = node.options().down_after;
    let now = Instant::now();
    let changes: Vec<(u64, bool)> = {
        let mut live = node.liveness.lock();
        if live.leading_since.map(|(t, _)| t) != Some(term) {
            *live = Liveness {
                leading_since: Some((term, now)),
                first_seen: HashMap::new(),
            };
        }
        let since = live.leading_since.map_or(now, |(_, at)| at);
        records
            .iter()
            .filter(|r| r.raft_id != node.raft_id())
            .filter_map(|r| {
                let seen = *live.first_seen.entry(r.raft_id).or_insert(now);
                // Never heard from: count from when this leader could first have heard.
                let silent = match heard.get(&r.raft_id) {
                    Some(Some(ago)) => *ago,
                    _ => now.duration_since(since.max(seen)),
                };
                let down = silent > down_after;
                (down != r.down).then_some((r.raft_id, down))
            })
            .collect()
    };
    for (id, down) in changes {
        match node.meta().set_down(id, down).await {
            Ok(()) if down => tracing::warn!(node = id, "node marked down"),
            Ok(()) => tracing::info!(node = id, "node is up"),
            Err(e) => tracing::debug!(node = id, error = %e, "cannot record node state"),
        }
    }
}

/// Hands a change of the group to its proposer (which orders it with the writes; a change
/// reads no clock, so it is proposed at time 0).
async fn submit(
    proposals: &mpsc::Sender<Proposal>,
    change: GroupChange,
) -> Result<(), CommandError> {
    crate::proposer::submit(proposals, ProposalOp::Change(change), 0)
        .await
        .map(|_| ())
}

/// Makes one membership change toward the rule; returns whether it made (or tried) one.
async fn reconcile_group(
    name: &str,
    group: &Group,
    proposals: &mpsc::Sender<Proposal>,
    records: &[NodeRecord],
    voters_wanted: usize,
) -> bool {
    if !group.membership_settled() {
        return true;
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
        return true;
    }
    let up = |id: &u64| records.iter().any(|r| r.raft_id == *id && !r.down);
    let wanted = voters_wanted.min(records.iter().filter(|r| !r.down).count().max(1));
    if status.voters.len() >= wanted {
        return false;
    }
    let last = status.last_log_index.unwrap_or(0);
    let replicated = group.replicated().unwrap_or_default();
    let candidate = status.learners.iter().find(|id| {
        up(id)
            && replicated
                .get(id)
                .is_some_and(|m| m + PROMOTE_LAG_ENTRIES_MAX >= last)
    });
    let Some(&candidate) = candidate else {
        return false;
    };
    let mut voters = status.voters.clone();
    voters.insert(candidate);
    match submit(proposals, GroupChange::SetVoters(voters)).await {
        Ok(()) => tracing::info!(group = name, node = candidate, "learner promoted to voter"),
        Err(e) => tracing::debug!(group = name, node = candidate, error = %e, "cannot promote"),
    }
    true
}

/// Hands the group's leadership to its preferred voter when that voter can take it (through
/// the group's proposer, which lets the writes in flight land first), unless a handover of
/// this shard was refused less than [`HANDOVER_RETRY_AFTER`] ago.
async fn balance_leader(
    node: &Node,
    name: &str,
    group: &Group,
    proposals: &mpsc::Sender<Proposal>,
    index: usize,
    records: &[NodeRecord],
) {
    if node
        .handovers_refused
        .lock()
        .get(&index)
        .is_some_and(|at| at.elapsed() < HANDOVER_RETRY_AFTER)
    {
        return;
    }
    let status = group.status();
    if status.voters.len() < 2 {
        return;
    }
    let voters: Vec<u64> = status.voters.iter().copied().collect();
    let preferred = voters[index % voters.len()];
    if preferred == status.node {
        return;
    }
    if !records.iter().any(|r| r.raft_id == preferred && !r.down) {
        return;
    }
    let last = status.last_log_index.unwrap_or(0);
    let caught_up = group
        .replicated()
        .and_then(|r| r.get(&preferred).copied())
        .is_some_and(|m| m >= last);
    if !caught_up {
        return;
    }
    let outcome = match submit(proposals, GroupChange::TransferLeader(preferred)).await {
        Ok(()) => {
            tracing::info!(group = name, to = preferred, "leadership handed over");
            node.handovers_refused.lock().remove(&index);
            "done"
        }
        Err(e) => {
            tracing::info!(group = name, to = preferred, error = %e, "handover refused");
            node.handovers_refused.lock().insert(index, Instant::now());
            "refused"
        }
    };
    metrics::counter!(
        crate::metrics::SHARD_HANDOVERS_TOTAL,
        "shard" => index.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}
