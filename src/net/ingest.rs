//! The ingest thread: one mio loop over the two feed listeners (protobuf and
//! JSON lines) and every feed connection.
//!
//! It owns the [`Market`] (every book and sequence) and is its only writer. For
//! each accepted message it asks the market what to publish, encodes each
//! published message once into an [`EncodedFrame`], and hands it to its
//! [`MarketSink`] (the fan-out rings, or a recorder in tests).
//!
//! It must never block on a consumer: the sink takes what it can and counts
//! the rest. Peer input never panics it: bad streams close that feed, bad
//! messages are rejected, both counted by reason and logged with the feed's id
//! and address.
//!
//! What one peer can cost the others is bounded:
//! - a feed's turn ends after [`READS_PER_TURN`] reads or about
//!   [`FEED_TURN_BUDGET_NS`] of work, whichever comes first;
//! - a connection must complete its first message within the hello timeout,
//!   and any message within the message timeout ([`FeedDeadlines`]);
//! - a `feed_id` is at most [`MAX_FEED_ID_BYTES`] and logged escaped;
//! - what the market holds and one message costs ([`crate::config::MarketLimits`]);
//! - when `accept` fails (out of file descriptors: `EMFILE`), the loop
//!   retries on a timer ([`super::accept_backoff`]: the listeners are
//!   edge-triggered, so connections already queued would otherwise wait for
//!   the next arrival), and such repeating warnings are logged once, then at
//!   most once per [`REPEAT_LOG_INTERVAL_NS`] with a count ([`LogThrottle`]).

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use crate::auth::feeds::FeedTokens;
use crate::book::decode::{Decoded, FeedDecoder, Framing};
use crate::book::feed_deadlines::FeedDeadlines;
use crate::book::feed_name::{MAX_FEED_ID_BYTES, display_feed_id};
use crate::book::market::{Market, Published};
use crate::book::{FeedId, RejectReason, StreamError, SymbolId};
use crate::config::IngestConfig;
use crate::metrics::{IngestCounters, LogThrottle};
use crate::wire::EncodedFrame;

use super::accept_backoff::{self, AcceptBackoff};
use super::backplane::{Backplane, BackplaneCounters};
use super::health::Liveness;

const PROTO_LISTENER: Token = Token(0);
const JSON_LISTENER: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_FEED: usize = 16;

/// Reads of one feed per readiness event before the loop serves others.
pub const READS_PER_TURN: usize = 16;
/// Work (reading, decoding, applying, publishing) one feed's turn may take
/// before the loop serves the others, checked after each read: one read of
/// the costliest input a feed can send (64 KiB of one-update deltas that each
/// shift a 5 000-level side, about 10 ms) still ends its turn.
pub const FEED_TURN_BUDGET_NS: u64 = 1_000_000;
/// A repeating warning is logged once, then at most once per this, with a count.
pub const REPEAT_LOG_INTERVAL_NS: u64 = accept_backoff::LOG_EVERY_NS;
/// Feed deadlines are checked at most this often (with the 100 ms idle poll,
/// their resolution).
const DEADLINE_SWEEP_NS: u64 = 50_000_000;
const READ_BUF_BYTES: usize = 64 * 1024;
/// Rejections logged at `warn` per feed before only every 10,000th is.
const REJECTS_LOGGED_PER_FEED: u64 = 20;

/// Where published market data goes. Implemented by the fan-out engine (one
/// ring per worker) and by test recorders. Runs on the ingest thread.
pub trait MarketSink: Send + 'static {
    /// One published message, in order, with its binary frame encoded once.
    /// Must not block.
    fn publish(&mut self, market: &Market, event: &Published, frame: &EncodedFrame);

    /// Serves the sink's own inputs (e.g. snapshot requests from workers) once
    /// per loop turn; returns the number of things done.
    fn do_work(&mut self, _market: &Market, _now_ns: u64) -> usize {
        0
    }

    /// Whether the sink has work waiting for room in a consumer (the loop then
    /// polls again within a millisecond instead of sleeping).
    fn has_pending(&self) -> bool {
        false
    }

    /// A symbol whose local interest (any channel, any worker) started
    /// (`true`) or ended (`false`) since the last call: an edge follows
    /// exactly those on the backplane.
    fn poll_interest_change(&mut self) -> Option<(SymbolId, bool)> {
        None
    }

    /// When the sink next has timed work (conflation windows), in ns since
    /// the Unix epoch: the loop sleeps no longer.
    fn next_due_ns(&self) -> Option<u64> {
        None
    }

    /// A symbol with no book yet (listed by its origin's heartbeat) must be
    /// known to the workers and `/symbols`.
    fn announce(&mut self, _market: &Market, _symbol: SymbolId) {}

    /// `lost` trades of `symbol` will never arrive (lost on the backplane).
    fn lose_trades(&mut self, _symbol: SymbolId, _lost: u64) {}
}

/// A sink that drops everything (an engine with no subscribers).
pub struct NullSink;

impl MarketSink for NullSink {
    fn publish(&mut self, _: &Market, _: &Published, _: &EncodedFrame) {}
}

/// Control-plane requests to the ingest thread (not market data).
pub enum Control {
    /// Run a closure against the market on the ingest thread (queries, metrics).
    WithMarket(Box<dyn FnOnce(&Market) + Send>),
    /// A reloaded ingest token file (SIGHUP): new feeds are judged by it, and
    /// a connected feed whose token it no longer holds is closed
    /// (`token_revoked`).
    SetFeedTokens(Arc<FeedTokens>),
    Shutdown,
}

/// The ingest server, bound but not yet running.
pub struct IngestServer {
    /// The shared token or the token file's (see `auth::feeds`).
    tokens: Option<Arc<FeedTokens>>,
    poll: Poll,
    waker: Arc<Waker>,
    proto: TcpListener,
    json: TcpListener,
    cfg: IngestConfig,
    counters: Arc<IngestCounters>,
    control_tx: Sender<Control>,
    control_rx: Receiver<Control>,
    liveness: Arc<Liveness>,
    backplane_counters: Arc<BackplaneCounters>,
}

/// A running ingest thread.
pub struct IngestHandle {
    pub proto_addr: SocketAddr,
    pub json_addr: SocketAddr,
    pub counters: Arc<IngestCounters>,
    control: Sender<Control>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl IngestServer {
    /// Binds both listeners (port 0 picks a free port; see [`IngestServer::proto_addr`]).
    pub fn bind(cfg: IngestConfig) -> io::Result<IngestServer> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut proto = TcpListener::bind(cfg.proto_addr)?;
        let mut json = TcpListener::bind(cfg.json_addr)?;
        poll.registry()
            .register(&mut proto, PROTO_LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut json, JSON_LISTENER, Interest::READABLE)?;
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let tokens = match (&cfg.token_file, &cfg.token) {
            (Some(path), _) => Some(Arc::new(load_feed_tokens(path)?)),
            (None, Some(t)) => Some(Arc::new(FeedTokens::Shared(t.clone()))),
            (None, None) => None,
        };
        Ok(IngestServer {
            tokens,
            poll,
            waker,
            proto,
            json,
            cfg,
            counters: Arc::new(IngestCounters::default()),
            control_tx,
            control_rx,
            liveness: Liveness::new("ingest"),
            backplane_counters: Arc::default(),
        })
    }

    /// The backplane's counters (all zero when there is no backplane).
    pub fn backplane_counters(&self) -> Arc<BackplaneCounters> {
        self.backplane_counters.clone()
    }

    pub fn proto_addr(&self) -> io::Result<SocketAddr> {
        self.proto.local_addr()
    }

    pub fn json_addr(&self) -> io::Result<SocketAddr> {
        self.json.local_addr()
    }

    /// Wakes the ingest thread; consumers call it after pushing into an empty ring.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    /// The ingest thread's liveness (see [`super::health`]).
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// Starts the thread named `ingest`.
    pub fn spawn(self, sink: Box<dyn MarketSink>) -> io::Result<IngestHandle> {
        let proto_addr = self.proto.local_addr()?;
        let json_addr = self.json.local_addr()?;
        let counters = self.counters.clone();
        let control = self.control_tx.clone();
        let waker = self.waker.clone();
        let backplane = match &self.cfg.backplane {
            Some(b) => Some(Backplane::start(
                b,
                self.waker.clone(),
                self.backplane_counters.clone(),
            )?),
            None => None,
        };
        // PROTOCOL §10: the local books' epoch is the start time in ms, so
        // that a restarted engine (or origin) names a new history.
        let epoch_ms = now_ns() / 1_000_000;
        let mut lp = IngestLoop {
            poll: self.poll,
            proto: self.proto,
            json: self.json,
            market: Market::with_limits(self.cfg.market).with_epoch(epoch_ms),
            cfg: self.cfg,
            counters: self.counters,
            control: self.control_rx,
            epoch: Instant::now(),
            accept_backoff: AcceptBackoff::default(),
            refused_log: LogThrottle::new(REPEAT_LOG_INTERVAL_NS),
            next_sweep_ns: 0,
            sink,
            feeds: Vec::new(),
            free: Vec::new(),
            pending: Vec::new(),
            next_feed_id: 1,
            out: Vec::new(),
            read_buf: vec![0; READ_BUF_BYTES].into_boxed_slice(),
            liveness: self.liveness,
            backplane,
            tokens: self.tokens,
        };
        let thread = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || lp.run())?;
        Ok(IngestHandle {
            proto_addr,
            json_addr,
            counters,
            control,
            waker,
            thread: Some(thread),
        })
    }
}

impl IngestHandle {
    /// Runs `f` against the market on the ingest thread and returns its result,
    /// or `None` if the thread does not answer within `timeout`.
    pub fn with_market<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&Market) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = Box::new(move |m: &Market| {
            let _ = tx.send(f(m));
        });
        self.control.send(Control::WithMarket(job)).ok()?;
        self.waker.wake().ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// A sender of control requests (for the HTTP side's queries).
    /// Hands a reloaded token file to the ingest thread (see [`Control::SetFeedTokens`]).
    pub fn set_feed_tokens(&self, tokens: FeedTokens) {
        if self
            .control
            .send(Control::SetFeedTokens(Arc::new(tokens)))
            .is_ok()
        {
            let _ = self.waker.wake();
        }
    }

    pub fn control(&self) -> (Sender<Control>, Arc<Waker>) {
        (self.control.clone(), self.waker.clone())
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.control.send(Control::Shutdown);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Feed {
    stream: TcpStream,
    addr: SocketAddr,
    id: FeedId,
    /// `feed_id` from the Hello as logs show it ([`display_feed_id`]); empty until then.
    name: String,
    decoder: FeedDecoder,
    deadlines: FeedDeadlines,
    rejected: u64,
}

struct IngestLoop {
    poll: Poll,
    proto: TcpListener,
    json: TcpListener,
    cfg: IngestConfig,
    counters: Arc<IngestCounters>,
    control: Receiver<Control>,
    /// The origin of the loop's monotonic clock (deadlines, retries, budgets).
    epoch: Instant,
    /// When to call `accept` again after it failed.
    /// Accept failures for lack of resources: retry timer and log limit.
    accept_backoff: AcceptBackoff,
    /// Feeds refused at `max_feeds`.
    refused_log: LogThrottle,
    next_sweep_ns: u64,
    market: Market,
    sink: Box<dyn MarketSink>,
    feeds: Vec<Option<Feed>>,
    free: Vec<usize>,
    /// Feeds that still had bytes to read when their turn's budget ran out.
    pending: Vec<usize>,
    next_feed_id: u64,
    out: Vec<Published>,
    read_buf: Box<[u8]>,
    liveness: Arc<Liveness>,
    /// The NATS backplane, when this node is an origin or an edge.
    backplane: Option<Backplane>,
    /// How feeds authenticate now (replaced by a reload).
    tokens: Option<Arc<FeedTokens>>,
}

enum ReadOutcome {
    /// Socket drained (would block).
    Drained,
    /// Budget used up; more may be waiting.
    MoreLater,
    Closed(&'static str, String),
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl IngestLoop {
    /// The loop's monotonic clock, ns since it started.
    fn mono_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn run(&mut self) {
        info!(proto = ?self.proto.local_addr().ok(), json = ?self.json.local_addr().ok(), "ingest listening");
        let liveness = self.liveness.clone();
        let _alive = liveness.guard();
        let mut events = Events::with_capacity(1024);
        loop {
            liveness.beat();
            let mut timeout = if !self.pending.is_empty()
                || self.backplane.as_ref().is_some_and(Backplane::has_pending)
            {
                Duration::ZERO
            } else if self.sink.has_pending() {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(100)
            };
            if let Some(at) = self.accept_backoff.retry_at_ns() {
                timeout = timeout.min(Duration::from_nanos(at.saturating_sub(self.mono_ns())));
            }
            if let Some(at) = self.sink.next_due_ns() {
                timeout = timeout.min(Duration::from_nanos(at.saturating_sub(now_ns())));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "ingest poll failed; stopping");
                return;
            }
            let mut ready: Vec<usize> = std::mem::take(&mut self.pending);
            for ev in events.iter() {
                match ev.token() {
                    PROTO_LISTENER => self.accept(Framing::Protobuf),
                    JSON_LISTENER => self.accept(Framing::JsonLines),
                    WAKER => {}
                    // Feed tokens start at FIRST_FEED; nothing else is registered.
                    Token(t) => ready.extend(t.checked_sub(FIRST_FEED)),
                }
            }
            // Edge-triggered listeners raise no new event for connections that
            // were already queued when accept failed: try again on the timer.
            if self.accept_backoff.due(self.mono_ns()) {
                self.accept_backoff.on_success();
                self.accept(Framing::Protobuf);
                self.accept(Framing::JsonLines);
            }
            ready.sort_unstable();
            ready.dedup();
            for slot in ready {
                self.serve_feed(slot);
            }
            self.sweep_deadlines();
            if !self.serve_control() {
                self.close_all();
                return;
            }
            let now = now_ns();
            self.sink.do_work(&self.market, now);
            self.serve_backplane();
        }
    }

    /// The backplane's turn: local interest to the edge, what NATS
    /// delivered, timers and heartbeats; then what it published.
    fn serve_backplane(&mut self) {
        let now = self.mono_ns();
        // Drained on every node: without a backplane nobody else would, and
        // the sink's queue of interest changes would grow with every
        // subscription churn.
        while let Some((symbol, on)) = self.sink.poll_interest_change() {
            if let Some(bp) = self.backplane.as_mut() {
                bp.handle_interest(&mut self.market, symbol, on, now);
            }
        }
        let Some(bp) = self.backplane.as_mut() else {
            return;
        };
        bp.do_work(&mut self.market, &mut self.out, now);
        while let Some(symbol) = bp.poll_announce() {
            self.sink.announce(&self.market, symbol);
        }
        while let Some((symbol, lost)) = bp.poll_lost_trades() {
            self.sink.lose_trades(symbol, lost);
        }
        self.flush_published();
    }

    /// Returns false when asked to shut down.
    fn serve_control(&mut self) -> bool {
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::WithMarket(f) => f(&self.market),
                Control::SetFeedTokens(t) => self.set_feed_tokens(t),
                Control::Shutdown => return false,
            }
        }
        true
    }

    /// A reloaded token file: feeds whose token it no longer admits (or
    /// now names another feed) are closed; feeds not yet through their
    /// Hello will be judged by it.
    fn set_feed_tokens(&mut self, tokens: Arc<FeedTokens>) {
        let mut revoked = 0;
        for slot in 0..self.feeds.len() {
            let Some(feed) = self.feeds[slot].as_mut() else {
                continue;
            };
            if feed.decoder.still_admitted(Some(&tokens)) {
                feed.decoder.set_tokens(Some(tokens.clone()));
            } else {
                revoked += 1;
                self.close_feed(
                    slot,
                    "token_revoked",
                    "its token is no longer in the token file",
                );
            }
        }
        info!(feeds = tokens.len(), revoked, "ingest token file reloaded");
        self.tokens = Some(tokens);
    }

    fn accept(&mut self, framing: Framing) {
        loop {
            let listener = match framing {
                Framing::Protobuf => &self.proto,
                Framing::JsonLines => &self.json,
            };
            let (mut stream, addr) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // That connection is gone; the next one may be fine.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM…: the queue stays as it is
                    // until resources come back; rest, then retry on the timer.
                    self.counters.accept_errors.inc();
                    let f = self.accept_backoff.on_failure(self.mono_ns());
                    if let Some(suppressed) = f.log {
                        warn!(
                            error = %e,
                            retry_ms = accept_backoff::RETRY_NS / 1_000_000,
                            failures_since_last_line = suppressed,
                            "ingest accept failed; retrying (logged at most every {} s)",
                            REPEAT_LOG_INTERVAL_NS / 1_000_000_000
                        );
                    }
                    return;
                }
            };
            self.counters.feeds_accepted.inc();
            if self.counters.feeds_open.get() as usize >= self.cfg.max_feeds {
                if let Some(suppressed) = self.refused_log.handle_event(self.mono_ns()) {
                    warn!(
                        %addr,
                        max = self.cfg.max_feeds,
                        refused_since_last_line = suppressed,
                        "feed refused: too many feeds (logged at most every {} s)",
                        REPEAT_LOG_INTERVAL_NS / 1_000_000_000
                    );
                }
                self.counters.feeds_closed.inc("too_many_feeds");
                continue; // dropping the stream closes it
            }
            let _ = stream.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.feeds.push(None);
                self.feeds.len() - 1
            });
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot + FIRST_FEED),
                Interest::READABLE,
            ) {
                warn!(%addr, error = %e, "feed register failed");
                self.free.push(slot);
                continue;
            }
            let id = FeedId(self.next_feed_id);
            self.next_feed_id += 1;
            info!(feed = id.0, %addr, ?framing, "feed connected");
            self.counters.feeds_open.inc();
            self.feeds[slot] = Some(Feed {
                stream,
                addr,
                id,
                name: String::new(),
                decoder: FeedDecoder::with_tokens(
                    framing,
                    self.tokens.clone(),
                    self.cfg.max_frame_bytes,
                ),
                deadlines: FeedDeadlines::new(self.mono_ns()),
                rejected: 0,
            });
            // Bytes may already be waiting (edge-triggered): read them now.
            self.pending.push(slot);
        }
    }

    fn serve_feed(&mut self, slot: usize) {
        match self.read_feed(slot) {
            ReadOutcome::Drained => {}
            ReadOutcome::MoreLater => self.pending.push(slot),
            ReadOutcome::Closed(reason, detail) => self.close_feed(slot, reason, &detail),
        }
    }

    fn read_feed(&mut self, slot: usize) -> ReadOutcome {
        let turn_start_ns = self.mono_ns();
        for _ in 0..READS_PER_TURN {
            let Some(feed) = self.feeds.get_mut(slot).and_then(Option::as_mut) else {
                return ReadOutcome::Drained;
            };
            let n = match feed.stream.read(&mut self.read_buf) {
                Ok(0) => return ReadOutcome::Closed("eof", String::new()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadOutcome::Closed("io_error", e.to_string()),
            };
            self.counters.bytes_read.add(n as u64);
            // CLOCK_REALTIME once per read: every message in these bytes was read now.
            let ingest_ts_ns = now_ns();
            feed.decoder.handle_bytes(&self.read_buf[..n]);
            let completed = match self.drain_decoder(slot, ingest_ts_ns) {
                Ok(completed) => completed,
                Err(e) => return ReadOutcome::Closed(e.label(), e.to_string()),
            };
            let now = self.mono_ns();
            if let Some(feed) = self.feeds.get_mut(slot).and_then(Option::as_mut) {
                let buffered = feed.decoder.buffered_bytes();
                feed.deadlines.handle_read(now, completed, buffered);
            }
            if now.saturating_sub(turn_start_ns) >= FEED_TURN_BUDGET_NS {
                return ReadOutcome::MoreLater;
            }
        }
        ReadOutcome::MoreLater
    }

    /// Applies every complete message buffered for the feed in `slot`;
    /// returns how many there were (accepted or rejected).
    fn drain_decoder(&mut self, slot: usize, ingest_ts_ns: u64) -> Result<usize, StreamError> {
        let mut completed = 0;
        loop {
            // The slot is occupied: the caller just used it and nothing in between closes it.
            let Some(feed) = self.feeds.get_mut(slot).and_then(Option::as_mut) else {
                return Ok(completed);
            };
            let market = &self.market;
            let decoded = match feed.decoder.poll_message(&|s| market.decimals(s))? {
                None => return Ok(completed),
                Some(d) => d,
            };
            completed += 1;
            let feed_id = feed.id;
            let result = match decoded {
                Ok(Decoded::Hello { feed_id: name }) => {
                    if name.len() > MAX_FEED_ID_BYTES {
                        return Err(StreamError::FeedIdTooLong { bytes: name.len() });
                    }
                    feed.name = display_feed_id(&name);
                    info!(feed = feed_id.0, addr = %feed.addr, name = %feed.name, "feed hello");
                    self.counters.accepted.inc("hello");
                    Ok(())
                }
                Ok(Decoded::Snapshot(s)) => self
                    .market
                    .handle_snapshot(feed_id, s, ingest_ts_ns, &mut self.out)
                    .map(|_| self.counters.accepted.inc("snapshot")),
                Ok(Decoded::Delta(d)) => self
                    .market
                    .handle_delta(feed_id, d, ingest_ts_ns, &mut self.out)
                    .map(|_| self.counters.accepted.inc("delta")),
                Ok(Decoded::Trade(t)) => self
                    .market
                    .handle_trade(feed_id, t, ingest_ts_ns, &mut self.out)
                    .map(|_| self.counters.accepted.inc("trade")),
                Err(rejection) => {
                    if let Some(symbol) = &rejection.delta_symbol {
                        self.market
                            .handle_invalid_delta(feed_id, symbol, &mut self.out);
                    }
                    Err(rejection.reason)
                }
            };
            if let Err(reason) = result {
                self.count_rejection(slot, &reason);
            }
            self.flush_published();
        }
    }

    fn count_rejection(&mut self, slot: usize, reason: &RejectReason) {
        self.counters.rejected.inc(reason.label());
        let Some(feed) = self.feeds.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        feed.rejected += 1;
        if feed.rejected <= REJECTS_LOGGED_PER_FEED || feed.rejected % 10_000 == 0 {
            warn!(
                feed = feed.id.0,
                name = %feed.name,
                addr = %feed.addr,
                reason = reason.label(),
                rejected = feed.rejected,
                "ingest message rejected: {reason}"
            );
        } else {
            debug!(
                feed = feed.id.0,
                reason = reason.label(),
                "ingest message rejected: {reason}"
            );
        }
    }

    /// Encodes each published message once and hands it to the sink, in order.
    fn flush_published(&mut self) {
        for event in self.out.drain(..) {
            let msg = match &event {
                Published::Snapshot { msg, .. } => {
                    self.counters.published_snapshots.inc();
                    msg
                }
                Published::Delta { msg, .. } => {
                    self.counters.published_deltas.inc();
                    msg
                }
                Published::Trade { msg, .. } => {
                    self.counters.published_trades.inc();
                    msg
                }
                Published::Stale { msg, .. } => {
                    self.counters.published_stale.inc();
                    msg
                }
            };
            let frame = EncodedFrame::binary(msg);
            self.sink.publish(&self.market, &event, &frame);
            if let Some(bp) = self.backplane.as_mut() {
                bp.publish(&self.market, &event, &frame);
            }
        }
    }

    fn close_feed(&mut self, slot: usize, reason: &'static str, detail: &str) {
        let Some(mut feed) = self.feeds.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut feed.stream);
        self.free.push(slot);
        self.counters.feeds_open.dec();
        self.counters.feeds_closed.inc(reason);
        if reason == "eof" {
            info!(feed = feed.id.0, name = %feed.name, addr = %feed.addr, "feed disconnected");
        } else {
            warn!(feed = feed.id.0, name = %feed.name, addr = %feed.addr, reason, "feed closed: {detail}");
        }
        self.market.handle_feed_down(feed.id, &mut self.out);
        self.flush_published();
    }

    /// Closes every feed whose first-message or message deadline has passed
    /// (at most once per [`DEADLINE_SWEEP_NS`]; O(feeds)).
    fn sweep_deadlines(&mut self) {
        let now = self.mono_ns();
        if now < self.next_sweep_ns {
            return;
        }
        self.next_sweep_ns = now.saturating_add(DEADLINE_SWEEP_NS);
        for slot in 0..self.feeds.len() {
            let expired = self.feeds[slot].as_ref().and_then(|f| {
                f.deadlines.poll_expired(
                    now,
                    self.cfg.feed_hello_timeout_ms,
                    self.cfg.feed_message_timeout_ms,
                )
            });
            if let Some(e) = expired {
                self.close_feed(slot, e.label(), &e.to_string());
            }
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.feeds.len() {
            if self.feeds[slot].is_some() {
                self.close_feed(slot, "other", "ingest shutting down");
            }
        }
    }
}

/// Reads an ingest token file (`auth::feeds`). Errors name the file and the
/// line, never a token.
pub fn load_feed_tokens(path: &std::path::Path) -> io::Result<FeedTokens> {
    let bytes = std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("ingest token file {}: {e}", path.display()),
        )
    })?;
    FeedTokens::parse_file(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ingest token file {}: {e}", path.display()),
        )
    })
}
