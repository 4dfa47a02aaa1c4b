//! Pub/sub on a RESP connection: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PUBLISH,
//! the shard channels' SSUBSCRIBE, SUNSUBSCRIBE and SPUBLISH, and PUBSUB, with Redis's
//! replies, and RESP2's subscribed context (a connection subscribed to anything takes only
//! pub/sub commands, PING and QUIT). Messages are pushed by the connection's loop as they
//! arrive ([`message_frame`]). PUBLISH, SPUBLISH and PUBSUB run inside MULTI (queued, run by
//! EXEC); the subscribing commands are refused there.

use bytes::Bytes;
use cairn_resp::{Frame, Protocol};

use crate::error::CommandError;
use crate::pubsub::Message;
use crate::reply::Reply;
use crate::resp::dispatch::Action;
use crate::resp::render::{ExecSlot, Render};
use crate::resp::session::{Session, Shared};

/// The commands that change what a connection is subscribed to.
fn subscribing(name: &str) -> bool {
    matches!(
        name,
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe" | "sunsubscribe"
    )
}

/// The pub/sub commands.
pub fn is_pubsub(name: &str) -> bool {
    subscribing(name) || matches!(name, "publish" | "spublish" | "pubsub")
}

/// The pub/sub commands that run inside MULTI (queued, run by EXEC): the others change
/// what the connection is subscribed to, which EXEC's one reply cannot carry on Cairn.
pub fn runs_in_multi(name: &str) -> bool {
    matches!(name, "publish" | "spublish" | "pubsub")
}

/// Whether the connection is in RESP2's subscribed context, where only these commands run.
pub fn refused_in_context(name: &str, session: &Session) -> Option<Frame> {
    let allowed = subscribing(name) || matches!(name, "ping" | "quit");
    (session.protocol == Protocol::Resp2 && subscribed(session) && !allowed).then(|| {
        Frame::Error(Bytes::from(format!(
            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT \
             / RESET are allowed in this context"
        )))
    })
}

/// Whether the connection is subscribed to anything (channel, pattern or shard channel).
fn subscribed(session: &Session) -> bool {
    session
        .subscriber
        .as_ref()
        .is_some_and(|s| s.count() + s.shard_count() > 0)
}

/// Whether PING answers in the subscribed form (`["pong", message]`), as Redis does for a
/// RESP2 connection subscribed to anything.
pub fn subscribed_ping(session: &Session) -> bool {
    session.protocol == Protocol::Resp2 && subscribed(session)
}

fn bulk(s: &'static str) -> Frame {
    Frame::Bulk(Bytes::from_static(s.as_bytes()))
}

/// A received message as Redis pushes it: `message channel payload`, `pmessage pattern
/// channel payload`, or `smessage channel payload` (a shard channel's).
pub fn message_frame(message: Message) -> Frame {
    match message.pattern {
        None => Frame::Push(vec![
            bulk(if message.sharded {
                "smessage"
            } else {
                "message"
            }),
            Frame::Bulk(message.channel),
            Frame::Bulk(message.payload),
        ]),
        Some(pattern) => Frame::Push(vec![
            bulk("pmessage"),
            Frame::Bulk(pattern),
            Frame::Bulk(message.channel),
            Frame::Bulk(message.payload),
        ]),
    }
}

/// Runs a pub/sub command (see [`is_pubsub`]).
pub fn command(name: &str, args: &[Bytes], session: &mut Session, shared: &Shared) -> Action {
    let hub = shared.node.pubsub();
    match name {
        "subscribe" | "psubscribe" | "ssubscribe" => {
            let session_inbox_missing = session.invalidations.is_none();
            let mut open_inbox = false;
            let subscriber = session.subscriber.get_or_insert_with(|| hub.subscriber());
            let frames: Vec<Frame> = args[1..]
                .iter()
                .map(|name_arg| {
                    let count = match name {
                        "subscribe" => {
                            if &name_arg[..] == super::tracking::INVALIDATE_CHANNEL.as_bytes()
                                && session_inbox_missing
                            {
                                open_inbox = true;
                            }
                            subscriber.subscribe(name_arg.clone(), false);
                            subscriber.count()
                        }
                        "ssubscribe" => {
                            subscriber.subscribe(name_arg.clone(), true);
                            subscriber.shard_count()
                        }
                        _ => {
                            subscriber.psubscribe(name_arg.clone());
                            subscriber.count()
                        }
                    };
                    Frame::Push(vec![
                        Frame::Bulk(Bytes::copy_from_slice(name.as_bytes())),
                        Frame::Bulk(name_arg.clone()),
                        Frame::Integer(count as i64),
                    ])
                })
                .collect();
            // Invalidations redirected here arrive as messages on this channel.
            if open_inbox {
                session.invalidations = Some(shared.tracking.inbox(session.id));
            }
            Action::Replies(frames)
        }
        "unsubscribe" | "punsubscribe" | "sunsubscribe" => {
            let Some(subscriber) = session.subscriber.as_mut() else {
                return Action::Replies(none_left(name, &args[1..]));
            };
            // Messages published before the unsubscription go out before its answer, as
            // in Redis (a RESP2 client that leaves the subscribed context must not read one
            // as the answer to its next command).
            let mut frames = Vec::new();
            while let Some(message) = subscriber.try_next() {
                frames.push(message_frame(message));
            }
            let sharded = name == "sunsubscribe";
            let names = match (&args[1..], name) {
                ([], "unsubscribe") => subscriber.channels(),
                ([], "sunsubscribe") => subscriber.shard_channels(),
                ([], _) => subscriber.patterns(),
                (some, _) => some.to_vec(),
            };
            let count = |s: &crate::pubsub::Subscriber| {
                if sharded { s.shard_count() } else { s.count() }
            };
            if names.is_empty() {
                frames.push(Frame::Push(vec![
                    Frame::Bulk(Bytes::copy_from_slice(name.as_bytes())),
                    Frame::Null,
                    Frame::Integer(count(subscriber) as i64),
                ]));
                return Action::Replies(frames);
            }
            frames.extend(names.into_iter().map(|n| {
                if name == "punsubscribe" {
                    subscriber.punsubscribe(&n);
                } else {
                    subscriber.unsubscribe(&n, sharded);
                }
                Frame::Push(vec![
                    Frame::Bulk(Bytes::copy_from_slice(name.as_bytes())),
                    Frame::Bulk(n),
                    Frame::Integer(count(subscriber) as i64),
                ])
            }));
            Action::Replies(frames)
        }
        _ => Action::Reply(run_now(args, shared)),
    }
}

/// Runs the pub/sub commands a MULTI block queued ([`runs_in_multi`]), once its EXEC is
/// known to have succeeded (`result`), making their answers part of EXEC's reply.
pub fn run_queued(shape: Render, result: &Result<Reply, CommandError>, shared: &Shared) -> Render {
    match shape {
        Render::Exec(slots)
            if matches!(
                result,
                Ok(Reply::Exec {
                    succeeded: true,
                    ..
                })
            ) =>
        {
            Render::Exec(
                slots
                    .into_iter()
                    .map(|slot| match slot {
                        ExecSlot::PubSub(args) => ExecSlot::Ready(run_now(&args, shared)),
                        other => other,
                    })
                    .collect(),
            )
        }
        other => other,
    }
}

/// The answer of [`Action::Publish`], run now (every earlier write of the connection has
/// landed): one command's, or EXEC's array.
pub fn publish_after_writes(slots: Vec<ExecSlot>, array: bool, shared: &Shared) -> Frame {
    let mut frames: Vec<Frame> = slots
        .into_iter()
        .map(|slot| match slot {
            ExecSlot::PubSub(args) => run_now(&args, shared),
            ExecSlot::Ready(frame) => frame,
            ExecSlot::Node(_) => Frame::Error(Bytes::from_static(
                b"ERR internal error: a data command among the publishes",
            )),
        })
        .collect();
    if array {
        Frame::Array(frames)
    } else {
        frames.pop().unwrap_or(Frame::Null)
    }
}

/// PUBLISH, SPUBLISH or PUBSUB, now.
pub fn run_now(args: &[Bytes], shared: &Shared) -> Frame {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    match name.as_str() {
        "publish" | "spublish" => {
            Frame::Integer(shared.node.publish(&args[1], &args[2], name == "spublish") as i64)
        }
        _ => pubsub_introspection(args, shared),
    }
}

/// UNSUBSCRIBE/PUNSUBSCRIBE/SUNSUBSCRIBE on a connection that never subscribed.
fn none_left(kind: &str, names: &[Bytes]) -> Vec<Frame> {
    let kind = || Frame::Bulk(Bytes::copy_from_slice(kind.as_bytes()));
    if names.is_empty() {
        return vec![Frame::Push(vec![kind(), Frame::Null, Frame::Integer(0)])];
    }
    names
        .iter()
        .map(|n| Frame::Push(vec![kind(), Frame::Bulk(n.clone()), Frame::Integer(0)]))
        .collect()
}

/// PUBSUB CHANNELS [pattern] | NUMSUB [channel ...] | NUMPAT | SHARDCHANNELS [pattern] |
/// SHARDNUMSUB [shardchannel ...] | HELP.
fn pubsub_introspection(args: &[Bytes], shared: &Shared) -> Frame {
    let hub = shared.node.pubsub();
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("channels" | "shardchannels", 2 | 3) => Frame::Array(
            hub.channels(args.get(2).map(|p| &p[..]), sub == "shardchannels")
                .into_iter()
                .map(Frame::Bulk)
                .collect(),
        ),
        ("numsub" | "shardnumsub", _) => Frame::Array(
            args[2..]
                .iter()
                .flat_map(|c| {
                    let count = hub.numsub(c, sub == "shardnumsub");
                    [Frame::Bulk(c.clone()), Frame::Integer(count as i64)]
                })
                .collect(),
        ),
        ("numpat", 2) => Frame::Integer(hub.numpat() as i64),
        ("help", 2) => Frame::Array(
            [
                "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CHANNELS [<pattern>]",
                "    Return the currently active channels matching a <pattern> (default: '*').",
                "NUMPAT",
                "    Return number of subscriptions to patterns.",
                "NUMSUB [<channel> ...]",
                "    Return the number of subscribers for the specified channels, excluding",
                "    pattern subscriptions(default: no channels).",
                "SHARDCHANNELS [<pattern>]",
                "    Return the currently active shard level channels matching a <pattern> (default: '*').",
                "SHARDNUMSUB [<shardchannel> ...]",
                "    Return the number of subscribers for the specified shard level channel(s)",
                "HELP",
                "    Prints this help.",
            ]
            .into_iter()
            .map(|line| Frame::Simple(Bytes::from_static(line.as_bytes())))
            .collect(),
        ),
        ("channels" | "shardchannels" | "numpat" | "help", _) => Frame::Error(Bytes::from(format!(
            "ERR wrong number of arguments for 'pubsub|{sub}' command"
        ))),
        _ => Frame::Error(Bytes::from(format!(
            "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}
