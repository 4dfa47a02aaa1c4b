//! A shard replica's state machine: a cairn-storage engine, applied without fsync (the WAL is
//! the durable record).
//!
//! Each entry is applied as one engine batch stamped with the entry's log index as its version
//! (so a key's version is the index of the entry that last wrote it), and the batch carries the
//! engine's last-applied marker: the entry's log id and the group's membership, written
//! atomically with the data. After a crash the engine is at some applied index at or below the
//! log's, and openraft re-applies the rest from the log (the log store saves `committed`).
//!
//! Snapshots are checkpoints of the engine, streamed and installed as [`crate::snapshot`]
//! describes; the engine lives in a [`Replica`] directory so that an install replaces it whole.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cairn_storage::io::Io;
use cairn_storage::{Engine, Options, WriteBatch};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use crate::codec::{decode_applied, encode_applied_raw, encode_membership, split_applied};
use crate::replica::Replica;
use crate::snapshot::{CHUNK_BYTES_DEFAULT, Incoming, Manifest, ShardSnapshot};
use crate::split::{SplitAt, SystemRecords};
use crate::types::{
    LogId, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, WriteOp,
};

/// Told of every change the state machine makes, in log order: the seam for what the server
/// derives from a shard's data (its index of keys with deadlines, watches, caches).
pub trait ApplyObserver: Send + Sync + 'static {
    /// Entry `index`'s ops were applied (called after the engine write, before the writer is
    /// answered). `cleared` lists the keys a [`WriteOp::Clear`] among them removed, in the
    /// order the engine held them (empty without one). The ops are shared, not copied: an
    /// observer may keep them.
    fn applied(&self, index: u64, ops: &Arc<Vec<WriteOp>>, cleared: &[Bytes]);
    /// A snapshot replaced the engine: whatever was derived from the old one is to be rebuilt
    /// from `engine`, which has applied the log up to `applied`.
    fn replaced(&self, engine: &Engine, applied: u64);
}

/// Carries out a [`WriteOp::Split`] for the replica applying it: creates the child's
/// replica, durably, before the parent deletes its copies of the moving keys (see
/// [`crate::split`]), and answers what the parent's batch does: delete the keys that moved
/// and write system records (the parent's new range). `None`: the split does not apply to
/// the shard as it is (decided from the replicated state alone, so the same on every
/// replica), and the entry changes nothing.
pub trait Splitter: Send + Sync + 'static {
    fn split(&self, at: SplitAt) -> SplitFuture;
}

/// What the parent's batch does for a split.
#[derive(Debug, Default)]
pub struct SplitDone {
    pub moved: Vec<Bytes>,
    pub records: SystemRecords,
}

/// What [`Splitter::split`] answers.
pub type SplitFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Option<SplitDone>>> + Send>>;

/// A shard replica: its engine, in a directory where a received snapshot can replace it.
#[derive(Clone)]
pub struct StateMachine {
    replica: Arc<Replica>,
    /// Told of every change, in the order they were added.
    observers: Vec<Arc<dyn ApplyObserver>>,
    /// Builds the child of a split (`None`: this replica's group never splits).
    splitter: Option<Arc<dyn Splitter>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("replica", &self.replica)
            .field("observers", &self.observers.len())
            .finish()
    }
}

fn storage_err(e: cairn_storage::Error) -> io::Error {
    io::Error::other(e)
}

impl StateMachine {
    /// Opens (creating if needed) the replica in `dir`; `options` should say
    /// `SyncPolicy::Never`: the WAL is the durable record, and snapshots sync what they hold.
    pub fn open(io: Arc<dyn Io>, dir: &Path, options: Options) -> io::Result<StateMachine> {
        let replica = Replica::open(io, dir, options).map_err(storage_err)?;
        Ok(StateMachine::of_replica(replica))
    }

    /// The state machine of a replica already open (one [`crate::split::build_child`] built).
    pub fn of_replica(replica: Replica) -> StateMachine {
        StateMachine {
            replica: Arc::new(replica),
            observers: Vec::new(),
            splitter: None,
        }
    }

    /// The same replica, able to apply splits with `splitter` (set it before the state
    /// machine is handed to openraft; without one, a split entry fails to apply).
    pub fn splitting_with(mut self, splitter: Arc<dyn Splitter>) -> StateMachine {
        self.splitter = Some(splitter);
        self
    }

    /// The same replica, telling `observer` too of every change from now on (add observers
    /// before the state machine is handed to openraft).
    pub fn observed(mut self, observer: Arc<dyn ApplyObserver>) -> StateMachine {
        self.observers.push(observer);
        self
    }

    /// The engine in use (reads go straight to it). Hold it for one operation only: a snapshot
    /// install replaces it.
    pub fn engine(&self) -> Arc<Engine> {
        self.replica.engine()
    }

    /// The last applied log id and membership, from the engine's marker.
    pub fn applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        match self.engine().last_applied() {
            Some(marker) => decode_applied(&marker),
            None => Ok((None, StoredMembership::default())),
        }
    }

    /// Starts receiving a snapshot a leader streams (see [`crate::snapshot`]).
    pub fn receive_snapshot(&self, manifest: Manifest) -> io::Result<Incoming> {
        Incoming::new(self.replica.clone(), manifest)
    }

    /// A checkpoint of the engine as a snapshot (of nothing, at no log id, before anything
    /// was applied).
    fn checkpoint(&self) -> io::Result<Snapshot> {
        let checkpoint = self.engine().checkpoint().map_err(storage_err)?;
        let (last_log_id, last_membership) = match checkpoint.marker() {
            Some(marker) => decode_applied(marker)?,
            None => (None, StoredMembership::default()),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: ShardSnapshot::checkpoint(checkpoint),
        })
    }
}

impl StateMachine {
    /// The file operations of [`RaftStateMachine::install_snapshot`]: stages a local
    /// checkpoint first if given one, checks the staged engine against `meta`, and renames
    /// it in as the replica's.
    fn install_blocking(&self, meta: &SnapshotMeta, snapshot: ShardSnapshot) -> io::Result<()> {
        let staged = match snapshot.into_staged() {
            Ok(staged) => staged,
            Err(checkpoint) => {
                let snapshot = ShardSnapshot::checkpoint(checkpoint);
                let mut incoming = self.receive_snapshot(snapshot.manifest()?)?;
                for chunk in snapshot.chunks(CHUNK_BYTES_DEFAULT)? {
                    incoming.write(&chunk?)?;
                }
                incoming
                    .finish(meta)?
                    .into_staged()
                    .map_err(|_| io::Error::other("a finished transfer is always staged"))?
            }
        };
        if !staged.belongs_to(&self.replica) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the snapshot was staged for another replica",
            ));
        }
        staged.check(meta)?;
        staged.install()
    }
}

/// Runs `op` (file operations: fsyncs, an engine's opening) on a blocking thread rather than
/// on a runtime thread, which serves client requests meanwhile.
async fn off_runtime<T: Send + 'static>(
    op: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| io::Error::other(format!("a state machine's file thread failed: {e}")))?
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = ShardSnapshot;

    /// A checkpoint: durable when it returns, so openraft may purge the log up to it. It
    /// fsyncs the engine's active segment, so it runs on a blocking thread rather than hold
    /// one of the node's runtime threads for that long.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let sm = self.clone();
        off_runtime(move || sm.checkpoint()).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = ShardSnapshot;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let engine = self.engine();
        // The membership goes into every entry's marker; it changes only with a membership
        // entry, so it is carried over still encoded rather than decoded and encoded again.
        let mut membership = match engine.last_applied() {
            Some(marker) => {
                let json = split_applied(&marker)?.1.len();
                marker.slice(marker.len() - json..)
            }
            None => encode_membership(&StoredMembership::default()),
        };
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let mut batch = WriteBatch::new();
            batch.set_version(index);
            let mut cleared = Vec::new();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(request) => match request.ops.as_slice() {
                    &[
                        WriteOp::Split {
                            child,
                            first_slot,
                            last_slot,
                        },
                    ] => {
                        let splitter = self.splitter.as_ref().ok_or_else(|| {
                            io::Error::other("a split entry in a group that cannot split")
                        })?;
                        let at = SplitAt {
                            parent: engine.clone(),
                            log_id: entry.log_id,
                            membership: membership.clone(),
                            child,
                            first_slot,
                            last_slot,
                        };
                        // The child exists, durably, before the parent lets go of its keys.
                        if let Some(done) = splitter.split(at).await? {
                            for key in &done.moved {
                                batch.delete(key);
                            }
                            for (key, value) in &done.records {
                                batch.put_system(key, value);
                            }
                        }
                    }
                    ops => cleared = fill_batch(&mut batch, &engine, ops),
                },
                EntryPayload::Membership(m) => {
                    membership =
                        encode_membership(&StoredMembership::new(Some(entry.log_id), m.clone()));
                }
            }
            batch.set_last_applied(&encode_applied_raw(Some(&entry.log_id), &membership));
            engine.write(batch).map_err(storage_err)?;
            if let EntryPayload::Normal(request) = entry.payload {
                if !self.observers.is_empty() {
                    let ops = Arc::new(request.ops);
                    for observer in &self.observers {
                        observer.applied(index, &ops, &cleared);
                    }
                }
            }
            if let Some(responder) = responder {
                responder.send(Response { index });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Installs a snapshot checked by [`Incoming::finish`] (or, given a local checkpoint,
    /// stages a copy of it first): the replica's `CURRENT` is renamed to the staged engine.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: ShardSnapshot,
    ) -> Result<(), io::Error> {
        // Copying, checking and installing are file operations (fsyncs, the engine's
        // opening): a blocking thread does them, not the runtime thread of this group.
        let sm = self.clone();
        let meta_owned = meta.clone();
        off_runtime(move || sm.install_blocking(&meta_owned, snapshot)).await?;
        let applied = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        for observer in &self.observers {
            observer.replaced(&self.engine(), applied);
        }
        Ok(())
    }

    /// A fresh checkpoint: at or past the last one built or installed (the engine only moves
    /// forward), durable, and pinning no files between transfers. `None` before anything was
    /// applied.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let sm = self.clone();
        let snapshot = off_runtime(move || sm.checkpoint()).await?;
        Ok(snapshot.meta.last_log_id.is_some().then_some(snapshot))
    }
}

/// Adds `ops` to `batch` in order. `Clear` deletes every key the engine holds (expired or not)
/// and every key put earlier in the batch; ops after it apply on the empty shard. Answers the
/// keys the clears removed (those the engine held, then those put before them in the batch).
fn fill_batch(batch: &mut WriteBatch, engine: &Engine, ops: &[WriteOp]) -> Vec<Bytes> {
    let mut put_before: Vec<&Bytes> = Vec::new();
    let mut cleared = Vec::new();
    for op in ops {
        match op {
            WriteOp::Put {
                key,
                value,
                expires_at_ms,
            } => {
                batch.put_with_expiry(key, value, *expires_at_ms);
                put_before.push(key);
            }
            WriteOp::Delete { key } | WriteOp::Expire { key } => {
                batch.delete(key);
            }
            WriteOp::SystemPut { key, value } => {
                batch.put_system(key, value);
            }
            WriteOp::SystemDelete { key } => {
                batch.delete_system(key);
            }
            // Only ever proposed alone (the proposer's rule), and applied as such above.
            WriteOp::Split { .. } => {}
            WriteOp::Clear => {
                // Expired keys merge has not reclaimed too: the expiry index forgets them
                // with the clear, so nothing else would ever delete them.
                for (key, _) in engine.all_keys() {
                    batch.delete(&key);
                    cleared.push(key);
                }
                let held: std::collections::HashSet<Bytes> = cleared.iter().cloned().collect();
                for key in put_before.drain(..) {
                    batch.delete(key);
                    if !held.contains(key) {
                        cleared.push(key.clone());
                    }
                }
            }
        }
    }
    cleared
}
