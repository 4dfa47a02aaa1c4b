//! A shard group of in-process replicas for tests: each node has its own simulated disk (its
//! WAL and its replica), and they talk over an in-memory network that can cut links, and drop
//! or damage a snapshot transfer part-way. Snapshots travel as the real thing does: a manifest,
//! then checked chunks into the target's `Incoming`, then `install_full_snapshot`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_raft::types::Snapshot;
use cairn_raft::{LogStore, NodeAddr, Request, ShardSnapshot, StateMachine, TypeConfig, WriteOp};
use cairn_storage::io::sim::SimIo;
use cairn_storage::{Options, SyncPolicy};
use cairn_wal::{Wal, WalOptions};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Config, OptionalSend, RaftNetworkFactory, SnapshotPolicy};
use parking_lot::Mutex;

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// The group id every node's log uses in its WAL.
pub const GROUP: u64 = 3;
/// Chunks are small so a transfer has many of them.
pub const CHUNK_BYTES: usize = 4096;
/// Longest a test waits for the group to get somewhere before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A key's state as a reader sees it: value, version, deadline.
pub type Contents = BTreeMap<Bytes, (Bytes, u64, Option<u64>)>;

/// Something done to the next snapshot transfer.
#[derive(Debug, Clone, Copy)]
pub enum Sabotage {
    /// The connection drops after this many chunks.
    DropAfter(usize),
    /// This chunk's bytes are damaged in flight (its CRC no longer matches).
    Corrupt(usize),
}

#[derive(Clone)]
pub struct Member {
    pub raft: Raft,
    pub sm: StateMachine,
    /// What the state machine told its observer, when one was set.
    pub observed: Option<Arc<Recorder>>,
}

/// An observer that records what it is told.
#[derive(Default)]
pub struct Recorder {
    /// Applied entries, in the order the state machine reported them.
    pub applied: Mutex<Vec<(u64, Vec<WriteOp>)>>,
    /// Engines replaced by snapshots.
    pub replaced: Mutex<u64>,
}

impl cairn_raft::ApplyObserver for Recorder {
    fn applied(&self, index: u64, ops: &std::sync::Arc<Vec<WriteOp>>, _cleared: &[Bytes]) {
        self.applied.lock().push((index, ops.to_vec()));
    }
    fn replaced(&self, _engine: &cairn_storage::Engine, _applied: u64) {
        *self.replaced.lock() += 1;
    }
}

#[derive(Default)]
struct NetState {
    members: BTreeMap<u64, Member>,
    /// Cut links, both directions.
    cut: HashSet<(u64, u64)>,
    sabotage: VecDeque<Sabotage>,
    /// Snapshots installed, per target.
    installed: BTreeMap<u64, u64>,
    /// Transfers that failed part-way, per target.
    failed: BTreeMap<u64, u64>,
    /// Transfers openraft abandoned (dropped the future) before they finished, per target.
    abandoned: BTreeMap<u64, u64>,
    /// Sabotages that hit a transfer, per target.
    bitten: BTreeMap<u64, u64>,
}

/// A sabotage taken for one transfer. Put back first in line if the transfer ends before it
/// bit (the link was cut, openraft dropped the transfer), so that every sabotage hits one.
struct Taken {
    router: Router,
    to: u64,
    sabotage: Option<Sabotage>,
}

impl Taken {
    /// The sabotage fires now.
    fn bite(&mut self) {
        self.sabotage = None;
        *self.router.0.lock().bitten.entry(self.to).or_default() += 1;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(s) = self.sabotage.take() {
            self.router.0.lock().sabotage.push_front(s);
        }
    }
}

/// Counts a transfer as abandoned unless it is disarmed (it finished, either way).
struct AbandonGuard {
    router: Router,
    to: u64,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if self.armed {
            *self.router.0.lock().abandoned.entry(self.to).or_default() += 1;
        }
    }
}

/// The in-memory network.
#[derive(Clone, Default)]
pub struct Router(Arc<Mutex<NetState>>);

fn unreachable(e: impl std::error::Error + 'static) -> Unreachable<TypeConfig> {
    Unreachable::new(&e)
}

fn gone(why: &str) -> Unreachable<TypeConfig> {
    unreachable(std::io::Error::other(why.to_string()))
}

impl Router {
    pub fn add(&self, id: u64, member: Member) {
        self.0.lock().members.insert(id, member);
    }

    pub fn remove(&self, id: u64) -> Option<Member> {
        self.0.lock().members.remove(&id)
    }

    pub fn member(&self, id: u64) -> Member {
        self.0.lock().members[&id].clone()
    }

    /// Cuts every link of `id`.
    pub fn isolate(&self, id: u64) {
        let mut st = self.0.lock();
        let others: Vec<u64> = st.members.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            st.cut.insert((id, o));
            st.cut.insert((o, id));
        }
    }

    pub fn heal(&self) {
        self.0.lock().cut.clear();
    }

    pub fn sabotage(&self, s: Sabotage) {
        self.0.lock().sabotage.push_back(s);
    }

    pub fn installed(&self, id: u64) -> u64 {
        self.0.lock().installed.get(&id).copied().unwrap_or(0)
    }

    /// Transfers to `id` that openraft gave up on before they finished.
    pub fn abandoned(&self, id: u64) -> u64 {
        self.0.lock().abandoned.get(&id).copied().unwrap_or(0)
    }

    pub fn failed(&self, id: u64) -> u64 {
        self.0.lock().failed.get(&id).copied().unwrap_or(0)
    }

    /// Sabotages that hit a transfer to `id`.
    pub fn bitten(&self, id: u64) -> u64 {
        self.0.lock().bitten.get(&id).copied().unwrap_or(0)
    }

    pub fn sabotage_left(&self) -> usize {
        self.0.lock().sabotage.len()
    }

    fn target(&self, from: u64, to: u64) -> Result<Member, Unreachable<TypeConfig>> {
        let st = self.0.lock();
        if st.cut.contains(&(from, to)) {
            return Err(gone("link cut"));
        }
        st.members
            .get(&to)
            .cloned()
            .ok_or_else(|| gone("node down"))
    }
}

pub struct Net {
    router: Router,
    from: u64,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, _node: &NodeAddr) -> Conn {
        Conn {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

pub struct Conn {
    router: Router,
    from: u64,
    to: u64,
}

impl Conn {
    /// Streams `snapshot` to the target; `Err` when the transfer did not complete.
    async fn transfer(
        &self,
        vote: openraft::alias::VoteOf<TypeConfig>,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, Unreachable<TypeConfig>> {
        let target = self.router.target(self.from, self.to)?;
        let mut taken = Taken {
            router: self.router.clone(),
            to: self.to,
            sabotage: self.router.0.lock().sabotage.pop_front(),
        };
        let manifest = snapshot.snapshot.manifest().map_err(unreachable)?;
        let mut incoming = target.sm.receive_snapshot(manifest).map_err(unreachable)?;
        let chunks: Vec<_> = snapshot
            .snapshot
            .chunks(CHUNK_BYTES)
            .map_err(unreachable)?
            .collect::<Result<_, _>>()
            .map_err(unreachable)?;
        // A sabotage always bites: one aimed past the last chunk hits the last one (how many
        // chunks a snapshot has depends on timing).
        let last = chunks.len().saturating_sub(1);
        let sabotage = taken.sabotage.map(|s| match s {
            Sabotage::DropAfter(k) => Sabotage::DropAfter(k.min(last)),
            Sabotage::Corrupt(k) => Sabotage::Corrupt(k.min(last)),
        });
        for (n, mut chunk) in chunks.into_iter().enumerate() {
            match sabotage {
                Some(Sabotage::DropAfter(k)) if n == k => {
                    taken.bite();
                    return Err(gone("connection dropped"));
                }
                Some(Sabotage::Corrupt(k)) if n == k => {
                    taken.bite();
                    let mut data = chunk.data.to_vec();
                    let at = data.len() / 2;
                    data[at] ^= 0x20;
                    chunk.data = Bytes::from(data);
                }
                _ => {}
            }
            // Between chunks, the link may be cut.
            self.router.target(self.from, self.to)?;
            incoming.write(&chunk).map_err(unreachable)?;
            tokio::task::yield_now().await;
        }
        let staged = incoming.finish(&snapshot.meta).map_err(unreachable)?;
        let response = target
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta: snapshot.meta,
                    snapshot: staged,
                },
            )
            .await
            .map_err(unreachable)?;
        Ok(response)
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = ShardSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let target = self.router.target(self.from, self.to)?;
        let response = target.raft.append_entries(rpc).await.map_err(unreachable)?;
        // A reply travels the link back too.
        self.router.target(self.to, self.from)?;
        Ok(response)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let target = self.router.target(self.from, self.to)?;
        let response = target.raft.vote(rpc).await.map_err(unreachable)?;
        self.router.target(self.to, self.from)?;
        Ok(response)
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::alias::VoteOf<TypeConfig>,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut guard = AbandonGuard {
            router: self.router.clone(),
            to: self.to,
            armed: true,
        };
        let result = self.transfer(vote, snapshot).await;
        guard.armed = false;
        match result {
            Ok(response) => {
                *self.router.0.lock().installed.entry(self.to).or_default() += 1;
                Ok(response)
            }
            Err(e) => {
                *self.router.0.lock().failed.entry(self.to).or_default() += 1;
                Err(e.into())
            }
        }
    }
}

/// A runtime like the node's on this machine: two workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The shard groups' configuration (so its safety settings are what these tests run with)
/// with test timing: quick elections, a snapshot every 40 entries, logs purged right behind
/// it, so a follower that misses 50 entries needs a snapshot.
pub fn config() -> Arc<Config> {
    Arc::new(
        Config {
            cluster_name: "cairn-test".into(),
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
            max_in_snapshot_log_to_keep: 5,
            purge_batch_size: 1,
            ..(*cairn_raft::config::shard_config()).clone()
        }
        .validate()
        .expect("valid config"),
    )
}

/// Engine options for replicas: no fsync on apply, small segments so a snapshot has many
/// files.
pub fn engine_options() -> Options {
    Options {
        sync: SyncPolicy::Never,
        segment_bytes_max: 16 * 1024,
        ..Options::default()
    }
}

/// Opens with `open`, waiting while the previous incarnation's tasks still hold the
/// directory lock (`Raft::shutdown` returns before every task has dropped its storage).
pub async fn open_unlocked<T, E: std::fmt::Debug>(
    what: &str,
    open: impl Fn() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match open() {
            Ok(t) => return t,
            Err(e)
                if format!("{e:?}").contains("Locked")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("open {what}: {e:?}"),
        }
    }
}

/// Opens a test node's WAL (small segments, so logs rotate and purge) on `io`.
pub fn open_wal(io: &Arc<dyn cairn_storage::io::Io>) -> cairn_wal::Result<Wal> {
    Wal::open(
        Path::new("/node/wal"),
        WalOptions {
            io: io.clone(),
            segment_bytes_max: 64 * 1024,
            fsync_batches: true,
            on_fsync: None,
        },
    )
}

/// Starts node `id` on `disk` and adds it to the network.
pub async fn start(router: &Router, id: u64, disk: &SimIo) -> Member {
    let io: Arc<dyn cairn_storage::io::Io> = Arc::new(disk.clone());
    let wal = open_unlocked("WAL", || open_wal(&io)).await;
    let log = LogStore::new(Arc::new(wal), GROUP);
    let recorder = Arc::new(Recorder::default());
    let sm = open_unlocked("replica", || {
        StateMachine::open(io.clone(), Path::new("/node/shard"), engine_options())
    })
    .await
    .observed(recorder.clone());
    let net = Net {
        router: router.clone(),
        from: id,
    };
    let raft = Raft::new(id, config(), net, log, sm.clone())
        .await
        .expect("start raft");
    let member = Member {
        raft,
        sm,
        observed: Some(recorder),
    };
    router.add(id, member.clone());
    member
}

/// Stops node `id` (its disk stays as it is).
pub async fn stop(router: &Router, id: u64) {
    if let Some(member) = router.remove(id) {
        let _ = member.raft.shutdown().await;
    }
}

/// Stops every node of a three-node test group.
pub async fn stop_all(router: &Router) {
    for id in 1..=3 {
        stop(router, id).await;
    }
}

pub fn addr(id: u64) -> NodeAddr {
    NodeAddr {
        grpc: format!("node-{id}"),
    }
}

/// The leader, once it accepts writes.
pub async fn leader(router: &Router) -> u64 {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let members: Vec<Member> = router.0.lock().members.values().cloned().collect();
            for m in &members {
                let metrics = m.raft.metrics().borrow_watched().clone();
                // A leader that has committed an entry of its own term and heard from a quorum
                // (its lease) accepts writes.
                if metrics.current_leader == Some(metrics.id)
                    && metrics.state == openraft::ServerState::Leader
                    && metrics.last_quorum_acked.is_some()
                    && metrics
                        .cluster_committed
                        .as_ref()
                        .is_some_and(|c| c.leader_id.term == metrics.current_term)
                {
                    return metrics.id;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a leader within the patience")
}

/// The `n`th write of a test: a put, sometimes with a deadline far ahead, sometimes a delete.
pub fn request(n: u64) -> Request {
    let mut ops = vec![WriteOp::Put {
        key: Bytes::from(format!("key-{:02}", n % 37)),
        value: Bytes::from(format!("value-{n}-").repeat(1 + (n % 13) as usize)),
        expires_at_ms: (n % 5 == 0).then_some(4_000_000_000_000 + n),
    }];
    if n % 7 == 0 {
        ops.push(WriteOp::Delete {
            key: Bytes::from(format!("key-{:02}", n % 11)),
        });
    }
    if n % 13 == 5 {
        ops.push(WriteOp::Expire {
            key: Bytes::from(format!("key-{:02}", n % 17)),
        });
    }
    if n % 61 == 60 {
        // A FLUSHDB between two puts: the first is cleared, the second survives.
        ops.push(WriteOp::Clear);
        ops.push(WriteOp::Put {
            key: Bytes::from(format!("after-clear-{n}")),
            value: Bytes::from_static(b"v"),
            expires_at_ms: None,
        });
    }
    Request { ops }
}

/// Writes acknowledged by the group, by log index.
#[derive(Debug, Default, Clone)]
pub struct History(pub BTreeMap<u64, Request>);

impl History {
    /// What a replica that applied up to `index` must hold.
    pub fn contents_at(&self, index: u64) -> Contents {
        let mut out = Contents::new();
        for (&i, request) in self.0.range(..=index) {
            for op in &request.ops {
                match op {
                    WriteOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => {
                        out.insert(key.clone(), (value.clone(), i, *expires_at_ms));
                    }
                    WriteOp::Delete { key } | WriteOp::Expire { key } => {
                        out.remove(key);
                    }
                    WriteOp::Clear => out.clear(),
                    // The system table is not part of a replica's keyspace contents.
                    WriteOp::SystemPut { .. } | WriteOp::SystemDelete { .. } => {}
                    WriteOp::Split { .. } => panic!("these tests never split"),
                }
            }
        }
        out
    }
}

/// Writes `count` requests through `leader`, recording each at the index it was applied at.
pub async fn write(leader: &Member, history: &mut History, count: u64) {
    for _ in 0..count {
        let n = history.0.len() as u64;
        let response = match leader.raft.client_write(request(n)).await {
            Ok(r) => r,
            Err(e) => {
                let m = leader.raft.metrics().borrow_watched().clone();
                panic!("write {n}: {e}; leader metrics: {m:?}");
            }
        };
        assert_eq!(response.data.index, response.log_id.index);
        history.0.insert(response.log_id.index, request(n));
    }
}

/// What `member`'s engine holds.
pub fn contents(member: &Member) -> Contents {
    member
        .sm
        .engine()
        .scan(
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            usize::MAX,
        )
        .expect("scan")
        .into_iter()
        .map(|e| (e.key, (e.value, e.version, e.expires_at_ms)))
        .collect()
}

/// Waits until `member` has applied `index`.
pub async fn applied(member: &Member, index: u64) {
    member
        .raft
        .wait(Some(PATIENCE))
        .applied_index_at_least(Some(index), "catch up")
        .await
        .expect("applied within the patience");
}

/// The last log index `member` knows of.
pub fn last_index(member: &Member) -> u64 {
    member
        .raft
        .metrics()
        .borrow_watched()
        .last_log_index
        .unwrap_or(0)
}

/// Engine directories in `disk`'s replica (waits for retired ones to go).
pub async fn engine_dirs(disk: &SimIo) -> Vec<String> {
    use cairn_storage::io::Io;
    let list = || {
        let mut names: Vec<String> = disk
            .list_dir(Path::new("/node/shard"))
            .expect("list replica")
            .into_iter()
            .filter(|n| n.starts_with("engine-"))
            .collect();
        names.sort();
        names
    };
    for _ in 0..500 {
        if list().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    list()
}

/// Waits up to [`PATIENCE`] for `done` to hold (counters the network bumps when an RPC returns
/// may trail what the receiver already shows).
pub async fn eventually(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
