//! Storage benchmark: cairn-storage against redb and fjall on the same workloads, same run.
//!
//! ```sh
//! cd bench/storage && cargo run --release -- /path/to/scratch [keys] [--big]
//! ```
//!
//! `keys` (default 1,000,000) sizes the load; `--big` adds the 10M-key `open` measurement.
//! Results print as Markdown rows for `docs/benchmarks.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_storage::io::{Io, IoFile, StdIo};
use cairn_storage::{Engine, Options, SyncPolicy, WriteBatch};
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Counts live heap bytes, to measure the keydir's memory per key.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only adds counting.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const VALUE_BYTES: usize = 100;
const BATCH_OPS: usize = 1000;
const DURABLE_OPS_TOTAL: usize = 4000;
const GETS: usize = 500_000;
const SCANS: usize = 5_000;
const SCAN_LIMIT: usize = 100;
/// fdatasync latency of the simulated slow disk (a consumer SSD without power-loss protection
/// typically takes 1-5 ms per flush; this VM's virtual disk takes ~0.1-0.2 ms).
const SLOW_SYNC: Duration = Duration::from_millis(1);
const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

fn keys(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| format!("{:016x}", rng.random::<u64>()).into_bytes())
        .collect()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = vec![b'v'; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

/// The operations every engine under test offers.
trait Kv: Send + Sync {
    fn put(&self, key: &[u8], value: &[u8], durable: bool);
    fn put_batch(&self, items: &[(Vec<u8>, Vec<u8>)]);
    fn get(&self, key: &[u8]) -> Option<usize>;
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> usize;
    fn sync(&self);
}

struct Cairn(Engine);

impl Kv for Cairn {
    fn put(&self, key: &[u8], value: &[u8], durable: bool) {
        self.0.put(key, value).unwrap();
        if durable {
            self.0.sync().unwrap();
        }
    }
    fn put_batch(&self, items: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = WriteBatch::new();
        for (k, v) in items {
            b.put(k, v);
        }
        self.0.write(b).unwrap();
    }
    fn get(&self, key: &[u8]) -> Option<usize> {
        self.0.get(key).unwrap().map(|v| v.len())
    }
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> usize {
        self.0.scan_prefix(prefix, limit).unwrap().len()
    }
    fn sync(&self) {
        self.0.sync().unwrap();
    }
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Kv for Fjall {
    fn put(&self, key: &[u8], value: &[u8], durable: bool) {
        self.ks.insert(key, value).unwrap();
        if durable {
            self.db.persist(fjall::PersistMode::SyncData).unwrap();
        }
    }
    fn put_batch(&self, items: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = self.db.batch();
        for (k, v) in items {
            b.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        b.commit().unwrap();
    }
    fn get(&self, key: &[u8]) -> Option<usize> {
        self.ks.get(key).unwrap().map(|v| v.len())
    }
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> usize {
        self.ks
            .prefix(prefix)
            .take(limit)
            .map(|g| g.into_inner().unwrap().1.len().min(1))
            .sum()
    }
    fn sync(&self) {
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

struct Redb(redb::Database);

impl Redb {
    fn commit(&self, durable: bool, f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>)) {
        let mut tx = self.0.begin_write().unwrap();
        if !durable {
            tx.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut t = tx.open_table(REDB_TABLE).unwrap();
            f(&mut t);
        }
        tx.commit().unwrap();
    }
}

impl Kv for Redb {
    fn put(&self, key: &[u8], value: &[u8], durable: bool) {
        self.commit(durable, |t| {
            t.insert(key, value).unwrap();
        });
    }
    fn put_batch(&self, items: &[(Vec<u8>, Vec<u8>)]) {
        self.commit(false, |t| {
            for (k, v) in items {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        });
    }
    fn get(&self, key: &[u8]) -> Option<usize> {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(REDB_TABLE).unwrap();
        t.get(key).unwrap().map(|v| v.value().len())
    }
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> usize {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(REDB_TABLE).unwrap();
        let mut n = 0;
        for item in t.range(prefix..).unwrap() {
            let (k, v) = item.unwrap();
            if !k.value().starts_with(prefix) || n >= limit {
                break;
            }
            n += v.value().len().min(1);
        }
        n
    }
    fn sync(&self) {
        self.commit(true, |_| {});
    }
}

/// Real files, with every fdatasync made `SLOW_SYNC` slower.
#[derive(Debug)]
struct SlowSyncIo;

#[derive(Debug)]
struct SlowFile(Arc<dyn IoFile>);

impl IoFile for SlowFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        std::thread::sleep(SLOW_SYNC);
        self.0.sync_data()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.start_writeback(offset, len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
}

impl Io for SlowSyncIo {
    fn create_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.create_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        StdIo.list_dir(dir)
    }
    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(SlowFile(StdIo.create(path)?)))
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(SlowFile(StdIo.create_new(path)?)))
    }
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(SlowFile(StdIo.open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdIo.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        StdIo.remove(path)
    }
    fn remove_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.remove_dir(dir)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        StdIo.exists(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.sync_dir(dir)
    }
    fn lock_dir(&self, dir: &Path) -> std::io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        StdIo.lock_dir(dir)
    }
}

fn cairn_options(sync: SyncPolicy, cache_bytes: u64) -> Options {
    Options {
        sync,
        cache_bytes,
        merge_background: false,
        ..Options::default()
    }
}

fn open(kind: &str, dir: &Path, cache_bytes: u64) -> Arc<dyn Kv> {
    match kind {
        "cairn-storage" => Arc::new(Cairn(
            Engine::open(dir, cairn_options(SyncPolicy::Never, cache_bytes)).unwrap(),
        )),
        "fjall" => {
            let db = fjall::Database::builder(dir)
                .cache_size(cache_bytes.max(1 << 20))
                .open()
                .unwrap();
            let ks = db
                .keyspace("kv", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            Arc::new(Fjall { db, ks })
        }
        "redb" => {
            let mut b = redb::Database::builder();
            b.set_cache_size(cache_bytes.max(1 << 20) as usize);
            let db = b.create(dir.join("redb.db")).unwrap();
            Arc::new(Redb(db))
        }
        _ => unreachable!(),
    }
}

fn rate(ops: usize, d: Duration) -> String {
    let r = ops as f64 / d.as_secs_f64();
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.1} k/s", r / 1e3)
    }
}

struct Report {
    rows: Vec<(String, String, String, String)>,
}

impl Report {
    fn add(&mut self, workload: &str, engine: &str, result: String, note: String) {
        println!("| {workload} | {engine} | {result} | {note} |");
        self.rows
            .push((workload.into(), engine.into(), result, note));
    }
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let p = base.join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn durable_threads(kv: &Arc<dyn Kv>, threads: usize) -> Duration {
    let per = durable_ops_total().max(threads * 50) / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let kv = kv.clone();
            s.spawn(move || {
                for i in 0..per {
                    let key = format!("durable-{t}-{i}");
                    kv.put(key.as_bytes(), &value(i), true);
                }
            });
        }
    });
    start.elapsed()
}

/// Durable puts per durable workload: `BENCH_DURABLE_OPS` lengthens these runs (the default is
/// short, and so noisy).
fn durable_ops_total() -> usize {
    std::env::var("BENCH_DURABLE_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DURABLE_OPS_TOTAL)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from(
        args.get(1)
            .expect("usage: storage-bench DIR [keys] [--big]"),
    );
    let n: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let big = args.iter().any(|a| a == "--big");
    // BENCH_ENGINES=cairn-storage,redb limits the run (profiling).
    let only = std::env::var("BENCH_ENGINES").unwrap_or_default();
    let engines: Vec<&str> = ["cairn-storage", "fjall", "redb"]
        .into_iter()
        .filter(|e| only.is_empty() || only.split(',').any(|o| o == *e))
        .collect();
    let keys = keys(n, 7);
    let mut report = Report { rows: Vec::new() };
    println!("| workload | engine | result | note |\n|---|---|---|---|");

    for kind in engines.iter().copied() {
        // Random puts, no fsync per write (one sync at the end, included).
        let dir = fresh(&base, &format!("{kind}-put"));
        let kv = open(kind, &dir, 64 << 20);
        let puts = n.min(200_000);
        let start = Instant::now();
        for (i, k) in keys.iter().take(puts).enumerate() {
            kv.put(k, &value(i), false);
        }
        kv.sync();
        report.add(
            "random put, no fsync per write",
            kind,
            rate(puts, start.elapsed()),
            format!("{puts} puts, 16 B keys, 100 B values"),
        );
        drop(kv);

        // Batched puts: the full load, 1000 per batch.
        let dir = fresh(&base, &format!("{kind}-load"));
        let kv = open(kind, &dir, 256 << 20);
        let items: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), value(i)))
            .collect();
        let start = Instant::now();
        for chunk in items.chunks(BATCH_OPS) {
            kv.put_batch(chunk);
        }
        kv.sync();
        report.add(
            "batched put (1000/batch)",
            kind,
            rate(n, start.elapsed()),
            format!("{n} keys"),
        );
        drop(items);

        // Random gets, warm: read everything once, then measure.
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(9));
        for &i in order.iter().take(GETS) {
            kv.get(&keys[i]).unwrap();
        }
        let mut hist = Histogram::<u64>::new(3).unwrap();
        let start = Instant::now();
        for &i in order.iter().take(GETS) {
            let t = Instant::now();
            kv.get(&keys[i]).unwrap();
            hist.record(t.elapsed().as_nanos() as u64).unwrap();
        }
        let note = format!(
            "p50 {} ns, p99 {} ns, 1 thread",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99)
        );
        report.add(
            "random get, warm cache",
            kind,
            rate(GETS, start.elapsed()),
            note,
        );

        // Random gets, warm, from 2 threads (the machine's core count).
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..2 {
                let (kv, order, keys) = (&kv, &order, &keys);
                s.spawn(move || {
                    for &i in order.iter().skip(t).step_by(2).take(GETS / 2) {
                        kv.get(&keys[i]).unwrap();
                    }
                });
            }
        });
        report.add(
            "random get, warm cache, 2 threads",
            kind,
            rate(GETS, start.elapsed()),
            "total over both threads".into(),
        );

        // Prefix scans.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let start = Instant::now();
        let mut found = 0;
        for _ in 0..SCANS {
            let prefix = format!("{:03x}", rng.random_range(0..4096));
            found += kv.scan_prefix(prefix.as_bytes(), SCAN_LIMIT);
        }
        report.add(
            "prefix scan (3 hex chars, limit 100)",
            kind,
            rate(SCANS, start.elapsed()),
            format!("{} entries/scan avg", found / SCANS),
        );
        drop(kv);

        // Random gets, cold: reopen with the smallest cache (OS page cache stays warm).
        let kv = open(kind, &dir, 0);
        let start = Instant::now();
        for &i in order.iter().skip(GETS).chain(order.iter()).take(GETS) {
            kv.get(&keys[i]).unwrap();
        }
        report.add(
            "random get, cold engine cache",
            kind,
            rate(GETS, start.elapsed()),
            "fresh open, cache off (cairn) / 1 MiB (peers)".into(),
        );
        drop(kv);

        // Durable puts from 1, 16 and 64 threads.
        for threads in [1usize, 16, 64] {
            let dir = fresh(&base, &format!("{kind}-durable-{threads}"));
            let per = durable_ops_total().max(threads * 50) / threads;
            let total = per * threads;
            if kind == "cairn-storage" {
                for slow in [false, true] {
                    let dir = fresh(&base, &format!("{kind}-durable-{threads}-{slow}"));
                    let options = cairn_options(SyncPolicy::Always, 64 << 20);
                    let engine = if slow {
                        Engine::open_with_io(&dir, options, Arc::new(SlowSyncIo)).unwrap()
                    } else {
                        Engine::open(&dir, options).unwrap()
                    };
                    let engine = Arc::new(engine);
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let engine = engine.clone();
                            s.spawn(move || {
                                for i in 0..per {
                                    engine
                                        .put(format!("durable-{t}-{i}").as_bytes(), &value(i))
                                        .unwrap();
                                }
                            });
                        }
                    });
                    let elapsed = start.elapsed();
                    let st = engine.stats();
                    let per_sync = st.writes as f64 / st.syncs.max(1) as f64;
                    let workload = if slow {
                        format!("durable put, {threads} threads, fsync +1 ms (simulated slow disk)")
                    } else {
                        format!("durable put, {threads} threads")
                    };
                    report.add(
                        &workload,
                        kind,
                        rate(total, elapsed),
                        format!("{total} puts, {per_sync:.1} writes/fsync"),
                    );
                }
            } else {
                let kv = open(kind, &dir, 64 << 20);
                let elapsed = durable_threads(&kv, threads);
                report.add(
                    &format!("durable put, {threads} threads"),
                    kind,
                    rate(total, elapsed),
                    format!("{total} puts"),
                );
            }
        }
    }

    // Open time and keydir memory (cairn only).
    let dir = base.join("cairn-storage-load");
    open_report(&mut report, &dir, n);
    if engines.contains(&"cairn-storage") {
        // Keydir memory when built by random inserts (nodes less full than after a bulk build).
        let dir = fresh(&base, "cairn-mem");
        // One big segment: no rotation, so no background hint write holds a segment in memory
        // while we measure.
        let options = Options {
            segment_bytes_max: 2 << 30,
            ..cairn_options(SyncPolicy::Never, 0)
        };
        let engine = Engine::open(&dir, options).unwrap();
        let before = ALLOCATED.load(Ordering::Relaxed);
        for chunk in keys.chunks(BATCH_OPS) {
            let mut b = WriteBatch::new();
            for k in chunk {
                b.put(k, &value(0));
            }
            engine.write(b).unwrap();
        }
        let per_key = (ALLOCATED.load(Ordering::Relaxed) - before) as f64 / n as f64;
        report.add(
            &format!("keydir memory, {n} keys, random inserts"),
            "cairn-storage",
            format!("{:.1} B/key", per_key - 16.0),
            format!("heap growth while inserting / keys, minus the 16 B key ({per_key:.1} B/key in total)"),
        );
    }
    if big {
        let big_n = 10_000_000;
        let dir = fresh(&base, "cairn-big");
        let engine = Engine::open(&dir, cairn_options(SyncPolicy::Never, 0)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut batch = WriteBatch::new();
        for i in 0..big_n {
            batch.put(
                format!("{:016x}", rng.random::<u64>()).as_bytes(),
                &value(i),
            );
            if batch.len() == BATCH_OPS {
                engine.write(std::mem::take(&mut batch)).unwrap();
            }
        }
        engine.write(batch).unwrap();
        engine.close().unwrap();
        open_report(&mut report, &dir, big_n);
    }
}

fn open_report(report: &mut Report, dir: &Path, n: usize) {
    // First open writes hints for any segment sealed without one.
    Engine::open(dir, cairn_options(SyncPolicy::Never, 0))
        .unwrap()
        .close()
        .unwrap();
    let before = ALLOCATED.load(Ordering::Relaxed);
    let start = Instant::now();
    let engine = Engine::open(dir, cairn_options(SyncPolicy::Never, 0)).unwrap();
    let with_hints = start.elapsed();
    let after = ALLOCATED.load(Ordering::Relaxed);
    let keys = engine.stats().live_keys as usize;
    engine.close().unwrap();
    let per_key = (after - before) as f64 / keys as f64;
    report.add(
        &format!("open, {n} keys, with hints"),
        "cairn-storage",
        format!("{:.2} s", with_hints.as_secs_f64()),
        format!("{keys} keys"),
    );
    report.add(
        &format!("keydir memory, {n} keys"),
        "cairn-storage",
        format!("{:.1} B/key", per_key - 16.0),
        format!("heap bytes after open / keys, minus the 16 B key ({per_key:.1} B/key in total)"),
    );
    // Without hints: move them aside, open (which rewrites them), time it.
    let hints: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
        .collect();
    for h in &hints {
        std::fs::remove_file(h).unwrap();
    }
    let start = Instant::now();
    let engine = Engine::open(dir, cairn_options(SyncPolicy::Never, 0)).unwrap();
    let without = start.elapsed();
    engine.close().unwrap();
    report.add(
        &format!("open, {n} keys, no hints"),
        "cairn-storage",
        format!("{:.2} s", without.as_secs_f64()),
        format!("scans {} segments, writes their hints", hints.len()),
    );
}
