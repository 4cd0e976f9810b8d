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
//! # What the shell calls, by step of its duty cycle
//!
//! The duty cycle is described once, in `net::worker` (the numbered list);
//! these are the core's entry points for its steps:
//! 2. client input: [`WorkerCore::handle_text`], [`WorkerCore::queue_control`];
//! 3. the ring: [`WorkerCore::handle_ring_batch`] (queues shared frames,
//!    marks connections dirty; a run of deltas goes as one joined frame);
//! 4. requests to ingest: [`WorkerCore::poll_to_ingest`], handed back with
//!    [`WorkerCore::unpoll_to_ingest`] when the ring is full;
//! 5. closes: [`WorkerCore::poll_close`], then [`WorkerCore::close_conn`];
//! 6. writes: [`WorkerCore::poll_dirty`] (FIFO), [`WorkerCore::io_slices`],
//!    [`WorkerCore::handle_written`] (where slow consumers are resynced);
//!    [`WorkerCore::dirty_mark`] / [`WorkerCore::dirty_done`] tell the pacer
//!    when a pass is over;
//! 7. timers: [`WorkerCore::handle_timeout`] (max lag, idle buffers),
//!    [`WorkerCore::handle_kernel_unsent`].
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
//!
//! # Files
//!
//! - `mod.rs`: [`WorkerCore`], connections open and close, the `poll_*` outputs.
//! - `config.rs`: [`WorkerConfig`], [`WorkerStats`], [`LagHistogram`].
//! - `requests.rs`: client requests (subscribe, unsubscribe, the rate limit).
//! - `delivery.rs`: ring messages to outboxes (the hot path).
//! - `backlog.rs`: writes, kernel backlogs, slow consumers, periodic duties.
//! - `auth.rs`: tokens, tiers and entitlements (PROTOCOL §8).
//! - `resume.rs`: subscribes waiting for their resume answers (PROTOCOL §10).
//! - `sse.rs`: SSE streams and their `id:` lines (PROTOCOL §11).
//! - `invariants.rs`: [`WorkerCore::check_invariants`].

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::Arc;

use crate::book::SymbolId;
use crate::book::derived::Channel;
use crate::fanout::frames::Frames;
use crate::fanout::limits::RequestLimiter;
use crate::fanout::outbox::{FrameClass, Outbox, OutboxLimits};
use crate::fanout::ring::{Lane, ToIngest};
use crate::fanout::streams::DerivedStreams;
use crate::fanout::subs::{ConnSubs, SubIndex, SubState, Transitions};
use crate::wire::{CloseCode, EncodedFrame, Rendering};

use backlog::KernelBacklog;
use delivery::RunDelta;

mod auth;
mod backlog;
mod config;
mod delivery;
mod invariants;
mod requests;
mod resume;
mod sse;
#[cfg(test)]
mod tests;

pub use crate::wire::Encoding;
pub use auth::{AuthSetup, Tier, UpgradeRefusal};
pub use config::{LagHistogram, RESYNC_LAG_BOUNDS_NS, WorkerConfig, WorkerStats};
pub use requests::MAX_RESUMES_PER_REQUEST;
pub use sse::SseStart;

/// A connection of this worker: a dense slot index chosen by the core, reused
/// after [`WorkerCore::close_conn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

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
    rendering: Rendering,
    state: ConnState,
    dirty: bool,
    in_dropping_list: bool,
    in_idle_list: bool,
    in_backlog_list: bool,
    /// Written since the kernel's unsent bytes were last measured.
    in_unmeasured_list: bool,
}

impl Conn {
    fn new(rendering: Rendering) -> Conn {
        Conn {
            outbox: Outbox::new(),
            rendering,
            state: ConnState::Open,
            dirty: false,
            in_dropping_list: false,
            in_idle_list: false,
            in_backlog_list: false,
            in_unmeasured_list: false,
        }
    }
}

/// Bytes of per-connection state held by the core outside allocations
/// (connection slot + its subscription list, which holds one inline).
pub const CONN_STATE_BYTES: usize = std::mem::size_of::<Conn>() + std::mem::size_of::<ConnSubs>();

#[derive(Debug)]
struct Instrument {
    /// The symbol's name (a derived stream's is its symbol's).
    name: Arc<str>,
    price_decimals: u32,
    size_decimals: u32,
    epoch: u64,
    /// For a derived stream: its symbol and book channel (PROTOCOL §9).
    derived: Option<(SymbolId, Channel)>,
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
/// - `ToIngest::Interest`/`Rendering` `on` is emitted before any `SnapshotRequest`
///   that needs it, and exactly at the 0↔1 transitions of the local counts.
pub struct WorkerCore {
    cfg: WorkerConfig,
    limits: OutboxLimits,
    by_name: HashMap<Arc<str>, SymbolId>,
    /// Symbols and derived streams, at [`SymbolId::index`].
    instruments: Vec<Option<Instrument>>,
    /// The node's derived stream ids, shared with every worker and the
    /// market thread (see [`WorkerCore::share_streams`]).
    streams: Arc<DerivedStreams>,
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
    closes: VecDeque<(ConnId, CloseCode, &'static str)>,
    to_ingest: VecDeque<ToIngest>,
    stats: WorkerStats,
    json_buf: String,
    /// Scratch for `handle_ring_batch`: the run of deltas being gathered.
    run: Vec<RunDelta>,
    /// Subscribes waiting for their resume answers (`resume.rs`).
    resumes: Vec<resume::PendingSubscribe>,
    next_resume_token: u64,
    /// Each connection's tier and entitlements, and the auth deadlines
    /// for the shell's wheel (`auth.rs`).
    auth: auth::CoreAuth,
    /// The SSE connections' resume positions (`sse.rs`).
    sse: sse::SseStreams,
}

static EMPTY_OUTBOX: Outbox = Outbox::new();

impl WorkerCore {
    pub fn new(cfg: WorkerConfig) -> WorkerCore {
        WorkerCore {
            limits: cfg.limits(),
            cfg,
            by_name: HashMap::new(),
            instruments: Vec::new(),
            streams: Arc::new(DerivedStreams::default()),
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
            resumes: Vec::new(),
            next_resume_token: 0,
            auth: auth::CoreAuth::default(),
            sse: sse::SseStreams::new(),
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Uses the node's table of derived streams (one per engine, shared by
    /// every worker and the market thread) instead of a private one.
    pub fn share_streams(&mut self, streams: Arc<DerivedStreams>) {
        self.streams = streams;
    }

    /// Reserves room for `n` connections in every per-connection table, so
    /// they never grow by copying: a doubled, copied table leaves the freed
    /// smaller ones resident in the allocator's heap, ~50 bytes per idle
    /// connection (`tuning/CAPACITY.md` §9). Only the pages used are resident.
    pub fn reserve_conns(&mut self, n: usize) {
        self.conns.reserve_exact(n.saturating_sub(self.conns.len()));
        self.limiters
            .reserve_exact(n.saturating_sub(self.limiters.len()));
        self.kernel
            .reserve_exact(n.saturating_sub(self.kernel.len()));
        self.auth
            .conns
            .reserve_exact(n.saturating_sub(self.auth.conns.len()));
        self.subs.reserve_conns(n);
    }

    /// A new connection, after its WebSocket upgrade, that presented no
    /// token there ([`WorkerCore::open_conn_with`]). An [`Encoding`] is
    /// its uncompressed WebSocket rendering.
    pub fn open_conn(&mut self, rendering: impl Into<Rendering>) -> ConnId {
        self.open_conn_with(rendering.into(), None, 0)
    }

    /// A connection slot with fresh state (reused when one is free).
    fn alloc_conn(&mut self, rendering: Rendering) -> ConnId {
        if let Some(slot) = self.free.pop() {
            self.conns[slot as usize] = Conn::new(rendering);
            self.limiters[slot as usize] = RequestLimiter::default();
            self.kernel[slot as usize] = KernelBacklog::default();
            self.auth.conns[slot as usize] = auth::ConnAuth::default();
            return ConnId(slot);
        }
        self.conns.push(Conn::new(rendering));
        self.limiters.push(RequestLimiter::default());
        self.kernel.push(KernelBacklog::default());
        self.auth.conns.push(auth::ConnAuth::default());
        ConnId((self.conns.len() - 1) as u32)
    }

    /// Forgets `conn`: removes it from every index (emitting `Interest`/`Rendering`
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
        self.auth.conns[conn.0 as usize] = auth::ConnAuth::default();
        self.sse.remove(&conn.0);
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
    pub fn poll_close(&mut self) -> Option<(ConnId, CloseCode, &'static str)> {
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
        s.lists_room = self.dirty.capacity()
            + self.idle.capacity()
            + self.dropping.capacity()
            + self.backlogged.capacity()
            + self.unmeasured.capacity()
            + self.pending_close.capacity();
        s.buffered_bytes = self.conns.iter().map(|c| c.outbox.buffered_bytes()).sum();
        s.queue_capacity_bytes = self.conns.iter().map(|c| c.outbox.capacity_bytes()).sum();
        s.live_frames = self.frames.live();
        s.tiers = self.tier_counts();
        s.awaiting_subs = (0..self.instruments.len())
            .filter_map(|i| self.subs.symbol(SymbolId::from_index(i)))
            .map(|ss| {
                ss.list(Lane::Book)
                    .iter()
                    .filter(|s| matches!(s.state, SubState::Awaiting | SubState::AwaitingFeed))
                    .count()
            })
            .sum();
        s
    }

    pub(super) fn remove_all_subs(&mut self, conn: u32) {
        self.forget_resumes(conn);
        let mut removed: Vec<(SymbolId, Lane, Transitions)> = Vec::new();
        self.subs
            .remove_conn(conn, |cs, t| removed.push((cs.symbol, cs.channel, t)));
        for (symbol, channel, t) in removed {
            self.emit_transitions(symbol, channel, t, false);
        }
    }
}
