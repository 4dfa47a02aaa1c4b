//! One-shot key-value subcommands: `cairn get|put|del|expire|ttl|scan`.
//!
//! Exit status: 0 on success, 1 when the key does not exist (get, del, expire, ttl) or a put
//! condition failed, 2 on any other error (reported by `main`).

use std::io::{Read as _, Write as _};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{Condition, Error, Expiry, PutOptions, Scan, Ttl};
use clap::Args;
use serde_json::{Map, Value, json};

use super::Connection;
use super::output::{human, insert_bytes, print_json, ttl_secs};

/// Exit status when the key does not exist or a condition failed.
const EXIT_MISSING: u8 = 1;
/// Largest value `cairn put` reads from stdin (the server's default value limit).
const STDIN_VALUE_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct KeyArgs {
    pub key: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    /// Also print version and expiry (human output)
    #[arg(long, short)]
    pub verbose: bool,
    /// Read the answering node's replica as it stands (may lag the shard's leader)
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; read from stdin when omitted
    pub value: Option<String>,
    /// Expire after this many seconds
    #[arg(long, value_name = "SECS", conflicts_with = "ttl_ms")]
    pub ttl: Option<u64>,
    /// Expire after this many milliseconds
    #[arg(long, value_name = "MS")]
    pub ttl_ms: Option<u64>,
    /// Write only if the key does not exist
    #[arg(long, conflicts_with_all = ["if_present", "if_version"])]
    pub if_absent: bool,
    /// Write only if the key exists
    #[arg(long, conflicts_with = "if_version")]
    pub if_present: bool,
    /// Write only if the key's version is exactly this
    #[arg(long, value_name = "VERSION")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    pub key: String,
    /// Time to live in seconds (milliseconds with --ms)
    pub ttl: u64,
    /// Read TTL as milliseconds
    #[arg(long)]
    pub ms: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Only keys starting with this
    #[arg(long, conflicts_with_all = ["start", "end"])]
    pub prefix: Option<String>,
    /// First key (inclusive)
    #[arg(long)]
    pub start: Option<String>,
    /// Last key (exclusive)
    #[arg(long)]
    pub end: Option<String>,
    /// Only keys strictly after this one (resume cursor)
    #[arg(long)]
    pub after: Option<String>,
    /// Entries per page (server maximum 10000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Follow resume cursors until the listing is complete
    #[arg(long)]
    pub all: bool,
    /// Leave values out
    #[arg(long)]
    pub keys_only: bool,
    #[command(flatten)]
    pub connection: Connection,
}

pub async fn get(args: GetArgs) -> anyhow::Result<u8> {
    let client = args.connection.client()?;
    let Some(v) = client.get_with(args.key.clone(), args.stale).await? else {
        return Ok(missing(&args.connection));
    };
    if args.connection.json {
        let mut o = Map::new();
        insert_bytes(&mut o, "key", args.key.as_bytes());
        insert_bytes(&mut o, "value", &v.value);
        o.insert("version".into(), v.version.into());
        o.insert("expires_at_ms".into(), v.expires_at_ms.into());
        o.insert("ttl_ms".into(), v.ttl_ms.into());
        print_json(&Value::Object(o));
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&v.value)?;
        out.write_all(b"\n")?;
        if args.verbose {
            let ttl = v.ttl_ms.map_or("none".to_string(), |ms| format!("{ms} ms"));
            writeln!(out, "(version {}, ttl {ttl})", v.version)?;
        }
    }
    Ok(0)
}

pub async fn put(args: PutArgs) -> anyhow::Result<u8> {
    let value = match args.value {
        Some(v) => Bytes::from(v),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(STDIN_VALUE_BYTES_MAX + 1)
                .read_to_end(&mut buf)?;
            anyhow::ensure!(
                buf.len() as u64 <= STDIN_VALUE_BYTES_MAX,
                "the value on stdin is above {STDIN_VALUE_BYTES_MAX} bytes"
            );
            Bytes::from(buf)
        }
    };
    let expiry = match (args.ttl, args.ttl_ms) {
        (Some(s), _) => Some(Expiry::In(Duration::from_secs(s))),
        (None, Some(ms)) => Some(Expiry::In(Duration::from_millis(ms))),
        (None, None) => None,
    };
    let condition = if args.if_absent {
        Some(Condition::IfAbsent)
    } else if args.if_present {
        Some(Condition::IfPresent)
    } else {
        args.if_version.map(Condition::IfVersion)
    };
    let client = args.connection.client()?;
    match client
        .put_with(args.key, value, PutOptions { expiry, condition })
        .await
    {
        Ok(version) => {
            if args.connection.json {
                print_json(&json!({ "version": version }));
            } else {
                println!("OK");
            }
            Ok(0)
        }
        Err(Error::ConditionFailed(message)) => {
            if args.connection.json {
                print_json(&json!({ "error": "condition_failed", "message": message }));
            } else {
                eprintln!("{message}");
            }
            Ok(EXIT_MISSING)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn del(args: KeyArgs) -> anyhow::Result<u8> {
    let deleted = args.connection.client()?.delete(args.key).await?;
    if args.connection.json {
        print_json(&json!({ "deleted": deleted }));
        return Ok(if deleted { 0 } else { EXIT_MISSING });
    }
    if !deleted {
        return Ok(missing(&args.connection));
    }
    println!("OK");
    Ok(0)
}

pub async fn expire(args: ExpireArgs) -> anyhow::Result<u8> {
    let ttl = if args.ms {
        Duration::from_millis(args.ttl)
    } else {
        Duration::from_secs(args.ttl)
    };
    if !args.connection.client()?.expire(args.key, ttl).await? {
        return Ok(missing(&args.connection));
    }
    if args.connection.json {
        print_json(&json!({ "ok": true }));
    } else {
        println!("OK");
    }
    Ok(0)
}

pub async fn ttl(args: KeyArgs) -> anyhow::Result<u8> {
    let Some(ttl) = args.connection.client()?.ttl(args.key).await? else {
        return Ok(missing(&args.connection));
    };
    match (ttl, args.connection.json) {
        (Ttl::Persistent, true) => print_json(&json!({ "ttl_ms": null })),
        (Ttl::Remaining(d), true) => print_json(&json!({ "ttl_ms": d.as_millis() as u64 })),
        (Ttl::Persistent, false) => println!("-1"),
        (Ttl::Remaining(d), false) => println!("{}", ttl_secs(d)),
    }
    Ok(0)
}

pub async fn scan(args: ScanArgs) -> anyhow::Result<u8> {
    let client = args.connection.client()?;
    let mut request = match (&args.prefix, &args.start, &args.end) {
        (Some(p), _, _) => Scan::prefix(p.clone()),
        (None, None, None) => Scan::all(),
        (None, start, end) => Scan::range(
            start
                .clone()
                .map_or(Bound::Unbounded, |s| Bound::Included(Bytes::from(s))),
            end.clone()
                .map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e))),
        ),
    }
    .limit(args.limit)
    .keys_only(args.keys_only)
    .after(args.after.clone().map(Bytes::from));
    let mut out = std::io::stdout().lock();
    loop {
        let page = client.scan(&request).await?;
        for e in &page.entries {
            if args.connection.json {
                let mut o = Map::new();
                insert_bytes(&mut o, "key", &e.key);
                if !args.keys_only {
                    insert_bytes(&mut o, "value", &e.value);
                }
                o.insert("version".into(), e.version.into());
                o.insert("expires_at_ms".into(), e.expires_at_ms.into());
                writeln!(out, "{}", Value::Object(o))?;
            } else if args.keys_only {
                writeln!(out, "{}", human(&e.key))?;
            } else {
                writeln!(out, "{}\t{}", human(&e.key), human(&e.value))?;
            }
        }
        match page.resume_after {
            Some(after) if args.all => request = request.after(Some(after)),
            Some(after) => {
                if !args.connection.json {
                    eprintln!(
                        "(more: continue with --after {:?} or use --all)",
                        human(&after)
                    );
                }
                break;
            }
            None => break,
        }
    }
    Ok(0)
}

/// Report a missing key and return its exit status.
fn missing(connection: &Connection) -> u8 {
    if connection.json {
        print_json(&json!({ "error": "not_found", "message": "record not found" }));
    } else {
        eprintln!("record not found");
    }
    EXIT_MISSING
}
