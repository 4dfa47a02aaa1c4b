//! Integration tests for `cairn-storage`: one binary, one module per concern.

mod basic;
mod checkpoint;
mod concurrency;
mod corruption;
mod crash;
mod fixture;
mod model;
mod poison;
mod power_cut;
mod support;
mod system;
