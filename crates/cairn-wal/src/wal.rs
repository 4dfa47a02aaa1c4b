//! The [`Wal`] handle: group commit, rotation, purge, poisoning.
//!
//! Group commit, leader/follower style: every `append` call queues its records; whichever caller
//! finds no write in progress becomes the leader, takes everything queued (up to
//! [`GROUP_BYTES_MAX`]), writes it as one batch frame (each call's records contiguous) with one
//! `pwrite`, issues one `fdatasync`, and hands every caller in the group its result. Callers that arrive meanwhile
//! wait and form the next group. So concurrent callers share fsyncs, and a single caller (the
//! server's writer thread draining its queue into one call) gets exactly one fsync per call.
//!
//! The active segment is preallocated: zero-filled and fdatasynced ahead of its frames (see
//! [`crate::SEGMENT_PREALLOCATE_BYTES`]), so a batch's `fdatasync` overwrites blocks the file
//! already owns and does not have to commit a new file size. The append that reaches the end of
//! the zero-filled part extends it by another chunk, under the same fdatasync as its frame.
//!
//! After any failed write or fsync the log is poisoned: the bytes on disk are unknown, so
//! nothing more may be acknowledged until a restart recovers from the disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::format::{self, SEGMENT_HEADER_BYTES};
use crate::recovery::{self, SegmentMeta, write_zeros};
use crate::{
    BATCH_BYTES_MAX, RECORD_PAYLOAD_BYTES_MAX, Record, Result, SEGMENT_BYTES_MAX_MIN,
    SEGMENT_PREALLOCATE_BYTES, WalError, WalOptions,
};
use cairn_io::{Io, IoFile};

/// Most bytes one group commit writes; callers beyond it wait for the next group.
pub const GROUP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The encode buffer is released after a batch larger than this, so one huge append does not
/// pin its memory for the life of the log.
const ENCODE_BUFFER_KEEP_BYTES: usize = 4 * 1024 * 1024;

/// What a [`Wal::purge`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Their total size.
    pub bytes_removed: u64,
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

#[derive(Debug)]
struct Inner {
    /// Set by a failed write or fsync; never cleared.
    poisoned: bool,
    /// Older segments, oldest first. Immutable on disk.
    sealed: Vec<SegmentMeta>,
    active: Active,
    /// Sequence number of the next batch.
    next_seq: u64,
    /// Reused encode buffer.
    buf: Vec<u8>,
}

/// Appends waiting to be written, and the results of written ones.
#[derive(Debug, Default)]
struct Queue {
    /// Queued appends in arrival order, each with its ticket.
    waiting: Vec<(u64, Vec<Record>)>,
    next_ticket: u64,
    /// Outcomes of written appends, until their callers collect them.
    done: std::collections::HashMap<u64, Result<()>>,
    /// Whether a leader is writing a group now.
    leader: bool,
}

/// The node's write-ahead log. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Wal {
    /// Exclusive lock on `dir` for the life of the handle.
    _lock: Box<dyn std::fmt::Debug + Send + Sync>,
    dir: PathBuf,
    io: Arc<dyn Io>,
    segment_bytes_max: u64,
    inner: Mutex<Inner>,
    /// Group commit queue (lock order: `queue` is never held while taking `inner`).
    queue: Mutex<Queue>,
    /// Signalled when a group's results are in `queue.done`.
    group_done: Condvar,
    /// Serialises purges (which work outside `inner` so appends are not blocked by deletions).
    purge_lock: Mutex<()>,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and returns it with every record on disk, in append
    /// order. A torn tail of the newest segment is truncated (with a warning); any other damage
    /// is [`WalError::Corruption`].
    ///
    /// Records at or below a group's applied index may be returned (purge works on whole
    /// segments); a later record with the same group and index supersedes an earlier one.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Vec<Record>)> {
        let dir = dir.as_ref().to_path_buf();
        if options.segment_bytes_max < SEGMENT_BYTES_MAX_MIN {
            return Err(WalError::InvalidOptions(format!(
                "segment_bytes_max {} is below the minimum {SEGMENT_BYTES_MAX_MIN}",
                options.segment_bytes_max
            )));
        }
        let io = options.io;
        // The log directory's own entry must be durable before anything in it is acknowledged.
        cairn_io::create_dir_all_durable(io.as_ref(), &dir).map_err(|e| WalError::io(&dir, e))?;
        let lock = io.lock_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => WalError::Locked { path: dir.clone() },
            _ => WalError::io(&dir, e),
        })?;
        let recovered = recovery::recover(&dir, io.as_ref())?;
        let mut sealed = recovered.sealed;
        let active = match recovered.active {
            Some(active) if !active.sealed => Active {
                meta: active.meta,
                file: active.file,
                file_bytes: active.file_bytes,
            },
            Some(active) => {
                let next_id = active.meta.id + 1;
                sealed.push(active.meta);
                create_segment(io.as_ref(), &dir, next_id, options.segment_bytes_max)?
            }
            None => create_segment(io.as_ref(), &dir, 1, options.segment_bytes_max)?,
        };
        let wal = Wal {
            _lock: lock,
            dir,
            io,
            segment_bytes_max: options.segment_bytes_max,
            inner: Mutex::new(Inner {
                poisoned: false,
                sealed,
                active,
                next_seq: recovered.last_seq + 1,
                buf: Vec::new(),
            }),
            queue: Mutex::new(Queue::default()),
            group_done: Condvar::new(),
            purge_lock: Mutex::new(()),
        };
        Ok((wal, recovered.records))
    }

    /// Writes `records` and makes them durable before returning: either all of them are
    /// durable when this returns `Ok`, or the call failed. Concurrent calls are grouped under one
    /// fdatasync (see the module docs); each call's records stay contiguous and in order. After
    /// a failed write or fsync the log is poisoned and every later call returns
    /// [`WalError::Poisoned`].
    pub fn append(&self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(record) = records
            .iter()
            .find(|r| r.payload.len() > RECORD_PAYLOAD_BYTES_MAX)
        {
            return Err(WalError::RecordTooLarge {
                bytes: record.payload.len(),
                limit: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        let frame_bytes = format::batch_bytes(records);
        if frame_bytes > BATCH_BYTES_MAX {
            return Err(WalError::BatchTooLarge {
                bytes: frame_bytes,
                limit: BATCH_BYTES_MAX,
            });
        }
        let mut queue = self.queue.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, records.to_vec()));
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                return result;
            }
            if queue.leader {
                self.group_done.wait(&mut queue);
                continue;
            }
            queue.leader = true;
            let group = take_group(&mut queue.waiting);
            drop(queue);
            let mut leading = Leading {
                wal: self,
                tickets: group.iter().map(|(t, _)| *t).collect(),
            };
            let outcome = self.write_group(&group);
            queue = self.queue.lock();
            for ticket in std::mem::take(&mut leading.tickets) {
                queue.done.insert(
                    ticket,
                    outcome.as_ref().map(|_| ()).map_err(WalError::duplicate),
                );
            }
            queue.leader = false;
            self.group_done.notify_all();
        }
    }

    /// Writes a group of appends as one batch frame and fsyncs once. Poisons the log on failure.
    fn write_group(&self, group: &[(u64, Vec<Record>)]) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner.poisoned {
            return Err(WalError::Poisoned);
        }
        let result = self.write_group_locked(&mut inner, group);
        if result.is_err() {
            inner.poisoned = true;
            tracing::error!(dir = %self.dir.display(), "WAL poisoned by a failed write or fsync: refusing all further appends");
        }
        if inner.buf.capacity() > ENCODE_BUFFER_KEEP_BYTES {
            inner.buf = Vec::new();
        }
        result
    }

    /// One frame per group, not per call: recovery relies on every frame being fsynced before
    /// the next is written, so that damage followed by a valid frame proves corruption of
    /// acknowledged data. Several frames in one `pwrite` could be torn out of order.
    fn write_group_locked(&self, inner: &mut Inner, group: &[(u64, Vec<Record>)]) -> Result<()> {
        let records = group.iter().flat_map(|(_, records)| records.iter());
        let frame_bytes = (format::FRAME_HEADER_BYTES
            + records
                .clone()
                .map(|r| format::RECORD_HEADER_BYTES + r.payload.len())
                .sum::<usize>()) as u64;
        let has_frames = inner.active.meta.bytes > SEGMENT_HEADER_BYTES as u64;
        if has_frames && inner.active.meta.bytes + frame_bytes > self.segment_bytes_max {
            self.rotate(inner)?;
        }
        let seq = inner.next_seq;
        let mut buf = std::mem::take(&mut inner.buf);
        buf.clear();
        format::encode_batch(&mut buf, seq, records.clone());
        debug_assert_eq!(buf.len() as u64, frame_bytes);
        let active = &inner.active;
        let frame_end = active.meta.bytes + frame_bytes;
        let file_bytes = if frame_end > active.file_bytes {
            // Crossing the zero-filled part: extend it by a chunk under this same fdatasync
            // (the one fdatasync per chunk that commits a new size).
            frame_end
                .max((active.file_bytes + SEGMENT_PREALLOCATE_BYTES).min(self.segment_bytes_max))
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
            .and_then(|()| active.file.sync_data())
            .map_err(|e| WalError::io(&active.meta.path, e));
        inner.buf = buf;
        written?;
        let active = &mut inner.active;
        active.meta.bytes = frame_end;
        active.file_bytes = file_bytes;
        for record in records {
            active.meta.note(record);
        }
        inner.next_seq = seq + 1;
        Ok(())
    }

    /// Seals the active segment (seal frame, the zero tail trimmed, one fdatasync) and starts
    /// the next one.
    fn rotate(&self, inner: &mut Inner) -> Result<()> {
        let mut seal = Vec::with_capacity(format::FRAME_HEADER_BYTES);
        format::encode_seal(&mut seal, inner.next_seq - 1);
        let active = &inner.active;
        let sealed_bytes = active.meta.bytes + seal.len() as u64;
        active
            .file
            .write_all_at(&seal, active.meta.bytes)
            .and_then(|()| active.file.set_len(sealed_bytes))
            .and_then(|()| active.file.sync_data())
            .map_err(|e| WalError::io(&active.meta.path, e))?;
        let next = create_segment(
            self.io.as_ref(),
            &self.dir,
            active.meta.id + 1,
            self.segment_bytes_max,
        )?;
        let mut old = std::mem::replace(&mut inner.active, next);
        old.meta.bytes += seal.len() as u64;
        inner.sealed.push(old.meta);
        Ok(())
    }

    /// Deletes every sealed segment whose records all have `index <= applied(group)`. The
    /// caller must have made those records durable elsewhere first (flushed the state
    /// machines). `applied` must not call back into this `Wal`. The active segment is never
    /// deleted. For a group that no longer lives on this node, return `u64::MAX`, or its old
    /// segments are kept forever.
    pub fn purge(&self, applied: impl Fn(u64) -> u64) -> Result<PurgeStats> {
        let _purging = self.purge_lock.lock();
        let candidates = {
            let inner = self.inner.lock();
            if inner.poisoned {
                return Err(WalError::Poisoned);
            }
            inner.sealed.clone()
        };
        let doomed: Vec<&SegmentMeta> = candidates
            .iter()
            .filter(|segment| {
                segment
                    .groups
                    .iter()
                    .all(|(&group, &max)| max <= applied(group))
            })
            .collect();
        if doomed.is_empty() {
            return Ok(PurgeStats::default());
        }
        let mut stats = PurgeStats::default();
        let mut removed = Vec::new();
        let mut failure = None;
        for segment in doomed {
            match self.io.remove(&segment.path) {
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
        let synced = self
            .io
            .sync_dir(&self.dir)
            .map_err(|e| WalError::io(&self.dir, e));
        let mut inner = self.inner.lock();
        inner
            .sealed
            .retain(|segment| !removed.contains(&segment.id));
        if let Err(err) = synced {
            inner.poisoned = true;
            tracing::error!(dir = %self.dir.display(), "WAL poisoned by a failed directory fsync");
            return Err(err);
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(stats),
        }
    }

    /// Whether an earlier failure has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.inner.lock().poisoned
    }

    /// Number of segment files (sealed plus the active one).
    pub fn segment_count(&self) -> usize {
        self.inner.lock().sealed.len() + 1
    }

    /// Bytes of log data in all segment files (headers, frames, seals). The active segment's
    /// preallocated zero tail is not counted: its file is up to
    /// [`crate::SEGMENT_PREALLOCATE_BYTES`] longer.
    pub fn total_bytes(&self) -> u64 {
        let inner = self.inner.lock();
        inner.sealed.iter().map(|s| s.bytes).sum::<u64>() + inner.active.meta.bytes
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The leader's duty while it writes a group: if it unwinds (a panic), the log is poisoned and
/// every caller in the group gets [`WalError::Poisoned`] instead of waiting forever.
struct Leading<'a> {
    wal: &'a Wal,
    /// Tickets of the group; emptied once their results are delivered.
    tickets: Vec<u64>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        self.wal.inner.lock().poisoned = true;
        let mut queue = self.wal.queue.lock();
        for ticket in self.tickets.drain(..) {
            queue.done.insert(ticket, Err(WalError::Poisoned));
        }
        queue.leader = false;
        self.wal.group_done.notify_all();
    }
}

/// Takes the longest prefix of `waiting` within [`GROUP_BYTES_MAX`] (at least one append).
fn take_group(waiting: &mut Vec<(u64, Vec<Record>)>) -> Vec<(u64, Vec<Record>)> {
    let mut bytes = 0;
    let mut count = 0;
    for (_, records) in waiting.iter() {
        let frame_bytes = format::batch_bytes(records);
        if count > 0 && bytes + frame_bytes > GROUP_BYTES_MAX {
            break;
        }
        bytes += frame_bytes;
        count += 1;
    }
    waiting.drain(..count).collect()
}

/// Creates segment `id`: new file, header, zeros up to the first preallocation chunk,
/// fdatasync, then a directory fsync so the file's name is durable before anything in it is
/// acknowledged.
fn create_segment(io: &dyn Io, dir: &Path, id: u64, segment_bytes_max: u64) -> Result<Active> {
    let path = dir.join(format::segment_file_name(id));
    let file = io.create_new(&path).map_err(|e| WalError::io(&path, e))?;
    let file_bytes = SEGMENT_PREALLOCATE_BYTES.min(segment_bytes_max);
    file.write_all_at(&format::encode_segment_header(id), 0)
        .and_then(|()| write_zeros(file.as_ref(), SEGMENT_HEADER_BYTES as u64, file_bytes))
        .and_then(|()| file.sync_data())
        .map_err(|e| WalError::io(&path, e))?;
    io.sync_dir(dir).map_err(|e| WalError::io(dir, e))?;
    Ok(Active {
        meta: SegmentMeta::new(id, path),
        file,
        file_bytes,
    })
}
