//! `cairn watch`: follow every change to a prefix, a key or a range, one line per change, until
//! interrupted (or `--count` changes). The watch resumes by itself on another node when its
//! node goes away; the token to resume it later is printed on exit (stderr).

use std::io::Write as _;
use std::ops::Bound;

use bytes::Bytes;
use cairn_client::proto::watch_event::Type;
use cairn_client::{WatchOptions, WatchUpdate};
use clap::Args;
use serde_json::{Map, Value};

use super::Connection;
use super::output::{human, insert_bytes};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Watch keys starting with this (nothing: every key)
    #[arg(conflicts_with_all = ["key", "start", "end"])]
    pub prefix: Option<String>,
    /// Watch one key
    #[arg(long, conflicts_with_all = ["start", "end"])]
    pub key: Option<String>,
    /// First key of a range (inclusive)
    #[arg(long)]
    pub start: Option<String>,
    /// End of a range (exclusive)
    #[arg(long)]
    pub end: Option<String>,
    /// Resume right after this token (printed by an earlier watch)
    #[arg(long, value_name = "TOKEN")]
    pub from: Option<String>,
    /// Print the new value of each put
    #[arg(long)]
    pub values: bool,
    /// Stop after this many changes
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

pub async fn run(args: WatchArgs) -> anyhow::Result<u8> {
    let client = args.connection.client()?;
    let options = match (&args.key, &args.prefix, &args.start, &args.end) {
        (Some(key), ..) => WatchOptions::key(key.clone()),
        (None, Some(prefix), ..) => WatchOptions::prefix(prefix.clone()),
        (None, None, None, None) => WatchOptions::prefix(Bytes::new()),
        (None, None, start, end) => WatchOptions::range(
            start
                .clone()
                .map_or(Bound::Unbounded, |s| Bound::Included(Bytes::from(s))),
            end.clone()
                .map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e))),
        ),
    }
    .from(args.from.clone())
    .values(args.values);
    let mut watch = client.watch(options).await?;
    let mut seen = 0u64;
    // The token after the last change printed (a message may hold more than --count wants).
    let mut resume = watch.token().to_string();
    let outcome = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let update = tokio::select! {
            update = watch.next() => update,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        let events = match update {
            Ok(WatchUpdate::Events(events)) => events,
            Ok(WatchUpdate::Progress) => {
                resume = watch.token().to_string();
                continue;
            }
            Err(e) => break Err(e),
        };
        let mut out = std::io::stdout().lock();
        for event in events {
            if args.count.is_some_and(|n| seen >= n) {
                break;
            }
            seen += 1;
            print_event(&mut out, &event, &args)?;
            resume = event.token.clone();
        }
        out.flush()?;
    };
    eprintln!("resume with: --from {resume}");
    outcome?;
    Ok(0)
}

fn print_event(
    out: &mut impl std::io::Write,
    event: &cairn_client::proto::WatchEvent,
    args: &WatchArgs,
) -> std::io::Result<()> {
    let kind = match event.r#type() {
        Type::Put => "put",
        Type::Delete => "delete",
        Type::Expire => "expire",
    };
    if args.connection.json {
        let mut o = Map::new();
        o.insert("type".into(), kind.into());
        insert_bytes(&mut o, "key", &event.key);
        o.insert("version".into(), event.version.into());
        o.insert("shard".into(), event.shard.into());
        if event.r#type() == Type::Put {
            if args.values {
                insert_bytes(&mut o, "value", &event.value);
            }
            if let Some(at) = event.expires_at_ms {
                o.insert("expires_at_ms".into(), at.into());
            }
        }
        o.insert("token".into(), event.token.clone().into());
        return writeln!(out, "{}", Value::Object(o));
    }
    if args.values && event.r#type() == Type::Put {
        writeln!(
            out,
            "{kind}\t{}\t{}\t(shard {}, version {})",
            human(&event.key),
            human(&event.value),
            event.shard,
            event.version
        )
    } else {
        writeln!(
            out,
            "{kind}\t{}\t(shard {}, version {})",
            human(&event.key),
            event.shard,
            event.version
        )
    }
}
