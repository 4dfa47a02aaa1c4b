//! The write path: propose → commit → apply, with group commit.
//!
//! One writer thread owns every write. It drains a bounded queue of proposals from all shards
//! (up to [`GROUP_PROPOSALS_MAX`] at a time), evaluates them in order (see [`crate::eval`]),
//! gives each proposal that writes the next log index, appends the group to the node's log with
//! one sync, applies the effects to the shard engines in log order, and only then answers the
//! proposers. Reads go to the engines directly, so a write is visible exactly when it is
//! acknowledged.
//!
//! Invariants:
//! - log indexes are dense and increasing; the index of an entry is the version of every key it
//!   writes, and each engine records the last index applied to it in the same atomic batch;
//! - nothing is acknowledged before the log holding it is durable (with `--sync always`);
//! - after a failed log append or engine write the writer is failed: it refuses every later
//!   write ("a failed fsync is fatal for that replica"), while reads go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::effects::{Effect, Effects};
use crate::error::CommandError;
use crate::eval::{Eval, InternalOp, Overlay};
use crate::log::CommitLog;
use crate::reply::Reply;
use crate::shards::Shards;

/// Most proposals committed together with one log sync.
pub const GROUP_PROPOSALS_MAX: usize = 1024;
/// A group's writes share one log entry until its effects reach this size; the entry is closed
/// after the proposal that crosses it.
pub const ENTRY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest effects of one proposal: what still fits in one log record after a nearly full
/// entry.
pub const PROPOSAL_EFFECT_BYTES_MAX: usize = cairn_wal::RECORD_PAYLOAD_BYTES_MAX - ENTRY_BYTES_MAX;
/// Log size past which the writer checkpoints (syncs the engines and purges the log) without
/// waiting for the periodic checkpoint.
pub const LOG_BYTES_CHECKPOINT: u64 = 512 * 1024 * 1024;
/// Capacity of the proposal queue; proposers wait when it is full (back-pressure).
pub const PROPOSAL_QUEUE_MAX: usize = 8192;
/// With `--sync everysec`, how often the log is synced.
pub const EVERYSEC_INTERVAL: Duration = Duration::from_secs(1);

/// The answer to one proposal.
pub type ProposalResult = Result<Reply, CommandError>;

/// What a proposal asks the writer to do.
#[derive(Debug)]
pub enum WriteOp {
    Command(Command),
    Internal(InternalOp),
    /// Sync the log (`--sync everysec`).
    SyncLog,
    /// Sync every engine, then drop the log entries they now hold durably.
    Checkpoint,
    /// Finish the queue, checkpoint and stop.
    Shutdown,
}

/// One request to the writer.
#[derive(Debug)]
pub struct Proposal {
    pub op: WriteOp,
    /// Proposal time in ms since the Unix epoch: deadlines are compared with it.
    pub now_ms: u64,
    pub reply: oneshot::Sender<ProposalResult>,
}

/// Whether the writer still accepts writes.
#[derive(Debug, Default)]
pub struct WriterHealth {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl WriterHealth {
    /// `Some(reason)` once the writer has failed.
    pub fn failure(&self) -> Option<String> {
        if self.failed.load(Ordering::Acquire) {
            self.reason.lock().clone()
        } else {
            None
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "write path failed; refusing writes from now on");
        let mut slot = self.reason.lock();
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// The writer thread's state.
#[derive(Debug)]
pub struct Writer {
    shards: Arc<Shards>,
    log: CommitLog,
    next_index: u64,
    value_bytes_max: usize,
    health: Arc<WriterHealth>,
    /// Highest index applied to every engine.
    applied_index: u64,
}

impl Writer {
    pub fn new(
        shards: Arc<Shards>,
        log: CommitLog,
        next_index: u64,
        value_bytes_max: usize,
        health: Arc<WriterHealth>,
    ) -> Writer {
        Writer {
            shards,
            log,
            next_index,
            value_bytes_max,
            health,
            applied_index: next_index - 1,
        }
    }

    /// Start the writer thread; returns the proposal queue and the thread handle.
    pub fn spawn(self) -> std::io::Result<(mpsc::Sender<Proposal>, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        let health = self.health.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || {
                // A bug in the write path must not leave the node taking writes it never
                // answers: mark it failed (writes are refused, reads go on).
                let run = std::panic::AssertUnwindSafe(move || self.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    health.fail("the writer thread panicked".to_string());
                }
            })?;
        Ok((tx, handle))
    }

    fn run(mut self, mut rx: mpsc::Receiver<Proposal>) {
        let mut group = Vec::with_capacity(GROUP_PROPOSALS_MAX);
        let mut stopping: Vec<oneshot::Sender<ProposalResult>> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < GROUP_PROPOSALS_MAX {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group, &mut stopping);
            if !stopping.is_empty() {
                break;
            }
        }
        rx.close();
        // Answer whatever raced with the shutdown.
        while let Ok(p) = rx.try_recv() {
            let _ = p.reply.send(Err(CommandError::ShuttingDown));
        }
        let result = self.checkpoint();
        for tx in stopping {
            let _ = tx.send(result.clone());
        }
        tracing::debug!(applied = self.applied_index, "writer stopped");
    }

    /// Evaluate, log, apply and answer one group of proposals.
    fn commit_group(
        &mut self,
        group: &mut Vec<Proposal>,
        stopping: &mut Vec<oneshot::Sender<ProposalResult>>,
    ) {
        let mut overlay = Overlay::default();
        // The writes of a group share one log entry (one version, one log record, one engine
        // batch per shard), split only when an entry grows past `ENTRY_BYTES_MAX`.
        let mut entries: Vec<(u64, Effects)> = Vec::new();
        let mut entry = Effects::default();
        let mut entry_bytes = 0usize;
        let mut answers: Vec<(oneshot::Sender<ProposalResult>, ProposalResult)> = Vec::new();
        let mut after: Vec<(oneshot::Sender<ProposalResult>, WriteOp)> = Vec::new();
        for proposal in group.drain(..) {
            let op = match proposal.op {
                WriteOp::Command(cmd) => Ok(cmd),
                WriteOp::Internal(op) => Err(op),
                other => {
                    after.push((proposal.reply, other));
                    continue;
                }
            };
            if let Some(reason) = self.health.failure() {
                answers.push((proposal.reply, Err(CommandError::Fatal(reason))));
                continue;
            }
            let index = self.next_index;
            let mut eval = Eval::new(
                &self.shards,
                &overlay,
                index,
                proposal.now_ms,
                self.value_bytes_max,
            );
            let result = match op {
                Ok(cmd) => eval.command(cmd),
                Err(op) => eval.internal(op),
            };
            let decided = eval.finish();
            let result = match result {
                Ok(_) if decided.effect_bytes() > PROPOSAL_EFFECT_BYTES_MAX => {
                    Err(CommandError::Invalid(format!(
                        "write of {} bytes is larger than the {PROPOSAL_EFFECT_BYTES_MAX} bytes one log entry holds",
                        decided.effect_bytes()
                    )))
                }
                other => other,
            };
            if result.is_ok() {
                let effects = overlay.absorb(decided);
                if !effects.is_empty() {
                    entry_bytes += effects.encoded_len();
                    entry.ops.extend(effects.ops);
                    // Close the entry once it is large; the next proposal starts a new one.
                    if entry_bytes >= ENTRY_BYTES_MAX {
                        entries.push((index, std::mem::take(&mut entry)));
                        entry_bytes = 0;
                        self.next_index += 1;
                    }
                }
            }
            answers.push((proposal.reply, result));
        }
        if !entry.is_empty() {
            entries.push((self.next_index, entry));
            self.next_index += 1;
        }

        if !entries.is_empty() {
            if let Err(reason) = self.log_and_apply(&entries) {
                self.health.fail(reason.clone());
                for (_, result) in &mut answers {
                    if result.is_ok() {
                        *result = Err(CommandError::Fatal(reason.clone()));
                    }
                }
            }
        }
        for (tx, result) in answers {
            let _ = tx.send(result);
        }
        // A long log makes restarts slow and fills the disk: checkpoint early. (A failure
        // here fails the writer for later writes; this group is already durable in the log.)
        if self.log.bytes() > LOG_BYTES_CHECKPOINT {
            let _ = self.checkpoint();
        }
        for (tx, op) in after {
            match op {
                WriteOp::SyncLog => {
                    let _ = tx.send(self.sync_log());
                }
                WriteOp::Checkpoint => {
                    let _ = tx.send(self.checkpoint());
                }
                WriteOp::Shutdown => stopping.push(tx),
                WriteOp::Command(_) | WriteOp::Internal(_) => unreachable!("handled above"),
            }
        }
    }

    fn log_and_apply(&mut self, entries: &[(u64, Effects)]) -> Result<(), String> {
        self.log
            .append(entries)
            .map_err(|e| format!("log append failed: {e}"))?;
        // Multi-key readers see a group's writes to several shards all at once or not at all.
        let _applying = self.shards.apply_lock.write();
        for (index, effects) in entries {
            apply_entry(&self.shards, *index, effects, false)
                .map_err(|e| format!("apply of entry {index} failed: {e}"))?;
            self.applied_index = *index;
        }
        Ok(())
    }

    fn sync_log(&mut self) -> ProposalResult {
        if let Some(reason) = self.health.failure() {
            // Nothing may be reported durable once the write path has failed.
            return Err(CommandError::Fatal(reason));
        }
        if let Err(e) = self.log.sync(&self.shards) {
            let reason = format!("log sync failed: {e}");
            self.health.fail(reason.clone());
            return Err(CommandError::Fatal(reason));
        }
        Ok(Reply::Ok)
    }

    /// Sync every engine, then purge the log up to what they hold.
    fn checkpoint(&mut self) -> ProposalResult {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        for shard in &self.shards.list {
            if let Err(e) = shard.engine.sync() {
                let reason = format!("sync of shard {} failed: {e}", shard.id);
                self.health.fail(reason.clone());
                return Err(CommandError::Fatal(reason));
            }
        }
        if let Err(e) = self.log.purge(self.applied_index) {
            // The log keeps entries the engines already hold: wasteful, not unsafe.
            tracing::warn!(error = %e, "log purge failed");
        }
        Ok(Reply::Ok)
    }
}

/// Apply one log entry to the shards that have not applied it yet (`index` greater than their
/// last applied index) when `replay`, else to every shard it names.
pub fn apply_entry(
    shards: &Shards,
    index: u64,
    effects: &Effects,
    replay: bool,
) -> Result<(), String> {
    let mut per_shard: Vec<(u32, Vec<&Effect>)> = Vec::new();
    for (shard, effect) in &effects.ops {
        match per_shard.iter_mut().find(|(s, _)| s == shard) {
            Some((_, list)) => list.push(effect),
            None => per_shard.push((*shard, vec![effect])),
        }
    }
    for (id, list) in per_shard {
        let shard = shards
            .get(id)
            .ok_or_else(|| format!("entry {index} names unknown shard {id}"))?;
        if replay && shard.last_applied() >= index {
            continue;
        }
        shard
            .apply(index, &list)
            .map_err(|e| format!("shard {id}: {e}"))?;
    }
    Ok(())
}
