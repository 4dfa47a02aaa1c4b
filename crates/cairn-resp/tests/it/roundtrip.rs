//! Property tests: every frame survives encode → decode, in RESP3 exactly and in RESP2 after
//! Redis's downgrade; every argument vector survives a multibulk round trip.

use bytes::{Bytes, BytesMut};
use cairn_resp::encode::format_double;
use cairn_resp::fuzzing::decode_chunks;
use cairn_resp::{Frame, Limits, Protocol};
use proptest::prelude::*;

fn line_text() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..16,
    )
    .prop_map(Bytes::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    let leaf = prop_oneof![
        line_text().prop_map(Frame::Simple),
        line_text().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        binary().prop_map(Frame::Bulk),
        Just(Frame::Null),
        Just(Frame::NullArray),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Frame::Double),
        any::<bool>().prop_map(Frame::Boolean),
        (any::<bool>(), "[1-9][0-9]{0,40}").prop_map(|(neg, d)| Frame::BigNumber(Bytes::from(
            if neg { format!("-{d}") } else { d }
        ))),
        (any::<[u8; 3]>(), binary()).prop_map(|(format, text)| Frame::Verbatim { format, text }),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Frame::Array),
            prop::collection::vec(inner.clone(), 0..8).prop_map(Frame::Set),
            prop::collection::vec(inner.clone(), 0..8).prop_map(Frame::Push),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Frame::Map),
        ]
    })
}

/// What a RESP3 frame reads back as: `_` is both nulls.
fn as_resp3(frame: &Frame) -> Frame {
    match frame {
        Frame::NullArray => Frame::Null,
        Frame::Array(items) => Frame::Array(items.iter().map(as_resp3).collect()),
        Frame::Set(items) => Frame::Set(items.iter().map(as_resp3).collect()),
        Frame::Push(items) => Frame::Push(items.iter().map(as_resp3).collect()),
        Frame::Map(pairs) => Frame::Map(
            pairs
                .iter()
                .map(|(k, v)| (as_resp3(k), as_resp3(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What a frame reads back as after a RESP2 encoding (Redis's downgrade rules).
fn as_resp2(frame: &Frame) -> Frame {
    match frame {
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            Frame::Array(items.iter().map(as_resp2).collect())
        }
        Frame::Map(pairs) => Frame::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [as_resp2(k), as_resp2(v)])
                .collect(),
        ),
        Frame::Double(value) => Frame::Bulk(Bytes::from(format_double(*value))),
        Frame::Boolean(value) => Frame::Integer(i64::from(*value)),
        Frame::BigNumber(digits) => Frame::Bulk(digits.clone()),
        Frame::Verbatim { text, .. } => Frame::Bulk(text.clone()),
        other => other.clone(),
    }
}

proptest! {
    #[test]
    fn resp3_round_trip(frame in frame()) {
        let bytes = frame.to_bytes(Protocol::Resp3);
        let decoded = Frame::decode(&bytes, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(decoded, (as_resp3(&frame), bytes.len()));
    }

    #[test]
    fn resp2_round_trip(frame in frame()) {
        let bytes = frame.to_bytes(Protocol::Resp2);
        let decoded = Frame::decode(&bytes, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(decoded, (as_resp2(&frame), bytes.len()));
    }

    #[test]
    fn frame_prefixes_are_incomplete(frame in frame()) {
        let bytes = frame.to_bytes(Protocol::Resp3);
        for prefix in 0..bytes.len() {
            prop_assert_eq!(Frame::decode(&bytes[..prefix], &Limits::default()), Ok(None));
        }
    }

    #[test]
    fn request_round_trip(requests in prop::collection::vec(prop::collection::vec(binary(), 1..6), 1..6), split: prop::sample::Index) {
        let mut input = BytesMut::new();
        for args in &requests {
            Frame::Array(args.iter().cloned().map(Frame::Bulk).collect()).encode(&mut input, Protocol::Resp2);
        }
        let at = split.index(input.len() + 1);
        let (decoded, err) = decode_chunks(&[&input[..at], &input[at..]], Limits::default());
        prop_assert_eq!(err, None);
        let args: Vec<Vec<Bytes>> = decoded.into_iter().map(|r| r.args).collect();
        prop_assert_eq!(args, requests);
    }
}
