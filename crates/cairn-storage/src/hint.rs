//! Hint files: a sealed segment's index, so `open` never reads values.
//!
//! `<id>.hint` lists every committed record of segment `<id>` without its value, sorted by key
//! (ties in file order), so `open` can merge sorted runs instead of sorting the whole keydir.
//! A hint is written to `<id>.hint.tmp`, fsynced and renamed, so it is either whole or absent;
//! a whole-file CRC catches damage, and a damaged or missing hint falls back to scanning the
//! segment.
//!
//! Layout (little-endian): magic `CAIRNHT1` (8), segment id (4), reserved (4); then per entry:
//! kind (1), reserved (1), key length (4), value length (4), record offset (4), version (8),
//! expiry ms (8), key, and for marker and system-put entries the value (both are held in memory,
//! so `open` needs them; system deletes carry none, as tombstones); then the footer: entry count
//! (8), CRC32C of everything before the footer (4), magic `CAIRNHTE` (8).

use std::path::Path;

use crate::Result;
use crate::format::Kind;
use crate::keydir::KeyBuf;
use crate::segment::{HINT_SUFFIX, Scanned, TMP_SUFFIX, hint_name};
use cairn_io::Io;

const HINT_MAGIC: &[u8; 8] = b"CAIRNHT1";
const HINT_END_MAGIC: &[u8; 8] = b"CAIRNHTE";
const HINT_HEADER_BYTES: usize = 16;
const HINT_ENTRY_BYTES: usize = 30;
const HINT_FOOTER_BYTES: usize = 20;

/// One record as the hint file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HintEntry {
    pub kind: Kind,
    pub key: KeyBuf,
    pub value_len: u32,
    pub offset: u32,
    pub version: u64,
    pub expires_at_ms: u64,
    /// The record's value, for the kinds whose value is held in memory (markers and system
    /// puts, see [`Kind::value_in_hint`]; small, read at open); `None` for the others.
    pub value: Option<Box<[u8]>>,
}

impl HintEntry {
    /// Builds the hint entries of a scanned segment, sorted by key (stable: file order within a
    /// key).
    pub fn from_scan(data: &[u8], records: &[Scanned]) -> Vec<HintEntry> {
        let mut out: Vec<HintEntry> = records
            .iter()
            .map(|r| HintEntry {
                kind: r.header.kind,
                key: r.key(data).into(),
                value_len: r.header.value_len,
                offset: r.offset,
                version: r.header.version,
                expires_at_ms: r.header.expires_at_ms,
                value: r.header.kind.value_in_hint().then(|| r.value(data).into()),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// Encodes a hint file for segment `id`. `entries` must be sorted by key.
pub(crate) fn encode(id: u32, entries: &[HintEntry]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| HINT_ENTRY_BYTES + e.key.len()).sum();
    let mut buf = Vec::with_capacity(HINT_HEADER_BYTES + size + HINT_FOOTER_BYTES);
    buf.extend_from_slice(HINT_MAGIC);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    for e in entries {
        buf.push(e.kind as u8);
        buf.push(0);
        buf.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        buf.extend_from_slice(&e.value_len.to_le_bytes());
        buf.extend_from_slice(&e.offset.to_le_bytes());
        buf.extend_from_slice(&e.version.to_le_bytes());
        buf.extend_from_slice(&e.expires_at_ms.to_le_bytes());
        buf.extend_from_slice(&e.key);
        if let Some(v) = &e.value {
            buf.extend_from_slice(v);
        }
    }
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(HINT_END_MAGIC);
    buf
}

/// Decodes a hint file; `Err(reason)` if it is damaged in any way.
pub(crate) fn decode(id: u32, buf: &[u8]) -> Result<Vec<HintEntry>, &'static str> {
    if buf.len() < HINT_HEADER_BYTES + HINT_FOOTER_BYTES {
        return Err("too short");
    }
    let body_end = buf.len() - HINT_FOOTER_BYTES;
    let footer = &buf[body_end..];
    if &footer[12..20] != HINT_END_MAGIC || &buf[0..8] != HINT_MAGIC {
        return Err("bad magic");
    }
    let count = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&buf[..body_end]) != crc {
        return Err("crc mismatch");
    }
    if u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) != id {
        return Err("hint belongs to another segment");
    }
    if count > (body_end / HINT_ENTRY_BYTES) as u64 {
        return Err("entry count too large");
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut pos = HINT_HEADER_BYTES;
    let u32_at = |p: usize| u32::from_le_bytes(buf[p..p + 4].try_into().expect("4 bytes"));
    let u64_at = |p: usize| u64::from_le_bytes(buf[p..p + 8].try_into().expect("8 bytes"));
    for _ in 0..count {
        if pos + HINT_ENTRY_BYTES > body_end {
            return Err("truncated entry");
        }
        let Some(kind) = Kind::from_u8(buf[pos]) else {
            return Err("unknown kind");
        };
        let key_len = u32_at(pos + 2) as usize;
        let value_len = u32_at(pos + 6);
        let offset = u32_at(pos + 10);
        let version = u64_at(pos + 14);
        let expires_at_ms = u64_at(pos + 22);
        pos += HINT_ENTRY_BYTES;
        let inline_len = if kind.value_in_hint() {
            value_len as usize
        } else {
            0
        };
        if key_len > crate::KEY_BYTES_MAX || pos + key_len + inline_len > body_end {
            return Err("entry runs past end");
        }
        let key = KeyBuf::from(&buf[pos..pos + key_len]);
        pos += key_len;
        let value = kind
            .value_in_hint()
            .then(|| buf[pos..pos + inline_len].into());
        pos += inline_len;
        out.push(HintEntry {
            kind,
            key,
            value_len,
            offset,
            version,
            expires_at_ms,
            value,
        });
    }
    if pos != body_end {
        return Err("trailing bytes");
    }
    Ok(out)
}

/// Writes `<dir>/<id>.hint` atomically (tmp file, fsync, rename, directory fsync).
pub(crate) fn write(io: &dyn Io, dir: &Path, id: u32, entries: &[HintEntry]) -> Result<()> {
    let bytes = encode(id, entries);
    let final_path = dir.join(hint_name(id));
    let tmp_path = dir.join(format!("{}{TMP_SUFFIX}", hint_name(id)));
    let file = io.create(&tmp_path)?;
    file.write_all_at(&bytes, 0)?;
    file.sync_data()?;
    io.rename(&tmp_path, &final_path)?;
    io.sync_dir(dir)?;
    Ok(())
}

/// Reads `<dir>/<id>.hint`. `Ok(None)` when it is missing or damaged (logged), so the caller
/// scans the segment instead.
pub(crate) fn read(io: &dyn Io, dir: &Path, id: u32) -> Result<Option<Vec<HintEntry>>> {
    let path = dir.join(hint_name(id));
    if !io.exists(&path)? {
        return Ok(None);
    }
    let file = io.open(&path)?;
    let buf = file.read_all()?;
    match decode(id, &buf) {
        Ok(entries) => Ok(Some(entries)),
        Err(reason) => {
            tracing::warn!(file = %path.display(), reason, "damaged hint file; scanning the segment instead");
            Ok(None)
        }
    }
}

/// Whether a file name is a hint file.
#[allow(dead_code)]
pub(crate) fn is_hint(name: &str) -> bool {
    name.ends_with(HINT_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<HintEntry> {
        vec![
            HintEntry {
                kind: Kind::Marker,
                key: KeyBuf::from(&b""[..]),
                value_len: 3,
                offset: 16,
                version: 9,
                expires_at_ms: 0,
                value: Some(b"abc".to_vec().into()),
            },
            HintEntry {
                kind: Kind::Put,
                key: KeyBuf::from(&b"k"[..]),
                value_len: 10,
                offset: 100,
                version: 7,
                expires_at_ms: 55,
                value: None,
            },
            HintEntry {
                kind: Kind::SystemDelete,
                key: KeyBuf::from(&b"lock/a"[..]),
                value_len: 0,
                offset: 140,
                version: 8,
                expires_at_ms: 0,
                value: None,
            },
            HintEntry {
                kind: Kind::SystemPut,
                key: KeyBuf::from(&b"lock/b"[..]),
                value_len: 4,
                offset: 180,
                version: 9,
                expires_at_ms: 0,
                value: Some(b"txn7".to_vec().into()),
            },
        ]
    }

    #[test]
    fn round_trips() {
        let bytes = encode(3, &entries());
        assert_eq!(decode(3, &bytes).unwrap(), entries());
        assert!(decode(4, &bytes).is_err());
    }

    proptest::proptest! {
        /// Hint files are read from disk: garbage is an error, never a panic.
        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode(3, &bytes);
            // Garbage with a valid frame (magic, CRC) around it must not panic either.
            let mut framed = encode(3, &[]);
            framed.splice(16..16, bytes.iter().copied());
            let body_end = framed.len() - 20;
            let crc = crc32c::crc32c(&framed[..body_end]);
            framed[body_end + 8..body_end + 12].copy_from_slice(&crc.to_le_bytes());
            framed[body_end..body_end + 8].copy_from_slice(&(bytes.len() as u64 / 30).to_le_bytes());
            let _ = decode(3, &framed);
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = encode(3, &entries());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(decode(3, &bad).is_err(), "flip at {i} not detected");
        }
        assert!(decode(3, &bytes[..bytes.len() - 1]).is_err());
    }
}
