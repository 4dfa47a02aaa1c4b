//! `cairn-client`: the async Rust client of Cairn's public gRPC API (`cairn.v1.Kv` and
//! `cairn.v1.Cluster`). The `cairn` CLI, the REPL and `cairn bench` are built on it; the server
//! crates never depend on it.
//!
//! Every call has a timeout and is retried a bounded number of times, with exponential backoff,
//! when the node answers UNAVAILABLE (not reachable, shutting down, or no shard leader yet).
//! Single-key requests go straight to the key's shard leader, found in a route cache fetched
//! from `Cluster.Status` ([`routing`]); everything else, and every request while no map is
//! known, goes to the endpoint the client was built with, which forwards to the leaders.
//!
//! ```no_run
//! # async fn demo() -> cairn_client::Result<()> {
//! let client = cairn_client::Client::new("http://127.0.0.1:7070")?;
//! client.put("hello", "world").await?;
//! assert_eq!(client.get("hello").await?.unwrap().value, "world");
//! # Ok(()) }
//! ```

mod error;
pub mod near;
pub mod routing;
mod watch;

use std::future::Future;
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use cairn_proto::v1 as proto;
pub use error::{Error, Result};
pub use near::{NearCacheStats, Served};
pub use watch::{Watch, WatchOptions, WatchSelector, WatchUpdate};

use proto::cluster_client::ClusterClient;
use proto::kv_client::KvClient;
use routing::Routing;

/// How long to wait for a TCP + HTTP/2 connection to a node.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// How long one attempt of one request may take.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Retries after the first attempt when the node answers UNAVAILABLE.
pub const RETRIES_MAX_DEFAULT: u32 = 3;
/// Sleep before the first retry; doubled before each further one.
pub const RETRY_BACKOFF_DEFAULT: Duration = Duration::from_millis(50);
/// Largest gRPC message the client sends or accepts: a maximal value (16 MiB by default) plus
/// its key and framing, or a large scan page.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Client tuning; `ClientConfig::default()` uses the `*_DEFAULT` constants.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout of connection establishment.
    pub connect_timeout: Duration,
    /// Timeout of one attempt of one request.
    pub request_timeout: Duration,
    /// Retries after the first attempt on UNAVAILABLE; 0 disables retries.
    pub retries_max: u32,
    /// Backoff before the first retry, doubled each time.
    pub retry_backoff: Duration,
    /// Keep a route cache from `Cluster.Status` and send each single-key request to its
    /// shard's leader directly (see [`routing`]); off: every request goes to the endpoint,
    /// which forwards it.
    pub route_cache: bool,
    /// Keep a near cache of this many bytes ([`near`]): values read are served locally until
    /// a watch tells of their change. `None`: off. Needs a tokio runtime when the client is
    /// created.
    pub near_cache_bytes: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            retries_max: RETRIES_MAX_DEFAULT,
            retry_backoff: RETRY_BACKOFF_DEFAULT,
            route_cache: true,
            near_cache_bytes: None,
        }
    }
}

/// A live value as returned by [`Client::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: Bytes,
    /// Version of the write that produced this value (for [`Condition::IfVersion`]).
    pub version: u64,
    /// Absolute expiry, ms since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// Remaining time to live when the node read the value.
    pub ttl_ms: Option<u64>,
}

/// When a written value expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// After this long, counted from when the node accepts the write.
    In(Duration),
    /// At this absolute time, ms since the Unix epoch.
    AtMs(u64),
}

/// A precondition for a write; when it does not hold the write fails with
/// [`Error::ConditionFailed`] and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    IfAbsent,
    IfPresent,
    IfVersion(u64),
}

/// Options of [`Client::put_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub expiry: Option<Expiry>,
    pub condition: Option<Condition>,
}

/// Time to live of an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key never expires.
    Persistent,
    /// The key expires after this long.
    Remaining(Duration),
}

/// Which keys a scan lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every key.
    All,
    /// Keys starting with these bytes.
    Prefix(Bytes),
    /// Keys within bounds.
    Range {
        start: Bound<Bytes>,
        end: Bound<Bytes>,
    },
}

/// A scan request: build with [`Scan::all`], [`Scan::prefix`] or [`Scan::range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub selector: Selector,
    /// At most this many entries; 0 = the server default.
    pub limit: u32,
    /// Leave values out.
    pub keys_only: bool,
    /// Resume cursor: only keys strictly after this one.
    pub after: Option<Bytes>,
}

impl Scan {
    pub fn all() -> Self {
        Scan {
            selector: Selector::All,
            limit: 0,
            keys_only: false,
            after: None,
        }
    }
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        Scan {
            selector: Selector::Prefix(prefix.into()),
            ..Scan::all()
        }
    }
    pub fn range(start: Bound<Bytes>, end: Bound<Bytes>) -> Self {
        Scan {
            selector: Selector::Range { start, end },
            ..Scan::all()
        }
    }
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
    pub fn keys_only(mut self, keys_only: bool) -> Self {
        self.keys_only = keys_only;
        self
    }
    pub fn after(mut self, after: Option<Bytes>) -> Self {
        self.after = after;
        self
    }

    fn to_proto(&self) -> proto::ScanRequest {
        use proto::scan_request::Selector as P;
        let selector = match &self.selector {
            Selector::All => None,
            Selector::Prefix(p) => Some(P::Prefix(p.clone())),
            Selector::Range { start, end } => {
                Some(P::Range(range_to_proto(start.clone(), end.clone())))
            }
        };
        proto::ScanRequest {
            selector,
            limit: self.limit,
            keys_only: self.keys_only,
            after: self.after.clone(),
        }
    }
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    pub entries: Vec<proto::Entry>,
    /// Set when more entries may follow: pass it to [`Scan::after`] for the next page.
    pub resume_after: Option<Bytes>,
    /// A watch resume token taken just before the scan ([`WatchOptions::from`]): a watch
    /// from it tells every change the page did not see.
    pub watch_token: String,
}

/// One write of an atomic [`Client::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
    },
    Delete {
        key: Bytes,
    },
}

/// A handle to a Cairn cluster. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    routing: Routing,
    config: ClientConfig,
    /// The near cache and its watch, when configured (shared by clones).
    near: Option<std::sync::Arc<near::NearHandle>>,
}

impl Client {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:7070`) with default settings. Connects
    /// lazily: an unreachable node surfaces as [`Error::Unavailable`] on the first request.
    pub fn new(endpoint: &str) -> Result<Self> {
        Self::with_config(endpoint, ClientConfig::default())
    }

    /// Like [`Client::new`] with explicit settings.
    pub fn with_config(endpoint: &str, config: ClientConfig) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let mut client = Client {
            routing: Routing::new(
                channel,
                config.route_cache,
                config.connect_timeout,
                config.request_timeout,
            ),
            config,
            near: None,
        };
        if let Some(bytes) = client.config.near_cache_bytes {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(invalid("a near cache needs a tokio runtime".into()));
            }
            let plain = client.clone();
            client.near = Some(std::sync::Arc::new(near::NearHandle::start(plain, bytes)));
        }
        Ok(client)
    }

    /// Read `key`; `None` when it is missing or expired.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Value>> {
        Ok(self.get_traced(key).await?.0)
    }

    /// [`Client::get`], saying whether the near cache or the cluster answered.
    pub async fn get_traced(&self, key: impl Into<Bytes>) -> Result<(Option<Value>, Served)> {
        let key = key.into();
        let Some(near) = &self.near else {
            return Ok((self.get_with(key, false).await?, Served::Cluster));
        };
        if let Some(value) = near.cache.lookup(&key, now_ms()) {
            return Ok((Some(value), Served::Local));
        }
        let ticket = near.cache.begin_read();
        let result = self.get_with(key.clone(), false).await;
        let value = result.as_ref().ok().and_then(Option::as_ref);
        near.cache.end_read(ticket, &key, value);
        Ok((result?, Served::Cluster))
    }

    /// The near cache's counters (`None` without one).
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|n| n.cache.stats())
    }

    /// Waits up to `timeout` for the near cache's watch to be established; whether it is.
    pub async fn near_cache_ready(&self, timeout: Duration) -> bool {
        let Some(near) = &self.near else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while !near.cache.stats().live {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Tells the near cache that this client wrote `key` (acknowledged at `version`, or of
    /// unknown outcome or version).
    fn near_wrote(&self, key: &Bytes, version: Option<u64>) {
        if let Some(near) = &self.near {
            near.cache.wrote(key, version);
        }
    }

    /// [`Client::get`]; with `stale`, the node answers from its own replica of the key's
    /// shard as it stands (it may lag the leader) instead of asking the leader. Never from
    /// the near cache.
    pub async fn get_with(&self, key: impl Into<Bytes>, stale: bool) -> Result<Option<Value>> {
        let consistency = if stale {
            proto::Consistency::Stale
        } else {
            proto::Consistency::Unspecified
        };
        let req = proto::GetRequest {
            key: key.into(),
            consistency: consistency.into(),
        };
        let res = self
            .call(Some(&req.key), |ch| {
                let req = req.clone();
                async move { kv(ch).get(req).await }
            })
            .await;
        match res {
            Ok(r) => Ok(Some(Value {
                value: r.value,
                version: r.version,
                expires_at_ms: r.expires_at_ms,
                ttl_ms: r.ttl_ms,
            })),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write `key` unconditionally without expiry; returns the new version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Write `key` with an optional expiry and condition; returns the new version.
    pub async fn put_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<u64> {
        use proto::put_request::{Condition as C, Expiry as E};
        let req = proto::PutRequest {
            key: key.into(),
            value: value.into(),
            expiry: options.expiry.map(|e| match e {
                Expiry::In(d) => E::TtlMs(duration_ms(d)),
                Expiry::AtMs(at) => E::ExpiresAtMs(at),
            }),
            condition: options.condition.map(|c| match c {
                Condition::IfAbsent => C::IfAbsent(true),
                Condition::IfPresent => C::IfPresent(true),
                Condition::IfVersion(v) => C::IfVersion(v),
            }),
        };
        let r = self
            .call(Some(&req.key), |ch| {
                let req = req.clone();
                async move { kv(ch).put(req).await }
            })
            .await;
        self.near_wrote(&req.key, r.as_ref().ok().map(|r| r.version));
        Ok(r?.version)
    }

    /// Remove `key`; returns whether a live key was removed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        let req = proto::DeleteRequest { key: key.into() };
        let r = self
            .call(Some(&req.key), |ch| {
                let req = req.clone();
                async move { kv(ch).delete(req).await }
            })
            .await;
        self.near_wrote(&req.key, None);
        Ok(r?.deleted)
    }

    /// Make `key` expire after `ttl`; `false` when the key does not exist.
    pub async fn expire(&self, key: impl Into<Bytes>, ttl: Duration) -> Result<bool> {
        self.expire_inner(
            key.into(),
            proto::expire_request::Expiry::TtlMs(duration_ms(ttl)),
        )
        .await
    }

    /// Make `key` expire at `at_ms` (ms since the Unix epoch); `false` when it does not exist.
    pub async fn expire_at(&self, key: impl Into<Bytes>, at_ms: u64) -> Result<bool> {
        self.expire_inner(
            key.into(),
            proto::expire_request::Expiry::ExpiresAtMs(at_ms),
        )
        .await
    }

    /// Remove the expiry of `key`; `false` when it does not exist.
    pub async fn persist(&self, key: impl Into<Bytes>) -> Result<bool> {
        self.expire_inner(key.into(), proto::expire_request::Expiry::Persist(true))
            .await
    }

    async fn expire_inner(
        &self,
        key: Bytes,
        expiry: proto::expire_request::Expiry,
    ) -> Result<bool> {
        let req = proto::ExpireRequest {
            key,
            expiry: Some(expiry),
        };
        let res = self
            .call(Some(&req.key), |ch| {
                let req = req.clone();
                async move { kv(ch).expire(req).await }
            })
            .await;
        self.near_wrote(&req.key, None);
        match res {
            Ok(_) => Ok(true),
            Err(Error::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Time to live of `key`; `None` when it does not exist.
    pub async fn ttl(&self, key: impl Into<Bytes>) -> Result<Option<Ttl>> {
        let req = proto::TtlRequest { key: key.into() };
        let res = self
            .call(Some(&req.key), |ch| {
                let req = req.clone();
                async move { kv(ch).ttl(req).await }
            })
            .await;
        match res {
            Ok(r) => Ok(Some(match r.ttl_ms {
                Some(ms) => Ttl::Remaining(Duration::from_millis(ms)),
                None => Ttl::Persistent,
            })),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of live entries in key order.
    pub async fn scan(&self, scan: &Scan) -> Result<ScanPage> {
        let req = scan.to_proto();
        let r = self
            .call(None, |ch| {
                let req = req.clone();
                async move { kv(ch).scan(req).await }
            })
            .await?;
        Ok(ScanPage {
            entries: r.entries,
            resume_after: r.resume_after,
            watch_token: r.watch_token,
        })
    }

    /// Apply `ops` atomically; returns the version of the batch's writes.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<u64> {
        use proto::batch_op::Op;
        let ops = ops
            .into_iter()
            .map(|op| proto::BatchOp {
                op: Some(match op {
                    BatchOp::Put { key, value, ttl } => Op::Put(proto::BatchPut {
                        key,
                        value,
                        ttl_ms: ttl.map(duration_ms),
                    }),
                    BatchOp::Delete { key } => Op::Delete(proto::BatchDelete { key }),
                }),
            })
            .collect();
        let req = proto::BatchRequest { ops };
        let r = self
            .call(None, |ch| {
                let req = req.clone();
                async move { kv(ch).batch(req).await }
            })
            .await;
        for op in &req.ops {
            match &op.op {
                Some(proto::batch_op::Op::Put(p)) => self.near_wrote(&p.key, None),
                Some(proto::batch_op::Op::Delete(d)) => self.near_wrote(&d.key, None),
                None => {}
            }
        }
        Ok(r?.version)
    }

    /// An atomic, isolated transaction over any keys (`Kv.Txn`, etcd's shape): when every
    /// compare holds the `success` ops run, else the `failure` ops. Retried only when the node
    /// answered that nothing happened.
    pub async fn txn(&self, req: proto::TxnRequest) -> Result<proto::TxnResponse> {
        let r = self
            .call(None, |ch| {
                let req = req.clone();
                async move { kv(ch).txn(req).await }
            })
            .await;
        for op in req.success.iter().chain(&req.failure) {
            use proto::txn_op::Op;
            match &op.op {
                Some(Op::Put(p)) => self.near_wrote(&p.key, None),
                Some(Op::Delete(d)) => self.near_wrote(&d.key, None),
                _ => {}
            }
        }
        r
    }

    /// The cluster as the contacted node sees it: nodes, shards, slot ranges, leaders.
    pub async fn status(&self) -> Result<proto::StatusResponse> {
        self.call(None, |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .status(proto::StatusRequest {})
                .await
        })
        .await
    }

    /// Drain node `id` (its 40-character id) and remove it from the cluster. Returns once the
    /// cluster records the node as leaving; [`Client::status`] then shows it `LEAVING` until
    /// its leaderships and votes have moved, and then no more. Not retried: a refusal
    /// (FAILED_PRECONDITION, NOT_FOUND) is final, and a lost answer may be asked again.
    pub async fn remove_node(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(None, |ch| {
            let id = id.clone();
            async move {
                // An unknown node is bad input here, not a missing key: keep the message.
                ClusterClient::new(ch)
                    .remove_node(proto::RemoveNodeRequest { id })
                    .await
                    .map_err(|s| match s.code() {
                        tonic::Code::NotFound => Status::invalid_argument(s.message()),
                        _ => s,
                    })
            }
        })
        .await
        .map(|_| ())
    }

    /// Split shard `shard` in two: the new shard takes the slots from `at` (or, when `None`,
    /// from the slot that splits the shard's keys in halves) to the end of its range.
    /// Returns the new shard's id and first slot once the shard's leader applied the split
    /// (copying the keys can take seconds: give the client a long enough request timeout).
    /// A refusal to split now (transactions in the shard) is UNAVAILABLE and retried; a lost
    /// answer is [`Error::OutcomeUnknown`] (the split may have happened: look at the map).
    pub async fn split_shard(&self, shard: u32, at: Option<u16>) -> Result<(u32, u16)> {
        let response = self
            .call(None, |ch| async move {
                ClusterClient::new(ch)
                    .split_shard(proto::SplitShardRequest {
                        shard,
                        at_slot: at.map(u32::from),
                    })
                    .await
                    .map_err(|s| match s.code() {
                        tonic::Code::NotFound => Status::invalid_argument(s.message()),
                        _ => s,
                    })
            })
            .await?;
        Ok((response.child, response.first_slot as u16))
    }

    /// Fetch the route map now instead of on first use: after it returns `Ok`, single-key
    /// requests go to the leaders it names (with the route cache off, this only checks that a
    /// node answers).
    pub async fn refresh_routes(&self) -> Result<()> {
        self.routing.refresh().await.map_err(Error::from)
    }

    /// Run one request with bounded retries on UNAVAILABLE, asking [`Routing`] for the channel
    /// of every attempt and telling it about every failure.
    async fn call<T, F, Fut>(&self, key: Option<&[u8]>, mut attempt: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let mut retries = 0u32;
        let mut backoff = self.config.retry_backoff;
        loop {
            let (channel, routed_to) = self.routing.channel_for(key);
            match attempt(channel).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    self.routing.observe_failure(routed_to.as_ref(), &status);
                    if status.code() != Code::Unavailable || retries >= self.config.retries_max {
                        return Err(status.into());
                    }
                    tracing::debug!(
                        retries,
                        ?backoff,
                        "retrying after UNAVAILABLE: {}",
                        status.message()
                    );
                    tokio::time::sleep(backoff).await;
                    retries += 1;
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }
}

/// A key range as the protocol carries it.
fn range_to_proto(start: Bound<Bytes>, end: Bound<Bytes>) -> proto::KeyRange {
    let (start, start_exclusive) = match start {
        Bound::Included(k) => (k, false),
        Bound::Excluded(k) => (k, true),
        Bound::Unbounded => (Bytes::new(), false),
    };
    let (end, end_inclusive) = match end {
        Bound::Included(k) => (k, true),
        Bound::Excluded(k) => (k, false),
        Bound::Unbounded => (Bytes::new(), false),
    };
    proto::KeyRange {
        start,
        start_exclusive,
        end,
        end_inclusive,
    }
}

/// A Kv client on `channel` that accepts messages as large as the largest value.
fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// Milliseconds since the Unix epoch by this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
