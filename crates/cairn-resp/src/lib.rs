//! cairn-resp (under construction).
