//! Torn tails at every byte offset are repaired; bit flips in acknowledged data are reported
//! with the file and offset.

use cairn_wal::io::sim::SimIo;
use cairn_wal::{Record, WalError};

use crate::support::{DIR, open_sim, record, segments, sim_options};

/// A log of `batches` appends of two records each, in one segment. Returns the disk, the
/// records, and the byte length of the segment after each batch.
fn one_segment_log(batches: u64) -> (SimIo, Vec<Vec<Record>>, Vec<usize>) {
    let io = SimIo::new();
    let (wal, _) = open_sim(&io, 1 << 20);
    let mut appended = Vec::new();
    let mut ends = vec![io.file_bytes(&segments(&io)[0]).unwrap().len()];
    for i in 1..=batches {
        let batch = vec![record(1, i), record(2, i)];
        wal.append(&batch).unwrap();
        appended.push(batch);
        ends.push(io.file_bytes(&segments(&io)[0]).unwrap().len());
    }
    (io, appended, ends)
}

#[test]
fn torn_tail_at_every_byte_offset() {
    let (io, appended, ends) = one_segment_log(4);
    let path = segments(&io)[0].clone();
    let full = io.file_bytes(&path).unwrap();
    for cut in 0..full.len() {
        let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
        disk.set_file_bytes(&path, full[..cut].to_vec());
        let (wal, replay) = open_sim(&disk, 1 << 20);
        let whole_batches = ends.iter().skip(1).filter(|&&end| end <= cut).count();
        let expected: Vec<Record> = appended[..whole_batches].concat();
        assert_eq!(replay, expected, "cut at {cut}");
        // The torn bytes are gone and the log accepts appends after the repair.
        wal.append(&[record(3, 1)]).unwrap();
        drop(wal);
        let (_, replay) = open_sim(&disk, 1 << 20);
        assert_eq!(replay.len(), expected.len() + 1, "cut at {cut}");
    }
}

#[test]
fn garbage_tail_is_truncated() {
    let (io, appended, _) = one_segment_log(3);
    let path = segments(&io)[0].clone();
    for garbage in [
        vec![0u8; 100],
        vec![0xFF; 7],
        b"WALF\x01\0\0\0garbage garbage garbage".to_vec(),
    ] {
        let mut bytes = io.file_bytes(&path).unwrap();
        bytes.extend_from_slice(&garbage);
        let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
        disk.set_file_bytes(&path, bytes);
        let (_, replay) = open_sim(&disk, 1 << 20);
        assert_eq!(replay, appended.concat());
    }
}

#[test]
fn bit_flip_followed_by_valid_frames_is_corruption() {
    let (io, _, ends) = one_segment_log(4);
    let path = segments(&io)[0].clone();
    let full = io.file_bytes(&path).unwrap();
    // Every byte of every batch but the last: a later valid frame proves it was acknowledged.
    for offset in ends[0]..ends[3] {
        let mut damaged = full.clone();
        damaged[offset] ^= 0x10;
        let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
        disk.set_file_bytes(&path, damaged);
        let err = cairn_wal::Wal::open(DIR, sim_options(&disk, 1 << 20)).unwrap_err();
        let WalError::Corruption {
            path: bad,
            offset: at,
            ..
        } = &err
        else {
            panic!("offset {offset}: {err}")
        };
        assert_eq!(bad, &path);
        let frame_start = *ends.iter().rev().find(|&&end| end <= offset).unwrap() as u64;
        assert_eq!(*at, frame_start, "flip at {offset}: {err}");
    }
}

#[test]
fn bit_flips_in_sealed_segments_are_corruption() {
    let io = SimIo::new();
    let (wal, _) = open_sim(&io, 4096);
    for i in 1..=100 {
        wal.append(&[record(1, i)]).unwrap();
    }
    drop(wal);
    let files = segments(&io);
    assert!(files.len() >= 2);
    let first = files[0].clone();
    let bytes = io.file_bytes(&first).unwrap();
    // Every byte: header, frames, records and the seal.
    for offset in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x01;
        let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
        disk.set_file_bytes(&first, damaged);
        match cairn_wal::Wal::open(DIR, sim_options(&disk, 4096)) {
            Err(WalError::Corruption { path, .. }) => assert_eq!(path, first),
            Err(other) => panic!("flip at {offset}: unexpected {other}"),
            Ok(_) => panic!("flip at {offset} went unnoticed"),
        }
    }
    // A sealed segment cut short is corruption too, not a torn tail.
    let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
    disk.set_file_bytes(&first, bytes[..bytes.len() - 1].to_vec());
    assert!(matches!(
        cairn_wal::Wal::open(DIR, sim_options(&disk, 4096)),
        Err(WalError::Corruption { .. })
    ));
}

#[test]
fn torn_header_of_a_new_segment_is_repaired() {
    let io = SimIo::new();
    let (wal, _) = open_sim(&io, 4096);
    for i in 1..=50 {
        wal.append(&[record(1, i)]).unwrap();
    }
    drop(wal);
    let files = segments(&io);
    let newest = files.last().unwrap().clone();
    // Keep only the first bytes of the newest segment's header.
    let expected_before: usize = {
        let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
        disk.set_file_bytes(&newest, Vec::new());
        let (_, replay) = open_sim(&disk, 4096);
        replay.len()
    };
    for cut in [0, 5, 23] {
        let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
        disk.set_file_bytes(&newest, io.file_bytes(&newest).unwrap()[..cut].to_vec());
        let (wal, replay) = open_sim(&disk, 4096);
        assert_eq!(replay.len(), expected_before);
        wal.append(&[record(1, 999)]).unwrap();
    }
}

#[test]
fn unknown_format_version_is_refused_not_repaired() {
    let (io, _, _) = one_segment_log(2);
    let path = segments(&io)[0].clone();
    let mut bytes = io.file_bytes(&path).unwrap();
    bytes[8] = 99; // format version
    let crc = crc32c::crc32c(&bytes[0..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    let disk = io.power_cut(cairn_wal::io::sim::PowerCut::DropUnsynced);
    disk.set_file_bytes(&path, bytes.clone());
    let err = cairn_wal::Wal::open(DIR, sim_options(&disk, 1 << 20)).unwrap_err();
    assert!(
        matches!(&err, WalError::Corruption { offset: 0, reason, .. } if reason.contains("version 99")),
        "{err}"
    );
    assert_eq!(
        disk.file_bytes(&path).unwrap(),
        bytes,
        "the file must be left untouched"
    );
}
