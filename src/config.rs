//! Typed configuration. Every default is documented with its unit; the
//! command line (`main.rs`) only fills these structs.

use std::net::SocketAddr;
use std::sync::Arc;

/// Largest ingest frame or JSON line, in bytes (PROTOCOL §3: 1 MiB).
pub const MAX_INGEST_FRAME_BYTES: usize = 1 << 20;

/// A configuration whose values cannot work together, refused at start
/// (`net::engine::EngineConfig::validate`) rather than discovered under load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The slow-consumer policy needs low-water < high-water.
    #[error("low-water ({low_water_bytes}) must be below high-water ({high_water_bytes})")]
    LowWaterNotBelowHighWater {
        low_water_bytes: usize,
        high_water_bytes: usize,
    },
    /// The slow-consumer policy needs high-water < hard limit.
    #[error("high-water ({high_water_bytes}) must be below the hard limit ({hard_limit_bytes})")]
    HighWaterNotBelowHardLimit {
        high_water_bytes: usize,
        hard_limit_bytes: usize,
    },
    /// `TCP_NOTSENT_LOWAT` above low-water: a drained queue could never end
    /// a dropping episode.
    #[error(
        "kernel unsent bytes ({kernel_unsent_bytes}) must be at most low-water ({low_water_bytes}): a drained queue must end a dropping episode"
    )]
    KernelUnsentAboveLowWater {
        kernel_unsent_bytes: usize,
        low_water_bytes: usize,
    },
    /// The pacer drains the ring within `drain_min_ns..=drain_max_ns`: a
    /// minimum above the maximum is no interval at all.
    #[error(
        "the ring's drain interval minimum ({drain_min_ns} ns) must be at most its maximum ({drain_max_ns} ns)"
    )]
    DrainMinAboveMax {
        drain_min_ns: u64,
        drain_max_ns: u64,
    },
    /// Pings with no pong timeout would never detect a dead peer.
    #[error("a ping interval needs a pong timeout")]
    PingWithoutPongTimeout,
    /// `--origin-id` is not one NATS subject token.
    #[error("origin id {0:?} must be 1 to 32 of A-Za-z0-9_- (one NATS subject token)")]
    InvalidOriginId(String),
    /// A `--publish`/`--backplane` server is not a NATS URL.
    #[error("invalid NATS server URL {0:?}")]
    InvalidNatsServer(String),
    /// Heartbeats come every second: a shorter timeout flaps.
    #[error("the backplane timeout must be at least 1500 ms (heartbeats come every second)")]
    BackplaneTimeoutTooShort { heartbeat_timeout_ms: u64 },
}

/// The ingest side: feed handler listeners and their policy.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Length-delimited protobuf listener. Default `127.0.0.1:7001`.
    pub proto_addr: SocketAddr,
    /// JSON-lines listener. Default `127.0.0.1:7002`.
    pub json_addr: SocketAddr,
    /// When set, every feed must open with a `Hello` carrying this token.
    pub token: Option<Arc<str>>,
    /// Largest frame or line accepted, bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Most feed connections at once; further ones are closed at accept. Default 1024.
    pub max_feeds: usize,
    /// What feeds may make the market hold and do (symbols, depth, updates).
    pub market: MarketLimits,
    /// A feed connection that has not completed its first message this long
    /// after it was accepted is closed (`hello_timeout`), so that silent
    /// connections cannot hold the `max_feeds` slots. Milliseconds; default
    /// 10 000 (a 1 MiB first snapshot needs under 1 Mbit/s). 0: no deadline.
    pub feed_hello_timeout_ms: u64,
    /// A message whose first bytes arrived this long ago and that is still
    /// incomplete closes the feed (`message_timeout`): a slow-loris sender, or
    /// a feed handler stuck half-way through a write, whose books would
    /// otherwise look live while nothing arrives. Between messages a feed may
    /// be silent for as long as it likes. Milliseconds; default 30 000 (a
    /// 1 MiB frame needs 0.3 Mbit/s). 0: no deadline.
    pub feed_message_timeout_ms: u64,
    /// The NATS backplane (scale-out): off when `None`.
    pub backplane: Option<BackplaneSettings>,
}

/// The NATS backplane of a node (DESIGN "Growing past one machine",
/// README "Scale out").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackplaneSettings {
    /// NATS server URLs (`nats://host:port`); the client reconnects among them.
    pub servers: Vec<String>,
    /// Publish this node's books as origin with this name (`--publish`,
    /// `--origin-id`): 1 to 32 bytes of `[A-Za-z0-9_-]`.
    pub origin: Option<String>,
    /// Follow other origins' books for local clients (`--backplane`).
    pub edge: bool,
    /// An origin whose heartbeat is silent this long is down: its books
    /// turn `Stale{feed_down}` on this edge. Milliseconds; default 3 000.
    pub heartbeat_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            proto_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            json_addr: SocketAddr::from(([127, 0, 0, 1], 7002)),
            token: None,
            max_frame_bytes: MAX_INGEST_FRAME_BYTES,
            max_feeds: 1024,
            market: MarketLimits::default(),
            feed_hello_timeout_ms: 10_000,
            feed_message_timeout_ms: 30_000,
            backplane: None,
        }
    }
}

/// Bounds on what feeds can make the market ([`crate::book::market::Market`])
/// hold, and on the work one message can cost the ingest thread. Each
/// refusal is a rejected message (the feed stays connected), counted by
/// reason in `tickwire_ingest_rejected_total`.
///
/// Worst-case book memory is `max_symbols × 2 × max_book_levels × 16` bytes
/// (16 GB at the defaults, reached only if every symbol is filled to the cap;
/// real books hold tens to a few thousand levels), plus as much again while
/// the fan-out keeps a book's encoded snapshot for subscribers (until its next
/// delta). `GET /symbols` is re-rendered in O(`max_symbols`) every 250 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketLimits {
    /// Most symbols. A symbol is created by its first snapshot and never
    /// removed; a snapshot for a new symbol past this is rejected
    /// (`too_many_symbols`), existing symbols carry on. Symbols; default
    /// 100 000 (every listed instrument of several large venues together).
    pub max_symbols: usize,
    /// Most levels one side of a book may hold. A snapshot with more on a side
    /// is rejected (`book_too_deep`); so is a delta that would grow a side past
    /// it, and the book turns stale as after a gap (PROTOCOL §3). Levels per
    /// side; default 5 000: the deepest snapshot the large venues publish
    /// (Binance's and OKX's REST depth limit; Kraken 1 000, Bybit 1 000). A
    /// book kept from such a snapshot plus diffs is incomplete past the
    /// snapshot's depth anyway, so a feed handler should trim it there.
    pub max_book_levels: usize,
    /// Most level updates in one delta; more is rejected (`too_many_updates`)
    /// and the book turns stale as after a gap. Updates; default 10 000:
    /// twice the depth cap (both sides of a full book rewritten), well above
    /// the largest diffs feeds send (hundreds of levels in a 100 ms Binance
    /// diff at a burst). Bounds the work of one message: see
    /// [`crate::book::book::OrderBook::apply_updates`] for the measured cost.
    pub max_delta_updates: usize,
}

impl Default for MarketLimits {
    fn default() -> Self {
        MarketLimits {
            max_symbols: 100_000,
            max_book_levels: 5_000,
            max_delta_updates: 10_000,
        }
    }
}
