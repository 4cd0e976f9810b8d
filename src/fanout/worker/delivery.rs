//! Ring messages to outboxes: instruments, deltas (in runs), trades,
//! snapshots, feed Stale and ring drops, through a [`Sink`] that admits
//! frames under the slow-consumer policy. The hot path lives here.

use std::collections::VecDeque;
use std::sync::Arc;

use super::sse::SseStreams;
use super::{Conn, ConnState, Instrument, WorkerCore, WorkerStats};
use crate::book::SymbolId;
use crate::book::derived::Channel;
use crate::book::market::FeedStale;
use crate::fanout::frames::{FrameId, Frames};
use crate::fanout::outbox::{Admit, FrameClass, OutboxLimits};
use crate::fanout::render::Rendered;
use crate::fanout::ring::{DataKind, Lane, ToWorker};
use crate::fanout::subs::SubState;
use crate::wire::json::{self, Decimals, render};
use crate::wire::pb::{self, server_message::Body};
use crate::wire::{EncodedFrame, Rendering, StaleReason};
use crate::ws::sse::write_event;

/// A control message rendered at most once per rendering for one event.
#[derive(Default)]
struct ControlFrames([Option<EncodedFrame>; Rendering::COUNT]);

impl ControlFrames {
    /// Starts with the frames a ring message brought.
    fn from_rendered(frames: &Rendered) -> ControlFrames {
        let mut c = ControlFrames::default();
        for r in frames.renderings().iter() {
            c.0[r.index()] = frames.get(r).cloned();
        }
        c
    }

    fn get(&mut self, r: Rendering, msg: &pb::ServerMessage, buf: &mut String) -> EncodedFrame {
        self.0[r.index()]
            .get_or_insert_with(|| encode_control(r, msg, buf))
            .clone()
    }
}

/// A control message (an answer, a notice) for one connection in its
/// rendering. Never compressed: these are short (RSV1 clear is always
/// allowed, RFC 7692 §6). An SSE event is complete (no `id:` line).
pub(super) fn encode_control(
    rendering: Rendering,
    msg: &pb::ServerMessage,
    buf: &mut String,
) -> EncodedFrame {
    match rendering {
        Rendering::Proto | Rendering::ProtoDeflate => EncodedFrame::binary(msg),
        Rendering::Json | Rendering::JsonDeflate => {
            buf.clear();
            render(msg, Decimals::default(), buf);
            EncodedFrame::text(buf)
        }
        Rendering::Sse => {
            buf.clear();
            render(msg, Decimals::default(), buf);
            let mut bytes = Vec::with_capacity(buf.len() + 32);
            write_event(json::type_of(buf.as_bytes()), buf.as_bytes(), &mut bytes);
            EncodedFrame::raw(&bytes)
        }
    }
}

pub(super) fn stale_msg(symbol: &str, dropped: u64, reason: StaleReason) -> pb::ServerMessage {
    pb::ServerMessage {
        body: Some(Body::Stale(pb::Stale {
            symbol: symbol.to_string(),
            dropped,
            reason: reason.as_str().to_string(),
        })),
    }
}

/// A delta of a run being delivered: its seq and its frames in the table,
/// by [`Rendering::index`] (protobuf always there).
#[derive(Debug, Clone, Copy)]
pub(super) struct RunDelta {
    seq: u64,
    prev_seq: u64,
    ids: [Option<FrameId>; Rendering::COUNT],
}

/// A run of deltas joined into one frame per encoding, built the first time a
/// subscriber takes it whole (`deliver_deltas_to_subscribers`).
///
/// NB: queueing one frame per subscriber for a run of k deltas instead of k
/// frames divides the per-subscriber cost of delivery (queue, iovecs, counts)
/// by k; the bytes on the wire are the same k WebSocket frames. Measured with
/// the side-by-side benchmark, `tuning/CAPACITY.md` §9.
///
/// Per rendering: `None` not built yet, `Some(None)` some delta of the run
/// lacks that rendering (or it is SSE, whose every event takes its own `id:`
/// line), `Some(Some((frame, bytes of all its deltas but the last)))`.
#[derive(Default)]
struct JoinedRun([Option<Option<(FrameId, usize)>>; Rendering::COUNT]);

impl JoinedRun {
    fn frame(
        &mut self,
        rendering: Rendering,
        run: &[RunDelta],
        frames: &mut Frames,
        now_ns: u64,
    ) -> Option<(FrameId, usize)> {
        // A rendering whose frames are those of protobuf or JSON (short
        // messages, uncompressed) shares their joined frame.
        let r = [Rendering::Proto, Rendering::Json]
            .into_iter()
            .map(Rendering::index)
            .find(|&plain| run.iter().all(|d| d.ids[rendering.index()] == d.ids[plain]))
            .unwrap_or(rendering.index());
        *self.0[r].get_or_insert_with(|| {
            if rendering == Rendering::Sse || run.iter().any(|d| d.ids[r].is_none()) {
                return None;
            }
            // One allocation per run, shared by every subscriber that takes it.
            let len = run
                .iter()
                .filter_map(|d| d.ids[r])
                .map(|id| frames.get(id).len())
                .sum();
            let mut bytes = Vec::with_capacity(len);
            let mut prefix = 0;
            for id in run.iter().filter_map(|d| d.ids[r]) {
                prefix = bytes.len();
                bytes.extend_from_slice(frames.get(id).as_bytes());
            }
            Some((
                frames.insert(EncodedFrame::from_frame_bytes(bytes), now_ns),
                prefix,
            ))
        })
    }

    /// Gives back the table's count of each joined frame built.
    fn release(self, frames: &mut Frames) {
        for (id, _) in self.0.into_iter().flatten().flatten() {
            frames.release(id);
        }
    }
}

/// Borrows the [`Sink`] fields of a `WorkerCore` (disjoint from `subs`, so a
/// delivery loop can hold a symbol's subscriber list and the sink at once).
macro_rules! sink {
    ($core:expr) => {
        Sink {
            conns: &mut $core.conns,
            frames: &mut $core.frames,
            current: None,
            dirty: &mut $core.dirty,
            dropping: &mut $core.dropping,
            pending_close: &mut $core.pending_close,
            stats: &mut $core.stats,
            limits: &$core.limits,
            delivered_msgs: 0,
            delivered_bytes: 0,
            sse: &mut $core.sse,
            event: None,
        }
    };
}

/// Mutable pieces of the core that the delivery loops need beside the index.
pub(super) struct Sink<'a> {
    conns: &'a mut [Conn],
    frames: &'a mut Frames,
    /// The frame being fanned out, in `frames` (one count held here until
    /// the sink is dropped or another frame comes).
    current: Option<FrameId>,
    dirty: &'a mut VecDeque<u32>,
    dropping: &'a mut Vec<u32>,
    pending_close: &'a mut Vec<u32>,
    stats: &'a mut WorkerStats,
    limits: &'a OutboxLimits,
    /// Counted locally in the delivery loop, added to `stats` on drop.
    delivered_msgs: u64,
    delivered_bytes: u64,
    /// SSE connections' positions (their events' `id:` lines).
    sse: &'a mut SseStreams,
    /// The stream, lane and seq of the market-data message being admitted,
    /// for SSE positions (`None`: a notice that moves no position).
    pub(super) event: Option<(SymbolId, Lane, u64)>,
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.current.take() {
            self.frames.release(id);
        }
        self.stats.delivered_msgs += self.delivered_msgs;
        self.stats.delivered_bytes += self.delivered_bytes;
    }
}

impl Sink<'_> {
    /// Admits one frame for `conn`; marks it dirty, notes a dropping episode,
    /// or schedules a close.
    pub(super) fn admit(
        &mut self,
        conn: u32,
        frame: &EncodedFrame,
        class: FrameClass,
        now_ns: u64,
    ) -> Admit {
        let id = self.frame_id(frame, now_ns);
        self.admit_id(conn, id, class, now_ns)
    }

    /// Whether the slow-consumer policy gives every delta of a run the same
    /// answer, so the run may be queued (or refused) as one frame: the
    /// connection is over high-water already, or stays under it until the
    /// run's last delta (`prefix_bytes`: the bytes before it).
    fn takes_alike(&self, conn: u32, prefix_bytes: usize) -> bool {
        let backlog = self.conns[conn as usize].outbox.backlog_bytes();
        backlog > self.limits.high_water_bytes
            || backlog + prefix_bytes <= self.limits.high_water_bytes
    }

    /// [`Sink::admit`] of a frame already in the table.
    fn admit_id(&mut self, conn: u32, id: FrameId, class: FrameClass, now_ns: u64) -> Admit {
        self.admit_msgs(conn, id, class, 1, now_ns)
    }

    /// [`Sink::admit_id`] of a frame holding `msgs` messages (a run).
    fn admit_msgs(
        &mut self,
        conn: u32,
        id: FrameId,
        class: FrameClass,
        msgs: u64,
        now_ns: u64,
    ) -> Admit {
        let c = &mut self.conns[conn as usize];
        let admit = c.outbox.admit(self.frames, id, class, self.limits, now_ns);
        match admit {
            Admit::Queue => {
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push_back(conn);
                }
                let sse = c.rendering == Rendering::Sse;
                if class == FrameClass::Control {
                    self.stats.control_frames += 1;
                } else {
                    self.delivered_msgs += msgs;
                    self.delivered_bytes += self.frames.get(id).len() as u64;
                    if sse {
                        self.end_sse_event(conn, id, now_ns);
                    }
                }
            }
            Admit::DropStale => {
                if !c.in_dropping_list {
                    c.in_dropping_list = true;
                    self.dropping.push(conn);
                }
            }
            Admit::Close => self.schedule_close(conn),
        }
        admit
    }

    /// After a market-data event queued for an SSE connection: its `id:`
    /// line, with the connection's positions including this event, and the
    /// blank line that ends it (PROTOCOL §11). Queued as control (never
    /// dropped: it belongs to an event already queued). An event rendered
    /// complete (a notice made for this connection) needs none.
    fn end_sse_event(&mut self, conn: u32, body: FrameId, now_ns: u64) {
        if self.frames.get(body).as_bytes().ends_with(b"\n\n") {
            return;
        }
        let Some(stream) = self.sse.get_mut(&conn) else {
            return;
        };
        if let Some((symbol, lane, seq)) = self.event {
            stream.advance(symbol, lane, seq);
        }
        let mut line = Vec::with_capacity(64);
        stream.id_line(&mut line);
        let id = self.frames.insert(EncodedFrame::raw(&line), now_ns);
        let c = &mut self.conns[conn as usize];
        let admit = c
            .outbox
            .admit(self.frames, id, FrameClass::Control, self.limits, now_ns);
        self.frames.release(id);
        if admit == Admit::Close {
            self.schedule_close(conn);
        }
    }

    /// `frame`'s id in the table: the current one when it is the same frame
    /// (a fan-out loop admits one frame to every subscriber), else a new slot.
    fn frame_id(&mut self, frame: &EncodedFrame, now_ns: u64) -> FrameId {
        if let Some(id) = self.current {
            if self.frames.get(id).same(frame) {
                return id;
            }
            self.frames.release(id);
        }
        let id = self.frames.insert(frame.clone(), now_ns);
        self.current = Some(id);
        id
    }

    /// On the drop path: a subscriber already dropping still checks its
    /// connection's lag (PROTOCOL §7: stale for longer than the max lag → 4001).
    /// Returns whether the connection is closing.
    fn check_lag(&mut self, conn: u32, now_ns: u64) -> bool {
        if self.conns[conn as usize]
            .outbox
            .is_lagging(self.limits, now_ns)
        {
            self.schedule_close(conn);
        }
        self.conns[conn as usize].state != ConnState::Open
    }

    fn schedule_close(&mut self, conn: u32) {
        let c = &mut self.conns[conn as usize];
        if c.state == ConnState::Open {
            c.state = ConnState::Closing;
            self.pending_close.push(conn);
        }
    }
}

impl WorkerCore {
    /// Fan-out of one ring message.
    pub fn handle_ring(&mut self, msg: ToWorker, now_ns: u64) {
        match msg {
            ToWorker::Instrument {
                symbol,
                name,
                price_decimals,
                size_decimals,
                epoch,
            } => self.handle_instrument(symbol, name, price_decimals, size_decimals, epoch),
            ToWorker::Data {
                symbol,
                kind,
                seq,
                prev_seq,
                ingest_ts_ns: _,
                frames,
            } => match kind {
                DataKind::Delta => {
                    let delta = self.run_delta(seq, prev_seq, &frames, now_ns);
                    self.deliver_deltas(symbol, &[delta], now_ns)
                }
                DataKind::Trade => self.deliver_trade(symbol, seq, &frames, now_ns),
                DataKind::BookReplaced => self.deliver_snapshot(symbol, seq, &frames, true, now_ns),
                DataKind::FeedStale(reason) => {
                    self.deliver_feed_stale(symbol, reason, &frames, now_ns)
                }
            },
            ToWorker::Snapshot {
                symbol,
                seq,
                frames,
                stale,
            } => self.handle_snapshot_answer(symbol, seq, frames.as_ref(), stale, now_ns),
            ToWorker::Resumed { token, answer } => self.handle_resumed(token, answer, now_ns),
            ToWorker::Dropped {
                symbol,
                deltas,
                trades,
                feed_down,
            } => {
                self.handle_dropped(symbol, deltas, trades, now_ns);
                if feed_down {
                    self.tell_trades_feed_down(symbol, now_ns);
                }
            }
        }
        self.finish_closes();
    }

    /// Handles messages drained from the ring, in order, leaving `batch`
    /// empty. The outcome is that of [`WorkerCore::handle_ring`] on each in
    /// turn; a run of consecutive deltas of one symbol is delivered subscriber
    /// by subscriber, so each subscriber's queue is visited once per run rather
    /// than once per delta.
    ///
    /// NB: the fan-out benchmark (10,000 subscribers of one symbol) spent ~27%
    /// of the worker at 3 M msgs/s queueing deltas one at a time, nearly all of
    /// it one cache miss per queue visited.
    pub fn handle_ring_batch(&mut self, batch: &mut Vec<ToWorker>, now_ns: u64) {
        let mut run = std::mem::take(&mut self.run);
        let mut msgs = batch.drain(..).peekable();
        while let Some(msg) = msgs.next() {
            let ToWorker::Data {
                symbol,
                kind: DataKind::Delta,
                seq,
                prev_seq,
                frames,
                ..
            } = msg
            else {
                self.handle_ring(msg, now_ns);
                continue;
            };
            run.push(self.run_delta(seq, prev_seq, &frames, now_ns));
            while let Some(ToWorker::Data {
                symbol: next,
                kind: DataKind::Delta,
                ..
            }) = msgs.peek()
                && *next == symbol
            {
                if let Some(ToWorker::Data {
                    seq,
                    prev_seq,
                    frames,
                    ..
                }) = msgs.next()
                {
                    run.push(self.run_delta(seq, prev_seq, &frames, now_ns));
                }
            }
            self.deliver_deltas(symbol, &run, now_ns);
            run.clear();
            self.finish_closes();
        }
        self.run = run;
    }

    /// A delta about to be delivered, its frames in the table (one count each,
    /// given back by `deliver_deltas`).
    fn run_delta(&mut self, seq: u64, prev_seq: u64, frames: &Rendered, now_ns: u64) -> RunDelta {
        let mut ids: [Option<FrameId>; Rendering::COUNT] = [None; Rendering::COUNT];
        for r in frames.renderings().iter() {
            let Some(f) = frames.get(r) else { continue };
            // A rendering that is another's frame (a short message's deflate
            // rendering is its plain one) shares its slot.
            let same = Rendering::ALL[..r.index()]
                .iter()
                .filter_map(|o| ids[o.index()])
                .find(|&id| self.frames.get(id).same(f));
            ids[r.index()] = Some(match same {
                Some(id) => {
                    self.frames.retain(id);
                    id
                }
                None => self.frames.insert(f.clone(), now_ns),
            });
        }
        RunDelta { seq, prev_seq, ids }
    }

    fn handle_instrument(
        &mut self,
        symbol: SymbolId,
        name: Arc<str>,
        price_decimals: u32,
        size_decimals: u32,
        epoch: u64,
    ) {
        let i = symbol.index();
        if self.instruments.len() <= i {
            self.instruments.resize_with(i + 1, || None);
        }
        if let Some(old) = &self.instruments[i]
            && old.name != name
        {
            self.by_name.remove(&old.name);
        }
        self.by_name.insert(name.clone(), symbol);
        self.instruments[i] = Some(Instrument {
            name: name.clone(),
            price_decimals,
            size_decimals,
            epoch,
            derived: None,
        });
        // Its derived streams follow (decimals and epoch changes are rare:
        // a scan of the directory is fine).
        for ins in self.instruments.iter_mut().flatten() {
            if ins.derived.is_some_and(|(s, _)| s == symbol) {
                ins.name = name.clone();
                ins.price_decimals = price_decimals;
                ins.size_decimals = size_decimals;
                ins.epoch = epoch;
            }
        }
    }

    /// The directory entry of a derived stream, copied from its symbol's,
    /// made when a local client first subscribes to it.
    pub(super) fn register_stream(&mut self, stream: SymbolId, symbol: SymbolId, channel: Channel) {
        let Some(base) = self
            .instruments
            .get(symbol.index())
            .and_then(|i| i.as_ref())
        else {
            return;
        };
        let ins = Instrument {
            name: base.name.clone(),
            price_decimals: base.price_decimals,
            size_decimals: base.size_decimals,
            epoch: base.epoch,
            derived: Some((symbol, channel)),
        };
        let i = stream.index();
        if self.instruments.len() <= i {
            self.instruments.resize_with(i + 1, || None);
        }
        self.instruments[i] = Some(ins);
    }

    /// The symbol a stream belongs to and its book channel: a derived
    /// stream's, or the symbol itself with plain `book`.
    pub(super) fn stream_key(&self, stream: SymbolId) -> (SymbolId, Channel) {
        self.instruments
            .get(stream.index())
            .and_then(|i| i.as_ref())
            .and_then(|i| i.derived)
            .unwrap_or((stream, Channel::BOOK))
    }

    /// The channel a subscription on `lane` of `stream` is (PROTOCOL §9).
    pub(super) fn channel_of(&self, stream: SymbolId, lane: Lane) -> Channel {
        match lane {
            Lane::Trades => Channel::Trades,
            Lane::Book => self.stream_key(stream).1,
        }
    }

    pub(super) fn name_of(&self, symbol: SymbolId) -> Arc<str> {
        self.instruments
            .get(symbol.index())
            .and_then(|i| i.as_ref())
            .map_or_else(|| Arc::from(""), |i| i.name.clone())
    }

    pub(super) fn sink(&mut self) -> Sink<'_> {
        sink!(self)
    }

    /// The hot path: one delta to every local book subscriber of `symbol`.
    /// Per subscriber: a state check, a seq compare, a frame pick, an `Arc`
    /// increment, a dirty flag. No hashing, no allocation once warm.
    /// Delivers deltas of `symbol` (in ring order) to its book subscribers:
    /// per subscriber, each delta in turn, exactly as one call per delta
    /// would. Gives back the run's counts in the frame table.
    fn deliver_deltas(&mut self, symbol: SymbolId, run: &[RunDelta], now_ns: u64) {
        let resync = self.deliver_deltas_to_subscribers(symbol, run, now_ns);
        for id in run.iter().flat_map(|d| d.ids).flatten() {
            self.frames.release(id);
        }
        if resync {
            self.request_snapshot(symbol);
        }
    }

    /// The delivery loop of `deliver_deltas`; returns whether a subscriber
    /// now needs a snapshot.
    fn deliver_deltas_to_subscribers(
        &mut self,
        symbol: SymbolId,
        run: &[RunDelta],
        now_ns: u64,
    ) -> bool {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            self.stats.unrouted += run.len() as u64;
            return false;
        };
        let mut sink = sink!(self);
        let mut resync = false;
        let mut joined = JoinedRun::default();
        // The run's first delta follows `first` (its prev_seq); it ends at `last`.
        let (first, last) = match run {
            [first, .., last] => (first.prev_seq, last.seq),
            _ => (0, 0),
        };
        for sub in ss.list_mut(Lane::Book) {
            // A live subscriber that holds the seq before the run takes it
            // whole, as one frame, when the policy would take or refuse
            // every delta of it alike (`Sink::takes_alike`).
            if last != 0
                && sub.state == SubState::Live
                && sub.seq == first
                && let Some((frame, prefix)) = joined.frame(sub.rendering, run, sink.frames, now_ns)
                && sink.takes_alike(sub.conn, prefix)
            {
                let k = run.len() as u64;
                match sink.admit_msgs(sub.conn, frame, FrameClass::Stream, k, now_ns) {
                    Admit::Queue => sub.seq = last,
                    Admit::DropStale => {
                        sub.state = SubState::Dropping;
                        sub.dropped = u32::try_from(k).unwrap_or(u32::MAX);
                        sink.stats.dropped_deltas += k;
                    }
                    Admit::Close => {}
                }
                continue;
            }
            for &RunDelta { seq, prev_seq, ids } in run {
                match sub.state {
                    SubState::Live => {}
                    SubState::Dropping => {
                        sub.dropped = sub.dropped.saturating_add(1);
                        sink.stats.dropped_deltas += 1;
                        if sink.check_lag(sub.conn, now_ns) {
                            break;
                        }
                        continue;
                    }
                    SubState::Awaiting | SubState::AwaitingFeed | SubState::Resuming => break,
                }
                if seq <= sub.seq {
                    // Older than the snapshot it holds (it took a newer one).
                    continue;
                }
                let Some(frame) = ids[sub.rendering.index()] else {
                    // Encoded before this worker's interest in the rendering
                    // reached the market thread: resync with a snapshot.
                    sink.stats.missing_rendering += 1;
                    sub.state = SubState::Awaiting;
                    resync = true;
                    break;
                };
                if prev_seq != sub.seq {
                    // Never send a gap: count the bug and resync this client.
                    sink.stats.contiguity_violations += 1;
                    sub.state = SubState::Awaiting;
                    resync = true;
                    break;
                }
                sink.event = Some((symbol, Lane::Book, seq));
                match sink.admit_id(sub.conn, frame, FrameClass::Stream, now_ns) {
                    Admit::Queue => {
                        debug_assert_eq!(prev_seq, sub.seq, "queued deltas are contiguous");
                        sub.seq = seq;
                    }
                    Admit::DropStale => {
                        sub.state = SubState::Dropping;
                        sub.dropped = 1;
                        sink.stats.dropped_deltas += 1;
                    }
                    // Closing: nothing more is queued for it.
                    Admit::Close => break,
                }
            }
        }
        joined.release(sink.frames);
        resync
    }

    fn deliver_trade(&mut self, symbol: SymbolId, seq: u64, frames: &Rendered, now_ns: u64) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            self.stats.unrouted += 1;
            return;
        };
        let mut sink = sink!(self);
        sink.event = Some((symbol, Lane::Trades, seq));
        for sub in ss.list_mut(Lane::Trades) {
            if sub.state == SubState::Resuming {
                // Its resume answer holds this trade.
                continue;
            }
            if sub.state == SubState::Dropping {
                sub.dropped = sub.dropped.saturating_add(1);
                sink.stats.dropped_trades += 1;
                sink.check_lag(sub.conn, now_ns);
                continue;
            }
            let Some(frame) = frames.get(sub.rendering) else {
                // Trades cannot be recovered; a stream not yet started
                // simply starts with the next trade.
                sink.stats.missing_rendering += 1;
                continue;
            };
            if sub.seq != 0 && seq != sub.seq + 1 {
                sink.stats.contiguity_violations += 1;
            }
            match sink.admit(sub.conn, frame, FrameClass::Stream, now_ns) {
                Admit::Queue => sub.seq = seq,
                Admit::DropStale => {
                    sub.state = SubState::Dropping;
                    sub.dropped = 1;
                    sink.stats.dropped_trades += 1;
                }
                Admit::Close => {}
            }
        }
    }

    /// A full book at `seq`: the answer to a request (only awaiting
    /// subscribers take it) or the feed's replacement (`replaced`: every book
    /// subscriber takes it, except slow consumers, which resync on drain).
    fn deliver_snapshot(
        &mut self,
        symbol: SymbolId,
        seq: u64,
        frames: &Rendered,
        replaced: bool,
        now_ns: u64,
    ) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            self.stats.unrouted += 1;
            return;
        };
        let mut sink = sink!(self);
        sink.event = Some((symbol, Lane::Book, seq));
        let mut rerequest = false;
        for sub in ss.list_mut(Lane::Book) {
            match sub.state {
                SubState::Awaiting | SubState::AwaitingFeed => {}
                SubState::Live if replaced => {}
                SubState::Live | SubState::Resuming => continue,
                SubState::Dropping => {
                    if replaced {
                        sub.dropped = sub.dropped.saturating_add(1);
                    }
                    continue;
                }
            }
            let Some(frame) = frames.get(sub.rendering) else {
                // Encoded before this worker's interest in the rendering
                // reached the market thread: ask again, the next answer has it.
                sink.stats.missing_rendering += 1;
                sub.state = SubState::Awaiting;
                rerequest = true;
                continue;
            };
            if sink.admit(sub.conn, frame, FrameClass::Resync, now_ns) == Admit::Queue {
                sub.state = SubState::Live;
                sub.seq = seq;
                sink.stats.snapshots_delivered += 1;
            }
        }
        drop(sink);
        if rerequest {
            self.request_snapshot(symbol);
        }
    }

    fn handle_snapshot_answer(
        &mut self,
        symbol: SymbolId,
        seq: u64,
        frames: Option<&Rendered>,
        stale: Option<FeedStale>,
        now_ns: u64,
    ) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            self.stats.unrouted += 1;
            return;
        };
        if ss.ignore_answers > 0 {
            ss.ignore_answers -= 1;
            self.stats.snapshot_answers_ignored += 1;
            return;
        }
        ss.snapshot_outstanding = false;
        match (stale, frames) {
            (Some(reason), _) => {
                // PROTOCOL §4: Subscribed, then that Stale at once, then the
                // snapshot when the feed recovers (as BookReplaced).
                let msg = stale_msg(&self.name_of(symbol), 0, reason.into());
                let mut frames = ControlFrames::default();
                let mut i = 0;
                while let Some(sub) = self
                    .subs
                    .symbol(symbol)
                    .and_then(|ss| ss.list(Lane::Book).get(i))
                    .copied()
                {
                    i += 1;
                    if sub.state != SubState::Awaiting {
                        continue;
                    }
                    let frame = frames.get(sub.rendering, &msg, &mut self.json_buf);
                    if self
                        .sink()
                        .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                        == Admit::Queue
                    {
                        self.subs.sub_mut(symbol, Lane::Book, i - 1).state = SubState::AwaitingFeed;
                    }
                }
            }
            (None, Some(frames)) => self.deliver_snapshot(symbol, seq, frames, false, now_ns),
            (None, None) => {
                // Neither a book nor a reason: nothing to deliver; awaiting
                // subscribers are left for the next request or BookReplaced.
                self.stats.snapshot_answers_ignored += 1;
            }
        }
    }

    fn deliver_feed_stale(
        &mut self,
        symbol: SymbolId,
        reason: FeedStale,
        rendered: &Rendered,
        now_ns: u64,
    ) {
        if self.subs.symbol(symbol).is_none() {
            self.stats.unrouted += 1;
            return;
        }
        let fallback = stale_msg(&self.name_of(symbol), 0, reason.into());
        let mut frames = ControlFrames::from_rendered(rendered);
        let channels: &[Lane] = match reason {
            FeedStale::FeedGap => &[Lane::Book],
            FeedStale::FeedDown => &[Lane::Book, Lane::Trades],
        };
        for &c in channels {
            let mut i = 0;
            while let Some(sub) = self
                .subs
                .symbol(symbol)
                .and_then(|ss| ss.list(c).get(i))
                .copied()
            {
                i += 1;
                // Slow book consumers learn it through their resync's answer;
                // trades have no resync, so even a dropping one is told.
                if sub.state == SubState::Dropping && c == Lane::Book
                    || sub.state == SubState::Resuming
                {
                    continue;
                }
                let frame = frames.get(sub.rendering, &fallback, &mut self.json_buf);
                if self
                    .sink()
                    .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                    == Admit::Queue
                    && c == Lane::Book
                {
                    self.subs.sub_mut(symbol, c, i - 1).state = SubState::AwaitingFeed;
                }
            }
        }
    }

    /// The ingest ring was full: book subscribers get `Stale{slow_consumer}` and
    /// resync; trades subscribers get `Stale{slow_consumer_trades}`.
    fn handle_dropped(&mut self, symbol: SymbolId, deltas: u64, trades: u64, now_ns: u64) {
        self.stats.ring_dropped_deltas += deltas;
        self.stats.ring_dropped_trades += trades;
        if self.subs.symbol(symbol).is_none() {
            self.stats.unrouted += 1;
            return;
        }
        let name = self.name_of(symbol);
        if deltas > 0 {
            let msg = stale_msg(&name, deltas, StaleReason::SlowConsumer);
            let mut frames = ControlFrames::default();
            let mut any_awaiting = false;
            let mut i = 0;
            while let Some(sub) = self
                .subs
                .symbol(symbol)
                .and_then(|ss| ss.list(Lane::Book).get(i))
                .copied()
            {
                i += 1;
                match sub.state {
                    SubState::Dropping => {
                        let s = self.subs.sub_mut(symbol, Lane::Book, i - 1);
                        s.dropped = s.dropped.saturating_add(deltas.min(u32::MAX as u64) as u32);
                    }
                    SubState::Live => {
                        let frame = frames.get(sub.rendering, &msg, &mut self.json_buf);
                        if self
                            .sink()
                            .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                            == Admit::Queue
                        {
                            self.subs.sub_mut(symbol, Lane::Book, i - 1).state = SubState::Awaiting;
                            any_awaiting = true;
                        }
                    }
                    // Its answer comes after the lost messages and covers them.
                    SubState::Resuming => {}
                    SubState::Awaiting | SubState::AwaitingFeed => {
                        // What they wait for may be among the lost messages.
                        self.subs.sub_mut(symbol, Lane::Book, i - 1).state = SubState::Awaiting;
                        any_awaiting = true;
                    }
                }
            }
            if any_awaiting {
                self.force_snapshot_request(symbol);
            }
        }
        if trades > 0 {
            let msg = stale_msg(&name, trades, StaleReason::SlowConsumerTrades);
            let mut frames = ControlFrames::default();
            let mut i = 0;
            while let Some(sub) = self
                .subs
                .symbol(symbol)
                .and_then(|ss| ss.list(Lane::Trades).get(i))
                .copied()
            {
                i += 1;
                if sub.state == SubState::Dropping {
                    let s = self.subs.sub_mut(symbol, Lane::Trades, i - 1);
                    s.dropped = s.dropped.saturating_add(trades.min(u32::MAX as u64) as u32);
                    continue;
                }
                let frame = frames.get(sub.rendering, &msg, &mut self.json_buf);
                if self
                    .sink()
                    .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                    == Admit::Queue
                {
                    // The trade stream restarts with the next trade.
                    self.subs.sub_mut(symbol, Lane::Trades, i - 1).seq = 0;
                }
            }
        }
    }

    /// A `Stale{feed_down}` for `symbol` was lost in the ring: its trades
    /// subscribers get it now (book subscribers get it from their resync's
    /// answer, which carries the stale reason).
    fn tell_trades_feed_down(&mut self, symbol: SymbolId, now_ns: u64) {
        let msg = stale_msg(&self.name_of(symbol), 0, StaleReason::FeedDown);
        let mut frames = ControlFrames::default();
        let mut i = 0;
        while let Some(sub) = self
            .subs
            .symbol(symbol)
            .and_then(|ss| ss.list(Lane::Trades).get(i))
            .copied()
        {
            i += 1;
            let frame = frames.get(sub.rendering, &msg, &mut self.json_buf);
            self.sink()
                .admit(sub.conn, &frame, FrameClass::Resync, now_ns);
        }
    }
}
