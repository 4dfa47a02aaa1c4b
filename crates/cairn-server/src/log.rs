//! The node's commit log: where a group of entries becomes durable before it is acknowledged.
//!
//! With `--sync always` (the default) every group is appended to the node write-ahead log
//! (`cairn-wal`) with one fdatasync before any of it is applied or acknowledged. The engines
//! are applied without syncing; a checkpoint syncs them and purges the log up to the index they
//! hold. With `everysec`/`never` the log is not written: the engines are synced once a second
//! (or never) instead. The log is always opened at start so that entries written under
//! `always` are replayed whatever the mode of the restart.

use std::path::Path;
use std::sync::Arc;

use cairn_io::Io;
use cairn_wal::{Op, Record, Wal, WalOptions};

use crate::config::SyncMode;
use crate::effects::Effects;
use crate::shards::{Shards, wal_dir};
use crate::writer::apply_entry;

/// The WAL group holding the node log (one log shared by all shards; one entry may touch
/// several shards, which makes multi-key writes atomic).
pub const NODE_LOG_GROUP: u64 = 0;

/// Durable record of committed entries.
#[derive(Debug)]
pub struct CommitLog {
    wal: Wal,
    mode: SyncMode,
}

impl CommitLog {
    /// Open the log, replay into `shards` every entry a shard has not applied yet, and return
    /// the log with the next free index.
    pub fn open(
        data_dir: &Path,
        mode: SyncMode,
        shards: &Shards,
        io: Arc<dyn Io>,
        segment_bytes_max: u64,
    ) -> anyhow::Result<(CommitLog, u64)> {
        let dir = wal_dir(data_dir);
        let wal_options = WalOptions {
            io,
            segment_bytes_max,
            fsync_batches: true,
        };
        let wal = Wal::open(&dir, wal_options).map_err(|e| {
            anyhow::anyhow!("cannot open the write-ahead log in {}: {e}", dir.display())
        })?;
        let records = wal
            .replay()
            .map_err(|e| anyhow::anyhow!("cannot read the write-ahead log: {e}"))?;
        let mut last = shards
            .list
            .iter()
            .map(|s| s.last_applied())
            .max()
            .unwrap_or(0);
        let mut replayed = 0u64;
        for record in records {
            if record.group != NODE_LOG_GROUP {
                anyhow::bail!(
                    "write-ahead log holds a record of unknown group {}",
                    record.group
                );
            }
            let effects = Effects::decode(record.payload)
                .map_err(|e| anyhow::anyhow!("log entry {}: {e}", record.index))?;
            apply_entry(shards, record.index, &effects, true)
                .map_err(|e| anyhow::anyhow!("replay: {e}"))?;
            last = last.max(record.index);
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(
                entries = replayed,
                last_index = last,
                "replayed the write-ahead log"
            );
        }
        Ok((CommitLog { wal, mode }, last + 1))
    }

    /// Make `entries` durable before they are applied (with `--sync always`).
    pub fn append(&mut self, entries: &[(u64, Effects)]) -> Result<(), String> {
        if self.mode != SyncMode::Always {
            return Ok(());
        }
        let records: Vec<Record> = entries
            .iter()
            .map(|(index, effects)| Record {
                group: NODE_LOG_GROUP,
                index: *index,
                payload: effects.encode(),
            })
            .collect();
        self.wal.append(&records).map_err(|e| e.to_string())
    }

    /// Periodic sync for `--sync everysec`: the engines hold the data in that mode.
    pub fn sync(&mut self, shards: &Shards) -> Result<(), String> {
        if self.mode == SyncMode::Always {
            return Ok(());
        }
        for shard in &shards.list {
            shard
                .engine
                .sync()
                .map_err(|e| format!("shard {}: {e}", shard.id))?;
        }
        Ok(())
    }

    /// Bytes the log holds on disk.
    pub fn bytes(&self) -> u64 {
        self.wal.total_bytes()
    }

    /// Drop the log entries ≤ `applied`, which every engine now holds durably (the caller
    /// synced them), and the segments left without live entries.
    pub fn purge(&mut self, applied: u64) -> Result<(), String> {
        let Some(info) = self.wal.group(NODE_LOG_GROUP) else {
            return Ok(());
        };
        let upto = match (info.first_index, info.last_index) {
            (Some(first), Some(last)) if applied >= first => applied.min(last),
            _ => return Ok(()),
        };
        self.wal
            .write(vec![Op::Purge {
                group: NODE_LOG_GROUP,
                index: upto,
                payload: bytes::Bytes::new(),
            }])
            .and_then(|()| self.wal.purge_segments())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
