//! Typed configuration. Every default is documented with its unit; the
//! command line (`main.rs`) only fills these structs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{AuthMode, Entitlements, VerifierConfig};

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
    /// The ring's drain share is a percentage of a worker's time: 0 would
    /// never drain under load, above 100 is no share.
    #[error("the ring's drain share must be 1 to 100 percent, not {0}")]
    DrainShareOutOfRange(u32),
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
    /// One shared ingest token or a token file, not both.
    #[error("--token and --ingest-token-file: use one or the other")]
    TokenAndTokenFile,
    /// `--auth optional|required` verifies tokens with some key.
    #[error(
        "--auth optional|required needs a key: --jwt-secret-file, --jwt-public-key-file or --jwt-jwks-file"
    )]
    AuthWithoutKey,
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
    /// Per-feed tokens (`auth::feeds`): each feed's `Hello` carries its own,
    /// and the file is re-read on SIGHUP (a feed whose token is gone is
    /// closed). Exclusive with `token`.
    pub token_file: Option<PathBuf>,
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
            token_file: None,
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

/// Client authentication (PROTOCOL §8, README "Authentication"). Off by
/// default: nothing changes for clients.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `--auth off|optional|required`.
    pub mode: AuthMode,
    /// HS256 shared secret (the file's bytes less one trailing newline; at
    /// least 32 bytes). Never logged.
    pub secret_file: Option<PathBuf>,
    /// RS256, ES256 or EdDSA public keys, one PEM file each.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document (RFC 7517) of public keys (and HS256 `oct` keys).
    pub jwks_file: Option<PathBuf>,
    /// Issuer, audience, leeway (default 60 s).
    pub verifier: VerifierConfig,
    /// What clients without a token get under `--auth optional`.
    pub anonymous: AnonymousConfig,
}

impl AuthConfig {
    /// Whether any key source is configured (required unless the mode is off).
    pub fn has_keys(&self) -> bool {
        self.secret_file.is_some() || !self.public_key_files.is_empty() || self.jwks_file.is_some()
    }
}

/// The entitlements of anonymous clients (`--anonymous-*`), as a `tw` claim
/// would give them. Default: everything (`*`, `book` and `trades`, no limit
/// beyond the server's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonymousConfig {
    /// Symbol patterns (`*` any run). Default `["*"]`.
    pub symbols: Vec<String>,
    /// Channels (PROTOCOL §9 names; each allows its coarser views). Default
    /// `["book", "trades"]`.
    pub channels: Vec<String>,
    /// Largest N of `book.N`; `book` counts as unlimited. Default none.
    pub max_depth: Option<u32>,
    /// Smallest conflation interval, ms. Default 0.
    pub min_interval_ms: u32,
    /// Symbol-channels per connection (at most the server's limit). Default none.
    pub max_subscriptions: Option<u32>,
    /// Requests per second per connection (at most the server's). Default none.
    pub requests_per_sec: Option<u32>,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        AnonymousConfig {
            symbols: vec!["*".into()],
            channels: vec!["book".into(), "trades".into()],
            max_depth: None,
            min_interval_ms: 0,
            max_subscriptions: None,
            requests_per_sec: None,
        }
    }
}

impl AnonymousConfig {
    /// The entitlements, checked exactly as a token's `tw` claim is.
    pub fn entitlements(&self) -> Result<Entitlements, String> {
        let mut tw = serde_json::Map::new();
        tw.insert("symbols".into(), self.symbols.clone().into());
        tw.insert("channels".into(), self.channels.clone().into());
        tw.insert("min_interval_ms".into(), self.min_interval_ms.into());
        if let Some(d) = self.max_depth {
            tw.insert("max_depth".into(), d.into());
        }
        if let Some(m) = self.max_subscriptions {
            tw.insert("max_subscriptions".into(), m.into());
        }
        if let Some(r) = self.requests_per_sec {
            tw.insert("requests_per_sec".into(), r.into());
        }
        Entitlements::from_claim(&serde_json::Value::Object(tw))
            .map_err(|why| format!("anonymous entitlements: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ChannelSpec;

    #[test]
    fn anonymous_flags_are_checked_like_a_claim() {
        let e = AnonymousConfig::default().entitlements().unwrap();
        assert!(e.allows_channel(ChannelSpec::BOOK) && e.allows_symbol("ANY"));
        let e = AnonymousConfig {
            channels: vec!["book.10@1000ms".into(), "trades".into()],
            ..AnonymousConfig::default()
        }
        .entitlements()
        .unwrap();
        assert!(!e.allows_channel(ChannelSpec::BOOK));
        assert!(e.allows_channel(ChannelSpec::parse("book.10@1000ms").unwrap()));
        assert!(e.allows_channel(ChannelSpec::Trades));
        for bad in [
            AnonymousConfig {
                channels: vec!["quotes".into()],
                ..AnonymousConfig::default()
            },
            AnonymousConfig {
                symbols: vec!["*a*b*c*d*e".into()],
                ..AnonymousConfig::default()
            },
            AnonymousConfig {
                max_depth: Some(0),
                ..AnonymousConfig::default()
            },
        ] {
            assert!(bad.entitlements().is_err(), "{bad:?}");
        }
    }
}
