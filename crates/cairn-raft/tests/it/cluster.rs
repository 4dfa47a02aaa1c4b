//! A shard group of three replicas in one process: replication, a follower that falls behind
//! the purged log and catches up by a streamed snapshot, transfers that break part-way, and
//! power cuts on the follower's disk while it receives and installs one.

use std::collections::BTreeMap;

use cairn_storage::io::sim::{Action, Fault, Op, PowerCut, SimIo};
use openraft::async_runtime::WatchReceiver;
use rand::{Rng, SeedableRng};

use crate::net::{
    self, History, Member, Router, Sabotage, addr, applied, contents, engine_dirs, last_index,
    leader, start, stop, write,
};

/// Three nodes on their own disks, initialised as one group; returns the disks.
async fn cluster(router: &Router, seed: u64) -> BTreeMap<u64, SimIo> {
    let mut disks = BTreeMap::new();
    for id in 1..=3 {
        let disk = SimIo::new(seed * 10 + id);
        start(router, id, &disk).await;
        disks.insert(id, disk);
    }
    let members: BTreeMap<u64, _> = (1..=3).map(|id| (id, addr(id))).collect();
    router
        .member(1)
        .raft
        .initialize(members)
        .await
        .expect("initialize");
    disks
}

/// A three-replica cluster (disks from `seed`) with 30 writes applied, and the follower that
/// the test will make lag.
async fn started(router: &Router, seed: u64) -> (BTreeMap<u64, SimIo>, History, u64) {
    let disks = cluster(router, seed).await;
    let mut history = History::default();
    let leader_id = leader(router).await;
    write(&router.member(leader_id), &mut history, 30).await;
    (disks, history, follower_of(leader_id))
}

/// A follower of `leader_id`.
fn follower_of(leader_id: u64) -> u64 {
    if leader_id == 3 { 2 } else { 3 }
}

/// Cuts `lagging` off, writes enough that the leader purges past it, and returns the leader.
async fn fall_behind(router: &Router, lagging: u64, history: &mut History) -> Member {
    let leader = router.member(leader(router).await);
    router.isolate(lagging);
    let before = last_index(&router.member(lagging));
    write(&leader, history, 120).await;
    let purged = leader
        .raft
        .wait(Some(net::PATIENCE))
        .metrics(
            |m| m.purged.as_ref().is_some_and(|p| p.index > before + 1),
            "the leader purges what the lagging follower lacks",
        )
        .await
        .expect("purge within the patience");
    assert!(purged.snapshot.is_some());
    leader
}

#[test]
fn a_lagging_follower_catches_up_by_a_streamed_snapshot() {
    net::runtime().block_on(async {
        let router = Router::default();
        let (disks, mut history, lagging) = started(&router, 1).await;
        let leader = fall_behind(&router, lagging, &mut history).await;
        let target = last_index(&leader);

        router.heal();
        let follower = router.member(lagging);
        applied(&follower, target).await;
        // The sender counts an install when its RPC returns, which may be after the follower
        // has applied it.
        net::eventually(|| router.installed(lagging) > 0).await;
        assert!(
            router.installed(lagging) > 0,
            "it caught up without a snapshot: leader {:?}\nfollower {:?}",
            leader.raft.metrics().borrow_watched(),
            follower.raft.metrics().borrow_watched()
        );
        // Every replica holds what the writes made, with each key's own version (the index of
        // the write that last wrote it) and deadline.
        let expected = history.contents_at(target);
        for id in 1..=3 {
            applied(&router.member(id), target).await;
            assert_eq!(contents(&router.member(id)), expected, "node {id}");
        }
        assert_eq!(
            engine_dirs(&disks[&lagging]).await.len(),
            1,
            "old engine removed"
        );
        // The observer heard of every entry on a node that never installed a snapshot (in
        // order, and what it heard makes the data), and of the install on the lagging one.
        let leader_seen = leader.observed.as_ref().unwrap();
        assert_eq!(*leader_seen.replaced.lock(), 0);
        let heard = leader_seen.applied.lock().clone();
        assert!(heard.windows(2).all(|w| w[0].0 < w[1].0), "out of order");
        let replayed = History(
            heard
                .into_iter()
                .map(|(i, ops)| (i, cairn_raft::Request { ops }))
                .collect(),
        );
        assert_eq!(replayed.contents_at(target), expected);
        assert!(
            *router
                .member(lagging)
                .observed
                .as_ref()
                .unwrap()
                .replaced
                .lock()
                > 0
        );

        // The installed snapshot is the replica from now on: restarted, it still holds it, and
        // it goes on applying.
        drop(follower);
        stop(&router, lagging).await;
        let follower = start(&router, lagging, &disks[&lagging]).await;
        assert_eq!(contents(&follower), expected);
        write(&leader, &mut history, 10).await;
        let target = last_index(&leader);
        applied(&follower, target).await;
        assert_eq!(contents(&follower), history.contents_at(target));
        net::stop_all(&router).await;
    });
}

#[test]
fn broken_transfers_are_retried_and_leave_nothing_behind() {
    net::runtime().block_on(async {
        let router = Router::default();
        let (disks, mut history, lagging) = started(&router, 2).await;
        let leader = fall_behind(&router, lagging, &mut history).await;
        let target = last_index(&leader);

        // The first transfer drops part-way, the second arrives with a damaged chunk: both are
        // refused before openraft sees them, and the third goes through.
        router.sabotage(Sabotage::DropAfter(3));
        router.sabotage(Sabotage::Corrupt(5));
        router.heal();
        let follower = router.member(lagging);
        applied(&follower, target).await;
        assert_eq!(router.sabotage_left(), 0);
        // Both sabotages hit a transfer (one cut short before biting puts its sabotage back),
        // and each of those transfers failed, or was dropped by openraft after the bite; the
        // counters are bumped when the RPC returns, which may trail the follower's apply.
        assert_eq!(router.bitten(lagging), 2, "both sabotages bit");
        net::eventually(|| router.failed(lagging) + router.abandoned(lagging) >= 2).await;
        assert!(
            router.failed(lagging) + router.abandoned(lagging) >= 2,
            "both broken transfers were refused ({} failed, {} abandoned)",
            router.failed(lagging),
            router.abandoned(lagging)
        );
        net::eventually(|| router.installed(lagging) > 0).await;
        assert!(router.installed(lagging) > 0);
        assert!(
            follower
                .raft
                .metrics()
                .borrow_watched()
                .running_state
                .is_ok()
        );
        assert_eq!(contents(&follower), history.contents_at(target));
        assert_eq!(
            engine_dirs(&disks[&lagging]).await.len(),
            1,
            "staging removed"
        );
        net::stop_all(&router).await;
    });
}

/// A leader cut off from its group must stop reading on its lease before another node can be
/// elected and commit: one follower stands for election over and over, the other refuses it
/// while the old leader's lease (counted from its last heartbeat) lasts, and as soon as the
/// candidate has won and committed a write, the lease fast path on the old leader must say
/// no. A fast path whose lease ran longer than the voters honour it would say yes here. (Only
/// one follower stands: a node that stands votes for itself and so drops the lease it
/// granted, which is why openraft lets a follower stand only after lease and election
/// timeout of silence.)
#[test]
fn a_cut_off_leader_stops_reading_on_its_lease_before_another_commits() {
    use std::time::Duration;
    net::runtime().block_on(async {
        let router = Router::default();
        let (_disks, mut history, _) = started(&router, 3).await;
        let old = leader(&router).await;
        let old_member = router.member(old);
        let lease = Duration::from_millis(net::config().election_timeout_max);
        let ready = |m: &Member| {
            let metrics = m.raft.metrics().borrow_watched().clone();
            cairn_raft::lease_read_ready(&metrics, lease)
        };
        net::eventually(|| ready(&old_member)).await;
        assert!(
            ready(&old_member),
            "the leader reads on its lease before the cut"
        );

        router.isolate(old);
        let new = if old == 1 { 2 } else { 1 };
        tokio::time::timeout(net::PATIENCE, async {
            // Each campaign gets 100 ms to finish, then twice as long as the one before: a new
            // campaign abandons the votes of the last, and on a loaded machine a vote round
            // can take longer than 100 ms.
            let mut polls = 20;
            loop {
                let _ = router.member(new).raft.trigger().elect(false).await;
                for _ in 0..polls {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // Won, and a quorum stored its first entry (until then it takes no
                    // writes).
                    let m = router.member(new).raft.metrics().borrow_watched().clone();
                    if m.state == openraft::ServerState::Leader
                        && m.last_quorum_acked.is_some()
                        && m.cluster_committed
                            .as_ref()
                            .is_some_and(|c| c.leader_id.term == m.current_term)
                    {
                        return;
                    }
                }
                polls = (polls * 2).min(400);
            }
        })
        .await
        .expect("a follower is elected once the old lease has run out");
        write(&router.member(new), &mut history, 1).await;

        let m = old_member.raft.metrics().borrow_watched().clone();
        assert_eq!(
            m.state,
            openraft::ServerState::Leader,
            "the cut-off node still believes it leads, so only its lease stands between it \
             and a stale read"
        );
        assert!(
            !cairn_raft::lease_read_ready(&m, lease),
            "node {old} would still read on its lease after node {new} was elected and committed"
        );
        router.heal();
        net::stop_all(&router).await;
    });
}

/// A leader that restarts never goes on leading its old term: its replica applies without
/// fsync and its committed marker is lazy, so it may not have applied what it acknowledged
/// before; only a new term (whose first entry follows all of that) may serve again.
#[test]
fn a_restarted_leader_does_not_resume_its_term() {
    use std::time::Duration;
    net::runtime().block_on(async {
        let router = Router::default();
        let (disks, mut history, _) = started(&router, 4).await;
        let old = leader(&router).await;
        write(&router.member(old), &mut history, 10).await;
        let term = router
            .member(old)
            .raft
            .metrics()
            .borrow_watched()
            .current_term;

        stop(&router, old).await;
        let restarted = start(&router, old, &disks[&old]).await;
        // Well within the time before any node may stand for election (lease plus election
        // timeout), so a leader in `term` could only be the restored one.
        for _ in 0..25 {
            let m = restarted.raft.metrics().borrow_watched().clone();
            assert!(
                !(m.state == openraft::ServerState::Leader && m.current_term == term),
                "node {old} resumed leading term {term} after a restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        net::stop_all(&router).await;
    });
}

/// Power cuts per run of the install test; `CAIRN_RAFT_SNAPSHOT_CUTS` raises it.
fn cuts() -> u64 {
    std::env::var("CAIRN_RAFT_SNAPSHOT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// The power fails on the lagging follower's disk at a random call while it receives,
/// checks and installs a snapshot. Restarted on what survived, the replica is wholly what
/// some applied index made (the old engine or the new, never a mix) and catches up.
#[test]
fn a_power_cut_during_an_install_leaves_the_old_replica_or_the_new() {
    net::runtime().block_on(async {
        let router = Router::default();
        let (mut disks, mut history, lagging) = started(&router, 3).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut fired = 0;
        for round in 0..cuts() {
            let leader = fall_behind(&router, lagging, &mut history).await;
            let target = last_index(&leader);
            let disk = disks[&lagging].clone();
            let after = rng.random_range(0..120);
            disk.inject(
                Fault::new(Op::MUTATING, Action::PowerCut(PowerCut::Random))
                    .on_path("/node/shard")
                    .after(after),
            );
            router.heal();
            let follower = router.member(lagging);
            // Either the cut fires (the follower's storage fails and openraft stops it), or
            // the install finished first.
            let caught_up = tokio::time::timeout(net::PATIENCE, async {
                loop {
                    if !disk.is_powered() {
                        return false;
                    }
                    let m = follower.raft.metrics().borrow_watched().clone();
                    if m.last_applied.is_some_and(|l| l.index >= target) {
                        return true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("cut or caught up within the patience");
            drop(follower);
            stop(&router, lagging).await;
            let survivor = if caught_up {
                // The install won the race: the power fails now instead.
                disk.clear_faults();
                disk.crash_image(PowerCut::Random)
            } else {
                fired += 1;
                disk.after_cut().expect("the disk was cut")
            };
            disks.insert(lagging, survivor.clone());
            // Cut off until its state is read: the replica's marker may be behind entries its
            // log holds, and a heartbeat naming a later commit would apply them between the
            // reading of the marker and the reading of the data.
            router.isolate(lagging);
            let follower = start(&router, lagging, &survivor).await;
            let at = follower.sm.applied().unwrap().0.map_or(0, |l| l.index);
            // The log is purged only behind a durable snapshot: the replica holds at least
            // everything the log no longer does.
            let purged = follower
                .raft
                .metrics()
                .borrow_watched()
                .purged
                .map_or(0, |p| p.index);
            assert!(
                at >= purged,
                "round {round} (cut after {after} calls): the replica is at {at}, the log \
                 starts after {purged}"
            );
            assert_eq!(
                contents(&follower),
                history.contents_at(at),
                "round {round} (cut after {after} calls): the replica is not what index {at} made"
            );
            assert_eq!(
                follower.sm.applied().unwrap().0.map_or(0, |l| l.index),
                at,
                "the isolated replica applied something while it was read"
            );
            router.heal();
            applied(&follower, target).await;
            assert_eq!(contents(&follower), history.contents_at(target));
            assert_eq!(engine_dirs(&survivor).await.len(), 1);
        }
        assert!(fired > 0, "no cut fired during an install");
        net::stop_all(&router).await;
    });
}
