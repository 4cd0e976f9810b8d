//! Sans-IO decoding of one feed connection's byte stream (PROTOCOL §3) into
//! validated ingest messages, and the inverse encoders.
//!
//! [`FeedDecoder`] owns one connection's receive buffer, its framing, and its
//! Hello/token state. The ingest thread runs it: `net` hands it the bytes each
//! read returned ([`FeedDecoder::handle_bytes`]) and then drains it with
//! [`FeedDecoder::poll_message`] until `Ok(None)` or an error. It never touches a
//! socket, never reads a clock, never panics on peer input, and never buffers
//! more than one frame or line (plus the last read) per connection.
//!
//! Two kinds of bad input, two answers (§3):
//! - an **unreadable stream** is a [`StreamError`]: the caller closes the
//!   connection, and the decoder is poisoned (every later poll returns the same
//!   error, and further bytes are dropped);
//! - a **readable but invalid message** is a [`Rejection`] inside `Ok(Some(Err(…)))`:
//!   the caller counts it and keeps polling; nothing else is disturbed. When the
//!   rejected message was a delta whose symbol is valid, `delta_symbol` names it
//!   (the market treats that book as gapped).
//!
//! # What the decoder checks
//!
//! Both framings, after decoding: the symbol ([`is_valid_symbol`]); a snapshot's
//! decimals in `0..=18`, its level sizes `> 0` and no price twice on one side
//! (`BadLevel`); a delta's update sides `BID`/`ASK` and sizes `>= 0` (`BadLevel`);
//! a trade's size `> 0` and aggressor a known `Side` (`BadMessage`; any price is
//! fine). Sequencing, ownership and book state are [`super::market`]'s business.
//! Level order within a side is not checked here.
//!
//! # JSON lines, precisely
//!
//! - One JSON object per `\n`-terminated line; a `\r` before the `\n` is dropped;
//!   lines of only whitespace are skipped. A line is limited to `max_frame_bytes`
//!   bytes before its `\n` (`LineTooLong` as soon as the buffer holds more).
//! - Anything that is not one JSON object (invalid JSON, trailing bytes, an array,
//!   a number, a string…) is an unreadable stream: `NotJsonObject`.
//! - Fields of the object (§3): `"type"` (`hello`, `snapshot`, `delta`, `trade`);
//!   an unknown or missing type, a field of the wrong JSON type, a known field
//!   given twice, or a missing required field is `BadMessage`.
//!   Required: snapshot `symbol`, `seq`, `price_decimals`, `size_decimals`;
//!   delta `symbol`, `seq`; trade `symbol`, `price`, `size`. Everything else is
//!   optional with the protobuf default (`bids`/`asks` empty, numbers 0, strings
//!   empty, `aggressor` unspecified).
//! - **Unknown fields are ignored** (forward compatibility, as exchange feeds do),
//!   and so is a field whose value is `null` (treated as absent). A field that is
//!   known but does not belong to the message's type (`"price"` on a snapshot) is
//!   ignored too. `ingest_ts_ns` and `checksum` are not read: tickwire stamps and
//!   computes its own.
//! - `seq` and `exchange_ts_ns` are JSON integers in `u64` range (no fraction,
//!   no exponent); decimals are JSON integers.
//! - Levels are `[price, size]` pairs of decimal strings ([`super::decimal`]).
//!   A snapshot's levels use its own `price_decimals`/`size_decimals`; a delta's
//!   and a trade's use the symbol's current decimals from the caller
//!   (`NoSnapshot` when it has none). A delta's updates are its `"bids"` then its
//!   `"asks"` in the order the object gives them, side from the array's name;
//!   size `"0"` removes the level.
//!
//! # Hello and token
//!
//! A Hello is optional as the first message. With a token configured the first
//! message must be a Hello (`MissingHello` otherwise, even if that first message
//! would have been rejected anyway) carrying that token (`BadToken`; compared
//! without an early exit). A Hello after the first message is rejected with
//! `LateHello` and the connection stays.
//!
//! With a token file ([`FeedTokens::PerFeed`]) the token names the feed: its
//! Hello's `feed_id` must be empty or that name, and the decoded Hello carries
//! the name from the file. The decoder keeps what was admitted
//! ([`FeedDecoder::still_admitted`]), so a reloaded file can revoke a feed
//! that is connected.

use std::fmt::Write as _;
use std::sync::Arc;

use prost::Message as _;
use sonic_rs::{JsonContainerTrait as _, JsonValueTrait as _, Value};

use super::decimal::{self, DecimalError, MAX_DECIMALS};
use super::symbol::is_valid_symbol;
use super::{RejectReason, Rejection, StreamError};
use crate::auth::feeds::{FeedIdentity, FeedTokens};
use crate::wire::json::write_json_str;
use crate::wire::nesting::nesting_exceeds;
use crate::wire::pb::{self, ingest_message::Body};
use crate::wire::varint::{MAX_VARINT_BYTES, VarintError, read_varint};

/// Deepest nesting of arrays and objects accepted in a JSON line: a snapshot
/// is 3 deep (object → `bids` → `[price, size]`). Deeper closes the connection.
pub const MAX_JSON_DEPTH: usize = 8;

/// Initial receive-buffer capacity: enough for many typical messages, so a warm
/// connection never reallocates.
const INITIAL_BUFFER_BYTES: usize = 16 * 1024;

/// Longest excerpt of peer text copied into a rejection message.
const EXCERPT_CHARS: usize = 40;

/// How a feed connection frames its messages (one listener per framing, §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Each `IngestMessage` preceded by its length as a protobuf varint.
    Protobuf,
    /// One JSON object per `\n`-terminated line.
    JsonLines,
}

/// A decoded, validated ingest message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The connection's first message named the feed (and the token matched).
    Hello {
        feed_id: String,
    },
    Snapshot(pb::BookSnapshot),
    Delta(pb::BookDelta),
    Trade(pb::Trade),
}

/// What [`FeedDecoder::poll_message`] returns: `Ok(None)` needs more bytes,
/// `Ok(Some(Ok(_)))` is a message, `Ok(Some(Err(_)))` a rejected one (carry on),
/// `Err(_)` closes the connection.
pub type PollResult = Result<Option<Result<Decoded, Rejection>>, StreamError>;

/// One feed connection's decoder. See the module doc.
///
/// # Invariants
///
/// - `start <= scanned <= buf.len()`; `buf[start..]` is the unconsumed input.
/// - JSON lines: `buf[start..scanned]` holds no `\n` (so each byte is scanned once).
/// - Once `poisoned` is set, `buf` is empty and stays empty.
pub struct FeedDecoder {
    framing: Framing,
    tokens: Option<Arc<FeedTokens>>,
    /// Who the Hello's token said the feed is, and that token (for a reload).
    admitted: Option<(FeedIdentity, Box<str>)>,
    max_frame_bytes: usize,
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    seen_first: bool,
    poisoned: Option<StreamError>,
}

/// Never prints the token.
impl std::fmt::Debug for FeedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedDecoder")
            .field("framing", &self.framing)
            .field("tokens", &self.tokens)
            .field("admitted", &self.admitted.as_ref().map(|(who, _)| who))
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("buffered_bytes", &self.buffered_bytes())
            .field("seen_first", &self.seen_first)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// A message before the Hello/token gate.
enum Parsed {
    Hello(pb::Hello),
    Other(Result<Decoded, Rejection>),
}

impl FeedDecoder {
    /// A decoder for a new connection. `token`: the configured ingest token, if
    /// any; `max_frame_bytes`: the frame/line limit
    /// ([`crate::config::MAX_INGEST_FRAME_BYTES`] by default).
    pub fn new(framing: Framing, token: Option<Arc<str>>, max_frame_bytes: usize) -> Self {
        let tokens = token.map(|t| Arc::new(FeedTokens::Shared(t)));
        FeedDecoder::with_tokens(framing, tokens, max_frame_bytes)
    }

    /// A decoder for a new connection, with the shared token or the token
    /// file in force when it was accepted.
    pub fn with_tokens(
        framing: Framing,
        tokens: Option<Arc<FeedTokens>>,
        max_frame_bytes: usize,
    ) -> Self {
        FeedDecoder {
            framing,
            tokens,
            admitted: None,
            max_frame_bytes,
            buf: Vec::with_capacity(INITIAL_BUFFER_BYTES),
            start: 0,
            scanned: 0,
            seen_first: false,
            poisoned: None,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Whether the feed is still admitted under `tokens` (a reloaded token
    /// file): always when it was admitted without a token, never when its
    /// token was revoked or now names another feed.
    pub fn still_admitted(&self, tokens: Option<&FeedTokens>) -> bool {
        match (tokens, &self.admitted) {
            (None, _) => true,
            (Some(t), Some((who, token))) => t.still_valid(token, who),
            // Not through the gate yet: judged by the new tokens when its
            // Hello comes (they replace the old ones below).
            (Some(_), None) => !self.seen_first,
        }
    }

    /// The tokens a feed that has not sent its first message yet will be
    /// judged by (a reload before its Hello).
    pub fn set_tokens(&mut self, tokens: Option<Arc<FeedTokens>>) {
        if !self.seen_first {
            self.tokens = tokens;
        }
    }

    /// Bytes received and not yet consumed by a complete message.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The error that closed this stream, if any.
    pub fn poisoned(&self) -> Option<&StreamError> {
        self.poisoned.as_ref()
    }

    /// Appends bytes read from the connection. Call [`Self::poll_message`] until
    /// it returns `Ok(None)` or an error before handing in more, so that the
    /// buffer never holds more than one frame or line plus one read. Bytes
    /// after an error are dropped.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.poisoned.is_some() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Moves the unconsumed bytes to the front when that costs no more than the
    /// bytes already consumed (amortised O(1) per byte, no reallocation).
    fn compact(&mut self) {
        let live = self.buf.len() - self.start;
        if self.start == 0 {
            return;
        }
        if live == 0 {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
        } else if self.start >= live {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(live);
            self.scanned -= self.start;
            self.start = 0;
        }
        debug_assert!(self.start <= self.scanned && self.scanned <= self.buf.len());
    }

    /// The next message, if a complete one is buffered. `decimals(symbol)` gives
    /// a symbol's current `(price_decimals, size_decimals)` (JSON deltas and
    /// trades need it; `None` = no snapshot yet). See [`PollResult`].
    pub fn poll_message(&mut self, decimals: &dyn Fn(&str) -> Option<(u32, u32)>) -> PollResult {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let next = match self.framing {
            Framing::Protobuf => self.next_proto(),
            Framing::JsonLines => self.next_json(decimals),
        };
        match next {
            Ok(None) => Ok(None),
            Ok(Some(parsed)) => self.gate(parsed),
            Err(e) => Err(self.poison(e)),
        }
    }

    fn poison(&mut self, e: StreamError) -> StreamError {
        self.poisoned = Some(e.clone());
        // Free the buffer now: the connection is about to be closed.
        self.buf = Vec::new();
        self.start = 0;
        self.scanned = 0;
        e
    }

    /// Applies the Hello/token rules of §3 to the connection's next message.
    fn gate(&mut self, parsed: Parsed) -> PollResult {
        let first = !self.seen_first;
        self.seen_first = true;
        match parsed {
            Parsed::Hello(hello) if first => {
                let Some(tokens) = &self.tokens else {
                    return Ok(Some(Ok(Decoded::Hello {
                        feed_id: hello.feed_id,
                    })));
                };
                let Some(who) = tokens.check(&hello.token, &hello.feed_id) else {
                    return Err(self.poison(StreamError::BadToken));
                };
                let feed_id = match &who {
                    FeedIdentity::Shared => hello.feed_id,
                    FeedIdentity::Named(name) => name.to_string(),
                };
                self.admitted = Some((who, hello.token.into()));
                Ok(Some(Ok(Decoded::Hello { feed_id })))
            }
            Parsed::Hello(_) => Ok(Some(Err(RejectReason::LateHello.into()))),
            Parsed::Other(_) if first && self.tokens.is_some() => {
                Err(self.poison(StreamError::MissingHello))
            }
            Parsed::Other(result) => Ok(Some(result)),
        }
    }

    fn next_proto(&mut self) -> Result<Option<Parsed>, StreamError> {
        let pending = &self.buf[self.start..];
        let Some((len, prefix_len)) = read_length_prefix(pending)? else {
            return Ok(None);
        };
        // §3: a length over the limit closes the connection, before its bytes arrive.
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.max_frame_bytes => len,
            _ => return Err(StreamError::FrameTooLarge(len)),
        };
        // `prefix_len + len` cannot overflow: both are small (≤ 10, ≤ max_frame_bytes).
        let Some(frame) = pending.get(prefix_len..prefix_len + len) else {
            return Ok(None);
        };
        let msg = match fast_delta(frame) {
            Some(msg) => msg,
            None => pb::IngestMessage::decode(frame)
                .map_err(|e| StreamError::Undecodable(e.to_string()))?,
        };
        self.start += prefix_len + len;
        self.scanned = self.start;
        Ok(Some(classify_proto(msg)))
    }

    fn next_json(
        &mut self,
        decimals: &dyn Fn(&str) -> Option<(u32, u32)>,
    ) -> Result<Option<Parsed>, StreamError> {
        loop {
            let unscanned = &self.buf[self.scanned..];
            let Some(offset) = unscanned.iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                // §3: a line over the limit closes the connection; don't wait for its end.
                if self.buf.len() - self.start > self.max_frame_bytes {
                    return Err(StreamError::LineTooLong);
                }
                return Ok(None);
            };
            let newline = self.scanned + offset;
            if newline - self.start > self.max_frame_bytes {
                return Err(StreamError::LineTooLong);
            }
            let mut line = &self.buf[self.start..newline];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            self.start = newline + 1;
            self.scanned = self.start;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return parse_json_line(line, decimals).map(Some);
        }
    }
}

/// Reads a length prefix: `Ok(None)` if incomplete, `BadLength` if longer than
/// 10 bytes or over `u64` (prost's `decode_varint` rules).
fn read_length_prefix(bytes: &[u8]) -> Result<Option<(u64, usize)>, StreamError> {
    let mut pos = 0;
    match read_varint(bytes, &mut pos) {
        Ok(len) => Ok(Some((len, pos))),
        Err(VarintError::Truncated) => Ok(None),
        Err(VarintError::TooLong) => Err(StreamError::BadLength),
    }
}

fn classify_proto(msg: pb::IngestMessage) -> Parsed {
    match msg.body {
        None => Parsed::Other(Err(RejectReason::EmptyMessage.into())),
        Some(Body::Hello(hello)) => Parsed::Hello(hello),
        Some(Body::Snapshot(s)) => Parsed::Other(validate_snapshot(s).map_err(Rejection::from)),
        Some(Body::Delta(d)) => Parsed::Other(validate_delta(d)),
        Some(Body::Trade(t)) => Parsed::Other(validate_trade(t).map_err(Rejection::from)),
    }
}

// ---------------------------------------------------------------------------
// Validation, shared by both framings.

fn validate_snapshot(s: pb::BookSnapshot) -> Result<Decoded, RejectReason> {
    if !is_valid_symbol(&s.symbol) {
        return Err(RejectReason::InvalidSymbol(excerpt(&s.symbol)));
    }
    check_decimals(s.price_decimals)?;
    check_decimals(s.size_decimals)?;
    check_snapshot_levels(&s.bids, "bid")?;
    check_snapshot_levels(&s.asks, "ask")?;
    Ok(Decoded::Snapshot(s))
}

fn check_decimals(d: i32) -> Result<u32, RejectReason> {
    match u32::try_from(d) {
        Ok(d) if d <= MAX_DECIMALS => Ok(d),
        _ => Err(RejectReason::BadDecimals(d)),
    }
}

/// Sizes > 0 and no price twice on one side. No allocation when the side is
/// strictly ordered (the normal case: best first).
fn check_snapshot_levels(levels: &[pb::Level], side: &str) -> Result<(), RejectReason> {
    if let Some(l) = levels.iter().find(|l| l.size <= 0) {
        return Err(RejectReason::BadLevel(format!(
            "{side} level at price {} has size {}; snapshot sizes must be > 0",
            l.price, l.size
        )));
    }
    let descending = levels.windows(2).all(|w| w[0].price > w[1].price);
    let ascending = levels.windows(2).all(|w| w[0].price < w[1].price);
    if descending || ascending {
        return Ok(());
    }
    let mut prices: Vec<i64> = levels.iter().map(|l| l.price).collect();
    prices.sort_unstable();
    match prices.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(RejectReason::BadLevel(format!(
            "{side} price {} appears twice in the snapshot",
            w[0]
        ))),
        None => Ok(()),
    }
}

/// Every rejection of a delta with a valid symbol names the symbol, so the
/// market can treat its book as gapped.
fn validate_delta(d: pb::BookDelta) -> Result<Decoded, Rejection> {
    if !is_valid_symbol(&d.symbol) {
        return Err(RejectReason::InvalidSymbol(excerpt(&d.symbol)).into());
    }
    let bad = d.updates.iter().find_map(|u| {
        if u.side != pb::Side::Bid as i32 && u.side != pb::Side::Ask as i32 {
            Some(format!(
                "update at price {} has side {}; must be BID or ASK",
                u.price, u.side
            ))
        } else if u.size < 0 {
            Some(format!(
                "update at price {} has size {}; must be >= 0",
                u.price, u.size
            ))
        } else {
            None
        }
    });
    match bad {
        Some(why) => Err(Rejection {
            reason: RejectReason::BadLevel(why),
            delta_symbol: Some(d.symbol),
        }),
        None => Ok(Decoded::Delta(d)),
    }
}

fn validate_trade(t: pb::Trade) -> Result<Decoded, RejectReason> {
    if !is_valid_symbol(&t.symbol) {
        return Err(RejectReason::InvalidSymbol(excerpt(&t.symbol)));
    }
    if t.size <= 0 {
        return Err(RejectReason::BadMessage(format!(
            "trade size {} must be > 0",
            t.size
        )));
    }
    if pb::Side::try_from(t.aggressor).is_err() {
        return Err(RejectReason::BadMessage(format!(
            "trade aggressor {} is not a Side",
            t.aggressor
        )));
    }
    Ok(Decoded::Trade(t))
}

/// A short, escaped copy of peer text for a rejection message (never the whole
/// string: it may be up to a frame long).
fn excerpt(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

// ---------------------------------------------------------------------------
// JSON lines.

/// The known fields of an ingest JSON object, each the first non-null value.
#[derive(Default)]
struct JsonFields<'a> {
    kind: Option<&'a Value>,
    symbol: Option<&'a Value>,
    seq: Option<&'a Value>,
    price_decimals: Option<&'a Value>,
    size_decimals: Option<&'a Value>,
    bids: Option<&'a Value>,
    asks: Option<&'a Value>,
    exchange_ts_ns: Option<&'a Value>,
    price: Option<&'a Value>,
    size: Option<&'a Value>,
    aggressor: Option<&'a Value>,
    trade_id: Option<&'a Value>,
    feed_id: Option<&'a Value>,
    token: Option<&'a Value>,
    /// The first known field given twice, if any.
    duplicate: Option<&'static str>,
}

impl<'a> JsonFields<'a> {
    fn slot(&mut self, key: &str) -> Option<(&'static str, &mut Option<&'a Value>)> {
        Some(match key {
            "type" => ("type", &mut self.kind),
            "symbol" => ("symbol", &mut self.symbol),
            "seq" => ("seq", &mut self.seq),
            "price_decimals" => ("price_decimals", &mut self.price_decimals),
            "size_decimals" => ("size_decimals", &mut self.size_decimals),
            "bids" => ("bids", &mut self.bids),
            "asks" => ("asks", &mut self.asks),
            "exchange_ts_ns" => ("exchange_ts_ns", &mut self.exchange_ts_ns),
            "price" => ("price", &mut self.price),
            "size" => ("size", &mut self.size),
            "aggressor" => ("aggressor", &mut self.aggressor),
            "trade_id" => ("trade_id", &mut self.trade_id),
            "feed_id" => ("feed_id", &mut self.feed_id),
            "token" => ("token", &mut self.token),
            _ => return None,
        })
    }

    fn check_duplicates(&self) -> Result<(), RejectReason> {
        match self.duplicate {
            Some(name) => Err(RejectReason::BadMessage(format!(
                "field \"{name}\" given twice"
            ))),
            None => Ok(()),
        }
    }
}

fn parse_json_line(
    line: &[u8],
    decimals: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> Result<Parsed, StreamError> {
    // Before the parser, which recurses per level: a deep line would
    // overflow the ingest thread's stack and abort the process.
    if nesting_exceeds(line, MAX_JSON_DEPTH) {
        return Err(StreamError::NotJsonObject(format!(
            "JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let value: Value = sonic_rs::from_slice(line).map_err(|e| {
        let e = e.to_string();
        StreamError::NotJsonObject(e.lines().next().unwrap_or("invalid JSON").to_owned())
    })?;
    let Some(object) = value.as_object() else {
        return Err(StreamError::NotJsonObject(format!(
            "a JSON {}, not an object",
            json_type_name(&value)
        )));
    };
    let mut fields = JsonFields::default();
    for (key, v) in object.iter() {
        if v.is_null() {
            continue;
        }
        if let Some((name, slot)) = fields.slot(key) {
            if slot.is_some() {
                fields.duplicate.get_or_insert(name);
            } else {
                *slot = Some(v);
            }
        }
    }
    let Some(kind) = fields.kind.and_then(|v| v.as_str()) else {
        return Ok(Parsed::Other(Err(RejectReason::BadMessage(
            "missing or non-string \"type\"".into(),
        )
        .into())));
    };
    Ok(match kind {
        "hello" => match json_hello(&fields) {
            Ok(hello) => Parsed::Hello(hello),
            Err(reason) => Parsed::Other(Err(reason.into())),
        },
        "snapshot" => Parsed::Other(
            json_snapshot(&fields)
                .and_then(validate_snapshot)
                .map_err(Rejection::from),
        ),
        "delta" => Parsed::Other(json_delta(&fields, decimals).and_then(validate_delta)),
        "trade" => Parsed::Other(
            json_trade(&fields, decimals)
                .and_then(validate_trade)
                .map_err(Rejection::from),
        ),
        other => Parsed::Other(Err(RejectReason::BadMessage(format!(
            "unknown type \"{}\"",
            excerpt(other)
        ))
        .into())),
    })
}

fn json_type_name(v: &Value) -> &'static str {
    match v.get_type() {
        sonic_rs::JsonType::Null => "null",
        sonic_rs::JsonType::Boolean => "boolean",
        sonic_rs::JsonType::Number => "number",
        sonic_rs::JsonType::String => "string",
        sonic_rs::JsonType::Object => "object",
        sonic_rs::JsonType::Array => "array",
    }
}

fn wrong_type(name: &str, expected: &str) -> RejectReason {
    RejectReason::BadMessage(format!("\"{name}\" must be {expected}"))
}

fn missing(name: &str) -> RejectReason {
    RejectReason::BadMessage(format!("missing \"{name}\""))
}

fn opt_str<'a>(v: Option<&'a Value>, name: &str) -> Result<Option<&'a str>, RejectReason> {
    v.map(|v| v.as_str().ok_or_else(|| wrong_type(name, "a string")))
        .transpose()
}

fn req_str<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a str, RejectReason> {
    opt_str(v, name)?.ok_or_else(|| missing(name))
}

fn opt_u64(v: Option<&Value>, name: &str) -> Result<Option<u64>, RejectReason> {
    v.map(|v| {
        v.as_u64()
            .ok_or_else(|| wrong_type(name, "an integer in 0..=2^64-1"))
    })
    .transpose()
}

fn req_u64(v: Option<&Value>, name: &str) -> Result<u64, RejectReason> {
    opt_u64(v, name)?.ok_or_else(|| missing(name))
}

/// Decimals as the protobuf `int32`; the range check is [`check_decimals`]'s.
fn req_decimals(v: Option<&Value>, name: &str) -> Result<i32, RejectReason> {
    let d = v
        .ok_or_else(|| missing(name))?
        .as_i64()
        .ok_or_else(|| wrong_type(name, "an integer"))?;
    Ok(i32::try_from(d).unwrap_or(if d < 0 { i32::MIN } else { i32::MAX }))
}

fn bad_decimal(what: &str, s: &str, e: DecimalError) -> RejectReason {
    RejectReason::BadDecimal(format!("{what} \"{}\": {e}", excerpt(s)))
}

/// Calls `f(price, size)` for each `[price, size]` pair of decimal strings in
/// the array `v` (absent = empty).
fn for_each_pair(
    v: Option<&Value>,
    name: &str,
    mut f: impl FnMut(&str, &str) -> Result<(), RejectReason>,
) -> Result<(), RejectReason> {
    let Some(v) = v else { return Ok(()) };
    let levels = v
        .as_array()
        .ok_or_else(|| wrong_type(name, "an array of [price, size] pairs"))?;
    for level in levels.iter() {
        let pair = level.as_array().map(|a| &**a);
        let (price, size) = match pair {
            Some([p, s]) => match (p.as_str(), s.as_str()) {
                (Some(price), Some(size)) => (price, size),
                _ => {
                    return Err(wrong_type(
                        name,
                        "an array of [price, size] pairs of decimal strings",
                    ));
                }
            },
            _ => {
                return Err(wrong_type(
                    name,
                    "an array of [price, size] pairs of decimal strings",
                ));
            }
        };
        f(price, size)?;
    }
    Ok(())
}

fn json_hello(f: &JsonFields<'_>) -> Result<pb::Hello, RejectReason> {
    f.check_duplicates()?;
    Ok(pb::Hello {
        feed_id: opt_str(f.feed_id, "feed_id")?
            .unwrap_or_default()
            .to_owned(),
        token: opt_str(f.token, "token")?.unwrap_or_default().to_owned(),
    })
}

fn json_snapshot(f: &JsonFields<'_>) -> Result<pb::BookSnapshot, RejectReason> {
    f.check_duplicates()?;
    let symbol = req_str(f.symbol, "symbol")?;
    let seq = req_u64(f.seq, "seq")?;
    let price_decimals = req_decimals(f.price_decimals, "price_decimals")?;
    let size_decimals = req_decimals(f.size_decimals, "size_decimals")?;
    let exchange_ts_ns = opt_u64(f.exchange_ts_ns, "exchange_ts_ns")?.unwrap_or(0);
    if !is_valid_symbol(symbol) {
        return Err(RejectReason::InvalidSymbol(excerpt(symbol)));
    }
    let pd = check_decimals(price_decimals)?;
    let sd = check_decimals(size_decimals)?;
    let bids = json_levels(f.bids, "bids", pd, sd)?;
    let asks = json_levels(f.asks, "asks", pd, sd)?;
    Ok(pb::BookSnapshot {
        symbol: symbol.to_owned(),
        seq,
        bids,
        asks,
        price_decimals,
        size_decimals,
        exchange_ts_ns,
        ingest_ts_ns: 0,
        checksum: 0,
        epoch: 0,
        channel: String::new(),
    })
}

fn json_levels(
    v: Option<&Value>,
    name: &str,
    pd: u32,
    sd: u32,
) -> Result<Vec<pb::Level>, RejectReason> {
    let mut levels = Vec::new();
    for_each_pair(v, name, |p, s| {
        let price = decimal::parse_price(p, pd).map_err(|e| bad_decimal("price", p, e))?;
        let size = decimal::parse_size(s, sd).map_err(|e| bad_decimal("size", s, e))?;
        levels.push(pb::Level { price, size });
        Ok(())
    })?;
    Ok(levels)
}

fn json_delta(
    f: &JsonFields<'_>,
    decimals: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> Result<pb::BookDelta, Rejection> {
    let symbol = req_str(f.symbol, "symbol")?;
    if !is_valid_symbol(symbol) {
        return Err(RejectReason::InvalidSymbol(excerpt(symbol)).into());
    }
    // From here on the symbol is valid: every rejection names it (§3 feed gap).
    json_delta_body(f, symbol, decimals).map_err(|reason| Rejection {
        reason,
        delta_symbol: Some(symbol.to_owned()),
    })
}

fn json_delta_body(
    f: &JsonFields<'_>,
    symbol: &str,
    decimals: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> Result<pb::BookDelta, RejectReason> {
    f.check_duplicates()?;
    let seq = req_u64(f.seq, "seq")?;
    let exchange_ts_ns = opt_u64(f.exchange_ts_ns, "exchange_ts_ns")?.unwrap_or(0);
    let (pd, sd) = decimals(symbol).ok_or_else(|| RejectReason::NoSnapshot(symbol.to_owned()))?;
    let mut updates = Vec::new();
    for (v, name, side) in [
        (f.bids, "bids", pb::Side::Bid),
        (f.asks, "asks", pb::Side::Ask),
    ] {
        for_each_pair(v, name, |p, s| {
            let price = decimal::parse_price(p, pd).map_err(|e| bad_decimal("price", p, e))?;
            let size = decimal::parse_size(s, sd).map_err(|e| bad_decimal("size", s, e))?;
            updates.push(pb::LevelUpdate {
                side: side as i32,
                price,
                size,
            });
            Ok(())
        })?;
    }
    Ok(pb::BookDelta {
        symbol: symbol.to_owned(),
        seq,
        updates,
        exchange_ts_ns,
        ingest_ts_ns: 0,
        checksum: 0,
        prev_seq: 0,
        channel: String::new(),
    })
}

fn json_trade(
    f: &JsonFields<'_>,
    decimals: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> Result<pb::Trade, RejectReason> {
    f.check_duplicates()?;
    let symbol = req_str(f.symbol, "symbol")?;
    let price = req_str(f.price, "price")?;
    let size = req_str(f.size, "size")?;
    let aggressor = match opt_str(f.aggressor, "aggressor")? {
        None | Some("") => pb::Side::Unspecified,
        Some("bid") => pb::Side::Bid,
        Some("ask") => pb::Side::Ask,
        Some(_) => return Err(wrong_type("aggressor", "\"bid\", \"ask\" or \"\"")),
    };
    let trade_id = opt_str(f.trade_id, "trade_id")?.unwrap_or_default();
    let seq = opt_u64(f.seq, "seq")?.unwrap_or(0);
    let exchange_ts_ns = opt_u64(f.exchange_ts_ns, "exchange_ts_ns")?.unwrap_or(0);
    if !is_valid_symbol(symbol) {
        return Err(RejectReason::InvalidSymbol(excerpt(symbol)));
    }
    let (pd, sd) = decimals(symbol).ok_or_else(|| RejectReason::NoSnapshot(symbol.to_owned()))?;
    Ok(pb::Trade {
        symbol: symbol.to_owned(),
        seq,
        price: decimal::parse_price(price, pd).map_err(|e| bad_decimal("price", price, e))?,
        size: decimal::parse_size(size, sd).map_err(|e| bad_decimal("size", size, e))?,
        aggressor: aggressor as i32,
        exchange_ts_ns,
        ingest_ts_ns: 0,
        trade_id: trade_id.to_owned(),
    })
}

fn fast_len<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(buf, pos).ok()?).ok()?;
    let bytes = buf.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(bytes)
}

/// The hot ingest message, an `IngestMessage` holding only a `BookDelta` with
/// the schema's fields, decoded without prost's generic machinery. Anything
/// else (other messages, unknown fields, odd wire types, bad UTF-8, malformed
/// bytes) returns `None` and the caller decodes with prost, so the result and
/// the errors are always prost's.
///
/// NB: `benches/ingest.rs` (prost's varint and merge loops were a quarter of
/// the per-delta time).
fn fast_delta(frame: &[u8]) -> Option<pb::IngestMessage> {
    let mut pos = 0;
    // IngestMessage field 2 (delta), wire type 2, spanning the whole frame.
    if *frame.first()? != 0x12 {
        return None;
    }
    pos += 1;
    let body = fast_len(frame, &mut pos)?;
    if pos != frame.len() {
        return None;
    }
    let mut d = pb::BookDelta::default();
    let mut pos = 0;
    while pos < body.len() {
        match body[pos] {
            0x0A => {
                pos += 1;
                d.symbol = std::str::from_utf8(fast_len(body, &mut pos)?)
                    .ok()?
                    .to_owned();
            }
            0x10 => {
                pos += 1;
                d.seq = read_varint(body, &mut pos).ok()?;
            }
            0x1A => {
                pos += 1;
                let u = fast_len(body, &mut pos)?;
                let mut update = pb::LevelUpdate::default();
                let mut p = 0;
                while p < u.len() {
                    let key = u[p];
                    p += 1;
                    let v = read_varint(u, &mut p).ok()?;
                    // Truncation and sign reinterpretation exactly as prost decodes int32/int64.
                    match key {
                        0x08 => update.side = v as i32,
                        0x10 => update.price = v as i64,
                        0x18 => update.size = v as i64,
                        _ => return None,
                    }
                }
                d.updates.push(update);
            }
            0x20 => {
                pos += 1;
                d.exchange_ts_ns = read_varint(body, &mut pos).ok()?;
            }
            0x28 => {
                pos += 1;
                d.ingest_ts_ns = read_varint(body, &mut pos).ok()?;
            }
            0x30 => {
                pos += 1;
                d.checksum = read_varint(body, &mut pos).ok()? as u32;
            }
            _ => return None,
        }
    }
    Some(pb::IngestMessage {
        body: Some(Body::Delta(d)),
    })
}

/// A `ServerMessage` holding only a `BookDelta` (a backplane data message's
/// body), by the same fast path: `ServerMessage.delta` is field 2 with the
/// same `BookDelta` as `IngestMessage.delta`. `None`: decode with prost.
pub fn fast_server_delta(payload: &[u8]) -> Option<pb::BookDelta> {
    match fast_delta(payload)?.body {
        Some(Body::Delta(d)) => Some(d),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Encoders: the inverse of the decoder, for load generators, the demo feed and tests.

/// Appends `msg` as a length-delimited protobuf frame (prost's
/// `encode_length_delimited`: varint length, then the message).
pub fn encode_proto(msg: &pb::IngestMessage, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(len + MAX_VARINT_BYTES);
    prost::encoding::encode_varint(len as u64, out);
    // `encode_raw` cannot fail: a Vec grows as needed.
    msg.encode_raw(out);
}

/// Appends `msg` as one JSON line in exactly the §3 format, `\n` included.
///
/// `price_decimals`/`size_decimals` format a delta's or a trade's prices and
/// sizes; a snapshot uses its own decimals (clamped to `0..=18` for its levels).
/// A delta's removal (size 0) is written `"0"` as in the §3 example; every other
/// price and size has exactly its decimals (§1). Fields tickwire ignores on ingest (`ingest_ts_ns`, `checksum`, a trade's
/// `seq`) are not written. Delta updates whose side is neither BID nor ASK cannot
/// be expressed in JSON and are left out; an unknown trade aggressor is written
/// as `""`. A message with no body is written as `{}` (rejected by the decoder
/// as a missing `"type"`).
pub fn encode_json_line(
    msg: &pb::IngestMessage,
    price_decimals: u32,
    size_decimals: u32,
    out: &mut String,
) {
    // `write!` into a String cannot fail; its `fmt::Result` is ignored below.
    match &msg.body {
        None => out.push_str("{}"),
        Some(Body::Hello(h)) => {
            out.push_str("{\"type\":\"hello\",\"feed_id\":");
            write_json_str(out, &h.feed_id);
            out.push_str(",\"token\":");
            write_json_str(out, &h.token);
            out.push('}');
        }
        Some(Body::Snapshot(s)) => {
            let (pd, sd) = (
                decimal::clamp_decimals(s.price_decimals),
                decimal::clamp_decimals(s.size_decimals),
            );
            out.push_str("{\"type\":\"snapshot\",\"symbol\":");
            write_json_str(out, &s.symbol);
            let _ = write!(
                out,
                ",\"seq\":{},\"price_decimals\":{},\"size_decimals\":{},\"bids\":",
                s.seq, s.price_decimals, s.size_decimals
            );
            push_pairs(out, s.bids.iter().map(|l| (l.price, l.size)), pd, sd, false);
            out.push_str(",\"asks\":");
            push_pairs(out, s.asks.iter().map(|l| (l.price, l.size)), pd, sd, false);
            let _ = write!(out, ",\"exchange_ts_ns\":{}}}", s.exchange_ts_ns);
        }
        Some(Body::Delta(d)) => {
            out.push_str("{\"type\":\"delta\",\"symbol\":");
            write_json_str(out, &d.symbol);
            let _ = write!(out, ",\"seq\":{},\"bids\":", d.seq);
            let side = |side: pb::Side| {
                d.updates
                    .iter()
                    .filter(move |u| u.side == side as i32)
                    .map(|u| (u.price, u.size))
            };
            push_pairs(
                out,
                side(pb::Side::Bid),
                price_decimals,
                size_decimals,
                true,
            );
            out.push_str(",\"asks\":");
            push_pairs(
                out,
                side(pb::Side::Ask),
                price_decimals,
                size_decimals,
                true,
            );
            let _ = write!(out, ",\"exchange_ts_ns\":{}}}", d.exchange_ts_ns);
        }
        Some(Body::Trade(t)) => {
            out.push_str("{\"type\":\"trade\",\"symbol\":");
            write_json_str(out, &t.symbol);
            out.push_str(",\"price\":\"");
            decimal::format_decimal(t.price, price_decimals, out);
            out.push_str("\",\"size\":\"");
            decimal::format_decimal(t.size, size_decimals, out);
            out.push_str("\",\"aggressor\":");
            out.push_str(match pb::Side::try_from(t.aggressor) {
                Ok(pb::Side::Bid) => "\"bid\"",
                Ok(pb::Side::Ask) => "\"ask\"",
                _ => "\"\"",
            });
            out.push_str(",\"trade_id\":");
            write_json_str(out, &t.trade_id);
            let _ = write!(out, ",\"exchange_ts_ns\":{}}}", t.exchange_ts_ns);
        }
    }
    out.push('\n');
}

/// Appends `[["price","size"],…]`. In a delta (`zero_size_is_removal`) a size of
/// 0 is written `"0"`, as in the §3 example.
fn push_pairs(
    out: &mut String,
    pairs: impl Iterator<Item = (i64, i64)>,
    pd: u32,
    sd: u32,
    zero_size_is_removal: bool,
) {
    out.push('[');
    for (i, (price, size)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("[\"");
        decimal::format_decimal(price, pd, out);
        out.push_str("\",\"");
        if size == 0 && zero_size_is_removal {
            // §3 writes a removal as `"0"`.
            out.push('0');
        } else {
            decimal::format_decimal(size, sd, out);
        }
        out.push_str("\"]");
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_INGEST_FRAME_BYTES;
    use proptest::prelude::*;

    type Outcome = Result<Result<Decoded, Rejection>, StreamError>;
    type Decimals<'a> = &'a dyn Fn(&str) -> Option<(u32, u32)>;

    const TS: u64 = 1_732_870_000_000_000_000;

    /// BTC-USD has a snapshot at 2/4 decimals; nothing else does.
    fn btc(symbol: &str) -> Option<(u32, u32)> {
        (symbol == "BTC-USD").then_some((2, 4))
    }

    fn msg(body: Body) -> pb::IngestMessage {
        pb::IngestMessage { body: Some(body) }
    }

    fn hello(feed_id: &str, token: &str) -> pb::IngestMessage {
        msg(Body::Hello(pb::Hello {
            feed_id: feed_id.into(),
            token: token.into(),
        }))
    }

    fn snapshot() -> pb::BookSnapshot {
        pb::BookSnapshot {
            symbol: "BTC-USD".into(),
            seq: 1,
            bids: vec![pb::Level {
                price: 3_000_050,
                size: 12_500,
            }],
            asks: vec![pb::Level {
                price: 3_000_100,
                size: 5_000,
            }],
            price_decimals: 2,
            size_decimals: 4,
            exchange_ts_ns: TS,
            ingest_ts_ns: 0,
            checksum: 0,
            epoch: 0,
            channel: String::new(),
        }
    }

    fn delta() -> pb::BookDelta {
        pb::BookDelta {
            symbol: "BTC-USD".into(),
            seq: 2,
            updates: vec![pb::LevelUpdate {
                side: pb::Side::Bid as i32,
                price: 3_000_050,
                size: 0,
            }],
            exchange_ts_ns: TS + 500_000,
            ingest_ts_ns: 0,
            checksum: 0,
            channel: String::new(),
            prev_seq: 0,
        }
    }

    fn trade() -> pb::Trade {
        pb::Trade {
            symbol: "BTC-USD".into(),
            seq: 0,
            price: 3_000_050,
            size: 100,
            aggressor: pb::Side::Bid as i32,
            exchange_ts_ns: TS + 600_000,
            ingest_ts_ns: 0,
            trade_id: "t-1".into(),
        }
    }

    /// The four example lines of PROTOCOL §3, verbatim.
    const EXAMPLE_LINES: [&str; 4] = [
        r#"{"type":"hello","feed_id":"cb-1","token":"…"}"#,
        r#"{"type":"snapshot","symbol":"BTC-USD","seq":1,"price_decimals":2,"size_decimals":4,"bids":[["30000.50","1.2500"]],"asks":[["30001.00","0.5000"]],"exchange_ts_ns":1732870000000000000}"#,
        r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[["30000.50","0"]],"asks":[],"exchange_ts_ns":1732870000000500000}"#,
        r#"{"type":"trade","symbol":"BTC-USD","price":"30000.50","size":"0.0100","aggressor":"bid","trade_id":"t-1","exchange_ts_ns":1732870000000600000}"#,
    ];

    fn proto_bytes(msgs: &[pb::IngestMessage]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            encode_proto(m, &mut out);
        }
        out
    }

    fn json_bytes(msgs: &[pb::IngestMessage]) -> Vec<u8> {
        let mut out = String::new();
        for m in msgs {
            encode_json_line(m, 2, 4, &mut out);
        }
        out.into_bytes()
    }

    fn lines(ls: &[&str]) -> Vec<u8> {
        ls.iter().flat_map(|l| l.bytes().chain(*b"\n")).collect()
    }

    fn decoder(framing: Framing, token: Option<&str>, max: usize) -> FeedDecoder {
        FeedDecoder::new(framing, token.map(Arc::from), max)
    }

    /// Feeds `chunks` one after the other, draining after each; stops at the
    /// first stream error (after checking that the decoder stays poisoned).
    fn run<'a>(
        d: &mut FeedDecoder,
        chunks: impl IntoIterator<Item = &'a [u8]>,
        decimals: Decimals<'_>,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        for chunk in chunks {
            d.handle_bytes(chunk);
            loop {
                match d.poll_message(decimals) {
                    Ok(None) => break,
                    Ok(Some(m)) => out.push(Ok(m)),
                    Err(e) => {
                        d.handle_bytes(b"{}\n\x00");
                        assert_eq!(d.poll_message(decimals), Err(e.clone()), "poisoned");
                        assert_eq!(d.buffered_bytes(), 0);
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    fn run_whole(
        framing: Framing,
        token: Option<&str>,
        input: &[u8],
        decimals: Decimals<'_>,
    ) -> Vec<Outcome> {
        run(
            &mut decoder(framing, token, MAX_INGEST_FRAME_BYTES),
            [input],
            decimals,
        )
    }

    /// Whole, byte by byte, and split in two at every point: identical results.
    fn run_every_split(
        framing: Framing,
        token: Option<&str>,
        input: &[u8],
        decimals: Decimals<'_>,
    ) -> Vec<Outcome> {
        let whole = run_whole(framing, token, input, decimals);
        let mut d = decoder(framing, token, MAX_INGEST_FRAME_BYTES);
        assert_eq!(
            run(&mut d, input.chunks(1), decimals),
            whole,
            "byte by byte"
        );
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            let mut d = decoder(framing, token, MAX_INGEST_FRAME_BYTES);
            assert_eq!(run(&mut d, [a, b], decimals), whole, "split at {at}");
        }
        whole
    }

    fn ok(d: Decoded) -> Outcome {
        Ok(Ok(d))
    }

    fn rejected(reason: RejectReason) -> Outcome {
        Ok(Err(reason.into()))
    }

    fn rejected_delta(reason: RejectReason, symbol: &str) -> Outcome {
        Ok(Err(Rejection {
            reason,
            delta_symbol: Some(symbol.into()),
        }))
    }

    fn one(framing: Framing, input: &[u8]) -> Outcome {
        let mut out = run_whole(framing, None, input, &btc);
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    fn one_json(line: &str) -> Outcome {
        one(Framing::JsonLines, &lines(&[line]))
    }

    // -- PROTOCOL §3 examples -------------------------------------------------

    #[test]
    fn json_examples_of_the_protocol_decode() {
        let out = run_every_split(Framing::JsonLines, Some("…"), &lines(&EXAMPLE_LINES), &btc);
        assert_eq!(
            out,
            vec![
                ok(Decoded::Hello {
                    feed_id: "cb-1".into()
                }),
                ok(Decoded::Snapshot(snapshot())),
                ok(Decoded::Delta(delta())),
                ok(Decoded::Trade(trade())),
            ]
        );
    }

    #[test]
    fn json_encoder_writes_the_protocol_examples_exactly() {
        let msgs = [
            hello("cb-1", "…"),
            msg(Body::Snapshot(snapshot())),
            msg(Body::Delta(delta())),
            msg(Body::Trade(trade())),
        ];
        for (m, line) in msgs.iter().zip(EXAMPLE_LINES) {
            let mut out = String::from("prefix:");
            encode_json_line(m, 2, 4, &mut out);
            assert_eq!(out, format!("prefix:{line}\n"));
        }
    }

    #[test]
    fn json_encoder_escapes_strings_and_orders_delta_sides() {
        let mut out = String::new();
        encode_json_line(&hello("a\"b\\c\n\u{1}é", ""), 0, 0, &mut out);
        assert_eq!(
            out,
            "{\"type\":\"hello\",\"feed_id\":\"a\\\"b\\\\c\\n\\u0001é\",\"token\":\"\"}\n"
        );
        let mut d = delta();
        d.updates = vec![
            pb::LevelUpdate {
                side: pb::Side::Ask as i32,
                price: -5,
                size: 1,
            },
            pb::LevelUpdate {
                side: pb::Side::Bid as i32,
                price: 7,
                size: 20_000,
            },
            pb::LevelUpdate {
                side: pb::Side::Unspecified as i32,
                price: 9,
                size: 1,
            },
        ];
        out.clear();
        encode_json_line(&msg(Body::Delta(d)), 2, 4, &mut out);
        assert_eq!(
            out,
            "{\"type\":\"delta\",\"symbol\":\"BTC-USD\",\"seq\":2,\"bids\":[[\"0.07\",\"2.0000\"]],\"asks\":[[\"-0.05\",\"0.0001\"]],\"exchange_ts_ns\":1732870000000500000}\n"
        );
        out.clear();
        encode_json_line(&pb::IngestMessage { body: None }, 2, 4, &mut out);
        assert_eq!(out, "{}\n");
    }

    #[test]
    fn proto_encoder_matches_prost_length_delimited() {
        for m in [
            hello("f", "t"),
            msg(Body::Snapshot(snapshot())),
            msg(Body::Delta(delta())),
            pb::IngestMessage { body: None },
        ] {
            let mut ours = vec![0xAA];
            encode_proto(&m, &mut ours);
            let mut theirs = vec![0xAA];
            m.encode_length_delimited(&mut theirs).unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn proto_fixtures_decode_at_every_split() {
        let mut t = trade();
        t.seq = 9;
        let input = proto_bytes(&[
            hello("cb-1", "s3cret"),
            msg(Body::Snapshot(snapshot())),
            msg(Body::Delta(delta())),
            msg(Body::Trade(t.clone())),
        ]);
        let out = run_every_split(Framing::Protobuf, Some("s3cret"), &input, &btc);
        assert_eq!(
            out,
            vec![
                ok(Decoded::Hello {
                    feed_id: "cb-1".into()
                }),
                ok(Decoded::Snapshot(snapshot())),
                ok(Decoded::Delta(delta())),
                ok(Decoded::Trade(t)),
            ]
        );
    }

    // -- Mixed streams: rejections don't disturb, a stream error ends ---------

    #[test]
    fn proto_mixed_stream_is_split_invariant() {
        let mut bad_side = delta();
        bad_side.updates[0].side = 0;
        let mut input = proto_bytes(&[
            msg(Body::Snapshot(snapshot())),
            msg(Body::Delta(bad_side)),
            msg(Body::Trade(trade())),
            pb::IngestMessage { body: None },
            hello("late", ""),
            msg(Body::Delta(delta())),
        ]);
        // Then a length prefix over 1 MiB, then bytes never looked at.
        prost::encoding::encode_varint(MAX_INGEST_FRAME_BYTES as u64 + 1, &mut input);
        input.extend_from_slice(&proto_bytes(&[msg(Body::Delta(delta()))]));
        let out = run_every_split(Framing::Protobuf, None, &input, &btc);
        assert_eq!(
            out,
            vec![
                ok(Decoded::Snapshot(snapshot())),
                rejected_delta(
                    RejectReason::BadLevel(
                        "update at price 3000050 has side 0; must be BID or ASK".into()
                    ),
                    "BTC-USD"
                ),
                ok(Decoded::Trade(trade())),
                rejected(RejectReason::EmptyMessage),
                rejected(RejectReason::LateHello),
                ok(Decoded::Delta(delta())),
                Err(StreamError::FrameTooLarge(
                    MAX_INGEST_FRAME_BYTES as u64 + 1
                )),
            ]
        );
    }

    #[test]
    fn json_mixed_stream_is_split_invariant() {
        let input = [
            "",
            EXAMPLE_LINES[1],
            "   ",
            r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[["30000.505","1"]]}"#,
            EXAMPLE_LINES[3],
            r#"{"type":"quote","symbol":"BTC-USD"}"#,
            EXAMPLE_LINES[0],
            EXAMPLE_LINES[2],
            "[1,2]",
            EXAMPLE_LINES[2],
        ]
        .join("\r\n");
        let out = run_every_split(Framing::JsonLines, None, input.as_bytes(), &btc);
        assert_eq!(out.len(), 7, "{out:?}");
        assert_eq!(out[0], ok(Decoded::Snapshot(snapshot())));
        assert!(
            matches!(&out[1], Ok(Err(Rejection { reason: RejectReason::BadDecimal(_), delta_symbol: Some(s) })) if s == "BTC-USD"),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], ok(Decoded::Trade(trade())));
        assert_eq!(
            out[3],
            rejected(RejectReason::BadMessage("unknown type \"quote\"".into()))
        );
        assert_eq!(out[4], rejected(RejectReason::LateHello));
        assert_eq!(out[5], ok(Decoded::Delta(delta())));
        assert!(
            matches!(out[6], Err(StreamError::NotJsonObject(_))),
            "{:?}",
            out[6]
        );
    }

    #[test]
    fn any_strict_prefix_needs_more_bytes() {
        for framing in [Framing::Protobuf, Framing::JsonLines] {
            let m = msg(Body::Snapshot(snapshot()));
            let input = if framing == Framing::Protobuf {
                proto_bytes(&[m])
            } else {
                json_bytes(&[m])
            };
            for n in 0..input.len() {
                let mut d = decoder(framing, None, MAX_INGEST_FRAME_BYTES);
                d.handle_bytes(&input[..n]);
                assert_eq!(d.poll_message(&btc), Ok(None), "{framing:?} prefix {n}");
                assert_eq!(d.buffered_bytes(), n);
                d.handle_bytes(&input[n..]);
                assert_eq!(
                    d.poll_message(&btc),
                    Ok(Some(Ok(Decoded::Snapshot(snapshot()))))
                );
                assert_eq!(d.poll_message(&btc), Ok(None));
                assert_eq!(d.buffered_bytes(), 0);
            }
        }
    }

    #[test]
    fn warm_buffer_never_reallocates() {
        for framing in [Framing::Protobuf, Framing::JsonLines] {
            let one = msg(Body::Delta(delta()));
            let input: Vec<u8> = std::iter::repeat_n(one, 5_000)
                .flat_map(|m| {
                    if framing == Framing::Protobuf {
                        proto_bytes(&[m])
                    } else {
                        json_bytes(&[m])
                    }
                })
                .collect();
            let mut d = decoder(framing, None, MAX_INGEST_FRAME_BYTES);
            let capacity = d.buf.capacity();
            let mut n = 0;
            for chunk in input.chunks(4096 + 7) {
                d.handle_bytes(chunk);
                while let Ok(Some(m)) = d.poll_message(&btc) {
                    assert_eq!(m, Ok(Decoded::Delta(delta())));
                    n += 1;
                }
                assert_eq!(d.buf.capacity(), capacity, "{framing:?}");
            }
            assert_eq!(n, 5_000);
        }
    }

    // -- Unreadable streams ---------------------------------------------------

    #[test]
    fn frame_too_large_as_soon_as_the_length_is_read() {
        let mut d = decoder(Framing::Protobuf, None, MAX_INGEST_FRAME_BYTES);
        let mut prefix = Vec::new();
        prost::encoding::encode_varint(MAX_INGEST_FRAME_BYTES as u64 + 1, &mut prefix);
        d.handle_bytes(&prefix);
        assert_eq!(
            d.poll_message(&btc),
            Err(StreamError::FrameTooLarge(1_048_577))
        );
        // Exactly 1 MiB is allowed: the decoder waits for the bytes.
        let mut d = decoder(Framing::Protobuf, None, MAX_INGEST_FRAME_BYTES);
        prefix.clear();
        prost::encoding::encode_varint(MAX_INGEST_FRAME_BYTES as u64, &mut prefix);
        d.handle_bytes(&prefix);
        assert_eq!(d.poll_message(&btc), Ok(None));
        // A configured smaller limit.
        let mut d = decoder(Framing::Protobuf, None, 100);
        d.handle_bytes(&[101]);
        assert_eq!(d.poll_message(&btc), Err(StreamError::FrameTooLarge(101)));
    }

    #[test]
    fn over_long_or_overflowing_varints_are_bad_lengths() {
        let mut d = decoder(Framing::Protobuf, None, MAX_INGEST_FRAME_BYTES);
        for _ in 0..9 {
            d.handle_bytes(&[0xff]);
            assert_eq!(d.poll_message(&btc), Ok(None));
        }
        d.handle_bytes(&[0xff]);
        assert_eq!(d.poll_message(&btc), Err(StreamError::BadLength));
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(
            run_whole(Framing::Protobuf, None, &over, &btc),
            vec![Err(StreamError::BadLength)]
        );
        // 10 bytes holding exactly u64::MAX: a valid varint, just too large.
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(
            run_whole(Framing::Protobuf, None, &max, &btc),
            vec![Err(StreamError::FrameTooLarge(u64::MAX))]
        );
    }

    #[test]
    fn undecodable_protobuf_closes() {
        for frame in [
            &[0x02, 0x0a, 0x05][..], // snapshot field, length 5, 1 byte left in the frame
            &[0x01, 0x0f],           // wire type 7
            &[0x02, 0x0a, 0xff],     // truncated varint inside
            &[0x03, 0x22, 0x01, 0xff], // hello field holding a truncated field
        ] {
            let out = run_every_split(Framing::Protobuf, None, frame, &btc);
            assert!(
                matches!(out[..], [Err(StreamError::Undecodable(_))]),
                "{frame:?}: {out:?}"
            );
        }
        // Invalid UTF-8 in a string field.
        let out = run_whole(
            Framing::Protobuf,
            None,
            &[0x05, 0x22, 0x03, 0x0a, 0x01, 0xff],
            &btc,
        );
        assert!(
            matches!(out[..], [Err(StreamError::Undecodable(_))]),
            "{out:?}"
        );
    }

    #[test]
    fn json_lines_that_are_not_objects_close() {
        for line in [
            "[1]",
            "5",
            "\"s\"",
            "null",
            "true",
            "garbage",
            "{\"a\":1} x",
            "{\"a\":1}}",
            "{",
            "{\"a\":\"\\ud800\"}",
            "\u{feff}{}",
        ] {
            let out = run_whole(Framing::JsonLines, None, &lines(&[line]), &btc);
            assert!(
                matches!(out[..], [Err(StreamError::NotJsonObject(_))]),
                "{line:?}: {out:?}"
            );
        }
        let out = run_whole(Framing::JsonLines, None, b"{\"type\":\"\xff\"}\n", &btc);
        assert!(
            matches!(out[..], [Err(StreamError::NotJsonObject(_))]),
            "{out:?}"
        );
        assert_eq!(
            run_whole(Framing::JsonLines, None, b"[1]\n", &btc),
            vec![Err(StreamError::NotJsonObject(
                "a JSON array, not an object".into()
            ))]
        );
    }

    #[test]
    fn deep_nesting_closes_the_stream_without_recursing() {
        // The crash input: one line of 500,000 `[`, before any token check.
        let mut line = vec![b'['; 500_000];
        line.push(b'\n');
        let out = run_whole(Framing::JsonLines, Some("secret"), &line, &btc);
        assert_eq!(
            out,
            vec![Err(StreamError::NotJsonObject(format!(
                "JSON nested deeper than {MAX_JSON_DEPTH} levels"
            )))]
        );
        // A line at the limit is parsed (then rejected for what it says).
        let at_limit = format!(
            r#"{{"type":"hello","feed_id":"x","x":{}1{}}}"#,
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        let out = run_whole(Framing::JsonLines, None, &lines(&[&at_limit]), &btc);
        assert!(
            matches!(out[..], [Ok(Ok(Decoded::Hello { .. }))]),
            "{out:?}"
        );
    }

    #[test]
    fn line_too_long_as_soon_as_the_buffer_passes_the_limit() {
        let mut d = decoder(Framing::JsonLines, None, 64);
        d.handle_bytes(&[b' '; 64]);
        assert_eq!(d.poll_message(&btc), Ok(None));
        d.handle_bytes(b" ");
        assert_eq!(d.poll_message(&btc), Err(StreamError::LineTooLong));
        // A line of exactly the limit is fine.
        let mut line = br#"{"type":"hello","feed_id":"x"}"#.to_vec();
        line.resize(64, b' ');
        let mut d = decoder(Framing::JsonLines, None, 64);
        d.handle_bytes(&line);
        assert_eq!(d.poll_message(&btc), Ok(None));
        d.handle_bytes(b"\n");
        assert_eq!(
            d.poll_message(&btc),
            Ok(Some(Ok(Decoded::Hello {
                feed_id: "x".into()
            })))
        );
        // Over the limit with the newline in the same read.
        line.extend_from_slice(b" \n");
        let mut d = decoder(Framing::JsonLines, None, 64);
        assert_eq!(
            run(&mut d, [&line[..]], &btc),
            vec![Err(StreamError::LineTooLong)]
        );
        // The 1 MiB default, in 64 KiB reads: the error comes with the read that
        // crosses the limit, and the buffer never holds more than limit + one read.
        let mut d = decoder(Framing::JsonLines, None, MAX_INGEST_FRAME_BYTES);
        let chunk = vec![b'x'; 64 * 1024];
        for i in 1..=16 {
            d.handle_bytes(&chunk);
            assert_eq!(d.poll_message(&btc), Ok(None), "read {i}");
        }
        d.handle_bytes(b"x");
        assert_eq!(d.poll_message(&btc), Err(StreamError::LineTooLong));
    }

    #[test]
    fn crlf_and_blank_lines() {
        let input = format!(
            "\n\r\n \t \r\n{}\r\n\r\n{}\n",
            EXAMPLE_LINES[0], EXAMPLE_LINES[1]
        );
        let out = run_every_split(Framing::JsonLines, None, input.as_bytes(), &btc);
        assert_eq!(
            out,
            vec![
                ok(Decoded::Hello {
                    feed_id: "cb-1".into()
                }),
                ok(Decoded::Snapshot(snapshot()))
            ]
        );
    }

    // -- Hello and token ------------------------------------------------------

    #[test]
    fn token_requires_a_first_hello() {
        let snap = msg(Body::Snapshot(snapshot()));
        for first in [
            snap.clone(),
            pb::IngestMessage { body: None },
            msg(Body::Delta(pb::BookDelta::default())),
        ] {
            let input = proto_bytes(&[first, hello("f", "tok")]);
            assert_eq!(
                run_every_split(Framing::Protobuf, Some("tok"), &input, &btc),
                vec![Err(StreamError::MissingHello)]
            );
        }
        let input = lines(&[EXAMPLE_LINES[1], EXAMPLE_LINES[0]]);
        assert_eq!(
            run_every_split(Framing::JsonLines, Some("…"), &input, &btc),
            vec![Err(StreamError::MissingHello)]
        );
        // A malformed JSON hello is not a Hello.
        let input = lines(&[r#"{"type":"hello","feed_id":"f","token":7}"#]);
        assert_eq!(
            run_whole(Framing::JsonLines, Some("7"), &input, &btc),
            vec![Err(StreamError::MissingHello)]
        );
    }

    #[test]
    fn wrong_token_closes() {
        for given in ["", "tok", "tok1", "sec", "secreT", "secret ", "\u{0}secret"] {
            let input = proto_bytes(&[hello("f", given), msg(Body::Snapshot(snapshot()))]);
            assert_eq!(
                run_whole(Framing::Protobuf, Some("secret"), &input, &btc),
                vec![Err(StreamError::BadToken)]
            );
            let input = json_bytes(&[hello("f", given)]);
            assert_eq!(
                run_whole(Framing::JsonLines, Some("secret"), &input, &btc),
                vec![Err(StreamError::BadToken)]
            );
        }
        // A JSON hello without a token has the empty token.
        let input = lines(&[r#"{"type":"hello","feed_id":"f"}"#]);
        assert_eq!(
            run_whole(Framing::JsonLines, Some("secret"), &input, &btc),
            vec![Err(StreamError::BadToken)]
        );
    }

    #[test]
    fn right_token_or_no_token() {
        let input = proto_bytes(&[hello("f", "secret"), msg(Body::Trade(trade()))]);
        let expected = vec![
            ok(Decoded::Hello {
                feed_id: "f".into(),
            }),
            ok(Decoded::Trade(trade())),
        ];
        assert_eq!(
            run_whole(Framing::Protobuf, Some("secret"), &input, &btc),
            expected
        );
        // Without a configured token, any token is accepted and the Hello is optional.
        assert_eq!(run_whole(Framing::Protobuf, None, &input, &btc), expected);
        let input = proto_bytes(&[msg(Body::Trade(trade()))]);
        assert_eq!(
            run_whole(Framing::Protobuf, None, &input, &btc),
            vec![ok(Decoded::Trade(trade()))]
        );
        let d = decoder(Framing::Protobuf, Some("hunter2"), 10);
        assert!(!format!("{d:?}").contains("hunter2"), "{d:?}");
        assert!(!format!("{d:?}").contains("hunter2"));
    }

    #[test]
    fn late_hello_is_rejected_and_the_connection_stays() {
        let input = proto_bytes(&[
            hello("f", "secret"),
            hello("g", "secret"),
            hello("h", "wrong"),
            msg(Body::Delta(delta())),
        ]);
        assert_eq!(
            run_every_split(Framing::Protobuf, Some("secret"), &input, &btc),
            vec![
                ok(Decoded::Hello {
                    feed_id: "f".into()
                }),
                rejected(RejectReason::LateHello),
                rejected(RejectReason::LateHello),
                ok(Decoded::Delta(delta())),
            ]
        );
    }

    /// A token file: the token names the feed (its Hello may leave the name
    /// empty or repeat it); another feed's name, or an unknown token,
    /// closes; a reload that drops the token revokes the connected feed.
    #[test]
    fn token_file_names_the_feed_and_can_revoke_it() {
        let file = b"coinbase-1 aaaaaaaaaaaaaaaa1\nbinance-1 bbbbbbbbbbbbbbbb2\n";
        let tokens = Arc::new(FeedTokens::parse_file(file).unwrap());
        let run = |feed_id: &str, token: &str| {
            let mut d = FeedDecoder::with_tokens(
                Framing::Protobuf,
                Some(tokens.clone()),
                MAX_INGEST_FRAME_BYTES,
            );
            d.handle_bytes(&proto_bytes(&[hello(feed_id, token)]));
            (d.poll_message(&btc), d)
        };
        for feed_id in ["", "coinbase-1"] {
            let (out, d) = run(feed_id, "aaaaaaaaaaaaaaaa1");
            assert_eq!(
                out,
                Ok(Some(Ok(Decoded::Hello {
                    feed_id: "coinbase-1".into()
                })))
            );
            assert!(d.still_admitted(Some(&tokens)));
            let revoked = FeedTokens::parse_file(b"binance-1 bbbbbbbbbbbbbbbb2\n").unwrap();
            assert!(!d.still_admitted(Some(&revoked)));
            assert!(!format!("{d:?}").contains("aaaa"), "{d:?}");
        }
        for (feed_id, token) in [
            ("binance-1", "aaaaaaaaaaaaaaaa1"),
            ("", "cccccccccccccccc3"),
            ("", ""),
        ] {
            assert_eq!(run(feed_id, token).0, Err(StreamError::BadToken));
        }
    }

    // -- Readable but invalid -------------------------------------------------

    /// Each bad message, followed by a valid delta that must still decode.
    fn assert_rejected_then_next_decodes(framing: Framing, bad: &[u8], expected: Outcome) {
        let mut input = bad.to_vec();
        let next = msg(Body::Delta(delta()));
        input.extend(if framing == Framing::Protobuf {
            proto_bytes(&[next])
        } else {
            json_bytes(&[next])
        });
        let out = run_every_split(framing, None, &input, &btc);
        assert_eq!(
            out,
            vec![expected, ok(Decoded::Delta(delta()))],
            "{}",
            String::from_utf8_lossy(bad)
        );
    }

    #[test]
    fn invalid_symbols_are_rejected() {
        for symbol in ["", "BTC USD", "BTC#USD", "ÉTH", &"X".repeat(33)] {
            let mut s = snapshot();
            s.symbol = symbol.into();
            let mut d = delta();
            d.symbol = symbol.into();
            let mut t = trade();
            t.symbol = symbol.into();
            let reason = RejectReason::InvalidSymbol(excerpt(symbol));
            for m in [
                msg(Body::Snapshot(s)),
                msg(Body::Delta(d)),
                msg(Body::Trade(t)),
            ] {
                // An invalid symbol is not a book: no `delta_symbol`.
                assert_rejected_then_next_decodes(
                    Framing::Protobuf,
                    &proto_bytes(std::slice::from_ref(&m)),
                    rejected(reason.clone()),
                );
                assert_rejected_then_next_decodes(
                    Framing::JsonLines,
                    &json_bytes(&[m]),
                    rejected(reason.clone()),
                );
            }
        }
        assert_eq!(excerpt(&"é".repeat(50)), format!("{}…", "é".repeat(40)));
        assert_eq!(excerpt("a\nb"), "a\\nb");
    }

    #[test]
    fn inexact_decimals_are_rejected() {
        let bad = |what: &str, s: &str, d: u32| {
            RejectReason::BadDecimal(format!(
                "{what} \"{s}\": {}",
                DecimalError::TooPrecise { decimals: d }
            ))
        };
        let line =
            r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[],"asks":[["30000.505","1"]]}"#;
        assert_rejected_then_next_decodes(
            Framing::JsonLines,
            &lines(&[line]),
            rejected_delta(bad("price", "30000.505", 2), "BTC-USD"),
        );
        let line = r#"{"type":"trade","symbol":"BTC-USD","price":"1","size":"0.00001"}"#;
        assert_rejected_then_next_decodes(
            Framing::JsonLines,
            &lines(&[line]),
            rejected(bad("size", "0.00001", 4)),
        );
        let line = r#"{"type":"snapshot","symbol":"ETH-USD","seq":1,"price_decimals":0,"size_decimals":0,"bids":[["1.5","1"]]}"#;
        assert_rejected_then_next_decodes(
            Framing::JsonLines,
            &lines(&[line]),
            rejected(bad("price", "1.5", 0)),
        );
        for s in ["1e5", "+1", " 1", "", "1.", ".5"] {
            let line =
                format!(r#"{{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[["{s}","1"]]}}"#);
            let out = run_whole(Framing::JsonLines, None, &lines(&[&line]), &btc);
            assert!(
                matches!(
                    &out[..],
                    [Ok(Err(Rejection {
                        reason: RejectReason::BadDecimal(_),
                        delta_symbol: Some(_)
                    }))]
                ),
                "{s:?}: {out:?}"
            );
        }
        let line = r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[["1","-1"]]}"#;
        let out = one_json(line);
        assert!(
            matches!(
                out,
                Ok(Err(Rejection {
                    reason: RejectReason::BadDecimal(_),
                    ..
                }))
            ),
            "{out:?}"
        );
    }

    #[test]
    fn delta_or_trade_without_known_decimals() {
        let line = r#"{"type":"delta","symbol":"ETH-USD","seq":2,"bids":[["1","1"]]}"#;
        assert_rejected_then_next_decodes(
            Framing::JsonLines,
            &lines(&[line]),
            rejected_delta(RejectReason::NoSnapshot("ETH-USD".into()), "ETH-USD"),
        );
        let line = r#"{"type":"trade","symbol":"ETH-USD","price":"1","size":"1"}"#;
        assert_rejected_then_next_decodes(
            Framing::JsonLines,
            &lines(&[line]),
            rejected(RejectReason::NoSnapshot("ETH-USD".into())),
        );
        // A JSON snapshot brings its own decimals; protobuf needs none.
        let line = r#"{"type":"snapshot","symbol":"ETH-USD","seq":1,"price_decimals":1,"size_decimals":0,"bids":[["-1.5","3"]]}"#;
        let out = one_json(line);
        assert!(
            matches!(&out, Ok(Ok(Decoded::Snapshot(s))) if s.bids == [pb::Level { price: -15, size: 3 }]),
            "{out:?}"
        );
    }

    #[test]
    fn empty_oneof_is_rejected() {
        assert_rejected_then_next_decodes(
            Framing::Protobuf,
            &[0x00],
            rejected(RejectReason::EmptyMessage),
        );
        // Only unknown fields: still an empty oneof (prost skips them).
        assert_rejected_then_next_decodes(
            Framing::Protobuf,
            &[0x02, 0x50, 0x01],
            rejected(RejectReason::EmptyMessage),
        );
    }

    #[test]
    fn bad_delta_updates_are_rejected_with_the_symbol() {
        for (side, size, why) in [
            (0, 1, "update at price 5 has side 0; must be BID or ASK"),
            (3, 1, "update at price 5 has side 3; must be BID or ASK"),
            (-1, 1, "update at price 5 has side -1; must be BID or ASK"),
            (1, -1, "update at price 5 has size -1; must be >= 0"),
        ] {
            let mut d = delta();
            d.updates.push(pb::LevelUpdate {
                side,
                price: 5,
                size,
            });
            let bad = proto_bytes(&[msg(Body::Delta(d))]);
            assert_rejected_then_next_decodes(
                Framing::Protobuf,
                &bad,
                rejected_delta(RejectReason::BadLevel(why.into()), "BTC-USD"),
            );
        }
        // Size 0 removes; an empty delta is fine.
        let mut d = delta();
        d.updates.clear();
        assert_eq!(
            one(
                Framing::Protobuf,
                &proto_bytes(&[msg(Body::Delta(d.clone()))])
            ),
            ok(Decoded::Delta(d))
        );
    }

    #[test]
    fn bad_snapshots_are_rejected() {
        let check = |s: pb::BookSnapshot, reason: RejectReason| {
            assert_rejected_then_next_decodes(
                Framing::Protobuf,
                &proto_bytes(&[msg(Body::Snapshot(s.clone()))]),
                rejected(reason.clone()),
            );
            assert_rejected_then_next_decodes(
                Framing::JsonLines,
                &json_bytes(&[msg(Body::Snapshot(s))]),
                rejected(reason),
            );
        };
        for d in [-1, 19, i32::MIN, i32::MAX] {
            let mut s = snapshot();
            s.price_decimals = d;
            check(s, RejectReason::BadDecimals(d));
            let mut s = snapshot();
            s.size_decimals = d;
            check(s, RejectReason::BadDecimals(d));
        }
        let mut s = snapshot();
        s.asks.push(pb::Level {
            price: 3_000_200,
            size: 0,
        });
        check(
            s,
            RejectReason::BadLevel(
                "ask level at price 3000200 has size 0; snapshot sizes must be > 0".into(),
            ),
        );
        let mut s = snapshot();
        s.bids = vec![
            pb::Level { price: 5, size: 1 },
            pb::Level { price: 3, size: 1 },
            pb::Level { price: 4, size: 1 },
            pb::Level { price: 3, size: 2 },
        ];
        check(
            s,
            RejectReason::BadLevel("bid price 3 appears twice in the snapshot".into()),
        );
        let mut s = snapshot();
        s.asks = vec![
            pb::Level { price: 7, size: 1 },
            pb::Level { price: 7, size: 1 },
        ];
        check(
            s,
            RejectReason::BadLevel("ask price 7 appears twice in the snapshot".into()),
        );
        // Distinct prices in any order, negative prices, an empty book: accepted.
        let mut s = snapshot();
        s.bids = vec![
            pb::Level { price: 5, size: 1 },
            pb::Level { price: -3, size: 1 },
            pb::Level { price: 4, size: 1 },
        ];
        s.asks.clear();
        assert_eq!(
            one(
                Framing::Protobuf,
                &proto_bytes(&[msg(Body::Snapshot(s.clone()))])
            ),
            ok(Decoded::Snapshot(s.clone()))
        );
        assert_eq!(
            one(
                Framing::JsonLines,
                &json_bytes(&[msg(Body::Snapshot(s.clone()))])
            ),
            ok(Decoded::Snapshot(s))
        );
    }

    #[test]
    fn bad_trades_are_rejected() {
        for size in [0, -1] {
            let mut t = trade();
            t.size = size;
            let reason = RejectReason::BadMessage(format!("trade size {size} must be > 0"));
            assert_rejected_then_next_decodes(
                Framing::Protobuf,
                &proto_bytes(&[msg(Body::Trade(t))]),
                rejected(reason),
            );
        }
        let line = r#"{"type":"trade","symbol":"BTC-USD","price":"1","size":"0"}"#;
        assert_rejected_then_next_decodes(
            Framing::JsonLines,
            &lines(&[line]),
            rejected(RejectReason::BadMessage("trade size 0 must be > 0".into())),
        );
        let mut t = trade();
        t.aggressor = 7;
        let reason = RejectReason::BadMessage("trade aggressor 7 is not a Side".into());
        assert_rejected_then_next_decodes(
            Framing::Protobuf,
            &proto_bytes(&[msg(Body::Trade(t))]),
            rejected(reason),
        );
        // Any price, including negative; no aggressor.
        let mut t = trade();
        t.price = i64::MIN;
        t.aggressor = 0;
        assert_eq!(
            one(
                Framing::Protobuf,
                &proto_bytes(&[msg(Body::Trade(t.clone()))])
            ),
            ok(Decoded::Trade(t.clone()))
        );
        assert_eq!(
            one(
                Framing::JsonLines,
                &json_bytes(&[msg(Body::Trade(t.clone()))])
            ),
            ok(Decoded::Trade(t))
        );
    }

    #[test]
    fn json_shape_errors_are_bad_messages() {
        let delta_lines = [
            (r#"{"type":"delta","symbol":"BTC-USD"}"#, "missing \"seq\""),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":"2"}"#,
                "\"seq\" must be an integer in 0..=2^64-1",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":-2}"#,
                "\"seq\" must be an integer in 0..=2^64-1",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2.5}"#,
                "\"seq\" must be an integer in 0..=2^64-1",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2e0}"#,
                "\"seq\" must be an integer in 0..=2^64-1",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":18446744073709551616}"#,
                "\"seq\" must be an integer in 0..=2^64-1",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2,"exchange_ts_ns":"1"}"#,
                "\"exchange_ts_ns\" must be an integer in 0..=2^64-1",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":{}}"#,
                "\"bids\" must be an array of [price, size] pairs",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2,"bids":[["1","1","1"]]}"#,
                "\"bids\" must be an array of [price, size] pairs of decimal strings",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2,"asks":[[1,1]]}"#,
                "\"asks\" must be an array of [price, size] pairs of decimal strings",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2,"asks":["1","1"]}"#,
                "\"asks\" must be an array of [price, size] pairs of decimal strings",
            ),
            (
                r#"{"type":"delta","symbol":"BTC-USD","seq":2,"seq":3}"#,
                "field \"seq\" given twice",
            ),
        ];
        for (line, why) in delta_lines {
            assert_rejected_then_next_decodes(
                Framing::JsonLines,
                &lines(&[line]),
                rejected_delta(RejectReason::BadMessage(why.into()), "BTC-USD"),
            );
        }
        let other_lines = [
            (r#"{}"#, "missing or non-string \"type\""),
            (r#"{"type":5}"#, "missing or non-string \"type\""),
            (
                r#"{"type":"Delta","symbol":"BTC-USD"}"#,
                "unknown type \"Delta\"",
            ),
            (r#"{"type":"delta","seq":2}"#, "missing \"symbol\""),
            (
                r#"{"type":"delta","symbol":["BTC-USD"],"seq":2}"#,
                "\"symbol\" must be a string",
            ),
            (
                r#"{"type":"snapshot","symbol":"BTC-USD","seq":1,"size_decimals":4}"#,
                "missing \"price_decimals\"",
            ),
            (
                r#"{"type":"snapshot","symbol":"BTC-USD","seq":1,"price_decimals":"2","size_decimals":4}"#,
                "\"price_decimals\" must be an integer",
            ),
            (
                r#"{"type":"snapshot","symbol":"BTC-USD","price_decimals":2,"size_decimals":4}"#,
                "missing \"seq\"",
            ),
            (
                r#"{"type":"trade","symbol":"BTC-USD","price":"1"}"#,
                "missing \"size\"",
            ),
            (
                r#"{"type":"trade","symbol":"BTC-USD","price":1,"size":"1"}"#,
                "\"price\" must be a string",
            ),
            (
                r#"{"type":"trade","symbol":"BTC-USD","price":"1","size":"1","aggressor":"BUY"}"#,
                "\"aggressor\" must be \"bid\", \"ask\" or \"\"",
            ),
            (
                r#"{"type":"trade","symbol":"BTC-USD","price":"1","size":"1","trade_id":5}"#,
                "\"trade_id\" must be a string",
            ),
            (
                r#"{"type":"trade","type":"trade","symbol":"BTC-USD","price":"1","size":"1"}"#,
                "field \"type\" given twice",
            ),
        ];
        for (line, why) in other_lines {
            assert_rejected_then_next_decodes(
                Framing::JsonLines,
                &lines(&[line]),
                rejected(RejectReason::BadMessage(why.into())),
            );
        }
    }

    #[test]
    fn json_unknown_fields_and_nulls_are_ignored() {
        let line = r#"{"venue":{"x":[1,2,{"y":null}]},"type":"trade","symbol":"BTC-USD","price":"30000.50","size":"0.0100","aggressor":"bid","trade_id":"t-1","exchange_ts_ns":1732870000000600000,"ingest_ts_ns":5,"checksum":9,"bids":"ignored on a trade","seq":null,"extra":null}"#;
        assert_eq!(one_json(line), ok(Decoded::Trade(trade())));
        let line = r#"{ "type" : "delta" , "symbol":"BTC-USD","seq":2,"asks":null,"bids":[["30000.5","0.0"]],"exchange_ts_ns":1732870000000500000,"future":true }"#;
        assert_eq!(one_json(line), ok(Decoded::Delta(delta())));
        let line = r#"{"type":"trade","symbol":"BTC-USD","price":"1","size":"1","aggressor":""}"#;
        let out = one_json(line);
        assert!(
            matches!(&out, Ok(Ok(Decoded::Trade(t))) if t.aggressor == 0 && t.seq == 0 && t.trade_id.is_empty()),
            "{out:?}"
        );
    }

    // -- Properties -----------------------------------------------------------

    fn symbol_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._:/-]{1,32}"
    }

    fn levels_strategy() -> impl Strategy<Value = Vec<pb::Level>> {
        prop::collection::btree_map(any::<i64>(), 1..=i64::MAX, 0..6).prop_map(|m| {
            m.into_iter()
                .rev()
                .map(|(price, size)| pb::Level { price, size })
                .collect()
        })
    }

    fn snapshot_strategy() -> impl Strategy<Value = pb::BookSnapshot> {
        (
            symbol_strategy(),
            any::<u64>(),
            levels_strategy(),
            levels_strategy(),
            0..=18i32,
            0..=18i32,
            any::<u64>(),
        )
            .prop_map(
                |(symbol, seq, bids, asks, price_decimals, size_decimals, exchange_ts_ns)| {
                    pb::BookSnapshot {
                        symbol,
                        seq,
                        bids,
                        asks,
                        price_decimals,
                        size_decimals,
                        exchange_ts_ns,
                        ingest_ts_ns: 0,
                        checksum: 0,
                        epoch: 0,
                        channel: String::new(),
                    }
                },
            )
    }

    fn delta_strategy() -> impl Strategy<Value = pb::BookDelta> {
        let update = (1..=2i32, any::<i64>(), 0..=i64::MAX)
            .prop_map(|(side, price, size)| pb::LevelUpdate { side, price, size });
        (
            symbol_strategy(),
            any::<u64>(),
            prop::collection::vec(update, 0..6),
            any::<u64>(),
        )
            .prop_map(|(symbol, seq, mut updates, exchange_ts_ns)| {
                // JSON carries bids then asks.
                updates.sort_by_key(|u| u.side);
                pb::BookDelta {
                    symbol,
                    seq,
                    updates,
                    exchange_ts_ns,
                    ingest_ts_ns: 0,
                    checksum: 0,
                    channel: String::new(),
                    prev_seq: 0,
                }
            })
    }

    fn trade_strategy() -> impl Strategy<Value = pb::Trade> {
        (
            symbol_strategy(),
            any::<i64>(),
            1..=i64::MAX,
            0..=2i32,
            any::<String>(),
            any::<u64>(),
        )
            .prop_map(
                |(symbol, price, size, aggressor, trade_id, exchange_ts_ns)| pb::Trade {
                    symbol,
                    seq: 0,
                    price,
                    size,
                    aggressor,
                    exchange_ts_ns,
                    ingest_ts_ns: 0,
                    trade_id,
                },
            )
    }

    fn message_strategy() -> impl Strategy<Value = pb::IngestMessage> {
        prop_oneof![
            snapshot_strategy().prop_map(|s| msg(Body::Snapshot(s))),
            delta_strategy().prop_map(|d| msg(Body::Delta(d))),
            trade_strategy().prop_map(|t| msg(Body::Trade(t))),
            (any::<String>(), any::<String>()).prop_map(|(f, t)| hello(&f, &t)),
        ]
    }

    /// What decoding `msgs` must give: the first Hello is accepted, later ones rejected.
    fn expected(msgs: &[pb::IngestMessage]) -> Vec<Outcome> {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| match m.body.clone() {
                Some(Body::Hello(h)) if i == 0 => ok(Decoded::Hello { feed_id: h.feed_id }),
                Some(Body::Hello(_)) => rejected(RejectReason::LateHello),
                Some(Body::Snapshot(s)) => ok(Decoded::Snapshot(s)),
                Some(Body::Delta(d)) => ok(Decoded::Delta(d)),
                Some(Body::Trade(t)) => ok(Decoded::Trade(t)),
                None => rejected(RejectReason::EmptyMessage),
            })
            .collect()
    }

    /// Splits `input` into chunks at the given (sorted, deduplicated) cut points.
    fn chunks_at(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            out.push(input[last..c].to_vec());
            last = c;
        }
        out
    }

    proptest! {
        #[test]
        fn proto_round_trips_on_any_split(
            msgs in prop::collection::vec(message_strategy(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            ingest_ts_ns in any::<u64>(),
        ) {
            // Protobuf carries the fields JSON leaves out too.
            let msgs: Vec<_> = msgs.into_iter().map(|mut m| {
                match &mut m.body {
                    Some(Body::Delta(d)) => { d.ingest_ts_ns = ingest_ts_ns; d.checksum = 7; }
                    Some(Body::Trade(t)) => { t.seq = ingest_ts_ns; }
                    _ => {}
                }
                m
            }).collect();
            let input = proto_bytes(&msgs);
            let chunks = chunks_at(&input, &cuts);
            let out = run(&mut decoder(Framing::Protobuf, None, MAX_INGEST_FRAME_BYTES), chunks.iter().map(|c| &c[..]), &btc);
            prop_assert_eq!(out, expected(&msgs));
        }

        #[test]
        fn json_round_trips_on_any_split(
            msgs in prop::collection::vec(message_strategy(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            pd in 0u32..=18,
            sd in 0u32..=18,
        ) {
            let mut input = String::new();
            for m in &msgs {
                encode_json_line(m, pd, sd, &mut input);
            }
            let chunks = chunks_at(input.as_bytes(), &cuts);
            let decimals = move |_: &str| Some((pd, sd));
            let out = run(&mut decoder(Framing::JsonLines, None, MAX_INGEST_FRAME_BYTES), chunks.iter().map(|c| &c[..]), &decimals);
            prop_assert_eq!(out, expected(&msgs));
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            json in any::<bool>(),
            token in any::<bool>(),
        ) {
            let framing = if json { Framing::JsonLines } else { Framing::Protobuf };
            let chunks = chunks_at(&bytes, &cuts);
            let mut d = decoder(framing, token.then_some("t"), 256);
            let split = run(&mut d, chunks.iter().map(|c| &c[..]), &btc);
            let whole = run(&mut decoder(framing, token.then_some("t"), 256), [&bytes[..]], &btc);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn mutated_valid_streams_never_panic(
            msgs in prop::collection::vec(message_strategy(), 1..4),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            json in any::<bool>(),
        ) {
            let mut input = if json { json_bytes(&msgs) } else { proto_bytes(&msgs) };
            for (at, b) in flips {
                let at = at % input.len();
                input[at] = b;
            }
            let framing = if json { Framing::JsonLines } else { Framing::Protobuf };
            let whole = run_whole(framing, None, &input, &btc);
            let mut d = decoder(framing, None, MAX_INGEST_FRAME_BYTES);
            prop_assert_eq!(run(&mut d, input.chunks(3), &btc), whole);
        }
    }
}

#[cfg(test)]
mod fast_delta_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast path decodes every delta exactly as prost does.
        #[test]
        fn fast_delta_equals_prost_on_deltas(
            symbol in "[A-Za-z0-9._:/-]{0,40}",
            seq in any::<u64>(),
            updates in proptest::collection::vec((any::<i32>(), any::<i64>(), any::<i64>()), 0..40),
            ts in any::<(u64, u64, u32)>(),
        ) {
            let msg = pb::IngestMessage {
                body: Some(Body::Delta(pb::BookDelta {
                    symbol,
                    seq,
                    updates: updates.into_iter().map(|(side, price, size)| pb::LevelUpdate { side, price, size }).collect(),
                    exchange_ts_ns: ts.0,
                    ingest_ts_ns: ts.1,
                    checksum: ts.2, channel: String::new(), prev_seq: 0, })),
            };
            let bytes = msg.encode_to_vec();
            prop_assert_eq!(fast_delta(&bytes), Some(msg));
        }

        /// On any bytes, the fast path either declines or agrees with prost.
        #[test]
        fn fast_delta_never_disagrees_with_prost(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if !bytes.is_empty() && bytes[0] % 2 == 0 {
                bytes[0] = 0x12;
            }
            if let Some(fast) = fast_delta(&bytes) {
                prop_assert_eq!(pb::IngestMessage::decode(&bytes[..]).ok(), Some(fast));
            }
        }
    }

    #[test]
    fn fast_delta_declines_what_it_does_not_know() {
        let delta = pb::IngestMessage {
            body: Some(Body::Delta(pb::BookDelta {
                symbol: "A".into(),
                seq: 1,
                ..Default::default()
            })),
        };
        let mut bytes = delta.encode_to_vec();
        assert!(fast_delta(&bytes).is_some());
        bytes.extend_from_slice(&[0x38, 0x01]); // unknown field 7 after the delta
        assert_eq!(fast_delta(&bytes), None);
        let snap = pb::IngestMessage {
            body: Some(Body::Snapshot(pb::BookSnapshot::default())),
        };
        assert_eq!(fast_delta(&snap.encode_to_vec()), None);
        assert_eq!(fast_delta(&[0x12, 0x02, 0x0A, 0x01]), None, "truncated");
        assert_eq!(
            fast_delta(&[0x12, 0x03, 0x0A, 0x01, 0xFF]),
            None,
            "bad UTF-8"
        );
    }
}
