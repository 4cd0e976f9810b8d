//! Server-Sent Events against a real engine (PROTOCOL §11): a stream holds
//! verified books (the same checks as a WebSocket client: snapshot, then
//! contiguous deltas with matching checksums), every book and trade event
//! carries an `id:`, and a client that comes back with that id as
//! `Last-Event-ID` resumes gap-free without snapshots; a comment line keeps
//! quiet streams open; refusals are HTTP errors with a JSON `Error` body and
//! disturb nothing else.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::harness::{WAIT, config, delta, metric, proto, snap, trade, wait_until};
use common::{Client, SocketOpts, http_request};
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::server_message::Body;

fn start(cfg: EngineConfig) -> (Engine, TcpStream) {
    let e = Engine::start(cfg).expect("engine starts");
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[
        snap("AAA", 1, 100, 101),
        snap("BBB", 1, 200, 201),
    ]))
    .unwrap();
    wait_until("symbols known", || {
        e.ingest.with_market(WAIT, |m| m.symbols().len()).unwrap() == 2
    });
    (e, feed)
}

/// Opens `path` once every worker knows the symbols (a stream refused
/// with `unknown_symbol` is retried).
fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Client {
    for _ in 0..200 {
        let (status, _, body) = http_request(addr, path, &[], Duration::from_millis(50));
        if status == 200 {
            return Client::connect_sse(addr, path, last_event_id);
        }
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("unknown_symbol"), "{status}: {body}");
        sleep(Duration::from_millis(20));
    }
    panic!("{path} never opened");
}

/// Deltas `from..to` of both symbols (feed seq = book seq), a trade after each.
fn feed_some(feed: &mut TcpStream, from: u64, to: u64) {
    let msgs: Vec<_> = (from..to)
        .flat_map(|s| {
            ["AAA", "BBB"].into_iter().flat_map(move |sym| {
                [
                    delta(sym, s, 90 + (s % 7) as i64, s as i64),
                    trade(sym, 100),
                ]
            })
        })
        .collect();
    feed.write_all(&proto(&msgs)).unwrap();
}

fn book_seq(e: &Engine, name: &'static str) -> u64 {
    e.ingest
        .with_market(WAIT, move |m| {
            m.symbols().find(|s| s.name == name).map_or(0, |s| s.seq)
        })
        .unwrap()
}

fn caught_up(c: &mut Client, seq: u64) -> bool {
    c.read_for(Duration::from_millis(10));
    ["AAA", "BBB"]
        .iter()
        .all(|s| c.books.get(*s).is_some_and(|b| b.seq == seq))
}

#[test]
fn a_stream_holds_verified_books_and_resumes_from_last_event_id() {
    let (e, mut feed) = start(config(2));
    let path = "/sse?symbols=AAA,BBB&channels=book,trades";
    let mut c = open(e.ws_addr, path, None);
    // Both snapshots first: the stream's subscriptions are then in place on
    // the market thread, so it receives every trade the feed sends next.
    wait_until("snapshots", || caught_up(&mut c, 1));
    feed_some(&mut feed, 2, 30);
    wait_until("caught up", || caught_up(&mut c, 29));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    let sse = c.sse.as_ref().unwrap();
    assert_eq!(sse.retry, Some(1000));
    assert_eq!(sse.events[0].0, "subscribed", "{:?}", sse.events[0]);
    // Every book and trade event carries the connection's resume token; the
    // answers do not.
    for (ty, data, id) in &sse.events {
        let market = matches!(ty.as_str(), "snapshot" | "delta" | "trade");
        assert_eq!(*id, market, "{ty}: {data}");
        assert!(
            data.starts_with(&format!("{{\"type\":\"{ty}\"")),
            "{ty}: {data}"
        );
    }
    assert!(c.books["AAA"].last_trade_seq >= 28);
    let held = c.books.clone();
    let last_id = sse.last_event_id.clone().expect("an id");
    drop(c);

    // Away: more of both symbols.
    feed_some(&mut feed, 30, 60);
    wait_until("applied", || book_seq(&e, "BBB") == 59);
    let mut back = Client::connect_sse(e.ws_addr, path, Some(&last_id));
    back.books = held.clone();
    wait_until("resumed", || caught_up(&mut back, 59));
    assert!(back.violations.is_empty(), "{:?}", back.violations);
    let Some(Body::Subscribed(s)) = back.log.first() else {
        panic!("{:?}", back.log.first())
    };
    assert_eq!(
        s.resumed,
        ["AAA:book", "AAA:trades", "BBB:book", "BBB:trades"],
        "every channel resumed"
    );
    assert!(
        !back.log.iter().any(|m| matches!(m, Body::Snapshot(_))),
        "no snapshot after a resume"
    );
    for sym in ["AAA", "BBB"] {
        assert_eq!(
            back.books[sym].last_trade_seq,
            held[sym].last_trade_seq + 30,
            "{sym}: every missed trade replayed"
        );
        let truth = e
            .ingest
            .with_market(WAIT, move |m| m.book(m.symbol_id(sym).unwrap()).clone())
            .unwrap();
        assert_eq!(back.books[sym].book, truth, "{sym}");
    }

    // A token of another stream (other symbols) resumes nothing: snapshots.
    let other = open(e.ws_addr, "/sse?symbols=BBB&channels=book", None);
    drop(other);
    let mut fresh = Client::connect_sse(
        e.ws_addr,
        "/sse?symbols=BBB,AAA&channels=book,trades",
        Some(&last_id),
    );
    wait_until("fresh caught up", || caught_up(&mut fresh, 59));
    let Some(Body::Subscribed(s)) = fresh.log.first() else {
        panic!()
    };
    assert!(s.resumed.is_empty(), "{:?}", s.resumed);
    assert_eq!(fresh.books["AAA"].snapshots, 1);
    assert!(metric(&e, "tickwire_sse_opened_total") >= 4);
}

/// A derived channel over SSE: the conflated top of book, verified on every
/// emission like a WebSocket client's.
#[test]
fn a_stream_serves_derived_channels() {
    let (e, mut feed) = start(config(1));
    let mut c = open(
        e.ws_addr,
        "/sse?symbols=AAA&channels=book.1@20ms&encoding=json",
        None,
    );
    // Each delta changes the best bid's size, in bursts shorter than the window.
    for burst in 0..6u64 {
        let msgs: Vec<_> = (2 + burst * 6..8 + burst * 6)
            .map(|s| delta("AAA", s, 100, s as i64))
            .collect();
        feed.write_all(&proto(&msgs)).unwrap();
        sleep(Duration::from_millis(30));
    }
    feed.write_all(&proto(&[
        delta("AAA", 38, 100, 1),
        delta("AAA", 39, 100, 2),
    ]))
    .unwrap();
    wait_until("top of book", || {
        c.read_for(Duration::from_millis(10));
        c.books.get("AAA").is_some_and(|b| b.seq == 39)
    });
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.books["AAA"].channel, "book.1@20ms");
    let deltas = c.books["AAA"].deltas;
    assert!((1..38).contains(&deltas), "conflated: {deltas} deltas");
}

#[test]
fn a_quiet_stream_gets_a_comment_line() {
    let mut cfg = config(1);
    cfg.shell.sse_ping_interval_ms = 100;
    let (e, _feed) = start(cfg);
    let mut c = open(e.ws_addr, "/sse?symbols=AAA&channels=trades", None);
    wait_until("pings", || {
        c.read_for(Duration::from_millis(20));
        c.sse.as_ref().unwrap().comments >= 3
    });
    assert_eq!(c.closed, None);
}

/// Each refusal is an HTTP 400 with the PROTOCOL's code in a JSON `Error`
/// body, before anything is streamed; a good stream beside them is intact.
#[test]
fn bad_streams_get_http_errors_and_disturb_nothing() {
    let (e, mut feed) = start(config(2));
    let mut good = open(e.ws_addr, "/sse?symbols=AAA&channels=book", None);
    let many: Vec<String> = (0..51).map(|i| format!("S{i}")).collect();
    let cases = [
        (
            format!("/sse?symbols={}&channels=book", many.join(",")),
            "too_many_subscriptions",
        ),
        ("/sse?symbols=AAA&channels=book.0".into(), "bad_request"),
        ("/sse?symbols=AAA&channels=book.101".into(), "bad_request"),
        ("/sse?symbols=AAA&channels=book@7ms".into(), "bad_request"),
        (
            "/sse?symbols=AAA&channels=book.5,book.10".into(),
            "bad_request",
        ),
        (
            "/sse?symbols=AAA&channels=book&encoding=proto".into(),
            "bad_request",
        ),
        ("/sse?channels=book".into(), "bad_request"),
        ("/sse?symbols=AAA".into(), "bad_request"),
        ("/sse?symbols=A%ZZ&channels=book".into(), "bad_request"),
        ("/sse?symbols=NOPE&channels=book".into(), "unknown_symbol"),
    ];
    for (path, code) in &cases {
        let (status, head, body) = http_request(e.ws_addr, path, &[], Duration::from_millis(300));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{path}: {head}\n{body}");
        assert!(head.contains("application/json"), "{path}: {head}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(v["type"], "error", "{path}");
        assert_eq!(v["code"], *code, "{path}: {body}");
    }
    for bad_id in ["!!!", "AAAA", &"A".repeat(3000)] {
        let (status, _, body) = http_request(
            e.ws_addr,
            "/sse?symbols=AAA&channels=book",
            &[&format!("Last-Event-ID: {bad_id}")],
            Duration::from_millis(300),
        );
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("Last-Event-ID"));
    }
    feed_some(&mut feed, 2, 12);
    wait_until("good stream live", || {
        good.read_for(Duration::from_millis(10));
        good.books.get("AAA").is_some_and(|b| b.seq == 11)
    });
    assert!(good.violations.is_empty(), "{:?}", good.violations);
    assert_eq!(good.closed, None);
}

/// PROTOCOL §11: where a WebSocket would be closed, the response ends. A
/// stream that stops reading is a slow consumer like any connection: past
/// the maximum lag it is ended (after the bytes already queued, never a gap
/// before), and the stream beside it is untouched.
#[test]
fn a_stalled_stream_is_ended_at_the_max_lag_and_others_carry_on() {
    let mut cfg = config(1);
    cfg.worker.max_lag_ns = 1_000_000_000;
    let (e, mut feed) = start(cfg);
    let path = "/sse?symbols=AAA&channels=book,trades";
    let mut fast = open(e.ws_addr, path, None);
    let small = SocketOpts {
        bind: None,
        recv_buffer: Some(4096),
    };
    let mut slow = Client::connect_sse_with(e.ws_addr, path, None, small);
    // 250 deltas and trades over 2.5 s.
    let started = Instant::now();
    for s in 2..252u64 {
        feed.write_all(&proto(&[delta("AAA", s, 100, s as i64), trade("AAA", 100)]))
            .unwrap();
        fast.read_for(Duration::from_millis(1));
        let due = started + Duration::from_millis(10 * (s - 1));
        sleep(due.saturating_duration_since(Instant::now()));
    }
    wait_until("the lag close", || {
        metric(&e, "tickwire_lag_closes_total") == 1
    });
    wait_until("fast caught up", || {
        fast.read_for(Duration::from_millis(10));
        fast.books.get("AAA").is_some_and(|b| b.seq == 251)
    });
    assert!(fast.violations.is_empty(), "{:?}", fast.violations);
    assert_eq!(fast.closed, None);
    // The slow one reads now: what was queued, in order, then the end.
    slow.read_until(WAIT, |_| false);
    assert!(slow.closed.is_some(), "the stream ended");
    assert!(slow.violations.is_empty(), "{:?}", slow.violations);
    assert!(slow.books.get("AAA").is_none_or(|b| b.seq < 251));
}
