//! A shard replica's state machine: a cairn-storage engine, applied without fsync (the WAL is
//! the durable record).
//!
//! Each entry is applied as one engine batch stamped with the entry's log index as its version
//! (so a key's version is the index of the entry that last wrote it), and the batch carries the
//! engine's last-applied marker: the entry's log id and the group's membership, written
//! atomically with the data. After a crash the engine is at some applied index at or below the
//! log's, and openraft re-applies the rest from the log (the log store saves `committed`).
//!
//! Snapshots here are the engine's live entries serialised into memory: correct, and enough
//! for the storage suite, but not yet the bounded, streamed engine checkpoint the cluster needs
//! (issue 7, "Snapshots"), and an install stamps every key with the snapshot's index instead of
//! keeping each key's own version.

use std::io::{self, Cursor};
use std::ops::Bound;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_storage::{Engine, WriteBatch};
use futures::{Stream, TryStreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use crate::codec::{decode_applied, encode_applied};
use crate::types::{LogId, Response, StoredMembership, TypeConfig, WriteOp};

type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type Snapshot = SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;
/// The snapshot last built or installed: its meta and serialised data.
type Current = Option<(SnapshotMeta, Vec<u8>)>;

/// A shard replica: an engine plus the snapshot last built or installed.
#[derive(Debug, Clone)]
pub struct StateMachine {
    engine: Arc<Engine>,
    snapshot: Arc<Mutex<Current>>,
}

fn storage_err(e: cairn_storage::Error) -> io::Error {
    io::Error::other(e)
}

impl StateMachine {
    /// A state machine over `engine` (opened with `SyncPolicy::Never`: the WAL is durable).
    pub fn new(engine: Arc<Engine>) -> StateMachine {
        StateMachine {
            engine,
            snapshot: Arc::new(Mutex::new(None)),
        }
    }

    /// The engine (reads go straight to it).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The last applied log id and membership, from the engine's marker.
    pub fn applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        match self.engine.last_applied() {
            Some(marker) => decode_applied(&marker),
            None => Ok((None, StoredMembership::default())),
        }
    }

    fn serialise(&self) -> io::Result<Vec<u8>> {
        let entries = self
            .engine
            .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .map_err(storage_err)?;
        let mut out = BytesMut::new();
        out.put_u64_le(entries.len() as u64);
        for e in entries {
            out.put_u32_le(e.key.len() as u32);
            out.put_slice(&e.key);
            out.put_u32_le(e.value.len() as u32);
            out.put_slice(&e.value);
            out.put_u64_le(e.expires_at_ms.unwrap_or(0));
        }
        Ok(out.to_vec())
    }
}

fn deserialise(data: &[u8]) -> io::Result<Vec<(Bytes, Bytes, Option<u64>)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "damaged snapshot data");
    let mut buf = data;
    if buf.remaining() < 8 {
        return Err(bad());
    }
    let count = buf.get_u64_le() as usize;
    let mut out = Vec::with_capacity(count.min(buf.remaining() / 16));
    let take = |buf: &mut &[u8]| -> io::Result<Bytes> {
        if buf.remaining() < 4 {
            return Err(bad());
        }
        let len = buf.get_u32_le() as usize;
        if buf.remaining() < len {
            return Err(bad());
        }
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        Ok(bytes)
    };
    for _ in 0..count {
        let key = take(&mut buf)?;
        let value = take(&mut buf)?;
        if buf.remaining() < 8 {
            return Err(bad());
        }
        let at = buf.get_u64_le();
        out.push((key, value, (at != 0).then_some(at)));
    }
    if buf.has_remaining() {
        return Err(bad());
    }
    Ok(out)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (last_log_id, last_membership) = self.applied()?;
        let data = self.serialise()?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        *self.snapshot.lock() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (_, mut membership) = self.applied()?;
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let mut batch = WriteBatch::new();
            batch.set_version(index);
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(request) => {
                    for op in &request.ops {
                        match op {
                            WriteOp::Put {
                                key,
                                value,
                                expires_at_ms,
                            } => {
                                batch.put_with_expiry(key, value, *expires_at_ms);
                            }
                            WriteOp::Delete { key } => {
                                batch.delete(key);
                            }
                        }
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            batch.set_last_applied(&encode_applied(Some(&entry.log_id), &membership));
            self.engine.write(batch).map_err(storage_err)?;
            if let Some(responder) = responder {
                responder.send(Response { index });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let entries = deserialise(&data)?;
        let mut batch = WriteBatch::new();
        if let Some(last) = &meta.last_log_id {
            batch.set_version(last.index);
        }
        for (key, _) in self
            .engine
            .scan_keys(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        {
            batch.delete(&key);
        }
        for (key, value, expires_at_ms) in &entries {
            batch.put_with_expiry(key, value, *expires_at_ms);
        }
        batch.set_last_applied(&encode_applied(
            meta.last_log_id.as_ref(),
            &meta.last_membership,
        ));
        self.engine.write(batch).map_err(storage_err)?;
        *self.snapshot.lock() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.snapshot.lock().clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Cursor::new(data),
        }))
    }
}
