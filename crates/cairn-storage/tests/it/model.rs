//! Model-based property test: random operation sequences against a `BTreeMap` model, with
//! clean reopens, power cuts (on the simulated disk: unsynced data and directory entries lost,
//! kept or torn at random) and merges in between. Writes use `SyncPolicy::Always`, so every
//! acknowledged operation must survive a cut. Batches carry system records too, checked against
//! a second `BTreeMap` and the version of the last batch that changed it.

use std::collections::BTreeMap;
use std::ops::Bound;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
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
    /// Key puts (`Some`) and deletes, system puts and deletes, and the marker, in one batch.
    Batch(
        Vec<(u8, Option<Vec<u8>>)>,
        Vec<(u8, Option<Vec<u8>>)>,
        Vec<u8>,
    ),
    Get(u8),
    /// `get_many_guarded` of these keys with the guard prefix `g/`.
    Guarded(Vec<u8>),
    Scan(u8, u8, usize),
    Reopen,
    PowerCut,
    Merge,
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

/// System keys: most are guards of keys (`g/` ++ key), some are not.
fn system_key(k: u8) -> Vec<u8> {
    if k < 16 {
        [&b"g/"[..], &key(k)].concat()
    } else {
        format!("txn/{k}").into_bytes()
    }
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
        3 => (
            prop::collection::vec((k.clone(), prop::option::of(value())), 0..6),
            prop::collection::vec((0u8..20, prop::option::of(value())), 0..4),
            value(),
        )
            .prop_map(|(ops, system, marker)| Op::Batch(ops, system, marker)),
        3 => k.clone().prop_map(Op::Get),
        1 => prop::collection::vec(k.clone(), 0..5).prop_map(Op::Guarded),
        1 => (k.clone(), k, 1usize..30).prop_map(|(a, b, l)| Op::Scan(a, b, l)),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerCut),
        1 => Just(Op::Merge),
    ]
}

/// Model: key → value, with expired puts simply absent (they are invisible at once).
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Model of the system table: key → value, and the version of the last batch that changed it.
#[derive(Debug, Default)]
struct SystemModel {
    table: BTreeMap<Vec<u8>, Vec<u8>>,
    version: u64,
}

fn check_system(engine: &Engine, system: &SystemModel) {
    let got: Vec<(Vec<u8>, Vec<u8>)> = engine
        .system_range(Bound::Unbounded, Bound::Unbounded, usize::MAX)
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = system
        .table
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(engine.system_len(), system.table.len());
    assert_eq!(engine.system_version(), system.version);
}

fn check_all(engine: &Engine, model: &Model, system: &SystemModel) {
    check_system(engine, system);
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
        let mut system = SystemModel::default();
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
                Op::Batch(ops, system_ops, m) => {
                    let mut batch = WriteBatch::new();
                    // Key and system records interleaved, as a transaction's batch may be.
                    for i in 0..ops.len().max(system_ops.len()) {
                        match ops.get(i) {
                            Some((k, Some(v))) => { batch.put(&key(*k), v); }
                            Some((k, None)) => { batch.delete(&key(*k)); }
                            None => {}
                        }
                        match system_ops.get(i) {
                            Some((k, Some(v))) => { batch.put_system(&system_key(*k), v); }
                            Some((k, None)) => { batch.delete_system(&system_key(*k)); }
                            None => {}
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
                    if !system_ops.is_empty() {
                        system.version = engine.last_sequence();
                    }
                    for (k, v) in system_ops {
                        match v {
                            Some(v) => { system.table.insert(system_key(k), v); }
                            None => { system.table.remove(&system_key(k)); }
                        }
                    }
                    marker = Some(m);
                }
                Op::Guarded(ks) => {
                    let keys: Vec<Vec<u8>> = ks.iter().map(|&k| key(k)).collect();
                    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                    let read = engine.get_many_guarded(&refs, b"g/").unwrap();
                    let values: Vec<Option<Vec<u8>>> =
                        read.entries.iter().map(|e| e.as_ref().map(|e| e.value.to_vec())).collect();
                    let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| model.get(k).cloned()).collect();
                    prop_assert_eq!(values, want);
                    let guards: Vec<Option<Bytes>> = ks
                        .iter()
                        .map(|&k| {
                            let guard = [&b"g/"[..], &key(k)].concat();
                            system.table.get(&guard).map(|v| Bytes::copy_from_slice(v))
                        })
                        .collect();
                    prop_assert_eq!(read.guards, guards);
                    prop_assert_eq!(read.system_version, system.version);
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
                    check_system(&engine, &system);
                }
                Op::PowerCut => {
                    let last = engine.last_sequence();
                    let after = io.power_cut(PowerCut::Random);
                    drop(engine);
                    io = after;
                    engine = open(&io);
                    prop_assert!(engine.last_sequence() >= last, "sequence went backwards");
                    prop_assert_eq!(engine.last_applied().map(|b| b.to_vec()), marker.clone());
                    check_all(&engine, &model, &system);
                }
                Op::Merge => {
                    engine.merge().unwrap();
                    check_system(&engine, &system);
                }
            }
        }
        check_all(&engine, &model, &system);
        engine.merge().unwrap();
        check_all(&engine, &model, &system);
        engine.close().unwrap();
        let engine = open(&io);
        check_all(&engine, &model, &system);
        prop_assert_eq!(engine.last_applied().map(|b| b.to_vec()), marker);
    }
}
