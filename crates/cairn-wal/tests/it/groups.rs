//! The log as many groups' Raft logs: typed ops (entries, votes, committed markers, truncates,
//! purges), reads through the per-group index, submissions that are readable at once and
//! durable later, group commit across groups, and state that outlives the segments that wrote
//! it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_wal::io::Io;
use cairn_wal::io::sim::{Action, Fault, Op as IoOp, PowerCut, SimIo};
use cairn_wal::{Op, Record, Wal, WalError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{DIR, indexes, open_sim, record, segments};

fn entry(group: u64, index: u64) -> Op {
    Op::Entry(record(group, index))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn typed_ops_survive_reopen() {
    let io = SimIo::new(1);
    let (wal, _) = open_sim(&io, 1 << 20);
    let mut ops: Vec<Op> = (1..=10).map(|i| entry(1, i)).collect();
    ops.extend((5..=8).map(|i| entry(2, i)));
    ops.push(Op::Vote {
        group: 1,
        payload: b("vote 1"),
    });
    ops.push(Op::Committed {
        group: 2,
        payload: b("committed 7"),
    });
    wal.write(ops).unwrap();
    // A conflicting suffix of group 1 is replaced; group 2 is purged through 6.
    wal.write(vec![
        Op::TruncateFrom { group: 1, index: 8 },
        entry(1, 8),
        Op::Purge {
            group: 2,
            index: 6,
            payload: b("purged at 6"),
        },
        Op::Vote {
            group: 1,
            payload: b("vote 2"),
        },
    ])
    .unwrap();
    let check = |wal: &Wal| {
        assert_eq!(indexes(wal, 1), (1..=8).collect::<Vec<_>>());
        assert_eq!(
            wal.entries(1, 8..=8).unwrap(),
            vec![(8, record(1, 8).payload)]
        );
        assert_eq!(indexes(wal, 2), vec![7, 8]);
        let g1 = wal.group(1).unwrap();
        assert_eq!(g1.vote, Some(b("vote 2")));
        assert_eq!((g1.first_index, g1.last_index), (Some(1), Some(8)));
        let g2 = wal.group(2).unwrap();
        assert_eq!(g2.committed, Some(b("committed 7")));
        assert_eq!(g2.purged, Some((6, b("purged at 6"))));
        assert_eq!(wal.entries(2, ..7).unwrap(), Vec::new());
        assert_eq!(wal.group(3), None);
    };
    check(&wal);
    drop(wal);
    let (wal, _) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 1 << 20);
    check(&wal);
}

#[test]
fn a_lazy_committed_marker_costs_no_fsync_and_rides_with_the_next_write() {
    let io = SimIo::new(11);
    let (wal, _) = open_sim(&io, 1 << 20);
    wal.write(vec![entry(1, 1)]).unwrap();
    let fsyncs = wal.stats().fsyncs;
    let committed = |n: &str| Op::Committed {
        group: 1,
        payload: b(n),
    };
    wal.submit_lazy(vec![committed("committed 1")]).unwrap();
    // Readable at once, but nobody asked for durability: no fdatasync, and a power cut now
    // loses it (harmless for a committed marker).
    assert_eq!(wal.group(1).unwrap().committed, Some(b("committed 1")));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(wal.stats().fsyncs, fsyncs, "a lazy record started a flush");
    let (cut, _) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 1 << 20);
    assert_eq!(cut.group(1).unwrap().committed, None);
    drop(cut);
    // The next write, of any group, carries it, in order, under one fdatasync.
    wal.write(vec![entry(2, 1)]).unwrap();
    assert_eq!(wal.stats().fsyncs, fsyncs + 1);
    let (cut, _) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 1 << 20);
    assert_eq!(cut.group(1).unwrap().committed, Some(b("committed 1")));
    assert_eq!(cut.group(2).unwrap().last_index, Some(1));
}

#[test]
fn holes_and_entries_below_the_purge_point_are_refused_whole() {
    let io = SimIo::new(2);
    let (wal, _) = open_sim(&io, 1 << 20);
    wal.write((1..=3).map(|i| entry(1, i)).collect()).unwrap();
    let refused = wal.write(vec![entry(1, 4), entry(1, 6)]);
    assert!(
        matches!(refused, Err(WalError::InvalidOp(_))),
        "{refused:?}"
    );
    assert_eq!(
        indexes(&wal, 1),
        vec![1, 2, 3],
        "nothing of a refused submission applies"
    );
    wal.write(vec![Op::Purge {
        group: 1,
        index: 2,
        payload: Bytes::new(),
    }])
    .unwrap();
    assert!(matches!(
        wal.write(vec![entry(1, 2)]),
        Err(WalError::InvalidOp(_))
    ));
    // After a purge beyond the last entry (a snapshot installed), the next entry follows it.
    wal.write(vec![Op::Purge {
        group: 1,
        index: 10,
        payload: Bytes::new(),
    }])
    .unwrap();
    assert_eq!(indexes(&wal, 1), Vec::<u64>::new());
    assert!(wal.write(vec![entry(1, 12)]).is_err());
    wal.write(vec![entry(1, 11)]).unwrap();
    assert_eq!(indexes(&wal, 1), vec![11]);
}

#[test]
fn entries_are_readable_before_they_are_durable() {
    let io = SimIo::new(3);
    io.set_sync_delay(Duration::from_millis(200));
    let (wal, _) = open_sim(&io, 1 << 20);
    let durable = Arc::new(AtomicU64::new(0));
    let flag = durable.clone();
    wal.submit(
        vec![entry(4, 1), entry(4, 2)],
        Some(Box::new(move |result| {
            result.unwrap();
            flag.store(1, Ordering::SeqCst);
        })),
    )
    .unwrap();
    assert_eq!(indexes(&wal, 4), vec![1, 2], "readable when submit returns");
    assert_eq!(durable.load(Ordering::SeqCst), 0, "not yet durable");
    wal.flush().unwrap();
    assert_eq!(durable.load(Ordering::SeqCst), 1);
    assert_eq!(indexes(&wal, 4), vec![1, 2], "and after it lands");
}

/// A vote and a purge point written in the first segment outlive it: every new segment starts
/// by restating them, so the first can be deleted once its entries are purged.
#[test]
fn votes_and_purge_points_outlive_the_segments_that_wrote_them() {
    let io = SimIo::new(4);
    let (wal, _) = open_sim(&io, 4096);
    wal.write(vec![
        Op::Vote {
            group: 1,
            payload: b("early vote"),
        },
        Op::Committed {
            group: 2,
            payload: b("early commit"),
        },
        entry(2, 1),
    ])
    .unwrap();
    let first = segments(&io)[0].clone();
    for i in 1..=200 {
        wal.append(&[record(1, i)]).unwrap();
    }
    wal.write(vec![
        Op::Purge {
            group: 1,
            index: 190,
            payload: b("through 190"),
        },
        Op::TruncateFrom { group: 2, index: 1 },
    ])
    .unwrap();
    let before = wal.segment_count();
    let stats = wal.purge_segments().unwrap();
    assert!(
        stats.segments_removed > 0,
        "{before} segments, none removed"
    );
    assert!(!segments(&io).contains(&first), "the first segment is gone");
    drop(wal);
    let (wal, replay) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 4096);
    assert_eq!(wal.group(1).unwrap().vote, Some(b("early vote")));
    assert_eq!(wal.group(2).unwrap().committed, Some(b("early commit")));
    assert_eq!(wal.group(1).unwrap().purged, Some((190, b("through 190"))));
    assert_eq!(indexes(&wal, 1), (191..=200).collect::<Vec<_>>());
    assert_eq!(indexes(&wal, 2), Vec::<u64>::new());
    assert_eq!(replay.len(), 10);
}

#[test]
fn one_fsync_serves_many_groups() {
    const GROUPS: u64 = 8;
    const APPENDS: u64 = 60;
    let io = SimIo::new(5);
    io.set_sync_delay(Duration::from_millis(1));
    // The fsync observer hears of every fdatasync with what it covered.
    let heard = Arc::new(parking_lot::Mutex::new(Vec::<cairn_wal::FsyncReport>::new()));
    let options = cairn_wal::WalOptions {
        on_fsync: Some({
            let heard = heard.clone();
            Arc::new(move |report| heard.lock().push(report))
        }),
        ..crate::support::sim_options(&io, 1 << 22)
    };
    let wal = Arc::new(Wal::open(crate::support::DIR, options).unwrap());
    std::thread::scope(|s| {
        for g in 0..GROUPS {
            let wal = wal.clone();
            s.spawn(move || {
                for i in 1..=APPENDS {
                    wal.write(vec![entry(g, i)]).unwrap();
                }
            });
        }
    });
    let stats = wal.stats();
    assert_eq!(stats.entries, GROUPS * APPENDS);
    assert!(stats.fsyncs > 0);
    let groups_per_fsync = stats.group_syncs as f64 / stats.fsyncs as f64;
    assert!(
        groups_per_fsync > 2.0,
        "{groups_per_fsync:.2} groups per fsync ({stats:?})"
    );
    let heard = heard.lock();
    assert_eq!(heard.len() as u64, stats.fsyncs);
    assert_eq!(heard.iter().map(|r| r.entries).sum::<u64>(), stats.entries);
    assert_eq!(
        heard.iter().map(|r| r.groups).sum::<u64>(),
        stats.group_syncs
    );
    assert!(
        heard.iter().all(|r| r.elapsed >= Duration::from_millis(1)),
        "each report covers its (delayed) fdatasync"
    );
}

#[test]
fn a_damaged_entry_is_an_error_on_read_never_data() {
    let io = SimIo::new(6);
    let (wal, _) = open_sim(&io, 1 << 20);
    wal.write((1..=3).map(|i| entry(7, i)).collect()).unwrap();
    drop(wal);
    let (wal, _) = open_sim(&io, 1 << 20);
    let path = segments(&io)[0].clone();
    let mut bytes = io.file_bytes(&path).unwrap();
    let needle = record(7, 2).payload;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == &needle[..])
        .unwrap();
    bytes[at] ^= 0x20;
    io.set_file_bytes(&path, bytes);
    assert_eq!(wal.entries(7, 1..=1).unwrap().len(), 1);
    assert!(matches!(
        wal.entries(7, 2..=2),
        Err(WalError::Corruption { .. })
    ));
}

/// A log written by the previous build (format 1: every record an entry) is read, and new
/// records go to a new segment in this build's format.
#[test]
fn format_1_segments_are_read_and_continued() {
    let io = SimIo::new(7);
    cairn_wal::io::create_dir_all_durable(&io, Path::new(DIR)).unwrap();
    let records = [record(0, 1), record(0, 2), record(3, 9)];
    io.set_file_bytes(
        &Path::new(DIR).join("00000000000000000001.wal"),
        format_1_segment(1, &records),
    );
    io.sync_dir(Path::new(DIR)).unwrap();
    let (wal, replay) = open_sim(&io, 1 << 20);
    assert_eq!(replay, records.to_vec());
    wal.append(&[record(0, 3)]).unwrap();
    drop(wal);
    assert_eq!(
        segments(&io).len(),
        2,
        "format 1 segment sealed, a new one started"
    );
    let (_, replay) = open_sim(&io, 1 << 20);
    assert_eq!(
        replay,
        vec![record(0, 1), record(0, 2), record(3, 9), record(0, 3)]
    );
}

/// A segment as the previous build wrote it: header (format 1), one batch frame of 24-byte
/// record headers.
fn format_1_segment(id: u64, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"CAIRNWAL");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..20]);
    out.extend_from_slice(&crc.to_le_bytes());
    let mut body = Vec::new();
    for r in records {
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&(r.payload.len() as u32).to_le_bytes());
        header[8..16].copy_from_slice(&r.group.to_le_bytes());
        header[16..24].copy_from_slice(&r.index.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..24]), &r.payload);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        body.extend_from_slice(&header);
        body.extend_from_slice(&r.payload);
    }
    let mut frame = Vec::new();
    frame.extend_from_slice(b"WALF");
    frame.extend_from_slice(&[1, 0, 0, 0]);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&1u64.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[0..20]), &body);
    frame.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&frame);
    out.extend_from_slice(&body);
    out
}

/// What one group's log should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    entries: BTreeMap<u64, Bytes>,
    vote: Option<Bytes>,
    purged: Option<u64>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Entry(r) => {
                self.entries.split_off(&r.index);
                self.entries.insert(r.index, r.payload.clone());
            }
            Op::TruncateFrom { index, .. } => {
                self.entries.split_off(index);
            }
            Op::Purge { index, .. } => {
                self.entries = self.entries.split_off(&(index + 1));
                self.purged = Some(*index);
            }
            Op::Vote { payload, .. } => self.vote = Some(payload.clone()),
            Op::Committed { .. } => {}
        }
    }

    fn observed(wal: &Wal, group: u64) -> Model {
        let info = wal.group(group);
        Model {
            entries: wal.entries(group, ..).unwrap().into_iter().collect(),
            vote: info.as_ref().and_then(|i| i.vote.clone()),
            purged: info.and_then(|i| i.purged.map(|(p, _)| p)),
        }
    }
}

/// Each group's driver: appends runs of entries, replaces conflicting suffixes, votes and
/// purges, one durable write at a time, while another thread deletes dead segments; the power
/// goes off inside a random call. Every group must then hold the state after its last
/// acknowledged write, or after the one in flight.
#[test]
fn acknowledged_ops_of_every_group_survive_power_cuts() {
    const GROUPS: u64 = 4;
    let rounds: u64 = std::env::var("CAIRN_WAL_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = rand::random();
    eprintln!("wal groups power cut seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut disk = SimIo::new(seed);
    let mut models: Vec<Model> = vec![Model::default(); GROUPS as usize];
    let mut acked_total = 0;
    for round in 0..rounds {
        // Every other round a slow fsync widens the window between a submission and its
        // durability, where a purge must not delete what it made dead.
        disk.set_sync_delay(Duration::from_micros(if round % 2 == 0 { 0 } else { 300 }));
        let (wal, _) = open_sim(&disk, 8192);
        for (g, model) in models.iter().enumerate() {
            assert_eq!(
                &Model::observed(&wal, g as u64),
                model,
                "seed {seed} round {round}: group {g}"
            );
        }
        disk.inject(
            Fault::new(IoOp::MUTATING, Action::PowerCut(PowerCut::Random))
                .after(rng.random_range(0..400)),
        );
        let wal = Arc::new(wal);
        let results: Vec<(Model, Option<Op>, u64)> = std::thread::scope(|s| {
            let purger = {
                let wal = wal.clone();
                s.spawn(move || {
                    while wal.purge_segments().is_ok() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            };
            let drivers: Vec<_> = models
                .iter()
                .enumerate()
                .map(|(g, model)| {
                    let wal = wal.clone();
                    let mut model = model.clone();
                    let mut rng = StdRng::seed_from_u64(seed ^ (round << 8) ^ g as u64);
                    s.spawn(move || drive_group(&wal, g as u64, &mut model, &mut rng))
                })
                .collect();
            let results = drivers.into_iter().map(|d| d.join().unwrap()).collect();
            purger.join().unwrap();
            results
        });
        for (g, (model, in_flight, acked)) in results.into_iter().enumerate() {
            acked_total += acked;
            models[g] = model;
            if let Some(op) = in_flight {
                // Its outcome is unknown: find out which it was at the next open.
                let mut after = models[g].clone();
                after.apply(&op);
                let image = disk.after_cut().expect("power is off");
                let (probe, _) = open_sim(&image.crash_image(PowerCut::DropUnsynced), 8192);
                let observed = Model::observed(&probe, g as u64);
                drop(probe);
                if observed == after {
                    models[g] = after;
                }
            }
        }
        drop(wal);
        disk = disk.after_cut().expect("the power is off");
    }
    let (wal, _) = open_sim(&disk, 8192);
    for (g, model) in models.iter().enumerate() {
        assert_eq!(
            &Model::observed(&wal, g as u64),
            model,
            "seed {seed}: group {g}"
        );
    }
    assert!(
        acked_total >= rounds * 5,
        "only {acked_total} writes acknowledged"
    );
}

/// Writes random ops to `group` until one fails; returns the model after the acknowledged
/// ones, the op in flight when the power went off, and how many were acknowledged.
fn drive_group(
    wal: &Wal,
    group: u64,
    model: &mut Model,
    rng: &mut StdRng,
) -> (Model, Option<Op>, u64) {
    let mut acked = 0;
    loop {
        let next = model
            .entries
            .keys()
            .next_back()
            .map(|l| l + 1)
            .or(model.purged.map(|p| p + 1))
            .unwrap_or(1);
        let op = match rng.random_range(0..10) {
            0..5 => Op::Entry(Record {
                group,
                index: next,
                payload: Bytes::from(format!("g{group}-{next}-{}", rng.random::<u32>())),
            }),
            5 => {
                // A conflict: a new leader's entry replaces the tail.
                let from = model
                    .entries
                    .keys()
                    .rev()
                    .nth(rng.random_range(0..3))
                    .copied();
                match from {
                    Some(index) => Op::Entry(Record {
                        group,
                        index,
                        payload: Bytes::from(format!(
                            "g{group}-{index}-new-{}",
                            rng.random::<u32>()
                        )),
                    }),
                    None => continue,
                }
            }
            6 => Op::Vote {
                group,
                payload: Bytes::from(format!("vote {}", rng.random::<u32>())),
            },
            7 => match model.entries.keys().next_back() {
                Some(&last) => Op::TruncateFrom { group, index: last },
                None => continue,
            },
            _ => {
                let keys: Vec<u64> = model.entries.keys().copied().collect();
                if keys.len() < 3 {
                    continue;
                }
                Op::Purge {
                    group,
                    index: keys[keys.len() / 2],
                    payload: Bytes::new(),
                }
            }
        };
        match wal.write(vec![op.clone()]) {
            Ok(()) => {
                model.apply(&op);
                acked += 1;
            }
            Err(_) => return (model.clone(), Some(op), acked),
        }
    }
}

#[test]
fn the_fault_is_really_inside_a_call() {
    // The power-cut test above arms its cut on any disk-changing call: make sure a cut armed on
    // this log's own writes fires (and the handle then fails) rather than the test passing by
    // never cutting.
    let io = SimIo::new(8);
    let (wal, _) = open_sim(&io, 8192);
    io.inject(Fault::new(
        &[IoOp::SyncData],
        Action::PowerCut(PowerCut::DropUnsynced),
    ));
    assert!(wal.append(&[record(1, 1)]).is_err());
    assert!(!io.is_powered());
}

/// Segments are deleted only once the purge that made them dead is durable: with the flusher
/// busy on a slow fsync and the purge queued behind it, a power cut right after
/// `purge_segments` returns must still find either the purge and no old entries, or the old
/// entries and no purge, never old entries gone with no purge recorded.
#[test]
fn segments_are_deleted_only_after_the_purge_is_durable() {
    let io = SimIo::new(9);
    let (wal, _) = open_sim(&io, 4096);
    for i in 1..=400 {
        wal.append(&[record(1, i)]).unwrap();
    }
    assert!(wal.segment_count() > 3, "{} segments", wal.segment_count());
    io.set_sync_delay(Duration::from_millis(300));
    // Occupy the flusher, then queue the purge behind it.
    wal.submit(vec![entry(2, 1)], None).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    wal.submit(
        vec![Op::Purge {
            group: 1,
            index: 390,
            payload: b("through 390"),
        }],
        None,
    )
    .unwrap();
    let stats = wal.purge_segments().unwrap();
    assert!(stats.segments_removed > 0);
    let after = io.power_cut(PowerCut::DropUnsynced);
    drop(wal);
    let (wal, _) = open_sim(&after, 4096);
    assert_eq!(wal.group(1).unwrap().purged.map(|p| p.0), Some(390));
    assert_eq!(indexes(&wal, 1), (391..=400).collect::<Vec<_>>());
}

/// A read bounded in bytes stops before the entry that would pass the bound, whether the
/// entries are still in memory or on disk, and always returns the first.
#[test]
fn a_bounded_read_stops_at_its_bytes_and_takes_at_least_one_entry() {
    let io = SimIo::new(12);
    let (wal, _) = open_sim(&io, 1 << 20);
    let big = |index: u64| {
        Op::Entry(Record {
            group: 1,
            index,
            payload: Bytes::from(vec![index as u8; 1000]),
        })
    };
    wal.write((1..=10).map(big).collect()).unwrap();
    let read = |bytes_max| -> Vec<u64> {
        wal.entries_up_to(1, 1..=10, bytes_max)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    };
    let three = read(3 * 1100);
    assert!(
        (2..=3).contains(&three.len()) && three[0] == 1,
        "records of 1000 bytes and a header, within 3300 bytes: {three:?}"
    );
    assert_eq!(read(1), vec![1], "the first entry always");
    assert_eq!(read(usize::MAX).len(), 10);
    assert_eq!(wal.entries(1, ..).unwrap().len(), 10);
    drop(wal);
    let (wal, _) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 1 << 20);
    let after: Vec<u64> = wal
        .entries_up_to(1, 4.., 2 * 1100)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert!((1..=2).contains(&after.len()) && after[0] == 4, "{after:?}");
}
