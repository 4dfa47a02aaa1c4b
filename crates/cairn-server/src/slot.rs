//! Key → slot → shard: the same slot function as Redis Cluster, so cluster-aware Redis clients
//! route keys exactly as the node does.
//!
//! slot = CRC16-XMODEM(key) mod 16384, where only the part between the first `{` and the next
//! `}` is hashed when that part is non-empty. Slots are split into contiguous, near-equal
//! ranges, one per shard.

/// Number of hash slots, as in Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// CRC16 with the XMODEM parameters (poly 0x1021, init 0, no reflection), as Redis's
/// `crc16.c`, one table lookup per byte.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ byte)]
    })
}

/// CRC16-XMODEM of every single byte, computed at compile time.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The part of `key` that is hashed: the `{tag}` contents when present and non-empty.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The Redis Cluster hash slot of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) & (SLOT_COUNT - 1)
}

/// Contiguous slot ranges, one per shard.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// `first_slot[i]` is the first slot of shard `i`; shard `i` ends where `i + 1` starts.
    first_slot: Vec<u16>,
}

impl SlotMap {
    /// Split the slots into `shards` near-equal contiguous ranges (1 ≤ shards ≤ 16384).
    pub fn new(shards: u32) -> SlotMap {
        assert!(
            shards >= 1 && shards <= u32::from(SLOT_COUNT),
            "shard count out of range"
        );
        let first_slot = (0..shards)
            .map(|i| (u64::from(i) * u64::from(SLOT_COUNT) / u64::from(shards)) as u16)
            .collect();
        SlotMap { first_slot }
    }

    pub fn shard_count(&self) -> usize {
        self.first_slot.len()
    }

    /// The shard owning `slot`.
    pub fn shard_of_slot(&self, slot: u16) -> usize {
        self.first_slot.partition_point(|&first| first <= slot) - 1
    }

    /// The shard owning `key`.
    pub fn shard_of_key(&self, key: &[u8]) -> usize {
        self.shard_of_slot(key_slot(key))
    }

    /// Inclusive slot range `(first, last)` of `shard`.
    pub fn range(&self, shard: usize) -> (u16, u16) {
        let first = self.first_slot[shard];
        let last = self
            .first_slot
            .get(shard + 1)
            .map_or(SLOT_COUNT - 1, |next| next - 1);
        (first, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_spec() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b""), 0);
    }

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on a real Redis.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"hello"), 866);
        assert_eq!(key_slot(b"somekey"), 11058);
    }

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(
            key_slot(b"{user1000}.followers"),
            key_slot(b"{user1000}.following")
        );
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        // Only the first `{` and the first `}` after it count.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        // No closing brace.
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
    }

    #[test]
    fn slot_map_covers_every_slot_once() {
        for shards in [1, 3, 16, 100, 16384] {
            let map = SlotMap::new(shards);
            assert_eq!(map.range(0).0, 0);
            assert_eq!(map.range(map.shard_count() - 1).1, SLOT_COUNT - 1);
            for s in 1..map.shard_count() {
                assert_eq!(map.range(s).0, map.range(s - 1).1 + 1);
            }
            for slot in [0, 1, 1023, 1024, 8191, 16383] {
                let shard = map.shard_of_slot(slot);
                let (first, last) = map.range(shard);
                assert!(first <= slot && slot <= last);
            }
        }
        let map = SlotMap::new(16);
        assert_eq!(map.range(0), (0, 1023));
        assert_eq!(map.range(15), (15360, 16383));
    }
}
