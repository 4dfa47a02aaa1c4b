//! Acknowledged writes survive: kill -9 under concurrent write load and a clean SIGTERM
//! shutdown, each followed by a restart on the same data directory.
//!
//! These test the real binary's crash recovery (replay, torn-tail repair, restart on a used
//! data directory), not its fsyncs: SIGKILL keeps the kernel's page cache, so they would pass
//! with `--sync never` too. Power cuts, which lose what was not fsynced, are tested on the
//! simulated disk under a whole node: `crates/cairn-server/tests/it/power_cut.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::support::{Node, RawConn};

/// Concurrent writers during the kill test.
const WRITERS: usize = 8;
/// Writes each writer must have acknowledged before the kill (so the kill lands under load).
const ACKED_BEFORE_KILL: usize = 150;

/// What one writer saw acknowledged.
#[derive(Debug, Default)]
struct Acked {
    /// Keys whose SET was answered `+OK` (each key is written once, with value = key + "-v").
    keys: Vec<String>,
    /// INCRs of the writer's counter answered, and whether one was in flight at the kill.
    incrs: u64,
    incr_in_flight: bool,
}

/// Write until the connection breaks; return what was acknowledged.
fn writer(mut conn: RawConn, id: usize, stop: Arc<AtomicBool>) -> Acked {
    use std::io::Read;
    let mut acked = Acked::default();
    let counter = format!("counter-{id}");
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{id}-{i}");
        let value = format!("{key}-v");
        // One SET and one INCR per round, pipelined; each reply is checked separately.
        let mut req = Vec::new();
        for args in [
            vec!["SET", key.as_str(), value.as_str()],
            vec!["INCR", counter.as_str()],
        ] {
            req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        }
        if std::io::Write::write_all(&mut conn.stream, &req).is_err() {
            acked.incr_in_flight = true;
            break;
        }
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        // Read "+OK\r\n" then ":n\r\n", stopping at the first broken read.
        let mut lines = 0;
        while lines < 2 {
            match conn.stream.read(&mut byte) {
                Ok(1) => {
                    buf.push(byte[0]);
                    if buf.ends_with(b"\r\n") {
                        lines += 1;
                        if lines == 1 {
                            assert_eq!(buf, b"+OK\r\n", "unexpected SET reply");
                            acked.keys.push(key.clone());
                            buf.clear();
                        }
                    }
                }
                _ => break,
            }
        }
        if lines < 2 {
            acked.incr_in_flight = true;
            break;
        }
        let n: u64 = std::str::from_utf8(&buf[1..buf.len() - 2])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, acked.incrs + 1, "counter went backwards or skipped");
        acked.incrs = n;
        i += 1;
    }
    acked
}

#[test]
fn kill_dash_nine_under_write_load_loses_no_acknowledged_write() {
    let mut node = Node::start();
    let stop = Arc::new(AtomicBool::new(false));

    // Phase 1: concurrent writers, each on its own connection.
    let handles: Vec<_> = (0..WRITERS)
        .map(|id| {
            let conn = node.resp();
            let stop = stop.clone();
            thread::spawn(move || writer(conn, id, stop))
        })
        .collect();

    // Phase 2: once every writer has made progress, SIGKILL the server mid-load.
    let mut probe = node.resp();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "writers made no progress; log:\n{}",
            node.log()
        );
        let counts: Vec<u64> = (0..WRITERS)
            .map(|id| {
                let reply = probe.cmd_str(&format!("GET counter-{id}"));
                reply
                    .lines()
                    .nth(1)
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        // A counter at N + 1 means round N was sent, which a writer does only after reading
        // the replies of rounds 0..N: each writer then holds N acknowledged keys, whatever
        // the kill cuts off (at N, the kill could come before round N-1's replies are read).
        if counts.iter().all(|&n| n > ACKED_BEFORE_KILL as u64) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    node.kill();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Acked> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    // Phase 3: restart and check every acknowledged write.
    node.spawn();
    let mut c = node.resp();
    let mut total = 0;
    for (id, a) in acked.iter().enumerate() {
        assert!(a.keys.len() >= ACKED_BEFORE_KILL, "writer {id} barely ran");
        for key in &a.keys {
            let value = format!("{key}-v");
            assert_eq!(
                c.cmd_str(&format!("GET {key}")),
                format!("${}\r\n{value}\r\n", value.len()),
                "acknowledged write of {key} lost"
            );
        }
        total += a.keys.len();
        // The counter holds every acknowledged INCR, plus at most the one in flight.
        let reply = c.cmd_str(&format!("GET counter-{id}"));
        let n: u64 = reply.lines().nth(1).unwrap().parse().unwrap();
        assert!(
            n == a.incrs || (a.incr_in_flight && n == a.incrs + 1),
            "counter-{id} is {n}; {} acknowledged",
            a.incrs
        );
    }
    assert!(total >= WRITERS * ACKED_BEFORE_KILL);

    // Phase 4: the restarted node takes writes again, and a second crash loses nothing either.
    assert_eq!(c.cmd_str("SET after restart"), "+OK\r\n");
    node.restart();
    assert_eq!(node.resp().cmd_str("GET after"), "$7\r\nrestart\r\n");
}

#[test]
fn sigterm_shuts_down_cleanly_and_keeps_everything() {
    let mut node = Node::start();
    let mut c = node.resp();
    let id = c.cmd_str("CLUSTER MYID");
    for i in 0..200 {
        assert_eq!(c.cmd_str(&format!("SET key{i} value{i}")), "+OK\r\n");
    }
    assert_eq!(c.cmd_str("SET ttl v EX 1000"), "+OK\r\n");
    assert_eq!(c.cmd_str("MSET {a}1 x {a}2 y"), "+OK\r\n");
    assert_eq!(c.cmd_str("DEL key0"), ":1\r\n");

    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    assert!(
        node.log().contains("stopped"),
        "no clean-shutdown line in the log:\n{}",
        node.log()
    );

    node.spawn();
    let mut c = node.resp();
    assert_eq!(
        c.cmd_str("CLUSTER MYID"),
        id,
        "the node id is kept in the data directory"
    );
    assert_eq!(c.cmd_str("DBSIZE"), ":202\r\n");
    assert_eq!(c.cmd_str("GET key0"), "$-1\r\n");
    assert_eq!(c.cmd_str("GET key199"), "$8\r\nvalue199\r\n");
    assert_eq!(c.cmd_str("MGET {a}1 {a}2"), "*2\r\n$1\r\nx\r\n$1\r\ny\r\n");
    let ttl: i64 = c
        .cmd_str("TTL ttl")
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 900 && ttl <= 1000, "ttl {ttl}");
}

#[test]
fn the_shard_count_is_fixed_when_the_data_directory_is_created() {
    let mut node = Node::start_with(&["--shards", "4"]);
    assert!(node.resp().cmd_str("CLUSTER SHARDS").starts_with("*4\r\n"));
    assert_eq!(node.resp().cmd_str("SET k v"), "+OK\r\n");
    node.kill();
    node.extra_args = vec!["--shards".into(), "8".into()];
    node.spawn();
    let mut c = node.resp();
    assert!(
        c.cmd_str("CLUSTER SHARDS").starts_with("*4\r\n"),
        "restart keeps 4 shards"
    );
    assert_eq!(c.cmd_str("GET k"), "$1\r\nv\r\n");
}

/// A coordinator that crashes (the process aborts, as a power cut or SIGKILL would stop it) at
/// each step of a cross-shard MSET: after the first lock answered, after every lock, after the
/// commit, after the resolutions. Restarted on the same data directory, the node answers the
/// keys all old (before the commit) or all new (after it), never a mix, and resolves what
/// the dead coordinator left: a later transaction on the same keys goes through.
#[test]
fn a_coordinator_killed_at_any_step_leaves_nothing_partial() {
    use std::io::{Read, Write};
    // "b" (slot 3300), "bar" (5061), "foo" (12182) and "a" (15495) live on the four
    // shards, "b" on the primary: at `locked-one` the first of three locks has answered
    // and the others may or may not have landed.
    let keys = ["foo", "bar", "a", "b"];
    let mset = |value: &str| {
        let mut cmd = String::from("MSET");
        for key in keys {
            cmd.push_str(&format!(" {key} {value}"));
        }
        cmd
    };
    let all = |value: &str| {
        let mut reply = format!("*{}\r\n", keys.len());
        for _ in keys {
            reply.push_str(&format!("${}\r\n{value}\r\n", value.len()));
        }
        reply
    };
    let mget = format!("MGET {}", keys.join(" "));
    for (step, committed) in [
        ("locked-one", false),
        ("locked", false),
        ("committed", true),
        ("resolved", true),
    ] {
        let mut node = Node::start();
        node.env = vec![("CAIRN_TXN_FAILPOINT".into(), step.into())];
        node.restart();
        let mut conn = node.resp();
        // One key at a time: a cross-shard MSET would stop at the failpoint.
        for key in keys {
            assert_eq!(conn.cmd_str(&format!("SET {key} old")), "+OK\r\n");
        }
        // The MSET's coordinator dies at `step`: no answer, the connection closes.
        let mut raw = std::net::TcpStream::connect(node.resp_addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut frame = format!("*{}\r\n$4\r\nMSET\r\n", 1 + 2 * keys.len());
        for key in keys {
            frame.push_str(&format!("${}\r\n{key}\r\n$3\r\nnew\r\n", key.len()));
        }
        raw.write_all(frame.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{step}: answered {answer:?}");
        let status = node.child.as_mut().unwrap().wait().unwrap();
        assert!(
            !status.success(),
            "{step}: the failpoint did not stop the process"
        );
        node.child = None;
        node.env.clear();
        node.spawn();
        let want = if committed { "new" } else { "old" };
        let mut conn = node.resp();
        assert_eq!(conn.cmd_str(&mget), all(want), "{step}\n{}", node.log());
        for key in keys {
            assert_eq!(
                conn.cmd_str(&format!("GET {key}")),
                format!("$3\r\n{want}\r\n"),
                "{step}"
            );
        }
        assert_eq!(conn.cmd_str(&mset("after")), "+OK\r\n", "{step}");
        assert_eq!(conn.cmd_str(&mget), all("after"), "{step}");
    }
}
