//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_wal::io::sim::SimIo;
use cairn_wal::{Record, Wal, WalOptions};

pub const DIR: &str = "/sim/wal";

pub fn record(group: u64, index: u64) -> Record {
    let payload = format!("g{group}-i{index}-{}", "x".repeat((index % 7) as usize));
    Record {
        group,
        index,
        payload: Bytes::from(payload),
    }
}

pub fn sim_options(io: &SimIo, segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        io: Arc::new(io.clone()),
        fsync_batches: true,
        on_fsync: None,
    }
}

/// Opens the log on a simulated disk; returns it with every live entry in log order.
pub fn open_sim(io: &SimIo, segment_bytes_max: u64) -> (Wal, Vec<Record>) {
    let wal = Wal::open(DIR, sim_options(io, segment_bytes_max)).expect("open");
    let replay = wal.replay().expect("replay");
    (wal, replay)
}

/// Paths of the segment files on a simulated disk, oldest first.
pub fn segments(io: &SimIo) -> Vec<PathBuf> {
    use cairn_wal::io::Io;
    let mut names = io.list_dir(Path::new(DIR)).expect("list");
    names.retain(|n| n.ends_with(".wal"));
    names.sort();
    names.into_iter().map(|n| Path::new(DIR).join(n)).collect()
}

/// Makes the next fsync of a file or a directory fail (once).
pub fn fail_next_sync(io: &SimIo) {
    use cairn_wal::io::sim::{Action, Fault, Op};
    io.inject(Fault::new(Op::SYNCS, Action::Fail));
}

/// Opens the log on the real file system; returns it with every live entry in log order.
pub fn open_std(dir: &Path) -> (Wal, Vec<Record>) {
    let wal = Wal::open(dir, WalOptions::default()).expect("open");
    let replay = wal.replay().expect("replay");
    (wal, replay)
}

/// Purges every group through `applied(group)` (capped at its last entry), then deletes the
/// segments left without live entries: what a node does after flushing its state machines.
pub fn purge_applied(wal: &Wal, applied: impl Fn(u64) -> u64) -> cairn_wal::PurgeStats {
    let ops: Vec<cairn_wal::Op> = wal
        .groups()
        .into_iter()
        .filter_map(|group| {
            let info = wal.group(group)?;
            let upto = applied(group).min(info.last_index?);
            (upto >= info.first_index?).then(|| cairn_wal::Op::Purge {
                group,
                index: upto,
                payload: Bytes::new(),
            })
        })
        .collect();
    wal.write(ops).expect("purge records");
    wal.purge_segments().expect("purge segments")
}

/// The indexes of a group's live entries, in order.
pub fn indexes(wal: &cairn_wal::Wal, group: u64) -> Vec<u64> {
    wal.entries(group, ..)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}
