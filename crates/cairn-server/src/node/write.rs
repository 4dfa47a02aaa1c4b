//! The write path as far as the node goes: checking and preparing a write (relative
//! deadlines become absolute here, at propose time), routing it to its shard (one slot, or
//! DEL and FLUSHDB fanned out per shard), and the [`PendingWrite`] a front end awaits.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{KEY_BYTES_MAX, Node};
use crate::command::{BatchOp, Command, Expiry};
use crate::error::CommandError;
use crate::proposer::{Answer, Proposal, ProposalOp, ProposalResult};
use crate::reply::Reply;

/// A write that has been proposed; await it for the result.
#[derive(Debug)]
pub struct PendingWrite {
    parts: Vec<Part>,
    combine: Combine,
    /// The command as proposed, when a refusal of it (`TRYAGAIN`: nothing happened) may be
    /// answered by sending it again: a write to one shard. See [`PendingWrite::outcome`].
    again: Option<Command>,
    /// The shard of a write to one shard proposed alone ([`Node::propose_alone`]).
    shard: Option<u32>,
}

/// Where a write's changes were applied: its shard and the index of an entry that holds
/// nothing else (see [`Node::propose_alone`]).
pub type Landed = (u32, u64);

/// One shard's part of a write.
#[derive(Debug)]
pub(super) enum Part {
    /// Proposed to this node's proposer for the shard.
    Local(oneshot::Receiver<Answer>),
    /// Forwarded to the shard's leader, which answered.
    Done(ProposalResult),
}

/// How the answers of a write fanned out to several shards make one.
#[derive(Debug, Clone, Copy)]
enum Combine {
    /// One shard: its answer.
    One,
    /// DEL: the sum of the counts.
    Sum,
    /// FLUSHDB: OK when every shard said OK.
    AllOk,
}

impl PendingWrite {
    pub async fn wait(self) -> ProposalResult {
        self.outcome().await.0
    }

    /// [`PendingWrite::outcome`], and where the write's changes landed when that is known: a
    /// write to one shard proposed by this node, alone in its entry, that wrote something.
    pub async fn outcome_landed(self) -> (ProposalResult, Option<Command>, Option<Landed>) {
        self.resolve().await
    }

    /// The answer, and the command again when the answer is a refusal that routing it afresh
    /// ([`Node::execute`]) may turn into a success: the shard's leadership moved between
    /// routing and proposing. Only the caller knows whether that is safe, since a retry lands
    /// after whatever it proposed since (the RESP connection retries only when none of its
    /// later writes can have taken effect).
    pub async fn outcome(self) -> (ProposalResult, Option<Command>) {
        let (result, again, _) = self.resolve().await;
        (result, again)
    }

    async fn resolve(mut self) -> (ProposalResult, Option<Command>, Option<Landed>) {
        // Only a refusal by this node's own proposer: a forwarded write was already retried
        // toward the leader for the whole retry window.
        let again = self
            .again
            .take()
            .filter(|_| matches!(self.parts.as_slice(), [Part::Local(_)]));
        let shard = self.shard;
        let (result, index) = self.settle().await;
        let again = again.filter(|_| matches!(&result, Err(e) if e.is_refusal()));
        let landed = shard.zip(index).filter(|_| result.is_ok());
        (result, again, landed)
    }

    /// The write's answer, and the entry index of its part when it has one part, proposed
    /// here, that wrote something.
    async fn settle(self) -> (ProposalResult, Option<u64>) {
        let sole = self.parts.len() == 1;
        let mut index = None;
        let mut total = 0i64;
        let mut last = Ok(Reply::Ok);
        let (mut succeeded, mut failure) = (false, None);
        for part in self.parts {
            let answer = match part {
                Part::Local(rx) => match rx.await {
                    Ok(answer) => {
                        index = answer.index.filter(|_| sole);
                        answer.result
                    }
                    Err(_) => Err(CommandError::proposer_stopped()),
                },
                Part::Done(result) => result,
            };
            match answer {
                Ok(answer) => {
                    succeeded = true;
                    if let (Combine::Sum, Reply::Int(n)) = (self.combine, &answer) {
                        total += n;
                    }
                    last = Ok(answer);
                }
                // A refusal (nothing happened) says the least: any other failure of
                // another part outranks it.
                Err(e) => match &failure {
                    None => failure = Some(e),
                    Some(f) if f.is_refusal() => failure = Some(e),
                    Some(_) => {}
                },
            }
        }
        let result = match failure {
            // Another shard's part was applied: "nothing happened" would be untrue.
            Some(e) if succeeded && e.is_refusal() => Err(CommandError::OutcomeUnknown(format!(
                "applied on some shards, refused on another ({e})"
            ))),
            Some(e) => Err(e),
            None => match self.combine {
                Combine::One => last,
                Combine::Sum => Ok(Reply::Int(total)),
                Combine::AllOk => Ok(Reply::Ok),
            },
        };
        (result, index)
    }
}

impl Node {
    /// Propose a write without waiting for its commit (front ends pipeline with this). Writes
    /// of one caller to one slot are committed in the order they are proposed: a write to a
    /// shard led elsewhere is forwarded and answered before this returns.
    pub async fn propose(&self, cmd: Command) -> Result<PendingWrite, CommandError> {
        self.propose_routed(cmd, 0, None, false).await
    }

    /// [`Node::propose`], with a write to one shard that this node leads proposed in a log
    /// entry of its own, so that its answer says where its changes landed
    /// ([`PendingWrite::outcome_landed`]): RESP connections with `CLIENT TRACKING … NOLOOP`
    /// write so, to tell their own changes from others'. Such writes are not batched with
    /// others into one entry.
    pub async fn propose_alone(&self, cmd: Command) -> Result<PendingWrite, CommandError> {
        self.propose_routed(cmd, 0, None, true).await
    }

    pub(super) async fn propose_routed(
        &self,
        cmd: Command,
        hops: u32,
        only_shard: Option<u32>,
        alone: bool,
    ) -> Result<PendingWrite, CommandError> {
        if let Some(reason) = self.health.failure() {
            return Err(CommandError::Fatal(reason));
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(CommandError::ShuttingDown);
        }
        let now = self.now_ms();
        let cmd = self.prepare_write(cmd, now)?;
        match cmd {
            // FLUSHDB of every shard, held here or not, and of those splits create meanwhile
            // ([`Node::flush_all`], which flushes them one by one through here).
            Command::Flush if only_shard.is_none() => Ok(PendingWrite {
                parts: vec![Part::Done(Box::pin(self.flush_all()).await)],
                combine: Combine::One,
                again: None,
                shard: None,
            }),
            Command::Flush => {
                let shards: Vec<u32> = only_shard.into_iter().collect();
                let mut parts = Vec::with_capacity(shards.len());
                for shard in shards {
                    let part = self
                        .send_routed(shard, Command::Flush, now, hops, false)
                        .await;
                    if !Self::sent(&mut parts, part) {
                        break;
                    }
                }
                Ok(PendingWrite {
                    parts,
                    combine: Combine::AllOk,
                    again: None,
                    shard: None,
                })
            }
            // Keys in more than one shard: a transaction, run here (it routes its own steps).
            // A transaction of no key: its compares hold vacuously, and it has nothing to run.
            Command::Exec {
                ref compares,
                ref then,
                ..
            } if compares.is_empty() && then.is_empty() => Ok(PendingWrite {
                parts: vec![Part::Done(Ok(Reply::Exec {
                    succeeded: true,
                    replies: Vec::new(),
                }))],
                combine: Combine::One,
                again: None,
                shard: None,
            }),
            cmd if self.runs_as_transaction(&cmd) => Ok(PendingWrite {
                parts: vec![Part::Done(self.run_txn(cmd).await)],
                combine: Combine::One,
                again: None,
                shard: None,
            }),
            Command::Del { keys } => {
                let mut by_shard: Vec<(u32, Vec<Bytes>)> = Vec::new();
                for key in keys {
                    let shard = self.shards.shard_of_key(&key);
                    match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                        Some((_, list)) => list.push(key),
                        None => by_shard.push((shard, vec![key])),
                    }
                }
                let mut parts = Vec::with_capacity(by_shard.len());
                for (shard, keys) in by_shard {
                    let cmd = Command::Del { keys };
                    if !Self::sent(
                        &mut parts,
                        self.send_routed(shard, cmd, now, hops, false).await,
                    ) {
                        break;
                    }
                }
                Ok(PendingWrite {
                    parts,
                    combine: Combine::Sum,
                    again: None,
                    shard: None,
                })
            }
            cmd => {
                let shard = self.shard_of_write(&cmd)?;
                let again = Some(cmd.clone());
                let part = self.send_routed(shard, cmd, now, hops, alone).await?;
                Ok(PendingWrite {
                    parts: vec![part],
                    combine: Combine::One,
                    again,
                    shard: alone.then_some(shard),
                })
            }
        }
    }

    /// Adds one shard's part of a fanned-out write to `parts`; a part that could not be sent
    /// ends the fan-out (returns false) but is kept as that part's answer, so the write's
    /// answer accounts for the parts already sent (applied there: not "nothing happened").
    fn sent(parts: &mut Vec<Part>, part: Result<Part, CommandError>) -> bool {
        match part {
            Ok(part) => {
                parts.push(part);
                true
            }
            Err(e) => {
                parts.push(Part::Done(Err(e)));
                false
            }
        }
    }

    /// Whether `cmd` runs as a cross-shard transaction. Its coordinator reads the primary's
    /// keys at the shard's leader, as a read does: a connection that pipelines writes must
    /// let its earlier ones finish first (a read is not ordered after proposals in flight).
    pub fn runs_as_transaction(&self, cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::MSet { .. }
                | Command::Del { .. }
                | Command::Rename { .. }
                | Command::Copy { .. }
                | Command::Batch { .. }
                | Command::Exec { .. }
        ) && self.spans_shards(cmd)
    }

    /// Whether a write's keys live in more than one shard.
    fn spans_shards(&self, cmd: &Command) -> bool {
        let mut keys = cmd.write_keys().into_iter();
        let Some(first) = keys.next() else {
            return false;
        };
        let shard = self.shards.shard_of_key(first);
        keys.any(|k| self.shards.shard_of_key(k) != shard)
    }

    /// The shard a single-shard write goes to (its keys may lie in different slots of the
    /// shard: one entry holds them all).
    fn shard_of_write(&self, cmd: &Command) -> Result<u32, CommandError> {
        if let Command::Txn(op) = cmd {
            return Ok(op.shard);
        }
        let keys = cmd.write_keys();
        let Some(first) = keys.first() else {
            return Err(CommandError::Invalid(format!(
                "'{}' is not a write of keys",
                cmd.name()
            )));
        };
        debug_assert!(
            !self.spans_shards(cmd),
            "multi-shard writes are transactions"
        );
        Ok(self.shards.shard_of_key(first))
    }

    /// Hands one proposal to shard `shard`.
    pub(super) async fn send(
        &self,
        shard: u32,
        op: ProposalOp,
        now_ms: u64,
    ) -> Result<oneshot::Receiver<Answer>, CommandError> {
        self.send_with(shard, op, now_ms, false).await
    }

    /// [`Node::send`], in an entry of its own when `alone`.
    pub(super) async fn send_with(
        &self,
        shard: u32,
        op: ProposalOp,
        now_ms: u64,
        alone: bool,
    ) -> Result<oneshot::Receiver<Answer>, CommandError> {
        let (reply, rx) = oneshot::channel();
        let shard = self
            .shards
            .get(shard)
            .ok_or_else(|| CommandError::Invalid(format!("no shard {shard}")))?;
        shard
            .propose(Proposal {
                op,
                now_ms,
                reply,
                alone,
            })
            .await?;
        Ok(rx)
    }

    /// Validate sizes and turn relative deadlines into absolute ones.
    fn prepare_write(&self, mut cmd: Command, now: u64) -> Result<Command, CommandError> {
        if let Command::Exec {
            compares,
            then,
            otherwise,
        } = cmd
        {
            let max = crate::txn::EXEC_COMMANDS_MAX;
            if compares.len() > max || then.len() > max || otherwise.len() > max {
                return Err(CommandError::Invalid(format!(
                    "a transaction has at most {max} compares and {max} commands per branch"
                )));
            }
            let prepare = |cmds: Vec<Command>| -> Result<Vec<Command>, CommandError> {
                cmds.into_iter()
                    .map(|c| match c {
                        c if c.is_write() => self.prepare_write(c, now),
                        c => Ok(c),
                    })
                    .collect()
            };
            let (then, otherwise) = (prepare(then)?, prepare(otherwise)?);
            for key in compares.iter().map(|c| c.key()) {
                self.check_key(key)?;
            }
            return Ok(Command::Exec {
                compares,
                then,
                otherwise,
            });
        }
        let name = cmd.name();
        let resolve = |expiry: &mut Expiry| -> Result<(), CommandError> {
            if let Expiry::InMs(ms) = *expiry {
                let at = (now as i64)
                    .checked_add(ms)
                    .ok_or(CommandError::InvalidExpireTime(name.into()))?;
                *expiry = Expiry::AtMs(at);
            }
            Ok(())
        };
        match &mut cmd {
            Command::Set {
                key, value, expiry, ..
            } => {
                self.check_key(key)?;
                self.check_value(value)?;
                positive_ttl(*expiry, name)?;
                resolve(expiry)?;
            }
            Command::GetEx { key, expiry } => {
                self.check_key(key)?;
                positive_ttl(*expiry, name)?;
                resolve(expiry)?;
            }
            Command::Expire { key, expiry, .. } => {
                self.check_key(key)?;
                resolve(expiry)?;
            }
            Command::MSet { pairs, .. } => {
                for (key, value) in pairs.iter() {
                    self.check_key(key)?;
                    self.check_value(value)?;
                }
            }
            Command::Append { key, value } | Command::SetRange { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)?;
            }
            Command::GetDel { key }
            | Command::SetBit { key, .. }
            | Command::IncrBy { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Persist { key } => self.check_key(key)?,
            Command::Del { keys } => {
                for key in keys.iter() {
                    self.check_key(key)?;
                }
            }
            Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => {
                self.check_key(from)?;
                self.check_key(to)?;
            }
            Command::Batch { ops } => {
                for op in ops.iter_mut() {
                    match op {
                        BatchOp::Put { key, value, expiry } => {
                            self.check_key(key)?;
                            self.check_value(value)?;
                            positive_ttl(*expiry, name)?;
                            resolve(expiry)?;
                        }
                        BatchOp::Delete { key } => self.check_key(key)?,
                    }
                }
            }
            _ => {}
        }
        Ok(cmd)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), CommandError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(CommandError::KeyTooLarge {
                len: key.len(),
                max: KEY_BYTES_MAX,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CommandError> {
        let max = self.options.value_bytes_max;
        if value.len() > max {
            return Err(CommandError::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }
}

/// A relative TTL of a write must be positive (only `Expire` accepts ≤ 0, meaning "delete").
fn positive_ttl(expiry: Expiry, command: &'static str) -> Result<(), CommandError> {
    match expiry {
        Expiry::InMs(ms) if ms <= 0 => Err(CommandError::InvalidExpireTime(command.into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(parts: Vec<Part>, combine: Combine, again: bool) -> PendingWrite {
        PendingWrite {
            parts,
            combine,
            again: again.then(|| Command::Del {
                keys: vec![Bytes::from_static(b"k")],
            }),
            shard: None,
        }
    }

    fn refused() -> ProposalResult {
        Err(CommandError::TryAgain("moved".into()))
    }

    fn local(answer: ProposalResult) -> Part {
        let (tx, rx) = oneshot::channel();
        tx.send(Answer::bare(answer)).expect("receiver alive");
        Part::Local(rx)
    }

    #[tokio::test]
    async fn a_fanned_out_write_is_refused_only_when_no_part_may_have_taken_effect() {
        let unknown = || Err(CommandError::OutcomeUnknown("leader lost".into()));
        let answer = |parts| async { pending(parts, Combine::Sum, false).wait().await };
        assert_eq!(answer(vec![Part::Done(refused())]).await, refused());
        assert_eq!(
            answer(vec![Part::Done(refused()), Part::Done(refused())]).await,
            refused()
        );
        // A refusal never hides a part whose outcome is unknown, before or after it.
        for parts in [
            vec![Part::Done(refused()), Part::Done(unknown())],
            vec![Part::Done(unknown()), Part::Done(refused())],
        ] {
            assert!(matches!(
                answer(parts).await,
                Err(CommandError::OutcomeUnknown(_))
            ));
        }
        // Applied on one shard, refused on another: not "nothing happened".
        assert!(matches!(
            answer(vec![Part::Done(Ok(Reply::Int(1))), Part::Done(refused())]).await,
            Err(CommandError::OutcomeUnknown(_))
        ));
        assert_eq!(
            answer(vec![
                Part::Done(Ok(Reply::Int(1))),
                Part::Done(Ok(Reply::Int(2)))
            ])
            .await,
            Ok(Reply::Int(3))
        );
    }

    #[tokio::test]
    async fn only_a_refusal_by_this_nodes_proposer_is_offered_again() {
        let (result, again) = pending(vec![local(refused())], Combine::One, true)
            .outcome()
            .await;
        assert_eq!(result, refused());
        assert!(again.is_some(), "a local refusal may be sent again");
        // Forwarded: already retried toward the leader for the whole window.
        let (_, again) = pending(vec![Part::Done(refused())], Combine::One, true)
            .outcome()
            .await;
        assert!(again.is_none(), "a forwarded refusal offered again");
        // Not a refusal: never again.
        let (_, again) = pending(vec![local(Ok(Reply::Ok))], Combine::One, true)
            .outcome()
            .await;
        assert!(again.is_none());
        let unknown = Err(CommandError::OutcomeUnknown("lost".into()));
        let (_, again) = pending(vec![local(unknown)], Combine::One, true)
            .outcome()
            .await;
        assert!(again.is_none(), "a write of unknown outcome offered again");
    }
}
