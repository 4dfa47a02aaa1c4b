//! `cairn repl`: the interactive prompt SimpleKV's and dstore's users know
//! (`127.0.0.1:7070> set hello 1` → `OK`, `get hello` → `1`, `expire hello 200`, `ttl hello`,
//! `del hello`), over the gRPC client. With a terminal it edits lines and keeps a history file
//! (rustyline); with piped stdin it reads plain lines, so scripts and tests can drive it.
//! With `--near-cache` it reads through cairn-client's near cache (dstore's local layer, kept
//! coherent by a watch) and says where each answer came from, `(local)` or `(cluster)`, as
//! dstore's REPL does.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{Client, Scan, Ttl};
use clap::Args;

use super::Connection;
use super::output::{human, ttl_secs};

/// Entries `scan` shows in the REPL.
const REPL_SCAN_LIMIT: u32 = 100;
/// Lines kept in the history file.
const HISTORY_LINES_MAX: usize = 1000;
/// History file name under the home directory.
const HISTORY_FILE_NAME: &str = ".cairn_history";

const HELP: &str = "\
commands (case-insensitive; quote arguments with spaces: set k \"a b\"):
  set KEY VALUE [EX SECS|PX MS]   write a value (alias: put)
  get KEY                         read a value; (nil) when missing (alias: out)
  del KEY                         delete a key (aliases: delete, rem)
  expire KEY SECS                 set a time to live in seconds
  pexpire KEY MS                  set a time to live in milliseconds
  persist KEY                     remove the time to live
  ttl KEY                         seconds left; -1 without expiry
  pttl KEY                        milliseconds left; -1 without expiry
  scan [PREFIX]                   list up to 100 keys with values
  keys [PREFIX]                   list up to 100 keys
  cluster                         cluster status
  cache                           near cache counters (with --near-cache)
  ping                            check the connection
  help                            this text
  exit | quit | .exit             leave";

#[derive(Debug, Args)]
pub struct ReplArgs {
    /// History file [default: ~/.cairn_history]
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Read through a near cache of this many bytes, kept coherent by a watch; answers say
    /// whether they came from it `(local)` or from the cluster `(cluster)`
    #[arg(long, value_name = "BYTES", num_args = 0..=1, default_missing_value = "67108864")]
    pub near_cache: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

/// What a line asks of the loop.
enum Step {
    Print(String),
    Exit,
}

pub async fn run(args: ReplArgs) -> anyhow::Result<u8> {
    let client = match args.near_cache {
        None => args.connection.client()?,
        Some(bytes) => {
            let client = args
                .connection
                .client_with(|c| c.near_cache_bytes = Some(bytes))?;
            if !client.near_cache_ready(Duration::from_secs(5)).await {
                eprintln!("the near cache's watch is not established yet: reads go to the cluster");
            }
            client
        }
    };
    let authority = args
        .connection
        .endpoint
        .split("://")
        .last()
        .unwrap_or_default();
    let prompt = format!("{}> ", authority.trim_end_matches('/'));
    if std::io::stdin().is_terminal() {
        interactive(&client, &prompt, args.history).await
    } else {
        piped(&client, &prompt).await
    }
}

/// Line editing and history with rustyline.
async fn interactive(
    client: &Client,
    prompt: &str,
    history: Option<PathBuf>,
) -> anyhow::Result<u8> {
    use rustyline::error::ReadlineError;
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_LINES_MAX)?
        .auto_add_history(true)
        .build();
    let mut editor = rustyline::DefaultEditor::with_config(config)?;
    let history = history
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(HISTORY_FILE_NAME)));
    if let Some(path) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(path);
    }
    println!(
        "connected to {}; type help for commands",
        prompt.trim_end_matches("> ")
    );
    loop {
        match editor.readline(prompt) {
            Ok(line) => match eval(client, &line).await {
                Step::Print(text) if text.is_empty() => {}
                Step::Print(text) => println!("{text}"),
                Step::Exit => break,
            },
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("could not save history to {}: {e}", path.display());
        }
    }
    Ok(0)
}

/// Plain line reading for piped stdin: same prompt, no editing, no history.
async fn piped(client: &Client, prompt: &str) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        write!(stdout, "{prompt}")?;
        match eval(client, &line).await {
            Step::Print(text) if text.is_empty() => writeln!(stdout)?,
            Step::Print(text) => writeln!(stdout, "{text}")?,
            Step::Exit => break,
        }
        stdout.flush()?;
    }
    Ok(0)
}

/// Run one line and say what to print.
async fn eval(client: &Client, line: &str) -> Step {
    let words = match split_words(line) {
        Ok(words) => words,
        Err(e) => return Step::Print(format!("(error) {e}")),
    };
    let Some((command, args)) = words.split_first() else {
        return Step::Print(String::new());
    };
    let command = command.to_ascii_lowercase();
    if matches!(command.as_str(), "exit" | "quit" | ".exit") {
        return Step::Exit;
    }
    match execute(client, &command, args).await {
        Ok(text) => Step::Print(text),
        Err(e) => Step::Print(format!("(error) {e}")),
    }
}

/// The output of one command, or an error message.
async fn execute(client: &Client, command: &str, args: &[String]) -> Result<String, String> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "wrong number of arguments for '{command}' (see help)"
            ))
        }
    };
    let key = |i: usize| Bytes::from(args[i].clone());
    let err = |e: cairn_client::Error| e.to_string();
    match command {
        "help" | "?" => Ok(HELP.to_string()),
        "ping" => client
            .status()
            .await
            .map(|_| "PONG".to_string())
            .map_err(err),
        "set" | "put" => {
            let expiry = match args.len() {
                2 => None,
                4 => {
                    let n: u64 = args[3]
                        .parse()
                        .map_err(|_| "expiry is not an integer".to_string())?;
                    match args[2].to_ascii_lowercase().as_str() {
                        "ex" => Some(cairn_client::Expiry::In(Duration::from_secs(n))),
                        "px" => Some(cairn_client::Expiry::In(Duration::from_millis(n))),
                        _ => return Err("syntax: set KEY VALUE [EX SECS|PX MS]".to_string()),
                    }
                }
                _ => return Err("wrong number of arguments for 'set' (see help)".to_string()),
            };
            let options = cairn_client::PutOptions {
                expiry,
                condition: None,
            };
            client
                .put_with(key(0), key(1), options)
                .await
                .map(|_| "OK".to_string())
                .map_err(err)
        }
        "get" | "out" => {
            arity(1)?;
            let (value, served) = client.get_traced(key(0)).await.map_err(err)?;
            let text = match value {
                Some(v) => human(&v.value),
                None => "(nil)".to_string(),
            };
            Ok(match client.near_cache_stats() {
                None => text,
                Some(_) if served == cairn_client::Served::Local => format!("{text} (local)"),
                Some(_) => format!("{text} (cluster)"),
            })
        }
        "cache" => {
            arity(0)?;
            match client.near_cache_stats() {
                None => Err("no near cache (start the REPL with --near-cache)".to_string()),
                Some(s) => Ok(format!(
                    "live: {}, entries: {}, bytes: {}, hits: {}, misses: {}, invalidations: {}, \
                     delay from own write to its invalidation p50/p99: {}/{} us",
                    s.live,
                    s.entries,
                    s.bytes,
                    s.hits,
                    s.misses,
                    s.invalidations,
                    s.delay_p50_us,
                    s.delay_p99_us
                )),
            }
        }
        "del" | "delete" | "rem" => {
            arity(1)?;
            match client.delete(key(0)).await.map_err(err)? {
                true => Ok("OK".to_string()),
                false => Ok("record not found".to_string()),
            }
        }
        "expire" | "pexpire" => {
            arity(2)?;
            let n: u64 = args[1]
                .parse()
                .map_err(|_| "ttl is not a non-negative integer".to_string())?;
            let ttl = if command == "expire" {
                Duration::from_secs(n)
            } else {
                Duration::from_millis(n)
            };
            match client.expire(key(0), ttl).await.map_err(err)? {
                true => Ok("OK".to_string()),
                false => Ok("record not found".to_string()),
            }
        }
        "persist" => {
            arity(1)?;
            match client.persist(key(0)).await.map_err(err)? {
                true => Ok("OK".to_string()),
                false => Ok("record not found".to_string()),
            }
        }
        "ttl" | "pttl" => {
            arity(1)?;
            match client.ttl(key(0)).await.map_err(err)? {
                None => Ok("record not found".to_string()),
                Some(Ttl::Persistent) => Ok("-1".to_string()),
                Some(Ttl::Remaining(d)) if command == "ttl" => Ok(ttl_secs(d).to_string()),
                Some(Ttl::Remaining(d)) => Ok(d.as_millis().to_string()),
            }
        }
        "scan" | "keys" => {
            let scan = match args.len() {
                0 => Scan::all(),
                1 => Scan::prefix(key(0)),
                _ => {
                    return Err(format!(
                        "wrong number of arguments for '{command}' (see help)"
                    ));
                }
            };
            let keys_only = command == "keys";
            let page = client
                .scan(&scan.limit(REPL_SCAN_LIMIT).keys_only(keys_only))
                .await
                .map_err(err)?;
            if page.entries.is_empty() {
                return Ok("(empty)".to_string());
            }
            let mut lines: Vec<String> = page
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    if keys_only {
                        format!("{}) {}", i + 1, human(&e.key))
                    } else {
                        format!("{}) {} = {}", i + 1, human(&e.key), human(&e.value))
                    }
                })
                .collect();
            if page.resume_after.is_some() {
                lines.push(format!("(more than {REPL_SCAN_LIMIT}; narrow the prefix)"));
            }
            Ok(lines.join("\n"))
        }
        "cluster" | "status" => {
            let status = client.status().await.map_err(err)?;
            Ok(super::cluster::render(&status).trim_end().to_string())
        }
        other => Err(format!("unknown command '{other}' (type help)")),
    }
}

/// Split a line into words: whitespace separates, single or double quotes group, and a
/// backslash inside double quotes escapes the next character.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unbalanced quotes".to_string()),
                    Some(c) if c == first => break,
                    Some('\\') if first == '"' => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some('t') => word.push('\t'),
                        Some(c) => word.push(c),
                        None => return Err("unbalanced quotes".to_string()),
                    },
                    Some(c) => word.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err("closing quote must be followed by a space".to_string());
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn words_split_on_whitespace_and_group_on_quotes() {
        assert_eq!(split_words("  set  k v ").unwrap(), ["set", "k", "v"]);
        assert_eq!(
            split_words(r#"set k "a b\"c""#).unwrap(),
            ["set", "k", "a b\"c"]
        );
        assert_eq!(split_words("set k 'x y'").unwrap(), ["set", "k", "x y"]);
        assert_eq!(split_words(r#"set k """#).unwrap(), ["set", "k", ""]);
        assert!(split_words("set k \"oops").is_err());
        assert!(split_words("").unwrap().is_empty());
    }
}
