//! Many readers and writers while merge runs: nothing lost, nothing torn, group commit shares
//! fsyncs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use cairn_storage::{Engine, Options, SyncPolicy};
use rand::Rng;

const WRITERS: u64 = 4;
const READERS: u64 = 4;
const WRITES_PER_WRITER: u64 = 1500;
const KEYS_PER_WRITER: u64 = 64;

fn value(key: &str, counter: u64) -> Vec<u8> {
    let mut v = format!("{key}={counter};").into_bytes();
    v.resize(v.len() + (counter % 40) as usize, b'~');
    v
}

fn parse(key: &str, v: &[u8]) -> u64 {
    let text = std::str::from_utf8(v).expect("utf8");
    let (k, rest) = text.split_once('=').expect("key");
    assert_eq!(k, key, "value of another key");
    let (c, pad) = rest.split_once(';').expect("counter");
    let c: u64 = c.parse().expect("number");
    assert_eq!(pad.len() as u64, c % 40, "torn value");
    c
}

#[test]
fn readers_and_writers_while_merging() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        sync: SyncPolicy::Never,
        segment_bytes_max: 16 * 1024,
        merge_background: true,
        merge_dead_ratio_min: 0.2,
        ..Options::default()
    };
    let engine = Arc::new(Engine::open(dir.path(), options.clone()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..WRITERS {
        let engine = engine.clone();
        writers.push(thread::spawn(move || {
            for i in 1..=WRITES_PER_WRITER {
                let key = format!("w{t}-{}", i % KEYS_PER_WRITER);
                engine.put(key.as_bytes(), &value(&key, i)).unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (engine, done) = (engine.clone(), done.clone());
        readers.push(thread::spawn(move || {
            let mut rng = rand::rng();
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let key = format!(
                    "w{}-{}",
                    rng.random_range(0..WRITERS),
                    rng.random_range(0..KEYS_PER_WRITER)
                );
                if let Some(v) = engine.get(key.as_bytes()).unwrap() {
                    parse(&key, &v);
                }
                for e in engine.scan_prefix(b"w1-", 16).unwrap() {
                    parse(std::str::from_utf8(&e.key).unwrap(), &e.value);
                }
                reads += 1;
            }
            reads
        }));
    }
    let merger = {
        let (engine, done) = (engine.clone(), done.clone());
        thread::spawn(move || {
            let mut merged = 0;
            while !done.load(Ordering::Relaxed) {
                merged += engine.merge().unwrap();
            }
            merged
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let merged = merger.join().unwrap();
    assert!(merged > 0, "merge never ran");
    let check = |engine: &Engine| {
        for t in 0..WRITERS {
            for k in 0..KEYS_PER_WRITER {
                let key = format!("w{t}-{k}");
                // The last counter written to key k by writer t.
                let last = (1..=WRITES_PER_WRITER)
                    .filter(|i| i % KEYS_PER_WRITER == k)
                    .max()
                    .unwrap();
                let v = engine.get(key.as_bytes()).unwrap().expect("key lost");
                assert_eq!(parse(&key, &v), last, "{key}");
            }
        }
    };
    check(&engine);
    let engine = Arc::try_unwrap(engine).unwrap();
    engine.close().unwrap();
    let engine = Engine::open(dir.path(), options).unwrap();
    check(&engine);
}

#[test]
fn concurrent_durable_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), Options::default()).unwrap());
    let threads = 16;
    let per_thread = 20;
    thread::scope(|s| {
        for t in 0..threads {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..per_thread {
                    engine.put(format!("{t}/{i}").as_bytes(), b"v").unwrap();
                }
            });
        }
    });
    let stats = engine.stats();
    assert_eq!(stats.writes, threads * per_thread);
    // Each write waited for a sync; with 16 writers at least some must have shared one.
    assert!(stats.syncs > 0, "{} writes and not one fsync", stats.writes);
    assert!(
        stats.syncs < stats.writes,
        "no group commit: {} syncs for {} writes",
        stats.syncs,
        stats.writes
    );
}

/// `get_many` sees a batch whole or not at all, whether values come from the cache or from
/// the segments, while merge moves records underneath.
#[test]
fn get_many_sees_batches_whole() {
    const ROUNDS: u64 = 3000;
    let keys: Vec<String> = (0..6).map(|i| format!("account-{i}")).collect();
    for cache_bytes in [0, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            sync: SyncPolicy::Never,
            segment_bytes_max: 16 * 1024,
            merge_background: true,
            merge_dead_ratio_min: 0.2,
            cache_bytes,
            ..Options::default()
        };
        let engine = Arc::new(Engine::open(dir.path(), options).unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (engine, keys, done) = (engine.clone(), keys.clone(), done.clone());
            thread::spawn(move || {
                for round in 1..=ROUNDS {
                    let mut batch = cairn_storage::WriteBatch::new();
                    for key in &keys {
                        batch.put(key.as_bytes(), &value(key, round));
                    }
                    engine.write(batch).unwrap();
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let (mut reads, mut last) = (0u64, 0u64);
        while !done.load(Ordering::Relaxed) || last < ROUNDS {
            let got = engine.get_many(&refs).unwrap();
            reads += 1;
            if got.iter().all(Option::is_none) {
                continue;
            }
            let rounds: Vec<u64> = got
                .iter()
                .zip(&keys)
                .map(|(e, key)| parse(key, &e.as_ref().expect("a key of a written batch").value))
                .collect();
            assert!(
                rounds.iter().all(|&r| r == rounds[0]),
                "get_many saw parts of different batches: {rounds:?} (cache {cache_bytes})"
            );
            assert!(rounds[0] >= last, "went back in time");
            last = rounds[0];
        }
        writer.join().unwrap();
        assert!(
            reads > 100,
            "the reader raced the writer only {reads} times"
        );
    }
}
