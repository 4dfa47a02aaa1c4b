//! The change feed: every committed write, delete and expiry of a shard, in log order, kept
//! for a bounded window on every replica (etcd's watch history, per shard).
//!
//! A shard replica's state machine tells its [`Feed`] of every entry it applies (an
//! [`ApplyObserver`]); the feed keeps the keyspace changes of the newest entries, at most
//! [`FeedLimits::events_max`] events and [`FeedLimits::bytes_max`] bytes, dropping the oldest
//! entries whole. An event's revision is its entry's log index (the version it gave the key),
//! so the feed is the same on every replica, whichever node serves a watch and whoever leads.
//!
//! History survives a restart as far as the log does: [`Feed::load`] rebuilds it from the
//! log entries the node still holds below its applied index, before the group replays the
//! rest. A snapshot install leaves a gap the feed cannot fill: history restarts after it.
//! A `Clear` (FLUSHDB) is told as a delete of every key it removed, which only the apply
//! knows; history rebuilt from the log therefore starts after the newest `Clear`.
//!
//! Watchers hold no copy of the history: each keeps a position (a [`Pos`] per shard) and reads
//! the batches after it, shared (`Arc`), so memory is bounded by the window whatever the
//! watchers do. A position older than the window is read from the shard's Raft log
//! ([`History`]) while the log holds it: the window is what is served from memory, the log
//! is how far back a watch may resume. Past the log's purge point, at a `Clear` (whose removed
//! keys the log does not hold) or at a hole in the log, a watcher gets [`Compacted`], naming
//! the oldest revision it could still resume from.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use cairn_raft::{ApplyObserver, WriteOp};
use cairn_storage::Engine;
use parking_lot::Mutex;

/// Events a shard's feed keeps by default (`--watch-history-events`). Small on purpose: the
/// window keeps the entries' buffers alive, and a window of 100,000 events and 32 MiB per
/// shard cost pipelined SETs 5–6% (memory the allocator could no longer reuse;
/// docs/benchmarks.md, "The change feed on the write path").
pub const HISTORY_EVENTS_DEFAULT: usize = 10_000;
/// Bytes of keys and values a shard's feed keeps by default (`--watch-history-bytes`).
pub const HISTORY_BYTES_DEFAULT: usize = 4 * 1024 * 1024;
/// What one event costs the byte budget besides its key and value (its place in a batch).
pub const EVENT_OVERHEAD_BYTES: usize = 64;
/// The value of the node's wake channel once it stops: every watcher ends.
pub const WAKE_STOPPED: u64 = u64::MAX;
/// Log entries read at a time while rebuilding history at start.
const LOAD_CHUNK_ENTRIES: u64 = 64;

/// How much history each shard's feed keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    pub events_max: usize,
    pub bytes_max: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        FeedLimits {
            events_max: HISTORY_EVENTS_DEFAULT,
            bytes_max: HISTORY_BYTES_DEFAULT,
        }
    }
}

/// Why a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    /// Deleted by active expiry because its deadline passed.
    Expire,
}

impl EventKind {
    /// The name the front ends use (`put`, `delete`, `expire`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
            EventKind::Expire => "expire",
        }
    }
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: Bytes,
    /// The new value of a put (empty otherwise).
    pub value: Bytes,
    /// A put's absolute deadline (ms since the Unix epoch), if it expires.
    pub expires_at_ms: Option<u64>,
    /// A delete made by clearing the shard (FLUSHDB), not by a command naming the key.
    pub flushed: bool,
}

/// One change, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub kind: EventKind,
    pub key: &'a Bytes,
    /// The new value of a put (empty otherwise).
    pub value: &'a Bytes,
    pub expires_at_ms: Option<u64>,
    /// A delete made by clearing the shard (FLUSHDB).
    pub flushed: bool,
}

impl EventRef<'_> {
    pub fn to_event(self) -> Event {
        Event {
            kind: self.kind,
            key: self.key.clone(),
            value: self.value.clone(),
            expires_at_ms: self.expires_at_ms,
            flushed: self.flushed,
        }
    }
}

/// The keyspace changes of one log entry, in the entry's order: the entry's ops themselves,
/// shared with the state machine that applied them (nothing is copied on the write path),
/// read as events on demand.
#[derive(Debug)]
pub struct Batch {
    /// The entry's log index: the revision (and the version) of each of its events.
    pub index: u64,
    ops: Arc<Vec<WriteOp>>,
    /// The keys a `Clear` among the ops removed (told as deletes where the first `Clear`
    /// stands).
    cleared: Vec<Bytes>,
    /// Events in all.
    len: usize,
    bytes: usize,
}

static EMPTY: Bytes = Bytes::from_static(b"");

impl Batch {
    /// The changes `ops` make, with `cleared` the keys a `Clear` among them removed. `None`
    /// when they touch no key.
    pub fn of_ops(index: u64, ops: Arc<Vec<WriteOp>>, cleared: &[Bytes]) -> Option<Batch> {
        let mut len = 0;
        let mut bytes = 0;
        let mut clear_seen = false;
        for op in ops.iter() {
            match op {
                WriteOp::Put { key, value, .. } => {
                    len += 1;
                    bytes += key.len() + value.len() + EVENT_OVERHEAD_BYTES;
                }
                WriteOp::Delete { key } | WriteOp::Expire { key } => {
                    len += 1;
                    bytes += key.len() + EVENT_OVERHEAD_BYTES;
                }
                WriteOp::Clear => clear_seen = true,
                WriteOp::SystemPut { .. }
                | WriteOp::SystemDelete { .. }
                | WriteOp::Split { .. } => {}
            }
        }
        let cleared: Vec<Bytes> = if clear_seen {
            cleared.to_vec()
        } else {
            Vec::new()
        };
        len += cleared.len();
        bytes += cleared
            .iter()
            .map(|k| k.len() + EVENT_OVERHEAD_BYTES)
            .sum::<usize>();
        (len > 0).then_some(Batch {
            index,
            ops,
            cleared,
            len,
            bytes,
        })
    }

    /// The entry's ops.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// The keys a `Clear` among the ops removed.
    pub fn cleared(&self) -> &[Bytes] {
        &self.cleared
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The events, in order.
    pub fn events(&self) -> impl Iterator<Item = EventRef<'_>> {
        let mut clear_told = false;
        self.ops.iter().flat_map(move |op| {
            let one = |kind, key, value, expires_at_ms| {
                vec![EventRef {
                    kind,
                    key,
                    value,
                    expires_at_ms,
                    flushed: false,
                }]
            };
            match op {
                WriteOp::Put {
                    key,
                    value,
                    expires_at_ms,
                } => one(EventKind::Put, key, value, *expires_at_ms),
                WriteOp::Delete { key } => one(EventKind::Delete, key, &EMPTY, None),
                WriteOp::Expire { key } => one(EventKind::Expire, key, &EMPTY, None),
                WriteOp::Clear if !clear_told => {
                    clear_told = true;
                    self.cleared
                        .iter()
                        .map(|key| EventRef {
                            kind: EventKind::Delete,
                            key,
                            value: &EMPTY,
                            expires_at_ms: None,
                            flushed: true,
                        })
                        .collect()
                }
                WriteOp::Clear
                | WriteOp::SystemPut { .. }
                | WriteOp::SystemDelete { .. }
                | WriteOp::Split { .. } => Vec::new(),
            }
        })
    }
}

/// Where a watcher stands in one shard's feed: every event of the entries up to `index` is
/// behind it when `partial` is 0; otherwise the entries before `index` and the first
/// `partial` events of entry `index` are (a position inside an entry, after one event of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub index: u64,
    pub partial: u32,
}

impl Pos {
    /// After every event of the entries up to `index`.
    pub fn after(index: u64) -> Pos {
        Pos { index, partial: 0 }
    }

    /// The last entry whose events are all behind this position.
    pub fn done(self) -> u64 {
        if self.partial == 0 {
            self.index
        } else {
            self.index - 1
        }
    }

    /// The position right after event `ordinal` (0-based) of `batch`.
    pub fn after_event(batch: &Batch, ordinal: usize) -> Pos {
        if ordinal + 1 >= batch.len() {
            Pos::after(batch.index)
        } else {
            Pos {
                index: batch.index,
                partial: (ordinal + 1) as u32,
            }
        }
    }
}

/// History a watcher needed is gone: it may resume only from `revision` of the shard on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub shard: u32,
    pub revision: u64,
}

/// Batches read from a feed.
#[derive(Debug)]
pub struct Since {
    /// Batches after the position asked for, oldest first (the first may be partly behind it:
    /// skip `Pos::partial` of its events when its index is the position's).
    pub batches: Vec<Arc<Batch>>,
    /// The position after them: after the last batch returned, or after the newest entry
    /// applied when every batch was returned.
    pub upto: u64,
    /// Whether more batches follow (the read was cut at its limits).
    pub cut: bool,
}

/// Where history older than the window is read from: the shard's Raft log, which holds
/// every committed entry above its purge point.
pub trait History: Send + Sync + std::fmt::Debug {
    /// The oldest index the log holds an entry at.
    fn first(&self) -> u64;
    /// Every entry at `start..=end` the log holds, with its ops (none for entries that are
    /// not normal ones).
    fn read(&self, start: u64, end: u64) -> std::io::Result<Vec<(u64, Vec<WriteOp>)>>;
}

/// Log entries one read of older history covers at most.
const HISTORY_READ_ENTRIES: u64 = 64;

/// One shard's change feed on this replica.
#[derive(Debug)]
pub struct Feed {
    shard: u32,
    limits: FeedLimits,
    ring: Mutex<Ring>,
    /// Older history than the window, from the log (none in unit tests of the window).
    history: Option<Arc<dyn History>>,
    /// Node-wide: bumped after every apply of every shard, so a watcher sleeps on one channel
    /// whatever shards it covers.
    wake: Arc<tokio::sync::watch::Sender<u64>>,
    /// The splits of the shard this replica applied (or found in its log at start), oldest
    /// first: a watcher that reaches one ends, to resume following the child too.
    splits: Mutex<Vec<SplitMark>>,
    /// The parent's log index of the split that created the shard (0: the first layout): a
    /// resume token from before it has no position in this shard, and starts here.
    born: u64,
    /// The replica was removed from this node: its feed tells nothing more, and its
    /// watchers end (to resume on a node that holds the shard).
    retired: std::sync::atomic::AtomicBool,
    /// The replica no longer holds the whole shard as the map tells it (its group dropped it,
    /// or it is still catching up): the node tells the shard's changes through a feed it
    /// follows on a replica that does, and this one's watchers move there.
    superseded: std::sync::atomic::AtomicBool,
    /// Watchers reading it now: a node keeps following a shard's feed while it has any.
    watchers: std::sync::atomic::AtomicUsize,
}

/// A split of a shard, as its feed remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMark {
    /// The split entry's index in the parent's log.
    pub index: u64,
    pub child: u32,
    /// The slots that went to the child.
    pub first_slot: u16,
    pub last_slot: u16,
}

impl SplitMark {
    fn of_ops(index: u64, ops: &[WriteOp]) -> Option<SplitMark> {
        ops.iter().find_map(|op| match *op {
            WriteOp::Split {
                child,
                first_slot,
                last_slot,
            } => Some(SplitMark {
                index,
                child,
                first_slot,
                last_slot,
            }),
            _ => None,
        })
    }
}

#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<Arc<Batch>>,
    /// Every entry at or below this index is out of the window (or was never seen here): a
    /// watcher may resume only from a position whose `done()` is at least this.
    compacted: u64,
    /// The newest entry applied, with keyspace changes or not.
    last: u64,
    events: usize,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, batch: Batch, limits: FeedLimits) {
        self.last = self.last.max(batch.index);
        self.events += batch.len();
        self.bytes += batch.bytes;
        self.batches.push_back(Arc::new(batch));
        while self.events > limits.events_max || self.bytes > limits.bytes_max {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.events -= oldest.len();
            self.bytes -= oldest.bytes;
            self.compacted = oldest.index;
        }
    }

    fn reset(&mut self, at: u64) {
        self.batches.clear();
        self.events = 0;
        self.bytes = 0;
        self.compacted = at;
        self.last = at;
    }
}

impl Feed {
    /// An empty feed for `shard` whose replica has applied up to `applied`: history starts
    /// there until [`Feed::load`] fills in what the log still holds.
    pub fn new(
        shard: u32,
        applied: u64,
        limits: FeedLimits,
        wake: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Feed {
        let mut ring = Ring::default();
        ring.reset(applied);
        Feed {
            shard,
            limits,
            ring: Mutex::new(ring),
            history: None,
            wake,
            splits: Mutex::new(Vec::new()),
            born: 0,
            retired: std::sync::atomic::AtomicBool::new(false),
            superseded: std::sync::atomic::AtomicBool::new(false),
            watchers: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A watcher starts (`true`) or stops reading this feed.
    pub(crate) fn count_watcher(&self, starts: bool) {
        use std::sync::atomic::Ordering;
        if starts {
            self.watchers.fetch_add(1, Ordering::AcqRel);
        } else {
            self.watchers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether some watcher reads this feed now.
    pub fn watched(&self) -> bool {
        self.watchers.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// The replica was removed from this node: wakes its watchers, which end.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        wake(&self.wake);
    }

    /// Whether the replica was removed from this node.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the replica as holding the whole shard here or not ([`Feed::is_superseded`]);
    /// its watchers are woken when it stops, and end.
    pub fn supersede(&self, superseded: bool) {
        let was = self
            .superseded
            .swap(superseded, std::sync::atomic::Ordering::AcqRel);
        if superseded && !was {
            wake(&self.wake);
        }
    }

    /// Whether the replica no longer holds the whole shard here: the node tells the shard's
    /// changes through a followed feed instead.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this feed's watchers end here (the replica was removed, or superseded), to
    /// resume on the feed the node now has for the shard, or on another node.
    pub fn has_left(&self) -> bool {
        self.is_retired() || self.is_superseded()
    }

    /// The same feed, of a shard a split created at `index` of its parent's log.
    pub fn born_at(mut self, index: u64) -> Feed {
        self.born = index;
        self
    }

    /// Where a watch of this shard starts when its resume token, from before the split that
    /// created the shard, names no position in it (`None`: the shard is of the first layout).
    pub fn born(&self) -> Option<u64> {
        (self.born > 0).then_some(self.born)
    }

    /// The first split after `index` that `relevant` keeps.
    pub fn split_after(
        &self,
        index: u64,
        relevant: impl Fn(&SplitMark) -> bool,
    ) -> Option<SplitMark> {
        self.splits
            .lock()
            .iter()
            .find(|m| m.index > index && relevant(m))
            .copied()
    }

    /// The same feed, reading positions older than its window from `history`.
    pub fn with_history(mut self, history: Arc<dyn History>) -> Feed {
        self.history = Some(history);
        self
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Rebuilds history from the log entries `read` gives (the group's log: every entry it
    /// holds in an inclusive index range, with no ops for those that are not normal entries),
    /// from `first` (the oldest entry the log still holds)
    /// up to the applied index the feed was created at, newest first until the window is full.
    /// A `Clear` ends the search: its removed keys are not in the log.
    pub fn load<F>(&self, first: u64, mut read: F) -> std::io::Result<()>
    where
        F: FnMut(u64, u64) -> std::io::Result<Vec<(u64, Vec<WriteOp>)>>,
    {
        let applied = self.ring.lock().last;
        let mut found: Vec<Batch> = Vec::new();
        let mut splits: Vec<SplitMark> = Vec::new();
        let (mut events, mut bytes) = (0usize, 0usize);
        let mut compacted = applied;
        let mut end = applied;
        'chunks: while end >= first.max(1) {
            let start = end.saturating_sub(LOAD_CHUNK_ENTRIES - 1).max(first).max(1);
            let mut chunk: std::collections::BTreeMap<u64, Vec<WriteOp>> =
                read(start, end)?.into_iter().collect();
            for index in (start..=end).rev() {
                // A hole in the log (it held entries on both sides of a snapshot install that
                // was not purged yet): nothing below it is known.
                let Some(ops) = chunk.remove(&index) else {
                    compacted = index;
                    break 'chunks;
                };
                if ops.iter().any(|op| matches!(op, WriteOp::Clear)) {
                    compacted = index;
                    break 'chunks;
                }
                if let Some(mark) = SplitMark::of_ops(index, &ops) {
                    splits.push(mark);
                }
                if let Some(batch) = Batch::of_ops(index, Arc::new(ops), &[]) {
                    if events + batch.len() > self.limits.events_max
                        || bytes + batch.bytes > self.limits.bytes_max
                    {
                        compacted = index;
                        break 'chunks;
                    }
                    events += batch.len();
                    bytes += batch.bytes;
                    found.push(batch);
                }
            }
            // Every entry of the chunk is known: history reaches back to its start.
            compacted = start - 1;
            if start <= first.max(1) {
                break;
            }
            end = start - 1;
        }
        let mut ring = self.ring.lock();
        // Only before anything new was applied: a group that already replays would have
        // its newer batches interleaved with old ones.
        if ring.last != applied || !ring.batches.is_empty() {
            return Ok(());
        }
        ring.compacted = compacted;
        for batch in found.into_iter().rev() {
            ring.push(batch, self.limits);
        }
        splits.reverse();
        *self.splits.lock() = splits;
        Ok(())
    }

    /// The newest entry applied here: where a watch that starts now stands.
    pub fn last(&self) -> u64 {
        self.ring.lock().last
    }

    /// A followed feed: every entry up to `upto` is told (the holder's feed got there).
    pub fn advance(&self, upto: u64) {
        {
            let mut ring = self.ring.lock();
            if upto <= ring.last {
                return;
            }
            ring.last = upto;
        }
        wake(&self.wake);
    }

    /// A followed feed: history restarts after `at` (the holder no longer has what came
    /// between).
    pub fn reset(&self, at: u64) {
        self.ring.lock().reset(at);
        wake(&self.wake);
    }

    /// A followed feed: the holder applied split `mark` of the shard.
    pub fn note_split(&self, mark: SplitMark) {
        let mut splits = self.splits.lock();
        if !splits.iter().any(|m| m.index == mark.index) {
            splits.push(mark);
            splits.sort_by_key(|m| m.index);
        }
    }

    /// The splits applied after index `after`, up to index `upto`, oldest first.
    pub fn splits_between(&self, after: u64, upto: u64) -> Vec<SplitMark> {
        self.splits
            .lock()
            .iter()
            .filter(|m| m.index > after && m.index <= upto)
            .copied()
            .collect()
    }

    /// The oldest position a watcher may resume from (`done()` at least this): the window's
    /// start, or the log's when older history is read from the log (a `Clear` or a hole met
    /// there still ends a watch with [`Compacted`]).
    pub fn compacted(&self) -> u64 {
        let compacted = self.ring.lock().compacted;
        match &self.history {
            Some(history) => compacted.min(history.first().saturating_sub(1)),
            None => compacted,
        }
    }

    /// The batches after `done` up to the window's start, read from the log.
    fn since_in_log(
        &self,
        history: &dyn History,
        done: u64,
        window_start: u64,
        events_max: usize,
        bytes_max: usize,
    ) -> Result<Since, Compacted> {
        let compacted = |revision| Compacted {
            shard: self.shard,
            revision,
        };
        let first = history.first();
        if done + 1 < first {
            return Err(compacted(first.saturating_sub(1).max(done + 1)));
        }
        let end = window_start.min(done + HISTORY_READ_ENTRIES);
        let mut entries: std::collections::BTreeMap<u64, Vec<WriteOp>> = history
            .read(done + 1, end)
            .map_err(|_| compacted(end))?
            .into_iter()
            .collect();
        let mut batches = Vec::new();
        let (mut events, mut bytes) = (0, 0);
        let mut upto = done;
        for index in done + 1..=end {
            // A hole, or a clear whose removed keys the log does not hold: nothing before
            // this point can be told.
            let Some(ops) = entries.remove(&index) else {
                return Err(compacted(index));
            };
            if ops.iter().any(|op| matches!(op, WriteOp::Clear)) {
                return Err(compacted(index));
            }
            if let Some(batch) = Batch::of_ops(index, Arc::new(ops), &[]) {
                if !batches.is_empty()
                    && (events + batch.len() > events_max || bytes + batch.bytes > bytes_max)
                {
                    break;
                }
                events += batch.len();
                bytes += batch.bytes;
                batches.push(Arc::new(batch));
            }
            upto = index;
        }
        Ok(Since {
            batches,
            upto,
            cut: true,
        })
    }

    /// The batches after `pos`, at most about `events_max` events and `bytes_max` bytes (at
    /// least one batch when there is one).
    pub fn since(&self, pos: Pos, events_max: usize, bytes_max: usize) -> Result<Since, Compacted> {
        let ring = self.ring.lock();
        let done = pos.done();
        if done < ring.compacted {
            let window_start = ring.compacted;
            drop(ring);
            return match &self.history {
                Some(history) => {
                    self.since_in_log(history.as_ref(), done, window_start, events_max, bytes_max)
                }
                None => Err(Compacted {
                    shard: self.shard,
                    revision: window_start,
                }),
            };
        }
        let from = ring.batches.partition_point(|b| b.index <= done);
        let mut batches = Vec::new();
        let (mut events, mut bytes) = (0, 0);
        for batch in ring.batches.range(from..) {
            if !batches.is_empty()
                && (events + batch.len() > events_max || bytes + batch.bytes > bytes_max)
            {
                let upto = batches.last().map_or(done, |b: &Arc<Batch>| b.index);
                return Ok(Since {
                    batches,
                    upto,
                    cut: true,
                });
            }
            events += batch.len();
            bytes += batch.bytes;
            batches.push(batch.clone());
        }
        Ok(Since {
            batches,
            upto: ring.last.max(done),
            cut: false,
        })
    }

    /// Events and bytes held (for tests and metrics).
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring.lock();
        (ring.events, ring.bytes)
    }
}

impl ApplyObserver for Feed {
    fn applied(&self, index: u64, ops: &Arc<Vec<WriteOp>>, cleared: &[Bytes]) {
        if let Some(mark) = SplitMark::of_ops(index, ops) {
            self.splits.lock().push(mark);
        }
        {
            let mut ring = self.ring.lock();
            match Batch::of_ops(index, ops.clone(), cleared) {
                Some(batch) => ring.push(batch, self.limits),
                None => ring.last = ring.last.max(index),
            }
        }
        wake(&self.wake);
    }

    fn replaced(&self, _engine: &Engine, applied: u64) {
        self.ring.lock().reset(applied);
        wake(&self.wake);
    }
}

/// Wakes every watcher (unless the node has stopped them for good).
fn wake(channel: &tokio::sync::watch::Sender<u64>) {
    channel.send_if_modified(|n| {
        if *n == WAKE_STOPPED {
            return false;
        }
        *n = (*n + 1) % WAKE_STOPPED;
        true
    });
}

/// Test helpers shared by the feed's and the watches' unit tests.
#[cfg(test)]
pub(crate) mod test_ops {
    use bytes::Bytes;
    use cairn_raft::WriteOp;

    /// The ops of one entry, shared as the state machine hands them over.
    macro_rules! ops {
        ($($op:expr),* $(,)?) => {
            &std::sync::Arc::new(vec![$($op),*])
        };
    }
    pub(crate) use ops;

    pub(crate) fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    pub(crate) fn put(key: &str, value: &str) -> WriteOp {
        WriteOp::Put {
            key: b(key),
            value: b(value),
            expires_at_ms: None,
        }
    }
}

#[cfg(test)]
mod tests;
