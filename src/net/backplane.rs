//! The NATS backplane's I/O shell: the `backplane` thread, the only place in
//! the process where an async runtime lives (a current-thread Tokio runtime
//! running the official `async-nats` client), and its link to the market
//! thread (the ingest thread), which runs the sans-IO cores of
//! [`crate::cluster`].
//!
//! ```text
//!  ingest thread ──rtrb ToNats (publish, replies, commands)──▶ backplane thread ──▶ NATS
//!   (books, OriginCore,  ◀──rtrb FromNats (data, replies,    ◀── subscriptions,
//!    EdgeCore)               heartbeats, snapshot requests)        request/reply
//! ```
//!
//! Neither side ever blocks on the other: a full ring drops (counted) what
//! does not fit. A dropped data message is a gap the receiving edge finds
//! (next seq, or the next heartbeat) and repairs with a snapshot; commands,
//! replies and heartbeats wait in a small queue on the ingest side instead.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mio::Waker;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::book::SymbolId;
use crate::book::market::{Market, Published};
use crate::cluster::edge::{Command, EdgeConfig, EdgeCore, EdgeStats, Inbound};
use crate::cluster::origin::{OriginCore, Outgoing};
use crate::cluster::subject;
use crate::config::BackplaneSettings;
use crate::metrics::PromText;

use super::health::Liveness;
use crate::wire::EncodedFrame;

use super::ring_wake::must_wake;

/// Messages queued from the market thread to the backplane thread.
const TO_NATS_CAPACITY: usize = 65_536;
/// Messages queued from the backplane thread to the market thread.
const FROM_NATS_CAPACITY: usize = 65_536;
/// Inbound messages the market thread takes per loop turn, at most.
const INBOUND_PER_TURN: usize = 4096;
/// How often the edge's timers run.
const TICK_NS: u64 = 50_000_000;

/// Counters of the backplane, for `/metrics` (`tickwire_backplane_*`).
#[derive(Debug)]
pub struct BackplaneCounters {
    pub published: AtomicU64,
    /// Data the market thread could not queue for NATS (ring full).
    pub publish_dropped: AtomicU64,
    /// Messages from NATS the market thread had no room for (ring full).
    pub inbound_dropped: AtomicU64,
    /// Bytes on a subject that are not ours (snapshot-request subjects).
    pub garbage: AtomicU64,
    pub connected: AtomicU64,
    pub reconnects: AtomicU64,
    /// The edge's counters, copied by the market thread every tick.
    pub edge: std::sync::Mutex<EdgeStats>,
    /// The backplane thread's liveness ([`super::health`]): beaten by a
    /// ticker task, so it says the runtime runs (a publish waiting for a
    /// gone NATS is not a stall), and marked dead if the thread panics.
    pub liveness: Arc<Liveness>,
    /// Test hook: the backplane thread panics (to test the thread-death
    /// policy; nothing on the network can set it).
    #[doc(hidden)]
    pub inject_panic: AtomicBool,
}

impl Default for BackplaneCounters {
    fn default() -> Self {
        BackplaneCounters {
            published: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            inbound_dropped: AtomicU64::new(0),
            garbage: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            edge: std::sync::Mutex::default(),
            liveness: Liveness::new("backplane"),
            inject_panic: AtomicBool::new(false),
        }
    }
}

impl BackplaneCounters {
    /// Appends the `tickwire_backplane_*` metrics.
    pub fn render(&self, out: &mut PromText) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.counter(
            "tickwire_backplane_published_total",
            "Messages published to NATS (data, snapshot answers, heartbeats).",
            get(&self.published),
        );
        out.labeled_counter(
            "tickwire_backplane_dropped_total",
            "Messages dropped between the market thread and NATS (full ring), by direction.",
            "direction",
            [
                ("publish", get(&self.publish_dropped)),
                ("inbound", get(&self.inbound_dropped)),
            ]
            .into_iter(),
        );
        out.counter(
            "tickwire_backplane_garbage_total",
            "Snapshot requests on a subject that names no symbol, or without a reply subject.",
            get(&self.garbage),
        );
        out.gauge(
            "tickwire_backplane_connected",
            "1 while the NATS connection is up.",
            get(&self.connected),
        );
        out.counter(
            "tickwire_backplane_connects_total",
            "NATS connections made (the first and every reconnect).",
            get(&self.reconnects),
        );
        let e = self
            .edge
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        for (name, help, v) in [
            (
                "applied",
                "Origin messages applied to mirrored books.",
                e.applied,
            ),
            (
                "buffered",
                "Messages buffered while a snapshot was awaited.",
                e.buffered,
            ),
            (
                "buffer_overflows",
                "Sync buffers that overflowed (resynced).",
                e.buffer_overflows,
            ),
            (
                "resyncs",
                "Mirrored books resynced (gap, epoch, checksum, garbage, heartbeat).",
                e.resyncs,
            ),
            (
                "snapshot_requests",
                "Snapshot requests sent to origins.",
                e.snapshot_requests,
            ),
            (
                "snapshot_failures",
                "Snapshot requests that failed or timed out.",
                e.snapshot_failures,
            ),
            ("heartbeats", "Origin heartbeats received.", e.heartbeats),
            (
                "heartbeat_resyncs",
                "Resyncs because a heartbeat was ahead of the book.",
                e.heartbeat_resyncs,
            ),
            (
                "origins_down",
                "Origins declared down after heartbeat silence.",
                e.origins_down,
            ),
            (
                "other_origin",
                "Messages from an origin that does not own the symbol (dropped).",
                e.other_origin,
            ),
            (
                "lost_trades",
                "Trades that never arrived (trades subscribers told).",
                e.lost_trades,
            ),
        ] {
            out.counter(&format!("tickwire_backplane_edge_{name}_total"), help, v);
        }
        let mut rejected: Vec<(&str, u64)> = e.rejected.iter().map(|(k, v)| (*k, *v)).collect();
        rejected.sort_unstable();
        out.labeled_counter(
            "tickwire_backplane_edge_rejected_total",
            "Backplane messages an edge rejected, by reason (garbage and mirror checks).",
            "reason",
            rejected.into_iter(),
        );
    }
}

enum ToNats {
    Publish(Outgoing),
    Command(Command),
}

enum FromNats {
    Inbound(Inbound),
    SnapshotRequest { symbol: String, reply: String },
}

/// The market thread's end of the backplane (see the module doc).
pub struct Backplane {
    to_nats: rtrb::Producer<ToNats>,
    /// Must-deliver messages waiting for ring room, in order.
    must: VecDeque<ToNats>,
    notify: Arc<Notify>,
    from_nats: rtrb::Consumer<FromNats>,
    origin: Option<OriginCore>,
    edge: Option<EdgeCore>,
    counters: Arc<BackplaneCounters>,
    next_tick_ns: u64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    more_inbound: bool,
}

impl Backplane {
    /// Starts the `backplane` thread. `waker` wakes the market thread when
    /// something arrives. Connecting happens in the background and is
    /// retried forever: a node starts whether NATS is up or not.
    pub fn start(
        settings: &BackplaneSettings,
        waker: Arc<Waker>,
        counters: Arc<BackplaneCounters>,
    ) -> io::Result<Backplane> {
        let (to_nats, rx) = rtrb::RingBuffer::new(TO_NATS_CAPACITY);
        let (tx, from_nats) = rtrb::RingBuffer::new(FROM_NATS_CAPACITY);
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let origin = settings.origin.as_deref().map(OriginCore::new);
        let edge = settings.edge.then(|| {
            EdgeCore::new(
                EdgeConfig {
                    heartbeat_timeout_ns: settings.heartbeat_timeout_ms * 1_000_000,
                    ..EdgeConfig::default()
                },
                std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15,
            )
        });
        let shell = Shell {
            servers: settings.servers.clone(),
            origin: settings.origin.clone(),
            edge: settings.edge,
            counters: counters.clone(),
            waker,
            notify: notify.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("backplane".into())
            .spawn(move || shell.run(rx, tx))?;
        Ok(Backplane {
            to_nats,
            must: VecDeque::new(),
            notify,
            from_nats,
            origin,
            edge,
            counters,
            next_tick_ns: 0,
            stop,
            thread: Some(thread),
            more_inbound: false,
        })
    }

    /// Whether inbound messages were left for the next turn.
    pub fn has_pending(&self) -> bool {
        self.more_inbound || !self.must.is_empty()
    }

    /// An origin publishes each event of its own books, encoded once.
    pub fn publish(&mut self, market: &Market, event: &Published, frame: &EncodedFrame) {
        let Some(origin) = self.origin.as_mut() else {
            return;
        };
        let Some(out) = origin.publish(market, event, frame) else {
            return;
        };
        if !self.must.is_empty() || self.push(ToNats::Publish(out)).is_err() {
            self.counters
                .publish_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Local interest in `symbol` started or ended (edges follow it).
    pub fn handle_interest(&mut self, market: &mut Market, symbol: SymbolId, on: bool, now: u64) {
        if let Some(edge) = self.edge.as_mut() {
            edge.handle_interest(market, symbol, on, now);
        }
    }

    pub fn poll_announce(&mut self) -> Option<SymbolId> {
        self.edge.as_mut()?.poll_announce()
    }

    pub fn poll_lost_trades(&mut self) -> Option<(SymbolId, u64)> {
        self.edge.as_mut()?.poll_lost_trades()
    }

    /// One turn: what NATS delivered, the timers, the heartbeat, commands.
    pub fn do_work(&mut self, market: &mut Market, out: &mut Vec<Published>, now: u64) -> usize {
        let mut done = 0;
        self.more_inbound = false;
        for _ in 0..INBOUND_PER_TURN {
            let Ok(msg) = self.from_nats.pop() else {
                break;
            };
            done += 1;
            match msg {
                FromNats::Inbound(m) => {
                    if let Some(edge) = self.edge.as_mut() {
                        edge.handle_inbound(market, m, now, out);
                    }
                }
                FromNats::SnapshotRequest { symbol, reply } => {
                    if let Some(origin) = self.origin.as_mut() {
                        let payload = origin.answer_snapshot(market, &symbol);
                        self.must.push_back(ToNats::Publish(Outgoing {
                            subject: reply.into(),
                            payload,
                        }));
                    }
                }
            }
        }
        self.more_inbound = done == INBOUND_PER_TURN;
        if now >= self.next_tick_ns {
            self.next_tick_ns = now + TICK_NS;
            if let Some(edge) = self.edge.as_mut() {
                edge.handle_timeout(market, now, out);
                if let Ok(mut g) = self.counters.edge.lock() {
                    g.clone_from(edge.stats());
                }
            }
        }
        if let Some(origin) = self.origin.as_mut() {
            for hb in origin.poll_heartbeat(market, now) {
                self.must.push_back(ToNats::Publish(hb));
            }
        }
        if let Some(edge) = self.edge.as_mut() {
            while let Some(c) = edge.poll_command() {
                self.must.push_back(ToNats::Command(c));
            }
        }
        while let Some(m) = self.must.pop_front() {
            if let Err(m) = self.push(m) {
                self.must.push_front(m);
                break;
            }
            done += 1;
        }
        done
    }

    fn push(&mut self, msg: ToNats) -> Result<(), ToNats> {
        self.to_nats
            .push(msg)
            .map_err(|rtrb::PushError::Full(m)| m)?;
        if must_wake(&self.to_nats) {
            self.notify.notify_one();
        }
        Ok(())
    }
}

impl Drop for Backplane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The backplane thread's state.
struct Shell {
    servers: Vec<String>,
    origin: Option<String>,
    edge: bool,
    counters: Arc<BackplaneCounters>,
    waker: Arc<Waker>,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

/// The market thread's inbound ring, shared by the tasks of the one thread.
#[derive(Clone)]
struct Deliver {
    tx: Rc<RefCell<rtrb::Producer<FromNats>>>,
    waker: Arc<Waker>,
    counters: Arc<BackplaneCounters>,
}

impl Deliver {
    fn send(&self, msg: FromNats) {
        let mut p = self.tx.borrow_mut();
        if p.push(msg).is_err() {
            self.counters
                .inbound_dropped
                .fetch_add(1, Ordering::Relaxed);
        } else if must_wake(&p) {
            // A failed wake means the market thread is gone (shutting down).
            let _ = self.waker.wake();
        }
    }
}

impl Shell {
    fn run(self, rx: rtrb::Consumer<ToNats>, tx: rtrb::Producer<FromNats>) {
        let liveness = self.counters.liveness.clone();
        let _alive = liveness.guard();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!(error = %e, "backplane: no runtime; the backplane is off");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.serve(rx, tx));
    }

    async fn serve(self, mut rx: rtrb::Consumer<ToNats>, tx: rtrb::Producer<FromNats>) {
        let deliver = Deliver {
            tx: Rc::new(RefCell::new(tx)),
            waker: self.waker.clone(),
            counters: self.counters.clone(),
        };
        let counters = self.counters.clone();
        let opts = async_nats::ConnectOptions::new()
            .name("tickwire")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(2)))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1_000))
            })
            .event_callback(move |ev| {
                let counters = counters.clone();
                async move {
                    match ev {
                        async_nats::Event::Connected => {
                            counters.connected.store(1, Ordering::Relaxed);
                            counters.reconnects.fetch_add(1, Ordering::Relaxed);
                            info!("backplane connected");
                        }
                        async_nats::Event::Disconnected => {
                            counters.connected.store(0, Ordering::Relaxed);
                            warn!("backplane disconnected; reconnecting");
                        }
                        other => warn!(event = %other, "backplane event"),
                    }
                }
            });
        let client = match opts.connect(self.servers.clone()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "backplane: cannot use the NATS servers; the backplane is off");
                return;
            }
        };
        info!(servers = ?self.servers, origin = ?self.origin, edge = self.edge, "backplane started");
        let liveness = self.counters.liveness.clone();
        tokio::task::spawn_local(async move {
            loop {
                liveness.beat();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        if self.edge {
            match client.subscribe(subject::HEARTBEAT_WILDCARD).await {
                Ok(mut sub) => {
                    let d = deliver.clone();
                    tokio::task::spawn_local(async move {
                        while let Some(m) = sub.next().await {
                            d.send(FromNats::Inbound(Inbound::Heartbeat { payload: m.payload }));
                        }
                    });
                }
                Err(e) => warn!(error = %e, "backplane: heartbeat subscription failed"),
            }
        }
        if let Some(origin) = self.origin.clone() {
            match client.subscribe(subject::snapshot_wildcard(&origin)).await {
                Ok(mut sub) => {
                    let d = deliver.clone();
                    tokio::task::spawn_local(async move {
                        while let Some(m) = sub.next().await {
                            let symbol = subject::symbol_of_snapshot(&origin, &m.subject);
                            match (symbol, m.reply) {
                                (Some(symbol), Some(reply)) => d.send(FromNats::SnapshotRequest {
                                    symbol,
                                    reply: reply.to_string(),
                                }),
                                _ => {
                                    d.counters.garbage.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
                Err(e) => warn!(error = %e, "backplane: snapshot-request subscription failed"),
            }
        }
        let mut data: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let mut n = 0usize;
            while let Ok(msg) = rx.pop() {
                n += 1;
                match msg {
                    ToNats::Publish(o) => {
                        let subject = async_nats::Subject::from(&*o.subject);
                        if client.publish(subject, o.payload).await.is_ok() {
                            self.counters.published.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.counters
                                .publish_dropped
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ToNats::Command(Command::Subscribe { symbol }) => {
                        match client.subscribe(subject::data(&symbol)).await {
                            Ok(mut sub) => {
                                let d = deliver.clone();
                                let s: Arc<str> = Arc::from(symbol.as_str());
                                let task = tokio::task::spawn_local(async move {
                                    while let Some(m) = sub.next().await {
                                        d.send(FromNats::Inbound(Inbound::Data {
                                            symbol: s.clone(),
                                            payload: m.payload,
                                        }));
                                    }
                                });
                                if let Some(old) = data.insert(symbol, task) {
                                    old.abort();
                                }
                            }
                            Err(e) => warn!(error = %e, %symbol, "backplane: subscribe failed"),
                        }
                    }
                    ToNats::Command(Command::Unsubscribe { symbol }) => {
                        if let Some(task) = data.remove(&symbol) {
                            // Dropping the subscriber inside unsubscribes.
                            task.abort();
                        }
                    }
                    ToNats::Command(Command::RequestSnapshot { symbol, origin }) => {
                        let client = client.clone();
                        let d = deliver.clone();
                        tokio::task::spawn_local(async move {
                            let subject = subject::snapshot(&origin, &symbol);
                            let msg = match client.request(subject, Bytes::new()).await {
                                Ok(m) => Inbound::SnapshotReply {
                                    symbol,
                                    payload: m.payload,
                                },
                                Err(_) => Inbound::SnapshotFailed { symbol },
                            };
                            d.send(FromNats::Inbound(msg));
                        });
                    }
                }
                if n.is_multiple_of(256) {
                    tokio::task::yield_now().await;
                }
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if self.counters.inject_panic.load(Ordering::Relaxed) {
                panic!("backplane: injected panic (test hook)");
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.notify.notified()).await;
        }
        for (_, task) in data {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }
}
