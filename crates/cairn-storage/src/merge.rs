//! Merge: rewrite the live records of mostly-dead sealed segments, and hint-file upkeep.
//!
//! Crash safety, step by step (a crash at any point leaves a directory `open` can use):
//! 1. Pick sealed segments whose dead fraction passes `merge_dead_ratio_min`, or that may hold
//!    expired puts (always by hand, at most every `EXPIRY_MERGE_INTERVAL` in the background):
//!    the input set S.
//! 2. Copy their live records into new segments written as `<id>.seg.tmp` with hints as
//!    `<id>.hint.tmp`, and fdatasync them. A crash here leaves only `.tmp` files, which `open`
//!    deletes: the merge never happened.
//!    Then sync the active segment: every newer record that made an input record dead must be
//!    durable before that input record is deleted.
//! 3. Write the commit file `MERGE` (via `MERGE.tmp`, fsync, rename, directory fsync), listing S
//!    and the outputs. From here the merge has happened: `open` finishes it.
//! 4. Rename the outputs to their final names, directory fsync; swap the keydir to the new
//!    locations in short chunks under the state lock; delete the inputs and their hints,
//!    directory fsync; delete `MERGE`, directory fsync.
//!
//! What is kept: a put the keydir still points at; the current marker; a system put the system
//! table still points at; a tombstone, of a key or of a system record, unless no segment outside
//! S can hold an older record of its key (every such segment's `min_version` is above the
//! tombstone's version); and the pinned system tombstone that carries the system version (see
//! `engine::SystemPin`). An expired put is dropped under the tombstone rule, and otherwise
//! rewritten as a tombstone with its version, so an older value can never come back. The marker,
//! system records and the pin are repointed at their copies when the merge is finished, as keydir
//! entries are.
//! Merge output keeps every record's original version, so recovery's "highest version wins"
//! needs no file ordering.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::engine::{Inner, State, SystemPin, add_live};
use crate::format::{self, Kind, Origin, SEGMENT_HEADER_BYTES};
use crate::hint::{self, HintEntry};
use crate::keydir::Loc;
use crate::segment::{
    self, SEGMENT_SUFFIX, ScanMode, Segment, TMP_SUFFIX, hint_name, segment_name,
};
use crate::{Error, Result};
use cairn_io::{Io, IoFile};

/// Name of the merge commit file.
pub(crate) const MERGE_COMMIT_NAME: &str = "MERGE";
const MERGE_COMMIT_MAGIC: &[u8; 8] = b"CAIRNMG1";
/// Keydir entries swapped per acquisition of the state write lock, so readers and writers wait
/// at most for one chunk.
const SWAP_CHUNK: usize = 4096;
/// Records checked against the keydir per acquisition of the state read lock.
const LIVENESS_CHUNK: usize = 1024;

/// Finishes a merge that committed before a crash, and removes leftovers of one that did not.
pub(crate) fn finish_interrupted(io: &dyn Io, dir: &Path) -> Result<()> {
    let commit_path = dir.join(MERGE_COMMIT_NAME);
    if io.exists(&commit_path)? {
        let file = io.open(&commit_path)?;
        let bytes = file.read_all()?;
        let (inputs, outputs) = decode_commit(&bytes).ok_or_else(|| Error::Corruption {
            file: commit_path.display().to_string(),
            offset: 0,
            reason: "merge commit file is damaged".into(),
        })?;
        tracing::info!(
            ?inputs,
            ?outputs,
            "finishing a merge interrupted by a crash"
        );
        for id in &outputs {
            for name in [segment_name(*id), hint_name(*id)] {
                let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
                if io.exists(&tmp)? {
                    io.rename(&tmp, &dir.join(&name))?;
                } else if !io.exists(&dir.join(&name))? && name.ends_with(SEGMENT_SUFFIX) {
                    // Deleting the inputs now would lose their data.
                    return Err(Error::Corruption {
                        file: commit_path.display().to_string(),
                        offset: 0,
                        reason: format!("merge output {name} is missing"),
                    });
                }
            }
        }
        io.sync_dir(dir)?;
        remove_segments(io, dir, &inputs)?;
        io.remove(&commit_path)?;
        io.sync_dir(dir)?;
    }
    let mut removed = false;
    for name in io.list_dir(dir)? {
        if name.ends_with(TMP_SUFFIX) {
            io.remove(&dir.join(&name))?;
            removed = true;
        }
    }
    if removed {
        io.sync_dir(dir)?;
    }
    Ok(())
}

fn remove_segments(io: &dyn Io, dir: &Path, ids: &[u32]) -> Result<()> {
    for id in ids {
        for name in [segment_name(*id), hint_name(*id)] {
            let p = dir.join(name);
            if io.exists(&p)? {
                io.remove(&p)?;
            }
        }
    }
    io.sync_dir(dir)?;
    Ok(())
}

fn encode_commit(inputs: &[u32], outputs: &[u32]) -> Vec<u8> {
    let mut b = MERGE_COMMIT_MAGIC.to_vec();
    for list in [inputs, outputs] {
        b.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode_commit(b: &[u8]) -> Option<(Vec<u32>, Vec<u32>)> {
    if b.len() < 12 || &b[..8] != MERGE_COMMIT_MAGIC {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut pos = 8;
    let mut lists = Vec::new();
    for _ in 0..2 {
        let n = u32::from_le_bytes(body.get(pos..pos + 4)?.try_into().ok()?) as usize;
        pos += 4;
        let mut list = Vec::with_capacity(n.min(body.len() / 4));
        for _ in 0..n {
            list.push(u32::from_le_bytes(body.get(pos..pos + 4)?.try_into().ok()?));
            pos += 4;
        }
        lists.push(list);
    }
    let outputs = lists.pop()?;
    let inputs = lists.pop()?;
    (pos == body.len()).then_some((inputs, outputs))
}

/// A merge output segment being filled.
struct Output {
    id: u32,
    buf: Vec<u8>,
    entries: Vec<HintEntry>,
}

/// A merge output written and synced under its `.tmp` name.
struct Written {
    id: u32,
    file: Arc<dyn IoFile>,
    len: u64,
    min_version: u64,
    max_version: u64,
    expiry_min_ms: u64,
}

/// What to do with one record of an input segment.
enum Decision {
    Drop,
    /// Copy it (a live put, a needed tombstone, the current marker, a live system put).
    Keep,
    /// Copy the pinned system tombstone (`engine::SystemPin`), and repoint the pin at the copy.
    KeepPin,
    /// An expired put: remove it from the keydir; write a tombstone in its place if `true`.
    Expire(bool),
}

/// A keydir entry to repoint once the output is committed.
struct Move {
    key: Box<[u8]>,
    old_file: u32,
    old_offset: u32,
    new: Loc,
}

/// A record held in memory (the marker, a system record, the system pin) copied from
/// (`old_file`, `old_offset`) to (`new_file`, `new_offset`): repointed once the output is
/// committed, if it still points at the old place.
#[derive(Debug, Clone, Copy)]
struct Relocation {
    old_file: u32,
    old_offset: u32,
    new_file: u32,
    new_offset: u32,
}

impl Relocation {
    fn applies_to(&self, file: u32, offset: u32) -> bool {
        self.old_file == file && self.old_offset == offset
    }
}

/// What moves besides keydir entries.
#[derive(Default)]
struct Relocations {
    marker: Option<Relocation>,
    pin: Option<Relocation>,
    system: Vec<(Box<[u8]>, Relocation)>,
}

struct Merger<'a> {
    inner: &'a Inner,
    current: Option<Output>,
    written: Vec<Written>,
}

impl Merger<'_> {
    /// Appends a sealed record to the current output; returns (segment id, offset).
    fn append(&mut self, rec: &[u8], entry: HintEntry) -> Result<(u32, u32)> {
        let limit = self.inner.options.segment_bytes_max as usize;
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.buf.len() + rec.len() > limit && !c.entries.is_empty())
        {
            self.flush()?;
        }
        if self.current.is_none() {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let buf = format::encode_segment_header(Origin::Merge, 0).to_vec();
            self.current = Some(Output {
                id,
                buf,
                entries: Vec::new(),
            });
        }
        let out = self.current.as_mut().expect("just set");
        let offset = out.buf.len() as u32;
        out.buf.extend_from_slice(rec);
        out.entries.push(HintEntry { offset, ..entry });
        Ok((out.id, offset))
    }

    /// Writes the current output and its hint under `.tmp` names, synced.
    fn flush(&mut self) -> Result<()> {
        let Some(mut out) = self.current.take() else {
            return Ok(());
        };
        let io = &*self.inner.io;
        let dir = &self.inner.dir;
        let path = dir.join(format!("{}{TMP_SUFFIX}", segment_name(out.id)));
        let file = io.create(&path)?;
        file.write_all_at(&out.buf, 0)?;
        file.sync_data()?;
        let min_version = out
            .entries
            .iter()
            .map(|e| e.version)
            .min()
            .unwrap_or(u64::MAX);
        let max_version = out.entries.iter().map(|e| e.version).max().unwrap_or(0);
        let expiry_min_ms = out
            .entries
            .iter()
            .filter(|e| e.expires_at_ms != 0)
            .map(|e| e.expires_at_ms)
            .min()
            .unwrap_or(u64::MAX);
        out.entries.sort_by(|a, b| a.key.cmp(&b.key));
        let hint_bytes = hint::encode(out.id, &out.entries);
        let hint_file = io.create(&dir.join(format!("{}{TMP_SUFFIX}", hint_name(out.id))))?;
        hint_file.write_all_at(&hint_bytes, 0)?;
        hint_file.sync_data()?;
        self.written.push(Written {
            id: out.id,
            file,
            len: out.buf.len() as u64,
            min_version,
            max_version,
            expiry_min_ms,
        });
        Ok(())
    }
}

impl Drop for Merger<'_> {
    fn drop(&mut self) {
        // Outputs of a merge that did not commit: their `.tmp` files are garbage (`open` would
        // delete them too). Committed outputs were taken out of `written` first.
        for w in &self.written {
            for name in [segment_name(w.id), hint_name(w.id)] {
                let _ = self
                    .inner
                    .io
                    .remove(&self.inner.dir.join(format!("{name}{TMP_SUFFIX}")));
            }
        }
    }
}

/// Runs one merge pass; returns how many input segments were rewritten. With `expiring`,
/// segments that may hold expired puts are candidates too, whatever their dead fraction.
pub(crate) fn merge(inner: &Inner, expiring: bool) -> Result<usize> {
    let _one_at_a_time = inner.merge_lock.lock();
    inner.group.check()?;
    let now = inner.options.clock.now_ms();
    let (inputs, outside_min) = {
        let st = inner.state.read();
        let active = st.active;
        let mut inputs: Vec<Arc<Segment>> = Vec::new();
        let mut outside_min = u64::MAX;
        for seg in st.segments.values() {
            let mostly_dead =
                seg.dead_bytes() > 0 && seg.dead_ratio() >= inner.options.merge_dead_ratio_min;
            let candidate =
                seg.id != active && (mostly_dead || (expiring && seg.may_hold_expired(now)));
            if candidate {
                inputs.push(seg.clone());
            } else {
                outside_min = outside_min.min(seg.min_version.load(Ordering::Relaxed));
            }
        }
        (inputs, outside_min)
    };
    if inputs.is_empty() {
        return Ok(0);
    }
    let mut merger = Merger {
        inner,
        current: None,
        written: Vec::new(),
    };
    let mut moves: Vec<Move> = Vec::new();
    let mut removals: Vec<(Box<[u8]>, u32, u32)> = Vec::new();
    let mut relocations = Relocations::default();
    let mode = if inner.options.skip_damaged {
        ScanMode::SkipDamaged
    } else {
        ScanMode::Strict
    };
    for seg in &inputs {
        let data = seg.read_all()?;
        let scanned = segment::scan(&data, &seg.name(), mode)?;
        for chunk in scanned.records.chunks(LIVENESS_CHUNK) {
            let decisions: Vec<Decision> = {
                let st = inner.state.read();
                chunk
                    .iter()
                    .map(|r| {
                        let h = r.header;
                        match h.kind {
                            Kind::Put => match st.keydir.get(r.key(&data)) {
                                Some(loc) if loc.file == seg.id && loc.offset == r.offset => {
                                    if loc.expired(now) {
                                        Decision::Expire(outside_min <= h.version)
                                    } else {
                                        Decision::Keep
                                    }
                                }
                                _ => Decision::Drop,
                            },
                            Kind::Delete if outside_min <= h.version => Decision::Keep,
                            Kind::Delete => Decision::Drop,
                            Kind::Marker => match &st.marker {
                                Some(m) if m.file == seg.id && m.offset == r.offset => {
                                    Decision::Keep
                                }
                                _ => Decision::Drop,
                            },
                            Kind::SystemPut => match st.system.get(r.key(&data)) {
                                Some(e) if e.file == seg.id && e.offset == r.offset => {
                                    Decision::Keep
                                }
                                _ => Decision::Drop,
                            },
                            Kind::SystemDelete
                                if st
                                    .system_pin
                                    .is_some_and(|p| p.file == seg.id && p.offset == r.offset) =>
                            {
                                Decision::KeepPin
                            }
                            Kind::SystemDelete if outside_min <= h.version => Decision::Keep,
                            Kind::SystemDelete => Decision::Drop,
                        }
                    })
                    .collect()
            };
            for (r, decision) in chunk.iter().zip(decisions) {
                let h = r.header;
                let key = r.key(&data);
                let mut rec = match decision {
                    Decision::Drop => continue,
                    Decision::Expire(false) => {
                        removals.push((key.into(), seg.id, r.offset));
                        continue;
                    }
                    Decision::Expire(true) => {
                        removals.push((key.into(), seg.id, r.offset));
                        let mut rec = Vec::new();
                        format::encode_record(&mut rec, Kind::Delete, key, &[], h.version, 0);
                        rec
                    }
                    Decision::Keep | Decision::KeepPin => r.bytes(&data).to_vec(),
                };
                // Every copied record is a write of its own in the output (its batch committed
                // long ago), so it carries COMMIT.
                format::set_commit(&mut rec, true);
                format::seal_record(&mut rec);
                let out_header = format::Header::decode(&rec).expect("just encoded");
                let entry = HintEntry {
                    kind: out_header.kind,
                    key: key.into(),
                    value_len: out_header.value_len,
                    offset: 0,
                    version: h.version,
                    expires_at_ms: out_header.expires_at_ms,
                    value: h.kind.value_in_hint().then(|| r.value(&data).into()),
                };
                let (new_file, new_offset) = merger.append(&rec, entry)?;
                let relocation = Relocation {
                    old_file: seg.id,
                    old_offset: r.offset,
                    new_file,
                    new_offset,
                };
                match (h.kind, &decision) {
                    (Kind::Put, Decision::Keep) => moves.push(Move {
                        key: key.into(),
                        old_file: seg.id,
                        old_offset: r.offset,
                        new: Loc {
                            file: new_file,
                            offset: new_offset,
                            value_len: h.value_len,
                            version: h.version,
                            expires_at_ms: h.expires_at_ms,
                        },
                    }),
                    (Kind::Marker, _) => relocations.marker = Some(relocation),
                    (Kind::SystemPut, _) => relocations.system.push((key.into(), relocation)),
                    (_, Decision::KeepPin) => relocations.pin = Some(relocation),
                    _ => {}
                }
            }
        }
    }
    merger.flush()?;
    // A record was dropped because a newer write superseded it; that newer write may not be
    // durable yet (it need not be acknowledged). Sync it before the old record disappears, or
    // a power cut could lose both.
    inner.sync_all()?;
    commit(
        inner,
        &inputs,
        &mut merger.written,
        moves,
        removals,
        relocations,
    )?;
    inner.merges.fetch_add(1, Ordering::Relaxed);
    Ok(inputs.len())
}

/// Steps 3 and 4: make the merge durable, then visible, then delete the inputs.
/// Until `MERGE.tmp` is written and synced a failure leaves only `.tmp` files (removed when the
/// `Merger` drops). From the rename on, a failure poisons the engine and leaves every file in
/// place: the rename (and any later directory sync) may or may not have reached the disk, and
/// whichever it did, the next `open` either finishes the merge from its outputs or discards
/// them, so removing the outputs now could leave a durable `MERGE` naming files that are gone.
fn commit(
    inner: &Inner,
    inputs: &[Arc<Segment>],
    written: &mut Vec<Written>,
    moves: Vec<Move>,
    removals: Vec<(Box<[u8]>, u32, u32)>,
    relocations: Relocations,
) -> Result<()> {
    let io = &*inner.io;
    let dir = &inner.dir;
    let input_ids: Vec<u32> = inputs.iter().map(|s| s.id).collect();
    let output_ids: Vec<u32> = written.iter().map(|w| w.id).collect();
    let commit_path = dir.join(MERGE_COMMIT_NAME);
    let commit_tmp = dir.join(format!("{MERGE_COMMIT_NAME}{TMP_SUFFIX}"));
    let f = io.create(&commit_tmp)?;
    f.write_all_at(&encode_commit(&input_ids, &output_ids), 0)?;
    f.sync_data()?;
    // From here on the outputs belong to whichever outcome the disk records.
    let written = std::mem::take(written);
    let finished = io
        .rename(&commit_tmp, &commit_path)
        .and_then(|()| io.sync_dir(dir))
        .map_err(crate::Error::Io)
        .and_then(|()| {
            finish(
                inner,
                input_ids,
                output_ids,
                written,
                moves,
                removals,
                relocations,
            )
        });
    if let Err(e) = &finished {
        inner.group.poison(format!(
            "merge could not be committed and finished ({e}); reopen to finish or discard it"
        ));
    }
    finished
}

fn finish(
    inner: &Inner,
    input_ids: Vec<u32>,
    output_ids: Vec<u32>,
    written: Vec<Written>,
    moves: Vec<Move>,
    removals: Vec<(Box<[u8]>, u32, u32)>,
    relocations: Relocations,
) -> Result<()> {
    let io = &*inner.io;
    let dir = &inner.dir;
    let commit_path = dir.join(MERGE_COMMIT_NAME);
    for id in &output_ids {
        for name in [segment_name(*id), hint_name(*id)] {
            io.rename(&dir.join(format!("{name}{TMP_SUFFIX}")), &dir.join(&name))?;
        }
    }
    io.sync_dir(dir)?;

    let mut new_segments = Vec::new();
    for w in written {
        let seg = Segment::new(w.id, w.file, dir.join(segment_name(w.id)), w.len);
        seg.note_versions(w.min_version, w.max_version);
        seg.note_expiry(w.expiry_min_ms);
        new_segments.push(Arc::new(seg));
    }
    {
        let mut st = inner.state.write();
        for seg in &new_segments {
            st.segments.insert(seg.id, seg.clone());
        }
        // The marker, system records and the pin move only if nothing replaced them since
        // they were copied; their bytes count as live in the output (the inputs go away).
        if let Some(mv) = relocations.marker {
            if let Some(m) = st.marker.clone() {
                if mv.applies_to(m.file, m.offset) {
                    st.set_marker(crate::engine::MarkerLoc {
                        file: mv.new_file,
                        offset: mv.new_offset,
                        ..m
                    });
                }
            }
        }
        if let Some(mv) = relocations.pin {
            if let Some(pin) = st.system_pin {
                if mv.applies_to(pin.file, pin.offset) {
                    st.set_system_pin(SystemPin {
                        file: mv.new_file,
                        offset: mv.new_offset,
                        ..pin
                    });
                }
            }
        }
        let State {
            system, segments, ..
        } = &mut *st;
        for (key, mv) in &relocations.system {
            if let Some(e) = system.get_mut(&key[..]) {
                if mv.applies_to(e.file, e.offset) {
                    e.file = mv.new_file;
                    e.offset = mv.new_offset;
                    add_live(segments, e.file, e.record_len(key));
                }
            }
        }
    }
    for chunk in moves.chunks(SWAP_CHUNK) {
        let mut st = inner.state.write();
        for m in chunk {
            if st
                .keydir
                .replace_if(&m.key, m.old_file, m.old_offset, m.new)
            {
                if let Some(seg) = st.segments.get(&{ m.new.file }) {
                    let bytes = format::record_len(m.key.len(), m.new.value_len as usize) as u64;
                    seg.live_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
            }
        }
    }
    for chunk in removals.chunks(SWAP_CHUNK) {
        let mut st = inner.state.write();
        for (key, file, offset) in chunk {
            st.keydir.remove_if(key, *file, *offset);
        }
    }
    {
        let mut st = inner.state.write();
        for id in &input_ids {
            st.segments.remove(id);
        }
    }
    remove_segments(io, dir, &input_ids)?;
    io.remove(&commit_path)?;
    io.sync_dir(dir)?;
    Ok(())
}

/// Writes hint files for sealed log segments that lack one. A segment whose hint could not be
/// written stays pending (a failed sync poisons the engine, which stops all of this).
pub(crate) fn write_pending_hints(inner: &Inner) -> Result<()> {
    let _one_at_a_time = inner.merge_lock.lock();
    inner.group.check()?;
    let pending: Vec<u32> = std::mem::take(&mut *inner.pending_hints.lock());
    let mut left = pending.iter();
    let result = write_hints(inner, &mut left);
    inner.pending_hints.lock().extend(left);
    result
}

fn write_hints(inner: &Inner, ids: &mut std::slice::Iter<'_, u32>) -> Result<()> {
    while let Some(&id) = ids.as_slice().first() {
        let Some(seg) = inner.state.read().segments.get(&id).cloned() else {
            ids.next();
            continue; // merged away already
        };
        let data = seg.read_all()?;
        let mode = if inner.options.skip_damaged {
            ScanMode::SkipDamaged
        } else {
            ScanMode::Strict
        };
        let scanned = segment::scan(&data, &seg.name(), mode)?;
        debug_assert!(data.len() >= SEGMENT_HEADER_BYTES);
        let entries = HintEntry::from_scan(&data, &scanned.records);
        hint::write(&*inner.io, &inner.dir, id, &entries)?;
        ids.next();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_file_round_trips_and_rejects_damage() {
        let b = encode_commit(&[1, 2, 3], &[9]);
        assert_eq!(decode_commit(&b), Some((vec![1, 2, 3], vec![9])));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert_eq!(decode_commit(&bad), None);
        }
    }
}
