//! A worker's limits ([`WorkerConfig`]) and counters ([`WorkerStats`],
//! [`LagHistogram`]): plain data, read by the core and the metrics.

use crate::fanout::limits::RequestLimits;
use crate::fanout::outbox::OutboxLimits;
use crate::fanout::subs::IndexSizes;

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
    pub(super) fn limits(&self) -> OutboxLimits {
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
    /// Room (entries) of the lists of connections (dirty, idle, dropping,
    /// backlogged, unmeasured, closing): given back after a storm.
    pub lists_room: usize,
    pub buffered_bytes: usize,
    pub queue_capacity_bytes: usize,
    /// Resume requests sent to the market thread (PROTOCOL §10).
    pub resume_requests: u64,
    /// Channels resumed (answered with every message missed).
    pub resumed: u64,
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
    /// A frame lacked a subscriber's rendering (its interest had not yet
    /// reached the market thread): the subscriber resynced.
    pub missing_rendering: u64,
    pub requests_ok: u64,
    /// SSE streams opened (PROTOCOL §11; refusals count as rejected requests).
    pub sse_opened: u64,
    /// Every refused request (the sum of the `rejected_*` below).
    pub requests_rejected: u64,
    pub rejected_bad_request: u64,
    pub rejected_too_many_subscriptions: u64,
    pub rejected_unknown_symbol: u64,
    pub rejected_rate_limited: u64,
    /// `Error{forbidden}` (PROTOCOL §8: outside the entitlements, a refresh
    /// with another user's or an older token).
    pub rejected_forbidden: u64,
    /// Refused for authentication (PROTOCOL §8): `Error{unauthorized}`
    /// answers, 4005 closes after no `auth` within 5 s, and the shell's 401s
    /// at the upgrade (noted with [`crate::fanout::worker::WorkerCore::note_upgrade_auth`]).
    pub rejected_unauthorized: u64,
    /// Connections closed 4004 at their token's `exp`.
    pub token_expired_closes: u64,
    /// A user over its `max_connections`: 429 at the upgrade or close 4006.
    pub rejected_user_connections: u64,
    /// Authentications by result, indexed like [`crate::auth::AuthResult::ALL`].
    pub auth_results: [u64; crate::auth::AuthResult::ALL.len()],
    /// Connections by tier, indexed like [`crate::fanout::worker::Tier::ALL`].
    pub tiers: [usize; 4],
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
