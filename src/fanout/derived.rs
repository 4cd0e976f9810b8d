//! [`DerivedBooks`]: the market thread's derived book streams (PROTOCOL §9,
//! DESIGN "Derived channels"): one [`BookView`] per (symbol, channel) that
//! some worker holds, fed by the symbol's published messages, its messages
//! encoded once and routed like any other stream's.
//!
//! Run by the ingest thread (the owner of every book, local or mirrored),
//! inside the fan-out sink, beside the [`Router`]. Workers stay dumb: to them
//! a derived stream is one more [`SymbolId`] (`fanout::streams`), with
//! snapshots, deltas, `Stale`, drops and resyncs exactly like a symbol's.
//!
//! # How a symbol's message becomes its streams' messages
//!
//! - Delta `S` applied: each `book.N` view answers at once with its delta
//!   (or nothing, if the top N did not change); conflated views merge it.
//! - Each loop turn: conflated views due emit their merged delta
//!   ([`DerivedBooks::poll`]); [`DerivedBooks::next_due_ns`] bounds the
//!   ingest loop's sleep so they are on time.
//! - Book replaced by a feed snapshot: every view resets, its subscribers
//!   get the variant's snapshot (`BookReplaced`).
//! - `Stale{feed_gap|feed_down}`: every stream of the symbol gets it; their
//!   views are not polled while the book is stale, and the feed's next
//!   snapshot resets them, so nothing merged before a `Stale` is sent after it.
//! - A worker's snapshot request for a stream: the view's snapshot at its
//!   last message's seq ([`DerivedBooks::snapshot_answer`]), so the next
//!   delta's `prev_seq` is what the client holds.
//!
//! The full-depth conflated view (`book@Tms`) must know the size each level
//! had before a delta; the market keeps only the size after. So while a
//! symbol has such a view, this keeps a shadow of its book one delta behind
//! (one more apply of each delta, for those symbols only).
//!
//! Never: blocks, or does work per subscriber. Per delta: O(views of the
//! symbol); per loop turn: O(log V) per conflated view due (a heap of due
//! times), nothing for the others.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use crate::book::SymbolId;
use crate::book::book::{OrderBook, UpdateScratch};
use crate::book::derived::{BookView, ChannelName, LevelChanges, ViewDelta, ViewSnapshot};
use crate::book::market::{Market, Published};
use crate::wire::json::Decimals;
use crate::wire::pb::{self, server_message::Body};
use crate::wire::{EncodedFrame, Renderings};

use super::render::{Rendered, Renderer};
use super::ring::{DataKind, ToWorker};
use super::router::{Rings, Router, Stream};
use super::streams::DerivedStreams;

/// Counters of the derived streams (the ingest thread is their writer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DerivedStats {
    /// Views computed now (streams some worker holds).
    pub views: usize,
    /// Deltas emitted by views (each encoded once).
    pub deltas: u64,
    /// Snapshots of views encoded (subscriptions, resyncs, replaced books).
    pub snapshots: u64,
}

/// The derived streams of one market thread; see the module doc.
pub struct DerivedBooks {
    streams: Arc<DerivedStreams>,
    /// By derived stream number: the view of each stream a worker holds.
    live: Vec<Option<LiveView>>,
    by_symbol: HashMap<SymbolId, SymbolViews>,
    /// Conflated views with a merged delta waiting, by due time (stream
    /// number): the loop finds those due without scanning every view.
    /// Entries of views dropped or emitted since are skipped when popped.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    changes: LevelChanges,
    scratch: UpdateScratch,
    stats: DerivedStats,
}

#[derive(Default)]
struct SymbolViews {
    streams: Vec<SymbolId>,
    /// The book before the delta being handled, while a view needs the
    /// sizes a delta replaced (see the module doc).
    shadow: Option<OrderBook>,
}

struct LiveView {
    symbol: SymbolId,
    name: ChannelName,
    view: BookView,
    /// The encoded snapshot at `seq`, until the view's next message.
    cache: Option<(u64, Rendered)>,
    /// An entry of `due` stands for this view's waiting delta.
    queued: bool,
}

impl DerivedBooks {
    pub fn new(streams: Arc<DerivedStreams>) -> DerivedBooks {
        DerivedBooks {
            streams,
            live: Vec::new(),
            by_symbol: HashMap::new(),
            due: BinaryHeap::new(),
            changes: LevelChanges::new(),
            scratch: UpdateScratch::default(),
            stats: DerivedStats::default(),
        }
    }

    pub fn stats(&self) -> DerivedStats {
        self.stats
    }

    /// Whether some worker holds `stream`, now (`held`): its view is made
    /// from the symbol's book at once, or dropped.
    pub fn set_interest(&mut self, stream: SymbolId, held: bool, market: &Market, now_ns: u64) {
        let Some(n) = stream.derived_number() else {
            return;
        };
        if self.live.len() <= n {
            self.live.resize_with(n + 1, || None);
        }
        if held {
            if self.live[n].is_some() {
                return;
            }
            let Some((symbol, channel)) = self.streams.key(stream) else {
                return;
            };
            let book = market.book(symbol);
            let Some(view) = BookView::new(channel, market.snapshot_seq(symbol), book, now_ns)
            else {
                return;
            };
            let sv = self.by_symbol.entry(symbol).or_default();
            if view.needs_changes() && sv.shadow.is_none() {
                sv.shadow = Some(book.clone());
            }
            sv.streams.push(stream);
            self.live[n] = Some(LiveView {
                symbol,
                name: channel.name(),
                view,
                cache: None,
                queued: false,
            });
            self.stats.views += 1;
        } else {
            let Some(lv) = self.live[n].take() else {
                return;
            };
            self.stats.views -= 1;
            let live = &self.live;
            if let Some(sv) = self.by_symbol.get_mut(&lv.symbol) {
                sv.streams.retain(|&s| s != stream);
                if sv.streams.is_empty() {
                    self.by_symbol.remove(&lv.symbol);
                } else if !sv.streams.iter().any(|&s| {
                    s.derived_number()
                        .and_then(|n| live[n].as_ref())
                        .is_some_and(|l| l.view.needs_changes())
                }) {
                    sv.shadow = None;
                }
            }
        }
    }

    /// What the symbol's published message makes of its streams (`frame`
    /// is its binary encoding, shared by a `Stale`).
    pub fn on_published(
        &mut self,
        market: &Market,
        event: &Published,
        frame: &EncodedFrame,
        router: &mut Router,
        rings: &mut impl Rings,
        now_ns: u64,
    ) {
        let symbol = event.symbol();
        let Some(sv) = self.by_symbol.get_mut(&symbol) else {
            return;
        };
        let decimals = router.decimals(symbol);
        let book = market.book(symbol);
        match event {
            Published::Delta { seq, msg, .. } => {
                let Some(Body::Delta(d)) = &msg.body else {
                    return;
                };
                if let Some(shadow) = sv.shadow.as_mut() {
                    self.changes.capture(shadow, &d.updates);
                    // The market accepted these updates on the same book.
                    let _ = shadow.apply_updates(&d.updates, usize::MAX, &mut self.scratch);
                } else {
                    self.changes.clear();
                }
                for &stream in &sv.streams {
                    let Some(n) = stream.derived_number() else {
                        continue;
                    };
                    let Some(lv) = self.live[n].as_mut() else {
                        continue;
                    };
                    if let Some(vd) = lv.view.handle_delta(*seq, &d.updates, &self.changes, book) {
                        let ts = (d.exchange_ts_ns, d.ingest_ts_ns);
                        let msg = delta_msg(market.name(symbol), &lv.name, vd, ts);
                        lv.cache = None;
                        self.stats.deltas += 1;
                        let s = Stream {
                            symbol: stream,
                            kind: DataKind::Delta,
                            seq: vd.seq,
                            prev_seq: vd.prev_seq,
                        };
                        router.publish_stream(
                            s,
                            &msg,
                            &EncodedFrame::binary(&msg),
                            decimals,
                            rings,
                        );
                    }
                    // A conflated view now waiting for its window is queued.
                    if !lv.queued
                        && let Some(due) = lv.view.poll_timeout()
                    {
                        lv.queued = true;
                        self.due.push(Reverse((due, n)));
                    }
                }
            }
            Published::Snapshot { seq, .. } => {
                if let Some(shadow) = sv.shadow.as_mut() {
                    shadow.clone_from(book);
                }
                for &stream in &sv.streams {
                    let Some(lv) = stream.derived_number().and_then(|n| self.live[n].as_mut())
                    else {
                        continue;
                    };
                    lv.view.reset(*seq, book, now_ns);
                    let snap = lv.view.snapshot(book);
                    let msg = snapshot_msg(market, symbol, &lv.name, snap);
                    self.stats.snapshots += 1;
                    let s = Stream {
                        symbol: stream,
                        kind: DataKind::BookReplaced,
                        seq: lv.view.seq(),
                        prev_seq: 0,
                    };
                    let frames = router.publish_stream(
                        s,
                        &msg,
                        &EncodedFrame::binary(&msg),
                        decimals,
                        rings,
                    );
                    lv.cache = Some((lv.view.seq(), frames));
                }
            }
            Published::Stale { reason, msg, .. } => {
                for &stream in &sv.streams {
                    let Some(lv) = stream.derived_number().and_then(|n| self.live[n].as_ref())
                    else {
                        continue;
                    };
                    let s = Stream {
                        symbol: stream,
                        kind: DataKind::FeedStale(*reason),
                        seq: lv.view.seq(),
                        prev_seq: 0,
                    };
                    router.publish_stream(s, msg, frame, decimals, rings);
                }
            }
            Published::Trade { .. } => {}
        }
    }

    /// Emits what conflated views have due at `now_ns` (books stale for a
    /// feed reason wait for their snapshot, which resets their views).
    /// Returns the number emitted. O(log V) per view due, nothing for the
    /// others.
    pub fn poll(
        &mut self,
        market: &Market,
        router: &mut Router,
        rings: &mut impl Rings,
        now_ns: u64,
    ) -> usize {
        let mut emitted = 0;
        while let Some(&Reverse((due, n))) = self.due.peek() {
            if due > now_ns {
                break;
            }
            self.due.pop();
            let Some(lv) = self.live.get_mut(n).and_then(Option::as_mut) else {
                continue;
            };
            lv.queued = false;
            match lv.view.poll_timeout() {
                None => continue,
                Some(d) if d > now_ns => {
                    lv.queued = true;
                    self.due.push(Reverse((d, n)));
                    continue;
                }
                Some(_) => {}
            }
            if market.stale_reason(lv.symbol).is_some() {
                continue;
            }
            let book = market.book(lv.symbol);
            let Some(vd) = lv.view.poll_emit(now_ns, book) else {
                continue;
            };
            let (exchange_ts, ingest_ts) = market.timestamps(lv.symbol);
            let msg = delta_msg(
                market.name(lv.symbol),
                &lv.name,
                vd,
                (exchange_ts, ingest_ts),
            );
            let s = Stream {
                symbol: SymbolId::derived(n as u32),
                kind: DataKind::Delta,
                seq: vd.seq,
                prev_seq: vd.prev_seq,
            };
            lv.cache = None;
            let decimals = router.decimals(lv.symbol);
            router.publish_stream(s, &msg, &EncodedFrame::binary(&msg), decimals, rings);
            self.stats.deltas += 1;
            emitted += 1;
        }
        emitted
    }

    /// Whether some worker holds a derived stream of `symbol`.
    pub fn holds(&self, symbol: SymbolId) -> bool {
        self.by_symbol.contains_key(&symbol)
    }

    /// The earliest time a conflated view may have something due.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    /// The answer to worker `w`'s snapshot request for a derived `stream`:
    /// the variant's snapshot at the seq of its last message; or the
    /// feed-stale reason; or nothing yet (a book being synced, or a stream
    /// nobody holds any more, whose subscribers are gone).
    pub fn snapshot_answer(
        &mut self,
        stream: SymbolId,
        wanted: Renderings,
        market: &Market,
        decimals: Decimals,
        renderer: &mut Renderer,
    ) -> ToWorker {
        let none = |seq, stale| ToWorker::Snapshot {
            symbol: stream,
            seq,
            frames: None,
            stale,
        };
        let Some(lv) = stream
            .derived_number()
            .and_then(|n| self.live.get_mut(n)?.as_mut())
        else {
            return none(0, None);
        };
        let seq = lv.view.seq();
        if let Some(reason) = market.stale_reason(lv.symbol) {
            return none(seq, Some(reason));
        }
        if !market.has_book(lv.symbol) {
            return none(0, None);
        }
        let cache = match &mut lv.cache {
            Some((s, frames)) if *s == seq => frames,
            stale_or_none => {
                let book = market.book(lv.symbol);
                let msg = snapshot_msg(market, lv.symbol, &lv.name, lv.view.snapshot(book));
                self.stats.snapshots += 1;
                &mut stale_or_none
                    .insert((seq, Rendered::proto(EncodedFrame::binary(&msg))))
                    .1
            }
        };
        // The variant's snapshot, each rendering built once per seq.
        renderer.complete(cache, wanted, decimals, None);
        ToWorker::Snapshot {
            symbol: stream,
            seq,
            frames: Some(cache.only(wanted)),
            stale: None,
        }
    }
}

fn delta_msg(
    symbol: &str,
    channel: &ChannelName,
    vd: ViewDelta<'_>,
    (exchange_ts_ns, ingest_ts_ns): (u64, u64),
) -> pb::ServerMessage {
    pb::ServerMessage {
        body: Some(Body::Delta(pb::BookDelta {
            symbol: symbol.to_string(),
            seq: vd.seq,
            updates: vd.updates.to_vec(),
            exchange_ts_ns,
            ingest_ts_ns,
            checksum: vd.checksum,
            prev_seq: vd.prev_seq,
            channel: channel.as_str().to_string(),
        })),
    }
}

fn snapshot_msg(
    market: &Market,
    symbol: SymbolId,
    channel: &ChannelName,
    snap: ViewSnapshot,
) -> pb::ServerMessage {
    let mut s = market.snapshot_header(symbol);
    s.seq = snap.seq;
    s.bids = snap.bids;
    s.asks = snap.asks;
    s.checksum = snap.checksum;
    s.channel = channel.as_str().to_string();
    pb::ServerMessage {
        body: Some(Body::Snapshot(s)),
    }
}
