//! Redis's bit operations on string values (GETBIT, SETBIT, BITCOUNT, BITPOS), with its
//! exact semantics: bit 0 is the most significant bit of the first byte; a missing key is
//! an endless run of zero bits; ranges count from the end when negative and are in bytes
//! unless `BIT` says bits. Pure functions of a value, shared by the node's reads, the
//! shards' evaluation of writes and the evaluation of reads inside transactions.

use bytes::Bytes;
use cairn_resp::parse_i64;

use crate::error::CommandError;

/// The largest bit offset GETBIT and SETBIT take: Redis's, a 512 MiB string's last bit.
pub const BIT_OFFSET_MAX: u64 = 512 * 1024 * 1024 * 8 - 1;

/// A bit offset argument, as Redis reads it.
pub fn parse_offset(arg: &[u8]) -> Result<u64, CommandError> {
    parse_i64(arg)
        .filter(|&n| n >= 0 && n as u64 <= BIT_OFFSET_MAX)
        .map(|n| n as u64)
        .ok_or_else(|| CommandError::Invalid("bit offset is not an integer or out of range".into()))
}

/// The bit at `offset` (0 past the end).
pub fn get(value: &[u8], offset: u64) -> i64 {
    let byte = (offset / 8) as usize;
    value
        .get(byte)
        .map_or(0, |b| i64::from((b >> (7 - (offset % 8))) & 1))
}

/// Sets the bit at `offset` of `value`, growing it with zero bytes; returns the bit it was.
pub fn set(value: &mut Vec<u8>, offset: u64, bit: bool) -> i64 {
    let byte = (offset / 8) as usize;
    if value.len() <= byte {
        value.resize(byte + 1, 0);
    }
    let mask = 1u8 << (7 - (offset % 8));
    let old = i64::from(value[byte] & mask != 0);
    if bit {
        value[byte] |= mask;
    } else {
        value[byte] &= !mask;
    }
    old
}

/// An integer argument as Redis reads it (no `+`, no leading zeros).
fn int(arg: &Bytes) -> Result<i64, CommandError> {
    parse_i64(arg).ok_or(CommandError::NotInteger)
}

/// A range in bytes of a value, with masks for the bits of its first and last bytes that
/// lie outside a range given in bits (0 when given in bytes).
struct Range {
    start: i64,
    end: i64,
    first_outside: u8,
    last_outside: u8,
}

/// Redis's normalisation of `start`/`end` against a value of `len` bytes (`bit`: the
/// indexes count bits), as BITCOUNT and BITPOS do it.
fn range(len: usize, mut start: i64, mut end: i64, bit: bool) -> Range {
    let total = if bit { (len as i64) << 3 } else { len as i64 };
    if start < 0 {
        start += total;
    }
    if end < 0 {
        end += total;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= total {
        end = total - 1;
    }
    let (mut first_outside, mut last_outside) = (0, 0);
    if bit && start <= end {
        first_outside = !((1u16 << (8 - (start & 7))) - 1) as u8;
        last_outside = ((1u16 << (7 - (end & 7))) - 1) as u8;
        start >>= 3;
        end >>= 3;
    }
    Range {
        start,
        end,
        first_outside,
        last_outside,
    }
}

/// `BIT` or `BYTE` (or a syntax error).
fn unit(arg: &Bytes) -> Result<bool, CommandError> {
    if arg.eq_ignore_ascii_case(b"bit") {
        Ok(true)
    } else if arg.eq_ignore_ascii_case(b"byte") {
        Ok(false)
    } else {
        Err(CommandError::Syntax)
    }
}

/// BITCOUNT over `value` (None: a missing key) with the arguments after the key. Like
/// Redis, a missing key answers 0 before the arguments are looked at.
pub fn count(value: Option<&[u8]>, args: &[Bytes]) -> Result<i64, CommandError> {
    let Some(value) = value else {
        return Ok(0);
    };
    let r = match args {
        [] => Range {
            start: 0,
            end: value.len() as i64 - 1,
            first_outside: 0,
            last_outside: 0,
        },
        [start, end] | [start, end, _] => {
            let (start, end) = (int(start)?, int(end)?);
            // Before the unit is read, as in Redis.
            if start < 0 && end < 0 && start > end {
                return Ok(0);
            }
            let bit = match args.get(2) {
                Some(u) => unit(u)?,
                None => false,
            };
            range(value.len(), start, end, bit)
        }
        _ => return Err(CommandError::Syntax),
    };
    if r.start > r.end {
        return Ok(0);
    }
    let bytes = &value[r.start as usize..=r.end as usize];
    let mut n: i64 = bytes.iter().map(|b| i64::from(b.count_ones())).sum();
    n -= i64::from((bytes[0] & r.first_outside).count_ones());
    n -= i64::from((bytes[bytes.len() - 1] & r.last_outside).count_ones());
    Ok(n)
}

/// The position of the first bit equal to `bit` in `bytes`; looking for a 0 and finding
/// none, the position just past them; looking for a 1 and finding none, -1 (Redis's
/// `redisBitpos`).
fn first(bytes: &[u8], bit: bool) -> i64 {
    for (i, &b) in bytes.iter().enumerate() {
        let b = if bit { b } else { !b };
        if b != 0 {
            return (i as i64) * 8 + i64::from(b.leading_zeros());
        }
    }
    if bit { -1 } else { (bytes.len() as i64) * 8 }
}

/// BITPOS over `value` (None: a missing key) for `bit`, with the arguments after the bit.
pub fn position(value: Option<&[u8]>, bit: bool, args: &[Bytes]) -> Result<i64, CommandError> {
    let Some(value) = value else {
        return Ok(if bit { -1 } else { 0 });
    };
    let (r, end_given) = match args {
        [] => (
            Range {
                start: 0,
                end: value.len() as i64 - 1,
                first_outside: 0,
                last_outside: 0,
            },
            false,
        ),
        [start, rest @ ..] if rest.len() <= 2 => {
            let start = int(start)?;
            let bit_unit = match rest.get(1) {
                Some(u) => unit(u)?,
                None => false,
            };
            let end = match rest.first() {
                Some(end) => int(end)?,
                None => value.len() as i64 - 1,
            };
            (range(value.len(), start, end, bit_unit), !rest.is_empty())
        }
        _ => return Err(CommandError::Syntax),
    };
    if r.start > r.end {
        return Ok(-1);
    }
    // Bits outside a range given in bits read as the opposite of what is looked for.
    let mut bytes = value[r.start as usize..=r.end as usize].to_vec();
    let last = bytes.len() - 1;
    let hide = |b: &mut u8, outside: u8| {
        if bit {
            *b &= !outside;
        } else {
            *b |= outside;
        }
    };
    hide(&mut bytes[0], r.first_outside);
    hide(&mut bytes[last], r.last_outside);
    let pos = first(&bytes, bit);
    // Looking for a 0 in an explicit range: the right of the range is not zero padding.
    if end_given && !bit && pos == (bytes.len() as i64) * 8 {
        return Ok(-1);
    }
    Ok(if pos == -1 { -1 } else { pos + (r.start << 3) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Bytes> {
        list.iter().map(|s| Bytes::from(s.to_string())).collect()
    }

    #[test]
    fn bits_read_and_write_most_significant_first() {
        let mut v = Vec::new();
        assert_eq!(set(&mut v, 7, true), 0);
        assert_eq!(v, vec![1]);
        assert_eq!(set(&mut v, 7, true), 1);
        assert_eq!(get(&v, 7), 1);
        assert_eq!(get(&v, 6), 0);
        assert_eq!(get(&v, 1000), 0);
        set(&mut v, 8, true);
        assert_eq!(v, vec![1, 0x80]);
    }

    /// Examples from Redis's documentation.
    #[test]
    fn count_and_position_answer_as_redis_documents() {
        let foobar = b"foobar";
        assert_eq!(count(Some(foobar), &[]), Ok(26));
        assert_eq!(count(Some(foobar), &args(&["0", "0"])), Ok(4));
        assert_eq!(count(Some(foobar), &args(&["1", "1"])), Ok(6));
        assert_eq!(count(Some(foobar), &args(&["1", "1", "BYTE"])), Ok(6));
        assert_eq!(count(Some(foobar), &args(&["5", "30", "BIT"])), Ok(17));
        assert_eq!(count(None, &args(&["x"])), Ok(0));
        assert_eq!(
            count(Some(foobar), &args(&["1"])),
            Err(CommandError::Syntax)
        );
        let v = [0xff, 0xf0, 0x00];
        assert_eq!(position(Some(&v), false, &[]), Ok(12));
        let v = [0x00, 0xff, 0xf0];
        assert_eq!(position(Some(&v), true, &args(&["0"])), Ok(8));
        assert_eq!(position(Some(&v), true, &args(&["2"])), Ok(16));
        assert_eq!(
            position(Some(&v), true, &args(&["2", "-1", "BYTE"])),
            Ok(16)
        );
        assert_eq!(position(Some(&v), true, &args(&["7", "15", "BIT"])), Ok(8));
        let v = [0x00, 0x00, 0x00];
        assert_eq!(position(Some(&v), true, &[]), Ok(-1));
        assert_eq!(position(Some(&v), true, &args(&["7", "-3", "BIT"])), Ok(-1));
        assert_eq!(position(None, false, &[]), Ok(0));
        let v = [0xff, 0xff];
        assert_eq!(position(Some(&v), false, &args(&["0"])), Ok(16));
        assert_eq!(position(Some(&v), false, &args(&["0", "1"])), Ok(-1));
    }
}
