//! The verifier against a deliberately broken stream: a tiny fake tickwire
//! (one thread, std sockets, tickwire's own codec in the server role) serves
//! one symbol and injects one fault — a skipped delta, or one corrupted
//! checksum — in protobuf or JSON. The fleet's client must report exactly
//! that violation, resubscribe, and find the resynced stream clean. A clean
//! stream from the same server yields zero violations (the control).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickwire::book::book::{OrderBook, Side};
use tickwire::wire::frame::EncodedFrame;
use tickwire::wire::json::{Decimals, render};
use tickwire::wire::pb::{self, server_message::Body};
use tickwire::ws::Opcode;
use tickwire::ws::frame::{Role, decode_frame};
use tickwire::ws::handshake::accept_key;
use tickwire_loadgen::fleet::{Fleet, FleetConfig};
use tickwire_loadgen::stats::{Tally, ViolationKind};

const SYM: &str = "BTC-USD";
const FIRST_DELTAS: u64 = 30;
const RESYNC_DELTAS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    SkipDelta,
    CorruptChecksum,
}

/// The fake server's side of one symbol.
struct Market {
    book: OrderBook,
    seq: u64,
    json: bool,
}

impl Market {
    fn frame(&self, body: Body) -> Vec<u8> {
        let msg = pb::ServerMessage { body: Some(body) };
        if self.json {
            let mut s = String::new();
            render(&msg, Decimals { price: 2, size: 4 }, &mut s);
            EncodedFrame::text(&s).as_bytes().to_vec()
        } else {
            EncodedFrame::binary(&msg).as_bytes().to_vec()
        }
    }

    fn subscribed(&self) -> Vec<u8> {
        self.frame(Body::Subscribed(pb::Subscribed {
            id: 1,
            symbols: vec![SYM.into()],
            channels: vec!["book".into()],
            instruments: vec![pb::Instrument {
                symbol: SYM.into(),
                price_decimals: 2,
                size_decimals: 4,
                epoch: 0,
            }],
            resumed: Vec::new(),
        }))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.frame(Body::Snapshot(pb::BookSnapshot {
            symbol: SYM.into(),
            seq: self.seq,
            bids: self.book.snapshot_levels(Side::Bid),
            asks: self.book.snapshot_levels(Side::Ask),
            price_decimals: 2,
            size_decimals: 4,
            exchange_ts_ns: 1,
            ingest_ts_ns: 1,
            checksum: self.book.checksum(),
            epoch: 0,
            channel: String::new(),
        }))
    }

    /// The next delta; `None` when `skip` (the seq is used, nothing is sent).
    fn delta(&mut self, k: u64, fault: Option<Fault>) -> Option<Vec<u8>> {
        let (side, price) = if k.is_multiple_of(2) {
            (Side::Bid, 9_990 - (k % 5) as i64)
        } else {
            (Side::Ask, 10_010 + (k % 5) as i64)
        };
        let size = (k % 3) as i64 * 100;
        self.book.apply(side, price, size);
        self.seq += 1;
        if fault == Some(Fault::SkipDelta) {
            return None;
        }
        let mut checksum = self.book.checksum();
        if fault == Some(Fault::CorruptChecksum) {
            checksum ^= 0x5a5a;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Some(self.frame(Body::Delta(pb::BookDelta {
            symbol: SYM.into(),
            seq: self.seq,
            updates: vec![pb::LevelUpdate {
                side: side.to_pb() as i32,
                price,
                size,
            }],
            exchange_ts_ns: now,
            ingest_ts_ns: now,
            checksum,
            channel: String::new(),
            prev_seq: 0,
        })))
    }
}

/// Reads one client frame (masked), waiting up to the deadline.
fn read_frame(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Option<(Opcode, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((f, used))) = decode_frame(Role::Server, buf) {
            buf.drain(..used);
            return Some((f.opcode, f.payload));
        }
        if Instant::now() >= deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// Serves one connection: upgrade, the faulty stream, then a clean resync
/// for every subscribe request. Returns the subscribe requests seen.
fn serve(listener: TcpListener, json: bool, fault: Fault) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        listener.set_nonblocking(true).unwrap();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no client: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // The upgrade.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(Instant::now() < deadline, "no upgrade request");
            match s.read(&mut chunk) {
                Ok(0) => panic!("client left"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .trim()
            .to_owned();
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(&key)
        );
        if head.contains("tickwire.v1.json") {
            resp.push_str("Sec-WebSocket-Protocol: tickwire.v1.json\r\n");
        }
        resp.push_str("\r\n");
        s.write_all(resp.as_bytes()).unwrap();

        let mut m = Market {
            book: OrderBook::new(),
            seq: 41,
            json,
        };
        for i in 1..=10 {
            m.book.apply(Side::Bid, 10_000 - i, 100 * i);
            m.book.apply(Side::Ask, 10_000 + i, 100 * i);
        }
        let mut subscribes = 0;
        let mut k = 0u64;
        while let Some((op, payload)) = read_frame(&mut s, &mut buf, deadline) {
            match op {
                Opcode::Text if payload.starts_with(br#"{"op":"subscribe""#) => {
                    subscribes += 1;
                    let mut out = m.subscribed();
                    out.extend(m.snapshot());
                    let n = if subscribes == 1 {
                        FIRST_DELTAS
                    } else {
                        RESYNC_DELTAS
                    };
                    for i in 0..n {
                        k += 1;
                        let inject = (subscribes == 1 && i == n / 2).then_some(fault);
                        if let Some(f) = m.delta(k, inject) {
                            out.extend(f);
                        }
                    }
                    s.write_all(&out).unwrap();
                }
                Opcode::Close => break,
                _ => {}
            }
        }
        subscribes
    })
}

/// One client of the fleet against the fake server until it has seen
/// `deltas` deltas (bounded); returns its tally and the subscribes the
/// server saw.
fn run(json: bool, fault: Fault, deltas: u64) -> (Tally, usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = serve(listener, json, fault);
    let fleet = Fleet::start(
        FleetConfig {
            ws: addr,
            threads: 1,
            source_ips: 2,
            symbols: vec![SYM.into()],
            symbols_per_client: 1,
            trades_fraction: 0.0,
            json_fraction: if json { 1.0 } else { 0.0 },
            ..FleetConfig::default()
        },
        1,
    )
    .unwrap();
    let mut t = Tally::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.deltas < deltas && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fleet.take(&mut t);
    }
    // Let anything unexpected arrive, then stop (the client sends a close).
    std::thread::sleep(Duration::from_millis(100));
    fleet.take(&mut t);
    fleet.stop();
    let subscribes = server.join().expect("server thread");
    (t, subscribes)
}

fn kinds(t: &Tally) -> Vec<(ViolationKind, u64)> {
    t.violations.iter().map(|(k, v)| (*k, *v)).collect()
}

#[test]
fn a_clean_stream_has_zero_violations() {
    for json in [false, true] {
        let (t, subs) = run(json, Fault::None, FIRST_DELTAS);
        assert_eq!(kinds(&t), vec![], "json {json}: {:?}", t.samples);
        assert_eq!((t.snapshots, t.deltas, subs), (1, FIRST_DELTAS, 1));
        assert_eq!(t.latency.len(), FIRST_DELTAS);
    }
}

#[test]
fn a_skipped_delta_is_reported_then_resynced() {
    for json in [false, true] {
        let (t, subs) = run(json, Fault::SkipDelta, FIRST_DELTAS - 1 + RESYNC_DELTAS);
        assert_eq!(
            kinds(&t),
            vec![(ViolationKind::SeqGap, 1)],
            "json {json}: {:?}",
            t.samples
        );
        assert!(
            t.samples[0].contains("BTC-USD: delta seq"),
            "{:?}",
            t.samples
        );
        // The client asked for a resync; the fresh snapshot and the deltas after it are clean.
        assert_eq!((t.resubscribes, subs, t.snapshots), (1, 2, 2));
        assert_eq!(t.deltas, FIRST_DELTAS - 1 + RESYNC_DELTAS);
    }
}

#[test]
fn a_corrupted_checksum_is_reported_then_resynced() {
    for json in [false, true] {
        let (t, subs) = run(json, Fault::CorruptChecksum, FIRST_DELTAS + RESYNC_DELTAS);
        assert_eq!(
            kinds(&t),
            vec![(ViolationKind::Checksum, 1)],
            "json {json}: {:?}",
            t.samples
        );
        assert!(t.samples[0].contains("checksum"), "{:?}", t.samples);
        assert_eq!((t.resubscribes, subs, t.snapshots), (1, 2, 2));
    }
}
