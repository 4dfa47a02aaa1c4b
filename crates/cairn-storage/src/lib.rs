//! `cairn-storage`: Cairn's embedded, synchronous, Bitcask-style storage engine.
//!
//! API CONTRACT (skeleton written by the lead; the storage author replaces the bodies and may
//! add to, but not change, these signatures without telling the server author).
//!
//! Knows nothing about tokio, Raft, the network or protobuf.

use std::ops::Bound;
use std::path::Path;

use bytes::Bytes;

/// Largest key the engine accepts, in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Default largest value, in bytes (configurable through [`Options::value_bytes_max`]).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync before a write returns; concurrent writers share one sync (group commit).
    Always,
    /// A background thread syncs every `n` milliseconds.
    EveryMs(u64),
    /// Never sync on its own; the caller calls [`Engine::sync`].
    Never,
}

/// Engine configuration. `Options::default()` is durable (`SyncPolicy::Always`).
#[derive(Debug, Clone)]
pub struct Options {
    pub sync: SyncPolicy,
    pub segment_bytes_max: u64,
    pub value_bytes_max: usize,
    /// Byte budget of the value read cache; 0 disables it.
    pub cache_bytes: u64,
    /// A sealed segment whose dead fraction passes this is merged.
    pub merge_dead_ratio_min: f64,
    /// Run merge automatically in a background thread.
    pub merge_background: bool,
    /// Skip (and report) damaged records in sealed segments instead of failing `open`.
    pub skip_damaged: bool,
}

/// One live record as returned by reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
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
    pub version: u64,
    pub expires_at_ms: Option<u64>,
    pub value_len: u32,
}

/// An atomic group of writes: after a crash either all of it is visible or none.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    _private: (),
}

impl WriteBatch {
    pub fn new() -> Self {
        todo!()
    }
    pub fn put(&mut self, _key: &[u8], _value: &[u8]) -> &mut Self {
        todo!()
    }
    /// Put with an absolute expiry (ms since the Unix epoch); `None` means no expiry.
    pub fn put_with_expiry(&mut self, _key: &[u8], _value: &[u8], _expires_at_ms: Option<u64>) -> &mut Self {
        todo!()
    }
    pub fn delete(&mut self, _key: &[u8]) -> &mut Self {
        todo!()
    }
    /// Every record of this batch carries `version` (must be greater than the engine's last
    /// sequence, else `Error::VersionNotIncreasing`). Without it the engine assigns last + 1.
    pub fn set_version(&mut self, _version: u64) -> &mut Self {
        todo!()
    }
    /// Opaque replication marker, stored atomically with this batch; read back by
    /// [`Engine::last_applied`] after reopen.
    pub fn set_last_applied(&mut self, _marker: &[u8]) -> &mut Self {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
}

/// Counters and gauges for metrics and `INFO`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub live_keys: u64,
    pub segments: u64,
    pub disk_bytes: u64,
    pub dead_bytes: u64,
    pub writes: u64,
    pub syncs: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub merges: u64,
    pub last_sequence: u64,
}

/// Typed errors, named by failure kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption { file: String, offset: u64, reason: String },
    #[error("engine is poisoned after a failed sync; refusing writes: {0}")]
    Poisoned(String),
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("empty key")]
    EmptyKey,
    #[error("directory is locked by another process: {0}")]
    Locked(String),
    #[error("version {given} is not greater than last sequence {last}")]
    VersionNotIncreasing { given: u64, last: u64 },
    #[error("engine is closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The engine. `Send + Sync`; share it through `Arc`.
#[derive(Debug)]
pub struct Engine {
    _private: (),
}

impl Engine {
    pub fn open(_dir: impl AsRef<Path>, _options: Options) -> Result<Engine> {
        todo!()
    }
    pub fn get(&self, _key: &[u8]) -> Result<Option<Bytes>> {
        todo!()
    }
    pub fn get_entry(&self, _key: &[u8]) -> Result<Option<Entry>> {
        todo!()
    }
    /// Metadata of a live key without reading its value.
    pub fn meta(&self, _key: &[u8]) -> Option<KeyMeta> {
        todo!()
    }
    pub fn put(&self, _key: &[u8], _value: &[u8]) -> Result<()> {
        todo!()
    }
    pub fn put_with_expiry(&self, _key: &[u8], _value: &[u8], _expires_at_ms: Option<u64>) -> Result<()> {
        todo!()
    }
    /// Returns whether a live key was deleted.
    pub fn delete(&self, _key: &[u8]) -> Result<bool> {
        todo!()
    }
    pub fn write(&self, _batch: WriteBatch) -> Result<()> {
        todo!()
    }
    /// Live entries with keys in `(start, end)`, in key order, at most `limit`.
    pub fn scan(&self, _start: Bound<&[u8]>, _end: Bound<&[u8]>, _limit: usize) -> Result<Vec<Entry>> {
        todo!()
    }
    /// Live keys only (no value reads), in key order, at most `limit`.
    pub fn scan_keys(&self, _start: Bound<&[u8]>, _end: Bound<&[u8]>, _limit: usize) -> Vec<(Bytes, KeyMeta)> {
        todo!()
    }
    pub fn scan_prefix(&self, _prefix: &[u8], _limit: usize) -> Result<Vec<Entry>> {
        todo!()
    }
    /// Number of live (unexpired) keys.
    pub fn len(&self) -> u64 {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
    /// Make every write that has returned durable (group-committed with concurrent callers).
    pub fn sync(&self) -> Result<()> {
        todo!()
    }
    pub fn stats(&self) -> Stats {
        todo!()
    }
    /// Run one merge pass now; returns how many segments were rewritten.
    pub fn merge(&self) -> Result<usize> {
        todo!()
    }
    /// The marker last stored with [`WriteBatch::set_last_applied`], if any.
    pub fn last_applied(&self) -> Option<Bytes> {
        todo!()
    }
    /// Sync, stop background threads, release the lock.
    pub fn close(self) -> Result<()> {
        todo!()
    }
}
