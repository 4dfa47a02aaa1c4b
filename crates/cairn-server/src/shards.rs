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
use std::sync::Arc;

use cairn_io::Io;
use cairn_raft::{Group, Groups, LogStore, NodeAddr, Peers, StateMachine};
use cairn_storage::{Options, SyncPolicy};
use cairn_wal::Wal;
use serde::{Deserialize, Serialize};

use crate::expiry::ExpiryTracker;
use crate::feed::{Feed, FeedLimits};
use crate::health::WriteHealth;
use crate::proposer::{self, ShardHandles};
use crate::shard::{SHARD_CACHE_BYTES, Shard, group_of_shard};
use crate::slot::SlotMap;

/// Name of the file recording the node's identity in the data directory.
pub const NODE_FILE: &str = "node.toml";
/// Version of the data-directory layout.
pub const LAYOUT_VERSION: u32 = 2;
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
}

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

    /// A new identity: a fresh name unless `name` is given.
    pub fn new(name: Option<String>, raft_id: u64, shards: u32, joined: bool) -> NodeIdentity {
        NodeIdentity {
            layout_version: LAYOUT_VERSION,
            node_id: name.unwrap_or_else(new_node_name),
            raft_id,
            shards,
            joined,
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
#[derive(Debug)]
pub struct ShardsSetup<'a> {
    pub io: Arc<dyn Io>,
    pub data_dir: &'a Path,
    pub identity: &'a NodeIdentity,
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

/// Every shard of the node, and the slot map that routes keys to them.
#[derive(Debug)]
pub struct Shards {
    pub map: SlotMap,
    pub list: Vec<Shard>,
}

impl Shards {
    /// Opens every shard's replica and starts its Raft group and proposer; a group never
    /// initialised is bootstrapped with this node as its only voter.
    pub async fn open(setup: &ShardsSetup<'_>) -> anyhow::Result<Shards> {
        let count = setup.identity.shards;
        let map = SlotMap::new(count);
        let mut list = Vec::with_capacity(count as usize);
        for id in 0..count {
            list.push(open_shard(setup, id, map.range(id as usize)).await?);
        }
        Ok(Shards { map, list })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn shard_of_key(&self, key: &[u8]) -> u32 {
        self.map.shard_of_key(key) as u32
    }

    pub fn for_key(&self, key: &[u8]) -> &Shard {
        &self.list[self.map.shard_of_key(key)]
    }

    pub fn get(&self, id: u32) -> Option<&Shard> {
        self.list.get(id as usize)
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

/// Opens the replica in `dir` as member of Raft group `group` and starts its group and
/// proposer. A group never initialised is bootstrapped with this node as its only voter when
/// this node created the cluster; a node that joined waits for the group's leader to add it.
pub(crate) async fn open_replica(
    setup: &ShardsSetup<'_>,
    dir: &Path,
    group: u64,
    label: String,
) -> anyhow::Result<OpenedReplica> {
    let options = Options {
        // The WAL is the durable record; a snapshot (engine checkpoint) syncs what it holds.
        sync: SyncPolicy::Never,
        value_bytes_max: setup.value_bytes_max,
        segment_bytes_max: setup.engine_segment_bytes_max,
        cache_bytes: SHARD_CACHE_BYTES,
        clock: setup.clock.clone(),
        ..Options::default()
    };
    let sm = StateMachine::open(setup.io.clone(), dir, options)
        .map_err(|e| anyhow::anyhow!("cannot open {label} at {}: {e}", dir.display()))?;
    let expiry = Arc::new(ExpiryTracker::from_engine(&sm.engine()));
    let mut sm = sm.observed(expiry.clone());
    let log = LogStore::new(setup.wal.clone(), group);
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
    let group_handle = Group::start(
        raft_id,
        setup.config.clone(),
        setup.peers.group(group),
        log,
        sm,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start {label}'s Raft group: {e}"))?;
    let initialized = group_handle
        .is_initialized()
        .await
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    if !initialized && !setup.identity.joined {
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
    setup: &ShardsSetup<'_>,
    sm: &StateMachine,
    log: &LogStore,
    shard: u32,
) -> std::io::Result<Arc<Feed>> {
    let applied = sm.applied()?.0.map_or(0, |id| id.index);
    let feed = Arc::new(
        Feed::new(shard, applied, setup.feed_limits, setup.feed_wake.clone())
            .with_history(Arc::new(LogHistory(log.clone()))),
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

async fn open_shard(setup: &ShardsSetup<'_>, id: u32, slots: (u16, u16)) -> anyhow::Result<Shard> {
    let dir = shard_dir(setup.data_dir, id);
    let opened = open_replica(setup, &dir, group_of_shard(id), id.to_string()).await?;
    Ok(Shard {
        id,
        slots,
        group: opened.group,
        expiry: opened.expiry,
        feed: opened.feed.expect("a shard's replica has a feed"),
        proposals: opened.proposals,
    })
}
