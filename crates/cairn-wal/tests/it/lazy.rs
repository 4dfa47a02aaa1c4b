//! `fsync_batches: false` (Redis's `everysec`): batches complete once written; `Wal::sync`,
//! rotations and votes make them durable. A power cut loses at most a suffix of what completed
//! since the last of those, never a record in the middle and never a vote.

use std::sync::Arc;

use bytes::Bytes;
use cairn_wal::io::sim::{Action, Fault, Op as IoOp, PowerCut, SimIo};
use cairn_wal::{Op, Wal, WalOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{DIR, indexes, record};

fn lazy(io: &SimIo, segment_bytes_max: u64) -> Wal {
    Wal::open(
        DIR,
        WalOptions {
            segment_bytes_max,
            io: Arc::new(io.clone()),
            fsync_batches: false,
            on_fsync: None,
        },
    )
    .expect("open")
}

#[test]
fn batches_are_durable_only_after_a_sync_or_a_vote() {
    let io = SimIo::new(3);
    let wal = lazy(&io, 1 << 20);
    let fsyncs = wal.stats().fsyncs;
    for i in 1..=5 {
        wal.write(vec![Op::Entry(record(1, i))]).unwrap();
    }
    assert_eq!(wal.stats().fsyncs, fsyncs, "no fsync per batch");
    let lost = io.crash_image(PowerCut::DropUnsynced);
    assert!(indexes(&lazy(&lost, 1 << 20), 1).is_empty());

    wal.sync().unwrap();
    let kept = io.crash_image(PowerCut::DropUnsynced);
    assert_eq!(indexes(&lazy(&kept, 1 << 20), 1), vec![1, 2, 3, 4, 5]);

    // A vote is fsynced with its batch, and so is everything written before it.
    wal.write(vec![Op::Entry(record(1, 6))]).unwrap();
    wal.write(vec![Op::Vote {
        group: 2,
        payload: Bytes::from_static(b"term 3"),
    }])
    .unwrap();
    let image = io.crash_image(PowerCut::DropUnsynced);
    let reopened = lazy(&image, 1 << 20);
    assert_eq!(indexes(&reopened, 1), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        reopened.group(2).and_then(|g| g.vote).as_deref(),
        Some(&b"term 3"[..])
    );
}

/// Random batches, syncs and votes, the power cut inside a random call: what survives is a
/// prefix of what completed, holding everything completed before the last sync or vote that
/// returned.
#[test]
fn a_power_cut_keeps_a_prefix_and_everything_synced() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let io = SimIo::new(seed);
        let wal = lazy(&io, 8192);
        io.inject(
            Fault::new(IoOp::MUTATING, Action::PowerCut(PowerCut::Random))
                .after(rng.random_range(5..400)),
        );
        let mut completed = 0u64;
        let mut synced = 0u64;
        let mut votes = 0u64;
        loop {
            let step = rng.random_range(0..10);
            let result = if step == 0 {
                wal.sync().map(|()| synced = completed)
            } else if step == 1 {
                votes += 1;
                wal.write(vec![Op::Vote {
                    group: 1,
                    payload: Bytes::from(format!("vote {votes}")),
                }])
                .map(|()| synced = completed)
            } else {
                let next = completed + 1;
                wal.write(vec![Op::Entry(record(1, next))])
                    .map(|()| completed = next)
            };
            if result.is_err() {
                break;
            }
        }
        drop(wal);
        let image = io.after_cut().expect("the power was cut");
        let reopened = lazy(&image, 8192);
        let got = indexes(&reopened, 1);
        let expected_prefix: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(got, expected_prefix, "seed {seed}: not a prefix");
        assert!(
            got.len() as u64 >= synced,
            "seed {seed}: {} entries survive, {synced} were synced",
            got.len()
        );
        assert!(
            got.len() as u64 <= completed + 1,
            "seed {seed}: more than was written"
        );
    }
}

/// Unsynced frames persisted out of order (sectors of the tail kept at random): the log opens
/// on a prefix, never refusing the damaged frame as corruption because a valid one follows.
#[test]
fn frames_persisted_out_of_order_open_as_a_prefix() {
    for seed in 0..200u64 {
        let io = SimIo::new(seed);
        let wal = lazy(&io, 1 << 20);
        for i in 1..=4 {
            wal.write(vec![Op::Entry(record(1, i))]).unwrap();
        }
        wal.sync().unwrap();
        for i in 5..=40 {
            wal.write(vec![Op::Entry(record(1, i))]).unwrap();
        }
        let image = io.crash_image(PowerCut::KeepSectors {
            seed,
            sector_bytes: 64,
        });
        let reopened = Wal::open(
            DIR,
            WalOptions {
                segment_bytes_max: 1 << 20,
                io: Arc::new(image),
                fsync_batches: seed % 2 == 0,
                on_fsync: None,
            },
        )
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let got = indexes(&reopened, 1);
        assert!(got.len() >= 4, "seed {seed}: synced entries lost");
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "seed {seed}"
        );
    }
}
