//! The Redis-protocol front end, byte for byte: every command family, pipelining, RESP3,
//! protocol errors and limits, the cross-protocol defence, cluster introspection, READONLY and
//! `--resp-redirect` on one node.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::{Node, RawConn};

/// How long polling loops wait for background work (active expiry) before failing.
const POLL_TIMEOUT: Duration = Duration::from_secs(20);

fn s(conn: &mut RawConn, line: &str) -> String {
    conn.cmd_str(line)
}

/// Whether the server closed the connection (read returns 0 bytes) without sending anything.
fn closed_without_reply(conn: &mut RawConn) -> bool {
    let mut buf = [0u8; 64];
    matches!(conn.stream.read(&mut buf), Ok(0))
}

#[test]
fn strings_reply_exactly_as_redis() {
    let node = Node::start();
    let mut c = node.resp();

    // Phase 1: SET and its options.
    assert_eq!(s(&mut c, "SET k v"), "+OK\r\n");
    assert_eq!(s(&mut c, "GET k"), "$1\r\nv\r\n");
    assert_eq!(s(&mut c, "GET missing"), "$-1\r\n");
    assert_eq!(s(&mut c, "SET k v2 NX"), "$-1\r\n");
    assert_eq!(s(&mut c, "SET k v2 XX GET"), "$1\r\nv\r\n");
    assert_eq!(s(&mut c, "SET new v XX"), "$-1\r\n");
    assert_eq!(s(&mut c, "SET k v NX XX"), "-ERR syntax error\r\n");
    assert_eq!(
        s(&mut c, "SET k v EX 0"),
        "-ERR invalid expire time in 'set' command\r\n"
    );
    assert_eq!(
        s(&mut c, "SET k v EX abc"),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(s(&mut c, "SET k v EX 10 PX 10"), "-ERR syntax error\r\n");
    assert_eq!(s(&mut c, "SET k v EXAT 1"), "+OK\r\n");
    assert_eq!(s(&mut c, "GET k"), "$-1\r\n", "a past EXAT leaves no key");
    assert_eq!(s(&mut c, "SET k v EX 100"), "+OK\r\n");
    assert_eq!(s(&mut c, "SET k w KEEPTTL"), "+OK\r\n");
    assert_eq!(s(&mut c, "TTL k"), ":100\r\n");
    assert_eq!(s(&mut c, "SET k w"), "+OK\r\n");
    assert_eq!(s(&mut c, "TTL k"), ":-1\r\n");

    // Phase 2: the other setters and getters.
    assert_eq!(s(&mut c, "SETNX k x"), ":0\r\n");
    assert_eq!(s(&mut c, "SETNX n x"), ":1\r\n");
    assert_eq!(
        s(&mut c, "SETEX e 0 x"),
        "-ERR invalid expire time in 'setex' command\r\n"
    );
    assert_eq!(s(&mut c, "PSETEX e 100000 x"), "+OK\r\n");
    assert_eq!(s(&mut c, "GETSET e y"), "$1\r\nx\r\n");
    assert_eq!(s(&mut c, "TTL e"), ":-1\r\n", "GETSET clears the TTL");
    assert_eq!(s(&mut c, "GETDEL e"), "$1\r\ny\r\n");
    assert_eq!(s(&mut c, "GETDEL e"), "$-1\r\n");
    assert_eq!(s(&mut c, "GETEX missing EX abc"), "$-1\r\n");
    assert_eq!(
        s(&mut c, "GETEX k EX 0"),
        "-ERR invalid expire time in 'getex' command\r\n"
    );
    assert_eq!(s(&mut c, "GETEX k EX 50"), "$1\r\nw\r\n");
    assert_eq!(s(&mut c, "TTL k"), ":50\r\n");
    assert_eq!(s(&mut c, "GETEX k PERSIST"), "$1\r\nw\r\n");
    assert_eq!(s(&mut c, "TTL k"), ":-1\r\n");
    // Multi-key writes may span slots and shards (a transaction), as on a standalone Redis.
    assert_eq!(s(&mut c, "MSETNX a 1 b 2"), ":1\r\n");
    assert_eq!(s(&mut c, "MSETNX b 3 c 4"), ":0\r\n");
    assert_eq!(s(&mut c, "MSET a 5 c 6"), "+OK\r\n");
    assert_eq!(
        s(&mut c, "MGET a b c"),
        "*3\r\n$1\r\n5\r\n$1\r\n2\r\n$1\r\n6\r\n"
    );
    assert_eq!(s(&mut c, "DEL a b c"), ":3\r\n");
    assert_eq!(s(&mut c, "EXISTS a b c"), ":0\r\n");
    assert_eq!(s(&mut c, "MSET {t}a 1 {t}b 2"), "+OK\r\n");
    assert_eq!(s(&mut c, "SET a 1"), "+OK\r\n");
    assert_eq!(
        s(&mut c, "MSET {t}a 1 {t}b"),
        "-ERR wrong number of arguments for 'mset' command\r\n"
    );
    assert_eq!(
        s(&mut c, "MGET {t}a {t}b nope a"),
        "*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$1\r\n1\r\n"
    );
    assert_eq!(s(&mut c, "MSETNX {t}a 9 {t}fresh 1"), ":0\r\n");
    assert_eq!(s(&mut c, "GET {t}fresh"), "$-1\r\n");
    assert_eq!(s(&mut c, "MSETNX {t}fresh 1 {t}fresh2 2"), ":1\r\n");

    // Phase 3: in-place edits.
    assert_eq!(s(&mut c, "APPEND ap Hello"), ":5\r\n");
    assert_eq!(s(&mut c, "APPEND ap _World"), ":11\r\n");
    assert_eq!(s(&mut c, "STRLEN ap"), ":11\r\n");
    assert_eq!(s(&mut c, "STRLEN nope"), ":0\r\n");
    assert_eq!(s(&mut c, "GETRANGE ap 0 4"), "$5\r\nHello\r\n");
    assert_eq!(s(&mut c, "GETRANGE ap -5 -1"), "$5\r\nWorld\r\n");
    assert_eq!(s(&mut c, "GETRANGE ap 5 1"), "$0\r\n\r\n");
    assert_eq!(s(&mut c, "SETRANGE ap 6 Redis"), ":11\r\n");
    assert_eq!(s(&mut c, "GET ap"), "$11\r\nHello_Redis\r\n");
    assert_eq!(s(&mut c, "SETRANGE pad 3 x"), ":4\r\n");
    assert_eq!(c.cmd(&[b"GET", b"pad"]), b"$4\r\n\0\0\0x\r\n");
    assert_eq!(
        s(&mut c, "SETRANGE pad -1 x"),
        "-ERR offset is out of range\r\n"
    );

    // Phase 4: counters.
    assert_eq!(s(&mut c, "INCR cnt"), ":1\r\n");
    assert_eq!(s(&mut c, "INCRBY cnt 41"), ":42\r\n");
    assert_eq!(s(&mut c, "DECR cnt"), ":41\r\n");
    assert_eq!(s(&mut c, "DECRBY cnt 40"), ":1\r\n");
    assert_eq!(
        s(&mut c, "INCR ap"),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(
        s(&mut c, "INCRBY cnt x"),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(s(&mut c, "SET big 9223372036854775807"), "+OK\r\n");
    assert_eq!(
        s(&mut c, "INCR big"),
        "-ERR increment or decrement would overflow\r\n"
    );
    assert_eq!(
        s(&mut c, "DECRBY cnt -9223372036854775808"),
        "-ERR decrement would overflow\r\n"
    );
    assert_eq!(s(&mut c, "INCRBYFLOAT fl 10.5"), "$4\r\n10.5\r\n");
    assert_eq!(s(&mut c, "INCRBYFLOAT fl 0.1"), "$4\r\n10.6\r\n");
    assert_eq!(s(&mut c, "INCRBYFLOAT fl -10.6"), "$1\r\n0\r\n");
    assert_eq!(
        s(&mut c, "INCRBYFLOAT fl x"),
        "-ERR value is not a valid float\r\n"
    );
    assert_eq!(
        s(&mut c, "INCRBYFLOAT ap 1"),
        "-ERR value is not a valid float\r\n"
    );
    assert_eq!(
        s(&mut c, "INCRBYFLOAT fl inf"),
        "-ERR increment would produce NaN or Infinity\r\n"
    );
}

#[test]
fn keyspace_commands_reply_exactly_as_redis() {
    let node = Node::start();
    let mut c = node.resp();
    for cmd in ["SET a 1", "SET b 2", "SET c 3"] {
        assert_eq!(s(&mut c, cmd), "+OK\r\n");
    }

    // Phase 1: existence and deletion.
    assert_eq!(s(&mut c, "EXISTS a a nope"), ":2\r\n");
    assert_eq!(s(&mut c, "TYPE a"), "+string\r\n");
    assert_eq!(s(&mut c, "TYPE nope"), "+none\r\n");
    assert_eq!(s(&mut c, "DEL a nope a"), ":1\r\n");
    assert_eq!(s(&mut c, "UNLINK b"), ":1\r\n");
    assert_eq!(s(&mut c, "DBSIZE"), ":1\r\n");

    // Phase 2: expiry family.
    assert_eq!(s(&mut c, "EXPIRE nope 10"), ":0\r\n");
    assert_eq!(s(&mut c, "TTL nope"), ":-2\r\n");
    assert_eq!(s(&mut c, "TTL c"), ":-1\r\n");
    assert_eq!(s(&mut c, "EXPIRE c 100 XX"), ":0\r\n");
    assert_eq!(s(&mut c, "EXPIRE c 100 GT"), ":0\r\n");
    assert_eq!(s(&mut c, "EXPIRE c 100 NX"), ":1\r\n");
    assert_eq!(s(&mut c, "EXPIRE c 50 GT"), ":0\r\n");
    assert_eq!(s(&mut c, "EXPIRE c 50 LT"), ":1\r\n");
    assert_eq!(s(&mut c, "TTL c"), ":50\r\n");
    assert_eq!(s(&mut c, "PEXPIRE c 200000"), ":1\r\n");
    let pttl: i64 = s(&mut c, "PTTL c")
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 190_000 && pttl <= 200_000, "{pttl}");
    assert_eq!(s(&mut c, "EXPIREAT c 4000000000"), ":1\r\n");
    assert_eq!(s(&mut c, "EXPIRETIME c"), ":4000000000\r\n");
    assert_eq!(s(&mut c, "PEXPIRETIME c"), ":4000000000000\r\n");
    assert_eq!(s(&mut c, "PEXPIREAT c 4000000000123"), ":1\r\n");
    assert_eq!(s(&mut c, "EXPIRETIME c"), ":4000000000\r\n");
    assert_eq!(s(&mut c, "EXPIRETIME nope"), ":-2\r\n");
    assert_eq!(s(&mut c, "PERSIST c"), ":1\r\n");
    assert_eq!(s(&mut c, "PERSIST c"), ":0\r\n");
    assert_eq!(
        s(&mut c, "EXPIRE c 10 NX XX"),
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    );
    assert_eq!(
        s(&mut c, "EXPIRE c 10 GT LT"),
        "-ERR GT and LT options at the same time are not compatible\r\n"
    );
    assert_eq!(
        s(&mut c, "EXPIRE c 10 FOO"),
        "-ERR Unsupported option FOO\r\n"
    );
    assert_eq!(
        s(&mut c, "EXPIRE c 9223372036854775807"),
        "-ERR invalid expire time in 'expire' command\r\n"
    );
    assert_eq!(s(&mut c, "EXPIRE c -1"), ":1\r\n");
    assert_eq!(s(&mut c, "EXISTS c"), ":0\r\n", "a negative TTL deletes");

    // Phase 3: rename, keys, scan, randomkey.
    assert_eq!(s(&mut c, "RENAME nope x"), "-ERR no such key\r\n");
    assert_eq!(s(&mut c, "RENAME {n}nope {n}x"), "-ERR no such key\r\n");
    assert_eq!(
        s(&mut c, "MSET user:1{u} a user:2{u} b other{u} c"),
        "+OK\r\n"
    );
    assert_eq!(s(&mut c, "RENAME other{u} user:3"), "+OK\r\n");
    assert_eq!(s(&mut c, "RENAMENX user:3 user:1{u}"), ":0\r\n");
    assert_eq!(s(&mut c, "RENAME user:3 user:3{u}"), "+OK\r\n");
    assert_eq!(s(&mut c, "RENAMENX user:3{u} user:1{u}"), ":0\r\n");
    assert_eq!(s(&mut c, "RENAMENX user:3{u} user:3{u}"), ":0\r\n");
    assert_eq!(s(&mut c, "RENAME user:3{u} user:3{u}"), "+OK\r\n");
    let keys = s(&mut c, "KEYS user:*");
    assert!(keys.starts_with("*3\r\n"), "{keys}");
    for k in ["user:1{u}", "user:2{u}", "user:3{u}"] {
        assert!(keys.contains(k), "{keys}");
    }
    assert_eq!(s(&mut c, "KEYS user:[12]*").matches("user:").count(), 2);
    assert_eq!(s(&mut c, "KEYS nomatch*"), "*0\r\n");
    // A full SCAN sees every key exactly once, whatever the COUNT.
    for count in ["1", "2", "100"] {
        let mut seen = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = c.cmd(&[
                b"SCAN",
                cursor.as_bytes(),
                b"MATCH",
                b"user:*",
                b"COUNT",
                count.as_bytes(),
            ]);
            let text = String::from_utf8(reply).unwrap();
            let parts: Vec<&str> = text.split("\r\n").collect();
            cursor = parts[2].to_string();
            seen.extend(
                parts[4..]
                    .iter()
                    .filter(|p| p.starts_with("user:"))
                    .map(|p| p.to_string()),
            );
            if cursor == "0" {
                break;
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            ["user:1{u}", "user:2{u}", "user:3{u}"],
            "COUNT {count}"
        );
    }
    assert_eq!(s(&mut c, "SCAN 0 TYPE hash"), "*2\r\n$1\r\n0\r\n*0\r\n");
    assert_eq!(s(&mut c, "SCAN x"), "-ERR invalid cursor\r\n");
    assert_eq!(s(&mut c, "SCAN 0 COUNT 0"), "-ERR syntax error\r\n");
    assert!(s(&mut c, "RANDOMKEY").contains("user:"));

    // Phase 4: flush.
    assert_eq!(s(&mut c, "FLUSHDB"), "+OK\r\n");
    assert_eq!(s(&mut c, "DBSIZE"), ":0\r\n");
    assert_eq!(s(&mut c, "RANDOMKEY"), "$-1\r\n");
    assert_eq!(s(&mut c, "FLUSHALL BOGUS"), "-ERR syntax error\r\n");
    assert_eq!(s(&mut c, "FLUSHALL ASYNC"), "+OK\r\n");
}

#[test]
fn expired_keys_vanish_at_once_and_are_deleted_in_the_background() {
    let node = Node::start();
    let mut c = node.resp();
    assert_eq!(s(&mut c, "SET gone v PX 1"), "+OK\r\n");
    assert_eq!(s(&mut c, "SET stays v"), "+OK\r\n");
    // Lazy: invisible as soon as the deadline passes.
    let deadline = Instant::now() + POLL_TIMEOUT;
    while s(&mut c, "EXISTS gone") != ":0\r\n" {
        assert!(Instant::now() < deadline, "expired key still visible");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s(&mut c, "GET gone"), "$-1\r\n");
    assert_eq!(s(&mut c, "TTL gone"), ":-2\r\n");
    // Active: the background cycle deletes it, so INFO stops counting it as expiring.
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let info = String::from_utf8(c.cmd(&[b"INFO", b"keyspace"])).unwrap();
        if info.contains("db0:keys=1,expires=0") {
            break;
        }
        assert!(Instant::now() < deadline, "active expiry never ran: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connection_commands_and_resp3() {
    let node = Node::start();
    let mut c = node.resp();
    assert_eq!(s(&mut c, "PING"), "+PONG\r\n");
    assert_eq!(s(&mut c, "PING hi"), "$2\r\nhi\r\n");
    assert_eq!(
        s(&mut c, "PING a b"),
        "-ERR wrong number of arguments for 'ping' command\r\n"
    );
    assert_eq!(s(&mut c, "ECHO hello"), "$5\r\nhello\r\n");
    assert_eq!(s(&mut c, "SELECT 0"), "+OK\r\n");
    assert_eq!(s(&mut c, "SELECT 1"), "-ERR DB index is out of range\r\n");
    assert_eq!(
        s(&mut c, "SELECT x"),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(s(&mut c, "CLIENT GETNAME"), "$-1\r\n");
    assert_eq!(s(&mut c, "CLIENT SETNAME worker"), "+OK\r\n");
    assert_eq!(s(&mut c, "CLIENT GETNAME"), "$6\r\nworker\r\n");
    assert!(s(&mut c, "CLIENT ID").starts_with(':'));
    assert_eq!(
        c.cmd(&[b"CLIENT", b"SETNAME", b"a b"]),
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(
        s(&mut c, "CLIENT NOPE"),
        "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n"
    );
    assert!(s(&mut c, "CLIENT LIST").contains("name=worker"));
    assert!(s(&mut c, "TIME").starts_with("*2\r\n$10\r\n"));
    assert!(s(&mut c, "COMMAND COUNT").starts_with(':'));
    assert!(s(&mut c, "COMMAND INFO get").contains("$3\r\nget\r\n:2\r\n"));
    assert!(s(&mut c, "INFO").contains("# Server\r\nredis_version:"));
    assert_eq!(
        s(&mut c, "HELLO 4"),
        "-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(
        s(&mut c, "HELLO 3 BOGUS"),
        "-ERR Syntax error in HELLO option 'BOGUS'\r\n"
    );

    // RESP3 after HELLO 3: a map reply, `_` for null, then back to RESP2.
    let hello = s(&mut c, "HELLO 3 SETNAME r3");
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{hello}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert_eq!(s(&mut c, "GET missing"), "_\r\n");
    assert_eq!(s(&mut c, "CLIENT GETNAME"), "$2\r\nr3\r\n");
    assert!(
        s(&mut c, "INFO server").starts_with('='),
        "INFO is verbatim text in RESP3"
    );
    assert!(s(&mut c, "HELLO 2").starts_with("*14\r\n"));
    assert_eq!(s(&mut c, "GET missing"), "$-1\r\n");

    // QUIT answers and closes.
    assert_eq!(s(&mut c, "QUIT"), "+OK\r\n");
    assert!(closed_without_reply(&mut c));
}

#[test]
fn unknown_commands_and_wrong_arity_keep_the_connection() {
    let node = Node::start();
    let mut c = node.resp();
    assert_eq!(
        s(&mut c, "FOO a b"),
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"
    );
    assert_eq!(
        s(&mut c, "foo"),
        "-ERR unknown command 'foo', with args beginning with: \r\n"
    );
    assert_eq!(
        s(&mut c, "GET"),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        s(&mut c, "CLIENT SETNAME"),
        "-ERR wrong number of arguments for 'client|setname' command\r\n"
    );
    assert_eq!(s(&mut c, "PING"), "+PONG\r\n");
    // Inline commands work too.
    c.send(b"SET inline \"a b\"\r\nGET inline\r\n");
    assert_eq!(c.read_reply(), b"+OK\r\n");
    assert_eq!(c.read_reply(), b"$3\r\na b\r\n");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let node = Node::start();
    let mut c = node.resp();
    const N: usize = 500;
    let mut batch = Vec::new();
    for i in 0..N {
        let (k, v) = (format!("p{i}"), format!("v{i}"));
        for args in [
            vec!["SET", &k, &v],
            vec!["INCR", "counter"],
            vec!["GET", &k],
        ] {
            batch.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                batch.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        }
    }
    c.send(&batch);
    for i in 0..N {
        assert_eq!(c.read_reply(), b"+OK\r\n");
        assert_eq!(c.read_reply(), format!(":{}\r\n", i + 1).into_bytes());
        assert_eq!(
            c.read_reply(),
            format!("${}\r\nv{i}\r\n", format!("v{i}").len()).into_bytes()
        );
    }
    assert_eq!(s(&mut c, "DBSIZE"), format!(":{}\r\n", N + 1));
}

#[test]
fn keys_and_values_are_binary_safe() {
    let node = Node::start();
    let mut c = node.resp();
    let key: &[u8] = b"k\0\r\n\xff";
    let value: &[u8] = b"\r\n$3\r\n\0\xfe";
    assert_eq!(c.cmd(&[b"SET", key, value]), b"+OK\r\n");
    let mut expected = format!("${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(value);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(c.cmd(&[b"GET", key]), expected);
    assert_eq!(c.cmd(&[b"SET", b"empty", b""]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"empty"]), b"$0\r\n\r\n");
}

#[test]
fn protocol_errors_are_answered_then_the_connection_closes() {
    let node = Node::start();
    for (input, reply) in [
        (
            &b"*abc\r\n"[..],
            &b"-ERR Protocol error: invalid multibulk length\r\n"[..],
        ),
        (
            b"*1\r\n$abc\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        // A bulk header far above the limit is refused before anything is allocated.
        (
            b"*1\r\n$999999999999\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n+PING\r\n",
            b"-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"SET a \"unbalanced\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ] {
        let mut c = node.resp();
        c.send(input);
        assert_eq!(
            c.read_reply(),
            reply,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        assert!(
            closed_without_reply(&mut c),
            "connection should close after {input:?}"
        );
    }
    // The node lives on.
    assert_eq!(node.resp().cmd_str("PING"), "+PONG\r\n");
}

#[test]
fn post_and_host_lines_close_the_connection() {
    let node = Node::start();
    for line in [&b"POST / HTTP/1.1\r\n"[..], b"Host: example.com\r\n"] {
        let mut c = node.resp();
        c.send(b"PING\r\n");
        assert_eq!(c.read_reply(), b"+PONG\r\n");
        c.send(line);
        assert!(
            closed_without_reply(&mut c),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(node.resp().cmd_str("PING"), "+PONG\r\n");
}

#[test]
fn limits_give_clear_errors() {
    let node = Node::start_with(&["--value-bytes-max", "1024", "--max-connections", "3"]);
    let mut c = node.resp();
    let big_key = vec![b'k'; 64 * 1024 + 1];
    assert_eq!(
        c.cmd(&[b"SET", &big_key, b"v"]),
        b"-ERR key is 65537 bytes; the limit is 65536\r\n"
    );
    let big_value = vec![b'v'; 1025];
    assert_eq!(
        c.cmd(&[b"SET", b"k", &big_value]),
        b"-ERR value is 1025 bytes; the limit is 1024\r\n"
    );
    assert_eq!(s(&mut c, "SET k v"), "+OK\r\n");
    assert_eq!(
        c.cmd(&[b"SETRANGE", b"k", b"1024", b"x"]),
        b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
    );
    assert_eq!(c.cmd(&[b"GET", &big_key]), b"$-1\r\n");

    // Connections over the cap are told so and closed; the others keep working.
    let _c2 = node.resp();
    let mut c3 = node.resp();
    assert_eq!(s(&mut c3, "PING"), "+PONG\r\n");
    let mut over = node.resp();
    let mut reply = Vec::new();
    over.stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"-ERR max number of clients reached\r\n");
    assert_eq!(s(&mut c, "PING"), "+PONG\r\n");
    drop(c3);
    // A freed slot can be used again.
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let mut again = node.resp();
        again.stream.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = again.stream.read(&mut buf).unwrap_or(0);
        if &buf[..n] == b"+PONG\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never freed: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cluster_introspection_describes_a_one_node_cluster() {
    let node = Node::start();
    let mut c = node.resp();
    assert_eq!(s(&mut c, "CLUSTER KEYSLOT 123456789"), ":12739\r\n");
    assert_eq!(
        s(&mut c, "CLUSTER KEYSLOT {user1000}.following"),
        s(&mut c, "CLUSTER KEYSLOT user1000")
    );
    let id = s(&mut c, "CLUSTER MYID");
    assert!(id.starts_with("$40\r\n"), "{id}");
    let id = id[5..45].to_string();
    let info = s(&mut c, "CLUSTER INFO");
    assert!(
        info.contains("cluster_state:ok\r\n") && info.contains("cluster_slots_assigned:16384\r\n"),
        "{info}"
    );
    let port = node.resp_addr.port();
    assert_eq!(
        s(&mut c, "CLUSTER SLOTS"),
        format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$40\r\n{id}\r\n*0\r\n"
        )
    );
    let nodes = s(&mut c, "CLUSTER NODES");
    assert!(
        nodes.contains(&format!("{id} 127.0.0.1:{port}@")),
        "{nodes}"
    );
    assert!(
        nodes.contains("myself,master - 0 0 1 connected 0-16383\n"),
        "{nodes}"
    );
    let shards = s(&mut c, "CLUSTER SHARDS");
    assert!(
        shards.starts_with("*4\r\n"),
        "one entry per shard: {shards}"
    );
    assert!(s(&mut c, "INFO cluster").contains("cluster_enabled:1"));
    assert_eq!(s(&mut c, "READONLY"), "+OK\r\n");
    assert_eq!(s(&mut c, "READWRITE"), "+OK\r\n");
    assert_eq!(
        s(&mut c, "CLUSTER NOPE"),
        "-ERR unknown subcommand 'NOPE'. Try CLUSTER HELP.\r\n"
    );
}

#[test]
fn readonly_and_redirects_change_nothing_on_one_node() {
    // One node leads every shard: `--resp-redirect` never answers MOVED, and a READONLY
    // connection's reads are this node's own.
    let node = Node::start_with(&["--resp-redirect"]);
    let mut c = node.resp();
    assert_eq!(s(&mut c, "SET {k}1 v"), "+OK\r\n");
    assert_eq!(s(&mut c, "READONLY"), "+OK\r\n");
    assert!(s(&mut c, "CLIENT INFO").contains(" flags=r "));
    assert_eq!(s(&mut c, "GET {k}1"), "$1\r\nv\r\n");
    assert_eq!(s(&mut c, "SET {k}2 w"), "+OK\r\n");
    assert_eq!(
        s(&mut c, "MGET {k}1 {k}2 other"),
        "*3\r\n$1\r\nv\r\n$1\r\nw\r\n$-1\r\n"
    );
    assert_eq!(s(&mut c, "READWRITE"), "+OK\r\n");
    assert!(s(&mut c, "CLIENT INFO").contains(" flags=N "));
    assert_eq!(s(&mut c, "GET {k}2"), "$1\r\nw\r\n");
}

#[test]
fn a_multi_key_write_is_seen_whole_or_not_at_all() {
    let node = Node::start();
    // "{acct}foo" and "{acct}bar" share a slot (one Raft entry); "foo" (slot 12182) and "bar"
    // (slot 5061) live on different shards (a cross-shard transaction).
    for (foo, bar) in [("{acct}foo", "{acct}bar"), ("foo", "bar")] {
        let mut writer = node.resp();
        assert_eq!(s(&mut writer, &format!("MSET {foo} 0 {bar} 0")), "+OK\r\n");
        let mut reader = node.resp();
        let handle = std::thread::spawn(move || {
            for i in 1..=300 {
                assert_eq!(
                    writer.cmd_str(&format!("MSET {foo} {i} {bar} {i}")),
                    "+OK\r\n"
                );
            }
        });
        let (mut last, mut between) = (0, 0);
        while last < 300 {
            let reply = s(&mut reader, &format!("MGET {foo} {bar}"));
            let values: Vec<&str> = reply.split("\r\n").skip(2).step_by(2).take(2).collect();
            assert_eq!(values[0], values[1], "MGET saw half of an MSET: {reply:?}");
            let now: u32 = values[0].parse().unwrap();
            assert!(now >= last, "MGET went back from {last} to {now}");
            if now != last && now < 300 {
                between += 1;
            }
            last = now;
        }
        handle.join().unwrap();
        // The reads really overlapped the writes.
        assert!(
            between >= 3,
            "{foo}: only {between} intermediate states seen"
        );
    }
}
