//! Damaged files: torn tails of the active segment are cut off, bit flips in sealed segments
//! are reported with file and offset (or skipped on request), damaged hint files fall back to
//! scanning, and damaged data is never returned as a value.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_storage::{Engine, Error, Options};
use rand::Rng;

use crate::support::small_options;

const KEYS: u32 = 300;
/// Sizes from the segment format (docs/design.md): segment header, record header.
const SEGMENT_HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 32;

/// End offset of every record in a segment file (key and value lengths at bytes 8..16 of each
/// record header).
fn record_ends(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at + RECORD_HEADER_BYTES <= data.len() {
        let len = |o: usize| u32::from_le_bytes(data[at + o..at + o + 4].try_into().unwrap());
        at += RECORD_HEADER_BYTES + len(8) as usize + len(12) as usize;
        ends.push(at);
    }
    ends
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

/// Writes KEYS keys once each, in order, and closes; returns the segment files by id order.
fn fill(dir: &Path, options: Options) -> Vec<PathBuf> {
    let engine = Engine::open(dir, options).unwrap();
    for i in 0..KEYS {
        engine.put(&key(i), &value(i)).unwrap();
    }
    engine.close().unwrap();
    files(dir, ".seg")
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_tail_is_truncated_and_keeps_a_prefix_of_writes() {
    let mut rng = rand::rng();
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let segs = fill(dir.path(), small_options());
        let active = segs.last().unwrap();
        let len = fs::metadata(active).unwrap().len();
        let mut data = fs::read(active).unwrap();
        // Exactly the records that no longer end inside the file are lost (one record per
        // key, in key order); garbage after the last record loses nothing.
        let ends = record_ends(&data);
        let mut lost = 0;
        let damage;
        if round % 2 == 0 {
            let cut = rng.random_range(1..(len as usize - 24).max(2));
            data.truncate(len as usize - cut);
            lost = ends.iter().filter(|&&end| end > data.len()).count();
            damage = format!("{cut} of {len} bytes cut");
        } else {
            // Garbage after the last record, as a torn sector might leave.
            let garbage: Vec<u8> = (0..rng.random_range(1..200))
                .map(|_| rng.random::<u8>())
                .collect();
            damage = format!("{len} bytes, then garbage {garbage:?}");
            data.extend(garbage);
        }
        fs::write(active, &data).unwrap();
        let engine = Engine::open(dir.path(), small_options())
            .unwrap_or_else(|e| panic!("round {round} ({damage}) in {active:?}: {e}"));
        // Keys were written in order, so what survives is a prefix.
        let present: Vec<bool> = (0..KEYS)
            .map(|i| engine.get(&key(i)).unwrap().is_some())
            .collect();
        let n = present.iter().take_while(|p| **p).count();
        assert!(
            present[n..].iter().all(|p| !p),
            "round {round}: survivors are not a prefix"
        );
        assert_eq!(
            n,
            KEYS as usize - lost,
            "round {round}: {n} of {KEYS} keys survived; the tear cut {lost} records"
        );
        for i in 0..n as u32 {
            assert_eq!(engine.get(&key(i)).unwrap().unwrap().to_vec(), value(i));
        }
        // The engine keeps working after truncation.
        engine.put(b"after", b"crash").unwrap();
        engine.close().unwrap();
        let engine = Engine::open(dir.path(), small_options()).unwrap();
        assert_eq!(
            engine.get(b"after").unwrap().as_deref(),
            Some(&b"crash"[..])
        );
    }
}

/// Flips one byte inside a record of the first sealed segment; returns (file, offset).
fn flip_sealed(dir: &Path) -> (PathBuf, u64) {
    let segs = files(dir, ".seg");
    assert!(segs.len() > 2, "need sealed segments");
    let victim = segs[0].clone();
    let mut data = fs::read(&victim).unwrap();
    let at = 24 + 32 + 3; // inside the first record's key
    data[at] ^= 0x40;
    fs::write(&victim, &data).unwrap();
    (victim, 24)
}

#[test]
fn bit_flip_in_sealed_segment_is_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_options());
    for h in files(dir.path(), ".hint") {
        fs::remove_file(h).unwrap();
    }
    let (victim, offset) = flip_sealed(dir.path());
    match Engine::open(dir.path(), small_options()) {
        Err(Error::Corruption {
            file, offset: at, ..
        }) => {
            assert!(
                file.ends_with(victim.file_name().unwrap().to_str().unwrap()),
                "{file}"
            );
            assert_eq!(at, offset);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let engine = Engine::open(
        dir.path(),
        Options {
            skip_damaged: true,
            ..small_options()
        },
    )
    .unwrap();
    assert_eq!(engine.stats().damaged_records, 1);
    let missing = (0..KEYS)
        .filter(|i| engine.get(&key(*i)).unwrap().is_none())
        .count();
    assert_eq!(missing, 1);
    for i in 0..KEYS {
        if let Some(v) = engine.get(&key(i)).unwrap() {
            assert_eq!(v.to_vec(), value(i));
        }
    }
}

#[test]
fn damaged_or_missing_hint_falls_back_to_scanning() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), small_options());
    // Reopen once so every sealed segment has a hint.
    Engine::open(dir.path(), small_options())
        .unwrap()
        .close()
        .unwrap();
    let hints = files(dir.path(), ".hint");
    assert!(hints.len() > 2);
    let mut data = fs::read(&hints[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&hints[0], &data).unwrap();
    fs::remove_file(&hints[1]).unwrap();
    let engine = Engine::open(dir.path(), small_options()).unwrap();
    for i in 0..KEYS {
        assert_eq!(engine.get(&key(i)).unwrap().unwrap().to_vec(), value(i));
    }
    assert_eq!(engine.len(), u64::from(KEYS));
}

#[test]
fn damaged_value_is_an_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    fill(
        dir.path(),
        Options {
            cache_bytes: 0,
            ..small_options()
        },
    );
    // Hints exist (so open does not read the record), then the value rots on disk.
    Engine::open(dir.path(), small_options())
        .unwrap()
        .close()
        .unwrap();
    let segs = files(dir.path(), ".seg");
    let mut data = fs::read(&segs[0]).unwrap();
    let value_byte = 24 + 32 + key(0).len() + 2;
    data[value_byte] ^= 0x08;
    fs::write(&segs[0], &data).unwrap();
    let engine = Engine::open(
        dir.path(),
        Options {
            cache_bytes: 0,
            ..small_options()
        },
    )
    .unwrap();
    assert!(matches!(engine.get(&key(0)), Err(Error::Corruption { .. })));
    assert_eq!(engine.get(&key(1)).unwrap().unwrap().to_vec(), value(1));
}

/// A power cut while the newest segment was being created can leave its name durable but its
/// header torn: shorter than a header, or a header's length of zeros or garbage (its sector
/// lost). Nothing was ever written after an unsynced header, so `open` rewrites it; a bad
/// header with records after it is corruption.
#[test]
fn torn_header_of_the_newest_segment_is_rewritten() {
    for torn in [vec![], vec![0u8; 10], vec![0u8; 24], vec![0xAB; 24]] {
        let dir = tempfile::tempdir().unwrap();
        let segs = fill(dir.path(), small_options());
        let newest = segs.last().unwrap();
        let next = newest.with_file_name(format!(
            "{:010}.seg",
            newest
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap()
                + 1
        ));
        fs::write(&next, &torn).unwrap();
        let engine = Engine::open(dir.path(), small_options()).unwrap();
        assert_eq!(engine.len(), u64::from(KEYS), "torn header {torn:?}");
        engine.put(b"after", b"repair").unwrap();
        engine.close().unwrap();
        let engine = Engine::open(dir.path(), small_options()).unwrap();
        assert_eq!(
            engine.get(b"after").unwrap().as_deref(),
            Some(&b"repair"[..])
        );
    }
    // Records after a bad header: the header had been synced, so this is damage.
    let dir = tempfile::tempdir().unwrap();
    let segs = fill(dir.path(), small_options());
    let mut data = fs::read(segs.last().unwrap()).unwrap();
    data[..SEGMENT_HEADER_BYTES].fill(0);
    fs::write(segs.last().unwrap(), &data).unwrap();
    assert!(matches!(
        Engine::open(dir.path(), small_options()),
        Err(Error::Corruption { .. })
    ));
}
