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
//! [`Pacer`](crate::fanout::pacing::Pacer) (its module doc states the policy;
//! its tests drive it with a manual clock). One turn:
//!
//! 1. Poll sockets, sleeping at most until the pacer's deadline
//!    ([`Pacer::poll_timeout`]: now if reads, accepts or a full ring batch
//!    wait; the ring's next drain; the end of a pause between short passes).
//! 2. Accept (bounded per turn), read clients (bounded per client per turn),
//!    handle their HTTP requests (limits: 503, 429) and WebSocket messages.
//! 3. Drain the ingest ring in one bounded batch when the pacer says so
//!    ([`Pacer::drain_due`]: at once when idle, every fraction of a pass under
//!    load): the core queues each frame for each local subscriber and marks
//!    connections dirty.
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
//!    (handshake, close handshake, heartbeat: ping / 4003); every ~100 ms the
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
//! Every way out of a connection ([`Worker::drop_client`]) removes it from the
//! core's indexes, the wheel, the per-IP counts and the open count.
//!
//! No allocation per message once warm, no locks on the market-data path.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
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
use crate::fanout::timer::{TimerHandle, TimerWheel};
use crate::fanout::worker::{CLOSE_RATE_LIMITED, ConnId, Encoding as CoreEncoding, WorkerCore};
use crate::wire::EncodedFrame;
use crate::ws::{self, CloseCode, Endpoint, Event, Route};

use super::accept_backoff::{AcceptBackoff, is_resource_error};
use super::ring_wake::must_wake;
use super::shared::{Reject, WorkerShared, new_latency_histogram};
use super::unsent::unsent_bytes;

mod auth;

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
/// `Retry-After` of a 503 (global cap) or a 429 for the per-IP connection cap.
const RETRY_AFTER_SECS: u32 = 1;

/// The dashboard page served at `GET /` (embedded; no build step).
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

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

/// What a wheel entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// The codec's deadline: the handshake or the close handshake.
    Codec,
    /// Ping due, or silence past ping interval + pong timeout (4003).
    Heartbeat,
    /// The connection's auth deadline: 5 s to authenticate (4005), or its
    /// token's `exp` (4004) (PROTOCOL §8; `worker/auth.rs`).
    Auth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimerKey {
    slot: u32,
    generation: u32,
    kind: TimerKind,
}

/// One client socket and its codec.
struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    ws: ws::Conn,
    /// Set once upgraded to `/ws`: the core then holds its queue.
    core: Option<ConnId>,
    /// Bytes not yet written for a connection the core does not hold
    /// (HTTP answers, the echo endpoint).
    out: Vec<u8>,
    out_pos: usize,
    /// Incremented on each reuse of the slot, so stale timer entries miss.
    generation: u32,
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
    /// The codec deadline scheduled in the wheel, and its entry.
    codec_deadline: Option<Instant>,
    codec_timer: Option<TimerHandle>,
    heartbeat_timer: Option<TimerHandle>,
    auth_timer: Option<TimerHandle>,
    /// The user this connection counts for in the shared table (PROTOCOL §8).
    user: Option<Arc<str>>,
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
    /// Slot generation survives the slot's client.
    generations: Vec<u32>,
    free: Vec<usize>,
    by_core: Vec<u32>,
    /// Clients with unread input left after their read budget.
    pending_reads: Vec<usize>,
    /// Clients to try writing this turn (writable again, or shell output).
    pending_writes: Vec<usize>,
    timers: TimerWheel<TimerKey>,
    expired: Vec<(u64, TimerKey)>,
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
    /// The generation of the key set the core holds (`worker/auth.rs`).
    verifier_gen: u64,
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn core_encoding(e: ws::Encoding) -> CoreEncoding {
    match e {
        ws::Encoding::Proto => CoreEncoding::Proto,
        ws::Encoding::Json => CoreEncoding::Json,
    }
}

/// Largest write gathered into one contiguous buffer (see `flush_conn`).
const GATHER_BYTES: usize = 64 * 1024;

thread_local! {
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Outcome of writing one connection's queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Drained,
    /// The socket is full: wait for writable.
    Blocked,
}

/// Writes `conn`'s queued frames to `w`, as many per `writev` as fit, until
/// the queue is empty or the writer would block. Returns the write calls made.
pub fn flush_conn<W: Write>(
    w: &mut W,
    core: &mut WorkerCore,
    conn: ConnId,
    now_ns: u64,
    writes: &mut u64,
    bytes: &mut u64,
) -> io::Result<Flush> {
    loop {
        let n = {
            let mut slices = [IoSlice::new(&[]); IOVECS];
            let k = core.io_slices(conn, &mut slices);
            if k == 0 {
                return Ok(Flush::Drained);
            }
            *writes += 1;
            // NB: small frames are gathered into one contiguous buffer and sent
            // with one `write`: in the fan-out bench (10,000 clients) the
            // kernel's per-segment work in `writev` cost more than the copy.
            let total: usize = slices[..k].iter().map(|s| s.len()).sum();
            let result = if k > 1 && total <= GATHER_BYTES {
                GATHER.with(|g| {
                    let mut g = g.borrow_mut();
                    g.clear();
                    for s in &slices[..k] {
                        g.extend_from_slice(s);
                    }
                    w.write(&g)
                })
            } else {
                w.write_vectored(&slices[..k])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        *bytes += n as u64;
        if core.handle_written(conn, n, now_ns) == Consumed::Drained {
            return Ok(Flush::Drained);
        }
    }
}

impl Worker {
    pub fn new(p: WorkerParams) -> io::Result<Worker> {
        let me = p.shared.workers[p.id.0 as usize].clone();
        let mut listener = p.listener;
        p.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let start_ns = p.shared.epoch.elapsed().as_nanos() as u64;
        Ok(Worker {
            name: format!("worker-{}", p.id.0),
            id: p.id,
            poll: p.poll,
            listener: Some(listener),
            ring: p.ring,
            to_ingest: p.to_ingest,
            ingest_waker: p.ingest_waker,
            core: p.core,
            ws_config: p.ws_config,
            router: p.router,
            shared: p.shared,
            me,
            stop: p.stop,
            cfg: p.shell,
            clients: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_core: Vec::new(),
            pending_reads: Vec::new(),
            pending_writes: Vec::new(),
            timers: TimerWheel::new(WHEEL_TICK_NS, WHEEL_SLOTS, start_ns),
            expired: Vec::new(),
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

    fn accept(&mut self, now: Instant, now_ns: u64) -> usize {
        self.accept_pending = false;
        let mut n = 0;
        loop {
            if n == ACCEPTS_PER_TURN {
                self.accept_pending = true;
                break;
            }
            let Some(listener) = self.listener.as_ref() else {
                break;
            };
            let (mut stream, addr) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_backoff.on_success();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    // EMFILE and friends: the backlog keeps the connections;
                    // retry on a timer (no new event will come for them),
                    // carry on serving, log once per interval.
                    self.me.counters.accept_failures.inc();
                    let f = self.accept_backoff.on_failure(now_ns);
                    if let Some(not_logged) = f.log {
                        warn!(worker = self.id.0, error = %e, failures_since_last_line = not_logged, "accept failed: out of resources; retrying every 100 ms");
                    }
                    break;
                }
                Err(e) => {
                    // That connection's own problem (ECONNABORTED…): next.
                    debug!(worker = self.id.0, error = %e, "accept failed");
                    continue;
                }
            };
            self.accept_backoff.on_success();
            n += 1;
            self.me.counters.connections_accepted.inc();
            let _ = stream.set_nodelay(true);
            if self.cfg.socket_send_buffer_bytes > 0 {
                let _ = socket2::SockRef::from(&stream)
                    .set_send_buffer_size(self.cfg.socket_send_buffer_bytes);
            }
            if self.cfg.kernel_unsent_bytes > 0 {
                let _ = socket2::SockRef::from(&stream)
                    .set_tcp_notsent_lowat(self.cfg.kernel_unsent_bytes as u32);
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.clients.push(None);
                self.generations.push(0);
                self.clients.len() - 1
            });
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot + FIRST_CLIENT),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(worker = self.id.0, error = %e, "register failed");
                self.free.push(slot);
                continue;
            }
            if self.shared.ip_limits_on {
                self.shared.ip_limits().connect(addr.ip());
            }
            self.generations[slot] = self.generations[slot].wrapping_add(1);
            let generation = self.generations[slot];
            self.me.counters.sockets.inc();
            self.clients[slot] = Some(Client {
                stream,
                addr,
                ws: ws::Conn::server(now, self.ws_config),
                core: None,
                out: Vec::new(),
                out_pos: 0,
                generation,
                upgraded: false,
                read_paused: false,
                blocked: false,
                last_read_ns: now_ns,
                last_ping_ns: now_ns,
                codec_deadline: None,
                codec_timer: None,
                heartbeat_timer: None,
                auth_timer: None,
                user: None,
            });
            self.sync_codec_timer(slot);
            // Edge-triggered: bytes may already wait.
            self.pending_reads.push(slot);
        }
        n
    }

    /// Keeps the wheel's entry for the codec's deadline (handshake or close
    /// handshake) equal to [`ws::Conn::poll_timeout`].
    fn sync_codec_timer(&mut self, slot: usize) {
        let epoch = self.shared.epoch;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let want = c.ws.poll_timeout();
        if want == c.codec_deadline {
            return;
        }
        if let Some(h) = c.codec_timer.take() {
            self.timers.cancel(h);
        }
        c.codec_deadline = want;
        if let Some(d) = want {
            let key = TimerKey {
                slot: slot as u32,
                generation: c.generation,
                kind: TimerKind::Codec,
            };
            let at = d.saturating_duration_since(epoch).as_nanos() as u64;
            c.codec_timer = Some(self.timers.insert(at, key));
        }
    }

    fn heartbeat_on(&self) -> bool {
        self.cfg.ping_interval_ms > 0
    }

    /// Schedules the next heartbeat check of an open connection: the next
    /// ping, or the end of its allowed silence, whichever comes first.
    fn schedule_heartbeat(&mut self, slot: usize) {
        if !self.heartbeat_on() {
            return;
        }
        let ping_ns = self.cfg.ping_interval_ms * 1_000_000;
        let silence_ns = ping_ns + self.cfg.pong_timeout_ms * 1_000_000;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Some(h) = c.heartbeat_timer.take() {
            self.timers.cancel(h);
        }
        let at = (c.last_ping_ns + ping_ns).min(c.last_read_ns + silence_ns);
        let key = TimerKey {
            slot: slot as u32,
            generation: c.generation,
            kind: TimerKind::Heartbeat,
        };
        c.heartbeat_timer = Some(self.timers.insert(at, key));
    }

    fn read_client(&mut self, slot: usize, now: Instant, now_ns: u64) -> usize {
        let mut reads = 0;
        loop {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return reads;
            };
            if c.ws.is_closed() {
                return reads;
            }
            if reads == READS_PER_TURN {
                self.pending_reads.push(slot);
                return reads;
            }
            // A peer that does not read its answers (pongs of a ping flood,
            // errors of a request flood) is not read either until they drain
            // (`resume_reads`): its queue stays near high-water and TCP flow
            // control holds the rest of its input in the kernel.
            if let Some(id) = c.core
                && self.core.over_high_water(id)
            {
                if !c.read_paused {
                    c.read_paused = true;
                    self.me.counters.reads_paused.inc();
                }
                return reads;
            }
            match c.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    debug!(worker = self.id.0, addr = %c.addr, "peer closed");
                    self.drop_client(slot, now_ns);
                    return reads;
                }
                Ok(n) => {
                    reads += 1;
                    c.last_read_ns = now_ns;
                    c.ws.handle_read(now, &self.read_buf[..n]);
                    self.handle_events(slot, now, now_ns);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return reads,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(worker = self.id.0, error = %e, "read failed");
                    self.drop_client(slot, now_ns);
                    return reads;
                }
            }
        }
    }

    /// Acts on every event the codec has, then moves its output to the socket queue.
    fn handle_events(&mut self, slot: usize, now: Instant, now_ns: u64) {
        loop {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let Some(ev) = c.ws.poll_event(now) else {
                break;
            };
            match ev {
                Event::Request(req) => self.handle_request(slot, &req, now, now_ns),
                Event::BadRequest(e) => {
                    debug!(worker = self.id.0, addr = %c.addr, error = %e, "bad HTTP request");
                    self.me.counters.reject(if e.status() == 431 {
                        Reject::HeaderTooLarge
                    } else {
                        Reject::BadHttpRequest
                    });
                }
                Event::Text(text) => match c.core {
                    Some(id) => self.client_text(slot, id, &text, now_ns),
                    None => {
                        let _ = c.ws.send_text(&text);
                    }
                },
                Event::Binary(bytes) => {
                    // Only the echo endpoint accepts binary messages.
                    let _ = c.ws.send_binary(&bytes);
                }
                Event::Close { .. } => {}
                Event::ProtocolError(e) => {
                    debug!(worker = self.id.0, addr = %c.addr, error = %e, "protocol error");
                    self.me
                        .counters
                        .reject(if e.close_code() == CloseCode::MESSAGE_TOO_BIG {
                            Reject::MessageTooBig
                        } else {
                            Reject::ProtocolError
                        });
                }
            }
        }
        self.move_codec_output(slot);
    }

    /// The answer to an upgrade under the connection limits, if refused.
    fn check_limits(&mut self, addr: SocketAddr, now_ns: u64) -> Option<ws::Response> {
        if self.shared.ip_limits_on {
            let verdict = self.shared.ip_limits().check_upgrade(addr.ip(), now_ns);
            match verdict {
                Ok(()) => {}
                Err(IpReject::Connections) => {
                    self.me.counters.reject(Reject::IpConnections);
                    return Some(ws::Response::too_many_requests(RETRY_AFTER_SECS));
                }
                Err(IpReject::HandshakeRate { retry_after_secs }) => {
                    self.me.counters.reject(Reject::IpHandshakeRate);
                    return Some(ws::Response::too_many_requests(retry_after_secs));
                }
            }
        }
        // Reserve the slot first so concurrent workers cannot overshoot the cap.
        if self.shared.ws_open.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
            self.me.counters.reject(Reject::MaxConnections);
            return Some(ws::Response::service_unavailable(RETRY_AFTER_SECS));
        }
        None
    }

    fn handle_request(&mut self, slot: usize, req: &ws::Request, now: Instant, now_ns: u64) {
        let route = self.router.route(req);
        let Some(addr) = self
            .clients
            .get(slot)
            .and_then(Option::as_ref)
            .map(|c| c.addr)
        else {
            return;
        };
        match route {
            Route::Upgrade(up) => {
                if let Some(resp) = self.check_limits(addr, now_ns) {
                    if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                        c.ws.respond(now, &resp);
                    }
                    return;
                }
                // PROTOCOL §8: a token at the upgrade, after the cheap limits.
                let mut claims = None;
                if up.endpoint == Endpoint::Ws && self.auth_on() {
                    match self.upgrade_auth(req, now_ns) {
                        Ok(c) => claims = c,
                        Err(resp) => {
                            // The slot `check_limits` reserved is not taken.
                            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
                            if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                                c.ws.respond(now, &resp);
                            }
                            return;
                        }
                    }
                }
                let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                    return;
                };
                c.ws.accept(&up);
                c.upgraded = true;
                c.last_read_ns = now_ns;
                c.last_ping_ns = now_ns;
                self.me.counters.connections_open.inc();
                if up.endpoint == Endpoint::Ws {
                    c.user = claims.as_ref().map(|cl| cl.sub.clone());
                    let id = self
                        .core
                        .open_conn_with(core_encoding(up.encoding), claims, now_ns);
                    c.core = Some(id);
                    let i = id.0 as usize;
                    if self.by_core.len() <= i {
                        self.by_core.resize(i + 1, u32::MAX);
                    }
                    self.by_core[i] = slot as u32;
                }
                self.schedule_heartbeat(slot);
                self.sync_auth_deadlines();
            }
            Route::Get(endpoint) => {
                self.me.counters.http_requests.inc();
                let resp = match endpoint {
                    Endpoint::Root => ws::Response::ok("text/html; charset=utf-8", DASHBOARD_HTML),
                    Endpoint::Healthz => match self.shared.health.check(now) {
                        Ok(()) => ws::Response::ok("text/plain; charset=utf-8", "ok"),
                        Err(why) => ws::Response::unhealthy(&why),
                    },
                    Endpoint::Metrics => ws::Response::ok(
                        "text/plain; version=0.0.4; charset=utf-8",
                        self.shared.render_metrics(),
                    ),
                    Endpoint::Symbols => ws::Response::ok(
                        "application/json",
                        self.shared.symbols.render_json().into_bytes(),
                    ),
                    Endpoint::Ws | Endpoint::Echo => ws::Response::upgrade_required(),
                };
                if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                    c.ws.respond(now, &resp);
                }
            }
            Route::Reject(resp) => {
                self.me.counters.http_requests.inc();
                if resp.status() == 403 {
                    self.me.counters.reject(Reject::OriginForbidden);
                }
                if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                    c.ws.respond(now, &resp);
                }
            }
        }
    }

    /// Moves what the codec wants to send (HTTP answers, pings, pongs, close
    /// frames, echoes) to the connection's queue, schedules its write, and
    /// keeps the codec's deadline in the wheel. A core connection whose codec
    /// left `Open` gets no more market data.
    fn move_codec_output(&mut self, slot: usize) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Some(id) = c.core
            && !c.ws.is_open()
        {
            self.core.handle_closing(id);
        }
        if c.ws.transmit_len() > 0 {
            match c.core {
                Some(id) => {
                    self.scratch.clear();
                    c.ws.poll_transmit(&mut self.scratch);
                    // Per-connection control bytes (ping, pong, close): a copy is expected here.
                    self.core
                        .queue_control(id, EncodedFrame::from_frame_bytes(self.scratch.clone()));
                }
                None => {
                    c.ws.poll_transmit(&mut c.out);
                    self.pending_writes.push(slot);
                }
            }
        } else if c.ws.is_closed() {
            // Nothing more to say: let the flush step drop it once written.
            self.pending_writes.push(slot);
        }
        self.sync_codec_timer(slot);
    }

    fn drain_ring(&mut self, now_ns: u64) -> usize {
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
        self.pacer.handle_drained(now_ns, n == limit);
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
                if code == CloseCode::SLOW_CONSUMER.0 {
                    self.me.counters.closed_slow.inc();
                    self.me.counters.reject(Reject::SlowConsumer);
                } else if code == CLOSE_RATE_LIMITED {
                    self.me.counters.reject(Reject::RateLimitClose);
                }
                c.ws.close(now, CloseCode(code), reason);
                self.move_codec_output(slot);
            }
        }
        n
    }

    /// Writes dirty connections, oldest first, for one slice of the pacer
    /// ([`Pacer::slice_end`]); the rest wait for the next turn, after reads,
    /// accepts and the ring. A connection that gets more output while others
    /// wait goes behind them, so a frame waits at most one pass over the
    /// connections dirty before it, and under load each write carries every
    /// frame that arrived during that pass (the batch grows with the load).
    fn flush(&mut self, start_ns: u64) -> usize {
        let end_ns = self.pacer.slice_end(start_ns);
        let mut n = 0;
        let (mut writes, mut bytes) = (0u64, 0u64);
        let mut now_ns = start_ns;
        while let Some(id) = self.core.poll_dirty() {
            n += 1;
            self.flush_one(id, start_ns, &mut writes, &mut bytes);
            if n % FLUSH_CLOCK_EVERY == 0 {
                now_ns = self.mono_ns(Instant::now());
                if now_ns >= end_ns {
                    break;
                }
            }
        }
        if n % FLUSH_CLOCK_EVERY != 0 {
            now_ns = self.mono_ns(Instant::now());
        }
        self.me.counters.writes.add(writes);
        self.me.counters.bytes_out.add(bytes);
        let done = self.core.dirty_done();
        let mark = self.core.dirty_mark();
        self.pacer
            .handle_flushed(now_ns, start_ns, done, mark, self.core.has_dirty());
        self.me.counters.last_pass_ns.set(self.pacer.last_pass_ns());
        if self.batch_ts.front().is_some_and(|&(_, mark)| mark <= done) {
            let done_ns = realtime_ns();
            while let Some(&(ts, mark)) = self.batch_ts.front() {
                if mark > done {
                    break;
                }
                let _ = self.latency.record(done_ns.saturating_sub(ts).max(1_000));
                self.batch_ts.pop_front();
            }
        }
        n
    }

    fn flush_one(&mut self, id: ConnId, now_ns: u64, writes: &mut u64, bytes: &mut u64) {
        let Some(&slot) = self.by_core.get(id.0 as usize) else {
            return;
        };
        let slot = slot as usize;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if c.blocked {
            // Its writable event will flush it.
            return;
        }
        let result = flush_conn(&mut c.stream, &mut self.core, id, now_ns, writes, bytes);
        self.after_flush(slot, id, result, now_ns);
    }

    /// After writing a core connection: drop it if closed and written;
    /// otherwise note a block, measure the kernel's unsent bytes when they
    /// may matter (a blocked write, or some were unsent last time), and
    /// resume reading it if it was paused.
    fn after_flush(&mut self, slot: usize, id: ConnId, result: io::Result<Flush>, now_ns: u64) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match result {
            Ok(Flush::Drained) if c.ws.is_closed() => return self.drop_client(slot, now_ns),
            Err(_) => return self.drop_client(slot, now_ns),
            Ok(Flush::Blocked) => {
                c.blocked = true;
                self.core.handle_blocked(id);
                self.measure_unsent(slot, id, now_ns);
            }
            Ok(Flush::Drained) => {
                if self.core.outbox(id).kernel_unsent_bytes() > 0 {
                    self.measure_unsent(slot, id, now_ns);
                }
            }
        }
        self.resume_reads(slot);
    }

    /// Asks the kernel how much of `slot`'s output it holds unsent and tells
    /// the core (DESIGN "Freshness").
    fn measure_unsent(&mut self, slot: usize, id: ConnId, now_ns: u64) {
        let Some(c) = self.clients.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if let Ok(n) = unsent_bytes(&c.stream) {
            self.core.handle_kernel_unsent(id, n, now_ns);
        }
    }

    /// A paused client (see `read_client`) whose queue is back under
    /// high-water is read again; edge-triggered, so it is queued for a read.
    fn resume_reads(&mut self, slot: usize) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if c.read_paused && c.core.is_none_or(|id| !self.core.over_high_water(id)) {
            c.read_paused = false;
            self.pending_reads.push(slot);
        }
    }

    /// Writes the clients that became writable or got shell output (HTTP
    /// answers, echoes); not held for the dirty queue, so handshakes stay quick.
    fn write_pending(&mut self, now_ns: u64) -> usize {
        let (mut writes, mut bytes) = (0u64, 0u64);
        let mut n = 0;
        for slot in std::mem::take(&mut self.pending_writes) {
            n += self.write_client(slot, now_ns, &mut writes, &mut bytes);
        }
        self.me.counters.writes.add(writes);
        self.me.counters.bytes_out.add(bytes);
        n
    }

    /// Writes a client's pending output after a writable event or new shell output.
    fn write_client(
        &mut self,
        slot: usize,
        now_ns: u64,
        writes: &mut u64,
        bytes: &mut u64,
    ) -> usize {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return 0;
        };
        let result = match c.core {
            Some(id) => {
                let result = flush_conn(&mut c.stream, &mut self.core, id, now_ns, writes, bytes);
                self.after_flush(slot, id, result, now_ns);
                return 1;
            }
            None => loop {
                if c.out_pos == c.out.len() {
                    c.out = Vec::new();
                    c.out_pos = 0;
                    break Ok(Flush::Drained);
                }
                *writes += 1;
                match c.stream.write(&c.out[c.out_pos..]) {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *bytes += n as u64;
                        c.out_pos += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flush::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
        };
        match result {
            Ok(Flush::Drained) if c.ws.is_closed() => self.drop_client(slot, now_ns),
            Ok(_) => self.resume_reads(slot),
            Err(_) => self.drop_client(slot, now_ns),
        }
        1
    }

    fn timers(&mut self, now: Instant, now_ns: u64) -> usize {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        let fired = self.timers.poll_expired(now_ns, &mut expired);
        for &(_, key) in &expired {
            let slot = key.slot as usize;
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if c.generation != key.generation {
                continue;
            }
            match key.kind {
                TimerKind::Codec => {
                    c.codec_timer = None;
                    c.codec_deadline = None;
                    if c.ws.state() == ws::State::Handshake {
                        self.me.counters.reject(Reject::HandshakeTimeout);
                    }
                    c.ws.handle_timeout(now);
                    if c.ws.is_closed() {
                        // Whatever was not written by now will not be: the peer is not reading.
                        self.drop_client(slot, now_ns);
                    } else {
                        self.sync_codec_timer(slot);
                    }
                }
                TimerKind::Heartbeat => {
                    c.heartbeat_timer = None;
                    self.heartbeat(slot, now, now_ns);
                }
                TimerKind::Auth => self.auth_deadline(slot, now, now_ns),
            }
        }
        self.expired = expired;
        if now_ns.saturating_sub(self.last_housekeeping_ns) >= HOUSEKEEPING_NS {
            self.last_housekeeping_ns = now_ns;
            // Sockets that held unsent bytes get no event as the kernel
            // drains them (or does not): measure them again.
            let mut ids: Vec<ConnId> = self.core.kernel_backlogged().collect();
            // And a bounded share of the connections written since their
            // last measure, so a write the kernel took but could not send is
            // seen within about a second at 10,000 active connections,
            // without a syscall per write or a long turn.
            ids.extend(std::iter::from_fn(|| self.core.poll_unmeasured()).take(MEASURES_PER_TURN));
            for id in ids {
                if let Some(&slot) = self.by_core.get(id.0 as usize) {
                    self.measure_unsent(slot as usize, id, now_ns);
                }
            }
            self.core.handle_timeout(now_ns);
        }
        if now_ns.saturating_sub(self.last_publish_ns) >= PUBLISH_NS {
            self.last_publish_ns = now_ns;
            self.publish_stats();
            if let Ok(mut h) = self.me.latency_ns.lock() {
                h.clone_from(&self.latency);
            }
            if self.shared.ip_limits_on {
                self.shared.ip_limits().sweep(now_ns);
            }
        }
        fired
    }

    /// A heartbeat entry fired (PROTOCOL §7): close 4003 after ping interval +
    /// pong timeout of silence, else ping when a ping interval has passed.
    fn heartbeat(&mut self, slot: usize, now: Instant, now_ns: u64) {
        let ping_ns = self.cfg.ping_interval_ms * 1_000_000;
        let silence_ns = ping_ns + self.cfg.pong_timeout_ms * 1_000_000;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !c.ws.is_open() {
            // Closing: the close-handshake deadline takes over.
            return;
        }
        if now_ns.saturating_sub(c.last_read_ns) >= silence_ns {
            debug!(worker = self.id.0, addr = %c.addr, "heartbeat timeout");
            self.me.counters.reject(Reject::HeartbeatTimeout);
            c.ws.close(now, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            self.move_codec_output(slot);
            return;
        }
        if now_ns.saturating_sub(c.last_ping_ns) >= ping_ns {
            c.last_ping_ns = now_ns;
            let _ = c.ws.send_ping(&[]);
            self.move_codec_output(slot);
        }
        self.schedule_heartbeat(slot);
    }

    /// Publishes the core's counters for scrapes (O(connections): once a second).
    fn publish_stats(&self) {
        let s = self.core.stats();
        let c = &self.me.counters;
        c.subscriptions.set(s.index.conn_entries as u64);
        c.messages_out.set(s.delivered_msgs);
        c.snapshot_requests.set(s.snapshot_requests_sent);
        c.snapshot_requests_coalesced
            .set(s.snapshot_requests_coalesced);
        c.dropped_slow.set(s.dropped_deltas + s.dropped_trades);
        c.core_connections.set(s.connections as u64);
        let i = &s.index;
        c.index_entries.set(
            (i.book_entries
                + i.trades_entries
                + i.conn_entries
                + i.json_entries
                + i.symbols_with_interest) as u64,
        );
        for (r, v) in [
            (Reject::RateLimited, s.rejected_rate_limited),
            (Reject::BadRequest, s.rejected_bad_request),
            (
                Reject::TooManySubscriptions,
                s.rejected_too_many_subscriptions,
            ),
            (Reject::UnknownSymbol, s.rejected_unknown_symbol),
            (Reject::Forbidden, s.rejected_forbidden),
            (Reject::Unauthorized, s.rejected_unauthorized),
            (Reject::TokenExpired, s.token_expired_closes),
            (Reject::UserConnections, s.rejected_user_connections),
        ] {
            c.rejections[r as usize].set(v);
        }
        for (counter, &v) in c.auth_results.iter().zip(&s.auth_results) {
            counter.set(v);
        }
        for (gauge, &v) in c.tiers.iter().zip(&s.tiers) {
            gauge.set(v as u64);
        }
        c.timers.set(self.timers.len() as u64);
        c.oldest_backlog_age_ns.set(s.oldest_backlog_age_ns);
        c.lag_closes.set(s.lag_closes);
        if let Ok(mut h) = self.me.resync_lag.lock() {
            *h = s.resync_lag;
        }
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
        for h in [c.codec_timer, c.heartbeat_timer].into_iter().flatten() {
            self.timers.cancel(h);
        }
        self.release_user(&mut c);
        if c.upgraded {
            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
            self.me.counters.connections_open.dec();
        }
        if self.shared.ip_limits_on {
            self.shared.ip_limits().disconnect(c.addr.ip(), now_ns);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::SymbolId;
    use crate::fanout::ring::DataKind;
    use crate::wire::pb::{self, server_message::Body};

    /// A socket stand-in that counts write calls and takes everything.
    #[derive(Default)]
    struct CountingWriter {
        calls: usize,
        bytes: Vec<u8>,
    }

    impl Write for CountingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                self.bytes.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(body: Body) -> EncodedFrame {
        EncodedFrame::binary(&pb::ServerMessage { body: Some(body) })
    }

    /// N ticks queued for one connection in a loop turn leave in one write, not N.
    #[test]
    fn queued_ticks_leave_in_one_write() {
        let mut core = WorkerCore::new(Default::default());
        let sym = SymbolId(0);
        core.handle_ring(
            ToWorker::Instrument {
                symbol: sym,
                name: "BTC-USD".into(),
                price_decimals: 2,
                size_decimals: 4,
                epoch: 0,
            },
            0,
        );
        let conn = core.open_conn(CoreEncoding::Proto);
        core.handle_text(
            conn,
            r#"{"op":"subscribe","symbols":["BTC-USD"],"id":1}"#,
            0,
        );
        while core.poll_to_ingest().is_some() {}
        let snapshot = pb::BookSnapshot {
            symbol: "BTC-USD".into(),
            seq: 10,
            ..Default::default()
        };
        core.handle_ring(
            ToWorker::Snapshot {
                symbol: sym,
                seq: 10,
                bin: Some(frame(Body::Snapshot(snapshot))),
                json: None,
                stale: None,
            },
            0,
        );
        // Flush the Subscribed + snapshot first, so only the ticks remain.
        let mut w = CountingWriter::default();
        let (mut writes, mut bytes) = (0, 0);
        while let Some(c) = core.poll_dirty() {
            flush_conn(&mut w, &mut core, c, 0, &mut writes, &mut bytes).unwrap();
        }
        let ticks = 40;
        for seq in 11..11 + ticks {
            let delta = pb::BookDelta {
                symbol: "BTC-USD".into(),
                seq,
                ..Default::default()
            };
            core.handle_ring(
                ToWorker::Data {
                    symbol: sym,
                    kind: DataKind::Delta,
                    seq,
                    ingest_ts_ns: 0,
                    bin: frame(Body::Delta(delta)),
                    json: None,
                },
                0,
            );
        }
        let mut w = CountingWriter::default();
        let (mut writes, mut bytes) = (0, 0);
        let dirty: Vec<_> = std::iter::from_fn(|| core.poll_dirty()).collect();
        assert_eq!(
            dirty,
            vec![conn],
            "the connection is dirty once, not once per tick"
        );
        assert_eq!(
            flush_conn(&mut w, &mut core, conn, 0, &mut writes, &mut bytes).unwrap(),
            Flush::Drained
        );
        assert_eq!(w.calls, 1, "{ticks} ticks in one writev");
        assert_eq!(writes, 1);
        assert_eq!(bytes as usize, w.bytes.len());
        // And the bytes are the ticks, in order.
        let mut rest = &w.bytes[..];
        let mut seqs = Vec::new();
        while !rest.is_empty() {
            let len = rest[1] as usize;
            let msg = <pb::ServerMessage as prost::Message>::decode(&rest[2..2 + len]).unwrap();
            if let Some(Body::Delta(d)) = msg.body {
                seqs.push(d.seq);
            }
            rest = &rest[2 + len..];
        }
        assert_eq!(seqs, (11..11 + ticks).collect::<Vec<_>>());
    }
}
