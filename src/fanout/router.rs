//! The ingest side of the fan-out: which workers get which message.
//!
//! Run by the ingest thread, the single writer of all of this state. For each
//! published message it picks the workers with interest in the symbol and that
//! channel, attaches each other rendering (JSON, compressed, SSE: built once
//! by [`Renderer`]) only for the workers that want it, and pushes. It answers workers' snapshot requests from a per-symbol
//! cache of the encoded snapshot, valid until the book changes.
//!
//! It never blocks on a worker. A full ring drops data for that worker alone and
//! remembers, per symbol, how many deltas and trades it dropped; once the ring
//! has room it sends [`ToWorker::Dropped`] before any further data of that
//! symbol, and the worker resyncs its clients. Messages that must not be lost
//! (instruments, snapshot answers) wait in a per-worker backlog instead; while a
//! worker has a backlog, its data is dropped (and counted) rather than allowed
//! to overtake it.
//!
//! # Invariants
//!
//! - Per worker, messages are pushed in publish order; a symbol with a pending
//!   drop marker gets no data pushed until its marker is.
//! - A cached snapshot's `seq` equals the book's current seq.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::book::SymbolId;
use crate::book::market::{FeedStale, Market, Published};
use crate::wire::decimal::clamp_decimals;
use crate::wire::json::Decimals;
use crate::wire::{EncodedFrame, Rendering, Renderings, pb};

use super::derived::DerivedStats;
use super::render::{RenderStats, Rendered, Renderer};
use super::replay::ReplayStats;
use super::ring::{DataKind, Lane, ToIngest, ToWorker};

/// Most workers one router serves (interest sets are `u64` bitmasks).
pub const MAX_WORKERS: usize = 64;

/// The ingest → worker rings as the router sees them.
pub trait Rings {
    fn workers(&self) -> usize;
    /// Pushes without blocking; a full ring hands the message back.
    fn try_push(&mut self, worker: usize, msg: ToWorker) -> Result<(), ToWorker>;
}

/// Counters of the router (its thread is their single writer).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouterStats {
    pub pushed: u64,
    pub dropped_deltas: u64,
    pub dropped_trades: u64,
    pub drop_markers: u64,
    pub snapshot_requests: u64,
    pub snapshots_encoded: u64,
    pub backlogged: u64,
    /// The renderings built (`fanout::render`).
    pub render: RenderStats,
    /// The derived streams beside the router (`fanout::derived`), copied
    /// in by the sink for the metrics.
    pub derived: DerivedStats,
    /// The resume history and answers (`fanout::replay`), likewise.
    pub replays: ReplayStats,
}

#[derive(Default)]
struct Route {
    book: u64,
    trades: u64,
    /// Workers with interest per rendering ([`Rendering::index`]; protobuf's
    /// slot is unused: every worker gets it).
    renderings: [u64; Rendering::COUNT],
    decimals: Option<Decimals>,
    /// The epoch last announced with the decimals.
    epoch: u64,
    /// The encoded snapshot at `seq`, until the book changes.
    cache: Option<CachedSnapshot>,
}

struct CachedSnapshot {
    seq: u64,
    frames: Rendered,
}

#[derive(Default)]
struct WorkerLane {
    /// Must-deliver messages waiting for room, in order.
    backlog: VecDeque<ToWorker>,
    /// Symbols with data dropped for this worker: what was not delivered.
    dropped: HashMap<SymbolId, Lost>,
}

/// One message of a stream, as routed (see [`Router::publish_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub symbol: SymbolId,
    pub kind: DataKind,
    pub seq: u64,
    /// The stream's previous delta's seq (see `ToWorker::Data`).
    pub prev_seq: u64,
}

/// Routing state of the ingest thread.
pub struct Router {
    routes: Vec<Route>,
    lanes: Vec<WorkerLane>,
    stats: RouterStats,
    renderer: Renderer,
}

fn bit(worker: usize) -> u64 {
    1u64 << worker
}

/// The renderings some worker of `workers` wants, given per-rendering masks.
fn wanted_by(masks: &[u64; Rendering::COUNT], workers: u64) -> Renderings {
    let mut s = Renderings::NONE;
    for r in Rendering::ALL {
        if r != Rendering::Proto && masks[r.index()] & workers != 0 {
            s.insert(r);
        }
    }
    s
}

/// What a worker missed of one symbol while its ring was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lost {
    deltas: u64,
    trades: u64,
    /// A `Stale{feed_down}` was dropped (its trades subscribers must hear it).
    feed_down: bool,
}

impl Router {
    /// `renderer` builds the renderings beyond protobuf (with PROTOCOL
    /// §12's threshold and the compression budget).
    pub fn new(workers: usize, renderer: Renderer) -> Router {
        assert!(workers <= MAX_WORKERS, "at most {MAX_WORKERS} workers");
        Router {
            routes: Vec::new(),
            lanes: (0..workers).map(|_| WorkerLane::default()).collect(),
            stats: RouterStats::default(),
            renderer,
        }
    }

    pub fn stats(&self) -> RouterStats {
        RouterStats {
            render: self.renderer.stats(),
            ..self.stats.clone()
        }
    }

    /// The renderer, for renderings made beside the router (derived
    /// snapshots, resume answers).
    pub fn renderer(&mut self) -> &mut Renderer {
        &mut self.renderer
    }

    /// Whether backlogs or drop markers wait for ring room (poll again soon).
    pub fn has_pending(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| !l.backlog.is_empty() || !l.dropped.is_empty())
    }

    fn route(&mut self, symbol: SymbolId) -> &mut Route {
        let i = symbol.index();
        if self.routes.len() <= i {
            self.routes.resize_with(i + 1, Route::default);
        }
        &mut self.routes[i]
    }

    /// Workers with interest in `symbol`: book, trades, and `rendering`.
    pub fn interest(&self, symbol: SymbolId, rendering: Rendering) -> (u64, u64, u64) {
        self.routes.get(symbol.index()).map_or((0, 0, 0), |r| {
            (r.book, r.trades, r.renderings[rendering.index()])
        })
    }

    /// Routes one published message; `frame` is its binary encoding.
    /// Returns it in every rendering built for it.
    pub fn publish(
        &mut self,
        market: &Market,
        event: &Published,
        frame: &EncodedFrame,
        rings: &mut impl Rings,
    ) -> Rendered {
        let (symbol, kind, seq, msg) = match event {
            Published::Snapshot { symbol, seq, msg } => {
                (*symbol, DataKind::BookReplaced, *seq, msg)
            }
            Published::Delta { symbol, seq, msg } => (*symbol, DataKind::Delta, *seq, msg),
            Published::Trade { symbol, seq, msg } => (*symbol, DataKind::Trade, *seq, msg),
            Published::Stale {
                symbol,
                reason,
                msg,
            } => {
                let seq = market.snapshot_seq(*symbol);
                (*symbol, DataKind::FeedStale(*reason), seq, msg)
            }
        };
        if kind == DataKind::BookReplaced {
            self.announce(market, symbol, msg, rings);
        }
        let decimals = self.route(symbol).decimals.unwrap_or_default();
        let published = Stream {
            symbol,
            kind,
            seq,
            prev_seq: seq.saturating_sub(1),
        };
        self.publish_stream(published, msg, frame, decimals, rings)
    }

    /// The decimals last announced for `symbol` (a derived stream renders
    /// its JSON with its symbol's).
    pub fn decimals(&mut self, symbol: SymbolId) -> Decimals {
        self.route(symbol).decimals.unwrap_or_default()
    }

    /// Routes one message of a stream (a symbol, or a derived book channel
    /// of one: [`crate::fanout::derived`]) to the workers with interest in
    /// it, each other rendering built once if some want it. Returns it in
    /// every rendering built.
    pub fn publish_stream(
        &mut self,
        stream: Stream,
        msg: &pb::ServerMessage,
        frame: &EncodedFrame,
        decimals: Decimals,
        rings: &mut impl Rings,
    ) -> Rendered {
        let Stream {
            symbol,
            kind,
            seq,
            prev_seq,
        } = stream;
        let route = self.route(symbol);
        let targets = match kind {
            DataKind::Delta | DataKind::BookReplaced | DataKind::FeedStale(FeedStale::FeedGap) => {
                route.book
            }
            DataKind::Trade => route.trades,
            DataKind::FeedStale(FeedStale::FeedDown) => route.book | route.trades,
        };
        let masks = route.renderings;
        let wanted = wanted_by(&masks, targets);
        let mut frames = Rendered::proto(frame.clone());
        if !wanted.is_empty() {
            self.renderer
                .complete(&mut frames, wanted, decimals, Some(msg));
        }
        let route = self.route(symbol);
        match kind {
            // The replaced book is the snapshot at `seq`: cache it for requests.
            DataKind::BookReplaced => {
                route.cache = Some(CachedSnapshot {
                    seq,
                    frames: frames.clone(),
                });
            }
            DataKind::Delta => route.cache = None,
            _ => {}
        }
        let ingest_ts_ns = ingest_ts(msg);
        let mut mask = targets;
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let msg = ToWorker::Data {
                symbol,
                kind,
                seq,
                prev_seq,
                ingest_ts_ns,
                frames: frames.only(wanted_by(&masks, bit(w))),
            };
            self.push_data(w, symbol, kind, msg, rings);
        }
        frames
    }

    /// Broadcasts the instrument when it is new or its decimals or epoch changed.
    fn announce(
        &mut self,
        market: &Market,
        symbol: SymbolId,
        msg: &pb::ServerMessage,
        rings: &mut impl Rings,
    ) {
        let Some(pb::server_message::Body::Snapshot(s)) = &msg.body else {
            return;
        };
        let d = Decimals {
            price: clamp_decimals(s.price_decimals),
            size: clamp_decimals(s.size_decimals),
        };
        self.announce_as(market, symbol, d, s.epoch, rings);
    }

    /// Announces a symbol that has no book yet (a mirrored symbol listed by
    /// its origin's heartbeat), so that workers accept subscriptions to it.
    pub fn announce_listed(&mut self, market: &Market, symbol: SymbolId, rings: &mut impl Rings) {
        let Some(info) = market.info(symbol) else {
            return;
        };
        let d = Decimals {
            price: info.price_decimals,
            size: info.size_decimals,
        };
        self.announce_as(market, symbol, d, info.epoch, rings);
    }

    fn announce_as(
        &mut self,
        market: &Market,
        symbol: SymbolId,
        d: Decimals,
        epoch: u64,
        rings: &mut impl Rings,
    ) {
        let route = self.route(symbol);
        if route.decimals == Some(d) && route.epoch == epoch {
            return;
        }
        route.decimals = Some(d);
        route.epoch = epoch;
        let name: Arc<str> = Arc::from(market.name(symbol));
        for w in 0..self.lanes.len() {
            let msg = ToWorker::Instrument {
                symbol,
                name: name.clone(),
                price_decimals: d.price,
                size_decimals: d.size,
                epoch,
            };
            self.push_must(w, msg, rings);
        }
    }

    /// `lost` trades of `symbol` will never arrive (the backplane lost them):
    /// every worker with trades interest gets a drop marker for them before
    /// any further data of the symbol, so its trades subscribers are told
    /// (`Stale{slow_consumer_trades}`, PROTOCOL §4).
    pub fn lose_trades(&mut self, symbol: SymbolId, lost: u64) {
        let mut mask = self.route(symbol).trades;
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if let Some(lane) = self.lanes.get_mut(w) {
                lane.dropped.entry(symbol).or_default().trades += lost;
                self.stats.dropped_trades += lost;
            }
        }
    }

    fn push_data(
        &mut self,
        w: usize,
        symbol: SymbolId,
        kind: DataKind,
        msg: ToWorker,
        rings: &mut impl Rings,
    ) {
        let lane = &mut self.lanes[w];
        let clean = lane.backlog.is_empty() && !lane.dropped.contains_key(&symbol);
        if clean && rings.try_push(w, msg).is_ok() {
            self.stats.pushed += 1;
            return;
        }
        let entry = self.lanes[w].dropped.entry(symbol).or_default();
        match kind {
            DataKind::Trade => {
                entry.trades += 1;
                self.stats.dropped_trades += 1;
            }
            // A lost replaced book or feed notice is repaired for book
            // subscribers by the resync's snapshot answer, which carries the
            // book or its stale reason; a lost feed_down is also remembered
            // for trades subscribers, who get no snapshot.
            _ => {
                entry.deltas += 1;
                entry.feed_down |= kind == DataKind::FeedStale(FeedStale::FeedDown);
                self.stats.dropped_deltas += 1;
            }
        }
    }

    /// The renderings worker `w`'s subscribers of `symbol` take.
    pub fn wanted(&mut self, symbol: SymbolId, w: usize) -> Renderings {
        wanted_by(&self.route(symbol).renderings, bit(w))
    }

    /// Queues a must-deliver message for worker `w` (a snapshot answer made
    /// elsewhere: [`crate::fanout::derived`]).
    pub fn answer(&mut self, w: usize, msg: ToWorker, rings: &mut impl Rings) {
        if w < self.lanes.len() {
            self.stats.snapshot_requests += 1;
            self.push_must(w, msg, rings);
        }
    }

    fn push_must(&mut self, w: usize, msg: ToWorker, rings: &mut impl Rings) {
        let lane = &mut self.lanes[w];
        if lane.backlog.is_empty() {
            match rings.try_push(w, msg) {
                Ok(()) => {
                    self.stats.pushed += 1;
                    return;
                }
                Err(msg) => lane.backlog.push_back(msg),
            }
        } else {
            lane.backlog.push_back(msg);
        }
        self.stats.backlogged += 1;
    }

    /// Serves one request from worker `w`.
    pub fn handle_request(
        &mut self,
        w: usize,
        req: ToIngest,
        market: &Market,
        rings: &mut impl Rings,
    ) {
        if w >= self.lanes.len() {
            return;
        }
        match req {
            ToIngest::Interest {
                symbol,
                channel,
                on,
            } => {
                let route = self.route(symbol);
                let mask = match channel {
                    Lane::Book => &mut route.book,
                    Lane::Trades => &mut route.trades,
                };
                if on {
                    *mask |= bit(w)
                } else {
                    *mask &= !bit(w)
                }
            }
            ToIngest::Rendering {
                symbol,
                rendering,
                on,
            } => {
                let mask = &mut self.route(symbol).renderings[rendering.index()];
                if on {
                    *mask |= bit(w)
                } else {
                    *mask &= !bit(w)
                }
            }
            // Answered beside the router, from the resume history
            // (`fanout::replay`); a caller that passes one here gets nothing.
            ToIngest::Resume(_) => {}
            ToIngest::SnapshotRequest { symbol } => {
                self.stats.snapshot_requests += 1;
                let answer = self.snapshot_answer(w, symbol, market);
                self.push_must(w, answer, rings);
            }
        }
    }

    fn snapshot_answer(&mut self, w: usize, symbol: SymbolId, market: &Market) -> ToWorker {
        if market.stale_reason(symbol).is_none() && !market.has_book(symbol) {
            // A mirrored book being synced: the waiting subscribers take the
            // origin's snapshot when it arrives (as BookReplaced).
            return ToWorker::Snapshot {
                symbol,
                seq: 0,
                frames: None,
                stale: None,
            };
        }
        let seq = market.snapshot_seq(symbol);
        if let Some(reason) = market.stale_reason(symbol) {
            return ToWorker::Snapshot {
                symbol,
                seq,
                frames: None,
                stale: Some(reason),
            };
        }
        let wanted = self.wanted(symbol, w);
        let decimals = self.decimals(symbol);
        let route = &mut self.routes[symbol.index()];
        let cache = match &mut route.cache {
            Some(c) if c.seq == seq => c,
            stale_or_none => {
                let msg = pb::ServerMessage {
                    body: Some(pb::server_message::Body::Snapshot(market.snapshot(symbol))),
                };
                self.stats.snapshots_encoded += 1;
                stale_or_none.insert(CachedSnapshot {
                    seq,
                    frames: Rendered::proto(EncodedFrame::binary(&msg)),
                })
            }
        };
        // Each rendering a subscriber waits for, built once per book seq.
        self.renderer
            .complete(&mut cache.frames, wanted, decimals, None);
        ToWorker::Snapshot {
            symbol,
            seq,
            frames: Some(cache.frames.only(wanted)),
            stale: None,
        }
    }

    /// Delivers backlogs, then drop markers, as rings have room. Returns the
    /// number of messages pushed.
    pub fn do_work(&mut self, rings: &mut impl Rings) -> usize {
        let mut done = 0;
        for w in 0..self.lanes.len() {
            let lane = &mut self.lanes[w];
            while let Some(msg) = lane.backlog.pop_front() {
                match rings.try_push(w, msg) {
                    Ok(()) => done += 1,
                    Err(msg) => {
                        lane.backlog.push_front(msg);
                        break;
                    }
                }
            }
            if !lane.backlog.is_empty() || lane.dropped.is_empty() {
                continue;
            }
            let mut delivered = Vec::new();
            for (&symbol, lost) in &lane.dropped {
                if rings
                    .try_push(
                        w,
                        ToWorker::Dropped {
                            symbol,
                            deltas: lost.deltas,
                            trades: lost.trades,
                            feed_down: lost.feed_down,
                        },
                    )
                    .is_err()
                {
                    break;
                }
                delivered.push(symbol);
                done += 1;
                self.stats.drop_markers += 1;
            }
            for s in delivered {
                lane.dropped.remove(&s);
            }
        }
        self.stats.pushed += done as u64;
        done
    }
}

fn ingest_ts(msg: &pb::ServerMessage) -> u64 {
    use pb::server_message::Body;
    match &msg.body {
        Some(Body::Snapshot(s)) => s.ingest_ts_ns,
        Some(Body::Delta(d)) => d.ingest_ts_ns,
        Some(Body::Trade(t)) => t.ingest_ts_ns,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::FeedId;
    use crate::wire::StaleReason;
    use crate::wire::pb::server_message::Body;

    /// Rings of a fixed capacity that record what was pushed.
    struct FakeRings {
        cap: usize,
        queues: Vec<VecDeque<ToWorker>>,
    }

    impl FakeRings {
        fn new(workers: usize, cap: usize) -> FakeRings {
            FakeRings {
                cap,
                queues: (0..workers).map(|_| VecDeque::new()).collect(),
            }
        }

        fn drain(&mut self, w: usize) -> Vec<ToWorker> {
            self.queues[w].drain(..).collect()
        }
    }

    impl Rings for FakeRings {
        fn workers(&self) -> usize {
            self.queues.len()
        }

        fn try_push(&mut self, worker: usize, msg: ToWorker) -> Result<(), ToWorker> {
            if self.queues[worker].len() >= self.cap {
                return Err(msg);
            }
            self.queues[worker].push_back(msg);
            Ok(())
        }
    }

    fn snapshot(symbol: &str) -> pb::BookSnapshot {
        pb::BookSnapshot {
            symbol: symbol.into(),
            seq: 1,
            bids: vec![pb::Level {
                price: 100,
                size: 1,
            }],
            asks: vec![pb::Level {
                price: 101,
                size: 1,
            }],
            price_decimals: 2,
            size_decimals: 0,
            ..Default::default()
        }
    }

    fn delta(symbol: &str, seq: u64, size: i64) -> pb::BookDelta {
        pb::BookDelta {
            symbol: symbol.into(),
            seq,
            updates: vec![pb::LevelUpdate {
                side: pb::Side::Bid as i32,
                price: 100,
                size,
            }],
            ..Default::default()
        }
    }

    /// Applies `f` to the market and routes everything it publishes.
    fn publish(
        market: &mut Market,
        router: &mut Router,
        rings: &mut FakeRings,
        f: impl FnOnce(&mut Market, &mut Vec<Published>),
    ) {
        let mut out = Vec::new();
        f(market, &mut out);
        for ev in out {
            let frame = EncodedFrame::binary(ev.msg());
            router.publish(market, &ev, &frame, rings);
        }
    }

    /// The renderings beyond protobuf, as ` +json` etc.
    fn extra(frames: Option<&Rendered>) -> String {
        frames
            .into_iter()
            .flat_map(|f| f.renderings().iter())
            .filter(|r| *r != Rendering::Proto)
            .map(|r| format!(" +{}", r.as_str()))
            .collect()
    }

    fn kinds(msgs: &[ToWorker]) -> Vec<String> {
        msgs.iter()
            .map(|m| match m {
                ToWorker::Instrument { name, .. } => format!("instrument {name}"),
                ToWorker::Data {
                    kind, seq, frames, ..
                } => {
                    format!("{kind:?} {seq}{}", extra(Some(frames)))
                }
                ToWorker::Snapshot {
                    seq, frames, stale, ..
                } => {
                    format!(
                        "snapshot {seq}{}{}",
                        extra(frames.as_ref()),
                        stale.map_or("", |s| StaleReason::from(s).as_str())
                    )
                }
                ToWorker::Dropped {
                    deltas,
                    trades,
                    feed_down,
                    ..
                } => format!(
                    "dropped {deltas}/{trades}{}",
                    if *feed_down { " feed_down" } else { "" }
                ),
                ToWorker::Resumed { token, .. } => format!("resumed {token}"),
            })
            .collect()
    }

    #[test]
    fn data_goes_only_to_interested_workers_and_json_only_when_wanted() {
        let (mut m, mut r, mut rings) = (
            Market::new(),
            Router::new(3, Renderer::new(256)),
            FakeRings::new(3, 100),
        );
        let feed = FeedId(1);
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_snapshot(feed, snapshot("AA"), 1, out))
        });
        for w in 0..3 {
            assert_eq!(
                kinds(&rings.drain(w)),
                vec!["instrument AA"],
                "every worker learns the symbol"
            );
        }
        let aa = m.symbol_id("AA").unwrap();
        r.handle_request(
            1,
            ToIngest::Interest {
                symbol: aa,
                channel: Lane::Book,
                on: true,
            },
            &m,
            &mut rings,
        );
        r.handle_request(
            2,
            ToIngest::Interest {
                symbol: aa,
                channel: Lane::Trades,
                on: true,
            },
            &m,
            &mut rings,
        );
        r.handle_request(
            2,
            ToIngest::Rendering {
                symbol: aa,
                rendering: Rendering::Json,
                on: true,
            },
            &m,
            &mut rings,
        );
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_delta(feed, delta("AA", 2, 5), 2, out))
        });
        assert!(rings.drain(0).is_empty(), "no interest, nothing pushed");
        assert_eq!(kinds(&rings.drain(1)), vec!["Delta 2"]);
        assert!(
            rings.drain(2).is_empty(),
            "trades-only worker gets no deltas"
        );
        assert_eq!(
            r.stats().render.rendered[Rendering::Json.index()],
            0,
            "nobody wanted JSON for the delta"
        );
        let trade = pb::Trade {
            symbol: "AA".into(),
            price: 100,
            size: 1,
            ..Default::default()
        };
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_trade(feed, trade, 3, out))
        });
        assert_eq!(kinds(&rings.drain(2)), vec!["Trade 1 +json"]);
        assert_eq!(r.stats().render.rendered[Rendering::Json.index()], 1);
        // Interest off: nothing more.
        r.handle_request(
            1,
            ToIngest::Interest {
                symbol: aa,
                channel: Lane::Book,
                on: false,
            },
            &m,
            &mut rings,
        );
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_delta(feed, delta("AA", 3, 6), 4, out))
        });
        assert!(rings.drain(1).is_empty());
        assert_eq!(r.interest(aa, Rendering::Json), (0, 0b100, 0b100));
    }

    #[test]
    fn snapshot_answers_are_cached_until_the_book_changes() {
        let (mut m, mut r, mut rings) = (
            Market::new(),
            Router::new(2, Renderer::new(256)),
            FakeRings::new(2, 100),
        );
        let feed = FeedId(1);
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_snapshot(feed, snapshot("AA"), 1, out))
        });
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_delta(feed, delta("AA", 2, 5), 2, out))
        });
        let aa = m.symbol_id("AA").unwrap();
        rings.drain(0);
        rings.drain(1);
        r.handle_request(0, ToIngest::SnapshotRequest { symbol: aa }, &m, &mut rings);
        r.handle_request(
            1,
            ToIngest::Rendering {
                symbol: aa,
                rendering: Rendering::Json,
                on: true,
            },
            &m,
            &mut rings,
        );
        r.handle_request(1, ToIngest::SnapshotRequest { symbol: aa }, &m, &mut rings);
        assert_eq!(kinds(&rings.drain(0)), vec!["snapshot 2"]);
        assert_eq!(kinds(&rings.drain(1)), vec!["snapshot 2 +json"]);
        assert_eq!(
            r.stats().snapshots_encoded,
            1,
            "the second request was served from the cache"
        );
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_delta(feed, delta("AA", 3, 6), 3, out))
        });
        r.handle_request(0, ToIngest::SnapshotRequest { symbol: aa }, &m, &mut rings);
        assert_eq!(kinds(&rings.drain(0)), vec!["snapshot 3"]);
        assert_eq!(
            r.stats().snapshots_encoded,
            2,
            "a delta invalidates the cache"
        );
        // The answer decodes to the market's book at that seq.
        r.handle_request(0, ToIngest::SnapshotRequest { symbol: aa }, &m, &mut rings);
        let Some(ToWorker::Snapshot {
            frames: Some(frames),
            ..
        }) = rings.drain(0).pop()
        else {
            panic!()
        };
        let msg =
            <pb::ServerMessage as prost::Message>::decode(frames.proto_frame().payload()).unwrap();
        assert_eq!(msg.body, Some(Body::Snapshot(m.snapshot(aa))));
        // A stale book answers with the reason and no frames.
        m.handle_feed_down(feed, &mut Vec::new());
        r.handle_request(0, ToIngest::SnapshotRequest { symbol: aa }, &m, &mut rings);
        assert_eq!(kinds(&rings.drain(0)), vec!["snapshot 3feed_down"]);
    }

    #[test]
    fn a_full_ring_drops_for_that_worker_only_then_sends_a_marker_first() {
        let (mut m, mut r, mut rings) = (
            Market::new(),
            Router::new(2, Renderer::new(256)),
            FakeRings::new(2, 3),
        );
        let feed = FeedId(1);
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_snapshot(feed, snapshot("AA"), 1, out))
        });
        let aa = m.symbol_id("AA").unwrap();
        for w in 0..2 {
            rings.drain(w);
            r.handle_request(
                w,
                ToIngest::Interest {
                    symbol: aa,
                    channel: Lane::Book,
                    on: true,
                },
                &m,
                &mut rings,
            );
            r.handle_request(
                w,
                ToIngest::Interest {
                    symbol: aa,
                    channel: Lane::Trades,
                    on: true,
                },
                &m,
                &mut rings,
            );
        }
        // Worker 0 drains as it goes; worker 1 is stuck with capacity 3.
        let mut got0 = Vec::new();
        for seq in 2..8 {
            publish(&mut m, &mut r, &mut rings, |m, out| {
                drop(m.handle_delta(feed, delta("AA", seq, seq as i64), seq, out))
            });
            got0.extend(rings.drain(0));
        }
        let trade = pb::Trade {
            symbol: "AA".into(),
            price: 100,
            size: 1,
            ..Default::default()
        };
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_trade(feed, trade, 9, out))
        });
        got0.extend(rings.drain(0));
        assert_eq!(
            kinds(&got0),
            vec![
                "Delta 2", "Delta 3", "Delta 4", "Delta 5", "Delta 6", "Delta 7", "Trade 1"
            ]
        );
        assert_eq!(r.stats().dropped_deltas, 3);
        assert_eq!(r.stats().dropped_trades, 1);
        assert!(r.has_pending());
        // While the ring stays full, nothing more is pushed (and more is dropped).
        assert_eq!(r.do_work(&mut rings), 0);
        let stuck = rings.drain(1);
        assert_eq!(kinds(&stuck), vec!["Delta 2", "Delta 3", "Delta 4"]);
        // The marker goes out before any further data of the symbol.
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_delta(feed, delta("AA", 8, 8), 10, out))
        });
        assert!(
            rings.drain(1).is_empty(),
            "data does not overtake the pending marker"
        );
        assert_eq!(r.do_work(&mut rings), 1);
        assert_eq!(kinds(&rings.drain(1)), vec!["dropped 4/1"]);
        assert!(!r.has_pending());
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_delta(feed, delta("AA", 9, 9), 11, out))
        });
        assert_eq!(kinds(&rings.drain(1)), vec!["Delta 9"]);
        // A feed_down lost to a full ring is remembered in the marker, for
        // the worker's trades subscribers.
        rings.drain(0);
        for seq in 10..13 {
            publish(&mut m, &mut r, &mut rings, |m, out| {
                drop(m.handle_delta(feed, delta("AA", seq, seq as i64), seq, out))
            });
        }
        rings.drain(0);
        publish(&mut m, &mut r, &mut rings, |m, out| {
            m.handle_feed_down(feed, out)
        });
        assert_eq!(kinds(&rings.drain(0)), vec!["FeedStale(FeedDown) 12"]);
        rings.drain(1);
        assert_eq!(r.do_work(&mut rings), 1);
        assert_eq!(kinds(&rings.drain(1)), vec!["dropped 1/0 feed_down"]);
    }

    #[test]
    fn must_deliver_messages_wait_in_order_behind_a_full_ring() {
        let (mut m, mut r, mut rings) = (
            Market::new(),
            Router::new(1, Renderer::new(256)),
            FakeRings::new(1, 1),
        );
        let feed = FeedId(1);
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_snapshot(feed, snapshot("AA"), 1, out))
        });
        publish(&mut m, &mut r, &mut rings, |m, out| {
            drop(m.handle_snapshot(feed, snapshot("BB"), 1, out))
        });
        let aa = m.symbol_id("AA").unwrap();
        r.handle_request(0, ToIngest::SnapshotRequest { symbol: aa }, &m, &mut rings);
        assert_eq!(
            r.stats().backlogged,
            2,
            "BB's instrument and AA's answer wait"
        );
        let mut got = rings.drain(0);
        while r.has_pending() {
            r.do_work(&mut rings);
            got.extend(rings.drain(0));
        }
        assert_eq!(
            kinds(&got),
            vec!["instrument AA", "instrument BB", "snapshot 1"]
        );
    }
}
