//! A failed fsync poisons the engine, on every path that syncs: the write in hand and every
//! later one fail, nothing more is acknowledged, a write whose sync failed is never visible,
//! reads keep working, and a reopen recovers every acknowledged write from the disk.

use std::path::Path;
use std::sync::Arc;

use cairn_storage::io::sim::{Fault, Op, PowerCut, SimIo};
use cairn_storage::{Engine, Error, Options, SyncPolicy};

const DIR: &str = "/sim/poison";

fn options() -> Options {
    Options {
        sync: SyncPolicy::Always,
        segment_bytes_max: 4096,
        merge_background: false,
        merge_dead_ratio_min: 0.0,
        ..Options::default()
    }
}

fn open(io: &SimIo) -> Engine {
    Engine::open_with_io(Path::new(DIR), options(), Arc::new(io.clone())).unwrap()
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(200)).into_bytes()
}

/// Writes keys `from..to`, all acknowledged.
fn fill(engine: &Engine, from: u64, to: u64) {
    for i in from..to {
        engine.put(format!("k{i}").as_bytes(), &value(i)).unwrap();
    }
}

/// The engine refuses writes, still serves reads of `0..acked`, and a reopen on the disk a
/// power cut would leave now has every acknowledged key.
fn assert_poisoned(engine: Engine, io: &SimIo, acked: u64) {
    assert!(
        matches!(engine.put(b"after", b"x"), Err(Error::Poisoned(_))),
        "the engine still takes writes"
    );
    assert!(matches!(engine.sync(), Err(Error::Poisoned(_))));
    assert_eq!(engine.get(b"after").unwrap(), None);
    for i in 0..acked {
        assert_eq!(
            engine.get(format!("k{i}").as_bytes()).unwrap(),
            Some(value(i).into())
        );
    }
    drop(engine);
    let engine = open(&io.crash_image(PowerCut::DropUnsynced));
    for i in 0..acked {
        assert_eq!(
            engine.get(format!("k{i}").as_bytes()).unwrap(),
            Some(value(i).into()),
            "acknowledged k{i} lost"
        );
    }
    engine.put(b"again", b"1").unwrap();
}

/// Puts until the engine reports poisoned (bounded), for faults that fire in the background.
fn put_until_poisoned(engine: &Engine, from: u64) -> u64 {
    for i in from..from + 10_000 {
        match engine.put(format!("k{i}").as_bytes(), &value(i)) {
            Ok(()) => {}
            Err(Error::Poisoned(_)) => return i,
            Err(e) => panic!("unexpected error {e}"),
        }
        if i % 50 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    panic!("the engine was never poisoned");
}

#[test]
fn failed_group_commit_fsync_poisons_and_the_write_stays_invisible() {
    let io = SimIo::new(1);
    let engine = open(&io);
    fill(&engine, 0, 5);
    io.inject(Fault::fail(Op::SyncData));
    assert!(matches!(
        engine.put(b"during", b"2"),
        Err(Error::Poisoned(_))
    ));
    // The disk "recovered", but the engine must not pretend nothing happened, nor show the
    // write it never acknowledged.
    assert_eq!(engine.get(b"during").unwrap(), None);
    assert!(matches!(engine.merge(), Err(Error::Poisoned(_))));
    assert_poisoned(engine, &io, 5);
}

#[test]
fn failed_sync_of_a_new_segment_at_rotation_poisons() {
    let io = SimIo::new(2);
    let engine = open(&io);
    fill(&engine, 0, 3);
    // Segment 1 is the first; rotation creates segment 2.
    io.inject(Fault::fail(Op::SyncData).on_path("0000000002.seg"));
    let stopped = put_until_poisoned(&engine, 3);
    assert_poisoned(engine, &io, stopped);
}

#[test]
fn failed_directory_fsync_poisons() {
    let io = SimIo::new(3);
    let engine = open(&io);
    fill(&engine, 0, 3);
    // The next directory fsync: a segment creation at rotation or a hint file's rename.
    io.inject(Fault::fail(Op::SyncDir));
    let stopped = put_until_poisoned(&engine, 3);
    assert_poisoned(engine, &io, stopped);
}

#[test]
fn failed_hint_file_fsync_poisons() {
    let io = SimIo::new(4);
    let engine = open(&io);
    io.inject(Fault::fail(Op::SyncData).on_path(".hint.tmp"));
    let stopped = put_until_poisoned(&engine, 0);
    assert_poisoned(engine, &io, stopped);
}

#[test]
fn failed_fsync_of_a_merge_output_poisons() {
    let io = SimIo::new(5);
    let engine = open(&io);
    fill(&engine, 0, 60);
    fill(&engine, 0, 60); // every first version is dead now
    io.inject(Fault::fail(Op::SyncData).on_path(".seg.tmp"));
    assert!(engine.merge().is_err());
    assert_poisoned(engine, &io, 60);
}

#[test]
fn failed_fsync_of_the_merge_commit_file_poisons() {
    let io = SimIo::new(6);
    let engine = open(&io);
    fill(&engine, 0, 60);
    fill(&engine, 0, 60);
    io.inject(Fault::fail(Op::SyncData).on_path("MERGE.tmp"));
    assert!(engine.merge().is_err());
    assert_poisoned(engine, &io, 60);
}

#[test]
fn failed_rename_of_the_merge_commit_file_poisons_and_keeps_the_outputs() {
    let io = SimIo::new(7);
    let engine = open(&io);
    fill(&engine, 0, 60);
    fill(&engine, 0, 60);
    io.inject(Fault::fail(Op::Rename).on_path("MERGE.tmp"));
    assert!(engine.merge().is_err());
    assert_poisoned(engine, &io, 60);
}

/// Many writers share each fsync: when one fails, neither the writers of that group nor any
/// later one is acknowledged. (The simulated disk loses what a failed fsync should have
/// written even if a retry succeeds, as Linux does, so an engine that let a follower retry the
/// fsync and acknowledge would lose acknowledged writes here.)
#[test]
fn concurrent_writers_are_not_acknowledged_after_a_failed_group_fsync() {
    const THREADS: u64 = 4;
    let io = SimIo::new(8);
    // A slow fsync, so every group has followers; segments large enough that the failing
    // fsync is a group commit's, not a rotation's.
    io.set_sync_delay(std::time::Duration::from_millis(1));
    let options = Options {
        segment_bytes_max: 1 << 20,
        ..options()
    };
    let engine = Arc::new(
        Engine::open_with_io(Path::new(DIR), options.clone(), Arc::new(io.clone())).unwrap(),
    );
    io.inject(Fault::fail(Op::SyncData).on_path(".seg").after(30));
    let acked: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = engine.clone();
                s.spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..10_000u64 {
                        let k = t * 1_000_000 + i;
                        match engine.put(format!("k{k}").as_bytes(), &value(k)) {
                            Ok(()) => acked.push(k),
                            Err(Error::Poisoned(_)) => break,
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(io.clear_faults(), 0, "the fault never fired");
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(
        total >= 30,
        "only {total} writes acknowledged before the fault"
    );
    assert!(matches!(engine.put(b"x", b"y"), Err(Error::Poisoned(_))));
    drop(engine);
    let after = io.crash_image(PowerCut::DropUnsynced);
    let engine = Engine::open_with_io(Path::new(DIR), options, Arc::new(after)).unwrap();
    for k in acked.iter().flatten() {
        assert_eq!(
            engine.get(format!("k{k}").as_bytes()).unwrap(),
            Some(value(*k).into()),
            "acknowledged k{k} lost"
        );
    }
}
