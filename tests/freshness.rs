//! Freshness on real loopback sockets (DESIGN "Freshness", PROTOCOL §7): the
//! kernel's unsent bytes count in a client's backlog, so a client that stops
//! reading is resynced or closed as §7 says instead of being fed old ticks the
//! kernel accepted long ago; and slow clients never leave anyone's book wrong.
//! One worker, pinning off; every wait and every feed loop bounded.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::harness::{WAIT, config, delta, proto, snap, wait_until};
use common::{Client, Enc, SocketOpts};
use prost::Message;
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::{self, server_message::Body};

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The engine's (seq, checksum) of every book.
fn truths(e: &Engine) -> HashMap<String, (u64, u32)> {
    e.ingest
        .with_market(WAIT, |m| {
            m.symbols()
                .map(|s| (s.name.to_string(), (s.seq, m.book(s.id).checksum())))
                .collect()
        })
        .expect("market answers")
}

fn start(cfg: EngineConfig, symbols: &[&str]) -> (Engine, TcpStream) {
    let e = Engine::start(cfg).unwrap();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    let snaps: Vec<_> = symbols.iter().map(|s| snap(s, 1, 1_000, 1_001)).collect();
    feed.write_all(&proto(&snaps)).unwrap();
    wait_until("the books", || truths(&e).len() == symbols.len());
    (e, feed)
}

/// Sends `per_sec` deltas a second, round robin over `symbols`, for `secs`;
/// `next` holds each symbol's next feed seq.
fn feed_for(
    feed: &mut TcpStream,
    symbols: &[&str],
    next: &mut HashMap<String, u64>,
    per_sec: u64,
    secs: f64,
) {
    let start = Instant::now();
    let total = (per_sec as f64 * secs) as u64;
    let mut sent = 0u64;
    while sent < total {
        let due = (start.elapsed().as_secs_f64() * per_sec as f64) as u64;
        let mut burst = Vec::new();
        while sent < due.min(total) {
            let sym = symbols[(sent % symbols.len() as u64) as usize];
            let seq = next.entry(sym.to_string()).or_insert(2);
            burst.push(delta(
                sym,
                *seq,
                900 + (*seq % 50) as i64,
                1 + (*seq % 9) as i64,
            ));
            *seq += 1;
            sent += 1;
        }
        if !burst.is_empty() {
            feed.write_all(&proto(&burst)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn subscribed(e: &Engine, symbols: &[&str], enc: Enc, seed: u64, opts: SocketOpts) -> Client {
    let mut c = Client::connect_with(e.ws_addr, enc, seed, opts);
    c.subscribe(symbols, &["book"], 1);
    let n = symbols.len();
    let mut snapshots = 0;
    c.read_until(WAIT, |b| {
        snapshots += usize::from(matches!(b, Body::Snapshot(_)));
        snapshots == n
    })
    .expect("snapshots");
    c
}

const SMALL_RCVBUF: SocketOpts = SocketOpts {
    bind: None,
    recv_buffer: Some(4096),
};

/// A client of a quiet symbol stops reading: everything it misses fits in
/// the kernel's buffers, so the engine's queue never reaches high-water.
/// Before the kernel's unsent bytes were counted it was never told, and
/// received those ticks, in order, however old. Now its backlog's age passes
/// the maximum lag and it is closed 4001; the fast client beside it is
/// untouched.
#[test]
fn a_stalled_client_of_a_quiet_symbol_is_closed_at_the_max_lag_not_fed_old_ticks() {
    let mut cfg = config(1);
    cfg.worker.max_lag_ns = 1_000_000_000;
    let (e, mut feed) = start(cfg, &["AA"]);
    let mut fast = subscribed(&e, &["AA"], Enc::Proto, 1, SocketOpts::default());
    let mut slow = subscribed(&e, &["AA"], Enc::Proto, 2, SMALL_RCVBUF);
    let mut next = HashMap::new();
    // 250 deltas over 2.5 s, ~15 KB: less than the kernel would take.
    feed_for(&mut feed, &["AA"], &mut next, 100, 2.5);
    wait_until("the lag close", || {
        common::harness::metric(&e, "tickwire_lag_closes_total") == 1
    });
    let truth = truths(&e)["AA"];
    assert!(fast.read_until_seqs(WAIT, &HashMap::from([("AA".into(), truth.0)])));
    assert!(fast.violations.is_empty(), "{:?}", fast.violations);
    assert_eq!(fast.books["AA"].book.checksum(), truth.1);
    // The slow client now reads: a bounded amount of old data, then 4001.
    slow.read_until(WAIT, |_| false);
    assert_eq!(
        slow.closed.as_ref().map(|c| c.0),
        Some(4001),
        "{:?}",
        slow.closed
    );
    assert!(slow.violations.is_empty(), "{:?}", slow.violations);
    assert!(fast.closed.is_none());
}

/// After a 10 s pause, a client on busy symbols receives at most the
/// high-water mark of deltas older than 1 s before its `Stale` (plus what
/// its own 4 KiB receive buffer held), then snapshots, then live deltas;
/// before, the kernel's autotuned send buffer delivered megabytes first.
#[test]
fn after_a_10_s_pause_old_deltas_before_the_stale_are_bounded_by_high_water() {
    let symbols: Vec<String> = (0..32).map(|i| format!("S{i}")).collect();
    let symbols: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut cfg = config(1);
    cfg.worker.max_lag_ns = 30_000_000_000; // resynced, not closed
    let high_water = cfg.worker.high_water_bytes;
    let (e, mut feed) = start(cfg, &symbols);
    let mut c = subscribed(&e, &symbols, Enc::Proto, 3, SMALL_RCVBUF);
    let mut next = HashMap::new();
    feed_for(&mut feed, &symbols, &mut next, 2_000, 10.0);
    // Resume: measure the old deltas that arrive before the first Stale.
    let mut old_bytes = 0usize;
    let mut stale_seen = false;
    c.read_until(WAIT, |b| {
        if let Body::Delta(d) = b
            && !stale_seen
            && realtime_ns().saturating_sub(d.ingest_ts_ns) > 1_000_000_000
        {
            let msg = pb::ServerMessage {
                body: Some(b.clone()),
            };
            old_bytes += msg.encoded_len() + 2;
        }
        stale_seen |= matches!(b, Body::Stale(_));
        stale_seen
    })
    .expect("a Stale after the pause");
    assert!(
        old_bytes <= high_water + 8 * 1024,
        "{old_bytes} bytes of deltas older than 1 s before the Stale (high-water {high_water})"
    );
    // The resync completes: books equal the feed's.
    let targets: HashMap<String, u64> = truths(&e).into_iter().map(|(s, (q, _))| (s, q)).collect();
    assert!(c.read_until_seqs(WAIT, &targets), "caught up");
    let t = truths(&e);
    for s in &symbols {
        assert_eq!(c.books[*s].book.checksum(), t[*s].1, "{s}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// Slow clients (small receive buffers, pauses) beside fast ones, both
/// encodings, random subsets: once the feed ends, every client's books equal
/// the feed's, and nobody saw a gap that was not announced.
#[test]
fn with_slow_clients_present_every_verifying_client_ends_equal_to_the_feed() {
    let symbols = ["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8"];
    let mut cfg = config(1);
    cfg.worker.high_water_bytes = 32 * 1024;
    cfg.worker.low_water_bytes = 16 * 1024;
    let (e, mut feed) = start(cfg, &symbols);
    let mut clients = Vec::new();
    for i in 0..16u64 {
        let subset: Vec<&str> = symbols
            .iter()
            .copied()
            .filter(|s| !(s.as_bytes()[1] as u64 + i).is_multiple_of(3))
            .collect();
        let enc = if i % 2 == 0 {
            Enc::Proto
        } else {
            Enc::JsonProtocol
        };
        let slow = i % 4 == 0;
        let opts = if slow {
            SMALL_RCVBUF
        } else {
            SocketOpts::default()
        };
        clients.push((slow, subscribed(&e, &subset, enc, 10 + i, opts)));
    }
    let mut next = HashMap::new();
    for round in 0..4 {
        feed_for(&mut feed, &symbols, &mut next, 2_000, 0.5);
        for (slow, c) in clients.iter_mut() {
            // Fast clients keep up; slow ones read only every other round.
            if !*slow || round % 2 == 1 {
                c.read_for(Duration::from_millis(20));
            }
        }
    }
    let t = truths(&e);
    for (slow, c) in clients.iter_mut() {
        let targets: HashMap<String, u64> = c.books.keys().map(|s| (s.clone(), t[s].0)).collect();
        assert!(c.read_until_seqs(WAIT, &targets), "slow={slow}: caught up");
        for (s, b) in &c.books {
            assert_eq!(b.book.checksum(), t[s].1, "slow={slow} {s}");
        }
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        assert!(c.closed.is_none());
    }
    assert!(
        clients
            .iter()
            .filter(|(slow, _)| *slow)
            .any(|(_, c)| c.log.iter().any(|b| matches!(b, Body::Stale(_)))),
        "some slow client was resynced"
    );
}
