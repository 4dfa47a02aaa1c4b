//! Micro benchmark of the RESP hot path: decoding pipelined requests and encoding replies.
//!
//! `cargo run --release -p cairn-resp --example resp_bench`

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cairn_resp::{Frame, Limits, Protocol, RequestDecoder, encode, glob};

/// Requests per measured pipeline.
const REQUESTS: usize = 200_000;
/// Bytes handed to the decoder per simulated socket read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Value size of the SET requests and GET replies.
const VALUE_BYTES: usize = 64;

fn main() {
    let value = vec![b'v'; VALUE_BYTES];
    let mut input = BytesMut::new();
    for i in 0..REQUESTS {
        let key = format!("key:{i:08}");
        Frame::Array(vec![
            Frame::bulk("SET"),
            Frame::bulk(key),
            Frame::Bulk(Bytes::from(value.clone())),
        ])
        .encode(&mut input, Protocol::Resp2);
    }
    let input = input.freeze();

    let started = Instant::now();
    let mut decoder = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES * 2);
    let mut decoded = 0;
    for chunk in input.chunks(READ_CHUNK_BYTES) {
        buf.extend_from_slice(chunk);
        while let Some(request) = decoder.decode(&mut buf).expect("valid input") {
            decoded += black_box(request.args.len());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(decoded, REQUESTS * 3);
    println!(
        "decode  SET k v({VALUE_BYTES} B) multibulk, {READ_CHUNK_BYTES} B reads: {:>6.2} M requests/s, {:>7.1} MB/s",
        REQUESTS as f64 / secs / 1e6,
        input.len() as f64 / secs / 1e6
    );

    let inline: Vec<u8> = (0..REQUESTS)
        .flat_map(|i| format!("SET key:{i:08} \"{}\"\r\n", "v".repeat(VALUE_BYTES)).into_bytes())
        .collect();
    let started = Instant::now();
    let mut decoder = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut decoded = 0;
    for chunk in inline.chunks(READ_CHUNK_BYTES) {
        buf.extend_from_slice(chunk);
        while let Some(request) = decoder.decode(&mut buf).expect("valid input") {
            decoded += black_box(request.args.len());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(decoded, REQUESTS * 3);
    println!(
        "decode  SET k \"v\" inline (quoted):                {:>6.2} M requests/s",
        REQUESTS as f64 / secs / 1e6
    );

    let started = Instant::now();
    let mut out = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut written = 0;
    for _ in 0..REQUESTS {
        encode::bulk(&mut out, &value);
        encode::integer(&mut out, black_box(1_234_567));
        if out.len() > READ_CHUNK_BYTES {
            written += out.len();
            out.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    black_box(written);
    println!(
        "encode  bulk({VALUE_BYTES} B) + integer replies:             {:>6.2} M replies/s",
        2.0 * REQUESTS as f64 / secs / 1e6
    );

    let reply = Frame::Array(
        (0..10)
            .map(|_| Frame::Bulk(Bytes::from(value.clone())))
            .collect(),
    );
    let started = Instant::now();
    for _ in 0..REQUESTS / 10 {
        reply.encode(&mut out, Protocol::Resp3);
        if out.len() > READ_CHUNK_BYTES {
            out.clear();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "encode  Frame::Array of 10 bulks ({VALUE_BYTES} B):          {:>6.2} M frames/s",
        (REQUESTS / 10) as f64 / secs / 1e6
    );

    let pattern = glob::Pattern::new(b"*a*a*a*a*a*a*a*a*a*a*b", false);
    let subject = vec![b'a'; 1000];
    let started = Instant::now();
    let runs = 200;
    for _ in 0..runs {
        assert!(!pattern.matches(black_box(&subject)));
    }
    println!(
        "glob    *a*a*…*b (exponential for naive matchers) on 1000 bytes: {:>8.1} µs/match",
        started.elapsed().as_secs_f64() / runs as f64 * 1e6
    );
}
