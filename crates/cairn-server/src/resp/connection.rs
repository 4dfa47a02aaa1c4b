//! One RESP client connection: read, decode every buffered request, execute them in order
//! (writes are proposed without waiting so a pipeline shares group commits), and write all
//! replies with one flush.
//!
//! Bounds: at most [`PIPELINE_REQUESTS_MAX`] requests and [`PIPELINE_BYTES_MAX`] argument
//! bytes are in flight (decoded but unanswered) per connection, and decoding pauses once
//! [`REPLY_BYTES_MAX`] reply bytes wait to be written; the decoder refuses oversized headers
//! before anything is allocated.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cairn_resp::{Frame, Limits, RequestDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::command::Command;
use crate::metrics::Observer;
use crate::node::PendingWrite;
use crate::proposer::ProposalResult;
use crate::resp::dispatch::{Action, dispatch};
use crate::resp::render::{Render, render};
use crate::resp::session::{RespStats, Session, Shared};

/// Most requests decoded before their replies are written.
pub const PIPELINE_REQUESTS_MAX: usize = 1024;
/// Most argument bytes decoded before their replies are written.
pub const PIPELINE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Encoded reply bytes after which decoding pauses until they are written (a client that
/// pipelines many large GETs without reading gets back-pressure, not unbounded buffering).
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes reserved for each socket read.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Front-end label for metrics.
pub const FRONTEND: &str = "resp";

/// A reply not written yet, in request order.
#[derive(Debug)]
enum Slot {
    Ready(Frame),
    Write {
        pending: PendingWrite,
        render: Render,
        command: &'static str,
        started: Instant,
        /// The NOLOOP ticket of the write ([`crate::tracking::Tracking::own_write_begins`]).
        own: Option<u64>,
    },
    /// A write's answer: one that came while the queue is drained, or a write refused before
    /// it was proposed.
    Answered(Answered),
}

/// A write's answer, not yet encoded.
#[derive(Debug)]
struct Answered {
    result: ProposalResult,
    /// The command, when the answer is a refusal that may be retried.
    again: Option<Command>,
    render: Render,
    command: &'static str,
    started: Instant,
}

impl Answered {
    async fn of(
        pending: PendingWrite,
        render: Render,
        command: &'static str,
        started: Instant,
        own: Option<(u64, u64, &Shared)>,
    ) -> Answered {
        let (result, again) = match own {
            None => pending.outcome().await,
            Some((id, ticket, shared)) => {
                let (result, again, landed) = pending.outcome_landed().await;
                shared.tracking.own_write_answered(id, ticket, landed);
                (result, again)
            }
        };
        Answered {
            result,
            again,
            render,
            command,
            started,
        }
    }
}

/// The connection's outgoing side.
#[derive(Debug)]
struct Replies {
    queue: VecDeque<Slot>,
    out: BytesMut,
}

impl Replies {
    fn push(&mut self, frame: Frame, session: &Session, shared: &Shared) {
        if self.queue.is_empty() {
            encode(&frame, &mut self.out, session, shared);
        } else {
            self.queue.push_back(Slot::Ready(frame));
        }
    }

    /// Wait for every queued write and encode all queued replies in order.
    ///
    /// A write refused because its shard's leadership moved between routing and proposing
    /// (`TRYAGAIN`: nothing happened) is sent again, routed afresh, when none of this
    /// connection's later writes can have taken effect, so the retry keeps the connection's
    /// order of writes; otherwise the client gets the `TRYAGAIN`.
    async fn drain(&mut self, session: &Session, shared: &Shared, observer: &mut Observer) {
        if self.queue.is_empty() {
            return;
        }
        for slot in self.queue.iter_mut() {
            if let Slot::Write { .. } = slot {
                let Slot::Write {
                    pending,
                    render,
                    command,
                    started,
                    own,
                } = std::mem::replace(slot, Slot::Ready(Frame::Null))
                else {
                    unreachable!("matched above")
                };
                let own = own.map(|ticket| (session.id, ticket, shared));
                *slot = Slot::Answered(Answered::of(pending, render, command, started, own).await);
            }
        }
        let retry_from = retriable_from(self.queue.iter().map(|slot| match slot {
            Slot::Answered(a) => Some(matches!(&a.result, Err(e) if e.is_refusal())),
            _ => None,
        }));
        // A retry that is refused again (after its own retry window) ends the retries of
        // this drain: the shard has no leader to take them, and each would wait as long.
        let mut retrying = true;
        for (i, slot) in self.queue.drain(..).enumerate() {
            let frame = match slot {
                Slot::Ready(frame) => frame,
                Slot::Write { .. } => unreachable!("every write was answered above"),
                Slot::Answered(Answered {
                    mut result,
                    again,
                    render: shape,
                    command,
                    started,
                }) => {
                    if let Some(cmd) = again.filter(|_| retrying && i >= retry_from) {
                        result = shared.node.execute(cmd).await;
                        retrying = !matches!(&result, Err(e) if e.is_refusal());
                    }
                    observer.observe(command, started.elapsed(), result.is_ok());
                    let shape = crate::resp::pubsub::run_queued(shape, &result, shared);
                    render(shape, result, shared.node.now_ms())
                }
            };
            encode(&frame, &mut self.out, session, shared);
        }
    }
}

/// Each key's version now (0: missing), read linearizably, for `WATCH`.
async fn watch_versions(
    node: &crate::node::Node,
    keys: Vec<Bytes>,
) -> Result<Vec<(Bytes, u64)>, crate::error::CommandError> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let version = match node.execute(Command::Get { key: key.clone() }).await? {
            crate::reply::Reply::Entry(entry) => entry.map_or(0, |e| e.version),
            other => {
                return Err(crate::error::CommandError::Invalid(format!(
                    "unexpected reply to a read: {other:?}"
                )));
            }
        };
        out.push((key, version));
    }
    Ok(out)
}

/// Given, in order, whether each queued write was refused (`None` for replies that are not
/// writes), the position from which refused writes may be sent again: just after the last
/// write that may have taken effect.
fn retriable_from(refused: impl Iterator<Item = Option<bool>>) -> usize {
    refused
        .enumerate()
        .filter(|(_, r)| *r == Some(false))
        .last()
        .map_or(0, |(i, _)| i + 1)
}

fn encode(frame: &Frame, out: &mut BytesMut, session: &Session, shared: &Shared) {
    if matches!(frame, Frame::Error(_)) {
        RespStats::add(&shared.stats.errors, 1);
    }
    frame.encode(out, session.protocol);
}

/// The next pub/sub message for this connection; pending forever while it subscribes to
/// nothing, None once the hub dropped it for falling behind.
async fn next_message(
    subscriber: &mut Option<crate::pubsub::Subscriber>,
) -> Option<crate::pubsub::Message> {
    match subscriber.as_mut() {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// The next invalidation for this connection; pending forever while it has no inbox, None
/// once the tracking table closed it (it could not take its invalidations).
async fn next_invalidation(
    inbox: &mut Option<tokio::sync::mpsc::Receiver<crate::tracking::Invalidation>>,
) -> Option<crate::tracking::Invalidation> {
    match inbox.as_mut() {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Serve one connection until the peer leaves, sends QUIT or a protocol error, or the server
/// shuts down.
pub async fn serve(
    mut stream: TcpStream,
    mut session: Session,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = Limits {
        bulk_bytes_max: Limits::CAIRN
            .bulk_bytes_max
            .max(shared.node.options().value_bytes_max + 64 * 1024),
        ..Limits::CAIRN
    };
    let mut decoder = RequestDecoder::new(limits);
    let mut observer = Observer::new(FRONTEND);
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut replies = Replies {
        queue: VecDeque::new(),
        out: BytesMut::with_capacity(READ_CHUNK_BYTES),
    };
    loop {
        let mut requests = 0;
        let mut bytes = 0;
        let mut close = false;
        let mut more_buffered = false;
        loop {
            if requests >= PIPELINE_REQUESTS_MAX
                || bytes >= PIPELINE_BYTES_MAX
                || replies.out.len() >= REPLY_BYTES_MAX
            {
                more_buffered = true;
                break;
            }
            let request = match decoder.decode(&mut input) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(e) => {
                    replies.drain(&session, &shared, &mut observer).await;
                    e.encode_reply(&mut replies.out);
                    RespStats::add(&shared.stats.errors, 1);
                    let _ = stream.write_all(&replies.out).await;
                    tracing::debug!(client = session.id, error = %e, "protocol error; closing");
                    return;
                }
            };
            if request.is_cross_protocol_attack() {
                tracing::warn!(client = session.id, addr = %session.addr, "possible cross-protocol attack (POST or Host: on the RESP port); closing");
                return;
            }
            requests += 1;
            // `CLIENT CACHING` speaks for the one command after it.
            if session.last_command != "client|caching" {
                session.caching = None;
            }
            bytes += request.args.iter().map(Bytes::len).sum::<usize>();
            RespStats::add(&shared.stats.commands_processed, 1);
            let started = Instant::now();
            match dispatch(request.args, &mut session, &shared) {
                Action::Reply(frame) => {
                    observer.observe(
                        session.last_command,
                        started.elapsed(),
                        !matches!(frame, Frame::Error(_)),
                    );
                    replies.push(frame, &session, &shared);
                }
                Action::Standing { positioned, frame } => {
                    // When it does not stand in time, the follow tells its clients (tracking
                    // clients drop their caches) once it does.
                    positioned.wait().await;
                    observer.observe(session.last_command, started.elapsed(), true);
                    replies.push(frame, &session, &shared);
                }
                Action::Replies(frames) => {
                    observer.observe(session.last_command, started.elapsed(), true);
                    for frame in frames {
                        replies.push(frame, &session, &shared);
                    }
                }
                Action::Close(frame) => {
                    replies.push(frame, &session, &shared);
                    close = true;
                    break;
                }
                Action::Publish { slots, array } => {
                    replies.drain(&session, &shared, &mut observer).await;
                    let frame = crate::resp::pubsub::publish_after_writes(slots, array, &shared);
                    observer.observe(session.last_command, started.elapsed(), true);
                    replies.push(frame, &session, &shared);
                }
                Action::Watch(keys) => {
                    // The versions as of now, after every earlier write of this connection.
                    replies.drain(&session, &shared, &mut observer).await;
                    let frame = match watch_versions(&shared.node, keys).await {
                        Ok(versions) => {
                            session.watched.extend(versions);
                            Frame::ok()
                        }
                        Err(e) => Frame::Error(Bytes::from(e.to_string())),
                    };
                    observer.observe(
                        session.last_command,
                        started.elapsed(),
                        !matches!(frame, Frame::Error(_)),
                    );
                    replies.push(frame, &session, &shared);
                }
                Action::Node { cmd, render: shape } => {
                    let command = session.last_command;
                    // A transaction's reads are remembered too (with its writes' keys, which
                    // costs at most an extra invalidation).
                    if matches!(cmd, crate::command::Command::Exec { .. })
                        && crate::resp::tracking::tracks_reads(&session)
                    {
                        let keys: Vec<Bytes> = cmd.write_keys().into_iter().cloned().collect();
                        shared.tracking.reading(session.id, &keys);
                    }
                    if cmd.is_write() {
                        if shared.node.runs_as_transaction(&cmd) {
                            // It reads the keys of its primary shard as a read does, so it
                            // waits for this connection's earlier writes as a read does.
                            replies.drain(&session, &shared, &mut observer).await;
                        }
                        // NOLOOP: the write goes in an entry of its own, and changes of its
                        // keys wait for its answer (see `crate::tracking`).
                        let own = crate::resp::tracking::noloop(&session).then(|| {
                            let keys = cmd.write_keys().into_iter().cloned().collect();
                            shared.tracking.own_write_begins(session.id, keys)
                        });
                        let proposed = match own {
                            Some(_) => shared.node.propose_alone(cmd).await,
                            None => shared.node.propose(cmd).await,
                        };
                        if let (Err(_), Some(ticket)) = (&proposed, own) {
                            shared.tracking.own_write_answered(session.id, ticket, None);
                        }
                        match proposed {
                            Ok(pending) => replies.queue.push_back(Slot::Write {
                                pending,
                                render: shape,
                                command,
                                started,
                                own,
                            }),
                            // Kept in order with the writes: whether it was a refusal
                            // decides what may be retried before it (see `Replies::drain`).
                            Err(e) => replies.queue.push_back(Slot::Answered(Answered {
                                result: Err(e),
                                again: None,
                                render: shape,
                                command,
                                started,
                            })),
                        }
                    } else {
                        // Remembered before the read, so that a change applied after it is
                        // invalidated even if the read returned the value from before.
                        if crate::resp::tracking::tracks_reads(&session) {
                            let keys: Vec<Bytes> = cmd.read_keys().into_iter().cloned().collect();
                            shared.tracking.reading(session.id, &keys);
                        }
                        // A read waits for every earlier write of this connection, so it sees
                        // them (unless READONLY: this node's replica may not have applied
                        // them yet).
                        replies.drain(&session, &shared, &mut observer).await;
                        let result = shared.node.execute_with(cmd, session.readonly).await;
                        observer.observe(command, started.elapsed(), result.is_ok());
                        let shape = crate::resp::pubsub::run_queued(shape, &result, &shared);
                        replies.push(
                            render(shape, result, shared.node.now_ms()),
                            &session,
                            &shared,
                        );
                    }
                }
            }
        }
        replies.drain(&session, &shared, &mut observer).await;
        if !replies.out.is_empty() {
            if stream.write_all(&replies.out).await.is_err() {
                return;
            }
            replies.out.clear();
        }
        if close || *shutdown.borrow() {
            return;
        }
        if more_buffered {
            continue;
        }
        input.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            read = stream.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            message = next_message(&mut session.subscriber) => match message {
                // Pushed as it comes, with whatever else is already waiting.
                Some(message) => {
                    replies.push(crate::resp::pubsub::message_frame(message), &session, &shared);
                    while replies.out.len() < REPLY_BYTES_MAX {
                        let Some(more) = session.subscriber.as_mut().and_then(|s| s.try_next()) else {
                            break;
                        };
                        replies.push(crate::resp::pubsub::message_frame(more), &session, &shared);
                    }
                }
                None => {
                    tracing::info!(client = session.id, "closing a subscriber that fell behind");
                    return;
                }
            },
            invalidation = next_invalidation(&mut session.invalidations) => match invalidation {
                Some(invalidation) => {
                    if let Some(frame) = crate::resp::tracking::invalidation_frame(invalidation, &session) {
                        replies.push(frame, &session, &shared);
                    }
                }
                None => {
                    tracing::info!(client = session.id, "closing a connection that fell behind its invalidations");
                    return;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retriable_from;

    #[test]
    fn only_refusals_after_the_last_write_that_may_have_taken_effect_are_retried() {
        let from = |v: &[Option<bool>]| retriable_from(v.iter().copied());
        // Nothing took effect: every refusal may be sent again, in order.
        assert_eq!(from(&[Some(true), None, Some(true)]), 0);
        assert_eq!(from(&[]), 0);
        // A later write took effect: the refusal before it must not land after it.
        assert_eq!(from(&[Some(true), Some(false), Some(true)]), 2);
        assert_eq!(from(&[Some(true), Some(false)]), 2);
        // Replies that are not writes do not count.
        assert_eq!(from(&[Some(false), None, Some(true), None]), 1);
        // The last write that may have taken effect bounds it, not the first.
        let (t, f) = (Some(true), Some(false));
        assert_eq!(from(&[t, f, t, f, t]), 4);
    }
}
