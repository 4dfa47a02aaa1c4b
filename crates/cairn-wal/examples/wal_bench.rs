//! Micro benchmark: WAL appends per second with 1 and 64 records per fdatasync.
//!
//! `cargo run --release -p cairn-wal --example wal_bench -- [DIR] [SECONDS] [PAYLOAD_BYTES]`
//! DIR must be on the disk you want to measure (not tmpfs); default: a temp dir under `.`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_wal::{Record, Wal, WalOptions};

fn run(dir: &std::path::Path, records_per_sync: usize, seconds: f64, payload_bytes: usize) {
    let (wal, _) = Wal::open(dir, WalOptions::default()).expect("open");
    let payload = Bytes::from(vec![0x5Au8; payload_bytes]);
    let mut index = 0u64;
    let mut syncs = 0u64;
    let mut latencies = Vec::new();
    let started = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    while started.elapsed() < budget {
        let batch: Vec<Record> = (0..records_per_sync)
            .map(|k| {
                index += 1;
                Record {
                    group: k as u64 % 16,
                    index,
                    payload: payload.clone(),
                }
            })
            .collect();
        let t = Instant::now();
        wal.append(&batch).expect("append");
        latencies.push(t.elapsed());
        syncs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "records/sync={records_per_sync:>3} payload={payload_bytes}B: {:>9.0} records/s, {:>7.0} syncs/s, {:>6.1} MB/s, append p50={:?} p99={:?}",
        index as f64 / elapsed,
        syncs as f64 / elapsed,
        index as f64 * payload_bytes as f64 / elapsed / 1e6,
        p50,
        p99,
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
    for records_per_sync in [1, 64] {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        run(dir.path(), records_per_sync, seconds, payload_bytes);
    }
}
