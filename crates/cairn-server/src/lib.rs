//! `cairn-server`: the Cairn node — shards, the write path, the executor every front end
//! calls, the Redis-protocol front end, configuration and metrics.
//!
//! Code map:
//! - [`command`], [`reply`], [`error`]: the one internal request/response vocabulary;
//! - [`node`]: the executor (`Node::execute`), reads, background work;
//! - [`writer`], [`eval`], [`effects`], [`log`]: propose → commit → apply with group commit;
//! - [`shards`], [`shard`], [`slot`], [`expiry`], [`scan`]: keyspace layout and routing;
//! - [`long_double`]: INCRBYFLOAT's arithmetic (integers: `cairn_resp::parse_i64`);
//! - [`resp`], [`http`], [`grpc`]: the front ends (thin codecs over `Node::execute`);
//! - [`metrics`]; [`config`]; [`server`] (the composition root: `server::run`).
//!
//! Architecture invariants: only the writer thread writes to the shard engines; nothing is
//! acknowledged before the write-ahead log holding it is synced (with `--sync always`); front
//! ends never touch an engine, they call the node.

pub mod command;
pub mod config;
pub mod effects;
pub mod error;
pub mod eval;
pub mod expiry;
pub mod grpc;
pub mod http;
pub mod log;
pub mod long_double;
pub mod metrics;
pub mod node;
pub mod reply;
pub mod resp;
pub mod scan;
pub mod server;
pub mod shard;
pub mod shards;
pub mod slot;
pub mod writer;

pub use command::{BatchOp, Command, Condition, ExpireCondition, Expiry, KeyRange};
pub use error::CommandError;
pub use node::{Node, NodeOptions, StorageTuning};
pub use reply::{
    ClusterStatus, Entry, KeyTtl, KeyType, NodeInfo, NodeState, Reply, SetOutcome, ShardInfo,
    ShardStats,
};
