//! `CONFIG GET`, `CONFIG SET`, `CONFIG RESETSTAT` and `CONFIG REWRITE` with Redis's replies.
//! One parameter can be set at run time, `notify-keyspace-events` (per node, as in Redis
//! Cluster: [`crate::notify`]); the others are read-only views of how the node runs, for the
//! clients that ask (redis-benchmark reads `save` and `appendonly`, redis-py's cluster client
//! and many tools read `cluster-enabled`, `maxmemory`, …).

use bytes::Bytes;
use cairn_resp::Frame;
use cairn_resp::glob::string_match;

use crate::config::SyncMode;
use crate::resp::session::{Session, Shared};

fn err(text: String) -> Frame {
    Frame::Error(Bytes::from(text))
}

/// Every parameter CONFIG GET knows, with its value now.
fn parameters(shared: &Shared) -> Vec<(&'static str, String)> {
    let options = shared.node.options();
    let appendfsync = match options.sync {
        SyncMode::Always => "always",
        SyncMode::Everysec => "everysec",
        SyncMode::Never => "no",
    };
    vec![
        ("appendfsync", appendfsync.to_string()),
        // Every write goes to the write-ahead log: Redis's closest mode is the AOF.
        ("appendonly", "yes".to_string()),
        ("bind", options.resp_addr.ip().to_string()),
        ("cluster-enabled", "yes".to_string()),
        ("databases", "1".to_string()),
        ("maxclients", shared.max_connections.to_string()),
        ("maxmemory", "0".to_string()),
        ("maxmemory-policy", "noeviction".to_string()),
        (
            "notify-keyspace-events",
            crate::notify::format(shared.notifier.flags()),
        ),
        ("port", options.resp_addr.port().to_string()),
        ("proto-max-bulk-len", options.value_bytes_max.to_string()),
        ("save", String::new()),
    ]
}

/// Whether `CONFIG SET …` (`args[0]` is `CONFIG`) turns keyspace or keyevent notifications
/// on: its answer waits for the node's whole-keyspace watch to stand.
pub fn turns_on_notifications(args: &[Bytes]) -> bool {
    args.get(2..).is_some_and(|pairs| {
        pairs.chunks(2).any(|pair| {
            pair.len() == 2
                && pair[0].eq_ignore_ascii_case(b"notify-keyspace-events")
                && crate::notify::parse(&pair[1]).is_some_and(|flags| {
                    flags & (crate::notify::KEYSPACE | crate::notify::KEYEVENT) != 0
                })
        })
    })
}

/// `CONFIG subcommand …` (`args[0]` is `CONFIG`).
pub fn config(args: &[Bytes], session: &mut Session, shared: &Shared) -> Frame {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let Some(spec) = crate::resp::table::lookup_sub("config", &sub) else {
        return err(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(&args[1])
        ));
    };
    if !spec.arity_ok(args.len()) {
        return err(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    session.last_command = spec.name;
    match sub.as_str() {
        "get" => {
            let params = parameters(shared);
            let mut pairs = Vec::new();
            for (name, value) in &params {
                if args[2..]
                    .iter()
                    .any(|pattern| string_match(pattern, name.as_bytes(), true))
                {
                    pairs.push((
                        Frame::Bulk(Bytes::from_static(name.as_bytes())),
                        Frame::Bulk(Bytes::from(value.clone())),
                    ));
                }
            }
            Frame::Map(pairs)
        }
        "set" => {
            if args.len() % 2 != 0 {
                return err(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            let known = parameters(shared);
            let mut flags = None;
            for pair in args[2..].chunks(2) {
                let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
                if name == "notify-keyspace-events" {
                    match crate::notify::parse(&pair[1]) {
                        Some(parsed) => flags = Some(parsed),
                        None => {
                            return err(format!(
                                "ERR CONFIG SET failed (possibly related to argument '{name}') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'."
                            ));
                        }
                    }
                } else if known.iter().any(|(n, _)| *n == name) {
                    return err(format!(
                        "ERR CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config"
                    ));
                } else {
                    return err(format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                        String::from_utf8_lossy(&pair[0])
                    ));
                }
            }
            if let Some(flags) = flags {
                if flags & (crate::notify::KEYSPACE | crate::notify::KEYEVENT) != 0 {
                    // The answer waits for it to stand (`Action::Standing`).
                    shared.notifier.start(&shared.node);
                }
                shared.notifier.set_flags(flags);
            }
            Frame::ok()
        }
        "resetstat" => Frame::ok(),
        "rewrite" => err("ERR The server is running without a config file".to_string()),
        _ => err("ERR unhandled subcommand".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    /// Only a `CONFIG SET` that turns keyspace or keyevent notifications on waits for the
    /// node's whole-keyspace watch to stand.
    #[test]
    fn only_turning_notifications_on_waits_for_the_keyspace_watch() {
        assert!(turns_on_notifications(&args(
            "CONFIG SET notify-keyspace-events KA"
        )));
        assert!(turns_on_notifications(&args(
            "config set NOTIFY-KEYSPACE-EVENTS E$"
        )));
        assert!(turns_on_notifications(&args(
            "CONFIG SET maxmemory 0 notify-keyspace-events Kx"
        )));
        // Off, classes with neither K nor E, a bad value, another parameter, a bare name.
        assert!(!turns_on_notifications(&args(
            "CONFIG SET notify-keyspace-events "
        )));
        assert!(!turns_on_notifications(&args(
            "CONFIG SET notify-keyspace-events A"
        )));
        assert!(!turns_on_notifications(&args(
            "CONFIG SET notify-keyspace-events Kq"
        )));
        assert!(!turns_on_notifications(&args("CONFIG SET maxmemory 0")));
        assert!(!turns_on_notifications(&args(
            "CONFIG SET notify-keyspace-events"
        )));
        assert!(!turns_on_notifications(&args("CONFIG GET")));
    }
}
