//! Engine-level helpers shared by the integration tests: an in-process engine
//! on loopback (port 0, pinning off), bounded waits, metric reads, feed
//! messages and a plain HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tickwire::book::decode::encode_proto;
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::{self, ingest_message};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// An engine config on loopback with `workers` workers, every port 0.
pub fn config(workers: usize) -> EngineConfig {
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

/// Polls `cond` every 10 ms; fails the test after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sum of a metric's lines whose labels contain `label` (e.g. `reason="x"`).
pub fn metric_with(e: &Engine, name: &str, label: &str) -> u64 {
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

pub fn metric(e: &Engine, name: &str) -> u64 {
    metric_with(e, name, "")
}

/// `tickwire_rejections_total` for one reason, all workers.
pub fn rejections(e: &Engine, reason: &str) -> u64 {
    metric_with(
        e,
        "tickwire_rejections_total",
        &format!("reason=\"{reason}\""),
    )
}

/// Length-delimited protobuf ingest bytes.
pub fn proto(msgs: &[pb::IngestMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_proto(m, &mut out);
    }
    out
}

/// A one-level-per-side snapshot at 2 price decimals.
pub fn snap(symbol: &str, seq: u64, bid: i64, ask: i64) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(ingest_message::Body::Snapshot(pb::BookSnapshot {
            symbol: symbol.into(),
            seq,
            bids: vec![pb::Level {
                price: bid,
                size: 10,
            }],
            asks: vec![pb::Level {
                price: ask,
                size: 10,
            }],
            price_decimals: 2,
            size_decimals: 0,
            ..Default::default()
        })),
    }
}

/// A delta setting one bid level.
pub fn delta(symbol: &str, seq: u64, price: i64, size: i64) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(ingest_message::Body::Delta(pb::BookDelta {
            symbol: symbol.into(),
            seq,
            updates: vec![pb::LevelUpdate {
                side: pb::Side::Bid as i32,
                price,
                size,
            }],
            ..Default::default()
        })),
    }
}

/// A trade of size 1 (bid aggressor) at `price`.
pub fn trade(symbol: &str, price: i64) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(ingest_message::Body::Trade(pb::Trade {
            symbol: symbol.into(),
            price,
            size: 1,
            aggressor: pb::Side::Bid as i32,
            ..Default::default()
        })),
    }
}

/// The real binary as `tickwire serve` on loopback port 0 (ingest too),
/// with `extra` arguments; returns the child and the WebSocket address it
/// printed. Its stdout keeps being drained by a thread until it exits (a
/// closed pipe would make its next line fail).
pub fn spawn_serve(extra: &[&str]) -> (std::process::Child, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
            "--ingest-json",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tickwire");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("a line").expect("stdout");
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().parse().expect("an address");
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// One plain HTTP request; returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str, method: &str) -> (u16, String) {
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

/// `tickwire serve ARGS` must exit on its own, non-zero; returns its stderr.
pub fn serve_refused(args: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .arg("serve")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("tickwire serve {args:?} started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{status}: {err}");
    err
}
