//! Power cuts on a node while the balancer gives it replicas and takes them away, with data
//! on R nodes only: a replica created on a leader's first message, its snapshot installed,
//! a dropped replica deleted (book, WAL group, directory), all while the power may go off.
//!
//! Three in-process nodes on the in-memory network, R = 2; node 3 runs on the simulated
//! disk (`cairn_io::sim`), which keeps only what was synced when the power goes (directory
//! entries included). Each round a fourth node joins (the balancer moves replicas off the
//! three) or is drained away (replicas come back), while two clients write through nodes 1
//! and 2, and a power cut is armed on node 3: at a random disk-changing call, at its next
//! write of the replica book, inside a deletion under `shards/`, or at a rename there
//! (a snapshot installed, a checkpoint). When it fires node 3 is stopped and started again
//! on what its disk kept; a cut that has not fired by the time the round settles is made
//! between calls.
//!
//! At the end, every key reads the same through every node, and it is the last acknowledged
//! write or one sent after it whose outcome the client never learnt; node 3's own replicas
//! hold those values; and node 3's `shards/` holds one directory per replica it has, no
//! more.
//!
//! `CAIRN_REPLICA_POWER_CUT_SEEDS=N` runs N seeds (one by default, about a minute each);
//! `CAIRN_REPLICA_POWER_CUT_SEED=S` replays one (the cut points; the interleavings stay the
//! machine's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_io::Io;
use cairn_io::sim::{Action, Fault, Op as IoOp, PowerCut, SimIo};
use cairn_raft::transport::memory::MemoryNetwork;
use cairn_server::{CommandError, Node};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::memory_network::{
    Disk, PATIENCE, Running, get, group_views, held_locally, holders, set, spread_evenly, start_on,
    stop, stop_powered_off, until_done, until_removed, value_of,
};

/// Twelve replicas: four per node on three nodes, three on four, so every join takes one
/// replica off node 3 and every drain gives it one back.
const SHARDS: u32 = 6;
const REPLICAS: u32 = 2;
/// Rounds: a fourth node joins in even ones and is drained away in odd ones.
const ROUNDS: u32 = 4;
const CLIENTS: u64 = 2;
const KEYS_PER_CLIENT: u64 = 40;
const VALUE_PAD_BYTES: usize = 256;
const SIM_DATA_DIR: &str = "/sim/node-3";
/// A cut aimed at any disk-changing call fires within this many of them.
const CUT_CALLS_MAX: u64 = 3_000;

/// The seeds to run: `CAIRN_REPLICA_POWER_CUT_SEED` alone, or `CAIRN_REPLICA_POWER_CUT_SEEDS`
/// random ones (one by default).
fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("CAIRN_REPLICA_POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("CAIRN_REPLICA_POWER_CUT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    (0..n).map(|_| rand::random()).collect()
}

/// What a client knows of one of its keys: the sequence number of its last acknowledged
/// write, and those of the writes sent after it that failed (their outcome unknown to it).
#[derive(Debug, Default, Clone)]
struct KeyLog {
    acked: Option<u64>,
    unknown: Vec<u64>,
}

type Logs = Arc<Mutex<BTreeMap<String, KeyLog>>>;

fn value(key: &str, seq: u64) -> String {
    format!("{key}#{seq}#{}", "v".repeat(VALUE_PAD_BYTES))
}

fn seq_of(key: &str, value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).expect("utf-8 value");
    let rest = text
        .strip_prefix(key)
        .and_then(|r| r.strip_prefix('#'))
        .unwrap_or_else(|| panic!("{key} holds another key's value: {text:.60}"));
    rest.split('#')
        .next()
        .unwrap()
        .parse()
        .expect("a sequence number")
}

/// One client: writes its keys round robin through `node`, one request at a time, until
/// `done`.
async fn client(node: Arc<Node>, id: u64, logs: Logs, done: Arc<AtomicBool>) {
    let mut seq = 0;
    while !done.load(Ordering::SeqCst) {
        let key = format!("c{id}:{}", seq % KEYS_PER_CLIENT);
        seq += 1;
        let write = tokio::time::timeout(
            Duration::from_secs(10),
            node.execute(set(&key, &value(&key, seq))),
        )
        .await;
        let acked = match write {
            Ok(Ok(_)) => true,
            Ok(Err(CommandError::TryAgain(_) | CommandError::OutcomeUnknown(_))) | Err(_) => false,
            Ok(Err(e)) => panic!("a write failed for good: {e}"),
        };
        {
            let mut logs = logs.lock();
            let log = logs.entry(key).or_default();
            if acked {
                log.acked = Some(seq);
                log.unknown.clear();
            } else {
                log.unknown.push(seq);
            }
        }
        if !acked {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Settled: the nodes hold every shard on exactly [`REPLICAS`] of them, each node's share
/// within one of the others', and every node's map lists exactly these nodes.
fn settled(nodes: &[&Node]) -> bool {
    spread_evenly(nodes, SHARDS as usize, REPLICAS as usize)
        && nodes
            .iter()
            .all(|n| n.cluster_status().nodes.len() == nodes.len())
}

/// The cut armed on node 3 for a round.
fn arm_cut(disk: &SimIo, rng: &mut StdRng) -> &'static str {
    let cut = Action::PowerCut(PowerCut::Random);
    let (fault, kind) = match rng.random_range(0..4) {
        0 => (
            Fault::new(IoOp::MUTATING, cut).after(rng.random_range(0..CUT_CALLS_MAX)),
            "a disk-changing call",
        ),
        1 => (
            Fault::new(IoOp::MUTATING, cut)
                .on_path(cairn_server::replicas::BOOK_FILE)
                .after(rng.random_range(0..3)),
            "a write of the replica book",
        ),
        2 => (
            Fault::new(&[IoOp::Remove], cut)
                .on_path(format!("{SIM_DATA_DIR}/shards/"))
                .after(rng.random_range(0..4)),
            "a deletion under shards/",
        ),
        _ => (
            Fault::new(&[IoOp::Rename], cut)
                .on_path(format!("{SIM_DATA_DIR}/shards/"))
                .after(rng.random_range(0..4)),
            "a rename under shards/",
        ),
    };
    disk.inject(fault);
    kind
}

/// Node 3 keeps one directory per replica it holds: nothing of a removed replica, or of an
/// incarnation a power cut interrupted, is left behind. (Retried for a while: a removal
/// leaves the shard list before its directory goes.)
async fn no_stray_directories(disk: &SimIo, node: &Node, context: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let held = held_by(node);
        let names = disk
            .list_dir(&Path::new(SIM_DATA_DIR).join("shards"))
            .expect("node 3's shards directory");
        let dirs: Vec<(u32, u32)> = names
            .iter()
            .map(|n| {
                cairn_server::replicas::parse_replica_dir(n)
                    .unwrap_or_else(|| panic!("{context}: node 3 left {n} under shards/"))
            })
            .collect();
        let dir_shards: BTreeSet<u32> = dirs.iter().map(|&(id, _)| id).collect();
        if (&dir_shards, dirs.len()) == (&held, held.len()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: node 3's shard directories {names:?} against the replicas it holds \
             {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The shards `node` holds a replica of.
fn held_by(node: &Node) -> BTreeSet<u32> {
    node.shards().list().iter().map(|s| s.id).collect()
}

async fn start_node_3(net: &MemoryNetwork, disk: &SimIo) -> Running {
    let on = Disk {
        data_dir: SIM_DATA_DIR.into(),
        io: Arc::new(disk.clone()),
    };
    start_on(net, on, 3, Some(1), REPLICAS, true, SHARDS).await
}

async fn start_real(net: &MemoryNetwork, dir: &Path, i: u8) -> Running {
    let on = Disk {
        data_dir: dir.join(format!("node-{i}")),
        io: Arc::new(cairn_io::StdIo),
    };
    let join = (i != 1).then_some(1);
    start_on(net, on, i, join, REPLICAS, true, SHARDS).await
}

/// Node 3, whose disk lost its power, stopped and started again on what the disk kept.
async fn restart_node_3(net: &MemoryNetwork, disk: &mut SimIo, n3: Running) -> Running {
    stop_powered_off(n3).await;
    *disk = disk.after_cut().expect("the power is off");
    start_node_3(net, disk).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_power_while_its_replicas_come_and_go_loses_nothing_and_leaks_nothing() {
    for seed in seeds() {
        eprintln!("replica power cut: seed {seed}");
        run_seed(seed).await;
    }
}

async fn run_seed(seed: u64) {
    crate::init_log();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start_real(&net, dir.path(), 1).await;
    let n2 = start_real(&net, dir.path(), 2).await;
    let mut disk = SimIo::new(seed);
    let mut n3 = start_node_3(&net, &disk).await;

    let logs: Logs = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [&n1, &n2]
        .into_iter()
        .zip(0..CLIENTS)
        .map(|(n, id)| tokio::spawn(client(n.node.clone(), id, logs.clone(), done.clone())))
        .collect();

    let mut cuts_in_calls = 0;
    // Per round: the cut armed, and whether it fired inside a call.
    let mut cuts: Vec<(&str, bool)> = Vec::new();
    // Whether node 3 took a replica, and lost one, over a round.
    let (mut gained, mut lost) = (false, false);
    let mut n4: Option<(Running, String)> = None;
    for round in 0..=ROUNDS {
        // Round 0 only settles the first three nodes (node 3's first replicas arrive).
        let context = format!("seed {seed} round {round}");
        let kind = if round > 0 {
            arm_cut(&disk, &mut rng)
        } else {
            "none"
        };
        let event = match round {
            0 => None,
            r if r % 2 == 1 => {
                let i = 10 + r as u8;
                let running = start_real(&net, dir.path(), i).await;
                let name = running.node.cluster_status().node_id;
                n4 = Some((running, name));
                None
            }
            _ => {
                let (_, name) = n4.as_ref().expect("a fourth node joined last round");
                let (node, name) = (n1.node.clone(), name.clone());
                Some(tokio::spawn(
                    async move { until_removed(&node, &name).await },
                ))
            }
        };
        let fired_before = cuts_in_calls;
        let held_before = held_by(&n3.node);
        // Until the round settles, node 3 is started again on what its disk kept whenever
        // the power goes.
        let deadline = std::time::Instant::now() + PATIENCE * 3;
        loop {
            if !disk.is_powered() {
                cuts_in_calls += 1;
                n3 = restart_node_3(&net, &mut disk, n3).await;
            }
            // (A node being drained is out of the count: settled is when it is gone.)
            let mut nodes = vec![&*n1.node, &*n2.node, &*n3.node];
            if let (Some((n4, _)), None) = (&n4, &event) {
                nodes.push(&n4.node);
            }
            if settled(&nodes) && event.as_ref().is_none_or(|e| e.is_finished()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{context}: the cluster never settled (cut at {kind}, powered: {}): holders \
                 {:?}\ngroups:{}\nmap {:?}",
                disk.is_powered(),
                holders(&nodes),
                group_views(&nodes),
                n1.node.cluster_status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(event) = event {
            event.await.expect("node 4 drained");
        }
        if round % 2 == 0 {
            if let Some((running, _)) = n4.take() {
                stop(running).await;
            }
        }
        // A cut that did not fire in a call is made between calls, at rest.
        // (Or it fired since the round settled.)
        if disk.clear_faults() > 0 {
            disk.power_cut(PowerCut::Random);
        } else if round > 0 && !disk.is_powered() {
            cuts_in_calls += 1;
        }
        if !disk.is_powered() {
            n3 = restart_node_3(&net, &mut disk, n3).await;
        }
        let held_after = held_by(&n3.node);
        if round > 0 {
            gained |= held_after.difference(&held_before).next().is_some();
            lost |= held_before.difference(&held_after).next().is_some();
        }
        // Settled, node 3 keeps one directory per replica it holds (checked before the
        // round's last cut: the sweep at its next start would hide a removal that left its
        // directory behind).
        no_stray_directories(&disk, &n3.node, &context).await;
        if round > 0 {
            cuts.push((kind, cuts_in_calls > fired_before));
        }
    }
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    eprintln!("seed {seed}: cuts (armed at, fired inside a call): {cuts:?}");
    assert!(
        cuts_in_calls > 0,
        "seed {seed}: no cut fired inside a call in {ROUNDS} rounds"
    );
    assert!(
        gained && lost,
        "seed {seed}: node 3's replicas did not come and go (gained: {gained}, lost: {lost})"
    );

    // Every key reads the same through every node: its last acknowledged write, or a write
    // sent after it whose outcome is unknown.
    let logs = logs.lock().clone();
    assert!(
        logs.values().filter(|l| l.acked.is_some()).count() as u64 >= CLIENTS * KEYS_PER_CLIENT / 2,
        "seed {seed}: too few acknowledged writes to check: {logs:?}"
    );
    // A write whose outcome its client never learnt may still be in a leader's log,
    // uncommitted, and commit later (seen: a key read as its acknowledged write, then, a
    // few seconds on, as the unknown one after it). One write committed after it in the
    // same shard settles it: the key's own slot, through its hash tag.
    for key in logs.keys() {
        until_done(&n1.node, set(&format!("{{{key}}}:settle"), "x")).await;
    }
    let mut expected = BTreeMap::new();
    for (key, log) in &logs {
        let mut seen = BTreeSet::new();
        for node in [&n1.node, &n2.node, &n3.node] {
            let got = value_of(until_done(node, get(key)).await);
            seen.insert(got.map(|v| seq_of(key, &v)));
        }
        assert_eq!(
            seen.len(),
            1,
            "seed {seed}: {key} reads differently through the nodes: {seen:?}"
        );
        let got = seen.into_iter().next().unwrap();
        let allowed = got.is_some_and(|s| log.acked == Some(s) || log.unknown.contains(&s))
            || (got.is_none() && log.acked.is_none());
        assert!(
            allowed,
            "seed {seed}: {key} holds write {got:?}, but its last acknowledged write is \
             {:?} (unknown since: {:?})",
            log.acked, log.unknown
        );
        if let Some(s) = got {
            expected.insert(key.clone(), value(key, s));
        }
    }
    // Node 3's own replicas hold them.
    let held = held_by(&n3.node);
    for (key, want) in &expected {
        if held.contains(&n3.node.shards().shard_of_key(key.as_bytes())) {
            let within = PATIENCE - Duration::from_secs(5);
            let check = tokio::time::timeout(within, held_locally(&n3.node, key, want));
            if check.await.is_err() {
                // What every node reads (with versions) and every replica's view, to tell a
                // replica that lags from one that diverged.
                let mut reads = String::new();
                for node in [&n1.node, &n2.node, &n3.node] {
                    let leader = node.execute(get(key)).await;
                    let own = node.execute_with(get(key), true).await;
                    reads.push_str(&format!(
                        "\n  node {}: through the leader {leader:?}, its own {own:?}",
                        node.id()
                    ));
                }
                panic!(
                    "seed {seed}: node 3's replica never held {key} = {want} (log {:?}):{reads}\ngroups:{}",
                    logs.get(key),
                    group_views(&[&n1.node, &n2.node, &n3.node])
                );
            }
        }
    }
    no_stray_directories(&disk, &n3.node, &format!("seed {seed}, at the end")).await;
    for running in [n3, n2, n1] {
        stop(running).await;
    }
}
