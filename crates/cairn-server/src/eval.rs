//! Evaluation of write commands against a shard's current state, in the shard's log order.
//!
//! A shard's proposer ([`crate::proposer`]) evaluates each proposal once, right before
//! proposing it: conditions (NX, XX, if-version) and read-modify-write commands (INCR, APPEND,
//! …) see every earlier proposal, including ones proposed but not yet applied, through the
//! [`Overlay`], and produce the writes ([`WriteOp`]s: outcomes, never commands) that the log
//! carries. A failed command produces no writes.

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
}

/// The outcome of a successful evaluation, to be merged into the [`Overlay`].
#[derive(Debug)]
pub struct Decided {
    staged: HashMap<Bytes, Option<Current>>,
    staged_clear: bool,
    ops: Vec<WriteOp>,
}

impl Decided {
    /// Encoded size of the decided writes (about what the log entry carries).
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => 17 + key.len() + value.len(),
                WriteOp::Delete { key } => 5 + key.len(),
                WriteOp::Clear => 1,
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
        decided.ops
    }

    /// Forgets what entries up to `index` wrote: the engine holds it now.
    pub fn applied(&mut self, index: u64) {
        self.pending.retain(|_, p| p.index > index);
        if self.cleared.is_some_and(|c| c <= index) {
            self.cleared = None;
        }
    }

    /// Forgets everything (the term ended; nothing in flight any more).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.cleared = None;
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.cleared.is_none()
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
    pub engine: &'a Engine,
    pub expiry: &'a Mutex<ExpiryIndex>,
}

/// One proposal being evaluated.
#[derive(Debug)]
pub struct Eval<'a> {
    view: ShardView<'a>,
    overlay: &'a Overlay,
    /// This proposal's own writes, visible to itself; merged into the overlay on success.
    staged: HashMap<Bytes, Option<Current>>,
    staged_clear: bool,
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
        Eval {
            view,
            overlay,
            staged: HashMap::new(),
            staged_clear: false,
            ops: Vec::new(),
            version,
            now_ms,
            value_bytes_max,
        }
    }

    /// End evaluation: this proposal's writes and its state for the overlay.
    pub fn finish(self) -> Decided {
        Decided {
            ops: self.ops,
            staged: self.staged,
            staged_clear: self.staged_clear,
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

    /// The live state of `key`, reading the value.
    fn read(&self, key: &Bytes) -> Result<Option<Current>, CommandError> {
        if let Some(c) = self.pending(key) {
            return Ok(self.live(c));
        }
        let entry = self.view.engine.get_entry(key)?;
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
        let meta = self.view.engine.meta(key)?;
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

    /// Evaluate a client write command.
    pub fn command(&mut self, cmd: Command) -> Result<Reply, CommandError> {
        match cmd {
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

    /// Evaluate an internal operation.
    pub fn internal(&mut self, op: InternalOp) -> Result<Reply, CommandError> {
        match op {
            InternalOp::ExpireKeys { keys } => {
                let mut deleted = 0;
                for key in keys {
                    // Still expired (not rewritten since it was found due)?
                    let expired = match self.pending(&key) {
                        Some(Some(c)) => c.expires_at_ms.is_some_and(|at| at <= self.now_ms),
                        Some(None) => false,
                        None => {
                            let due = self
                                .view
                                .expiry
                                .lock()
                                .deadline(&key)
                                .is_some_and(|at| at <= self.now_ms);
                            due && self.meta(&key).is_none()
                        }
                    };
                    if expired {
                        self.delete(&key);
                        deleted += 1;
                    }
                }
                Ok(Reply::Int(deleted))
            }
        }
    }
}
