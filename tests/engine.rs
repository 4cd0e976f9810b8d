//! The whole engine on loopback: a TCP feed, many WebSocket clients of both
//! encodings, the gap-free snapshot protocol, feed failures as PROTOCOL §3–§4
//! say, subscription errors, HTTP endpoints, and no index entry surviving a
//! close. Two workers, pinning off, so it passes on two cores.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::harness::{WAIT, config, delta, metric, metric_with, proto, snap, trade, wait_until};
use common::{Client, Enc};
use tickwire::book::synth::{Rng, SynthConfig, SynthMarket};
use tickwire::fanout::worker::WorkerConfig;
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::server_message::Body;

fn engine_with(worker: WorkerConfig) -> Engine {
    Engine::start(EngineConfig {
        worker,
        ..config(2)
    })
    .expect("engine starts")
}

fn engine() -> Engine {
    engine_with(WorkerConfig::default())
}

fn seqs(e: &Engine) -> HashMap<String, u64> {
    e.ingest
        .with_market(WAIT, |m| {
            m.symbols().map(|s| (s.name.to_string(), s.seq)).collect()
        })
        .unwrap()
}

fn http_get(addr: SocketAddr, path: &str, method: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// 60 clients of both encodings subscribe to random subsets, a third of them
/// late; every one sees a snapshot then contiguous deltas with matching
/// checksums, and ends with books equal to the feed's.
#[test]
fn many_clients_get_gap_free_books_equal_to_the_feed() {
    let e = engine();
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 11,
        symbols: 8,
        ..SynthConfig::default()
    });
    let names: Vec<String> = synth.names().map(str::to_string).collect();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&synth.snapshots(1))).unwrap();
    wait_until("symbols known", || seqs(&e).len() == names.len());

    let mut rng = Rng::new(5);
    let mut clients = Vec::new();
    let subscribe = |i: usize, rng: &mut Rng| {
        let enc = [Enc::Proto, Enc::JsonProtocol, Enc::JsonQuery][i % 3];
        let mut c = Client::connect(e.ws_addr, enc, i as u64 + 1);
        let mut mine: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|_| rng.chance(0.4))
            .collect();
        if mine.is_empty() {
            mine.push(&names[i % names.len()]);
        }
        let channels: &[&str] = if i.is_multiple_of(2) {
            &["book", "trades"]
        } else {
            &["book"]
        };
        c.subscribe(&mine, channels, i as u64);
        let subs: Vec<String> = mine.iter().map(|s| s.to_string()).collect();
        (c, subs)
    };
    for i in 0..40 {
        clients.push(subscribe(i, &mut rng));
    }
    let send = |n: u64, feed: &mut TcpStream, synth: &mut SynthMarket| {
        let batch: Vec<_> = (0..n).map(|k| synth.next_event(100 + k)).collect();
        feed.write_all(&proto(&batch)).unwrap();
    };
    for _ in 0..10 {
        send(100, &mut feed, &mut synth);
        for (c, _) in clients.iter_mut() {
            c.read_for(Duration::from_millis(1));
        }
    }
    for i in 40..60 {
        clients.push(subscribe(i, &mut rng));
    }
    for _ in 0..10 {
        send(100, &mut feed, &mut synth);
        for (c, _) in clients.iter_mut() {
            c.read_for(Duration::from_millis(1));
        }
    }
    wait_until("feed applied", || {
        e.ingest.counters.accepted.get("delta") + e.ingest.counters.accepted.get("trade") == 2000
    });
    let finals = seqs(&e);
    let truth: HashMap<String, tickwire::book::book::OrderBook> = e
        .ingest
        .with_market(WAIT, |m| {
            m.symbols()
                .map(|s| (s.name.to_string(), m.book(s.id).clone()))
                .collect()
        })
        .unwrap();
    let mut total_deltas = 0;
    for (i, (c, subs)) in clients.iter_mut().enumerate() {
        let targets: HashMap<String, u64> = subs.iter().map(|s| (s.clone(), finals[s])).collect();
        assert!(
            c.read_until_seqs(WAIT, &targets),
            "client {i} caught up: {:?}",
            c.violations
        );
        let first: Vec<_> = c.violations.iter().take(5).collect();
        assert!(
            c.violations.is_empty(),
            "client {i} ({}): {first:?}",
            if c.json { "json" } else { "proto" }
        );
        match &c.log[0] {
            Body::Subscribed(s) => {
                assert_eq!(s.id, i as u64);
                assert_eq!(s.instruments.len(), subs.len());
            }
            other => panic!("client {i}: first message {other:?}"),
        }
        for s in subs.iter() {
            let b = &c.books[s];
            assert_eq!(b.book, truth[s], "client {i} book {s} equals the feed's");
            assert_eq!(
                b.snapshots, 1,
                "client {i} {s}: exactly one snapshot, then deltas"
            );
            total_deltas += b.deltas;
        }
        let unsubscribed: Vec<_> = c.books.keys().filter(|k| !subs.contains(k)).collect();
        assert!(
            unsubscribed.is_empty(),
            "client {i} got data for {unsubscribed:?}"
        );
    }
    assert!(total_deltas > 5000, "deltas delivered: {total_deltas}");
}

/// PROTOCOL §12: a client that offers permessage-deflate and one that does
/// not, on the same symbols, both get gap-free books equal to the feed's (the
/// first through its inflating codec, which checks every message). The
/// snapshots (over the 256-byte threshold) come compressed, built once per
/// rendering however many clients take them; the short deltas come with RSV1
/// clear.
#[test]
fn deflate_and_plain_clients_on_the_same_symbols_get_the_same_books() {
    let e = engine();
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 21,
        symbols: 3,
        ..SynthConfig::default()
    });
    let names: Vec<String> = synth.names().map(str::to_string).collect();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&synth.snapshots(1))).unwrap();
    wait_until("symbols known", || seqs(&e).len() == names.len());
    let subs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut zipped = Client::connect_deflate(e.ws_addr, Enc::Proto, 1);
    let mut zipped_json = Client::connect_deflate(e.ws_addr, Enc::JsonProtocol, 2);
    let mut plain = Client::connect(e.ws_addr, Enc::Proto, 3);
    assert!(zipped.deflate.is_some() && zipped_json.deflate.is_some());
    assert_eq!(plain.deflate, None);
    for (i, c) in [&mut zipped, &mut zipped_json, &mut plain]
        .into_iter()
        .enumerate()
    {
        c.subscribe(&subs, &["book", "trades"], i as u64);
    }
    // Every client holds its snapshots before the feed moves, so all three
    // receive the same messages (their wire bytes compare below).
    for c in [&mut zipped, &mut zipped_json, &mut plain] {
        wait_until("snapshots", || {
            c.read_for(Duration::from_millis(10));
            names
                .iter()
                .all(|s| c.books.get(s).is_some_and(|b| b.snapshots == 1))
        });
    }
    let batch: Vec<_> = (0..500).map(|k| synth.next_event(100 + k)).collect();
    feed.write_all(&proto(&batch)).unwrap();
    wait_until("feed applied", || {
        e.ingest.counters.accepted.get("delta") + e.ingest.counters.accepted.get("trade") == 500
    });
    let finals = seqs(&e);
    let truth: HashMap<String, tickwire::book::book::OrderBook> = e
        .ingest
        .with_market(WAIT, |m| {
            m.symbols()
                .map(|s| (s.name.to_string(), m.book(s.id).clone()))
                .collect()
        })
        .unwrap();
    for (i, c) in [&mut zipped, &mut zipped_json, &mut plain]
        .into_iter()
        .enumerate()
    {
        assert!(
            c.read_until_seqs(WAIT, &finals),
            "client {i}: {:?}",
            c.violations
        );
        assert!(c.violations.is_empty(), "client {i}: {:?}", c.violations);
        assert_eq!(c.closed, None, "client {i}");
        for s in &names {
            assert_eq!(c.books[s].book, truth[s], "client {i} book {s}");
            assert_eq!(c.books[s].snapshots, 1, "client {i} {s}");
        }
    }
    // Each snapshot compressed once per deflate rendering, and it paid off.
    let rendered = |r| metric_with(&e, "tickwire_rendered_total", &format!("rendering=\"{r}\""));
    // (The metrics are refreshed from the market thread a few times a second.)
    wait_until("deflate counted", || {
        rendered("proto_deflate") >= names.len() as u64
            && rendered("json_deflate") >= names.len() as u64
    });
    let deflated = |d| metric_with(&e, "tickwire_deflate_bytes_total", &format!("dir=\"{d}\""));
    assert!(
        deflated("out") < deflated("in") && deflated("out") > 0,
        "{} of {} bytes",
        deflated("out"),
        deflated("in")
    );
    assert!(
        metric(&e, "tickwire_deflate_skipped_total") > 0,
        "short deltas go uncompressed"
    );
    assert!(
        zipped.wire_bytes < plain.wire_bytes,
        "compressed {} vs plain {} bytes",
        zipped.wire_bytes,
        plain.wire_bytes
    );
}

fn is_stale(reason: &'static str) -> impl FnMut(&Body) -> bool {
    move |b| matches!(b, Body::Stale(s) if s.reason == reason)
}

/// Feed gap, feed down and a feed-replaced book reach clients as PROTOCOL §4 says.
#[test]
fn feed_gap_feed_down_and_replaced_books_reach_clients() {
    let e = engine();
    let mut a = TcpStream::connect(e.ingest.proto_addr).unwrap();
    a.write_all(&proto(&[
        snap("GAP", 10, 100, 110),
        delta("GAP", 11, 101, 5),
    ]))
    .unwrap();
    wait_until("GAP", || seqs(&e).get("GAP") == Some(&2));
    let mut book = Client::connect(e.ws_addr, Enc::Proto, 1);
    let mut trades = Client::connect(e.ws_addr, Enc::JsonProtocol, 2);
    book.subscribe(&["GAP"], &["book"], 1);
    trades.subscribe(&["GAP"], &["trades"], 2);
    assert!(
        book.read_until(WAIT, |b| matches!(b, Body::Snapshot(s) if s.seq == 2))
            .is_some()
    );
    assert!(
        trades
            .read_until(WAIT, |b| matches!(b, Body::Subscribed(_)))
            .is_some()
    );

    // Gap: 11 → 13. Book subscribers get Stale{feed_gap}; trades keep flowing.
    a.write_all(&proto(&[delta("GAP", 13, 102, 5), trade("GAP", 105)]))
        .unwrap();
    assert!(book.read_until(WAIT, is_stale("feed_gap")).is_some());
    assert!(
        trades
            .read_until(WAIT, |b| matches!(b, Body::Trade(t) if t.seq == 1))
            .is_some()
    );
    // A late subscriber of the stale book: Subscribed, then that Stale at once.
    let mut late = Client::connect(e.ws_addr, Enc::JsonQuery, 3);
    late.subscribe(&["GAP"], &["book"], 3);
    assert!(late.read_until(WAIT, is_stale("feed_gap")).is_some());
    assert!(matches!(late.log[0], Body::Subscribed(_)));

    // The feed replaces the book: everyone resumes from its snapshot (seq 3).
    a.write_all(&proto(&[
        snap("GAP", 20, 200, 210),
        delta("GAP", 21, 201, 7),
    ]))
    .unwrap();
    for c in [&mut book, &mut late] {
        assert!(
            c.read_until(WAIT, |b| matches!(b, Body::Delta(d) if d.seq == 4))
                .is_some()
        );
        assert_eq!(c.books["GAP"].seq, 4);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
    }

    // Feed down: every subscriber, book or trades, gets Stale{feed_down}.
    drop(a);
    assert!(book.read_until(WAIT, is_stale("feed_down")).is_some());
    assert!(trades.read_until(WAIT, is_stale("feed_down")).is_some());
    // Another feed takes over: book subscribers get the snapshot (seq 5).
    let mut b = TcpStream::connect(e.ingest.proto_addr).unwrap();
    b.write_all(&proto(&[snap("GAP", 1, 300, 310)])).unwrap();
    assert!(
        book.read_until(WAIT, |m| matches!(m, Body::Snapshot(s) if s.seq == 5))
            .is_some()
    );
    assert!(book.violations.is_empty(), "{:?}", book.violations);
    let trade_msgs = trades.read_for(Duration::from_millis(200));
    assert!(
        !trade_msgs.iter().any(|m| matches!(m, Body::Snapshot(_))),
        "trades subscribers get no snapshot"
    );
}

/// Subscriptions are all-or-nothing, with the error codes in PROTOCOL §6's order.
#[test]
fn subscribe_errors_resubscribe_and_unsubscribe() {
    let e = engine_with(WorkerConfig {
        max_subscriptions: 3,
        ..WorkerConfig::default()
    });
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AA", 1, 100, 110), snap("BB", 1, 100, 110)]))
        .unwrap();
    wait_until("symbols", || seqs(&e).len() == 2);
    let mut c = Client::connect(e.ws_addr, Enc::Proto, 9);
    let error_of = |c: &mut Client| match c
        .read_until(WAIT, |b| matches!(b, Body::Error(_) | Body::Subscribed(_)))
    {
        Some(Body::Error(err)) => (err.code, err.id),
        other => panic!("expected an error, got {other:?}"),
    };
    c.send("not json");
    assert_eq!(error_of(&mut c), ("bad_request".into(), 0));
    c.send(r#"{"op":"dance","symbols":["AA"],"id":4}"#);
    assert_eq!(error_of(&mut c), ("bad_request".into(), 4));
    c.send(r#"{"op":"subscribe","symbols":["AA"],"channels":["candles"],"id":5}"#);
    assert_eq!(error_of(&mut c), ("bad_request".into(), 5));
    c.send(r#"{"op":"subscribe","symbols":["bad sym"],"id":6}"#);
    assert_eq!(error_of(&mut c), ("bad_request".into(), 6));
    // 2 symbols × 2 channels = 4 > 3, even though ZZ is also unknown: the limit is checked first.
    c.send(r#"{"op":"subscribe","symbols":["AA","ZZ"],"channels":["book","trades"],"id":7}"#);
    assert_eq!(error_of(&mut c), ("too_many_subscriptions".into(), 7));
    c.send(r#"{"op":"subscribe","symbols":["AA","ZZ"],"id":8}"#);
    assert_eq!(error_of(&mut c), ("unknown_symbol".into(), 8));
    // Nothing changed: no data arrived for AA.
    feed.write_all(&proto(&[delta("AA", 2, 101, 1)])).unwrap();
    let got = c.read_for(Duration::from_millis(300));
    assert!(got.is_empty(), "all-or-nothing: {got:?}");

    c.subscribe(&["AA", "BB"], &["book"], 10);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Snapshot(s) if s.symbol == "BB"))
            .is_some()
    );
    assert_eq!(c.books["AA"].seq, 2);
    // Re-subscribe: a fresh snapshot (client-requested resync).
    c.subscribe(&["AA"], &["book"], 11);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Snapshot(s) if s.symbol == "AA"))
            .is_some()
    );
    assert_eq!(c.books["AA"].snapshots, 2);
    // Unsubscribe: Unsubscribed, then nothing more for AA while BB flows.
    c.unsubscribe(&["AA"], &["book"], 12);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Unsubscribed(u) if u.id == 12))
            .is_some()
    );
    feed.write_all(&proto(&[delta("AA", 3, 102, 1), delta("BB", 2, 101, 1)]))
        .unwrap();
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Delta(d) if d.symbol == "BB"))
            .is_some()
    );
    let after = c.read_for(Duration::from_millis(200));
    assert!(
        !after
            .iter()
            .chain(c.log.iter().rev().take(3))
            .any(|b| matches!(b, Body::Delta(d) if d.symbol == "AA" && d.seq == 3))
    );
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// Connections closed every way leave no entry in any index or count.
#[test]
fn closing_connections_leaves_no_index_entries() {
    let e = engine();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AA", 1, 100, 110), snap("BB", 1, 100, 110)]))
        .unwrap();
    wait_until("symbols", || seqs(&e).len() == 2);
    let mut clients: Vec<Client> = (0..120)
        .map(|i| {
            let mut c = Client::connect(
                e.ws_addr,
                if i % 2 == 0 {
                    Enc::Proto
                } else {
                    Enc::JsonQuery
                },
                i,
            );
            c.subscribe(
                if i % 3 == 0 { &["AA"] } else { &["AA", "BB"] },
                &["book", "trades"],
                i,
            );
            c
        })
        .collect();
    for c in clients.iter_mut() {
        assert!(
            c.read_until(WAIT, |b| matches!(b, Body::Snapshot(s) if s.symbol == "AA"))
                .is_some()
        );
    }
    wait_until("subscriptions counted", || {
        metric(&e, "tickwire_subscriptions") > 0
    });
    assert!(metric(&e, "tickwire_worker_index_entries") > 0);
    // A third close properly, a third vanish, a third unsubscribe then vanish.
    for (i, mut c) in clients.drain(..).enumerate() {
        match i % 3 {
            0 => {
                c.close(1000);
                c.read_until(WAIT, |_| false);
                assert!(c.closed.is_some());
            }
            1 => drop(c),
            _ => {
                c.unsubscribe(&["AA"], &["book", "trades"], 99);
                drop(c);
            }
        }
    }
    wait_until("every index empty", || {
        metric(&e, "tickwire_worker_connections") == 0
            && metric(&e, "tickwire_worker_index_entries") == 0
            && metric(&e, "tickwire_connections_open") == 0
            && metric(&e, "tickwire_subscriptions") == 0
    });
    // And the ingest thread no longer routes to any worker.
    feed.write_all(&proto(&[delta("AA", 2, 101, 1)])).unwrap();
    let pushed = metric(&e, "tickwire_ring_pushed_total");
    wait_until("delta applied", || seqs(&e)["AA"] == 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(&e, "tickwire_ring_pushed_total"),
        pushed,
        "no interest left: nothing pushed"
    );
}

/// The plain HTTP endpoints of PROTOCOL §6.
#[test]
fn http_endpoints_answer_as_specified() {
    let e = engine();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AA", 1, 100, 110)])).unwrap();
    wait_until("symbol", || seqs(&e).len() == 1);
    assert_eq!(http_get(e.ws_addr, "/healthz", "GET"), (200, "ok".into()));
    // PROTOCOL §10: the epoch is the engine's start time in ms.
    let epoch = e.ingest.with_market(WAIT, |m| m.epoch()).unwrap();
    assert!(epoch > 1_700_000_000_000, "epoch {epoch}");
    let want = format!(
        r#"{{"symbols":[{{"symbol":"AA","seq":1,"price_decimals":2,"size_decimals":0,"epoch":{epoch}}}]}}"#
    );
    wait_until("/symbols lists AA", || {
        http_get(e.ws_addr, "/symbols", "GET").1 == want
    });
    let (status, page) = http_get(e.ws_addr, "/", "GET");
    assert_eq!(status, 200);
    assert!(page.contains("<html") && page.contains("tickwire"));
    let (status, metrics) = http_get(e.ws_addr, "/metrics", "GET");
    assert_eq!(status, 200);
    for name in [
        "tickwire_connections_open",
        "tickwire_ingest_rejected_total",
        "tickwire_ring_dropped_total",
        "tickwire_delivery_latency_seconds",
        "tickwire_messages_out_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert_eq!(http_get(e.ws_addr, "/nope", "GET").0, 404);
    assert_eq!(http_get(e.ws_addr, "/nope", "POST").0, 404);
    assert_eq!(http_get(e.ws_addr, "/metrics", "POST").0, 405);
    assert_eq!(http_get(e.ws_addr, "/ws", "GET").0, 426);
    let _ = Arc::new(());
}
