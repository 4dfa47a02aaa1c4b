//! cairn-client (under construction).
