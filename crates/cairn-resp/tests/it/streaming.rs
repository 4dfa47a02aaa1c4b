//! A request stream decodes the same whether it arrives whole, split at any byte, or one byte
//! at a time.

use bytes::Bytes;
use cairn_resp::fuzzing::decode_chunks;
use cairn_resp::{Limits, Request};

fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn stream() -> (Vec<u8>, Vec<Vec<Bytes>>) {
    let mut input = Vec::new();
    input.extend(multibulk(&[b"SET", b"key", b"va\r\nlue"]));
    input.extend(b"PING\r\n");
    input.extend(b"*0\r\n");
    input.extend(b"set \"a b\" 'c'\n");
    input.extend(multibulk(&[b"GET", b""]));
    input.extend(b"\r\n");
    let expected = vec![
        vec![
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"key"),
            Bytes::from_static(b"va\r\nlue"),
        ],
        vec![Bytes::from_static(b"PING")],
        vec![
            Bytes::from_static(b"set"),
            Bytes::from_static(b"a b"),
            Bytes::from_static(b"c"),
        ],
        vec![Bytes::from_static(b"GET"), Bytes::new()],
    ];
    (input, expected)
}

fn args_of(requests: &[Request]) -> Vec<Vec<Bytes>> {
    requests.iter().map(|r| r.args.clone()).collect()
}

#[test]
fn split_at_every_byte() {
    let (input, expected) = stream();
    for split in 0..=input.len() {
        let (requests, err) = decode_chunks(&[&input[..split], &input[split..]], Limits::default());
        assert_eq!(err, None, "split at {split}");
        assert_eq!(args_of(&requests), expected, "split at {split}");
    }
}

#[test]
fn one_byte_at_a_time() {
    let (input, expected) = stream();
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    let (requests, err) = decode_chunks(&chunks, Limits::default());
    assert_eq!(err, None);
    assert_eq!(args_of(&requests), expected);
    assert_eq!(
        requests.iter().map(|r| r.inline).collect::<Vec<_>>(),
        [false, true, true, false]
    );
}

#[test]
fn errors_are_the_same_however_split() {
    let input = b"*2\r\n$3\r\nGET\r\n%3\r\nabc\r\n";
    let whole = decode_chunks(&[input], Limits::default());
    assert_eq!(
        whole.1.as_ref().map(|e| e.to_string()).as_deref(),
        Some("Protocol error: expected '$', got '%'")
    );
    for split in 0..=input.len() {
        assert_eq!(
            decode_chunks(&[&input[..split], &input[split..]], Limits::default()),
            whole
        );
    }
}
