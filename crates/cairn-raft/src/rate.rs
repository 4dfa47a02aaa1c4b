//! A bound on the bytes per second this node sends in snapshots, all groups together, so
//! that copying replicas to new members never starves the foreground traffic that shares
//! the disk, the cores and the network.
//!
//! Each chunk reserves its slot on one clock shared by every sender: a chunk of `n` bytes
//! starts no earlier than the previous reservation ended and holds the clock for `n / rate`
//! seconds. Senders therefore share the rate, and an idle period earns no burst.
//!
//! [`Transfers`] lists the snapshots being sent, with their progress, for `cairn cluster
//! status` (moves in progress).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
// Tokio's clock, so that a test with paused time sees the reservations move with it.
use tokio::time::Instant;

/// One snapshot being sent: of `group`, to node `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub group: u64,
    pub target: u64,
    pub sent_bytes: u64,
    pub total_bytes: u64,
    /// How long it has been sending.
    pub elapsed: Duration,
}

/// A transfer's progress: bytes sent, bytes in all, when it began.
type Progress = (u64, u64, Instant);

/// The snapshots this node is sending.
#[derive(Debug, Default)]
pub struct Transfers {
    /// By (group, target).
    running: Mutex<BTreeMap<(u64, u64), Progress>>,
}

impl Transfers {
    /// Registers a transfer of `total_bytes`; it is listed until the guard drops.
    pub fn begin(self: &Arc<Self>, group: u64, target: u64, total_bytes: u64) -> TransferGuard {
        self.running
            .lock()
            .insert((group, target), (0, total_bytes, Instant::now()));
        TransferGuard {
            transfers: self.clone(),
            key: (group, target),
        }
    }

    /// Every transfer under way.
    pub fn list(&self) -> Vec<Transfer> {
        self.running
            .lock()
            .iter()
            .map(
                |(&(group, target), &(sent_bytes, total_bytes, began))| Transfer {
                    group,
                    target,
                    sent_bytes,
                    total_bytes,
                    elapsed: began.elapsed(),
                },
            )
            .collect()
    }
}

/// A transfer in [`Transfers`] while it lives.
#[derive(Debug)]
pub struct TransferGuard {
    transfers: Arc<Transfers>,
    key: (u64, u64),
}

impl TransferGuard {
    /// `bytes` more were sent.
    pub fn sent(&self, bytes: u64) {
        if let Some(entry) = self.transfers.running.lock().get_mut(&self.key) {
            entry.0 += bytes;
        }
    }
}

impl Drop for TransferGuard {
    /// Unlists the transfer and logs what it moved, finished or not: the per-move rate that
    /// `scripts/bench-elastic.sh` reports comes from this line.
    fn drop(&mut self) {
        let Some((sent_bytes, total_bytes, began)) =
            self.transfers.running.lock().remove(&self.key)
        else {
            return;
        };
        let elapsed = began.elapsed();
        let (group, target) = self.key;
        tracing::info!(
            group,
            target,
            sent_bytes,
            total_bytes,
            elapsed_ms = elapsed.as_millis() as u64,
            mb_per_sec = format_args!(
                "{:.1}",
                sent_bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3)
            ),
            "snapshot transfer ended"
        );
    }
}

/// Bytes per second shared by every snapshot this node sends; unlimited when built with 0.
#[derive(Debug)]
pub struct SendRate {
    bytes_per_sec: u64,
    /// When the last reservation ends.
    free_at: Mutex<Option<Instant>>,
}

impl SendRate {
    pub fn new(bytes_per_sec: u64) -> SendRate {
        SendRate {
            bytes_per_sec,
            free_at: Mutex::new(None),
        }
    }

    /// The bytes per second it allows (0: no limit).
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// How long a sender of `bytes` must wait, at `now`, before sending them; reserves the
    /// slot.
    fn reserve(&self, bytes: usize, now: Instant) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let hold = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut free_at = self.free_at.lock();
        let start = free_at.map_or(now, |t| t.max(now));
        *free_at = Some(start + hold);
        start - now
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: usize) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_share_the_rate_and_an_idle_period_earns_no_burst() {
        let rate = SendRate::new(1_000_000);
        let t0 = Instant::now();
        // Two senders of 0.5 MB each: the second waits for the first's half second.
        assert_eq!(rate.reserve(500_000, t0), Duration::ZERO);
        assert_eq!(rate.reserve(500_000, t0), Duration::from_millis(500));
        // After the clock ran past every reservation, a chunk goes at once, and only one.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(rate.reserve(1_000_000, later), Duration::ZERO);
        assert_eq!(rate.reserve(1, later), Duration::from_secs(1));
    }

    #[test]
    fn a_transfer_is_listed_with_its_progress_while_it_runs() {
        let transfers = Arc::new(Transfers::default());
        let guard = transfers.begin(3, 7, 100);
        guard.sent(40);
        let listed = transfers.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].group,
                listed[0].target,
                listed[0].sent_bytes,
                listed[0].total_bytes
            ),
            (3, 7, 40, 100)
        );
        drop(guard);
        assert!(transfers.list().is_empty());
    }

    #[test]
    fn no_limit_never_waits() {
        let rate = SendRate::new(0);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(rate.reserve(usize::MAX / 2, now), Duration::ZERO);
        }
    }
}
