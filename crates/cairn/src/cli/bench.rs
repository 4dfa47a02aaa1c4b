//! `cairn bench`: a closed-loop load generator over gRPC. N workers share M connections (spread
//! round-robin over one or more endpoints) and issue a fixed number of random gets and puts over
//! a key space; it reports throughput and latency percentiles (HdrHistogram) per operation. It
//! loads Cairn, or etcd through etcd's own KV service (`--target etcd`, [`target`]), so that the
//! comparison in `scripts/bench-etcd.sh` runs one generator against both.

mod target;
mod watchers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use self::target::{Conn, Target};
use super::Connection;

/// Highest latency the histograms record, in microseconds (slower requests are clamped).
const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits of the histograms.
const HISTOGRAM_SIGFIG: u8 = 3;
/// Most concurrent workers accepted.
const CONCURRENCY_MAX: usize = 10_000;
/// Most separate connections accepted.
const CONNECTIONS_MAX: usize = 256;
/// Most endpoints accepted in `--endpoints`.
const ENDPOINTS_MAX: usize = 64;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Total requests to send (after the preload)
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub requests: u64,
    /// Requests in flight at once
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Separate gRPC (HTTP/2) connections the workers share; connection i goes to endpoint
    /// i mod (number of endpoints)
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// System under load: Cairn, or etcd through its KV gRPC service (Put, Range)
    #[arg(long, value_enum, default_value_t = Target::Cairn)]
    pub target: Target,
    /// Endpoints to spread the connections over, round-robin, comma-separated (replaces
    /// --endpoint); for etcd, client URLs such as http://127.0.0.1:2379
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub endpoints: Vec<String>,
    /// Reads from the answering node's own replica: Cairn's stale read, etcd's serializable
    /// Range (default: linearizable reads)
    #[arg(long)]
    pub stale: bool,
    /// Number of distinct keys
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value size in bytes
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Fraction of requests that are reads (0.0 to 1.0)
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Skip writing every key once before measuring (reads may then miss)
    #[arg(long)]
    pub no_preload: bool,
    /// Prefix of the generated keys
    #[arg(long, default_value = "bench:")]
    pub key_prefix: String,
    /// Seed of the key and operation choice
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of gets and puts: open this many watches on --key-prefix, hold them idle for
    /// --hold-ms, then put --requests distinct keys under it and measure the events delivered
    /// per second and the delay from acknowledgement to event (Cairn only)
    #[arg(long, value_name = "N")]
    pub watchers: Option<usize>,
    /// Read through a near cache of this many bytes on each connection (Cairn only): reads
    /// of keys read before are served locally until they change
    #[arg(long, value_name = "BYTES")]
    pub near_cache: Option<u64>,
    /// With --watchers: how long to hold the watches idle before the puts (to read the
    /// server's memory meanwhile)
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub hold_ms: u64,
    #[command(flatten)]
    pub connection: Connection,
}

/// Latencies and failures of one worker (merged at the end).
struct Tally {
    get: Histogram<u64>,
    put: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        let h = || {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGFIG)
                .expect("valid histogram bounds")
        };
        Tally {
            get: h(),
            put: h(),
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.get.add(&other.get).expect("same bounds");
        self.put.add(&other.put).expect("same bounds");
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.read_ratio),
        "--read-ratio must be within 0.0..=1.0"
    );
    anyhow::ensure!(args.keys > 0, "--keys must be > 0");
    anyhow::ensure!(
        (1..=CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1..={CONCURRENCY_MAX}"
    );
    anyhow::ensure!(
        (1..=CONNECTIONS_MAX).contains(&args.connections),
        "--connections must be 1..={CONNECTIONS_MAX}"
    );
    let endpoints = endpoints(&args)?;
    anyhow::ensure!(
        args.near_cache.is_none() || args.target == Target::Cairn,
        "--near-cache is cairn-client's"
    );
    if let Some(watchers) = args.watchers {
        anyhow::ensure!(
            args.target == Target::Cairn,
            "--watchers measures Cairn's watches only"
        );
        return watchers::run(&args, &endpoints[0], watchers).await;
    }
    let timeout = Duration::from_millis(args.connection.timeout_ms);
    let conns = (0..args.connections)
        .map(|i| {
            let endpoint = &endpoints[i % endpoints.len()];
            Conn::open(args.target, endpoint, timeout, args.near_cache)
                .with_context(|| format!("--target {}", args.target.name()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Fail fast with a clear message when an endpoint is not there, or is not the target (the
    // first connections cover every endpoint that gets one).
    for (conn, endpoint) in conns.iter().zip(&endpoints) {
        conn.clone().probe().await.with_context(|| {
            format!(
                "{endpoint} does not answer as {} (check --target and --endpoint/--endpoints)",
                args.target.name()
            )
        })?;
    }
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let args = Arc::new(args);

    if !args.no_preload {
        let bar = progress(&args, args.keys, "preload");
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|w| {
                let (mut conn, args, next, bar, value) = (
                    conns[w % conns.len()].clone(),
                    args.clone(),
                    next.clone(),
                    bar.clone(),
                    value.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.keys {
                            return anyhow::Ok(());
                        }
                        let k = key(&args.key_prefix, i);
                        conn.put(k, value.clone()).await.context("preload")?;
                        bar.inc(1);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        bar.finish_and_clear();
    }

    let bar = progress(&args, args.requests, "bench");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (conn, args, next, bar, value) = (
                conns[w % conns.len()].clone(),
                args.clone(),
                next.clone(),
                bar.clone(),
                value.clone(),
            );
            tokio::spawn(async move { worker(w as u64, conn, args, next, bar, value).await })
        })
        .collect();
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await?);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    // The endpoints that got a connection (all of them unless --connections is smaller).
    let used = &endpoints[..endpoints.len().min(args.connections)];
    report(&args, used, &tally, elapsed);
    Ok(0)
}

/// The endpoints the connections are spread over: `--endpoints`, or else `--endpoint`.
fn endpoints(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    if args.endpoints.is_empty() {
        return Ok(vec![args.connection.endpoint.clone()]);
    }
    anyhow::ensure!(
        args.endpoints.len() <= ENDPOINTS_MAX,
        "--endpoints takes at most {ENDPOINTS_MAX} endpoints, got {}",
        args.endpoints.len()
    );
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .collect();
    anyhow::ensure!(
        endpoints.iter().all(|e| !e.is_empty()),
        "--endpoints has an empty entry: {:?}",
        args.endpoints.join(",")
    );
    Ok(endpoints)
}

async fn worker(
    id: u64,
    mut conn: Conn,
    args: Arc<BenchArgs>,
    next: Arc<AtomicU64>,
    bar: ProgressBar,
    value: Bytes,
) -> Tally {
    let mut rng = SmallRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(id));
    let mut tally = Tally::new();
    while next.fetch_add(1, Ordering::Relaxed) < args.requests {
        let k = key(&args.key_prefix, rng.random_range(0..args.keys));
        let read = rng.random_bool(args.read_ratio);
        let t = Instant::now();
        let result = if read {
            conn.get(k, args.stale).await
        } else {
            conn.put(k, value.clone()).await
        };
        let us = (t.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
        match result {
            Ok(()) => {
                let h = if read { &mut tally.get } else { &mut tally.put };
                h.record(us).expect("clamped into bounds");
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        bar.inc(1);
    }
    tally
}

fn key(prefix: &str, i: u64) -> Bytes {
    Bytes::from(format!("{prefix}{i:010}"))
}

/// A progress bar on stderr, hidden for JSON output or when stderr is not a terminal.
fn progress(args: &BenchArgs, total: u64, phase: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if args.connection.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(phase);
    bar
}

fn report(args: &BenchArgs, endpoints: &[String], tally: &Tally, elapsed: Duration) {
    let done = tally.get.len() + tally.put.len();
    let ops_per_sec = done as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    let stats = |h: &Histogram<u64>| {
        json!({
            "count": h.len(),
            "p50_us": h.value_at_quantile(0.50),
            "p90_us": h.value_at_quantile(0.90),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "mean_us": h.mean().round(),
        })
    };
    if args.connection.json {
        println!(
            "{}",
            json!({
                "target": args.target.name(), "endpoints": endpoints, "stale": args.stale,
                "requests": args.requests, "concurrency": args.concurrency,
                "connections": args.connections, "keys": args.keys,
                "value_size": args.value_size, "read_ratio": args.read_ratio,
                "elapsed_secs": elapsed.as_secs_f64(), "ops_per_sec": ops_per_sec.round(),
                "get": stats(&tally.get), "put": stats(&tally.put),
                "errors": tally.errors, "first_error": tally.first_error,
            })
        );
        return;
    }
    println!(
        "{}: {} requests, {} workers over {} connections to {} endpoint(s), {} keys, \
         {}-byte values, {:.0}% {} reads",
        args.target.name(),
        args.requests,
        args.concurrency,
        args.connections,
        endpoints.len(),
        args.keys,
        args.value_size,
        args.read_ratio * 100.0,
        if args.stale { "stale" } else { "linearizable" },
    );
    println!(
        "throughput: {ops_per_sec:.0} ops/s ({:.2} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "{:<5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  (latency, µs)",
        "op", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, h) in [("get", &tally.get), ("put", &tally.put)] {
        if h.is_empty() {
            continue;
        }
        println!(
            "{:<5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            name,
            h.len(),
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    if tally.errors > 0 {
        println!(
            "errors: {} (first: {})",
            tally.errors,
            tally.first_error.as_deref().unwrap_or("?")
        );
    }
}
