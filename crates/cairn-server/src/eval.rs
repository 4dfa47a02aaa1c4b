//! Evaluation of write commands against a shard's current state, in the shard's log order.
//!
//! A shard's proposer ([`crate::proposer`]) evaluates each proposal once, right before
//! proposing it: conditions (NX, XX, if-version) and read-modify-write commands (INCR, APPEND,
//! …) see every earlier proposal, including ones proposed but not yet applied, through the
//! [`Overlay`], and produce the writes ([`WriteOp`]s: outcomes, never commands) that the log
//! carries. A failed command produces no writes.

use std::cell::Cell;
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use cairn_raft::WriteOp;
use cairn_storage::Engine;
use parking_lot::Mutex;

use crate::command::{BatchOp, Command, Condition, ExpireCondition, Expiry};
use crate::error::CommandError;
use crate::expiry::ExpiryIndex;
use crate::long_double::incr_by_float;
use crate::reply::{Entry, Reply, SetOutcome};
use crate::txn::{
    self, AbortWhen, Fate, Lock, LockHolder, Record, TxnId, TxnOp, TxnOpKind, TxnReply,
};
use cairn_resp::parse_i64;

/// A key's state as evaluation sees it.
#[derive(Debug, Clone)]
struct Current {
    value: Bytes,
    version: u64,
    expires_at_ms: Option<u64>,
}

/// A key's state as a proposed but unapplied write left it.
#[derive(Debug, Clone)]
struct Pending {
    /// Log index of the entry that wrote it.
    index: u64,
    /// `None` = deleted.
    state: Option<Current>,
}

/// Writes proposed to the shard's log but not yet applied to its engine.
#[derive(Debug, Default)]
pub struct Overlay {
    pending: HashMap<Bytes, Pending>,
    /// Index of a pending `Clear`: keys absent from `pending` read as missing.
    cleared: Option<u64>,
    /// System records (transaction locks and records) written by pending entries: the log
    /// index of the entry and the value (`None`: deleted).
    system: HashMap<Bytes, (u64, Option<Bytes>)>,
}

/// The outcome of a successful evaluation, to be merged into the [`Overlay`].
#[derive(Debug)]
pub struct Decided {
    staged: HashMap<Bytes, Option<Current>>,
    staged_clear: bool,
    staged_system: HashMap<Bytes, Option<Bytes>>,
    ops: Vec<WriteOp>,
}

impl Decided {
    /// The writes alone (a transaction's coordinator splits them by shard).
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }

    /// Encoded size of the decided writes (about what the log entry carries).
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => 17 + key.len() + value.len(),
                WriteOp::Delete { key } | WriteOp::Expire { key } => 5 + key.len(),
                WriteOp::Clear => 1,
                WriteOp::SystemPut { key, value } => 9 + key.len() + value.len(),
                WriteOp::SystemDelete { key } => 5 + key.len(),
                WriteOp::Split { .. } => 9,
            })
            .sum()
    }
}

impl Overlay {
    /// Makes a decided proposal, to be proposed at log `index`, visible to later evaluations;
    /// returns its writes.
    pub fn absorb(&mut self, decided: Decided, index: u64) -> Vec<WriteOp> {
        if decided.staged_clear {
            self.pending.clear();
            self.cleared = Some(index);
        }
        for (key, state) in decided.staged {
            self.pending.insert(key, Pending { index, state });
        }
        for (key, value) in decided.staged_system {
            self.system.insert(key, (index, value));
        }
        decided.ops
    }

    /// Forgets what entries up to `index` wrote: the engine holds it now.
    pub fn applied(&mut self, index: u64) {
        self.pending.retain(|_, p| p.index > index);
        self.system.retain(|_, (at, _)| *at > index);
        if self.cleared.is_some_and(|c| c <= index) {
            self.cleared = None;
        }
    }

    /// Forgets everything (the term ended; nothing in flight any more).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.cleared = None;
        self.system.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.cleared.is_none() && self.system.is_empty()
    }
}

/// Work the proposer does besides client commands.
#[derive(Debug)]
pub enum InternalOp {
    /// Delete keys whose deadline has passed, if they are still expired (active expiry).
    ExpireKeys { keys: Vec<Bytes> },
}

/// The shard state a proposal is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct ShardView<'a> {
    /// The shard's id (in the locks it reports).
    pub shard: u32,
    pub engine: &'a Engine,
    pub expiry: &'a Mutex<ExpiryIndex>,
}

/// What an evaluation reads keys from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// A shard's engine (with its overlay): a proposer evaluating in log order.
    Shard(ShardView<'a>),
    /// The states a transaction's locks read (`None`: missing), on its coordinator. Reading
    /// a key not among them is a bug of the transaction's read set, recorded in `missed`.
    Prefetched(&'a HashMap<Bytes, Option<Entry>>),
}

/// One proposal being evaluated.
#[derive(Debug)]
pub struct Eval<'a> {
    source: Source<'a>,
    overlay: &'a Overlay,
    /// This proposal's own writes, visible to itself; merged into the overlay on success.
    staged: HashMap<Bytes, Option<Current>>,
    staged_clear: bool,
    staged_system: HashMap<Bytes, Option<Bytes>>,
    /// A prefetched evaluation read a key it was not given.
    missed: Cell<bool>,
    ops: Vec<WriteOp>,
    /// The log index this proposal gets if it writes: the version of everything it writes.
    version: u64,
    /// Time the proposal was made; deadlines are compared with it.
    now_ms: u64,
    value_bytes_max: usize,
}

impl<'a> Eval<'a> {
    pub fn new(
        view: ShardView<'a>,
        overlay: &'a Overlay,
        version: u64,
        now_ms: u64,
        value_bytes_max: usize,
    ) -> Self {
        Self::from_source(
            Source::Shard(view),
            overlay,
            version,
            now_ms,
            value_bytes_max,
        )
    }

    fn from_source(
        source: Source<'a>,
        overlay: &'a Overlay,
        version: u64,
        now_ms: u64,
        value_bytes_max: usize,
    ) -> Self {
        Eval {
            source,
            overlay,
            staged: HashMap::new(),
            staged_clear: false,
            staged_system: HashMap::new(),
            missed: Cell::new(false),
            ops: Vec::new(),
            version,
            now_ms,
            value_bytes_max,
        }
    }

    /// An evaluation on a transaction's coordinator, against the states its locks read
    /// (`read` holds every key the command reads: [`Eval::reads_of`]). Versions in the answer
    /// are 0: the shards' log indexes are not known yet.
    pub fn prefetched(
        read: &'a HashMap<Bytes, Option<Entry>>,
        overlay: &'a Overlay,
        now_ms: u64,
        value_bytes_max: usize,
    ) -> Self {
        Self::from_source(
            Source::Prefetched(read),
            overlay,
            0,
            now_ms,
            value_bytes_max,
        )
    }

    /// The keys evaluating `cmd` reads (the others it only writes): what a transaction's
    /// locks must read for [`Eval::prefetched`].
    pub fn reads_of(cmd: &Command) -> Vec<Bytes> {
        match cmd {
            Command::MSet { nx: false, .. } => Vec::new(),
            Command::Batch { ops } => ops
                .iter()
                .filter_map(|op| match op {
                    BatchOp::Put {
                        key,
                        expiry: Expiry::Keep,
                        ..
                    } => Some(key.clone()),
                    _ => None,
                })
                .collect(),
            Command::Set {
                condition: Condition::Always,
                return_old: false,
                expiry,
                key,
                ..
            } => {
                if *expiry == Expiry::Keep {
                    vec![key.clone()]
                } else {
                    Vec::new()
                }
            }
            Command::Exec {
                compares,
                then,
                otherwise,
            } => {
                let mut keys: Vec<Bytes> = compares.iter().map(|c| c.key().clone()).collect();
                for cmd in then.iter().chain(otherwise) {
                    keys.extend(cmd.read_keys().into_iter().cloned());
                    keys.extend(Self::reads_of(cmd));
                }
                keys.sort();
                keys.dedup();
                keys
            }
            other => other.write_keys().into_iter().cloned().collect(),
        }
    }

    /// Whether a prefetched evaluation read a key it was not given (its answer is void).
    pub fn missed(&self) -> bool {
        self.missed.get()
    }

    /// End evaluation: this proposal's writes and its state for the overlay.
    pub fn finish(self) -> Decided {
        Decided {
            ops: self.ops,
            staged: self.staged,
            staged_clear: self.staged_clear,
            staged_system: self.staged_system,
        }
    }

    fn live(&self, c: Option<Current>) -> Option<Current> {
        c.filter(|c| c.expires_at_ms.is_none_or(|at| at > self.now_ms))
    }

    /// What a proposed, unapplied write left `key` as: `Some(state)` when one did (or a pending
    /// clear hides the engine's), `None` when the engine is to be read.
    fn pending(&self, key: &Bytes) -> Option<Option<Current>> {
        if let Some(c) = self.staged.get(key) {
            return Some(c.clone());
        }
        if self.staged_clear {
            return Some(None);
        }
        if let Some(p) = self.overlay.pending.get(key) {
            return Some(p.state.clone());
        }
        self.overlay.cleared.map(|_| None)
    }

    /// A key's state from the prefetched states of a coordinator.
    fn prefetched_state(
        &self,
        read: &HashMap<Bytes, Option<Entry>>,
        key: &Bytes,
    ) -> Option<Current> {
        match read.get(key) {
            Some(entry) => entry.as_ref().map(|e| Current {
                value: e.value.clone(),
                version: e.version,
                expires_at_ms: e.expires_at_ms,
            }),
            None => {
                self.missed.set(true);
                None
            }
        }
    }

    /// The live state of `key`, reading the value.
    fn read(&self, key: &Bytes) -> Result<Option<Current>, CommandError> {
        if let Some(c) = self.pending(key) {
            return Ok(self.live(c));
        }
        let view = match self.source {
            Source::Shard(view) => view,
            Source::Prefetched(read) => return Ok(self.live(self.prefetched_state(read, key))),
        };
        let entry = view.engine.get_entry(key)?;
        Ok(self.live(entry.map(|e| Current {
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        })))
    }

    /// `(version, expires_at_ms)` of `key` when it is live, without reading the value.
    fn meta(&self, key: &Bytes) -> Option<(u64, Option<u64>)> {
        if let Some(c) = self.pending(key) {
            return self.live(c).map(|c| (c.version, c.expires_at_ms));
        }
        let view = match self.source {
            Source::Shard(view) => view,
            Source::Prefetched(read) => {
                return self
                    .live(self.prefetched_state(read, key))
                    .map(|c| (c.version, c.expires_at_ms));
            }
        };
        let meta = view.engine.meta(key)?;
        meta.expires_at_ms
            .is_none_or(|at| at > self.now_ms)
            .then_some((meta.version, meta.expires_at_ms))
    }

    fn exists(&self, key: &Bytes) -> bool {
        self.meta(key).is_some()
    }

    fn put(&mut self, key: &Bytes, value: Bytes, expires_at_ms: Option<u64>) {
        self.ops.push(WriteOp::Put {
            key: key.clone(),
            value: value.clone(),
            expires_at_ms,
        });
        let current = Current {
            value,
            version: self.version,
            expires_at_ms,
        };
        self.staged.insert(key.clone(), Some(current));
    }

    fn delete(&mut self, key: &Bytes) {
        self.ops.push(WriteOp::Delete { key: key.clone() });
        self.staged.insert(key.clone(), None);
    }

    /// Deletes `key` because its deadline passed (the change feed tells it as an expiry).
    fn expire_now(&mut self, key: &Bytes) {
        self.ops.push(WriteOp::Expire { key: key.clone() });
        self.staged.insert(key.clone(), None);
    }

    fn entry(key: &Bytes, c: Current) -> Entry {
        Entry {
            key: key.clone(),
            value: c.value,
            version: c.version,
            expires_at_ms: c.expires_at_ms,
        }
    }

    /// The absolute deadline of `expiry`, in milliseconds since the epoch. The node resolves
    /// `InMs` to `AtMs` at propose time; an unresolved one counts from the proposal time.
    fn deadline(&self, expiry: Expiry) -> Option<i64> {
        match expiry {
            Expiry::AtMs(at) => Some(at),
            Expiry::InMs(ms) => Some((self.now_ms as i64).saturating_add(ms)),
            Expiry::Never | Expiry::Keep => None,
        }
    }

    /// Evaluate a write command (a client's, or a transaction's step).
    pub fn command(&mut self, cmd: Command) -> Result<Reply, CommandError> {
        if let Command::Txn(op) = cmd {
            return self.txn(op);
        }
        self.check_unlocked(&cmd)?;
        match cmd {
            Command::Exec {
                compares,
                then,
                otherwise,
            } => {
                let mut succeeded = true;
                for compare in &compares {
                    let state = self.read(compare.key())?;
                    succeeded &= compare.holds(state.as_ref().map(|c| (c.version, &c.value)));
                }
                let branch = if succeeded { then } else { otherwise };
                let mut replies = Vec::with_capacity(branch.len());
                for cmd in branch {
                    replies.push(match cmd {
                        cmd if !cmd.is_transactional() => Err(CommandError::Invalid(format!(
                            "'{}' cannot run inside a transaction",
                            cmd.name()
                        ))),
                        cmd if cmd.is_write() => self.command(cmd),
                        cmd => self.read_command(&cmd),
                    });
                }
                Ok(Reply::Exec { succeeded, replies })
            }
            Command::Set {
                key,
                value,
                expiry,
                condition,
                return_old,
            } => self.set(key, value, expiry, condition, return_old),
            Command::GetDel { key } => {
                let current = self.read(&key)?;
                if current.is_some() {
                    self.delete(&key);
                }
                Ok(Reply::Value(current.map(|c| c.value)))
            }
            Command::GetEx { key, expiry } => {
                let Some(current) = self.read(&key)? else {
                    return Ok(Reply::Value(None));
                };
                match expiry {
                    Expiry::Keep => {}
                    Expiry::Never => {
                        if current.expires_at_ms.is_some() {
                            self.put(&key, current.value.clone(), None);
                        }
                    }
                    Expiry::InMs(_) | Expiry::AtMs(_) => {
                        let at = self.deadline(expiry).unwrap_or(0);
                        if at <= self.now_ms as i64 {
                            self.delete(&key);
                        } else {
                            self.put(&key, current.value.clone(), Some(at as u64));
                        }
                    }
                }
                Ok(Reply::Value(Some(current.value)))
            }
            Command::MSet { pairs, nx } => {
                if nx && pairs.iter().any(|(k, _)| self.exists(k)) {
                    return Ok(Reply::Bool(false));
                }
                for (key, value) in pairs {
                    self.put(&key, value, None);
                }
                Ok(Reply::Bool(true))
            }
            Command::Append { key, value } => {
                let current = self.read(&key)?;
                let (old, expires) = match current {
                    Some(c) => (c.value, c.expires_at_ms),
                    None => (Bytes::new(), None),
                };
                let len = old.len() + value.len();
                if len > self.value_bytes_max {
                    return Err(CommandError::StringTooLong);
                }
                let mut new = BytesMut::with_capacity(len);
                new.extend_from_slice(&old);
                new.extend_from_slice(&value);
                self.put(&key, new.freeze(), expires);
                Ok(Reply::Int(len as i64))
            }
            Command::SetRange { key, offset, value } => {
                if offset < 0 {
                    return Err(CommandError::OffsetOutOfRange);
                }
                let offset = offset as usize;
                let current = self.read(&key)?;
                if value.is_empty() {
                    return Ok(Reply::Int(current.map_or(0, |c| c.value.len() as i64)));
                }
                if offset.saturating_add(value.len()) > self.value_bytes_max {
                    return Err(CommandError::StringTooLong);
                }
                let (old, expires) = match current {
                    Some(c) => (c.value, c.expires_at_ms),
                    None => (Bytes::new(), None),
                };
                let mut new = BytesMut::from(&old[..]);
                let end = offset + value.len();
                if new.len() < end {
                    new.resize(end, 0);
                }
                new[offset..end].copy_from_slice(&value);
                let len = new.len();
                self.put(&key, new.freeze(), expires);
                Ok(Reply::Int(len as i64))
            }
            Command::IncrBy { key, delta } => {
                let current = self.read(&key)?;
                let (old, expires) = match current {
                    Some(c) => (
                        parse_i64(&c.value).ok_or(CommandError::NotInteger)?,
                        c.expires_at_ms,
                    ),
                    None => (0, None),
                };
                let new = old.checked_add(delta).ok_or(CommandError::Overflow)?;
                self.put(&key, Bytes::from(new.to_string()), expires);
                Ok(Reply::Int(new))
            }
            Command::IncrByFloat { key, delta } => {
                let current = self.read(&key)?;
                let expires = current.as_ref().and_then(|c| c.expires_at_ms);
                let text = incr_by_float(current.as_ref().map(|c| &c.value[..]), &delta)?;
                self.put(&key, text.clone(), expires);
                Ok(Reply::Value(Some(text)))
            }
            Command::Del { keys } => {
                let mut deleted = 0;
                for key in keys {
                    if self.exists(&key) {
                        self.delete(&key);
                        deleted += 1;
                    }
                }
                Ok(Reply::Int(deleted))
            }
            Command::Expire {
                key,
                expiry,
                condition,
            } => self.expire(key, expiry, condition),
            Command::Persist { key } => {
                let Some(current) = self.read(&key)? else {
                    return Ok(Reply::Bool(false));
                };
                if current.expires_at_ms.is_none() {
                    return Ok(Reply::Bool(false));
                }
                self.put(&key, current.value, None);
                Ok(Reply::Bool(true))
            }
            Command::Copy { from, to, replace } => {
                if from == to {
                    return Err(CommandError::Invalid(
                        "source and destination objects are the same".into(),
                    ));
                }
                let Some(current) = self.read(&from)? else {
                    return Ok(Reply::Int(0));
                };
                if !replace && self.exists(&to) {
                    return Ok(Reply::Int(0));
                }
                self.put(&to, current.value, current.expires_at_ms);
                Ok(Reply::Int(1))
            }
            Command::SetBit { key, offset, bit } => {
                let current = self.read(&key)?;
                let needed = (offset / 8 + 1) as usize;
                let (old, expires) = match current {
                    Some(c) => (c.value, c.expires_at_ms),
                    None => (Bytes::new(), None),
                };
                if needed > old.len() && needed > self.value_bytes_max {
                    return Err(CommandError::StringTooLong);
                }
                let mut new = old.to_vec();
                let was = crate::bits::set(&mut new, offset, bit);
                self.put(&key, Bytes::from(new), expires);
                Ok(Reply::Int(was))
            }
            Command::Rename { from, to, nx } => {
                let Some(current) = self.read(&from)? else {
                    return Err(CommandError::NoSuchKey);
                };
                if from == to {
                    return Ok(Reply::Bool(!nx));
                }
                if nx && self.exists(&to) {
                    return Ok(Reply::Bool(false));
                }
                self.delete(&from);
                self.put(&to, current.value, current.expires_at_ms);
                Ok(Reply::Bool(true))
            }
            Command::Flush => {
                self.ops.push(WriteOp::Clear);
                self.staged.clear();
                self.staged_clear = true;
                Ok(Reply::Ok)
            }
            Command::Batch { ops } => {
                for op in ops {
                    match op {
                        BatchOp::Put { key, value, expiry } => {
                            let expires = match expiry {
                                Expiry::Never => None,
                                Expiry::Keep => self.meta(&key).and_then(|(_, at)| at),
                                Expiry::InMs(_) | Expiry::AtMs(_) => {
                                    self.deadline(expiry).map(|at| at.max(0) as u64)
                                }
                            };
                            match expires {
                                // A deadline already passed: as with `Set`, the key is gone.
                                Some(at) if at <= self.now_ms => self.delete(&key),
                                _ => self.put(&key, value, expires),
                            }
                        }
                        BatchOp::Delete { key } => self.delete(&key),
                    }
                }
                Ok(Reply::Batch {
                    version: if self.ops.is_empty() { 0 } else { self.version },
                })
            }
            read => Err(CommandError::Invalid(format!(
                "'{}' is not a write",
                read.name()
            ))),
        }
    }

    /// Evaluate a keyed read inside a transaction: it sees the transaction's own writes.
    fn read_command(&self, cmd: &Command) -> Result<Reply, CommandError> {
        let entry = |key: &Bytes| -> Result<Option<Entry>, CommandError> {
            Ok(self.read(key)?.map(|c| Self::entry(key, c)))
        };
        match cmd {
            Command::Get { key } => Ok(Reply::Entry(entry(key)?)),
            Command::MGet { keys } => Ok(Reply::Values(
                keys.iter()
                    .map(|k| Ok(entry(k)?.map(|e| e.value)))
                    .collect::<Result<_, CommandError>>()?,
            )),
            Command::StrLen { key } => {
                Ok(Reply::Int(entry(key)?.map_or(0, |e| e.value.len() as i64)))
            }
            Command::GetRange { key, start, end } => {
                let value = entry(key)?.map(|e| e.value).unwrap_or_default();
                Ok(Reply::Value(Some(crate::node::substring(
                    &value, *start, *end,
                ))))
            }
            Command::Lcs { a, b, mode } => {
                let a = entry(a)?.map(|e| e.value).unwrap_or_default();
                let b = entry(b)?.map(|e| e.value).unwrap_or_default();
                Ok(Reply::Lcs(crate::lcs::lcs(&a, &b, *mode)?))
            }
            Command::GetBit { key, .. }
            | Command::BitCount { key, .. }
            | Command::BitPos { key, .. } => {
                crate::node::bit_read(cmd, entry(key)?.map(|e| e.value))
            }
            Command::Exists { keys } => Ok(Reply::Int(
                keys.iter().filter(|k| self.meta(k).is_some()).count() as i64,
            )),
            Command::Type { key } => Ok(Reply::Type(if self.meta(key).is_some() {
                crate::reply::KeyType::String
            } else {
                crate::reply::KeyType::None
            })),
            Command::Ttl { key } => Ok(Reply::Ttl(match self.meta(key) {
                None => crate::reply::KeyTtl::Missing,
                Some((_, at)) => at.map_or(
                    crate::reply::KeyTtl::Persistent,
                    crate::reply::KeyTtl::ExpiresAtMs,
                ),
            })),
            other => Err(CommandError::Invalid(format!(
                "'{}' is not a keyed read",
                other.name()
            ))),
        }
    }

    fn set(
        &mut self,
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
        condition: Condition,
        return_old: bool,
    ) -> Result<Reply, CommandError> {
        let needs_value = return_old || condition != Condition::Always;
        let (old, meta) = if needs_value {
            let old = self.read(&key)?;
            let meta = old.as_ref().map(|c| (c.version, c.expires_at_ms));
            (old, meta)
        } else if expiry == Expiry::Keep {
            (None, self.meta(&key))
        } else {
            (None, None)
        };
        let holds = match condition {
            Condition::Always => true,
            Condition::IfAbsent => meta.is_none(),
            Condition::IfPresent => meta.is_some(),
            Condition::IfVersion(0) => meta.is_none(),
            Condition::IfVersion(v) => meta.is_some_and(|(version, _)| version == v),
        };
        let old_entry = old.map(|c| Self::entry(&key, c));
        if !holds {
            return Ok(Reply::Set(SetOutcome {
                version: None,
                old: old_entry,
            }));
        }
        let expires = match expiry {
            Expiry::Never => None,
            Expiry::Keep => meta.and_then(|(_, at)| at),
            Expiry::InMs(_) | Expiry::AtMs(_) => self.deadline(expiry).map(|at| at.max(0) as u64),
        };
        match expires {
            // A deadline already passed: the write happens and the key is gone at once.
            Some(at) if at <= self.now_ms => {
                if self.exists(&key) {
                    self.delete(&key);
                }
            }
            _ => self.put(&key, value, expires),
        }
        Ok(Reply::Set(SetOutcome {
            version: Some(self.version),
            old: if return_old { old_entry } else { None },
        }))
    }

    fn expire(
        &mut self,
        key: Bytes,
        expiry: Expiry,
        condition: ExpireCondition,
    ) -> Result<Reply, CommandError> {
        let Some((_, current)) = self.meta(&key) else {
            return Ok(Reply::Bool(false));
        };
        let when = match expiry {
            Expiry::Keep => return Ok(Reply::Bool(false)),
            Expiry::Never => None,
            Expiry::InMs(_) | Expiry::AtMs(_) => self.deadline(expiry),
        };
        let allowed = match (condition, current, when) {
            (ExpireCondition::Always, _, _) => true,
            (ExpireCondition::Nx, current, _) => current.is_none(),
            (ExpireCondition::Xx, current, _) => current.is_some(),
            // A key without expiry has an infinite TTL.
            (ExpireCondition::Gt, None, _) => false,
            (ExpireCondition::Gt, Some(cur), Some(when)) => when > cur as i64,
            (ExpireCondition::Gt, Some(_), None) => true,
            (ExpireCondition::Lt, None, Some(_)) => true,
            (ExpireCondition::Lt, None, None) => false,
            (ExpireCondition::Lt, Some(cur), Some(when)) => when < cur as i64,
            (ExpireCondition::Lt, Some(_), None) => false,
            (ExpireCondition::XxLt, None, _) => false,
            (ExpireCondition::XxLt, Some(cur), Some(when)) => when < cur as i64,
            (ExpireCondition::XxLt, Some(_), None) => false,
        };
        if !allowed {
            return Ok(Reply::Bool(false));
        }
        let Some(current) = self.read(&key)? else {
            return Ok(Reply::Bool(false));
        };
        match when {
            Some(when) if when <= self.now_ms as i64 => self.delete(&key),
            Some(when) => self.put(&key, current.value, Some(when as u64)),
            None => self.put(&key, current.value, None),
        }
        Ok(Reply::Bool(true))
    }

    // ---- system records: transaction locks and records ------------------------------

    /// Whether no system record exists or is pending: the fast path of every lock check.
    fn no_system(&self) -> bool {
        self.staged_system.is_empty()
            && self.overlay.system.is_empty()
            && match self.source {
                Source::Shard(view) => view.engine.system_len() == 0,
                Source::Prefetched(_) => true,
            }
    }

    fn system_get(&self, key: &Bytes) -> Option<Bytes> {
        if let Some(value) = self.staged_system.get(key) {
            return value.clone();
        }
        if let Some((_, value)) = self.overlay.system.get(key) {
            return value.clone();
        }
        match self.source {
            Source::Shard(view) => view.engine.system_get(key),
            Source::Prefetched(_) => None,
        }
    }

    /// A system put; refused (before it can reach the log) when its key is longer than the
    /// engine takes, since an entry that fails to apply stops the group on every replica.
    fn system_put(&mut self, key: Bytes, value: Bytes) -> Result<(), CommandError> {
        if key.len() > cairn_storage::KEY_BYTES_MAX {
            return Err(CommandError::KeyTooLarge {
                len: key.len() - txn::LOCK_PREFIX.len(),
                max: txn::TXN_KEY_BYTES_MAX,
            });
        }
        self.ops.push(WriteOp::SystemPut {
            key: key.clone(),
            value: value.clone(),
        });
        self.staged_system.insert(key, Some(value));
        Ok(())
    }

    fn system_delete(&mut self, key: Bytes) {
        self.ops.push(WriteOp::SystemDelete { key: key.clone() });
        self.staged_system.insert(key, None);
    }

    fn shard_id(&self) -> u32 {
        match self.source {
            Source::Shard(view) => view.shard,
            Source::Prefetched(_) => u32::MAX,
        }
    }

    /// The lock on `key`, if any.
    fn lock_of(&self, key: &[u8]) -> Result<Option<Lock>, CommandError> {
        if self.no_system() {
            return Ok(None);
        }
        match self.system_get(&txn::lock_key(key)) {
            Some(value) => Ok(Some(txn::decode(&value, "lock")?)),
            None => Ok(None),
        }
    }

    /// Every lock of the shard as this evaluation sees it: (user key, lock), in key order.
    fn locks(&self) -> Result<Vec<(Bytes, Lock)>, CommandError> {
        if self.no_system() {
            return Ok(Vec::new());
        }
        let mut all: std::collections::BTreeMap<Bytes, Option<Bytes>> = match self.source {
            Source::Shard(view) => view
                .engine
                .system_range(
                    std::ops::Bound::Included(txn::LOCK_PREFIX),
                    std::ops::Bound::Excluded(txn::LOCK_PREFIX_END),
                    usize::MAX,
                )
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect(),
            Source::Prefetched(_) => Default::default(),
        };
        for (key, (_, value)) in &self.overlay.system {
            if key.starts_with(txn::LOCK_PREFIX) {
                all.insert(key.clone(), value.clone());
            }
        }
        for (key, value) in &self.staged_system {
            if key.starts_with(txn::LOCK_PREFIX) {
                all.insert(key.clone(), value.clone());
            }
        }
        let mut out = Vec::new();
        for (key, value) in all {
            if let Some(value) = value {
                let lock: Lock = txn::decode(&value, "lock")?;
                out.push((key.slice(txn::LOCK_PREFIX.len()..), lock));
            }
        }
        Ok(out)
    }

    /// Refuses a command that touches a key locked by a transaction (FLUSHDB: any key).
    fn check_unlocked(&self, cmd: &Command) -> Result<(), CommandError> {
        if self.no_system() {
            return Ok(());
        }
        let held = if let Command::Flush = cmd {
            self.locks()?.into_iter().next().map(|(_, lock)| lock)
        } else {
            let mut held = None;
            for key in cmd.write_keys() {
                if let Some(lock) = self.lock_of(key)? {
                    held = Some(lock);
                    break;
                }
            }
            held
        };
        match held {
            Some(lock) => Err(CommandError::Locked(LockHolder {
                lock,
                shard: self.shard_id(),
            })),
            None => Ok(()),
        }
    }

    fn record(&self, txn: TxnId) -> Result<Option<Record>, CommandError> {
        match self.system_get(&txn::record_key(txn)) {
            Some(value) => Ok(Some(txn::decode(&value, "transaction")?)),
            None => Ok(None),
        }
    }

    fn set_record(&mut self, txn: TxnId, record: &Record) -> Result<(), CommandError> {
        self.system_put(txn::record_key(txn), txn::encode(record))
    }

    /// Applies a transaction's write of a user key (system-table operations are not a
    /// transaction's to carry, and are skipped).
    fn apply_user_op(&mut self, op: WriteOp) {
        match op {
            WriteOp::Put {
                key,
                value,
                expires_at_ms,
            } => self.put(&key, value, expires_at_ms),
            WriteOp::Delete { key } | WriteOp::Expire { key } => self.delete(&key),
            _ => {}
        }
    }

    /// Releases `txn`'s locks on this shard, applying `writes` (when it committed) to the
    /// keys it still holds.
    fn release(&mut self, id: TxnId, writes: Option<Vec<WriteOp>>) -> Result<(), CommandError> {
        let held: std::collections::HashSet<Bytes> = self
            .locks()?
            .into_iter()
            .filter(|(_, lock)| lock.txn == id)
            .map(|(key, _)| key)
            .collect();
        for op in writes.unwrap_or_default() {
            let Some(key) = txn::op_key(&op) else {
                continue;
            };
            if !held.contains(key) {
                continue;
            }
            self.apply_user_op(op);
        }
        for key in held {
            self.system_delete(txn::lock_key(&key));
        }
        Ok(())
    }

    /// Evaluate one step of a cross-shard transaction (see [`crate::txn`]).
    fn txn(&mut self, op: TxnOp) -> Result<Reply, CommandError> {
        let TxnOp { txn: id, kind, .. } = op;
        let here = self.shard_id();
        match kind {
            TxnOpKind::Lock {
                primary,
                deadline_ms,
                keys,
                reads,
            } => {
                if self.now_ms > deadline_ms {
                    return Err(CommandError::TxnAborted);
                }
                let lock = Lock {
                    txn: id,
                    primary,
                    deadline_ms,
                };
                for key in &keys {
                    match self.lock_of(key)? {
                        Some(held) if held.txn == id => {}
                        Some(held) => {
                            return Err(CommandError::Locked(LockHolder {
                                lock: held,
                                shard: here,
                            }));
                        }
                        None => self.system_put(txn::lock_key(key), txn::encode(&lock))?,
                    }
                }
                let mut read = Vec::with_capacity(reads.len());
                for key in &reads {
                    read.push(self.read(key)?.map(|c| Self::entry(key, c)));
                }
                Ok(Reply::Txn(TxnReply::Read(read)))
            }
            TxnOpKind::Commit {
                deadline_ms,
                read,
                writes,
                rest,
            } => {
                match self.record(id)? {
                    None if self.now_ms <= deadline_ms => {}
                    Some(Record::Pending { .. }) => {}
                    _ => return Err(CommandError::TxnAborted),
                }
                let keys = read
                    .iter()
                    .map(|(key, _)| key)
                    .chain(writes.iter().filter_map(txn::op_key));
                for key in keys {
                    match self.lock_of(key)? {
                        Some(held) if held.txn != id => {
                            return Err(CommandError::Locked(LockHolder {
                                lock: held,
                                shard: here,
                            }));
                        }
                        _ => {}
                    }
                }
                for (key, version) in &read {
                    if self.read(key)?.map(|c| c.version) != *version {
                        return Err(CommandError::ReadChanged);
                    }
                }
                for op in writes {
                    self.apply_user_op(op);
                }
                self.release(id, None)?;
                if rest.is_empty() {
                    self.system_delete(txn::record_key(id));
                } else {
                    let record = Record::Committed {
                        at_ms: self.now_ms,
                        rest,
                    };
                    self.set_record(id, &record)?;
                }
                Ok(Reply::Batch {
                    version: self.version,
                })
            }
            TxnOpKind::Resolve { writes } => {
                let before = self.ops.len();
                self.release(id, writes)?;
                let wrote = self.ops[before..]
                    .iter()
                    .any(|op| txn::op_key(op).is_some());
                Ok(Reply::Batch {
                    version: if wrote { self.version } else { 0 },
                })
            }
            TxnOpKind::Decide { abort, deadline_ms } => {
                let abort = match abort {
                    AbortWhen::Never => false,
                    AbortWhen::Expired => self.now_ms > deadline_ms,
                    AbortWhen::Now => true,
                };
                let until_ms = deadline_ms.saturating_add(txn::ABORTED_RETAIN_MS);
                let fate = match self.record(id)? {
                    Some(Record::Committed { rest, .. }) => Fate::Committed(rest),
                    Some(Record::Aborted { .. }) => Fate::Aborted,
                    // Opened by a build that locked the primary's keys.
                    Some(Record::Pending { .. }) if abort => {
                        self.set_record(id, &Record::Aborted { until_ms })?;
                        self.release(id, None)?;
                        Fate::Aborted
                    }
                    Some(Record::Pending { .. }) => Fate::Pending,
                    // Not committed yet, or committed and forgotten once every shard was
                    // resolved (then no lock of it is left to ask about). The abort is
                    // written down, for the commit to meet.
                    None if abort => {
                        self.set_record(id, &Record::Aborted { until_ms })?;
                        Fate::Forgotten
                    }
                    None => Fate::Pending,
                };
                Ok(Reply::Txn(TxnReply::Fate(fate)))
            }
            TxnOpKind::Forget { also } => {
                for id in std::iter::once(id).chain(also) {
                    let forget = match self.record(id)? {
                        Some(Record::Committed { .. }) => true,
                        Some(Record::Aborted { until_ms }) => self.now_ms > until_ms,
                        Some(Record::Pending { .. }) | None => false,
                    };
                    if forget {
                        self.system_delete(txn::record_key(id));
                    }
                }
                Ok(Reply::Ok)
            }
        }
    }

    /// Evaluate an internal operation.
    pub fn internal(&mut self, op: InternalOp) -> Result<Reply, CommandError> {
        match op {
            InternalOp::ExpireKeys { keys } => {
                let mut deleted = 0;
                for key in keys {
                    // A locked key belongs to its transaction until it is resolved: the next
                    // cycle finds it again if it is still due.
                    if self.lock_of(&key)?.is_some() {
                        continue;
                    }
                    // Still expired (not rewritten since it was found due)?
                    let expired = match self.pending(&key) {
                        Some(Some(c)) => c.expires_at_ms.is_some_and(|at| at <= self.now_ms),
                        Some(None) => false,
                        None => {
                            let Source::Shard(view) = self.source else {
                                continue;
                            };
                            let due = view
                                .expiry
                                .lock()
                                .deadline(&key)
                                .is_some_and(|at| at <= self.now_ms);
                            due && self.meta(&key).is_none()
                        }
                    };
                    if expired {
                        self.expire_now(&key);
                        deleted += 1;
                    }
                }
                Ok(Reply::Int(deleted))
            }
        }
    }
}
