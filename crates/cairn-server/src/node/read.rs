//! Reads of this node's replicas: single keys, MGET, whole-keyspace reads (KEYS, SCAN,
//! DBSIZE, RANDOMKEY, range scans). Routing decides first whether this node may serve them
//! (see `route`).

use std::ops::Bound;

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use rand::Rng;

use super::{KEY_BYTES_MAX, Node, SCAN_RANGE_LIMIT_MAX, as_ref_bound, literal_prefix, substring};
use crate::command::{Command, KeyRange};
use crate::error::CommandError;
use crate::reply::{Entry, KeyTtl, KeyType, Reply};
use std::sync::Arc;

use crate::shard::Shard;
use crate::shards::ShardHandle;
use crate::txn;

/// How many times a read of whole shards runs again because transactions changed the shards
/// meanwhile, before it answers `TRYAGAIN`.
pub const READ_SETTLE_ATTEMPTS: usize = 16;

impl Node {
    /// A key the engine cannot hold cannot exist: reads of it find nothing.
    fn readable(key: &[u8]) -> bool {
        key.len() <= KEY_BYTES_MAX
    }

    /// The shard holding `key`: `known` when the caller already found it (every key of a
    /// routed read lives in one shard), else computed from the key.
    fn holder<'a>(
        &'a self,
        known: Option<&'a Shard>,
        key: &[u8],
    ) -> Result<ShardHandle<'a>, CommandError> {
        match known {
            Some(shard) => Ok(ShardHandle::Borrowed(shard)),
            None => self
                .shards
                .for_key(key)
                .map(ShardHandle::Found)
                .ok_or_else(|| unmapped(key)),
        }
    }

    /// Live entries of `keys`, all in `shard`, read at one instant, with the shard's count of
    /// deleted keys at that instant; `Locked` when a transaction holds one of them (its
    /// outcome may be decided already: the caller waits for it and reads again).
    pub(super) fn guarded_read(
        &self,
        shard: &Shard,
        keys: &[Bytes],
    ) -> Result<(Vec<Option<Entry>>, u64), CommandError> {
        let wanted: Vec<&[u8]> = keys
            .iter()
            .filter(|k| Self::readable(k))
            .map(|k| &k[..])
            .collect();
        let read = shard.engine().get_many_guarded(&wanted, txn::LOCK_PREFIX)?;
        if let Some(guard) = read.guards.iter().flatten().next() {
            let lock: txn::Lock = txn::decode(guard, "lock")?;
            return Err(CommandError::Locked(txn::LockHolder {
                lock,
                shard: shard.id,
            }));
        }
        let mut found = read.entries.into_iter();
        let entries = keys
            .iter()
            .map(|k| {
                if !Self::readable(k) {
                    return None;
                }
                found.next().flatten().map(|e| Entry {
                    key: e.key,
                    value: e.value,
                    version: e.version,
                    expires_at_ms: e.expires_at_ms,
                })
            })
            .collect();
        Ok((entries, read.deletes))
    }

    /// One key's live entry; `Locked` when a transaction holds it. Without locks in the
    /// shard, as cheap as a plain read (see `Engine::get_guarded`).
    fn get_entry(&self, known: Option<&Shard>, key: &Bytes) -> Result<Option<Entry>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        let shard = self.holder(known, key)?;
        let (entry, guard) = shard.engine().get_guarded(key, txn::LOCK_PREFIX)?;
        if let Some(guard) = guard {
            return Err(CommandError::Locked(txn::LockHolder {
                lock: txn::decode(&guard, "lock")?,
                shard: shard.id,
            }));
        }
        Ok(entry.map(|e| Entry {
            key: e.key,
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        }))
    }

    /// Entries of many keys, read shard by shard, each shard's keys at one instant (an
    /// atomic read across shards is `route`'s `read_atomic`).
    fn get_entries(
        &self,
        known: Option<&Shard>,
        keys: &[Bytes],
    ) -> Result<Vec<Option<Entry>>, CommandError> {
        if let Some(shard) = known {
            return Ok(self.guarded_read(shard, keys)?.0);
        }
        let mut out = vec![None; keys.len()];
        let mut by_shard: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, key) in keys.iter().enumerate() {
            by_shard
                .entry(self.shards.shard_of_key(key))
                .or_default()
                .push(i);
        }
        for (shard, positions) in by_shard {
            let part: Vec<Bytes> = positions.iter().map(|&i| keys[i].clone()).collect();
            let shard = self.shards.get(shard).ok_or_else(|| unmapped(&part[0]))?;
            let (found, _) = self.guarded_read(&shard, &part)?;
            for (i, entry) in positions.into_iter().zip(found) {
                out[i] = entry;
            }
        }
        Ok(out)
    }

    /// `Locked` for the first lock on a key `relevant` to a read, in any shard.
    fn check_locks(&self, relevant: &dyn Fn(&[u8]) -> bool) -> Result<(), CommandError> {
        for shard in &self.shards.list() {
            let engine = shard.engine();
            if engine.system_len() == 0 {
                continue;
            }
            let locks = engine.system_range(
                Bound::Included(txn::LOCK_PREFIX),
                Bound::Excluded(txn::LOCK_PREFIX_END),
                usize::MAX,
            );
            for (key, value) in locks {
                if relevant(&key[txn::LOCK_PREFIX.len()..]) {
                    return Err(CommandError::Locked(txn::LockHolder {
                        lock: txn::decode(&value, "lock")?,
                        shard: shard.id,
                    }));
                }
            }
        }
        Ok(())
    }

    /// A read of whole shards (KEYS, SCAN, range scans) that sees every transaction whole or
    /// not at all: two passes, each a look for locks on keys `relevant` to it and then the
    /// read; it stands when both passes found no lock and read the same (a double collect:
    /// docs/design.md, "Reads"); otherwise it runs again (a held lock is `Locked`, which the
    /// caller waits for). `read` must answer what changes when a transaction writes a key it
    /// covers (the keys, with versions when it returns values).
    fn settled<T: PartialEq>(
        &self,
        relevant: &dyn Fn(&[u8]) -> bool,
        read: impl Fn() -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        for _ in 0..READ_SETTLE_ATTEMPTS {
            self.check_locks(relevant)?;
            let first = read()?;
            self.check_locks(relevant)?;
            if read()? == first {
                return Ok(first);
            }
        }
        Err(CommandError::TryAgain(
            "transactions kept changing the shards being read".into(),
        ))
    }

    /// Execute a read-only command against this node's replicas, as they are.
    pub(super) fn read(&self, cmd: &Command) -> Result<Reply, CommandError> {
        self.read_in(None, cmd)
    }

    /// [`Node::read`]; `known` is the shard every key of `cmd` lives in, when the caller has
    /// found it already.
    pub(super) fn read_in(
        &self,
        known: Option<&Shard>,
        cmd: &Command,
    ) -> Result<Reply, CommandError> {
        match cmd {
            Command::Get { key } => Ok(Reply::Entry(self.get_entry(known, key)?)),
            Command::MGet { keys } => Ok(Reply::Values(
                self.get_entries(known, keys)?
                    .into_iter()
                    .map(|e| e.map(|e| e.value))
                    .collect(),
            )),
            Command::StrLen { key } => Ok(Reply::Int(
                self.get_entry(known, key)?
                    .map_or(0, |e| e.value.len() as i64),
            )),
            Command::GetRange { key, start, end } => {
                let value = self
                    .get_entry(known, key)?
                    .map(|e| e.value)
                    .unwrap_or_default();
                Ok(Reply::Value(Some(substring(&value, *start, *end))))
            }
            Command::Lcs { a, b, mode } => {
                let entries = self.get_entries(known, &[a.clone(), b.clone()])?;
                crate::lcs::of_entries(&entries, *mode).map(Reply::Lcs)
            }
            Command::GetBit { .. } | Command::BitCount { .. } | Command::BitPos { .. } => {
                let key = cmd.read_keys()[0];
                super::bit_read(cmd, self.get_entry(known, key)?.map(|e| e.value))
            }
            Command::Exists { keys } => Ok(Reply::Int(
                self.get_entries(known, keys)?
                    .iter()
                    .filter(|e| e.is_some())
                    .count() as i64,
            )),
            Command::Type { key } => Ok(Reply::Type(if self.get_entry(known, key)?.is_some() {
                KeyType::String
            } else {
                KeyType::None
            })),
            Command::Ttl { key } => Ok(Reply::Ttl(match self.get_entry(known, key)? {
                None => KeyTtl::Missing,
                Some(e) => e
                    .expires_at_ms
                    .map_or(KeyTtl::Persistent, KeyTtl::ExpiresAtMs),
            })),
            Command::ShardRead { shard, keys } => {
                let shard = match known {
                    Some(shard) => ShardHandle::Borrowed(shard),
                    None => ShardHandle::Found(self.shards.get(*shard).ok_or_else(|| {
                        CommandError::TryAgain(format!("no shard {shard} on this node"))
                    })?),
                };
                let (entries, deletes) = self.guarded_read(&shard, keys)?;
                Ok(Reply::Guarded { entries, deletes })
            }
            Command::Keys { .. }
            | Command::ScanRange { .. }
            | Command::RandomKey
            | Command::DbSize => self.keyspace_local(&self.shards.list(), cmd),
            Command::Scan {
                cursor,
                pattern,
                count,
                type_filter,
            } => {
                let glob = pattern
                    .as_deref()
                    .filter(|p| *p != b"*")
                    .map(|p| Pattern::new(p, false));
                let relevant = |key: &[u8]| glob.as_ref().is_none_or(|g| g.matches(key));
                let engines: Vec<crate::scan::ScanShard> = self
                    .shards
                    .list()
                    .iter()
                    .map(|s| crate::scan::ScanShard {
                        id: s.id,
                        engine: s.engine(),
                    })
                    .collect();
                let owns = |id: u32, key: &[u8]| self.shards.shard_of_key(key) == id;
                // The page is read twice from one position; the cursor is retired and the
                // next one issued once, after.
                let from = self.cursors.position(*cursor);
                let (next, keys) = self.settled(&relevant, || {
                    Ok(crate::scan::ScanCursors::page(
                        &engines,
                        &owns,
                        from.clone(),
                        pattern.as_deref(),
                        *count,
                        type_filter.as_deref(),
                    ))
                })?;
                let cursor = self.cursors.advance(*cursor, next);
                Ok(Reply::ScanPage { cursor, keys })
            }
            Command::ClusterStatus => Ok(Reply::Cluster(self.cluster_status())),
            Command::ShardStats => Ok(Reply::Stats(self.shard_stats())),
            write => Err(CommandError::Invalid(format!(
                "'{}' is not a read",
                write.name()
            ))),
        }
    }

    /// KEYS, range scans, RANDOMKEY and DBSIZE over `shards`, replicas on this node.
    pub(super) fn keyspace_local(
        &self,
        shards: &[Arc<Shard>],
        cmd: &Command,
    ) -> Result<Reply, CommandError> {
        match cmd {
            Command::Keys { pattern } => {
                let glob = Pattern::new(pattern, false);
                let all = &pattern[..] == b"*";
                let relevant = |key: &[u8]| all || glob.matches(key);
                Ok(Reply::Keys(
                    self.settled(&relevant, || Ok(self.keys(shards, pattern)))?,
                ))
            }
            Command::ScanRange {
                range,
                limit,
                keys_only,
            } => self.settled(&|key: &[u8]| range.contains(key), || {
                self.scan_range(shards, range, *limit, *keys_only)
            }),
            Command::RandomKey => Ok(Reply::Value(self.random_key(shards))),
            // Each shard counted at its own instant: a transaction that deletes on one shard
            // and creates on another may be counted half-way (cheap, as DBSIZE must be).
            Command::DbSize => Ok(Reply::Int(
                shards.iter().map(|s| s.engine().len()).sum::<u64>() as i64,
            )),
            other => Err(CommandError::Invalid(format!(
                "'{}' does not read the whole keyspace",
                other.name()
            ))),
        }
    }

    /// Number of live keys in this node's replicas.
    pub fn dbsize(&self) -> u64 {
        self.shards.list().iter().map(|s| s.engine().len()).sum()
    }

    fn keys(&self, shards: &[Arc<Shard>], pattern: &[u8]) -> Vec<Bytes> {
        // `KEYS *` (exactly that one byte) lists every key without matching, as Redis's
        // keysCommand does (`allkeys`): the glob itself never matches the empty key.
        let glob = (pattern != b"*").then(|| Pattern::new(pattern, false));
        let range = KeyRange::prefix(Bytes::copy_from_slice(literal_prefix(pattern)));
        let mut out = Vec::new();
        for shard in shards {
            let keys = shard.engine().scan_keys(
                as_ref_bound(&range.start),
                as_ref_bound(&range.end),
                usize::MAX,
            );
            // A split being applied leaves the moved keys in both engines for a moment.
            out.extend(
                keys.into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| glob.as_ref().is_none_or(|g| g.matches(k)))
                    .filter(|k| self.shards.shard_of_key(k) == shard.id),
            );
        }
        out
    }

    fn scan_range(
        &self,
        shards: &[Arc<Shard>],
        range: &KeyRange,
        limit: usize,
        keys_only: bool,
    ) -> Result<Reply, CommandError> {
        let limit = limit.clamp(1, SCAN_RANGE_LIMIT_MAX);
        // One more than asked from each shard tells whether more remain.
        let mut all: Vec<Entry> = Vec::new();
        for shard in shards {
            let (start, end) = (as_ref_bound(&range.start), as_ref_bound(&range.end));
            // A split being applied leaves the moved keys in both engines for a moment: each
            // key is taken from the shard that owns it.
            let before = all.len();
            if keys_only {
                all.extend(
                    shard
                        .engine()
                        .scan_keys(start, end, limit + 1)
                        .into_iter()
                        .map(|(key, m)| Entry {
                            key,
                            value: Bytes::new(),
                            version: m.version,
                            expires_at_ms: m.expires_at_ms,
                        }),
                );
            } else {
                all.extend(
                    shard
                        .engine()
                        .scan(start, end, limit + 1)?
                        .into_iter()
                        .map(|e| Entry {
                            key: e.key,
                            value: e.value,
                            version: e.version,
                            expires_at_ms: e.expires_at_ms,
                        }),
                );
            }
            let mut i = 0;
            all.retain(|e| {
                i += 1;
                i <= before || self.shards.shard_of_key(&e.key) == shard.id
            });
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(Reply::Entries { entries: all, more })
    }

    fn random_key(&self, shards: &[Arc<Shard>]) -> Option<Bytes> {
        let sizes: Vec<u64> = shards.iter().map(|s| s.engine().len()).collect();
        let total: u64 = sizes.iter().sum();
        if total == 0 {
            return None;
        }
        let mut rng = rand::rng();
        let mut pick = rng.random_range(0..total);
        let mut chosen = 0;
        for (i, size) in sizes.iter().enumerate() {
            if pick < *size {
                chosen = i;
                break;
            }
            pick -= size;
        }
        // Try the chosen shard first, then any other (sizes may have changed meanwhile); a
        // key a split is moving counts for the shard that owns it.
        let order = (0..shards.len()).map(|i| (chosen + i) % shards.len());
        for i in order {
            let shard = &shards[i];
            let engine = shard.engine();
            let owned = |key: &Bytes| self.shards.shard_of_key(key) == shard.id;
            let probe: [u8; 8] = rng.random();
            let after = engine.scan_keys(
                Bound::Included(&probe[..rng.random_range(1..=8)]),
                Bound::Unbounded,
                1,
            );
            if let Some((key, _)) = after.into_iter().next().filter(|(k, _)| owned(k)) {
                return Some(key);
            }
            if let Some((key, _)) = engine
                .scan_keys(Bound::Unbounded, Bound::Unbounded, 1)
                .into_iter()
                .next()
                .filter(|(k, _)| owned(k))
            {
                return Some(key);
            }
        }
        None
    }
}

/// The answer for a key whose slot no shard on this node owns: a split child whose replica
/// is not built here yet.
pub(crate) fn unmapped(key: &[u8]) -> CommandError {
    CommandError::TryAgain(format!(
        "slot {} has no shard on this node yet (a split is being applied)",
        crate::slot::key_slot(key)
    ))
}
