//! Integration tests for `cairn-server`: one binary, one module per concern.

mod memory_network;
mod power_cut;
mod replica_power_cut;
