//! Protocol-neutral results of [`crate::command::Command`]s.
//!
//! Front ends render these in their own wire format; the executor never knows which front end
//! asked.

use bytes::Bytes;

/// One live key with its metadata.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    /// The value; empty for `keys_only` scans.
    pub value: Bytes,
    /// Log index of the key's last write (for compare-and-set).
    pub version: u64,
    /// Absolute expiry in milliseconds since the Unix epoch, if any.
    pub expires_at_ms: Option<u64>,
}

/// Result of a `Set`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SetOutcome {
    /// The new version when the write happened; `None` when the condition failed.
    pub version: Option<u64>,
    /// The previous live entry: filled when `return_old` was asked or the condition failed.
    pub old: Option<Entry>,
}

/// What the node knows about a key's expiry.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key does not exist (Redis `TTL` → -2).
    Missing,
    /// The key exists without expiry (Redis `TTL` → -1).
    Persistent,
    /// The key expires at this absolute time, in milliseconds since the Unix epoch.
    ExpiresAtMs(u64),
}

/// The type of a key (only strings exist).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    None,
    String,
}

impl KeyType {
    /// The name Redis's `TYPE` replies with.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::None => "none",
            KeyType::String => "string",
        }
    }
}

/// State of a node in the cluster map.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
    /// Asked to leave: its leaderships and votes are moving to other nodes.
    Leaving,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Leaving => "leaving",
        }
    }
}

/// One node of the cluster map.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// 40 lowercase hex characters, generated once per data directory (Redis-style node id).
    pub id: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub resp_addr: String,
    pub state: NodeState,
}

/// One shard of the cluster map.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: u32,
    /// Inclusive slot ranges `(first, last)` owned by the shard.
    pub slots: Vec<(u16, u16)>,
    /// Ids of the nodes holding a replica.
    pub replicas: Vec<String>,
    /// Those of `replicas` that do not vote (learners).
    pub learners: Vec<String>,
    /// Id of the replica that accepts writes.
    pub leader: Option<String>,
    /// The shard's Raft group as this node sees it.
    pub raft: RaftStats,
}

/// The cluster map.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Id of the node that answered.
    pub node_id: String,
    pub nodes: Vec<NodeInfo>,
    pub shards: Vec<ShardInfo>,
    /// The metadata group (the map's own Raft group; `id` 0, no slots), when this node holds
    /// a replica of it.
    pub metadata: Option<Box<ShardInfo>>,
    /// Replicas this node is copying to other nodes (snapshots being sent).
    pub moves: Vec<MoveInfo>,
}

/// A replica being copied: a snapshot of one group sent by the answering node.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MoveInfo {
    /// The shard; `None` for the metadata group.
    pub shard: Option<u32>,
    /// Id of the node sending it (the answering node).
    pub from: String,
    /// Id of the node receiving it.
    pub to: String,
    pub sent_bytes: u64,
    pub total_bytes: u64,
    pub elapsed_ms: u64,
}

/// Storage statistics of one shard.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub live_keys: u64,
    pub segments: u64,
    pub disk_bytes: u64,
    pub dead_bytes: u64,
    pub writes: u64,
    pub syncs: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub merges: u64,
    /// Log index of the last write applied to the shard.
    pub last_applied: u64,
    /// Keys with an expiry (tracked for active expiry).
    pub expiring_keys: u64,
    /// The shard's Raft group as this node sees it.
    pub raft: RaftStats,
}

/// One shard's Raft group on this node, for metrics and status.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStats {
    pub term: u64,
    /// Whether this node leads the group.
    pub leader: bool,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    pub snapshot: u64,
    pub purged: u64,
    /// Leader changes this node saw since it started.
    pub leader_changes: u64,
}

impl RaftStats {
    /// Group `group` as this node's replica sees it.
    pub fn of(group: &cairn_raft::Group) -> RaftStats {
        let g = group.status();
        RaftStats {
            term: g.term,
            leader: g.leader == Some(g.node),
            last_log_index: g.last_log_index.unwrap_or(0),
            committed: g.committed.unwrap_or(0),
            applied: g.applied.unwrap_or(0),
            snapshot: g.snapshot.unwrap_or(0),
            purged: g.purged.unwrap_or(0),
            leader_changes: group.leader_changes(),
        }
    }
}

/// The result of executing a command. Each `Command` variant documents which of these it
/// produces.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub enum Reply {
    Ok,
    Lcs(crate::lcs::LcsAnswer),
    Int(i64),
    Bool(bool),
    Value(Option<Bytes>),
    Values(Vec<Option<Bytes>>),
    Entry(Option<Entry>),
    Entries {
        entries: Vec<Entry>,
        /// Whether more keys exist in the range past the last returned one.
        more: bool,
    },
    Keys(Vec<Bytes>),
    ScanPage {
        cursor: u64,
        keys: Vec<Bytes>,
    },
    Set(SetOutcome),
    Ttl(KeyTtl),
    Type(KeyType),
    Batch {
        version: u64,
    },
    Cluster(ClusterStatus),
    Stats(Vec<ShardStats>),
    /// `Command::Exec`'s answer: whether its compares held, and the answer of each command of
    /// the branch that ran, in order.
    Exec {
        succeeded: bool,
        replies: Vec<Result<Reply, crate::error::CommandError>>,
    },
    /// Internal: a transaction step's answer.
    Txn(crate::txn::TxnReply),
    /// Internal: `Command::ShardRead`'s answer.
    Guarded {
        entries: Vec<Option<Entry>>,
        /// The shard's count of deleted keys at that instant.
        deletes: u64,
    },
}
