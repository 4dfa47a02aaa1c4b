//! The openraft type configuration and the data Cairn's shard groups replicate.
//!
//! A log entry carries outcomes, never commands (the architecture invariant): the leader has
//! already evaluated the client's command against the shard's state into puts (with absolute
//! expiry deadlines) and deletes, so every replica applies the same bytes and none reads the
//! clock. A key's version is the log index of the entry that last wrote it.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One write of a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets `key` to `value`, expiring at `expires_at_ms` (ms since the Unix epoch) if given.
    Put {
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    /// Removes `key`.
    Delete { key: Bytes },
    /// Removes `key` because its deadline passed (active expiry): applied as a delete, told
    /// apart so that the change feed can say why the key went.
    Expire { key: Bytes },
    /// Removes every key of the shard (FLUSHDB on one shard); later ops of the same request
    /// still apply. System records are not keys: it leaves them.
    Clear,
    /// Sets a record of the engine's system table (the server's transaction locks and
    /// records): invisible to every read of the keyspace, written atomically with the entry.
    SystemPut { key: Bytes, value: Bytes },
    /// Removes a record of the engine's system table.
    SystemDelete { key: Bytes },
    /// Splits the shard: the keys of slots `first_slot..=last_slot` (the top of its range) go
    /// to the new shard `child`, whose replica the state machine's [`crate::state_machine::Splitter`]
    /// creates on every replica as it applies this entry, durably and before this replica's
    /// own copies of those keys are deleted. Always alone in its request.
    Split {
        child: u32,
        first_slot: u16,
        last_slot: u16,
    },
}

/// What a shard group replicates: the outcome of one or more evaluated commands, applied
/// atomically at one log index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub ops: Vec<WriteOp>,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ops", self.ops.len())
    }
}

/// What applying a [`Request`] answers: the log index it was applied at (the version of every
/// key it wrote).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub index: u64,
}

/// How to reach a node (stored in the group membership).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// gRPC address: clients and peers (Raft traffic included).
    pub grpc: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grpc)
    }
}

openraft::declare_raft_types!(
    /// Cairn's Raft type configuration: `u64` node ids and terms, the default leader id (term
    /// and node), tokio.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeAddr,
);

/// A log entry of a Cairn group.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A log id (leader and index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A membership with the log id that stored it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers: its last log id and membership.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A shard snapshot with its meta.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, crate::snapshot::ShardSnapshot>;
