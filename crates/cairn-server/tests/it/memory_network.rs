//! A three-node cluster in one process on the in-memory peer network
//! (`cairn_raft::transport::memory`): joins, Raft traffic and forwarded commands all cross
//! the network seam, never a socket (the nodes' gRPC addresses are on 10.99.0.0/24, which no
//! interface here has), and cutting a node's links partitions it as iptables would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_raft::transport::memory::MemoryNetwork;
use cairn_server::config::SyncMode;
use cairn_server::{Command, CommandError, Condition, Expiry, Node, NodeOptions, Reply};
use tokio::sync::watch;

/// Longest any step may take on a loaded two-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn grpc_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 99, 0, i], 7070))
}

/// A node running in this process: its front end on the network and its background tasks.
struct Running {
    node: Arc<Node>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(net: &MemoryNetwork, dir: &std::path::Path, i: u8, join: Option<u8>) -> Running {
    let options = NodeOptions {
        data_dir: dir.join(format!("node-{i}")),
        shards: 2,
        value_bytes_max: 1 << 20,
        sync: SyncMode::Always,
        grpc_addr: grpc_addr(i),
        http_addr: SocketAddr::from(([10, 99, 0, i], 7080)),
        resp_addr: SocketAddr::from(([10, 99, 0, i], 7379)),
        io: Arc::new(cairn_io::StdIo),
        tuning: cairn_server::StorageTuning::default(),
        join: join.map(|j| grpc_addr(j).to_string()),
        replicas: 3,
        down_after: Duration::from_secs(5),
        clock: cairn_storage::clock::system(),
        network: Arc::new(net.node(grpc_addr(i))),
    };
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

async fn stop(running: Running) {
    let _ = running.stop.send(true);
    for task in running.tasks {
        let _ = task.await;
    }
    running.node.shutdown().await.expect("clean shutdown");
}

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        expiry: Expiry::Never,
        condition: Condition::Always,
        return_old: false,
    }
}

fn get(key: &str) -> Command {
    Command::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

fn value_of(reply: Reply) -> Option<Bytes> {
    match reply {
        Reply::Entry(e) => e.map(|e| e.value),
        other => panic!("a GET answered {other:?}"),
    }
}

/// Runs `command` on `node` until it succeeds, as a client retries `TRYAGAIN` (and, for the
/// idempotent SETs here, an unknown outcome).
async fn until_done(node: &Node, command: Command) -> Reply {
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

/// Waits until `node` sees every shard with three voters and a leader.
async fn replicated(node: &Node) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let status = node.cluster_status();
            if status.nodes.len() == 3
                && status
                    .shards
                    .iter()
                    .all(|s| s.replicas.len() == 3 && s.learners.is_empty() && s.leader.is_some())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not replicated: {:?}", node.cluster_status()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_the_in_memory_network_replicates_forwards_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new();
    let n1 = start(&net, dir.path(), 1, None).await;
    let n2 = start(&net, dir.path(), 2, Some(1)).await;
    let n3 = start(&net, dir.path(), 3, Some(1)).await;
    replicated(&n1.node).await;

    // Writes through one node are read through every node (forwarded to each shard's leader).
    let keys: Vec<String> = (0..8).map(|i| format!("key-{i}")).collect();
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

    // Node 3 cut off: the majority goes on writing; node 3 never answers a read with what
    // it held before (it cannot reach a leader, and a lease it held has run out).
    net.isolate(grpc_addr(3));
    for key in &keys {
        until_done(&n1.node, set(key, "two")).await;
    }
    // (Concurrently: each waits out the read deadline.)
    let reads = keys.iter().map(|key| {
        let node = n3.node.clone();
        async move { (key, node.execute(get(key)).await) }
    });
    for (key, read) in futures::future::join_all(reads).await {
        match read {
            Err(CommandError::TryAgain(_)) => {}
            other => panic!("an isolated node answered a linearizable read of {key}: {other:?}"),
        }
    }

    // Healed, it serves the new values.
    net.heal();
    for key in &keys {
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
