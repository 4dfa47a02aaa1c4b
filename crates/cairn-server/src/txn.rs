//! Cross-shard transactions: what a shard stores for them, and the operations a coordinator
//! sends to shards.
//!
//! The mechanism (docs/design.md, "Cross-shard transactions") is two-phase commit over the
//! shards' Raft groups with locks and a transaction record, in the manner of Percolator and
//! CockroachDB's write intents:
//! 1. **Lock and read.** The coordinator (whichever node took the request) locks the keys
//!    of every shard but the primary (the lowest), all at once; each shard's lock is one
//!    Raft entry that writes a lock record per key into the engine's system table and
//!    answers the live state of the keys the command reads. A key locked by another
//!    transaction refuses the lock (no waiting while holding locks: deadlocks cannot form);
//!    the coordinator releases what it holds and tries again. Meanwhile it reads the
//!    primary's keys, with their versions, without locking them.
//! 2. **Commit.** The coordinator evaluates the command against the states it read (the
//!    same [`crate::eval::Eval`] a shard uses) and sends the outcome to the primary: one
//!    entry that, only if no record exists (no abort), the deadline has not passed, no key
//!    of the primary it writes or read is locked by another transaction and every key it
//!    read has the version read, applies the primary's writes and writes the record
//!    `Committed`, holding the other shards' writes. That entry is the commit point:
//!    durable on a majority of the primary's group before anything of the transaction is
//!    visible. A transaction that writes nothing has no commit: it reads the primary's keys
//!    again once every lock is held, and answers only if they are unchanged.
//! 3. **Resolve.** Each other shard applies its writes and releases its locks in one entry.
//!    A shard applies writes only for keys still locked by the transaction, so resolving
//!    twice changes nothing. Once every shard is resolved, the record is forgotten (in the
//!    background, many records per entry).
//!
//! Anyone who meets a lock (a reader, a writer, the background resolver) asks the primary
//! for the transaction's fate ([`TxnOpKind::Decide`]): a transaction with no record past
//! its deadline (by the primary's clock) becomes `Aborted` there, in the primary's log
//! order, so the coordinator's commit and a resolver's abort cannot both win.
//! Transactions whose keys all live in one shard never come here: they are one entry.
//!
//! Invariants:
//! - a key locked by a transaction is written by nothing but that transaction's resolution,
//!   and a key of the primary is written by its commit only if no other transaction holds
//!   it;
//! - every lock of a transaction is acquired before its commit point, and released (with
//!   its writes) only after it, and the primary's writes land at the commit point itself,
//!   so a reader that sees no lock on any of its keys and the same version of every key in
//!   two passes sees a transaction whole or not at all (`Node`'s multi-shard reads);
//! - what a transaction read holds at its commit point (or, writing nothing, at its
//!   second read of the primary): locked keys cannot change, the primary's are checked;
//! - a commit is never made after the transaction's deadline, and an `Aborted` record is
//!   kept [`ABORTED_RETAIN_MS`] past it, so a late commit always meets the abort.

use bytes::{BufMut, Bytes, BytesMut};
use cairn_raft::WriteOp;
use serde::{Deserialize, Serialize};

/// How long a transaction may hold locks: past its deadline anyone may abort it. Covers the
/// coordinator's two rounds through Raft with a leader change in between.
pub const TXN_LIFETIME_MS: u64 = 2_000;
/// Longest key a cross-shard transaction can lock: its lock record's key is the key with
/// [`LOCK_PREFIX`] before it, and must fit the engine's key limit.
pub const TXN_KEY_BYTES_MAX: usize = cairn_storage::KEY_BYTES_MAX - LOCK_PREFIX.len();
/// Most compares, and most commands per branch, of one `Command::Exec` (RESP MULTI, gRPC and
/// HTTP Txn).
pub const EXEC_COMMANDS_MAX: usize = 4096;
/// Most keys one transaction names.
pub const TXN_KEYS_MAX: usize = 4096;
/// Most bytes of keys and values one transaction writes.
pub const TXN_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long an `Aborted` record outlives its transaction's deadline (far longer than any
/// clock skew between nodes), so that a lock arriving late meets it.
pub const ABORTED_RETAIN_MS: u64 = 60_000;
/// How many times a coordinator starts a transaction over after a lock conflict or a
/// refusal before it answers `TRYAGAIN`.
pub const TXN_ATTEMPTS_MAX: usize = 32;
/// How long whoever meets a lock waits before asking the primary about it (a live
/// coordinator releases its locks within a few Raft rounds).
pub const LOCK_CHECK_AFTER_MS: u64 = 50;
/// How often each shard leader resolves what dead coordinators left behind.
pub const RESOLVE_TICK: std::time::Duration = std::time::Duration::from_millis(500);
/// A committed record is driven to its end by the background resolver once it is this old
/// (the coordinator normally resolves and forgets it within a Raft round).
pub const COMMITTED_HELP_AFTER_MS: u64 = 1_000;
/// Committed records a node's coordinators may leave to be forgotten in the background
/// (after the client has its answer); past this, the resolver forgets them
/// ([`COMMITTED_HELP_AFTER_MS`] later).
pub const FORGETS_QUEUED_MAX: usize = 4096;
/// Forgets the background forgetter sends at once.
pub const FORGETS_PER_ROUND: usize = 256;

/// System-table prefix of lock records: `l` + the user key.
pub const LOCK_PREFIX: &[u8] = b"l";
/// The first system key past every lock record's.
pub const LOCK_PREFIX_END: &[u8] = b"m";
/// System-table prefix of transaction records: `t` + the id, 16 bytes big-endian.
pub const RECORD_PREFIX: &[u8] = b"t";

/// A transaction's id: the coordinating node's Raft id in the high 64 bits, a counter
/// started from the wall clock in nanoseconds in the low ones.
pub type TxnId = u128;

/// The system key of `key`'s lock.
pub fn lock_key(key: &[u8]) -> Bytes {
    let mut k = BytesMut::with_capacity(LOCK_PREFIX.len() + key.len());
    k.put_slice(LOCK_PREFIX);
    k.put_slice(key);
    k.freeze()
}

/// The system key of a transaction's record.
pub fn record_key(txn: TxnId) -> Bytes {
    let mut k = BytesMut::with_capacity(RECORD_PREFIX.len() + 16);
    k.put_slice(RECORD_PREFIX);
    k.put_u128(txn);
    k.freeze()
}

/// A lock record: who holds the key, and where to ask about it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub txn: TxnId,
    /// The shard holding the transaction's record.
    pub primary: u32,
    /// Past this (ms since the Unix epoch) anyone may abort the transaction.
    pub deadline_ms: u64,
}

/// A lock as met by a request: the lock and the shard it was found in.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockHolder {
    pub lock: Lock,
    pub shard: u32,
}

/// A transaction record's state, on its primary shard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Opened by the primary's lock, in the builds before the primary's keys were checked
    /// at the commit instead of locked; still decided and resolved as then. Never written now:
    /// a record is written first by the commit or by an abort.
    Pending { deadline_ms: u64 },
    /// Committed; `rest` holds the writes of the shards not yet known to be resolved.
    Committed {
        at_ms: u64,
        rest: Vec<(u32, Vec<WriteOp>)>,
    },
    /// Aborted; kept until `until_ms` so that late locks meet it.
    Aborted { until_ms: u64 },
}

/// A transaction's fate as its primary answers it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Pending,
    /// Committed, with the writes still to be resolved on other shards.
    Committed(Vec<(u32, Vec<WriteOp>)>),
    Aborted,
    /// No record when asked to abort: the transaction had not committed, or it committed
    /// and its record was forgotten. An `Aborted` record is written in its place (a late
    /// commit meets it). A lock of it is to be released (a committed transaction's record is
    /// forgotten only once none is left); its coordinator, unsure whether its commit landed,
    /// cannot tell the two apart.
    Forgotten,
}

/// When [`TxnOpKind::Decide`] aborts a transaction that is not decided.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortWhen {
    /// Never: only report the fate.
    Never,
    /// When its deadline has passed by the primary's clock (whoever met a stale lock).
    Expired,
    /// At once (its coordinator gives up).
    Now,
}

/// One step of a transaction, sent to one shard (the node forwards it to the shard's leader,
/// whose proposer evaluates it in log order).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TxnOp {
    pub shard: u32,
    pub txn: TxnId,
    pub kind: TxnOpKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum TxnOpKind {
    /// On a shard other than the primary: lock `keys` (a key already locked by this
    /// transaction stays so; one locked by another refuses the whole lock with
    /// `CommandError::Locked`) and answer the live state of `reads` →
    /// `Reply::Txn(TxnReply::Read)`. Refused after `deadline_ms`.
    Lock {
        primary: u32,
        deadline_ms: u64,
        keys: Vec<Bytes>,
        reads: Vec<Bytes>,
    },
    /// On the primary, the commit point. The primary's own keys are not locked: the commit
    /// checks them instead. Refused with `CommandError::TxnAborted` when the record exists as
    /// anything but `Pending` (someone aborted the transaction), or is missing and
    /// `deadline_ms` has passed; with `CommandError::Locked` when a key written or read here
    /// is locked by another transaction; with `CommandError::TryAgain` when a key read here
    /// no longer has the version in `read` (`None`: missing). Otherwise applies `writes`
    /// (this shard's), releases the transaction's locks here (a primary locked with `Lock`)
    /// and makes the record `Committed` with `rest` (the others' writes), or leaves none
    /// when `rest` is empty → `Reply::Batch` with the commit's version.
    Commit {
        deadline_ms: u64,
        read: Vec<(Bytes, Option<u64>)>,
        writes: Vec<WriteOp>,
        rest: Vec<(u32, Vec<WriteOp>)>,
    },
    /// Release the transaction's locks on this shard, applying `writes` when it committed
    /// (`Some`), and only to keys it still holds → `Reply::Batch` with the version of the
    /// writes it applied (0 when it applied none).
    Resolve { writes: Option<Vec<WriteOp>> },
    /// On the primary: the transaction's fate → `Reply::Txn(TxnReply::Fate)`, aborting it as
    /// `abort` says, with `deadline_ms` its deadline as its locks carry it. An abort of a
    /// transaction with no record is written `Aborted` (kept [`ABORTED_RETAIN_MS`] past the
    /// deadline, for its commit to meet) and answered `Fate::Forgotten`; with no abort, a
    /// missing record is `Pending` (not committed yet).
    Decide { abort: AbortWhen, deadline_ms: u64 },
    /// On the primary: forget the records of this transaction and of `also` that are
    /// `Committed` (every other shard is resolved) or `Aborted` past their retention →
    /// `Reply::Ok`.
    Forget { also: Vec<TxnId> },
}

/// Answers of [`TxnOp`]s and of the guarded reads multi-shard reads are made of.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TxnReply {
    /// The live state of the keys a lock read, in the order asked.
    Read(Vec<Option<crate::reply::Entry>>),
    Fate(Fate),
}

/// Encodes a system-table value.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(value).expect("a transaction record serialises"))
}

/// Decodes a system-table value; a record that does not decode is corruption, reported
/// with `what` it was meant to be.
pub fn decode<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
) -> Result<T, crate::error::CommandError> {
    postcard::from_bytes(bytes)
        .map_err(|e| crate::error::CommandError::Storage(format!("corrupt {what} record: {e}")))
}

/// Whether `op` writes `key`'s user data.
pub fn op_key(op: &WriteOp) -> Option<&Bytes> {
    match op {
        WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Expire { key } => Some(key),
        WriteOp::Clear
        | WriteOp::SystemPut { .. }
        | WriteOp::SystemDelete { .. }
        | WriteOp::Split { .. } => None,
    }
}

impl TxnOpKind {
    /// The user keys the step locks, reads or writes.
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            TxnOpKind::Lock { keys, reads, .. } => keys.iter().chain(reads).collect(),
            TxnOpKind::Commit { read, writes, .. } => read
                .iter()
                .map(|(k, _)| k)
                .chain(writes.iter().filter_map(op_key))
                .collect(),
            TxnOpKind::Resolve { writes } => writes.iter().flatten().filter_map(op_key).collect(),
            TxnOpKind::Decide { .. } | TxnOpKind::Forget { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_corruption_is_an_error() {
        let record = Record::Committed {
            at_ms: 5,
            rest: vec![(
                2,
                vec![WriteOp::Put {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    expires_at_ms: Some(9),
                }],
            )],
        };
        let bytes = encode(&record);
        assert_eq!(decode::<Record>(&bytes, "txn").unwrap(), record);
        assert!(decode::<Record>(&bytes[..bytes.len() - 1], "txn").is_err());
        let lock = Lock {
            txn: u128::MAX - 3,
            primary: 1,
            deadline_ms: 77,
        };
        assert_eq!(decode::<Lock>(&encode(&lock), "lock").unwrap(), lock);
    }

    #[test]
    fn system_keys_do_not_collide() {
        assert_eq!(&lock_key(b"abc")[..], b"labc");
        assert_eq!(record_key(1).len(), 17);
        assert!(record_key(1).starts_with(RECORD_PREFIX));
        assert!(!lock_key(b"").starts_with(RECORD_PREFIX));
    }
}
