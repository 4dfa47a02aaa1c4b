//! Index of keys that carry an expiry, for active expiry.
//!
//! The engine hides an expired key at once (lazy expiry) but cannot list the keys it hides, so
//! the node remembers every key written with a deadline. The shard's state machine keeps the
//! index exact as it applies writes (an [`ApplyObserver`]; rebuilt from the engine when a
//! snapshot replaces it); a background task ([`crate::node::Node::expire_cycle`]) takes the
//! keys whose deadline has passed, a bounded number per tick, and the shard leader proposes
//! their deletion — Redis's active expire cycle, with an index instead of random sampling.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use cairn_raft::{ApplyObserver, WriteOp};
use cairn_storage::Engine;
use parking_lot::Mutex;

/// A shard's expiry index, kept by its state machine.
#[derive(Debug, Default)]
pub struct ExpiryTracker {
    pub index: Mutex<ExpiryIndex>,
}

impl ExpiryTracker {
    /// A tracker holding every key of `engine` that has a deadline.
    pub fn from_engine(engine: &Engine) -> ExpiryTracker {
        let tracker = ExpiryTracker::default();
        tracker.replaced(engine, 0);
        tracker
    }
}

impl ApplyObserver for ExpiryTracker {
    fn applied(&self, _index: u64, ops: &std::sync::Arc<Vec<WriteOp>>, _cleared: &[Bytes]) {
        let mut index = self.index.lock();
        for op in ops.iter() {
            match op {
                WriteOp::Put {
                    key, expires_at_ms, ..
                } => index.set(key, *expires_at_ms),
                WriteOp::Delete { key } | WriteOp::Expire { key } => index.remove(key),
                WriteOp::Clear => index.clear(),
                WriteOp::SystemPut { .. } | WriteOp::SystemDelete { .. } => {}
                // The keys of the slots given away go with the split (the batch deleted them).
                WriteOp::Split {
                    first_slot,
                    last_slot,
                    ..
                } => index.retain(|key| {
                    !(*first_slot..=*last_slot).contains(&crate::slot::key_slot(key))
                }),
            }
        }
    }

    fn replaced(&self, engine: &Engine, _applied: u64) {
        let mut index = self.index.lock();
        index.clear();
        // Keys already expired too: only active expiry deletes them (and tells watches so).
        for (key, meta) in engine.all_keys() {
            if meta.expires_at_ms.is_some() {
                index.set(&key, meta.expires_at_ms);
            }
        }
    }
}

/// Keys with an expiry, ordered by deadline.
#[derive(Debug, Default)]
pub struct ExpiryIndex {
    by_key: HashMap<Bytes, u64>,
    by_time: BTreeSet<(u64, Bytes)>,
}

impl ExpiryIndex {
    /// Keeps only the keys `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Bytes) -> bool) {
        self.by_key.retain(|key, _| keep(key));
        self.by_time.retain(|(_, key)| keep(key));
    }

    /// Record that `key` now expires at `at_ms` (or never, with `None`).
    pub fn set(&mut self, key: &Bytes, at_ms: Option<u64>) {
        match at_ms {
            Some(at) => {
                // A copy: `key` is a slice of the buffer its write arrived in (a log entry's
                // payload), which the index would otherwise keep alive until the key expires.
                let key = Bytes::copy_from_slice(key);
                if let Some(old) = self.by_key.insert(key.clone(), at) {
                    self.by_time.remove(&(old, key.clone()));
                }
                self.by_time.insert((at, key));
            }
            None => self.remove(key),
        }
    }

    pub fn remove(&mut self, key: &Bytes) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_time.remove(&(old, key.clone()));
        }
    }

    /// The deadline recorded for `key`, if any.
    pub fn deadline(&self, key: &[u8]) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    pub fn clear(&mut self) {
        self.by_key.clear();
        self.by_time.clear();
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Up to `limit` keys whose deadline is ≤ `now_ms`, earliest first. They stay in the index
    /// until their deletion is applied.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<Bytes> {
        self.by_time
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
            .map(|(_, key)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_latest_deadline_of_each_key() {
        let mut idx = ExpiryIndex::default();
        let (a, b, c) = (Bytes::from("a"), Bytes::from("b"), Bytes::from("c"));
        idx.set(&a, Some(10));
        idx.set(&b, Some(5));
        idx.set(&c, Some(50));
        idx.set(&a, Some(100)); // rewritten with a later deadline
        assert_eq!(idx.due(20, 10), vec![b.clone()]);
        idx.set(&b, None); // persisted
        assert!(idx.due(20, 10).is_empty());
        assert_eq!(idx.due(1000, 1), vec![c.clone()]);
        assert_eq!(idx.due(1000, 10), vec![c.clone(), a.clone()]);
        idx.remove(&c);
        assert_eq!(idx.len(), 1);
        idx.clear();
        assert!(idx.is_empty());
    }

    #[test]
    fn a_key_is_kept_without_the_buffer_it_arrived_in() {
        let mut idx = ExpiryIndex::default();
        let arrived = Bytes::from(vec![b'k'; 4096]);
        idx.set(&arrived.slice(0..8), Some(10));
        assert!(
            arrived.is_unique(),
            "the index holds the whole arrival buffer"
        );
        assert_eq!(idx.due(20, 10), vec![arrived.slice(0..8)]);
    }
}
