//! Order books, sequencing, checksums and ingest decoding: pure code run by
//! the ingest thread. Nothing here does I/O or reads a clock; timestamps come in
//! as arguments.

pub mod book;
pub mod checksum;
pub mod decode;
pub mod derived;
pub mod feed_deadlines;
pub mod feed_name;
pub mod market;
pub mod resume;
pub mod symbol;
pub mod synth;

/// Decimal strings are part of the wire contract (PROTOCOL §1); they live in `wire`.
pub use crate::wire::decimal;

/// Index of a symbol in the ingest thread's table; dense, assigned on first snapshot.
///
/// In the fan-out (router and workers) a `SymbolId` names a *stream*: a
/// symbol's full book and trades (the ids above), or one derived book channel
/// of a symbol (PROTOCOL §9: `book.N`, `book@Tms`), whose ids have the top bit
/// set and are dense among themselves ([`crate::fanout::streams`]). Tables
/// indexed by either kind use [`SymbolId::index`], which interleaves the two
/// dense ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymbolId(pub u32);

impl SymbolId {
    const DERIVED: u32 = 1 << 31;

    /// The `n`th derived stream.
    pub fn derived(n: u32) -> SymbolId {
        debug_assert!(n < SymbolId::DERIVED);
        SymbolId(n | SymbolId::DERIVED)
    }

    /// The number `n` of a derived stream (`SymbolId::derived(n)`); `None`
    /// for a symbol.
    pub fn derived_number(self) -> Option<usize> {
        self.is_derived()
            .then_some((self.0 & !SymbolId::DERIVED) as usize)
    }

    /// Whether this names a derived book channel rather than a symbol.
    pub fn is_derived(self) -> bool {
        self.0 & SymbolId::DERIVED != 0
    }

    /// The position in a table holding symbols and derived streams alike:
    /// symbol `n` at `2n`, derived stream `n` at `2n + 1`, so both dense
    /// ranges stay dense.
    pub fn index(self) -> usize {
        let n = (self.0 & !SymbolId::DERIVED) as usize;
        2 * n + usize::from(self.is_derived())
    }

    /// The id at table position `i` (the inverse of [`SymbolId::index`]).
    pub fn from_index(i: usize) -> SymbolId {
        let n = (i / 2) as u32;
        if i % 2 == 1 {
            SymbolId::derived(n)
        } else {
            SymbolId(n)
        }
    }
}

/// One feed connection. A feed is its connection (PROTOCOL §3): a reconnecting
/// feed handler gets a new `FeedId` and owns nothing until it sends snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedId(pub u64);

/// Why a readable ingest message was rejected (PROTOCOL §3, "readable but
/// invalid"). The feed connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("invalid symbol: {0}")]
    InvalidSymbol(String),
    #[error("bad decimal: {0}")]
    BadDecimal(String),
    #[error("message has no body (empty oneof)")]
    EmptyMessage,
    #[error("decimals out of range 0..={max}: {0}", max = decimal::MAX_DECIMALS)]
    BadDecimals(i32),
    #[error("bad level: {0}")]
    BadLevel(String),
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("no snapshot for symbol {0}")]
    NoSnapshot(String),
    #[error("symbol {0} is owned by another feed")]
    NotOwner(String),
    #[error("feed sequence gap on {symbol}: expected {expected}, got {got}")]
    FeedGap {
        symbol: String,
        expected: u64,
        got: u64,
    },
    #[error("book {0} is stale after a feed gap; waiting for a snapshot")]
    BookStale(String),
    #[error("hello after the first message")]
    LateHello,
    #[error(
        "snapshot for new symbol {symbol}: the market already holds the limit of {max} symbols"
    )]
    TooManySymbols { symbol: String, max: usize },
    #[error("book {symbol}: the {side} side would hold {depth} levels, over the limit of {max}")]
    BookTooDeep {
        symbol: String,
        side: &'static str,
        depth: usize,
        max: usize,
    },
    #[error("delta for {symbol} has {updates} level updates, over the limit of {max}")]
    TooManyUpdates {
        symbol: String,
        updates: usize,
        max: usize,
    },
}

impl RejectReason {
    /// Stable label for metrics (`tickwire_ingest_rejected_total{reason=…}`).
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::InvalidSymbol(_) => "invalid_symbol",
            RejectReason::BadDecimal(_) => "bad_decimal",
            RejectReason::EmptyMessage => "empty_message",
            RejectReason::BadDecimals(_) => "bad_decimals",
            RejectReason::BadLevel(_) => "bad_level",
            RejectReason::BadMessage(_) => "bad_message",
            RejectReason::NoSnapshot(_) => "no_snapshot",
            RejectReason::NotOwner(_) => "not_owner",
            RejectReason::FeedGap { .. } => "feed_gap",
            RejectReason::BookStale(_) => "book_stale",
            RejectReason::LateHello => "late_hello",
            RejectReason::TooManySymbols { .. } => "too_many_symbols",
            RejectReason::BookTooDeep { .. } => "book_too_deep",
            RejectReason::TooManyUpdates { .. } => "too_many_updates",
        }
    }
}

/// A rejected message. `delta_symbol` names the book when the message was a
/// delta whose symbol could be read: if this feed owns that book, it can no
/// longer be trusted and is treated as a feed gap (PROTOCOL §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub delta_symbol: Option<String>,
}

impl From<RejectReason> for Rejection {
    fn from(reason: RejectReason) -> Self {
        Rejection {
            reason,
            delta_symbol: None,
        }
    }
}

/// Why a feed connection is closed (PROTOCOL §3, "unreadable stream"), by
/// the decoder or, for the deadlines and the `feed_id` cap, by the ingest loop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("frame length {0} exceeds the 1 MiB limit")]
    FrameTooLarge(u64),
    #[error("invalid length prefix")]
    BadLength,
    #[error("undecodable protobuf: {0}")]
    Undecodable(String),
    #[error("line is not a JSON object: {0}")]
    NotJsonObject(String),
    #[error("line over the 1 MiB limit")]
    LineTooLong,
    #[error("a hello with a token is required first")]
    MissingHello,
    #[error("wrong token")]
    BadToken,
    #[error("no complete first message within {after_ms} ms of connecting")]
    HelloTimeout { after_ms: u64 },
    #[error("a message was still incomplete {after_ms} ms after its first bytes")]
    MessageTimeout { after_ms: u64 },
    #[error("feed_id of {bytes} bytes, over the limit of {max}", max = feed_name::MAX_FEED_ID_BYTES)]
    FeedIdTooLong { bytes: usize },
}

impl StreamError {
    /// Stable label for metrics (`tickwire_ingest_closed_total{reason=…}`).
    pub fn label(&self) -> &'static str {
        match self {
            StreamError::FrameTooLarge(_) => "frame_too_large",
            StreamError::BadLength => "bad_length",
            StreamError::Undecodable(_) => "undecodable",
            StreamError::NotJsonObject(_) => "not_json_object",
            StreamError::LineTooLong => "line_too_long",
            StreamError::MissingHello => "missing_hello",
            StreamError::BadToken => "bad_token",
            StreamError::HelloTimeout { .. } => "hello_timeout",
            StreamError::MessageTimeout { .. } => "message_timeout",
            StreamError::FeedIdTooLong { .. } => "feed_id_too_long",
        }
    }
}
