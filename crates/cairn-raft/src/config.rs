//! Raft timing for Cairn's groups.

use std::sync::Arc;

/// openraft's configuration type, as Cairn passes it around.
pub type RaftConfig = openraft::Config;

/// Heartbeat interval, ms. It sets the idle cost of a group (each leader heartbeats each
/// follower this often: 256 idle shards on 3 nodes cost 40 % of a core per node at 100 ms, 33 %
/// at 150 ms), not the failover time, which the lease and election timeout set; it must stay
/// well under the lease so that a leader's lease is renewed before it runs out.
pub const HEARTBEAT_MS: u64 = 150;
/// Election timeout range, ms. openraft also makes the upper bound the leader lease: a
/// follower that heard the leader refuses to vote for anyone else for that long, and starts an
/// election itself only after the lease *plus* its timeout (randomly in the range) of silence,
/// here 600–800 ms, four to five missed heartbeats. Failover after a leader dies therefore
/// takes about 0.6–0.8 s plus one vote round trip; the lease (the upper bound) is also how
/// long a leader serves reads on one quorum acknowledgement.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (200, 400);
/// Entries kept in the log behind a snapshot, so a follower that lags a little catches up from
/// the log instead of a snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 1000;

/// The configuration of every shard group: heartbeats every [`HEARTBEAT_MS`], elections after
/// [`ELECTION_TIMEOUT_MS`] of silence, snapshots only when the node asks (it checkpoints on its
/// own schedule), [`LOG_KEPT_BEHIND_SNAPSHOT`] entries kept behind one.
///
/// A restarted leader never restores its leadership without an election. openraft would let
/// it go on in its old term, which is unsafe here: replicas apply without fsync and the
/// committed marker is written lazily, so the restarted replica may not yet have applied (or
/// even know as committed) writes it acknowledged before the crash, and nothing in the old
/// term would make it wait for them. In a new term the leader's first entry comes after all
/// of them, and a read is served only once that entry is applied.
pub fn shard_config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_TIMEOUT_MS.0,
            election_timeout_max: ELECTION_TIMEOUT_MS.1,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT,
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .expect("a valid Raft configuration"),
    )
}
