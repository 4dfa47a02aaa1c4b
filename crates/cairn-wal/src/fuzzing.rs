//! Fuzz body shared by the cargo-fuzz target `wal_recover` in `fuzz/` and the proptest that
//! runs it on stable Rust (`tests/it/fuzz.rs`). Not part of the API.
//!
//! Random bytes almost never form a frame with a valid CRC32C, so the body builds a real log
//! from the input, then damages one of its files as the input says (bit flip, truncation,
//! overwrite, a run of zeros as from lost sectors, appended garbage), and checks recovery: it either reports corruption or returns
//! whole batches in order, a prefix of what was appended, and accepts appends afterwards.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::io::Io;
use crate::io::sim::{PowerCut, SimIo};
use crate::{Record, Wal, WalError, WalOptions};

const FUZZ_DIR: &str = "/fuzz/wal";
const FUZZ_SEGMENT_BYTES: u64 = crate::SEGMENT_BYTES_MAX_MIN;

fn options(io: &SimIo) -> WalOptions {
    WalOptions {
        segment_bytes_max: FUZZ_SEGMENT_BYTES,
        io: Arc::new(io.clone()),
        fsync_batches: true,
        on_fsync: None,
    }
}

/// The `wal_recover` fuzz body.
pub fn wal_recover(data: &[u8]) {
    let mut input = data.iter().copied();
    let mut next = move || input.next().unwrap_or(0);

    // Phase 1: a real log.
    let io = SimIo::new(u64::from(data.len() as u32));
    let wal = Wal::open(FUZZ_DIR, options(&io)).expect("open empty");
    let mut batches: Vec<Vec<Record>> = Vec::new();
    let mut next_index = [0u64; 3];
    let batch_count = next() % 24;
    for _ in 0..u64::from(batch_count) {
        let records = 1 + u64::from(next() % 4);
        let batch: Vec<Record> = (0..records)
            .map(|_| {
                let group = usize::from(next() % 3);
                next_index[group] += 1;
                Record {
                    group: group as u64,
                    index: next_index[group],
                    payload: Bytes::from(vec![next(); usize::from(next()) * 4]),
                }
            })
            .collect();
        wal.append(&batch).expect("append");
        batches.push(batch);
    }
    drop(wal);

    // Phase 2: damage one file.
    let mut names = io.list_dir(Path::new(FUZZ_DIR)).expect("list");
    names.retain(|n| n.ends_with(".wal"));
    names.sort();
    let path = Path::new(FUZZ_DIR).join(&names[usize::from(next()) % names.len()]);
    let mut bytes = io.file_bytes(&path).expect("segment exists");
    let at = (usize::from(next()) << 8 | usize::from(next())) % (bytes.len() + 1);
    match next() % 5 {
        0 => {
            if at < bytes.len() {
                bytes[at] ^= 1 << (next() % 8);
            }
        }
        1 => bytes.truncate(at),
        2 => {
            for i in at..bytes.len().min(at + usize::from(next() % 32)) {
                bytes[i] = next();
            }
        }
        3 => {
            let end = bytes.len().min(at + usize::from(next()) * 16);
            bytes[at..end].fill(0);
        }
        _ => bytes.extend((0..next()).map(|_| next())),
    }
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.set_file_bytes(&path, bytes);

    // Phase 3: recover.
    let wal = match Wal::open(FUZZ_DIR, options(&disk)) {
        Ok(opened) => opened,
        Err(WalError::Corruption { .. }) => return,
        Err(other) => panic!("recovery failed with {other}"),
    };
    let replay = wal.replay().expect("replay after recovery");
    let mut expected = Vec::new();
    for batch in &batches {
        if expected.len() == replay.len() {
            break;
        }
        expected.extend(batch.iter().cloned());
    }
    assert_eq!(
        replay, expected,
        "replay is not a prefix of whole appended batches"
    );
    let extra = Record {
        group: 9,
        index: 1,
        payload: Bytes::from_static(b"after recovery"),
    };
    wal.append(std::slice::from_ref(&extra))
        .expect("append after recovery");
    drop(wal);
    let again = Wal::open(FUZZ_DIR, options(&disk))
        .expect("reopen after recovery")
        .replay()
        .expect("replay after reopen");
    assert_eq!(again.len(), replay.len() + 1);
    assert_eq!(again.last(), Some(&extra));
}
