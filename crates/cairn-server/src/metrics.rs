//! Prometheus metrics shared by every front end.
//!
//! One recorder per process (no HTTP listener of its own: the HTTP front end serves
//! [`render`] at `/metrics`). Label values come from fixed sets — front-end names, and command
//! names known at compile time (anything else is counted as `unknown`) — so a client cannot
//! grow the label cardinality.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::Node;

/// Requests handled, by front end and command.
pub const REQUESTS_TOTAL: &str = "cairn_requests_total";
/// Requests that ended in an error, by front end and command.
pub const REQUEST_ERRORS_TOTAL: &str = "cairn_request_errors_total";
/// Request latency in seconds, by front end and command.
pub const REQUEST_DURATION_SECONDS: &str = "cairn_request_duration_seconds";
/// Open client connections, by front end.
pub const CONNECTIONS: &str = "cairn_connections";

/// WAL: duration of each appended frame's write and fdatasync, in seconds.
pub const WAL_FSYNC_SECONDS: &str = "cairn_wal_fsync_seconds";
/// WAL: Raft entries each fdatasync made durable.
pub const WAL_ENTRIES_PER_FSYNC: &str = "cairn_wal_entries_per_fsync";
/// WAL: distinct Raft groups each fdatasync served.
pub const WAL_GROUPS_PER_FSYNC: &str = "cairn_wal_groups_per_fsync";
/// Proposals (write commands) a shard's proposer put into log entries, by shard.
pub const SHARD_PROPOSALS_TOTAL: &str = "cairn_shard_proposals_total";
/// Log entries a shard's proposer proposed, by shard.
pub const SHARD_ENTRIES_TOTAL: &str = "cairn_shard_entries_total";

/// Leadership handovers the balancer had this node make of the groups it led, by shard
/// (`meta` for the metadata group) and outcome (`done`: asked of openraft; `refused`: the target did not hold the whole log in
/// time, or leadership moved meanwhile).
pub const SHARD_HANDOVERS_TOTAL: &str = "cairn_shard_handovers_total";
/// Steps the balancer (on the metadata leader) had carried out, by kind (`add_learner`,
/// which promotes the learner every node holds while every node holds every group;
/// `remove_voter`, `transfer_leader` …) and outcome (`done`, `refused`).
pub const BALANCE_STEPS_TOTAL: &str = "cairn_balance_steps_total";
/// Splits this node's replicas applied (each replica of a shard applies each split once).
pub const SHARD_SPLITS_APPLIED_TOTAL: &str = "cairn_shard_splits_applied_total";
/// Splits the metadata leader asked for, by reason (`request`, `size`) and outcome (`done`,
/// `refused`, `failed`).
pub const SHARD_SPLITS_TOTAL: &str = "cairn_shard_splits_total";
/// Nodes the metadata leader removed from the cluster, by reason (`left`, `replaced`).
pub const NODES_REMOVED_TOTAL: &str = "cairn_nodes_removed_total";
/// Rounds in which a group led here had a removed node among its voters (never, unless a
/// removal was decided on a stale view).
pub const REMOVED_NODES_VOTING_TOTAL: &str = "cairn_removed_nodes_voting_total";

/// Commands (parts of commands, one per shard) this node forwarded to the node leading their
/// shard, by command and shard.
pub const FORWARDED_TOTAL: &str = "cairn_forwarded_total";
/// Gauge: watches open, by front end.
pub const WATCHERS: &str = "cairn_watchers";
/// Counter: change events sent to watches, by front end.
pub const WATCH_EVENTS_TOTAL: &str = "cairn_watch_events_total";
/// Counter: watches the server ended, by reason (`stalled`, `compacted`, `out_of_touch`).
pub const WATCHERS_DROPPED_TOTAL: &str = "cairn_watchers_dropped_total";
/// Gauge: shards whose replicas on this node are out of touch with their groups (see
/// `Node::out_of_touch`).
pub const SHARDS_OUT_OF_TOUCH: &str = "cairn_shards_out_of_touch";
/// Gauge: shards whose change feed this node follows on another node (see `node/follow`).
pub const FOLLOWED_FEEDS: &str = "cairn_followed_feeds";

/// Buckets for counts per fsync (1 … 4096).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Latency histogram buckets, in seconds (50 µs … 5 s).
const DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Command names accepted as label values besides the RESP command table.
const NODE_COMMANDS: &[&str] = &[
    "get",
    "mget",
    "strlen",
    "getrange",
    "getbit",
    "lcs",
    "bitcount",
    "bitpos",
    "exists",
    "type",
    "ttl",
    "keys",
    "scan",
    "scan_range",
    "randomkey",
    "dbsize",
    "cluster_status",
    "shard_stats",
    "set",
    "getdel",
    "getex",
    "mset",
    "append",
    "setrange",
    "setbit",
    "incrby",
    "incrbyfloat",
    "del",
    "expire",
    "persist",
    "rename",
    "copy",
    "flush",
    "batch",
    "put",
    "delete",
    "status",
    "health",
    "ready",
    "metrics",
    "openapi",
    "list",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let histograms = [
            (REQUEST_DURATION_SECONDS, DURATION_BUCKETS),
            (WAL_FSYNC_SECONDS, DURATION_BUCKETS),
            (WAL_ENTRIES_PER_FSYNC, COUNT_BUCKETS),
            (WAL_GROUPS_PER_FSYNC, COUNT_BUCKETS),
        ];
        let recorder = histograms
            .into_iter()
            .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            })
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; Cairn's metrics will be empty"
            );
        }
        handle
    })
}

/// The WAL's fsync observer: latency, entries and groups of every fdatasync.
pub fn wal_fsync_observer() -> cairn_wal::FsyncObserver {
    let latency = metrics::histogram!(WAL_FSYNC_SECONDS);
    let entries = metrics::histogram!(WAL_ENTRIES_PER_FSYNC);
    let groups = metrics::histogram!(WAL_GROUPS_PER_FSYNC);
    std::sync::Arc::new(move |report: cairn_wal::FsyncReport| {
        latency.record(report.elapsed.as_secs_f64());
        entries.record(report.entries as f64);
        groups.record(report.groups as f64);
    })
}

/// Install the recorder (idempotent).
pub fn init() {
    handle();
}

/// The bounded label value for `command`.
fn command_label(command: &str) -> &'static str {
    if let Some(spec) = crate::resp::table::lookup_bytes(command.as_bytes()) {
        return spec.name;
    }
    if let Some(spec) = crate::resp::table::SUBCOMMANDS
        .iter()
        .find(|s| s.name == command)
    {
        return spec.name;
    }
    NODE_COMMANDS
        .iter()
        .copied()
        .find(|c| *c == command)
        .unwrap_or("unknown")
}

/// Record one request: count, error count and latency.
pub fn observe(frontend: &'static str, command: &str, elapsed: Duration, ok: bool) {
    let command = command_label(command);
    let labels = [("frontend", frontend), ("command", command)];
    metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
    if !ok {
        metrics::counter!(REQUEST_ERRORS_TOTAL, &labels).increment(1);
    }
    metrics::histogram!(REQUEST_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());
}

/// Metric handles of one (front end, command) pair.
#[derive(Clone)]
struct CommandMetrics {
    requests: metrics::Counter,
    errors: metrics::Counter,
    duration: metrics::Histogram,
}

/// [`observe`] with a cache of metric handles, for a connection's hot path: the label set of a
/// command is built once per connection instead of once per request.
pub struct Observer {
    frontend: &'static str,
    cache: std::collections::HashMap<&'static str, CommandMetrics>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("frontend", &self.frontend)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Observer {
    pub fn new(frontend: &'static str) -> Observer {
        Observer {
            frontend,
            cache: std::collections::HashMap::new(),
        }
    }

    /// Record one request, as [`observe`].
    pub fn observe(&mut self, command: &str, elapsed: Duration, ok: bool) {
        let command = command_label(command);
        let frontend = self.frontend;
        let handles = self.cache.entry(command).or_insert_with(|| {
            let labels = [("frontend", frontend), ("command", command)];
            CommandMetrics {
                requests: metrics::counter!(REQUESTS_TOTAL, &labels),
                errors: metrics::counter!(REQUEST_ERRORS_TOTAL, &labels),
                duration: metrics::histogram!(REQUEST_DURATION_SECONDS, &labels),
            }
        });
        handles.requests.increment(1);
        if !ok {
            handles.errors.increment(1);
        }
        handles.duration.record(elapsed.as_secs_f64());
    }
}

/// One command's part for `shard` forwarded to the shard's leader on another node.
pub fn forwarded(command: &str, shard: u32) {
    metrics::counter!(
        FORWARDED_TOTAL,
        "command" => command_label(command),
        "shard" => shard.to_string()
    )
    .increment(1);
}

/// A watch started (`delta` = 1) or ended (`delta` = -1) on `frontend`.
pub fn watchers(frontend: &'static str, delta: f64) {
    metrics::gauge!(WATCHERS, "frontend" => frontend).increment(delta);
}

/// The count of change events sent to watchers of `frontend` (a watch stream holds it).
pub fn watch_events(frontend: &'static str) -> metrics::Counter {
    metrics::counter!(WATCH_EVENTS_TOTAL, "frontend" => frontend)
}

/// Shards out of touch with their groups on this node, now.
pub fn shards_out_of_touch(count: usize) {
    metrics::gauge!(SHARDS_OUT_OF_TOUCH).set(count as f64);
}

/// How many shards' feeds this node follows now.
pub fn followed_feeds(count: usize) {
    metrics::gauge!(FOLLOWED_FEEDS).set(count as f64);
}

/// A watch ended by the server: `stalled` (its client did not read), `compacted` (the
/// history it needed was gone) or `out_of_touch` (this node's replica lost its group).
pub fn watcher_dropped(reason: &'static str) {
    metrics::counter!(WATCHERS_DROPPED_TOTAL, "reason" => reason).increment(1);
}

/// A client connection opened (`delta` = 1) or closed (`delta` = -1).
pub fn connections(frontend: &'static str, delta: f64) {
    metrics::gauge!(CONNECTIONS, "frontend" => frontend).increment(delta);
}

/// Prometheus text exposition, with per-shard storage gauges refreshed now.
pub fn render(node: &Node) -> String {
    let handle = handle();
    for s in node.shard_stats() {
        let shard = s.shard.to_string();
        let gauges: [(&'static str, u64); 11] = [
            ("cairn_shard_live_keys", s.live_keys),
            ("cairn_shard_segments", s.segments),
            ("cairn_shard_disk_bytes", s.disk_bytes),
            ("cairn_shard_dead_bytes", s.dead_bytes),
            ("cairn_shard_writes", s.writes),
            ("cairn_shard_syncs", s.syncs),
            ("cairn_shard_cache_hits", s.cache_hits),
            ("cairn_shard_cache_misses", s.cache_misses),
            ("cairn_shard_merges", s.merges),
            ("cairn_shard_last_applied_index", s.last_applied),
            ("cairn_shard_expiring_keys", s.expiring_keys),
        ];
        for (name, value) in gauges {
            metrics::gauge!(name, "shard" => shard.clone()).set(value as f64);
        }
        let r = &s.raft;
        let raft: [(&'static str, u64); 7] = [
            ("cairn_shard_raft_term", r.term),
            ("cairn_shard_raft_leader", u64::from(r.leader)),
            ("cairn_shard_raft_last_log_index", r.last_log_index),
            ("cairn_shard_raft_committed_index", r.committed),
            ("cairn_shard_raft_applied_index", r.applied),
            ("cairn_shard_raft_snapshot_index", r.snapshot),
            ("cairn_shard_raft_purged_index", r.purged),
        ];
        for (name, value) in raft {
            metrics::gauge!(name, "shard" => shard.clone()).set(value as f64);
        }
        metrics::counter!("cairn_shard_raft_leader_changes_total", "shard" => shard.clone())
            .absolute(r.leader_changes);
    }
    metrics::gauge!("cairn_write_path_failed").set(if node.failure().is_some() {
        1.0
    } else {
        0.0
    });
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_are_bounded() {
        assert_eq!(command_label("get"), "get");
        assert_eq!(command_label("client|setname"), "client|setname");
        assert_eq!(command_label("scan_range"), "scan_range");
        assert_eq!(command_label("no-such-command-xyz"), "unknown");
    }
}
