//! Scale-out against real `nats-server` processes (started and stopped by the
//! tests, on free ports): an origin with a TCP feed publishes to NATS; edges
//! follow the symbols their clients want. Every client, on every node, ends
//! with books equal to the feed's, and seq, checksum and epoch agree across
//! nodes; the failures of the scale-out issue each get a test.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::harness::{WAIT, config, delta, http_get, proto, snap, wait_until};
use common::nats::{NatsServer, start_cluster, start_single};
use common::{Client, Enc};
use tickwire::book::synth::{Rng, SynthConfig, SynthMarket};
use tickwire::config::BackplaneSettings;
use tickwire::net::engine::Engine;
use tickwire::wire::pb;
use tickwire::wire::pb::server_message::Body;

fn origin(servers: &str, name: &str) -> Engine {
    let mut cfg = config(1);
    cfg.ingest.backplane = Some(BackplaneSettings {
        servers: servers.split(',').map(str::to_string).collect(),
        origin: Some(name.into()),
        edge: false,
        heartbeat_timeout_ms: 3_000,
    });
    Engine::start(cfg).expect("origin starts")
}

fn edge(servers: &str) -> Engine {
    edge_with_timeout(servers, 3_000)
}

fn edge_with_timeout(servers: &str, heartbeat_timeout_ms: u64) -> Engine {
    let mut cfg = config(2);
    cfg.ingest.backplane = Some(BackplaneSettings {
        servers: servers.split(',').map(str::to_string).collect(),
        origin: None,
        edge: true,
        heartbeat_timeout_ms,
    });
    Engine::start(cfg).expect("edge starts")
}

/// (seq, checksum, epoch) of every symbol as the node's market holds it.
fn books(e: &Engine) -> HashMap<String, (u64, u32, u64)> {
    e.ingest
        .with_market(WAIT, |m| {
            m.symbols()
                .filter(|s| s.has_book)
                .map(|s| {
                    (
                        s.name.to_string(),
                        (s.seq, m.book(s.id).checksum(), s.epoch),
                    )
                })
                .collect()
        })
        .unwrap()
}

/// The origin's books once the feed's last bytes are applied: the same
/// for 200 ms in a row.
fn settled(e: &Engine) -> HashMap<String, (u64, u32, u64)> {
    let mut last = books(e);
    let mut same_since = std::time::Instant::now();
    wait_until("the origin settles", || {
        let now = books(e);
        if now != last {
            last = now;
            same_since = std::time::Instant::now();
        }
        same_since.elapsed() >= Duration::from_millis(200)
    });
    last
}

/// Waits until the edge's `/symbols` lists `n` symbols (heartbeats arrived).
fn wait_listed(e: &Engine, n: usize) {
    wait_until("the edge lists the cluster's symbols", || {
        let (status, body) = http_get(e.ws_addr, "/symbols", "GET");
        status == 200 && body.matches("\"symbol\":").count() >= n
    });
}

fn assert_clean(clients: &[(Client, Vec<String>)]) {
    for (c, _) in clients {
        assert!(c.violations.is_empty(), "violations: {:?}", c.violations);
    }
}

/// Reads every client until each of its symbols reached the origin's seq
/// and holds the origin's checksum.
fn converge(clients: &mut [(Client, Vec<String>)], truth: &HashMap<String, (u64, u32, u64)>) {
    for (c, subs) in clients.iter_mut() {
        let targets: HashMap<String, u64> = subs.iter().map(|s| (s.clone(), truth[s].0)).collect();
        assert!(
            c.read_until_seqs(WAIT, &targets),
            "client did not reach the feed's seqs: {:?} vs {targets:?}; violations {:?}; last messages {:?}",
            subs.iter()
                .map(|s| c.books.get(s).map(|b| (b.seq, b.awaiting)))
                .collect::<Vec<_>>(),
            c.violations,
            c.log.iter().rev().take(4).collect::<Vec<_>>()
        );
        for s in subs.iter() {
            let b = &c.books[s];
            assert_eq!(b.seq, truth[s].0, "{s}: seq");
            assert_eq!(b.book.checksum(), truth[s].1, "{s}: checksum");
        }
    }
}

fn subscribe_random(
    e: &Engine,
    names: &[String],
    i: usize,
    rng: &mut Rng,
) -> (Client, Vec<String>) {
    let enc = [Enc::Proto, Enc::JsonProtocol, Enc::JsonQuery][i % 3];
    let mut c = Client::connect(e.ws_addr, enc, i as u64 + 100);
    let mut mine: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|_| rng.chance(0.5))
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
    (c, mine.iter().map(|s| s.to_string()).collect())
}

fn pump(clients: &mut [(Client, Vec<String>)]) {
    for (c, _) in clients.iter_mut() {
        c.read_for(Duration::from_millis(5));
    }
}

/// Origin + two edges on one NATS server: clients of both encodings on every
/// node, random subsets, late joiners, a feed gap and a feed replacing a
/// book; at the end every client's books equal the feed's, and every node
/// holds the same seq, checksum and epoch per symbol.
#[test]
fn origin_and_two_edges_serve_the_same_gap_free_books() {
    let nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge(&nats.url());
    let e2 = edge(&nats.url());
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 21,
        symbols: 6,
        ..SynthConfig::default()
    });
    let mut names: Vec<String> = synth.names().map(str::to_string).collect();
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&synth.snapshots(1))).unwrap();
    // A symbol of its own for the feed gap and the replaced book.
    let gapped = "GAP-1".to_string();
    feed.write_all(&proto(&[snap(&gapped, 1, 500, 510)]))
        .unwrap();
    names.push(gapped.clone());
    wait_listed(&e1, names.len());
    wait_listed(&e2, names.len());

    let nodes = [&o, &e1, &e2];
    let mut rng = Rng::new(3);
    let mut clients = Vec::new();
    for i in 0..18 {
        clients.push(subscribe_random(nodes[i % 3], &names, i, &mut rng));
    }
    let mut ts = 1000;
    let mut send = |n: u64, feed: &mut TcpStream, synth: &mut SynthMarket| {
        let batch: Vec<_> = (0..n)
            .map(|_| {
                ts += 1;
                synth.next_event(ts)
            })
            .collect();
        feed.write_all(&proto(&batch)).unwrap();
    };
    for round in 0..12 {
        send(80, &mut feed, &mut synth);
        let d = delta(&gapped, round + 2, 490 - round as i64, 3);
        feed.write_all(&proto(&[d])).unwrap();
        pump(&mut clients);
        if round == 4 {
            // Late joiners on every node.
            for i in 18..27 {
                clients.push(subscribe_random(nodes[i % 3], &names, i, &mut rng));
            }
        }
    }
    // A feed gap on GAP-1 (its feed seq is at 13), then the feed replaces
    // that book and goes on from there.
    feed.write_all(&proto(&[delta(&gapped, 20, 100, 1)]))
        .unwrap();
    for _ in 0..10 {
        pump(&mut clients);
    }
    feed.write_all(&proto(&[snap(&gapped, 30, 9_000, 9_100)]))
        .unwrap();
    for i in 31..40 {
        feed.write_all(&proto(&[delta(&gapped, i, 8_990, i as i64)]))
            .unwrap();
    }
    send(200, &mut feed, &mut synth);

    let truth = settled(&o);
    wait_until("edges hold the origin's books", || {
        let (b1, b2) = (books(&e1), books(&e2));
        b1.iter()
            .chain(b2.iter())
            .all(|(s, v)| truth.get(s) == Some(v))
    });
    converge(&mut clients, &truth);
    assert_clean(&clients);
    // Clients of the gapped book saw the gap and the replaced book.
    let saw_gap = clients
        .iter()
        .filter(|(_, subs)| subs.contains(&gapped))
        .all(|(c, _)| {
            c.log.iter().any(
                |b| matches!(b, Body::Stale(s) if s.symbol == gapped && s.reason == "feed_gap"),
            )
        });
    assert!(
        saw_gap,
        "every subscriber of {gapped} got Stale{{feed_gap}}"
    );
    // The same numbers on every node, epoch included (from /symbols too).
    let epoch = truth[&names[1]].2;
    assert!(epoch > 0);
    for e in [&e1, &e2] {
        let (_, body) = http_get(e.ws_addr, "/symbols", "GET");
        assert!(body.contains(&format!("\"epoch\":{epoch}")), "{body}");
    }
    drop(nats);
}

/// An edge lists every symbol its origins offer before any client holds one,
/// and follows (subscribes to) only the symbols its clients want: the NATS
/// server's own subscription list proves it.
#[test]
fn edges_subscribe_only_to_what_their_clients_want() {
    let nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge(&nats.url());
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    let names = ["AAA", "BBB", "C.C"];
    let snaps: Vec<_> = names.iter().map(|s| snap(s, 1, 100, 110)).collect();
    feed.write_all(&proto(&snaps)).unwrap();
    wait_listed(&e1, 3);
    let subs = || nats.monitor_json("/subsz?subs=1");
    assert!(!subs().contains("tw.md."), "no data subscription yet");
    let mut c = Client::connect(e1.ws_addr, Enc::Proto, 1);
    c.subscribe(&["C.C"], &["book"], 1);
    let got = c.read_until(
        WAIT,
        |b| matches!(b, Body::Snapshot(s) if s.symbol == "C.C"),
    );
    assert!(got.is_some(), "snapshot through the edge");
    let s = subs();
    assert!(s.contains("tw.md.C~C"), "{s}");
    assert!(!s.contains("tw.md.AAA") && !s.contains("tw.md.BBB"), "{s}");
    // A symbol no client holds: /symbols still shows the origin's seq (from
    // its heartbeats), current within a beat.
    feed.write_all(&proto(&[delta("AAA", 2, 99, 1), delta("AAA", 3, 98, 1)]))
        .unwrap();
    wait_until("/symbols follows the heartbeat for AAA", || {
        http_get(e1.ws_addr, "/symbols", "GET")
            .1
            .contains(r#"{"symbol":"AAA","seq":3,"#)
    });
    assert!(
        !subs().contains("tw.md.AAA"),
        "and nothing subscribed for it"
    );
    feed.write_all(&proto(&[delta("C.C", 2, 101, 5)])).unwrap();
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Delta(d) if d.seq == 2))
            .is_some()
    );
    // The last client leaves: the edge unsubscribes.
    c.unsubscribe(&["C.C"], &["book"], 2);
    wait_until("the edge unsubscribed", || !subs().contains("tw.md.C~C"));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// The origin restarts: a new epoch; edge clients get Stale then a snapshot
/// of the new epoch, never a book mixing the two.
#[test]
fn origin_restart_changes_the_epoch_and_edges_resync() {
    let nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge(&nats.url());
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("X", 1, 100, 110)])).unwrap();
    for i in 2..50 {
        feed.write_all(&proto(&[delta("X", i, 90 + (i as i64 % 7), i as i64)]))
            .unwrap();
    }
    wait_listed(&e1, 1);
    let mut c = Client::connect(e1.ws_addr, Enc::JsonProtocol, 1);
    c.subscribe(&["X"], &["book"], 1);
    let first = books(&o)["X"];
    assert!(c.read_until_seqs(WAIT, &HashMap::from([("X".to_string(), first.0)])));
    drop(feed);
    drop(o);
    std::thread::sleep(Duration::from_millis(5));
    let o2 = origin(&nats.url(), "venue-a");
    let mut feed = TcpStream::connect(o2.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("X", 1, 200, 210)])).unwrap();
    for i in 2..20 {
        feed.write_all(&proto(&[delta("X", i, 190, i as i64)]))
            .unwrap();
    }
    wait_until("a new epoch at the origin", || {
        books(&o2).get("X").is_some_and(|b| b.0 == 19)
    });
    let second = books(&o2)["X"];
    assert_ne!(first.2, second.2, "a restart is a new epoch");
    wait_until("the edge follows the new epoch", || {
        books(&e1).get("X") == Some(&second)
    });
    // The client's book is the new epoch's: a Stale came first.
    assert!(
        c.read_until(
            WAIT,
            |b| matches!(b, Body::Snapshot(s) if s.epoch == second.2)
        )
        .is_some()
    );
    c.read_until_seqs(WAIT, &HashMap::from([("X".to_string(), second.0)]));
    let stale_at = c
        .log
        .iter()
        .position(|b| matches!(b, Body::Stale(_)))
        .expect("a Stale before the new epoch");
    let snap_at = c
        .log
        .iter()
        .position(|b| matches!(b, Body::Snapshot(s) if s.epoch == second.2))
        .unwrap();
    assert!(stale_at < snap_at);
    assert_eq!(c.books["X"].book.checksum(), second.1);
    assert!(c.violations.is_empty(), "{:?} {:?}", c.violations, c.log);
}

/// NATS gone longer than the heartbeat timeout: edge clients get
/// Stale{feed_down}; when it comes back, snapshots resume them.
#[test]
fn backplane_outage_is_feed_down_then_resync() {
    let mut nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge_with_timeout(&nats.url(), 1_500);
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("Y", 1, 100, 110)])).unwrap();
    wait_listed(&e1, 1);
    let mut c = Client::connect(e1.ws_addr, Enc::Proto, 1);
    c.subscribe(&["Y"], &["book", "trades"], 1);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    nats.kill();
    let down = c.read_until(
        WAIT,
        |b| matches!(b, Body::Stale(s) if s.reason == "feed_down"),
    );
    assert!(
        down.is_some(),
        "Stale{{feed_down}} while the backplane is gone"
    );
    // Meanwhile the book moves on at the origin.
    for i in 2..30 {
        feed.write_all(&proto(&[delta("Y", i, 95, i as i64)]))
            .unwrap();
    }
    nats.restart();
    let truth = loop {
        let t = books(&o)["Y"];
        if t.0 == 29 {
            break t;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        c.read_until_seqs(WAIT, &HashMap::from([("Y".to_string(), truth.0)])),
        "resumed after the outage: {:?}",
        c.books.get("Y").map(|b| b.seq)
    );
    assert_eq!(c.books["Y"].book.checksum(), truth.1);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// One server of a 3-server cluster is killed mid-stream: edges reconnect
/// to another; every client ends with the feed's books, with no silent gap.
#[test]
fn cluster_server_killed_mid_stream_edges_recover() {
    let mut cluster = start_cluster(3, false);
    let urls: Vec<String> = cluster.servers.iter().map(NatsServer::url).collect();
    // The origin on server 0, each edge prefers a different server.
    let o = origin(&urls[0], "venue-a");
    let e1 = edge(&format!("{},{}", urls[1], urls[2]));
    let e2 = edge(&format!("{},{}", urls[2], urls[0]));
    let mut synth = SynthMarket::new(SynthConfig {
        seed: 5,
        symbols: 4,
        ..SynthConfig::default()
    });
    let names: Vec<String> = synth.names().map(str::to_string).collect();
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&synth.snapshots(1))).unwrap();
    wait_listed(&e1, names.len());
    wait_listed(&e2, names.len());
    let mut rng = Rng::new(9);
    let mut clients: Vec<_> = (0..8)
        .map(|i| subscribe_random([&e1, &e2][i % 2], &names, i, &mut rng))
        .collect();
    let mut ts = 0;
    for round in 0..20 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                ts += 1;
                synth.next_event(ts)
            })
            .collect();
        feed.write_all(&proto(&batch)).unwrap();
        pump(&mut clients);
        if round == 6 {
            cluster.servers[1].kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let truth = settled(&o);
    converge(&mut clients, &truth);
    assert_clean(&clients);
}

fn metric_of(e: &Engine, name: &str, label: &str) -> u64 {
    common::harness::metric_with(e, name, label)
}

/// Garbage on a data subject (not our header, unknown version, truncated,
/// another epoch's message): counted, dropped, the symbol resynced; clients
/// end with the feed's book and no violation; nothing panics.
#[test]
fn garbage_on_a_data_subject_is_counted_and_resynced() {
    use tickwire::cluster::header::{self, Header, Kind, OriginTag};
    let nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge(&nats.url());
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("G", 1, 100, 110)])).unwrap();
    wait_listed(&e1, 1);
    let mut c = Client::connect(e1.ws_addr, Enc::Proto, 1);
    c.subscribe(&["G"], &["book"], 1);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    wait_until("the edge subscribed", || {
        nats.monitor_json("/subsz?subs=1").contains("tw.md.G")
    });
    let mut raw = common::nats::RawNats::connect(nats.client_port);
    // A well-formed delta that follows on, but from another (older) epoch.
    let body = pb::ServerMessage {
        body: Some(Body::Delta(pb::BookDelta {
            symbol: "G".into(),
            seq: 2,
            ..Default::default()
        })),
    };
    let old_epoch = header::encode(
        &Header {
            kind: Kind::Delta,
            origin: OriginTag::of("venue-a"),
            epoch: 1,
            seq: 2,
        },
        &prost::Message::encode_to_vec(&body),
    );
    let mut bad_version = old_epoch.clone();
    bad_version[2] = 9;
    for payload in [
        b"not our header at all, and longer than one".to_vec(),
        bad_version,
        old_epoch[..10].to_vec(),
        old_epoch,
    ] {
        raw.publish("tw.md.G", &payload);
    }
    raw.flush();
    for i in 2..20 {
        feed.write_all(&proto(&[delta("G", i, 95, i as i64)]))
            .unwrap();
    }
    let truth = loop {
        let t = books(&o)["G"];
        if t.0 == 19 {
            break t;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(c.read_until_seqs(WAIT, &HashMap::from([("G".to_string(), truth.0)])));
    assert_eq!(c.books["G"].book.checksum(), truth.1);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    wait_until("garbage counted by reason", || {
        metric_of(&e1, "tickwire_backplane_edge_rejected_total", "bad_magic") >= 1
            && metric_of(
                &e1,
                "tickwire_backplane_edge_rejected_total",
                "unknown_version",
            ) >= 1
            && metric_of(&e1, "tickwire_backplane_edge_rejected_total", "truncated") >= 1
            && metric_of(&e1, "tickwire_backplane_edge_rejected_total", "epoch") >= 1
            && metric_of(&e1, "tickwire_backplane_edge_resyncs_total", "") >= 1
    });
    assert!(
        c.log
            .iter()
            .any(|b| matches!(b, Body::Stale(s) if s.reason == "feed_gap")),
        "the resync was explicit"
    );
}

/// A stuck backplane never blocks the origin: with NATS gone, a flood into
/// the origin still reaches its own clients at once; what cannot be queued
/// for NATS is dropped and counted; once NATS is back, the edge finds the
/// gap and resyncs to the exact book.
#[test]
fn a_stuck_backplane_never_blocks_the_origin() {
    let mut nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge_with_timeout(&nats.url(), 60_000);
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("S", 1, 100, 110)])).unwrap();
    wait_listed(&e1, 1);
    let mut at_edge = Client::connect(e1.ws_addr, Enc::Proto, 1);
    at_edge.subscribe(&["S"], &["book"], 1);
    assert!(
        at_edge
            .read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    let mut at_origin = Client::connect(o.ws_addr, Enc::Proto, 2);
    at_origin.subscribe(&["S"], &["book"], 2);
    assert!(
        at_origin
            .read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    nats.kill();
    // More than the 65,536-message ring to the backplane thread can hold.
    let n: u64 = 90_000;
    let mut batch = Vec::new();
    for i in 2..n + 2 {
        batch.push(delta("S", i, 90 + (i % 5) as i64, (i % 97) as i64));
        if batch.len() == 5_000 {
            feed.write_all(&proto(&batch)).unwrap();
            batch.clear();
            at_origin.read_for(Duration::from_millis(1));
        }
    }
    feed.write_all(&proto(&batch)).unwrap();
    let truth_seq = n + 1;
    assert!(
        at_origin.read_until_seqs(WAIT, &HashMap::from([("S".to_string(), truth_seq)])),
        "the origin's own clients got every delta while NATS was down"
    );
    wait_until("drops counted on the way to NATS", || {
        metric_of(&o, "tickwire_backplane_dropped_total", "publish") > 0
    });
    nats.restart();
    let truth = books(&o)["S"];
    assert_eq!(truth.0, truth_seq);
    assert!(
        at_edge.read_until_seqs(WAIT, &HashMap::from([("S".to_string(), truth.0)])),
        "the edge resynced after the outage: {:?}",
        at_edge.books.get("S").map(|b| b.seq)
    );
    assert_eq!(at_edge.books["S"].book.checksum(), truth.1);
    assert!(at_edge.violations.is_empty(), "{:?}", at_edge.violations);
    assert!(
        at_origin.violations.is_empty(),
        "{:?}",
        at_origin.violations
    );
}

/// Two origins claim one symbol: the one with the smallest name owns it on
/// every edge; the other's messages are counted and dropped. When the owner
/// goes silent, the other takes over through a resync.
#[test]
fn two_origins_claiming_a_symbol_the_smallest_name_wins() {
    let nats = start_single();
    let a = origin(&nats.url(), "venue-a");
    let b = origin(&nats.url(), "venue-b");
    let e1 = edge_with_timeout(&nats.url(), 1_500);
    let mut fa = TcpStream::connect(a.ingest.proto_addr).unwrap();
    let mut fb = TcpStream::connect(b.ingest.proto_addr).unwrap();
    fa.write_all(&proto(&[snap("DUP", 1, 100, 110)])).unwrap();
    fb.write_all(&proto(&[snap("DUP", 1, 500, 510)])).unwrap();
    wait_listed(&e1, 1);
    // Both heartbeats seen before the client arrives.
    wait_until("both origins' heartbeats", || {
        metric_of(&e1, "tickwire_backplane_edge_heartbeats_total", "") >= 4
    });
    let mut c = Client::connect(e1.ws_addr, Enc::Proto, 1);
    c.subscribe(&["DUP"], &["book"], 1);
    assert!(
        c.read_until(WAIT, |m| matches!(m, Body::Snapshot(_)))
            .is_some()
    );
    for i in 2..12 {
        fa.write_all(&proto(&[delta("DUP", i, 99, i as i64)]))
            .unwrap();
        fb.write_all(&proto(&[delta("DUP", i, 499, i as i64)]))
            .unwrap();
    }
    wait_until("both origins applied their deltas", || {
        books(&a)["DUP"].0 == 11 && books(&b)["DUP"].0 == 11
    });
    let ta = books(&a)["DUP"];
    assert!(c.read_until_seqs(WAIT, &HashMap::from([("DUP".to_string(), ta.0)])));
    assert_eq!(c.books["DUP"].book.checksum(), ta.1, "venue-a's book");
    assert_eq!(c.books["DUP"].epoch, ta.2);
    wait_until("the other origin's messages dropped", || {
        metric_of(&e1, "tickwire_backplane_edge_other_origin_total", "") > 0
    });
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    // venue-a goes away: venue-b takes over through a resync.
    drop(fa);
    drop(a);
    for i in 12..20 {
        fb.write_all(&proto(&[delta("DUP", i, 498, i as i64)]))
            .unwrap();
    }
    wait_until("venue-b applied its deltas", || books(&b)["DUP"].0 == 19);
    let tb = books(&b)["DUP"];
    let got = c.read_until(WAIT, |m| matches!(m, Body::Snapshot(s) if s.epoch == tb.2));
    assert!(got.is_some(), "venue-b's book after venue-a went silent");
    assert!(c.read_until_seqs(WAIT, &HashMap::from([("DUP".to_string(), tb.0)])));
    assert_eq!(c.books["DUP"].book.checksum(), tb.1);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// An edge attached to a leaf node of a 3-server cluster: only the data
/// subjects of its clients' symbols cross the leaf link, by the hub's own
/// monitoring (the leaf's interest list and message counts).
#[test]
fn an_edge_on_a_leaf_node_pulls_only_its_clients_symbols() {
    let cluster = start_cluster(3, true);
    let o = origin(&cluster.servers[0].url(), "venue-a");
    let leaf = cluster.leaf.as_ref().expect("a leaf");
    let e1 = edge(&leaf.url());
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    let names = ["L1", "L2", "L3", "L4"];
    let snaps: Vec<_> = names.iter().map(|s| snap(s, 1, 100, 110)).collect();
    feed.write_all(&proto(&snaps)).unwrap();
    wait_listed(&e1, names.len());
    let mut c = Client::connect(e1.ws_addr, Enc::Proto, 1);
    c.subscribe(&["L2"], &["book"], 1);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    let hub = cluster.leaf_hub();
    wait_until("the leaf's interest reached its hub", || {
        hub.leaf_subjects().contains(&"tw.md.L2".to_string())
    });
    let (_, before) = hub.leaf_in_out_msgs();
    let rounds: u64 = 50;
    for i in 2..rounds + 2 {
        let batch: Vec<_> = names.iter().map(|s| delta(s, i, 95, i as i64)).collect();
        feed.write_all(&proto(&batch)).unwrap();
    }
    assert!(c.read_until_seqs(WAIT, &HashMap::from([("L2".to_string(), rounds + 1)])));
    let subjects = hub.leaf_subjects();
    let data: Vec<_> = subjects
        .iter()
        .filter(|s| s.starts_with("tw.md."))
        .collect();
    assert_eq!(data, ["tw.md.L2"], "only the wanted data subject crosses");
    let (_, after) = hub.leaf_in_out_msgs();
    let crossed = after - before;
    // L2's deltas, plus heartbeats (one a second), never the other three symbols'.
    assert!(
        crossed >= rounds && crossed < rounds + 20,
        "{crossed} messages crossed the leaf link for {rounds} deltas of the wanted symbol"
    );
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// A stuck edge (its process stopped with SIGSTOP while data flows) never
/// slows the origin: the origin's own clients get every delta at once.
/// When the edge runs again, its clients end with the exact book: from what
/// NATS kept for it (up to the server's max_pending), or, for what NATS
/// dropped, through an explicit Stale + snapshot; never a silent gap.
#[test]
fn a_stuck_edge_process_never_slows_the_origin_and_resyncs() {
    use std::process::Command;
    let nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let url = nats.url();
    let (child, edge_addr) =
        common::harness::spawn_serve(&["--backplane", &url, "--workers", "1", "--no-pin"]);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.0.id().to_string()])
                .status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &child.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("K", 1, 100, 110)])).unwrap();
    wait_until("the edge lists K", || {
        http_get(edge_addr, "/symbols", "GET").1.contains("\"K\"")
    });
    let mut at_edge = Client::connect(edge_addr, Enc::Proto, 1);
    at_edge.subscribe(&["K"], &["book"], 1);
    assert!(
        at_edge
            .read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    let mut at_origin = Client::connect(o.ws_addr, Enc::Proto, 2);
    at_origin.subscribe(&["K"], &["book"], 2);
    assert!(
        at_origin
            .read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    signal("-STOP");
    let n: u64 = 20_000;
    let started = std::time::Instant::now();
    let mut batch = Vec::new();
    for i in 2..n + 2 {
        batch.push(delta("K", i, 90 + (i % 5) as i64, (i % 89) as i64 + 1));
        if batch.len() == 2_000 {
            feed.write_all(&proto(&batch)).unwrap();
            batch.clear();
            at_origin.read_for(Duration::from_millis(1));
        }
    }
    feed.write_all(&proto(&batch)).unwrap();
    assert!(
        at_origin.read_until_seqs(WAIT, &HashMap::from([("K".to_string(), n + 1)])),
        "the origin's clients got every delta while an edge was stuck"
    );
    let origin_took = started.elapsed();
    signal("-CONT");
    let truth = books(&o)["K"];
    assert!(
        at_edge.read_until_seqs(WAIT, &HashMap::from([("K".to_string(), truth.0)])),
        "the edge caught up: {:?}",
        at_edge.books.get("K").map(|b| (b.seq, b.awaiting))
    );
    assert_eq!(at_edge.books["K"].book.checksum(), truth.1);
    assert!(at_edge.violations.is_empty(), "{:?}", at_edge.violations);
    assert!(
        at_origin.violations.is_empty(),
        "{:?}",
        at_origin.violations
    );
    assert!(
        origin_took < Duration::from_secs(10),
        "the origin served {n} deltas in {origin_took:?} with an edge stuck"
    );
}

/// The backplane thread is under the engine's one thread-death policy: if it
/// dies, supervision reports it (the binary exits 70) and `/healthz` says so.
#[test]
fn a_dead_backplane_thread_fails_health_and_supervision() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let nats = start_single();
    let e1 = edge(&nats.url());
    assert_eq!(http_get(e1.ws_addr, "/healthz", "GET"), (200, "ok".into()));
    e1.shared
        .backplane
        .as_ref()
        .expect("an edge has a backplane")
        .inject_panic
        .store(true, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    let why = e1.supervise(&stop).expect_err("supervision sees the death");
    assert_eq!(why, "backplane died");
    let (status, body) = http_get(e1.ws_addr, "/healthz", "GET");
    assert_eq!(status, 503);
    assert!(body.contains("backplane died"), "{body}");
}

/// PROTOCOL §8 on every node: an origin and an edge with the same keys
/// answer alike (a token's entitlements hold on the edge, for symbols it
/// follows through NATS), and a user's `max_connections` is per node.
#[test]
fn origin_and_edge_authenticate_alike_with_max_connections_per_node() {
    use common::keys::{ed25519_pems, now_s, sign_ed25519};
    use common::{SocketOpts, try_upgrade_to};
    use tickwire::auth::AuthMode;
    let dir = std::env::temp_dir().join(format!("tickwire-cluster-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = ed25519_pems();
    std::fs::write(dir.join("ed.pub"), public).unwrap();
    let nats = start_single();
    let with_auth = |mut cfg: tickwire::net::engine::EngineConfig| {
        cfg.auth.mode = AuthMode::Required;
        cfg.auth.public_key_files = vec![dir.join("ed.pub")];
        Engine::start(cfg).expect("node starts")
    };
    let backplane = |origin: Option<&str>| BackplaneSettings {
        servers: vec![nats.url()],
        origin: origin.map(str::to_string),
        edge: origin.is_none(),
        heartbeat_timeout_ms: 3_000,
    };
    let o = with_auth({
        let mut cfg = config(1);
        cfg.ingest.backplane = Some(backplane(Some("venue-a")));
        cfg
    });
    let e1 = with_auth({
        let mut cfg = config(1);
        cfg.ingest.backplane = Some(backplane(None));
        cfg
    });
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[
        snap("AAA", 1, 100, 110),
        snap("BBB", 1, 200, 210),
    ]))
    .unwrap();
    wait_listed(&e1, 2);
    let token = sign_ed25519(
        &private,
        &serde_json::json!({"sub": "ola", "exp": now_s() + 600,
            "tw": {"symbols": ["AAA"], "max_connections": 1}}),
    );
    let bearer = format!("Authorization: Bearer {token}");
    let mut held = Vec::new();
    for node in [&o, &e1] {
        let mut c = Client::connect_to(
            node.ws_addr,
            Enc::Proto,
            1,
            SocketOpts::default(),
            "/ws",
            &[&bearer],
        );
        c.subscribe(&["AAA", "BBB"], &["book"], 1);
        let refused = c.read_until(WAIT, |b| matches!(b, Body::Error(_)));
        assert!(
            matches!(&refused, Some(Body::Error(e)) if e.code == "forbidden"),
            "{refused:?}"
        );
        c.subscribe(&["AAA"], &["book"], 2);
        assert!(
            c.read_until(
                WAIT,
                |b| matches!(b, Body::Snapshot(s) if s.symbol == "AAA")
            )
            .is_some(),
            "AAA's snapshot on this node"
        );
        // The one connection this user may hold on this node is taken…
        let (status, _, _s) =
            try_upgrade_to(node.ws_addr, SocketOpts::default(), 2, "/ws", &[&bearer]);
        assert_eq!(status, 429);
        // …and it stays open while the next node admits the user again.
        held.push(c);
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// PROTOCOL §10 across nodes: a client of one edge that reconnects to
/// another edge of the same origin (same epoch) resumes there, gap-free,
/// from that node's history, with no snapshot.
#[test]
fn a_client_resumes_on_another_edge_of_the_same_epoch() {
    let nats = start_single();
    let o = origin(&nats.url(), "venue-a");
    let e1 = edge(&nats.url());
    let e2 = edge(&nats.url());
    let mut feed = TcpStream::connect(o.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("X", 1, 100, 110)])).unwrap();
    wait_listed(&e1, 1);
    wait_listed(&e2, 1);
    // Some client of e2 holds X, so e2 follows it (and records its history).
    let mut watcher = Client::connect(e2.ws_addr, Enc::Proto, 9);
    watcher.subscribe(&["X"], &["book"], 1);
    let mut c = Client::connect(e1.ws_addr, Enc::JsonProtocol, 1);
    c.subscribe(&["X"], &["book"], 1);
    for cl in [&mut c, &mut watcher] {
        assert!(cl.read_until_seqs(WAIT, &HashMap::from([("X".to_string(), 1)])));
    }
    for i in 2..12 {
        feed.write_all(&proto(&[delta("X", i, 90 + (i as i64 % 7), i as i64)]))
            .unwrap();
    }
    assert!(c.read_until_seqs(WAIT, &HashMap::from([("X".to_string(), 11)])));
    let held = c.books["X"].clone();
    drop(c);
    for i in 12..30 {
        feed.write_all(&proto(&[delta("X", i, 90 + (i as i64 % 7), i as i64)]))
            .unwrap();
    }
    wait_until("e2 has it all", || {
        books(&e2).get("X").is_some_and(|b| b.0 == 29)
    });
    let mut back = Client::connect(e2.ws_addr, Enc::JsonProtocol, 2);
    back.books.insert("X".into(), held.clone());
    back.send(&format!(
        r#"{{"op":"subscribe","symbols":["X"],"channels":["book"],"id":5,"resume":{{"X":{{"epoch":{},"book":{}}}}}}}"#,
        held.epoch, held.seq
    ));
    let Some(Body::Subscribed(s)) = back.read_until(WAIT, |b| matches!(b, Body::Subscribed(_)))
    else {
        panic!("no Subscribed: {:?}", back.log);
    };
    assert_eq!(s.resumed, vec!["X:book"], "same epoch on every node");
    assert!(back.read_until_seqs(WAIT, &HashMap::from([("X".to_string(), 29)])));
    assert!(
        !back.log.iter().any(|b| matches!(b, Body::Snapshot(_))),
        "resumed, no snapshot"
    );
    assert_eq!(back.books["X"].book.checksum(), books(&o)["X"].1);
    assert!(back.violations.is_empty(), "{:?}", back.violations);
}
