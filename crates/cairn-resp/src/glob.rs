//! Redis glob patterns (`KEYS`, `SCAN MATCH`) with `stringmatchlen` semantics, in
//! O(pattern × string) time.
//!
//! Redis's matcher recurses at every `*` and needed a nesting limit to stop patterns such as
//! `a*a*a*a*…b` from taking exponential time. Every token other than `*` matches exactly one
//! byte, so it suffices to remember only the most recent `*` and retry from one byte further
//! on a mismatch (the classic two-pointer glob algorithm): at most pattern × string steps.
//!
//! Syntax, exactly as Redis parses it:
//! - `*` any run of bytes, `?` any one byte;
//! - `[abc]`, `[^abc]`, `[a-z]` (reversed ranges such as `[z-a]` work), `\x` inside a class
//!   matches `x` exactly; an unterminated class runs to the end of the pattern; `[a-]` is the
//!   range `a`..`]` (Redis quirk);
//! - `\x` matches `x` literally; a trailing `\` matches `\`;
//! - with `nocase`, ASCII letters compare case-insensitively (but not escaped bytes inside a
//!   class, as in Redis); bytes ≥ 0x80 compare as C's signed `char` in ranges.
//! - As in Redis, no pattern except the empty one matches the empty string (`*` does not;
//!   `KEYS *` special-cases it before matching).
//!
//! The one deliberate difference: Redis gives up (no match) when a match recurses through more
//! than 1000 stars; this matcher has no such cut-off.

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*` (runs of stars are collapsed).
    Star,
    /// `?`.
    Any,
    /// A byte that must match (case-folded under `nocase`).
    Literal(u8),
    /// `[...]`.
    Class {
        /// `[^...]`.
        negated: bool,
        /// Alternatives, any of which matches.
        items: Vec<ClassItem>,
    },
}

/// One alternative inside `[...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClassItem {
    /// `\x`: matches `x` exactly, even under `nocase`.
    Escaped(u8),
    /// `x`.
    Byte(u8),
    /// `a-z` with bounds as C signed chars, ordered `low <= high`.
    Range(i32, i32),
}

/// A compiled glob pattern: compile once, match many keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    nocase: bool,
}

/// C's `tolower` in the "C" locale, on a signed-char value.
fn lower(c: i32) -> i32 {
    if (i32::from(b'A')..=i32::from(b'Z')).contains(&c) {
        c + 32
    } else {
        c
    }
}

/// A byte as C's (signed) `char` widened to `int`.
fn signed(b: u8) -> i32 {
    i32::from(b as i8)
}

impl Pattern {
    /// Compiles `pattern`. Every byte string is a valid pattern.
    pub fn new(pattern: &[u8], nocase: bool) -> Pattern {
        let p = pattern;
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'[' => {
                    i += 1;
                    let negated = p.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut items = Vec::new();
                    // An unterminated class ends with the pattern.
                    while i < p.len() {
                        let rest = p.len() - i;
                        if p[i] == b'\\' && rest >= 2 {
                            items.push(ClassItem::Escaped(p[i + 1]));
                            i += 2;
                        } else if p[i] == b']' {
                            i += 1;
                            break;
                        } else if rest >= 3 && p[i + 1] == b'-' {
                            let (a, b) = (signed(p[i]), signed(p[i + 2]));
                            items.push(ClassItem::Range(a.min(b), a.max(b)));
                            i += 3;
                        } else {
                            items.push(ClassItem::Byte(p[i]));
                            i += 1;
                        }
                    }
                    tokens.push(Token::Class { negated, items });
                }
                b'\\' if p.len() - i >= 2 => {
                    tokens.push(Token::Literal(p[i + 1]));
                    i += 2;
                }
                other => {
                    tokens.push(Token::Literal(other));
                    i += 1;
                }
            }
        }
        Pattern { tokens, nocase }
    }

    fn token_matches(&self, token: &Token, c: u8) -> bool {
        match token {
            Token::Star => true,
            Token::Any => true,
            Token::Literal(b) => {
                if self.nocase {
                    lower(signed(*b)) == lower(signed(c))
                } else {
                    *b == c
                }
            }
            Token::Class { negated, items } => {
                let hit = items.iter().any(|item| match *item {
                    ClassItem::Escaped(b) => b == c,
                    ClassItem::Byte(b) => {
                        if self.nocase {
                            lower(signed(b)) == lower(signed(c))
                        } else {
                            b == c
                        }
                    }
                    ClassItem::Range(low, high) => {
                        let c = signed(c);
                        if self.nocase {
                            (lower(low)..=lower(high)).contains(&lower(c))
                        } else {
                            (low..=high).contains(&c)
                        }
                    }
                });
                hit != *negated
            }
        }
    }

    /// Whether `string` matches the whole pattern. Runs in O(pattern × string) steps.
    pub fn matches(&self, string: &[u8]) -> bool {
        if string.is_empty() {
            return self.tokens.is_empty();
        }
        let tokens = &self.tokens;
        let (mut t, mut i) = (0, 0);
        // After the last `*` seen: the token index after it, and where in `string` its match
        // currently ends.
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            if let Some(token) = tokens.get(t) {
                if *token == Token::Star {
                    backtrack = Some((t + 1, i));
                    t += 1;
                    continue;
                }
                if let Some(&c) = string.get(i) {
                    if self.token_matches(token, c) {
                        t += 1;
                        i += 1;
                        continue;
                    }
                }
            } else if i == string.len() {
                return true;
            }
            match backtrack {
                Some((after_star, star_end)) if star_end < string.len() => {
                    backtrack = Some((after_star, star_end + 1));
                    t = after_star;
                    i = star_end + 1;
                }
                _ => return false,
            }
        }
    }
}

/// Redis's `stringmatchlen(pattern, string, nocase)`; compile a [`Pattern`] instead when
/// matching many strings.
pub fn string_match(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    Pattern::new(pattern, nocase).matches(string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A line-by-line port of Redis 7's recursive `stringmatchlen_impl` (NUL-terminated
    /// pattern semantics emulated by `at`), used as the oracle. Nesting limit omitted.
    fn redis_match(p: &[u8], s: &[u8], nocase: bool) -> bool {
        fn at(x: &[u8], i: usize) -> u8 {
            x.get(i).copied().unwrap_or(0)
        }
        fn imp(
            p: &[u8],
            mut pi: usize,
            s: &[u8],
            mut si: usize,
            nocase: bool,
            skip: &mut bool,
        ) -> bool {
            let mut plen = p.len() - pi;
            let mut slen = s.len() - si;
            while plen > 0 && slen > 0 {
                match p[pi] {
                    b'*' => {
                        while plen > 0 && at(p, pi + 1) == b'*' {
                            pi += 1;
                            plen -= 1;
                        }
                        if plen == 1 {
                            return true;
                        }
                        while slen > 0 {
                            if imp(p, pi + 1, s, si, nocase, skip) {
                                return true;
                            }
                            if *skip {
                                return false;
                            }
                            si += 1;
                            slen -= 1;
                        }
                        *skip = true;
                        return false;
                    }
                    b'?' => {
                        si += 1;
                        slen -= 1;
                    }
                    b'[' => {
                        pi += 1;
                        plen -= 1;
                        let not = at(p, pi) == b'^';
                        if not {
                            pi += 1;
                            plen -= 1;
                        }
                        let mut matched = false;
                        loop {
                            if at(p, pi) == b'\\' && plen >= 2 {
                                pi += 1;
                                plen -= 1;
                                if p[pi] == s[si] {
                                    matched = true;
                                }
                            } else if plen > 0 && p[pi] == b']' {
                                break;
                            } else if plen == 0 {
                                pi -= 1;
                                plen += 1;
                                break;
                            } else if plen >= 3 && p[pi + 1] == b'-' {
                                let (mut a, mut b) = (signed(p[pi]), signed(p[pi + 2]));
                                let mut c = signed(s[si]);
                                if a > b {
                                    std::mem::swap(&mut a, &mut b);
                                }
                                if nocase {
                                    a = lower(a);
                                    b = lower(b);
                                    c = lower(c);
                                }
                                pi += 2;
                                plen -= 2;
                                if c >= a && c <= b {
                                    matched = true;
                                }
                            } else if !nocase {
                                if p[pi] == s[si] {
                                    matched = true;
                                }
                            } else if lower(signed(p[pi])) == lower(signed(s[si])) {
                                matched = true;
                            }
                            pi += 1;
                            plen -= 1;
                        }
                        if not {
                            matched = !matched;
                        }
                        if !matched {
                            return false;
                        }
                        si += 1;
                        slen -= 1;
                    }
                    c => {
                        let mut c = c;
                        if c == b'\\' && plen >= 2 {
                            pi += 1;
                            plen -= 1;
                            c = p[pi];
                        }
                        let eq = if nocase {
                            lower(signed(c)) == lower(signed(s[si]))
                        } else {
                            c == s[si]
                        };
                        if !eq {
                            return false;
                        }
                        si += 1;
                        slen -= 1;
                    }
                }
                pi += 1;
                plen -= 1;
                if slen == 0 {
                    while at(p, pi) == b'*' && plen > 0 {
                        pi += 1;
                        plen -= 1;
                    }
                    break;
                }
            }
            plen == 0 && slen == 0
        }
        let mut skip = false;
        imp(p, 0, s, 0, nocase, &mut skip)
    }

    #[test]
    fn redis_examples() {
        let cases: &[(&str, &str, bool)] = &[
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*", "", false),
            ("", "", true),
            ("a*", "a", true),
            ("*a", "a", true),
            ("user:*", "user:42", true),
            ("[abc", "b", true),
            ("[a-]", "]", true),
            ("\\", "\\", true),
            ("*?*", "x", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(
                string_match(p.as_bytes(), s.as_bytes(), false),
                *want,
                "{p} ~ {s}"
            );
            assert_eq!(
                redis_match(p.as_bytes(), s.as_bytes(), false),
                *want,
                "oracle {p} ~ {s}"
            );
        }
        assert!(string_match(b"HELLO*", b"hello world", true));
        assert!(string_match(b"[A-C]x", b"bX", true));
        assert!(!string_match(b"[\\A]", b"a", true));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        // Exponential for a naive recursive matcher.
        let pattern = format!("{}b", "a*".repeat(64));
        let string = "a".repeat(20_000);
        let started = std::time::Instant::now();
        assert!(!string_match(pattern.as_bytes(), string.as_bytes(), false));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    fn alphabet() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![
                b'a', b'b', b'A', b'*', b'?', b'[', b']', b'^', b'-', b'\\', 0xe9, b'z',
            ]),
            0..10,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn agrees_with_redis(p in alphabet(), s in alphabet(), nocase: bool) {
            prop_assert_eq!(string_match(&p, &s, nocase), redis_match(&p, &s, nocase),
                "pattern {:?} string {:?}", String::from_utf8_lossy(&p), String::from_utf8_lossy(&s));
        }
    }
}
