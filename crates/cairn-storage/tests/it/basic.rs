//! The front door: reads, writes, batches, scans, TTL, limits, reopen.

use std::ops::Bound;

use cairn_storage::{Engine, Error, KEY_BYTES_MAX, Options, WriteBatch, now_ms};

use crate::support::small_options;

#[test]
fn put_get_delete_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    engine.put(b"a", b"1").unwrap();
    engine.put(b"b", b"2").unwrap();
    engine.put(b"a", b"3").unwrap();
    assert!(engine.delete(b"b").unwrap());
    assert!(!engine.delete(b"b").unwrap());
    assert_eq!(engine.get(b"a").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(engine.get(b"b").unwrap(), None);
    let version = engine.get_entry(b"a").unwrap().unwrap().version;
    engine.close().unwrap();

    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    let entry = engine.get_entry(b"a").unwrap().unwrap();
    assert_eq!((&entry.value[..], entry.version), (&b"3"[..], version));
    assert_eq!(engine.get(b"b").unwrap(), None);
    assert_eq!(engine.len(), 1);
    assert_eq!(engine.stats().last_sequence, 4);
}

/// A Raft log starts at index 0: the first batch of a fresh engine may carry version 0, and
/// only the first (also after a reopen).
#[test]
fn version_zero_is_accepted_once_on_a_fresh_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    let mut first = WriteBatch::new();
    first.set_version(0).set_last_applied(b"index 0");
    engine.write(first).unwrap();
    let mut again = WriteBatch::new();
    again.put(b"k", b"v").set_version(0);
    assert!(matches!(
        engine.write(again),
        Err(Error::VersionNotIncreasing { given: 0, last: 0 })
    ));
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    let mut after_reopen = WriteBatch::new();
    after_reopen.put(b"k", b"v").set_version(0);
    assert!(
        engine.write(after_reopen).is_err(),
        "not fresh after a reopen"
    );
    let mut next = WriteBatch::new();
    next.put(b"k", b"v").set_version(1);
    engine.write(next).unwrap();
    assert_eq!(engine.meta(b"k").unwrap().version, 1);
}

#[test]
fn batch_versions_and_marker() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    let mut batch = WriteBatch::new();
    batch
        .put(b"x", b"1")
        .put(b"y", b"2")
        .delete(b"x")
        .set_version(100)
        .set_last_applied(b"idx-100");
    assert_eq!(batch.len(), 3);
    engine.write(batch).unwrap();
    assert_eq!(engine.get(b"x").unwrap(), None);
    assert_eq!(engine.get_entry(b"y").unwrap().unwrap().version, 100);
    let mut stale = WriteBatch::new();
    stale.put(b"z", b"3").set_version(100);
    assert!(matches!(
        engine.write(stale),
        Err(Error::VersionNotIncreasing {
            given: 100,
            last: 100
        })
    ));
    engine.put(b"z", b"4").unwrap();
    assert_eq!(engine.meta(b"z").unwrap().version, 101);
    engine.close().unwrap();

    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert_eq!(engine.last_applied().as_deref(), Some(&b"idx-100"[..]));
    assert_eq!(engine.last_sequence(), 101);
}

#[test]
fn scans_are_ordered_bounded_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    for k in ["b", "a/1", "a/3", "a/2", "c", "a"] {
        engine.put(k.as_bytes(), k.as_bytes()).unwrap();
    }
    let keys = |v: Vec<cairn_storage::Entry>| {
        v.into_iter()
            .map(|e| String::from_utf8(e.key.to_vec()).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(engine.scan_prefix(b"a/", 10).unwrap()),
        ["a/1", "a/2", "a/3"]
    );
    assert_eq!(keys(engine.scan_prefix(b"a/", 2).unwrap()), ["a/1", "a/2"]);
    assert_eq!(
        keys(
            engine
                .scan(Bound::Excluded(b"a/3"), Bound::Included(b"c"), 10)
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        keys(
            engine
                .scan(Bound::Included(b"c"), Bound::Included(b"a"), 10)
                .unwrap()
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        engine
            .scan_keys(Bound::Unbounded, Bound::Unbounded, 100)
            .len(),
        6
    );
}

#[test]
fn expired_keys_are_invisible_at_once_and_reclaimed_by_merge() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    engine
        .put_with_expiry(b"gone", b"v", Some(now_ms() - 1))
        .unwrap();
    engine
        .put_with_expiry(b"later", b"v", Some(now_ms() + 3_600_000))
        .unwrap();
    assert_eq!(engine.get(b"gone").unwrap(), None);
    assert!(engine.meta(b"gone").is_none());
    assert_eq!(engine.len(), 1);
    assert_eq!(engine.expired_keys(10).len(), 1);
    assert!(
        engine
            .get_entry(b"later")
            .unwrap()
            .unwrap()
            .expires_at_ms
            .is_some()
    );
    // Fill segments so the expired record sits in a sealed segment, then merge.
    for i in 0..200u32 {
        engine
            .put(format!("fill{i}").as_bytes(), &[0u8; 64])
            .unwrap();
    }
    assert!(engine.merge().unwrap() > 0);
    assert_eq!(engine.stats().live_keys, 201);
    assert_eq!(engine.expired_keys(10).len(), 0);
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert_eq!(engine.get(b"gone").unwrap(), None);
    assert_eq!(engine.len(), 201);
}

#[test]
fn limits_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        value_bytes_max: 10,
        ..small_options()
    };
    let engine = Engine::open(dir.path(), options).unwrap();
    // The empty key is a key like any other (Redis accepts it too).
    engine.put(b"", b"empty").unwrap();
    assert_eq!(engine.get(b"").unwrap().as_deref(), Some(&b"empty"[..]));
    let big_key = vec![1u8; KEY_BYTES_MAX + 1];
    assert!(matches!(
        engine.put(&big_key, b"v"),
        Err(Error::KeyTooLarge { .. })
    ));
    engine.put(&vec![1u8; KEY_BYTES_MAX], b"v").unwrap();
    assert!(matches!(
        engine.put(b"k", &[0u8; 11]),
        Err(Error::ValueTooLarge { len: 11, max: 10 })
    ));
    let mut batch = WriteBatch::new();
    batch.put(b"ok", b"v").put(&big_key, b"v");
    assert!(matches!(
        engine.write(batch),
        Err(Error::KeyTooLarge { .. })
    ));
    assert_eq!(
        engine.get(b"ok").unwrap(),
        None,
        "a rejected batch writes nothing"
    );
}

#[test]
fn second_open_of_a_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    assert!(matches!(
        Engine::open(dir.path(), small_options()),
        Err(Error::Locked(_))
    ));
    drop(engine);
    Engine::open(dir.path(), small_options()).unwrap();
}

#[test]
fn long_scans_cross_lock_chunks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    let keys: Vec<String> = (0..3000).map(|i| format!("k{i:05}")).collect();
    for chunk in keys.chunks(500) {
        let mut b = WriteBatch::new();
        for k in chunk {
            b.put(k.as_bytes(), k.as_bytes());
        }
        engine.write(b).unwrap();
    }
    engine
        .put_with_expiry(b"k00007", b"x", Some(now_ms() - 1))
        .unwrap();
    let all = engine
        .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap();
    assert_eq!(all.len(), 2999);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    assert!(all.iter().all(|e| e.key == e.value));
    let some = engine
        .scan(Bound::Excluded(b"k00100"), Bound::Unbounded, 1500)
        .unwrap();
    assert_eq!((some.len(), &some[0].key[..]), (1500, &b"k00101"[..]));
    assert_eq!(&some[1499].key[..], b"k01600");
    assert_eq!(
        engine
            .scan_keys(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .len(),
        2999
    );
    assert_eq!(engine.len(), 2999);
    assert_eq!(engine.expired_keys(10).len(), 1);
}
