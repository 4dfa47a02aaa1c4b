//! The one internal command type every front end (RESP, gRPC, HTTP, CLI) decodes into.
//!
//! A front end is a thin codec: it turns its wire request into a [`Command`], calls
//! [`crate::node::Node::execute`], and renders the [`crate::reply::Reply`] or
//! [`crate::error::CommandError`] back in its own format. No front end re-implements the
//! semantics of another; they all live in the executor.
//!
//! Each variant's documentation names the `Reply` variant it produces.

use std::ops::Bound;

use bytes::Bytes;

/// How a write sets the key's time to live.
///
/// Relative deadlines are turned into absolute ones when the node proposes the write, so a
/// replayed log entry expires at the same instant as the original.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// The key has no expiry after the write (plain `SET`; `PERSIST`).
    #[default]
    Never,
    /// Keep whatever expiry the key had (`SET … KEEPTTL`, `GETEX` without options).
    Keep,
    /// Expire this many milliseconds after the node receives the command. For `Expire`, a
    /// value ≤ 0 deletes the key at once (as Redis does); for `Set` it must be > 0.
    InMs(i64),
    /// Expire at this absolute time, in milliseconds since the Unix epoch. A time in the past
    /// deletes the key (`Expire`, `GetEx`) or is rejected (`Set` with a value ≤ 0).
    AtMs(i64),
}

/// Precondition of a `Set`; when it does not hold nothing is written and
/// [`crate::reply::SetOutcome::version`] is `None` ("condition failed").
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    /// Write unconditionally.
    #[default]
    Always,
    /// Only when the key does not exist (`NX`, gRPC/HTTP "if-absent").
    IfAbsent,
    /// Only when the key exists (`XX`, "if-present").
    IfPresent,
    /// Only when the key exists with exactly this version (compare-and-set). Version 0 means
    /// "the key does not exist".
    IfVersion(u64),
}

/// Precondition of an `Expire` (`EXPIRE … NX|XX|GT|LT`, Redis 7 semantics: a key without
/// expiry counts as an infinite TTL for `GT`/`LT`).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpireCondition {
    #[default]
    Always,
    /// Only when the key has no expiry.
    Nx,
    /// Only when the key has an expiry.
    Xx,
    /// Only when the new expiry is greater than the current one.
    Gt,
    /// Only when the new expiry is less than the current one (no expiry counts as infinite).
    Lt,
    /// `XX LT`: only when the key has an expiry and the new one is less.
    XxLt,
}

/// A range of keys in byte order, for range and prefix scans.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Bytes>,
    pub end: Bound<Bytes>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Bytes>) -> KeyRange {
        let prefix: Bytes = prefix.into();
        let end = prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        KeyRange {
            start: Bound::Included(prefix),
            end,
        }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= &s[..],
            Bound::Excluded(s) => key > &s[..],
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= &e[..],
            Bound::Excluded(e) => key < &e[..],
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(Bytes::from(end));
        }
    }
    None
}

/// One write of an atomic [`Command::Batch`].
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
    },
    Delete {
        key: Bytes,
    },
}

/// How a [`Compare`] relates the key's state to the operand.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

impl CmpOp {
    fn holds<T: Ord + ?Sized>(self, left: &T, right: &T) -> bool {
        match self {
            CmpOp::Equal => left == right,
            CmpOp::NotEqual => left != right,
            CmpOp::Greater => left > right,
            CmpOp::Less => left < right,
        }
    }
}

/// A precondition of an [`Command::Exec`]: gRPC/HTTP transaction compare clauses (etcd's
/// shape), and RESP `WATCH` (each watched key's version equal to the one it had).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's version (0 when it does not exist) against `version`.
    Version {
        key: Bytes,
        cmp: CmpOp,
        version: u64,
    },
    /// The key's value against `value`; never holds for a missing key.
    Value {
        key: Bytes,
        cmp: CmpOp,
        value: Bytes,
    },
    /// Whether the key exists.
    Exists { key: Bytes, exists: bool },
}

impl Compare {
    pub fn key(&self) -> &Bytes {
        match self {
            Compare::Version { key, .. }
            | Compare::Value { key, .. }
            | Compare::Exists { key, .. } => key,
        }
    }

    /// Whether the compare holds for a key whose live state is `version` and `value` (`None`
    /// when it does not exist).
    pub fn holds(&self, state: Option<(u64, &Bytes)>) -> bool {
        match self {
            Compare::Version { cmp, version, .. } => {
                cmp.holds(&state.map_or(0, |(v, _)| v), version)
            }
            Compare::Value { cmp, value, .. } => {
                state.is_some_and(|(_, current)| cmp.holds(&current[..], &value[..]))
            }
            Compare::Exists { exists, .. } => state.is_some() == *exists,
        }
    }
}

/// Every operation the node executes.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub enum Command {
    // ---- reads -----------------------------------------------------------------------
    /// The value with its version and absolute expiry → `Reply::Entry`.
    Get { key: Bytes },
    /// Values of several keys, `None` for missing ones → `Reply::Values`.
    MGet { keys: Vec<Bytes> },
    /// Length of the value, 0 when missing → `Reply::Int`.
    StrLen { key: Bytes },
    /// Substring with Redis's inclusive, negative-from-the-end offsets → `Reply::Value`
    /// (always `Some`, empty when out of range or missing).
    GetRange { key: Bytes, start: i64, end: i64 },
    /// The longest common subsequence of two values (missing: empty) → `Reply::Lcs`.
    Lcs {
        a: Bytes,
        b: Bytes,
        mode: crate::lcs::LcsMode,
    },
    /// The bit at `offset` (0 past the end or when missing) → `Reply::Int`.
    GetBit { key: Bytes, offset: u64 },
    /// BITCOUNT; `args` are those after the key, read (as Redis does) only when the key
    /// exists → `Reply::Int`.
    BitCount { key: Bytes, args: Vec<Bytes> },
    /// BITPOS for `bit`; `args` are those after the bit, read only when the key exists →
    /// `Reply::Int`.
    BitPos {
        key: Bytes,
        bit: bool,
        args: Vec<Bytes>,
    },
    /// How many of the keys exist, counting repeats → `Reply::Int`.
    Exists { keys: Vec<Bytes> },
    /// `Reply::Type`.
    Type { key: Bytes },
    /// The key's expiry → `Reply::Ttl`.
    Ttl { key: Bytes },
    /// Every key matching a Redis glob pattern → `Reply::Keys`.
    Keys { pattern: Bytes },
    /// One page of a cursor-based iteration (`SCAN`) → `Reply::ScanPage`. Cursor 0 starts; a
    /// returned cursor of 0 means the iteration is complete. `count` is a hint.
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        type_filter: Option<Bytes>,
    },
    /// Entries in key order within a range (or prefix, see [`KeyRange::prefix`]), at most
    /// `limit` → `Reply::Entries`. With `keys_only` values are left empty (not read).
    ScanRange {
        range: KeyRange,
        limit: usize,
        keys_only: bool,
    },
    /// A random existing key → `Reply::Value` (`None` when the database is empty).
    RandomKey,
    /// Number of live keys → `Reply::Int`.
    DbSize,
    /// The cluster map as this node sees it → `Reply::Cluster`.
    ClusterStatus,
    /// Storage statistics per shard → `Reply::Stats`.
    ShardStats,
    /// Snapshot every shard replica on this node (an engine checkpoint, durable) and purge the
    /// log behind the snapshots (RESP `SAVE`) → `Reply::Ok`.
    Checkpoint,

    // ---- writes (go through propose → commit → apply) --------------------------------
    /// Write a value → `Reply::Set`.
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
        condition: Condition,
        /// Fill `SetOutcome::old` with the previous entry (`SET … GET`, `GETSET`).
        return_old: bool,
    },
    /// Read and delete → `Reply::Value`.
    GetDel { key: Bytes },
    /// Read and change the expiry (`Expiry::Keep` = plain read) → `Reply::Value`.
    GetEx { key: Bytes, expiry: Expiry },
    /// Write several keys atomically; with `nx`, only when none exists → `Reply::Bool`
    /// (whether it wrote).
    MSet {
        pairs: Vec<(Bytes, Bytes)>,
        nx: bool,
    },
    /// Append to the value (creating it) → `Reply::Int` (new length).
    Append { key: Bytes, value: Bytes },
    /// Overwrite part of the value, zero-padding → `Reply::Int` (new length).
    SetRange {
        key: Bytes,
        offset: i64,
        value: Bytes,
    },
    /// Set or clear the bit at `offset`, zero-padding → `Reply::Int` (the bit it was).
    SetBit { key: Bytes, offset: u64, bit: bool },
    /// Add to the integer value (missing = 0) → `Reply::Int`.
    IncrBy { key: Bytes, delta: i64 },
    /// Add to the float value (missing = 0) → `Reply::Value` (the new value as stored).
    IncrByFloat { key: Bytes, delta: Bytes },
    /// Delete keys atomically → `Reply::Int` (how many existed).
    Del { keys: Vec<Bytes> },
    /// Set the expiry of an existing key → `Reply::Bool` (whether it was set; a deadline in
    /// the past deletes the key and counts as set).
    Expire {
        key: Bytes,
        expiry: Expiry,
        condition: ExpireCondition,
    },
    /// Remove the expiry → `Reply::Bool` (whether the key had one).
    Persist { key: Bytes },
    /// Rename a key, keeping its expiry → `Reply::Bool` (false only with `nx` when the
    /// target exists). Missing source → `CommandError::NoSuchKey`.
    Rename { from: Bytes, to: Bytes, nx: bool },
    /// Copy a key's value and expiry to another key → `Reply::Int` (1, or 0 when the
    /// source is missing or the target exists without `replace`). The same key for both is
    /// an error.
    Copy {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// Delete every key → `Reply::Ok`.
    Flush,
    /// An atomic group of puts and deletes → `Reply::Batch` (the version of all its writes).
    Batch { ops: Vec<BatchOp> },

    /// Messages published on another node, for this node's subscribers → `Reply::Int` (how
    /// many subscribers got them).
    Publish { messages: Vec<(Bytes, Bytes)> },

    /// An atomic, isolated transaction (RESP MULTI/EXEC with WATCH, gRPC/HTTP Txn): when every
    /// compare holds, `then`'s commands are evaluated in order, else `otherwise`'s, each seeing
    /// the writes of those before it and nothing of any other request → `Reply::Exec`. Keyed
    /// reads and writes only; a command's error is its answer and stops nothing (as Redis's
    /// EXEC). Keys of one shard: one Raft entry; of several: a cross-shard transaction.
    Exec {
        compares: Vec<Compare>,
        then: Vec<Command>,
        otherwise: Vec<Command>,
    },

    // ---- internal: nodes send these to shards; no front end decodes into them ---------
    /// One step of a cross-shard transaction, for the leader of `op.shard` (a write).
    Txn(crate::txn::TxnOp),
    /// The live state of `keys` (all in `shard`) and the shard's count of deleted keys, read
    /// at one instant → `Reply::Guarded`; `CommandError::Locked` when one is locked.
    ShardRead { shard: u32, keys: Vec<Bytes> },

    /// Messages published on shard channels (SPUBLISH) on another node, for this node's
    /// subscribers → `Reply::Int` (how many subscribers got them). Last, so the variants
    /// before it keep their wire numbers.
    ShardPublish { messages: Vec<(Bytes, Bytes)> },
}

impl Command {
    /// Whether the command changes data (and therefore goes through the write path).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Set { .. }
                | Command::GetDel { .. }
                | Command::GetEx { .. }
                | Command::MSet { .. }
                | Command::Append { .. }
                | Command::SetRange { .. }
                | Command::SetBit { .. }
                | Command::IncrBy { .. }
                | Command::IncrByFloat { .. }
                | Command::Del { .. }
                | Command::Expire { .. }
                | Command::Persist { .. }
                | Command::Rename { .. }
                | Command::Copy { .. }
                | Command::Flush
                | Command::Batch { .. }
                | Command::Txn(_)
                | Command::Exec { .. }
        )
    }

    /// Whether the command may run inside an [`Command::Exec`]: keyed reads and writes.
    pub fn is_transactional(&self) -> bool {
        matches!(
            self,
            Command::Get { .. }
                | Command::MGet { .. }
                | Command::StrLen { .. }
                | Command::GetRange { .. }
                | Command::GetBit { .. }
                | Command::Lcs { .. }
                | Command::BitCount { .. }
                | Command::BitPos { .. }
                | Command::Exists { .. }
                | Command::Type { .. }
                | Command::Ttl { .. }
        ) || (self.is_write()
            && !matches!(
                self,
                Command::Flush | Command::Txn(_) | Command::Exec { .. }
            ))
    }

    /// The one key a single-key read names (`None` for any other command).
    pub fn single_read_key(&self) -> Option<&Bytes> {
        match self {
            Command::Get { key }
            | Command::StrLen { key }
            | Command::GetRange { key, .. }
            | Command::GetBit { key, .. }
            | Command::BitCount { key, .. }
            | Command::BitPos { key, .. }
            | Command::Type { key }
            | Command::Ttl { key } => Some(key),
            _ => None,
        }
    }

    /// The one key a single-key read or write names (`None` for any other command): the
    /// common case, checked without collecting the keys.
    pub fn single_key(&self) -> Option<&Bytes> {
        self.single_read_key().or(self.single_write_key())
    }

    /// The one key a single-key write names (`None` for any other command).
    pub fn single_write_key(&self) -> Option<&Bytes> {
        match self {
            Command::Set { key, .. }
            | Command::GetDel { key }
            | Command::GetEx { key, .. }
            | Command::Append { key, .. }
            | Command::SetRange { key, .. }
            | Command::SetBit { key, .. }
            | Command::IncrBy { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key } => Some(key),
            _ => None,
        }
    }

    /// The keys a keyed read names.
    pub fn read_keys(&self) -> Vec<&Bytes> {
        if let Some(key) = self.single_read_key() {
            return vec![key];
        }
        match self {
            Command::MGet { keys } | Command::Exists { keys } => keys.iter().collect(),
            Command::Lcs { a, b, .. } => vec![a, b],
            _ => Vec::new(),
        }
    }

    /// The keys a write names (none for `Flush` and internal steps); for an `Exec`, every key
    /// it touches, read or written, in either branch (a transaction locks them all).
    pub fn write_keys(&self) -> Vec<&Bytes> {
        if let Some(key) = self.single_write_key() {
            return vec![key];
        }
        match self {
            Command::Exec {
                compares,
                then,
                otherwise,
            } => compares
                .iter()
                .map(Compare::key)
                .chain(then.iter().chain(otherwise).flat_map(|c| {
                    let mut keys = c.read_keys();
                    keys.extend(c.write_keys());
                    keys
                }))
                .collect(),
            Command::MSet { pairs, .. } => pairs.iter().map(|(k, _)| k).collect(),
            Command::Del { keys } => keys.iter().collect(),
            Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => vec![from, to],
            Command::Batch { ops } => ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A short, fixed name for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get { .. } => "get",
            Command::MGet { .. } => "mget",
            Command::StrLen { .. } => "strlen",
            Command::GetRange { .. } => "getrange",
            Command::GetBit { .. } => "getbit",
            Command::Lcs { .. } => "lcs",
            Command::BitCount { .. } => "bitcount",
            Command::BitPos { .. } => "bitpos",
            Command::Exists { .. } => "exists",
            Command::Type { .. } => "type",
            Command::Ttl { .. } => "ttl",
            Command::Keys { .. } => "keys",
            Command::Scan { .. } => "scan",
            Command::ScanRange { .. } => "scan_range",
            Command::RandomKey => "randomkey",
            Command::DbSize => "dbsize",
            Command::ClusterStatus => "cluster_status",
            Command::ShardStats => "shard_stats",
            Command::Checkpoint => "checkpoint",
            Command::Set { .. } => "set",
            Command::GetDel { .. } => "getdel",
            Command::GetEx { .. } => "getex",
            Command::MSet { .. } => "mset",
            Command::Append { .. } => "append",
            Command::SetRange { .. } => "setrange",
            Command::SetBit { .. } => "setbit",
            Command::IncrBy { .. } => "incrby",
            Command::IncrByFloat { .. } => "incrbyfloat",
            Command::Del { .. } => "del",
            Command::Expire { .. } => "expire",
            Command::Persist { .. } => "persist",
            Command::Rename { .. } => "rename",
            Command::Copy { .. } => "copy",
            Command::Flush => "flush",
            Command::Batch { .. } => "batch",
            Command::Exec { .. } => "exec",
            Command::Txn(_) => "txn",
            Command::ShardRead { .. } => "shard_read",
            Command::Publish { .. } => "publish",
            Command::ShardPublish { .. } => "spublish",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let r = KeyRange::prefix(Bytes::from_static(b"ab"));
        assert!(r.contains(b"ab"));
        assert!(r.contains(b"ab\xff\xff"));
        assert!(!r.contains(b"ac"));
        assert!(!r.contains(b"aa\xff"));
        let r = KeyRange::prefix(Bytes::from_static(b"a\xff"));
        assert_eq!(r.end, Bound::Excluded(Bytes::from_static(b"b")));
        let r = KeyRange::prefix(Bytes::from_static(b"\xff\xff"));
        assert_eq!(r.end, Bound::Unbounded);
    }
}
