//! `cairn-server`: the Cairn node — shards, the write path, the executor every front end
//! calls, the Redis-protocol front end, configuration and metrics.
//!
//! Code map:
//! - [`command`], [`reply`], [`error`]: the one internal request/response vocabulary;
//! - [`node`]: the executor (`Node::execute`), reads, background work;
//! - [`writer`], [`eval`], [`effects`], [`log`]: propose → commit → apply with group commit;
//! - [`shards`], [`shard`], [`slot`], [`expiry`], [`scan`]: keyspace layout and routing;
//! - [`resp`]: the Redis-protocol front end; [`metrics`]; [`config`]; [`server`].

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
pub mod numeric;
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
pub use node::{Node, NodeOptions};
pub use reply::{
    ClusterStatus, Entry, KeyTtl, KeyType, NodeInfo, NodeState, Reply, SetOutcome, ShardInfo,
    ShardStats,
};
