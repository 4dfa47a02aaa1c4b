//! Client-side caching (`CLIENT TRACKING`) as clients see it, against a real redis-server:
//! the same commands on both give the same replies and errors, and the same invalidations
//! arrive (a RESP3 `invalidate` push, or a message on `__redis__:invalidate` for a RESP2
//! redirect). Cairn's invalidations come from the change feed a moment after the write, so
//! the reader waits for them instead of expecting them in the same read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::Node;

/// A raw connection that reads whole replies (RESP2 or RESP3) as bytes.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let args: Vec<&str> = line.split_whitespace().collect();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream.write_all(out.as_bytes()).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }

    /// One whole reply (a frame of any RESP2/RESP3 type, nested).
    fn reply(&mut self) -> String {
        loop {
            if let Some(n) = frame_len(&self.pending) {
                let frame: Vec<u8> = self.pending.drain(..n).collect();
                return String::from_utf8_lossy(&frame).into_owned();
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).expect("a reply in time");
            assert!(n > 0, "connection closed");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Whether a frame arrives within `wait`.
    fn nothing_within(&mut self, wait: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        let got = match self.stream.read(&mut buf) {
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                n > 0
            }
            Err(_) => false,
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        !got
    }
}

/// The length of the first complete frame in `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after = line_end + 2;
    match buf[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => Some(after),
        b'$' | b'=' | b'!' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'>' | b'~' | b'%' => {
            let n: i64 = head.parse().ok()?;
            let items = if buf[0] == b'%' { n * 2 } else { n };
            let mut at = after;
            for _ in 0..items.max(0) {
                at += frame_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => panic!("unexpected frame {:?}", String::from_utf8_lossy(buf)),
    }
}

/// The scenario, on one server: every reply and invalidation, in order, with the client ids
/// (which differ between servers) replaced by names.
fn scenario(addr: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    let mut writer = Conn::connect(addr);
    // Argument errors, word for word.
    let mut a = Conn::connect(addr);
    for line in [
        "CLIENT TRACKING on PREFIX a",
        "CLIENT TRACKING on BCAST OPTIN",
        "CLIENT TRACKING on OPTIN OPTOUT",
        "CLIENT TRACKING on REDIRECT 987654",
        "CLIENT TRACKING on REDIRECT x",
        "CLIENT TRACKING maybe",
        "CLIENT TRACKING on BCAST PREFIX a PREFIX ab",
        "CLIENT CACHING yes",
        "CLIENT GETREDIR",
        "CLIENT TRACKINGINFO",
    ] {
        out.push(format!("{line} -> {}", a.cmd(line)));
    }
    // Default mode, RESP3: a read key is invalidated once.
    out.push(a.cmd("HELLO 3").lines().next().unwrap_or("").to_string());
    out.push(a.cmd("CLIENT TRACKING on"));
    out.push(a.cmd("CLIENT GETREDIR"));
    out.push(a.cmd("CLIENT TRACKINGINFO"));
    out.push(a.cmd("GET t:k"));
    out.push(writer.cmd("SET t:k 1"));
    out.push(format!("push: {}", a.reply()));
    out.push(writer.cmd("SET t:k 2"));
    out.push(format!(
        "second write told: {}",
        !a.nothing_within(Duration::from_millis(300))
    ));
    out.push(a.cmd("MGET t:k t:j"));
    out.push(writer.cmd("SET t:j 1"));
    out.push(format!("push: {}", a.reply()));
    // Reads inside MULTI are tracked too.
    out.push(a.cmd("MULTI"));
    out.push(a.cmd("GET t:m"));
    out.push(a.cmd("EXEC"));
    out.push(writer.cmd("SET t:m 1"));
    out.push(format!("push: {}", a.reply()));
    out.push(a.cmd("CLIENT TRACKING off"));
    out.push(a.cmd("CLIENT TRACKINGINFO"));

    // BCAST with prefixes.
    let mut b = Conn::connect(addr);
    b.cmd("HELLO 3");
    out.push(b.cmd("CLIENT TRACKING on BCAST PREFIX user: PREFIX cfg"));
    out.push(b.cmd("CLIENT TRACKINGINFO"));
    out.push(writer.cmd("SET other 1"));
    out.push(writer.cmd("SET user:1 1"));
    out.push(format!("push: {}", b.reply()));
    out.push(writer.cmd("SET cfg 1"));
    out.push(format!("push: {}", b.reply()));

    // OPTIN: only reads after CLIENT CACHING yes.
    let mut c = Conn::connect(addr);
    c.cmd("HELLO 3");
    out.push(c.cmd("CLIENT TRACKING on OPTIN"));
    out.push(c.cmd("CLIENT CACHING no"));
    out.push(c.cmd("GET o:1"));
    out.push(c.cmd("CLIENT CACHING yes"));
    out.push(c.cmd("GET o:2"));
    out.push(writer.cmd("SET o:1 1"));
    out.push(writer.cmd("SET o:2 1"));
    out.push(format!("push: {}", c.reply()));

    // NOLOOP: a client is not told of its own writes, and is told of others'. The keys
    // share a hash tag, so one shard's log orders every change of the section: an
    // invalidation of the client's own write would come before the one owed.
    let mut n = Conn::connect(addr);
    n.cmd("HELLO 3");
    out.push(n.cmd("CLIENT TRACKING on NOLOOP"));
    out.push(n.cmd("MGET {n}a {n}b"));
    out.push(n.cmd("SET {n}a mine"));
    out.push(writer.cmd("SET {n}b theirs"));
    out.push(format!("push: {}", n.reply()));
    // A read right after its own write is tracked: another client's change is told.
    out.push(n.cmd("SET {n}c mine"));
    out.push(n.cmd("GET {n}c"));
    out.push(writer.cmd("SET {n}c theirs"));
    out.push(format!("push: {}", n.reply()));
    // BCAST with NOLOOP, pipelined own writes, then another client's.
    let mut m = Conn::connect(addr);
    m.cmd("HELLO 3");
    out.push(m.cmd("CLIENT TRACKING on BCAST PREFIX {nb} NOLOOP"));
    for i in 0..20 {
        m.send(&format!("SET {{nb}}{i} x"));
    }
    for _ in 0..20 {
        out.push(m.reply());
    }
    out.push(writer.cmd("SET {nb}w 1"));
    out.push(format!("push: {}", m.reply()));

    // RESP2: invalidations redirected to a connection subscribed to __redis__:invalidate.
    let mut sink = Conn::connect(addr);
    let sink_id = sink.cmd("CLIENT ID");
    out.push(sink.cmd("SUBSCRIBE __redis__:invalidate"));
    let mut d = Conn::connect(addr);
    let id = sink_id.trim().trim_start_matches(':').to_string();
    out.push(d.cmd(&format!("CLIENT TRACKING on REDIRECT {id}")));
    out.push(d.cmd("CLIENT GETREDIR").replace(&id, "<sink>"));
    out.push(d.cmd("GET r:k"));
    out.push(writer.cmd("SET r:k 1"));
    out.push(format!("message: {}", sink.reply()));
    out
}

/// Cairn's steps against Redis's, step by step.
fn assert_same(ours: &[String], theirs: &[String]) {
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(
            o, t,
            "step {i} differs\nours: {ours:#?}\ntheirs: {theirs:#?}"
        );
    }
    assert_eq!(ours.len(), theirs.len());
}

#[test]
fn client_tracking_matches_redis() {
    let Some(redis) = crate::differential::Redis::start() else {
        return;
    };
    let node = Node::start();
    assert_same(&scenario(node.resp_addr), &scenario(redis.addr));
}

/// Keyspace notifications and CONFIG, against redis-server: the same settings and errors,
/// and the same messages for a set, a delete and an expiry.
#[test]
fn keyspace_notifications_and_config_match_redis() {
    let Some(redis) = crate::differential::Redis::start() else {
        return;
    };
    let node = Node::start();
    let scenario = |addr: SocketAddr| -> Vec<String> {
        let mut out = Vec::new();
        let mut c = Conn::connect(addr);
        for line in [
            "CONFIG GET notify-keyspace-events",
            "CONFIG SET notify-keyspace-events Kq",
            "CONFIG SET notify-keyspace-events",
            "CONFIG SET databases 1",
            "CONFIG SET no-such-thing 1",
            "CONFIG SET notify-keyspace-events KEA",
            "CONFIG GET notify-keyspace-events",
            "CONFIG SET notify-keyspace-events Kg$x",
            "CONFIG GET notify-keyspace-events",
            "CONFIG GET maxmemory",
            "CONFIG RESETSTAT",
            "CONFIG BOGUS",
        ] {
            out.push(format!("{line} -> {}", c.cmd(line)));
        }
        c.cmd("CONFIG SET notify-keyspace-events KEA");
        let mut sub = Conn::connect(addr);
        sub.send("SUBSCRIBE __keyspace@0__:nk __keyevent@0__:del __keyevent@0__:expired");
        for _ in 0..3 {
            out.push(sub.reply());
        }
        out.push(c.cmd("SET nk 1"));
        out.push(sub.reply());
        out.push(c.cmd("DEL nk"));
        out.push(sub.reply());
        out.push(sub.reply());
        out.push(c.cmd("SET nx 1 PX 30"));
        // Redis tells of an expiry when its active cycle (or a read) finds the key.
        out.push(sub.reply());
        // FLUSHDB tells nothing per key: the next message is the SET after it.
        out.push(c.cmd("SET nk 1"));
        out.push(sub.reply());
        out.push(c.cmd("FLUSHDB"));
        out.push(c.cmd("SET nk 2"));
        out.push(sub.reply());
        out.push(c.cmd("CONFIG SET notify-keyspace-events \"\""));
        out
    };
    assert_same(&scenario(node.resp_addr), &scenario(redis.addr));
}

/// Shard channels (SSUBSCRIBE, SPUBLISH, SUNSUBSCRIBE, PUBSUB SHARDCHANNELS/SHARDNUMSUB) and
/// PUBLISH inside MULTI, against redis-server: the same replies, the same messages, and
/// nothing published by a MULTI block that was discarded or whose WATCH failed.
#[test]
fn shard_channels_and_publish_in_multi_match_redis() {
    let Some(redis) = crate::differential::Redis::start() else {
        return;
    };
    let node = Node::start();
    let scenario = |addr: SocketAddr| -> Vec<String> {
        let mut out = Vec::new();
        let mut sub = Conn::connect(addr);
        let mut c = Conn::connect(addr);
        let mut other = Conn::connect(addr);
        sub.send("SSUBSCRIBE a b");
        out.push(sub.reply());
        out.push(sub.reply());
        out.push(sub.cmd("SUBSCRIBE c"));
        out.push(sub.cmd("GET k"));
        for line in [
            "PUBSUB SHARDCHANNELS a",
            "PUBSUB SHARDCHANNELS zz*",
            "PUBSUB SHARDNUMSUB a b zz",
            "PUBSUB SHARDNUMSUB",
            "PUBSUB NUMSUB a c",
            "PUBSUB CHANNELS a",
            "SPUBLISH a hello",
            "PUBLISH a not-for-shard-subscribers",
            "SPUBLISH",
        ] {
            out.push(format!("{line} -> {}", c.cmd(line)));
        }
        out.push(sub.reply());
        // Queued, and run by EXEC.
        for line in [
            "MULTI",
            "PUBLISH c m1",
            "SPUBLISH b m2",
            "SET k v",
            "PUBSUB NUMSUB c",
            "EXEC",
        ] {
            out.push(format!("{line} -> {}", c.cmd(line)));
        }
        out.push(sub.reply());
        out.push(sub.reply());
        // A discarded block and a block whose WATCH failed publish nothing: the next
        // message is the one published after them.
        for line in [
            "MULTI",
            "PUBLISH c discarded",
            "DISCARD",
            "WATCH k",
            "MULTI",
        ] {
            out.push(format!("{line} -> {}", c.cmd(line)));
        }
        out.push(other.cmd("SET k changed"));
        for line in ["SPUBLISH a lost", "EXEC", "SPUBLISH a after"] {
            out.push(format!("{line} -> {}", c.cmd(line)));
        }
        out.push(sub.reply());
        out.push(sub.cmd("SUNSUBSCRIBE a"));
        out.push(sub.cmd("SUNSUBSCRIBE"));
        out.push(sub.cmd("SUNSUBSCRIBE"));
        out.push(sub.cmd("UNSUBSCRIBE"));
        out.push(sub.cmd("SET k v"));
        out
    };
    assert_same(&scenario(node.resp_addr), &scenario(redis.addr));
}
