//! The value read cache: an LRU-style cache (quick_cache's CLOCK-Pro) with a byte budget.
//!
//! Keyed by record location (segment id, offset), not by key: a location's bytes never change,
//! so an overwrite or delete needs no invalidation; stale entries just age out.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Per-entry bookkeeping cost charged against the budget on top of the value bytes.
const CACHE_ENTRY_OVERHEAD_BYTES: u64 = 64;
/// Assumed average entry size, used only to pre-size the cache's tables.
const CACHE_ENTRY_ESTIMATE_BYTES: u64 = 512;

#[derive(Debug, Clone, Copy)]
struct ByteWeighter;

impl Weighter<u64, Bytes> for ByteWeighter {
    fn weight(&self, _key: &u64, value: &Bytes) -> u64 {
        value.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES
    }
}

/// The cache plus hit/miss counters. A budget of 0 disables it.
#[derive(Debug)]
pub(crate) struct ValueCache {
    cache: Option<Cache<u64, Bytes, ByteWeighter>>,
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
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, location: u64) -> Option<Bytes> {
        let cache = self.cache.as_ref()?;
        let hit = cache.get(&location);
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn insert(&self, location: u64, value: Bytes) {
        if let Some(cache) = &self.cache {
            cache.insert(location, value);
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

    #[test]
    fn budget_bounds_contents() {
        let c = ValueCache::new(10_000);
        for i in 0..1000u64 {
            c.insert(i, Bytes::from(vec![0u8; 100]));
        }
        let kept = (0..1000u64).filter(|i| c.get(*i).is_some()).count();
        assert!(kept > 0 && kept < 100, "kept {kept}");
    }

    #[test]
    fn zero_budget_disables() {
        let c = ValueCache::new(0);
        c.insert(1, Bytes::from_static(b"x"));
        assert!(c.get(1).is_none());
        assert_eq!(c.misses(), 0);
    }
}
