//! Shared helpers for the integration tests.

use cairn_storage::{Options, SyncPolicy};

/// Small segments so rotation, hints and merge happen in small tests; no background merge so
/// tests decide when merge runs.
pub fn small_options() -> Options {
    Options {
        sync: SyncPolicy::Never,
        segment_bytes_max: 4096,
        merge_background: false,
        merge_dead_ratio_min: 0.0,
        ..Options::default()
    }
}
