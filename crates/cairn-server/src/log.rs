//! The node's commit log: where a group of entries becomes durable before it is acknowledged.
//!
//! Until the node write-ahead log (`cairn-wal`) is wired in, the engines themselves are the
//! record: entries are applied and the touched engines synced once per group (group commit,
//! one sync per touched shard).

use crate::config::SyncMode;
use crate::effects::Effects;
use crate::shards::Shards;

/// Durable record of committed entries.
#[derive(Debug)]
pub enum CommitLog {
    /// The engines are the record; synced after each group when `mode` is `Always`.
    Engines { mode: SyncMode },
}

impl CommitLog {
    /// Make `entries` durable (for modes that sync on append).
    pub fn append(&mut self, _entries: &[(u64, Effects)]) -> Result<(), String> {
        match self {
            CommitLog::Engines { .. } => Ok(()),
        }
    }

    /// Called once the group's entries are applied to the engines.
    pub fn after_apply(
        &mut self,
        shards: &Shards,
        entries: &[(u64, Effects)],
    ) -> Result<(), String> {
        match self {
            CommitLog::Engines {
                mode: SyncMode::Always,
            } => {
                let mut touched: Vec<u32> = entries.iter().flat_map(|(_, e)| e.shards()).collect();
                touched.sort_unstable();
                touched.dedup();
                for id in touched {
                    if let Some(shard) = shards.get(id) {
                        shard
                            .engine
                            .sync()
                            .map_err(|e| format!("shard {id}: {e}"))?;
                    }
                }
                Ok(())
            }
            CommitLog::Engines { .. } => Ok(()),
        }
    }

    /// Sync what was appended (`--sync everysec`).
    pub fn sync(&mut self, shards: &Shards) -> Result<(), String> {
        match self {
            CommitLog::Engines { .. } => {
                for shard in &shards.list {
                    shard
                        .engine
                        .sync()
                        .map_err(|e| format!("shard {}: {e}", shard.id))?;
                }
                Ok(())
            }
        }
    }

    /// Drop entries up to `applied`, which every engine now holds durably.
    pub fn purge(&mut self, _applied: u64) -> Result<(), String> {
        match self {
            CommitLog::Engines { .. } => Ok(()),
        }
    }
}
