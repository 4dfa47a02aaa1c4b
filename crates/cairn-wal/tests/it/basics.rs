//! Round trips, reopen, rotation and concurrent appends.

use std::sync::Arc;

use bytes::Bytes;
use cairn_wal::io::sim::SimIo;
use cairn_wal::{Record, Wal, WalError, WalOptions};

use crate::support::{open_sim, record, segments};

#[test]
fn round_trip_and_reopen_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replay) = crate::support::open_std(dir.path());
    assert!(replay.is_empty());

    let first: Vec<Record> = (1..=10).map(|i| record(1, i)).collect();
    wal.append(&first).unwrap();
    wal.append(&[
        record(2, 1),
        Record {
            group: 3,
            index: 9,
            payload: Bytes::new(),
        },
    ])
    .unwrap();
    drop(wal);

    let (wal, replay) = crate::support::open_std(dir.path());
    let mut expected = first.clone();
    expected.extend([
        record(2, 1),
        Record {
            group: 3,
            index: 9,
            payload: Bytes::new(),
        },
    ]);
    assert_eq!(replay, expected);

    wal.append(&[record(1, 11)]).unwrap();
    drop(wal);
    let (_wal, replay) = crate::support::open_std(dir.path());
    expected.push(record(1, 11));
    assert_eq!(replay, expected);
}

/// Segment files are zero-filled ahead of the log: the active one is as long as one
/// preallocation chunk from the start, sealed ones end at their seal.
#[test]
fn segments_are_preallocated_and_trimmed_when_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = crate::support::open_std(dir.path());
    let segment = dir.path().join("00000000000000000001.wal");
    let file_bytes = || std::fs::metadata(&segment).unwrap().len();
    assert_eq!(file_bytes(), cairn_wal::SEGMENT_PREALLOCATE_BYTES);
    // A batch larger than the zero-filled part extends it by a chunk past the batch.
    let big = Record {
        group: 1,
        index: 1,
        payload: Bytes::from(vec![7u8; 5 << 20]),
    };
    wal.append(&[record(1, 0), big.clone()]).unwrap();
    assert_eq!(file_bytes(), 2 * cairn_wal::SEGMENT_PREALLOCATE_BYTES);
    let log_bytes = wal.total_bytes();
    assert!(log_bytes < file_bytes());
    drop(wal);
    let (wal, replay) = crate::support::open_std(dir.path());
    assert_eq!(replay, vec![record(1, 0), big]);
    assert_eq!(
        wal.total_bytes(),
        log_bytes,
        "the zero tail is not log data"
    );
    drop(wal);

    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 8192);
    for i in 1..=300 {
        wal.append(&[record(i % 4, i / 4 + 1)]).unwrap();
    }
    let files = segments(&io);
    let total: usize = files.iter().map(|f| io.file_bytes(f).unwrap().len()).sum();
    let newest = io.file_bytes(files.last().unwrap()).unwrap().len();
    assert_eq!(
        newest, 8192,
        "the active segment is preallocated up to its size"
    );
    assert_eq!(
        (total - newest) as u64,
        wal.total_bytes() - wal_active_bytes(&io, files.last().unwrap()),
        "sealed segments hold no zero tail"
    );
}

/// Bytes of log data in the active segment: everything up to its zero tail.
fn wal_active_bytes(io: &SimIo, path: &std::path::Path) -> u64 {
    let bytes = io.file_bytes(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1) as u64
}

#[test]
fn rotation_spreads_records_over_segments() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    let mut expected = Vec::new();
    for i in 1..=300 {
        let batch = vec![record(i % 4, i / 4 + 1), record(9, i)];
        wal.append(&batch).unwrap();
        expected.extend(batch);
    }
    assert!(wal.segment_count() > 3, "{} segments", wal.segment_count());
    assert_eq!(segments(&io).len(), wal.segment_count());
    drop(wal);
    let (wal, replay) = open_sim(&io, 4096);
    assert_eq!(replay, expected);
    wal.append(&[record(5, 5)]).unwrap();
}

#[test]
fn batch_larger_than_a_segment_gets_its_own() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    let big = Record {
        group: 1,
        index: 1,
        payload: Bytes::from(vec![7u8; 10_000]),
    };
    wal.append(&[record(1, 0)]).unwrap();
    wal.append(std::slice::from_ref(&big)).unwrap();
    wal.append(&[record(1, 2)]).unwrap();
    assert_eq!(wal.segment_count(), 3);
    drop(wal);
    let (_, replay) = open_sim(&io, 4096);
    assert_eq!(replay, vec![record(1, 0), big, record(1, 2)]);
}

#[test]
fn concurrent_appends_keep_each_writers_order() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 64 * 1024);
    let wal = Arc::new(wal);
    let writers: Vec<_> = (0..4u64)
        .map(|group| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for index in 1..=200 {
                    wal.append(&[record(group, index)]).unwrap();
                }
            })
        })
        .collect();
    writers.into_iter().for_each(|w| w.join().unwrap());
    drop(wal);
    let (_, replay) = open_sim(&io, 64 * 1024);
    assert_eq!(replay.len(), 800);
    for group in 0..4 {
        let indexes: Vec<u64> = replay
            .iter()
            .filter(|r| r.group == group)
            .map(|r| r.index)
            .collect();
        assert_eq!(indexes, (1..=200).collect::<Vec<_>>());
    }
}

#[test]
fn limits_and_options_are_checked() {
    let io = SimIo::new(0x3a1);
    let err = Wal::open("/sim/wal", crate::support::sim_options(&io, 100)).unwrap_err();
    assert!(matches!(err, WalError::InvalidOptions(_)), "{err}");
    let (wal, _) = open_sim(&io, 4096);
    let huge = Record {
        group: 1,
        index: 1,
        payload: Bytes::from(vec![0u8; cairn_wal::RECORD_PAYLOAD_BYTES_MAX + 1]),
    };
    assert!(matches!(
        wal.append(&[huge]),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert!(
        !wal.is_poisoned(),
        "a refused record is the caller's error, not a disk failure"
    );
    wal.append(&[]).unwrap();
}

#[test]
fn files_other_than_segments_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), b"not a segment").unwrap();
    let (wal, _) = crate::support::open_std(dir.path());
    wal.append(&[record(1, 1)]).unwrap();
    drop(wal);
    let (_, replay) = crate::support::open_std(dir.path());
    assert_eq!(replay, vec![record(1, 1)]);
}

#[test]
fn a_directory_is_opened_by_one_wal_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = crate::support::open_std(dir.path());
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    drop(wal);
    crate::support::open_std(dir.path());

    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    assert!(matches!(
        Wal::open(crate::support::DIR, crate::support::sim_options(&io, 4096)),
        Err(WalError::Locked { .. })
    ));
    drop(wal);
    open_sim(&io, 4096);
}

/// Concurrent callers share fsyncs (group commit), and each call's records stay contiguous and
/// in order.
#[test]
fn concurrent_appends_share_fsyncs() {
    const THREADS: u64 = 8;
    const APPENDS: u64 = 50;
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 1 << 20);
    io.set_sync_delay(std::time::Duration::from_millis(1));
    let syncs_before = io.syncs();
    let wal = Arc::new(wal);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let wal = wal.clone();
            scope.spawn(move || {
                for i in 0..APPENDS {
                    wal.append(&[record(t, i * 2), record(t, i * 2 + 1)])
                        .unwrap();
                }
            });
        }
    });
    let syncs = io.syncs() - syncs_before;
    assert!(syncs > 0, "{} appends and not one fsync", THREADS * APPENDS);
    assert!(
        syncs < THREADS * APPENDS / 2,
        "{syncs} fsyncs for {} appends",
        THREADS * APPENDS
    );
    drop(wal);
    let (_, replay) = open_sim(&io, 1 << 20);
    assert_eq!(replay.len() as u64, THREADS * APPENDS * 2);
    for pair in replay.chunks(2) {
        assert_eq!(pair[0].group, pair[1].group);
        assert_eq!(
            pair[0].index + 1,
            pair[1].index,
            "an append's records are contiguous"
        );
    }
    for t in 0..THREADS {
        let indexes: Vec<u64> = replay
            .iter()
            .filter(|r| r.group == t)
            .map(|r| r.index)
            .collect();
        assert_eq!(indexes, (0..APPENDS * 2).collect::<Vec<_>>());
    }
}

/// A failed fsync fails every append of its group, and all later ones.
#[test]
fn failed_group_fails_every_member() {
    const THREADS: u64 = 6;
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 1 << 20);
    io.set_sync_delay(std::time::Duration::from_millis(2));
    let wal = Arc::new(wal);
    let acked: Vec<Vec<Record>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (wal, io) = (wal.clone(), io.clone());
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..40 {
                        if t == 0 && i == 20 {
                            crate::support::fail_next_sync(&io);
                        }
                        match wal.append(&[record(t, i)]) {
                            Ok(()) => acked.push(record(t, i)),
                            Err(_) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(wal.is_poisoned());
    assert!(matches!(
        wal.append(&[record(99, 1)]),
        Err(WalError::Poisoned)
    ));
    drop(wal);
    let (_, replay) = open_sim(
        &io.crash_image(cairn_wal::io::sim::PowerCut::DropUnsynced),
        1 << 20,
    );
    for record in acked.concat() {
        assert!(replay.contains(&record), "acknowledged {record:?} lost");
    }
}
