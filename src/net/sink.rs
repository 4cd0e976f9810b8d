//! The ingest thread's end of the rings: [`FanoutSink`] routes each published
//! frame to the workers with interest ([`Router`]) through real `rtrb` rings,
//! waking a worker only when its ring was empty, and serves the workers'
//! requests. Runs on the ingest thread.

use std::collections::VecDeque;
use std::sync::Arc;

use mio::Waker;

use crate::book::SymbolId;
use crate::book::market::{Market, Published};
use crate::book::resume::HistoryLimits;
use crate::fanout::derived::DerivedBooks;
use crate::fanout::render::Renderer;
use crate::fanout::replay::Replays;
use crate::fanout::ring::{ToIngest, ToWorker};
use crate::fanout::router::{Rings, Router};
use crate::wire::pb::server_message::Body;
use crate::wire::{EncodedFrame, Rendering};

use super::ingest::MarketSink;
use super::ring_wake::must_wake;
use super::shared::Shared;
use super::symbols::{DirectoryWriter, SymbolDirectory};

/// Requests drained from one worker per loop turn, at most.
const REQUESTS_PER_TURN: usize = 4096;
/// How often the router stats are published for scrapes, ns.
const SHARED_REFRESH_NS: u64 = 250_000_000;

/// Now, in ns since the Unix epoch: the clock of conflation windows (the
/// ingest thread's `now` for its sink).
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The ingest → worker rings with their wakers.
pub struct RtrbRings {
    pub producers: Vec<rtrb::Producer<ToWorker>>,
    pub wakers: Vec<Arc<Waker>>,
}

impl Rings for RtrbRings {
    fn workers(&self) -> usize {
        self.producers.len()
    }

    fn try_push(&mut self, worker: usize, msg: ToWorker) -> Result<(), ToWorker> {
        let p = &mut self.producers[worker];
        p.push(msg).map_err(|rtrb::PushError::Full(m)| m)?;
        if must_wake(p) {
            // A failed wake means the worker's poll is gone (shutting down).
            let _ = self.wakers[worker].wake();
        }
        Ok(())
    }
}

pub struct FanoutSink {
    router: Router,
    /// The derived book channels some worker holds (PROTOCOL §9).
    derived: DerivedBooks,
    /// The resume history and its answers (PROTOCOL §10).
    replays: Replays,
    rings: RtrbRings,
    requests: Vec<rtrb::Consumer<ToIngest>>,
    shared: Arc<Shared>,
    last_refresh_ns: u64,
    symbols: DirectoryWriter,
    /// Interest that started or ended on some symbol, for an edge.
    interest_changes: VecDeque<(SymbolId, bool)>,
}

impl FanoutSink {
    pub fn new(
        rings: RtrbRings,
        requests: Vec<rtrb::Consumer<ToIngest>>,
        shared: Arc<Shared>,
        resume: HistoryLimits,
        renderer: Renderer,
    ) -> FanoutSink {
        FanoutSink {
            router: Router::new(rings.producers.len(), renderer),
            derived: DerivedBooks::new(shared.streams.clone()),
            replays: Replays::new(resume),
            rings,
            requests,
            symbols: SymbolDirectory::writer(&shared.symbols),
            shared,
            last_refresh_ns: 0,
            interest_changes: VecDeque::new(),
        }
    }

    /// Whether some worker holds any channel of `symbol`, derived ones included.
    fn holds(&self, symbol: SymbolId) -> bool {
        let (book, trades, _) = self.router.interest(symbol, Rendering::Proto);
        book | trades != 0 || self.derived.holds(symbol)
    }

    fn refresh_shared(&mut self) {
        if let Ok(mut g) = self.shared.router.lock() {
            *g = self.router.stats().clone();
            g.derived = self.derived.stats();
            g.replays = self.replays.stats();
        }
    }
}

impl MarketSink for FanoutSink {
    fn publish(&mut self, market: &Market, event: &Published, frame: &EncodedFrame) {
        // Before the ring push: `/symbols` never reports an older seq than a
        // client can have received.
        match event {
            Published::Snapshot { symbol, seq, msg } => {
                let (pd, sd, epoch) = match &msg.body {
                    Some(Body::Snapshot(s)) => {
                        (s.price_decimals as u32, s.size_decimals as u32, s.epoch)
                    }
                    _ => (0, 0, 0),
                };
                self.symbols
                    .snapshot(*symbol, market.name(*symbol), *seq, pd, sd, epoch);
            }
            Published::Delta { symbol, seq, .. } => self.symbols.delta(*symbol, *seq),
            Published::Trade { .. } | Published::Stale { .. } => {}
        }
        let now = wall_clock_ns();
        let frames = self.router.publish(market, event, frame, &mut self.rings);
        self.replays.record(market, event, &frames, now);
        self.derived
            .on_published(market, event, frame, &mut self.router, &mut self.rings, now);
    }

    fn next_due_ns(&self) -> Option<u64> {
        self.derived.next_due_ns()
    }

    fn has_pending(&self) -> bool {
        self.router.has_pending()
    }

    fn poll_interest_change(&mut self) -> Option<(SymbolId, bool)> {
        self.interest_changes.pop_front()
    }

    fn announce(&mut self, market: &Market, symbol: SymbolId) {
        if let Some(info) = market.info(symbol) {
            self.symbols.snapshot(
                symbol,
                info.name,
                info.seq,
                info.price_decimals,
                info.size_decimals,
                info.epoch,
            );
        }
        self.router.announce_listed(market, symbol, &mut self.rings);
    }

    fn lose_trades(&mut self, symbol: SymbolId, lost: u64) {
        self.router.lose_trades(symbol, lost);
    }

    fn do_work(&mut self, market: &Market, now_ns: u64) -> usize {
        let mut done = 0;
        for w in 0..self.requests.len() {
            for _ in 0..REQUESTS_PER_TURN {
                let Ok(req) = self.requests[w].pop() else {
                    break;
                };
                // Interest in a derived stream is interest in its symbol
                // for an edge (which follows symbols, not channels).
                let interest_in = match &req {
                    ToIngest::Interest { symbol, .. } => Some(*symbol),
                    _ => None,
                };
                let followed = interest_in.map(|s| self.shared.streams.key(s).map_or(s, |k| k.0));
                let before = followed.map(|s| self.holds(s));
                match req {
                    ToIngest::Resume(req) => {
                        let decimals = self.router.decimals(req.symbol);
                        let answer = self.replays.answer(
                            req,
                            market,
                            decimals,
                            self.router.renderer(),
                            wall_clock_ns(),
                        );
                        self.router.answer(w, answer, &mut self.rings);
                    }
                    ToIngest::SnapshotRequest { symbol } if symbol.is_derived() => {
                        let wanted = self.router.wanted(symbol, w);
                        let decimals = self
                            .router
                            .decimals(self.shared.streams.key(symbol).map_or(symbol, |k| k.0));
                        let answer = self.derived.snapshot_answer(
                            symbol,
                            wanted,
                            market,
                            decimals,
                            self.router.renderer(),
                        );
                        self.router.answer(w, answer, &mut self.rings);
                    }
                    req => self.router.handle_request(w, req, market, &mut self.rings),
                }
                if let Some(s) = interest_in.filter(|s| s.is_derived()) {
                    let held = self.router.interest(s, Rendering::Proto).0 != 0;
                    self.derived.set_interest(s, held, market, wall_clock_ns());
                }
                if let (Some(s), Some(before)) = (followed, before) {
                    let after = self.holds(s);
                    if after != before {
                        self.interest_changes.push_back((s, after));
                    }
                }
                done += 1;
            }
        }
        done += self
            .derived
            .poll(market, &mut self.router, &mut self.rings, wall_clock_ns());
        done += self.router.do_work(&mut self.rings);
        if now_ns.saturating_sub(self.last_refresh_ns) >= SHARED_REFRESH_NS {
            self.replays.expire(wall_clock_ns());
            self.refresh_shared();
            self.last_refresh_ns = now_ns;
        }
        done
    }
}
