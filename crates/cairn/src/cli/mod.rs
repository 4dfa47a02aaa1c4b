//! The client side of the `cairn` binary: one-shot commands (`get`, `put`, `del`, `expire`,
//! `ttl`, `scan`, `watch`, `cluster status`), the interactive `repl` and the `bench` load generator. All
//! of them speak gRPC through `cairn-client`; none reaches into the server crates.

mod bench;
pub(crate) mod cluster;
mod kv;
mod output;
mod repl;
mod watch;

use std::time::Duration;

use clap::{Args, Subcommand};

/// Default gRPC endpoint of the node to talk to.
pub const ENDPOINT_DEFAULT: &str = "http://127.0.0.1:7070";
/// Default timeout of one request attempt, in milliseconds.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Where and how to reach the node; shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// gRPC endpoint of any node of the cluster
    #[arg(long, env = "CAIRN_ENDPOINT", default_value = ENDPOINT_DEFAULT, global = true)]
    pub endpoint: String,
    /// Timeout of one request attempt, in milliseconds
    #[arg(long, default_value_t = TIMEOUT_MS_DEFAULT, global = true, value_name = "MS")]
    pub timeout_ms: u64,
    /// Print machine-readable JSON instead of human output
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    /// A client for this connection's endpoint.
    pub fn client(&self) -> anyhow::Result<cairn_client::Client> {
        self.client_with(|_| {})
    }

    /// A client for this connection's endpoint, with `tune` applied to its settings.
    pub fn client_with(
        &self,
        tune: impl FnOnce(&mut cairn_client::ClientConfig),
    ) -> anyhow::Result<cairn_client::Client> {
        let mut config = cairn_client::ClientConfig {
            request_timeout: Duration::from_millis(self.timeout_ms),
            ..cairn_client::ClientConfig::default()
        };
        tune(&mut config);
        Ok(cairn_client::Client::with_config(&self.endpoint, config)?)
    }
}

/// Client subcommands of `cairn`, flattened into the binary's top-level command enum.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Read a key and print its value
    Get(kv::GetArgs),
    /// Write a key (value from the argument, or from stdin when omitted)
    Put(kv::PutArgs),
    /// Delete a key
    Del(kv::KeyArgs),
    /// Set a key's time to live (seconds, or --ms)
    Expire(kv::ExpireArgs),
    /// Print a key's remaining time to live in seconds (-1: no expiry)
    Ttl(kv::KeyArgs),
    /// List keys in order, by prefix or range
    Scan(kv::ScanArgs),
    /// Cluster introspection
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
        #[command(flatten)]
        connection: Connection,
    },
    /// Follow every change to a prefix, a key or a range (resumable with --from)
    Watch(watch::WatchArgs),
    /// Interactive prompt: set, get, del, expire, ttl, scan, help, exit
    Repl(repl::ReplArgs),
    /// Load generator over gRPC: throughput and latency percentiles
    Bench(bench::BenchArgs),
}

/// Exit status of a failed command (bad input, unreachable node, server error).
const EXIT_ERROR: i32 = 2;

/// Run a client subcommand on its own runtime and exit the process with its status: 0 on
/// success, 1 for a missing key or failed condition, 2 (with the error on stderr) otherwise.
pub fn main(command: ClientCommand) -> ! {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(command)));
    match result {
        Ok(code) => std::process::exit(i32::from(code)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(EXIT_ERROR)
        }
    }
}

/// Run a client subcommand to completion; returns the process exit status.
pub async fn run(command: ClientCommand) -> anyhow::Result<u8> {
    match command {
        ClientCommand::Get(args) => kv::get(args).await,
        ClientCommand::Put(args) => kv::put(args).await,
        ClientCommand::Del(args) => kv::del(args).await,
        ClientCommand::Expire(args) => kv::expire(args).await,
        ClientCommand::Ttl(args) => kv::ttl(args).await,
        ClientCommand::Scan(args) => kv::scan(args).await,
        ClientCommand::Cluster {
            command,
            connection,
        } => cluster::run(command, connection).await,
        ClientCommand::Watch(args) => watch::run(args).await,
        ClientCommand::Repl(args) => repl::run(args).await,
        ClientCommand::Bench(args) => bench::run(args).await,
    }
}
