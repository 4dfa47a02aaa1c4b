//! Reads of this node's replicas: single keys, MGET, whole-keyspace reads (KEYS, SCAN,
//! DBSIZE, RANDOMKEY, range scans). Routing decides first whether this node may serve them
//! (see `route`).

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use rand::Rng;

use super::{KEY_BYTES_MAX, Node, SCAN_RANGE_LIMIT_MAX, as_ref_bound, literal_prefix, substring};
use crate::command::{Command, KeyRange};
use crate::error::CommandError;
use crate::reply::{Entry, KeyTtl, KeyType, Reply};
use crate::shard::Shard;

impl Node {
    /// A key the engine cannot hold cannot exist: reads of it find nothing.
    fn readable(key: &[u8]) -> bool {
        key.len() <= KEY_BYTES_MAX
    }

    /// The shard holding `key`: `known` when the caller already found it (every key of a
    /// routed read lives in one shard), else computed from the key.
    fn holder<'a>(&'a self, known: Option<&'a Shard>, key: &[u8]) -> &'a Shard {
        known.unwrap_or_else(|| self.shards.for_key(key))
    }

    fn get_entry(&self, known: Option<&Shard>, key: &Bytes) -> Result<Option<Entry>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        let entry = self.holder(known, key).engine().get_entry(key)?;
        Ok(entry.map(|e| Entry {
            key: e.key,
            value: e.value,
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        }))
    }

    fn key_meta(&self, known: Option<&Shard>, key: &[u8]) -> Option<cairn_storage::KeyMeta> {
        if !Self::readable(key) {
            return None;
        }
        self.holder(known, key).engine().meta(key)
    }

    fn get_value(&self, known: Option<&Shard>, key: &[u8]) -> Result<Option<Bytes>, CommandError> {
        if !Self::readable(key) {
            return Ok(None);
        }
        Ok(self.holder(known, key).engine().get(key)?)
    }

    /// Values of many keys, read shard by shard with one `get_many` each, so keys of one
    /// shard (and so of one slot) are read at one instant: an MSET is seen whole or not at all.
    fn get_values(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, CommandError> {
        let mut values = vec![None; keys.len()];
        let mut by_shard: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, key) in keys.iter().enumerate() {
            if Self::readable(key) {
                by_shard
                    .entry(self.shards.shard_of_key(key))
                    .or_default()
                    .push(i);
            }
        }
        for (shard, positions) in by_shard {
            let shard = self.shards.get(shard).expect("shard_of_key names a shard");
            let wanted: Vec<&[u8]> = positions.iter().map(|&i| &keys[i][..]).collect();
            let found = shard.engine().get_many(&wanted)?;
            for (i, entry) in positions.into_iter().zip(found) {
                values[i] = entry.map(|e| e.value);
            }
        }
        Ok(values)
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
            Command::MGet { keys } => Ok(Reply::Values(self.get_values(keys)?)),
            Command::StrLen { key } => Ok(Reply::Int(
                self.key_meta(known, key)
                    .map_or(0, |m| i64::from(m.value_len)),
            )),
            Command::GetRange { key, start, end } => {
                let value = self.get_value(known, key)?.unwrap_or_default();
                Ok(Reply::Value(Some(substring(&value, *start, *end))))
            }
            Command::Exists { keys } => Ok(Reply::Int(
                keys.iter()
                    .filter(|k| self.key_meta(known, k).is_some())
                    .count() as i64,
            )),
            Command::Type { key } => Ok(Reply::Type(if self.key_meta(known, key).is_some() {
                KeyType::String
            } else {
                KeyType::None
            })),
            Command::Ttl { key } => Ok(Reply::Ttl(match self.key_meta(known, key) {
                None => KeyTtl::Missing,
                Some(m) => m
                    .expires_at_ms
                    .map_or(KeyTtl::Persistent, KeyTtl::ExpiresAtMs),
            })),
            Command::Keys { pattern } => Ok(Reply::Keys(self.keys(pattern))),
            Command::Scan {
                cursor,
                pattern,
                count,
                type_filter,
            } => {
                let engines: Vec<Arc<cairn_storage::Engine>> =
                    self.shards.list.iter().map(|s| s.engine()).collect();
                let (cursor, keys) = self.cursors.scan(
                    &engines,
                    *cursor,
                    pattern.as_deref(),
                    *count,
                    type_filter.as_deref(),
                );
                Ok(Reply::ScanPage { cursor, keys })
            }
            Command::ScanRange {
                range,
                limit,
                keys_only,
            } => self.scan_range(range, *limit, *keys_only),
            Command::RandomKey => Ok(Reply::Value(self.random_key())),
            Command::DbSize => Ok(Reply::Int(self.dbsize() as i64)),
            Command::ClusterStatus => Ok(Reply::Cluster(self.cluster_status())),
            Command::ShardStats => Ok(Reply::Stats(self.shard_stats())),
            write => Err(CommandError::Invalid(format!(
                "'{}' is not a read",
                write.name()
            ))),
        }
    }

    /// Number of live keys.
    pub fn dbsize(&self) -> u64 {
        self.shards.list.iter().map(|s| s.engine().len()).sum()
    }

    fn keys(&self, pattern: &[u8]) -> Vec<Bytes> {
        // `KEYS *` (exactly that one byte) lists every key without matching, as Redis's
        // keysCommand does (`allkeys`): the glob itself never matches the empty key.
        let glob = (pattern != b"*").then(|| Pattern::new(pattern, false));
        let range = KeyRange::prefix(Bytes::copy_from_slice(literal_prefix(pattern)));
        let mut out = Vec::new();
        for shard in &self.shards.list {
            let keys = shard.engine().scan_keys(
                as_ref_bound(&range.start),
                as_ref_bound(&range.end),
                usize::MAX,
            );
            out.extend(
                keys.into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| glob.as_ref().is_none_or(|g| g.matches(k))),
            );
        }
        out
    }

    fn scan_range(
        &self,
        range: &KeyRange,
        limit: usize,
        keys_only: bool,
    ) -> Result<Reply, CommandError> {
        let limit = limit.clamp(1, SCAN_RANGE_LIMIT_MAX);
        // One more than asked from each shard tells whether more remain.
        let mut all: Vec<Entry> = Vec::new();
        for shard in &self.shards.list {
            let (start, end) = (as_ref_bound(&range.start), as_ref_bound(&range.end));
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
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        let more = all.len() > limit;
        all.truncate(limit);
        Ok(Reply::Entries { entries: all, more })
    }

    fn random_key(&self) -> Option<Bytes> {
        let sizes: Vec<u64> = self.shards.list.iter().map(|s| s.engine().len()).collect();
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
        // Try the chosen shard first, then any other (sizes may have changed meanwhile).
        let order = (0..self.shards.len()).map(|i| (chosen + i) % self.shards.len());
        for i in order {
            let engine = self.shards.list[i].engine();
            let probe: [u8; 8] = rng.random();
            let after = engine.scan_keys(
                Bound::Included(&probe[..rng.random_range(1..=8)]),
                Bound::Unbounded,
                1,
            );
            if let Some((key, _)) = after.into_iter().next() {
                return Some(key);
            }
            if let Some((key, _)) = engine
                .scan_keys(Bound::Unbounded, Bound::Unbounded, 1)
                .into_iter()
                .next()
            {
                return Some(key);
            }
        }
        None
    }
}
