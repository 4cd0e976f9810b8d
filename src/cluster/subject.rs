//! NATS subjects of the backplane.
//!
//! - `tw.md.<symbol>`: every message an origin produces for the symbol
//!   (header + protobuf, [`super::header`]). Edges subscribe only to the
//!   symbols their clients want, so NATS (and a leaf node at an edge site)
//!   carries only those.
//! - `tw.snap.<origin>.<symbol>`: snapshot requests (request/reply) to the
//!   origin that owns the symbol.
//! - `tw.hb.<origin>`: each origin's heartbeat, once a second ([`super::heartbeat`]).
//!
//! A symbol may hold `.` (PROTOCOL §1), the NATS token separator; in a
//! subject it is written `~`, a byte no symbol holds, so the mapping is
//! one-to-one and every subject stays one token per symbol.

use crate::book::symbol::is_valid_symbol;

pub const PREFIX: &str = "tw";

/// The subject every edge listens on for heartbeats.
pub const HEARTBEAT_WILDCARD: &str = "tw.hb.*";

/// `symbol` as one subject token.
pub fn token(symbol: &str) -> String {
    symbol.replace('.', "~")
}

/// The symbol a subject token names, if it is a valid one.
pub fn symbol_of_token(token: &str) -> Option<String> {
    let s = token.replace('~', ".");
    is_valid_symbol(&s).then_some(s)
}

pub fn data(symbol: &str) -> String {
    format!("{PREFIX}.md.{}", token(symbol))
}

/// The symbol of a data subject (`tw.md.<token>`).
pub fn symbol_of_data(subject: &str) -> Option<String> {
    symbol_of_token(subject.strip_prefix("tw.md.")?)
}

pub fn snapshot(origin: &str, symbol: &str) -> String {
    format!("{PREFIX}.snap.{origin}.{}", token(symbol))
}

/// What an origin subscribes to for its snapshot requests.
pub fn snapshot_wildcard(origin: &str) -> String {
    format!("{PREFIX}.snap.{origin}.*")
}

/// The symbol of a snapshot request subject of `origin`.
pub fn symbol_of_snapshot(origin: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix("tw.snap.")?.strip_prefix(origin)?;
    symbol_of_token(rest.strip_prefix('.')?)
}

pub fn heartbeat(origin: &str) -> String {
    format!("{PREFIX}.hb.{origin}")
}

/// An origin name: 1 to 32 bytes of `[A-Za-z0-9_-]` (one subject token).
pub fn is_valid_origin(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_map_to_one_token_and_back() {
        assert_eq!(data("BTC.USD"), "tw.md.BTC~USD");
        assert_eq!(symbol_of_data("tw.md.BTC~USD").as_deref(), Some("BTC.USD"));
        assert_eq!(
            symbol_of_data("tw.md.a:b/c-d_e").as_deref(),
            Some("a:b/c-d_e")
        );
        assert_eq!(symbol_of_data("tw.md."), None);
        assert_eq!(symbol_of_data("tw.md.a b"), None);
        assert_eq!(symbol_of_data("tw.hb.x"), None);
    }

    #[test]
    fn snapshot_subjects_name_the_origin() {
        let s = snapshot("venue-a", "ETH.USD");
        assert_eq!(s, "tw.snap.venue-a.ETH~USD");
        assert_eq!(
            symbol_of_snapshot("venue-a", &s).as_deref(),
            Some("ETH.USD")
        );
        assert_eq!(symbol_of_snapshot("venue-b", &s), None);
        assert_eq!(symbol_of_snapshot("venue", &s), None);
    }

    #[test]
    fn origin_names_are_single_tokens() {
        assert!(is_valid_origin("venue-a_1"));
        assert!(!is_valid_origin(""));
        assert!(!is_valid_origin("a.b"));
        assert!(!is_valid_origin("a*"));
        assert!(!is_valid_origin(&"x".repeat(33)));
    }
}
