//! The node's timers and lifecycle: active expiry, log sync (`everysec`), periodic
//! checkpoints (snapshots, then log purge), placement rounds, the transaction resolver,
//! and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{
    CHECKPOINT_INTERVAL, ELECTION_WAIT, EVERYSEC_INTERVAL, EXPIRE_KEYS_PER_TICK, EXPIRE_TICK, Node,
};
use crate::config::SyncMode;
use crate::error::CommandError;
use crate::eval::InternalOp;
use crate::proposer::ProposalOp;

impl Node {
    /// Background work until `shutdown` resolves: active expiry, log sync (`everysec`),
    /// periodic checkpoints (snapshots, then log purge), placement, and on tasks of their own
    /// the transaction resolver, the touch check and the balancer.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut expire = tokio::time::interval(EXPIRE_TICK);
        // Each node's scheduled checkpoints start at a random point of the interval: nodes
        // started together would otherwise checkpoint every shard at the same moment, each
        // checkpoint holding its shard's writes while it seals a segment.
        let phase = rand::random_range(0..CHECKPOINT_INTERVAL.as_millis() as u64);
        let mut checkpoint = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(phase),
            CHECKPOINT_INTERVAL,
        );
        let mut sync = tokio::time::interval(EVERYSEC_INTERVAL);
        let mut place = tokio::time::interval(crate::placement::RECONCILE_INTERVAL);
        for timer in [&mut expire, &mut checkpoint, &mut sync, &mut place] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The transaction resolver waits on other shards' leaders, for seconds when one is
        // unreachable: it runs on its own, not between the timers of this loop.
        let resolver = {
            let node = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::txn::RESOLVE_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    node.resolve_cycle().await;
                }
            })
        };
        // Touch matters most when the node is cut off, which is when the timers of this loop
        // (placement, checkpoints) wait on unreachable peers: it is checked on its own.
        let toucher = {
            let node = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(super::TOUCH_CHECK_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // A feed asked for that the node does not follow yet starts at once.
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = node.feed_wanted() => {}
                    }
                    node.refresh_placements();
                    node.follow_feeds();
                    node.check_touch();
                }
            })
        };
        // The balancer waits on other nodes (each step on its group's leader): its own task.
        let balancer = tokio::spawn(crate::balancer::run(self.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = expire.tick() => self.expire_cycle().await,
                _ = place.tick() => crate::placement::reconcile(&self).await,
                _ = checkpoint.tick() => {
                    if let Err(e) = self.snapshot_all(Checkpoint::Scheduled).await {
                        tracing::warn!(error = %e, "periodic checkpoint failed");
                    }
                }
                _ = sync.tick() => {
                    if self.options.sync == SyncMode::Everysec {
                        if let Err(e) = self.sync_log().await {
                            tracing::warn!(error = %e, "periodic log sync failed");
                        }
                    }
                    // A long log makes restarts slow and fills the disk: checkpoint early.
                    if self.wal.total_bytes() > self.options.tuning.log_checkpoint_bytes {
                        if let Err(e) = self.snapshot_all(Checkpoint::LogTooLong).await {
                            tracing::warn!(error = %e, "checkpoint failed");
                        }
                    }
                }
            }
        }
        resolver.abort();
        toucher.abort();
        balancer.abort();
    }

    /// Snapshots every shard this node holds, and its replica of the metadata group (an
    /// engine checkpoint: durable up to the applied index), and purges the log behind the
    /// snapshots, now, waiting for the purges. The background task checkpoints every
    /// [`CHECKPOINT_INTERVAL`], and early once the log passes the node's
    /// `StorageTuning::log_checkpoint_bytes` (what each purges: `Checkpoint`).
    pub async fn checkpoint(&self) -> Result<(), CommandError> {
        self.snapshot_all(Checkpoint::Now).await
    }

    /// Checkpoints every group this node holds a replica of, as `how` says.
    async fn snapshot_all(&self, how: Checkpoint) -> Result<(), CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        let copying: std::collections::BTreeSet<u64> =
            self.peers.transfers().iter().map(|t| t.group).collect();
        let waited = self.checkpoint_waiting.lock().clone();
        // The shards that wait this time, since when.
        let mut waiting = std::collections::HashMap::new();
        let shards = self.shards.list();
        let mut groups = Vec::new();
        for shard in &shards {
            let applied = shard.last_applied();
            if applied == 0 {
                continue;
            }
            if how.waits_for_copies() {
                let since = waited.get(&shard.id).copied();
                if let Some(since) = checkpoint_waits(shard, applied, &copying, since) {
                    waiting.insert(shard.id, since);
                    continue;
                }
            }
            groups.push((format!("shard {}", shard.id), &shard.group, applied, how));
        }
        if how.waits_for_copies() {
            *self.checkpoint_waiting.lock() = waiting;
        }
        // The metadata group shares the log too: its entries (node records, the shards'
        // placement reports) are few but land in every segment. Never checkpointed, or
        // checkpointed keeping 1000 entries behind (all it has), they kept every segment of
        // the log alive: the log grew without bound and, past log_checkpoint_bytes, every
        // shard was checkpointed every second. Its whole log goes at every checkpoint (a
        // member behind gets its snapshot, a few KB).
        let meta = &self.meta.group;
        let applied = meta.applied_index();
        if applied > 0 {
            let meta_how = match how {
                Checkpoint::Now => Checkpoint::Now,
                _ => Checkpoint::LogTooLong,
            };
            groups.push(("the metadata group".into(), meta, applied, meta_how));
        }
        for (name, group, applied, how) in groups {
            let snapshot = group
                .snapshot(applied, ELECTION_WAIT)
                .await
                .map_err(|e| CommandError::TryAgain(format!("{name} snapshot: {e}")))?;
            match how {
                Checkpoint::Scheduled | Checkpoint::Shutdown => {}
                // Purging waits for replication that still reads the entries; a follower
                // that needs them gets the snapshot instead.
                Checkpoint::Now => {
                    if let Err(e) = group.purge(snapshot, ELECTION_WAIT).await {
                        tracing::debug!(group = %name, error = %e, "log purge still pending");
                    }
                }
                Checkpoint::LogTooLong => {
                    if let Err(e) = group.purge_soon(snapshot).await {
                        tracing::debug!(group = %name, error = %e, "log purge not asked for");
                    }
                }
            }
        }
        self.wal
            .purge_segments()
            .map_err(|e| CommandError::Fatal(format!("log purge failed: {e}")))?;
        Ok(())
    }

    /// Makes every write acknowledged so far durable now: what the background task does every
    /// [`EVERYSEC_INTERVAL`] under `--sync everysec`. Under `always` every answer waited for an
    /// fdatasync already. Fails once the write path has failed.
    pub async fn sync_log(&self) -> Result<(), CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        self.wal.sync().map_err(|e| {
            let reason = format!("log sync failed: {e}");
            self.health.fail(reason.clone());
            CommandError::Fatal(reason)
        })
    }

    /// One tick of active expiry: each shard this node leads deletes up to
    /// [`EXPIRE_KEYS_PER_TICK`] due keys.
    pub async fn expire_cycle(&self) {
        let now = self.now_ms();
        for shard in &self.shards.list() {
            if !shard.is_leader() {
                continue;
            }
            let keys = shard.expiry.index.lock().due(now, EXPIRE_KEYS_PER_TICK);
            if keys.is_empty() {
                continue;
            }
            let op = ProposalOp::Internal(InternalOp::ExpireKeys { keys });
            match self.send(shard.id, op, now).await {
                Ok(rx) => match rx.await.map(|a| a.result) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(shard = shard.id, error = %e, "active expiry failed");
                    }
                    Err(_) => return,
                },
                Err(_) => return,
            }
        }
    }

    /// Ends every watch on this node (they end with [`crate::watch::WatchError::Stopped`]),
    /// and refuses new ones from now on.
    pub fn stop_watches(&self) {
        self.feed_wake.send_replace(crate::feed::WAKE_STOPPED);
    }

    /// Stop taking writes, let the proposed ones finish, snapshot the shards and stop their
    /// groups. Idempotent.
    pub async fn shutdown(&self) -> Result<(), CommandError> {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_watches();
        // Everything proposed before the flag lands before a barrier proposed after it.
        for shard in &self.shards.list() {
            if let Ok(rx) = self
                .send(shard.id, ProposalOp::Barrier, self.now_ms())
                .await
            {
                let _ = rx.await;
            }
        }
        let result = if self.health.failure().is_none() {
            self.snapshot_all(Checkpoint::Shutdown).await
        } else {
            Ok(())
        };
        for shard in &self.shards.list() {
            self.groups.remove(crate::shard::group_of_shard(shard.id));
            shard.group.shutdown().await;
        }
        self.groups.remove(crate::meta::META_GROUP);
        self.meta.group.shutdown().await;
        let flushed = self
            .wal
            .flush()
            .map_err(|e| CommandError::Fatal(format!("log flush failed: {e}")));
        result.and(flushed)
    }
}

/// Longest a scheduled checkpoint of a shard waits for a member being copied
/// ([`checkpoint_waits`]): a learner that never catches up (its node went down) does not hold
/// the log forever.
pub const CHECKPOINT_WAIT_MAX: Duration = Duration::from_secs(300);

/// Since when the scheduled checkpoint of `shard`, which would cover `applied`, waits (`None`:
/// it goes ahead; `since`: since when it waited until now), for at most
/// [`CHECKPOINT_WAIT_MAX`]. It waits while this node leads the shard
/// and is sending it to a new member (its group is in `copying`), or one of its learners has
/// not yet reached within [`cairn_raft::config::LOG_KEPT_BEHIND_SNAPSHOT`] entries of
/// `applied`. Checkpointing then would purge the log the member needs after its snapshot, and
/// its copy would start over: it did, four times in a row, for a 1 GB join under writes while
/// a snapshot was on its way; and once more for a copy that had just ended, before the leader
/// sent the learner its first entries after it.
fn checkpoint_waits(
    shard: &crate::shard::Shard,
    applied: u64,
    copying: &std::collections::BTreeSet<u64>,
    since: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    let sending = copying.contains(&crate::shard::group_of_shard(shard.id));
    let learner_behind = shard.group.leading().is_some()
        && learner_behind(
            &shard.group.status().learners,
            &shard.group.replicated().unwrap_or_default(),
            applied,
        );
    still_waiting(sending || learner_behind, since, std::time::Instant::now())
}

/// Whether one of a leader's `learners` has not reached within
/// [`cairn_raft::config::LOG_KEPT_BEHIND_SNAPSHOT`] entries of `applied` (by what the leader
/// knows it holds, `replicated`; a learner it knows nothing of yet is behind).
fn learner_behind(
    learners: &std::collections::BTreeSet<u64>,
    replicated: &std::collections::BTreeMap<u64, u64>,
    applied: u64,
) -> bool {
    let kept = cairn_raft::config::LOG_KEPT_BEHIND_SNAPSHOT;
    learners.iter().any(|l| {
        replicated
            .get(l)
            .is_none_or(|&matched| matched + kept < applied)
    })
}

/// Since when a checkpoint that a copy holds up (`held`) has waited, at `now`, if it waits
/// still: `None` once nothing holds it, or once it has waited [`CHECKPOINT_WAIT_MAX`].
fn still_waiting(
    held: bool,
    since: Option<std::time::Instant>,
    now: std::time::Instant,
) -> Option<std::time::Instant> {
    if !held {
        return None;
    }
    let since = since.unwrap_or(now);
    (now.saturating_duration_since(since) < CHECKPOINT_WAIT_MAX).then_some(since)
}

/// What a checkpoint is for, which sets what it purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoint {
    /// Every [`CHECKPOINT_INTERVAL`]: each shard keeps
    /// [`cairn_raft::config::LOG_KEPT_BEHIND_SNAPSHOT`] entries behind its snapshot for
    /// followers a little behind, and a shard being copied to a new member waits
    /// ([`checkpoint_waits`]).
    Scheduled,
    /// The log outgrew `StorageTuning::log_checkpoint_bytes`: a group that writes little
    /// keeps entries old enough to pin every segment, so each group's whole log behind its
    /// snapshot goes (the purge is asked for, not waited for: the next tick deletes the
    /// segments); a shard being copied still waits.
    LogTooLong,
    /// At clean shutdown: every shard, each keeping its entries behind, for a fast restart.
    Shutdown,
    /// SAVE, tests: every group, its whole log behind, purges waited for.
    Now,
}

impl Checkpoint {
    fn waits_for_copies(self) -> bool {
        matches!(self, Checkpoint::Scheduled | Checkpoint::LogTooLong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn a_checkpoint_waits_for_a_copy_at_most_its_bound() {
        let t0 = std::time::Instant::now();
        assert_eq!(still_waiting(false, None, t0), None, "nothing holds it");
        assert_eq!(still_waiting(false, Some(t0), t0), None, "the copy ended");
        assert_eq!(
            still_waiting(true, None, t0),
            Some(t0),
            "the wait begins now"
        );
        let later = t0 + CHECKPOINT_WAIT_MAX - Duration::from_secs(1);
        assert_eq!(
            still_waiting(true, Some(t0), later),
            Some(t0),
            "it keeps its start"
        );
        let bound = t0 + CHECKPOINT_WAIT_MAX;
        assert_eq!(
            still_waiting(true, Some(t0), bound),
            None,
            "its bound is reached"
        );
        assert_eq!(
            still_waiting(true, Some(t0), bound + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn a_learner_holds_a_checkpoint_until_it_is_within_the_kept_entries() {
        let kept = cairn_raft::config::LOG_KEPT_BEHIND_SNAPSHOT;
        let applied = 10 * kept;
        let learners = BTreeSet::from([4]);
        let matched = |m: u64| BTreeMap::from([(1, applied), (2, applied), (4, m)]);
        assert!(
            !learner_behind(&BTreeSet::new(), &matched(0), applied),
            "no learner"
        );
        assert!(
            learner_behind(&learners, &BTreeMap::new(), applied),
            "unknown yet"
        );
        assert!(learner_behind(&learners, &matched(0), applied));
        assert!(learner_behind(
            &learners,
            &matched(applied - kept - 1),
            applied
        ));
        assert!(!learner_behind(
            &learners,
            &matched(applied - kept),
            applied
        ));
        assert!(!learner_behind(&learners, &matched(applied), applied));
    }
}
