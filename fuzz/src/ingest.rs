//! The body of `ingest_proto` and `ingest_json`: one feed connection's bytes
//! through [`FeedDecoder`], with the decoder's promises checked at every read.
//!
//! Options byte: bits 0–1 pick the frame limit (the default 1 MiB, 64, 300
//! or 4096 bytes), bit 2 configures a token (`s3cret`).

use std::sync::Arc;

use tickwire::config::MAX_INGEST_FRAME_BYTES;
use tickwire::book::decode::{
    Decoded, FeedDecoder, Framing, encode_json_line, encode_proto,
};
use tickwire::book::symbol::is_valid_symbol;
use tickwire::book::{Rejection, StreamError};
use tickwire::wire::pb::{self, ingest_message::Body};

use crate::{Input, decimals};

/// A protobuf length prefix is at most 10 bytes (a `u64` varint).
const MAX_VARINT_BYTES: usize = 10;

/// Longest error or rejection text accepted, whatever the message size:
/// each copies at most a 40-character excerpt of peer input, and an escaped
/// character takes at most 10 bytes (`\u{10ffff}`).
pub const MAX_ERROR_TEXT_BYTES: usize = 1024;

type Outcome = Result<Result<Decoded, Rejection>, StreamError>;

/// Runs one input through a decoder of `framing`, whole and in the reads the
/// input describes, and checks:
/// - the two runs give the same messages, rejections and error (the split of
///   the stream into reads changes nothing);
/// - every decoded message re-encodes (`encode_proto` / `encode_json_line`)
///   and decodes again to an equal message;
/// - once poisoned, the decoder stays poisoned and holds no bytes;
/// - the decoder never holds more than one frame or line (plus the read just
///   handed in);
/// - error and rejection texts are short.
pub fn check(framing: Framing, data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let max_frame_bytes = match input.options & 3 {
        0 => MAX_INGEST_FRAME_BYTES,
        1 => 64,
        2 => 300,
        _ => 4096,
    };
    let token = (input.options & 4 != 0).then_some("s3cret");
    let whole = run(framing, token, max_frame_bytes, &[input.stream]);
    let chunked = run(framing, token, max_frame_bytes, &input.chunks);
    assert_eq!(whole, chunked, "the split into reads changed the outcome");
    for outcome in &whole {
        match outcome {
            Ok(Ok(decoded)) => round_trip(framing, decoded),
            Ok(Err(rejection)) => {
                let text = rejection.reason.to_string();
                assert!(text.len() <= MAX_ERROR_TEXT_BYTES, "long rejection: {text}");
                if let Some(symbol) = &rejection.delta_symbol {
                    assert!(is_valid_symbol(symbol), "delta_symbol {symbol:?}");
                }
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.len() <= MAX_ERROR_TEXT_BYTES, "long error: {text}");
            }
        }
    }
}

/// The most bytes a drained decoder may hold: one incomplete frame (its
/// prefix included) or line.
fn held_limit(framing: Framing, max_frame_bytes: usize) -> usize {
    match framing {
        // A complete prefix with a frame one byte short of `max_frame_bytes`.
        Framing::Protobuf => max_frame_bytes + MAX_VARINT_BYTES - 1,
        Framing::JsonLines => max_frame_bytes,
    }
}

fn run(
    framing: Framing,
    token: Option<&str>,
    max_frame_bytes: usize,
    chunks: &[&[u8]],
) -> Vec<Outcome> {
    let mut d = FeedDecoder::new(framing, token.map(Arc::from), max_frame_bytes);
    let limit = held_limit(framing, max_frame_bytes);
    let mut out = Vec::new();
    let mut poisoned: Option<StreamError> = None;
    for chunk in chunks {
        d.handle_bytes(chunk);
        if let Some(e) = &poisoned {
            assert_eq!(d.buffered_bytes(), 0, "a poisoned decoder buffered bytes");
            assert_eq!(d.poll_message(&decimals), Err(e.clone()), "poison lost");
            assert_eq!(d.poisoned(), Some(e));
            continue;
        }
        assert!(
            d.buffered_bytes() <= limit + chunk.len(),
            "holds {} bytes, limit {limit} + read {}",
            d.buffered_bytes(),
            chunk.len()
        );
        loop {
            match d.poll_message(&decimals) {
                Ok(None) => {
                    assert!(
                        d.buffered_bytes() <= limit,
                        "drained decoder holds {} bytes, limit {limit}",
                        d.buffered_bytes()
                    );
                    break;
                }
                Ok(Some(m)) => out.push(Ok(m)),
                Err(e) => {
                    assert_eq!(d.poisoned(), Some(&e));
                    assert_eq!(d.buffered_bytes(), 0);
                    assert_eq!(d.poll_message(&decimals), Err(e.clone()), "poison lost");
                    out.push(Err(e.clone()));
                    poisoned = Some(e);
                    break;
                }
            }
        }
    }
    out
}

/// The message `decoded` came from, as an encoder takes it.
fn to_message(decoded: &Decoded) -> pb::IngestMessage {
    let body = match decoded.clone() {
        Decoded::Hello { feed_id } => Body::Hello(pb::Hello {
            feed_id,
            token: String::new(),
        }),
        Decoded::Snapshot(s) => Body::Snapshot(s),
        Decoded::Delta(d) => Body::Delta(d),
        Decoded::Trade(t) => Body::Trade(t),
    };
    pb::IngestMessage { body: Some(body) }
}

/// What survives a JSON round trip: a JSON line carries no trade `seq`
/// (tickwire assigns its own).
fn json_visible(decoded: &Decoded) -> Decoded {
    match decoded {
        Decoded::Trade(t) => Decoded::Trade(pb::Trade {
            seq: 0,
            ..t.clone()
        }),
        other => other.clone(),
    }
}

/// Encodes `decoded` again and decodes it with a fresh decoder: the same message.
fn round_trip(framing: Framing, decoded: &Decoded) {
    let msg = to_message(decoded);
    let mut bytes = Vec::new();
    let expected = match framing {
        Framing::Protobuf => {
            encode_proto(&msg, &mut bytes);
            decoded.clone()
        }
        Framing::JsonLines => {
            let symbol = match decoded {
                Decoded::Delta(d) => d.symbol.as_str(),
                Decoded::Trade(t) => t.symbol.as_str(),
                _ => "",
            };
            let (pd, sd) = decimals(symbol).unwrap_or((0, 0));
            let mut line = String::new();
            encode_json_line(&msg, pd, sd, &mut line);
            bytes = line.into_bytes();
            json_visible(decoded)
        }
    };
    let mut d = FeedDecoder::new(framing, None, MAX_INGEST_FRAME_BYTES);
    d.handle_bytes(&bytes);
    assert_eq!(
        d.poll_message(&decimals),
        Ok(Some(Ok(expected))),
        "re-encoded as {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(d.poll_message(&decimals), Ok(None));
    assert_eq!(d.buffered_bytes(), 0, "re-encoding left bytes over");
}
