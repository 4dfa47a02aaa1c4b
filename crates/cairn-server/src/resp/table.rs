//! The table of Redis commands the RESP front end knows: name, arity and key positions as
//! Redis declares them. It drives arity checks (`ERR wrong number of arguments …`) and the
//! `COMMAND` family, which cluster clients use to find the keys of a command.

/// One command as `COMMAND INFO` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lowercase name (`client|setname` for subcommands).
    pub name: &'static str,
    /// Redis arity: exact argument count including the name when positive, minimum when
    /// negative.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub group: &'static str,
    pub summary: &'static str,
    pub since: &'static str,
}

impl CommandSpec {
    /// Whether `argc` (including the command name) satisfies the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Whether the command only reads (Redis's `readonly` flag): a `READONLY` connection may
    /// serve it from this node's replica.
    pub fn is_read(&self) -> bool {
        self.flags.contains(&"readonly")
    }

    /// ACL categories, derived from the flags and group (for `COMMAND INFO`).
    pub fn categories(&self) -> Vec<String> {
        let mut cats = Vec::new();
        if self.flags.contains(&"write") {
            cats.push("@write".to_string());
        }
        if self.flags.contains(&"readonly") {
            cats.push("@read".to_string());
        }
        cats.push(format!(
            "@{}",
            self.group
                .replace("generic", "keyspace")
                .replace("server", "admin")
        ));
        if self.flags.contains(&"fast") {
            cats.push("@fast".to_string());
        } else {
            cats.push("@slow".to_string());
        }
        cats
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WD: &[&str] = &["write"];
const WDF: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const C: &[&str] = &["noscript", "loading", "stale", "fast"];
const CS: &[&str] = &["noscript", "loading", "stale"];
const X: &[&str] = &[];
const PS: &[&str] = &["pubsub", "noscript", "loading", "stale"];
const PSF: &[&str] = &["pubsub", "loading", "stale", "fast"];

const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
    group: &'static str,
    summary: &'static str,
    since: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        group,
        summary,
        since,
    }
}

const NONE: (i32, i32, i32) = (0, 0, 0);
const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL: (i32, i32, i32) = (1, -1, 1);

/// Every top-level command, sorted by name.
pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "append",
        3,
        WF,
        ONE,
        "string",
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
        "2.0.0",
    ),
    spec(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        NONE,
        "connection",
        "Authenticates the connection.",
        "1.0.0",
    ),
    spec(
        "bitcount",
        -2,
        R,
        ONE,
        "bitmap",
        "Counts the number of set bits (population counting) in a string.",
        "2.6.0",
    ),
    spec(
        "bitpos",
        -3,
        R,
        ONE,
        "bitmap",
        "Finds the first set (1) or clear (0) bit in a string.",
        "2.8.7",
    ),
    spec(
        "client",
        -2,
        X,
        NONE,
        "connection",
        "A container for client connection commands.",
        "2.4.0",
    ),
    spec(
        "cluster",
        -2,
        X,
        NONE,
        "cluster",
        "A container for Redis Cluster commands.",
        "3.0.0",
    ),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns detailed information about all commands.",
        "2.8.13",
    ),
    spec(
        "config",
        -2,
        X,
        NONE,
        "server",
        "A container for server configuration commands.",
        "2.0.0",
    ),
    spec(
        "copy",
        -3,
        W,
        (1, 2, 1),
        "generic",
        "Copies the value of a key to a new key.",
        "6.2.0",
    ),
    spec(
        "dbsize",
        1,
        RF,
        NONE,
        "server",
        "Returns the number of keys in the database.",
        "1.0.0",
    ),
    spec(
        "decr",
        2,
        WF,
        ONE,
        "string",
        "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
    ),
    spec(
        "decrby",
        3,
        WF,
        ONE,
        "string",
        "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
    ),
    spec(
        "del",
        -2,
        WD,
        ALL,
        "generic",
        "Deletes one or more keys.",
        "1.0.0",
    ),
    spec(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        NONE,
        "transactions",
        "Discards a transaction.",
        "2.0.0",
    ),
    spec(
        "echo",
        2,
        &["fast"],
        NONE,
        "connection",
        "Returns the given string.",
        "1.0.0",
    ),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NONE,
        "transactions",
        "Executes all commands in a transaction.",
        "1.2.0",
    ),
    spec(
        "exists",
        -2,
        RF,
        ALL,
        "generic",
        "Determines whether one or more keys exist.",
        "1.0.0",
    ),
    spec(
        "expire",
        -3,
        WDF,
        ONE,
        "generic",
        "Sets the expiration time of a key in seconds.",
        "1.0.0",
    ),
    spec(
        "expireat",
        -3,
        WDF,
        ONE,
        "generic",
        "Sets the expiration time of a key to a Unix timestamp.",
        "1.2.0",
    ),
    spec(
        "expiretime",
        2,
        RF,
        ONE,
        "generic",
        "Returns the expiration time of a key as a Unix timestamp.",
        "7.0.0",
    ),
    spec(
        "flushall",
        -1,
        WD,
        NONE,
        "server",
        "Removes all keys from all databases.",
        "1.0.0",
    ),
    spec(
        "flushdb",
        -1,
        WD,
        NONE,
        "server",
        "Remove all keys from the current database.",
        "1.0.0",
    ),
    spec(
        "get",
        2,
        RF,
        ONE,
        "string",
        "Returns the string value of a key.",
        "1.0.0",
    ),
    spec(
        "getbit",
        3,
        RF,
        ONE,
        "bitmap",
        "Returns a bit value by offset.",
        "2.2.0",
    ),
    spec(
        "getdel",
        2,
        WDF,
        ONE,
        "string",
        "Returns the string value of a key after deleting the key.",
        "6.2.0",
    ),
    spec(
        "getex",
        -2,
        WDF,
        ONE,
        "string",
        "Returns the string value of a key after setting its expiration time.",
        "6.2.0",
    ),
    spec(
        "getrange",
        4,
        R,
        ONE,
        "string",
        "Returns a substring of the string stored at a key.",
        "2.4.0",
    ),
    spec(
        "getset",
        3,
        WF,
        ONE,
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
        "1.0.0",
    ),
    spec(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        NONE,
        "connection",
        "Handshakes with the Redis server.",
        "6.0.0",
    ),
    spec(
        "incr",
        2,
        WF,
        ONE,
        "string",
        "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
    ),
    spec(
        "incrby",
        3,
        WF,
        ONE,
        "string",
        "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
    ),
    spec(
        "incrbyfloat",
        3,
        WF,
        ONE,
        "string",
        "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
        "2.6.0",
    ),
    spec(
        "info",
        -1,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns information and statistics about the server.",
        "1.0.0",
    ),
    spec(
        "keys",
        2,
        R,
        NONE,
        "generic",
        "Returns all key names that match a pattern.",
        "1.0.0",
    ),
    spec(
        "lcs",
        -3,
        R,
        (1, 2, 1),
        "string",
        "Finds the longest common substring.",
        "7.0.0",
    ),
    spec(
        "mget",
        -2,
        RF,
        ALL,
        "string",
        "Atomically returns the string values of one or more keys.",
        "1.0.0",
    ),
    spec(
        "mset",
        -3,
        W,
        (1, -1, 2),
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
        "1.0.1",
    ),
    spec(
        "msetnx",
        -3,
        W,
        (1, -1, 2),
        "string",
        "Atomically modifies the string values of one or more keys only when all keys don't exist.",
        "1.0.1",
    ),
    spec(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        NONE,
        "transactions",
        "Starts a transaction.",
        "1.2.0",
    ),
    spec(
        "persist",
        2,
        WDF,
        ONE,
        "generic",
        "Removes the expiration time of a key.",
        "2.2.0",
    ),
    spec(
        "pexpire",
        -3,
        WDF,
        ONE,
        "generic",
        "Sets the expiration time of a key in milliseconds.",
        "2.6.0",
    ),
    spec(
        "pexpireat",
        -3,
        WDF,
        ONE,
        "generic",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
        "2.6.0",
    ),
    spec(
        "pexpiretime",
        2,
        RF,
        ONE,
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
        "7.0.0",
    ),
    spec(
        "ping",
        -1,
        &["fast"],
        NONE,
        "connection",
        "Returns the server's liveliness response.",
        "1.0.0",
    ),
    spec(
        "psetex",
        4,
        W,
        ONE,
        "string",
        "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist.",
        "2.6.0",
    ),
    spec(
        "psubscribe",
        -2,
        PS,
        NONE,
        "pubsub",
        "Listens for messages published to channels that match one or more patterns.",
        "2.0.0",
    ),
    spec(
        "pttl",
        2,
        RF,
        ONE,
        "generic",
        "Returns the expiration time in milliseconds of a key.",
        "2.6.0",
    ),
    spec(
        "publish",
        3,
        PSF,
        NONE,
        "pubsub",
        "Posts a message to a channel.",
        "2.0.0",
    ),
    spec(
        "pubsub",
        -2,
        PS,
        NONE,
        "pubsub",
        "A container for Pub/Sub commands.",
        "2.8.0",
    ),
    spec(
        "punsubscribe",
        -1,
        PS,
        NONE,
        "pubsub",
        "Stops listening to messages published to channels that match one or more patterns.",
        "2.0.0",
    ),
    spec(
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        NONE,
        "connection",
        "Closes the connection.",
        "1.0.0",
    ),
    spec(
        "randomkey",
        1,
        R,
        NONE,
        "generic",
        "Returns a random key name from the database.",
        "1.0.0",
    ),
    spec(
        "readonly",
        1,
        &["loading", "stale", "fast"],
        NONE,
        "cluster",
        "Enables read-only queries for a connection to a Redis Cluster replica node.",
        "3.0.0",
    ),
    spec(
        "readwrite",
        1,
        &["loading", "stale", "fast"],
        NONE,
        "cluster",
        "Enables read-write queries for a connection to a Reids Cluster replica node.",
        "3.0.0",
    ),
    spec(
        "rename",
        3,
        WD,
        (1, 2, 1),
        "generic",
        "Renames a key and overwrites the destination.",
        "1.0.0",
    ),
    spec(
        "renamenx",
        3,
        WF,
        (1, 2, 1),
        "generic",
        "Renames a key only when the target key name doesn't exist.",
        "1.0.0",
    ),
    spec(
        "save",
        1,
        &["admin", "noscript"],
        NONE,
        "server",
        "Checkpoints every shard replica on this node and purges the log behind the checkpoints.",
        "1.0.0",
    ),
    spec(
        "scan",
        -2,
        R,
        NONE,
        "generic",
        "Iterates over the key names in the database.",
        "2.8.0",
    ),
    spec(
        "select",
        2,
        &["loading", "stale", "fast"],
        NONE,
        "connection",
        "Changes the selected database.",
        "1.0.0",
    ),
    spec(
        "set",
        -3,
        W,
        ONE,
        "string",
        "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
        "1.0.0",
    ),
    spec(
        "setbit",
        4,
        W,
        ONE,
        "bitmap",
        "Sets or clears the bit at offset of the string value. Creates the key if it doesn't exist.",
        "2.2.0",
    ),
    spec(
        "setex",
        4,
        W,
        ONE,
        "string",
        "Sets the string value and expiration time of a key. Creates the key if it doesn't exist.",
        "2.0.0",
    ),
    spec(
        "setnx",
        3,
        WF,
        ONE,
        "string",
        "Set the string value of a key only when the key doesn't exist.",
        "1.0.0",
    ),
    spec(
        "setrange",
        4,
        W,
        ONE,
        "string",
        "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist.",
        "2.2.0",
    ),
    spec(
        "spublish",
        3,
        PSF,
        ONE,
        "pubsub",
        "Post a message to a shard channel",
        "7.0.0",
    ),
    spec(
        "ssubscribe",
        -2,
        PS,
        ALL,
        "pubsub",
        "Listens for messages published to shard channels.",
        "7.0.0",
    ),
    spec(
        "strlen",
        2,
        RF,
        ONE,
        "string",
        "Returns the length of a string value.",
        "2.2.0",
    ),
    spec(
        "subscribe",
        -2,
        PS,
        NONE,
        "pubsub",
        "Listens for messages published to channels.",
        "2.0.0",
    ),
    spec(
        "sunsubscribe",
        -1,
        PS,
        ALL,
        "pubsub",
        "Stops listening to messages posted to shard channels.",
        "7.0.0",
    ),
    spec(
        "time",
        1,
        &["loading", "stale", "fast"],
        NONE,
        "server",
        "Returns the server time.",
        "2.6.0",
    ),
    spec(
        "ttl",
        2,
        RF,
        ONE,
        "generic",
        "Returns the expiration time in seconds of a key.",
        "1.0.0",
    ),
    spec(
        "type",
        2,
        RF,
        ONE,
        "generic",
        "Determines the type of value stored at a key.",
        "1.0.0",
    ),
    spec(
        "unlink",
        -2,
        WDF,
        ALL,
        "generic",
        "Asynchronously deletes one or more keys.",
        "4.0.0",
    ),
    spec(
        "unsubscribe",
        -1,
        PS,
        NONE,
        "pubsub",
        "Stops listening to messages posted to channels.",
        "2.0.0",
    ),
    spec(
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        NONE,
        "transactions",
        "Forgets about watched keys of a transaction.",
        "2.2.0",
    ),
    spec(
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        (1, -1, 1),
        "transactions",
        "Monitors changes to keys to determine the execution of a transaction.",
        "2.2.0",
    ),
];

/// Subcommands of the container commands (`client`, `cluster`, `command`).
pub const SUBCOMMANDS: &[CommandSpec] = &[
    spec(
        "client|caching",
        3,
        C,
        NONE,
        "connection",
        "Instructs the server whether to track the keys in the next request.",
        "6.0.0",
    ),
    spec(
        "client|getname",
        2,
        C,
        NONE,
        "connection",
        "Returns the name of the connection.",
        "2.6.9",
    ),
    spec(
        "client|getredir",
        2,
        C,
        NONE,
        "connection",
        "Returns the client ID to which the connection's tracking notifications are redirected.",
        "6.0.0",
    ),
    spec(
        "client|id",
        2,
        C,
        NONE,
        "connection",
        "Returns the unique client ID of the connection.",
        "5.0.0",
    ),
    spec(
        "client|info",
        2,
        C,
        NONE,
        "connection",
        "Returns information about the connection.",
        "6.2.0",
    ),
    spec(
        "client|list",
        -2,
        CS,
        NONE,
        "connection",
        "Lists open connections.",
        "2.4.0",
    ),
    spec(
        "client|setinfo",
        4,
        C,
        NONE,
        "connection",
        "Sets information specific to the client or connection.",
        "7.2.0",
    ),
    spec(
        "client|setname",
        3,
        C,
        NONE,
        "connection",
        "Sets the connection name.",
        "2.6.9",
    ),
    spec(
        "client|tracking",
        -3,
        C,
        NONE,
        "connection",
        "Controls server-assisted client-side caching for the connection.",
        "6.0.0",
    ),
    spec(
        "client|trackinginfo",
        2,
        C,
        NONE,
        "connection",
        "Returns information about server-assisted client-side caching for the connection.",
        "6.2.0",
    ),
    spec(
        "config|get",
        -3,
        &["admin", "noscript", "loading", "stale"],
        NONE,
        "server",
        "Returns the effective values of configuration parameters.",
        "2.0.0",
    ),
    spec(
        "config|resetstat",
        2,
        &["admin", "noscript", "loading", "stale"],
        NONE,
        "server",
        "Resets the server's statistics.",
        "2.0.0",
    ),
    spec(
        "config|rewrite",
        2,
        &["admin", "noscript", "loading", "stale"],
        NONE,
        "server",
        "Persists the effective configuration to file.",
        "2.8.0",
    ),
    spec(
        "config|set",
        -4,
        &["admin", "noscript", "loading", "stale"],
        NONE,
        "server",
        "Sets configuration parameters in-flight.",
        "2.0.0",
    ),
    spec(
        "cluster|info",
        2,
        &["stale"],
        NONE,
        "cluster",
        "Returns information about the state of a node.",
        "3.0.0",
    ),
    spec(
        "cluster|keyslot",
        3,
        &["stale"],
        NONE,
        "cluster",
        "Returns the hash slot for a key.",
        "3.0.0",
    ),
    spec(
        "cluster|myid",
        2,
        &["stale"],
        NONE,
        "cluster",
        "Returns the ID of a node.",
        "3.0.0",
    ),
    spec(
        "cluster|nodes",
        2,
        &["stale"],
        NONE,
        "cluster",
        "Returns the cluster configuration for a node.",
        "3.0.0",
    ),
    spec(
        "cluster|shards",
        2,
        &["loading", "stale"],
        NONE,
        "cluster",
        "Returns the mapping of cluster slots to shards.",
        "7.0.0",
    ),
    spec(
        "cluster|slots",
        2,
        &["loading", "stale"],
        NONE,
        "cluster",
        "Returns the mapping of cluster slots to nodes.",
        "3.0.0",
    ),
    spec(
        "command|count",
        2,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns a count of commands.",
        "2.8.13",
    ),
    spec(
        "command|docs",
        -2,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns documentary information about one, multiple or all commands.",
        "7.0.0",
    ),
    spec(
        "command|getkeys",
        -3,
        &["loading", "stale"],
        NONE,
        "server",
        "Extracts the key names from an arbitrary command.",
        "2.8.13",
    ),
    spec(
        "command|info",
        -2,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns information about one, multiple or all commands.",
        "2.8.13",
    ),
    spec(
        "command|list",
        -2,
        &["loading", "stale"],
        NONE,
        "server",
        "Returns a list of command names.",
        "7.0.0",
    ),
];

/// Look up a top-level command by lowercase name.
pub fn lookup(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS
        .binary_search_by(|c| c.name.cmp(name))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Longest command name in [`COMMANDS`].
const NAME_BYTES_MAX: usize = 16;

/// Look up a top-level command by its name as sent, in any case, without allocating.
pub fn lookup_bytes(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > NAME_BYTES_MAX {
        return None;
    }
    let mut buf = [0u8; NAME_BYTES_MAX];
    let lower = &mut buf[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    COMMANDS
        .binary_search_by(|c| c.name.as_bytes().cmp(lower))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Look up a subcommand by lowercase container and subcommand name.
pub fn lookup_sub(container: &str, sub: &str) -> Option<&'static CommandSpec> {
    SUBCOMMANDS
        .iter()
        .find(|c| c.name.split_once('|') == Some((container, sub)))
}

/// Subcommands of `container`.
pub fn subcommands_of(container: &str) -> impl Iterator<Item = &'static CommandSpec> {
    SUBCOMMANDS
        .iter()
        .filter(move |c| c.name.split_once('|').is_some_and(|(p, _)| p == container))
}

/// Whether `name` is a container command (has subcommands).
pub fn is_container(name: &str) -> bool {
    matches!(name, "client" | "cluster" | "command" | "config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_lookups_work() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(lookup("get").unwrap().arity, 2);
        assert!(lookup("nope").is_none());
        assert_eq!(lookup_bytes(b"GeT").unwrap().name, "get");
        assert!(lookup_bytes(b"averyveryverylongcommandname").is_none());
        assert!(COMMANDS.iter().all(|c| c.name.len() <= NAME_BYTES_MAX));
        assert_eq!(lookup_sub("client", "setname").unwrap().arity, 3);
        assert!(lookup("set").unwrap().arity_ok(3));
        assert!(lookup("set").unwrap().arity_ok(9));
        assert!(!lookup("set").unwrap().arity_ok(2));
        assert!(!lookup("get").unwrap().arity_ok(3));
        assert!(lookup("get").unwrap().is_read() && lookup("mget").unwrap().is_read());
        assert!(!lookup("set").unwrap().is_read() && !lookup("getex").unwrap().is_read());
        assert_eq!(subcommands_of("cluster").count(), 6);
    }
}
