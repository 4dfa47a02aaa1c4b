//! Group commit and poisoning: how a write becomes durable, and what happens when it cannot.
//!
//! Writers append under the writer lock and then call [`GroupCommit::sync_upto`] with the byte
//! position their write ended at. One of them becomes the leader and runs a single fdatasync
//! covering everything appended so far; the others wait on a condvar and return when the synced
//! position passes theirs. So N concurrent writers share one fsync (leader/follower).
//!
//! Invariant: `synced` only grows, and only after an fdatasync (or a rotation's fsync) that
//! covers it returned Ok; the leader runs the caller's `on_synced` (which, under
//! `SyncPolicy::Always`, makes the newly durable writes visible) before it moves `synced` and
//! wakes anyone. After any failed sync the engine is poisoned (see `poison`): `synced` never
//! moves again and every later write and sync fails with `Error::Poisoned`, so nothing is ever
//! acknowledged, or shown to a reader, that may not be on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use cairn_io::IoFile;

use crate::Result;
use crate::poison::Poison;

/// A sync leader that sees no other append after this many yields syncs at once.
const GROUP_COMMIT_IDLE_YIELDS: u32 = 3;
/// Longest a sync leader waits for more writers to join its fdatasync.
const GROUP_COMMIT_WAIT_MAX: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
struct SyncState {
    /// Bytes (counted across all segments since open) known durable.
    synced: u64,
    /// A leader is running fdatasync.
    leader: bool,
}

/// Shared durability state of one engine.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<SyncState>,
    cv: Condvar,
    syncs: AtomicU64,
    /// Duration of the last fdatasync, bounding how long a leader waits for company.
    last_sync_ns: AtomicU64,
    /// Shared with the engine's `SyncGuardIo`, which sets it on any failed sync.
    poison: Arc<Poison>,
}

impl GroupCommit {
    pub fn new(poison: Arc<Poison>) -> GroupCommit {
        GroupCommit {
            state: Mutex::default(),
            cv: Condvar::new(),
            syncs: AtomicU64::new(0),
            last_sync_ns: AtomicU64::new(0),
            poison,
        }
    }

    /// `Err(Poisoned)` once any sync has failed.
    pub fn check(&self) -> Result<()> {
        self.poison.check()
    }

    /// Poisons the engine forever and wakes every waiter so it sees the poison.
    pub fn poison(&self, why: String) {
        // `Poison::set` takes only its own lock: never `state`, which `sync_upto` holds while
        // checking the flag.
        self.poison.set(why);
        let _s = self.state.lock();
        self.cv.notify_all();
    }

    /// Records that everything up to `upto` is durable (a rotation synced the old segment).
    pub fn mark_synced(&self, upto: u64) {
        let mut s = self.state.lock();
        s.synced = s.synced.max(upto);
    }

    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Returns once every byte up to `target` is durable. `current` returns the active file
    /// and the append position, read under the writer lock so they agree; `on_synced(upto)`
    /// runs after an fdatasync covering `upto` succeeded and before anyone is told.
    pub fn sync_upto(
        &self,
        target: u64,
        current: impl Fn() -> (Arc<dyn IoFile>, u64),
        on_synced: impl Fn(u64),
    ) -> Result<()> {
        let mut s = self.state.lock();
        loop {
            self.check()?;
            if s.synced >= target {
                return Ok(());
            }
            if s.leader {
                self.cv.wait(&mut s);
                continue;
            }
            s.leader = true;
            drop(s);
            // Let writers that are runnable right now append first, so this one fdatasync
            // covers them too (more writes per fsync when writers outnumber cores): yield while
            // appends keep arriving, a bounded number of times.
            let (mut file, mut upto) = current();
            // Waiting longer than one fsync takes cannot pay off: stop at the last sync's
            // duration; stop at once when no one else appends (a lone writer pays a few
            // yields); otherwise stop when appends pause for a quarter of that.
            let window = Duration::from_nanos(self.last_sync_ns.load(Ordering::Relaxed))
                .min(GROUP_COMMIT_WAIT_MAX);
            let started = Instant::now();
            let mut last_growth = started;
            let mut yields = 0u32;
            while started.elapsed() < window {
                std::thread::yield_now();
                yields += 1;
                let (f, u) = current();
                if u > upto {
                    last_growth = Instant::now();
                } else if yields >= GROUP_COMMIT_IDLE_YIELDS
                    && (last_growth == started || last_growth.elapsed() >= window / 4)
                {
                    // Alone (nobody appended since we led), or the stream of appends paused.
                    break;
                }
                (file, upto) = (f, u);
            }
            let sync_started = Instant::now();
            let res = file.sync_data();
            self.last_sync_ns
                .store(sync_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if res.is_ok() {
                on_synced(upto);
            }
            s = self.state.lock();
            s.leader = false;
            match res {
                Ok(()) => {
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                    s.synced = s.synced.max(upto);
                    self.cv.notify_all();
                }
                Err(e) => {
                    drop(s);
                    self.poison(format!("fdatasync failed: {e}"));
                    return self.check();
                }
            }
        }
    }
}
