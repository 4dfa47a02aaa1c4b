//! The cargo-fuzz `resp_decode` body run as a proptest, so stable `cargo test` exercises it.

use proptest::prelude::*;

fn resp_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"'".to_vec()),
        Just(b"\\".to_vec()),
        Just(b" ".to_vec()),
        Just(b"-1".to_vec()),
        (0u32..80).prop_map(|n| n.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..4),
        Just(b"%1\r\n".to_vec()),
        Just(b"|1\r\n".to_vec()),
        Just(b",1.5\r\n".to_vec()),
    ];
    prop::collection::vec(token, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]
    #[test]
    fn resp_decode_fuzz_body(seed: u8, body in resp_like_bytes()) {
        let mut data = vec![seed];
        data.extend_from_slice(&body);
        cairn_resp::fuzzing::resp_decode(&data);
    }

    #[test]
    fn resp_decode_fuzz_body_random_bytes(data in prop::collection::vec(any::<u8>(), 0..200)) {
        cairn_resp::fuzzing::resp_decode(&data);
    }
}
