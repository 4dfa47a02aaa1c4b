//! Engine configuration and its validation.

use crate::{
    Error, Result, SEGMENT_BYTES_MAX_LIMIT, VALUE_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX_LIMIT,
};

/// Default segment size at which the active segment is rotated.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;
/// Smallest segment size accepted (tests use small segments to exercise rotation and merge).
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Default value-cache budget.
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default dead fraction at which a sealed segment is merged.
pub const MERGE_DEAD_RATIO_MIN_DEFAULT: f64 = 0.5;

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync before a write returns; concurrent writers share one sync (group commit).
    Always,
    /// A background thread syncs every `n` milliseconds.
    EveryMs(u64),
    /// Never sync on its own; the caller calls [`crate::Engine::sync`].
    Never,
}

/// Engine configuration. `Options::default()` is durable (`SyncPolicy::Always`).
#[derive(Debug, Clone)]
pub struct Options {
    /// When writes are made durable.
    pub sync: SyncPolicy,
    /// The active segment is rotated before a write would take it past this size.
    pub segment_bytes_max: u64,
    /// Largest value accepted by `put` (at most [`VALUE_BYTES_MAX_LIMIT`]).
    pub value_bytes_max: usize,
    /// Byte budget of the value read cache; 0 disables it.
    pub cache_bytes: u64,
    /// A sealed segment whose dead fraction passes this is merged.
    pub merge_dead_ratio_min: f64,
    /// Run merge automatically in a background thread.
    pub merge_background: bool,
    /// Skip (and report) damaged records in sealed segments instead of failing `open`.
    pub skip_damaged: bool,
    /// The wall clock deadlines are compared with (the system's by default).
    pub clock: std::sync::Arc<dyn crate::Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncPolicy::Always,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            cache_bytes: CACHE_BYTES_DEFAULT,
            merge_dead_ratio_min: MERGE_DEAD_RATIO_MIN_DEFAULT,
            merge_background: true,
            skip_damaged: false,
            clock: crate::clock::system(),
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOptions(m));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX_LIMIT).contains(&self.segment_bytes_max) {
            return bad(format!(
                "segment_bytes_max {} outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX_LIMIT}",
                self.segment_bytes_max
            ));
        }
        if self.value_bytes_max > VALUE_BYTES_MAX_LIMIT {
            return bad(format!(
                "value_bytes_max {} over {VALUE_BYTES_MAX_LIMIT}",
                self.value_bytes_max
            ));
        }
        if !(0.0..=1.0).contains(&self.merge_dead_ratio_min) {
            return bad(format!(
                "merge_dead_ratio_min {} outside 0..=1",
                self.merge_dead_ratio_min
            ));
        }
        if self.sync == SyncPolicy::EveryMs(0) {
            return bad("SyncPolicy::EveryMs(0); use SyncPolicy::Always".to_string());
        }
        Ok(())
    }
}
