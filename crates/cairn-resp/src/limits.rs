//! Every size the codec accepts from a peer, as a named constant and a [`Limits`] value.
//!
//! Limits exist because every length in RESP is chosen by the peer: a header such as
//! `*1048576\r\n` or `$536870912\r\n` costs the client a dozen bytes and must not cost the
//! server anything until the bytes it announces have actually arrived (CVE-2021-32675).

/// Largest element count of a multibulk request header in Cairn (`*1048576`, the limit of
/// Redis up to 6.2).
pub const MULTIBULK_COUNT_MAX: usize = 1024 * 1024;

/// Redis 7's multibulk count limit (`INT_MAX`).
pub const REDIS_MULTIBULK_COUNT_MAX: usize = i32::MAX as usize;

/// Redis's default `proto-max-bulk-len`: 512 MiB.
pub const REDIS_BULK_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Cairn's default bulk limit: the 16 MiB value limit plus 64 KiB of slack, so that a value at
/// the limit is refused by the value check (with a clear error) rather than by the protocol.
pub const CAIRN_BULK_BYTES_MAX: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Longest inline request line, and longest `*`/`$` header line, as Redis's
/// `PROTO_INLINE_MAX_SIZE` (64 KiB).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Redis's default `client-query-buffer-limit` (1 GiB): the sum of argument bytes of one request.
pub const REDIS_REQUEST_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// Cairn's default cap on the sum of argument bytes of one request (enough for an MSET of
/// several maximal values, small enough that one connection cannot take the node's memory).
pub const CAIRN_REQUEST_BYTES_MAX: usize = 128 * 1024 * 1024;

/// At most this many argument slots are preallocated from a client-supplied multibulk count;
/// the vector grows as arguments actually arrive.
pub const ARGS_PREALLOC_MAX: usize = 64;

/// Deepest nesting of aggregate reply frames the frame decoder accepts (recursion bound).
pub const FRAME_DEPTH_MAX: usize = 128;

/// The limits one decoder enforces. `Limits::default()` is Cairn's configuration;
/// [`Limits::REDIS`] reproduces a stock Redis server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `*N` element count (requests and reply aggregates).
    pub multibulk_count_max: usize,
    /// Largest accepted `$len` bulk length.
    pub bulk_bytes_max: usize,
    /// Longest inline request line and longest header line.
    pub inline_bytes_max: usize,
    /// Largest sum of argument bytes in one request.
    pub request_bytes_max: usize,
    /// Deepest nesting of reply aggregates (frame decoder only).
    pub frame_depth_max: usize,
}

impl Limits {
    /// The defaults of a stock Redis 7 server.
    pub const REDIS: Limits = Limits {
        multibulk_count_max: REDIS_MULTIBULK_COUNT_MAX,
        bulk_bytes_max: REDIS_BULK_BYTES_MAX,
        inline_bytes_max: INLINE_BYTES_MAX,
        request_bytes_max: REDIS_REQUEST_BYTES_MAX,
        frame_depth_max: FRAME_DEPTH_MAX,
    };

    /// Cairn's defaults (see the constants).
    pub const CAIRN: Limits = Limits {
        multibulk_count_max: MULTIBULK_COUNT_MAX,
        bulk_bytes_max: CAIRN_BULK_BYTES_MAX,
        inline_bytes_max: INLINE_BYTES_MAX,
        request_bytes_max: CAIRN_REQUEST_BYTES_MAX,
        frame_depth_max: FRAME_DEPTH_MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::CAIRN
    }
}
