//! Binary-safe decoding of URL parts. Keys travel percent-encoded in the path and in query
//! parameters; axum's extractors decode to `String` and would refuse non-UTF-8 bytes, so the raw
//! path and query are decoded here to bytes.

use bytes::Bytes;

/// Percent-decode `s` to bytes; with `plus_as_space`, `+` means a space (query strings).
/// `None` when a `%` is not followed by two hex digits.
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> Option<Bytes> {
    let raw = s.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hi = hex(*raw.get(i + 1)?)?;
                let lo = hex(*raw.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(Bytes::from(out))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Query parameters as `(name, raw bytes)` pairs, in order. A name without `=` has an empty
/// value (a flag such as `?if_absent`).
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, Bytes)>,
}

impl Query {
    /// Parse a raw query string (without the `?`); `Err` names the malformed parameter.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Query, String> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name, true)
                .and_then(|n| String::from_utf8(n.to_vec()).ok())
                .ok_or_else(|| format!("malformed query parameter name {name:?}"))?;
            let value = percent_decode(value, true)
                .ok_or_else(|| format!("malformed percent-encoding in query parameter {name}"))?;
            pairs.push((name, value));
        }
        Ok(Query { pairs })
    }

    /// The raw bytes of parameter `name` (the last one when repeated).
    pub(crate) fn bytes(&self, name: &str) -> Option<&Bytes> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Parameter `name` as UTF-8 text.
    pub(crate) fn text(&self, name: &str) -> Result<Option<&str>, String> {
        self.bytes(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| format!("query parameter {name} is not UTF-8"))
            })
            .transpose()
    }

    /// Parameter `name` as an unsigned integer.
    pub(crate) fn u64(&self, name: &str) -> Result<Option<u64>, String> {
        self.text(name)?
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("query parameter {name}={v:?} is not an unsigned integer"))
            })
            .transpose()
    }

    /// Parameter `name` as a flag: absent = false; present empty, `true` or `1` = true;
    /// `false` or `0` = false.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, String> {
        match self.text(name)? {
            None => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(format!("query parameter {name}={v:?} is not a boolean")),
        }
    }

    /// Names of the parameters present, for rejecting unknown ones.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_binary_safe() {
        assert_eq!(
            percent_decode("a%00%FFb", false).unwrap(),
            Bytes::from_static(b"a\x00\xffb")
        );
        assert_eq!(
            percent_decode("a+b", false).unwrap(),
            Bytes::from_static(b"a+b")
        );
        assert_eq!(
            percent_decode("a+b", true).unwrap(),
            Bytes::from_static(b"a b")
        );
        assert!(percent_decode("%4", false).is_none());
        assert!(percent_decode("%zz", false).is_none());
    }

    #[test]
    fn query_parses_flags_and_numbers() {
        let q = Query::parse(Some("if_absent&ttl_ms=5&prefix=%00a&x=false")).unwrap();
        assert!(q.flag("if_absent").unwrap());
        assert!(!q.flag("x").unwrap());
        assert!(!q.flag("missing").unwrap());
        assert_eq!(q.u64("ttl_ms").unwrap(), Some(5));
        assert_eq!(q.bytes("prefix").unwrap(), &Bytes::from_static(b"\x00a"));
        assert!(q.u64("prefix").is_err());
    }
}
