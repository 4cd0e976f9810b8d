//! Client requests (PROTOCOL §6): parsing and syntactic validation of one JSON
//! text frame into a [`Request`], or the `bad_request` answer.
//!
//! Run by a worker thread for each complete text message a client sends. Pure:
//! no sockets, no clock, no state. It must never panic on client input; every
//! failure is a [`RequestError`] that the worker turns into an `Error` answer.
//! The checks that need state (`too_many_subscriptions`, `unknown_symbol`) are
//! the worker's, in that order, after this one.

use std::collections::HashSet;

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use crate::book::derived::{Channel, ChannelError};
use crate::book::symbol::is_valid_symbol;
use crate::wire::nesting::nesting_exceeds;

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Subscribe,
    Unsubscribe,
}

/// The channels of a request: at most one book variant (PROTOCOL §9: a
/// connection holds one book channel per symbol) and `trades`, in the order
/// the client named them, without repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Channels {
    list: [Option<Channel>; 2],
}

impl Channels {
    /// `["book"]`, the default (PROTOCOL §6).
    pub fn book() -> Channels {
        Channels {
            list: [Some(Channel::BOOK), None],
        }
    }

    /// Adds `c`; a second, different book variant is refused (the caller
    /// answers `bad_request`).
    fn push(&mut self, c: Channel) -> Result<(), Channel> {
        if self.list.contains(&Some(c)) {
            return Ok(());
        }
        if let Some(held) = self.book_variant()
            && c.is_book()
        {
            return Err(held);
        }
        // One book variant and `trades` at most: a free slot remains.
        if let Some(slot) = self.list.iter_mut().find(|s| s.is_none()) {
            *slot = Some(c);
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = Channel> + '_ {
        self.list.iter().flatten().copied()
    }

    /// The book variant named, if any.
    pub fn book_variant(&self) -> Option<Channel> {
        self.iter().find(|c| c.is_book())
    }

    pub fn has_trades(&self) -> bool {
        self.list.contains(&Some(Channel::Trades))
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.list[0].is_none()
    }

    pub fn names(&self) -> Vec<String> {
        self.iter().map(|c| c.to_string()).collect()
    }
}

/// A syntactically valid request. `symbols` are valid names, without
/// repeats, in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub id: u64,
    pub symbols: Vec<String>,
    pub channels: Channels,
    /// PROTOCOL §10: where the client's books and trades stood, per symbol
    /// of `symbols` (subscribe only), in the client's order.
    pub resume: Vec<(String, ResumePoint)>,
}

/// `"resume":{"BTC-USD":{"epoch":7,"book":1234,"trades":88}}`: one symbol's
/// entry (PROTOCOL §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    pub epoch: u64,
    /// The last book seq the client holds.
    pub book: Option<u64>,
    /// The last trade seq the client holds.
    pub trades: Option<u64>,
}

/// A client request of any op: a subscription change, or `auth` (PROTOCOL §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    Subscription(Request),
    /// `{"op":"auth","token":"<jwt>","id":1}`: the token is not looked at
    /// here (its size is the verifier's to refuse).
    Auth {
        id: u64,
        token: String,
    },
}

/// The `code` of an `Error` answer (PROTOCOL §6, §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    TooManySubscriptions,
    UnknownSymbol,
    /// Over the connection's request rate (PROTOCOL §6; checked first).
    RateLimited,
    /// Outside the connection's entitlements, or a refresh with another
    /// user's (or an older) token (PROTOCOL §8).
    Forbidden,
    /// Not authenticated yet, or a bad token in an `auth` (PROTOCOL §8).
    Unauthorized,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::UnknownSymbol => "unknown_symbol",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

/// A refused request: the `Error{id, code, message}` answer to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message} (id {id})", code.as_str())]
pub struct RequestError {
    pub id: u64,
    pub code: ErrorCode,
    pub message: String,
}

fn bad(id: u64, message: impl Into<String>) -> RequestError {
    RequestError {
        id,
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

/// Longest symbol list accepted in one request; a longer one is a
/// `bad_request` (it could never pass the subscription limit anyway, and this
/// bounds the work a single frame can cause).
pub const MAX_SYMBOLS_PER_REQUEST: usize = 10_000;

/// Deepest nesting of arrays and objects accepted in a request; the deepest
/// the protocol defines is 3 (`resume` in §10). Deeper is a `bad_request`.
pub const MAX_REQUEST_DEPTH: usize = 8;

/// Parses one client text message that must be a subscription change
/// (`auth` is a `bad_request` here: see [`parse_client_request`]).
pub fn parse_request(text: &str) -> Result<Request, RequestError> {
    match parse_client_request(text)? {
        ClientRequest::Subscription(r) => Ok(r),
        ClientRequest::Auth { id, .. } => Err(bad(id, "unknown op \"auth\"")),
    }
}

/// Parses one client text message: a subscription change or an `auth`.
///
/// `id` is read first so that every later failure echoes it; an `id` that is
/// present but not a non-negative integer is itself a `bad_request` with id 0.
pub fn parse_client_request(text: &str) -> Result<ClientRequest, RequestError> {
    // Checked before the parser, which recurses per level (a stack overflow
    // would abort the process).
    if nesting_exceeds(text.as_bytes(), MAX_REQUEST_DEPTH) {
        return Err(bad(
            0,
            format!("request nests deeper than {MAX_REQUEST_DEPTH} levels"),
        ));
    }
    let v: Value = sonic_rs::from_str(text).map_err(|_| bad(0, "request is not JSON"))?;
    if !v.is_object() {
        return Err(bad(0, "request is not a JSON object"));
    }
    let id = match v.get("id") {
        None => 0,
        Some(x) => x
            .as_u64()
            .ok_or_else(|| bad(0, "id must be a non-negative integer"))?,
    };
    let op = match v.get("op").and_then(|o| o.as_str()) {
        Some("subscribe") => Op::Subscribe,
        Some("unsubscribe") => Op::Unsubscribe,
        Some("auth") => {
            let token = v
                .get("token")
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad(id, "token must be a string"))?;
            return Ok(ClientRequest::Auth {
                id,
                token: token.to_string(),
            });
        }
        Some(other) => return Err(bad(id, format!("unknown op {:?}", truncate(other)))),
        None => {
            return Err(bad(
                id,
                "op must be \"subscribe\", \"unsubscribe\" or \"auth\"",
            ));
        }
    };
    let channels = match v.get("channels") {
        None => Channels::book(),
        Some(c) => {
            let arr = c
                .as_array()
                .ok_or_else(|| bad(id, "channels must be an array of strings"))?;
            let mut channels = Channels::default();
            for item in arr.iter() {
                let name = item
                    .as_str()
                    .ok_or_else(|| bad(id, "channels must be an array of strings"))?;
                let channel = Channel::parse(name).map_err(|e| match e {
                    ChannelError::Unknown => {
                        bad(id, format!("unknown channel {:?}", truncate(name)))
                    }
                    // A book variant with a bad depth or interval: the
                    // rule, without echoing the name (messages stay short).
                    e => bad(id, e.to_string()),
                })?;
                channels.push(channel).map_err(|held| {
                    bad(
                        id,
                        format!("one book channel per symbol: {held} and {channel} both named"),
                    )
                })?;
            }
            if channels.is_empty() {
                return Err(bad(id, "channels is empty"));
            }
            channels
        }
    };
    let arr = v
        .get("symbols")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad(id, "symbols must be an array of strings"))?;
    // An empty unsubscribe changes nothing and is answered `Unsubscribed`:
    // the no-op that clients without WebSocket pings (browsers) send as a
    // keepalive probe (docs/protocol.md appendix D). Subscribing to nothing
    // is a mistake.
    if arr.is_empty() && op == Op::Subscribe {
        return Err(bad(id, "symbols is empty"));
    }
    if arr.len() > MAX_SYMBOLS_PER_REQUEST {
        return Err(bad(
            id,
            format!("more than {MAX_SYMBOLS_PER_REQUEST} symbols"),
        ));
    }
    let mut symbols: Vec<String> = Vec::with_capacity(arr.len());
    // Repeats are dropped through a set: a linear scan per symbol made one
    // request of 10,000 symbols cost 50 million comparisons.
    let mut seen: HashSet<&str> = HashSet::with_capacity(arr.len());
    for item in arr.iter() {
        let s = item
            .as_str()
            .ok_or_else(|| bad(id, "symbols must be an array of strings"))?;
        if !is_valid_symbol(s) {
            return Err(bad(id, format!("invalid symbol {:?}", truncate(s))));
        }
        if seen.insert(s) {
            symbols.push(s.to_string());
        }
    }
    let resume = match v.get("resume") {
        None => Vec::new(),
        Some(_) if op == Op::Unsubscribe => {
            return Err(bad(id, "resume is for subscribe"));
        }
        Some(r) => parse_resume(id, r, &seen)?,
    };
    Ok(ClientRequest::Subscription(Request {
        op,
        id,
        symbols,
        channels,
        resume,
    }))
}

/// The `resume` object of a subscribe: each key a symbol the request names,
/// each value `{"epoch":E}` with `book` and `trades` seqs, all non-negative
/// integers; anything else is a `bad_request`.
fn parse_resume(
    id: u64,
    r: &Value,
    symbols: &HashSet<&str>,
) -> Result<Vec<(String, ResumePoint)>, RequestError> {
    let obj = r
        .as_object()
        .ok_or_else(|| bad(id, "resume must be an object of symbols"))?;
    let mut out = Vec::with_capacity(obj.len());
    for (symbol, point) in obj.iter() {
        if !symbols.contains(symbol) {
            return Err(bad(
                id,
                format!(
                    "resume names {:?}, which the request does not subscribe",
                    truncate(symbol)
                ),
            ));
        }
        let point = point
            .as_object()
            .ok_or_else(|| bad(id, format!("resume of {symbol:?} must be an object")))?;
        let mut p = ResumePoint {
            epoch: 0,
            book: None,
            trades: None,
        };
        let mut epoch = None;
        for (k, v) in point.iter() {
            let n = v.as_u64().ok_or_else(|| {
                bad(
                    id,
                    format!(
                        "resume {symbol:?}: {:?} must be a non-negative integer",
                        truncate(k)
                    ),
                )
            })?;
            match k {
                "epoch" => epoch = Some(n),
                "book" => p.book = Some(n),
                "trades" => p.trades = Some(n),
                other => {
                    return Err(bad(
                        id,
                        format!("resume {symbol:?}: unknown field {:?}", truncate(other)),
                    ));
                }
            }
        }
        p.epoch = epoch.ok_or_else(|| bad(id, format!("resume {symbol:?}: epoch is missing")))?;
        if out.iter().any(|(s, _): &(String, ResumePoint)| s == symbol) {
            return Err(bad(id, format!("resume names {symbol:?} twice")));
        }
        out.push((symbol.to_string(), p));
    }
    Ok(out)
}

/// The `id` of a request that is refused before it is parsed (over the
/// request rate: PROTOCOL §6 echoes the id when it can be read). Reads only
/// that field, skipping the rest without building anything, so a flood of
/// big refused requests costs a scan each, not a parse.
pub fn request_id(text: &str) -> u64 {
    if nesting_exceeds(text.as_bytes(), MAX_REQUEST_DEPTH) {
        return 0;
    }
    sonic_rs::get_from_str(text, ["id"])
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// At most 40 chars of client input in an error message, and at most 40
/// once escaped for `{:?}`: a control character escapes to up to 10.
fn truncate(s: &str) -> &str {
    let mut escaped = 0;
    for (n, (i, c)) in s.char_indices().enumerate() {
        escaped += c.escape_debug().len();
        if n == 40 || escaped > 40 {
            return &s[..i];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (u64, ErrorCode) {
        let e = parse_request(text).expect_err(text);
        (e.id, e.code)
    }

    #[test]
    fn parses_a_full_subscribe() {
        let r = parse_request(r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD"],"channels":["book","trades"],"id":7}"#)
            .unwrap();
        assert_eq!(r.op, Op::Subscribe);
        assert_eq!(r.id, 7);
        assert_eq!(r.symbols, vec!["BTC-USD", "ETH-USD"]);
        assert_eq!(
            r.channels.iter().collect::<Vec<_>>(),
            vec![Channel::BOOK, Channel::Trades]
        );
    }

    #[test]
    fn defaults_and_dedup() {
        let r = parse_request(r#"{"op":"unsubscribe","symbols":["A","A","B"]}"#).unwrap();
        assert_eq!(r.op, Op::Unsubscribe);
        assert_eq!(r.id, 0);
        assert_eq!(r.symbols, vec!["A", "B"]);
        assert_eq!(r.channels, Channels::book());
        let r = parse_request(
            r#"{"channels":["trades","trades"],"op":"subscribe","symbols":["A"],"x":1}"#,
        )
        .unwrap();
        assert_eq!(r.channels.iter().collect::<Vec<_>>(), vec![Channel::Trades]);
        assert_eq!(r.channels.names(), vec!["trades"]);
    }

    #[test]
    fn bad_requests_echo_the_id_when_readable() {
        use ErrorCode::BadRequest as B;
        assert_eq!(err("not json"), (0, B));
        assert_eq!(err("[1,2]"), (0, B));
        assert_eq!(err("\"subscribe\""), (0, B));
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["A"],"id":"7"}"#),
            (0, B)
        );
        assert_eq!(err(r#"{"op":"subscribe","symbols":["A"],"id":-1}"#), (0, B));
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["A"],"id":1.5}"#),
            (0, B)
        );
        assert_eq!(err(r#"{"op":"sub","symbols":["A"],"id":3}"#), (3, B));
        assert_eq!(err(r#"{"symbols":["A"],"id":3}"#), (3, B));
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["A"],"channels":["book","quotes"],"id":4}"#),
            (4, B)
        );
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["A"],"channels":[],"id":4}"#),
            (4, B)
        );
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["A"],"channels":"book","id":4}"#),
            (4, B)
        );
        assert_eq!(err(r#"{"op":"subscribe","symbols":[],"id":5}"#), (5, B));
        // Unsubscribing nothing is the protocol's no-op (a keepalive probe).
        let r = parse_request(r#"{"op":"unsubscribe","symbols":[],"channels":["trades"],"id":6}"#)
            .unwrap();
        assert_eq!((r.op, r.id, r.symbols.len()), (Op::Unsubscribe, 6, 0));
        assert_eq!(err(r#"{"op":"subscribe","symbols":"A","id":5}"#), (5, B));
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["A",1],"id":5}"#),
            (5, B)
        );
        assert_eq!(
            err(r#"{"op":"subscribe","symbols":["OK","bad sym"],"id":6}"#),
            (6, B)
        );
        assert_eq!(err(r#"{"op":"subscribe","symbols":[""],"id":6}"#), (6, B));
        let long = format!(
            r#"{{"op":"subscribe","symbols":["{}"],"id":6}}"#,
            "A".repeat(33)
        );
        assert_eq!(err(&long), (6, B));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "",
            "{",
            "{}",
            "null",
            "{\"op\":null}",
            "{\"id\":18446744073709551616}",
            "\u{0}",
        ] {
            let _ = parse_request(text);
        }
        let e = parse_request(&format!(
            r#"{{"op":"subscribe","symbols":["{}é"]}}"#,
            "é".repeat(100)
        ))
        .unwrap_err();
        assert!(e.message.len() < 120);
    }

    #[test]
    fn auth_requests() {
        assert_eq!(
            parse_client_request(r#"{"op":"auth","token":"a.b.c","id":1}"#),
            Ok(ClientRequest::Auth {
                id: 1,
                token: "a.b.c".into()
            })
        );
        let e = parse_client_request(r#"{"op":"auth","token":7,"id":2}"#).unwrap_err();
        assert_eq!((e.id, e.code), (2, ErrorCode::BadRequest));
        let e = parse_client_request(r#"{"op":"auth","id":3}"#).unwrap_err();
        assert_eq!((e.id, e.code), (3, ErrorCode::BadRequest));
        // Where only subscriptions are expected, `auth` is an unknown op.
        assert_eq!(
            err(r#"{"op":"auth","token":"t","id":4}"#),
            (4, ErrorCode::BadRequest)
        );
        // The token is never echoed.
        let e = parse_request(r#"{"op":"auth","token":"s3cret.tok.en","id":4}"#).unwrap_err();
        assert!(!e.message.contains("s3cret"));
    }

    #[test]
    fn request_id_reads_only_the_id() {
        assert_eq!(
            request_id(r#"{"op":"subscribe","symbols":["A"],"id":7}"#),
            7
        );
        assert_eq!(request_id(r#"{"id":9,"op":"x"}"#), 9);
        assert_eq!(request_id(r#"{"op":"subscribe"}"#), 0);
        assert_eq!(request_id(r#"{"id":"7"}"#), 0);
        assert_eq!(request_id(r#"{"id":-1}"#), 0);
        assert_eq!(request_id("not json"), 0);
        assert_eq!(request_id(&"[".repeat(100_000)), 0);
    }

    #[test]
    fn ten_thousand_symbols_dedup_in_order() {
        let mut names: Vec<String> = (0..5_000).map(|i| format!("S{i}")).collect();
        names.extend((0..5_000).rev().map(|i| format!("S{i}")));
        assert_eq!(names.len(), MAX_SYMBOLS_PER_REQUEST);
        let list = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(",");
        let r = parse_request(&format!(r#"{{"op":"subscribe","symbols":[{list}]}}"#)).unwrap();
        assert_eq!(r.symbols.len(), 5_000);
        assert_eq!(r.symbols[4_999], "S4999");
        let list = ["A", "B", "A", "C", "B"]
            .map(|n| format!("\"{n}\""))
            .join(",");
        let r = parse_request(&format!(r#"{{"op":"subscribe","symbols":[{list}]}}"#)).unwrap();
        assert_eq!(r.symbols, vec!["A", "B", "C"]);
    }

    /// Error answers never echo more than a few dozen characters of client
    /// text, however big the request (a 64 KiB op or channel name).
    #[test]
    fn error_messages_are_short_whatever_the_input() {
        let big = "x".repeat(60_000);
        for text in [
            format!(r#"{{"op":"{big}","symbols":["A"]}}"#),
            format!(r#"{{"op":"subscribe","symbols":["A"],"channels":["{big}"]}}"#),
            format!(r#"{{"op":"subscribe","symbols":["{big}"]}}"#),
        ] {
            let e = parse_request(&text).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.len() < 100, "{} bytes", e.message.len());
        }
    }

    #[test]
    fn deep_nesting_is_a_bad_request_not_a_stack_overflow() {
        // The input that aborted the process (issue: 60,000 `[` in one message).
        let deep = "[".repeat(60_000);
        assert_eq!(err(&deep), (0, ErrorCode::BadRequest));
        let deep_inside = format!(
            r#"{{"op":"subscribe","symbols":["A"],"id":3,"x":{}}}"#,
            "[".repeat(100_000)
        );
        assert_eq!(err(&deep_inside), (0, ErrorCode::BadRequest));
        // At the limit, still a request.
        let at_limit = format!(
            r#"{{"op":"subscribe","symbols":["A"],"x":{}1{}}}"#,
            "[".repeat(MAX_REQUEST_DEPTH - 1),
            "]".repeat(MAX_REQUEST_DEPTH - 1)
        );
        assert!(parse_request(&at_limit).is_ok());
    }
}
