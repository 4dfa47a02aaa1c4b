//! Cursors of `SCAN`: opaque numbers naming a position in the node's keyspace.
//!
//! A position is (shard, last key returned); the node keeps the most recent positions in a
//! bounded table keyed by a random cursor id. As with Redis, a full iteration returns every key
//! that exists during the whole iteration. A cursor that fell out of the table (or was never
//! issued) starts the iteration over, which may repeat keys but never skips one.

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use cairn_resp::glob::Pattern;
use parking_lot::Mutex;

use cairn_storage::Engine;

/// Most live cursors remembered; the oldest is forgotten first.
pub const SCAN_CURSORS_MAX: usize = 4096;
/// Most keys examined by one SCAN call, whatever its COUNT.
pub const SCAN_COUNT_MAX: usize = 100_000;

/// Where a SCAN iteration stands: a shard (its id: shards split off later come after it,
/// whatever order this node opened them in) and the last key returned from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    shard: u32,
    after: Option<Bytes>,
}

impl Position {
    /// After key `after` of shard `shard` (`None`: from its first key).
    pub fn new(shard: u32, after: Option<Bytes>) -> Position {
        Position { shard, after }
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn after(&self) -> Option<&Bytes> {
        self.after.as_ref()
    }
}

/// One shard as SCAN walks it: its id and engine.
#[derive(Debug, Clone)]
pub struct ScanShard {
    pub id: u32,
    pub engine: std::sync::Arc<Engine>,
}

/// Whether shard `id` owns `key` (a split being applied leaves the moved keys in both
/// engines for a moment: each is listed from the shard the slot map names).
pub type Owns<'a> = &'a dyn Fn(u32, &[u8]) -> bool;

#[derive(Debug, Default)]
struct Table {
    positions: HashMap<u64, Position>,
    order: VecDeque<u64>,
}

/// The table of live SCAN cursors.
#[derive(Debug, Default)]
pub struct ScanCursors {
    table: Mutex<Table>,
}

impl ScanCursors {
    /// One SCAN step over the shards' engines (in shard order): returns the next cursor (0
    /// when done) and the matching keys. [`ScanCursors::position`], [`ScanCursors::page`] and
    /// [`ScanCursors::advance`] in one.
    pub fn scan(
        &self,
        shards: &[ScanShard],
        owns: Owns<'_>,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        type_filter: Option<&[u8]>,
    ) -> (u64, Vec<Bytes>) {
        let from = self.position(cursor);
        let (next, keys) = Self::page(shards, owns, from, pattern, count, type_filter);
        (self.advance(cursor, next), keys)
    }

    /// Where `cursor` resumes. An unknown cursor (expired from the table, or made up) starts
    /// over: SCAN may return a key more than once, never miss one that exists throughout.
    pub fn position(&self, cursor: u64) -> Position {
        if cursor == 0 {
            return Position::default();
        }
        self.table
            .lock()
            .positions
            .get(&cursor)
            .cloned()
            .unwrap_or_default()
    }

    /// The keys of one page from `from`, and where the next page starts (`None` when the
    /// iteration is complete). Reads only: the same page can be read twice.
    pub fn page(
        shards: &[ScanShard],
        owns: Owns<'_>,
        from: Position,
        pattern: Option<&[u8]>,
        count: usize,
        type_filter: Option<&[u8]>,
    ) -> (Option<Position>, Vec<Bytes>) {
        let mut pos = from;
        // MATCH `*` (exactly that one byte) skips matching, as Redis's scanGenericCommand does,
        // so it lists the empty key too.
        let glob = pattern
            .filter(|p| *p != b"*")
            .map(|p| Pattern::new(p, false));
        // Only strings exist: any other TYPE filter matches nothing (the keys are still walked,
        // as Redis does).
        let type_ok = type_filter.is_none_or(|t| t.eq_ignore_ascii_case(b"string"));
        let budget = count.clamp(1, SCAN_COUNT_MAX);
        let mut examined = 0;
        let mut keys = Vec::new();
        // Shards are walked by id; the position's shard, or the next one there is.
        let mut i = shards.partition_point(|s| s.id < pos.shard);
        if shards.get(i).is_none_or(|s| s.id != pos.shard) {
            pos.after = None;
        }
        while examined < budget && i < shards.len() {
            let shard = &shards[i];
            pos.shard = shard.id;
            let start = match &pos.after {
                Some(k) => Bound::Excluded(&k[..]),
                None => Bound::Unbounded,
            };
            let want = budget - examined;
            let batch = shard.engine.scan_keys(start, Bound::Unbounded, want);
            examined += batch.len();
            let exhausted = batch.len() < want;
            if let Some((last, _)) = batch.last() {
                pos.after = Some(last.clone());
            }
            keys.extend(batch.into_iter().map(|(k, _)| k).filter(|k| {
                type_ok && glob.as_ref().is_none_or(|g| g.matches(k)) && owns(shard.id, k)
            }));
            if exhausted {
                i += 1;
                pos = Position {
                    shard: shards.get(i).map_or(shard.id + 1, |s| s.id),
                    after: None,
                };
            }
        }
        ((i < shards.len()).then_some(pos), keys)
    }

    /// Retires `cursor` and issues the cursor of `next` (0 when the iteration is complete).
    pub fn advance(&self, cursor: u64, next: Option<Position>) -> u64 {
        let mut table = self.table.lock();
        table.positions.remove(&cursor);
        let Some(pos) = next else {
            return 0;
        };
        let mut id: u64 = rand::random::<u64>() >> 1;
        while id == 0 || table.positions.contains_key(&id) {
            id = rand::random::<u64>() >> 1;
        }
        if table.positions.len() >= SCAN_CURSORS_MAX {
            while let Some(old) = table.order.pop_front() {
                if table.positions.remove(&old).is_some() {
                    break;
                }
            }
        }
        table.positions.insert(id, pos);
        table.order.push_back(id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Shards = Vec<ScanShard>;

    fn shards_with(keys: &[&str]) -> (tempfile::TempDir, Shards) {
        let dir = tempfile::tempdir().unwrap();
        let map = crate::slot::SlotMap::new(4);
        let shards: Shards = (0..4)
            .map(|i| {
                let engine =
                    Engine::open(dir.path().join(i.to_string()), Default::default()).unwrap();
                ScanShard {
                    id: i as u32,
                    engine: std::sync::Arc::new(engine),
                }
            })
            .collect();
        for key in keys {
            shards[map.shard_of_key(key.as_bytes())]
                .engine
                .put(key.as_bytes(), b"v")
                .unwrap();
        }
        (dir, shards)
    }

    fn full_scan(
        cursors: &ScanCursors,
        shards: &Shards,
        pattern: Option<&[u8]>,
        count: usize,
    ) -> Vec<String> {
        let (mut cursor, mut seen) = (0, Vec::new());
        loop {
            let (next, keys) = cursors.scan(shards, &|_, _| true, cursor, pattern, count, None);
            seen.extend(keys.iter().map(|k| String::from_utf8(k.to_vec()).unwrap()));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        seen.sort();
        seen
    }

    #[test]
    fn a_full_iteration_returns_every_key_once_for_any_count() {
        let keys: Vec<String> = (0..50).map(|i| format!("key:{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (_dir, shards) = shards_with(&refs);
        let cursors = ScanCursors::default();
        let mut expected = keys.clone();
        expected.sort();
        for count in [1, 3, 10, 1000] {
            assert_eq!(
                full_scan(&cursors, &shards, None, count),
                expected,
                "COUNT {count}"
            );
        }
        // MATCH filters with Redis glob rules (via cairn-resp).
        let matched = full_scan(&cursors, &shards, Some(b"key:1?"), 7);
        assert_eq!(
            matched,
            (10..20).map(|i| format!("key:{i}")).collect::<Vec<_>>()
        );
        // TYPE other than string matches nothing; an unknown cursor starts over.
        assert!(
            cursors
                .scan(&shards, &|_, _| true, 0, None, 1000, Some(b"hash"))
                .1
                .is_empty()
        );
        let (_, restarted) = cursors.scan(&shards, &|_, _| true, 12345, None, 1000, None);
        assert_eq!(restarted.len(), 50);
    }

    #[test]
    fn the_cursor_table_is_bounded() {
        let (_dir, shards) = shards_with(&["a", "b", "c", "d", "e"]);
        let cursors = ScanCursors::default();
        for _ in 0..SCAN_CURSORS_MAX + 10 {
            let (next, _) = cursors.scan(&shards, &|_, _| true, 0, None, 1, None);
            assert_ne!(next, 0);
        }
        assert!(cursors.table.lock().positions.len() <= SCAN_CURSORS_MAX);
    }
}
