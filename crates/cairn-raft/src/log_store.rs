//! One Raft group's log, kept in the node's shared WAL (group = the group's id).
//!
//! Every openraft storage call maps onto one WAL submission, so they reach the disk in the
//! order openraft made them (openraft requires votes, appends, truncations and purges to be
//! serialised): `append` submits the entries (readable at once, as openraft requires) and
//! fires `IOFlushed` from the WAL's completion, after the fdatasync that covers them, without
//! blocking the group; `save_vote` waits for its fdatasync (the vote must be durable before any
//! reply that depends on it); `truncate_after` and `purge` are ordered behind the same stream
//! and become durable with the next flush; `save_committed` too, but it does not start a
//! flush of its own (it waits for the next append or vote). One fdatasync serves every
//! group with writes queued.
//!
//! The newest entries are also kept decoded in memory ([`RECENT_BYTES_MAX`] per group), so the
//! state machine applying them, moments after the append, does not read them back from disk.
//! The cache changes with the log, in the same calls: appends add, truncations and purges
//! remove; a range it does not hold whole is read from the WAL.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use parking_lot::Mutex;

use cairn_wal::{Op, Record, Wal, WalError};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};

use crate::codec::{
    decode_entry, decode_log_id, decode_opt_log_id, decode_vote, encode_entry, encode_log_id,
    encode_opt_log_id, encode_vote,
};
use crate::types::{Entry, LogId, TypeConfig, Vote, WriteOp};

/// Bytes of encoded entries a group keeps decoded in memory for the state machine.
pub const RECENT_BYTES_MAX: usize = 1 << 20;

/// The newest entries of a group, by index, with their encoded sizes.
#[derive(Debug, Default)]
struct Recent {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn insert(&mut self, entry: Entry, size: usize) {
        if let Some((_, old)) = self.entries.insert(entry.log_id.index, (entry, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > RECENT_BYTES_MAX {
            let Some((_, (_, size))) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Removes every entry at `from` and above.
    fn truncate(&mut self, from: u64) {
        // Every append asks; nearly always nothing is there (a split would still cost).
        if self
            .entries
            .last_key_value()
            .is_none_or(|(&last, _)| last < from)
        {
            return;
        }
        for (_, (_, size)) in self.entries.split_off(&from) {
            self.bytes -= size;
        }
    }

    /// Removes every entry at `upto` and below.
    fn purge(&mut self, upto: u64) {
        let kept = self.entries.split_off(&(upto + 1));
        let removed = std::mem::replace(&mut self.entries, kept);
        for (_, (_, size)) in removed {
            self.bytes -= size;
        }
    }

    /// Entries `[start, end)` if every one of them is here.
    fn range(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        if end <= start {
            return Some(Vec::new());
        }
        let found: Vec<Entry> = self
            .entries
            .range(start..end)
            .map(|(_, (entry, _))| entry.clone())
            .collect();
        (found.len() as u64 == end - start).then_some(found)
    }
}

/// One group's Raft log in the node's WAL. Cheap to clone (the reader is a clone, sharing the
/// cache of recent entries).
#[derive(Debug, Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    group: u64,
    recent: Arc<Mutex<Recent>>,
}

fn io_err(e: WalError) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// The log of `group` in `wal`.
    pub fn new(wal: Arc<Wal>, group: u64) -> LogStore {
        LogStore {
            wal,
            group,
            recent: Arc::default(),
        }
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

    /// Starts the log of a group a split created at `purged` (the split entry's log id in
    /// its parent's log): held purged up to it, so the group's first entry comes after, with
    /// this node's vote in the entry's term, so its first election is in a later one. Durable
    /// when it returns.
    pub async fn seed(&self, purged: &LogId, node: u64) -> io::Result<()> {
        let vote = Vote::new(purged.leader_id.term, node);
        self.write_durably(vec![
            Op::Vote {
                group: self.group,
                payload: encode_vote(&vote),
            },
            Op::Purge {
                group: self.group,
                index: purged.index,
                payload: encode_log_id(purged),
            },
        ])
        .await
    }

    /// Raises the log's vote to term `term` (a vote for `node`, this node, in that term) if it
    /// is lower or absent, durably: a replica created again after its node was removed from
    /// the group never takes messages of the terms before the removal.
    pub async fn raise_vote(&self, term: u64, node: u64) -> io::Result<()> {
        let current = self
            .wal
            .group(self.group)
            .and_then(|g| g.vote)
            .map(|bytes| crate::codec::decode_vote(&bytes))
            .transpose()?;
        if current.is_some_and(|v| v.leader_id.term >= term) {
            return Ok(());
        }
        self.write_durably(vec![Op::Vote {
            group: self.group,
            payload: encode_vote(&Vote::new(term, node)),
        }])
        .await
    }

    /// Whether the log holds nothing at all: no vote, no entry, no purge point.
    pub fn is_blank(&self) -> bool {
        self.wal
            .group(self.group)
            .is_none_or(|g| g.vote.is_none() && g.last_index.is_none() && g.purged.is_none())
    }

    /// The oldest index the log still holds an entry at (1 when nothing was purged).
    pub fn first_index(&self) -> io::Result<u64> {
        Ok(self.last_purged()?.map_or(1, |id| id.index + 1))
    }

    /// Every entry at indexes `start..=end` the log still holds, by index, with its ops (none
    /// for blank and membership entries): for a shard's change feed, rebuilt at start from
    /// what the log keeps.
    pub fn entry_ops(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<WriteOp>)>> {
        let mut out = Vec::new();
        for (_, bytes) in self.wal.entries(self.group, start..=end).map_err(io_err)? {
            let entry = decode_entry(&bytes)?;
            let ops = match entry.payload {
                EntryPayload::Normal(request) => request.ops,
                EntryPayload::Blank | EntryPayload::Membership(_) => Vec::new(),
            };
            out.push((entry.log_id.index, ops));
        }
        Ok(out)
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
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => None,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        if let (Some(start), Some(end)) = (start, end) {
            if let Some(found) = self.recent.lock().range(start, end) {
                return Ok(found);
            }
        }
        self.wal
            .entries(self.group, range)
            .map_err(io_err)?
            .into_iter()
            .map(|(_, bytes)| decode_entry(&bytes))
            .collect()
    }

    /// What replication reads for one append: the entries from `start`, up to what one
    /// append carries ([`crate::service::APPEND_BYTES_MAX`], at least one entry). Without the
    /// bound openraft reads its whole window (up to 300 entries) for each append, and a run
    /// of large entries, sent 8 MiB at a time, was read again from the WAL for every part.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        if let Some(found) = self.recent.lock().range(start, end) {
            return Ok(found);
        }
        self.wal
            .entries_up_to(self.group, start..end, crate::service::APPEND_BYTES_MAX)
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

    /// The committed marker is written lazily ([`Wal::submit_lazy`]): it rides with the next
    /// append or vote instead of costing an fdatasync per commit (which doubled the fsyncs of
    /// a lone write on every replica). Losing it in a crash is harmless: openraft starts from
    /// `max(committed, applied)` and learns the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.wal
            .submit_lazy(vec![Op::Committed {
                group: self.group,
                payload: encode_opt_log_id(committed.as_ref()),
            }])
            .map_err(io_err)
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
        let mut ops = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            let payload = encode_entry(&entry);
            // The cache keeps the entry decoded from its own encoding, not the entry given:
            // that one's keys and values are slices of the buffers the writes arrived in (a
            // client connection's read buffer each), which the cache would keep alive for as
            // long as it holds the entry; these are slices of one right-sized payload.
            let cached = decode_entry(&payload)?;
            decoded.push((cached, payload.len()));
            ops.push(Op::Entry(Record {
                group: self.group,
                index: entry.log_id.index,
                payload,
            }));
        }
        // Under the cache's lock, so that a reader sees the log and the cache change together.
        let mut recent = self.recent.lock();
        self.wal
            .submit(
                ops,
                Some(Box::new(move |result| {
                    callback.io_completed(result.map_err(io_err));
                })),
            )
            .map_err(io_err)?;
        for (entry, size) in decoded {
            // An append at i replaces the log from i on (a conflicting suffix goes).
            recent.truncate(entry.log_id.index);
            recent.insert(entry, size);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let index = last_log_id.map_or(0, |id| id.index + 1);
        let mut recent = self.recent.lock();
        self.submit(vec![Op::TruncateFrom {
            group: self.group,
            index,
        }])?;
        recent.truncate(index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut recent = self.recent.lock();
        self.submit(vec![Op::Purge {
            group: self.group,
            index: log_id.index,
            payload: encode_log_id(&log_id),
        }])?;
        recent.purge(log_id.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_wal::WalOptions;
    use openraft::EntryPayload;
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::types::{Request, WriteOp};

    fn entry(index: u64, key: Bytes, value: Bytes) -> Entry {
        Entry {
            log_id: LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            payload: EntryPayload::Normal(Request {
                ops: vec![WriteOp::Put {
                    key,
                    value,
                    expires_at_ms: None,
                }],
            }),
        }
    }

    /// A write's key and value arrive as slices of a connection's read buffer; the log's
    /// cache of recent entries must not keep that whole buffer alive.
    #[tokio::test]
    async fn the_cache_keeps_entries_but_not_the_buffers_they_arrived_in() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(
            dir.path(),
            WalOptions {
                io: Arc::new(cairn_io::StdIo),
                segment_bytes_max: 1 << 20,
                fsync_batches: true,
                on_fsync: None,
            },
        )
        .unwrap();
        let mut log = LogStore::new(Arc::new(wal), 7);
        let arrived = Bytes::from(vec![b'x'; 64 * 1024]);
        let (key, value) = (arrived.slice(0..3), arrived.slice(3..259));
        log.append([entry(1, key.clone(), value.clone())], IOFlushed::noop())
            .await
            .unwrap();
        drop((key, value));
        assert!(
            arrived.is_unique(),
            "the cache holds slices of the buffer the write arrived in"
        );
        // And it still serves the entry, from memory.
        let got = log.try_get_log_entries(1..2).await.unwrap();
        assert_eq!(
            got,
            vec![entry(1, arrived.slice(0..3), arrived.slice(3..259))]
        );
        assert_eq!(log.recent.lock().entries.len(), 1);
    }

    #[test]
    fn truncating_past_the_end_keeps_everything_and_truncating_inside_drops_the_tail() {
        let mut recent = Recent::default();
        for i in 1..=3 {
            recent.insert(
                entry(i, Bytes::from_static(b"k"), Bytes::from_static(b"v")),
                10,
            );
        }
        recent.truncate(4);
        assert_eq!((recent.entries.len(), recent.bytes), (3, 30));
        recent.truncate(2);
        assert_eq!((recent.entries.len(), recent.bytes), (1, 10));
    }
}
