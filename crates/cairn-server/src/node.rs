//! The node: the one executor every front end calls.
//!
//! Request path: key → slot → shard → executor. Reads are served from the shard engines
//! directly; writes are proposed to the writer ([`crate::writer`]) and answered once committed
//! and applied. Relative deadlines become absolute here, at propose time.

use std::net::SocketAddr;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::command::{BatchOp, Command, Expiry, KeyRange};
use crate::config::SyncMode;
use crate::error::CommandError;
use crate::eval::InternalOp;
use crate::log::CommitLog;
use crate::reply::{
    ClusterStatus, Entry, KeyTtl, KeyType, NodeInfo, NodeState, Reply, ShardInfo, ShardStats,
};
use crate::scan::ScanCursors;
use crate::shards::{NodeIdentity, Shards};
use crate::writer::{Proposal, ProposalResult, WriteOp, Writer, WriterHealth};

/// How often the active-expiry cycle runs.
pub const EXPIRE_TICK: Duration = Duration::from_millis(100);
/// Most expired keys deleted per shard per tick (bounded work, as Redis's cycle).
pub const EXPIRE_KEYS_PER_TICK: usize = 200;
/// How often engines are synced and the log purged.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = cairn_storage::KEY_BYTES_MAX;
/// Most entries one range scan returns.
pub const SCAN_RANGE_LIMIT_MAX: usize = 10_000;

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
    rx: oneshot::Receiver<ProposalResult>,
}

impl PendingWrite {
    pub async fn wait(self) -> ProposalResult {
        self.rx.await.unwrap_or(Err(CommandError::ShuttingDown))
    }
}

/// One Cairn node. Share it through `Arc`.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    options: NodeOptions,
    shards: Arc<Shards>,
    proposals: mpsc::Sender<Proposal>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    health: Arc<WriterHealth>,
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
    /// Open (or create) the node's data directory, replay the log, start the writer.
    pub fn open(options: NodeOptions) -> anyhow::Result<Arc<Node>> {
        let io = options.io.clone();
        let identity = NodeIdentity::load_or_create(&*io, &options.data_dir, options.shards)?;
        if identity.shards != options.shards {
            tracing::info!(
                recorded = identity.shards,
                asked = options.shards,
                "data directory keeps the shard count it was created with"
            );
        }
        let shards = Arc::new(Shards::open(
            &io,
            &options.data_dir,
            identity.shards,
            options.value_bytes_max,
            options.tuning.engine_segment_bytes_max,
        )?);
        let (log, next_index) =
            CommitLog::open(&options.data_dir, options.sync, &shards, io.clone(), {
                options.tuning.wal_segment_bytes_max
            })?;
        let last_applied = next_index - 1;
        let health = Arc::new(WriterHealth::default());
        let writer = Writer::new(
            shards.clone(),
            log,
            next_index,
            options.value_bytes_max,
            health.clone(),
        );
        let (proposals, handle) = writer.spawn()?;
        tracing::info!(
            node_id = %identity.node_id,
            shards = identity.shards,
            keys = shards.list.iter().map(|s| s.engine.len()).sum::<u64>(),
            last_applied,
            "node opened"
        );
        Ok(Arc::new(Node {
            identity,
            options,
            shards,
            proposals,
            writer: Mutex::new(Some(handle)),
            health,
            cursors: ScanCursors::default(),
            started: Instant::now(),
        }))
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

    /// Execute any command.
    pub async fn execute(&self, cmd: Command) -> Result<Reply, CommandError> {
        if cmd.is_write() {
            self.propose(cmd).await?.wait().await
        } else {
            self.read(cmd)
        }
    }

    /// Propose a write without waiting for its commit (front ends pipeline with this). Writes
    /// of one caller are committed in the order they are proposed.
    pub async fn propose(&self, cmd: Command) -> Result<PendingWrite, CommandError> {
        let now = now_ms();
        let cmd = self.prepare_write(cmd, now)?;
        self.submit(WriteOp::Command(cmd), now).await
    }

    async fn submit(&self, op: WriteOp, now_ms: u64) -> Result<PendingWrite, CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        self.enqueue(op, now_ms).await
    }

    /// Queue an operation for the writer, even a failed one (shutdown must still reach it).
    async fn enqueue(&self, op: WriteOp, now_ms: u64) -> Result<PendingWrite, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send(Proposal {
                op,
                now_ms,
                reply: tx,
            })
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        Ok(PendingWrite { rx })
    }

    /// Validate sizes and turn relative deadlines into absolute ones.
    fn prepare_write(&self, mut cmd: Command, now: u64) -> Result<Command, CommandError> {
        let name = cmd.name();
        let resolve = |expiry: &mut Expiry| -> Result<(), CommandError> {
            if let Expiry::InMs(ms) = *expiry {
                let at = (now as i64)
                    .checked_add(ms)
                    .ok_or(CommandError::InvalidExpireTime(name))?;
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

    fn get_entry(&self, key: &Bytes) -> Result<Option<Entry>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        let entry = self.shards.for_key(key).engine.get_entry(key)?;
        Ok(entry.map(|e| Entry {
            key: e.key,
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        }))
    }

    fn meta(&self, key: &[u8]) -> Option<cairn_storage::KeyMeta> {
        if !Self::readable(key) {
            return None;
        }
        self.shards.for_key(key).engine.meta(key)
    }

    fn get_value(&self, key: &[u8]) -> Result<Option<Bytes>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        Ok(self.shards.for_key(key).engine.get(key)?)
    }

    /// Execute a read-only command against the engines.
    fn read(&self, cmd: Command) -> Result<Reply, CommandError> {
        match cmd {
            Command::Get { key } => Ok(Reply::Entry(self.get_entry(&key)?)),
            Command::MGet { keys } => {
                let _consistent = (keys.len() > 1).then(|| self.shards.apply_lock.read());
                let values = keys
                    .iter()
                    .map(|k| self.get_value(k))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Reply::Values(values))
            }
            Command::StrLen { key } => Ok(Reply::Int(
                self.meta(&key).map_or(0, |m| i64::from(m.value_len)),
            )),
            Command::GetRange { key, start, end } => {
                let value = self.get_value(&key)?.unwrap_or_default();
                Ok(Reply::Value(Some(substring(&value, start, end))))
            }
            Command::Exists { keys } => {
                let _consistent = (keys.len() > 1).then(|| self.shards.apply_lock.read());
                Ok(Reply::Int(
                    keys.iter().filter(|k| self.meta(k).is_some()).count() as i64,
                ))
            }
            Command::Type { key } => Ok(Reply::Type(if self.meta(&key).is_some() {
                KeyType::String
            } else {
                KeyType::None
            })),
            Command::Ttl { key } => Ok(Reply::Ttl(match self.meta(&key) {
                None => KeyTtl::Missing,
                Some(m) => m
                    .expires_at_ms
                    .map_or(KeyTtl::Persistent, KeyTtl::ExpiresAtMs),
            })),
            Command::Keys { pattern } => Ok(Reply::Keys(self.keys(&pattern))),
            Command::Scan {
                cursor,
                pattern,
                count,
                type_filter,
            } => {
                let (cursor, keys) = self.cursors.scan(
                    &self.shards,
                    cursor,
                    pattern.as_deref(),
                    count,
                    type_filter.as_deref(),
                );
                Ok(Reply::ScanPage { cursor, keys })
            }
            Command::ScanRange {
                range,
                limit,
                keys_only,
            } => self.scan_range(&range, limit, keys_only),
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
        self.shards.list.iter().map(|s| s.engine.len()).sum()
    }

    fn keys(&self, pattern: &[u8]) -> Vec<Bytes> {
        // `KEYS *` (exactly that one byte) lists every key without matching, as Redis's
        // keysCommand does (`allkeys`): the glob itself never matches the empty key.
        let glob = (pattern != b"*").then(|| Pattern::new(pattern, false));
        let range = KeyRange::prefix(Bytes::copy_from_slice(literal_prefix(pattern)));
        let mut out = Vec::new();
        for shard in &self.shards.list {
            let keys = shard.engine.scan_keys(
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
        // Bounded work, so it may hold off the writer: the page is one consistent cut.
        let _consistent = self.shards.apply_lock.read();
        // One more than asked from each shard tells whether more remain.
        let mut all: Vec<Entry> = Vec::new();
        for shard in &self.shards.list {
            let (start, end) = (as_ref_bound(&range.start), as_ref_bound(&range.end));
            if keys_only {
                all.extend(
                    shard
                        .engine
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
                        .engine
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
        let sizes: Vec<u64> = self.shards.list.iter().map(|s| s.engine.len()).collect();
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
            let engine = &self.shards.list[i].engine;
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

    /// The cluster map: this node owns every shard.
    pub fn cluster_status(&self) -> ClusterStatus {
        let id = self.identity.node_id.clone();
        let node = NodeInfo {
            id: id.clone(),
            grpc_addr: self.options.grpc_addr.to_string(),
            http_addr: self.options.http_addr.to_string(),
            resp_addr: self.options.resp_addr.to_string(),
            state: NodeState::Up,
        };
        let shards = self
            .shards
            .list
            .iter()
            .map(|s| ShardInfo {
                id: s.id,
                slots: vec![s.slots],
                replicas: vec![id.clone()],
                leader: Some(id.clone()),
            })
            .collect();
        ClusterStatus {
            node_id: id,
            nodes: vec![node],
            shards,
        }
    }

    /// Storage statistics of every shard.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards
            .list
            .iter()
            .map(|s| {
                let st = s.engine.stats();
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
                    expiring_keys: s.expiry.lock().len() as u64,
                }
            })
            .collect()
    }

    /// Background work until `shutdown` resolves: active expiry, log sync (`everysec`) and
    /// periodic checkpoints.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut expire = tokio::time::interval(EXPIRE_TICK);
        let mut checkpoint = tokio::time::interval(CHECKPOINT_INTERVAL);
        let mut sync = tokio::time::interval(crate::writer::EVERYSEC_INTERVAL);
        for timer in [&mut expire, &mut checkpoint, &mut sync] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = expire.tick() => self.expire_cycle().await,
                _ = checkpoint.tick() => self.internal(WriteOp::Checkpoint).await,
                _ = sync.tick(), if self.options.sync == SyncMode::Everysec => self.internal(WriteOp::SyncLog).await,
            }
        }
    }

    async fn internal(&self, op: WriteOp) {
        if let Err(e) = self.run_internal(op).await {
            tracing::warn!(error = %e, "background write failed");
        }
    }

    async fn run_internal(&self, op: WriteOp) -> Result<(), CommandError> {
        self.submit(op, now_ms()).await?.wait().await.map(|_| ())
    }

    /// Syncs every engine and purges the log up to what they hold, now (the background task
    /// does it every [`CHECKPOINT_INTERVAL`]).
    pub async fn checkpoint(&self) -> Result<(), CommandError> {
        self.run_internal(WriteOp::Checkpoint).await
    }

    /// Makes every write acknowledged so far durable now by syncing the engines: what the
    /// background task does every [`crate::writer::EVERYSEC_INTERVAL`] under `--sync
    /// everysec`. A no-op under `always`, where the log is synced before every answer. Fails
    /// once the write path has failed.
    pub async fn sync_log(&self) -> Result<(), CommandError> {
        self.run_internal(WriteOp::SyncLog).await
    }

    /// One tick of active expiry: delete up to [`EXPIRE_KEYS_PER_TICK`] due keys per shard.
    pub async fn expire_cycle(&self) {
        let now = now_ms();
        for shard in &self.shards.list {
            let keys = shard.expiry.lock().due(now, EXPIRE_KEYS_PER_TICK);
            if keys.is_empty() {
                continue;
            }
            let op = WriteOp::Internal(InternalOp::ExpireKeys { keys });
            match self.submit(op, now).await {
                Ok(pending) => {
                    if let Err(e) = pending.wait().await {
                        tracing::warn!(error = %e, "active expiry failed");
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Stop taking writes, finish the queued ones, sync the engines. Idempotent.
    pub async fn shutdown(&self) -> Result<(), CommandError> {
        let result = match self.enqueue(WriteOp::Shutdown, now_ms()).await {
            Ok(pending) => pending.wait().await.map(|_| ()),
            Err(CommandError::ShuttingDown) => Ok(()),
            Err(e) => Err(e),
        };
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }
}

/// A relative TTL of a write must be positive (only `Expire` accepts ≤ 0, meaning "delete").
fn positive_ttl(expiry: Expiry, command: &'static str) -> Result<(), CommandError> {
    match expiry {
        Expiry::InMs(ms) if ms <= 0 => Err(CommandError::InvalidExpireTime(command)),
        _ => Ok(()),
    }
}

fn as_ref_bound(b: &Bound<Bytes>) -> Bound<&[u8]> {
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
    use crate::effects::{Effect, Effects};
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

    /// Replaces the node log with `entries`, as a crash after the log sync but before the
    /// engines were written (and before a checkpoint purged the log) would leave it.
    fn append_to_log(dir: &std::path::Path, entries: &[(u64, Effects)]) {
        std::fs::remove_dir_all(crate::shards::wal_dir(dir)).unwrap();
        let wal = cairn_wal::Wal::open(
            crate::shards::wal_dir(dir),
            cairn_wal::WalOptions::default(),
        )
        .unwrap();
        let records: Vec<cairn_wal::Record> = entries
            .iter()
            .map(|(index, e)| cairn_wal::Record {
                group: crate::log::NODE_LOG_GROUP,
                index: *index,
                payload: e.encode(),
            })
            .collect();
        wal.append(&records).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_entries_missing_from_the_engines_are_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).unwrap();
        node.execute(set("a", "1")).await.unwrap();
        node.execute(set("b", "2")).await.unwrap();
        let last = get(&node, "b").await.unwrap().version;
        node.shutdown().await.unwrap();
        drop(node);

        // Entry last+1 writes two shards atomically; entry last+2 deletes `a`. An entry at an
        // index the shard already applied must not be applied again.
        let shards = Shards::open(&options(dir.path()).io, dir.path(), 4, 1024, 1 << 20).unwrap();
        let (ka, kx, ky) = (b("a"), b("x"), b("y{other}"));
        assert_ne!(shards.shard_of_key(&kx), shards.shard_of_key(&ky));
        let shard_of_a = shards.shard_of_key(&ka);
        drop(shards);
        let mut first = Effects::default();
        first.push(
            crate::slot::SlotMap::new(4).shard_of_key(&kx) as u32,
            Effect::Put {
                key: kx.clone(),
                value: b("X"),
                expires_at_ms: None,
            },
        );
        first.push(
            crate::slot::SlotMap::new(4).shard_of_key(&ky) as u32,
            Effect::Put {
                key: ky.clone(),
                value: b("Y"),
                expires_at_ms: Some(4_000_000_000_000),
            },
        );
        let mut second = Effects::default();
        second.push(shard_of_a, Effect::Delete { key: ka.clone() });
        let mut stale = Effects::default();
        stale.push(
            shard_of_a,
            Effect::Put {
                key: b("a"),
                value: b("stale"),
                expires_at_ms: None,
            },
        );
        // Every index the shards already applied holds a stale write the replay must skip.
        let mut log: Vec<(u64, Effects)> = (1..=last).map(|i| (i, stale.clone())).collect();
        log.extend([(last + 1, first), (last + 2, second)]);
        append_to_log(dir.path(), &log);

        let node = Node::open(options(dir.path())).unwrap();
        let x = get(&node, "x").await.unwrap();
        assert_eq!((x.value, x.version), (b("X"), last + 1));
        let y = get(&node, "y{other}").await.unwrap();
        assert_eq!(
            (y.version, y.expires_at_ms),
            (last + 1, Some(4_000_000_000_000))
        );
        assert!(get(&node, "a").await.is_none(), "replayed delete");
        assert_eq!(get(&node, "b").await.unwrap().value, b("2"));
        // The next write continues the log.
        node.execute(set("z", "1")).await.unwrap();
        assert_eq!(get(&node, "z").await.unwrap().version, last + 3);
        node.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conditions_versions_and_expiry_rules() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).unwrap();
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
        // Rename moves value and deadline.
        node.execute(Command::Rename {
            from: b("k"),
            to: b("k2"),
            nx: false,
        })
        .await
        .unwrap();
        assert!(get(&node, "k").await.is_none());
        assert!(get(&node, "k2").await.unwrap().expires_at_ms.is_some());
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
        let node = Node::open(options).unwrap();
        node.execute(set("a", "1")).await.unwrap();
        io.inject(cairn_io::sim::Fault::fail(cairn_io::sim::Op::SyncData).on_path("wal"));
        let failed = node.execute(set("b", "2")).await;
        assert!(matches!(failed, Err(CommandError::Fatal(_))), "{failed:?}");
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
        let node = Node::open(options(dir.path())).unwrap();
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
                .map(|s| s.expiry.lock().due(now_ms(), usize::MAX).len())
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
