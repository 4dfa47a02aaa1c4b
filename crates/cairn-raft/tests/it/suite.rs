//! openraft's own storage conformance suite (`Suite::test_all`), run against the real log
//! store (a group in the node's WAL) and the real state machine (a cairn-storage engine), on
//! the simulated disk and on a real directory.

use std::path::Path;
use std::sync::Arc;

use cairn_raft::{LogStore, StateMachine, TypeConfig};
use cairn_storage::io::Io;
use cairn_storage::io::sim::SimIo;
use cairn_storage::{Options, SyncPolicy};
use cairn_wal::{Wal, WalOptions};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

/// The group id the suite's log lives in (other groups may share the WAL).
const GROUP: u64 = 7;

fn engine_options() -> Options {
    Options {
        sync: SyncPolicy::Never,
        ..Options::default()
    }
}

fn build(io: Arc<dyn Io>, dir: &Path) -> (LogStore, StateMachine) {
    let wal = Wal::open(
        dir.join("wal"),
        WalOptions {
            io: io.clone(),
            segment_bytes_max: 64 * 1024,
            fsync_batches: true,
            on_fsync: None,
        },
    )
    .expect("open WAL");
    let sm = StateMachine::open(io, &dir.join("sm"), engine_options()).expect("open replica");
    (LogStore::new(Arc::new(wal), GROUP), sm)
}

struct SimBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for SimBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let io = SimIo::new(rand::random());
        let (log, sm) = build(Arc::new(io), Path::new("/sim/node"));
        Ok(((), log, sm))
    }
}

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = build(Arc::new(cairn_storage::io::StdIo), dir.path());
        Ok((dir, log, sm))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn openraft_storage_suite_on_the_simulated_disk() {
    runtime().block_on(async { Suite::test_all(SimBuilder).await.unwrap() });
}

#[test]
fn openraft_storage_suite_on_a_real_directory() {
    runtime().block_on(async { Suite::test_all(DiskBuilder).await.unwrap() });
}
