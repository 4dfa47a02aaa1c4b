//! Per-connection state ([`Session`]) and what all RESP connections share ([`Shared`]): the
//! node, counters for `INFO`, and the registry behind `CLIENT LIST`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use cairn_resp::Protocol;
use parking_lot::Mutex;

use crate::node::Node;

/// One client connection's state.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub name: Option<Bytes>,
    pub protocol: Protocol,
    pub created: Instant,
    /// Lowercase name of the last command (for CLIENT INFO/LIST).
    pub last_command: &'static str,
    /// `READONLY` is on: reads are served by this node's replicas, possibly stale, and are
    /// never redirected (`READWRITE` turns it off).
    pub readonly: bool,
    /// Inside `MULTI`: the commands queued for `EXEC`.
    pub multi: Option<Multi>,
    /// Keys `WATCH`ed, with the version each had then (0: missing); `EXEC` runs only if
    /// every one still has it. Bounded by [`WATCHED_KEYS_MAX`].
    pub watched: Vec<(Bytes, u64)>,
    /// Channels and patterns subscribed to (`SUBSCRIBE`, `PSUBSCRIBE`); None until the first.
    pub subscriber: Option<crate::pubsub::Subscriber>,
    /// `CLIENT TRACKING` is on, with these options.
    pub tracking: Option<crate::resp::tracking::Options>,
    /// `CLIENT CACHING yes|no` for the next command only.
    pub caching: Option<bool>,
    /// Invalidations for this connection (its own tracking, or others' redirected here);
    /// None until it tracks or subscribes to `__redis__:invalidate`.
    pub invalidations: Option<tokio::sync::mpsc::Receiver<crate::tracking::Invalidation>>,
}

/// Most commands one `MULTI` queues, and most keys one connection watches.
pub const MULTI_COMMANDS_MAX: usize = crate::txn::EXEC_COMMANDS_MAX;
/// Most keys one connection watches.
pub const WATCHED_KEYS_MAX: usize = 4096;

/// A `MULTI` block being queued.
#[derive(Debug, Default)]
pub struct Multi {
    pub queued: Vec<Queued>,
    /// A command was refused while queuing (unknown, wrong arity, not allowed): `EXEC`
    /// answers `EXECABORT`.
    pub failed: bool,
}

/// One command queued by `MULTI`.
#[derive(Debug)]
pub enum Queued {
    /// A data command, run by `EXEC` as part of the transaction, rendered so.
    Node(crate::command::Command, crate::resp::render::Render),
    /// A reply already known (a connection command, or an argument error, which Redis also
    /// reports at `EXEC`).
    Ready(cairn_resp::Frame),
    /// PUBLISH, SPUBLISH or PUBSUB (its arguments), run when `EXEC` runs, if it does.
    PubSub(Vec<bytes::Bytes>),
}

impl Session {
    pub fn new(id: u64, addr: SocketAddr, local_addr: SocketAddr) -> Session {
        Session {
            id,
            addr,
            local_addr,
            name: None,
            protocol: Protocol::Resp2,
            created: Instant::now(),
            last_command: "NULL",
            readonly: false,
            multi: None,
            watched: Vec::new(),
            subscriber: None,
            tracking: None,
            caching: None,
            invalidations: None,
        }
    }

    /// Turn `READONLY` mode on or off.
    pub fn set_readonly(&mut self, shared: &Shared, readonly: bool) {
        self.readonly = readonly;
        shared.clients.update(self);
    }

    /// Set (or, with an empty name, clear) the connection name.
    pub fn set_name(&mut self, shared: &Shared, name: Bytes) {
        self.name = if name.is_empty() { None } else { Some(name) };
        shared.clients.update(self);
    }

    /// A `CLIENT LIST` line for this connection.
    pub fn describe(&self) -> String {
        let name = self
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let resp = if self.protocol == Protocol::Resp3 {
            3
        } else {
            2
        };
        // Redis's client flags: `r` for a READONLY connection, `N` for none.
        let flags = if self.readonly { "r" } else { "N" };
        format!(
            "id={} addr={} laddr={} fd=8 name={} age={} idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={}",
            self.id,
            self.addr,
            self.local_addr,
            name,
            self.created.elapsed().as_secs(),
            flags,
            self.last_command,
            resp
        )
    }
}

/// What the registry remembers of a connection between its commands.
#[derive(Debug, Clone)]
struct ClientRecord {
    addr: SocketAddr,
    local_addr: SocketAddr,
    name: Option<Bytes>,
    protocol: Protocol,
    created: Instant,
    readonly: bool,
}

/// Every open RESP connection, for `CLIENT LIST`.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Mutex<BTreeMap<u64, ClientRecord>>,
}

impl ClientRegistry {
    pub fn register(&self, session: &Session) {
        self.update(session);
    }

    pub fn update(&self, session: &Session) {
        self.clients.lock().insert(
            session.id,
            ClientRecord {
                addr: session.addr,
                local_addr: session.local_addr,
                name: session.name.clone(),
                protocol: session.protocol,
                created: session.created,
                readonly: session.readonly,
            },
        );
    }

    pub fn remove(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    /// Whether connection `id` is open.
    pub fn exists(&self, id: u64) -> bool {
        self.clients.lock().contains_key(&id)
    }

    /// `CLIENT LIST` lines; the caller's own line is built from its live session.
    pub fn describe_all(&self, me: &Session) -> Vec<String> {
        let clients = self.clients.lock().clone();
        clients
            .into_iter()
            .map(|(id, r)| {
                if id == me.id {
                    return me.describe();
                }
                let mut s = Session::new(id, r.addr, r.local_addr);
                s.name = r.name;
                s.protocol = r.protocol;
                s.created = r.created;
                s.readonly = r.readonly;
                s.describe()
            })
            .collect()
    }
}

/// Counters for `INFO`.
#[derive(Debug, Default)]
pub struct RespStats {
    pub connected: AtomicUsize,
    pub connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub commands_processed: AtomicU64,
    pub errors: AtomicU64,
    pub next_client_id: AtomicU64,
}

impl RespStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// State shared by every RESP connection.
#[derive(Debug)]
pub struct Shared {
    pub node: Arc<Node>,
    pub stats: RespStats,
    pub clients: ClientRegistry,
    pub max_connections: usize,
    /// `--resp-redirect`: answer `MOVED` for keys another node leads instead of forwarding.
    pub redirect: bool,
    /// Client-side caching: who cached which keys, fed by the change feed.
    pub tracking: Arc<crate::tracking::Tracking>,
    /// Keyspace notifications (`notify-keyspace-events`), fed by the change feed.
    pub notifier: Arc<crate::notify::Notifier>,
}
