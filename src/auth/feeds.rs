//! Ingest tokens (PROTOCOL §3 `Hello.token`): one shared `--token`, or a
//! token file giving each feed its own, so that one leaked token is revoked
//! by editing one line and sending SIGHUP, without touching the other feeds.
//!
//! # The token file (`--ingest-token-file`)
//!
//! ```text
//! # feed name   token
//! coinbase-1    3f8a1c…
//! binance-1     77d02e…
//! ```
//!
//! One feed per line: its name (1 to 64 bytes of `[A-Za-z0-9._:-]`), then
//! whitespace, then its token (16 to 1024 bytes, no whitespace). Blank lines
//! and lines starting with `#` are ignored. Names and tokens are unique.
//! A feed presenting a token is that feed: its `Hello.feed_id` must be empty
//! or the same name.
//!
//! Pure: the ingest thread hands it the bytes read from the file. Tokens are
//! compared without an early exit, against every entry, so the time of a
//! check says nothing about which bytes matched. Never prints a token (its
//! `Debug` lists the feed names).

use std::sync::Arc;

/// Most entries in a token file.
pub const MAX_FEED_TOKENS: usize = 10_000;
const MIN_TOKEN_BYTES: usize = 16;
const MAX_TOKEN_BYTES: usize = 1024;
const MAX_NAME_BYTES: usize = 64;

/// A token file that cannot be used: which line and why (never its text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token file line {line}: {why}")]
pub struct TokenFileError {
    pub line: usize,
    pub why: &'static str,
}

/// How feeds are authenticated.
#[derive(Clone)]
pub enum FeedTokens {
    /// `--token`: every feed presents the same token.
    Shared(Arc<str>),
    /// `--ingest-token-file`: each feed its own.
    PerFeed(Vec<(Arc<str>, Box<[u8]>)>),
}

/// Names only.
impl std::fmt::Debug for FeedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedTokens::Shared(_) => f.write_str("Shared(<redacted>)"),
            FeedTokens::PerFeed(list) => f
                .debug_tuple("PerFeed")
                .field(&list.iter().map(|(n, _)| &**n).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Who a presented token says the feed is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedIdentity {
    /// The shared token: the feed names itself in its Hello.
    Shared,
    /// A token of the file: this feed.
    Named(Arc<str>),
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Compares two byte strings in time that depends only on `expected`'s length.
pub fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

impl FeedTokens {
    /// Parses a token file (see the module doc).
    pub fn parse_file(text: &[u8]) -> Result<FeedTokens, TokenFileError> {
        let text = std::str::from_utf8(text).map_err(|_| TokenFileError {
            line: 0,
            why: "not UTF-8",
        })?;
        let mut list: Vec<(Arc<str>, Box<[u8]>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why| TokenFileError { line, why };
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut parts = l.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("expected a feed name and a token"));
            };
            if name.len() > MAX_NAME_BYTES || !name.bytes().all(is_name_byte) {
                return Err(err("feed name must be 1 to 64 of [A-Za-z0-9._:-]"));
            }
            if token.len() < MIN_TOKEN_BYTES || token.len() > MAX_TOKEN_BYTES {
                return Err(err("token must be 16 to 1024 bytes"));
            }
            if list.len() == MAX_FEED_TOKENS {
                return Err(err("more than 10000 feeds"));
            }
            if list.iter().any(|(n, _)| **n == *name) {
                return Err(err("feed name listed twice"));
            }
            if list.iter().any(|(_, t)| **t == *token.as_bytes()) {
                return Err(err("token listed twice"));
            }
            list.push((Arc::from(name), token.as_bytes().into()));
        }
        Ok(FeedTokens::PerFeed(list))
    }

    /// Checks a Hello: `Some` identity when `token` is valid (and, with a
    /// token file, `feed_id` is empty or the name the token is for).
    pub fn check(&self, token: &str, feed_id: &str) -> Option<FeedIdentity> {
        match self {
            FeedTokens::Shared(t) => {
                constant_time_eq(t.as_bytes(), token.as_bytes()).then_some(FeedIdentity::Shared)
            }
            FeedTokens::PerFeed(list) => {
                // Every entry is compared (no early exit on a match).
                let mut found: Option<&Arc<str>> = None;
                for (name, t) in list {
                    if constant_time_eq(t, token.as_bytes()) {
                        found = Some(name);
                    }
                }
                let name = found?;
                (feed_id.is_empty() || feed_id == &**name)
                    .then(|| FeedIdentity::Named(name.clone()))
            }
        }
    }

    /// Whether a feed admitted as `who` with `token` is still admitted
    /// (after a reload of the file: a revoked token's feed is closed).
    pub fn still_valid(&self, token: &str, who: &FeedIdentity) -> bool {
        let name = match who {
            FeedIdentity::Shared => "",
            FeedIdentity::Named(n) => n,
        };
        self.check(token, name).as_ref() == Some(who)
    }

    /// Feeds in the file (1 for a shared token).
    pub fn len(&self) -> usize {
        match self {
            FeedTokens::Shared(_) => 1,
            FeedTokens::PerFeed(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "# feeds\n\ncoinbase-1   aaaaaaaaaaaaaaaa1\n  binance-1\tbbbbbbbbbbbbbbbb2  \n";

    #[test]
    fn parses_and_checks() {
        let t = FeedTokens::parse_file(FILE.as_bytes()).unwrap();
        assert_eq!(t.len(), 2);
        let cb = FeedIdentity::Named(Arc::from("coinbase-1"));
        assert_eq!(t.check("aaaaaaaaaaaaaaaa1", ""), Some(cb.clone()));
        assert_eq!(t.check("aaaaaaaaaaaaaaaa1", "coinbase-1"), Some(cb.clone()));
        assert_eq!(
            t.check("aaaaaaaaaaaaaaaa1", "binance-1"),
            None,
            "another feed's name"
        );
        assert_eq!(t.check("aaaaaaaaaaaaaaaa", ""), None);
        assert_eq!(t.check("", ""), None);
        assert!(t.check("bbbbbbbbbbbbbbbb2", "binance-1").is_some());
        assert!(t.still_valid("aaaaaaaaaaaaaaaa1", &cb));
        // Revoked: the line is gone from the reloaded file.
        let reloaded = FeedTokens::parse_file(b"binance-1 bbbbbbbbbbbbbbbb2\n").unwrap();
        assert!(!reloaded.still_valid("aaaaaaaaaaaaaaaa1", &cb));
        let shown = format!("{t:?}");
        assert!(
            shown.contains("coinbase-1") && !shown.contains("aaaa"),
            "{shown}"
        );
        let shared = FeedTokens::Shared(Arc::from("s3cret"));
        assert_eq!(shared.check("s3cret", "any"), Some(FeedIdentity::Shared));
        assert_eq!(shared.check("s3cre", "any"), None);
        assert!(!format!("{shared:?}").contains("s3cret"));
    }

    #[test]
    fn bad_files_name_the_line_not_the_token() {
        for (text, line) in [
            ("a\n", 1),
            ("# c\nfeed short\n", 2),
            ("feed aaaaaaaaaaaaaaaa1 extra\n", 1),
            ("bad/name aaaaaaaaaaaaaaaa1\n", 1),
            ("a aaaaaaaaaaaaaaaa1\na bbbbbbbbbbbbbbbb1\n", 2),
            ("a aaaaaaaaaaaaaaaa1\nb aaaaaaaaaaaaaaaa1\n", 2),
        ] {
            let e = FeedTokens::parse_file(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(!e.to_string().contains("aaaa"));
        }
        assert!(FeedTokens::parse_file(b"\xff").is_err());
        assert!(FeedTokens::parse_file(b"").unwrap().is_empty());
    }

    #[test]
    fn comparison_has_no_early_exit_semantics() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
