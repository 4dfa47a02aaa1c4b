//! INCRBYFLOAT arithmetic exactly as Redis does it: in C `long double`, through the small C
//! shim in `csrc/longdouble.c` (Rust has no long double type, and `f64` answers differently
//! once values pass 2^53: Redis turns `9223372036854775806` + 1 into `9223372036854775807`).
//! The shim parses with Redis's `string2ld` rules and prints with `ld2string`'s human mode.

#![allow(unsafe_code)]

use std::os::raw::{c_char, c_int};

use bytes::Bytes;

use crate::error::CommandError;

/// Longest float text Redis parses or prints (`MAX_LONG_DOUBLE_CHARS`).
pub const FLOAT_CHARS_MAX: usize = 5 * 1024;

// Result codes of `cairn_ld_incrby`, as defined in csrc/longdouble.c.
const LD_OK: c_int = 0;
const LD_NOT_FLOAT: c_int = 1;
const LD_NAN_OR_INF: c_int = 2;

unsafe extern "C" {
    fn cairn_ld_valid(s: *const c_char, len: usize) -> c_int;
    fn cairn_ld_incrby(
        cur: *const c_char,
        cur_len: usize,
        has_current: c_int,
        incr: *const c_char,
        incr_len: usize,
        out: *mut c_char,
        out_cap: usize,
        out_len: *mut usize,
    ) -> c_int;
}

/// Whether `s` is a float Redis accepts (`string2ld`): no spaces, no trailing bytes, not NaN.
pub fn is_float(s: &[u8]) -> bool {
    if s.is_empty() || s.len() >= FLOAT_CHARS_MAX {
        return false;
    }
    // SAFETY: the pointer and length describe a live slice; the shim copies at most `len`
    // bytes out of it (bounded above) and keeps no reference.
    unsafe { cairn_ld_valid(s.as_ptr().cast(), s.len()) == 1 }
}

/// `current` (absent = 0) plus `delta`, as the text Redis stores and replies with.
pub fn incr_by_float(current: Option<&[u8]>, delta: &[u8]) -> Result<Bytes, CommandError> {
    let too_long = |s: &[u8]| s.is_empty() || s.len() >= FLOAT_CHARS_MAX;
    if current.is_some_and(too_long) || too_long(delta) {
        return Err(CommandError::NotFloat);
    }
    let (cur_ptr, cur_len) = current.map_or((std::ptr::null(), 0), |c| (c.as_ptr(), c.len()));
    // Room for the longest "%.17Lf" of a finite long double (about 4950 digits) plus NUL, on
    // the stack: this runs on a shard proposer that every write of the shard waits for.
    let mut out = [0u8; FLOAT_CHARS_MAX + 1];
    let mut out_len = 0usize;
    // SAFETY: input pointers/lengths describe live slices (null with length 0 only when
    // `has_current` is 0, in which case the shim does not read it); `out` is writable for
    // `out.len()` bytes and the shim writes at most that many, NUL included, and sets
    // `out_len` to the text length without the NUL.
    let code = unsafe {
        cairn_ld_incrby(
            cur_ptr.cast(),
            cur_len,
            c_int::from(current.is_some()),
            delta.as_ptr().cast(),
            delta.len(),
            out.as_mut_ptr().cast(),
            out.len(),
            &mut out_len,
        )
    };
    match code {
        LD_OK => {
            assert!(out_len < out.len(), "shim reported {out_len} bytes");
            Ok(Bytes::copy_from_slice(&out[..out_len]))
        }
        LD_NOT_FLOAT => Err(CommandError::NotFloat),
        LD_NAN_OR_INF => Err(CommandError::NanOrInfinity),
        other => panic!("long double result does not fit Redis's buffer (code {other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(cur: Option<&str>, by: &str) -> Result<String, CommandError> {
        incr_by_float(cur.map(str::as_bytes), by.as_bytes())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn parses_like_string2ld() {
        for good in ["1.5", "-2e3", "0x10", "inf", "-inf", "1e4000", "10"] {
            assert!(is_float(good.as_bytes()), "{good}");
        }
        for bad in ["", " 1", "1 ", "nan", "abc", "1.2.3", "--1", "1e99999"] {
            assert!(!is_float(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn computes_in_long_double_like_redis() {
        assert_eq!(incr(None, "0.1").unwrap(), "0.1");
        assert_eq!(incr(Some("10.5"), "0.1").unwrap(), "10.6");
        assert_eq!(incr(Some("3e2"), "2700").unwrap(), "3000");
        assert_eq!(incr(Some("1"), "-1").unwrap(), "0");
        assert_eq!(incr(Some("-0.5"), "0.5").unwrap(), "0");
        assert_eq!(incr(Some("5"), "-6.25").unwrap(), "-1.25");
        assert_eq!(incr(Some("1e20"), "0").unwrap(), "100000000000000000000");
        assert_eq!(incr(Some("1e-20"), "0").unwrap(), "0");
        // Past 2^53, where f64 would print 9223372036854776000.
        assert_eq!(
            incr(Some("9223372036854775806"), "1").unwrap(),
            "9223372036854775807"
        );
        assert_eq!(
            incr(Some("-9223372036854775808"), "0.5").unwrap(),
            "-9223372036854775807.5"
        );
    }

    #[test]
    fn rejects_what_redis_rejects() {
        assert!(matches!(
            incr(Some("abc"), "1"),
            Err(CommandError::NotFloat)
        ));
        assert!(matches!(incr(Some("1"), "x"), Err(CommandError::NotFloat)));
        assert!(matches!(
            incr(Some("inf"), "1"),
            Err(CommandError::NanOrInfinity)
        ));
        assert!(matches!(
            incr(Some("1e4932"), "1e4932"),
            Err(CommandError::NanOrInfinity)
        ));
    }
}
