//! Replies about the server itself: `COMMAND` and `INFO` (`CLUSTER` is in
//! [`crate::resp::cluster`]).

use std::fmt::Write as _;

use bytes::Bytes;
use cairn_resp::{Frame, Protocol};

use crate::resp::session::{RespStats, Shared};
use crate::resp::table::{self, COMMANDS, CommandSpec};

/// The Redis version Cairn reports in HELLO and INFO. Its string commands answer as 7.x's
/// do; 7.4 because clients gate features on it (redis-py turns on client-side caching only
/// for servers of 7.4 or later).
pub const REDIS_VERSION: &str = "7.4.0";

fn bulk(s: impl Into<String>) -> Frame {
    Frame::Bulk(Bytes::from(s.into()))
}

fn simple(s: &str) -> Frame {
    Frame::Simple(Bytes::copy_from_slice(s.as_bytes()))
}

/// A text reply: a bulk string in RESP2, a verbatim `txt` string in RESP3 (as Redis's INFO).
pub fn verbatim(text: String, protocol: Protocol) -> Frame {
    match protocol {
        Protocol::Resp2 => Frame::Bulk(Bytes::from(text)),
        Protocol::Resp3 => Frame::Verbatim {
            format: *b"txt",
            text: Bytes::from(text),
        },
    }
}

fn info_entry(spec: &CommandSpec) -> Frame {
    let name = spec.name.split_once('|').map_or(spec.name, |_| spec.name);
    let subcommands = if table::is_container(spec.name) {
        table::subcommands_of(spec.name).map(info_entry).collect()
    } else {
        Vec::new()
    };
    Frame::Array(vec![
        bulk(name),
        Frame::Integer(i64::from(spec.arity)),
        Frame::Set(spec.flags.iter().map(|f| simple(f)).collect()),
        Frame::Integer(i64::from(spec.first_key)),
        Frame::Integer(i64::from(spec.last_key)),
        Frame::Integer(i64::from(spec.step)),
        Frame::Set(spec.categories().into_iter().map(|c| simple(&c)).collect()),
        Frame::Array(Vec::new()),
        Frame::Array(Vec::new()),
        Frame::Array(subcommands),
    ])
}

fn doc_entry(spec: &CommandSpec) -> Frame {
    let mut doc = vec![
        (bulk("summary"), bulk(spec.summary)),
        (bulk("since"), bulk(spec.since)),
        (bulk("group"), bulk(spec.group)),
    ];
    if table::is_container(spec.name) {
        let subs = table::subcommands_of(spec.name)
            .map(|s| (bulk(s.name), doc_entry(s)))
            .collect();
        doc.push((bulk("subcommands"), Frame::Map(subs)));
    }
    Frame::Map(doc)
}

fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    match name.split_once('|') {
        Some((container, sub)) => table::lookup_sub(container, sub),
        None => table::lookup(&name),
    }
}

/// `COMMAND`, `COMMAND COUNT|INFO|DOCS|LIST|GETKEYS`.
pub fn command(args: &[Bytes], _protocol: Protocol) -> Frame {
    let Some(sub) = args.get(1) else {
        return Frame::Array(COMMANDS.iter().map(info_entry).collect());
    };
    let sub_name = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let Some(spec) = table::lookup_sub("command", &sub_name) else {
        return Frame::Error(Bytes::from(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )));
    };
    if !spec.arity_ok(args.len()) {
        return Frame::Error(Bytes::from(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        )));
    }
    let names = &args[2..];
    match sub_name.as_str() {
        "count" => Frame::Integer(COMMANDS.len() as i64),
        "info" => {
            if names.is_empty() {
                return Frame::Array(COMMANDS.iter().map(info_entry).collect());
            }
            Frame::Array(
                names
                    .iter()
                    .map(|n| find(n).map_or(Frame::Null, info_entry))
                    .collect(),
            )
        }
        "docs" => {
            let specs: Vec<&CommandSpec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| find(n)).collect()
            };
            Frame::Map(
                specs
                    .into_iter()
                    .map(|s| (bulk(s.name), doc_entry(s)))
                    .collect(),
            )
        }
        "list" => Frame::Array(COMMANDS.iter().map(|c| bulk(c.name)).collect()),
        "getkeys" => getkeys(names),
        _ => Frame::Error(Bytes::from_static(b"ERR unhandled subcommand")),
    }
}

fn getkeys(command: &[Bytes]) -> Frame {
    let Some(spec) = find(&command[0]) else {
        return Frame::Error(Bytes::from_static(b"ERR Invalid command specified"));
    };
    if !spec.arity_ok(command.len()) {
        return Frame::Error(Bytes::from_static(
            b"ERR Invalid number of arguments specified for command",
        ));
    }
    if spec.first_key == 0 {
        return Frame::Error(Bytes::from_static(b"ERR The command has no key arguments"));
    }
    let last = if spec.last_key < 0 {
        command.len() as i32 + spec.last_key
    } else {
        spec.last_key
    };
    let keys = (spec.first_key..=last)
        .step_by(spec.step.max(1) as usize)
        .filter_map(|i| command.get(i as usize).cloned())
        .map(Frame::Bulk)
        .collect();
    Frame::Array(keys)
}

/// Sections `INFO` prints without arguments (and with `default`).
const DEFAULT_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "persistence",
    "stats",
    "replication",
    "cluster",
    "keyspace",
];

/// `INFO [section ...]`.
pub fn info(args: &[Bytes], protocol: Protocol, shared: &Shared) -> Frame {
    let wanted: Vec<String> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.iter().any(|w| w == "all" || w == "everything");
    let sections: Vec<&str> = DEFAULT_SECTIONS
        .iter()
        .copied()
        .filter(|s| all || wanted.is_empty() || wanted.iter().any(|w| w == s || w == "default"))
        .collect();
    let mut text = String::new();
    for (i, section) in sections.iter().enumerate() {
        if i > 0 {
            text.push_str("\r\n");
        }
        section_text(section, shared, &mut text);
    }
    verbatim(text, protocol)
}

fn kv(out: &mut String, key: &str, value: &dyn std::fmt::Display) {
    let _ = write!(out, "{key}:{value}\r\n");
}

fn section_text(section: &str, shared: &Shared, out: &mut String) {
    let node = &shared.node;
    let stats = &shared.stats;
    match section {
        "server" => {
            let uptime = node.uptime().as_secs();
            out.push_str("# Server\r\n");
            kv(out, "redis_version", &REDIS_VERSION);
            kv(out, "redis_mode", &"cluster");
            kv(out, "cairn_version", &env!("CARGO_PKG_VERSION"));
            kv(out, "os", &std::env::consts::OS);
            kv(out, "arch_bits", &64);
            kv(out, "process_id", &std::process::id());
            kv(out, "run_id", &node.id());
            kv(out, "tcp_port", &node.options().resp_addr.port());
            kv(out, "uptime_in_seconds", &uptime);
            kv(out, "uptime_in_days", &(uptime / 86400));
        }
        "clients" => {
            out.push_str("# Clients\r\n");
            kv(
                out,
                "connected_clients",
                &stats.connected.load(std::sync::atomic::Ordering::Relaxed),
            );
            kv(out, "maxclients", &shared.max_connections);
            kv(out, "blocked_clients", &0);
        }
        "persistence" => {
            out.push_str("# Persistence\r\n");
            kv(out, "loading", &0);
            kv(out, "aof_enabled", &1);
            kv(
                out,
                "cairn_sync",
                &format!("{:?}", node.options().sync).to_lowercase(),
            );
            kv(
                out,
                "cairn_write_failure",
                &node.failure().unwrap_or_else(|| "none".to_string()),
            );
        }
        "stats" => {
            out.push_str("# Stats\r\n");
            kv(
                out,
                "total_connections_received",
                &RespStats::get(&stats.connections_received),
            );
            kv(
                out,
                "total_commands_processed",
                &RespStats::get(&stats.commands_processed),
            );
            kv(
                out,
                "rejected_connections",
                &RespStats::get(&stats.rejected_connections),
            );
            kv(out, "total_error_replies", &RespStats::get(&stats.errors));
        }
        "replication" => {
            out.push_str("# Replication\r\n");
            kv(out, "role", &"master");
            kv(out, "connected_slaves", &0);
        }
        "cluster" => {
            out.push_str("# Cluster\r\n");
            kv(out, "cluster_enabled", &1);
        }
        "keyspace" => {
            out.push_str("# Keyspace\r\n");
            let keys = node.dbsize();
            if keys > 0 {
                let expires: u64 = node
                    .shards()
                    .list()
                    .iter()
                    .map(|s| s.expiry.index.lock().len() as u64)
                    .sum();
                kv(
                    out,
                    "db0",
                    &format!("keys={keys},expires={expires},avg_ttl=0"),
                );
            }
        }
        _ => {}
    }
}
