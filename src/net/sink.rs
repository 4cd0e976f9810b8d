//! The ingest thread's end of the rings: [`FanoutSink`] routes each published
//! frame to the workers with interest ([`Router`]) through real `rtrb` rings,
//! waking a worker only when its ring was empty, and serves the workers'
//! requests. Runs on the ingest thread.

use std::collections::VecDeque;
use std::sync::Arc;

use mio::Waker;

use crate::book::SymbolId;
use crate::book::market::{Market, Published};
use crate::fanout::ring::{ToIngest, ToWorker};
use crate::fanout::router::{Rings, Router};
use crate::wire::EncodedFrame;
use crate::wire::pb::server_message::Body;

use super::ingest::MarketSink;
use super::ring_wake::must_wake;
use super::shared::Shared;
use super::symbols::{DirectoryWriter, SymbolDirectory};

/// Requests drained from one worker per loop turn, at most.
const REQUESTS_PER_TURN: usize = 4096;
/// How often the router stats are published for scrapes, ns.
const SHARED_REFRESH_NS: u64 = 250_000_000;

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
    ) -> FanoutSink {
        FanoutSink {
            router: Router::new(rings.producers.len()),
            rings,
            requests,
            symbols: SymbolDirectory::writer(&shared.symbols),
            shared,
            last_refresh_ns: 0,
            interest_changes: VecDeque::new(),
        }
    }

    fn refresh_shared(&mut self) {
        if let Ok(mut g) = self.shared.router.lock() {
            *g = self.router.stats().clone();
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
        self.router.publish(market, event, frame, &mut self.rings);
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
                let interest_in = match &req {
                    ToIngest::Interest { symbol, .. } => Some(*symbol),
                    _ => None,
                };
                let held = |r: &Router, s| {
                    let (book, trades, _) = r.interest(s);
                    book | trades != 0
                };
                let before = interest_in.map(|s| held(&self.router, s));
                self.router.handle_request(w, req, market, &mut self.rings);
                if let (Some(s), Some(before)) = (interest_in, before) {
                    let after = held(&self.router, s);
                    if after != before {
                        self.interest_changes.push_back((s, after));
                    }
                }
                done += 1;
            }
        }
        done += self.router.do_work(&mut self.rings);
        if now_ns.saturating_sub(self.last_refresh_ns) >= SHARED_REFRESH_NS {
            self.refresh_shared();
            self.last_refresh_ns = now_ns;
        }
        done
    }
}
