//! How each Redis command shapes the node's protocol-neutral [`Reply`] on the wire.

use bytes::Bytes;
use cairn_resp::Frame;

use crate::error::CommandError;
use crate::reply::{KeyTtl, Reply};

/// Which of the TTL commands asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlKind {
    Ttl,
    Pttl,
    ExpireTime,
    PexpireTime,
}

/// The Redis reply shape of a data command.
#[derive(Debug, Clone, PartialEq)]
pub enum Render {
    /// `+OK` whatever the reply (MSET, RENAME, FLUSHDB).
    Ok,
    /// GET: the entry's value or nil.
    Entry,
    /// SET (and SETEX/PSETEX/GETSET): with `get`, the old value; else `+OK`, or nil when the
    /// condition failed.
    Set {
        get: bool,
    },
    /// SETNX: 1 when written, else 0.
    SetNx,
    /// A bulk string or nil.
    Value,
    /// An array of bulk strings or nils.
    Values,
    Int,
    /// 1 or 0.
    Bool,
    /// `+string` / `+none`.
    Type,
    Ttl(TtlKind),
    Keys,
    Scan,
    /// Reply to an EXISTS probe: nil when the key is missing, else this error (GETEX validates
    /// its expiry only for existing keys).
    ErrorIfExists(Frame),
    /// LCS: the subsequence, its length, or the map of matched ranges (`IDX`).
    Lcs,
    /// EXEC: the null array when a watched key changed, else one reply per queued command:
    /// the node's answers for the data commands, in order, between the replies already known.
    Exec(Vec<ExecSlot>),
}

/// One queued command's place in EXEC's reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecSlot {
    /// The next of the node's answers, rendered so.
    Node(Render),
    /// A reply known when the command was queued.
    Ready(Frame),
    /// PUBLISH, SPUBLISH or PUBSUB (its arguments), run by EXEC once the transaction
    /// succeeded ([`crate::resp::pubsub::run_queued`]), before rendering.
    PubSub(Vec<Bytes>),
}

fn bulk_or_nil(value: Option<Bytes>) -> Frame {
    value.map_or(Frame::Null, Frame::Bulk)
}

/// Render a node result as the Redis reply of the command; `now_ms` (the node's clock) is
/// what a time to live counts from.
/// LCS's reply: a bulk string, an integer, or (IDX) a map of `matches` (each
/// `[[a_start, a_end], [b_start, b_end]]`, and its length with WITHMATCHLEN) and `len`.
fn lcs_frame(answer: crate::lcs::LcsAnswer) -> Frame {
    use crate::lcs::LcsAnswer;
    let int = |n: u64| Frame::Integer(n as i64);
    match answer {
        LcsAnswer::Text(text) => Frame::Bulk(text),
        LcsAnswer::Len(n) => int(n),
        LcsAnswer::Idx {
            matches,
            len,
            with_len,
        } => {
            let matches = matches
                .into_iter()
                .map(|m| {
                    let mut item = vec![
                        Frame::Array(vec![int(m.a.0), int(m.a.1)]),
                        Frame::Array(vec![int(m.b.0), int(m.b.1)]),
                    ];
                    if with_len {
                        item.push(int(m.len));
                    }
                    Frame::Array(item)
                })
                .collect();
            Frame::Map(vec![
                (
                    Frame::Bulk(Bytes::from_static(b"matches")),
                    Frame::Array(matches),
                ),
                (Frame::Bulk(Bytes::from_static(b"len")), int(len)),
            ])
        }
    }
}

pub fn render(render: Render, result: Result<Reply, CommandError>, now_ms: u64) -> Frame {
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => return Frame::Error(Bytes::from(e.to_string())),
    };
    match (render, reply) {
        (Render::Ok, _) => Frame::ok(),
        (Render::Entry, Reply::Entry(entry)) => bulk_or_nil(entry.map(|e| e.value)),
        (Render::Set { get: true }, Reply::Set(outcome)) => {
            bulk_or_nil(outcome.old.map(|e| e.value))
        }
        (Render::Set { get: false }, Reply::Set(outcome)) => {
            if outcome.version.is_some() {
                Frame::ok()
            } else {
                Frame::Null
            }
        }
        (Render::SetNx, Reply::Set(outcome)) => {
            Frame::Integer(i64::from(outcome.version.is_some()))
        }
        (Render::Value, Reply::Value(value)) => bulk_or_nil(value),
        (Render::Values, Reply::Values(values)) => {
            Frame::Array(values.into_iter().map(bulk_or_nil).collect())
        }
        (Render::Int, Reply::Int(n)) => Frame::Integer(n),
        (Render::Lcs, Reply::Lcs(answer)) => lcs_frame(answer),
        (Render::Bool, Reply::Bool(b)) => Frame::Integer(i64::from(b)),
        (Render::Type, Reply::Type(t)) => Frame::Simple(Bytes::from_static(t.as_str().as_bytes())),
        (Render::Ttl(kind), Reply::Ttl(ttl)) => Frame::Integer(match ttl {
            KeyTtl::Missing => -2,
            KeyTtl::Persistent => -1,
            KeyTtl::ExpiresAtMs(at) => {
                let left = at.saturating_sub(now_ms) as i64;
                // Redis (`ttlGenericCommand`) rounds both second-valued answers to the
                // nearest second: `(ms + 500) / 1000`.
                match kind {
                    TtlKind::Ttl => (left + 500) / 1000,
                    TtlKind::Pttl => left,
                    TtlKind::ExpireTime => (at as i64 + 500) / 1000,
                    TtlKind::PexpireTime => at as i64,
                }
            }
        }),
        (Render::Keys, Reply::Keys(keys)) => {
            Frame::Array(keys.into_iter().map(Frame::Bulk).collect())
        }
        (Render::Scan, Reply::ScanPage { cursor, keys }) => Frame::Array(vec![
            Frame::Bulk(Bytes::from(cursor.to_string())),
            Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
        ]),
        (Render::Exec(slots), Reply::Exec { succeeded, replies }) => {
            if !succeeded {
                return Frame::NullArray;
            }
            let mut answers = replies.into_iter();
            Frame::Array(
                slots
                    .into_iter()
                    .map(|slot| match slot {
                        ExecSlot::Ready(frame) => frame,
                        ExecSlot::PubSub(_) => Frame::Error(Bytes::from_static(
                            b"ERR internal error: a queued pub/sub command did not run",
                        )),
                        ExecSlot::Node(shape) => self::render(
                            shape,
                            answers.next().unwrap_or_else(|| {
                                Err(CommandError::Invalid("EXEC lost an answer".into()))
                            }),
                            now_ms,
                        ),
                    })
                    .collect(),
            )
        }
        (Render::ErrorIfExists(frame), Reply::Int(n)) => {
            if n > 0 {
                frame
            } else {
                Frame::Null
            }
        }
        (render, reply) => Frame::Error(Bytes::from(format!(
            "ERR internal error: unexpected reply {reply:?} for {render:?}"
        ))),
    }
}
