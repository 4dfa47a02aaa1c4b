//! The [`Wal`] handle: submissions, the flusher thread (group commit), rotation, reads, purge,
//! poisoning.
//!
//! Group commit: [`Wal::submit`] applies its ops to the in-memory index at once (entries become
//! readable as `Pending`), queues them and returns. Whoever flushes (the flusher thread, woken
//! for asynchronous submissions, or a caller waiting in [`Wal::write`] when no flush is
//! running, which saves it two thread hand-offs) takes everything queued (up to
//! [`GROUP_BYTES_MAX`]), from every group, writes it as one batch frame with one `pwrite`,
//! issues one `fdatasync`, points the index at the written records, and completes each
//! submission in order. One flush runs at a time. So callers never block on I/O unless they ask
//! to, and concurrent groups share fsyncs.
//!
//! One frame per fsync: recovery relies on every frame being fsynced before the next is written,
//! so that damage followed by a valid frame proves corruption of acknowledged data.
//!
//! The active segment is preallocated: zero-filled and fdatasynced ahead of its frames (see
//! [`crate::SEGMENT_PREALLOCATE_BYTES`]), so a batch's `fdatasync` overwrites blocks the file
//! already owns and does not have to commit a new file size. The append that reaches the end of
//! the zero-filled part extends it by another chunk, under the same fdatasync as its frame.
//!
//! Every new segment starts with a frame restating every group (vote, committed, purge point,
//! live range), fsynced before anything else lands in it. A sealed segment is therefore needed
//! only for the live entries it holds, and [`Wal::purge_segments`] deletes those that hold none,
//! once every record that made them dead is durable.
//!
//! After any failed write or fsync the log is poisoned: the bytes on disk are unknown, so
//! nothing more may be acknowledged until a restart recovers from the disk.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use cairn_io::{Io, IoFile};
use parking_lot::{Condvar, Mutex};

use crate::format::{self, FORMAT_VERSION, Kind, Rec, SEGMENT_HEADER_BYTES};
use crate::groups::{Groups, Loc, Slot, View};
use crate::recovery::{self, SegmentMeta, write_zeros};
use crate::{
    BATCH_BYTES_MAX, Op, RECORD_PAYLOAD_BYTES_MAX, Record, Result, SEGMENT_BYTES_MAX_MIN,
    SEGMENT_PREALLOCATE_BYTES, WalError, WalOptions,
};

/// Most bytes one group commit writes; submissions beyond it wait for the next one.
pub const GROUP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The encode buffer is released after a batch larger than this, so one huge append does not
/// pin its memory for the life of the log.
const ENCODE_BUFFER_KEEP_BYTES: usize = 4 * 1024 * 1024;

/// Called once a submission is durable (`Ok`), or can never be (`Err`). Runs on the flusher
/// thread: it must not block, and must not call back into the log and wait.
pub type Done = Box<dyn FnOnce(Result<()>) + Send>;

/// What a [`Wal::purge_segments`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Their total size.
    pub bytes_removed: u64,
}

/// Counters since open (for metrics: records and groups per fsync).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// `fdatasync` calls for batches.
    pub fsyncs: u64,
    /// Records written (entries, votes, truncates, purges, committed markers).
    pub records: u64,
    /// Entries written.
    pub entries: u64,
    /// Sum over fsyncs of the distinct groups each covered.
    pub group_syncs: u64,
}

/// One group's log as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Index of the first live entry.
    pub first_index: Option<u64>,
    /// Index of the last live entry.
    pub last_index: Option<u64>,
    /// The last vote written.
    pub vote: Option<Bytes>,
    /// The last committed marker written.
    pub committed: Option<Bytes>,
    /// The purge point: last purged index and the bytes given with it.
    pub purged: Option<(u64, Bytes)>,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    /// `meta.bytes` is where the next frame goes.
    meta: SegmentMeta,
    file: Arc<dyn IoFile>,
    /// Length of the file. Invariant: `meta.bytes <= file_bytes` and every byte in between is
    /// zero (durably, except after a failed write or fsync, which poisons the log).
    file_bytes: u64,
}

/// The flusher's side: the active segment and what has been written.
#[derive(Debug)]
struct Writer {
    active: Active,
    /// Sequence number of the next batch.
    next_seq: u64,
    /// What the written records say about each group (restated at rotation).
    view: View,
    /// Reused encode buffer.
    buf: Vec<u8>,
}

struct Submission {
    /// Records, each entry with the id of its pending slot.
    recs: Vec<(Rec, u64)>,
    done: Option<Done>,
    /// Made by [`Wal::submit_lazy`]: written with the next flush, never the reason for one.
    lazy: bool,
}

/// How a submission reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Submit {
    /// The flusher thread is woken to write it.
    Wake,
    /// The caller waits for it and flushes it itself when no flush is running.
    CallerFlushes,
    /// It waits for the next flush that anything else causes.
    Lazy,
}

/// Whether `queue` holds a submission that wants a flush (one that is not lazy).
fn wants_flush(queue: &[Submission]) -> bool {
    queue.iter().any(|s| !s.lazy)
}

/// What callers share, under one lock.
#[derive(Default)]
struct State {
    groups: Groups,
    queue: Vec<Submission>,
    next_pending_id: u64,
    /// Submissions queued so far, and completed so far (in order, whatever the outcome).
    submitted: u64,
    durable: u64,
    /// The first group that failed: its submissions' numbers and its error (every later
    /// submission fails as `Poisoned`).
    failed: Option<(u64, u64, WalError)>,
    /// A flush (the flusher thread's, or a waiting caller's) is writing a group.
    flushing: bool,
    poisoned: bool,
    stopping: bool,
    /// Every segment file by id (sealed and active), for reads.
    files: BTreeMap<u64, Arc<dyn IoFile>>,
    /// Sealed segments, oldest first.
    sealed: Vec<SegmentMeta>,
    /// Bytes of log data in the active segment.
    active_bytes: u64,
}

struct Shared {
    /// Exclusive lock on `dir` for the life of the handle.
    _lock: Box<dyn std::fmt::Debug + Send + Sync>,
    dir: PathBuf,
    io: Arc<dyn Io>,
    segment_bytes_max: u64,
    /// [`crate::WalOptions::fsync_batches`].
    fsync_batches: bool,
    on_fsync: Option<crate::FsyncObserver>,
    state: Mutex<State>,
    /// Wakes the flusher (work queued, or stopping).
    work: Condvar,
    /// Wakes waiters of `durable` (a batch landed, or the log was poisoned).
    landed: Condvar,
    /// The flusher's; lock order: `writer` before `state`.
    writer: Mutex<Writer>,
    /// Serialises purges.
    purge_lock: Mutex<()>,
    fsyncs: AtomicU64,
    records: AtomicU64,
    entries: AtomicU64,
    group_syncs: AtomicU64,
}

/// The node's write-ahead log. `Send + Sync`: share it behind an `Arc`.
pub struct Wal {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir` and rebuilds every group's index from the records on
    /// disk. A torn tail of the newest segment is cleared (with a warning); any other damage,
    /// or a group whose live entries have a hole, is [`WalError::Corruption`].
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        if options.segment_bytes_max < SEGMENT_BYTES_MAX_MIN {
            return Err(WalError::InvalidOptions(format!(
                "segment_bytes_max {} is below the minimum {SEGMENT_BYTES_MAX_MIN}",
                options.segment_bytes_max
            )));
        }
        let io = options.io;
        let version = segment_version(options.fsync_batches);
        // The log directory's own entry must be durable before anything in it is acknowledged.
        cairn_io::create_dir_all_durable(io.as_ref(), &dir).map_err(|e| WalError::io(&dir, e))?;
        let lock = io.lock_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => WalError::Locked { path: dir.clone() },
            _ => WalError::io(&dir, e),
        })?;
        let recovered = recovery::recover(&dir, io.as_ref())?;
        if let Some((group, index)) = recovered.groups.find_hole() {
            return Err(WalError::corruption(
                &dir,
                0,
                format!(
                    "group {group} has no entry {index}: a segment holding live entries is missing"
                ),
            ));
        }
        let mut files: BTreeMap<u64, Arc<dyn IoFile>> = BTreeMap::new();
        let mut sealed = Vec::new();
        for (meta, file) in recovered.sealed {
            files.insert(meta.id, file);
            sealed.push(meta);
        }
        let view = View::of(&recovered.groups);
        let mut writer = Writer {
            active: match recovered.active {
                Some(active) if !active.sealed && active.meta.version == version => Active {
                    meta: active.meta,
                    file: active.file,
                    file_bytes: active.file_bytes,
                },
                // Sealed already (a crash between sealing it and creating its successor), of the
                // older format, or written under the other fsync mode, finished as it is: new
                // records go to a new segment in this build's format and this mode's version.
                Some(active) => {
                    let id = active.meta.id;
                    files.insert(id, active.file.clone());
                    let was_sealed = active.sealed;
                    let active = Active {
                        meta: active.meta,
                        file: active.file,
                        file_bytes: active.file_bytes,
                    };
                    let meta = if was_sealed {
                        active.meta
                    } else {
                        seal(&active, recovered.last_seq)?
                    };
                    sealed.push(meta);
                    create_segment(
                        io.as_ref(),
                        &dir,
                        id + 1,
                        options.segment_bytes_max,
                        version,
                    )?
                }
                None => create_segment(io.as_ref(), &dir, 1, options.segment_bytes_max, version)?,
            },
            next_seq: recovered.last_seq + 1,
            view,
            buf: Vec::new(),
        };
        files.insert(writer.active.meta.id, writer.active.file.clone());
        if writer.active.meta.bytes == SEGMENT_HEADER_BYTES as u64 {
            // A fresh segment: restate the groups so no older segment is needed for them.
            write_restatement(&mut writer, options.segment_bytes_max)?;
        }
        let state = State {
            groups: recovered.groups,
            files,
            sealed,
            active_bytes: writer.active.meta.bytes,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            _lock: lock,
            dir,
            io,
            segment_bytes_max: options.segment_bytes_max,
            fsync_batches: options.fsync_batches,
            on_fsync: options.on_fsync.clone(),
            state: Mutex::new(state),
            work: Condvar::new(),
            landed: Condvar::new(),
            writer: Mutex::new(writer),
            purge_lock: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            group_syncs: AtomicU64::new(0),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cairn-wal-flush".into())
                .spawn(move || shared.flush_loop())
                .map_err(|e| WalError::io("<flusher thread>", e))?
        };
        Ok(Wal {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Applies `ops` to the index at once (appended entries are readable when this returns)
    /// and queues them to be written; `done` is called once they are durable, or with the error
    /// that means they never will be. Submissions become durable in the order they were made.
    /// Refused (nothing applied) if an op is invalid or the log is poisoned. `done` runs on
    /// the flushing thread before anyone waiting on the log is released: it must not wait on
    /// the log itself.
    pub fn submit(&self, ops: Vec<Op>, done: Option<Done>) -> Result<()> {
        self.submit_numbered(ops, done, Submit::Wake).map(|_| ())
    }

    /// [`Wal::submit`] for records whose loss in a crash is harmless, such as a group's
    /// committed marker (Raft learns the commit index again from the leader, and never sets
    /// it below what the state machine applied). It is applied to the index at once and queued
    /// in order behind earlier submissions, but does not wake the flusher: it rides in the
    /// frame of the next submission anyone makes durable (or is written when the log is
    /// closed) instead of costing an fdatasync of its own.
    pub fn submit_lazy(&self, ops: Vec<Op>) -> Result<()> {
        self.submit_numbered(ops, None, Submit::Lazy).map(|_| ())
    }

    /// [`Wal::submit`]; returns the submission's number (1-based, in submission order).
    fn submit_numbered(&self, ops: Vec<Op>, done: Option<Done>, how: Submit) -> Result<u64> {
        let recs: Vec<Rec> = ops.into_iter().map(into_rec).collect();
        if let Some(r) = recs
            .iter()
            .find(|r| r.payload.len() > RECORD_PAYLOAD_BYTES_MAX)
        {
            return Err(WalError::RecordTooLarge {
                bytes: r.payload.len(),
                limit: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        let bytes = format::batch_bytes(recs.iter());
        if bytes > BATCH_BYTES_MAX {
            return Err(WalError::BatchTooLarge {
                bytes,
                limit: BATCH_BYTES_MAX,
            });
        }
        let mut state = self.shared.state.lock();
        if state.poisoned {
            return Err(WalError::Poisoned);
        }
        check_ops(&state.groups, &recs)?;
        let mut queued = Vec::with_capacity(recs.len());
        for rec in recs {
            let id = state.next_pending_id;
            state.next_pending_id += 1;
            let slot = (rec.kind == Kind::Entry).then(|| Slot::Pending {
                id,
                payload: rec.payload.clone(),
            });
            state.groups.apply(&rec, slot);
            queued.push((rec, id));
        }
        state.queue.push(Submission {
            recs: queued,
            done,
            lazy: how == Submit::Lazy,
        });
        state.submitted += 1;
        if how == Submit::Wake {
            self.shared.work.notify_one();
        }
        Ok(state.submitted)
    }

    /// [`Wal::submit`], then waits until the ops are durable. When no flush is running the
    /// caller writes the queued group itself (one frame, one fdatasync for everyone queued),
    /// so a single writer pays no hand-off to the flusher thread.
    pub fn write(&self, ops: Vec<Op>) -> Result<()> {
        let seq = self.submit_numbered(ops, None, Submit::CallerFlushes)?;
        self.shared.wait_for(seq)
    }

    /// Writes `records` as entries and waits until they are durable.
    pub fn append(&self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(records.iter().cloned().map(Op::Entry).collect())
    }

    /// Waits until everything submitted so far is written (and durable, unless
    /// [`crate::WalOptions::fsync_batches`] is off).
    pub fn flush(&self) -> Result<()> {
        self.write(Vec::new())
    }

    /// Makes everything written so far durable (one fdatasync of the active segment; sealed
    /// segments were synced when sealed). Needed only when
    /// [`crate::WalOptions::fsync_batches`] is off; harmless otherwise. A failure poisons the
    /// log.
    pub fn sync(&self) -> Result<()> {
        let shared = &self.shared;
        let writer = shared.writer.lock();
        if shared.state.lock().poisoned {
            return Err(WalError::Poisoned);
        }
        let synced = writer
            .active
            .file
            .sync_data()
            .map_err(|e| WalError::io(&writer.active.meta.path, e));
        if let Err(e) = &synced {
            let mut state = shared.state.lock();
            state.poisoned = true;
            shared.landed.notify_all();
            tracing::error!(dir = %shared.dir.display(), error = %e, "WAL poisoned by a failed fdatasync");
        } else {
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        synced
    }

    /// The live entries of `group` with indexes in `range`, in order. Entries are read from
    /// memory (not yet written) or from their records on disk, each checked against its
    /// checksum: damage is [`WalError::Corruption`], never data.
    pub fn entries(&self, group: u64, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Bytes)>> {
        self.entries_up_to(group, range, usize::MAX)
    }

    /// [`Wal::entries`], stopping before the entry that would take the payloads read past
    /// `bytes_max` (the first entry is always read): what a replication stream sends in one
    /// message, read without the rest of a long run of large entries.
    pub fn entries_up_to(
        &self,
        group: u64,
        range: impl RangeBounds<u64>,
        bytes_max: usize,
    ) -> Result<Vec<(u64, Bytes)>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        let slots: Vec<(u64, SlotRead)> = {
            let state = self.shared.state.lock();
            let Some(g) = state.groups.groups.get(&group) else {
                return Ok(Vec::new());
            };
            if is_empty_range(range) {
                return Ok(Vec::new());
            }
            let mut bytes = 0usize;
            g.entries
                .range(range)
                .take_while(|(_, slot)| {
                    let len = match slot {
                        Slot::Pending { payload, .. } => payload.len(),
                        Slot::Written(loc) => loc.len as usize,
                    };
                    let first = bytes == 0;
                    bytes = bytes.saturating_add(len.max(1));
                    first || bytes <= bytes_max
                })
                .map(|(&index, slot)| {
                    let read = match slot {
                        Slot::Pending { payload, .. } => SlotRead::Memory(payload.clone()),
                        Slot::Written(loc) => SlotRead::Disk(
                            *loc,
                            state.files.get(&loc.segment).cloned().ok_or_else(|| {
                                WalError::corruption(
                                    &self.shared.dir,
                                    0,
                                    format!(
                                        "entry {index} of group {group} is in a missing segment"
                                    ),
                                )
                            }),
                        ),
                    };
                    (index, read)
                })
                .collect()
        };
        slots
            .into_iter()
            .map(|(index, read)| Ok((index, self.read_slot(group, index, read)?)))
            .collect()
    }

    fn read_slot(&self, group: u64, index: u64, read: SlotRead) -> Result<Bytes> {
        match read {
            SlotRead::Memory(payload) => Ok(payload),
            SlotRead::Disk(loc, file) => {
                let file = file?;
                let path = self.shared.dir.join(format::segment_file_name(loc.segment));
                let mut buf = vec![0u8; loc.len as usize];
                file.read_exact_at(&mut buf, loc.offset)
                    .map_err(|e| WalError::io(&path, e))?;
                let checked = if loc.version != format::FORMAT_VERSION_V1 {
                    format::check_record(Bytes::from(buf), group, index)
                } else {
                    format::check_record_v1(Bytes::from(buf), group, index)
                };
                checked.map_err(|reason| WalError::corruption(&path, loc.offset, reason))
            }
        }
    }

    /// Every live entry of every group, in the order they were written.
    pub fn replay(&self) -> Result<Vec<Record>> {
        let mut located: Vec<(u64, u64, u64, u64)> = Vec::new();
        let mut pending: Vec<(u64, u64, u64)> = Vec::new();
        {
            let state = self.shared.state.lock();
            for (&group, g) in &state.groups.groups {
                for (&index, slot) in &g.entries {
                    match slot {
                        Slot::Written(loc) => located.push((loc.segment, loc.offset, group, index)),
                        Slot::Pending { id, .. } => pending.push((*id, group, index)),
                    }
                }
            }
        }
        located.sort_unstable();
        pending.sort_unstable();
        let order = located
            .into_iter()
            .map(|(_, _, g, i)| (g, i))
            .chain(pending.into_iter().map(|(_, g, i)| (g, i)));
        let mut out = Vec::new();
        for (group, index) in order {
            if let Some((_, payload)) = self.entries(group, index..=index)?.pop() {
                out.push(Record {
                    group,
                    index,
                    payload,
                });
            }
        }
        Ok(out)
    }

    /// A group's log, or `None` if nothing was ever written for it.
    pub fn group(&self, group: u64) -> Option<GroupInfo> {
        let state = self.shared.state.lock();
        let g = state.groups.groups.get(&group)?;
        Some(GroupInfo {
            first_index: g.entries.keys().next().copied(),
            last_index: g.last_index(),
            vote: g.vote.clone(),
            committed: g.committed.clone(),
            purged: g.purged.clone(),
        })
    }

    /// Every group the log knows.
    pub fn groups(&self) -> Vec<u64> {
        self.shared
            .state
            .lock()
            .groups
            .groups
            .keys()
            .copied()
            .collect()
    }

    /// Deletes every sealed segment in which no group has a live entry, once every record that
    /// made them so is durable. Returns what it removed. The active segment is never deleted.
    pub fn purge_segments(&self) -> Result<PurgeStats> {
        let shared = &self.shared;
        let _purging = shared.purge_lock.lock();
        let (doomed, barrier) = {
            let state = shared.state.lock();
            if state.poisoned {
                return Err(WalError::Poisoned);
            }
            let doomed: Vec<SegmentMeta> = state
                .sealed
                .iter()
                .filter(|s| state.groups.live.get(&s.id).copied().unwrap_or(0) == 0)
                .cloned()
                .collect();
            (doomed, state.submitted)
        };
        if doomed.is_empty() {
            return Ok(PurgeStats::default());
        }
        // The truncates and purges that left these segments without live entries must be
        // durable before the entries go, or a crash could bring back a log with a hole.
        shared.wait_durable(barrier)?;
        if !shared.fsync_batches {
            self.sync()?;
        }
        let mut stats = PurgeStats::default();
        let mut removed = Vec::new();
        let mut failure = None;
        for segment in &doomed {
            match shared.io.remove(&segment.path) {
                Ok(()) => {
                    removed.push(segment.id);
                    stats.segments_removed += 1;
                    stats.bytes_removed += segment.bytes;
                }
                Err(e) => {
                    failure = Some(WalError::io(&segment.path, e));
                    break;
                }
            }
        }
        let synced = shared
            .io
            .sync_dir(&shared.dir)
            .map_err(|e| WalError::io(&shared.dir, e));
        let mut state = shared.state.lock();
        state.sealed.retain(|s| !removed.contains(&s.id));
        for id in &removed {
            state.files.remove(id);
            state.groups.live.remove(id);
        }
        if let Err(err) = synced {
            state.poisoned = true;
            shared.landed.notify_all();
            tracing::error!(dir = %shared.dir.display(), "WAL poisoned by a failed directory fsync");
            return Err(err);
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(stats),
        }
    }

    /// Whether an earlier failure has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.shared.state.lock().poisoned
    }

    /// Number of segment files (sealed plus the active one).
    pub fn segment_count(&self) -> usize {
        self.shared.state.lock().sealed.len() + 1
    }

    /// Bytes of log data in all segment files (headers, frames, seals). The active segment's
    /// preallocated zero tail is not counted: its file is up to
    /// [`crate::SEGMENT_PREALLOCATE_BYTES`] longer.
    pub fn total_bytes(&self) -> u64 {
        let state = self.shared.state.lock();
        state.sealed.iter().map(|s| s.bytes).sum::<u64>() + state.active_bytes
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let s = &self.shared;
        WalStats {
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            entries: s.entries.load(Ordering::Relaxed),
            group_syncs: s.group_syncs.load(Ordering::Relaxed),
        }
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.work.notify_all();
        if let Some(flusher) = self.flusher.take() {
            if flusher.join().is_err() {
                tracing::error!("WAL flusher thread panicked");
            }
        }
    }
}

/// Where to read one entry from.
enum SlotRead {
    Memory(Bytes),
    Disk(Loc, Result<Arc<dyn IoFile>>),
}

fn is_empty_range(range: (Bound<u64>, Bound<u64>)) -> bool {
    let start = match range.0 {
        Bound::Included(s) => Some(s),
        Bound::Excluded(s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.1 {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(e),
        Bound::Unbounded => None,
    };
    match (start, end) {
        (None, _) => true,
        (Some(s), Some(e)) => s >= e,
        (Some(_), None) => false,
    }
}

fn into_rec(op: Op) -> Rec {
    let (kind, group, index, payload) = match op {
        Op::Entry(r) => (Kind::Entry, r.group, r.index, r.payload),
        Op::Vote { group, payload } => (Kind::Vote, group, 0, payload),
        Op::Committed { group, payload } => (Kind::Committed, group, 0, payload),
        Op::TruncateFrom { group, index } => (Kind::Truncate, group, index, Bytes::new()),
        Op::Purge {
            group,
            index,
            payload,
        } => (Kind::Purge, group, index, payload),
    };
    Rec {
        kind,
        group,
        index,
        payload,
    }
}

/// Checks that `recs`, applied in order, keep every group's entries contiguous (the same rules
/// as `Groups::apply`, over each group's live range and purge point).
fn check_ops(groups: &Groups, recs: &[Rec]) -> Result<()> {
    #[derive(Clone, Copy)]
    struct Sim {
        range: Option<(u64, u64)>,
        purged: Option<u64>,
    }
    let mut sims: BTreeMap<u64, Sim> = BTreeMap::new();
    for rec in recs {
        let sim = sims.entry(rec.group).or_insert_with(|| {
            let g = groups.groups.get(&rec.group);
            Sim {
                range: g.and_then(|g| Some((*g.entries.keys().next()?, g.last_index()?))),
                purged: g.and_then(|g| g.purged.as_ref().map(|(p, _)| *p)),
            }
        });
        match rec.kind {
            Kind::Entry => {
                if sim.purged.is_some_and(|p| rec.index <= p) {
                    return Err(WalError::InvalidOp(format!(
                        "group {}: entry {} is at or below the purge point",
                        rec.group, rec.index
                    )));
                }
                let next = sim
                    .range
                    .map(|(_, last)| last + 1)
                    .or(sim.purged.map(|p| p + 1));
                if let Some(next) = next.filter(|&n| rec.index > n) {
                    return Err(WalError::InvalidOp(format!(
                        "group {}: entry {} would leave a hole (next is {next})",
                        rec.group, rec.index
                    )));
                }
                sim.range = match sim.range {
                    Some((first, _)) if first <= rec.index => Some((first, rec.index)),
                    _ => Some((rec.index, rec.index)),
                };
            }
            Kind::Truncate => {
                sim.range = sim
                    .range
                    .filter(|&(first, _)| first < rec.index)
                    .map(|(first, last)| (first, last.min(rec.index - 1)));
            }
            Kind::Purge => {
                if sim.purged.is_none_or(|p| rec.index >= p) {
                    sim.purged = Some(rec.index);
                    sim.range = sim
                        .range
                        .map(|(first, last)| (first.max(rec.index.saturating_add(1)), last))
                        .filter(|(first, last)| first <= last);
                }
            }
            Kind::Vote | Kind::Committed | Kind::Range => {}
        }
    }
    Ok(())
}

impl Shared {
    /// The flusher thread: writes what is queued whenever a submission that wants a flush (not
    /// a lazy one) is queued and no caller is flushing already, until the log is dropped (it
    /// drains the queue first, lazy submissions included).
    fn flush_loop(self: Arc<Shared>) {
        loop {
            {
                let mut state = self.state.lock();
                while (!wants_flush(&state.queue) || state.flushing) && !state.stopping {
                    self.work.wait(&mut state);
                }
                if state.queue.is_empty() && !state.flushing {
                    return;
                }
            }
            self.flush_once();
        }
    }

    /// Writes one group of queued submissions (one frame, one fdatasync) unless a flush is
    /// running already, then completes them. Returns whether it flushed.
    fn flush_once(&self) -> bool {
        let batch = {
            let mut state = self.state.lock();
            if state.flushing || state.queue.is_empty() {
                return false;
            }
            state.flushing = true;
            take_group(&mut state.queue)
        };
        let result = if self.state.lock().poisoned {
            Err(WalError::Poisoned)
        } else {
            self.write_batch(&batch)
        };
        let outcome = {
            let mut state = self.state.lock();
            match &result {
                Ok(locs) => {
                    for ((rec, id), loc) in batch.iter().flat_map(|s| s.recs.iter()).zip(locs) {
                        if let Some(loc) = loc {
                            state.groups.landed(rec.group, rec.index, *id, *loc);
                        }
                    }
                }
                Err(e) => {
                    if !state.poisoned {
                        tracing::error!(dir = %self.dir.display(), "WAL poisoned by a failed write or fsync: refusing all further appends");
                    }
                    state.poisoned = true;
                    let first = state.durable + 1;
                    let last = state.durable + batch.len() as u64;
                    if state.failed.is_none() {
                        state.failed = Some((first, last, e.duplicate()));
                    }
                }
            }
            result.as_ref().map(|_| ()).map_err(WalError::duplicate)
        };
        // Completions run before waiters are released, so a caller whose `write` or `flush`
        // returned has seen every earlier submission's completion run.
        let count = batch.len() as u64;
        for submission in batch {
            if let Some(done) = submission.done {
                done(outcome.as_ref().map(|_| ()).map_err(WalError::duplicate));
            }
        }
        let mut state = self.state.lock();
        state.durable += count;
        state.flushing = false;
        self.landed.notify_all();
        if wants_flush(&state.queue) {
            self.work.notify_one();
        }
        true
    }

    /// Waits until submission number `seq` (1-based, in submission order) is durable, flushing
    /// in this thread whenever no flush is running (so a waiting caller pays no hand-off to the
    /// flusher thread), and returns its outcome.
    fn wait_for(&self, seq: u64) -> Result<()> {
        loop {
            {
                let mut state = self.state.lock();
                if state.durable >= seq {
                    return match &state.failed {
                        Some((first, last, e)) if (*first..=*last).contains(&seq) => {
                            Err(e.duplicate())
                        }
                        Some((first, _, _)) if seq > *first => Err(WalError::Poisoned),
                        _ => Ok(()),
                    };
                }
                if state.flushing || state.queue.is_empty() {
                    self.landed.wait(&mut state);
                    continue;
                }
            }
            self.flush_once();
        }
    }

    /// Waits until the first `count` submissions are durable (flushing in this thread when no
    /// flush is running).
    fn wait_durable(&self, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        self.wait_for(count)?;
        if self.state.lock().poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    /// Writes a group of submissions as one batch frame and fsyncs once; returns where each
    /// entry record landed (in order, `None` for other records).
    fn write_batch(&self, batch: &[Submission]) -> Result<Vec<Option<Loc>>> {
        let mut writer = self.writer.lock();
        let recs = || batch.iter().flat_map(|s| s.recs.iter().map(|(r, _)| r));
        if recs().next().is_none() {
            return Ok(Vec::new());
        }
        let frame_bytes = format::batch_bytes(recs()) as u64;
        let has_frames = writer.active.meta.bytes > SEGMENT_HEADER_BYTES as u64;
        if has_frames && writer.active.meta.bytes + frame_bytes > self.segment_bytes_max {
            self.rotate(&mut writer)?;
        }
        let frame_start = writer.active.meta.bytes;
        let sync = self.fsync_batches || recs().any(|r| r.kind == Kind::Vote);
        let started = std::time::Instant::now();
        let offsets = write_frame(&mut writer, recs(), self.segment_bytes_max, sync)?;
        let elapsed = started.elapsed();
        let mut groups_in_batch: Vec<u64> = recs().map(|r| r.group).collect();
        groups_in_batch.sort_unstable();
        groups_in_batch.dedup();
        let segment = writer.active.meta.id;
        let mut locs = Vec::with_capacity(offsets.len());
        let mut entries = 0;
        for (rec, offset) in recs().zip(&offsets) {
            writer.view.apply(rec);
            locs.push((rec.kind == Kind::Entry).then(|| {
                entries += 1;
                Loc {
                    segment,
                    offset: frame_start + *offset as u64,
                    len: rec.encoded_len() as u32,
                    version: FORMAT_VERSION,
                }
            }));
        }
        if sync {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            if let Some(observe) = &self.on_fsync {
                observe(crate::FsyncReport {
                    elapsed,
                    entries,
                    groups: groups_in_batch.len() as u64,
                });
            }
        }
        self.records
            .fetch_add(offsets.len() as u64, Ordering::Relaxed);
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.group_syncs
            .fetch_add(groups_in_batch.len() as u64, Ordering::Relaxed);
        self.state.lock().active_bytes = writer.active.meta.bytes;
        Ok(locs)
    }

    /// Seals the active segment (seal frame, the zero tail trimmed, one fdatasync), starts the
    /// next one, and restates every group at its start.
    fn rotate(&self, writer: &mut Writer) -> Result<()> {
        let sealed = seal(&writer.active, writer.next_seq - 1)?;
        let next = create_segment(
            self.io.as_ref(),
            &self.dir,
            writer.active.meta.id + 1,
            self.segment_bytes_max,
            segment_version(self.fsync_batches),
        )?;
        writer.active = next;
        {
            let mut state = self.state.lock();
            state.sealed.push(sealed);
            state
                .files
                .insert(writer.active.meta.id, writer.active.file.clone());
            state.active_bytes = writer.active.meta.bytes;
        }
        write_restatement(writer, self.segment_bytes_max)
    }
}

/// Takes the longest prefix of `queue` within [`GROUP_BYTES_MAX`] (at least one submission).
fn take_group(queue: &mut Vec<Submission>) -> Vec<Submission> {
    let mut bytes = 0;
    let mut count = 0;
    for submission in queue.iter() {
        let frame_bytes = format::batch_bytes(submission.recs.iter().map(|(r, _)| r));
        if count > 0 && bytes + frame_bytes > GROUP_BYTES_MAX {
            break;
        }
        bytes += frame_bytes;
        count += 1;
    }
    queue.drain(..count).collect()
}

/// Writes `recs` as one batch frame at the end of the active segment, extending its zero tail
/// when the frame crosses it, and fsyncs when `sync` (always, when it extends the tail: the
/// new size must be durable before frames are written past the old one). Returns each
/// record's offset within the frame.
fn write_frame<'a>(
    writer: &mut Writer,
    recs: impl Iterator<Item = &'a Rec> + Clone,
    segment_bytes_max: u64,
    sync: bool,
) -> Result<Vec<usize>> {
    let seq = writer.next_seq;
    let mut buf = std::mem::take(&mut writer.buf);
    buf.clear();
    let offsets = format::encode_batch(&mut buf, seq, recs);
    let active = &writer.active;
    let frame_end = active.meta.bytes + buf.len() as u64;
    let file_bytes = if frame_end > active.file_bytes {
        // Crossing the zero-filled part: extend it by a chunk under this same fdatasync
        // (the one fdatasync per chunk that commits a new size).
        frame_end.max((active.file_bytes + SEGMENT_PREALLOCATE_BYTES).min(segment_bytes_max))
    } else {
        active.file_bytes
    };
    let written = active
        .file
        .write_all_at(&buf, active.meta.bytes)
        .and_then(|()| {
            // Only the extension: up to `active.file_bytes` the file is zeros already.
            let zeros_start = frame_end.max(active.file_bytes);
            write_zeros(active.file.as_ref(), zeros_start, file_bytes)
        })
        .and_then(|()| {
            if sync || file_bytes > active.file_bytes {
                active.file.sync_data()
            } else {
                Ok(())
            }
        })
        .map_err(|e| WalError::io(&active.meta.path, e));
    writer.buf = if buf.capacity() > ENCODE_BUFFER_KEEP_BYTES {
        Vec::new()
    } else {
        buf
    };
    written?;
    writer.active.meta.bytes = frame_end;
    writer.active.file_bytes = file_bytes;
    writer.next_seq = seq + 1;
    Ok(offsets)
}

/// Writes the frame restating every group at the start of a fresh segment (fsynced on its own:
/// frames are never written two per fsync).
fn write_restatement(writer: &mut Writer, segment_bytes_max: u64) -> Result<()> {
    let recs = writer.view.restate();
    if recs.is_empty() {
        return Ok(());
    }
    write_frame(writer, recs.iter(), segment_bytes_max, true)?;
    Ok(())
}

/// Seals `active`: a seal frame naming batch `last_seq`, the zero tail trimmed, one fdatasync.
/// Returns the sealed segment's metadata.
fn seal(active: &Active, last_seq: u64) -> Result<SegmentMeta> {
    let mut seal = Vec::with_capacity(format::FRAME_HEADER_BYTES);
    format::encode_seal(&mut seal, last_seq);
    let sealed_bytes = active.meta.bytes + seal.len() as u64;
    active
        .file
        .write_all_at(&seal, active.meta.bytes)
        .and_then(|()| active.file.set_len(sealed_bytes))
        .and_then(|()| active.file.sync_data())
        .map_err(|e| WalError::io(&active.meta.path, e))?;
    let mut meta = active.meta.clone();
    meta.bytes = sealed_bytes;
    Ok(meta)
}

/// Creates segment `id`: new file, header, zeros up to the first preallocation chunk,
/// fdatasync, then a directory fsync so the file's name is durable before anything in it is
/// acknowledged.
fn create_segment(
    io: &dyn Io,
    dir: &Path,
    id: u64,
    segment_bytes_max: u64,
    version: u32,
) -> Result<Active> {
    let path = dir.join(format::segment_file_name(id));
    let file = io.create_new(&path).map_err(|e| WalError::io(&path, e))?;
    let file_bytes = SEGMENT_PREALLOCATE_BYTES.min(segment_bytes_max);
    file.write_all_at(&format::encode_segment_header(id, version), 0)
        .and_then(|()| write_zeros(file.as_ref(), SEGMENT_HEADER_BYTES as u64, file_bytes))
        .and_then(|()| file.sync_data())
        .map_err(|e| WalError::io(&path, e))?;
    io.sync_dir(dir).map_err(|e| WalError::io(dir, e))?;
    let mut meta = SegmentMeta::new(id, path);
    meta.version = version;
    Ok(Active {
        meta,
        file,
        file_bytes,
    })
}

/// The format version of segments written in a mode: frames fsynced one by one, or not.
fn segment_version(fsync_batches: bool) -> u32 {
    if fsync_batches {
        FORMAT_VERSION
    } else {
        format::FORMAT_VERSION_UNSYNCED
    }
}
