//! The balancer driven through a simulated cluster: every round the simulation elects
//! leaders where needed, lets learners catch up, asks [`plan`] for steps, checks each step
//! against the invariants before applying it, and injects joins, leaves and failures.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// The metadata group's id in the simulation (shards are 0..).
const META: u64 = u64::MAX;

struct Sim {
    rng: StdRng,
    nodes: BTreeMap<u64, NodeState>,
    /// Rounds each down node has been down.
    down_for: BTreeMap<u64, u32>,
    groups: Vec<GroupView>,
    /// Rounds left before a learner has caught up, by (group, node).
    catching_up: BTreeMap<(u64, u64), u32>,
    next_node: u64,
    limits: Limits,
    /// Rounds after which a down node is dead (its replicas are recreated elsewhere).
    replace_after: u32,
    /// Learners added so far (one per replica moved or recreated).
    moves: usize,
    /// Most nodes failed (down or dead) at once: fewer than half a group's voters, so no
    /// group loses its majority to failures alone.
    failures_max: usize,
    /// What [`Sim::chaos`] did, by kind: a run that did nothing proves nothing.
    events: BTreeMap<&'static str, usize>,
    /// With `brief_failures`, one more node than `failures_max` may be down at once, for a
    /// few rounds (fewer than `replace_after`, so it is never replaced): groups with more
    /// voters on failed nodes than their majority allows stop, and must not be made worse.
    brief_failures: bool,
    /// The node down for a few rounds beyond `failures_max`, and the rounds it has left.
    brief: Option<(u64, u32)>,
}

impl Sim {
    /// `nodes` nodes; `shards` groups of `replicas` voters placed at random on the first
    /// `crowded` nodes only (a cluster that just grew), and a metadata group of
    /// [`crate::meta::meta_voters`].
    fn new(seed: u64, nodes: u64, shards: u64, replicas: usize, crowded: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut groups = Vec::new();
        for id in (0..shards).chain([META]) {
            let want = if id == META {
                crate::meta::meta_voters(replicas)
            } else {
                replicas
            };
            let mut voters = BTreeSet::new();
            while voters.len() < want {
                voters.insert(rng.random_range(1..=crowded));
            }
            let leader = voters.iter().next().copied();
            groups.push(GroupView {
                id,
                replicas: want,
                voters,
                learners: BTreeMap::new(),
                leader,
                counted: true,
            });
        }
        Sim {
            rng,
            nodes: (1..=nodes).map(|n| (n, NodeState::Up)).collect(),
            down_for: BTreeMap::new(),
            groups,
            catching_up: BTreeMap::new(),
            next_node: nodes + 1,
            limits: Limits {
                moves_max: 16,
                moves_per_node_max: 2,
                transfers_max: 16,
            },
            replace_after: 20,
            moves: 0,
            failures_max: (replicas - 1) / 2,
            events: BTreeMap::new(),
            brief_failures: false,
            brief: None,
        }
    }

    fn alive(&self, node: u64) -> bool {
        matches!(
            self.nodes.get(&node),
            Some(NodeState::Up | NodeState::Draining)
        )
    }

    /// One round; panics when a step breaks an invariant.
    fn round(&mut self) {
        // Raft's part: a group whose leader is not serving elects an up voter, if a
        // majority of its voters is alive.
        for g in &mut self.groups {
            let serving = g.leader.is_some_and(|l| {
                matches!(
                    self.nodes.get(&l),
                    Some(NodeState::Up | NodeState::Draining)
                )
            });
            if !serving {
                // A leaving node still votes; an up one is elected if there is one.
                let alive: Vec<u64> = g
                    .voters
                    .iter()
                    .copied()
                    .filter(|n| {
                        matches!(self.nodes.get(n), Some(NodeState::Up | NodeState::Draining))
                    })
                    .collect();
                let up = alive
                    .iter()
                    .copied()
                    .find(|n| self.nodes.get(n) == Some(&NodeState::Up));
                g.leader = (alive.len() * 2 > g.voters.len()).then(|| up.unwrap_or(alive[0]));
            }
        }
        for g in &mut self.groups {
            for (node, caught_up) in g.learners.iter_mut() {
                let left = self.catching_up.entry((g.id, *node)).or_insert(0);
                *left = left.saturating_sub(1);
                *caught_up = *left == 0;
            }
        }
        let steps = plan(&self.nodes, &self.groups, &self.limits);
        let mut touched = BTreeSet::new();
        for step in steps {
            assert!(
                touched.insert(step.group()),
                "two steps for one group: {step:?}"
            );
            self.apply(step);
        }
        let moving = self
            .groups
            .iter()
            .filter(|g| !g.learners.is_empty())
            .count();
        assert!(moving <= self.limits.moves_max, "{moving} moves at once");
        let mut inbound: BTreeMap<u64, usize> = BTreeMap::new();
        for g in &self.groups {
            for n in g.learners.keys() {
                *inbound.entry(*n).or_default() += 1;
            }
            let alive = g.voters.iter().filter(|&&n| self.alive(n)).count();
            // Failures alone may stop a group (more of its voters failed than a majority
            // of `replicas` allows); the balancer must never be what stops one.
            let failed = g.voters.len() - alive;
            assert!(
                alive * 2 > g.voters.len() || failed > (g.replicas - 1) / 2,
                "group {} lost its majority: {:?} of {:?}",
                g.id,
                alive,
                g.voters
            );
        }
        assert!(
            inbound
                .values()
                .all(|&c| c <= self.limits.moves_per_node_max),
            "{inbound:?}"
        );
        // Time passes for down nodes; a dead or leaving node that holds nothing leaves the
        // map (replaced, or removed).
        for (node, rounds) in &mut self.down_for {
            *rounds += 1;
            if *rounds > self.replace_after {
                self.nodes.insert(*node, NodeState::Dead);
            }
        }
        if !self
            .nodes
            .values()
            .any(|s| matches!(s, NodeState::Dead | NodeState::Draining))
        {
            return;
        }
        let holding: BTreeSet<u64> = self
            .groups
            .iter()
            .flat_map(|g| g.voters.iter().chain(g.learners.keys()).copied())
            .collect();
        let gone: Vec<u64> = self
            .nodes
            .iter()
            .filter(|&(n, s)| {
                matches!(s, NodeState::Dead | NodeState::Draining) && !holding.contains(n)
            })
            .map(|(&n, _)| n)
            .collect();
        for n in gone {
            self.nodes.remove(&n);
            self.down_for.remove(&n);
        }
    }

    fn apply(&mut self, step: Step) {
        let g = self
            .groups
            .iter_mut()
            .find(|g| g.id == step.group())
            .expect("a step for a known group");
        match step {
            Step::AddLearner { node, .. } => {
                assert_eq!(self.nodes.get(&node), Some(&NodeState::Up), "{step:?}");
                assert!(
                    !g.voters.contains(&node) && g.learners.is_empty(),
                    "{step:?} on {g:?}"
                );
                g.learners.insert(node, false);
                let rounds = self.rng.random_range(1..=4);
                self.catching_up.insert((g.id, node), rounds);
                self.moves += 1;
            }
            Step::Promote { node, .. } => {
                assert_eq!(g.learners.remove(&node), Some(true), "{step:?} on {g:?}");
                g.voters.insert(node);
            }
            Step::RemoveVoter { node, .. } => {
                assert!(g.voters.len() > g.replicas, "{step:?} on {g:?}");
                assert_ne!(g.leader, Some(node), "{step:?} removes the leader");
                if self.nodes.get(&node) == Some(&NodeState::Up) {
                    *self.events.entry("up voter removed").or_default() += 1;
                }
                g.voters.remove(&node);
                let up = g
                    .voters
                    .iter()
                    .filter(|n| self.nodes.get(n) == Some(&NodeState::Up))
                    .count();
                assert!(
                    up * 2 > g.voters.len(),
                    "{step:?} left {g:?} short of a majority"
                );
            }
            Step::RemoveLearner { node, .. } => {
                assert!(g.learners.remove(&node).is_some(), "{step:?} on {g:?}");
            }
            Step::TransferLeader { to, .. } => {
                assert!(g.voters.contains(&to), "{step:?} on {g:?}");
                assert_eq!(self.nodes.get(&to), Some(&NodeState::Up), "{step:?}");
                g.leader = Some(to);
            }
        }
    }

    /// Something happens to the cluster, now and then: a node joins, one is asked to
    /// leave, one fails (at most `failures_max` failed nodes at a time, so no group loses a
    /// majority to failures alone), a failed one comes back.
    fn chaos(&mut self) {
        let failed = self
            .nodes
            .values()
            .filter(|s| matches!(s, NodeState::Down | NodeState::Dead))
            .count();
        let up: Vec<u64> = self
            .nodes
            .iter()
            .filter(|&(_, &s)| s == NodeState::Up)
            .map(|(&n, _)| n)
            .collect();
        // The brief failure ends after its few rounds.
        if let Some((n, left)) = self.brief.as_mut() {
            *left -= 1;
            if *left == 0 {
                let n = *n;
                self.nodes.insert(n, NodeState::Up);
                self.down_for.remove(&n);
                self.brief = None;
            }
        }
        match self.rng.random_range(0..100) {
            0..3 => {
                self.nodes.insert(self.next_node, NodeState::Up);
                self.next_node += 1;
                *self.events.entry("join").or_default() += 1;
            }
            3..5 if up.len() > 8 => {
                let n = up[self.rng.random_range(0..up.len())];
                self.nodes.insert(n, NodeState::Draining);
                *self.events.entry("leave").or_default() += 1;
            }
            5..9 if failed < self.failures_max && up.len() > 8 => {
                let n = self.victim(&up);
                self.nodes.insert(n, NodeState::Down);
                self.down_for.insert(n, 0);
                *self.events.entry("failure").or_default() += 1;
                if failed + 1 == self.failures_max {
                    *self.events.entry("most failures at once").or_default() += 1;
                }
            }
            9..14 => {
                let brief = self.brief.map(|(n, _)| n);
                let down: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|&(n, &s)| s == NodeState::Down && Some(*n) != brief)
                    .map(|(&n, _)| n)
                    .collect();
                if let Some(&n) = down.first() {
                    self.nodes.insert(n, NodeState::Up);
                    self.down_for.remove(&n);
                    *self.events.entry("return").or_default() += 1;
                }
            }
            _ => {}
        }
        // With the most failures at once, now and then one more, briefly.
        if self.brief_failures
            && self.brief.is_none()
            && failed >= self.failures_max
            && up.len() > 8
            && self.rng.random_range(0..10) == 0
        {
            let n = self.victim(&up);
            self.nodes.insert(n, NodeState::Down);
            self.brief = Some((n, self.rng.random_range(2..=5)));
            *self
                .events
                .entry("brief failure beyond the most")
                .or_default() += 1;
        }
    }

    /// The node to fail, of the `up` ones: mostly a voter of a group with a move under way
    /// (a learner, or a voter more than it wants), the one with the most voters failed
    /// already: where a removal to come could cost the group its majority.
    fn victim(&mut self, up: &[u64]) -> u64 {
        let moving = self
            .groups
            .iter()
            .filter(|g| !g.learners.is_empty() || g.voters.len() > g.replicas)
            .max_by_key(|g| g.voters.iter().filter(|n| !self.alive(**n)).count());
        match moving {
            Some(g) if self.rng.random_range(0..10) < 7 => {
                let candidates: Vec<u64> = g
                    .voters
                    .iter()
                    .copied()
                    .filter(|n| up.contains(n) && g.leader != Some(*n))
                    .collect();
                if candidates.is_empty() {
                    up[self.rng.random_range(0..up.len())]
                } else {
                    candidates[self.rng.random_range(0..candidates.len())]
                }
            }
            _ => up[self.rng.random_range(0..up.len())],
        }
    }

    /// Why the cluster is not settled yet, if it is not: every group has its voters, all on
    /// up nodes, no learner, an up leader; replicas and leaderships per up node within one
    /// of their means.
    fn unsettled(&self) -> Option<String> {
        for g in &self.groups {
            let up = g
                .voters
                .iter()
                .all(|n| self.nodes.get(n) == Some(&NodeState::Up));
            let led = g
                .leader
                .is_some_and(|l| self.nodes.get(&l) == Some(&NodeState::Up));
            if g.voters.len() != g.replicas || !up || !g.learners.is_empty() || !led {
                return Some(format!("group {g:?}"));
            }
        }
        if self.nodes.values().any(|&s| s != NodeState::Up) {
            return Some(format!("nodes {:?}", self.nodes));
        }
        let mut replicas: BTreeMap<u64, f64> = self.nodes.keys().map(|&n| (n, 0.0)).collect();
        let mut leaders = replicas.clone();
        for g in &self.groups {
            for n in &g.voters {
                *replicas.get_mut(n).unwrap() += 1.0;
            }
            *leaders.get_mut(&g.leader.unwrap()).unwrap() += 1.0;
        }
        for (what, counts) in [("replicas", &replicas), ("leaders", &leaders)] {
            let mean = counts.values().sum::<f64>() / counts.len() as f64;
            if let Some((n, c)) = counts.iter().find(|&(_, c)| (c - mean).abs() > 1.0) {
                return Some(format!("node {n} has {c} {what}; the mean is {mean:.2}"));
            }
        }
        None
    }

    /// Rounds until settled, at most `rounds_max`.
    fn settle(&mut self, rounds_max: usize) -> usize {
        for round in 0..rounds_max {
            if self.unsettled().is_none() {
                return round;
            }
            self.round();
        }
        panic!(
            "not settled after {rounds_max} rounds: {}",
            self.unsettled().unwrap()
        );
    }

    /// Replicas that must move for the cluster to settle, at least: those on nodes that
    /// are not up, and the excess of each up node over the ceiling of the mean.
    fn moves_needed(&self) -> usize {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut total = 0;
        for g in &self.groups {
            total += g.replicas;
            for n in &g.voters {
                *counts.entry(*n).or_default() += 1;
            }
        }
        let up = self.nodes.values().filter(|&&s| s == NodeState::Up).count();
        let ceiling = total.div_ceil(up);
        counts
            .iter()
            .map(|(n, &c)| match self.nodes.get(n) {
                Some(NodeState::Up) => c.saturating_sub(ceiling),
                _ => c,
            })
            .sum()
    }
}

/// The seeds to run: `CAIRN_BALANCE_SEEDS=N` runs N (0 to N − 1), else `default`.
fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("CAIRN_BALANCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    0..n
}

/// Chaos for `rounds` rounds; every kind of event must have happened, up to the most
/// failures at once (a run without them would check nothing of them).
fn churn(sim: &mut Sim, seed: u64, rounds: usize) {
    for _ in 0..rounds {
        sim.chaos();
        sim.round();
    }
    for kind in [
        "join",
        "leave",
        "failure",
        "return",
        "most failures at once",
    ] {
        assert!(
            sim.events.contains_key(kind),
            "seed {seed}: no {kind:?} in {} rounds: {:?}",
            rounds,
            sim.events
        );
    }
}

/// A hundred nodes and a thousand shards of three, placed at first on ten of them, with
/// joins, leaves and failures for a while: no step ever breaks an invariant, and once
/// things calm down the cluster settles, replicas and leaders within one of the mean, in
/// a bounded number of rounds and of moves. Two seeds by default (each takes about ten
/// seconds in a debug build); `CAIRN_BALANCE_SEEDS=N` runs N.
#[test]
fn a_hundred_nodes_and_a_thousand_shards_settle_through_joins_leaves_and_failures() {
    for seed in seeds(2) {
        let mut sim = Sim::new(seed, 100, 1000, 3, 10);
        churn(&mut sim, seed, 300);
        // Calm: failed nodes stay failed (and are replaced), nothing else happens.
        let moves_before = sim.moves;
        let needed = sim.moves_needed();
        let in_flight = sim.groups.iter().filter(|g| !g.learners.is_empty()).count();
        let rounds = sim.settle(5000);
        let moves = sim.moves - moves_before;
        // Each move fixes one misplaced replica, give or take the ones already in flight
        // and the rounding of the mean.
        let bound = needed + in_flight + needed / 10 + 10;
        assert!(
            moves <= bound,
            "seed {seed}: {moves} moves to settle; at least {needed} were needed (bound {bound})"
        );
        eprintln!("seed {seed}: settled in {rounds} rounds, {moves} moves ({needed} needed)");
        // Settled means settled: no more steps.
        assert_eq!(
            plan(&sim.nodes, &sim.groups, &sim.limits),
            Vec::new(),
            "seed {seed}"
        );
    }
}

/// Five replicas per shard (and five voters of the map), two nodes failed at once at
/// times, and now and then a third for a few rounds (groups with three of their voters on
/// failed nodes stop): no step breaks an invariant, and the cluster settles as with three.
/// The majority checks run every round, but these runs rarely reach a removal that could
/// break one (three failed voters of five in the round between a promotion and a
/// removal): the removal order and guard are what
/// `a_removal_never_leaves_the_up_voters_short_of_a_majority` checks.
#[test]
fn with_five_replicas_and_two_failures_at_once_the_cluster_settles() {
    for seed in seeds(2) {
        let mut sim = Sim::new(100 + seed, 40, 200, 5, 10);
        assert_eq!(sim.failures_max, 2);
        sim.brief_failures = true;
        churn(&mut sim, seed, 400);
        assert!(
            sim.events.contains_key("brief failure beyond the most"),
            "{:?}",
            sim.events
        );
        if let Some((n, _)) = sim.brief.take() {
            sim.nodes.insert(n, NodeState::Up);
        }
        sim.settle(5000);
        assert_eq!(plan(&sim.nodes, &sim.groups, &sim.limits), Vec::new());
    }
}

/// A node asked to leave hands over its leaderships and sees its replicas recreated
/// elsewhere, one move at a time per target, and then holds nothing.
#[test]
fn a_draining_node_ends_with_nothing() {
    let mut sim = Sim::new(7, 6, 60, 3, 6);
    sim.settle(2000);
    sim.nodes.insert(3, NodeState::Draining);
    sim.settle(2000);
    assert!(!sim.nodes.contains_key(&3), "node 3 still holds replicas");
    assert!(sim.groups.iter().all(|g| !g.voters.contains(&3)));
}

/// A down node keeps its replicas until the replace time has passed; then they are
/// recreated elsewhere, and no group ever loses its majority on the way.
#[test]
fn a_down_node_is_waited_for_then_replaced() {
    let mut sim = Sim::new(11, 5, 40, 3, 5);
    sim.settle(2000);
    let held = |sim: &Sim| sim.groups.iter().filter(|g| g.voters.contains(&2)).count();
    let before = held(&sim);
    assert!(before > 0);
    sim.nodes.insert(2, NodeState::Down);
    sim.down_for.insert(2, 0);
    for _ in 0..sim.replace_after {
        sim.round();
        assert_eq!(
            held(&sim),
            before,
            "replicas moved off a node that may come back"
        );
    }
    sim.settle(2000);
    assert!(!sim.nodes.contains_key(&2));
}

/// Three nodes, three replicas: a dead node cannot be replaced (no fourth node), and the
/// balancer does not try to squeeze two replicas onto one node.
#[test]
fn nothing_moves_where_it_cannot_go() {
    let mut sim = Sim::new(3, 3, 10, 3, 3);
    sim.settle(100);
    sim.nodes.insert(1, NodeState::Dead);
    for _ in 0..50 {
        sim.round();
    }
    for g in &sim.groups {
        assert_eq!(g.voters.len(), 3, "{g:?}");
        assert!(g.learners.is_empty(), "{g:?}");
    }
}

/// A voter is removed only when the up voters left still form a majority of the voters
/// left, and a voter on a node that is not up goes first.
#[test]
fn a_removal_never_leaves_the_up_voters_short_of_a_majority() {
    use NodeState::{Down, Up};
    let nodes = BTreeMap::from([(1, Up), (2, Down), (3, Down), (4, Down), (5, Up), (6, Up)]);
    let group = |voters: &[u64]| GroupView {
        id: 0,
        replicas: 3,
        voters: voters.iter().copied().collect(),
        learners: BTreeMap::new(),
        leader: Some(1),
        counted: true,
    };
    // Five voters, two up: without one of the down ones, two of four would be up.
    let steps = plan(&nodes, &[group(&[1, 2, 3, 4, 5])], &Limits::default());
    assert!(
        !steps.iter().any(|s| matches!(s, Step::RemoveVoter { .. })),
        "{steps:?}"
    );
    // Four voters, three up: the down one goes.
    let steps = plan(&nodes, &[group(&[1, 2, 5, 6])], &Limits::default());
    assert_eq!(steps, vec![Step::RemoveVoter { group: 0, node: 2 }]);
}

#[test]
fn the_metadata_group_is_not_counted_in_the_balance() {
    let nodes: BTreeMap<u64, NodeState> = (1..=3).map(|n| (n, NodeState::Up)).collect();
    // Group 0 is the metadata group; node 1 leads everything.
    let mut groups: Vec<GroupView> = (0..5)
        .map(|id| GroupView {
            id,
            replicas: 3,
            voters: [1, 2, 3].into(),
            learners: BTreeMap::new(),
            leader: Some(1),
            counted: id != 0,
        })
        .collect();
    for _ in 0..10 {
        let steps = plan(&nodes, &groups, &Limits::default());
        if steps.is_empty() {
            break;
        }
        for step in steps {
            match step {
                Step::TransferLeader { group, to } => groups[group as usize].leader = Some(to),
                other => panic!("a settled cluster needs no {other:?}"),
            }
        }
    }
    // Four shards over three nodes: node 1 keeps two, the others take one each, whoever
    // leads the map (counting the map, node 1 would keep only one shard).
    let led = |n| {
        groups
            .iter()
            .filter(|g| g.counted && g.leader == Some(n))
            .count()
    };
    assert_eq!((led(1), led(2), led(3)), (2, 1, 1), "{groups:?}");
    assert_eq!(
        groups[0].leader,
        Some(1),
        "the map's leadership moved for balance"
    );
}
