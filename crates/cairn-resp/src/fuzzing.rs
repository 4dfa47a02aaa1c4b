//! Fuzz bodies shared by the cargo-fuzz targets in `fuzz/` and the proptest that runs the
//! same checks on stable Rust (`tests/it/fuzz.rs`). Not part of the API.

use bytes::BytesMut;

use crate::{Frame, Limits, Protocol, ProtocolError, Request, RequestDecoder};

/// Small limits so that short fuzz inputs reach every limit check.
pub const FUZZ_LIMITS: Limits = Limits {
    multibulk_count_max: 16,
    bulk_bytes_max: 64,
    inline_bytes_max: 32,
    request_bytes_max: 256,
    frame_depth_max: 8,
};

/// Runs a request decoder over `chunks` fed one after another; returns the requests decoded
/// and the error that stopped decoding, if any.
pub fn decode_chunks(chunks: &[&[u8]], limits: Limits) -> (Vec<Request>, Option<ProtocolError>) {
    let mut decoder = RequestDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(err) => return (requests, Some(err)),
            }
        }
    }
    (requests, None)
}

/// The `resp_decode` fuzz body: the request decoder gives the same answer however the input is
/// split, every decoded request is non-empty, and the frame decoder neither panics nor
/// disagrees with its own encoder.
pub fn resp_decode(data: &[u8]) {
    let Some((&split_seed, input)) = data.split_first() else {
        return;
    };
    let whole = decode_chunks(&[input], FUZZ_LIMITS);
    let split_at = usize::from(split_seed) % (input.len() + 1);
    let halves = decode_chunks(&[&input[..split_at], &input[split_at..]], FUZZ_LIMITS);
    assert_eq!(
        whole, halves,
        "decoding depends on how the input was split at {split_at}"
    );
    for request in &whole.0 {
        assert!(!request.args.is_empty(), "empty request returned");
        assert!(
            request
                .args
                .iter()
                .all(|a| a.len() <= FUZZ_LIMITS.bulk_bytes_max.max(FUZZ_LIMITS.inline_bytes_max))
        );
    }

    if let Ok(Some((frame, used))) = Frame::decode(input, &FUZZ_LIMITS) {
        assert!(used <= input.len());
        let encoded = frame.to_bytes(Protocol::Resp3);
        let limits = Limits {
            bulk_bytes_max: usize::MAX / 4,
            inline_bytes_max: usize::MAX / 4,
            ..FUZZ_LIMITS
        };
        let again = Frame::decode(&encoded, &limits)
            .expect("re-encoded frame decodes")
            .expect("complete");
        assert!(
            frames_equivalent(&frame, &again.0),
            "{frame:?} re-decoded as {:?}",
            again.0
        );
        assert_eq!(again.1, encoded.len());
    }
}

/// Equality where NaN equals NaN and CR/LF in simple strings compare as the spaces the
/// encoder turns them into.
fn frames_equivalent(a: &Frame, b: &Frame) -> bool {
    let all = |x: &[Frame], y: &[Frame]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| frames_equivalent(p, q))
    };
    match (a, b) {
        (Frame::Double(x), Frame::Double(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Frame::Array(x), Frame::Array(y))
        | (Frame::Set(x), Frame::Set(y))
        | (Frame::Push(x), Frame::Push(y)) => all(x, y),
        (Frame::Map(x), Frame::Map(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|((k1, v1), (k2, v2))| {
                    frames_equivalent(k1, k2) && frames_equivalent(v1, v2)
                })
        }
        (Frame::NullArray, Frame::Null) => true,
        (Frame::Error(x), Frame::Error(y)) | (Frame::Simple(x), Frame::Simple(y)) => {
            let line = |t: &[u8]| {
                t.iter()
                    .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c })
                    .collect::<Vec<u8>>()
            };
            line(x) == line(y)
        }
        _ => a == b,
    }
}
