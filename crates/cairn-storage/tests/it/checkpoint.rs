//! Checkpoints: what a checkpoint holds, that it is durable and stays readable under merge,
//! and that the receiving side rebuilds the same engine (keys, marker and system table) and
//! refuses anything damaged.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cairn_storage::checkpoint::{FileInfo, Receiver};
use cairn_storage::io::sim::{PowerCut, SimIo};
use cairn_storage::io::{Io, StdIo};
use cairn_storage::{Checkpoint, Engine, Entry, Error, Options, WriteBatch};
use rand::{Rng, SeedableRng};

use crate::support::small_options;

/// Everything a reader can see: keys, values, versions and deadlines, in key order.
fn contents(engine: &Engine) -> Vec<Entry> {
    engine
        .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap()
}

/// The system table and the system version.
fn system(engine: &Engine) -> (Vec<(Bytes, Bytes)>, u64) {
    (
        engine.system_range(Bound::Unbounded, Bound::Unbounded, usize::MAX),
        engine.system_version(),
    )
}

/// Versioned batches (as a replication layer writes them): puts, overwrites, deletes, far
/// deadlines, system puts and deletes, each batch with a marker naming its version.
fn write_batches(engine: &Engine, rng: &mut impl Rng, from: u64, to: u64) {
    for version in from..to {
        let mut batch = WriteBatch::new();
        batch.set_version(version);
        for _ in 0..rng.random_range(1..4) {
            let key = format!("key-{:03}", rng.random_range(0..150u32));
            match rng.random_range(0..10) {
                0 => {
                    batch.delete(key.as_bytes());
                }
                1 => {
                    batch.put_with_expiry(key.as_bytes(), b"expiring", Some(4_000_000_000_000));
                }
                _ => {
                    let value = vec![b'v'; rng.random_range(0..200)];
                    batch.put(key.as_bytes(), &value);
                }
            }
        }
        let lock = format!("lock/key-{:03}", rng.random_range(0..30u32));
        match rng.random_range(0..4) {
            0 => {
                batch.put_system(lock.as_bytes(), format!("txn-{version}").as_bytes());
            }
            1 => {
                batch.delete_system(lock.as_bytes());
            }
            _ => {}
        }
        batch.set_last_applied(format!("applied-{version}").as_bytes());
        engine.write(batch).unwrap();
    }
}

/// Streams `checkpoint` into a receiver in chunks of random sizes.
fn transfer(
    checkpoint: &Checkpoint,
    io: Arc<dyn Io>,
    dir: &Path,
    rng: &mut impl Rng,
) -> Result<(), Error> {
    let files = checkpoint.files();
    let mut rx = Receiver::create(
        io,
        dir,
        files.clone(),
        checkpoint.last_sequence(),
        Options::default().value_bytes_max,
    )?;
    for (index, info) in files.iter().enumerate() {
        let mut offset = 0;
        while offset < info.len {
            let n = rng.random_range(1..=700u64).min(info.len - offset);
            let mut buf = vec![0; n as usize];
            checkpoint.read_at(index, offset, &mut buf)?;
            rx.write(index, offset, &buf)?;
            offset += n;
        }
    }
    rx.finish().map(|_| ())
}

#[test]
fn a_received_checkpoint_opens_as_the_same_engine() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let src = tempfile::tempdir().unwrap();
    let engine = Engine::open(src.path(), small_options()).unwrap();
    write_batches(&engine, &mut rng, 1, 400);
    // Let merge rewrite some segments before the checkpoint, so it holds merge output too.
    engine.merge().unwrap();
    write_batches(&engine, &mut rng, 400, 600);
    let checkpoint = engine.checkpoint().unwrap();
    let expected = contents(&engine);
    let expected_system = system(&engine);
    assert!(expected_system.0.len() > 5, "{expected_system:?}");
    assert_eq!(
        checkpoint.marker().map(|m| m.to_vec()),
        Some(b"applied-599".to_vec())
    );
    assert_eq!(checkpoint.last_sequence(), 599);
    let names: Vec<String> = checkpoint.files().into_iter().map(|f| f.name).collect();
    assert!(names.len() > 3, "small segments make many files: {names:?}");

    // Writes and a merge after the checkpoint neither show in it nor break it, though merge
    // removes segment files the checkpoint holds.
    write_batches(&engine, &mut rng, 600, 900);
    assert!(engine.merge().unwrap() > 0);
    assert_ne!(
        system(&engine),
        expected_system,
        "the system table moved on"
    );
    let gone = names
        .iter()
        .filter(|n| !src.path().join(n).exists())
        .count();
    assert!(gone > 0, "merge removed none of the checkpoint's files");

    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("copy");
    transfer(&checkpoint, Arc::new(StdIo), &copy, &mut rng).unwrap();
    let received = Engine::open(&copy, small_options()).unwrap();
    assert_eq!(contents(&received), expected);
    assert_eq!(system(&received), expected_system);
    assert_eq!(received.last_applied().unwrap().as_ref(), b"applied-599");
    assert_eq!(received.last_sequence(), 599);
    // The copy is a working engine: it takes the next version.
    let mut batch = WriteBatch::new();
    batch.set_version(600).put(b"after", b"x");
    received.write(batch).unwrap();
}

#[test]
fn hints_travel_with_their_segments() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let src = tempfile::tempdir().unwrap();
    let engine = Engine::open(src.path(), small_options()).unwrap();
    write_batches(&engine, &mut rng, 1, 300);
    // The background thread writes hints for sealed segments; wait until one is there.
    let checkpoint = loop {
        let checkpoint = engine.checkpoint().unwrap();
        if checkpoint.files().iter().any(|f| f.name.ends_with(".hint")) {
            break checkpoint;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let expected = contents(&engine);
    let expected_system = system(&engine);
    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("copy");
    transfer(&checkpoint, Arc::new(StdIo), &copy, &mut rng).unwrap();
    assert!(
        std::fs::read_dir(&copy).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".hint"))
    );
    let received = Engine::open(&copy, small_options()).unwrap();
    assert_eq!(contents(&received), expected);
    assert_eq!(system(&received), expected_system);
}

#[test]
fn a_checkpoint_is_durable_when_it_returns() {
    let io = SimIo::new(21);
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let dir = Path::new("/engine");
    // `SyncPolicy::Never`: nothing is fsynced on the write path; the checkpoint must do it.
    let options = Options {
        segment_bytes_max: 1 << 20,
        ..small_options()
    };
    let engine = Engine::open_with_io(dir, options.clone(), Arc::new(io.clone())).unwrap();
    write_batches(&engine, &mut rng, 1, 200);
    let checkpoint = engine.checkpoint().unwrap();
    let expected = contents(&engine);
    let expected_system = system(&engine);
    let image = io.crash_image(PowerCut::DropUnsynced);
    drop(engine);
    let reopened = Engine::open_with_io(dir, options, Arc::new(image)).unwrap();
    assert_eq!(contents(&reopened), expected);
    assert_eq!(system(&reopened), expected_system);
    assert_eq!(
        reopened.last_applied().as_ref(),
        checkpoint.marker(),
        "the marker the checkpoint reported survives"
    );
}

#[test]
fn an_empty_engine_checkpoints_to_nothing_and_an_idle_one_seals_nothing_new() {
    let src = tempfile::tempdir().unwrap();
    let engine = Engine::open(src.path(), small_options()).unwrap();
    let empty = engine.checkpoint().unwrap();
    assert!(empty.files().is_empty());
    assert!(empty.marker().is_none());
    engine.put(b"k", b"v").unwrap();
    // Segments only: the hint of the sealed segment is written in the background and joins
    // whichever checkpoint comes after it.
    let segments = |c: &Checkpoint| -> Vec<FileInfo> {
        c.files()
            .into_iter()
            .filter(|f| f.name.ends_with(".seg"))
            .collect()
    };
    let first = segments(&engine.checkpoint().unwrap());
    let again = segments(&engine.checkpoint().unwrap());
    assert_eq!(first, again, "nothing written, nothing sealed");
    assert_eq!(first.len(), 1, "the one write's segment was sealed");
    assert_eq!(engine.stats().segments, first.len() as u64 + 1);
}

/// The last sequence of [`sample`]'s checkpoint.
const SAMPLE_LAST: u64 = 39;

/// A checkpoint to tamper with, as bytes per file.
fn sample() -> (Vec<FileInfo>, Vec<Vec<u8>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let src = tempfile::tempdir().unwrap();
    let engine = Engine::open(src.path(), small_options()).unwrap();
    write_batches(&engine, &mut rng, 1, 40);
    let checkpoint = engine.checkpoint().unwrap();
    assert_eq!(checkpoint.last_sequence(), SAMPLE_LAST);
    let files = checkpoint.files();
    let data = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut buf = vec![0; f.len as usize];
            checkpoint.read_at(i, 0, &mut buf).unwrap();
            buf
        })
        .collect();
    (files, data)
}

fn receive(files: &[FileInfo], data: &[Vec<u8>], chunk: usize) -> Result<(), Error> {
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Receiver::create(
        Arc::new(StdIo),
        &dst.path().join("copy"),
        files.to_vec(),
        SAMPLE_LAST,
        Options::default().value_bytes_max,
    )?;
    for (index, bytes) in data.iter().enumerate() {
        for (n, piece) in bytes.chunks(chunk).enumerate() {
            rx.write(index, (n * chunk) as u64, piece)?;
        }
    }
    rx.finish().map(|_| ())
}

#[test]
fn every_damaged_byte_is_refused() {
    let (files, data) = sample();
    receive(&files, &data, 100).unwrap();
    let segment = files.iter().position(|f| f.name.ends_with(".seg")).unwrap();
    // Bytes 16..24 are the segment's base sequence, which no checksum covers: a flip that
    // keeps it at or below the sender's last sequence changes nothing the engine can get
    // wrong (it is only a floor), and one that raises it past is refused (tested above).
    for at in (0..data[segment].len()).filter(|at| !(16..24).contains(at)) {
        let mut bad = data.clone();
        bad[segment][at] ^= 0x10;
        let err = receive(&files, &bad, 100).expect_err(&format!("flip at {at} accepted"));
        assert!(
            matches!(err, Error::Corruption { .. }),
            "flip at {at}: {err}"
        );
    }
}

#[test]
fn a_sequence_past_the_senders_is_refused() {
    let (files, data) = sample();
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Receiver::create(
        Arc::new(StdIo),
        &dst.path().join("copy"),
        files.clone(),
        SAMPLE_LAST - 1,
        usize::MAX,
    )
    .unwrap();
    let fed = data
        .iter()
        .enumerate()
        .try_for_each(|(index, bytes)| rx.write(index, 0, bytes));
    let err = fed.expect_err("a record with version 39 passed a bound of 38");
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
}

#[test]
fn truncated_reordered_or_misnamed_transfers_are_refused() {
    let (files, data) = sample();
    // The stream stops early: inside a file, or before the last file.
    let mut short = files.clone();
    short[0].len -= 1;
    let mut cut = data.clone();
    cut[0].pop();
    assert!(
        receive(&short, &cut, 64).is_err(),
        "segment cut inside a record"
    );
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Receiver::create(
        Arc::new(StdIo),
        &dst.path().join("copy"),
        files.clone(),
        SAMPLE_LAST,
        usize::MAX,
    )
    .unwrap();
    rx.write(0, 0, &data[0]).unwrap();
    assert!(rx.finish().is_err(), "files missing at the end");

    // Chunks out of order: a gap, an overlap, a file skipped, bytes past the declared length.
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Receiver::create(
        Arc::new(StdIo),
        &dst.path().join("copy"),
        files.clone(),
        SAMPLE_LAST,
        usize::MAX,
    )
    .unwrap();
    rx.write(0, 0, &data[0][..50]).unwrap();
    assert!(rx.write(0, 60, &data[0][60..70]).is_err(), "gap");
    assert!(rx.write(0, 40, &data[0][40..70]).is_err(), "overlap");
    if files.len() > 2 {
        assert!(rx.write(2, 0, &data[2][..10]).is_err(), "file skipped");
    }
    let mut long = data[0][50..].to_vec();
    long.push(0);
    assert!(rx.write(0, 50, &long).is_err(), "past the declared length");

    // Names: only segments and their hints, as the engine writes them, each once.
    for name in [
        "../0000000001.seg",
        "1.seg",
        "0000000001.seg.tmp",
        "MERGE",
        "0000000099.hint",
    ] {
        let mut bad = files.clone();
        bad[0].name = name.to_string();
        assert!(
            matches!(receive(&bad, &data, 64), Err(Error::InvalidCheckpoint(_))),
            "{name} accepted"
        );
    }
    let mut twice = files.clone();
    twice.push(files[0].clone());
    let mut twice_data = data.clone();
    twice_data.push(data[0].clone());
    assert!(matches!(
        receive(&twice, &twice_data, 64),
        Err(Error::InvalidCheckpoint(_))
    ));
    // The target directory must be new.
    let dst = tempfile::tempdir().unwrap();
    assert!(matches!(
        Receiver::create(
            Arc::new(StdIo),
            dst.path(),
            files.clone(),
            SAMPLE_LAST,
            usize::MAX
        ),
        Err(Error::InvalidCheckpoint(_))
    ));
}

#[test]
fn a_received_checkpoint_survives_a_power_cut_after_finish() {
    let (files, data) = sample();
    let io = SimIo::new(41);
    let dir = Path::new("/replica/copy");
    let mut rx = Receiver::create(
        Arc::new(io.clone()),
        dir,
        files.clone(),
        SAMPLE_LAST,
        usize::MAX,
    )
    .unwrap();
    for (index, bytes) in data.iter().enumerate() {
        rx.write(index, 0, bytes).unwrap();
    }
    rx.finish().unwrap();
    // Each chunk's writeback was started as it came (so the fsync at each file's end has
    // little left to flush).
    assert_eq!(io.writebacks(), data.len() as u64);
    let image = io.crash_image(PowerCut::DropUnsynced);
    for (info, bytes) in files.iter().zip(&data) {
        assert_eq!(
            image.file_bytes(&dir.join(&info.name)).as_ref(),
            Some(bytes),
            "{} lost",
            info.name
        );
    }
}

/// An engine writes behind: its background thread starts the writeback of what was
/// appended to the active segment once a MiB has piled up, so that sealing the segment (a
/// checkpoint, a rotation) has little left to flush.
#[test]
fn an_engine_starts_the_writeback_of_what_it_appends() {
    let io = SimIo::new(43);
    let dir = Path::new("/engine");
    let options = Options {
        segment_bytes_max: 64 << 20,
        ..small_options()
    };
    let engine = Engine::open_with_io(dir, options, Arc::new(io.clone())).unwrap();
    let before = io.writebacks();
    let value = vec![b'w'; 4096];
    for i in 0..400u32 {
        engine.put(format!("key-{i}").as_bytes(), &value).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while io.writebacks() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no writeback started after 1.6 MB appended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
