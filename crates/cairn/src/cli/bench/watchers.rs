//! `cairn bench --watchers N`: N watches on the key prefix, held idle for `--hold-ms` (so a
//! script can read the server's memory per watcher), then `--requests` puts of distinct keys
//! under the prefix through the first endpoint. Reports the events delivered per second to all
//! watchers together, and the delay from a put's acknowledgement to its event reaching a
//! watcher (p50/p99 over [`SAMPLED_WATCHERS`] watchers; an event that arrives before the put
//! is acknowledged counts 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use cairn_client::proto;
use cairn_client::proto::kv_client::KvClient;
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::{BenchArgs, HISTOGRAM_SIGFIG, LATENCY_US_MAX};

/// Watches per HTTP/2 connection (the server serves at most 1024 streams per connection).
const WATCHES_PER_CONNECTION: usize = 800;
/// Watchers whose every event arrival is recorded for the delay histogram.
pub const SAMPLED_WATCHERS: usize = 16;
/// Most watchers accepted.
pub const WATCHERS_MAX: usize = 200_000;
/// How long the watchers may take to receive every event once the puts are done.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(args: &BenchArgs, endpoint: &str, watchers: usize) -> anyhow::Result<u8> {
    anyhow::ensure!(
        (1..=WATCHERS_MAX).contains(&watchers),
        "--watchers must be 1..={WATCHERS_MAX}"
    );
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let connections = watchers.div_ceil(WATCHES_PER_CONNECTION);
    let channels = (0..connections)
        .map(|_| Ok(Endpoint::from_shared(uri.clone())?.connect_lazy()))
        .collect::<anyhow::Result<Vec<Channel>>>()?;
    let started = Instant::now();
    let ns = move || started.elapsed().as_nanos() as u64;
    let requests = args.requests;
    // Per key index: when its put was acknowledged (ns since start; 0 = not yet).
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..requests).map(|_| AtomicU64::new(0)).collect());
    let ready = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let (arrivals_tx, mut arrivals_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let prefix = args.key_prefix.clone();
    let opened = Instant::now();
    for w in 0..watchers {
        let mut client = KvClient::new(channels[w % connections].clone());
        let (ready, delivered, prefix) = (ready.clone(), delivered.clone(), prefix.clone());
        let arrivals = (w < SAMPLED_WATCHERS).then(|| arrivals_tx.clone());
        tokio::spawn(async move {
            let request = proto::WatchRequest {
                selector: Some(proto::watch_request::Selector::Prefix(Bytes::from(
                    prefix.clone(),
                ))),
                progress_interval_ms: 600_000,
                ..Default::default()
            };
            let Ok(response) = client.watch(request).await else {
                return;
            };
            let mut stream = response.into_inner();
            while let Ok(Some(message)) = stream.message().await {
                if message.created {
                    ready.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                delivered.fetch_add(message.events.len() as u64, Ordering::Relaxed);
                if let Some(arrivals) = &arrivals {
                    let now = ns();
                    for e in &message.events {
                        let index = std::str::from_utf8(&e.key[prefix.len()..])
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok());
                        if let Some(index) = index {
                            let _ = arrivals.send((index, now));
                        }
                    }
                }
            }
        });
    }
    drop(arrivals_tx);
    while ready.load(Ordering::Relaxed) < watchers as u64 {
        anyhow::ensure!(
            opened.elapsed() < Duration::from_secs(120),
            "only {} of {watchers} watches opened in 120 s",
            ready.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = opened.elapsed().as_secs_f64();
    eprintln!(
        "{watchers} watches open in {open_secs:.2} s; idle for {} ms",
        args.hold_ms
    );
    tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;

    let writer = cairn_client::Client::new(endpoint).context("the writer's client")?;
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let next = Arc::new(AtomicU64::new(0));
    let puts_began = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (writer, next, acked, value, prefix) = (
                writer.clone(),
                next.clone(),
                acked.clone(),
                value.clone(),
                prefix.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return Ok::<_, cairn_client::Error>(());
                    }
                    writer.put(format!("{prefix}{i}"), value.clone()).await?;
                    acked[i as usize].store(ns().max(1), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let puts_secs = puts_began.elapsed().as_secs_f64();
    let expected = requests * watchers as u64;
    while delivered.load(Ordering::Relaxed) < expected {
        anyhow::ensure!(
            puts_began.elapsed() < DELIVERY_TIMEOUT,
            "{} of {expected} events delivered after {DELIVERY_TIMEOUT:?}",
            delivered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivery_secs = puts_began.elapsed().as_secs_f64();
    let mut delay = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGFIG)?;
    while let Ok((index, arrived)) = arrivals_rx.try_recv() {
        let acked_at = acked[index as usize].load(Ordering::Relaxed);
        let us = arrived.saturating_sub(acked_at) / 1000;
        delay.record(us.clamp(1, LATENCY_US_MAX))?;
    }
    let events_per_sec = expected as f64 / delivery_secs;
    let report = json!({
        "watchers": watchers, "connections": connections, "puts": requests,
        "value_size": args.value_size, "open_secs": open_secs, "puts_secs": puts_secs,
        "puts_per_sec": (requests as f64 / puts_secs).round(),
        "delivery_secs": delivery_secs, "events_per_sec": events_per_sec.round(),
        "delay_p50_us": delay.value_at_quantile(0.5), "delay_p99_us": delay.value_at_quantile(0.99),
        "delay_max_us": delay.max(), "delay_samples": delay.len(),
    });
    if args.connection.json {
        println!("{report}");
    } else {
        println!(
            "{watchers} watchers: {requests} puts in {puts_secs:.2} s, {expected} events \
             delivered in {delivery_secs:.2} s ({events_per_sec:.0} events/s); delay from \
             acknowledgement p50 {} us, p99 {} us",
            delay.value_at_quantile(0.5),
            delay.value_at_quantile(0.99)
        );
    }
    Ok(0)
}
