//! `cairn playground --nodes N`: a local cluster of N real `cairn server` processes on
//! loopback in one command, for trying Cairn out and for demos.
//!
//! Node 1 creates the cluster; the others join it through node 1's gRPC address. Each node
//! gets its own data directory (under a temporary directory removed on exit, or under `--dir`,
//! kept, so a second run with the same `--dir` restarts the same cluster) and its own ports:
//! node i listens for RESP on `base + i`, gRPC on `base + 100 + i` and HTTP on
//! `base + 200 + i`. Ctrl-C (or SIGTERM) stops every node with SIGTERM, a clean shutdown.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

/// Most nodes a playground starts.
pub const NODES_MAX: u16 = 9;
/// Default first port (node i's RESP port is this plus i).
pub const BASE_PORT_DEFAULT: u16 = 30_000;
/// How long a node may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `cairn playground` options.
#[derive(Debug, Clone, Args)]
pub struct PlaygroundArgs {
    /// Number of nodes (1 to 9)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=i64::from(NODES_MAX)))]
    pub nodes: u16,
    /// Directory for the nodes' data directories and logs, kept on exit [default: a temporary
    /// directory, removed on exit]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Ports: node i uses BASE+i (RESP), BASE+100+i (gRPC), BASE+200+i (HTTP)
    #[arg(long, default_value_t = BASE_PORT_DEFAULT, value_name = "BASE")]
    pub base_port: u16,
    /// Extra arguments for every `cairn server` (e.g. "--shards 4")
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub server_args: Option<String>,
}

struct PlaygroundNode {
    index: u16,
    resp: SocketAddr,
    grpc: SocketAddr,
    http: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl PlaygroundNode {
    fn start(&mut self, join: Option<SocketAddr>, extra: &[String]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--resp-addr", &self.resp.to_string()])
            .args(["--grpc-addr", &self.grpc.to_string()])
            .args(["--http-addr", &self.http.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(join) = join {
            command.args(["--join", &join.to_string()]);
        }
        self.child = Some(command.spawn()?);
        Ok(())
    }

    /// Waits until the node accepts connections on every front end.
    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        for addr in [self.grpc, self.http, self.resp] {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    anyhow::bail!(
                        "node {} exited ({status}); see {}",
                        self.index,
                        self.log.display()
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {} did not start within {START_TIMEOUT:?}; see {}",
                    self.index,
                    self.log.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if the node does not stop in time.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PlaygroundNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn port(base: u16, offset: u16) -> anyhow::Result<u16> {
    base.checked_add(offset)
        .ok_or_else(|| anyhow::anyhow!("--base-port {base} leaves no room for the ports"))
}

/// Runs the playground until Ctrl-C or SIGTERM.
pub fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    let (root, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("cairn-playground-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&root)?;
    let extra: Vec<String> = args
        .server_args
        .as_deref()
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        nodes.push(PlaygroundNode {
            index: i,
            resp: loopback(port(args.base_port, i)?),
            grpc: loopback(port(args.base_port, 100 + i)?),
            http: loopback(port(args.base_port, 200 + i)?),
            data_dir: root.join(format!("node{i}")),
            log: root.join(format!("node{i}.log")),
            child: None,
        });
    }
    let result = start_and_wait(&mut nodes, &extra, &root);
    for node in nodes.iter_mut().rev() {
        node.stop();
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("data kept in {}", root.display());
    }
    result
}

fn start_and_wait(
    nodes: &mut [PlaygroundNode],
    extra: &[String],
    root: &Path,
) -> anyhow::Result<()> {
    let first = nodes[0].grpc;
    for (i, node) in nodes.iter_mut().enumerate() {
        node.start((i > 0).then_some(first), extra)?;
        node.wait_listening()?;
    }
    println!(
        "Cairn playground: {} node(s), data and logs in {}",
        nodes.len(),
        root.display()
    );
    println!();
    println!("  node  RESP              gRPC              HTTP");
    for node in nodes.iter() {
        println!(
            "  {:<4}  {:<16}  {:<16}  {}",
            node.index, node.resp, node.grpc, node.http
        );
    }
    let n = &nodes[0];
    println!();
    println!("Try:");
    println!("  redis-cli -c -p {} set hello world", n.resp.port());
    if let Some(last) = nodes.last() {
        println!("  redis-cli -p {} get hello", last.resp.port());
    }
    println!("  curl http://{}/v1/kv/hello", n.http);
    println!("  cairn cluster status --endpoint http://{}", n.grpc);
    println!("  cairn repl --endpoint http://{}", n.grpc);
    println!();
    println!("Ctrl-C stops every node.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = crate::shutdown_signal() => return Ok(()),
                _ = watch.tick() => {
                    for node in nodes.iter_mut() {
                        if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                            node.child = None;
                            eprintln!(
                                "node {} exited ({status}); see {}",
                                node.index,
                                node.log.display()
                            );
                        }
                    }
                    if nodes.iter().all(|n| n.child.is_none()) {
                        anyhow::bail!("every node has exited");
                    }
                }
            }
        }
    })
}
