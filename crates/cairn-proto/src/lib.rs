//! cairn-proto (under construction).
