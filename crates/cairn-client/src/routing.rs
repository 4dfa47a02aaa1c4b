//! Where a request goes: the route cache.
//!
//! Any node serves any key (it forwards to the shard's leader), so routing is an optimisation,
//! never a condition of correctness: a request sent to the wrong node costs one extra hop inside
//! the cluster, not a wrong answer. The cache saves that hop. It holds the shard map from
//! `Cluster.Status` (slot ranges → the leader's gRPC address), and a request on a key goes
//! straight to the leader of the key's slot ([`cairn_proto::slot::key_slot`], the node's own
//! function).
//!
//! How the cache stays fresh, with bounded work:
//! - it is fetched in the background on first use and again when it is older than
//!   [`ROUTES_REFRESH_INTERVAL`], by at most one task at a time per client, from the seed
//!   endpoint or else any node the last map named;
//! - a request to a routed node that fails with UNAVAILABLE (the node is down or unreachable)
//!   quarantines that address for [`QUARANTINE`] (its shards fall back to the seed, which
//!   forwards) and asks for a refresh at once.
//!
//! Requests not tied to one key (status, scan, batches) and every request while no map is
//! known go to the seed endpoint, as a client without a cache would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cairn_proto::slot::key_slot;
use cairn_proto::v1 as proto;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How old a route map may get before a request triggers a background refresh. Leaders move
/// rarely (failover, balancing); until a refresh, a moved leader costs one forwarding hop.
pub const ROUTES_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How long an address that failed with UNAVAILABLE is not routed to.
pub const QUARANTINE: Duration = Duration::from_secs(3);
/// Most node addresses a client keeps a connection to (a bound on what a map can make it open).
pub const NODES_MAX: usize = 1024;

/// Chooses the node a request is sent to. Cheap to clone; clones share the cache.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Channel to the endpoint the client was built with: the fallback for every request.
    seed: Channel,
    /// Whether the cache is used at all (`ClientConfig::route_cache`).
    enabled: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// The newest map, if one was fetched.
    routes: RwLock<Option<Arc<Routes>>>,
    /// A refresh task is running (at most one per client).
    refreshing: AtomicBool,
    /// One channel per node address, kept across refreshes so connections are reused.
    channels: Mutex<HashMap<String, Channel>>,
    /// Addresses that failed with UNAVAILABLE, and when.
    quarantined: Mutex<HashMap<String, Instant>>,
}

/// One fetched shard map.
#[derive(Debug)]
struct Routes {
    fetched: Instant,
    /// Slot ranges `(first, last, leader address)`, sorted by `first`, not overlapping.
    ranges: Vec<(u16, u16, Option<Arc<str>>)>,
    /// Every node address the map named (for refreshes when the seed is down).
    nodes: Vec<Arc<str>>,
}

impl Routes {
    fn leader_of(&self, slot: u16) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, leader) = self.ranges.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(leader.as_ref()?)
    }
}

impl Routing {
    pub(crate) fn new(
        seed: Channel,
        enabled: bool,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        Routing {
            inner: Arc::new(Inner {
                seed,
                enabled,
                connect_timeout,
                request_timeout,
                routes: RwLock::new(None),
                refreshing: AtomicBool::new(false),
                channels: Mutex::new(HashMap::new()),
                quarantined: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The channel for a request on `key` (`None`: not tied to one key), and the address it
    /// was routed to (`None`: the seed).
    ///
    /// Invariant: always returns a usable channel; the cache may only narrow the choice to a
    /// better node, never fail a request on its own.
    pub(crate) fn channel_for(&self, key: Option<&[u8]>) -> (Channel, Option<Arc<str>>) {
        let inner = &self.inner;
        if !inner.enabled {
            return (inner.seed.clone(), None);
        }
        let routes = inner.routes.read().expect("routes lock").clone();
        if routes
            .as_ref()
            .is_none_or(|r| r.fetched.elapsed() >= ROUTES_REFRESH_INTERVAL)
        {
            self.refresh_in_background();
        }
        let (Some(key), Some(routes)) = (key, routes) else {
            return (inner.seed.clone(), None);
        };
        let Some(addr) = routes.leader_of(key_slot(key)) else {
            return (inner.seed.clone(), None);
        };
        if self.is_quarantined(addr) {
            return (inner.seed.clone(), None);
        }
        match self.channel_to(addr) {
            Some(channel) => (channel, Some(addr.clone())),
            None => (inner.seed.clone(), None),
        }
    }

    /// A channel to every node worth trying for a request any node can serve: the seed
    /// first, then each node of the map not quarantined (for watches, which move to another
    /// node when theirs goes away).
    pub(crate) fn every_node(&self) -> Vec<Channel> {
        let mut out = vec![self.inner.seed.clone()];
        let routes = self.inner.routes.read().expect("routes lock").clone();
        if let Some(routes) = routes {
            for addr in &routes.nodes {
                if !self.is_quarantined(addr) {
                    out.extend(self.channel_to(addr));
                }
            }
        }
        if self.inner.enabled {
            self.refresh_in_background();
        }
        out
    }

    /// Learn from a failed attempt before it is retried: an address that is down or
    /// unreachable is not routed to for a while, and the map is fetched again.
    pub(crate) fn observe_failure(&self, routed_to: Option<&Arc<str>>, status: &Status) {
        if status.code() != Code::Unavailable {
            return;
        }
        if let Some(addr) = routed_to {
            self.inner
                .quarantined
                .lock()
                .expect("quarantine lock")
                .insert(addr.to_string(), Instant::now());
        }
        if self.inner.enabled {
            self.refresh_in_background();
        }
    }

    fn is_quarantined(&self, addr: &str) -> bool {
        let mut q = self.inner.quarantined.lock().expect("quarantine lock");
        match q.get(addr) {
            Some(since) if since.elapsed() < QUARANTINE => true,
            Some(_) => {
                q.remove(addr);
                false
            }
            None => false,
        }
    }

    /// The (lazily connecting) channel to a node's gRPC address; `None` when the address does
    /// not parse or the client already holds [`NODES_MAX`] connections.
    fn channel_to(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.inner.channels.lock().expect("channels lock");
        if let Some(channel) = channels.get(addr) {
            return Some(channel.clone());
        }
        if channels.len() >= NODES_MAX {
            return None;
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(uri)
            .ok()?
            .connect_timeout(self.inner.connect_timeout)
            .timeout(self.inner.request_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Some(channel)
    }

    /// Start a refresh unless one is running or there is no tokio runtime to run it on.
    fn refresh_in_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            if let Err(e) = this.refresh().await {
                tracing::debug!("route refresh failed: {}", e.message());
            }
            this.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetch the map from the seed, or else from any node the previous map named; keep the
    /// old map when nobody answers (the last failure is returned).
    pub(crate) async fn refresh(&self) -> Result<(), Status> {
        let known = self
            .inner
            .routes
            .read()
            .expect("routes lock")
            .as_ref()
            .map(|r| r.nodes.clone())
            .unwrap_or_default();
        let mut candidates = vec![self.inner.seed.clone()];
        for addr in &known {
            candidates.extend(self.channel_to(addr));
        }
        let mut failure = Status::unavailable("no node to ask for routes");
        for channel in candidates {
            let status = proto::cluster_client::ClusterClient::new(channel)
                .max_decoding_message_size(crate::MESSAGE_BYTES_MAX)
                .status(proto::StatusRequest {})
                .await;
            match status {
                Ok(response) => {
                    let routes = routes_of(response.into_inner());
                    *self.inner.routes.write().expect("routes lock") = Some(Arc::new(routes));
                    return Ok(());
                }
                Err(e) => failure = e,
            }
        }
        Err(failure)
    }
}

/// The route map in a `Cluster.Status` answer: each shard's slot ranges and its leader's gRPC
/// address (none when the leader is unknown or marked down).
fn routes_of(status: proto::StatusResponse) -> Routes {
    let addr_of: HashMap<&str, Arc<str>> = status
        .nodes
        .iter()
        .filter(|n| n.state() != proto::NodeState::Down && !n.grpc_addr.is_empty())
        .map(|n| (n.id.as_str(), Arc::from(n.grpc_addr.as_str())))
        .collect();
    let mut ranges: Vec<(u16, u16, Option<Arc<str>>)> = status
        .shards
        .iter()
        .flat_map(|shard| {
            let leader = shard
                .leader
                .as_deref()
                .and_then(|id| addr_of.get(id).cloned());
            shard.slots.iter().filter_map(move |r| {
                let first = u16::try_from(r.start).ok()?;
                let last = u16::try_from(r.end).ok()?;
                (first <= last).then(|| (first, last, leader.clone()))
            })
        })
        .collect();
    ranges.sort_by_key(|(first, _, _)| *first);
    // A map with overlapping ranges is not trusted for those slots: drop the later range.
    let mut kept: Vec<(u16, u16, Option<Arc<str>>)> = Vec::with_capacity(ranges.len());
    for range in ranges {
        if kept.last().is_none_or(|(_, last, _)| *last < range.0) {
            kept.push(range);
        }
    }
    Routes {
        fetched: Instant::now(),
        ranges: kept,
        nodes: addr_of.into_values().take(NODES_MAX).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, addr: &str, state: proto::NodeState) -> proto::NodeInfo {
        proto::NodeInfo {
            id: id.into(),
            grpc_addr: addr.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    fn shard(id: u32, start: u32, end: u32, leader: Option<&str>) -> proto::ShardInfo {
        proto::ShardInfo {
            id,
            slots: vec![proto::SlotRange { start, end }],
            leader: leader.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn slots_map_to_their_shard_leaders_address() {
        let routes = routes_of(proto::StatusResponse {
            node_id: "1".into(),
            nodes: vec![
                node("1", "127.0.0.1:7070", proto::NodeState::Up),
                node("2", "127.0.0.1:7071", proto::NodeState::Up),
                node("3", "127.0.0.1:7072", proto::NodeState::Down),
            ],
            shards: vec![
                shard(1, 8192, 16383, Some("2")),
                shard(0, 0, 8191, Some("1")),
                shard(2, 100, 200, Some("1")), // overlaps shard 0: ignored
            ],
            metadata: None,
            moves: Vec::new(),
        });
        assert_eq!(routes.ranges.len(), 2);
        assert_eq!(routes.leader_of(0).map(|a| &**a), Some("127.0.0.1:7070"));
        assert_eq!(routes.leader_of(8191).map(|a| &**a), Some("127.0.0.1:7070"));
        assert_eq!(routes.leader_of(8192).map(|a| &**a), Some("127.0.0.1:7071"));
        assert_eq!(
            routes.leader_of(16383).map(|a| &**a),
            Some("127.0.0.1:7071")
        );
        assert_eq!(
            routes.nodes.len(),
            2,
            "a down node is not a refresh candidate"
        );
    }

    #[tokio::test]
    async fn an_unavailable_leader_is_not_routed_to_until_its_quarantine_ends() {
        let seed = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let routing = Routing::new(seed, true, Duration::from_secs(1), Duration::from_secs(1));
        let routes = routes_of(proto::StatusResponse {
            node_id: "1".into(),
            nodes: vec![node("2", "127.0.0.1:7071", proto::NodeState::Up)],
            shards: vec![shard(0, 0, 16383, Some("2"))],
            metadata: None,
            moves: Vec::new(),
        });
        *routing.inner.routes.write().unwrap() = Some(Arc::new(routes));
        let (_, to) = routing.channel_for(Some(b"k"));
        assert_eq!(to.as_deref(), Some("127.0.0.1:7071"));
        // Keys go to the leader, other requests to the seed.
        assert_eq!(routing.channel_for(None).1, None);
        // A failure that is not UNAVAILABLE says nothing about the node.
        routing.observe_failure(to.as_ref(), &Status::not_found("no such key"));
        assert_eq!(routing.channel_for(Some(b"k")).1, to);
        routing.observe_failure(to.as_ref(), &Status::unavailable("connection refused"));
        assert_eq!(routing.channel_for(Some(b"k")).1, None, "quarantined");
        // Once the quarantine is over, the leader is used again.
        routing
            .inner
            .quarantined
            .lock()
            .unwrap()
            .insert("127.0.0.1:7071".into(), Instant::now() - QUARANTINE);
        assert_eq!(routing.channel_for(Some(b"k")).1, to);
    }

    #[test]
    fn unknown_or_down_leaders_and_gaps_fall_back() {
        let routes = routes_of(proto::StatusResponse {
            node_id: "1".into(),
            nodes: vec![node("3", "127.0.0.1:7072", proto::NodeState::Down)],
            shards: vec![
                shard(0, 0, 99, None),
                shard(1, 100, 199, Some("3")),
                shard(2, 300, 16383, Some("9")),
                shard(3, 16384, 20000, Some("3")), // out of range: ignored
            ],
            metadata: None,
            moves: Vec::new(),
        });
        assert_eq!(routes.leader_of(5), None);
        assert_eq!(routes.leader_of(150), None, "down leader");
        assert_eq!(routes.leader_of(250), None, "a gap in the map");
        assert_eq!(
            routes.leader_of(400),
            None,
            "a leader id with no node record"
        );
    }
}
