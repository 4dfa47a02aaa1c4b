//! Torn tails at every byte offset are repaired, whether the preallocated tail survived or
//! not; bit flips and zeroed frames in acknowledged data are reported with the file and offset.

use cairn_wal::io::Io;
use cairn_wal::io::sim::{PowerCut, SimIo};
use cairn_wal::{Record, WalError};

use crate::support::{DIR, open_sim, record, segments, sim_options};

/// Segment size of [`one_segment_log`]: the whole segment is preallocated at creation.
const SEGMENT_BYTES: u64 = 64 * 1024;

/// A log of `batches` appends of two records each, in one segment. Returns the disk, the
/// records, and the end of the log (the offset of the next frame) after each batch.
fn one_segment_log(batches: u64) -> (SimIo, Vec<Vec<Record>>, Vec<usize>) {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, SEGMENT_BYTES);
    let mut appended = Vec::new();
    let mut ends = vec![wal.total_bytes() as usize];
    for i in 1..=batches {
        let batch = vec![record(1, i), record(2, i)];
        wal.append(&batch).unwrap();
        appended.push(batch);
        ends.push(wal.total_bytes() as usize);
    }
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(
        io.file_bytes(&segments(&io)[0]).unwrap().len() as u64,
        SEGMENT_BYTES,
        "the segment is preallocated"
    );
    (io, appended, ends)
}

/// Whether every byte of `path` from `from` on is zero.
fn zeros_from(disk: &SimIo, path: &std::path::Path, from: usize) -> bool {
    disk.file_bytes(path).unwrap()[from..]
        .iter()
        .all(|&b| b == 0)
}

/// A crash leaves the log cut at any byte: either the file ends there (the preallocation was
/// not durable yet) or zeros follow (the write did not land in the zero-filled tail). Both are
/// a clean end or a torn frame, never corruption.
#[test]
fn torn_tail_at_every_byte_offset() {
    let (io, appended, ends) = one_segment_log(4);
    let path = segments(&io)[0].clone();
    let full = io.file_bytes(&path).unwrap();
    let log_end = *ends.last().unwrap();
    for cut in 0..=log_end {
        for zero_tail in [false, true] {
            let mut bytes = full[..cut].to_vec();
            if zero_tail {
                bytes.resize(full.len(), 0);
            }
            let disk = io.crash_image(PowerCut::DropUnsynced);
            disk.set_file_bytes(&path, bytes);
            let (wal, replay) = open_sim(&disk, SEGMENT_BYTES);
            let whole_batches = ends.iter().skip(1).filter(|&&end| end <= cut).count();
            let expected: Vec<Record> = appended[..whole_batches].concat();
            assert_eq!(replay, expected, "cut at {cut}, zero tail {zero_tail}");
            // The torn bytes are zeros now, and the log accepts appends after the repair.
            assert!(
                cut < 24 || zeros_from(&disk, &path, ends[whole_batches]),
                "cut at {cut}"
            );
            wal.append(&[record(3, 1)]).unwrap();
            drop(wal);
            let (_, replay) = open_sim(&disk, SEGMENT_BYTES);
            assert_eq!(replay.len(), expected.len() + 1, "cut at {cut}");
            if zero_tail && cut >= 24 {
                assert_eq!(
                    disk.file_bytes(&path).unwrap().len() as u64,
                    SEGMENT_BYTES,
                    "cut at {cut}: the repair keeps the preallocated length"
                );
            }
        }
    }
}

#[test]
fn garbage_tail_is_zeroed() {
    let (io, appended, ends) = one_segment_log(3);
    let path = segments(&io)[0].clone();
    let log_end = *ends.last().unwrap();
    for garbage in [
        vec![0xFFu8; 7],
        b"WALF\x01\0\0\0garbage garbage garbage".to_vec(),
    ] {
        // Where the next frame would go, and beyond the preallocated end.
        for at in [log_end, log_end + 1000, SEGMENT_BYTES as usize] {
            let mut bytes = io.file_bytes(&path).unwrap();
            bytes.resize(bytes.len().max(at + garbage.len()), 0);
            bytes[at..at + garbage.len()].copy_from_slice(&garbage);
            let disk = io.crash_image(PowerCut::DropUnsynced);
            disk.set_file_bytes(&path, bytes);
            let (wal, replay) = open_sim(&disk, SEGMENT_BYTES);
            assert_eq!(replay, appended.concat(), "garbage at {at}");
            assert!(zeros_from(&disk, &path, log_end), "garbage at {at}");
            wal.append(&[record(3, 1)]).unwrap();
            drop(wal);
            let (_, replay) = open_sim(&disk, SEGMENT_BYTES);
            assert_eq!(replay.len(), appended.concat().len() + 1);
        }
    }
}

/// Zeros where a frame should start end the log only if nothing but zeros follows: a zeroed
/// header before valid frames is corruption; a zeroed header of the last frame, with its body
/// still there, is a torn write (its sectors landed out of order).
#[test]
fn zeroed_frame_header_is_the_end_only_before_zeros() {
    let (io, appended, ends) = one_segment_log(4);
    let path = segments(&io)[0].clone();
    let full = io.file_bytes(&path).unwrap();
    for batch in 0..4 {
        let mut damaged = full.clone();
        damaged[ends[batch]..ends[batch] + 24].fill(0);
        let disk = io.crash_image(PowerCut::DropUnsynced);
        disk.set_file_bytes(&path, damaged);
        match cairn_wal::Wal::open(DIR, sim_options(&disk, SEGMENT_BYTES)) {
            Err(WalError::Corruption { offset, .. }) if batch < 3 => {
                assert_eq!(offset, ends[batch] as u64);
            }
            Ok(wal) if batch == 3 => {
                assert_eq!(wal.replay().unwrap(), appended[..3].concat());
                assert!(zeros_from(&disk, &path, ends[3]), "the torn body is zeroed");
            }
            Err(err) => panic!("batch {batch}: {err}"),
            Ok(_) => panic!("batch {batch}: zeroed header went unnoticed"),
        }
    }
    // A whole last frame lost to zeros is indistinguishable from a write that never landed.
    let mut damaged = full.clone();
    damaged[ends[3]..ends[4]].fill(0);
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.set_file_bytes(&path, damaged);
    let (_, replay) = open_sim(&disk, SEGMENT_BYTES);
    assert_eq!(replay, appended[..3].concat());
}

/// A crash while a segment was being created or extended leaves its zero tail short (or
/// missing); the append that reaches its end extends it again.
#[test]
fn short_preallocation_is_extended_by_the_next_append() {
    let (io, appended, ends) = one_segment_log(2);
    let path = segments(&io)[0].clone();
    for tail in [0, 10, 1000] {
        let mut bytes = io.file_bytes(&path).unwrap();
        bytes.truncate(ends[2] + tail);
        let disk = io.crash_image(PowerCut::DropUnsynced);
        disk.set_file_bytes(&path, bytes);
        let (wal, replay) = open_sim(&disk, SEGMENT_BYTES);
        assert_eq!(replay, appended.concat());
        let beyond_the_tail = Record {
            group: 3,
            index: 1,
            payload: bytes::Bytes::from(vec![3u8; 2000]),
        };
        wal.append(&[beyond_the_tail]).unwrap();
        assert_eq!(
            disk.file_bytes(&path).unwrap().len() as u64,
            SEGMENT_BYTES,
            "tail {tail}"
        );
        drop(wal);
        let (_, replay) = open_sim(&disk, SEGMENT_BYTES);
        assert_eq!(replay.len(), appended.concat().len() + 1);
    }
}

/// Rotation writes the seal and trims the zero tail under one fdatasync. If that did not
/// complete, the newest segment is sealed with zeros after the seal: recovery trims it before
/// creating the successor. Anything else after a seal, or zeros after the seal of an older
/// segment, is corruption.
#[test]
fn zeros_after_a_seal_are_trimmed_only_in_the_newest_segment() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    for i in 1..=200 {
        wal.append(&[record(1, i)]).unwrap();
    }
    drop(wal);
    let files = segments(&io);
    assert!(files.len() >= 3);
    for sealed in &files[..files.len() - 1] {
        let bytes = io.file_bytes(sealed).unwrap();
        assert_eq!(&bytes[bytes.len() - 24..bytes.len() - 20], b"WALF");
        assert_eq!(
            bytes[bytes.len() - 20],
            2,
            "a sealed segment ends with its seal"
        );
    }
    let newest = files.last().unwrap();
    let second = &files[files.len() - 2];
    let sealed_bytes = io.file_bytes(second).unwrap();
    let mut with_zeros = sealed_bytes.clone();
    with_zeros.resize(sealed_bytes.len() + 500, 0);

    // As the newest segment (the crash came before its successor was created).
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.remove(newest).unwrap();
    disk.sync_dir(std::path::Path::new(DIR)).unwrap();
    let (_, expected) = open_sim(&disk.crash_image(PowerCut::DropUnsynced), 4096);
    disk.set_file_bytes(second, with_zeros.clone());
    let (wal, replay) = open_sim(&disk, 4096);
    assert_eq!(replay, expected);
    assert_eq!(disk.file_bytes(second).unwrap(), sealed_bytes, "trimmed");
    let next = expected.last().unwrap().index + 1;
    wal.append(&[record(1, next)]).unwrap();
    drop(wal);
    let (_, replay) = open_sim(&disk, 4096);
    assert_eq!(replay.last(), Some(&record(1, next)));

    // Not zeros after the seal of the newest segment.
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.remove(newest).unwrap();
    disk.sync_dir(std::path::Path::new(DIR)).unwrap();
    let mut garbage = with_zeros.clone();
    *garbage.last_mut().unwrap() = 1;
    disk.set_file_bytes(second, garbage);
    let err = cairn_wal::Wal::open(DIR, sim_options(&disk, 4096)).unwrap_err();
    assert!(
        matches!(&err, WalError::Corruption { offset, .. } if *offset == sealed_bytes.len() as u64),
        "{err}"
    );

    // An older segment with zeros after its seal.
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.set_file_bytes(second, with_zeros);
    let err = cairn_wal::Wal::open(DIR, sim_options(&disk, 4096)).unwrap_err();
    assert!(
        matches!(&err, WalError::Corruption { path, .. } if path == second),
        "{err}"
    );
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
        let disk = io.crash_image(PowerCut::DropUnsynced);
        disk.set_file_bytes(&path, damaged);
        let err = cairn_wal::Wal::open(DIR, sim_options(&disk, SEGMENT_BYTES)).unwrap_err();
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
    let io = SimIo::new(0x3a1);
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
        let disk = io.crash_image(PowerCut::DropUnsynced);
        disk.set_file_bytes(&first, damaged);
        match cairn_wal::Wal::open(DIR, sim_options(&disk, 4096)) {
            Err(WalError::Corruption { path, .. }) => assert_eq!(path, first),
            Err(other) => panic!("flip at {offset}: unexpected {other}"),
            Ok(_) => panic!("flip at {offset} went unnoticed"),
        }
    }
    // A sealed segment cut short is corruption too, not a torn tail.
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.set_file_bytes(&first, bytes[..bytes.len() - 1].to_vec());
    assert!(matches!(
        cairn_wal::Wal::open(DIR, sim_options(&disk, 4096)),
        Err(WalError::Corruption { .. })
    ));
}

#[test]
fn torn_header_of_a_new_segment_is_repaired() {
    let io = SimIo::new(0x3a1);
    let (wal, _) = open_sim(&io, 4096);
    for i in 1..=50 {
        wal.append(&[record(1, i)]).unwrap();
    }
    drop(wal);
    let files = segments(&io);
    let newest = files.last().unwrap().clone();
    // Keep only the first bytes of the newest segment's header.
    let expected_before: usize = {
        let disk = io.crash_image(PowerCut::DropUnsynced);
        disk.set_file_bytes(&newest, Vec::new());
        let (_, replay) = open_sim(&disk, 4096);
        replay.len()
    };
    for cut in [0, 5, 23] {
        let disk = io.crash_image(PowerCut::DropUnsynced);
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
    let disk = io.crash_image(PowerCut::DropUnsynced);
    disk.set_file_bytes(&path, bytes.clone());
    let err = cairn_wal::Wal::open(DIR, sim_options(&disk, SEGMENT_BYTES)).unwrap_err();
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
