//! Resume after reconnect against a real engine (PROTOCOL §10): a client
//! that comes back with its epoch and seqs gets `Subscribed.resumed`, then
//! every message it missed and live from there, no snapshot; when the
//! history no longer covers it (evicted, another epoch, a seq in the
//! future, an engine restart) it gets a snapshot, and for trades
//! `Stale{slow_consumer_trades}`; bad `resume` objects get `bad_request`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::harness::{WAIT, config, delta, metric, proto, snap, trade, wait_until};
use common::{Client, Enc};
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::{self, server_message::Body};

fn start(cfg: EngineConfig) -> (Engine, TcpStream) {
    let e = Engine::start(cfg).expect("engine starts");
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AAA", 1, 100, 101)])).unwrap();
    let known = || {
        e.ingest
            .with_market(WAIT, |m| m.symbol_id("AAA").is_some())
            .unwrap()
    };
    wait_until("AAA known", known);
    (e, feed)
}

/// Subscribes `c` to AAA book and trades, retrying while the workers do
/// not know the symbol yet; returns the `Subscribed`.
fn subscribe(c: &mut Client, extra: &str, id: u64) -> pb::Subscribed {
    c.subscribe_when_known(
        &format!(
            r#"{{"op":"subscribe","symbols":["AAA"],"channels":["book","trades"],"id":{id}{extra}}}"#
        ),
        id,
    )
}

/// Feeds deltas `from..to` (feed seqs) and a trade after each.
fn feed_some(feed: &mut TcpStream, from: u64, to: u64) {
    let msgs: Vec<_> = (from..to)
        .flat_map(|s| {
            [
                delta("AAA", s, 90 + (s % 7) as i64, s as i64),
                trade("AAA", 100),
            ]
        })
        .collect();
    feed.write_all(&proto(&msgs)).unwrap();
}

fn market_seq(e: &Engine) -> u64 {
    e.ingest
        .with_market(WAIT, |m| m.symbols().next().map_or(0, |s| s.seq))
        .unwrap()
}

fn snapshots_after_subscribed(c: &Client, id: u64) -> usize {
    c.log
        .iter()
        .skip_while(|m| !matches!(m, Body::Subscribed(s) if s.id == id))
        .filter(|m| matches!(m, Body::Snapshot(_)))
        .count()
}

#[test]
fn a_client_that_comes_back_gets_what_it_missed_and_no_snapshot() {
    let (e, mut feed) = start(config(2));
    for enc in [Enc::Proto, Enc::JsonQuery] {
        let mut c = Client::connect(e.ws_addr, enc, 1);
        subscribe(&mut c, "", 1);
        let base = market_seq(&e);
        feed_some(&mut feed, base + 1, base + 6); // feed seq = book seq here (one snapshot at 1)
        let target = base + 5;
        wait_until("first client caught up", || {
            c.read_for(Duration::from_millis(10));
            c.books.get("AAA").is_some_and(|b| b.seq == target)
        });
        let held = c.books["AAA"].clone();
        drop(c);
        // While it is away: more deltas and trades.
        feed_some(&mut feed, target + 1, target + 21);
        wait_until("applied", || market_seq(&e) == target + 20);
        let mut back = Client::connect(e.ws_addr, enc, 2);
        back.books.insert("AAA".into(), held.clone());
        let resume = format!(
            r#","resume":{{"AAA":{{"epoch":{},"book":{},"trades":{}}}}}"#,
            held.epoch, held.seq, held.last_trade_seq
        );
        let s = subscribe(&mut back, &resume, 7);
        assert_eq!(s.resumed, vec!["AAA:book", "AAA:trades"], "{enc:?}");
        wait_until("resumed client caught up", || {
            back.read_for(Duration::from_millis(10));
            back.books["AAA"].seq == target + 20
                && back.books["AAA"].last_trade_seq >= held.last_trade_seq + 20
        });
        assert_eq!(
            snapshots_after_subscribed(&back, 7),
            0,
            "no snapshot: {enc:?}"
        );
        assert!(back.violations.is_empty(), "{enc:?}: {:?}", back.violations);
        let truth = e
            .ingest
            .with_market(WAIT, |m| m.book(m.symbol_id("AAA").unwrap()).clone())
            .unwrap();
        assert_eq!(back.books["AAA"].book, truth);
        // And live from there.
        let next = market_seq(&e) + 1;
        feed_some(&mut feed, next, next + 1);
        wait_until("live after the replay", || {
            back.read_for(Duration::from_millis(10));
            back.books["AAA"].seq == next
        });
        assert!(back.violations.is_empty(), "{:?}", back.violations);
    }
    wait_until("hits counted", || {
        metric(&e, "tickwire_resume_hits_total") == 4
            && metric(&e, "tickwire_resume_replayed_total") >= 80
    });
}

#[test]
fn when_the_history_does_not_cover_it_a_snapshot_and_a_trades_stale() {
    let mut cfg = config(1);
    cfg.resume.max_entries = 4;
    let (e, mut feed) = start(cfg);
    let mut c = Client::connect(e.ws_addr, Enc::JsonQuery, 1);
    subscribe(&mut c, "", 1);
    feed_some(&mut feed, 2, 4);
    wait_until("caught up", || {
        c.read_for(Duration::from_millis(10));
        c.books.get("AAA").is_some_and(|b| b.seq == 3)
    });
    let held = c.books["AAA"].clone();
    drop(c);
    feed_some(&mut feed, 4, 14); // 10 more: beyond the 4 kept
    wait_until("applied", || market_seq(&e) == 13);
    let cases = [
        (held.epoch, held.seq, held.last_trade_seq, "evicted"),
        (
            held.epoch + 1,
            held.seq,
            held.last_trade_seq,
            "another epoch",
        ),
        (held.epoch, u64::MAX, u64::MAX, "a seq in the future"),
    ];
    for (i, (epoch, book, trades, why)) in cases.into_iter().enumerate() {
        let mut back = Client::connect(e.ws_addr, Enc::Proto, 10 + i as u64);
        let id = 20 + i as u64;
        let resume =
            format!(r#","resume":{{"AAA":{{"epoch":{epoch},"book":{book},"trades":{trades}}}}}"#);
        let s = subscribe(&mut back, &resume, id);
        assert!(s.resumed.is_empty(), "{why}: {:?}", s.resumed);
        wait_until(why, || {
            back.read_for(Duration::from_millis(10));
            back.log
                .iter()
                .any(|m| matches!(m, Body::Stale(s) if s.reason == "slow_consumer_trades"))
        });
        if why == "evicted" {
            let dropped = back.log.iter().find_map(|m| match m {
                Body::Stale(s) => Some(s.dropped),
                _ => None,
            });
            assert_eq!(dropped, Some(10), "the trades that cannot be replayed");
        }
        wait_until(why, || {
            back.read_for(Duration::from_millis(10));
            back.books.get("AAA").is_some_and(|b| b.seq == 13)
        });
        assert_eq!(
            snapshots_after_subscribed(&back, id),
            1,
            "{why}: a snapshot"
        );
        assert!(back.violations.is_empty(), "{why}: {:?}", back.violations);
    }
}

#[test]
fn after_a_restart_the_epoch_differs_and_a_snapshot_comes_never_a_resume() {
    let (e, mut feed) = start(config(1));
    let mut c = Client::connect(e.ws_addr, Enc::Proto, 1);
    subscribe(&mut c, "", 1);
    feed_some(&mut feed, 2, 5);
    wait_until("caught up", || {
        c.read_for(Duration::from_millis(10));
        c.books.get("AAA").is_some_and(|b| b.seq == 4)
    });
    let held = c.books["AAA"].clone();
    drop(c);
    drop(feed);
    e.shutdown();
    std::thread::sleep(Duration::from_millis(5));
    // A new engine: the same feed replays the same seqs, in a new epoch.
    let (e, mut feed) = start(config(1));
    feed_some(&mut feed, 2, 5);
    wait_until("applied", || market_seq(&e) == 4);
    let mut back = Client::connect(e.ws_addr, Enc::Proto, 2);
    let resume = format!(
        r#","resume":{{"AAA":{{"epoch":{},"book":{},"trades":{}}}}}"#,
        held.epoch, held.seq, held.last_trade_seq
    );
    let s = subscribe(&mut back, &resume, 3);
    assert_ne!(
        s.instruments[0].epoch, held.epoch,
        "a restart is a new epoch"
    );
    assert!(s.resumed.is_empty());
    wait_until("snapshot", || {
        back.read_for(Duration::from_millis(10));
        back.books.get("AAA").is_some_and(|b| b.seq == 4)
    });
    assert_eq!(snapshots_after_subscribed(&back, 3), 1);
    assert!(back.violations.is_empty(), "{:?}", back.violations);
}

#[test]
fn bad_resume_objects_are_bad_requests_and_change_nothing() {
    let (e, _feed) = start(config(1));
    let mut c = Client::connect(e.ws_addr, Enc::JsonQuery, 1);
    let cases = [
        (r#""resume":[1]"#, "bad_request"),
        (r#""resume":{"BBB":{"epoch":1,"book":1}}"#, "bad_request"),
        (r#""resume":{"AAA":{"book":1}}"#, "bad_request"),
        (r#""resume":{"AAA":{"epoch":-1,"book":1}}"#, "bad_request"),
        (r#""resume":{"AAA":{"epoch":1,"book":"1"}}"#, "bad_request"),
        (
            r#""resume":{"AAA":{"epoch":1,"book":1,"x":2}}"#,
            "bad_request",
        ),
        (
            r#""resume":{"AAA":{"epoch":1,"book":18446744073709551616}}"#,
            "bad_request",
        ),
    ];
    for (i, (resume, code)) in cases.iter().enumerate() {
        let id = 40 + i as u64;
        c.send(&format!(
            r#"{{"op":"subscribe","symbols":["AAA"],"channels":["book"],"id":{id},{resume}}}"#
        ));
        let answer = c
            .read_until(
                WAIT,
                |m| matches!(m, Body::Error(e) if e.id == id || e.id == 0),
            )
            .unwrap_or_else(|| panic!("{resume}: an error"));
        let Body::Error(err) = answer else {
            unreachable!()
        };
        assert_eq!(err.code, *code, "{resume}: {}", err.message);
    }
    // An unknown symbol named in symbols and resume: unknown_symbol.
    c.send(r#"{"op":"subscribe","symbols":["ZZZ"],"id":60,"resume":{"ZZZ":{"epoch":1,"book":3}}}"#);
    assert!(
        c.read_until(
            WAIT,
            |m| matches!(m, Body::Error(e) if e.id == 60 && e.code == "unknown_symbol")
        )
        .is_some()
    );
    assert!(c.books.is_empty(), "nothing subscribed");
    // The connection carries on.
    let s = subscribe(&mut c, "", 61);
    assert!(s.resumed.is_empty());
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// One subscribe resumes at most `MAX_RESUMES_PER_REQUEST` channels; the
/// others of its `resume` start with a snapshot, and every book is whole.
#[test]
fn one_request_resumes_a_bounded_number_of_channels() {
    use tickwire::fanout::worker::MAX_RESUMES_PER_REQUEST;
    let (e, mut feed) = start(config(1));
    let names: Vec<String> = (0..MAX_RESUMES_PER_REQUEST + 6)
        .map(|i| format!("S{i:03}"))
        .collect();
    let snaps: Vec<_> = names.iter().map(|n| snap(n, 1, 100, 101)).collect();
    feed.write_all(&proto(&snaps)).unwrap();
    wait_until("all known", || {
        e.ingest.with_market(WAIT, |m| m.symbols().len()).unwrap() == names.len() + 1
    });
    let epoch = e
        .ingest
        .with_market(WAIT, |m| m.symbols().next().unwrap().epoch)
        .unwrap();
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    // A first connection's books: what the resuming client holds.
    let mut first = Client::connect(e.ws_addr, Enc::Proto, 2);
    first.subscribe_when_known(
        &format!(
            r#"{{"op":"subscribe","symbols":[{}],"channels":["book"],"id":1}}"#,
            list.join(",")
        ),
        1,
    );
    wait_until("first books", || {
        first.read_for(Duration::from_millis(10));
        names
            .iter()
            .all(|n| first.books.get(n).is_some_and(|b| b.seq == 1))
    });
    let mut c = Client::connect(e.ws_addr, Enc::Proto, 1);
    c.books = first.books.clone();
    let resume: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}\":{{\"epoch\":{epoch},\"book\":1}}"))
        .collect();
    let request = format!(
        r#"{{"op":"subscribe","symbols":[{}],"channels":["book"],"id":4,"resume":{{{}}}}}"#,
        list.join(","),
        resume.join(",")
    );
    let s = c.subscribe_when_known(&request, 4);
    assert_eq!(s.resumed.len(), MAX_RESUMES_PER_REQUEST);
    wait_until("every book whole", || {
        c.read_for(Duration::from_millis(10));
        names
            .iter()
            .all(|n| c.books.get(n).is_some_and(|b| b.seq == 1 && !b.awaiting))
    });
    let snapshots = c
        .log
        .iter()
        .filter(|m| matches!(m, Body::Snapshot(_)))
        .count();
    assert_eq!(snapshots, 6, "the channels past the bound");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}
