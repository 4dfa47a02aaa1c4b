//! Shard snapshots: engine checkpoints, streamed in bounded chunks, checked before openraft
//! sees them, installed atomically.
//!
//! A leader's snapshot is a [`cairn_storage::Checkpoint`] of the replica's engine: its sealed
//! segments and hint files, held open (never copied into memory) and durable, with the engine's
//! last-applied marker naming the snapshot's last log id and membership. The network sends a
//! [`Manifest`] and then the files as [`Chunk`]s of at most [`CHUNK_BYTES_DEFAULT`] bytes, each
//! with a CRC32C of its bytes. The follower feeds them to an [`Incoming`], which writes them
//! into a staging directory of its replica and checks every record as it arrives
//! (`cairn_storage::checkpoint::Receiver`); `finish` fsyncs, opens the staged engine and
//! checks that its marker is the snapshot's meta. Only then is the snapshot handed to
//! openraft (`Raft::install_full_snapshot`), whose `install_snapshot` cannot fail on bad data
//! any more: it renames `CURRENT` and swaps the engine ([`crate::replica`]).
//!
//! Per-key versions, deadlines and tombstones' effects travel as they are on disk, so a
//! replica that installs a snapshot answers exactly as the leader did at the snapshot's index.

use std::io;

use bytes::Bytes;
use cairn_storage::checkpoint::{FileInfo, Receiver};
use cairn_storage::{Checkpoint, Engine};

use crate::codec::decode_applied;
use crate::replica::Replica;
use crate::types::SnapshotMeta;

/// Default largest chunk a snapshot is streamed in. The receiver writes each chunk and starts
/// its writeback at once, so a chunk is also how much of the copy one of the disk's flushes
/// may find queued ahead of a WAL's fsync: small enough that the WAL waits little behind
/// it, large enough that a copy without a rate limit is not held back by per-chunk costs.
pub const CHUNK_BYTES_DEFAULT: usize = 256 << 10;

fn storage_err(e: cairn_storage::Error) -> io::Error {
    let kind = match &e {
        cairn_storage::Error::Corruption { .. } | cairn_storage::Error::InvalidCheckpoint(_) => {
            io::ErrorKind::InvalidData
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// What a snapshot's files are, sent before them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub files: Vec<FileInfo>,
    /// The highest version in the snapshot (no record may carry a later one).
    pub last_sequence: u64,
}

/// A piece of one file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Index of the file in [`Manifest::files`].
    pub file: u32,
    pub offset: u64,
    pub data: Bytes,
    /// CRC32C of `data`.
    pub crc: u32,
}

/// A shard snapshot: the data openraft carries between the state machine and the network.
#[derive(Debug)]
pub struct ShardSnapshot(Kind);

#[derive(Debug)]
enum Kind {
    /// A checkpoint of a local engine: what a leader sends.
    Checkpoint(Checkpoint),
    /// A snapshot received, checked and opened, waiting to be installed.
    Staged(Staged),
}

impl ShardSnapshot {
    pub(crate) fn checkpoint(checkpoint: Checkpoint) -> ShardSnapshot {
        ShardSnapshot(Kind::Checkpoint(checkpoint))
    }

    fn sending(&self) -> io::Result<&Checkpoint> {
        match &self.0 {
            Kind::Checkpoint(c) => Ok(c),
            Kind::Staged(_) => Err(io::Error::other(
                "a received snapshot is installed, not sent on",
            )),
        }
    }

    /// The manifest to send before the chunks.
    pub fn manifest(&self) -> io::Result<Manifest> {
        let checkpoint = self.sending()?;
        Ok(Manifest {
            files: checkpoint.files(),
            last_sequence: checkpoint.last_sequence(),
        })
    }

    /// Bytes in all files.
    pub fn total_bytes(&self) -> u64 {
        match &self.0 {
            Kind::Checkpoint(c) => c.total_bytes(),
            Kind::Staged(_) => 0,
        }
    }

    /// The files as chunks of at most `chunk_bytes`, in the order an [`Incoming`] takes them.
    /// Each chunk is read from disk when the iterator reaches it (the iterator holds the
    /// files open, not their data).
    pub fn chunks(&self, chunk_bytes: usize) -> io::Result<Chunks> {
        let checkpoint = self.sending()?.clone();
        Ok(Chunks {
            files: checkpoint.files(),
            checkpoint,
            file: 0,
            offset: 0,
            chunk_bytes: chunk_bytes.max(1),
        })
    }

    pub(crate) fn into_staged(self) -> Result<Staged, Checkpoint> {
        match self.0 {
            Kind::Staged(s) => Ok(s),
            Kind::Checkpoint(c) => Err(c),
        }
    }
}

/// Iterator over a snapshot's chunks (see [`ShardSnapshot::chunks`]).
#[derive(Debug)]
pub struct Chunks {
    checkpoint: Checkpoint,
    files: Vec<FileInfo>,
    file: usize,
    offset: u64,
    chunk_bytes: usize,
}

impl Iterator for Chunks {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<io::Result<Chunk>> {
        loop {
            let info = self.files.get(self.file)?;
            if self.offset >= info.len && !(info.len == 0 && self.offset == 0) {
                self.file += 1;
                self.offset = 0;
                continue;
            }
            let n = (info.len - self.offset).min(self.chunk_bytes as u64) as usize;
            let mut buf = vec![0; n];
            if let Err(e) = self.checkpoint.read_at(self.file, self.offset, &mut buf) {
                self.files.clear();
                return Some(Err(storage_err(e)));
            }
            let chunk = Chunk {
                file: self.file as u32,
                offset: self.offset,
                crc: crc32c::crc32c(&buf),
                data: Bytes::from(buf),
            };
            self.offset += n as u64;
            if n == 0 {
                self.file += 1;
                self.offset = 0;
            }
            return Some(Ok(chunk));
        }
    }
}

/// A snapshot being received into a staging directory of a replica.
#[derive(Debug)]
pub struct Incoming {
    receiver: Option<Receiver>,
    replica: std::sync::Arc<Replica>,
}

impl Incoming {
    pub(crate) fn new(
        replica: std::sync::Arc<Replica>,
        manifest: Manifest,
    ) -> io::Result<Incoming> {
        let dir = replica.staging_dir();
        let receiver = Receiver::create(
            replica.io().clone(),
            &dir,
            manifest.files,
            manifest.last_sequence,
            replica.options().value_bytes_max,
        )
        .map_err(storage_err)?;
        Ok(Incoming {
            receiver: Some(receiver),
            replica,
        })
    }

    /// Takes the next chunk (checked against its CRC, its place in the stream and the
    /// records it completes).
    pub fn write(&mut self, chunk: &Chunk) -> io::Result<()> {
        if crc32c::crc32c(&chunk.data) != chunk.crc {
            return Err(invalid(format!(
                "chunk of file {} at offset {} fails its CRC",
                chunk.file, chunk.offset
            )));
        }
        let receiver = self.receiver.as_mut().expect("present until finish");
        receiver
            .write(chunk.file as usize, chunk.offset, &chunk.data)
            .map_err(storage_err)
    }

    /// Completes the transfer: every file whole and durable, the engine opened, and its marker
    /// equal to `meta`. The result is ready for `Raft::install_full_snapshot`.
    pub fn finish(mut self, meta: &SnapshotMeta) -> io::Result<ShardSnapshot> {
        let receiver = self.receiver.take().expect("present until finish");
        let dir = receiver.dir().to_path_buf();
        let opened = receiver.finish().and_then(|dir| {
            Engine::open_with_io(
                &dir,
                self.replica.options().clone(),
                self.replica.io().clone(),
            )
        });
        let engine = match opened {
            Ok(engine) => engine,
            Err(e) => {
                discard(&self.replica, &dir);
                return Err(storage_err(e));
            }
        };
        let staged = Staged {
            engine: Some(engine),
            replica: self.replica.clone(),
        };
        staged.check(meta)?;
        Ok(ShardSnapshot(Kind::Staged(staged)))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            let dir = receiver.dir().to_path_buf();
            let replica = self.replica.clone();
            in_background(move || {
                drop(receiver);
                discard(&replica, &dir);
            });
        }
    }
}

/// Runs `work` (closing and removing a discarded snapshot: file closes, unlinks of up to a
/// whole shard's data and directory fsyncs) on a thread of its own: a transfer is abandoned
/// where its future is dropped, often on a runtime thread that serves requests. Inline if no
/// thread can be had. Each staging directory is a transfer's own
/// ([`Replica::staging_dir`]), so the removal races no later transfer.
fn in_background(work: impl FnOnce() + Send + 'static) {
    let work = std::sync::Arc::new(parking_lot::Mutex::new(Some(work)));
    let spawned = {
        let work = work.clone();
        std::thread::Builder::new()
            .name("cairn-snapshot-discard".into())
            .spawn(move || {
                if let Some(work) = work.lock().take() {
                    work();
                }
            })
    };
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to discard a snapshot on; discarding it here");
        if let Some(work) = work.lock().take() {
            work();
        }
    }
}

/// Removes a staging directory that will not be installed (best effort: the replica's next
/// open removes whatever is left).
fn discard(replica: &Replica, dir: &std::path::Path) {
    if let Err(e) = cairn_storage::io::remove_dir_all_durable(&**replica.io(), dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "removing a discarded snapshot failed");
    }
}

/// A received snapshot, opened as an engine in a staging directory of its replica.
#[derive(Debug)]
pub(crate) struct Staged {
    engine: Option<Engine>,
    replica: std::sync::Arc<Replica>,
}

impl Staged {
    /// Whether the staged engine's marker is `meta`'s last log id and membership.
    pub(crate) fn check(&self, meta: &SnapshotMeta) -> io::Result<()> {
        let engine = self.engine.as_ref().expect("present until installed");
        let marker = engine
            .last_applied()
            .ok_or_else(|| invalid("the snapshot has no applied marker".into()))?;
        let (last, membership) = decode_applied(&marker)?;
        if last != meta.last_log_id || membership != meta.last_membership {
            return Err(invalid(format!(
                "the snapshot's data is at {last:?} with membership {membership:?}, but its meta \
                 says {:?} with {:?}",
                meta.last_log_id, meta.last_membership
            )));
        }
        Ok(())
    }

    /// Whether this was staged for `replica`.
    pub(crate) fn belongs_to(&self, replica: &std::sync::Arc<Replica>) -> bool {
        std::sync::Arc::ptr_eq(&self.replica, replica)
    }

    /// Installs the staged engine as the replica's.
    pub(crate) fn install(mut self) -> io::Result<()> {
        let engine = self.engine.take().expect("present until installed");
        self.replica.install(engine).map_err(storage_err)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let replica = self.replica.clone();
            in_background(move || {
                let dir = engine.dir().to_path_buf();
                if let Err(e) = engine.close() {
                    tracing::warn!(dir = %dir.display(), error = %e, "closing a discarded snapshot failed");
                }
                discard(&replica, &dir);
            });
        }
    }
}
