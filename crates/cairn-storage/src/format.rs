//! The on-disk record format: one place that knows how bytes in a segment are laid out.
//!
//! Every other module goes through [`Header`], [`encode_record`] and [`check_record`], so the
//! layout described in `docs/design.md` ("Storage engine") lives here and nowhere else.
//!
//! Record layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 4 | CRC32C over bytes 4..end of the record (rest of header, key, value) |
//! | 4  | 1 | kind: 1 put, 2 delete, 3 last-applied marker, 4 system put, 5 system delete |
//! | 5  | 1 | flags: bit 0 = COMMIT (last record of an atomic write) |
//! | 6  | 2 | reserved, zero |
//! | 8  | 4 | key length |
//! | 12 | 4 | value length |
//! | 16 | 8 | version (sequence number) |
//! | 24 | 8 | absolute expiry in ms since the Unix epoch, 0 = none |
//! | 32 | k | key |
//! | 32+k | v | value |
//!
//! Kinds 4 and 5 are records of the engine's system table, a keyspace of its own that no
//! user-facing read sees (see `Engine::system_get`): a system put carries key and value, a
//! system delete the key and an empty value; both have expiry 0. Directories written before
//! they existed hold none and open unchanged.

use crate::KEY_BYTES_MAX;

/// Size of the fixed record header.
pub(crate) const RECORD_HEADER_BYTES: usize = 32;
/// Magic at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNSG1";
/// Segment file header: magic (8), format version (4), origin (1), reserved (3), base
/// sequence (8): the engine's last sequence when the segment was created, so the sequence never
/// goes backwards after merge drops the records that carried the highest versions.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 24;
/// On-disk format version written into every segment header: 2 since system records
/// (kinds 4 and 5) exist, so that a build that knows only version 1 refuses a segment it
/// would misread (it would take the first system record for a torn tail) instead of
/// truncating acknowledged writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Segment format versions this build reads: version 1 holds no system records.
const FORMAT_VERSIONS_READ: [u32; 2] = [1, 2];
/// Largest value length a record may declare, whatever the configured limit; bounds allocation
/// when a corrupt header is read.
pub(crate) const RECORD_VALUE_BYTES_LIMIT: usize = 1 << 30;

/// Flag: this record ends an atomic write (a single put/delete, or the last record of a batch).
pub(crate) const FLAG_COMMIT: u8 = 1;
const FLAGS_KNOWN: u8 = FLAG_COMMIT;

/// What a record means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A key/value write.
    Put = 1,
    /// A tombstone: the key is deleted as of this version.
    Delete = 2,
    /// The replication layer's opaque "last applied" marker (value), key empty.
    Marker = 3,
    /// A record of the system table (key, value; no expiry), not of the keyspace.
    SystemPut = 4,
    /// A system-table tombstone (key, empty value).
    SystemDelete = 5,
}

impl Kind {
    pub(crate) fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Marker),
            4 => Some(Kind::SystemPut),
            5 => Some(Kind::SystemDelete),
            _ => None,
        }
    }

    /// Whether hint entries of this kind carry the record's value (markers and system puts:
    /// both are held in memory, so `open` must have them without reading segments).
    pub(crate) fn value_in_hint(self) -> bool {
        matches!(self, Kind::Marker | Kind::SystemPut)
    }
}

/// Where a segment came from. Only log segments can have a torn tail; merge output is fsynced
/// before it becomes visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Log = 0,
    Merge = 1,
}

/// The segment file header.
pub(crate) fn encode_segment_header(origin: Origin, base_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12] = origin as u8;
    h[16..24].copy_from_slice(&base_seq.to_le_bytes());
    h
}

/// Parses a segment header into (origin, base sequence); `None` when it is not one of ours.
pub(crate) fn decode_segment_header(h: &[u8]) -> Option<(Origin, u64)> {
    if h.len() < SEGMENT_HEADER_BYTES || &h[0..8] != SEGMENT_MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(h[8..12].try_into().ok()?);
    if !FORMAT_VERSIONS_READ.contains(&version) || h[13..16] != [0, 0, 0] {
        return None;
    }
    let base_seq = u64::from_le_bytes(h[16..24].try_into().ok()?);
    match h[12] {
        0 => Some((Origin::Log, base_seq)),
        1 => Some((Origin::Merge, base_seq)),
        _ => None,
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub key_len: u32,
    pub value_len: u32,
    pub version: u64,
    /// 0 means no expiry.
    pub expires_at_ms: u64,
}

impl Header {
    /// Decodes and sanity-checks a header (not the CRC, which covers the whole record).
    pub fn decode(b: &[u8]) -> Result<Header, &'static str> {
        if b.len() < RECORD_HEADER_BYTES {
            return Err("short header");
        }
        let kind = Kind::from_u8(b[4]).ok_or("unknown record kind")?;
        let flags = b[5];
        if flags & !FLAGS_KNOWN != 0 || b[6] != 0 || b[7] != 0 {
            return Err("unknown flags");
        }
        let key_len = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let value_len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if key_len as usize > KEY_BYTES_MAX {
            return Err("key length over limit");
        }
        if value_len as usize > RECORD_VALUE_BYTES_LIMIT {
            return Err("value length over limit");
        }
        let version = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let expires_at_ms = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        Ok(Header {
            kind,
            flags,
            key_len,
            value_len,
            version,
            expires_at_ms,
        })
    }

    /// Total bytes of the record this header starts.
    pub fn record_len(&self) -> usize {
        record_len(self.key_len as usize, self.value_len as usize)
    }

    pub fn is_commit(&self) -> bool {
        self.flags & FLAG_COMMIT != 0
    }
}

/// Total bytes of a record with this key and value length.
pub(crate) fn record_len(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER_BYTES + key_len + value_len
}

/// Appends an unsealed record (CRC zero) to `buf`; the caller patches the version and seals it
/// with [`seal_record`] once the version is known. Returns the record's start in `buf`.
pub(crate) fn encode_record(
    buf: &mut Vec<u8>,
    kind: Kind,
    key: &[u8],
    value: &[u8],
    version: u64,
    expires_at_ms: u64,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    buf.push(kind as u8);
    buf.push(0);
    buf.extend_from_slice(&[0u8; 2]);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&expires_at_ms.to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    start
}

/// Sets the version of the record starting at `rec[0]`.
pub(crate) fn set_version(rec: &mut [u8], version: u64) {
    rec[16..24].copy_from_slice(&version.to_le_bytes());
}

/// Sets or clears the COMMIT flag of the record starting at `rec[0]`.
pub(crate) fn set_commit(rec: &mut [u8], commit: bool) {
    if commit {
        rec[5] |= FLAG_COMMIT;
    } else {
        rec[5] &= !FLAG_COMMIT;
    }
}

/// Computes and stores the CRC of a complete record (`rec` is exactly one record).
pub(crate) fn seal_record(rec: &mut [u8]) {
    let crc = crc32c::crc32c(&rec[4..]);
    rec[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the CRC of a complete record (`rec` is exactly one record) matches.
pub(crate) fn check_record(rec: &[u8]) -> bool {
    rec.len() >= RECORD_HEADER_BYTES
        && u32::from_le_bytes(rec[0..4].try_into().expect("4 bytes")) == crc32c::crc32c(&rec[4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_flips() {
        let mut buf = Vec::new();
        let start = encode_record(&mut buf, Kind::Put, b"key", b"value", 0, 77);
        set_version(&mut buf[start..], 42);
        set_commit(&mut buf[start..], true);
        seal_record(&mut buf[start..]);
        assert!(check_record(&buf));
        let h = Header::decode(&buf).unwrap();
        assert_eq!(h.kind, Kind::Put);
        assert_eq!(h.version, 42);
        assert_eq!(h.expires_at_ms, 77);
        assert!(h.is_commit());
        assert_eq!(h.record_len(), buf.len());
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(!check_record(&bad), "flip at byte {i} not detected");
        }
    }

    #[test]
    fn every_kind_round_trips_and_others_are_refused() {
        for kind in [
            Kind::Put,
            Kind::Delete,
            Kind::Marker,
            Kind::SystemPut,
            Kind::SystemDelete,
        ] {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
            let mut buf = Vec::new();
            encode_record(&mut buf, kind, b"k", b"v", 3, 0);
            assert_eq!(Header::decode(&buf).unwrap().kind, kind);
        }
        assert_eq!(Kind::SystemPut as u8, 4);
        assert_eq!(Kind::SystemDelete as u8, 5);
        for b in [0u8, 6, 255] {
            assert_eq!(Kind::from_u8(b), None);
        }
    }

    #[test]
    fn header_rejects_garbage() {
        let mut buf = vec![0u8; RECORD_HEADER_BYTES];
        assert!(Header::decode(&buf).is_err());
        buf[4] = 1;
        buf[8..12].copy_from_slice(&(KEY_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(Header::decode(&buf).is_err());
    }

    #[test]
    fn segment_header_round_trips() {
        let h = encode_segment_header(Origin::Merge, 77);
        assert_eq!(decode_segment_header(&h), Some((Origin::Merge, 77)));
        assert_eq!(decode_segment_header(&h[..4]), None);
    }
}
