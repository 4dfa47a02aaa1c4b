//! The `cairn` client subcommands and the REPL, run as a user runs them: the real binary
//! against a started node, output compared line by line.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::{Node, cairn_bin};

/// Run `cairn ARGS --endpoint <node>` and return its output.
fn cairn(node: &Node, args: &[&str]) -> Output {
    cairn_stdin(node, args, b"")
}

fn cairn_stdin(node: &Node, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(cairn_bin())
        .args(args)
        .arg("--endpoint")
        .arg(node.grpc_url())
        .env_remove("CAIRN_ENDPOINT")
        .env("HOME", node.data_dir.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn json(o: &Output) -> Value {
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn one_shot_commands_human_and_json() {
    let node = Node::start();

    // put / get.
    assert_eq!(ok(&cairn(&node, &["put", "hello", "world"])), "OK\n");
    assert_eq!(ok(&cairn(&node, &["get", "hello"])), "world\n");
    let j = json(&cairn(&node, &["get", "hello", "--json"]));
    assert_eq!(j["value"], "world");
    assert!(j["version"].as_u64().unwrap() > 0);
    assert!(j["ttl_ms"].is_null());

    // Value from stdin, binary, kept exactly.
    let bytes = b"\x00\x01\xffbinary";
    ok(&cairn_stdin(&node, &["put", "bin"], bytes));
    let o = cairn(&node, &["get", "bin"]);
    assert_eq!(o.stdout, [bytes.as_slice(), b"\n"].concat());
    assert!(json(&cairn(&node, &["get", "bin", "--json"]))["value_base64"].is_string());

    // Conditions: exit status 1 when the condition fails.
    let o = cairn(&node, &["put", "hello", "again", "--if-absent"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("condition failed"), "{}", stderr(&o));
    let version = json(&cairn(&node, &["get", "hello", "--json"]))["version"]
        .as_u64()
        .unwrap();
    let j = json(&cairn(
        &node,
        &[
            "put",
            "hello",
            "cas",
            "--if-version",
            &version.to_string(),
            "--json",
        ],
    ));
    assert!(j["version"].as_u64().unwrap() > version);

    // expire / ttl.
    assert_eq!(ok(&cairn(&node, &["ttl", "hello"])), "-1\n");
    assert_eq!(ok(&cairn(&node, &["expire", "hello", "200"])), "OK\n");
    let ttl: u64 = ok(&cairn(&node, &["ttl", "hello"])).trim().parse().unwrap();
    assert!((1..=200).contains(&ttl), "{ttl}");
    let j = json(&cairn(&node, &["ttl", "hello", "--json"]));
    assert!(j["ttl_ms"].as_u64().unwrap() <= 200_000);
    ok(&cairn(&node, &["put", "short", "v", "--ttl", "100"]));
    assert!(
        json(&cairn(&node, &["get", "short", "--json"]))["ttl_ms"]
            .as_u64()
            .is_some()
    );

    // scan.
    for k in ["s:1", "s:2", "s:3"] {
        ok(&cairn(&node, &["put", k, &format!("val-{k}")]));
    }
    assert_eq!(
        ok(&cairn(&node, &["scan", "--prefix", "s:"])),
        "s:1\tval-s:1\ns:2\tval-s:2\ns:3\tval-s:3\n"
    );
    assert_eq!(
        ok(&cairn(
            &node,
            &[
                "scan",
                "--prefix",
                "s:",
                "--keys-only",
                "--limit",
                "1",
                "--all"
            ]
        )),
        "s:1\ns:2\ns:3\n"
    );
    let o = cairn(&node, &["scan", "--prefix", "s:", "--limit", "2"]);
    assert_eq!(ok(&o), "s:1\tval-s:1\ns:2\tval-s:2\n");
    assert!(stderr(&o).contains("--after"), "{}", stderr(&o));
    let lines: Vec<Value> = ok(&cairn(
        &node,
        &["scan", "--start", "s:2", "--end", "s:9", "--json"],
    ))
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "s:2");

    // del, then the key is missing: exit status 1 and a clear message.
    assert_eq!(ok(&cairn(&node, &["del", "hello"])), "OK\n");
    for args in [
        &["get", "hello"][..],
        &["del", "hello"],
        &["ttl", "hello"],
        &["expire", "hello", "5"],
    ] {
        let o = cairn(&node, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&o), "record not found\n", "{args:?}");
    }
    let o = cairn(&node, &["del", "hello", "--json"]);
    assert_eq!(
        (o.status.code(), json(&o)["deleted"].as_bool()),
        (Some(1), Some(false))
    );
    let o = cairn(&node, &["get", "hello", "--json"]);
    assert_eq!(
        (o.status.code(), json(&o)["error"].as_str()),
        (Some(1), Some("not_found"))
    );
}

#[test]
fn cluster_status_human_and_json() {
    let node = Node::start();
    let text = ok(&cairn(&node, &["cluster", "status"]));
    assert!(text.contains("4 shards"), "{text}");
    assert!(text.contains(&node.grpc_addr.to_string()), "{text}");
    assert!(text.contains("up"), "{text}");
    assert!(text.contains("TERM   COMMIT     APPLIED    LAG"), "{text}");
    let j = json(&cairn(&node, &["cluster", "status", "--json"]));
    assert_eq!(j["nodes"][0]["grpc_addr"], node.grpc_addr.to_string());
    assert_eq!(j["nodes"][0]["state"], "up");
    assert_eq!(j["shards"].as_array().unwrap().len(), 4);
    // Every shard's group has elected this node (term ≥ 1) and applied what it committed
    // (at least the membership entry of its bootstrap).
    for shard in j["shards"].as_array().unwrap() {
        assert!(shard["term"].as_u64().unwrap() >= 1, "{shard}");
        let commit = shard["commit_index"].as_u64().unwrap();
        assert!(commit >= 1, "{shard}");
        assert_eq!(shard["applied_index"].as_u64(), Some(commit), "{shard}");
        assert!(
            shard["last_log_index"].as_u64().unwrap() >= commit,
            "{shard}"
        );
    }
}

#[test]
fn unreachable_endpoint_fails_with_a_message() {
    let node = Node::start();
    let port = crate::support::free_port();
    let o = Command::new(cairn_bin())
        .args([
            "get",
            "k",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unavailable"), "{}", stderr(&o));
    drop(node);
}

/// `cairn repl --near-cache` says where each answer came from, as dstore's REPL does: the
/// first read from the cluster, the next from the near cache, and after its own write the
/// new value (read your writes).
#[test]
fn repl_with_a_near_cache_says_where_answers_came_from() {
    let node = Node::start();
    let script = "set a 1\nget a\nget a\nset a 2\nget a\nget a\nget missing\ncache\n";
    let out = ok(&cairn_stdin(
        &node,
        &["repl", "--near-cache"],
        script.as_bytes(),
    ));
    let prompt = format!("{}> ", node.grpc_addr);
    let replies: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix(prompt.as_str()))
        .collect();
    assert_eq!(
        &replies[..7],
        &[
            "OK",
            "1 (cluster)",
            "1 (local)",
            "OK",
            "2 (cluster)",
            "2 (local)",
            "(nil) (cluster)"
        ],
        "{out}"
    );
    assert!(replies[7].starts_with("live: true"), "{}", replies[7]);
}

#[test]
fn repl_behaves_like_simplekv_and_dstore() {
    let node = Node::start();
    let script = "set hello 1\nget hello\nexpire hello 200\nttl hello\ndel hello\nget hello\n\
                  PUT k \"two words\"\nOUT k\nREM k\nttl k\nbogus\nget\nhelp\n.exit\nget never-reached\n";
    let out = ok(&cairn_stdin(&node, &["repl"], script.as_bytes()));
    let prompt = format!("{}> ", node.grpc_addr);
    // Each input line echoes the prompt, then its reply (help spans several lines).
    let replies: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix(prompt.as_str()))
        .collect();
    assert_eq!(replies[0], "OK");
    assert_eq!(replies[1], "1");
    assert_eq!(replies[2], "OK");
    let ttl: u64 = replies[3].parse().unwrap();
    assert!((190..=200).contains(&ttl), "ttl {ttl}");
    assert_eq!(replies[4], "OK");
    assert_eq!(replies[5], "(nil)");
    assert_eq!(replies[6], "OK");
    assert_eq!(replies[7], "two words");
    assert_eq!(replies[8], "OK");
    assert_eq!(replies[9], "record not found");
    assert!(
        replies[10].starts_with("(error) unknown command 'bogus'"),
        "{}",
        replies[10]
    );
    assert!(
        replies[11].starts_with("(error) wrong number of arguments"),
        "{}",
        replies[11]
    );
    assert!(replies[12].starts_with("commands"), "{}", replies[12]);
    assert!(out.contains("exit | quit | .exit"));
    assert_eq!(replies.len(), 14, "stops at .exit:\n{out}");
}

#[test]
fn bench_runs_and_reports_percentiles() {
    let node = Node::start_with(&["--sync", "never"]);
    let o = cairn(
        &node,
        &[
            "bench",
            "-n",
            "500",
            "-c",
            "8",
            "--keys",
            "50",
            "--value-size",
            "32",
            "--json",
        ],
    );
    let j = json(&o);
    assert_eq!(j["errors"], 0, "{j}");
    let total = j["get"]["count"].as_u64().unwrap() + j["put"]["count"].as_u64().unwrap();
    assert_eq!(total, 500);
    assert!(j["ops_per_sec"].as_f64().unwrap() > 0.0);
    assert!(j["put"]["p99_us"].as_u64().unwrap() >= j["put"]["p50_us"].as_u64().unwrap());
    let text = ok(&cairn(
        &node,
        &[
            "bench",
            "-n",
            "100",
            "-c",
            "2",
            "--keys",
            "10",
            "--no-preload",
        ],
    ));
    assert!(
        text.contains("throughput:") && text.contains("p99"),
        "{text}"
    );
}

#[test]
fn bench_spreads_over_endpoints_and_checks_the_target() {
    let node = Node::start_with(&["--sync", "never"]);
    let url = node.grpc_url();

    // Stale reads over two endpoints (the same node twice): both get a connection.
    let endpoints = format!("{url},{url}");
    let args = [
        "bench",
        "-n",
        "200",
        "-c",
        "4",
        "--keys",
        "20",
        "--read-ratio",
        "1",
        "--stale",
        "--endpoints",
        &endpoints,
        "--json",
    ];
    let j = json(&cairn(&node, &args));
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["target"], "cairn");
    assert_eq!(j["stale"], true);
    assert_eq!(j["endpoints"], serde_json::json!([url, url]));
    assert_eq!(j["get"]["count"], 200, "{j}");

    // A Cairn node is not an etcd member: refused before any load, with the endpoint named.
    let o = cairn(&node, &["bench", "-n", "10", "--target", "etcd", "--json"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("{url} does not answer as etcd")),
        "{}",
        stderr(&o)
    );

    // Malformed flags.
    let o = cairn(&node, &["bench", "--endpoints", &format!("{url},,{url}")]);
    assert!(
        stderr(&o).contains("--endpoints has an empty entry"),
        "{}",
        stderr(&o)
    );
    let o = cairn(&node, &["bench", "--target", "zookeeper"]);
    assert!(
        stderr(&o).contains("possible values: cairn, etcd"),
        "{}",
        stderr(&o)
    );
}
