//! Followed feeds: the change feed of a shard this node holds no replica of (or one still
//! catching up), kept by a task that follows the shard's feed on a node that holds it
//! (`cairn.peer.v1.Node/Follow`).
//!
//! A followed feed is a [`Feed`] like a replica's: the same batches at the same log indexes
//! (a position names a log index, the same on every replica), with the same split marks, so
//! watchers, client tracking, keyspace notifications and read tokens use it unchanged. It
//! keeps the same window in memory but reads no older history (it has no log): a watch
//! resumed from before the window starts the feed again from its position
//! ([`restarts_for`], at most once per position within the linger), and is told so
//! (`Compacted`) when the feed still does not hold it. The task follows the shard's
//! leader as the map names it, else another member, and resumes from where its feed stands
//! when that node goes away. The feed is in touch while messages arrive: a holder sends one
//! at least every [`FOLLOW_HEARTBEAT`], and ends the stream when its own replica is out of
//! touch with its group (it could be behind without knowing).
//!
//! A node follows a shard's feed only while it needs it: of the shards the slot map routes
//! that it holds no whole replica of, those a watcher here reads, or that a read token or a
//! watch start asked for within [`NodeOptions::follow_linger`] ([`Node::want_feeds`];
//! [`Node::follow_feeds`], every touch check and at once when asked). A write is thus sent
//! to the nodes that watch its shard, not to every node. A read token, or a watch, that
//! needs a feed not followed yet waits up to [`FOLLOW_START_WAIT`] for its first message;
//! a watch resuming from a token starts the followed feed where the token stands, so it is
//! not told `compacted` for history the holder still keeps (in its window or its log) and
//! the follower's window can take.
//!
//! [`NodeOptions::follow_linger`]: crate::node::NodeOptions::follow_linger
//! [`FOLLOW_START_WAIT`]: crate::node::FOLLOW_START_WAIT

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::peer as pb;
use cairn_raft::{ApplyObserver, WriteOp};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::feed::{Feed, Pos, SplitMark};

/// Longest a node holding a shard stays silent on a follow stream.
pub const FOLLOW_HEARTBEAT: Duration = Duration::from_millis(500);
/// Pause before a follower tries the shard's holders again.
const FOLLOW_RETRY: Duration = Duration::from_millis(200);
/// How long a follow stream may stay silent (or take to open) before this node gives up on
/// its holder and follows the next one: a holder that is paused or cut off sends nothing and
/// ends nothing, and its connection may stay open.
pub const FOLLOW_SILENCE_MAX: Duration = FOLLOW_HEARTBEAT.saturating_mul(4);
/// Most events, and bytes of keys and values, in one follow message (of several batches).
const FOLLOW_EVENTS_MAX: usize = 4096;
const FOLLOW_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest follow message a node takes. A message's first batch goes whole however large:
/// one log entry's writes (up to a WAL record, 64 MiB) and the keys a `Clear` in it removed
/// (as many as the shard held). A smaller bound would break the stream at such a batch
/// every time it was sent again, and the feed would never get past it.
pub(crate) const FOLLOW_MESSAGE_BYTES_MAX: usize = 1 << 30;

/// One message of a follow stream (postcard, in `FollowMessage.update`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowUpdate {
    /// The parent's log index of the split that created the shard (0: the first layout).
    pub born: u64,
    /// Entries with changes, in order: log index, ops, keys a `Clear` among them removed.
    pub batches: Vec<(u64, Vec<WriteOp>, Vec<Bytes>)>,
    /// Splits of the shard applied after the previous message, up to `upto`: (split index,
    /// child, first slot, last slot).
    pub splits: Vec<(u64, u32, u16, u16)>,
    /// Every change up to this index is told.
    pub upto: u64,
    /// The position asked for is older than what the holder keeps: history restarts at
    /// `upto`.
    pub compacted: bool,
}

/// A shard's feed something on this node asked for ([`Node::want_feeds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Demand {
    /// When it was last asked for, in ms since the node started.
    pub at: u64,
    /// The log index a watch asked to resume after while the node had no feed of the shard:
    /// where a followed feed started for it begins (the earliest asked, until one starts).
    pub from: Option<u64>,
    /// The last time a watch's token started the feed again ([`restarts_for`]): the log
    /// index it asked for, and when (ms since the node started).
    pub restarted: Option<(u64, u64)>,
}

/// Of `candidates` (the shards routed here that this node holds no whole replica of), the
/// ones whose feed the node follows at `now` (ms): those a watcher here reads (`watched`)
/// and those asked for less than `linger_ms` ago.
pub(crate) fn to_follow(
    candidates: &std::collections::BTreeSet<u32>,
    watched: impl Fn(u32) -> bool,
    demand: &std::collections::HashMap<u32, Demand>,
    now: u64,
    linger_ms: u64,
) -> std::collections::BTreeSet<u32> {
    candidates
        .iter()
        .copied()
        .filter(|id| {
            watched(*id)
                || demand
                    .get(id)
                    .is_some_and(|d| now.saturating_sub(d.at) < linger_ms)
        })
        .collect()
}

/// Whether a following is started again for a watch that resumes after log index `from`:
/// its feed not started yet (`feed` `None`: no message yet), when `from` is earlier than
/// it was asked to start after (`started_from`; `None`: from where the holder stood); its
/// feed started (`feed`: where its history starts, whether a watcher reads it), when the
/// feed does not hold `from` (the holder may, in its window or its log) and no watcher
/// reads it (one that does is not cut from under its watchers). Either way only from
/// earlier than a restart for a watch made within the linger (`restarted_before`): a
/// position the feed does not come to hold once started again (older than the holder
/// keeps, or past the feed's window at once) is told `compacted` rather than restarting
/// the shared feed on every retry.
pub(crate) fn restarts_for(
    from: u64,
    started_from: Option<u64>,
    feed: Option<(u64, bool)>,
    restarted_before: Option<u64>,
) -> bool {
    let wanted = match feed {
        None => started_from.is_none_or(|start| from < start),
        Some((compacted, watched)) => from < compacted && !watched,
    };
    wanted && restarted_before.is_none_or(|before| from < before)
}

/// A followed feed on this node and its task.
#[derive(Debug)]
pub(crate) struct Following {
    /// Set once the first message arrived.
    feed: Arc<OnceLock<Arc<Feed>>>,
    /// When it started, in ms since the node started.
    since: u64,
    /// The log index it was asked to start after (`None`: from where the holder stood).
    from: Option<u64>,
    /// When the last message arrived, in ms since the node started.
    heard: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(feed) = self.feed.get() {
            feed.retire();
        }
    }
}

impl Node {
    /// Shard `id`'s change feed on this node: its replica's when it holds the whole of it,
    /// else the followed feed once it has started, else its replica's if any.
    pub(crate) fn feed_for(&self, id: u32) -> Option<Arc<Feed>> {
        let local = self.shards.get(id);
        if let Some(shard) = &local {
            if self.serves_keyspace(shard) {
                return Some(shard.feed.clone());
            }
        }
        let followed = self
            .followed
            .lock()
            .get(&id)
            .and_then(|f| f.feed.get().cloned());
        followed.or_else(|| {
            local
                .filter(|s| !s.feed.is_superseded())
                .map(|s| s.feed.clone())
        })
    }

    /// Asks for the feeds of `wants` (a shard, and the log index a watch resumes after):
    /// one this node holds no whole replica of is followed from now (from the index, for a
    /// watch) until nothing asked for it for [`NodeOptions::follow_linger`] and no watcher
    /// reads it. `true` when one of the routed ones has no feed here yet.
    ///
    /// [`NodeOptions::follow_linger`]: crate::node::NodeOptions::follow_linger
    pub(crate) fn want_feeds(&self, wants: &[(u32, Option<u64>)]) -> bool {
        // A shard held whole here needs no followed feed (a one-node server never gets
        // past this).
        let wants: Vec<(u32, Option<u64>)> = wants
            .iter()
            .copied()
            .filter(|(id, _)| {
                self.shards
                    .get(*id)
                    .is_none_or(|shard| !self.serves_keyspace(&shard))
            })
            .collect();
        if wants.is_empty() {
            return false;
        }
        let routed = self.routed_now();
        let now = self.uptime_ms();
        let linger = self.options().follow_linger.as_millis() as u64;
        let mut missing = false;
        let mut demand = self.feed_demand.lock();
        for (id, from) in wants {
            if !routed.contains(&id) {
                continue;
            }
            let asked = demand.entry(id).or_insert(Demand {
                at: now,
                from: None,
                restarted: None,
            });
            let restarted_before = asked
                .restarted
                .filter(|&(_, at)| now.saturating_sub(at) < linger)
                .map(|(index, _)| index);
            let restarted =
                from.is_some_and(|from| self.restart_before(id, from, restarted_before));
            if let (true, Some(from)) = (restarted, from) {
                asked.restarted = Some((from, now));
            }
            let none = restarted || self.feed_for(id).is_none();
            missing |= none;
            asked.at = now;
            if none {
                asked.from = match (asked.from, from) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        drop(demand);
        if missing {
            self.follow_wake.notify_one();
        }
        missing
    }

    /// Drops the followed feed of shard `id` when a watch asks to resume after log index
    /// `from`, which it does not hold and will not ([`restarts_for`]; `restarted_before`:
    /// the position of the last such restart within the linger): the feed is then followed
    /// again from `from` (the holder may still keep that history, in its window or its
    /// log). `true` when it was dropped.
    fn restart_before(&self, id: u32, from: u64, restarted_before: Option<u64>) -> bool {
        let mut followed = self.followed.lock();
        let stale = followed.get(&id).is_some_and(|f| {
            restarts_for(
                from,
                f.from,
                f.feed.get().map(|feed| (feed.compacted(), feed.watched())),
                restarted_before,
            )
        });
        if stale {
            followed.remove(&id);
        }
        stale
    }

    /// [`Node::want_feeds`], then waits up to [`FOLLOW_START_WAIT`] for a feed of each of
    /// them that has none here yet, while its following is new (one whose holders are all
    /// unreachable is not waited for again on every call).
    ///
    /// [`FOLLOW_START_WAIT`]: crate::node::FOLLOW_START_WAIT
    pub(crate) async fn ready_feeds(&self, wants: &[(u32, Option<u64>)]) {
        if !self.want_feeds(wants) {
            return;
        }
        let wait = crate::node::FOLLOW_START_WAIT;
        let deadline = tokio::time::Instant::now() + wait;
        let routed = self.routed_now();
        let starting = |id: u32| {
            routed.contains(&id)
                && self.feed_for(id).is_none()
                && self.followed.lock().get(&id).is_none_or(|f| {
                    self.uptime_ms().saturating_sub(f.since) < wait.as_millis() as u64
                })
        };
        while wants.iter().any(|&(id, _)| starting(id)) {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The shards the slot map routes here, from the cached tiling when the map tiles.
    fn routed_now(&self) -> std::collections::BTreeSet<u32> {
        match self.shards.routed_ranges() {
            Ok(tiled) => tiled.keys().copied().collect(),
            Err(_) => self.shards.routed(),
        }
    }

    /// Wakes when a feed is asked for that is not followed yet ([`Node::want_feeds`]).
    pub(crate) async fn feed_wanted(&self) {
        self.follow_wake.notified().await;
    }

    /// Follows the shards routed here that this node holds no whole replica of that a
    /// watcher here reads or something asked for lately ([`to_follow`]), and stops
    /// following the rest (a followed feed of a shard this node now holds ends its watchers,
    /// which resume on the replica).
    pub(crate) fn follow_feeds(self: &Arc<Self>) {
        let candidates: std::collections::BTreeSet<u32> = self
            .shards
            .routed()
            .into_iter()
            .filter(|id| {
                self.shards
                    .get(*id)
                    .is_none_or(|shard| !self.serves_keyspace(&shard))
            })
            .collect();
        let replicas = self.shards.list();
        // A replica that holds the whole shard again takes its watchers back before the
        // followed feed they are on ends.
        for shard in &replicas {
            if self.serves_keyspace(shard) {
                shard.feed.supersede(false);
            }
        }
        let now = self.uptime_ms();
        let linger = self.options().follow_linger.as_millis() as u64;
        // Held until the feeds are settled (taken before `followed`, as `want_feeds` does): a
        // watch that asked for a feed just now, and is about to read it, keeps it.
        let mut demand = self.feed_demand.lock();
        demand.retain(|_, d| now.saturating_sub(d.at) < linger);
        let mut followed = self.followed.lock();
        let wanted = to_follow(
            &candidates,
            |id| {
                // Watchers of the followed feed, or of this node's replica that no longer
                // holds the whole shard: they move to the followed feed.
                followed
                    .get(&id)
                    .and_then(|f| f.feed.get())
                    .is_some_and(|feed| feed.watched())
                    || self
                        .shards
                        .get(id)
                        .is_some_and(|shard| !shard.feed.is_retired() && shard.feed.watched())
            },
            &demand,
            now,
            linger,
        );
        followed.retain(|id, _| wanted.contains(id));
        let mut started = Vec::new();
        for id in wanted {
            followed.entry(id).or_insert_with(|| {
                // Where this node's replica stands, if it has one that no longer holds the
                // whole shard (the group moved it away, or it is a new one still catching
                // up): the followed feed starts there, so a watch of the replica's feed,
                // ended when it leaves, resumes on the followed one without a gap. Where a
                // watch asked to resume, if earlier.
                let stood = self
                    .shards
                    .get(id)
                    .filter(|shard| !shard.feed.is_retired())
                    .map(|shard| shard.feed.last());
                let asked = demand.get(&id).and_then(|d| d.from);
                started.push((id, asked));
                let from = match (stood, asked) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let feed = Arc::new(OnceLock::new());
                let heard = Arc::new(AtomicU64::new(now));
                let task = tokio::spawn(follow(
                    Arc::downgrade(self),
                    id,
                    from,
                    feed.clone(),
                    heard.clone(),
                ));
                Following {
                    feed,
                    since: now,
                    from,
                    heard,
                    task,
                }
            });
        }
        crate::metrics::followed_feeds(followed.len());
        drop(followed);
        // A start asked from an index has used it.
        for (id, asked) in started {
            if let Some(d) = demand.get_mut(&id).filter(|_| asked.is_some()) {
                d.from = None;
            }
        }
        drop(demand);
        // A replica that no longer holds the whole shard hands its watchers to the feed
        // followed from where it stands (started above), and stops serving followers.
        for shard in &replicas {
            if !self.serves_keyspace(shard) {
                shard.feed.supersede(true);
            }
        }
    }

    /// The shards whose feeds this node follows now.
    pub fn followed_shards(&self) -> Vec<u32> {
        let mut shards: Vec<u32> = self.followed.lock().keys().copied().collect();
        shards.sort_unstable();
        shards
    }

    /// Followed shards whose feed has heard nothing for `within`.
    pub(crate) fn followed_out_of_touch(&self, within: Duration) -> Vec<u32> {
        let now = self.uptime_ms();
        let within = within.as_millis() as u64;
        self.followed
            .lock()
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.heard.load(Ordering::Acquire)) >= within)
            .map(|(id, _)| *id)
            .collect()
    }

    fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The gRPC addresses of the nodes holding shard `id`, its leader first, as the map's
    /// placement names them (this node left out).
    fn holders(&self, id: u32) -> Vec<String> {
        let Some(placement) = self.meta.shard(id) else {
            return Vec::new();
        };
        let me = self.raft_id();
        std::iter::once(placement.leader)
            .chain(placement.voters.iter().copied())
            .chain(placement.caught_up.iter().copied())
            .filter(|n| *n != me)
            .fold(Vec::new(), |mut seen, n| {
                if !seen.contains(&n) {
                    seen.push(n);
                }
                seen
            })
            .into_iter()
            .filter_map(|n| self.meta.node(n).map(|r| r.grpc_addr))
            .collect()
    }

    /// The follow stream of shard `shard` served to another node, from after log index
    /// `after` (`None`: from now). Refused when this node holds no whole replica of it.
    pub(crate) fn serve_follow(
        self: &Arc<Self>,
        shard: u32,
        after: Option<u64>,
    ) -> Result<crate::peer::FollowStream, tonic::Status> {
        let replica = self
            .shards
            .get(shard)
            .filter(|s| self.serves_keyspace(s))
            .map(|s| Arc::clone(&s))
            .ok_or_else(|| {
                tonic::Status::not_found(format!("no whole replica of shard {shard} here"))
            })?;
        let feed = replica.feed.clone();
        // Never from past what this replica applied: a resume token from the future (a
        // client's guess) must not seed the follower's feed there, or every watch and read
        // token of the shard on that node would stand past the writes to come. A follower
        // whose feed is ahead of this replica (it followed one further on) skips what it
        // already has.
        let last = feed.last();
        let start = after.map_or(last, |after| after.min(last));
        let state = FollowState {
            replica,
            pos: Pos::after(start),
            first: true,
            wake: self.feed_wake.subscribe(),
        };
        Ok(Box::pin(futures::stream::unfold(
            Some(state),
            |state| async move {
                let mut state = state?;
                match state.next().await {
                    Ok(update) => {
                        let message = pb::FollowMessage {
                            update: postcard::to_stdvec(&update)
                                .expect("an update serialises")
                                .into(),
                        };
                        Some((Ok(message), Some(state)))
                    }
                    Err(status) => Some((Err(status), None)),
                }
            },
        )))
    }
}

/// Where a follow stream served here stands.
struct FollowState {
    replica: Arc<crate::shard::Shard>,
    pos: Pos,
    first: bool,
    wake: tokio::sync::watch::Receiver<u64>,
}

impl FollowState {
    /// The next message: changes, or where the feed stands after [`FOLLOW_HEARTBEAT`]
    /// without any.
    async fn next(&mut self) -> Result<FollowUpdate, tonic::Status> {
        let feed = self.replica.feed.clone();
        let due = tokio::time::Instant::now() + FOLLOW_HEARTBEAT;
        loop {
            if feed.has_left() || *self.wake.borrow_and_update() == crate::feed::WAKE_STOPPED {
                return Err(tonic::Status::unavailable(
                    "the replica followed is gone from this node, or no longer holds the whole \
                     shard",
                ));
            }
            if !self.replica.group.in_touch(super::TOUCH_LOST_AFTER) {
                return Err(tonic::Status::unavailable(
                    "the replica followed is out of touch with its group",
                ));
            }
            let done = self.pos.done();
            let update = match feed.since(self.pos, FOLLOW_EVENTS_MAX, FOLLOW_BYTES_MAX) {
                Err(compacted) => FollowUpdate {
                    born: feed.born().unwrap_or(0),
                    batches: Vec::new(),
                    splits: Vec::new(),
                    upto: compacted.revision,
                    compacted: true,
                },
                Ok(since) => FollowUpdate {
                    born: feed.born().unwrap_or(0),
                    batches: since
                        .batches
                        .iter()
                        .map(|b| (b.index, b.ops().to_vec(), b.cleared().to_vec()))
                        .collect(),
                    splits: feed
                        .splits_between(done, since.upto)
                        .into_iter()
                        .map(|m| (m.index, m.child, m.first_slot, m.last_slot))
                        .collect(),
                    upto: since.upto,
                    compacted: false,
                },
            };
            self.pos = Pos::after(update.upto);
            let news = !update.batches.is_empty() || !update.splits.is_empty();
            if self.first || news || update.compacted || tokio::time::Instant::now() >= due {
                self.first = false;
                return Ok(update);
            }
            tokio::select! {
                _ = self.wake.changed() => {}
                () = tokio::time::sleep_until(due) => {}
            }
        }
    }
}

/// The task keeping one followed feed: follows the shard on its holders in turn, until
/// the node drops the feed (which aborts it) or stops.
async fn follow(
    node: Weak<Node>,
    shard: u32,
    from: Option<u64>,
    feed: Arc<OnceLock<Arc<Feed>>>,
    heard: Arc<AtomicU64>,
) {
    loop {
        let Some(holders) = node.upgrade().map(|n| n.holders(shard)) else {
            return;
        };
        for addr in holders {
            let Some(n) = node.upgrade() else {
                return;
            };
            if let Err(e) = follow_from(&n, &addr, shard, from, &feed, &heard).await {
                tracing::debug!(shard, holder = %addr, error = %e, "following a shard's feed");
            }
        }
        tokio::time::sleep(FOLLOW_RETRY).await;
    }
}

/// Follows shard `shard` on the node at `addr` until the stream ends: from where the feed
/// stands, else from after log index `from`, else from now.
async fn follow_from(
    node: &Node,
    addr: &str,
    shard: u32,
    from: Option<u64>,
    feed: &OnceLock<Arc<Feed>>,
    heard: &AtomicU64,
) -> anyhow::Result<()> {
    let channel = node.peers().channel(addr)?;
    let mut client = pb::node_client::NodeClient::new(channel)
        .max_decoding_message_size(FOLLOW_MESSAGE_BYTES_MAX);
    let after = feed.get().map(|f| f.last()).or(from);
    let request = pb::FollowRequest {
        shard,
        after: after.unwrap_or(0),
        from_now: after.is_none(),
    };
    let silent = || anyhow::anyhow!("the holder sent nothing for {FOLLOW_SILENCE_MAX:?}");
    let mut stream = tokio::time::timeout(FOLLOW_SILENCE_MAX, client.follow(request))
        .await
        .map_err(|_| silent())??
        .into_inner();
    let started = Instant::now();
    while let Some(message) = tokio::time::timeout(FOLLOW_SILENCE_MAX, stream.message())
        .await
        .map_err(|_| silent())??
    {
        let update: FollowUpdate = postcard::from_bytes(&message.update)?;
        let feed = feed.get_or_init(|| {
            // Asked from `after`, the first message's batches follow it, or follow where
            // the holder stood when `after` was past it (`upto`, or just before its first
            // batch: no change came in between).
            let stood = update
                .batches
                .first()
                .map_or(update.upto, |(index, ..)| index.saturating_sub(1));
            Arc::new(
                Feed::new(
                    shard,
                    after.map_or(update.upto, |after| after.min(stood)),
                    node.options().watch_history,
                    node.feed_wake.clone(),
                )
                .born_at(update.born),
            )
        });
        if update.compacted {
            feed.reset(update.upto);
        }
        // Split marks first: a watcher woken by the batches must not pass a split unseen.
        for (index, child, first_slot, last_slot) in update.splits {
            feed.note_split(SplitMark {
                index,
                child,
                first_slot,
                last_slot,
            });
        }
        // What the feed already has (told by a holder further on) is not told twice.
        let had = feed.last();
        for (index, ops, cleared) in update.batches {
            if index > had {
                feed.applied(index, &Arc::new(ops), &cleared);
            }
        }
        feed.advance(update.upto);
        heard.store(node.uptime_ms(), Ordering::Release);
    }
    anyhow::ensure!(
        started.elapsed() > FOLLOW_HEARTBEAT,
        "the stream ended at once"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn a_feed_is_started_again_only_where_it_may_get_what_a_watch_asks() {
        // Started from where the holder stood (a read token): from a watch's token older
        // than its history, unless a watcher reads it.
        assert!(restarts_for(5, None, Some((9, false)), None));
        assert!(!restarts_for(5, None, Some((9, true)), None));
        assert!(!restarts_for(9, None, Some((9, false)), None));
        // Started again for 5 within the linger, and it still does not hold 5 (the holder
        // keeps less, or the feed's window moved past at once): not again for 5 or later (it
        // is told `compacted`), again for earlier.
        assert!(!restarts_for(5, Some(5), Some((9, false)), Some(5)));
        assert!(!restarts_for(7, Some(5), Some((9, false)), Some(5)));
        assert!(restarts_for(3, Some(5), Some((9, false)), Some(5)));
        // Only the feed's window moved past a position (no restart lately): again.
        assert!(restarts_for(7, Some(5), Some((9, false)), None));
        // No message yet: from earlier than asked, or than where the holder stood.
        assert!(restarts_for(5, None, None, None));
        assert!(restarts_for(4, Some(5), None, None));
        assert!(!restarts_for(5, Some(5), None, None));
        assert!(!restarts_for(6, Some(5), None, None));
        assert!(!restarts_for(4, Some(5), None, Some(4)));
    }

    #[test]
    fn a_feed_is_followed_while_watched_or_asked_for_within_the_linger() {
        let candidates: BTreeSet<u32> = [1, 2, 3, 4].into();
        let demand: HashMap<u32, Demand> = [
            (
                2,
                Demand {
                    at: 1_000,
                    from: None,
                    restarted: None,
                },
            ),
            (
                3,
                Demand {
                    at: 9_001,
                    from: Some(7),
                    restarted: None,
                },
            ),
            // Asked for, but this node holds the whole shard (not a candidate).
            (
                5,
                Demand {
                    at: 9_500,
                    from: None,
                    restarted: None,
                },
            ),
        ]
        .into();
        let watched = |id: u32| id == 4;
        let follow = |now| to_follow(&candidates, watched, &demand, now, 1_000);
        // Shard 2 was asked for 8.5 s ago, past the linger; 3 just under it.
        assert_eq!(follow(9_500), [3, 4].into());
        // At the edge of the linger, it stops.
        assert_eq!(follow(10_000), [3, 4].into());
        assert_eq!(follow(10_001), [4].into());
        // Asked for within the linger, both.
        assert_eq!(follow(1_999), [2, 3, 4].into());
        // Nothing asked or watched: nothing followed.
        assert!(to_follow(&candidates, |_| false, &HashMap::new(), 0, 1_000).is_empty());
    }
}
