//! How entries, votes and log ids are stored in the node's WAL and the engine's marker.
//!
//! Byte layouts (little-endian), hand-written because entries are the hot path and their
//! payloads are binary:
//!
//! ```text
//! log id   := term u64 | leader node u64 | index u64
//! entry    := kind u8 (0 blank, 1 normal, 2 membership) | log id | body
//!   normal body     := op count u32 | ops
//!   op              := 1 (put) | key len u32 | key | value len u32 | value | expiry ms u64 (0 = none)
//!                    | 2 (delete) | key len u32 | key
//!                    | 3 (clear every key)
//!   membership body := JSON of openraft's `Membership` (rare: configuration changes)
//! vote     := term u64 | node u64 | committed u8
//! option   := 0 | 1 value
//! ```
//!
//! Every read of these bytes comes from a CRC-checked WAL record or engine record; a decode
//! failure is still reported (`InvalidData`), never papered over.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::impls::leader_id_adv::LeaderId;
use openraft::{EntryPayload, Membership};

use crate::types::{Entry, LogId, NodeAddr, Request, StoredMembership, Vote, WriteOp};

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_CLEAR: u8 = 3;
const OP_SYSTEM_PUT: u8 = 4;
const OP_SYSTEM_DELETE: u8 = 5;
const OP_EXPIRE: u8 = 6;
const OP_SPLIT: u8 = 7;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode {what}"))
}

fn put_log_id(out: &mut BytesMut, id: &LogId) {
    out.put_u64_le(id.leader_id.term);
    out.put_u64_le(id.leader_id.node_id);
    out.put_u64_le(id.index);
}

fn get_u64(buf: &mut &[u8], what: &str) -> io::Result<u64> {
    if buf.remaining() < 8 {
        return Err(invalid(what));
    }
    Ok(buf.get_u64_le())
}

fn get_u32(buf: &mut &[u8], what: &str) -> io::Result<u32> {
    if buf.remaining() < 4 {
        return Err(invalid(what));
    }
    Ok(buf.get_u32_le())
}

fn get_u16(buf: &mut &[u8], what: &str) -> io::Result<u16> {
    if buf.remaining() < 2 {
        return Err(invalid(what));
    }
    Ok(buf.get_u16_le())
}

fn get_u8(buf: &mut &[u8], what: &str) -> io::Result<u8> {
    if buf.remaining() < 1 {
        return Err(invalid(what));
    }
    Ok(buf.get_u8())
}

fn get_bytes(buf: &mut &[u8], all: &Bytes, what: &str) -> io::Result<Bytes> {
    let len = get_u32(buf, what)? as usize;
    if buf.remaining() < len {
        return Err(invalid(what));
    }
    // A slice of the record: no copy of keys and values.
    let start = all.len() - buf.remaining();
    buf.advance(len);
    Ok(all.slice(start..start + len))
}

fn get_log_id(buf: &mut &[u8]) -> io::Result<LogId> {
    let term = get_u64(buf, "log id")?;
    let node_id = get_u64(buf, "log id")?;
    let index = get_u64(buf, "log id")?;
    Ok(LogId::new(LeaderId { term, node_id }, index))
}

/// Encodes a log id.
pub fn encode_log_id(id: &LogId) -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    put_log_id(&mut out, id);
    out.freeze()
}

/// Decodes [`encode_log_id`].
pub fn decode_log_id(bytes: &[u8]) -> io::Result<LogId> {
    let mut buf = bytes;
    let id = get_log_id(&mut buf)?;
    if buf.has_remaining() {
        return Err(invalid("log id: trailing bytes"));
    }
    Ok(id)
}

/// Encodes an optional log id.
pub fn encode_opt_log_id(id: Option<&LogId>) -> Bytes {
    let mut out = BytesMut::with_capacity(25);
    match id {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            put_log_id(&mut out, id);
        }
    }
    out.freeze()
}

/// Decodes [`encode_opt_log_id`].
pub fn decode_opt_log_id(bytes: &[u8]) -> io::Result<Option<LogId>> {
    let mut buf = bytes;
    let id = match get_u8(&mut buf, "optional log id")? {
        0 => None,
        1 => Some(get_log_id(&mut buf)?),
        _ => return Err(invalid("optional log id: bad tag")),
    };
    if buf.has_remaining() {
        return Err(invalid("optional log id: trailing bytes"));
    }
    Ok(id)
}

/// Encodes a vote.
pub fn encode_vote(vote: &Vote) -> Bytes {
    let mut out = BytesMut::with_capacity(17);
    out.put_u64_le(vote.leader_id.term);
    out.put_u64_le(vote.leader_id.node_id);
    out.put_u8(u8::from(vote.committed));
    out.freeze()
}

/// Decodes [`encode_vote`].
pub fn decode_vote(bytes: &[u8]) -> io::Result<Vote> {
    let mut buf = bytes;
    let term = get_u64(&mut buf, "vote")?;
    let node_id = get_u64(&mut buf, "vote")?;
    let committed = match get_u8(&mut buf, "vote")? {
        0 => false,
        1 => true,
        _ => return Err(invalid("vote: bad committed flag")),
    };
    if buf.has_remaining() {
        return Err(invalid("vote: trailing bytes"));
    }
    Ok(openraft::impls::Vote {
        leader_id: LeaderId { term, node_id },
        committed,
    })
}

/// Encodes a request's ops (the body of a normal entry).
pub fn encode_request(out: &mut BytesMut, request: &Request) {
    out.put_u32_le(request.ops.len() as u32);
    for op in &request.ops {
        match op {
            WriteOp::Put {
                key,
                value,
                expires_at_ms,
            } => {
                out.put_u8(OP_PUT);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
                out.put_u32_le(value.len() as u32);
                out.put_slice(value);
                out.put_u64_le(expires_at_ms.unwrap_or(0));
            }
            WriteOp::Delete { key } => {
                out.put_u8(OP_DELETE);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
            }
            WriteOp::Expire { key } => {
                out.put_u8(OP_EXPIRE);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
            }
            WriteOp::Clear => out.put_u8(OP_CLEAR),
            WriteOp::SystemPut { key, value } => {
                out.put_u8(OP_SYSTEM_PUT);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
                out.put_u32_le(value.len() as u32);
                out.put_slice(value);
            }
            WriteOp::SystemDelete { key } => {
                out.put_u8(OP_SYSTEM_DELETE);
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
            }
            WriteOp::Split {
                child,
                first_slot,
                last_slot,
            } => {
                out.put_u8(OP_SPLIT);
                out.put_u32_le(*child);
                out.put_u16_le(*first_slot);
                out.put_u16_le(*last_slot);
            }
        }
    }
}

/// The length [`encode_request`] gives `request`.
fn encoded_request_len(request: &Request) -> usize {
    4 + request
        .ops
        .iter()
        .map(|op| match op {
            WriteOp::Put { key, value, .. } => 1 + 4 + key.len() + 4 + value.len() + 8,
            WriteOp::Delete { key } | WriteOp::Expire { key } => 1 + 4 + key.len(),
            WriteOp::Clear => 1,
            WriteOp::SystemPut { key, value } => 1 + 4 + key.len() + 4 + value.len(),
            WriteOp::SystemDelete { key } => 1 + 4 + key.len(),
            WriteOp::Split { .. } => 1 + 4 + 2 + 2,
        })
        .sum::<usize>()
}

fn get_request(buf: &mut &[u8], all: &Bytes) -> io::Result<Request> {
    let count = get_u32(buf, "request")? as usize;
    // Each op takes at least 5 bytes: a corrupt count cannot make this allocate much.
    let mut ops = Vec::with_capacity(count.min(buf.remaining() / 5));
    for _ in 0..count {
        let op = match get_u8(buf, "request op")? {
            OP_PUT => {
                let key = get_bytes(buf, all, "put key")?;
                let value = get_bytes(buf, all, "put value")?;
                let at = get_u64(buf, "put expiry")?;
                WriteOp::Put {
                    key,
                    value,
                    expires_at_ms: (at != 0).then_some(at),
                }
            }
            OP_DELETE => WriteOp::Delete {
                key: get_bytes(buf, all, "delete key")?,
            },
            OP_EXPIRE => WriteOp::Expire {
                key: get_bytes(buf, all, "expire key")?,
            },
            OP_CLEAR => WriteOp::Clear,
            OP_SYSTEM_PUT => WriteOp::SystemPut {
                key: get_bytes(buf, all, "system put key")?,
                value: get_bytes(buf, all, "system put value")?,
            },
            OP_SYSTEM_DELETE => WriteOp::SystemDelete {
                key: get_bytes(buf, all, "system delete key")?,
            },
            OP_SPLIT => {
                let child = get_u32(buf, "split child")?;
                let first_slot = get_u16(buf, "split first slot")?;
                let last_slot = get_u16(buf, "split last slot")?;
                WriteOp::Split {
                    child,
                    first_slot,
                    last_slot,
                }
            }
            _ => return Err(invalid("request: unknown op")),
        };
        ops.push(op);
    }
    Ok(Request { ops })
}

/// Encodes a log entry.
pub fn encode_entry(entry: &Entry) -> Bytes {
    // Sized up front: an entry of many writes would otherwise grow (and copy) its buffer
    // several times.
    let body = match &entry.payload {
        EntryPayload::Normal(request) => encoded_request_len(request),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    };
    let mut out = BytesMut::with_capacity(64 + body);
    let kind = match &entry.payload {
        EntryPayload::Blank => KIND_BLANK,
        EntryPayload::Normal(_) => KIND_NORMAL,
        EntryPayload::Membership(_) => KIND_MEMBERSHIP,
    };
    out.put_u8(kind);
    put_log_id(&mut out, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(request) => encode_request(&mut out, request),
        EntryPayload::Membership(membership) => {
            let json = serde_json::to_vec(membership).expect("a membership serialises");
            out.put_slice(&json);
        }
    }
    debug_assert!(
        !matches!(entry.payload, EntryPayload::Normal(_)) || out.len() <= 64 + body,
        "an entry's buffer was sized too small"
    );
    out.freeze()
}

/// Decodes [`encode_entry`]; keys and values are slices of `bytes`.
pub fn decode_entry(bytes: &Bytes) -> io::Result<Entry> {
    let mut buf: &[u8] = bytes;
    let kind = get_u8(&mut buf, "entry")?;
    let log_id = get_log_id(&mut buf)?;
    let payload = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(get_request(&mut buf, bytes)?),
        KIND_MEMBERSHIP => {
            let membership: Membership<u64, NodeAddr> =
                serde_json::from_slice(buf).map_err(|e| invalid(&format!("membership: {e}")))?;
            buf = &[];
            EntryPayload::Membership(membership)
        }
        _ => return Err(invalid("entry: unknown kind")),
    };
    if buf.has_remaining() {
        return Err(invalid("entry: trailing bytes"));
    }
    Ok(Entry { log_id, payload })
}

/// Encodes what a state machine has applied: the last log id and the last membership (kept
/// as the engine's last-applied marker, written in the same batch as the data).
pub fn encode_applied(last: Option<&LogId>, membership: &StoredMembership) -> Bytes {
    encode_applied_raw(last, &encode_membership(membership))
}

/// The membership part of an applied marker.
pub fn encode_membership(membership: &StoredMembership) -> Bytes {
    Bytes::from(serde_json::to_vec(membership).expect("a stored membership serialises"))
}

/// [`encode_applied`] with the membership already encoded ([`encode_membership`]): what the
/// state machine writes with every entry, without serialising an unchanged membership again.
pub fn encode_applied_raw(last: Option<&LogId>, membership: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(25 + membership.len());
    out.put_slice(&encode_opt_log_id(last));
    out.put_slice(membership);
    out.freeze()
}

/// Splits an applied marker into its log id and its still-encoded membership.
pub fn split_applied(bytes: &[u8]) -> io::Result<(Option<LogId>, &[u8])> {
    let split = match bytes.first() {
        Some(0) => 1,
        Some(1) => 25,
        _ => return Err(invalid("applied marker")),
    };
    if bytes.len() < split {
        return Err(invalid("applied marker"));
    }
    Ok((decode_opt_log_id(&bytes[..split])?, &bytes[split..]))
}

/// Decodes [`encode_applied`].
pub fn decode_applied(bytes: &[u8]) -> io::Result<(Option<LogId>, StoredMembership)> {
    let (last, membership) = split_applied(bytes)?;
    let membership = serde_json::from_slice(membership)
        .map_err(|e| invalid(&format!("applied membership: {e}")))?;
    Ok((last, membership))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id }, index)
    }

    #[test]
    fn entries_round_trip() {
        let request = Request {
            ops: vec![
                WriteOp::Put {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"\x00\xffv"),
                    expires_at_ms: Some(42),
                },
                WriteOp::Put {
                    key: Bytes::new(),
                    value: Bytes::new(),
                    expires_at_ms: None,
                },
                WriteOp::Delete {
                    key: Bytes::from_static(b"gone"),
                },
                WriteOp::Expire {
                    key: Bytes::from_static(b"expired"),
                },
                WriteOp::Clear,
                WriteOp::Put {
                    key: Bytes::from_static(b"after-clear"),
                    value: Bytes::from_static(b"v"),
                    expires_at_ms: None,
                },
                WriteOp::SystemPut {
                    key: Bytes::from_static(b"l/k"),
                    value: Bytes::from_static(b"\x01lock"),
                },
                WriteOp::Split {
                    child: 70_000,
                    first_slot: 8192,
                    last_slot: 16383,
                },
                WriteOp::SystemDelete {
                    key: Bytes::from_static(b"t/1"),
                },
            ],
        };
        let nodes = BTreeMap::from([(1u64, NodeAddr { grpc: "a:1".into() })]);
        let membership = Membership::new(vec![BTreeSet::from([1u64])], nodes).unwrap();
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(request),
            EntryPayload::Membership(membership),
        ] {
            let entry = Entry {
                log_id: log_id(3, 1, 9),
                payload,
            };
            let bytes = encode_entry(&entry);
            assert_eq!(decode_entry(&bytes).unwrap(), entry);
            // Garbage and truncations are errors, never a different entry or a panic.
            for cut in 0..bytes.len() {
                let _ = decode_entry(&bytes.slice(..cut));
            }
        }
    }

    #[test]
    fn votes_log_ids_and_markers_round_trip() {
        let vote = openraft::impls::Vote {
            leader_id: LeaderId {
                term: 7,
                node_id: 2,
            },
            committed: true,
        };
        assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        let id = log_id(1, 2, 3);
        assert_eq!(decode_log_id(&encode_log_id(&id)).unwrap(), id);
        assert_eq!(decode_opt_log_id(&encode_opt_log_id(None)).unwrap(), None);
        assert_eq!(
            decode_opt_log_id(&encode_opt_log_id(Some(&id))).unwrap(),
            Some(id)
        );
        let stored = StoredMembership::default();
        let marker = encode_applied(Some(&id), &stored);
        assert_eq!(decode_applied(&marker).unwrap(), (Some(id), stored.clone()));
        let membership = encode_membership(&stored);
        assert_eq!(encode_applied_raw(Some(&id), &membership), marker);
        assert_eq!(
            split_applied(&marker).unwrap(),
            (Some(id), membership.as_ref())
        );
        assert!(decode_vote(b"short").is_err());
    }
}
