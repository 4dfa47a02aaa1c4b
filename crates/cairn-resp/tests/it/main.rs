//! Integration tests of `cairn-resp`: round trips, streaming and malformed input, through the
//! public API only.

mod fuzz;
mod malformed;
mod redis_differential;
mod roundtrip;
mod streaming;
