//! Derived book channels against a real engine (PROTOCOL §9): verifying
//! clients on every variant (`book.N`, `book@Tms`, `book.N@Tms`) in both
//! encodings, joining at random times and switching variants, end with the
//! top N of the feed's book, having checked `prev_seq` and the checksum on
//! every message; feed gaps and replaced books reach them as `Stale` and a
//! snapshot of their variant; bad channel names get `bad_request`.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::harness::{WAIT, config, delta, metric, proto, snap, wait_until};
use common::{Client, Enc, request_text};
use tickwire::book::book::OrderBook;
use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::net::engine::Engine;
use tickwire::wire::pb::{self, server_message::Body};

fn engine() -> Engine {
    Engine::start(config(2)).expect("engine starts")
}

/// The top `depth` levels of each side (all of them for `None`).
fn top(book: &OrderBook, depth: Option<usize>) -> (Vec<pb::Level>, Vec<pb::Level>) {
    let n = depth.unwrap_or(usize::MAX);
    (book.bids().take(n).collect(), book.asks().take(n).collect())
}

/// `book.10@100ms` → Some(10); `book@20ms` → None.
fn depth_of(channel: &str) -> Option<usize> {
    let rest = channel.strip_prefix("book.")?;
    rest.split('@').next()?.parse().ok()
}

fn truth(e: &Engine) -> HashMap<String, OrderBook> {
    e.ingest
        .with_market(WAIT, |m| {
            m.symbols()
                .map(|s| (s.name.to_string(), m.book(s.id).clone()))
                .collect()
        })
        .unwrap()
}

const VARIANTS: [&str; 8] = [
    "book.1",
    "book.5",
    "book.10",
    "book.25",
    "book@20ms",
    "book@100ms",
    "book.10@100ms",
    "book.3@50ms",
];

/// Clients on every variant, some joining late and some switching variant
/// mid-stream, end with exactly the top N of the feed's book.
#[test]
fn every_variant_keeps_a_verified_top_n_book_equal_to_the_feeds() {
    let e = engine();
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 21,
        symbols: 4,
        ..SynthConfig::default()
    });
    let names: Vec<String> = synth.names().map(str::to_string).collect();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&synth.snapshots(1))).unwrap();
    wait_until("symbols known", || truth(&e).len() == names.len());

    // (client, symbol, channel it holds at the end)
    let mut clients: Vec<(Client, String, String)> = Vec::new();
    let connect = |i: usize| {
        let enc = [Enc::Proto, Enc::JsonProtocol][i % 2];
        let mut c = Client::connect(e.ws_addr, enc, 100 + i as u64);
        let symbol = names[i % names.len()].clone();
        let channel = VARIANTS[i % VARIANTS.len()].to_string();
        subscribe_and_snapshot(&mut c, &[&symbol], &[&channel], i as u64);
        (c, symbol, channel)
    };
    for i in 0..16 {
        clients.push(connect(i));
    }
    let send = |n: u64, feed: &mut TcpStream, synth: &mut SynthMarket| {
        let batch: Vec<_> = (0..n).map(|k| synth.next_event(100 + k)).collect();
        feed.write_all(&proto(&batch)).unwrap();
    };
    for round in 0..20 {
        send(50, &mut feed, &mut synth);
        if round == 8 {
            for i in 16..24 {
                clients.push(connect(i));
            }
            // Three clients switch variant: a snapshot of the new one, then its deltas.
            for (k, (c, symbol, channel)) in clients.iter_mut().take(3).enumerate() {
                let next = VARIANTS[(k + 3) % VARIANTS.len()].to_string();
                c.subscribe(&[symbol.as_str()], &[&next], 1000 + k as u64);
                *channel = next;
            }
        }
        for (c, _, _) in clients.iter_mut() {
            c.read_for(Duration::from_millis(5));
        }
    }
    wait_until("feed applied", || {
        e.ingest.counters.accepted.get("delta") + e.ingest.counters.accepted.get("trade") == 1000
    });
    let books = truth(&e);
    for (i, (c, symbol, channel)) in clients.iter_mut().enumerate() {
        let want = top(&books[symbol.as_str()], depth_of(channel));
        let deadline = Instant::now() + WAIT;
        loop {
            let held = c
                .books
                .get(symbol.as_str())
                .filter(|b| !b.awaiting && b.channel == *channel)
                .map(|b| top(&b.book, None));
            if held.as_ref() == Some(&want) || Instant::now() >= deadline {
                assert_eq!(
                    held.as_ref(),
                    Some(&want),
                    "client {i} on {symbol} {channel}: the top of the feed's book"
                );
                break;
            }
            c.read_for(Duration::from_millis(20));
        }
        let first: Vec<_> = c.violations.iter().take(5).collect();
        assert!(c.violations.is_empty(), "client {i} {channel}: {first:?}");
        let b = &c.books[symbol.as_str()];
        assert!(
            b.deltas > 0 || channel.contains('@'),
            "client {i} {channel} got deltas"
        );
    }
    // A conflated client got fewer messages than a real-time one.
    let count = |c: &Client| c.log.iter().filter(|m| matches!(m, Body::Delta(_))).count();
    let real_time = clients
        .iter()
        .filter(|(_, _, ch)| ch == "book.25")
        .map(|(c, _, _)| count(c))
        .max()
        .unwrap();
    let conflated = clients
        .iter()
        .filter(|(_, _, ch)| ch == "book@100ms")
        .map(|(c, _, _)| count(c))
        .max()
        .unwrap();
    assert!(
        conflated < real_time,
        "book@100ms sent {conflated} deltas, book.25 {real_time}"
    );
    assert!(metric(&e, "tickwire_derived_views") > 0);
    // Every client leaves: no view is computed any more.
    drop(clients);
    wait_until("views dropped", || {
        metric(&e, "tickwire_derived_views") == 0
    });
}

/// Subscribes ([`Client::subscribe_when_known`]) and waits for the snapshot
/// of a book channel.
fn subscribe_and_snapshot(c: &mut Client, symbols: &[&str], channels: &[&str], id: u64) {
    c.subscribe_when_known(&request_text("subscribe", symbols, channels, id), id);
    let deadline = Instant::now() + WAIT;
    // The snapshot of a book channel follows.
    if channels.iter().any(|ch| ch.starts_with("book")) {
        for s in symbols {
            while !c.books.get(*s).is_some_and(|b| b.seq > 0 && !b.awaiting) {
                assert!(Instant::now() < deadline, "snapshot of {s}: {:?}", c.log);
                c.read_for(Duration::from_millis(10));
            }
        }
    }
}

/// A delta message of a symbol, as the test client logged it.
fn deltas_of<'a>(c: &'a Client, symbol: &'a str) -> impl Iterator<Item = &'a pb::BookDelta> {
    c.log.iter().filter_map(move |m| match m {
        Body::Delta(d) if d.symbol == symbol => Some(d),
        _ => None,
    })
}

/// A feed gap reaches a `book.N` subscriber as `Stale{feed_gap}`; the feed's
/// next snapshot as a snapshot of its variant; every delta carries the
/// channel's name and `prev_seq`; deltas that change nothing in the top N
/// are not sent.
#[test]
fn feed_gaps_and_replaced_books_reach_derived_subscribers_as_their_variant() {
    let e = engine();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AAA", 1, 100, 101)])).unwrap();
    let mut c = Client::connect(e.ws_addr, Enc::JsonQuery, 1);
    let mut p = Client::connect(e.ws_addr, Enc::Proto, 2);
    wait_until("symbol known", || truth(&e).contains_key("AAA"));
    subscribe_and_snapshot(&mut c, &["AAA"], &["book.1"], 1);
    subscribe_and_snapshot(&mut p, &["AAA"], &["book.1"], 1);
    // A bid below the best changes nothing in the top 1; then a better bid does.
    feed.write_all(&proto(&[delta("AAA", 2, 99, 5), delta("AAA", 3, 100, 7)]))
        .unwrap();
    for cl in [&mut c, &mut p] {
        assert!(
            cl.read_until(WAIT, |m| matches!(m, Body::Delta(_)))
                .is_some()
        );
        let d: Vec<_> = deltas_of(cl, "AAA").cloned().collect();
        assert_eq!(d.len(), 1, "only the delta that changed the top 1: {d:?}");
        assert_eq!(d[0].seq, 3, "the engine's seq of the delta that changed it");
        assert_eq!(d[0].prev_seq, 1, "follows the snapshot's seq");
        assert_eq!(d[0].channel, "book.1");
    }
    // A gap: Stale{feed_gap}, then the feed's new snapshot as a book.1 snapshot.
    feed.write_all(&proto(&[delta("AAA", 9, 100, 1)])).unwrap();
    for cl in [&mut c, &mut p] {
        assert!(
            cl.read_until(
                WAIT,
                |m| matches!(m, Body::Stale(s) if s.reason == "feed_gap" && s.symbol == "AAA")
            )
            .is_some()
        );
    }
    feed.write_all(&proto(&[snap("AAA", 20, 200, 201)]))
        .unwrap();
    for cl in [&mut c, &mut p] {
        assert!(
            cl.read_until(
                WAIT,
                |m| matches!(m, Body::Snapshot(s) if s.bids.len() == 1 && s.bids[0].price == 200)
            )
            .is_some()
        );
        let b = &cl.books["AAA"];
        assert_eq!(b.channel, "book.1");
        assert!(!b.awaiting);
        assert!(cl.violations.is_empty(), "{:?}", cl.violations);
    }
    // The plain book's deltas say prev_seq = seq - 1 and channel "book".
    let mut full = Client::connect(e.ws_addr, Enc::JsonQuery, 3);
    subscribe_and_snapshot(&mut full, &["AAA"], &["book"], 1);
    feed.write_all(&proto(&[delta("AAA", 21, 150, 3)])).unwrap();
    assert!(
        full.read_until(WAIT, |m| matches!(m, Body::Delta(_)))
            .is_some()
    );
    let d = deltas_of(&full, "AAA").next().unwrap();
    assert_eq!(d.prev_seq, d.seq - 1);
    assert!(d.channel.is_empty(), "plain book");
    assert!(full.violations.is_empty(), "{:?}", full.violations);
}

/// PROTOCOL §9 bad input: names outside the grammar and two book variants
/// in one request are `bad_request`, and change nothing; a connection holds
/// one book variant per symbol, and `unsubscribe` with `book` ends it.
#[test]
fn bad_channel_names_and_variant_replacement() {
    let e = engine();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AAA", 1, 100, 101)])).unwrap();
    wait_until("symbol known", || truth(&e).contains_key("AAA"));
    let mut c = Client::connect(e.ws_addr, Enc::JsonQuery, 1);
    subscribe_and_snapshot(&mut c, &["AAA"], &["trades"], 99);
    let bad = [
        r#"["book.0"]"#,
        r#"["book.101"]"#,
        r#"["book@7ms"]"#,
        r#"["book.5@"]"#,
        r#"["book.10@100ms@1s"]"#,
        r#"["book.99999999999999999999"]"#,
        r#"["book.010"]"#,
        r#"["book.5","book.10"]"#,
        r#"["book","book@100ms"]"#,
    ];
    for (i, channels) in bad.iter().enumerate() {
        let id = 50 + i as u64;
        c.send(&format!(
            r#"{{"op":"subscribe","symbols":["AAA"],"channels":{channels},"id":{id}}}"#
        ));
        assert!(
            c.read_until(
                WAIT,
                |m| matches!(m, Body::Error(er) if er.id == id && er.code == "bad_request")
            )
            .is_some(),
            "{channels} is a bad_request"
        );
    }
    assert!(c.books.is_empty(), "no book subscribed");
    c.subscribe(&["AAA"], &["book.5", "trades"], 1);
    assert!(
        c.read_until(
            WAIT,
            |m| matches!(m, Body::Snapshot(s) if s.channel == "book.5")
        )
        .is_some()
    );
    // Another variant replaces it: its snapshot, one subscription.
    c.subscribe(&["AAA"], &["book@250ms"], 2);
    assert!(
        c.read_until(
            WAIT,
            |m| matches!(m, Body::Snapshot(s) if s.channel == "book@250ms")
        )
        .is_some()
    );
    // Only book@250ms deltas follow (the client checks each delta's channel).
    feed.write_all(&proto(&[delta("AAA", 2, 100, 9)])).unwrap();
    assert!(
        c.read_until(
            WAIT,
            |m| matches!(m, Body::Delta(d) if d.channel == "book@250ms")
        )
        .is_some()
    );
    // `book` ends whichever variant is held.
    c.unsubscribe(&["AAA"], &["book"], 3);
    assert!(
        c.read_until(WAIT, |m| matches!(m, Body::Unsubscribed(u) if u.id == 3))
            .is_some()
    );
    feed.write_all(&proto(&[delta("AAA", 3, 100, 8)])).unwrap();
    c.read_for(Duration::from_millis(400));
    let after = c
        .log
        .iter()
        .skip_while(|m| !matches!(m, Body::Unsubscribed(_)))
        .filter(|m| matches!(m, Body::Delta(_) | Body::Snapshot(_)))
        .count();
    assert_eq!(after, 0, "nothing of the book after Unsubscribed");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}
