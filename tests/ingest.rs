//! Integration tests of the ingest server over real loopback TCP (PROTOCOL §3):
//! several feeds at once, every kind of bad input with its stated answer, and
//! well-behaved feeds whose books stay exact throughout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickwire::book::SymbolId;
use tickwire::book::book::OrderBook;
use tickwire::book::decode::{encode_json_line, encode_proto};
use tickwire::book::market::{Market, Published};
use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::config::{IngestConfig, MAX_INGEST_FRAME_BYTES, MarketLimits};
use tickwire::net::ingest::{IngestHandle, IngestServer, MarketSink};
use tickwire::wire::pb::{self, ingest_message::Body};
use tickwire::wire::{EncodedFrame, pb::server_message};

const WAIT: Duration = Duration::from_secs(20);

/// What a subscriber would have seen: each published message with its frame.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, Published, EncodedFrame)>>>);

impl MarketSink for Recorder {
    fn publish(&mut self, market: &Market, event: &Published, frame: &EncodedFrame) {
        let name = market.name(event.symbol()).to_string();
        self.0
            .lock()
            .unwrap()
            .push((name, event.clone(), frame.clone()));
    }
}

fn start(token: Option<&str>) -> (IngestHandle, Recorder) {
    start_with(IngestConfig {
        token: token.map(Arc::from),
        ..IngestConfig::default()
    })
}

/// An ingest server with `cfg`, on loopback port 0.
fn start_with(cfg: IngestConfig) -> (IngestHandle, Recorder) {
    let cfg = IngestConfig {
        proto_addr: "127.0.0.1:0".parse().unwrap(),
        json_addr: "127.0.0.1:0".parse().unwrap(),
        ..cfg
    };
    let rec = Recorder::default();
    let server = IngestServer::bind(cfg).unwrap();
    let handle = server.spawn(Box::new(rec.clone())).unwrap();
    (handle, rec)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn proto(msgs: &[pb::IngestMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_proto(m, &mut out);
    }
    out
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads until the server closes the connection (EOF or reset), bounded.
fn assert_closed_by_server(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + WAIT;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("unexpected read error {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "server did not close the connection"
        );
    }
}

fn snapshot(symbol: &str, seq: u64, bids: &[(i64, i64)], asks: &[(i64, i64)]) -> pb::IngestMessage {
    let lv = |l: &[(i64, i64)]| {
        l.iter()
            .map(|&(price, size)| pb::Level { price, size })
            .collect()
    };
    pb::IngestMessage {
        body: Some(Body::Snapshot(pb::BookSnapshot {
            symbol: symbol.into(),
            seq,
            bids: lv(bids),
            asks: lv(asks),
            price_decimals: 2,
            size_decimals: 4,
            exchange_ts_ns: 1,
            ..Default::default()
        })),
    }
}

fn delta(symbol: &str, seq: u64, side: pb::Side, price: i64, size: i64) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(Body::Delta(pb::BookDelta {
            symbol: symbol.into(),
            seq,
            updates: vec![pb::LevelUpdate {
                side: side as i32,
                price,
                size,
            }],
            exchange_ts_ns: 2,
            ..Default::default()
        })),
    }
}

fn market<R: Send + 'static>(h: &IngestHandle, f: impl FnOnce(&Market) -> R + Send + 'static) -> R {
    h.with_market(WAIT, f).expect("ingest thread answers")
}

fn book_of(h: &IngestHandle, name: &'static str) -> Option<(u64, OrderBook)> {
    market(h, move |m| {
        m.symbol_id(name)
            .map(|id| (m.snapshot_seq(id), m.book(id).clone()))
    })
}

/// Checks that, per symbol, the published stream is a snapshot then
/// contiguous deltas (or a Stale, then a snapshot), and that each delta's
/// checksum matches the book a client rebuilds from them.
fn verify_stream(rec: &Recorder, symbol: &str) -> usize {
    let events = rec.0.lock().unwrap();
    let mut book: Option<OrderBook> = None;
    let mut last_seq = 0;
    let mut deltas = 0;
    for (name, ev, frame) in events.iter().filter(|(n, ..)| n == symbol) {
        let decoded = <pb::ServerMessage as prost::Message>::decode(frame.payload()).unwrap();
        assert_eq!(&decoded, ev.msg(), "frame encodes the published message");
        match ev {
            Published::Snapshot { seq, msg, .. } => {
                let Some(server_message::Body::Snapshot(s)) = &msg.body else {
                    panic!()
                };
                assert!(
                    *seq > last_seq,
                    "{name}: snapshot seq {seq} after {last_seq}"
                );
                let b = OrderBook::from_levels(&s.bids, &s.asks).unwrap();
                assert_eq!(b.checksum(), s.checksum);
                book = Some(b);
                last_seq = *seq;
            }
            Published::Delta { seq, msg, .. } => {
                let Some(server_message::Body::Delta(d)) = &msg.body else {
                    panic!()
                };
                let b = book.as_mut().expect("delta only after a snapshot");
                assert_eq!(*seq, last_seq + 1, "{name}: deltas are contiguous");
                for u in &d.updates {
                    let side = tickwire::book::book::Side::from_pb(u.side).unwrap();
                    b.apply(side, u.price, u.size);
                }
                assert_eq!(b.checksum(), d.checksum, "{name}: checksum after seq {seq}");
                last_seq = *seq;
                deltas += 1;
            }
            Published::Stale { .. } => book = None,
            Published::Trade { .. } => {}
        }
    }
    deltas
}

/// A good feed streams a synthetic market while other connections send every
/// kind of bad input; the good feed's books end exactly equal to the truth.
#[test]
fn bad_feeds_never_disturb_a_good_feed() {
    let (h, rec) = start(None);
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 7,
        symbols: 5,
        ..SynthConfig::default()
    });
    let mut good = connect(h.proto_addr);
    good.write_all(&proto(&synth.snapshots(1))).unwrap();
    let mut sent = 0;
    let mut stream_some = |good: &mut TcpStream, synth: &mut SynthMarket| {
        let batch: Vec<_> = (0..200).map(|i| synth.next_event(10 + i)).collect();
        good.write_all(&proto(&batch)).unwrap();
        sent += batch.len();
    };
    stream_some(&mut good, &mut synth);

    // Unreadable streams: each closes only its own connection.
    let cases: [(&str, Vec<u8>, SocketAddr); 4] = [
        (
            "undecodable",
            vec![0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
            h.proto_addr,
        ),
        ("bad_length", vec![0xff; 11], h.proto_addr),
        (
            "frame_too_large",
            vec![0x81, 0x80, 0x80, 0x01],
            h.proto_addr,
        ), // varint 2 MiB + 1
        ("not_json_object", b"[1,2,3]\n".to_vec(), h.json_addr),
    ];
    for (reason, bytes, addr) in cases {
        let before = h.counters.feeds_closed.get(reason);
        let mut bad = connect(addr);
        bad.write_all(&bytes).unwrap();
        assert_closed_by_server(&mut bad);
        wait_until(reason, || h.counters.feeds_closed.get(reason) == before + 1);
        stream_some(&mut good, &mut synth);
    }
    // A JSON line over 1 MiB without a newline.
    let mut bad = connect(h.json_addr);
    let _ = bad.write_all(&vec![b' '; MAX_INGEST_FRAME_BYTES + 10]);
    assert_closed_by_server(&mut bad);
    wait_until("line_too_long", || {
        h.counters.feeds_closed.get("line_too_long") == 1
    });

    // Readable but invalid: rejected, the connection stays open and usable.
    let mut other = connect(h.proto_addr);
    let rejected_before = h.counters.rejected.total();
    other
        .write_all(&proto(&[
            snapshot("bad symbol!", 1, &[(100, 1)], &[(101, 1)]),
            delta("NOPE-1", 2, pb::Side::Bid, 100, 1),
            delta("BTC-USD", 1_000_000, pb::Side::Bid, 100, 1),
            pb::IngestMessage { body: None },
            snapshot("OTHER-1", 10, &[(100, 5)], &[(105, 5)]),
            delta("OTHER-1", 11, pb::Side::Bid, 101, 7),
        ]))
        .unwrap();
    wait_until("rejections", || {
        h.counters.rejected.total() == rejected_before + 4
    });
    assert_eq!(h.counters.rejected.get("invalid_symbol"), 1);
    assert_eq!(h.counters.rejected.get("no_snapshot"), 1);
    assert_eq!(h.counters.rejected.get("not_owner"), 1);
    assert_eq!(h.counters.rejected.get("empty_message"), 1);
    wait_until("OTHER-1 applied", || {
        book_of(&h, "OTHER-1").is_some_and(|(seq, _)| seq == 2)
    });
    let (_, b) = book_of(&h, "OTHER-1").unwrap();
    assert_eq!(
        b.bids().map(|l| (l.price, l.size)).collect::<Vec<_>>(),
        vec![(101, 7), (100, 5)]
    );

    // The good feed is unaffected: every event applied, books equal the truth.
    stream_some(&mut good, &mut synth);
    let expected = sent as u64;
    wait_until("good feed applied", || {
        h.counters.accepted.get("delta") + h.counters.accepted.get("trade") == expected + 1
    });
    let mut deltas = 0;
    for i in 0..synth.len() {
        let name: &'static str =
            Box::leak(synth.names().nth(i).unwrap().to_string().into_boxed_str());
        let (_, b) = book_of(&h, name).unwrap();
        assert_eq!(&b, synth.book(i).unwrap(), "{name} equals the feed's book");
        deltas += verify_stream(&rec, name);
    }
    assert!(
        deltas > 500,
        "the good feed's deltas were published ({deltas})"
    );
    assert_eq!(
        h.counters.feeds_open.get(),
        2,
        "the good and the 'other' feed are still open"
    );
}

/// Two feeds at once, one per framing, over distinct symbols; then ownership,
/// gaps, invalid deltas and disconnects reach the published stream as
/// PROTOCOL §3–§4 say.
#[test]
fn sequencing_ownership_gaps_and_feed_down() {
    let (h, rec) = start(None);
    let mut a = connect(h.proto_addr);
    let mut j = connect(h.json_addr);
    a.write_all(&proto(&[
        snapshot("AAA", 100, &[(1000, 10)], &[(1010, 10)]),
        delta("AAA", 101, pb::Side::Bid, 1001, 3),
    ]))
    .unwrap();
    let mut line = String::new();
    encode_json_line(
        &snapshot("JJJ", 5, &[(2000, 10)], &[(2010, 10)]),
        2,
        4,
        &mut line,
    );
    line.push_str(
        r#"{"type":"delta","symbol":"JJJ","seq":6,"bids":[["20.05","1.5000"]],"asks":[]}"#,
    );
    line.push('\n');
    line.push_str(r#"{"type":"trade","symbol":"JJJ","price":"20.05","size":"0.0100","aggressor":"bid","trade_id":"t-1"}"#);
    line.push('\n');
    j.write_all(line.as_bytes()).unwrap();
    wait_until("both feeds applied", || {
        book_of(&h, "AAA").is_some_and(|(s, _)| s == 2)
            && book_of(&h, "JJJ").is_some_and(|(s, _)| s == 2)
    });
    let (_, jb) = book_of(&h, "JJJ").unwrap();
    assert_eq!(
        jb.best(tickwire::book::book::Side::Bid)
            .map(|l| (l.price, l.size)),
        Some((2005, 15000))
    );

    // JSON: an inexact decimal in a delta for a book this feed owns is a gap.
    j.write_all(b"{\"type\":\"delta\",\"symbol\":\"JJJ\",\"seq\":7,\"bids\":[[\"20.051\",\"1\"]],\"asks\":[]}\n")
        .unwrap();
    wait_until("bad decimal rejected", || {
        h.counters.rejected.get("bad_decimal") == 1
    });
    wait_until("JJJ stale", || {
        market(&h, |m| {
            m.stale_reason(m.symbol_id("JJJ").unwrap()).is_some()
        })
    });
    // Further deltas take no seq until a new snapshot.
    j.write_all(b"{\"type\":\"delta\",\"symbol\":\"JJJ\",\"seq\":8,\"bids\":[[\"20.06\",\"1\"]],\"asks\":[]}\n")
        .unwrap();
    wait_until("stale delta rejected", || {
        h.counters.rejected.get("book_stale") == 1
    });
    assert_eq!(book_of(&h, "JJJ").unwrap().0, 2);

    // A feed gap on AAA (101 → 103): Stale{feed_gap}, trades keep flowing.
    a.write_all(&proto(&[delta("AAA", 103, pb::Side::Bid, 999, 1)]))
        .unwrap();
    wait_until("gap", || h.counters.rejected.get("feed_gap") == 1);
    // Another feed takes AAA over with a snapshot; the sequence continues.
    let mut b = connect(h.proto_addr);
    b.write_all(&proto(&[
        snapshot("AAA", 1, &[(900, 1)], &[(910, 1)]),
        delta("AAA", 2, pb::Side::Ask, 909, 2),
    ]))
    .unwrap();
    wait_until("AAA resumed by b", || {
        book_of(&h, "AAA").is_some_and(|(s, _)| s == 4)
    });
    // The old owner is now rejected.
    a.write_all(&proto(&[delta("AAA", 104, pb::Side::Bid, 999, 1)]))
        .unwrap();
    wait_until("not owner", || h.counters.rejected.get("not_owner") == 1);
    assert_eq!(book_of(&h, "AAA").unwrap().0, 4);

    // b disconnects: AAA gets Stale{feed_down}; JJJ (owned by j) does not.
    drop(b);
    wait_until("feed down", || {
        market(&h, |m| {
            m.stale_reason(m.symbol_id("AAA").unwrap()).is_some()
        })
    });
    let stale: Vec<(String, String)> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(n, ev, _)| match ev.msg().body.as_ref() {
            Some(server_message::Body::Stale(s)) => Some((n.clone(), s.reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        stale,
        vec![
            ("JJJ".to_string(), "feed_gap".to_string()),
            ("AAA".to_string(), "feed_gap".to_string()),
            ("AAA".to_string(), "feed_down".to_string()),
        ]
    );
    // The published streams are gap-free with valid checksums.
    verify_stream(&rec, "AAA");
    verify_stream(&rec, "JJJ");
    let seqs: Vec<u64> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, ..)| n == "AAA")
        .filter_map(|(_, e, _)| e.seq())
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4],
        "AAA: snapshot 1, delta 2, b's snapshot 3, delta 4"
    );
    let _ = SymbolId(0);
}

/// With a token configured: no Hello, or a wrong token, closes the feed; the
/// right token is accepted.
#[test]
fn token_is_enforced() {
    let (h, _rec) = start(Some("s3cret"));
    let hello = |t: &str| pb::IngestMessage {
        body: Some(Body::Hello(pb::Hello {
            feed_id: "cb-1".into(),
            token: t.into(),
        })),
    };
    let mut no_hello = connect(h.proto_addr);
    no_hello
        .write_all(&proto(&[snapshot("TOK", 1, &[(1, 1)], &[(2, 1)])]))
        .unwrap();
    assert_closed_by_server(&mut no_hello);
    let mut wrong = connect(h.json_addr);
    wrong
        .write_all(b"{\"type\":\"hello\",\"feed_id\":\"x\",\"token\":\"nope\"}\n")
        .unwrap();
    assert_closed_by_server(&mut wrong);
    let mut right = connect(h.proto_addr);
    right
        .write_all(&proto(&[
            hello("s3cret"),
            snapshot("TOK", 1, &[(1, 1)], &[(2, 1)]),
        ]))
        .unwrap();
    wait_until("accepted", || book_of(&h, "TOK").is_some());
    assert_eq!(h.counters.feeds_closed.get("missing_hello"), 1);
    assert_eq!(h.counters.feeds_closed.get("bad_token"), 1);
    assert_eq!(h.counters.accepted.get("hello"), 1);
    assert_eq!(
        book_of(&h, "TOK").unwrap().0,
        1,
        "nothing from the refused feeds was applied"
    );
}

/// A well-behaved protobuf feed streaming a synthetic market, to check that
/// whatever else happens its books stay exact.
struct GoodFeed {
    stream: TcpStream,
    synth: SynthMarket,
    /// Deltas and trades sent.
    sent: u64,
    ts: u64,
}

impl GoodFeed {
    fn connect(addr: SocketAddr, hello: Option<&str>) -> GoodFeed {
        let synth = SynthMarket::new(SynthConfig {
            seed: 11,
            symbols: 3,
            ..SynthConfig::default()
        });
        let mut stream = connect(addr);
        let mut first = Vec::new();
        if let Some(token) = hello {
            first.push(pb::IngestMessage {
                body: Some(Body::Hello(pb::Hello {
                    feed_id: "good".into(),
                    token: token.into(),
                })),
            });
        }
        first.extend(synth.snapshots(1));
        stream.write_all(&proto(&first)).unwrap();
        GoodFeed {
            stream,
            synth,
            sent: 0,
            ts: 10,
        }
    }

    /// Waits until the ingest thread has every one of the feed's books.
    fn wait_ready(&self, h: &IngestHandle) {
        let names: Vec<String> = self.synth.names().map(str::to_string).collect();
        wait_until("good feed's snapshots", || {
            let names = names.clone();
            market(h, move |m| names.iter().all(|n| m.symbol_id(n).is_some()))
        });
    }

    fn stream_some(&mut self) {
        let batch: Vec<_> = (0..100)
            .map(|i| self.synth.next_event(self.ts + i))
            .collect();
        self.ts += 100;
        self.stream.write_all(&proto(&batch)).unwrap();
        self.sent += batch.len() as u64;
    }

    /// Waits until every event sent was applied, then checks each book against
    /// the feed's own and the published stream for gaps and checksums.
    fn check(&self, h: &IngestHandle, rec: &Recorder, accepted_before: u64) {
        let expected = accepted_before + self.sent;
        wait_until("good feed applied", || {
            h.counters.accepted.get("delta") + h.counters.accepted.get("trade") >= expected
        });
        assert_eq!(
            h.counters.accepted.get("delta") + h.counters.accepted.get("trade"),
            expected
        );
        for i in 0..self.synth.len() {
            let name: &'static str = Box::leak(
                self.synth
                    .names()
                    .nth(i)
                    .unwrap()
                    .to_string()
                    .into_boxed_str(),
            );
            let (_, b) = book_of(h, name).unwrap();
            assert_eq!(
                &b,
                self.synth.book(i).unwrap(),
                "{name} equals the feed's book"
            );
            assert!(verify_stream(rec, name) > 0, "{name} streamed deltas");
            assert_eq!(
                market(h, move |m| m.stale_reason(m.symbol_id(name).unwrap())),
                None,
                "{name} is live"
            );
        }
    }
}

fn levels(n: i64, best: i64, step: i64) -> Vec<(i64, i64)> {
    (0..n).map(|i| (best + i * step, 1)).collect()
}

fn delta_of(symbol: &str, seq: u64, updates: Vec<pb::LevelUpdate>) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(Body::Delta(pb::BookDelta {
            symbol: symbol.into(),
            seq,
            updates,
            ..Default::default()
        })),
    }
}

fn stale_reasons_of(rec: &Recorder, symbol: &str) -> Vec<String> {
    rec.0
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, ..)| n == symbol)
        .filter_map(|(_, ev, _)| match ev.msg().body.as_ref() {
            Some(server_message::Body::Stale(s)) => Some(s.reason.clone()),
            _ => None,
        })
        .collect()
}

/// The market limits (PROTOCOL §3 "readable but invalid"): each refusal is a
/// rejection counted by its reason, the connection stays, a rejected delta for
/// an owned book is a gap until the next snapshot, and a good feed streaming
/// meanwhile is untouched. The symbol cap is lowered for the test; the depth
/// (5 000) and update (10 000) caps are the defaults.
#[test]
fn market_limits_reject_and_leave_other_books_alone() {
    let (h, rec) = start_with(IngestConfig {
        market: MarketLimits {
            max_symbols: 5,
            ..MarketLimits::default()
        },
        ..IngestConfig::default()
    });
    let depth = MarketLimits::default().max_book_levels as i64;
    let max_updates = MarketLimits::default().max_delta_updates;
    let mut good = GoodFeed::connect(h.proto_addr, None);
    good.wait_ready(&h);
    good.stream_some();
    let mut bad = connect(h.proto_addr);
    let rejected = |reason: &str| h.counters.rejected.get(reason);

    // Symbols 4 and 5 fit (the good feed has 3); a 6th is refused.
    bad.write_all(&proto(&[
        snapshot(
            "DEEP",
            1,
            &levels(depth, 100_000, -1),
            &levels(depth, 100_001, 1),
        ),
        snapshot("WIDE", 1, &[(10, 1)], &[(11, 1)]),
        snapshot("SIXTH", 1, &[(10, 1)], &[(11, 1)]),
    ]))
    .unwrap();
    wait_until("too_many_symbols", || rejected("too_many_symbols") == 1);
    assert_eq!(book_of(&h, "SIXTH"), None);
    good.stream_some();

    // One level too many on a side: the snapshot is refused, DEEP stays.
    bad.write_all(&proto(&[snapshot(
        "DEEP",
        2,
        &levels(depth + 1, 100_000, -1),
        &[],
    )]))
    .unwrap();
    wait_until("book_too_deep (snapshot)", || {
        rejected("book_too_deep") == 1
    });
    let (seq, b) = book_of(&h, "DEEP").unwrap();
    assert_eq!(
        (seq, b.depth(tickwire::book::book::Side::Ask)),
        (1, depth as usize)
    );

    // DEEP is at the cap: a delta that removes a level and adds one is fine; one
    // that ends a level over (re-adding the removed one, adding another) is
    // refused, and is a gap: the next delta is not applied either.
    let up = |side: pb::Side, price: i64, size: i64| pb::LevelUpdate {
        side: side as i32,
        price,
        size,
    };
    bad.write_all(&proto(&[
        delta_of(
            "DEEP",
            2,
            vec![
                up(pb::Side::Bid, 100_000, 0),
                up(pb::Side::Bid, 100_001 - depth - 5, 3),
            ],
        ),
        delta_of(
            "DEEP",
            3,
            vec![up(pb::Side::Bid, 100_000, 7), up(pb::Side::Bid, 1, 1)],
        ),
        delta_of("DEEP", 4, vec![up(pb::Side::Bid, 99_999, 0)]),
    ]))
    .unwrap();
    wait_until("book_too_deep (delta)", || rejected("book_too_deep") == 2);
    wait_until("stale delta", || rejected("book_stale") == 1);
    assert_eq!(stale_reasons_of(&rec, "DEEP"), vec!["feed_gap"]);
    let (seq, b) = book_of(&h, "DEEP").unwrap();
    assert_eq!(seq, 2, "the first delta was applied, nothing after");
    assert_eq!(b.depth(tickwire::book::book::Side::Bid), depth as usize);
    assert_eq!(
        b.best(tickwire::book::book::Side::Bid).unwrap().price,
        99_999
    );
    good.stream_some();

    // Too many updates in one delta: refused, a gap; a snapshot resumes.
    let many: Vec<_> = (0..=max_updates as i64)
        .map(|i| up(pb::Side::Ask, 11 + i % 50, 1 + i))
        .collect();
    bad.write_all(&proto(&[
        delta_of("WIDE", 2, many),
        snapshot("WIDE", 10, &[(10, 2)], &[(11, 2)]),
        delta_of("WIDE", 11, vec![up(pb::Side::Bid, 9, 1)]),
    ]))
    .unwrap();
    wait_until("too_many_updates", || rejected("too_many_updates") == 1);
    wait_until("WIDE resumed", || {
        book_of(&h, "WIDE").is_some_and(|(seq, _)| seq == 3)
    });
    assert_eq!(stale_reasons_of(&rec, "WIDE"), vec!["feed_gap"]);
    verify_stream(&rec, "DEEP");
    verify_stream(&rec, "WIDE");

    good.stream_some();
    good.check(&h, &rec, 2);
    assert_eq!(h.counters.feeds_open.get(), 2, "both feeds still connected");
}

/// `max_feeds` silent connections cannot lock real feeds out, even with a
/// token configured: 1 100 connections that never send a byte, against a
/// limit of 8 feeds (one held by a good feed). Those over the limit are
/// refused at once; those under it are closed at the hello deadline; then a
/// real feed gets in. The good feed, which said hello, is never touched.
#[test]
fn silent_connections_are_closed_at_the_hello_deadline() {
    let (h, rec) = start_with(IngestConfig {
        token: Some(Arc::from("t0k")),
        max_feeds: 8,
        feed_hello_timeout_ms: 500,
        ..IngestConfig::default()
    });
    let mut good = GoodFeed::connect(h.proto_addr, Some("t0k"));
    good.wait_ready(&h);
    let silent: Vec<TcpStream> = (0..1_100)
        .map(|i| {
            TcpStream::connect(if i % 2 == 0 {
                h.proto_addr
            } else {
                h.json_addr
            })
            .unwrap()
        })
        .collect();
    good.stream_some();
    // Each silent connection is refused at the limit or closed at the deadline
    // (how many of each depends on how fast they arrive against the deadline).
    wait_until("every silent connection closed", || {
        h.counters.feeds_closed.get("too_many_feeds") + h.counters.feeds_closed.get("hello_timeout")
            == 1_100
    });
    assert!(h.counters.feeds_closed.get("hello_timeout") >= 7);
    assert_eq!(h.counters.feeds_accepted.get(), 1_101);
    assert_eq!(h.counters.feeds_open.get(), 1, "only the good feed is left");
    let mut real = connect(h.json_addr);
    real.write_all(b"{\"type\":\"hello\",\"feed_id\":\"late\",\"token\":\"t0k\"}\n")
        .unwrap();
    let mut line = String::new();
    encode_json_line(&snapshot("LATE", 1, &[(5, 1)], &[(6, 1)]), 2, 4, &mut line);
    real.write_all(line.as_bytes()).unwrap();
    wait_until("the real feed got in", || book_of(&h, "LATE").is_some());
    good.stream_some();
    good.check(&h, &rec, 0);
    drop(silent);
}

/// A slow-loris feed that said hello, then sends a message one byte at a
/// time, is closed at the message deadline; its books go `feed_down`. A feed
/// that is merely quiet between messages is not.
#[test]
fn a_message_dribbled_too_slowly_closes_the_feed() {
    let (h, rec) = start_with(IngestConfig {
        feed_message_timeout_ms: 400,
        ..IngestConfig::default()
    });
    let mut good = GoodFeed::connect(h.proto_addr, None);
    let mut quiet = connect(h.proto_addr);
    quiet
        .write_all(&proto(&[snapshot("QUIET", 1, &[(1, 1)], &[(2, 1)])]))
        .unwrap();
    let mut slow = connect(h.json_addr);
    let mut lines = String::new();
    encode_json_line(&snapshot("SLOW", 1, &[(1, 1)], &[(2, 1)]), 2, 4, &mut lines);
    slow.write_all(lines.as_bytes()).unwrap();
    wait_until("SLOW and QUIET exist", || {
        book_of(&h, "SLOW").is_some() && book_of(&h, "QUIET").is_some()
    });
    let start = Instant::now();
    let mut closed = false;
    for b in br#"{"type":"delta","symbol":"SLOW","seq":2,"bids":[],"asks":[]"#
        .iter()
        .cycle()
    {
        good.stream_some();
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        if h.counters.feeds_closed.get("message_timeout") == 1 {
            closed = true;
            break;
        }
        assert!(start.elapsed() < WAIT, "the slow feed was never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(closed);
    wait_until("message_timeout", || {
        h.counters.feeds_closed.get("message_timeout") == 1
    });
    assert!(start.elapsed() >= Duration::from_millis(400));
    wait_until("SLOW feed_down", || {
        stale_reasons_of(&rec, "SLOW") == ["feed_down"]
    });
    // QUIET said nothing for as long, and is still open and live.
    assert!(stale_reasons_of(&rec, "QUIET").is_empty());
    quiet
        .write_all(&proto(&[delta("QUIET", 2, pb::Side::Bid, 1, 5)]))
        .unwrap();
    wait_until("QUIET still applies", || {
        book_of(&h, "QUIET").is_some_and(|(seq, _)| seq == 2)
    });
    good.check(&h, &rec, 1);
    assert_eq!(h.counters.feeds_open.get(), 2);
}

/// A `feed_id` over 64 bytes closes the connection with its own reason; 64
/// bytes is fine.
#[test]
fn an_oversized_feed_id_closes_the_feed() {
    let (h, rec) = start(None);
    let mut good = GoodFeed::connect(h.proto_addr, None);
    let hello = |id: &str| {
        proto(&[pb::IngestMessage {
            body: Some(Body::Hello(pb::Hello {
                feed_id: id.into(),
                token: String::new(),
            })),
        }])
    };
    let mut long = connect(h.proto_addr);
    long.write_all(&hello(&"x".repeat(65))).unwrap();
    long.write_all(&proto(&[snapshot("LONG", 1, &[(1, 1)], &[])]))
        .unwrap();
    assert_closed_by_server(&mut long);
    wait_until("feed_id_too_long", || {
        h.counters.feeds_closed.get("feed_id_too_long") == 1
    });
    let mut ok = connect(h.proto_addr);
    ok.write_all(&hello(&"y".repeat(64))).unwrap();
    ok.write_all(&proto(&[snapshot("OK64", 1, &[(1, 1)], &[])]))
        .unwrap();
    wait_until("64 bytes accepted", || book_of(&h, "OK64").is_some());
    assert_eq!(book_of(&h, "LONG"), None);
    good.stream_some();
    good.check(&h, &rec, 0);
}

/// The real binary, with its stderr log collected line by line.
struct Served {
    child: Child,
    ws_addr: SocketAddr,
    proto_addr: SocketAddr,
    json_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// `tickwire serve` on loopback port 0, one worker, logging at info
    /// without colours; under `ulimit -n fd_limit` when given (through `sh`).
    fn start(fd_limit: Option<u32>, args: &[&str]) -> Served {
        let bin = env!("CARGO_BIN_EXE_tickwire");
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
            "--ingest-json",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--no-pin",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tickwire");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || lines.next().expect("a line").expect("stdout");
        let ws_addr = next()
            .strip_prefix("listening on ")
            .expect("listening on")
            .parse()
            .unwrap();
        let ingest = next();
        let mut words = ingest.split_whitespace();
        let (proto_addr, json_addr) = match (words.nth(2), words.nth(1)) {
            (Some(p), Some(j)) => (p.parse().unwrap(), j.parse().unwrap()),
            _ => panic!("unexpected line {ingest:?}"),
        };
        Served {
            child,
            ws_addr,
            proto_addr,
            json_addr,
            log,
        }
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.ws_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `feed_id` full of log-breaking characters reaches the log only escaped:
/// no raw newline starts a forged line, no raw quote or ANSI escape appears,
/// and `/metrics` never carries it.
#[test]
fn feed_ids_reach_the_log_escaped() {
    let served = Served::start(None, &[]);
    // 52 bytes: a forged log line, quotes, an ANSI colour, a carriage return.
    let evil = "ev\"il\n2030-01-01T00:00:00Z INFO FORGED-LINE\u{1b}[31mRED\r";
    assert!(evil.len() <= 64);
    let mut feed = connect(served.json_addr);
    let mut line = String::new();
    encode_json_line(
        &pb::IngestMessage {
            body: Some(Body::Hello(pb::Hello {
                feed_id: evil.into(),
                token: String::new(),
            })),
        },
        0,
        0,
        &mut line,
    );
    // A rejection is logged with the name too.
    line.push_str("{\"type\":\"delta\",\"symbol\":\"NOPE\",\"seq\":1}\n");
    feed.write_all(line.as_bytes()).unwrap();
    wait_until("hello and rejection logged", || {
        !served.lines_with("feed hello").is_empty()
            && !served.lines_with("ingest message rejected").is_empty()
    });
    drop(feed);
    wait_until("disconnect logged", || {
        !served.lines_with("feed disconnected").is_empty()
    });
    let hello = served.lines_with("feed hello").remove(0);
    let shown = tickwire::book::feed_name::display_feed_id(evil);
    assert!(hello.contains(&format!("name={shown}")), "{hello}");
    assert!(shown.starts_with("ev\\u{22}il\\u{a}2030-01-01T00:00:00Z\\u{20}INFO"));
    assert!(
        shown.ends_with("FORGED-LINE\\u{1b}\\u{5b}31mRED\\u{d}"),
        "{shown}"
    );
    let log = served.log.lock().unwrap().clone();
    for l in &log {
        assert!(
            !l.contains('\u{1b}') && !l.contains('\r'),
            "raw control character: {l:?}"
        );
        assert!(!l.contains("ev\"il"), "raw quote: {l}");
        if l.contains("FORGED-LINE") {
            assert!(
                l.contains("feed hello")
                    || l.contains("ingest message rejected")
                    || l.contains("feed disconnected"),
                "a forged log line: {l}"
            );
        }
    }
    assert_eq!(
        log.iter().filter(|l| l.contains("FORGED-LINE")).count(),
        3,
        "hello, rejection and disconnect each name the feed once: {log:#?}"
    );
    let metrics = served.get("/metrics");
    assert!(
        metrics.contains("tickwire_ingest_messages_total{kind=\"hello\"} 1\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("FORGED") && !metrics.contains('\u{1b}'));
}

/// Out of file descriptors (the real binary under `ulimit -n`): feeds keep
/// arriving while the ingest thread cannot accept them; once descriptors are
/// freed, the queued ones are accepted within the retry period although no new
/// connection arrives (the listener is edge-triggered), their data is applied,
/// and the failure was logged once, not once per retry or arrival.
#[test]
fn accept_out_of_descriptors_retries_and_logs_once() {
    // About a dozen descriptors at start-up (stdio, pollers, wakers, three
    // listeners): 40 leaves room for a couple of dozen feeds.
    let served = Served::start(Some(40), &[]);
    let hello = |i: usize| {
        proto(&[pb::IngestMessage {
            body: Some(Body::Hello(pb::Hello {
                feed_id: format!("f{i}"),
                token: String::new(),
            })),
        }])
    };
    let connected = || served.lines_with("feed connected").len();
    let mut feeds = Vec::new();
    // Connect until the server stops accepting, then ten more.
    let mut last_accepted = 0;
    let mut queued = 0;
    while queued < 10 {
        assert!(feeds.len() < 200, "never ran out of descriptors");
        let mut s = connect(served.proto_addr);
        s.write_all(&hello(feeds.len())).unwrap();
        feeds.push(s);
        let before = Instant::now();
        while connected() < feeds.len() && before.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if connected() == feeds.len() {
            last_accepted = feeds.len();
        } else {
            queued += 1;
        }
    }
    // The last queued feed also sends a snapshot while it waits.
    let late = feeds.len() - 1;
    feeds[late]
        .write_all(&proto(&[snapshot("QUEUED", 1, &[(1, 1)], &[(2, 1)])]))
        .unwrap();
    // Several retries fail meanwhile (every 100 ms).
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        connected(),
        last_accepted,
        "nothing accepted while out of descriptors"
    );
    let failures = served.lines_with("accept failed");
    assert_eq!(failures.len(), 1, "logged once: {failures:#?}");
    assert!(
        failures[0].contains("failures_since_last_line=0"),
        "{}",
        failures[0]
    );
    // Free 12 descriptors: close accepted feeds (the oldest).
    for s in feeds.drain(..12) {
        drop(s);
    }
    wait_until("queued feeds accepted without a new arrival", || {
        connected() == last_accepted + 10
    });
    // Two descriptors to spare: ask the client port what the queued feed sent.
    wait_until("the queued feed's snapshot applied", || {
        served.get("/symbols").contains("\"QUEUED\"")
    });
    let metrics = served.get("/metrics");
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tickwire_ingest_accept_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("accept errors metric");
    assert!(errors >= 5, "retried every 100 ms: {errors}");
    assert_eq!(served.lines_with("accept failed").len(), 1);
}
