//! The engine: the write path (append, keydir update, group commit), the read path (keydir
//! lookup, cache, one `pread`) and the background thread (periodic sync, hint files, merge).
//!
//! Locking: `writer` (a mutex) serialises appends; `pending` orders keydir updates by version;
//! `state` (an RwLock) guards the keydir, the segment table, the marker and the system table
//! (so one batch's keys, marker and system records become visible together). Readers take only
//! `state` for reading, clone what they need and do their I/O with no lock held. Lock order is
//! `merge_lock` → `writer` → `pending` → `state` → group-commit state; no path takes them the
//! other way.
//!
//! Visibility: under `SyncPolicy::Always` a write reaches the keydir (and so readers) only once
//! it is durable. Appends queue in `pending`, in version order; whoever completes an fsync (the
//! group-commit leader, or a rotation) moves every queued write the fsync covered into the
//! keydir, in order, before any writer is acknowledged. A write whose fsync fails poisons the
//! engine and is never applied, so a reader never sees what a power cut could take back, nor
//! a value that was never acknowledged. Under `EveryMs`/`Never` the caller asked for speed over
//! durability, and writes are applied as they are appended.
//!
//! The system table: records written with [`WriteBatch::put_system`] and
//! [`WriteBatch::delete_system`] live in a keyspace of their own, held wholly in memory
//! (`State::system`, values included, as the marker is) and never seen by the keydir, so no
//! user-facing read, count or statistic includes them. Like the marker, each entry remembers
//! where its record is so merge can carry it forward, and its record counts as live bytes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{check_key, encode_expiry};
use crate::cache::{Cached, ValueCache};
use crate::checkpoint::{Checkpoint, FileInfo};
use crate::commit::GroupCommit;
use crate::format::{self, Header, Kind, Origin, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::keydir::{Keydir, Loc};
use crate::segment::Segment;
use crate::{
    Entry, Error, KeyMeta, Options, Result, Stats, SyncPolicy, WriteBatch, merge, recovery,
};
use cairn_io::{Io, IoFile, StdIo};

/// Longest the background thread sleeps between looking for work.
const BACKGROUND_TICK: Duration = Duration::from_millis(100);
/// Most keydir entries a scan visits per acquisition of the state read lock.
const SCAN_CHUNK_KEYS: usize = 1024;
/// How often the background merge also rewrites segments for the sake of expired keys.
const EXPIRY_MERGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the background thread checks whether a segment is worth merging.
const MERGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The "last applied" marker and where its record is (merge must carry it forward).
#[derive(Debug, Clone)]
pub(crate) struct MarkerLoc {
    pub value: Bytes,
    pub version: u64,
    pub file: u32,
    pub offset: u32,
}

/// One record of the system table: its value (held in memory), the version of the batch that
/// wrote it, and where its record is (merge must carry it forward, as the marker's).
#[derive(Debug, Clone)]
pub(crate) struct SystemEntry {
    pub value: Bytes,
    pub version: u64,
    pub file: u32,
    pub offset: u32,
}

impl SystemEntry {
    /// Bytes of its record in the segment.
    pub fn record_len(&self, key: &[u8]) -> u64 {
        format::record_len(key.len(), self.value.len()) as u64
    }
}

/// A system tombstone whose version is the system version: the record that carries
/// `State::system_version` across merges and reopens when the last batch that changed the
/// system table left no system put behind (recovery reads the system version back as the
/// highest version of any system record). Merge keeps it and it counts as live bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SystemPin {
    pub version: u64,
    pub file: u32,
    pub offset: u32,
    /// Bytes of its record.
    pub len: u32,
}

/// What a reader that takes no lock learns of the system table: whether it is empty, and a
/// count of its changes. Every change stores `empty` and then bumps `epoch` (both SeqCst,
/// under the state write lock). A reader that loads `epoch`, sees `empty`, reads a key, and
/// loads `epoch` unchanged knows that no system record existed at the moment it saw
/// `empty`, and that none was added before its read ended without `epoch` moving: its read
/// may be placed at that moment ([`Engine::get_guarded`]).
#[derive(Debug)]
pub(crate) struct SystemWatch {
    pub epoch: AtomicU64,
    pub empty: std::sync::atomic::AtomicBool,
}

impl Default for SystemWatch {
    fn default() -> Self {
        SystemWatch {
            epoch: AtomicU64::new(0),
            empty: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

/// What readers share: guarded by `Inner::state`.
#[derive(Debug)]
pub(crate) struct State {
    pub keydir: Keydir,
    pub segments: BTreeMap<u32, Arc<Segment>>,
    pub marker: Option<MarkerLoc>,
    /// The system table (see the module docs): key → value and record location.
    pub system: BTreeMap<Bytes, SystemEntry>,
    /// Version of the last batch that put or deleted a system record; 0 if none ever did.
    pub system_version: u64,
    /// Set when the newest system record carrying `system_version` is a tombstone (see
    /// [`SystemPin`]); `None` when a live system put carries it, or nothing does.
    pub system_pin: Option<SystemPin>,
    /// Published after every change of `system`, for readers that take no lock.
    pub system_watch: Arc<SystemWatch>,
    /// Live keys deleted by writes since the engine opened: a reader that saw a key missing
    /// twice knows it was not created and deleted in between when this did not move.
    pub deletes: u64,
    /// Id of the active segment, changed together with `segments` at rotation so merge never
    /// mistakes a segment still being appended to for a sealed one.
    pub active: u32,
}

/// Counts `bytes` of a record in segment `file` as live.
pub(crate) fn add_live(segments: &BTreeMap<u32, Arc<Segment>>, file: u32, bytes: u64) {
    if let Some(seg) = segments.get(&file) {
        seg.live_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Counts `bytes` of a record in segment `file` as dead again.
pub(crate) fn sub_live(segments: &BTreeMap<u32, Arc<Segment>>, file: u32, bytes: u64) {
    if let Some(seg) = segments.get(&file) {
        let _ = seg
            .live_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }
}

impl State {
    /// Accounts for a record the keydir no longer points at.
    pub fn release(&self, old: Loc, key_len: usize) {
        let bytes = format::record_len(key_len, old.value_len as usize) as u64;
        sub_live(&self.segments, old.file, bytes);
    }

    /// Replaces the marker; its record counts as live bytes so a segment holding only the
    /// current marker is not merged over and over.
    pub fn set_marker(&mut self, new: MarkerLoc) {
        if let Some(old) = self.marker.take() {
            sub_live(
                &self.segments,
                old.file,
                format::record_len(0, old.value.len()) as u64,
            );
        }
        add_live(
            &self.segments,
            new.file,
            format::record_len(0, new.value.len()) as u64,
        );
        self.marker = Some(new);
    }

    /// A batch with `version` put or deleted a system record: the system version moves to it,
    /// and a pinned tombstone of an older batch no longer carries it.
    fn note_system_change(&mut self, version: u64) {
        self.system_version = self.system_version.max(version);
        if let Some(pin) = self.system_pin {
            if pin.version < self.system_version {
                sub_live(&self.segments, pin.file, u64::from(pin.len));
                self.system_pin = None;
            }
        }
    }

    /// Applies a system put: the entry's record counts as live bytes (so a segment holding
    /// only live system records is not merged over and over), the one it replaces no longer.
    pub fn put_system(&mut self, key: &[u8], entry: SystemEntry) {
        self.note_system_change(entry.version);
        add_live(&self.segments, entry.file, entry.record_len(key));
        if let Some(old) = self.system.insert(Bytes::copy_from_slice(key), entry) {
            sub_live(&self.segments, old.file, old.record_len(key));
        }
        self.publish_system();
    }

    /// Tells lock-free readers that the system table changed (see [`SystemWatch`]).
    fn publish_system(&self) {
        self.system_watch
            .empty
            .store(self.system.is_empty(), Ordering::SeqCst);
        self.system_watch.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Applies a system delete whose record is `tombstone`; it becomes the pin.
    pub fn delete_system(&mut self, key: &[u8], tombstone: SystemPin) {
        self.note_system_change(tombstone.version);
        if let Some(old) = self.system.remove(key) {
            sub_live(&self.segments, old.file, old.record_len(key));
        }
        self.set_system_pin(tombstone);
        self.publish_system();
    }

    /// Pins a system tombstone (see [`SystemPin`]), counting its record as live bytes.
    pub fn set_system_pin(&mut self, pin: SystemPin) {
        if let Some(old) = self.system_pin.take() {
            sub_live(&self.segments, old.file, u64::from(old.len));
        }
        add_live(&self.segments, pin.file, u64::from(pin.len));
        self.system_pin = Some(pin);
    }
}

/// The appender's state: guarded by `Inner::writer`.
#[derive(Debug)]
pub(crate) struct Writer {
    pub segment: Arc<Segment>,
    /// Append position in the active segment.
    pub len: u64,
    /// Bytes appended since open, across segments (the group-commit position).
    pub written: u64,
    pub last_seq: u64,
    /// No record was ever written: the first batch may carry version 0 (a Raft log starts at
    /// index 0), which is not greater than the initial last sequence.
    pub fresh: bool,
    pub closed: bool,
}

/// A write appended under `SyncPolicy::Always` and not yet durable: invisible until an fsync
/// covers `end`.
#[derive(Debug)]
pub(crate) struct PendingApply {
    /// Group-commit position just past the write (`Writer::written` after it).
    pub end: u64,
    pub segment: Arc<Segment>,
    /// Offset of the write in `segment`.
    pub base: u64,
    /// The sealed records, as appended.
    pub buf: Vec<u8>,
    /// Where each record starts in `buf`.
    pub offsets: Vec<u32>,
}

/// Wakes and stops the background thread.
#[derive(Debug, Default)]
pub(crate) struct Background {
    stop: Mutex<bool>,
    cv: Condvar,
}

impl Background {
    pub fn wake(&self) {
        self.cv.notify_all();
    }
}

/// Everything shared between the engine handle and its background thread.
#[derive(Debug)]
pub(crate) struct Inner {
    /// The same as `State::system_watch`, reachable without the lock.
    pub system_watch: Arc<SystemWatch>,
    pub dir: PathBuf,
    pub io: Arc<dyn Io>,
    pub options: Options,
    pub state: RwLock<State>,
    pub writer: Mutex<Writer>,
    /// Writes appended but not yet durable, in version order (`SyncPolicy::Always` only).
    pub pending: Mutex<VecDeque<PendingApply>>,
    /// Group commit; holds the poison flag shared with the engine's `SyncGuardIo`.
    pub group: GroupCommit,
    pub cache: ValueCache,
    /// Next segment id to allocate (rotation and merge output).
    pub next_id: AtomicU32,
    /// One merge (or hint write) at a time.
    pub merge_lock: Mutex<()>,
    /// Sealed log segments still without a hint file.
    pub pending_hints: Mutex<Vec<u32>>,
    pub last_seq: AtomicU64,
    pub writes: AtomicU64,
    pub merges: AtomicU64,
    pub damaged: AtomicU64,
    pub background: Background,
    /// Held for the engine's lifetime; dropping it releases the directory.
    pub _dir_lock: Box<dyn Debug + Send + Sync>,
}

/// What [`Engine::get_many_guarded`] read, all as of one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedRead {
    /// The live entry of each key, in the order of the keys (as [`Engine::get_many`]).
    pub entries: Vec<Option<Entry>>,
    /// For each key, in the same order, the value of the system record at `guard_prefix ++
    /// key`, if there is one.
    pub guards: Vec<Option<Bytes>>,
    /// [`Engine::system_version`] at that instant.
    pub system_version: u64,
    /// How many live keys writes had deleted since the engine opened, at that instant (a
    /// key read missing twice with this unchanged was missing throughout).
    pub deletes: u64,
}

/// The engine. `Send + Sync`; share it through `Arc`.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    background: Option<JoinHandle<()>>,
}

impl Engine {
    /// Opens (creating if needed) the engine in `dir`, recovering from any crash.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Engine> {
        Self::open_with_io(dir, options, Arc::new(StdIo))
    }

    /// Like [`Engine::open`], with file access through `io` (fault injection in tests).
    pub fn open_with_io(
        dir: impl AsRef<Path>,
        options: Options,
        io: Arc<dyn Io>,
    ) -> Result<Engine> {
        let inner = Arc::new(recovery::open(dir.as_ref(), options, io)?);
        let bg_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-storage-bg".into())
            .spawn(move || background_loop(bg_inner))?;
        Ok(Engine {
            inner,
            background: Some(handle),
        })
    }

    /// The value of a live key. `Error::Corruption` if its record fails its CRC check.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.inner.lookup(key)?.map(|c| c.value))
    }

    /// The value of a live key with its version and expiry.
    pub fn get_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self.inner.lookup(key)?.map(|c| Entry {
            key: Bytes::copy_from_slice(key),
            value: c.value,
            version: c.version,
            expires_at_ms: (c.expires_at_ms != 0).then_some(c.expires_at_ms),
        }))
    }

    /// One key's entry and the system record at `guard_prefix ++ key`, as of one instant:
    /// [`Engine::get_many_guarded`] for one key. While the system table is empty it takes the
    /// path of [`Engine::get_entry`] (no state lock on a cache hit, no allocation beyond the
    /// entry), checked by [`SystemWatch`]; otherwise, or when the table changed meanwhile, it
    /// reads under the state lock.
    pub fn get_guarded(
        &self,
        key: &[u8],
        guard_prefix: &[u8],
    ) -> Result<(Option<Entry>, Option<Bytes>)> {
        let watch = &self.inner.system_watch;
        let epoch = watch.epoch.load(Ordering::SeqCst);
        if watch.empty.load(Ordering::SeqCst) {
            let entry = self.get_entry(key)?;
            if watch.epoch.load(Ordering::SeqCst) == epoch {
                return Ok((entry, None));
            }
        }
        let mut read = self.read_many(&[key], Some(guard_prefix))?;
        Ok((read.entries.pop().flatten(), read.guards.pop().flatten()))
    }

    /// The entries of several keys as of one instant: a batch written with [`Engine::write`]
    /// is seen whole or not at all, however the reads interleave with it (what MGET needs).
    /// Answers are in the order of `keys`.
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Entry>>> {
        Ok(self.read_many(keys, None)?.entries)
    }

    /// [`Engine::get_many`], expired keys included (those merge has not reclaimed yet): what
    /// a copy of the engine's records that must not depend on the clock reads (a replicated
    /// shard's replicas apply the same entry at different times).
    pub fn get_many_with_expired(&self, keys: &[&[u8]]) -> Result<Vec<Option<Entry>>> {
        Ok(self.read_many_at(keys, None, 0)?.entries)
    }

    /// Reads `keys` as [`Engine::get_many`] does (same entries, same expiry rules, in the
    /// order of `keys`) together with, for each key, the system record at `guard_prefix ++
    /// key` (`guards[i]` for `keys[i]`; `guards.len() == keys.len()`) and the system version,
    /// all under one hold of the state lock: no batch lands between them, so an entry and the
    /// guard of its key are as of the same instant, and `system_version` is the version of
    /// the last batch that changed the system table before that instant. When the system
    /// table is empty the guard lookups are skipped (no probe key is built): this runs on the
    /// hot read path.
    pub fn get_many_guarded(&self, keys: &[&[u8]], guard_prefix: &[u8]) -> Result<GuardedRead> {
        self.read_many(keys, Some(guard_prefix))
    }

    /// `get_many`, and with `guard_prefix` the guards and system version read under the same
    /// hold of the state lock (without it `guards` is empty).
    fn read_many(&self, keys: &[&[u8]], guard_prefix: Option<&[u8]>) -> Result<GuardedRead> {
        self.read_many_at(keys, guard_prefix, self.inner.now_ms())
    }

    /// `read_many` as of `now` (ms since the Unix epoch; 0 sees every deadline in the future).
    fn read_many_at(
        &self,
        keys: &[&[u8]],
        guard_prefix: Option<&[u8]>,
        now: u64,
    ) -> Result<GuardedRead> {
        enum Found {
            Missing,
            Cached(Cached),
            At(Loc, Arc<Segment>),
        }
        let (found, guards, system_version, deletes) = {
            // Under the state lock no batch can be half applied, and every cached value is the
            // one the keydir points at (writes evict under the write lock, fills check under
            // the read lock).
            let st = self.inner.state.read();
            let found = keys
                .iter()
                .map(|key| {
                    if let Some(hit) = self.inner.cache.get(key) {
                        return Ok(if hit.expires_at_ms != 0 && now >= hit.expires_at_ms {
                            Found::Missing
                        } else {
                            Found::Cached(hit)
                        });
                    }
                    match st.keydir.get(key) {
                        Some(loc) if !loc.expired(now) => {
                            Ok(Found::At(loc, self.inner.segment_of(&st, loc)?))
                        }
                        _ => Ok(Found::Missing),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let guards: Vec<Option<Bytes>> = match guard_prefix {
                None => Vec::new(),
                Some(_) if st.system.is_empty() => vec![None; keys.len()],
                Some(prefix) => {
                    let mut probe = Vec::with_capacity(prefix.len() + 32);
                    probe.extend_from_slice(prefix);
                    keys.iter()
                        .map(|key| {
                            probe.truncate(prefix.len());
                            probe.extend_from_slice(key);
                            st.system.get(&probe[..]).map(|e| e.value.clone())
                        })
                        .collect()
                }
            };
            (found, guards, st.system_version, st.deletes)
        };
        // Records are immutable and the segments are held open, so the values can be read
        // after the lock is released.
        let entries = keys
            .iter()
            .zip(found)
            .map(|(key, found)| {
                let cached = match found {
                    Found::Missing => return Ok(None),
                    Found::Cached(hit) => hit,
                    Found::At(loc, seg) => {
                        let cached = Cached {
                            value: self.inner.read_value(&seg, key, loc)?,
                            version: loc.version,
                            expires_at_ms: loc.expires_at_ms,
                        };
                        self.inner.cache_fill(key, loc, &cached);
                        cached
                    }
                };
                Ok(Some(Entry {
                    key: Bytes::copy_from_slice(key),
                    value: cached.value,
                    version: cached.version,
                    expires_at_ms: (cached.expires_at_ms != 0).then_some(cached.expires_at_ms),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GuardedRead {
            entries,
            guards,
            system_version,
            deletes,
        })
    }

    /// The value of system record `key` (see [`WriteBatch::put_system`]); never a key of the
    /// keyspace. No I/O: the system table is held in memory.
    pub fn system_get(&self, key: &[u8]) -> Option<Bytes> {
        self.inner
            .state
            .read()
            .system
            .get(key)
            .map(|e| e.value.clone())
    }

    /// System records with keys in `(start, end)`, in key order, at most `limit`, as of one
    /// instant (read under one hold of the state lock). No I/O.
    pub fn system_range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Vec<(Bytes, Bytes)> {
        if limit == 0 || crate::keydir::range_is_empty(start, end) {
            return Vec::new();
        }
        self.inner
            .state
            .read()
            .system
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    /// Number of records in the system table.
    pub fn system_len(&self) -> usize {
        self.inner.state.read().system.len()
    }

    /// The version of the last batch that changed the system table (put or deleted a system
    /// record, present or not), 0 if none ever did. Survives reopen, merge and checkpoints: it
    /// only moves forward.
    pub fn system_version(&self) -> u64 {
        self.inner.state.read().system_version
    }

    /// Metadata of a live key without reading its value.
    pub fn meta(&self, key: &[u8]) -> Option<KeyMeta> {
        let loc = self.inner.state.read().keydir.get(key)?;
        if loc.expired(self.inner.now_ms()) {
            return None;
        }
        Some(KeyMeta {
            version: loc.version,
            expires_at_ms: loc.expiry(),
            value_len: loc.value_len,
        })
    }

    /// Writes `key` = `value` (no expiry) with version last + 1; durable on return under
    /// `SyncPolicy::Always`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_with_expiry(key, value, None)
    }

    /// Like [`Engine::put`], with an absolute expiry (ms since the Unix epoch; `None` = never).
    /// The key is invisible from that moment and reclaimed by merge.
    pub fn put_with_expiry(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<()> {
        check_key(key).map_err(|e| e.into_error(self.inner.options.value_bytes_max))?;
        self.inner.check_value(value.len())?;
        let mut buf = Vec::with_capacity(format::record_len(key.len(), value.len()));
        format::encode_record(
            &mut buf,
            Kind::Put,
            key,
            value,
            0,
            encode_expiry(expires_at_ms),
        );
        self.inner.commit(buf, &[0], None, 1)
    }

    /// Returns whether a live key was deleted.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        check_key(key).map_err(|e| e.into_error(self.inner.options.value_bytes_max))?;
        let loc = self.inner.state.read().keydir.get(key);
        if loc.is_none() && self.inner.pending.lock().is_empty() {
            // No record of the key is live or on its way, so no tombstone is needed.
            return Ok(false);
        }
        let mut buf = Vec::with_capacity(format::record_len(key.len(), 0));
        format::encode_record(&mut buf, Kind::Delete, key, &[], 0, 0);
        self.inner.commit(buf, &[0], None, 1)?;
        Ok(loc.is_some_and(|loc| !loc.expired(self.inner.now_ms())))
    }

    /// Applies a batch atomically: after a crash all of it is visible or none.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let WriteBatch {
            mut buf,
            mut offsets,
            version,
            marker,
            error,
        } = batch;
        if let Some(e) = error {
            return Err(e.into_error(self.inner.options.value_bytes_max));
        }
        for &off in &offsets {
            let h = Header::decode(&buf[off as usize..]).map_err(|r| Error::Corruption {
                file: "<batch>".into(),
                offset: u64::from(off),
                reason: r.into(),
            })?;
            // A system value is the engine's user's own record (a transaction's, holding
            // the writes of other shards): only the format's limit applies to it, so that a
            // replicated entry never fails to apply for being larger than a user's value.
            if h.kind != Kind::SystemPut {
                self.inner.check_value(h.value_len as usize)?;
            }
        }
        let ops = offsets.len() as u64;
        if let Some(m) = marker {
            self.inner.check_value(m.len())?;
            offsets.push(buf.len() as u32);
            format::encode_record(&mut buf, Kind::Marker, &[], &m, 0, 0);
        }
        if offsets.is_empty() {
            return Ok(());
        }
        self.inner.commit(buf, &offsets, version, ops)
    }

    /// Live entries with keys in `(start, end)`, in key order, at most `limit`.
    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Entry>> {
        self.inner.scan(start, end, limit)
    }

    /// Live keys only (no value reads), in key order, at most `limit`.
    pub fn scan_keys(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Vec<(Bytes, KeyMeta)> {
        let mut found = Vec::new();
        if limit > 0 {
            let walked = self.inner.walk(start, end, Some(false), |_, key, loc| {
                let meta = KeyMeta {
                    version: loc.version,
                    expires_at_ms: loc.expiry(),
                    value_len: loc.value_len,
                };
                found.push((Bytes::copy_from_slice(key), meta));
                Ok(found.len() < limit)
            });
            debug_assert!(walked.is_ok(), "the visitor never fails");
        }
        found
    }

    /// Live entries whose key starts with `prefix`, in key order, at most `limit`.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>> {
        let end = prefix_end(prefix);
        let end_bound = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.inner.scan(Bound::Included(prefix), end_bound, limit)
    }

    /// Every key the engine holds with its metadata, expired or not (those merge has not
    /// reclaimed yet), in key order: what clearing the keyspace deletes, and what active
    /// expiry has to know of.
    pub fn all_keys(&self) -> Vec<(Bytes, KeyMeta)> {
        let mut found = Vec::new();
        let walked = self
            .inner
            .walk(Bound::Unbounded, Bound::Unbounded, None, |_, key, loc| {
                let meta = KeyMeta {
                    version: loc.version,
                    expires_at_ms: loc.expiry(),
                    value_len: loc.value_len,
                };
                found.push((Bytes::copy_from_slice(key), meta));
                Ok(true)
            });
        debug_assert!(walked.is_ok(), "the visitor never fails");
        found
    }

    /// Keys whose expiry has passed but that merge has not reclaimed yet, with their versions, at
    /// most `limit` (for a replication layer that proposes their deletion). O(keys).
    pub fn expired_keys(&self, limit: usize) -> Vec<(Bytes, u64)> {
        let mut found = Vec::new();
        if limit > 0 && self.inner.state.read().keydir.expiring() > 0 {
            let walked = self.inner.walk(
                Bound::Unbounded,
                Bound::Unbounded,
                Some(true),
                |_, key, loc| {
                    found.push((Bytes::copy_from_slice(key), loc.version));
                    Ok(found.len() < limit)
                },
            );
            debug_assert!(walked.is_ok(), "the visitor never fails");
        }
        found
    }

    /// Number of live (unexpired) keys. O(1) when no key has an expiry, O(keys) otherwise.
    pub fn len(&self) -> u64 {
        {
            let st = self.inner.state.read();
            if st.keydir.expiring() == 0 {
                return st.keydir.len() as u64;
            }
        }
        let mut live = 0u64;
        let walked = self.inner.walk(
            Bound::Unbounded,
            Bound::Unbounded,
            Some(false),
            |_, _, _| {
                live += 1;
                Ok(true)
            },
        );
        debug_assert!(walked.is_ok(), "the visitor never fails");
        live
    }

    /// Whether no live key exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make every write that has returned durable (group-committed with concurrent callers).
    pub fn sync(&self) -> Result<()> {
        self.inner.sync_all()
    }

    /// The highest version written so far.
    pub fn last_sequence(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// Counters and gauges (cheap: no I/O, one pass over the segment table).
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let st = inner.state.read();
        let mut disk_bytes = 0;
        let mut dead_bytes = 0;
        for seg in st.segments.values() {
            disk_bytes += seg.total_bytes.load(Ordering::Relaxed);
            dead_bytes += seg.dead_bytes();
        }
        Stats {
            live_keys: st.keydir.len() as u64,
            segments: st.segments.len() as u64,
            disk_bytes,
            dead_bytes,
            writes: inner.writes.load(Ordering::Relaxed),
            syncs: inner.group.syncs(),
            cache_hits: inner.cache.hits(),
            cache_misses: inner.cache.misses(),
            merges: inner.merges.load(Ordering::Relaxed),
            last_sequence: inner.last_seq.load(Ordering::Acquire),
            damaged_records: inner.damaged.load(Ordering::Relaxed),
        }
    }

    /// Run one merge pass now; returns how many segments were rewritten.
    pub fn merge(&self) -> Result<usize> {
        merge::merge(&self.inner, true)
    }

    /// A consistent, durable view of the engine as files (see [`crate::checkpoint`]): seals
    /// the active segment (one fdatasync) unless it is empty, then holds every sealed segment
    /// and hint file open. Writes and merges go on while it is held.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let inner = &*self.inner;
        // The active segment is sealed under the writer lock, with an fdatasync: every write
        // to the engine waits for it. Most of what that fdatasync would flush (an engine
        // applies without syncing, so up to a segment's worth) is flushed here first,
        // outside the lock and through the group commit (serialized with the writers'
        // fsyncs, poisoning on failure, recorded as synced), so that the one under the lock
        // covers only what was appended meanwhile. (Measured: checkpoints of 50-150 ms each
        // held a shard's writes and one of the node's runtime threads, every 30 s.)
        inner.sync_all()?;
        let (segments, marker, last_sequence) = {
            let mut w = inner.writer.lock();
            if w.closed {
                return Err(Error::Closed);
            }
            inner.group.check()?;
            if w.len > SEGMENT_HEADER_BYTES as u64 {
                inner.rotate(&mut w)?;
            }
            let st = inner.state.read();
            let segments: Vec<Arc<Segment>> = st
                .segments
                .iter()
                .filter(|&(&id, _)| id != st.active)
                .map(|(_, seg)| seg.clone())
                .collect();
            let marker = st.marker.as_ref().map(|m| m.value.clone());
            (segments, marker, w.last_seq)
        };
        let mut files = Vec::with_capacity(segments.len() * 2);
        for seg in segments {
            let len = seg.total_bytes.load(Ordering::Relaxed);
            let info = FileInfo {
                name: crate::segment::segment_name(seg.id),
                len,
            };
            files.push((info, seg.file.clone()));
            // A hint is renamed into place whole, and merge may remove it at any moment: take
            // it if it is there (a checkpoint without it only makes the receiver's open read
            // the segment).
            let name = crate::segment::hint_name(seg.id);
            if let Ok(file) = inner.io.open(&inner.dir.join(&name)) {
                if let Ok(len) = file.len() {
                    files.push((FileInfo { name, len }, file));
                }
            }
        }
        Ok(Checkpoint::new(files, marker, last_sequence))
    }

    /// The marker last stored with [`WriteBatch::set_last_applied`], if any.
    pub fn last_applied(&self) -> Option<Bytes> {
        self.inner
            .state
            .read()
            .marker
            .as_ref()
            .map(|m| m.value.clone())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Sync, stop background threads, release the lock.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(handle) = self.background.take() else {
            return Ok(());
        };
        *self.inner.background.stop.lock() = true;
        self.inner.background.wake();
        let joined = handle.join();
        let synced = self.inner.sync_all();
        self.inner.writer.lock().closed = true;
        if joined.is_err() {
            tracing::error!("storage background thread panicked");
        }
        synced
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "closing storage engine on drop");
        }
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` if there is none.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Inner {
    /// The wall clock deadlines are compared with ([`Options::clock`]).
    fn now_ms(&self) -> u64 {
        self.options.clock.now_ms()
    }

    fn check_value(&self, len: usize) -> Result<()> {
        if len > self.options.value_bytes_max {
            return Err(Error::ValueTooLarge {
                len,
                max: self.options.value_bytes_max,
            });
        }
        Ok(())
    }

    /// Cache probe, else keydir lookup plus value read. Holds the state lock only for the
    /// lookup and the cache fill, never across I/O.
    fn lookup(&self, key: &[u8]) -> Result<Option<Cached>> {
        if let Some(hit) = self.cache.get(key) {
            if hit.expires_at_ms != 0 && self.now_ms() >= hit.expires_at_ms {
                return Ok(None);
            }
            return Ok(Some(hit));
        }
        let (loc, seg) = {
            let st = self.state.read();
            let Some(loc) = st.keydir.get(key) else {
                return Ok(None);
            };
            if loc.expires_at_ms != 0 && loc.expired(self.now_ms()) {
                return Ok(None);
            }
            (loc, self.segment_of(&st, loc)?)
        };
        let value = self.read_value(&seg, key, loc)?;
        let cached = Cached {
            value,
            version: loc.version,
            expires_at_ms: loc.expires_at_ms,
        };
        self.cache_fill(key, loc, &cached);
        Ok(Some(cached))
    }

    /// Caches a value read from `loc` if the keydir still points there: a write that raced
    /// with the read has removed the key under the write lock, and must win.
    fn cache_fill(&self, key: &[u8], loc: Loc, cached: &Cached) {
        if !self.cache.enabled() {
            return;
        }
        let st = self.state.read();
        if st.keydir.get(key) == Some(loc) {
            self.cache.insert(key, cached.clone());
        }
    }

    fn segment_of(&self, st: &State, loc: Loc) -> Result<Arc<Segment>> {
        st.segments
            .get(&{ loc.file })
            .cloned()
            .ok_or_else(|| Error::Corruption {
                file: format!("segment {}", { loc.file }),
                offset: u64::from(loc.offset),
                reason: "keydir points at a missing segment".into(),
            })
    }

    /// Reads and verifies the record at `loc`: damaged data is never returned as a value.
    fn read_value(&self, seg: &Segment, key: &[u8], loc: Loc) -> Result<Bytes> {
        let len = format::record_len(key.len(), loc.value_len as usize);
        let mut buf = vec![0u8; len];
        seg.file.read_exact_at(&mut buf, u64::from(loc.offset))?;
        let key_end = RECORD_HEADER_BYTES + key.len();
        if !format::check_record(&buf) || &buf[RECORD_HEADER_BYTES..key_end] != key {
            return Err(Error::Corruption {
                file: seg.name(),
                offset: u64::from(loc.offset),
                reason: "record failed its CRC check on read".into(),
            });
        }
        Ok(Bytes::from(buf).slice(key_end..))
    }

    /// Visits keydir entries in `(start, end)` in key order (`Some(false)`: unexpired ones
    /// only; `Some(true)`: expired ones only; `None`: all), holding the state lock for at most
    /// `SCAN_CHUNK_KEYS` entries at a time so a long scan never stalls writers. `visit` returns
    /// whether to go on. Not a point-in-time snapshot: a key written during a long walk may or
    /// may not be seen.
    fn walk(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        expired: Option<bool>,
        mut visit: impl FnMut(&State, &[u8], Loc) -> Result<bool>,
    ) -> Result<()> {
        let now = self.now_ms();
        let mut resume: Option<Vec<u8>> = None;
        loop {
            let next = {
                let st = self.state.read();
                let lo = resume.as_deref().map_or(start, Bound::Excluded);
                let mut visited = 0;
                let mut next = None;
                for (key, loc) in st.keydir.range(lo, end) {
                    visited += 1;
                    if expired.is_none_or(|e| loc.expired(now) == e) && !visit(&st, key, loc)? {
                        return Ok(());
                    }
                    if visited == SCAN_CHUNK_KEYS {
                        next = Some(key.to_vec());
                        break;
                    }
                }
                next
            };
            match next {
                Some(key) => resume = Some(key),
                None => return Ok(()),
            }
        }
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Entry>> {
        let mut found: Vec<(Bytes, Loc, Result<Bytes, Arc<Segment>>)> = Vec::new();
        if limit > 0 {
            self.walk(start, end, Some(false), |st, key, loc| {
                // Under the read lock a cached value is the keydir's current one.
                let value = match self.cache.get(key) {
                    Some(hit) => Ok(hit.value),
                    None => Err(self.segment_of(st, loc)?),
                };
                found.push((Bytes::copy_from_slice(key), loc, value));
                Ok(found.len() < limit)
            })?;
        }
        found
            .into_iter()
            .map(|(key, loc, value)| {
                let value = match value {
                    Ok(v) => v,
                    Err(seg) => {
                        let value = self.read_value(&seg, &key, loc)?;
                        let cached = Cached {
                            value,
                            version: loc.version,
                            expires_at_ms: loc.expires_at_ms,
                        };
                        self.cache_fill(&key, loc, &cached);
                        cached.value
                    }
                };
                Ok(Entry {
                    key,
                    value,
                    version: loc.version,
                    expires_at_ms: loc.expiry(),
                })
            })
            .collect()
    }

    /// The write path: seal `buf` (records starting at `offsets`) with one version, append it,
    /// update the keydir, then wait for durability as the sync policy says.
    pub(crate) fn commit(
        &self,
        mut buf: Vec<u8>,
        offsets: &[u32],
        version: Option<u64>,
        ops: u64,
    ) -> Result<()> {
        self.group.check()?;
        let end = {
            let mut w = self.writer.lock();
            if w.closed {
                return Err(Error::Closed);
            }
            self.group.check()?;
            let seq = match version {
                Some(v) if v <= w.last_seq && !w.fresh => {
                    return Err(Error::VersionNotIncreasing {
                        given: v,
                        last: w.last_seq,
                    });
                }
                Some(v) => v,
                None => w.last_seq + 1,
            };
            for (i, &off) in offsets.iter().enumerate() {
                let rec_end = offsets.get(i + 1).map_or(buf.len(), |&n| n as usize);
                let rec = &mut buf[off as usize..rec_end];
                format::set_version(rec, seq);
                format::set_commit(rec, i + 1 == offsets.len());
                format::seal_record(rec);
            }
            let len = buf.len() as u64;
            if w.len + len > self.options.segment_bytes_max && w.len > SEGMENT_HEADER_BYTES as u64 {
                self.rotate(&mut w)?;
            }
            let base = w.len;
            if let Err(e) = w.segment.file.write_all_at(&buf, base) {
                // Cut off any partial append so later records do not follow garbage; if even
                // that fails the file's tail is unknown and the engine must stop.
                if let Err(e2) = w.segment.file.set_len(base) {
                    self.group
                        .poison(format!("append failed ({e}) and truncation failed ({e2})"));
                }
                return Err(Error::Io(e));
            }
            w.len += len;
            w.written += len;
            w.last_seq = seq;
            w.fresh = false;
            self.last_seq.store(seq, Ordering::Release);
            w.segment.total_bytes.fetch_add(len, Ordering::Relaxed);
            w.segment.note_versions(seq, seq);
            self.writes.fetch_add(ops, Ordering::Relaxed);
            if self.options.sync == SyncPolicy::Always {
                // Visible once durable: see the module docs.
                self.pending.lock().push_back(PendingApply {
                    end: w.written,
                    segment: w.segment.clone(),
                    base,
                    buf,
                    offsets: offsets.to_vec(),
                });
            } else {
                self.apply(&w.segment, base, &buf, offsets);
            }
            w.written
        };
        if self.options.sync == SyncPolicy::Always {
            self.sync_upto(end)?;
        }
        Ok(())
    }

    /// Makes the pending writes that end at or before `upto` (now durable) visible, in
    /// version order.
    fn apply_durable(&self, upto: u64) {
        let mut pending = self.pending.lock();
        if pending.front().is_none_or(|p| p.end > upto) {
            return;
        }
        // One state-lock acquisition for the whole group an fsync covered.
        let mut st = self.state.write();
        while pending.front().is_some_and(|p| p.end <= upto) {
            let p = pending.pop_front().expect("checked");
            self.apply_locked(&mut st, &p.segment, p.base, &p.buf, &p.offsets);
        }
    }

    /// Points the keydir at appended records. Called in version order: under the writer lock
    /// (`EveryMs`/`Never`), or under the `pending` lock once durable (`Always`).
    fn apply(&self, seg: &Segment, base: u64, buf: &[u8], offsets: &[u32]) {
        self.apply_locked(&mut self.state.write(), seg, base, buf, offsets);
    }

    fn apply_locked(&self, st: &mut State, seg: &Segment, base: u64, buf: &[u8], offsets: &[u32]) {
        for &off in offsets {
            let rec = &buf[off as usize..];
            let h = Header::decode(rec).expect("records encoded by this process decode");
            let key = &rec[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.key_len as usize];
            let offset = (base + u64::from(off)) as u32;
            match h.kind {
                Kind::Put => {
                    let loc = Loc {
                        file: seg.id,
                        offset,
                        value_len: h.value_len,
                        version: h.version,
                        expires_at_ms: h.expires_at_ms,
                    };
                    seg.live_bytes
                        .fetch_add(h.record_len() as u64, Ordering::Relaxed);
                    seg.note_expiry(h.expires_at_ms);
                    // Same critical section as the keydir update (see `cache`).
                    self.cache.remove(key);
                    if let Some(old) = st.keydir.insert(key, loc) {
                        st.release(old, key.len());
                    }
                }
                Kind::Delete => {
                    self.cache.remove(key);
                    if let Some(old) = st.keydir.remove(key) {
                        st.release(old, key.len());
                        st.deletes += 1;
                    }
                }
                Kind::Marker => {
                    let value =
                        &rec[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.value_len as usize];
                    st.set_marker(MarkerLoc {
                        value: Bytes::copy_from_slice(value),
                        version: h.version,
                        file: seg.id,
                        offset,
                    });
                }
                Kind::SystemPut => {
                    let start = RECORD_HEADER_BYTES + key.len();
                    let value = &rec[start..start + h.value_len as usize];
                    st.put_system(
                        key,
                        SystemEntry {
                            value: Bytes::copy_from_slice(value),
                            version: h.version,
                            file: seg.id,
                            offset,
                        },
                    );
                }
                Kind::SystemDelete => st.delete_system(
                    key,
                    SystemPin {
                        version: h.version,
                        file: seg.id,
                        offset,
                        len: h.record_len() as u32,
                    },
                ),
            }
        }
    }

    /// Seals the active segment (fsynced, so only the newest log segment can ever have a torn
    /// tail) and starts a new one.
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        if let Err(e) = w.segment.file.sync_data() {
            self.group.poison(format!(
                "fdatasync of {} at rotation failed: {e}",
                w.segment.name()
            ));
            return self.group.check();
        }
        // Everything appended so far is durable now; a sealed segment never holds writes that
        // are not in the keydir (merge judges liveness by the keydir).
        self.apply_durable(w.written);
        self.group.mark_synced(w.written);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seg = match Segment::create(&*self.io, &self.dir, id, Origin::Log, w.last_seq) {
            Ok(seg) => seg,
            Err(e) => {
                // A half-made segment whose removal may not be durable could come back after a
                // power cut as a damaged sealed segment: stop here, and let a reopen sort the
                // directory out (recovery treats it as the torn active segment).
                self.group.poison(format!(
                    "creating segment {} at rotation failed: {e}",
                    crate::segment::segment_name(id)
                ));
                return self.group.check();
            }
        };
        {
            let mut st = self.state.write();
            st.segments.insert(id, seg.clone());
            st.active = id;
        }
        let old = std::mem::replace(&mut w.segment, seg);
        w.len = SEGMENT_HEADER_BYTES as u64;
        self.pending_hints.lock().push(old.id);
        self.background.wake();
        Ok(())
    }

    fn current(&self) -> (Arc<dyn IoFile>, u64) {
        let w = self.writer.lock();
        (w.segment.file.clone(), w.written)
    }

    fn sync_upto(&self, target: u64) -> Result<()> {
        self.group
            .sync_upto(target, || self.current(), |upto| self.apply_durable(upto))
    }

    pub(crate) fn sync_all(&self) -> Result<()> {
        let target = self.writer.lock().written;
        self.sync_upto(target)
    }
}

/// Write-behind of the active segment: an engine appends without syncing (the Raft log is
/// what is durable), so the kernel would keep up to about 30 s of its writes dirty, and the
/// fdatasync that seals the segment (at a checkpoint, or when it is full) would flush them
/// all at once, holding up every other fsync of the disk (the WAL's, so every write of
/// every shard) for tens of milliseconds. Every background tick starts the writeback of
/// what was appended since, once it is at least [`WRITE_BEHIND_BYTES`].
#[derive(Default)]
struct WriteBehind {
    segment: u32,
    from: u64,
}

/// How much an engine appends before the background starts writing it back.
const WRITE_BEHIND_BYTES: u64 = 1 << 20;

impl WriteBehind {
    fn tick(&mut self, inner: &Inner) {
        let (segment, len) = {
            let w = inner.writer.lock();
            if w.closed {
                return;
            }
            (w.segment.clone(), w.len)
        };
        if segment.id != self.segment {
            *self = WriteBehind {
                segment: segment.id,
                from: 0,
            };
        }
        if len < self.from + WRITE_BEHIND_BYTES {
            return;
        }
        if let Err(e) = segment.file.start_writeback(self.from, len - self.from) {
            tracing::debug!(error = %e, "starting the writeback of the active segment failed");
        }
        self.from = len;
    }
}

fn background_loop(inner: Arc<Inner>) {
    let tick = match inner.options.sync {
        SyncPolicy::EveryMs(n) => Duration::from_millis(n).min(BACKGROUND_TICK),
        _ => BACKGROUND_TICK,
    };
    let mut last_sync = Instant::now();
    let mut last_merge = Instant::now();
    let mut last_expiry_merge = Instant::now();
    let mut behind = WriteBehind::default();
    loop {
        {
            let mut stop = inner.background.stop.lock();
            if !*stop {
                inner.background.cv.wait_for(&mut stop, tick);
            }
            if *stop {
                return;
            }
        }
        if let SyncPolicy::EveryMs(n) = inner.options.sync {
            if last_sync.elapsed() >= Duration::from_millis(n) {
                last_sync = Instant::now();
                if let Err(e) = inner.sync_all() {
                    tracing::warn!(error = %e, "periodic sync failed");
                }
            }
        }
        behind.tick(&inner);
        if let Err(e) = merge::write_pending_hints(&inner) {
            tracing::warn!(error = %e, "writing hint files failed");
        }
        if inner.options.merge_background && last_merge.elapsed() >= MERGE_CHECK_INTERVAL {
            last_merge = Instant::now();
            // Expired puts are counted as live bytes, so a segment holding them is merged for
            // their sake alone, but only this often: otherwise every key expiring would rewrite
            // its whole segment.
            let expiring = last_expiry_merge.elapsed() >= EXPIRY_MERGE_INTERVAL;
            if expiring {
                last_expiry_merge = Instant::now();
            }
            if let Err(e) = merge::merge(&inner, expiring) {
                tracing::warn!(error = %e, "background merge failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }

    #[test]
    fn prefix_end_increments_last_non_max_byte() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
