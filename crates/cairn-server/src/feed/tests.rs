use super::test_ops::{b, ops, put};
use super::*;

fn feed(limits: FeedLimits) -> Feed {
    Feed::new(0, 0, limits, Arc::new(tokio::sync::watch::channel(0).0))
}

fn indexes(since: &Since) -> Vec<u64> {
    since.batches.iter().map(|b| b.index).collect()
}

#[test]
fn an_entry_becomes_one_batch_of_its_keyspace_changes_in_order() {
    let ops = vec![
        put("a", "1"),
        WriteOp::SystemPut {
            key: b("l/a"),
            value: b("lock"),
        },
        WriteOp::Delete { key: b("b") },
        WriteOp::Expire { key: b("c") },
        WriteOp::Clear,
        put("d", "4"),
        WriteOp::Clear,
    ];
    let batch = Batch::of_ops(7, Arc::new(ops), &[b("x"), b("y")]).unwrap();
    assert_eq!(batch.len(), 6);
    let seen: Vec<(EventKind, &[u8])> = batch.events().map(|e| (e.kind, e.key.as_ref())).collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, &b"a"[..]),
            (EventKind::Delete, &b"b"[..]),
            (EventKind::Expire, &b"c"[..]),
            (EventKind::Delete, &b"x"[..]),
            (EventKind::Delete, &b"y"[..]),
            (EventKind::Put, &b"d"[..]),
        ],
        "system records are not keys; a clear is told once, as the deletes it made"
    );
    assert!(
        Batch::of_ops(
            8,
            Arc::new(vec![WriteOp::SystemDelete { key: b("t/1") }]),
            &[]
        )
        .is_none(),
        "an entry that touches no key is no batch"
    );
}

#[test]
fn the_window_drops_the_oldest_entries_whole_and_says_where_history_starts() {
    let f = feed(FeedLimits {
        events_max: 4,
        bytes_max: usize::MAX,
    });
    f.applied(1, ops![put("a", "1"), put("b", "1")], &[]);
    f.applied(
        2,
        ops![WriteOp::SystemPut {
            key: b("s"),
            value: b("v"),
        }],
        &[],
    );
    f.applied(3, ops![put("c", "1")], &[]);
    f.applied(4, ops![put("d", "1")], &[]);
    assert_eq!(f.held().0, 4);
    assert_eq!(f.compacted(), 0);
    assert_eq!(f.last(), 4);
    f.applied(5, ops![put("e", "1")], &[]);
    assert_eq!(f.held().0, 3, "entry 1 went whole (both its events)");
    assert_eq!(f.compacted(), 1);
    assert_eq!(
        f.since(Pos::after(0), 100, usize::MAX).unwrap_err(),
        Compacted {
            shard: 0,
            revision: 1
        }
    );
    let since = f.since(Pos::after(1), 100, usize::MAX).unwrap();
    assert_eq!(indexes(&since), vec![3, 4, 5]);
    assert_eq!(since.upto, 5);
    let since = f.since(Pos::after(3), 100, usize::MAX).unwrap();
    assert_eq!(indexes(&since), vec![4, 5]);
    // A position inside entry 4 gets entry 4 again (the reader skips what it had).
    let since = f
        .since(
            Pos {
                index: 4,
                partial: 1,
            },
            100,
            usize::MAX,
        )
        .unwrap();
    assert_eq!(indexes(&since), vec![4, 5]);
    // Nothing new: the position moves to the newest entry applied.
    f.applied(6, ops![WriteOp::SystemDelete { key: b("s") }], &[]);
    let since = f.since(Pos::after(5), 100, usize::MAX).unwrap();
    assert!(since.batches.is_empty());
    assert_eq!(since.upto, 6);
}

#[test]
fn the_byte_budget_bounds_history_too() {
    let f = feed(FeedLimits {
        events_max: usize::MAX,
        bytes_max: 3 * (EVENT_OVERHEAD_BYTES + 2 + 100),
    });
    let big = "v".repeat(100);
    for i in 1..=10u64 {
        f.applied(i, ops![put(&format!("k{}", i % 10), &big)], &[]);
        let (_, bytes) = f.held();
        assert!(bytes <= 3 * (EVENT_OVERHEAD_BYTES + 2 + 100));
    }
    assert_eq!(f.held().0, 3);
    assert_eq!(f.compacted(), 7);
}

#[test]
fn reads_are_cut_at_entry_boundaries_and_a_big_entry_still_comes_whole() {
    let f = feed(FeedLimits::default());
    f.applied(1, ops![put("a", "1"), put("b", "1"), put("c", "1")], &[]);
    f.applied(2, ops![put("d", "1")], &[]);
    f.applied(3, ops![put("e", "1")], &[]);
    let since = f.since(Pos::after(0), 2, usize::MAX).unwrap();
    assert_eq!(
        indexes(&since),
        vec![1],
        "one entry over the limit comes alone"
    );
    assert_eq!(since.upto, 1);
    let since = f.since(Pos::after(1), 2, usize::MAX).unwrap();
    assert_eq!(indexes(&since), vec![2, 3]);
    assert_eq!(since.upto, 3);
}

#[test]
fn reads_are_cut_by_bytes_too() {
    let f = feed(FeedLimits::default());
    let big = "v".repeat(1000);
    for i in 1..=5 {
        f.applied(i, ops![put("k", &big)], &[]);
    }
    let since = f.since(Pos::after(0), usize::MAX, 2500).unwrap();
    assert_eq!(indexes(&since), vec![1, 2]);
    assert!(since.cut);
    assert_eq!(since.upto, 2);
    let since = f.since(Pos::after(2), usize::MAX, usize::MAX).unwrap();
    assert!(!since.cut);
}

#[test]
fn a_snapshot_install_restarts_history_after_it() {
    let f = feed(FeedLimits::default());
    f.applied(1, ops![put("a", "1")], &[]);
    let engine_dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(engine_dir.path(), cairn_storage::Options::default()).unwrap();
    f.replaced(&engine, 40);
    assert_eq!(f.compacted(), 40);
    assert_eq!(f.last(), 40);
    assert!(f.since(Pos::after(1), 10, usize::MAX).is_err());
    f.applied(41, ops![put("b", "1")], &[]);
    assert_eq!(
        indexes(&f.since(Pos::after(40), 10, usize::MAX).unwrap()),
        vec![41]
    );
}

/// A log of `count` entries; entry `i` puts `k{i}` unless listed in `special` (an empty list:
/// a blank or membership entry, which the log holds with no ops).
fn log(count: u64, special: &[(u64, Vec<WriteOp>)]) -> Vec<(u64, Vec<WriteOp>)> {
    (1..=count)
        .map(|i| match special.iter().find(|(at, _)| *at == i) {
            Some((_, ops)) => (i, ops.clone()),
            None => (i, vec![put(&format!("k{i}"), "v")]),
        })
        .collect()
}

fn load(f: &Feed, first: u64, entries: &[(u64, Vec<WriteOp>)]) {
    f.load(first, |start, end| {
        Ok(entries
            .iter()
            .filter(|(i, _)| (start..=end).contains(i))
            .cloned()
            .collect())
    })
    .unwrap();
}

#[test]
fn history_is_rebuilt_from_the_log_below_the_applied_index() {
    // Entry 3 is a membership entry (no ops); entries above 150 are not applied yet.
    let entries = log(200, &[(3, vec![])]);
    let f = Feed::new(
        0,
        150,
        FeedLimits::default(),
        Arc::new(tokio::sync::watch::channel(0).0),
    );
    load(&f, 1, &entries);
    assert_eq!(
        f.compacted(),
        0,
        "the whole log is held: history from the start"
    );
    let since = f.since(Pos::after(0), usize::MAX, usize::MAX).unwrap();
    let expected: Vec<u64> = (1..=150).filter(|&i| i != 3).collect();
    assert_eq!(indexes(&since), expected);
    assert_eq!(since.upto, 150);

    // A purged log: history starts after the purge point.
    let f = Feed::new(
        0,
        150,
        FeedLimits::default(),
        Arc::new(tokio::sync::watch::channel(0).0),
    );
    load(&f, 101, &entries);
    assert_eq!(f.compacted(), 100);
    assert_eq!(
        f.since(Pos::after(100), usize::MAX, usize::MAX)
            .unwrap()
            .batches
            .len(),
        50
    );
}

#[test]
fn a_rebuild_keeps_the_newest_entries_and_stops_at_a_clear() {
    let entries = log(300, &[]);
    let f = Feed::new(
        0,
        300,
        FeedLimits {
            events_max: 70,
            bytes_max: usize::MAX,
        },
        Arc::new(tokio::sync::watch::channel(0).0),
    );
    load(&f, 1, &entries);
    assert_eq!(f.held().0, 70);
    assert_eq!(f.compacted(), 230);
    assert_eq!(
        indexes(&f.since(Pos::after(230), usize::MAX, usize::MAX).unwrap()),
        (231..=300).collect::<Vec<_>>()
    );

    let entries = log(300, &[(280, vec![put("x", "1"), WriteOp::Clear])]);
    let f = Feed::new(
        0,
        300,
        FeedLimits::default(),
        Arc::new(tokio::sync::watch::channel(0).0),
    );
    load(&f, 1, &entries);
    assert_eq!(
        f.compacted(),
        280,
        "the keys a clear removed are not in the log: history starts after it"
    );
    assert_eq!(f.held().0, 20);
}

#[test]
fn a_hole_in_the_log_ends_the_rebuilt_history() {
    // Entries 1..=100 and 121..=200 are there, 101..=120 are not (a snapshot install whose
    // purge had not happened).
    let entries: Vec<_> = log(200, &[])
        .into_iter()
        .filter(|(i, _)| !(101..=120).contains(i))
        .collect();
    let f = Feed::new(
        0,
        200,
        FeedLimits::default(),
        Arc::new(tokio::sync::watch::channel(0).0),
    );
    load(&f, 1, &entries);
    assert_eq!(f.compacted(), 120, "nothing at or below the hole is known");
    assert_eq!(
        indexes(&f.since(Pos::after(120), usize::MAX, usize::MAX).unwrap()),
        (121..=200).collect::<Vec<_>>()
    );
}

#[test]
fn a_rebuild_after_the_group_began_applying_changes_nothing() {
    let entries = log(10, &[]);
    let f = Feed::new(
        0,
        10,
        FeedLimits::default(),
        Arc::new(tokio::sync::watch::channel(0).0),
    );
    f.applied(11, ops![put("new", "1")], &[]);
    load(&f, 1, &entries);
    assert_eq!(f.compacted(), 10);
    assert_eq!(
        indexes(&f.since(Pos::after(10), 100, usize::MAX).unwrap()),
        vec![11]
    );
}

/// A log held in memory: entries from `first` on, minus `holes`.
#[derive(Debug)]
struct FakeLog {
    first: u64,
    entries: Vec<(u64, Vec<WriteOp>)>,
}

impl History for FakeLog {
    fn first(&self) -> u64 {
        self.first
    }
    fn read(&self, start: u64, end: u64) -> std::io::Result<Vec<(u64, Vec<WriteOp>)>> {
        Ok(self
            .entries
            .iter()
            .filter(|(i, _)| *i >= self.first && (start..=end).contains(i))
            .cloned()
            .collect())
    }
}

/// A feed of a 10-event window over a log of 300 entries (each one put), as the state
/// machine would have filled it.
fn windowed(log: FakeLog) -> Feed {
    let entries = log.entries.clone();
    let f = Feed::new(
        0,
        0,
        FeedLimits {
            events_max: 10,
            bytes_max: usize::MAX,
        },
        Arc::new(tokio::sync::watch::channel(0).0),
    )
    .with_history(Arc::new(log));
    for (i, ops) in entries {
        f.applied(i, &Arc::new(ops), &[]);
    }
    f
}

/// Every event after `from`, reading on until the feed's end.
fn all_after(f: &Feed, from: u64) -> Result<Vec<u64>, Compacted> {
    let mut pos = Pos::after(from);
    let mut seen = Vec::new();
    loop {
        let since = f.since(pos, 100, usize::MAX)?;
        seen.extend(since.batches.iter().map(|b| b.index));
        if since.upto <= pos.done() {
            return Ok(seen);
        }
        pos = Pos::after(since.upto);
        if !since.cut {
            return Ok(seen);
        }
    }
}

#[test]
fn positions_older_than_the_window_are_read_from_the_log() {
    let f = windowed(FakeLog {
        first: 1,
        entries: log(300, &[(50, vec![])]),
    });
    assert_eq!(f.held().0, 10, "the window itself stays small");
    assert_eq!(f.compacted(), 0, "the log reaches back to the start");
    let expected: Vec<u64> = (1..=300).filter(|&i| i != 50).collect();
    assert_eq!(all_after(&f, 0).unwrap(), expected);
    assert_eq!(all_after(&f, 250).unwrap(), (251..=300).collect::<Vec<_>>());
}

#[test]
fn a_purged_log_a_hole_or_a_clear_ends_what_the_log_can_tell() {
    let purged = windowed(FakeLog {
        first: 101,
        entries: log(300, &[]),
    });
    assert_eq!(purged.compacted(), 100);
    assert_eq!(all_after(&purged, 50).unwrap_err().revision, 100);
    assert_eq!(all_after(&purged, 100).unwrap().len(), 200);

    let mut with_hole = log(300, &[]);
    with_hole.retain(|(i, _)| *i != 120);
    let f = windowed(FakeLog {
        first: 1,
        entries: with_hole,
    });
    assert_eq!(all_after(&f, 10).unwrap_err().revision, 120);
    assert_eq!(all_after(&f, 120).unwrap().len(), 180);

    let f = windowed(FakeLog {
        first: 1,
        entries: log(300, &[(130, vec![put("x", "1"), WriteOp::Clear])]),
    });
    assert_eq!(all_after(&f, 10).unwrap_err().revision, 130);
    assert_eq!(all_after(&f, 130).unwrap().len(), 170);
}
