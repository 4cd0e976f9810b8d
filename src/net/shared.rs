//! State shared with the HTTP side for `/metrics` and `/symbols`: written by its
//! owning thread (ingest or a worker) on a slow period, read on a scrape. Only
//! the control plane touches the locks here, never the per-message path.

use std::sync::MutexGuard;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

use super::auth::AuthShared;
use super::backplane::BackplaneCounters;
use super::health::{Health, Liveness};
use super::symbols::SymbolDirectory;
use crate::auth::AuthResult;
use crate::fanout::limits::{IpLimitConfig, IpLimits};
use crate::fanout::replay::MISS_REASONS;
use crate::fanout::router::RouterStats;
use crate::fanout::streams::DerivedStreams;
use crate::fanout::worker::{LagHistogram, RESYNC_LAG_BOUNDS_NS, Tier};
use crate::metrics::{IngestCounters, PromText};
use crate::wire::Rendering;

/// Why a connection or request was refused or a connection closed by the
/// server, as counted in `tickwire_rejections_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 503 + Retry-After: the process holds `max_connections` WebSockets.
    MaxConnections,
    /// 429 + Retry-After: the client IP holds `max_connections_per_ip`.
    IpConnections,
    /// 429 + Retry-After: the client IP handshakes too often.
    IpHandshakeRate,
    /// `Error{rate_limited}`.
    RateLimited,
    /// Close 4002.
    RateLimitClose,
    /// `Error{too_many_subscriptions}`.
    TooManySubscriptions,
    /// `Error{bad_request}`.
    BadRequest,
    /// `Error{unknown_symbol}`.
    UnknownSymbol,
    /// Close 1009: a client message over `max_message_bytes`.
    MessageTooBig,
    /// Close 1002/1003/1007/1008: any other protocol violation.
    ProtocolError,
    /// Close 4003: nothing received for ping interval + pong timeout.
    HeartbeatTimeout,
    /// Closed: the HTTP request did not arrive within the handshake timeout.
    HandshakeTimeout,
    /// Close 4001.
    SlowConsumer,
    /// 403: `Origin` not allowed.
    OriginForbidden,
    /// 431: request head over 8 KiB.
    HeaderTooLarge,
    /// 400: unreadable HTTP request.
    BadHttpRequest,
    /// `Error{forbidden}` (PROTOCOL §8).
    Forbidden,
    /// 401 at the upgrade, `Error{unauthorized}`, close 4005 (PROTOCOL §8).
    Unauthorized,
    /// Close 4004 at the token's `exp`.
    TokenExpired,
    /// 429 at the upgrade or close 4006: the user's `max_connections`.
    UserConnections,
}

impl Reject {
    pub const ALL: [Reject; 20] = [
        Reject::MaxConnections,
        Reject::IpConnections,
        Reject::IpHandshakeRate,
        Reject::RateLimited,
        Reject::RateLimitClose,
        Reject::TooManySubscriptions,
        Reject::BadRequest,
        Reject::UnknownSymbol,
        Reject::MessageTooBig,
        Reject::ProtocolError,
        Reject::HeartbeatTimeout,
        Reject::HandshakeTimeout,
        Reject::SlowConsumer,
        Reject::OriginForbidden,
        Reject::HeaderTooLarge,
        Reject::BadHttpRequest,
        Reject::Forbidden,
        Reject::Unauthorized,
        Reject::TokenExpired,
        Reject::UserConnections,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::MaxConnections => "max_connections",
            Reject::IpConnections => "ip_connections",
            Reject::IpHandshakeRate => "ip_handshake_rate",
            Reject::RateLimited => "rate_limited",
            Reject::RateLimitClose => "rate_limit_close",
            Reject::TooManySubscriptions => "too_many_subscriptions",
            Reject::BadRequest => "bad_request",
            Reject::UnknownSymbol => "unknown_symbol",
            Reject::MessageTooBig => "message_too_big",
            Reject::ProtocolError => "protocol_error",
            Reject::HeartbeatTimeout => "heartbeat_timeout",
            Reject::HandshakeTimeout => "handshake_timeout",
            Reject::SlowConsumer => "slow_consumer",
            Reject::OriginForbidden => "origin_forbidden",
            Reject::HeaderTooLarge => "header_too_large",
            Reject::BadHttpRequest => "bad_http_request",
            Reject::Forbidden => "forbidden",
            Reject::Unauthorized => "unauthorized",
            Reject::TokenExpired => "token_expired",
            Reject::UserConnections => "user_connections",
        }
    }
}

/// Per-worker counters, written by that worker only.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub connections_open: crate::metrics::Gauge,
    pub connections_accepted: crate::metrics::Counter,
    pub http_requests: crate::metrics::Counter,
    /// SSE streams opened (PROTOCOL §11; also counted open connections).
    pub sse_opened: crate::metrics::Counter,
    pub subscriptions: crate::metrics::Gauge,
    /// Connections the core holds (published once a second, for leak checks).
    pub core_connections: crate::metrics::Gauge,
    /// Entries in the worker's subscription indexes (0 when nobody is subscribed).
    pub index_entries: crate::metrics::Gauge,
    pub messages_out: crate::metrics::Counter,
    pub bytes_out: crate::metrics::Counter,
    pub writes: crate::metrics::Counter,
    pub ring_messages: crate::metrics::Counter,
    pub snapshot_requests: crate::metrics::Counter,
    pub snapshot_requests_coalesced: crate::metrics::Counter,
    pub dropped_slow: crate::metrics::Counter,
    pub closed_slow: crate::metrics::Counter,
    pub loop_turns: crate::metrics::Counter,
    pub max_turn_ns: crate::metrics::Gauge,
    /// Length of the last pass over the dirty connections: the latency floor
    /// of this worker's load (`fanout::pacing`).
    pub last_pass_ns: crate::metrics::Gauge,
    /// Sockets the worker holds (handshaking, open or closing).
    pub sockets: crate::metrics::Gauge,
    /// Entries in the worker's timing wheel.
    pub timers: crate::metrics::Gauge,
    /// Connections closed with 1001 at shutdown.
    pub closed_shutdown: crate::metrics::Counter,
    /// Times a connection stopped being read because its queue was over
    /// high-water (it does not read what it asks for).
    pub reads_paused: crate::metrics::Counter,
    /// `accept` failures for lack of resources (EMFILE…), retried on a timer.
    pub accept_failures: crate::metrics::Counter,
    /// Age of the oldest byte not yet received by any connection (queued or
    /// unsent in the kernel), ns, at the last housekeeping.
    pub oldest_backlog_age_ns: crate::metrics::Gauge,
    /// Connections closed 4001 for a backlog older than the maximum lag.
    pub lag_closes: crate::metrics::Counter,
    /// Indexed by `Reject as usize`.
    pub rejections: [crate::metrics::Counter; Reject::ALL.len()],
    /// Authentications by result, indexed like `AuthResult::ALL` (PROTOCOL §8).
    pub auth_results: [crate::metrics::Counter; AuthResult::ALL.len()],
    /// Connections by tier, indexed like `Tier::ALL`.
    pub tiers: [crate::metrics::Gauge; Tier::ALL.len()],
}

impl WorkerCounters {
    pub fn reject(&self, r: Reject) {
        self.rejections[r as usize].inc();
    }
}

/// What a worker publishes for scrapes.
pub struct WorkerShared {
    pub counters: WorkerCounters,
    /// Ingest → socket-write latency, nanoseconds; copied from the worker's own
    /// histogram about once a second.
    pub latency_ns: Mutex<Histogram<u64>>,
    /// How long connections had been dropping when resynced (copied from
    /// the core about once a second).
    pub resync_lag: Mutex<LagHistogram>,
    /// Beats once per loop turn (see [`super::health`]).
    pub liveness: Arc<Liveness>,
    /// Test hook: the worker panics at its next loop turn (to test the
    /// thread-death policy of [`super::health`]; nothing on the network can set it).
    #[doc(hidden)]
    pub inject_panic: AtomicBool,
}

impl WorkerShared {
    pub fn new(name: impl Into<String>) -> WorkerShared {
        WorkerShared {
            counters: WorkerCounters::default(),
            latency_ns: Mutex::new(new_latency_histogram()),
            resync_lag: Mutex::new(LagHistogram::default()),
            liveness: Liveness::new(name),
            inject_panic: AtomicBool::new(false),
        }
    }
}

/// A latency histogram from 1 µs to 60 s, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2·low).
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Everything `/metrics` and `/symbols` read.
pub struct Shared {
    /// The origin of every worker's monotonic nanoseconds (deadlines, rates).
    pub epoch: Instant,
    /// WebSocket connections open in the process (the `max_connections` cap:
    /// incremented before an upgrade is accepted, so the cap is exact).
    pub ws_open: AtomicUsize,
    /// Per-client-IP counts (locked on accept, upgrade and close only when
    /// per-IP limits are configured; never on the market-data path).
    pub ip_limits: Mutex<IpLimits>,
    pub ip_limits_on: bool,
    pub ingest: Arc<IngestCounters>,
    pub router: Mutex<RouterStats>,
    /// What `GET /symbols` lists (written by the ingest thread, rendered by
    /// the worker that answers).
    pub symbols: Arc<SymbolDirectory>,
    pub workers: Vec<Arc<WorkerShared>>,
    /// Every engine thread's liveness (`/healthz`, the binary's exit).
    pub health: Health,
    /// The NATS backplane's counters, when this node has one.
    pub backplane: Option<Arc<BackplaneCounters>>,
    /// Authentication (PROTOCOL §8), unless `--auth off`.
    pub auth: Option<AuthShared>,
    /// The node's derived book channels: ids allocated by the workers,
    /// looked up by the ingest thread (`fanout::streams`).
    pub streams: Arc<DerivedStreams>,
}

impl Shared {
    /// `ingest_liveness`: the ingest thread's (see [`super::health`]).
    pub fn new(
        ingest: Arc<IngestCounters>,
        ingest_liveness: Arc<Liveness>,
        workers: usize,
        ip: IpLimitConfig,
    ) -> Shared {
        let workers: Vec<Arc<WorkerShared>> = (0..workers)
            .map(|i| Arc::new(WorkerShared::new(format!("worker-{i}"))))
            .collect();
        let mut threads = vec![ingest_liveness];
        threads.extend(workers.iter().map(|w| w.liveness.clone()));
        Shared {
            health: Health::new(threads),
            epoch: Instant::now(),
            ws_open: AtomicUsize::new(0),
            ip_limits: Mutex::new(IpLimits::new(ip)),
            ip_limits_on: ip.max_connections_per_ip != 0 || ip.handshakes_per_ip_per_sec != 0,
            ingest,
            router: Mutex::new(RouterStats::default()),
            symbols: Arc::new(SymbolDirectory::default()),
            workers,
            backplane: None,
            auth: None,
            streams: Arc::new(DerivedStreams::default()),
        }
    }

    /// With authentication on: the verifier and the per-user table.
    pub fn with_auth(mut self, auth: AuthShared) -> Shared {
        self.auth = Some(auth);
        self
    }

    /// With the backplane's counters in `/metrics` and its thread under the
    /// health policy.
    pub fn with_backplane(mut self, counters: Arc<BackplaneCounters>) -> Shared {
        self.health = self.health.with(counters.liveness.clone());
        self.backplane = Some(counters);
        self
    }

    /// The per-IP table. A poisoned lock (a thread panicked holding it) is
    /// taken anyway: the process is then on its way out (see
    /// [`super::health`]), and until it is, per-IP limits stay enforced.
    pub fn ip_limits(&self) -> MutexGuard<'_, IpLimits> {
        self.ip_limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renders the Prometheus text of every thread's counters.
    pub fn render_metrics(&self) -> String {
        let mut out = PromText::new();
        self.ingest.render(&mut out);
        if let Some(b) = &self.backplane {
            b.render(&mut out);
        }
        let router = self
            .router
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        out.counter(
            "tickwire_ring_pushed_total",
            "Messages pushed into worker rings.",
            router.pushed,
        );
        out.labeled_counter(
            "tickwire_ring_dropped_total",
            "Messages dropped because a worker's ring was full, by kind.",
            "kind",
            [
                ("delta", router.dropped_deltas),
                ("trade", router.dropped_trades),
            ]
            .into_iter(),
        );
        out.counter(
            "tickwire_ring_drop_markers_total",
            "Resync markers sent after ring drops.",
            router.drop_markers,
        );
        out.counter(
            "tickwire_snapshot_requests_served_total",
            "Snapshot requests answered by the ingest thread.",
            router.snapshot_requests,
        );
        out.counter(
            "tickwire_snapshots_encoded_total",
            "Snapshots encoded (cache misses).",
            router.snapshots_encoded,
        );
        let render = &router.render;
        out.labeled_counter(
            "tickwire_rendered_total",
            "Market-data messages rendered beyond protobuf, once each and only while some connection takes that rendering, by rendering.",
            "rendering",
            Rendering::ALL[1..]
                .iter()
                .map(|r| (r.as_str(), render.rendered[r.index()])),
        );
        out.labeled_counter(
            "tickwire_deflate_bytes_total",
            "permessage-deflate (PROTOCOL §12): payload bytes of the messages sent compressed, before (in) and after (out).",
            "dir",
            [
                ("in", render.deflate_in_bytes),
                ("out", render.deflate_out_bytes),
            ]
            .into_iter(),
        );
        out.labeled_counter(
            "tickwire_deflate_skipped_total",
            "Messages of a deflate rendering sent uncompressed, by reason: small (under the threshold, or not made shorter), budget (the second's compression budget was spent).",
            "reason",
            [
                ("small", render.deflate_skipped),
                ("budget", render.deflate_over_budget),
            ]
            .into_iter(),
        );
        out.counter(
            "tickwire_deflate_microseconds_total",
            "Market-thread time spent compressing (PROTOCOL §12), bounded by --deflate-budget-ms per second.",
            render.deflate_ns / 1_000,
        );
        out.gauge(
            "tickwire_derived_views",
            "Derived book channels computed now (PROTOCOL §9: book.N, book@Tms), one per (symbol, channel) some client holds.",
            router.derived.views as u64,
        );
        out.counter(
            "tickwire_derived_deltas_total",
            "Deltas emitted by derived book channels (each encoded once).",
            router.derived.deltas,
        );
        out.counter(
            "tickwire_derived_snapshots_total",
            "Snapshots of derived book channels encoded.",
            router.derived.snapshots,
        );
        let r = &router.replays;
        out.gauge(
            "tickwire_resume_history_messages",
            "Messages held by the resume history (PROTOCOL §10), all symbols.",
            r.history.entries as u64,
        );
        out.gauge(
            "tickwire_resume_history_bytes",
            "Bytes charged by the resume history (bounded by --resume-max-bytes).",
            r.history.bytes as u64,
        );
        out.labeled_counter(
            "tickwire_resume_history_evicted_total",
            "Messages dropped from the resume history, by cause.",
            "cause",
            [
                ("count", r.history.evicted_count),
                ("age", r.history.evicted_age),
                ("memory", r.history.evicted_memory),
                ("restart", r.history.evicted_restart),
            ]
            .into_iter(),
        );
        out.counter(
            "tickwire_resume_hits_total",
            "Resume requests answered with every message missed.",
            r.hits,
        );
        out.counter(
            "tickwire_resume_replayed_total",
            "Messages replayed to resuming clients.",
            r.replayed,
        );
        out.labeled_counter(
            "tickwire_resume_misses_total",
            "Resume requests the history could not serve (a snapshot or trades Stale instead), by reason.",
            "reason",
            MISS_REASONS
                .iter()
                .copied()
                .zip(r.misses)
                .chain([("feed_stale", r.stale)]),
        );
        type Get = fn(&WorkerCounters) -> u64;
        let per_worker: [(&str, &str, &str, Get); 24] = [
            (
                "tickwire_worker_connections",
                "gauge",
                "Connections held by the worker core.",
                |c| c.core_connections.get(),
            ),
            (
                "tickwire_worker_index_entries",
                "gauge",
                "Entries in the worker's subscription indexes.",
                |c| c.index_entries.get(),
            ),
            (
                "tickwire_connections_open",
                "gauge",
                "WebSocket connections open.",
                |c| c.connections_open.get(),
            ),
            (
                "tickwire_connections_accepted_total",
                "counter",
                "TCP connections accepted.",
                |c| c.connections_accepted.get(),
            ),
            (
                "tickwire_http_requests_total",
                "counter",
                "Plain HTTP requests served.",
                |c| c.http_requests.get(),
            ),
            (
                "tickwire_sse_opened_total",
                "counter",
                "Server-Sent Events streams opened (PROTOCOL §11); refusals are answered 400/401/403 and counted as rejected requests.",
                |c| c.sse_opened.get(),
            ),
            (
                "tickwire_subscriptions",
                "gauge",
                "Symbol-channel subscriptions held.",
                |c| c.subscriptions.get(),
            ),
            (
                "tickwire_messages_out_total",
                "counter",
                "Messages queued to clients.",
                |c| c.messages_out.get(),
            ),
            (
                "tickwire_bytes_out_total",
                "counter",
                "Bytes written to client sockets.",
                |c| c.bytes_out.get(),
            ),
            (
                "tickwire_socket_writes_total",
                "counter",
                "write/writev calls on client sockets.",
                |c| c.writes.get(),
            ),
            (
                "tickwire_ring_messages_total",
                "counter",
                "Messages drained from the ingest ring.",
                |c| c.ring_messages.get(),
            ),
            (
                "tickwire_snapshot_requests_total",
                "counter",
                "Snapshot requests sent to ingest.",
                |c| c.snapshot_requests.get(),
            ),
            (
                "tickwire_snapshot_requests_coalesced_total",
                "counter",
                "Snapshot waits served by an outstanding request.",
                |c| c.snapshot_requests_coalesced.get(),
            ),
            (
                "tickwire_slow_consumer_drops_total",
                "counter",
                "Messages dropped for slow consumers.",
                |c| c.dropped_slow.get(),
            ),
            (
                "tickwire_slow_consumer_closes_total",
                "counter",
                "Connections closed 4001.",
                |c| c.closed_slow.get(),
            ),
            (
                "tickwire_worker_loop_turns_total",
                "counter",
                "Worker event-loop turns.",
                |c| c.loop_turns.get(),
            ),
            (
                "tickwire_worker_max_turn_ns",
                "gauge",
                "Longest worker loop turn, ns.",
                |c| c.max_turn_ns.get(),
            ),
            (
                "tickwire_worker_pass_ns",
                "gauge",
                "Length of the last pass writing every waiting connection once, ns (a floor of delivery latency).",
                |c| c.last_pass_ns.get(),
            ),
            (
                "tickwire_worker_sockets",
                "gauge",
                "Client sockets held by the worker (any state).",
                |c| c.sockets.get(),
            ),
            (
                "tickwire_worker_timers",
                "gauge",
                "Entries in the worker's timing wheel.",
                |c| c.timers.get(),
            ),
            (
                "tickwire_worker_shutdown_closes_total",
                "counter",
                "Connections closed 1001 at shutdown.",
                |c| c.closed_shutdown.get(),
            ),
            (
                "tickwire_accept_failures_total",
                "counter",
                "accept() failures for lack of resources (EMFILE...), retried every 100 ms.",
                |c| c.accept_failures.get(),
            ),
            (
                "tickwire_lag_closes_total",
                "counter",
                "Connections closed 4001: their oldest unreceived byte (queued or unsent in the kernel) was older than the maximum lag.",
                |c| c.lag_closes.get(),
            ),
            (
                "tickwire_reads_paused_total",
                "counter",
                "Times a connection stopped being read: its queue was over high-water.",
                |c| c.reads_paused.get(),
            ),
        ];
        let raw = out.raw();
        for (name, kind, help, get) in per_worker {
            use std::fmt::Write as _;
            let _ = writeln!(raw, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, w) in self.workers.iter().enumerate() {
                let _ = writeln!(raw, "{name}{{worker=\"{i}\"}} {}", get(&w.counters));
            }
        }
        {
            use std::fmt::Write as _;
            let name = "tickwire_rejections_total";
            let _ = writeln!(
                raw,
                "# HELP {name} Refused connections and requests, and server-side closes, by reason.\n# TYPE {name} counter"
            );
            for (i, w) in self.workers.iter().enumerate() {
                for r in Reject::ALL {
                    let _ = writeln!(
                        raw,
                        "{name}{{worker=\"{i}\",reason=\"{}\"}} {}",
                        r.label(),
                        w.counters.rejections[r as usize].get()
                    );
                }
            }
            let ws_open = self.ws_open.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                raw,
                "# HELP tickwire_ws_open WebSocket connections open in the process.\n# TYPE tickwire_ws_open gauge\ntickwire_ws_open {ws_open}"
            );
            let name = "tickwire_authentications_total";
            let _ = writeln!(
                raw,
                "# HELP {name} Token verifications (at the upgrade or in an auth request), by result.\n# TYPE {name} counter"
            );
            for (i, w) in self.workers.iter().enumerate() {
                for r in AuthResult::ALL {
                    let _ = writeln!(
                        raw,
                        "{name}{{worker=\"{i}\",result=\"{}\"}} {}",
                        r.label(),
                        w.counters.auth_results[r as usize].get()
                    );
                }
            }
            let name = "tickwire_connections_by_tier";
            let _ = writeln!(
                raw,
                "# HELP {name} WebSocket connections by authentication tier (open: auth off).\n# TYPE {name} gauge"
            );
            for (i, w) in self.workers.iter().enumerate() {
                for t in Tier::ALL {
                    let _ = writeln!(
                        raw,
                        "{name}{{worker=\"{i}\",tier=\"{}\"}} {}",
                        t.label(),
                        w.counters.tiers[t as usize].get()
                    );
                }
            }
            if let Some(a) = &self.auth {
                let users = a.users().users();
                let _ = writeln!(
                    raw,
                    "# HELP tickwire_users_connected Authenticated users holding a connection in this process.\n# TYPE tickwire_users_connected gauge\ntickwire_users_connected {users}"
                );
            }
            let ips = self.ip_limits().len();
            let _ = writeln!(
                raw,
                "# HELP tickwire_ip_addresses_tracked Client addresses held by the per-IP limits.\n# TYPE tickwire_ip_addresses_tracked gauge\ntickwire_ip_addresses_tracked {ips}"
            );
        }
        render_freshness(out.raw(), &self.workers);
        let mut merged = new_latency_histogram();
        for w in &self.workers {
            let h = w.latency_ns.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides: adding cannot fail.
            let _ = merged.add(&*h);
        }
        render_summary(out.raw(), "tickwire_delivery_latency_seconds", &merged);
        out.finish()
    }
}

/// Freshness (DESIGN "Freshness"): `tickwire_oldest_backlog_age_seconds`,
/// per worker the age of the oldest byte some connection has not received;
/// `tickwire_resync_lag_seconds`, a histogram of how long connections had
/// been dropping when their resync was queued.
fn render_freshness(raw: &mut String, workers: &[Arc<WorkerShared>]) {
    use std::fmt::Write as _;
    let name = "tickwire_oldest_backlog_age_seconds";
    let _ = writeln!(
        raw,
        "# HELP {name} Age of the oldest message queued (or unsent in the kernel) for any connection of the worker.\n# TYPE {name} gauge"
    );
    for (i, w) in workers.iter().enumerate() {
        let age = w.counters.oldest_backlog_age_ns.get() as f64 / 1e9;
        let _ = writeln!(raw, "{name}{{worker=\"{i}\"}} {age}");
    }
    let name = "tickwire_resync_lag_seconds";
    let _ = writeln!(
        raw,
        "# HELP {name} How long a slow connection had been dropping when its Stale + snapshot were queued.\n# TYPE {name} histogram"
    );
    for (i, w) in workers.iter().enumerate() {
        let h = *w.resync_lag.lock().unwrap_or_else(|p| p.into_inner());
        let mut cumulative = 0;
        for (b, &n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = RESYNC_LAG_BOUNDS_NS
                .get(b)
                .map_or("+Inf".to_string(), |&ns| format!("{}", ns as f64 / 1e9));
            let _ = writeln!(
                raw,
                "{name}_bucket{{worker=\"{i}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            raw,
            "{name}_sum{{worker=\"{i}\"}} {}\n{name}_count{{worker=\"{i}\"}} {}",
            h.sum_ns as f64 / 1e9,
            h.count
        );
    }
}

/// Renders a histogram as a Prometheus summary (quantiles in seconds).
fn render_summary(raw: &mut String, name: &str, h: &Histogram<u64>) {
    use std::fmt::Write as _;
    let _ = writeln!(
        raw,
        "# HELP {name} Ingest read to client socket write, seconds.\n# TYPE {name} summary"
    );
    for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
        let v = if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        };
        let _ = writeln!(raw, "{name}{{quantile=\"{q}\"}} {}", v as f64 / 1e9);
    }
    let sum: f64 = h
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum();
    let _ = writeln!(raw, "{name}_sum {}", sum / 1e9);
    let _ = writeln!(raw, "{name}_count {}", h.len());
}
