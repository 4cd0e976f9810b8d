//! A worker thread (`worker-N`): the I/O shell around [`WorkerCore`].
//!
//! It owns a mio `Poll`, its own listening socket on the shared client port
//! (`SO_REUSEPORT`: the kernel spreads accepts, no thread hands sockets to
//! another), its connections' sockets and WebSocket codecs, its timing wheel,
//! and the worker ends of its two rings. Everything it decides it asks the
//! sans-IO modules: the codec ([`ws::Conn`], [`ws::Router`]) for HTTP and
//! frames, the core for subscriptions, fan-out, the request rate and the
//! slow-consumer policy, [`IpLimits`](crate::fanout::limits::IpLimits) for
//! per-client-IP limits.
//!
//! # The duty cycle ([`Worker::do_work`])
//!
//! When to drain, write and sleep is decided by the sans-IO
//! [`Pacer`] (its module doc states the policy;
//! its tests drive it with a manual clock). One turn:
//!
//! 1. Poll sockets, sleeping at most until the pacer's deadline
//!    ([`Pacer::poll_timeout`]: now if reads, accepts or a full ring batch
//!    wait; the ring's next drain; the end of a pause between short passes).
//! 2. Accept (bounded per turn), read clients (bounded per client per turn),
//!    handle their HTTP requests (limits: 503, 429) and WebSocket messages.
//! 3. Drain the ingest ring in one bounded batch when the pacer says so
//!    ([`Pacer::drain_due`]: at once when idle; under load as often as a
//!    tenth of the worker's time allows): the core queues each frame for
//!    each local subscriber and marks connections dirty.
//! 4. Push the core's requests (interest, snapshot requests) into the ingest
//!    ring, waking the ingest thread only if it may be asleep.
//! 5. Closes the core decided (4001, 4002): queue the close frame.
//! 6. Flush for one slice ([`Pacer::slice_end`], 500 µs): write dirty
//!    connections (not those whose last write blocked: their writable event
//!    flushes them), oldest first, one `write`/`writev` of everything queued
//!    each; the rest wait for the next turn. The dirty queue is FIFO: a frame
//!    waits at most one pass over the connections dirty before it. The only
//!    step that writes market data.
//! 7. Timers: one [`TimerWheel`] holds every connection's deadlines
//!    (handshake, close handshake, auth: 4005 / 4004 in `auth.rs`) and one
//!    recurring entry for heartbeats (ping / 4003), which checks a share of
//!    the connections each tick ([`Sweep`]: no entry per idle connection);
//!    every ~100 ms the
//!    kernel's unsent bytes of sockets that held some are measured again and
//!    the core's duties run (backlog older than the max lag → 4001, release
//!    of idle buffers); and up to 1,000 sockets written since their last
//!    measure are measured (DESIGN "Freshness").
//!
//! [`Pacer::poll_timeout`]: crate::fanout::pacing::Pacer::poll_timeout
//! [`Pacer::drain_due`]: crate::fanout::pacing::Pacer::drain_due
//! [`Pacer::slice_end`]: crate::fanout::pacing::Pacer::slice_end
//!
//! Time: deadlines and rates use monotonic nanoseconds since
//! [`Shared::epoch`](super::shared::Shared::epoch); only the delivery latency
//! is measured against the wall clock (`ingest_ts_ns` is CLOCK_REALTIME).
//!
//! Every way out of a connection (`Worker::drop_client`) removes it from the
//! core's indexes, the wheel, the per-IP counts and the open count.
//!
//! No allocation per message once warm, no locks on the market-data path.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use crate::fanout::limits::IpReject;
use crate::fanout::outbox::Consumed;
use crate::fanout::pacing::{Load, Pacer, PacingConfig};
use crate::fanout::ring::{ToIngest, ToWorker, WorkerId};
use crate::fanout::sweep::Sweep;
use crate::fanout::timer::{TimerHandle, TimerWheel};
use crate::fanout::worker::{ConnId, WorkerCore};
use crate::wire::EncodedFrame;
use crate::ws::{self, CloseCode, Endpoint, Event, Route};

use super::accept_backoff::{AcceptBackoff, is_resource_error};
use super::ring_wake::must_wake;
use super::shared::{Reject, WorkerShared, new_latency_histogram};
use super::unsent::unsent_bytes;

mod auth;
mod http;
mod input;
mod timers;
mod write;

pub use http::DASHBOARD_HTML;
use timers::{TimerKey, TimerKind};
pub use write::{Flush, flush_conn};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CLIENT: usize = 2;

/// Accepts per loop turn, so a connection storm cannot starve fan-out.
const ACCEPTS_PER_TURN: usize = 256;
/// Reads of one client per turn before others are served.
const READS_PER_TURN: usize = 4;
const READ_BUF_BYTES: usize = 64 * 1024;
/// `writev` takes at most this many frames per call.
const IOVECS: usize = 64;
/// Connection slots reserved up front at most (per worker).
const MAX_RESERVED_SLOTS: usize = 1 << 20;
/// How often the latency histogram is published for scrapes, and the core's
/// lag and idle duties run.
const HOUSEKEEPING_NS: u64 = 100_000_000;
const PUBLISH_NS: u64 = 1_000_000_000;
/// The clock is read once per this many connections written.
const FLUSH_CLOCK_EVERY: usize = 8;
/// Sockets written since their last kernel measure that one housekeeping
/// turn (every 100 ms) measures at most (DESIGN "Freshness").
const MEASURES_PER_TURN: usize = 1_000;
/// Messages awaiting their latency sample at most.
const LATENCY_SAMPLES_MAX: usize = 1 << 16;
/// Timing wheel: 10 ms slots, 4096 of them (a 41 s revolution covers the
/// default ping interval, so most entries are visited once).
const WHEEL_TICK_NS: u64 = 10_000_000;
const WHEEL_SLOTS: usize = 4096;

/// Shell limits and timers, from the engine config. 0 disables a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellConfig {
    /// WebSocket connections the process holds at most; further upgrades
    /// get 503 + Retry-After.
    pub max_connections: usize,
    /// Server ping period (PROTOCOL §7: 30 s). 0: no heartbeat.
    pub ping_interval_ms: u64,
    /// With the ping interval: a connection silent for both is closed 4003.
    pub pong_timeout_ms: u64,
    /// An SSE stream's comment line (`: ping`) period (PROTOCOL §11: 15 s).
    /// 0: none.
    pub sse_ping_interval_ms: u64,
    /// Graceful shutdown: time to flush and finish close handshakes.
    pub shutdown_timeout_ms: u64,
    /// `SO_SNDBUF` of client sockets; 0: the kernel's (autotuned).
    pub socket_send_buffer_bytes: usize,
    /// `TCP_NOTSENT_LOWAT` of client sockets: the kernel takes at most this
    /// many bytes it cannot send yet (measured with `SIOCOUTQNSD` and counted
    /// in the backlog, DESIGN "Freshness"). At most the low-water mark.
    /// Default 16 KiB; 0: not set (the kernel then takes up to its send
    /// buffer, autotuned to 4 MiB here, before the policy sees anything).
    pub kernel_unsent_bytes: usize,
}

impl Default for ShellConfig {
    fn default() -> Self {
        ShellConfig {
            max_connections: 100_000,
            ping_interval_ms: 30_000,
            pong_timeout_ms: 10_000,
            sse_ping_interval_ms: ws::sse::PING_INTERVAL_NS / 1_000_000,
            shutdown_timeout_ms: 5_000,
            socket_send_buffer_bytes: 0,
            kernel_unsent_bytes: 16 * 1024,
        }
    }
}

/// Everything a worker needs, built by the engine before the thread starts.
pub struct WorkerParams {
    pub id: WorkerId,
    pub poll: Poll,
    pub listener: TcpListener,
    pub ring: rtrb::Consumer<ToWorker>,
    pub to_ingest: rtrb::Producer<ToIngest>,
    pub ingest_waker: Arc<Waker>,
    pub core: WorkerCore,
    pub ws_config: ws::Config,
    pub router: ws::Router,
    pub shared: Arc<super::shared::Shared>,
    pub stop: Arc<AtomicBool>,
    pub shell: ShellConfig,
    pub pacing: PacingConfig,
}

/// One client socket and its codec.
struct Client {
    stream: TcpStream,
    /// The peer's address (per-IP limits and logs; not the port, to keep
    /// the slot small).
    ip: IpAddr,
    ws: ws::Conn,
    /// Set once upgraded to `/ws`: the core then holds its queue.
    core: Option<ConnId>,
    /// Bytes not yet written for a connection the core does not hold
    /// (HTTP answers, the echo endpoint); boxed, as most slots never have any.
    out: Option<Box<ShellOut>>,
    /// Upgraded to a WebSocket (`/ws` or the echo endpoint): counted as open.
    upgraded: bool,
    /// Not read while its queue is over high-water (see `Worker::read_client`).
    read_paused: bool,
    /// The last write would have blocked: not written again before the
    /// socket says it is writable (no syscall per pass for a stalled peer).
    blocked: bool,
    /// Monotonic ns of the last bytes read (heartbeat) and the last ping sent.
    last_read_ns: u64,
    last_ping_ns: u64,
    /// The wheel's entry for the codec's deadline (it holds the deadline).
    codec_timer: Option<TimerHandle>,
    /// Auth state (PROTOCOL §8), boxed: most connections have none.
    auth: Option<Box<ClientAuth>>,
}

/// A connection's auth deadline in the wheel, and the user it counts for in
/// the shared table (PROTOCOL §8).
#[derive(Default)]
struct ClientAuth {
    timer: Option<TimerHandle>,
    user: Option<Arc<str>>,
}

/// Shell output of one connection not yet written, and how much of it was.
#[derive(Default)]
struct ShellOut {
    bytes: Vec<u8>,
    pos: usize,
}

pub struct Worker {
    id: WorkerId,
    name: String,
    poll: Poll,
    /// `None` once shutting down: nothing more is accepted.
    listener: Option<TcpListener>,
    ring: rtrb::Consumer<ToWorker>,
    to_ingest: rtrb::Producer<ToIngest>,
    ingest_waker: Arc<Waker>,
    core: WorkerCore,
    ws_config: ws::Config,
    router: ws::Router,
    shared: Arc<super::shared::Shared>,
    me: Arc<WorkerShared>,
    stop: Arc<AtomicBool>,
    cfg: ShellConfig,
    clients: Vec<Option<Client>>,
    /// Each slot's generation, incremented on each reuse of the slot, so
    /// stale timer entries miss (kept beside the slots: it survives the
    /// slot's client).
    generations: Vec<u32>,
    free: Vec<usize>,
    by_core: Vec<u32>,
    /// Clients with unread input left after their read budget.
    pending_reads: Vec<usize>,
    /// Clients to try writing this turn (writable again, or shell output).
    pending_writes: Vec<usize>,
    timers: TimerWheel<TimerKey>,
    expired: Vec<(u64, TimerKey)>,
    /// Hands out the connections due a heartbeat check (`None`: heartbeats
    /// off); see `timers.rs`.
    sweep: Option<Sweep>,
    read_buf: Box<[u8]>,
    scratch: Vec<u8>,
    latency: Histogram<u64>,
    /// Ingest timestamps of drained messages, each with the dirty-queue mark
    /// after which all of its subscribers have been written.
    batch_ts: VecDeque<(u64, u64)>,
    last_housekeeping_ns: u64,
    last_publish_ns: u64,
    /// When to drain the ring, write and sleep (the policy, sans-IO).
    pacer: Pacer,
    /// The accept budget ran out: the backlog may hold more, and an
    /// edge-triggered listener will not say so again.
    accept_pending: bool,
    /// Accept failures for lack of resources: retry timer and log limit.
    accept_backoff: AcceptBackoff,
    /// Scratch for `drain_ring`: the messages and their ingest timestamps.
    drained: Vec<ToWorker>,
    drained_ts: Vec<u64>,
    /// The generation of the key set the core holds (`auth.rs`).
    verifier_gen: u64,
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Worker {
    pub fn new(p: WorkerParams) -> io::Result<Worker> {
        let me = p.shared.workers[p.id.0 as usize].clone();
        let mut listener = p.listener;
        p.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let start_ns = p.shared.epoch.elapsed().as_nanos() as u64;
        // Per-connection tables sized once for the process's cap (virtual
        // memory; only the slots used become resident): see
        // `WorkerCore::reserve_conns`.
        let conn_slots = p.shell.max_connections.min(MAX_RESERVED_SLOTS);
        let mut core = p.core;
        core.reserve_conns(conn_slots);
        let mut timers = TimerWheel::new(WHEEL_TICK_NS, WHEEL_SLOTS, start_ns);
        let sweep = Worker::sweep_period_ns(&p.shell).map(|period| {
            let key = TimerKey {
                slot: u32::MAX,
                generation: 0,
                kind: TimerKind::HeartbeatSweep,
            };
            timers.insert(start_ns + WHEEL_TICK_NS, key);
            Sweep::new(period, start_ns)
        });
        Ok(Worker {
            name: format!("worker-{}", p.id.0),
            id: p.id,
            poll: p.poll,
            listener: Some(listener),
            ring: p.ring,
            to_ingest: p.to_ingest,
            ingest_waker: p.ingest_waker,
            core,
            ws_config: p.ws_config,
            router: p.router,
            shared: p.shared,
            me,
            stop: p.stop,
            cfg: p.shell,
            clients: Vec::with_capacity(conn_slots),
            generations: Vec::with_capacity(conn_slots),
            free: Vec::new(),
            by_core: Vec::with_capacity(conn_slots),
            pending_reads: Vec::new(),
            pending_writes: Vec::new(),
            timers,
            expired: Vec::new(),
            sweep,
            read_buf: vec![0; READ_BUF_BYTES].into_boxed_slice(),
            scratch: Vec::new(),
            latency: new_latency_histogram(),
            batch_ts: VecDeque::new(),
            last_housekeeping_ns: 0,
            last_publish_ns: 0,
            pacer: Pacer::new(p.pacing),
            accept_pending: false,
            accept_backoff: AcceptBackoff::default(),
            drained: Vec::new(),
            drained_ts: Vec::new(),
            verifier_gen: 0,
        })
    }

    /// Runs until the stop flag is set, then shuts down gracefully.
    pub fn run(mut self) {
        info!(worker = self.id.0, "{} running", self.name);
        let me = self.me.clone();
        let _alive = me.liveness.guard();
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.do_work(&mut events) {
                warn!(worker = self.id.0, error = %e, "worker poll failed; stopping");
                break;
            }
            me.liveness.beat();
            if me.inject_panic.load(Ordering::Relaxed) {
                panic!("{}: injected panic (test hook)", self.name);
            }
        }
        self.shutdown(&mut events);
    }

    /// Monotonic nanoseconds of `t` (since the engine's epoch).
    fn mono_ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.shared.epoch).as_nanos() as u64
    }

    /// What the pacer needs to know about the queues.
    fn load(&self) -> Load {
        Load {
            dirty: self.core.has_dirty(),
            ring_len: self.ring.slots(),
            ring_capacity: self.ring.buffer().capacity(),
            io_ready: self.accept_pending || !self.pending_reads.is_empty(),
        }
    }

    /// One loop turn; returns the number of things done.
    pub fn do_work(&mut self, events: &mut Events) -> io::Result<usize> {
        // Sleep until the next thing due ([`Pacer::poll_timeout`]) or the
        // accept backoff's retry.
        let start_ns = self.mono_ns(Instant::now());
        let mut wake_ns = self.pacer.poll_timeout(start_ns, self.load());
        if let Some(t) = self.accept_backoff.retry_at_ns() {
            wake_ns = wake_ns.min(t.max(start_ns));
        }
        let timeout = Duration::from_nanos(wake_ns - start_ns);
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        let turn_start = Instant::now();
        let now = turn_start;
        let now_ns = self.mono_ns(now);
        let mut done = 0;
        let mut readable = std::mem::take(&mut self.pending_reads);
        if self.accept_pending || self.accept_backoff.due(now_ns) {
            done += self.accept(now, now_ns);
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => done += self.accept(now, now_ns),
                WAKER => {}
                Token(t) => {
                    let slot = t - FIRST_CLIENT;
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        readable.push(slot);
                    }
                    if ev.is_writable() {
                        if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                            c.blocked = false;
                        }
                        self.pending_writes.push(slot);
                    }
                }
            }
        }
        readable.sort_unstable();
        readable.dedup();
        for slot in readable {
            done += self.read_client(slot, now, now_ns);
        }
        if self.pacer.drain_due(now_ns, self.load()) {
            done += self.drain_ring(now_ns);
        }
        done += self.push_requests();
        done += self.serve_closes(now, now_ns);
        let flush_ns = self.mono_ns(Instant::now());
        if self.pacer.flush_due(flush_ns) {
            done += self.flush(flush_ns);
        }
        done += self.write_pending(now_ns);
        done += self.timers(now, now_ns);
        self.me.counters.loop_turns.inc();
        let turn_ns = turn_start.elapsed().as_nanos() as u64;
        if turn_ns > self.me.counters.max_turn_ns.get() {
            self.me.counters.max_turn_ns.set(turn_ns);
        }
        Ok(done)
    }

    fn drain_ring(&mut self, now_ns: u64) -> usize {
        // The drain's own cost, for the pacer: the turn's reads came first.
        let start_ns = self.mono_ns(Instant::now());
        let limit = self.core.config().ring_batch;
        let mut batch = std::mem::take(&mut self.drained);
        let mut stamps = std::mem::take(&mut self.drained_ts);
        while batch.len() < limit {
            let Ok(msg) = self.ring.pop() else { break };
            if let ToWorker::Data { ingest_ts_ns, .. } = &msg {
                stamps.push(*ingest_ts_ns);
            }
            batch.push(msg);
        }
        let n = batch.len();
        self.core.handle_ring_batch(&mut batch, now_ns);
        // Every subscriber of the batch is dirty now, behind this mark.
        let mark = self.core.dirty_mark();
        for ts in stamps.drain(..) {
            // Bounded: past the cap (a pass holding that many messages), the
            // excess goes unsampled.
            if self.batch_ts.len() < LATENCY_SAMPLES_MAX {
                self.batch_ts.push_back((ts, mark));
            }
        }
        self.drained = batch;
        self.drained_ts = stamps;
        let end_ns = self.mono_ns(Instant::now());
        self.pacer.handle_drained(start_ns, end_ns, n == limit);
        self.me.counters.ring_messages.add(n as u64);
        n
    }

    fn push_requests(&mut self) -> usize {
        let mut n = 0;
        while let Some(req) = self.core.poll_to_ingest() {
            match self.to_ingest.push(req) {
                Ok(()) => {
                    n += 1;
                    if must_wake(&self.to_ingest) {
                        let _ = self.ingest_waker.wake();
                    }
                }
                Err(rtrb::PushError::Full(req)) => {
                    self.core.unpoll_to_ingest(req);
                    let _ = self.ingest_waker.wake();
                    break;
                }
            }
        }
        n
    }

    fn serve_closes(&mut self, now: Instant, _now_ns: u64) -> usize {
        let mut n = 0;
        while let Some((id, code, reason)) = self.core.poll_close() {
            n += 1;
            let Some(&slot) = self.by_core.get(id.0 as usize) else {
                continue;
            };
            let slot = slot as usize;
            if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                if code == CloseCode::SLOW_CONSUMER {
                    self.me.counters.closed_slow.inc();
                    self.me.counters.reject(Reject::SlowConsumer);
                } else if code == CloseCode::RATE_LIMITED {
                    self.me.counters.reject(Reject::RateLimitClose);
                }
                c.ws.close(now, code, reason);
                self.move_codec_output(slot);
            }
        }
        n
    }

    /// Closes the socket and removes the client from every index, timer and
    /// count: the one way out for every close path.
    fn drop_client(&mut self, slot: usize, now_ns: u64) {
        let Some(mut c) = self.clients.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if let Some(id) = c.core {
            self.core.close_conn(id);
            if let Some(s) = self.by_core.get_mut(id.0 as usize) {
                *s = u32::MAX;
            }
        }
        if let Some(h) = c.codec_timer {
            self.timers.cancel(h);
        }
        self.release_user(&mut c);
        if c.upgraded {
            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
            self.me.counters.connections_open.dec();
        }
        if self.shared.ip_limits_on {
            self.shared.ip_limits().disconnect(c.ip, now_ns);
        }
        self.me.counters.sockets.dec();
        self.free.push(slot);
    }

    /// Graceful shutdown: stop accepting, close every client with 1001, keep
    /// serving (flushing, finishing close handshakes) until every client is
    /// gone or `shutdown_timeout_ms` passed, then drop what is left.
    fn shutdown(&mut self, events: &mut Events) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let now = Instant::now();
        let deadline = now + Duration::from_millis(self.cfg.shutdown_timeout_ms);
        for slot in 0..self.clients.len() {
            if let Some(c) = self.clients[slot].as_mut() {
                if c.ws.is_open() {
                    self.me.counters.closed_shutdown.inc();
                }
                c.ws.close(now, CloseCode::GOING_AWAY, "server shutting down");
                self.move_codec_output(slot);
            }
        }
        while self.clients.iter().any(Option::is_some) && Instant::now() < deadline {
            if let Err(e) = self.do_work(events) {
                warn!(worker = self.id.0, error = %e, "worker poll failed during shutdown");
                break;
            }
        }
        let now_ns = self.mono_ns(Instant::now());
        let left = self.clients.iter().filter(|c| c.is_some()).count();
        if left > 0 {
            info!(
                worker = self.id.0,
                left, "shutdown deadline passed; dropping the rest"
            );
        }
        for slot in 0..self.clients.len() {
            self.drop_client(slot, now_ns);
        }
        self.publish_stats();
    }
}
