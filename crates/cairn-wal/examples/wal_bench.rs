//! Micro benchmark: WAL appends per second with 1 and 64 records per append from one thread,
//! and 1 record per append from 8 threads, each its own group (group commit across groups);
//! reports entries and groups per fsync.
//!
//! `cargo run --release -p cairn-wal --example wal_bench -- [DIR] [SECONDS] [PAYLOAD_BYTES]`
//! DIR must be on the disk you want to measure (not tmpfs); default: a temp dir under `.`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_wal::{Record, Wal, WalOptions};

/// Callers in the concurrent case.
const THREADS: usize = 8;

fn run(
    dir: &std::path::Path,
    threads: usize,
    records_per_append: usize,
    seconds: f64,
    payload_bytes: usize,
) {
    let wal = Wal::open(dir, WalOptions::default()).expect("open");
    let wal = Arc::new(wal);
    let payload = Bytes::from(vec![0x5Au8; payload_bytes]);
    let budget = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let per_thread: Vec<(u64, Vec<Duration>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (wal, payload) = (wal.clone(), payload.clone());
                scope.spawn(move || {
                    let mut index = 0u64;
                    let mut latencies = Vec::new();
                    while started.elapsed() < budget {
                        let batch: Vec<Record> = (0..records_per_append)
                            .map(|_| {
                                index += 1;
                                Record {
                                    group: t as u64,
                                    index,
                                    payload: payload.clone(),
                                }
                            })
                            .collect();
                        let t0 = Instant::now();
                        wal.append(&batch).expect("append");
                        latencies.push(t0.elapsed());
                    }
                    (index, latencies)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let records: u64 = per_thread.iter().map(|(n, _)| n).sum();
    let mut latencies: Vec<Duration> = per_thread.into_iter().flat_map(|(_, l)| l).collect();
    latencies.sort();
    let appends = latencies.len();
    let stats = wal.stats();
    let fsyncs = stats.fsyncs.max(1) as f64;
    println!(
        "threads={threads} records/append={records_per_append:>2} payload={payload_bytes}B: {:>8.0} records/s, {:>7.0} appends/s, {:>6.1} MB/s, append p50={:?} p99={:?}, {:.1} entries and {:.1} groups per fsync",
        records as f64 / elapsed,
        appends as f64 / elapsed,
        records as f64 * payload_bytes as f64 / elapsed / 1e6,
        latencies[appends / 2],
        latencies[appends * 99 / 100],
        stats.entries as f64 / fsyncs,
        stats.group_syncs as f64 / fsyncs,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| ".".to_owned());
    let seconds: f64 = args
        .next()
        .map(|s| s.parse().expect("SECONDS"))
        .unwrap_or(5.0);
    let payload_bytes: usize = args
        .next()
        .map(|s| s.parse().expect("PAYLOAD_BYTES"))
        .unwrap_or(128);
    for (threads, records_per_append) in [(1, 1), (1, 64), (THREADS, 1)] {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        run(
            dir.path(),
            threads,
            records_per_append,
            seconds,
            payload_bytes,
        );
    }
}
