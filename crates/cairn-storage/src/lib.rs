//! `cairn-storage`: Cairn's embedded, synchronous, Bitcask-style storage engine.
//!
//! Writes append CRC-checked records to segment files; an in-memory ordered keydir maps each
//! key to its newest record, so a point read is one keydir lookup and at most one `pread`.
//! Sealed segments get hint files so `open` never reads values, and a merge rewrites segments
//! whose data is mostly dead. Besides the keyspace, an engine keeps a small system table
//! ([`WriteBatch::put_system`], [`Engine::system_get`]): records written atomically with a
//! batch, durable like any other, held in memory and invisible to every user-facing read. It knows nothing about tokio, Raft, the network or protobuf:
//! Cairn's server uses it as a replicated state machine, and any Rust program can embed it.
//!
//! ```
//! use std::ops::Bound;
//! use cairn_storage::{Engine, Options, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), Options::default())?;
//! engine.put(b"user:1", b"ada")?;
//! let mut batch = WriteBatch::new();
//! batch.put(b"user:2", b"grace").delete(b"user:1").set_last_applied(b"raft-index-7");
//! engine.write(batch)?;
//! assert_eq!(engine.get(b"user:2")?.as_deref(), Some(&b"grace"[..]));
//! assert_eq!(engine.scan_prefix(b"user:", 10)?.len(), 1);
//! assert_eq!(engine.scan(Bound::Unbounded, Bound::Unbounded, 10)?.len(), 1);
//! engine.close()?;
//!
//! let engine = Engine::open(dir.path(), Options::default())?;
//! assert_eq!(engine.last_applied().as_deref(), Some(&b"raft-index-7"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The on-disk format, the fsync rules and the recovery rules are in `docs/design.md`, section
//! "Storage engine".

mod batch;
mod cache;
pub mod checkpoint;
pub mod clock;
mod commit;
mod engine;
mod error;
mod format;
mod hint;
mod keydir;
mod merge;
mod options;
mod poison;
mod recovery;
mod segment;

/// The file-system seam the engine runs on (`Engine::open_with_io`), re-exported so an embedder
/// can pass `io::StdIo` or a simulated disk without depending on `cairn-io` itself.
pub use cairn_io as io;

pub use batch::WriteBatch;
pub use checkpoint::Checkpoint;
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, GuardedRead};
pub use error::{Error, Result};
pub use options::{Options, SyncPolicy};

use bytes::Bytes;

/// Largest key the engine accepts, in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Default largest value, in bytes (configurable through [`Options::value_bytes_max`]).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Largest value limit that can be configured, in bytes.
pub const VALUE_BYTES_MAX_LIMIT: usize = 1 << 30;
/// Largest encoded batch (all records of one atomic write), in bytes.
pub const BATCH_BYTES_MAX: usize = 1 << 30;
/// Largest segment size that can be configured (offsets in the keydir are 32-bit, and one
/// batch of up to [`BATCH_BYTES_MAX`] must fit after the limit).
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 2 << 30;

/// One live record as returned by reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    /// The value; a slice of the record read from disk (CRC-checked) or of the cache.
    pub value: Bytes,
    /// Sequence number of the write that produced this record (the caller's version when the
    /// batch carried one, see [`WriteBatch::set_version`]).
    pub version: u64,
    /// Absolute expiry in milliseconds since the Unix epoch, if any.
    pub expires_at_ms: Option<u64>,
}

/// Key metadata without the value (no value read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    /// Version of the write that produced the live record.
    pub version: u64,
    /// Absolute expiry in milliseconds since the Unix epoch, if any.
    pub expires_at_ms: Option<u64>,
    /// Length of the value in bytes.
    pub value_len: u32,
}

/// Counters and gauges for metrics and `INFO`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Keys in the keydir (including expired keys not yet reclaimed by merge; system records
    /// are not keys).
    pub live_keys: u64,
    /// Segment files (active, sealed and merge output).
    pub segments: u64,
    /// Bytes in segment files.
    pub disk_bytes: u64,
    /// Bytes of records no key points at any more (reclaimable by merge).
    pub dead_bytes: u64,
    /// Puts and deletes acknowledged since open (system-table ones included).
    pub writes: u64,
    /// fdatasync calls on the active segment for group commit since open.
    pub syncs: u64,
    /// Value reads served by the value cache.
    pub cache_hits: u64,
    /// Value reads that went to disk.
    pub cache_misses: u64,
    /// Merge passes that rewrote at least one segment since open.
    pub merges: u64,
    /// Highest version written (see [`Engine::last_sequence`]).
    pub last_sequence: u64,
    /// Damaged records skipped at open (only with [`Options::skip_damaged`]).
    pub damaged_records: u64,
}

/// Milliseconds since the Unix epoch by the system clock (an engine reads its
/// [`Options::clock`] instead).
pub fn now_ms() -> u64 {
    use clock::Clock as _;
    clock::SystemClock.now_ms()
}

/// The crate README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
