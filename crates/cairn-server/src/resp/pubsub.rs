//! Pub/sub on a RESP connection: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PUBLISH
//! and PUBSUB with Redis's replies, and RESP2's subscribed context (a connection subscribed
//! to anything takes only pub/sub commands, PING and QUIT). Messages are pushed by the
//! connection's loop as they arrive ([`message_frame`]).

use bytes::Bytes;
use cairn_resp::{Frame, Protocol};

use crate::pubsub::Message;
use crate::resp::dispatch::Action;
use crate::resp::session::{Session, Shared};

/// The pub/sub commands.
pub fn is_pubsub(name: &str) -> bool {
    matches!(
        name,
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "publish" | "pubsub"
    )
}

/// Whether the connection is in RESP2's subscribed context, where only these commands run.
pub fn refused_in_context(name: &str, session: &Session) -> Option<Frame> {
    let subscribed = session.subscriber.as_ref().is_some_and(|s| s.count() > 0);
    let allowed = matches!(
        name,
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ping" | "quit"
    );
    (session.protocol == Protocol::Resp2 && subscribed && !allowed).then(|| {
        Frame::Error(Bytes::from(format!(
            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT \
             / RESET are allowed in this context"
        )))
    })
}

/// Whether PING answers in the subscribed form (`["pong", message]`), as Redis does for a
/// RESP2 connection subscribed to anything.
pub fn subscribed_ping(session: &Session) -> bool {
    session.protocol == Protocol::Resp2
        && session.subscriber.as_ref().is_some_and(|s| s.count() > 0)
}

fn bulk(s: &'static str) -> Frame {
    Frame::Bulk(Bytes::from_static(s.as_bytes()))
}

/// A received message as Redis pushes it: `message channel payload`, or `pmessage pattern
/// channel payload`.
pub fn message_frame(message: Message) -> Frame {
    match message.pattern {
        None => Frame::Push(vec![
            bulk("message"),
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
        "subscribe" | "psubscribe" => {
            let session_inbox_missing = session.invalidations.is_none();
            let mut open_inbox = false;
            let subscriber = session.subscriber.get_or_insert_with(|| hub.subscriber());
            let frames: Vec<Frame> = args[1..]
                .iter()
                .map(|name_arg| {
                    if name == "subscribe" {
                        if &name_arg[..] == super::tracking::INVALIDATE_CHANNEL.as_bytes()
                            && session_inbox_missing
                        {
                            open_inbox = true;
                        }
                        subscriber.subscribe(name_arg.clone());
                    } else {
                        subscriber.psubscribe(name_arg.clone());
                    }
                    Frame::Push(vec![
                        bulk(if name == "subscribe" {
                            "subscribe"
                        } else {
                            "psubscribe"
                        }),
                        Frame::Bulk(name_arg.clone()),
                        Frame::Integer(subscriber.count() as i64),
                    ])
                })
                .collect();
            // Invalidations redirected here arrive as messages on this channel.
            if open_inbox {
                session.invalidations = Some(shared.tracking.inbox(session.id));
            }
            Action::Replies(frames)
        }
        "unsubscribe" | "punsubscribe" => {
            let kind = if name == "unsubscribe" {
                "unsubscribe"
            } else {
                "punsubscribe"
            };
            let Some(subscriber) = session.subscriber.as_mut() else {
                return Action::Replies(none_left(kind, &args[1..]));
            };
            // Messages published before the unsubscription go out before its answer, as
            // in Redis (a RESP2 client that leaves the subscribed context must not read one
            // as the answer to its next command).
            let mut frames = Vec::new();
            while let Some(message) = subscriber.try_next() {
                frames.push(message_frame(message));
            }
            let names = match &args[1..] {
                [] if name == "unsubscribe" => subscriber.channels(),
                [] => subscriber.patterns(),
                some => some.to_vec(),
            };
            if names.is_empty() {
                frames.push(Frame::Push(vec![
                    bulk(kind),
                    Frame::Null,
                    Frame::Integer(subscriber.count() as i64),
                ]));
                return Action::Replies(frames);
            }
            frames.extend(names.into_iter().map(|n| {
                if name == "unsubscribe" {
                    subscriber.unsubscribe(&n);
                } else {
                    subscriber.punsubscribe(&n);
                }
                Frame::Push(vec![
                    bulk(kind),
                    Frame::Bulk(n),
                    Frame::Integer(subscriber.count() as i64),
                ])
            }));
            Action::Replies(frames)
        }
        "publish" => Action::Reply(Frame::Integer(
            shared.node.publish(&args[1], &args[2]) as i64
        )),
        _ => Action::Reply(pubsub_introspection(args, shared)),
    }
}

/// UNSUBSCRIBE/PUNSUBSCRIBE on a connection that never subscribed.
fn none_left(kind: &'static str, names: &[Bytes]) -> Vec<Frame> {
    if names.is_empty() {
        return vec![Frame::Push(vec![
            bulk(kind),
            Frame::Null,
            Frame::Integer(0),
        ])];
    }
    names
        .iter()
        .map(|n| Frame::Push(vec![bulk(kind), Frame::Bulk(n.clone()), Frame::Integer(0)]))
        .collect()
}

/// PUBSUB CHANNELS [pattern] | NUMSUB [channel ...] | NUMPAT | HELP.
fn pubsub_introspection(args: &[Bytes], shared: &Shared) -> Frame {
    let hub = shared.node.pubsub();
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("channels", 2 | 3) => Frame::Array(
            hub.channels(args.get(2).map(|p| &p[..]))
                .into_iter()
                .map(Frame::Bulk)
                .collect(),
        ),
        ("numsub", _) => Frame::Array(
            args[2..]
                .iter()
                .flat_map(|c| [Frame::Bulk(c.clone()), Frame::Integer(hub.numsub(c) as i64)])
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
                "HELP",
                "    Prints this help.",
            ]
            .into_iter()
            .map(|line| Frame::Simple(Bytes::from_static(line.as_bytes())))
            .collect(),
        ),
        ("channels" | "numpat" | "help", _) => Frame::Error(Bytes::from(format!(
            "ERR wrong number of arguments for 'pubsub|{sub}' command"
        ))),
        _ => Frame::Error(Bytes::from(format!(
            "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}
