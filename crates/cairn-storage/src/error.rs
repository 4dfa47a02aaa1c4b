//! Typed errors, named by failure kind. Fatal ones (`Poisoned`, `Corruption`) are kept apart
//! from the ones a caller can handle (limits, `VersionNotIncreasing`, `Locked`).

/// Typed errors, named by failure kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("engine is poisoned after a failed sync; refusing writes: {0}")]
    Poisoned(String),
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("directory is locked by another process: {0}")]
    Locked(String),
    #[error("version {given} is not greater than last sequence {last}")]
    VersionNotIncreasing { given: u64, last: u64 },
    #[error("engine is closed")]
    Closed,
    #[error("batch is {len} bytes encoded; the limit is {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("invalid checkpoint: {0}")]
    InvalidCheckpoint(String),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
