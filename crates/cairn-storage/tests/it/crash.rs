//! SIGKILL crash test: a child process (this test binary, re-run with
//! `CAIRN_CRASH_CHILD_DIR` set) writes with `SyncPolicy::Always` and prints every acknowledged
//! write; the parent kills it with SIGKILL at a random moment once it has acknowledged writes,
//! checks that it was still running and died of the kill (its stderr goes into any failure),
//! reopens the directory and checks that every acknowledged write is there with its value and
//! nothing was invented. SIGKILL keeps the page cache, so this tests crash recovery of the
//! process, not fsyncs: `power_cut` covers those on the simulated disk.
//!
//! Iterations: `CAIRN_CRASH_ITERS` (default 5; run `CAIRN_CRASH_ITERS=100 cargo test -p
//! cairn-storage --test it crash` for the long run).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_storage::{Engine, Options, SyncPolicy, WriteBatch};
use rand::Rng;

const CHILD_DIR_ENV: &str = "CAIRN_CRASH_CHILD_DIR";
const ITERS_ENV: &str = "CAIRN_CRASH_ITERS";
const ITERS_DEFAULT: u32 = 5;
const THREADS: u64 = 4;
const KEYS_PER_THREAD: u64 = 16;
/// Writes per thread when the child body runs as an ordinary test (no parent).
const STANDALONE_WRITES: u64 = 40;
/// Longest a child may take to acknowledge its first write.
const CHILD_START_MAX: Duration = Duration::from_secs(60);

fn options() -> Options {
    Options {
        sync: SyncPolicy::Always,
        segment_bytes_max: 16 * 1024,
        merge_background: true,
        merge_dead_ratio_min: 0.3,
        ..Options::default()
    }
}

fn value(key: &str, counter: u64) -> Vec<u8> {
    let mut v = format!("{key}={counter};").into_bytes();
    v.resize(v.len() + (counter % 61) as usize, b'#');
    v
}

fn counter_of(key: &[u8], v: &[u8]) -> u64 {
    let key = std::str::from_utf8(key).unwrap();
    let text = std::str::from_utf8(v).unwrap();
    let (k, rest) = text.split_once('=').unwrap();
    assert_eq!(k, key, "value belongs to another key");
    let (c, pad) = rest.split_once(';').unwrap();
    let c: u64 = c.parse().unwrap();
    assert_eq!(pad.len() as u64, c % 61, "torn value for {key}");
    c
}

/// The child's body: threads overwrite their keys with increasing counters (resuming from what
/// is on disk), thread 0 also writes atomic pairs. Prints `try`/`ack` lines. Runs `limit`
/// writes per thread, or forever when `limit` is `None`.
fn write_loop(dir: &Path, limit: Option<u64>) -> Engine {
    let engine = Engine::open(dir, options()).unwrap();
    let writers_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Merge continuously so kills land inside merges too.
        let (engine_ref, done) = (&engine, &writers_done);
        s.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                engine_ref.merge().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        let mut writers = Vec::new();
        for t in 0..THREADS {
            let engine = &engine;
            writers.push(s.spawn(move || {
                let mut i = 0u64;
                while limit.is_none_or(|l| i < l) {
                    i += 1;
                    let key = if t == 0 && i % 4 == 0 {
                        "pair-a".to_string()
                    } else {
                        format!("t{t}-k{}", i % KEYS_PER_THREAD)
                    };
                    let next = engine
                        .get(key.as_bytes())
                        .unwrap()
                        .map_or(0, |v| counter_of(key.as_bytes(), &v))
                        + 1;
                    println!("try {key} {next}");
                    if key == "pair-a" {
                        println!("try pair-b {next}");
                        let mut b = WriteBatch::new();
                        b.put(b"pair-a", &value("pair-a", next))
                            .put(b"pair-b", &value("pair-b", next));
                        engine.write(b).unwrap();
                        println!("ack pair-b {next}");
                    } else {
                        engine.put(key.as_bytes(), &value(&key, next)).unwrap();
                    }
                    println!("ack {key} {next}");
                    std::io::stdout().flush().unwrap();
                }
            }));
        }
        for w in writers {
            w.join().unwrap();
        }
        writers_done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    engine
}

/// Child entry point. As an ordinary test (no parent) it writes a bounded amount and checks it
/// after a reopen; under the parent it writes until killed.
#[test]
fn child_writer() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        // libtest has printed "test crash::child_writer ... " without a newline; end that line
        // so the first `try` line is not glued to it (and lost to the parser).
        println!();
        write_loop(Path::new(&dir), None);
        unreachable!("the child writes until it is killed");
    }
    let dir = tempfile::tempdir().unwrap();
    write_loop(dir.path(), Some(STANDALONE_WRITES))
        .close()
        .unwrap();
    let engine = Engine::open(dir.path(), options()).unwrap();
    for t in 1..THREADS {
        for k in 0..KEYS_PER_THREAD {
            let key = format!("t{t}-k{k}");
            let v = engine.get(key.as_bytes()).unwrap().unwrap();
            assert!(counter_of(key.as_bytes(), &v) >= STANDALONE_WRITES / KEYS_PER_THREAD);
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let iters: u32 = std::env::var(ITERS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERS_DEFAULT);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    // Per key: highest acknowledged counter, highest attempted counter.
    let mut ledger: HashMap<String, (u64, u64)> = HashMap::new();
    let mut acks_total = 0u64;
    for iter in 0..iters {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let acked_so_far = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().unwrap();
        let reader = {
            let acked_so_far = acked_so_far.clone();
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("ack ") {
                        acked_so_far.fetch_add(1, Ordering::Relaxed);
                    }
                    lines.push(line);
                }
                lines
            })
        };
        let stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        // Every round kills a child that has acknowledged writes and is still running: a child
        // that fails on open, panics or exits early fails the test with its stderr.
        let started = Instant::now();
        while acked_so_far.load(Ordering::Relaxed) == 0 {
            if started.elapsed() > CHILD_START_MAX || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "iteration {iter}: the child acknowledged nothing; its stderr:\n{}",
                    errors.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "iteration {iter}: the child exited ({status}) before the kill; its stderr:\n{}",
                errors.join().unwrap()
            );
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "iteration {iter}: the child did not die of the kill ({status}); its stderr:\n{}",
            errors.join().unwrap()
        );
        let mut acks = 0;
        for line in reader.join().unwrap() {
            let mut parts = line.split(' ');
            let (Some(kind), Some(key), Some(c)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(c) = c.parse::<u64>() else { continue };
            let e = ledger.entry(key.to_string()).or_insert((0, 0));
            match kind {
                "try" => e.1 = e.1.max(c),
                "ack" => {
                    e.0 = e.0.max(c);
                    acks += 1;
                }
                _ => {}
            }
        }
        assert!(
            acks > 0,
            "iteration {iter}: no acknowledged write was parsed"
        );
        acks_total += acks;
        let engine = Engine::open(dir.path(), options()).unwrap();
        for (key, (acked, attempted)) in &ledger {
            let got = engine
                .get(key.as_bytes())
                .unwrap()
                .map_or(0, |v| counter_of(key.as_bytes(), &v));
            assert!(
                got >= *acked,
                "iteration {iter}: {key} has {got}, acknowledged {acked}"
            );
            assert!(
                got <= *attempted,
                "iteration {iter}: {key} has {got}, never written past {attempted}"
            );
        }
        let a = engine
            .get(b"pair-a")
            .unwrap()
            .map(|v| counter_of(b"pair-a", &v));
        let b = engine
            .get(b"pair-b")
            .unwrap()
            .map(|v| counter_of(b"pair-b", &v));
        assert_eq!(a, b, "iteration {iter}: batch not atomic");
        for e in engine
            .scan(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                usize::MAX,
            )
            .unwrap()
        {
            assert!(
                ledger.contains_key(std::str::from_utf8(&e.key).unwrap()),
                "invented key {:?}",
                e.key
            );
        }
        eprintln!("crash iteration {iter}: {acks} acknowledged writes checked");
    }
    eprintln!("crash: {iters} kills, {acks_total} acknowledged writes checked");
}
