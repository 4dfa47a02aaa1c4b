//! The on-disk format, byte by byte (all integers little-endian). `docs/design.md` section
//! "Write-ahead log" is the prose version of this file; change both together.
//!
//! ```text
//! segment file  {id:020}.wal = segment header, then frames
//! segment header (24 bytes):
//!   0..8   magic "CAIRNWAL"
//!   8..12  format version (u32) = 1
//!   12..20 segment id (u64), equal to the number in the file name
//!   20..24 CRC32C of bytes 0..20
//! frame (24-byte header + body):
//!   0..4   magic "WALF"
//!   4      kind (u8): 1 = batch, 2 = seal
//!   5..8   zero
//!   8..12  body length (u32)
//!   12..20 sequence (u64): batch number, +1 per append across the whole log; a seal repeats
//!          the sequence of the segment's last batch
//!   20..24 CRC32C of header bytes 0..20 followed by the body
//! batch body: records back to back, filling the body exactly
//! record (24-byte header + payload):
//!   0..4   payload length (u32)
//!   4..8   CRC32C of bytes 8..24 followed by the payload
//!   8..16  group (u64)
//!   16..24 index (u64)
//!   24..   payload
//! seal body: empty (the last frame of every segment but the newest)
//! ```

use bytes::Bytes;

use crate::Record;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNWAL";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_BYTES: usize = 24;
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"WALF";
pub(crate) const FRAME_HEADER_BYTES: usize = 24;
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
/// Segment file name suffix.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// Digits of the zero-padded segment id in a file name.
pub(crate) const SEGMENT_ID_DIGITS: usize = 20;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// Records of one append.
    Batch = 1,
    /// End of a segment: nothing follows it in this file.
    Seal = 2,
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

pub(crate) fn encode_segment_header(id: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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

/// Checks the segment header at the start of `bytes`.
pub(crate) fn check_segment_header(bytes: &[u8], id: u64) -> Result<(), HeaderProblem> {
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
    if version != FORMAT_VERSION {
        return Err(HeaderProblem::Unusable(format!(
            "unsupported WAL format version {version} (this build reads {FORMAT_VERSION})"
        )));
    }
    let stored = u64_at(header, 12);
    if stored != id {
        return Err(HeaderProblem::Unusable(format!(
            "segment header names id {stored}, file name says {id}"
        )));
    }
    Ok(())
}

impl HeaderProblem {
    pub(crate) fn reason(&self) -> String {
        match self {
            HeaderProblem::Torn(reason) => (*reason).to_owned(),
            HeaderProblem::Unusable(reason) => reason.clone(),
        }
    }
}

/// Encoded size of a batch of `records`.
pub(crate) fn batch_bytes(records: &[Record]) -> usize {
    FRAME_HEADER_BYTES
        + records
            .iter()
            .map(|r| RECORD_HEADER_BYTES + r.payload.len())
            .sum::<usize>()
}

fn frame_header(kind: FrameKind, body_bytes: u32, seq: u64) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4] = kind as u8;
    header[8..12].copy_from_slice(&body_bytes.to_le_bytes());
    header[12..20].copy_from_slice(&seq.to_le_bytes());
    header
}

/// Appends a batch frame holding `records` to `out`. The caller has checked the sizes.
pub(crate) fn encode_batch<'a>(
    out: &mut Vec<u8>,
    seq: u64,
    records: impl Iterator<Item = &'a Record> + Clone,
) {
    let start = out.len();
    let body_bytes: usize = records
        .clone()
        .map(|r| RECORD_HEADER_BYTES + r.payload.len())
        .sum();
    let body_bytes = u32::try_from(body_bytes).expect("batch size checked against BATCH_BYTES_MAX");
    out.extend_from_slice(&frame_header(FrameKind::Batch, body_bytes, seq));
    for record in records {
        let len = u32::try_from(record.payload.len()).expect("payload size checked");
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[8..16].copy_from_slice(&record.group.to_le_bytes());
        header[16..24].copy_from_slice(&record.index.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..24]), &record.payload);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&record.payload);
    }
    seal_crc(&mut out[start..]);
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

/// Splits a checksummed batch body into records (zero-copy slices of `body`). On failure,
/// returns the offset within the body and the reason: a frame whose checksum passed but whose
/// records do not parse was damaged before it was written, which recovery reports as corruption.
pub(crate) fn decode_records(body: &Bytes) -> Result<Vec<Record>, (usize, &'static str)> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < RECORD_HEADER_BYTES {
            return Err((at, "truncated record header"));
        }
        let header = &body[at..at + RECORD_HEADER_BYTES];
        let len = u32_at(header, 0) as usize;
        if body.len() - at - RECORD_HEADER_BYTES < len {
            return Err((at, "record runs past its frame"));
        }
        let payload_start = at + RECORD_HEADER_BYTES;
        let payload = body.slice(payload_start..payload_start + len);
        if crc32c::crc32c_append(crc32c::crc32c(&header[8..24]), &payload) != u32_at(header, 4) {
            return Err((at, "record checksum mismatch"));
        }
        records.push(Record {
            group: u64_at(header, 8),
            index: u64_at(header, 16),
            payload,
        });
        at = payload_start + len;
    }
    Ok(records)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let records = vec![
            Record {
                group: 1,
                index: 7,
                payload: Bytes::from_static(b"hello"),
            },
            Record {
                group: u64::MAX,
                index: 0,
                payload: Bytes::new(),
            },
        ];
        let mut buf = vec![0xAA; 3];
        encode_batch(&mut buf, 42, records.iter());
        assert_eq!(buf.len(), 3 + batch_bytes(&records));
        let FrameCheck::Valid(frame) = check_frame(&buf, 3) else {
            panic!("frame should be valid")
        };
        assert_eq!(
            (frame.kind, frame.seq, frame.bytes),
            (FrameKind::Batch, 42, buf.len() - 3)
        );
        let body = Bytes::copy_from_slice(&buf[frame.body_start..3 + frame.bytes]);
        assert_eq!(decode_records(&body).unwrap(), records);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        let record = Record {
            group: 2,
            index: 3,
            payload: Bytes::from_static(b"xyz"),
        };
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
        let header = encode_segment_header(12);
        assert!(check_segment_header(&header, 12).is_ok());
        assert!(matches!(
            check_segment_header(&header, 13),
            Err(HeaderProblem::Unusable(_))
        ));
        assert!(matches!(
            check_segment_header(&header[..23], 12),
            Err(HeaderProblem::Torn(_))
        ));
        let mut future = header;
        future[8] = 2;
        let crc = crc32c::crc32c(&future[0..20]);
        future[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            check_segment_header(&future, 12),
            Err(HeaderProblem::Unusable(_))
        ));
    }
}
