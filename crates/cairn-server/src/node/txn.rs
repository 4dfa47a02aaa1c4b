//! The coordinator of cross-shard transactions ([`crate::txn`] has the mechanism and its
//! invariants), and the resolution of the locks that requests and the background resolver
//! meet.
//!
//! A write whose keys live in more than one shard runs here, on the node that took it: lock
//! the keys of every shard but the primary (all at once) while reading the primary's,
//! evaluate the command against the states read, commit at the primary (which checks its
//! keys), resolve the other shards, answer, and forget the record in the background. Each step is a [`Command::Txn`] routed like any write to its shard's
//! leader, local or remote.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_raft::WriteOp;
use futures::future::join_all;
use rand::Rng;
use tokio::sync::mpsc;

use super::Node;
use super::write::Part;
use crate::command::Command;
use crate::error::CommandError;
use crate::eval::{Eval, Overlay};
use crate::reply::{Entry, Reply};
use crate::txn::{
    self, AbortWhen, Fate, Lock, LockHolder, Record, TxnId, TxnOp, TxnOpKind, TxnReply,
};

/// About how many bytes of keys and values `cmd` writes.
fn write_bytes(cmd: &Command) -> usize {
    let keys = || cmd.write_keys().iter().map(|k| k.len()).sum::<usize>();
    match cmd {
        Command::MSet { pairs, .. } => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
        Command::Batch { ops } => ops
            .iter()
            .map(|op| match op {
                crate::command::BatchOp::Put { key, value, .. } => key.len() + value.len(),
                crate::command::BatchOp::Delete { key } => key.len(),
            })
            .sum(),
        Command::Set { key, value, .. }
        | Command::Append { key, value }
        | Command::SetRange { key, value, .. } => key.len() + value.len(),
        Command::Exec {
            then, otherwise, ..
        } => then.iter().chain(otherwise).map(write_bytes).sum(),
        _ => keys(),
    }
}

/// A crash for tests at a step of a coordinator: with `CAIRN_TXN_FAILPOINT` set to the step's
/// name the process aborts there, as a power cut or SIGKILL would stop it (steps:
/// `locked-one` (the first lock answered, others perhaps not), `locked`, `committed`,
/// `resolved`). Read once; unset in production.
fn failpoint(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("CAIRN_TXN_FAILPOINT").ok())
        .as_deref()
        == Some(step)
    {
        eprintln!("CAIRN_TXN_FAILPOINT={step}: aborting the process");
        std::process::abort();
    }
}

/// What one attempt at a transaction came to.
enum Attempt {
    /// The answer (success, or a failure retrying cannot mend).
    Done(Result<Reply, CommandError>),
    /// A key was locked by another transaction; nothing of this one happened.
    Conflict(LockHolder),
    /// Refused or aborted before its commit point; nothing of it happened.
    Refused(CommandError),
}

/// One shard's part of a transaction's plan.
#[derive(Debug, Default, Clone)]
struct ShardPart {
    keys: Vec<Bytes>,
    reads: Vec<Bytes>,
}

impl Node {
    /// A new transaction id (see [`TxnId`]).
    fn next_txn_id(&self) -> TxnId {
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        (u128::from(self.identity.raft_id) << 64) | u128::from(n)
    }

    /// Sends one transaction step to its shard's leader and waits for the answer; a step
    /// refused with `TRYAGAIN` (no leader, leadership moving: nothing happened) is sent
    /// again for up to [`super::ROUTE_RETRY_WINDOW`].
    async fn txn_step(&self, op: TxnOp) -> Result<Reply, CommandError> {
        let deadline = Instant::now() + super::ROUTE_RETRY_WINDOW;
        let mut backoff = super::ROUTE_RETRY_FIRST;
        loop {
            let shard = op.shard;
            let result = match self
                .send_routed(shard, Command::Txn(op.clone()), self.now_ms(), 0, false)
                .await
            {
                Ok(Part::Local(rx)) => rx
                    .await
                    .map_or_else(|_| Err(CommandError::proposer_stopped()), |a| a.result),
                Ok(Part::Done(result)) => result,
                Err(e) => Err(e),
            };
            match result {
                Err(CommandError::TryAgain(_)) if Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(super::ROUTE_RETRY_MAX);
                }
                result => return result,
            }
        }
    }

    /// Executes a write whose keys live in more than one shard as a transaction: all of it
    /// or nothing, isolated from every reader. Starts over (with a new id) after a lock
    /// conflict or a refusal before the commit point, up to [`txn::TXN_ATTEMPTS_MAX`] times.
    pub(super) async fn run_txn(&self, cmd: Command) -> Result<Reply, CommandError> {
        let plan = self.txn_plan(&cmd)?;
        let mut backoff = Duration::from_millis(1);
        let mut last = CommandError::TryAgain("the transaction kept meeting locks".into());
        // Kept across attempts: meeting the same transaction's lock for long enough asks its
        // primary (and resolves it when its coordinator is gone), as a reader would.
        let mut since = None;
        for _ in 0..txn::TXN_ATTEMPTS_MAX {
            match self.txn_attempt(&cmd, &plan).await {
                Attempt::Done(result) => return result,
                Attempt::Conflict(holder) => {
                    self.wait_for_lock(holder, &mut since).await;
                    last = CommandError::Locked(holder);
                }
                Attempt::Refused(e) => last = e,
            }
            // Two transactions that keep meeting each other's locks part ways by chance.
            let jitter = rand::rng().random_range(0..=backoff.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
        Err(match last {
            e if e.is_refusal() => CommandError::TryAgain(format!(
                "a cross-shard transaction gave up after {} attempts ({e})",
                txn::TXN_ATTEMPTS_MAX
            )),
            e => e,
        })
    }

    /// Which keys each shard locks and reads, checked against the transaction limits.
    fn txn_plan(&self, cmd: &Command) -> Result<BTreeMap<u32, ShardPart>, CommandError> {
        let keys = cmd.write_keys();
        if keys.len() > txn::TXN_KEYS_MAX {
            return Err(CommandError::Invalid(format!(
                "a transaction names {} keys; the limit is {}",
                keys.len(),
                txn::TXN_KEYS_MAX
            )));
        }
        let bytes = write_bytes(cmd);
        if bytes > txn::TXN_BYTES_MAX {
            return Err(CommandError::Invalid(format!(
                "a transaction writes {bytes} bytes; the limit is {}",
                txn::TXN_BYTES_MAX
            )));
        }
        if let Some(key) = keys.iter().find(|k| k.len() > txn::TXN_KEY_BYTES_MAX) {
            return Err(CommandError::KeyTooLarge {
                len: key.len(),
                max: txn::TXN_KEY_BYTES_MAX,
            });
        }
        let mut plan: BTreeMap<u32, ShardPart> = BTreeMap::new();
        let mut seen = HashSet::new();
        for key in keys {
            if seen.insert(key.clone()) {
                let part = plan.entry(self.shards.shard_of_key(key)).or_default();
                part.keys.push(key.clone());
            }
        }
        for key in Eval::reads_of(cmd) {
            let part = plan.entry(self.shards.shard_of_key(&key)).or_default();
            if !part.reads.contains(&key) {
                part.reads.push(key);
            }
        }
        Ok(plan)
    }

    async fn txn_attempt(&self, cmd: &Command, plan: &BTreeMap<u32, ShardPart>) -> Attempt {
        let id = self.next_txn_id();
        let deadline_ms = self.now_ms() + txn::TXN_LIFETIME_MS;
        let primary = *plan.keys().next().expect("a transaction spans shards");
        let lock = |shard: u32| {
            let part = &plan[&shard];
            TxnOp {
                shard,
                txn: id,
                kind: TxnOpKind::Lock {
                    primary,
                    deadline_ms,
                    keys: part.keys.clone(),
                    reads: part.reads.clone(),
                },
            }
        };
        // 1. Lock every other shard at once and read the primary's keys meanwhile: its keys
        // are not locked but checked by the commit (one entry fewer). A lock can land while
        // the primary has no record: whoever asks about it is told `Pending` (or, past its
        // deadline, writes the abort the commit will then meet).
        let mut read: HashMap<Bytes, Option<Entry>> = HashMap::new();
        let others: Vec<u32> = plan.keys().copied().filter(|&s| s != primary).collect();
        let locks = join_all(others.iter().map(|&shard| {
            let step = self.txn_step(lock(shard));
            async move {
                let answer = step.await;
                failpoint("locked-one");
                answer
            }
        }));
        let primary_reads = plan[&primary].reads.clone();
        let primary_read = self.read_primary(primary, &primary_reads);
        // Tests only: read the primary first and pause before locking the others.
        #[cfg(test)]
        let primary_read = {
            let read = primary_read.await;
            self.test_pause(&self.txn_pause).await;
            std::future::ready(read)
        };
        let (answers, primary_read) = tokio::join!(locks, primary_read);
        let mut failed = None;
        let mut unsure = false;
        let mut fail = |e: CommandError| {
            // The first failure decides; a conflict outranks a refusal.
            if failed.is_none() || matches!(e, CommandError::Locked(_)) {
                failed = Some(e);
            }
        };
        let mut versions_read = Vec::with_capacity(primary_reads.len());
        match primary_read {
            Ok(entries) => {
                for (key, entry) in primary_reads.into_iter().zip(entries) {
                    versions_read.push((key.clone(), entry.as_ref().map(|e| e.version)));
                    read.insert(key, entry);
                }
            }
            // A read changes nothing: it makes nobody unsure.
            Err(e) => fail(e),
        }
        for (&shard, answer) in others.iter().zip(answers) {
            let e = match answer {
                Ok(Reply::Txn(TxnReply::Read(entries))) => {
                    read.extend(plan[&shard].reads.iter().cloned().zip(entries));
                    continue;
                }
                Ok(other) => {
                    CommandError::Invalid(format!("unexpected answer to a lock: {other:?}"))
                }
                Err(e) => e,
            };
            unsure |= !e.is_refusal();
            fail(e);
        }
        if let Some(e) = failed {
            self.abort_txn(id, deadline_ms, primary, &others, unsure)
                .await;
            return Self::before_commit(e);
        }
        failpoint("locked");
        // 2. Evaluate against what the locks read.
        let overlay = Overlay::default();
        let mut eval =
            Eval::prefetched(&read, &overlay, self.now_ms(), self.options.value_bytes_max);
        let result = eval.command(cmd.clone());
        let missed = eval.missed();
        let ops = eval.finish().into_ops();
        let reply = match result {
            _ if missed => Err(CommandError::Invalid(format!(
                "'{}' read a key its transaction did not lock",
                cmd.name()
            ))),
            result => result,
        };
        let written: usize = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key } | WriteOp::Expire { key } => key.len(),
                _ => 0,
            })
            .sum();
        let reply = match reply {
            // Values read (RENAME's) count too: checked before anything is written.
            Ok(_) if written > txn::TXN_BYTES_MAX => Err(CommandError::Invalid(format!(
                "a transaction writes {written} bytes; the limit is {}",
                txn::TXN_BYTES_MAX
            ))),
            reply => reply,
        };
        let reply = match reply {
            Ok(reply) if !ops.is_empty() => reply,
            // Nothing to write (MSETNX over an existing key, only reads) or an error: there
            // is no commit to check the primary's keys, so they are read again now that
            // every other shard is locked. Unchanged, every state read holds at this instant.
            done => {
                let recheck = self.recheck_primary(primary, &versions_read).await;
                self.abort_txn(id, deadline_ms, primary, &others, false)
                    .await;
                return match recheck {
                    Ok(()) => Attempt::Done(done),
                    Err(e) => Self::before_commit(e),
                };
            }
        };
        let mut writes: BTreeMap<u32, Vec<WriteOp>> = BTreeMap::new();
        for op in ops {
            let key = txn::op_key(&op).expect("a command writes keys");
            writes
                .entry(self.shards.shard_of_key(key))
                .or_default()
                .push(op);
        }
        let mine = writes.remove(&primary).unwrap_or_default();
        // Every other shard resolves, also those that only read: their locks go with it.
        let rest: Vec<(u32, Vec<WriteOp>)> = others
            .iter()
            .map(|&s| (s, writes.remove(&s).unwrap_or_default()))
            .collect();
        // 3. Commit at the primary: the commit point.
        let commit = TxnOp {
            shard: primary,
            txn: id,
            kind: TxnOpKind::Commit {
                deadline_ms,
                read: versions_read.clone(),
                writes: mine,
                rest: rest.clone(),
            },
        };
        let version = match self.txn_step(commit).await {
            Ok(Reply::Batch { version }) => version,
            Ok(other) => {
                return Attempt::Done(Err(CommandError::Invalid(format!(
                    "unexpected answer to a commit: {other:?}"
                ))));
            }
            Err(CommandError::TxnAborted) => {
                self.abort_txn(id, deadline_ms, primary, &others, true)
                    .await;
                return Attempt::Refused(CommandError::TxnAborted);
            }
            // Refused (a key of the primary locked or changed, no leader): nothing happened.
            Err(e) if e.is_refusal() => {
                self.abort_txn(id, deadline_ms, primary, &others, false)
                    .await;
                return Self::before_commit(e);
            }
            // Whether it committed is the primary's to say: ask, aborting it if it had not.
            Err(e) => match self.decide(primary, id, AbortWhen::Now, deadline_ms).await {
                Ok(Fate::Committed(_)) => 0,
                Ok(Fate::Aborted) => {
                    self.abort_txn(id, deadline_ms, primary, &others, true)
                        .await;
                    return Self::before_commit(e);
                }
                // No record: never committed, or committed and forgotten (by the primary's
                // resolver, while the answer was lost). A committed record is forgotten only
                // once no lock of it is left: one of its locks still held means it never
                // committed, and the abort just written means it never will.
                Ok(Fate::Forgotten) if self.holds_a_lock(id, plan, &others).await => {
                    self.abort_txn(id, deadline_ms, primary, &others, false)
                        .await;
                    return Self::before_commit(e);
                }
                Ok(Fate::Pending | Fate::Forgotten) | Err(_) => {
                    return Attempt::Done(Err(CommandError::OutcomeUnknown(format!(
                        "the transaction's commit at shard {primary} got no answer ({e}); \
                         whichever way it went, it is all or nothing"
                    ))));
                }
            },
        };
        failpoint("committed");
        // 4. Resolve the other shards, then forget the record in the background: the client
        // has its answer once no lock is left. Failures here leave the work to whoever meets
        // the locks, or to the primary's resolver.
        let (mut versions, resolved) = self.resolve_committed(id, rest).await;
        if resolved && self.forgets.try_send((primary, id)).is_err() {
            tracing::debug!(txn = %format!("{id:032x}"), "forget queue full: left to the resolver");
        }
        versions.insert(primary, version);
        let reply = match reply {
            // A batch answers one version: its primary's (each shard has its own).
            Reply::Batch { .. } => Reply::Batch { version },
            reply => self.stamp_versions(cmd, reply, &versions),
        };
        Attempt::Done(Ok(reply))
    }

    /// The answer of a committed transaction with the versions its writes got (evaluated
    /// before the shards' log indexes were known, it says 0): a written key's version is the
    /// index of the entry that applied it on its shard (0 if that shard's resolution is
    /// still to come).
    fn stamp_versions(&self, cmd: &Command, reply: Reply, versions: &HashMap<u32, u64>) -> Reply {
        let version_of = |key: &Bytes| {
            versions
                .get(&self.shards.shard_of_key(key))
                .copied()
                .unwrap_or(0)
        };
        match (cmd, reply) {
            (
                Command::Set { key, .. },
                Reply::Set(crate::reply::SetOutcome {
                    version: Some(_),
                    old,
                }),
            ) => Reply::Set(crate::reply::SetOutcome {
                version: Some(version_of(key)),
                old,
            }),
            // Only a key this transaction wrote reads as version 0 inside it.
            (Command::Get { key }, Reply::Entry(Some(mut entry))) if entry.version == 0 => {
                entry.version = version_of(key);
                Reply::Entry(Some(entry))
            }
            (
                Command::Exec {
                    then, otherwise, ..
                },
                Reply::Exec { succeeded, replies },
            ) => {
                let branch = if succeeded { then } else { otherwise };
                let replies = branch
                    .iter()
                    .zip(replies)
                    .map(|(cmd, reply)| reply.map(|r| self.stamp_versions(cmd, r, versions)))
                    .collect();
                Reply::Exec { succeeded, replies }
            }
            (_, reply) => reply,
        }
    }

    /// A guarded read of the primary's `keys` at its leader (none: nothing to read).
    async fn read_primary(
        &self,
        primary: u32,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Entry>>, CommandError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = Command::ShardRead {
            shard: primary,
            keys: keys.to_vec(),
        };
        match self.read_on(primary, &cmd, 0, false).await? {
            Reply::Guarded { entries, .. } => Ok(entries),
            other => Err(CommandError::Invalid(format!(
                "unexpected answer to a read: {other:?}"
            ))),
        }
    }

    /// Whether the primary's keys still have the versions read (`ReadChanged` if not,
    /// `Locked` if another transaction holds one).
    async fn recheck_primary(
        &self,
        primary: u32,
        read: &[(Bytes, Option<u64>)],
    ) -> Result<(), CommandError> {
        let keys: Vec<Bytes> = read.iter().map(|(key, _)| key.clone()).collect();
        let entries = self.read_primary(primary, &keys).await?;
        let same = read
            .iter()
            .zip(&entries)
            .all(|((_, version), entry)| entry.as_ref().map(|e| e.version) == *version);
        if same {
            Ok(())
        } else {
            Err(CommandError::ReadChanged)
        }
    }

    /// Whether transaction `id` still holds a lock on one of the shards `others` (each
    /// asked about one of the keys it locked there).
    async fn holds_a_lock(
        &self,
        id: TxnId,
        plan: &BTreeMap<u32, ShardPart>,
        others: &[u32],
    ) -> bool {
        let asks = others.iter().filter_map(|&shard| {
            let key = plan[&shard].keys.first()?.clone();
            Some(async move {
                let cmd = Command::ShardRead {
                    shard,
                    keys: vec![key],
                };
                matches!(
                    self.read_on(shard, &cmd, 0, false).await,
                    Err(CommandError::Locked(holder)) if holder.lock.txn == id
                )
            })
        });
        join_all(asks).await.into_iter().any(|held| held)
    }

    /// How a failure before the commit point ends an attempt: nothing of it happened.
    fn before_commit(e: CommandError) -> Attempt {
        match e {
            CommandError::Locked(holder) => Attempt::Conflict(holder),
            // The lock may have been taken, but the transaction was aborted and can never
            // commit: nothing happened.
            CommandError::OutcomeUnknown(why) => Attempt::Refused(CommandError::TryAgain(format!(
                "a lock got no answer: {why}"
            ))),
            e if e.is_refusal() => Attempt::Refused(e),
            e => Attempt::Done(Err(e)),
        }
    }

    /// Ends transaction `id` with nothing written: releases its locks on `others`. Best
    /// effort: whatever is left is resolved by whoever meets it.
    ///
    /// When a lock step got no answer (`unsure`), that lock may still land: the primary
    /// first records the abort (kept [`txn::ABORTED_RETAIN_MS`]) for whoever meets it to
    /// find. Otherwise nothing is left at the primary (its keys are never locked, and a
    /// record exists only from the commit on).
    async fn abort_txn(
        &self,
        id: TxnId,
        deadline_ms: u64,
        primary: u32,
        others: &[u32],
        unsure: bool,
    ) {
        if unsure {
            let _ = self.decide(primary, id, AbortWhen::Now, deadline_ms).await;
        }
        let release = others.iter().map(|&shard| {
            self.txn_step(TxnOp {
                shard,
                txn: id,
                kind: TxnOpKind::Resolve { writes: None },
            })
        });
        join_all(release).await;
    }

    /// Resolves a committed transaction's other shards. Returns the version each shard gave
    /// the writes it resolved, and whether every shard was resolved (then, and only then,
    /// may its record be forgotten).
    async fn resolve_committed(
        &self,
        id: TxnId,
        rest: Vec<(u32, Vec<WriteOp>)>,
    ) -> (HashMap<u32, u64>, bool) {
        let mut versions = HashMap::new();
        let shards: Vec<u32> = rest.iter().map(|(shard, _)| *shard).collect();
        let resolves = rest.into_iter().map(|(shard, writes)| {
            self.txn_step(TxnOp {
                shard,
                txn: id,
                kind: TxnOpKind::Resolve {
                    writes: Some(writes),
                },
            })
        });
        let resolved = join_all(resolves).await;
        for (shard, answer) in shards.into_iter().zip(&resolved) {
            if let Ok(Reply::Batch { version }) = answer {
                versions.insert(shard, *version);
            }
        }
        if let Some(Err(e)) = resolved.iter().find(|r| r.is_err()) {
            tracing::debug!(txn = %format!("{id:032x}"), error = %e, "resolution left to the resolver");
            return (versions, false);
        }
        failpoint("resolved");
        (versions, true)
    }

    /// Forgets the records of committed transactions whose shards are all resolved (or
    /// aborted ones past their retention), all on shard `primary`, in one entry.
    async fn forget(&self, primary: u32, ids: &[TxnId]) {
        let Some((&id, also)) = ids.split_first() else {
            return;
        };
        let forget = TxnOp {
            shard: primary,
            txn: id,
            kind: TxnOpKind::Forget {
                also: also.to_vec(),
            },
        };
        if let Err(e) = self.txn_step(forget).await {
            tracing::debug!(shard = primary, records = ids.len(), error = %e, "forgetting left to the resolver");
        }
    }

    /// Starts the task that forgets, off the clients' path, the records coordinators queue
    /// once their transactions are resolved: a record no lock refers to any more costs a
    /// client nothing, so it need not wait for its forgetting. The task ends with the node.
    pub(super) fn spawn_forgetter(node: &Arc<Node>, mut queue: mpsc::Receiver<(u32, TxnId)>) {
        let node = Arc::downgrade(node);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(txn::FORGETS_PER_ROUND);
            while queue.recv_many(&mut batch, txn::FORGETS_PER_ROUND).await > 0 {
                let Some(node) = node.upgrade() else {
                    return;
                };
                // One entry per primary shard for the whole batch.
                let mut by_primary: BTreeMap<u32, Vec<TxnId>> = BTreeMap::new();
                for (primary, id) in batch.drain(..) {
                    by_primary.entry(primary).or_default().push(id);
                }
                join_all(
                    by_primary
                        .iter()
                        .map(|(&primary, ids)| node.forget(primary, ids)),
                )
                .await;
            }
        });
    }

    /// Asks the primary for a transaction's fate.
    async fn decide(
        &self,
        primary: u32,
        id: TxnId,
        abort: AbortWhen,
        deadline_ms: u64,
    ) -> Result<Fate, CommandError> {
        let op = TxnOp {
            shard: primary,
            txn: id,
            kind: TxnOpKind::Decide { abort, deadline_ms },
        };
        match self.txn_step(op).await? {
            Reply::Txn(TxnReply::Fate(fate)) => Ok(fate),
            other => Err(CommandError::Invalid(format!(
                "unexpected answer to a decision: {other:?}"
            ))),
        }
    }

    /// What a request does when it meets `holder`'s lock, before trying again: waits a
    /// little while the transaction is young (its coordinator is about to release it); once
    /// it has waited [`txn::LOCK_CHECK_AFTER_MS`], asks the primary, and resolves the lock
    /// when the transaction is decided (aborting it first when it is past its deadline).
    /// `since` is when the request first met this transaction's lock.
    pub(super) async fn wait_for_lock(
        &self,
        holder: LockHolder,
        since: &mut Option<(TxnId, Instant)>,
    ) {
        let first = match *since {
            Some((txn, at)) if txn == holder.lock.txn => at,
            _ => {
                *since = Some((holder.lock.txn, Instant::now()));
                Instant::now()
            }
        };
        let waited = first.elapsed();
        let expired = self.now_ms() > holder.lock.deadline_ms;
        if !expired && waited < Duration::from_millis(txn::LOCK_CHECK_AFTER_MS) {
            let pause = (waited / 4).clamp(Duration::from_micros(500), Duration::from_millis(10));
            tokio::time::sleep(pause).await;
            return;
        }
        match self.resolve_lock(holder, expired).await {
            Ok(true) => {}
            // Still pending, or the primary could not answer: wait before asking again.
            Ok(false) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }

    /// Resolves `holder`'s lock if its transaction is decided (aborting it at its primary
    /// when `abort_expired` and it is past its deadline); returns whether it did.
    async fn resolve_lock(
        &self,
        holder: LockHolder,
        abort_expired: bool,
    ) -> Result<bool, CommandError> {
        let Lock {
            txn: id,
            primary,
            deadline_ms,
        } = holder.lock;
        let abort = if abort_expired {
            AbortWhen::Expired
        } else {
            AbortWhen::Never
        };
        let writes = match self.decide(primary, id, abort, deadline_ms).await? {
            Fate::Pending => return Ok(false),
            Fate::Aborted | Fate::Forgotten => None,
            Fate::Committed(rest) => Some(
                rest.into_iter()
                    .find(|(shard, _)| *shard == holder.shard)
                    .map(|(_, writes)| writes)
                    .unwrap_or_default(),
            ),
        };
        // The primary's own locks went with its decision.
        if holder.shard != primary {
            self.txn_step(TxnOp {
                shard: holder.shard,
                txn: id,
                kind: TxnOpKind::Resolve { writes },
            })
            .await?;
        }
        Ok(true)
    }

    /// One round of the background resolver on every shard this node leads: locks past their
    /// deadline are resolved, committed records whose coordinator did not finish are driven
    /// to the end, pending records past their deadline are aborted, and aborted records past
    /// their retention are forgotten.
    pub(super) async fn resolve_cycle(&self) {
        let now = self.now_ms();
        for shard in &self.shards.list() {
            if shard.group.leading().is_none() {
                continue;
            }
            let engine = shard.engine();
            if engine.system_len() == 0 {
                continue;
            }
            let mut seen = HashSet::new();
            let locks = engine.system_range(
                std::ops::Bound::Included(txn::LOCK_PREFIX),
                std::ops::Bound::Excluded(txn::LOCK_PREFIX_END),
                usize::MAX,
            );
            for (_, value) in locks {
                let Ok(lock) = txn::decode::<Lock>(&value, "lock") else {
                    continue;
                };
                if now > lock.deadline_ms && seen.insert(lock.txn) {
                    let holder = LockHolder {
                        lock,
                        shard: shard.id,
                    };
                    if let Err(e) = self.resolve_lock(holder, true).await {
                        tracing::debug!(shard = shard.id, error = %e, "resolving a stale lock");
                    }
                }
            }
            let records = engine.system_range(
                std::ops::Bound::Included(txn::RECORD_PREFIX),
                std::ops::Bound::Unbounded,
                usize::MAX,
            );
            for (key, value) in records {
                let Some(id) = key
                    .get(txn::RECORD_PREFIX.len()..)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(u128::from_be_bytes)
                else {
                    continue;
                };
                let Ok(record) = txn::decode::<Record>(&value, "transaction") else {
                    continue;
                };
                match record {
                    Record::Committed { at_ms, rest }
                        if now > at_ms + txn::COMMITTED_HELP_AFTER_MS =>
                    {
                        let (_, resolved) = self.resolve_committed(id, rest).await;
                        if resolved {
                            self.forget(shard.id, &[id]).await;
                        }
                    }
                    Record::Pending { deadline_ms } if now > deadline_ms => {
                        let _ = self
                            .decide(shard.id, id, AbortWhen::Expired, deadline_ms)
                            .await;
                    }
                    Record::Aborted { until_ms } if now > until_ms => {
                        self.forget(shard.id, &[id]).await;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::command::{BatchOp, Expiry};
    use crate::node::tests::{b, get, on_manual_clock, options, set};

    /// `n` keys named `{prefix}-i`, each in a different shard.
    fn spread(node: &Node, prefix: &str, n: usize) -> Vec<Bytes> {
        let mut shards = HashSet::new();
        let mut out = Vec::new();
        for i in 0.. {
            let key = b(&format!("{prefix}-{i}"));
            if shards.insert(node.shards.shard_of_key(&key)) {
                out.push(key);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    /// Two keys on different shards, the lower-numbered shard's first, with their shards.
    fn two_shards(node: &Node, prefix: &str) -> (Vec<Bytes>, u32, u32) {
        let mut keys = spread(node, prefix, 2);
        keys.sort_by_key(|k| node.shards.shard_of_key(k));
        let (p, s) = (
            node.shards.shard_of_key(&keys[0]),
            node.shards.shard_of_key(&keys[1]),
        );
        (keys, p, s)
    }

    async fn values(node: &Node, keys: &[Bytes]) -> Vec<Option<Bytes>> {
        match node
            .execute(Command::MGet {
                keys: keys.to_vec(),
            })
            .await
            .unwrap()
        {
            Reply::Values(v) => v,
            other => panic!("{other:?}"),
        }
    }

    /// Sets `hook` ([`Node::read_pause`], [`Node::txn_pause`]): the node notifies the first
    /// when it gets there, then waits for the second.
    fn pause_at(
        hook: &crate::node::PauseHook,
    ) -> (Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>) {
        let (paused, resume) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        *hook.lock() = Some((paused.clone(), resume.clone()));
        (paused, resume)
    }

    /// Waits (up to 10 s) for every shard's system table to empty: a committed
    /// transaction's record is forgotten in the background after its client has the answer.
    async fn assert_no_txn_left(node: &Node) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node
            .shards
            .list()
            .iter()
            .any(|s| s.engine().system_len() > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for shard in &node.shards.list() {
            assert_eq!(
                shard.engine().system_len(),
                0,
                "shard {} keeps {:?}",
                shard.id,
                shard.engine().system_range(
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Unbounded,
                    10
                )
            );
        }
    }

    fn step(node: &Node, shard: u32, txn: TxnId, kind: TxnOpKind) -> Command {
        let _ = node;
        Command::Txn(TxnOp { shard, txn, kind })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_shard_writes_are_atomic_and_answer_as_redis_does() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let keys = spread(&node, "k", 3);
        let pairs = |v: &str| keys.iter().map(|k| (k.clone(), b(v))).collect::<Vec<_>>();
        let mset = |pairs, nx| Command::MSet { pairs, nx };
        assert_eq!(
            node.execute(mset(pairs("1"), false)).await,
            Ok(Reply::Bool(true))
        );
        assert_eq!(values(&node, &keys).await, vec![Some(b("1")); 3]);
        // MSETNX: one key exists, nothing is written.
        let mut fresh = spread(&node, "fresh", 2);
        fresh.push(keys[0].clone());
        let nx: Vec<_> = fresh.iter().map(|k| (k.clone(), b("nx"))).collect();
        assert_eq!(node.execute(mset(nx, true)).await, Ok(Reply::Bool(false)));
        assert_eq!(values(&node, &fresh).await, vec![None, None, Some(b("1"))]);
        // The locks of a transaction that wrote nothing are gone.
        assert_no_txn_left(&node).await;
        // DEL counts across shards; EXISTS too.
        let del = Command::Del {
            keys: vec![keys[0].clone(), keys[1].clone(), b("missing-key")],
        };
        assert_eq!(node.execute(del).await, Ok(Reply::Int(2)));
        assert_eq!(
            node.execute(Command::Exists { keys: keys.clone() }).await,
            Ok(Reply::Int(1))
        );
        // RENAME across shards keeps the TTL; a missing source is "no such key".
        let ttl = Command::Set {
            key: keys[2].clone(),
            value: b("moving"),
            expiry: Expiry::InMs(60_000),
            condition: crate::command::Condition::Always,
            return_old: false,
        };
        node.execute(ttl).await.unwrap();
        let rename = |from: &Bytes, to: &Bytes, nx| Command::Rename {
            from: from.clone(),
            to: to.clone(),
            nx,
        };
        assert_eq!(
            node.execute(rename(&keys[2], &keys[0], false)).await,
            Ok(Reply::Bool(true))
        );
        let moved = get(&node, std::str::from_utf8(&keys[0]).unwrap())
            .await
            .unwrap();
        assert_eq!(moved.value, b("moving"));
        assert!(moved.expires_at_ms.is_some());
        assert_eq!(
            node.execute(rename(&keys[2], &keys[1], false)).await,
            Err(CommandError::NoSuchKey)
        );
        node.execute(set(std::str::from_utf8(&keys[1]).unwrap(), "taken"))
            .await
            .unwrap();
        assert_eq!(
            node.execute(rename(&keys[0], &keys[1], true)).await,
            Ok(Reply::Bool(false))
        );
        // A batch across shards answers one version (its commit's) and applies whole.
        let batch = Command::Batch {
            ops: vec![
                BatchOp::Put {
                    key: keys[0].clone(),
                    value: b("b0"),
                    expiry: Expiry::Never,
                },
                BatchOp::Delete {
                    key: keys[1].clone(),
                },
                BatchOp::Put {
                    key: keys[2].clone(),
                    value: b("b2"),
                    expiry: Expiry::Keep,
                },
            ],
        };
        assert!(matches!(
            node.execute(batch).await,
            Ok(Reply::Batch { version }) if version > 0
        ));
        assert_eq!(
            values(&node, &keys).await,
            vec![Some(b("b0")), None, Some(b("b2"))]
        );
        assert_no_txn_left(&node).await;
        node.shutdown().await.unwrap();
    }

    /// A coordinator that stops after any step of a transaction: nothing partial is ever
    /// visible, and the transaction resolves (committed when its commit entry landed,
    /// aborted otherwise), by a reader that meets a lock or by the background resolver.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_coordinator_that_stops_after_any_step_leaves_nothing_partial() {
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = on_manual_clock(dir.path()).await;
        let (keys, p, s) = two_shards(&node, "acct");
        let old = vec![Some(b("old")); 2];
        let new = vec![Some(b("new")); 2];
        // Steps 1..=4: lock the secondary, commit at the primary, resolve the secondary,
        // forget; what is left is resolved by a reader, or (101..) by the background resolver
        // alone, before anything reads.
        for (round, stop_after) in (1..=4).chain(101..=104).enumerate() {
            let by_reader = stop_after < 100;
            let stop_after = stop_after % 100;
            let pairs = keys.iter().map(|k| (k.clone(), b("old"))).collect();
            node.execute(Command::MSet { pairs, nx: false })
                .await
                .unwrap();
            let id = (9u128 << 64) | round as u128;
            let deadline_ms = node.now_ms() + txn::TXN_LIFETIME_MS;
            let put = |k: &Bytes| WriteOp::Put {
                key: k.clone(),
                value: b("new"),
                expires_at_ms: None,
            };
            let lock = |key: &Bytes| TxnOpKind::Lock {
                primary: p,
                deadline_ms,
                keys: vec![key.clone()],
                reads: vec![],
            };
            let steps = [
                step(&node, s, id, lock(&keys[1])),
                step(
                    &node,
                    p,
                    id,
                    TxnOpKind::Commit {
                        deadline_ms,
                        read: vec![],
                        writes: vec![put(&keys[0])],
                        rest: vec![(s, vec![put(&keys[1])])],
                    },
                ),
                step(
                    &node,
                    s,
                    id,
                    TxnOpKind::Resolve {
                        writes: Some(vec![put(&keys[1])]),
                    },
                ),
                step(&node, p, id, TxnOpKind::Forget { also: vec![] }),
            ];
            for cmd in steps.into_iter().take(stop_after) {
                node.execute(cmd).await.unwrap();
            }
            let committed = stop_after >= 2;
            let want = if committed { &new } else { &old };
            if !by_reader {
                clock.advance(txn::TXN_LIFETIME_MS + txn::COMMITTED_HELP_AFTER_MS + 1);
                node.resolve_cycle().await;
                node.resolve_cycle().await;
                for shard in &node.shards.list() {
                    let locks = shard.engine().system_range(
                        std::ops::Bound::Included(txn::LOCK_PREFIX),
                        std::ops::Bound::Excluded(txn::LOCK_PREFIX_END),
                        10,
                    );
                    assert!(
                        locks.is_empty(),
                        "resolver, stopped after step {stop_after}: shard {} keeps {locks:?}",
                        shard.id
                    );
                }
                // Straight from the engines: no lock to wait for, no reader to resolve.
                let raw: Vec<Option<Bytes>> = keys
                    .iter()
                    .map(|k| node.shards.for_key(k).unwrap().engine().get(k).unwrap())
                    .collect();
                assert_eq!(&raw, want, "resolver, stopped after step {stop_after}");
            }
            // Readers see all or nothing, at once when the commit landed (they ask the
            // primary after a short wait), and the old values before it.
            if committed {
                assert_eq!(
                    &values(&node, &keys).await,
                    want,
                    "stopped after step {stop_after}"
                );
            } else {
                // A young pending transaction holds its keys: past its deadline, the reader
                // aborts it.
                clock.advance(txn::TXN_LIFETIME_MS + 1);
                assert_eq!(
                    &values(&node, &keys).await,
                    want,
                    "stopped after step {stop_after}"
                );
            }
            // The background resolver leaves nothing behind once the retention passed.
            clock.advance(txn::ABORTED_RETAIN_MS + txn::TXN_LIFETIME_MS + 1);
            node.resolve_cycle().await;
            node.resolve_cycle().await;
            for shard in &node.shards.list() {
                assert_eq!(
                    shard.engine().system_len(),
                    0,
                    "stopped after step {stop_after}: shard {} keeps {:?}",
                    shard.id,
                    shard.engine().system_range(
                        std::ops::Bound::Unbounded,
                        std::ops::Bound::Unbounded,
                        10
                    )
                );
            }
            assert_eq!(&values(&node, &keys).await, want);
        }
        node.shutdown().await.unwrap();
    }

    /// Writers MSET one unique id to keys on every shard while readers MGET them: a reader
    /// that sees an id on one key sees it on all (read atomicity), and the last write wins
    /// everywhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_every_multi_shard_write_whole() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let keys = spread(&node, "ra", 4);
        let pairs = {
            let keys = keys.clone();
            move |id: &str| keys.iter().map(|k| (k.clone(), b(id))).collect::<Vec<_>>()
        };
        node.execute(Command::MSet {
            pairs: pairs("start"),
            nx: false,
        })
        .await
        .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3 {
            let (node, pairs) = (node.clone(), pairs.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..40 {
                    let id = format!("w{w}-{i}");
                    node.execute(Command::MSet {
                        pairs: pairs(&id),
                        nx: false,
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        let mut readers = Vec::new();
        for _ in 0..2 {
            let (node, keys, stop) = (node.clone(), keys.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let seen = values(&node, &keys).await;
                    assert!(
                        seen.iter().all(|v| *v == seen[0]),
                        "a reader saw part of a write: {seen:?}"
                    );
                    let exists = node
                        .execute(Command::Exists { keys: keys.clone() })
                        .await
                        .unwrap();
                    assert_eq!(exists, Reply::Int(4));
                    reads += 1;
                    // Reads of local replicas never wait: let the writers run.
                    tokio::task::yield_now().await;
                }
                reads
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
        let last = values(&node, &keys).await;
        assert!(last.iter().all(|v| *v == last[0]), "{last:?}");
        assert_no_txn_left(&node).await;
        node.shutdown().await.unwrap();
    }

    /// A multi-shard read whose first pass reads one shard before a transaction commits
    /// and the other after it (the test pauses the read between its parts) must not answer
    /// that pass: its second pass sees the change, and it reads again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_whose_parts_straddle_a_commit_reads_again() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let mut keys = spread(&node, "dc", 2);
        keys.sort_by_key(|k| node.shards.shard_of_key(k));
        let pairs = |v: &str| keys.iter().map(|k| (k.clone(), b(v))).collect::<Vec<_>>();
        node.execute(Command::MSet {
            pairs: pairs("old"),
            nx: false,
        })
        .await
        .unwrap();
        let (paused, resume) = pause_at(&node.read_pause);
        let reader = {
            let (node, keys) = (node.clone(), keys.clone());
            tokio::spawn(async move { values(&node, &keys).await })
        };
        // The reader has read the first shard's key (old) and waits before the second.
        paused.notified().await;
        node.execute(Command::MSet {
            pairs: pairs("new"),
            nx: false,
        })
        .await
        .unwrap();
        resume.notify_one();
        let seen = reader.await.unwrap();
        assert!(
            seen.iter().all(|v| *v == seen[0]),
            "a read straddling a commit answered half of it: {seen:?}"
        );
        assert_eq!(seen[0], Some(b("new")));
        node.shutdown().await.unwrap();
    }

    /// A coordinator whose commit answer was lost, told by the primary that there is no
    /// record, knows the transaction never committed while one of its locks stands (a
    /// committed record is forgotten only once none is left).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_still_held_tells_a_commit_that_never_landed() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let (keys, p, s) = two_shards(&node, "held");
        let mut plan = BTreeMap::new();
        for (shard, key) in [(p, &keys[0]), (s, &keys[1])] {
            plan.insert(
                shard,
                ShardPart {
                    keys: vec![key.clone()],
                    reads: vec![],
                },
            );
        }
        let deadline_ms = node.now_ms() + txn::TXN_LIFETIME_MS;
        let lock = TxnOpKind::Lock {
            primary: p,
            deadline_ms,
            keys: vec![keys[1].clone()],
            reads: vec![],
        };
        assert!(!node.holds_a_lock(5, &plan, &[s]).await);
        node.execute(step(&node, s, 5, lock)).await.unwrap();
        assert!(node.holds_a_lock(5, &plan, &[s]).await);
        assert!(!node.holds_a_lock(6, &plan, &[s]).await, "another's lock");
        node.execute(step(&node, s, 5, TxnOpKind::Resolve { writes: None }))
            .await
            .unwrap();
        assert!(!node.holds_a_lock(5, &plan, &[s]).await);
        node.shutdown().await.unwrap();
    }

    /// A transaction that writes nothing (here two GETs) has no commit to check the keys
    /// of its primary, which it reads without a lock: it reads them again once the other
    /// shards are locked. A transaction that commits in between makes it start over, so it
    /// never answers a state that never was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_that_writes_nothing_answers_one_instant() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let (keys, _, _) = two_shards(&node, "ro");
        let pairs = |v: &str| keys.iter().map(|k| (k.clone(), b(v))).collect::<Vec<_>>();
        node.execute(Command::MSet {
            pairs: pairs("old"),
            nx: false,
        })
        .await
        .unwrap();
        let (paused, resume) = pause_at(&node.txn_pause);
        let reader = {
            let node = node.clone();
            let then = keys
                .iter()
                .map(|k| Command::Get { key: k.clone() })
                .collect();
            tokio::spawn(async move {
                node.execute(Command::Exec {
                    compares: vec![],
                    then,
                    otherwise: vec![],
                })
                .await
            })
        };
        // The reader has read its primary's key (old) and not yet locked the other.
        paused.notified().await;
        node.execute(Command::MSet {
            pairs: pairs("new"),
            nx: false,
        })
        .await
        .unwrap();
        resume.notify_one();
        let Ok(Reply::Exec {
            succeeded: true,
            replies,
        }) = reader.await.unwrap()
        else {
            panic!("the read-only transaction failed");
        };
        let seen: Vec<Option<Bytes>> = replies
            .into_iter()
            .map(|r| match r {
                Ok(Reply::Entry(entry)) => entry.map(|e| e.value),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            vec![Some(b("new")); 2],
            "it answered a state that never was"
        );
        node.shutdown().await.unwrap();
    }

    /// Keys a lock record cannot hold, and a record larger than any user value, are refused
    /// or taken before they reach the log: an entry that failed to apply would stop the shard
    /// on every replica. The node goes on serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_keys_and_records_never_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let keys = spread(&node, "big", 2);
        let long = Bytes::from(vec![b'k'; cairn_storage::KEY_BYTES_MAX]);
        let pairs = vec![(long.clone(), b("v")), (keys[1].clone(), b("v"))];
        let spans = node.shards.shard_of_key(&long) != node.shards.shard_of_key(&keys[1]);
        let mset = node.execute(Command::MSet { pairs, nx: false }).await;
        if spans {
            assert!(
                matches!(mset, Err(CommandError::KeyTooLarge { .. })),
                "{mset:?}"
            );
        }
        let exec = Command::Exec {
            compares: vec![],
            then: vec![
                Command::Get { key: long.clone() },
                Command::Get {
                    key: keys[0].clone(),
                },
            ],
            otherwise: vec![],
        };
        let _ = node.execute(exec).await;
        // A value at the limit (1024 here) moved across shards: the commit's record holds it
        // with its key and framing, more than a user value may be.
        let mut by_shard = keys.clone();
        by_shard.sort_by_key(|k| node.shards.shard_of_key(k));
        let value = Bytes::from(vec![b'x'; 1024]);
        node.execute(Command::Set {
            key: by_shard[0].clone(),
            value: value.clone(),
            expiry: crate::command::Expiry::Never,
            condition: crate::command::Condition::Always,
            return_old: false,
        })
        .await
        .unwrap();
        node.execute(Command::Rename {
            from: by_shard[0].clone(),
            to: by_shard[1].clone(),
            nx: false,
        })
        .await
        .unwrap();
        assert_eq!(
            values(&node, &by_shard).await,
            vec![None, Some(value)],
            "the rename went through"
        );
        assert!(node.failure().is_none(), "{:?}", node.failure());
        node.execute(set("after", "ok")).await.unwrap();
        assert_eq!(get(&node, "after").await.unwrap().value, b("ok"));
        node.shutdown().await.unwrap();
    }

    /// The primary decides in its log order, and a missing record is never reported as an
    /// abort to a coordinator that may have committed: a lock after the deadline is refused,
    /// a commit after an abort is refused and changes nothing, and a record the resolver
    /// already forgot is `Forgotten`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_primary_decides_and_never_mistakes_a_forgotten_commit_for_an_abort() {
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = on_manual_clock(dir.path()).await;
        let (keys, p, s) = two_shards(&node, "dec");
        let lock = |primary, deadline_ms, key: &Bytes| TxnOpKind::Lock {
            primary,
            deadline_ms,
            keys: vec![key.clone()],
            reads: vec![],
        };
        let put = |k: &Bytes| WriteOp::Put {
            key: k.clone(),
            value: b("new"),
            expires_at_ms: None,
        };
        let fate = |r: Result<Reply, CommandError>| match r {
            Ok(Reply::Txn(TxnReply::Fate(f))) => f,
            other => panic!("{other:?}"),
        };
        let deadline = node.now_ms() + txn::TXN_LIFETIME_MS;
        let decide = |id, abort| {
            step(
                &node,
                p,
                id,
                TxnOpKind::Decide {
                    abort,
                    deadline_ms: deadline,
                },
            )
        };
        let commit = |id, deadline_ms, read: Vec<(Bytes, Option<u64>)>| {
            step(
                &node,
                p,
                id,
                TxnOpKind::Commit {
                    deadline_ms,
                    read,
                    writes: vec![put(&keys[0])],
                    rest: vec![(s, vec![put(&keys[1])])],
                },
            )
        };
        // Past its deadline, a lock is refused, and so is a commit.
        let past = node.now_ms() - 1;
        assert_eq!(
            node.execute(step(&node, s, 1, lock(p, past, &keys[1])))
                .await,
            Err(CommandError::TxnAborted)
        );
        assert_eq!(
            node.execute(commit(1, past, vec![])).await,
            Err(CommandError::TxnAborted)
        );
        // Not committed yet: one who only asks is told Pending, and nothing is written; a
        // young transaction is not aborted by one who saw its lock and asks to abort it if
        // expired.
        assert_eq!(
            fate(node.execute(decide(2, AbortWhen::Never)).await),
            Fate::Pending
        );
        assert_eq!(
            fate(node.execute(decide(2, AbortWhen::Expired)).await),
            Fate::Pending
        );
        assert_eq!(node.shards.get(p).unwrap().engine().system_len(), 0);
        // Past its deadline by the primary's clock: Forgotten, and its commit meets the abort
        // written in its place, even with a later deadline of its own.
        clock.advance(txn::TXN_LIFETIME_MS + 1);
        assert_eq!(
            fate(node.execute(decide(2, AbortWhen::Expired)).await),
            Fate::Forgotten
        );
        let deadline = node.now_ms() + txn::TXN_LIFETIME_MS;
        assert_eq!(
            node.execute(commit(2, deadline, vec![])).await,
            Err(CommandError::TxnAborted)
        );
        // Aborted by its coordinator: its commit is refused and writes nothing.
        assert_eq!(
            fate(
                node.execute(step(
                    &node,
                    p,
                    3,
                    TxnOpKind::Decide {
                        abort: AbortWhen::Now,
                        deadline_ms: deadline,
                    }
                ))
                .await
            ),
            Fate::Forgotten
        );
        assert_eq!(
            node.execute(commit(3, deadline, vec![])).await,
            Err(CommandError::TxnAborted)
        );
        assert_eq!(values(&node, &keys).await, vec![None, None]);
        // The primary's keys are checked, not locked: a key another transaction holds refuses
        // the commit (Locked), and so does a key read whose version changed since (TRYAGAIN).
        // Neither leaves a record.
        let records = node.shards.get(p).unwrap().engine().system_len();
        node.execute(step(&node, p, 40, lock(p, deadline, &keys[0])))
            .await
            .unwrap();
        assert!(matches!(
            node.execute(commit(4, deadline, vec![])).await,
            Err(CommandError::Locked(LockHolder { lock, .. })) if lock.txn == 40
        ));
        // Also a key it only read.
        let read_only = TxnOpKind::Commit {
            deadline_ms: deadline,
            read: vec![(keys[0].clone(), None)],
            writes: vec![],
            rest: vec![(s, vec![put(&keys[1])])],
        };
        assert!(matches!(
            node.execute(step(&node, p, 4, read_only)).await,
            Err(CommandError::Locked(LockHolder { lock, .. })) if lock.txn == 40
        ));
        node.execute(step(&node, p, 40, TxnOpKind::Resolve { writes: None }))
            .await
            .unwrap();
        node.execute(set(std::str::from_utf8(&keys[0]).unwrap(), "other"))
            .await
            .unwrap();
        assert_eq!(
            node.execute(commit(4, deadline, vec![(keys[0].clone(), None)]))
                .await,
            Err(CommandError::ReadChanged)
        );
        assert_eq!(node.shards.get(p).unwrap().engine().system_len(), records);
        // With the version it read, it commits.
        let version = get(&node, std::str::from_utf8(&keys[0]).unwrap())
            .await
            .unwrap()
            .version;
        node.execute(step(&node, s, 4, lock(p, deadline, &keys[1])))
            .await
            .unwrap();
        node.execute(commit(4, deadline, vec![(keys[0].clone(), Some(version))]))
            .await
            .unwrap();
        // Its coordinator lost the commit's answer; the resolver finished it meanwhile.
        clock.advance(txn::COMMITTED_HELP_AFTER_MS + 1);
        node.resolve_cycle().await;
        assert_eq!(values(&node, &keys).await, vec![Some(b("new")); 2]);
        assert_eq!(
            fate(
                node.execute(step(
                    &node,
                    p,
                    4,
                    TxnOpKind::Decide {
                        abort: AbortWhen::Now,
                        deadline_ms: deadline,
                    }
                ))
                .await
            ),
            Fate::Forgotten,
            "a forgotten commit is not an abort"
        );
        node.shutdown().await.unwrap();
    }

    /// A committed transaction whose coordinator died before resolving a shard, and which is
    /// not past its deadline (the clock stands still here): a coordinator that meets its lock
    /// asks the primary once it has waited, resolves it, and goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_coordinator_resolves_a_committed_lock_it_keeps_meeting() {
        let dir = tempfile::tempdir().unwrap();
        let (node, _clock) = on_manual_clock(dir.path()).await;
        let (keys, p, s) = two_shards(&node, "stale");
        let deadline_ms = node.now_ms() + txn::TXN_LIFETIME_MS;
        let lock = |key: &Bytes| TxnOpKind::Lock {
            primary: p,
            deadline_ms,
            keys: vec![key.clone()],
            reads: vec![],
        };
        let put = |k: &Bytes| WriteOp::Put {
            key: k.clone(),
            value: b("dead"),
            expires_at_ms: None,
        };
        node.execute(step(&node, s, 7, lock(&keys[1])))
            .await
            .unwrap();
        node.execute(step(
            &node,
            p,
            7,
            TxnOpKind::Commit {
                deadline_ms,
                read: vec![],
                writes: vec![put(&keys[0])],
                rest: vec![(s, vec![put(&keys[1])])],
            },
        ))
        .await
        .unwrap();
        // The secondary key is still locked by the committed transaction.
        let pairs = keys.iter().map(|k| (k.clone(), b("next"))).collect();
        assert_eq!(
            node.execute(Command::MSet { pairs, nx: false }).await,
            Ok(Reply::Bool(true))
        );
        assert_eq!(values(&node, &keys).await, vec![Some(b("next")); 2]);
        node.shutdown().await.unwrap();
    }
}
