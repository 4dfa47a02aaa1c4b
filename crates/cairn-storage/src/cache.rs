//! The value read cache: an LRU-style cache (quick_cache's CLOCK-Pro) with a byte budget.
//!
//! Keyed by key, so a hit skips the keydir's B-tree descent as well as the disk read.
//! Invariants that keep it from ever serving a stale value:
//! - every write removes its keys from the cache while holding the state write lock, in the
//!   same critical section that updates the keydir;
//! - a reader fills the cache only after re-checking, under the state read lock, that the keydir
//!   still points at the record it read, so a write racing with the read wins.
//!
//! Merge moves records without changing their value, version or expiry, so it needs no
//! invalidation; an expired entry is hidden on a hit by its stored expiry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Per-entry bookkeeping cost charged against the budget on top of key and value bytes.
const CACHE_ENTRY_OVERHEAD_BYTES: u64 = 96;
/// Assumed average entry size, used only to pre-size the cache's tables.
const CACHE_ENTRY_ESTIMATE_BYTES: u64 = 512;

/// What a hit returns: the value and the metadata a read reports with it.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub value: Bytes,
    pub version: u64,
    /// 0 = no expiry.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct ByteWeighter;

impl Weighter<Bytes, Cached> for ByteWeighter {
    fn weight(&self, key: &Bytes, cached: &Cached) -> u64 {
        (key.len() + cached.value.len()) as u64 + CACHE_ENTRY_OVERHEAD_BYTES
    }
}

/// The cache plus hit/miss counters. A budget of 0 disables it.
#[derive(Debug)]
pub(crate) struct ValueCache {
    cache: Option<Cache<Bytes, Cached, ByteWeighter>>,
    /// Set by the first insert; until then writes skip the removal probe (a load phase with
    /// no reads pays nothing for the cache). The state lock orders it: inserts happen under the
    /// read lock, removals under the write lock.
    filled: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ValueCache {
    pub fn new(budget_bytes: u64) -> ValueCache {
        let cache = (budget_bytes > 0).then(|| {
            let items = (budget_bytes / CACHE_ENTRY_ESTIMATE_BYTES).clamp(16, 1 << 22) as usize;
            Cache::with_weighter(items, budget_bytes, ByteWeighter)
        });
        ValueCache {
            cache,
            filled: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    pub fn get(&self, key: &[u8]) -> Option<Cached> {
        let cache = self.cache.as_ref()?;
        let hit = cache.get(key);
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Caller holds the state read lock and has checked the keydir (see the module doc).
    pub fn insert(&self, key: &[u8], cached: Cached) {
        if let Some(cache) = &self.cache {
            self.filled.store(true, Ordering::Relaxed);
            cache.insert(Bytes::copy_from_slice(key), cached);
        }
    }

    /// Caller holds the state write lock (see the module doc).
    pub fn remove(&self, key: &[u8]) {
        if let Some(cache) = &self.cache {
            if self.filled.load(Ordering::Relaxed) {
                cache.remove(key);
            }
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(n: usize) -> Cached {
        Cached {
            value: Bytes::from(vec![0u8; n]),
            version: 1,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn budget_bounds_contents() {
        let c = ValueCache::new(10_000);
        for i in 0..1000u64 {
            c.insert(&i.to_le_bytes(), cached(100));
        }
        let kept = (0..1000u64)
            .filter(|i| c.get(&i.to_le_bytes()).is_some())
            .count();
        assert!(kept > 0 && kept < 100, "kept {kept}");
    }

    #[test]
    fn remove_invalidates() {
        let c = ValueCache::new(10_000);
        c.insert(b"k", cached(3));
        assert!(c.get(b"k").is_some());
        c.remove(b"k");
        assert!(c.get(b"k").is_none());
    }

    #[test]
    fn zero_budget_disables() {
        let c = ValueCache::new(0);
        c.insert(b"k", cached(1));
        assert!(c.get(b"k").is_none());
        assert_eq!(c.misses(), 0);
        assert!(!c.enabled());
    }
}
