//! Reads of the whole keyspace (KEYS, SCAN, range scans, RANDOMKEY, DBSIZE) across shards
//! this node may not hold.
//!
//! Each shard is read from this node's replica when it has one that holds the whole of it
//! (a voter, or a learner its leader reported caught up: a learner still copying the shard
//! would answer from part of it), and otherwise from the shard's leader, to which the read
//! goes limited to that shard (the leader the map names, as any routed request). When every
//! shard is read here, nothing changes from a single node's read.
//!
//! Invariant: each shard is read for the slots this node's slot map routes to it, and only
//! from a replica whose range is exactly those slots (checked before and after the read),
//! so a split that the reading replica, the serving replica or this node's map has not seen
//! (or that lands during the read) gives `TRYAGAIN`, never a read missing the keys that
//! moved or counting them twice.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use rand::Rng;

use super::{Node, Scope};
use crate::command::{Command, KeyRange};
use crate::error::CommandError;
use crate::reply::Reply;
use crate::scan::{Position, SCAN_COUNT_MAX};
use crate::shard::Shard;
use crate::shards::Shards;

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
    fn every_shard_known(&self, parts: &[Part]) -> Result<(), CommandError> {
        let placements = self.placements();
        let routed: std::collections::BTreeSet<u32> = parts.iter().map(|p| p.id).collect();
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

    /// The parts of a whole-keyspace read (`only`: that one shard's, as another node asks):
    /// each shard with the slots this node routes to it, read here when this node holds a
    /// whole replica of it, else from its leader. `TRYAGAIN` while the routed slots do not
    /// tile the keyspace (a split half known here).
    fn keyspace_parts(&self, only: Option<Scope>) -> Result<Vec<Part>, CommandError> {
        let epoch = self.shards.routing_epoch();
        type Ranges = Vec<(u32, Option<(u16, u16)>)>;
        let (ranges, routed): (Ranges, bool) = match only {
            Some(scope) => {
                let routed = scope.slots.is_some_and(|(first, last)| {
                    (first..=last).all(|slot| self.shards.owner(slot) == scope.shard)
                });
                (vec![(scope.shard, scope.slots)], routed)
            }
            None => {
                let ranges = self
                    .shards
                    .routed_ranges()
                    .map_err(CommandError::TryAgain)?;
                let parts = ranges
                    .iter()
                    .map(|(&id, &slots)| (id, Some(slots)))
                    .collect();
                (parts, true)
            }
        };
        // The epoch at which every part's slots were seen routed to it, if the map did not
        // change meanwhile: the checks around the read then compare the epoch alone.
        let stable = epoch % 2 == 0 && self.shards.routing_epoch() == epoch;
        let routed_at = (routed && stable).then_some(epoch);
        // A replica here whose range is not (yet) the part's (it has not applied a split
        // the map shows) is passed over: the shard's leader answers for that part.
        Ok(ranges
            .into_iter()
            .map(|(id, slots)| Part {
                id,
                slots,
                routed_at,
                local: self
                    .shards
                    .get(id)
                    .filter(|shard| {
                        self.serves_keyspace(shard)
                            && slots.is_none_or(|s| shard.slots() == Some(s))
                    })
                    .map(|shard| Arc::clone(&shard)),
            })
            .collect())
    }

    /// A whole-keyspace read (`only`: of that shard alone, as another node asks for its part).
    pub(super) async fn read_keyspace(
        &self,
        cmd: &Command,
        hops: u32,
        stale: bool,
        only: Option<Scope>,
    ) -> Result<Reply, CommandError> {
        let parts = self.keyspace_parts(only)?;
        for shard in parts.iter().filter_map(|p| p.local.as_ref()) {
            self.reach_read_floor(shard).await?;
        }
        if only.is_none() {
            self.every_shard_known(&parts)?;
        }
        let local: Vec<Arc<Shard>> = parts.iter().filter_map(|p| p.local.clone()).collect();
        let all_local = local.len() == parts.len();
        if let Command::Scan {
            cursor,
            pattern,
            count,
            type_filter,
        } = cmd
        {
            if all_local && only.is_none() {
                holds_their_slots(&parts, &self.shards)?;
                let page = self.read(cmd)?;
                holds_their_slots(&parts, &self.shards)?;
                return Ok(page);
            }
            let from = self.cursors.position(*cursor);
            let (next, keys) = self
                .scan_page(&parts, from, pattern.as_deref(), *count, hops, stale)
                .await?;
            // Only strings exist: any other TYPE filter matches nothing.
            let type_ok = type_filter
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(b"string"));
            let keys = if type_ok { keys } else { Vec::new() };
            let cursor = self.cursors.advance(*cursor, next);
            return Ok(Reply::ScanPage { cursor, keys });
        }
        holds_their_slots(&parts, &self.shards)?;
        let mut reply = self.keyspace_local(&local, cmd)?;
        holds_their_slots(&parts, &self.shards)?;
        let mut nonempty = usize::from(matches!(reply, Reply::Value(Some(_))));
        for part in parts.iter().filter(|p| p.local.is_none()) {
            let reply_part = self.read_part_elsewhere(part, cmd, hops, stale).await?;
            reply = merge(cmd, reply, reply_part, &mut nonempty)?;
        }
        Ok(reply)
    }

    /// `part`, which this node holds no whole replica of, read from the shard's leader.
    /// Tried once: a refusal (`TRYAGAIN`: the leader's replica holds other slots than this
    /// node routes to it) goes back to the caller, whose retry plans the read again from a
    /// newer map.
    async fn read_part_elsewhere(
        &self,
        part: &Part,
        cmd: &Command,
        hops: u32,
        stale: bool,
    ) -> Result<Reply, CommandError> {
        let scope = Scope {
            shard: part.id,
            slots: part.slots,
        };
        self.forward_once_by_map(part.id, cmd, hops, stale, Some(scope))
            .await
    }

    /// One SCAN page over the parts by shard id, each read here or (a range scan of that
    /// shard alone) from its leader.
    async fn scan_page(
        &self,
        parts: &[Part],
        from: Position,
        pattern: Option<&[u8]>,
        count: usize,
        hops: u32,
        stale: bool,
    ) -> Result<(Option<Position>, Vec<Bytes>), CommandError> {
        let mut parts: Vec<&Part> = parts.iter().collect();
        parts.sort_unstable_by_key(|p| p.id);
        let glob = pattern
            .filter(|p| *p != b"*")
            .map(|p| Pattern::new(p, false));
        let budget = count.clamp(1, SCAN_COUNT_MAX);
        let mut examined = 0;
        let mut keys = Vec::new();
        let mut i = parts.partition_point(|p| p.id < from.shard());
        let mut after = if parts.get(i).map(|p| p.id) == Some(from.shard()) {
            from.after().cloned()
        } else {
            None
        };
        while examined < budget && i < parts.len() {
            let part = parts[i];
            let want = budget - examined;
            let batch: Vec<Bytes> = match &part.local {
                Some(shard) => {
                    let start = after
                        .as_ref()
                        .map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
                    part.holds_its_slots(&self.shards)?;
                    let batch = shard
                        .engine()
                        .scan_keys(start, Bound::Unbounded, want)
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    part.holds_its_slots(&self.shards)?;
                    batch
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
                    match self.read_part_elsewhere(part, &cmd, hops, stale).await? {
                        Reply::Entries { entries, .. } => {
                            entries.into_iter().map(|e| e.key).collect()
                        }
                        other => {
                            return Err(CommandError::Invalid(format!(
                                "shard {} answered a range scan with {other:?}",
                                part.id
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
            keys.extend(
                batch
                    .into_iter()
                    .filter(|k| glob.as_ref().is_none_or(|g| g.matches(k)) && part.covers(k)),
            );
            if exhausted {
                i += 1;
                after = None;
            }
        }
        let next = (i < parts.len()).then(|| Position::new(parts[i].id, after));
        Ok((next, keys))
    }
}

/// One shard's part of a whole-keyspace read.
struct Part {
    id: u32,
    /// The slots this node routes to the shard (or, for a part another node asks for, the
    /// slots it routes there; `None`: as the serving replica holds it).
    slots: Option<(u16, u16)>,
    /// This node's replica, when it holds the whole shard; else the shard's leader is asked.
    local: Option<Arc<Shard>>,
    /// The slot map's epoch ([`Shards::routing_epoch`]) at which `slots` were seen routed to
    /// the shard here.
    routed_at: Option<u64>,
}

impl Part {
    /// `TRYAGAIN` unless this node's replica holds exactly the part's slots. Checked before
    /// and after each read of the replica: a split applied meanwhile shrinks the shard's
    /// range before it deletes the keys that moved, so a read it cut short is caught, as is
    /// a replica that has not yet applied (or a routing that has not yet learnt) a split.
    ///
    /// The slot map here must also route every one of those slots to the shard: a replica
    /// filters what it reads by that map, so one that names a split's child (from the
    /// cluster map, before this replica applied the split) would drop the child's keys from
    /// a read that the asker, unaware of the child, never reads elsewhere.
    fn holds_its_slots(&self, shards: &Shards) -> Result<(), CommandError> {
        let (Some(shard), Some(slots)) = (&self.local, self.slots) else {
            return Ok(());
        };
        let held = shard.slots();
        let routed_here = self.routed_at == Some(shards.routing_epoch())
            || (slots.0..=slots.1).all(|slot| shards.owner(slot) == self.id);
        if held == Some(slots) && routed_here {
            return Ok(());
        }
        Err(CommandError::TryAgain(format!(
            "shard {}'s replica here holds slots {held:?} (routed here alike: {routed_here}), \
             the read covers {}-{}: a split is under way",
            self.id, slots.0, slots.1
        )))
    }

    /// Whether `key` is in the part's slots (when it names them).
    fn covers(&self, key: &[u8]) -> bool {
        self.slots
            .is_none_or(|(first, last)| (first..=last).contains(&crate::slot::key_slot(key)))
    }
}

/// [`Part::holds_its_slots`] for every part.
fn holds_their_slots(parts: &[Part], shards: &Shards) -> Result<(), CommandError> {
    parts.iter().try_for_each(|p| p.holds_its_slots(shards))
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
