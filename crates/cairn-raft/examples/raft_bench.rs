//! Micro benchmark: durable writes through single-voter openraft groups on the real WAL and
//! engines, the way a one-node Cairn writes: every group's log in one WAL (shared fdatasyncs),
//! a proposer per group that batches queued writes into one entry and keeps several entries
//! in flight, and clients that each wait for their write.
//!
//! `cargo run --release -p cairn-raft --example raft_bench -- DIR [GROUPS] [CLIENTS] [SECONDS]
//! [BATCH_MAX] [INFLIGHT]`; DIR must be on the disk to measure (not tmpfs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_raft::{GroupRaft, LogStore, NodeAddr, Peers, Request, StateMachine, WriteOp};
use cairn_storage::io::StdIo;
use cairn_storage::{Options, SyncPolicy};
use cairn_wal::{Wal, WalOptions};
use openraft::Config;
use openraft::impls::ProgressResponder;
use tokio::sync::{Semaphore, mpsc, oneshot};

type Reply = oneshot::Sender<u64>;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Takes queued writes into entries of at most `batch_max` ops, `inflight` entries at a time.
async fn proposer(
    raft: GroupRaft,
    mut rx: mpsc::Receiver<(WriteOp, Reply)>,
    batch_max: usize,
    inflight: usize,
) {
    let slots = Arc::new(Semaphore::new(inflight));
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first.0];
        let mut replies = vec![first.1];
        while ops.len() < batch_max {
            match rx.try_recv() {
                Ok((op, reply)) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (responder, done) = ProgressResponder::complete_only();
        raft.write(Request { ops })
            .responder(responder)
            .await
            .expect("propose");
        tokio::spawn(async move {
            let result = done.await.expect("responder dropped");
            let index = result.expect("write").data.index;
            for reply in replies {
                let _ = reply.send(index);
            }
            drop(permit);
        });
    }
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let groups = arg(2, 16);
    let clients = arg(3, 50);
    let seconds = arg(4, 5);
    let batch_max = arg(5, 256) as usize;
    let inflight = arg(6, 4) as usize;
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let io: Arc<dyn cairn_storage::io::Io> = Arc::new(StdIo);
        let wal = Arc::new(
            Wal::open(
                dir.join("wal"),
                WalOptions {
                    io: io.clone(),
                    ..WalOptions::default()
                },
            )
            .unwrap(),
        );
        let peers = Arc::new(Peers::new());
        let config = Arc::new(
            Config {
                heartbeat_interval: 100,
                election_timeout_min: 300,
                election_timeout_max: 600,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        let mut senders = Vec::new();
        for g in 1..=groups {
            let sm = StateMachine::open(
                io.clone(),
                &dir.join(format!("shard-{g}")),
                Options {
                    sync: SyncPolicy::Never,
                    ..Options::default()
                },
            )
            .unwrap();
            let raft = GroupRaft::new(1, config.clone(), peers.group(g), LogStore::new(wal.clone(), g), sm)
                .await
                .unwrap();
            raft.initialize(BTreeMap::from([(1, NodeAddr { grpc: "127.0.0.1:1".into() })]))
                .await
                .unwrap();
            raft.wait(Some(Duration::from_secs(10)))
                .state(openraft::ServerState::Leader, "leader")
                .await
                .unwrap();
            let (tx, rx) = mpsc::channel(8192);
            tokio::spawn(proposer(raft, rx, batch_max, inflight));
            senders.push(tx);
        }
        let before = wal.stats();
        let started = Instant::now();
        let budget = Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let senders = senders.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                let value = Bytes::from(vec![b'v'; 256]);
                while started.elapsed() < budget {
                    n += 1;
                    let key = (c * 1_000_003 + n * 7919) % 100_000;
                    let g = (key % senders.len() as u64) as usize;
                    let op = WriteOp::Put {
                        key: Bytes::from(format!("key:{key:012}")),
                        value: value.clone(),
                        expires_at_ms: None,
                    };
                    let (tx, rx) = oneshot::channel();
                    let t0 = Instant::now();
                    senders[g].send((op, tx)).await.unwrap();
                    rx.await.unwrap();
                    latencies.push(t0.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = wal.stats();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        let fsyncs = after.fsyncs - before.fsyncs;
        println!(
            "groups {groups} clients {clients} batch {batch_max} inflight {inflight}: {:.0} writes/s, p50 {:?}, p99 {:?}, {:.1} entries/fsync, {:.1} groups/fsync",
            all.len() as f64 / elapsed,
            pct(0.5),
            pct(0.99),
            (after.entries - before.entries) as f64 / fsyncs.max(1) as f64,
            (after.group_syncs - before.group_syncs) as f64 / fsyncs.max(1) as f64,
        );
    });
}
