//! Redis's number parsing and formatting rules, so INCR/INCRBYFLOAT and every integer argument
//! accept and print exactly what Redis does.

/// Longest float string Redis parses (`MAX_LONG_DOUBLE_CHARS`).
const FLOAT_CHARS_MAX: usize = 5 * 1024;
/// Decimal places Redis prints for floats (`%.17Lf`, then trailing zeros trimmed).
const FLOAT_DECIMALS: usize = 17;

/// Parse a signed 64-bit integer exactly as Redis's `string2ll`: optional `-`, no `+`, no
/// leading zeros (except "0" itself), no spaces, must fit in an `i64`.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 {
            return None;
        }
        Some((value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

/// Parse a float as Redis's `string2ld` does (strtold): no leading space, no trailing bytes,
/// not NaN; `inf` is accepted (and rejected later by the caller's overflow check).
pub fn parse_float(s: &[u8]) -> Option<f64> {
    if s.is_empty() || s.len() >= FLOAT_CHARS_MAX {
        return None;
    }
    let text = std::str::from_utf8(s).ok()?;
    if text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let unsigned = text.trim_start_matches(['+', '-']);
    if unsigned.len() + 1 < text.len() {
        return None; // more than one sign
    }
    let value = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        let v = u64::from_str_radix(hex, 16).ok()? as f64;
        if text.starts_with('-') { -v } else { v }
    } else {
        let lower = unsigned.to_ascii_lowercase();
        if lower.starts_with("nan") {
            return None;
        }
        text.parse::<f64>().ok()?
    };
    (!value.is_nan()).then_some(value)
}

/// Format a float as Redis stores the result of INCRBYFLOAT: fixed notation with at most 17
/// decimals, trailing zeros (and a trailing point) removed.
///
/// Redis computes in x87 long double; this uses `f64` and prints the shortest representation
/// that round-trips, which gives the same text for the usual short decimal inputs.
pub fn format_float(value: f64) -> String {
    let shortest = format!("{value}");
    let decimals = shortest.split_once('.').map_or(0, |(_, frac)| frac.len());
    let mut text = if decimals > FLOAT_DECIMALS {
        format!("{value:.FLOAT_DECIMALS$}")
    } else {
        shortest
    };
    if text.contains('.') {
        let trimmed = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(trimmed);
    }
    if text == "-0" {
        text = "0".to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1.0",
            b"-",
            b"abc",
        ] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats_follow_string2ld() {
        assert_eq!(parse_float(b"1.5"), Some(1.5));
        assert_eq!(parse_float(b"-2e3"), Some(-2000.0));
        assert_eq!(parse_float(b"0x10"), Some(16.0));
        assert_eq!(parse_float(b"inf"), Some(f64::INFINITY));
        for bad in [&b""[..], b" 1", b"1 ", b"nan", b"abc", b"1.2.3", b"--1"] {
            assert_eq!(parse_float(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats_print_like_redis() {
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(10.6), "10.6");
        assert_eq!(format_float(3000.0), "3000");
        assert_eq!(format_float(1e20), "100000000000000000000");
        assert_eq!(format_float(1e-20), "0");
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(-1.25), "-1.25");
    }
}
