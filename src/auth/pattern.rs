//! Symbol patterns of the `tw.symbols` entitlement (PROTOCOL §8): `*`
//! matches any run of characters (the empty run too); every other character
//! matches itself. `["BTC-*","ETH-USD"]`.
//!
//! Pure and bounded. A pattern is compiled once, when its token is verified,
//! into literal segments; matching is one left-to-right pass that never
//! backtracks: the first segment is a prefix, the last a suffix, and each
//! middle segment is taken at its leftmost occurrence after the previous one
//! (for `*`-only globs the leftmost occurrence is always the right choice, so
//! no other needs trying). The caps below bound what one token can ask of it:
//! a symbol is at most 32 bytes, so one match costs at most
//! `32 × MAX_PATTERN_BYTES` byte comparisons, and a [`PatternSet`] at most
//! [`MAX_WILDCARD_PATTERNS`] of those plus one hash lookup.

use std::collections::HashSet;

/// Longest pattern accepted, bytes (a symbol is at most 32; a few `*` more).
pub const MAX_PATTERN_BYTES: usize = 40;
/// Most `*` in one pattern.
pub const MAX_STARS: usize = 4;
/// Most patterns (with and without `*`) in one set.
pub const MAX_PATTERNS: usize = 256;
/// Most patterns holding a `*` in one set: each costs a scan per symbol
/// checked, where literal names cost one shared hash lookup.
pub const MAX_WILDCARD_PATTERNS: usize = 16;

/// Why a pattern or a set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty symbol pattern")]
    Empty,
    #[error("symbol pattern longer than {MAX_PATTERN_BYTES} bytes")]
    TooLong,
    #[error("symbol pattern with more than {MAX_STARS} '*'")]
    TooManyStars,
    #[error("symbol pattern with a character outside [A-Za-z0-9._:/-*]")]
    BadCharacter,
    #[error("more than {MAX_PATTERNS} symbol patterns")]
    TooManyPatterns,
    #[error("more than {MAX_WILDCARD_PATTERNS} symbol patterns with '*'")]
    TooManyWildcards,
}

fn is_symbol_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-')
}

/// One compiled pattern holding at least one `*`: `prefix*mid₁*…*midₖ*suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    prefix: Box<str>,
    middle: Vec<Box<str>>,
    suffix: Box<str>,
}

impl Wildcard {
    /// Whether `s` matches. One pass, no backtracking (see the module doc).
    pub fn matches(&self, s: &str) -> bool {
        let s = s.as_bytes();
        let (prefix, suffix) = (self.prefix.as_bytes(), self.suffix.as_bytes());
        if s.len() < prefix.len() + suffix.len() || !s.starts_with(prefix) || !s.ends_with(suffix) {
            return false;
        }
        let mut rest = &s[prefix.len()..s.len() - suffix.len()];
        for seg in &self.middle {
            match find(rest, seg.as_bytes()) {
                Some(at) => rest = &rest[at + seg.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Leftmost occurrence of `needle` (non-empty) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A checked pattern: a literal symbol name, or a [`Wildcard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Literal(Box<str>),
    Wildcard(Wildcard),
}

impl Pattern {
    /// Checks and compiles one pattern (caps in the module doc). Consecutive
    /// `*` count as one.
    pub fn parse(p: &str) -> Result<Pattern, PatternError> {
        if p.is_empty() {
            return Err(PatternError::Empty);
        }
        if p.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong);
        }
        if !p.bytes().all(|b| b == b'*' || is_symbol_byte(b)) {
            return Err(PatternError::BadCharacter);
        }
        if p.bytes().filter(|&b| b == b'*').count() > MAX_STARS {
            return Err(PatternError::TooManyStars);
        }
        let mut parts = p.split('*');
        // `split` yields at least one item.
        let prefix = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        let Some((suffix, middle)) = rest.split_last() else {
            return Ok(Pattern::Literal(p.into()));
        };
        Ok(Pattern::Wildcard(Wildcard {
            prefix: prefix.into(),
            middle: middle
                .iter()
                .filter(|m| !m.is_empty())
                .map(|m| (*m).into())
                .collect(),
            suffix: (*suffix).into(),
        }))
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Literal(l) => **l == *s,
            Pattern::Wildcard(w) => w.matches(s),
        }
    }
}

/// The `symbols` entitlement: literal names in a set, wildcards scanned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatternSet {
    literals: HashSet<Box<str>>,
    wildcards: Vec<Wildcard>,
}

impl PatternSet {
    /// Checks and compiles a list of patterns (caps in the module doc).
    pub fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, PatternError> {
        let mut set = PatternSet::default();
        for (n, p) in patterns.into_iter().enumerate() {
            if n == MAX_PATTERNS {
                return Err(PatternError::TooManyPatterns);
            }
            match Pattern::parse(p)? {
                Pattern::Literal(l) => {
                    set.literals.insert(l);
                }
                Pattern::Wildcard(w) => {
                    if set.wildcards.len() == MAX_WILDCARD_PATTERNS {
                        return Err(PatternError::TooManyWildcards);
                    }
                    set.wildcards.push(w);
                }
            }
        }
        Ok(set)
    }

    /// Whether some pattern matches `symbol`.
    pub fn matches(&self, symbol: &str) -> bool {
        self.literals.contains(symbol) || self.wildcards.iter().any(|w| w.matches(symbol))
    }

    pub fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.wildcards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::parse(p).unwrap().matches(s)
    }

    #[test]
    fn protocol_examples() {
        assert!(m("BTC-*", "BTC-USD"));
        assert!(m("BTC-*", "BTC-"));
        assert!(!m("BTC-*", "ETH-BTC"));
        assert!(m("ETH-USD", "ETH-USD"));
        assert!(!m("ETH-USD", "ETH-USDT"));
        assert!(m("*", "ANYTHING"));
        assert!(m("*-USD", "SOL-USD"));
        assert!(!m("*-USD", "SOL-USDT"));
        assert!(m("*USD*", "USDT-BTC"));
        assert!(m("A*B*C", "ABC"));
        assert!(m("A*B*C", "AxxBxxBxxC"));
        assert!(!m("A*B*C", "AxxCxxB"));
        assert!(m("A**B", "AB"));
        // Prefix and suffix may not overlap.
        assert!(!m("AB*BA", "ABA"));
        assert!(m("AB*BA", "ABBA"));
        assert!(m("a*a*a*a", "aaaa"));
        assert!(!m("a*a*a*a", "aaa"));
    }

    /// The greedy leftmost rule against a naive recursive matcher, over
    /// every pattern and string of a small alphabet.
    #[test]
    fn agrees_with_a_naive_matcher() {
        fn naive(p: &[u8], s: &[u8]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((b'*', rest)) => (0..=s.len()).any(|i| naive(rest, &s[i..])),
                Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
            }
        }
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![vec![]];
            let mut frontier = vec![vec![]];
            for _ in 0..max {
                let mut next = Vec::new();
                for w in &frontier {
                    for &c in alphabet {
                        let mut w2: Vec<u8> = w.clone();
                        w2.push(c);
                        next.push(w2);
                    }
                }
                out.extend(next.iter().cloned());
                frontier = next;
            }
            out
        }
        let patterns = all(b"ab*", 5);
        let strings = all(b"ab", 6);
        for p in &patterns {
            let text = std::str::from_utf8(p).unwrap();
            let Ok(pat) = Pattern::parse(text) else {
                assert!(p.is_empty() || p.iter().filter(|&&b| b == b'*').count() > MAX_STARS);
                continue;
            };
            for s in &strings {
                let st = std::str::from_utf8(s).unwrap();
                assert_eq!(pat.matches(st), naive(p, s), "{text:?} on {st:?}");
            }
        }
    }

    #[test]
    fn expensive_or_odd_patterns_are_refused() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse(&"A".repeat(41)), Err(PatternError::TooLong));
        assert_eq!(Pattern::parse("*a*a*a*a*"), Err(PatternError::TooManyStars));
        assert_eq!(Pattern::parse("BTC USD"), Err(PatternError::BadCharacter));
        assert_eq!(Pattern::parse("BTC?"), Err(PatternError::BadCharacter));
        assert_eq!(Pattern::parse("é*"), Err(PatternError::BadCharacter));
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("S{i}")).collect();
        assert_eq!(
            PatternSet::parse(many.iter().map(String::as_str)),
            Err(PatternError::TooManyPatterns)
        );
        let wild: Vec<String> = (0..=MAX_WILDCARD_PATTERNS)
            .map(|i| format!("S{i}*"))
            .collect();
        assert_eq!(
            PatternSet::parse(wild.iter().map(String::as_str)),
            Err(PatternError::TooManyWildcards)
        );
    }

    /// The worst a token may ask: every wildcard pattern of the set is a
    /// near miss for every symbol of a 10,000-symbol request. Bounded work,
    /// not a blowup (a backtracking matcher is exponential in the stars).
    #[test]
    fn worst_case_set_is_cheap() {
        let wild: Vec<String> = (0..MAX_WILDCARD_PATTERNS)
            .map(|i| format!("a*a*a*a*{}", char::from(b'b' + (i % 20) as u8)))
            .collect();
        let set = PatternSet::parse(wild.iter().map(String::as_str)).unwrap();
        let symbol = "a".repeat(32);
        let start = std::time::Instant::now();
        let mut hits = 0;
        for _ in 0..10_000 {
            hits += usize::from(set.matches(std::hint::black_box(&symbol)));
        }
        assert_eq!(hits, 0);
        // Debug build on a busy 2-core machine: far below a second.
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn set_matches_literals_and_wildcards() {
        let set = PatternSet::parse(["BTC-*", "ETH-USD"]).unwrap();
        assert!(set.matches("BTC-USD"));
        assert!(set.matches("ETH-USD"));
        assert!(!set.matches("ETH-EUR"));
        assert!(!set.is_empty());
        assert!(PatternSet::parse([]).unwrap().is_empty());
    }
}
