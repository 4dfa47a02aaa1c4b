//! Malformed and hostile input: exact Redis errors, limits enforced before allocation, and no
//! panics on arbitrary bytes.

use bytes::BytesMut;
use cairn_resp::fuzzing::decode_chunks;
use cairn_resp::{Frame, Limits, ProtocolError, RequestDecoder};

fn first_error(input: &[u8], limits: Limits) -> Option<String> {
    decode_chunks(&[input], limits).1.map(|e| e.to_string())
}

#[test]
fn redis_error_strings() {
    let limits = Limits::default();
    let cases: &[(&[u8], &str)] = &[
        (b"*1x\r\n", "Protocol error: invalid multibulk length"),
        (b"*-\r\n", "Protocol error: invalid multibulk length"),
        (b"*1048577\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        (
            b"*1\r\n$16843776\r\n",
            "Protocol error: invalid bulk length",
        ),
        (b"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
        (
            b"set \"a\r\n",
            "Protocol error: unbalanced quotes in request",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(
            first_error(input, limits).as_deref(),
            Some(*message),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn bulk_at_the_limit_is_accepted_above_is_refused() {
    let limits = Limits {
        bulk_bytes_max: 4,
        ..Limits::default()
    };
    assert_eq!(first_error(b"*1\r\n$4\r\nabcd\r\n", limits), None);
    assert_eq!(
        first_error(b"*1\r\n$5\r\n", limits).as_deref(),
        Some("Protocol error: invalid bulk length")
    );
}

#[test]
fn inline_limit() {
    let limits = Limits::default();
    let mut long = vec![b'x'; limits.inline_bytes_max];
    assert_eq!(
        first_error(&long, limits),
        None,
        "at the limit, still waiting for the newline"
    );
    long.push(b'x');
    assert_eq!(
        first_error(&long, limits).as_deref(),
        Some("Protocol error: too big inline request")
    );
}

#[test]
fn bulk_header_without_cr() {
    let limits = Limits::default();
    let mut input = b"*1\r\n$".to_vec();
    input.resize(4 + limits.inline_bytes_max + 2, b'1');
    assert_eq!(
        first_error(&input, limits).as_deref(),
        Some("Protocol error: too big bulk count string")
    );
}

#[test]
fn raw_byte_in_expected_dollar_reply() {
    let mut out = BytesMut::new();
    ProtocolError::ExpectedBulk(0xff).encode_reply(&mut out);
    assert_eq!(
        &out[..],
        b"-ERR Protocol error: expected '$', got '\xff'\r\n"
    );
}

#[test]
fn announced_sizes_do_not_allocate() {
    // 1M elements of 16 MiB announced in 25 bytes: nothing is reserved for them.
    let mut decoder = RequestDecoder::new(Limits::default());
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(b"*1048576\r\n$16777216\r\nab");
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.capacity() <= 64);
    assert!(decoder.in_request());
}

#[test]
fn frame_decoder_survives_garbage() {
    let garbage: &[&[u8]] = &[
        b"*-2\r\n",
        b"$-2\r\n",
        b"%-1\r\n",
        b"=3\r\nabc\r\n",
        b"#x\r\n",
        b",abc\r\n",
        b"(\r\n",
        b"_x\r\n",
        b":1\rx",
    ];
    for input in garbage {
        assert!(
            Frame::decode(input, &Limits::default()).is_err(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}
