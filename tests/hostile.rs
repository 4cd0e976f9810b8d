//! Hostile input against the real engine on loopback: each case sends the
//! input, checks the answer PROTOCOL gives it, and checks that nothing else
//! was disturbed (another client keeps its gap-free stream, another feed keeps
//! publishing, the counters say what happened). One or two workers, pinning
//! off; every wait bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::harness::{
    WAIT, config, delta, http_get, metric, metric_with, proto, rejections, serve_refused, snap,
    wait_until,
};
use common::{Client, Enc, SocketOpts, tcp_connect, try_upgrade};
use tickwire::net::engine::Engine;
use tickwire::wire::pb::server_message::Body;
use tickwire::ws::Opcode;
use tickwire::ws::frame::write_client_frame;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn masked(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(&mut out, true, opcode, payload, KEY);
    out
}

/// An engine with one book ("AA") and a feed that can keep sending deltas.
fn engine_with_book(workers: usize) -> (Engine, TcpStream) {
    let e = Engine::start(config(workers)).unwrap();
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[snap("AA", 1, 100, 101)])).unwrap();
    wait_until("the book", || {
        metric(&e, "tickwire_ingest_messages_total") >= 1
    });
    (e, feed)
}

/// A subscribed client on "AA" that has its snapshot.
fn watcher(e: &Engine, enc: Enc, seed: u64) -> Client {
    let mut c = Client::connect(e.ws_addr, enc, seed);
    c.subscribe(&["AA"], &["book"], 1);
    c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
        .expect("snapshot");
    c
}

/// Sends deltas `from..to` (feed seq) and checks that `c` receives them all,
/// gap-free (the client verifies seq and checksum).
fn still_live(feed: &mut TcpStream, c: &mut Client, from: u64, to: u64) {
    let msgs: Vec<_> = (from..to)
        .map(|s| delta("AA", s, 90 + (s % 7) as i64, 1 + (s % 5) as i64))
        .collect();
    feed.write_all(&proto(&msgs)).unwrap();
    let last = to - 1;
    let got = c.read_until(WAIT, |b| matches!(b, Body::Delta(d) if d.seq == last));
    assert!(got.is_some(), "delta {last} arrived");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// Reads until EOF or reset; returns how long it took.
fn time_to_eof(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        assert!(start.elapsed() < WAIT, "the server never closed");
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return start.elapsed(),
        }
    }
}

/// The one-message crash: 60,000 `[` in one text message used to overflow the
/// worker's stack and abort the process. It is a `bad_request` now; the
/// connection stays usable, and another client's stream is untouched.
#[test]
fn deeply_nested_request_is_a_bad_request_not_a_crash() {
    let (e, mut feed) = engine_with_book(1);
    let mut other = watcher(&e, Enc::Proto, 1);
    let mut c = Client::connect(e.ws_addr, Enc::JsonProtocol, 2);
    c.send(&"[".repeat(60_000));
    let err = c
        .read_until(WAIT, |b| matches!(b, Body::Error(_)))
        .expect("an answer");
    let Body::Error(err) = err else {
        unreachable!()
    };
    assert_eq!((err.id, err.code.as_str()), (0, "bad_request"));
    assert!(err.message.len() < 100, "{}", err.message);
    // The same inside an object.
    c.send(&format!(
        r#"{{"op":"subscribe","symbols":["AA"],"x":{}}}"#,
        "[".repeat(60_000)
    ));
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Error(_)))
            .is_some()
    );
    // The connection still works, and so does everyone else's.
    c.subscribe(&["AA"], &["book"], 5);
    assert!(
        c.read_until(WAIT, |b| matches!(b, Body::Snapshot(_)))
            .is_some()
    );
    still_live(&mut feed, &mut other, 2, 50);
    assert!(c.closed.is_none() && other.closed.is_none());
    wait_until("both counted", || rejections(&e, "bad_request") == 2);
}

/// The same on the JSON ingest listener: one line of 500,000 `[` (before any
/// token check) closes that feed, counted; the other feed keeps publishing.
#[test]
fn deeply_nested_ingest_line_closes_only_that_feed() {
    let (e, mut feed) = engine_with_book(1);
    let mut watcher = watcher(&e, Enc::Proto, 3);
    let mut bad = TcpStream::connect(e.ingest.json_addr).unwrap();
    let mut line = vec![b'['; 500_000];
    line.push(b'\n');
    bad.write_all(&line).unwrap();
    time_to_eof(&mut bad);
    wait_until("the close counted", || {
        metric_with(
            &e,
            "tickwire_ingest_feeds_closed_total",
            "reason=\"not_json_object\"",
        ) == 1
    });
    still_live(&mut feed, &mut watcher, 2, 40);
}

/// RFC 6455 §7.1.7 and PROTOCOL §7: a connection the server fails is closed
/// by the server within about 1 s of its close frame, even when the client
/// answers with a close that the oversized frame's payload swallows.
#[test]
fn failed_connections_are_closed_by_the_server_within_a_second() {
    let (e, mut feed) = engine_with_book(1);
    let mut other = watcher(&e, Enc::Proto, 4);
    let header_64 = |len: u64| {
        let mut b = vec![0x81, 0xff];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&KEY);
        b
    };
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("65,537-byte frame", header_64(65_537), 1009),
        ("2^40-byte frame", header_64(1 << 40), 1009),
    ];
    for (i, (name, bytes, code)) in cases.into_iter().enumerate() {
        let (status, _, mut s) = try_upgrade(e.ws_addr, SocketOpts::default(), 10 + i as u64);
        assert_eq!(status, 101);
        s.write_all(&bytes).unwrap();
        // The close frame: 0x88, length, code.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 4];
        s.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0x88, "{name}");
        assert_eq!(u16::from_be_bytes([head[2], head[3]]), code, "{name}");
        // The client answers the close, as a well-behaved client does.
        s.write_all(&masked(Opcode::Close, &code.to_be_bytes()))
            .unwrap();
        let took = time_to_eof(&mut s);
        assert!(took < Duration::from_millis(2500), "{name}: {took:?}");
    }
    wait_until("sockets released", || {
        metric(&e, "tickwire_worker_sockets") == 1
    });
    assert_eq!(rejections(&e, "protocol_error"), 1);
    assert_eq!(rejections(&e, "message_too_big"), 2);
    still_live(&mut feed, &mut other, 2, 30);
}

/// PROTOCOL §6: `/symbols` reports each seq current when answered: right
/// after a client received a delta, never an older seq.
#[test]
fn symbols_seq_is_current_when_answered() {
    let (e, mut feed) = engine_with_book(2);
    let mut c = watcher(&e, Enc::Proto, 5);
    for seq in 2..12u64 {
        feed.write_all(&proto(&[delta("AA", seq, 95, seq as i64)]))
            .unwrap();
        let got = c.read_until(WAIT, |b| matches!(b, Body::Delta(d) if d.seq == seq));
        assert!(got.is_some());
        let (status, body) = http_get(e.ws_addr, "/symbols", "GET");
        assert_eq!(status, 200);
        // Book seq: the snapshot took 1, each delta one more.
        assert!(
            body.contains(&format!(r#""symbol":"AA","seq":{seq}"#)),
            "after delta {seq}: {body}"
        );
    }
}

/// A client that sends 125-byte pings and never reads: its pongs are queued
/// up to high-water, then the engine stops reading it, so TCP flow control
/// stops its sender and nothing grows without bound. Without the pause it
/// could push hundreds of megabytes of pings, every pong kept in memory.
#[test]
fn ping_flood_from_a_client_that_never_reads_is_bounded() {
    let (e, mut feed) = engine_with_book(1);
    let mut other = watcher(&e, Enc::Proto, 6);
    let (status, _, mut s) = try_upgrade(
        e.ws_addr,
        SocketOpts {
            recv_buffer: Some(4096),
            ..SocketOpts::default()
        },
        7,
    );
    assert_eq!(status, 101);
    let ping = masked(Opcode::Ping, &[b'p'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    s.set_nonblocking(true).unwrap();
    let (start, mut sent, mut blocked_since) = (Instant::now(), 0usize, None);
    // Until the sender has been blocked for 1 s, or 10 s, or 256 MiB.
    while start.elapsed() < Duration::from_secs(10) && sent < 256 << 20 {
        match s.write(&burst) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(blocked_since.is_some(), "the flood was never held back");
    assert!(sent < 32 << 20, "{sent} bytes of pings accepted");
    assert!(metric(&e, "tickwire_reads_paused_total") >= 1);
    still_live(&mut feed, &mut other, 2, 30);
}

/// Sockets closed with output still pending (a plain HTTP answer to a peer
/// that never reads) are dropped at the linger deadline (the close timeout),
/// not held forever outside every connection limit.
#[test]
fn closed_socket_with_unread_output_is_dropped_at_the_linger_deadline() {
    let mut cfg = config(1);
    cfg.ws.close_timeout_ms = 300;
    cfg.shell.socket_send_buffer_bytes = 4096;
    let e = Engine::start(cfg).unwrap();
    let mut s = tcp_connect(
        e.ws_addr,
        SocketOpts {
            recv_buffer: Some(2048),
            ..SocketOpts::default()
        },
    );
    // The dashboard page (~40 KB) cannot fit in 4 KiB + 2 KiB of buffers.
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    wait_until("the request answered", || {
        metric(&e, "tickwire_http_requests_total") == 1
    });
    wait_until("the socket dropped at the linger deadline", || {
        metric(&e, "tickwire_worker_sockets") == 0
    });
    drop(s);
}

/// One request naming 10,000 symbols (all unknown) is answered at once and
/// does not stall the worker for its other clients.
#[test]
fn a_request_of_ten_thousand_symbols_is_answered_without_stalling() {
    let (e, mut feed) = engine_with_book(1);
    let mut other = watcher(&e, Enc::Proto, 8);
    let mut c = Client::connect(e.ws_addr, Enc::JsonProtocol, 9);
    // Three-character names, so the message stays under the 64 KiB limit.
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let names: Vec<String> = (0..10_000usize)
        .map(|i| {
            let c = |k: usize| ALPHABET[(i / 36usize.pow(k as u32)) % 36] as char;
            format!("\"{}{}{}\"", c(2), c(1), c(0))
        })
        .collect();
    c.send(&format!(
        r#"{{"op":"subscribe","symbols":[{}],"id":3}}"#,
        names.join(",")
    ));
    let Some(Body::Error(err)) = c.read_until(WAIT, |b| matches!(b, Body::Error(_))) else {
        panic!("no answer: {:?} {:?}", c.closed, c.violations);
    };
    assert_eq!((err.id, err.code.as_str()), (3, "too_many_subscriptions"));
    still_live(&mut feed, &mut other, 2, 30);
    // No loop turn came near a stall: with a scan per symbol the request
    // took a 1.04 s turn here (debug build), with sets 27 ms. A generous
    // bound between the two, not a performance target.
    let max_turn_ns = metric(&e, "tickwire_worker_max_turn_ns");
    assert!(max_turn_ns < 250_000_000, "a {max_turn_ns} ns loop turn");
}

/// One honest policy for a dead thread (src/net/health.rs): `/healthz`
/// answers 503 naming it, and the supervision loop the binary runs returns
/// the failure (the binary then exits 70 for its supervisor to restart it).
#[test]
fn a_panicking_worker_or_ingest_thread_fails_health_and_supervision() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for victim in ["worker-1", "ingest"] {
        let e = Engine::start(config(2)).unwrap();
        assert_eq!(http_get(e.ws_addr, "/healthz", "GET"), (200, "ok".into()));
        let stop = AtomicBool::new(false);
        if victim == "ingest" {
            // The ingest thread runs control closures: one that panics.
            let _ = e.ingest.with_market(Duration::from_millis(200), |_| -> () {
                panic!("injected panic (test)")
            });
        } else {
            e.shared.workers[1]
                .inject_panic
                .store(true, Ordering::Relaxed);
        }
        let why = e.supervise(&stop).expect_err("supervision sees the death");
        assert_eq!(why, format!("{victim} died"));
        // Any live worker answers /healthz honestly (retry: the connection
        // may land on the dead worker's listener, which nobody accepts on).
        let deadline = Instant::now() + WAIT;
        loop {
            let mut s = TcpStream::connect(e.ws_addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if !out.is_empty() {
                assert!(out.starts_with("HTTP/1.1 503"), "{out}");
                assert!(out.contains(&format!("{victim} died")), "{out}");
                break;
            }
            assert!(Instant::now() < deadline, "no live worker answered");
        }
    }
}

/// The ingest token is never printed by `--help`, even from its variable;
/// a non-loopback listener without `--allowed-origin` is warned about.
#[test]
fn help_hides_the_token_and_an_open_origin_policy_is_warned() {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_tickwire");
    let out = Command::new(bin)
        .args(["serve", "--help"])
        .env("TICKWIRE_INGEST_TOKEN", "sekrit-value-42")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("TICKWIRE_INGEST_TOKEN"), "{help}");
    assert!(!help.contains("sekrit-value-42"), "{help}");
    for (listen, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                listen,
                "--ingest",
                "127.0.0.1:0",
                "--ingest-json",
                "127.0.0.1:0",
                "--workers",
                "1",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        child.kill().unwrap();
        let _ = child.wait();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(
            err.contains("no --allowed-origin"),
            warned,
            "{listen}: {err}"
        );
    }
}

/// Thresholds that cannot work together stop `tickwire serve` at start with
/// a non-zero status and a message naming them (`EngineConfig::validate`).
#[test]
fn inconsistent_water_marks_exit_non_zero_with_a_clear_message() {
    let err = serve_refused(&[
        "--listen",
        "127.0.0.1:0",
        "--ingest",
        "127.0.0.1:0",
        "--ingest-json",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--no-pin",
        "--low-water-bytes",
        "100000",
        "--high-water-bytes",
        "100000",
    ]);
    assert!(err.contains("invalid configuration"), "{err}");
    assert!(
        err.contains("low-water (100000) must be below high-water (100000)"),
        "{err}"
    );
}

/// Out of file descriptors (EMFILE), the engine keeps the queued connections
/// in the listen backlog and retries accepting on a timer: once descriptors
/// are free again they are served without waiting for a new arrival, and the
/// failure is logged once, not once per retry. The real binary runs under
/// `ulimit -n 64`.
#[test]
fn out_of_descriptors_the_backlog_is_retried_on_a_timer_and_logged_once() {
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_tickwire");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {bin} serve --listen 127.0.0.1:0 --ingest 127.0.0.1:0 \
             --ingest-json 127.0.0.1:0 --workers 1 --no-pin"
        ))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .parse()
        .unwrap();
    // Each HTTP request on its own connection; which ones were answered.
    let answered = |s: &mut TcpStream, wait: Duration| -> bool {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 12];
        matches!(s.read(&mut b), Ok(n) if n > 0)
    };
    let mut served = Vec::new();
    let mut queued = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(addr).unwrap();
        // A WebSocket upgrade: the connection stays open once answered.
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        if answered(&mut s, Duration::from_millis(150)) {
            served.push(s);
        } else {
            queued.push(s);
        }
    }
    assert!(!queued.is_empty(), "the descriptor limit was never reached");
    assert!(served.len() >= 20, "served {}", served.len());
    // Free ten descriptors; no new connection arrives after this.
    served.truncate(served.len() - 10);
    std::thread::sleep(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut newly = 0;
    for s in &mut queued {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if answered(s, left.min(Duration::from_secs(2))) {
            newly += 1;
        }
    }
    assert!(
        newly >= 5,
        "only {newly} queued connections served after fds were freed"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let lines = err.matches("accept failed: out of resources").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for the failures:\n{err}"
    );
}
