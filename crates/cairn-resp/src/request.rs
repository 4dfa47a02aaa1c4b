//! Streaming decoder for client requests: multibulk and inline, as Redis's `networking.c`.
//!
//! The decoder is stateful so that a request arriving in many reads is parsed once: completed
//! arguments are split off the read buffer as zero-copy [`Bytes`] and kept until the request is
//! whole, and a partially received bulk costs nothing but a length check per call.
//!
//! Bounds, checked before anything is allocated or reserved:
//! - a header line (`*N`, `$N`) or inline line is at most `inline_bytes_max` bytes;
//! - `N` in `*N` is at most `multibulk_count_max`, and at most [`ARGS_PREALLOC_MAX`] slots are
//!   preallocated from it;
//! - `N` in `$N` is at most `bulk_bytes_max`, and the sum of a request's bulks at most
//!   `request_bytes_max`. The decoder never reserves buffer space from a header: the caller's
//!   read loop grows the buffer as bytes actually arrive.
//!
//! Like Redis, the decoder looks for the CR that ends a header line and then skips two bytes,
//! skips the two bytes after a bulk payload without checking them, and does not see a line end
//! that comes after a NUL byte (Redis searches with `strchr`).

use bytes::{Buf, Bytes, BytesMut};

use crate::ProtocolError;
use crate::limits::{ARGS_PREALLOC_MAX, Limits};

/// One complete client request: the command name and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `args[0]` is the command name (never empty: empty requests are skipped).
    pub args: Vec<Bytes>,
    /// Whether the request came as an inline line rather than a multibulk array.
    pub inline: bool,
}

impl Request {
    /// Whether this request is Redis's cross-protocol signature (`POST` or `Host:` as the
    /// command, as sent by a browser tricked into talking to the RESP port). The server should
    /// close the connection without a reply, as Redis's `securityWarningCommand` does.
    pub fn is_cross_protocol_attack(&self) -> bool {
        self.args
            .first()
            .is_some_and(|name| is_cross_protocol_command(name))
    }
}

/// Whether `name` is `POST` or `Host:` in any case (see [`Request::is_cross_protocol_attack`]).
pub fn is_cross_protocol_command(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:")
}

/// Where the decoder is inside the current request.
#[derive(Debug)]
enum State {
    /// Between requests.
    Idle,
    /// Inside a multibulk request.
    Multibulk {
        /// Arguments still to come.
        remaining: usize,
        /// Arguments received so far.
        args: Vec<Bytes>,
        /// Length of the bulk whose header was read but whose payload has not fully arrived.
        pending_bulk_bytes: Option<usize>,
        /// Sum of bulk lengths announced so far (bounded by `request_bytes_max`).
        request_bytes: usize,
    },
}

/// Streaming request decoder; one per connection.
///
/// Feed it the connection's read buffer; it consumes whole requests (and the arguments of a
/// partial one) from the front. After an error it stays failed: the connection must be closed.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
    failed: Option<ProtocolError>,
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            state: State::Idle,
            failed: None,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the decoder is inside a request (some of its bytes consumed, not yet returned).
    pub fn in_request(&self) -> bool {
        matches!(self.state, State::Multibulk { .. })
    }

    /// Decodes the next request from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed (everything usable has been consumed),
    /// `Ok(Some(request))` for a complete request (its bytes are consumed, the rest of `buf`
    /// is untouched), or an error, after which every call returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.decode_inner(buf) {
            Ok(request) => Ok(request),
            Err(err) => {
                self.failed = Some(err.clone());
                self.state = State::Idle;
                Err(err)
            }
        }
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            match &mut self.state {
                State::Idle => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first == b'*' {
                        let Some(count) = self.multibulk_header(buf)? else {
                            return Ok(None);
                        };
                        if count > 0 {
                            self.state = State::Multibulk {
                                remaining: count,
                                args: Vec::with_capacity(count.min(ARGS_PREALLOC_MAX)),
                                pending_bulk_bytes: None,
                                request_bytes: 0,
                            };
                        }
                        // `*0` and negative counts are empty requests: Redis skips them.
                    } else {
                        let Some(args) = self.inline_line(buf)? else {
                            return Ok(None);
                        };
                        if !args.is_empty() {
                            return Ok(Some(Request { args, inline: true }));
                        }
                    }
                }
                State::Multibulk {
                    remaining,
                    args,
                    pending_bulk_bytes,
                    request_bytes,
                } => {
                    while *remaining > 0 {
                        let bulk_bytes = match *pending_bulk_bytes {
                            Some(n) => n,
                            None => {
                                let Some(n) = bulk_header(buf, &self.limits)? else {
                                    return Ok(None);
                                };
                                *request_bytes = request_bytes.saturating_add(n);
                                if *request_bytes > self.limits.request_bytes_max {
                                    return Err(ProtocolError::RequestTooBig);
                                }
                                *pending_bulk_bytes = Some(n);
                                n
                            }
                        };
                        // `bulk_bytes` is bounded by `bulk_bytes_max`, so no overflow.
                        if buf.len() < bulk_bytes + 2 {
                            return Ok(None);
                        }
                        args.push(buf.split_to(bulk_bytes).freeze());
                        buf.advance(2);
                        *pending_bulk_bytes = None;
                        *remaining -= 1;
                    }
                    let args = std::mem::take(args);
                    self.state = State::Idle;
                    return Ok(Some(Request {
                        args,
                        inline: false,
                    }));
                }
            }
        }
    }

    /// Parses a `*N\r\n` header at the front of `buf`; `None` if incomplete.
    fn multibulk_header(&self, buf: &mut BytesMut) -> Result<Option<usize>, ProtocolError> {
        let Some(line) = header_line(buf, self.limits.inline_bytes_max)
            .ok_or(ProtocolError::MultibulkHeaderTooBig)?
        else {
            return Ok(None);
        };
        let count = parse_i64(&buf[1..line]).ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count > 0 && count as u64 > self.limits.multibulk_count_max as u64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        buf.advance(line + 2);
        Ok(Some(count.max(0) as usize))
    }

    /// Parses one inline request line at the front of `buf`; `None` if incomplete.
    fn inline_line(&self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let window = &buf[..buf.len().min(self.limits.inline_bytes_max + 1)];
        let Some(newline) = find_c_string_byte(window, b'\n') else {
            if buf.len() > self.limits.inline_bytes_max {
                return Err(ProtocolError::InlineTooBig);
            }
            return Ok(None);
        };
        if newline > self.limits.inline_bytes_max {
            return Err(ProtocolError::InlineTooBig);
        }
        let mut line = buf.split_to(newline + 1).freeze();
        line.truncate(newline);
        if line.last() == Some(&b'\r') {
            line.truncate(newline - 1);
        }
        split_inline_args(&line).map(Some)
    }
}

impl Default for RequestDecoder {
    fn default() -> Self {
        RequestDecoder::new(Limits::default())
    }
}

/// Position of the CR ending the header line at the front of `buf`, if the line and the byte
/// after the CR are present. `Some(None)`: incomplete. `None`: no CR within `line_bytes_max`.
/// Only the first `line_bytes_max + 1` bytes are searched, so a call costs O(limit).
fn header_line(buf: &[u8], line_bytes_max: usize) -> Option<Option<usize>> {
    let window = &buf[..buf.len().min(line_bytes_max + 1)];
    match find_c_string_byte(window, b'\r') {
        Some(cr) if cr + 2 <= buf.len() => Some(Some(cr)),
        Some(_) => Some(None),
        None if buf.len() > line_bytes_max => None,
        None => Some(None),
    }
}

/// Redis finds line ends with `strchr` on its NUL-terminated query buffer, so a NUL byte
/// before the line end hides it: the request stays incomplete until the buffer passes the
/// line limit. This reproduces that (observed on Redis 7.0: `PING\0x\r\n` gets no reply).
fn find_c_string_byte(window: &[u8], byte: u8) -> Option<usize> {
    match window.iter().position(|&b| b == byte || b == 0) {
        Some(at) if window[at] == byte => Some(at),
        _ => None,
    }
}

/// Parses a `$N\r\n` header at the front of `buf`; `None` if incomplete.
fn bulk_header(buf: &mut BytesMut, limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    let Some(line) =
        header_line(buf, limits.inline_bytes_max).ok_or(ProtocolError::BulkHeaderTooBig)?
    else {
        return Ok(None);
    };
    if buf[0] != b'$' {
        return Err(ProtocolError::ExpectedBulk(buf[0]));
    }
    let bytes = parse_i64(&buf[1..line]).ok_or(ProtocolError::InvalidBulkLength)?;
    if bytes < 0 || bytes as u64 > limits.bulk_bytes_max as u64 {
        return Err(ProtocolError::InvalidBulkLength);
    }
    buf.advance(line + 2);
    Ok(Some(bytes as usize))
}

/// Redis's `string2ll`: optional `-`, no `+`, no leading zeros, no spaces, no overflow. The
/// server parses every integer argument (INCRBY, EXPIRE, SELECT, ...) with it too, so they
/// accept exactly what Redis accepts.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    /// Longest decimal i64 with sign (`-9223372036854775808`).
    const I64_DIGITS_MAX: usize = 20;
    if s.is_empty() || s.len() > I64_DIGITS_MAX {
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
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline line into arguments with Redis's `sdssplitargs` rules: arguments are
/// separated by whitespace; `"…"` understands `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<c>`;
/// `'…'` understands `\'`; a quote may open mid-argument (`a"b c"` is `ab c`), and a closing
/// quote must be followed by whitespace or the end of the line. Like the C original, the line
/// ends at its first NUL byte. Unquoted arguments are zero-copy slices of `line`.
pub(crate) fn split_inline_args(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    let s = &line[..end];
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < s.len() && is_c_space(s[i]) {
            i += 1;
        }
        if i == s.len() {
            return Ok(args);
        }
        let start = i;
        // Becomes `Some` at the first quote: from then on the argument is rebuilt byte by byte.
        let mut owned: Option<Vec<u8>> = None;
        // End of an unquoted argument (exclusive).
        let mut stop = s.len();
        while i < s.len() {
            let c = s[i];
            match c {
                b' ' | b'\n' | b'\r' | b'\t' => {
                    stop = i;
                    i += 1;
                    break;
                }
                b'"' => {
                    let out = owned.get_or_insert_with(|| s[start..i].to_vec());
                    i = parse_double_quoted(s, i + 1, out)?;
                    break;
                }
                b'\'' => {
                    let out = owned.get_or_insert_with(|| s[start..i].to_vec());
                    i = parse_single_quoted(s, i + 1, out)?;
                    break;
                }
                _ => {
                    if let Some(out) = owned.as_mut() {
                        out.push(c);
                    }
                    i += 1;
                }
            }
        }
        match owned {
            Some(bytes) => args.push(Bytes::from(bytes)),
            None => args.push(line.slice(start..stop)),
        }
    }
}

/// Parses the inside of `"…"` starting after the opening quote; returns the index after the
/// closing quote.
fn parse_double_quoted(s: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        let Some(&c) = s.get(i) else {
            return Err(ProtocolError::UnbalancedQuotes);
        };
        if c == b'\\' && s.get(i + 1) == Some(&b'x') {
            let hi = s.get(i + 2).copied().and_then(hex_value);
            let lo = s.get(i + 3).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi * 16 + lo);
                i += 4;
                continue;
            }
        }
        if c == b'\\' && i + 1 < s.len() {
            out.push(match s[i + 1] {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'b' => 0x08,
                b'a' => 0x07,
                other => other,
            });
            i += 2;
        } else if c == b'"' {
            return closing_quote(s, i + 1);
        } else {
            out.push(c);
            i += 1;
        }
    }
}

/// Parses the inside of `'…'` starting after the opening quote; returns the index after the
/// closing quote.
fn parse_single_quoted(s: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        let Some(&c) = s.get(i) else {
            return Err(ProtocolError::UnbalancedQuotes);
        };
        if c == b'\\' && s.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 2;
        } else if c == b'\'' {
            return closing_quote(s, i + 1);
        } else {
            out.push(c);
            i += 1;
        }
    }
}

/// A closing quote must be followed by whitespace or the end of the line.
fn closing_quote(s: &[u8], after: usize) -> Result<usize, ProtocolError> {
    match s.get(after) {
        None => Ok(after),
        Some(&b) if is_c_space(b) => Ok(after),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], limits: Limits) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = decoder.decode(&mut buf)? {
            out.push(req.args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_request() {
        let got = decode_all(
            b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$0\r\n\r\n",
            Limits::default(),
        );
        assert_eq!(got, Ok(vec![args(&["SET", "a", ""])]));
    }

    #[test]
    fn pipelined_requests_and_empty_multibulk_are_skipped() {
        let got = decode_all(
            b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\nPING\r\n\r\n",
            Limits::default(),
        );
        assert_eq!(got, Ok(vec![args(&["PING"]), args(&["PING"])]));
    }

    #[test]
    fn inline_rules() {
        let cases: &[(&[u8], &[&str])] = &[
            (b"PING\r\n", &["PING"]),
            (b"set a b\n", &["set", "a", "b"]),
            (b"  set   a\tb  \r\n", &["set", "a", "b"]),
            (b"set \"a b\" 'c d'\r\n", &["set", "a b", "c d"]),
            (b"set k\"x y\"z\r\n", &[]), // closing quote followed by a letter: error below
        ];
        for (input, expected) in &cases[..4] {
            assert_eq!(
                decode_all(input, Limits::default()),
                Ok(vec![args(expected)])
            );
        }
        assert_eq!(
            decode_all(cases[4].0, Limits::default()),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    #[test]
    fn inline_escapes() {
        let line =
            Bytes::from_static(b"\"\\x41\\n\\r\\t\\b\\a\\\\\\\"\\q\\xZZ\" 'it\\'s' a\"b c\"");
        let got = split_inline_args(&line).unwrap();
        assert_eq!(got[0].as_ref(), b"A\n\r\t\x08\x07\\\"qxZZ");
        assert_eq!(got[1].as_ref(), b"it's");
        assert_eq!(got[2].as_ref(), b"ab c");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn inline_unbalanced_quotes() {
        for input in [
            &b"get \"a\r\n"[..],
            b"get 'a\r\n",
            b"get \"a\"b\r\n",
            b"get 'a'b\r\n",
        ] {
            assert_eq!(
                decode_all(input, Limits::default()),
                Err(ProtocolError::UnbalancedQuotes)
            );
        }
    }

    #[test]
    fn nul_hides_the_line_end_as_in_redis() {
        assert_eq!(decode_all(b"get a\0b c\r\n", Limits::default()), Ok(vec![]));
        assert_eq!(decode_all(b"*1\0\r\n", Limits::default()), Ok(vec![]));
        let mut long = b"PING\0\r\n".to_vec();
        long.resize(INLINE + 10, b'x');
        assert_eq!(
            decode_all(&long, Limits::default()),
            Err(ProtocolError::InlineTooBig)
        );
        let line = Bytes::from_static(b"get a\0b");
        assert_eq!(split_inline_args(&line).unwrap().len(), 2);
    }

    #[test]
    fn unquoted_inline_args_are_zero_copy() {
        let line = Bytes::from_static(b"set key value");
        let got = split_inline_args(&line).unwrap();
        assert_eq!(got[1].as_ptr(), line[4..].as_ptr());
    }

    #[test]
    fn error_messages_match_redis() {
        let d = Limits::default();
        let cases: &[(&[u8], &str)] = &[
            (b"*abc\r\n", "Protocol error: invalid multibulk length"),
            (b"*2000000\r\n", "Protocol error: invalid multibulk length"),
            (b"*+1\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$01\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n$999999999999\r\n",
                "Protocol error: invalid bulk length",
            ),
            (b"*1\r\nx3\r\n", "Protocol error: expected '$', got 'x'"),
        ];
        for (input, message) in cases {
            let err = decode_all(input, d).unwrap_err();
            assert_eq!(
                err.to_string(),
                *message,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = vec![b'a'; INLINE + 1];
        assert_eq!(
            decode_all(&long, d).unwrap_err().to_string(),
            "Protocol error: too big inline request"
        );
        let mut long_header = b"*1".to_vec();
        long_header.resize(INLINE + 2, b'1');
        assert_eq!(
            decode_all(&long_header, d).unwrap_err().to_string(),
            "Protocol error: too big mbulk count string"
        );
    }
    const INLINE: usize = crate::limits::INLINE_BYTES_MAX;

    #[test]
    fn huge_bulk_header_allocates_nothing() {
        let mut decoder = RequestDecoder::new(Limits::REDIS);
        let mut buf = BytesMut::from(&b"*1048576\r\n$536870912\r\nabc"[..]);
        let capacity_before = buf.capacity();
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(buf.capacity(), capacity_before - 22);
        assert!(decoder.in_request());
        match &decoder.state {
            State::Multibulk { args, .. } => assert!(args.capacity() <= ARGS_PREALLOC_MAX),
            State::Idle => panic!("decoder should be inside the request"),
        }
    }

    #[test]
    fn request_byte_limit() {
        let limits = Limits {
            request_bytes_max: 5,
            ..Limits::default()
        };
        assert_eq!(
            decode_all(b"*2\r\n$3\r\nabc\r\n$3\r\ndef\r\n", limits),
            Err(ProtocolError::RequestTooBig)
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::from(&b"*x\r\n"[..]);
        assert!(decoder.decode(&mut buf).is_err());
        let mut good = BytesMut::from(&b"PING\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut good),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn cross_protocol_detection() {
        let got = decode_all(b"POST / HTTP/1.1\r\nHost: x\r\n", Limits::default()).unwrap();
        assert!(is_cross_protocol_command(&got[0][0]));
        assert!(is_cross_protocol_command(&got[1][0]));
        assert!(is_cross_protocol_command(b"host:"));
        assert!(!is_cross_protocol_command(b"GET"));
    }

    #[test]
    fn string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1.0",
            b"abc",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
