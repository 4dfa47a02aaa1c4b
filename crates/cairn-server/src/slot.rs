//! Key → slot → shard: the same slot function as Redis Cluster, so cluster-aware Redis clients
//! route keys exactly as the node does.
//!
//! slot = CRC16-XMODEM(key) mod 16384, where only the part between the first `{` and the next
//! `}` is hashed when that part is non-empty; the function lives in `cairn_proto::slot`, where
//! `cairn-client`'s route cache uses the same one. Slots are split into contiguous, near-equal
//! ranges, one per shard.

pub use cairn_proto::slot::{SLOT_COUNT, crc16_xmodem, hash_tag, key_slot};

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
