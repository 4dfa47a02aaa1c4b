use proptest::prelude::*;

use super::*;

type Op = Operation<RegisterInput<u32>, RegisterOutput<u32>>;

fn write(client: u64, v: u32, call: u64, ret: u64) -> Op {
    Operation {
        client,
        input: RegisterInput::Write(v),
        output: RegisterOutput::Done,
        call,
        ret,
    }
}

fn read(client: u64, seen: Option<u32>, call: u64, ret: u64) -> Op {
    Operation {
        client,
        input: RegisterInput::Read,
        output: RegisterOutput::Read(seen),
        call,
        ret,
    }
}

fn lost_write(client: u64, v: u32, call: u64) -> Op {
    Operation {
        client,
        input: RegisterInput::Write(v),
        output: RegisterOutput::Unknown,
        call,
        ret: UNKNOWN_RETURN,
    }
}

fn verdict(history: &[Op]) -> Verdict {
    check(&RegisterModel::<u32>::default(), history)
}

#[test]
fn sequential_runs_are_linearizable() {
    assert!(verdict(&[]).is_linearizable());
    let h = [
        read(1, None, 0, 1),
        write(1, 5, 2, 3),
        read(2, Some(5), 4, 5),
        write(2, 6, 6, 7),
        read(1, Some(6), 8, 9),
    ];
    assert!(verdict(&h).is_linearizable());
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either() {
    for seen in [None, Some(1)] {
        let h = [write(1, 1, 0, 10), read(2, seen, 2, 8)];
        assert!(verdict(&h).is_linearizable(), "{seen:?}");
    }
}

#[test]
fn a_stale_read_is_caught() {
    // The write of 2 completed before the read began, yet the read saw 1.
    let h = [write(1, 1, 0, 1), write(1, 2, 2, 3), read(2, Some(1), 4, 5)];
    let v = verdict(&h);
    assert!(matches!(v, Verdict::NotLinearizable { .. }), "{v:?}");
}

#[test]
fn a_new_then_old_inversion_is_caught() {
    // Both reads overlap the write, but the second starts after the first saw the new value:
    // it may not go back to the old one.
    let h = [
        write(1, 1, 0, 1),
        write(1, 2, 2, 20),
        read(2, Some(2), 3, 4),
        read(3, Some(1), 5, 6),
    ];
    assert!(!verdict(&h).is_linearizable());
    // The other way round is fine.
    let h = [
        write(1, 1, 0, 1),
        write(1, 2, 2, 20),
        read(2, Some(1), 3, 4),
        read(3, Some(2), 5, 6),
    ];
    assert!(verdict(&h).is_linearizable());
}

#[test]
fn a_value_nobody_wrote_is_caught() {
    let h = [write(1, 1, 0, 1), read(2, Some(7), 2, 3)];
    assert!(!verdict(&h).is_linearizable());
}

#[test]
fn a_write_of_unknown_outcome_may_or_may_not_have_happened() {
    // Seen by a later read: it happened.
    let h = [
        write(1, 1, 0, 1),
        lost_write(1, 2, 2),
        read(2, Some(2), 10, 11),
        read(2, Some(2), 12, 13),
    ];
    assert!(verdict(&h).is_linearizable());
    // Never seen: it did not (or not yet).
    let h = [
        write(1, 1, 0, 1),
        lost_write(1, 2, 2),
        read(2, Some(1), 10, 11),
    ];
    assert!(verdict(&h).is_linearizable());
    // But once seen it cannot be unseen.
    let h = [
        write(1, 1, 0, 1),
        lost_write(1, 2, 2),
        read(2, Some(2), 10, 11),
        read(2, Some(1), 12, 13),
    ];
    assert!(!verdict(&h).is_linearizable());
}

#[test]
fn deletes_empty_the_register() {
    let delete = |call, ret| Operation {
        client: 1,
        input: RegisterInput::Delete,
        output: RegisterOutput::Done,
        call,
        ret,
    };
    assert!(verdict(&[write(1, 1, 0, 1), delete(2, 3), read(2, None, 4, 5)]).is_linearizable());
    assert!(!verdict(&[write(1, 1, 0, 1), delete(2, 3), read(2, Some(1), 4, 5)]).is_linearizable());
}

#[test]
fn answers_that_depend_on_the_state_are_checked() {
    let swap = |client, v, previous, call, ret| Operation {
        client,
        input: RegisterInput::Write(v),
        output: RegisterOutput::Replaced(previous),
        call,
        ret,
    };
    let del = |client, existed, call, ret| Operation {
        client,
        input: RegisterInput::Delete,
        output: RegisterOutput::Deleted(existed),
        call,
        ret,
    };
    assert!(verdict(&[swap(1, 1, None, 0, 1), swap(2, 2, Some(1), 2, 3)]).is_linearizable());
    // Two concurrent swaps cannot both have replaced the same value.
    assert!(
        !verdict(&[
            write(1, 1, 0, 1),
            swap(2, 2, Some(1), 2, 10),
            swap(3, 3, Some(1), 2, 10),
        ])
        .is_linearizable()
    );
    assert!(
        verdict(&[write(1, 1, 0, 1), del(2, true, 2, 3), del(3, false, 4, 5)]).is_linearizable()
    );
    // Two deletes of one value cannot both have found it.
    assert!(
        !verdict(&[write(1, 1, 0, 1), del(2, true, 2, 9), del(3, true, 2, 9)]).is_linearizable()
    );
}

#[test]
fn keys_are_checked_apart() {
    let model = RegisterModel::<u32>::default();
    // Key a alone is fine, key b has a stale read.
    let h = [
        (0, write(1, 1, 0, 1)),
        (1, write(1, 1, 0, 1)),
        (1, write(1, 2, 2, 3)),
        (0, read(2, Some(1), 4, 5)),
        (1, read(2, Some(1), 4, 5)),
    ];
    let ops: Vec<Op> = h.iter().map(|(_, op)| op.clone()).collect();
    let keys: Vec<u32> = h.iter().map(|(k, _)| *k).collect();
    let v = check_partitioned(&model, &ops, |i, _| keys[i]);
    match v {
        Verdict::NotLinearizable { longest } => {
            assert!(longest.iter().all(|&i| keys[i] == 1), "{longest:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_budget_bounds_the_search() {
    // Many concurrent writes of distinct values and a read that saw none of them: every order
    // is tried before the answer is no.
    let mut h: Vec<Op> = (0..14).map(|i| write(i, i as u32, 0, 100)).collect();
    h.push(read(99, Some(1000), 101, 102));
    assert_eq!(
        check_with_budget(&RegisterModel::<u32>::default(), &h, 1000),
        Verdict::Unknown
    );
    assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
}

/// A random concurrent execution of a real register: each operation takes effect at one
/// instant inside its interval, so the history is linearizable by construction.
fn execution(ops: &[(bool, u32, u64, u64)]) -> Vec<Op> {
    // (is_write, value, start offset, length): the linearization point is start + length/2,
    // and points are distinct (index breaks ties), so the order is the points' order.
    let mut points: Vec<(u64, usize)> = ops
        .iter()
        .enumerate()
        .map(|(i, &(_, _, start, len))| ((start * 2 + len) * 64 + i as u64, i))
        .collect();
    points.sort_unstable();
    let mut state = None;
    let mut outputs = vec![RegisterOutput::Done; ops.len()];
    for &(_, i) in &points {
        let (is_write, v, _, _) = ops[i];
        if is_write {
            state = Some(v);
        } else {
            outputs[i] = RegisterOutput::Read(state);
        }
    }
    ops.iter()
        .enumerate()
        .map(|(i, &(is_write, v, start, len))| Operation {
            client: i as u64,
            input: if is_write {
                RegisterInput::Write(v)
            } else {
                RegisterInput::Read
            },
            output: outputs[i].clone(),
            // Scaled so the point lies strictly inside [call, ret].
            call: start * 128,
            ret: (start + len) * 128 + 127,
        })
        .collect()
}

proptest! {
    #[test]
    fn real_executions_are_linearizable(
        ops in prop::collection::vec((any::<bool>(), 0u32..4, 0u64..30, 1u64..10), 1..24)
    ) {
        let h = execution(&ops);
        prop_assert!(verdict(&h).is_linearizable(), "{:?}", h);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_always_caught(
        ops in prop::collection::vec((any::<bool>(), 0u32..4, 0u64..30, 1u64..10), 1..24),
        which in any::<prop::sample::Index>(),
    ) {
        let mut h = execution(&ops);
        let reads: Vec<usize> = (0..h.len()).filter(|&i| h[i].input == RegisterInput::Read).collect();
        prop_assume!(!reads.is_empty());
        h[reads[which.index(reads.len())]].output = RegisterOutput::Read(Some(99));
        prop_assert!(!verdict(&h).is_linearizable(), "{:?}", h);
    }
}

/// Linearizability by brute force: some order of all operations that respects real time
/// (a before b whenever a returned before b was called) is a legal sequential run. An
/// operation of unknown outcome may be left out (it may never have happened).
fn brute_force(history: &[Op]) -> bool {
    fn extend(history: &[Op], used: &mut Vec<bool>, state: Option<u32>) -> bool {
        if (0..history.len()).all(|i| used[i] || history[i].ret == UNKNOWN_RETURN) {
            return true;
        }
        let model = RegisterModel::<u32>::default();
        for i in 0..history.len() {
            if used[i] {
                continue;
            }
            // Every unused operation that returned before i was called must come first.
            let blocked =
                (0..history.len()).any(|j| !used[j] && j != i && history[j].ret < history[i].call);
            if blocked {
                continue;
            }
            if let Some(next) = model.step(&state, &history[i].input, &history[i].output) {
                used[i] = true;
                if extend(history, used, next) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    extend(history, &mut vec![false; history.len()], None)
}

fn arbitrary_op() -> impl Strategy<Value = Op> {
    (0u8..6, 0u32..3, 0u64..20, 1u64..8).prop_map(|(kind, v, call, len)| {
        if kind == 5 {
            // A write whose outcome the client never learned.
            return Operation {
                client: 0,
                input: RegisterInput::Write(v),
                output: RegisterOutput::Unknown,
                call: call * 2,
                ret: UNKNOWN_RETURN,
            };
        }
        let (input, output) = match kind {
            0 => (RegisterInput::Write(v), RegisterOutput::Done),
            1 => (
                RegisterInput::Write(v),
                RegisterOutput::Replaced(Some(v ^ 1).filter(|x| *x < 3)),
            ),
            2 => (RegisterInput::Read, RegisterOutput::Read(Some(v))),
            3 => (RegisterInput::Read, RegisterOutput::Read(None)),
            _ => (RegisterInput::Delete, RegisterOutput::Deleted(v % 2 == 0)),
        };
        Operation {
            client: 0,
            input,
            output,
            call: call * 2,
            ret: (call + len) * 2 + 1,
        }
    })
}

proptest! {
    /// On small arbitrary histories (real-time order, stale and impossible answers alike) the
    /// search agrees with trying every order.
    #[test]
    fn agrees_with_brute_force(history in prop::collection::vec(arbitrary_op(), 1..7)) {
        prop_assert_eq!(verdict(&history).is_linearizable(), brute_force(&history), "{:?}", history);
    }
}
