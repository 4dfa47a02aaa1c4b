//! Fuzzes WAL recovery: builds a log from the input, damages a segment as the input says, and
//! checks that recovery reports corruption or returns whole batches in order. The body lives in
//! `cairn_wal::fuzzing` so that `cargo test -p cairn-wal` runs it as a proptest too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_wal::fuzzing::wal_recover(data);
});
