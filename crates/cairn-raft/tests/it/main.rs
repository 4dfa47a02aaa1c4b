//! Integration tests for `cairn-raft`: one binary, one module per concern.

mod power_cut;
mod suite;
