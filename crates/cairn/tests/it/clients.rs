//! Real Redis clients work against Cairn unchanged: `redis-cli` (plain and `-c` cluster mode),
//! `redis-benchmark`, and redis-py (`Redis` and `RedisCluster`). `.ci/run` installs them; without
//! them a test says so and passes, unless `CAIRN_REQUIRE_REDIS=1`, where a missing tool fails.
//! redis-py runs under `$CAIRN_PYTHON` (`.ci/run` points it at a virtualenv), else `python3`.

use std::process::{Command, Output};

use crate::support::Node;

/// Whether `program --version` runs; panics when it doesn't and CI requires it.
pub(crate) fn tool_available(program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !std::env::var("CAIRN_REQUIRE_REDIS").is_ok_and(|v| v == "1"),
            "CAIRN_REQUIRE_REDIS=1 but `{program}` is not usable"
        );
        eprintln!("SKIPPED: `{program}` is not installed");
    }
    ok
}

pub(crate) fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("spawn client");
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn redis_cli(node: &Node, args: &[&str]) -> String {
    let port = node.resp_addr.port().to_string();
    let mut all = vec!["-p", &port];
    all.extend_from_slice(args);
    String::from_utf8(run("redis-cli", &all).stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn redis_cli_plain_and_cluster_mode() {
    if !tool_available("redis-cli", &["--version"]) {
        return;
    }
    let node = Node::start();
    assert_eq!(redis_cli(&node, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(redis_cli(&node, &["GET", "greeting"]), "hello world");
    assert_eq!(redis_cli(&node, &["INCRBY", "counter", "5"]), "5");
    assert_eq!(redis_cli(&node, &["EXPIRE", "greeting", "100"]), "1");
    let ttl: i64 = redis_cli(&node, &["TTL", "greeting"]).parse().unwrap();
    assert!((1..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        redis_cli(&node, &["CLUSTER", "KEYSLOT", "{user1000}.following"]),
        "3443"
    );
    // Cluster mode: redis-cli reads the slot map and follows redirects.
    assert_eq!(
        redis_cli(&node, &["-c", "SET", "{user1000}.following", "x"]),
        "OK"
    );
    assert_eq!(
        redis_cli(&node, &["-c", "GET", "{user1000}.following"]),
        "x"
    );
    assert_eq!(redis_cli(&node, &["DBSIZE"]), "3");
    // An unknown command is an error reply, and the server lives on.
    assert!(redis_cli(&node, &["NOSUCHCOMMAND"]).contains("unknown command"));
    assert_eq!(redis_cli(&node, &["PING"]), "PONG");
}

#[test]
fn redis_benchmark_runs_unchanged() {
    if !tool_available("redis-benchmark", &["--version"]) {
        return;
    }
    let node = Node::start();
    let port = node.resp_addr.port().to_string();
    let out = run(
        "redis-benchmark",
        &[
            "-p",
            &port,
            "-n",
            "2000",
            "-c",
            "8",
            "-P",
            "4",
            "-t",
            "set,get,incr,mset",
            "-q",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for test in ["SET", "GET", "INCR", "MSET"] {
        assert!(
            text.contains(test),
            "redis-benchmark output lacks {test}: {text}"
        );
    }
    assert!(!text.to_lowercase().contains("error"), "{text}");
    // Without -r every INCR hits one key: 2000 acknowledged INCRs leave exactly 2000.
    assert_eq!(redis_cli(&node, &["GET", "counter:__rand_int__"]), "2000");
}

#[test]
fn redis_py_standalone_and_cluster_clients() {
    let python = std::env::var("CAIRN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    if !tool_available(&python, &["-c", "import redis"]) {
        return;
    }
    let node = Node::start();
    let script = r#"
import sys, redis
from redis.cluster import RedisCluster
port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port)
assert r.set("py:a", b"\x00\xffbinary") is True
assert r.get("py:a") == b"\x00\xffbinary"
assert r.incr("py:n", 3) == 3
assert r.mset({"{py}:x": "1", "{py}:y": "2"}) is True
# Keys of different slots and shards: one cross-shard transaction, as on a standalone Redis.
assert r.mset({"py:x": "1", "py:y": "2"}) is True
assert r.exists("py:x", "py:y") == 2
assert r.msetnx({"py:y": "3", "py:z": "3"}) is False
assert r.mget("py:x", "py:y", "py:z") == [b"1", b"2", None]
assert r.delete("py:x", "py:y") == 2
assert r.mget("{py}:x", "{py}:y", "py:missing") == [b"1", b"2", None]
assert r.expire("py:a", 50) is True and 0 < r.ttl("py:a") <= 50
p = r.pipeline(transaction=False)
for i in range(100):
    p.set(f"py:pipe:{i}", i)
assert all(p.execute())
rc = RedisCluster(host="127.0.0.1", port=port)
assert rc.set("{py}cluster", "ok") is True
assert rc.get("{py}cluster") == b"ok"
assert rc.get("{py}:x") == b"1"
# RedisCluster splits a cross-slot MSET into one MSET per slot on the right node.
assert rc.mset_nonatomic({"c:1": "a", "c:2": "b", "c:3": "c"}) == [True, True, True]
assert rc.mget_nonatomic("c:1", "c:2", "c:3") == [b"a", b"b", b"c"]
assert rc.delete("{py}cluster") == 1
print("ok")
"#;
    let port = node.resp_addr.port().to_string();
    let out = run(&python, &["-c", script, &port]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
