//! Allocation-free writers for single reply items, used by [`crate::Frame::encode`] and by hot
//! paths (GET, MGET, pipelined SETs) that write replies without building a frame tree.
//!
//! Simple strings and errors cannot carry CR or LF on the wire; the writers replace them with
//! spaces (as Redis does for error messages) so that no reply can inject a second reply.

use bytes::{BufMut, BytesMut};

use crate::Protocol;

const CRLF: &[u8] = b"\r\n";

/// Writes `prefix`, the decimal `n` and CRLF (`:42\r\n`, `*3\r\n`, `$5\r\n`).
#[inline]
pub fn write_header(out: &mut BytesMut, prefix: u8, n: i64) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n);
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    out.put_slice(text.as_bytes());
    out.put_slice(CRLF);
}

#[inline]
fn write_len_header(out: &mut BytesMut, prefix: u8, len: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(len);
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    out.put_slice(text.as_bytes());
    out.put_slice(CRLF);
}

fn put_line_sanitized(out: &mut BytesMut, text: &[u8]) {
    out.reserve(text.len() + 2);
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(text);
    }
    out.put_slice(CRLF);
}

/// `+text\r\n` (CR/LF in `text` become spaces).
pub fn simple(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'+');
    put_line_sanitized(out, text);
}

/// `-text\r\n` (CR/LF in `text` become spaces). `text` includes the error code (`ERR …`).
pub fn error(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'-');
    put_line_sanitized(out, text);
}

/// `:n\r\n`.
#[inline]
pub fn integer(out: &mut BytesMut, n: i64) {
    write_header(out, b':', n);
}

/// `$len\r\nbytes\r\n`.
#[inline]
pub fn bulk(out: &mut BytesMut, bytes: &[u8]) {
    write_len_header(out, b'$', bytes.len());
    out.reserve(bytes.len() + 2);
    out.put_slice(bytes);
    out.put_slice(CRLF);
}

/// The null bulk reply: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
#[inline]
pub fn null(out: &mut BytesMut, proto: Protocol) {
    out.put_slice(match proto {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// The null array reply: `*-1\r\n` in RESP2, `_\r\n` in RESP3.
#[inline]
pub fn null_array(out: &mut BytesMut, proto: Protocol) {
    out.put_slice(match proto {
        Protocol::Resp2 => b"*-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// `*len\r\n`: the caller writes `len` items next.
#[inline]
pub fn array_header(out: &mut BytesMut, len: usize) {
    write_len_header(out, b'*', len);
}

/// A map of `pairs` entries: `%pairs\r\n` in RESP3, `*2·pairs\r\n` in RESP2. The caller writes
/// `2 · pairs` items next (key, value, key, value…).
pub fn map_header(out: &mut BytesMut, pairs: usize, proto: Protocol) {
    match proto {
        Protocol::Resp2 => write_len_header(out, b'*', pairs * 2),
        Protocol::Resp3 => write_len_header(out, b'%', pairs),
    }
}

/// A set of `len` items: `~len\r\n` in RESP3, `*len\r\n` in RESP2.
pub fn set_header(out: &mut BytesMut, len: usize, proto: Protocol) {
    write_len_header(out, if proto == Protocol::Resp3 { b'~' } else { b'*' }, len);
}

/// A push of `len` items: `>len\r\n` in RESP3, `*len\r\n` in RESP2.
pub fn push_header(out: &mut BytesMut, len: usize, proto: Protocol) {
    write_len_header(out, if proto == Protocol::Resp3 { b'>' } else { b'*' }, len);
}

/// A boolean: `#t`/`#f` in RESP3, `:1`/`:0` in RESP2.
pub fn boolean(out: &mut BytesMut, value: bool, proto: Protocol) {
    out.put_slice(match (proto, value) {
        (Protocol::Resp3, true) => b"#t\r\n",
        (Protocol::Resp3, false) => b"#f\r\n",
        (Protocol::Resp2, true) => b":1\r\n",
        (Protocol::Resp2, false) => b":0\r\n",
    });
}

/// A double: `,text\r\n` in RESP3, a bulk string in RESP2; `text` as [`format_double`].
pub fn double(out: &mut BytesMut, value: f64, proto: Protocol) {
    let text = format_double(value);
    match proto {
        Protocol::Resp3 => {
            out.put_u8(b',');
            out.put_slice(text.as_bytes());
            out.put_slice(CRLF);
        }
        Protocol::Resp2 => bulk(out, text.as_bytes()),
    }
}

/// A big number: `(digits\r\n` in RESP3, a bulk string in RESP2.
pub fn big_number(out: &mut BytesMut, digits: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp3 => {
            out.put_u8(b'(');
            put_line_sanitized(out, digits);
        }
        Protocol::Resp2 => bulk(out, digits),
    }
}

/// A verbatim string: `=len\r\nfmt:text\r\n` in RESP3, a bulk string of `text` in RESP2.
pub fn verbatim(out: &mut BytesMut, format: &[u8; 3], text: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp3 => {
            write_len_header(out, b'=', text.len() + 4);
            out.reserve(text.len() + 6);
            out.put_slice(format);
            out.put_u8(b':');
            out.put_slice(text);
            out.put_slice(CRLF);
        }
        Protocol::Resp2 => bulk(out, text),
    }
}

/// Formats a double the way Redis 7.2+ replies with one: the shortest digits that read back
/// as the same value, laid out like C's `%.17g` (fixed notation for exponents -5 < e < 17,
/// otherwise `d.ddde+XX`), and `inf`, `-inf`, `nan`.
pub fn format_double(value: f64) -> String {
    /// `%.17g` switches to scientific notation at this decimal exponent.
    const FIXED_EXPONENT_MAX: i32 = 17;
    /// ... and below this one.
    const FIXED_EXPONENT_MIN: i32 = -4;
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: `-1.2345e-7`.
    let sci = format!("{value:e}");
    let (mantissa, exponent) = sci
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut text = String::with_capacity(digits.len() + 8);
    if negative {
        text.push('-');
    }
    if (FIXED_EXPONENT_MIN..FIXED_EXPONENT_MAX).contains(&exponent) {
        if exponent < 0 {
            text.push_str("0.");
            for _ in 0..(-exponent - 1) {
                text.push('0');
            }
            text.push_str(&digits);
        } else {
            let int_digits = exponent as usize + 1;
            if digits.len() <= int_digits {
                text.push_str(&digits);
                for _ in digits.len()..int_digits {
                    text.push('0');
                }
            } else {
                text.push_str(&digits[..int_digits]);
                text.push('.');
                text.push_str(&digits[int_digits..]);
            }
        }
    } else {
        text.push_str(&digits[..1]);
        if digits.len() > 1 {
            text.push('.');
            text.push_str(&digits[1..]);
        }
        text.push('e');
        text.push(if exponent < 0 { '-' } else { '+' });
        let magnitude = exponent.unsigned_abs();
        if magnitude < 10 {
            text.push('0');
        }
        text.push_str(&magnitude.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_format_like_percent_17g_shortest() {
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (2.71, "2.71"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (1.5e300, "1.5e+300"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.25e-7, "-1.25e-07"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (value, text) in cases {
            assert_eq!(format_double(value), text, "{value}");
            assert_eq!(text.parse::<f64>().unwrap(), value);
        }
        assert_eq!(format_double(f64::NAN), "nan");
    }

    #[test]
    fn simple_and_error_cannot_inject_lines() {
        let mut out = BytesMut::new();
        error(&mut out, b"ERR bad\r\n+OK");
        simple(&mut out, b"a\nb");
        assert_eq!(&out[..], b"-ERR bad  +OK\r\n+a b\r\n");
    }
}
