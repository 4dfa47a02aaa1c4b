//! Opening a log: read every segment in order, check every frame, replay every record into the
//! per-group index (each entry pointing at its record on disk), and decide what damage is a torn
//! write (repaired) and what is corruption (refused).
//!
//! Rules (see `docs/design.md`, "Write-ahead log"):
//! - Segments are preallocated: the active one is zero-filled ahead of its frames. Where the
//!   next frame would start, bytes that are all zero up to the end of the file are the clean end
//!   of the log (the unused tail), not damage. Zeros followed by anything else are damage.
//! - Only the newest segment can have a torn tail: appends are sequential and each one is
//!   fsynced before the next begins, and a segment is sealed (and the seal fsynced) before the
//!   next segment is created. So every older segment must parse completely and end with a seal.
//! - In the newest segment, the first frame that is incomplete or fails its checksum is the
//!   start of a torn write, *unless* a valid frame exists anywhere after it: a later frame was
//!   only written after the damaged one had been fsynced and acknowledged, so the damage is
//!   corruption of acknowledged data. A torn tail is overwritten with zeros up to its last
//!   nonzero byte (and that fsynced), so the file keeps its preallocated length; corruption is
//!   a [`WalError::Corruption`] naming the file and offset.
//! - A sealed segment ends exactly at its seal (rotation trims the preallocated tail before the
//!   successor exists). Only the newest segment may show zeros after its seal (a crash before
//!   the trim was fsynced); recovery trims it before creating the successor.
//! - Batch sequence numbers rise by exactly one within a segment and strictly across segments
//!   (purge may remove a segment from the middle).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_io::{Io, IoFile};

use crate::format::{
    self, FORMAT_VERSION, FrameCheck, FrameKind, HeaderProblem, Kind, SEGMENT_HEADER_BYTES,
    check_frame, check_segment_header, decode_records, record_header_bytes,
};
use crate::groups::{Groups, Loc, Slot};
use crate::{Result, WalError};

/// What the log knows about one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    /// Format version of its records.
    pub(crate) version: u32,
    /// Bytes of log data: header, frames and seal. The end of the log within the file; for a
    /// sealed segment also the file's length, for the active one the start of its zero tail.
    pub(crate) bytes: u64,
}

impl SegmentMeta {
    pub(crate) fn new(id: u64, path: PathBuf) -> SegmentMeta {
        SegmentMeta {
            id,
            path,
            version: FORMAT_VERSION,
            bytes: SEGMENT_HEADER_BYTES as u64,
        }
    }
}

/// The newest segment, ready for appends.
#[derive(Debug)]
pub(crate) struct RecoveredActive {
    pub(crate) meta: SegmentMeta,
    pub(crate) file: Arc<dyn IoFile>,
    /// Whether it ends with a seal (crash between sealing it and creating its successor).
    pub(crate) sealed: bool,
    /// Length of the file; the bytes from `meta.bytes` up to here are zeros.
    pub(crate) file_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Recovered {
    /// Sealed segments, oldest first, each with a handle (entries are read from it).
    pub(crate) sealed: Vec<(SegmentMeta, Arc<dyn IoFile>)>,
    pub(crate) active: Option<RecoveredActive>,
    /// Every group's log as the records on disk leave it.
    pub(crate) groups: Groups,
    /// Sequence of the last batch on disk (0 if none).
    pub(crate) last_seq: u64,
}

/// Reads every segment in `dir` (which the caller has locked).
pub(crate) fn recover(dir: &Path, io: &dyn Io) -> Result<Recovered> {
    let mut ids: Vec<u64> = io
        .list_dir(dir)
        .map_err(|e| WalError::io(dir, e))?
        .iter()
        .filter_map(|name| format::parse_segment_file_name(name))
        .collect();
    ids.sort_unstable();
    let mut recovered = Recovered {
        sealed: Vec::new(),
        active: None,
        groups: Groups::default(),
        last_seq: 0,
    };
    for (position, &id) in ids.iter().enumerate() {
        let path = dir.join(format::segment_file_name(id));
        let file = io.open(&path).map_err(|e| WalError::io(&path, e))?;
        let data = Bytes::from(file.read_all().map_err(|e| WalError::io(&path, e))?);
        let mut reader = SegmentReader {
            path: &path,
            data: &data,
            meta: SegmentMeta::new(id, path.clone()),
            last_seq: &mut recovered.last_seq,
            groups: &mut recovered.groups,
            batches: 0,
        };
        if position + 1 < ids.len() {
            reader.read_sealed()?;
            recovered.sealed.push((reader.meta, file));
        } else {
            let (meta, sealed, file_bytes) = reader.read_newest(file.as_ref())?;
            recovered.active = Some(RecoveredActive {
                meta,
                file,
                sealed,
                file_bytes,
            });
        }
    }
    Ok(recovered)
}

struct SegmentReader<'a> {
    path: &'a Path,
    data: &'a Bytes,
    meta: SegmentMeta,
    last_seq: &'a mut u64,
    groups: &'a mut Groups,
    /// Batches read from this segment.
    batches: u64,
}

/// What ended the walk over a segment's frames.
enum Stop {
    /// The frame at this offset is a seal.
    Sealed,
    /// Clean end of the log: the end of the file, or zeros up to it.
    End,
    /// Damage (incomplete or bad checksum) at this offset.
    Damaged { offset: usize, reason: &'static str },
}

impl SegmentReader<'_> {
    fn corruption(&self, offset: usize, reason: impl Into<String>) -> WalError {
        WalError::corruption(self.path, offset as u64, reason)
    }

    /// Walks frames from after the header; accepts valid ones. Returns where it stopped and the
    /// offset it reached (for a seal, the offset just after it).
    fn walk(&mut self) -> Result<(Stop, usize)> {
        let mut at = SEGMENT_HEADER_BYTES;
        loop {
            // Stops at the first byte of a frame's magic, so only the final tail is scanned.
            if all_zero(&self.data[at..]) {
                return Ok((Stop::End, at));
            }
            let frame = match check_frame(self.data, at) {
                FrameCheck::Valid(frame) => frame,
                FrameCheck::Incomplete => {
                    return Ok((
                        Stop::Damaged {
                            offset: at,
                            reason: "frame runs past the end of the file",
                        },
                        at,
                    ));
                }
                FrameCheck::Invalid(reason) => {
                    return Ok((Stop::Damaged { offset: at, reason }, at));
                }
            };
            match frame.kind {
                FrameKind::Seal => {
                    if frame.seq != *self.last_seq {
                        return Err(self.corruption(
                            at,
                            format!(
                                "seal names batch {} but the last batch is {}",
                                frame.seq, self.last_seq
                            ),
                        ));
                    }
                    let end = at + frame.bytes;
                    self.meta.bytes = end as u64;
                    return Ok((Stop::Sealed, end));
                }
                FrameKind::Batch => {
                    let in_order = if self.batches == 0 {
                        frame.seq > *self.last_seq
                    } else {
                        frame.seq == *self.last_seq + 1
                    };
                    if !in_order {
                        return Err(self.corruption(
                            at,
                            format!(
                                "batch {} out of sequence after batch {}",
                                frame.seq, self.last_seq
                            ),
                        ));
                    }
                    let body = self.data.slice(frame.body_start..at + frame.bytes);
                    let version = self.meta.version;
                    let records = decode_records(&body, version).map_err(|(offset, reason)| {
                        self.corruption(
                            frame.body_start + offset,
                            format!("{reason} inside a checksummed frame"),
                        )
                    })?;
                    for (offset, record) in &records {
                        let slot = (record.kind == Kind::Entry).then(|| {
                            Slot::Written(Loc {
                                segment: self.meta.id,
                                offset: (frame.body_start + offset) as u64,
                                len: (record_header_bytes(version) + record.payload.len()) as u32,
                                version,
                            })
                        });
                        self.groups.apply(record, slot);
                    }
                    *self.last_seq = frame.seq;
                    self.batches += 1;
                    at += frame.bytes;
                    self.meta.bytes = at as u64;
                }
            }
        }
    }

    /// An older segment: must be whole and sealed.
    fn read_sealed(&mut self) -> Result<()> {
        self.meta.version = check_segment_header(self.data, self.meta.id)
            .map_err(|problem| self.corruption(0, problem.reason()))?;
        match self.walk()? {
            (Stop::Sealed, end) if end == self.data.len() => Ok(()),
            (Stop::Sealed, end) => Err(self.corruption(end, "data after the seal frame")),
            (Stop::End, at) => {
                Err(self.corruption(at, "segment is not sealed but a newer segment exists"))
            }
            (Stop::Damaged { offset, reason }, _) => Err(self.corruption(offset, reason)),
        }
    }

    /// The newest segment: a torn tail is zeroed, a zero tail after a seal trimmed; returns its
    /// metadata, whether it is sealed, and the file's length.
    fn read_newest(mut self, file: &dyn IoFile) -> Result<(SegmentMeta, bool, u64)> {
        let checked = check_segment_header(self.data, self.meta.id);
        if let Ok(version) = checked {
            self.meta.version = version;
        }
        if let Err(problem) = checked {
            if let HeaderProblem::Unusable(reason) = problem {
                return Err(self.corruption(0, reason));
            }
            if let Some(later) = find_valid_frame(self.data, 0) {
                return Err(self.corruption(
                    0,
                    format!("bad segment header, but a valid frame follows at byte {later}"),
                ));
            }
            tracing::warn!(path = %self.path.display(), bytes = self.data.len(), "WAL: torn segment header, rewriting the segment empty");
            file.set_len(0).map_err(|e| WalError::io(self.path, e))?;
            // Its frames are gone: whatever format it was, it is rewritten as this build's.
            self.meta.version = FORMAT_VERSION;
            file.write_all_at(
                &format::encode_segment_header(self.meta.id, FORMAT_VERSION),
                0,
            )
            .map_err(|e| WalError::io(self.path, e))?;
            file.sync_data().map_err(|e| WalError::io(self.path, e))?;
            return Ok((self.meta, false, SEGMENT_HEADER_BYTES as u64));
        }
        let file_bytes = self.data.len() as u64;
        match self.walk()? {
            (Stop::Sealed, end) => {
                if !all_zero(&self.data[end..]) {
                    return Err(self.corruption(end, "data after the seal frame"));
                }
                if end < self.data.len() {
                    // Rotation wrote the seal and trimmed the file under one fdatasync that
                    // did not complete. Trim again before a successor makes this segment sealed.
                    file.set_len(end as u64)
                        .and_then(|()| file.sync_data())
                        .map_err(|e| WalError::io(self.path, e))?;
                }
                Ok((self.meta, true, end as u64))
            }
            (Stop::End, _) => Ok((self.meta, false, file_bytes)),
            (Stop::Damaged { offset, reason }, _) => {
                let unsynced = self.meta.version == format::FORMAT_VERSION_UNSYNCED;
                if let Some(later) = find_valid_frame(self.data, offset + 1).filter(|_| !unsynced) {
                    return Err(self.corruption(
                        offset,
                        format!("{reason}, but a valid frame follows at byte {later}"),
                    ));
                }
                // Zero the torn bytes rather than truncate: the file keeps its preallocated
                // length, and the zeros read as the clean end on the next open.
                let torn_end = self.data[offset..]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(offset, |last| offset + last + 1);
                tracing::warn!(
                    path = %self.path.display(),
                    offset,
                    dropped_bytes = torn_end - offset,
                    reason,
                    "WAL: torn tail (unacknowledged write), zeroing it"
                );
                write_zeros(file, offset as u64, torn_end as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| WalError::io(self.path, e))?;
                self.meta.bytes = offset as u64;
                Ok((self.meta, false, file_bytes))
            }
        }
    }
}

/// Offset of the first frame at or after `from` that passes its checksum.
fn find_valid_frame(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + format::FRAME_HEADER_BYTES <= data.len() {
        let next = data[at..]
            .windows(4)
            .position(|w| w == format::FRAME_MAGIC)?;
        at += next;
        if matches!(check_frame(data, at), FrameCheck::Valid(_)) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Whether every byte of `bytes` is zero (true for an empty slice).
fn all_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    words.all(|w| w == [0; 8]) && words.remainder().iter().all(|&b| b == 0)
}

/// Most zero bytes one `write_zeros` call buffers; longer ranges take several writes.
const ZERO_WRITE_BYTES_MAX: u64 = 1024 * 1024;

/// Writes zeros over `start..end` of `file` (not durable until `sync_data`).
pub(crate) fn write_zeros(file: &dyn IoFile, start: u64, end: u64) -> std::io::Result<()> {
    if start >= end {
        return Ok(());
    }
    let zeros = vec![0u8; (end - start).min(ZERO_WRITE_BYTES_MAX) as usize];
    let mut at = start;
    while at < end {
        let len = (end - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..len as usize], at)?;
        at += len;
    }
    Ok(())
}
