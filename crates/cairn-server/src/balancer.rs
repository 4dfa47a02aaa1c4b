//! The balancer at work: every [`ROUND_INTERVAL`] the metadata leader notices nodes that
//! went silent, reads the cluster as its own replicas see it, asks [`crate::balance::plan`]
//! for the round's steps, has each carried out by its group's leader (itself, or another
//! node through `cairn.peer.v1.Node/Manage`), and removes from the map the nodes that left
//! or were replaced once they hold no vote and no leadership.
//!
//! A shard's data lives on its voters only (the default; a move adds a learner, which
//! catches up by snapshot and log, then promotes it), or, with `--replicas-everywhere`,
//! every node keeps a learner replica of every group ([`crate::placement`]): there the node
//! a move "adds" already holds the group's data, [`Step::AddLearner`] promotes that learner
//! once it has caught up (adding it as a learner first if it is not one yet), and
//! [`Step::RemoveVoter`] demotes a voter back to a learner. What the planner balances are
//! votes (which nodes take part in each group's commits) and leaderships (which node evaluates a
//! shard's writes and serves its linearizable reads). The planner's limits on moves in
//! flight therefore bound what one round starts, not what is under way across rounds (a
//! promotion is done within its round).
//!
//! Node states: a node leaving on request (`cairn cluster remove-node`) is draining; a node
//! marked down is down, and dead once down for longer than `--replace-down-after-ms`, but
//! only while enough other nodes are up to hold its replicas (otherwise it stays down: there
//! is nowhere to recreate them, and it may come back). A step the group's leader cannot take
//! now (a learner not caught up, a handover refused) is simply planned again in a later
//! round: every round plans from what the groups are, not from what was asked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::peer as pb;
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use crate::balance::{GroupView, NodeState, Step};
use crate::error::CommandError;
use crate::meta::{META_GROUP, NodeRecord, RemovalCause, ShardPlacement, meta_voters};
use crate::node::Node;
use crate::peer::Removed;
use crate::placement::{PROMOTE_LAG_ENTRIES_MAX, submit};
use crate::proposer::GroupChange;
use crate::shard::group_of_shard;

/// How often the metadata leader runs a round.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(500);
/// How long a node may hear nothing of the metadata group before it asks whether it is
/// still a member.
pub const OUT_OF_MAP_AFTER: Duration = Duration::from_secs(10);
/// How long one step may take on its group's leader (a membership change commits in a few
/// round trips; a handover waits up to half a second for its target).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a group's leader waits before taking a handover of the group again after one
/// was refused (each attempt holds the group's writes while its entries in flight land and
/// the target catches up, so a target that keeps lagging must not make that happen every
/// round).
pub const HANDOVER_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What one node asks another to do for the cluster's management (postcard over
/// `Node/Manage`, an internal format bound to the build like forwarded commands).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Manage {
    /// As the group's leader, carry out this step, planned from a view in which the group's
    /// voters were `voters` (refused when they are not, any more: the plan is stale).
    Step { step: Step, voters: BTreeSet<u64> },
    /// As the metadata leader, start draining this node (its name or Raft id).
    RemoveNode(String),
    /// As the leader of `group`: answer `Ok` only if `node` holds neither a vote nor the
    /// leadership of the group and no membership change is under way (asked before a node
    /// is removed from the map, of the leaders themselves, since the metadata leader's
    /// replicas may lag their groups).
    CheckGone { group: u64, node: u64 },
    /// To a node the metadata leader removed from the map: ask the metadata leader whether
    /// that is so (the message itself is not trusted) and stop if it is.
    Removed,
    /// As the metadata leader: split `shard` (at slot `at`, or where its keys split in
    /// halves), the child taking a new id → `Managed::Split`.
    Split { shard: u32, at: Option<u16> },
    /// As the leader of `shard`: split it with `child` as the new shard's id →
    /// `Managed::Split`.
    SplitAs {
        shard: u32,
        child: u32,
        at: Option<u16>,
    },
    /// As the metadata leader: record where a shard lives, as its leader reports it.
    ReportShard(crate::meta::ShardPlacement),
}

/// What a management request answers when it is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Managed {
    Done,
    /// `shard` split: slots from `first_slot` to the end of its range went to `child`.
    Split {
        shard: u32,
        child: u32,
        first_slot: u16,
    },
}

/// Why a management request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ManageError {
    /// No such node in the cluster map.
    #[error("{0}")]
    UnknownNode(String),
    /// The cluster cannot do it in its present state (it would lose replicas or a majority).
    #[error("{0}")]
    Refused(String),
    /// It could not be done now (no leader, a lost connection): it may be asked again.
    #[error(transparent)]
    Failed(#[from] CommandError),
    /// No such shard in the cluster.
    #[error("{0}")]
    UnknownShard(String),
}

/// The metadata leader's memory of when it started hearing from nodes.
#[derive(Debug, Default)]
pub struct Liveness {
    /// The metadata term this node led when it started watching, and when.
    leading_since: Option<(u64, Instant)>,
    /// When each node first appeared in the map during this watch.
    first_seen: HashMap<u64, Instant>,
}

/// Runs rounds while this node lives (each does something only while it leads the
/// metadata group).
pub async fn run(node: Arc<Node>) {
    let mut confirming = tokio::spawn(confirm_membership(node.clone(), Duration::MAX));
    let mut tick = tokio::time::interval(ROUND_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(removal) = node.meta().removal(node.raft_id()) {
            leave(&node, (&removal).into());
            return;
        }
        // A node that hears nothing of the map may have been dropped from it (a removed
        // learner gets no more of the log, and may have missed its tombstone): it asks.
        if !node.meta().group.in_touch(OUT_OF_MAP_AFTER) && confirming.is_finished() {
            confirming = tokio::spawn(confirm_membership(node.clone(), OUT_OF_MAP_AFTER));
        }
        if let Some(term) = node.meta().group.leading() {
            round(&node, term.term()).await;
        }
    }
}

/// A node removed from the cluster says so to [`Node::removal`]: `cairn server` then stops
/// its front ends (its clients' connections close after their current requests, which it
/// still forwards to the shards' leaders, so a cluster client sees a closed connection and
/// moves on, never an error) and then its groups (no other node counts it in any; it must
/// not stand for election in them), and exits: with status 0 if it was drained on request,
/// with an error if it was replaced, once it deleted its replicas and log
/// ([`crate::shards::NodeIdentity::forget`]; `node.toml` keeps the removal).
fn leave(node: &Node, removed: Removed) {
    match removed.cause {
        Some(RemovalCause::Left) => {
            tracing::warn!(reason = %removed.reason, "this node left the cluster; it stops serving")
        }
        _ => {
            tracing::error!(reason = %removed.reason, "this node was removed from the cluster; it stops serving")
        }
    }
    node.removed.send_replace(Some(removed));
}

/// Asks the cluster (any other node of the map, through the metadata leader) whether this
/// node is still a member, as a join would, for up to `within`: a node that was replaced
/// while it was down learns it here at start, since the groups that would have told it
/// dropped it. A node that is still a member only has its record refreshed.
async fn confirm_membership(node: Arc<Node>, within: Duration) {
    let me = node.my_record();
    let deadline = Instant::now().checked_add(within);
    while deadline.is_none_or(|d| Instant::now() < d) {
        let others: Vec<String> = node
            .meta()
            .nodes()
            .into_iter()
            .filter(|r| r.raft_id != me.raft_id)
            .map(|r| r.grpc_addr)
            .collect();
        if others.is_empty() {
            return;
        }
        for addr in &others {
            match crate::peer::join(node.peers(), addr, &me).await {
                Ok((id, _)) if id == me.raft_id => return,
                Ok((id, _)) => {
                    tracing::error!(
                        recorded = id,
                        "the cluster knows this node's name under another Raft id"
                    );
                    return;
                }
                Err(e) => match e.downcast::<Removed>() {
                    Ok(removed) => {
                        leave(&node, removed);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(via = %addr, error = %e, "membership not confirmed yet")
                    }
                },
            }
        }
    }
}

async fn round(node: &Arc<Node>, term: u64) {
    let records = node.meta().nodes();
    if records.is_empty() {
        return;
    }
    let silent = detect_failures(node, &records, term).await;
    let replicas = node.meta().config().map_or(1, |c| c.replicas as usize);
    let states = states(
        &records,
        &silent,
        node.options().replace_down_after,
        replicas,
    );
    let placements = node.meta().shards();
    let replicas_only = node.meta().config().is_some_and(|c| c.replicas_only);
    let views = views(node, &placements, &states, replicas, replicas_only);
    let steps = crate::balance::plan(&states, &views, &node.options().balance);
    join_all(
        steps
            .into_iter()
            .map(|step| dispatch(node, &views, &records, step)),
    )
    .await;
    let first_layout = node.meta().config().map_or(u32::MAX, |c| c.shards);
    if every_shard_reported(&placements, first_layout) {
        finish_removals(node, &records, &states, &silent, &views).await;
    }
    crate::split::split_oversized(node, &placements);
}

/// Marks nodes down (or up again) by how long the metadata leader has not heard from them,
/// and returns how long each node has been silent.
async fn detect_failures(
    node: &Node,
    records: &[NodeRecord],
    term: u64,
) -> BTreeMap<u64, Duration> {
    let Some(heard) = node.meta().group.heard_from() else {
        return BTreeMap::new();
    };
    let down_after = node.options().down_after;
    let now = Instant::now();
    let silent: BTreeMap<u64, Duration> = {
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
            .map(|r| {
                let seen = *live.first_seen.entry(r.raft_id).or_insert(now);
                // Never heard from: count from when this leader could first have heard.
                let silent = match heard.get(&r.raft_id) {
                    Some(Some(ago)) => *ago,
                    _ => now.duration_since(since.max(seen)),
                };
                (r.raft_id, silent)
            })
            .collect()
    };
    for r in records {
        let down = silent.get(&r.raft_id).is_some_and(|s| *s > down_after);
        if down == r.down {
            continue;
        }
        match node.meta().set_down(r.raft_id, down).await {
            Ok(()) if down => tracing::warn!(node = r.raft_id, "node marked down"),
            Ok(()) => tracing::info!(node = r.raft_id, "node is up"),
            Err(e) => tracing::debug!(node = r.raft_id, error = %e, "cannot record node state"),
        }
    }
    silent
}

/// How the planner is to see each node of the map. A down node becomes dead (its replicas
/// are recreated elsewhere) once silent for longer than `replace_after`, but only while at
/// least `replicas` other nodes are up and staying: with fewer there is nowhere to recreate
/// them, and the node is better kept in case it comes back.
pub fn states(
    records: &[NodeRecord],
    silent: &BTreeMap<u64, Duration>,
    replace_after: Duration,
    replicas: usize,
) -> BTreeMap<u64, NodeState> {
    let serving = records.iter().filter(|r| !r.down && !r.leaving).count();
    records
        .iter()
        .map(|r| {
            let overdue = silent.get(&r.raft_id).is_some_and(|s| *s > replace_after);
            let state = if r.leaving {
                NodeState::Draining
            } else if r.down && overdue && serving >= replicas {
                NodeState::Dead
            } else if r.down {
                NodeState::Down
            } else {
                NodeState::Up
            };
            (r.raft_id, state)
        })
        .collect()
}

/// Every group as the balancer is to see it: its voters and leader, and how many voters it
/// should have (the cluster's `replicas` for a shard, [`meta_voters`] for the metadata
/// group, capped by the nodes that stay). The metadata group as this node's
/// replica (its leader's) sees it; each shard as its leader last reported it to the map
/// ([`crate::meta::ShardPlacement`]): the metadata leader need not hold a replica of every
/// shard. A shard not reported yet (a child whose group has just elected its leader) is
/// left out of this round. A shard's learners are shown only when its data lives on its
/// voters alone (`replicas_only`): otherwise every node holds one (see the module
/// documentation). The metadata group is repaired and drained like a shard, but its votes
/// and leadership do not count toward the balance (its load is small).
fn views(
    node: &Node,
    placements: &[ShardPlacement],
    states: &BTreeMap<u64, NodeState>,
    replicas: usize,
    replicas_only: bool,
) -> Vec<GroupView> {
    let staying = states
        .values()
        .filter(|s| matches!(s, NodeState::Up | NodeState::Down))
        .count()
        .max(1);
    let meta = node.meta().group.status();
    std::iter::once(GroupView {
        id: META_GROUP,
        replicas: meta_voters(replicas).min(staying),
        voters: meta.voters,
        learners: BTreeMap::new(),
        leader: meta.leader,
        counted: false,
    })
    .chain(placements.iter().map(|p| {
        GroupView {
            id: group_of_shard(p.shard),
            replicas: replicas.min(staying),
            voters: p.voters.clone(),
            learners: p
                .learners
                .iter()
                .filter(|_| replicas_only)
                .map(|l| (*l, p.caught_up.contains(l)))
                .collect(),
            leader: Some(p.leader),
            counted: true,
        }
    }))
    .collect()
}

/// Whether the map's placements name every shard of the cluster: the first layout's, and
/// every child a reported shard names. Until they do, no node is removed (it could still
/// vote in a shard the balancer does not see).
fn every_shard_reported(placements: &[ShardPlacement], first_layout: u32) -> bool {
    let reported: BTreeSet<u32> = placements.iter().map(|p| p.shard).collect();
    (0..first_layout).all(|id| reported.contains(&id))
        && placements
            .iter()
            .flat_map(|p| &p.children)
            .all(|id| reported.contains(id))
}

/// Has `step` carried out by its group's leader, and logs and counts the outcome.
async fn dispatch(node: &Arc<Node>, views: &[GroupView], records: &[NodeRecord], step: Step) {
    let view = views.iter().find(|v| v.id == step.group());
    let voters = view.map(|v| v.voters.clone()).unwrap_or_default();
    let request = Manage::Step { step, voters };
    let result = match view.and_then(|v| v.leader) {
        None => Err(CommandError::TryAgain("the group has no leader".into())),
        Some(l) => on_leader(node, records, l, &request)
            .await
            .map_err(|e| match e {
                ManageError::Failed(e) => e,
                other => CommandError::Invalid(other.to_string()),
            }),
    };
    let outcome = match &result {
        Ok(_) => {
            tracing::info!(?step, "balancer step done");
            "done"
        }
        // Refusals are routine (a learner still catching up, a plan a moment stale) and
        // planned again next round: counted, logged only at debug.
        Err(e) => {
            tracing::debug!(?step, error = %e, "balancer step not taken");
            "refused"
        }
    };
    metrics::counter!(
        crate::metrics::BALANCE_STEPS_TOTAL,
        "kind" => step.kind(),
        "outcome" => outcome
    )
    .increment(1);
}

/// Has `request` served by node `leader` (a group's leader as this node's replica sees it):
/// here, or through the peer service; not at all when the map says that node is down (its
/// answer would only come after [`STEP_TIMEOUT`], holding up the round).
async fn on_leader(
    node: &Arc<Node>,
    records: &[NodeRecord],
    leader: u64,
    request: &Manage,
) -> Result<Managed, ManageError> {
    if leader == node.raft_id() {
        return serve(node, request.clone()).await;
    }
    match records.iter().find(|r| r.raft_id == leader) {
        Some(r) if r.down => {
            Err(CommandError::TryAgain(format!("the group's leader {leader} is down")).into())
        }
        Some(r) => ask(node, &r.grpc_addr, request).await,
        None => Err(CommandError::TryAgain(format!(
            "the group's leader {leader} is not in the map"
        ))
        .into()),
    }
}

/// Sends `request` to the node at gRPC address `addr` and returns its answer.
pub async fn ask(node: &Node, addr: &str, request: &Manage) -> Result<Managed, ManageError> {
    ask_within(node, addr, request, STEP_TIMEOUT).await
}

/// [`ask`], waiting up to `timeout` for the answer.
pub async fn ask_within(
    node: &Node,
    addr: &str,
    request: &Manage,
    timeout: Duration,
) -> Result<Managed, ManageError> {
    let channel = node
        .peers()
        .channel(addr)
        .map_err(|e| CommandError::TryAgain(format!("bad peer address {addr}: {e}")))?;
    let mut client = pb::node_client::NodeClient::new(channel);
    // A split not answered may have happened: asking again would split once more.
    let idempotent = !matches!(request, Manage::Split { .. } | Manage::SplitAs { .. });
    let request = pb::ManageRequest {
        request: postcard::to_stdvec(request)
            .expect("a request serialises")
            .into(),
    };
    let lost = |why: String| {
        let why = format!("{addr}: {why}");
        Err(if idempotent {
            CommandError::TryAgain(why)
        } else {
            CommandError::OutcomeUnknown(why)
        }
        .into())
    };
    match tokio::time::timeout(timeout, client.manage(request)).await {
        Err(_) => lost(format!("no answer within {timeout:?}")),
        Ok(Err(status)) => lost(status.message().to_string()),
        Ok(Ok(response)) => postcard::from_bytes(&response.into_inner().result)
            .unwrap_or_else(|e| lost(format!("undecodable answer: {e}"))),
    }
}

/// Carries out a request another node made through `Node/Manage`.
pub async fn serve(node: &Arc<Node>, request: Manage) -> Result<Managed, ManageError> {
    match request {
        Manage::Step { step, voters } => carry_out(node, step, &voters).await?,
        Manage::RemoveNode(id) => node.remove_node(&id).await?,
        Manage::CheckGone { group, node: id } => check_gone(node, group, id)?,
        Manage::Removed => {
            // Asked of the metadata leader, not taken on the sender's word.
            tokio::spawn(confirm_membership(node.clone(), OUT_OF_MAP_AFTER));
        }
        Manage::Split { shard, at } => return node.split_shard(shard, at).await,
        Manage::SplitAs { shard, child, at } => {
            return Ok(crate::split::split_as(node, shard, child, at).await?);
        }
        Manage::ReportShard(report) => {
            if !node.meta().is_leader() {
                return Err(CommandError::TryAgain(
                    "this node does not lead the metadata group".into(),
                )
                .into());
            }
            node.meta().report_shard(&report).await?;
        }
    }
    Ok(Managed::Done)
}

/// As the leader of `group`: `Ok` only if node `id` holds neither a vote nor the leadership
/// of the group, with no membership change under way.
fn check_gone(node: &Node, group: u64, id: u64) -> Result<(), ManageError> {
    let (g, _) = settled_leader(node, group)?;
    let status = g.status();
    if status.voters.contains(&id) || status.leader == Some(id) {
        return Err(ManageError::Refused(format!(
            "node {id} still votes in group {group}"
        )));
    }
    Ok(())
}

/// A Raft group on this node and its proposer.
pub(crate) type GroupHandles = (
    cairn_raft::Group,
    tokio::sync::mpsc::Sender<crate::proposer::Proposal>,
);

/// Group `id` and its proposer, when this node leads it and no membership change is under
/// way (what every change and every check of a group's members starts from).
fn settled_leader(node: &Node, id: u64) -> Result<GroupHandles, CommandError> {
    let (group, proposals) = node.group_handles(id)?;
    if group.leading().is_none() {
        return Err(CommandError::TryAgain(format!(
            "this node does not lead group {id}"
        )));
    }
    // (A joint membership, even committed, is a change under way: its leader finishes it
    // first, `placement::reconcile`.)
    if !group.membership_settled() || group.membership_joint() {
        return Err(CommandError::TryAgain(
            "a membership change is under way".into(),
        ));
    }
    Ok((group, proposals))
}

/// As the leader of `step`'s group: takes the step through the group's proposer (between
/// its writes), after checking that it still makes sense.
pub async fn carry_out(
    node: &Node,
    step: Step,
    voters_seen: &BTreeSet<u64>,
) -> Result<(), CommandError> {
    let (group, proposals) = settled_leader(node, step.group())?;
    let status = group.status();
    // The plan was made from the metadata leader's replica of the group, which may lag it:
    // a step planned on other voters than the group has now is stale.
    if &status.voters != voters_seen {
        return Err(CommandError::TryAgain(format!(
            "the step was planned with voters {voters_seen:?}; the group has {:?}",
            status.voters
        )));
    }
    // New votes and leaderships go only to nodes this leader's map shows serving.
    let serving = |id: u64| {
        node.meta()
            .node(id)
            .is_some_and(|r| !r.down && !r.leaving && node.meta().removal(id).is_none())
    };
    match step {
        Step::AddLearner { node: id, .. }
        | Step::Promote { node: id, .. }
        | Step::TransferLeader { to: id, .. }
            if !serving(id) =>
        {
            return Err(CommandError::TryAgain(format!(
                "node {id} is not serving in this node's map"
            )));
        }
        _ => {}
    }
    match step {
        Step::AddLearner { node: id, .. } | Step::Promote { node: id, .. } => {
            if status.voters.contains(&id) {
                return Ok(());
            }
            if !status.learners.contains(&id) {
                let record = node.meta().node(id).ok_or_else(|| {
                    CommandError::TryAgain(format!("node {id} is not in this node's map yet"))
                })?;
                let addr = cairn_raft::NodeAddr {
                    grpc: record.grpc_addr,
                };
                let name = format!("group {}", step.group());
                crate::placement::snapshot_for_newcomer(&name, &group, &status).await;
                return submit(&proposals, GroupChange::AddLearner { id, addr }).await;
            }
            let last = status.last_log_index.unwrap_or(0);
            let caught_up = group
                .replicated()
                .and_then(|r| r.get(&id).copied())
                .is_some_and(|m| m + PROMOTE_LAG_ENTRIES_MAX >= last);
            if !caught_up {
                return Err(CommandError::TryAgain(format!(
                    "node {id} has not caught up with the group's log yet"
                )));
            }
            let mut voters = status.voters.clone();
            voters.insert(id);
            let change = GroupChange::SetVoters {
                voters,
                retain: true,
            };
            submit(&proposals, change).await
        }
        Step::RemoveVoter { node: id, .. } => {
            if !status.voters.contains(&id) {
                return Ok(());
            }
            if id == status.node {
                return Err(CommandError::Invalid(
                    "a leader does not remove its own vote: its leadership moves first".into(),
                ));
            }
            let mut voters = status.voters.clone();
            voters.remove(&id);
            // The voters that stay and are up must still form a majority.
            let up = voters
                .iter()
                .filter(|v| node.meta().node(**v).is_some_and(|r| !r.down))
                .count();
            if up * 2 <= voters.len() {
                return Err(CommandError::TryAgain(format!(
                    "without node {id}, {up} of the {} voters left are up",
                    voters.len()
                )));
            }
            // With data on the voters only, a shard's voter that goes leaves the group (its
            // replica is then deleted); otherwise it stays a learner, as every node is one.
            let retain = step.group() == META_GROUP
                || !node.meta().config().is_some_and(|c| c.replicas_only);
            submit(&proposals, GroupChange::SetVoters { voters, retain }).await
        }
        Step::RemoveLearner { node: id, .. } => {
            if !status.learners.contains(&id) {
                return Ok(());
            }
            submit(
                &proposals,
                GroupChange::RemoveLearners(BTreeSet::from([id])),
            )
            .await
        }
        Step::TransferLeader { group: g, to } => {
            if status.leader == Some(to) {
                return Ok(());
            }
            hand_over(node, g, &group, &proposals, to, &status).await
        }
    }
}

/// Hands the group's leadership to voter `to` (through the group's proposer, which lets the
/// writes in flight land first), unless a handover of this group was refused less than
/// [`HANDOVER_RETRY_AFTER`] ago or `to` does not yet hold the whole log.
async fn hand_over(
    node: &Node,
    group_id: u64,
    group: &cairn_raft::Group,
    proposals: &tokio::sync::mpsc::Sender<crate::proposer::Proposal>,
    to: u64,
    status: &cairn_raft::GroupStatus,
) -> Result<(), CommandError> {
    if node
        .handovers_refused
        .lock()
        .get(&group_id)
        .is_some_and(|at| at.elapsed() < HANDOVER_RETRY_AFTER)
    {
        return Err(CommandError::TryAgain(
            "a handover of this group was refused moments ago".into(),
        ));
    }
    let last = status.last_log_index.unwrap_or(0);
    let replicated = group.replicated().unwrap_or_default();
    let caught_up = replicated.get(&to).is_some_and(|m| *m >= last);
    if !caught_up {
        return Err(CommandError::TryAgain(format!(
            "node {to} does not hold the whole log yet"
        )));
    }
    // A copy to a new member (a snapshot) is sent by the leader: handing leadership over now
    // would throw away what was sent, and the new leader would start again. Learners of
    // nodes that are down do not count (they may never catch up).
    let copying = status.learners.iter().find(|l| {
        node.meta().node(**l).is_some_and(|r| !r.down)
            && replicated
                .get(l)
                .is_none_or(|m| m + PROMOTE_LAG_ENTRIES_MAX < last)
    });
    if let Some(learner) = copying {
        return Err(CommandError::TryAgain(format!(
            "node {learner} is still copying the group"
        )));
    }
    let result = submit(proposals, GroupChange::TransferLeader(to)).await;
    let outcome = match &result {
        Ok(_) => {
            node.handovers_refused.lock().remove(&group_id);
            "done"
        }
        Err(_) => {
            node.handovers_refused
                .lock()
                .insert(group_id, Instant::now());
            "refused"
        }
    };
    metrics::counter!(
        crate::metrics::SHARD_HANDOVERS_TOTAL,
        "shard" => match group_id {
            META_GROUP => "meta".to_string(),
            g => (g - 1).to_string(),
        },
        "outcome" => outcome
    )
    .increment(1);
    result
}

/// Removes from the map every node that is leaving or dead and no longer holds a vote or a
/// leadership in any group. This node's replicas may lag their groups, so it first asks
/// every group's leader ([`Manage::CheckGone`]), and only when every group has a known
/// leader; the map is then changed only if the node is still leaving (or still down).
/// Last, the removed node is told to ask whether it was removed (a removed learner gets no
/// more of the map's log, so it may never see its tombstone).
async fn finish_removals(
    node: &Arc<Node>,
    records: &[NodeRecord],
    states: &BTreeMap<u64, NodeState>,
    silent: &BTreeMap<u64, Duration>,
    views: &[GroupView],
) {
    if views
        .iter()
        .any(|v| v.leader.is_none() || v.voters.is_empty())
    {
        return;
    }
    for r in records {
        let (cause, reason) = match states.get(&r.raft_id) {
            Some(NodeState::Draining) => (RemovalCause::Left, "left on request".to_string()),
            Some(NodeState::Dead) => (
                RemovalCause::Replaced,
                format!(
                    "replaced after being down for {} s",
                    silent.get(&r.raft_id).map_or(0, Duration::as_secs)
                ),
            ),
            _ => continue,
        };
        let holds = views
            .iter()
            .any(|v| v.voters.contains(&r.raft_id) || v.leader == Some(r.raft_id));
        if holds {
            continue;
        }
        let checks = join_all(views.iter().map(|v| {
            let leader = v.leader.expect("checked above");
            let request = Manage::CheckGone {
                group: v.id,
                node: r.raft_id,
            };
            async move { on_leader(node, records, leader, &request).await }
        }))
        .await;
        if let Some(Err(e)) = checks.into_iter().find(Result::is_err) {
            tracing::debug!(node = r.raft_id, error = %e, "not removed yet");
            continue;
        }
        let still = |now: &NodeRecord| match cause {
            RemovalCause::Left => now.leaving,
            RemovalCause::Replaced => now.down,
        };
        match node
            .meta()
            .remove(r.raft_id, cause, reason.clone(), still)
            .await
        {
            Ok(true) => {
                tracing::warn!(node = r.raft_id, name = %r.name, %reason, "node removed from the cluster");
                metrics::counter!(crate::metrics::NODES_REMOVED_TOTAL, "reason" => cause.as_str())
                    .increment(1);
                let (node, addr) = (node.clone(), r.grpc_addr.clone());
                tokio::spawn(async move {
                    let _ = ask(&node, &addr, &Manage::Removed).await;
                });
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(node = r.raft_id, error = %e, "cannot remove node yet"),
        }
    }
}

/// Why removing `target` must be refused, if it must: fewer than `replicas` nodes would stay
/// serving, or groups (of `groups`, each with its voters) would be left without a majority
/// of their voters up (every such group is named).
fn removal_refused(
    records: &[NodeRecord],
    target: &NodeRecord,
    replicas: usize,
    groups: &[(u64, BTreeSet<u64>)],
) -> Option<String> {
    let staying = records
        .iter()
        .filter(|r| r.raft_id != target.raft_id && !r.leaving && !r.down)
        .count();
    if staying < replicas {
        return Some(format!(
            "removing node {} would leave {staying} serving node(s) for {replicas} replicas \
             per shard: add a node first",
            target.name
        ));
    }
    let up = |n: &u64| records.iter().any(|r| r.raft_id == *n && !r.down);
    let short: Vec<String> = groups
        .iter()
        .filter_map(|(g, voters)| {
            let left: Vec<&u64> = voters.iter().filter(|v| **v != target.raft_id).collect();
            let up_left = left.iter().filter(|v| up(v)).count();
            (!left.is_empty() && up_left * 2 <= left.len())
                .then(|| format!("group {g} ({up_left} of {} up)", left.len()))
        })
        .collect();
    (!short.is_empty()).then(|| {
        format!(
            "removing node {} would leave these groups without a majority of their voters \
             up: {}",
            target.name,
            short.join(", ")
        )
    })
}

impl Node {
    /// `cairn cluster remove-node`: starts draining node `id` (its 40-character name, or its
    /// Raft id), on the metadata leader (asked through the peer service when another node
    /// leads). Refused when the nodes left serving would be fewer than the cluster's replicas
    /// per shard, or when a group would be left without a majority of its voters up.
    /// Returns once the map records the node as leaving; the balancer then moves its
    /// leaderships and votes away and removes it.
    pub async fn remove_node(&self, id: &str) -> Result<(), ManageError> {
        let meta = self.meta();
        if meta.group.leading().is_none() {
            let addr = meta
                .leader_addr()
                .ok_or_else(|| CommandError::TryAgain("the metadata group has no leader".into()))?;
            return ask(self, &addr, &Manage::RemoveNode(id.to_string()))
                .await
                .map(|_| ());
        }
        let records = meta.nodes();
        let Some(target) = records
            .iter()
            .find(|r| r.name == id || r.raft_id.to_string() == id)
        else {
            let gone = meta.removals();
            let gone = gone
                .iter()
                .find(|r| r.name == id || r.raft_id.to_string() == id);
            return Err(ManageError::UnknownNode(match gone {
                Some(gone) => format!("node {} was already removed: {}", gone.name, gone.reason),
                None => format!("no node {id} in the cluster"),
            }));
        };
        if target.leaving {
            return Ok(());
        }
        let replicas = meta.config().map_or(1, |c| c.replicas as usize);
        // Every shard's voters as its leader reported them to the map: this node need not
        // hold a replica of every shard (data on the voters only). A shard it leads, or one
        // of its own not reported yet (a child just split off), as its replica here sees it.
        let mut groups: BTreeMap<u64, BTreeSet<u64>> = meta
            .shards()
            .into_iter()
            .map(|p| (group_of_shard(p.shard), p.voters))
            .collect();
        for shard in self.shards().list() {
            let id = group_of_shard(shard.id);
            if shard.group.leading().is_some() || !groups.contains_key(&id) {
                groups.insert(id, shard.group.status().voters);
            }
        }
        groups.insert(META_GROUP, meta.group.status().voters);
        let groups: Vec<(u64, BTreeSet<u64>)> = groups.into_iter().collect();
        if let Some(why) = removal_refused(&records, target, replicas, &groups) {
            return Err(ManageError::Refused(why));
        }
        meta.set_leaving(target.raft_id).await?;
        tracing::warn!(node = target.raft_id, name = %target.name, "node leaving the cluster on request");
        Ok(())
    }

    /// The Raft group `id` on this node and its proposer.
    pub(crate) fn group_handles(&self, id: u64) -> Result<GroupHandles, CommandError> {
        if id == META_GROUP {
            let meta = self.meta();
            return Ok((meta.group.clone(), meta.proposals.clone()));
        }
        self.shards()
            .list()
            .iter()
            .find(|s| group_of_shard(s.id) == id)
            .map(|s| (s.group.clone(), s.proposals.clone()))
            .ok_or_else(|| CommandError::Invalid(format!("no group {id} on this node")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, down: bool, leaving: bool) -> NodeRecord {
        NodeRecord {
            raft_id: id,
            name: format!("{id:040}"),
            grpc_addr: String::new(),
            http_addr: String::new(),
            resp_addr: String::new(),
            down,
            leaving,
        }
    }

    #[test]
    fn removals_wait_until_every_shard_is_reported() {
        let reported = |shard: u32, children: Vec<u32>| ShardPlacement {
            shard,
            term: 1,
            membership_index: 1,
            leader: 1,
            voters: BTreeSet::from([1]),
            learners: BTreeSet::new(),
            caught_up: BTreeSet::new(),
            first_slot: 0,
            last_slot: 0,
            live_bytes: 0,
            children,
        };
        let first = [reported(0, vec![]), reported(1, vec![])];
        assert!(every_shard_reported(&first, 2));
        assert!(!every_shard_reported(&first[..1], 2));
        // A child named by its parent and not reported yet.
        let split = [reported(0, vec![2]), reported(1, vec![])];
        assert!(!every_shard_reported(&split, 2));
        let all = [
            reported(0, vec![2]),
            reported(1, vec![]),
            reported(2, vec![]),
        ];
        assert!(every_shard_reported(&all, 2));
    }

    #[test]
    fn a_removal_is_refused_when_too_few_nodes_or_voters_would_stay() {
        let records = [
            record(1, false, false),
            record(2, false, false),
            record(3, true, false),
            record(4, false, false),
        ];
        let all: BTreeSet<u64> = [1, 2, 3].into();
        // Two serving nodes stay for two replicas, and every group keeps a majority up.
        assert_eq!(
            removal_refused(&records, &records[3], 2, &[(1, all.clone())]),
            None
        );
        // Node 3 is down: without node 4 only two serve.
        let why = removal_refused(&records, &records[0], 3, &[]).unwrap();
        assert!(why.contains("2 serving node(s) for 3 replicas"), "{why}");
        // Voters {1, 2, 3} with 3 down: without 1, one of the two left is up.
        let why = removal_refused(&records, &records[0], 2, &[(5, all.clone())]).unwrap();
        assert!(
            why.contains("without a majority") && why.contains("group 5 (1 of 2 up)"),
            "{why}"
        );
        // Every group short of a majority is named, and no other.
        let groups = [(5, all), (6, [1, 3].into()), (7, [2, 4].into())];
        let why = removal_refused(&records, &records[0], 2, &groups).unwrap();
        assert!(
            why.ends_with("group 5 (1 of 2 up), group 6 (0 of 1 up)"),
            "{why}"
        );
    }

    #[test]
    fn a_node_down_past_the_replace_time_is_dead_only_while_enough_others_serve() {
        let replace = Duration::from_secs(60);
        let silent = BTreeMap::from([
            (2, Duration::from_secs(61)),
            (3, Duration::from_secs(59)),
            (4, Duration::ZERO),
        ]);
        let records = [
            record(1, false, false),
            record(2, true, false),
            record(3, true, false),
            record(4, false, true),
        ];
        // Node 1 alone serves (4 is leaving): for one replica per shard, 2 is replaced.
        let s = states(&records, &silent, replace, 1);
        assert_eq!(s[&1], NodeState::Up);
        assert_eq!(s[&2], NodeState::Dead);
        assert_eq!(s[&3], NodeState::Down, "not down long enough");
        assert_eq!(s[&4], NodeState::Draining);
        // For two replicas there is nowhere to recreate 2's: it stays down.
        let s = states(&records, &silent, replace, 2);
        assert_eq!(s[&2], NodeState::Down);
    }
}
