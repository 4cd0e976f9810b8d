//! [`WorkerCore`]: the sans-IO brain of one worker thread (`worker-N`).
//!
//! Owns: the worker's symbol directory, its subscription index
//! ([`SubIndex`]), one [`Outbox`] per connection, the snapshot-request
//! coalescing, and every counter of the fan-out. The I/O shell (`net::worker`)
//! owns the sockets, the WebSocket codec and the clock, and drives this core.
//!
//! Never: touches a socket, `mio`, a waker or the clock (`now_ns` is an
//! argument), takes a lock, encodes market data (frames come pre-encoded from
//! the ingest thread; only small control answers are encoded here), hashes on
//! the delivery path, or allocates per delivery once warm.
//!
//! # The shell's loop turn
//!
//! 1. Drain the ingest ring in a bounded batch: [`WorkerCore::handle_ring`]
//!    for each message. This only queues shared frames and marks connections
//!    dirty.
//! 2. Feed complete client text messages to [`WorkerCore::handle_text`] and
//!    ws control frames (pong, close) to [`WorkerCore::queue_control`].
//! 3. Push [`WorkerCore::poll_to_ingest`] into the worker → ingest ring; when
//!    the ring is full, hand the message back with
//!    [`WorkerCore::unpoll_to_ingest`] and retry next turn.
//! 4. For [`WorkerCore::poll_dirty`] connections, oldest first, as many as
//!    the turn's budget allows: `writev` of [`Outbox::io_slices`], then
//!    [`WorkerCore::handle_written`] with the byte count the kernel took (this
//!    is where slow consumers are resynced). The dirty queue is FIFO, so a
//!    frame waits at most one pass over the connections that were dirty before
//!    it, whatever arrives meanwhile; [`WorkerCore::dirty_mark`] and
//!    [`WorkerCore::dirty_done`] tell when such a pass is over.
//! 5. For each [`WorkerCore::poll_close`]: queue the close frame
//!    (`queue_control`), flush, then [`WorkerCore::close_conn`].
//! 6. Every ~100 ms (timer wheel): [`WorkerCore::handle_timeout`] (max lag,
//!    release of idle buffers).
//!
//! # Per-subscriber protocol (PROTOCOL §4, §7; DESIGN "Snapshots without gaps")
//!
//! A book subscriber is `Awaiting` (a snapshot request is out, coalesced per
//! symbol), `AwaitingFeed` (told the book is stale for a feed reason, waits for
//! the feed's `BookReplaced`), `Live` (holds snapshot `S` and has been queued
//! exactly `S+1..=seq`), or `Dropping` (its connection is a slow consumer; it
//! gets `Stale{slow_consumer}` and a fresh snapshot when the connection drains
//! below low-water). A delta whose seq is not `last + 1` for a `Live`
//! subscriber is never sent: it is counted as a contiguity violation and the
//! subscriber is resynced.
//!
//! Unsubscribing a known symbol-channel that the connection does not hold is
//! accepted and echoed (lenient, like the major exchange feeds); an unknown
//! symbol is `unknown_symbol` for both ops.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;

use crate::book::SymbolId;
use crate::fanout::frames::{FrameId, Frames};
use crate::fanout::limits::{RateVerdict, RequestLimiter, RequestLimits};
use crate::fanout::outbox::{Admit, Consumed, FrameClass, Outbox, OutboxLimits};
use crate::fanout::request::{ErrorCode, Op, Request, RequestError, parse_request, request_id};
use crate::fanout::ring::{Channel, DataKind, FeedStaleReason, ToIngest, ToWorker};
use crate::fanout::subs::{ConnSub, IndexSizes, SubIndex, SubState, Transitions};
use crate::wire::EncodedFrame;
use crate::wire::json::{Decimals, render};
use crate::wire::pb::{self, server_message::Body};

/// A connection of this worker: a dense slot index chosen by the core, reused
/// after [`WorkerCore::close_conn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// The encoding a connection chose at the upgrade (PROTOCOL §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Proto,
    Json,
}

/// WebSocket close code for a slow consumer (PROTOCOL §7).
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
/// WebSocket close code for sustained request-rate abuse (PROTOCOL §7).
pub const CLOSE_RATE_LIMITED: u16 = 4002;

/// Limits of one worker. Defaults are PROTOCOL's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Most symbol-channels one connection may hold. Default 1000.
    pub max_subscriptions: usize,
    /// Stream frames are dropped above this. Default 256 KiB.
    pub high_water_bytes: usize,
    /// Dropped symbols are resynced below this. Default 64 KiB.
    pub low_water_bytes: usize,
    /// Closed with 4001 above this. Default 4 MiB.
    pub hard_limit_bytes: usize,
    /// Closed with 4001 when dropping for longer than this. Default 10 s.
    pub max_lag_ns: u64,
    /// A drained connection's queue buffer is freed after this long idle.
    /// Default 1 s (a hot connection keeps its buffer between loop turns).
    pub idle_release_ns: u64,
    /// Most ring messages the shell handles per loop turn (for the shell). Default 1024.
    pub ring_batch: usize,
    /// Client request rate per connection (`rate_limited` over it, 4002 on
    /// sustained abuse). Default 10/s, burst 20; strikes 1/s, burst 10.
    pub requests: RequestLimits,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let l = OutboxLimits::default();
        WorkerConfig {
            max_subscriptions: 1000,
            high_water_bytes: l.high_water_bytes,
            low_water_bytes: l.low_water_bytes,
            hard_limit_bytes: l.hard_limit_bytes,
            max_lag_ns: l.max_lag_ns,
            idle_release_ns: 1_000_000_000,
            ring_batch: 1024,
            requests: RequestLimits::default(),
        }
    }
}

impl WorkerConfig {
    fn limits(&self) -> OutboxLimits {
        OutboxLimits {
            high_water_bytes: self.high_water_bytes,
            low_water_bytes: self.low_water_bytes,
            hard_limit_bytes: self.hard_limit_bytes,
            max_lag_ns: self.max_lag_ns,
        }
    }
}

/// Counters and sizes for metrics and for tests (nothing survives a close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    pub connections: usize,
    pub index: IndexSizes,
    pub symbols_known: usize,
    pub awaiting_subs: usize,
    pub dirty_pending: usize,
    /// Frames held by the worker's table for its outboxes (0 when all are empty).
    pub live_frames: usize,
    pub to_ingest_backlog: usize,
    pub closes_pending: usize,
    pub dropping_list: usize,
    pub idle_list: usize,
    pub buffered_bytes: usize,
    pub queue_capacity_bytes: usize,
    /// Market-data frames queued (deltas, trades, snapshots, feed Stale).
    pub delivered_msgs: u64,
    pub delivered_bytes: u64,
    pub control_frames: u64,
    pub snapshots_delivered: u64,
    pub dropped_deltas: u64,
    pub dropped_trades: u64,
    pub ring_dropped_deltas: u64,
    pub ring_dropped_trades: u64,
    pub slow_consumer_resyncs: u64,
    pub slow_consumer_closes: u64,
    pub snapshot_requests_sent: u64,
    pub snapshot_requests_coalesced: u64,
    pub snapshot_answers_ignored: u64,
    pub contiguity_violations: u64,
    pub missing_json: u64,
    pub requests_ok: u64,
    /// Every refused request (the sum of the `rejected_*` below).
    pub requests_rejected: u64,
    pub rejected_bad_request: u64,
    pub rejected_too_many_subscriptions: u64,
    pub rejected_unknown_symbol: u64,
    pub rejected_rate_limited: u64,
    /// Connections closed 4002 for sustained rate abuse.
    pub rate_limit_closes: u64,
    pub unrouted: u64,
    /// Connections closed 4001 because the oldest byte they had not received
    /// (queued, or in the kernel) was older than the maximum lag.
    pub lag_closes: u64,
    /// Age of the oldest byte not yet received by any backlogged connection
    /// of this worker, at the last housekeeping (ns; 0: none).
    pub oldest_backlog_age_ns: u64,
    /// How long connections had been dropping when their resync was queued.
    pub resync_lag: LagHistogram,
}

/// Upper bounds of [`LagHistogram`]'s buckets, ns (the last one is +Inf).
pub const RESYNC_LAG_BOUNDS_NS: [u64; 10] = [
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A fixed-bucket histogram (Prometheus style) of lags, ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagHistogram {
    /// Per bucket of [`RESYNC_LAG_BOUNDS_NS`], then +Inf; not cumulative.
    pub buckets: [u64; RESYNC_LAG_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
    pub count: u64,
}

impl LagHistogram {
    pub fn record(&mut self, lag_ns: u64) {
        let i = RESYNC_LAG_BOUNDS_NS
            .iter()
            .position(|&b| lag_ns <= b)
            .unwrap_or(RESYNC_LAG_BOUNDS_NS.len());
        self.buckets[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(lag_ns);
        self.count += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Free,
    Open,
    /// Closed by the core (4001); removed from every index, waiting for the
    /// shell's `close_conn`.
    Closing,
}

/// Per-connection state. Kept small: idle connections are a memory budget.
///
/// NB: exactly one cache line, aligned (`bench_delta_fanout_per_delivery`:
/// ~15% fewer ns per delivery at 10,000 subscribers than 72 unaligned bytes),
/// so a delivery touches one line of connection state. Cold fields live in
/// the worker's side lists (e.g. the drain time is in `idle`).
#[derive(Debug)]
#[repr(align(64))]
struct Conn {
    outbox: Outbox,
    encoding: Encoding,
    state: ConnState,
    dirty: bool,
    in_dropping_list: bool,
    in_idle_list: bool,
    in_backlog_list: bool,
    /// Written since the kernel's unsent bytes were last measured.
    in_unmeasured_list: bool,
}

impl Conn {
    fn new(encoding: Encoding) -> Conn {
        Conn {
            outbox: Outbox::new(),
            encoding,
            state: ConnState::Open,
            dirty: false,
            in_dropping_list: false,
            in_idle_list: false,
            in_backlog_list: false,
            in_unmeasured_list: false,
        }
    }
}

/// What the core knows of the bytes a connection's kernel socket holds
/// unsent (cold: beside `conns`). Ages are from [`Frames::born_ns`].
#[derive(Debug, Clone, Copy, Default)]
struct KernelBacklog {
    /// The oldest frame of the last write, and that write's size.
    last_write_born_ns: u64,
    last_write_bytes: u32,
    /// The oldest frame of the first write since the last measure (0: none).
    since_measure_born_ns: u64,
    /// When the oldest byte the kernel still holds entered the worker, as
    /// far as the measures tell (0: the kernel holds nothing).
    oldest_born_ns: u64,
}

/// Bytes of per-connection state held by the core outside allocations
/// (connection slot + its subscription list header).
pub const CONN_STATE_BYTES: usize =
    std::mem::size_of::<Conn>() + std::mem::size_of::<Vec<ConnSub>>();

#[derive(Debug)]
struct Instrument {
    name: Arc<str>,
    price_decimals: u32,
    size_decimals: u32,
    epoch: u64,
}

/// A control message rendered at most once per encoding for one event.
#[derive(Default)]
struct FramePair {
    bin: Option<EncodedFrame>,
    json: Option<EncodedFrame>,
}

impl FramePair {
    fn get(&mut self, json: bool, msg: &pb::ServerMessage, buf: &mut String) -> EncodedFrame {
        let slot = if json { &mut self.json } else { &mut self.bin };
        slot.get_or_insert_with(|| encode_control(json, msg, buf))
            .clone()
    }
}

fn encode_control(json: bool, msg: &pb::ServerMessage, buf: &mut String) -> EncodedFrame {
    if json {
        buf.clear();
        render(msg, Decimals::default(), buf);
        EncodedFrame::text(buf)
    } else {
        EncodedFrame::binary(msg)
    }
}

fn stale_msg(symbol: &str, dropped: u64, reason: &str) -> pb::ServerMessage {
    pb::ServerMessage {
        body: Some(Body::Stale(pb::Stale {
            symbol: symbol.to_string(),
            dropped,
            reason: reason.to_string(),
        })),
    }
}

/// A delta of a run being delivered: its seq and its frames in the table.
#[derive(Debug, Clone, Copy)]
struct RunDelta {
    seq: u64,
    bin: FrameId,
    json: Option<FrameId>,
}

/// The frame a subscriber takes: the JSON rendering for JSON subscribers,
/// `None` when it is missing (encoded before this worker's JSON interest
/// reached the ingest thread).
fn frame_for<F>(json_subscriber: bool, bin: F, json: Option<F>) -> Option<F> {
    if json_subscriber { json } else { Some(bin) }
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
        }
    };
}

/// Mutable pieces of the core that the delivery loops need beside the index.
struct Sink<'a> {
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
    fn admit(&mut self, conn: u32, frame: &EncodedFrame, class: FrameClass, now_ns: u64) -> Admit {
        let id = self.frame_id(frame, now_ns);
        self.admit_id(conn, id, class, now_ns)
    }

    /// [`Sink::admit`] of a frame already in the table.
    fn admit_id(&mut self, conn: u32, id: FrameId, class: FrameClass, now_ns: u64) -> Admit {
        let c = &mut self.conns[conn as usize];
        let admit = c.outbox.admit(self.frames, id, class, self.limits, now_ns);
        match admit {
            Admit::Queue => {
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push_back(conn);
                }
                if class == FrameClass::Control {
                    self.stats.control_frames += 1;
                } else {
                    self.delivered_msgs += 1;
                    self.delivered_bytes += self.frames.get(id).len() as u64;
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

/// The sans-IO core of one worker. See the module doc for the loop turn.
///
/// # Invariants
///
/// - A connection slot is in `subs` only while `Open`; `Closing` and `Free`
///   slots hold no subscription (so no delivery can reach them).
/// - `dirty` holds each connection whose `dirty` flag is set exactly once
///   (stale entries of closed slots are skipped by [`WorkerCore::poll_dirty`]).
/// - Per (connection, symbol), the book frames queued are a snapshot `S` then
///   deltas `S+1, S+2, …`, until the next Stale or snapshot
///   (`debug_assert!` in the delta loop).
/// - `ToIngest::Interest`/`Json` `on` is emitted before any `SnapshotRequest`
///   that needs it, and exactly at the 0↔1 transitions of the local counts.
pub struct WorkerCore {
    cfg: WorkerConfig,
    limits: OutboxLimits,
    by_name: HashMap<Arc<str>, SymbolId>,
    instruments: Vec<Option<Instrument>>,
    subs: SubIndex,
    conns: Vec<Conn>,
    /// The frames the outboxes hold (see `frames.rs`).
    frames: Frames,
    free: Vec<u32>,
    /// FIFO of connections with output to write (see the module doc).
    dirty: VecDeque<u32>,
    /// Entries ever taken off `dirty` (stale ones included).
    dirty_popped: u64,
    dropping: Vec<u32>,
    /// Connections whose queue drained, with the drain time: their buffers are
    /// freed after `idle_release_ns` if still empty.
    idle: Vec<(u32, u64)>,
    pending_close: Vec<u32>,
    /// Request-rate state per connection slot (cold: beside `conns`, not in them).
    limiters: Vec<RequestLimiter>,
    /// The kernel side of each connection's backlog (cold, beside `conns`).
    kernel: Vec<KernelBacklog>,
    /// Connections with bytes queued after a blocked write or unsent in the
    /// kernel: the only ones whose lag housekeeping checks.
    backlogged: Vec<u32>,
    /// Connections written since their kernel backlog was last measured.
    unmeasured: Vec<u32>,
    closes: VecDeque<(ConnId, u16, &'static str)>,
    to_ingest: VecDeque<ToIngest>,
    stats: WorkerStats,
    json_buf: String,
    /// Scratch for `handle_ring_batch`: the run of deltas being gathered.
    run: Vec<RunDelta>,
}

static EMPTY_OUTBOX: Outbox = Outbox::new();

impl WorkerCore {
    pub fn new(cfg: WorkerConfig) -> WorkerCore {
        WorkerCore {
            limits: cfg.limits(),
            cfg,
            by_name: HashMap::new(),
            instruments: Vec::new(),
            subs: SubIndex::new(),
            conns: Vec::new(),
            frames: Frames::new(),
            free: Vec::new(),
            dirty: VecDeque::new(),
            dirty_popped: 0,
            dropping: Vec::new(),
            idle: Vec::new(),
            pending_close: Vec::new(),
            limiters: Vec::new(),
            kernel: Vec::new(),
            backlogged: Vec::new(),
            unmeasured: Vec::new(),
            closes: VecDeque::new(),
            to_ingest: VecDeque::new(),
            stats: WorkerStats::default(),
            json_buf: String::new(),
            run: Vec::new(),
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// A new connection, after its WebSocket upgrade.
    pub fn open_conn(&mut self, encoding: Encoding) -> ConnId {
        if let Some(slot) = self.free.pop() {
            self.conns[slot as usize] = Conn::new(encoding);
            self.limiters[slot as usize] = RequestLimiter::default();
            self.kernel[slot as usize] = KernelBacklog::default();
            return ConnId(slot);
        }
        self.conns.push(Conn::new(encoding));
        self.limiters.push(RequestLimiter::default());
        self.kernel.push(KernelBacklog::default());
        ConnId((self.conns.len() - 1) as u32)
    }

    /// Forgets `conn`: removes it from every index (emitting `Interest`/`Json`
    /// `off` where a local count drops to zero), frees its queue, and makes its
    /// slot reusable. Idempotent.
    pub fn close_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else {
            return;
        };
        if c.state == ConnState::Free {
            return;
        }
        c.state = ConnState::Free;
        c.outbox.clear(&mut self.frames);
        c.dirty = false;
        c.in_dropping_list = false;
        c.in_idle_list = false;
        c.in_backlog_list = false;
        c.in_unmeasured_list = false;
        self.remove_all_subs(conn.0);
        self.closes.retain(|(id, _, _)| *id != conn);
        self.free.push(conn.0);
    }

    /// The shell started closing `conn` (a close frame of its own or the
    /// peer's, a heartbeat timeout, shutdown): from now on no market data
    /// (RFC 6455 §5.5.1: no data frame after a close frame) and no requests;
    /// it leaves every index now. Control frames (the close frame) are still
    /// queued until [`WorkerCore::close_conn`]. Idempotent.
    pub fn handle_closing(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else {
            return;
        };
        if c.state == ConnState::Open {
            c.state = ConnState::Closing;
            self.remove_all_subs(conn.0);
        }
    }

    /// One client request (PROTOCOL §6). Answers are queued on the connection.
    ///
    /// The request rate is checked first: over it, the answer is
    /// `Error{rate_limited}` whatever the request says (its `id` echoed when
    /// readable), and a connection that keeps going over it is closed with
    /// 4002 (reported by [`WorkerCore::poll_close`]).
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now_ns: u64) {
        if self.conns.get(conn.0 as usize).map(|c| c.state) != Some(ConnState::Open) {
            return;
        }
        let result = match self.limiters[conn.0 as usize].check(&self.cfg.requests, now_ns) {
            RateVerdict::Allow => parse_request(text).and_then(|req| match req.op {
                Op::Subscribe => self.subscribe(conn.0, req, now_ns),
                Op::Unsubscribe => self.unsubscribe(conn.0, req, now_ns),
            }),
            RateVerdict::Limited => Err(RequestError {
                id: request_id(text),
                code: ErrorCode::RateLimited,
                message: "over the request rate limit".to_string(),
            }),
            RateVerdict::Close => {
                self.stats.rate_limit_closes += 1;
                self.close_rate_limited(conn.0);
                return;
            }
        };
        if let Err(e) = result {
            self.stats.requests_rejected += 1;
            match e.code {
                ErrorCode::BadRequest => self.stats.rejected_bad_request += 1,
                ErrorCode::TooManySubscriptions => self.stats.rejected_too_many_subscriptions += 1,
                ErrorCode::UnknownSymbol => self.stats.rejected_unknown_symbol += 1,
                ErrorCode::RateLimited => self.stats.rejected_rate_limited += 1,
            }
            let msg = pb::ServerMessage {
                body: Some(Body::Error(pb::Error {
                    id: e.id,
                    code: e.code.as_str().to_string(),
                    message: e.message,
                })),
            };
            self.send_control(conn.0, &msg, now_ns);
        } else {
            self.stats.requests_ok += 1;
        }
        self.finish_closes();
    }

    /// Whether `conn` has more than the high-water mark queued: the shell
    /// stops reading it (its requests and pings wait) until it drains.
    pub fn over_high_water(&self, conn: ConnId) -> bool {
        self.outbox(conn).backlog_bytes() > self.cfg.high_water_bytes
    }

    /// A ws control frame (pong, close) for `conn`: never dropped.
    pub fn queue_control(&mut self, conn: ConnId, frame: EncodedFrame) {
        if self
            .conns
            .get(conn.0 as usize)
            .is_none_or(|c| c.state == ConnState::Free)
        {
            return;
        }
        self.sink().admit(conn.0, &frame, FrameClass::Control, 0);
    }

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
                ingest_ts_ns: _,
                bin,
                json,
            } => match kind {
                DataKind::Delta => {
                    let delta = self.run_delta(seq, bin, json, now_ns);
                    self.deliver_deltas(symbol, &[delta], now_ns)
                }
                DataKind::Trade => self.deliver_trade(symbol, seq, &bin, json.as_ref(), now_ns),
                DataKind::BookReplaced => {
                    self.deliver_snapshot(symbol, seq, &bin, json.as_ref(), true, now_ns)
                }
                DataKind::FeedStale(reason) => {
                    self.deliver_feed_stale(symbol, reason, &bin, json.as_ref(), now_ns)
                }
            },
            ToWorker::Snapshot {
                symbol,
                seq,
                bin,
                json,
                stale,
            } => {
                self.handle_snapshot_answer(symbol, seq, bin.as_ref(), json.as_ref(), stale, now_ns)
            }
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
                bin,
                json,
                ..
            } = msg
            else {
                self.handle_ring(msg, now_ns);
                continue;
            };
            run.push(self.run_delta(seq, bin, json, now_ns));
            while let Some(ToWorker::Data {
                symbol: next,
                kind: DataKind::Delta,
                ..
            }) = msgs.peek()
                && *next == symbol
            {
                if let Some(ToWorker::Data { seq, bin, json, .. }) = msgs.next() {
                    run.push(self.run_delta(seq, bin, json, now_ns));
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
    fn run_delta(
        &mut self,
        seq: u64,
        bin: EncodedFrame,
        json: Option<EncodedFrame>,
        now_ns: u64,
    ) -> RunDelta {
        RunDelta {
            seq,
            bin: self.frames.insert(bin, now_ns),
            json: json.map(|j| self.frames.insert(j, now_ns)),
        }
    }

    /// The socket of `conn` accepted `n` bytes of [`Outbox::io_slices`].
    /// Resyncs the dropped symbols when a dropping episode ends.
    pub fn handle_written(&mut self, conn: ConnId, n: usize, now_ns: u64) -> Consumed {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else {
            return Consumed::Drained;
        };
        if c.state == ConnState::Free {
            return Consumed::Drained;
        }
        if n > 0 && !c.in_unmeasured_list {
            c.in_unmeasured_list = true;
            self.unmeasured.push(conn.0);
        }
        if let Some(head) = c.outbox.head() {
            let k = &mut self.kernel[conn.0 as usize];
            k.last_write_born_ns = self.frames.born_ns(head);
            k.last_write_bytes = n.min(u32::MAX as usize) as u32;
            if k.since_measure_born_ns == 0 {
                k.since_measure_born_ns = k.last_write_born_ns;
            }
        }
        let dropping_since = c.outbox.dropping_since_ns();
        let consumed = c.outbox.consume(n, &self.limits, &mut self.frames);
        self.after_consumed(conn.0, consumed, dropping_since, now_ns);
        self.finish_closes();
        consumed
    }

    /// The kernel holds `bytes` of `conn`'s output unsent (`SIOCOUTQNSD`,
    /// measured by the shell after a blocked write, and every housekeeping
    /// turn while it is not zero). They count in the connection's backlog and
    /// in its lag; a dropping episode may end here.
    pub fn handle_kernel_unsent(&mut self, conn: ConnId, bytes: usize, now_ns: u64) -> Consumed {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else {
            return Consumed::Drained;
        };
        if c.state == ConnState::Free {
            return Consumed::Drained;
        }
        let k = &mut self.kernel[conn.0 as usize];
        k.oldest_born_ns = if bytes == 0 {
            0
        } else if bytes <= k.last_write_bytes as usize {
            // Every unsent byte is from the last write.
            k.last_write_born_ns
        } else if k.oldest_born_ns != 0 {
            k.oldest_born_ns
        } else {
            k.since_measure_born_ns.max(1)
        };
        k.since_measure_born_ns = 0;
        let dropping_since = c.outbox.dropping_since_ns();
        let consumed = c.outbox.set_kernel_unsent(bytes, &self.limits);
        if bytes > 0 && !c.in_backlog_list {
            c.in_backlog_list = true;
            self.backlogged.push(conn.0);
        }
        self.after_consumed(conn.0, consumed, dropping_since, now_ns);
        self.finish_closes();
        consumed
    }

    /// `conn`'s socket would take no more: its queue is a backlog whose lag
    /// housekeeping watches.
    pub fn handle_blocked(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn.0 as usize)
            && c.state != ConnState::Free
            && !c.in_backlog_list
        {
            c.in_backlog_list = true;
            self.backlogged.push(conn.0);
        }
    }

    /// A connection written since its kernel backlog was last measured (each
    /// once; the shell measures a bounded number per housekeeping turn, so a
    /// write that the kernel took but could not send is seen within about a
    /// second, without a syscall per write).
    pub fn poll_unmeasured(&mut self) -> Option<ConnId> {
        while let Some(id) = self.unmeasured.pop() {
            let c = &mut self.conns[id as usize];
            if c.in_unmeasured_list {
                c.in_unmeasured_list = false;
                if c.state != ConnState::Free {
                    return Some(ConnId(id));
                }
            }
        }
        None
    }

    /// Connections whose kernel socket held unsent bytes at the last measure
    /// (the shell measures them again each housekeeping turn).
    pub fn kernel_backlogged(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.backlogged
            .iter()
            .filter(|&&id| self.conns[id as usize].outbox.kernel_unsent_bytes() > 0)
            .map(|&id| ConnId(id))
    }

    /// Age of the oldest byte `conn` has not received, as far as the engine
    /// knows: its queue's first frame, or the kernel's oldest unsent byte.
    fn backlog_age_ns(&self, conn: u32, now_ns: u64) -> u64 {
        let c = &self.conns[conn as usize];
        let queued = c.outbox.head().map(|h| self.frames.born_ns(h));
        let k = self.kernel[conn as usize].oldest_born_ns;
        let kernel = (c.outbox.kernel_unsent_bytes() > 0 && k != 0).then_some(k);
        match queued.into_iter().chain(kernel).min() {
            Some(born) => now_ns.saturating_sub(born),
            None => 0,
        }
    }

    fn after_consumed(
        &mut self,
        conn: u32,
        consumed: Consumed,
        dropping_since: Option<u64>,
        now_ns: u64,
    ) {
        let c = &mut self.conns[conn as usize];
        match consumed {
            Consumed::ResyncDue => {
                if let Some(since) = dropping_since {
                    self.stats.resync_lag.record(now_ns.saturating_sub(since));
                }
                if c.state == ConnState::Open {
                    self.resync_dropped(conn, now_ns);
                }
            }
            Consumed::Drained => {
                if !c.in_idle_list {
                    c.in_idle_list = true;
                    self.idle.push((conn, now_ns));
                }
            }
            Consumed::Pending => {}
        }
    }

    /// Periodic duties: closes connections dropping for longer than the max
    /// lag (4001) and frees the queue buffers of connections idle for
    /// `idle_release_ns`. Returns how many connections it acted on.
    pub fn handle_timeout(&mut self, now_ns: u64) -> usize {
        let mut done = self.check_backlog_lag(now_ns);
        let mut i = 0;
        while i < self.dropping.len() {
            let id = self.dropping[i];
            let c = &mut self.conns[id as usize];
            if c.state == ConnState::Open && c.outbox.dropping_since_ns().is_some() {
                if c.outbox.is_lagging(&self.limits, now_ns) {
                    c.state = ConnState::Closing;
                    self.pending_close.push(id);
                    done += 1;
                } else {
                    i += 1;
                    continue;
                }
            }
            c.in_dropping_list = false;
            self.dropping.swap_remove(i);
        }
        let mut i = 0;
        while i < self.idle.len() {
            let (id, drained_at_ns) = self.idle[i];
            let c = &mut self.conns[id as usize];
            if c.state != ConnState::Free && c.outbox.is_empty() {
                if now_ns.saturating_sub(drained_at_ns) < self.cfg.idle_release_ns {
                    i += 1;
                    continue;
                }
                done += usize::from(c.outbox.release_if_idle());
            }
            c.in_idle_list = false;
            self.idle.swap_remove(i);
        }
        self.finish_closes();
        done
    }

    /// PROTOCOL §7 wherever the backlog sits: a backlogged connection whose
    /// oldest unreceived byte is older than the maximum lag is closed 4001
    /// (queued bytes, or bytes the kernel holds unsent). Connections with
    /// nothing left leave the list. Also publishes the oldest age.
    fn check_backlog_lag(&mut self, now_ns: u64) -> usize {
        let mut done = 0;
        let mut oldest = 0;
        let mut i = 0;
        while i < self.backlogged.len() {
            let id = self.backlogged[i];
            let c = &self.conns[id as usize];
            let keep = c.state == ConnState::Open
                && (!c.outbox.is_empty() || c.outbox.kernel_unsent_bytes() > 0);
            if keep {
                let age = self.backlog_age_ns(id, now_ns);
                if age > self.cfg.max_lag_ns {
                    self.stats.lag_closes += 1;
                    let c = &mut self.conns[id as usize];
                    c.state = ConnState::Closing;
                    self.pending_close.push(id);
                    done += 1;
                } else {
                    oldest = oldest.max(age);
                    i += 1;
                    continue;
                }
            }
            self.conns[id as usize].in_backlog_list = false;
            self.backlogged.swap_remove(i);
        }
        self.stats.oldest_backlog_age_ns = oldest;
        done
    }

    /// The next message for the worker → ingest ring.
    pub fn poll_to_ingest(&mut self) -> Option<ToIngest> {
        self.to_ingest.pop_front()
    }

    /// Hands back a message the ring could not take; it is sent first next time.
    pub fn unpoll_to_ingest(&mut self, msg: ToIngest) {
        self.to_ingest.push_front(msg);
    }

    /// A connection with output queued since it was last returned; each once.
    pub fn poll_dirty(&mut self) -> Option<ConnId> {
        while let Some(id) = self.dirty.pop_front() {
            self.dirty_popped += 1;
            let c = &mut self.conns[id as usize];
            if c.dirty {
                c.dirty = false;
                return Some(ConnId(id));
            }
        }
        None
    }

    /// The dirty queue's current end, as a count of entries ever queued: once
    /// [`WorkerCore::dirty_done`] reaches it, every connection that had output
    /// queued at this moment has been handed out by `poll_dirty`.
    pub fn dirty_mark(&self) -> u64 {
        self.dirty_popped + self.dirty.len() as u64
    }

    /// Entries of the dirty queue handed out or skipped so far (see `dirty_mark`).
    pub fn dirty_done(&self) -> u64 {
        self.dirty_popped
    }

    /// Whether some connection has output not yet handed out by `poll_dirty`.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A connection the core decided to close, with the close code and reason.
    /// It is already out of every index; the shell sends the close frame and
    /// then calls [`WorkerCore::close_conn`].
    pub fn poll_close(&mut self) -> Option<(ConnId, u16, &'static str)> {
        self.closes.pop_front()
    }

    /// Fills `out` with `conn`'s unwritten bytes, in order, for one `writev`
    /// (then [`WorkerCore::handle_written`]). Returns the slices filled: 0 when
    /// nothing is queued or the id is unknown.
    pub fn io_slices<'a>(&'a self, conn: ConnId, out: &mut [IoSlice<'a>]) -> usize {
        self.conns
            .get(conn.0 as usize)
            .map_or(0, |c| c.outbox.io_slices(&self.frames, out))
    }

    /// The queue of `conn` (an empty one for an unknown id).
    pub fn outbox(&self, conn: ConnId) -> &Outbox {
        self.conns
            .get(conn.0 as usize)
            .map_or(&EMPTY_OUTBOX, |c| &c.outbox)
    }

    /// Counters plus sizes computed now (O(connections + symbols): for scrapes
    /// and tests, not per tick).
    pub fn stats(&self) -> WorkerStats {
        let mut s = self.stats;
        s.connections = self
            .conns
            .iter()
            .filter(|c| c.state != ConnState::Free)
            .count();
        s.index = self.subs.sizes();
        s.symbols_known = self.by_name.len();
        s.dirty_pending = self.conns.iter().filter(|c| c.dirty).count();
        s.to_ingest_backlog = self.to_ingest.len();
        s.closes_pending = self.closes.len();
        s.dropping_list = self.dropping.len();
        s.idle_list = self.idle.len();
        s.buffered_bytes = self.conns.iter().map(|c| c.outbox.buffered_bytes()).sum();
        s.queue_capacity_bytes = self.conns.iter().map(|c| c.outbox.capacity_bytes()).sum();
        s.live_frames = self.frames.live();
        s.awaiting_subs = (0..self.instruments.len() as u32)
            .filter_map(|i| self.subs.symbol(SymbolId(i)))
            .map(|ss| {
                ss.list(Channel::Book)
                    .iter()
                    .filter(|s| matches!(s.state, SubState::Awaiting | SubState::AwaitingFeed))
                    .count()
            })
            .sum();
        s
    }

    /// Verifies the index invariants (tests and debugging; O(index)).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.subs.check()?;
        for (i, c) in self.conns.iter().enumerate() {
            if c.state != ConnState::Open && self.subs.conn_count(i as u32) > 0 {
                return Err(format!("conn {i} is {:?} but holds subscriptions", c.state));
            }
        }
        Ok(())
    }

    // ---- requests ----------------------------------------------------------

    fn lookup(&self, name: &str) -> Option<SymbolId> {
        self.by_name.get(name).copied()
    }

    fn subscribe(&mut self, conn: u32, req: Request, now_ns: u64) -> Result<(), RequestError> {
        // too_many_subscriptions before unknown_symbol (PROTOCOL §6): an unknown
        // symbol counts as new.
        // What the connection holds, by (symbol, channel): one pass over its
        // subscriptions per request, so a request of many symbols costs
        // O(symbols + held), never symbols × held.
        let held_at: HashMap<(SymbolId, Channel), usize> = self
            .subs
            .conn_subs(conn)
            .iter()
            .map(|c| ((c.symbol, c.channel), c.pos()))
            .collect();
        let held = held_at.len();
        let mut added = 0usize;
        for name in &req.symbols {
            let id = self.lookup(name);
            for c in req.channels.iter() {
                if id.is_none_or(|id| !held_at.contains_key(&(id, c))) {
                    added += 1;
                }
            }
        }
        if held + added > self.cfg.max_subscriptions {
            return Err(RequestError {
                id: req.id,
                code: ErrorCode::TooManySubscriptions,
                message: format!(
                    "{} symbol-channels held, {added} more requested, limit {}",
                    held, self.cfg.max_subscriptions
                ),
            });
        }
        let ids = self.resolve(&req)?;
        let instruments = ids
            .iter()
            .map(|id| {
                // `resolve` only returns ids present in the directory.
                let ins = self.instruments[id.0 as usize]
                    .as_ref()
                    .expect("resolved id is known");
                pb::Instrument {
                    symbol: ins.name.to_string(),
                    price_decimals: ins.price_decimals as i32,
                    size_decimals: ins.size_decimals as i32,
                    epoch: ins.epoch,
                }
            })
            .collect();
        let channels = req.channels.names();
        let msg = pb::ServerMessage {
            body: Some(Body::Subscribed(pb::Subscribed {
                id: req.id,
                symbols: req.symbols,
                channels,
                instruments,
            })),
        };
        self.send_control(conn, &msg, now_ns);
        let json = self.conns[conn as usize].encoding == Encoding::Json;
        for id in ids {
            for c in req.channels.iter() {
                match held_at.get(&(id, c)).copied() {
                    None => {
                        let state = if c == Channel::Book {
                            SubState::Awaiting
                        } else {
                            SubState::Live
                        };
                        let (_, t) = self.subs.insert(conn, id, c, json, state);
                        self.emit_transitions(id, c, t, true);
                    }
                    Some(pos) => {
                        if c == Channel::Book {
                            // A client-requested resync: a fresh snapshot.
                            let sub = self.subs.sub_mut(id, c, pos);
                            sub.state = SubState::Awaiting;
                            sub.dropped = 0;
                        }
                    }
                }
                if c == Channel::Book {
                    self.request_snapshot(id);
                }
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, conn: u32, req: Request, now_ns: u64) -> Result<(), RequestError> {
        let ids = self.resolve(&req)?;
        // Only what is held is looked for (a request may name 10,000 symbols).
        let held: HashSet<(SymbolId, Channel)> = self
            .subs
            .conn_subs(conn)
            .iter()
            .map(|c| (c.symbol, c.channel))
            .collect();
        for id in ids {
            for c in req.channels.iter() {
                if !held.contains(&(id, c)) {
                    continue;
                }
                if let Some(t) = self.subs.remove(conn, id, c) {
                    self.emit_transitions(id, c, t, false);
                }
            }
        }
        let msg = pb::ServerMessage {
            body: Some(Body::Unsubscribed(pb::Unsubscribed {
                id: req.id,
                symbols: req.symbols,
                channels: req.channels.names(),
            })),
        };
        self.send_control(conn, &msg, now_ns);
        Ok(())
    }

    fn resolve(&self, req: &Request) -> Result<Vec<SymbolId>, RequestError> {
        req.symbols
            .iter()
            .map(|name| {
                self.lookup(name).ok_or_else(|| RequestError {
                    id: req.id,
                    code: ErrorCode::UnknownSymbol,
                    message: format!("unknown symbol {name:?}"),
                })
            })
            .collect()
    }

    fn emit_transitions(&mut self, symbol: SymbolId, channel: Channel, t: Transitions, on: bool) {
        if t.interest {
            self.to_ingest.push_back(ToIngest::Interest {
                symbol,
                channel,
                on,
            });
            if !on && channel == Channel::Book {
                // Answers to requests made before this point predate a gap in
                // the data the worker receives: ignore them, ask afresh later.
                if let Some(ss) = self.subs.symbol_mut(symbol)
                    && ss.snapshot_outstanding
                {
                    ss.snapshot_outstanding = false;
                    ss.ignore_answers = ss.ignore_answers.saturating_add(1);
                }
            }
        }
        if t.json {
            self.to_ingest.push_back(ToIngest::Json { symbol, on });
        }
    }

    fn send_control(&mut self, conn: u32, msg: &pb::ServerMessage, now_ns: u64) {
        let json = self.conns[conn as usize].encoding == Encoding::Json;
        let frame = encode_control(json, msg, &mut self.json_buf);
        self.sink().admit(conn, &frame, FrameClass::Control, now_ns);
    }

    /// One `SnapshotRequest` per symbol while one is outstanding.
    fn request_snapshot(&mut self, symbol: SymbolId) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            return;
        };
        if ss.snapshot_outstanding {
            self.stats.snapshot_requests_coalesced += 1;
        } else {
            ss.snapshot_outstanding = true;
            self.stats.snapshot_requests_sent += 1;
            self.to_ingest
                .push_back(ToIngest::SnapshotRequest { symbol });
        }
    }

    /// Like [`Self::request_snapshot`], but asks again even if a request is
    /// outstanding (its answer may be lost, e.g. after the ring dropped data).
    fn force_snapshot_request(&mut self, symbol: SymbolId) {
        if let Some(ss) = self.subs.symbol_mut(symbol) {
            ss.snapshot_outstanding = false;
        }
        self.request_snapshot(symbol);
    }

    // ---- ring messages -----------------------------------------------------

    fn handle_instrument(
        &mut self,
        symbol: SymbolId,
        name: Arc<str>,
        price_decimals: u32,
        size_decimals: u32,
        epoch: u64,
    ) {
        let i = symbol.0 as usize;
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
            name,
            price_decimals,
            size_decimals,
            epoch,
        });
    }

    fn name_of(&self, symbol: SymbolId) -> Arc<str> {
        self.instruments
            .get(symbol.0 as usize)
            .and_then(|i| i.as_ref())
            .map_or_else(|| Arc::from(""), |i| i.name.clone())
    }

    fn sink(&mut self) -> Sink<'_> {
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
        for d in run {
            self.frames.release(d.bin);
            if let Some(j) = d.json {
                self.frames.release(j);
            }
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
        for sub in ss.list_mut(Channel::Book) {
            for &RunDelta { seq, bin, json } in run {
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
                    SubState::Awaiting | SubState::AwaitingFeed => break,
                }
                if seq <= sub.seq {
                    // Older than the snapshot it holds (it took a newer one).
                    continue;
                }
                let Some(frame) = frame_for(sub.json, bin, json) else {
                    sink.stats.missing_json += 1;
                    sub.state = SubState::Awaiting;
                    resync = true;
                    break;
                };
                if seq != sub.seq + 1 {
                    // Never send a gap: count the bug and resync this client.
                    sink.stats.contiguity_violations += 1;
                    sub.state = SubState::Awaiting;
                    resync = true;
                    break;
                }
                match sink.admit_id(sub.conn, frame, FrameClass::Stream, now_ns) {
                    Admit::Queue => {
                        debug_assert_eq!(seq, sub.seq + 1, "queued deltas are contiguous");
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
        resync
    }

    fn deliver_trade(
        &mut self,
        symbol: SymbolId,
        seq: u64,
        bin: &EncodedFrame,
        json: Option<&EncodedFrame>,
        now_ns: u64,
    ) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            self.stats.unrouted += 1;
            return;
        };
        let mut sink = sink!(self);
        for sub in ss.list_mut(Channel::Trades) {
            if sub.state == SubState::Dropping {
                sub.dropped = sub.dropped.saturating_add(1);
                sink.stats.dropped_trades += 1;
                sink.check_lag(sub.conn, now_ns);
                continue;
            }
            let Some(frame) = frame_for(sub.json, bin, json) else {
                // Trades cannot be recovered; a stream not yet started
                // simply starts with the next trade.
                sink.stats.missing_json += 1;
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
        bin: &EncodedFrame,
        json: Option<&EncodedFrame>,
        replaced: bool,
        now_ns: u64,
    ) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            self.stats.unrouted += 1;
            return;
        };
        let mut sink = sink!(self);
        let mut rerequest = false;
        for sub in ss.list_mut(Channel::Book) {
            match sub.state {
                SubState::Awaiting | SubState::AwaitingFeed => {}
                SubState::Live if replaced => {}
                SubState::Live => continue,
                SubState::Dropping => {
                    if replaced {
                        sub.dropped = sub.dropped.saturating_add(1);
                    }
                    continue;
                }
            }
            let Some(frame) = frame_for(sub.json, bin, json) else {
                // Encoded before this worker's JSON interest reached the
                // ingest thread: ask again, the next answer carries JSON.
                sink.stats.missing_json += 1;
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
        bin: Option<&EncodedFrame>,
        json: Option<&EncodedFrame>,
        stale: Option<FeedStaleReason>,
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
        match (stale, bin) {
            (Some(reason), _) => {
                // PROTOCOL §4: Subscribed, then that Stale at once, then the
                // snapshot when the feed recovers (as BookReplaced).
                let msg = stale_msg(&self.name_of(symbol), 0, reason.as_str());
                let mut frames = FramePair::default();
                let mut i = 0;
                while let Some(sub) = self
                    .subs
                    .symbol(symbol)
                    .and_then(|ss| ss.list(Channel::Book).get(i))
                    .copied()
                {
                    i += 1;
                    if sub.state != SubState::Awaiting {
                        continue;
                    }
                    let frame = frames.get(sub.json, &msg, &mut self.json_buf);
                    if self
                        .sink()
                        .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                        == Admit::Queue
                    {
                        self.subs.sub_mut(symbol, Channel::Book, i - 1).state =
                            SubState::AwaitingFeed;
                    }
                }
            }
            (None, Some(bin)) => self.deliver_snapshot(symbol, seq, bin, json, false, now_ns),
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
        reason: FeedStaleReason,
        bin: &EncodedFrame,
        json: Option<&EncodedFrame>,
        now_ns: u64,
    ) {
        if self.subs.symbol(symbol).is_none() {
            self.stats.unrouted += 1;
            return;
        }
        let fallback = stale_msg(&self.name_of(symbol), 0, reason.as_str());
        let mut frames = FramePair {
            bin: Some(bin.clone()),
            json: json.cloned(),
        };
        let channels: &[Channel] = match reason {
            FeedStaleReason::FeedGap => &[Channel::Book],
            FeedStaleReason::FeedDown => &[Channel::Book, Channel::Trades],
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
                if sub.state == SubState::Dropping && c == Channel::Book {
                    continue;
                }
                let frame = frames.get(sub.json, &fallback, &mut self.json_buf);
                if self
                    .sink()
                    .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                    == Admit::Queue
                    && c == Channel::Book
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
            let msg = stale_msg(&name, deltas, "slow_consumer");
            let mut frames = FramePair::default();
            let mut any_awaiting = false;
            let mut i = 0;
            while let Some(sub) = self
                .subs
                .symbol(symbol)
                .and_then(|ss| ss.list(Channel::Book).get(i))
                .copied()
            {
                i += 1;
                match sub.state {
                    SubState::Dropping => {
                        let s = self.subs.sub_mut(symbol, Channel::Book, i - 1);
                        s.dropped = s.dropped.saturating_add(deltas.min(u32::MAX as u64) as u32);
                    }
                    SubState::Live => {
                        let frame = frames.get(sub.json, &msg, &mut self.json_buf);
                        if self
                            .sink()
                            .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                            == Admit::Queue
                        {
                            self.subs.sub_mut(symbol, Channel::Book, i - 1).state =
                                SubState::Awaiting;
                            any_awaiting = true;
                        }
                    }
                    SubState::Awaiting | SubState::AwaitingFeed => {
                        // What they wait for may be among the lost messages.
                        self.subs.sub_mut(symbol, Channel::Book, i - 1).state = SubState::Awaiting;
                        any_awaiting = true;
                    }
                }
            }
            if any_awaiting {
                self.force_snapshot_request(symbol);
            }
        }
        if trades > 0 {
            let msg = stale_msg(&name, trades, "slow_consumer_trades");
            let mut frames = FramePair::default();
            let mut i = 0;
            while let Some(sub) = self
                .subs
                .symbol(symbol)
                .and_then(|ss| ss.list(Channel::Trades).get(i))
                .copied()
            {
                i += 1;
                if sub.state == SubState::Dropping {
                    let s = self.subs.sub_mut(symbol, Channel::Trades, i - 1);
                    s.dropped = s.dropped.saturating_add(trades.min(u32::MAX as u64) as u32);
                    continue;
                }
                let frame = frames.get(sub.json, &msg, &mut self.json_buf);
                if self
                    .sink()
                    .admit(sub.conn, &frame, FrameClass::Resync, now_ns)
                    == Admit::Queue
                {
                    // The trade stream restarts with the next trade.
                    self.subs.sub_mut(symbol, Channel::Trades, i - 1).seq = 0;
                }
            }
        }
    }

    /// A `Stale{feed_down}` for `symbol` was lost in the ring: its trades
    /// subscribers get it now (book subscribers get it from their resync's
    /// answer, which carries the stale reason).
    fn tell_trades_feed_down(&mut self, symbol: SymbolId, now_ns: u64) {
        let msg = stale_msg(&self.name_of(symbol), 0, FeedStaleReason::FeedDown.as_str());
        let mut frames = FramePair::default();
        let mut i = 0;
        while let Some(sub) = self
            .subs
            .symbol(symbol)
            .and_then(|ss| ss.list(Channel::Trades).get(i))
            .copied()
        {
            i += 1;
            let frame = frames.get(sub.json, &msg, &mut self.json_buf);
            self.sink()
                .admit(sub.conn, &frame, FrameClass::Resync, now_ns);
        }
    }

    /// A dropping episode of `conn` ended: report every dropped symbol-channel
    /// (books resync through the coalesced snapshot path).
    fn resync_dropped(&mut self, conn: u32, now_ns: u64) {
        let json = self.conns[conn as usize].encoding == Encoding::Json;
        let mut i = 0;
        while let Some(cs) = self.subs.conn_subs(conn).get(i).copied() {
            i += 1;
            let sub = *self.subs.sub_mut(cs.symbol, cs.channel, cs.pos());
            if sub.state != SubState::Dropping {
                continue;
            }
            let reason = match cs.channel {
                Channel::Book => "slow_consumer",
                Channel::Trades => "slow_consumer_trades",
            };
            let msg = stale_msg(&self.name_of(cs.symbol), u64::from(sub.dropped), reason);
            let frame = encode_control(json, &msg, &mut self.json_buf);
            if self.sink().admit(conn, &frame, FrameClass::Resync, now_ns) != Admit::Queue {
                return;
            }
            self.stats.slow_consumer_resyncs += 1;
            let s = self.subs.sub_mut(cs.symbol, cs.channel, cs.pos());
            s.dropped = 0;
            match cs.channel {
                Channel::Book => {
                    s.state = SubState::Awaiting;
                    self.request_snapshot(cs.symbol);
                }
                Channel::Trades => {
                    s.state = SubState::Live;
                    s.seq = 0;
                }
            }
        }
    }

    fn remove_all_subs(&mut self, conn: u32) {
        let mut removed: Vec<(SymbolId, Channel, Transitions)> = Vec::new();
        self.subs
            .remove_conn(conn, |cs, t| removed.push((cs.symbol, cs.channel, t)));
        for (symbol, channel, t) in removed {
            self.emit_transitions(symbol, channel, t, false);
        }
    }

    /// Closes `conn` with 4002: out of every index now; what is queued
    /// (answers, the `rate_limited` errors) still leaves before the close frame.
    fn close_rate_limited(&mut self, conn: u32) {
        let c = &mut self.conns[conn as usize];
        if c.state != ConnState::Open {
            return;
        }
        c.state = ConnState::Closing;
        self.remove_all_subs(conn);
        self.closes
            .push_back((ConnId(conn), CLOSE_RATE_LIMITED, "rate limited"));
    }

    /// Connections the policy decided to close: out of every index now, their
    /// unstarted frames discarded, reported through `poll_close`.
    fn finish_closes(&mut self) {
        while let Some(id) = self.pending_close.pop() {
            self.stats.slow_consumer_closes += 1;
            self.remove_all_subs(id);
            self.conns[id as usize]
                .outbox
                .discard_unstarted(&mut self.frames);
            self.closes
                .push_back((ConnId(id), CLOSE_SLOW_CONSUMER, "slow consumer"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::IoSlice;

    use proptest::prelude::*;
    use prost::Message;
    use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

    use super::*;

    const BTC: SymbolId = SymbolId(0);
    const ETH: SymbolId = SymbolId(1);
    const NAMES: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];

    // ---- the fake ingest thread: books, sequences, frames encoded once -----

    #[derive(Default, Clone, PartialEq, Debug)]
    struct Levels {
        bids: BTreeMap<i64, i64>,
        asks: BTreeMap<i64, i64>,
    }

    #[derive(Default)]
    struct TruthBook {
        seq: u64,
        trade_seq: u64,
        levels: Levels,
        /// Extra levels that make the snapshot frame large.
        pad_levels: usize,
    }

    struct Ingest {
        books: Vec<TruthBook>,
        rng: u64,
    }

    fn msg(body: Body) -> pb::ServerMessage {
        pb::ServerMessage { body: Some(body) }
    }

    fn frames(m: &pb::ServerMessage) -> (EncodedFrame, EncodedFrame) {
        let mut s = String::new();
        render(m, Decimals::default(), &mut s);
        (EncodedFrame::binary(m), EncodedFrame::text(&s))
    }

    /// A ring data message carrying `m` in both encodings, as the ingest
    /// thread sends it.
    fn data(symbol: SymbolId, kind: DataKind, seq: u64, m: &pb::ServerMessage) -> ToWorker {
        let (bin, json) = frames(m);
        ToWorker::Data {
            symbol,
            kind,
            seq,
            ingest_ts_ns: 0,
            bin,
            json: Some(json),
        }
    }

    impl Ingest {
        fn new() -> Ingest {
            let mut books: Vec<TruthBook> =
                (0..NAMES.len()).map(|_| TruthBook::default()).collect();
            for b in &mut books {
                b.seq = 1;
                b.levels.bids.insert(100, 5);
                b.levels.asks.insert(101, 7);
            }
            Ingest {
                books,
                rng: 0x9e37_79b9_7f4a_7c15,
            }
        }

        fn next(&mut self) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        }

        fn instrument(&self, id: SymbolId) -> ToWorker {
            ToWorker::Instrument {
                symbol: id,
                name: Arc::from(NAMES[id.0 as usize]),
                price_decimals: 0,
                size_decimals: 0,
                epoch: 0,
            }
        }

        fn snapshot_msg(&self, id: SymbolId) -> pb::ServerMessage {
            let b = &self.books[id.0 as usize];
            let mut bids: Vec<pb::Level> = b
                .levels
                .bids
                .iter()
                .rev()
                .map(|(&price, &size)| pb::Level { price, size })
                .collect();
            let asks = b
                .levels
                .asks
                .iter()
                .map(|(&price, &size)| pb::Level { price, size })
                .collect();
            // Padding far below the book, identical in truth (see `truth`).
            for i in 0..b.pad_levels {
                bids.push(pb::Level {
                    price: -1_000_000 - i as i64,
                    size: 1,
                });
            }
            msg(Body::Snapshot(pb::BookSnapshot {
                symbol: NAMES[id.0 as usize].into(),
                seq: b.seq,
                bids,
                asks,
                ..Default::default()
            }))
        }

        fn truth(&self, id: SymbolId) -> Levels {
            let b = &self.books[id.0 as usize];
            let mut l = b.levels.clone();
            for i in 0..b.pad_levels {
                l.bids.insert(-1_000_000 - i as i64, 1);
            }
            l
        }

        fn answer(&self, id: SymbolId) -> ToWorker {
            let (bin, json) = frames(&self.snapshot_msg(id));
            ToWorker::Snapshot {
                symbol: id,
                seq: self.books[id.0 as usize].seq,
                bin: Some(bin),
                json: Some(json),
                stale: None,
            }
        }

        fn delta(&mut self, id: SymbolId) -> ToWorker {
            let r = self.next();
            let side = if r & 1 == 0 {
                pb::Side::Bid
            } else {
                pb::Side::Ask
            };
            let price = if side == pb::Side::Bid {
                90 + (r >> 8) as i64 % 10
            } else {
                101 + (r >> 8) as i64 % 10
            };
            let size = (r >> 16) as i64 % 4;
            let b = &mut self.books[id.0 as usize];
            b.seq += 1;
            let levels = if side == pb::Side::Bid {
                &mut b.levels.bids
            } else {
                &mut b.levels.asks
            };
            if size == 0 {
                levels.remove(&price);
            } else {
                levels.insert(price, size);
            }
            let m = msg(Body::Delta(pb::BookDelta {
                symbol: NAMES[id.0 as usize].into(),
                seq: b.seq,
                updates: vec![pb::LevelUpdate {
                    side: side as i32,
                    price,
                    size,
                }],
                ..Default::default()
            }));
            data(id, DataKind::Delta, b.seq, &m)
        }

        fn trade(&mut self, id: SymbolId) -> ToWorker {
            let b = &mut self.books[id.0 as usize];
            b.trade_seq += 1;
            let m = msg(Body::Trade(pb::Trade {
                symbol: NAMES[id.0 as usize].into(),
                seq: b.trade_seq,
                price: 100,
                size: 1,
                trade_id: format!("t-{}", b.trade_seq),
                ..Default::default()
            }));
            data(id, DataKind::Trade, b.trade_seq, &m)
        }

        fn replace(&mut self, id: SymbolId) -> ToWorker {
            let b = &mut self.books[id.0 as usize];
            b.seq += 1;
            b.levels = Levels::default();
            b.levels.bids.insert(50, 1);
            b.levels.asks.insert(60, 2);
            let seq = self.books[id.0 as usize].seq;
            data(id, DataKind::BookReplaced, seq, &self.snapshot_msg(id))
        }

        fn feed_stale(&self, id: SymbolId, reason: FeedStaleReason) -> ToWorker {
            data(
                id,
                DataKind::FeedStale(reason),
                0,
                &stale_msg(NAMES[id.0 as usize], 0, reason.as_str()),
            )
        }
    }

    // ---- the fake client: ws frames → messages → books ---------------------

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Ev {
        ty: String,
        symbol: String,
        symbols: Vec<String>,
        channels: Vec<String>,
        instruments: usize,
        seq: u64,
        id: u64,
        code: String,
        reason: String,
        dropped: u64,
        bids: Vec<(i64, i64)>,
        asks: Vec<(i64, i64)>,
    }

    fn ev_from_pb(m: pb::ServerMessage) -> Ev {
        let lv = |l: &[pb::Level]| l.iter().map(|l| (l.price, l.size)).collect::<Vec<_>>();
        match m.body.expect("a body") {
            Body::Snapshot(s) => Ev {
                ty: "snapshot".into(),
                symbol: s.symbol,
                seq: s.seq,
                bids: lv(&s.bids),
                asks: lv(&s.asks),
                ..Ev::default()
            },
            Body::Delta(d) => {
                let side = |sd: pb::Side| {
                    d.updates
                        .iter()
                        .filter(|u| u.side == sd as i32)
                        .map(|u| (u.price, u.size))
                        .collect::<Vec<_>>()
                };
                Ev {
                    ty: "delta".into(),
                    seq: d.seq,
                    bids: side(pb::Side::Bid),
                    asks: side(pb::Side::Ask),
                    symbol: d.symbol,
                    ..Ev::default()
                }
            }
            Body::Trade(t) => Ev {
                ty: "trade".into(),
                symbol: t.symbol,
                seq: t.seq,
                ..Ev::default()
            },
            Body::Subscribed(s) => Ev {
                ty: "subscribed".into(),
                id: s.id,
                instruments: s.instruments.len(),
                symbols: s.symbols,
                channels: s.channels,
                ..Ev::default()
            },
            Body::Unsubscribed(u) => Ev {
                ty: "unsubscribed".into(),
                id: u.id,
                symbols: u.symbols,
                channels: u.channels,
                ..Ev::default()
            },
            Body::Error(e) => Ev {
                ty: "error".into(),
                id: e.id,
                code: e.code,
                ..Ev::default()
            },
            Body::Stale(s) => Ev {
                ty: "stale".into(),
                symbol: s.symbol,
                reason: s.reason,
                dropped: s.dropped,
                ..Ev::default()
            },
        }
    }

    fn ev_from_json(text: &str) -> Ev {
        let v: Value = sonic_rs::from_str(text).expect("valid JSON");
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let strs = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_array())
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        let pairs = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_array())
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let p = p.as_array().unwrap();
                            let num = |i: usize| {
                                p.get(i).unwrap().as_str().unwrap().parse::<i64>().unwrap()
                            };
                            (num(0), num(1))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Ev {
            ty: s("type"),
            symbol: s("symbol"),
            symbols: strs("symbols"),
            channels: strs("channels"),
            instruments: v
                .get("instruments")
                .and_then(|x| x.as_array())
                .map_or(0, |a| a.len()),
            seq: n("seq"),
            id: n("id"),
            code: s("code"),
            reason: s("reason"),
            dropped: n("dropped"),
            bids: pairs("bids"),
            asks: pairs("asks"),
        }
    }

    /// Parses complete unmasked server frames (RFC 6455 §5.2: 2/4/10-byte headers).
    fn parse_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            if buf.len() < 2 {
                break;
            }
            assert_eq!(buf[0] & 0x80, 0x80, "FIN");
            assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
            let (hdr, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => (
                    10,
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => break,
                l => (2, l as usize),
            };
            if buf.len() < hdr + len {
                break;
            }
            out.push((buf[0] & 0x0f, buf[hdr..hdr + len].to_vec()));
            buf.drain(..hdr + len);
        }
        out
    }

    struct Client {
        conn: ConnId,
        json: bool,
        buf: Vec<u8>,
        evs: Vec<Ev>,
        books: BTreeMap<String, (u64, Levels)>,
        /// Symbols whose next book message must be a snapshot.
        need_snapshot: Vec<String>,
    }

    impl Client {
        fn apply(&mut self, ev: &Ev) {
            match ev.ty.as_str() {
                "snapshot" => {
                    let mut l = Levels::default();
                    l.bids.extend(ev.bids.iter().copied());
                    l.asks.extend(ev.asks.iter().copied());
                    self.books.insert(ev.symbol.clone(), (ev.seq, l));
                    self.need_snapshot.retain(|s| *s != ev.symbol);
                }
                "delta" => {
                    assert!(
                        !self.need_snapshot.contains(&ev.symbol),
                        "delta after Stale, before a snapshot: {ev:?}"
                    );
                    let (seq, l) = self
                        .books
                        .get_mut(&ev.symbol)
                        .expect("delta before any snapshot");
                    assert_eq!(ev.seq, *seq + 1, "gap or repeat on {}", ev.symbol);
                    *seq = ev.seq;
                    for &(p, s) in &ev.bids {
                        if s == 0 {
                            l.bids.remove(&p);
                        } else {
                            l.bids.insert(p, s);
                        }
                    }
                    for &(p, s) in &ev.asks {
                        if s == 0 {
                            l.asks.remove(&p);
                        } else {
                            l.asks.insert(p, s);
                        }
                    }
                }
                "stale" if ev.reason != "slow_consumer_trades" => {
                    self.need_snapshot.push(ev.symbol.clone());
                }
                _ => {}
            }
        }

        /// The fake socket: takes at most `max_bytes` (one writev), decodes.
        fn read(&mut self, core: &mut WorkerCore, max_bytes: usize, now_ns: u64) -> usize {
            let mut slices = [IoSlice::new(&[]); 64];
            let k = core.io_slices(self.conn, &mut slices);
            let mut took = 0;
            for s in &slices[..k] {
                let n = s.len().min(max_bytes - took);
                self.buf.extend_from_slice(&s[..n]);
                took += n;
            }
            core.handle_written(self.conn, took, now_ns);
            for (op, payload) in parse_frames(&mut self.buf) {
                let ev = match op {
                    1 => ev_from_json(std::str::from_utf8(&payload).unwrap()),
                    2 => ev_from_pb(pb::ServerMessage::decode(payload.as_slice()).unwrap()),
                    other => Ev {
                        ty: format!("opcode-{other}"),
                        ..Ev::default()
                    },
                };
                if op <= 2 {
                    assert_eq!(op == 1, self.json, "frame in the connection's encoding");
                }
                self.apply(&ev);
                self.evs.push(ev);
            }
            took
        }

        fn read_all(&mut self, core: &mut WorkerCore, now_ns: u64) {
            while self.read(core, usize::MAX / 2, now_ns) > 0 {}
        }

        fn take(&mut self) -> Vec<Ev> {
            std::mem::take(&mut self.evs)
        }

        fn types(&mut self) -> Vec<String> {
            self.take()
                .into_iter()
                .map(|e| {
                    if e.ty == "stale" {
                        format!("stale:{}", e.reason)
                    } else {
                        e.ty
                    }
                })
                .collect()
        }
    }

    // ---- the harness --------------------------------------------------------

    struct H {
        core: WorkerCore,
        ing: Ingest,
        now_ns: u64,
    }

    impl H {
        fn new(cfg: WorkerConfig) -> H {
            let mut h = H {
                core: WorkerCore::new(cfg),
                ing: Ingest::new(),
                now_ns: 1_000,
            };
            for i in 0..NAMES.len() as u32 {
                let m = h.ing.instrument(SymbolId(i));
                h.ring(m);
            }
            h
        }

        fn client(&mut self, encoding: Encoding) -> Client {
            Client {
                conn: self.core.open_conn(encoding),
                json: encoding == Encoding::Json,
                buf: Vec::new(),
                evs: Vec::new(),
                books: BTreeMap::new(),
                need_snapshot: Vec::new(),
            }
        }

        fn ring(&mut self, m: ToWorker) {
            self.core.handle_ring(m, self.now_ns);
        }

        fn text(&mut self, c: &Client, text: &str) {
            self.core.handle_text(c.conn, text, self.now_ns);
        }

        fn drain_to_ingest(&mut self) -> Vec<ToIngest> {
            std::iter::from_fn(|| self.core.poll_to_ingest()).collect()
        }

        /// Answers every pending SnapshotRequest like the ingest thread; returns
        /// everything that was polled.
        fn serve(&mut self) -> Vec<ToIngest> {
            let polled = self.drain_to_ingest();
            for m in &polled {
                if let ToIngest::SnapshotRequest { symbol } = m {
                    let a = self.ing.answer(*symbol);
                    self.ring(a);
                }
            }
            polled
        }

        fn delta(&mut self, id: SymbolId) {
            let m = self.ing.delta(id);
            self.ring(m);
        }
    }

    /// The defaults without the request-rate limit (these tests send many
    /// requests at one instant; the limit has its own test).
    fn cfg() -> WorkerConfig {
        WorkerConfig {
            requests: RequestLimits {
                requests: crate::fanout::limits::Rate::UNLIMITED,
                ..RequestLimits::default()
            },
            ..WorkerConfig::default()
        }
    }

    fn sub_text(symbols: &[&str], channels: &[&str], id: u64) -> String {
        format!(
            r#"{{"op":"subscribe","symbols":{},"channels":{},"id":{id}}}"#,
            sonic_rs::to_string(symbols).unwrap(),
            sonic_rs::to_string(channels).unwrap()
        )
    }

    fn unsub_text(symbols: &[&str], channels: &[&str], id: u64) -> String {
        sub_text(symbols, channels, id).replace("\"subscribe\"", "\"unsubscribe\"")
    }

    fn interest(symbol: SymbolId, channel: Channel, on: bool) -> ToIngest {
        ToIngest::Interest {
            symbol,
            channel,
            on,
        }
    }

    // ---- tests --------------------------------------------------------------

    #[test]
    fn per_connection_state_is_small() {
        // Reported in the module's hand-off: keep an eye on it.
        assert_eq!(CONN_STATE_BYTES, 88, "per-connection state changed size");
        assert_eq!(std::mem::size_of::<Outbox>(), 56);
        assert_eq!(std::mem::size_of::<Conn>(), 64);
    }

    #[test]
    fn subscribe_gives_subscribed_then_snapshot_then_contiguous_deltas() {
        for encoding in [Encoding::Proto, Encoding::Json] {
            let mut h = H::new(cfg());
            let mut c = h.client(encoding);
            h.text(&c, &sub_text(&["BTC-USD"], &["book"], 7));
            let polled = h.drain_to_ingest();
            let mut want = vec![interest(BTC, Channel::Book, true)];
            if encoding == Encoding::Json {
                want.push(ToIngest::Json {
                    symbol: BTC,
                    on: true,
                });
            }
            want.push(ToIngest::SnapshotRequest { symbol: BTC });
            assert_eq!(polled, want, "interest before the request that needs it");
            // Deltas already in the ring before the answer: skipped.
            h.delta(BTC);
            h.delta(BTC);
            let a = h.ing.answer(BTC);
            h.ring(a);
            for _ in 0..20 {
                h.delta(BTC);
            }
            c.read_all(&mut h.core, h.now_ns);
            let evs = c.take();
            assert_eq!(evs[0].ty, "subscribed");
            assert_eq!((evs[0].id, evs[0].instruments), (7, 1));
            assert_eq!(evs[0].symbols, vec!["BTC-USD"]);
            assert_eq!(evs[0].channels, vec!["book"]);
            assert_eq!(evs[1].ty, "snapshot");
            assert_eq!(evs[1].seq, 3);
            assert_eq!(evs.len(), 22);
            assert!(
                evs[2..]
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.ty == "delta" && e.seq == 4 + i as u64)
            );
            assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
            assert_eq!(h.core.stats().contiguity_violations, 0);
        }
    }

    #[test]
    fn errors_follow_the_stated_order_and_change_nothing() {
        let mut h = H::new(WorkerConfig {
            max_subscriptions: 2,
            ..cfg()
        });
        let mut c = h.client(Encoding::Proto);
        let cases = [
            ("garbage", 0, "bad_request"),
            // Invalid symbol beats the limit and the unknown symbol.
            (
                r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD","NOPE","bad sym"],"id":1}"#,
                1,
                "bad_request",
            ),
            (
                r#"{"op":"subscribe","symbols":["BTC-USD"],"channels":["candles"],"id":2}"#,
                2,
                "bad_request",
            ),
            // Over the limit beats the unknown symbol.
            (
                r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD","NOPE"],"id":3}"#,
                3,
                "too_many_subscriptions",
            ),
            (
                r#"{"op":"subscribe","symbols":["BTC-USD","NOPE"],"id":4}"#,
                4,
                "unknown_symbol",
            ),
            (
                r#"{"op":"unsubscribe","symbols":["NOPE"],"id":5}"#,
                5,
                "unknown_symbol",
            ),
        ];
        for (text, id, code) in cases {
            h.text(&c, text);
            c.read_all(&mut h.core, h.now_ns);
            let evs = c.take();
            assert_eq!(evs.len(), 1, "{text}");
            assert_eq!(
                (evs[0].ty.as_str(), evs[0].id, evs[0].code.as_str()),
                ("error", id, code),
                "{text}"
            );
        }
        // All-or-nothing: nothing was subscribed, nothing asked of ingest.
        assert_eq!(h.core.stats().index, IndexSizes::default());
        assert!(h.drain_to_ingest().is_empty());
        assert_eq!(h.core.stats().requests_rejected, 6);
    }

    /// PROTOCOL §6–§7: over the request rate, `Error{rate_limited}` (id echoed,
    /// never dropped, nothing changes); sustained, 4002 and no trace left; a
    /// client that backs off is served again.
    #[test]
    fn request_rate_limit_answers_rate_limited_then_closes_4002() {
        use crate::fanout::limits::Rate;
        let mut h = H::new(WorkerConfig {
            requests: RequestLimits {
                requests: Rate {
                    per_sec: 10,
                    burst: 3,
                },
                strikes: Rate {
                    per_sec: 1,
                    burst: 2,
                },
            },
            ..cfg()
        });
        let mut c = h.client(Encoding::Json);
        let mut polite = h.client(Encoding::Proto);
        for id in 1..=3 {
            h.text(&c, &sub_text(&["BTC-USD"], &["trades"], id));
        }
        h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 4));
        h.text(&c, "not even json");
        c.read_all(&mut h.core, h.now_ns);
        let evs = c.take();
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.ty.as_str(), e.id, e.code.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("subscribed", 1, ""),
                ("subscribed", 2, ""),
                ("subscribed", 3, ""),
                ("error", 4, "rate_limited"),
                ("error", 0, "rate_limited"),
            ]
        );
        assert_eq!(
            h.core.stats().index.conn_entries,
            1,
            "ETH was not subscribed"
        );
        assert!(h.core.poll_close().is_none());
        // A second connection has its own bucket.
        h.text(&polite, &sub_text(&["ETH-USD"], &["trades"], 9));
        polite.read_all(&mut h.core, h.now_ns);
        assert_eq!(polite.types(), vec!["subscribed"]);
        // After 2 strikes the third refusal closes with 4002.
        h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 5));
        assert_eq!(
            h.core.poll_close().map(|(id, code, _)| (id, code)),
            Some((c.conn, CLOSE_RATE_LIMITED))
        );
        let s = h.core.stats();
        assert_eq!(s.rejected_rate_limited, 2);
        assert_eq!(s.rate_limit_closes, 1);
        assert_eq!(
            s.index.conn_entries, 1,
            "only the polite connection holds one"
        );
        h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 6));
        assert!(h.core.poll_close().is_none(), "closed once");
        h.core.close_conn(c.conn);
        h.core.check_invariants().unwrap();
        // The polite one, backing off, keeps being served.
        for i in 0..5 {
            h.now_ns += 200_000_000;
            h.text(&polite, &unsub_text(&["ETH-USD"], &["trades"], 20 + i));
        }
        polite.read_all(&mut h.core, h.now_ns);
        assert_eq!(polite.types(), vec!["unsubscribed"; 5]);
    }

    #[test]
    fn too_many_subscriptions_counts_symbol_channels_not_repeats() {
        let mut h = H::new(WorkerConfig {
            max_subscriptions: 3,
            ..cfg()
        });
        let mut c = h.client(Encoding::Json);
        h.text(&c, &sub_text(&["BTC-USD"], &["book", "trades"], 1));
        // Re-subscribing to held ones adds nothing new: 2 + 1 = 3 is fine.
        h.text(&c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 2));
        h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 3));
        c.read_all(&mut h.core, h.now_ns);
        let evs: Vec<_> = c.take().into_iter().map(|e| (e.ty, e.id, e.code)).collect();
        assert_eq!(
            evs,
            vec![
                ("subscribed".into(), 1, String::new()),
                ("subscribed".into(), 2, String::new()),
                ("error".into(), 3, "too_many_subscriptions".into()),
            ]
        );
        assert_eq!(h.core.stats().index.conn_entries, 3);
    }

    #[test]
    fn snapshot_requests_are_coalesced_per_symbol() {
        let mut h = H::new(cfg());
        let mut a = h.client(Encoding::Proto);
        let mut b = h.client(Encoding::Json);
        h.text(&a, &sub_text(&["BTC-USD"], &["book"], 1));
        h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
        let polled = h.drain_to_ingest();
        let requests = polled
            .iter()
            .filter(|m| matches!(m, ToIngest::SnapshotRequest { .. }))
            .count();
        assert_eq!(requests, 1);
        assert_eq!(h.core.stats().snapshot_requests_coalesced, 1);
        let ans = h.ing.answer(BTC);
        h.ring(ans);
        h.delta(BTC);
        for c in [&mut a, &mut b] {
            c.read_all(&mut h.core, h.now_ns);
            assert_eq!(c.types(), vec!["subscribed", "snapshot", "delta"]);
        }
        // Nothing outstanding any more: a new client asks again.
        let c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 3));
        assert_eq!(
            h.drain_to_ingest(),
            vec![ToIngest::SnapshotRequest { symbol: BTC }]
        );
    }

    #[test]
    fn resubscribe_sends_a_fresh_snapshot_and_skips_old_deltas() {
        let mut h = H::new(cfg());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        h.delta(BTC);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 2));
        assert_eq!(
            h.drain_to_ingest(),
            vec![ToIngest::SnapshotRequest { symbol: BTC }]
        );
        h.delta(BTC); // in the ring before the answer: not for this client
        let ans = h.ing.answer(BTC);
        h.ring(ans);
        h.delta(BTC);
        c.read_all(&mut h.core, h.now_ns);
        let evs = c.take();
        let got: Vec<_> = evs.iter().map(|e| (e.ty.as_str(), e.seq)).collect();
        assert_eq!(
            got,
            vec![
                ("subscribed", 0),
                ("snapshot", 1),
                ("delta", 2),
                ("subscribed", 0),
                ("snapshot", 3),
                ("delta", 4)
            ]
        );
        assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
    }

    #[test]
    fn unsubscribe_stops_data_and_interest_follows_zero_one_transitions() {
        let mut h = H::new(cfg());
        let mut a = h.client(Encoding::Proto);
        let mut b = h.client(Encoding::Json);
        h.text(&a, &sub_text(&["BTC-USD"], &["book", "trades"], 1));
        h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
        assert_eq!(
            h.serve(),
            vec![
                interest(BTC, Channel::Book, true),
                ToIngest::SnapshotRequest { symbol: BTC },
                interest(BTC, Channel::Trades, true),
                ToIngest::Json {
                    symbol: BTC,
                    on: true
                },
            ]
        );
        h.delta(BTC);
        let t = h.ing.trade(BTC);
        h.ring(t);
        h.text(&a, &unsub_text(&["BTC-USD"], &["book"], 9));
        assert!(h.drain_to_ingest().is_empty(), "b still holds the book");
        h.delta(BTC);
        let t = h.ing.trade(BTC);
        h.ring(t);
        a.read_all(&mut h.core, h.now_ns);
        let evs = a.take();
        let got: Vec<_> = evs.iter().map(|e| (e.ty.as_str(), e.seq)).collect();
        assert_eq!(
            got,
            vec![
                ("subscribed", 0),
                ("snapshot", 1),
                ("delta", 2),
                ("trade", 1),
                ("unsubscribed", 0),
                ("trade", 2)
            ]
        );
        assert_eq!(evs[4].id, 9);
        assert_eq!(evs[4].channels, vec!["book"]);
        // Lenient: unsubscribing what is not held is echoed.
        h.text(&a, &unsub_text(&["ETH-USD"], &["book", "trades"], 10));
        a.read_all(&mut h.core, h.now_ns);
        assert_eq!(a.types(), vec!["unsubscribed"]);
        h.text(&b, &unsub_text(&["BTC-USD"], &["book"], 11));
        assert_eq!(
            h.drain_to_ingest(),
            vec![
                interest(BTC, Channel::Book, false),
                ToIngest::Json {
                    symbol: BTC,
                    on: false
                }
            ]
        );
        h.core.close_conn(a.conn);
        assert_eq!(
            h.drain_to_ingest(),
            vec![interest(BTC, Channel::Trades, false)]
        );
        b.read_all(&mut h.core, h.now_ns);
        assert_eq!(
            b.types(),
            vec!["subscribed", "snapshot", "delta", "delta", "unsubscribed"]
        );
    }

    #[test]
    fn dirty_queue_is_fifo_and_marks_tell_when_a_pass_is_over() {
        let mut h = H::new(cfg());
        let clients: Vec<Client> = (0..3).map(|_| h.client(Encoding::Proto)).collect();
        for c in &clients {
            h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
        }
        h.serve();
        while h.core.poll_dirty().is_some() {}
        h.delta(BTC);
        let first_mark = h.core.dirty_mark();
        let x = h.core.poll_dirty().unwrap();
        assert!(h.core.dirty_done() < first_mark);
        // x gets more output while the others still wait: it goes to the
        // back of the queue, behind them, once.
        h.delta(BTC);
        let second_mark = h.core.dirty_mark();
        assert_eq!(second_mark, first_mark + 1);
        let y = h.core.poll_dirty().unwrap();
        let z = h.core.poll_dirty().unwrap();
        assert_eq!(h.core.dirty_done(), first_mark);
        assert_eq!(h.core.poll_dirty(), Some(x));
        assert_eq!(h.core.dirty_done(), second_mark);
        assert_eq!(h.core.poll_dirty(), None);
        let mut seen = vec![x, y, z];
        seen.sort();
        assert_eq!(seen, clients.iter().map(|c| c.conn).collect::<Vec<_>>());
    }

    #[test]
    fn poll_dirty_yields_each_connection_once_per_batch() {
        let mut h = H::new(cfg());
        let mut clients: Vec<Client> = (0..3).map(|_| h.client(Encoding::Proto)).collect();
        for c in &clients {
            h.text(c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 1));
        }
        h.serve();
        for _ in 0..50 {
            h.delta(BTC);
            h.delta(ETH);
        }
        let mut dirty: Vec<_> = std::iter::from_fn(|| h.core.poll_dirty()).collect();
        dirty.sort();
        assert_eq!(dirty, clients.iter().map(|c| c.conn).collect::<Vec<_>>());
        for c in &mut clients {
            c.read_all(&mut h.core, h.now_ns);
            assert_eq!(c.take().len(), 1 + 2 + 100);
        }
        assert_eq!(h.core.poll_dirty(), None);
        assert_eq!(h.core.stats().delivered_msgs, 3 * 102);
    }

    #[test]
    fn feed_gap_then_book_replaced() {
        let mut h = H::new(cfg());
        let mut book = h.client(Encoding::Proto);
        let mut trades = h.client(Encoding::Json);
        h.text(&book, &sub_text(&["BTC-USD"], &["book"], 1));
        h.text(&trades, &sub_text(&["BTC-USD"], &["trades"], 2));
        h.serve();
        h.delta(BTC);
        let m = h.ing.feed_stale(BTC, FeedStaleReason::FeedGap);
        h.ring(m);
        let t = h.ing.trade(BTC);
        h.ring(t); // trades keep flowing through a gap
        let m = h.ing.replace(BTC);
        h.ring(m);
        h.delta(BTC);
        book.read_all(&mut h.core, h.now_ns);
        trades.read_all(&mut h.core, h.now_ns);
        assert_eq!(
            book.types(),
            vec![
                "subscribed",
                "snapshot",
                "delta",
                "stale:feed_gap",
                "snapshot",
                "delta"
            ]
        );
        assert_eq!(trades.types(), vec!["subscribed", "trade"]);
        assert_eq!(book.books["BTC-USD"].1, h.ing.truth(BTC));
        assert!(
            h.drain_to_ingest().is_empty(),
            "the snapshot comes from the feed: no request"
        );
    }

    #[test]
    fn feed_down_reaches_trades_and_new_subscribers_wait_for_the_feed() {
        let mut h = H::new(cfg());
        let mut book = h.client(Encoding::Json);
        let mut trades = h.client(Encoding::Proto);
        h.text(&book, &sub_text(&["BTC-USD"], &["book"], 1));
        h.text(&trades, &sub_text(&["BTC-USD"], &["trades"], 2));
        h.serve();
        let m = h.ing.feed_stale(BTC, FeedStaleReason::FeedDown);
        h.ring(m);
        // A late subscriber to the stale book: Subscribed, Stale at once.
        let mut late = h.client(Encoding::Proto);
        h.text(&late, &sub_text(&["BTC-USD"], &["book"], 3));
        assert_eq!(
            h.drain_to_ingest(),
            vec![ToIngest::SnapshotRequest { symbol: BTC }]
        );
        h.ring(ToWorker::Snapshot {
            symbol: BTC,
            seq: 1,
            bin: None,
            json: None,
            stale: Some(FeedStaleReason::FeedDown),
        });
        h.delta(BTC); // cannot happen while stale, but must not reach anyone waiting
        let m = h.ing.replace(BTC);
        h.ring(m);
        h.delta(BTC);
        book.read_all(&mut h.core, h.now_ns);
        trades.read_all(&mut h.core, h.now_ns);
        late.read_all(&mut h.core, h.now_ns);
        assert_eq!(
            book.types(),
            vec![
                "subscribed",
                "snapshot",
                "stale:feed_down",
                "snapshot",
                "delta"
            ]
        );
        assert_eq!(trades.types(), vec!["subscribed", "stale:feed_down"]);
        assert_eq!(
            late.types(),
            vec!["subscribed", "stale:feed_down", "snapshot", "delta"]
        );
        assert_eq!(late.books["BTC-USD"].1, h.ing.truth(BTC));
    }

    #[test]
    fn ring_drops_give_stale_then_resync() {
        let mut h = H::new(cfg());
        let mut a = h.client(Encoding::Proto);
        let mut b = h.client(Encoding::Json);
        h.text(&a, &sub_text(&["BTC-USD"], &["book", "trades"], 1));
        h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
        h.serve();
        h.delta(BTC);
        // The ingest ring lost 3 deltas and 2 trades.
        for _ in 0..3 {
            h.ing.delta(BTC);
        }
        h.ing.trade(BTC);
        h.ing.trade(BTC);
        h.ring(ToWorker::Dropped {
            symbol: BTC,
            deltas: 3,
            trades: 2,
            feed_down: false,
        });
        assert_eq!(h.serve(), vec![ToIngest::SnapshotRequest { symbol: BTC }]);
        h.delta(BTC);
        let t = h.ing.trade(BTC);
        h.ring(t);
        for c in [&mut a, &mut b] {
            c.read_all(&mut h.core, h.now_ns);
            let evs = c.take();
            let stale = evs
                .iter()
                .find(|e| e.reason == "slow_consumer")
                .expect("stale");
            assert_eq!(stale.dropped, 3);
            assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
            assert_eq!(evs.iter().filter(|e| e.ty == "snapshot").count(), 2);
        }
        // a also had trades: the loss is reported, the stream restarts.
        h.text(&a, &sub_text(&["ETH-USD"], &["book"], 3));
        a.read_all(&mut h.core, h.now_ns);
        assert_eq!(h.core.stats().contiguity_violations, 0);
        assert_eq!(h.core.stats().ring_dropped_trades, 2);
    }

    /// PROTOCOL §4: `feed_down` reaches every subscriber, trades-only ones
    /// too, even when the notice itself was lost in a full ring.
    #[test]
    fn a_feed_down_lost_in_the_ring_still_reaches_trades_only_subscribers() {
        let mut h = H::new(cfg());
        let mut a = h.client(Encoding::Proto);
        let mut b = h.client(Encoding::Json);
        h.text(&a, &sub_text(&["BTC-USD"], &["trades"], 1));
        h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
        h.serve();
        // The ring lost the feed_down notice (counted as a book message).
        h.ring(ToWorker::Dropped {
            symbol: BTC,
            deltas: 1,
            trades: 0,
            feed_down: true,
        });
        a.read_all(&mut h.core, h.now_ns);
        let stales: Vec<_> = a
            .take()
            .into_iter()
            .filter(|e| e.ty == "stale")
            .map(|e| e.reason)
            .collect();
        assert_eq!(stales, vec!["feed_down"]);
        // The book subscriber resyncs as for any ring drop.
        assert!(
            h.drain_to_ingest()
                .contains(&ToIngest::SnapshotRequest { symbol: BTC })
        );
        b.read_all(&mut h.core, h.now_ns);
        assert!(b.take().iter().any(|e| e.reason == "slow_consumer"));
    }

    #[test]
    fn ring_dropped_trades_report_slow_consumer_trades() {
        let mut h = H::new(cfg());
        let mut a = h.client(Encoding::Proto);
        h.text(&a, &sub_text(&["BTC-USD"], &["trades"], 1));
        let t = h.ing.trade(BTC);
        h.ring(t);
        h.ing.trade(BTC);
        h.ring(ToWorker::Dropped {
            symbol: BTC,
            deltas: 0,
            trades: 1,
            feed_down: false,
        });
        let t = h.ing.trade(BTC);
        h.ring(t);
        a.read_all(&mut h.core, h.now_ns);
        let evs = a.take();
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.ty.as_str(), e.seq, e.dropped))
            .collect();
        assert_eq!(
            got,
            vec![
                ("subscribed", 0, 0),
                ("trade", 1, 0),
                ("stale", 0, 1),
                ("trade", 3, 0)
            ]
        );
        assert_eq!(evs[2].reason, "slow_consumer_trades");
        assert_eq!(h.core.stats().contiguity_violations, 0);
        assert!(
            h.drain_to_ingest()
                .iter()
                .all(|m| !matches!(m, ToIngest::SnapshotRequest { .. }))
        );
    }

    #[test]
    fn a_gap_is_never_sent_the_client_is_resynced() {
        let mut h = H::new(cfg());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        h.delta(BTC);
        h.ing.delta(BTC); // lost without a Dropped notice: an ingest bug
        h.delta(BTC);
        assert_eq!(h.core.stats().contiguity_violations, 1);
        assert_eq!(h.serve(), vec![ToIngest::SnapshotRequest { symbol: BTC }]);
        h.delta(BTC);
        c.read_all(&mut h.core, h.now_ns); // the client asserts contiguity itself
        assert_eq!(
            c.types(),
            vec!["subscribed", "snapshot", "delta", "snapshot", "delta"]
        );
        assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
    }

    #[test]
    fn json_client_joining_a_proto_request_asks_again_for_json() {
        let mut h = H::new(cfg());
        let mut p = h.client(Encoding::Proto);
        let mut j = h.client(Encoding::Json);
        h.text(&p, &sub_text(&["BTC-USD"], &["book"], 1));
        h.text(&j, &sub_text(&["BTC-USD"], &["book"], 2));
        let polled = h.drain_to_ingest();
        assert_eq!(
            polled.last(),
            Some(&ToIngest::Json {
                symbol: BTC,
                on: true
            })
        );
        // The answer was encoded before the Json interest arrived.
        let ToWorker::Snapshot {
            symbol, seq, bin, ..
        } = h.ing.answer(BTC)
        else {
            unreachable!()
        };
        h.ring(ToWorker::Snapshot {
            symbol,
            seq,
            bin,
            json: None,
            stale: None,
        });
        assert_eq!(h.serve(), vec![ToIngest::SnapshotRequest { symbol: BTC }]);
        h.delta(BTC);
        p.read_all(&mut h.core, h.now_ns);
        j.read_all(&mut h.core, h.now_ns);
        assert_eq!(p.types(), vec!["subscribed", "snapshot", "delta"]);
        assert_eq!(j.types(), vec!["subscribed", "snapshot", "delta"]);
    }

    #[test]
    fn answers_from_before_interest_went_away_are_ignored() {
        let mut h = H::new(cfg());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.text(&c, &unsub_text(&["BTC-USD"], &["book"], 2));
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 3));
        let polled = h.drain_to_ingest();
        assert_eq!(
            polled
                .iter()
                .filter(|m| matches!(m, ToIngest::SnapshotRequest { .. }))
                .count(),
            2
        );
        let old = h.ing.answer(BTC);
        h.ring(old);
        h.ing.delta(BTC); // not routed: no interest at the time
        let fresh = h.ing.answer(BTC);
        h.ring(fresh);
        h.delta(BTC);
        c.read_all(&mut h.core, h.now_ns);
        let got: Vec<_> = c.take().into_iter().map(|e| (e.ty, e.seq)).collect();
        assert_eq!(
            got,
            vec![
                ("subscribed".into(), 0),
                ("unsubscribed".into(), 0),
                ("subscribed".into(), 0),
                ("snapshot".into(), 2),
                ("delta".into(), 3)
            ]
        );
        assert_eq!(h.core.stats().snapshot_answers_ignored, 1);
    }

    fn small_limits() -> WorkerConfig {
        WorkerConfig {
            high_water_bytes: 2_000,
            low_water_bytes: 500,
            hard_limit_bytes: 20_000,
            max_lag_ns: 1_000_000,
            ..cfg()
        }
    }

    #[test]
    fn slow_consumer_drops_above_high_water_and_resyncs_below_low_water() {
        for encoding in [Encoding::Proto, Encoding::Json] {
            let mut h = H::new(small_limits());
            let mut slow = h.client(encoding);
            let mut fast = h.client(Encoding::Proto);
            h.text(
                &slow,
                &sub_text(&["BTC-USD", "ETH-USD"], &["book", "trades"], 1),
            );
            h.text(&fast, &sub_text(&["BTC-USD"], &["book"], 2));
            h.serve();
            let mut dropped_at = None;
            for i in 0..400 {
                h.delta(BTC);
                h.delta(ETH);
                let t = h.ing.trade(BTC);
                h.ring(t);
                fast.read_all(&mut h.core, h.now_ns);
                let buffered = h.core.outbox(slow.conn).buffered_bytes();
                if dropped_at.is_none() && h.core.stats().dropped_deltas > 0 {
                    dropped_at = Some(i);
                    assert!(
                        buffered > 2_000 - 200,
                        "no drop far below high-water ({buffered})"
                    );
                }
                assert!(
                    buffered <= 2_000 + 200,
                    "stream frames stop near high-water ({buffered})"
                );
            }
            assert!(dropped_at.is_some());
            let s = h.core.stats();
            assert!(s.dropped_deltas > 0 && s.dropped_trades > 0);
            // Control answers still go in above high-water.
            h.text(&slow, &sub_text(&["SOL-USD"], &["trades"], 5));
            assert_eq!(
                h.drain_to_ingest()[0],
                interest(SymbolId(2), Channel::Trades, true)
            );
            assert!(h.core.outbox(slow.conn).buffered_bytes() > 2_000);
            // Draining 300 bytes per step: no resync until below low-water.
            let requests = loop {
                let before = h.core.outbox(slow.conn).buffered_bytes();
                slow.read(&mut h.core, 300, h.now_ns);
                let polled = h.drain_to_ingest();
                if !polled.is_empty() {
                    assert!(
                        before.saturating_sub(300) < 500,
                        "resync only below low-water"
                    );
                    break polled;
                }
                assert!(before >= 500, "no resync although below low-water");
            };
            assert_eq!(
                requests,
                vec![
                    ToIngest::SnapshotRequest { symbol: BTC },
                    ToIngest::SnapshotRequest { symbol: ETH }
                ]
            );
            for r in requests {
                if let ToIngest::SnapshotRequest { symbol } = r {
                    let a = h.ing.answer(symbol);
                    h.ring(a);
                }
            }
            h.delta(BTC);
            h.delta(ETH);
            slow.read_all(&mut h.core, h.now_ns);
            fast.read_all(&mut h.core, h.now_ns);
            let evs = slow.take();
            let stales: Vec<_> = evs
                .iter()
                .filter(|e| e.ty == "stale")
                .map(|e| (e.symbol.as_str(), e.reason.as_str()))
                .collect();
            assert_eq!(stales.len(), 3, "{stales:?}");
            assert!(stales.contains(&("BTC-USD", "slow_consumer")));
            assert!(stales.contains(&("ETH-USD", "slow_consumer")));
            assert!(stales.contains(&("BTC-USD", "slow_consumer_trades")));
            let dropped: u64 = evs
                .iter()
                .filter(|e| e.reason == "slow_consumer")
                .map(|e| e.dropped)
                .sum();
            assert_eq!(dropped, s.dropped_deltas);
            assert!(
                evs.iter().any(|e| e.ty == "subscribed" && e.id == 5),
                "control answer survived"
            );
            assert_eq!(slow.books["BTC-USD"].1, h.ing.truth(BTC));
            assert_eq!(slow.books["ETH-USD"].1, h.ing.truth(ETH));
            assert_eq!(
                fast.books["BTC-USD"].1,
                h.ing.truth(BTC),
                "the fast client never noticed"
            );
            assert_eq!(h.core.stats().contiguity_violations, 0);
            assert!(h.core.poll_close().is_none());
        }
    }

    #[test]
    fn hard_limit_closes_with_4001_and_leaves_no_trace() {
        let mut h = H::new(small_limits());
        h.ing.books[0].pad_levels = 1_500; // a ~10 KB snapshot
        let mut c = h.client(Encoding::Proto);
        let keep = h.client(Encoding::Proto);
        h.text(&keep, &sub_text(&["ETH-USD"], &["book"], 1));
        let mut polled = Vec::new();
        for i in 0..3 {
            h.text(&c, &sub_text(&["BTC-USD"], &["book"], 10 + i));
            polled.extend(h.serve());
        }
        let (id, code, _) = h.core.poll_close().expect("closed above the hard limit");
        assert_eq!((id, code), (c.conn, 4001));
        assert!(h.core.outbox(c.conn).buffered_bytes() <= 20_000);
        assert_eq!(polled.last(), Some(&interest(BTC, Channel::Book, false)));
        // Closing frames still go out, then the shell forgets the connection.
        h.core.queue_control(
            c.conn,
            EncodedFrame::from_frame_bytes(vec![0x88, 0x02, 0x0f, 0xa1]),
        );
        c.read_all(&mut h.core, h.now_ns);
        assert_eq!(c.take().last().map(|e| e.ty.as_str()), Some("opcode-8"));
        h.core.close_conn(c.conn);
        let s = h.core.stats();
        assert_eq!(
            (s.connections, s.index.conn_entries, s.index.book_entries),
            (1, 1, 1)
        );
        assert_eq!(s.slow_consumer_closes, 1);
        h.core.check_invariants().unwrap();
    }

    #[test]
    fn max_lag_closes_with_4001_by_timeout_or_on_delivery() {
        for by_timeout in [true, false] {
            let mut h = H::new(small_limits());
            let c = h.client(Encoding::Proto);
            h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
            h.serve();
            while h.core.stats().dropped_deltas == 0 {
                h.delta(BTC);
            }
            h.now_ns += 1_000_000; // exactly max lag: not yet
            assert_eq!(h.core.handle_timeout(h.now_ns), 0);
            h.delta(BTC);
            assert!(h.core.poll_close().is_none());
            h.now_ns += 1;
            if by_timeout {
                assert_eq!(h.core.handle_timeout(h.now_ns), 1);
            } else {
                h.delta(BTC);
            }
            assert_eq!(
                h.core.poll_close().map(|(id, code, _)| (id, code)),
                Some((c.conn, 4001))
            );
            assert_eq!(h.core.stats().index.book_entries, 0);
        }
    }

    /// DESIGN "Freshness": bytes the kernel holds unsent count in the
    /// backlog. A client whose kernel socket took everything is still seen
    /// as behind: dropped above high-water, resynced once the kernel sends.
    #[test]
    fn kernel_unsent_bytes_open_and_close_a_dropping_episode() {
        let mut h = H::new(small_limits());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        c.read_all(&mut h.core, h.now_ns);
        c.take();
        // Everything was "written", but the kernel sent none of 2,500 bytes.
        assert_eq!(
            h.core.handle_kernel_unsent(c.conn, 2_500, h.now_ns),
            Consumed::Drained
        );
        h.delta(BTC);
        assert_eq!(h.core.stats().dropped_deltas, 1, "2,500 > high-water");
        // The kernel sends it all: the resync comes now, not at a write.
        assert_eq!(
            h.core.handle_kernel_unsent(c.conn, 0, h.now_ns),
            Consumed::ResyncDue
        );
        h.serve();
        c.read_all(&mut h.core, h.now_ns);
        let types = c.types();
        assert!(
            types.contains(&"stale:slow_consumer".to_string()),
            "{types:?}"
        );
        assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
        assert_eq!(h.core.stats().resync_lag.count, 1);
    }

    /// PROTOCOL §7 wherever the backlog sits: older than the max lag, in the
    /// queue (a blocked socket) or unsent in the kernel, closes 4001; a
    /// backlog younger than it does not.
    #[test]
    fn a_backlog_older_than_the_max_lag_closes_4001_queued_or_in_the_kernel() {
        for in_kernel in [false, true] {
            let mut h = H::new(small_limits());
            let mut c = h.client(Encoding::Proto);
            h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
            h.serve();
            c.read_all(&mut h.core, h.now_ns);
            // A few deltas, well under high-water, that the client never gets.
            h.delta(BTC);
            h.delta(BTC);
            if in_kernel {
                // Written to the socket, all unsent.
                let n = c.read(&mut h.core, usize::MAX / 2, h.now_ns);
                assert_eq!(
                    h.core.handle_kernel_unsent(c.conn, n, h.now_ns),
                    Consumed::Drained
                );
                assert!(h.core.outbox(c.conn).is_empty());
                assert_eq!(h.core.kernel_backlogged().count(), 1);
            } else {
                h.core.handle_blocked(c.conn);
            }
            assert_eq!(h.core.stats().dropped_deltas, 0);
            h.now_ns += 1_000_000; // exactly the max lag: not yet
            assert_eq!(h.core.handle_timeout(h.now_ns), 0);
            assert!(h.core.stats().oldest_backlog_age_ns >= 1_000_000);
            h.now_ns += 1;
            assert_eq!(h.core.handle_timeout(h.now_ns), 1, "in_kernel={in_kernel}");
            assert_eq!(
                h.core.poll_close().map(|(id, code, _)| (id, code)),
                Some((c.conn, 4001))
            );
            assert_eq!(h.core.stats().lag_closes, 1);
        }
        // A client that keeps up leaves the list and is never closed.
        let mut h = H::new(small_limits());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        h.core.handle_blocked(c.conn);
        c.read_all(&mut h.core, h.now_ns);
        h.core.handle_kernel_unsent(c.conn, 0, h.now_ns);
        h.now_ns += 10_000_000;
        assert_eq!(h.core.handle_timeout(h.now_ns), 0);
        assert!(h.core.poll_close().is_none());
        assert_eq!(h.core.stats().oldest_backlog_age_ns, 0);
    }

    /// Every connection written since its last measure is handed out once
    /// (the shell measures them once a second); closed ones are skipped.
    #[test]
    fn written_connections_are_handed_out_once_for_a_measure() {
        let mut h = H::new(cfg());
        let mut a = h.client(Encoding::Proto);
        let mut b = h.client(Encoding::Json);
        let mut gone = h.client(Encoding::Proto);
        for c in [&a, &b, &gone] {
            h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
        }
        h.serve();
        for c in [&mut a, &mut b, &mut gone] {
            c.read_all(&mut h.core, h.now_ns);
        }
        h.core.close_conn(gone.conn);
        let mut got: Vec<_> = std::iter::from_fn(|| h.core.poll_unmeasured()).collect();
        got.sort();
        assert_eq!(got, vec![a.conn, b.conn]);
        assert_eq!(h.core.poll_unmeasured(), None, "once until written again");
        h.delta(BTC);
        a.read_all(&mut h.core, h.now_ns);
        assert_eq!(h.core.poll_unmeasured(), Some(a.conn));
    }

    /// The kernel's oldest unsent byte is dated by the write it came from:
    /// when every unsent byte is from the last write, that write's oldest
    /// frame; when more is unsent, the older estimate stands.
    #[test]
    fn kernel_backlog_age_follows_the_writes_it_came_from() {
        let mut h = H::new(small_limits());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        c.read_all(&mut h.core, h.now_ns);
        let t0 = h.now_ns;
        h.delta(BTC);
        let first = c.read(&mut h.core, usize::MAX / 2, h.now_ns);
        h.core.handle_kernel_unsent(c.conn, first, h.now_ns);
        h.now_ns += 500_000;
        h.delta(BTC);
        let second = c.read(&mut h.core, usize::MAX / 2, h.now_ns);
        // Both writes unsent: the age is the first one's.
        h.core
            .handle_kernel_unsent(c.conn, first + second, h.now_ns);
        h.now_ns += 400_000;
        h.core.handle_timeout(h.now_ns);
        assert_eq!(h.core.stats().oldest_backlog_age_ns, h.now_ns - t0);
        // The first write was sent: only the second's bytes remain.
        h.core.handle_kernel_unsent(c.conn, second, h.now_ns);
        h.core.handle_timeout(h.now_ns);
        assert_eq!(h.core.stats().oldest_backlog_age_ns, 400_000);
    }

    #[test]
    fn idle_buffers_are_released_after_the_grace_period() {
        let mut h = H::new(WorkerConfig {
            idle_release_ns: 100,
            ..cfg()
        });
        let mut c = h.client(Encoding::Proto);
        assert_eq!(h.core.stats().queue_capacity_bytes, 0);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        c.read_all(&mut h.core, h.now_ns);
        assert!(h.core.stats().queue_capacity_bytes > 0, "kept while hot");
        h.core.handle_timeout(h.now_ns + 99);
        assert!(h.core.stats().queue_capacity_bytes > 0);
        h.core.handle_timeout(h.now_ns + 100);
        assert_eq!(h.core.stats().queue_capacity_bytes, 0);
        assert_eq!(h.core.stats().idle_list, 0);
    }

    #[test]
    fn requests_from_closed_or_unknown_connections_are_ignored() {
        let mut h = H::new(cfg());
        let c = h.client(Encoding::Proto);
        h.core.close_conn(c.conn);
        h.core.close_conn(c.conn);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.core.handle_text(ConnId(999), "{}", 0);
        h.core.queue_control(ConnId(999), EncodedFrame::text("x"));
        assert_eq!(h.core.handle_written(ConnId(999), 10, 0), Consumed::Drained);
        assert!(h.core.outbox(ConnId(999)).is_empty());
        assert_eq!(h.core.stats().index, IndexSizes::default());
        assert!(h.drain_to_ingest().is_empty());
        // The slot is reused.
        assert_eq!(h.core.open_conn(Encoding::Json), c.conn);
    }

    #[derive(Debug, Clone)]
    enum Act {
        Open(bool),
        Sub { conn: usize, syms: u8, chans: u8 },
        Unsub { conn: usize, syms: u8, chans: u8 },
        Close(usize),
        Serve,
        Delta(u8),
        Trade(u8),
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            any::<bool>().prop_map(Act::Open),
            (0usize..8, 1u8..8, 1u8..4).prop_map(|(conn, syms, chans)| Act::Sub {
                conn,
                syms,
                chans
            }),
            (0usize..8, 1u8..8, 1u8..4).prop_map(|(conn, syms, chans)| Act::Unsub {
                conn,
                syms,
                chans
            }),
            (0usize..8).prop_map(Act::Close),
            Just(Act::Serve),
            (0u8..3).prop_map(Act::Delta),
            (0u8..3).prop_map(Act::Trade),
        ]
    }

    fn pick(mask: u8, all: &[&'static str]) -> Vec<&'static str> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| *s)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn close_leaves_every_index_empty_and_interest_balanced(acts in proptest::collection::vec(act(), 1..80)) {
            let mut h = H::new(cfg());
            let mut open: Vec<Client> = Vec::new();
            let mut polled = Vec::new();
            for a in acts {
                match a {
                    Act::Open(json) => open.push(h.client(if json { Encoding::Json } else { Encoding::Proto })),
                    Act::Sub { conn, syms, chans } | Act::Unsub { conn, syms, chans } if !open.is_empty() => {
                        let c = &open[conn % open.len()];
                        let (s, ch) = (pick(syms, &NAMES), pick(chans, &["book", "trades"]));
                        let text = if matches!(a, Act::Sub { .. }) { sub_text(&s, &ch, 1) } else { unsub_text(&s, &ch, 1) };
                        h.text(c, &text);
                    }
                    Act::Close(i) if !open.is_empty() => {
                        let c = open.swap_remove(i % open.len());
                        h.core.close_conn(c.conn);
                    }
                    Act::Serve => polled.extend(h.serve()),
                    Act::Delta(s) => h.delta(SymbolId(s as u32)),
                    Act::Trade(s) => { let t = h.ing.trade(SymbolId(s as u32)); h.ring(t); }
                    _ => {}
                }
                prop_assert!(h.core.check_invariants().is_ok(), "{:?}", h.core.check_invariants());
                for c in &mut open {
                    c.read_all(&mut h.core, h.now_ns); // asserts contiguity per client
                }
            }
            for c in open.drain(..) {
                h.core.close_conn(c.conn);
            }
            polled.extend(h.drain_to_ingest());
            let s = h.core.stats();
            prop_assert_eq!(s.index.book_entries + s.index.trades_entries + s.index.conn_entries + s.index.json_entries, 0);
            prop_assert_eq!(s.index.symbols_with_interest, 0);
            prop_assert_eq!((s.connections, s.dirty_pending, s.buffered_bytes, s.awaiting_subs, s.live_frames), (0, 0, 0, 0, 0));
            prop_assert_eq!(s.contiguity_violations, 0);
            // Interest and JSON interest alternate on/off per key and end off.
            let mut state: BTreeMap<String, bool> = BTreeMap::new();
            for m in &polled {
                let (key, on) = match m {
                    ToIngest::Interest { symbol, channel, on } => (format!("{}/{:?}", symbol.0, channel), *on),
                    ToIngest::Json { symbol, on } => (format!("{}/json", symbol.0), *on),
                    ToIngest::SnapshotRequest { .. } => continue,
                };
                let prev = state.insert(key.clone(), on).unwrap_or(false);
                prop_assert_ne!(prev, on, "{} repeated", key);
            }
            prop_assert!(state.values().all(|on| !on));
        }
    }

    /// Takes up to `budget` bytes of `conn`'s queue, as a socket would.
    fn take_bytes(core: &mut WorkerCore, conn: ConnId, budget: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); 8];
            let k = core.io_slices(conn, &mut slices);
            let before = out.len();
            for s in &slices[..k] {
                let room = budget - out.len();
                out.extend_from_slice(&s[..s.len().min(room)]);
            }
            let took = out.len() - before;
            if took == 0 {
                return out;
            }
            core.handle_written(conn, took, 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// `handle_ring_batch` (runs of deltas delivered subscriber by
        /// subscriber) gives every client the same bytes and the worker the
        /// same counters as `handle_ring` one message at a time, slow
        /// consumers, drops and resyncs included.
        #[test]
        fn batched_delivery_equals_one_message_at_a_time(
            clients in proptest::collection::vec((any::<bool>(), 1u8..8), 1..6),
            steps in proptest::collection::vec((proptest::collection::vec(0u8..10, 1..12), 0usize..700), 1..40),
        ) {
            let cfg = WorkerConfig { high_water_bytes: 600, low_water_bytes: 200, ..cfg() };
            let (mut one, mut batched) = (H::new(cfg), H::new(cfg));
            let mut conns = Vec::new();
            for &(json, mask) in &clients {
                let enc = if json { Encoding::Json } else { Encoding::Proto };
                let (a, b) = (one.client(enc), batched.client(enc));
                let text = sub_text(&pick(mask, &NAMES), &["book", "trades"], 1);
                one.text(&a, &text);
                batched.text(&b, &text);
                conns.push((a.conn, b.conn));
            }
            // One ingest (`one.ing`) feeds both workers, and answers their
            // snapshot requests, which must be the same.
            let serve = |one: &mut H, batched: &mut H| -> Result<(), TestCaseError> {
                let asked = one.drain_to_ingest();
                prop_assert_eq!(&asked, &batched.drain_to_ingest());
                for m in &asked {
                    if let ToIngest::SnapshotRequest { symbol } = m {
                        let answer = one.ing.answer(*symbol);
                        one.ring(answer.clone());
                        batched.core.handle_ring_batch(&mut vec![answer], batched.now_ns);
                    }
                }
                Ok(())
            };
            serve(&mut one, &mut batched)?;
            for (kinds, budget) in steps {
                let mut chunk = Vec::new();
                for k in kinds {
                    let symbol = SymbolId(u32::from(k % 3));
                    chunk.push(if k >= 8 { one.ing.trade(symbol) } else { one.ing.delta(symbol) });
                }
                for m in &chunk {
                    one.ring(m.clone());
                }
                batched.core.handle_ring_batch(&mut chunk, batched.now_ns);
                prop_assert!(chunk.is_empty());
                serve(&mut one, &mut batched)?;
                for &(a, b) in &conns {
                    prop_assert_eq!(take_bytes(&mut one.core, a, budget), take_bytes(&mut batched.core, b, budget));
                }
                serve(&mut one, &mut batched)?;
            }
            for &(a, b) in &conns {
                prop_assert_eq!(take_bytes(&mut one.core, a, usize::MAX), take_bytes(&mut batched.core, b, usize::MAX));
            }
            prop_assert_eq!(one.core.stats(), batched.core.stats());
        }
    }

    /// CPU time of this thread, ns (Linux schedstat; wall time lies on a
    /// shared, loaded machine).
    fn thread_cpu_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(0)
    }

    /// Cost per delivery on the hot path. Run with
    /// `cargo test --release --lib fanout::worker -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_delta_fanout_per_delivery() {
        let subscribers: usize = std::env::var("BENCH_SUBS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        let mut h = H::new(WorkerConfig {
            high_water_bytes: usize::MAX / 4,
            hard_limit_bytes: usize::MAX / 2,
            ..cfg()
        });
        let clients: Vec<Client> = (0..subscribers)
            .map(|i| {
                h.client(if i % 10 == 0 {
                    Encoding::Json
                } else {
                    Encoding::Proto
                })
            })
            .collect();
        for c in &clients {
            h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
        }
        h.serve();
        let ticks = 400;
        let deltas: Vec<ToWorker> = (0..ticks).map(|_| h.ing.delta(BTC)).collect();
        let (mut fanout, mut flush) = (0u64, 0u64);
        let mut deltas = deltas.into_iter();
        for turn in 0..ticks / 16 {
            // One loop turn: 16 ticks fanned out, then one flush, as the shell does.
            let t0 = thread_cpu_ns();
            for d in deltas.by_ref().take(16) {
                h.core.handle_ring(d, 0);
            }
            let t1 = thread_cpu_ns();
            while let Some(conn) = h.core.poll_dirty() {
                let n: usize = {
                    let mut slices = [IoSlice::new(&[]); 64];
                    let k = h.core.io_slices(conn, &mut slices);
                    slices[..k].iter().map(|s| s.len()).sum()
                };
                h.core.handle_written(conn, n, 0);
            }
            if turn >= ticks / 32 {
                // The first half warms the queues up.
                fanout += t1 - t0;
                flush += thread_cpu_ns() - t1;
            }
        }
        let n = ((ticks / 16 - ticks / 32) * 16 * subscribers) as f64;
        eprintln!(
            "{subscribers} subscribers: handle_ring {:.1} ns per delivery; flush bookkeeping {:.1} ns per delivery",
            fanout as f64 / n,
            flush as f64 / n
        );
    }
}
