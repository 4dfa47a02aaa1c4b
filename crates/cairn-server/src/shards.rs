//! The node's shards and the data-directory layout that holds them.
//!
//! Layout: `node.toml` (node id and shard count, written once when the directory is created),
//! `wal/` (the node's write-ahead log) and `shards/NNNNN/` (one engine per shard). Every file
//! and directory is reached through the node's [`Io`], and every one it creates is made durable
//! in its parent before anything depends on it: `node.toml` before `shards/` exists (so a
//! directory with shards always says how many), each directory's entry before the first write
//! in it is acknowledged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_io::Io;
use serde::{Deserialize, Serialize};

use crate::shard::Shard;
use crate::slot::SlotMap;

/// Name of the file recording the node's identity in the data directory.
pub const NODE_FILE: &str = "node.toml";
/// Version of the data-directory layout.
pub const LAYOUT_VERSION: u32 = 1;

/// What the data directory records about the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub layout_version: u32,
    /// 40 lowercase hex characters, like a Redis Cluster node id.
    pub node_id: String,
    pub shards: u32,
}

impl NodeIdentity {
    /// Read the identity of `data_dir`, or create it with a fresh id and `shards` shards.
    pub fn load_or_create(
        io: &dyn Io,
        data_dir: &Path,
        shards: u32,
    ) -> anyhow::Result<NodeIdentity> {
        let path = data_dir.join(NODE_FILE);
        let text = io.open(&path).and_then(|f| f.read_all()).and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        match text {
            Ok(text) => {
                let identity: NodeIdentity = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
                anyhow::ensure!(
                    identity.layout_version == LAYOUT_VERSION,
                    "{} has layout version {}; this build reads {LAYOUT_VERSION}",
                    path.display(),
                    identity.layout_version
                );
                Ok(identity)
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
                cairn_io::create_dir_all_durable(io, data_dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", data_dir.display()))?;
                let identity = NodeIdentity {
                    layout_version: LAYOUT_VERSION,
                    node_id: new_node_id(),
                    shards,
                };
                cairn_io::write_file_atomic(io, &path, toml::to_string(&identity)?.as_bytes())
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                Ok(identity)
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }
}

fn new_node_id() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Directory of the node's write-ahead log.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Directory of shard `id`'s engine.
pub fn shard_dir(data_dir: &Path, id: u32) -> PathBuf {
    data_dir.join("shards").join(format!("{id:05}"))
}

/// Every shard of the node, and the slot map that routes keys to them.
#[derive(Debug)]
pub struct Shards {
    pub map: SlotMap,
    pub list: Vec<Shard>,
    /// Held for writing while the writer applies a group, for reading by reads of several
    /// keys: they never see a multi-shard write half applied.
    pub apply_lock: parking_lot::RwLock<()>,
}

impl Shards {
    /// Open (creating when needed) the engines of all `count` shards.
    pub fn open(
        io: &Arc<dyn Io>,
        data_dir: &Path,
        count: u32,
        value_bytes_max: usize,
        segment_bytes_max: u64,
    ) -> anyhow::Result<Shards> {
        let map = SlotMap::new(count);
        let list = (0..count)
            .map(|id| {
                Shard::open(
                    io.clone(),
                    id,
                    map.range(id as usize),
                    &shard_dir(data_dir, id),
                    value_bytes_max,
                    segment_bytes_max,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Shards {
            map,
            list,
            apply_lock: parking_lot::RwLock::new(()),
        })
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
