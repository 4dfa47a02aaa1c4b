//! WAL errors, named by failure kind. `Corruption` and `Poisoned` are fatal for the replica:
//! the first means acknowledged data is damaged on disk, the second that an earlier write or
//! fsync failed and nothing more may be acknowledged (no retry-and-ack).

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O call failed. If it was a write or fsync of the log, the WAL is now poisoned.
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Damaged data where a torn write cannot explain it (a sealed segment, or a bad frame with
    /// valid frames after it). The node must not start on this log without an operator.
    #[error("WAL corruption in {} at byte {offset}: {reason}", path.display())]
    Corruption {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged frame or header within the file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// An earlier write or fsync failed; the WAL refuses every later append. Reopen (restart)
    /// to recover from what is on disk.
    #[error("WAL is poisoned by an earlier failed write or fsync; restart to recover")]
    Poisoned,
    /// A record payload above [`crate::RECORD_PAYLOAD_BYTES_MAX`].
    #[error("WAL record payload of {bytes} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Size of the refused payload.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// One append above [`crate::BATCH_BYTES_MAX`] once encoded.
    #[error("WAL batch of {bytes} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge {
        /// Encoded size of the refused batch.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Another process, or another `Wal` in this one, has the directory open.
    #[error("WAL directory {} is in use by another process or Wal", path.display())]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// Options that cannot work (for example a segment size below the minimum).
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// An op that would break a group's log (an entry leaving a hole, or below the purge
    /// point); nothing of its submission was applied.
    #[error("invalid WAL op: {0}")]
    InvalidOp(String),
}

impl WalError {
    /// A copy for every caller of a failed group commit (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> WalError {
        match self {
            WalError::Io { path, source } => WalError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            WalError::Corruption {
                path,
                offset,
                reason,
            } => WalError::Corruption {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            WalError::Poisoned => WalError::Poisoned,
            WalError::RecordTooLarge { bytes, limit } => WalError::RecordTooLarge {
                bytes: *bytes,
                limit: *limit,
            },
            WalError::BatchTooLarge { bytes, limit } => WalError::BatchTooLarge {
                bytes: *bytes,
                limit: *limit,
            },
            WalError::Locked { path } => WalError::Locked { path: path.clone() },
            WalError::InvalidOptions(reason) => WalError::InvalidOptions(reason.clone()),
            WalError::InvalidOp(reason) => WalError::InvalidOp(reason.clone()),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> WalError {
        WalError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> WalError {
        WalError::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
