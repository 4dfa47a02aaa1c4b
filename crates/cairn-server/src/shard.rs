//! One shard: a range of slots and the storage engine holding their keys.
//!
//! Reads go straight to the engine; writes reach it only through the writer
//! ([`crate::writer`]), which applies committed log entries in order and records the applied
//! log index with every batch (`WriteBatch::set_last_applied`). The replication issue puts a
//! Raft group behind the same seam.

use std::path::Path;
use std::sync::Arc;

use cairn_io::Io;
use cairn_storage::{Engine, Options, SyncPolicy, WriteBatch};
use parking_lot::Mutex;

use crate::effects::Effect;
use crate::expiry::ExpiryIndex;

/// Byte budget of each shard's value cache.
pub const SHARD_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A shard replica on this node.
#[derive(Debug)]
pub struct Shard {
    pub id: u32,
    /// Inclusive slot range owned by the shard.
    pub slots: (u16, u16),
    pub engine: Engine,
    /// Keys with an expiry (maintained by the writer, read by the active-expiry task).
    pub expiry: Mutex<ExpiryIndex>,
}

/// Encode a log index as the engine's last-applied marker.
pub fn applied_marker(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl Shard {
    /// Open the shard's engine (which makes its directory durable in `shards/`). The engine
    /// does not sync on its own: the node's log is the durable record, and the engine is synced
    /// before the log is purged.
    pub fn open(
        io: Arc<dyn Io>,
        id: u32,
        slots: (u16, u16),
        dir: &Path,
        value_bytes_max: usize,
        segment_bytes_max: u64,
    ) -> anyhow::Result<Shard> {
        let options = Options {
            sync: SyncPolicy::Never,
            value_bytes_max,
            segment_bytes_max,
            cache_bytes: SHARD_CACHE_BYTES,
            ..Options::default()
        };
        let engine = Engine::open_with_io(dir, options, io)
            .map_err(|e| anyhow::anyhow!("cannot open shard {id} at {}: {e}", dir.display()))?;
        let shard = Shard {
            id,
            slots,
            engine,
            expiry: Mutex::new(ExpiryIndex::default()),
        };
        shard.rebuild_expiry_index();
        Ok(shard)
    }

    /// Scan the live keys once and index those with an expiry.
    fn rebuild_expiry_index(&self) {
        let mut index = self.expiry.lock();
        index.clear();
        for (key, meta) in self.engine.scan_keys(
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            usize::MAX,
        ) {
            if meta.expires_at_ms.is_some() {
                index.set(&key, meta.expires_at_ms);
            }
        }
    }

    /// Log index of the last entry applied to this shard (0 when none).
    pub fn last_applied(&self) -> u64 {
        self.engine
            .last_applied()
            .and_then(|m| <[u8; 8]>::try_from(&m[..]).ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// Apply the effects of log entry `index` that concern this shard, atomically.
    pub fn apply(&self, index: u64, effects: &[&Effect]) -> Result<(), cairn_storage::Error> {
        let mut batch = WriteBatch::new();
        batch.set_version(index);
        batch.set_last_applied(&applied_marker(index));
        let mut index_updates: Vec<(bytes::Bytes, Option<u64>)> = Vec::new();
        let mut cleared = false;
        for effect in effects {
            match effect {
                Effect::Put {
                    key,
                    value,
                    expires_at_ms,
                } => {
                    batch.put_with_expiry(key, value, *expires_at_ms);
                    index_updates.push((key.clone(), *expires_at_ms));
                }
                Effect::Delete { key } => {
                    batch.delete(key);
                    index_updates.push((key.clone(), None));
                }
                Effect::Clear => {
                    let all = self.engine.scan_keys(
                        std::ops::Bound::Unbounded,
                        std::ops::Bound::Unbounded,
                        usize::MAX,
                    );
                    for (key, _) in all {
                        batch.delete(&key);
                    }
                    // Keys written earlier in this batch are deleted too.
                    for (key, _) in &index_updates {
                        batch.delete(key);
                    }
                    index_updates.clear();
                    cleared = true;
                }
            }
        }
        self.engine.write(batch)?;
        let mut expiry = self.expiry.lock();
        if cleared {
            expiry.clear();
        }
        for (key, at) in &index_updates {
            expiry.set(key, *at);
        }
        Ok(())
    }
}
