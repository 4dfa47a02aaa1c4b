//! Failed writes and fsyncs poison the log; simulated power cuts keep every acknowledged append.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_wal::io::sim::{PowerCut, SimIo};
use cairn_wal::{Record, WalError};
use rand::{Rng, SeedableRng};

use crate::support::{open_sim, record};

#[test]
fn failed_fsync_poisons_the_log() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    wal.append(&[record(1, 1)]).unwrap();
    crate::support::fail_next_sync(&io);
    assert!(matches!(
        wal.append(&[record(1, 2)]),
        Err(WalError::Io { .. })
    ));
    assert!(wal.is_poisoned());
    // The fault is gone, but the log must not retry and acknowledge.
    assert!(matches!(
        wal.append(&[record(1, 3)]),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(wal.purge_segments(), Err(WalError::Poisoned)));
    drop(wal);
    // A restart recovers what was durable.
    let (wal, replay) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 4096);
    assert_eq!(replay, vec![record(1, 1)]);
    wal.append(&[record(1, 2)]).unwrap();
}

#[test]
fn failed_write_poisons_the_log() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    io.fail_next(cairn_wal::io::sim::Op::Write);
    assert!(wal.append(&[record(1, 1)]).is_err());
    assert!(matches!(
        wal.append(&[record(1, 2)]),
        Err(WalError::Poisoned)
    ));
    drop(wal);
    // The half-written frame is a torn tail.
    let (_, replay) = open_sim(&io, 4096);
    assert!(replay.is_empty());
}

#[test]
fn failed_fsync_during_rotation_poisons_the_log() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    let mut acked = Vec::new();
    let mut failed = false;
    for i in 1..=200 {
        if i % 37 == 0 {
            crate::support::fail_next_sync(&io);
        }
        match wal.append(&[record(1, i)]) {
            Ok(()) => acked.push(record(1, i)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed && wal.is_poisoned());
    drop(wal);
    let (_, replay) = open_sim(&io.crash_image(PowerCut::DropUnsynced), 4096);
    assert_eq!(replay, acked);
}

/// Random appends from several threads, power cuts at random moments (dropping unsynced data,
/// or keeping a torn prefix of it), restart, repeat: every acknowledged record survives, in
/// order, and nothing that was never appended appears.
#[test]
fn power_cuts_keep_every_acknowledged_append() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xCA1E);
    let mut io = SimIo::new(0x3a1);
    let mut acked: Vec<Record> = Vec::new();
    let mut next_index = 1u64;
    for round in 0..30 {
        let (wal, replay) = open_sim(&io, 4096 + rng.random_range(0..4096));
        // Replay = acknowledged records, plus possibly records from appends that were in flight
        // (not acknowledged) when the power went out.
        assert!(
            replay.len() >= acked.len(),
            "round {round}: lost acknowledged records"
        );
        assert_eq!(&replay[..acked.len()], &acked[..], "round {round}");
        acked = replay;
        next_index = acked
            .iter()
            .map(|r| r.index + 1)
            .max()
            .unwrap_or(next_index)
            .max(next_index);

        let wal = Arc::new(wal);
        let threads = rng.random_range(1..4u64);
        let appends = rng.random_range(1..40u64);
        // Sometimes an fsync fails partway through the round.
        let fail_after_syncs = rng
            .random_bool(0.3)
            .then(|| io.syncs() + rng.random_range(1..20));
        let done = AtomicBool::new(false);
        let acked_now: Vec<Vec<Record>> = std::thread::scope(|scope| {
            if let Some(target) = fail_after_syncs {
                let (io, done) = (&io, &done);
                scope.spawn(move || {
                    while io.syncs() < target && !done.load(Ordering::Relaxed) {
                        std::thread::yield_now();
                    }
                    crate::support::fail_next_sync(io);
                });
            }
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let wal = wal.clone();
                    let base = next_index + t * 1000;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..appends {
                            let batch: Vec<Record> = (0..=(i % 5))
                                .map(|k| record(t, base + i * 10 + k))
                                .collect();
                            if wal.append(&batch).is_ok() {
                                mine.extend(batch);
                            }
                        }
                        mine
                    })
                })
                .collect();
            let acked_now = handles.into_iter().map(|h| h.join().unwrap()).collect();
            done.store(true, Ordering::Relaxed);
            acked_now
        });
        next_index += threads * 1000;
        // Appends are acknowledged in log order; replay order across threads is the log's.
        let mut survivors = acked_now.concat();
        survivors.sort_by_key(|r| (r.group, r.index));
        let mode = match rng.random_range(0..3) {
            0 => PowerCut::DropUnsynced,
            1 => PowerCut::KeepPrefix {
                kept_per_mille: rng.random_range(0..=1000),
            },
            _ => PowerCut::KeepSectors {
                seed: rng.random(),
                sector_bytes: 512,
            },
        };
        drop(wal);
        io = io.crash_image(mode);
        let (_, replay) = open_sim(&io, 1 << 20);
        let mut replayed_now: Vec<Record> = replay[acked.len()..].to_vec();
        replayed_now.sort_by_key(|r| (r.group, r.index));
        // Every acknowledged record survived; at most one unacknowledged group (the one whose
        // fsync failed, if its bytes happened to reach the disk: one batch of up to 5 records
        // per thread) came along.
        let missing: Vec<&Record> = survivors
            .iter()
            .filter(|r| !replayed_now.contains(r))
            .collect();
        assert!(missing.is_empty(), "round {round}: lost {missing:?}");
        assert!(
            replayed_now.len() as u64 <= survivors.len() as u64 + threads * 5,
            "round {round}: unexpected records"
        );
        acked = replay;
    }
}

/// A group commit whose fsync failed leaves several callers' records unsynced; a power cut that
/// keeps random sectors of them (out-of-order page writes) must read as a torn tail, never as
/// corruption, and must keep every acknowledged record.
#[test]
fn torn_group_is_never_mistaken_for_corruption() {
    const THREADS: u64 = 6;
    for seed in 0..40u64 {
        let io = SimIo::new(0x3a1);
        let (wal, _) = open_sim(&io, 1 << 20);
        io.set_sync_delay(std::time::Duration::from_micros(300));
        let wal = Arc::new(wal);
        let acked: Vec<Record> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (wal, io) = (wal.clone(), io.clone());
                    scope.spawn(move || {
                        let mut acked = Vec::new();
                        for i in 0..30u64 {
                            if t == 0 && i == 15 {
                                crate::support::fail_next_sync(&io);
                            }
                            let batch: Vec<Record> = (0..3)
                                .map(|k| Record {
                                    group: t,
                                    index: i * 3 + k,
                                    payload: bytes::Bytes::from(vec![(t * 31 + i) as u8; 200]),
                                })
                                .collect();
                            if wal.append(&batch).is_err() {
                                break;
                            }
                            acked.extend(batch);
                        }
                        acked
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        drop(wal);
        let disk = io.crash_image(PowerCut::KeepSectors {
            seed,
            sector_bytes: 512,
        });
        let replay = match cairn_wal::Wal::open(
            crate::support::DIR,
            crate::support::sim_options(&disk, 1 << 20),
        ) {
            Ok(opened) => opened.replay().unwrap(),
            Err(err) => panic!("seed {seed}: {err}"),
        };
        for record in &acked {
            assert!(replay.contains(record), "seed {seed}: lost {record:?}");
        }
    }
}

/// The fdatasync of the append that extends the zero-filled tail fails and the power goes out:
/// the new frame and the extension may be lost, torn, or (sectors out of order) half there with
/// the file's new length. Every acknowledged record survives and the log takes appends again.
#[test]
fn power_cut_during_a_preallocation_extension() {
    const SEGMENT_BYTES: u64 = 3 * cairn_wal::SEGMENT_PREALLOCATE_BYTES;
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, SEGMENT_BYTES);
    let payload = bytes::Bytes::from(vec![0xA5u8; 256 * 1024]);
    let mut acked = Vec::new();
    let mut index = 0;
    loop {
        index += 1;
        let batch = vec![Record {
            group: 1,
            index,
            payload: payload.clone(),
        }];
        let crosses = wal.total_bytes() + 24 + 24 + payload.len() as u64
            > cairn_wal::SEGMENT_PREALLOCATE_BYTES;
        if crosses {
            crate::support::fail_next_sync(&io);
            assert!(wal.append(&batch).is_err());
            break;
        }
        wal.append(&batch).unwrap();
        acked.extend(batch);
    }
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    let mut modes = vec![
        PowerCut::DropUnsynced,
        PowerCut::KeepPrefix { kept_per_mille: 0 },
        PowerCut::KeepPrefix { kept_per_mille: 30 },
        PowerCut::KeepPrefix {
            kept_per_mille: 500,
        },
        PowerCut::KeepPrefix {
            kept_per_mille: 1000,
        },
    ];
    modes.extend((0..6).map(|seed| PowerCut::KeepSectors {
        seed,
        sector_bytes: 64 * 1024,
    }));
    for mode in modes {
        let disk = io.crash_image(mode);
        let (wal, replay) = open_sim(&disk, SEGMENT_BYTES);
        assert_eq!(&replay[..acked.len()], &acked[..], "{mode:?}");
        assert!(replay.len() <= acked.len() + 1, "{mode:?}");
        wal.append(&[record(2, 1)]).unwrap();
        drop(wal);
        let (_, again) = open_sim(&disk, SEGMENT_BYTES);
        assert_eq!(again.len(), replay.len() + 1, "{mode:?}");
    }
}

/// Power cuts right after a failed fdatasync at every point of a run that rotates several
/// times (so also while a seal and the trim of its segment's zero tail are unsynced): every
/// acknowledged record survives, in order.
#[test]
fn power_cut_at_every_append_across_rotations() {
    for failing in 1..=150u64 {
        let io = SimIo::new(0x3a1);
        let (wal, _) = open_sim(&io, 4096);
        let mut acked = Vec::new();
        for i in 1..failing {
            wal.append(&[record(1, i)]).unwrap();
            acked.push(record(1, i));
        }
        crate::support::fail_next_sync(&io);
        assert!(wal.append(&[record(1, failing)]).is_err());
        drop(wal);
        for mode in [
            PowerCut::DropUnsynced,
            PowerCut::KeepPrefix {
                kept_per_mille: 400,
            },
            PowerCut::KeepPrefix {
                kept_per_mille: 1000,
            },
            PowerCut::KeepSectors {
                seed: failing,
                sector_bytes: 16,
            },
        ] {
            let disk = io.crash_image(mode);
            let (wal, replay) = match cairn_wal::Wal::open(
                crate::support::DIR,
                crate::support::sim_options(&disk, 4096),
            ) {
                Ok(opened) => {
                    let replay = opened.replay().unwrap();
                    (opened, replay)
                }
                Err(err) => panic!("failing append {failing}, {mode:?}: {err}"),
            };
            assert_eq!(&replay[..acked.len()], &acked[..], "{failing} {mode:?}");
            assert!(replay.len() <= acked.len() + 1, "{failing} {mode:?}");
            wal.append(&[record(2, 1)]).unwrap();
            drop(wal);
            let (_, again) = open_sim(&disk, 4096);
            assert_eq!(again.len(), replay.len() + 1, "{failing} {mode:?}");
        }
    }
}
