//! Integration tests of `cairn-wal` through its public API: round trips, torn tails, bit
//! flips, purge, fault injection and simulated power cuts.

mod basics;
mod corruption;
mod faults;
mod fuzz;
mod groups;
mod lazy;
mod purge;
mod support;
