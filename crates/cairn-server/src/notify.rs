//! Keyspace notifications (`notify-keyspace-events`): every change of a key published on
//! `__keyspace@0__:<key>` (the event as message) and `__keyevent@0__:<event>` (the key as
//! message), as Redis does, for the classes the flags select.
//!
//! The events come from the change feed of this node's replicas ([`Notifier::spawn`]), and
//! each node publishes to its own subscribers only, with its own flags (`CONFIG SET` is per
//! node, as in Redis Cluster): a subscriber on any node hears of every change of the whole
//! keyspace once, whichever node the write went through, and through a leader's death.
//!
//! What differs from Redis: the feed holds outcomes, not commands, so the event is named by
//! what happened to the key: `set` for any write that leaves a value (SET, INCR, APPEND,
//! MSET, EXPIRE, … all notify `set`, class `$`), `del` for a removal (class `g`) and `expired`
//! for a removal by active expiry (class `x`); FLUSHDB tells nothing per key, as in Redis.
//! `n` (new key), `m` (key miss) and `e` (eviction) are accepted and never fire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

use crate::feed::EventKind;
use crate::node::Node;

pub const KEYSPACE: u32 = 1 << 0;
pub const KEYEVENT: u32 = 1 << 1;
pub const GENERIC: u32 = 1 << 2;
pub const STRING: u32 = 1 << 3;
pub const LIST: u32 = 1 << 4;
pub const SET: u32 = 1 << 5;
pub const HASH: u32 = 1 << 6;
pub const ZSET: u32 = 1 << 7;
pub const EXPIRED: u32 = 1 << 8;
pub const EVICTED: u32 = 1 << 9;
pub const STREAM: u32 = 1 << 10;
pub const KEY_MISS: u32 = 1 << 11;
pub const MODULE: u32 = 1 << 12;
pub const NEW: u32 = 1 << 13;
/// `A`: every class but `m` and `n`.
pub const ALL: u32 =
    GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// Redis's flag string → flags; `None` for an unknown character.
pub fn parse(text: &[u8]) -> Option<u32> {
    let mut flags = 0;
    for c in text {
        flags |= match c {
            b'A' => ALL,
            b'g' => GENERIC,
            b'$' => STRING,
            b'l' => LIST,
            b's' => SET,
            b'h' => HASH,
            b'z' => ZSET,
            b'x' => EXPIRED,
            b'e' => EVICTED,
            b'K' => KEYSPACE,
            b'E' => KEYEVENT,
            b't' => STREAM,
            b'm' => KEY_MISS,
            b'd' => MODULE,
            b'n' => NEW,
            _ => return None,
        };
    }
    Some(flags)
}

/// Flags → Redis's flag string (as `CONFIG GET` shows it).
pub fn format(flags: u32) -> String {
    let mut out = String::new();
    if flags & ALL == ALL {
        out.push('A');
    } else {
        for (bit, c) in [
            (GENERIC, 'g'),
            (STRING, '$'),
            (LIST, 'l'),
            (SET, 's'),
            (HASH, 'h'),
            (ZSET, 'z'),
            (EXPIRED, 'x'),
            (EVICTED, 'e'),
            (STREAM, 't'),
            (MODULE, 'd'),
        ] {
            if flags & bit != 0 {
                out.push(c);
            }
        }
    }
    for (bit, c) in [
        (KEYSPACE, 'K'),
        (KEYEVENT, 'E'),
        (KEY_MISS, 'm'),
        (NEW, 'n'),
    ] {
        if flags & bit != 0 {
            out.push(c);
        }
    }
    out
}

/// The event name and class of a change.
fn event_of(kind: EventKind) -> (&'static str, u32) {
    match kind {
        EventKind::Put => ("set", STRING),
        EventKind::Delete => ("del", GENERIC),
        EventKind::Expire => ("expired", EXPIRED),
    }
}

/// The node's keyspace-notification settings and publisher.
#[derive(Debug, Default)]
pub struct Notifier {
    flags: AtomicU32,
    /// The whole-keyspace watch, once started (when notifications are first turned on: until
    /// then the write path pays nothing for them).
    running: std::sync::OnceLock<crate::watch::Positioned>,
}

impl Notifier {
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    pub fn set_flags(&self, flags: u32) {
        self.flags.store(flags, Ordering::Relaxed);
    }

    /// The messages one change publishes under `flags`: (channel, message).
    pub fn messages(flags: u32, kind: EventKind, key: &Bytes) -> Vec<(Bytes, Bytes)> {
        let (event, class) = event_of(kind);
        let mut out = Vec::new();
        if flags & class == 0 {
            return out;
        }
        if flags & KEYSPACE != 0 {
            let mut channel = b"__keyspace@0__:".to_vec();
            channel.extend_from_slice(key);
            out.push((Bytes::from(channel), Bytes::from_static(event.as_bytes())));
        }
        if flags & KEYEVENT != 0 {
            let channel = format!("__keyevent@0__:{event}");
            out.push((Bytes::from(channel), key.clone()));
        }
        out
    }

    /// Starts following every change on this node's feeds, publishing its notifications to
    /// this node's subscribers, until the node stops; does nothing more when it already
    /// runs. Every change after its watch stands is told ([`Notifier::started`], which
    /// `CONFIG SET` waits for before it answers).
    pub fn start(self: &Arc<Self>, node: &Arc<Node>) {
        self.running.get_or_init(|| self.follow_keyspace(node));
    }

    /// The whole-keyspace watch, once started.
    pub fn started(&self) -> Option<crate::watch::Positioned> {
        self.running.get().cloned()
    }

    fn follow_keyspace(self: &Arc<Self>, node: &Arc<Node>) -> crate::watch::Positioned {
        let notifier = self.clone();
        let publisher = node.clone();
        crate::watch::follow_keyspace(
            node,
            move |events| {
                let flags = notifier.flags();
                if flags & (KEYSPACE | KEYEVENT) == 0 {
                    return;
                }
                // Redis tells nothing per key for FLUSHDB.
                for e in events.into_iter().filter(|e| !e.event.flushed) {
                    for (channel, message) in Notifier::messages(flags, e.event.kind, &e.event.key)
                    {
                        publisher.pubsub().publish(&channel, &message, false);
                    }
                }
            },
            || {
                tracing::warn!(
                    "keyspace notifications fell behind the change history; some were lost"
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_and_print_as_redis_does() {
        assert_eq!(parse(b""), Some(0));
        assert_eq!(parse(b"x"), Some(EXPIRED));
        assert_eq!(parse(b"KEA").map(format).as_deref(), Some("AKE"));
        assert_eq!(parse(b"Kg$").map(format).as_deref(), Some("g$K"));
        assert_eq!(parse(b"Ex").map(format).as_deref(), Some("xE"));
        assert_eq!(parse(b"KEA").unwrap() & (KEY_MISS | NEW), 0);
        assert_eq!(parse(b"Kq"), None);
    }

    #[test]
    fn a_change_publishes_on_the_keyspace_and_keyevent_channels_its_flags_select() {
        let key = Bytes::from_static(b"k");
        let both = parse(b"KEA").unwrap();
        assert_eq!(
            Notifier::messages(both, EventKind::Put, &key),
            vec![
                (
                    Bytes::from_static(b"__keyspace@0__:k"),
                    Bytes::from_static(b"set")
                ),
                (Bytes::from_static(b"__keyevent@0__:set"), key.clone()),
            ]
        );
        let expired_only = parse(b"Ex").unwrap();
        assert!(Notifier::messages(expired_only, EventKind::Put, &key).is_empty());
        assert_eq!(
            Notifier::messages(expired_only, EventKind::Expire, &key),
            vec![(Bytes::from_static(b"__keyevent@0__:expired"), key.clone())]
        );
        assert!(Notifier::messages(GENERIC | STRING, EventKind::Put, &key).is_empty());
    }
}
