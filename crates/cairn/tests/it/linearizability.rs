//! Concurrent clients' histories checked for linearizability (cairn-lincheck, per key).
//!
//! Several redis clients SET (unique values; half of them `SET … GET`, whose answer is the
//! value replaced), GET and DEL (whose count says whether there was a value) a few shared keys
//! at once, each recording when it sent a command and when the answer came. Answers that
//! depend on the state (GET, SET … GET, DEL) make the proposer's evaluation against writes
//! still in flight part of what is checked. Every key's history must have a
//! sequential order consistent with real time: no stale read, no read of a write before it
//! could have happened, no acknowledged write lost. `CAIRN_LINEARIZABILITY_OPS` sets the
//! operations per client (default a short run for CI).

use std::time::Instant;

use cairn_lincheck::{
    Operation, RegisterInput, RegisterModel, RegisterOutput, Verdict, check_partitioned,
};
use rand::{Rng, SeedableRng};

use crate::support::Node;

const CLIENTS: u64 = 6;
const KEYS: usize = 3;
const OPS_DEFAULT: usize = 300;

type Op = Operation<RegisterInput<u64>, RegisterOutput<u64>>;

fn ops_per_client() -> usize {
    std::env::var("CAIRN_LINEARIZABILITY_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(OPS_DEFAULT)
}

/// One client's history: (key, operation).
fn run_client(node_addr: std::net::SocketAddr, client: u64, start: Instant) -> Vec<(usize, Op)> {
    let mut conn = crate::support::RawConn::connect(node_addr);
    let mut rng = rand::rngs::StdRng::seed_from_u64(client);
    let mut history = Vec::new();
    for seq in 0..ops_per_client() as u64 {
        let key = rng.random_range(0..KEYS);
        let name = format!("lin:{key}");
        let value = client * 1_000_000 + seq;
        let input = match rng.random_range(0..10) {
            0..=3 => RegisterInput::Read,
            4..=8 => RegisterInput::Write(value),
            _ => RegisterInput::Delete,
        };
        let swap = rng.random_bool(0.5);
        let call = start.elapsed().as_nanos() as u64;
        let reply = match &input {
            RegisterInput::Read => conn.cmd(&[b"GET", name.as_bytes()]),
            RegisterInput::Write(v) if swap => {
                conn.cmd(&[b"SET", name.as_bytes(), v.to_string().as_bytes(), b"GET"])
            }
            RegisterInput::Write(v) => {
                conn.cmd(&[b"SET", name.as_bytes(), v.to_string().as_bytes()])
            }
            RegisterInput::Delete => conn.cmd(&[b"DEL", name.as_bytes()]),
        };
        let ret = start.elapsed().as_nanos() as u64;
        let reply = String::from_utf8(reply).expect("utf-8 reply");
        // A healthy node answers every command (a fault test would record an error as an
        // unknown outcome: `RegisterOutput::Unknown` with `UNKNOWN_RETURN`).
        assert!(!reply.starts_with('-'), "client {client}: {reply}");
        let bulk = |reply: &str| -> Option<u64> {
            (reply != "$-1\r\n").then(|| {
                let v = reply.split("\r\n").nth(1).expect("bulk string");
                v.parse().expect("a value a client wrote")
            })
        };
        let output = match &input {
            RegisterInput::Read => RegisterOutput::Read(bulk(&reply)),
            RegisterInput::Write(_) if swap => RegisterOutput::Replaced(bulk(&reply)),
            RegisterInput::Write(_) => {
                assert_eq!(reply, "+OK\r\n");
                RegisterOutput::Done
            }
            RegisterInput::Delete => match reply.as_str() {
                ":0\r\n" => RegisterOutput::Deleted(false),
                ":1\r\n" => RegisterOutput::Deleted(true),
                other => panic!("DEL answered {other:?}"),
            },
        };
        history.push((
            key,
            Operation {
                client,
                input,
                output,
                call,
                ret,
            },
        ));
    }
    history
}

#[test]
fn concurrent_clients_see_a_linearizable_register_per_key() {
    let node = Node::start();
    let start = Instant::now();
    let addr = node.resp_addr;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| std::thread::spawn(move || run_client(addr, client, start)))
        .collect();
    let recorded: Vec<(usize, Op)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    assert_eq!(recorded.len(), CLIENTS as usize * ops_per_client());
    let keys: Vec<usize> = recorded.iter().map(|(k, _)| *k).collect();
    let history: Vec<Op> = recorded.into_iter().map(|(_, op)| op).collect();
    let verdict = check_partitioned(&RegisterModel::<u64>::default(), &history, |i, _| keys[i]);
    match verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { longest } => {
            let key = keys[longest.first().copied().unwrap_or(0)];
            let mut ops: Vec<&Op> = history
                .iter()
                .zip(&keys)
                .filter(|(_, k)| **k == key)
                .map(|(op, _)| op)
                .collect();
            ops.sort_by_key(|op| op.call);
            panic!(
                "key lin:{key} is not linearizable; its history by call time:\n{ops:#?}\n\
                 longest linearizable prefix found: {longest:?}"
            );
        }
        Verdict::Unknown => panic!("the checker ran out of budget"),
    }
}
