//! `cairn-server`: the Cairn node — shards, the write path, the executor every front end
//! calls, the Redis-protocol front end, configuration and metrics.
//!
//! Code map:
//! - [`command`], [`reply`], [`error`]: the one internal request/response vocabulary;
//! - [`node`]: the executor (`Node::execute`), reads, background work;
//! - [`proposer`], [`eval`], [`health`]: per shard, evaluate → propose to the shard's Raft group
//!   → answer once applied, with entries pipelined;
//! - [`shards`], [`shard`], [`slot`], [`expiry`], [`scan`]: keyspace layout and routing;
//! - [`long_double`]: INCRBYFLOAT's arithmetic (integers: `cairn_resp::parse_i64`);
//! - [`resp`], [`http`], [`grpc`]: the front ends (thin codecs over `Node::execute`);
//! - [`txn`]: cross-shard transactions (locks, records, the steps a coordinator sends);
//! - [`metrics`]; [`config`]; [`server`] (the composition root: `server::run`).
//!
//! Architecture invariants: only a shard's state machine writes its engine, applying committed
//! log entries; nothing is acknowledged before the entry holding it is committed (durable in
//! the write-ahead log of a majority, with `--sync always`) and applied; front ends never touch
//! an engine, they call the node.

pub mod balance;
pub mod balancer;
pub mod bits;
pub mod command;
pub mod config;
pub mod error;
pub mod eval;
pub mod expiry;
pub mod feed;
pub mod grpc;
pub mod health;
pub mod http;
pub mod lcs;
pub mod long_double;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod peer;
pub mod placement;
pub mod proposer;
pub mod pubsub;
pub mod replicas;
pub mod reply;
pub mod resp;
pub mod scan;
pub mod server;
pub mod shard;
pub mod shards;
pub mod slot;
pub mod split;
pub mod tracking;
pub mod txn;
pub mod watch;

pub use command::{BatchOp, CmpOp, Command, Compare, Condition, ExpireCondition, Expiry, KeyRange};
pub use error::CommandError;
pub use node::{Node, NodeOptions, StorageTuning};
pub use reply::{
    ClusterStatus, Entry, KeyTtl, KeyType, NodeInfo, NodeState, Reply, SetOutcome, ShardInfo,
    ShardStats,
};
