//! LCS: the longest common subsequence of two values, as Redis 7 computes and answers it
//! (the same dynamic-programming table, walked back from the end, so that where several
//! subsequences are longest the same one is chosen, and the matched ranges come last
//! first). A pure function of the two values, shared by the node's reads and reads inside
//! transactions.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::CommandError;

/// The most memory one LCS may take for its table (4 bytes per pair of positions). Redis
/// allows up to `proto-max-bulk-len` (512 MiB); a node serving many clients allows less.
pub const LCS_TABLE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// What LCS answers.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcsMode {
    /// The subsequence itself.
    Text,
    /// Its length (`LEN`).
    Len,
    /// The matched ranges (`IDX`), those shorter than `min_len` left out, each with its
    /// length when `with_len`.
    Idx { min_len: u64, with_len: bool },
}

/// One matched range: positions in the first and in the second value, inclusive.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LcsMatch {
    pub a: (u64, u64),
    pub b: (u64, u64),
    pub len: u64,
}

/// LCS's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LcsAnswer {
    Text(Bytes),
    Len(u64),
    Idx {
        matches: Vec<LcsMatch>,
        len: u64,
        with_len: bool,
    },
}

/// The LCS of the values of two entries read at one instant (a missing one is empty).
pub fn of_entries(
    entries: &[Option<crate::reply::Entry>],
    mode: LcsMode,
) -> Result<LcsAnswer, CommandError> {
    let value = |i: usize| {
        entries
            .get(i)
            .and_then(Option::as_ref)
            .map(|e| e.value.clone())
            .unwrap_or_default()
    };
    lcs(&value(0), &value(1), mode)
}

/// The LCS of `a` and `b` (missing values are empty).
pub fn lcs(a: &[u8], b: &[u8], mode: LcsMode) -> Result<LcsAnswer, CommandError> {
    let (alen, blen) = (a.len(), b.len());
    let cells = (alen as u64 + 1) * (blen as u64 + 1);
    if cells.saturating_mul(4) > LCS_TABLE_BYTES_MAX {
        return Err(CommandError::Invalid(format!(
            "Insufficient memory, transient memory for LCS exceeds {LCS_TABLE_BYTES_MAX} bytes"
        )));
    }
    let width = blen + 1;
    let mut table = vec![0u32; cells as usize];
    for i in 1..=alen {
        for j in 1..=blen {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let at = |i: usize, j: usize| table[i * width + j];
    let total = at(alen, blen) as usize;
    if mode == LcsMode::Len {
        return Ok(LcsAnswer::Len(total as u64));
    }
    let mut text = vec![0u8; total];
    let mut matches = Vec::new();
    // The range being matched, backward: (a start, a end, b start, b end).
    let mut range: Option<(usize, usize, usize, usize)> = None;
    let (mut i, mut j, mut left) = (alen, blen, total);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            text[left - 1] = a[i - 1];
            range = match range {
                None => Some((i - 1, i - 1, j - 1, j - 1)),
                Some((as_, ae, bs, be)) if as_ == i && bs == j => Some((as_ - 1, ae, bs - 1, be)),
                Some(r) => {
                    emit = true;
                    Some(r)
                }
            };
            if range.is_some_and(|(as_, _, bs, _)| as_ == 0 || bs == 0) {
                emit = true;
            }
            left -= 1;
            i -= 1;
            j -= 1;
        } else {
            if at(i - 1, j) > at(i, j - 1) {
                i -= 1;
            } else {
                j -= 1;
            }
            emit = range.is_some();
        }
        if emit && let Some((as_, ae, bs, be)) = range.take() {
            let len = (ae - as_ + 1) as u64;
            if let LcsMode::Idx { min_len, .. } = mode
                && (min_len == 0 || len >= min_len)
            {
                matches.push(LcsMatch {
                    a: (as_ as u64, ae as u64),
                    b: (bs as u64, be as u64),
                    len,
                });
            }
        }
    }
    Ok(match mode {
        LcsMode::Idx { with_len, .. } => LcsAnswer::Idx {
            matches,
            len: total as u64,
            with_len,
        },
        _ => LcsAnswer::Text(Bytes::from(text)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of Redis's documentation.
    #[test]
    fn answers_as_redis_documents() {
        let (a, b) = (b"ohmytext".as_slice(), b"mynewtext".as_slice());
        assert_eq!(
            lcs(a, b, LcsMode::Text),
            Ok(LcsAnswer::Text(Bytes::from_static(b"mytext")))
        );
        assert_eq!(lcs(a, b, LcsMode::Len), Ok(LcsAnswer::Len(6)));
        let idx = |min_len, with_len| lcs(a, b, LcsMode::Idx { min_len, with_len });
        let m = |a, b, len| LcsMatch { a, b, len };
        assert_eq!(
            idx(0, false),
            Ok(LcsAnswer::Idx {
                matches: vec![m((4, 7), (5, 8), 4), m((2, 3), (0, 1), 2)],
                len: 6,
                with_len: false,
            })
        );
        assert_eq!(
            idx(4, true),
            Ok(LcsAnswer::Idx {
                matches: vec![m((4, 7), (5, 8), 4)],
                len: 6,
                with_len: true,
            })
        );
        assert_eq!(
            lcs(b"", b"abc", LcsMode::Text),
            Ok(LcsAnswer::Text(Bytes::new()))
        );
    }
}
