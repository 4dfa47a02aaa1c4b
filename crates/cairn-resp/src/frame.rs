//! The RESP2/RESP3 reply frame: one enum for every type, an encoder with Redis's RESP2
//! downgrade rules, and a bounded decoder (for clients, tests and fuzzing).
//!
//! The server speaks RESP2 until a client sends `HELLO 3`; the same [`Frame`] is written
//! either way, so command code never branches on the protocol version.

use bytes::{Bytes, BytesMut};

use crate::request::parse_i64;
use crate::{Limits, ProtocolError, encode};

/// The protocol version a connection speaks (`HELLO 2` / `HELLO 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// One RESP value.
///
/// RESP2 has no map, set, double, boolean, big number, verbatim string or push:
/// [`Frame::encode`] downgrades them as Redis does (maps flatten to arrays of key, value…;
/// sets and pushes become arrays; doubles, big numbers and verbatim strings become bulk
/// strings; booleans become `:1`/`:0`).
///
/// RESP3 attributes (`|N`) are metadata that is not counted in the enclosing aggregate and
/// that clients may ignore; Redis never sends them unprompted, so there is no variant: the
/// decoder reads and discards an attribute and returns the frame that follows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`: a short status line (no CR/LF).
    Simple(Bytes),
    /// `-ERR message`: the error code and message (no CR/LF). RESP3 blob errors (`!`) decode
    /// into this variant too.
    Error(Bytes),
    /// `:42`.
    Integer(i64),
    /// `$5\r\nhello`: binary-safe bytes.
    Bulk(Bytes),
    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// The null array: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    /// `*N`: an ordered list of frames.
    Array(Vec<Frame>),
    /// RESP3 `%N`: key/value pairs in order.
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `~N`: an unordered collection.
    Set(Vec<Frame>),
    /// RESP3 `,1.5`.
    Double(f64),
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `(12345678901234567890`: the decimal digits, with an optional leading `-`.
    BigNumber(Bytes),
    /// RESP3 `=15\r\ntxt:Some string`: a three-byte format (`txt`, `mkd`) and the text.
    Verbatim {
        /// The format tag, such as `txt`.
        format: [u8; 3],
        /// The text.
        text: Bytes,
    },
    /// RESP3 `>N`: out-of-band data (pub/sub messages, invalidations).
    Push(Vec<Frame>),
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple(Bytes::from_static(b"OK"))
    }

    /// An error frame from text that includes the code: `Frame::error("ERR syntax error")`.
    pub fn error(text: impl Into<Bytes>) -> Frame {
        Frame::Error(text.into())
    }

    /// A bulk string frame.
    pub fn bulk(bytes: impl Into<Bytes>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// Writes the frame in `proto` to the end of `out`.
    pub fn encode(&self, out: &mut BytesMut, proto: Protocol) {
        match self {
            Frame::Simple(text) => encode::simple(out, text),
            Frame::Error(text) => encode::error(out, text),
            Frame::Integer(n) => encode::integer(out, *n),
            Frame::Bulk(bytes) => encode::bulk(out, bytes),
            Frame::Null => encode::null(out, proto),
            Frame::NullArray => encode::null_array(out, proto),
            Frame::Array(items) => {
                encode::array_header(out, items.len());
                items.iter().for_each(|item| item.encode(out, proto));
            }
            Frame::Map(pairs) => {
                encode::map_header(out, pairs.len(), proto);
                for (key, value) in pairs {
                    key.encode(out, proto);
                    value.encode(out, proto);
                }
            }
            Frame::Set(items) => {
                encode::set_header(out, items.len(), proto);
                items.iter().for_each(|item| item.encode(out, proto));
            }
            Frame::Double(value) => encode::double(out, *value, proto),
            Frame::Boolean(value) => encode::boolean(out, *value, proto),
            Frame::BigNumber(digits) => encode::big_number(out, digits, proto),
            Frame::Verbatim { format, text } => encode::verbatim(out, format, text, proto),
            Frame::Push(items) => {
                encode::push_header(out, items.len(), proto);
                items.iter().for_each(|item| item.encode(out, proto));
            }
        }
    }

    /// The encoded bytes of the frame (convenience for tests and cold paths).
    pub fn to_bytes(&self, proto: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out, proto);
        out.freeze()
    }

    /// Decodes one frame (RESP2 or RESP3 syntax) from the front of `input`.
    ///
    /// Returns `Ok(None)` if `input` holds only part of a frame, else the frame and the number
    /// of bytes it used. Lengths and counts are checked against `limits` before anything is
    /// allocated, nesting is bounded by `limits.frame_depth_max`, and lines must end in CRLF.
    /// The decoder restarts from the beginning on every call: fine for replies, which are
    /// read by clients and tests; the server's request path uses [`crate::RequestDecoder`].
    pub fn decode(input: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let mut parser = FrameParser {
            input,
            pos: 0,
            limits,
        };
        match parser.frame(0)? {
            Some(frame) => Ok(Some((frame, parser.pos))),
            None => Ok(None),
        }
    }
}

/// A recursive-descent parser over one input slice.
struct FrameParser<'a> {
    input: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

/// `Ok(None)` (incomplete) propagates out of the parser like an error.
macro_rules! need {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl FrameParser<'_> {
    /// The line at the cursor without its CRLF; advances past the CRLF.
    fn line(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        let rest = &self.input[self.pos..];
        let window = &rest[..rest.len().min(self.limits.inline_bytes_max + 1)];
        let Some(cr) = window.iter().position(|&b| b == b'\r') else {
            if rest.len() > self.limits.inline_bytes_max {
                return Err(ProtocolError::MissingCrlf);
            }
            return Ok(None);
        };
        match rest.get(cr + 1) {
            None => return Ok(None),
            Some(b'\n') => {}
            Some(_) => return Err(ProtocolError::MissingCrlf),
        }
        let start = self.pos;
        self.pos += cr + 2;
        Ok(Some(&self.input[start..start + cr]))
    }

    fn number(&mut self) -> Result<Option<i64>, ProtocolError> {
        let line = need!(self.line());
        Ok(Some(parse_i64(line).ok_or(ProtocolError::InvalidNumber)?))
    }

    /// A length header: `-1` is `None` inside `Some`, else a bounded count.
    fn length(
        &mut self,
        max: usize,
        err: ProtocolError,
    ) -> Result<Option<Option<usize>>, ProtocolError> {
        let n = need!(self.number());
        if n == -1 {
            return Ok(Some(None));
        }
        if n < 0 || n as u64 > max as u64 {
            return Err(err);
        }
        Ok(Some(Some(n as usize)))
    }

    /// `len` payload bytes followed by CRLF.
    fn payload(&mut self, len: usize) -> Result<Option<Bytes>, ProtocolError> {
        let rest = &self.input[self.pos..];
        if rest.len() < len + 2 {
            return Ok(None);
        }
        if &rest[len..len + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        self.pos += len + 2;
        Ok(Some(Bytes::copy_from_slice(&rest[..len])))
    }

    fn items(&mut self, count: usize, depth: usize) -> Result<Option<Vec<Frame>>, ProtocolError> {
        let mut items = Vec::with_capacity(count.min(crate::ARGS_PREALLOC_MAX));
        for _ in 0..count {
            items.push(need!(self.frame(depth + 1)));
        }
        Ok(Some(items))
    }

    fn pairs(
        &mut self,
        count: usize,
        depth: usize,
    ) -> Result<Option<Vec<(Frame, Frame)>>, ProtocolError> {
        let mut pairs = Vec::with_capacity(count.min(crate::ARGS_PREALLOC_MAX));
        for _ in 0..count {
            let key = need!(self.frame(depth + 1));
            let value = need!(self.frame(depth + 1));
            pairs.push((key, value));
        }
        Ok(Some(pairs))
    }

    fn frame(&mut self, depth: usize) -> Result<Option<Frame>, ProtocolError> {
        if depth > self.limits.frame_depth_max {
            return Err(ProtocolError::NestingTooDeep);
        }
        let Some(&kind) = self.input.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        let bulk_max = self.limits.bulk_bytes_max;
        let count_max = self.limits.multibulk_count_max;
        let frame = match kind {
            b'+' => Frame::Simple(Bytes::copy_from_slice(need!(self.line()))),
            b'-' => Frame::Error(Bytes::copy_from_slice(need!(self.line()))),
            b':' => Frame::Integer(need!(self.number())),
            b'$' => match need!(self.length(bulk_max, ProtocolError::InvalidBulkLength)) {
                None => Frame::Null,
                Some(len) => Frame::Bulk(need!(self.payload(len))),
            },
            b'!' => match need!(self.length(bulk_max, ProtocolError::InvalidBulkLength)) {
                None => return Err(ProtocolError::InvalidBulkLength),
                Some(len) => Frame::Error(need!(self.payload(len))),
            },
            b'=' => match need!(self.length(bulk_max, ProtocolError::InvalidBulkLength)) {
                Some(len) if len >= 4 => {
                    let body = need!(self.payload(len));
                    if body[3] != b':' {
                        return Err(ProtocolError::InvalidBulkLength);
                    }
                    Frame::Verbatim {
                        format: [body[0], body[1], body[2]],
                        text: body.slice(4..),
                    }
                }
                _ => return Err(ProtocolError::InvalidBulkLength),
            },
            b'*' => match need!(self.length(count_max, ProtocolError::InvalidMultibulkLength)) {
                None => Frame::NullArray,
                Some(count) => Frame::Array(need!(self.items(count, depth))),
            },
            b'~' | b'>' => {
                let Some(count) =
                    need!(self.length(count_max, ProtocolError::InvalidMultibulkLength))
                else {
                    return Err(ProtocolError::InvalidMultibulkLength);
                };
                let items = need!(self.items(count, depth));
                if kind == b'~' {
                    Frame::Set(items)
                } else {
                    Frame::Push(items)
                }
            }
            b'%' | b'|' => {
                let Some(count) =
                    need!(self.length(count_max, ProtocolError::InvalidMultibulkLength))
                else {
                    return Err(ProtocolError::InvalidMultibulkLength);
                };
                let pairs = need!(self.pairs(count, depth));
                if kind == b'|' {
                    // Metadata about the next frame: skipped. Chained attributes count as nesting.
                    return self.frame(depth + 1);
                }
                Frame::Map(pairs)
            }
            b'_' => {
                if !need!(self.line()).is_empty() {
                    return Err(ProtocolError::MissingCrlf);
                }
                Frame::Null
            }
            b'#' => match need!(self.line()) {
                b"t" => Frame::Boolean(true),
                b"f" => Frame::Boolean(false),
                _ => return Err(ProtocolError::InvalidNumber),
            },
            b',' => {
                let line = need!(self.line());
                let text = std::str::from_utf8(line).map_err(|_| ProtocolError::InvalidNumber)?;
                Frame::Double(text.parse().map_err(|_| ProtocolError::InvalidNumber)?)
            }
            b'(' => {
                let line = need!(self.line());
                let digits = line.strip_prefix(b"-").unwrap_or(line);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(ProtocolError::InvalidNumber);
                }
                Frame::BigNumber(Bytes::copy_from_slice(line))
            }
            other => return Err(ProtocolError::UnknownFrameType(other)),
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(frame: &Frame, proto: Protocol) -> Vec<u8> {
        frame.to_bytes(proto).to_vec()
    }

    #[test]
    fn resp2_downgrades_like_redis() {
        use Protocol::Resp2;
        let map = Frame::Map(vec![(Frame::bulk("k"), Frame::Integer(1))]);
        assert_eq!(enc(&map, Resp2), b"*2\r\n$1\r\nk\r\n:1\r\n");
        assert_eq!(
            enc(&Frame::Set(vec![Frame::Integer(1)]), Resp2),
            b"*1\r\n:1\r\n"
        );
        assert_eq!(enc(&Frame::Null, Resp2), b"$-1\r\n");
        assert_eq!(enc(&Frame::NullArray, Resp2), b"*-1\r\n");
        assert_eq!(enc(&Frame::Double(1.5), Resp2), b"$3\r\n1.5\r\n");
        assert_eq!(enc(&Frame::Boolean(true), Resp2), b":1\r\n");
        assert_eq!(enc(&Frame::Boolean(false), Resp2), b":0\r\n");
        assert_eq!(
            enc(&Frame::BigNumber(Bytes::from_static(b"-12")), Resp2),
            b"$3\r\n-12\r\n"
        );
        let verbatim = Frame::Verbatim {
            format: *b"txt",
            text: Bytes::from_static(b"hi"),
        };
        assert_eq!(enc(&verbatim, Resp2), b"$2\r\nhi\r\n");
        assert_eq!(enc(&Frame::Push(vec![]), Resp2), b"*0\r\n");
    }

    #[test]
    fn resp3_encoding() {
        use Protocol::Resp3;
        let map = Frame::Map(vec![(Frame::Simple("a".into()), Frame::Boolean(false))]);
        assert_eq!(enc(&map, Resp3), b"%1\r\n+a\r\n#f\r\n");
        assert_eq!(enc(&Frame::Null, Resp3), b"_\r\n");
        assert_eq!(enc(&Frame::NullArray, Resp3), b"_\r\n");
        assert_eq!(enc(&Frame::Double(f64::NEG_INFINITY), Resp3), b",-inf\r\n");
        let verbatim = Frame::Verbatim {
            format: *b"txt",
            text: Bytes::from_static(b"hi"),
        };
        assert_eq!(enc(&verbatim, Resp3), b"=6\r\ntxt:hi\r\n");
        assert_eq!(enc(&Frame::Set(vec![]), Resp3), b"~0\r\n");
        assert_eq!(
            enc(&Frame::Push(vec![Frame::Integer(-3)]), Resp3),
            b">1\r\n:-3\r\n"
        );
    }

    #[test]
    fn decode_handles_every_type() {
        let input = b"*3\r\n$-1\r\n!5\r\nERR x\r\n%1\r\n(123\r\n,inf\r\n";
        let (frame, used) = Frame::decode(input, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, input.len());
        assert_eq!(
            frame,
            Frame::Array(vec![
                Frame::Null,
                Frame::Error("ERR x".into()),
                Frame::Map(vec![(
                    Frame::BigNumber("123".into()),
                    Frame::Double(f64::INFINITY)
                )]),
            ])
        );
        let with_attribute = b"|1\r\n+ttl\r\n:3\r\n:7\r\n";
        let (frame, used) = Frame::decode(with_attribute, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!((frame, used), (Frame::Integer(7), with_attribute.len()));
        for prefix in 0..input.len() {
            assert_eq!(
                Frame::decode(&input[..prefix], &Limits::default()),
                Ok(None),
                "{prefix}"
            );
        }
    }

    #[test]
    fn decode_bounds_nesting_and_lengths() {
        let deep = b"*1\r\n".repeat(FRAME_DEPTH + 2);
        assert_eq!(
            Frame::decode(&deep, &Limits::default()),
            Err(ProtocolError::NestingTooDeep)
        );
        assert_eq!(
            Frame::decode(b"$999999999999\r\n", &Limits::default()),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            Frame::decode(b"?\r\n", &Limits::default()),
            Err(ProtocolError::UnknownFrameType(b'?'))
        );
        assert_eq!(
            Frame::decode(b"$1\r\nab\r\n", &Limits::default()),
            Err(ProtocolError::MissingCrlf)
        );
    }
    const FRAME_DEPTH: usize = crate::FRAME_DEPTH_MAX;
}
