//! [`Replays`]: the market thread's side of resume (PROTOCOL §10). It
//! records each published delta and trade, already encoded, in the
//! [`ResumeHistory`] beside the books, and answers a worker's
//! [`ToIngest::Resume`](super::ring::ToIngest::Resume) ("everything after
//! seq S in epoch E") with [`ToWorker::Resumed`] through the same FIFO ring
//! as the data, so that a resumed client is gap-free by the same argument as
//! a snapshot: what the answer holds ends at the last message published
//! before it, and everything after follows it in the ring.
//!
//! Run by the ingest thread inside the fan-out sink. Sans-IO: `now_ns` is an
//! argument. A book stale for a feed reason is answered with that reason (a
//! client resuming it still needs its `Stale`, then the feed's snapshot).

use crate::book::SymbolId;
use crate::book::market::{Market, Published};
use crate::book::resume::{HistoryCounters, HistoryLimits, Resume, ResumeHistory, StreamKey};
use crate::wire::EncodedFrame;
use crate::wire::json::{self, Decimals};
use crate::wire::pb;

use super::ring::{Lane, ResumeAnswer, ToWorker};

/// One recorded message in both encodings (JSON only if some worker had
/// JSON interest when it was published; rendered on demand otherwise).
#[derive(Debug, Clone)]
pub struct Recorded {
    bin: EncodedFrame,
    json: Option<EncodedFrame>,
}

/// Counters of resume requests, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub history: HistoryCounters,
    pub hits: u64,
    /// Messages replayed by hits.
    pub replayed: u64,
    /// Misses by reason: no history, another epoch, a seq in the future,
    /// the history restarted after it, evicted.
    pub misses: [u64; 5],
    /// Answered with the book's feed-stale reason.
    pub stale: u64,
}

/// Labels of [`ReplayStats::misses`], in order.
pub const MISS_REASONS: [&str; 5] = ["no_history", "epoch", "future", "replaced", "evicted"];

pub struct Replays {
    history: ResumeHistory<Recorded>,
    stats: ReplayStats,
    json_buf: String,
}

/// One worker's request (the fields of `ToIngest::Resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeRequest {
    pub token: u64,
    pub symbol: SymbolId,
    pub lane: Lane,
    pub epoch: u64,
    pub after_seq: u64,
    pub json: bool,
}

impl Replays {
    pub fn new(limits: HistoryLimits) -> Replays {
        Replays {
            history: ResumeHistory::new(limits),
            stats: ReplayStats::default(),
            json_buf: String::new(),
        }
    }

    pub fn stats(&self) -> ReplayStats {
        ReplayStats {
            history: self.history.counters(),
            ..self.stats
        }
    }

    /// Records one published message (`frame` its binary encoding, `json`
    /// its JSON one if it was rendered). A replaced book restarts the
    /// symbol's book history at its seq.
    pub fn record(
        &mut self,
        market: &Market,
        event: &Published,
        frame: &EncodedFrame,
        json: Option<EncodedFrame>,
        now_ns: u64,
    ) {
        let symbol = event.symbol();
        let epoch = market.symbol_epoch(symbol);
        let (key, seq) = match event {
            Published::Snapshot { seq, .. } => {
                self.history.reset(StreamKey::book(symbol), epoch, *seq);
                return;
            }
            Published::Delta { seq, .. } => (StreamKey::book(symbol), *seq),
            Published::Trade { seq, .. } => (StreamKey::trades(symbol), *seq),
            Published::Stale { .. } => return,
        };
        let bytes = frame.len() + json.as_ref().map_or(0, EncodedFrame::len);
        let recorded = Recorded {
            bin: frame.clone(),
            json,
        };
        self.history.push(now_ns, key, epoch, seq, recorded, bytes);
    }

    /// Returns memory when nothing is published (idle turns).
    pub fn expire(&mut self, now_ns: u64) {
        self.history.expire(now_ns);
    }

    /// The answer to one resume request.
    pub fn answer(
        &mut self,
        req: ResumeRequest,
        market: &Market,
        decimals: Decimals,
        now_ns: u64,
    ) -> ToWorker {
        let key = match req.lane {
            Lane::Book => StreamKey::book(req.symbol),
            Lane::Trades => StreamKey::trades(req.symbol),
        };
        let stale = market
            .stale_reason(req.symbol)
            .filter(|_| req.lane == Lane::Book);
        let answer = if let Some(reason) = stale {
            self.stats.stale += 1;
            ResumeAnswer::Stale(reason)
        } else {
            match self.history.query(now_ns, key, req.epoch, req.after_seq) {
                Resume::Hit(replay) => {
                    let mut last = req.after_seq;
                    let mut frames = Vec::with_capacity(replay.len());
                    for e in replay {
                        last = e.seq;
                        let f = if req.json {
                            match &e.frame.json {
                                Some(j) => j.clone(),
                                None => render_json(&e.frame.bin, decimals, &mut self.json_buf),
                            }
                        } else {
                            e.frame.bin.clone()
                        };
                        frames.push(f);
                    }
                    self.stats.hits += 1;
                    self.stats.replayed += frames.len() as u64;
                    ResumeAnswer::Hit { last, frames }
                }
                Resume::Miss(m) => {
                    let i = MISS_REASONS
                        .iter()
                        .position(|&r| r == m.label())
                        .unwrap_or(0);
                    self.stats.misses[i] += 1;
                    ResumeAnswer::Miss {
                        dropped: m.unrecoverable(req.after_seq),
                    }
                }
            }
        };
        ToWorker::Resumed {
            token: req.token,
            answer,
        }
    }
}

/// The JSON frame of a recorded binary frame (its JSON was not rendered
/// when it was published: no worker had JSON interest then).
fn render_json(bin: &EncodedFrame, decimals: Decimals, buf: &mut String) -> EncodedFrame {
    use prost::Message;
    let msg = pb::ServerMessage::decode(bin.payload()).unwrap_or_default();
    buf.clear();
    json::render(&msg, decimals, buf);
    EncodedFrame::text(buf)
}
