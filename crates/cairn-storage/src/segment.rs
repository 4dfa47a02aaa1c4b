//! Segment files: append-only logs of records, and the scanner that reads them back.
//!
//! A segment is named `<id, 10 digits>.seg`, starts with a 24-byte header (see `format`) and
//! then holds records back to back. Only the active log segment is ever appended to; once
//! sealed (rotated, or written by merge) it is immutable until merge deletes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::{
    self, Header, Origin, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, decode_segment_header,
    encode_segment_header,
};
use crate::{Error, Result};
use cairn_io::{Io, IoFile};

pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
pub(crate) const HINT_SUFFIX: &str = ".hint";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn segment_name(id: u32) -> String {
    format!("{id:010}{SEGMENT_SUFFIX}")
}

pub(crate) fn hint_name(id: u32) -> String {
    format!("{id:010}{HINT_SUFFIX}")
}

/// Parses `<digits><suffix>` into an id.
pub(crate) fn parse_name(name: &str, suffix: &str) -> Option<u32> {
    let stem = name.strip_suffix(suffix)?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One open segment and its accounting.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: u32,
    pub file: Arc<dyn IoFile>,
    pub path: PathBuf,
    /// Bytes in the file (header included).
    pub total_bytes: AtomicU64,
    /// Bytes of records the keydir points at.
    pub live_bytes: AtomicU64,
    /// Lowest and highest version of any record in the file (`u64::MAX`/0 when empty). Merge
    /// uses `min_version` to decide whether a tombstone can still shadow anything.
    pub min_version: AtomicU64,
    pub max_version: AtomicU64,
    /// Earliest expiry of any put written to the file (`u64::MAX` when none): once it passes,
    /// the segment may hold expired data that only merge reclaims.
    pub expiry_min_ms: AtomicU64,
}

impl Segment {
    pub fn new(id: u32, file: Arc<dyn IoFile>, path: PathBuf, total_bytes: u64) -> Segment {
        Segment {
            id,
            file,
            path,
            total_bytes: AtomicU64::new(total_bytes),
            live_bytes: AtomicU64::new(0),
            min_version: AtomicU64::new(u64::MAX),
            max_version: AtomicU64::new(0),
            expiry_min_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Creates a new segment file with its header, synced, and syncs the directory so the entry
    /// survives a power cut.
    pub fn create(
        io: &dyn Io,
        dir: &Path,
        id: u32,
        origin: Origin,
        base_seq: u64,
    ) -> Result<Arc<Segment>> {
        let path = dir.join(segment_name(id));
        let file = io.create(&path)?;
        file.write_all_at(&encode_segment_header(origin, base_seq), 0)?;
        file.sync_data()?;
        io.sync_dir(dir)?;
        Ok(Arc::new(Segment::new(
            id,
            file,
            path,
            SEGMENT_HEADER_BYTES as u64,
        )))
    }

    pub fn note_versions(&self, min: u64, max: u64) {
        self.min_version.fetch_min(min, Ordering::Relaxed);
        self.max_version.fetch_max(max, Ordering::Relaxed);
    }

    pub fn note_expiry(&self, expires_at_ms: u64) {
        if expires_at_ms != 0 {
            self.expiry_min_ms
                .fetch_min(expires_at_ms, Ordering::Relaxed);
        }
    }

    /// Whether the segment may hold a put whose expiry has passed.
    pub fn may_hold_expired(&self, now_ms: u64) -> bool {
        self.expiry_min_ms.load(Ordering::Relaxed) <= now_ms
    }

    pub fn dead_bytes(&self) -> u64 {
        let total = self
            .total_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(SEGMENT_HEADER_BYTES as u64);
        total.saturating_sub(self.live_bytes.load(Ordering::Relaxed))
    }

    /// Fraction of record bytes no longer pointed at by the keydir.
    pub fn dead_ratio(&self) -> f64 {
        let total = self
            .total_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(SEGMENT_HEADER_BYTES as u64);
        if total == 0 {
            0.0
        } else {
            self.dead_bytes() as f64 / total as f64
        }
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Reads the whole file (segments are bounded by `Options::segment_bytes_max`).
    pub fn read_all(&self) -> Result<Vec<u8>> {
        Ok(self.file.read_all()?)
    }
}

/// Reads the segment header into (origin, base sequence); `None` if it is missing or not ours.
pub(crate) fn read_header(data: &[u8]) -> Option<(Origin, u64)> {
    decode_segment_header(data)
}

/// One committed record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scanned {
    pub offset: u32,
    pub header: Header,
}

impl Scanned {
    pub fn key<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let s = self.offset as usize + RECORD_HEADER_BYTES;
        &data[s..s + self.header.key_len as usize]
    }
    pub fn value<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let s = self.offset as usize + RECORD_HEADER_BYTES + self.header.key_len as usize;
        &data[s..s + self.header.value_len as usize]
    }
    pub fn bytes<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let s = self.offset as usize;
        &data[s..s + self.header.record_len()]
    }
}

/// How to treat a bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// The active segment after a crash: stop at the first bad record; the caller truncates.
    Tail,
    /// A sealed segment: a bad record is corruption.
    Strict,
    /// A sealed segment with `skip_damaged`: skip what can be skipped, count it.
    SkipDamaged,
}

/// Result of scanning a segment.
#[derive(Debug, Default)]
pub(crate) struct ScanResult {
    /// Records of committed writes, in file order.
    pub records: Vec<Scanned>,
    /// End of the last committed write; everything after it is torn or corrupt.
    pub valid_end: u64,
    /// Damaged records skipped (`ScanMode::SkipDamaged`).
    pub damaged: u64,
}

/// Scans `data` (a whole segment file). Only records of committed writes are returned: records
/// of a batch become visible when its COMMIT record is read, so a batch is all or nothing.
pub(crate) fn scan(data: &[u8], name: &str, mode: ScanMode) -> Result<ScanResult> {
    let mut out = ScanResult {
        valid_end: SEGMENT_HEADER_BYTES as u64,
        ..ScanResult::default()
    };
    let mut pending: Vec<Scanned> = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    let corrupt = |offset: usize, reason: &str| Error::Corruption {
        file: name.to_string(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    while pos < data.len() {
        let header = match Header::decode(&data[pos..]) {
            Ok(h) if pos + h.record_len() <= data.len() => Ok(h),
            Ok(_) => Err("record runs past end of file"),
            Err(e) => Err(e),
        }
        .map_err(|reason| (pos, reason));
        let problem = match header {
            Ok(h) if format::check_record(&data[pos..pos + h.record_len()]) => {
                let rec = Scanned {
                    offset: pos as u32,
                    header: h,
                };
                pos += h.record_len();
                pending.push(rec);
                if h.is_commit() {
                    out.records.append(&mut pending);
                    out.valid_end = pos as u64;
                }
                continue;
            }
            Ok(h) => (pos, "crc mismatch", Some(h.record_len())),
            Err((p, reason)) => (p, reason, None),
        };
        let (at, reason, skippable_len) = problem;
        match mode {
            ScanMode::Tail => return Ok(out),
            ScanMode::Strict => return Err(corrupt(at, reason)),
            ScanMode::SkipDamaged => {
                out.damaged += 1;
                tracing::warn!(file = name, offset = at, reason, "skipping damaged record");
                // The damaged record may have been part of a batch: drop the whole batch.
                pending.clear();
                match skippable_len {
                    Some(len) => pos += len,
                    None => return Ok(out),
                }
            }
        }
    }
    if !pending.is_empty() {
        match mode {
            ScanMode::Tail => {}
            ScanMode::Strict => {
                return Err(corrupt(
                    pending[0].offset as usize,
                    "batch without commit record",
                ));
            }
            ScanMode::SkipDamaged => {
                out.damaged += pending.len() as u64;
                tracing::warn!(
                    file = name,
                    offset = pending[0].offset,
                    "skipping batch without commit record"
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Kind, encode_record, seal_record, set_commit, set_version};

    fn segment_with(records: &[(&[u8], bool)]) -> Vec<u8> {
        let mut data = encode_segment_header(Origin::Log, 0).to_vec();
        for (i, (key, commit)) in records.iter().enumerate() {
            let s = encode_record(&mut data, Kind::Put, key, b"v", 0, 0);
            set_version(&mut data[s..], i as u64 + 1);
            set_commit(&mut data[s..], *commit);
            seal_record(&mut data[s..]);
        }
        data
    }

    #[test]
    fn uncommitted_batch_is_invisible_and_cut_from_tail() {
        let data = segment_with(&[(b"a", true), (b"b", false), (b"c", false)]);
        let r = scan(&data, "t", ScanMode::Tail).unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(
            r.valid_end as usize,
            SEGMENT_HEADER_BYTES + format::record_len(1, 1)
        );
        assert!(scan(&data, "t", ScanMode::Strict).is_err());
    }

    #[test]
    fn corruption_in_sealed_segment_names_offset() {
        let mut data = segment_with(&[(b"a", true), (b"b", true)]);
        let second = SEGMENT_HEADER_BYTES + format::record_len(1, 1);
        data[second + RECORD_HEADER_BYTES] ^= 1;
        match scan(&data, "seg", ScanMode::Strict) {
            Err(Error::Corruption { file, offset, .. }) => {
                assert_eq!(file, "seg");
                assert_eq!(offset as usize, second);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let r = scan(&data, "seg", ScanMode::SkipDamaged).unwrap();
        assert_eq!((r.records.len(), r.damaged), (1, 1));
    }

    proptest::proptest! {
        /// The scanner reads bytes from disk: garbage must give an error or a clean stop, never
        /// a panic, in every mode.
        #[test]
        fn scan_never_panics_on_garbage(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut data = segment_with(&[(b"a", true)]);
            data.extend_from_slice(&tail);
            for mode in [ScanMode::Tail, ScanMode::Strict, ScanMode::SkipDamaged] {
                let _ = scan(&data, "fuzz", mode);
            }
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_name(&segment_name(42), SEGMENT_SUFFIX), Some(42));
        assert_eq!(parse_name("x.seg", SEGMENT_SUFFIX), None);
        assert_eq!(parse_name(&hint_name(7), SEGMENT_SUFFIX), None);
    }
}
