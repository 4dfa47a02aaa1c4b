//! The balancer's decisions, as a pure function of what the cluster looks like: which
//! replica to add, promote or remove, and which leadership to move, so that every group
//! keeps its voters on distinct serving nodes, a node that is leaving or gone for good has
//! its replicas recreated elsewhere, and replicas and leaderships spread evenly.
//!
//! No I/O, no clock, no tokio: the metadata leader calls [`plan`] every round with a view
//! read from the cluster map and the groups' memberships, and has the steps it returns
//! carried out ([`crate::balancer`]). The tests drive it through a simulated cluster of a
//! hundred nodes and a thousand shards with joins, leaves and failures.
//!
//! A replica moves as TiKV's regions do: a learner is added on the target (it catches up
//! from a snapshot, then the log), promoted to voter once caught up, and then the voter
//! that is to go is removed (its leadership handed over first). Each group takes one step
//! per round: Raft changes membership one node at a time.
//!
//! Invariants of the steps returned (checked by the simulation after every round):
//! - a voter is removed only while the group has more voters than it wants, and only when
//!   the voters left that are up still form a majority of the voters left;
//! - a learner is promoted only once caught up;
//! - no more than [`Limits::moves_max`] groups have a learner at once, and no node receives
//!   more than [`Limits::moves_per_node_max`] learners at once;
//! - new replicas and leaderships go only to nodes that are up and not leaving.

use std::collections::{BTreeMap, BTreeSet};

/// How the balancer sees a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Up,
    /// Not heard from, for less than the replace time: its replicas stay where they are (it
    /// may come back), but it gets no new replica and no leadership.
    Down,
    /// Down for longer than the replace time: its replicas are recreated elsewhere.
    Dead,
    /// Leaving on request: its leaderships move away and its replicas are recreated
    /// elsewhere; once it holds none it may be removed from the map.
    Draining,
}

impl NodeState {
    /// Whether a voter here counts toward the group's replicas (it is not to be replaced).
    fn keeps(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Down)
    }
}

/// One Raft group as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub id: u64,
    /// How many voters the group should have.
    pub replicas: usize,
    pub voters: BTreeSet<u64>,
    /// Learners, each with whether it has caught up with the leader's log.
    pub learners: BTreeMap<u64, bool>,
    /// Its leader, if it has one (a group without a leader cannot change).
    pub leader: Option<u64>,
    /// Whether its replicas and leadership count toward the balance. The metadata group's
    /// do not: its load is small, and counting it would let it take a shard leadership's
    /// place on a node. It is still repaired, and moved off nodes that leave.
    pub counted: bool,
}

/// Bounds on what moves at once, so that moving data never starves foreground requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Groups with a learner being added, cluster-wide.
    pub moves_max: usize,
    /// Learners being added to one node at once (what its disk and network take in).
    pub moves_per_node_max: usize,
    /// Leadership transfers made for balance in one round.
    pub transfers_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            moves_max: 4,
            moves_per_node_max: 1,
            transfers_max: 4,
        }
    }
}

/// One change to one group.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Step {
    AddLearner { group: u64, node: u64 },
    Promote { group: u64, node: u64 },
    RemoveVoter { group: u64, node: u64 },
    RemoveLearner { group: u64, node: u64 },
    TransferLeader { group: u64, to: u64 },
}

impl Step {
    /// What the step does, in one word (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::AddLearner { .. } => "add_learner",
            Step::Promote { .. } => "promote",
            Step::RemoveVoter { .. } => "remove_voter",
            Step::RemoveLearner { .. } => "remove_learner",
            Step::TransferLeader { .. } => "transfer_leader",
        }
    }

    pub fn group(&self) -> u64 {
        match *self {
            Step::AddLearner { group, .. }
            | Step::Promote { group, .. }
            | Step::RemoveVoter { group, .. }
            | Step::RemoveLearner { group, .. }
            | Step::TransferLeader { group, .. } => group,
        }
    }
}

/// Counts the plan keeps up to date as it chooses steps, so that one round's choices see
/// each other.
struct Tally<'a> {
    nodes: &'a BTreeMap<u64, NodeState>,
    /// Replicas (voters and learners) per node.
    replicas: BTreeMap<u64, usize>,
    /// Leaderships per node.
    leaders: BTreeMap<u64, usize>,
    /// Learners being added, per node.
    inbound: BTreeMap<u64, usize>,
    /// Groups with a learner.
    moves: usize,
}

impl<'a> Tally<'a> {
    fn new(nodes: &'a BTreeMap<u64, NodeState>, groups: &[GroupView]) -> Self {
        let mut tally = Tally {
            nodes,
            replicas: nodes.keys().map(|&n| (n, 0)).collect(),
            leaders: nodes.keys().map(|&n| (n, 0)).collect(),
            inbound: BTreeMap::new(),
            moves: 0,
        };
        for g in groups {
            for n in g.learners.keys() {
                *tally.inbound.entry(*n).or_default() += 1;
            }
            tally.moves += usize::from(!g.learners.is_empty());
            if !g.counted {
                continue;
            }
            for n in g.voters.iter().chain(g.learners.keys()) {
                *tally.replicas.entry(*n).or_default() += 1;
            }
            if let Some(l) = g.leader {
                *tally.leaders.entry(l).or_default() += 1;
            }
        }
        tally
    }

    fn state(&self, node: u64) -> NodeState {
        // A node missing from the map is gone: its replicas are replaced.
        self.nodes.get(&node).copied().unwrap_or(NodeState::Dead)
    }

    fn up(&self, node: u64) -> bool {
        self.state(node) == NodeState::Up
    }

    /// The nodes that are up, in id order.
    fn up_nodes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|&(_, &s)| s == NodeState::Up)
            .map(|(&n, _)| n)
            .collect()
    }

    fn count(&self, node: u64) -> usize {
        self.replicas.get(&node).copied().unwrap_or(0)
    }

    fn led(&self, node: u64) -> usize {
        self.leaders.get(&node).copied().unwrap_or(0)
    }

    /// The up node outside `group` that should take a new replica of it: the fewest
    /// replicas, then the lowest id; none if every candidate is taking in its share.
    fn target(&self, limits: &Limits, group: &GroupView) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|&(&n, &s)| {
                s == NodeState::Up
                    && !group.voters.contains(&n)
                    && !group.learners.contains_key(&n)
                    && self.inbound.get(&n).copied().unwrap_or(0) < limits.moves_per_node_max
            })
            .map(|(&n, _)| n)
            .min_by_key(|&n| (self.count(n), n))
    }

    fn add_learner(&mut self, g: &GroupView, node: u64) {
        if g.counted {
            *self.replicas.entry(node).or_default() += 1;
        }
        *self.inbound.entry(node).or_default() += 1;
        self.moves += 1;
    }

    fn remove_replica(&mut self, g: &GroupView, node: u64) {
        if !g.counted {
            return;
        }
        if let Some(c) = self.replicas.get_mut(&node) {
            *c = c.saturating_sub(1);
        }
    }

    fn transfer(&mut self, g: &GroupView, from: Option<u64>, to: u64) {
        if g.counted {
            self.shift(from, to);
        }
    }

    /// One leadership of a counted group moves from `from` to `to`.
    fn shift(&mut self, from: Option<u64>, to: u64) {
        if let Some(from) = from {
            if let Some(c) = self.leaders.get_mut(&from) {
                *c = c.saturating_sub(1);
            }
        }
        *self.leaders.entry(to).or_default() += 1;
    }
}

/// The steps for this round, at most one per group.
pub fn plan(nodes: &BTreeMap<u64, NodeState>, groups: &[GroupView], limits: &Limits) -> Vec<Step> {
    let mut tally = Tally::new(nodes, groups);
    let mut steps = Vec::new();
    let mut busy: BTreeSet<u64> = BTreeSet::new();
    // Repairs first, the groups with the fewest voters worth keeping first.
    let mut order: Vec<&GroupView> = groups.iter().filter(|g| g.leader.is_some()).collect();
    order.sort_by_key(|g| {
        let kept = g.voters.iter().filter(|&&n| tally.state(n).keeps()).count();
        (kept as i64 - g.replicas as i64, g.id)
    });
    let mut repairing = false;
    for g in &order {
        if let Some(step) = repair(&mut tally, limits, g) {
            busy.insert(g.id);
            repairing |= matches!(step, Step::AddLearner { .. });
            steps.push(step);
        } else if g.voters.iter().filter(|&&n| tally.state(n).keeps()).count() < g.replicas {
            repairing = true;
        }
    }
    // Balance replicas only when nothing needs repair: a repair may need the move slots.
    if !repairing {
        balance_replicas(&mut tally, limits, groups, &mut busy, &mut steps);
    }
    balance_leaders(&mut tally, limits, groups, &mut busy, &mut steps);
    steps
}

/// The step that brings `group` toward its wanted voters on nodes worth keeping, if any.
fn repair(tally: &mut Tally, limits: &Limits, g: &GroupView) -> Option<Step> {
    let id = g.id;
    // Only a serving leader changes its group (a down one is replaced by an election).
    let leader = g.leader?;
    if !matches!(tally.state(leader), NodeState::Up | NodeState::Draining) {
        return None;
    }
    // A learner on a node that is not serving will not catch up: drop it.
    if let Some((&node, _)) = g.learners.iter().find(|&(&n, _)| !tally.up(n)) {
        return Some(Step::RemoveLearner { group: id, node });
    }
    // A learner that caught up was added for a reason: it becomes a voter, and the voter
    // to go is removed next.
    if let Some((&node, _)) = g.learners.iter().find(|&(_, &caught_up)| caught_up) {
        return Some(Step::Promote { group: id, node });
    }
    if g.voters.len() > g.replicas {
        return remove_one(tally, g);
    }
    // Leadership off a node that is leaving.
    if tally.state(leader) == NodeState::Draining {
        let to = best_leader(tally, g, leader)?;
        tally.transfer(g, Some(leader), to);
        return Some(Step::TransferLeader { group: id, to });
    }
    let kept = g.voters.iter().filter(|&&n| tally.state(n).keeps()).count();
    if kept < g.replicas && g.learners.is_empty() && tally.moves < limits.moves_max {
        let node = tally.target(limits, g)?;
        tally.add_learner(g, node);
        return Some(Step::AddLearner { group: id, node });
    }
    None
}

/// Removes the voter that should go from a group with too many: one on a dead node, then
/// one leaving, then one down, then the one on the most loaded node; its leadership is
/// handed over first. None while the removal would leave the up voters short of a majority.
fn remove_one(tally: &mut Tally, g: &GroupView) -> Option<Step> {
    let rank = |n: u64| match tally.state(n) {
        NodeState::Dead => 0,
        NodeState::Draining => 1,
        NodeState::Down => 2,
        NodeState::Up => 3,
    };
    let node = *g.voters.iter().min_by_key(|&&n| {
        (
            rank(n),
            std::cmp::Reverse(tally.count(n)),
            std::cmp::Reverse(n),
        )
    })?;
    if g.leader == Some(node) {
        let to = best_leader(tally, g, node)?;
        tally.transfer(g, Some(node), to);
        return Some(Step::TransferLeader { group: g.id, to });
    }
    let left = g.voters.len() - 1;
    let up_left = g
        .voters
        .iter()
        .filter(|&&n| n != node && tally.up(n))
        .count();
    if up_left * 2 <= left {
        return None;
    }
    tally.remove_replica(g, node);
    Some(Step::RemoveVoter { group: g.id, node })
}

/// The up voter of `g` other than `except` with the fewest leaderships.
fn best_leader(tally: &Tally, g: &GroupView, except: u64) -> Option<u64> {
    g.voters
        .iter()
        .copied()
        .filter(|&n| n != except && tally.up(n))
        .min_by_key(|&n| (tally.led(n), n))
}

/// Starts moves from the up node with the most replicas to the one with the fewest while
/// they differ by more than one, within the move limits.
fn balance_replicas(
    tally: &mut Tally,
    limits: &Limits,
    groups: &[GroupView],
    busy: &mut BTreeSet<u64>,
    steps: &mut Vec<Step>,
) {
    let up = tally.up_nodes();
    while tally.moves < limits.moves_max {
        let Some(&from) = up
            .iter()
            .max_by_key(|&&n| (tally.count(n), std::cmp::Reverse(n)))
        else {
            return;
        };
        let to = up
            .iter()
            .copied()
            .filter(|&n| tally.inbound.get(&n).copied().unwrap_or(0) < limits.moves_per_node_max)
            .min_by_key(|&n| (tally.count(n), n));
        let Some(to) = to else {
            return;
        };
        if tally.count(from) <= tally.count(to) + 1 {
            return;
        }
        // A settled group on `from` and not on `to`.
        let Some(g) = groups.iter().find(|g| {
            g.counted
                && g.leader.is_some()
                && !busy.contains(&g.id)
                && g.learners.is_empty()
                && g.voters.len() == g.replicas
                && g.voters.contains(&from)
                && !g.voters.contains(&to)
        }) else {
            return;
        };
        busy.insert(g.id);
        tally.add_learner(g, to);
        // Counted gone from `from` now: the voter removed after the promotion is the one
        // on the most loaded node, which this is.
        tally.remove_replica(g, from);
        steps.push(Step::AddLearner {
            group: g.id,
            node: to,
        });
    }
}

/// Evens out leaderships: from the up node leading the fewest groups, looks for a chain of
/// handovers (each group's leadership to one of its own voters) that ends at a node leading
/// at least two more, and makes it: the first node gains one, the last loses one, the
/// nodes between keep their counts. At most [`Limits::transfers_max`] handovers per round.
fn balance_leaders(
    tally: &mut Tally,
    limits: &Limits,
    groups: &[GroupView],
    busy: &mut BTreeSet<u64>,
    steps: &mut Vec<Step>,
) {
    // Who could hand a leadership to whom: `gives[to]` lists (leader, group). A group
    // handed over this round is busy from then on, and skipped.
    let mut gives: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for g in groups.iter().filter(|g| g.counted && !busy.contains(&g.id)) {
        let Some(leader) = g.leader.filter(|&l| tally.up(l)) else {
            continue;
        };
        for &v in g.voters.iter().filter(|&&v| v != leader && tally.up(v)) {
            gives.entry(v).or_default().push((leader, g.id));
        }
    }
    let mut transfers = 0;
    while transfers < limits.transfers_max {
        let Some(start) = tally
            .up_nodes()
            .into_iter()
            .min_by_key(|&n| (tally.led(n), n))
        else {
            return;
        };
        // Breadth first from `start` toward nodes that can give, to the first one leading
        // two more than `start`.
        let floor = tally.led(start);
        let mut came_from: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut end = None;
        while let Some(node) = queue.pop_front() {
            if node != start && tally.led(node) >= floor + 2 {
                end = Some(node);
                break;
            }
            for &(giver, group) in gives.get(&node).into_iter().flatten() {
                if giver != start && !came_from.contains_key(&giver) && !busy.contains(&group) {
                    came_from.insert(giver, (node, group));
                    queue.push_back(giver);
                }
            }
        }
        let Some(mut giver) = end else {
            return;
        };
        // Walk back: each giver hands its group to the node it was reached from.
        let mut path = Vec::new();
        while giver != start {
            let (taker, group) = came_from[&giver];
            path.push((giver, taker, group));
            giver = taker;
        }
        if transfers + path.len() > limits.transfers_max {
            return;
        }
        for (from, to, group) in path {
            busy.insert(group);
            tally.shift(Some(from), to);
            steps.push(Step::TransferLeader { group, to });
            transfers += 1;
        }
    }
}

#[cfg(test)]
mod tests;
