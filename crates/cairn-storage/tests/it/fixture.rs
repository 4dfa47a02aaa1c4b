//! A committed data directory written by format version 1 (`tests/fixtures/format-v1`): later
//! versions of the engine must keep opening it with the same contents. Regenerate only on a
//! deliberate format change: `CAIRN_WRITE_FIXTURE=1 cargo test -p cairn-storage --test it fixture`.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_storage::{Engine, Options, SyncPolicy, WriteBatch};

/// 2100-01-01T00:00:00Z: an expiry no test run reaches.
const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(30)).into_bytes()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1")
}

fn options() -> Options {
    Options {
        sync: SyncPolicy::Never,
        segment_bytes_max: 4096,
        merge_background: false,
        merge_dead_ratio_min: 0.0,
        ..Options::default()
    }
}

fn write_fixture(dir: &Path) {
    let engine = Engine::open(dir, options()).unwrap();
    // Never overwritten: merge carries them into a merge-output segment.
    for i in 0..40u32 {
        engine
            .put(format!("stable-{i:02}").as_bytes(), &value(i))
            .unwrap();
    }
    for i in 0..150u32 {
        engine
            .put(format!("key-{:02}", i % 30).as_bytes(), &value(i))
            .unwrap();
    }
    engine.delete(b"key-03").unwrap();
    engine
        .put_with_expiry(b"ttl-far", b"later", Some(FAR_FUTURE_MS))
        .unwrap();
    engine
        .put_with_expiry(b"ttl-past", b"gone", Some(1_000))
        .unwrap();
    engine.merge().unwrap();
    let mut batch = WriteBatch::new();
    batch
        .put(b"batch-a", b"A")
        .put(b"batch-b", b"B")
        .delete(b"key-04")
        .set_version(1_000)
        .set_last_applied(b"raft:1000");
    engine.write(batch).unwrap();
    engine
        .put(&[b'L'; 100], b"a key too long to be stored inline")
        .unwrap();
    for i in 0..60u32 {
        engine
            .put(format!("fill-{i:02}").as_bytes(), &value(i))
            .unwrap();
    }
    engine.close().unwrap();
    // Reopen once so every sealed segment has its hint file.
    Engine::open(dir, options()).unwrap().close().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "LOCK" {
            fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn format_v1_fixture_opens_with_the_same_contents() {
    if std::env::var("CAIRN_WRITE_FIXTURE").is_ok() {
        let dir = fixture_dir();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        write_fixture(&dir);
        let _ = fs::remove_file(dir.join("LOCK"));
    }
    let names: Vec<String> = fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".hint")),
        "fixture has hint files: {names:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), dir.path());
    let engine = Engine::open(dir.path(), options()).unwrap();
    for i in 0..40u32 {
        assert_eq!(
            engine
                .get(format!("stable-{i:02}").as_bytes())
                .unwrap()
                .map(|b| b.to_vec()),
            Some(value(i))
        );
    }
    for i in 0..60u32 {
        assert_eq!(
            engine
                .get(format!("fill-{i:02}").as_bytes())
                .unwrap()
                .map(|b| b.to_vec()),
            Some(value(i))
        );
    }
    for k in 0..30u32 {
        let got = engine.get(format!("key-{k:02}").as_bytes()).unwrap();
        let want = match k {
            3 | 4 => None,
            _ => Some(value(k + 120)),
        };
        assert_eq!(got.map(|b| b.to_vec()), want, "key-{k:02}");
    }
    assert_eq!(
        engine.get(b"ttl-far").unwrap().as_deref(),
        Some(&b"later"[..])
    );
    assert_eq!(engine.get(b"ttl-past").unwrap(), None);
    let a = engine.get_entry(b"batch-a").unwrap().unwrap();
    assert_eq!((&a.value[..], a.version), (&b"A"[..], 1_000));
    assert_eq!(engine.get(b"batch-b").unwrap().as_deref(), Some(&b"B"[..]));
    assert_eq!(
        engine.get(&[b'L'; 100]).unwrap().as_deref(),
        Some(&b"a key too long to be stored inline"[..])
    );
    assert_eq!(engine.last_applied().as_deref(), Some(&b"raft:1000"[..]));
    assert_eq!(engine.last_sequence(), 1_061);
    assert_eq!(engine.len(), 40 + 28 + 1 + 2 + 1 + 60);
}
