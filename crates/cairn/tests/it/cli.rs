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

/// `cairn playground` as a user drives it: three nodes start, `add` joins a fourth,
/// `remove 2` drains node 2 out, `status` lists the cluster as it now is, data written before
/// reads through the node that joined, and SIGTERM stops every node.
#[test]
fn playground_adds_and_removes_nodes() {
    use std::io::{BufRead, BufReader};
    // A block of ports below the tests' span (free_port's, from 20000) and the kernel's
    // ephemeral range (from 32768), from a per-process offset: node i listens on base + i,
    // base + 100 + i and base + 200 + i.
    let base = (0..28)
        .map(|k| 11_000 + ((std::process::id() as u16 % 28 + k) % 28) * 300)
        .find(|&base| {
            (1..=4).all(|i| {
                [i, 100 + i, 200 + i]
                    .iter()
                    .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok())
            })
        })
        .expect("a free block of ports");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(cairn_bin())
        .args([
            "playground",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
        ])
        .arg("--dir")
        .arg(dir.path().join("pg"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn playground");
    // Kill the playground (and its nodes with it, by SIGTERM) however the test ends.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let stop = Stop(child.id());
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut said = Vec::new();
    let mut expect = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(want);
                    said.push(line);
                    if found {
                        return said.len();
                    }
                }
                Err(_) => panic!("the playground never said {want:?}:\n{}", said.join("\n")),
            }
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut send = |line: &str| writeln!(stdin, "{line}").unwrap();
    expect("Type add | remove N");
    let resp = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], base + i));
    let grpc = |i: u16| format!("127.0.0.1:{}", base + 100 + i);
    let mut conn = crate::cluster::Conn::connect(resp(1)).unwrap();
    assert_eq!(
        conn.cmd(&["SET", "hello", "world"]),
        crate::cluster::Answer::Ok
    );

    // The cluster as `cairn cluster status --json` tells it: each shard's replicas.
    let replicas = || -> Vec<Vec<String>> {
        let out = Command::new(cairn_bin())
            .args(["cluster", "status", "--json", "--endpoint"])
            .arg(format!("http://{}", grpc(1)))
            .output()
            .unwrap();
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        status["shards"]
            .as_array()
            .map(|shards| {
                shards
                    .iter()
                    .map(|g| {
                        g["replicas"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|r| r.as_str().unwrap().to_string())
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let settle = |what: &str, done: &dyn Fn(&[Vec<String>]) -> bool| {
        crate::support::poll_until(
            std::time::Duration::from_secs(120),
            std::time::Duration::from_millis(200),
            || format!("the playground's cluster never {what}"),
            || {
                let now = replicas();
                if !now.is_empty() && done(&now) {
                    Ok(())
                } else {
                    Err(now)
                }
            },
        )
    };
    settle("put three replicas on every shard", &|shards| {
        shards.iter().all(|r| r.len() == 3)
    });
    let name_of = |i: u16| -> String {
        let out = Command::new(cairn_bin())
            .args(["cluster", "status", "--json", "--endpoint"])
            .arg(format!("http://{}", grpc(i)))
            .output()
            .unwrap();
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        status["node_id"].as_str().unwrap().to_string()
    };

    send("add");
    expect("node 4 joined");
    let (second, fourth) = (name_of(2), name_of(4));
    settle("gave the fourth node its share", &|shards| {
        shards.iter().filter(|r| r.contains(&fourth)).count() >= 2
    });
    send("remove 2");
    expect("node 2 left the cluster");
    send("status");
    let upto = expect("(cluster map)");
    let status = said[..upto].join("\n");
    let last = status.rsplit("NODE ").next().unwrap_or_default();
    assert!(last.contains(&grpc(4)), "node 4 missing:\n{last}");
    assert!(!last.contains(&grpc(2)), "node 2 still listed:\n{last}");
    assert!(
        replicas()
            .iter()
            .all(|r| r.len() == 3 && !r.contains(&second)),
        "{:?}",
        replicas()
    );
    let mut conn = crate::cluster::Conn::connect(resp(4)).unwrap();
    assert_eq!(
        conn.cmd(&["GET", "hello"]),
        crate::cluster::Answer::Bulk(Some("world".into()))
    );

    drop(stop);
    let exited = child.wait().unwrap();
    assert!(exited.success(), "the playground exited with {exited}");
    for i in [1, 3, 4] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", base + 100 + i)).is_ok(),
            "node {i} still listens after the playground stopped"
        );
    }
}
