//! Shared harness: start a real `cairn server` on free loopback ports with its own temporary
//! data directory, wait until it accepts connections, and kill it (SIGKILL) when dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How long a node may take to start accepting connections before the test fails.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the `cairn` binary under test.
pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// First port handed to tests: below Linux's ephemeral range (32768–60999), so no outgoing
/// connection can be holding it.
const TEST_PORT_BASE: u16 = 20_000;
/// How many ports tests may use, from [`TEST_PORT_BASE`].
const TEST_PORT_SPAN: u16 = 12_000;

/// A free loopback port for a test server.
///
/// Binding port 0 and releasing it would race: parallel tests could be handed the same port,
/// and a node could then take another test's server for its own. Ports come instead from a
/// per-process counter (each test binary starts at its own offset) and are checked bindable.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 50) as u16 * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < TEST_PORT_SPAN, "tests ran out of ports");
        let port = TEST_PORT_BASE + (offset + n) % TEST_PORT_SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One running `cairn server` process.
#[derive(Debug)]
pub struct Node {
    pub child: Option<Child>,
    /// Data directory; kept across restarts of the same `Node`.
    pub data_dir: PathBuf,
    /// Owns the data directory's lifetime when the node created it.
    _tmp: Option<tempfile::TempDir>,
    pub resp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Extra arguments passed to `cairn server` on every start.
    pub extra_args: Vec<String>,
    pub log_path: PathBuf,
    /// Run the process as this Unix user (uid, gid) instead of the test's own.
    pub run_as: Option<(u32, u32)>,
    /// Environment variables set for the process on every start.
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Start a node on a fresh temporary data directory.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    /// Start a node on a fresh temporary data directory with extra `cairn server` arguments.
    pub fn start_with(extra_args: &[&str]) -> Node {
        Self::start_as(None, extra_args)
    }

    /// Start a node as Unix user `user` (its data directory is handed to that user), so
    /// firewall rules can match its traffic by owner.
    pub fn start_as(user: Option<&UnixUser>, extra_args: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let log_path = tmp.path().join("server.log");
        let mut node = Node {
            child: None,
            data_dir,
            _tmp: Some(tmp),
            resp_addr: ([127, 0, 0, 1], free_port()).into(),
            http_addr: ([127, 0, 0, 1], free_port()).into(),
            grpc_addr: ([127, 0, 0, 1], free_port()).into(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log_path,
            run_as: user.map(|u| (u.uid, u.gid)),
            env: Vec::new(),
        };
        if let Some(user) = user {
            std::fs::create_dir_all(&node.data_dir).expect("data dir");
            for path in [tmp_root(&node.data_dir), node.data_dir.as_path()] {
                let status = Command::new("chown")
                    .arg(format!("{}:{}", user.uid, user.gid))
                    .arg(path)
                    .status()
                    .expect("chown");
                assert!(status.success());
            }
        }
        node.spawn();
        node
    }

    /// (Re)start the process on the same data directory and ports.
    pub fn spawn(&mut self) {
        self.spawn_unchecked();
        self.wait_ready();
    }

    /// Starts the process without waiting until it listens (it may be meant to exit).
    pub fn spawn_unchecked(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        // The server dies with the test thread that started it, even when the test process
        // is killed and no `Drop` runs. A change of credentials clears the signal, so a node
        // run as another user has setpriv set it again after the change.
        let mut command = match self.run_as {
            None => Command::new(cairn_bin()),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--pdeathsig=KILL")
                    .arg("--")
                    .arg(cairn_bin());
                c
            }
        };
        die_with_parent(&mut command);
        let child = command
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--resp-addr")
            .arg(self.resp_addr.to_string())
            .arg("--http-addr")
            .arg(self.http_addr.to_string())
            .arg("--grpc-addr")
            .arg(self.grpc_addr.to_string())
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn cairn server");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for addr in [self.resp_addr, self.http_addr, self.grpc_addr] {
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("cairn server exited early ({status}); log:\n{}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "cairn server not accepting on {addr}; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL then start again on the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Send SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node running");
        signal(child.id(), libc_sigterm());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A raw RESP connection to this node.
    pub fn resp(&self) -> RawConn {
        RawConn::connect(self.resp_addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn libc_sigterm() -> i32 {
    15
}

fn signal(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A raw TCP connection for speaking RESP byte by byte.
#[derive(Debug)]
pub struct RawConn {
    pub stream: TcpStream,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Send a command as a RESP array of bulk strings.
    pub fn send_cmd(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.send(&out);
    }

    /// Read exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    /// Read one complete RESP reply and return its raw bytes.
    pub fn read_reply(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.read_value(&mut out);
        out
    }

    /// Send a command and return its raw reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send_cmd(args);
        self.read_reply()
    }

    /// Send a command given as one whitespace-separated string; return the reply as a String.
    pub fn cmd_str(&mut self, line: &str) -> String {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        String::from_utf8_lossy(&self.cmd(&args)).into_owned()
    }

    fn read_line(&mut self, out: &mut Vec<u8>) -> Vec<u8> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            self.stream.read_exact(&mut byte).expect("read reply");
            line.push(byte[0]);
            if line.ends_with(b"\r\n") {
                break;
            }
        }
        out.extend_from_slice(&line);
        line.truncate(line.len() - 2);
        line
    }

    fn read_value(&mut self, out: &mut Vec<u8>) {
        let line = self.read_line(out);
        let (kind, rest) = (line[0], &line[1..]);
        let n = || -> i64 { std::str::from_utf8(rest).unwrap().parse().unwrap() };
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let len = n();
                if len >= 0 {
                    let body = self.read_exact(len as usize + 2);
                    out.extend_from_slice(&body);
                }
            }
            b'*' | b'~' | b'>' => {
                let len = n();
                for _ in 0..len.max(0) {
                    self.read_value(out);
                }
            }
            b'%' | b'|' => {
                for _ in 0..n() * 2 {
                    self.read_value(out);
                }
            }
            other => panic!(
                "unexpected RESP type byte {:?} in {:?}",
                other as char, line
            ),
        }
    }
}

/// Whether `path` exists and is a non-empty directory.
pub fn dir_nonempty(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn tmp_root(data_dir: &Path) -> &Path {
    data_dir.parent().expect("data dir has a parent")
}

/// Whether this process can add users and firewall rules (root, with `iptables`). Without
/// them the fault tests that cut links are skipped with a message, unless
/// `CAIRN_REQUIRE_IPTABLES=1` (CI) makes that a failure.
pub fn can_cut_links() -> bool {
    let ok = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        && Command::new("iptables")
            .args(["-w", "-L", "OUTPUT", "-n"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CAIRN_REQUIRE_IPTABLES").as_deref() != Ok("1"),
            "CAIRN_REQUIRE_IPTABLES=1 but this process cannot use iptables as root"
        );
        eprintln!("skipping: needs root and iptables to cut links between nodes");
    }
    ok
}

/// A Unix user created for one test and deleted when dropped.
#[derive(Debug)]
pub struct UnixUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Prefix of every [`UnixUser`]'s name: `cairn-test-TAG-PID`, PID the test process that made
/// it (distinct enough that no real user is taken for a leftover).
const USER_PREFIX: &str = "cairn-test-";

/// Whether process `pid` (a decimal string) is running.
fn process_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

impl UnixUser {
    pub fn create(tag: &str) -> UnixUser {
        remove_leftover_users();
        let name = format!("{USER_PREFIX}{tag}-{}", std::process::id());
        // A user of this name left by an earlier run whose process had this id.
        let _ = Command::new("userdel").arg(&name).output();
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .status()
            .expect("useradd");
        assert!(status.success(), "useradd {name} failed");
        // The guard exists before anything else can fail, so the user is always deleted.
        let mut user = UnixUser {
            name,
            uid: 0,
            gid: 0,
        };
        let id = |flag: &str, name: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(name).output().expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        user.uid = id("-u", &user.name);
        user.gid = id("-g", &user.name);
        user
    }
}

/// Deletes the users of test processes that no longer run (killed before their `Drop` ran).
fn remove_leftover_users() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in passwd.lines().filter_map(|l| l.split(':').next()) {
        let Some((_, pid)) = name
            .strip_prefix(USER_PREFIX)
            .and_then(|r| r.rsplit_once('-'))
        else {
            continue;
        };
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !process_alive(pid) {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}

impl Drop for UnixUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// The comment on every rule a [`Firewall`] adds, followed by `:PID` (the test process), so a
/// later run finds the rules of a run that was killed before its `Drop` ran.
const FIREWALL_TAG: &str = "cairn-test";

/// iptables OUTPUT rules added by one test, each removed when dropped (also when the test
/// fails).
#[derive(Debug)]
pub struct Firewall {
    rules: Vec<Vec<String>>,
}

impl Firewall {
    /// No rules yet; first deletes the rules that test processes no longer running left.
    pub fn new() -> Firewall {
        let out = Command::new("iptables")
            .args(["-w", "-S", "OUTPUT"])
            .output()
            .expect("iptables");
        assert!(out.status.success(), "iptables -S OUTPUT failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `-A OUTPUT ... -m comment --comment cairn-test:PID -j DROP`
            let words: Vec<&str> = line
                .split_whitespace()
                .map(|w| w.trim_matches('"'))
                .collect();
            let Some(pid) = words
                .iter()
                .find_map(|w| w.strip_prefix(FIREWALL_TAG)?.strip_prefix(':'))
            else {
                continue;
            };
            if words.first() != Some(&"-A") || process_alive(pid) {
                continue;
            }
            let status = Command::new("iptables")
                .args(["-w", "-D"])
                .args(&words[1..])
                .status()
                .expect("iptables");
            assert!(status.success(), "could not delete leftover rule {line}");
        }
        Firewall { rules: Vec::new() }
    }

    /// Drops TCP packets on loopback to `port`, from processes of `uid` only when given.
    pub fn drop_to_port(&mut self, port: u16, uid: Option<u32>) {
        let mut rule: Vec<String> = ["OUTPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        rule.push(port.to_string());
        if let Some(uid) = uid {
            rule.extend(["-m", "owner", "--uid-owner"].map(String::from));
            rule.push(uid.to_string());
        }
        rule.extend(["-m", "comment", "--comment"].map(String::from));
        rule.push(format!("{FIREWALL_TAG}:{}", std::process::id()));
        rule.extend(["-j", "DROP"].map(String::from));
        // Inserted first in the chain, so no earlier ACCEPT rule lets the traffic through.
        let status = Command::new("iptables")
            .args(["-w", "-I", "OUTPUT", "1"])
            .args(&rule[1..])
            .status()
            .expect("iptables");
        assert!(status.success(), "iptables -I {rule:?} failed");
        self.rules.push(rule);
    }

    /// Removes every rule added so far; panics if one stays (the fault would go on).
    pub fn heal(&mut self) {
        let stuck = self.remove_rules();
        assert!(
            stuck.is_empty(),
            "could not remove iptables rules {stuck:?}"
        );
    }

    /// Removes every rule added so far; returns those that could not be removed.
    fn remove_rules(&mut self) -> Vec<Vec<String>> {
        self.rules
            .drain(..)
            .filter(|rule| {
                !Command::new("iptables")
                    .args(["-w", "-D"])
                    .args(rule)
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect()
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for rule in self.remove_rules() {
            eprintln!("could not remove iptables rule {rule:?}: remove it by hand");
        }
    }
}

/// Has the child get SIGKILL when the thread that spawned it exits.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
    // async-signal-safe and affects only that child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Calls `check` every `every` until it returns `Ok`, and returns that; after `timeout`,
/// panics with `what()` and the last `Err` (what was seen instead). For state that settles a
/// moment after the request that changed it (replication, elections, maps).
pub fn poll_until<T, E: std::fmt::Debug>(
    timeout: Duration,
    every: Duration,
    what: impl Fn() -> String,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(done) => return done,
            Err(seen) => assert!(Instant::now() < deadline, "{}\nlast seen: {seen:?}", what()),
        }
        std::thread::sleep(every);
    }
}
