//! `cairn-resp`: the Redis serialization protocol (RESP2 and RESP3) as pure functions.
//!
//! This crate exists so that every byte a Redis client sends is parsed in one small, fuzzed,
//! allocation-bounded place that knows nothing about sockets or storage. The server feeds it
//! the bytes it read and gets back argument vectors; it hands it reply frames and gets back
//! bytes to write.
//!
//! - [`RequestDecoder`]: a streaming decoder for client requests, multibulk (`*N\r\n$len\r\n…`)
//!   and inline (`set a "b c"\r\n`), with Redis's limits and exact error strings.
//! - [`Frame`]: every RESP2/RESP3 reply type, with an encoder that downgrades RESP3 types to
//!   RESP2 the way Redis does, and a bounded decoder for replies (clients, tests).
//! - [`encode`]: allocation-free helpers that write single reply items straight into a buffer,
//!   for hot paths that do not want to build a [`Frame`] first.
//! - [`glob`]: Redis `stringmatchlen` semantics in O(pattern × string) time.
//!
//! Architecture invariant: this crate depends on `bytes`, `thiserror` and `itoa` only.

pub mod encode;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod glob;
mod limits;
mod request;

pub use error::ProtocolError;
pub use frame::{Frame, Protocol};
pub use limits::{
    ARGS_PREALLOC_MAX, CAIRN_BULK_BYTES_MAX, CAIRN_REQUEST_BYTES_MAX, FRAME_DEPTH_MAX,
    INLINE_BYTES_MAX, Limits, MULTIBULK_COUNT_MAX, REDIS_BULK_BYTES_MAX, REDIS_MULTIBULK_COUNT_MAX,
    REDIS_REQUEST_BYTES_MAX,
};
pub use request::{Request, RequestDecoder, is_cross_protocol_command, parse_i64};
