//! The HTTP/JSON API, black-box: every route and status code, binary-safe keys and values,
//! limits. Requests go over a plain `TcpStream` (HTTP/1.1, `Connection: close`) to keep the test
//! build light and to control every byte sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::support::{Node, poll_until};

/// One parsed HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `code` of a JSON error body.
    fn code(&self) -> String {
        self.json()["code"]
            .as_str()
            .expect("error code")
            .to_string()
    }
}

/// Send one request and read the whole response.
pub(crate) fn request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Response {
    send(addr, method, target, body.len(), body)
}

/// Send only the head of a request declaring a `Content-Length` of `declared` bytes: an
/// oversized body must be refused from the header alone, before it is sent.
fn request_declared(addr: SocketAddr, method: &str, target: &str, declared: usize) -> Response {
    send(addr, method, target, declared, b"")
}

fn send(addr: SocketAddr, method: &str, target: &str, declared: usize, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// Percent-encode every byte (binary-safe and unambiguous).
fn pct(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn get(node: &Node, target: &str) -> Response {
    request(node.http_addr, "GET", target, b"")
}

fn put(node: &Node, target: &str, body: &[u8]) -> Response {
    request(node.http_addr, "PUT", target, body)
}

fn delete(node: &Node, target: &str) -> Response {
    request(node.http_addr, "DELETE", target, b"")
}

#[test]
fn put_get_delete_round_trip_binary_keys_and_values() {
    let node = Node::start();
    let key: &[u8] = b"bin/\x00\xff key?#%";
    let value: Vec<u8> = (0..=255u8).chain(b"\r\n\r\n".iter().copied()).collect();
    let path = format!("/v1/kv/{}", pct(key));

    // Phase 1: write, then read back exactly.
    let r = put(&node, &path, &value);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let version: u64 = r.json()["version"].as_u64().unwrap();
    assert_eq!(
        r.header("x-cairn-version"),
        Some(version.to_string().as_str())
    );
    let r = get(&node, &path);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, value);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("x-cairn-version"),
        Some(version.to_string().as_str())
    );
    assert_eq!(r.header("x-cairn-ttl-ms"), None);
    assert_eq!(r.header("x-cairn-expires-at-ms"), None);
    // HEAD: the same status and metadata, no body.
    let r = request(node.http_addr, "HEAD", &path, b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-cairn-version"),
        Some(version.to_string().as_str())
    );
    assert!(r.body.is_empty());

    // Phase 2: a plain key with a slash in it, unencoded, is the same as its encoded form.
    assert_eq!(put(&node, "/v1/kv/a/b", b"slash").status, 200);
    assert_eq!(get(&node, "/v1/kv/a%2Fb").body, b"slash");

    // Phase 3: overwrite bumps the version; an empty value is a value.
    let r = put(&node, &path, b"");
    assert!(r.json()["version"].as_u64().unwrap() > version);
    let r = get(&node, &path);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // Phase 4: delete, then it is gone.
    let r = delete(&node, &path);
    assert_eq!(r.status, 204);
    let r = get(&node, &path);
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
    let r = delete(&node, &path);
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
}

#[test]
fn put_with_ttl_reports_expiry_headers() {
    let node = Node::start();
    assert_eq!(put(&node, "/v1/kv/t?ttl_ms=600000", b"v").status, 200);
    let r = get(&node, "/v1/kv/t");
    assert_eq!(r.status, 200);
    let ttl: u64 = r.header("x-cairn-ttl-ms").unwrap().parse().unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "ttl {ttl}");
    let at: u64 = r.header("x-cairn-expires-at-ms").unwrap().parse().unwrap();
    assert!(at > 1_600_000_000_000);

    // An absolute expiry far in the future is kept as given.
    let far = 4_000_000_000_000u64;
    assert_eq!(
        put(&node, &format!("/v1/kv/u?expires_at_ms={far}"), b"v").status,
        200
    );
    assert_eq!(
        get(&node, "/v1/kv/u").header("x-cairn-expires-at-ms"),
        Some(far.to_string().as_str())
    );

    // A plain put clears the expiry.
    assert_eq!(put(&node, "/v1/kv/t", b"w").status, 200);
    assert_eq!(get(&node, "/v1/kv/t").header("x-cairn-ttl-ms"), None);

    // Bad expiry parameters.
    for target in [
        "/v1/kv/t?ttl_ms=0",
        "/v1/kv/t?ttl_ms=abc",
        "/v1/kv/t?ttl_ms=5&expires_at_ms=5",
    ] {
        let r = put(&node, target, b"v");
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_argument"),
            "{target}"
        );
    }
}

#[test]
fn conditional_puts_answer_412_when_the_condition_fails() {
    let node = Node::start();
    // if_absent: first wins, second fails.
    let r = put(&node, "/v1/kv/c?if_absent", b"1");
    assert_eq!(r.status, 200);
    let version = r.json()["version"].as_u64().unwrap();
    let r = put(&node, "/v1/kv/c?if_absent=true", b"2");
    assert_eq!((r.status, r.code().as_str()), (412, "condition_failed"));
    assert_eq!(
        r.header("x-cairn-version"),
        Some(version.to_string().as_str())
    );
    assert_eq!(get(&node, "/v1/kv/c").body, b"1");

    // if_present: fails on a missing key, succeeds on an existing one.
    assert_eq!(put(&node, "/v1/kv/missing?if_present", b"x").status, 412);
    assert_eq!(get(&node, "/v1/kv/missing").status, 404);
    let r = put(&node, "/v1/kv/c?if_present=1", b"3");
    assert_eq!(r.status, 200);
    let version = r.json()["version"].as_u64().unwrap();

    // if_version: compare-and-set.
    let r = put(
        &node,
        &format!("/v1/kv/c?if_version={}", version + 1000),
        b"4",
    );
    assert_eq!(r.status, 412);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains(&version.to_string())
    );
    let r = put(&node, &format!("/v1/kv/c?if_version={version}"), b"5");
    assert_eq!(r.status, 200);
    assert_eq!(get(&node, "/v1/kv/c").body, b"5");

    // Two conditions at once are refused.
    let r = put(&node, "/v1/kv/c?if_absent&if_present", b"6");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_argument"));
}

#[test]
fn limits_and_bad_input_get_clear_errors() {
    let node = Node::start_with(&["--value-bytes-max", "1024"]);
    // Value at the limit passes; one byte more is 413, and nothing is written.
    assert_eq!(put(&node, "/v1/kv/big", &[7u8; 1024]).status, 200);
    let r = request_declared(node.http_addr, "PUT", "/v1/kv/big", 1025);
    assert_eq!((r.status, r.code().as_str()), (413, "value_too_large"));
    assert_eq!(get(&node, "/v1/kv/big").body, vec![7u8; 1024]);
    let r = request_declared(node.http_addr, "PUT", "/v1/kv/huge", 1 << 40);
    assert_eq!(r.status, 413);
    assert_eq!(get(&node, "/v1/kv/huge").status, 404);
    // A client that writes its whole oversized body before reading (as Python's http.client
    // does) gets the 413, not a reset connection: the body is drained after the answer.
    let body = vec![7u8; 8 << 20];
    let r = request(node.http_addr, "PUT", "/v1/kv/big", &body);
    assert_eq!((r.status, r.code().as_str()), (413, "value_too_large"));
    assert_eq!(get(&node, "/v1/kv/big").body, vec![7u8; 1024]);

    // Key above 64 KiB: the request target alone is then above hyper's URI limit (64 KiB), so
    // the transport answers 414 before the node sees it.
    let long_key = "k".repeat(64 * 1024 + 1);
    assert_eq!(put(&node, &format!("/v1/kv/{long_key}"), b"v").status, 414);
    assert_eq!(get(&node, &format!("/v1/kv/{long_key}")).status, 414);

    // Empty key, malformed encoding, unknown parameters.
    assert_eq!(put(&node, "/v1/kv/", b"v").status, 400);
    assert_eq!(get(&node, "/v1/kv/%zz").status, 400);
    let r = put(&node, "/v1/kv/k?ttl=5", b"v");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_argument"));
    assert!(r.json()["message"].as_str().unwrap().contains("ttl"));

    // Unknown routes and methods answer JSON too.
    let r = get(&node, "/nope");
    assert_eq!((r.status, r.code().as_str()), (404, "no_route"));
    let r = request(node.http_addr, "POST", "/v1/kv/k", b"v");
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));

    // The node is still fine.
    assert_eq!(get(&node, "/health").status, 200);
}

#[test]
fn listing_by_prefix_and_range_pages_and_is_binary_safe() {
    let node = Node::start();
    for k in ["a1", "a2", "a3", "a4", "a5", "b1", "b2"] {
        assert_eq!(
            put(&node, &format!("/v1/kv/{k}"), format!("v-{k}").as_bytes()).status,
            200
        );
    }
    assert_eq!(
        put(&node, &format!("/v1/kv/{}", pct(b"a\xff")), b"\x00\x01").status,
        200
    );

    // Phase 1: prefix, paged two at a time (base64 by default).
    let mut keys = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let mut target = "/v1/kv?prefix=a&limit=2".to_string();
        if let Some(a) = &after {
            target.push_str(&format!("&after={}", pct(a)));
        }
        let r = get(&node, &target);
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["encoding"], "base64");
        for e in j["entries"].as_array().unwrap() {
            let key = BASE64.decode(e["key"].as_str().unwrap()).unwrap();
            let value = BASE64.decode(e["value"].as_str().unwrap()).unwrap();
            assert!(e["version"].as_u64().unwrap() > 0);
            if key != b"a\xff" {
                assert_eq!(value, [b"v-".as_slice(), &key].concat());
            } else {
                assert_eq!(value, b"\x00\x01");
            }
            keys.push(key);
        }
        if !j["more"].as_bool().unwrap() {
            assert!(j["resume_after"].is_null());
            break;
        }
        after = Some(BASE64.decode(j["resume_after"].as_str().unwrap()).unwrap());
    }
    let expected: Vec<Vec<u8>> = ["a1", "a2", "a3", "a4", "a5"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .chain([b"a\xff".to_vec()])
        .collect();
    assert_eq!(keys, expected);

    // Phase 2: a range in utf8, keys only; bounds honour inclusive/exclusive flags.
    let r = get(&node, "/v1/kv?start=a2&end=a4&encoding=utf8&keys_only");
    let j = r.json();
    let listed: Vec<&str> = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["a2", "a3"]);
    assert!(j["entries"][0].get("value").is_none());
    let r = get(
        &node,
        "/v1/kv?start=a2&start_exclusive&end=a4&end_inclusive&encoding=utf8",
    );
    let j = r.json();
    let listed: Vec<&str> = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["a3", "a4"]);
    assert_eq!(j["entries"][0]["value"], "v-a3");

    // Phase 3: everything, and errors.
    assert_eq!(
        get(&node, "/v1/kv").json()["entries"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let r = get(&node, "/v1/kv?prefix=a&encoding=utf8");
    assert_eq!((r.status, r.code().as_str()), (422, "not_utf8"));
    let r = get(&node, "/v1/kv?limit=10001");
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_argument"));
    assert_eq!(get(&node, "/v1/kv?prefix=a&start=a").status, 400);
    assert_eq!(get(&node, "/v1/kv?encoding=hex").status, 400);
    assert_eq!(get(&node, "/v1/kv?bogus=1").status, 400);
}

/// How long a shard's published view may lag the request that changed it, and how often it
/// is read meanwhile.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE_POLL: Duration = Duration::from_millis(20);

#[test]
fn cluster_health_ready_metrics_and_openapi() {
    let node = Node::start();
    // Cluster map: one node, 4 shards (the default) covering every slot once, each led by this
    // node. A shard reports an entry applied a moment after it is committed, so the map is
    // read until every shard has applied what it committed.
    let j = poll_until(
        SETTLE_TIMEOUT,
        SETTLE_POLL,
        || "a shard never applied what it committed".into(),
        || {
            let r = get(&node, "/v1/cluster");
            assert_eq!(r.status, 200);
            let j = r.json();
            let settled = j["shards"].as_array().is_some_and(|s| {
                s.iter().all(|s| {
                    s["applied_index"].as_u64().is_some() && s["applied_index"] == s["commit_index"]
                })
            });
            if settled { Ok(j) } else { Err(j) }
        },
    );
    let nodes = j["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    let me = &nodes[0];
    let id = me["id"].as_str().unwrap();
    assert_eq!(j["node_id"], id);
    assert_eq!(me["grpc_addr"], node.grpc_addr.to_string());
    assert_eq!(me["http_addr"], node.http_addr.to_string());
    assert_eq!(me["resp_addr"], node.resp_addr.to_string());
    assert_eq!(me["state"], "up");
    let shards = j["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    let mut covered = vec![false; 16384];
    for s in shards {
        assert_eq!(s["leader"], id);
        assert!(s["term"].as_u64().unwrap() >= 1, "{s}");
        assert!(s["applied_index"].as_u64().is_some(), "{s}");
        assert_eq!(s["applied_index"], s["commit_index"], "{s}");
        assert_eq!(s["replicas"], serde_json::json!([id]));
        for r in s["slots"].as_array().unwrap() {
            for slot in r["start"].as_u64().unwrap()..=r["end"].as_u64().unwrap() {
                assert!(!covered[slot as usize], "slot {slot} owned twice");
                covered[slot as usize] = true;
            }
        }
    }
    assert!(covered.iter().all(|c| *c));

    let r = get(&node, "/health");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = get(&node, "/ready");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );

    // Metrics: Prometheus text that has seen this front end's requests.
    put(&node, "/v1/kv/m", b"v");
    get(&node, "/v1/kv/m");
    // The PUT is answered when its entry is applied to the engine; the group's own view of
    // its applied index follows a moment later.
    let value = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let text = poll_until(
        SETTLE_TIMEOUT,
        SETTLE_POLL,
        || "shard 3's Raft applied index never matched its commit and its engine".into(),
        || {
            let r = get(&node, "/metrics");
            assert_eq!(r.status, 200);
            assert!(r.header("content-type").unwrap().starts_with("text/plain"));
            let text = String::from_utf8(r.body).unwrap();
            let applied = value(&text, r#"cairn_shard_raft_applied_index{shard="3"}"#);
            if applied.is_some()
                && applied == value(&text, r#"cairn_shard_raft_committed_index{shard="3"}"#)
                && applied == value(&text, r#"cairn_shard_last_applied_index{shard="3"}"#)
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    for needle in [
        r#"cairn_requests_total{frontend="http",command="put"}"#,
        r#"cairn_requests_total{frontend="http",command="get"}"#,
        r#"cairn_connections{frontend="http"}"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Raft per shard: "m" (slot 15627) is in shard 3 of 4, which this node leads and whose
    // log holds the PUT; the WAL reports its fsyncs.
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    assert_eq!(
        metric(r#"cairn_shard_raft_leader{shard="3"}"#),
        1.0,
        "metrics:\n{text}"
    );
    assert!(
        metric(r#"cairn_shard_raft_term{shard="3"}"#) >= 1.0,
        "metrics:\n{text}"
    );
    let applied = metric(r#"cairn_shard_raft_applied_index{shard="3"}"#);
    assert!(applied >= 2.0, "membership and the PUT: {applied}");
    assert_eq!(
        metric(r#"cairn_shard_raft_committed_index{shard="3"}"#),
        applied,
        "metrics:\n{text}"
    );
    assert!(
        metric(r#"cairn_shard_raft_leader_changes_total{shard="3"}"#) >= 1.0,
        "metrics:\n{text}"
    );
    assert!(
        metric(r#"cairn_shard_proposals_total{shard="3"}"#) >= 1.0,
        "metrics:\n{text}"
    );
    // The Raft view and the engine's own marker agree; an idle shard proposed nothing and
    // its log is behind the written one's.
    assert_eq!(
        metric(r#"cairn_shard_last_applied_index{shard="3"}"#),
        applied,
        "metrics:\n{text}"
    );
    assert!(
        !text.contains(r#"cairn_shard_proposals_total{shard="0"}"#)
            || metric(r#"cairn_shard_proposals_total{shard="0"}"#) == 0.0,
        "metrics:\n{text}"
    );
    assert!(
        metric(r#"cairn_shard_raft_applied_index{shard="0"}"#) < applied,
        "metrics:\n{text}"
    );
    assert!(
        metric(r#"cairn_shard_entries_total{shard="3"}"#) >= 1.0,
        "metrics:\n{text}"
    );
    assert!(
        metric("cairn_wal_fsync_seconds_count") >= 1.0,
        "metrics:\n{text}"
    );
    assert!(
        metric("cairn_wal_entries_per_fsync_sum") >= 1.0,
        "metrics:\n{text}"
    );
    assert!(
        metric("cairn_wal_groups_per_fsync_count") >= 1.0,
        "metrics:\n{text}"
    );

    // OpenAPI: a valid document describing every route.
    let r = get(&node, "/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/kv/{key}",
        "/v1/kv",
        "/v1/cluster",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }
}

#[test]
fn connections_above_the_cap_get_a_json_503() {
    let node = Node::start_with(&["--max-connections", "2"]);
    // Phase 1: two idle keep-alive connections take every slot. The harness's readiness probe
    // may still hold a slot until the server notices it closed, so retry (bounded) until each
    // held connection has been answered 200.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            for _ in 0..1000 {
                let mut conn = TcpStream::connect(node.http_addr).unwrap();
                conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut status = [0u8; 12];
                conn.read_exact(&mut status).unwrap();
                if &status == b"HTTP/1.1 200" {
                    return conn;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("could not take a connection slot");
        })
        .collect();

    // Phase 2: a third is refused with a JSON 503.
    let r = get(&node, "/health");
    assert_eq!(
        r.status,
        503,
        "{:?} {}",
        String::from_utf8_lossy(&r.body),
        node.log()
    );
    assert_eq!(r.code(), "too_many_connections");

    // Phase 3: closing one frees its slot (released asynchronously: poll, bounded).
    drop(held);
    let mut status = 0;
    for _ in 0..1000 {
        status = get(&node, "/health").status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status, 200);
}

#[test]
fn transactions_compare_then_run_one_branch_across_shards() {
    let node = Node::start();
    let txn = |body: serde_json::Value| {
        request(
            node.http_addr,
            "POST",
            "/v1/txn",
            body.to_string().as_bytes(),
        )
    };
    // "foo" and "bar" live on different shards: a cross-shard transaction.
    let r = txn(serde_json::json!({
        "compare": [{"key": "foo", "exists": false}],
        "success": [
            {"put": {"key": "foo", "value": "1"}},
            {"put": {"key": "bar", "value": "2", "ttl_ms": 100000}},
            {"get": {"key": "foo"}}
        ],
        "failure": [{"get": {"key": "foo"}}]
    }));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["succeeded"], true);
    assert_eq!(j["responses"][0]["put"]["written"], true);
    assert_eq!(j["responses"][2]["get"]["found"], true);
    assert_eq!(
        j["responses"][2]["get"]["value"], "1",
        "a get sees the put before it"
    );
    let version = j["responses"][2]["get"]["version"].as_u64().unwrap();
    // The same compare fails now: the failure branch runs, and reads.
    let j = txn(serde_json::json!({
        "compare": [{"key": "foo", "exists": false}],
        "success": [{"delete": {"key": "foo"}}],
        "failure": [{"get": {"key": "bar"}}, {"delete": {"key": "nope"}}]
    }))
    .json();
    assert_eq!(j["succeeded"], false);
    assert_eq!(j["responses"][0]["get"]["value"], "2");
    assert!(j["responses"][0]["get"]["expires_at_ms"].as_u64().is_some());
    assert_eq!(j["responses"][1]["delete"]["deleted"], false);
    // Version and value compares; base64 keys and values.
    let j = txn(serde_json::json!({
        "encoding": "base64",
        "compare": [
            {"key": "Zm9v", "version": version},
            {"key": "YmFy", "value": "Mg==", "result": "equal"},
            {"key": "Zm9v", "version": version + 1, "result": "less"}
        ],
        "success": [{"put": {"key": "AP8=", "value": "//8="}}, {"delete": {"key": "Zm9v"}}]
    }))
    .json();
    assert_eq!(j["succeeded"], true, "{j}");
    assert_eq!(get(&node, "/v1/kv/%00%FF").body, vec![0xff, 0xff]);
    assert_eq!(get(&node, "/v1/kv/foo").status, 404);
    // Bad input: clear 400s, nothing written.
    for bad in [
        serde_json::json!({"compare": [{"key": "a", "version": 1, "exists": true}]}),
        serde_json::json!({"compare": [{"key": "a", "exists": true, "result": "greater"}]}),
        serde_json::json!({"success": [{"put": {"key": "a"}}]}),
        serde_json::json!({"success": [{"frob": {"key": "a"}}]}),
        serde_json::json!({"encoding": "base64", "success": [{"get": {"key": "!!"}}]}),
        serde_json::json!({"success": [{"put": {"key": "a", "value": "v", "ttl_ms": 0}}]}),
    ] {
        let r = txn(bad.clone());
        assert_eq!(
            r.status,
            400,
            "{bad}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.code(), "invalid_argument");
    }
    let r = request(node.http_addr, "POST", "/v1/txn", b"{not json");
    assert_eq!(r.status, 400);
    assert_eq!(get(&node, "/v1/kv/a").status, 404);
}
