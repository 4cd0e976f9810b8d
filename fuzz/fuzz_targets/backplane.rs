//! What an edge does with arbitrary bytes from NATS: the backplane header
//! and heartbeat parsers, then the edge core with a live mirrored book fed
//! garbage on its data subject, as snapshot replies and as heartbeats.
//!
//! Invariants: the parsers never panic and round-trip what they accept; the
//! edge never panics, and a mirrored book it serves (live, with a book) always
//! holds a checksum some origin message vouched for: every published delta
//! and snapshot carries the checksum of the book the market holds after it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tickwire::book::market::{Market, Published};
use tickwire::cluster::edge::{EdgeConfig, EdgeCore, Inbound};
use tickwire::cluster::header::{self, Header, Kind, OriginTag};
use tickwire::cluster::heartbeat::{BookState, Entry, Heartbeat};
use tickwire::wire::pb;
use tickwire::wire::pb::server_message::Body;

fn live_snapshot(seq: u64) -> Vec<u8> {
    let snap = pb::BookSnapshot {
        symbol: "BTC-USD".into(),
        seq,
        bids: vec![pb::Level { price: 100, size: 5 }],
        asks: vec![pb::Level { price: 110, size: 7 }],
        price_decimals: 2,
        size_decimals: 0,
        checksum: tickwire::book::book::OrderBook::from_levels(
            &[pb::Level { price: 100, size: 5 }],
            &[pb::Level { price: 110, size: 7 }],
        )
        .map(|b| b.checksum())
        .unwrap_or(0),
        ..Default::default()
    };
    let msg = pb::ServerMessage {
        body: Some(Body::Snapshot(snap)),
    };
    let h = Header {
        kind: Kind::Snapshot,
        origin: OriginTag::of("o"),
        epoch: 7,
        seq,
    };
    header::encode(&h, &prost::Message::encode_to_vec(&msg))
}

fuzz_target!(|data: &[u8]| {
    // The parsers alone.
    if let Ok((h, body)) = Header::parse(data) {
        let again = header::encode(&h, body);
        assert_eq!(Header::parse(&again), Ok((h, body)));
    }
    if let Ok(hb) = Heartbeat::decode(data) {
        for chunk in hb.entries.chunks(tickwire::cluster::heartbeat::MAX_ENTRIES) {
            let again = Heartbeat::decode(&Heartbeat::encode(&hb.origin, hb.epoch, chunk));
            assert_eq!(again.map(|h| h.entries), Ok(chunk.to_vec()));
        }
    }
    // An edge with a live book, then the input as messages.
    let mut market = Market::new();
    let mut edge = EdgeCore::new(EdgeConfig::default(), 1);
    let mut out = Vec::new();
    let entry = Entry {
        symbol: "BTC-USD".into(),
        seq: 3,
        trade_seq: 0,
        price_decimals: 2,
        size_decimals: 0,
        state: BookState::Live,
    };
    let beat = Heartbeat::encode("o", 7, &[entry]);
    edge.handle_inbound(&mut market, Inbound::Heartbeat { payload: beat.into() }, 1, &mut out);
    let id = market.symbol_id("BTC-USD").expect("listed");
    edge.handle_interest(&mut market, id, true, 2);
    while edge.poll_command().is_some() {}
    let reply = Inbound::SnapshotReply {
        symbol: "BTC-USD".into(),
        payload: live_snapshot(3).into(),
    };
    edge.handle_inbound(&mut market, reply, 3, &mut out);
    assert!(market.has_book(id));
    let mut now = 4;
    for (i, piece) in data.split(|&b| b == 0xff).enumerate() {
        let payload = Bytes::copy_from_slice(piece);
        let msg = match i % 4 {
            0 | 1 => Inbound::Data {
                symbol: std::sync::Arc::from("BTC-USD"),
                payload,
            },
            2 => Inbound::SnapshotReply {
                symbol: "BTC-USD".into(),
                payload,
            },
            _ => Inbound::Heartbeat { payload },
        };
        out.clear();
        edge.handle_inbound(&mut market, msg, now, &mut out);
        now += 1_000_000;
        edge.handle_timeout(&mut market, now, &mut out);
        while edge.poll_command().is_some() {}
        // The last book message published carries the checksum of the book
        // now held, unless the book went stale after it.
        let last = out.iter().rev().find_map(|p| match p {
            Published::Delta { msg, .. } | Published::Snapshot { msg, .. } => match &msg.body {
                Some(Body::Delta(d)) => Some(d.checksum),
                Some(Body::Snapshot(s)) => Some(s.checksum),
                _ => None,
            },
            _ => None,
        });
        if let Some(sum) = last
            && market.stale_reason(id).is_none()
            && market.has_book(id)
        {
            assert_eq!(sum, market.book(id).checksum(), "published checksum is the book's");
        }
    }
});
