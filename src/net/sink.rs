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
    symbols_dirty: bool,
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
        if let Ok(mut g) = self.shared.symbols_json.lock() {
            *g = Arc::from(body);
        }
    }
}

impl MarketSink for FanoutSink {
    fn publish(&mut self, market: &Market, event: &Published, frame: &EncodedFrame) {
        if matches!(event, Published::Snapshot { .. }) {
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
        if self.symbols_dirty || now_ns.saturating_sub(self.last_refresh_ns) >= SHARED_REFRESH_NS {
            self.refresh_shared(market);
            self.last_refresh_ns = now_ns;
            self.symbols_dirty = false;
        }
        done
    }
}
