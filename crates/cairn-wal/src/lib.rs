//! `cairn-wal`: the node's single write-ahead log, shared by every shard and (later) every
//! Raft group, the way TiKV's raft-engine is.
//!
//! One log per node turns many small durable writes into few large ones: a writer hands a batch
//! of records to [`Wal::append`], which writes them all and issues one `fdatasync` before
//! returning. Records are tagged with the `group` they belong to and an `index` within it, so
//! that [`Wal::purge`] can delete a whole segment file once every group has made its records in
//! that file durable elsewhere (in its state machine).
//!
//! ```
//! use bytes::Bytes;
//! use cairn_wal::{Record, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let (wal, replay) = Wal::open(dir.path(), WalOptions::default())?;
//! assert!(replay.is_empty());
//! wal.append(&[Record { group: 3, index: 1, payload: Bytes::from_static(b"set k v") }])?;
//! drop(wal);
//!
//! let (wal, replay) = Wal::open(dir.path(), WalOptions::default())?;
//! assert_eq!(replay[0].payload, "set k v");
//! wal.purge(|_group| 1)?; // group 3 applied through index 1 and flushed its state machine
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
mod recovery;
mod wal;

/// The file-system seam the log runs on ([`WalOptions::io`]), re-exported so a caller can pass
/// `io::StdIo` or a simulated disk without depending on `cairn-io` itself.
pub use cairn_io as io;

pub use error::{Result, WalError};
pub use wal::{GROUP_BYTES_MAX, PurgeStats, Wal};

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

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The shard or Raft group the record belongs to.
    pub group: u64,
    /// Position within the group (log index). The WAL stores it and uses it for purging; it does
    /// not require indexes to increase (a Raft log may rewrite an index after a conflict).
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
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            io: Arc::new(io::StdIo),
        }
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes_max", &self.segment_bytes_max)
            .field("io", &self.io)
            .finish()
    }
}
