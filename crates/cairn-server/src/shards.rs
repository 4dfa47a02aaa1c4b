//! The node's shards and the data-directory layout that holds them.
//!
//! Layout (version 2): `node.toml` (node name, Raft node id and shard count, written once when
//! the directory is created), `wal/` (the node's write-ahead log: every Raft group's log) and
//! `shards/NNNNN/` (one replica directory per shard, see `cairn_raft::replica`). Every file and
//! directory is reached through the node's [`Io`], and every one it creates is made durable in
//! its parent before anything depends on it: `node.toml` before `shards/` exists (so a
//! directory with shards always says how many), each directory's entry before the first write
//! in it is acknowledged.
//!
//! Layout 1 (a single node's commit log, before replication) is refused with an error that
//! names it: its log holds entries spanning shards that no Raft group can own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use cairn_io::Io;
use cairn_raft::replica::Replica;
use cairn_raft::split::SplitAt;
use cairn_raft::{
    ApplyObserver, Group, Groups, LogStore, NodeAddr, Peers, SplitDone, SplitFuture, Splitter,
    StateMachine,
};
use cairn_storage::{Engine, Options, SyncPolicy};
use cairn_wal::Wal;
use serde::{Deserialize, Serialize};

use crate::expiry::ExpiryTracker;
use crate::feed::{Feed, FeedLimits};
use crate::health::WriteHealth;
use crate::proposer::{self, ShardHandles};
use crate::replicas::{Incarnation, ReplicaBook, replica_dir};
use crate::shard::{SHARD_CACHE_BYTES, Shard, SlotRange, group_of_shard};
use crate::slot::{SLOT_COUNT, SlotMap, key_slot};

/// Name of the file recording the node's identity in the data directory.
pub const NODE_FILE: &str = "node.toml";
/// Version of the data-directory layout.
pub const LAYOUT_VERSION: u32 = 2;
/// Deletes the replica and log directories of `data_dir` that exist ([`REPLICA_DIRS`]).
fn delete_replicas(io: &dyn Io, data_dir: &Path) -> anyhow::Result<()> {
    for name in REPLICA_DIRS {
        let dir = data_dir.join(name);
        cairn_io::remove_dir_all_durable(io, &dir)
            .map_err(|e| anyhow::anyhow!("cannot delete {}: {e}", dir.display()))?;
    }
    // The book of the replicas' incarnations goes with them.
    let book = data_dir.join(crate::replicas::BOOK_FILE);
    match io.remove(&book) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::anyhow!("cannot delete {}: {e}", book.display()))
        }
        _ => io.sync_dir(data_dir).map_err(Into::into),
    }
}

/// The Raft node id of the node that bootstraps a cluster.
pub const FIRST_NODE_ID: u64 = 1;

/// What the data directory records about the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub layout_version: u32,
    /// 40 lowercase hex characters, like a Redis Cluster node id.
    pub node_id: String,
    /// The node's id in every Raft group.
    pub raft_id: u64,
    pub shards: u32,
    /// The node joined an existing cluster (`--join`): it never bootstraps a group; the
    /// groups' leaders add it. A node that created its cluster bootstraps every group it finds
    /// uninitialised.
    #[serde(default)]
    pub joined: bool,
    /// Why the cluster removed this node, once it did ([`NodeIdentity::forget`]): its
    /// replicas and log are deleted, and a start on this directory is refused with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
}

/// The directories of a node's replicas and log (`meta/`, `wal/`, `shards/`): what a node
/// the cluster removed deletes, with the book of its replicas (`replicas.json`).
const REPLICA_DIRS: [&str; 3] = ["shards", "meta", "wal"];

impl NodeIdentity {
    /// Reads the identity of `data_dir`; `None` when the directory has none yet.
    pub fn load(io: &dyn Io, data_dir: &Path) -> anyhow::Result<Option<NodeIdentity>> {
        let path = data_dir.join(NODE_FILE);
        let text = io.open(&path).and_then(|f| f.read_all()).and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        match text {
            Ok(text) => {
                #[derive(Deserialize)]
                struct Version {
                    layout_version: u32,
                }
                let version: Version = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
                anyhow::ensure!(
                    version.layout_version == LAYOUT_VERSION,
                    "{} has data layout version {}; this build reads version {LAYOUT_VERSION} \
                     only (layout 1 is a single node's commit log from before replication: \
                     export its keys with a build of that version, e.g. `redis-cli --scan` and \
                     DUMP/RESTORE or `cairn scan`, and load them into a new data directory)",
                    path.display(),
                    version.layout_version
                );
                let identity: NodeIdentity = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
                Ok(Some(identity))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Shards without the file that says how many there are would be routed wrongly.
                let shards_dir = data_dir.join("shards");
                anyhow::ensure!(
                    !io.exists(&shards_dir)?,
                    "{} is missing but {} exists; refusing to guess the shard count",
                    path.display(),
                    shards_dir.display()
                );
                Ok(None)
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// The cluster removed this node (`reason`): records it in `node.toml`, then deletes the
    /// node's replicas and log. Every group dropped the node before the map removed it, so
    /// nothing there is needed any more; `node.toml` stays, so that a start on this
    /// directory is refused with the reason ([`NodeIdentity::refuse_if_removed`]) rather than
    /// asking the cluster again.
    pub fn forget(mut self, io: &dyn Io, data_dir: &Path, reason: &str) -> anyhow::Result<()> {
        self.removed = Some(reason.to_string());
        // Never a directory that bootstraps a cluster again, even for a build that does not
        // know `removed`.
        self.joined = true;
        let path = data_dir.join(NODE_FILE);
        cairn_io::write_file_atomic(io, &path, toml::to_string(&self)?.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        delete_replicas(io, data_dir)
    }

    /// Refuses to open a directory whose node the cluster removed, after finishing the
    /// deletion [`NodeIdentity::forget`] began (a crash may have cut it short).
    pub fn refuse_if_removed(&self, io: &dyn Io, data_dir: &Path) -> anyhow::Result<()> {
        let Some(reason) = &self.removed else {
            return Ok(());
        };
        delete_replicas(io, data_dir)?;
        anyhow::bail!(
            "{reason} (its replicas in {} were deleted when it was removed)",
            data_dir.display()
        )
    }

    /// A new identity: a fresh name unless `name` is given.
    pub fn new(name: Option<String>, raft_id: u64, shards: u32, joined: bool) -> NodeIdentity {
        NodeIdentity {
            layout_version: LAYOUT_VERSION,
            node_id: name.unwrap_or_else(new_node_name),
            raft_id,
            shards,
            joined,
            removed: None,
        }
    }

    /// Records this identity in `data_dir` (created durably if missing).
    pub fn create(&self, io: &dyn Io, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(NODE_FILE);
        cairn_io::create_dir_all_durable(io, data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", data_dir.display()))?;
        cairn_io::write_file_atomic(io, &path, toml::to_string(self)?.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// Read the identity of `data_dir`, or create it with a fresh name, Raft id `raft_id` and
    /// `shards` shards (a node that creates its own cluster).
    pub fn load_or_create(
        io: &dyn Io,
        data_dir: &Path,
        raft_id: u64,
        shards: u32,
    ) -> anyhow::Result<NodeIdentity> {
        if let Some(identity) = Self::load(io, data_dir)? {
            return Ok(identity);
        }
        let identity = NodeIdentity::new(None, raft_id, shards, false);
        identity.create(io, data_dir)?;
        Ok(identity)
    }
}

pub fn new_node_name() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Directory of the node's write-ahead log.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Directory of the metadata group's replica.
pub fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("meta")
}

/// Directory of shard `id`'s replica.
pub fn shard_dir(data_dir: &Path, id: u32) -> PathBuf {
    data_dir.join("shards").join(format!("{id:05}"))
}

/// What opening the shards needs.
#[derive(Debug, Clone)]
pub struct ShardsSetup {
    pub io: Arc<dyn Io>,
    pub data_dir: PathBuf,
    pub identity: NodeIdentity,
    pub value_bytes_max: usize,
    pub engine_segment_bytes_max: u64,
    pub wal: Arc<Wal>,
    pub peers: Arc<Peers>,
    pub groups: Arc<Groups>,
    pub config: Arc<cairn_raft::config::RaftConfig>,
    pub health: Arc<WriteHealth>,
    /// How other nodes reach this one (recorded in group memberships).
    pub advertise: NodeAddr,
    /// The node's wall clock, which every replica's engine compares deadlines with.
    pub clock: Arc<dyn cairn_storage::Clock>,
    /// How much change history each shard replica keeps.
    pub feed_limits: FeedLimits,
    /// Bumped after every apply of every shard: what watchers sleep on.
    pub feed_wake: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ShardsSetup {
    fn engine_options(&self) -> Options {
        Options {
            // The WAL is the durable record; a snapshot (engine checkpoint) syncs what it holds.
            sync: SyncPolicy::Never,
            value_bytes_max: self.value_bytes_max,
            segment_bytes_max: self.engine_segment_bytes_max,
            cache_bytes: SHARD_CACHE_BYTES,
            clock: self.clock.clone(),
            ..Options::default()
        }
    }
}

/// The key of a shard replica's record in its engine's system table.
pub const SHARD_RECORD_KEY: &[u8] = b"s";

/// What a shard replica records about the shard itself, in its engine's system table (so it
/// changes atomically with the data, and a snapshot carries it): its slot range and the
/// shards split from it. A shard of the cluster's first layout has none until it splits: its
/// range is its share of [`SlotMap::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Inclusive slot range.
    pub first: u16,
    pub last: u16,
    /// Shards split from this one, oldest first, with the slots each took: a replica that
    /// learns of a child from this record (a snapshot of the parent) routes those slots to
    /// it before it holds any of the child's data.
    pub children: Vec<Child>,
    /// The parent's log index of the split that created this shard (0: the first layout);
    /// the shard's own log starts after it, and so do watches of it that a resume token from
    /// before the split does not position.
    pub created_at: u64,
}

/// A shard split from another, as its parent's record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    pub id: u32,
    /// The slots it took, inclusive (it may have given some away since, in splits of its own).
    pub first: u16,
    pub last: u16,
}

impl ShardRecord {
    /// Whether `id` was split from this shard.
    pub fn has_child(&self, id: u32) -> bool {
        self.children.iter().any(|c| c.id == id)
    }

    /// The record in `engine`, if it has one.
    pub fn read(engine: &Engine) -> Option<ShardRecord> {
        let bytes = engine.system_get(SHARD_RECORD_KEY)?;
        match postcard::from_bytes(&bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::error!(error = %e, "a shard record does not decode");
                None
            }
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("a shard record serialises"))
    }
}

/// What [`Shards::shard_of_key`] answers for a slot no shard here owns.
pub const UNMAPPED: u32 = u32::MAX;

/// Shard ids a node can hold: the first layout's and those splits took (never reused).
pub const SHARD_IDS_MAX: u32 = 32768;
/// Shard ids per chunk of the by-id table.
const ID_CHUNK: usize = 256;

/// Shard replicas by id: a lookup takes no lock and clones nothing on its fast path
/// (`arc_swap`'s guards; chunks of [`ID_CHUNK`] ids are allocated as ids are used). A replica
/// is replaced only by its removal (the node left the shard's group) and, later, a new one.
struct ById {
    chunks: Box<[std::sync::OnceLock<IdChunk>]>,
}

/// [`ID_CHUNK`] consecutive ids' shards.
type IdChunk = Box<[arc_swap::ArcSwapOption<Shard>]>;

/// A shard replica as a lookup found it: derefs to the shard, and keeps it alive while held
/// (a replica removed meanwhile stays readable through it).
#[derive(Debug)]
pub struct ShardRef(arc_swap::Guard<Option<Arc<Shard>>>);

impl std::ops::Deref for ShardRef {
    type Target = Arc<Shard>;

    fn deref(&self) -> &Arc<Shard> {
        self.0.as_ref().expect("a ShardRef holds a shard")
    }
}

/// A shard the caller already holds, or one a lookup found.
#[derive(Debug)]
pub enum ShardHandle<'a> {
    Borrowed(&'a Shard),
    Found(ShardRef),
}

impl std::ops::Deref for ShardHandle<'_> {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        match self {
            ShardHandle::Borrowed(shard) => shard,
            ShardHandle::Found(found) => found,
        }
    }
}

impl ById {
    fn new() -> ById {
        let chunks = (0..SHARD_IDS_MAX as usize / ID_CHUNK)
            .map(|_| std::sync::OnceLock::new())
            .collect();
        ById { chunks }
    }

    fn get(&self, id: u32) -> Option<ShardRef> {
        let (chunk, i) = (id as usize / ID_CHUNK, id as usize % ID_CHUNK);
        let guard = self.chunks.get(chunk)?.get()?.get(i)?.load();
        guard.is_some().then(|| ShardRef(guard))
    }

    fn insert(&self, shard: Arc<Shard>) -> anyhow::Result<()> {
        let id = shard.id as usize;
        let chunk = self
            .chunks
            .get(id / ID_CHUNK)
            .ok_or_else(|| anyhow::anyhow!("shard id {id} is past {SHARD_IDS_MAX}"))?;
        let chunk = chunk.get_or_init(|| {
            (0..ID_CHUNK)
                .map(|_| arc_swap::ArcSwapOption::empty())
                .collect()
        });
        let old = chunk[id % ID_CHUNK].compare_and_swap(&None::<Arc<Shard>>, Some(shard));
        if old.is_some() {
            anyhow::bail!("shard {id} opened twice");
        }
        Ok(())
    }

    /// Takes shard `id` out, if it is here.
    fn remove(&self, id: u32) -> Option<Arc<Shard>> {
        let (chunk, i) = (id as usize / ID_CHUNK, id as usize % ID_CHUNK);
        self.chunks.get(chunk)?.get()?.get(i)?.swap(None)
    }
}

/// Every shard replica of the node, and the slot map that routes keys to them. Shards come
/// into being as splits are applied (or as a replica learns of a split from a snapshot); none
/// goes away. The slot map is one atomic shard id per slot, rewritten when a range changes.
pub struct Shards {
    setup: ShardsSetup,
    by_id: ById,
    /// Every shard's id, in order.
    ids: parking_lot::RwLock<Vec<u32>>,
    /// The shard owning each slot ([`UNMAPPED`]: none known here).
    owner: Box<[std::sync::atomic::AtomicU32]>,
    /// Serialises rewrites of `owner`.
    remapping: parking_lot::Mutex<()>,
    /// Bumped after every change of the slot map ([`Shards::routing_epoch`]).
    routing_epoch: std::sync::atomic::AtomicU64,
    /// The tiling of the slot map ([`Shards::routed_ranges`]) and the epoch it was read at.
    tiling: parking_lot::Mutex<Option<(u64, Tiling)>>,
    /// One lock per shard id, held while its replica opens (at start, for a split, for a
    /// snapshot naming children): a replica opens once. Per shard, because a parent's group
    /// replays a split while the parent is being opened, and then opens the child.
    opening: parking_lot::Mutex<std::collections::HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    /// Every replica's slot range from the moment its engine is open (before its group
    /// replays anything), so that a split replayed while the parent is still being opened
    /// shrinks the range the parent will have.
    ranges: parking_lot::Mutex<std::collections::HashMap<u32, Arc<SlotRange>>>,
    /// The slots a split gave each child, as its parent's record says: the range of a
    /// child's replica that holds no record of its own yet.
    taken: parking_lot::Mutex<std::collections::HashMap<u32, (u16, u16)>>,
    /// Which incarnation of each shard's replica is live here, and which were removed.
    book: ReplicaBook,
    /// Every shard's slots as the cluster map's placements say (each reported by the shard's
    /// leader): how slots of shards without a replica here are routed.
    placed: parking_lot::Mutex<BTreeMap<u32, (u16, u16)>>,
    me: Weak<Shards>,
    /// Tests only: a split's apply waits for a permit before it builds the child.
    #[cfg(test)]
    pub(crate) hold_splits: parking_lot::Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("ids", &*self.ids.read())
            .finish()
    }
}

impl Shards {
    /// Opens every shard's replica and starts its Raft group and proposer: the first layout's
    /// shards (a group never initialised is bootstrapped with this node as its only voter,
    /// unless the node joined), then every shard their records name as split from them. A
    /// child whose parent here does not name it yet is the parent's to create when it applies
    /// the split again.
    pub async fn open(setup: ShardsSetup) -> anyhow::Result<Arc<Shards>> {
        let count = setup.identity.shards;
        let book = ReplicaBook::load(setup.io.clone(), &setup.data_dir)?;
        let shards = Arc::new_cyclic(|me| Shards {
            setup,
            by_id: ById::new(),
            ids: Default::default(),
            owner: (0..SLOT_COUNT)
                .map(|_| std::sync::atomic::AtomicU32::new(UNMAPPED))
                .collect(),
            remapping: Default::default(),
            routing_epoch: Default::default(),
            tiling: Default::default(),
            opening: Default::default(),
            ranges: Default::default(),
            taken: Default::default(),
            book,
            placed: Default::default(),
            me: me.clone(),
            #[cfg(test)]
            hold_splits: Default::default(),
        });
        let held = shards.sweep()?;
        // A data directory from before the book: its first layout's replicas are live (the
        // children split from them are opened from their records below; a child's directory
        // alone may be a build a crash cut short, which its parent's log builds again).
        if !shards.book.existed() {
            for id in held.iter().filter(|id| **id < count) {
                if !shards.book.knows(*id) {
                    shards.book.set(*id, Incarnation::FIRST)?;
                }
            }
        }
        // The first layout's shards on the node that created the cluster (bootstrapped when
        // their groups are new), every replica the book records as live here (created for
        // its group's leader, or by a split), then every child their records name (a split
        // a crash cut short before the book recorded its child).
        let creator = !shards.setup.identity.joined;
        let mut queue: Vec<u32> = (0..count)
            .filter(|id| creator && !shards.book.knows(*id))
            .chain(held.into_iter().filter(|id| shards.book.knows(*id)))
            .collect();
        queue.sort_unstable_by(|a, b| b.cmp(a));
        queue.dedup();
        while let Some(id) = queue.pop() {
            let shard = shards.ensure(id, None).await?;
            if let Some(record) = ShardRecord::read(&shard.engine()) {
                shards.note_children(&record);
                queue.extend(
                    record
                        .children
                        .iter()
                        .rev()
                        .map(|c| c.id)
                        .filter(|c| !shards.removed_here(*c)),
                );
            }
        }
        shards
            .setup
            .groups
            .set_host(Arc::new(ShardHost(Arc::downgrade(&shards))));
        Ok(shards)
    }

    /// At open: deletes what removed incarnations left behind (a crash in the middle of a
    /// removal: their directories, their logs' entries) and returns the shards whose live
    /// replica has a directory here.
    fn sweep(&self) -> anyhow::Result<Vec<u32>> {
        let io = &*self.setup.io;
        let root = self.setup.data_dir.join("shards");
        let mut held = Vec::new();
        if io.exists(&root)? {
            for name in io.list_dir(&root)? {
                let Some((id, generation)) = crate::replicas::parse_replica_dir(&name) else {
                    continue;
                };
                let dir = root.join(&name);
                if self.book.get(id).is_dead(generation) {
                    tracing::info!(
                        node = self.setup.identity.raft_id,
                        shard = id,
                        generation,
                        "deleting a removed replica's files"
                    );
                    cairn_io::remove_dir_all_durable(io, &dir)?;
                } else if Replica::is_present(io, &dir)? {
                    held.push(id);
                }
            }
        }
        let wal = &self.setup.wal;
        let mut dead = Vec::new();
        for wal_group in wal.groups() {
            let (group, generation) = crate::replicas::of_wal_group(wal_group);
            let Some(id) = group.checked_sub(1) else {
                continue;
            };
            let has_entries = wal.group(wal_group).is_some_and(|g| g.last_index.is_some());
            if has_entries && self.book.get(id as u32).is_dead(generation) {
                dead.push(cairn_wal::Op::TruncateFrom {
                    group: wal_group,
                    index: 0,
                });
            }
        }
        if !dead.is_empty() {
            wal.write(dead)?;
        }
        Ok(held)
    }

    /// Opens a replica of shard `id` for a leader's message of term `term` (this node was
    /// just added to the shard's group): the live incarnation, or a new one after a removal
    /// in an older or the same term; none after a removal in a newer term.
    async fn open_on_contact(&self, id: u32, term: u64) -> Option<Group> {
        let lock = self.opening(id);
        let _one = lock.lock().await;
        if let Some(shard) = self.get(id) {
            return Some(shard.group.clone());
        }
        let known = self.book.get(id);
        let Some(next) = known.next_for(term) else {
            tracing::debug!(
                shard = id,
                term,
                removed = ?known.removed_term,
                "a deposed leader's message for a removed replica: ignored"
            );
            return None;
        };
        if let Err(e) = self.book.set(id, next) {
            tracing::error!(node = self.setup.identity.raft_id, shard = id, error = %e, "cannot record a new replica");
            return None;
        }
        match self.ensure_locked(id, None).await {
            Ok(shard) => {
                tracing::info!(
                    node = self.setup.identity.raft_id,
                    shard = id,
                    generation = next.generation,
                    "replica created for the group's leader"
                );
                Some(shard.group.clone())
            }
            Err(e) => {
                tracing::error!(node = self.setup.identity.raft_id, shard = id, error = %e, "cannot create a replica");
                None
            }
        }
    }

    /// Deletes this node's replica of shard `id`, which the group dropped from its membership
    /// (of log index `removed_index`, reported in `term`): recorded in the book first (durably), then taken out of routing, its group
    /// stopped, its log's entries and its directory deleted. Watchers of its feed end
    /// (`NotHere`: they resume elsewhere).
    ///
    /// `membership` is the newest membership index the replica knew when it was found
    /// dropped: if it learned a newer one since (its node added again meanwhile), nothing
    /// is removed; once its group is stopped that is checked again, and a replica that
    /// learned one in between is opened again instead.
    pub async fn remove_replica(
        &self,
        id: u32,
        term: u64,
        removed_index: u64,
        membership: u64,
    ) -> anyhow::Result<()> {
        let lock = self.opening(id);
        let _one = lock.lock().await;
        let Some(shard) = self.by_id.get(id).map(|s| Arc::clone(&s)) else {
            return Ok(());
        };
        if shard.group.membership_index() != membership || shard.group.leading().is_some() {
            return Ok(());
        }
        // Retired first: a request that found the replica goes to the shard's leader by the
        // map instead of failing on the stopped group; its watchers resume elsewhere.
        shard.feed.retire();
        shard.group.shutdown().await;
        if shard.group.membership_index() != membership {
            tracing::info!(
                node = self.setup.identity.raft_id,
                shard = id,
                "a dropped replica was added again: reopened"
            );
            self.by_id.remove(id);
            self.ids.write().retain(|&i| i != id);
            self.ranges.lock().remove(&id);
            self.setup.groups.remove(group_of_shard(id));
            self.ensure_locked(id, None).await?;
            return Ok(());
        }
        let known = self.book.get(id);
        let generation = known.generation;
        self.book.set(
            id,
            Incarnation {
                removed_term: Some(term),
                removed_index,
                ..known
            },
        )?;
        self.by_id.remove(id);
        self.ids.write().retain(|&i| i != id);
        self.ranges.lock().remove(&id);
        self.remap();
        let group = group_of_shard(id);
        self.setup.groups.remove(group);
        self.setup.wal.write(vec![cairn_wal::Op::TruncateFrom {
            group: crate::replicas::wal_group(group, generation),
            index: 0,
        }])?;
        let dir = replica_dir(&self.setup.data_dir, id, generation);
        cairn_io::remove_dir_all_durable(&*self.setup.io, &dir)?;
        tracing::info!(
            node = self.setup.identity.raft_id,
            shard = id,
            generation,
            term,
            "replica removed: the group dropped this node"
        );
        Ok(())
    }

    /// The incarnation of shard `id` on this node: of its replica here, or of the last one
    /// removed.
    pub fn generation(&self, id: u32) -> u32 {
        self.book.get(id).generation
    }

    /// Whether this node's replica of shard `id` was removed (and no newer one created).
    pub fn removed_here(&self, id: u32) -> bool {
        self.book.get(id).removed_term.is_some()
    }

    /// Every shard as of now, by id.
    pub fn list(&self) -> Vec<Arc<Shard>> {
        self.ids
            .read()
            .iter()
            .filter_map(|id| self.by_id.get(*id).map(|s| Arc::clone(&s)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ids.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.read().is_empty()
    }

    /// The shard owning `slot` ([`UNMAPPED`] while no shard here owns it: a split child not
    /// built yet; asking for it is `TRYAGAIN`).
    pub fn owner(&self, slot: u16) -> u32 {
        self.owner[usize::from(slot)].load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every shard the slot map routes a slot to (held here or not).
    pub fn routed(&self) -> std::collections::BTreeSet<u32> {
        let mut ids = std::collections::BTreeSet::new();
        let mut last = UNMAPPED;
        for slot in 0..SLOT_COUNT {
            let id = self.owner(slot);
            if id != last && id != UNMAPPED {
                ids.insert(id);
            }
            last = id;
        }
        ids
    }

    /// The slots the slot map routes to each shard, when they tile the keyspace: see
    /// [`tiling`].
    /// Read once per change of the slot map, and kept.
    pub fn routed_ranges(&self) -> Tiling {
        let epoch = self.routing_epoch();
        if let Some((at, tiled)) = &*self.tiling.lock() {
            if *at == epoch {
                return tiled.clone();
            }
        }
        let tiled = tiling((0..SLOT_COUNT).map(|slot| self.owner(slot))).map(Arc::new);
        // Kept only if no change was under way when it was read (an odd epoch: a change
        // part written) and the map did not change while it was read.
        if epoch % 2 == 0 && self.routing_epoch() == epoch {
            *self.tiling.lock() = Some((epoch, tiled.clone()));
        }
        tiled
    }

    /// A number that changes whenever the slot map does: a check of the map made at one
    /// epoch still holds while the epoch is the same.
    pub fn routing_epoch(&self) -> u64 {
        self.routing_epoch
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The shard owning `key`'s slot ([`UNMAPPED`]: see [`Shards::owner`]).
    pub fn shard_of_key(&self, key: &[u8]) -> u32 {
        self.owner(key_slot(key))
    }

    pub fn for_key(&self, key: &[u8]) -> Option<ShardRef> {
        self.get(self.shard_of_key(key))
    }

    pub fn get(&self, id: u32) -> Option<ShardRef> {
        self.by_id.get(id)
    }

    /// Routes the slots of shards this node holds no replica of as the cluster map's
    /// placements say (`(shard, first slot, last slot)`).
    pub fn set_placed(&self, placed: impl IntoIterator<Item = (u32, u16, u16)>) {
        let placed: BTreeMap<u32, (u16, u16)> = placed
            .into_iter()
            .map(|(id, first, last)| (id, (first, last)))
            .collect();
        {
            let mut known = self.placed.lock();
            if *known == placed {
                return;
            }
            *known = placed;
        }
        self.remap();
    }

    /// The slot map again, after a range changed. Where two shards claim a slot (a restart
    /// can find a split child built while its parent's replica has not applied the split
    /// yet; the map's placement of a parent may predate its split), the higher id, the newer
    /// shard, owns it. This node's replicas and the map's placements both count.
    fn remap(&self) {
        let _one = self.remapping.lock();
        let mut owner = vec![UNMAPPED; usize::from(SLOT_COUNT)];
        let mut claim = |id: u32, first: u16, last: u16| {
            for slot in &mut owner[usize::from(first)..=usize::from(last.min(SLOT_COUNT - 1))] {
                if *slot == UNMAPPED || *slot < id {
                    *slot = id;
                }
            }
        };
        for shard in self.list() {
            if let Some((first, last)) = shard.slots() {
                claim(shard.id, first, last);
            }
        }
        for (&id, &(first, last)) in self.placed.lock().iter() {
            claim(id, first, last);
        }
        // Bumped before and after: a reader that saw the same epoch on both sides of its
        // read of the map read no slot of a change in progress.
        self.routing_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        for (slot, id) in owner.into_iter().enumerate() {
            self.owner[slot].store(id, std::sync::atomic::Ordering::Release);
        }
        self.routing_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The range of shard `id` before its replica holds a record: the first layout's, or for
    /// a shard a split created, the slots its parent's record says it took.
    fn initial_range(&self, id: u32) -> Option<(u16, u16)> {
        let count = self.setup.identity.shards;
        if id < count {
            return Some(SlotMap::new(count).range(id as usize));
        }
        self.taken.lock().get(&id).copied()
    }

    /// Remembers the slots each child of `record` took.
    fn note_children(&self, record: &ShardRecord) {
        let mut taken = self.taken.lock();
        for child in &record.children {
            taken.insert(child.id, (child.first, child.last));
        }
    }

    /// The range a replica's engine says, or the first layout's.
    fn range_of(&self, id: u32, engine: &Engine) -> Option<(u16, u16)> {
        match ShardRecord::read(engine) {
            Some(record) => Some((record.first, record.last)),
            None => self.initial_range(id),
        }
    }

    /// Shard `id`'s opening lock.
    fn opening(&self, id: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.opening.lock().entry(id).or_default().clone()
    }

    /// Shard `id`, opened if it is not yet (with `built`, the replica a split just built).
    async fn ensure(&self, id: u32, built: Option<Replica>) -> anyhow::Result<Arc<Shard>> {
        let lock = self.opening(id);
        let _one = lock.lock().await;
        self.ensure_locked(id, built).await
    }

    /// [`Shards::ensure`], with shard `id`'s opening lock held by the caller.
    async fn ensure_locked(&self, id: u32, built: Option<Replica>) -> anyhow::Result<Arc<Shard>> {
        if let Some(shard) = self.get(id) {
            return Ok(shard.clone());
        }
        let split_now = built.is_some();
        let shard = Arc::new(self.open_shard(id, built).await?);
        self.by_id.insert(shard.clone())?;
        {
            let mut ids = self.ids.write();
            let at = ids.partition_point(|&i| i < id);
            ids.insert(at, id);
        }
        self.remap();
        if split_now {
            tracing::info!(shard = id, slots = ?shard.slots(), "split created the shard");
        }
        Ok(shard)
    }

    async fn open_shard(&self, id: u32, built: Option<Replica>) -> anyhow::Result<Shard> {
        let incarnation = self.book.get(id);
        let generation = incarnation.generation;
        let dir = replica_dir(&self.setup.data_dir, id, generation);
        let group = group_of_shard(id);
        let range = self
            .ranges
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(SlotRange::new(None)))
            .clone();
        let leaving = Arc::new(SlotRange::new(None));
        let extra = Extras {
            splitter: Some(Arc::new(ShardSplitter {
                shards: self.me.clone(),
                parent: id,
            })),
            observer: Some(Arc::new(RecordObserver {
                shards: self.me.clone(),
                id,
            })),
            built,
            range: Some((range.clone(), leaving.clone())),
            initial_range: self.initial_range(id),
            generation,
            vote_floor: incarnation.floor_term,
            floor: incarnation.membership_floor(),
            // Only the first incarnation of a first-layout shard on the node that created the
            // cluster: any other is created by its group's leader.
            bootstrap: Some(
                !self.setup.identity.joined && id < self.setup.identity.shards && generation == 0,
            ),
        };
        let opened = open_replica_with(&self.setup, &dir, group, id.to_string(), extra).await?;
        Ok(Shard {
            id,
            range,
            leaving,
            group: opened.group,
            expiry: opened.expiry,
            feed: opened.feed.expect("a shard's replica has a feed"),
            proposals: opened.proposals,
        })
    }

    /// Applies a split of shard `parent` on this node ([`cairn_raft::split`]): builds the
    /// child's replica and starts its group, then shrinks the parent's range; answers the
    /// parent's new record for its batch, which deletes the keys it gave away.
    async fn split(&self, parent: u32, at: SplitAt) -> anyhow::Result<Option<SplitDone>> {
        let old = match ShardRecord::read(&at.parent) {
            Some(record) => record,
            None => {
                let (first, last) = self
                    .initial_range(parent)
                    .ok_or_else(|| anyhow::anyhow!("shard {parent} has no slot range"))?;
                ShardRecord {
                    first,
                    last,
                    children: Vec::new(),
                    created_at: 0,
                }
            }
        };
        // Decided from the replicated state alone (the same on every replica): a split that
        // does not fit the shard as it is changes nothing. Its proposer checked it against the
        // shard as it was; only a split proposed twice gets here.
        if old.has_child(at.child) || !(old.first < at.first_slot && at.last_slot == old.last) {
            tracing::warn!(
                shard = parent,
                child = at.child,
                split = ?(at.first_slot, at.last_slot),
                range = ?(old.first, old.last),
                "a split entry that does not fit the shard: nothing done"
            );
            return Ok(None);
        }
        let mut kept = old.clone();
        kept.last = at.first_slot - 1;
        kept.children.push(Child {
            id: at.child,
            first: at.first_slot,
            last: at.last_slot,
        });
        let record = ShardRecord {
            first: at.first_slot,
            last: at.last_slot,
            children: Vec::new(),
            created_at: at.log_id.index,
        };
        #[cfg(test)]
        let hold = self.hold_splits.lock().clone();
        #[cfg(test)]
        if let Some(hold) = hold {
            let _ = hold.acquire().await;
        }
        // The child's lock: what opens it at start or for a snapshot waits for the build.
        let lock = self.opening(at.child);
        let held = lock.lock().await;
        // A child whose replica this node already removed (it replays the split from its
        // log) is not built again.
        let open = self.get(at.child).is_some() || self.removed_here(at.child);
        let io = self.setup.io.clone();
        let dir = replica_dir(
            &self.setup.data_dir,
            at.child,
            self.book.get(at.child).generation,
        );
        let options = self.setup.engine_options();
        let system = vec![(Bytes::from_static(SHARD_RECORD_KEY), record.encode())];
        let split = at.clone();
        let (built, moving) = tokio::task::spawn_blocking(move || {
            let moving = cairn_raft::split::moving_keys(&split);
            let built = if open {
                None
            } else {
                cairn_raft::split::build_child(io, &dir, options, &split, &moving, &system)?
            };
            Ok::<_, std::io::Error>((built, moving))
        })
        .await??;
        if !open {
            let child = self.ensure_locked(at.child, built).await?;
            if !self.book.knows(at.child) {
                self.book.set(at.child, Incarnation::FIRST)?;
            }
            if let Some(shard) = self.get(parent) {
                // The child has a leader at once instead of after an election timeout (unless
                // replicas that applied the split first elected one already).
                if shard.group.leading().is_some() && child.group.status().leader.is_none() {
                    let group = child.group.clone();
                    tokio::spawn(async move { group.campaign().await });
                }
            }
        }
        drop(held);
        if let Some(range) = self.ranges.lock().get(&parent) {
            range.set(Some((kept.first, kept.last)));
        }
        self.remap();
        metrics::counter!(crate::metrics::SHARD_SPLITS_APPLIED_TOTAL).increment(1);
        tracing::info!(
            shard = parent,
            child = at.child,
            index = at.log_id.index,
            kept = ?(kept.first, kept.last),
            gave = ?(record.first, record.last),
            keys = moving.len(),
            "split applied"
        );
        Ok(Some(SplitDone {
            moved: moving.into_iter().map(|(_, key)| key).collect(),
            records: vec![(Bytes::from_static(SHARD_RECORD_KEY), kept.encode())],
        }))
    }

    /// A snapshot replaced shard `id`'s engine: its range is the new engine's, and the slots
    /// of every child it names are routed to the child (whose replica, if this node is a
    /// member of its group, the group's leader creates).
    fn adopt(&self, id: u32, engine: &Engine) {
        if let Some(range) = self.ranges.lock().get(&id) {
            range.set(self.range_of(id, engine));
        }
        if let Some(record) = ShardRecord::read(engine) {
            self.note_children(&record);
        }
        self.remap();
    }
}

/// The slot map's tiling: each shard's run of slots, or why the runs do not tile the
/// keyspace ([`Shards::routed_ranges`]).
pub type Tiling = Result<Arc<BTreeMap<u32, (u16, u16)>>, String>;

/// Each shard's run of slots, given the owner of every slot in order, when they tile the
/// keyspace: every slot owned, each shard one contiguous run. Otherwise (a split half known:
/// its child's slots not routed yet, or a stale placement cutting a shard in two) why not: a
/// read of the whole keyspace would miss or repeat keys.
fn tiling(owners: impl IntoIterator<Item = u32>) -> Result<BTreeMap<u32, (u16, u16)>, String> {
    let mut ranges: BTreeMap<u32, (u16, u16)> = BTreeMap::new();
    let mut last = UNMAPPED;
    let mut owners = owners.into_iter();
    for slot in 0..SLOT_COUNT {
        let id = owners.next().unwrap_or(UNMAPPED);
        if id == UNMAPPED {
            return Err(format!("slot {slot} is not routed to any shard here yet"));
        }
        if id == last {
            ranges.get_mut(&id).expect("the run's shard").1 = slot;
            continue;
        }
        if ranges.insert(id, (slot, slot)).is_some() {
            return Err(format!(
                "shard {id} is routed two runs of slots here (a split is half known)"
            ));
        }
        last = id;
    }
    Ok(ranges)
}

/// Opens shard replicas for their groups' leaders: [`Shards::open_on_contact`].
#[derive(Debug)]
struct ShardHost(Weak<Shards>);

impl cairn_raft::GroupHost for ShardHost {
    fn open_on_contact(
        &self,
        group: u64,
        term: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Group>> + Send + '_>> {
        Box::pin(async move {
            let id = u32::try_from(group.checked_sub(1)?).ok()?;
            if id >= SHARD_IDS_MAX {
                return None;
            }
            self.0.upgrade()?.open_on_contact(id, term).await
        })
    }
}

/// Applies splits of one shard's replica: [`Shards::split`].
struct ShardSplitter {
    shards: Weak<Shards>,
    parent: u32,
}

impl Splitter for ShardSplitter {
    fn split(&self, at: SplitAt) -> SplitFuture {
        let shards = self.shards.clone();
        let parent = self.parent;
        Box::pin(async move {
            let shards = shards
                .upgrade()
                .ok_or_else(|| std::io::Error::other("the node is stopping"))?;
            shards
                .split(parent, at)
                .await
                .map_err(|e| std::io::Error::other(format!("split of shard {parent}: {e:#}")))
        })
    }
}

/// Follows snapshot installs of one shard's replica: [`Shards::adopt`].
struct RecordObserver {
    shards: Weak<Shards>,
    id: u32,
}

impl ApplyObserver for RecordObserver {
    fn applied(&self, _index: u64, _ops: &Arc<Vec<cairn_raft::WriteOp>>, _cleared: &[Bytes]) {}

    fn replaced(&self, engine: &Engine, _applied: u64) {
        if let Some(shards) = self.shards.upgrade() {
            shards.adopt(self.id, engine);
        }
    }
}

/// A replica of one group on this node: its Raft, the engine it applies to, and the proposer
/// that evaluates writes while this node leads it.
pub(crate) struct OpenedReplica {
    pub group: Group,
    pub expiry: Arc<ExpiryTracker>,
    /// The shard's change feed (`None` for the metadata group).
    pub feed: Option<Arc<Feed>>,
    pub proposals: tokio::sync::mpsc::Sender<crate::proposer::Proposal>,
}

/// What a shard's replica has that the metadata group's does not.
#[derive(Default)]
struct Extras {
    splitter: Option<Arc<dyn Splitter>>,
    observer: Option<Arc<dyn ApplyObserver>>,
    /// The replica a split just built (its group starts at once, see `Group::start_split`).
    built: Option<Replica>,
    /// The shard's range and the part of it a split is giving away, which its proposer checks
    /// every key against; the range is set from the engine (its record, or `initial_range`)
    /// before the group replays anything.
    range: Option<(Arc<SlotRange>, Arc<SlotRange>)>,
    initial_range: Option<(u16, u16)>,
    /// Which incarnation of the replica (its log's group in the WAL).
    generation: u32,
    /// The term the log votes in at least before the group starts (see
    /// [`Incarnation::floor_term`]).
    vote_floor: u64,
    /// For an incarnation after a removal: the membership its log must pass before it
    /// stands for election or votes.
    floor: Option<cairn_raft::MembershipFloor>,
    /// Whether a group never initialised is bootstrapped with this node as its only voter
    /// (`None`: when this node created the cluster, the metadata group's rule).
    bootstrap: Option<bool>,
}

/// Opens the replica in `dir` as member of Raft group `group` and starts its group and
/// proposer. A group never initialised is bootstrapped with this node as its only voter when
/// this node created the cluster; a node that joined waits for the group's leader to add it.
pub(crate) async fn open_replica(
    setup: &ShardsSetup,
    dir: &Path,
    group: u64,
    label: String,
) -> anyhow::Result<OpenedReplica> {
    open_replica_with(setup, dir, group, label, Extras::default()).await
}

async fn open_replica_with(
    setup: &ShardsSetup,
    dir: &Path,
    group: u64,
    label: String,
    extras: Extras,
) -> anyhow::Result<OpenedReplica> {
    let split_now = extras.built.is_some();
    let sm = match extras.built {
        Some(replica) => StateMachine::of_replica(replica),
        None => StateMachine::open(setup.io.clone(), dir, setup.engine_options())
            .map_err(|e| anyhow::anyhow!("cannot open {label} at {}: {e}", dir.display()))?,
    };
    let record = ShardRecord::read(&sm.engine());
    if let Some((range, _)) = &extras.range {
        range.set(
            record
                .as_ref()
                .map(|r| (r.first, r.last))
                .or(extras.initial_range),
        );
    }
    let expiry = Arc::new(ExpiryTracker::from_engine(&sm.engine()));
    let mut sm = sm.observed(expiry.clone());
    if let Some(splitter) = extras.splitter {
        sm = sm.splitting_with(splitter);
    }
    if let Some(observer) = extras.observer {
        sm = sm.observed(observer);
    }
    let log = LogStore::new(
        setup.wal.clone(),
        crate::replicas::wal_group(group, extras.generation),
    );
    // A split child's log starts purged at the split entry, with a vote in its term
    // (`LogStore::seed`); a crash between building the child and that leaves a built replica
    // with an empty log, seeded here. Only a split's child: any other replica with an empty
    // log lost it, and must not be given a vote it may not have cast.
    if extras.vote_floor > 0 {
        log.raise_vote(extras.vote_floor, setup.identity.raft_id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start {label}'s log: {e}"))?;
    }
    let split_child = record.as_ref().is_some_and(|r| r.created_at > 0);
    if let (Some(applied), true, true) = (sm.applied()?.0, log.is_blank(), split_child) {
        log.seed(&applied, setup.identity.raft_id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start {label}'s log: {e}"))?;
    }
    let feed = match group.checked_sub(1) {
        Some(shard) => {
            let feed = open_feed(setup, &sm, &log, shard as u32)
                .map_err(|e| anyhow::anyhow!("cannot rebuild {label}'s change feed: {e}"))?;
            sm = sm.observed(feed.clone());
            Some(feed)
        }
        None => None,
    };
    let raft_id = setup.identity.raft_id;
    let network = setup.peers.group(group);
    let started = if split_now {
        Group::start_split(raft_id, setup.config.clone(), network, log, sm).await
    } else if let Some(floor) = extras.floor {
        Group::start_past(raft_id, setup.config.clone(), network, log, sm, floor).await
    } else {
        Group::start(raft_id, setup.config.clone(), network, log, sm).await
    };
    let group_handle =
        started.map_err(|e| anyhow::anyhow!("cannot start {label}'s Raft group: {e}"))?;
    // Groups here start with one node and add the others: a replica votes only as a member.
    group_handle.vote_only_as_member();
    let initialized = group_handle
        .is_initialized()
        .await
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    // Only the first layout's groups are bootstrapped; a split's child is initialised by the
    // split (or waits for its group's leader).
    let first_layout = group <= u64::from(setup.identity.shards);
    let bootstrap = extras
        .bootstrap
        .unwrap_or(!setup.identity.joined && first_layout);
    if !initialized && bootstrap {
        group_handle
            .initialize(BTreeMap::from([(raft_id, setup.advertise.clone())]))
            .await
            .map_err(|e| anyhow::anyhow!("cannot bootstrap {label}'s Raft group: {e}"))?;
    }
    setup.groups.insert(group, group_handle.clone());
    let proposals = proposer::spawn(ShardHandles {
        shard: label,
        // Group g replicates shard g - 1; group 0 is the metadata group.
        shard_id: group.checked_sub(1).map_or(u32::MAX, |s| s as u32),
        group: group_handle.clone(),
        expiry: expiry.clone(),
        value_bytes_max: setup.value_bytes_max,
        health: setup.health.clone(),
        range: extras.range.as_ref().map(|(range, _)| range.clone()),
        leaving: extras.range.map(|(_, leaving)| leaving),
    });
    Ok(OpenedReplica {
        group: group_handle,
        expiry,
        feed,
        proposals,
    })
}

/// A shard replica's change feed, with the history its log still holds below what the
/// replica applied (the group replays the rest through the feed once started).
fn open_feed(
    setup: &ShardsSetup,
    sm: &StateMachine,
    log: &LogStore,
    shard: u32,
) -> std::io::Result<Arc<Feed>> {
    let applied = sm.applied()?.0.map_or(0, |id| id.index);
    let born = ShardRecord::read(&sm.engine()).map_or(0, |r| r.created_at);
    let feed = Arc::new(
        Feed::new(shard, applied, setup.feed_limits, setup.feed_wake.clone())
            .with_history(Arc::new(LogHistory(log.clone())))
            .born_at(born),
    );
    let first = log.first_index()?;
    feed.load(first, |start, end| log.entry_ops(start, end))?;
    Ok(feed)
}

/// A shard's Raft log as the history its feed reads beyond its window.
#[derive(Debug)]
struct LogHistory(LogStore);

impl crate::feed::History for LogHistory {
    fn first(&self) -> u64 {
        self.0.first_index().unwrap_or(u64::MAX)
    }

    fn read(&self, start: u64, end: u64) -> std::io::Result<Vec<(u64, Vec<cairn_raft::WriteOp>)>> {
        self.0.entry_ops(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner of every slot: `runs` of (shard, first slot), each up to the next.
    fn owners(runs: &[(u32, u16)]) -> Vec<u32> {
        (0..SLOT_COUNT)
            .map(|slot| {
                runs.iter()
                    .rev()
                    .find(|&&(_, first)| first <= slot)
                    .map_or(UNMAPPED, |&(id, _)| id)
            })
            .collect()
    }

    #[test]
    fn the_routed_slots_tile_the_keyspace_or_say_why_not() {
        let whole = tiling(owners(&[(1, 0), (2, 8192), (5, 12000)])).unwrap();
        assert_eq!(
            whole.into_iter().collect::<Vec<_>>(),
            vec![(1, (0, 8191)), (2, (8192, 11999)), (5, (12000, 16383))]
        );
        // A split's child whose slots are not routed yet.
        let unrouted = tiling(owners(&[(1, 0), (UNMAPPED, 4096), (2, 8192)]));
        assert!(unrouted.unwrap_err().contains("slot 4096"));
        // A stale placement of a child cutting its parent in two.
        let cut = tiling(owners(&[(1, 0), (7, 100), (1, 200), (2, 8192)]));
        assert!(cut.unwrap_err().contains("shard 1"));
        // Fewer owners than slots: the rest are not routed.
        assert!(tiling(vec![1; 100]).unwrap_err().contains("slot 100"));
    }

    /// A removed node deletes its replicas and log and keeps `node.toml`, which records the
    /// removal; a start on the directory is refused, after finishing a deletion a crash cut
    /// short.
    #[test]
    fn a_removed_node_forgets_its_replicas_and_refuses_to_start_again() {
        let io = cairn_io::StdIo;
        let dir = tempfile::tempdir().unwrap();
        let identity = NodeIdentity::new(None, 7, 4, true);
        identity.create(&io, dir.path()).unwrap();
        let fill = |name: &str| {
            std::fs::create_dir_all(dir.path().join(name).join("sub")).unwrap();
            std::fs::write(dir.path().join(name).join("sub").join("f"), b"x").unwrap();
        };
        for name in REPLICA_DIRS {
            fill(name);
        }
        std::fs::write(dir.path().join(crate::replicas::BOOK_FILE), b"{}").unwrap();
        let loaded = NodeIdentity::load(&io, dir.path()).unwrap().unwrap();
        loaded.refuse_if_removed(&io, dir.path()).unwrap();
        loaded.forget(&io, dir.path(), "left on request").unwrap();
        for name in REPLICA_DIRS {
            assert!(!dir.path().join(name).exists(), "{name}");
        }
        assert!(!dir.path().join(crate::replicas::BOOK_FILE).exists());
        let removed = NodeIdentity::load(&io, dir.path()).unwrap().unwrap();
        assert_eq!(removed.removed.as_deref(), Some("left on request"));
        assert!(
            removed.joined,
            "a removed directory never bootstraps a cluster"
        );
        assert_eq!((removed.raft_id, &removed.node_id), (7, &identity.node_id));
        // A crash after node.toml recorded it, before the deletion: the start deletes them.
        fill("wal");
        let why = removed.refuse_if_removed(&io, dir.path()).unwrap_err();
        assert!(why.to_string().contains("left on request"), "{why}");
        assert!(!dir.path().join("wal").exists());
    }
}
