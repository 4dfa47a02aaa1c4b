//! `cairn-wal`: the node's single write-ahead log, shared by every shard and every Raft group,
//! the way TiKV's raft-engine is.
//!
//! One log per node turns many small durable writes into few large ones. Each *group* (a Raft
//! group, or the single-node commit log) has its own log inside it: entries at contiguous
//! indexes, a vote, a committed marker, a purge point. Callers [`Wal::submit`] [`Op`]s, which
//! take effect in the in-memory index at once (an appended entry is readable the moment
//! `submit` returns) and become durable in the background: a flusher thread writes everything
//! queued, from every group, as one frame with one `fdatasync`, then calls each submission's
//! completion. [`Wal::write`] does the same and waits. Reads ([`Wal::entries`]) use a per-group
//! index of record locations, so they never scan the log. A sealed segment file is deleted by
//! [`Wal::purge_segments`] once no group has a live entry in it (every segment starts with the
//! groups' vote, committed, purge and range records restated, so no older segment is needed for
//! them).
//!
//! ```
//! use bytes::Bytes;
//! use cairn_wal::{Op, Record, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! wal.append(&[Record { group: 3, index: 1, payload: Bytes::from_static(b"set k v") }])?;
//! wal.write(vec![Op::Vote { group: 3, payload: Bytes::from_static(b"term 2") }])?;
//! drop(wal);
//!
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! assert_eq!(wal.entries(3, 1..)?[0].1, "set k v");
//! assert_eq!(wal.group(3).unwrap().vote.unwrap(), "term 2");
//! // Group 3 applied index 1 and flushed its state machine: its log may go.
//! wal.write(vec![Op::Purge { group: 3, index: 1, payload: Bytes::new() }])?;
//! wal.purge_segments()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The file format, the fsync rules and the recovery rules are in `docs/design.md`, section
//! "Write-ahead log". Architecture invariant: this crate uses std threads and blocking I/O only;
//! it knows nothing about tokio, Raft or the storage engine.

mod error;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod groups;
mod recovery;
mod wal;

/// The file-system seam the log runs on ([`WalOptions::io`]), re-exported so a caller can pass
/// `io::StdIo` or a simulated disk without depending on `cairn-io` itself.
pub use cairn_io as io;

pub use error::{Result, WalError};
pub use wal::{Done, GROUP_BYTES_MAX, GroupInfo, PurgeStats, Wal, WalStats};

/// One change to a group's log, in the order submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An entry at `index`: the group's next index, or a lower one, which replaces that entry
    /// and everything after it (a conflicting suffix). An index that would leave a hole, or at
    /// or below the purge point, is refused.
    Entry(Record),
    /// The group's vote (opaque bytes; the last one written wins).
    Vote { group: u64, payload: Bytes },
    /// The group's committed marker (opaque bytes; the last one written wins).
    Committed { group: u64, payload: Bytes },
    /// Removes the entries at `index` and above.
    TruncateFrom { group: u64, index: u64 },
    /// Removes the entries at `index` and below; `payload` (say, the purged log id) is kept and
    /// returned by [`Wal::group`].
    Purge {
        group: u64,
        index: u64,
        payload: Bytes,
    },
}

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// Default size at which the active segment is sealed and a new one started.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest configurable segment size (one header plus a little room).
pub const SEGMENT_BYTES_MAX_MIN: u64 = 4 * 1024;
/// The active segment is kept zero-filled (written and fdatasynced) this far ahead of its
/// frames, capped at `segment_bytes_max`: an `fdatasync` that only overwrites blocks the file
/// already owns does not have to journal a new file size. Each extension is paid by the append
/// that crosses the end (one zero-filled chunk in the same fdatasync; ~3 ms for 4 MiB on the
/// benchmark machine, against 165 ms for 64 MiB at once), and bounds the unused tail to 4 MiB.
pub const SEGMENT_PREALLOCATE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest payload of one record: a 16 MiB value plus its key and command framing fits with
/// room to spare.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest encoded batch (one `append` call). The frame length field is 32 bits; callers with
/// more data split it over several appends.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The shard or Raft group the entry belongs to.
    pub group: u64,
    /// Position within the group (log index); a group's entries are contiguous.
    pub index: u64,
    /// Opaque bytes, at most [`RECORD_PAYLOAD_BYTES_MAX`].
    pub payload: Bytes,
}

/// How to open a [`Wal`].
#[derive(Clone)]
pub struct WalOptions {
    /// The active segment is sealed before a batch would take it past this size (a batch larger
    /// than this gets a segment of its own). At least [`SEGMENT_BYTES_MAX_MIN`].
    pub segment_bytes_max: u64,
    /// File-system access; [`io::StdIo`] by default, [`io::sim::SimIo`] in fault-injection tests.
    pub io: Arc<dyn io::Io>,
    /// Whether every batch is fdatasynced before it completes (the default). When `false`
    /// (Redis's `appendfsync everysec`), a batch completes once written, and is made durable by
    /// [`Wal::sync`], by a segment rotation, or by a later batch that carries a vote (votes are
    /// always fsynced: a forgotten vote could let a node vote twice in one term). A crash may
    /// then lose a suffix of what completed, never a record in the middle.
    pub fsync_batches: bool,
    /// Called after every fdatasync of appended batches with what it covered (for metrics:
    /// fsync latency, entries and groups per fsync). Runs on the flushing thread: keep it
    /// cheap.
    pub on_fsync: Option<FsyncObserver>,
}

/// What one fdatasync of appended batches covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsyncReport {
    /// The frame's write and its fdatasync.
    pub elapsed: std::time::Duration,
    /// Entries the frame carried.
    pub entries: u64,
    /// Distinct groups whose records the frame carried.
    pub groups: u64,
}

/// See [`WalOptions::on_fsync`].
pub type FsyncObserver = Arc<dyn Fn(FsyncReport) + Send + Sync>;

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            io: Arc::new(io::StdIo),
            fsync_batches: true,
            on_fsync: None,
        }
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("io", &self.io)
            .field("fsync_batches", &self.fsync_batches)
            .field("on_fsync", &self.on_fsync.is_some())
            .finish()
    }
}
