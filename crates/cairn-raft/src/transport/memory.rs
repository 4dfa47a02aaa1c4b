//! An in-memory [`Network`]: nodes in one process joined by pipes, with links that can be
//! cut, for tests (and a deterministic simulation to come) that run a cluster without a
//! socket.
//!
//! Every node gets its own handle, [`MemoryNetwork::node`], which knows the node's address,
//! so links are named by the pair of addresses they join. Cutting a link refuses new
//! connections between the two (as a refused TCP connect does) and resets the ones open
//! between them (their next read or write fails, and any read or write waiting is woken to
//! fail), as a peer's kernel answering with RST does. Silencing a node instead leaves its
//! connections open and carrying nothing, new ones too, as iptables DROP rules (or a paused
//! process) do: only timeouts notice. Healing lets new connections through (tonic and the
//! append links reconnect on their own) and lets silenced ones carry their bytes again.
//!
//! Links can also be slowed to a bandwidth ([`MemoryNetwork::limit_links`]): each direction
//! of each connection then carries at most that many bytes a second, as a slower link than
//! loopback would, so that what a large message does to the messages behind it shows.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use super::{BoxConn, Listener, Network};

/// Bytes a pipe buffers in each direction before the writer waits.
const PIPE_BYTES: usize = 256 * 1024;
/// Connections waiting to be accepted at one address before a dialer waits.
const BACKLOG: usize = 128;
/// Most bytes a pipe slowed to a bandwidth takes in one write (the writer then waits for
/// them to cross): about a TCP send of a few segments.
const PACED_WRITE_BYTES_MAX: usize = 16 * 1024;

type Accepted = (BoxConn, SocketAddr);

/// Links between two addresses, either way round.
fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

#[derive(Default)]
struct State {
    /// Who listens where: the listener's id (so a closed one unregisters only itself) and
    /// its queue.
    listeners: HashMap<SocketAddr, (u64, tokio::sync::mpsc::Sender<Accepted>)>,
    next_listener: u64,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    /// Addresses whose every link is silent.
    silenced: HashSet<SocketAddr>,
    /// Open connections, by the pair they join (dead ones are dropped as they are met).
    open: HashMap<(SocketAddr, SocketAddr), Vec<Weak<Severance>>>,
    /// Connections ever made, by the pair they join.
    made: HashMap<(SocketAddr, SocketAddr), u64>,
}

/// Pipes between the nodes of one process. Clones share the network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
    /// Bytes a second each direction of a connection carries; 0: as fast as memory.
    link_bytes_per_sec: Arc<AtomicU64>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("MemoryNetwork")
            .field("listening", &st.listeners.keys().collect::<Vec<_>>())
            .field("cut", &st.cut)
            .finish()
    }
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// The network as the node at `addr` (its gRPC address) sees it.
    pub fn node(&self, addr: SocketAddr) -> MemoryNode {
        MemoryNode {
            net: self.clone(),
            me: addr,
        }
    }

    /// Cuts the link between `a` and `b`: connections open between them are reset, new ones
    /// refused, until [`MemoryNetwork::heal`].
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let severed = {
            let mut st = self.state.lock();
            st.cut.insert(pair(a, b));
            st.open.remove(&pair(a, b)).unwrap_or_default()
        };
        for s in severed.iter().filter_map(Weak::upgrade) {
            s.sever();
        }
    }

    /// Cuts every link of `addr` to an address that listens.
    pub fn isolate(&self, addr: SocketAddr) {
        let others: Vec<SocketAddr> = self
            .state
            .lock()
            .listeners
            .keys()
            .copied()
            .filter(|&o| o != addr)
            .collect();
        for other in others {
            self.cut(addr, other);
        }
    }

    /// Silences every link of `addr`, open or to come: connections stay open (and new ones
    /// are made) but carry nothing either way until [`MemoryNetwork::heal`].
    pub fn silence(&self, addr: SocketAddr) {
        let stalled: Vec<Arc<Severance>> = {
            let mut st = self.state.lock();
            st.silenced.insert(addr);
            st.open
                .iter()
                .filter(|((a, b), _)| *a == addr || *b == addr)
                .flat_map(|(_, links)| links.iter().filter_map(Weak::upgrade))
                .collect()
        };
        for s in stalled {
            s.set_stalled(true);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        let stalled: Vec<Arc<Severance>> = {
            let mut st = self.state.lock();
            st.cut.clear();
            st.silenced.clear();
            st.open
                .values()
                .flat_map(|links| links.iter().filter_map(Weak::upgrade))
                .collect()
        };
        for s in stalled {
            s.set_stalled(false);
        }
    }

    /// Slows every link, open or to come, to `bytes_per_sec` each way (`None`: as fast as
    /// memory again).
    pub fn limit_links(&self, bytes_per_sec: Option<u64>) {
        self.link_bytes_per_sec
            .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// How many connections were made between `a` and `b`, either way.
    pub fn connections(&self, a: SocketAddr, b: SocketAddr) -> u64 {
        self.state
            .lock()
            .made
            .get(&pair(a, b))
            .copied()
            .unwrap_or(0)
    }

    fn dial(&self, from: SocketAddr, to: SocketAddr) -> io::Result<BoxConn> {
        let (queue, near, far) = {
            let mut st = self.state.lock();
            if st.cut.contains(&pair(from, to)) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("the link {from} - {to} is cut"),
                ));
            }
            let Some((_, queue)) = st.listeners.get(&to).cloned() else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens at {to}"),
                ));
            };
            let severance = Arc::new(Severance::default());
            if st.silenced.contains(&from) || st.silenced.contains(&to) {
                severance.set_stalled(true);
            }
            let links = st.open.entry(pair(from, to)).or_default();
            links.retain(|w| w.strong_count() > 0);
            links.push(Arc::downgrade(&severance));
            let (near, far) = tokio::io::duplex(PIPE_BYTES);
            let rate = &self.link_bytes_per_sec;
            (
                queue,
                Pipe::new(near, severance.clone(), 0, rate.clone()),
                Pipe::new(far, severance, 1, rate.clone()),
            )
        };
        match queue.try_send((Box::new(far), from)) {
            Ok(()) => {
                *self.state.lock().made.entry(pair(from, to)).or_default() += 1;
                Ok(Box::new(near))
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{to} is not accepting connections"),
            )),
        }
    }
}

/// One node's view of a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryNode {
    net: MemoryNetwork,
    me: SocketAddr,
}

impl Network for MemoryNode {
    fn dial(&self, addr: &str) -> BoxFuture<'static, io::Result<BoxConn>> {
        let result = addr
            .parse::<SocketAddr>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
            .and_then(|to| self.net.dial(self.me, to));
        Box::pin(async move { result })
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let result = {
            let mut st = self.net.state.lock();
            match st.listeners.get(&addr) {
                Some((_, tx)) if !tx.is_closed() => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is in use"),
                )),
                _ => {
                    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
                    st.next_listener += 1;
                    let id = st.next_listener;
                    st.listeners.insert(addr, (id, tx));
                    Ok(Box::new(MemoryListener {
                        net: self.net.clone(),
                        addr,
                        id,
                        rx,
                    }) as Box<dyn Listener>)
                }
            }
        };
        Box::pin(async move { result })
    }
}

struct MemoryListener {
    net: MemoryNetwork,
    addr: SocketAddr,
    id: u64,
    rx: tokio::sync::mpsc::Receiver<Accepted>,
}

impl Listener for MemoryListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, SocketAddr)>> {
        Box::pin(async move {
            self.rx
                .recv()
                .await
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the network is gone"))
        })
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        let mut st = self.net.state.lock();
        if st
            .listeners
            .get(&self.addr)
            .is_some_and(|(id, _)| *id == self.id)
        {
            st.listeners.remove(&self.addr);
        }
    }
}

/// Shared by the two ends of one connection: once severed, both fail; while stalled,
/// neither moves a byte.
#[derive(Default)]
struct Severance {
    severed: AtomicBool,
    stalled: AtomicBool,
    /// Readers and writers of each end waiting on the pipe.
    wakers: [AtomicWaker; 4],
}

impl Severance {
    fn sever(&self) {
        self.severed.store(true, Ordering::Release);
        self.wake_all();
    }

    fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
        if !stalled {
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Registers `cx` in slot `slot`, then `Err` if the connection is severed, `Pending`
    /// while it is stalled.
    fn check(&self, slot: usize, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.wakers[slot].register(cx.waker());
        if self.severed.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the link was cut",
            )));
        }
        if self.stalled.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

/// One end of an in-memory connection.
struct Pipe {
    inner: DuplexStream,
    severance: Arc<Severance>,
    /// Which end: 0 dialer, 1 acceptor (picks the waker slots).
    end: usize,
    /// The network's bandwidth for each direction of a link (0: none).
    bytes_per_sec: Arc<AtomicU64>,
    /// Until when the bytes this end wrote last are still crossing: its next write waits.
    crossing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Pipe {
    fn new(
        inner: DuplexStream,
        severance: Arc<Severance>,
        end: usize,
        bytes_per_sec: Arc<AtomicU64>,
    ) -> Pipe {
        Pipe {
            inner,
            severance,
            end,
            bytes_per_sec,
            crossing: None,
        }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.severance.check(self.end * 2, cx))?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.severance.check(self.end * 2 + 1, cx))?;
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        if rate == 0 {
            self.crossing = None;
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if let Some(crossing) = self.crossing.as_mut() {
            std::task::ready!(crossing.as_mut().poll(cx));
            self.crossing = None;
        }
        let take = buf.len().min(PACED_WRITE_BYTES_MAX);
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..take]))?;
        let takes = std::time::Duration::from_secs_f64(written as f64 / rate as f64);
        self.crossing = Some(Box::pin(tokio::time::sleep(takes)));
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.severance.check(self.end * 2 + 1, cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn at(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7070))
    }

    #[tokio::test]
    async fn a_cut_resets_open_connections_refuses_new_ones_and_heals() {
        let net = MemoryNetwork::new();
        let (a, b) = (net.node(at(1)), net.node(at(2)));
        let mut listener = a.listen(at(1)).await.unwrap();
        assert_eq!(
            b.listen(at(1)).await.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );

        let mut dialled = b.dial(&at(1).to_string()).await.unwrap();
        let (mut accepted, from) = listener.accept().await.unwrap();
        assert_eq!(from, at(2));
        dialled.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Reads waiting at both ends when the link is cut are woken and fail; so do writes.
        let wait_read = |mut conn: BoxConn| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1];
                let result = conn.read(&mut buf).await.map_err(|e| e.kind());
                (result, conn)
            })
        };
        let (at_acceptor, at_dialler) = (wait_read(accepted), wait_read(dialled));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        net.cut(at(2), at(1));
        let patience = std::time::Duration::from_secs(10);
        let (read, _accepted) = tokio::time::timeout(patience, at_acceptor)
            .await
            .expect("the acceptor's read was woken")
            .unwrap();
        assert_eq!(read, Err(io::ErrorKind::ConnectionReset));
        let (read, mut dialled) = tokio::time::timeout(patience, at_dialler)
            .await
            .expect("the dialler's read was woken")
            .unwrap();
        assert_eq!(read, Err(io::ErrorKind::ConnectionReset));
        assert_eq!(
            dialled.write_all(b"x").await.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(net.connections(at(1), at(2)), 1);
        assert_eq!(
            b.dial(&at(1).to_string()).await.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
        // Other links stay up.
        let c = net.node(at(3));
        let _to_c = c.dial(&at(1).to_string()).await.unwrap();
        assert_eq!(listener.accept().await.unwrap().1, at(3));

        net.heal();
        let mut again = b.dial(&at(1).to_string()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        again.write_all(b"back").await.unwrap();
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }

    /// A link slowed to a bandwidth carries that many bytes a second each way (on the
    /// paused clock: the time is the pipe's own), and as fast as memory once unlimited.
    #[tokio::test(start_paused = true)]
    async fn a_limited_link_carries_its_bandwidth() {
        let net = MemoryNetwork::new();
        let (a, b) = (net.node(at(1)), net.node(at(2)));
        let mut listener = a.listen(at(1)).await.unwrap();
        let mut dialled = b.dial(&at(1).to_string()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let cross = |mut from: BoxConn, mut to: BoxConn, bytes: usize| async move {
            let started = tokio::time::Instant::now();
            let reader = tokio::spawn(async move {
                let mut got = vec![0u8; bytes];
                to.read_exact(&mut got).await.unwrap();
                to
            });
            from.write_all(&vec![7u8; bytes]).await.unwrap();
            let to = reader.await.unwrap();
            (started.elapsed(), from, to)
        };
        net.limit_links(Some(1 << 20));
        let (took, d, acc) = cross(dialled, accepted, 4 << 20).await;
        // At its bandwidth: neither faster nor much slower (the clock is paused, so the
        // pipe's own pacing is all that passes time).
        let ms = std::time::Duration::from_millis;
        assert!(
            took >= ms(3900) && took < ms(4500),
            "4 MiB crossed 1 MiB/s in {took:?}"
        );
        // The other way too.
        let (took, acc, d) = cross(acc, d, 1 << 20).await;
        assert!(took >= ms(900) && took < ms(1200), "{took:?}");
        net.limit_links(None);
        (dialled, accepted) = (d, acc);
        let (took, _, _) = cross(dialled, accepted, 4 << 20).await;
        assert!(took < std::time::Duration::from_millis(10), "{took:?}");
    }

    /// A silenced node's connections stay open and carry nothing, new ones too; healed,
    /// they carry what was written meanwhile.
    #[tokio::test]
    async fn a_silenced_node_carries_nothing_until_healed() {
        let net = MemoryNetwork::new();
        let (a, b) = (net.node(at(1)), net.node(at(2)));
        let mut listener = a.listen(at(1)).await.unwrap();
        let mut dialled = b.dial(&at(1).to_string()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        // Bytes in the pipe when the node goes silent are not delivered either.
        dialled.write_all(b"pre!").await.unwrap();
        net.silence(at(1));
        let quiet = std::time::Duration::from_millis(100);
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(quiet, accepted.read_exact(&mut buf))
                .await
                .is_err(),
            "a read got bytes through a silenced link"
        );
        assert!(
            tokio::time::timeout(quiet, dialled.write_all(b"ping"))
                .await
                .is_err(),
            "a write went through a silenced link"
        );
        // Links between other nodes carry on.
        let (c, d) = (net.node(at(3)), net.node(at(4)));
        let mut to_d_listener = d.listen(at(4)).await.unwrap();
        let mut to_d = c.dial(&at(4).to_string()).await.unwrap();
        let (mut at_d, _) = to_d_listener.accept().await.unwrap();
        to_d.write_all(b"c->d").await.unwrap();
        at_d.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"c->d");
        // A new connection is made, and is silent too.
        let mut late = b.dial(&at(1).to_string()).await.unwrap();
        let (mut late_accepted, _) = listener.accept().await.unwrap();
        assert!(
            tokio::time::timeout(quiet, late.write_all(b"late"))
                .await
                .is_err()
        );
        // A read parked on the silent link is woken by the heal (as tonic's connection task
        // is: nothing polls it again otherwise).
        let parked = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            accepted.read_exact(&mut buf).await.map(|_| (buf, accepted))
        });
        tokio::time::sleep(quiet).await;
        net.heal();
        let patience = std::time::Duration::from_secs(10);
        let (got, mut accepted) = tokio::time::timeout(patience, parked)
            .await
            .expect("the parked read is woken by the heal")
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"pre!");
        tokio::time::timeout(patience, async {
            dialled.write_all(b"ping").await.unwrap();
            accepted.read_exact(&mut buf).await.unwrap();
        })
        .await
        .expect("healed, the link carries bytes again");
        assert_eq!(&buf, b"ping");
        tokio::time::timeout(patience, async {
            late.write_all(b"late").await.unwrap();
            late_accepted.read_exact(&mut buf).await.unwrap();
        })
        .await
        .expect("and so does the one made while silent");
        assert_eq!(&buf, b"late");
    }

    #[tokio::test]
    async fn nothing_listening_is_refused_and_a_closed_listener_frees_its_address() {
        let net = MemoryNetwork::new();
        let a = net.node(at(1));
        assert_eq!(
            a.dial(&at(9).to_string()).await.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
        drop(a.listen(at(1)).await.unwrap());
        assert_eq!(
            net.node(at(2))
                .dial(&at(1).to_string())
                .await
                .err()
                .map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
        assert!(a.listen(at(1)).await.is_ok());
    }
}
