//! Server configuration: command-line flags, `CAIRN_*` environment variables and an optional
//! TOML file, with the precedence flag > environment > file > built-in default.
//!
//! clap handles flags and environment variables; every field is optional at that level so that
//! a value missing from both can be taken from the file, then from the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./cairn-data";
/// Default gRPC address (clients and peers).
pub const GRPC_ADDR_DEFAULT: &str = "127.0.0.1:7070";
/// Default HTTP/JSON address.
pub const HTTP_ADDR_DEFAULT: &str = "127.0.0.1:7080";
/// Default Redis-protocol address.
pub const RESP_ADDR_DEFAULT: &str = "127.0.0.1:7379";
/// Default number of shards of a new data directory. Few: every shard is a Raft group with
/// its own pipeline, and a group's cost is per entry, so a small cluster writes fastest with
/// few groups that each batch many writes (measured in docs/benchmarks.md, "How many
/// shards"); four still spread leaders over three nodes.
pub const SHARDS_DEFAULT: u32 = 4;
/// Largest shard count accepted (one slot per shard).
pub const SHARDS_MAX: u32 = 16384;
/// Default largest value, in bytes.
pub const VALUE_BYTES_MAX_DEFAULT: usize = cairn_storage::VALUE_BYTES_MAX_DEFAULT;
/// Largest value limit that can be configured: a write goes into one Raft log entry, which
/// holds at most [`crate::proposer::PROPOSAL_BYTES_MAX`] (56 MiB) of writes; a value as large
/// as this, with its key at the largest, fits with room for the entry's other fields. (Redis
/// allows 512 MiB, its `proto-max-bulk-len`; a limit above what an entry holds would accept
/// values in the front end that every write of them then refused.)
pub const VALUE_BYTES_MAX_LIMIT: usize = 48 * 1024 * 1024;
const _: () = assert!(
    VALUE_BYTES_MAX_LIMIT + cairn_storage::KEY_BYTES_MAX + 1024 * 1024
        <= crate::proposer::PROPOSAL_BYTES_MAX
);
/// Default cap on concurrent client connections per front end.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Most runtime worker threads that can be configured.
pub const WORKER_THREADS_MAX: usize = 1024;
/// Default number of replicas (voters) of every shard, capped by the node count.
pub const REPLICAS_DEFAULT: u32 = 3;
/// Most replicas a shard may be configured to have.
pub const REPLICAS_MAX: u32 = 7;
/// Default time after which a node that stopped answering the metadata leader is marked down.
pub const DOWN_AFTER_MS_DEFAULT: u64 = 5_000;
/// Default time a node may stay down before the balancer replaces its replicas.
pub const REPLACE_DOWN_AFTER_MS_DEFAULT: u64 = 300_000;
/// Default number of replicas the balancer moves at once, cluster-wide.
pub const BALANCE_MOVES_MAX_DEFAULT: usize = 4;
/// Most replicas the balancer may be configured to move at once.
pub const BALANCE_MOVES_MAX_LIMIT: usize = 64;
/// Default bound on the bytes per second a node sends in snapshots (16 MiB/s): the highest
/// of the rates measured that kept the foreground p99 within twice the idle one
/// (docs/benchmarks.md, "Joining and leaving under load").
pub const MOVE_BYTES_PER_SEC_DEFAULT: u64 = 16 * 1024 * 1024;
/// Live bytes past which a shard splits by default: large enough that a split is rare and
/// its copy (a few seconds per GiB, docs/benchmarks.md) is worth it, small enough that a
/// replica moves between nodes in about a minute at the default move rate.
pub const SPLIT_SHARD_BYTES_DEFAULT: u64 = 1 << 30;
/// Fewest change events a shard may keep for watches (tests use small windows to reach
/// compaction).
pub const WATCH_HISTORY_EVENTS_MIN: usize = 16;
/// Fewest bytes of history a shard may keep for watches.
pub const WATCH_HISTORY_BYTES_MIN: usize = 64 * 1024;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fdatasync the write-ahead log before acknowledging (group commit): durable.
    #[default]
    Always,
    /// Acknowledge after the write reaches the OS; sync once a second (Redis `everysec`).
    Everysec,
    /// Leave syncing to the OS between checkpoints (every 30 s and at shutdown, the engines are
    /// synced and the log purged); for tests and benchmarks.
    Never,
}

/// `cairn server` options as flags and environment variables (all optional; see
/// [`ServerArgs::resolve`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Directory holding the node's data [default: ./cairn-data]
    #[arg(long, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, for clients and peers [default: 127.0.0.1:7070]
    #[arg(long, env = "CAIRN_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP/JSON listen address [default: 127.0.0.1:7080]
    #[arg(long, env = "CAIRN_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Redis-protocol (RESP) listen address [default: 127.0.0.1:7379]
    #[arg(long, env = "CAIRN_RESP_ADDR", value_name = "ADDR")]
    pub resp_addr: Option<SocketAddr>,
    /// TOML file with any of these options (keys spelled with underscores, e.g. data_dir);
    /// flags and environment variables override it
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format [default: human]
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Number of shards; fixed when the data directory is created [default: 4]
    #[arg(long, env = "CAIRN_SHARDS", value_parser = clap::value_parser!(u32).range(1..=i64::from(SHARDS_MAX)))]
    pub shards: Option<u32>,
    /// Largest value accepted, in bytes [default: 16777216 (16 MiB)]
    #[arg(long, env = "CAIRN_VALUE_BYTES_MAX", value_name = "BYTES")]
    pub value_bytes_max: Option<usize>,
    /// Most concurrent client connections per front end [default: 10000]
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// When writes reach the disk: always = fsync before acknowledging (group commit),
    /// everysec = fsync once a second, never = only at checkpoints (30 s) [default: always]
    #[arg(long, env = "CAIRN_SYNC", value_enum)]
    pub sync: Option<SyncMode>,
    /// Threads serving client connections, shard proposers and Raft groups (the WAL flusher
    /// has its own) [default: one per CPU core]. Fewer threads than cores can be faster when clients share the machine: see
    /// docs/benchmarks.md
    #[arg(long, env = "CAIRN_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Join the cluster that the node at this gRPC address belongs to (any member); ignored
    /// once the data directory records that the node joined
    #[arg(long, env = "CAIRN_JOIN", value_name = "ADDR")]
    pub join: Option<String>,
    /// Voters per shard, capped by the node count; set when the cluster is created [default: 3]
    #[arg(long, env = "CAIRN_REPLICAS", value_name = "N")]
    pub replicas: Option<u32>,
    /// Answer RESP requests for keys led by another node with `MOVED slot host:port`, as Redis
    /// Cluster does, instead of forwarding them (the variable takes 1/0, true/false, yes/no,
    /// on/off)
    #[arg(long, env = "CAIRN_RESP_REDIRECT", value_parser = clap::builder::BoolishValueParser::new())]
    pub resp_redirect: bool,
    /// Keep a replica of every shard on every node (learners beyond the voters), instead of
    /// on its voters only; set when the cluster is created. Every node then serves stale
    /// reads and watches from its own replicas, and its disk bounds the cluster's data
    #[arg(long, env = "CAIRN_REPLICAS_EVERYWHERE", value_parser = clap::builder::BoolishValueParser::new())]
    pub replicas_everywhere: bool,
    /// Milliseconds without an answer to the metadata leader after which a node is marked
    /// down [default: 5000]
    #[arg(long, env = "CAIRN_DOWN_AFTER_MS", value_name = "MS")]
    pub down_after_ms: Option<u64>,
    /// Milliseconds a node may stay down before the balancer replaces its replicas on other
    /// nodes and removes it from the cluster (when enough nodes remain) [default: 300000]
    #[arg(long, env = "CAIRN_REPLACE_DOWN_AFTER_MS", value_name = "MS")]
    pub replace_down_after_ms: Option<u64>,
    /// Replicas the balancer moves at once, cluster-wide (each node takes in one at a time)
    /// [default: 4]
    #[arg(long, env = "CAIRN_BALANCE_MOVES_MAX", value_name = "N")]
    pub balance_moves_max: Option<usize>,
    /// Bytes per second this node sends in snapshots (copies of replicas to new members, or
    /// to members too far behind), every shard together; 0 for no limit [default: 16777216]
    #[arg(long, env = "CAIRN_MOVE_BYTES_PER_SEC", value_name = "BYTES")]
    pub move_bytes_per_sec: Option<u64>,
    /// A shard whose live data passes this many bytes is split in two (the metadata leader
    /// looks every 500 ms); 0 never splits by size (`cairn cluster split` still does)
    /// [default: 1073741824]
    #[arg(long, env = "CAIRN_SPLIT_SHARD_BYTES", value_name = "BYTES")]
    pub split_shard_bytes: Option<u64>,
    /// Change events each shard keeps for watches to resume from [default: 10000]
    #[arg(long, env = "CAIRN_WATCH_HISTORY_EVENTS", value_name = "N")]
    pub watch_history_events: Option<usize>,
    /// Bytes of keys and values each shard keeps for watches to resume from [default:
    /// 4194304]
    #[arg(long, env = "CAIRN_WATCH_HISTORY_BYTES", value_name = "BYTES")]
    pub watch_history_bytes: Option<usize>,
}

/// The same options as read from a `--config` TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub resp_addr: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub shards: Option<u32>,
    pub value_bytes_max: Option<usize>,
    pub max_connections: Option<usize>,
    pub sync: Option<SyncMode>,
    pub worker_threads: Option<usize>,
    pub join: Option<String>,
    pub replicas: Option<u32>,
    pub resp_redirect: Option<bool>,
    pub replicas_everywhere: Option<bool>,
    pub down_after_ms: Option<u64>,
    pub replace_down_after_ms: Option<u64>,
    pub balance_moves_max: Option<usize>,
    pub move_bytes_per_sec: Option<u64>,
    pub split_shard_bytes: Option<u64>,
    pub watch_history_events: Option<usize>,
    pub watch_history_bytes: Option<usize>,
}

/// Fully resolved server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub resp_addr: SocketAddr,
    pub log_format: LogFormat,
    /// Shard count for a new data directory (an existing one keeps its own).
    pub shards: u32,
    pub value_bytes_max: usize,
    pub max_connections: usize,
    pub sync: SyncMode,
    /// Runtime worker threads for the front ends.
    pub worker_threads: usize,
    /// A member's gRPC address to join through, for a node with a new data directory.
    pub join: Option<String>,
    /// Voters per shard in a cluster this node creates.
    pub replicas: u32,
    /// RESP answers `MOVED` instead of forwarding.
    pub resp_redirect: bool,
    /// A cluster this node creates keeps a replica of every shard on every node.
    pub replicas_everywhere: bool,
    /// Silence after which the metadata leader marks a node down.
    pub down_after_ms: u64,
    /// Down time after which the balancer replaces a node.
    pub replace_down_after_ms: u64,
    /// Replicas the balancer moves at once.
    pub balance_moves_max: usize,
    /// Bytes per second of snapshots this node sends (0: no limit).
    pub move_bytes_per_sec: u64,
    /// Live bytes past which a shard splits (0: never by size).
    pub split_shard_bytes: u64,
    /// How much change history each shard keeps for watches.
    pub watch_history: crate::feed::FeedLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            grpc_addr: GRPC_ADDR_DEFAULT.parse().expect("valid default"),
            http_addr: HTTP_ADDR_DEFAULT.parse().expect("valid default"),
            resp_addr: RESP_ADDR_DEFAULT.parse().expect("valid default"),
            log_format: LogFormat::Human,
            shards: SHARDS_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            sync: SyncMode::Always,
            worker_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            join: None,
            replicas: REPLICAS_DEFAULT,
            resp_redirect: false,
            replicas_everywhere: false,
            down_after_ms: DOWN_AFTER_MS_DEFAULT,
            replace_down_after_ms: REPLACE_DOWN_AFTER_MS_DEFAULT,
            balance_moves_max: BALANCE_MOVES_MAX_DEFAULT,
            move_bytes_per_sec: MOVE_BYTES_PER_SEC_DEFAULT,
            split_shard_bytes: SPLIT_SHARD_BYTES_DEFAULT,
            watch_history: crate::feed::FeedLimits::default(),
        }
    }
}

impl ServerArgs {
    /// Apply flag/env > file > default precedence and validate.
    pub fn resolve(&self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let d = ServerConfig::default();
        let config = ServerConfig {
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(d.data_dir),
            grpc_addr: self.grpc_addr.or(file.grpc_addr).unwrap_or(d.grpc_addr),
            http_addr: self.http_addr.or(file.http_addr).unwrap_or(d.http_addr),
            resp_addr: self.resp_addr.or(file.resp_addr).unwrap_or(d.resp_addr),
            log_format: self.log_format.or(file.log_format).unwrap_or(d.log_format),
            shards: self.shards.or(file.shards).unwrap_or(d.shards),
            value_bytes_max: self
                .value_bytes_max
                .or(file.value_bytes_max)
                .unwrap_or(d.value_bytes_max),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            sync: self.sync.or(file.sync).unwrap_or(d.sync),
            worker_threads: self
                .worker_threads
                .or(file.worker_threads)
                .unwrap_or(d.worker_threads),
            join: self.join.clone().or(file.join),
            replicas: self.replicas.or(file.replicas).unwrap_or(d.replicas),
            resp_redirect: self.resp_redirect || file.resp_redirect.unwrap_or(d.resp_redirect),
            replicas_everywhere: self.replicas_everywhere
                || file.replicas_everywhere.unwrap_or(d.replicas_everywhere),
            down_after_ms: self
                .down_after_ms
                .or(file.down_after_ms)
                .unwrap_or(d.down_after_ms),
            replace_down_after_ms: self
                .replace_down_after_ms
                .or(file.replace_down_after_ms)
                .unwrap_or(d.replace_down_after_ms),
            balance_moves_max: self
                .balance_moves_max
                .or(file.balance_moves_max)
                .unwrap_or(d.balance_moves_max),
            move_bytes_per_sec: self
                .move_bytes_per_sec
                .or(file.move_bytes_per_sec)
                .unwrap_or(d.move_bytes_per_sec),
            split_shard_bytes: self
                .split_shard_bytes
                .or(file.split_shard_bytes)
                .unwrap_or(d.split_shard_bytes),
            watch_history: crate::feed::FeedLimits {
                events_max: self
                    .watch_history_events
                    .or(file.watch_history_events)
                    .unwrap_or(d.watch_history.events_max),
                bytes_max: self
                    .watch_history_bytes
                    .or(file.watch_history_bytes)
                    .unwrap_or(d.watch_history.bytes_max),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }
}

impl ServerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=SHARDS_MAX).contains(&self.shards),
            "shards must be between 1 and {SHARDS_MAX}, got {}",
            self.shards
        );
        anyhow::ensure!(
            (1..=VALUE_BYTES_MAX_LIMIT).contains(&self.value_bytes_max),
            "value_bytes_max must be between 1 and {VALUE_BYTES_MAX_LIMIT}, got {}",
            self.value_bytes_max
        );
        anyhow::ensure!(
            self.max_connections >= 1,
            "max_connections must be at least 1"
        );
        anyhow::ensure!(
            (1..=WORKER_THREADS_MAX).contains(&self.worker_threads),
            "worker_threads must be between 1 and {WORKER_THREADS_MAX}, got {}",
            self.worker_threads
        );
        anyhow::ensure!(
            (1..=REPLICAS_MAX).contains(&self.replicas),
            "replicas must be between 1 and {REPLICAS_MAX}, got {}",
            self.replicas
        );
        anyhow::ensure!(
            self.down_after_ms >= 500,
            "down_after_ms must be at least 500 (a few election timeouts), got {}",
            self.down_after_ms
        );
        anyhow::ensure!(
            self.replace_down_after_ms > self.down_after_ms,
            "replace_down_after_ms ({}) must be longer than down_after_ms ({})",
            self.replace_down_after_ms,
            self.down_after_ms
        );
        anyhow::ensure!(
            (1..=BALANCE_MOVES_MAX_LIMIT).contains(&self.balance_moves_max),
            "balance_moves_max must be between 1 and {BALANCE_MOVES_MAX_LIMIT}, got {}",
            self.balance_moves_max
        );
        anyhow::ensure!(
            self.watch_history.events_max >= WATCH_HISTORY_EVENTS_MIN,
            "watch_history_events must be at least {WATCH_HISTORY_EVENTS_MIN}, got {}",
            self.watch_history.events_max
        );
        anyhow::ensure!(
            self.watch_history.bytes_max >= WATCH_HISTORY_BYTES_MIN,
            "watch_history_bytes must be at least {WATCH_HISTORY_BYTES_MIN}, got {}",
            self.watch_history.bytes_max
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        std::fs::write(
            &file,
            "resp_addr = \"127.0.0.1:9000\"\nshards = 4\nsync = \"never\"\nworker_threads = 3\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["x", "--config", file.to_str().unwrap(), "--shards", "8"])
            .unwrap();
        let config = cli.args.resolve().unwrap();
        assert_eq!(config.shards, 8, "flag wins over file");
        assert_eq!(
            config.resp_addr,
            "127.0.0.1:9000".parse().unwrap(),
            "file wins over default"
        );
        assert_eq!(config.sync, SyncMode::Never);
        assert_eq!(config.worker_threads, 3);
        assert_eq!(config.http_addr, HTTP_ADDR_DEFAULT.parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
    }

    #[test]
    fn bad_file_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        std::fs::write(&file, "no_such_option = 1\n").unwrap();
        let args = ServerArgs {
            config: Some(file),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
        let args = ServerArgs {
            value_bytes_max: Some(0),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
        // A value larger than one log entry holds could never be written.
        let args = ServerArgs {
            value_bytes_max: Some(VALUE_BYTES_MAX_LIMIT + 1),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
        let args = ServerArgs {
            value_bytes_max: Some(VALUE_BYTES_MAX_LIMIT),
            ..Default::default()
        };
        assert!(args.resolve().is_ok());
        let args = ServerArgs {
            worker_threads: Some(0),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
        assert!(Cli::try_parse_from(["x", "--shards", "0"]).is_err());
    }
}
