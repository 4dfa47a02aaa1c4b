//! The on-disk format, byte by byte (all integers little-endian). `docs/design.md` section
//! "Write-ahead log" is the prose version of this file; change both together.
//!
//! ```text
//! segment file  {id:020}.wal = segment header, then frames
//! segment header (24 bytes):
//!   0..8   magic "CAIRNWAL"
//!   8..12  format version (u32): 2 (this build writes 2, reads 1 and 2)
//!   12..20 segment id (u64), equal to the number in the file name
//!   20..24 CRC32C of bytes 0..20
//! frame (24-byte header + body):
//!   0..4   magic "WALF"
//!   4      kind (u8): 1 = batch, 2 = seal
//!   5..8   zero
//!   8..12  body length (u32)
//!   12..20 sequence (u64): batch number, +1 per batch across the whole log; a seal repeats
//!          the sequence of the segment's last batch
//!   20..24 CRC32C of header bytes 0..20 followed by the body
//! batch body: records back to back, filling the body exactly
//! record, format 2 (32-byte header + payload):
//!   0..4   payload length (u32)
//!   4..8   CRC32C of bytes 8..32 followed by the payload
//!   8      kind (u8): 1 entry, 2 vote, 3 committed, 4 truncate, 5 purge, 6 range
//!   9..16  zero
//!   16..24 group (u64)
//!   24..32 index (u64): entry: its index; truncate: first index removed; purge: last index
//!          removed; range: first live index; vote and committed: zero
//!   32..   payload: entry: the entry; vote, committed, purge: the caller's bytes; truncate:
//!          empty; range: end of the live range (u64, exclusive)
//! record, format 1 (24-byte header + payload; every record is an entry):
//!   0..4   payload length (u32)
//!   4..8   CRC32C of bytes 8..24 followed by the payload
//!   8..16  group (u64)
//!   16..24 index (u64)
//! seal body: empty (the last frame of every segment but the newest)
//! ```

use bytes::Bytes;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNWAL";
/// The format this build writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Format 2's layout in a segment written without an fdatasync per frame
/// (`WalOptions::fsync_batches` off): a crash may persist its frames out of order, so at open
/// a damaged frame is its torn end even when valid frames follow it.
pub(crate) const FORMAT_VERSION_UNSYNCED: u32 = 3;
/// The oldest format this build reads (every record an entry).
pub(crate) const FORMAT_VERSION_V1: u32 = 1;
pub(crate) const SEGMENT_HEADER_BYTES: usize = 24;
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"WALF";
pub(crate) const FRAME_HEADER_BYTES: usize = 24;
/// Record header size in the format this build writes.
pub(crate) const RECORD_HEADER_BYTES: usize = 32;
const RECORD_HEADER_BYTES_V1: usize = 24;
/// Segment file name suffix.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// Digits of the zero-padded segment id in a file name.
pub(crate) const SEGMENT_ID_DIGITS: usize = 20;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// Records of one group commit.
    Batch = 1,
    /// End of a segment: nothing follows it in this file.
    Seal = 2,
}

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Entry = 1,
    Vote = 2,
    Committed = 3,
    Truncate = 4,
    Purge = 5,
    Range = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Entry,
            2 => Kind::Vote,
            3 => Kind::Committed,
            4 => Kind::Truncate,
            5 => Kind::Purge,
            6 => Kind::Range,
            _ => return None,
        })
    }
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rec {
    pub(crate) kind: Kind,
    pub(crate) group: u64,
    pub(crate) index: u64,
    pub(crate) payload: Bytes,
}

impl Rec {
    /// Encoded size, header included.
    pub(crate) fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }
}

pub(crate) fn segment_file_name(id: u64) -> String {
    format!("{id:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_ID_DIGITS)
}

/// The id of a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_segment_header(id: u64, version: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[12..20].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What is wrong with a segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// Short, wrong magic or bad checksum: what an interrupted segment creation leaves.
    Torn(&'static str),
    /// A complete, checksummed header that this build cannot use (another format version, or
    /// an id that does not match the file name): never repaired, always refused.
    Unusable(String),
}

/// Checks the segment header at the start of `bytes`; returns the segment's format version.
pub(crate) fn check_segment_header(bytes: &[u8], id: u64) -> Result<u32, HeaderProblem> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderProblem::Torn("truncated segment header"));
    }
    let header = &bytes[..SEGMENT_HEADER_BYTES];
    if header[0..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::Torn("bad segment magic"));
    }
    if crc32c::crc32c(&header[0..20]) != u32_at(header, 20) {
        return Err(HeaderProblem::Torn("segment header checksum mismatch"));
    }
    let version = u32_at(header, 8);
    if ![FORMAT_VERSION_V1, FORMAT_VERSION, FORMAT_VERSION_UNSYNCED].contains(&version) {
        return Err(HeaderProblem::Unusable(format!(
            "unsupported WAL format version {version} (this build reads {FORMAT_VERSION_V1}, \
             {FORMAT_VERSION} and {FORMAT_VERSION_UNSYNCED})"
        )));
    }
    let stored = u64_at(header, 12);
    if stored != id {
        return Err(HeaderProblem::Unusable(format!(
            "segment header names id {stored}, file name says {id}"
        )));
    }
    Ok(version)
}

impl HeaderProblem {
    pub(crate) fn reason(&self) -> String {
        match self {
            HeaderProblem::Torn(reason) => (*reason).to_owned(),
            HeaderProblem::Unusable(reason) => reason.clone(),
        }
    }
}

/// Record header size in segments of format `version`.
pub(crate) fn record_header_bytes(version: u32) -> usize {
    if version == FORMAT_VERSION_V1 {
        RECORD_HEADER_BYTES_V1
    } else {
        RECORD_HEADER_BYTES
    }
}

/// Encoded size of a batch frame holding `records`.
pub(crate) fn batch_bytes<'a>(records: impl Iterator<Item = &'a Rec>) -> usize {
    FRAME_HEADER_BYTES + records.map(Rec::encoded_len).sum::<usize>()
}

fn frame_header(kind: FrameKind, body_bytes: u32, seq: u64) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4] = kind as u8;
    header[8..12].copy_from_slice(&body_bytes.to_le_bytes());
    header[12..20].copy_from_slice(&seq.to_le_bytes());
    header
}

/// Appends a batch frame holding `records` to `out` and returns the offset of each record
/// within `out`. The caller has checked the sizes.
pub(crate) fn encode_batch<'a>(
    out: &mut Vec<u8>,
    seq: u64,
    records: impl Iterator<Item = &'a Rec> + Clone,
) -> Vec<usize> {
    let start = out.len();
    let body_bytes: usize = records.clone().map(Rec::encoded_len).sum();
    let body_bytes = u32::try_from(body_bytes).expect("batch size checked against BATCH_BYTES_MAX");
    out.extend_from_slice(&frame_header(FrameKind::Batch, body_bytes, seq));
    let mut offsets = Vec::new();
    for record in records {
        offsets.push(out.len());
        let len = u32::try_from(record.payload.len()).expect("payload size checked");
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[8] = record.kind as u8;
        header[16..24].copy_from_slice(&record.group.to_le_bytes());
        header[24..32].copy_from_slice(&record.index.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..32]), &record.payload);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&record.payload);
    }
    seal_crc(&mut out[start..]);
    offsets
}

/// Appends a seal frame to `out`.
pub(crate) fn encode_seal(out: &mut Vec<u8>, last_seq: u64) {
    let start = out.len();
    out.extend_from_slice(&frame_header(FrameKind::Seal, 0, last_seq));
    seal_crc(&mut out[start..]);
}

fn seal_crc(frame: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[0..20]), &frame[FRAME_HEADER_BYTES..]);
    frame[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// A frame that passed its checksum.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: FrameKind,
    pub(crate) seq: u64,
    /// Offset of the body within the buffer the frame was read from.
    pub(crate) body_start: usize,
    /// Total bytes (header + body).
    pub(crate) bytes: usize,
}

/// The outcome of reading a frame at some offset.
#[derive(Debug)]
pub(crate) enum FrameCheck {
    Valid(Frame),
    /// The header or body runs past the end of the data.
    Incomplete,
    /// Magic, kind or checksum is wrong.
    Invalid(&'static str),
}

/// Reads the frame starting at `buf[at..]`.
pub(crate) fn check_frame(buf: &[u8], at: usize) -> FrameCheck {
    let rest = &buf[at..];
    if rest.len() < FRAME_HEADER_BYTES {
        return FrameCheck::Incomplete;
    }
    if rest[0..4] != FRAME_MAGIC {
        return FrameCheck::Invalid("bad frame magic");
    }
    let kind = match rest[4] {
        1 => FrameKind::Batch,
        2 => FrameKind::Seal,
        _ => return FrameCheck::Invalid("unknown frame kind"),
    };
    if rest[5..8] != [0, 0, 0] {
        return FrameCheck::Invalid("nonzero reserved frame bytes");
    }
    let body_bytes = u32_at(rest, 8) as usize;
    if rest.len() - FRAME_HEADER_BYTES < body_bytes {
        return FrameCheck::Incomplete;
    }
    let body = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_bytes];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rest[0..20]), body);
    if crc != u32_at(rest, 20) {
        return FrameCheck::Invalid("frame checksum mismatch");
    }
    FrameCheck::Valid(Frame {
        kind,
        seq: u64_at(rest, 12),
        body_start: at + FRAME_HEADER_BYTES,
        bytes: FRAME_HEADER_BYTES + body_bytes,
    })
}

/// Splits a checksummed batch body of a segment in format `version` into records
/// (zero-copy slices of `body`), each with its offset within the body. On failure, returns the
/// offset within the body and the reason: a frame whose checksum passed but whose records do
/// not parse was damaged before it was written, which recovery reports as corruption.
pub(crate) fn decode_records(
    body: &Bytes,
    version: u32,
) -> Result<Vec<(usize, Rec)>, (usize, &'static str)> {
    let header_bytes = record_header_bytes(version);
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < header_bytes {
            return Err((at, "truncated record header"));
        }
        let header = &body[at..at + header_bytes];
        let len = u32_at(header, 0) as usize;
        if body.len() - at - header_bytes < len {
            return Err((at, "record runs past its frame"));
        }
        let payload_start = at + header_bytes;
        let payload = body.slice(payload_start..payload_start + len);
        if crc32c::crc32c_append(crc32c::crc32c(&header[8..header_bytes]), &payload)
            != u32_at(header, 4)
        {
            return Err((at, "record checksum mismatch"));
        }
        let rec = if version == FORMAT_VERSION_V1 {
            Rec {
                kind: Kind::Entry,
                group: u64_at(header, 8),
                index: u64_at(header, 16),
                payload,
            }
        } else {
            let kind = Kind::from_u8(header[8]).ok_or((at, "unknown record kind"))?;
            if header[9..16] != [0; 7] {
                return Err((at, "nonzero reserved record bytes"));
            }
            Rec {
                kind,
                group: u64_at(header, 16),
                index: u64_at(header, 24),
                payload,
            }
        };
        records.push((at, rec));
        at = payload_start + len;
    }
    Ok(records)
}

/// Checks one record read back at `bytes` (a whole record, format 2) and returns its payload.
pub(crate) fn check_record(bytes: Bytes, group: u64, index: u64) -> Result<Bytes, &'static str> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err("record shorter than its header");
    }
    let len = u32_at(&bytes, 0) as usize;
    if bytes.len() != RECORD_HEADER_BYTES + len {
        return Err("record length does not match its header");
    }
    let payload = bytes.slice(RECORD_HEADER_BYTES..);
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[8..RECORD_HEADER_BYTES]), &payload)
        != u32_at(&bytes, 4)
    {
        return Err("record checksum mismatch on read");
    }
    if bytes[8] != Kind::Entry as u8 || u64_at(&bytes, 16) != group || u64_at(&bytes, 24) != index {
        return Err("record is not the entry the index points at");
    }
    Ok(payload)
}

/// Checks one format-1 record read back (every record an entry) and returns its payload.
pub(crate) fn check_record_v1(bytes: Bytes, group: u64, index: u64) -> Result<Bytes, &'static str> {
    if bytes.len() < RECORD_HEADER_BYTES_V1 {
        return Err("record shorter than its header");
    }
    let len = u32_at(&bytes, 0) as usize;
    if bytes.len() != RECORD_HEADER_BYTES_V1 + len {
        return Err("record length does not match its header");
    }
    let payload = bytes.slice(RECORD_HEADER_BYTES_V1..);
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[8..RECORD_HEADER_BYTES_V1]), &payload)
        != u32_at(&bytes, 4)
    {
        return Err("record checksum mismatch on read");
    }
    if u64_at(&bytes, 8) != group || u64_at(&bytes, 16) != index {
        return Err("record is not the entry the index points at");
    }
    Ok(payload)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, group: u64, index: u64, payload: &'static [u8]) -> Rec {
        Rec {
            kind,
            group,
            index,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn batch_round_trip() {
        let records = vec![
            rec(Kind::Entry, 1, 7, b"hello"),
            rec(Kind::Vote, u64::MAX, 0, b""),
            rec(Kind::Purge, 3, 9, b"log id"),
        ];
        let mut buf = vec![0xAA; 3];
        let offsets = encode_batch(&mut buf, 42, records.iter());
        assert_eq!(buf.len(), 3 + batch_bytes(records.iter()));
        let FrameCheck::Valid(frame) = check_frame(&buf, 3) else {
            panic!("frame should be valid")
        };
        assert_eq!(
            (frame.kind, frame.seq, frame.bytes),
            (FrameKind::Batch, 42, buf.len() - 3)
        );
        let body = Bytes::copy_from_slice(&buf[frame.body_start..3 + frame.bytes]);
        let decoded = decode_records(&body, FORMAT_VERSION).unwrap();
        assert_eq!(
            decoded.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            records
        );
        for ((at, _), offset) in decoded.iter().zip(&offsets) {
            assert_eq!(frame.body_start + at, *offset);
        }
        let first = Bytes::copy_from_slice(&buf[offsets[0]..offsets[1]]);
        assert_eq!(check_record(first.clone(), 1, 7).unwrap(), &b"hello"[..]);
        assert!(check_record(first, 1, 8).is_err());
    }

    #[test]
    fn format_1_records_read_as_entries() {
        let mut body = Vec::new();
        let payload = b"old";
        let mut header = [0u8; RECORD_HEADER_BYTES_V1];
        header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[8..16].copy_from_slice(&5u64.to_le_bytes());
        header[16..24].copy_from_slice(&11u64.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..24]), payload);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        body.extend_from_slice(&header);
        body.extend_from_slice(payload);
        let body = Bytes::from(body);
        let decoded = decode_records(&body, FORMAT_VERSION_V1).unwrap();
        assert_eq!(decoded, vec![(0, rec(Kind::Entry, 5, 11, b"old"))]);
        assert_eq!(check_record_v1(body, 5, 11).unwrap(), &b"old"[..]);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        let record = rec(Kind::Entry, 2, 3, b"xyz");
        encode_batch(&mut buf, 1, std::iter::once(&record));
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(check_frame(&damaged, 0), FrameCheck::Valid(_)),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn segment_names_and_headers() {
        assert_eq!(segment_file_name(12), "00000000000000000012.wal");
        assert_eq!(
            parse_segment_file_name("00000000000000000012.wal"),
            Some(12)
        );
        assert_eq!(parse_segment_file_name("12.wal"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000012.wal.tmp"),
            None
        );
        let header = encode_segment_header(12, FORMAT_VERSION);
        assert_eq!(check_segment_header(&header, 12), Ok(FORMAT_VERSION));
        assert!(matches!(
            check_segment_header(&header, 13),
            Err(HeaderProblem::Unusable(_))
        ));
        assert!(matches!(
            check_segment_header(&header[..23], 12),
            Err(HeaderProblem::Torn(_))
        ));
        let mut future = header;
        future[8] = 4;
        let crc = crc32c::crc32c(&future[0..20]);
        future[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            check_segment_header(&future, 12),
            Err(HeaderProblem::Unusable(_))
        ));
    }
}
