//! The cargo-fuzz `wal_recover` body run as a proptest, so stable `cargo test` exercises it.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]
    #[test]
    fn wal_recover_fuzz_body(data in prop::collection::vec(any::<u8>(), 0..256)) {
        cairn_wal::fuzzing::wal_recover(&data);
    }
}
