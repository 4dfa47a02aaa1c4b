//! Fuzzes the RESP request decoder and frame decoder with arbitrary bytes. The body lives in
//! `cairn_resp::fuzzing` so that `cargo test -p cairn-resp` runs it as a proptest too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_resp::fuzzing::resp_decode(data);
});
