//! The per-connection verifier: checks every message a client receives
//! against the wire contract (PROTOCOL §4–§6) and counts what breaks it.
//!
//! For each subscribed symbol it rebuilds the book: a `Subscribed` first, then
//! a `BookSnapshot` (its checksum must match its own levels), then deltas with
//! exactly `seq + 1`, each leaving a book whose checksum (tickwire's own
//! [`OrderBook`] and §5 checksum) equals the delta's. A `Stale` must be
//! followed by a snapshot before any delta; trades have their own contiguous
//! sequence, which may restart after a `Stale`.
//!
//! One incident counts once: after a violation the symbol is *desynced* (its
//! deltas are not judged) and the verifier asks its connection to resubscribe,
//! as a real client would; the fresh snapshot resumes checking.
//!
//! Pure: bytes and `now` in, counts out ([`Tally`]). Owned by the client
//! thread that owns the connection; never does I/O, never panics on peer bytes.

use std::borrow::Cow;

use prost::Message;
use serde::Deserialize;
use tickwire::book::book::{OrderBook, Side};
use tickwire::book::checksum::CHECKSUM_DEPTH;
use tickwire::wire::StaleReason;
use tickwire::wire::decimal::{clamp_decimals, parse_price, parse_size};
use tickwire::wire::pb::{self, server_message::Body};

use crate::pbscan::{self, RawUpdate, ScanError, Scanned};
use crate::stats::{Tally, ViolationKind, stale_index};

/// A channel's subscription state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// Not asked for.
    No,
    /// Asked for; `Subscribed` not yet seen: nothing may arrive for it.
    Requested,
    Active,
    /// `Unsubscribed` seen: nothing more may arrive.
    Ended,
}

/// One symbol as this client holds it.
#[derive(Debug)]
struct SymState {
    name: Box<str>,
    /// [`name_hash`] of `name`.
    name_hash: u64,
    /// `(price, size)` decimals from `Subscribed` (to read JSON deltas).
    decimals: Option<(u32, u32)>,
    book_sub: Sub,
    trades_sub: Sub,
    book: OrderBook,
    /// Seq of the book held; 0 until the first snapshot.
    seq: u64,
    /// The checksum of `book` (kept: most deltas leave the top levels alone).
    checksum: u32,
    /// A `Stale` arrived: the next book message must be a snapshot.
    stale: bool,
    /// After a violation: deltas are not judged until the next snapshot.
    desynced: bool,
    /// A resubscription is queued or in flight.
    resync_pending: bool,
    /// Last trade seq; 0 when unknown (start, or after a `Stale`).
    last_trade_seq: u64,
}

/// The verifier of one connection; see the module doc.
#[derive(Debug, Default)]
pub struct Verifier {
    syms: Vec<SymState>,
    /// Indices into `syms` to resubscribe.
    resync: Vec<usize>,
}

/// Most bytes the checksum covers: the top levels of both sides, 16 bytes each.
const TOP_BYTES: usize = 2 * CHECKSUM_DEPTH * 16;
const MEMO_SLOTS: usize = 1024;

#[derive(Clone)]
struct MemoSlot {
    key: u64,
    len: u16,
    crc: u32,
    bytes: [u8; TOP_BYTES],
}

/// A per-thread memo of checksum computations, shared by the connections of
/// one client thread.
///
/// Every client builds the bytes its *own* book gives (the top levels, as
/// PROTOCOL §5 lays them out); only the CRC of bytes already hashed is
/// reused, after comparing the bytes in full. Clients of one symbol hold the
/// same book at the same seq, so in a fan-out one CRC serves them all.
///
/// NB: a direct-mapped cache keyed by (symbol, seq); `examples/verify_cost.rs`
/// (N clients of one symbol) shows the CRC was the largest single cost of a
/// client thread.
pub struct ChecksumMemo {
    slots: Vec<MemoSlot>,
    pub hits: u64,
    pub misses: u64,
}

impl Default for ChecksumMemo {
    fn default() -> ChecksumMemo {
        ChecksumMemo::new()
    }
}

impl std::fmt::Debug for ChecksumMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChecksumMemo {{ hits: {}, misses: {} }}",
            self.hits, self.misses
        )
    }
}

impl ChecksumMemo {
    pub fn new() -> ChecksumMemo {
        ChecksumMemo {
            slots: vec![
                MemoSlot {
                    key: u64::MAX,
                    len: 0,
                    crc: 0,
                    bytes: [0; TOP_BYTES],
                };
                MEMO_SLOTS
            ],
            hits: 0,
            misses: 0,
        }
    }

    /// The checksum (PROTOCOL §5) of `book`; `key` names the book's state
    /// (symbol and seq) so that clients holding the same state meet.
    pub fn checksum(&mut self, key: u64, book: &OrderBook) -> u32 {
        let mut buf = [0u8; TOP_BYTES];
        let mut n = 0;
        for side in [Side::Bid, Side::Ask] {
            for l in book.top(side, CHECKSUM_DEPTH) {
                buf[n..n + 8].copy_from_slice(&l.price.to_le_bytes());
                buf[n + 8..n + 16].copy_from_slice(&l.size.to_le_bytes());
                n += 16;
            }
        }
        let slot = &mut self.slots[(key as usize) % MEMO_SLOTS];
        if slot.key == key && usize::from(slot.len) == n && slot.bytes[..n] == buf[..n] {
            self.hits += 1;
            return slot.crc;
        }
        self.misses += 1;
        let crc = crc32fast::hash(&buf[..n]);
        *slot = MemoSlot {
            key,
            len: n as u16,
            crc,
            bytes: buf,
        };
        crc
    }
}

/// FNV-1a of a symbol name: the symbol part of a memo key.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A JSON server message (PROTOCOL §6): only the fields verification reads.
#[derive(Deserialize)]
struct JsonMsg<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    symbol: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    bids: Option<Vec<(&'a str, &'a str)>>,
    #[serde(default, borrow)]
    asks: Option<Vec<(&'a str, &'a str)>>,
    #[serde(default)]
    exchange_ts_ns: Option<u64>,
    #[serde(default)]
    checksum: Option<u32>,
    #[serde(default)]
    price_decimals: Option<u32>,
    #[serde(default)]
    size_decimals: Option<u32>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    symbols: Option<Vec<&'a str>>,
    #[serde(default, borrow)]
    channels: Option<Vec<&'a str>>,
    #[serde(default, borrow)]
    instruments: Option<Vec<JsonInstrument<'a>>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct JsonInstrument<'a> {
    #[serde(borrow)]
    symbol: &'a str,
    price_decimals: u32,
    size_decimals: u32,
}

fn lossy(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// Declares a subscription request about to be sent.
    pub fn expect(&mut self, symbols: &[&str], book: bool, trades: bool) {
        for s in symbols {
            let i = match self.find(s.as_bytes()) {
                Some(i) => i,
                None => {
                    self.syms.push(SymState {
                        name: (*s).into(),
                        name_hash: name_hash(s),
                        decimals: None,
                        book_sub: Sub::No,
                        trades_sub: Sub::No,
                        book: OrderBook::new(),
                        seq: 0,
                        checksum: 0,
                        stale: false,
                        desynced: false,
                        resync_pending: false,
                        last_trade_seq: 0,
                    });
                    self.syms.len() - 1
                }
            };
            let st = &mut self.syms[i];
            if book && st.book_sub != Sub::Active {
                st.book_sub = Sub::Requested;
            }
            if trades && st.trades_sub != Sub::Active {
                st.trades_sub = Sub::Requested;
            }
        }
    }

    /// Symbols to resubscribe (book channel) to resync them; each is returned
    /// once per incident.
    pub fn take_resyncs(&mut self, mut f: impl FnMut(&str)) {
        for i in self.resync.drain(..) {
            f(&self.syms[i].name);
        }
    }

    /// `true` when some symbol waits for a resync.
    pub fn wants_resync(&self) -> bool {
        !self.resync.is_empty()
    }

    /// Linear scan: a client holds a handful of symbols.
    fn find(&self, name: &[u8]) -> Option<usize> {
        self.syms.iter().position(|s| s.name.as_bytes() == name)
    }

    fn desync(&mut self, i: usize) {
        let s = &mut self.syms[i];
        s.desynced = true;
        s.stale = false;
        if !s.resync_pending {
            s.resync_pending = true;
            self.resync.push(i);
        }
    }

    /// A binary frame's payload: one protobuf `ServerMessage`.
    pub fn handle_binary(
        &mut self,
        payload: &[u8],
        now_ns: u64,
        t: &mut Tally,
        memo: &mut ChecksumMemo,
    ) {
        t.messages += 1;
        match pbscan::scan(payload) {
            Ok(Scanned::Delta(d)) => self.on_delta(
                d.symbol,
                d.seq,
                d.exchange_ts_ns,
                d.checksum,
                d.updates(),
                now_ns,
                t,
                memo,
            ),
            Ok(Scanned::Trade(tr)) => {
                self.on_trade(tr.symbol, tr.seq, tr.exchange_ts_ns, now_ns, t);
            }
            Ok(Scanned::Other(_)) => match pb::ServerMessage::decode(payload) {
                Ok(pb::ServerMessage { body: Some(body) }) => self.on_other(body, t),
                other => t.violation(ViolationKind::Undecodable, || format!("{other:?}")),
            },
            Err(e) => t.violation(ViolationKind::Undecodable, || e.to_string()),
        }
    }

    /// A text frame's payload: one JSON message.
    pub fn handle_text(
        &mut self,
        text: &[u8],
        now_ns: u64,
        t: &mut Tally,
        memo: &mut ChecksumMemo,
    ) {
        t.messages += 1;
        let m: JsonMsg<'_> = match sonic_rs::from_slice(text) {
            Ok(m) => m,
            Err(e) => {
                return t.violation(ViolationKind::Undecodable, || {
                    format!("{e}: {}", lossy(&text[..text.len().min(200)]))
                });
            }
        };
        if let Err(why) = self.on_json(m, now_ns, t, memo) {
            t.violation(ViolationKind::Undecodable, || {
                format!("{why}: {}", lossy(&text[..text.len().min(200)]))
            });
        }
    }

    fn on_json(
        &mut self,
        m: JsonMsg<'_>,
        now_ns: u64,
        t: &mut Tally,
        memo: &mut ChecksumMemo,
    ) -> Result<(), String> {
        let need = |what: &str| format!("missing or invalid \"{what}\"");
        match m.ty {
            "delta" => {
                let symbol = m.symbol.ok_or_else(|| need("symbol"))?;
                let Some((pd, sd)) = self
                    .find(symbol.as_bytes())
                    .and_then(|i| self.syms[i].decimals)
                else {
                    // Without decimals the prices cannot be read; judged as
                    // a message for a symbol never acknowledged.
                    t.deltas += 1;
                    t.violation(ViolationKind::NotSubscribed, || {
                        format!("{symbol}: delta before Subscribed gave its decimals")
                    });
                    return Ok(());
                };
                let (bids, asks) = (
                    m.bids.ok_or_else(|| need("bids"))?,
                    m.asks.ok_or_else(|| need("asks"))?,
                );
                let side = |side: pb::Side| {
                    move |(p, s): (&str, &str)| match (parse_price(p, pd), parse_size(s, sd)) {
                        (Ok(p), Ok(s)) => Ok((side as i32, p, s)),
                        _ => Err(ScanError::Truncated),
                    }
                };
                let updates = bids
                    .into_iter()
                    .map(side(pb::Side::Bid))
                    .chain(asks.into_iter().map(side(pb::Side::Ask)));
                self.on_delta(
                    symbol.as_bytes(),
                    m.seq.ok_or_else(|| need("seq"))?,
                    m.exchange_ts_ns.ok_or_else(|| need("exchange_ts_ns"))?,
                    m.checksum.ok_or_else(|| need("checksum"))?,
                    updates,
                    now_ns,
                    t,
                    memo,
                );
            }
            "trade" => self.on_trade(
                m.symbol.ok_or_else(|| need("symbol"))?.as_bytes(),
                m.seq.ok_or_else(|| need("seq"))?,
                m.exchange_ts_ns.ok_or_else(|| need("exchange_ts_ns"))?,
                now_ns,
                t,
            ),
            "snapshot" => {
                let (pd, sd) = (
                    m.price_decimals.ok_or_else(|| need("price_decimals"))?,
                    m.size_decimals.ok_or_else(|| need("size_decimals"))?,
                );
                let levels = |pairs: Vec<(&str, &str)>| -> Result<Vec<pb::Level>, String> {
                    pairs
                        .into_iter()
                        .map(|(p, s)| {
                            Ok(pb::Level {
                                price: parse_price(p, pd).map_err(|e| format!("price {p}: {e}"))?,
                                size: parse_size(s, sd).map_err(|e| format!("size {s}: {e}"))?,
                            })
                        })
                        .collect()
                };
                let s = pb::BookSnapshot {
                    symbol: m.symbol.ok_or_else(|| need("symbol"))?.to_owned(),
                    seq: m.seq.ok_or_else(|| need("seq"))?,
                    bids: levels(m.bids.ok_or_else(|| need("bids"))?)?,
                    asks: levels(m.asks.ok_or_else(|| need("asks"))?)?,
                    price_decimals: pd as i32,
                    size_decimals: sd as i32,
                    exchange_ts_ns: m.exchange_ts_ns.ok_or_else(|| need("exchange_ts_ns"))?,
                    ingest_ts_ns: 0,
                    checksum: m.checksum.ok_or_else(|| need("checksum"))?,
                    epoch: 0,
                    channel: String::new(),
                };
                self.on_other(Body::Snapshot(s), t);
            }
            "subscribed" | "unsubscribed" => {
                let symbols = m.symbols.ok_or_else(|| need("symbols"))?;
                let channels = m.channels.ok_or_else(|| need("channels"))?;
                let strs = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
                let body = if m.ty == "subscribed" {
                    Body::Subscribed(pb::Subscribed {
                        id: 0,
                        symbols: strs(symbols),
                        channels: strs(channels),
                        instruments: m
                            .instruments
                            .ok_or_else(|| need("instruments"))?
                            .into_iter()
                            .map(|i| pb::Instrument {
                                symbol: i.symbol.to_owned(),
                                price_decimals: i.price_decimals as i32,
                                size_decimals: i.size_decimals as i32,
                                epoch: 0,
                            })
                            .collect(),
                        resumed: Vec::new(),
                    })
                } else {
                    Body::Unsubscribed(pb::Unsubscribed {
                        id: 0,
                        symbols: strs(symbols),
                        channels: strs(channels),
                    })
                };
                self.on_other(body, t);
            }
            "stale" => self.on_other(
                Body::Stale(pb::Stale {
                    symbol: m.symbol.ok_or_else(|| need("symbol"))?.to_owned(),
                    dropped: 0,
                    reason: m.reason.ok_or_else(|| need("reason"))?.into_owned(),
                }),
                t,
            ),
            "error" => self.on_other(
                Body::Error(pb::Error {
                    id: 0,
                    code: m.code.unwrap_or_default().into_owned(),
                    message: m.message.unwrap_or_default().into_owned(),
                }),
                t,
            ),
            other => return Err(format!("unknown type {other:?}")),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_delta(
        &mut self,
        symbol: &[u8],
        seq: u64,
        exchange_ts_ns: u64,
        checksum: u32,
        updates: impl Iterator<Item = Result<RawUpdate, ScanError>>,
        now_ns: u64,
        t: &mut Tally,
        memo: &mut ChecksumMemo,
    ) {
        t.deltas += 1;
        t.latency_ns(now_ns.saturating_sub(exchange_ts_ns));
        let Some(i) = self.find(symbol) else {
            return t.violation(ViolationKind::NotSubscribed, || {
                format!("delta for {} (seq {seq})", lossy(symbol))
            });
        };
        let s = &mut self.syms[i];
        if s.book_sub != Sub::Active {
            return t.violation(ViolationKind::NotSubscribed, || {
                format!(
                    "{}: delta {seq} with the book channel {:?}",
                    s.name, s.book_sub
                )
            });
        }
        if s.desynced {
            return;
        }
        if s.seq == 0 {
            t.violation(ViolationKind::DeltaBeforeSnapshot, || {
                format!("{}: delta {seq} before any snapshot", s.name)
            });
            return self.desync(i);
        }
        if s.stale {
            t.violation(ViolationKind::DeltaWhileStale, || {
                format!("{}: delta {seq} after Stale, before the snapshot", s.name)
            });
            return self.desync(i);
        }
        if seq != s.seq.wrapping_add(1) {
            let (kind, last) = (
                if seq <= s.seq {
                    ViolationKind::SeqRepeat
                } else {
                    ViolationKind::SeqGap
                },
                s.seq,
            );
            t.violation(kind, || format!("{}: delta seq {seq} after {last}", s.name));
            return self.desync(i);
        }
        // Whether an update reached the levels the checksum covers: if none
        // did, the checksum is the previous one and is not recomputed.
        let mut top_changed = false;
        for u in updates {
            let (side, price, size) = match u {
                Ok(u) => u,
                Err(e) => {
                    t.violation(ViolationKind::Undecodable, || {
                        format!("{}: delta {seq}: level update {e}", s.name)
                    });
                    return self.desync(i);
                }
            };
            let Some(side) = Side::from_pb(side) else {
                t.violation(ViolationKind::BadSide, || {
                    format!("{}: delta {seq}: side {side}", s.name)
                });
                return self.desync(i);
            };
            // A level worse than the last checksummed one, before the change,
            // cannot enter, leave or alter the top (inserts, updates and
            // removals alike).
            top_changed = top_changed
                || s.book
                    .nth(side, CHECKSUM_DEPTH - 1)
                    .is_none_or(|last| !side.is_better(last.price, price));
            s.book.apply(side, price, size);
        }
        s.seq = seq;
        if top_changed {
            // Consecutive seqs of a symbol take consecutive slots.
            let key = s.name_hash.wrapping_add(seq);
            s.checksum = memo.checksum(key, &s.book);
        }
        let got = s.checksum;
        if got != checksum {
            t.violation(ViolationKind::Checksum, || {
                format!(
                    "{}: delta {seq} says checksum {checksum}, the rebuilt book has {got}",
                    s.name
                )
            });
            self.desync(i);
        }
    }

    fn on_trade(
        &mut self,
        symbol: &[u8],
        seq: u64,
        exchange_ts_ns: u64,
        now_ns: u64,
        t: &mut Tally,
    ) {
        t.trades += 1;
        t.latency_ns(now_ns.saturating_sub(exchange_ts_ns));
        let Some(s) = self.find(symbol).map(|i| &mut self.syms[i]) else {
            return t.violation(ViolationKind::NotSubscribed, || {
                format!("trade for {} (seq {seq})", lossy(symbol))
            });
        };
        if s.trades_sub != Sub::Active {
            return t.violation(ViolationKind::NotSubscribed, || {
                format!(
                    "{}: trade {seq} with the trades channel {:?}",
                    s.name, s.trades_sub
                )
            });
        }
        if s.last_trade_seq != 0 && seq != s.last_trade_seq.wrapping_add(1) {
            let last = s.last_trade_seq;
            t.violation(ViolationKind::TradeSeq, || {
                format!("{}: trade seq {seq} after {last}", s.name)
            });
        }
        s.last_trade_seq = seq;
    }

    fn on_other(&mut self, body: Body, t: &mut Tally) {
        match body {
            Body::Snapshot(snap) => self.on_snapshot(snap, t),
            Body::Delta(_) | Body::Trade(_) => {
                // `pbscan` reads these; prost is never asked for them.
                t.violation(ViolationKind::Undecodable, || "delta via prost".into());
            }
            Body::Subscribed(s) => {
                t.control += 1;
                for sym in &s.symbols {
                    let Some(i) = self.find(sym.as_bytes()) else {
                        t.violation(ViolationKind::NotSubscribed, || {
                            format!("Subscribed names {sym}, never requested")
                        });
                        continue;
                    };
                    let st = &mut self.syms[i];
                    for ch in &s.channels {
                        let sub = match ch.as_str() {
                            "book" => &mut st.book_sub,
                            "trades" => &mut st.trades_sub,
                            _ => continue,
                        };
                        if *sub == Sub::No {
                            t.violation(ViolationKind::NotSubscribed, || {
                                format!("Subscribed names {sym}/{ch}, never requested")
                            });
                        } else {
                            *sub = Sub::Active;
                        }
                    }
                }
                for ins in &s.instruments {
                    if let Some(i) = self.find(ins.symbol.as_bytes()) {
                        self.syms[i].decimals = Some((
                            clamp_decimals(ins.price_decimals),
                            clamp_decimals(ins.size_decimals),
                        ));
                    }
                }
            }
            Body::Unsubscribed(u) => {
                t.control += 1;
                for sym in &u.symbols {
                    if let Some(i) = self.find(sym.as_bytes()) {
                        let st = &mut self.syms[i];
                        for ch in &u.channels {
                            match ch.as_str() {
                                "book" => st.book_sub = Sub::Ended,
                                "trades" => st.trades_sub = Sub::Ended,
                                _ => {}
                            }
                        }
                    }
                }
            }
            Body::Error(e) => {
                t.control += 1;
                t.server_errors += 1;
                if t.samples.len() < crate::stats::MAX_SAMPLES {
                    t.samples.push(format!(
                        "server error (not a violation): {} {}",
                        e.code, e.message
                    ));
                }
            }
            Body::Stale(st) => {
                t.control += 1;
                t.stale[stale_index(st.reason.as_bytes())] += 1;
                let Some(i) = self.find(st.symbol.as_bytes()) else {
                    return t.violation(ViolationKind::NotSubscribed, || {
                        format!("Stale for {}", st.symbol)
                    });
                };
                let s = &mut self.syms[i];
                if s.book_sub == Sub::No
                    && s.trades_sub == Sub::No
                    && st.reason != StaleReason::SlowConsumerTrades.as_str()
                {
                    t.violation(ViolationKind::NotSubscribed, || {
                        format!("Stale for {}", st.symbol)
                    });
                }
                // Trades may jump after any Stale; books wait for a snapshot.
                s.last_trade_seq = 0;
                if st.reason != StaleReason::SlowConsumerTrades.as_str()
                    && s.book_sub == Sub::Active
                    && !s.desynced
                {
                    s.stale = true;
                }
            }
            // PROTOCOL §8: the answer to an `auth`, a control message.
            Body::Authenticated(_) => t.control += 1,
        }
    }

    fn on_snapshot(&mut self, snap: pb::BookSnapshot, t: &mut Tally) {
        t.snapshots += 1;
        let Some(i) = self.find(snap.symbol.as_bytes()) else {
            return t.violation(ViolationKind::NotSubscribed, || {
                format!("snapshot for {} (seq {})", snap.symbol, snap.seq)
            });
        };
        let s = &mut self.syms[i];
        if s.book_sub != Sub::Active {
            return t.violation(ViolationKind::NotSubscribed, || {
                format!(
                    "{}: snapshot with the book channel {:?}",
                    s.name, s.book_sub
                )
            });
        }
        if snap.seq < s.seq {
            let last = s.seq;
            t.violation(ViolationKind::SnapshotBackwards, || {
                format!("{}: snapshot seq {} after {last}", s.name, snap.seq)
            });
        }
        s.resync_pending = false;
        if let Err(e) = s.book.replace_from_levels(&snap.bids, &snap.asks) {
            s.desynced = true;
            return t.violation(ViolationKind::SnapshotLevels, || {
                format!("{}: snapshot {}: {e}", s.name, snap.seq)
            });
        }
        let got = s.book.checksum();
        s.checksum = got;
        if got != snap.checksum {
            s.desynced = true;
            return t.violation(ViolationKind::SnapshotChecksum, || {
                format!(
                    "{}: snapshot {} says checksum {}, its levels give {got}",
                    s.name, snap.seq, snap.checksum
                )
            });
        }
        s.seq = snap.seq;
        s.stale = false;
        s.desynced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickwire::wire::json::{Decimals, render};

    const SYM: &str = "BTC-USD";

    /// A stream of server messages that is correct by construction: a book
    /// kept beside it gives each delta its real checksum.
    struct Stream {
        book: OrderBook,
        seq: u64,
        trade_seq: u64,
    }

    impl Stream {
        fn new() -> Stream {
            let mut book = OrderBook::new();
            for i in 1..=5 {
                book.apply(Side::Bid, 100 - i, 10 * i);
                book.apply(Side::Ask, 100 + i, 10 * i);
            }
            Stream {
                book,
                seq: 7,
                trade_seq: 0,
            }
        }

        fn subscribed(&self, channels: &[&str]) -> Body {
            Body::Subscribed(pb::Subscribed {
                id: 1,
                symbols: vec![SYM.into()],
                channels: channels.iter().map(|c| c.to_string()).collect(),
                instruments: vec![pb::Instrument {
                    symbol: SYM.into(),
                    price_decimals: 2,
                    size_decimals: 4,
                    epoch: 0,
                }],
                resumed: Vec::new(),
            })
        }

        fn snapshot(&self) -> Body {
            Body::Snapshot(pb::BookSnapshot {
                symbol: SYM.into(),
                seq: self.seq,
                bids: self.book.snapshot_levels(Side::Bid),
                asks: self.book.snapshot_levels(Side::Ask),
                price_decimals: 2,
                size_decimals: 4,
                exchange_ts_ns: 1,
                ingest_ts_ns: 2,
                checksum: self.book.checksum(),
                epoch: 0,
                channel: String::new(),
            })
        }

        fn delta(&mut self, k: i64) -> Body {
            let updates = vec![
                pb::LevelUpdate {
                    side: 1,
                    price: 100 - 1 - (k % 3),
                    size: k % 4,
                },
                pb::LevelUpdate {
                    side: 2,
                    price: 100 + 2,
                    size: 5 + k,
                },
            ];
            for u in &updates {
                self.book
                    .apply(Side::from_pb(u.side).unwrap(), u.price, u.size);
            }
            self.seq += 1;
            Body::Delta(pb::BookDelta {
                symbol: SYM.into(),
                seq: self.seq,
                updates,
                exchange_ts_ns: 1_000,
                ingest_ts_ns: 2_000,
                checksum: self.book.checksum(),
                channel: String::new(),
                prev_seq: 0,
            })
        }

        fn trade(&mut self) -> Body {
            self.trade_seq += 1;
            Body::Trade(pb::Trade {
                symbol: SYM.into(),
                seq: self.trade_seq,
                price: 101,
                size: 1,
                aggressor: 1,
                exchange_ts_ns: 1_000,
                ingest_ts_ns: 2_000,
                trade_id: "t".into(),
            })
        }
    }

    fn stale(reason: &str) -> Body {
        Body::Stale(pb::Stale {
            symbol: SYM.into(),
            dropped: 3,
            reason: reason.into(),
        })
    }

    /// Feeds `bodies` to a fresh verifier in both encodings; returns the
    /// tallies (proto, JSON), which must agree.
    fn run(channels: &[&str], bodies: &[Body]) -> (Tally, Tally) {
        let mut out = Vec::new();
        for json in [false, true] {
            let mut v = Verifier::new();
            v.expect(
                &[SYM],
                channels.contains(&"book"),
                channels.contains(&"trades"),
            );
            let mut t = Tally::new();
            let mut memo = ChecksumMemo::new();
            for b in bodies {
                let msg = pb::ServerMessage {
                    body: Some(b.clone()),
                };
                if json {
                    let mut s = String::new();
                    render(&msg, Decimals { price: 2, size: 4 }, &mut s);
                    v.handle_text(s.as_bytes(), 5_000_000, &mut t, &mut memo);
                } else {
                    v.handle_binary(&msg.encode_to_vec(), 5_000_000, &mut t, &mut memo);
                }
            }
            out.push(t);
        }
        let json = out.pop().unwrap();
        let proto = out.pop().unwrap();
        assert_eq!(proto.violations, json.violations, "{:?}", json.samples);
        assert_eq!(
            (proto.deltas, proto.trades, proto.snapshots, proto.control),
            (json.deltas, json.trades, json.snapshots, json.control)
        );
        (proto, json)
    }

    fn kinds(t: &Tally) -> Vec<(ViolationKind, u64)> {
        t.violations.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn a_correct_stream_has_no_violations() {
        let mut s = Stream::new();
        let mut bodies = vec![s.subscribed(&["book", "trades"]), s.snapshot()];
        for k in 0..50 {
            bodies.push(s.delta(k));
            if k % 7 == 0 {
                bodies.push(s.trade());
            }
        }
        let (t, _) = run(&["book", "trades"], &bodies);
        assert_eq!(kinds(&t), vec![], "{:?}", t.samples);
        assert_eq!((t.deltas, t.trades, t.snapshots), (50, 8, 1));
        assert_eq!(t.latency.len(), 58);
        assert_eq!(t.latency.max(), t.latency.highest_equivalent(4_999_000));
    }

    #[test]
    fn a_skipped_delta_is_one_gap_then_a_resync_recovers() {
        let mut s = Stream::new();
        let mut bodies = vec![s.subscribed(&["book"]), s.snapshot(), s.delta(1)];
        let _skipped = s.delta(2);
        for k in 3..10 {
            bodies.push(s.delta(k));
        }
        // The resubscription's answer, then checking resumes.
        bodies.push(s.subscribed(&["book"]));
        bodies.push(s.snapshot());
        bodies.push(s.delta(11));
        let (t, _) = run(&["book"], &bodies);
        assert_eq!(kinds(&t), vec![(ViolationKind::SeqGap, 1)]);
        assert!(t.samples[0].contains("after 8"), "{:?}", t.samples);

        let mut v = Verifier::new();
        v.expect(&[SYM], true, false);
        let mut t = Tally::new();
        let mut s = Stream::new();
        for b in [s.subscribed(&["book"]), s.snapshot(), s.delta(1)] {
            v.on_other_or_data(b, &mut t);
        }
        let _ = s.delta(2);
        v.on_other_or_data(s.delta(3), &mut t);
        let mut asked = Vec::new();
        v.take_resyncs(|sym| asked.push(sym.to_owned()));
        assert_eq!(asked, vec![SYM]);
        v.take_resyncs(|_| panic!("asked once"));
    }

    #[test]
    fn a_corrupted_checksum_is_one_violation() {
        let mut s = Stream::new();
        let mut bodies = vec![s.subscribed(&["book"]), s.snapshot()];
        for k in 0..10 {
            let mut d = s.delta(k);
            if k == 4
                && let Body::Delta(d) = &mut d
            {
                d.checksum ^= 1;
            }
            bodies.push(d);
        }
        let (t, _) = run(&["book"], &bodies);
        assert_eq!(kinds(&t), vec![(ViolationKind::Checksum, 1)]);
    }

    #[test]
    fn deep_updates_keep_the_checksum_and_a_corrupted_one_is_still_caught() {
        let mut s = Stream::new();
        for i in 6..=15 {
            s.book.apply(Side::Bid, 100 - i, 7);
        }
        let mut bodies = vec![s.subscribed(&["book"]), s.snapshot()];
        let deep = |s: &mut Stream, price: i64, size: i64, corrupt: bool| {
            s.book.apply(Side::Bid, price, size);
            s.seq += 1;
            Body::Delta(pb::BookDelta {
                symbol: SYM.into(),
                seq: s.seq,
                updates: vec![pb::LevelUpdate {
                    side: 1,
                    price,
                    size,
                }],
                exchange_ts_ns: 1,
                ingest_ts_ns: 1,
                checksum: s.book.checksum() ^ u32::from(corrupt),
                channel: String::new(),
                prev_seq: 0,
            })
        };
        // Level 12 updated, level 20 inserted then removed, level 11 removed:
        // the top ten are untouched.
        bodies.push(deep(&mut s, 88, 3, false));
        bodies.push(deep(&mut s, 80, 3, false));
        bodies.push(deep(&mut s, 80, 0, false));
        bodies.push(deep(&mut s, 89, 0, false));
        // Level 10 removed: level 11 moves up, the checksum changes.
        bodies.push(deep(&mut s, 90, 0, false));
        bodies.push(deep(&mut s, 85, 9, true));
        let (t, _) = run(&["book"], &bodies);
        assert_eq!(
            kinds(&t),
            vec![(ViolationKind::Checksum, 1)],
            "{:?}",
            t.samples
        );
        assert!(t.samples[0].contains("delta 13"), "{:?}", t.samples);
    }

    #[test]
    fn stale_then_snapshot_is_a_clean_resync_and_a_delta_before_it_is_not() {
        let mut s = Stream::new();
        let mut bodies = vec![s.subscribed(&["book", "trades"]), s.snapshot(), s.delta(0)];
        bodies.push(s.trade());
        bodies.push(stale("slow_consumer"));
        let _dropped = (s.delta(1), s.delta(2), s.trade());
        bodies.push(s.snapshot());
        bodies.push(s.delta(3));
        bodies.push(s.trade());
        let (t, _) = run(&["book", "trades"], &bodies);
        assert_eq!(kinds(&t), vec![], "{:?}", t.samples);
        assert_eq!(t.stale[0], 1);

        let mut bodies = vec![s.subscribed(&["book"]), s.snapshot(), stale("feed_gap")];
        bodies.push(s.delta(4));
        let (t, _) = run(&["book"], &bodies);
        assert_eq!(kinds(&t), vec![(ViolationKind::DeltaWhileStale, 1)]);
    }

    #[test]
    fn ordering_and_subscription_violations() {
        let mut s = Stream::new();
        // A delta before the snapshot.
        let sub = s.subscribed(&["book"]);
        let d = s.delta(0);
        let (t, _) = run(&["book"], &[sub.clone(), d]);
        assert_eq!(kinds(&t), vec![(ViolationKind::DeltaBeforeSnapshot, 1)]);
        // A repeated delta.
        let snap = s.snapshot();
        let d1 = s.delta(1);
        let (t, _) = run(&["book"], &[sub.clone(), snap.clone(), d1.clone(), d1]);
        assert_eq!(kinds(&t), vec![(ViolationKind::SeqRepeat, 1)]);
        // A trade on a book-only subscription, and a trade gap.
        let tr = s.trade();
        let (t, _) = run(&["book"], &[sub, snap.clone(), tr]);
        assert_eq!(kinds(&t), vec![(ViolationKind::NotSubscribed, 1)]);
        let both = s.subscribed(&["book", "trades"]);
        let (t1, t3) = (s.trade(), {
            s.trade();
            s.trade()
        });
        let (t, _) = run(&["book", "trades"], &[both.clone(), snap, t1, t3]);
        assert_eq!(kinds(&t), vec![(ViolationKind::TradeSeq, 1)]);
        // A snapshot with a bad checksum, and one that goes backwards.
        let mut bad = s.snapshot();
        if let Body::Snapshot(b) = &mut bad {
            b.checksum ^= 4;
        }
        let (t, _) = run(&["book", "trades"], &[both.clone(), bad]);
        assert_eq!(kinds(&t), vec![(ViolationKind::SnapshotChecksum, 1)]);
        let later = s.snapshot();
        s.seq -= 1;
        let earlier = s.snapshot();
        let (t, _) = run(&["book", "trades"], &[both, later, earlier]);
        assert_eq!(kinds(&t), vec![(ViolationKind::SnapshotBackwards, 1)]);
    }

    #[test]
    fn the_memo_computes_the_protocol_checksum_and_reuses_it_only_for_equal_bytes() {
        let mut memo = ChecksumMemo::new();
        let mut rng = tickwire::book::synth::Rng::new(9);
        let mut book = OrderBook::new();
        for round in 0..2000u64 {
            let side = if rng.below(2) == 0 {
                Side::Bid
            } else {
                Side::Ask
            };
            let base = if side == Side::Bid { 1_000 } else { 1_100 };
            book.apply(side, base + rng.below(40) as i64, rng.below(4) as i64);
            // Same key for different books (a lying seq): the bytes decide.
            let key = round / 3;
            assert_eq!(memo.checksum(key, &book), book.checksum(), "round {round}");
            assert_eq!(memo.checksum(key, &book), book.checksum());
        }
        assert!(memo.hits >= 2000, "{memo:?}");
        assert_eq!(
            memo.checksum(1, &OrderBook::new()),
            0,
            "empty book: CRC of no bytes"
        );
    }

    #[test]
    fn garbage_is_undecodable_and_never_panics() {
        let mut v = Verifier::new();
        v.expect(&[SYM], true, true);
        let mut t = Tally::new();
        let mut m = ChecksumMemo::new();
        v.handle_binary(&[0xff, 0xff], 0, &mut t, &mut m);
        v.handle_text(b"{not json", 0, &mut t, &mut m);
        v.handle_text(br#"{"type":"delta"}"#, 0, &mut t, &mut m);
        v.handle_text(br#"{"type":"bogus"}"#, 0, &mut t, &mut m);
        assert_eq!(kinds(&t), vec![(ViolationKind::Undecodable, 4)]);
    }

    impl Verifier {
        fn on_other_or_data(&mut self, body: Body, t: &mut Tally) {
            let bytes = pb::ServerMessage { body: Some(body) }.encode_to_vec();
            self.handle_binary(&bytes, 0, t, &mut ChecksumMemo::new());
        }
    }
}
