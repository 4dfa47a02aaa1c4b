//! Publish/subscribe on one node, as Redis's: subscribers to channels and to glob patterns
//! of channel names; `publish` hands a message to every subscriber whose channel or pattern
//! matches and says how many got it. Messages are not stored: who is not subscribed when a
//! message is published never sees it. Shard channels (Redis 7's SSUBSCRIBE/SPUBLISH) are a
//! namespace of their own, without patterns.
//!
//! Every subscriber has a bounded queue ([`SUBSCRIBER_QUEUE_MAX`] messages,
//! [`SUBSCRIBER_QUEUE_BYTES_MAX`] bytes); one that does not read fast enough is dropped when
//! its queue is full (its connection is then closed), as Redis drops a client past its
//! pub/sub output buffer limit, so a slow reader never makes the node's memory grow.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

/// Messages one subscriber may have waiting; past this it is dropped.
pub const SUBSCRIBER_QUEUE_MAX: usize = 4096;
/// Bytes of channel names and payloads one subscriber may have waiting; past this it is
/// dropped (Redis's default pub/sub output buffer hard limit is 32 MB too).
pub const SUBSCRIBER_QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The sending side of one subscriber, as the hub keeps it for each of its subscriptions.
#[derive(Debug, Clone)]
struct Outbox {
    tx: mpsc::Sender<Message>,
    /// Bytes queued and not yet taken by the subscriber.
    queued: Arc<AtomicUsize>,
}

/// A message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The pattern it matched, for a pattern subscription.
    pub pattern: Option<Bytes>,
    /// Published on a shard channel (SPUBLISH).
    pub sharded: bool,
    pub channel: Bytes,
    pub payload: Bytes,
}

/// The node's channels and patterns, and who is subscribed to each.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

/// Subscribers by channel name.
type Channels = HashMap<Bytes, HashMap<u64, Outbox>>;

#[derive(Debug, Default)]
struct Inner {
    channels: Channels,
    patterns: HashMap<Bytes, (Pattern, HashMap<u64, Outbox>)>,
    /// Shard channels: a namespace of their own.
    shard_channels: Channels,
    /// How to tell each subscriber it was dropped.
    kicks: HashMap<u64, Arc<Notify>>,
}

impl Inner {
    /// Forgets subscriber `id` everywhere.
    fn remove(&mut self, id: u64) {
        for channels in [&mut self.channels, &mut self.shard_channels] {
            channels.retain(|_, subs| {
                subs.remove(&id);
                !subs.is_empty()
            });
        }
        self.patterns.retain(|_, (_, subs)| {
            subs.remove(&id);
            !subs.is_empty()
        });
    }
}

impl Hub {
    /// A new subscriber, subscribed to nothing yet.
    pub fn subscriber(self: &Arc<Self>) -> Subscriber {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_MAX);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kicked = Arc::new(Notify::new());
        self.inner.lock().kicks.insert(id, kicked.clone());
        Subscriber {
            id,
            hub: self.clone(),
            outbox: Outbox {
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
            },
            rx,
            kicked,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            shard_channels: BTreeSet::new(),
        }
    }

    /// Hands `payload` to every subscriber of `channel` and of a pattern matching it (of
    /// shard channel `channel` when `sharded`); returns how many it reached. A subscriber
    /// whose queue is full is dropped.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes, sharded: bool) -> usize {
        let mut inner = self.inner.lock();
        let mut reached = 0;
        let mut dropped = Vec::new();
        let mut send = |id: u64, outbox: &Outbox, pattern: Option<&Bytes>| {
            let message = Message {
                pattern: pattern.cloned(),
                sharded,
                channel: channel.clone(),
                payload: payload.clone(),
            };
            let bytes = message.bytes();
            if outbox.queued.load(Ordering::Relaxed) + bytes > SUBSCRIBER_QUEUE_BYTES_MAX {
                dropped.push(id);
                return;
            }
            match outbox.tx.try_send(message) {
                Ok(()) => {
                    outbox.queued.fetch_add(bytes, Ordering::Relaxed);
                    reached += 1;
                }
                Err(_) => dropped.push(id),
            }
        };
        let named = if sharded {
            &inner.shard_channels
        } else {
            &inner.channels
        };
        if let Some(subs) = named.get(channel) {
            for (&id, tx) in subs {
                send(id, tx, None);
            }
        }
        if !sharded {
            for (pattern, (glob, subs)) in &inner.patterns {
                if glob.matches(channel) {
                    for (&id, tx) in subs {
                        send(id, tx, Some(pattern));
                    }
                }
            }
        }
        for id in dropped {
            tracing::info!(
                subscriber = id,
                "pub/sub subscriber dropped: its queue is full"
            );
            inner.remove(id);
            if let Some(kick) = inner.kicks.get(&id) {
                kick.notify_one();
            }
        }
        reached
    }

    /// Channels (shard channels when `sharded`) with at least one subscriber, those
    /// matching `pattern` if given.
    pub fn channels(&self, pattern: Option<&[u8]>, sharded: bool) -> Vec<Bytes> {
        let glob = pattern.map(|p| Pattern::new(p, false));
        let inner = self.inner.lock();
        let named = if sharded {
            &inner.shard_channels
        } else {
            &inner.channels
        };
        let mut out: Vec<Bytes> = named
            .keys()
            .filter(|c| glob.as_ref().is_none_or(|g| g.matches(c)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Subscribers of `channel` (of shard channel `channel` when `sharded`; patterns not
    /// counted).
    pub fn numsub(&self, channel: &[u8], sharded: bool) -> usize {
        let inner = self.inner.lock();
        let named = if sharded {
            &inner.shard_channels
        } else {
            &inner.channels
        };
        named.get(channel).map_or(0, HashMap::len)
    }

    /// Patterns with at least one subscriber.
    pub fn numpat(&self) -> usize {
        self.inner.lock().patterns.len()
    }
}

/// One connection's subscriptions. Dropping it unsubscribes everything.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    hub: Arc<Hub>,
    outbox: Outbox,
    rx: mpsc::Receiver<Message>,
    /// Notified when the hub drops this subscriber.
    kicked: Arc<Notify>,
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    shard_channels: BTreeSet<Bytes>,
}

impl Subscriber {
    /// Subscriptions to channels and patterns (what SUBSCRIBE's replies count).
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Subscriptions to shard channels (what SSUBSCRIBE's replies count).
    pub fn shard_count(&self) -> usize {
        self.shard_channels.len()
    }

    pub fn channels(&self) -> Vec<Bytes> {
        self.channels.iter().cloned().collect()
    }

    pub fn shard_channels(&self) -> Vec<Bytes> {
        self.shard_channels.iter().cloned().collect()
    }

    /// Whether it is subscribed to `channel` (by name, not by pattern).
    pub fn is_subscribed(&self, channel: &[u8]) -> bool {
        self.channels.contains(channel)
    }

    pub fn patterns(&self) -> Vec<Bytes> {
        self.patterns.iter().cloned().collect()
    }

    /// Subscribes to `channel` (shard channel `channel` when `sharded`).
    pub fn subscribe(&mut self, channel: Bytes, sharded: bool) {
        let mine = if sharded {
            &mut self.shard_channels
        } else {
            &mut self.channels
        };
        if mine.insert(channel.clone()) {
            let mut inner = self.hub.inner.lock();
            let named = if sharded {
                &mut inner.shard_channels
            } else {
                &mut inner.channels
            };
            named
                .entry(channel)
                .or_default()
                .insert(self.id, self.outbox.clone());
        }
    }

    /// Unsubscribes from `channel` (shard channel `channel` when `sharded`).
    pub fn unsubscribe(&mut self, channel: &Bytes, sharded: bool) {
        let mine = if sharded {
            &mut self.shard_channels
        } else {
            &mut self.channels
        };
        if mine.remove(channel) {
            let mut inner = self.hub.inner.lock();
            let named = if sharded {
                &mut inner.shard_channels
            } else {
                &mut inner.channels
            };
            if let Some(subs) = named.get_mut(channel) {
                subs.remove(&self.id);
                if subs.is_empty() {
                    named.remove(channel);
                }
            }
        }
    }

    pub fn psubscribe(&mut self, pattern: Bytes) {
        if self.patterns.insert(pattern.clone()) {
            let mut inner = self.hub.inner.lock();
            let glob = Pattern::new(&pattern, false);
            inner
                .patterns
                .entry(pattern)
                .or_insert_with(|| (glob, HashMap::new()))
                .1
                .insert(self.id, self.outbox.clone());
        }
    }

    pub fn punsubscribe(&mut self, pattern: &Bytes) {
        if self.patterns.remove(pattern) {
            let mut inner = self.hub.inner.lock();
            if let Some((_, subs)) = inner.patterns.get_mut(pattern) {
                subs.remove(&self.id);
                if subs.is_empty() {
                    inner.patterns.remove(pattern);
                }
            }
        }
    }

    /// The next message, or None once the hub dropped this subscriber (its queue filled):
    /// its connection is then to be closed.
    pub async fn next(&mut self) -> Option<Message> {
        let message = tokio::select! {
            biased;
            _ = self.kicked.notified() => None,
            message = self.rx.recv() => message,
        };
        message.inspect(|m| self.taken(m))
    }

    fn taken(&self, message: &Message) {
        self.outbox
            .queued
            .fetch_sub(message.bytes(), Ordering::Relaxed);
    }

    /// A message already waiting, if any.
    pub fn try_next(&mut self) -> Option<Message> {
        let message = self.rx.try_recv().ok();
        message.inspect(|m| self.taken(m))
    }

    /// Tests only: whether the hub dropped this subscriber (it keeps subscriptions it no
    /// longer has; the connection learns of the drop from [`Subscriber::next`]).
    #[cfg(test)]
    fn dropped(&self) -> bool {
        let inner = self.hub.inner.lock();
        let listed = |subs: &HashMap<u64, Outbox>| subs.contains_key(&self.id);
        self.channels
            .iter()
            .any(|c| !inner.channels.get(c).is_some_and(listed))
            || self
                .patterns
                .iter()
                .any(|p| !inner.patterns.get(p).is_some_and(|(_, s)| listed(s)))
    }
}

impl Message {
    /// What it holds in bytes, as counted against [`SUBSCRIBER_QUEUE_BYTES_MAX`].
    fn bytes(&self) -> usize {
        self.pattern.as_ref().map_or(0, Bytes::len) + self.channel.len() + self.payload.len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut inner = self.hub.inner.lock();
        inner.remove(self.id);
        inner.kicks.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[tokio::test]
    async fn messages_reach_channel_and_pattern_subscribers_only() {
        let hub = Arc::new(Hub::default());
        let mut a = hub.subscriber();
        let mut p = hub.subscriber();
        a.subscribe(b("news"), false);
        p.psubscribe(b("n*"));
        assert_eq!(hub.publish(&b("news"), &b("hi"), false), 2);
        assert_eq!(hub.publish(&b("other"), &b("x"), false), 0);
        assert_eq!(a.next().await.unwrap().payload, b("hi"));
        let m = p.next().await.unwrap();
        assert_eq!((m.pattern, m.channel), (Some(b("n*")), b("news")));
        assert_eq!(hub.channels(None, false), vec![b("news")]);
        assert_eq!((hub.numsub(b"news", false), hub.numpat()), (1, 1));
        drop(a);
        assert_eq!(hub.numsub(b"news", false), 0);
        p.punsubscribe(&b("n*"));
        assert_eq!(hub.numpat(), 0);
    }

    #[tokio::test]
    async fn shard_channels_are_a_namespace_of_their_own_without_patterns() {
        let hub = Arc::new(Hub::default());
        let mut plain = hub.subscriber();
        let mut sharded = hub.subscriber();
        plain.subscribe(b("orders"), false);
        plain.psubscribe(b("*"));
        sharded.subscribe(b("orders"), true);
        assert_eq!((plain.count(), plain.shard_count()), (2, 0));
        assert_eq!((sharded.count(), sharded.shard_count()), (0, 1));
        assert_eq!(
            hub.publish(&b("orders"), &b("s"), true),
            1,
            "patterns do not match"
        );
        let m = sharded.next().await.unwrap();
        assert!(m.sharded && m.pattern.is_none());
        assert!(plain.try_next().is_none());
        assert_eq!(hub.publish(&b("orders"), &b("p"), false), 2);
        assert!(sharded.try_next().is_none());
        assert_eq!(hub.channels(None, true), vec![b("orders")]);
        assert_eq!(
            (hub.numsub(b"orders", true), hub.numsub(b"orders", false)),
            (1, 1)
        );
        sharded.unsubscribe(&b("orders"), true);
        assert_eq!(hub.numsub(b"orders", true), 0);
        assert!(hub.channels(None, true).is_empty());
    }

    /// A subscriber that does not read is dropped once its queue is full; memory stays
    /// bounded and publishers are not held up.
    #[tokio::test]
    async fn a_subscriber_that_does_not_read_is_dropped() {
        let hub = Arc::new(Hub::default());
        let mut slow = hub.subscriber();
        slow.subscribe(b("c"), false);
        for _ in 0..SUBSCRIBER_QUEUE_MAX {
            assert_eq!(hub.publish(&b("c"), &b("m"), false), 1);
        }
        assert!(!slow.dropped());
        assert_eq!(hub.publish(&b("c"), &b("m"), false), 0);
        assert!(slow.dropped());
        assert_eq!(hub.numsub(b"c", false), 0);
        // It is told so at once, whatever is still queued.
        assert_eq!(slow.next().await, None);
        // Big messages: dropped by bytes long before the count.
        let mut big = hub.subscriber();
        big.subscribe(b("c"), false);
        let payload = Bytes::from(vec![0u8; 1024 * 1024]);
        let fit = SUBSCRIBER_QUEUE_BYTES_MAX / (payload.len() + 1);
        for _ in 0..fit {
            assert_eq!(hub.publish(&b("c"), &payload, false), 1);
        }
        // Reading makes room again.
        assert!(big.try_next().is_some());
        assert_eq!(hub.publish(&b("c"), &payload, false), 1);
        assert_eq!(hub.publish(&b("c"), &payload, false), 0);
        assert!(big.dropped());
    }
}
