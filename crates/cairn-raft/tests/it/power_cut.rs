//! Raft groups' logs on the simulated disk, the power cut inside a random call: every vote
//! `save_vote` returned for, and every entry whose `IOFlushed` fired, survives, for several
//! groups sharing one WAL (and one fdatasync). Also: the log store's in-memory cache of recent
//! entries never answers differently from the log.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cairn_raft::types::{Entry, LogId};
use cairn_raft::{LogStore, Request, TypeConfig, WriteOp};
use cairn_storage::io::sim::{Action, Fault, Op, PowerCut, SimIo};
use cairn_wal::{Wal, WalOptions};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUPS: u64 = 3;

/// What a group was told is durable.
#[derive(Debug, Clone, Default)]
struct Acked {
    entries: Vec<Entry>,
    vote: Option<openraft::alias::VoteOf<TypeConfig>>,
}

fn open(disk: &SimIo) -> Arc<Wal> {
    Arc::new(
        Wal::open(
            Path::new("/sim/node/wal"),
            WalOptions {
                io: Arc::new(disk.clone()),
                segment_bytes_max: 8192,
                fsync_batches: true,
                on_fsync: None,
            },
        )
        .expect("open WAL"),
    )
}

fn entry(term: u64, index: u64, group: u64) -> Entry {
    Entry {
        log_id: LogId::new(LeaderId { term, node_id: 1 }, index),
        payload: EntryPayload::Normal(Request {
            ops: vec![WriteOp::Put {
                key: Bytes::from(format!("g{group}-k{index}")),
                value: Bytes::from(format!("v{term}-{index}")),
                expires_at_ms: None,
            }],
        }),
    }
}

/// Drives one group until a write fails; returns what it was told is durable.
async fn drive(mut log: LogStore, mut acked: Acked, seed: u64) -> Acked {
    let mut rng = StdRng::seed_from_u64(seed);
    let group = log.group();
    loop {
        let term = acked.vote.as_ref().map_or(1, |v| v.leader_id.term);
        if rng.random_bool(0.2) {
            let vote = openraft::impls::Vote {
                leader_id: LeaderId {
                    term: term + 1,
                    node_id: 1,
                },
                committed: rng.random_bool(0.5),
            };
            match log.save_vote(&vote).await {
                Ok(()) => acked.vote = Some(vote),
                Err(_) => return acked,
            }
        } else {
            let next = acked.entries.last().map_or(1, |e| e.log_id.index + 1);
            let batch: Vec<Entry> = (next..next + rng.random_range(1..4))
                .map(|i| entry(term, i, group))
                .collect();
            let (tx, rx) = TypeConfig::oneshot();
            if log
                .append(batch.clone(), IOFlushed::signal(tx))
                .await
                .is_err()
            {
                return acked;
            }
            match rx.await {
                Ok(Ok(())) => acked.entries.extend(batch),
                _ => return acked,
            }
        }
    }
}

async fn verify(wal: &Arc<Wal>, acked: &[Acked], context: &str) {
    for (group, acked) in acked.iter().enumerate() {
        let mut log = LogStore::new(wal.clone(), group as u64);
        let vote = log.read_vote().await.unwrap();
        match (&acked.vote, &vote) {
            (None, _) => {}
            // The acknowledged vote itself (its node and committed flag too), or a later one.
            (Some(want), Some(got)) => assert!(
                got == want || got.leader_id.term > want.leader_id.term,
                "{context}: group {group} vote {got:?} is older than the durable {want:?}"
            ),
            (Some(want), None) => panic!("{context}: group {group} lost its vote {want:?}"),
        }
        let entries = log.try_get_log_entries(1..).await.unwrap();
        assert!(
            entries.len() >= acked.entries.len(),
            "{context}: group {group} has {} entries, {} were durable",
            entries.len(),
            acked.entries.len()
        );
        assert_eq!(
            &entries[..acked.entries.len()],
            &acked.entries[..],
            "{context}: group {group}"
        );
    }
}

#[test]
fn durable_votes_and_entries_survive_power_cuts() {
    let rounds: u64 = std::env::var("CAIRN_RAFT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = rand::random();
    eprintln!("raft log power cut seed {seed}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut disk = SimIo::new(seed);
    let mut acked: Vec<Acked> = vec![Acked::default(); GROUPS as usize];
    let mut total = 0;
    for round in 0..rounds {
        let context = format!("seed {seed} round {round}");
        let wal = open(&disk);
        runtime.block_on(verify(&wal, &acked, &context));
        disk.inject(
            Fault::new(Op::MUTATING, Action::PowerCut(PowerCut::Random))
                .after(rng.random_range(0..300)),
        );
        acked = runtime.block_on(async {
            let tasks: Vec<_> = acked
                .iter()
                .enumerate()
                .map(|(g, a)| {
                    let log = LogStore::new(wal.clone(), g as u64);
                    tokio::spawn(drive(log, a.clone(), seed ^ (round << 8) ^ g as u64))
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        total += acked.iter().map(|a| a.entries.len()).sum::<usize>();
        drop(wal);
        disk = disk.after_cut().expect("the power is off");
    }
    let wal = open(&disk);
    runtime.block_on(verify(&wal, &acked, &format!("seed {seed} final")));
    assert!(total > 0, "no entry was ever durable");
}

/// The log store's in-memory cache of recent entries changes with the log: whatever a store
/// answers equals what a fresh store over the same WAL (which can only read the WAL) answers,
/// after appends, conflicting appends, truncations and purges in random order.
#[test]
fn recent_entries_in_memory_always_match_the_log() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let disk = SimIo::new(11);
            let wal = open(&disk);
            let mut log = LogStore::new(wal.clone(), 1);
            let mut rng = StdRng::seed_from_u64(11);
            let (mut first, mut last, mut term) = (1u64, 0u64, 1u64);
            for _ in 0..400 {
                match rng.random_range(0..10) {
                    0..=5 => {
                        // Append, sometimes over a suffix (a conflict), in a new term.
                        let from = if last >= first && rng.random_bool(0.3) {
                            term += 1;
                            rng.random_range(first..=last)
                        } else {
                            last + 1
                        };
                        let count = rng.random_range(1..4);
                        let entries: Vec<Entry> =
                            (from..from + count).map(|i| entry(term, i, 1)).collect();
                        log.append(entries, IOFlushed::noop()).await.unwrap();
                        last = from + count - 1;
                    }
                    6..=7 if last >= first => {
                        let keep = rng.random_range(first - 1..=last);
                        let at = (keep >= first)
                            .then(|| LogId::new(LeaderId { term, node_id: 1 }, keep));
                        // truncate_after takes the log id of the last entry kept.
                        let at = match at {
                            Some(_) => {
                                Some(log.try_get_log_entries(keep..=keep).await.unwrap()[0].log_id)
                            }
                            None => None,
                        };
                        log.truncate_after(at).await.unwrap();
                        last = keep;
                    }
                    8 if last > first => {
                        let upto = rng.random_range(first..last);
                        let id = log.try_get_log_entries(upto..=upto).await.unwrap()[0].log_id;
                        log.purge(id).await.unwrap();
                        first = upto + 1;
                    }
                    _ => {}
                }
                wal.flush().unwrap();
                let mut fresh = LogStore::new(wal.clone(), 1);
                // Ranges may reach past either end of the log, where removed entries were.
                let lo = rng.random_range(first.saturating_sub(3).max(1)..=last + 1);
                let hi = rng.random_range(lo..=last + 4);
                let cached = log
                    .try_get_log_entries(lo..hi)
                    .await
                    .map_err(|e| e.to_string());
                let read = fresh
                    .try_get_log_entries(lo..hi)
                    .await
                    .map_err(|e| e.to_string());
                assert_eq!(cached, read, "entries {lo}..{hi} (log {first}..={last})");
                if lo >= first {
                    assert_eq!(cached.unwrap().len() as u64, hi.min(last + 1) - lo);
                }
            }
        });
}
