//! Integration tests for `cairn-raft`: one binary, one module per concern.

mod cluster;
mod grpc;
mod net;
mod power_cut;
mod suite;
