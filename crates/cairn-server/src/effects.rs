//! The physical effects of one committed write: the payload of one write-ahead-log record.
//!
//! Commands are evaluated once, in log order, by the writer (see [`crate::writer`]); what goes
//! into the log is the outcome — puts with absolute expiries, deletes, shard clears — so
//! replaying a record after a crash is deterministic and does not depend on the wall clock.
//! One record may touch several shards: that is what makes multi-key writes atomic.
//!
//! Encoding (little endian): `u32 count`, then per effect `u32 shard`, `u8 kind`, and for
//! `PUT` (1): `u32 key_len, key, u32 value_len, value, u64 expires_at_ms (0 = none)`; for
//! `DELETE` (2): `u32 key_len, key`; for `CLEAR` (3): nothing. Integrity is the log's job
//! (every WAL record carries a checksum).

use bytes::{Buf, BufMut, Bytes, BytesMut};

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_CLEAR: u8 = 3;

/// One change to one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Put {
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: Bytes,
    },
    /// Delete every key of the shard.
    Clear,
}

/// The effects of one log entry, in the order they apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub ops: Vec<(u32, Effect)>,
}

/// A log record whose payload is not a valid effects encoding.
#[derive(Debug, thiserror::Error)]
#[error("malformed effects record: {0}")]
pub struct MalformedEffects(&'static str);

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn push(&mut self, shard: u32, effect: Effect) {
        self.ops.push((shard, effect));
    }

    /// Shards touched, ascending, without repeats.
    pub fn shards(&self) -> Vec<u32> {
        let mut shards: Vec<u32> = self.ops.iter().map(|(s, _)| *s).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// Size of [`Effects::encode`]'s output, in bytes.
    pub fn encoded_len(&self) -> usize {
        4 + self
            .ops
            .iter()
            .map(|(_, e)| match e {
                Effect::Put { key, value, .. } => 5 + 4 + key.len() + 4 + value.len() + 8,
                Effect::Delete { key } => 5 + 4 + key.len(),
                Effect::Clear => 5,
            })
            .sum::<usize>()
    }

    pub fn encode(&self) -> Bytes {
        let size = self.encoded_len();
        let mut out = BytesMut::with_capacity(size);
        out.put_u32_le(self.ops.len() as u32);
        for (shard, effect) in &self.ops {
            out.put_u32_le(*shard);
            match effect {
                Effect::Put {
                    key,
                    value,
                    expires_at_ms,
                } => {
                    out.put_u8(KIND_PUT);
                    out.put_u32_le(key.len() as u32);
                    out.put_slice(key);
                    out.put_u32_le(value.len() as u32);
                    out.put_slice(value);
                    out.put_u64_le(expires_at_ms.unwrap_or(0));
                }
                Effect::Delete { key } => {
                    out.put_u8(KIND_DELETE);
                    out.put_u32_le(key.len() as u32);
                    out.put_slice(key);
                }
                Effect::Clear => out.put_u8(KIND_CLEAR),
            }
        }
        out.freeze()
    }

    pub fn decode(mut buf: Bytes) -> Result<Effects, MalformedEffects> {
        fn need(buf: &Bytes, n: usize) -> Result<(), MalformedEffects> {
            if buf.remaining() < n {
                Err(MalformedEffects("truncated"))
            } else {
                Ok(())
            }
        }
        fn bytes(buf: &mut Bytes) -> Result<Bytes, MalformedEffects> {
            need(buf, 4)?;
            let len = buf.get_u32_le() as usize;
            need(buf, len)?;
            Ok(buf.split_to(len))
        }
        need(&buf, 4)?;
        let count = buf.get_u32_le() as usize;
        // Every effect takes at least 5 bytes: bound the allocation by what is there.
        if count > buf.remaining() / 5 {
            return Err(MalformedEffects("count larger than the record"));
        }
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            need(&buf, 5)?;
            let shard = buf.get_u32_le();
            let effect = match buf.get_u8() {
                KIND_PUT => {
                    let key = bytes(&mut buf)?;
                    let value = bytes(&mut buf)?;
                    need(&buf, 8)?;
                    let at = buf.get_u64_le();
                    Effect::Put {
                        key,
                        value,
                        expires_at_ms: (at != 0).then_some(at),
                    }
                }
                KIND_DELETE => Effect::Delete {
                    key: bytes(&mut buf)?,
                },
                KIND_CLEAR => Effect::Clear,
                _ => return Err(MalformedEffects("unknown effect kind")),
            };
            ops.push((shard, effect));
        }
        if buf.has_remaining() {
            return Err(MalformedEffects("trailing bytes"));
        }
        Ok(Effects { ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Effects::default();
        e.push(
            3,
            Effect::Put {
                key: "k".into(),
                value: "v".into(),
                expires_at_ms: Some(7),
            },
        );
        e.push(
            0,
            Effect::Put {
                key: "".into(),
                value: "".into(),
                expires_at_ms: None,
            },
        );
        e.push(9, Effect::Delete { key: "gone".into() });
        e.push(1, Effect::Clear);
        let decoded = Effects::decode(e.encode()).unwrap();
        assert_eq!(decoded, e);
        assert_eq!(e.encode().len(), e.encoded_len());
        assert_eq!(e.shards(), vec![0, 1, 3, 9]);
    }

    #[test]
    fn malformed_records_are_rejected_without_panicking() {
        let mut e = Effects::default();
        e.push(
            3,
            Effect::Put {
                key: "key".into(),
                value: "value".into(),
                expires_at_ms: None,
            },
        );
        let bytes = e.encode();
        for cut in 0..bytes.len() {
            assert!(Effects::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(Effects::decode(Bytes::from_static(&[255, 255, 255, 255])).is_err());
    }
}
