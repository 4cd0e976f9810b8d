//! Channel names (PROTOCOL §9): `book`, `book.N`, `book@Tms`, `book.N@Tms`
//! and `trades`, parsed into a [`Channel`] value and rendered back.
//!
//! Owns nothing; pure functions over names. Run by workers (client requests)
//! and by the market thread (the `channel` field of derived book messages).
//! Never allocates, never panics: it sees raw peer input.
//!
//! # The grammar, strictly
//!
//! ```text
//! channel  = "trades" | "book" [ "." depth ] [ "@" interval "ms" ]
//! depth    = 1..=100, decimal, no leading zero
//! interval = 20 | 50 | 100 | 250 | 500 | 1000 | 2000 | 5000, decimal, no leading zero
//! ```
//!
//! Exactly these bytes: lowercase, no whitespace anywhere, no sign, no
//! leading zero (`book.05`, `book@050ms` are errors: one name per channel,
//! so that two clients asking for the same channel share one stream), no other
//! unit than `ms` (`book@1s` is an error), nothing after `ms`. The empty
//! string is an error here: `""` meaning `book` is a convention of the
//! protobuf `channel` field of server messages, not a name a client sends.
//! Any input longer than the longest valid name ([`MAX_CHANNEL_NAME_BYTES`])
//! is rejected before it is read, so huge numbers cost nothing.

use std::fmt;

/// The longest valid channel name: `book.100@5000ms`.
pub const MAX_CHANNEL_NAME_BYTES: usize = 15;

/// Levels per side of a depth-limited book (`book.N`), 1 ≤ N ≤ 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Depth(u8);

impl Depth {
    /// The deepest `book.N` (PROTOCOL §9).
    pub const MAX: Depth = Depth(100);

    /// `Some` for 1 ≤ `n` ≤ 100.
    pub const fn new(n: usize) -> Option<Depth> {
        if n >= 1 && n <= Depth::MAX.0 as usize {
            Some(Depth(n as u8))
        } else {
            None
        }
    }

    /// The number of levels per side.
    pub const fn get(self) -> usize {
        self.0 as usize
    }
}

/// A conflation interval (`@Tms`), one of the eight of PROTOCOL §9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    Ms20,
    Ms50,
    Ms100,
    Ms250,
    Ms500,
    Ms1000,
    Ms2000,
    Ms5000,
}

impl Interval {
    /// Every interval, shortest first.
    pub const ALL: [Interval; 8] = [
        Interval::Ms20,
        Interval::Ms50,
        Interval::Ms100,
        Interval::Ms250,
        Interval::Ms500,
        Interval::Ms1000,
        Interval::Ms2000,
        Interval::Ms5000,
    ];

    /// The interval in milliseconds.
    pub const fn ms(self) -> u32 {
        match self {
            Interval::Ms20 => 20,
            Interval::Ms50 => 50,
            Interval::Ms100 => 100,
            Interval::Ms250 => 250,
            Interval::Ms500 => 500,
            Interval::Ms1000 => 1000,
            Interval::Ms2000 => 2000,
            Interval::Ms5000 => 5000,
        }
    }

    /// The interval in nanoseconds.
    pub const fn ns(self) -> u64 {
        self.ms() as u64 * 1_000_000
    }

    /// The interval of exactly `ms` milliseconds, if it is one of the eight.
    pub const fn from_ms(ms: u32) -> Option<Interval> {
        Some(match ms {
            20 => Interval::Ms20,
            50 => Interval::Ms50,
            100 => Interval::Ms100,
            250 => Interval::Ms250,
            500 => Interval::Ms500,
            1000 => Interval::Ms1000,
            2000 => Interval::Ms2000,
            5000 => Interval::Ms5000,
            _ => return None,
        })
    }
}

/// A subscription channel of PROTOCOL §9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A book: full depth when `depth` is `None`, every delta when `interval`
    /// is `None`. `Book { depth: None, interval: None }` is plain `book`.
    Book {
        depth: Option<Depth>,
        interval: Option<Interval>,
    },
    /// The symbol's trades.
    Trades,
}

/// Why a name is not a channel. Every variant is a `bad_request` (PROTOCOL §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("unknown channel (book, book.N, book@Tms, book.N@Tms or trades)")]
    Unknown,
    #[error("book depth must be 1 to 100, written without leading zeros")]
    Depth,
    #[error("conflation interval must be 20, 50, 100, 250, 500, 1000, 2000 or 5000 ms")]
    Interval,
}

impl Channel {
    /// Plain `book`: full depth, every delta.
    pub const BOOK: Channel = Channel::Book {
        depth: None,
        interval: None,
    };

    /// Parses a channel name; see the module doc for the exact grammar.
    pub fn parse(name: &str) -> Result<Channel, ChannelError> {
        let b = name.as_bytes();
        if b.len() > MAX_CHANNEL_NAME_BYTES {
            return Err(ChannelError::Unknown);
        }
        if b == b"trades" {
            return Ok(Channel::Trades);
        }
        let Some(mut rest) = b.strip_prefix(b"book") else {
            return Err(ChannelError::Unknown);
        };
        let mut depth = None;
        if let Some(r) = rest.strip_prefix(b".") {
            let end = r.iter().position(|&c| c == b'@').unwrap_or(r.len());
            let (digits, after) = r.split_at(end);
            let n = parse_decimal(digits, 3).ok_or(ChannelError::Depth)?;
            depth = Some(Depth::new(n as usize).ok_or(ChannelError::Depth)?);
            rest = after;
        }
        let mut interval = None;
        if let Some(r) = rest.strip_prefix(b"@") {
            let digits = r.strip_suffix(b"ms").ok_or(ChannelError::Interval)?;
            let ms = parse_decimal(digits, 4).ok_or(ChannelError::Interval)?;
            interval = Some(Interval::from_ms(ms).ok_or(ChannelError::Interval)?);
            rest = &[];
        }
        if !rest.is_empty() {
            return Err(ChannelError::Unknown);
        }
        Ok(Channel::Book { depth, interval })
    }

    /// `true` for every `book` variant.
    pub fn is_book(self) -> bool {
        matches!(self, Channel::Book { .. })
    }

    /// `true` for a variant computed from the full book (`book.N`, `@Tms`):
    /// what a [`BookView`](super::BookView) serves.
    pub fn is_derived_book(self) -> bool {
        matches!(self, Channel::Book { depth, interval } if depth.is_some() || interval.is_some())
    }

    /// The depth of a `book.N` variant.
    pub fn depth(self) -> Option<Depth> {
        match self {
            Channel::Book { depth, .. } => depth,
            Channel::Trades => None,
        }
    }

    /// The interval of an `@Tms` variant.
    pub fn interval(self) -> Option<Interval> {
        match self {
            Channel::Book { interval, .. } => interval,
            Channel::Trades => None,
        }
    }

    /// The canonical name, without allocating.
    pub fn name(self) -> ChannelName {
        let mut out = ChannelName {
            buf: [0; MAX_CHANNEL_NAME_BYTES],
            len: 0,
        };
        match self {
            Channel::Trades => out.push(b"trades"),
            Channel::Book { depth, interval } => {
                out.push(b"book");
                if let Some(d) = depth {
                    out.push(b".");
                    out.push_decimal(d.get() as u32);
                }
                if let Some(i) = interval {
                    out.push(b"@");
                    out.push_decimal(i.ms());
                    out.push(b"ms");
                }
            }
        }
        out
    }
}

impl std::str::FromStr for Channel {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Channel, ChannelError> {
        Channel::parse(s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().as_str())
    }
}

/// A channel's canonical name in an inline buffer (see [`Channel::name`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelName {
    buf: [u8; MAX_CHANNEL_NAME_BYTES],
    len: u8,
}

impl ChannelName {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever pushed (literals and decimal digits), so the
        // prefix is valid UTF-8; the fallback is unreachable.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }

    /// Appends ASCII bytes; the longest name fits the buffer exactly.
    fn push(&mut self, bytes: &[u8]) {
        let start = self.len as usize;
        let end = (start + bytes.len()).min(MAX_CHANNEL_NAME_BYTES);
        self.buf[start..end].copy_from_slice(&bytes[..end - start]);
        self.len = end as u8;
    }

    fn push_decimal(&mut self, n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decimal of 1 to `max_len` ASCII digits without a leading zero.
fn parse_decimal(digits: &[u8], max_len: usize) -> Option<u32> {
    if digits.is_empty() || digits.len() > max_len || digits[0] == b'0' {
        return None;
    }
    let mut n: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        // At most 4 digits: no overflow.
        n = n * 10 + u32::from(d - b'0');
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn book(depth: Option<usize>, interval: Option<u32>) -> Channel {
        Channel::Book {
            depth: depth.map(|n| Depth::new(n).unwrap()),
            interval: interval.map(|ms| Interval::from_ms(ms).unwrap()),
        }
    }

    /// Every valid channel: 1 + 100 + 8 + 800 books, and trades.
    fn all_channels() -> Vec<Channel> {
        let depths = std::iter::once(None).chain((1..=100).map(Some));
        let mut all = vec![Channel::Trades];
        for d in depths {
            for i in std::iter::once(None).chain(Interval::ALL.iter().map(|i| Some(i.ms()))) {
                all.push(book(d, i));
            }
        }
        all
    }

    #[test]
    fn the_examples_of_the_protocol() {
        assert_eq!(Channel::parse("book"), Ok(Channel::BOOK));
        assert_eq!(Channel::parse("trades"), Ok(Channel::Trades));
        assert_eq!(Channel::parse("book.10"), Ok(book(Some(10), None)));
        assert_eq!(Channel::parse("book@100ms"), Ok(book(None, Some(100))));
        assert_eq!(
            Channel::parse("book.10@100ms"),
            Ok(book(Some(10), Some(100)))
        );
        assert_eq!(Channel::parse("book.1"), Ok(book(Some(1), None)));
        assert_eq!(Channel::parse("book.100"), Ok(book(Some(100), None)));
        assert_eq!(
            Channel::parse("book.100@5000ms"),
            Ok(book(Some(100), Some(5000)))
        );
        assert_eq!(
            Channel::parse("book.100@5000ms")
                .unwrap()
                .name()
                .as_str()
                .len(),
            MAX_CHANNEL_NAME_BYTES
        );
        for ms in [20, 50, 100, 250, 500, 1000, 2000, 5000] {
            assert_eq!(
                Channel::parse(&format!("book@{ms}ms")),
                Ok(book(None, Some(ms)))
            );
        }
    }

    #[test]
    fn bad_depths() {
        for name in [
            "book.0",
            "book.101",
            "book.1000",
            "book.",
            "book.@100ms",
            "book.05",
            "book.010",
            "book.00",
            "book.+5",
            "book.-5",
            "book. 5",
            "book.5 ",
            "book.1e1",
            "book.x",
            "book.99999999999999999999",
            "book.18446744073709551617",
            "book.٣",
        ] {
            assert!(Channel::parse(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(Channel::parse("book.0"), Err(ChannelError::Depth));
        assert_eq!(Channel::parse("book.101"), Err(ChannelError::Depth));
        assert_eq!(Channel::parse("book.05"), Err(ChannelError::Depth));
        assert_eq!(Channel::parse("book.+5"), Err(ChannelError::Depth));
        assert_eq!(Channel::parse("book.5 "), Err(ChannelError::Depth));
        assert_eq!(Channel::parse("book."), Err(ChannelError::Depth));
    }

    #[test]
    fn bad_intervals() {
        for name in [
            "book@7ms",
            "book.5@",
            "book@",
            "book@ms",
            "book@100",
            "book@100s",
            "book@1s",
            "book@100MS",
            "book@100ms ",
            "book@ 100ms",
            "book@+100ms",
            "book@0100ms",
            "book@020ms",
            "book@0ms",
            "book@10000ms",
            "book@100msms",
            "book.10@100ms@1s",
            "book@100ms@100ms",
            "book.10@99999999999999999999ms",
            "book.5@250.0ms",
        ] {
            assert!(Channel::parse(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(Channel::parse("book@7ms"), Err(ChannelError::Interval));
        assert_eq!(Channel::parse("book.5@"), Err(ChannelError::Interval));
        // Longer than any channel name: rejected before it is read.
        assert_eq!(
            Channel::parse("book.10@100ms@1s"),
            Err(ChannelError::Unknown)
        );
        assert_eq!(Channel::parse("book@100ms@1s"), Err(ChannelError::Interval));
        assert_eq!(Channel::parse("book@0100ms"), Err(ChannelError::Interval));
    }

    #[test]
    fn unknown_names() {
        for name in [
            "",
            " book",
            "book ",
            "Book",
            "BOOK",
            "books",
            "book10",
            "book_10",
            "book.10.5",
            "book@100ms.10",
            "trade",
            "trades ",
            "Trades",
            "trades.10",
            "trades@100ms",
            "quotes",
            "book\0",
            "book\n",
            "bookbookbookbookbook",
        ] {
            assert!(Channel::parse(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(Channel::parse("book.10.5"), Err(ChannelError::Depth));
        assert_eq!(Channel::parse("book@100ms.10"), Err(ChannelError::Interval));
        assert_eq!(Channel::parse("books"), Err(ChannelError::Unknown));
        assert_eq!(Channel::parse(""), Err(ChannelError::Unknown));
    }

    #[test]
    fn huge_inputs_are_rejected_unread() {
        let long = format!("book.{}", "9".repeat(1 << 20));
        assert_eq!(Channel::parse(&long), Err(ChannelError::Unknown));
        let long = format!("book@{}ms", "1".repeat(100));
        assert_eq!(Channel::parse(&long), Err(ChannelError::Unknown));
    }

    #[test]
    fn every_valid_channel_round_trips() {
        let all = all_channels();
        assert_eq!(all.len(), 1 + 909);
        for c in all {
            let name = c.to_string();
            assert_eq!(name, c.name().as_str());
            assert!(name.len() <= MAX_CHANNEL_NAME_BYTES);
            assert_eq!(Channel::parse(&name), Ok(c), "{name}");
            assert_eq!(name.parse::<Channel>(), Ok(c));
            assert_eq!(c.is_derived_book(), c.is_book() && c != Channel::BOOK);
        }
    }

    #[test]
    fn exactly_the_valid_numbers_are_accepted() {
        for n in 0..=1_100u32 {
            let ok = (1..=100).contains(&n);
            assert_eq!(Channel::parse(&format!("book.{n}")).is_ok(), ok, "{n}");
        }
        let valid = [20, 50, 100, 250, 500, 1000, 2000, 5000];
        for ms in 0..=10_000u32 {
            let ok = valid.contains(&ms);
            assert_eq!(Channel::parse(&format!("book@{ms}ms")).is_ok(), ok, "{ms}");
            assert_eq!(
                Channel::parse(&format!("book.7@{ms}ms")).is_ok(),
                ok,
                "{ms}"
            );
        }
    }

    fn any_channel() -> impl Strategy<Value = Channel> {
        prop::sample::select(all_channels())
    }

    proptest! {
        #[test]
        fn parse_display_round_trips(c in any_channel()) {
            prop_assert_eq!(Channel::parse(&c.to_string()), Ok(c));
        }

        #[test]
        fn random_strings_never_panic(s in ".{0,40}") {
            let _ = Channel::parse(&s);
        }

        #[test]
        fn near_misses_never_panic_and_accepted_ones_are_canonical(
            s in "(book|trades|Book|boo)?(\\.[0-9+ -]{0,5})?(@[0-9+ ]{0,6}(ms|s|MS)?)?[@. a]{0,2}"
        ) {
            if let Ok(c) = Channel::parse(&s) {
                // One name per channel: whatever is accepted is the canonical name.
                prop_assert_eq!(c.to_string(), s);
            }
        }
    }
}
