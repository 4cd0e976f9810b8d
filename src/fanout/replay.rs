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

use crate::book::market::{Market, Published};
use crate::book::resume::{HistoryCounters, HistoryLimits, Resume, ResumeHistory, StreamKey};
use crate::wire::json::Decimals;
use crate::wire::{EncodedFrame, Rendering, Renderings};

use super::render::{Rendered, Renderer};
use super::ring::{Lane, ResumeAnswer, ResumeRequest, ToWorker};

/// One recorded message: its protobuf frame, and its JSON one if some
/// worker had JSON interest when it was published (other renderings are
/// built on demand by the answer, not kept).
#[derive(Debug, Clone)]
pub struct Recorded {
    frames: Rendered,
}

/// Counters of resume requests, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub history: HistoryCounters,
    pub hits: u64,
    /// Messages replayed by hits.
    pub replayed: u64,
    /// Misses by reason ([`MISS_REASONS`]): no history, another epoch, a
    /// seq in the future, the history restarted after it, evicted, more
    /// than [`MAX_REPLAY_BYTES`] to replay.
    pub misses: [u64; 6],
    /// Answered with the book's feed-stale reason.
    pub stale: u64,
}

/// Labels of [`ReplayStats::misses`], in order.
pub const MISS_REASONS: [&str; 6] = [
    "no_history",
    "epoch",
    "future",
    "replaced",
    "evicted",
    "too_long",
];

/// Most frame bytes one answer replays (4× the default high-water mark): a
/// client that missed more would only be dropped as a slow consumer while
/// taking it, so it gets the snapshot at once, and no request can make the
/// market thread gather an unbounded answer.
pub const MAX_REPLAY_BYTES: usize = 1 << 20;

pub struct Replays {
    history: ResumeHistory<Recorded>,
    stats: ReplayStats,
}

impl Replays {
    pub fn new(limits: HistoryLimits) -> Replays {
        Replays {
            history: ResumeHistory::new(limits),
            stats: ReplayStats::default(),
        }
    }

    pub fn stats(&self) -> ReplayStats {
        ReplayStats {
            history: self.history.counters(),
            ..self.stats
        }
    }

    /// Records one published message (`frames`: the renderings the router
    /// built for it). A replaced book restarts the symbol's book history at
    /// its seq.
    pub fn record(&mut self, market: &Market, event: &Published, frames: &Rendered, now_ns: u64) {
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
        let kept = frames.only(Renderings::of(Rendering::Json));
        let bytes = kept.len();
        let recorded = Recorded { frames: kept };
        self.history.push(now_ns, key, epoch, seq, recorded, bytes);
    }

    /// Returns memory when nothing is published (idle turns).
    pub fn expire(&mut self, now_ns: u64) {
        self.history.expire(now_ns);
    }

    /// The answer to one resume request, in the requester's rendering.
    pub fn answer(
        &mut self,
        req: ResumeRequest,
        market: &Market,
        decimals: Decimals,
        renderer: &mut Renderer,
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
                    let bytes: usize = replay.clone().map(|e| e.bytes).sum();
                    if bytes > MAX_REPLAY_BYTES {
                        // Gap-free: every message held after the client's seq.
                        self.stats.misses[5] += 1;
                        return ToWorker::Resumed {
                            token: req.token,
                            answer: ResumeAnswer::Miss {
                                dropped: replay.len() as u64,
                            },
                        };
                    }
                    let mut last = req.after_seq;
                    let mut frames = Vec::with_capacity(replay.len());
                    for e in replay {
                        last = e.seq;
                        frames.push(rendered_as(
                            &e.frame.frames,
                            req.rendering,
                            decimals,
                            renderer,
                        ));
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

/// A recorded message in `rendering`: the frame kept, or one built now
/// (shared by nobody else: a replay is one client's).
fn rendered_as(
    kept: &Rendered,
    rendering: Rendering,
    decimals: Decimals,
    renderer: &mut Renderer,
) -> EncodedFrame {
    if let Some(f) = kept.get(rendering) {
        return f.clone();
    }
    let mut frames = kept.clone();
    renderer.complete(&mut frames, Renderings::of(rendering), decimals, None);
    frames.get(rendering).unwrap_or(kept.proto_frame()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::FeedId;
    use crate::wire::pb;

    fn published(market: &mut Market, msg: pb::ingest_message::Body) -> Vec<Published> {
        let mut out = Vec::new();
        match msg {
            pb::ingest_message::Body::Snapshot(s) => {
                market.handle_snapshot(FeedId(1), s, 1, &mut out).unwrap();
            }
            pb::ingest_message::Body::Delta(d) => {
                market.handle_delta(FeedId(1), d, 1, &mut out).unwrap();
            }
            _ => unreachable!(),
        }
        out
    }

    fn ask(
        market: &mut Market,
        replays: &mut Replays,
        after_seq: u64,
        rendering: Rendering,
    ) -> ResumeAnswer {
        let symbol = market.symbol_id("AAA").unwrap();
        let req = ResumeRequest {
            token: 1,
            symbol,
            lane: Lane::Book,
            epoch: market.symbol_epoch(symbol),
            after_seq,
            rendering,
        };
        let mut renderer = Renderer::new(256);
        match replays.answer(req, market, Decimals::default(), &mut renderer, 10) {
            ToWorker::Resumed { answer, .. } => answer,
            other => panic!("{other:?}"),
        }
    }

    /// Every message after the client's seq, in its encoding (JSON rendered
    /// on demand when nobody wanted it at publish time); more than
    /// `MAX_REPLAY_BYTES` is a miss, counted as `too_long`.
    #[test]
    fn replays_what_was_missed_within_the_byte_bound() {
        let mut market = Market::new();
        let mut replays = Replays::new(HistoryLimits::default());
        let mut record = |market: &mut Market, body| {
            for ev in published(market, body) {
                let frame = EncodedFrame::binary(ev.msg());
                replays.record(market, &ev, &Rendered::proto(frame), 5);
            }
        };
        record(
            &mut market,
            pb::ingest_message::Body::Snapshot(pb::BookSnapshot {
                symbol: "AAA".into(),
                seq: 1,
                bids: vec![pb::Level { price: 1, size: 1 }],
                ..Default::default()
            }),
        );
        // Deltas with many updates: a few hundred bytes each.
        for seq in 2..=4_000u64 {
            // 40 updates: about 440 bytes a frame, 1.7 MB in all.
            let updates = (0..40)
                .map(|i| pb::LevelUpdate {
                    side: pb::Side::Ask as i32,
                    price: 1_000 + i,
                    size: seq as i64,
                })
                .collect();
            record(
                &mut market,
                pb::ingest_message::Body::Delta(pb::BookDelta {
                    symbol: "AAA".into(),
                    seq,
                    updates,
                    ..Default::default()
                }),
            );
        }
        match ask(&mut market, &mut replays, 3_990, Rendering::Json) {
            ResumeAnswer::Hit { last, frames } => {
                assert_eq!(last, 4_000);
                assert_eq!(frames.len(), 10);
                let text = std::str::from_utf8(frames[0].payload()).unwrap();
                assert!(
                    text.contains("\"seq\":3991") && text.contains("\"prev_seq\":3990"),
                    "{text}"
                );
            }
            ResumeAnswer::Miss { dropped } => panic!("a miss, {dropped} dropped"),
            ResumeAnswer::Stale(r) => panic!("{r:?}"),
        }
        // A deflate client gets the same messages compressed (each over the
        // 256-byte threshold), inflating to the protobuf frames.
        match ask(&mut market, &mut replays, 3_998, Rendering::ProtoDeflate) {
            ResumeAnswer::Hit { frames, .. } => {
                assert_eq!(frames.len(), 2);
                for f in &frames {
                    assert!(f.is_deflated());
                    let mut out = Vec::new();
                    crate::ws::deflate::inflate(f.payload(), 1 << 20, &mut out).unwrap();
                    let msg = <pb::ServerMessage as prost::Message>::decode(&out[..]).unwrap();
                    assert!(matches!(msg.body, Some(pb::server_message::Body::Delta(_))));
                }
            }
            other => panic!("{other:?}"),
        }
        match ask(&mut market, &mut replays, 1, Rendering::Proto) {
            ResumeAnswer::Miss { dropped } => assert_eq!(dropped, 3_999),
            ResumeAnswer::Hit { frames, .. } => {
                panic!("over the byte bound, {} frames replayed", frames.len())
            }
            ResumeAnswer::Stale(r) => panic!("{r:?}"),
        }
        assert_eq!(replays.stats().misses[5], 1);
        assert_eq!(replays.stats().hits, 2);
    }
}
