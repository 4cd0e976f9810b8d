//! Measures loadgen's per-message cost without sockets: a stream of small
//! deltas (one level update, ~50-byte frames) handed in 16 KiB reads to
//! `CLIENTS` sessions of one symbol in turn, as a client thread sees a
//! fan-out. Reports CPU time per verified message.
//!
//! `cargo run --release -p tickwire-loadgen --example verify_cost`

use std::time::Instant;

use tickwire::book::book::{OrderBook, Side};
use tickwire::wire::frame::EncodedFrame;
use tickwire::wire::pb::{self, server_message::Body};
use tickwire::ws::handshake::accept_key;
use tickwire_loadgen::session::{Encoding, Session, SessionConfig};
use tickwire_loadgen::stats::Tally;
use tickwire_loadgen::verify::ChecksumMemo;

const DELTAS: u64 = 200_000;
const CLIENTS: usize = 100;

fn main() {
    let mut book = OrderBook::new();
    for i in 1..=10 {
        book.apply(Side::Bid, 10_000 - i, 100);
        book.apply(Side::Ask, 10_000 + i, 100);
    }
    let frame = |body| {
        EncodedFrame::binary(&pb::ServerMessage { body: Some(body) })
            .as_bytes()
            .to_vec()
    };
    let mut stream = frame(Body::Subscribed(pb::Subscribed {
        id: 1,
        symbols: vec!["BTC-USD".into()],
        channels: vec!["book".into()],
        instruments: vec![],
        resumed: Vec::new(),
    }));
    stream.extend(frame(Body::Snapshot(pb::BookSnapshot {
        symbol: "BTC-USD".into(),
        seq: 1,
        bids: book.snapshot_levels(Side::Bid),
        asks: book.snapshot_levels(Side::Ask),
        checksum: book.checksum(),
        ..Default::default()
    })));
    let header = stream.len();
    for seq in 2..DELTAS + 2 {
        // Top-of-book updates: every delta changes the checksummed levels.
        let price = 10_000 - 1 - (seq % 10) as i64;
        book.apply(Side::Bid, price, 100 + (seq % 7) as i64);
        stream.extend(frame(Body::Delta(pb::BookDelta {
            symbol: "BTC-USD".into(),
            seq,
            updates: vec![pb::LevelUpdate {
                side: 1,
                price,
                size: 100 + (seq % 7) as i64,
            }],
            exchange_ts_ns: 1_700_000_000_000_000_000,
            ingest_ts_ns: 1_700_000_000_000_000_000,
            checksum: book.checksum(),
            channel: String::new(),
            prev_seq: 0,
        })));
    }
    let per_frame = (stream.len() - header) as f64 / DELTAS as f64;
    // CPU time, not wall time: the machine may be shared. A memo shared by
    // the clients (one per thread, as the fleet has) against one memo per
    // client (no reuse), alternated in one run: compare the ratio.
    let cpu = || tickwire_loadgen::stats::process_cpu_seconds(std::process::id()).unwrap_or(0.0);
    for round in 0..4 {
        let shared = round % 2 == 0;
        let mut sessions: Vec<Session> = (0..CLIENTS).map(upgraded).collect();
        let mut t = Tally::new();
        let mut memo = ChecksumMemo::new();
        let mut own: Vec<ChecksumMemo> = (0..CLIENTS).map(|_| ChecksumMemo::new()).collect();
        let (t0, c0) = (Instant::now(), cpu());
        for chunk in stream.chunks(16 * 1024) {
            for (i, s) in sessions.iter_mut().enumerate() {
                let m = if shared { &mut memo } else { &mut own[i] };
                s.handle_read(chunk, 1_700_000_000_001_000_000, &mut t, m);
            }
        }
        let (dt, dc) = (t0.elapsed(), cpu() - c0);
        println!(
            "{} memo: {} deltas ({per_frame:.0}-byte frames) verified by {CLIENTS} clients in {dt:?} wall, \
             {dc:.2} s CPU: {:.0} ns/msg of CPU, {:.2} M msgs/s per core; violations {}; {memo:?}",
            if shared { "shared" } else { "per-client" },
            t.deltas,
            dc * 1e9 / t.deltas as f64,
            t.deltas as f64 / dc / 1e6,
            t.violations_total()
        );
    }
}

/// A session of client `i`, upgraded and ready for frames.
fn upgraded(i: usize) -> Session {
    let mut s = Session::new(SessionConfig {
        host: "h".into(),
        encoding: Encoding::Proto,
        nonce: [i as u8; 16],
        mask_seed: i as u64,
        symbols: vec!["BTC-USD".into()],
        book: true,
        trades: false,
    });
    let req = String::from_utf8(s.pending_out().to_vec()).unwrap();
    let key = req
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap()
        .to_owned();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    let mut t = Tally::new();
    s.handle_read(resp.as_bytes(), 0, &mut t, &mut ChecksumMemo::new());
    s
}
