//! The ingest thread's end of the rings: [`FanoutSink`] routes each published
//! frame to the workers with interest ([`Router`]) through real `rtrb` rings,
//! waking a worker only when its ring was empty, and serves the workers'
//! requests. Runs on the ingest thread.

use std::fmt::Write as _;
use std::sync::Arc;

use mio::Waker;

use crate::book::market::{Market, Published};
use crate::fanout::ring::{ToIngest, ToWorker};
use crate::fanout::router::{Rings, Router};
use crate::wire::EncodedFrame;
use crate::wire::json::write_json_str;

use super::ingest::MarketSink;
use super::shared::Shared;

/// Requests drained from one worker per loop turn, at most.
const REQUESTS_PER_TURN: usize = 4096;
/// How often the `/symbols` body and router stats are refreshed, ns.
const SHARED_REFRESH_NS: u64 = 250_000_000;
/// Least time between two refreshes prompted by new symbols, ns. The body
/// costs O(symbols) to render (25–60 ms at 100 000 symbols, measured on a
/// shared core): without this, a feed creating one symbol per loop turn would
/// have the ingest thread re-render it every turn, quadratic in the symbols.
const NEW_SYMBOL_REFRESH_NS: u64 = 50_000_000;

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
        let was_empty = p.slots() == p.buffer().capacity();
        p.push(msg).map_err(|rtrb::PushError::Full(m)| m)?;
        if was_empty {
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
    /// A symbol was created since the last refresh.
    symbols_dirty: bool,
    /// The number of symbols at the last refresh.
    symbols_shown: usize,
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
            shared,
            last_refresh_ns: 0,
            symbols_dirty: true,
            symbols_shown: 0,
        }
    }

    fn refresh_shared(&mut self, market: &Market) {
        if let Ok(mut g) = self.shared.router.lock() {
            *g = self.router.stats().clone();
        }
        let mut body = String::from("{\"symbols\":[");
        for (i, s) in market.symbols().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"symbol\":");
            write_json_str(&mut body, s.name);
            // Writing to a String cannot fail.
            let _ = write!(
                body,
                ",\"seq\":{},\"price_decimals\":{},\"size_decimals\":{}}}",
                s.seq, s.price_decimals, s.size_decimals
            );
        }
        body.push_str("]}");
        self.symbols_shown = market.len();
        if let Ok(mut g) = self.shared.symbols_json.lock() {
            *g = Arc::from(body);
        }
    }
}

impl MarketSink for FanoutSink {
    fn publish(&mut self, market: &Market, event: &Published, frame: &EncodedFrame) {
        // A new symbol should show in `/symbols` soon; a re-snapshot's new
        // decimals can wait for the periodic refresh.
        if matches!(event, Published::Snapshot { .. }) && market.len() != self.symbols_shown {
            self.symbols_dirty = true;
        }
        self.router.publish(market, event, frame, &mut self.rings);
    }

    fn has_pending(&self) -> bool {
        self.router.has_pending()
    }

    fn do_work(&mut self, market: &Market, now_ns: u64) -> usize {
        let mut done = 0;
        for w in 0..self.requests.len() {
            for _ in 0..REQUESTS_PER_TURN {
                let Ok(req) = self.requests[w].pop() else {
                    break;
                };
                self.router.handle_request(w, req, market, &mut self.rings);
                done += 1;
            }
        }
        done += self.router.do_work(&mut self.rings);
        let since = now_ns.saturating_sub(self.last_refresh_ns);
        if (self.symbols_dirty && since >= NEW_SYMBOL_REFRESH_NS) || since >= SHARED_REFRESH_NS {
            self.refresh_shared(market);
            self.last_refresh_ns = now_ns;
            self.symbols_dirty = false;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::FeedId;
    use crate::metrics::IngestCounters;
    use crate::wire::pb;

    const MS: u64 = 1_000_000;

    fn snapshot(m: &mut Market, sink: &mut FanoutSink, symbol: &str) {
        let mut out = Vec::new();
        let snap = pb::BookSnapshot {
            symbol: symbol.into(),
            price_decimals: 2,
            size_decimals: 4,
            ..Default::default()
        };
        m.handle_snapshot(FeedId(1), snap, 0, &mut out).unwrap();
        for p in &out {
            sink.publish(m, p, &EncodedFrame::binary(p.msg()));
        }
    }

    /// `/symbols` costs O(symbols) to render: re-snapshots of known symbols
    /// wait for the periodic refresh, new symbols prompt one at most every
    /// 50 ms.
    #[test]
    fn symbols_body_is_rendered_at_a_bounded_rate() {
        let shared = Arc::new(Shared::new(Arc::new(IngestCounters::default()), 0));
        let rings = RtrbRings {
            producers: Vec::new(),
            wakers: Vec::new(),
        };
        let mut sink = FanoutSink::new(rings, Vec::new(), shared.clone());
        let mut m = Market::new();
        let t0 = 1_000_000 * MS;
        snapshot(&mut m, &mut sink, "AAA");
        sink.do_work(&m, t0);
        let first = shared.symbols_json();
        assert!(first.contains("\"AAA\""));
        // A re-snapshot every turn: no re-render until the periodic one.
        for i in 1..10 {
            snapshot(&mut m, &mut sink, "AAA");
            sink.do_work(&m, t0 + i * MS);
            assert!(Arc::ptr_eq(&first, &shared.symbols_json()), "turn {i}");
        }
        // A new symbol: shown within 50 ms, not at once after the last render.
        snapshot(&mut m, &mut sink, "BBB");
        sink.do_work(&m, t0 + 20 * MS);
        assert!(!shared.symbols_json().contains("\"BBB\""));
        sink.do_work(&m, t0 + 50 * MS);
        let second = shared.symbols_json();
        assert!(second.contains("\"BBB\""));
        // The periodic refresh still runs.
        sink.do_work(&m, t0 + 299 * MS);
        assert!(Arc::ptr_eq(&second, &shared.symbols_json()));
        sink.do_work(&m, t0 + 300 * MS);
        assert!(!Arc::ptr_eq(&second, &shared.symbols_json()));
    }
}
