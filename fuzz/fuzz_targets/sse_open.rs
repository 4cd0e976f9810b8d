//! `parse_open` and `ResumeToken::decode` (src/ws/sse.rs, PROTOCOL §11) on
//! arbitrary bytes.
//!
//! The input is split at its first `\n`: the query before it, the
//! `Last-Event-ID` header after it (both read as lossy UTF-8; no `\n` means
//! no header). The whole input is also decoded as a token.
//!
//! Invariants:
//! - neither function panics;
//! - an accepted stream has 1..=50 distinct non-empty symbols of at most 64
//!   bytes, 1..=8 distinct non-empty channels, and a resume token (if any)
//!   with one position per symbol;
//! - a refusal is a 400 `bad_request` or `too_many_subscriptions` whose
//!   response parses as HTTP with a `Content-Length` matching its JSON body;
//! - a decoded token re-encodes (`write_id_line`) to an `id:` line whose
//!   token decodes to the same token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::ws::http::{MAX_HEAD_BYTES, parse_response};
use tickwire::ws::sse::{
    MAX_SSE_CHANNELS, MAX_SSE_SYMBOLS, MAX_SYMBOL_BYTES, ResumeToken, parse_open,
};

fuzz_target!(|data: &[u8]| {
    let (query, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let query = String::from_utf8_lossy(query);
    let header = header.map(String::from_utf8_lossy);
    match parse_open(Some(&query), header.as_deref()) {
        Ok(open) => {
            let n = open.symbols.len();
            assert!((1..=MAX_SSE_SYMBOLS).contains(&n));
            assert!(
                open.symbols
                    .iter()
                    .all(|s| !s.is_empty() && s.len() <= MAX_SYMBOL_BYTES)
            );
            assert!((1..=MAX_SSE_CHANNELS).contains(&open.channels.len()));
            assert!(open.channels.iter().all(|c| !c.is_empty()));
            for list in [&open.symbols, &open.channels] {
                for (i, a) in list.iter().enumerate() {
                    assert!(!list[i + 1..].contains(a), "duplicate {a}");
                }
            }
            if let Some(t) = &open.last_event_id {
                assert_eq!(t.positions.len(), n);
                round_trip(t);
            }
        }
        Err(refusal) => {
            assert_eq!(refusal.status, 400);
            assert!(
                ["bad_request", "too_many_subscriptions"].contains(&refusal.code),
                "{}",
                refusal.code
            );
            let bytes = refusal.response_bytes();
            let (head, len) = parse_response(&bytes, MAX_HEAD_BYTES)
                .expect("a refusal parses")
                .expect("a complete head");
            assert_eq!(head.status, 400);
            let body_len = (bytes.len() - len).to_string();
            assert_eq!(head.header("Content-Length"), Some(body_len.as_str()));
        }
    }
    if let Some(h) = &header
        && let Ok(t) = ResumeToken::decode(h)
    {
        round_trip(&t);
    }
    if let Ok(t) = ResumeToken::decode(&String::from_utf8_lossy(data)) {
        round_trip(&t);
    }
});

fn round_trip(t: &ResumeToken) {
    let mut out = Vec::new();
    ResumeToken::write_id_line(t.digest, &t.positions, &mut out);
    let line = std::str::from_utf8(&out).expect("an id line is ASCII");
    let text = line
        .strip_prefix("id: ")
        .and_then(|l| l.strip_suffix("\n\n"))
        .expect("id: <token>\\n\\n");
    assert_eq!(ResumeToken::decode(text).as_ref(), Ok(t));
}
