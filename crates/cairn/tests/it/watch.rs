//! Watches as clients see them: cairn-client's `Watch` (gRPC, resuming by itself), Server-Sent
//! Events with curl, the compacted answer, and a watcher that stops reading.
//!
//! The checks compare what a watch saw with what the writers were told: every acknowledged
//! write is seen exactly once (each written value is unique), per shard in log order, and
//! replaying the events gives the keys' final state.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::proto::watch_event::Type;
use cairn_client::{Client, WatchOptions, WatchUpdate};
use serde_json::Value;

use crate::support::{Node, RawConn, poll_until};

/// One event as a watch gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: Type,
    pub key: String,
    pub value: String,
    pub shard: u32,
    pub version: u64,
}

/// A watch running on its own thread, recording every event until stopped.
pub struct Recorder {
    /// The token the watch started after.
    pub first_token: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Watches `prefix` (with values) through the node at `endpoint` and the nodes its map
    /// names; returns once the watch is established.
    pub fn start(endpoint: &str, prefix: &str) -> Recorder {
        Self::start_from(endpoint, prefix, None)
    }

    /// [`Recorder::start`] resuming after `from`.
    pub fn start_from(endpoint: &str, prefix: &str, from: Option<String>) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (endpoint, prefix) = (endpoint.to_string(), prefix.to_string());
        let thread = {
            let (seen, error, stop) = (seen.clone(), error.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let client = Client::new(&endpoint).unwrap();
                    let options = WatchOptions::prefix(prefix)
                        .from(from)
                        .values(true)
                        .progress_interval(Duration::from_millis(200));
                    let mut watch = match client.watch(options).await {
                        Ok(watch) => watch,
                        Err(e) => {
                            *error.lock().unwrap() = Some(e.to_string());
                            let _ = ready_tx.send(String::new());
                            return;
                        }
                    };
                    // Enough to ride out a node's restart.
                    watch.set_reconnects_max(200);
                    let _ = ready_tx.send(watch.token().to_string());
                    while !stop.load(Ordering::Acquire) {
                        let next =
                            tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
                        match next {
                            Err(_) | Ok(Ok(WatchUpdate::Progress)) => {}
                            Ok(Ok(WatchUpdate::Events(events))) => {
                                seen.lock()
                                    .unwrap()
                                    .extend(events.into_iter().map(|e| Seen {
                                        kind: e.r#type(),
                                        key: String::from_utf8_lossy(&e.key).into_owned(),
                                        value: String::from_utf8_lossy(&e.value).into_owned(),
                                        shard: e.shard,
                                        version: e.version,
                                    }));
                            }
                            Ok(Err(e)) => {
                                *error.lock().unwrap() = Some(e.to_string());
                                return;
                            }
                        }
                    }
                });
            })
        };
        let first_token = ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let recorder = Recorder {
            first_token,
            seen,
            error,
            stop,
            thread: Some(thread),
        };
        recorder.assert_healthy();
        recorder
    }

    pub fn assert_healthy(&self) {
        if let Some(e) = &*self.error.lock().unwrap() {
            panic!("the watch failed: {e}");
        }
    }

    pub fn events(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The keys' state the events leave, replayed in the order seen.
pub fn replay(events: &[Seen]) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for e in events {
        match e.kind {
            Type::Put => {
                state.insert(e.key.clone(), e.value.clone());
            }
            Type::Delete | Type::Expire => {
                state.remove(&e.key);
            }
        }
    }
    state
}

/// Every live key under `prefix` with its value, read from the node at `endpoint`.
pub fn read_all(endpoint: &str, prefix: &str) -> BTreeMap<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::new(endpoint).unwrap();
        let page = client
            .scan(&cairn_client::Scan::prefix(prefix.to_string()).limit(10_000))
            .await
            .unwrap();
        assert!(page.resume_after.is_none());
        page.entries
            .into_iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.key).into_owned(),
                    String::from_utf8_lossy(&e.value).into_owned(),
                )
            })
            .collect()
    })
}

/// The events' own consistency, and each acknowledged value seen exactly once: per shard
/// the versions never go back, and no written value is told twice.
pub fn assert_exactly_once(events: &[Seen], acknowledged: &[(String, String)]) {
    let mut last_version: HashMap<u32, u64> = HashMap::new();
    for e in events {
        let last = last_version.entry(e.shard).or_default();
        assert!(
            e.version >= *last,
            "shard {} went back from version {last} to {}",
            e.shard,
            e.version
        );
        *last = e.version;
    }
    let mut puts: HashMap<(&str, &str), usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == Type::Put) {
        *puts.entry((&e.key, &e.value)).or_default() += 1;
    }
    if let Some(((key, value), n)) = puts.iter().find(|(_, n)| **n > 1) {
        panic!("{key} = {value} was told {n} times");
    }
    for (key, value) in acknowledged {
        assert!(
            puts.contains_key(&(key.as_str(), value.as_str())),
            "the acknowledged write {key} = {value} was never told"
        );
    }
}

/// Waits until replaying what the watch saw gives what the node holds.
pub fn await_caught_up(recorder: &Recorder, endpoint: &str, prefix: &str) -> Vec<Seen> {
    let expected = read_all(endpoint, prefix);
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            format!(
                "the watch never reached the final state of {} keys",
                expected.len()
            )
        },
        || {
            recorder.assert_healthy();
            let events = recorder.events();
            let state = replay(&events);
            if state == expected {
                return Ok(events);
            }
            // What differs (the first few keys each way), not the whole keyspace.
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(k, v)| state.get(*k) != Some(*v))
                .take(10)
                .collect();
            let extra: Vec<_> = state
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(10)
                .collect();
            Err(format!("differ: {wrong:?}; should be gone: {extra:?}"))
        },
    )
}

fn ok(conn: &mut RawConn, line: &str) {
    let answer = conn.cmd_str(line);
    assert!(
        answer.starts_with('+') || answer.starts_with(':'),
        "{line}: {answer}"
    );
}

/// Puts, deletes, cross-shard MSETs, keys left to expire and a FLUSHDB, with the node
/// stopped cleanly a quarter of the way and SIGKILLed and restarted halfway: the watch resumes from its token on the restarted node
/// (history rebuilt from the log) and tells every change exactly once.
#[test]
fn a_watch_tells_every_change_once_across_a_restart_of_its_node() {
    let mut node = Node::start();
    let recorder = Recorder::start(&node.grpc_url(), "w/");
    let mut acknowledged = Vec::new();
    let mut conn = node.resp();
    ok(&mut conn, "SET outside 1");
    // Written once, before the FLUSHDB and never after: only the FLUSHDB removes it.
    ok(&mut conn, "SET w/flushed 1");
    acknowledged.push(("w/flushed".to_string(), "1".to_string()));
    for i in 0..300 {
        if i == 75 {
            // A clean stop (SIGTERM): the watch is told to go elsewhere (UNAVAILABLE), not
            // that it is over.
            assert!(node.terminate().success());
            node.spawn();
            conn = node.resp();
        }
        if i == 150 {
            node.restart();
            conn = node.resp();
        }
        if i == 220 {
            ok(&mut conn, "FLUSHDB");
        }
        let (a, b) = (format!("w/k{}", i % 17), format!("w/k{}", (i * 7 + 3) % 17));
        match i % 5 {
            0 | 1 => {
                ok(&mut conn, &format!("SET {a} v{i}"));
                acknowledged.push((a, format!("v{i}")));
            }
            2 if a != b => {
                ok(&mut conn, &format!("MSET {a} v{i}a {b} v{i}b"));
                acknowledged.push((a, format!("v{i}a")));
                acknowledged.push((b, format!("v{i}b")));
            }
            3 => ok(&mut conn, &format!("DEL {a}")),
            _ => {
                let t = format!("w/t{i}");
                ok(&mut conn, &format!("SET {t} e{i} PX 30"));
                acknowledged.push((t, format!("e{i}")));
            }
        }
    }
    // Keys written with a deadline go by active expiry, told as `expire`.
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || "the short-lived keys did not expire".into(),
        || match read_all(&node.grpc_url(), "w/t").len() {
            0 => Ok(()),
            n => Err(n),
        },
    );
    let events = await_caught_up(&recorder, &node.grpc_url(), "w/");
    assert_exactly_once(&events, &acknowledged);
    // The node kept the history across its restart (rebuilt from its log): a watch from the
    // first token, opened now, tells the same changes in the same order per shard.
    let again = Recorder::start_from(&node.grpc_url(), "w/", Some(recorder.first_token.clone()));
    let replayed = await_caught_up(&again, &node.grpc_url(), "w/");
    for shard in 0..4 {
        let of = |events: &[Seen]| -> Vec<Seen> {
            events
                .iter()
                .filter(|e| e.shard == shard)
                .cloned()
                .collect()
        };
        assert_eq!(of(&replayed), of(&events), "shard {shard} told differently");
    }
    assert!(events.iter().all(|e| e.key.starts_with("w/")));
    let expired = events.iter().filter(|e| e.kind == Type::Expire).count();
    assert!(expired > 0, "no expiry was told: {events:?}");
    assert!(
        events
            .iter()
            .any(|e| e.kind == Type::Delete && e.key == "w/flushed"),
        "the FLUSHDB's delete of w/flushed was not told"
    );
}

/// Runs curl against `url` for `seconds`, with `headers`; the SSE events it got, as (event
/// name, id, data).
fn sse(url: &str, headers: &[&str], seconds: u32) -> Vec<(String, String, Value)> {
    let mut command = Command::new("curl");
    command.args(["-sN", "--max-time", &seconds.to_string()]);
    for header in headers {
        command.args(["-H", header]);
    }
    let out = command.arg(url).output().expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
                    .or_else(|| {
                        block
                            .lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_string))
                    })
            };
            let data = field("data").unwrap_or_default();
            (
                field("event").unwrap_or_else(|| "message".into()),
                field("id").unwrap_or_default(),
                serde_json::from_str(&data).unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// curl reads a watch as Server-Sent Events in the documented shape, and picks up right after
/// the event whose id it sends back as `Last-Event-ID`.
#[test]
fn server_sent_events_with_curl_resume_from_last_event_id() {
    let node = Node::start();
    let mut conn = node.resp();
    let url = node.http_url("/v1/watch?prefix=s/&values=true&progress_ms=500");
    let from_start = sse(&url, &[], 1);
    let created = &from_start[0];
    assert_eq!(created.0, "created", "{from_start:?}");
    assert_eq!(created.2["type"], "created");
    let start_token = created.1.clone();
    ok(&mut conn, "SET s/a 1");
    ok(&mut conn, "MSET s/b 2 s/c 3 x/ignored 4");
    ok(&mut conn, "DEL s/a");
    ok(&mut conn, "SET s/d 4 PX 20");
    conn.send_cmd(&[b"SET", b"s/\xff\x00bin", b"\xfe"]);
    assert_eq!(conn.read_reply(), b"+OK\r\n");
    let events = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || "the changes were not all streamed".into(),
        || {
            let events: Vec<_> = sse(&url, &[&format!("Last-Event-ID: {start_token}")], 1)
                .into_iter()
                .filter(|e| e.0 == "message")
                .collect();
            if events.iter().any(|e| e.2["type"] == "expire") {
                Ok(events)
            } else {
                Err(events)
            }
        },
    );
    let told: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.2["type"].as_str().unwrap().to_string(),
                e.2["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("put", "s/a"),
        ("put", "s/b"),
        ("put", "s/c"),
        ("delete", "s/a"),
        ("put", "s/d"),
        ("put", "cy//AGJpbg=="),
        ("expire", "s/d"),
    ]
    .iter()
    .map(|(t, k)| (t.to_string(), k.to_string()))
    .collect();
    let mut sorted_told = told.clone();
    sorted_told.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(
        sorted_told, sorted_expected,
        "shards may interleave: {told:?}"
    );
    for e in &events {
        let data = &e.2;
        assert_eq!(data["version"], data["revision"]);
        assert!(data["shard"].is_u64());
        assert!(!e.1.is_empty(), "every change carries its token as id");
        if data["key"] == "s/b" {
            assert_eq!(data["value"], "2");
        }
        if data["key"] == "s/d" && data["type"] == "put" {
            assert!(data["expires_at_ms"].is_u64());
        }
        if data["key"] == "cy//AGJpbg==" {
            assert_eq!(data["key_encoding"], "base64");
            assert_eq!(data["value"], "/g==");
            assert_eq!(data["value_encoding"], "base64");
        }
    }
    // Resumed after each event: exactly the ones after it.
    for (i, event) in events.iter().enumerate() {
        let rest: Vec<_> = sse(&url, &[&format!("Last-Event-ID: {}", event.1)], 1)
            .into_iter()
            .filter(|e| e.0 == "message")
            .map(|e| e.1)
            .collect();
        let expected: Vec<_> = events[i + 1..].iter().map(|e| e.1.clone()).collect();
        assert_eq!(rest, expected, "resumed after event {i}");
    }
    // `from` in the query says the same as the header.
    let from_query: Vec<_> = sse(
        &format!("{url}&from={}", events[2].1.replace(',', "%2C")),
        &[],
        1,
    )
    .into_iter()
    .filter(|e| e.0 == "message")
    .collect();
    assert_eq!(from_query.len(), events.len() - 3);
}

/// With a small history window, a watch resumed from before it is served from the log while
/// the log holds it, and once the log is purged is told what to do: gRPC OUT_OF_RANGE
/// (`Error::Compacted` in cairn-client), HTTP 410 with code `compacted`.
#[test]
fn a_watch_from_before_the_history_window_is_told_compacted() {
    let node = Node::start_with(&["--watch-history-events", "16"]);
    let mut conn = node.resp();
    for i in 0..200 {
        ok(&mut conn, &format!("SET c/{i} {i}"));
    }
    // Older history than the window comes from the log: a watch from the start still works
    // while the log holds it…
    let from = "0:0,1:0,2:0,3:0";
    let recorder = Recorder::start_from(&node.grpc_url(), "c/", Some(from.to_string()));
    await_caught_up(&recorder, &node.grpc_url(), "c/");
    drop(recorder);
    // …and is compacted once SAVE (a checkpoint) has purged the log behind the snapshots.
    ok(&mut conn, "SAVE");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime.block_on(async {
        let client = Client::new(&node.grpc_url()).unwrap();
        client
            .watch(WatchOptions::prefix("c/").from(Some(from.to_string())))
            .await
            .err()
    });
    match error {
        Some(cairn_client::Error::Compacted { revision, .. }) => assert!(revision > 0),
        other => panic!("not compacted: {other:?}"),
    }
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "5", "-H"])
        .arg(format!("Last-Event-ID: {from}"))
        .arg(node.http_url("/v1/watch?prefix=c/"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "410", "{text}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["code"], "compacted");
    // A token this cluster never gave: 400.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(node.http_url("/v1/watch?from=banana"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}

/// A client that opens a watch and stops reading while changes pour in is dropped instead
/// of being buffered for: when it reads again it is told why (`canceled`, or `compacted` if
/// its place in the history is gone too), and the server counts it under
/// `cairn_watchers_dropped_total`.
#[test]
fn a_watcher_that_stops_reading_is_dropped_with_a_reason() {
    use std::io::{Read, Write};
    let node = Node::start();
    let mut idle = std::net::TcpStream::connect(node.http_addr).unwrap();
    write!(
        idle,
        "GET /v1/watch?values=true HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let metric = |name: &str| -> f64 {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(node.http_url("/metrics"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || "the watch never started".into(),
        || {
            if metric("cairn_watchers{") >= 1.0 {
                Ok(())
            } else {
                Err(())
            }
        },
    );
    // Far more than the connection's buffers hold, while the client reads nothing.
    let mut conn = node.resp();
    let value = "x".repeat(256 * 1024);
    for i in 0..160 {
        let key = format!("big{i}");
        conn.send_cmd(&[b"SET", key.as_bytes(), value.as_bytes()]);
        assert_eq!(conn.read_reply(), b"+OK\r\n");
    }
    std::thread::sleep(Duration::from_secs(11));
    // Reading again: the changes it had room for, then the reason it was dropped.
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let ended = loop {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed without saying why");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text
            .find("event: canceled")
            .or(text.find("event: compacted"))
        {
            break text[at..].lines().take(2).collect::<Vec<_>>().join(" ");
        }
        let keep = seen.len().saturating_sub(4096);
        seen.drain(..keep);
    };
    assert!(
        ended.contains("took nothing") || ended.contains("compacted"),
        "{ended}"
    );
    assert!(metric("cairn_watchers_dropped_total") >= 1.0);
    drop(idle);
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || "the dropped watch is still counted".into(),
        || {
            if metric("cairn_watchers{") == 0.0 {
                Ok(())
            } else {
                Err(())
            }
        },
    );
}

/// cairn-client's near cache: reads are served locally once cached, a write by another client
/// reaches it as an invalidation after which the old value is never served, its own writes
/// are read back at once, and a broken watch empties it until the watch is back.
#[test]
fn a_near_cache_never_serves_a_value_after_its_invalidation() {
    use cairn_client::{ClientConfig, Served};
    let mut node = Node::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = node.grpc_url();
    let (near, plain) = runtime.block_on(async {
        let config = ClientConfig {
            near_cache_bytes: Some(1 << 20),
            ..ClientConfig::default()
        };
        let near = Client::with_config(&endpoint, config).unwrap();
        assert!(near.near_cache_ready(Duration::from_secs(10)).await);
        (near, Client::new(&endpoint).unwrap())
    });
    runtime.block_on(async {
        near.put("n:k", "v0").await.unwrap();
        assert_eq!(near.get_traced("n:k").await.unwrap().1, Served::Cluster);
        let (value, served) = near.get_traced("n:k").await.unwrap();
        assert_eq!((value.unwrap().value, served), ("v0".into(), Served::Local));
        for i in 1..=100 {
            let (old, new) = (format!("v{}", i - 1), format!("v{i}"));
            plain.put("n:k", new.clone()).await.unwrap();
            let began = std::time::Instant::now();
            loop {
                let got = near.get("n:k").await.unwrap().unwrap().value;
                if got == new.as_bytes() {
                    break;
                }
                assert_eq!(got, old.as_bytes(), "round {i}");
                assert!(
                    began.elapsed() < Duration::from_secs(5),
                    "round {i}: not invalidated"
                );
            }
            for _ in 0..10 {
                let (got, _) = near.get_traced("n:k").await.unwrap();
                assert_eq!(
                    got.unwrap().value,
                    new.as_bytes(),
                    "round {i}: the old value again"
                );
            }
            // Read your writes.
            let mine = format!("mine{i}");
            near.put("n:mine", mine.clone()).await.unwrap();
            assert_eq!(
                near.get("n:mine").await.unwrap().unwrap().value,
                mine.as_bytes()
            );
        }
        let stats = near.near_cache_stats().unwrap();
        assert!(stats.hits > 500, "{stats:?}");
        assert!(stats.invalidations >= 100, "{stats:?}");
    });
    // The node goes away: the watch breaks and the cache empties; back, it fills again.
    node.kill();
    runtime.block_on(async {
        let began = std::time::Instant::now();
        while near.near_cache_stats().unwrap().live {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "the cache stayed live"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(near.near_cache_stats().unwrap().entries, 0);
    });
    node.spawn();
    runtime.block_on(async {
        assert!(near.near_cache_ready(Duration::from_secs(20)).await);
        assert_eq!(near.get_traced("n:k").await.unwrap().1, Served::Cluster);
        assert_eq!(near.get_traced("n:k").await.unwrap().1, Served::Local);
    });
}

/// A read hands out a watch token taken just before it (gRPC `watch_token`, HTTP
/// `x-cairn-watch-token` and the listing's `watch_token`): a watch from it tells the changes
/// made after the read.
#[test]
fn a_watch_from_a_reads_token_tells_what_came_after_the_read() {
    let node = Node::start();
    let mut conn = node.resp();
    ok(&mut conn, "SET rt:a 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoint = node.grpc_url();
    let page = runtime.block_on(async {
        let client = Client::new(&endpoint).unwrap();
        client
            .scan(&cairn_client::Scan::prefix("rt:"))
            .await
            .unwrap()
    });
    assert_eq!(page.entries.len(), 1);
    // HTTP: a key's read carries its shard's token in a header; a listing, every shard's.
    let header = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "5"])
        .arg(node.http_url("/v1/kv/rt:a"))
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&header.stdout).to_lowercase();
    let key_token = header
        .lines()
        .find_map(|l| l.strip_prefix("x-cairn-watch-token: "))
        .expect("the token header")
        .trim()
        .to_string();
    assert!(!key_token.contains(','), "one shard's token: {key_token}");
    let listing = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(node.http_url("/v1/kv?prefix=rt:"))
        .output()
        .unwrap();
    let listing: Value = serde_json::from_slice(&listing.stdout).unwrap();
    let http_token = listing["watch_token"].as_str().unwrap().to_string();
    ok(&mut conn, "SET rt:a 2");
    ok(&mut conn, "SET rt:b 3");
    for token in [page.watch_token.clone(), http_token] {
        let recorder = Recorder::start_from(&endpoint, "rt:", Some(token.clone()));
        let events = poll_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || format!("no events after the read from {token}"),
            || {
                let events = recorder.events();
                if events.len() >= 2 {
                    Ok(events)
                } else {
                    Err(events)
                }
            },
        );
        let told: Vec<(String, String)> = events
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        assert!(told.contains(&("rt:a".into(), "2".into())), "{told:?}");
        assert!(told.contains(&("rt:b".into(), "3".into())), "{told:?}");
        assert!(
            !told.contains(&("rt:a".into(), "1".into())),
            "the write the read saw came again: {told:?}"
        );
    }
}
