//! One Raft group's log, kept in the node's shared WAL (group = the group's id).
//!
//! Every openraft storage call maps onto one WAL submission, so they reach the disk in the
//! order openraft made them (openraft requires votes, appends, truncations and purges to be
//! serialised): `append` submits the entries (readable at once, as openraft requires) and
//! fires `IOFlushed` from the WAL's completion, after the fdatasync that covers them, without
//! blocking the group; `save_vote` waits for its fdatasync (the vote must be durable before any
//! reply that depends on it); `truncate_after`, `purge` and `save_committed` are ordered
//! behind the same stream and become durable with the next flush. One fdatasync serves every
//! group with writes queued.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use cairn_wal::{Op, Record, Wal, WalError};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{
    decode_entry, decode_log_id, decode_opt_log_id, decode_vote, encode_entry, encode_log_id,
    encode_opt_log_id, encode_vote,
};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// One group's Raft log in the node's WAL. Cheap to clone (the reader is a clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    group: u64,
}

fn io_err(e: WalError) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// The log of `group` in `wal`.
    pub fn new(wal: Arc<Wal>, group: u64) -> LogStore {
        LogStore { wal, group }
    }

    /// The group this log belongs to.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// Submits `ops` and waits until they are durable, without blocking the async runtime.
    async fn write_durably(&self, ops: Vec<Op>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.wal
            .submit(
                ops,
                Some(Box::new(move |result| {
                    let _ = tx.send(result);
                })),
            )
            .map_err(io_err)?;
        rx.await
            .map_err(|_| io::Error::other("the WAL dropped a submission"))?
            .map_err(io_err)
    }

    fn submit(&self, ops: Vec<Op>) -> io::Result<()> {
        self.wal.submit(ops, None).map_err(io_err)
    }

    fn last_purged(&self) -> io::Result<Option<LogId>> {
        self.wal
            .group(self.group)
            .and_then(|g| g.purged)
            .map(|(_, bytes)| decode_log_id(&bytes))
            .transpose()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.wal
            .entries(self.group, range)
            .map_err(io_err)?
            .into_iter()
            .map(|(_, bytes)| decode_entry(&bytes))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.wal
            .group(self.group)
            .and_then(|g| g.vote)
            .map(|bytes| decode_vote(&bytes))
            .transpose()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.last_purged()?;
        let last_index = self.wal.group(self.group).and_then(|g| g.last_index);
        let last_log_id = match last_index {
            Some(index) => {
                let last = self.try_get_log_entries(index..=index).await?;
                let entry = last
                    .into_iter()
                    .next()
                    .ok_or_else(|| io::Error::other("the last entry vanished"))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_durably(vec![Op::Vote {
            group: self.group,
            payload: encode_vote(vote),
        }])
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.submit(vec![Op::Committed {
            group: self.group,
            payload: encode_opt_log_id(committed.as_ref()),
        }])
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        match self.wal.group(self.group).and_then(|g| g.committed) {
            Some(bytes) => decode_opt_log_id(&bytes),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let ops: Vec<Op> = entries
            .into_iter()
            .map(|entry| {
                Op::Entry(Record {
                    group: self.group,
                    index: entry.log_id.index,
                    payload: encode_entry(&entry),
                })
            })
            .collect();
        self.wal
            .submit(
                ops,
                Some(Box::new(move |result| {
                    callback.io_completed(result.map_err(io_err));
                })),
            )
            .map_err(io_err)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let index = last_log_id.map_or(0, |id| id.index + 1);
        self.submit(vec![Op::TruncateFrom {
            group: self.group,
            index,
        }])
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.submit(vec![Op::Purge {
            group: self.group,
            index: log_id.index,
            payload: encode_log_id(&log_id),
        }])
    }
}
