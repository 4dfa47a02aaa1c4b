//! `cairn playground --nodes N`: a local cluster of N real `cairn server` processes on
//! loopback in one command, for trying Cairn out and for demos.
//!
//! Node 1 creates the cluster; the others join it through node 1's gRPC address. Each node
//! gets its own data directory (under a temporary directory removed on exit, or under `--dir`,
//! kept, so a second run with the same `--dir` restarts the same cluster) and its own ports:
//! node i listens for RESP on `base + i`, gRPC on `base + 100 + i` and HTTP on
//! `base + 200 + i`. Ctrl-C (or SIGTERM) stops every node with SIGTERM, a clean shutdown.
//!
//! While it runs, it reads commands on its standard input: `add` starts one more node
//! (joining the cluster), `remove N` drains node N out of the cluster (`cairn cluster
//! remove-node`, with a progress bar; the node exits once removed), `split SHARD` splits a
//! shard in two (`cairn cluster split`), `kill N` and `start N` SIGKILL and restart a node,
//! `status` shows the cluster map.

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
    /// Node `i` of a playground in `root` whose ports start at `base`.
    fn new(root: &Path, base: u16, i: u16) -> anyhow::Result<PlaygroundNode> {
        let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Ok(PlaygroundNode {
            index: i,
            resp: loopback(port(base, i)?),
            grpc: loopback(port(base, 100 + i)?),
            http: loopback(port(base, 200 + i)?),
            data_dir: root.join(format!("node{i}")),
            log: root.join(format!("node{i}.log")),
            child: None,
        })
    }

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
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        nodes.push(PlaygroundNode::new(&root, args.base_port, i)?);
    }
    let result = start_and_wait(&mut nodes, &extra, &root, args.base_port);
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
    nodes: &mut Vec<PlaygroundNode>,
    extra: &[String],
    root: &Path,
    base: u16,
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
    println!("Type {HELP} here; Ctrl-C stops every node.");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Lines of standard input, read on a thread of their own (none once it closes).
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    runtime.block_on(async {
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = crate::shutdown_signal() => return Ok(()),
                Some(line) = lines.recv() => {
                    if let Err(e) = command(nodes, extra, root, base, line.trim()).await {
                        eprintln!("{e:#}");
                    }
                }
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

/// The commands the playground takes on its standard input.
const HELP: &str = "add | remove N | split SHARD | kill N | start N | status | help";

/// Runs one command typed at the playground.
async fn command(
    nodes: &mut Vec<PlaygroundNode>,
    extra: &[String],
    root: &Path,
    base: u16,
    line: &str,
) -> anyhow::Result<()> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let index = |arg: Option<&&str>| -> anyhow::Result<usize> {
        let n: u16 = arg
            .ok_or_else(|| anyhow::anyhow!("which node? ({HELP})"))?
            .parse()?;
        nodes
            .iter()
            .position(|node| node.index == n)
            .ok_or_else(|| anyhow::anyhow!("no node {n}"))
    };
    // Any running node answers for the cluster.
    let client = |nodes: &[PlaygroundNode]| -> anyhow::Result<cairn_client::Client> {
        let live = nodes
            .iter()
            .find(|n| n.child.is_some())
            .ok_or_else(|| anyhow::anyhow!("no node is running"))?;
        Ok(cairn_client::Client::new(&format!("http://{}", live.grpc))?)
    };
    match words.first().copied() {
        None => Ok(()),
        Some("help") => {
            println!("{HELP}");
            Ok(())
        }
        Some("status") => {
            print!(
                "{}",
                crate::cli::cluster::render(&client(nodes)?.status().await?)
            );
            Ok(())
        }
        Some("add") => {
            let next = nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
            anyhow::ensure!(
                next <= NODES_MAX,
                "a playground has at most {NODES_MAX} nodes"
            );
            let join = nodes
                .iter()
                .find(|n| n.child.is_some())
                .map(|n| n.grpc)
                .ok_or_else(|| anyhow::anyhow!("no node is running to join"))?;
            let mut node = PlaygroundNode::new(root, base, next)?;
            node.start(Some(join), extra)?;
            node.wait_listening()?;
            println!(
                "node {next} joined: RESP {}, gRPC {}, HTTP {}",
                node.resp, node.grpc, node.http
            );
            nodes.push(node);
            Ok(())
        }
        Some("remove") => {
            let i = index(words.get(1))?;
            let id = cairn_client::Client::new(&format!("http://{}", nodes[i].grpc))?
                .status()
                .await?
                .node_id;
            let via = nodes
                .iter()
                .enumerate()
                .find(|(j, n)| *j != i && n.child.is_some())
                .map(|(_, n)| n.grpc)
                .ok_or_else(|| anyhow::anyhow!("no other node is running"))?;
            let client = cairn_client::Client::new(&format!("http://{via}"))?;
            client.remove_node(&id).await?;
            crate::cli::cluster::wait_gone(&client, &id, Duration::from_secs(600)).await?;
            println!("node {} left the cluster", nodes[i].index);
            Ok(())
        }
        Some("split") => {
            let shard: u32 = words
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("which shard? ({HELP})"))?
                .parse()?;
            let live = nodes
                .iter()
                .find(|n| n.child.is_some())
                .ok_or_else(|| anyhow::anyhow!("no node is running"))?;
            let config = cairn_client::ClientConfig {
                request_timeout: Duration::from_secs(120),
                ..cairn_client::ClientConfig::default()
            };
            let client =
                cairn_client::Client::with_config(&format!("http://{}", live.grpc), config)?;
            let (child, first_slot) = client.split_shard(shard, None).await?;
            println!("shard {shard} split: slots from {first_slot} went to the new shard {child}");
            Ok(())
        }
        Some("kill") => {
            let i = index(words.get(1))?;
            if let Some(mut child) = nodes[i].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            println!("node {} killed", nodes[i].index);
            Ok(())
        }
        Some("start") => {
            let i = index(words.get(1))?;
            anyhow::ensure!(
                nodes[i].child.is_none(),
                "node {} is running",
                nodes[i].index
            );
            nodes[i].start(None, extra)?;
            nodes[i].wait_listening()?;
            println!("node {} started", nodes[i].index);
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?} ({HELP})"),
    }
}
