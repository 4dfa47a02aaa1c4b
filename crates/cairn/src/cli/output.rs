//! How the CLI and the REPL show bytes and values: human output shows text as text and
//! escapes anything else; JSON output keeps bytes exact (UTF-8 text as a string, anything else
//! under a `*_base64` field).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

/// Bytes for a human: as text when valid UTF-8 without control characters, else escaped
/// (`\xNN`, `\n`, …) so the terminal shows exactly what is stored.
pub fn human(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => bytes.escape_ascii().to_string(),
    }
}

/// Insert `bytes` into a JSON object as `name` (UTF-8 text) or `name_base64` (anything else).
pub fn insert_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => object.insert(name.to_string(), Value::from(s)),
        Err(_) => object.insert(format!("{name}_base64"), Value::from(BASE64.encode(bytes))),
    };
}

/// Print one JSON value on its own line.
pub fn print_json(value: &Value) {
    println!("{value}");
}

/// Redis-style rounding of a remaining time to live to whole seconds.
pub fn ttl_secs(ttl: std::time::Duration) -> u64 {
    (ttl.as_millis() as u64).saturating_add(500) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_escapes_only_what_a_terminal_would_mangle() {
        assert_eq!(human(b"hello world"), "hello world");
        assert_eq!(human("héllo".as_bytes()), "héllo");
        assert_eq!(human(b"a\x00\xff"), "a\\x00\\xff");
        assert_eq!(human(b"a\nb"), "a\\nb");
    }

    #[test]
    fn json_keeps_bytes_exact() {
        let mut m = Map::new();
        insert_bytes(&mut m, "value", b"text");
        insert_bytes(&mut m, "key", b"\xff");
        assert_eq!(m["value"], "text");
        assert_eq!(m["key_base64"], "/w==");
    }
}
