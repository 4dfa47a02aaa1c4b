use super::*;
use crate::feed::FeedLimits;
use crate::feed::test_ops::{b, ops, put};
use cairn_raft::{ApplyObserver, WriteOp};

struct Feeds {
    feeds: Vec<Arc<Feed>>,
    wake: Arc<tokio::sync::watch::Sender<u64>>,
    touch: tokio::sync::watch::Sender<crate::node::OutOfTouch>,
}

fn feeds(count: u32, limits: FeedLimits) -> Feeds {
    let wake = Arc::new(tokio::sync::watch::channel(0).0);
    Feeds {
        feeds: (0..count)
            .map(|shard| Arc::new(Feed::new(shard, 0, limits, wake.clone())))
            .collect(),
        wake,
        touch: tokio::sync::watch::channel(Default::default()).0,
    }
}

impl Feeds {
    fn watch(&self, selector: Selector, from: Option<&Token>) -> Result<Watcher, WatchError> {
        Watcher::new(
            selector,
            self.feeds.clone(),
            from,
            Duration::from_secs(3600),
            self.wake.subscribe(),
            Some(self.touch.subscribe()),
        )
    }
}

#[test]
fn tokens_read_back_as_written_and_bad_ones_are_refused() {
    for text in ["0:0", "0:15,1:9.2,2:33,3:7", "7:18446744073709551615"] {
        assert_eq!(Token::parse(text).unwrap().to_string(), text);
    }
    for bad in [
        "", "0", "x:1", "0:x", "0:1.x", "0:1,0:2", "0:0.3", "0:1;1:2",
    ] {
        assert!(
            matches!(Token::parse(bad), Err(WatchError::BadToken(_))),
            "{bad:?} was accepted"
        );
    }
    let long = "0:1,".repeat(TOKEN_BYTES_MAX / 4 + 1);
    assert!(Token::parse(&long).is_err());
}

#[test]
fn selectors_match_as_their_names_say() {
    assert!(Selector::Key(b("a")).matches(b"a"));
    assert!(!Selector::Key(b("a")).matches(b"ab"));
    assert!(Selector::Prefix(b("ab")).matches(b"abc"));
    assert!(!Selector::Prefix(b("ab")).matches(b"a"));
    assert!(Selector::Prefix(Bytes::new()).matches(b""));
    let range = Selector::Range(KeyRange {
        start: Bound::Excluded(b("b")),
        end: Bound::Included(b("d")),
    });
    assert!(!range.matches(b"b"));
    assert!(range.matches(b"c"));
    assert!(range.matches(b"d"));
    assert!(!range.matches(b"da"));
}

/// Everything a watcher gives until it has nothing more (it never waits).
async fn drain(w: &mut Watcher) -> Vec<(WatchEvent, Token)> {
    let mut out = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_millis(20), w.next()).await;
        match item {
            Ok(Ok(Item::Events(events))) => {
                let texts = w.token_texts_after(&events);
                for (e, text) in events.into_iter().zip(texts) {
                    let token = w.token_after(&e);
                    assert_eq!(text, token.to_string(), "the fast token text");
                    out.push((e, token));
                }
            }
            Ok(Ok(Item::Progress)) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => return out,
        }
    }
}

#[tokio::test]
async fn a_watch_resumed_from_any_event_token_repeats_and_misses_nothing() {
    let f = feeds(3, FeedLimits::default());
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Entries of 1–4 changes on three shards, some keys outside the prefix.
    let mut index = [0u64; 3];
    for _ in 0..120 {
        let shard = next(3) as usize;
        index[shard] += 1;
        let ops: Vec<WriteOp> = (0..1 + next(4))
            .map(|_| {
                let key = format!("{}{}", if next(4) == 0 { "other/" } else { "p/" }, next(10));
                match next(3) {
                    0 => WriteOp::Delete { key: b(&key) },
                    1 => WriteOp::Expire { key: b(&key) },
                    _ => put(&key, "v"),
                }
            })
            .collect();
        f.feeds[shard].applied(index[shard], &Arc::new(ops), &[]);
    }
    let start = Token((0..3).map(|s| (s, Pos::after(0))).collect());
    let selector = Selector::Prefix(b("p/"));
    let mut w = f.watch(selector.clone(), Some(&start)).unwrap();
    let all = drain(&mut w).await;
    assert!(all.len() > 100);
    assert!(all.iter().all(|(e, _)| e.event.key.starts_with(b"p/")));
    // Per shard, in log order.
    for shard in 0..3 {
        let revisions: Vec<u64> = all
            .iter()
            .filter(|(e, _)| e.shard == shard)
            .map(|(e, _)| e.revision)
            .collect();
        assert!(revisions.windows(2).all(|w| w[0] <= w[1]));
    }
    let key = |e: &WatchEvent| (e.shard, e.revision, e.after);
    let mut every: Vec<_> = all.iter().map(|(e, _)| key(e)).collect();
    every.sort();
    // Resumed after any event: the rest, exactly (as a set per shard, in order per shard).
    for cut in (0..all.len()).step_by(7) {
        let token = &all[cut].1;
        let mut resumed = f.watch(selector.clone(), Some(token)).unwrap();
        let rest = drain(&mut resumed).await;
        let mut got: Vec<_> = all[..=cut]
            .iter()
            .chain(rest.iter())
            .map(|(e, _)| key(e))
            .collect();
        got.sort();
        let before = got.len();
        got.dedup();
        assert_eq!(before, got.len(), "an event came twice after cut {cut}");
        assert_eq!(got, every, "events missing after cut {cut}");
    }
}

#[tokio::test]
async fn a_watch_from_now_sees_only_later_changes_and_a_key_watch_only_its_key() {
    let f = feeds(1, FeedLimits::default());
    f.feeds[0].applied(1, ops![put("k", "old")], &[]);
    let mut w = f.watch(Selector::Key(b("k")), None).unwrap();
    assert_eq!(w.token().to_string(), "0:1");
    f.feeds[0].applied(2, ops![put("other", "x"), put("k", "new")], &[]);
    let Ok(Item::Events(events)) = w.next().await else {
        panic!("no events");
    };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.value, b("new"));
    assert_eq!(events[0].revision, 2);
    assert_eq!(w.token().to_string(), "0:2");
}

#[tokio::test]
async fn history_gone_is_refused_at_the_start_and_ends_a_watch_that_fell_behind() {
    let f = feeds(
        1,
        FeedLimits {
            events_max: 2,
            bytes_max: usize::MAX,
        },
    );
    let token = Token::parse("0:0").unwrap();
    let mut w = f
        .watch(Selector::Prefix(Bytes::new()), Some(&token))
        .unwrap();
    for i in 1..=5 {
        f.feeds[0].applied(i, ops![put("k", "v")], &[]);
    }
    assert_eq!(
        w.next().await.unwrap_err(),
        WatchError::Compacted(Compacted {
            shard: 0,
            revision: 3
        })
    );
    assert!(matches!(
        f.watch(Selector::Prefix(Bytes::new()), Some(&token)),
        Err(WatchError::Compacted(_))
    ));
    let missing = Token::parse("1:0").unwrap();
    assert!(matches!(
        f.watch(Selector::Prefix(Bytes::new()), Some(&missing)),
        Err(WatchError::BadToken(_))
    ));
}

#[tokio::test]
async fn a_token_ahead_of_this_replica_waits_for_it() {
    let f = feeds(1, FeedLimits::default());
    f.feeds[0].applied(1, ops![put("a", "1"), put("b", "1")], &[]);
    // From a replica that had applied entry 2 partly delivered (1 of its 2 events).
    let ahead = Token::parse("0:2.1").unwrap();
    let mut w = f
        .watch(Selector::Prefix(Bytes::new()), Some(&ahead))
        .unwrap();
    assert!(drain(&mut w).await.is_empty());
    assert_eq!(w.token(), ahead, "the position did not move back");
    f.feeds[0].applied(2, ops![put("c", "1"), put("d", "1")], &[]);
    let events = drain(&mut w).await;
    let keys: Vec<_> = events.iter().map(|(e, _)| e.event.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b("d")],
        "the first event of entry 2 was had already"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_watch_gets_progress_and_a_stopped_node_ends_it() {
    let f = feeds(1, FeedLimits::default());
    let mut w = Watcher::new(
        Selector::Prefix(Bytes::new()),
        f.feeds.clone(),
        None,
        Duration::from_secs(1),
        f.wake.subscribe(),
        None,
    )
    .unwrap();
    f.feeds[0].applied(
        1,
        ops![WriteOp::SystemPut {
            key: b("s"),
            value: b("v"),
        }],
        &[],
    );
    assert!(matches!(w.next().await, Ok(Item::Progress)));
    assert_eq!(
        w.token().to_string(),
        "0:1",
        "progress carries the position on"
    );
    f.wake.send_replace(WAKE_STOPPED);
    assert_eq!(w.next().await.unwrap_err(), WatchError::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_watch_ends_when_one_of_its_shards_loses_touch_and_cannot_start_then() {
    let f = feeds(2, FeedLimits::default());
    let mut on_key = f.watch(Selector::Key(b("k")), None).unwrap();
    on_key.feeds.truncate(1); // as a key's watch: shard 0 only
    let mut everything = f.watch(Selector::Prefix(Bytes::new()), None).unwrap();
    let waiting = tokio::spawn(async move { everything.next().await });
    tokio::task::yield_now().await;
    f.touch.send_replace(Arc::new(vec![1]));
    assert_eq!(
        waiting.await.unwrap().unwrap_err(),
        WatchError::OutOfTouch(1),
        "a waiting watch over shard 1 ends at once"
    );
    f.feeds[0].applied(1, ops![put("k", "v")], &[]);
    assert!(
        matches!(on_key.next().await, Ok(Item::Events(_))),
        "a watch of shard 0 alone goes on"
    );
    assert_eq!(
        f.watch(Selector::Prefix(Bytes::new()), None).unwrap_err(),
        WatchError::OutOfTouch(1)
    );
    let stream = Stream::new(on_key, "test");
    f.touch.send_replace(Arc::new(vec![0]));
    let mut stream = stream;
    assert!(matches!(stream.next().await, Some(Message::Created { .. })));
    assert!(
        matches!(stream.next().await, Some(Message::Ended(Ending::Unavailable(reason))) if reason.contains("another node")),
        "the client is told to resume elsewhere"
    );
    f.touch.send_replace(Arc::default());
    assert!(f.watch(Selector::Prefix(Bytes::new()), None).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_stream_drops_a_client_that_took_nothing_for_too_long() {
    let f = feeds(1, FeedLimits::default());
    let w = f.watch(Selector::Prefix(Bytes::new()), None).unwrap();
    let mut stream = Stream::new(w, "test");
    assert!(matches!(stream.next().await, Some(Message::Created { .. })));
    f.feeds[0].applied(1, ops![put("k", "v")], &[]);
    assert!(matches!(stream.next().await, Some(Message::Events { .. })));
    // A client that takes its messages at once is never dropped, however idle the watch.
    f.feeds[0].applied(2, ops![put("k", "v")], &[]);
    assert!(matches!(stream.next().await, Some(Message::Events { .. })));
    // One that left the last message untaken for too long is.
    f.feeds[0].applied(3, ops![put("k", "v")], &[]);
    tokio::time::sleep(STREAM_STALL_MAX).await;
    match stream.next().await {
        Some(Message::Ended(Ending::Canceled(reason))) => {
            assert!(reason.contains("took nothing"), "{reason}")
        }
        other => panic!("not dropped: {other:?}"),
    }
    assert!(stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_narrow_watch_behind_a_long_backlog_catches_up_without_waiting() {
    let f = feeds(1, FeedLimits::default());
    for i in 1..=3000 {
        f.feeds[0].applied(i, ops![put(&format!("other/{i}"), "v")], &[]);
    }
    f.feeds[0].applied(3001, ops![put("p/1", "v")], &[]);
    let from = Token::parse("0:0").unwrap();
    let mut w = f.watch(Selector::Prefix(b("p/")), Some(&from)).unwrap();
    // Progress comes only after an hour: the event must come from reading on, not waiting.
    let item = tokio::time::timeout(Duration::from_secs(1), w.next()).await;
    match item {
        Ok(Ok(Item::Events(events))) => assert_eq!(events[0].event.key, b("p/1")),
        other => panic!("the backlog stalled the watch: {other:?}"),
    }
}

#[test]
fn a_watch_keeps_its_own_copy_of_the_selector_not_the_request_buffer() {
    let f = feeds(1, FeedLimits::default());
    // As prost decodes a request: the prefix is a slice of the call's whole receive buffer.
    let buffer = Bytes::from(vec![b'p'; 8192]);
    let w = f.watch(Selector::Prefix(buffer.slice(0..3)), None).unwrap();
    let Selector::Prefix(prefix) = &w.selector else {
        panic!("a prefix watch");
    };
    assert_eq!(&prefix[..], b"ppp");
    assert!(
        !buffer.as_ptr_range().contains(&prefix.as_ptr()),
        "the watch would keep the 8 KiB buffer alive for its whole life"
    );
}

#[tokio::test]
async fn a_token_from_the_start_of_a_split_off_shard_starts_where_it_was_created() {
    let wake = Arc::new(tokio::sync::watch::channel(0).0);
    // Shard 1, created by a split at index 40 of its parent's log: its history starts there.
    let child = Arc::new(Feed::new(1, 40, FeedLimits::default(), wake.clone()).born_at(40));
    child.applied(41, ops![put("k", "v")], &[]);
    let watch = |text: &str| {
        Watcher::new(
            Selector::Prefix(Bytes::new()),
            vec![child.clone()],
            Some(&Token::parse(text).unwrap()),
            Duration::from_secs(3600),
            wake.subscribe(),
            None,
        )
    };
    let mut w = watch("1:0").expect("from the start of the child");
    let events = drain(&mut w).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(w.token().to_string(), "1:41");
    // A position inside its history is taken as it is.
    let mut w = watch("1:41").unwrap();
    assert!(drain(&mut w).await.is_empty());
}
