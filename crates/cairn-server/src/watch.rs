//! Watches: a key, a prefix or a range followed through the shards' change feeds
//! ([`crate::feed`]), from now or from a resume token, for every front end (gRPC `Kv.Watch`,
//! HTTP Server-Sent Events, `cairn watch`).
//!
//! A watch is served from this node's replicas, so it goes on through leader changes (every
//! replica applies the same log) and reads nothing over the network. Its position is one
//! [`Pos`] per shard it covers (a key: its shard; a prefix or a range: every shard); the
//! resume token is that position as text, `shard:index[.k]` joined by commas (for example
//! `0:120,1:98.3,2:77,3:40`: shard 1 stands after the first 3 events of entry 98). Events of
//! one shard arrive in log order; shards are independent, as their logs are. A token names
//! a position in the shared logs, not in one node's memory, so a watch resumed on any node
//! after a restart or a failover neither misses nor repeats an event, as long as that node
//! still keeps the history ([`Compacted`] otherwise).
//!
//! A watcher holds no events of its own: it reads the feeds' shared batches after its
//! position, so one that stops reading costs its position and nothing more, and is told
//! [`Compacted`] when it comes back too late.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::command::KeyRange;
use crate::feed::{Compacted, Event, Feed, Pos, WAKE_STOPPED};

/// Events one [`Watcher::next`] reads from a shard at most (whole entries, at least one).
pub const EVENTS_PER_READ_MAX: usize = 1024;
/// Key and value bytes one [`Watcher::next`] reads from a shard at most (whole entries, at
/// least one): one message stays small enough to send and to decode.
pub const BYTES_PER_READ_MAX: usize = 1024 * 1024;
/// How long a watch may go without a message before it is sent a progress notification,
/// when the client does not say.
pub const PROGRESS_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// The shortest progress interval a client may ask for.
pub const PROGRESS_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Longest resume token accepted (bytes).
pub const TOKEN_BYTES_MAX: usize = 64 * 1024;
/// How long a client may leave a watch's message untaken (its connection cannot send)
/// before the watch is dropped: a client that does not read is dropped with a reason, never
/// buffered for.
pub const STREAM_STALL_MAX: Duration = Duration::from_secs(10);

/// What a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Key(Bytes),
    Prefix(Bytes),
    Range(KeyRange),
}

impl Selector {
    /// The same selector holding copies of its bytes: bytes decoded from a request are
    /// slices of the request's whole receive buffer (8 KiB for a gRPC call), which a watch
    /// would otherwise keep alive for as long as it lives.
    fn detached(self) -> Selector {
        let copy = |b: Bytes| Bytes::copy_from_slice(&b);
        let bound = |b: Bound<Bytes>| match b {
            Bound::Included(b) => Bound::Included(copy(b)),
            Bound::Excluded(b) => Bound::Excluded(copy(b)),
            Bound::Unbounded => Bound::Unbounded,
        };
        match self {
            Selector::Key(k) => Selector::Key(copy(k)),
            Selector::Prefix(p) => Selector::Prefix(copy(p)),
            Selector::Range(r) => Selector::Range(KeyRange {
                start: bound(r.start),
                end: bound(r.end),
            }),
        }
    }

    /// Whether a key it matches may live in slots `first..=last` (a prefix or a range may
    /// match keys of any slot).
    pub fn overlaps(&self, first: u16, last: u16) -> bool {
        match self {
            Selector::Key(k) => (first..=last).contains(&crate::slot::key_slot(k)),
            Selector::Prefix(_) | Selector::Range(_) => true,
        }
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Selector::Key(k) => key == k.as_ref(),
            Selector::Prefix(p) => key.starts_with(p),
            Selector::Range(r) => {
                let above = match &r.start {
                    Bound::Included(s) => key >= s.as_ref(),
                    Bound::Excluded(s) => key > s.as_ref(),
                    Bound::Unbounded => true,
                };
                let below = match &r.end {
                    Bound::Included(e) => key <= e.as_ref(),
                    Bound::Excluded(e) => key < e.as_ref(),
                    Bound::Unbounded => true,
                };
                above && below
            }
        }
    }
}

/// Why a watch could not start or had to end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The resume token is not one this cluster gave out.
    #[error("invalid resume token: {0}")]
    BadToken(String),
    /// History the watch needs is gone.
    #[error(
        "compacted: shard {} keeps history only after revision {}; read again and watch from there",
        .0.shard,
        .0.revision
    )]
    Compacted(Compacted),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// This node's replica of the shard has lost touch with its group (see
    /// [`crate::node::Node::out_of_touch`]): what it would tell may be silently behind.
    #[error(
        "this node has lost touch with shard {0}'s group, so its changes may be behind; \
         resume the watch on another node"
    )]
    OutOfTouch(u32),
    /// A shard the watch follows split: every change up to the split was told, and the
    /// changes of the slots it gave away are now the child's. Resuming from the last token
    /// follows both.
    #[error(
        "shard {0} split (slots {first}..={last} went to shard {child}); resume the watch from its \
         last token",
        first = .1.first_slot,
        last = .1.last_slot,
        child = .1.child
    )]
    Split(u32, crate::feed::SplitMark),
    /// The resume token names a shard this node has no replica of (yet: a shard split off
    /// that this node has not applied, or none in this cluster at all).
    #[error("this node has no replica of shard {0} yet; resume the watch on another node or later")]
    NotHere(u32),
}

impl WatchError {
    /// Whether the client is to resume elsewhere or later (gRPC UNAVAILABLE, HTTP 503).
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            WatchError::Stopped
                | WatchError::OutOfTouch(_)
                | WatchError::Split(..)
                | WatchError::NotHere(_)
        )
    }
}

/// A position in several shards' feeds: what a resume token says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Token(pub BTreeMap<u32, Pos>);

impl Token {
    pub fn parse(text: &str) -> Result<Token, WatchError> {
        let bad = |why: &str| WatchError::BadToken(format!("{why} in {text:?}"));
        if text.len() > TOKEN_BYTES_MAX {
            return Err(WatchError::BadToken(format!(
                "longer than {TOKEN_BYTES_MAX} bytes"
            )));
        }
        let mut out = BTreeMap::new();
        for part in text.split(',') {
            let (shard, pos) = part.split_once(':').ok_or_else(|| bad("no ':'"))?;
            let shard: u32 = shard.parse().map_err(|_| bad("a bad shard id"))?;
            let (index, partial) = match pos.split_once('.') {
                Some((index, partial)) => (index, partial.parse().map_err(|_| bad("a bad count"))?),
                None => (pos, 0),
            };
            let index: u64 = index.parse().map_err(|_| bad("a bad revision"))?;
            if partial > 0 && index == 0 {
                return Err(bad("a count inside revision 0"));
            }
            if out.insert(shard, Pos { index, partial }).is_some() {
                return Err(bad("a shard named twice"));
            }
        }
        Ok(Token(out))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        for (i, (shard, pos)) in self.0.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            write_pos(&mut text, *shard, *pos);
        }
        f.write_str(&text)
    }
}

/// One shard's position as a token writes it: `shard:index`, `.partial` when inside an entry.
fn write_pos(out: &mut String, shard: u32, pos: Pos) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(out, "{shard}:{}", pos.index);
    if pos.partial > 0 {
        let _ = write!(out, ".{}", pos.partial);
    }
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub shard: u32,
    /// The entry's log index in its shard: the key's new version.
    pub revision: u64,
    pub event: Event,
    /// The shard's position right after this event.
    pub after: Pos,
}

/// What [`Watcher::next`] gives.
#[derive(Debug)]
pub enum Item {
    /// Changes of one shard, in log order.
    Events(Vec<WatchEvent>),
    /// Nothing matched for a progress interval; the token has moved on all the same.
    Progress,
}

/// One watch on this node.
#[derive(Debug)]
pub struct Watcher {
    selector: Selector,
    /// The feeds it reads, with where it stands in each.
    feeds: Vec<(Arc<Feed>, Pos)>,
    wake: tokio::sync::watch::Receiver<u64>,
    /// The shards whose replicas on this node are out of touch with their groups, when the
    /// watch is to end on one of its own ([`WatchError::OutOfTouch`]); `None` for a watch
    /// that goes on regardless (the node's own followers of the keyspace).
    touch: Option<tokio::sync::watch::Receiver<crate::node::OutOfTouch>>,
    /// The feed to read first next time, so that a busy shard does not starve the others.
    next_feed: usize,
    progress_every: Duration,
    last_message: Instant,
    /// A shard it follows split, and it has told every event up to the split: it ends
    /// ([`WatchError::Split`]) so that its client resumes following the child too.
    split: Option<(u32, crate::feed::SplitMark)>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for (feed, _) in &self.feeds {
            feed.count_watcher(false);
        }
    }
}

impl Watcher {
    /// A watch of `selector` over `feeds` (the shards it covers), from `from` or from now.
    pub fn new(
        selector: Selector,
        feeds: Vec<Arc<Feed>>,
        from: Option<&Token>,
        progress_every: Duration,
        wake: tokio::sync::watch::Receiver<u64>,
        touch: Option<tokio::sync::watch::Receiver<crate::node::OutOfTouch>>,
    ) -> Result<Watcher, WatchError> {
        let mut positioned = Vec::with_capacity(feeds.len());
        for feed in feeds {
            let pos = match from {
                // A shard split off after the token was given starts where it was created.
                Some(token) => match (token.0.get(&feed.shard()), feed.born()) {
                    // From before a shard split off was created (its start, position 0,
                    // when the feed was not there to tell where it stood:
                    // `Node::watch_token`): from where it was created.
                    (Some(pos), Some(born)) if pos.done() < born => Pos::after(born),
                    (Some(pos), _) => *pos,
                    (None, Some(born)) => Pos::after(born),
                    (None, None) => {
                        return Err(WatchError::BadToken(format!(
                            "it names no position in shard {}",
                            feed.shard()
                        )));
                    }
                },
                None => Pos::after(feed.last()),
            };
            let compacted = feed.compacted();
            if pos.done() < compacted {
                return Err(WatchError::Compacted(Compacted {
                    shard: feed.shard(),
                    revision: compacted,
                }));
            }
            positioned.push((feed, pos));
        }
        // In shard order, as a token lists them (see `Watcher::token_texts_after`).
        positioned.sort_by_key(|(feed, _)| feed.shard());
        for (feed, _) in &positioned {
            feed.count_watcher(true);
        }
        let mut watcher = Watcher {
            selector: selector.detached(),
            feeds: positioned,
            wake,
            touch,
            next_feed: 0,
            progress_every: progress_every.max(PROGRESS_INTERVAL_MIN),
            last_message: Instant::now(),
            split: None,
        };
        watcher.check_touch()?;
        Ok(watcher)
    }

    /// [`WatchError::OutOfTouch`] when one of the watch's shards is out of touch on this node
    /// (and the watch is to end then).
    fn check_touch(&mut self) -> Result<(), WatchError> {
        let Some(touch) = &mut self.touch else {
            return Ok(());
        };
        let out = touch.borrow_and_update();
        match self
            .feeds
            .iter()
            .find(|(feed, _)| out.contains(&feed.shard()))
        {
            Some((feed, _)) => Err(WatchError::OutOfTouch(feed.shard())),
            None => Ok(()),
        }
    }

    /// Where the watch stands: resuming from it repeats nothing given so far.
    pub fn token(&self) -> Token {
        Token(
            self.feeds
                .iter()
                .map(|(feed, pos)| (feed.shard(), *pos))
                .collect(),
        )
    }

    /// The token right after `event` (one of the last [`Item::Events`]).
    pub fn token_after(&self, event: &WatchEvent) -> Token {
        let mut token = self.token();
        token.0.insert(event.shard, event.after);
        token
    }

    /// The text of [`Watcher::token_after`] for each of `events` (one [`Item::Events`], so
    /// one shard's), written from one head and tail for them all: with many watchers on
    /// a busy prefix, per-event tokens were a tenth of the server's work.
    pub fn token_texts_after(&self, events: &[WatchEvent]) -> Vec<String> {
        let Some(shard) = events.first().map(|e| e.shard) else {
            return Vec::new();
        };
        let (mut head, mut tail) = (String::new(), String::new());
        let mut past = false;
        for (feed, pos) in &self.feeds {
            if feed.shard() == shard {
                past = true;
                continue;
            }
            let part = if past { &mut tail } else { &mut head };
            if past {
                part.push(',');
            }
            write_pos(part, feed.shard(), *pos);
            if !past {
                part.push(',');
            }
        }
        events
            .iter()
            .map(|event| {
                let mut text = String::with_capacity(head.len() + tail.len() + 24);
                text.push_str(&head);
                write_pos(&mut text, shard, event.after);
                text.push_str(&tail);
                debug_assert_eq!(text, self.token_after(event).to_string());
                text
            })
            .collect()
    }

    /// The next changes, or a progress notification after an idle interval.
    pub async fn next(&mut self) -> Result<Item, WatchError> {
        loop {
            if *self.wake.borrow_and_update() == WAKE_STOPPED {
                return Err(WatchError::Stopped);
            }
            if let Some((shard, mark)) = self.split {
                return Err(WatchError::Split(shard, mark));
            }
            // A feed whose replica left the node (or no longer holds the whole shard), or
            // lost touch with its group, ends the watch, but only once what it holds is
            // told: its changes are committed ones, and the watch resumed elsewhere (a feed
            // this node follows, which starts where the replica stood) goes on from the
            // last of them.
            let ending = match self.feeds.iter().find(|(f, _)| f.has_left()) {
                Some((feed, _)) => Some(WatchError::NotHere(feed.shard())),
                None => self.check_touch().err(),
            };
            let count = self.feeds.len();
            // A read cut short with nothing matching goes on at once, not at the next wake.
            let mut more = false;
            for i in 0..count {
                let at = (self.next_feed + i) % count;
                let (events, cut) = match (self.read(at), &ending) {
                    (Ok(read), _) => read,
                    // History a departed replica no longer has: resumed elsewhere, the watch
                    // may find it (another replica's log).
                    (Err(WatchError::Compacted(_)), Some(ending)) => return Err(ending.clone()),
                    (Err(e), _) => return Err(e),
                };
                if !events.is_empty() {
                    self.next_feed = (at + 1) % count;
                    self.last_message = Instant::now();
                    return Ok(Item::Events(events));
                }
                more |= cut;
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            if let Some(ending) = ending {
                return Err(ending);
            }
            let due = self.last_message + self.progress_every;
            if Instant::now() >= due {
                self.last_message = Instant::now();
                return Ok(Item::Progress);
            }
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return Err(WatchError::Stopped);
                    }
                }
                () = tokio::time::sleep_until(due) => {}
                () = touch_changed(&mut self.touch) => {}
            }
        }
    }

    /// The matching events of feed `at` after its position, moving the position past every
    /// event read (matching or not), and whether the read was cut short (more follow).
    fn read(&mut self, at: usize) -> Result<(Vec<WatchEvent>, bool), WatchError> {
        // The next split of this shard that moved slots the watch covers to a shard it does
        // not follow: the read stops there, and the watch ends once it got there.
        let split = {
            let (feed, pos) = &self.feeds[at];
            feed.split_after(pos.done(), |mark| {
                !self.feeds.iter().any(|(f, _)| f.shard() == mark.child)
                    && self.selector.overlaps(mark.first_slot, mark.last_slot)
            })
        };
        let (feed, pos) = &mut self.feeds[at];
        let since = feed
            .since(*pos, EVENTS_PER_READ_MAX, BYTES_PER_READ_MAX)
            .map_err(WatchError::Compacted)?;
        let cut = since.cut;
        let mut out = Vec::new();
        let upto = match split {
            Some(mark) if since.upto >= mark.index => {
                self.split = Some((feed.shard(), mark));
                mark.index
            }
            _ => since.upto,
        };
        for batch in since.batches.iter().take_while(|b| b.index <= upto) {
            let skip = if batch.index == pos.index {
                pos.partial as usize
            } else {
                0
            };
            for (ordinal, event) in batch.events().enumerate().skip(skip) {
                if self.selector.matches(event.key) {
                    out.push(WatchEvent {
                        shard: feed.shard(),
                        revision: batch.index,
                        event: event.to_event(),
                        after: Pos::after_event(batch, ordinal),
                    });
                }
            }
        }
        // A position ahead of this replica (a token from a node further on) stays as it is
        // until the replica catches up.
        if upto > pos.done() {
            *pos = Pos::after(upto);
        }
        Ok((out, cut))
    }
}

/// Resolves when the out-of-touch shards change (never, for a watch that ignores them, or
/// once the node stops telling).
async fn touch_changed(touch: &mut Option<tokio::sync::watch::Receiver<crate::node::OutOfTouch>>) {
    if let Some(receiver) = touch {
        if receiver.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Whether a whole-keyspace follow ([`follow_keyspace`]) stands somewhere yet: from then on
/// it misses no change.
#[derive(Debug, Clone)]
pub struct Positioned {
    stands: tokio::sync::watch::Receiver<bool>,
    /// An answer that turned it on went before it stood: when it stands, it calls its
    /// `lost` (changes in between may have gone untold).
    early: Arc<std::sync::atomic::AtomicBool>,
}

/// Longest an answer that turns on a whole-keyspace follow (`CLIENT TRACKING on`, `CONFIG
/// SET notify-keyspace-events`) waits for it to stand ([`Positioned::wait`]): a node that
/// holds no whole replica of some shard starts following its feed first.
pub const POSITION_WAIT: Duration = crate::node::FOLLOW_START_WAIT.saturating_mul(2);

impl Positioned {
    /// Waits until the follow stands, at most [`POSITION_WAIT`]; `true` when it does. An
    /// answer sent after `false` went early ([`Positioned::answered_early`]).
    pub async fn wait(mut self) -> bool {
        let stood = matches!(
            tokio::time::timeout(POSITION_WAIT, self.stands.wait_for(|stands| *stands)).await,
            Ok(Ok(_))
        );
        if !stood {
            self.answered_early();
        }
        stood
    }

    /// An answer that turned the follow on goes now, whether it stands or not: if it does
    /// not yet, it calls its `lost` once it does (tracking clients drop their caches).
    pub fn answered_early(&self) {
        self.early.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether it stands now.
    pub fn now(&self) -> bool {
        *self.stands.borrow()
    }
}

/// Follows every change of the whole keyspace on `node`'s feeds, from now, on a task of its
/// own until the node stops: `events` gets each batch of changes. When the watch falls
/// behind its history, a new watch starts from now and only then is `lost` called, so every
/// change after that call is told.
///
/// It stands (the returned [`Positioned`]) before this returns when every shard's feed is
/// here; else as soon as the feeds it lacks are followed (a node holding no whole replica of
/// a shard starts following it now): whoever turned it on waits for that
/// ([`Positioned::wait`]), and `lost` is called if an answer went before it
/// ([`Positioned::answered_early`]). It never stands when the node is stopping.
pub fn follow_keyspace(
    node: &Arc<crate::node::Node>,
    mut events: impl FnMut(Vec<WatchEvent>) + Send + 'static,
    lost: impl Fn() + Send + 'static,
) -> Positioned {
    let (stands, positioned) = tokio::sync::watch::channel(false);
    let positioned = Positioned {
        stands: positioned,
        early: Default::default(),
    };
    let early = positioned.early.clone();
    let watch = {
        let node = node.clone();
        move |token: Option<&str>| {
            node.watch_with(
                Selector::Prefix(Bytes::new()),
                token,
                Duration::from_secs(3600),
                false,
            )
        }
    };
    let first = match watch(None) {
        Ok(watcher) => {
            stands.send_replace(true);
            Some(watcher)
        }
        Err(WatchError::NotHere(_)) => None,
        Err(_) => return positioned,
    };
    tokio::spawn(async move {
        let mut watcher = match first {
            Some(watcher) => watcher,
            None => match from_token_or_now(&watch, None).await {
                Some((watcher, _)) => {
                    stands.send_replace(true);
                    if early.load(std::sync::atomic::Ordering::SeqCst) {
                        lost();
                    }
                    watcher
                }
                None => return,
            },
        };
        loop {
            match watcher.next().await {
                Ok(Item::Events(batch)) => events(batch),
                Ok(Item::Progress) => {}
                // A shard split (go on following the child too), or a shard's feed here
                // replaced (its replica came or went): go on from where the watch stands.
                Err(WatchError::Split(..) | WatchError::NotHere(_)) => {
                    let token = watcher.token().to_string();
                    match from_token_or_now(&watch, Some(&token)).await {
                        Some((next, resumed)) => {
                            watcher = next;
                            if !resumed {
                                lost();
                            }
                        }
                        None => return,
                    }
                }
                Err(WatchError::Compacted(_)) => match from_token_or_now(&watch, None).await {
                    Some((fresh, _)) => {
                        watcher = fresh;
                        lost();
                    }
                    None => return,
                },
                Err(_) => return,
            }
        }
    });
    positioned
}

/// How long [`follow_keyspace`] waits for a shard's feed to be there (a followed feed
/// starting) before it starts over from now.
const FEED_WAIT: Duration = Duration::from_secs(5);

/// A whole-keyspace watch from `token` (`None`: from now), waiting up to [`FEED_WAIT`] for a
/// feed not there yet; from now if that fails (`false` with it: changes may have been
/// missed). `None` when the node is stopping.
async fn from_token_or_now(
    watch: &impl Fn(Option<&str>) -> Result<Watcher, WatchError>,
    token: Option<&str>,
) -> Option<(Watcher, bool)> {
    let deadline = tokio::time::Instant::now() + FEED_WAIT;
    let mut token = token;
    loop {
        match watch(token) {
            Ok(watcher) => return Some((watcher, token.is_some())),
            Err(WatchError::Stopped) => return None,
            Err(WatchError::NotHere(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Gone from the history, or still not there: from now, as soon as it can.
            Err(_) if token.is_some() => token = None,
            Err(WatchError::NotHere(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => return None,
        }
    }
}

/// What a watch stream sends its client.
#[derive(Debug)]
pub enum Message {
    /// The first message: where the watch starts.
    Created { token: Token },
    /// Changes of one shard in log order, each with (the text of) the token right after it,
    /// and the token after them all.
    Events {
        events: Vec<(WatchEvent, String)>,
        token: Token,
    },
    /// Nothing matched for a while; the position moved on all the same.
    Progress { token: Token },
    /// The last message.
    Ended(Ending),
}

/// Why a watch stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The history it needed is gone.
    Compacted(Compacted),
    /// Anything else, said in words.
    Canceled(String),
    /// This node is shutting down or lost touch with a shard's group: the client is to resume
    /// elsewhere or later (gRPC UNAVAILABLE; SSE closes the stream, and EventSource
    /// reconnects by itself). Says why.
    Unavailable(String),
}

/// A watch as a stream of [`Message`]s, polled by a front end as its client can take them.
///
/// It runs no task and queues nothing: the front end polls it when its connection can send,
/// so a watch costs its positions and the connection's own buffers. A client that takes
/// nothing leaves it unpolled; when the front end polls it again [`STREAM_STALL_MAX`] or more
/// after the last message, the watch ends with a reason instead of going on (its client
/// resumes from its last token, or is told `compacted` if that is gone).
#[derive(Debug)]
pub struct Stream {
    watcher: Watcher,
    frontend: &'static str,
    /// The front end's count of events sent (looked up once, not per message).
    events_sent: metrics::Counter,
    /// `Created` has been given.
    started: bool,
    /// The last message was given.
    done: bool,
    /// When the last message was given: the front end asks for the next one as soon as its
    /// client took that one, unless the client stopped reading.
    given_at: Option<Instant>,
}

impl Stream {
    /// A stream of `watcher`'s messages for the front end `frontend` (in metrics).
    pub fn new(watcher: Watcher, frontend: &'static str) -> Stream {
        crate::metrics::watchers(frontend, 1.0);
        Stream {
            watcher,
            frontend,
            events_sent: crate::metrics::watch_events(frontend),
            started: false,
            done: false,
            given_at: None,
        }
    }

    /// The next message; `None` after the last.
    pub async fn next(&mut self) -> Option<Message> {
        if self.done {
            return None;
        }
        let message = self.produce().await;
        self.done = matches!(message, Message::Ended(_));
        self.given_at = Some(Instant::now());
        if let Message::Events { events, .. } = &message {
            self.events_sent.increment(events.len() as u64);
        }
        Some(message)
    }

    /// For a front end that hands one message out in parts: called as it hands out the next
    /// part. The watch ends (the ending is returned, to send instead) when the part before
    /// was left untaken for [`STREAM_STALL_MAX`] or more.
    pub fn next_part(&mut self) -> Option<Message> {
        if self.done {
            return None;
        }
        if let Some(ending) = self.stalled() {
            self.done = true;
            return Some(ending);
        }
        self.given_at = Some(Instant::now());
        None
    }

    /// The ending for a client that left the last message untaken too long, if it did.
    fn stalled(&self) -> Option<Message> {
        if self
            .given_at
            .is_none_or(|at| at.elapsed() < STREAM_STALL_MAX)
        {
            return None;
        }
        crate::metrics::watcher_dropped("stalled");
        Some(Message::Ended(Ending::Canceled(format!(
            "dropped: the client took nothing for {} s or more; resume from the last token \
             received",
            STREAM_STALL_MAX.as_secs()
        ))))
    }

    async fn produce(&mut self) -> Message {
        if !self.started {
            self.started = true;
            return Message::Created {
                token: self.watcher.token(),
            };
        }
        if let Some(ending) = self.stalled() {
            return ending;
        }
        match self.watcher.next().await {
            Ok(Item::Events(events)) => {
                let tokens = self.watcher.token_texts_after(&events);
                let events = events.into_iter().zip(tokens).collect();
                Message::Events {
                    events,
                    token: self.watcher.token(),
                }
            }
            Ok(Item::Progress) => Message::Progress {
                token: self.watcher.token(),
            },
            Err(WatchError::Compacted(compacted)) => {
                crate::metrics::watcher_dropped("compacted");
                Message::Ended(Ending::Compacted(compacted))
            }
            Err(e) if e.unavailable() => {
                if let WatchError::OutOfTouch(_) = e {
                    crate::metrics::watcher_dropped("out_of_touch");
                }
                Message::Ended(Ending::Unavailable(e.to_string()))
            }
            Err(e) => Message::Ended(Ending::Canceled(e.to_string())),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        crate::metrics::watchers(self.frontend, -1.0);
    }
}

#[cfg(test)]
mod tests;
