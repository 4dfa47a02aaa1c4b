//! Redis request → [`Action`]: argument parsing with Redis's exact rules and error strings.
//!
//! Data commands become a [`Command`] for the node plus a [`Render`] saying how Redis shapes
//! that command's reply; connection and introspection commands are answered here.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_resp::{Frame, Protocol, parse_i64};

use crate::command::{CmpOp, Command, Compare, Condition, ExpireCondition, Expiry};
use crate::error::CommandError;
use crate::long_double::is_float;
use crate::resp::render::{ExecSlot, Render, TtlKind};
use crate::resp::session::{MULTI_COMMANDS_MAX, Multi, Queued, Session, Shared, WATCHED_KEYS_MAX};
use crate::resp::table::{self, CommandSpec};
use crate::resp::{cluster, introspection, pubsub};

/// Default SCAN COUNT, as Redis.
pub const SCAN_COUNT_DEFAULT: usize = 10;
/// Longest prefix of arguments quoted in an unknown-command error, as Redis.
const UNKNOWN_ARGS_CHARS_MAX: usize = 128;

/// What the connection does with one request.
#[derive(Debug)]
pub enum Action {
    /// Send this reply.
    Reply(Frame),
    /// Send these replies, in order (SUBSCRIBE answers one per channel).
    Replies(Vec<Frame>),
    /// Execute on the node, then render the result.
    Node { cmd: Command, render: Render },
    /// Send this reply and close the connection (QUIT).
    Close(Frame),
    /// WATCH: read these keys' versions into the session, then answer `+OK`.
    Watch(Vec<Bytes>),
    /// PUBLISH or SPUBLISH (`array` false: one slot), or the EXEC of a block with no data
    /// command that queued one (`array` true): run once every earlier write of the
    /// connection has landed, so a subscriber that reads on a message sees them, as in Redis.
    Publish { slots: Vec<ExecSlot>, array: bool },
    /// `CLIENT TRACKING on` or `CONFIG SET notify-keyspace-events` on a node whose
    /// whole-keyspace watch does not stand yet (it starts following a shard's feed): send
    /// this reply once it does ([`crate::watch::Positioned::wait`]), so that no change after
    /// the reply goes untold.
    Standing {
        positioned: crate::watch::Positioned,
        frame: Frame,
    },
}

/// `frame`, sent once `positioned` stands (when it is an answer that turned it on).
fn once_standing(frame: Frame, positioned: Option<crate::watch::Positioned>) -> Action {
    match positioned {
        Some(positioned) if !positioned.now() && !matches!(frame, Frame::Error(_)) => {
            Action::Standing { positioned, frame }
        }
        _ => Action::Reply(frame),
    }
}

fn error(e: impl std::fmt::Display) -> Frame {
    Frame::Error(Bytes::from(e.to_string()))
}

fn err_text(text: &str) -> Frame {
    Frame::Error(Bytes::copy_from_slice(text.as_bytes()))
}

fn syntax() -> Frame {
    error(CommandError::Syntax)
}

fn arity_error(name: &str) -> Frame {
    Frame::Error(Bytes::from(format!(
        "ERR wrong number of arguments for '{name}' command"
    )))
}

fn int(arg: &[u8]) -> Result<i64, Frame> {
    parse_i64(arg).ok_or_else(|| error(CommandError::NotInteger))
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

fn eq(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Redis's unknown-command error, quoting the first arguments.
pub fn unknown_command(args: &[Bytes]) -> Frame {
    let name = String::from_utf8_lossy(&args[0]);
    let name: String = name.chars().take(UNKNOWN_ARGS_CHARS_MAX).collect();
    let mut quoted = String::new();
    for arg in &args[1..] {
        if quoted.len() >= UNKNOWN_ARGS_CHARS_MAX {
            break;
        }
        let room = UNKNOWN_ARGS_CHARS_MAX - quoted.len();
        let text = String::from_utf8_lossy(arg);
        let text: String = text.chars().take(room).collect();
        quoted.push_str(&format!("'{text}' "));
    }
    Frame::Error(Bytes::from(format!(
        "ERR unknown command '{name}', with args beginning with: {quoted}"
    )))
}

/// Which expiry option a SET/GETEX carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// Redis's `getExpireMillisecondsOrReply`: validate an expiry argument and turn it into an
/// [`Expiry`] (relative ones stay relative: the node makes them absolute at propose time).
fn expire_arg(arg: &[u8], unit: Unit, command: &'static str) -> Result<Expiry, Frame> {
    let invalid = || error(CommandError::InvalidExpireTime(command.into()));
    let value = int(arg)?;
    let seconds = matches!(unit, Unit::Ex | Unit::ExAt);
    if value <= 0 || (seconds && value > i64::MAX / 1000) {
        return Err(invalid());
    }
    let ms = if seconds { value * 1000 } else { value };
    match unit {
        Unit::Ex | Unit::Px => {
            if ms.checked_add(now_ms()).is_none_or(|at| at <= 0) {
                return Err(invalid());
            }
            Ok(Expiry::InMs(ms))
        }
        Unit::ExAt | Unit::PxAt => Ok(Expiry::AtMs(ms)),
    }
}

/// Options of SET (`for_set`) or GETEX, parsed as Redis's `parseExtendedStringArgumentsOrReply`.
#[derive(Debug, Default)]
struct StringOptions<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    expire: Option<(Unit, &'a Bytes)>,
}

fn string_options(args: &[Bytes], for_set: bool) -> Result<StringOptions<'_>, Frame> {
    let mut o = StringOptions::default();
    let mut j = 0;
    while j < args.len() {
        let opt = &args[j];
        let next = args.get(j + 1);
        let has_expire = o.expire.is_some();
        let expire_unit = o.expire.map(|(u, _)| u);
        if for_set && eq(opt, "nx") && !o.xx {
            o.nx = true;
        } else if for_set && eq(opt, "xx") && !o.nx {
            o.xx = true;
        } else if for_set && eq(opt, "get") {
            o.get = true;
        } else if for_set && eq(opt, "keepttl") && !o.persist && !has_expire {
            o.keepttl = true;
        } else if !for_set && eq(opt, "persist") && !has_expire && !o.keepttl {
            o.persist = true;
        } else if let Some(unit) = [
            ("ex", Unit::Ex),
            ("px", Unit::Px),
            ("exat", Unit::ExAt),
            ("pxat", Unit::PxAt),
        ]
        .iter()
        .find(|(word, _)| eq(opt, word))
        .map(|(_, u)| *u)
            && !o.keepttl
            && !o.persist
            && expire_unit.is_none_or(|u| u == unit)
            && let Some(value) = next
        {
            o.expire = Some((unit, value));
            j += 1;
        } else {
            return Err(syntax());
        }
        j += 1;
    }
    Ok(o)
}

/// EXPIRE-family flags, as Redis's `parseExtendedExpireArgumentsOrReply`.
fn expire_flags(args: &[Bytes]) -> Result<ExpireCondition, Frame> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for arg in args {
        if eq(arg, "nx") {
            nx = true;
        } else if eq(arg, "xx") {
            xx = true;
        } else if eq(arg, "gt") {
            gt = true;
        } else if eq(arg, "lt") {
            lt = true;
        } else {
            return Err(err_text(&format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(arg)
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(err_text(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(err_text(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, _, _, _) => ExpireCondition::Nx,
        (_, _, true, _) => ExpireCondition::Gt,
        (_, true, _, true) => ExpireCondition::XxLt,
        (_, _, _, true) => ExpireCondition::Lt,
        (_, true, _, _) => ExpireCondition::Xx,
        _ => ExpireCondition::Always,
    })
}

/// Redis's `parseScanCursorOrReply` (strtoul: optional sign, digits, wrapping).
fn scan_cursor(arg: &[u8]) -> Result<u64, Frame> {
    let invalid = || err_text("ERR invalid cursor");
    let (negative, digits) = match arg.first() {
        Some(b'-') => (true, &arg[1..]),
        Some(b'+') => (false, &arg[1..]),
        _ => (false, arg),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let value: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    Ok(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

fn node(cmd: Command, render: Render) -> Result<Action, Frame> {
    Ok(Action::Node { cmd, render })
}

/// Decide what to do with one request.
pub fn dispatch(args: Vec<Bytes>, session: &mut Session, shared: &Shared) -> Action {
    let Some(spec) = table::lookup_bytes(&args[0]) else {
        session.last_command = "unknown";
        return Action::Reply(refuse_queuing(session, unknown_command(&args)));
    };
    session.last_command = spec.name;
    if !spec.arity_ok(args.len()) {
        return Action::Reply(refuse_queuing(session, arity_error(spec.name)));
    }
    if let Some(frame) = pubsub::refused_in_context(spec.name, session) {
        return Action::Reply(frame);
    }
    if let Some(action) = transaction_command(spec, &args, session) {
        return action;
    }
    if pubsub::is_pubsub(spec.name) {
        if let Some(multi) = &mut session.multi {
            if !pubsub::runs_in_multi(spec.name) {
                let refusal = err_text(&format!(
                    "ERR '{}' cannot run inside MULTI on Cairn",
                    spec.name
                ));
                return Action::Reply(refuse_queuing(session, refusal));
            }
            return push_queued(multi, Queued::PubSub(args));
        }
        if matches!(spec.name, "publish" | "spublish") {
            return Action::Publish {
                slots: vec![ExecSlot::PubSub(args)],
                array: false,
            };
        }
        return pubsub::command(spec.name, &args, session, shared);
    }
    // As Redis Cluster: a redirect comes before the arguments are parsed.
    if let Some(moved) = cluster::redirect(spec, &args, session, shared) {
        return Action::Reply(refuse_queuing(session, moved));
    }
    if session.multi.is_some() && spec.name != "quit" {
        return queue(spec, args, session, shared);
    }
    match data_command(spec, &args) {
        Some(Ok(action)) => action,
        Some(Err(frame)) => Action::Reply(frame),
        None => local_command(spec, args, session, shared),
    }
}

/// An error answered while queuing a `MULTI` block also dooms the block (`EXECABORT`), as in
/// Redis; outside `MULTI` it is just the answer.
fn refuse_queuing(session: &mut Session, error: Frame) -> Frame {
    if let Some(multi) = &mut session.multi {
        multi.failed = true;
    }
    error
}

/// Queues one command of a `MULTI` block: `+QUEUED`, or an error that dooms the block.
fn queue(spec: &CommandSpec, args: Vec<Bytes>, session: &mut Session, shared: &Shared) -> Action {
    let queued = match data_command(spec, &args) {
        Some(Ok(Action::Node { cmd, render })) if cmd.is_transactional() => {
            Queued::Node(cmd, render)
        }
        Some(Ok(Action::Node { .. })) => {
            return Action::Reply(refuse_queuing(
                session,
                err_text(&format!(
                    "ERR '{}' cannot run inside MULTI on Cairn (only keyed reads and writes can)",
                    spec.name
                )),
            ));
        }
        Some(Ok(Action::Reply(frame))) | Some(Err(frame)) => Queued::Ready(frame),
        Some(Ok(other)) => return other,
        // Connection commands run now; their answer takes its place in EXEC's.
        None => match local_command(spec, args, session, shared) {
            Action::Reply(frame) => Queued::Ready(frame),
            // Inside MULTI, not waited for.
            Action::Standing { positioned, frame } => {
                positioned.answered_early();
                Queued::Ready(frame)
            }
            other => return other,
        },
    };
    let Some(multi) = &mut session.multi else {
        return Action::Reply(err_text("ERR internal error: queuing outside MULTI"));
    };
    push_queued(multi, queued)
}

/// Adds `queued` to the MULTI block: `+QUEUED`, or an error that dooms a full block.
fn push_queued(multi: &mut Multi, queued: Queued) -> Action {
    if multi.queued.len() >= MULTI_COMMANDS_MAX {
        multi.failed = true;
        return Action::Reply(err_text(&format!(
            "ERR a MULTI block holds at most {MULTI_COMMANDS_MAX} commands"
        )));
    }
    multi.queued.push(queued);
    Action::Reply(Frame::Simple(Bytes::from_static(b"QUEUED")))
}

/// MULTI, EXEC, DISCARD, WATCH and UNWATCH, with Redis's rules and error texts; `None` for
/// every other command.
fn transaction_command(
    spec: &CommandSpec,
    args: &[Bytes],
    session: &mut Session,
) -> Option<Action> {
    let reply = match spec.name {
        "multi" => {
            if session.multi.is_some() {
                err_text("ERR MULTI calls can not be nested")
            } else {
                session.multi = Some(Multi::default());
                Frame::ok()
            }
        }
        "discard" => match session.multi.take() {
            None => err_text("ERR DISCARD without MULTI"),
            Some(_) => {
                session.watched.clear();
                Frame::ok()
            }
        },
        "watch" => {
            if session.multi.is_some() {
                err_text("ERR WATCH inside MULTI is not allowed")
            } else if session.watched.len() + args.len() - 1 > WATCHED_KEYS_MAX {
                err_text(&format!(
                    "ERR a connection watches at most {WATCHED_KEYS_MAX} keys"
                ))
            } else {
                return Some(Action::Watch(args[1..].to_vec()));
            }
        }
        "unwatch" => {
            if let Some(multi) = &mut session.multi {
                multi.queued.push(Queued::Ready(Frame::ok()));
                Frame::Simple(Bytes::from_static(b"QUEUED"))
            } else {
                session.watched.clear();
                Frame::ok()
            }
        }
        "exec" => {
            let Some(multi) = session.multi.take() else {
                return Some(Action::Reply(err_text("ERR EXEC without MULTI")));
            };
            let watched = std::mem::take(&mut session.watched);
            if multi.failed {
                return Some(Action::Reply(err_text(
                    "EXECABORT Transaction discarded because of previous errors.",
                )));
            }
            let mut then = Vec::new();
            let mut slots = Vec::with_capacity(multi.queued.len());
            for queued in multi.queued {
                match queued {
                    Queued::Node(cmd, render) => {
                        then.push(cmd);
                        slots.push(ExecSlot::Node(render));
                    }
                    Queued::Ready(frame) => slots.push(ExecSlot::Ready(frame)),
                    Queued::PubSub(args) => slots.push(ExecSlot::PubSub(args)),
                }
            }
            let compares: Vec<Compare> = watched
                .into_iter()
                .map(|(key, version)| Compare::Version {
                    key,
                    cmp: CmpOp::Equal,
                    version,
                })
                .collect();
            if then.is_empty() && compares.is_empty() {
                if slots.iter().any(|slot| matches!(slot, ExecSlot::PubSub(_))) {
                    return Some(Action::Publish { slots, array: true });
                }
                let frames = slots
                    .into_iter()
                    .filter_map(|slot| match slot {
                        ExecSlot::Ready(frame) => Some(frame),
                        ExecSlot::PubSub(_) | ExecSlot::Node(_) => None,
                    })
                    .collect();
                Frame::Array(frames)
            } else {
                return Some(Action::Node {
                    cmd: Command::Exec {
                        compares,
                        then,
                        otherwise: Vec::new(),
                    },
                    render: Render::Exec(slots),
                });
            }
        }
        _ => return None,
    };
    Some(Action::Reply(reply))
}

/// Commands that go to the node; `None` for the others.
fn data_command(spec: &CommandSpec, args: &[Bytes]) -> Option<Result<Action, Frame>> {
    let key = || args[1].clone();
    let set = |value: Bytes, expiry, condition, return_old| Command::Set {
        key: key(),
        value,
        expiry,
        condition,
        return_old,
    };
    let result = match spec.name {
        "get" => node(Command::Get { key: key() }, Render::Entry),
        "set" => (|| {
            let o = string_options(&args[3..], true)?;
            let expiry = match o.expire {
                Some((unit, value)) => expire_arg(value, unit, "set")?,
                None if o.keepttl => Expiry::Keep,
                None => Expiry::Never,
            };
            let condition = if o.nx {
                Condition::IfAbsent
            } else if o.xx {
                Condition::IfPresent
            } else {
                Condition::Always
            };
            node(
                set(args[2].clone(), expiry, condition, o.get),
                Render::Set { get: o.get },
            )
        })(),
        "setnx" => node(
            set(args[2].clone(), Expiry::Never, Condition::IfAbsent, false),
            Render::SetNx,
        ),
        "setex" | "psetex" => (|| {
            let (unit, name) = if spec.name == "setex" {
                (Unit::Ex, "setex")
            } else {
                (Unit::Px, "psetex")
            };
            let expiry = expire_arg(&args[2], unit, name)?;
            node(
                set(args[3].clone(), expiry, Condition::Always, false),
                Render::Set { get: false },
            )
        })(),
        "getset" => node(
            set(args[2].clone(), Expiry::Never, Condition::Always, true),
            Render::Set { get: true },
        ),
        "getdel" => node(Command::GetDel { key: key() }, Render::Value),
        "getex" => (|| {
            let o = string_options(&args[2..], false)?;
            let expiry = match o.expire {
                Some((unit, value)) => match expire_arg(value, unit, "getex") {
                    Ok(expiry) => expiry,
                    // Redis answers nil for a missing key before validating the expiry.
                    Err(frame) => {
                        return node(
                            Command::Exists { keys: vec![key()] },
                            Render::ErrorIfExists(frame),
                        );
                    }
                },
                None if o.persist => Expiry::Never,
                None => Expiry::Keep,
            };
            node(Command::GetEx { key: key(), expiry }, Render::Value)
        })(),
        "mget" => node(
            Command::MGet {
                keys: args[1..].to_vec(),
            },
            Render::Values,
        ),
        "mset" | "msetnx" => {
            if args.len() % 2 == 0 {
                Err(arity_error(spec.name))
            } else {
                let pairs = args[1..]
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect();
                let nx = spec.name == "msetnx";
                node(
                    Command::MSet { pairs, nx },
                    if nx { Render::Bool } else { Render::Ok },
                )
            }
        }
        "append" => node(
            Command::Append {
                key: key(),
                value: args[2].clone(),
            },
            Render::Int,
        ),
        "strlen" => node(Command::StrLen { key: key() }, Render::Int),
        "getrange" => (|| {
            let (start, end) = (int(&args[2])?, int(&args[3])?);
            node(
                Command::GetRange {
                    key: key(),
                    start,
                    end,
                },
                Render::Value,
            )
        })(),
        "lcs" => (|| {
            let (mut len, mut idx, mut with_len, mut min_len) = (false, false, false, 0u64);
            let mut i = 3;
            while i < args.len() {
                if eq(&args[i], "idx") {
                    idx = true;
                } else if eq(&args[i], "len") {
                    len = true;
                } else if eq(&args[i], "withmatchlen") {
                    with_len = true;
                } else if eq(&args[i], "minmatchlen") && i + 1 < args.len() {
                    min_len = int(&args[i + 1])?.max(0) as u64;
                    i += 1;
                } else {
                    return Err(syntax());
                }
                i += 1;
            }
            if idx && len {
                return Err(err_text(
                    "ERR If you want both the length and indexes, please just use IDX.",
                ));
            }
            let mode = if idx {
                crate::lcs::LcsMode::Idx { min_len, with_len }
            } else if len {
                crate::lcs::LcsMode::Len
            } else {
                crate::lcs::LcsMode::Text
            };
            node(
                Command::Lcs {
                    a: key(),
                    b: args[2].clone(),
                    mode,
                },
                Render::Lcs,
            )
        })(),
        "getbit" => (|| {
            let offset = crate::bits::parse_offset(&args[2]).map_err(error)?;
            node(Command::GetBit { key: key(), offset }, Render::Int)
        })(),
        "setbit" => (|| {
            let offset = crate::bits::parse_offset(&args[2]).map_err(error)?;
            let bit = match &args[3][..] {
                b"0" => false,
                b"1" => true,
                _ => return Err(err_text("ERR bit is not an integer or out of range")),
            };
            node(
                Command::SetBit {
                    key: key(),
                    offset,
                    bit,
                },
                Render::Int,
            )
        })(),
        "bitcount" => node(
            Command::BitCount {
                key: key(),
                args: args[2..].to_vec(),
            },
            Render::Int,
        ),
        "bitpos" => (|| {
            let bit = match int(&args[2])? {
                0 => false,
                1 => true,
                _ => return Err(err_text("ERR The bit argument must be 1 or 0.")),
            };
            node(
                Command::BitPos {
                    key: key(),
                    bit,
                    args: args[3..].to_vec(),
                },
                Render::Int,
            )
        })(),
        "setrange" => (|| {
            let offset = int(&args[2])?;
            if offset < 0 {
                return Err(error(CommandError::OffsetOutOfRange));
            }
            node(
                Command::SetRange {
                    key: key(),
                    offset,
                    value: args[3].clone(),
                },
                Render::Int,
            )
        })(),
        "incr" => node(
            Command::IncrBy {
                key: key(),
                delta: 1,
            },
            Render::Int,
        ),
        "decr" => node(
            Command::IncrBy {
                key: key(),
                delta: -1,
            },
            Render::Int,
        ),
        "incrby" => {
            int(&args[2]).and_then(|delta| node(Command::IncrBy { key: key(), delta }, Render::Int))
        }
        "decrby" => (|| {
            let delta = int(&args[2])?;
            if delta == i64::MIN {
                return Err(err_text("ERR decrement would overflow"));
            }
            node(
                Command::IncrBy {
                    key: key(),
                    delta: -delta,
                },
                Render::Int,
            )
        })(),
        "incrbyfloat" => match is_float(&args[2]) {
            true => node(
                Command::IncrByFloat {
                    key: key(),
                    delta: args[2].clone(),
                },
                Render::Value,
            ),
            false => Err(error(CommandError::NotFloat)),
        },
        "del" | "unlink" => node(
            Command::Del {
                keys: args[1..].to_vec(),
            },
            Render::Int,
        ),
        "exists" => node(
            Command::Exists {
                keys: args[1..].to_vec(),
            },
            Render::Int,
        ),
        "type" => node(Command::Type { key: key() }, Render::Type),
        "expire" | "pexpire" | "expireat" | "pexpireat" => (|| {
            let condition = expire_flags(&args[3..])?;
            let mut when = int(&args[2])?;
            let name: &'static str = spec.name;
            let invalid = || error(CommandError::InvalidExpireTime(name.into()));
            if matches!(name, "expire" | "expireat") {
                if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
                    return Err(invalid());
                }
                when *= 1000;
            }
            let base = if matches!(name, "expire" | "pexpire") {
                now_ms()
            } else {
                0
            };
            if when > i64::MAX - base {
                return Err(invalid());
            }
            node(
                Command::Expire {
                    key: key(),
                    expiry: Expiry::AtMs(when + base),
                    condition,
                },
                Render::Bool,
            )
        })(),
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
            let kind = match spec.name {
                "ttl" => TtlKind::Ttl,
                "pttl" => TtlKind::Pttl,
                "expiretime" => TtlKind::ExpireTime,
                _ => TtlKind::PexpireTime,
            };
            node(Command::Ttl { key: key() }, Render::Ttl(kind))
        }
        "persist" => node(Command::Persist { key: key() }, Render::Bool),
        "keys" => node(Command::Keys { pattern: key() }, Render::Keys),
        "scan" => (|| {
            let cursor = scan_cursor(&args[1])?;
            let (mut pattern, mut count, mut type_filter) = (None, SCAN_COUNT_DEFAULT, None);
            let mut i = 2;
            while i < args.len() {
                let more = args.len() - i >= 2;
                if eq(&args[i], "count") && more {
                    let n = int(&args[i + 1])?;
                    if n < 1 {
                        return Err(syntax());
                    }
                    count = n as usize;
                } else if eq(&args[i], "match") && more {
                    pattern = Some(args[i + 1].clone());
                } else if eq(&args[i], "type") && more {
                    type_filter = Some(args[i + 1].clone());
                } else {
                    return Err(syntax());
                }
                i += 2;
            }
            node(
                Command::Scan {
                    cursor,
                    pattern,
                    count,
                    type_filter,
                },
                Render::Scan,
            )
        })(),
        "rename" => node(
            Command::Rename {
                from: key(),
                to: args[2].clone(),
                nx: false,
            },
            Render::Ok,
        ),
        "renamenx" => node(
            Command::Rename {
                from: key(),
                to: args[2].clone(),
                nx: true,
            },
            Render::Bool,
        ),
        "copy" => (|| {
            let mut replace = false;
            let mut i = 3;
            while i < args.len() {
                if eq(&args[i], "replace") {
                    replace = true;
                } else if eq(&args[i], "db") && i + 1 < args.len() {
                    // One database: 0 is this one, any other is out of range (as on a Redis
                    // with `databases 1`).
                    if int(&args[i + 1])? != 0 {
                        return Err(err_text("ERR DB index is out of range"));
                    }
                    i += 1;
                } else {
                    return Err(syntax());
                }
                i += 1;
            }
            node(
                Command::Copy {
                    from: key(),
                    to: args[2].clone(),
                    replace,
                },
                Render::Int,
            )
        })(),
        "randomkey" => node(Command::RandomKey, Render::Value),
        "dbsize" => node(Command::DbSize, Render::Int),
        "save" => node(Command::Checkpoint, Render::Ok),
        "flushdb" | "flushall" => {
            if args.len() > 2
                || (args.len() == 2 && !eq(&args[1], "async") && !eq(&args[1], "sync"))
            {
                Err(syntax())
            } else {
                node(Command::Flush, Render::Ok)
            }
        }
        _ => return None,
    };
    Some(result)
}

/// Connection, server and cluster commands answered by the front end itself.
fn local_command(
    spec: &CommandSpec,
    args: Vec<Bytes>,
    session: &mut Session,
    shared: &Shared,
) -> Action {
    let reply = match spec.name {
        "ping" if pubsub::subscribed_ping(session) && args.len() <= 2 => Frame::Array(vec![
            Frame::Bulk(Bytes::from_static(b"pong")),
            Frame::Bulk(args.get(1).cloned().unwrap_or_default()),
        ]),
        "ping" => match args.len() {
            1 => Frame::Simple(Bytes::from_static(b"PONG")),
            2 => Frame::Bulk(args[1].clone()),
            _ => arity_error("ping"),
        },
        "echo" => Frame::Bulk(args[1].clone()),
        "quit" => return Action::Close(Frame::ok()),
        "select" => match parse_i64(&args[1]).filter(|n| i32::try_from(*n).is_ok()) {
            None => error(CommandError::NotInteger),
            Some(0) => Frame::ok(),
            Some(_) => err_text("ERR DB index is out of range"),
        },
        "auth" => auth(&args[1..]),
        "hello" => hello(&args[1..], session, shared),
        "time" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Frame::Array(vec![
                Frame::Bulk(Bytes::from(now.as_secs().to_string())),
                Frame::Bulk(Bytes::from(now.subsec_micros().to_string())),
            ])
        }
        "readonly" | "readwrite" => {
            session.set_readonly(shared, spec.name == "readonly");
            Frame::ok()
        }
        "client" => {
            let frame = client(&args, session, shared);
            if session.last_command == "client|tracking" && session.tracking.is_some() {
                return once_standing(frame, shared.tracking.started());
            }
            frame
        }
        "config" => {
            let frame = super::config::config(&args, session, shared);
            if session.last_command == "config|set" && super::config::turns_on_notifications(&args)
            {
                return once_standing(frame, shared.notifier.started());
            }
            frame
        }
        "command" => introspection::command(&args, session.protocol),
        "info" => introspection::info(&args[1..], session.protocol, shared),
        "cluster" => cluster::cluster(&args, session, shared),
        other => err_text(&format!("ERR unhandled command '{other}'")),
    };
    Action::Reply(reply)
}

fn auth(args: &[Bytes]) -> Frame {
    match args {
        [_password] => err_text(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        [user, _password] if &user[..] == b"default" => Frame::ok(),
        [_, _] => err_text("WRONGPASS invalid username-password pair or user is disabled."),
        _ => syntax(),
    }
}

fn hello(args: &[Bytes], session: &mut Session, shared: &Shared) -> Frame {
    let mut protocol = session.protocol;
    if let Some(version) = args.first() {
        match parse_i64(version) {
            None => return err_text("ERR Protocol version is not an integer or out of range"),
            Some(2) => protocol = Protocol::Resp2,
            Some(3) => protocol = Protocol::Resp3,
            Some(_) => return err_text("NOPROTO unsupported protocol version"),
        }
    }
    let mut name = None;
    let mut j = 1;
    while j < args.len() {
        let more = args.len() - 1 - j;
        if eq(&args[j], "auth") && more >= 2 {
            if &args[j + 1][..] != b"default" {
                return err_text("WRONGPASS invalid username-password pair or user is disabled.");
            }
            j += 3;
        } else if eq(&args[j], "setname") && more >= 1 {
            if !valid_client_name(&args[j + 1]) {
                return client_name_error();
            }
            name = Some(args[j + 1].clone());
            j += 2;
        } else {
            return err_text(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[j])
            ));
        }
    }
    session.protocol = protocol;
    if let Some(name) = name {
        session.set_name(shared, name);
    }
    shared.clients.update(session);
    let text = |s: &str| Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()));
    Frame::Map(vec![
        (text("server"), text("redis")),
        (text("version"), text(introspection::REDIS_VERSION)),
        (
            text("proto"),
            Frame::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 }),
        ),
        (text("id"), Frame::Integer(session.id as i64)),
        (text("mode"), text("cluster")),
        (text("role"), text("master")),
        (text("modules"), Frame::Array(Vec::new())),
    ])
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn client_name_error() -> Frame {
    err_text("ERR Client names cannot contain spaces, newlines or special characters.")
}

fn client(args: &[Bytes], session: &mut Session, shared: &Shared) -> Frame {
    let sub = lower(&args[1]);
    let Some(spec) = table::lookup_sub("client", &sub) else {
        return err_text(&format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        ));
    };
    if !spec.arity_ok(args.len()) {
        return arity_error(spec.name);
    }
    session.last_command = spec.name;
    match sub.as_str() {
        "setname" => {
            if !valid_client_name(&args[2]) {
                return client_name_error();
            }
            session.set_name(shared, args[2].clone());
            Frame::ok()
        }
        "getname" => session.name.clone().map_or(Frame::Null, Frame::Bulk),
        "tracking" => super::tracking::tracking(&args[2..], session, shared),
        "caching" => super::tracking::caching(&args[2..], session),
        "getredir" => super::tracking::getredir(session),
        "trackinginfo" => super::tracking::trackinginfo(session, shared),
        "id" => Frame::Integer(session.id as i64),
        "setinfo" => Frame::ok(),
        "info" => introspection::verbatim(format!("{}\n", session.describe()), session.protocol),
        "list" => {
            let mut text = String::new();
            for line in shared.clients.describe_all(session) {
                text.push_str(&line);
                text.push('\n');
            }
            introspection::verbatim(text, session.protocol)
        }
        _ => err_text("ERR unhandled subcommand"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split_whitespace()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn unknown_command_is_worded_as_redis() {
        let frame = unknown_command(&args("foo a b"));
        assert_eq!(
            frame,
            Frame::Error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
        );
        let frame = unknown_command(&args("foo"));
        assert_eq!(
            frame,
            Frame::Error("ERR unknown command 'foo', with args beginning with: ".into())
        );
    }

    #[test]
    fn set_options_follow_redis_rules() {
        let a = args("nx ex 10");
        let o = string_options(&a, true).unwrap();
        assert!(o.nx && o.expire.is_some());
        assert!(string_options(&args("nx xx"), true).is_err());
        assert!(string_options(&args("ex 10 px 10"), true).is_err());
        assert!(string_options(&args("ex 10 ex 20"), true).is_ok());
        assert!(string_options(&args("keepttl ex 10"), true).is_err());
        assert!(string_options(&args("ex"), true).is_err());
        assert!(string_options(&args("persist"), true).is_err());
        assert!(string_options(&args("persist"), false).is_ok());
        assert!(string_options(&args("nx"), false).is_err());
    }

    #[test]
    fn expire_arguments_are_validated_like_redis() {
        assert!(expire_arg(b"0", Unit::Ex, "set").is_err());
        assert!(expire_arg(b"-5", Unit::Px, "set").is_err());
        assert!(expire_arg(b"abc", Unit::Ex, "set").is_err());
        assert!(expire_arg(b"9223372036854776", Unit::Ex, "set").is_err());
        assert_eq!(
            expire_arg(b"10", Unit::Ex, "set").unwrap(),
            Expiry::InMs(10_000)
        );
        assert_eq!(
            expire_arg(b"5", Unit::PxAt, "set").unwrap(),
            Expiry::AtMs(5)
        );
    }

    #[test]
    fn expire_flags_and_scan_cursors() {
        assert_eq!(expire_flags(&args("xx lt")).unwrap(), ExpireCondition::XxLt);
        assert_eq!(expire_flags(&args("gt xx")).unwrap(), ExpireCondition::Gt);
        assert!(expire_flags(&args("nx gt")).is_err());
        assert!(expire_flags(&args("gt lt")).is_err());
        assert_eq!(scan_cursor(b"+0").unwrap(), 0);
        assert_eq!(scan_cursor(b"-1").unwrap(), u64::MAX);
        assert!(scan_cursor(b" 0").is_err());
        assert!(scan_cursor(b"abc").is_err());
    }
}
