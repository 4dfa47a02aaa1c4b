//! Integration tests for `cairn-storage`: one binary, one module per concern.

mod basic;
mod support;
