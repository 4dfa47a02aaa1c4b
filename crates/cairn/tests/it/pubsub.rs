//! Pub/sub on one node as a RESP2 client sees it: the subscribed context, messages and
//! confirmations in order, and a subscriber that stops reading being dropped.

use std::io::Read;

use crate::support::Node;

fn frame(items: &[&str]) -> String {
    let mut out = format!("*{}\r\n", items.len());
    for item in items {
        if let Some(n) = item.strip_prefix(':') {
            out.push_str(&format!(":{n}\r\n"));
        } else {
            out.push_str(&format!("${}\r\n{item}\r\n", item.len()));
        }
    }
    out
}

/// Subscribed, a RESP2 connection takes only pub/sub commands, PING (in its subscribed
/// form) and QUIT; messages published before an UNSUBSCRIBE come before its answer; with
/// nothing left subscribed, the connection takes every command again.
#[test]
fn the_subscribed_context_of_resp2() {
    let node = Node::start();
    let mut sub = node.resp();
    let mut publisher = node.resp();
    assert_eq!(
        sub.cmd_str("SUBSCRIBE news"),
        frame(&["subscribe", "news", ":1"])
    );
    assert!(
        sub.cmd_str("GET k")
            .starts_with("-ERR Can't execute 'get': only (P|S)SUBSCRIBE")
    );
    assert_eq!(sub.cmd_str("PING"), frame(&["pong", ""]));
    assert_eq!(sub.cmd_str("PING hi"), frame(&["pong", "hi"]));
    assert!(
        sub.cmd_str("PING a b")
            .starts_with("-ERR wrong number of arguments")
    );
    for i in 0..20 {
        assert_eq!(publisher.cmd_str(&format!("PUBLISH news m{i}")), ":1\r\n");
    }
    sub.send_cmd(&[b"UNSUBSCRIBE"]);
    for i in 0..20 {
        assert_eq!(
            String::from_utf8_lossy(&sub.read_reply()),
            frame(&["message", "news", &format!("m{i}")])
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&sub.read_reply()),
        frame(&["unsubscribe", "news", ":0"])
    );
    assert_eq!(sub.cmd_str("SET k v"), "+OK\r\n");
    assert_eq!(publisher.cmd_str("PUBLISH news gone"), ":0\r\n");
}

/// A subscriber that does not read is dropped once 32 MiB wait for it (Redis's pub/sub
/// buffer limit): publishing stops reaching it, memory stays bounded, and its connection is
/// closed once what was already on its way is read.
#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_disconnected() {
    let node = Node::start();
    let mut sub = node.resp();
    assert_eq!(
        sub.cmd_str("SUBSCRIBE big"),
        frame(&["subscribe", "big", ":1"])
    );
    let mut publisher = node.resp();
    let payload = vec![b'x'; 1024 * 1024];
    let mut reached = 0;
    for _ in 0..64 {
        let answer = publisher.cmd(&[b"PUBLISH", b"big", &payload]);
        if answer == b":1\r\n" {
            reached += 1;
        } else {
            assert_eq!(answer, b":0\r\n");
        }
    }
    assert!(
        reached < 64,
        "a subscriber that never read took {reached} MiB"
    );
    assert_eq!(
        publisher.cmd_str("PUBSUB NUMSUB big"),
        frame(&["big", ":0"])
    );
    // Reading now: what was on its way arrives, then the connection ends.
    let mut rest = Vec::new();
    sub.stream
        .read_to_end(&mut rest)
        .expect("the dropped subscriber's connection ends");
    assert!(rest.len() <= reached * (payload.len() + 64));
}

/// A message published after a write on the same connection (pipelined, or from a MULTI
/// block) reaches subscribers only once the write has landed: a subscriber that reads the
/// key on the message sees the write, as in Redis, where commands run in order.
#[test]
fn a_message_published_after_a_write_is_delivered_after_it() {
    let node = Node::start();
    let mut sub = node.resp();
    assert_eq!(
        sub.cmd_str("SUBSCRIBE ch"),
        frame(&["subscribe", "ch", ":1"])
    );
    let mut reader = node.resp();
    let mut publisher = node.resp();
    for i in 0..60 {
        let value = format!("v{i}");
        let requests: Vec<Vec<&[u8]>> = match i % 3 {
            // Pipelined SET then PUBLISH.
            0 => vec![
                vec![b"SET", b"k", value.as_bytes()],
                vec![b"PUBLISH", b"ch", value.as_bytes()],
            ],
            // A write, then a block that only publishes.
            1 => vec![
                vec![b"SET", b"k", value.as_bytes()],
                vec![b"MULTI"],
                vec![b"SPUBLISH", b"other", b"x"],
                vec![b"PUBLISH", b"ch", value.as_bytes()],
                vec![b"EXEC"],
            ],
            // The write and the message in one block.
            _ => vec![
                vec![b"MULTI"],
                vec![b"SET", b"k", value.as_bytes()],
                vec![b"PUBLISH", b"ch", value.as_bytes()],
                vec![b"EXEC"],
            ],
        };
        for request in &requests {
            publisher.send_cmd(request);
        }
        assert_eq!(
            String::from_utf8_lossy(&sub.read_reply()),
            frame(&["message", "ch", &value])
        );
        assert_eq!(
            reader.cmd_str("GET k"),
            format!("${}\r\n{value}\r\n", value.len()),
            "round {i}: the message came before the write it follows"
        );
        for _ in &requests {
            publisher.read_reply();
        }
    }
}
