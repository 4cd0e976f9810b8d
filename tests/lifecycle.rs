//! The connection lifecycle on loopback with real sockets (issue 5): slow
//! consumers (Stale + snapshot, or 4001) beside a fast client that stays
//! contiguous, heartbeats (4003), every limit's answer and its counter, a churn
//! of thousands of connections leaving no count, index or timer behind, and
//! graceful shutdown of the real binary on SIGTERM (1001 to everyone, exit 0).
//! Every wait is bounded; one or two workers, pinning off.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Enc, SocketOpts, try_upgrade};
use tickwire::book::decode::encode_proto;
use tickwire::fanout::limits::{IpLimitConfig, Rate, RequestLimits};
use tickwire::fanout::worker::WorkerConfig;
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::{self, ingest_message, server_message::Body};

const WAIT: Duration = Duration::from_secs(20);

fn config(workers: usize) -> EngineConfig {
    let mut cfg = EngineConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers,
        pin: false,
        ..EngineConfig::default()
    };
    cfg.ingest.proto_addr = "127.0.0.1:0".parse().unwrap();
    cfg.ingest.json_addr = "127.0.0.1:0".parse().unwrap();
    cfg
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sum of a metric's lines whose labels contain `label` (e.g. `reason="x"`).
fn metric_with(e: &Engine, name: &str, label: &str) -> u64 {
    let text = e.shared.render_metrics();
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn metric(e: &Engine, name: &str) -> u64 {
    metric_with(e, name, "")
}

fn rejections(e: &Engine, reason: &str) -> u64 {
    metric_with(
        e,
        "tickwire_rejections_total",
        &format!("reason=\"{reason}\""),
    )
}

fn ip(last: u8) -> SocketOpts {
    SocketOpts {
        bind: Some(IpAddr::from([127, 0, 0, last])),
        ..SocketOpts::default()
    }
}

fn encode(msgs: &[pb::IngestMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_proto(m, &mut out);
    }
    out
}

fn snapshot(symbol: &str, levels: i64) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(ingest_message::Body::Snapshot(pb::BookSnapshot {
            symbol: symbol.into(),
            seq: 1,
            bids: (0..levels)
                .map(|i| pb::Level {
                    price: 10_000 - i,
                    size: 5,
                })
                .collect(),
            asks: (0..levels)
                .map(|i| pb::Level {
                    price: 10_001 + i,
                    size: 5,
                })
                .collect(),
            price_decimals: 2,
            size_decimals: 0,
            ..Default::default()
        })),
    }
}

/// The feed's delta `k` (feed seq `k + 1`): `width` bid levels resized, so a
/// frame is ~15 bytes per update.
fn fat_delta(symbol: &str, k: u64, width: i64) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(ingest_message::Body::Delta(pb::BookDelta {
            symbol: symbol.into(),
            seq: k + 1,
            updates: (0..width)
                .map(|i| pb::LevelUpdate {
                    side: pb::Side::Bid as i32,
                    price: 10_000 - i,
                    size: 1 + ((k as i64 + i) % 50),
                })
                .collect(),
            ..Default::default()
        })),
    }
}

/// The engine's book seq and checksum of `symbol` (seq 0: not known yet).
fn truth(e: &Engine, symbol: &'static str) -> (u64, u32) {
    e.ingest
        .with_market(WAIT, move |m| {
            m.symbols()
                .find(|s| s.name == symbol)
                .map_or((0, 0), |info| (info.seq, m.book(info.id).checksum()))
        })
        .expect("market answers")
}

/// A feed connection that sends `n` fat deltas from `from`, in bursts.
fn send_deltas(feed: &mut TcpStream, from: u64, n: u64) {
    let mut k = from;
    while k < from + n {
        let burst: Vec<_> = (k..(k + 20).min(from + n))
            .map(|i| fat_delta("AA", i, 40))
            .collect();
        feed.write_all(&encode(&burst)).unwrap();
        k += burst.len() as u64;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// PROTOCOL §7 on real sockets: a client that stops reading (small receive
/// buffer, small server send buffer) is dropped above high-water while a fast
/// client beside it receives every delta contiguously; once it reads again it
/// gets `Stale{slow_consumer, dropped > 0}` then a snapshot, and ends with the
/// engine's book.
#[test]
fn stalled_client_gets_stale_and_snapshot_while_a_fast_one_stays_contiguous() {
    // Default thresholds (256 KiB / 64 KiB): the fast client has room for
    // scheduling hiccups; 3000 deltas of ~400 bytes overflow the stalled one.
    let mut cfg = config(1);
    cfg.shell.socket_send_buffer_bytes = 8 * 1024;
    let e = Engine::start(cfg).unwrap();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&encode(&[snapshot("AA", 50)])).unwrap();
    wait_until("AA", || truth(&e, "AA").0 == 1);
    let small = SocketOpts {
        recv_buffer: Some(4096),
        ..SocketOpts::default()
    };
    let mut slow = Client::connect_with(e.ws_addr, Enc::Proto, 1, small);
    let mut fast = Client::connect(e.ws_addr, Enc::Proto, 2);
    for c in [&mut slow, &mut fast] {
        c.subscribe(&["AA"], &["book"], 1);
        assert!(
            c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
                .is_some()
        );
    }
    let deltas = 3_000;
    let stop = AtomicBool::new(false);
    let fast = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                fast.read_for(Duration::from_millis(50));
            }
            fast
        });
        // A failed assertion below must still end the reader, or the scope
        // (and the test) would wait for it forever.
        struct StopOnExit<'a>(&'a AtomicBool);
        impl Drop for StopOnExit<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnExit(&stop);
        send_deltas(&mut feed, 1, deltas);
        // The ingest thread may still be applying what was just written.
        wait_until("every delta applied", || truth(&e, "AA").0 == 1 + deltas);
        wait_until("drops counted", || {
            metric(&e, "tickwire_slow_consumer_drops_total") > 0
        });
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    let mut fast = fast;
    let target: HashMap<String, u64> = [("AA".to_string(), 1 + deltas)].into();
    assert!(fast.read_until_seqs(WAIT, &target), "fast client caught up");
    assert!(fast.violations.is_empty(), "{:?}", fast.violations);
    let fast_book = &fast.books["AA"];
    assert_eq!(
        (fast_book.snapshots, fast_book.deltas),
        (1, deltas),
        "the fast client got every delta after one snapshot"
    );
    assert!(
        !fast.log.iter().any(|b| matches!(b, Body::Stale(_))),
        "no Stale for the fast client"
    );
    // The slow one reads again: Stale then snapshot, then the engine's book.
    assert!(slow.read_until_seqs(WAIT, &target), "slow client resynced");
    assert!(slow.violations.is_empty(), "{:?}", slow.violations);
    let stale_at = slow
        .log
        .iter()
        .position(|b| matches!(b, Body::Stale(s) if s.reason == "slow_consumer" && s.dropped > 0))
        .expect("Stale{slow_consumer, dropped > 0}");
    assert!(
        matches!(slow.log.get(stale_at + 1), Some(Body::Snapshot(_))),
        "a snapshot right after the Stale"
    );
    let (seq, checksum) = truth(&e, "AA");
    assert_eq!(slow.books["AA"].seq, seq);
    assert_eq!(slow.books["AA"].book.checksum(), checksum);
    assert_eq!(fast.books["AA"].book.checksum(), checksum);
    assert!(slow.closed.is_none() && fast.closed.is_none());
}

/// A client stalled for longer than the max lag is closed with 4001; the fast
/// client beside it is not disturbed.
#[test]
fn client_stalled_past_max_lag_is_closed_4001() {
    let mut cfg = config(1);
    cfg.worker = WorkerConfig {
        high_water_bytes: 64 * 1024,
        low_water_bytes: 16 * 1024,
        max_lag_ns: 300_000_000,
        ..WorkerConfig::default()
    };
    cfg.shell.socket_send_buffer_bytes = 8 * 1024;
    let e = Engine::start(cfg).unwrap();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&encode(&[snapshot("AA", 50)])).unwrap();
    wait_until("AA", || truth(&e, "AA").0 == 1);
    let small = SocketOpts {
        recv_buffer: Some(4096),
        ..SocketOpts::default()
    };
    let mut slow = Client::connect_with(e.ws_addr, Enc::JsonQuery, 3, small);
    let mut fast = Client::connect(e.ws_addr, Enc::Proto, 4);
    for c in [&mut slow, &mut fast] {
        c.subscribe(&["AA"], &["book"], 1);
        assert!(
            c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
                .is_some()
        );
    }
    let stop = AtomicBool::new(false);
    let (mut fast, k) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                fast.read_for(Duration::from_millis(50));
            }
            fast
        });
        let mut k = 1;
        let start = Instant::now();
        while metric(&e, "tickwire_slow_consumer_closes_total") == 0 {
            assert!(start.elapsed() < WAIT, "no 4001");
            send_deltas(&mut feed, k, 100);
            k += 100;
        }
        stop.store(true, Ordering::Relaxed);
        (reader.join().unwrap(), k)
    });
    slow.read_until(WAIT, |_| false);
    assert_eq!(slow.closed.as_ref().map(|c| c.0), Some(4001));
    let target: HashMap<String, u64> = [("AA".to_string(), k)].into();
    assert!(fast.read_until_seqs(WAIT, &target));
    assert!(fast.violations.is_empty(), "{:?}", fast.violations);
    assert!(fast.closed.is_none());
    assert_eq!(rejections(&e, "slow_consumer"), 1);
    wait_until("slow connection gone", || {
        metric(&e, "tickwire_connections_open") == 1
    });
}

/// PROTOCOL §7: the server pings; a client that answers stays, a client that
/// sends nothing for ping interval + pong timeout is closed with 4003.
#[test]
fn silent_client_is_closed_4003_and_a_pong_answering_one_stays() {
    let mut cfg = config(2);
    cfg.shell.ping_interval_ms = 200;
    cfg.shell.pong_timeout_ms = 300;
    let e = Engine::start(cfg).unwrap();
    let mut live = Client::connect(e.ws_addr, Enc::Proto, 5);
    let mut silent = Client::connect(e.ws_addr, Enc::Proto, 6);
    // `live` answers every ping (its codec queues the pong, read_for sends it).
    live.read_for(Duration::from_millis(1_500));
    assert!(live.closed.is_none(), "a client answering pings stays open");
    silent.read_until(WAIT, |_| false);
    assert_eq!(silent.closed.as_ref().map(|c| c.0), Some(4003));
    assert_eq!(rejections(&e, "heartbeat_timeout"), 1);
    live.read_for(Duration::from_millis(300));
    assert!(live.closed.is_none());
    wait_until("one left", || metric(&e, "tickwire_connections_open") == 1);
}

/// Each limit gives its answer, and each is counted by reason.
#[test]
fn every_limit_gives_its_answer_and_is_counted() {
    // Connection caps: per IP (429) and for the process (503), with Retry-After.
    let mut cfg = config(2);
    cfg.shell.max_connections = 3;
    cfg.ip_limits = IpLimitConfig {
        max_connections_per_ip: 2,
        handshakes_per_ip_per_sec: 0,
    };
    let e = Engine::start(cfg).unwrap();
    let (s1, _, a1) = try_upgrade(e.ws_addr, ip(2), 1);
    let (s2, _, a2) = try_upgrade(e.ws_addr, ip(2), 2);
    assert_eq!((s1, s2), (101, 101));
    let (s3, retry, _) = try_upgrade(e.ws_addr, ip(2), 3);
    assert_eq!(
        (s3, retry.as_deref()),
        (429, Some("1")),
        "third from one IP"
    );
    let (s4, _, b1) = try_upgrade(e.ws_addr, ip(3), 4);
    assert_eq!(s4, 101, "another IP is not affected");
    let (s5, retry, _) = try_upgrade(e.ws_addr, ip(4), 5);
    assert_eq!((s5, retry.as_deref()), (503, Some("1")), "process full");
    assert_eq!(rejections(&e, "ip_connections"), 1);
    assert_eq!(rejections(&e, "max_connections"), 1);
    drop((a1, a2, b1));
    wait_until("everyone gone", || {
        metric(&e, "tickwire_ws_open") == 0
            && metric(&e, "tickwire_worker_sockets") == 0
            && metric(&e, "tickwire_ip_addresses_tracked") == 0
    });
    let (s6, _, _a) = try_upgrade(e.ws_addr, ip(4), 6);
    assert_eq!(s6, 101, "room again");
    drop(e);

    // Handshake rate per IP (429 + Retry-After), request rate (rate_limited,
    // then 4002), subscriptions per connection, message size (1009).
    let mut cfg = config(2);
    cfg.ip_limits = IpLimitConfig {
        max_connections_per_ip: 0,
        handshakes_per_ip_per_sec: 3,
    };
    cfg.worker = WorkerConfig {
        max_subscriptions: 2,
        requests: RequestLimits {
            requests: Rate {
                per_sec: 2,
                burst: 3,
            },
            strikes: Rate {
                per_sec: 1,
                burst: 2,
            },
        },
        ..WorkerConfig::default()
    };
    cfg.ws.max_message_bytes = 1024;
    let e = Engine::start(cfg).unwrap();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&encode(&[
        snapshot("AA", 2),
        snapshot("BB", 2),
        snapshot("CC", 2),
    ]))
    .unwrap();
    wait_until("symbols", || truth(&e, "CC").0 == 1);
    let mut held = Vec::new();
    for i in 0..3 {
        let (s, _, st) = try_upgrade(e.ws_addr, ip(5), 10 + i);
        assert_eq!(s, 101);
        held.push(st);
    }
    let (s, retry, _) = try_upgrade(e.ws_addr, ip(5), 13);
    assert_eq!(s, 429, "fourth handshake within a second");
    let secs: u32 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs));
    let (s, _, _other) = try_upgrade(e.ws_addr, ip(6), 14);
    assert_eq!(s, 101, "another IP is not affected");
    assert_eq!(rejections(&e, "ip_handshake_rate"), 1);

    let mut c = Client::connect(e.ws_addr, Enc::Proto, 20);
    c.subscribe(&["AA", "BB", "CC"], &["book"], 1);
    let err = c.read_until(WAIT, |b| matches!(b, Body::Error(_)));
    assert!(
        matches!(&err, Some(Body::Error(e)) if e.code == "too_many_subscriptions" && e.id == 1),
        "{err:?}"
    );
    c.subscribe(&["AA"], &["book"], 2);
    c.subscribe(&["BB"], &["book"], 3);
    // The bucket (burst 3) is spent: refused, never dropped, id echoed.
    c.subscribe(&["CC"], &["book"], 4);
    let err = c.read_until(WAIT, |b| matches!(b, Body::Error(_)));
    assert!(
        matches!(&err, Some(Body::Error(e)) if e.code == "rate_limited" && e.id == 4),
        "{err:?}"
    );
    // Keep going: after 2 strikes, 4002.
    for id in 5..10 {
        c.subscribe(&["CC"], &["book"], id);
    }
    c.read_until(WAIT, |_| false);
    assert_eq!(c.closed.as_ref().map(|c| c.0), Some(4002));
    assert_eq!(
        c.log
            .iter()
            .filter(|b| matches!(b, Body::Subscribed(_)))
            .count(),
        2
    );

    let mut big = Client::connect(e.ws_addr, Enc::Proto, 21);
    big.send(&format!(
        r#"{{"op":"subscribe","symbols":["AA"],"id":1,"pad":"{}"}}"#,
        "x".repeat(2000)
    ));
    big.read_until(WAIT, |_| false);
    assert_eq!(big.closed.as_ref().map(|c| c.0), Some(1009));

    wait_until("core rejections published", || {
        rejections(&e, "rate_limited") >= 1 && rejections(&e, "too_many_subscriptions") == 1
    });
    assert_eq!(rejections(&e, "rate_limit_close"), 1);
    assert_eq!(rejections(&e, "message_too_big"), 1);
}

/// Thousands of connects and disconnects of every kind (close handshake,
/// abrupt drop, drop mid-handshake, protocol error, silent TCP connect) leave
/// no connection, subscription, index entry, timer, socket or count behind.
#[test]
fn churn_of_thousands_leaves_every_count_at_zero() {
    let mut cfg = config(2);
    cfg.ws.handshake_timeout_ms = 2_000;
    cfg.ws.close_timeout_ms = 2_000;
    let e = Engine::start(cfg).unwrap();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&encode(&[snapshot("AA", 5), snapshot("BB", 5)]))
        .unwrap();
    wait_until("symbols", || truth(&e, "BB").0 == 1);
    let total = 3_000u64;
    let batch = 150u64;
    let mut k = 1;
    let started = Instant::now();
    for b in 0..total / batch {
        let mut clients = Vec::new();
        let mut raws = Vec::new();
        for i in b * batch..(b + 1) * batch {
            match i % 5 {
                2 => {
                    // Half a request, then gone.
                    let mut s = common::tcp_connect(e.ws_addr, SocketOpts::default());
                    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
                    raws.push(s);
                }
                4 => raws.push(common::tcp_connect(e.ws_addr, SocketOpts::default())),
                kind => {
                    let mut c = Client::connect(e.ws_addr, Enc::Proto, i);
                    c.subscribe(
                        if i % 2 == 0 { &["AA"] } else { &["AA", "BB"] },
                        &["book", "trades"],
                        i,
                    );
                    clients.push((kind, c));
                }
            }
        }
        send_deltas(&mut feed, k, 5);
        k += 5;
        drop(raws);
        for (kind, mut c) in clients {
            match kind {
                0 => {
                    c.close(1000);
                    c.read_until(WAIT, |_| false);
                    assert!(c.closed.is_some());
                }
                // An unmasked client frame: protocol error (1002).
                3 => c.send_raw(&[0x81, 0x01, b'x']),
                _ => {}
            }
        }
    }
    eprintln!("churn: {total} connections in {:?}", started.elapsed());
    assert!(metric(&e, "tickwire_connections_accepted_total") >= total);
    wait_until("every count back to zero", || {
        [
            "tickwire_worker_connections",
            "tickwire_worker_index_entries",
            "tickwire_connections_open",
            "tickwire_subscriptions",
            "tickwire_worker_sockets",
            "tickwire_worker_timers",
            "tickwire_ws_open",
        ]
        .iter()
        .all(|m| metric(&e, m) == 0)
    });
    assert!(rejections(&e, "protocol_error") > 0);
}

/// SIGTERM to the real binary: every client gets close 1001, the process
/// exits 0 within the shutdown deadline, and nothing is accepted meanwhile.
#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let (mut child, addr) =
        common::harness::spawn_serve(&["--workers", "2", "--shutdown-timeout-ms", "3000"]);
    let mut clients: Vec<Client> = (0..20)
        .map(|i| {
            Client::connect(
                addr,
                if i % 2 == 0 {
                    Enc::Proto
                } else {
                    Enc::JsonQuery
                },
                100 + i,
            )
        })
        .collect();
    // One still in its handshake: just closed.
    let _half = common::tcp_connect(addr, SocketOpts::default());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for c in clients.iter_mut() {
        c.read_until(WAIT, |_| false);
        assert_eq!(
            c.closed.as_ref().map(|c| c.0),
            Some(1001),
            "every client gets 1001"
        );
    }
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tickwire did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
}
