//! A three-node cluster in one process on the in-memory peer network
//! (`cairn_raft::transport::memory`): joins, Raft traffic and forwarded commands all cross
//! the network seam, never a socket (the nodes' gRPC addresses are in 192.0.2.0/24, a range
//! reserved for documentation that no interface here has, and every node pair is seen to
//! connect through the network), and cutting a node's links partitions it as iptables
//! would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_raft::transport::memory::MemoryNetwork;
use cairn_server::config::SyncMode;
use cairn_server::{Command, CommandError, Condition, Expiry, Node, NodeOptions, Reply};
use tokio::sync::watch;

/// Longest any step may take on a loaded two-core machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);
/// One shard per node once leaders are spread, so node 3 leads one when it is cut off.
const SHARDS: u32 = 3;

pub(crate) fn grpc_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 7070))
}

/// A node running in this process: its front end on the network and its background tasks.
pub(crate) struct Running {
    pub node: Arc<Node>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(net: &MemoryNetwork, dir: &std::path::Path, i: u8, join: Option<u8>) -> Running {
    start_with(net, dir, i, join, 3, false).await
}

/// [`start`], for a cluster of `replicas` voters per shard, with data on the voters only
/// when `replicas_only`.
pub(crate) async fn start_with(
    net: &MemoryNetwork,
    dir: &std::path::Path,
    i: u8,
    join: Option<u8>,
    replicas: u32,
    replicas_only: bool,
) -> Running {
    let data_dir = dir.join(format!("node-{i}"));
    let disk = Disk {
        data_dir,
        io: Arc::new(cairn_io::StdIo),
    };
    start_on(net, disk, i, join, replicas, replicas_only, SHARDS).await
}

/// Where a node keeps its data: a directory, on the real disk or a simulated one.
pub(crate) struct Disk {
    pub data_dir: std::path::PathBuf,
    pub io: Arc<dyn cairn_io::Io>,
}

/// Starts node `i` (gRPC address [`grpc_addr`]`(i)`) on `disk`, joining node `join`'s
/// cluster, or creating one of `shards` shards.
pub(crate) async fn start_on(
    net: &MemoryNetwork,
    disk: Disk,
    i: u8,
    join: Option<u8>,
    replicas: u32,
    replicas_only: bool,
    shards: u32,
) -> Running {
    let options = options_on(net, disk, i, join, replicas, replicas_only, shards);
    open_on(i, options).await
}

/// The options [`start_on`] starts node `i` with.
pub(crate) fn options_on(
    net: &MemoryNetwork,
    disk: Disk,
    i: u8,
    join: Option<u8>,
    replicas: u32,
    replicas_only: bool,
    shards: u32,
) -> NodeOptions {
    NodeOptions {
        data_dir: disk.data_dir,
        shards,
        value_bytes_max: cairn_server::config::VALUE_BYTES_MAX_DEFAULT,
        sync: SyncMode::Always,
        grpc_addr: grpc_addr(i),
        http_addr: SocketAddr::from(([192, 0, 2, i], 7080)),
        resp_addr: SocketAddr::from(([192, 0, 2, i], 7379)),
        io: disk.io,
        tuning: cairn_server::StorageTuning::default(),
        join: join.map(|j| grpc_addr(j).to_string()),
        replicas,
        replicas_only,
        down_after: Duration::from_secs(5),
        replace_down_after: Duration::from_secs(300),
        balance: cairn_server::balance::Limits::default(),
        move_bytes_per_sec: 0,
        split_shard_bytes: 0,
        watch_history: cairn_server::feed::FeedLimits::default(),
        follow_linger: cairn_server::node::FOLLOW_LINGER,
        clock: cairn_storage::clock::system(),
        network: Arc::new(net.node(grpc_addr(i))),
    }
}

/// Opens node `i` with `options` and serves its gRPC front end at [`grpc_addr`]`(i)`.
pub(crate) async fn open_on(i: u8, options: NodeOptions) -> Running {
    let node = tokio::time::timeout(PATIENCE, Node::open(options))
        .await
        .expect("the node opens within the patience")
        .expect("open");
    let (stop, stopped) = watch::channel(false);
    let signal = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let grpc = tokio::spawn({
        let node = node.clone();
        let signal = signal();
        async move {
            cairn_server::grpc::serve(node, grpc_addr(i), 256, signal)
                .await
                .expect("the gRPC front end serves");
        }
    });
    let background = tokio::spawn(node.clone().run_background(signal()));
    Running {
        node,
        stop,
        tasks: vec![grpc, background],
    }
}

/// Stops a node whose disk lost its power: its tasks end, and its shutdown may fail (the
/// disk refuses every call).
pub(crate) async fn stop_powered_off(running: Running) {
    let _ = running.stop.send(true);
    for task in running.tasks {
        let _ = task.await;
    }
    let _ = running.node.shutdown().await;
}

pub(crate) async fn stop(running: Running) {
    let _ = running.stop.send(true);
    for task in running.tasks {
        task.await.expect("the node's tasks end cleanly");
    }
    running.node.shutdown().await.expect("clean shutdown");
}

pub(crate) fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        expiry: Expiry::Never,
        condition: Condition::Always,
        return_old: false,
    }
}

pub(crate) fn get(key: &str) -> Command {
    Command::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

pub(crate) fn value_of(reply: Reply) -> Option<Bytes> {
    match reply {
        Reply::Entry(e) => e.map(|e| e.value),
        other => panic!("a GET answered {other:?}"),
    }
}

/// Runs `command` on `node` until it succeeds, as a client retries `TRYAGAIN` (and, for the
/// idempotent SETs here, an unknown outcome).
pub(crate) async fn until_done(node: &Node, command: Command) -> Reply {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match node.execute(command.clone()).await {
                Ok(reply) => return reply,
                Err(CommandError::TryAgain(_) | CommandError::OutcomeUnknown(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{command:?} failed for good: {e}"),
            }
        }
    })
    .await
    .expect("done within the patience")
}

/// Waits until `node` sees every shard with three voters and the shard leaders spread one
/// per node; returns the status.
async fn replicated(node: &Node) -> cairn_server::ClusterStatus {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let status = node.cluster_status();
            let leaders: std::collections::BTreeSet<_> = status
                .shards
                .iter()
                .filter_map(|s| s.leader.clone())
                .collect();
            if status.nodes.len() == 3
                && leaders.len() == 3
                && status
                    .shards
                    .iter()
                    .all(|s| s.replicas.len() == 3 && s.learners.is_empty())
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not replicated and balanced: {:?}", node.cluster_status()))
}

/// Waits until `node`'s own replica (a stale, local read) holds `value` at `key`.
pub(crate) async fn held_locally(node: &Node, key: &str, value: &str) {
    let last = parking_lot::Mutex::new(None);
    tokio::time::timeout(PATIENCE, async {
        loop {
            let reply = node.execute_with(get(key), true).await;
            let got = reply.map(value_of);
            if got.as_ref().ok().and_then(|v| v.as_deref()) == Some(value.as_bytes()) {
                return;
            }
            *last.lock() = Some(got.map(|v| v.map(|v| brief(&v))));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "node {} never held {key} = {}; it last read {:?}; its replicas:{}",
            node.id(),
            brief(value.as_bytes()),
            last.lock().take(),
            group_views(&[node])
        )
    });
}

/// A value as a failure message shows it: whole when short, else its length (some values
/// here are mebibytes).
fn brief(value: &[u8]) -> String {
    if value.len() <= 300 {
        String::from_utf8_lossy(value).into_owned()
    } else {
        format!("<{} bytes>", value.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_the_in_memory_network_replicates_forwards_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start(&net, dir.path(), 1, None).await;
    let n2 = start(&net, dir.path(), 2, Some(1)).await;
    let n3 = start(&net, dir.path(), 3, Some(1)).await;
    let status = replicated(&n1.node).await;
    for (a, b) in [(1, 2), (1, 3), (2, 3)] {
        assert!(
            net.connections(grpc_addr(a), grpc_addr(b)) > 0,
            "nodes {a} and {b} never connected through the network"
        );
    }
    // Keys of every shard, and which of them node 3 leads.
    let keys: Vec<String> = (0..24).map(|i| format!("key-{i}")).collect();
    let shard_of = |key: &str| {
        let slot = cairn_proto::slot::key_slot(key.as_bytes());
        status
            .shards
            .iter()
            .find(|s| s.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("every slot has a shard")
    };
    let n3_name = n3.node.cluster_status().node_id;
    let led_by_n3: Vec<&String> = keys
        .iter()
        .filter(|k| shard_of(k).leader.as_deref() == Some(n3_name.as_str()))
        .collect();
    assert!(!led_by_n3.is_empty(), "no key of the shard node 3 leads");

    // Writes through one node are read through every node (forwarded to each shard's
    // leader), and every replica holds them.
    for key in &keys {
        until_done(&n1.node, set(key, "one")).await;
    }
    for node in [&n1.node, &n2.node, &n3.node] {
        for key in &keys {
            let got = value_of(until_done(node, get(key)).await);
            assert_eq!(
                got.as_deref(),
                Some(&b"one"[..]),
                "{key} through node {}",
                node.id()
            );
        }
    }
    for key in &keys {
        held_locally(&n3.node, key, "one").await;
    }

    // Node 3 cut off, while it leads a shard: the majority elects a new leader and goes on
    // writing; node 3 never answers a linearizable read with the value it holds (for keys of
    // other shards it cannot reach their leaders; for its own shard its lease runs out).
    net.isolate(grpc_addr(3));
    for key in &keys {
        until_done(&n1.node, set(key, "two")).await;
    }
    // (Concurrently: each waits out the read deadline.)
    let reads = keys.iter().map(|key| {
        let node = n3.node.clone();
        async move { (key, node.execute(get(key)).await) }
    });
    let reads = tokio::time::timeout(PATIENCE, futures::future::join_all(reads))
        .await
        .expect("the isolated node answers within the patience");
    for (key, read) in reads {
        match read {
            Err(CommandError::TryAgain(_)) => {}
            other => panic!(
                "an isolated node answered a linearizable read of {key} (its shard led by \
                 node 3: {}): {other:?}",
                led_by_n3.contains(&key)
            ),
        }
    }

    // Healed, it replicates again and serves the new values.
    net.heal();
    for key in &keys {
        held_locally(&n3.node, key, "two").await;
        let got = value_of(until_done(&n3.node, get(key)).await);
        assert_eq!(
            got.as_deref(),
            Some(&b"two"[..]),
            "{key} through node 3 after healing"
        );
    }
    for running in [n3, n2, n1] {
        stop(running).await;
    }
}

/// Values near the largest a node takes replicate, whether many of them go into one log
/// entry (writes that arrive together), one value is nearly as large as a node takes, or a
/// follower that was cut off gets a long run of them at once: a message past the peer's limit was refused every time it was sent again,
/// and the follower (or, without a majority, the shard) never got past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_a_mebibyte_replicate_in_large_entries_and_long_runs() {
    const VALUE_BYTES: usize = 1000 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start(&net, dir.path(), 1, None).await;
    let n2 = start(&net, dir.path(), 2, Some(1)).await;
    let n3 = start(&net, dir.path(), 3, Some(1)).await;
    replicated(&n1.node).await;
    let value = |i: usize| {
        char::from(b'a' + (i % 26) as u8)
            .to_string()
            .repeat(VALUE_BYTES)
    };

    // Twelve writes at once to one shard: its proposer packs them into entries of several
    // mebibytes.
    let together: Vec<String> = (0..12).map(|i| format!("{{big}}together-{i}")).collect();
    let writes = together.iter().enumerate().map(|(i, key)| {
        let node = n1.node.clone();
        let command = set(key, &value(i));
        async move { until_done(&node, command).await }
    });
    futures::future::join_all(writes).await;
    for node in [&n1.node, &n2.node, &n3.node] {
        for (i, key) in together.iter().enumerate() {
            held_locally(node, key, &value(i)).await;
        }
    }

    // One value near the largest a node takes by default (16 MiB): the append that carries
    // it takes far longer to send, write and sync than openraft's deadline for an append
    // (the heartbeat interval), which fits a heartbeat.
    let huge = "h".repeat(15 << 20);
    until_done(&n1.node, set("{huge}", &huge)).await;
    for node in [&n1.node, &n2.node, &n3.node] {
        held_locally(node, "{huge}", &huge).await;
    }

    // Node 3 cut off while 80 more go in through node 1: healed, it is sent them as one run
    // of about 80 MB, more than any message may carry, so it goes in parts.
    net.isolate(grpc_addr(3));
    let behind: Vec<String> = (0..80).map(|i| format!("{{behind}}-{i}")).collect();
    for (i, key) in behind.iter().enumerate() {
        until_done(&n1.node, set(key, &value(i))).await;
    }
    net.heal();
    for (i, key) in behind.iter().enumerate() {
        held_locally(&n3.node, key, &value(i)).await;
    }
    for running in [n3, n2, n1] {
        stop(running).await;
    }
}

/// The newest term each shard's replicas know, by shard.
fn shard_terms(nodes: &[&Node]) -> std::collections::BTreeMap<u32, u64> {
    let mut terms = std::collections::BTreeMap::new();
    for node in nodes {
        for shard in node.shards().list() {
            let term = terms.entry(shard.id).or_insert(0);
            *term = (*term).max(shard.group.status().term);
        }
    }
    terms
}

/// A value of many mebibytes crossing a link slower than loopback holds up no other message
/// on it: heartbeats (of its own shard too) and other appends go on beside it, so no
/// follower misses its leader and no shard elects anew. (When every group's appends shared
/// one stream and one message carried the value, the link carried nothing else for the
/// seconds it took: here 3 s at 4 MiB/s, four times an election timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_on_a_slow_link_holds_up_no_heartbeat() {
    const LINK_BYTES_PER_SEC: u64 = 4 << 20;
    crate::init_log();
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start(&net, dir.path(), 1, None).await;
    let n2 = start(&net, dir.path(), 2, Some(1)).await;
    let n3 = start(&net, dir.path(), 3, Some(1)).await;
    replicated(&n1.node).await;
    let nodes = [&*n1.node, &*n2.node, &*n3.node];
    // Small writes to every shard, so each leader has an entry of its term committed.
    for i in 0..30 {
        until_done(&n1.node, set(&format!("small-{i}"), "v")).await;
    }
    let terms = shard_terms(&nodes);

    net.limit_links(Some(LINK_BYTES_PER_SEC));
    let huge = "h".repeat(12 << 20);
    until_done(&n1.node, set("{huge}", &huge)).await;
    for node in nodes {
        held_locally(node, "{huge}", &huge).await;
    }
    // Small writes to every shard meanwhile go through too.
    for i in 0..30 {
        until_done(&n2.node, set(&format!("small-{i}"), "w")).await;
    }
    net.limit_links(None);
    assert_eq!(
        shard_terms(&nodes),
        terms,
        "a shard elected anew while the value crossed:{}",
        group_views(&nodes)
    );
    for running in [n3, n2, n1] {
        stop(running).await;
    }
}

/// Every shard id and the nodes (by index in `nodes`) holding a replica of it, as each node
/// sees its own replicas.
pub(crate) fn holders(nodes: &[&Node]) -> std::collections::BTreeMap<u32, Vec<usize>> {
    let mut held: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, node) in nodes.iter().enumerate() {
        for shard in node.shards().list() {
            held.entry(shard.id).or_default().push(i);
        }
    }
    held
}

/// Each node's replicas as their groups see themselves (role, term, leader, voters,
/// learners, log positions): what a test that gives up on a cluster settling prints.
pub(crate) fn group_views(nodes: &[&Node]) -> String {
    let mut out = String::new();
    for (i, node) in nodes.iter().enumerate() {
        for shard in node.shards().list() {
            let s = shard.group.status();
            out.push_str(&format!(
                "\n  node index {i} (raft id {}) shard {}: {:?} term {} leader {:?} voters \
                 {:?} learners {:?} last {:?} committed {:?} applied {:?} stopped {:?}",
                s.node,
                shard.id,
                s.role,
                s.term,
                s.leader,
                s.voters,
                s.learners,
                s.last_log_index,
                s.committed,
                s.applied,
                s.stopped
            ));
        }
    }
    out
}

/// Whether `nodes` hold `shards` shards, each on exactly `replicas` of them (as each node
/// sees its own replicas), and each node's share within one of the others'.
pub(crate) fn spread_evenly(nodes: &[&Node], shards: usize, replicas: usize) -> bool {
    let held = holders(nodes);
    let mut per_node = vec![0; nodes.len()];
    for holders in held.values() {
        for &i in holders {
            per_node[i] += 1;
        }
    }
    held.len() == shards
        && held.values().all(|h| h.len() == replicas)
        && per_node.iter().max().unwrap() - per_node.iter().min().unwrap() <= 1
}

/// `remove-node` is refused when it would leave a shard without a majority of its voters up,
/// also a shard the metadata leader holds no replica of (data on the voters only): the check
/// reads every shard's voters from the map, not the leader's own replicas. (It read the
/// leader's replicas only: the removal was accepted, and the drain could never finish.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_that_would_leave_any_shard_without_a_majority_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let mut running = vec![start_with(&net, dir.path(), 1, None, 2, true).await];
    for i in 2..=4 {
        running.push(start_with(&net, dir.path(), i, Some(1), 2, true).await);
    }
    let nodes: Vec<Arc<Node>> = running.iter().map(|r| r.node.clone()).collect();
    let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    // Settled, every shard reported with its two voters, and a metadata leader: one that
    // holds no replica of some shard (three shards of two replicas on four nodes).
    let (leader, shard) = tokio::time::timeout(PATIENCE * 2, async {
        loop {
            if spread_evenly(&refs, SHARDS as usize, 2) {
                if let Some(leader) = nodes.iter().find(|n| n.meta().is_leader()) {
                    let reported = leader.meta().shards();
                    let lacked = reported
                        .iter()
                        .find(|p| p.voters.len() == 2 && !p.voters.contains(&leader.raft_id()));
                    if reported.len() == SHARDS as usize
                        && reported.iter().all(|p| p.voters.len() == 2)
                        && let Some(lacked) = lacked
                    {
                        return (leader.clone(), lacked.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never settled: {:?}", holders(&refs)));
    assert!(
        leader.shards().get(shard.shard).is_none(),
        "the metadata leader holds the shard it should lack"
    );
    let index_of = |raft_id: u64| {
        nodes
            .iter()
            .position(|n| n.raft_id() == raft_id)
            .expect("a voter is one of the nodes")
    };
    let mut voters = shard.voters.iter().copied();
    let (down, target) = (voters.next().unwrap(), voters.next().unwrap());

    // One of the shard's two voters goes down (the map says so after `down_after`).
    net.isolate(grpc_addr(index_of(down) as u8 + 1));
    tokio::time::timeout(PATIENCE, async {
        while !leader
            .meta()
            .nodes()
            .iter()
            .any(|r| r.raft_id == down && r.down)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the isolated node is marked down");

    // Removing the other would leave the shard with no voter up: refused, naming its group
    // (among others: the metadata group too, if both were its voters).
    let name = leader
        .meta()
        .nodes()
        .into_iter()
        .find(|r| r.raft_id == target)
        .expect("the target is in the map")
        .name;
    let group = cairn_server::shard::group_of_shard(shard.shard);
    match leader.remove_node(&name).await {
        Err(cairn_server::balancer::ManageError::Refused(why)) => assert!(
            why.contains("without a majority")
                && why.contains(&format!("group {group} (0 of 1 up)")),
            "refused for another reason: {why}"
        ),
        other => panic!("removing a voter of shard {} was {other:?}", shard.shard),
    }
    assert!(
        leader
            .meta()
            .nodes()
            .iter()
            .any(|r| r.raft_id == target && !r.leaving),
        "the refused node was marked leaving"
    );
    net.heal();
    for r in running.into_iter().rev() {
        stop(r).await;
    }
}

/// With data on the voters only, each shard's replicas live on `replicas` nodes: the others
/// hold none, and still serve every key (forwarded to the leader the map names); a node
/// that joins takes its share, copied to it; a node drained away leaves its replicas
/// recreated elsewhere and deleted from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_data_on_the_voters_only_each_shard_lives_on_its_voters_and_every_node_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start_with(&net, dir.path(), 1, None, 2, true).await;
    let n2 = start_with(&net, dir.path(), 2, Some(1), 2, true).await;
    let n3 = start_with(&net, dir.path(), 3, Some(1), 2, true).await;
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        until_done(&n1.node, set(key, "one")).await;
    }
    // Settled: every shard on exactly two nodes, and each node's share within one of the
    // others'.
    let settled = |nodes: &[&Node]| spread_evenly(nodes, SHARDS as usize, 2);
    let wait_settled = |nodes: Vec<Arc<Node>>| async move {
        tokio::time::timeout(PATIENCE * 2, async {
            loop {
                let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
                if settled(&refs) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
            panic!(
                "replicas never settled on two nodes each: {:?}",
                holders(&refs)
            )
        });
    };
    wait_settled(vec![n1.node.clone(), n2.node.clone(), n3.node.clone()]).await;
    // Every node serves every key, including those of shards it holds no replica of.
    for node in [&n1.node, &n2.node, &n3.node] {
        for key in &keys {
            let got = value_of(until_done(node, get(key)).await);
            assert_eq!(
                got.as_deref(),
                Some(&b"one"[..]),
                "{key} through node {}",
                node.id()
            );
        }
    }
    for (i, key) in keys.iter().take(6).enumerate() {
        let node = [&n1.node, &n2.node, &n3.node][i % 3];
        until_done(node, set(key, "two")).await;
    }
    for node in [&n1.node, &n2.node, &n3.node] {
        whole_keyspace(node, &keys, SHARDS as usize).await;
    }
    followed_watch(&[n1.node.clone(), n2.node.clone(), n3.node.clone()], &keys).await;

    // A fourth node takes its share: replicas created on it, with the data copied.
    let n4 = start_with(&net, dir.path(), 4, Some(1), 2, true).await;
    dropped_replicas_are_read_past(&[n1.node.clone(), n2.node.clone(), n3.node.clone()], &keys)
        .await;
    let all = vec![
        n1.node.clone(),
        n2.node.clone(),
        n3.node.clone(),
        n4.node.clone(),
    ];
    wait_settled(all.clone()).await;
    assert!(
        !n4.node.shards().list().is_empty(),
        "the new node took no replica"
    );
    for shard in n4.node.shards().list() {
        let owned: Vec<&String> = keys
            .iter()
            .filter(|k| n4.node.shards().shard_of_key(k.as_bytes()) == shard.id)
            .collect();
        for key in owned {
            let want = if keys.iter().take(6).any(|k| k == key) {
                "two"
            } else {
                "one"
            };
            held_locally(&n4.node, key, want).await;
        }
    }

    // Node 2 drained: what it held is recreated on the others, and its replicas deleted.
    let n2_name = n2.node.cluster_status().node_id;
    until_removed(&n1.node, &n2_name).await;
    let staying = vec![n1.node.clone(), n3.node.clone(), n4.node.clone()];
    wait_settled(staying.clone()).await;
    tokio::time::timeout(PATIENCE, async {
        while !n2.node.shards().list().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the drained node deletes its replicas");
    for node in &staying {
        whole_keyspace(node, &keys, SHARDS as usize).await;
        for (i, key) in keys.iter().enumerate() {
            let want = if i < 6 { "two" } else { "one" };
            let got = value_of(until_done(node, get(key)).await);
            assert_eq!(
                got.as_deref(),
                Some(want.as_bytes()),
                "{key} through node {}",
                node.id()
            );
        }
    }
    // FLUSHALL through a node empties every shard, held there or not, split ones too. A
    // SCAN through a node that holds only some shards, begun before the split and finished
    // after it, returns every key (some twice: moved to the child after they were listed).
    let (cursor, mut scanned) = scan_pages(&n3.node, 0, Some(2)).await;
    assert_ne!(cursor, 0, "the SCAN ended before the split");
    let in_shard_0: Vec<&String> = keys
        .iter()
        .filter(|k| n3.node.shards().shard_of_key(k.as_bytes()) == 0)
        .collect();
    tokio::time::timeout(PATIENCE, async {
        while n1.node.split_shard(0, None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("shard 0 splits");
    // The test is only worth its name if some key the split moves was still to be listed.
    tokio::time::timeout(PATIENCE, async {
        while in_shard_0
            .iter()
            .all(|k| n3.node.shards().shard_of_key(k.as_bytes()) == 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("node 3's map shows the split");
    let moved_unlisted = in_shard_0
        .iter()
        .filter(|k| n3.node.shards().shard_of_key(k.as_bytes()) != 0)
        .filter(|k| !scanned.iter().any(|s| s.as_ref() == k.as_bytes()))
        .count();
    assert!(
        moved_unlisted > 0,
        "the split moved no key still to be listed"
    );
    let (_, rest) = scan_pages(&n3.node, cursor, None).await;
    scanned.extend(rest);
    let scanned: std::collections::BTreeSet<Bytes> = scanned.into_iter().collect();
    let want: std::collections::BTreeSet<Bytes> = keys
        .iter()
        .map(|k| Bytes::copy_from_slice(k.as_bytes()))
        .collect();
    assert_eq!(scanned, want, "a SCAN across the split through node 3");
    for key in &keys {
        until_done(&n3.node, set(key, "three")).await;
    }
    // Every key is counted, the split's child's too, before the flush.
    for node in &staying {
        whole_keyspace(node, &keys, SHARDS as usize + 1).await;
    }
    until_done(&n4.node, Command::Flush).await;
    // Whole-keyspace reads serve this node's replicas as they stand: a follower applies the
    // flush a moment after its leader.
    for node in &staying {
        tokio::time::timeout(PATIENCE, async {
            while until_done(node, Command::DbSize).await != Reply::Int(0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("keys left after FLUSHALL through node {}", node.id()));
    }
    for running in [n1, n2, n3, n4] {
        stop(running).await;
    }
}

/// A watch on a node whose replica of the watched shard moves away (a fourth node takes it)
/// goes on there without a gap: the replica's feed tells every change it holds before the
/// watch ends (`NotHere`), and the feed the node then follows starts where the replica
/// stood, so the watch resumed from its token misses nothing and is never `Compacted`. The
/// replica moved away never counts as out of touch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_node_whose_replica_moves_away_resumes_there_without_a_gap() {
    use cairn_server::watch::{Item, Selector, WatchError};
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start_with(&net, dir.path(), 1, None, 2, true).await;
    let n2 = start_with(&net, dir.path(), 2, Some(1), 2, true).await;
    let n3 = start_with(&net, dir.path(), 3, Some(1), 2, true).await;
    let three = [n1.node.clone(), n2.node.clone(), n3.node.clone()];
    tokio::time::timeout(PATIENCE * 2, async {
        loop {
            let refs: Vec<&Node> = three.iter().map(|n| &**n).collect();
            if spread_evenly(&refs, SHARDS as usize, 2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("two replicas a shard");
    // On each node, a watch of one key of each shard it holds.
    let mut watched = Vec::new();
    for node in &three {
        for shard in node.shards().list() {
            let key = (0..)
                .map(|i| format!("w{}-{i}", node.id()))
                .find(|k| node.shards().shard_of_key(k.as_bytes()) == shard.id)
                .unwrap();
            let watcher = node
                .watch(
                    Selector::Key(Bytes::copy_from_slice(key.as_bytes())),
                    None,
                    Duration::from_secs(60),
                )
                .expect("a watch of a held shard");
            watched.push((node.clone(), shard.id, key, watcher));
        }
    }
    // What nodes 1-3 tell as out of touch while node 4 takes its share: a replica moved
    // away soon hears nothing from its group, but the node follows the shard's feed
    // instead, so no shard there loses touch (which would end its watches and flush every
    // tracking client's cache).
    let lost_touch = Arc::new(std::sync::Mutex::new(Vec::new()));
    let touch_tasks: Vec<_> = three
        .iter()
        .map(|node| {
            let (mut touch, lost) = (node.touch_changes(), lost_touch.clone());
            let id = node.id().to_string();
            tokio::spawn(async move {
                while touch.changed().await.is_ok() {
                    let out = touch.borrow_and_update().clone();
                    if !out.is_empty() {
                        lost.lock().unwrap().push((id.clone(), out.to_vec()));
                    }
                }
            })
        })
        .collect();
    // Every watched key written 0, 1, 2, ... through node 1 while node 4 takes its share.
    let (stop_writing, mut stopped) = watch::channel(false);
    let writer = {
        let (node, keys) = (
            n1.node.clone(),
            watched.iter().map(|w| w.2.clone()).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !*stopped.borrow_and_update() {
                for key in &keys {
                    until_done(&node, set(key, &n.to_string())).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let n4 = start_with(&net, dir.path(), 4, Some(1), 2, true).await;
    let four = [
        n1.node.clone(),
        n2.node.clone(),
        n3.node.clone(),
        n4.node.clone(),
    ];
    tokio::time::timeout(PATIENCE * 2, async {
        loop {
            let refs: Vec<&Node> = four.iter().map(|n| &**n).collect();
            if spread_evenly(&refs, SHARDS as usize, 2) && !n4.node.shards().list().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("node 4 takes its share");
    // Past the dropped replicas' grace, so that each moved one is gone from its node.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_writing.send(true).unwrap();
    let rounds = writer.await.unwrap();
    assert!(rounds > 10, "only {rounds} rounds of writes");
    let mut moved = 0;
    for (node, shard, key, mut watcher) in watched {
        let left = node.shards().get(shard).is_none();
        moved += usize::from(left);
        let mut seen: Vec<u64> = Vec::new();
        let mut ends = 0;
        tokio::time::timeout(PATIENCE, async {
            while seen.last() != Some(&(rounds - 1)) {
                match watcher.next().await {
                    Ok(Item::Events(events)) => seen.extend(events.iter().map(|e| {
                        std::str::from_utf8(&e.event.value)
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                    })),
                    Ok(Item::Progress) => {}
                    Err(WatchError::NotHere(_) | WatchError::OutOfTouch(_)) => {
                        ends += 1;
                        let token = watcher.token().to_string();
                        watcher = loop {
                            match node.watch(
                                Selector::Key(Bytes::copy_from_slice(key.as_bytes())),
                                Some(&token),
                                Duration::from_secs(60),
                            ) {
                                Ok(watcher) => break watcher,
                                Err(WatchError::NotHere(_) | WatchError::OutOfTouch(_)) => {
                                    tokio::time::sleep(Duration::from_millis(50)).await
                                }
                                Err(e) => panic!(
                                    "{key} (shard {shard}) on node {}: resuming failed: {e}",
                                    node.id()
                                ),
                            }
                        };
                    }
                    Err(e) => panic!(
                        "{key} (shard {shard}) on node {}, after {} values: {e}",
                        node.id(),
                        seen.len()
                    ),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key} on node {}: the watch stalled at {seen:?}", node.id()));
        // A write of unknown outcome is written again: its value may come twice in a row.
        seen.dedup();
        let want: Vec<u64> = (0..rounds).collect();
        assert_eq!(
            seen,
            want,
            "{key} (shard {shard}) on node {}, replica moved away: {left}, watch ended {ends} times",
            node.id()
        );
        if left {
            assert!(ends > 0, "a watch of a replica that left never ended");
        }
    }
    assert!(moved > 0, "node 4 took no replica a watch was on");
    for task in touch_tasks {
        task.abort();
    }
    assert_eq!(
        *lost_touch.lock().unwrap(),
        Vec::new(),
        "shards out of touch on nodes 1-3 while replicas moved"
    );
    for running in [n4, n3, n2, n1] {
        stop(running).await;
    }
}

/// SCAN pages of four through `node` from `cursor`: `pages` of them (`None`: to the end of
/// the iteration). The cursor to go on with (0: the end), and the keys.
async fn scan_pages(node: &Node, mut cursor: u64, pages: Option<usize>) -> (u64, Vec<Bytes>) {
    let mut keys = Vec::new();
    let mut read = 0;
    while pages.is_none_or(|p| read < p) {
        let page = until_done(
            node,
            Command::Scan {
                cursor,
                pattern: None,
                count: 4,
                type_filter: None,
            },
        )
        .await;
        let Reply::ScanPage {
            cursor: next,
            keys: got,
        } = page
        else {
            panic!("SCAN answered {page:?}");
        };
        keys.extend(got);
        read += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    (cursor, keys)
}

/// While a replica moves, the node of the voter it replaces keeps that voter's replica for a
/// few seconds after the group dropped it (`DROPPED_REPLICA_GRACE`); the group no longer
/// sends it anything. A stale read through that node meanwhile goes by the map to the
/// shard's leader, and sees a write made after the drop, rather than the frozen replica.
async fn dropped_replicas_are_read_past(nodes: &[Arc<Node>], keys: &[String]) {
    let (node, shard, key) = tokio::time::timeout(PATIENCE * 2, async {
        loop {
            for node in nodes {
                let me = node.raft_id();
                for shard in node.shards().list() {
                    // Dropped as the map tells it (not a learner being added, which the
                    // map does not list yet either).
                    let known = shard.group.membership_log_id().unwrap_or((0, 0));
                    let dropped = node.meta().shard(shard.id).is_some_and(|p| {
                        cairn_server::placement::dropped_by(&p, me, known)
                            && shard.group.is_in_own_membership()
                    });
                    let key = keys
                        .iter()
                        .find(|k| node.shards().shard_of_key(k.as_bytes()) == shard.id);
                    if let (true, Some(key)) = (dropped, key) {
                        return (node.clone(), shard.id, key.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a replica the map shows dropped, seen before its node deletes it");
    let other = nodes
        .iter()
        .find(|n| n.id() != node.id())
        .expect("another node");
    let before = value_of(until_done(other, get(&key)).await).expect("the key is there");
    until_done(other, set(&key, "after-the-drop")).await;
    // A stale read may lag a moment (a follower applies the write at its next message from
    // the leader); the frozen replica never shows it.
    let mut stale = None;
    for _ in 0..30 {
        stale = value_of(
            node.execute_with(get(&key), true)
                .await
                .expect("a stale read"),
        );
        if stale.as_deref() == Some(&b"after-the-drop"[..]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.shards().get(shard).is_some(),
        "node {} deleted its dropped replica of shard {shard} before the reads: the check is void",
        node.id()
    );
    assert_eq!(
        stale.as_deref(),
        Some(&b"after-the-drop"[..]),
        "stale reads of {key} for 1.5 s through node {}, whose replica of shard {shard} was dropped",
        node.id()
    );
    until_done(other, set(&key, std::str::from_utf8(&before).unwrap())).await;
}

/// Through `node`: the map lists every shard (its replicas and leader, covering every slot
/// once), and KEYS, SCAN, DBSIZE, range scans and RANDOMKEY see exactly `keys`, whichever
/// shards the node holds.
async fn whole_keyspace(node: &Node, keys: &[String], shards: usize) {
    let want: std::collections::BTreeSet<Bytes> = keys
        .iter()
        .map(|k| Bytes::copy_from_slice(k.as_bytes()))
        .collect();
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            let status = node.cluster_status();
            let slots: usize = status
                .shards
                .iter()
                .flat_map(|s| &s.slots)
                .map(|&(a, b)| usize::from(b - a) + 1)
                .sum();
            if status.shards.len() == shards
                && slots == 16384
                && status
                    .shards
                    .iter()
                    .all(|s| s.replicas.len() == 2 && s.leader.is_some())
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "node {} never listed every shard: {:?}",
            node.id(),
            node.cluster_status()
        )
    });
    assert!(
        status.shards.iter().all(|s| s.learners.is_empty()),
        "{status:?}"
    );
    let Reply::Keys(listed) = until_done(
        node,
        Command::Keys {
            pattern: Bytes::from_static(b"*"),
        },
    )
    .await
    else {
        panic!("KEYS answered something else");
    };
    assert_eq!(listed.len(), want.len(), "KEYS through node {}", node.id());
    assert_eq!(
        listed
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );
    assert_eq!(
        until_done(node, Command::DbSize).await,
        Reply::Int(want.len() as i64),
        "DBSIZE through node {}",
        node.id()
    );
    let (_, mut scanned) = scan_pages(node, 0, None).await;
    scanned.sort();
    scanned.dedup();
    assert_eq!(
        scanned
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        want,
        "SCAN through node {}",
        node.id()
    );
    let range = cairn_server::command::KeyRange {
        start: std::ops::Bound::Included(Bytes::from_static(b"key-1")),
        end: std::ops::Bound::Excluded(Bytes::from_static(b"key-2")),
    };
    let Reply::Entries { entries, more } = until_done(
        node,
        Command::ScanRange {
            range,
            limit: 5,
            keys_only: false,
        },
    )
    .await
    else {
        panic!("a range scan answered something else");
    };
    let expected: Vec<&Bytes> = want
        .iter()
        .filter(|k| k.starts_with(b"key-1"))
        .take(5)
        .collect();
    assert_eq!(entries.iter().map(|e| &e.key).collect::<Vec<_>>(), expected);
    assert!(more, "more keys start with key-1 than 5");
    let Reply::Value(Some(random)) = until_done(node, Command::RandomKey).await else {
        panic!("RANDOMKEY found nothing through node {}", node.id());
    };
    assert!(want.contains(&random));
}

/// A watch through a node of a key whose shard it holds no replica of (a followed feed):
/// every change made through another node is told once, in order, and a watch resumed from
/// its token tells what came after.
async fn followed_watch(nodes: &[Arc<Node>], keys: &[String]) {
    use cairn_server::watch::{Selector, WatchError};
    let (watching, key) = nodes
        .iter()
        .flat_map(|n| keys.iter().map(move |k| (n, k)))
        .find(|(n, k)| n.shards().for_key(k.as_bytes()).is_none())
        .expect("some node holds no replica of some key's shard");
    let writer = nodes
        .iter()
        .find(|n| n.id() != watching.id())
        .expect("another node");
    let key_bytes = Bytes::copy_from_slice(key.as_bytes());
    let watch = |from: Option<String>| {
        let (node, key) = (watching.clone(), key_bytes.clone());
        async move {
            tokio::time::timeout(PATIENCE, async {
                loop {
                    match node.watch(
                        Selector::Key(key.clone()),
                        from.as_deref(),
                        Duration::from_secs(60),
                    ) {
                        Ok(watcher) => return watcher,
                        Err(WatchError::NotHere(_) | WatchError::OutOfTouch(_)) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("the watch failed: {e}"),
                    }
                }
            })
            .await
            .expect("a followed feed within the patience")
        }
    };
    let mut watcher = watch(None).await;
    for v in ["w1", "w2"] {
        until_done(writer, set(key, v)).await;
    }
    assert_eq!(
        next_values(&mut watcher, 2).await,
        vec![Bytes::from("w1"), Bytes::from("w2")]
    );
    let token = watcher.token().to_string();
    drop(watcher);
    until_done(writer, set(key, "w3")).await;
    let mut resumed = watch(Some(token)).await;
    assert_eq!(next_values(&mut resumed, 1).await, vec![Bytes::from("w3")]);
    // Back to the value the rest of the test expects.
    let want = if keys.iter().take(6).any(|k| k == key) {
        "two"
    } else {
        "one"
    };
    until_done(writer, set(key, want)).await;
    assert_eq!(next_values(&mut resumed, 1).await, vec![Bytes::from(want)]);
}

/// The values of the next `n` changes `watcher` tells.
async fn next_values(watcher: &mut cairn_server::watch::Watcher, n: usize) -> Vec<Bytes> {
    use cairn_server::watch::Item;
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while got.len() < n {
            match watcher.next().await.expect("the watch goes on") {
                Item::Events(events) => got.extend(events.into_iter().map(|e| e.event.value)),
                Item::Progress => {}
            }
        }
    })
    .await
    .expect("the changes are told within the patience");
    got
}

/// Asks `node` to drain the node named `name` until the map drops it.
pub(crate) async fn until_removed(node: &Node, name: &str) {
    tokio::time::timeout(PATIENCE * 2, async {
        loop {
            let _ = node.remove_node(name).await;
            if !node.cluster_status().nodes.iter().any(|n| n.id == name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the node is removed within the patience");
}

/// A watch through a node that holds no replica of its key's shard reads the shard's feed as
/// that node follows it, from the shard's leader. When the leader goes silent (every link of
/// it drops everything, as iptables DROP rules would: connections stay open, nothing comes),
/// the node follows another holder, and the watch, resumed from its token whenever it ends
/// (a retriable end), tells every change once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_feed_moves_on_when_its_holder_goes_silent_and_a_watch_misses_nothing() {
    use cairn_server::watch::{Item, Selector};
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let mut running = vec![start_with(&net, dir.path(), 1, None, 3, true).await];
    for i in 2..=4 {
        running.push(start_with(&net, dir.path(), i, Some(1), 3, true).await);
    }
    let nodes: Vec<Arc<Node>> = running.iter().map(|r| r.node.clone()).collect();
    // Settled: every shard on three of the four nodes, each led.
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    let (watching, key, leader) = tokio::time::timeout(PATIENCE * 2, async {
        loop {
            let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
            let spread = spread_evenly(&refs, SHARDS as usize, 3);
            let pick = keys.iter().find_map(|key| {
                let x = nodes
                    .iter()
                    .position(|n| n.shards().for_key(key.as_bytes()).is_none())?;
                let slot = cairn_proto::slot::key_slot(key.as_bytes());
                let status = nodes[x].cluster_status();
                let shard = status
                    .shards
                    .iter()
                    .find(|s| s.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))?;
                let leader = shard.leader.as_deref()?;
                let l = nodes.iter().position(|n| n.id() == leader)?;
                Some((x, key.clone(), l))
            });
            if let (true, Some(pick)) = (spread, pick) {
                return pick;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every shard on three nodes, a key's shard missing from one");
    let writer = (0..nodes.len())
        .find(|&i| i != watching && i != leader)
        .expect("a third node");
    let (x, w) = (nodes[watching].clone(), nodes[writer].clone());
    let key_bytes = Bytes::copy_from_slice(key.as_bytes());
    let open = move |from: Option<String>| {
        let (x, key) = (x.clone(), key_bytes.clone());
        async move {
            tokio::time::timeout(PATIENCE, async {
                loop {
                    match x.watch(Selector::Key(key.clone()), from.as_deref(), PATIENCE) {
                        Ok(watcher) => return watcher,
                        Err(e) if e.unavailable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("the watch failed for good: {e}"),
                    }
                }
            })
            .await
            .expect("the watch opens within the patience")
        }
    };
    // The changes the watch told (revision, value), resuming from its token whenever it
    // ends, until v19.
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<(u64, Bytes)>::new()));
    let mut watcher = open(None).await;
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(Item::Events(events)) => {
                        let mut seen = seen.lock();
                        seen.extend(events.into_iter().map(|e| (e.revision, e.event.value)));
                        if seen.last().is_some_and(|(_, v)| v.as_ref() == b"v19") {
                            return;
                        }
                    }
                    Ok(Item::Progress) => {}
                    Err(e) if e.unavailable() => {
                        let token = watcher.token().to_string();
                        watcher = open(Some(token)).await;
                    }
                    Err(e) => panic!("the watch ended for good: {e}"),
                }
            }
        })
    };
    let value = |i: usize| format!("v{i}");
    for i in 0..5 {
        until_done(&w, set(&key, &value(i))).await;
    }
    // The leader, which the watching node follows the shard on, goes silent; the two other
    // holders elect a new leader.
    net.silence(grpc_addr(leader as u8 + 1));
    let silent_since = std::time::Instant::now();
    for i in 5..15 {
        until_done(&w, set(&key, &value(i))).await;
    }
    // Told while the old leader is still silent, within 20 s of the silence: the watching
    // node gave up on it after FOLLOW_SILENCE_MAX (2 s), well before HTTP/2 keepalive would
    // have (30 s).
    let deadline = silent_since + Duration::from_secs(20);
    while !seen.lock().iter().any(|(_, v)| v.as_ref() == b"v14") {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch told {:?} in 20 s while the holder it followed was silent",
            seen.lock()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.heal();
    for i in 15..20 {
        until_done(&w, set(&key, &value(i))).await;
    }
    tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("the watch tells the last change within the patience")
        .unwrap();
    // Each change once (revisions only grow: a resume never tells one again), in order; a
    // write retried after an unknown outcome may have landed twice, at two revisions.
    let seen = seen.lock().clone();
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions told out of order or twice: {seen:?}"
    );
    let mut told: Vec<Bytes> = seen.into_iter().map(|(_, v)| v).collect();
    told.dedup();
    let want: Vec<Bytes> = (0..20).map(|i| Bytes::from(value(i))).collect();
    assert_eq!(told, want, "the changes the watch told");
    for r in running.into_iter().rev() {
        stop(r).await;
    }
}

/// A change of a shard's voters that its leader left half made is finished by the group's
/// leader. openraft makes such a change in two entries, the joint configuration and then
/// the new one alone, and proposes the second from the call that asked for the change: a
/// leader that loses its term in between (the power cut test found one), or a caller that
/// stops waiting, leaves the group joint. Until it is finished the group reports no
/// placement, so the balancer plans against a stale one and a drain never ends. Made here by
/// dropping the call as soon as the joint configuration is in the leader's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_voters_left_half_made_is_finished_by_the_leader() {
    use std::future::Future;
    use std::task::Poll;
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start(&net, dir.path(), 1, None).await;
    let n2 = start(&net, dir.path(), 2, Some(1)).await;
    let n3 = start(&net, dir.path(), 3, Some(1)).await;
    replicated(&n1.node).await;
    let nodes = [&n1.node, &n2.node, &n3.node];
    let shard = nodes
        .iter()
        .flat_map(|n| n.shards().list())
        .find(|s| s.id == 0 && s.group.leading().is_some())
        .expect("a leader of shard 0");
    let status = shard.group.status();
    let dropped = *status
        .voters
        .iter()
        .find(|&&v| v != status.node)
        .expect("a voter other than the leader");
    let kept: std::collections::BTreeSet<u64> = status
        .voters
        .iter()
        .copied()
        .filter(|&v| v != dropped)
        .collect();

    // The change is polled once, which hands its first step (the joint configuration) to
    // the group's core and leaves it waiting for the answer; it is never polled again, so
    // its second entry is never proposed (a poll once the answer came would propose it,
    // and the metrics that show the log can trail that answer), and it is dropped once the
    // joint configuration is in the leader's log.
    let raft = shard.group.raft.clone();
    let before = shard.group.membership_log_id();
    let mut change = Box::pin(raft.change_membership(kept.clone(), true));
    let polled = std::future::poll_fn(|cx| Poll::Ready(change.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = polled {
        panic!("the change ended at its first poll: {result:?}");
    }
    tokio::time::timeout(PATIENCE, async {
        while shard.group.membership_log_id() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the joint configuration is appended within the patience");
    drop(change);
    assert!(
        shard.group.membership_joint(),
        "the leader's newest membership is the joint one"
    );
    let (_, joint_index) = shard
        .group
        .membership_log_id()
        .expect("a membership was appended");
    // It commits, and stands: the group is left half changed (unless the leader's
    // reconciler, every 500 ms, already finished it in the moment it was seen committed).
    tokio::time::timeout(PATIENCE, async {
        while shard.group.unfinished_change().as_ref() != Some(&kept)
            && shard
                .group
                .committed_membership()
                .is_none_or(|(index, _, _)| index <= joint_index)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the joint configuration commits, the change unfinished");

    // A leader finishes it: a later membership commits, not joint (the group reports a
    // placement again), and the balancer gives the group its third voter back.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let finished = nodes.iter().flat_map(|n| n.shards().list()).any(|s| {
                s.id == 0
                    && s.group.leading().is_some()
                    && s.group
                        .committed_membership()
                        .is_some_and(|(index, voters, _)| index > joint_index && voters.len() == 3)
            });
            if finished {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "shard 0 stayed joint or short of voters:{}",
            group_views(&[&*n1.node, &*n2.node, &*n3.node])
        )
    });
    replicated(&n1.node).await;
    for (i, node) in nodes.iter().enumerate() {
        let key = format!("after-{i}");
        until_done(node, set(&key, "v")).await;
        for reader in nodes {
            assert_eq!(
                value_of(until_done(reader, get(&key)).await).as_deref(),
                Some(&b"v"[..])
            );
        }
    }
    for running in [n3, n2, n1] {
        stop(running).await;
    }
}

/// Waits until every shard has its two replicas, spread evenly over `nodes`.
async fn two_replicas_each(nodes: &[Arc<Node>]) {
    let refs = || nodes.iter().map(|n| &**n).collect::<Vec<&Node>>();
    tokio::time::timeout(PATIENCE * 2, async {
        while !spread_evenly(&refs(), SHARDS as usize, 2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("replicas never settled: {:?}", holders(&refs())));
}

/// A node follows the change feed of a shard it holds no replica of only while something
/// asks for it: nothing while idle; a read token starts it (waited for, so the token names
/// the shard); a watch keeps it well past the linger; once nothing asks, it stops; and a
/// watch resumed from a token of the stopped feed starts it again where the token stands,
/// telling what was written meanwhile (not `compacted`), even when a read token started it
/// again from later in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_a_feed_only_while_a_watch_or_a_read_token_needs_it() {
    use cairn_server::watch::Selector;
    const LINGER: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let mut running = Vec::new();
    for (i, join) in [(1, None), (2, Some(1)), (3, Some(1))] {
        let disk = Disk {
            data_dir: dir.path().join(format!("node-{i}")),
            io: Arc::new(cairn_io::StdIo),
        };
        let mut options = options_on(&net, disk, i, join, 2, true, SHARDS);
        options.follow_linger = LINGER;
        running.push(open_on(i, options).await);
    }
    let nodes: Vec<Arc<Node>> = running.iter().map(|r| r.node.clone()).collect();
    two_replicas_each(&nodes).await;
    let followed = |nodes: &[Arc<Node>]| {
        nodes
            .iter()
            .map(|n| (n.id().to_string(), n.followed_shards()))
            .filter(|(_, shards)| !shards.is_empty())
            .collect::<Vec<_>>()
    };
    // Idle (every node lacks some shard): no feed followed anywhere.
    tokio::time::sleep(LINGER * 2).await;
    assert_eq!(
        followed(&nodes),
        vec![],
        "feeds followed with nothing asking"
    );

    let (x, key) = (0..100)
        .map(|i| format!("key-{i}"))
        .find_map(|key| {
            let x = nodes
                .iter()
                .find(|n| n.shards().for_key(key.as_bytes()).is_none())?;
            Some((x.clone(), key))
        })
        .expect("some node holds no replica of some key's shard");
    let writer = nodes.iter().find(|n| n.id() != x.id()).unwrap().clone();
    let shard = x.shards().shard_of_key(key.as_bytes());
    let key_bytes = Bytes::copy_from_slice(key.as_bytes());
    let watch = |from: String| {
        let (x, key) = (x.clone(), key_bytes.clone());
        async move {
            x.watch_ready(Selector::Key(key), Some(&from), Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("the watch from {from} failed: {e}"))
        }
    };
    let unfollowed = || {
        let x = x.clone();
        async move {
            tokio::time::timeout(PATIENCE, async {
                while !x.followed_shards().is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("the feed stops being followed once nothing asks for it");
        }
    };
    until_done(&writer, set(&key, "v0")).await;
    // A watch from a token from the future (a client's guess) starts the feed where the
    // holder stands, not past it: the read token below names where the shard is, and a
    // watch from it tells the next write.
    drop(watch(format!("{shard}:999999999")).await);
    let asked = std::time::Instant::now();
    let token = x.watch_token(Some(key.as_bytes())).await;
    let position = token
        .split(',')
        .find_map(|p| p.strip_prefix(&format!("{shard}:")))
        .unwrap_or_else(|| panic!("the read token {token:?} names no position in shard {shard}"));
    assert!(
        position.split('.').next().unwrap().parse::<u64>().unwrap() < 999_999_999,
        "the read token {token:?} stands where a watch's token from the future put the feed"
    );
    assert_eq!(x.followed_shards(), vec![shard]);
    // Unwatched, a read token's feed lingers (looked at only if this machine did not stall
    // past the linger meanwhile).
    tokio::time::sleep(LINGER / 2).await;
    let followed_then = x.followed_shards();
    if asked.elapsed() < LINGER {
        assert_eq!(
            followed_then,
            vec![shard],
            "the feed stopped within the linger"
        );
    }
    until_done(&writer, set(&key, "v1")).await;
    let first_token = token.clone();
    let mut watcher = watch(token).await;
    assert_eq!(next_values(&mut watcher, 1).await, vec![Bytes::from("v1")]);
    // Watched: followed well past the linger.
    tokio::time::sleep(LINGER * 3).await;
    assert_eq!(x.followed_shards(), vec![shard]);
    until_done(&writer, set(&key, "v2")).await;
    assert_eq!(next_values(&mut watcher, 1).await, vec![Bytes::from("v2")]);
    let after_v2 = watcher.token().to_string();
    drop(watcher);
    unfollowed().await;
    until_done(&writer, set(&key, "v3")).await;
    let mut resumed = watch(after_v2).await;
    assert_eq!(next_values(&mut resumed, 1).await, vec![Bytes::from("v3")]);
    drop(resumed);
    // Stopped again; a read token then starts the feed from now, after v4: a watch from the
    // first token starts it again from there.
    unfollowed().await;
    until_done(&writer, set(&key, "v4")).await;
    x.watch_token(Some(key.as_bytes())).await;
    assert_eq!(x.followed_shards(), vec![shard]);
    let mut resumed = watch(first_token.clone()).await;
    assert_eq!(
        next_values(&mut resumed, 4).await,
        ["v1", "v2", "v3", "v4"].map(Bytes::from).to_vec()
    );
    drop(resumed);

    // A whole-keyspace read token names every shard: the node follows those it lacks.
    let token = x.watch_token(None).await;
    let lacking: Vec<u32> = x
        .shards()
        .routed()
        .into_iter()
        .filter(|id| x.shards().get(*id).is_none())
        .collect();
    for id in x.shards().routed() {
        assert!(
            token.split(',').any(|p| p.starts_with(&format!("{id}:"))),
            "the whole-keyspace token {token:?} names no position in shard {id}"
        );
    }
    assert_eq!(x.followed_shards(), lacking);
    // No other node was asked for anything.
    let others: Vec<Arc<Node>> = nodes.iter().filter(|n| n.id() != x.id()).cloned().collect();
    assert_eq!(followed(&others), vec![]);
    // A watch that asks to resume from a token while the feed is starting from now (its
    // first message not come: x's links are silent) starts it again from the token, and
    // tells what came after it rather than `compacted`.
    unfollowed().await;
    let x_addr = grpc_addr(nodes.iter().position(|n| n.id() == x.id()).unwrap() as u8 + 1);
    net.silence(x_addr);
    let starting = tokio::spawn({
        let (x, key) = (x.clone(), key.clone());
        async move { x.watch_token(Some(key.as_bytes())).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(x.followed_shards(), vec![shard]);
    let resuming = tokio::spawn(watch(first_token));
    tokio::time::sleep(Duration::from_millis(500)).await;
    net.heal();
    let mut resumed = resuming.await.unwrap();
    assert_eq!(
        next_values(&mut resumed, 4).await,
        ["v1", "v2", "v3", "v4"].map(Bytes::from).to_vec()
    );
    drop(resumed);
    let _ = starting.await;
    // A node cut off from every holder of a shard it lacks cannot follow its feed: its read
    // token names the shard from the start (not at all, before: a watch from it could never
    // start), and a watch from it, once the node is back, tells the shard's history or is
    // told to read again.
    let (i, cut) = nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.id() != x.id())
        .unwrap();
    let lacked = (0..100)
        .map(|i| format!("cut-{i}"))
        .find(|key| cut.shards().for_key(key.as_bytes()).is_none())
        .unwrap();
    let lacked_shard = cut.shards().shard_of_key(lacked.as_bytes());
    net.isolate(grpc_addr(i as u8 + 1));
    let token = cut.watch_token(Some(lacked.as_bytes())).await;
    assert_eq!(token, format!("{lacked_shard}:0"));
    let whole = cut.watch_token(None).await;
    assert!(
        whole.split(',').any(|p| p == format!("{lacked_shard}:0")),
        "{whole:?} names shard {lacked_shard} from anywhere but its start"
    );
    net.heal();
    let from_start = tokio::time::timeout(PATIENCE, async {
        loop {
            match cut
                .watch_ready(
                    Selector::Key(Bytes::copy_from_slice(lacked.as_bytes())),
                    Some(&token),
                    Duration::from_secs(60),
                )
                .await
            {
                // Its feed starting, or its replicas not in touch again yet.
                Err(
                    cairn_server::watch::WatchError::NotHere(_)
                    | cairn_server::watch::WatchError::OutOfTouch(_),
                ) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the watch from the start of the shard never started");
    assert!(
        matches!(
            from_start,
            Ok(()) | Err(cairn_server::watch::WatchError::Compacted(_))
        ),
        "a watch from the start of the shard: {from_start:?}"
    );
    drop((x, writer, nodes));
    for r in running.into_iter().rev() {
        stop(r).await;
    }
}

/// A RESP connection to a node served in this test, read as bytes.
struct RespConn(tokio::net::TcpStream, Vec<u8>);

impl RespConn {
    async fn connect(addr: SocketAddr) -> RespConn {
        RespConn(
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            Vec::new(),
        )
    }

    /// Sends one command; waits until what came since the last wait holds `expected`.
    async fn call(&mut self, args: &[&str], expected: &str) {
        self.send(args).await;
        assert!(
            self.expect(expected, PATIENCE).await,
            "no {expected:?} after {args:?}"
        );
    }

    /// Sends one command.
    async fn send(&mut self, args: &[&str]) {
        use tokio::io::AsyncWriteExt;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.0.write_all(request.as_bytes()).await.unwrap();
    }

    /// Sends one command whose answer waits while the node's links are silent: none within
    /// a moment, then the answer once they are back.
    async fn call_held_back(&mut self, net: &MemoryNetwork, args: &[&str], expected: &str) {
        self.send(args).await;
        assert!(
            !self.expect(expected, Duration::from_millis(300)).await,
            "{args:?} answered before the node could follow the feeds it lacks"
        );
        net.heal();
        assert!(
            self.expect(expected, PATIENCE).await,
            "no {expected:?} after {args:?}"
        );
    }

    /// Waits up to `within` until what came since the last wait holds `expected`.
    async fn expect(&mut self, expected: &str, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(within, async {
            loop {
                if let Some(at) = self
                    .1
                    .windows(expected.len())
                    .position(|w| w == expected.as_bytes())
                {
                    self.1.drain(..at + expected.len());
                    return;
                }
                let mut buf = [0u8; 4096];
                let n = self.0.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection closed");
                self.1.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .is_ok()
    }
}

/// Keyspace notifications, and client tracking, turned on at a node that follows no feed
/// (each lacks a shard: R = 2 of 3 nodes) tell the first change after their answer: the
/// answer waits until the node follows the feeds it lacks and its whole-keyspace watch
/// stands there (held back while the node's links are silent). Tracking turned on inside
/// MULTI is not waited for: its clients are told to drop their caches once the watch stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_tracking_turned_on_where_no_feed_is_followed_tell_the_next_change() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let mut running = Vec::new();
    for (i, join) in [(1, None), (2, Some(1)), (3, Some(1))] {
        running.push(start_with(&net, dir.path(), i, join, 2, true).await);
    }
    let nodes: Vec<Arc<Node>> = running.iter().map(|r| r.node.clone()).collect();
    two_replicas_each(&nodes).await;
    // For each node, a key of the shard it lacks.
    let lacked = |node: &Arc<Node>, tag: &str| {
        (0..100)
            .map(|i| format!("{tag}-{i}"))
            .find(|key| node.shards().for_key(key.as_bytes()).is_none())
            .expect("every node lacks a shard")
    };
    let (quit, stopped) = watch::channel(false);
    let mut servers = Vec::new();
    let serve = |node: &Arc<Node>| {
        let node = node.clone();
        let stopped = stopped.clone();
        async move {
            let listener = cairn_server::resp::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(cairn_server::resp::serve_listener(
                listener, node, 64, false, stopped,
            ));
            (addr, task)
        }
    };
    let (x, y, writer) = (&nodes[0], &nodes[1], &nodes[2]);
    let (x_addr, task) = serve(x).await;
    servers.push(task);
    let (y_addr, task) = serve(y).await;
    servers.push(task);
    let (z_addr, task) = serve(writer).await;
    servers.push(task);
    assert!(nodes.iter().all(|n| n.followed_shards().is_empty()));

    // Keyspace notifications on x.
    let key = lacked(x, "notified");
    let mut subscriber = RespConn::connect(x_addr).await;
    let channel = format!("__keyspace@0__:{key}");
    subscriber.call(&["SUBSCRIBE", &channel], "subscribe").await;
    let mut admin = RespConn::connect(x_addr).await;
    net.silence(grpc_addr(1));
    admin
        .call_held_back(
            &net,
            &["CONFIG", "SET", "notify-keyspace-events", "KA"],
            "+OK",
        )
        .await;
    until_done(writer, set(&key, "v1")).await;
    assert!(
        subscriber.expect("$3\r\nset\r\n", PATIENCE).await,
        "no notification of the first SET after CONFIG SET answered"
    );

    // Client tracking (BCAST, RESP3: invalidations on the same connection) on y.
    let key = lacked(y, "tracked");
    let mut tracker = RespConn::connect(y_addr).await;
    tracker.call(&["HELLO", "3"], "proto").await;
    net.silence(grpc_addr(2));
    tracker
        .call_held_back(&net, &["CLIENT", "TRACKING", "on", "BCAST"], "+OK")
        .await;
    until_done(writer, set(&key, "v1")).await;
    assert!(
        tracker
            .expect(
                &format!("invalidate\r\n*1\r\n${}\r\n{key}", key.len()),
                PATIENCE
            )
            .await,
        "no invalidation of the first SET after CLIENT TRACKING answered"
    );

    // Inside MULTI on the third node, tracking is turned on without waiting: once its watch
    // stands, its clients are told to drop everything (a change in between went untold).
    let mut in_multi = RespConn::connect(z_addr).await;
    in_multi.call(&["HELLO", "3"], "proto").await;
    net.silence(grpc_addr(3));
    in_multi.call(&["MULTI"], "+OK").await;
    in_multi
        .call(&["CLIENT", "TRACKING", "on", "BCAST"], "QUEUED")
        .await;
    in_multi.call(&["EXEC"], "+OK").await;
    net.heal();
    assert!(
        in_multi.expect("invalidate\r\n_\r\n", PATIENCE).await,
        "no flush once the watch of a tracking turned on inside MULTI stood"
    );

    quit.send_replace(true);
    drop((subscriber, admin, tracker));
    for server in servers {
        let _ = server.await;
    }
    drop(nodes);
    for r in running.into_iter().rev() {
        stop(r).await;
    }
}

/// A cluster created with few shards grows past 16 nodes: seventeen nodes
/// (`CAIRN_GROW_NODES`) join a cluster of two shards with data on three voters each, the
/// shards split until there are enough for every node to hold a replica, and the cluster
/// settles balanced: on every node, replicas and leaderships within one of the mean. Every
/// key is still read through every node, and a watch through a node that holds none of a
/// key's shard tells its changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_few_shards_grows_past_sixteen_nodes() {
    let count: u8 = std::env::var("CAIRN_GROW_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17);
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let disk = |i: u8| Disk {
        data_dir: dir.path().join(format!("node-{i}")),
        io: Arc::new(cairn_io::StdIo),
    };
    let mut running = vec![start_on(&net, disk(1), 1, None, 3, true, 2).await];
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        until_done(&running[0].node, set(key, "one")).await;
    }
    for i in 2..=count {
        running.push(start_on(&net, disk(i), i, Some(1), 3, true, 2).await);
    }
    let nodes: Vec<Arc<Node>> = running.iter().map(|r| r.node.clone()).collect();
    // Enough shards for a replica on every node: each split halves the widest shard.
    let wanted = usize::from(count).div_ceil(3);
    let width = |s: &cairn_server::reply::ShardInfo| {
        s.slots
            .iter()
            .map(|&(a, b)| u32::from(b - a) + 1)
            .sum::<u32>()
    };
    tokio::time::timeout(PATIENCE * 4, async {
        loop {
            let status = nodes[0].cluster_status();
            let before = status.shards.len();
            if before >= wanted {
                return;
            }
            let widest = status.shards.iter().max_by_key(|s| width(s)).unwrap().id;
            match nodes[0].split_shard(widest, None).await {
                Ok(_) => {
                    while nodes[0].cluster_status().shards.len() == before {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never {wanted} shards: {:?}", nodes[0].cluster_status()));
    let shards = nodes[0].cluster_status().shards.len();
    let within_one_of_the_mean = |counts: &[usize]| {
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        counts.iter().all(|&c| (c as f64 - mean).abs() <= 1.0)
    };
    let balanced = || {
        let status = nodes[0].cluster_status();
        let ids: Vec<&str> = nodes.iter().map(|n| n.id()).collect();
        let per_node = |of: &dyn Fn(&cairn_server::reply::ShardInfo) -> Vec<String>| {
            ids.iter()
                .map(|id| {
                    status
                        .shards
                        .iter()
                        .filter(|s| of(s).iter().any(|r| r == id))
                        .count()
                })
                .collect::<Vec<usize>>()
        };
        let replicas = per_node(&|s| s.replicas.clone());
        let leaders = per_node(&|s| s.leader.clone().into_iter().collect());
        let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
        status.shards.len() == shards
            && status.shards.iter().all(|s| s.learners.is_empty())
            && spread_evenly(&refs, shards, 3)
            && leaders.iter().sum::<usize>() == shards
            && within_one_of_the_mean(&replicas)
            && within_one_of_the_mean(&leaders)
    };
    tokio::time::timeout(PATIENCE * 4, async {
        while !balanced() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
        panic!(
            "never balanced: {:?}\n{}",
            holders(&refs),
            group_views(&refs)
        )
    });
    for node in &nodes {
        assert!(
            !node.shards().list().is_empty(),
            "node {} holds no replica",
            node.id()
        );
    }
    // Every key through every node.
    for node in &nodes {
        for key in &keys {
            assert_eq!(
                value_of(until_done(node, get(key)).await).as_deref(),
                Some(&b"one"[..]),
                "{key} through node {}",
                node.id()
            );
        }
    }
    followed_watch(&nodes, &keys).await;
    drop(nodes);
    for r in running.into_iter().rev() {
        stop(r).await;
    }
}
