//! Multi-node clusters of real processes on loopback: joining, serving any key from any node on
//! every front end, losing nodes (SIGKILL) without losing an acknowledged write, and histories
//! that stay linearizable while a leader is killed, paused or cut off (`CAIRN_FAULT_ROUNDS`
//! repeats the fault).
//!
//! Each test starts its own nodes (four shards each, to keep two cores busy but not swamped),
//! the second and later ones with `--join` to the first, and waits until every shard has a
//! replica on every node and a leader. Writers record which writes were acknowledged (`+OK`),
//! which failed before anything happened (`TRYAGAIN`) and which have an unknown outcome
//! (`outcome unknown`, a dropped connection); only acknowledged writes must survive, and an
//! unknown one may or may not.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cairn_lincheck::{
    Operation, RegisterInput, RegisterModel, RegisterOutput, UNKNOWN_RETURN, Verdict,
    check_partitioned,
};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::{Firewall, Node, UnixUser, can_cut_links, poll_until};

/// Shards of each test cluster.
pub(crate) const SHARDS: &str = "4";
/// How long a cluster may take to place every replica and elect every leader.
pub(crate) const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the survivors may take to elect new leaders for a lost leader's shards (an
/// election takes 600–800 ms of silence; generous, for two busy cores).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// Nodes started together; node 0 created the cluster.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
}

impl Cluster {
    pub(crate) fn start(n: usize) -> Cluster {
        Self::start_first_as(n, None)
    }

    /// A cluster whose first node runs as `user` (so its links can be cut by owner).
    fn start_first_as(n: usize, user: Option<&UnixUser>) -> Cluster {
        let mut users = vec![None; n];
        users[0] = user;
        Self::start_as_users(&users)
    }

    /// A cluster of one node per entry of `users`, each run as its user when it names one.
    fn start_as_users(users: &[Option<&UnixUser>]) -> Cluster {
        let first = Node::start_as(users[0], &["--shards", SHARDS]);
        let join = first.grpc_addr.to_string();
        let mut nodes = vec![first];
        for user in &users[1..] {
            nodes.push(Node::start_as(
                *user,
                &["--shards", SHARDS, "--join", &join],
            ));
        }
        let cluster = Cluster { nodes };
        cluster.wait_converged(&(0..users.len()).collect::<Vec<_>>());
        cluster
    }

    /// Waits until every node in `live` sees every shard with `self.nodes.len()` voting
    /// members (three or fewer nodes: all vote) and a leader among `live`, all of them
    /// agreeing.
    fn wait_converged(&self, live: &[usize]) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let live_names: BTreeSet<String> = live
            .iter()
            .map(|&i| self.status(i)["node_id"].as_str().unwrap().to_string())
            .collect();
        loop {
            let views: Vec<Vec<(usize, usize, String)>> = live
                .iter()
                .map(|&i| {
                    let status = self.status(i);
                    status["shards"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            (
                                s["replicas"].as_array().map_or(0, |r| r.len()),
                                s["learners"].as_array().map_or(0, |r| r.len()),
                                s["leader"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .collect();
            let settled = views.iter().all(|v| {
                v.iter().all(|(members, learners, leader)| {
                    *members == self.nodes.len() && *learners == 0 && live_names.contains(leader)
                }) && *v == views[0]
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge: {views:?}\nlogs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `n` key names starting with `prefix` whose shards node `i` leads (as it sees it).
    fn keys_led_by(&self, i: usize, prefix: &str, n: usize) -> Vec<String> {
        let status = self.status(i);
        let name = status["node_id"].as_str().unwrap();
        let ranges: Vec<(i64, i64)> = status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["leader"].as_str() == Some(name))
            .flat_map(|s| s["slots"].as_array().unwrap().clone())
            .map(|r| (r["start"].as_i64().unwrap(), r["end"].as_i64().unwrap()))
            .collect();
        assert!(!ranges.is_empty(), "node {i} leads no shard");
        let mut conn = Conn::connect(self.nodes[i].resp_addr).unwrap();
        (0..)
            .map(|k| format!("{prefix}{k}"))
            .filter(|key| {
                let slot = conn.slot(key);
                ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .take(n)
            .collect()
    }

    /// Node `i`'s name in the cluster map.
    pub(crate) fn name(&self, i: usize) -> String {
        self.status(i)["node_id"].as_str().unwrap().to_string()
    }

    /// Whether node `i` sees itself leading the shard of every slot in `slots`.
    fn leads_slots(&self, i: usize, slots: &[i64]) -> bool {
        let status = self.status(i);
        let me = status["node_id"].as_str().unwrap_or("").to_string();
        slots
            .iter()
            .all(|&s| leader_of_slot(&status, s) == Some(me.as_str()))
    }

    /// Waits until node `from` sees the shard of every slot in `slots` led by another node
    /// than `victim` (a name): the fault on the victim took effect and the others elected new
    /// leaders. Returns how long that took.
    fn wait_failover(&self, from: usize, slots: &[i64], victim: &str) -> Duration {
        let begin = Instant::now();
        loop {
            let status = self.status(from);
            let leaders: Vec<Option<&str>> =
                slots.iter().map(|&s| leader_of_slot(&status, s)).collect();
            if leaders.iter().all(|l| l.is_some_and(|l| l != victim)) {
                return begin.elapsed();
            }
            assert!(
                begin.elapsed() < FAILOVER_TIMEOUT,
                "after {FAILOVER_TIMEOUT:?} node {from} still sees slots {slots:?} led by \
                 {leaders:?} (the victim is {victim}): the fault did not take effect\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i` leads at least one shard (leaders spread after joins).
    fn wait_leading(&self, i: usize) {
        let name = self.status(i)["node_id"].as_str().unwrap().to_string();
        poll_until(
            CONVERGE_TIMEOUT,
            Duration::from_millis(100),
            || format!("node {i} leads no shard\n{}", self.logs()),
            || {
                let status = self.status(i);
                let leads = status["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["leader"].as_str() == Some(&name));
                if leads { Ok(()) } else { Err(status) }
            },
        );
    }

    /// Node `i`'s `/v1/cluster` (its view of the nodes and each shard's slots and leader).
    pub(crate) fn status(&self, i: usize) -> Value {
        let response = crate::http::request(self.nodes[i].http_addr, "GET", "/v1/cluster", b"");
        assert_eq!(response.status, 200);
        response.json()
    }

    /// How many shards each node leads (by node id; "" for shards without a leader), as node
    /// `from` sees it.
    fn leader_counts(&self, from: usize) -> BTreeMap<String, usize> {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for shard in self.status(from)["shards"].as_array().unwrap() {
            *count
                .entry(shard["leader"].as_str().unwrap_or("").into())
                .or_default() += 1;
        }
        count
    }

    /// Index of the node leading the most shards, as node `from` sees it.
    fn busiest_leader(&self, from: usize) -> usize {
        let count = self.leader_counts(from);
        let (leader, _) = count.into_iter().max_by_key(|(_, n)| *n).unwrap();
        (0..self.nodes.len())
            .find(|&i| {
                self.nodes[i].child.is_some() && self.status(i)["node_id"].as_str() == Some(&leader)
            })
            .expect("the leader is a running node")
    }

    pub(crate) fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- node {i} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A RESP connection whose failures are answers, not panics (its node may be killed).
pub(crate) struct Conn {
    stream: TcpStream,
}

/// What a command came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Ok,
    Bulk(Option<String>),
    Int(i64),
    Array(Vec<Answer>),
    Error(String),
    /// The connection failed: the command may or may not have run.
    Lost,
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr) -> Option<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Conn { stream })
    }

    pub(crate) fn cmd(&mut self, args: &[&str]) -> Answer {
        if !self.send(args) {
            return Answer::Lost;
        }
        self.read().unwrap_or(Answer::Lost)
    }

    /// Sends a command without waiting for its answer; false when the connection failed.
    fn send(&mut self, args: &[&str]) -> bool {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream.write_all(out.as_bytes()).is_ok()
    }

    /// `key`'s hash slot (CLUSTER KEYSLOT).
    fn slot(&mut self, key: &str) -> i64 {
        match self.cmd(&["CLUSTER", "KEYSLOT", key]) {
            Answer::Int(slot) => slot,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            self.stream.read_exact(&mut byte)?;
            line.push(byte[0]);
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn read(&mut self) -> std::io::Result<Answer> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Answer::Ok,
            "-" => Answer::Error(rest.to_string()),
            ":" => Answer::Int(rest.parse().unwrap()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    Answer::Bulk(None)
                } else {
                    let mut body = vec![0u8; len as usize + 2];
                    self.stream.read_exact(&mut body)?;
                    body.truncate(len as usize);
                    Answer::Bulk(Some(String::from_utf8(body).unwrap()))
                }
            }
            "*" => {
                let len: i64 = rest.parse().unwrap();
                let items = (0..len.max(0)).map(|_| self.read());
                Answer::Array(items.collect::<std::io::Result<_>>()?)
            }
            other => panic!("unexpected reply type {other:?}"),
        })
    }
}

/// The name of the node leading the shard that holds `slot`, as `status` (a `/v1/cluster`
/// answer) reports it; `None` when the shard has no leader.
fn leader_of_slot(status: &Value, slot: i64) -> Option<&str> {
    let shard = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["slots"].as_array().unwrap().iter().any(|r| {
                (r["start"].as_i64().unwrap()..=r["end"].as_i64().unwrap()).contains(&slot)
            })
        })
        .expect("every slot is in a shard");
    shard["leader"].as_str().filter(|l| !l.is_empty())
}

pub(crate) fn is_retriable(error: &str) -> bool {
    error.starts_with("TRYAGAIN")
}

pub(crate) fn is_unknown(error: &str) -> bool {
    error.contains("outcome unknown")
}

#[test]
fn writes_through_any_node_on_every_front_end_are_read_from_every_node() {
    let mut cluster = Cluster::start(3);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut conn = Conn::connect(node.resp_addr).unwrap();
        for k in 0..8 {
            let key = format!("resp:{i}:{k}");
            assert_eq!(conn.cmd(&["SET", &key, &format!("v{i}{k}")]), Answer::Ok);
        }
        let http = crate::http::request(
            node.http_addr,
            "PUT",
            &format!("/v1/kv/http:{i}"),
            format!("h{i}").as_bytes(),
        );
        assert_eq!(http.status, 200, "{}", String::from_utf8_lossy(&http.body));
        let out = std::process::Command::new(crate::support::cairn_bin())
            .args([
                "put",
                &format!("grpc:{i}"),
                &format!("g{i}"),
                "--endpoint",
                &node.grpc_url(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Counters incremented through every node count every increment.
    for node in &cluster.nodes {
        let mut conn = Conn::connect(node.resp_addr).unwrap();
        for _ in 0..5 {
            let answer = conn.cmd(&["INCR", "counter"]);
            assert!(
                matches!(answer, Answer::Int(_)),
                "INCR through {}: {answer:?}\n{}",
                node.resp_addr,
                cluster.logs()
            );
        }
    }
    for node in &cluster.nodes {
        let mut conn = Conn::connect(node.resp_addr).unwrap();
        for i in 0..3 {
            for k in 0..8 {
                assert_eq!(
                    conn.cmd(&["GET", &format!("resp:{i}:{k}")]),
                    Answer::Bulk(Some(format!("v{i}{k}")))
                );
            }
            assert_eq!(
                conn.cmd(&["GET", &format!("http:{i}")]),
                Answer::Bulk(Some(format!("h{i}")))
            );
            let http =
                crate::http::request(node.http_addr, "GET", &format!("/v1/kv/grpc:{i}"), b"");
            assert_eq!(http.status, 200);
            assert_eq!(http.body, format!("g{i}").as_bytes());
            let out = std::process::Command::new(crate::support::cairn_bin())
                .args([
                    "get",
                    &format!("resp:{i}:0"),
                    "--endpoint",
                    &node.grpc_url(),
                ])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("v{i}0")
            );
            // `--stale` reads the node's own replica, which catches up on its own.
            poll_until(
                CONVERGE_TIMEOUT,
                Duration::from_millis(50),
                || format!("cairn get --stale on node {i} never read v{i}0"),
                || {
                    let out = std::process::Command::new(crate::support::cairn_bin())
                        .args(["get", "--stale", &format!("resp:{i}:0")])
                        .args(["--endpoint", &node.grpc_url()])
                        .output()
                        .unwrap();
                    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if out.status.success() && got == format!("v{i}0") {
                        Ok(())
                    } else {
                        Err((got, String::from_utf8_lossy(&out.stderr).to_string()))
                    }
                },
            );
        }
        assert_eq!(
            conn.cmd(&["GET", "counter"]),
            Answer::Bulk(Some("15".into()))
        );
        // A stale read is served by this node's own replica, which catches up on its own.
        poll_until(
            CONVERGE_TIMEOUT,
            Duration::from_millis(20),
            || "the stale read never caught up".into(),
            || {
                let stale = crate::http::request(
                    node.http_addr,
                    "GET",
                    "/v1/kv/counter?consistency=stale",
                    b"",
                );
                if stale.status == 200 && stale.body == b"15" {
                    Ok(())
                } else {
                    Err((
                        stale.status,
                        String::from_utf8_lossy(&stale.body).to_string(),
                    ))
                }
            },
        );
        let bad = crate::http::request(
            node.http_addr,
            "GET",
            "/v1/kv/counter?consistency=eventual",
            b"",
        );
        assert_eq!(bad.status, 400);
        // Multi-key reads and deletes fan out over shards led by different nodes.
        let keys: Vec<String> = (0..8).map(|k| format!("resp:0:{k}")).collect();
        let mut args = vec!["EXISTS"];
        args.extend(keys.iter().map(String::as_str));
        assert_eq!(conn.cmd(&args), Answer::Int(8));
    }
    let mut conn = Conn::connect(cluster.nodes[2].resp_addr).unwrap();
    let mut args = vec!["DEL"];
    let keys: Vec<String> = (0..8).map(|k| format!("resp:1:{k}")).collect();
    args.extend(keys.iter().map(String::as_str));
    assert_eq!(conn.cmd(&args), Answer::Int(8));
    let mut conn = Conn::connect(cluster.nodes[0].resp_addr).unwrap();
    assert_eq!(conn.cmd(&["GET", "resp:1:3"]), Answer::Bulk(None));

    // The two other nodes die. The last one's own replicas still serve stale reads (HTTP
    // `consistency=stale`, RESP READONLY), of a shard it led and of `counter` (all replicas
    // hold 15, checked above); a linearizable read it must refuse once its lease is over,
    // since without a majority it cannot know whether others elected a leader and wrote.
    let alone = 0;
    cluster.wait_leading(alone);
    let own = cluster.keys_led_by(alone, "alone:", 1).remove(0);
    assert_eq!(conn.cmd(&["SET", &own, "mine"]), Answer::Ok);
    for node in &mut cluster.nodes[1..] {
        node.kill();
    }
    let expected = [(own.as_str(), "mine"), ("counter", "15")];
    let mut readonly = Conn::connect(cluster.nodes[alone].resp_addr).unwrap();
    assert_eq!(readonly.cmd(&["READONLY"]), Answer::Ok);
    for (key, value) in expected {
        let stale = crate::http::request(
            cluster.nodes[alone].http_addr,
            "GET",
            &format!("/v1/kv/{key}?consistency=stale"),
            b"",
        );
        assert_eq!(
            (
                stale.status,
                String::from_utf8_lossy(&stale.body).into_owned()
            ),
            (200, value.to_string()),
            "a stale HTTP read of {key} on a node without a quorum"
        );
        assert_eq!(
            readonly.cmd(&["GET", key]),
            Answer::Bulk(Some(value.into())),
            "a READONLY read of {key} on a node without a quorum"
        );
    }
    for (key, _) in expected {
        // The leader's lease from its last quorum may cover the first reads after the kill;
        // once it runs out every linearizable read is refused.
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        for served in 0.. {
            let answer = conn.cmd(&["GET", key]);
            eprintln!("GET {key} on a node without a quorum, after {served} served: {answer:?}");
            match &answer {
                Answer::Error(e) if is_retriable(e) => break,
                // No answer in time: not served either.
                Answer::Lost => {
                    conn = Conn::connect(cluster.nodes[alone].resp_addr).unwrap();
                    break;
                }
                Answer::Bulk(_) => assert!(
                    Instant::now() < deadline,
                    "a node without a quorum still serves linearizable reads of {key}"
                ),
                _ => panic!("a node without a quorum answered GET {key} with {answer:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What one writer learned.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Keys whose SET was acknowledged.
    pub(crate) acked: Vec<String>,
    /// Keys whose SET was refused with TRYAGAIN: they must never appear.
    pub(crate) refused: Vec<String>,
    /// Its counter key, and the INCRs on it acknowledged and of unknown outcome.
    pub(crate) counter: String,
    pub(crate) incr_acked: i64,
    pub(crate) incr_unknown: i64,
    /// Every error answer, in order (retriable or of unknown outcome).
    pub(crate) errors: Vec<String>,
    /// The longest any one write took to be answered.
    pub(crate) slowest: Duration,
}

/// One writer: alternately SETs unique keys and INCRs its own counter through `addr` until
/// `go` says stop, recording what it learned. INCR writes an absolute value computed from
/// state, so a refused entry whose effect leaked into a later one, or an increment applied
/// twice, shows up as a counter outside [acknowledged, acknowledged + unknown].
pub(crate) fn write_while(addr: SocketAddr, writer: usize, go: impl Fn() -> bool) -> Written {
    write_counting(addr, writer, format!("ctr:{writer}"), go)
}

/// [`write_while`] with `counter` as its counter key.
pub(crate) fn write_counting(
    addr: SocketAddr,
    writer: usize,
    counter: String,
    go: impl Fn() -> bool,
) -> Written {
    let mut w = Written {
        counter,
        ..Written::default()
    };
    let mut conn = Conn::connect(addr);
    let mut seq = 0;
    while go() {
        let Some(c) = conn.as_mut() else {
            return w;
        };
        seq += 1;
        let asked = Instant::now();
        if seq % 2 == 0 {
            let answer = c.cmd(&["INCR", &w.counter]);
            w.slowest = w.slowest.max(asked.elapsed());
            match answer {
                Answer::Int(_) => w.incr_acked += 1,
                Answer::Error(e) if is_retriable(&e) => w.errors.push(e),
                Answer::Error(e) if is_unknown(&e) => {
                    w.incr_unknown += 1;
                    w.errors.push(e);
                }
                Answer::Lost => {
                    w.incr_unknown += 1;
                    w.errors.push("INCR: connection lost".into());
                    conn = None;
                }
                other => panic!("writer {writer}: INCR answered {other:?}"),
            }
            continue;
        }
        let key = format!("w{writer}:{seq}");
        let answer = c.cmd(&["SET", &key, &key]);
        w.slowest = w.slowest.max(asked.elapsed());
        match answer {
            Answer::Ok => w.acked.push(key),
            Answer::Error(e) if is_retriable(&e) => {
                w.refused.push(key);
                w.errors.push(e);
            }
            Answer::Error(e) if is_unknown(&e) => w.errors.push(e),
            Answer::Lost => {
                w.errors.push("SET: connection lost".into());
                conn = None;
            }
            other => panic!("writer {writer}: SET answered {other:?}"),
        }
    }
    w
}

/// Writes through every node while phases run; returns what every writer learned.
fn with_writers(cluster: &Cluster, writers_per_node: usize, run: Duration) -> Vec<Written> {
    let stop = Instant::now() + run;
    let threads: Vec<_> = cluster
        .nodes
        .iter()
        .flat_map(|n| std::iter::repeat_n(n.resp_addr, writers_per_node))
        .enumerate()
        .map(|(w, addr)| std::thread::spawn(move || write_while(addr, w, || Instant::now() < stop)))
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("writer"))
        .collect()
}

/// Every refused SET is absent, and every counter counts each acknowledged INCR once and at
/// most the unknown ones besides.
pub(crate) fn assert_outcomes_honest(cluster: &Cluster, from: usize, written: &[Written]) {
    let mut conn = Conn::connect(cluster.nodes[from].resp_addr).unwrap();
    for w in written {
        for key in &w.refused {
            assert_eq!(
                conn.cmd(&["GET", key]),
                Answer::Bulk(None),
                "{key} was refused with TRYAGAIN but was written\n{}",
                cluster.logs()
            );
        }
        let value = match conn.cmd(&["GET", &w.counter]) {
            Answer::Bulk(v) => v.map_or(0, |v| v.parse::<i64>().unwrap()),
            other => panic!("GET {}: {other:?}", w.counter),
        };
        assert!(
            (w.incr_acked..=w.incr_acked + w.incr_unknown).contains(&value),
            "{} is {value}: {} INCRs acknowledged, {} unknown\n{}",
            w.counter,
            w.incr_acked,
            w.incr_unknown,
            cluster.logs()
        );
    }
}

pub(crate) fn assert_readable(cluster: &Cluster, from: usize, keys: &[String]) {
    let mut conn = Conn::connect(cluster.nodes[from].resp_addr).unwrap();
    for key in keys {
        assert_eq!(
            conn.cmd(&["GET", key]),
            Answer::Bulk(Some(key.clone())),
            "acknowledged write {key} lost (read through node {from})\n{}",
            cluster.logs()
        );
    }
}

/// How long after its leader is killed a shard may take to acknowledge writes again. The
/// failover benchmark (`scripts/bench-cluster.sh`) measures about 0.74 s (median); CI on two
/// busy cores gets ample headroom.
const WRITES_RESUME_MAX: Duration = Duration::from_secs(10);

/// SETs `key` to itself through `addr` until one is acknowledged; returns how long that took,
/// or every answer when `within` ran out first.
fn set_until_acked(addr: SocketAddr, key: &str, within: Duration) -> Result<Duration, Vec<Answer>> {
    let begin = Instant::now();
    let mut answers = Vec::new();
    let mut conn = Conn::connect(addr);
    while begin.elapsed() < within {
        let answer = conn
            .as_mut()
            .map_or(Answer::Lost, |c| c.cmd(&["SET", key, key]));
        match answer {
            Answer::Ok => return Ok(begin.elapsed()),
            Answer::Lost => conn = Conn::connect(addr),
            _ => {}
        }
        answers.push(answer);
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(answers)
}

#[test]
fn killing_nodes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    // Phase 1: writers on every node; the busiest shard leader is killed mid-way, and a
    // survivor writes a key of one of its shards until that shard's new leader acknowledges.
    let victim = cluster.busiest_leader(0);
    let victim_name = cluster.name(victim);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let resume_key = cluster.keys_led_by(victim, "resume:", 1).remove(0);
    let killer = {
        let pid = cluster.nodes[victim].child.as_ref().unwrap().id();
        let via = cluster.nodes[survivors[0]].resp_addr;
        let key = resume_key.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            set_until_acked(via, &key, WRITES_RESUME_MAX)
        })
    };
    let written = with_writers(&cluster, 2, Duration::from_secs(5));
    let mut acked: Vec<String> = written.iter().flat_map(|w| w.acked.clone()).collect();
    let resumed = killer.join().unwrap().unwrap_or_else(|answers| {
        panic!(
            "no write to the killed leader's shard was acknowledged within \
             {WRITES_RESUME_MAX:?}: {answers:?}\n{}",
            cluster.logs()
        )
    });
    eprintln!("writes to the killed leader's shard resumed {resumed:?} after the kill");
    acked.push(resume_key);
    cluster.nodes[victim].kill();
    // The two survivors keep a majority of every shard: writes through them succeed.
    let mut conn = Conn::connect(cluster.nodes[survivors[0]].resp_addr).unwrap();
    for k in 0..20 {
        let key = format!("after-kill:{k}");
        assert_eq!(
            conn.cmd(&["SET", &key, &key]),
            Answer::Ok,
            "{}",
            cluster.logs()
        );
        acked.push(key);
    }
    for &i in &survivors {
        assert_readable(&cluster, i, &acked);
    }
    // The metadata leader marks the silent node down (after --down-after-ms, 5 s by
    // default), and every survivor's map says so.
    for &i in &survivors {
        poll_until(
            CONVERGE_TIMEOUT,
            Duration::from_millis(100),
            || {
                format!(
                    "node {i} does not see the killed node as down\n{}",
                    cluster.logs()
                )
            },
            || {
                let status = cluster.status(i);
                let state = status["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["id"].as_str() == Some(&victim_name))
                    .map(|n| n["state"].clone());
                if state.as_ref().and_then(|s| s.as_str()) == Some("down") {
                    Ok(())
                } else {
                    Err(state)
                }
            },
        );
    }

    // Phase 2: a second node dies; the last one leads shards but, one of three, must
    // acknowledge nothing: each write to them is refused (TRYAGAIN: nothing happened) or has
    // an unknown outcome (it may have been appended, and commit once the others are back).
    let (alone, second) = (survivors[0], survivors[1]);
    cluster.wait_leading(alone);
    let probes = cluster.keys_led_by(alone, "minority:", 2);
    cluster.nodes[second].kill();
    // One after the other: the first meets a leader that cannot commit (outcome unknown
    // after the commit wait), the next one usually a leader stepping down (TRYAGAIN).
    let mut conn = Conn::connect(cluster.nodes[alone].resp_addr).unwrap();
    let mut refused = Vec::new();
    for key in &probes {
        let answer = conn.cmd(&["SET", key, key]);
        eprintln!("a lone leader answered SET {key}: {answer:?}");
        match answer {
            Answer::Error(e) if is_retriable(&e) => refused.push(key.clone()),
            Answer::Error(e) if is_unknown(&e) => {}
            // No answer in time: unknown too.
            Answer::Lost => conn = Conn::connect(cluster.nodes[alone].resp_addr).unwrap(),
            other => panic!("a minority acknowledged a write: {other:?}"),
        }
    }

    // Phase 3: everything restarts (the whole cluster, from its data directories).
    cluster.nodes[alone].kill();
    for node in cluster.nodes.iter_mut() {
        node.spawn();
    }
    cluster.wait_converged(&[0, 1, 2]);
    for i in 0..3 {
        assert_readable(&cluster, i, &acked);
        assert_outcomes_honest(&cluster, i, &written);
        let mut conn = Conn::connect(cluster.nodes[i].resp_addr).unwrap();
        for key in &refused {
            assert_eq!(
                conn.cmd(&["GET", key]),
                Answer::Bulk(None),
                "{key} was refused with TRYAGAIN by a lone leader but was written\n{}",
                cluster.logs()
            );
        }
    }
    assert!(
        acked.len() > 40,
        "too few writes were acknowledged: {}",
        acked.len()
    );
}

pub(crate) type Op = Operation<RegisterInput<u64>, RegisterOutput<u64>>;

/// One client of the linearizability run.
#[derive(Debug, Clone)]
pub(crate) struct LinClient {
    pub(crate) id: u64,
    /// Every node's RESP address; a client reconnects to a random one when its node fails.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The node to talk to first (`None`: a random one).
    pub(crate) pinned: Option<SocketAddr>,
    /// The keys it reads and writes.
    pub(crate) keys: Vec<String>,
    /// Percentage of operations that are reads (the rest: 5 writes to 1 delete).
    pub(crate) read_pct: u32,
    /// Set when the run is over (a while after the fault ended).
    pub(crate) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Most operations one client records (bounds the checker's work).
const LIN_OPS_MAX: u64 = 600;
/// Pause between a client's operations, so its history spans the fault.
const LIN_PAUSE: Duration = Duration::from_millis(4);

/// Random reads, writes and deletes of a few keys, reconnecting elsewhere when the node
/// dies; returns (key index, operation) for each operation whose effect is checkable.
pub(crate) fn lin_client(c: LinClient, start: Instant) -> Vec<(usize, Op)> {
    let client = c.id;
    let mut rng = rand::rngs::StdRng::seed_from_u64(client);
    let mut conn: Option<Conn> = c.pinned.and_then(Conn::connect);
    let mut history = Vec::new();
    for seq in 0..LIN_OPS_MAX {
        if c.stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(LIN_PAUSE);
        while conn.is_none() {
            conn = Conn::connect(c.addrs[rng.random_range(0..c.addrs.len())]);
        }
        let conn_now = conn.as_mut().unwrap();
        let key = rng.random_range(0..c.keys.len());
        let name = c.keys[key].clone();
        let value = client * 1_000_000 + seq;
        let input = match rng.random_range(0..100) {
            n if n < c.read_pct => RegisterInput::Read,
            n if (n - c.read_pct) % 6 < 5 => RegisterInput::Write(value),
            _ => RegisterInput::Delete,
        };
        let call = start.elapsed().as_nanos() as u64;
        let answer = match &input {
            RegisterInput::Read => conn_now.cmd(&["GET", &name]),
            RegisterInput::Write(v) => conn_now.cmd(&["SET", &name, &v.to_string()]),
            RegisterInput::Delete => conn_now.cmd(&["DEL", &name]),
        };
        let ret = start.elapsed().as_nanos() as u64;
        if answer == Answer::Lost {
            conn = None;
        }
        if let Some(op) = record(client, input, answer, call, ret) {
            history.push((key, op));
        }
    }
    history
}

/// The operation a client's answer records; `None` when it has no effect to check (refused
/// before anything happened, or a read that failed).
fn record(
    client: u64,
    input: RegisterInput<u64>,
    answer: Answer,
    call: u64,
    ret: u64,
) -> Option<Op> {
    let (output, ret) = match (&input, answer) {
        (RegisterInput::Read, Answer::Bulk(v)) => {
            (RegisterOutput::Read(v.map(|v| v.parse().unwrap())), ret)
        }
        (RegisterInput::Write(_), Answer::Ok) => (RegisterOutput::Done, ret),
        (RegisterInput::Delete, Answer::Int(n)) => (RegisterOutput::Deleted(n == 1), ret),
        (_, Answer::Error(e)) if is_retriable(&e) => return None,
        (RegisterInput::Read, Answer::Lost) => return None,
        (_, Answer::Error(e)) if is_unknown(&e) => (RegisterOutput::Unknown, UNKNOWN_RETURN),
        (_, Answer::Lost) => (RegisterOutput::Unknown, UNKNOWN_RETURN),
        (_, other) => panic!("client {client}: {input:?} answered {other:?}"),
    };
    Some(Operation {
        client,
        input,
        output,
        call,
        ret,
    })
}

/// Checks the recorded (key index, operation) pairs key by key; on failure, the key that is
/// not linearizable and its operations in call order.
pub(crate) fn check_linearizable(recorded: Vec<(usize, Op)>) -> Result<(), (usize, Vec<Op>)> {
    let of_op: Vec<usize> = recorded.iter().map(|(k, _)| *k).collect();
    let history: Vec<Op> = recorded.into_iter().map(|(_, op)| op).collect();
    match check_partitioned(&RegisterModel::<u64>::default(), &history, |i, _| of_op[i]) {
        Verdict::Linearizable => Ok(()),
        Verdict::NotLinearizable { longest } => {
            let key = of_op[longest.first().copied().unwrap_or(0)];
            let mut ops: Vec<Op> = history
                .into_iter()
                .zip(&of_op)
                .filter(|(_, k)| **k == key)
                .map(|(op, _)| op)
                .collect();
            ops.sort_by_key(|op| op.call);
            Err((key, ops))
        }
        Verdict::Unknown => panic!("the checker ran out of budget"),
    }
}

/// What happens to the busiest leader while clients run.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL.
    Kill,
    /// SIGSTOP until the others elected a new leader and acknowledged a write, then SIGCONT
    /// with a read of the key waiting: a leader that wakes up after the others elected a new
    /// one must not serve a read from its old lease or acknowledge a write on its own.
    Pause,
    /// Cut the links between the first node (a leader, running as its own Unix user) and its
    /// peers with iptables until a few seconds after the others elected a new leader; clients
    /// still reach it. The isolated leader must serve no read its lease no longer covers and
    /// acknowledge no write.
    Partition,
}

#[test]
fn histories_stay_linearizable_while_a_leader_is_killed() {
    check_histories_under(Fault::Kill);
}

#[test]
fn histories_stay_linearizable_while_a_leader_is_paused() {
    check_histories_under(Fault::Pause);
}

#[test]
fn histories_stay_linearizable_while_a_leader_is_partitioned() {
    if can_cut_links() {
        check_histories_under(Fault::Partition);
    }
}

fn signal(node: &Node, name: &str) {
    let pid = node.child.as_ref().expect("running").id();
    let status = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Rounds of the fault in each `histories_stay_linearizable_*` test: `CAIRN_FAULT_ROUNDS`,
/// default 1 (longer runs: README).
fn fault_rounds() -> usize {
    std::env::var("CAIRN_FAULT_ROUNDS")
        .map(|v| v.parse().expect("CAIRN_FAULT_ROUNDS is a number"))
        .unwrap_or(1)
}

/// How long a partition lasts after the others elected a new leader: writers stuck on the old
/// leader give up (1 s after the move) and new writes commit, while the clients pinned to the
/// old leader go on reading from it.
const PARTITION_AFTER_FAILOVER: Duration = Duration::from_secs(3);
/// Fewest operations of known outcome that each round's clients must have called after the
/// fault began: a run whose clients were stuck, or ended early, proves nothing.
const OPS_AFTER_FAULT_MIN: usize = 20;
/// The client id of operations the test itself performs during a fault.
const FAULT_CLIENT: u64 = 100;

fn check_histories_under(fault: Fault) {
    let user = matches!(fault, Fault::Partition).then(|| UnixUser::create("part"));
    let mut firewall = matches!(fault, Fault::Partition).then(Firewall::new);
    let mut cluster = Cluster::start_first_as(3, user.as_ref());
    let rounds = fault_rounds();
    for round in 0..rounds {
        // Phase 1: leaders settle (each node leads a shard) before keys are chosen, so the
        // keys' shards are still led by the victim when the fault comes.
        for i in 0..3 {
            cluster.wait_leading(i);
        }
        let victim = match fault {
            Fault::Partition => 0,
            _ => cluster.busiest_leader(0),
        };
        let survivor = if victim == 1 { 2 } else { 1 };
        let victim_name = cluster.name(victim);
        // Keys of shards the victim leads, fresh each round, so its fault is what the
        // clients meet; two extra clients talk to the victim and only read (a write there
        // would hold them for the whole fault), so reads reach it after the others elected a
        // new leader: an old leader that answered from a lease it no longer holds is caught.
        // Their leadership must hold still (the balancer evens out leaderships every 500 ms)
        // before clients start: four looks 300 ms apart agree, or the keys are
        // picked again from the victim's shards as they are now.
        let steady_by = Instant::now() + CONVERGE_TIMEOUT;
        let (keys, slots) = loop {
            assert!(
                Instant::now() < steady_by,
                "the victim's leadership never settled\n{}",
                cluster.logs()
            );
            let keys = cluster.keys_led_by(victim, &format!("lin{round}:"), 2);
            let slots: Vec<i64> = {
                let mut conn = Conn::connect(cluster.nodes[survivor].resp_addr).unwrap();
                keys.iter().map(|k| conn.slot(k)).collect()
            };
            let steady = (0..4).all(|_| {
                std::thread::sleep(Duration::from_millis(300));
                cluster.leads_slots(victim, &slots)
            });
            if steady {
                break (keys, slots);
            }
        };

        // Phase 2: clients run; the fault comes; the others elect new leaders.
        let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.resp_addr).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start = Instant::now();
        let clients: Vec<_> = (0..8u64)
            .map(|id| {
                let c = LinClient {
                    id,
                    addrs: addrs.clone(),
                    pinned: (id >= 6).then_some(addrs[victim]),
                    keys: keys.clone(),
                    read_pct: if id >= 6 { 100 } else { 40 },
                    stop: stop.clone(),
                };
                std::thread::spawn(move || lin_client(c, start))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        // The fault must meet the keys' leader, or the round tests nothing.
        assert!(
            cluster.leads_slots(victim, &slots),
            "round {round}: node {victim} no longer leads slots {slots:?} when the fault comes\n{}",
            cluster.logs()
        );
        let fault_at = start.elapsed().as_nanos() as u64;
        let mut own_ops: Vec<(usize, Op)> = Vec::new();
        let failover = match fault {
            Fault::Kill => {
                cluster.nodes[victim].kill();
                cluster.wait_failover(survivor, &slots, &victim_name)
            }
            Fault::Pause => {
                signal(&cluster.nodes[victim], "-STOP");
                let failover = cluster.wait_failover(survivor, &slots, &victim_name);
                own_ops = read_from_a_woken_leader(&cluster, victim, survivor, &keys[0], start);
                failover
            }
            Fault::Partition => {
                let firewall = firewall.as_mut().unwrap();
                let uid = user.as_ref().map(|u| u.uid);
                // Peers cannot reach the first node's gRPC port, nor it theirs.
                firewall.drop_to_port(cluster.nodes[0].grpc_addr.port(), None);
                for peer in &cluster.nodes[1..] {
                    firewall.drop_to_port(peer.grpc_addr.port(), uid);
                }
                let failover = cluster.wait_failover(survivor, &slots, &victim_name);
                std::thread::sleep(PARTITION_AFTER_FAILOVER);
                firewall.heal();
                failover
            }
        };
        // Histories go on past the fault: the new leader's writes and the old one's reads meet.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);

        // Phase 3: the round's history is linearizable, and holds enough after the fault.
        let recorded: Vec<(usize, Op)> = clients
            .into_iter()
            .flat_map(|t| t.join().expect("client"))
            .chain(own_ops)
            .collect();
        let after_fault = recorded
            .iter()
            .filter(|(_, op)| op.call >= fault_at && op.ret != UNKNOWN_RETURN)
            .count();
        eprintln!(
            "round {round}: {fault:?} of node {victim}, new leaders after {failover:?}, \
             {after_fault} operations of known outcome called after the fault"
        );
        assert!(
            after_fault >= OPS_AFTER_FAULT_MIN,
            "round {round}: only {after_fault} operations called after the fault have a known \
             outcome\n{}",
            cluster.logs()
        );
        if let Err((key, ops)) = check_linearizable(recorded) {
            panic!(
                "round {round}: key {} is not linearizable:\n{ops:#?}\n{}",
                keys[key],
                cluster.logs()
            );
        }

        // Phase 4: the cluster is whole again before the next round.
        if round + 1 < rounds {
            if cluster.nodes[victim].child.is_none() {
                cluster.nodes[victim].spawn();
            }
            cluster.wait_converged(&[0, 1, 2]);
        }
    }
}

/// While `victim` is stopped (SIGSTOP) and `survivor` sees a new leader: writes a fresh value
/// of `key` through `survivor` until it is acknowledged, then sends a GET of `key` to the
/// victim on a new connection (the kernel accepts it), continues the victim and reads the
/// answer. The old leader's lease ran out while it slept, so it must not answer from it: the
/// GET, called after the write returned, must see the fresh value or a later one. Returns
/// these operations for the history.
fn read_from_a_woken_leader(
    cluster: &Cluster,
    victim: usize,
    survivor: usize,
    key: &str,
    start: Instant,
) -> Vec<(usize, Op)> {
    let now = || start.elapsed().as_nanos() as u64;
    let mut ops = Vec::new();
    let mut conn = Conn::connect(cluster.nodes[survivor].resp_addr).unwrap();
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    for attempt in 0.. {
        assert!(
            Instant::now() < deadline,
            "no write was acknowledged while the leader slept\n{}",
            cluster.logs()
        );
        let value = FAULT_CLIENT * 1_000_000 + attempt;
        let call = now();
        let answer = conn.cmd(&["SET", key, &value.to_string()]);
        let acked = answer == Answer::Ok;
        if answer == Answer::Lost {
            conn = Conn::connect(cluster.nodes[survivor].resp_addr).unwrap();
        }
        let input = RegisterInput::Write(value);
        ops.extend(record(FAULT_CLIENT, input, answer, call, now()).map(|op| (0, op)));
        if acked {
            break;
        }
    }
    let mut woken = Conn::connect(cluster.nodes[victim].resp_addr).expect("connect to the victim");
    let call = now();
    assert!(woken.send(&["GET", key]));
    signal(&cluster.nodes[victim], "-CONT");
    let answer = woken.read().unwrap_or(Answer::Lost);
    let ret = now();
    assert!(
        matches!(answer, Answer::Bulk(_)),
        "the woken leader answered a read with {answer:?}\n{}",
        cluster.logs()
    );
    ops.extend(record(FAULT_CLIENT, RegisterInput::Read, answer, call, ret).map(|op| (0, op)));
    ops
}

#[test]
fn cluster_clients_go_to_leaders_directly() {
    let python = std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let have_py = crate::clients::tool_available(&python, &["-c", "import redis"]);
    let have_cli = crate::clients::tool_available("redis-cli", &["--version"]);
    let cluster = Cluster::start(3);
    // Leaders spread over the nodes: each leads a shard, so the map has three masters.
    for i in 0..3 {
        cluster.wait_leading(i);
    }
    // The map cluster clients route by (nodes forward by default, so a client that goes to the
    // wrong node still gets the right answer): on every node, CLUSTER SLOTS names as master of
    // each shard's slots the RESP port of the node /v1/cluster names its leader. Leadership
    // may move for a moment, so the maps are read again until they agree.
    let resp_port: BTreeMap<String, i64> = (0..3)
        .map(|i| {
            (
                cluster.name(i),
                i64::from(cluster.nodes[i].resp_addr.port()),
            )
        })
        .collect();
    for i in 0..3 {
        poll_until(
            CONVERGE_TIMEOUT,
            Duration::from_millis(100),
            || format!("node {i}'s CLUSTER SLOTS never named the shard leaders"),
            || slots_name_leaders(&cluster, i, &resp_port),
        );
    }
    // Cluster clients follow the map to each key's leader: no node forwards anything.
    let script = r#"
import sys, redis
from redis.cluster import RedisCluster
ports = [int(p) for p in sys.argv[1:]]
for proto in (2, 3):
    for port in ports:
        rc = RedisCluster(host="127.0.0.1", port=port, protocol=proto)
        for i in range(30):
            assert rc.set(f"rc:{proto}:{port}:{i}", i) is True
        assert rc.mget_nonatomic([f"rc:{proto}:{port}:{i}" for i in range(30)]) == [
            str(i).encode() for i in range(30)
        ]
        rc.close()
print("ok")
"#;
    let ports: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.resp_addr.port().to_string())
        .collect();
    let forwarded = |i: usize| -> f64 {
        let metrics = crate::http::request(cluster.nodes[i].http_addr, "GET", "/metrics", b"");
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .filter(|l| l.starts_with("cairn_forwarded_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let forwarded_anywhere = || (0..3).map(forwarded).sum::<f64>();

    // cairn-client with its route cache, given node 0 only: every key goes to its leader.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = format!("http://{}", cluster.nodes[0].grpc_addr);
    let keys: Vec<String> = (0..40).map(|i| format!("routed:{i}")).collect();
    let routed = |route_cache: bool| {
        let config = cairn_client::ClientConfig {
            route_cache,
            ..cairn_client::ClientConfig::default()
        };
        runtime.block_on(async {
            let client = cairn_client::Client::with_config(&endpoint, config).unwrap();
            client.refresh_routes().await.unwrap();
            for key in &keys {
                client.put(key.clone(), key.clone()).await.unwrap();
                let got = client.get(key.clone()).await.unwrap().unwrap();
                assert_eq!(got.value, key.as_bytes());
            }
        });
    };
    let before = forwarded_anywhere();
    routed(true);
    assert_eq!(
        forwarded_anywhere(),
        before,
        "cairn-client's requests reached a non-leader"
    );
    // The same requests without the cache go through node 0, which forwards most of them.
    routed(false);
    assert!(
        forwarded_anywhere() > before,
        "without the route cache nothing was forwarded: the check above proves nothing"
    );
    let metrics = crate::http::request(cluster.nodes[0].http_addr, "GET", "/metrics", b"");
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .any(|l| l.starts_with("cairn_forwarded_total{") && l.contains("shard=\"")),
        "forwarded requests are counted per shard"
    );

    // FLUSHDB through one node empties every shard, whichever node leads it: no key is left
    // on any node's replicas, and none is read back through any node.
    let mut conn = Conn::connect(cluster.nodes[1].resp_addr).unwrap();
    assert_eq!(conn.cmd(&["FLUSHDB"]), Answer::Ok);
    for node in &cluster.nodes {
        let mut conn = Conn::connect(node.resp_addr).unwrap();
        for key in &keys {
            assert_eq!(conn.cmd(&["GET", key]), Answer::Bulk(None), "{key}");
        }
        // DBSIZE counts this node's own replicas, which apply the flush a moment later.
        poll_until(
            CONVERGE_TIMEOUT,
            Duration::from_millis(50),
            || format!("keys left on {}", node.resp_addr),
            || match conn.cmd(&["DBSIZE"]) {
                Answer::Int(0) => Ok(()),
                other => Err(other),
            },
        );
    }

    if !have_py && !have_cli {
        return;
    }
    let baseline: Vec<f64> = (0..3).map(forwarded).collect();
    if have_py {
        let mut args = vec!["-c", script];
        args.extend(ports.iter().map(String::as_str));
        let out = crate::clients::run(&python, &args);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        for (i, &before) in baseline.iter().enumerate() {
            assert_eq!(
                forwarded(i),
                before,
                "RedisCluster's requests reached a non-leader"
            );
        }
        // A plain client on one node is forwarded (and the counter counts).
        let plain = r#"
import sys, redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=proto)
    for port in sys.argv[2:]:
        for i in range(30):
            assert r.get(f"rc:{proto}:{port}:{i}") == str(i).encode()
print("ok")
"#;
        for (i, port) in ports.iter().enumerate() {
            let before = forwarded(i);
            let mut args = vec!["-c", plain, port];
            args.extend(ports.iter().map(String::as_str));
            let out = crate::clients::run(&python, &args);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
            assert!(
                forwarded(i) > before,
                "node {i} forwarded none of a plain client's reads (it leads some shards only)"
            );
        }
    }
    if have_cli {
        for (i, port) in ports.iter().enumerate() {
            let key = format!("cli:{i}");
            let out = crate::clients::run("redis-cli", &["-c", "-p", port, "set", &key, "v"]);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
            for other in &ports {
                let out = crate::clients::run("redis-cli", &["-p", other, "get", &key]);
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
            }
        }
    }
}

/// Whether node `i`'s CLUSTER SLOTS names as master of every shard's slots the node that its
/// `/v1/cluster` names the shard's leader, at that node's RESP port (`resp_port`, by name).
pub(crate) fn slots_name_leaders(
    cluster: &Cluster,
    i: usize,
    resp_port: &BTreeMap<String, i64>,
) -> Result<(), String> {
    let status = cluster.status(i);
    let mut conn = Conn::connect(cluster.nodes[i].resp_addr).unwrap();
    let Answer::Array(entries) = conn.cmd(&["CLUSTER", "SLOTS"]) else {
        return Err("CLUSTER SLOTS is not an array".into());
    };
    // Each entry: start, end, master [ip, port, id, ...], replicas...
    let masters: Vec<(i64, i64, i64)> = entries
        .iter()
        .map(|entry| match entry {
            Answer::Array(e) => match (&e[0], &e[1], &e[2]) {
                (Answer::Int(a), Answer::Int(b), Answer::Array(master)) => match master[1] {
                    Answer::Int(port) => (*a, *b, port),
                    ref other => panic!("master port {other:?}"),
                },
                other => panic!("CLUSTER SLOTS entry {other:?}"),
            },
            other => panic!("CLUSTER SLOTS entry {other:?}"),
        })
        .collect();
    for shard in status["shards"].as_array().unwrap() {
        let leader = shard["leader"].as_str().unwrap_or("");
        let want = *resp_port
            .get(leader)
            .ok_or_else(|| format!("shard {} has leader {leader:?}", shard["id"]))?;
        for range in shard["slots"].as_array().unwrap() {
            let (start, end) = (
                range["start"].as_i64().unwrap(),
                range["end"].as_i64().unwrap(),
            );
            let port = masters
                .iter()
                .find(|(a, b, _)| *a <= start && end <= *b)
                .map(|(_, _, port)| *port);
            if port != Some(want) {
                return Err(format!(
                    "CLUSTER SLOTS serves slots {start}-{end} from port {port:?}, but their \
                     leader {leader} listens on {want}: {masters:?}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn nodes_that_join_later_receive_everything_written_before() {
    let first = Node::start_with(&["--shards", SHARDS]);
    let mut conn = Conn::connect(first.resp_addr).unwrap();
    // More entries in one shard than the log keeps behind a snapshot, then SAVE (checkpoint and
    // purge): that shard reaches the new nodes as a snapshot, the others as log entries.
    let keys: Vec<String> = (0..1200)
        .map(|k| format!("{{early}}:{k}"))
        .chain((0..300).map(|k| format!("early:{k}")))
        .collect();
    for key in &keys {
        assert_eq!(conn.cmd(&["SET", key, key]), Answer::Ok);
    }
    assert_eq!(conn.cmd(&["SAVE"]), Answer::Ok);
    let join = first.grpc_addr.to_string();
    let mut nodes = vec![first];
    for _ in 0..2 {
        nodes.push(Node::start_with(&["--shards", SHARDS, "--join", &join]));
    }
    let mut cluster = Cluster { nodes };
    cluster.wait_converged(&[0, 1, 2]);
    // Each new node's own replica holds every key (READONLY: read it as it stands, once the
    // node applied what its leader committed).
    for i in 1..3 {
        let mut conn = Conn::connect(cluster.nodes[i].resp_addr).unwrap();
        assert_eq!(conn.cmd(&["READONLY"]), Answer::Ok);
        for key in &keys {
            poll_until(
                CONVERGE_TIMEOUT,
                Duration::from_millis(20),
                || format!("node {i}'s replica lacks {key}\n{}", cluster.logs()),
                || match conn.cmd(&["GET", key]) {
                    Answer::Bulk(Some(v)) if v == *key => Ok(()),
                    other => Err(other),
                },
            );
        }
        assert_eq!(conn.cmd(&["DBSIZE"]), Answer::Int(keys.len() as i64));
        // The purged shard arrived as a snapshot (the node takes none of its own this soon).
        let metrics = crate::http::request(cluster.nodes[i].http_addr, "GET", "/metrics", b"");
        let installed = String::from_utf8_lossy(&metrics.body)
            .lines()
            .filter(|l| l.starts_with("cairn_shard_raft_snapshot_index"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max);
        assert!(
            installed >= 1200.0,
            "node {i} installed no snapshot ({installed})"
        );
    }

    // A member restarted on another gRPC address is refused with the reason (its peers would
    // not reach it); on its own addresses it comes back.
    let node = &mut cluster.nodes[2];
    node.kill();
    let moved = crate::support::free_port().to_string();
    let mut out = std::process::Command::new(crate::support::cairn_bin())
        .args(["server", "--data-dir"])
        .arg(&node.data_dir)
        .args(["--resp-addr", &node.resp_addr.to_string()])
        .args(["--http-addr", &node.http_addr.to_string()])
        .args(["--grpc-addr", &format!("127.0.0.1:{moved}")])
        .args(&node.extra_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cairn server");
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    while out.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = out.kill();
            panic!("a member started on a new gRPC address was not refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = out.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a new address: {stderr}");
    assert!(
        stderr.contains("is registered in its cluster at gRPC"),
        "unclear refusal: {stderr}"
    );
    node.spawn();
    cluster.wait_converged(&[0, 1, 2]);
}

/// Shards of the handover test: many, so that the balancer hands several over to each
/// joining node while the writes run.
const HANDOVER_SHARDS: usize = 12;

/// Commands a pipelining writer sends in one batch before reading the answers.
const PIPELINE_DEPTH: u64 = 10;

/// A pipelining writer: batches of `SET key n` (n counting up from 1) sent before their
/// answers are read, until `go` says stop; returns each n with its answer, in order.
fn pipeline_while(addr: SocketAddr, key: &str, go: impl Fn() -> bool) -> Vec<(u64, Answer)> {
    let mut out = Vec::new();
    let Some(mut conn) = Conn::connect(addr) else {
        return out;
    };
    let mut n = 0;
    while go() {
        let batch: Vec<u64> = (n + 1..=n + PIPELINE_DEPTH).collect();
        n += PIPELINE_DEPTH;
        for i in &batch {
            if !conn.send(&["SET", key, &i.to_string()]) {
                out.push((*i, Answer::Lost));
                return out;
            }
        }
        for i in batch {
            let answer = conn.read().unwrap_or(Answer::Lost);
            let lost = answer == Answer::Lost;
            out.push((i, answer));
            if lost {
                return out;
            }
        }
    }
    out
}

/// The values `key` may hold after a pipelining writer's `answers`: the last acknowledged
/// one, or one after it whose outcome is unknown (a refused one never happened, and one
/// before the last acknowledged was overwritten by it, unless writes were reordered).
fn allowed_after(answers: &[(u64, Answer)]) -> BTreeSet<u64> {
    let last_acked = answers
        .iter()
        .filter(|(_, a)| *a == Answer::Ok)
        .map(|(i, _)| *i)
        .max();
    let mut allowed: BTreeSet<u64> = last_acked.into_iter().collect();
    for (i, a) in answers {
        let unknown = match a {
            Answer::Lost => true,
            Answer::Error(e) => is_unknown(e),
            _ => false,
        };
        if unknown && Some(*i) > last_acked {
            allowed.insert(*i);
        }
    }
    allowed
}

/// Leadership moves to nodes as they join (the balancer gives each its share of the shards)
/// while clients write through the first node, and no write fails: a leader hands a shard
/// over only after its writes in flight have landed and its successor holds the whole log, so
/// the successor is elected at once, and writes that arrive meanwhile are retried inside the
/// node until it leads.
#[test]
fn leaders_hand_over_to_joining_nodes_under_writes_without_failing_one() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let shards = HANDOVER_SHARDS.to_string();
    let first = Node::start_with(&["--shards", &shards]);
    let addr = first.resp_addr;
    let join = first.grpc_addr.to_string();
    let going = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let going = going.clone();
            std::thread::spawn(move || write_while(addr, w, || going.load(Ordering::Relaxed)))
        })
        .collect();
    // Pipelined writes to one key of each of several slots: a refused write retried after a
    // later one of its connection would leave an older value behind.
    let pipelined: Vec<_> = (0..4)
        .map(|p| {
            let going = going.clone();
            let key = format!("pipelined:{p}");
            std::thread::spawn(move || {
                let answers = pipeline_while(addr, &key, || going.load(Ordering::Relaxed));
                (key, answers)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut nodes = vec![first];
    for _ in 0..2 {
        nodes.push(Node::start_with(&["--shards", &shards, "--join", &join]));
    }
    let cluster = Cluster { nodes };
    cluster.wait_converged(&[0, 1, 2]);
    // Settled: the balancer evens out shard leaderships (the metadata group's does not
    // count), so each node leads its third.
    poll_until(
        CONVERGE_TIMEOUT,
        Duration::from_millis(100),
        || format!("leaders did not spread\n{}", cluster.logs()),
        || {
            let led = cluster.leader_counts(0);
            if led.len() == 3 && led.values().all(|&n| n == HANDOVER_SHARDS / 3) {
                Ok(())
            } else {
                Err(led)
            }
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    going.store(false, Ordering::Relaxed);
    let written: Vec<Written> = writers
        .into_iter()
        .map(|t| t.join().expect("writer"))
        .collect();
    let pipelined: Vec<(String, Vec<(u64, Answer)>)> = pipelined
        .into_iter()
        .map(|t| t.join().expect("pipelining writer"))
        .collect();
    let failed: Vec<&String> = written.iter().flat_map(|w| &w.errors).collect();
    let acked: usize = written.iter().map(|w| w.acked.len()).sum();
    assert!(
        failed.is_empty(),
        "{} of the writes failed while leaders moved ({acked} SETs acknowledged): {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(10)],
        cluster.logs()
    );
    assert!(acked > 100, "only {acked} SETs acknowledged");
    let slowest = written.iter().map(|w| w.slowest).max().unwrap_or_default();
    // Handovers the balancer made (each node reports the ones it asked for as leader).
    let mut handovers: BTreeMap<String, f64> = BTreeMap::new();
    for node in &cluster.nodes {
        let metrics = crate::http::request(node.http_addr, "GET", "/metrics", b"");
        for line in String::from_utf8_lossy(&metrics.body).lines() {
            if let Some(rest) = line.strip_prefix("cairn_shard_handovers_total{") {
                let outcome = rest
                    .split("outcome=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next());
                let count: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
                *handovers.entry(outcome.unwrap_or("").into()).or_default() += count;
            }
        }
    }
    eprintln!(
        "{acked} SETs acknowledged while leaders moved; slowest write {slowest:?}; handovers {handovers:?}"
    );
    // Nodes 2 and 3 each took their third of the shards from node 1.
    let done = handovers.get("done").copied().unwrap_or(0.0);
    assert!(
        done >= (2 * HANDOVER_SHARDS / 3) as f64,
        "only {done} handovers: {handovers:?}"
    );
    let refused = pipelined
        .iter()
        .flat_map(|(_, a)| a)
        .filter(|(_, a)| matches!(a, Answer::Error(e) if is_retriable(e)))
        .count();
    let sent: usize = pipelined.iter().map(|(_, a)| a.len()).sum();
    eprintln!(
        "pipelined: {sent} SETs, {refused} refused (a later write of theirs had taken effect)"
    );
    let mut conn = Conn::connect(cluster.nodes[2].resp_addr).unwrap();
    for (key, answers) in &pipelined {
        let allowed = allowed_after(answers);
        let value = match conn.cmd(&["GET", key]) {
            Answer::Bulk(Some(v)) => v.parse::<u64>().unwrap(),
            Answer::Bulk(None) => 0,
            other => panic!("GET {key}: {other:?}"),
        };
        assert!(
            allowed.is_empty() || allowed.contains(&value),
            "{key} is {value}, but its writes allow only {allowed:?}: {:?}",
            answers.iter().rev().take(30).collect::<Vec<_>>()
        );
    }
    assert_outcomes_honest(&cluster, 1, &written);
    let keys: Vec<String> = written.iter().flat_map(|w| w.acked.clone()).collect();
    assert_readable(&cluster, 2, &keys);
}

/// What the transaction clients of one run saw.
#[derive(Debug, Default)]
struct TxnTally {
    transfers: usize,
    aborted: usize,
    failed: usize,
    /// Reads that checked an invariant, and those that found it broken (with the reply).
    checks: usize,
    violations: Vec<String>,
}

/// `n` keys starting with `prefix`, spread so that they fall on at least two shards (a
/// four-shard cluster: slots in different quarters).
fn spread_keys(conn: &mut Conn, prefix: &str, n: usize) -> Vec<String> {
    let mut quarters = BTreeMap::<i64, usize>::new();
    let mut out = Vec::new();
    for k in 0.. {
        let key = format!("{prefix}{k}");
        let quarter = conn.slot(&key) / 4096;
        let taken = quarters.entry(quarter).or_default();
        if *taken * 4 < n {
            *taken += 1;
            out.push(key);
            if out.len() == n {
                return out;
            }
        }
    }
    unreachable!()
}

/// One transaction client: transfers between random accounts (WATCH, MGET, MULTI, two SETs,
/// EXEC), or writes one unique id to every read-atomicity key (MSET), or reads all accounts
/// and all read-atomicity keys (MGET each) and checks that the total is unchanged and the ids
/// agree. Connects to `addrs[home]`, and to the next node when its node is gone.
fn txn_client(
    addrs: Vec<SocketAddr>,
    home: usize,
    role: usize,
    accounts: Vec<String>,
    atomic: Vec<String>,
    total: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> TxnTally {
    let mut rng = rand::rngs::StdRng::seed_from_u64(home as u64 * 31 + role as u64);
    let mut tally = TxnTally::default();
    let mut at = home;
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                conn = Conn::connect(addrs[at]);
                if conn.is_none() {
                    at = (at + 1) % addrs.len();
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        let lost = |answer: &Answer| matches!(answer, Answer::Lost);
        // Writers pause between transactions: readers of every key wait for the locks on
        // any of them, and with writers back to back they would rarely find none.
        if role < 2 {
            std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
        }
        match role {
            0 => {
                let a = rng.random_range(0..accounts.len());
                let b = (a + 1 + rng.random_range(0..accounts.len() - 1)) % accounts.len();
                let (ka, kb) = (accounts[a].as_str(), accounts[b].as_str());
                let watch = c.cmd(&["WATCH", ka, kb]);
                let read = c.cmd(&["MGET", ka, kb]);
                let balances: Option<Vec<i64>> = match &read {
                    Answer::Array(items) => items
                        .iter()
                        .map(|i| match i {
                            Answer::Bulk(Some(v)) => v.parse().ok(),
                            _ => None,
                        })
                        .collect(),
                    _ => None,
                };
                let Some(balances) = balances.filter(|_| watch == Answer::Ok) else {
                    tally.failed += 1;
                    if lost(&read) || lost(&watch) {
                        conn = None;
                    } else {
                        c.cmd(&["UNWATCH"]);
                    }
                    continue;
                };
                let amount = rng.random_range(1..10i64);
                let (na, nb) = (
                    (balances[0] - amount).to_string(),
                    (balances[1] + amount).to_string(),
                );
                let answers = [
                    c.cmd(&["MULTI"]),
                    c.cmd(&["SET", ka, &na]),
                    c.cmd(&["SET", kb, &nb]),
                    c.cmd(&["EXEC"]),
                ];
                match &answers[3] {
                    Answer::Array(items) if items.len() == 2 => tally.transfers += 1,
                    // The null array: a watched account changed.
                    Answer::Array(_) => tally.aborted += 1,
                    other => {
                        tally.failed += 1;
                        if answers.iter().any(lost) || lost(other) {
                            conn = None;
                        }
                    }
                }
            }
            1 => {
                seq += 1;
                let id = format!("h{home}-{seq}");
                let mut args = vec!["MSET"];
                for key in &atomic {
                    args.push(key);
                    args.push(&id);
                }
                match c.cmd(&args) {
                    Answer::Ok => {}
                    Answer::Lost => {
                        tally.failed += 1;
                        conn = None;
                    }
                    _ => tally.failed += 1,
                }
            }
            _ => {
                let mut args = vec!["MGET"];
                args.extend(accounts.iter().map(String::as_str));
                let sum = match c.cmd(&args) {
                    Answer::Array(items) => items
                        .iter()
                        .map(|i| match i {
                            Answer::Bulk(Some(v)) => v.parse::<i64>().ok(),
                            _ => None,
                        })
                        .sum::<Option<i64>>(),
                    Answer::Lost => {
                        conn = None;
                        None
                    }
                    _ => None,
                };
                if let Some(sum) = sum {
                    tally.checks += 1;
                    if sum != total {
                        tally
                            .violations
                            .push(format!("accounts sum to {sum}, not {total}"));
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let mut args = vec!["MGET"];
                args.extend(atomic.iter().map(String::as_str));
                match c.cmd(&args) {
                    Answer::Array(items) => {
                        tally.checks += 1;
                        if items.iter().any(|i| *i != items[0]) {
                            tally.violations.push(format!("ids differ: {items:?}"));
                        }
                    }
                    Answer::Lost => conn = None,
                    _ => {}
                }
            }
        }
    }
    tally
}

/// Bank transfers (WATCH/MULTI/EXEC) and multi-key writes across shards, with readers on
/// every node checking that the accounts' total never changes and that every write is seen
/// whole, while the busiest leader is killed (its clients' transactions die with it, at
/// whatever step they were) and restarted, and then, where links can be cut, the first node is
/// partitioned from the others. Afterwards every node reads the same whole state, and the
/// transactions the dead coordinators left are resolved.
#[test]
fn transactions_stay_atomic_while_coordinators_and_leaders_die_or_are_cut_off() {
    let cut = can_cut_links();
    let user = cut.then(|| UnixUser::create("txn"));
    let mut firewall = cut.then(Firewall::new);
    let mut cluster = Cluster::start_first_as(3, user.as_ref());
    for i in 0..3 {
        cluster.wait_leading(i);
    }
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.resp_addr).collect();
    let mut conn = Conn::connect(addrs[1]).unwrap();
    let accounts = spread_keys(&mut conn, "acct:", 8);
    let atomic = spread_keys(&mut conn, "ra:", 4);
    let total = 100 * accounts.len() as i64;
    let mut init = vec!["MSET"];
    for a in &accounts {
        init.extend([a.as_str(), "100"]);
    }
    for k in &atomic {
        init.extend([k.as_str(), "init"]);
    }
    assert_eq!(conn.cmd(&init), Answer::Ok);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .flat_map(|home| (0..3).map(move |role| (home, role)))
        .map(|(home, role)| {
            let (addrs, accounts, atomic, stop) = (
                addrs.clone(),
                accounts.clone(),
                atomic.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || txn_client(addrs, home, role, accounts, atomic, total, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Kill the busiest leader: the transactions its clients were coordinating die with it.
    let victim = cluster.busiest_leader(1);
    let survivor = if victim == 1 { 2 } else { 1 };
    let victim_name = cluster.name(victim);
    let slots: Vec<i64> = (0..4).map(|q| q * 4096).collect();
    cluster.nodes[victim].kill();
    let failover = cluster.wait_failover(survivor, &slots, &victim_name);
    std::thread::sleep(Duration::from_secs(2));
    cluster.nodes[victim].spawn();
    cluster.wait_converged(&[0, 1, 2]);
    eprintln!("killed node {victim}; new leaders after {failover:?}");
    if let (Some(firewall), Some(user)) = (firewall.as_mut(), user.as_ref()) {
        cluster.wait_leading(0);
        firewall.drop_to_port(cluster.nodes[0].grpc_addr.port(), None);
        for peer in &cluster.nodes[1..] {
            firewall.drop_to_port(peer.grpc_addr.port(), Some(user.uid));
        }
        std::thread::sleep(Duration::from_secs(4));
        firewall.heal();
        cluster.wait_converged(&[0, 1, 2]);
        eprintln!("partitioned node 0 for 4 s");
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = TxnTally::default();
    for client in clients {
        let t = client.join().expect("client");
        all.transfers += t.transfers;
        all.aborted += t.aborted;
        all.failed += t.failed;
        all.checks += t.checks;
        all.violations.extend(t.violations);
    }
    eprintln!(
        "{} transfers, {} aborted by WATCH, {} failed or unknown, {} checks",
        all.transfers, all.aborted, all.failed, all.checks
    );
    assert!(
        all.violations.is_empty(),
        "{} reads saw part of a transaction, e.g. {:?}\n{}",
        all.violations.len(),
        &all.violations[..all.violations.len().min(5)],
        cluster.logs()
    );
    assert!(all.transfers >= 20, "only {} transfers", all.transfers);
    assert!(all.checks >= 20, "only {} checks", all.checks);

    // Every node reads the whole state: locks the dead coordinators left are resolved.
    for (i, addr) in addrs.iter().enumerate() {
        let mut c = Conn::connect(*addr).unwrap();
        poll_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || format!("node {i} never read a whole state\n{}", cluster.logs()),
            || {
                let mut args = vec!["MGET"];
                args.extend(accounts.iter().map(String::as_str));
                let sum: Option<i64> = match c.cmd(&args) {
                    Answer::Array(items) => items
                        .iter()
                        .map(|i| match i {
                            Answer::Bulk(Some(v)) => v.parse::<i64>().ok(),
                            _ => None,
                        })
                        .sum(),
                    other => return Err(format!("{other:?}")),
                };
                if sum != Some(total) {
                    return Err(format!("sum {sum:?}"));
                }
                let mut args = vec!["MGET"];
                args.extend(atomic.iter().map(String::as_str));
                match c.cmd(&args) {
                    Answer::Array(items) if items.iter().all(|x| *x == items[0]) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
    }
}

/// A message published on any node reaches the subscribers of every node, in the order it
/// was published, by channel and by pattern; PUBLISH answers how many subscribers of its own
/// node got it, as Redis Cluster's does.
#[test]
fn messages_published_on_one_node_reach_subscribers_on_every_node() {
    let cluster = Cluster::start(3);
    let subscribe = |i: usize, how: &[u8], to: &[u8]| {
        let mut conn = cluster.nodes[i].resp();
        conn.send_cmd(&[how, to]);
        let kind = String::from_utf8_lossy(how).to_lowercase();
        let want = format!(
            "*3\r\n${}\r\n{kind}\r\n${}\r\n{}\r\n:1\r\n",
            kind.len(),
            to.len(),
            String::from_utf8_lossy(to)
        );
        assert_eq!(String::from_utf8_lossy(&conn.read_reply()), want);
        conn
    };
    let mut here = subscribe(0, b"SUBSCRIBE", b"news");
    let mut there = subscribe(1, b"SUBSCRIBE", b"news");
    let mut pattern = subscribe(2, b"PSUBSCRIBE", b"n*");
    let mut publisher = cluster.nodes[0].resp();
    for i in 0..50 {
        // One subscriber of the publishing node; the others are elsewhere.
        assert_eq!(publisher.cmd_str(&format!("PUBLISH news m{i}")), ":1\r\n");
    }
    let message = |i: usize| {
        let payload = format!("m{i}");
        format!(
            "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n${}\r\n{payload}\r\n",
            payload.len()
        )
    };
    for i in 0..50 {
        for conn in [&mut here, &mut there] {
            assert_eq!(String::from_utf8_lossy(&conn.read_reply()), message(i));
        }
        let payload = format!("m{i}");
        assert_eq!(
            String::from_utf8_lossy(&pattern.read_reply()),
            format!(
                "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n${}\r\n{payload}\r\n",
                payload.len()
            )
        );
    }
    // From another node, the other way round.
    let mut publisher = cluster.nodes[2].resp();
    assert_eq!(publisher.cmd_str("PUBLISH news back"), ":1\r\n");
    for conn in [&mut here, &mut there] {
        assert_eq!(
            String::from_utf8_lossy(&conn.read_reply()),
            "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$4\r\nback\r\n"
        );
    }
    // Shard channels are a namespace of their own, carried to every node on the same
    // ordered queues: the shard subscriber gets only SPUBLISH's messages, the plain one only
    // PUBLISH's.
    let mut sharded = subscribe(1, b"SSUBSCRIBE", b"orders");
    let mut plain = subscribe(2, b"SUBSCRIBE", b"orders");
    let mut publisher = cluster.nodes[0].resp();
    // Pipelined, so that the kinds meet in one batch of the queue to the other nodes.
    let lines = [
        "SPUBLISH orders s1",
        "PUBLISH orders p1",
        "SPUBLISH orders s2",
        "PUBLISH orders p2",
    ];
    for line in lines {
        let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        publisher.send_cmd(&words);
    }
    for line in lines {
        assert_eq!(
            String::from_utf8_lossy(&publisher.read_reply()),
            ":0\r\n",
            "{line}: no subscriber on node 0"
        );
    }
    for payload in ["s1", "s2"] {
        assert_eq!(
            String::from_utf8_lossy(&sharded.read_reply()),
            format!("*3\r\n$8\r\nsmessage\r\n$6\r\norders\r\n$2\r\n{payload}\r\n")
        );
    }
    for payload in ["p1", "p2"] {
        assert_eq!(
            String::from_utf8_lossy(&plain.read_reply()),
            format!("*3\r\n$7\r\nmessage\r\n$6\r\norders\r\n$2\r\n{payload}\r\n")
        );
    }
}

/// A watch on every key through node 2 while a writer on node 0 writes to every shard, node 1
/// (a leader of some shards) is killed and restarted, and then the watch's own node is paused
/// and killed: the watch moves to another node from its token, and in the end has told every
/// acknowledged write exactly once, in log order per shard, and its events replay to the
/// keys' final state.
#[test]
fn a_watch_tells_every_write_once_through_leader_kills_and_restarts() {
    use crate::watch::{Recorder, assert_exactly_once, await_caught_up};
    let mut cluster = Cluster::start(3);
    let recorder = Recorder::start(&cluster.nodes[2].grpc_url(), "");
    let writer_addr = cluster.nodes[0].resp_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            write_while(writer_addr, 0, || {
                !stop.load(std::sync::atomic::Ordering::Acquire)
            })
        })
    };
    // A leader's death and return.
    std::thread::sleep(Duration::from_millis(800));
    cluster.nodes[1].kill();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.nodes[1].spawn();
    // The watch's node stops for two seconds (its stream goes quiet while the others fail
    // over and go on writing), then dies: the watch resumes elsewhere from a token two
    // seconds old, and must be told those seconds' writes.
    std::thread::sleep(Duration::from_millis(800));
    signal(&cluster.nodes[2], "-STOP");
    std::thread::sleep(Duration::from_millis(2000));
    cluster.nodes[2].kill();
    std::thread::sleep(Duration::from_millis(1000));
    cluster.nodes[2].spawn();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let written = writer.join().expect("writer");
    assert!(
        written.acked.len() > 20,
        "too few writes: {written:?}\n{}",
        cluster.logs()
    );
    cluster.wait_converged(&[0, 1, 2]);
    let events = await_caught_up(&recorder, &cluster.nodes[0].grpc_url(), "");
    let acknowledged: Vec<(String, String)> = written
        .acked
        .iter()
        .map(|k| (k.clone(), k.clone()))
        .collect();
    assert_exactly_once(&events, &acknowledged);
}

/// The start of the redis-py scripts of the client-side caching tests: a cached reader and a
/// plain writer (argv: reader port, writer port, metrics URL, key), `gets_served()` (GETs the
/// reader's node has served) and `write(value)` (retried while a shard fails over: TRYAGAIN
/// or an unknown outcome; the same value, so a write that did land changes nothing).
const CSC_PRELUDE: &str = r#"
import sys, time, urllib.request, redis
from redis.cache import CacheConfig
reader_port, writer_port, metrics, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
reader = redis.Redis(port=reader_port, protocol=3, cache_config=CacheConfig(), socket_timeout=10)
writer = redis.Redis(port=writer_port, socket_timeout=10)

def gets_served():
    text = urllib.request.urlopen(metrics).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith('cairn_requests_total{frontend="resp",command="get"}'))

def write(value):
    deadline = time.time() + 30
    while True:
        try:
            writer.set(key, value)
            return
        except (redis.exceptions.ResponseError, redis.exceptions.ConnectionError) as e:
            assert time.time() < deadline, f"no write acknowledged in 30 s: {e}"
            time.sleep(0.05)
"#;

/// Runs a [`CSC_PRELUDE`] script with `python`: the cached reader on node 0, the writer on
/// node 1, `key` the key; returns the process and its output's lines.
fn csc_script(
    python: &str,
    script: &str,
    cluster: &Cluster,
    key: &str,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python)
        .args([
            "-c",
            script,
            &cluster.nodes[0].resp_addr.port().to_string(),
            &cluster.nodes[1].resp_addr.port().to_string(),
            &cluster.nodes[0].http_url("/metrics"),
            key,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// redis-py's client-side cache (RESP3, `cache_config`) reading through node 0 while plain
/// redis-py writes through node 1, to a key whose shard node 2 leads: after each acknowledged
/// write the cached reader gets the new value as soon as its invalidation arrives and never
/// the old one after that, and reads in between are served from its cache (they do not reach
/// the server). Then node 2 is killed, and the same holds with the shard led elsewhere.
#[test]
fn redis_py_client_side_caches_stay_coherent_across_nodes_and_a_leader_kill() {
    let python = std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    if !crate::clients::tool_available(
        &python,
        &["-c", "import redis; from redis.cache import CacheConfig"],
    ) {
        return;
    }
    let mut cluster = Cluster::start(3);
    cluster.wait_leading(2);
    let key = cluster.keys_led_by(2, "csc:", 1).remove(0);
    let script = CSC_PRELUDE.to_string()
        + r#"
def rounds(first, last):
    for i in range(first, last):
        old, new = f"v{i - 1}".encode(), f"v{i}".encode()
        write(new)
        began = time.time()
        while True:
            got = reader.get(key)
            if got == new:
                break
            assert got == old or (i == 0 and got is None), f"round {i}: read {got!r}"
            assert time.time() - began < 10, f"round {i}: no invalidation in 10 s"
            time.sleep(0.001)
        before = gets_served()
        for _ in range(50):
            assert reader.get(key) == new, f"round {i}: the old value came back"
        assert gets_served() - before <= 1, "reads were not served from the cache"

rounds(0, 30)
print("killed?", flush=True)
sys.stdin.readline()
rounds(30, 60)
print("ok", flush=True)
"#;
    let (mut child, mut lines) = csc_script(&python, &script, &cluster, &key);
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    if first != "killed?" {
        let out = child.wait_with_output().unwrap();
        panic!(
            "before the kill: {first}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
    }
    cluster.nodes[2].kill();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let last = lines.next().and_then(Result::ok).unwrap_or_default();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        last,
        "ok",
        "after the kill: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    cluster.nodes[2].spawn();
}

/// A node cut off from its peers (iptables, both ways on the peer port; its clients still
/// reach it) cannot apply what the others commit, so it must not let its clients go on
/// trusting it: redis-py's cache on that node is told to drop everything (so it stops serving
/// a value written elsewhere meanwhile), and a watch through that node resumes on another
/// one and goes on telling the writes made during the cut. Once the link heals the cache
/// works as before.
#[test]
fn a_node_cut_off_from_its_peers_hands_its_caches_and_watches_back() {
    let python = std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    if !can_cut_links()
        || !crate::clients::tool_available(
            &python,
            &["-c", "import redis; from redis.cache import CacheConfig"],
        )
    {
        return;
    }
    // Every node runs as a user of its own, so the cut matches the nodes' traffic by owner
    // and leaves this test's own connections (the watch, the clients) alone.
    let users: Vec<UnixUser> = (0..3)
        .map(|i| UnixUser::create(&format!("touch{i}")))
        .collect();
    let mut firewall = Firewall::new();
    let cluster = Cluster::start_as_users(&users.iter().map(Some).collect::<Vec<_>>());
    cluster.wait_leading(2);
    let key = cluster.keys_led_by(2, "cut:", 1).remove(0);
    let recorder = crate::watch::Recorder::start(&cluster.nodes[0].grpc_url(), "cut:");
    let script = CSC_PRELUDE.to_string()
        + r#"
def cached_round(value):
    write(value)
    began = time.time()
    while reader.get(key) != value:
        assert time.time() - began < 10, f"{value!r} not read in 10 s"
        time.sleep(0.01)
    before = gets_served()
    for _ in range(20):
        assert reader.get(key) == value, "the cache went back"
    assert gets_served() - before <= 1, "reads were not served from the cache"

cached_round(b"before")
print("cut?", flush=True)
sys.stdin.readline()
write(b"during")
began, stale, flushed = time.time(), 0, None
while time.time() - began < 15:
    asked = time.time()
    try:
        got = reader.get(key)
    except (redis.exceptions.RedisError, OSError) as e:
        got = e
    if got == b"before":
        assert flushed is None, f"the old value came back {time.time() - flushed:.1f} s after a flush"
        stale += 1
    elif flushed is None:
        # The cache no longer answered this read (the node did, or failed to).
        flushed, first = asked, got
    if flushed is not None and time.time() - flushed > 2:
        break
    time.sleep(0.05)
assert flushed is not None, f"the cache served the value overwritten elsewhere for 15 s ({stale} reads)"
print(f"flushed {flushed - began:.1f} s after the write; the node then said {first!r}", flush=True)
sys.stdin.readline()
for i in range(5):
    cached_round(f"after{i}".encode())
print("ok", flush=True)
"#;
    let (mut child, mut lines) = csc_script(&python, &script, &cluster, &key);
    let mut expect = |child: &mut std::process::Child, want: &str| {
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        if !line.starts_with(want) {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!(
                "expected {want:?}, got {line:?}: {stderr}\n{}",
                cluster.logs()
            );
        }
        eprintln!("{line}");
    };
    expect(&mut child, "cut?");
    // Healthy, nothing is out of touch (past the grace every replica has at start).
    std::thread::sleep(Duration::from_millis(2500));
    for node in &cluster.nodes {
        let metrics = crate::http::request(node.http_addr, "GET", "/metrics", b"");
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let out: f64 = text
            .lines()
            .filter(|l| l.starts_with("cairn_shards_out_of_touch "))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(
            out, 0.0,
            "a healthy node counts shards out of touch:\n{text}"
        );
        assert!(
            !text.contains("reason=\"out_of_touch\""),
            "a healthy node ended watches as out of touch"
        );
    }
    // Node 0 and its peers no longer reach each other's peer port.
    for i in 1..3 {
        firewall.drop_to_port(cluster.nodes[0].grpc_addr.port(), Some(users[i].uid));
        firewall.drop_to_port(cluster.nodes[i].grpc_addr.port(), Some(users[0].uid));
    }
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    expect(&mut child, "flushed");
    // The watch opened through node 0 went on elsewhere: it told the write made during the
    // cut while node 0 is still cut off.
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            format!(
                "the watch through the cut-off node did not tell the write made during the cut \
                 (error: {:?})\n{}",
                recorder.error.lock().unwrap(),
                cluster.logs()
            )
        },
        || {
            let seen = recorder.seen.lock().unwrap();
            if seen.iter().any(|s| s.key == key && s.value == "during") {
                Ok(())
            } else {
                Err(seen.len())
            }
        },
    );
    firewall.heal();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    expect(&mut child, "ok");
    let _ = child.wait();
}
