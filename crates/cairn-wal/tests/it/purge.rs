//! Purge deletes whole segments in which no group has a live entry left, never the active one.

use std::collections::HashMap;

use cairn_wal::io::sim::SimIo;

use crate::support::{open_sim, purge_applied, record, segments};

#[test]
fn purge_removes_only_fully_applied_segments() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    for i in 1..=200 {
        wal.append(&[record(1, i), record(2, i)]).unwrap();
    }
    let before = wal.segment_count();
    assert!(before > 4);

    // Nothing applied: nothing removed.
    assert_eq!(purge_applied(&wal, |_| 0).segments_removed, 0);

    // Group 1 applied everything, group 2 only through 100.
    let applied = HashMap::from([(1u64, 200u64), (2, 100)]);
    let stats = purge_applied(&wal, |g| applied.get(&g).copied().unwrap_or(0));
    assert!(stats.segments_removed > 0 && stats.segments_removed < before);
    assert_eq!(wal.segment_count(), before - stats.segments_removed);
    assert_eq!(segments(&io).len(), wal.segment_count());
    drop(wal);

    // Every record of group 2 above 100 survives, in order.
    let (wal, replay) = open_sim(&io, 4096);
    let group2: Vec<u64> = replay
        .iter()
        .filter(|r| r.group == 2)
        .map(|r| r.index)
        .collect();
    assert!(group2.iter().all(|&i| i <= 200));
    assert_eq!(group2.iter().filter(|&&i| i > 100).count(), 100);
    assert!(group2.windows(2).all(|w| w[1] == w[0] + 1));

    // Everything applied: only the active segment is left.
    purge_applied(&wal, |_| u64::MAX);
    assert_eq!(wal.segment_count(), 1);
    wal.append(&[record(1, 201)]).unwrap();
    drop(wal);
    let (_, replay) = open_sim(&io, 4096);
    assert!(replay.contains(&record(1, 201)));
}

#[test]
fn purge_can_remove_a_middle_segment() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    // Group 7 writes only at the start; group 8 fills later segments.
    wal.append(&[record(7, 1)]).unwrap();
    for i in 1..=150 {
        wal.append(&[record(8, i)]).unwrap();
    }
    // Group 7 is not applied: the first segment stays; fully applied later ones go.
    let stats = purge_applied(&wal, |g| if g == 8 { 150 } else { 0 });
    assert!(stats.segments_removed > 0);
    wal.append(&[record(8, 151)]).unwrap();
    drop(wal);
    let (_, replay) = open_sim(&io, 4096);
    assert_eq!(replay.first(), Some(&record(7, 1)));
    assert_eq!(replay.last(), Some(&record(8, 151)));
}

/// Writers append while another thread purges with a moving applied index, then the power goes
/// out: every acknowledged record above the applied index survives, in order.
#[test]
fn purge_during_appends_and_power_cut_keep_unapplied_records() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use cairn_wal::io::sim::PowerCut;

    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    let wal = Arc::new(wal);
    let applied = Arc::new(AtomicU64::new(0));
    const GROUPS: u64 = 3;
    const APPENDS: u64 = 300;
    let acked: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..GROUPS)
            .map(|group| {
                let wal = wal.clone();
                scope.spawn(move || {
                    (1..=APPENDS)
                        .filter(|&i| wal.append(&[record(group, i)]).is_ok())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let purger = {
            let (wal, applied) = (wal.clone(), applied.clone());
            scope.spawn(move || {
                for step in 1..=50u64 {
                    applied.store(step * APPENDS / 60, Ordering::SeqCst);
                    let applied_now = applied.load(Ordering::SeqCst);
                    purge_applied(&wal, |_| applied_now);
                }
            })
        };
        purger.join().unwrap();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let applied = applied.load(Ordering::SeqCst);
    drop(wal);
    for mode in [
        PowerCut::DropUnsynced,
        PowerCut::KeepPrefix {
            kept_per_mille: 500,
        },
    ] {
        let disk = io.crash_image(mode);
        let (_, replay) = open_sim(&disk, 4096);
        for (group, indexes) in acked.iter().enumerate() {
            assert_eq!(indexes.len() as u64, APPENDS, "no append may fail");
            let replayed: Vec<u64> = replay
                .iter()
                .filter(|r| r.group == group as u64 && r.index > applied)
                .map(|r| r.index)
                .collect();
            let expected: Vec<u64> = indexes.iter().copied().filter(|&i| i > applied).collect();
            assert_eq!(replayed, expected, "group {group}");
        }
    }
}
