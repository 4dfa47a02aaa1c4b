//! Integration tests for `cairn-server`: one binary, one module per concern.

mod power_cut;
