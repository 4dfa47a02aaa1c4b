//! Model-based property test: random operation sequences against a `BTreeMap` model, with
//! clean reopens, power cuts (on the simulated disk: unsynced data and directory entries lost,
//! kept or torn at random) and merges in between. Writes use `SyncPolicy::Always`, so every
//! acknowledged operation must survive a cut.

use std::collections::BTreeMap;
use std::ops::Bound;

use std::path::Path;
use std::sync::Arc;

use cairn_storage::io::sim::{PowerCut, SimIo};
use cairn_storage::{Engine, Options, SyncPolicy, WriteBatch, now_ms};
use proptest::prelude::*;

use crate::support::small_options;

fn options() -> Options {
    Options {
        sync: SyncPolicy::Always,
        ..small_options()
    }
}

fn open(io: &SimIo) -> Engine {
    Engine::open_with_io(Path::new("/sim/model"), options(), Arc::new(io.clone())).unwrap()
}

/// Far enough in the future that no test run reaches it.
const FAR_FUTURE_MS: u64 = 1 << 60;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    /// Put with an expiry in the past (`true`) or the far future.
    PutExpiring(u8, Vec<u8>, bool),
    Delete(u8),
    Batch(Vec<(u8, Option<Vec<u8>>)>, Vec<u8>),
    Get(u8),
    Scan(u8, u8, usize),
    Reopen,
    PowerCut,
    Merge,
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..24;
    prop_oneof![
        6 => (k.clone(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (k.clone(), value(), any::<bool>()).prop_map(|(k, v, past)| Op::PutExpiring(k, v, past)),
        3 => k.clone().prop_map(Op::Delete),
        2 => (prop::collection::vec((k.clone(), prop::option::of(value())), 1..6), value())
            .prop_map(|(ops, marker)| Op::Batch(ops, marker)),
        3 => k.clone().prop_map(Op::Get),
        1 => (k.clone(), k, 1usize..30).prop_map(|(a, b, l)| Op::Scan(a, b, l)),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerCut),
        1 => Just(Op::Merge),
    ]
}

/// Model: key → value, with expired puts simply absent (they are invisible at once).
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn check_all(engine: &Engine, model: &Model) {
    let got: Vec<(Vec<u8>, Vec<u8>)> = engine
        .scan(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(got, want);
    assert_eq!(engine.len(), model.len() as u64);
}

proptest! {
    // 48 cases by default; PROPTEST_CASES=1000 for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_btreemap_model(ops in prop::collection::vec(op(), 1..80), seed in any::<u64>()) {
        let mut io = SimIo::new(seed);
        let mut engine = open(&io);
        let mut model = Model::new();
        let mut marker: Option<Vec<u8>> = None;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    engine.put(&key(k), &v).unwrap();
                    model.insert(key(k), v);
                }
                Op::PutExpiring(k, v, past) => {
                    let at = if past { now_ms().saturating_sub(1) } else { FAR_FUTURE_MS };
                    engine.put_with_expiry(&key(k), &v, Some(at)).unwrap();
                    if past { model.remove(&key(k)); } else { model.insert(key(k), v); }
                }
                Op::Delete(k) => {
                    let was_live = engine.delete(&key(k)).unwrap();
                    prop_assert_eq!(was_live, model.remove(&key(k)).is_some());
                }
                Op::Batch(ops, m) => {
                    let mut batch = WriteBatch::new();
                    for (k, v) in &ops {
                        match v {
                            Some(v) => { batch.put(&key(*k), v); }
                            None => { batch.delete(&key(*k)); }
                        }
                    }
                    batch.set_last_applied(&m);
                    engine.write(batch).unwrap();
                    for (k, v) in ops {
                        match v {
                            Some(v) => { model.insert(key(k), v); }
                            None => { model.remove(&key(k)); }
                        }
                    }
                    marker = Some(m);
                }
                Op::Get(k) => {
                    let got = engine.get(&key(k)).unwrap().map(|b| b.to_vec());
                    prop_assert_eq!(got, model.get(&key(k)).cloned());
                }
                Op::Scan(a, b, limit) => {
                    let (lo, hi) = (key(a.min(b)), key(a.max(b)));
                    let got: Vec<Vec<u8>> = engine
                        .scan(Bound::Included(&lo), Bound::Excluded(&hi), limit)
                        .unwrap()
                        .into_iter()
                        .map(|e| e.key.to_vec())
                        .collect();
                    let want: Vec<Vec<u8>> = model
                        .range::<Vec<u8>, _>((Bound::Included(&lo), Bound::Excluded(&hi)))
                        .take(limit)
                        .map(|(k, _)| k.clone())
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Reopen => {
                    let last = engine.last_sequence();
                    engine.close().unwrap();
                    engine = open(&io);
                    prop_assert!(engine.last_sequence() >= last, "sequence went backwards");
                    prop_assert_eq!(engine.last_applied().map(|b| b.to_vec()), marker.clone());
                }
                Op::PowerCut => {
                    let last = engine.last_sequence();
                    let after = io.power_cut(PowerCut::Random);
                    drop(engine);
                    io = after;
                    engine = open(&io);
                    prop_assert!(engine.last_sequence() >= last, "sequence went backwards");
                    prop_assert_eq!(engine.last_applied().map(|b| b.to_vec()), marker.clone());
                    check_all(&engine, &model);
                }
                Op::Merge => {
                    engine.merge().unwrap();
                }
            }
        }
        check_all(&engine, &model);
        engine.merge().unwrap();
        check_all(&engine, &model);
        engine.close().unwrap();
        let engine = open(&io);
        check_all(&engine, &model);
        prop_assert_eq!(engine.last_applied().map(|b| b.to_vec()), marker);
    }
}
