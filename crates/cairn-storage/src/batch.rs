//! `WriteBatch`: an atomic group of writes, encoded as it is built.
//!
//! Records are encoded straight into one buffer (version and CRC patched at commit time under
//! the writer lock), so committing a batch is one `write` call and no per-record allocation.

use crate::format::{self, Kind};
use crate::{BATCH_BYTES_MAX, Error, KEY_BYTES_MAX};

/// An atomic group of writes: after a crash either all of it is visible or none.
///
/// Misuse (an empty or oversized key) is remembered and reported by [`crate::Engine::write`].
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Encoded, unsealed records.
    pub(crate) buf: Vec<u8>,
    /// Start of each record in `buf`.
    pub(crate) offsets: Vec<u32>,
    pub(crate) version: Option<u64>,
    pub(crate) marker: Option<Vec<u8>>,
    /// First misuse seen while building, reported at commit.
    pub(crate) error: Option<BatchError>,
}

/// Named after the public [`Error`] variants each one becomes.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum BatchError {
    KeyTooLarge(usize),
    ValueTooLarge(usize),
    BatchTooLarge(usize),
}

impl BatchError {
    pub(crate) fn into_error(self, value_bytes_max: usize) -> Error {
        match self {
            BatchError::KeyTooLarge(len) => Error::KeyTooLarge {
                len,
                max: KEY_BYTES_MAX,
            },
            BatchError::ValueTooLarge(len) => Error::ValueTooLarge {
                len,
                max: value_bytes_max,
            },
            BatchError::BatchTooLarge(len) => Error::BatchTooLarge {
                len,
                max: BATCH_BYTES_MAX,
            },
        }
    }
}

/// Checks a key against the limits.
pub(crate) fn check_key(key: &[u8]) -> Result<(), BatchError> {
    if key.len() > KEY_BYTES_MAX {
        Err(BatchError::KeyTooLarge(key.len()))
    } else {
        Ok(())
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put without expiry.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.put_with_expiry(key, value, None)
    }

    /// Put with an absolute expiry (ms since the Unix epoch); `None` means no expiry.
    pub fn put_with_expiry(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> &mut Self {
        self.push(Kind::Put, key, value, encode_expiry(expires_at_ms))
    }

    /// Adds a delete (a tombstone, even if the key does not exist).
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.push(Kind::Delete, key, &[], 0)
    }

    /// A record in the engine's system table (not the keyspace), written atomically with the
    /// batch: `key` = `value` there, read back by [`crate::Engine::system_get`] and never by a
    /// user-facing read (`get`, `scan`, `len`, ...). No expiry. The value is held in memory
    /// for as long as the record lives (and read back at every open), so keep it small; it is
    /// checked against `Options::value_bytes_max` by [`crate::Engine::write`].
    pub fn put_system(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.push(Kind::SystemPut, key, value, 0)
    }

    /// Removes `key` from the engine's system table, atomically with the batch (a system
    /// tombstone, even if the key is not there). Either way the batch counts as a change of
    /// the system table ([`crate::Engine::system_version`]).
    pub fn delete_system(&mut self, key: &[u8]) -> &mut Self {
        self.push(Kind::SystemDelete, key, &[], 0)
    }

    /// Every record of this batch carries `version` (must be greater than the engine's last
    /// sequence, else `Error::VersionNotIncreasing`; the very first write of an engine may use
    /// 0, as a Raft log starts at index 0). Without it the engine assigns last + 1.
    pub fn set_version(&mut self, version: u64) -> &mut Self {
        self.version = Some(version);
        self
    }

    /// Opaque replication marker, stored atomically with this batch; read back by
    /// [`crate::Engine::last_applied`] after reopen.
    pub fn set_last_applied(&mut self, marker: &[u8]) -> &mut Self {
        self.marker = Some(marker.to_vec());
        self
    }

    /// Number of puts and deletes, system-table ones included (the marker is not counted).
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch has no puts or deletes (of keys or of system records).
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    fn push(&mut self, kind: Kind, key: &[u8], value: &[u8], expires_at_ms: u64) -> &mut Self {
        if let Err(e) = check_key(key) {
            self.error.get_or_insert(e);
            return self;
        }
        if value.len() > format::RECORD_VALUE_BYTES_LIMIT {
            // Never encoded; `Engine::write` reports it against the configured limit.
            self.error
                .get_or_insert(BatchError::ValueTooLarge(value.len()));
            return self;
        }
        let added = format::record_len(key.len(), value.len());
        if self.buf.len() + added > BATCH_BYTES_MAX {
            self.error
                .get_or_insert(BatchError::BatchTooLarge(self.buf.len() + added));
            return self;
        }
        let start = format::encode_record(&mut self.buf, kind, key, value, 0, expires_at_ms);
        self.offsets.push(start as u32);
        self
    }
}

/// `None` → 0 ("no expiry"); `Some(0)` → 1 (already expired, still distinguishable from none).
pub(crate) fn encode_expiry(expires_at_ms: Option<u64>) -> u64 {
    expires_at_ms.map_or(0, |e| e.max(1))
}
