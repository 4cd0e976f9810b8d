//! `RequestParser` (src/ws/http.rs) on arbitrary bytes in arbitrary reads.
//!
//! Options byte: bits 0–1 pick the head limit (8 KiB, 16, 100, 1024 bytes).
//!
//! Invariants:
//! - the outcome (request and the bytes after it, or the error) is the same
//!   whether the bytes come in one read or in the reads the input describes,
//!   and the same as the one-shot `parse_request`;
//! - the head limit holds: a parser still waiting has seen at most the limit,
//!   a parsed head is at most the limit, a 431 comes only above it;
//! - errors are 400 or 431; a parsed request has a method and a `/` path;
//! - routing a parsed request never panics, and a permessage-deflate offer
//!   it accepts (`Sec-WebSocket-Extensions`, RFC 7692) has a window in 8..=15
//!   and a 101 whose extension header negotiates back to the same parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::ws::http::{MAX_HEAD_BYTES, RequestParser, parse_request};
use tickwire::ws::deflate::negotiate;
use tickwire::ws::{HttpError, Request, Route, Router};
use tickwire_fuzz::Input;

type Outcome = Result<Option<(Request, Vec<u8>)>, HttpError>;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let max = match input.options & 3 {
        0 => MAX_HEAD_BYTES,
        1 => 16,
        2 => 100,
        _ => 1024,
    };
    let whole = feed(max, &[input.stream]);
    let chunked = feed(max, &input.chunks);
    assert_eq!(whole, chunked, "the split into reads changed the outcome");
    let one_shot = parse_request(input.stream, max)
        .map(|r| r.map(|(req, head_len)| (req, input.stream[head_len..].to_vec())));
    assert_eq!(whole, one_shot, "RequestParser and parse_request disagree");
    if let Ok(Some((req, _))) = &whole {
        check_route(req);
    }
    // The extension parser on the raw bytes too, as one header value.
    let _ = negotiate(String::from_utf8_lossy(input.stream).split(','));
});

fn check_route(req: &Request) {
    let Route::Upgrade(up) = Router::new().with_echo_path("/echo").route(req) else {
        return;
    };
    let offered = negotiate(req.header_list("Sec-WebSocket-Extensions"));
    assert_eq!(up.deflate, offered);
    if let Some(d) = up.deflate {
        assert!(d.server_max_window_bits.is_none_or(|b| (8..=15).contains(&b)));
        let answer = d.response_value();
        assert_eq!(negotiate(answer.split(',')), Some(d), "{answer}");
    }
}

/// Pushes `chunks` until the parser answers; the bytes after the head are
/// those it returned plus the reads it was not given.
fn feed(max: usize, chunks: &[&[u8]]) -> Outcome {
    let mut parser = RequestParser::new(max);
    let mut seen = 0usize;
    for (i, chunk) in chunks.iter().enumerate() {
        seen += chunk.len();
        match parser.push(chunk) {
            Ok(None) => assert!(seen <= max, "{seen} bytes and still waiting, limit {max}"),
            Ok(Some((req, mut rest))) => {
                let head_len = seen - rest.len();
                assert!(head_len <= max, "head of {head_len} bytes, limit {max}");
                assert!(!req.method.is_empty() && req.path.starts_with('/'));
                for later in &chunks[i + 1..] {
                    rest.extend_from_slice(later);
                }
                return Ok(Some((req, rest)));
            }
            Err(e) => {
                match e.status() {
                    431 => assert!(seen > max, "431 after {seen} bytes, limit {max}"),
                    400 => {}
                    other => panic!("status {other} for {e}"),
                }
                return Err(e);
            }
        }
    }
    Ok(None)
}
