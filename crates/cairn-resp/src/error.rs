//! Protocol errors, with Redis's exact wording.
//!
//! Redis clients and test suites match on these strings, so the `Display` text of every
//! request-side variant is byte-for-byte what Redis's `networking.c` replies. After any of
//! them Redis sends the error and closes the connection; Cairn's server should do the same.

use bytes::{BufMut, BytesMut};

/// A peer sent bytes that are not valid RESP (or exceed a [`crate::Limits`] bound).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*N` header that is not an integer or exceeds the multibulk count limit.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$N` header that is not an integer, is negative, or exceeds the bulk limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An element of a multibulk request does not start with `$`; holds the byte found.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// An inline request line longer than the inline limit.
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    /// An inline request with an unterminated quote, or a closing quote not followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A `*` header line longer than the inline limit without a terminating CR.
    #[error("Protocol error: too big mbulk count string")]
    MultibulkHeaderTooBig,
    /// A `$` header line longer than the inline limit without a terminating CR.
    #[error("Protocol error: too big bulk count string")]
    BulkHeaderTooBig,
    /// The arguments of one request add up to more than the request byte limit. Redis closes
    /// such a client without a reply (query buffer limit); Cairn replies with this, then closes.
    #[error("Protocol error: request too big")]
    RequestTooBig,
    /// Reply decoding: a frame starts with a byte that is not a RESP type.
    #[error("Protocol error: unknown frame type '{}'", char::from(*.0))]
    UnknownFrameType(u8),
    /// Reply decoding: a line or length that is not a valid number.
    #[error("Protocol error: invalid number")]
    InvalidNumber,
    /// Reply decoding: a line or payload not terminated by CRLF.
    #[error("Protocol error: missing CRLF")]
    MissingCrlf,
    /// Reply decoding: aggregates nested deeper than the depth limit.
    #[error("Protocol error: frame nested too deep")]
    NestingTooDeep,
}

impl ProtocolError {
    /// Writes this error as the reply Redis sends (`-ERR Protocol error: …\r\n`: Redis adds
    /// the `ERR` code). Unlike `Display`, it writes the offending byte of
    /// [`ProtocolError::ExpectedBulk`] raw, as Redis does.
    pub fn encode_reply(&self, out: &mut BytesMut) {
        out.put_slice(b"-ERR ");
        match self {
            ProtocolError::ExpectedBulk(got) => {
                out.put_slice(b"Protocol error: expected '$', got '");
                out.put_u8(*got);
                out.put_u8(b'\'');
            }
            other => out.put_slice(other.to_string().as_bytes()),
        }
        out.put_slice(b"\r\n");
    }
}
