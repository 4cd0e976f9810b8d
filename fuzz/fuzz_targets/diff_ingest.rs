//! Differential: one arbitrary market (snapshots, deltas, trades, hellos and
//! feed disconnects, for a few symbols and two feeds) sent both as protobuf
//! frames and as JSON lines, each decoded by its `FeedDecoder` and applied
//! to its own `Market`, as the ingest thread does (src/net/ingest.rs).
//!
//! Invariants:
//! - both encodings are readable streams (no stream error);
//! - each message is accepted by both or rejected by both;
//! - both markets publish the same events, in the same order, with the same
//!   binary frames (`EncodedFrame::binary`, what every subscriber receives);
//! - at the end both hold the same symbols, books, checksums, sequences,
//!   owners and staleness.
//!
//! Delta updates are generated bids first: a JSON line lists `"bids"` then
//! `"asks"` and cannot express another order. Trade aggressors are known
//! sides: the JSON encoder writes an unknown one as `""` (documented).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire::book::FeedId;
use tickwire::config::MAX_INGEST_FRAME_BYTES;
use tickwire::book::decode::{
    Decoded, FeedDecoder, Framing, encode_json_line, encode_proto,
};
use tickwire::book::market::{Market, Published};
use tickwire::wire::EncodedFrame;
use tickwire::wire::pb::{self, ingest_message::Body};

/// The last one is invalid (a space): rejected by both decoders.
const SYMBOLS: [&str; 4] = ["BTC-USD", "ETH-USD", "x/y:z_1.2", "bad sym"];
const FEEDS: usize = 2;

#[derive(Arbitrary, Debug)]
enum Event {
    Hello {
        feed: u8,
    },
    Snapshot {
        feed: u8,
        symbol: u8,
        seq: u8,
        price_decimals: u8,
        size_decimals: u8,
        bids: Vec<(i8, u8)>,
        asks: Vec<(i8, u8)>,
    },
    Delta {
        feed: u8,
        symbol: u8,
        /// 0 skips a sequence number (a gap); anything else is contiguous.
        gap: u8,
        bids: Vec<(i8, i8)>,
        asks: Vec<(i8, i8)>,
    },
    Trade {
        feed: u8,
        symbol: u8,
        price: i8,
        size: u8,
        aggressor: u8,
        trade_id: String,
    },
    FeedDown {
        feed: u8,
    },
}

/// One feed connection, decoded both ways.
struct Feed {
    id: FeedId,
    proto: FeedDecoder,
    json: FeedDecoder,
}

impl Feed {
    fn new(id: u64) -> Feed {
        Feed {
            id: FeedId(id),
            proto: FeedDecoder::new(Framing::Protobuf, None, MAX_INGEST_FRAME_BYTES),
            json: FeedDecoder::new(Framing::JsonLines, None, MAX_INGEST_FRAME_BYTES),
        }
    }
}

/// What one side published for one message, and whether it was accepted.
type Outcome = (Vec<bool>, Vec<(Published, Vec<u8>)>);

fuzz_target!(|events: Vec<Event>| {
    let mut feeds: Vec<Feed> = (0..FEEDS as u64).map(Feed::new).collect();
    let mut next_feed_id = FEEDS as u64;
    let mut proto_market = Market::new();
    let mut json_market = Market::new();
    for (i, event) in events.into_iter().enumerate() {
        let ingest_ts_ns = 1_000 + i as u64;
        let (f, body) = match event {
            Event::FeedDown { feed } => {
                let f = usize::from(feed) % FEEDS;
                let mut a = Vec::new();
                let mut b = Vec::new();
                proto_market.handle_feed_down(feeds[f].id, &mut a);
                json_market.handle_feed_down(feeds[f].id, &mut b);
                assert_eq!(a, b, "feed down published differently");
                feeds[f] = Feed::new(next_feed_id);
                next_feed_id += 1;
                continue;
            }
            Event::Hello { feed } => (
                feed,
                Body::Hello(pb::Hello {
                    feed_id: format!("feed-{feed}"),
                    token: String::new(),
                }),
            ),
            Event::Snapshot {
                feed,
                symbol,
                seq,
                price_decimals,
                size_decimals,
                bids,
                asks,
            } => {
                let s = usize::from(symbol) % SYMBOLS.len();
                let levels = |l: &[(i8, u8)]| -> Vec<pb::Level> {
                    l.iter()
                        .map(|&(p, z)| pb::Level {
                            price: i64::from(p),
                            size: i64::from(z),
                        })
                        .collect()
                };
                (
                    feed,
                    Body::Snapshot(pb::BookSnapshot {
                        symbol: SYMBOLS[s].into(),
                        seq: u64::from(seq),
                        bids: levels(&bids),
                        asks: levels(&asks),
                        // 19 is out of range: rejected by both.
                        price_decimals: i32::from(price_decimals % 20),
                        size_decimals: i32::from(size_decimals % 20),
                        exchange_ts_ns: i as u64,
                        ..Default::default()
                    }),
                )
            }
            Event::Delta {
                feed,
                symbol,
                gap,
                bids,
                asks,
            } => {
                let s = usize::from(symbol) % SYMBOLS.len();
                // Contiguous with what the market accepted, unless a gap is asked for.
                let last = proto_market
                    .symbol_id(SYMBOLS[s])
                    .and_then(|id| proto_market.info(id))
                    .map_or(0, |info| info.feed_seq);
                let seq = last.wrapping_add(if gap == 0 { 2 } else { 1 });
                let updates = |side: pb::Side, l: &[(i8, i8)]| {
                    l.iter()
                        .map(|&(p, z)| pb::LevelUpdate {
                            side: side as i32,
                            price: i64::from(p),
                            size: i64::from(z),
                        })
                        .collect::<Vec<_>>()
                };
                let mut all = updates(pb::Side::Bid, &bids);
                all.extend(updates(pb::Side::Ask, &asks));
                (
                    feed,
                    Body::Delta(pb::BookDelta {
                        symbol: SYMBOLS[s].into(),
                        seq,
                        updates: all,
                        exchange_ts_ns: i as u64,
                        ..Default::default()
                    }),
                )
            }
            Event::Trade {
                feed,
                symbol,
                price,
                size,
                aggressor,
                trade_id,
            } => {
                let aggressor = match aggressor % 3 {
                    0 => pb::Side::Unspecified,
                    1 => pb::Side::Bid,
                    _ => pb::Side::Ask,
                };
                (
                    feed,
                    Body::Trade(pb::Trade {
                        symbol: SYMBOLS[usize::from(symbol) % SYMBOLS.len()].into(),
                        price: i64::from(price),
                        size: i64::from(size),
                        aggressor: aggressor as i32,
                        trade_id,
                        exchange_ts_ns: i as u64,
                        ..Default::default()
                    }),
                )
            }
        };
        let msg = pb::IngestMessage { body: Some(body) };
        let feed = &mut feeds[usize::from(f) % FEEDS];

        // A JSON delta or trade is written with the symbol's decimals as the
        // market knows them; the protobuf side is the reference.
        let symbol = match &msg.body {
            Some(Body::Delta(d)) => d.symbol.as_str(),
            Some(Body::Trade(t)) => t.symbol.as_str(),
            _ => "",
        };
        let (pd, sd) = proto_market.decimals(symbol).unwrap_or((0, 0));
        let mut frame = Vec::new();
        encode_proto(&msg, &mut frame);
        let mut line = String::new();
        encode_json_line(&msg, pd, sd, &mut line);

        feed.proto.handle_bytes(&frame);
        let a = drain(&mut feed.proto, &mut proto_market, feed.id, ingest_ts_ns);
        feed.json.handle_bytes(line.as_bytes());
        let b = drain(&mut feed.json, &mut json_market, feed.id, ingest_ts_ns);
        assert_eq!(a.0, b.0, "accepted differently: {msg:?} as {line:?}");
        assert_eq!(a.1, b.1, "published differently: {msg:?} as {line:?}");
    }
    compare_markets(&proto_market, &json_market);
});

/// Applies every message the decoder holds, as `IngestLoop::drain_decoder`
/// does, and encodes what is published once, as `flush_published` does.
fn drain(
    decoder: &mut FeedDecoder,
    market: &mut Market,
    feed: FeedId,
    ingest_ts_ns: u64,
) -> Outcome {
    let mut accepted = Vec::new();
    let mut published = Vec::new();
    loop {
        let decimals = |s: &str| market.decimals(s);
        let decoded = match decoder.poll_message(&decimals) {
            Ok(None) => break,
            Ok(Some(d)) => d,
            Err(e) => panic!("an encoder wrote an unreadable stream: {e}"),
        };
        let mut out = Vec::new();
        let ok = match decoded {
            Ok(Decoded::Hello { .. }) => true,
            Ok(Decoded::Snapshot(s)) => market
                .handle_snapshot(feed, s, ingest_ts_ns, &mut out)
                .is_ok(),
            Ok(Decoded::Delta(d)) => market.handle_delta(feed, d, ingest_ts_ns, &mut out).is_ok(),
            Ok(Decoded::Trade(t)) => market.handle_trade(feed, t, ingest_ts_ns, &mut out).is_ok(),
            Err(rejection) => {
                if let Some(symbol) = &rejection.delta_symbol {
                    market.handle_invalid_delta(feed, symbol, &mut out);
                }
                false
            }
        };
        accepted.push(ok);
        for event in out {
            let frame = EncodedFrame::binary(event.msg());
            published.push((event, frame.as_bytes().to_vec()));
        }
    }
    assert_eq!(
        decoder.buffered_bytes(),
        0,
        "a whole message was not consumed"
    );
    (accepted, published)
}

fn compare_markets(a: &Market, b: &Market) {
    assert_eq!(a.len(), b.len(), "symbol count");
    for info in a.symbols() {
        let id = info.id;
        assert_eq!(b.info(id), Some(info), "symbol info");
        assert_eq!(a.book(id), b.book(id), "book of {}", info.name);
        assert_eq!(a.book(id).checksum(), b.book(id).checksum());
        assert_eq!(a.snapshot(id), b.snapshot(id), "snapshot of {}", info.name);
        assert_eq!(a.stale_reason(id), b.stale_reason(id));
    }
}
