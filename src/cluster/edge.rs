//! The edge's side of the backplane: which symbols to follow, when to ask an
//! origin for a snapshot, and what each message from NATS does to the
//! node's mirrored books.
//!
//! Sans-IO: run by the node's market thread (the ingest thread) with `now`
//! passed in. Its inputs are the workers' interest ([`EdgeCore::handle_interest`]),
//! what NATS delivered ([`EdgeCore::handle_inbound`]) and the clock
//! ([`EdgeCore::handle_timeout`]); its outputs are [`Command`]s for the NATS
//! shell (`net::backplane`), events published by the [`Market`], symbols to
//! announce to the workers and trades lost on the way.
//!
//! # Following a symbol
//!
//! First local interest: subscribe to its data subject, then (the shell keeps
//! the order, on one connection) request a snapshot from its origin; data
//! arriving meanwhile is buffered. The answer at seq `S` replaces the book;
//! buffered deltas up to `S` are dropped, the rest must follow on from `S`.
//! Any gap, another epoch, a checksum that is not the origin's, garbage on the
//! subject, or a heartbeat that stays ahead of the book: the book turns stale
//! (`Stale{feed_gap}` to its subscribers) and is resynced the same way, after
//! a random delay of up to `resync_jitter_ns`, at most `max_inflight`
//! requests at a time. An origin silent for `heartbeat_timeout_ns`: every
//! book it owns turns `Stale{feed_down}`; its next heartbeat resyncs them.
//!
//! # Two origins claiming one symbol
//!
//! A symbol has one origin at a time: among the origins whose live heartbeats
//! list it, the one with the smallest name. Every edge sees the same
//! heartbeats and so picks the same origin; data from the others is counted
//! (`other_origin`) and dropped. When the owner goes silent, the next one in
//! that order takes over, through a resync (its seq and epoch are its own).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::book::decode::fast_server_delta;
use crate::book::market::FeedStale;
use crate::book::market::{Market, MirrorReject, Published, origin_feed};
use crate::book::{FeedId, SymbolId};
use crate::wire::pb;
use crate::wire::pb::server_message::Body;

use super::header::{Header, Kind, OriginTag};
use super::heartbeat::{BookState, Heartbeat};

/// Timings and bounds of the edge, each with its unit.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// An origin silent this long is down (its books turn `feed_down`).
    pub heartbeat_timeout_ns: u64,
    /// A snapshot request unanswered this long is retried.
    pub snapshot_timeout_ns: u64,
    /// Snapshot requests outstanding at once.
    pub max_inflight: usize,
    /// A resync waits a random delay below this (no stampede).
    pub resync_jitter_ns: u64,
    /// A failed snapshot request is retried after this (plus jitter).
    pub retry_ns: u64,
    /// Messages buffered per symbol while its snapshot is awaited.
    pub max_buffered: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            heartbeat_timeout_ns: 3_000_000_000,
            snapshot_timeout_ns: 2_000_000_000,
            max_inflight: 32,
            resync_jitter_ns: 200_000_000,
            retry_ns: 500_000_000,
            // A snapshot round trip is milliseconds: 8,192 covers a symbol
            // at 100,000 messages/s for 80 ms.
            max_buffered: 8_192,
        }
    }
}

/// What the NATS shell must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        symbol: String,
    },
    Unsubscribe {
        symbol: String,
    },
    /// Request/reply on `tw.snap.<origin>.<symbol>`.
    RequestSnapshot {
        symbol: String,
        origin: String,
    },
}

/// What NATS delivered.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A message on `tw.md.<symbol>` (the name is shared by all of a
    /// subscription's messages: no allocation per message).
    Data {
        symbol: Arc<str>,
        payload: Bytes,
    },
    /// The answer to a snapshot request (an empty payload: the origin does
    /// not have the symbol).
    SnapshotReply {
        symbol: String,
        payload: Bytes,
    },
    /// A snapshot request failed (no responders, timeout, disconnected).
    SnapshotFailed {
        symbol: String,
    },
    Heartbeat {
        payload: Bytes,
    },
}

/// Counters of the edge (its thread is their single writer).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EdgeStats {
    pub applied: u64,
    pub buffered: u64,
    pub buffer_overflows: u64,
    pub resyncs: u64,
    pub snapshot_requests: u64,
    pub snapshot_failures: u64,
    pub snapshots_applied: u64,
    pub heartbeats: u64,
    pub heartbeat_resyncs: u64,
    pub origins_down: u64,
    pub other_origin: u64,
    pub unwanted: u64,
    pub old: u64,
    pub lost_trades: u64,
    /// Rejected messages by reason (garbage and mirror rejections).
    pub rejected: HashMap<&'static str, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// No local interest: not followed.
    #[default]
    Idle,
    /// Wanted, but no live origin lists it: waits for a heartbeat.
    Waiting,
    /// A snapshot request is due at this time.
    Due(u64),
    /// A snapshot request went out at this time.
    Requested(u64),
    /// In step with the origin (or stale with it).
    Live,
}

#[derive(Debug, Default)]
struct Follow {
    /// The symbol's name (for the commands), set on first interest.
    name: String,
    wanted: bool,
    phase: Phase,
    buffer: Vec<(Header, Bytes)>,
    /// Heartbeats in a row that were ahead of the book (or disagreed on staleness).
    behind_beats: u8,
    trades_behind_beats: u8,
    /// Origins whose heartbeats list the symbol: (origin index, last seen).
    claims: Vec<(usize, u64)>,
}

#[derive(Debug)]
struct Origin {
    name: String,
    tag: OriginTag,
    feed: FeedId,
    epoch: u64,
    last_beat_ns: u64,
    down: bool,
}

/// See the module doc.
pub struct EdgeCore {
    cfg: EdgeConfig,
    follows: Vec<Follow>,
    origins: Vec<Origin>,
    by_name: HashMap<String, usize>,
    due: VecDeque<SymbolId>,
    inflight: HashMap<SymbolId, u64>,
    commands: VecDeque<Command>,
    announce: VecDeque<SymbolId>,
    lost_trades: VecDeque<(SymbolId, u64)>,
    rng: u64,
    stats: EdgeStats,
}

impl EdgeCore {
    pub fn new(cfg: EdgeConfig, seed: u64) -> EdgeCore {
        EdgeCore {
            cfg,
            follows: Vec::new(),
            origins: Vec::new(),
            by_name: HashMap::new(),
            due: VecDeque::new(),
            inflight: HashMap::new(),
            commands: VecDeque::new(),
            announce: VecDeque::new(),
            lost_trades: VecDeque::new(),
            rng: seed | 1,
            stats: EdgeStats::default(),
        }
    }

    pub fn stats(&self) -> &EdgeStats {
        &self.stats
    }

    /// Origins seen, with whether each is live: for metrics and tests.
    pub fn origins(&self) -> impl Iterator<Item = (&str, bool)> {
        self.origins.iter().map(|o| (o.name.as_str(), !o.down))
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// A command the shell could not take yet goes back in front.
    pub fn unpoll_command(&mut self, c: Command) {
        self.commands.push_front(c);
    }

    /// A symbol the workers must learn (new, or its decimals changed).
    pub fn poll_announce(&mut self) -> Option<SymbolId> {
        self.announce.pop_front()
    }

    /// Trades of a symbol that will never arrive.
    pub fn poll_lost_trades(&mut self) -> Option<(SymbolId, u64)> {
        self.lost_trades.pop_front()
    }

    fn follow(&mut self, id: SymbolId) -> &mut Follow {
        let i = id.0 as usize;
        if self.follows.len() <= i {
            self.follows.resize_with(i + 1, Follow::default);
        }
        &mut self.follows[i]
    }

    fn jitter(&mut self, max: u64) -> u64 {
        // xorshift64: spreads resyncs, no cryptographic need.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if max == 0 { 0 } else { self.rng % max }
    }

    fn reject(&mut self, label: &'static str) {
        *self.stats.rejected.entry(label).or_default() += 1;
    }

    /// The live origin that owns `id`: the smallest name among the live
    /// origins whose heartbeats list it.
    fn owner(&self, id: SymbolId, now: u64) -> Option<usize> {
        let f = self.follows.get(id.0 as usize)?;
        f.claims
            .iter()
            .filter(|&&(o, seen)| {
                !self.origins[o].down && now.saturating_sub(seen) <= self.cfg.heartbeat_timeout_ns
            })
            .map(|&(o, _)| o)
            .min_by(|&a, &b| self.origins[a].name.cmp(&self.origins[b].name))
    }

    /// The first local subscriber of `id` (any channel) arrived (`on`), or
    /// the last one left. Symbols of local feeds are not followed.
    pub fn handle_interest(&mut self, market: &mut Market, id: SymbolId, on: bool, now: u64) {
        if !market.info(id).is_some_and(|i| i.mirrored) {
            return;
        }
        let name = market.name(id).to_string();
        let f = self.follow(id);
        if on && !f.wanted {
            f.name.clone_from(&name);
            f.wanted = true;
            f.phase = Phase::Due(now);
            self.commands.push_back(Command::Subscribe { symbol: name });
            self.due.push_back(id);
            self.issue_requests(now);
        } else if !on && f.wanted {
            f.wanted = false;
            f.phase = Phase::Idle;
            f.buffer = Vec::new();
            f.behind_beats = 0;
            self.inflight.remove(&id);
            self.commands
                .push_back(Command::Unsubscribe { symbol: name });
            market.mirror_forget(id);
        }
    }

    /// Something NATS delivered.
    pub fn handle_inbound(
        &mut self,
        market: &mut Market,
        msg: Inbound,
        now: u64,
        out: &mut Vec<Published>,
    ) {
        match msg {
            Inbound::Data { symbol, payload } => {
                self.handle_data(market, &symbol, payload, now, out)
            }
            Inbound::SnapshotReply { symbol, payload } => {
                self.handle_reply(market, &symbol, payload, now, out)
            }
            Inbound::SnapshotFailed { symbol } => {
                if let Some(id) = market.symbol_id(&symbol) {
                    self.request_failed(id, now);
                }
            }
            Inbound::Heartbeat { payload } => self.handle_heartbeat(market, &payload, now, out),
        }
    }

    fn handle_data(
        &mut self,
        market: &mut Market,
        symbol: &str,
        payload: Bytes,
        now: u64,
        out: &mut Vec<Published>,
    ) {
        let Some(id) = market.symbol_id(symbol) else {
            self.reject("unknown_symbol");
            return;
        };
        if !self.follow(id).wanted {
            self.stats.unwanted += 1;
            return;
        }
        let header = match Header::parse(&payload) {
            Ok((h, _)) => h,
            Err(e) => {
                self.reject(e.label());
                self.resync(market, id, now, out);
                return;
            }
        };
        if let Some(o) = self.owner(id, now)
            && self.origins[o].tag != header.origin
        {
            self.stats.other_origin += 1;
            return;
        }
        let max = self.cfg.max_buffered;
        let f = self.follow(id);
        match f.phase {
            Phase::Live => self.apply(market, id, header, payload, now, out),
            // No live origin: its next heartbeat starts a resync.
            Phase::Waiting => self.stats.unwanted += 1,
            Phase::Due(_) | Phase::Requested(_) => {
                if f.buffer.len() < max {
                    f.buffer.push((header, payload));
                    self.stats.buffered += 1;
                } else {
                    // The answer will not follow on from what is kept: resync after it.
                    f.buffer = Vec::new();
                    self.stats.buffer_overflows += 1;
                }
            }
            Phase::Idle => self.stats.unwanted += 1,
        }
    }

    /// Applies one message to a live mirrored book.
    fn apply(
        &mut self,
        market: &mut Market,
        id: SymbolId,
        header: Header,
        payload: Bytes,
        now: u64,
        out: &mut Vec<Published>,
    ) {
        let feed = origin_feed(header.origin.0);
        let body = payload.get(super::header::HEADER_LEN..).unwrap_or(&[]);
        let result = match header.kind {
            Kind::Delta => match fast_server_delta(body)
                .map(Body::Delta)
                .or_else(|| decode(body))
            {
                Some(Body::Delta(d)) if d.seq == header.seq => {
                    market.mirror_delta(feed, header.epoch, d, out).map(|_| ())
                }
                _ => Err(MirrorReject::Invalid(
                    crate::book::RejectReason::EmptyMessage,
                )),
            },
            Kind::Snapshot => match decode(body) {
                Some(Body::Snapshot(s)) if s.seq == header.seq => {
                    let r = market.mirror_snapshot(feed, header.epoch, s, out);
                    if r.is_ok() {
                        self.stats.snapshots_applied += 1;
                    }
                    r.map(|_| ())
                }
                _ => Err(MirrorReject::Invalid(
                    crate::book::RejectReason::EmptyMessage,
                )),
            },
            Kind::Trade => match decode(body) {
                Some(Body::Trade(t)) if t.seq == header.seq => {
                    match market.mirror_trade(feed, header.epoch, t, out) {
                        Ok((_, lost)) => {
                            if lost > 0 {
                                self.stats.lost_trades += lost;
                                self.lost_trades.push_back((id, lost));
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => Err(MirrorReject::Invalid(
                    crate::book::RejectReason::EmptyMessage,
                )),
            },
            Kind::StaleGap | Kind::StaleDown => {
                let reason = if header.kind == Kind::StaleGap {
                    FeedStale::FeedGap
                } else {
                    FeedStale::FeedDown
                };
                if market.symbol_epoch(id) != header.epoch && market.has_book(id) {
                    Err(MirrorReject::Epoch {
                        held: market.symbol_epoch(id),
                        got: header.epoch,
                    })
                } else {
                    let name = market.name(id).to_string();
                    market.mirror_stale(feed, &name, reason, out).map(|_| ())
                }
            }
        };
        match result {
            Ok(()) => self.stats.applied += 1,
            Err(MirrorReject::Old { .. }) => self.stats.old += 1,
            Err(e) => {
                self.reject(e.label());
                if e.needs_resync() {
                    self.resync(market, id, now, out);
                }
            }
        }
    }

    /// The book can no longer be trusted: stale now, a snapshot soon.
    fn resync(&mut self, market: &mut Market, id: SymbolId, now: u64, out: &mut Vec<Published>) {
        market.mirror_gap(id, out);
        let jitter = self.jitter(self.cfg.resync_jitter_ns);
        let f = self.follow(id);
        if !f.wanted || matches!(f.phase, Phase::Due(_) | Phase::Requested(_)) {
            return;
        }
        f.phase = Phase::Due(now + jitter);
        f.buffer.clear();
        f.behind_beats = 0;
        self.stats.resyncs += 1;
        self.due.push_back(id);
    }

    fn request_failed(&mut self, id: SymbolId, now: u64) {
        self.inflight.remove(&id);
        let jitter = self.jitter(self.cfg.resync_jitter_ns);
        let retry = self.cfg.retry_ns;
        let f = self.follow(id);
        if let Phase::Requested(_) = f.phase {
            f.phase = Phase::Due(now + retry + jitter);
            self.stats.snapshot_failures += 1;
            self.due.push_back(id);
        }
    }

    fn handle_reply(
        &mut self,
        market: &mut Market,
        symbol: &str,
        payload: Bytes,
        now: u64,
        out: &mut Vec<Published>,
    ) {
        let Some(id) = market.symbol_id(symbol) else {
            return;
        };
        if !matches!(self.follow(id).phase, Phase::Requested(_)) {
            // Late: a newer request or an unsubscribe overtook it.
            return;
        }
        let header = match Header::parse(&payload) {
            Ok((h, _)) => h,
            Err(e) => {
                if !payload.is_empty() {
                    self.reject(e.label());
                }
                self.request_failed(id, now);
                return;
            }
        };
        self.inflight.remove(&id);
        let f = self.follow(id);
        f.phase = Phase::Live;
        f.behind_beats = 0;
        let buffered = std::mem::take(&mut f.buffer);
        let before = self.stats.resyncs;
        self.apply(market, id, header, payload, now, out);
        if self.stats.resyncs != before {
            // The answer itself did not apply (garbage or a bad checksum).
            return;
        }
        for (h, p) in buffered {
            if self.follow(id).phase != Phase::Live {
                break;
            }
            if h.kind == Kind::Snapshot && h.seq <= header.seq && h.epoch == header.epoch {
                continue;
            }
            self.apply(market, id, h, p, now, out);
        }
    }

    fn handle_heartbeat(
        &mut self,
        market: &mut Market,
        payload: &[u8],
        now: u64,
        out: &mut Vec<Published>,
    ) {
        let hb = match Heartbeat::decode(payload) {
            Ok(hb) => hb,
            Err(_) => {
                self.reject("bad_heartbeat");
                return;
            }
        };
        self.stats.heartbeats += 1;
        let o = match self.by_name.get(&hb.origin) {
            Some(&o) => o,
            None => {
                let tag = OriginTag::of(&hb.origin);
                self.origins.push(Origin {
                    name: hb.origin.clone(),
                    tag,
                    feed: origin_feed(tag.0),
                    epoch: hb.epoch,
                    last_beat_ns: now,
                    down: false,
                });
                self.by_name
                    .insert(hb.origin.clone(), self.origins.len() - 1);
                self.origins.len() - 1
            }
        };
        let origin = &mut self.origins[o];
        origin.last_beat_ns = now;
        origin.down = false;
        origin.epoch = hb.epoch;
        let feed = origin.feed;
        for e in &hb.entries {
            let id = match market.mirror_listing(
                feed,
                &e.symbol,
                e.seq,
                (e.price_decimals, e.size_decimals),
                hb.epoch,
            ) {
                Ok((id, changed)) => {
                    if changed {
                        self.announce.push_back(id);
                    }
                    id
                }
                Err(err) => {
                    self.reject(err.label());
                    continue;
                }
            };
            let f = self.follow(id);
            match f.claims.iter_mut().find(|(c, _)| *c == o) {
                Some(c) => c.1 = now,
                None => f.claims.push((o, now)),
            }
            if !f.wanted || self.owner(id, now) != Some(o) {
                continue;
            }
            let f = self.follow(id);
            match f.phase {
                Phase::Waiting => {
                    let jitter = self.jitter(self.cfg.resync_jitter_ns);
                    self.follow(id).phase = Phase::Due(now + jitter);
                    self.due.push_back(id);
                }
                Phase::Live => self.check_beat(market, id, hb.epoch, e, now, out),
                _ => {}
            }
        }
        self.issue_requests(now);
    }

    /// A live book against its origin's heartbeat: another epoch, or a seq
    /// or staleness that stays ahead for two beats, means a message was lost.
    fn check_beat(
        &mut self,
        market: &mut Market,
        id: SymbolId,
        epoch: u64,
        e: &super::heartbeat::Entry,
        now: u64,
        out: &mut Vec<Published>,
    ) {
        if market.has_book(id) && market.symbol_epoch(id) != epoch {
            self.stats.heartbeat_resyncs += 1;
            self.resync(market, id, now, out);
            return;
        }
        let stale_here = market.stale_reason(id).is_some();
        let stale_there = e.state != BookState::Live;
        let behind = e.seq > market.snapshot_seq(id) || stale_here != stale_there;
        let trades_behind = e.trade_seq > market.trade_seq(id);
        let f = self.follow(id);
        f.behind_beats = if behind { f.behind_beats + 1 } else { 0 };
        f.trades_behind_beats = if trades_behind {
            f.trades_behind_beats + 1
        } else {
            0
        };
        let (resync, skip) = (f.behind_beats >= 2, f.trades_behind_beats >= 2);
        if skip {
            self.follow(id).trades_behind_beats = 0;
            let lost = market.mirror_skip_trades(id, e.trade_seq);
            if lost > 0 {
                self.stats.lost_trades += lost;
                self.lost_trades.push_back((id, lost));
            }
        }
        if resync {
            self.stats.heartbeat_resyncs += 1;
            self.resync(market, id, now, out);
        }
    }

    /// Origins gone silent, requests timed out, requests due. Call every few
    /// tens of milliseconds.
    pub fn handle_timeout(&mut self, market: &mut Market, now: u64, out: &mut Vec<Published>) {
        for o in 0..self.origins.len() {
            let origin = &mut self.origins[o];
            if origin.down
                || now.saturating_sub(origin.last_beat_ns) <= self.cfg.heartbeat_timeout_ns
            {
                continue;
            }
            origin.down = true;
            self.stats.origins_down += 1;
            let feed = origin.feed;
            market.handle_feed_down(feed, out);
            for i in 0..self.follows.len() {
                let f = &mut self.follows[i];
                if f.wanted && f.claims.iter().any(|&(c, _)| c == o) {
                    f.phase = Phase::Waiting;
                    f.buffer = Vec::new();
                    self.inflight.remove(&SymbolId(i as u32));
                }
            }
        }
        let timeout = self.cfg.snapshot_timeout_ns;
        let expired: Vec<SymbolId> = self
            .inflight
            .iter()
            .filter(|&(_, &at)| now.saturating_sub(at) > timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.request_failed(id, now);
        }
        self.issue_requests(now);
    }

    /// Sends the due snapshot requests, at most `max_inflight` outstanding.
    fn issue_requests(&mut self, now: u64) {
        for _ in 0..self.due.len() {
            if self.inflight.len() >= self.cfg.max_inflight {
                return;
            }
            let Some(id) = self.due.pop_front() else {
                return;
            };
            let Phase::Due(at) = self.follow(id).phase else {
                continue;
            };
            if at > now {
                self.due.push_back(id);
                continue;
            }
            let Some(o) = self.owner(id, now) else {
                self.follow(id).phase = Phase::Waiting;
                continue;
            };
            self.follow(id).phase = Phase::Requested(now);
            self.inflight.insert(id, now);
            self.stats.snapshot_requests += 1;
            let symbol = self.symbol_name(id);
            self.commands.push_back(Command::RequestSnapshot {
                symbol,
                origin: self.origins[o].name.clone(),
            });
        }
    }

    fn symbol_name(&self, id: SymbolId) -> String {
        self.follows
            .get(id.0 as usize)
            .map(|f| f.name.clone())
            .unwrap_or_default()
    }
}

fn decode(body: &[u8]) -> Option<Body> {
    pb::ServerMessage::decode(body).ok()?.body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::FeedId;
    use crate::cluster::origin::OriginCore;
    use crate::wire::EncodedFrame;

    const MS: u64 = 1_000_000;

    /// An origin: its market, its core, one feed.
    struct Origin {
        market: Market,
        core: OriginCore,
        feed_seq: HashMap<String, u64>,
    }

    impl Origin {
        fn new(name: &str, epoch: u64) -> Origin {
            Origin {
                market: Market::new().with_epoch(epoch),
                core: OriginCore::new(name),
                feed_seq: HashMap::new(),
            }
        }

        /// Publishes; returns the backplane payloads.
        fn publish(&mut self, out: Vec<Published>) -> Vec<Bytes> {
            out.iter()
                .filter_map(|p| {
                    let f = EncodedFrame::binary(p.msg());
                    self.core.publish(&self.market, p, &f).map(|o| o.payload)
                })
                .collect()
        }

        fn snapshot(&mut self, symbol: &str) -> Vec<Bytes> {
            let mut out = Vec::new();
            let snap = pb::BookSnapshot {
                symbol: symbol.into(),
                seq: 1,
                bids: vec![pb::Level {
                    price: 100,
                    size: 1,
                }],
                asks: vec![pb::Level {
                    price: 110,
                    size: 1,
                }],
                price_decimals: 2,
                ..Default::default()
            };
            self.feed_seq.insert(symbol.into(), 1);
            self.market
                .handle_snapshot(FeedId(1), snap, 5, &mut out)
                .unwrap();
            self.publish(out)
        }

        fn delta(&mut self, symbol: &str, size: i64) -> Bytes {
            let seq = self.feed_seq.get_mut(symbol).unwrap();
            *seq += 1;
            let d = pb::BookDelta {
                symbol: symbol.into(),
                seq: *seq,
                updates: vec![pb::LevelUpdate {
                    side: pb::Side::Bid as i32,
                    price: 100,
                    size,
                }],
                ..Default::default()
            };
            let mut out = Vec::new();
            self.market.handle_delta(FeedId(1), d, 6, &mut out).unwrap();
            self.publish(out).remove(0)
        }

        fn trade(&mut self, symbol: &str) -> Bytes {
            let t = pb::Trade {
                symbol: symbol.into(),
                price: 105,
                size: 1,
                ..Default::default()
            };
            let mut out = Vec::new();
            self.market.handle_trade(FeedId(1), t, 6, &mut out).unwrap();
            self.publish(out).remove(0)
        }

        fn beat(&mut self, now: u64) -> Bytes {
            self.core
                .poll_heartbeat(&self.market, now)
                .remove(0)
                .payload
        }

        fn answer(&mut self, symbol: &str) -> Bytes {
            self.core.answer_snapshot(&self.market, symbol)
        }
    }

    struct Edge {
        market: Market,
        core: EdgeCore,
        out: Vec<Published>,
    }

    impl Edge {
        fn new() -> Edge {
            Edge {
                market: Market::new(),
                core: EdgeCore::new(EdgeConfig::default(), 7),
                out: Vec::new(),
            }
        }

        fn send(&mut self, msg: Inbound, now: u64) {
            self.core
                .handle_inbound(&mut self.market, msg, now, &mut self.out);
        }

        fn beat(&mut self, payload: Bytes, now: u64) {
            self.send(Inbound::Heartbeat { payload }, now);
        }

        fn data(&mut self, symbol: &str, payload: Bytes, now: u64) {
            self.send(
                Inbound::Data {
                    symbol: Arc::from(symbol),
                    payload,
                },
                now,
            );
        }

        fn want(&mut self, symbol: &str, now: u64) {
            let id = self.market.symbol_id(symbol).unwrap();
            self.core.handle_interest(&mut self.market, id, true, now);
        }

        /// `o`'s beat, first interest, then `o`'s answer: live on `symbol`.
        fn follow(&mut self, o: &mut Origin, symbol: &str) {
            self.beat(o.beat(0), 0);
            self.want(symbol, 0);
            self.commands();
            self.reply(symbol, o.answer(symbol), MS);
        }

        fn reply(&mut self, symbol: &str, payload: Bytes, now: u64) {
            let reply = Inbound::SnapshotReply {
                symbol: symbol.into(),
                payload,
            };
            self.send(reply, now);
        }

        fn commands(&mut self) -> Vec<Command> {
            std::iter::from_fn(|| self.core.poll_command()).collect()
        }

        fn tick(&mut self, now: u64) {
            self.core
                .handle_timeout(&mut self.market, now, &mut self.out);
        }

        fn seq(&self, symbol: &str) -> u64 {
            self.market
                .snapshot_seq(self.market.symbol_id(symbol).unwrap())
        }

        fn stale(&self, symbol: &str) -> Option<FeedStale> {
            self.market
                .stale_reason(self.market.symbol_id(symbol).unwrap())
        }
    }

    fn request(symbol: &str, origin: &str) -> Command {
        Command::RequestSnapshot {
            symbol: symbol.into(),
            origin: origin.into(),
        }
    }

    #[test]
    fn first_interest_subscribes_then_requests_and_buffered_deltas_follow_the_snapshot() {
        let mut o = Origin::new("a", 7);
        let mut e = Edge::new();
        o.snapshot("X");
        e.beat(o.beat(0), 0);
        e.want("X", MS);
        assert_eq!(
            e.commands(),
            [Command::Subscribe { symbol: "X".into() }, request("X", "a")]
        );
        // Deltas 2 and 3 arrive before the answer, which is at 2.
        let d2 = o.delta("X", 2);
        let answer = o.answer("X");
        let d3 = o.delta("X", 3);
        e.data("X", d2, 2 * MS);
        e.data("X", d3, 2 * MS);
        assert!(!e.market.has_book(e.market.symbol_id("X").unwrap()));
        e.send(
            Inbound::SnapshotReply {
                symbol: "X".into(),
                payload: answer,
            },
            3 * MS,
        );
        assert_eq!(e.seq("X"), 3, "snapshot at 2, then the buffered delta 3");
        let id = e.market.symbol_id("X").unwrap();
        assert_eq!(e.market.book(id).checksum(), o.market.book(id).checksum());
        let d4 = o.delta("X", 4);
        e.data("X", d4, 4 * MS);
        assert_eq!(e.seq("X"), 4);
        assert_eq!(e.core.stats().resyncs, 0);
    }

    #[test]
    fn a_gap_turns_the_book_stale_and_resyncs_after_jitter() {
        let mut o = Origin::new("a", 7);
        let mut e = Edge::new();
        o.snapshot("X");
        e.follow(&mut o, "X");
        let _lost = o.delta("X", 2);
        let d3 = o.delta("X", 3);
        e.out.clear();
        e.data("X", d3, 2 * MS);
        assert_eq!(e.stale("X"), Some(FeedStale::FeedGap));
        assert!(matches!(e.out.last(), Some(Published::Stale { .. })));
        assert!(e.commands().is_empty(), "not before the jitter");
        e.tick(2 * MS + EdgeConfig::default().resync_jitter_ns);
        assert_eq!(e.commands(), [request("X", "a")]);
    }

    #[test]
    fn a_thousand_resyncs_never_exceed_the_inflight_bound() {
        let mut o = Origin::new("a", 7);
        let mut e = Edge::new();
        let names: Vec<String> = (0..1000).map(|i| format!("S{i}")).collect();
        for n in &names {
            o.snapshot(n);
        }
        e.beat(o.beat(0), 0);
        for n in &names {
            e.want(n, 0);
        }
        let max = EdgeConfig::default().max_inflight;
        let requests = |cmds: Vec<Command>| {
            cmds.iter()
                .filter(|c| matches!(c, Command::RequestSnapshot { .. }))
                .count()
        };
        assert_eq!(requests(e.commands()), max);
        e.tick(10 * MS);
        assert_eq!(requests(e.commands()), 0, "none until answers come back");
        for n in names.iter().take(5) {
            let answer = o.answer(n);
            e.reply(n, answer, 11 * MS);
        }
        e.tick(12 * MS);
        assert_eq!(requests(e.commands()), 5, "as many as were answered");
    }

    #[test]
    fn a_heartbeat_ahead_for_two_beats_is_a_lost_message() {
        let mut o = Origin::new("a", 7);
        let mut e = Edge::new();
        o.snapshot("X");
        e.follow(&mut o, "X");
        // The last delta never arrives.
        let _lost = o.delta("X", 9);
        e.beat(o.beat(1000 * MS), 1000 * MS);
        assert_eq!(e.stale("X"), None, "one beat may race the data");
        e.beat(o.beat(2000 * MS), 2000 * MS);
        assert_eq!(e.stale("X"), Some(FeedStale::FeedGap));
        assert_eq!(e.core.stats().heartbeat_resyncs, 1);
    }

    #[test]
    fn a_silent_origin_is_feed_down_and_its_next_beat_resyncs() {
        let mut o = Origin::new("a", 7);
        let mut e = Edge::new();
        o.snapshot("X");
        e.follow(&mut o, "X");
        let timeout = EdgeConfig::default().heartbeat_timeout_ns;
        e.tick(timeout);
        assert_eq!(e.stale("X"), None);
        e.tick(timeout + MS);
        assert_eq!(e.stale("X"), Some(FeedStale::FeedDown));
        e.tick(timeout + 10_000 * MS);
        assert!(e.commands().is_empty(), "no request to a silent origin");
        let now = timeout + 20_000 * MS;
        e.beat(o.beat(now), now);
        e.tick(now + EdgeConfig::default().resync_jitter_ns);
        assert_eq!(e.commands(), [request("X", "a")]);
    }

    #[test]
    fn lost_trades_are_reported_by_the_next_trade_or_two_heartbeats() {
        let mut o = Origin::new("a", 7);
        let mut e = Edge::new();
        o.snapshot("X");
        e.follow(&mut o, "X");
        let t1 = o.trade("X");
        let _t2 = o.trade("X");
        let t3 = o.trade("X");
        e.data("X", t1, 2 * MS);
        e.data("X", t3, 2 * MS);
        let id = e.market.symbol_id("X").unwrap();
        assert_eq!(e.core.poll_lost_trades(), Some((id, 1)));
        // The last trade lost: the heartbeats say so, twice.
        let _t4 = o.trade("X");
        e.beat(o.beat(1000 * MS), 1000 * MS);
        assert_eq!(e.core.poll_lost_trades(), None);
        e.beat(o.beat(2000 * MS), 2000 * MS);
        assert_eq!(e.core.poll_lost_trades(), Some((id, 1)));
        assert_eq!(e.market.trade_seq(id), 4);
        assert_eq!(e.stale("X"), None, "lost trades leave the book alone");
    }

    #[test]
    fn of_two_origins_the_smallest_name_owns_the_symbol() {
        let mut a = Origin::new("venue-a", 7);
        let mut b = Origin::new("venue-b", 9);
        let mut e = Edge::new();
        a.snapshot("X");
        b.snapshot("X");
        e.beat(b.beat(0), 0);
        e.beat(a.beat(0), 0);
        e.want("X", 0);
        assert_eq!(e.commands()[1], request("X", "venue-a"));
        let answer = a.answer("X");
        e.reply("X", answer, MS);
        let db = b.delta("X", 5);
        e.data("X", db, 2 * MS);
        assert_eq!(e.core.stats().other_origin, 1);
        assert_eq!(e.seq("X"), 1);
        let da = a.delta("X", 6);
        e.data("X", da, 3 * MS);
        assert_eq!(e.seq("X"), 2);
    }
}
