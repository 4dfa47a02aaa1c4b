//! Simulated power cuts: the disk keeps only what was fsynced (file data and directory
//! entries), possibly plus a torn prefix of unsynced appends. After every cut each write
//! acknowledged under `SyncPolicy::Always` must be there, batches are all or nothing, and the
//! last-applied marker matches its batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use cairn_storage::io::sim::{SimIo, Tear};
use cairn_storage::{Engine, Options, SyncPolicy, WriteBatch};
use parking_lot::Mutex;
use rand::Rng;

const WRITERS: u64 = 4;
const KEYS_PER_WRITER: u64 = 8;
const CUTS: u64 = 12;
/// Acknowledged writes after which a missing merge is a failure rather than slowness.
const ACKS_WITHOUT_MERGE_MAX: u64 = 200_000;

fn options() -> Options {
    Options {
        sync: SyncPolicy::Always,
        segment_bytes_max: 4096,
        merge_background: true,
        merge_dead_ratio_min: 0.2,
        ..Options::default()
    }
}

fn value(key: &str, counter: u64) -> Vec<u8> {
    let mut v = format!("{key}={counter};").into_bytes();
    v.resize(v.len() + (counter % 97) as usize, b'.');
    v
}

fn counter_of(key: &str, v: &[u8]) -> u64 {
    let text = std::str::from_utf8(v).expect("utf8 value");
    let (k, rest) = text.split_once('=').expect("value has key");
    assert_eq!(k, key, "value belongs to another key");
    let (c, pad) = rest.split_once(';').expect("value has counter");
    let c: u64 = c.parse().expect("counter");
    assert_eq!(pad.len() as u64, c % 97, "value torn");
    c
}

/// Per key: highest acknowledged counter, highest attempted counter.
type Ledger = HashMap<String, (Option<u64>, u64)>;

#[test]
fn acknowledged_writes_survive_power_cuts() {
    let io = SimIo::new(0x5eed);
    let dir = Path::new("/sim/db");
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut rng = rand::rng();
    let mut merged_total = 0;
    for cut in 0..CUTS {
        let engine = Arc::new(Engine::open_with_io(dir, options(), Arc::new(io.clone())).unwrap());
        verify(&engine, &ledger.lock());
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for t in 0..WRITERS {
            let (engine, ledger, stop, acks) =
                (engine.clone(), ledger.clone(), stop.clone(), acks.clone());
            handles.push(thread::spawn(move || {
                writer(t, &engine, &ledger, &stop, &acks)
            }));
        }
        // Merge all the time too, so cuts land inside merges (every step must be crash-safe).
        let merges = Arc::new(AtomicU64::new(0));
        let merger = {
            let (engine, stop, merges) = (engine.clone(), stop.clone(), merges.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match engine.merge() {
                        Ok(n) => merges.fetch_add(n as u64, Ordering::Relaxed),
                        Err(_) => return, // the power is off
                    };
                }
            })
        };
        // Every other cut waits until a merge has completed, so cuts also land after merges
        // whatever the machine's speed.
        let target = rng.random_range(50..600);
        let need_merge = cut % 2 == 1;
        while acks.load(Ordering::Relaxed) < target
            || (need_merge && merges.load(Ordering::Relaxed) == 0)
        {
            assert!(
                acks.load(Ordering::Relaxed) < ACKS_WITHOUT_MERGE_MAX,
                "merge never completed"
            );
            thread::yield_now();
        }
        merged_total += merges.load(Ordering::Relaxed);
        let tear = if cut % 2 == 0 {
            Tear::RandomPrefix
        } else {
            Tear::None
        };
        io.power_cut(tear);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        merger.join().unwrap();
        drop(engine);
        io.restart();
    }
    let engine = Engine::open_with_io(dir, options(), Arc::new(io.clone())).unwrap();
    verify(&engine, &ledger.lock());
    assert_eq!(io.cuts(), CUTS);
    assert!(merged_total > 0, "no merge ran between cuts");
}

fn writer(t: u64, engine: &Engine, ledger: &Mutex<Ledger>, stop: &AtomicBool, acks: &AtomicU64) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        if t == 0 && i % 5 == 0 {
            // An atomic pair plus the marker.
            let c = ledger.lock().get("batch-a").map_or(0, |e| e.1) + 1;
            for k in ["batch-a", "batch-b"] {
                ledger.lock().entry(k.into()).or_insert((None, 0)).1 = c;
            }
            let mut b = WriteBatch::new();
            b.put(b"batch-a", &value("batch-a", c))
                .put(b"batch-b", &value("batch-b", c));
            b.set_last_applied(format!("{c}").as_bytes());
            if engine.write(b).is_err() {
                return;
            }
            for k in ["batch-a", "batch-b"] {
                ledger.lock().get_mut(k).expect("recorded").0 = Some(c);
            }
        } else {
            let key = format!("w{t}-k{}", i % KEYS_PER_WRITER);
            let c = {
                let mut l = ledger.lock();
                let e = l.entry(key.clone()).or_insert((None, 0));
                e.1 += 1;
                e.1
            };
            if engine.put(key.as_bytes(), &value(&key, c)).is_err() {
                return;
            }
            ledger.lock().get_mut(&key).expect("recorded").0 = Some(c);
        }
        acks.fetch_add(1, Ordering::Relaxed);
    }
}

fn verify(engine: &Engine, ledger: &Ledger) {
    for (key, (acked, attempted)) in ledger {
        let got = engine.get(key.as_bytes()).unwrap();
        match (got, acked) {
            (None, None) => {}
            (None, Some(a)) => panic!("{key}: acknowledged counter {a} lost"),
            (Some(v), acked) => {
                let c = counter_of(key, &v);
                assert!(
                    c <= *attempted,
                    "{key}: counter {c} was never written (max {attempted})"
                );
                if let Some(a) = acked {
                    assert!(c >= *a, "{key}: counter {c} older than acknowledged {a}");
                }
            }
        }
    }
    let a = engine
        .get(b"batch-a")
        .unwrap()
        .map(|v| counter_of("batch-a", &v));
    let b = engine
        .get(b"batch-b")
        .unwrap()
        .map(|v| counter_of("batch-b", &v));
    assert_eq!(a, b, "batch is not atomic");
    let marker = engine.last_applied().map(|m| {
        String::from_utf8(m.to_vec())
            .unwrap()
            .parse::<u64>()
            .unwrap()
    });
    assert_eq!(marker, a, "marker does not match its batch");
    // Every key in the engine is one the ledger knows: nothing invented.
    for e in engine
        .scan(
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            usize::MAX,
        )
        .unwrap()
    {
        let key = String::from_utf8(e.key.to_vec()).unwrap();
        assert!(ledger.contains_key(&key), "invented key {key}");
    }
}

/// `SyncPolicy::EveryMs`: a write is not durable on return, but the background thread makes it
/// durable soon after; `Never` leaves it to `sync()`.
#[test]
fn every_ms_and_never_sync_policies() {
    let dir = Path::new("/sim/every-ms");
    let io = SimIo::new(3);
    let options = Options {
        sync: SyncPolicy::EveryMs(5),
        ..Options::default()
    };
    let engine = Engine::open_with_io(dir, options.clone(), Arc::new(io.clone())).unwrap();
    engine.put(b"k", b"v").unwrap();
    // Wait for the background sync (polling, bounded: a liveness check, not a timing one).
    let mut polls = 0;
    while engine.stats().syncs == 0 {
        polls += 1;
        assert!(polls < 30_000, "the background thread never synced");
        thread::sleep(std::time::Duration::from_millis(1));
    }
    io.power_cut(Tear::None);
    drop(engine);
    io.restart();
    let engine = Engine::open_with_io(dir, options, Arc::new(io.clone())).unwrap();
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(engine);

    let options = Options {
        sync: SyncPolicy::Never,
        ..Options::default()
    };
    let engine = Engine::open_with_io(dir, options.clone(), Arc::new(io.clone())).unwrap();
    engine.put(b"synced", b"1").unwrap();
    engine.sync().unwrap();
    engine.put(b"unsynced", b"2").unwrap();
    io.power_cut(Tear::None);
    drop(engine);
    io.restart();
    let engine = Engine::open_with_io(dir, options, Arc::new(io.clone())).unwrap();
    assert_eq!(engine.get(b"synced").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        engine.get(b"unsynced").unwrap(),
        None,
        "Never must not sync on its own"
    );
}
