//! Pub/sub across the cluster: a message published on this node goes to this node's
//! subscribers at once and, through one ordered queue per other node, to theirs. Delivery is
//! fire and forget, as pub/sub is: a node that is down or cut off misses what is published
//! meanwhile, and a queue that fills (a node that cannot keep up) drops messages, bounded at
//! [`FANOUT_QUEUE_MAX`] messages and [`FANOUT_QUEUE_BYTES_MAX`] bytes each. Messages
//! published on one node reach every other node in the order they were published.
//!
//! Shard channels (SPUBLISH) travel the same way. In Redis Cluster a shard channel's
//! messages stay within the nodes of its slot's shard; every Cairn node holds a replica of
//! every shard, so that is every node, and a client subscribed through any node gets them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_raft::Peers;
use tokio::sync::mpsc;

use super::Node;
use crate::command::Command;

/// Messages waiting to be sent to one other node; past this they are dropped.
pub const FANOUT_QUEUE_MAX: usize = 16 * 1024;
/// Bytes (channels and payloads) waiting to be sent to one other node; past this messages
/// are dropped.
pub const FANOUT_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Messages sent to another node in one request, at most.
pub const FANOUT_BATCH_MAX: usize = 256;
/// Bytes sent to another node in one request, about (one message may be larger).
pub const FANOUT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Where messages for one other node wait, and the task that sends them in order.
#[derive(Debug)]
pub(crate) struct Fanout {
    addr: String,
    queue: mpsc::Sender<Outgoing>,
    /// Bytes waiting in `queue`.
    queued: Arc<AtomicUsize>,
}

/// A message on its way to another node: channel, payload, and whether it was published on
/// a shard channel.
type Outgoing = (Bytes, Bytes, bool);

fn bytes_of(message: &Outgoing) -> usize {
    message.0.len() + message.1.len()
}

impl Fanout {
    fn spawn(peers: Arc<Peers>, addr: String) -> Fanout {
        let (queue, mut waiting) = mpsc::channel::<Outgoing>(FANOUT_QUEUE_MAX);
        let queued = Arc::new(AtomicUsize::new(0));
        let (to, counted) = (addr.clone(), queued.clone());
        tokio::spawn(async move {
            // A message taken that belongs to the next batch (the other kind).
            let mut held: Option<Outgoing> = None;
            loop {
                let first = match held.take() {
                    Some(first) => first,
                    None => match waiting.recv().await {
                        Some(first) => first,
                        None => return,
                    },
                };
                let sharded = first.2;
                let mut bytes = bytes_of(&first);
                let mut batch = vec![(first.0, first.1)];
                while batch.len() < FANOUT_BATCH_MAX && bytes < FANOUT_BATCH_BYTES_MAX {
                    let Ok(next) = waiting.try_recv() else {
                        break;
                    };
                    if next.2 != sharded {
                        held = Some(next);
                        break;
                    }
                    bytes += bytes_of(&next);
                    batch.push((next.0, next.1));
                }
                // (A held message stays counted until it is sent.)
                counted.fetch_sub(bytes, Ordering::Relaxed);
                let cmd = if sharded {
                    Command::ShardPublish { messages: batch }
                } else {
                    Command::Publish { messages: batch }
                };
                if let Err(e) = crate::peer::forward(&peers, &to, &cmd, 1, false, None, None).await
                {
                    tracing::debug!(peer = %to, error = %e, "pub/sub messages not delivered");
                }
            }
        });
        Fanout {
            addr,
            queue,
            queued,
        }
    }

    /// Queues a message; false when the queue is full (by count or bytes).
    fn offer(&self, message: Outgoing) -> bool {
        let bytes = bytes_of(&message);
        if self.queued.load(Ordering::Relaxed) + bytes > FANOUT_QUEUE_BYTES_MAX {
            return false;
        }
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        if self.queue.try_send(message).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl Node {
    /// PUBLISH (SPUBLISH when `sharded`): hands the message to this node's subscribers,
    /// returns how many got it (as Redis Cluster's PUBLISH does), and queues it for every
    /// other node of the cluster. Local delivery and queuing happen under one lock, so that
    /// every node sees this node's messages in one order.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes, sharded: bool) -> usize {
        let others: Vec<_> = self
            .meta
            .nodes()
            .into_iter()
            .filter(|r| r.raft_id != self.identity.raft_id)
            .collect();
        let mut fanouts = self.fanouts.lock();
        let reached = self.pubsub.publish(channel, payload, sharded);
        for record in others {
            let fanout = fanouts
                .entry(record.raft_id)
                .and_modify(|f| {
                    if f.addr != record.grpc_addr {
                        *f = Fanout::spawn(self.peers.clone(), record.grpc_addr.clone());
                    }
                })
                .or_insert_with(|| Fanout::spawn(self.peers.clone(), record.grpc_addr.clone()));
            if !fanout.offer((channel.clone(), payload.clone(), sharded)) {
                tracing::debug!(peer = record.raft_id, "pub/sub queue full: message dropped");
            }
        }
        reached
    }

    /// Messages published on another node (on shard channels when `sharded`): to this
    /// node's subscribers only.
    pub(super) fn deliver(&self, messages: &[(Bytes, Bytes)], sharded: bool) -> usize {
        messages
            .iter()
            .map(|(channel, payload)| self.pubsub.publish(channel, payload, sharded))
            .sum()
    }
}
