//! The client fleet: WebSocket clients on several threads, each a `mio` loop
//! holding its share of the connections (the I/O shell around [`Session`]).
//!
//! - Connections are opened at a paced rate, from source addresses
//!   `127.0.0.1 … 127.0.0.N` in turn when the server is on loopback (each
//!   source address has its own ephemeral ports, so a process never runs out).
//! - Each client subscribes to a few symbols picked by Zipf popularity, in
//!   protobuf or JSON, to the book and maybe the trades.
//! - A fraction of clients are slow readers (a byte budget per tick); churn
//!   closes random clients at a rate, and the loop reopens to the target.
//! - Counts go to a thread-local [`Tally`], merged into a shared one every
//!   50 ms for the controller.
//!
//! Every loop is bounded: the controller sets `stop`, and threads exit within
//! one tick (10 ms) of it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use tickwire::book::synth::Rng;
use tickwire::ws::CloseCode;

use crate::session::{Encoding, Phase, Session, SessionConfig};
use crate::stats::{MAX_SAMPLES, Tally};
use crate::verify::ChecksumMemo;

/// The fleet's fixed settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The engine's WebSocket address.
    pub ws: SocketAddr,
    /// Client threads (mio loops).
    pub threads: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N used in turn (loopback servers
    /// only; 0 or 1: let the kernel choose).
    pub source_ips: u8,
    /// Symbols, hottest first (popularity rank).
    pub symbols: Vec<String>,
    /// Symbols each client subscribes to (distinct, at most the symbol count).
    pub symbols_per_client: usize,
    /// Zipf exponent of symbol popularity (0: uniform).
    pub popularity_zipf: f64,
    /// Fraction of clients that also subscribe to trades.
    pub trades_fraction: f64,
    /// Fraction of clients that use JSON (half by subprotocol, half by query).
    pub json_fraction: f64,
    /// Read budget of a slow reader, bytes per second.
    pub slow_read_bytes_per_sec: u64,
    /// The most clients that will ever read slowly (the largest slow
    /// fraction the run will set): these connect with a small receive
    /// buffer, so that the engine, not the kernel, holds what they do not read.
    pub slow_max_fraction: f64,
    /// Receive buffer of those clients, bytes (0: the kernel's default).
    pub slow_recv_buffer: usize,
    /// New connections per second across the fleet.
    pub connect_rate_per_sec: u64,
    /// An upgrade not answered within this is abandoned (ms).
    pub handshake_timeout_ms: u64,
    pub seed: u64,
    /// Client threads are named `<thread_name>-<i>` (at most 15 bytes in
    /// all, Linux's limit), so their CPU can be told apart in `/proc`.
    pub thread_name: String,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            ws: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 1,
            source_ips: 8,
            symbols: Vec::new(),
            symbols_per_client: 3,
            popularity_zipf: 1.0,
            trades_fraction: 0.5,
            json_fraction: 0.1,
            slow_read_bytes_per_sec: 64 * 1024,
            slow_max_fraction: 0.0,
            slow_recv_buffer: 8 * 1024,
            connect_rate_per_sec: 5_000,
            handshake_timeout_ms: 10_000,
            seed: 1,
            thread_name: "lg-client".into(),
        }
    }
}

/// What the controller changes while the fleet runs.
#[derive(Debug, Default)]
struct Control {
    target: AtomicUsize,
    /// Churn, connections closed per second × 1000.
    churn_milli: AtomicU64,
    /// Slow-reader fraction × 1e6.
    slow_ppm: AtomicU64,
    stop: AtomicBool,
}

/// What one thread shares with the controller.
#[derive(Debug, Default)]
struct ThreadShared {
    tally: Mutex<Tally>,
    /// Sessions open (upgraded, not closing).
    open: AtomicUsize,
}

/// Subscribers per symbol (by index in [`FleetConfig::symbols`]), counted
/// while their session is open: with the feed's per-symbol counts this gives
/// the offered load.
#[derive(Debug)]
pub struct Subscribers {
    pub book: Vec<AtomicU32>,
    pub trades: Vec<AtomicU32>,
}

impl Subscribers {
    fn new(n: usize) -> Subscribers {
        Subscribers {
            book: (0..n).map(|_| AtomicU32::new(0)).collect(),
            trades: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Messages that `deltas` deltas and `trades` trades of symbol `i` owe
    /// its current subscribers (the offered load).
    pub fn offered(&self, i: usize, deltas: u64, trades: u64) -> f64 {
        let n = |v: &Vec<AtomicU32>| f64::from(v.get(i).map_or(0, |a| a.load(Ordering::Relaxed)));
        deltas as f64 * n(&self.book) + trades as f64 * n(&self.trades)
    }
}

/// A running fleet.
pub struct Fleet {
    ctl: Arc<Control>,
    shared: Vec<Arc<ThreadShared>>,
    threads: Vec<JoinHandle<()>>,
    pub subscribers: Arc<Subscribers>,
    /// The most sockets this process can hold (open-file limit less a margin).
    pub max_clients: usize,
}

/// Files kept free for everything else (engine in-process, reports, /proc).
const FD_MARGIN: usize = 200;

impl Fleet {
    /// Starts the threads with a target of `target` connections.
    pub fn start(cfg: FleetConfig, target: usize) -> io::Result<Fleet> {
        if cfg.symbols.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the fleet needs at least one symbol",
            ));
        }
        let max_clients = crate::stats::open_file_limit()
            .map_or(usize::MAX, |l| (l as usize).saturating_sub(FD_MARGIN));
        let threads = cfg.threads.max(1);
        let ctl = Arc::new(Control::default());
        let subscribers = Arc::new(Subscribers::new(cfg.symbols.len()));
        let cdf = Arc::new(zipf_cdf(cfg.symbols.len(), cfg.popularity_zipf));
        let cfg = Arc::new(cfg);
        let mut fleet = Fleet {
            ctl,
            shared: Vec::new(),
            threads: Vec::new(),
            subscribers,
            max_clients,
        };
        fleet.set_target(target);
        for i in 0..threads {
            let shared = Arc::new(ThreadShared::default());
            let mut lp = ClientLoop::new(
                i,
                threads,
                cfg.clone(),
                cdf.clone(),
                fleet.ctl.clone(),
                shared.clone(),
                fleet.subscribers.clone(),
            )?;
            fleet.shared.push(shared);
            fleet.threads.push(
                std::thread::Builder::new()
                    .name(format!("{}-{i}", cfg.thread_name))
                    .spawn(move || lp.run())?,
            );
        }
        Ok(fleet)
    }

    /// Sets the number of connections to hold (capped at [`Fleet::max_clients`]).
    pub fn set_target(&self, n: usize) {
        self.ctl
            .target
            .store(n.min(self.max_clients), Ordering::Relaxed);
    }

    pub fn target(&self) -> usize {
        self.ctl.target.load(Ordering::Relaxed)
    }

    /// Connections closed and reopened per second.
    pub fn set_churn(&self, per_sec: f64) {
        let v = if per_sec.is_finite() {
            per_sec.max(0.0)
        } else {
            0.0
        };
        self.ctl
            .churn_milli
            .store((v * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Fraction of clients reading slowly (applies at once to every client).
    pub fn set_slow_fraction(&self, f: f64) {
        let v = if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.ctl.slow_ppm.store((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.shared
            .iter()
            .map(|s| s.open.load(Ordering::Relaxed))
            .sum()
    }

    /// Adds what every thread counted since the last call into `into`.
    pub fn take(&self, into: &mut Tally) {
        for s in &self.shared {
            if let Ok(mut t) = s.tally.lock() {
                into.add(&t);
                t.reset();
            }
        }
    }

    /// Stops every thread (each closes its sockets) and waits for them.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Cumulative Zipf weights `1/(i+1)^s`, normalised to end at 1.
pub fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let s = if s.is_finite() { s.max(0.0) } else { 0.0 };
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for i in 0..n {
        total += ((i + 1) as f64).powf(-s);
        cdf.push(total);
    }
    for c in &mut cdf {
        *c /= total;
    }
    cdf
}

fn pick(cdf: &[f64], rng: &mut Rng) -> usize {
    let u = rng.unit_f64();
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
}

/// `k` distinct symbol indices drawn by popularity (fewer only if the
/// draws keep colliding, which Zipf makes rare for small `k`).
pub fn pick_symbols(cdf: &[f64], k: usize, rng: &mut Rng) -> Vec<u32> {
    let k = k.clamp(1, cdf.len());
    let mut out: Vec<u32> = Vec::with_capacity(k);
    let mut tries = 0;
    while out.len() < k && tries < 64 * k {
        let i = pick(cdf, rng) as u32;
        if !out.contains(&i) {
            out.push(i);
        }
        tries += 1;
    }
    out
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One client socket and its session.
struct Client {
    stream: TcpStream,
    session: Session,
    symbols: Vec<u32>,
    book: bool,
    trades: bool,
    /// Fixed in `[0, 1)`: the client reads slowly while this is below the
    /// slow fraction.
    slow_u: f64,
    started: Instant,
    closing_since: Option<Instant>,
    /// Counted in [`Subscribers`] and the open gauge.
    counted: bool,
    /// Bytes were ever received (distinguishes a refused connect).
    got_bytes: bool,
}

struct Slot {
    generation: u32,
    client: Option<Client>,
}

/// Loop tick: connects, churn, slow reads, stats.
const TICK: Duration = Duration::from_millis(10);
/// Reads per readiness event before yielding to other sockets.
const READS_PER_EVENT: usize = 4;
/// Events handled between two looks at the clock.
const EVENTS_PER_CHECK: usize = 64;
/// How long a closing connection waits for the server's close.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// When the loop last ticked, swept and published.
struct Timers {
    tick: Instant,
    sweep: Instant,
    publish: Instant,
}

impl Timers {
    fn new(now: Instant) -> Timers {
        Timers {
            tick: now,
            sweep: now,
            publish: now,
        }
    }
}

struct ClientLoop {
    index: usize,
    threads: usize,
    cfg: Arc<FleetConfig>,
    cdf: Arc<Vec<f64>>,
    ctl: Arc<Control>,
    shared: Arc<ThreadShared>,
    subscribers: Arc<Subscribers>,
    poll: Poll,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Clients not closing (connecting or open).
    live: usize,
    open: usize,
    /// Not drained after READS_PER_EVENT reads: read again next turn.
    again: Vec<usize>,
    rng: Rng,
    tally: Tally,
    memo: ChecksumMemo,
    buf: Vec<u8>,
    connect_credit: f64,
    churn_credit: f64,
    connect_pause_until: Option<Instant>,
    next_source: u32,
    was_slow: bool,
}

impl ClientLoop {
    fn new(
        index: usize,
        threads: usize,
        cfg: Arc<FleetConfig>,
        cdf: Arc<Vec<f64>>,
        ctl: Arc<Control>,
        shared: Arc<ThreadShared>,
        subscribers: Arc<Subscribers>,
    ) -> io::Result<ClientLoop> {
        Ok(ClientLoop {
            index,
            threads,
            rng: Rng::new(cfg.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            cfg,
            cdf,
            ctl,
            shared,
            subscribers,
            poll: Poll::new()?,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            open: 0,
            again: Vec::new(),
            tally: Tally::new(),
            memo: ChecksumMemo::new(),
            buf: vec![0u8; 256 * 1024],
            connect_credit: 0.0,
            churn_credit: 0.0,
            connect_pause_until: None,
            next_source: index as u32,
            was_slow: false,
        })
    }

    fn my_share(&self, total: usize) -> usize {
        total / self.threads + usize::from(self.index < total % self.threads)
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(4096);
        let mut timers = Timers::new(Instant::now());
        while !self.ctl.stop.load(Ordering::Relaxed) {
            let timeout = if self.again.is_empty() {
                TICK.saturating_sub(timers.tick.elapsed())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                self.note(format!("poll failed: {e}"));
                break;
            }
            for (k, ev) in events.iter().enumerate() {
                let t = ev.token().0;
                let (idx, generation) = (t & 0xffff_ffff, (t >> 32) as u32);
                if self
                    .slots
                    .get(idx)
                    .is_none_or(|s| s.generation != generation || s.client.is_none())
                {
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(idx);
                }
                if ev.is_writable() {
                    self.flush(idx);
                }
                self.reap(idx);
                // A backlog can make one batch of events take seconds:
                // counts, ticks and the stop flag must not wait for it.
                if k % EVENTS_PER_CHECK == EVENTS_PER_CHECK - 1 {
                    self.maintain(&mut timers);
                    if self.ctl.stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            for idx in std::mem::take(&mut self.again) {
                if self.slots[idx].client.is_some() {
                    self.on_readable(idx);
                    self.reap(idx);
                }
            }
            self.maintain(&mut timers);
        }
        self.shutdown();
    }

    /// Ticks, sweeps and publishes when they are due.
    fn maintain(&mut self, timers: &mut Timers) {
        let now = Instant::now();
        let dt = now.duration_since(timers.tick);
        if dt >= TICK {
            timers.tick = now;
            self.tick(now, dt.as_secs_f64());
        }
        if now.duration_since(timers.sweep) >= Duration::from_millis(250) {
            timers.sweep = now;
            self.sweep(now);
        }
        if now.duration_since(timers.publish) >= Duration::from_millis(50) {
            timers.publish = now;
            self.publish();
        }
    }

    fn note(&mut self, what: String) {
        if self.tally.samples.len() < MAX_SAMPLES {
            self.tally
                .samples
                .push(format!("note (not a violation): {what}"));
        }
    }

    fn publish(&mut self) {
        if let Ok(mut t) = self.shared.tally.lock() {
            t.add(&self.tally);
        }
        self.tally.reset();
        self.shared.open.store(self.open, Ordering::Relaxed);
    }

    fn is_slow(&self, c: &Client) -> bool {
        let ppm = self.ctl.slow_ppm.load(Ordering::Relaxed);
        ppm > 0 && c.slow_u * 1e6 < ppm as f64
    }

    fn tick(&mut self, now: Instant, dt: f64) {
        let target = self.my_share(self.ctl.target.load(Ordering::Relaxed));
        // Open up to the target, paced.
        let paused = self.connect_pause_until.is_some_and(|t| now < t);
        if self.live < target && !paused {
            let rate = self.cfg.connect_rate_per_sec.max(1) as f64 / self.threads as f64;
            self.connect_credit = (self.connect_credit + rate * dt).min(rate * 0.2 + 1.0);
            let n = (self.connect_credit as usize)
                .min(target - self.live)
                .min(512);
            self.connect_credit -= n as f64;
            for _ in 0..n {
                if !self.connect(now) {
                    break;
                }
            }
        }
        // Shed down to the target.
        if self.live > target {
            let mut excess = self.live - target;
            for idx in (0..self.slots.len()).rev() {
                if excess == 0 {
                    break;
                }
                if self.slots[idx]
                    .client
                    .as_ref()
                    .is_some_and(|c| c.closing_since.is_none())
                {
                    self.begin_close(idx, now);
                    self.tally.shed += 1;
                    excess -= 1;
                }
            }
        }
        // Churn: close random open clients; the target reopens them.
        let churn = self.ctl.churn_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        if churn > 0.0 && self.open > 0 {
            self.churn_credit += churn / self.threads as f64 * dt;
            let mut tries = 0;
            while self.churn_credit >= 1.0 && tries < 64 && !self.slots.is_empty() {
                tries += 1;
                let idx = self.rng.below(self.slots.len() as u64) as usize;
                let open = self.slots[idx]
                    .client
                    .as_ref()
                    .is_some_and(|c| c.closing_since.is_none() && c.session.phase() == Phase::Open);
                if open {
                    self.begin_close(idx, now);
                    self.tally.churned += 1;
                    self.churn_credit -= 1.0;
                }
            }
            self.churn_credit = self.churn_credit.min(churn + 1.0);
        } else {
            self.churn_credit = 0.0;
        }
        // Slow readers read their budget; clients that stopped being slow drain.
        let slow_now = self.ctl.slow_ppm.load(Ordering::Relaxed) > 0;
        if slow_now || self.was_slow {
            let budget =
                ((self.cfg.slow_read_bytes_per_sec as f64 * dt) as usize).clamp(1, self.buf.len());
            for idx in 0..self.slots.len() {
                let Some(c) = self.slots[idx].client.as_ref() else {
                    continue;
                };
                if self.is_slow(c) {
                    self.read_some(idx, budget);
                } else if self.was_slow {
                    self.on_readable(idx);
                }
                self.reap(idx);
            }
        }
        self.was_slow = slow_now;
    }

    /// Timeouts: upgrades that never finished, closes never answered.
    fn sweep(&mut self, now: Instant) {
        let hs = Duration::from_millis(self.cfg.handshake_timeout_ms);
        for idx in 0..self.slots.len() {
            let Some(c) = self.slots[idx].client.as_mut() else {
                continue;
            };
            let expired = match c.closing_since {
                Some(t) => now.duration_since(t) > CLOSE_WAIT,
                None => c.session.phase() == Phase::Handshake && now.duration_since(c.started) > hs,
            };
            if expired {
                if c.closing_since.is_none() {
                    self.tally.handshake_errors += 1;
                }
                c.session.abort();
                self.reap(idx);
            }
        }
    }

    fn source_ip(&mut self) -> Option<IpAddr> {
        let n = u32::from(self.cfg.source_ips);
        if n <= 1 || !self.cfg.ws.ip().is_loopback() || !self.cfg.ws.is_ipv4() {
            return None;
        }
        let k = self.next_source % n;
        self.next_source = self.next_source.wrapping_add(1);
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8)))
    }

    fn open_socket(&mut self, slow_candidate: bool) -> io::Result<TcpStream> {
        let addr = self.cfg.ws;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if slow_candidate && self.cfg.slow_recv_buffer > 0 {
            // Before connecting, so the advertised window is small too.
            socket.set_recv_buffer_size(self.cfg.slow_recv_buffer)?;
        }
        if let Some(ip) = self.source_ip() {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            // EINPROGRESS: a non-blocking connect has started.
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// Opens one client; `false` when connecting failed (connects pause briefly).
    fn connect(&mut self, now: Instant) -> bool {
        self.tally.connects += 1;
        let slow_u = self.rng.unit_f64();
        let mut stream = match self.open_socket(slow_u < self.cfg.slow_max_fraction) {
            Ok(s) => s,
            Err(e) => {
                self.tally.connect_errors += 1;
                self.note(format!("connect: {e}"));
                self.connect_pause_until = Some(now + Duration::from_millis(200));
                return false;
            }
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    client: None,
                });
                self.slots.len() - 1
            }
        };
        let generation = self.slots[idx].generation;
        let token = Token(idx | ((generation as usize) << 32));
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.tally.connect_errors += 1;
            self.note(format!("register: {e}"));
            self.free.push(idx);
            return false;
        }
        let rng = &mut self.rng;
        let symbols = pick_symbols(&self.cdf, self.cfg.symbols_per_client, rng);
        let trades = rng.chance(self.cfg.trades_fraction);
        let encoding = if rng.chance(self.cfg.json_fraction) {
            if rng.below(2) == 0 {
                Encoding::JsonProtocol
            } else {
                Encoding::JsonQuery
            }
        } else {
            Encoding::Proto
        };
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        let session = Session::new(SessionConfig {
            host: self.cfg.ws.to_string(),
            encoding,
            nonce,
            mask_seed: rng.next_u64(),
            symbols: symbols
                .iter()
                .map(|&i| self.cfg.symbols[i as usize].clone())
                .collect(),
            book: true,
            trades,
        });
        self.slots[idx].client = Some(Client {
            stream,
            session,
            symbols,
            book: true,
            trades,
            slow_u,
            started: now,
            closing_since: None,
            counted: false,
            got_bytes: false,
        });
        self.live += 1;
        true
    }

    fn begin_close(&mut self, idx: usize, now: Instant) {
        let Some(c) = self.slots[idx].client.as_mut() else {
            return;
        };
        if c.closing_since.is_some() {
            return;
        }
        c.closing_since = Some(now);
        c.session.close();
        self.live -= 1;
        if c.counted {
            self.uncount(idx);
        }
        self.flush(idx);
    }

    fn count(&mut self, idx: usize) {
        let Some(c) = self.slots[idx].client.as_mut() else {
            return;
        };
        c.counted = true;
        for &s in &c.symbols {
            if c.book {
                self.subscribers.book[s as usize].fetch_add(1, Ordering::Relaxed);
            }
            if c.trades {
                self.subscribers.trades[s as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.open += 1;
    }

    fn uncount(&mut self, idx: usize) {
        let Some(c) = self.slots[idx].client.as_mut() else {
            return;
        };
        c.counted = false;
        for &s in &c.symbols {
            if c.book {
                self.subscribers.book[s as usize].fetch_sub(1, Ordering::Relaxed);
            }
            if c.trades {
                self.subscribers.trades[s as usize].fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.open -= 1;
    }

    fn on_readable(&mut self, idx: usize) {
        let slow = self.slots[idx]
            .client
            .as_ref()
            .is_some_and(|c| self.is_slow(c));
        if slow {
            // Slow readers read on the tick only.
            return;
        }
        for _ in 0..READS_PER_EVENT {
            if !self.read_once(idx, self.buf.len()) {
                return;
            }
        }
        self.again.push(idx);
    }

    fn read_some(&mut self, idx: usize, budget: usize) {
        self.read_once(idx, budget);
    }

    /// One `read` of at most `max` bytes; `true` if it filled the request
    /// (there may be more to read).
    fn read_once(&mut self, idx: usize, max: usize) -> bool {
        let Some(c) = self.slots[idx].client.as_mut() else {
            return false;
        };
        if c.session.phase() == Phase::Closed {
            return false;
        }
        let max = max.min(self.buf.len());
        let result = c.stream.read(&mut self.buf[..max]);
        match result {
            Ok(0) => {
                self.on_eof(idx);
                false
            }
            Ok(n) => {
                c.got_bytes = true;
                c.session
                    .handle_read(&self.buf[..n], now_ns(), &mut self.tally, &mut self.memo);
                if !c.counted && c.session.phase() == Phase::Open && c.closing_since.is_none() {
                    self.count(idx);
                }
                self.flush(idx);
                n == max
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                if !c.got_bytes && c.session.phase() == Phase::Handshake {
                    self.tally.connect_errors += 1;
                    let msg = format!("connect: {e}");
                    self.note(msg);
                }
                self.on_eof(idx);
                false
            }
        }
    }

    fn on_eof(&mut self, idx: usize) {
        let Some(c) = self.slots[idx].client.as_mut() else {
            return;
        };
        match c.session.phase() {
            Phase::Open if c.closing_since.is_none() => {
                // Closed without a close frame.
                *self
                    .tally
                    .server_closes
                    .entry(CloseCode::ABNORMAL_CLOSURE.0)
                    .or_default() += 1;
            }
            Phase::Handshake if c.got_bytes => self.tally.handshake_errors += 1,
            _ => {}
        }
        c.session.abort();
    }

    fn flush(&mut self, idx: usize) {
        let Some(c) = self.slots[idx].client.as_mut() else {
            return;
        };
        while !c.session.pending_out().is_empty() {
            match c.stream.write(c.session.pending_out()) {
                Ok(0) => break,
                Ok(n) => c.session.advance_out(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.session.abort();
                    break;
                }
            }
        }
    }

    /// Drops the client if its session is over.
    fn reap(&mut self, idx: usize) {
        let closed = self.slots[idx]
            .client
            .as_ref()
            .is_some_and(|c| c.session.phase() == Phase::Closed);
        if !closed {
            return;
        }
        self.flush(idx);
        let counted = self.slots[idx].client.as_ref().is_some_and(|c| c.counted);
        if counted {
            self.uncount(idx);
        }
        let slot = &mut self.slots[idx];
        if let Some(mut c) = slot.client.take() {
            if c.closing_since.is_none() {
                self.live -= 1;
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(idx);
    }

    /// On stop: every open client sends a close frame, then sockets drop.
    fn shutdown(&mut self) {
        for idx in 0..self.slots.len() {
            if let Some(c) = self.slots[idx].client.as_mut() {
                c.session.close();
                self.flush(idx);
                if let Some(c) = self.slots[idx].client.as_mut() {
                    c.session.abort();
                }
                self.reap(idx);
            }
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_picks_favour_the_head_and_are_distinct() {
        let cdf = zipf_cdf(100, 1.2);
        assert!((cdf[99] - 1.0).abs() < 1e-12);
        let mut rng = Rng::new(3);
        let mut head = 0;
        for _ in 0..1000 {
            let s = pick_symbols(&cdf, 3, &mut rng);
            assert_eq!(s.len(), 3);
            assert!(s[0] != s[1] && s[1] != s[2] && s[0] != s[2]);
            head += s.iter().filter(|&&i| i < 5).count();
        }
        assert!(
            head > 1000,
            "the five hottest of 100 take most picks: {head}"
        );
        let uniform = zipf_cdf(4, 0.0);
        assert_eq!(uniform, vec![0.25, 0.5, 0.75, 1.0]);
        assert_eq!(pick_symbols(&zipf_cdf(2, 1.0), 5, &mut rng).len(), 2);
    }
}
