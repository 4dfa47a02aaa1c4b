//! Linearizability checking of recorded histories.
//!
//! A history is a list of [`Operation`]s that concurrent clients performed, each with the time
//! it was called and the time its answer arrived. The history is linearizable if every
//! operation can be given a point between its call and its return such that, taken in the
//! order of those points, the operations are a legal sequential run of the [`Model`]. The
//! search is Wing & Gong's, with Lowe's memoization of (set of operations linearized, model
//! state), as in porcupine: walk the calls in time order, linearize a call whose step the model
//! accepts, backtrack when a return is reached whose call is not yet linearized.
//!
//! Operations whose outcome is unknown (the client got an error or a timeout: the write may or
//! may not have happened) are given a return time of [`UNKNOWN_RETURN`]: they can then be
//! linearized anywhere after their call, including after every other operation (which is the
//! same as never having happened, for anything that observes it). Their output must be one the
//! model accepts for any state (for the register, [`RegisterOutput::Unknown`]).
//!
//! Histories of a key-value store are checked one key at a time ([`check_partitioned`]):
//! linearizability is compositional (Herlihy & Wing), and small histories keep the search
//! small.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// The return time of an operation whose outcome the client never learned.
pub const UNKNOWN_RETURN: u64 = u64::MAX;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after `input` ran on `state` and answered `output`, or `None` if a sequential
    /// run could not have answered that.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;
}

/// One operation as a client saw it. Times are in any monotonic unit (nanoseconds since the
/// test began, say); `call` < `ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    pub output: O,
    pub call: u64,
    /// [`UNKNOWN_RETURN`] when the outcome is unknown.
    pub ret: u64,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `longest` is the longest sequence of operations (indexes into the
    /// history) the search managed to linearize, the best hint at where it goes wrong.
    NotLinearizable {
        longest: Vec<usize>,
    },
    /// The search took more than the step budget.
    Unknown,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Search steps [`check`] takes before answering [`Verdict::Unknown`].
pub const STEPS_MAX: u64 = 50_000_000;

/// Checks one history against `model`.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    check_with_budget(model, history, STEPS_MAX)
}

/// [`check`] with an explicit step budget.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    let mut list = EventList::new(history);
    let mut linearized = Bitset::new(n);
    let mut cache: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut state = model.init();
    // Calls linearized so far, with the state before each.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut entry = list.first();
    let mut steps = 0u64;
    while let Some(e) = entry {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        let ev = list.events[e];
        if ev.is_call {
            let op = &history[ev.op];
            if let Some(next) = model.step(&state, &op.input, &op.output) {
                let mut with = linearized.clone();
                with.set(ev.op);
                if cache.insert((with.clone(), next.clone())) {
                    stack.push((e, state));
                    state = next;
                    linearized = with;
                    list.lift(e);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(e, _)| list.events[e].op).collect();
                    }
                    entry = list.first();
                    continue;
                }
            }
            entry = list.next(e);
        } else {
            // A return whose call is still in the list: something before it must be undone.
            let Some((call, before)) = stack.pop() else {
                return Verdict::NotLinearizable { longest };
            };
            linearized.clear(list.events[call].op);
            state = before;
            list.unlift(call);
            entry = list.next(call);
        }
    }
    Verdict::Linearizable
}

/// Checks a history one partition at a time (for a key-value store: one key at a time);
/// `partition` names the partition of the operation at an index of `history`. The first partition that is not linearizable
/// decides; its `longest` indexes the whole history.
pub fn check_partitioned<M, K>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partition: impl Fn(usize, &Operation<M::Input, M::Output>) -> K,
) -> Verdict
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
    K: Ord,
{
    let mut parts: std::collections::BTreeMap<K, Vec<usize>> = Default::default();
    for (i, op) in history.iter().enumerate() {
        parts.entry(partition(i, op)).or_default().push(i);
    }
    let mut unknown = false;
    for indexes in parts.values() {
        let sub: Vec<_> = indexes.iter().map(|&i| history[i].clone()).collect();
        match check(model, &sub) {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown = true,
            Verdict::NotLinearizable { longest } => {
                return Verdict::NotLinearizable {
                    longest: longest.into_iter().map(|i| indexes[i]).collect(),
                };
            }
        }
    }
    if unknown {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    }
}

/// A register's operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterInput<V> {
    Read,
    Write(V),
    /// Delete: the register holds nothing afterwards.
    Delete,
}

/// A register's answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOutput<V> {
    /// What a read saw (`None`: nothing).
    Read(Option<V>),
    /// A write or delete succeeded.
    Done,
    /// A write that also answered the value it replaced (Redis `SET … GET`).
    Replaced(Option<V>),
    /// A delete that answered whether there was a value to delete (Redis `DEL`'s count).
    Deleted(bool),
    /// The client never learned the outcome (pair with [`UNKNOWN_RETURN`]).
    Unknown,
}

impl<V> Model for RegisterModel<V>
where
    V: Clone + Eq + Hash + Debug,
{
    type State = Option<V>;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> Option<V> {
        None
    }

    fn step(
        &self,
        state: &Option<V>,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Option<V>> {
        match (input, output) {
            (RegisterInput::Read, RegisterOutput::Read(seen)) => {
                (seen == state).then(|| state.clone())
            }
            (RegisterInput::Read, RegisterOutput::Unknown) => Some(state.clone()),
            (RegisterInput::Write(v), RegisterOutput::Done | RegisterOutput::Unknown) => {
                Some(Some(v.clone()))
            }
            (RegisterInput::Write(v), RegisterOutput::Replaced(previous)) => {
                (previous == state).then(|| Some(v.clone()))
            }
            (RegisterInput::Delete, RegisterOutput::Done | RegisterOutput::Unknown) => Some(None),
            (RegisterInput::Delete, RegisterOutput::Deleted(existed)) => {
                (*existed == state.is_some()).then_some(None)
            }
            _ => None,
        }
    }
}

/// A register that starts empty: reads see the last write, or nothing after a delete.
#[derive(Debug, Clone, Copy)]
pub struct RegisterModel<V>(std::marker::PhantomData<V>);

impl<V> Default for RegisterModel<V> {
    fn default() -> Self {
        RegisterModel(std::marker::PhantomData)
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The index of the other event of the same operation.
    partner: usize,
}

/// Call and return events in time order as a doubly linked list over a vector, so that a
/// linearized operation's two events can be taken out and put back in O(1).
#[derive(Debug)]
struct EventList {
    events: Vec<Event>,
    /// `prev[i]`/`next[i]` of event `i`; `HEAD` is the sentinel before the first.
    prev: Vec<usize>,
    next: Vec<usize>,
}

const NONE: usize = usize::MAX;

impl EventList {
    fn new<I, O>(history: &[Operation<I, O>]) -> EventList {
        // (time, calls before returns at equal times, op).
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
        for (i, op) in history.iter().enumerate() {
            assert!(
                op.call < op.ret,
                "operation {i} returns before it is called"
            );
            order.push((op.call, false, i));
            order.push((op.ret, true, i));
        }
        order.sort_unstable();
        let mut position = vec![[0usize; 2]; history.len()];
        for (slot, &(_, is_ret, op)) in order.iter().enumerate() {
            position[op][usize::from(is_ret)] = slot + 1;
        }
        let mut events = vec![Event {
            op: NONE,
            is_call: false,
            partner: NONE,
        }];
        for &(_, is_ret, op) in &order {
            events.push(Event {
                op,
                is_call: !is_ret,
                partner: position[op][usize::from(!is_ret)],
            });
        }
        let len = events.len();
        let prev = (0..len)
            .map(|i| if i == 0 { NONE } else { i - 1 })
            .collect();
        let next = (0..len)
            .map(|i| if i + 1 == len { NONE } else { i + 1 })
            .collect();
        EventList { events, prev, next }
    }

    fn first(&self) -> Option<usize> {
        self.next(0)
    }

    fn next(&self, e: usize) -> Option<usize> {
        let n = self.next[e];
        (n != NONE).then_some(n)
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NONE {
            self.prev[n] = e;
        }
    }

    /// Takes call `e` and its return out of the list.
    fn lift(&mut self, e: usize) {
        self.unlink(e);
        self.unlink(self.events[e].partner);
    }

    /// Puts call `e` and its return back (the reverse of the matching [`EventList::lift`]).
    fn unlift(&mut self, e: usize) {
        self.relink(self.events[e].partner);
        self.relink(e);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[cfg(test)]
mod tests;
