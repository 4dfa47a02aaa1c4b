//! Checkpoints: a consistent, durable view of an engine as files, and the receiving side that
//! rebuilds an engine directory from them.
//!
//! A checkpoint seals the active segment (fdatasync, as any rotation) and then holds an open
//! handle on every sealed segment and every hint file present: segments are immutable once
//! sealed, and an open handle keeps a file's data readable after merge removes its name, so a
//! checkpoint stays readable for as long as it is held without copying anything and without
//! stopping merge. Everything written before the checkpoint, the last-applied marker and the
//! system table included, is in those segments and durable, so a replication layer may discard its log up to the
//! marker as soon as the checkpoint exists.
//!
//! [`Receiver`] writes the files of a checkpoint, streamed in order in chunks of any size,
//! into a new directory, and checks them as they arrive: names are segment and hint names
//! only, every segment has a valid header and whole, CRC-checked records of committed writes
//! only, and every hint file decodes and belongs to a segment of the checkpoint. The memory it
//! holds is one chunk plus at most one record that straddles chunks. `finish` fsyncs every file
//! and the directory; the result opens as an engine with the sender's keys, versions, expiry
//! deadlines, marker and system table (records and system version).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_io::{Io, IoFile};

use crate::format::{self, Header, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::segment::{HINT_SUFFIX, SEGMENT_SUFFIX, hint_name, parse_name, segment_name};
use crate::{Error, Result, SEGMENT_BYTES_MAX_LIMIT, hint};

/// Most files a received checkpoint may name (segments and hints together).
pub const CHECKPOINT_FILES_MAX: usize = 1 << 16;

/// One file of a checkpoint: its name in the engine directory and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub len: u64,
}

/// A consistent, durable view of an engine (see the module docs). Cheap to clone: the files
/// are shared handles.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    files: Vec<(FileInfo, Arc<dyn IoFile>)>,
    marker: Option<Bytes>,
    last_sequence: u64,
}

impl Checkpoint {
    pub(crate) fn new(
        files: Vec<(FileInfo, Arc<dyn IoFile>)>,
        marker: Option<Bytes>,
        last_sequence: u64,
    ) -> Checkpoint {
        Checkpoint {
            files,
            marker,
            last_sequence,
        }
    }

    /// The last-applied marker as of the checkpoint.
    pub fn marker(&self) -> Option<&Bytes> {
        self.marker.as_ref()
    }

    /// The highest version written before the checkpoint.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// The files, in the order a [`Receiver`] expects them: segments by id, each followed by
    /// its hint file when it has one.
    pub fn files(&self) -> Vec<FileInfo> {
        self.files.iter().map(|(info, _)| info.clone()).collect()
    }

    /// Bytes in all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(info, _)| info.len).sum()
    }

    /// Reads `buf.len()` bytes of file `index` (of [`Checkpoint::files`]) at `offset`.
    pub fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (info, file) = self.files.get(index).ok_or_else(|| {
            Error::InvalidCheckpoint(format!("no file {index} in the checkpoint"))
        })?;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > info.len) {
            return Err(Error::InvalidCheckpoint(format!(
                "read of {} bytes at {offset} past the end of {} ({} bytes)",
                buf.len(),
                info.name,
                info.len
            )));
        }
        file.read_exact_at(buf, offset)?;
        Ok(())
    }
}

/// What a file being received is, and how it is checked.
#[derive(Debug)]
enum Check {
    Segment(SegmentCheck),
    /// Hint files are read back and decoded when complete (they are small: no values).
    Hint(u32),
}

/// Checks a segment streamed in order: its header, then whole records with valid CRCs, each
/// batch ending with a COMMIT record.
#[derive(Debug, Default)]
struct SegmentCheck {
    /// Bytes not yet checked: a partial header or record that straddles chunks.
    carry: Vec<u8>,
    /// Offset of `carry[0]` in the file.
    at: u64,
    /// Whether records of an uncommitted batch are open.
    open_batch: bool,
}

impl SegmentCheck {
    fn feed(&mut self, name: &str, data: &[u8], limits: Limits) -> Result<()> {
        self.carry.extend_from_slice(data);
        let corrupt = |offset: u64, reason: &str| Error::Corruption {
            file: name.to_string(),
            offset,
            reason: reason.to_string(),
        };
        let mut pos = 0usize;
        if self.at == 0 {
            if self.carry.len() < SEGMENT_HEADER_BYTES {
                return Ok(());
            }
            // The header has no checksum of its own; its base sequence is bounded instead (a
            // larger one would push the engine's versions past the sender's).
            match format::decode_segment_header(&self.carry[..SEGMENT_HEADER_BYTES]) {
                None => return Err(corrupt(0, "bad segment header")),
                Some((_, base)) if base > limits.last_sequence => {
                    return Err(corrupt(16, "base sequence past the checkpoint's last"));
                }
                Some(_) => {}
            }
            pos = SEGMENT_HEADER_BYTES;
        }
        while self.carry.len() - pos >= RECORD_HEADER_BYTES {
            let offset = self.at + pos as u64;
            let h = Header::decode(&self.carry[pos..]).map_err(|r| corrupt(offset, r))?;
            let limit = match h.kind {
                // As `Engine::write`: system values have only the format's limit.
                crate::format::Kind::SystemPut => crate::format::RECORD_VALUE_BYTES_LIMIT,
                _ => limits.value_bytes_max.max(crate::KEY_BYTES_MAX),
            };
            if h.value_len as usize > limit {
                return Err(corrupt(offset, "value longer than this engine accepts"));
            }
            if h.version > limits.last_sequence {
                return Err(corrupt(
                    offset,
                    "version past the checkpoint's last sequence",
                ));
            }
            let len = h.record_len();
            if self.carry.len() - pos < len {
                break;
            }
            if !format::check_record(&self.carry[pos..pos + len]) {
                return Err(corrupt(offset, "crc mismatch"));
            }
            self.open_batch = !h.is_commit();
            pos += len;
        }
        self.carry.drain(..pos);
        self.at += pos as u64;
        Ok(())
    }

    fn finish(&self, name: &str) -> Result<()> {
        let reason = if self.at == 0 {
            "shorter than a segment header"
        } else if !self.carry.is_empty() {
            "ends inside a record"
        } else if self.open_batch {
            "ends inside an uncommitted batch"
        } else {
            return Ok(());
        };
        Err(Error::Corruption {
            file: name.to_string(),
            offset: self.at,
            reason: reason.to_string(),
        })
    }
}

/// What received records are checked against.
#[derive(Debug, Clone, Copy)]
struct Limits {
    value_bytes_max: usize,
    last_sequence: u64,
}

/// Receives a checkpoint's files into a new engine directory (see the module docs).
#[derive(Debug)]
pub struct Receiver {
    io: Arc<dyn Io>,
    dir: PathBuf,
    files: Vec<FileInfo>,
    limits: Limits,
    /// The file being written, its handle, check and bytes written so far.
    current: Option<(usize, Arc<dyn IoFile>, Check, u64)>,
    /// Files completed (synced and checked).
    done: usize,
}

impl Receiver {
    /// Starts receiving `files` into `dir`, which must not exist; it is created durably.
    /// `last_sequence` is the sender's ([`Checkpoint::last_sequence`]): no record or segment
    /// may claim a later one. `value_bytes_max` is the limit of the engine that will open the
    /// directory.
    pub fn create(
        io: Arc<dyn Io>,
        dir: &Path,
        files: Vec<FileInfo>,
        last_sequence: u64,
        value_bytes_max: usize,
    ) -> Result<Receiver> {
        check_manifest(&files)?;
        if io.exists(dir)? {
            return Err(Error::InvalidCheckpoint(format!(
                "{} already exists",
                dir.display()
            )));
        }
        cairn_io::create_dir_all_durable(&*io, dir)?;
        Ok(Receiver {
            io,
            dir: dir.to_path_buf(),
            files,
            limits: Limits {
                value_bytes_max,
                last_sequence,
            },
            current: None,
            done: 0,
        })
    }

    /// The directory being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `data` at `offset` of file `index`. Files come in manifest order, each from
    /// offset 0 with no gap or overlap; anything else is refused.
    pub fn write(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        let refuse = |why: String| Err(Error::InvalidCheckpoint(why));
        if self.current.as_ref().map(|c| c.0) != Some(index) {
            let next = self.current.as_ref().map_or(self.done, |c| c.0 + 1);
            if index != next || index >= self.files.len() {
                return refuse(format!(
                    "chunk of file {index} while file {next} is expected"
                ));
            }
            self.finish_current()?;
            let info = &self.files[index];
            let file = self.io.create_new(&self.dir.join(&info.name))?;
            let check = match parse_name(&info.name, HINT_SUFFIX) {
                Some(id) => Check::Hint(id),
                None => Check::Segment(SegmentCheck::default()),
            };
            self.current = Some((index, file, check, 0));
        }
        let (_, file, check, written) = self.current.as_mut().expect("set above");
        let info = &self.files[index];
        if offset != *written {
            return refuse(format!(
                "chunk of {} at offset {offset}, expected {written}",
                info.name
            ));
        }
        if offset + data.len() as u64 > info.len {
            return refuse(format!(
                "chunk runs past the declared length of {} ({} bytes)",
                info.name, info.len
            ));
        }
        if let Check::Segment(seg) = check {
            seg.feed(&info.name, data, self.limits)?;
        }
        file.write_all_at(data, offset)?;
        // Written back as it comes, so that the fsync at the file's end does not flush the
        // whole file at once (holding up the disk's other fsyncs, the WAL's among them).
        let _ = file.start_writeback(offset, data.len() as u64);
        *written += data.len() as u64;
        Ok(())
    }

    /// Syncs and checks the file being written, if any.
    fn finish_current(&mut self) -> Result<()> {
        let Some((index, file, check, written)) = self.current.take() else {
            return Ok(());
        };
        let info = &self.files[index];
        if written != info.len {
            return Err(Error::InvalidCheckpoint(format!(
                "{} ended at {written} of {} bytes",
                info.name, info.len
            )));
        }
        match check {
            Check::Segment(seg) => seg.finish(&info.name)?,
            Check::Hint(id) => {
                hint::decode(id, &file.read_all()?).map_err(|reason| Error::Corruption {
                    file: info.name.clone(),
                    offset: 0,
                    reason: reason.to_string(),
                })?;
            }
        }
        file.sync_data()?;
        self.done = index + 1;
        Ok(())
    }

    /// Completes the checkpoint: every file whole and checked, every file and the directory
    /// fsynced. Returns the directory, ready for [`crate::Engine::open`].
    pub fn finish(mut self) -> Result<PathBuf> {
        self.finish_current()?;
        if let Some(missing) = self.files.get(self.done) {
            return Err(Error::InvalidCheckpoint(format!(
                "the checkpoint ended before {}",
                missing.name
            )));
        }
        self.io.sync_dir(&self.dir)?;
        Ok(self.dir)
    }
}

/// Refuses a manifest that names anything but segments and their hints, names a file twice,
/// or declares impossible lengths.
fn check_manifest(files: &[FileInfo]) -> Result<()> {
    let refuse = |why: String| Err(Error::InvalidCheckpoint(why));
    if files.len() > CHECKPOINT_FILES_MAX {
        return refuse(format!(
            "{} files, the limit is {CHECKPOINT_FILES_MAX}",
            files.len()
        ));
    }
    let mut segments = HashSet::new();
    let mut names = HashSet::new();
    for info in files {
        if !names.insert(info.name.as_str()) {
            return refuse(format!("{} named twice", info.name));
        }
        // A segment holds at most the limit plus one batch.
        if info.len > SEGMENT_BYTES_MAX_LIMIT + crate::BATCH_BYTES_MAX as u64 {
            return refuse(format!("{} declares {} bytes", info.name, info.len));
        }
        if let Some(id) = parse_name(&info.name, SEGMENT_SUFFIX) {
            if info.name != segment_name(id) {
                return refuse(format!("{:?} is not a segment name as written", info.name));
            }
            segments.insert(id);
        } else if let Some(id) = parse_name(&info.name, HINT_SUFFIX) {
            if info.name != hint_name(id) || !segments.contains(&id) {
                return refuse(format!("{} does not follow its segment", info.name));
            }
        } else {
            return refuse(format!(
                "{:?} is not a segment or hint file name",
                info.name
            ));
        }
    }
    Ok(())
}
