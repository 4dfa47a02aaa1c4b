//! Raft timing for Cairn's groups.

use std::sync::Arc;

/// openraft's configuration type, as Cairn passes it around.
pub type RaftConfig = openraft::Config;

/// Heartbeat interval, ms.
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout range, ms: a follower that hears nothing from the leader for this long
/// (randomly in the range) starts an election.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (400, 800);
/// Entries kept in the log behind a snapshot, so a follower that lags a little catches up from
/// the log instead of a snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 1000;

/// The configuration of every shard group: heartbeats every [`HEARTBEAT_MS`], elections after
/// [`ELECTION_TIMEOUT_MS`] of silence, snapshots only when the node asks (it checkpoints on its
/// own schedule), [`LOG_KEPT_BEHIND_SNAPSHOT`] entries kept behind one.
pub fn shard_config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_TIMEOUT_MS.0,
            election_timeout_max: ELECTION_TIMEOUT_MS.1,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT,
            ..Default::default()
        }
        .validate()
        .expect("a valid Raft configuration"),
    )
}
