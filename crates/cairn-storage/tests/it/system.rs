//! The system table: records written atomically with batches, invisible to every user-facing
//! read, read back by `system_get`/`system_range`/`get_many_guarded`, and kept exactly (records
//! and system version) across reopen, with or without hint files, merge, checkpoints and torn
//! batches. The model and power-cut tests run system records too.

use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_storage::io::sim::{PowerCut, SimIo};
use cairn_storage::{Engine, Options, WriteBatch};

use crate::support::small_options;

/// Sizes and kinds from the segment format (docs/design.md).
const SEGMENT_HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 32;
const KIND_SYSTEM_PUT: u8 = 4;
const KIND_SYSTEM_DELETE: u8 = 5;

/// The whole system table, in key order.
fn table(engine: &Engine) -> Vec<(Bytes, Bytes)> {
    engine.system_range(Bound::Unbounded, Bound::Unbounded, usize::MAX)
}

fn pairs(items: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
    items
        .iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// How many records of `kind` the segment files in `dir` hold.
fn records_of_kind(dir: &Path, kind: u8) -> usize {
    let mut n = 0;
    for seg in files(dir, ".seg") {
        let data = fs::read(seg).unwrap();
        let mut at = SEGMENT_HEADER_BYTES;
        while at + RECORD_HEADER_BYTES <= data.len() {
            let len = |o: usize| u32::from_le_bytes(data[at + o..at + o + 4].try_into().unwrap());
            n += usize::from(data[at + 4] == kind);
            at += RECORD_HEADER_BYTES + len(8) as usize + len(12) as usize;
        }
    }
    n
}

#[test]
fn system_records_are_invisible_to_user_reads() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert_eq!((engine.system_len(), engine.system_version()), (0, 0));
    engine.put(b"user", b"u").unwrap();
    let mut batch = WriteBatch::new();
    batch
        .put(b"k", b"v")
        // The same key in both keyspaces: neither sees the other.
        .put_system(b"k", b"system-k")
        .put_system(b"lock/k", b"txn-1")
        .put_system(b"lock/z", b"txn-2")
        .set_version(10);
    assert_eq!(batch.len(), 4);
    engine.write(batch).unwrap();
    let mut only_system = WriteBatch::new();
    only_system.put_system(b"txn/1", b"pending");
    engine.write(only_system).unwrap();

    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(engine.get(b"lock/k").unwrap(), None);
    assert_eq!(engine.get(b"txn/1").unwrap(), None);
    assert_eq!(engine.get_entry(b"lock/z").unwrap(), None);
    assert_eq!(engine.meta(b"lock/z"), None);
    let many = engine.get_many(&[b"lock/k", b"k", b"txn/1"]).unwrap();
    assert!(many[0].is_none() && many[2].is_none());
    assert_eq!(many[1].as_ref().unwrap().value.as_ref(), b"v");
    let keys: Vec<Bytes> = engine
        .scan(Bound::Unbounded, Bound::Unbounded, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, vec![Bytes::from("k"), Bytes::from("user")]);
    assert_eq!(
        engine
            .scan_keys(Bound::Unbounded, Bound::Unbounded, 100)
            .len(),
        2
    );
    assert!(engine.scan_prefix(b"lock/", 100).unwrap().is_empty());
    assert!(engine.scan_prefix(b"txn", 100).unwrap().is_empty());
    assert!(engine.expired_keys(100).is_empty());
    assert_eq!(engine.len(), 2);
    assert!(!engine.is_empty());
    assert_eq!(engine.stats().live_keys, 2);

    assert_eq!(engine.system_get(b"k").as_deref(), Some(&b"system-k"[..]));
    assert_eq!(engine.system_get(b"user"), None);
    assert_eq!(engine.system_len(), 4);
    assert_eq!(engine.system_version(), 11);
    assert_eq!(
        engine.system_range(Bound::Included(b"lock/"), Bound::Excluded(b"lock0"), 10),
        pairs(&[("lock/k", "txn-1"), ("lock/z", "txn-2")])
    );
    assert_eq!(
        engine.system_range(Bound::Excluded(b"k"), Bound::Unbounded, 2),
        pairs(&[("lock/k", "txn-1"), ("lock/z", "txn-2")])
    );
    assert!(
        engine
            .system_range(Bound::Included(b"z"), Bound::Excluded(b"a"), 10)
            .is_empty(),
        "an inverted range is empty, not a panic"
    );
    assert!(
        engine
            .system_range(Bound::Unbounded, Bound::Unbounded, 0)
            .is_empty()
    );

    // A user delete of the key leaves its system twin alone, and a system delete the user key.
    assert!(engine.delete(b"k").unwrap());
    assert_eq!(engine.system_get(b"k").as_deref(), Some(&b"system-k"[..]));
    engine.put(b"k", b"v2").unwrap();
    let version_before = engine.system_version();
    let mut batch = WriteBatch::new();
    batch.delete_system(b"k").delete_system(b"never-there");
    engine.write(batch).unwrap();
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(engine.system_get(b"k"), None);
    assert_eq!(engine.system_len(), 3);
    assert!(
        engine.system_version() > version_before,
        "a delete, even of an absent record, is a change"
    );
    assert_eq!(engine.system_version(), engine.last_sequence());
    // User writes do not move the system version.
    engine.put(b"other", b"x").unwrap();
    assert!(engine.system_version() < engine.last_sequence());
    assert_eq!(engine.len(), 3);
}

#[test]
fn system_values_are_not_held_to_the_user_value_limit() {
    // A replicated entry must apply on every replica: a system value (a transaction record
    // holding other shards' writes) may be larger than any user value, and survives reopen.
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        value_bytes_max: 8,
        ..small_options()
    };
    let engine = Engine::open(dir.path(), options.clone()).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"k", b"v").put_system(b"s", &[7u8; 100]);
    engine.write(batch).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"k", &[0u8; 9]).put_system(b"t", b"x");
    assert!(matches!(
        engine.write(batch),
        Err(cairn_storage::Error::ValueTooLarge { len: 9, max: 8 })
    ));
    assert_eq!(engine.system_get(b"t"), None, "the batch failed whole");
    drop(engine);
    let engine = Engine::open(dir.path(), options).unwrap();
    assert_eq!(engine.system_get(b"s").as_deref(), Some(&[7u8; 100][..]));
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn get_many_guarded_reads_guards_at_prefix_plus_key() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    engine.put(b"a", b"1").unwrap();
    engine.put(b"b", b"2").unwrap();
    // An empty system table: no guards, system version 0.
    let read = engine
        .get_many_guarded(&[b"a", b"b", b"c"], b"lock/")
        .unwrap();
    assert_eq!(read.entries, engine.get_many(&[b"a", b"b", b"c"]).unwrap());
    assert_eq!(read.guards, vec![None, None, None]);
    assert_eq!(read.system_version, 0);

    let mut batch = WriteBatch::new();
    batch
        .put(b"c", b"3")
        .put_system(b"lock/b", b"txn-7")
        .put_system(b"lock/c", b"txn-8")
        // Not at prefix ++ key for any key read.
        .put_system(b"b", b"not-a-guard")
        .put_system(b"lock/", b"empty-key-guard")
        .set_version(50);
    engine.write(batch).unwrap();
    let keys: [&[u8]; 5] = [b"a", b"b", b"c", b"missing", b"b"];
    let read = engine.get_many_guarded(&keys, b"lock/").unwrap();
    assert_eq!(read.entries, engine.get_many(&keys).unwrap());
    assert_eq!(read.entries[2].as_ref().unwrap().version, 50);
    assert!(read.entries[3].is_none());
    let guards: Vec<Option<&[u8]>> = read.guards.iter().map(|g| g.as_deref()).collect();
    assert_eq!(
        guards,
        vec![
            None,
            Some(&b"txn-7"[..]),
            Some(&b"txn-8"[..]),
            None,
            Some(&b"txn-7"[..])
        ]
    );
    assert_eq!(read.system_version, 50);
    // One key at a time: the same answers, on the locked path and, once the table is empty
    // again, on the lock-free one.
    for (i, key) in keys.iter().enumerate() {
        let (entry, guard) = engine.get_guarded(key, b"lock/").unwrap();
        assert_eq!(entry, read.entries[i], "{i}");
        assert_eq!(guard, read.guards[i], "{i}");
    }
    // An empty prefix guards with the key itself.
    let read = engine.get_many_guarded(&[b"b"], b"").unwrap();
    assert_eq!(read.guards[0].as_deref(), Some(&b"not-a-guard"[..]));
    let none = engine.get_many_guarded(&[], b"lock/").unwrap();
    assert!(none.entries.is_empty() && none.guards.is_empty());

    let mut release = WriteBatch::new();
    release.delete_system(b"lock/b").set_version(60);
    engine.write(release).unwrap();
    let read = engine.get_many_guarded(&[b"b", b"c"], b"lock/").unwrap();
    assert_eq!(read.guards[0], None);
    assert_eq!(read.guards[1].as_deref(), Some(&b"txn-8"[..]));
    assert_eq!(read.system_version, 60);
    let mut clear = WriteBatch::new();
    for key in [&b"lock/c"[..], b"b", b"lock/"] {
        clear.delete_system(key);
    }
    engine.write(clear).unwrap();
    assert_eq!(engine.system_len(), 0);
    assert_eq!(
        engine.get_guarded(b"b", b"lock/").unwrap(),
        (engine.get_entry(b"b").unwrap(), None)
    );
    let mut relock = WriteBatch::new();
    relock.put_system(b"lock/a", b"txn-9");
    engine.write(relock).unwrap();
    assert_eq!(
        engine.get_guarded(b"a", b"lock/").unwrap().1.as_deref(),
        Some(&b"txn-9"[..]),
        "a lock taken after the table was empty is seen"
    );
    let mut clear = WriteBatch::new();
    clear.delete_system(b"lock/a");
    engine.write(clear).unwrap();
}

/// Writes system records across many small segments: puts, overwrites and deletes, with user
/// writes between them. Returns the expected table; the last system batch deletes only, so
/// only a tombstone carries the system version.
fn churn(engine: &Engine) -> Vec<(Bytes, Bytes)> {
    let mut version = 0;
    for round in 0..40u32 {
        let mut batch = WriteBatch::new();
        batch
            .put(format!("user-{}", round % 7).as_bytes(), &[b'u'; 300])
            .put_system(
                format!("lock/{:02}", round % 10).as_bytes(),
                format!("txn-{round}").as_bytes(),
            );
        if round % 3 == 0 {
            batch.delete_system(format!("lock/{:02}", (round + 5) % 10).as_bytes());
        }
        version += 10;
        batch.set_version(version);
        engine.write(batch).unwrap();
    }
    // User writes only, then a batch that only deletes system records.
    for i in 0..30u32 {
        engine
            .put(format!("user-{i}").as_bytes(), b"later")
            .unwrap();
    }
    let mut last = WriteBatch::new();
    last.delete_system(b"lock/00").delete_system(b"lock/01");
    engine.write(last).unwrap();
    for i in 0..30u32 {
        engine
            .put(format!("user-{i}").as_bytes(), b"latest")
            .unwrap();
    }
    table(engine)
}

#[test]
fn reopen_restores_the_system_table_and_version_with_and_without_hints() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    let expected = churn(&engine);
    let version = engine.system_version();
    assert!(!expected.is_empty());
    assert!(version > 400, "the delete-only batch came last: {version}");
    assert_eq!(
        engine.system_get(b"lock/00"),
        None,
        "deleted by the last system batch"
    );
    engine.close().unwrap();

    // The first reopen scans whatever has no hint and writes hints; the second reads them.
    for round in ["scan", "hints"] {
        let engine = Engine::open(dir.path(), small_options()).unwrap();
        assert_eq!(table(&engine), expected, "{round}");
        assert_eq!(engine.system_version(), version, "{round}");
        assert_eq!(engine.system_len(), expected.len(), "{round}");
        assert_eq!(engine.len(), 30, "{round}");
        engine.close().unwrap();
    }
    // Every sealed segment (all but the active one) has its hint.
    let segments = files(dir.path(), ".seg").len();
    assert!(segments > 3, "{segments} segments");
    assert_eq!(files(dir.path(), ".hint").len(), segments - 1);

    // Without any hint file: everything comes from scanning the segments.
    for hint in files(dir.path(), ".hint") {
        fs::remove_file(hint).unwrap();
    }
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert_eq!(table(&engine), expected);
    assert_eq!(engine.system_version(), version);
}

#[test]
fn merge_keeps_live_system_records_and_drops_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    let expected = churn(&engine);
    let version = engine.system_version();
    assert!(records_of_kind(dir.path(), KIND_SYSTEM_PUT) > expected.len());
    // Seal the active segment so every system record is in a sealed one (then no segment
    // outside the merge holds anything a tombstone could shadow).
    drop(engine.checkpoint().unwrap());
    assert!(engine.merge().unwrap() > 0);
    assert_eq!(table(&engine), expected);
    assert_eq!(engine.system_version(), version);
    assert_eq!(
        records_of_kind(dir.path(), KIND_SYSTEM_PUT),
        expected.len(),
        "exactly the live system puts are left"
    );
    assert_eq!(
        records_of_kind(dir.path(), KIND_SYSTEM_DELETE),
        1,
        "only the tombstone that carries the system version is left"
    );
    // Everything left is live (keys, marker-free here, system puts, the pinned tombstone): a
    // segment of live system records is not merged over and over.
    assert_eq!(engine.stats().dead_bytes, 0);
    assert_eq!(engine.merge().unwrap(), 0);
    engine.close().unwrap();

    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert_eq!(table(&engine), expected);
    assert_eq!(engine.system_version(), version);
    assert_eq!(
        engine.merge().unwrap(),
        0,
        "accounted as live after a reopen too"
    );
    // Once a later batch changes the system table, the old tombstone is dead like any other.
    let mut batch = WriteBatch::new();
    batch.put_system(b"lock/new", b"txn-new");
    engine.write(batch).unwrap();
    let version = engine.system_version();
    drop(engine.checkpoint().unwrap());
    assert!(engine.merge().unwrap() > 0);
    assert_eq!(records_of_kind(dir.path(), KIND_SYSTEM_DELETE), 0);
    assert_eq!(
        records_of_kind(dir.path(), KIND_SYSTEM_PUT),
        expected.len() + 1
    );
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert_eq!(engine.system_version(), version);
    assert_eq!(engine.system_len(), expected.len() + 1);
}

/// A batch whose commit record did not reach the disk is dropped whole, its system records
/// with it, wherever the tear cuts it.
#[test]
fn a_torn_batch_loses_its_system_records_too() {
    let options = Options {
        segment_bytes_max: 1 << 20,
        ..small_options()
    };
    let dir = Path::new("/sim/torn");
    let io = SimIo::new(5);
    let engine = Engine::open_with_io(dir, options.clone(), Arc::new(io.clone())).unwrap();
    let mut first = WriteBatch::new();
    first
        .put(b"k1", b"one")
        .put_system(b"lock/a", b"txn-1")
        .set_version(7)
        .set_last_applied(b"7");
    engine.write(first).unwrap();
    engine.sync().unwrap();
    // Unsynced (`SyncPolicy::Never`): a power cut keeps some prefix of it.
    let mut second = WriteBatch::new();
    second
        .put_system(b"lock/b", b"txn-2")
        .delete_system(b"lock/a")
        .put(b"k2", b"two")
        .put_system(b"txn/2", &[b't'; 64])
        .set_version(8)
        .set_last_applied(b"8");
    engine.write(second).unwrap();
    for kept_per_mille in (0..=1000).step_by(7).chain([999, 1000]) {
        let image = io.crash_image(PowerCut::KeepPrefix { kept_per_mille });
        let after = Engine::open_with_io(dir, options.clone(), Arc::new(image)).unwrap();
        let whole = kept_per_mille == 1000;
        let expect = if whole {
            pairs(&[("lock/b", "txn-2"), ("txn/2", &"t".repeat(64))])
        } else {
            pairs(&[("lock/a", "txn-1")])
        };
        assert_eq!(table(&after), expect, "kept {kept_per_mille}‰");
        assert_eq!(after.system_version(), if whole { 8 } else { 7 });
        assert_eq!(after.get(b"k2").unwrap().is_some(), whole);
        assert_eq!(
            after.last_applied().as_deref(),
            Some(if whole { &b"8"[..] } else { &b"7"[..] })
        );
    }
}
