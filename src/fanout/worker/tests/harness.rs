//! The harness: a fake ingest thread (books, sequences, frames encoded
//! once), fake clients (ws frames → messages → books, contiguity asserted)
//! and [`H`], which drives a [`WorkerCore`] with a manual clock.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::sync::Arc;

use prost::Message;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use crate::book::SymbolId;
use crate::book::market::FeedStale;
use crate::fanout::limits::RequestLimits;
use crate::fanout::render::{Rendered, Renderer};
use crate::fanout::ring::{DataKind, Lane, ToIngest, ToWorker};
use crate::fanout::worker::delivery::stale_msg;
use crate::fanout::worker::{ConnId, Encoding, WorkerConfig, WorkerCore};
use crate::wire::json::Decimals;
use crate::wire::pb::{self, server_message::Body};
use crate::wire::{EncodedFrame, Rendering, Renderings};

pub(super) const BTC: SymbolId = SymbolId(0);
pub(super) const ETH: SymbolId = SymbolId(1);
pub(super) const NAMES: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];

// ---- the fake ingest thread: books, sequences, frames encoded once -----

#[derive(Default, Clone, PartialEq, Debug)]
pub(super) struct Levels {
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
}

#[derive(Default)]
pub(super) struct TruthBook {
    pub(super) seq: u64,
    trade_seq: u64,
    levels: Levels,
    /// Extra levels that make the snapshot frame large.
    pub(super) pad_levels: usize,
}

pub(super) struct Ingest {
    pub(super) books: Vec<TruthBook>,
    rng: u64,
}

fn msg(body: Body) -> pb::ServerMessage {
    pb::ServerMessage { body: Some(body) }
}

/// `m` in every rendering, as the market thread builds them for workers
/// with interest in each.
pub(super) fn frames(m: &pb::ServerMessage) -> Rendered {
    let mut all = Renderings::NONE;
    for r in Rendering::ALL {
        all.insert(r);
    }
    let mut f = Rendered::proto(EncodedFrame::binary(m));
    Renderer::new(256).complete(&mut f, all, Decimals::default(), Some(m));
    f
}

/// A ring data message carrying `m` in both encodings, as the ingest
/// thread sends it.
fn data(symbol: SymbolId, kind: DataKind, seq: u64, m: &pb::ServerMessage) -> ToWorker {
    ToWorker::Data {
        symbol,
        kind,
        seq,
        prev_seq: seq.saturating_sub(1),
        ingest_ts_ns: 0,
        frames: frames(m),
    }
}

impl Ingest {
    pub(super) fn new() -> Ingest {
        let mut books: Vec<TruthBook> = (0..NAMES.len()).map(|_| TruthBook::default()).collect();
        for b in &mut books {
            b.seq = 1;
            b.levels.bids.insert(100, 5);
            b.levels.asks.insert(101, 7);
        }
        Ingest {
            books,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub(super) fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn instrument(&self, id: SymbolId) -> ToWorker {
        ToWorker::Instrument {
            symbol: id,
            name: Arc::from(NAMES[id.0 as usize]),
            price_decimals: 0,
            size_decimals: 0,
            epoch: 0,
        }
    }

    fn snapshot_msg(&self, id: SymbolId) -> pb::ServerMessage {
        let b = &self.books[id.0 as usize];
        let mut bids: Vec<pb::Level> = b
            .levels
            .bids
            .iter()
            .rev()
            .map(|(&price, &size)| pb::Level { price, size })
            .collect();
        let asks = b
            .levels
            .asks
            .iter()
            .map(|(&price, &size)| pb::Level { price, size })
            .collect();
        // Padding far below the book, identical in truth (see `truth`).
        for i in 0..b.pad_levels {
            bids.push(pb::Level {
                price: -1_000_000 - i as i64,
                size: 1,
            });
        }
        msg(Body::Snapshot(pb::BookSnapshot {
            symbol: NAMES[id.0 as usize].into(),
            seq: b.seq,
            bids,
            asks,
            ..Default::default()
        }))
    }

    pub(super) fn truth(&self, id: SymbolId) -> Levels {
        let b = &self.books[id.0 as usize];
        let mut l = b.levels.clone();
        for i in 0..b.pad_levels {
            l.bids.insert(-1_000_000 - i as i64, 1);
        }
        l
    }

    pub(super) fn answer(&self, id: SymbolId) -> ToWorker {
        ToWorker::Snapshot {
            symbol: id,
            seq: self.books[id.0 as usize].seq,
            frames: Some(frames(&self.snapshot_msg(id))),
            stale: None,
        }
    }

    pub(super) fn delta(&mut self, id: SymbolId) -> ToWorker {
        let r = self.next();
        let side = if r & 1 == 0 {
            pb::Side::Bid
        } else {
            pb::Side::Ask
        };
        let price = if side == pb::Side::Bid {
            90 + (r >> 8) as i64 % 10
        } else {
            101 + (r >> 8) as i64 % 10
        };
        let size = (r >> 16) as i64 % 4;
        let b = &mut self.books[id.0 as usize];
        b.seq += 1;
        let levels = if side == pb::Side::Bid {
            &mut b.levels.bids
        } else {
            &mut b.levels.asks
        };
        if size == 0 {
            levels.remove(&price);
        } else {
            levels.insert(price, size);
        }
        let m = msg(Body::Delta(pb::BookDelta {
            symbol: NAMES[id.0 as usize].into(),
            seq: b.seq,
            updates: vec![pb::LevelUpdate {
                side: side as i32,
                price,
                size,
            }],
            ..Default::default()
        }));
        data(id, DataKind::Delta, b.seq, &m)
    }

    pub(super) fn trade(&mut self, id: SymbolId) -> ToWorker {
        let b = &mut self.books[id.0 as usize];
        b.trade_seq += 1;
        let m = msg(Body::Trade(pb::Trade {
            symbol: NAMES[id.0 as usize].into(),
            seq: b.trade_seq,
            price: 100,
            size: 1,
            trade_id: format!("t-{}", b.trade_seq),
            ..Default::default()
        }));
        data(id, DataKind::Trade, b.trade_seq, &m)
    }

    pub(super) fn replace(&mut self, id: SymbolId) -> ToWorker {
        let b = &mut self.books[id.0 as usize];
        b.seq += 1;
        b.levels = Levels::default();
        b.levels.bids.insert(50, 1);
        b.levels.asks.insert(60, 2);
        let seq = self.books[id.0 as usize].seq;
        data(id, DataKind::BookReplaced, seq, &self.snapshot_msg(id))
    }

    pub(super) fn feed_stale(&self, id: SymbolId, reason: FeedStale) -> ToWorker {
        data(
            id,
            DataKind::FeedStale(reason),
            0,
            &stale_msg(NAMES[id.0 as usize], 0, reason.into()),
        )
    }
}

// ---- the fake client: ws frames → messages → books ---------------------

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Ev {
    pub(super) ty: String,
    pub(super) symbol: String,
    pub(super) symbols: Vec<String>,
    pub(super) channels: Vec<String>,
    pub(super) instruments: usize,
    pub(super) seq: u64,
    pub(super) id: u64,
    pub(super) code: String,
    pub(super) reason: String,
    pub(super) dropped: u64,
    bids: Vec<(i64, i64)>,
    asks: Vec<(i64, i64)>,
}

fn ev_from_pb(m: pb::ServerMessage) -> Ev {
    let lv = |l: &[pb::Level]| l.iter().map(|l| (l.price, l.size)).collect::<Vec<_>>();
    match m.body.expect("a body") {
        Body::Snapshot(s) => Ev {
            ty: "snapshot".into(),
            symbol: s.symbol,
            seq: s.seq,
            bids: lv(&s.bids),
            asks: lv(&s.asks),
            ..Ev::default()
        },
        Body::Delta(d) => {
            let side = |sd: pb::Side| {
                d.updates
                    .iter()
                    .filter(|u| u.side == sd as i32)
                    .map(|u| (u.price, u.size))
                    .collect::<Vec<_>>()
            };
            Ev {
                ty: "delta".into(),
                seq: d.seq,
                bids: side(pb::Side::Bid),
                asks: side(pb::Side::Ask),
                symbol: d.symbol,
                ..Ev::default()
            }
        }
        Body::Trade(t) => Ev {
            ty: "trade".into(),
            symbol: t.symbol,
            seq: t.seq,
            ..Ev::default()
        },
        Body::Subscribed(s) => Ev {
            ty: "subscribed".into(),
            id: s.id,
            instruments: s.instruments.len(),
            symbols: s.symbols,
            channels: s.channels,
            ..Ev::default()
        },
        Body::Unsubscribed(u) => Ev {
            ty: "unsubscribed".into(),
            id: u.id,
            symbols: u.symbols,
            channels: u.channels,
            ..Ev::default()
        },
        Body::Error(e) => Ev {
            ty: "error".into(),
            id: e.id,
            code: e.code,
            ..Ev::default()
        },
        Body::Stale(s) => Ev {
            ty: "stale".into(),
            symbol: s.symbol,
            reason: s.reason,
            dropped: s.dropped,
            ..Ev::default()
        },
        Body::Authenticated(a) => Ev {
            ty: "authenticated".into(),
            id: a.id,
            symbol: a.sub,
            seq: a.expires_at_ns,
            ..Ev::default()
        },
    }
}

fn ev_from_json(text: &str) -> Ev {
    let v: Value = sonic_rs::from_str(text).expect("valid JSON");
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let strs = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let pairs = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let p = p.as_array().unwrap();
                        let num =
                            |i: usize| p.get(i).unwrap().as_str().unwrap().parse::<i64>().unwrap();
                        (num(0), num(1))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let ty = s("type");
    let authenticated = ty == "authenticated";
    Ev {
        symbol: if authenticated { s("sub") } else { s("symbol") },
        seq: if authenticated {
            n("expires_at_ns")
        } else {
            n("seq")
        },
        ty,
        symbols: strs("symbols"),
        channels: strs("channels"),
        instruments: v
            .get("instruments")
            .and_then(|x| x.as_array())
            .map_or(0, |a| a.len()),
        id: n("id"),
        code: s("code"),
        reason: s("reason"),
        dropped: n("dropped"),
        bids: pairs("bids"),
        asks: pairs("asks"),
    }
}

/// Parses complete unmasked server frames (RFC 6455 §5.2: 2/4/10-byte headers).
fn parse_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 2 {
            break;
        }
        assert_eq!(buf[0] & 0x80, 0x80, "FIN");
        assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
        let (hdr, len) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
            127 if buf.len() >= 10 => (
                10,
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            ),
            126 | 127 => break,
            l => (2, l as usize),
        };
        if buf.len() < hdr + len {
            break;
        }
        out.push((buf[0] & 0x0f, buf[hdr..hdr + len].to_vec()));
        buf.drain(..hdr + len);
    }
    out
}

pub(super) struct Client {
    pub(super) conn: ConnId,
    pub(super) json: bool,
    buf: Vec<u8>,
    pub(super) evs: Vec<Ev>,
    pub(super) books: BTreeMap<String, (u64, Levels)>,
    /// Symbols whose next book message must be a snapshot.
    need_snapshot: Vec<String>,
}

impl Client {
    fn apply(&mut self, ev: &Ev) {
        match ev.ty.as_str() {
            "snapshot" => {
                let mut l = Levels::default();
                l.bids.extend(ev.bids.iter().copied());
                l.asks.extend(ev.asks.iter().copied());
                self.books.insert(ev.symbol.clone(), (ev.seq, l));
                self.need_snapshot.retain(|s| *s != ev.symbol);
            }
            "delta" => {
                assert!(
                    !self.need_snapshot.contains(&ev.symbol),
                    "delta after Stale, before a snapshot: {ev:?}"
                );
                let (seq, l) = self
                    .books
                    .get_mut(&ev.symbol)
                    .expect("delta before any snapshot");
                assert_eq!(ev.seq, *seq + 1, "gap or repeat on {}", ev.symbol);
                *seq = ev.seq;
                for &(p, s) in &ev.bids {
                    if s == 0 {
                        l.bids.remove(&p);
                    } else {
                        l.bids.insert(p, s);
                    }
                }
                for &(p, s) in &ev.asks {
                    if s == 0 {
                        l.asks.remove(&p);
                    } else {
                        l.asks.insert(p, s);
                    }
                }
            }
            "stale" if ev.reason != "slow_consumer_trades" => {
                self.need_snapshot.push(ev.symbol.clone());
            }
            _ => {}
        }
    }

    /// The fake socket: takes at most `max_bytes` (one writev), decodes.
    pub(super) fn read(&mut self, core: &mut WorkerCore, max_bytes: usize, now_ns: u64) -> usize {
        let mut slices = [IoSlice::new(&[]); 64];
        let k = core.io_slices(self.conn, &mut slices);
        let mut took = 0;
        for s in &slices[..k] {
            let n = s.len().min(max_bytes - took);
            self.buf.extend_from_slice(&s[..n]);
            took += n;
        }
        core.handle_written(self.conn, took, now_ns);
        for (op, payload) in parse_frames(&mut self.buf) {
            let ev = match op {
                1 => ev_from_json(std::str::from_utf8(&payload).unwrap()),
                2 => ev_from_pb(pb::ServerMessage::decode(payload.as_slice()).unwrap()),
                other => Ev {
                    ty: format!("opcode-{other}"),
                    ..Ev::default()
                },
            };
            if op <= 2 {
                assert_eq!(op == 1, self.json, "frame in the connection's encoding");
            }
            self.apply(&ev);
            self.evs.push(ev);
        }
        took
    }

    pub(super) fn read_all(&mut self, core: &mut WorkerCore, now_ns: u64) {
        while self.read(core, usize::MAX / 2, now_ns) > 0 {}
    }

    pub(super) fn take(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.evs)
    }

    pub(super) fn types(&mut self) -> Vec<String> {
        self.take()
            .into_iter()
            .map(|e| {
                if e.ty == "stale" {
                    format!("stale:{}", e.reason)
                } else {
                    e.ty
                }
            })
            .collect()
    }
}

// ---- the harness --------------------------------------------------------

pub(super) struct H {
    pub(super) core: WorkerCore,
    pub(super) ing: Ingest,
    pub(super) now_ns: u64,
}

impl H {
    pub(super) fn new(cfg: WorkerConfig) -> H {
        let mut h = H {
            core: WorkerCore::new(cfg),
            ing: Ingest::new(),
            now_ns: 1_000,
        };
        for i in 0..NAMES.len() as u32 {
            let m = h.ing.instrument(SymbolId(i));
            h.ring(m);
        }
        h
    }

    pub(super) fn client(&mut self, encoding: Encoding) -> Client {
        Client {
            conn: self.core.open_conn(encoding),
            json: encoding == Encoding::Json,
            buf: Vec::new(),
            evs: Vec::new(),
            books: BTreeMap::new(),
            need_snapshot: Vec::new(),
        }
    }

    pub(super) fn ring(&mut self, m: ToWorker) {
        self.core.handle_ring(m, self.now_ns);
    }

    pub(super) fn text(&mut self, c: &Client, text: &str) {
        self.core.handle_text(c.conn, text, self.now_ns);
    }

    pub(super) fn drain_to_ingest(&mut self) -> Vec<ToIngest> {
        std::iter::from_fn(|| self.core.poll_to_ingest()).collect()
    }

    /// Answers every pending SnapshotRequest like the ingest thread; returns
    /// everything that was polled.
    pub(super) fn serve(&mut self) -> Vec<ToIngest> {
        let polled = self.drain_to_ingest();
        for m in &polled {
            if let ToIngest::SnapshotRequest { symbol } = m {
                let a = self.ing.answer(*symbol);
                self.ring(a);
            }
        }
        polled
    }

    pub(super) fn delta(&mut self, id: SymbolId) {
        let m = self.ing.delta(id);
        self.ring(m);
    }
}

/// The defaults without the request-rate limit (these tests send many
/// requests at one instant; the limit has its own test).
pub(super) fn cfg() -> WorkerConfig {
    WorkerConfig {
        requests: RequestLimits {
            requests: crate::fanout::limits::Rate::UNLIMITED,
            ..RequestLimits::default()
        },
        ..WorkerConfig::default()
    }
}

pub(super) fn sub_text(symbols: &[&str], channels: &[&str], id: u64) -> String {
    format!(
        r#"{{"op":"subscribe","symbols":{},"channels":{},"id":{id}}}"#,
        sonic_rs::to_string(symbols).unwrap(),
        sonic_rs::to_string(channels).unwrap()
    )
}

pub(super) fn unsub_text(symbols: &[&str], channels: &[&str], id: u64) -> String {
    sub_text(symbols, channels, id).replace("\"subscribe\"", "\"unsubscribe\"")
}

pub(super) fn interest(symbol: SymbolId, channel: Lane, on: bool) -> ToIngest {
    ToIngest::Interest {
        symbol,
        channel,
        on,
    }
}

pub(super) fn pick(mask: u8, all: &[&'static str]) -> Vec<&'static str> {
    all.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}
