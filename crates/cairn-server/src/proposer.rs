//! A shard's proposer: the one place a shard's writes are evaluated, batched and proposed to
//! its Raft group.
//!
//! Each shard has one proposer task. It takes proposals from its queue in order, evaluates
//! each against the shard's engine plus the [`Overlay`] of writes proposed but not yet applied
//! (so a write sees every earlier one, in flight or not, and a shard never waits a round trip
//! per write), packs the outcomes of up to [`GROUP_PROPOSALS_MAX`] proposals into one log
//! entry, and proposes it with the leader id it evaluated under, keeping up to
//! [`INFLIGHT_ENTRIES_MAX`] entries in flight. Answers go out in proposal order, each once its
//! entry is committed and applied, with the entry's index ([`Answer`]). A proposal marked
//! `alone` gets an entry of its own (nothing is packed with it), so every change at that
//! index is its own (client tracking's NOLOOP).
//!
//! Terms: the proposer evaluates only as the leader of a term it has made ready, which means
//! every entry committed before the term is applied (a read-index round at the start) and the
//! overlay is empty. An entry's log index is predicted (the proposer is the only one appending
//! in its term), so a key's version is known when it is evaluated; openraft's `with_leader`
//! refuses a proposal the moment this node no longer leads that term, before appending it.
//!
//! Failures: a proposal refused before it was appended is `TRYAGAIN` (nothing happened); an
//! entry whose fate is unknown (the leader changed after appending it) is `OutcomeUnknown`,
//! never a guess. After any failure the term is over for the proposer: it lets every entry in
//! flight land, forgets the overlay, and makes a new term ready before evaluating again.
//! Answers that wrote nothing but were evaluated after a failed entry get `TRYAGAIN`, since
//! what they read may never have happened.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cairn_raft::{Group, LeaderTerm, ProposeError, Request, WriteOp};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::error::CommandError;
use crate::eval::{Eval, InternalOp, Overlay, ShardView};
use crate::expiry::ExpiryTracker;
use crate::health::WriteHealth;
use crate::reply::Reply;
use crate::shard::SlotRange;
use crate::slot::key_slot;

/// Most proposals evaluated into one log entry.
pub const GROUP_PROPOSALS_MAX: usize = 1024;
/// An entry takes proposals until their writes reach this size; the entry closes after the
/// proposal that crosses it.
pub const ENTRY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest writes of one proposal: what still fits in one log record after a nearly full
/// entry.
pub const PROPOSAL_BYTES_MAX: usize = cairn_wal::RECORD_PAYLOAD_BYTES_MAX - ENTRY_BYTES_MAX;
/// Entries a shard keeps in flight (proposed, not yet applied).
pub const INFLIGHT_ENTRIES_MAX: usize = 8;
/// Times the proposer yields to the runtime between taking a proposal and packing the entry.
/// An entry costs far more than a proposal in it (Raft bookkeeping, task hand-offs, an engine
/// write), and on a busy node other connections are about to queue writes for the same shard:
/// yielding lets them, at the cost of one scheduler round when the node is idle. Measured with
/// redis-benchmark SET, 50 clients, P16, 16 shards: 0 → 2 yields took 91k to 99–115k req/s and
/// cut context switches by a quarter (docs/benchmarks.md).
pub const PACK_YIELDS: usize = 2;
/// Capacity of a shard's proposal queue; proposers wait when it is full (back-pressure).
pub const PROPOSAL_QUEUE_MAX: usize = 8192;

/// The answer to one proposal.
pub type ProposalResult = Result<Reply, CommandError>;

/// What a proposal is answered: its result, and the log index of the entry that carried it
/// when it wrote one and landed (client tracking's NOLOOP tells a connection's own changes
/// from others' by it).
#[derive(Debug)]
pub struct Answer {
    pub result: ProposalResult,
    pub index: Option<u64>,
}

impl Answer {
    /// An answer with no entry of its own.
    pub fn bare(result: ProposalResult) -> Answer {
        Answer {
            result,
            index: None,
        }
    }
}

/// Longest a small write waits for its entry to commit before it is answered "outcome
/// unknown" (a leader cut off from its quorum keeps its entries until it rejoins or learns of
/// a new term). A large one waits longer: [`commit_wait`].
pub const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long an entry of `bytes` waits to commit: [`COMMIT_WAIT`], plus the time its bytes
/// take to reach a follower on the slowest link the peer network assumes
/// ([`cairn_raft::network::APPEND_BYTES_PER_SEC_MIN`], which also sets the append's own
/// deadline). With the fixed wait alone, a value of many mebibytes on a slower link than
/// loopback was answered "outcome unknown" while it was still crossing, and a client that
/// retried it added another copy behind it, each later one slower.
pub fn commit_wait(bytes: usize) -> std::time::Duration {
    let rate = cairn_raft::network::APPEND_BYTES_PER_SEC_MIN as f64;
    COMMIT_WAIT + std::time::Duration::from_secs_f64(bytes as f64 / rate)
}

/// Longest a membership change holds the shard's writes back (it normally commits within a
/// few heartbeats).
pub const MEMBERSHIP_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Longest a leadership handover holds the shard's writes back waiting for the target to
/// acknowledge the whole log (after the entries in flight landed, it normally has it or is
/// one append behind).
pub const HANDOVER_CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// What a proposal asks the shard to do.
#[derive(Debug)]
pub enum ProposalOp {
    Command(Command),
    Internal(InternalOp),
    /// Answered `OK` once every earlier proposal has been answered (shutdown waits on it).
    Barrier,
    /// A change of the group itself, made between entries: the proposer lets every entry in
    /// flight land first and re-reads the end of the log afterwards.
    Change(GroupChange),
    /// Split the shard: the slots from `at` (or, when `None`, from the slot that splits its
    /// keys in two halves) to the end of its range go to the new shard `child`. Proposed
    /// alone, between entries, once nothing is in flight and no transaction holds a lock or
    /// record here → `Reply::Int(first slot of the child)` once applied.
    Split {
        child: u32,
        at: Option<u16>,
    },
}

/// A change the placement reconciler asks of a group it leads.
#[derive(Debug, Clone)]
pub enum GroupChange {
    /// Start replicating to a node as a learner.
    AddLearner { id: u64, addr: cairn_raft::NodeAddr },
    /// Make exactly these nodes voters; a voter left out stays a learner when `retain`, else
    /// leaves the group. Returns once committed. Membership changes append entries of their
    /// own: the indexes the proposer predicts for writes (their versions) stay exact because
    /// it re-reads the end of the log after one.
    SetVoters {
        voters: std::collections::BTreeSet<u64>,
        retain: bool,
    },
    /// Finish a change of the voters left half made (the group's committed membership is
    /// joint: [`cairn_raft::Group::unfinished_change`]), as the group is when the proposer
    /// takes it: nothing is proposed when it is not joint any more. Voters the change drops
    /// stay learners when `retain`.
    FinishChange { retain: bool },
    /// Stop replicating to these learners (a node removed from the cluster).
    RemoveLearners(std::collections::BTreeSet<u64>),
    /// Hand leadership to this voter. With nothing in flight, the target can hold the whole
    /// log when asked, and is then elected at once (see [`cairn_raft::Group::transfer_leader`]).
    TransferLeader(u64),
}

/// One request to a shard's proposer.
#[derive(Debug)]
pub struct Proposal {
    pub op: ProposalOp,
    /// Proposal time in ms since the Unix epoch: deadlines are compared with it.
    pub now_ms: u64,
    pub reply: oneshot::Sender<Answer>,
    /// Its entry carries nothing else, so every change at the entry's index is this
    /// proposal's (client tracking's NOLOOP skips a connection's own changes by it).
    pub alone: bool,
}

type Answers = Vec<(oneshot::Sender<Answer>, ProposalResult)>;

/// An entry (or a set of answers that wrote nothing) whose fate became known.
struct Landed {
    /// The index the entry was proposed at; `None` for answers that wrote nothing.
    predicted: Option<u64>,
    answers: Answers,
    /// The index it was applied at, or why it was not (or may not have been).
    outcome: Result<u64, CommandError>,
}

type Flight = Pin<Box<dyn Future<Output = Landed> + Send>>;

/// A term this proposer leads and has made ready.
#[derive(Debug, Clone)]
struct Term {
    leader: LeaderTerm,
    next_index: u64,
}

/// Handles to one shard for its proposer.
#[derive(Debug, Clone)]
pub struct ShardHandles {
    /// The shard's id ("meta" for the metadata group), in logs, errors and metric labels.
    pub shard: String,
    /// The shard's number (`u32::MAX` for the metadata group).
    pub shard_id: u32,
    pub group: Group,
    pub expiry: Arc<ExpiryTracker>,
    pub value_bytes_max: usize,
    pub health: Arc<WriteHealth>,
    /// The shard's slots: a key outside them (a split moved it) is refused with `TRYAGAIN`,
    /// and the caller routes it again. `None` for the metadata group.
    pub range: Option<Arc<SlotRange>>,
    /// The slots a split proposed here is giving away (refused too until it is applied).
    pub leaving: Option<Arc<SlotRange>>,
}

/// Hands `op`, proposed at `now_ms`, to the proposer behind `proposals` and waits for its
/// answer.
pub async fn submit(
    proposals: &mpsc::Sender<Proposal>,
    op: ProposalOp,
    now_ms: u64,
) -> ProposalResult {
    let (reply, rx) = oneshot::channel();
    proposals
        .send(Proposal {
            op,
            now_ms,
            reply,
            alone: false,
        })
        .await
        .map_err(|_| CommandError::ShuttingDown)?;
    rx.await
        .map_or_else(|_| Err(CommandError::proposer_stopped()), |a| a.result)
}

/// Starts the shard's proposer; returns its queue.
pub fn spawn(handles: ShardHandles) -> mpsc::Sender<Proposal> {
    let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
    let proposer = Proposer {
        rx,
        term: None,
        overlay: Overlay::default(),
        broken: false,
        flights: FuturesOrdered::new(),
        deferred: None,
        leaving_term: None,
        proposals_total: metrics::counter!(
            crate::metrics::SHARD_PROPOSALS_TOTAL,
            "shard" => handles.shard.clone()
        ),
        entries_total: metrics::counter!(
            crate::metrics::SHARD_ENTRIES_TOTAL,
            "shard" => handles.shard.clone()
        ),
        h: handles,
    };
    tokio::spawn(proposer.run());
    tx
}

struct Proposer {
    h: ShardHandles,
    rx: mpsc::Receiver<Proposal>,
    term: Option<Term>,
    overlay: Overlay,
    /// An entry of the current term failed: evaluate nothing more until a new term is ready.
    broken: bool,
    flights: FuturesOrdered<Flight>,
    /// A proposal taken from the queue while packing an entry that cannot join one (a
    /// change of the group); it is handled next.
    deferred: Option<Proposal>,
    proposals_total: metrics::Counter,
    entries_total: metrics::Counter,
    /// The term in which this proposer proposed the split that set `leaving`.
    leaving_term: Option<LeaderTerm>,
}

impl Proposer {
    async fn run(mut self) {
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                Some(landed) = self.flights.next(), if !self.flights.is_empty() => {
                    self.land(landed);
                }
                // A deferred proposal goes before anything still queued.
                _ = std::future::ready(()), if self.deferred.is_some() => {
                    let first = self.deferred.take().expect("checked");
                    self.propose(first).await;
                }
                next = self.rx.recv(), if !closed && self.flights.len() < INFLIGHT_ENTRIES_MAX => {
                    match next {
                        Some(first) => self.propose(first).await,
                        None => closed = true,
                    }
                }
                else => break,
            }
        }
        tracing::debug!(shard = %self.h.shard, "proposer stopped");
    }

    /// Sends the answers of a landed flight.
    fn land(&mut self, landed: Landed) {
        let Landed {
            predicted,
            answers,
            outcome,
        } = landed;
        let failure = match (predicted, outcome) {
            // Answers that wrote nothing: good unless an earlier entry of the term failed.
            (None, _) if self.broken => Some(CommandError::TryAgain(
                "the shard's leader changed; retry".into(),
            )),
            (None, _) => None,
            (Some(p), Ok(index)) if p == index => {
                self.overlay.applied(index);
                None
            }
            (Some(p), Ok(index)) => {
                tracing::error!(
                    shard = %self.h.shard,
                    predicted = p,
                    index,
                    "an entry was applied at an unexpected index"
                );
                Some(CommandError::OutcomeUnknown(format!(
                    "applied at log index {index}, not {p}"
                )))
            }
            // Refused before it was appended, but a later entry of the term, evaluated on top
            // of this one (INCR, APPEND … write absolute values), is already proposed and may
            // commit its effects: the outcome is not "nothing happened".
            (Some(_), Err(CommandError::TryAgain(why))) if !self.flights.is_empty() => {
                Some(CommandError::OutcomeUnknown(format!(
                    "{why}; a later entry built on this write may still commit"
                )))
            }
            (Some(_), Err(e)) => Some(e),
        };
        if let Some(e) = &failure {
            self.broken = true;
            if let CommandError::Fatal(reason) = e {
                self.h.health.fail(reason.clone());
            } else if let Some(why) = self.h.group.status().stopped {
                // A group stops for good on a storage failure: so does writing on this node.
                self.h
                    .health
                    .fail(format!("shard {} stopped: {why}", self.h.shard));
            }
        }
        let index = predicted.filter(|_| failure.is_none());
        for (tx, result) in answers {
            let result = match (&failure, result) {
                (Some(e), Ok(_)) => Err(e.clone()),
                (_, result) => result,
            };
            let index = index.filter(|_| result.is_ok());
            let _ = tx.send(Answer { result, index });
        }
    }

    /// Applies a change of the group as the current leader, between entries: every flight
    /// lands first, and the next write starts a fresh term (re-reading the end of the log,
    /// which a membership change extended).
    async fn change_group(&mut self, change: GroupChange) -> ProposalResult {
        self.ensure_term().await?;
        self.drain().await;
        let change = async {
            match change {
                GroupChange::AddLearner { id, addr } => self.h.group.add_learner(id, addr).await,
                GroupChange::SetVoters { voters, retain } => {
                    self.h.group.set_voters(voters, retain).await
                }
                GroupChange::FinishChange { retain } => match self.h.group.unfinished_change() {
                    Some(voters) => self.h.group.set_voters(voters, retain).await,
                    None => Ok(()),
                },
                GroupChange::RemoveLearners(ids) => self.h.group.remove_learners(ids).await,
                GroupChange::TransferLeader(to) => {
                    self.h
                        .group
                        .transfer_leader(to, HANDOVER_CATCH_UP_WAIT)
                        .await
                }
            }
        };
        // A change that cannot commit (a voter lost meanwhile) must not hold the shard's writes.
        let result = tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT, change)
            .await
            .unwrap_or_else(|_| {
                Err(cairn_raft::GroupError::Timeout {
                    what: "the change to commit (it is still under way)".into(),
                    timeout: MEMBERSHIP_CHANGE_WAIT,
                })
            });
        self.term = None;
        self.overlay.reset();
        result
            .map(|()| Reply::Ok)
            .map_err(|e| CommandError::TryAgain(format!("change of the group: {e}")))
    }

    /// `TRYAGAIN` when `cmd` names a key outside the shard's slots (a split gave it to
    /// another shard after the command was routed here): nothing is evaluated, and the node
    /// routes it again.
    fn elsewhere(&self, cmd: &Command) -> Option<CommandError> {
        self.h.range.as_ref()?;
        if let Some(key) = cmd.single_key() {
            return (!self.owns(key_slot(key))).then(|| self.moved(key));
        }
        let mut keys = cmd.read_keys();
        keys.extend(cmd.write_keys());
        if let Command::Txn(op) = cmd {
            keys.extend(op.kind.keys());
        }
        let moved = keys.into_iter().find(|k| !self.owns(key_slot(k)))?;
        Some(self.moved(moved))
    }

    fn moved(&self, key: &[u8]) -> CommandError {
        CommandError::TryAgain(format!(
            "key {:?} is not in shard {}'s slots (it split); retry",
            String::from_utf8_lossy(key),
            self.h.shard
        ))
    }

    /// Whether `slot` is the shard's to write (not given away, nor being given away).
    fn owns(&self, slot: u16) -> bool {
        self.h.range.as_ref().is_none_or(|r| r.owns(slot))
            && self.h.leaving.as_ref().is_none_or(|l| !l.owns(slot))
    }

    /// `op` without the keys outside the shard's slots (expiry found them before a split).
    fn owned_only(&self, op: InternalOp) -> InternalOp {
        match op {
            InternalOp::ExpireKeys { mut keys } => {
                keys.retain(|k| self.owns(key_slot(k)));
                InternalOp::ExpireKeys { keys }
            }
        }
    }

    /// Splits the shard (see [`ProposalOp::Split`]): proposes the split entry, between
    /// entries, and answers `reply` once it is applied here. Nothing else is proposed
    /// meanwhile (writes wait in the queue: the apply, which builds the child, would hold
    /// them anyway, and a write proposed behind it would run out its commit wait). From the
    /// proposal on, the moving slots are `leaving`: neither written nor read here until the
    /// split is applied here, or this node no longer leads the term it was proposed in.
    async fn split(&mut self, child: u32, at: Option<u16>, reply: oneshot::Sender<Answer>) {
        if self.h.leaving.as_ref().is_some_and(|l| l.get().is_some()) {
            let why = "cannot split now: a split of the shard is under way";
            let _ = reply.send(Answer::bare(Err(CommandError::TryAgain(why.into()))));
            return;
        }
        let result = async {
            self.ensure_term().await?;
            self.drain().await;
            // The drain may have ended the term (an entry failed): a fresh one, ready.
            let term = self.ensure_term().await?;
            self.propose_split(&term, child, at).await
        }
        .await;
        match result {
            Ok(flight) => {
                self.flights.push_back(Box::pin(async move {
                    let mut landed = flight.await;
                    landed.answers = vec![(reply, landed.answers.pop().expect("one").1)];
                    landed
                }));
                self.drain().await;
            }
            Err(e) => {
                let _ = reply.send(Answer::bare(Err(e)));
            }
        }
    }

    /// Proposes the split entry; the flight that lands with the answer.
    async fn propose_split(
        &mut self,
        term: &Term,
        child: u32,
        at: Option<u16>,
    ) -> Result<Flight, CommandError> {
        let busy = |why: String| CommandError::TryAgain(format!("cannot split now: {why}"));
        let (Some(range), Some(leaving)) = (self.h.range.clone(), self.h.leaving.clone()) else {
            return Err(CommandError::Invalid(format!(
                "group {} does not split",
                self.h.shard
            )));
        };
        let Some((first, last)) = range.get() else {
            return Err(CommandError::Invalid(format!(
                "shard {} has no slot range to split",
                self.h.shard
            )));
        };
        if !self.h.group.membership_settled() || self.h.group.membership_joint() {
            return Err(busy("a change of the group's members is under way".into()));
        }
        let engine = self.h.group.sm.engine();
        // Asked again after it happened (a retry through a new leader, which applied the
        // split when it made its term ready): done already, and never done twice.
        if let Some(record) = crate::shards::ShardRecord::read(&engine) {
            if record.children.last().map(|c| c.id) == Some(child) {
                let first_slot = i64::from(record.last) + 1;
                return Ok(Box::pin(std::future::ready(Landed {
                    predicted: None,
                    answers: vec![(oneshot::channel().0, Ok(Reply::Int(first_slot)))],
                    outcome: Ok(0),
                })));
            }
            if record.has_child(child) {
                return Err(CommandError::Invalid(format!(
                    "shard {child} was split from shard {} already",
                    self.h.shard
                )));
            }
        }
        let unbounded = std::ops::Bound::Unbounded;
        let txns = engine
            .system_range(unbounded, unbounded, 2)
            .into_iter()
            .filter(|(key, _)| &key[..] != crate::shards::SHARD_RECORD_KEY)
            .count();
        if txns > 0 {
            return Err(busy(
                "transactions hold locks or records in the shard".into(),
            ));
        }
        let at = match at {
            Some(at) => at,
            None => tokio::task::spawn_blocking(move || median_slot(&engine, first, last))
                .await
                .map_err(|e| CommandError::Invalid(format!("no split point: {e}")))?,
        };
        if at <= first || at > last {
            return Err(CommandError::Invalid(format!(
                "shard {} owns slots {first}..={last}: a split point must be in {}..={last}",
                self.h.shard,
                first + 1
            )));
        }
        let request = Request {
            ops: vec![WriteOp::Split {
                child,
                first_slot: at,
                last_slot: last,
            }],
        };
        leaving.set(Some((at, last)));
        let done = match self.h.group.propose(request, &term.leader).await {
            Ok(done) => done,
            Err(e) => {
                leaving.set(None);
                return Err(self.refused(e));
            }
        };
        let index = term.next_index;
        if let Some(t) = &mut self.term {
            t.next_index += 1;
        }
        self.leaving_term = Some(term.leader.clone());
        let shard = self.h.shard.clone();
        let (group, leader) = (self.h.group.clone(), term.leader.clone());
        Ok(Box::pin(async move {
            let outcome = match tokio::time::timeout(crate::split::SPLIT_WAIT, done).await {
                Ok(Ok(index)) => Ok(index),
                // Appended: a later leader may still commit it.
                Ok(Err(ProposeError::NotLeader { .. } | ProposeError::Unknown(_))) | Err(_) => {
                    Err(CommandError::OutcomeUnknown(format!(
                        "the split of shard {shard} may or may not have happened; look at the map"
                    )))
                }
                Ok(Err(ProposeError::Stopped(why))) => {
                    Err(CommandError::Fatal(format!("shard {shard} stopped: {why}")))
                }
            };
            // Applied here: the slots are the child's now (or, if the entry did not fit the
            // shard after all, still the parent's).
            let answer = match &outcome {
                Ok(_) if range.owns(at) => Err(CommandError::Invalid(format!(
                    "the split of shard {shard} did not apply"
                ))),
                Ok(_) => Ok(Reply::Int(i64::from(at))),
                Err(e) => Err(e.clone()),
            };
            // Applied here: the slots are the child's. Otherwise they stay leaving until this
            // node no longer leads that term (a later term of its own starts with the split
            // applied, if it committed at all) or the split is applied here after all.
            if outcome.is_ok() {
                leaving.set(None);
            } else {
                tokio::spawn(free_when_settled(group, leader, index, leaving));
            }
            Landed {
                predicted: Some(index),
                answers: vec![(oneshot::channel().0, answer)],
                outcome,
            }
        }))
    }

    /// Lets every flight land.
    async fn drain(&mut self) {
        while let Some(landed) = self.flights.next().await {
            self.land(landed);
        }
    }

    /// The term to evaluate under: the current one, or a new one made ready.
    async fn ensure_term(&mut self) -> Result<Term, CommandError> {
        let leader = self.h.group.leading();
        if let (Some(leader), Some(term)) = (&leader, &self.term) {
            if *leader == term.leader && !self.broken {
                return Ok(term.clone());
            }
        }
        // Whatever was in flight belongs to a term that is over for this proposer.
        self.drain().await;
        self.overlay.reset();
        self.term = None;
        self.broken = false;
        let Some(leader) = leader else {
            return Err(self.not_leader(None));
        };
        // A split proposed in another term: this term's first entry, once applied, has the
        // split applied if it committed at all.
        if self.leaving_term.as_ref().is_some_and(|t| *t != leader) {
            if let Some(leaving) = &self.h.leaving {
                leaving.set(None);
            }
            self.leaving_term = None;
        }
        // Everything committed before the term must be applied before anything is evaluated.
        let last = self
            .h
            .group
            .make_ready(&leader)
            .await
            .map_err(|e| self.refused(e))?;
        let term = Term {
            leader,
            next_index: last + 1,
        };
        self.term = Some(term.clone());
        Ok(term)
    }

    fn not_leader(&self, leader: Option<u64>) -> CommandError {
        let status = self.h.group.status();
        if let Some(why) = status.stopped {
            return CommandError::Fatal(format!("shard {} stopped: {why}", self.h.shard));
        }
        CommandError::TryAgain(format!(
            "shard {} is not led by this node (leader: {:?})",
            self.h.shard,
            leader.or(status.leader)
        ))
    }

    fn refused(&self, e: ProposeError) -> CommandError {
        match e {
            ProposeError::NotLeader { leader } => self.not_leader(leader),
            ProposeError::Unknown(why) => {
                CommandError::OutcomeUnknown(format!("shard {}: {why}", self.h.shard))
            }
            ProposeError::Stopped(why) => {
                CommandError::Fatal(format!("shard {} stopped: {why}", self.h.shard))
            }
        }
    }

    /// Evaluates `first` and whatever else is queued into one entry and proposes it.
    async fn propose(&mut self, first: Proposal) {
        if let ProposalOp::Barrier = first.op {
            self.flights.push_back(Box::pin(std::future::ready(Landed {
                predicted: None,
                answers: vec![(first.reply, Ok(Reply::Ok))],
                outcome: Ok(0),
            })));
            return;
        }
        if let Some(reason) = self.h.health.failure() {
            let _ = first
                .reply
                .send(Answer::bare(Err(CommandError::Fatal(reason))));
            return;
        }
        if let ProposalOp::Change(change) = first.op {
            let result = self.change_group(change).await;
            let _ = first.reply.send(Answer::bare(result));
            return;
        }
        if let ProposalOp::Split { child, at } = first.op {
            self.split(child, at, first.reply).await;
            return;
        }
        // Let the connection tasks that are ready run first, so their proposals join this
        // entry instead of each paying for an entry of its own (see PACK_YIELDS).
        for _ in 0..PACK_YIELDS {
            tokio::task::yield_now().await;
        }
        let term = match self.ensure_term().await {
            Ok(term) => term,
            Err(e) => {
                let _ = first.reply.send(Answer::bare(Err(e)));
                return;
            }
        };
        let index = term.next_index;
        let engine = self.h.group.sm.engine();
        let view = ShardView {
            shard: self.h.shard_id,
            engine: &engine,
            expiry: &self.h.expiry.index,
        };
        let mut answers: Answers = Vec::new();
        let mut ops: Vec<WriteOp> = Vec::new();
        let mut bytes = 0usize;
        let alone = first.alone;
        let mut next = Some(first);
        while let Some(proposal) = next.take() {
            let mut eval = Eval::new(
                view,
                &self.overlay,
                index,
                proposal.now_ms,
                self.h.value_bytes_max,
            );
            let result = match proposal.op {
                ProposalOp::Command(cmd) => match self.elsewhere(&cmd) {
                    Some(e) => Err(e),
                    None => eval.command(cmd),
                },
                ProposalOp::Internal(op) => eval.internal(self.owned_only(op)),
                // A barrier behind others in the queue: everything before it is in this entry.
                ProposalOp::Barrier => Ok(Reply::Ok),
                ProposalOp::Change(_) | ProposalOp::Split { .. } => {
                    unreachable!("changes of the group are deferred")
                }
            };
            let decided = eval.finish();
            let result = match result {
                Ok(_) if decided.bytes() > PROPOSAL_BYTES_MAX => {
                    Err(CommandError::Invalid(format!(
                        "write of {} bytes is larger than the {PROPOSAL_BYTES_MAX} bytes one log entry holds",
                        decided.bytes()
                    )))
                }
                other => other,
            };
            if result.is_ok() {
                bytes += decided.bytes();
                ops.extend(self.overlay.absorb(decided, index));
            }
            answers.push((proposal.reply, result));
            if !alone && answers.len() < GROUP_PROPOSALS_MAX && bytes < ENTRY_BYTES_MAX {
                next = self.rx.try_recv().ok();
                // A change of the group, and a proposal that must be alone, start entries of
                // their own.
                if next.as_ref().is_some_and(|p| {
                    p.alone || matches!(p.op, ProposalOp::Change(_) | ProposalOp::Split { .. })
                }) {
                    self.deferred = next.take();
                }
            }
        }
        if ops.is_empty() {
            self.flights.push_back(Box::pin(std::future::ready(Landed {
                predicted: None,
                answers,
                outcome: Ok(0),
            })));
            return;
        }
        let done = match self.h.group.propose(Request { ops }, &term.leader).await {
            Ok(done) => done,
            Err(e) => {
                let e = self.refused(e);
                // The overlay holds this entry's effects: nothing more may be evaluated on top
                // of them in this term (the next proposal makes a fresh start).
                self.broken = true;
                self.flights.push_back(Box::pin(std::future::ready(Landed {
                    predicted: Some(index),
                    answers,
                    outcome: Err(e),
                })));
                return;
            }
        };
        if let Some(t) = &mut self.term {
            t.next_index += 1;
        }
        self.entries_total.increment(1);
        self.proposals_total.increment(answers.len() as u64);
        let shard = self.h.shard.clone();
        let wait = commit_wait(bytes);
        self.flights.push_back(Box::pin(async move {
            // A leader that lost its quorum may hold an entry forever: answer in bounded time.
            let done = async move {
                tokio::time::timeout(wait, done).await.unwrap_or_else(|_| {
                    Err(ProposeError::Unknown(format!(
                        "not known to be committed within {wait:?}"
                    )))
                })
            };
            let outcome = done.await.map_err(|e| match e {
                ProposeError::NotLeader { leader } => CommandError::TryAgain(format!(
                    "shard {shard} changed leader (now {leader:?}) before the write was appended"
                )),
                ProposeError::Unknown(why) => {
                    CommandError::OutcomeUnknown(format!("shard {shard}: {why}"))
                }
                ProposeError::Stopped(why) => {
                    CommandError::Fatal(format!("shard {shard} stopped: {why}"))
                }
            });
            Landed {
                predicted: Some(index),
                answers,
                outcome,
            }
        }));
    }
}

/// Frees the slots a split of unknown fate left `leaving` once it is settled here: this node
/// no longer leads the term it was proposed in, or its replica applied the split's index.
async fn free_when_settled(group: Group, leader: LeaderTerm, index: u64, leaving: Arc<SlotRange>) {
    let applied = |group: &Group| group.applied_index() >= index;
    while group.leading().as_ref() == Some(&leader) && !applied(&group) {
        if group.status().stopped.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    leaving.set(None);
}

/// The slot in `first + 1..=last` that splits the engine's keys most evenly (the middle of
/// the range when the shard holds none).
fn median_slot(engine: &cairn_storage::Engine, first: u16, last: u16) -> u16 {
    let mut per_slot = vec![0u64; usize::from(last - first) + 1];
    let mut total = 0u64;
    for (key, _) in engine.all_keys() {
        let slot = key_slot(&key);
        if (first..=last).contains(&slot) {
            per_slot[usize::from(slot - first)] += 1;
            total += 1;
        }
    }
    if total == 0 || first == last {
        return first + (last - first).div_ceil(2);
    }
    let mut below = 0;
    for (i, n) in per_slot.iter().enumerate() {
        if below + n > total / 2 && i > 0 {
            return first + i as u16;
        }
        below += n;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large write waits for its bytes to cross the slowest link assumed, on top of the
    /// wait of a small one.
    #[test]
    fn a_large_write_waits_longer_for_its_commit() {
        assert_eq!(commit_wait(0), COMMIT_WAIT);
        let sixteen_mib = commit_wait(16 << 20);
        assert_eq!(sixteen_mib, COMMIT_WAIT + std::time::Duration::from_secs(8));
    }

    #[tokio::test]
    async fn a_write_dropped_by_the_proposer_has_an_unknown_outcome() {
        // Never handed over: nothing can have happened.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        assert_eq!(
            submit(&tx, ProposalOp::Barrier, 0).await,
            Err(CommandError::ShuttingDown)
        );
        // Taken and dropped unanswered: it may have been proposed.
        let (tx, mut rx) = mpsc::channel::<Proposal>(1);
        tokio::spawn(async move { drop(rx.recv().await) });
        assert!(matches!(
            submit(&tx, ProposalOp::Barrier, 0).await,
            Err(CommandError::OutcomeUnknown(_))
        ));
    }
}
