//! Server-Sent Events on the client port (PROTOCOL §11): parsing the
//! `GET /sse?...` request, the bytes that open a stream, the event framing,
//! and the resume token carried in each book/trade event's `id:` line.
//!
//! Owns nothing; pure functions run by the worker that owns the connection.
//! Never touches sockets or the clock (the 15 s [`PING`] cadence is the
//! caller's, [`PING_INTERVAL_NS`] only names it) and never panics on peer
//! input: the query and the `Last-Event-ID` header are both peer bytes.
//!
//! # The request ([`parse_open`])
//!
//! - The query is split on `&` into `key=value` pairs (a pair without `=` has
//!   an empty value; empty pairs such as `a=1&&b=2` are skipped). Keys and
//!   values are percent-decoded (`%XX`, either case of hex); a `%` not followed
//!   by two hex digits, or a decoded key or value that is not UTF-8, is
//!   `bad_request`, also in a pair whose key is unknown.
//!   `+` stays a literal `+` (symbols never contain spaces).
//! - A query longer than [`MAX_QUERY_BYTES`] (8 KiB) is `bad_request`.
//! - `symbols` (required): comma-separated after decoding (browsers'
//!   `URLSearchParams` send the comma as `%2C`). Every item non-empty and at
//!   most [`MAX_SYMBOL_BYTES`] bytes, no duplicates: else `bad_request`. More
//!   than [`MAX_SSE_SYMBOLS`]: 400 `too_many_subscriptions` (checked after the
//!   `bad_request` checks, the order of PROTOCOL §8).
//! - `channels` (required): comma-separated, non-empty items, no duplicates, at
//!   most [`MAX_SSE_CHANNELS`]: else `bad_request`. The names are returned raw;
//!   their grammar (PROTOCOL §9) is checked by the caller's request parser.
//! - `encoding` (optional): must be `json` (SSE data lines are JSON).
//! - `token` (optional, PROTOCOL §8): returned decoded as sent; an empty
//!   `token=` is `Some("")` and is refused by authentication, not here.
//! - A known key (`symbols`, `channels`, `encoding`, `token`) given twice is
//!   `bad_request`; unknown keys (a cache buster such as `_=1712`) are ignored,
//!   repeated or not.
//! - `Last-Event-ID`: absent or empty is no resume; otherwise it must be a
//!   [`ResumeToken`] ([`ResumeToken::decode`]) with one position per symbol of
//!   the request, else `bad_request` "malformed Last-Event-ID".
//!
//! Every refusal is an [`SseRefusal`]: the status, a PROTOCOL error code and a
//! message, answered as a JSON `Error` body before any streaming.
//!
//! # The stream
//!
//! [`response_head`], then [`RETRY`], then events: control messages via
//! [`write_event`]; book and trade messages via [`write_event_body`] (the
//! shared bytes, encoded once) followed by the connection's own
//! [`ResumeToken::write_id_line`]. [`PING`] every [`PING_INTERVAL_NS`]. The
//! body has no length and no chunking: it ends when the connection closes.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;

use super::http::Response;
use crate::wire::json::write_json_str;
use prost::encoding::encode_varint;

use crate::wire::varint::read_varint;

/// PROTOCOL §11: most symbols in one SSE stream.
pub const MAX_SSE_SYMBOLS: usize = 50;
/// Most channels in one SSE stream.
pub const MAX_SSE_CHANNELS: usize = 8;
/// Longest symbol name accepted in `symbols=`, in bytes.
pub const MAX_SYMBOL_BYTES: usize = 64;
/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Longest `Last-Event-ID` accepted, in characters.
pub const MAX_TOKEN_CHARS: usize = 2048;
/// The comment line sent every 15 s (`: ping` + blank line).
pub const PING: &[u8] = b": ping\n\n";
/// PROTOCOL §11: the ping cadence, in nanoseconds.
pub const PING_INTERVAL_NS: u64 = 15_000_000_000;
/// Sent right after [`response_head`]: the browser reconnects 1 s after the
/// stream ends (WHATWG HTML §9.2, the `retry` field).
pub const RETRY: &[u8] = b"retry: 1000\n\n";

/// The first byte of every encoded [`ResumeToken`].
const TOKEN_VERSION: u8 = 1;

/// A parsed `GET /sse?...` (PROTOCOL §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseOpen {
    /// Percent-decoded, in URL order, no duplicates.
    pub symbols: Vec<String>,
    /// Percent-decoded raw names, in URL order, no duplicates.
    pub channels: Vec<String>,
    /// `token=` (PROTOCOL §8), percent-decoded.
    pub token: Option<String>,
    /// The decoded `Last-Event-ID` header, if present and non-empty; it has
    /// one position per symbol.
    pub last_event_id: Option<ResumeToken>,
}

/// Why an SSE request is refused before streaming: HTTP status + Error code
/// + message (PROTOCOL §11: 400/401/403 with a JSON `Error` body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseRefusal {
    pub status: u16,
    /// A PROTOCOL error code: `bad_request`, `too_many_subscriptions`,
    /// `unauthorized`, `forbidden`.
    pub code: &'static str,
    pub message: String,
}

impl SseRefusal {
    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> SseRefusal {
        SseRefusal {
            status: 400,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// 400 `too_many_subscriptions`: more than [`MAX_SSE_SYMBOLS`] symbols.
    pub fn too_many_symbols() -> SseRefusal {
        SseRefusal {
            status: 400,
            code: "too_many_subscriptions",
            message: format!("at most {MAX_SSE_SYMBOLS} symbols per stream"),
        }
    }

    /// 401 (a missing or bad token, PROTOCOL §8); answered with
    /// `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> SseRefusal {
        SseRefusal {
            status: 401,
            code,
            message: message.into(),
        }
    }

    /// 403 (outside the entitlements, PROTOCOL §8).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> SseRefusal {
        SseRefusal {
            status: 403,
            code,
            message: message.into(),
        }
    }

    /// The JSON `Error` body: `{"type":"error","id":0,"code":..,"message":..}`
    /// on one line (the rendering of `wire::json`).
    pub fn body(&self) -> String {
        let mut s = String::with_capacity(48 + self.code.len() + self.message.len());
        s.push_str("{\"type\":\"error\",\"id\":0,\"code\":");
        write_json_str(&mut s, self.code);
        s.push_str(",\"message\":");
        write_json_str(&mut s, &self.message);
        s.push('}');
        s
    }

    /// The refusal as a [`Response`]: `Content-Type: application/json`,
    /// `Cache-Control: no-store` (and `WWW-Authenticate` on a 401), the JSON
    /// body; [`Response::write_to`] adds `Content-Length` and
    /// `Connection: close`.
    pub fn response(&self) -> Response {
        let r = Response::new(self.status)
            .with_header("Content-Type", "application/json")
            .with_header("Cache-Control", "no-store");
        let r = if self.status == 401 {
            // RFC 6750 §3, as for a bad token at a WebSocket upgrade.
            r.with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
        } else {
            r
        };
        r.with_body(self.body())
    }

    /// The full HTTP/1.1 response in wire format.
    pub fn response_bytes(&self) -> Vec<u8> {
        self.response().to_bytes()
    }
}

/// Parses the query of `/sse` and the `Last-Event-ID` header (rules in the
/// module doc).
pub fn parse_open(query: Option<&str>, last_event_id: Option<&str>) -> Result<SseOpen, SseRefusal> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return Err(SseRefusal::bad_request(format!(
            "query longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    let mut symbols = None;
    let mut channels = None;
    let mut encoding = None;
    let mut token = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(key)?, percent_decode(value)?);
        let slot = match key.as_str() {
            "symbols" => &mut symbols,
            "channels" => &mut channels,
            "encoding" => &mut encoding,
            "token" => &mut token,
            _ => continue,
        };
        if slot.is_some() {
            return Err(SseRefusal::bad_request(format!("{key} given twice")));
        }
        *slot = Some(value);
    }
    if let Some(enc) = encoding
        && enc != "json"
    {
        return Err(SseRefusal::bad_request(
            "SSE streams are JSON: encoding must be json",
        ));
    }
    let symbols = symbols.ok_or_else(|| SseRefusal::bad_request("missing symbols"))?;
    let symbols = split_list("symbols", &symbols)?;
    if symbols.iter().any(|s| s.len() > MAX_SYMBOL_BYTES) {
        return Err(SseRefusal::bad_request(format!(
            "symbol longer than {MAX_SYMBOL_BYTES} bytes"
        )));
    }
    let channels = channels.ok_or_else(|| SseRefusal::bad_request("missing channels"))?;
    let channels = split_list("channels", &channels)?;
    if channels.len() > MAX_SSE_CHANNELS {
        return Err(SseRefusal::bad_request(format!(
            "at most {MAX_SSE_CHANNELS} channels per stream"
        )));
    }
    // PROTOCOL §8: bad_request before too_many_subscriptions.
    if symbols.len() > MAX_SSE_SYMBOLS {
        return Err(SseRefusal::too_many_symbols());
    }
    let last_event_id = match last_event_id {
        None | Some("") => None,
        Some(text) => match ResumeToken::decode(text) {
            Ok(t) if t.positions.len() == symbols.len() => Some(t),
            _ => return Err(SseRefusal::bad_request("malformed Last-Event-ID")),
        },
    };
    Ok(SseOpen {
        symbols,
        channels,
        token,
        last_event_id,
    })
}

/// The comma-separated items of `list`: non-empty, no duplicates.
fn split_list(what: &str, list: &str) -> Result<Vec<String>, SseRefusal> {
    let mut items: Vec<String> = Vec::new();
    for item in list.split(',') {
        if item.is_empty() {
            return Err(SseRefusal::bad_request(format!("empty item in {what}")));
        }
        // Quadratic, but over at most 8 KiB of query.
        if items.iter().any(|i| i == item) {
            return Err(SseRefusal::bad_request(format!(
                "{item} given twice in {what}"
            )));
        }
        items.push(item.to_owned());
    }
    Ok(items)
}

/// RFC 3986 §2.1 percent-decoding; `+` is left alone.
fn percent_decode(s: &str) -> Result<String, SseRefusal> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(SseRefusal::bad_request("invalid percent-escape in query"));
            };
            // Two hex digits: at most 0xff.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SseRefusal::bad_request("query is not UTF-8"))
}

/// The response head that starts a stream (no `Content-Length`, no chunking:
/// the body ends when the connection closes). With `origin`, the CORS
/// headers that let that page's `EventSource` read the stream; an origin
/// holding a control character (never one a parsed request header holds) is
/// left out rather than split the head.
pub fn response_head(origin: Option<&str>) -> Vec<u8> {
    let mut head = String::with_capacity(192);
    head.push_str(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
         X-Accel-Buffering: no\r\nConnection: close\r\n",
    );
    if let Some(origin) = origin.filter(|o| !o.bytes().any(|b| b < 0x20 || b == 0x7f)) {
        let _ = write!(
            head,
            "Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"
        );
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Appends one complete event: `event: <type>\ndata: <json>\n\n`. `json` is
/// one line (the JSON renderer escapes newlines).
pub fn write_event(event_type: &str, json: &[u8], out: &mut Vec<u8>) {
    write_event_body(event_type, json, out);
    out.push(b'\n');
}

/// Appends an event without its terminating blank line:
/// `event: <type>\ndata: <json>\n`. The caller appends the `id:` line and the
/// blank line ([`ResumeToken::write_id_line`]).
pub fn write_event_body(event_type: &str, json: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!json.contains(&b'\n') && !event_type.contains('\n'));
    out.reserve(event_type.len() + json.len() + 15);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.push(b'\n');
}

/// The resume token carried in each book/trade event's `id:` line (opaque
/// to clients; PROTOCOL §10 and §11).
///
/// Wire form: base64url without padding of version byte 1, `digest` as 8
/// bytes little-endian, the count of positions as a varint, then per position
/// the book seq and the trades seq as varints (LEB128, as protobuf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    /// Digest of the stream's symbols and their epochs when the token was
    /// made (see [`epoch_digest`]).
    pub digest: u64,
    /// Per symbol of the request, in URL order: the seq of the last `book`
    /// message and of the last `trades` message the client was sent (0 = none).
    pub positions: Vec<(u64, u64)>,
}

impl ResumeToken {
    /// Appends `id: <token>\n\n` (the line and the event's terminating blank
    /// line). Allocates nothing besides the growth of `out`.
    pub fn write_id_line(digest: u64, positions: &[(u64, u64)], out: &mut Vec<u8>) {
        debug_assert!(positions.len() <= MAX_SSE_SYMBOLS);
        out.extend_from_slice(b"id: ");
        // The raw token goes at the end of `out`, its base64 after it; the
        // base64 is then moved over the raw bytes.
        let raw_start = out.len();
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&digest.to_le_bytes());
        encode_varint(positions.len() as u64, out);
        for &(book, trades) in positions {
            encode_varint(book, out);
            encode_varint(trades, out);
        }
        let raw_end = out.len();
        let text_len = base64::encoded_len(raw_end - raw_start, false)
            .expect("at most a few KiB of raw token"); // cannot overflow usize
        out.resize(raw_end + text_len, 0);
        let (raw, text) = out.split_at_mut(raw_end);
        let written = BASE64URL
            .encode_slice(&raw[raw_start..], text)
            .expect("the slice has encoded_len bytes"); // sized just above
        debug_assert_eq!(written, text_len);
        out.copy_within(raw_end..raw_end + text_len, raw_start);
        out.truncate(raw_start + text_len);
        out.extend_from_slice(b"\n\n");
    }

    /// The token's text (what follows `id: `).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        ResumeToken::write_id_line(self.digest, &self.positions, &mut out);
        // Base64url between an ASCII prefix and suffix: always UTF-8.
        String::from_utf8_lossy(&out[4..out.len() - 2]).into_owned()
    }

    /// Strict decoder: text over [`MAX_TOKEN_CHARS`], bad base64 (padding,
    /// the standard alphabet, non-zero trailing bits), a wrong version, a
    /// truncated digest, truncated or over-long varints (over ten bytes or
    /// over `u64::MAX`), a count over [`MAX_SSE_SYMBOLS`] or trailing bytes
    /// are all errors.
    pub fn decode(text: &str) -> Result<ResumeToken, &'static str> {
        if text.len() > MAX_TOKEN_CHARS {
            return Err("token too long");
        }
        let raw = BASE64URL
            .decode(text)
            .map_err(|_| "token is not base64url")?;
        let (&version, rest) = raw.split_first().ok_or("empty token")?;
        if version != TOKEN_VERSION {
            return Err("unknown token version");
        }
        let (digest, rest) = rest.split_first_chunk::<8>().ok_or("truncated digest")?;
        let mut pos = 0;
        let mut varint = |what: &'static str| read_varint(rest, &mut pos).map_err(|_| what);
        let count = varint("bad position count")?;
        if count > MAX_SSE_SYMBOLS as u64 {
            return Err("too many positions");
        }
        let mut positions = Vec::with_capacity(count as usize);
        for _ in 0..count {
            positions.push((varint("bad book seq")?, varint("bad trades seq")?));
        }
        if pos != rest.len() {
            return Err("trailing bytes in token");
        }
        Ok(ResumeToken {
            digest: u64::from_le_bytes(*digest),
            positions,
        })
    }
}

/// FNV-1a 64 over each (symbol name bytes, 0x00, epoch as 8 bytes
/// little-endian), in order: a resume token made under other symbols, another
/// order or another epoch of any symbol has another digest.
pub fn epoch_digest<'a>(items: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (symbol, epoch) in items {
        eat(symbol.as_bytes());
        eat(&[0]);
        eat(&epoch.to_le_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::super::http::{MAX_HEAD_BYTES, parse_response};
    use super::*;
    use proptest::prelude::*;

    fn open(query: &str) -> Result<SseOpen, SseRefusal> {
        parse_open(Some(query), None)
    }

    fn refused(query: &str) -> (u16, &'static str) {
        let r = open(query).unwrap_err();
        (r.status, r.code)
    }

    fn token(digest: u64, positions: &[(u64, u64)]) -> String {
        ResumeToken {
            digest,
            positions: positions.to_vec(),
        }
        .encode()
    }

    #[test]
    fn protocol_example_parses() {
        let o =
            open("symbols=BTC-USD,ETH-USD&channels=book.10@1000ms,trades&encoding=json").unwrap();
        assert_eq!(o.symbols, ["BTC-USD", "ETH-USD"]);
        assert_eq!(o.channels, ["book.10@1000ms", "trades"]);
        assert_eq!((o.token, o.last_event_id), (None, None));
        let o = open("channels=trades&token=a.b.c&symbols=X&_=17&_=18").unwrap();
        assert_eq!(o.symbols, ["X"]);
        assert_eq!(o.token.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn percent_decoding_of_keys_values_and_separators() {
        // URLSearchParams sends `,` as %2C and `@` as %40.
        let o =
            open("symbols=BTC-USD%2cETH%2DUSD&ch%61nnels=book.10%401000ms%2Ctrades&token=a%2Bb+c")
                .unwrap();
        assert_eq!(o.symbols, ["BTC-USD", "ETH-USD"]);
        assert_eq!(o.channels, ["book.10@1000ms", "trades"]);
        // `+` is literal, not a space.
        assert_eq!(o.token.as_deref(), Some("a+b+c"));
        assert_eq!(open("symbols=%C3%A9&channels=book").unwrap().symbols, ["é"]);
        assert_eq!(open("symbols=A+B&channels=book").unwrap().symbols, ["A+B"]);
        for bad in ["%", "%2", "%zz", "%2G", "%C3", "a%"] {
            let q = format!("symbols=X{bad}&channels=book");
            assert_eq!(refused(&q), (400, "bad_request"), "{q}");
        }
        assert_eq!(
            refused("symbols=X&channels=book&token=%ff"),
            (400, "bad_request")
        );
        // Also in pairs that are otherwise ignored.
        assert_eq!(
            refused("symbols=X&channels=book&x=%zz"),
            (400, "bad_request")
        );
        assert_eq!(
            refused("symbols=X&channels=book&%zz=1"),
            (400, "bad_request")
        );
    }

    #[test]
    fn every_refusal_has_its_status_and_code() {
        let bad = (400, "bad_request");
        for q in [
            "",
            "channels=book",
            "symbols=X",
            "symbols=&channels=book",
            "symbols=X,,Y&channels=book",
            "symbols=X,&channels=book",
            "symbols=X,Y,X&channels=book",
            "symbols=X&channels=",
            "symbols=X&channels=book,,trades",
            "symbols=X&channels=book,trades,book",
            "symbols=X&channels=1,2,3,4,5,6,7,8,9",
            "symbols=X&channels=book&encoding=proto",
            "symbols=X&channels=book&encoding=",
            "symbols=X&symbols=Y&channels=book",
            "symbols=X&channels=book&channels=trades",
            "symbols=X&channels=book&token=a&token=b",
            "symbols=X&channels=book&encoding=json&encoding=json",
            "symbols=X&channels=book&s%79mbols=Y",
        ] {
            assert_eq!(refused(q), bad, "{q:?}");
        }
        assert_eq!(parse_open(None, None).unwrap_err().code, "bad_request");
        let r = open("symbols=X&channels=book&encoding=proto").unwrap_err();
        assert_eq!(r.message, "SSE streams are JSON: encoding must be json");

        // Symbol length: 64 bytes fine, 65 not.
        let q = |n| format!("symbols={}&channels=book", "A".repeat(n));
        assert!(open(&q(MAX_SYMBOL_BYTES)).is_ok());
        assert_eq!(refused(&q(MAX_SYMBOL_BYTES + 1)), bad);
        // 8 channels fine.
        assert!(open("symbols=X&channels=1,2,3,4,5,6,7,8").is_ok());

        // Symbol count: 50 fine, 51 is too_many_subscriptions.
        let q = |n: usize| {
            let syms: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
            format!("symbols={}&channels=book", syms.join(","))
        };
        assert_eq!(open(&q(MAX_SSE_SYMBOLS)).unwrap().symbols.len(), 50);
        let r = open(&q(MAX_SSE_SYMBOLS + 1)).unwrap_err();
        assert_eq!((r.status, r.code), (400, "too_many_subscriptions"));
        assert_eq!(r.message, "at most 50 symbols per stream");
        // bad_request first (PROTOCOL §8 order).
        assert_eq!(refused(&format!("{}&symbols=Y", q(51))), bad);

        // Whole query over 8 KiB.
        let pad = |n: usize| format!("symbols=X&channels=book&pad={}", "a".repeat(n));
        let base = pad(0).len();
        assert!(open(&pad(MAX_QUERY_BYTES - base)).is_ok());
        assert_eq!(refused(&pad(MAX_QUERY_BYTES - base + 1)), bad);
    }

    #[test]
    fn last_event_id_absent_empty_valid_or_refused() {
        let q = Some("symbols=A,B&channels=book,trades");
        assert_eq!(parse_open(q, None).unwrap().last_event_id, None);
        assert_eq!(parse_open(q, Some("")).unwrap().last_event_id, None);
        let t = token(7, &[(1234, 88), (0, 5)]);
        assert_eq!(
            parse_open(q, Some(&t)).unwrap().last_event_id,
            Some(ResumeToken {
                digest: 7,
                positions: vec![(1234, 88), (0, 5)]
            })
        );
        for bad in [
            token(7, &[(1, 2)]),
            token(7, &[(1, 2), (3, 4), (5, 6)]),
            "garbage!".to_owned(),
            "AQ".to_owned(),
        ] {
            let r = parse_open(q, Some(&bad)).unwrap_err();
            assert_eq!(
                (r.status, r.code, r.message.as_str()),
                (400, "bad_request", "malformed Last-Event-ID"),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusal_response_is_json_error_with_its_headers() {
        let r = SseRefusal::bad_request("quote \" and\nnewline");
        let bytes = r.response_bytes();
        let (head, len) = parse_response(&bytes, MAX_HEAD_BYTES).unwrap().unwrap();
        assert_eq!(head.status, 400);
        assert_eq!(head.header("Content-Type"), Some("application/json"));
        assert_eq!(head.header("Cache-Control"), Some("no-store"));
        assert_eq!(head.header("Connection"), Some("close"));
        let body = &bytes[len..];
        assert_eq!(
            head.header("Content-Length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(
            body,
            br#"{"type":"error","id":0,"code":"bad_request","message":"quote \" and\nnewline"}"#
        );
        let r = SseRefusal::too_many_symbols();
        assert!(String::from_utf8(r.response_bytes()).unwrap().ends_with(
            r#"{"type":"error","id":0,"code":"too_many_subscriptions","message":"at most 50 symbols per stream"}"#
        ));
        let r = SseRefusal::unauthorized("unauthorized", "invalid token");
        let bytes = r.response_bytes();
        let (head, _) = parse_response(&bytes, MAX_HEAD_BYTES).unwrap().unwrap();
        assert_eq!(head.status, 401);
        assert_eq!(
            head.header("WWW-Authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        let r = SseRefusal::forbidden("forbidden", "not entitled");
        let (head, _) = parse_response(&r.response_bytes(), MAX_HEAD_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!((head.status, head.header("WWW-Authenticate")), (403, None));
    }

    #[test]
    fn response_head_parses_with_stream_headers() {
        let bytes = response_head(None);
        let (head, len) = parse_response(&bytes, MAX_HEAD_BYTES).unwrap().unwrap();
        assert_eq!((head.status, len), (200, bytes.len()));
        assert_eq!(head.header("Content-Type"), Some("text/event-stream"));
        assert_eq!(head.header("Cache-Control"), Some("no-store"));
        assert_eq!(head.header("X-Accel-Buffering"), Some("no"));
        assert_eq!(head.header("Connection"), Some("close"));
        assert_eq!(head.header("Content-Length"), None);
        assert_eq!(head.header("Transfer-Encoding"), None);
        assert_eq!(head.header("Access-Control-Allow-Origin"), None);
        assert_eq!(head.header("Vary"), None);

        let bytes = response_head(Some("https://dash.example"));
        let (head, len) = parse_response(&bytes, MAX_HEAD_BYTES).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(
            head.header("Access-Control-Allow-Origin"),
            Some("https://dash.example")
        );
        assert_eq!(head.header("Vary"), Some("Origin"));
        // A control character cannot split the head.
        let bytes = response_head(Some("x\r\nSet-Cookie: a=b"));
        let (head, _) = parse_response(&bytes, MAX_HEAD_BYTES).unwrap().unwrap();
        assert_eq!(head.header("Set-Cookie"), None);
        assert_eq!(head.header("Access-Control-Allow-Origin"), None);
    }

    #[test]
    fn events_have_their_shape() {
        let mut out = Vec::new();
        write_event("subscribed", br#"{"type":"subscribed","id":0}"#, &mut out);
        assert_eq!(
            out,
            b"event: subscribed\ndata: {\"type\":\"subscribed\",\"id\":0}\n\n"
        );
        out.clear();
        write_event_body("book", b"{}", &mut out);
        assert_eq!(out, b"event: book\ndata: {}\n");
        ResumeToken::write_id_line(1, &[(2, 3)], &mut out);
        let text = String::from_utf8(out).unwrap();
        let id = text
            .strip_prefix("event: book\ndata: {}\nid: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap();
        assert_eq!(
            ResumeToken::decode(id),
            Ok(ResumeToken {
                digest: 1,
                positions: vec![(2, 3)]
            })
        );
        assert_eq!(PING, b": ping\n\n");
        assert_eq!(RETRY, b"retry: 1000\n\n");
    }

    #[test]
    fn token_bytes_are_the_documented_layout() {
        // 1, digest LE, count 2, (1, 300), (0, 127).
        let raw = [1, 8, 7, 6, 5, 4, 3, 2, 1, 2, 1, 0xac, 0x02, 0, 0x7f];
        let t = token(0x0102_0304_0506_0708, &[(1, 300), (0, 127)]);
        assert_eq!(t, BASE64URL.encode(raw));
        assert!(!t.contains(['=', '+', '/']));
        // Appends after what `out` holds.
        let mut out = b"xyz".to_vec();
        ResumeToken::write_id_line(0x0102_0304_0506_0708, &[(1, 300), (0, 127)], &mut out);
        assert_eq!(out, format!("xyzid: {t}\n\n").into_bytes());
    }

    #[test]
    fn decode_rejects_every_malformed_kind() {
        let b = |raw: &[u8]| BASE64URL.encode(raw);
        let ok = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 5, 6];
        assert!(ResumeToken::decode(&b(&ok)).is_ok());
        assert_eq!(
            ResumeToken::decode("AQAAAAAAAAAAAQWsAg").map(|t| t.positions),
            Ok(vec![(5, 300)])
        );
        let mut wrong_version = ok;
        wrong_version[0] = 2;
        let mut trailing = ok.to_vec();
        trailing.push(0);
        let mut too_many = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 51];
        too_many.extend(std::iter::repeat_n(0, 102));
        let mut eleven_bytes = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        eleven_bytes.extend([0x80; 10]);
        eleven_bytes.extend([0, 0]);
        let mut overflow = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        overflow.extend([0xff; 9]);
        overflow.extend([0x02, 0]);
        for (what, text) in [
            ("empty", String::new()),
            ("wrong version", b(&wrong_version)),
            ("short digest", b(&[1, 0, 0, 0])),
            ("no count", b(&ok[..9])),
            ("missing trades seq", b(&ok[..11])),
            (
                "truncated varint",
                b(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 5, 0x80]),
            ),
            ("trailing byte", b(&trailing)),
            ("count over 50", b(&too_many)),
            ("varint over 10 bytes", b(&eleven_bytes)),
            ("varint over u64::MAX", b(&overflow)),
            ("padding", format!("{}=", b(&ok[..11]))),
            ("standard alphabet", "AQAAAAAAAAAAAP+/".to_owned()),
            // `AQAAAAAAAAAAAQWsAg` is valid: (5, 300).
            ("non-zero trailing bits", "AQAAAAAAAAAAAQWsAh".to_owned()),
            ("not base64", "AQ AA".to_owned()),
            ("too long", "A".repeat(MAX_TOKEN_CHARS + 1)),
        ] {
            assert!(ResumeToken::decode(&text).is_err(), "{what}: {text}");
        }
        // The largest real token fits the text limit.
        let max = token(u64::MAX, &[(u64::MAX, u64::MAX); MAX_SSE_SYMBOLS]);
        assert!(max.len() <= MAX_TOKEN_CHARS);
        assert!(ResumeToken::decode(&max).is_ok());
    }

    #[test]
    fn digest_is_stable_and_sensitive_to_order_epoch_and_names() {
        // FNV-1a 64 of the empty input is the offset basis.
        assert_eq!(epoch_digest([]), 0xcbf2_9ce4_8422_2325);
        // Pinned: a change of the function breaks every client's resume.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in b"A\x00\x07\x00\x00\x00\x00\x00\x00\x00" {
            h = (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
        assert_eq!(epoch_digest([("A", 7)]), h);
        let ab = epoch_digest([("BTC-USD", 1), ("ETH-USD", 2)]);
        assert_eq!(ab, epoch_digest([("BTC-USD", 1), ("ETH-USD", 2)]));
        assert_ne!(ab, epoch_digest([("ETH-USD", 2), ("BTC-USD", 1)]));
        assert_ne!(ab, epoch_digest([("BTC-USD", 1), ("ETH-USD", 3)]));
        assert_ne!(ab, epoch_digest([("BTC-USD", 1)]));
        // The separator keeps name boundaries apart.
        assert_ne!(
            epoch_digest([("AB", 0), ("C", 0)]),
            epoch_digest([("A", 0), ("BC", 0)])
        );
    }

    proptest! {
        #[test]
        fn tokens_round_trip(
            digest in any::<u64>(),
            positions in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..=MAX_SSE_SYMBOLS),
        ) {
            let mut out = Vec::new();
            ResumeToken::write_id_line(digest, &positions, &mut out);
            let text = std::str::from_utf8(&out).unwrap();
            let id = text.strip_prefix("id: ").and_then(|t| t.strip_suffix("\n\n")).unwrap();
            prop_assert!(id.len() <= MAX_TOKEN_CHARS);
            prop_assert_eq!(ResumeToken::decode(id), Ok(ResumeToken { digest, positions }));
        }

        #[test]
        fn parse_open_never_panics(query in "[ -~]{0,200}", leid in "[ -~]{0,40}") {
            let _ = parse_open(Some(&query), Some(&leid));
            let _ = ResumeToken::decode(&leid);
        }
    }
}
