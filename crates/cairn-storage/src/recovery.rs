//! `open`: rebuild the keydir from hint files and segments after a clean close or a crash.
//!
//! Rules (also in `docs/design.md`):
//! 1. An interrupted merge is finished or discarded first (see `merge`), stray `.tmp` files are
//!    removed.
//! 2. Every segment is read in id order, from its hint file when that is present and whole,
//!    else by scanning it. A segment whose header is bad with nothing after it is a creation
//!    torn by the crash and gets its header rewritten. Only the newest log segment without a
//!    hint may have a torn tail; its bad tail is truncated (and logged). Anywhere else a bad
//!    record is `Error::Corruption` naming file and offset, unless `Options::skip_damaged`.
//! 3. For each key the record with the highest version wins (ties, which only happen inside one
//!    batch, go to the later record); if it is a tombstone the key is absent.
//! 4. The marker with the highest version is the last-applied marker; the highest version of
//!    any record (including merge's floor records) is the last sequence.
//! 5. The system table is rebuilt by rule 3 over system records alone (a winning system delete
//!    means the key is absent); the system version is the highest version of any system
//!    record, tombstones included. A batch without its commit record is dropped whole by the
//!    scan, system records and all.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::cache::ValueCache;
use crate::commit::GroupCommit;
use crate::engine::{Background, Inner, MarkerLoc, State, SystemEntry, SystemPin, Writer};
use crate::format::{self, Kind, Origin, SEGMENT_HEADER_BYTES};
use crate::hint::{self, HintEntry};
use cairn_io::Io;

use crate::keydir::{KeyBuf, Keydir, Loc};
use crate::poison::{Poison, SyncGuardIo};
use crate::segment::{
    self, HINT_SUFFIX, SEGMENT_SUFFIX, ScanMode, Segment, hint_name, parse_name, segment_name,
};
use crate::{Error, Options, Result, merge};

pub(crate) fn open(dir: &Path, options: Options, io: Arc<dyn Io>) -> Result<Inner> {
    options.validate()?;
    // The directory's own entry must be durable before anything in it is acknowledged.
    cairn_io::create_dir_all_durable(&*io, dir)?;
    let poison = Arc::new(Poison::default());
    let io: Arc<dyn Io> = Arc::new(SyncGuardIo::new(io, poison.clone()));
    let dir_lock = io.lock_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked(dir.display().to_string())
        } else {
            Error::Io(e)
        }
    })?;
    merge::finish_interrupted(&*io, dir)?;

    let names = io.list_dir(dir)?;
    let mut seg_ids: Vec<u32> = names
        .iter()
        .filter_map(|n| parse_name(n, SEGMENT_SUFFIX))
        .collect();
    seg_ids.sort_unstable();
    let seg_set: HashSet<u32> = seg_ids.iter().copied().collect();
    let mut hint_ids: HashSet<u32> = HashSet::new();
    for id in names.iter().filter_map(|n| parse_name(n, HINT_SUFFIX)) {
        if seg_set.contains(&id) {
            hint_ids.insert(id);
        } else {
            // A hint whose segment a merge removed.
            io.remove(&dir.join(hint_name(id)))?;
        }
    }

    // Open every segment and read its header.
    let mut opened = Vec::with_capacity(seg_ids.len());
    for &id in &seg_ids {
        let path = dir.join(segment_name(id));
        let file = io.open(&path)?;
        let len = file.len()?;
        let mut head = vec![0u8; (len as usize).min(SEGMENT_HEADER_BYTES)];
        file.read_exact_at(&mut head, 0)?;
        let header = segment::read_header(&head);
        opened.push((id, path, file, len, header));
    }
    // The active segment at the crash: the newest log segment without a hint, or a segment
    // whose header never made it to disk. A segment's header is fsynced before anything is
    // written after it, so a bad header with nothing after it (the file no longer than a
    // header: short, or a header's length of zeros or garbage from a lost sector) is a creation
    // torn by a crash; a bad header with data after it is damage to synced bytes.
    let torn_creation = |len: u64, header: &Option<(Origin, u64)>| {
        header.is_none() && (len as usize) <= SEGMENT_HEADER_BYTES
    };
    let tail = opened
        .iter()
        .rev()
        .find(|(id, _, _, len, header)| {
            (matches!(header, Some((Origin::Log, _))) && !hint_ids.contains(id))
                || torn_creation(*len, header)
        })
        .map(|o| o.0);

    let mut all: Vec<(KeyBuf, Loc, Kind)> = Vec::new();
    let mut marker: Option<MarkerLoc> = None;
    let mut system = SystemRecovery::default();
    let mut last_seq = 0u64;
    let mut damaged = 0u64;
    let mut segments: BTreeMap<u32, Arc<Segment>> = BTreeMap::new();
    for (id, path, file, mut len, header) in opened {
        let is_tail = Some(id) == tail;
        let name = path.display().to_string();
        let torn = torn_creation(len, &header);
        match header {
            Some((_, base_seq)) => last_seq = last_seq.max(base_seq),
            None if is_tail && torn => {
                tracing::warn!(file = %name, "segment header incomplete after a crash; rewriting it");
                file.set_len(0)?;
                // Its base sequence is unknown; every sealed segment still holds its records, so
                // the maximum over them (computed below) is a safe floor.
                file.write_all_at(&format::encode_segment_header(Origin::Log, 0), 0)?;
                file.sync_data()?;
                len = SEGMENT_HEADER_BYTES as u64;
            }
            None if options.skip_damaged => {
                tracing::warn!(file = %name, "segment header damaged; skipping the whole segment");
                damaged += 1;
                continue;
            }
            None => {
                return Err(Error::Corruption {
                    file: name,
                    offset: 0,
                    reason: "bad segment header".into(),
                });
            }
        }
        let seg = Segment::new(id, file, path, len);
        let from_hint = if !is_tail && hint_ids.contains(&id) {
            hint::read(&*io, dir, id)?
        } else {
            None
        };
        let entries = match from_hint {
            Some(entries) => entries,
            None => {
                let data = seg.read_all()?;
                let mode = if is_tail {
                    ScanMode::Tail
                } else if options.skip_damaged {
                    ScanMode::SkipDamaged
                } else {
                    ScanMode::Strict
                };
                let scanned = segment::scan(&data, &name, mode)?;
                damaged += scanned.damaged;
                if is_tail && scanned.valid_end < len {
                    tracing::warn!(
                        file = %name,
                        valid_end = scanned.valid_end,
                        len,
                        "truncating torn or corrupt tail of the active segment"
                    );
                    seg.file.set_len(scanned.valid_end)?;
                    seg.file.sync_data()?;
                    seg.total_bytes.store(scanned.valid_end, Ordering::Relaxed);
                }
                let entries = HintEntry::from_scan(&data, &scanned.records);
                if !is_tail {
                    if let Err(e) = hint::write(&*io, dir, id, &entries) {
                        tracing::warn!(file = %name, error = %e, "could not write hint file");
                    }
                }
                entries
            }
        };
        collect(
            &seg,
            entries,
            &mut all,
            &mut marker,
            &mut system,
            &mut last_seq,
        );
        segments.insert(id, Arc::new(seg));
    }

    let fresh = all.is_empty() && marker.is_none() && !system.seen && last_seq == 0;
    let keydir = build_keydir(all, &segments);
    let next_id = seg_ids.last().map_or(1, |m| m + 1);
    let next_id = AtomicU32::new(next_id);
    let mut pending_hints = Vec::new();
    let active = match tail.and_then(|t| segments.get(&t)) {
        Some(seg) if seg.total_bytes.load(Ordering::Relaxed) < options.segment_bytes_max => {
            seg.clone()
        }
        other => {
            if let Some(old) = other {
                pending_hints.push(old.id);
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let seg = Segment::create(&*io, dir, id, Origin::Log, last_seq)?;
            segments.insert(id, seg.clone());
            seg
        }
    };
    let writer = Writer {
        len: active.total_bytes.load(Ordering::Relaxed),
        segment: active,
        written: 0,
        last_seq,
        fresh,
        closed: false,
    };
    let cache = ValueCache::new(options.cache_bytes);
    let mut state = State {
        keydir,
        segments,
        marker: None,
        system: BTreeMap::new(),
        system_version: 0,
        system_pin: None,
        system_watch: Default::default(),
        deletes: 0,
        active: writer.segment.id,
    };
    // Through the setters, so the marker's and the system records' bytes count as live.
    if let Some(m) = marker {
        state.set_marker(m);
    }
    system.install(&mut state);
    let system_watch = state.system_watch.clone();
    Ok(Inner {
        system_watch,
        dir: dir.to_path_buf(),
        io,
        state: RwLock::new(state),
        writer: Mutex::new(writer),
        pending: Mutex::default(),
        group: GroupCommit::new(poison),
        cache,
        next_id,
        merge_lock: Mutex::new(()),
        pending_hints: Mutex::new(pending_hints),
        last_seq: AtomicU64::new(last_seq),
        writes: AtomicU64::new(0),
        merges: AtomicU64::new(0),
        damaged: AtomicU64::new(damaged),
        background: Background::default(),
        options,
        _dir_lock: dir_lock,
    })
}

/// The system records seen so far: per key the one with the highest version (ties, inside one
/// batch, to the later), the highest system version, and the newest tombstone.
#[derive(Default)]
struct SystemRecovery {
    /// Key → winning record: `Some` for a put, `None` for a tombstone.
    winners: BTreeMap<Bytes, (u64, Option<SystemEntry>)>,
    version: u64,
    tombstone: Option<SystemPin>,
    /// Whether any system record was seen (a system record at version 0 makes the engine not
    /// fresh, as any other record does).
    seen: bool,
}

impl SystemRecovery {
    fn add(&mut self, seg: &Segment, e: HintEntry) {
        self.seen = true;
        self.version = self.version.max(e.version);
        let entry = match e.kind {
            Kind::SystemPut => Some(SystemEntry {
                value: Bytes::from(e.value.unwrap_or_default().into_vec()),
                version: e.version,
                file: seg.id,
                offset: e.offset,
            }),
            _ => {
                if self.tombstone.is_none_or(|t| t.version <= e.version) {
                    self.tombstone = Some(SystemPin {
                        version: e.version,
                        file: seg.id,
                        offset: e.offset,
                        len: format::record_len(e.key.len(), e.value_len as usize) as u32,
                    });
                }
                None
            }
        };
        let key = Bytes::copy_from_slice(&e.key);
        match self.winners.get_mut(&key) {
            Some(best) if best.0 > e.version => {}
            Some(best) => *best = (e.version, entry),
            None => {
                self.winners.insert(key, (e.version, entry));
            }
        }
    }

    /// Moves the recovered system table into `state`, with its live-byte accounting.
    fn install(self, state: &mut State) {
        for (key, (_, entry)) in self.winners {
            if let Some(entry) = entry {
                state.put_system(&key, entry);
            }
        }
        state.system_version = self.version;
        if let Some(pin) = self.tombstone.filter(|t| t.version == self.version) {
            state.set_system_pin(pin);
        }
    }
}

/// Adds one segment's entries to the recovery set.
fn collect(
    seg: &Segment,
    entries: Vec<HintEntry>,
    all: &mut Vec<(KeyBuf, Loc, Kind)>,
    marker: &mut Option<MarkerLoc>,
    system: &mut SystemRecovery,
    last_seq: &mut u64,
) {
    all.reserve(entries.len());
    for e in entries {
        seg.note_versions(e.version, e.version);
        *last_seq = (*last_seq).max(e.version);
        match e.kind {
            Kind::Put | Kind::Delete => {
                let loc = Loc {
                    file: seg.id,
                    offset: e.offset,
                    value_len: e.value_len,
                    version: e.version,
                    expires_at_ms: e.expires_at_ms,
                };
                seg.note_expiry(e.expires_at_ms);
                all.push((e.key, loc, e.kind));
            }
            Kind::Marker => {
                if marker.as_ref().is_none_or(|m| m.version <= e.version) {
                    *marker = Some(MarkerLoc {
                        value: Bytes::from(e.value.unwrap_or_default().into_vec()),
                        version: e.version,
                        file: seg.id,
                        offset: e.offset,
                    });
                }
            }
            Kind::SystemPut | Kind::SystemDelete => system.add(seg, e),
        }
    }
}

/// Picks the winning record per key and builds the keydir, accounting live bytes per segment.
/// `all` is in segment-id order, and within a segment sorted by key with file order kept, so a
/// stable sort by key leaves each key's records in write order (only merge output, whose
/// records keep their versions, breaks that, and versions decide).
fn build_keydir(
    mut all: Vec<(KeyBuf, Loc, Kind)>,
    segments: &BTreeMap<u32, Arc<Segment>>,
) -> Keydir {
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut live: Vec<(KeyBuf, Loc)> = Vec::with_capacity(all.len());
    let mut iter = all.into_iter().peekable();
    while let Some((key, loc, kind)) = iter.next() {
        let mut best = (key, loc, kind);
        while iter.peek().is_some_and(|n| n.0 == best.0) {
            let next = iter.next().expect("peeked");
            if next.1.version >= best.1.version {
                best = next;
            }
        }
        if best.2 == Kind::Put {
            if let Some(seg) = segments.get(&{ best.1.file }) {
                let bytes = format::record_len(best.0.len(), best.1.value_len as usize) as u64;
                seg.live_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            live.push((best.0, best.1));
        }
    }
    Keydir::from_sorted(live)
}
