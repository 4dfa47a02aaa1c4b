//! A whole node on the simulated disk, with the power cut at random moments: between calls
//! and inside them (during a log append, an fsync, an engine write, a merge, a checkpoint's
//! log purge, the node's first start).
//!
//! Each client owns its keys and has at most one request in flight, so after a cut the state
//! of its keys must be exactly one state of its own history: with `--sync always` the state
//! after its last acknowledged write, or that plus the write in flight (whose outcome it never
//! learnt). Comparing whole states checks three things at once: every acknowledged write is
//! there with its value and expiry, a multi-key write (MSET, DEL of several keys, a batch; one
//! slot each, as a multi-key write must be) is all or nothing, and nothing unwritten appears. With `--sync everysec` the
//! state may be any one from the last completed sync onwards: that is the bound on what
//! everysec loses, and it checks that writes acknowledged before a sync began survive it.
//!
//! `CAIRN_NODE_POWER_CUT_SEEDS=N` runs N seeds (a few by default);
//! `CAIRN_NODE_POWER_CUT_SEED=S` replays one. A seed fixes the workload, the cut points and the
//! tears; thread interleavings stay the machine's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_io::sim::{Action, Fault, Op as IoOp, PowerCut, SimIo};
use cairn_server::config::SyncMode;
use cairn_server::slot::SlotMap;
use cairn_server::{
    BatchOp, Command, Condition, ExpireCondition, Expiry, Node, NodeOptions, Reply, StorageTuning,
};
use cairn_storage::now_ms;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeds per test in a normal run.
const SEEDS_DEFAULT: u64 = 3;
/// Power cuts per seed (the node is reopened on the surviving disk after each).
const ROUNDS: u64 = 4;
const CLIENTS: u64 = 4;
const SHARDS: u32 = 8;
/// String keys per client (SET, MSET, DEL, EXPIRE, batches), counters (INCRBY, DEL) and
/// volatile keys (SET with a TTL short enough to expire during the test, DEL).
const STRING_KEYS: u64 = 4;
const COUNTER_KEYS: u64 = 2;
const VOLATILE_KEYS: u64 = 2;
/// Acknowledged writes (over all clients) before a round arms its cut.
const WARMUP_ACKS: std::ops::Range<u64> = 5..60;
/// A cut aimed at the log fires within this many log writes and fdatasyncs.
const LOG_CUT_CALLS_MAX: u64 = 300;
/// A cut armed inside a call fires within this many disk-changing calls.
const CUT_CALLS_MAX: u64 = 2_500;
/// A cut armed during `open` fires within this many calls (an open makes roughly a hundred).
const OPEN_CUT_CALLS_MAX: u64 = 150;
/// Long TTLs never run out during the test; short ones do.
const LONG_TTL_MS: i64 = 3_600_000;
const SHORT_TTL_MS: std::ops::Range<i64> = 20..300;

const DATA_DIR: &str = "/sim/cairn-data";

fn node_options(io: &SimIo, sync: SyncMode) -> NodeOptions {
    NodeOptions {
        data_dir: DATA_DIR.into(),
        shards: SHARDS,
        value_bytes_max: 1 << 20,
        sync,
        grpc_addr: "127.0.0.1:1".parse().unwrap(),
        http_addr: "127.0.0.1:2".parse().unwrap(),
        resp_addr: "127.0.0.1:3".parse().unwrap(),
        io: Arc::new(io.clone()),
        // Small segments: the log rotates and is purged at checkpoints, engines rotate, write
        // hint files and merge, all while the power may go off.
        tuning: StorageTuning {
            wal_segment_bytes_max: 16 * 1024,
            engine_segment_bytes_max: 8 * 1024,
            log_checkpoint_bytes: cairn_server::node::LOG_BYTES_CHECKPOINT,
        },
        join: None,
        replicas: 3,
        replicas_only: false,
        down_after: std::time::Duration::from_secs(5),
        replace_down_after: std::time::Duration::from_secs(300),
        balance: cairn_server::balance::Limits::default(),
        move_bytes_per_sec: 0,
        split_shard_bytes: 0,
        watch_history: cairn_server::feed::FeedLimits::default(),
        follow_linger: cairn_server::node::FOLLOW_LINGER,
        clock: cairn_storage::clock::system(),
        network: Arc::new(cairn_raft::transport::Tcp),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

// ---- the model --------------------------------------------------------------------------

/// A key's value and expiry as a client knows them. A deadline the node chose is known only
/// within the window between sending the write and getting its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Val {
    value: Bytes,
    /// Absolute deadline in ms, between these bounds (inclusive), or none.
    deadline: Option<(u64, u64)>,
}

/// The state of one client's keys (absent keys are absent from the map).
type State = BTreeMap<Bytes, Val>;

/// One write a client sends.
#[derive(Debug, Clone)]
enum Op {
    Set {
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<i64>,
    },
    Del {
        keys: Vec<Bytes>,
    },
    Expire {
        key: Bytes,
        ttl_ms: i64,
    },
    IncrBy {
        key: Bytes,
        delta: i64,
    },
    MSet {
        pairs: Vec<(Bytes, Bytes)>,
    },
    Batch {
        ops: Vec<(Bytes, Option<Bytes>)>,
    },
}

impl Op {
    fn command(&self) -> Command {
        match self.clone() {
            Op::Set { key, value, ttl_ms } => Command::Set {
                key,
                value,
                expiry: ttl_ms.map_or(Expiry::Never, Expiry::InMs),
                condition: Condition::Always,
                return_old: false,
            },
            Op::Del { keys } => Command::Del { keys },
            Op::Expire { key, ttl_ms } => Command::Expire {
                key,
                expiry: Expiry::InMs(ttl_ms),
                condition: ExpireCondition::Always,
            },
            Op::IncrBy { key, delta } => Command::IncrBy { key, delta },
            Op::MSet { pairs } => Command::MSet { pairs, nx: false },
            Op::Batch { ops } => Command::Batch {
                ops: ops
                    .into_iter()
                    .map(|(key, value)| match value {
                        Some(value) => BatchOp::Put {
                            key,
                            value,
                            expiry: Expiry::Never,
                        },
                        None => BatchOp::Delete { key },
                    })
                    .collect(),
            },
        }
    }

    /// The state after this write, sent at `sent` and answered by `answered` (ms), and the
    /// integer reply it must get (INCRBY only).
    fn apply(&self, state: &State, sent: u64, answered: u64) -> (State, Option<i64>) {
        let mut next = state.clone();
        // A key whose deadline surely passed before the write is gone; one that may have
        // passed makes the outcome unpredictable, which the workload avoids (TTLs on volatile
        // keys are only ever replaced by SET and DEL, which do not read them).
        next.retain(|_, v| v.deadline.is_none_or(|(_, hi)| hi > sent));
        let window = |ttl: i64| {
            let ttl = ttl as u64;
            Some((sent + ttl, answered + ttl))
        };
        let mut reply = None;
        match self {
            Op::Set { key, value, ttl_ms } => {
                let deadline = ttl_ms.and_then(window);
                next.insert(
                    key.clone(),
                    Val {
                        value: value.clone(),
                        deadline,
                    },
                );
            }
            Op::Del { keys } => {
                for k in keys {
                    next.remove(k);
                }
            }
            Op::Expire { key, ttl_ms } => {
                if *ttl_ms <= 0 {
                    next.remove(key);
                } else if let Some(v) = next.get_mut(key) {
                    v.deadline = window(*ttl_ms);
                }
            }
            Op::IncrBy { key, delta } => {
                let old = next.get(key).map_or(0, |v| {
                    std::str::from_utf8(&v.value)
                        .unwrap()
                        .parse::<i64>()
                        .unwrap()
                });
                let new = old + delta;
                let deadline = next.get(key).and_then(|v| v.deadline);
                next.insert(
                    key.clone(),
                    Val {
                        value: b(&new.to_string()),
                        deadline,
                    },
                );
                reply = Some(new);
            }
            Op::MSet { pairs } => {
                for (k, v) in pairs {
                    next.insert(
                        k.clone(),
                        Val {
                            value: v.clone(),
                            deadline: None,
                        },
                    );
                }
            }
            Op::Batch { ops } => {
                for (k, v) in ops {
                    match v {
                        Some(v) => {
                            next.insert(
                                k.clone(),
                                Val {
                                    value: v.clone(),
                                    deadline: None,
                                },
                            );
                        }
                        None => {
                            next.remove(k);
                        }
                    }
                }
            }
        }
        (next, reply)
    }
}

/// One state of a client's history and the write that produced it.
#[derive(Debug, Clone)]
struct Step {
    /// Global event numbers at which the write was sent and answered (0 for the verified base
    /// state): a write answered before another was sent precedes it in the node's log.
    sent: u64,
    acked: u64,
    /// Shards the write touched.
    shards: Vec<usize>,
    state: State,
}

/// The write a client has in flight: the op, its send time (ms), its send event.
type InFlight = (Op, u64, u64);

/// One client: its keys, its history since the last verification, its write in flight.
#[derive(Debug)]
struct Client {
    id: u64,
    /// Every key the client may write (the universe checked for stray keys).
    keys: Vec<Bytes>,
    /// States after each acknowledged write since the last verification, oldest first;
    /// `history[0]` is the verified state.
    history: Vec<Step>,
    /// The write in flight when the power went off (sent, never answered with success).
    in_flight: Option<InFlight>,
    /// Writes acknowledged over the whole test.
    acked: u64,
    /// Counter for unique values.
    next_value: u64,
}

/// A client's keys share a hash tag: one slot, so every multi-key write of a client is a
/// single-shard write (atomic; across slots it would be CROSSSLOT). Clients pair up on a tag
/// (0 and 1, 2 and 3), so two clients' writes interleave in one shard's log and the everysec
/// check that a shard keeps a prefix of its writes across clients has something to compare.
fn client_key(client: u64, kind: char, i: u64) -> Bytes {
    b(&format!("{{p{}}}:c{client}:{kind}{i}", client / 2))
}

fn base_step(state: State) -> Step {
    Step {
        sent: 0,
        acked: 0,
        shards: Vec::new(),
        state,
    }
}

fn shard_of(key: &[u8]) -> usize {
    SlotMap::new(SHARDS).shard_of_key(key)
}

impl Op {
    /// Shards the write touches.
    fn shards(&self) -> Vec<usize> {
        let keys: Vec<&Bytes> = match self {
            Op::Set { key, .. } | Op::Expire { key, .. } | Op::IncrBy { key, .. } => vec![key],
            Op::Del { keys } => keys.iter().collect(),
            Op::MSet { pairs } => pairs.iter().map(|(k, _)| k).collect(),
            Op::Batch { ops } => ops.iter().map(|(k, _)| k).collect(),
        };
        let mut shards: Vec<usize> = keys.into_iter().map(|k| shard_of(k)).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

impl Client {
    fn new(id: u64) -> Client {
        let mut keys = Vec::new();
        for i in 0..STRING_KEYS {
            keys.push(client_key(id, 's', i));
        }
        for i in 0..COUNTER_KEYS {
            keys.push(client_key(id, 'n', i));
        }
        for i in 0..VOLATILE_KEYS {
            keys.push(client_key(id, 'v', i));
        }
        Client {
            id,
            keys,
            history: vec![base_step(State::new())],
            in_flight: None,
            acked: 0,
            next_value: 0,
        }
    }

    fn current(&self) -> &State {
        &self.history.last().expect("never empty").state
    }

    fn key(&self, kind: char, i: u64) -> Bytes {
        client_key(self.id, kind, i)
    }

    fn value(&mut self) -> Bytes {
        self.next_value += 1;
        b(&format!("c{}-{}", self.id, self.next_value))
    }

    fn next_op(&mut self, rng: &mut StdRng) -> Op {
        let s = |rng: &mut StdRng| rng.random_range(0..STRING_KEYS);
        match rng.random_range(0..100) {
            0..30 => {
                let key = self.key('s', s(rng));
                let ttl_ms = rng.random_bool(0.2).then_some(LONG_TTL_MS);
                Op::Set {
                    key,
                    value: self.value(),
                    ttl_ms,
                }
            }
            30..38 => Op::Set {
                key: self.key('v', rng.random_range(0..VOLATILE_KEYS)),
                value: self.value(),
                ttl_ms: Some(rng.random_range(SHORT_TTL_MS)),
            },
            38..48 => {
                let mut keys = vec![self.key('s', s(rng))];
                if rng.random_bool(0.5) {
                    keys.push(self.key('s', s(rng)));
                }
                if rng.random_bool(0.3) {
                    keys.push(self.key('v', rng.random_range(0..VOLATILE_KEYS)));
                }
                if rng.random_bool(0.2) {
                    keys.push(self.key('n', rng.random_range(0..COUNTER_KEYS)));
                }
                Op::Del { keys }
            }
            48..58 => Op::Expire {
                key: self.key('s', s(rng)),
                ttl_ms: if rng.random_bool(0.15) {
                    0
                } else {
                    LONG_TTL_MS
                },
            },
            58..75 => Op::IncrBy {
                key: self.key('n', rng.random_range(0..COUNTER_KEYS)),
                delta: rng.random_range(-5..50),
            },
            75..90 => {
                let mut pairs = Vec::new();
                for i in 0..STRING_KEYS {
                    if i == 0 || rng.random_bool(0.6) {
                        let v = self.value();
                        pairs.push((self.key('s', i), v));
                    }
                }
                Op::MSet { pairs }
            }
            _ => {
                let mut ops = Vec::new();
                for i in 0..STRING_KEYS {
                    if rng.random_bool(0.7) {
                        let v = rng.random_bool(0.75).then(|| self.value());
                        ops.push((self.key('s', i), v));
                    }
                }
                if ops.is_empty() {
                    ops.push((self.key('s', 0), Some(self.value())));
                }
                Op::Batch { ops }
            }
        }
    }
}

// ---- checking -----------------------------------------------------------------------------

/// What the node holds for one key: value and absolute expiry.
type Observed = Option<(Bytes, Option<u64>)>;

/// Whether `observed` (read between `read_lo` and `read_hi`) agrees with `expected`.
fn key_agrees(expected: Option<&Val>, observed: &Observed, read_lo: u64, read_hi: u64) -> bool {
    match expected {
        None => observed.is_none(),
        Some(val) => {
            let (may_have_expired, surely_expired) = match val.deadline {
                None => (false, false),
                Some((lo, hi)) => (lo <= read_hi, hi <= read_lo),
            };
            match observed {
                None => may_have_expired,
                Some((value, deadline)) => {
                    let deadline_ok = match (val.deadline, deadline) {
                        (None, None) => true,
                        // Within the window the node chose it in, and not already passed when
                        // the read began (an expired key is never served).
                        (Some((lo, hi)), Some(d)) => (lo..=hi).contains(d) && *d > read_lo,
                        _ => false,
                    };
                    !surely_expired && value == &val.value && deadline_ok
                }
            }
        }
    }
}

fn state_agrees(
    keys: &[Bytes],
    expected: &State,
    observed: &BTreeMap<Bytes, Observed>,
    read: (u64, u64),
) -> bool {
    keys.iter()
        .all(|k| key_agrees(expected.get(k), &observed[k], read.0, read.1))
}

/// For one client and one shard group: the oldest and newest of its steps the node's state
/// matches, and the group's keys.
type Matched = (usize, usize, Vec<Bytes>);

/// Whether two states differ on `keys`.
fn differ_on(keys: &[Bytes], a: &State, b: &State) -> bool {
    keys.iter().any(|k| a.get(k) != b.get(k))
}

async fn observe(node: &Node, keys: &[Bytes]) -> BTreeMap<Bytes, Observed> {
    let mut out = BTreeMap::new();
    for key in keys {
        let reply = node
            .execute(Command::Get { key: key.clone() })
            .await
            .expect("a read after recovery succeeds");
        let Reply::Entry(entry) = reply else {
            panic!("GET answered {reply:?}");
        };
        out.insert(key.clone(), entry.map(|e| (e.value, e.expires_at_ms)));
    }
    out
}

/// Checks every client's keys against its history and resets the history to what was found.
///
/// With `--sync always` a client's keys must match, all together, its newest state or that
/// plus its write in flight. With `everysec` any state kept in its history may be found (the
/// round's end pruned the history to the last completed sync), and only per shard: each
/// shard's keys match one state, so a multi-key write is atomic within a shard, and the shards
/// may stop at different states (the documented everysec bound). Across clients each shard must
/// still have kept a prefix of its writes: if a write is found that was sent after another
/// client's write to the same shard was acknowledged, that one must be found too.
async fn verify(node: &Node, clients: &mut [Client], sync: SyncMode, context: &str) {
    let read_lo = now_ms();
    let mut observed = Vec::new();
    for c in clients.iter() {
        observed.push(observe(node, &c.keys).await);
    }
    let read_hi = now_ms();
    // Nothing outside the clients' keys exists.
    let Reply::Keys(all) = node
        .execute(Command::Keys { pattern: b("*") })
        .await
        .unwrap()
    else {
        panic!("KEYS answered something else");
    };
    for key in all {
        assert!(
            clients.iter().any(|c| c.keys.contains(&key)),
            "{context}: key {key:?} was never written"
        );
    }
    // Per client: its steps (history, then the in-flight write's outcome) and, per shard
    // group, the range of steps the node's state matches.
    let mut steps_of: Vec<Vec<Step>> = Vec::new();
    let mut matched: Vec<BTreeMap<usize, Matched>> = Vec::new();
    for (c, seen) in clients.iter_mut().zip(&observed) {
        let mut steps = c.history.clone();
        if let Some((op, sent_ms, sent)) = &c.in_flight {
            // Its answer never came: it was decided some time before now.
            let (state, _) = op.apply(c.current(), *sent_ms, read_lo);
            steps.push(Step {
                sent: *sent,
                acked: u64::MAX,
                shards: op.shards(),
                state,
            });
        }
        let newest = c.history.len() - 1;
        let allowed: Vec<usize> = if sync == SyncMode::Always {
            (newest..steps.len()).collect()
        } else {
            (0..steps.len()).collect()
        };
        let mut groups: BTreeMap<usize, Vec<Bytes>> = BTreeMap::new();
        for k in &c.keys {
            let group = if sync == SyncMode::Always {
                0
            } else {
                shard_of(k)
            };
            groups.entry(group).or_default().push(k.clone());
        }
        let mut found = State::new();
        let mut ranges = BTreeMap::new();
        for (group, keys) in groups {
            let matching: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|&i| state_agrees(&keys, &steps[i].state, seen, (read_lo, read_hi)))
                .collect();
            let (Some(&lo), Some(&hi)) = (matching.first(), matching.last()) else {
                let candidates: Vec<&State> = allowed.iter().map(|&i| &steps[i].state).collect();
                panic!(
                    "{context}: client {} found {seen:#?}\nwhose keys {keys:?} match none of \
                     the states it may find (oldest first; the last is the in-flight write's \
                     outcome if it had one in flight: {:?}):\n{candidates:#?}",
                    c.id, c.in_flight
                );
            };
            for k in &keys {
                // What expired meanwhile is gone from the node too; a deadline is now known.
                if let (Some(v), Some((_, deadline))) = (steps[hi].state.get(k), &seen[k]) {
                    let deadline = deadline.map(|d| (d, d));
                    found.insert(
                        k.clone(),
                        Val {
                            deadline,
                            ..v.clone()
                        },
                    );
                }
            }
            ranges.insert(group, (lo, hi, keys));
        }
        c.history = vec![base_step(found)];
        c.in_flight = None;
        steps_of.push(steps);
        matched.push(ranges);
    }
    if sync == SyncMode::Always {
        return;
    }
    // Each shard kept a prefix of its writes, across clients.
    for (b_idx, b_ranges) in matched.iter().enumerate() {
        for (&shard, (b_lo, _, b_keys)) in b_ranges {
            // The newest write of B on this shard that the node surely has: the last one at or
            // before the oldest matching step that changed B's keys there.
            let b_steps = &steps_of[b_idx];
            let Some(k) = (1..=*b_lo).rev().find(|&k| {
                b_steps[k].shards.contains(&shard)
                    && differ_on(b_keys, &b_steps[k - 1].state, &b_steps[k].state)
            }) else {
                continue;
            };
            let b_sent = b_steps[k].sent;
            for (a_idx, a_ranges) in matched.iter().enumerate() {
                let Some((_, a_hi, a_keys)) = a_ranges.get(&shard) else {
                    continue;
                };
                if a_idx == b_idx {
                    continue;
                }
                let a_steps = &steps_of[a_idx];
                for i in 1..a_steps.len() {
                    let before = a_steps[i].acked < b_sent;
                    let changed = a_steps[i].shards.contains(&shard)
                        && differ_on(a_keys, &a_steps[i - 1].state, &a_steps[i].state);
                    assert!(
                        !(before && changed) || *a_hi >= i,
                        "{context}: shard {shard} kept client {}'s write {k} but lost client \
                         {}'s write {i}, acknowledged before it was sent: not a prefix",
                        clients[b_idx].id,
                        clients[a_idx].id
                    );
                }
            }
        }
    }
}

// ---- the test -----------------------------------------------------------------------------

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("CAIRN_NODE_POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("CAIRN_NODE_POWER_CUT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    let base: u64 = rand::random::<u32>().into();
    (base..base + n).collect()
}

/// Global event numbers (a send or an answer each take the next one), acknowledgements, and
/// the everysec durability mark.
#[derive(Debug)]
struct Events {
    next: AtomicU64,
    acked: AtomicU64,
    /// Every write answered before this event was answered before a sync that completed
    /// began.
    durable: AtomicU64,
}

impl Events {
    fn new() -> Events {
        Events {
            // 0 is the base state's.
            next: AtomicU64::new(1),
            acked: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct Totals {
    acked: u64,
    cuts_in_calls: u64,
    /// Cuts aimed at, and landed on, a log append or its fdatasync.
    cuts_in_log: u64,
    cuts_in_open: u64,
    /// Everysec rounds whose bound was in force (a sync completed before the cut).
    synced_rounds: u64,
}

async fn run_seed(seed: u64, sync: SyncMode) -> Totals {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut disk = SimIo::new(seed);
    // Every other seed gets a slow fsync: writes made while one runs are not covered by it.
    let sync_delay = Duration::from_micros(if seed % 2 == 0 { 0 } else { 200 });
    disk.set_sync_delay(sync_delay);
    disk.set_trace(true);
    let mut clients: Vec<Client> = (0..CLIENTS).map(Client::new).collect();
    let mut totals = Totals::default();
    for round in 0..=ROUNDS {
        let context = format!("seed {seed} ({sync:?}) round {round}");
        // Phase 1: open the node on the disk the last cut left, sometimes cutting the power
        // again while it opens (replay, torn-tail repair, first start of a fresh directory).
        let cut_in_open = round < ROUNDS && rng.random_bool(0.25);
        if cut_in_open {
            let calls = rng.random_range(0..OPEN_CUT_CALLS_MAX);
            disk.inject(
                Fault::new(IoOp::MUTATING, Action::PowerCut(PowerCut::Random)).after(calls),
            );
        }
        let opened = Node::open(node_options(&disk, sync)).await;
        let unfired = disk.clear_faults();
        let node = match opened {
            Ok(node) if disk.is_powered() => node,
            other => {
                assert!(
                    !disk.is_powered(),
                    "{context}: opening a crashed disk failed: {:?}\nrecent calls: {:#?}",
                    other.err(),
                    disk.recent_ops()
                );
                if let Ok(node) = other {
                    let _ = node.shutdown().await;
                }
                assert_eq!(unfired, 0);
                totals.cuts_in_open += 1;
                disk = disk.after_cut().expect("cut");
                continue;
            }
        };
        // An opened node serves nothing its log holds but its engines do not show yet.
        assert_log_applied(&node, &context);
        // Phase 2: everything the clients may expect is there, and nothing else.
        verify(&node, &mut clients, sync, &context).await;
        if round == ROUNDS {
            let _ = node.shutdown().await;
            break;
        }

        // Phase 3: clients write until the power goes off. Every third round (and with
        // everysec, never) the cut is aimed at a log append or its fdatasync and loses
        // whatever was not synced; otherwise it lands inside any disk-changing call, or
        // between calls.
        let events = Arc::new(Events::new());
        let in_log = sync == SyncMode::Always && round % 3 == 0;
        let inside_call = in_log || rng.random_bool(0.7);
        let warmup = rng.random_range(WARMUP_ACKS);
        let shared: Vec<Arc<Mutex<Client>>> =
            clients.drain(..).map(|c| Arc::new(Mutex::new(c))).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, client) in shared.iter().enumerate() {
            let (node, client, events) = (node.clone(), client.clone(), events.clone());
            let client_seed = seed ^ (round << 32) ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9);
            tasks.spawn(drive_client(node, client, events, client_seed));
        }
        // Background work the node does on its own, much more often than in production:
        // active expiry, and checkpoints (engine syncs, log purge) with always or the periodic
        // sync with everysec. (Everysec rounds run no checkpoints: they sync the engines too,
        // and would hide a sync that does not.)
        let background = {
            let (node, events, disk) = (node.clone(), events.clone(), disk.clone());
            let mut rng = StdRng::seed_from_u64(seed ^ round);
            let context = context.clone();
            tokio::spawn(async move {
                while disk.is_powered() {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1..15))).await;
                    if rng.random_bool(0.3) {
                        node.expire_cycle().await;
                    } else if sync == SyncMode::Always {
                        let _ = node.checkpoint().await;
                    } else {
                        let mark = events.next.load(Ordering::SeqCst);
                        match node.sync_log().await {
                            Ok(()) => {
                                events.durable.fetch_max(mark, Ordering::SeqCst);
                            }
                            Err(e) => assert!(
                                !disk.is_powered(),
                                "{context}: sync failed with the power on: {e}"
                            ),
                        }
                    }
                }
            })
        };
        // Every round checks acknowledged writes: the cut comes only after some (and a node
        // that refuses every write fails here instead of passing an empty round).
        while events.acked.load(Ordering::SeqCst) < warmup {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Some(done) = tasks.try_join_next() {
                done.unwrap();
                panic!("{context}: a client stopped before any cut: the node refused a write");
            }
        }
        if in_log {
            let calls = rng.random_range(0..LOG_CUT_CALLS_MAX);
            disk.inject(
                Fault::new(
                    &[IoOp::Write, IoOp::SyncData],
                    Action::PowerCut(PowerCut::DropUnsynced),
                )
                .on_path(format!("{DATA_DIR}/wal/"))
                .after(calls),
            );
        } else if inside_call {
            let calls = rng.random_range(0..CUT_CALLS_MAX);
            disk.inject(
                Fault::new(IoOp::MUTATING, Action::PowerCut(PowerCut::Random)).after(calls),
            );
        }
        if inside_call {
            while disk.is_powered() && !tasks.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(
                !disk.is_powered(),
                "{context}: every client stopped with the power on"
            );
            totals.cuts_in_calls += 1;
            totals.cuts_in_log += u64::from(in_log && disk.clear_faults() == 0);
        } else {
            let ms = rng.random_range(0..150);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            disk.power_cut(PowerCut::Random);
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        background.await.unwrap();
        let _ = node.shutdown().await;
        drop(node);
        clients = shared
            .into_iter()
            .map(|c| Arc::try_unwrap(c).expect("tasks ended").into_inner())
            .collect();
        totals.acked += clients.iter().map(|c| c.acked).sum::<u64>();
        disk = disk.after_cut().expect("the power is off");
        disk.set_sync_delay(sync_delay);
        disk.set_trace(true);
        if sync != SyncMode::Always {
            // The next verification may find any state from this mark on: the newest state
            // answered before a completed sync began must be there, or a newer one.
            let durable = events.durable.load(Ordering::SeqCst);
            totals.synced_rounds += u64::from(durable > 0);
            for c in &mut clients {
                let keep_from = c
                    .history
                    .iter()
                    .rposition(|step| step.acked < durable)
                    .unwrap_or(0);
                c.history.drain(..keep_from);
            }
        }
    }
    totals
}

/// One client: sends its writes one at a time until one fails (the power is off).
async fn drive_client(node: Arc<Node>, client: Arc<Mutex<Client>>, events: Arc<Events>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let op = client.lock().next_op(&mut rng);
        let sent_event = events.next.fetch_add(1, Ordering::SeqCst);
        let sent = now_ms();
        client.lock().in_flight = Some((op.clone(), sent, sent_event));
        let result = node.execute(op.command()).await;
        let answered = now_ms();
        let Ok(reply) = result else {
            // The outcome is unknown: it stays in flight, and the client stops.
            return;
        };
        {
            let mut c = client.lock();
            let (state, expect) = op.apply(c.current(), sent, answered);
            if let Some(n) = expect {
                assert_eq!(reply, Reply::Int(n), "client {} {op:?}", c.id);
            }
            let acked = events.next.fetch_add(1, Ordering::SeqCst);
            c.history.push(Step {
                sent: sent_event,
                acked,
                shards: op.shards(),
                state,
            });
            c.in_flight = None;
            c.acked += 1;
            events.acked.fetch_add(1, Ordering::SeqCst);
        }
        tokio::task::yield_now().await;
    }
}

async fn run(sync: SyncMode) {
    let mut all = Totals::default();
    let seeds = seeds();
    for &seed in &seeds {
        eprintln!("node power cut: seed {seed} ({sync:?})");
        let t = run_seed(seed, sync).await;
        all.acked += t.acked;
        all.cuts_in_calls += t.cuts_in_calls;
        all.cuts_in_log += t.cuts_in_log;
        all.cuts_in_open += t.cuts_in_open;
        all.synced_rounds += t.synced_rounds;
    }
    eprintln!(
        "node power cut ({sync:?}): {} seeds, {} acknowledged writes, {} cuts inside calls \
         ({} in a log append or fdatasync), {} during open, {} rounds after a completed sync",
        seeds.len(),
        all.acked,
        all.cuts_in_calls,
        all.cuts_in_log,
        all.cuts_in_open,
        all.synced_rounds
    );
    // The test cannot pass empty: the clients got acknowledgements to check, cuts landed
    // where acknowledged writes are at stake, and everysec's bound was in force.
    assert!(
        all.acked >= seeds.len() as u64 * 20,
        "only {} writes were acknowledged over {} seeds",
        all.acked,
        seeds.len()
    );
    match sync {
        SyncMode::Always => assert!(all.cuts_in_log > 0, "no cut landed in the log"),
        _ => assert!(all.synced_rounds > 0, "no round had a completed sync"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts_with_sync_always() {
    run(SyncMode::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everysec_loses_at_most_the_writes_since_the_last_sync() {
    run(SyncMode::Everysec).await;
}

/// The first start of a fresh data directory: a power cut right after `open` returns keeps
/// the directory, the log and every shard (their entries were fsynced in their parents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_directory_survives_a_power_cut_after_open() {
    let disk = SimIo::new(42);
    let node = Node::open(node_options(&disk, SyncMode::Always))
        .await
        .unwrap();
    node.execute(Command::Set {
        key: b("k"),
        value: b("v"),
        expiry: Expiry::Never,
        condition: Condition::Always,
        return_old: false,
    })
    .await
    .unwrap();
    let after = disk.power_cut(PowerCut::DropUnsynced);
    let _ = node.shutdown().await;
    let shards = (0..SHARDS).map(|i| format!("/shards/{i:05}"));
    for dir in ["", "/wal", "/shards"]
        .map(String::from)
        .into_iter()
        .chain(shards)
    {
        let path = format!("{DATA_DIR}{dir}");
        assert!(
            cairn_io::Io::exists(&after, Path::new(&path)).unwrap(),
            "{path} vanished: {:#?}",
            after.tree()
        );
    }
    let node = Node::open(node_options(&after, SyncMode::Always))
        .await
        .unwrap();
    let reply = node.execute(Command::Get { key: b("k") }).await.unwrap();
    let Reply::Entry(Some(entry)) = reply else {
        panic!("the acknowledged write is gone: {reply:?}");
    };
    assert_eq!(entry.value, b("v"));
    let _ = node.shutdown().await;
}

/// The shared log does not outgrow its checkpoint size, and a checkpoint leaves nothing
/// behind: every group's entries are purged, the metadata group's too. (Its entries, written
/// at the cluster's creation and with each placement report, were never checkpointed, then
/// checkpointed keeping 1000 entries behind, all it had: they kept every segment alive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_back_under_its_size_the_metadata_groups_entries_too() {
    let disk = SimIo::new(44);
    let mut options = node_options(&disk, SyncMode::Always);
    options.tuning.log_checkpoint_bytes = 64 * 1024;
    let node = Node::open(options).await.unwrap();
    let wal_segments = |disk: &SimIo| {
        disk.tree()
            .into_iter()
            .filter(|(path, _)| {
                path.starts_with(format!("{DATA_DIR}/wal"))
                    && path.extension().is_some_and(|e| e == "wal")
            })
            .count()
    };
    // The background work writes to the metadata group meanwhile (placement reports as the
    // shards grow), and checkpoints once the log passes 64 KiB.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(node.clone().run_background(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let meta_applied = |node: &Node| node.cluster_status().metadata.map_or(0, |m| m.raft.applied);
    let meta_at_start = meta_applied(&node);
    // 16 KiB segments: a few hundred writes of 1 KiB fill many, over 3 s.
    let mut most = 0;
    for i in 0..300 {
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            most = most.max(wal_segments(&disk));
        }
        node.execute(Command::Set {
            key: b(&format!("k{i}")),
            value: Bytes::from(vec![b'v'; 1024]),
            expiry: Expiry::Never,
            condition: Condition::Always,
            return_old: false,
        })
        .await
        .unwrap();
    }
    assert!(
        meta_applied(&node) > meta_at_start,
        "the metadata group wrote nothing while the shards grew"
    );
    // Back under 64 KiB (four segments) by itself.
    let shrunk = tokio::time::timeout(Duration::from_secs(10), async {
        while wal_segments(&disk) > 5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        shrunk.is_ok(),
        "the log stayed at {} segments of 16 KiB (at most {most} while writing) past its \
         64 KiB checkpoint size: {:#?}",
        wal_segments(&disk),
        disk.tree()
    );
    let _ = stop.send(true);
    background.await.unwrap();
    // (Nothing purged, the 300 KB would be about 20 segments.)
    assert!(most <= 12, "the log reached {most} segments of 16 KiB");
    node.checkpoint().await.unwrap();
    let after = wal_segments(&disk);
    assert!(
        after <= 2,
        "{after} log segments left after a checkpoint: {:#?}",
        disk.tree()
    );
    // What the purged log held is in the snapshots: after a power cut the node opens with
    // every write and its cluster map.
    let cut = disk.power_cut(PowerCut::DropUnsynced);
    let _ = node.shutdown().await;
    let node = Node::open(node_options(&cut, SyncMode::Always))
        .await
        .unwrap();
    for i in 0..300 {
        let reply = node
            .execute(Command::Get {
                key: b(&format!("k{i}")),
            })
            .await;
        assert!(
            matches!(&reply, Ok(Reply::Entry(Some(e))) if e.value.len() == 1024),
            "k{i} after the purge and a power cut: {reply:?}"
        );
    }
    assert_eq!(node.cluster_status().nodes.len(), 1);
    let _ = node.shutdown().await;
}

/// With `--sync everysec`, a write acknowledged before a sync survives a power cut that drops
/// everything unsynced; one acknowledged after it may be lost (the documented bound), but a
/// write is never half there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everysec_keeps_what_a_completed_sync_covered() {
    let disk = SimIo::new(43);
    let node = Node::open(node_options(&disk, SyncMode::Everysec))
        .await
        .unwrap();
    let set = |k: &str, v: &str| Command::Set {
        key: b(k),
        value: b(v),
        expiry: Expiry::Never,
        condition: Condition::Always,
        return_old: false,
    };
    node.execute(set("before", "1")).await.unwrap();
    node.execute(Command::MSet {
        pairs: vec![(b("{m}:a"), b("1")), (b("{m}:b"), b("1"))],
        nx: false,
    })
    .await
    .unwrap();
    node.sync_log().await.unwrap();
    node.execute(set("after", "2")).await.unwrap();
    let after = disk.power_cut(PowerCut::DropUnsynced);
    assert!(
        node.sync_log().await.is_err(),
        "a sync after the cut reports failure"
    );
    let _ = node.shutdown().await;
    let node = Node::open(node_options(&after, SyncMode::Everysec))
        .await
        .unwrap();
    for key in ["before", "{m}:a", "{m}:b"] {
        let reply = node.execute(Command::Get { key: b(key) }).await.unwrap();
        assert!(
            matches!(reply, Reply::Entry(Some(_))),
            "{key}, acknowledged before a completed sync, is gone"
        );
    }
    let _ = node.shutdown().await;
}

/// Every shard has applied every entry of its log: what `Node::open` waits for before serving.
fn assert_log_applied(node: &Node, context: &str) {
    // The engine's marker is what reads see; Raft's metrics are published a moment after the
    // state they describe, so the log's last index is the bound, not the applied metric.
    for s in node.shard_stats() {
        assert!(
            s.last_applied >= s.raft.last_log_index,
            "{context}: shard {} was opened with entries not yet applied: engine at {}, {:?}",
            s.shard,
            s.last_applied,
            s.raft
        );
    }
}
