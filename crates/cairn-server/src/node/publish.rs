//! Pub/sub across the cluster: a message published on this node goes to this node's
//! subscribers at once and, through one ordered queue per other node, to theirs. Delivery is
//! fire and forget, as pub/sub is: a node that is down or cut off misses what is published
//! meanwhile, and a queue that fills (a node that cannot keep up) drops messages, bounded at
//! [`FANOUT_QUEUE_MAX`] each. Messages published on one node reach every other node in the
//! order they were published.

use std::sync::Arc;

use bytes::Bytes;
use cairn_raft::Peers;
use tokio::sync::mpsc;

use super::Node;
use crate::command::Command;

/// Messages waiting to be sent to one other node; past this they are dropped.
pub const FANOUT_QUEUE_MAX: usize = 16 * 1024;
/// Messages sent to another node in one request.
pub const FANOUT_BATCH_MAX: usize = 256;

/// Where messages for one other node wait, and the task that sends them in order.
#[derive(Debug)]
pub(crate) struct Fanout {
    addr: String,
    queue: mpsc::Sender<(Bytes, Bytes)>,
}

impl Fanout {
    fn spawn(peers: Arc<Peers>, addr: String) -> Fanout {
        let (queue, mut waiting) = mpsc::channel::<(Bytes, Bytes)>(FANOUT_QUEUE_MAX);
        let to = addr.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FANOUT_BATCH_MAX);
            while waiting.recv_many(&mut batch, FANOUT_BATCH_MAX).await > 0 {
                let cmd = Command::Publish {
                    messages: std::mem::take(&mut batch),
                };
                if let Err(e) = crate::peer::forward(&peers, &to, &cmd, 1, false, None).await {
                    tracing::debug!(peer = %to, error = %e, "pub/sub messages not delivered");
                }
            }
        });
        Fanout { addr, queue }
    }
}

impl Node {
    /// PUBLISH: hands the message to this node's subscribers, returns how many got it (as
    /// Redis Cluster's PUBLISH does), and queues it for every other node of the cluster.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes) -> usize {
        let reached = self.pubsub.publish(channel, payload);
        let others: Vec<_> = self
            .meta
            .nodes()
            .into_iter()
            .filter(|r| r.raft_id != self.identity.raft_id)
            .collect();
        if others.is_empty() {
            return reached;
        }
        let mut fanouts = self.fanouts.lock();
        for record in others {
            let fanout = fanouts
                .entry(record.raft_id)
                .and_modify(|f| {
                    if f.addr != record.grpc_addr {
                        *f = Fanout::spawn(self.peers.clone(), record.grpc_addr.clone());
                    }
                })
                .or_insert_with(|| Fanout::spawn(self.peers.clone(), record.grpc_addr.clone()));
            if fanout
                .queue
                .try_send((channel.clone(), payload.clone()))
                .is_err()
            {
                tracing::debug!(peer = record.raft_id, "pub/sub queue full: message dropped");
            }
        }
        reached
    }

    /// Messages published on another node: to this node's subscribers only.
    pub(super) fn deliver(&self, messages: &[(Bytes, Bytes)]) -> usize {
        messages
            .iter()
            .map(|(channel, payload)| self.pubsub.publish(channel, payload))
            .sum()
    }
}
