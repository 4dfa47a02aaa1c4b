//! `cairn-raft`: Cairn's Raft glue, the one room where openraft's API is spoken.
//!
//! - [`types`]: the openraft type configuration and what shard groups replicate (outcomes:
//!   puts with absolute deadlines, deletes; never commands);
//! - [`codec`]: how entries, votes and log ids are laid out in the WAL and the engine marker;
//! - [`log_store`]: one group's Raft log in the node's shared WAL (`cairn-wal`): many groups,
//!   one fdatasync;
//! - [`state_machine`]: a shard replica on a `cairn-storage` engine, its applied log id and
//!   membership written atomically with each batch;
//! - [`replica`]: the replica's directory, where a received snapshot replaces the engine
//!   atomically;
//! - [`snapshot`]: snapshots as engine checkpoints, streamed in checked chunks;
//! - [`group`]: one group as the rest of Cairn sees it (status, leadership, proposals,
//!   snapshots), so openraft's API is spoken in this crate only;
//! - [`network`] and [`service`]: the peer network over gRPC (`cairn.peer.v1.Raft`), every
//!   group multiplexed over one connection per node pair;
//! - [`rate`]: the bound on the bytes per second a node sends in snapshots;
//! - [`transport`]: the seam under it, what connections run over (TCP, or in-memory pipes
//!   with links that can be cut).
//!
//! openraft is pinned exactly (an alpha of the 0.10 line); alpha API changes stay inside this
//! crate. Architecture invariant: depends on the WAL, the engine and the wire contract
//! (`cairn-proto`), never on the server.

pub mod codec;
pub mod config;
pub mod group;
pub mod log_store;
pub mod network;
pub mod rate;
pub mod replica;
pub mod service;
pub mod snapshot;
pub mod split;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use group::{
    Group, GroupError, GroupHost, GroupRaft, GroupStatus, Groups, Lead, LeaderTerm,
    MembershipFloor, ProposeError, Role, lease_read_ready,
};
pub use log_store::LogStore;
pub use network::{GroupNetwork, Peers};
pub use service::RaftService;
pub use snapshot::{Chunk, Incoming, Manifest, ShardSnapshot};
pub use state_machine::{ApplyObserver, SplitDone, SplitFuture, Splitter, StateMachine};
pub use types::{NodeAddr, Request, Response, TypeConfig, WriteOp};
