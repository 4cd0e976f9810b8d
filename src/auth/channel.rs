//! Channel names of PROTOCOL §9 as the entitlement check sees them: `book`,
//! `book.N` (1 ≤ N ≤ 100), `book@Tms` and `book.N@Tms` (T one of
//! `book::derived::Interval::ALL`), `trades`. Pure. Parsed by the one §9
//! grammar, [`book::derived::Channel::parse`](crate::book::derived::Channel::parse).
//!
//! The engine's request parser decides which channels it serves (today `book`
//! and `trades`); this module only says what an entitlement allows, for every
//! name §9 defines, so the check stays right as the variants arrive.
//!
//! # What an entitlement's channel list allows
//!
//! An entry allows its own channel and every coarser view of the same book:
//! `book.10@1000ms` allows `book.5@1000ms` and `book.10@5000ms`, not `book.20`
//! nor `book.10@100ms`. `book` (full depth, real time) allows every book
//! variant. `trades` allows `trades`.

use crate::book::derived::{Channel, Depth};

/// Largest N of `book.N`.
pub const MAX_BOOK_DEPTH: u32 = Depth::MAX.get() as u32;

/// A channel name of §9, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelSpec {
    /// `book`, `book.N`, `book@Tms`, `book.N@Tms`. `depth: None` is full
    /// depth; `interval_ms: 0` is real time (every delta).
    Book {
        depth: Option<u32>,
        interval_ms: u32,
    },
    Trades,
}

impl ChannelSpec {
    /// `book`: full depth, real time.
    pub const BOOK: ChannelSpec = ChannelSpec::Book {
        depth: None,
        interval_ms: 0,
    };

    /// Parses a §9 name; `None` for anything else (a `bad_request`).
    pub fn parse(name: &str) -> Option<ChannelSpec> {
        Some(match Channel::parse(name).ok()? {
            Channel::Trades => ChannelSpec::Trades,
            Channel::Book { depth, interval } => ChannelSpec::Book {
                depth: depth.map(|d| d.get() as u32),
                interval_ms: interval.map_or(0, |i| i.ms()),
            },
        })
    }

    /// Whether an entitlement entry `self` allows `requested` (see the module doc).
    pub fn covers(self, requested: ChannelSpec) -> bool {
        match (self, requested) {
            (ChannelSpec::Trades, ChannelSpec::Trades) => true,
            (
                ChannelSpec::Book {
                    depth: granted_depth,
                    interval_ms: granted_interval,
                },
                ChannelSpec::Book { depth, interval_ms },
            ) => {
                let depth_ok = match (granted_depth, depth) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(g), Some(d)) => d <= g,
                };
                depth_ok && interval_ms >= granted_interval
            }
            _ => false,
        }
    }

    /// The canonical name (`book.10@1000ms`).
    pub fn name(self) -> String {
        match self {
            ChannelSpec::Trades => "trades".into(),
            ChannelSpec::Book { depth, interval_ms } => {
                let mut s = String::from("book");
                if let Some(d) = depth {
                    s.push_str(&format!(".{d}"));
                }
                if interval_ms > 0 {
                    s.push_str(&format!("@{interval_ms}ms"));
                }
                s
            }
        }
    }
}

/// Plain decimal digits, no sign, no leading zero (`"010"` is not a name §9 defines).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::derived::Interval;

    fn p(s: &str) -> ChannelSpec {
        ChannelSpec::parse(s).unwrap_or_else(|| panic!("{s:?} should parse"))
    }

    #[test]
    fn parses_every_name_of_section_9() {
        assert_eq!(p("book"), ChannelSpec::BOOK);
        assert_eq!(p("trades"), ChannelSpec::Trades);
        assert_eq!(
            p("book.10"),
            ChannelSpec::Book {
                depth: Some(10),
                interval_ms: 0
            }
        );
        assert_eq!(
            p("book@100ms"),
            ChannelSpec::Book {
                depth: None,
                interval_ms: 100
            }
        );
        assert_eq!(
            p("book.10@1000ms"),
            ChannelSpec::Book {
                depth: Some(10),
                interval_ms: 1000
            }
        );
        for n in 1..=100 {
            assert_eq!(p(&format!("book.{n}")).name(), format!("book.{n}"));
            for t in Interval::ALL.map(Interval::ms) {
                let name = format!("book.{n}@{t}ms");
                assert_eq!(p(&name).name(), name);
            }
        }
        for t in Interval::ALL.map(Interval::ms) {
            assert_eq!(p(&format!("book@{t}ms")).name(), format!("book@{t}ms"));
        }
    }

    #[test]
    fn refuses_what_section_9_does_not_define() {
        for bad in [
            "",
            "books",
            "book.",
            "book.0",
            "book.101",
            "book.010",
            "book.-1",
            "book.+5",
            "book@",
            "book@100",
            "book@30ms",
            "book@0ms",
            "book@100ms@100ms",
            "book.10@",
            "book.10@1000",
            "book.10@1000msx",
            "BOOK",
            "trade",
            "trades.10",
            "book.99999999999999999999",
            "book.１０",
        ] {
            assert_eq!(ChannelSpec::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_entry_covers_coarser_views_only() {
        let g = p("book.10@1000ms");
        assert!(g.covers(p("book.10@1000ms")));
        assert!(g.covers(p("book.5@1000ms")));
        assert!(g.covers(p("book.10@5000ms")));
        assert!(g.covers(p("book.1@2000ms")));
        assert!(!g.covers(p("book.20@1000ms")));
        assert!(!g.covers(p("book.10@500ms")));
        assert!(!g.covers(p("book.10")));
        assert!(!g.covers(p("book@1000ms")));
        assert!(!g.covers(p("book")));
        assert!(!g.covers(p("trades")));
        // `book` counts as unlimited depth and interval 0: it covers everything of the book.
        let full = p("book");
        for r in ["book", "book.1", "book@20ms", "book.100@5000ms"] {
            assert!(full.covers(p(r)), "{r}");
        }
        assert!(!full.covers(p("trades")));
        assert!(p("trades").covers(p("trades")));
        assert!(!p("trades").covers(p("book")));
        assert!(p("book.10").covers(p("book.10@50ms")));
        assert!(p("book@100ms").covers(p("book.3@100ms")));
        assert!(!p("book@100ms").covers(p("book.3@50ms")));
    }
}
