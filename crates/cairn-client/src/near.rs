//! The near cache: dstore's "Local" layer, kept coherent. Values this client read are kept in
//! a byte-budgeted local cache and served from it while one watch of the whole keyspace
//! (per client) tells of every change; a changed key is dropped the moment its event arrives,
//! so a value is never served after its invalidation has arrived.
//!
//! The rules that keep it coherent:
//! - **Only while the watch is live.** Until the watch is established, and from the moment it
//!   breaks or is compacted until it is established again, the cache is empty and nothing is
//!   put in it: every read goes to the cluster.
//! - **No stale fill.** A value read from the cluster is put in only if no change of its key
//!   newer than the value arrived while the read was in flight (changes are remembered, with
//!   their versions, while any read is), and the watch did not break meanwhile.
//! - **Read your writes.** A write through this client drops its keys once acknowledged, and
//!   counts as a change for reads in flight (a delete, whose version is not known, as a change
//!   newer than anything).
//!
//! Served values may lag the cluster by as long as the watch's node takes to apply a write
//! (the replication delay); reads that must be linearizable use a client without it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::watch::{WatchOptions, WatchUpdate};
use crate::{Client, Value};

/// Changes remembered for reads in flight; past this, reads in flight do not fill the cache.
pub const RECENT_CHANGES_MAX: usize = 65_536;
/// Own writes waiting for their event (to measure the invalidation delay).
pub const OWN_WRITES_TRACKED_MAX: usize = 4096;
/// Bytes one cached entry costs besides its key and value.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;
/// Sleep between attempts to establish the watch.
const WATCH_RETRY: Duration = Duration::from_millis(200);
/// How often the watch asks for progress notifications when idle.
const WATCH_PROGRESS: Duration = Duration::from_secs(1);
/// Silence after which the watch counts as broken (its node stopped or was cut off): the
/// cache empties rather than serve values nobody vouches for.
const WATCH_SILENCE_MAX: Duration = Duration::from_secs(3);

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The near cache.
    Local,
    /// The cluster.
    Cluster,
}

/// The near cache's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NearCacheStats {
    /// Whether its watch is established (otherwise every read goes to the cluster).
    pub live: bool,
    pub hits: u64,
    pub misses: u64,
    /// Keys dropped because an event told of a change.
    pub invalidations: u64,
    pub entries: u64,
    pub bytes: u64,
    /// From this client's write being acknowledged to its event arriving: the median and the
    /// 99th percentile of the last 1024, in microseconds.
    pub delay_p50_us: u64,
    pub delay_p99_us: u64,
}

#[derive(Debug, Clone)]
struct Weigher;

impl quick_cache::Weighter<Bytes, Value> for Weigher {
    fn weight(&self, key: &Bytes, value: &Value) -> u64 {
        key.len() as u64 + value.value.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

#[derive(Debug, Default)]
struct State {
    live: bool,
    /// Bumped whenever the cache is emptied (the watch broke): reads begun before do not fill.
    generation: u64,
    inflight: usize,
    /// Changes that arrived while reads were in flight: key → newest version (`u64::MAX`: a
    /// change of unknown version).
    recent: HashMap<Bytes, u64>,
    /// `recent` overflowed while reads were in flight: none of them fills.
    overflowed: bool,
    own: HashMap<(Bytes, u64), Instant>,
    /// Events that arrived before their own write's acknowledgement did (delay 0).
    early: std::collections::HashSet<(Bytes, u64)>,
    delays_us: std::collections::VecDeque<u64>,
}

/// A client's near cache (shared by the client's clones and its watch task).
#[derive(Debug)]
pub struct NearCache {
    cache: quick_cache::sync::Cache<Bytes, Value, Weigher>,
    state: parking_lot::Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

/// What [`NearCache::begin_read`] hands back for [`NearCache::end_read`]. Dropped without
/// it (the read was cancelled), it still counts the read as over.
#[derive(Debug)]
pub struct ReadTicket {
    cache: Arc<NearCache>,
    generation: u64,
    ended: bool,
}

impl Drop for ReadTicket {
    fn drop(&mut self) {
        if !self.ended {
            let mut state = self.cache.state.lock();
            NearCache::read_over(&mut state);
        }
    }
}

impl NearCache {
    pub fn new(bytes_max: u64) -> NearCache {
        let estimated_items = (bytes_max / 256).clamp(16, 1 << 24) as usize;
        NearCache {
            cache: quick_cache::sync::Cache::with_weighter(estimated_items, bytes_max, Weigher),
            state: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    /// The cached value of `key`, unless absent, expired by this machine's clock, or the
    /// watch is not live.
    pub fn lookup(&self, key: &[u8], now_ms: u64) -> Option<Value> {
        let live = self.state.lock().live;
        let found = live
            .then(|| self.cache.get(key))
            .flatten()
            .filter(|v| v.expires_at_ms.is_none_or(|at| at > now_ms));
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found.map(|mut v| {
            v.ttl_ms = v.expires_at_ms.map(|at| at - now_ms);
            v
        })
    }

    /// A read of the cluster begins.
    pub fn begin_read(self: &Arc<Self>) -> ReadTicket {
        let mut state = self.state.lock();
        state.inflight += 1;
        ReadTicket {
            cache: self.clone(),
            generation: state.generation,
            ended: false,
        }
    }

    fn read_over(state: &mut State) {
        state.inflight -= 1;
        if state.inflight == 0 {
            state.recent.clear();
            state.overflowed = false;
        }
    }

    /// The read `ticket` began got `value` for `key`: kept if no newer change arrived meanwhile
    /// and the watch stayed live (and did not start meanwhile: a watch that starts from now
    /// says nothing of what happened before it).
    pub fn end_read(&self, mut ticket: ReadTicket, key: &Bytes, value: Option<&Value>) {
        ticket.ended = true;
        let mut state = self.state.lock();
        let fresh = state.live
            && state.generation == ticket.generation
            && !state.overflowed
            && value.is_some_and(|v| state.recent.get(key).is_none_or(|&w| w <= v.version));
        if fresh {
            if let Some(value) = value {
                self.cache.insert(key.clone(), value.clone());
            }
        }
        NearCache::read_over(&mut state);
    }

    /// `key` changed at `version` (`u64::MAX`: unknown): drop it, and keep reads in flight
    /// from putting an older value back.
    fn changed(&self, state: &mut State, key: &Bytes, version: u64) {
        // A cached value at this version or newer already holds the change (a read that
        // overtook the event); anything older goes.
        if self
            .cache
            .get(key)
            .is_none_or(|cached| cached.version < version)
        {
            self.cache.remove(key);
        }
        if state.inflight > 0 {
            if state.recent.len() >= RECENT_CHANGES_MAX {
                state.overflowed = true;
            } else {
                let newest = state.recent.entry(key.clone()).or_default();
                *newest = (*newest).max(version);
            }
        }
    }

    /// An event from the watch.
    pub fn invalidate(&self, key: &Bytes, version: u64) {
        let mut state = self.state.lock();
        self.changed(&mut state, key, version);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        match state.own.remove(&(key.clone(), version)) {
            Some(at) => record_delay(&mut state, at.elapsed().as_micros() as u64),
            None => {
                if state.early.len() >= OWN_WRITES_TRACKED_MAX {
                    state.early.clear();
                }
                state.early.insert((key.clone(), version));
            }
        }
    }

    /// This client's write of `key` was acknowledged at `version` (`None`: unknown).
    pub fn wrote(&self, key: &Bytes, version: Option<u64>) {
        let mut state = self.state.lock();
        self.changed(&mut state, key, version.unwrap_or(u64::MAX));
        if let Some(version) = version {
            if state.early.remove(&(key.clone(), version)) {
                record_delay(&mut state, 0);
            } else if state.own.len() < OWN_WRITES_TRACKED_MAX {
                state.own.insert((key.clone(), version), Instant::now());
            }
        }
    }

    /// The watch is established (`true`) or broke (`false`: the cache empties and stays empty
    /// until it is established again).
    pub fn set_live(&self, live: bool) {
        let mut state = self.state.lock();
        if !live {
            self.cache.clear();
            state.own.clear();
            state.early.clear();
        }
        // Reads begun before either change do not fill: one begun while the watch was down
        // may hold a value whose change the new watch, starting from now, never tells.
        state.generation += 1;
        state.live = live;
    }

    pub fn stats(&self) -> NearCacheStats {
        let state = self.state.lock();
        let mut delays: Vec<u64> = state.delays_us.iter().copied().collect();
        delays.sort_unstable();
        let at = |q: f64| {
            delays
                .get(((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        NearCacheStats {
            live: state.live,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            delay_p50_us: at(0.5),
            delay_p99_us: at(0.99),
        }
    }
}

fn record_delay(state: &mut State, us: u64) {
    if state.delays_us.len() >= 1024 {
        state.delays_us.pop_front();
    }
    state.delays_us.push_back(us);
}

/// The client's handle on its near cache: dropping the last clone of the client stops the
/// watch task.
#[derive(Debug)]
pub(crate) struct NearHandle {
    pub cache: Arc<NearCache>,
    _stop: watch::Sender<()>,
}

impl NearHandle {
    /// Starts the cache's watch on `client` (a clone without the near cache) on the current
    /// tokio runtime.
    pub(crate) fn start(client: Client, bytes_max: u64) -> NearHandle {
        let cache = Arc::new(NearCache::new(bytes_max));
        let (stop_tx, mut stop) = watch::channel(());
        let task_cache = cache.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = follow(&client, &task_cache) => {}
                    _ = stop.changed() => return,
                }
                task_cache.set_live(false);
                tokio::select! {
                    () = tokio::time::sleep(WATCH_RETRY) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        NearHandle {
            cache,
            _stop: stop_tx,
        }
    }
}

/// Runs one watch of the whole keyspace into `cache` until it breaks.
async fn follow(client: &Client, cache: &NearCache) {
    let options = WatchOptions::prefix(Bytes::new()).progress_interval(WATCH_PROGRESS);
    let mut watch = match client.watch(options).await {
        Ok(watch) => watch,
        Err(e) => {
            tracing::debug!(error = %e, "near cache: no watch yet");
            return;
        }
    };
    // A broken stream is not resumed here: the cache starts over, empty, on a new watch.
    watch.set_reconnects_max(0);
    cache.set_live(true);
    loop {
        let Ok(next) = tokio::time::timeout(WATCH_SILENCE_MAX, watch.next()).await else {
            tracing::debug!("near cache: the watch went silent; emptied");
            return;
        };
        match next {
            Ok(WatchUpdate::Events(events)) => {
                for event in events {
                    cache.invalidate(&event.key, event.version);
                }
            }
            Ok(WatchUpdate::Progress) => {}
            Err(e) => {
                tracing::debug!(error = %e, "near cache: the watch ended; emptied");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(value: &str, version: u64) -> Value {
        Value {
            value: Bytes::copy_from_slice(value.as_bytes()),
            version,
            expires_at_ms: None,
            ttl_ms: None,
        }
    }

    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn nothing_is_cached_or_served_unless_the_watch_is_live() {
        let c = Arc::new(NearCache::new(1 << 20));
        let t = c.begin_read();
        c.end_read(t, &k("a"), Some(&v("1", 5)));
        assert!(c.lookup(b"a", 0).is_none());
        c.set_live(true);
        let t = c.begin_read();
        c.end_read(t, &k("a"), Some(&v("1", 5)));
        assert_eq!(c.lookup(b"a", 0).unwrap().value, k("1"));
        c.set_live(false);
        assert!(
            c.lookup(b"a", 0).is_none(),
            "a broken watch empties the cache"
        );
        c.set_live(true);
        assert!(c.lookup(b"a", 0).is_none());
    }

    #[test]
    fn a_change_that_arrives_during_a_read_keeps_the_older_value_out() {
        let c = Arc::new(NearCache::new(1 << 20));
        c.set_live(true);
        let t = c.begin_read();
        c.invalidate(&k("a"), 9);
        c.end_read(t, &k("a"), Some(&v("old", 5)));
        assert!(
            c.lookup(b"a", 0).is_none(),
            "version 5 is older than the change at 9"
        );
        // A read that saw the change itself (or later) fills.
        let t = c.begin_read();
        c.invalidate(&k("a"), 9);
        c.end_read(t, &k("a"), Some(&v("new", 9)));
        assert_eq!(c.lookup(b"a", 0).unwrap().value, k("new"));
        // The event of the version cached changes nothing; a later change drops it.
        c.invalidate(&k("a"), 9);
        assert!(c.lookup(b"a", 0).is_some());
        c.invalidate(&k("a"), 10);
        assert!(c.lookup(b"a", 0).is_none());
    }

    #[test]
    fn a_read_begun_before_the_watch_started_keeps_its_value_out() {
        let c = Arc::new(NearCache::new(1 << 20));
        let t = c.begin_read();
        c.set_live(true);
        c.end_read(t, &k("a"), Some(&v("1", 5)));
        assert!(c.lookup(b"a", 0).is_none());
    }

    #[test]
    fn a_cancelled_read_does_not_stop_the_cache_filling() {
        let c = Arc::new(NearCache::new(1 << 20));
        c.set_live(true);
        drop(c.begin_read());
        for i in 0..=RECENT_CHANGES_MAX {
            c.invalidate(&k(&format!("other{i}")), 1);
        }
        let t = c.begin_read();
        c.end_read(t, &k("a"), Some(&v("1", 5)));
        assert!(c.lookup(b"a", 0).is_some(), "reads no longer fill");
    }

    #[test]
    fn a_break_during_a_read_keeps_its_value_out() {
        let c = Arc::new(NearCache::new(1 << 20));
        c.set_live(true);
        let t = c.begin_read();
        c.set_live(false);
        c.set_live(true);
        c.end_read(t, &k("a"), Some(&v("1", 5)));
        assert!(c.lookup(b"a", 0).is_none());
    }

    #[test]
    fn own_writes_are_read_back_and_time_their_events() {
        let c = Arc::new(NearCache::new(1 << 20));
        c.set_live(true);
        let t = c.begin_read();
        c.end_read(t, &k("a"), Some(&v("1", 5)));
        let reading = c.begin_read();
        c.wrote(&k("a"), None);
        assert!(c.lookup(b"a", 0).is_none(), "the write dropped it");
        c.end_read(reading, &k("a"), Some(&v("1", 5)));
        assert!(
            c.lookup(b"a", 0).is_none(),
            "a read begun before a delete does not put the old value back"
        );
        c.wrote(&k("b"), Some(12));
        c.invalidate(&k("b"), 12);
        let stats = c.stats();
        assert_eq!(stats.invalidations, 1);
        assert!(stats.hits == 0 && stats.misses >= 2);
    }

    #[test]
    fn expired_values_are_not_served_and_the_budget_holds() {
        let c = Arc::new(NearCache::new(4096));
        c.set_live(true);
        let mut expiring = v("1", 1);
        expiring.expires_at_ms = Some(1000);
        let t = c.begin_read();
        c.end_read(t, &k("e"), Some(&expiring));
        assert_eq!(c.lookup(b"e", 999).unwrap().ttl_ms, Some(1));
        assert!(c.lookup(b"e", 1000).is_none());
        for i in 0..100 {
            let t = c.begin_read();
            c.end_read(t, &k(&format!("k{i}")), Some(&v(&"x".repeat(200), 1)));
        }
        assert!(c.stats().bytes <= 4096);
    }
}
