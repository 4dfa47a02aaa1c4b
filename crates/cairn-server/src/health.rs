//! Whether the node still takes writes. A failed fsync or a stopped shard group is fatal for
//! the replica ("a failed fsync is fatal"): from then on writes are refused with the first
//! reason, while reads go on.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The node's write health, shared by every shard's proposer.
#[derive(Debug, Default)]
pub struct WriteHealth {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl WriteHealth {
    /// `Some(reason)` once writes are refused.
    pub fn failure(&self) -> Option<String> {
        if self.failed.load(Ordering::Acquire) {
            self.reason.lock().clone()
        } else {
            None
        }
    }

    /// Refuses writes from now on; the first reason is the one reported.
    pub fn fail(&self, reason: String) {
        let mut slot = self.reason.lock();
        if slot.is_none() {
            tracing::error!(%reason, "write path failed; refusing writes from now on");
            *slot = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }
}
