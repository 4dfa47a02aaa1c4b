//! Where a request goes. Today every request goes to the one endpoint the client was built
//! with, and that node forwards it to the shard leader; this module is the seam where the
//! replication work adds a routing-table cache and leader redirects without touching the
//! request methods in `lib.rs`.
//!
//! The seam has two halves:
//! - [`Routing::channel_for`] picks the channel for a key (the cached shard leader once a
//!   routing table exists; `None` key = any node, for cluster-wide calls such as status/scan);
//! - [`Routing::observe_failure`] is told about every failed attempt so it can invalidate a
//!   cached route (e.g. on a "not leader" redirect carrying the new leader's address).

use tonic::Status;
use tonic::transport::Channel;

/// Chooses the node a request is sent to.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    /// Channel to the seed endpoint; the fallback for every key.
    seed: Channel,
}

impl Routing {
    pub(crate) fn new(seed: Channel) -> Self {
        Routing { seed }
    }

    /// The channel for a request on `key` (`None`: not tied to one key).
    ///
    /// Invariant: always returns a usable channel; a routing cache may only narrow the choice to
    /// a better node, never fail the request on its own.
    pub(crate) fn channel_for(&self, _key: Option<&[u8]>) -> Channel {
        self.seed.clone()
    }

    /// Learn from a failed attempt before it is retried. With a single seed endpoint there is
    /// nothing to invalidate.
    pub(crate) fn observe_failure(&self, _key: Option<&[u8]>, _status: &Status) {}
}
