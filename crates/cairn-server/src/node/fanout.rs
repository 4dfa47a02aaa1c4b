//! Reads of the whole keyspace (KEYS, SCAN, range scans, RANDOMKEY, DBSIZE) across shards
//! this node may not hold.
//!
//! Each shard is read from this node's replica when it has one that holds the whole of it
//! (a voter, or a learner its leader reported caught up: a learner still copying the shard
//! would answer from part of it), and otherwise from the shard's leader, to which the read
//! goes limited to that shard (the leader the map names, as any routed request). When every
//! shard is read here, nothing changes from a single node's read.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use rand::Rng;

use super::Node;
use crate::command::{Command, KeyRange};
use crate::error::CommandError;
use crate::reply::Reply;
use crate::scan::{Position, SCAN_COUNT_MAX};
use crate::shard::Shard;

/// Whether `cmd` reads the whole keyspace (and may need shards held elsewhere).
pub(super) fn is_keyspace_read(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Keys { .. }
            | Command::Scan { .. }
            | Command::ScanRange { .. }
            | Command::RandomKey
            | Command::DbSize
    )
}

impl Node {
    /// Whether this node's replica of `shard` holds the whole of it: one the map's placement
    /// lists as a voter or a caught-up learner (or, while the map has no placement of the
    /// shard, a member by its own log: a single node, or a cluster starting), and not one
    /// being removed. A voter the group dropped may not know it yet: the map does.
    pub(super) fn serves_keyspace(&self, shard: &Shard) -> bool {
        if shard.feed.is_retired() {
            return false;
        }
        let me = self.raft_id();
        match self.placements.read().get(&shard.id) {
            Some(placement) => placement.voters.contains(&me) || placement.caught_up.contains(&me),
            None => {
                let status = shard.group.status();
                status.voters.contains(&me) || status.learners.contains(&me)
            }
        }
    }

    /// `TRYAGAIN` while a shard the map names as split from another is not routed here yet
    /// (its own placement not reported, or not read yet): a whole-keyspace read would miss
    /// its keys, which its parent no longer holds.
    fn every_shard_known(&self) -> Result<(), CommandError> {
        let placements = self.placements();
        let routed = self.shards.routed();
        for placement in placements.values() {
            if let Some(child) = placement.children.iter().find(|c| !routed.contains(c)) {
                return Err(CommandError::TryAgain(format!(
                    "shard {child}, split from shard {}, is not known here yet",
                    placement.shard
                )));
            }
        }
        Ok(())
    }

    /// The shards a whole-keyspace read covers (`only`: that one), split into those read
    /// here and the ids of those read from their leaders.
    fn keyspace_parts(&self, only: Option<u32>) -> (Vec<Arc<Shard>>, Vec<u32>) {
        let ids: BTreeSet<u32> = match only {
            Some(id) => BTreeSet::from([id]),
            None => self.shards.routed(),
        };
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for id in ids {
            match self.shards.get(id) {
                Some(shard) if self.serves_keyspace(&shard) => local.push(Arc::clone(&shard)),
                _ => remote.push(id),
            }
        }
        (local, remote)
    }

    /// A whole-keyspace read (`only`: of that shard alone, as another node asks for its part).
    pub(super) async fn read_keyspace(
        &self,
        cmd: &Command,
        hops: u32,
        stale: bool,
        only: Option<u32>,
    ) -> Result<Reply, CommandError> {
        if only.is_none() {
            self.every_shard_known()?;
        }
        let (local, remote) = self.keyspace_parts(only);
        if let Command::Scan {
            cursor,
            pattern,
            count,
            type_filter,
        } = cmd
        {
            if remote.is_empty() && only.is_none() {
                return self.read(cmd);
            }
            let from = self.cursors.position(*cursor);
            let (next, keys) = self
                .scan_page(
                    &local,
                    &remote,
                    from,
                    pattern.as_deref(),
                    *count,
                    hops,
                    stale,
                )
                .await?;
            // Only strings exist: any other TYPE filter matches nothing.
            let type_ok = type_filter
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(b"string"));
            let keys = if type_ok { keys } else { Vec::new() };
            let cursor = self.cursors.advance(*cursor, next);
            return Ok(Reply::ScanPage { cursor, keys });
        }
        let mut reply = self.keyspace_local(&local, cmd)?;
        let mut nonempty = usize::from(matches!(reply, Reply::Value(Some(_))));
        for id in remote {
            let part = self.forward_by_map(id, cmd, hops, stale, Some(id)).await?;
            reply = merge(cmd, reply, part, &mut nonempty)?;
        }
        Ok(reply)
    }

    /// One SCAN page over shards by id, each from `local` (read here) or `remote` (a range
    /// scan of that shard alone, from its leader).
    #[allow(clippy::too_many_arguments)]
    async fn scan_page(
        &self,
        local: &[Arc<Shard>],
        remote: &[u32],
        from: Position,
        pattern: Option<&[u8]>,
        count: usize,
        hops: u32,
        stale: bool,
    ) -> Result<(Option<Position>, Vec<Bytes>), CommandError> {
        let mut ids: Vec<u32> = local
            .iter()
            .map(|s| s.id)
            .chain(remote.iter().copied())
            .collect();
        ids.sort_unstable();
        let glob = pattern
            .filter(|p| *p != b"*")
            .map(|p| Pattern::new(p, false));
        let budget = count.clamp(1, SCAN_COUNT_MAX);
        let mut examined = 0;
        let mut keys = Vec::new();
        let mut i = ids.partition_point(|&id| id < from.shard());
        let mut after = if ids.get(i) == Some(&from.shard()) {
            from.after().cloned()
        } else {
            None
        };
        while examined < budget && i < ids.len() {
            let id = ids[i];
            let want = budget - examined;
            let batch: Vec<Bytes> = match local.iter().find(|s| s.id == id) {
                Some(shard) => {
                    let start = after
                        .as_ref()
                        .map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
                    shard
                        .engine()
                        .scan_keys(start, Bound::Unbounded, want)
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect()
                }
                None => {
                    let range = KeyRange {
                        start: after.clone().map_or(Bound::Unbounded, Bound::Excluded),
                        end: Bound::Unbounded,
                    };
                    let cmd = Command::ScanRange {
                        range,
                        limit: want,
                        keys_only: true,
                    };
                    match self.forward_by_map(id, &cmd, hops, stale, Some(id)).await? {
                        Reply::Entries { entries, .. } => {
                            entries.into_iter().map(|e| e.key).collect()
                        }
                        other => {
                            return Err(CommandError::Invalid(format!(
                                "shard {id} answered a range scan with {other:?}"
                            )));
                        }
                    }
                }
            };
            examined += batch.len();
            let exhausted = batch.len() < want;
            if let Some(last) = batch.last() {
                after = Some(last.clone());
            }
            keys.extend(batch.into_iter().filter(|k| {
                glob.as_ref().is_none_or(|g| g.matches(k)) && self.shards.shard_of_key(k) == id
            }));
            if exhausted {
                i += 1;
                after = None;
            }
        }
        let next = (i < ids.len()).then(|| Position::new(ids[i], after));
        Ok((next, keys))
    }
}

/// Adds one shard's part of a whole-keyspace read to what was read so far. `nonempty`
/// counts the parts that had a key, for RANDOMKEY's pick.
fn merge(
    cmd: &Command,
    so_far: Reply,
    part: Reply,
    nonempty: &mut usize,
) -> Result<Reply, CommandError> {
    Ok(match (cmd, so_far, part) {
        (_, Reply::Keys(mut a), Reply::Keys(b)) => {
            a.extend(b);
            Reply::Keys(a)
        }
        (_, Reply::Int(a), Reply::Int(b)) => Reply::Int(a + b),
        (_, Reply::Value(a), Reply::Value(b)) => {
            // Each part's key kept with equal odds (reservoir sampling over the parts).
            if b.is_some() {
                *nonempty += 1;
                if rand::rng().random_range(0..*nonempty) == 0 {
                    return Ok(Reply::Value(b));
                }
            }
            Reply::Value(a)
        }
        (
            Command::ScanRange { limit, .. },
            Reply::Entries {
                entries: mut a,
                more: more_a,
            },
            Reply::Entries {
                entries: b,
                more: more_b,
            },
        ) => {
            a.extend(b);
            a.sort_by(|x, y| x.key.cmp(&y.key));
            let limit = (*limit).clamp(1, super::SCAN_RANGE_LIMIT_MAX);
            let more = more_a || more_b || a.len() > limit;
            a.truncate(limit);
            Reply::Entries { entries: a, more }
        }
        (_, a, b) => {
            return Err(CommandError::Invalid(format!(
                "cannot combine parts {a:?} and {b:?} of '{}'",
                cmd.name()
            )));
        }
    })
}
