//! Shard splits, as the cluster asks for them: `cairn cluster split SHARD` (gRPC
//! `Cluster.SplitShard`, HTTP `POST /v1/cluster/shards/{id}/split`) on any node, and the
//! metadata leader's own rounds when a shard outgrows `--split-shard-bytes`.
//!
//! The metadata leader takes the new shard's id from the map (ids are never reused) and asks
//! the parent's leader to split; the parent's proposer proposes the split entry alone, once
//! its entries in flight have landed and no transaction holds a lock or record in the shard;
//! every replica then builds the child as it applies the entry ([`crate::shards::Shards`],
//! [`cairn_raft::split`]). The child's group starts with the parent's members, and the
//! balancer spreads it like any other.

use std::sync::Arc;
use std::time::Duration;

use crate::balancer::{ManageError, Managed};
use crate::error::CommandError;
use crate::node::Node;
use crate::proposer::ProposalOp;
use crate::reply::Reply;

/// Longest a split request waits for the parent's leader to apply it: the leader copies the
/// moving keys as it applies the entry (about a second per million keys).
pub const SPLIT_WAIT: Duration = Duration::from_secs(120);
/// How long the metadata leader waits after a split by size that was not done before it
/// tries another (each attempt takes a shard id, and ids are never reused).
pub const SPLIT_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Node {
    /// Splits `shard` at slot `at` (or where its keys split in halves): on the metadata leader,
    /// asked of it from any other node.
    pub async fn split_shard(
        self: &Arc<Self>,
        shard: u32,
        at: Option<u16>,
    ) -> Result<Managed, ManageError> {
        self.split_shard_for(shard, at, "request").await
    }

    /// [`Node::split_shard`], counted (on the metadata leader) under `reason`.
    async fn split_shard_for(
        self: &Arc<Self>,
        shard: u32,
        at: Option<u16>,
        reason: &'static str,
    ) -> Result<Managed, ManageError> {
        let meta = self.meta();
        if meta.group.leading().is_some() {
            let result = self.split_as_metadata_leader(shard, at).await;
            metrics::counter!(
                crate::metrics::SHARD_SPLITS_TOTAL,
                "reason" => reason,
                "outcome" => split_outcome(&result)
            )
            .increment(1);
            return result;
        }
        let addr = meta
            .leader_addr()
            .ok_or_else(|| CommandError::TryAgain("the metadata group has no leader".into()))?;
        crate::balancer::ask_within(
            self,
            &addr,
            &crate::balancer::Manage::Split { shard, at },
            SPLIT_WAIT,
        )
        .await
    }

    async fn split_as_metadata_leader(
        self: &Arc<Self>,
        shard: u32,
        at: Option<u16>,
    ) -> Result<Managed, ManageError> {
        let meta = self.meta();
        // The shard as its replica here sees it, else as its leader reported it to the map.
        let (slots, leader) = match (self.shards().get(shard), meta.shard(shard)) {
            (Some(parent), _) => (parent.slots(), parent.leader()),
            (None, Some(p)) => (Some((p.first_slot, p.last_slot)), Some(p.leader)),
            (None, None) => {
                return Err(ManageError::UnknownShard(format!(
                    "no shard {shard} in the cluster"
                )));
            }
        };
        match slots {
            // Checked here too (the shard's leader checks again), so that a bad request
            // takes no shard id.
            Some((first, last)) if at.is_some_and(|at| at <= first || at > last) => {
                return Err(CommandError::Invalid(format!(
                    "shard {shard} owns slots {first}..={last}: a split point must be in {}..={last}",
                    first + 1
                ))
                .into());
            }
            Some((first, last)) if first < last => {}
            Some(_) => {
                return Err(ManageError::Refused(format!(
                    "shard {shard} owns a single slot: it cannot split"
                )));
            }
            None => {
                return Err(CommandError::TryAgain(format!(
                    "this node does not know shard {shard}'s slots yet"
                ))
                .into());
            }
        }
        let leader =
            leader.ok_or_else(|| CommandError::TryAgain(format!("shard {shard} has no leader")))?;
        let child = meta.take_shard_id().await?;
        tracing::info!(shard, child, ?at, "splitting a shard");
        let request = crate::balancer::Manage::SplitAs { shard, child, at };
        if leader == self.raft_id() {
            return Ok(split_as(self, shard, child, at).await?);
        }
        let addr = meta.node(leader).map(|r| r.grpc_addr).ok_or_else(|| {
            CommandError::TryAgain(format!("shard {shard}'s leader is not in the map"))
        })?;
        crate::balancer::ask_within(self, &addr, &request, SPLIT_WAIT).await
    }
}

/// As the metadata leader, each balancer round: splits the largest shard whose live data
/// (its leader's engine bytes as reported to the map, less what merge will reclaim) passes
/// `--split-shard-bytes`, one split at a time, in the background.
pub(crate) fn split_oversized(node: &Arc<Node>, placements: &[crate::meta::ShardPlacement]) {
    let limit = node.options().split_shard_bytes;
    if limit == 0 {
        return;
    }
    let Some((bytes, shard)) = placements
        .iter()
        .filter(|p| p.first_slot < p.last_slot)
        .map(|p| (p.live_bytes, p.shard))
        .filter(|(bytes, _)| *bytes > limit)
        .max()
    else {
        return;
    };
    if node
        .splitting
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    // After a split that was not done, the next waits a while: each takes a shard id.
    if node
        .split_refused_at
        .lock()
        .is_some_and(|at| at.elapsed() < SPLIT_RETRY_AFTER)
    {
        node.splitting
            .store(false, std::sync::atomic::Ordering::Release);
        return;
    }
    tracing::info!(
        shard,
        bytes,
        limit,
        "a shard outgrew --split-shard-bytes: splitting it"
    );
    let node = node.clone();
    tokio::spawn(async move {
        let done = node.split_shard_for(shard, None, "size").await.is_ok();
        *node.split_refused_at.lock() = (!done).then(std::time::Instant::now);
        node.splitting
            .store(false, std::sync::atomic::Ordering::Release);
    });
}

/// The metrics label of a split's outcome (logged too).
pub(crate) fn split_outcome(result: &Result<Managed, ManageError>) -> &'static str {
    match result {
        Ok(managed) => {
            tracing::info!(?managed, "shard split");
            "done"
        }
        Err(ManageError::Failed(CommandError::TryAgain(why))) => {
            tracing::debug!(%why, "shard not split now");
            "refused"
        }
        Err(e) => {
            tracing::warn!(error = %e, "shard split failed");
            "failed"
        }
    }
}

/// As `shard`'s leader: splits it, `child` taking the slots from `at` (or from the slot that
/// splits its keys in halves) to the end of its range. Answers once the split is applied here.
pub async fn split_as(
    node: &Node,
    shard: u32,
    child: u32,
    at: Option<u16>,
) -> Result<Managed, CommandError> {
    let parent = node
        .shards()
        .get(shard)
        .ok_or_else(|| CommandError::Invalid(format!("no shard {shard} on this node")))?;
    if parent.group.leading().is_none() {
        return Err(CommandError::TryAgain(format!(
            "this node does not lead shard {shard}"
        )));
    }
    let reply = tokio::time::timeout(
        SPLIT_WAIT,
        crate::proposer::submit(
            &parent.proposals,
            ProposalOp::Split { child, at },
            node.now_ms(),
        ),
    )
    .await
    .map_err(|_| {
        CommandError::OutcomeUnknown(format!(
            "the split of shard {shard} did not finish within {SPLIT_WAIT:?}"
        ))
    })??;
    match reply {
        Reply::Int(first) => Ok(Managed::Split {
            shard,
            child,
            first_slot: first as u16,
        }),
        other => Err(CommandError::Invalid(format!(
            "unexpected answer to a split: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::command::{Command, Condition, Expiry};
    use crate::node::tests::{b, get, options, set};
    use crate::reply::Entry;
    use crate::slot::key_slot;
    use crate::watch::{Item, Selector, WatchError};

    /// Writes `n` keys (every third with a deadline) and answers what each reads as.
    async fn fill(node: &Node, n: usize, deadline_ms: u64) -> BTreeMap<String, Entry> {
        for i in 0..n {
            let expiry = if i % 3 == 0 {
                Expiry::AtMs(deadline_ms as i64)
            } else {
                Expiry::Never
            };
            node.execute(Command::Set {
                key: b(&format!("key:{i}")),
                value: b(&format!("value {i}")),
                expiry,
                condition: Condition::Always,
                return_old: false,
            })
            .await
            .unwrap();
        }
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let key = format!("key:{i}");
            seen.insert(key.clone(), get(node, &key).await.expect("written"));
        }
        seen
    }

    async fn assert_unchanged(node: &Node, before: &BTreeMap<String, Entry>) {
        for (key, want) in before {
            assert_eq!(get(node, key).await.as_ref(), Some(want), "{key}");
        }
    }

    fn split_of(managed: Managed) -> (u32, u16) {
        match managed {
            Managed::Split {
                child, first_slot, ..
            } => (child, first_slot),
            other => panic!("{other:?}"),
        }
    }

    fn on_sim(io: &cairn_io::sim::SimIo) -> crate::node::NodeOptions {
        crate::node::NodeOptions {
            io: std::sync::Arc::new(io.clone()),
            ..options(std::path::Path::new("/sim/node"))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_moves_keys_with_their_versions_and_deadlines() {
        let io = cairn_io::sim::SimIo::new(3);
        let node = Node::open(on_sim(&io)).await.unwrap();
        let before = fill(&node, 600, 4_000_000_000_000).await;
        let (first, last) = node.shards().get(1).unwrap().slots().unwrap();
        let (child, at) = split_of(node.split_shard(1, None).await.unwrap());
        assert_eq!(
            child, 4,
            "the first split takes the first id past the first layout"
        );
        assert!(first < at && at <= last);
        assert_eq!(node.shards().get(1).unwrap().slots(), Some((first, at - 1)));
        assert_eq!(node.shards().get(child).unwrap().slots(), Some((at, last)));
        // Every key reads as it did (value, version, deadline), wherever it now lives.
        assert_unchanged(&node, &before).await;
        let moved: Vec<&String> = before
            .keys()
            .filter(|k| (at..=last).contains(&key_slot(k.as_bytes())))
            .collect();
        let parent_keys = before
            .keys()
            .filter(|k| (first..at).contains(&key_slot(k.as_bytes())))
            .count() as u64;
        // The median slot splits the shard's keys about in halves.
        assert!(
            moved.len() as u64 * 3 > parent_keys && parent_keys * 3 > moved.len() as u64,
            "{} moved, {parent_keys} stayed",
            moved.len()
        );
        let parent = node.shards().get(1).unwrap().engine();
        let child_engine = node.shards().get(child).unwrap().engine();
        assert_eq!(parent.len(), parent_keys);
        assert_eq!(child_engine.len(), moved.len() as u64);
        for key in &moved {
            assert!(parent.get(key.as_bytes()).unwrap().is_none(), "{key} left");
            assert_eq!(node.shards().shard_of_key(key.as_bytes()), child);
        }
        // The child's expiry index knows its keys' deadlines, the parent's lost them.
        let with_deadline = moved
            .iter()
            .filter(|k| before[k.as_str()].expires_at_ms.is_some())
            .count();
        assert_eq!(
            node.shards().get(child).unwrap().expiry.index.lock().len(),
            with_deadline
        );
        // A request for a moved key that reaches the parent anyway (routed before the split,
        // or by a node that has not applied it yet) is refused, to be routed again.
        let parent_proposals = node.shards().get(1).unwrap().proposals.clone();
        let stale_write = crate::proposer::submit(
            &parent_proposals,
            ProposalOp::Command(set(moved[0], "lost")),
            node.now_ms(),
        )
        .await;
        assert!(
            matches!(stale_write, Err(CommandError::TryAgain(_))),
            "{stale_write:?}"
        );
        let stale_read = node
            .execute_forwarded(
                Command::ShardRead {
                    shard: 1,
                    keys: vec![b(moved[0])],
                },
                0,
                false,
                None,
            )
            .await;
        assert!(
            matches!(stale_read, Err(CommandError::TryAgain(_))),
            "{stale_read:?}"
        );
        // Writes to moved keys go to the child, and versions only grow.
        let key = moved[0].as_str();
        node.execute(set(key, "after")).await.unwrap();
        let after = get(&node, key).await.unwrap();
        assert_eq!(after.value, b("after"));
        assert!(after.version > before[key].version);
        // A power cut now loses the parent's engine writes (its record and deletes among
        // them), so the node that opens the image opens the child only when the parent replays
        // the split: it must still not serve before the child applied its own log.
        let early = io.crash_image(cairn_io::sim::PowerCut::DropUnsynced);
        {
            let node = Node::open(on_sim(&early)).await.unwrap();
            assert_eq!(get(&node, key).await.as_ref(), Some(&after), "{key}");
            let mut expected = before.clone();
            expected.insert(key.to_string(), after.clone());
            assert_unchanged(&node, &expected).await;
            let _ = node.shutdown().await;
        }
        // A bad split point is refused, and takes no id.
        assert!(node.split_shard(1, Some(first)).await.is_err());
        assert!(node.split_shard(child, Some(last + 1)).await.is_err());
        // The parent checkpoints (its engine synced, its log purged past the split: it will
        // never apply the split again), the child does not.
        let parent = node.shards().get(1).unwrap();
        let applied = parent.last_applied();
        let wait = Duration::from_secs(10);
        parent.group.snapshot(applied, wait).await.unwrap();
        parent.group.purge(applied, wait).await.unwrap();
        // After a power cut (what was not fsynced is lost: the child's writes since it was
        // built among them), the child's replica is found again and nothing changed.
        let mut expected = before.clone();
        expected.insert(key.to_string(), after);
        let image = io.crash_image(cairn_io::sim::PowerCut::DropUnsynced);
        let _ = node.shutdown().await;
        drop(node);
        let node = Node::open(on_sim(&image)).await.unwrap();
        assert_eq!(node.shards().len(), 5);
        assert_unchanged(&node, &expected).await;
        // The next split takes the next id; an id taken for a split that did not happen is
        // not used again, and FLUSHALL clears every shard there is.
        let (next, _) = split_of(node.split_shard(child, None).await.unwrap());
        assert_eq!(next, 5);
        assert_unchanged(&node, &expected).await;
        assert_eq!(node.meta().take_shard_id().await.unwrap(), 6);
        let (gap, _) = split_of(node.split_shard(0, None).await.unwrap());
        assert_eq!(gap, 7);
        assert_unchanged(&node, &expected).await;
        node.execute(Command::Flush).await.unwrap();
        assert_eq!(node.dbsize(), 0);
        node.shutdown().await.unwrap();
    }

    /// Events of a watch until it ends or goes quiet; the error it ended with.
    async fn drain(
        watcher: &mut crate::watch::Watcher,
    ) -> (Vec<(u32, u64, Bytes)>, Option<WatchError>) {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(500), watcher.next()).await {
                Err(_) | Ok(Ok(Item::Progress)) => return (seen, None),
                Ok(Ok(Item::Events(events))) => seen.extend(
                    events
                        .into_iter()
                        .map(|e| (e.shard, e.revision, e.event.key)),
                ),
                Ok(Err(e)) => return (seen, Some(e)),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_ends_at_a_split_and_resumes_on_both_halves() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        fill(&node, 200, 4_000_000_000_000).await;
        let mut all = node
            .watch(Selector::Prefix(b("key:")), None, Duration::from_secs(60))
            .unwrap();
        // A key the split moves.
        let at = 6000;
        let one = (0..200)
            .map(|i| format!("key:{i}"))
            .find(|k| key_slot(k.as_bytes()) >= at && node.shards().shard_of_key(k.as_bytes()) == 1)
            .unwrap();
        let mut single = node
            .watch(Selector::Key(b(&one)), None, Duration::from_secs(60))
            .unwrap();
        let single_from = single.token().to_string();
        for i in 0..200 {
            node.execute(set(&format!("key:{i}"), "before"))
                .await
                .unwrap();
        }
        let (child, _) = split_of(node.split_shard(1, Some(at)).await.unwrap());
        for i in 0..200 {
            node.execute(set(&format!("key:{i}"), "after"))
                .await
                .unwrap();
        }
        // The prefix watch tells every change up to the split, then ends to be resumed.
        let (first, ended) = drain(&mut all).await;
        assert!(matches!(ended, Some(WatchError::Split(1, _))), "{ended:?}");
        assert!(ended.unwrap().unavailable());
        let mut resumed = node
            .watch(
                Selector::Prefix(b("key:")),
                Some(&all.token().to_string()),
                Duration::from_secs(60),
            )
            .unwrap();
        let (rest, ended) = drain(&mut resumed).await;
        assert!(ended.is_none(), "{ended:?}");
        // Together: each key's two changes exactly once, in version order per key.
        let mut per_key: BTreeMap<Bytes, Vec<u64>> = BTreeMap::new();
        for (_, revision, key) in first.iter().chain(&rest) {
            per_key.entry(key.clone()).or_default().push(*revision);
        }
        assert_eq!(per_key.len(), 200);
        for (key, revisions) in &per_key {
            assert_eq!(revisions.len(), 2, "{key:?}: {revisions:?}");
            assert!(revisions[0] < revisions[1], "{key:?}: {revisions:?}");
        }
        assert!(rest.iter().any(|(shard, _, _)| *shard == child));
        // A watch of one key that moved ends too, and resumes on the child.
        let (events, ended) = drain(&mut single).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(ended, Some(WatchError::Split(..))), "{ended:?}");
        let mut again = node
            .watch(
                Selector::Key(b(&one)),
                Some(&single.token().to_string()),
                Duration::from_secs(60),
            )
            .unwrap();
        let (events, _) = drain(&mut again).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, child);
        // Resumed from a token from before the split: the change the parent holds, then the
        // child's.
        let mut late = node
            .watch(
                Selector::Key(b(&one)),
                Some(&single_from),
                Duration::from_secs(60),
            )
            .unwrap();
        let (events, ended) = drain(&mut late).await;
        assert!(ended.is_none(), "{ended:?}");
        let shards: Vec<u32> = events.iter().map(|e| e.0).collect();
        assert_eq!(shards, vec![1, child], "{events:?}");
        // A token naming a shard this node does not have: resume elsewhere or later.
        assert!(matches!(
            node.watch(
                Selector::Key(b(&one)),
                Some("99:0"),
                Duration::from_secs(60)
            ),
            Err(WatchError::NotHere(99))
        ));
        node.shutdown().await.unwrap();
    }

    /// A power cut anywhere in a split (building the child's replica, starting its log, the
    /// parent's log) loses nothing: reopened, every key reads as before, and the shard is
    /// either split (the child found whole) or not (and splits then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_power_cut_anywhere_in_a_split_loses_nothing() {
        use cairn_io::sim::{Action, Fault, Op, PowerCut, SimIo};
        let cuts: Vec<(&str, u64, PowerCut)> = [0, 1, 2, 3, 5, 8, 13, 21, 40, 70, 110, 160]
            .into_iter()
            .map(|n| ("shards/00004", n, PowerCut::DropUnsynced))
            .chain([
                (
                    "shards/00004",
                    6,
                    PowerCut::KeepPrefix {
                        kept_per_mille: 500,
                    },
                ),
                ("shards/00004", 30, PowerCut::KeepUnsynced),
                ("wal", 0, PowerCut::DropUnsynced),
                ("wal", 1, PowerCut::DropUnsynced),
                ("wal", 2, PowerCut::KeepUnsynced),
            ])
            .collect();
        let mut split_seen = 0;
        for (seed, (path, after, mode)) in cuts.into_iter().enumerate() {
            let io = SimIo::new(seed as u64);
            let node = Node::open(on_sim(&io)).await.unwrap();
            let before = fill(&node, 300, 4_000_000_000_000).await;
            io.inject(
                Fault::new(Op::MUTATING, Action::PowerCut(mode))
                    .on_path(path)
                    .after(after),
            );
            let _ = tokio::time::timeout(Duration::from_secs(20), node.split_shard(1, None)).await;
            let image = io
                .after_cut()
                .unwrap_or_else(|| io.crash_image(PowerCut::DropUnsynced));
            let _ = tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await;
            drop(node);
            let node = Node::open(on_sim(&image)).await.unwrap();
            let why = format!("cut on {path} after {after} ({mode:?})");
            for (key, want) in &before {
                assert_eq!(get(&node, key).await.as_ref(), Some(want), "{key}, {why}");
            }
            let child = match node.shards().len() {
                5 => {
                    split_seen += 1;
                    4
                }
                4 => {
                    // The id the cut split took is not used again.
                    let (child, _) = split_of(node.split_shard(1, None).await.expect(&why));
                    assert_unchanged(&node, &before).await;
                    child
                }
                n => panic!("{n} shards after a {why}"),
            };
            // Whole: the two halves hold every key of the shard once.
            let held: u64 = [1, child]
                .iter()
                .map(|&id| node.shards().get(id).unwrap().engine().len())
                .sum();
            let of_shard = before
                .keys()
                .filter(|k| {
                    let slot = key_slot(k.as_bytes());
                    (4096..8192).contains(&slot)
                })
                .count() as u64;
            assert_eq!(held, of_shard, "{why}");
            let _ = node.shutdown().await;
        }
        assert!(split_seen > 0, "no cut left a split that had happened");
    }

    /// A node whose map has not learnt of a split yet asks the parent's leader for the
    /// parent's part of a whole-keyspace read with the slots it routes there, the parent's
    /// range from before the split: refused (`TRYAGAIN`, the asker plans its read again from
    /// a newer map) rather than answered without the keys that moved. Asked with the slots
    /// the parent kept, it answers for exactly those.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keyspace_part_asked_with_the_slots_from_before_a_split_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let before = fill(&node, 300, 4_000_000_000_000).await;
        let (first, last) = node.shards().get(1).unwrap().slots().unwrap();
        let (child, at) = split_of(node.split_shard(1, None).await.unwrap());
        let part = |cmd: Command, slots: (u16, u16)| {
            let node = node.clone();
            async move {
                let scope = crate::node::Scope {
                    shard: 1,
                    slots: Some(slots),
                };
                node.execute_forwarded(cmd, 1, false, Some(scope)).await
            }
        };
        let keys = || Command::Keys { pattern: b("*") };
        for cmd in [keys(), Command::DbSize] {
            let stale = part(cmd, (first, last)).await;
            assert!(
                matches!(stale, Err(CommandError::TryAgain(_))),
                "asked for slots {first}-{last} of a shard that kept {first}-{}: {stale:?}",
                at - 1
            );
        }
        let kept: std::collections::BTreeSet<Bytes> = before
            .keys()
            .filter(|k| (first..at).contains(&key_slot(k.as_bytes())))
            .map(|k| b(k))
            .collect();
        let Ok(Reply::Keys(listed)) = part(keys(), (first, at - 1)).await else {
            panic!("KEYS of the parent's kept slots failed");
        };
        assert_eq!(
            listed
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
            kept
        );
        let counted = part(Command::DbSize, (first, at - 1)).await;
        assert!(
            matches!(counted, Ok(Reply::Int(n)) if n as usize == kept.len()),
            "{counted:?}"
        );
        // Through the node, whose map knows both halves: every key once.
        let Ok(Reply::Keys(all)) = node.execute(keys()).await else {
            panic!("KEYS failed");
        };
        assert_eq!(all.len(), before.len());
        assert!(node.shards().get(child).is_some());
        node.shutdown().await.unwrap();
    }

    /// While a split is being applied here (held by the test), the map may already name
    /// its child: a part asked for the parent's whole range, by a node that knows neither,
    /// is refused, not answered without the child's slots (the replica filters what it
    /// reads by its slot map, which routes them to the child).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keyspace_part_is_refused_while_the_map_routes_some_of_its_slots_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let before = fill(&node, 300, 4_000_000_000_000).await;
        let (first, last) = node.shards().get(1).unwrap().slots().unwrap();
        let at = 6000;
        let hold = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        *node.shards().hold_splits.lock() = Some(hold.clone());
        let split = tokio::spawn({
            let node = node.clone();
            async move { node.split_shard(1, Some(at)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(node.shards().get(1).unwrap().slots(), Some((first, last)));
        // As if the map had the child's report already.
        node.shards().set_placed([(99, at, last)]);
        let scope = crate::node::Scope {
            shard: 1,
            slots: Some((first, last)),
        };
        let keys = Command::Keys { pattern: b("*") };
        let part = node.execute_forwarded(keys, 1, false, Some(scope)).await;
        node.shards().set_placed([]);
        assert!(
            matches!(part, Err(CommandError::TryAgain(_))),
            "answered with the slots the map routes to the child left out: {part:?}"
        );
        hold.add_permits(1);
        split.await.unwrap().unwrap();
        assert_eq!(before.len(), 300);
        node.shutdown().await.unwrap();
    }

    /// A split whose apply takes long (a big shard's copy; here held by the test) holds the
    /// shard's other writes until it lands, and none of them fails for it; the moving slots
    /// are refused meanwhile on the node that proposed it, to be routed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_split_holds_writes_without_failing_them_and_refuses_the_moving_slots() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let before = fill(&node, 300, 4_000_000_000_000).await;
        let at = 6000;
        let moving = before
            .keys()
            .find(|k| (at..8192).contains(&key_slot(k.as_bytes())))
            .unwrap()
            .clone();
        let staying = before
            .keys()
            .find(|k| (4096..at).contains(&key_slot(k.as_bytes())))
            .unwrap()
            .clone();
        let hold = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        *node.shards().hold_splits.lock() = Some(hold.clone());
        let split = tokio::spawn({
            let node = node.clone();
            async move { node.split_shard(1, Some(at)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let write = tokio::spawn({
            let node = node.clone();
            let key = staying.clone();
            async move { node.execute(set(&key, "during")).await }
        });
        // The moving slots are leaving: a read of the parent's replica is refused.
        let read = node
            .execute_forwarded(
                Command::ShardRead {
                    shard: 1,
                    keys: vec![b(&moving)],
                },
                0,
                false,
                None,
            )
            .await;
        assert!(matches!(read, Err(CommandError::TryAgain(_))), "{read:?}");
        // Held past the commit wait of a write.
        tokio::time::sleep(crate::proposer::COMMIT_WAIT + Duration::from_secs(1)).await;
        assert!(!write.is_finished());
        hold.add_permits(1);
        let (child, first) = split_of(split.await.unwrap().unwrap());
        assert_eq!(first, at);
        write
            .await
            .unwrap()
            .expect("the write held behind the split");
        assert_eq!(get(&node, &staying).await.unwrap().value, b("during"));
        assert_eq!(node.shards().shard_of_key(moving.as_bytes()), child);
        assert_eq!(get(&node, &moving).await.as_ref(), Some(&before[&moving]));
        node.shutdown().await.unwrap();
    }
}
