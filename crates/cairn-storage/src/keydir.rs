//! The keydir: the in-memory ordered index from key to the location of its live record.
//!
//! Ordered (a `BTreeMap`) so scans come out in key order. Each entry is a packed 28-byte
//! [`Loc`]; with the 24-byte [`KeyBuf`] (keys up to 22 bytes inline, longer ones boxed) a slot
//! costs 52 bytes plus the B-tree's node overhead. `docs/benchmarks.md` has the measured bytes
//! per key.
//!
//! Invariant: an entry exists only for a key whose newest record is a put; deletes remove the
//! entry. Expired entries stay until merge reclaims them (reads hide them by checking the clock).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, Deref};

/// Keys up to this many bytes live inside the keydir's B-tree nodes (no heap allocation, and a
/// lookup compares them without chasing a pointer per comparison).
pub(crate) const INLINE_KEY_BYTES: usize = 22;

/// A key as the keydir stores it: inline when short, boxed otherwise. 24 bytes either way.
#[derive(Clone)]
pub(crate) enum KeyBuf {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl From<&[u8]> for KeyBuf {
    fn from(key: &[u8]) -> KeyBuf {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            KeyBuf::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            KeyBuf::Heap(key.into())
        }
    }
}

impl Deref for KeyBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KeyBuf::Inline { len, bytes } => &bytes[..*len as usize],
            KeyBuf::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for KeyBuf {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl PartialEq for KeyBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for KeyBuf {}

impl PartialOrd for KeyBuf {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyBuf {
    fn cmp(&self, other: &Self) -> Ordering {
        if let (KeyBuf::Inline { bytes: a, .. }, KeyBuf::Inline { bytes: b, .. }) = (self, other) {
            // Fast path: inline keys are zero-padded, so when their first 8 bytes differ the
            // big-endian integers order exactly as the byte strings do (a shorter key's padding
            // is 0, below any byte that differs from it).
            let pa = u64::from_be_bytes(a[..8].try_into().expect("8 bytes"));
            let pb = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            if pa != pb {
                return pa.cmp(&pb);
            }
        }
        (**self).cmp(&**other)
    }
}

impl fmt::Debug for KeyBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", bytes::Bytes::copy_from_slice(self))
    }
}

/// Where a live record is, and what readers need without touching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub(crate) struct Loc {
    /// Segment id.
    pub file: u32,
    /// Byte offset of the record (its header) in the segment.
    pub offset: u32,
    pub value_len: u32,
    pub version: u64,
    /// Absolute expiry in ms since the Unix epoch; 0 = none.
    pub expires_at_ms: u64,
}

impl Loc {
    pub fn expired(&self, now_ms: u64) -> bool {
        let e = self.expires_at_ms;
        e != 0 && now_ms >= e
    }
    pub fn expiry(&self) -> Option<u64> {
        let e = self.expires_at_ms;
        (e != 0).then_some(e)
    }
}

/// The ordered index.
#[derive(Debug, Default)]
pub(crate) struct Keydir {
    map: BTreeMap<KeyBuf, Loc>,
    /// Number of entries with an expiry, so `len` can skip the scan when there are none.
    expiring: usize,
}

impl Keydir {
    /// Builds from entries sorted by key with no duplicates.
    pub fn from_sorted(entries: Vec<(KeyBuf, Loc)>) -> Keydir {
        let expiring = entries.iter().filter(|(_, l)| l.expires_at_ms != 0).count();
        Keydir {
            map: entries.into_iter().collect(),
            expiring,
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<Loc> {
        if key.len() <= INLINE_KEY_BYTES {
            // Searching by `KeyBuf` uses its integer-prefix comparison instead of `memcmp`.
            self.map.get(&KeyBuf::from(key)).copied()
        } else {
            self.map.get(key).copied()
        }
    }

    /// Inserts or replaces; returns the previous location.
    pub fn insert(&mut self, key: &[u8], loc: Loc) -> Option<Loc> {
        let old = self.map.insert(KeyBuf::from(key), loc);
        if let Some(o) = old {
            if o.expires_at_ms != 0 {
                self.expiring -= 1;
            }
        }
        if loc.expires_at_ms != 0 {
            self.expiring += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Loc> {
        let old = self.map.remove(key);
        if let Some(o) = old {
            if o.expires_at_ms != 0 {
                self.expiring -= 1;
            }
        }
        old
    }

    /// Replaces the location only if the key still points at `expected` (used by merge, which
    /// races with writers). Returns whether it did.
    pub fn replace_if(
        &mut self,
        key: &[u8],
        expected_file: u32,
        expected_offset: u32,
        new: Loc,
    ) -> bool {
        match self.map.get_mut(key) {
            Some(slot) if slot.file == expected_file && slot.offset == expected_offset => {
                let old = *slot;
                *slot = new;
                if old.expires_at_ms != 0 {
                    self.expiring -= 1;
                }
                if new.expires_at_ms != 0 {
                    self.expiring += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Removes the key only if it still points at `(file, offset)`.
    pub fn remove_if(
        &mut self,
        key: &[u8],
        expected_file: u32,
        expected_offset: u32,
    ) -> Option<Loc> {
        match self.map.get(key) {
            Some(slot) if slot.file == expected_file && slot.offset == expected_offset => {
                self.remove(key)
            }
            _ => None,
        }
    }

    /// Entries in `(start, end)`, in key order. An empty or inverted range yields nothing.
    pub fn range<'a>(
        &'a self,
        start: Bound<&'a [u8]>,
        end: Bound<&'a [u8]>,
    ) -> Box<dyn Iterator<Item = (&'a [u8], Loc)> + 'a> {
        if range_is_empty(start, end) {
            return Box::new(std::iter::empty());
        }
        Box::new(
            self.map
                .range::<[u8], _>((start, end))
                .map(|(k, v)| (&**k, *v)),
        )
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn expiring(&self) -> usize {
        self.expiring
    }
}

/// Whether `BTreeMap::range` would panic or yield nothing for these bounds.
pub(crate) fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(v: u64, exp: u64) -> Loc {
        Loc {
            file: 1,
            offset: v as u32,
            value_len: 1,
            version: v,
            expires_at_ms: exp,
        }
    }

    #[test]
    fn loc_and_key_are_compact() {
        assert_eq!(std::mem::size_of::<Loc>(), 28);
        assert_eq!(std::mem::size_of::<KeyBuf>(), 24);
    }

    #[test]
    fn inline_and_heap_keys_order_as_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\x01".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefgi".to_vec(),
            vec![0xff; 9],
            vec![b'a'; 22],
            vec![b'a'; 23],
            b"b".to_vec(),
        ];
        let bufs: Vec<KeyBuf> = keys.iter().map(|k| KeyBuf::from(&k[..])).collect();
        for (i, a) in bufs.iter().enumerate() {
            assert_eq!(&**a, &keys[i][..]);
            for (j, b) in bufs.iter().enumerate() {
                assert_eq!(a.cmp(b), keys[i].cmp(&keys[j]));
            }
        }
        assert!(matches!(bufs[9], KeyBuf::Heap(_)));
    }

    #[test]
    fn expiring_count_follows_inserts_and_removes() {
        let mut k = Keydir::default();
        k.insert(b"a", loc(1, 10));
        k.insert(b"b", loc(2, 0));
        assert_eq!(k.expiring(), 1);
        k.insert(b"a", loc(3, 0));
        assert_eq!(k.expiring(), 0);
        k.insert(b"b", loc(4, 5));
        assert_eq!(k.expiring(), 1);
        k.remove(b"b");
        assert_eq!(k.expiring(), 0);
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn inverted_ranges_are_empty_not_panics() {
        let mut k = Keydir::default();
        k.insert(b"a", loc(1, 0));
        k.insert(b"c", loc(2, 0));
        assert_eq!(
            k.range(Bound::Included(b"c"), Bound::Included(b"a"))
                .count(),
            0
        );
        assert_eq!(
            k.range(Bound::Excluded(b"a"), Bound::Excluded(b"a"))
                .count(),
            0
        );
        assert_eq!(k.range(Bound::Included(b"a"), Bound::Unbounded).count(), 2);
    }

    #[test]
    fn conditional_replace_only_when_unchanged() {
        let mut k = Keydir::default();
        k.insert(b"a", loc(1, 0));
        assert!(!k.replace_if(b"a", 1, 99, loc(5, 0)));
        assert!(k.replace_if(b"a", 1, 1, loc(5, 0)));
        assert_eq!({ k.get(b"a").unwrap().version }, 5);
        assert!(k.remove_if(b"a", 1, 1).is_none());
        assert!(k.remove_if(b"a", 1, 5).is_some());
    }
}
