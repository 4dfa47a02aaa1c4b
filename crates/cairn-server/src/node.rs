//! The node: the one executor every front end calls.
//!
//! Request path: key → slot → shard. Reads are served from the shard replicas' engines;
//! writes go to the shard's proposer ([`crate::proposer`]), which evaluates them, proposes the
//! outcome to the shard's Raft group, and answers once the entry is committed and applied.
//! Relative deadlines become absolute here, at propose time. A multi-key write must keep to
//! one slot (`CROSSSLOT` otherwise, as Redis Cluster); DEL and FLUSHDB fan out per shard.
//!
//! This file holds the `Node` itself and `execute`, the entry point with its retries; each
//! part of the work has a room of its own: `open` (data directory, bootstrap, join),
//! `route` (which node serves a shard's part, forwarding), `write` (checks, preparation,
//! [`PendingWrite`]), `read` (reads of this node's replicas), `status` (cluster map and
//! statistics) and `background` (timers: expiry, sync, checkpoints, placement; shutdown).

use std::net::SocketAddr;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_raft::{Groups, Peers};
use cairn_wal::Wal;

use crate::command::Command;
use crate::config::SyncMode;
use crate::error::CommandError;
use crate::health::WriteHealth;
use crate::meta::Meta;
use crate::reply::Reply;
use crate::scan::ScanCursors;
use crate::shards::{NodeIdentity, Shards};

mod background;
mod fanout;
pub(crate) mod follow;
mod open;
mod publish;
mod read;
mod route;
mod status;
mod txn;
mod write;

pub use write::PendingWrite;

/// What a forwarded request is limited to: one shard (a FLUSHDB of it, or its part of a
/// whole-keyspace read), and for a read, the slots the asking node routes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub shard: u32,
    /// The slots the asker routes to the shard. The replica that serves the read must hold
    /// exactly these, or one of the two nodes has not seen a split yet and the read would
    /// miss (or repeat) the keys that moved: `TRYAGAIN`. `None`: the whole shard, as the
    /// serving replica holds it (a FLUSHDB).
    pub slots: Option<(u16, u16)>,
}

impl Scope {
    /// The whole of `shard`, as the serving replica holds it.
    pub fn shard(shard: u32) -> Self {
        Self { shard, slots: None }
    }
}

/// How often the active-expiry cycle runs.
pub const EXPIRE_TICK: Duration = Duration::from_millis(100);
/// Most expired keys deleted per shard per tick (bounded work, as Redis's cycle).
pub const EXPIRE_KEYS_PER_TICK: usize = 200;
/// How often every shard takes a snapshot (an engine checkpoint) so its log can be purged.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Log size past which the node checkpoints without waiting for the interval.
pub const LOG_BYTES_CHECKPOINT: u64 = 512 * 1024 * 1024;
/// With `--sync everysec`, how often the log is synced.
pub const EVERYSEC_INTERVAL: Duration = Duration::from_secs(1);
/// How long opening a node waits for the groups it alone votes in to elect it.
pub const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// Largest key, in bytes.
pub const KEY_BYTES_MAX: usize = cairn_storage::KEY_BYTES_MAX;
/// Most entries one range scan returns.
pub const SCAN_RANGE_LIMIT_MAX: usize = 10_000;
/// How long [`Node::execute`] keeps retrying a request refused with `TRYAGAIN` (a shard
/// without a leader, a leader that moved): a failover takes about one election timeout.
pub const ROUTE_RETRY_WINDOW: Duration = Duration::from_secs(5);
/// First pause before such a retry; it doubles up to [`ROUTE_RETRY_MAX`].
pub const ROUTE_RETRY_FIRST: Duration = Duration::from_millis(10);
/// Longest pause between retries.
pub const ROUTE_RETRY_MAX: Duration = Duration::from_millis(200);

/// What a node needs to open.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    /// Shard count of a new data directory.
    pub shards: u32,
    pub value_bytes_max: usize,
    pub sync: SyncMode,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub resp_addr: SocketAddr,
    /// Every file and directory the node touches goes through this: [`cairn_io::StdIo`] in
    /// production, a simulated disk in power-cut tests.
    pub io: Arc<dyn cairn_io::Io>,
    /// Segment sizes of the log and the engines (small ones make tests rotate, merge and
    /// purge).
    pub tuning: StorageTuning,
    /// A member's gRPC address to join through, when the data directory is new.
    pub join: Option<String>,
    /// Voters per shard in a cluster this node creates.
    pub replicas: u32,
    /// A cluster this node creates keeps each shard's data on its voters only (no learner
    /// replica on every other node).
    pub replicas_only: bool,
    /// Silence after which the metadata leader marks a node down.
    pub down_after: Duration,
    /// Down time after which the balancer replaces a node (`--replace-down-after-ms`).
    pub replace_down_after: Duration,
    /// What the balancer may move at once.
    pub balance: crate::balance::Limits,
    /// Bytes per second of snapshots this node sends, every group together (0: no limit).
    pub move_bytes_per_sec: u64,
    /// Live bytes past which the metadata leader splits a shard (0: never by size).
    pub split_shard_bytes: u64,
    /// The wall clock TTL deadlines are set and compared with: the system's in production, a
    /// [`cairn_storage::ManualClock`] in tests that move time themselves.
    pub clock: Arc<dyn cairn_storage::Clock>,
    /// What the node's gRPC address listens on and its peer connections run over (Raft
    /// traffic, forwarded commands, joins): [`cairn_raft::transport::Tcp`] in production,
    /// in-memory pipes with links that can be cut in tests.
    pub network: Arc<dyn cairn_raft::transport::Network>,
    /// How much change history each shard keeps for watches (`--watch-history-*`).
    pub watch_history: crate::feed::FeedLimits,
    /// How long the node keeps following a shard's feed after the last watch, read token
    /// or watch start that asked for it ([`FOLLOW_LINGER`]).
    pub follow_linger: Duration,
}

/// Segment and log sizes, not user-facing configuration: the defaults suit a server; tests
/// shrink them so rotation, merge and log purge happen within a few hundred writes.
#[derive(Debug, Clone, Copy)]
pub struct StorageTuning {
    /// The write-ahead log's segment size.
    pub wal_segment_bytes_max: u64,
    /// Each shard engine's segment size.
    pub engine_segment_bytes_max: u64,
    /// Log size past which the node checkpoints without waiting for the interval, purging
    /// each group's whole log behind its snapshot ([`LOG_BYTES_CHECKPOINT`] by default).
    pub log_checkpoint_bytes: u64,
}

impl Default for StorageTuning {
    fn default() -> Self {
        StorageTuning {
            wal_segment_bytes_max: cairn_wal::SEGMENT_BYTES_MAX_DEFAULT,
            engine_segment_bytes_max: cairn_storage::Options::default().segment_bytes_max,
            log_checkpoint_bytes: LOG_BYTES_CHECKPOINT,
        }
    }
}

/// Tests only: a place where a node pauses once (it notifies the first, then waits for the
/// second), set by a test to interleave something at that point.
#[cfg(test)]
pub(crate) type PauseHook = parking_lot::Mutex<
    Option<(
        std::sync::Arc<tokio::sync::Notify>,
        std::sync::Arc<tokio::sync::Notify>,
    )>,
>;

/// Shards whose replicas on a node are out of touch with their groups, in order.
pub type OutOfTouch = Arc<Vec<u32>>;
/// How long a replica may go without hearing from its group (as follower, an append from its
/// leader; as leader, a quorum's acknowledgement) before it counts as out of touch: longer
/// than a failover (about 1 s), so a leader change alone does not count.
pub const TOUCH_LOST_AFTER: Duration = Duration::from_secs(2);
/// How often the background task looks at every replica's touch.
pub const TOUCH_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a replica waits to apply the floor a forwarded read came with
/// ([`Node::reach_read_floor`]) before the read is `TRYAGAIN` (within the asking node's own
/// wait for a read, [`crate::peer::FORWARD_READ_TIMEOUT`]).
pub const READ_FLOOR_WAIT: Duration = Duration::from_secs(1);
/// How long a node keeps following a shard's change feed it holds no whole replica of after
/// the last read token, or watch start, that asked for it, and no watcher reads it
/// ([`NodeOptions::follow_linger`]).
pub const FOLLOW_LINGER: Duration = Duration::from_secs(60);
/// Longest a read token, or a watch, waits for a feed this node starts following.
pub const FOLLOW_START_WAIT: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// While a read forwarded here runs: the shard and log position the asking node's feed
    /// of it had told when it forwarded the read (`ForwardRequest.floor`).
    pub(crate) static READ_FLOOR: (u32, u64);
    /// While a read runs whose watch token was given out just before it
    /// ([`Node::read_after_token`]): the positions the token named, which the read is served
    /// at or after, whatever became of this node's feeds in between (a followed feed dropped
    /// and started again tells less for a while).
    pub(crate) static TOKEN_FLOOR: Arc<crate::watch::Token>;
}

/// One Cairn node. Share it through `Arc`.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    options: NodeOptions,
    shards: Arc<Shards>,
    /// The metadata group's replica (the cluster map).
    meta: Meta,
    /// Connections to the other nodes (Raft traffic and forwarded commands).
    peers: Arc<Peers>,
    /// Metadata-leader bookkeeping for failure detection.
    pub(crate) liveness: parking_lot::Mutex<crate::balancer::Liveness>,
    /// When a handover the balancer asked of a group led here was last refused, by Raft
    /// group id (it is not taken again for a while).
    pub(crate) handovers_refused: parking_lot::Mutex<std::collections::HashMap<u64, Instant>>,
    wal: Arc<Wal>,
    /// Raft groups this node hosts, for the peer service.
    groups: Arc<Groups>,
    health: Arc<WriteHealth>,
    stopping: AtomicBool,
    /// The low half of this node's next transaction id (see [`crate::txn::TxnId`]).
    txn_counter: std::sync::atomic::AtomicU64,
    /// Committed transactions (primary shard, id) whose records the background forgetter
    /// is to forget (bounded: [`crate::txn::FORGETS_QUEUED_MAX`]).
    forgets: tokio::sync::mpsc::Sender<(u32, crate::txn::TxnId)>,
    /// Publish/subscribe: this node's channels and their subscribers.
    pubsub: Arc<crate::pubsub::Hub>,
    /// Messages published here on their way to each other node, by Raft id.
    fanouts: parking_lot::Mutex<std::collections::HashMap<u64, publish::Fanout>>,
    /// Bumped after every apply of every shard's change feed (what watchers sleep on).
    feed_wake: Arc<tokio::sync::watch::Sender<u64>>,
    /// The shards whose replicas here are out of touch with their groups, kept by the
    /// background task (see [`Node::out_of_touch`]).
    touch: tokio::sync::watch::Sender<OutOfTouch>,
    /// A split by size this node (as metadata leader) started is under way.
    pub(crate) splitting: AtomicBool,
    /// When the last split by size this node asked for was not done.
    pub(crate) split_refused_at: parking_lot::Mutex<Option<Instant>>,
    /// The shard placements this node last reported to the map, and when
    /// ([`crate::placement::report_shards`]).
    pub(crate) reported:
        parking_lot::Mutex<std::collections::HashMap<u32, (crate::meta::ShardPlacement, Instant)>>,
    /// When this node first saw each of its replicas dropped from its group, by shard: the
    /// replica's incarnation, and when ([`crate::placement::remove_dropped_replicas`]).
    pub(crate) dropped: parking_lot::Mutex<std::collections::HashMap<u32, (u32, Instant)>>,
    /// Since when each shard's scheduled checkpoint has been waiting for a member being
    /// copied (`checkpoint_waits` in `node/background.rs`).
    checkpoint_waiting: parking_lot::Mutex<std::collections::HashMap<u32, Instant>>,
    /// The feeds this node follows on other nodes, of shards it holds no whole replica of
    /// ([`follow`]).
    followed: parking_lot::Mutex<std::collections::HashMap<u32, follow::Following>>,
    /// Which feeds this node was last asked for, and when ([`Node::want_feeds`]).
    feed_demand: parking_lot::Mutex<std::collections::HashMap<u32, follow::Demand>>,
    /// Wakes the touch task to follow a feed asked for at once.
    follow_wake: tokio::sync::Notify,
    /// The map's shard placements as of the last [`Node::refresh_placements`].
    placements:
        parking_lot::RwLock<Arc<std::collections::BTreeMap<u32, crate::meta::ShardPlacement>>>,
    /// The metadata replica's applied index when the map's shard placements were last
    /// routed from ([`Node::refresh_placements`]).
    placements_seen: std::sync::atomic::AtomicU64,
    /// Why the cluster removed this node, once the balancer task learned it did.
    pub(crate) removed: tokio::sync::watch::Sender<Option<crate::peer::Removed>>,
    /// Tests only: the next multi-shard read pauses before reading its second shard's part
    /// (it notifies the first, then waits for the second), so that a test can commit a
    /// transaction between the parts of one pass.
    #[cfg(test)]
    pub(crate) read_pause: PauseHook,
    /// Tests only: the next cross-shard transaction reads its primary's keys, notifies the
    /// first, and waits for the second before locking the other shards.
    #[cfg(test)]
    pub(crate) txn_pause: PauseHook,
    cursors: ScanCursors,
    started: Instant,
}

impl Node {
    pub fn id(&self) -> &str {
        &self.identity.node_id
    }

    /// Milliseconds since the Unix epoch by the node's clock ([`NodeOptions::clock`]).
    pub fn now_ms(&self) -> u64 {
        self.options.clock.now_ms()
    }

    /// A watch resume token for the shard of `key` (every shard: `None`) as of now on this
    /// node's feeds: taken before a read, a watch from it misses nothing the read did not
    /// see, since the read is served at or after what this node's replicas (or, for a
    /// followed feed, the replica it follows) have applied.
    ///
    /// A shard this node holds no whole replica of is followed for the token (a feed not
    /// followed yet is waited for up to [`FOLLOW_START_WAIT`]). One that does not come in
    /// time is named from its start (position 0): a watch from the token then tells every
    /// change the shard's history still holds, or is told `compacted` (read again). The
    /// read is not failed for it, and the token never leaves out a shard its watch needs.
    pub async fn watch_token(&self, key: Option<&[u8]>) -> String {
        self.watch_position(key).await.to_string()
    }

    /// [`Node::watch_token`], then `read` (a read of what the token covers), served at or
    /// after the positions the token names: a watch from the token misses nothing the read
    /// did not see.
    pub async fn read_after_token<T>(
        &self,
        key: Option<&[u8]>,
        read: impl std::future::Future<Output = T>,
    ) -> (String, T) {
        let token = self.watch_position(key).await;
        let text = token.to_string();
        (text, TOKEN_FLOOR.scope(Arc::new(token), read).await)
    }

    /// [`Node::watch_token`], as positions.
    async fn watch_position(&self, key: Option<&[u8]>) -> crate::watch::Token {
        // A key whose slot no shard owns yet (a split being applied) is in any of them: the
        // token names every shard, as its feeds stand (the read is refused or retried).
        let shard = key
            .map(|key| self.shards.shard_of_key(key))
            .filter(|id| *id != crate::shards::UNMAPPED);
        let shards: Vec<u32> = match shard {
            Some(id) => vec![id],
            None => self.shards.routed().into_iter().collect(),
        };
        // The feeds it lacks, waited for (not for an unmapped key: its read is refused).
        if shard.is_some() || key.is_none() {
            let wants: Vec<(u32, Option<u64>)> = shards.iter().map(|&id| (id, None)).collect();
            self.ready_feeds(&wants).await;
        }
        crate::watch::Token(
            shards
                .into_iter()
                .map(|id| {
                    let at = self.feed_for(id).map_or(0, |feed| feed.last());
                    (id, crate::feed::Pos::after(at))
                })
                .collect(),
        )
    }

    /// The feed of every shard routed here; `NotHere` for one this node has none of yet (a
    /// followed feed not started).
    fn every_feed(&self) -> Result<Vec<Arc<crate::feed::Feed>>, crate::watch::WatchError> {
        self.shards
            .routed()
            .into_iter()
            .map(|id| {
                self.feed_for(id)
                    .ok_or(crate::watch::WatchError::NotHere(id))
            })
            .collect()
    }

    /// The shards whose replicas on this node have been out of touch with their groups for
    /// [`TOUCH_LOST_AFTER`] or more (cut off from the leader, or a leader without a quorum):
    /// the rest of the group may be committing what this replica does not apply, so what it
    /// tells of changes (watches, tracking invalidations) may be silently behind. Watches of
    /// those shards end so that their clients resume on another node, and client tracking
    /// tells its clients to drop their caches ([`crate::tracking`]).
    pub fn out_of_touch(&self) -> OutOfTouch {
        self.touch.borrow().clone()
    }

    /// Follows [`Node::out_of_touch`] as it changes.
    pub fn touch_changes(&self) -> tokio::sync::watch::Receiver<OutOfTouch> {
        self.touch.subscribe()
    }

    /// Routes the slots of shards this node holds no replica of as the map's placements say,
    /// when the map changed since the last call (every [`TOUCH_CHECK_INTERVAL`]).
    pub(crate) fn refresh_placements(&self) {
        let applied = self.meta.group.status().applied.unwrap_or(0);
        if self
            .placements_seen
            .swap(applied, std::sync::atomic::Ordering::AcqRel)
            == applied
        {
            return;
        }
        let placements: std::collections::BTreeMap<u32, crate::meta::ShardPlacement> = self
            .meta
            .shards()
            .into_iter()
            .map(|p| (p.shard, p))
            .collect();
        self.shards.set_placed(
            placements
                .values()
                .map(|p| (p.shard, p.first_slot, p.last_slot)),
        );
        *self.placements.write() = Arc::new(placements);
    }

    /// The map's shard placements, as this node last read them.
    pub(crate) fn placements(
        &self,
    ) -> Arc<std::collections::BTreeMap<u32, crate::meta::ShardPlacement>> {
        self.placements.read().clone()
    }

    /// Looks at every replica's and every followed feed's touch now, telling followers of
    /// [`Node::touch_changes`] when the set of shards out of touch changed.
    pub(crate) fn check_touch(&self) {
        let mut out: Vec<u32> = self
            .shards
            .list()
            .iter()
            // A replica that no longer holds the whole shard tells nothing here (the
            // node follows the shard's feed instead, counted below): a dropped one soon
            // hears nothing from its group, and that is no loss of touch.
            .filter(|shard| !shard.feed.is_superseded())
            .filter(|shard| !shard.group.in_touch(TOUCH_LOST_AFTER))
            .map(|shard| shard.id)
            .chain(self.followed_out_of_touch(TOUCH_LOST_AFTER))
            .collect();
        out.sort_unstable();
        out.dedup();
        self.touch.send_if_modified(|current| {
            if **current == out {
                return false;
            }
            if out.is_empty() {
                tracing::info!("every replica on this node is in touch with its group again");
            } else {
                tracing::warn!(
                    shards = ?out,
                    "replicas on this node are out of touch with their groups: their watches end \
                     and tracking clients drop their caches"
                );
            }
            crate::metrics::shards_out_of_touch(out.len());
            *current = Arc::new(out.clone());
            true
        });
    }

    /// A watch of `selector` on this node's replicas, from the resume token `from` or from
    /// now ([`crate::watch`]); a progress notification after `progress_every` without events.
    /// It ends, and does not start, while one of its shards is out of touch here
    /// ([`Node::out_of_touch`]).
    pub fn watch(
        &self,
        selector: crate::watch::Selector,
        from: Option<&str>,
        progress_every: Duration,
    ) -> Result<crate::watch::Watcher, crate::watch::WatchError> {
        self.watch_with(selector, from, progress_every, true)
    }

    /// [`Node::watch`], going on regardless of touch when `touch` is false (for the node's
    /// own followers of the keyspace, which handle it themselves).
    pub(crate) fn watch_with(
        &self,
        selector: crate::watch::Selector,
        from: Option<&str>,
        progress_every: Duration,
        touch: bool,
    ) -> Result<crate::watch::Watcher, crate::watch::WatchError> {
        use crate::watch::{Selector, Token, WatchError};
        if *self.feed_wake.borrow() == crate::feed::WAKE_STOPPED {
            return Err(WatchError::Stopped);
        }
        let token = from.map(Token::parse).transpose()?;
        // Asked for before they are looked up, so that the node follows (or goes on
        // following) the feeds of the shards it holds no whole replica of.
        self.want_feeds(&self.watch_wants(&selector, token.as_ref()));
        if let Some(unknown) = token
            .iter()
            .flat_map(|t| t.0.keys())
            .find(|&&shard| self.feed_for(shard).is_none())
        {
            // A shard split off that this node has not applied yet, a feed not followed
            // yet, or no shard at all.
            return Err(WatchError::NotHere(*unknown));
        }
        // A key is followed in its shard, and in every shard the token names (the key's
        // shard before a split, whose events up to the split the watch has still to tell);
        // a key whose slot no shard owns yet (a split being applied) in every shard.
        // The selector keeps only its events.
        let feeds = match &selector {
            Selector::Key(key) => match self.shards.shard_of_key(key) {
                crate::shards::UNMAPPED => self.every_feed()?,
                id => {
                    let mut feeds = vec![self.feed_for(id).ok_or(WatchError::NotHere(id))?];
                    for other in token.iter().flat_map(|t| t.0.keys()) {
                        if *other != id {
                            feeds.extend(self.feed_for(*other));
                        }
                    }
                    feeds
                }
            },
            Selector::Prefix(_) | Selector::Range(_) => self.every_feed()?,
        };
        // A split the watch covers whose child has no feed here yet (its placement not read
        // yet): the watch would stop at the split and never follow the child.
        for feed in &feeds {
            if let Some(mark) = feed.split_after(0, |m| {
                selector.overlaps(m.first_slot, m.last_slot) && self.feed_for(m.child).is_none()
            }) {
                return Err(WatchError::NotHere(mark.child));
            }
        }
        crate::watch::Watcher::new(
            selector,
            feeds,
            token.as_ref(),
            progress_every,
            self.feed_wake.subscribe(),
            touch.then(|| self.touch.subscribe()),
        )
    }

    /// [`Node::watch`], once the feeds it needs that this node does not follow yet have
    /// started (waiting up to [`FOLLOW_START_WAIT`]), from where `from` stands.
    pub async fn watch_ready(
        &self,
        selector: crate::watch::Selector,
        from: Option<&str>,
        progress_every: Duration,
    ) -> Result<crate::watch::Watcher, crate::watch::WatchError> {
        let token = from.map(crate::watch::Token::parse).transpose()?;
        self.ready_feeds(&self.watch_wants(&selector, token.as_ref()))
            .await;
        self.watch(selector, from, progress_every)
    }

    /// The feeds a watch of `selector` from `token` reads: the key's shard or every shard
    /// routed here, and every shard the token names, each with where the token stands in it.
    fn watch_wants(
        &self,
        selector: &crate::watch::Selector,
        token: Option<&crate::watch::Token>,
    ) -> Vec<(u32, Option<u64>)> {
        use crate::watch::Selector;
        let mut shards = match selector {
            Selector::Key(key) => match self.shards.shard_of_key(key) {
                crate::shards::UNMAPPED => self.shards.routed(),
                id => std::iter::once(id).collect(),
            },
            Selector::Prefix(_) | Selector::Range(_) => self.shards.routed(),
        };
        shards.extend(token.iter().flat_map(|t| t.0.keys().copied()));
        shards
            .into_iter()
            .map(|id| (id, token.and_then(|t| t.0.get(&id)).map(|pos| pos.done())))
            .collect()
    }

    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Why writes are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Connections to the other nodes.
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Why the cluster removed this node, once it did (`cairn server` then stops).
    pub fn removal(&self) -> tokio::sync::watch::Receiver<Option<crate::peer::Removed>> {
        self.removed.subscribe()
    }

    /// What the node's gRPC address listens on and its peer connections run over.
    pub fn network(&self) -> &Arc<dyn cairn_raft::transport::Network> {
        self.peers.network()
    }

    /// The Raft groups this node hosts (the peer service dispatches on them).
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// This node's pub/sub channels and subscribers.
    pub fn pubsub(&self) -> &Arc<crate::pubsub::Hub> {
        &self.pubsub
    }

    /// The node's write-ahead log (every group's log).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Tests only: see [`Node::read_pause`].
    #[cfg(test)]
    pub(crate) async fn test_pause_before_part(&self, part: usize) {
        if part == 1 {
            self.test_pause(&self.read_pause).await;
        }
    }

    /// Tests only: pauses once at `hook` ([`Node::read_pause`], [`Node::txn_pause`]) if a
    /// test set it.
    #[cfg(test)]
    pub(crate) async fn test_pause(&self, hook: &PauseHook) {
        let pause = hook.lock().take();
        if let Some((paused, resume)) = pause {
            paused.notify_one();
            resume.notified().await;
        }
    }

    /// Execute any command: writes on their shard's leader, reads linearizably (on the
    /// leader). A request refused before anything happened (`TRYAGAIN`: no leader yet, leader
    /// moved) is retried for up to [`ROUTE_RETRY_WINDOW`] while leadership settles, unless it
    /// spans several shards (a retry could repeat a part that succeeded).
    pub async fn execute(&self, cmd: Command) -> Result<Reply, CommandError> {
        self.execute_with(cmd, false).await
    }

    /// [`Node::execute`]; with `stale`, reads are served by this node's replicas even when
    /// another node leads the shard (RESP `READONLY`, `consistency=stale`).
    pub async fn execute_with(&self, cmd: Command, stale: bool) -> Result<Reply, CommandError> {
        if let Command::Checkpoint = cmd {
            return self.checkpoint().await.map(|()| Reply::Ok);
        }
        let retriable = !matches!(cmd, Command::Del { .. } | Command::Flush);
        let deadline = Instant::now() + ROUTE_RETRY_WINDOW;
        let mut backoff = ROUTE_RETRY_FIRST;
        // A locked key: wait for its transaction (resolving it once it is past its
        // deadline) for as long as a transaction may live, and a failover more.
        let lock_deadline = deadline + Duration::from_millis(crate::txn::TXN_LIFETIME_MS);
        let mut lock_met = None;
        loop {
            let result = if cmd.is_write() {
                match self.propose_routed(cmd.clone(), 0, None, false).await {
                    Ok(pending) => pending.wait().await,
                    Err(e) => Err(e),
                }
            } else {
                self.read_routed(&cmd, 0, stale, None).await
            };
            match result {
                Err(CommandError::Locked(holder)) if Instant::now() < lock_deadline => {
                    self.wait_for_lock(holder, &mut lock_met).await;
                }
                Err(CommandError::TryAgain(_))
                    if retriable && Instant::now() + backoff < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ROUTE_RETRY_MAX);
                }
                result => return result,
            }
        }
    }

    /// FLUSHDB/FLUSHALL: every shard cleared (held here or not), and then every shard a
    /// split created meanwhile (its parent may have given it keys before its own clear), until no new
    /// shard appears here or on any other node up (this node's replica of a parent may lag
    /// behind its split, which the parent's leader applied before it cleared the parent).
    pub(super) async fn flush_all(&self) -> Result<Reply, CommandError> {
        let mut done = std::collections::BTreeSet::new();
        loop {
            let fresh: std::collections::BTreeSet<u32> = self
                .shards
                .list()
                .iter()
                .map(|s| s.id)
                .chain(self.shards.routed())
                .filter(|id| !done.contains(id))
                .collect();
            if !fresh.is_empty() {
                for id in fresh {
                    self.propose_routed(Command::Flush, 0, Some(id), false)
                        .await?
                        .wait()
                        .await?;
                    done.insert(id);
                }
                continue;
            }
            let elsewhere = self.shards_elsewhere(&done).await;
            if elsewhere.is_empty() {
                return Ok(Reply::Ok);
            }
            for (id, addr) in elsewhere {
                let only = Some(Scope::shard(id));
                crate::peer::forward(&self.peers, &addr, &Command::Flush, 1, false, only, None)
                    .await?;
                done.insert(id);
            }
        }
    }

    /// Shards other nodes that are up know and `known` does not name, each with the gRPC
    /// address of a node that knows it (nodes that do not answer within a second are left
    /// out).
    async fn shards_elsewhere(
        &self,
        known: &std::collections::BTreeSet<u32>,
    ) -> Vec<(u32, String)> {
        let me = self.raft_id();
        let mut found: std::collections::BTreeMap<u32, String> = Default::default();
        for node in self.meta.nodes() {
            if node.raft_id == me || node.down {
                continue;
            }
            let Ok(channel) = self.peers.channel(&node.grpc_addr) else {
                continue;
            };
            let mut client = cairn_proto::v1::cluster_client::ClusterClient::new(channel);
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                client.status(cairn_proto::v1::StatusRequest {}),
            )
            .await;
            let Ok(Ok(status)) = answer else {
                continue;
            };
            for shard in status.into_inner().shards {
                if !known.contains(&shard.id) {
                    found
                        .entry(shard.id)
                        .or_insert_with(|| node.grpc_addr.clone());
                }
            }
        }
        found.into_iter().collect()
    }

    /// A command another node forwarded (`hops` forwards so far): served here if this node
    /// leads the shard, else forwarded once more (up to [`crate::peer::FORWARD_HOPS_MAX`]).
    /// `shard` limits a FLUSHDB or a whole-keyspace read to one shard.
    pub async fn execute_forwarded(
        &self,
        cmd: Command,
        hops: u32,
        stale: bool,
        shard: Option<Scope>,
    ) -> Result<Reply, CommandError> {
        if cmd.is_write() {
            self.propose_routed(cmd, hops, shard.map(|s| s.shard), false)
                .await?
                .wait()
                .await
        } else {
            self.read_routed(&cmd, hops, stale, shard).await
        }
    }
}

pub(crate) fn as_ref_bound(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The bytes every key matching the glob `pattern` starts with.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// GETBIT, BITCOUNT or BITPOS over a key's value (`None`: missing), for the node's reads
/// and for reads inside transactions alike.
pub fn bit_read(cmd: &Command, value: Option<Bytes>) -> Result<Reply, CommandError> {
    let value = value.as_deref();
    let n = match cmd {
        Command::GetBit { offset, .. } => crate::bits::get(value.unwrap_or_default(), *offset),
        Command::BitCount { args, .. } => crate::bits::count(value, args)?,
        Command::BitPos { bit, args, .. } => crate::bits::position(value, *bit, args)?,
        other => {
            return Err(CommandError::Invalid(format!(
                "'{}' is not a bit read",
                other.name()
            )));
        }
    };
    Ok(Reply::Int(n))
}

/// Redis GETRANGE: inclusive offsets, negative ones count from the end.
pub fn substring(value: &[u8], start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 {
        return Bytes::new();
    }
    let (mut start, mut end) = (start, end);
    if start < 0 && end < 0 && start > end {
        return Bytes::new();
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&value[start as usize..=end as usize])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::command::Expiry;
    use crate::command::{Condition, ExpireCondition};
    use crate::reply::SetOutcome;
    use crate::reply::{Entry, KeyTtl};

    pub(crate) fn options(dir: &std::path::Path) -> NodeOptions {
        NodeOptions {
            data_dir: dir.to_path_buf(),
            shards: 4,
            value_bytes_max: 1024,
            sync: SyncMode::Always,
            grpc_addr: "127.0.0.1:1".parse().unwrap(),
            http_addr: "127.0.0.1:2".parse().unwrap(),
            resp_addr: "127.0.0.1:3".parse().unwrap(),
            io: Arc::new(cairn_io::StdIo),
            tuning: StorageTuning::default(),
            join: None,
            replicas: 3,
            replicas_only: false,
            down_after: Duration::from_secs(5),
            replace_down_after: Duration::from_secs(300),
            balance: crate::balance::Limits::default(),
            move_bytes_per_sec: 0,
            split_shard_bytes: 0,
            watch_history: crate::feed::FeedLimits::default(),
            follow_linger: FOLLOW_LINGER,
            clock: cairn_storage::clock::system(),
            network: Arc::new(cairn_raft::transport::Tcp),
        }
    }

    /// A node in `dir` on a clock the test moves itself.
    pub(crate) async fn on_manual_clock(
        dir: &std::path::Path,
    ) -> (Arc<Node>, Arc<cairn_storage::ManualClock>) {
        let clock = cairn_storage::ManualClock::at(1_700_000_000_000);
        let node = Node::open(NodeOptions {
            clock: clock.clone(),
            ..options(dir)
        })
        .await
        .unwrap();
        (node, clock)
    }

    pub(crate) fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    pub(crate) fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: b(key),
            value: b(value),
            expiry: Expiry::Never,
            condition: Condition::Always,
            return_old: false,
        }
    }

    pub(crate) async fn get(node: &Node, key: &str) -> Option<Entry> {
        match node.execute(Command::Get { key: b(key) }).await.unwrap() {
            Reply::Entry(e) => e,
            other => panic!("{other:?}"),
        }
    }

    /// A read forwarded with a floor (`ForwardRequest.floor`) is served from this node's
    /// replica only once it has applied that position: at once when it has, after waiting
    /// when the position comes soon, `TRYAGAIN` when it does not come; a floor of another
    /// shard holds nothing up. Forwarding a read, a node sends what its own feed of the
    /// shard has told, or the floor the read came with if further; a write carries none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_waits_for_the_floor_it_came_with() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        let key = "{t}k";
        let shard = node.shards.shard_of_key(key.as_bytes());
        node.execute(set(key, "1")).await.unwrap();
        let applied = node.shards.get(shard).unwrap().group.applied_index();
        let scope = Some(Scope { shard, slots: None });
        let read = |floor: (u32, u64)| {
            let node = node.clone();
            READ_FLOOR.scope(floor, async move {
                node.execute_forwarded(Command::DbSize, 1, true, scope)
                    .await
            })
        };
        assert_eq!(read((shard, applied)).await, Ok(Reply::Int(1)));
        assert_eq!(read((shard + 1, applied + 1_000)).await, Ok(Reply::Int(1)));
        match read((shard, applied + 1_000)).await {
            Err(CommandError::TryAgain(why)) => assert!(why.contains("behind"), "{why}"),
            other => panic!("a replica short of the floor served the read: {other:?}"),
        }
        // The next write reaches the floor while the read waits for it.
        let writer = {
            let node = node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                node.execute(set("{t}other", "2")).await.unwrap();
            })
        };
        assert_eq!(read((shard, applied + 1)).await, Ok(Reply::Int(2)));
        writer.await.unwrap();

        let last = node.shards.get(shard).unwrap().feed.last();
        let get = Command::Get { key: b(key) };
        assert_eq!(node.read_floor(shard, &get), Some((shard, last)));
        let asked = READ_FLOOR.sync_scope((shard, last + 50), || node.read_floor(shard, &get));
        assert_eq!(asked, Some((shard, last + 50)));
        // A read after a watch token is served at or after what the token names.
        let named = |index| {
            let token = crate::watch::Token([(shard, crate::feed::Pos::after(index))].into());
            TOKEN_FLOOR.sync_scope(Arc::new(token), || node.read_floor(shard, &get))
        };
        assert_eq!(named(last + 60), Some((shard, last + 60)));
        assert_eq!(named(1), Some((shard, last)));
        let behind = READ_FLOOR.sync_scope((shard, 1), || node.read_floor(shard, &get));
        assert_eq!(behind, Some((shard, last)));
        let other = READ_FLOOR.sync_scope((shard + 1, last + 50), || node.read_floor(shard, &get));
        assert_eq!(other, Some((shard, last)));
        assert_eq!(node.read_floor(shard, &set(key, "3")), None);

        // A read after a token runs with the token's positions as its floor, and a replica
        // serving it itself waits for them too.
        let (token, seen) = node
            .read_after_token(Some(key.as_bytes()), async {
                TOKEN_FLOOR.try_with(|t| t.to_string()).ok()
            })
            .await;
        assert_eq!(seen.as_deref(), Some(token.as_str()));
        let ahead = crate::watch::Token([(shard, crate::feed::Pos::after(last + 1_000))].into());
        let served = TOKEN_FLOOR
            .scope(
                Arc::new(ahead),
                node.execute_forwarded(Command::DbSize, 1, true, scope),
            )
            .await;
        match served {
            Err(CommandError::TryAgain(why)) => assert!(why.contains("behind"), "{why}"),
            other => panic!("a replica short of the token's position served the read: {other:?}"),
        }
    }

    /// NOLOOP leans on it: every change at the entry a write proposed alone landed in is
    /// that write's, however many writes were queued with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_proposed_alone_lands_in_an_entry_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        // One shard (a hash tag), many writes queued at once: the proposer packs them.
        let mut before = Vec::new();
        for i in 0..64 {
            before.push(node.propose(set(&format!("{{t}}{i}"), "v")).await.unwrap());
        }
        let mine = node.propose_alone(set("{t}mine", "v")).await.unwrap();
        let mut after = Vec::new();
        for i in 64..128 {
            after.push(node.propose(set(&format!("{{t}}{i}"), "v")).await.unwrap());
        }
        let (result, _, landed) = mine.outcome_landed().await;
        result.unwrap();
        let (shard, index) = landed.expect("a local write says where it landed");
        for pending in before.into_iter().chain(after) {
            let (result, _, landed) = pending.outcome_landed().await;
            result.unwrap();
            assert_eq!(
                landed, None,
                "only a write proposed alone says where it landed"
            );
        }
        let feed = &node.shards.get(shard).unwrap().feed;
        let since = feed
            .since(crate::feed::Pos::after(index - 1), 100_000, usize::MAX)
            .unwrap();
        let batch = since.batches.iter().find(|b| b.index == index).unwrap();
        let keys: Vec<&Bytes> = batch.events().map(|e| e.key).collect();
        assert_eq!(keys, vec![&b("{t}mine")], "its entry holds its change only");
        // The others were packed (else this test shows nothing).
        let entries: std::collections::BTreeSet<u64> =
            since.batches.iter().map(|b| b.index).collect();
        assert!(
            entries.len() < 100,
            "{} entries for 129 writes",
            entries.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_entries_missing_from_the_engines_are_replayed_on_open() {
        // Engines are applied without fsync: a power cut keeps the log (fsynced before every
        // answer) and loses the engines' tail, which the log then replays.
        let io = cairn_io::sim::SimIo::new(7);
        let sim = |io: &cairn_io::sim::SimIo| NodeOptions {
            io: Arc::new(io.clone()),
            ..options(std::path::Path::new("/sim/node"))
        };
        let node = Node::open(sim(&io)).await.unwrap();
        node.execute(set("a", "1")).await.unwrap();
        let cmd = Command::Set {
            key: b("y{other}"),
            value: b("Y"),
            expiry: Expiry::AtMs(4_000_000_000_000),
            condition: Condition::Always,
            return_old: false,
        };
        node.execute(cmd).await.unwrap();
        node.execute(Command::Del { keys: vec![b("a")] })
            .await
            .unwrap();
        node.execute(set("b", "2")).await.unwrap();
        let before: Vec<Option<Entry>> = {
            let mut v = Vec::new();
            for k in ["a", "y{other}", "b"] {
                v.push(get(&node, k).await);
            }
            v
        };
        let image = io.crash_image(cairn_io::sim::PowerCut::DropUnsynced);
        let _ = node.shutdown().await;
        drop(node);

        let node = Node::open(sim(&image)).await.unwrap();
        for (k, want) in ["a", "y{other}", "b"].into_iter().zip(before) {
            assert_eq!(get(&node, k).await, want, "{k}");
        }
        // The next write continues the shard's log.
        let b_version = get(&node, "b").await.unwrap().version;
        node.execute(set("b", "3")).await.unwrap();
        assert!(get(&node, "b").await.unwrap().version > b_version);
        node.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conditions_versions_and_expiry_rules() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).await.unwrap();
        // Compare-and-set on versions.
        let v1 = match node.execute(set("k", "1")).await.unwrap() {
            Reply::Set(SetOutcome {
                version: Some(v), ..
            }) => v,
            other => panic!("{other:?}"),
        };
        let cas = |version, value: &str| Command::Set {
            key: b("k"),
            value: b(value),
            expiry: Expiry::Keep,
            condition: Condition::IfVersion(version),
            return_old: false,
        };
        match node.execute(cas(v1 + 100, "no")).await.unwrap() {
            Reply::Set(SetOutcome {
                version: None,
                old: Some(old),
            }) => assert_eq!(old.version, v1),
            other => panic!("condition should fail: {other:?}"),
        }
        match node.execute(cas(v1, "2")).await.unwrap() {
            Reply::Set(SetOutcome {
                version: Some(v2), ..
            }) => assert!(v2 > v1),
            other => panic!("{other:?}"),
        }
        // Relative deadlines become absolute at propose time; KEEP keeps them.
        let before = node.now_ms();
        node.execute(Command::Expire {
            key: b("k"),
            expiry: Expiry::InMs(60_000),
            condition: ExpireCondition::Always,
        })
        .await
        .unwrap();
        let at = get(&node, "k").await.unwrap().expires_at_ms.unwrap();
        assert!(at >= before + 60_000 && at <= node.now_ms() + 60_000);
        node.execute(Command::IncrBy {
            key: b("k"),
            delta: 1,
        })
        .await
        .unwrap();
        assert_eq!(
            get(&node, "k").await.unwrap().expires_at_ms,
            Some(at),
            "INCR keeps the TTL"
        );
        // GT with a smaller deadline fails; XX LT on a key with expiry succeeds.
        let expire = |ms, condition| Command::Expire {
            key: b("k"),
            expiry: Expiry::InMs(ms),
            condition,
        };
        assert_eq!(
            node.execute(expire(1_000, ExpireCondition::Gt))
                .await
                .unwrap(),
            Reply::Bool(false)
        );
        assert_eq!(
            node.execute(expire(1_000, ExpireCondition::XxLt))
                .await
                .unwrap(),
            Reply::Bool(true)
        );
        // Rename moves value and deadline, within a slot and across shards (a transaction).
        node.execute(Command::Rename {
            from: b("k"),
            to: b("{k}2"),
            nx: false,
        })
        .await
        .unwrap();
        assert!(get(&node, "k").await.is_none());
        assert!(get(&node, "{k}2").await.unwrap().expires_at_ms.is_some());
        node.execute(Command::Rename {
            from: b("{k}2"),
            to: b("k3"),
            nx: false,
        })
        .await
        .unwrap();
        assert!(get(&node, "{k}2").await.is_none());
        assert!(get(&node, "k3").await.unwrap().expires_at_ms.is_some());
        // Size limits.
        let too_big = Command::Set {
            key: b("v"),
            value: Bytes::from(vec![0u8; 1025]),
            expiry: Expiry::Never,
            condition: Condition::Always,
            return_old: false,
        };
        assert_eq!(
            node.execute(too_big).await,
            Err(CommandError::ValueTooLarge {
                len: 1025,
                max: 1024
            })
        );
        node.shutdown().await.unwrap();
        assert_eq!(
            node.execute(set("late", "x")).await,
            Err(CommandError::ShuttingDown)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_sync_stops_writes_but_not_reads() {
        let io = cairn_io::sim::SimIo::new(1);
        let options = NodeOptions {
            io: Arc::new(io.clone()),
            ..options(std::path::Path::new("/sim/node"))
        };
        let node = Node::open(options).await.unwrap();
        node.execute(set("a", "1")).await.unwrap();
        io.inject(cairn_io::sim::Fault::fail(cairn_io::sim::Op::SyncData).on_path("wal"));
        // The write whose fsync failed is never acknowledged: its outcome is unknown (its bytes
        // may still reach the disk), and the node refuses writes from then on.
        let failed = node.execute(set("b", "2")).await;
        assert!(
            matches!(
                failed,
                Err(CommandError::Fatal(_) | CommandError::OutcomeUnknown(_))
            ),
            "{failed:?}"
        );
        assert!(node.failure().is_some());
        // Never retry-and-acknowledge: later writes are refused too.
        assert!(matches!(
            node.execute(set("c", "3")).await,
            Err(CommandError::Fatal(_))
        ));
        assert_eq!(get(&node, "a").await.unwrap().value, b("1"));
        assert!(
            get(&node, "b").await.is_none(),
            "an unacknowledged write is not visible"
        );
        let _ = node.shutdown().await;
    }

    /// On a clock the test moves: a key with a deadline is readable until the clock passes it,
    /// invisible the moment it has (reads compare with the node's clock, not the system's),
    /// and deleted by the next active-expiry cycle. Nothing sleeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_expire_by_the_nodes_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (node, clock) = on_manual_clock(dir.path()).await;
        for i in 0..10 {
            let cmd = Command::Set {
                key: b(&format!("t{i}")),
                value: b("v"),
                expiry: Expiry::InMs(60_000),
                condition: Condition::Always,
                return_old: false,
            };
            node.execute(cmd).await.unwrap();
        }
        node.execute(set("keep", "v")).await.unwrap();
        let expiring = || {
            node.shard_stats()
                .iter()
                .map(|s| s.expiring_keys)
                .sum::<u64>()
        };
        let deadline = get(&node, "t0").await.unwrap().expires_at_ms;
        assert_eq!(
            deadline,
            Some(1_700_000_060_000),
            "the deadline is the node's clock + TTL"
        );
        assert_eq!(
            node.execute(Command::Ttl { key: b("t0") }).await,
            Ok(Reply::Ttl(KeyTtl::ExpiresAtMs(1_700_000_060_000)))
        );

        // A minute less a millisecond later: still there, and not due.
        clock.advance(59_999);
        node.expire_cycle().await;
        assert_eq!(expiring(), 10);
        assert!(get(&node, "t9").await.is_some());

        // The clock reaches the deadline: gone for readers at once, deleted by the cycle.
        clock.advance(1);
        assert!(get(&node, "t9").await.is_none(), "read past its deadline");
        assert_eq!(
            node.execute(Command::Exists {
                keys: vec![b("t1"), b("keep")]
            })
            .await,
            Ok(Reply::Int(1))
        );
        node.expire_cycle().await;
        assert_eq!(expiring(), 0);
        assert_eq!(node.dbsize(), 1);
        node.shutdown().await.unwrap();
    }

    #[test]
    fn getrange_matches_redis() {
        let v = b"This is a string";
        assert_eq!(&substring(v, 0, 3)[..], b"This");
        assert_eq!(&substring(v, -3, -1)[..], b"ing");
        assert_eq!(&substring(v, 0, -1)[..], &v[..]);
        assert_eq!(&substring(v, 10, 100)[..], b"string");
        assert_eq!(&substring(v, 5, 3)[..], b"");
        assert_eq!(&substring(v, -1, -5)[..], b"");
        assert_eq!(&substring(v, -100, 2)[..], b"Thi");
        assert_eq!(&substring(b"", 0, -1)[..], b"");
    }

    #[test]
    fn literal_prefix_stops_at_the_first_special_character() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a?c"), b"a");
        assert_eq!(literal_prefix(b"[ab]"), b"");
        assert_eq!(literal_prefix(b"plain"), b"plain");
        assert_eq!(literal_prefix(b"x\\*"), b"x");
    }
}
