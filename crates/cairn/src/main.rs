//! The `cairn` binary: `cairn server …` runs a node; the other subcommands are clients.

use clap::{Parser, Subcommand};

mod cli;
mod playground;

/// Cairn: a distributed key-value database speaking Redis protocol, gRPC and HTTP/JSON.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run a Cairn node.
    Server(cairn_server::config::ServerArgs),
    /// Start a local cluster of N nodes on loopback; Ctrl-C stops them all.
    Playground(playground::PlaygroundArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Server(args) => server(args),
        Commands::Playground(args) => playground::run(args),
        Commands::Client(command) => cli::main(command),
    }
}

/// Run a node until SIGINT or SIGTERM.
fn server(args: cairn_server::config::ServerArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(config.worker_threads)
        .thread_name("cairn")
        .build()?;
    runtime.block_on(cairn_server::server::run(config, shutdown_signal()))
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
