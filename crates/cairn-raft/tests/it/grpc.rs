//! The peer network over real gRPC on loopback: three nodes, each hosting two groups that share
//! the node's WAL and one connection per node pair; a node whose server goes away falls behind
//! the purged log in both groups and catches up by snapshots streamed over gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cairn_raft::{Group, Groups, LogStore, NodeAddr, Peers, RaftService, StateMachine};
use cairn_storage::io::sim::SimIo;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::oneshot;

use crate::net::{self, History, Member, applied, config, contents, engine_options, last_index};

const GROUPS: [u64; 2] = [1, 2];

struct Node {
    addr: SocketAddr,
    groups: Arc<Groups>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Stops the node's groups and its server.
    async fn stop(&mut self) {
        for group in GROUPS {
            let _ = self.member(group).raft.shutdown().await;
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
    }

    fn member(&self, group: u64) -> Member {
        let g = self.groups.get(group).expect("group hosted");
        Member {
            raft: g.raft,
            sm: g.sm,
            observed: None,
        }
    }
}

/// Serves the node's groups on `addr` until told to stop.
async fn serve(
    addr: SocketAddr,
    groups: Arc<Groups>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    });
    let (stopping, ending) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .add_service(
            RaftService::new(groups)
                .ending_streams_on(ending)
                .into_server(),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.await;
            let _ = stopping.send(true);
        });
    let handle = tokio::spawn(async move {
        server.await.expect("serve");
    });
    (addr, tx, handle)
}

async fn start_node(id: u64, disk: &SimIo, peers: &Arc<Peers>) -> Node {
    let io: Arc<dyn cairn_storage::io::Io> = Arc::new(disk.clone());
    let wal = Arc::new(net::open_wal(&io).expect("open WAL"));
    let groups = Arc::new(Groups::new(id));
    for group in GROUPS {
        let sm = StateMachine::open(
            io.clone(),
            &Path::new("/node/shards").join(group.to_string()),
            engine_options(),
        )
        .expect("open replica");
        let handle = Group::start(
            id,
            config(),
            peers.group(group),
            LogStore::new(wal.clone(), group),
            sm,
        )
        .await
        .expect("start raft");
        groups.insert(group, handle);
    }
    let (addr, stop, server) = serve("127.0.0.1:0".parse().unwrap(), groups.clone()).await;
    Node {
        addr,
        groups,
        stop_server: Some(stop),
        server: Some(server),
    }
}

/// Every node as a member at its gRPC address.
fn members(nodes: &BTreeMap<u64, Node>) -> BTreeMap<u64, NodeAddr> {
    nodes
        .iter()
        .map(|(&id, n)| {
            let grpc = n.addr.to_string();
            (id, NodeAddr { grpc })
        })
        .collect()
}

async fn leader_of(nodes: &BTreeMap<u64, Node>, group: u64) -> Member {
    tokio::time::timeout(net::PATIENCE, async {
        loop {
            for node in nodes.values() {
                let m = node.member(group);
                let metrics = m.raft.metrics().borrow_watched().clone();
                if metrics.state == openraft::ServerState::Leader
                    && metrics.last_quorum_acked.is_some()
                    && metrics
                        .cluster_committed
                        .as_ref()
                        .is_some_and(|c| c.leader_id.term == metrics.current_term)
                {
                    return m;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a leader within the patience")
}

/// Three nodes on their own simulated disks (seeded from `seed`) with group `GROUPS[0]`
/// initialised and led.
struct Trio {
    peers: Arc<Peers>,
    nodes: BTreeMap<u64, Node>,
    disks: BTreeMap<u64, SimIo>,
    leader: Member,
    leader_id: u64,
}

impl Trio {
    async fn start(seed: u64) -> Trio {
        let peers = Arc::new(Peers::new());
        let disks: BTreeMap<u64, SimIo> =
            (1..=3u64).map(|id| (id, SimIo::new(seed + id))).collect();
        let mut nodes = BTreeMap::new();
        for (&id, disk) in &disks {
            nodes.insert(id, start_node(id, disk, &peers).await);
        }
        nodes[&1]
            .member(GROUPS[0])
            .raft
            .initialize(members(&nodes))
            .await
            .expect("initialize");
        let leader = leader_of(&nodes, GROUPS[0]).await;
        let leader_id = leader.raft.metrics().borrow_watched().id;
        Trio {
            peers,
            nodes,
            disks,
            leader,
            leader_id,
        }
    }

    /// The group's handle on node `id`.
    fn group(&self, id: u64) -> Group {
        self.nodes[&id].groups.get(GROUPS[0]).expect("group hosted")
    }

    /// A node that does not lead.
    fn follower(&self) -> u64 {
        (1..=3)
            .find(|&id| id != self.leader_id)
            .expect("a follower")
    }

    async fn stop(mut self) {
        for node in self.nodes.values_mut() {
            node.stop().await;
        }
    }
}

#[test]
fn groups_replicate_and_install_snapshots_over_grpc() {
    net::runtime().block_on(async {
        let peers = Arc::new(Peers::new());
        let mut nodes = BTreeMap::new();
        let mut disks = BTreeMap::new();
        for id in 1..=3u64 {
            let disk = SimIo::new(40 + id);
            nodes.insert(id, start_node(id, &disk, &peers).await);
            disks.insert(id, disk);
        }
        let members = members(&nodes);
        for group in GROUPS {
            nodes[&1]
                .member(group)
                .raft
                .initialize(members.clone())
                .await
                .expect("initialize");
        }
        let mut histories: BTreeMap<u64, History> = BTreeMap::new();
        for group in GROUPS {
            let leader = leader_of(&nodes, group).await;
            net::write(&leader, histories.entry(group).or_default(), 20).await;
        }

        // The server of a node that leads neither group goes away; both groups go on without
        // it and purge their logs past it.
        let mut lagging = 3;
        for group in GROUPS {
            let leader = leader_of(&nodes, group).await;
            let id = leader.raft.metrics().borrow_watched().id;
            if id == lagging {
                lagging = 2;
            }
        }
        let mut targets = BTreeMap::new();
        {
            let node = nodes.get_mut(&lagging).unwrap();
            node.stop_server.take().unwrap().send(()).unwrap();
            node.server.take().unwrap().await.unwrap();
        }
        for group in GROUPS {
            let leader = leader_of(&nodes, group).await;
            let before = last_index(&nodes[&lagging].member(group));
            net::write(&leader, histories.get_mut(&group).unwrap(), 120).await;
            leader
                .raft
                .wait(Some(net::PATIENCE))
                .metrics(
                    |m| m.purged.as_ref().is_some_and(|p| p.index > before + 1),
                    "the leader purges what the lagging node lacks",
                )
                .await
                .expect("purge within the patience");
            targets.insert(group, last_index(&leader));
        }

        // Back on the same address: both groups catch up by snapshot.
        let groups = nodes[&lagging].groups.clone();
        let (_, stop, server) = serve(nodes[&lagging].addr, groups).await;
        let node = nodes.get_mut(&lagging).unwrap();
        node.stop_server = Some(stop);
        node.server = Some(server);
        for group in GROUPS {
            let target = targets[&group];
            let expected = histories[&group].contents_at(target);
            for (id, node) in &nodes {
                let m = node.member(group);
                applied(&m, target).await;
                assert_eq!(contents(&m), expected, "group {group} on node {id}");
            }
            // An installed snapshot replaced the replica's first engine directory.
            let replica = Path::new("/node/shards").join(group.to_string());
            let current = disks[&lagging]
                .file_bytes(&replica.join("CURRENT"))
                .expect("CURRENT");
            assert_ne!(
                current, b"engine-000001\n",
                "group {group}: node {lagging} caught up without a snapshot"
            );
        }
        for node in nodes.values_mut() {
            node.stop().await;
        }
    });
}

#[tokio::test]
async fn a_snapshot_for_another_node_id_is_refused_before_any_chunk() {
    use cairn_proto::peer::{self as pb, snapshot_message::Part};
    let (addr, stop, server) =
        serve("127.0.0.1:0".parse().unwrap(), Arc::new(Groups::new(7))).await;
    let mut client = pb::raft_client::RaftClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let header = |target| pb::SnapshotMessage {
        part: Some(Part::Header(pb::SnapshotHeader {
            group: 1,
            target,
            ..Default::default()
        })),
    };
    let refused = client
        .snapshot(futures::stream::iter(vec![header(8)]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    // For this node, the stream gets as far as the group lookup.
    let passed = client
        .snapshot(futures::stream::iter(vec![header(7)]))
        .await
        .unwrap_err();
    assert_eq!(passed.code(), tonic::Code::NotFound, "{passed}");
    let _ = stop.send(());
    server.await.unwrap();
}

/// A leader serves linearizable reads on its lease without asking its Raft core, but not once
/// it has asked to hand leadership over: the transfer makes the voters drop its lease at once,
/// so the target may be elected before the lease would have run out.
#[test]
fn a_leader_handing_over_stops_reading_on_its_lease_at_once() {
    net::runtime().block_on(async {
        let trio = Trio::start(70).await;
        let leader_id = trio.leader_id;
        let handle = |id: u64| trio.group(id);
        net::write(&trio.leader, &mut History::default(), 5).await;

        // Phase 1: the leader reads on its lease, without asking its core; a follower cannot.
        let local = handle(leader_id).lease_reads_local();
        handle(leader_id)
            .linearize()
            .await
            .expect("the leader confirms a read");
        assert_eq!(
            handle(leader_id).lease_reads_local(),
            local + 1,
            "the read took the fast path"
        );
        let to = if leader_id == 1 { 2 } else { 1 };
        assert!(handle(to).linearize().await.is_err(), "a follower read");

        // Phase 2: asked to hand over, the old leader refuses at once, though its metrics
        // still show it leading with a fresh quorum acknowledgement.
        handle(leader_id)
            .transfer_leader(to, net::PATIENCE)
            .await
            .expect("transfer");
        assert!(
            handle(leader_id).linearize().await.is_err(),
            "a leader handing over confirmed a read on its lease"
        );

        // Phase 3: the target leads and, once its first entry is applied, reads.
        handle(to)
            .wait_for_leader(to, net::PATIENCE)
            .await
            .expect("the target leads");
        tokio::time::timeout(net::PATIENCE, async {
            while handle(to).linearize().await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the new leader reads");

        trio.stop().await;
    });
}

/// A replica that (re)started less than one lease ago grants no vote: it may have acknowledged
/// a leader just before, and openraft does not remember the lease that granted. A vote for a
/// leadership transfer (which the leader asked for) passes, and after one lease every vote
/// does.
#[test]
fn a_replica_votes_only_one_lease_after_it_starts() {
    use cairn_proto::peer as pb;
    net::runtime().block_on(async {
        let peers = Arc::new(Peers::new());
        let mut node = start_node(5, &SimIo::new(90), &peers).await;
        let mut client = pb::raft_client::RaftClient::connect(format!("http://{}", node.addr))
            .await
            .expect("connect");
        // Votes that cannot be decoded: one that gets past the embargo is refused as invalid.
        let vote = |leadership_transfer| pb::VoteRequest {
            group: GROUPS[0],
            target: 5,
            vote: vec![0xff].into(),
            leadership_transfer,
            ..Default::default()
        };
        let code = |r: Result<tonic::Response<pb::VoteResponse>, tonic::Status>| {
            r.expect_err("an undecodable vote").code()
        };
        let lease = std::time::Duration::from_millis(config().election_timeout_max);
        let started = std::time::Instant::now();

        let during = code(client.vote(vote(false)).await);
        assert!(
            started.elapsed() < lease,
            "the first vote came too late to test"
        );
        assert_eq!(during, tonic::Code::Unavailable, "a vote within the lease");
        let transfer = code(client.vote(vote(true)).await);
        assert_eq!(transfer, tonic::Code::InvalidArgument, "a transfer's vote");

        tokio::time::sleep(lease).await;
        let after = code(client.vote(vote(false)).await);
        assert_eq!(
            after,
            tonic::Code::InvalidArgument,
            "a vote after the lease"
        );

        node.stop().await;
    });
}

/// A leader hands over only to a voter that holds its whole log: asked to hand over to one
/// that lags (here stopped, then written past), it refuses after the wait and keeps leading
/// and taking writes. Had it asked, openraft would have it refuse writes from then on, and
/// the lagging target would not be elected at once.
#[test]
fn a_handover_to_a_voter_without_the_whole_log_is_refused_and_the_leader_keeps_writing() {
    net::runtime().block_on(async {
        let mut trio = Trio::start(95).await;
        let leader = trio.leader.clone();
        let lagging = trio.follower();
        let mut history = History::default();
        net::write(&leader, &mut history, 3).await;
        trio.nodes.get_mut(&lagging).expect("node").stop().await;
        net::write(&leader, &mut history, 3).await;

        let handle = trio.group(trio.leader_id);
        let refused = handle
            .transfer_leader(lagging, std::time::Duration::from_millis(300))
            .await;
        assert!(refused.is_err(), "handed over to a lagging voter");
        assert!(handle.leading().is_some(), "the leader gave up its term");
        net::write(&leader, &mut history, 3).await;
        handle
            .linearize()
            .await
            .expect("the leader still confirms reads");

        trio.stop().await;
    });
}

/// A restarted replica of a group with other voters stands for election only one lease after
/// it starts: it may have acknowledged a leader just before, which may still be reading on
/// that acknowledgement. Without the embargo openraft campaigns as soon as its election
/// timeout has passed since the start (here 300–600 ms, with a lease of 600 ms; watched: it
/// campaigned 2–520 ms after the start).
#[test]
fn a_restarted_replica_stands_for_election_only_one_lease_after_it_starts() {
    net::runtime().block_on(async {
        let trio = Trio::start(110).await;
        net::write(&trio.leader, &mut History::default(), 3).await;
        let (peers, disks, group) = (trio.peers.clone(), trio.disks.clone(), GROUPS[0]);
        // Every handle dropped, so the stopped tasks can let go of the disks.
        trio.stop().await;

        // Only node 1 comes back (once its stopped tasks let go of its disk): its peers are
        // down, so once it may, it campaigns (and keeps failing), which shows as a new term.
        let io: Arc<dyn cairn_storage::io::Io> = Arc::new(disks[&1].clone());
        let replica = Path::new("/node/shards").join(group.to_string());
        drop(
            net::open_unlocked("replica", || {
                StateMachine::open(io.clone(), &replica, engine_options())
            })
            .await,
        );
        drop(net::open_unlocked("WAL", || net::open_wal(&io)).await);
        let lease = std::time::Duration::from_millis(config().election_timeout_max);
        let started = std::time::Instant::now();
        let mut node = start_node(1, &disks[&1], &peers).await;
        let member = node.member(group);
        // The term it came back with, once its metrics show the loaded state.
        let mut term = None;
        let mut sampled = 0;
        loop {
            let now = member.raft.metrics().borrow_watched().clone();
            // Read before this instant, so within the embargo when this is within the lease.
            if started.elapsed() >= lease {
                break;
            }
            if now.current_term > 0 {
                let term = *term.get_or_insert(now.current_term);
                assert_eq!(
                    (now.current_term, now.state),
                    (term, openraft::ServerState::Follower),
                    "campaigned {:?} after the start",
                    started.elapsed()
                );
                sampled += 1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(sampled > 0, "no sample within the lease");
        member
            .raft
            .wait(Some(net::PATIENCE))
            .metrics(
                |m| term.is_some_and(|t| m.current_term > t),
                "a campaign after the lease",
            )
            .await
            .expect("the replica campaigns once the lease is over");
        node.stop().await;
    });
}

/// A follower tells whether a leader still sends to it (`Group::leader_sent_within`, which
/// keeps a replica the map shows dropped from being deleted under a leader that still counts
/// it): yes while its leader heartbeats it, and no once no leader has sent to it for as long,
/// however often it campaigns meanwhile (a change of role refreshes the replica's "heard",
/// so a removed voter campaigning in vain would otherwise be kept for ever).
#[test]
fn a_follower_tells_whether_a_leader_still_sends_to_it_and_campaigning_does_not_count() {
    net::runtime().block_on(async {
        let mut trio = Trio::start(150).await;
        net::write(&trio.leader, &mut History::default(), 3).await;
        let id = trio.follower();
        let group = trio.group(id);
        let lease = std::time::Duration::from_millis(config().election_timeout_max);
        // Heartbeats every 50 ms. Two leases on, so that what counts is the leader's
        // sending, not the replica's birth or its last change of role.
        net::eventually(|| group.leader_sent_within(lease)).await;
        tokio::time::sleep(lease * 2).await;
        assert!(group.leader_sent_within(lease));

        // Its peers stop: it campaigns, again and again, and no leader sends to it.
        let term = group.raft.metrics().borrow_watched().current_term;
        for (_, node) in trio.nodes.iter_mut().filter(|&(&n, _)| n != id) {
            node.stop().await;
        }
        group
            .raft
            .wait(Some(net::PATIENCE))
            .metrics(|m| m.current_term >= term + 2, "two campaigns")
            .await
            .expect("the follower campaigns once its leader is gone");
        // Each campaign comes a lease and an election timeout after the last message from
        // a leader: two are well past one lease.
        assert!(
            !group.leader_sent_within(lease),
            "a replica campaigning alone counts as sent to by a leader"
        );
        drop(group);
        trio.stop().await;
    });
}

/// The positive side of the handover rule: a voter that lags (its server was down while the
/// leader wrote) is handed leadership once it has caught up, and leads.
#[test]
fn a_handover_waits_for_a_lagging_voter_to_catch_up_and_then_hands_over() {
    net::runtime().block_on(async {
        let mut trio = Trio::start(120).await;
        let leader = trio.leader.clone();
        let (leader_id, lagging, group) = (trio.leader_id, trio.follower(), GROUPS[0]);
        let nodes = &mut trio.nodes;
        let mut history = History::default();
        net::write(&leader, &mut history, 3).await;
        // The lagging node's server goes away (its group keeps running) and misses writes.
        {
            let node = nodes.get_mut(&lagging).unwrap();
            node.stop_server.take().unwrap().send(()).unwrap();
            node.server.take().unwrap().await.unwrap();
        }
        net::write(&leader, &mut history, 5).await;
        let handle = nodes[&leader_id].groups.get(group).expect("group hosted");
        let behind = handle.replicated().expect("leading")[&lagging];
        assert!(behind < last_index(&leader), "the target is behind");

        // Back on its address; the handover waits for it to catch up, then hands over.
        let groups = nodes[&lagging].groups.clone();
        let (_, stop, server) = serve(nodes[&lagging].addr, groups).await;
        let node = nodes.get_mut(&lagging).unwrap();
        node.stop_server = Some(stop);
        node.server = Some(server);
        handle
            .transfer_leader(lagging, net::PATIENCE)
            .await
            .expect("handed over once the target caught up");
        nodes[&lagging]
            .groups
            .get(group)
            .expect("group hosted")
            .wait_for_leader(lagging, net::PATIENCE)
            .await
            .expect("the target leads");

        trio.stop().await;
    });
}

/// Starts node 1's replica of `group` alone on `disk` (after its last run's tasks let go of
/// the disk), with a membership floor or without.
async fn restart_alone(
    disk: &SimIo,
    peers: &Arc<Peers>,
    group: u64,
    floor: Option<cairn_raft::MembershipFloor>,
) -> Group {
    let io: Arc<dyn cairn_storage::io::Io> = Arc::new(disk.clone());
    let replica = Path::new("/node/shards").join(group.to_string());
    let sm = net::open_unlocked("replica", || {
        StateMachine::open(io.clone(), &replica, engine_options())
    })
    .await;
    let wal = Arc::new(net::open_unlocked("WAL", || net::open_wal(&io)).await);
    let log = LogStore::new(wal, group);
    let started = match floor {
        Some(floor) => Group::start_past(1, config(), peers.group(group), log, sm, floor).await,
        None => Group::start(1, config(), peers.group(group), log, sm).await,
    };
    let handle = started.expect("start raft");
    handle.vote_only_as_member();
    handle
}

/// A replica created again after its node was removed from the group may first hold a
/// membership from before the removal (a snapshot's, which can be older than the removal)
/// that names its node the sole voter, as every group's first membership does. With the
/// removal as its floor it neither stands for election nor votes on that membership (here:
/// the group's own first membership, node 1 alone, with the floor just past it); without a
/// floor, or with one below its membership, the same replica elects itself once its lease is
/// over, which in a cluster, on a membership from before a removal, is a second leader
/// committing beside the real one.
#[test]
fn a_replica_past_a_removal_does_not_elect_itself_on_a_membership_from_before_it() {
    net::runtime().block_on(async {
        let peers = Arc::new(Peers::new());
        let disk = SimIo::new(130);
        let group = GROUPS[0];
        let mut node = start_node(1, &disk, &peers).await;
        let nodes = BTreeMap::from([(1, node)]);
        nodes[&1]
            .member(group)
            .raft
            .initialize(members(&nodes))
            .await
            .expect("initialize");
        let leader = leader_of(&nodes, group).await;
        net::write(&leader, &mut History::default(), 3).await;
        // A learner that never answers: a membership entry past the first (still node 1
        // the sole voter), so that a floor can sit just below it.
        leader
            .raft
            .add_learner(
                9,
                NodeAddr {
                    grpc: "127.0.0.1:1".into(),
                },
                false,
            )
            .await
            .expect("a learner added");
        // The metrics can trail the commit that `add_learner` waited for: read the
        // membership only once they show the learner (else the floor would sit below an
        // older membership, and the replica would rightly stand).
        let m = leader
            .raft
            .wait(Some(net::PATIENCE))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .learner_ids()
                        .any(|id| id == 9)
                },
                "the learner in the membership",
            )
            .await
            .expect("the learner's membership in the metrics");
        let membership = m.membership_config.log_id().expect("a membership entry");
        let term = m.current_term;
        drop(leader);
        node = nodes.into_values().next().unwrap();
        node.stop().await;
        drop(node);

        let floor = cairn_raft::MembershipFloor {
            term: membership.leader_id.term,
            index: membership.index,
        };
        let floored = restart_alone(&disk, &peers, group, Some(floor)).await;
        floored
            .raft
            .wait(Some(net::PATIENCE))
            .metrics(
                |m| m.membership_config.log_id() == &Some(membership),
                "its membership loaded",
            )
            .await
            .expect("the replica's membership");
        assert!(
            !floored.is_in_own_membership() && !floored.may_vote(),
            "a membership from before the floor counts"
        );
        // Three election timeouts past the lease: it would have campaigned by now.
        let lease = std::time::Duration::from_millis(config().election_timeout_max);
        tokio::time::sleep(lease * 4).await;
        let m = floored.raft.metrics().borrow_watched().clone();
        assert!(
            m.state != openraft::ServerState::Leader && m.current_term == term,
            "the floored replica stood for election: {:?} in term {} (was {term})",
            m.state,
            m.current_term
        );
        let _ = floored.raft.shutdown().await;
        drop(floored);

        // With the floor just below its membership (a removal before it), the replica
        // stands once its lease is over; without a floor, too (the check above can fail).
        let below = cairn_raft::MembershipFloor {
            term: membership.leader_id.term,
            index: membership.index - 1,
        };
        for floor in [Some(below), None] {
            let replica = restart_alone(&disk, &peers, group, floor).await;
            replica
                .raft
                .wait(Some(net::PATIENCE))
                .state(openraft::ServerState::Leader, "elected alone")
                .await
                .unwrap_or_else(|e| panic!("with floor {floor:?}, a sole voter stands: {e}"));
            let _ = replica.raft.shutdown().await;
            drop(replica);
        }
    });
}
