//! One shard: a range of slots, the Raft group that replicates it, its replica on this node
//! and the proposer that evaluates its writes.
//!
//! Reads go straight to the replica's engine; writes go through the shard's proposer
//! ([`crate::proposer`]), which proposes their outcomes to the group; the replica applies
//! committed entries (`cairn_raft::StateMachine`), each entry one engine batch whose version is
//! the entry's log index, and the expiry index follows every apply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cairn_raft::{Group, Role};
use cairn_storage::Engine;
use tokio::sync::mpsc;

use crate::error::CommandError;
use crate::expiry::ExpiryTracker;
use crate::proposer::Proposal;

/// Byte budget of each shard's value cache.
pub const SHARD_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The Raft group id of shard `id` (group 0 is reserved for the cluster's metadata).
pub fn group_of_shard(id: u32) -> u64 {
    u64::from(id) + 1
}

/// A shard's slot range as a replica knows it, changed by a split while readers look: an
/// inclusive range packed in one word, or none (a replica created for a split child that
/// has not received its data yet).
#[derive(Debug)]
pub struct SlotRange(AtomicU32);

const NO_RANGE: u32 = u32::MAX;

impl SlotRange {
    pub fn new(range: Option<(u16, u16)>) -> SlotRange {
        SlotRange(AtomicU32::new(Self::pack(range)))
    }

    fn pack(range: Option<(u16, u16)>) -> u32 {
        range.map_or(NO_RANGE, |(first, last)| {
            (u32::from(first) << 16) | u32::from(last)
        })
    }

    pub fn get(&self) -> Option<(u16, u16)> {
        match self.0.load(Ordering::Acquire) {
            NO_RANGE => None,
            packed => Some(((packed >> 16) as u16, packed as u16)),
        }
    }

    pub fn set(&self, range: Option<(u16, u16)>) {
        self.0.store(Self::pack(range), Ordering::Release);
    }

    /// Whether `slot` is in the range.
    pub fn owns(&self, slot: u16) -> bool {
        self.get()
            .is_some_and(|(first, last)| (first..=last).contains(&slot))
    }
}

/// A shard replica on this node.
#[derive(Debug)]
pub struct Shard {
    pub id: u32,
    /// The slots the shard owns (see [`crate::shards::ShardRecord`]); a split shrinks it.
    pub range: Arc<SlotRange>,
    /// The slots a split this node's proposer proposed is giving away, until it is applied
    /// here (or its term ends): neither read nor written here meanwhile, since the new shard
    /// may already take writes on nodes that applied it first.
    pub leaving: Arc<SlotRange>,
    /// The shard's Raft group and replica on this node.
    pub group: Group,
    /// Keys with an expiry (kept by the state machine, read by the active-expiry task).
    pub expiry: Arc<ExpiryTracker>,
    /// The shard's change feed on this replica (kept by the state machine, read by watches).
    pub feed: Arc<crate::feed::Feed>,
    pub(crate) proposals: mpsc::Sender<Proposal>,
}

impl Shard {
    /// The shard's slot range (`None`: not known yet).
    pub fn slots(&self) -> Option<(u16, u16)> {
        self.range.get()
    }

    /// Whether every key of `keys` is in the shard's slots: checked after a read of the
    /// replica, so that a read racing a split never answers for a key the shard gave away.
    pub fn owns_keys<'k>(&self, keys: impl IntoIterator<Item = &'k bytes::Bytes>) -> bool {
        keys.into_iter()
            .all(|key| self.owns(crate::slot::key_slot(key)))
    }

    /// Whether `slot` is the shard's, and not being given away by a split.
    pub fn owns(&self, slot: u16) -> bool {
        self.range.owns(slot) && !self.leaving.owns(slot)
    }

    /// The replica's engine. Hold it for one operation only: a snapshot install replaces it.
    pub fn engine(&self) -> Arc<Engine> {
        self.group.sm.engine()
    }

    /// Index of the last log entry applied to the replica (0 when none).
    pub fn last_applied(&self) -> u64 {
        self.group.applied_index()
    }

    /// Whether this node leads the shard's group.
    pub fn is_leader(&self) -> bool {
        self.group.status().role == Role::Leader
    }

    /// The node id of the group's current leader, if known.
    pub fn leader(&self) -> Option<u64> {
        self.group.status().leader
    }

    /// The shard's Raft group as this node sees it.
    pub fn raft_stats(&self) -> crate::reply::RaftStats {
        crate::reply::RaftStats::of(&self.group)
    }

    /// Hands a proposal to the shard's proposer (waiting while its queue is full).
    pub async fn propose(&self, proposal: Proposal) -> Result<(), CommandError> {
        self.proposals
            .send(proposal)
            .await
            .map_err(|_| CommandError::ShuttingDown)
    }
}
