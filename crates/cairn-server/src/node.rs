//! The node: the one executor every front end calls.
//!
//! Request path: key → slot → shard. Reads are served from the shard replicas' engines;
//! writes go to the shard's proposer ([`crate::proposer`]), which evaluates them, proposes the
//! outcome to the shard's Raft group, and answers once the entry is committed and applied.
//! Relative deadlines become absolute here, at propose time. A multi-key write must keep to
//! one slot (`CROSSSLOT` otherwise, as Redis Cluster); DEL and FLUSHDB fan out per shard.

use std::net::SocketAddr;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_raft::{Groups, NodeAddr, Peers};
use cairn_resp::glob::Pattern;
use cairn_wal::{Wal, WalOptions};
use rand::Rng;
use tokio::sync::oneshot;

use crate::command::{BatchOp, Command, Expiry, KeyRange};
use crate::config::SyncMode;
use crate::error::CommandError;
use crate::eval::InternalOp;
use crate::health::WriteHealth;
use crate::meta::{ClusterConfig, Meta, NodeRecord};
use crate::proposer::{Proposal, ProposalOp, ProposalResult};
use crate::reply::{
    ClusterStatus, Entry, KeyTtl, KeyType, NodeInfo, NodeState, Reply, ShardInfo, ShardStats,
};
use crate::scan::ScanCursors;
use crate::shard::Shard;
use crate::shards::{FIRST_NODE_ID, NodeIdentity, Shards, ShardsSetup, meta_dir, wal_dir};
use crate::slot::key_slot;

mod route;

/// How often the active-expiry cycle runs.
pub const EXPIRE_TICK: Duration = Duration::from_millis(100);
/// Most expired keys deleted per shard per tick (bounded work, as Redis's cycle).
pub const EXPIRE_KEYS_PER_TICK: usize = 200;
/// How often every shard takes a snapshot (an engine checkpoint) so its log can be purged.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Log size past which the node checkpoints without waiting for the interval.
pub const LOG_BYTES_CHECKPOINT: u64 = 512 * 1024 * 1024;
/// With `--sync everysec`, how often the log is synced.
pub const EVERYSEC_INTERVAL: Duration = Duration::from_secs(1);
/// How long opening a node waits for the groups it alone votes in to elect it.
pub const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = cairn_storage::KEY_BYTES_MAX;
/// Most entries one range scan returns.
pub const SCAN_RANGE_LIMIT_MAX: usize = 10_000;
/// How long [`Node::execute`] keeps retrying a request refused with `TRYAGAIN` (a shard
/// without a leader, a leader that moved): a failover takes about one election timeout.
pub const ROUTE_RETRY_WINDOW: Duration = Duration::from_secs(5);
/// First pause before such a retry; it doubles up to [`ROUTE_RETRY_MAX`].
pub const ROUTE_RETRY_FIRST: Duration = Duration::from_millis(10);
/// Longest pause between retries.
pub const ROUTE_RETRY_MAX: Duration = Duration::from_millis(200);

/// What a node needs to open.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    /// Shard count of a new data directory.
    pub shards: u32,
    pub value_bytes_max: usize,
    pub sync: SyncMode,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub resp_addr: SocketAddr,
    /// Every file and directory the node touches goes through this: [`cairn_io::StdIo`] in
    /// production, a simulated disk in power-cut tests.
    pub io: Arc<dyn cairn_io::Io>,
    /// Segment sizes of the log and the engines (small ones make tests rotate, merge and
    /// purge).
    pub tuning: StorageTuning,
    /// A member's gRPC address to join through, when the data directory is new.
    pub join: Option<String>,
    /// Voters per shard in a cluster this node creates.
    pub replicas: u32,
    /// Silence after which the metadata leader marks a node down.
    pub down_after: Duration,
}

/// Segment sizes, not user-facing configuration: the defaults suit a server; tests shrink them
/// so rotation, merge and log purge happen within a few hundred writes.
#[derive(Debug, Clone, Copy)]
pub struct StorageTuning {
    /// The write-ahead log's segment size.
    pub wal_segment_bytes_max: u64,
    /// Each shard engine's segment size.
    pub engine_segment_bytes_max: u64,
}

impl Default for StorageTuning {
    fn default() -> Self {
        StorageTuning {
            wal_segment_bytes_max: cairn_wal::SEGMENT_BYTES_MAX_DEFAULT,
            engine_segment_bytes_max: cairn_storage::Options::default().segment_bytes_max,
        }
    }
}

/// A write that has been proposed; await it for the result.
#[derive(Debug)]
pub struct PendingWrite {
    parts: Vec<Part>,
    combine: Combine,
    /// The command as proposed, when a refusal of it (`TRYAGAIN`: nothing happened) may be
    /// answered by sending it again: a write to one shard. See [`PendingWrite::outcome`].
    again: Option<Command>,
}

/// One shard's part of a write.
#[derive(Debug)]
enum Part {
    /// Proposed to this node's proposer for the shard.
    Local(oneshot::Receiver<ProposalResult>),
    /// Forwarded to the shard's leader, which answered.
    Done(ProposalResult),
}

/// How the answers of a write fanned out to several shards make one.
#[derive(Debug, Clone, Copy)]
enum Combine {
    /// One shard: its answer.
    One,
    /// DEL: the sum of the counts.
    Sum,
    /// FLUSHDB: OK when every shard said OK.
    AllOk,
}

impl PendingWrite {
    pub async fn wait(self) -> ProposalResult {
        self.outcome().await.0
    }

    /// The answer, and the command again when the answer is a refusal that routing it afresh
    /// ([`Node::execute`]) may turn into a success: the shard's leadership moved between
    /// routing and proposing. Only the caller knows whether that is safe, since a retry lands
    /// after whatever it proposed since (the RESP connection retries only when none of its
    /// later writes can have taken effect).
    pub async fn outcome(mut self) -> (ProposalResult, Option<Command>) {
        let again = self.again.take();
        let result = self.settle().await;
        let again = again.filter(|_| matches!(result, Err(CommandError::TryAgain(_))));
        (result, again)
    }

    async fn settle(self) -> ProposalResult {
        let mut total = 0i64;
        let mut last = Ok(Reply::Ok);
        let (mut succeeded, mut failure) = (false, None);
        for part in self.parts {
            let answer = match part {
                Part::Local(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(CommandError::proposer_stopped())),
                Part::Done(result) => result,
            };
            match answer {
                Ok(answer) => {
                    succeeded = true;
                    if let (Combine::Sum, Reply::Int(n)) = (self.combine, &answer) {
                        total += n;
                    }
                    last = Ok(answer);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            // Another shard's part was applied: "nothing happened" would be untrue.
            Some(CommandError::TryAgain(why)) if succeeded => Err(CommandError::OutcomeUnknown(
                format!("applied on some shards, refused on another ({why})"),
            )),
            Some(e) => Err(e),
            None => match self.combine {
                Combine::One => last,
                Combine::Sum => Ok(Reply::Int(total)),
                Combine::AllOk => Ok(Reply::Ok),
            },
        }
    }
}

/// One Cairn node. Share it through `Arc`.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    options: NodeOptions,
    shards: Arc<Shards>,
    /// The metadata group's replica (the cluster map).
    meta: Meta,
    /// Connections to the other nodes (Raft traffic and forwarded commands).
    peers: Arc<Peers>,
    /// Metadata-leader bookkeeping for failure detection.
    pub(crate) liveness: parking_lot::Mutex<crate::placement::Liveness>,
    wal: Arc<Wal>,
    /// Raft groups this node hosts, for the peer service.
    groups: Arc<Groups>,
    health: Arc<WriteHealth>,
    stopping: AtomicBool,
    cursors: ScanCursors,
    started: Instant,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Open (or create) the node's data directory, start every shard's Raft group (a new
    /// directory bootstraps a one-node cluster) and wait until this node leads the groups it
    /// alone votes in.
    pub async fn open(options: NodeOptions) -> anyhow::Result<Arc<Node>> {
        let io = options.io.clone();
        let identity = match NodeIdentity::load(&*io, &options.data_dir)? {
            Some(identity) => identity,
            None => {
                let identity = match &options.join {
                    None => NodeIdentity::new(None, FIRST_NODE_ID, options.shards, false),
                    Some(addr) => {
                        let name = crate::shards::new_node_name();
                        let me = NodeRecord {
                            raft_id: 0,
                            name: name.clone(),
                            grpc_addr: options.grpc_addr.to_string(),
                            http_addr: options.http_addr.to_string(),
                            resp_addr: options.resp_addr.to_string(),
                            down: false,
                        };
                        let (raft_id, shards) = crate::peer::join(addr, &me).await?;
                        tracing::info!(raft_id, shards, via = %addr, "joined the cluster");
                        NodeIdentity::new(Some(name), raft_id, shards, true)
                    }
                };
                identity.create(&*io, &options.data_dir)?;
                identity
            }
        };
        if identity.shards != options.shards && !identity.joined {
            tracing::info!(
                recorded = identity.shards,
                asked = options.shards,
                "data directory keeps the shard count it was created with"
            );
        }
        let dir = wal_dir(&options.data_dir);
        let wal = Wal::open(
            &dir,
            WalOptions {
                io: io.clone(),
                segment_bytes_max: options.tuning.wal_segment_bytes_max,
                fsync_batches: options.sync == SyncMode::Always,
                on_fsync: Some(crate::metrics::wal_fsync_observer()),
            },
        )
        .map_err(|e| {
            anyhow::anyhow!("cannot open the write-ahead log in {}: {e}", dir.display())
        })?;
        let wal = Arc::new(wal);
        let groups = Arc::new(Groups::new(identity.raft_id));
        let health = Arc::new(WriteHealth::default());
        let peers = Arc::new(Peers::new());
        let setup = ShardsSetup {
            io: io.clone(),
            data_dir: &options.data_dir,
            identity: &identity,
            value_bytes_max: options.value_bytes_max,
            engine_segment_bytes_max: options.tuning.engine_segment_bytes_max,
            wal: wal.clone(),
            peers: peers.clone(),
            groups: groups.clone(),
            config: cairn_raft::config::shard_config(),
            health: health.clone(),
            advertise: NodeAddr {
                grpc: options.grpc_addr.to_string(),
            },
        };
        let meta = Meta::open(&setup, &meta_dir(&options.data_dir)).await?;
        let shards = Shards::open(&setup).await?;
        let node = Arc::new(Node {
            identity,
            options,
            shards: Arc::new(shards),
            meta,
            peers,
            liveness: Default::default(),
            wal,
            groups,
            health,
            stopping: AtomicBool::new(false),
            cursors: ScanCursors::default(),
            started: Instant::now(),
        });
        node.await_sole_leadership().await?;
        node.check_addresses_unchanged()?;
        if !node.identity.joined && node.meta.is_leader() {
            let config = ClusterConfig {
                shards: node.identity.shards,
                replicas: node.options.replicas,
            };
            node.meta
                .bootstrap(node.my_record(), config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot write the cluster map: {e}"))?;
        }
        tracing::info!(
            node_id = %node.identity.node_id,
            raft_id = node.identity.raft_id,
            shards = node.identity.shards,
            keys = node.dbsize(),
            "node opened"
        );
        Ok(node)
    }

    /// Refuses to start a member of a multi-node cluster on other addresses than those it is
    /// registered with: every group's membership names its gRPC address, so its peers would
    /// not reach it, and cluster clients would be sent to its old RESP address. (A one-node
    /// cluster just records its new addresses.)
    fn check_addresses_unchanged(&self) -> anyhow::Result<()> {
        let me = self.my_record();
        let Some(recorded) = self.meta.node(me.raft_id) else {
            return Ok(());
        };
        let others = self.meta.nodes().iter().any(|r| r.raft_id != me.raft_id);
        let moved = (recorded.grpc_addr != me.grpc_addr)
            || (recorded.http_addr != me.http_addr)
            || (recorded.resp_addr != me.resp_addr);
        anyhow::ensure!(
            !(others && moved),
            "node {} is registered in its cluster at gRPC {}, HTTP {}, RESP {}, but was started \
             with gRPC {}, HTTP {}, RESP {}: its peers and cluster clients would not find it. \
             Start it with its registered addresses (changing a member's addresses is not \
             supported yet; a node with a new data directory can --join as a new member)",
            me.raft_id,
            recorded.grpc_addr,
            recorded.http_addr,
            recorded.resp_addr,
            me.grpc_addr,
            me.http_addr,
            me.resp_addr
        );
        Ok(())
    }

    /// Waits until this node leads every group in which it is the only voter (a restarted
    /// one-node cluster elects itself after one election timeout) and has applied everything
    /// its log holds.
    async fn await_sole_leadership(&self) -> anyhow::Result<()> {
        let me = self.identity.raft_id;
        let groups = std::iter::once(("meta".to_string(), &self.meta.group)).chain(
            self.shards
                .list
                .iter()
                .map(|s| (format!("shard {}", s.id), &s.group)),
        );
        for (name, group) in groups {
            // A node that joined waits for each group's leader to add it.
            if !group
                .is_initialized()
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
            {
                continue;
            }
            let status = group
                .wait_for_membership(ELECTION_WAIT)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if !status.voters.iter().eq([&me]) {
                continue;
            }
            group
                .wait_for_leader(me, ELECTION_WAIT)
                .await
                .map_err(|e| anyhow::anyhow!("{name} did not elect this node: {e}"))?;
            // The log may hold entries appended before a crash but never known to be
            // committed; the new term commits them. A sole voter reads straight from the
            // engine, so the node serves nothing until they are applied: a read must never see
            // a state that a later read contradicts (read-index round: applied ≥ the term's
            // first entry).
            let term = group
                .leading()
                .ok_or_else(|| anyhow::anyhow!("{name} lost its leader at open"))?;
            group
                .make_ready(&term)
                .await
                .map_err(|e| anyhow::anyhow!("{name} did not apply its log: {e:?}"))?;
        }
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.identity.node_id
    }

    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Why writes are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// The Raft groups this node hosts (the peer service dispatches on them).
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// The node's write-ahead log (every group's log).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Execute any command: writes on their shard's leader, reads linearizably (on the
    /// leader). A request refused before anything happened (`TRYAGAIN`: no leader yet, leader
    /// moved) is retried for up to [`ROUTE_RETRY_WINDOW`] while leadership settles, unless it
    /// spans several shards (a retry could repeat a part that succeeded).
    pub async fn execute(&self, cmd: Command) -> Result<Reply, CommandError> {
        self.execute_with(cmd, false).await
    }

    /// [`Node::execute`]; with `stale`, reads are served by this node's replicas even when
    /// another node leads the shard (RESP `READONLY`, `consistency=stale`).
    pub async fn execute_with(&self, cmd: Command, stale: bool) -> Result<Reply, CommandError> {
        if let Command::Checkpoint = cmd {
            return self.checkpoint().await.map(|()| Reply::Ok);
        }
        let retriable = !matches!(cmd, Command::Del { .. } | Command::Flush);
        let deadline = Instant::now() + ROUTE_RETRY_WINDOW;
        let mut backoff = ROUTE_RETRY_FIRST;
        loop {
            let result = if cmd.is_write() {
                match self.propose_routed(cmd.clone(), 0, None).await {
                    Ok(pending) => pending.wait().await,
                    Err(e) => Err(e),
                }
            } else {
                self.read_routed(&cmd, 0, stale).await
            };
            match result {
                Err(CommandError::TryAgain(_))
                    if retriable && Instant::now() + backoff < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ROUTE_RETRY_MAX);
                }
                result => return result,
            }
        }
    }

    /// A command another node forwarded (`hops` forwards so far): served here if this node
    /// leads the shard, else forwarded once more (up to [`crate::peer::FORWARD_HOPS_MAX`]).
    /// `shard` limits a FLUSHDB to one shard.
    pub async fn execute_forwarded(
        &self,
        cmd: Command,
        hops: u32,
        stale: bool,
        shard: Option<u32>,
    ) -> Result<Reply, CommandError> {
        if cmd.is_write() {
            self.propose_routed(cmd, hops, shard).await?.wait().await
        } else {
            self.read_routed(&cmd, hops, stale).await
        }
    }

    /// Propose a write without waiting for its commit (front ends pipeline with this). Writes
    /// of one caller to one slot are committed in the order they are proposed: a write to a
    /// shard led elsewhere is forwarded and answered before this returns.
    pub async fn propose(&self, cmd: Command) -> Result<PendingWrite, CommandError> {
        self.propose_routed(cmd, 0, None).await
    }

    async fn propose_routed(
        &self,
        cmd: Command,
        hops: u32,
        only_shard: Option<u32>,
    ) -> Result<PendingWrite, CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(CommandError::ShuttingDown);
        }
        let now = now_ms();
        let cmd = self.prepare_write(cmd, now)?;
        match cmd {
            Command::Flush => {
                let shards: Vec<u32> = match only_shard {
                    Some(id) => vec![id],
                    None => (0..self.shards.len() as u32).collect(),
                };
                let mut parts = Vec::with_capacity(shards.len());
                for shard in shards {
                    parts.push(self.send_routed(shard, Command::Flush, now, hops).await?);
                }
                Ok(PendingWrite {
                    parts,
                    combine: Combine::AllOk,
                    again: None,
                })
            }
            Command::Del { keys } => {
                let mut by_shard: Vec<(u32, Vec<Bytes>)> = Vec::new();
                for key in keys {
                    let shard = self.shards.shard_of_key(&key);
                    match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                        Some((_, list)) => list.push(key),
                        None => by_shard.push((shard, vec![key])),
                    }
                }
                let mut parts = Vec::with_capacity(by_shard.len());
                for (shard, keys) in by_shard {
                    let cmd = Command::Del { keys };
                    parts.push(self.send_routed(shard, cmd, now, hops).await?);
                }
                Ok(PendingWrite {
                    parts,
                    combine: Combine::Sum,
                    again: None,
                })
            }
            cmd => {
                let shard = self.shard_of_write(&cmd)?;
                let again = Some(cmd.clone());
                let part = self.send_routed(shard, cmd, now, hops).await?;
                Ok(PendingWrite {
                    parts: vec![part],
                    combine: Combine::One,
                    again,
                })
            }
        }
    }

    /// The shard a single-shard write goes to: every key in one slot.
    fn shard_of_write(&self, cmd: &Command) -> Result<u32, CommandError> {
        let keys: Vec<&Bytes> = match cmd {
            Command::Set { key, .. }
            | Command::GetDel { key }
            | Command::GetEx { key, .. }
            | Command::Append { key, .. }
            | Command::SetRange { key, .. }
            | Command::IncrBy { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key } => vec![key],
            Command::MSet { pairs, .. } => pairs.iter().map(|(k, _)| k).collect(),
            Command::Rename { from, to, .. } => vec![from, to],
            Command::Batch { ops } => ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
                })
                .collect(),
            other => {
                return Err(CommandError::Invalid(format!(
                    "'{}' is not a single-shard write",
                    other.name()
                )));
            }
        };
        let Some(first) = keys.first() else {
            return Err(CommandError::Invalid("a write names no key".into()));
        };
        let slot = key_slot(first);
        if keys.iter().any(|k| key_slot(k) != slot) {
            return Err(CommandError::CrossSlot);
        }
        Ok(self.shards.shard_of_key(first))
    }

    /// Hands one proposal to shard `shard`.
    async fn send(
        &self,
        shard: u32,
        op: ProposalOp,
        now_ms: u64,
    ) -> Result<oneshot::Receiver<ProposalResult>, CommandError> {
        let (reply, rx) = oneshot::channel();
        let shard = self
            .shards
            .get(shard)
            .ok_or_else(|| CommandError::Invalid(format!("no shard {shard}")))?;
        shard.propose(Proposal { op, now_ms, reply }).await?;
        Ok(rx)
    }

    /// Validate sizes and turn relative deadlines into absolute ones.
    fn prepare_write(&self, mut cmd: Command, now: u64) -> Result<Command, CommandError> {
        let name = cmd.name();
        let resolve = |expiry: &mut Expiry| -> Result<(), CommandError> {
            if let Expiry::InMs(ms) = *expiry {
                let at = (now as i64)
                    .checked_add(ms)
                    .ok_or(CommandError::InvalidExpireTime(name.into()))?;
                *expiry = Expiry::AtMs(at);
            }
            Ok(())
        };
        match &mut cmd {
            Command::Set {
                key, value, expiry, ..
            } => {
                self.check_key(key)?;
                self.check_value(value)?;
                positive_ttl(*expiry, name)?;
                resolve(expiry)?;
            }
            Command::GetEx { key, expiry } => {
                self.check_key(key)?;
                positive_ttl(*expiry, name)?;
                resolve(expiry)?;
            }
            Command::Expire { key, expiry, .. } => {
                self.check_key(key)?;
                resolve(expiry)?;
            }
            Command::MSet { pairs, .. } => {
                for (key, value) in pairs.iter() {
                    self.check_key(key)?;
                    self.check_value(value)?;
                }
            }
            Command::Append { key, value } | Command::SetRange { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)?;
            }
            Command::GetDel { key }
            | Command::IncrBy { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Persist { key } => self.check_key(key)?,
            Command::Del { keys } => {
                for key in keys.iter() {
                    self.check_key(key)?;
                }
            }
            Command::Rename { from, to, .. } => {
                self.check_key(from)?;
                self.check_key(to)?;
            }
            Command::Batch { ops } => {
                for op in ops.iter_mut() {
                    match op {
                        BatchOp::Put { key, value, expiry } => {
                            self.check_key(key)?;
                            self.check_value(value)?;
                            positive_ttl(*expiry, name)?;
                            resolve(expiry)?;
                        }
                        BatchOp::Delete { key } => self.check_key(key)?,
                    }
                }
            }
            _ => {}
        }
        Ok(cmd)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), CommandError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(CommandError::KeyTooLarge {
                len: key.len(),
                max: KEY_BYTES_MAX,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CommandError> {
        let max = self.options.value_bytes_max;
        if value.len() > max {
            return Err(CommandError::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// A key the engine cannot hold cannot exist: reads of it find nothing.
    fn readable(key: &[u8]) -> bool {
        key.len() <= KEY_BYTES_MAX
    }

    /// The shard holding `key`: `known` when the caller already found it (every key of a
    /// routed read lives in one shard), else computed from the key.
    fn holder<'a>(&'a self, known: Option<&'a Shard>, key: &[u8]) -> &'a Shard {
        known.unwrap_or_else(|| self.shards.for_key(key))
    }

    fn get_entry(&self, known: Option<&Shard>, key: &Bytes) -> Result<Option<Entry>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        let entry = self.holder(known, key).engine().get_entry(key)?;
        Ok(entry.map(|e| Entry {
            key: e.key,
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        }))
    }

    fn key_meta(&self, known: Option<&Shard>, key: &[u8]) -> Option<cairn_storage::KeyMeta> {
        if !Self::readable(key) {
            return None;
        }
        self.holder(known, key).engine().meta(key)
    }

    fn get_value(&self, known: Option<&Shard>, key: &[u8]) -> Result<Option<Bytes>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        Ok(self.holder(known, key).engine().get(key)?)
    }

    /// Values of many keys, read shard by shard with one `get_many` each, so keys of one
    /// shard (and so of one slot) are read at one instant: an MSET is seen whole or not at all.
    fn get_values(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, CommandError> {
        let mut values = vec![None; keys.len()];
        let mut by_shard: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, key) in keys.iter().enumerate() {
            if Self::readable(key) {
                by_shard
                    .entry(self.shards.shard_of_key(key))
                    .or_default()
                    .push(i);
            }
        }
        for (shard, positions) in by_shard {
            let shard = self.shards.get(shard).expect("shard_of_key names a shard");
            let wanted: Vec<&[u8]> = positions.iter().map(|&i| &keys[i][..]).collect();
            let found = shard.engine().get_many(&wanted)?;
            for (i, entry) in positions.into_iter().zip(found) {
                values[i] = entry.map(|e| e.value);
            }
        }
        Ok(values)
    }

    /// Execute a read-only command against this node's replicas, as they are.
    fn read(&self, cmd: &Command) -> Result<Reply, CommandError> {
        self.read_in(None, cmd)
    }

    /// [`Node::read`]; `known` is the shard every key of `cmd` lives in, when the caller has
    /// found it already.
    fn read_in(&self, known: Option<&Shard>, cmd: &Command) -> Result<Reply, CommandError> {
        match cmd {
            Command::Get { key } => Ok(Reply::Entry(self.get_entry(known, key)?)),
            Command::MGet { keys } => Ok(Reply::Values(self.get_values(keys)?)),
            Command::StrLen { key } => Ok(Reply::Int(
                self.key_meta(known, key)
                    .map_or(0, |m| i64::from(m.value_len)),
            )),
            Command::GetRange { key, start, end } => {
                let value = self.get_value(known, key)?.unwrap_or_default();
                Ok(Reply::Value(Some(substring(&value, *start, *end))))
            }
            Command::Exists { keys } => Ok(Reply::Int(
                keys.iter()
                    .filter(|k| self.key_meta(known, k).is_some())
                    .count() as i64,
            )),
            Command::Type { key } => Ok(Reply::Type(if self.key_meta(known, key).is_some() {
                KeyType::String
            } else {
                KeyType::None
            })),
            Command::Ttl { key } => Ok(Reply::Ttl(match self.key_meta(known, key) {
                None => KeyTtl::Missing,
                Some(m) => m
                    .expires_at_ms
                    .map_or(KeyTtl::Persistent, KeyTtl::ExpiresAtMs),
            })),
            Command::Keys { pattern } => Ok(Reply::Keys(self.keys(pattern))),
            Command::Scan {
                cursor,
                pattern,
                count,
                type_filter,
            } => {
                let engines: Vec<Arc<cairn_storage::Engine>> =
                    self.shards.list.iter().map(|s| s.engine()).collect();
                let (cursor, keys) = self.cursors.scan(
                    &engines,
                    *cursor,
                    pattern.as_deref(),
                    *count,
                    type_filter.as_deref(),
                );
                Ok(Reply::ScanPage { cursor, keys })
            }
            Command::ScanRange {
                range,
                limit,
                keys_only,
            } => self.scan_range(range, *limit, *keys_only),
            Command::RandomKey => Ok(Reply::Value(self.random_key())),
            Command::DbSize => Ok(Reply::Int(self.dbsize() as i64)),
            Command::ClusterStatus => Ok(Reply::Cluster(self.cluster_status())),
            Command::ShardStats => Ok(Reply::Stats(self.shard_stats())),
            write => Err(CommandError::Invalid(format!(
                "'{}' is not a read",
                write.name()
            ))),
        }
    }

    /// Number of live keys.
    pub fn dbsize(&self) -> u64 {
        self.shards.list.iter().map(|s| s.engine().len()).sum()
    }

    fn keys(&self, pattern: &[u8]) -> Vec<Bytes> {
        // `KEYS *` (exactly that one byte) lists every key without matching, as Redis's
        // keysCommand does (`allkeys`): the glob itself never matches the empty key.
        let glob = (pattern != b"*").then(|| Pattern::new(pattern, false));
        let range = KeyRange::prefix(Bytes::copy_from_slice(literal_prefix(pattern)));
        let mut out = Vec::new();
        for shard in &self.shards.list {
            let keys = shard.engine().scan_keys(
                as_ref_bound(&range.start),
                as_ref_bound(&range.end),
                usize::MAX,
            );
            out.extend(
                keys.into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| glob.as_ref().is_none_or(|g| g.matches(k))),
            );
        }
        out
    }

    fn scan_range(
        &self,
        range: &KeyRange,
        limit: usize,
        keys_only: bool,
    ) -> Result<Reply, CommandError> {
        let limit = limit.clamp(1, SCAN_RANGE_LIMIT_MAX);
        // One more than asked from each shard tells whether more remain.
        let mut all: Vec<Entry> = Vec::new();
        for shard in &self.shards.list {
            let (start, end) = (as_ref_bound(&range.start), as_ref_bound(&range.end));
            if keys_only {
                all.extend(
                    shard
                        .engine()
                        .scan_keys(start, end, limit + 1)
                        .into_iter()
                        .map(|(key, m)| Entry {
                            key,
                            value: Bytes::new(),
                            version: m.version,
                            expires_at_ms: m.expires_at_ms,
                        }),
                );
            } else {
                all.extend(
                    shard
                        .engine()
                        .scan(start, end, limit + 1)?
                        .into_iter()
                        .map(|e| Entry {
                            key: e.key,
                            value: e.value,
                            version: e.version,
                            expires_at_ms: e.expires_at_ms,
                        }),
                );
            }
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(Reply::Entries { entries: all, more })
    }

    fn random_key(&self) -> Option<Bytes> {
        let sizes: Vec<u64> = self.shards.list.iter().map(|s| s.engine().len()).collect();
        let total: u64 = sizes.iter().sum();
        if total == 0 {
            return None;
        }
        let mut rng = rand::rng();
        let mut pick = rng.random_range(0..total);
        let mut chosen = 0;
        for (i, size) in sizes.iter().enumerate() {
            if pick < *size {
                chosen = i;
                break;
            }
            pick -= size;
        }
        // Try the chosen shard first, then any other (sizes may have changed meanwhile).
        let order = (0..self.shards.len()).map(|i| (chosen + i) % self.shards.len());
        for i in order {
            let engine = self.shards.list[i].engine();
            let probe: [u8; 8] = rng.random();
            let after = engine.scan_keys(
                Bound::Included(&probe[..rng.random_range(1..=8)]),
                Bound::Unbounded,
                1,
            );
            if let Some((key, _)) = after.into_iter().next() {
                return Some(key);
            }
            if let Some((key, _)) = engine
                .scan_keys(Bound::Unbounded, Bound::Unbounded, 1)
                .into_iter()
                .next()
            {
                return Some(key);
            }
        }
        None
    }

    /// The cluster map: every node of the metadata group's map (this node's replica of it),
    /// and every shard with its members and leader as this node's replica of its group sees
    /// them.
    pub fn cluster_status(&self) -> ClusterStatus {
        let me = self.my_record();
        let mut records = self.meta.nodes();
        if !records.iter().any(|r| r.raft_id == me.raft_id) {
            records.push(me.clone());
        }
        let name_of = |id: u64| {
            records
                .iter()
                .find(|r| r.raft_id == id)
                .map_or_else(|| format!("raft-{id}"), |r| r.name.clone())
        };
        let shards = self
            .shards
            .list
            .iter()
            .map(|s| {
                let g = s.group.status();
                ShardInfo {
                    id: s.id,
                    slots: vec![s.slots],
                    replicas: g
                        .voters
                        .iter()
                        .chain(&g.learners)
                        .map(|id| name_of(*id))
                        .collect(),
                    learners: g.learners.iter().map(|id| name_of(*id)).collect(),
                    leader: g.leader.map(name_of),
                    raft: s.raft_stats(),
                }
            })
            .collect();
        let nodes = records
            .iter()
            .map(|r| NodeInfo {
                id: r.name.clone(),
                grpc_addr: r.grpc_addr.clone(),
                http_addr: r.http_addr.clone(),
                resp_addr: r.resp_addr.clone(),
                state: if r.down && r.raft_id != me.raft_id {
                    NodeState::Down
                } else {
                    NodeState::Up
                },
            })
            .collect();
        ClusterStatus {
            node_id: me.name,
            nodes,
            shards,
        }
    }

    /// Storage statistics of every shard.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards
            .list
            .iter()
            .map(|s| {
                let st = s.engine().stats();
                ShardStats {
                    shard: s.id,
                    live_keys: st.live_keys,
                    segments: st.segments,
                    disk_bytes: st.disk_bytes,
                    dead_bytes: st.dead_bytes,
                    writes: st.writes,
                    syncs: st.syncs,
                    cache_hits: st.cache_hits,
                    cache_misses: st.cache_misses,
                    merges: st.merges,
                    last_applied: s.last_applied(),
                    expiring_keys: s.expiry.index.lock().len() as u64,
                    raft: s.raft_stats(),
                }
            })
            .collect()
    }

    /// Background work until `shutdown` resolves: active expiry, log sync (`everysec`) and
    /// periodic checkpoints (snapshots, then log purge).
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut expire = tokio::time::interval(EXPIRE_TICK);
        let mut checkpoint = tokio::time::interval(CHECKPOINT_INTERVAL);
        let mut sync = tokio::time::interval(EVERYSEC_INTERVAL);
        let mut place = tokio::time::interval(crate::placement::RECONCILE_INTERVAL);
        for timer in [&mut expire, &mut checkpoint, &mut sync, &mut place] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = expire.tick() => self.expire_cycle().await,
                _ = place.tick() => crate::placement::reconcile(&self).await,
                _ = checkpoint.tick() => {
                    if let Err(e) = self.snapshot_all(false).await {
                        tracing::warn!(error = %e, "periodic checkpoint failed");
                    }
                }
                _ = sync.tick() => {
                    if self.options.sync == SyncMode::Everysec {
                        if let Err(e) = self.sync_log().await {
                            tracing::warn!(error = %e, "periodic log sync failed");
                        }
                    }
                    // A long log makes restarts slow and fills the disk: checkpoint early.
                    if self.wal.total_bytes() > LOG_BYTES_CHECKPOINT {
                        if let Err(e) = self.snapshot_all(false).await {
                            tracing::warn!(error = %e, "checkpoint failed");
                        }
                    }
                }
            }
        }
    }

    /// Snapshots every shard this node holds (an engine checkpoint: durable up to the applied
    /// index) and purges the log behind the snapshots, now. The background task does it every
    /// [`CHECKPOINT_INTERVAL`], keeping 1000 entries for lagging followers; this purges all it
    /// can.
    pub async fn checkpoint(&self) -> Result<(), CommandError> {
        self.snapshot_all(true).await
    }

    async fn snapshot_all(&self, purge_all: bool) -> Result<(), CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        for shard in &self.shards.list {
            let applied = shard.last_applied();
            if applied == 0 {
                continue;
            }
            let snapshot = shard
                .group
                .snapshot(applied, ELECTION_WAIT)
                .await
                .map_err(|e| CommandError::TryAgain(format!("shard {} snapshot: {e}", shard.id)))?;
            if purge_all {
                // Purging waits for replication that still reads the entries; a follower that
                // needs them gets the snapshot instead.
                if let Err(e) = shard.group.purge(snapshot, ELECTION_WAIT).await {
                    tracing::debug!(shard = shard.id, error = %e, "log purge still pending");
                }
            }
        }
        self.wal
            .purge_segments()
            .map_err(|e| CommandError::Fatal(format!("log purge failed: {e}")))?;
        Ok(())
    }

    /// Makes every write acknowledged so far durable now: what the background task does every
    /// [`EVERYSEC_INTERVAL`] under `--sync everysec`. Under `always` every answer waited for an
    /// fdatasync already. Fails once the write path has failed.
    pub async fn sync_log(&self) -> Result<(), CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        self.wal.sync().map_err(|e| {
            let reason = format!("log sync failed: {e}");
            self.health.fail(reason.clone());
            CommandError::Fatal(reason)
        })
    }

    /// One tick of active expiry: each shard this node leads deletes up to
    /// [`EXPIRE_KEYS_PER_TICK`] due keys.
    pub async fn expire_cycle(&self) {
        let now = now_ms();
        for shard in &self.shards.list {
            if !shard.is_leader() {
                continue;
            }
            let keys = shard.expiry.index.lock().due(now, EXPIRE_KEYS_PER_TICK);
            if keys.is_empty() {
                continue;
            }
            let op = ProposalOp::Internal(InternalOp::ExpireKeys { keys });
            match self.send(shard.id, op, now).await {
                Ok(rx) => match rx.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(shard = shard.id, error = %e, "active expiry failed");
                    }
                    Err(_) => return,
                },
                Err(_) => return,
            }
        }
    }

    /// Stop taking writes, let the proposed ones finish, snapshot the shards and stop their
    /// groups. Idempotent.
    pub async fn shutdown(&self) -> Result<(), CommandError> {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Everything proposed before the flag lands before a barrier proposed after it.
        for shard in &self.shards.list {
            if let Ok(rx) = self.send(shard.id, ProposalOp::Barrier, now_ms()).await {
                let _ = rx.await;
            }
        }
        let result = if self.health.failure().is_none() {
            self.snapshot_all(false).await
        } else {
            Ok(())
        };
        for shard in &self.shards.list {
            self.groups.remove(crate::shard::group_of_shard(shard.id));
            shard.group.shutdown().await;
        }
        self.groups.remove(crate::meta::META_GROUP);
        self.meta.group.shutdown().await;
        let flushed = self
            .wal
            .flush()
            .map_err(|e| CommandError::Fatal(format!("log flush failed: {e}")));
        result.and(flushed)
    }
}

/// A relative TTL of a write must be positive (only `Expire` accepts ≤ 0, meaning "delete").
fn positive_ttl(expiry: Expiry, command: &'static str) -> Result<(), CommandError> {
    match expiry {
        Expiry::InMs(ms) if ms <= 0 => Err(CommandError::InvalidExpireTime(command.into())),
        _ => Ok(()),
    }
}

pub(crate) fn as_ref_bound(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The bytes every key matching the glob `pattern` starts with.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// Redis GETRANGE: inclusive offsets, negative ones count from the end.
pub fn substring(value: &[u8], start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 {
        return Bytes::new();
    }
    let (mut start, mut end) = (start, end);
    if start < 0 && end < 0 && start > end {
        return Bytes::new();
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&value[start as usize..=end as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Condition, ExpireCondition};
    use crate::reply::SetOutcome;

    fn options(dir: &std::path::Path) -> NodeOptions {
        NodeOptions {
            data_dir: dir.to_path_buf(),
            shards: 4,
            value_bytes_max: 1024,
            sync: SyncMode::Always,
            grpc_addr: "127.0.0.1:1".parse().unwrap(),
            http_addr: "127.0.0.1:2".parse().unwrap(),
            resp_addr: "127.0.0.1:3".parse().unwrap(),
            io: Arc::new(cairn_io::StdIo),
            tuning: StorageTuning::default(),
            join: None,
            replicas: 3,
            down_after: Duration::from_secs(5),
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: b(key),
            value: b(value),
            expiry: Expiry::Never,
            condition: Condition::Always,
            return_old: false,
        }
    }

    async fn get(node: &Node, key: &str) -> Option<Entry> {
        match node.execute(Command::Get { key: b(key) }).await.unwrap() {
            Reply::Entry(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_entries_missing_from_the_engines_are_replayed_on_open() {
        // Engines are applied without fsync: a power cut keeps the log (fsynced before every
        // answer) and loses the engines' tail, which the log then replays.
        let io = cairn_io::sim::SimIo::new(7);
        let sim = |io: &cairn_io::sim::SimIo| NodeOptions {
            io: Arc::new(io.clone()),
            ..options(std::path::Path::new("/sim/node"))
        };
        let node = Node::open(sim(&io)).await.unwrap();
        node.execute(set("a", "1")).await.unwrap();
        let cmd = Command::Set {
            key: b("y{other}"),
            value: b("Y"),
            expiry: Expiry::AtMs(4_000_000_000_000),
            condition: Condition::Always,
            return_old: false,
        };
        node.execute(cmd).await.unwrap();
        node.execute(Command::Del { keys: vec![b("a")] })
            .await
            .unwrap();
        node.execute(set("b", "2")).await.unwrap();
        let before: Vec<Option<Entry>> = {
            let mut v = Vec::new();
            for k in ["a", "y{other}", "b"] {
                v.push(get(&node, k).await);
            }
            v
        };
        let image = io.crash_image(cairn_io::sim::PowerCut::DropUnsynced);
        let _ = node.shutdown().await;
        drop(node);

        let node = Node::open(sim(&image)).await.unwrap();
        for (k, want) in ["a", "y{other}", "b"].into_iter().zip(before) {
            assert_eq!(get(&node, k).await, want, "{k}");
        }
        // The next write continues the shard's log.
        let b_version = get(&node, "b").await.unwrap().version;
        node.execute(set("b", "3")).await.unwrap();
        assert!(get(&node, "b").await.unwrap().version > b_version);
        node.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conditions_versions_and_expiry_rules() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        // Compare-and-set on versions.
        let v1 = match node.execute(set("k", "1")).await.unwrap() {
            Reply::Set(SetOutcome {
                version: Some(v), ..
            }) => v,
            other => panic!("{other:?}"),
        };
        let cas = |version, value: &str| Command::Set {
            key: b("k"),
            value: b(value),
            expiry: Expiry::Keep,
            condition: Condition::IfVersion(version),
            return_old: false,
        };
        match node.execute(cas(v1 + 100, "no")).await.unwrap() {
            Reply::Set(SetOutcome {
                version: None,
                old: Some(old),
            }) => assert_eq!(old.version, v1),
            other => panic!("condition should fail: {other:?}"),
        }
        match node.execute(cas(v1, "2")).await.unwrap() {
            Reply::Set(SetOutcome {
                version: Some(v2), ..
            }) => assert!(v2 > v1),
            other => panic!("{other:?}"),
        }
        // Relative deadlines become absolute at propose time; KEEP keeps them.
        let before = now_ms();
        node.execute(Command::Expire {
            key: b("k"),
            expiry: Expiry::InMs(60_000),
            condition: ExpireCondition::Always,
        })
        .await
        .unwrap();
        let at = get(&node, "k").await.unwrap().expires_at_ms.unwrap();
        assert!(at >= before + 60_000 && at <= now_ms() + 60_000);
        node.execute(Command::IncrBy {
            key: b("k"),
            delta: 1,
        })
        .await
        .unwrap();
        assert_eq!(
            get(&node, "k").await.unwrap().expires_at_ms,
            Some(at),
            "INCR keeps the TTL"
        );
        // GT with a smaller deadline fails; XX LT on a key with expiry succeeds.
        let expire = |ms, condition| Command::Expire {
            key: b("k"),
            expiry: Expiry::InMs(ms),
            condition,
        };
        assert_eq!(
            node.execute(expire(1_000, ExpireCondition::Gt))
                .await
                .unwrap(),
            Reply::Bool(false)
        );
        assert_eq!(
            node.execute(expire(1_000, ExpireCondition::XxLt))
                .await
                .unwrap(),
            Reply::Bool(true)
        );
        // Rename moves value and deadline, within a slot; across slots it is CROSSSLOT.
        assert_eq!(
            node.execute(Command::Rename {
                from: b("k"),
                to: b("k2"),
                nx: false,
            })
            .await,
            Err(CommandError::CrossSlot)
        );
        node.execute(Command::Rename {
            from: b("k"),
            to: b("{k}2"),
            nx: false,
        })
        .await
        .unwrap();
        assert!(get(&node, "k").await.is_none());
        assert!(get(&node, "{k}2").await.unwrap().expires_at_ms.is_some());
        // Size limits.
        let too_big = Command::Set {
            key: b("v"),
            value: Bytes::from(vec![0u8; 1025]),
            expiry: Expiry::Never,
            condition: Condition::Always,
            return_old: false,
        };
        assert_eq!(
            node.execute(too_big).await,
            Err(CommandError::ValueTooLarge {
                len: 1025,
                max: 1024
            })
        );
        node.shutdown().await.unwrap();
        assert_eq!(
            node.execute(set("late", "x")).await,
            Err(CommandError::ShuttingDown)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_sync_stops_writes_but_not_reads() {
        let io = cairn_io::sim::SimIo::new(1);
        let options = NodeOptions {
            io: Arc::new(io.clone()),
            ..options(std::path::Path::new("/sim/node"))
        };
        let node = Node::open(options).await.unwrap();
        node.execute(set("a", "1")).await.unwrap();
        io.inject(cairn_io::sim::Fault::fail(cairn_io::sim::Op::SyncData).on_path("wal"));
        // The write whose fsync failed is never acknowledged: its outcome is unknown (its bytes
        // may still reach the disk), and the node refuses writes from then on.
        let failed = node.execute(set("b", "2")).await;
        assert!(
            matches!(
                failed,
                Err(CommandError::Fatal(_) | CommandError::OutcomeUnknown(_))
            ),
            "{failed:?}"
        );
        assert!(node.failure().is_some());
        // Never retry-and-acknowledge: later writes are refused too.
        assert!(matches!(
            node.execute(set("c", "3")).await,
            Err(CommandError::Fatal(_))
        ));
        assert_eq!(get(&node, "a").await.unwrap().value, b("1"));
        assert!(
            get(&node, "b").await.is_none(),
            "an unacknowledged write is not visible"
        );
        let _ = node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn active_expiry_deletes_due_keys() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        for i in 0..10 {
            let cmd = Command::Set {
                key: b(&format!("t{i}")),
                value: b("v"),
                expiry: Expiry::InMs(1),
                condition: Condition::Always,
                return_old: false,
            };
            node.execute(cmd).await.unwrap();
        }
        node.execute(set("keep", "v")).await.unwrap();
        let expiring = || {
            node.shard_stats()
                .iter()
                .map(|s| s.expiring_keys)
                .sum::<u64>()
        };
        assert_eq!(expiring(), 10);
        let all_due = || {
            node.shards()
                .list
                .iter()
                .map(|s| s.expiry.index.lock().due(now_ms(), usize::MAX).len())
                .sum::<usize>()
                == 10
        };
        while !all_due() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        node.expire_cycle().await;
        assert_eq!(expiring(), 0);
        assert_eq!(node.dbsize(), 1);
        node.shutdown().await.unwrap();
    }

    #[test]
    fn getrange_matches_redis() {
        let v = b"This is a string";
        assert_eq!(&substring(v, 0, 3)[..], b"This");
        assert_eq!(&substring(v, -3, -1)[..], b"ing");
        assert_eq!(&substring(v, 0, -1)[..], &v[..]);
        assert_eq!(&substring(v, 10, 100)[..], b"string");
        assert_eq!(&substring(v, 5, 3)[..], b"");
        assert_eq!(&substring(v, -1, -5)[..], b"");
        assert_eq!(&substring(v, -100, 2)[..], b"Thi");
        assert_eq!(&substring(b"", 0, -1)[..], b"");
    }

    #[test]
    fn literal_prefix_stops_at_the_first_special_character() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a?c"), b"a");
        assert_eq!(literal_prefix(b"[ab]"), b"");
        assert_eq!(literal_prefix(b"plain"), b"plain");
        assert_eq!(literal_prefix(b"x\\*"), b"x");
    }
}
