//! What a client thread counts ([`Tally`]), latency histograms, and the CPU
//! and memory of processes and threads read from `/proc`.
//!
//! A `Tally` is owned by one client thread and merged into a shared one a few
//! times a second; the controller takes interval tallies from those. Nothing
//! here does socket I/O.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tickwire::wire::StaleReason;

/// Lowest latency recorded, ns (values below are recorded as this).
pub const LATENCY_LOW_NS: u64 = 1_000;
/// Highest latency recorded, ns (values above saturate).
pub const LATENCY_HIGH_NS: u64 = 120_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits, 1 µs to 120 s.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts (low ≥ 1,
    // high ≥ 2·low, sigfig ≤ 5): it cannot fail.
    Histogram::new_with_bounds(LATENCY_LOW_NS, LATENCY_HIGH_NS, 3).expect("valid bounds")
}

/// A break of the wire contract seen by a client (PROTOCOL §4–§6). Every one
/// of these is a bug somewhere; a correct engine yields zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A frame that is not a readable `ServerMessage` / JSON message.
    Undecodable,
    /// A WebSocket protocol error or a failed handshake after connecting.
    Protocol,
    /// A binary frame on a JSON connection or the reverse.
    WrongEncoding,
    /// A message for a symbol-channel the client did not subscribe to (or
    /// after its `Unsubscribed`).
    NotSubscribed,
    /// A delta before the first snapshot of the subscription.
    DeltaBeforeSnapshot,
    /// A delta after a `Stale` and before the snapshot that must follow it.
    DeltaWhileStale,
    /// A delta whose seq is not the previous one + 1 (a skip).
    SeqGap,
    /// A delta whose seq is not above the previous one (a repeat or reorder).
    SeqRepeat,
    /// The book after a delta does not have the delta's checksum.
    Checksum,
    /// A snapshot whose checksum does not match its own levels.
    SnapshotChecksum,
    /// A snapshot with unsorted, duplicate or non-positive levels.
    SnapshotLevels,
    /// A snapshot whose seq is below the book's current seq.
    SnapshotBackwards,
    /// A level update whose side is neither bid nor ask.
    BadSide,
    /// A trade whose seq is not the previous trade's + 1 without a `Stale`.
    TradeSeq,
}

impl ViolationKind {
    pub const ALL: [ViolationKind; 14] = [
        ViolationKind::Undecodable,
        ViolationKind::Protocol,
        ViolationKind::WrongEncoding,
        ViolationKind::NotSubscribed,
        ViolationKind::DeltaBeforeSnapshot,
        ViolationKind::DeltaWhileStale,
        ViolationKind::SeqGap,
        ViolationKind::SeqRepeat,
        ViolationKind::Checksum,
        ViolationKind::SnapshotChecksum,
        ViolationKind::SnapshotLevels,
        ViolationKind::SnapshotBackwards,
        ViolationKind::BadSide,
        ViolationKind::TradeSeq,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ViolationKind::Undecodable => "undecodable",
            ViolationKind::Protocol => "protocol",
            ViolationKind::WrongEncoding => "wrong_encoding",
            ViolationKind::NotSubscribed => "not_subscribed",
            ViolationKind::DeltaBeforeSnapshot => "delta_before_snapshot",
            ViolationKind::DeltaWhileStale => "delta_while_stale",
            ViolationKind::SeqGap => "seq_gap",
            ViolationKind::SeqRepeat => "seq_repeat",
            ViolationKind::Checksum => "checksum",
            ViolationKind::SnapshotChecksum => "snapshot_checksum",
            ViolationKind::SnapshotLevels => "snapshot_levels",
            ViolationKind::SnapshotBackwards => "snapshot_backwards",
            ViolationKind::BadSide => "bad_side",
            ViolationKind::TradeSeq => "trade_seq",
        }
    }
}

/// `Stale` reasons (PROTOCOL §4), as counted: the engine's
/// [`StaleReason::ALL`], then any other string.
pub const STALE_REASONS: [&str; 5] = [
    StaleReason::ALL[0].as_str(),
    StaleReason::ALL[1].as_str(),
    StaleReason::ALL[2].as_str(),
    StaleReason::ALL[3].as_str(),
    "other",
];

/// Index of `reason` in [`STALE_REASONS`].
pub fn stale_index(reason: &[u8]) -> usize {
    StaleReason::from_bytes(reason)
        .and_then(|r| StaleReason::ALL.iter().position(|&a| a == r))
        .unwrap_or(StaleReason::ALL.len())
}

/// Violation descriptions kept per tally (the counts are always exact).
pub const MAX_SAMPLES: usize = 20;

/// Everything one client thread counts. Merged with [`Tally::add`].
#[derive(Debug, Clone)]
pub struct Tally {
    /// Bytes read from client sockets.
    pub bytes: u64,
    /// WebSocket data messages received (every kind).
    pub messages: u64,
    pub deltas: u64,
    pub trades: u64,
    pub snapshots: u64,
    /// Subscribed, Unsubscribed, Error, Stale.
    pub control: u64,
    pub stale: [u64; 5],
    /// `Error` answers from the server (a client never sends a bad request,
    /// so these mean a limit was hit: rate, subscriptions, unknown symbol).
    pub server_errors: u64,
    /// Re-subscriptions a client sent to resync a book it could not trust.
    pub resubscribes: u64,
    pub violations: BTreeMap<ViolationKind, u64>,
    /// The first few violations, described.
    pub samples: Vec<String>,
    /// Connection attempts started.
    pub connects: u64,
    /// Upgrades completed (101 received).
    pub opened: u64,
    /// Connects that failed (refused, no address, too many files…).
    pub connect_errors: u64,
    /// Upgrades refused or malformed (503, timeout…).
    pub handshake_errors: u64,
    /// Connections the server closed, by close code (1006: no close frame).
    pub server_closes: BTreeMap<u16, u64>,
    /// Connections this side closed for churn.
    pub churned: u64,
    /// Connections this side closed because the target went down.
    pub shed: u64,
    /// Delivery latency of deltas and trades: receipt − scheduled send time.
    pub latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            bytes: 0,
            messages: 0,
            deltas: 0,
            trades: 0,
            snapshots: 0,
            control: 0,
            stale: [0; 5],
            server_errors: 0,
            resubscribes: 0,
            violations: BTreeMap::new(),
            samples: Vec::new(),
            connects: 0,
            opened: 0,
            connect_errors: 0,
            handshake_errors: 0,
            server_closes: BTreeMap::new(),
            churned: 0,
            shed: 0,
            latency: latency_histogram(),
        }
    }

    /// Records one violation; `detail` is only built while samples are kept.
    pub fn violation(&mut self, kind: ViolationKind, detail: impl FnOnce() -> String) {
        *self.violations.entry(kind).or_default() += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(format!("{}: {}", kind.label(), detail()));
        }
    }

    pub fn violations_total(&self) -> u64 {
        self.violations.values().sum()
    }

    /// Market data delivered: deltas and trades.
    pub fn delivered(&self) -> u64 {
        self.deltas + self.trades
    }

    /// Records a delivery latency in ns (clamped into the histogram's range).
    #[inline]
    pub fn latency_ns(&mut self, ns: u64) {
        self.latency.saturating_record(ns.max(LATENCY_LOW_NS));
    }

    pub fn add(&mut self, o: &Tally) {
        self.bytes += o.bytes;
        self.messages += o.messages;
        self.deltas += o.deltas;
        self.trades += o.trades;
        self.snapshots += o.snapshots;
        self.control += o.control;
        for (a, b) in self.stale.iter_mut().zip(o.stale) {
            *a += b;
        }
        self.server_errors += o.server_errors;
        self.resubscribes += o.resubscribes;
        for (k, v) in &o.violations {
            *self.violations.entry(*k).or_default() += v;
        }
        for s in &o.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s.clone());
            }
        }
        self.connects += o.connects;
        self.opened += o.opened;
        self.connect_errors += o.connect_errors;
        self.handshake_errors += o.handshake_errors;
        for (k, v) in &o.server_closes {
            *self.server_closes.entry(*k).or_default() += v;
        }
        self.churned += o.churned;
        self.shed += o.shed;
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.latency.add(&o.latency);
    }

    /// Empties every counter, keeping the histogram's allocation.
    pub fn reset(&mut self) {
        // Exhaustive: a new field cannot be forgotten here.
        let Tally {
            bytes,
            messages,
            deltas,
            trades,
            snapshots,
            control,
            stale,
            server_errors,
            resubscribes,
            violations,
            samples,
            connects,
            opened,
            connect_errors,
            handshake_errors,
            server_closes,
            churned,
            shed,
            latency,
        } = self;
        for n in [
            bytes,
            messages,
            deltas,
            trades,
            snapshots,
            control,
            server_errors,
            resubscribes,
            connects,
            opened,
            connect_errors,
            handshake_errors,
            churned,
            shed,
        ] {
            *n = 0;
        }
        *stale = [0; 5];
        violations.clear();
        samples.clear();
        server_closes.clear();
        latency.reset();
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e6,
        }
    }
}

/// A histogram as its non-empty buckets `(highest equivalent value ns, count)`:
/// what reports carry so that `merge` can add histograms exactly (to the
/// histogram's 3 significant digits).
pub fn to_buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// The inverse of [`to_buckets`].
pub fn from_buckets(buckets: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = latency_histogram();
    for &(v, n) in buckets {
        let _ = h.record_n(v.clamp(LATENCY_LOW_NS, LATENCY_HIGH_NS), n);
    }
    h
}

/// The percentile curve for charts: `(percentile, ms)` at 1 − 10^(−k/8) steps
/// up to the histogram's resolution, HdrHistogram's "percentile distribution".
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let n = h.len() as f64;
    let mut k = 0;
    loop {
        let q = 1.0 - 10f64.powf(-(k as f64) / 8.0);
        if q > 1.0 - 1.0 / n || k > 56 {
            break;
        }
        out.push((q * 100.0, h.value_at_quantile(q) as f64 / 1e6));
        k += 1;
    }
    out.push((100.0, h.max() as f64 / 1e6));
    out
}

/// Clock ticks per second of `/proc/*/stat` times. 100 on every Linux
/// architecture tickwire targets (x86-64, aarch64); read without libc.
const CLK_TCK: f64 = 100.0;

/// CPU seconds (user + system) from a `/proc/.../stat` line.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLK_TCK)
}

/// CPU seconds of process `pid`.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Resident memory of process `pid`, KiB.
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Calls `each(name, cpu_seconds)` for every thread of this process.
fn for_each_thread(mut each: impl FnMut(&str, f64)) {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map_or("", |(n, _)| n);
        each(name, stat_cpu_seconds(&stat).unwrap_or(0.0));
    }
}

/// CPU seconds of this process's threads, split by role: threads named
/// like the engine's (`worker-N`, `ingest`) count as the engine (an
/// in-process engine), every other thread as loadgen.
pub fn self_cpu_split() -> (f64, f64) {
    let (mut ours, mut engine) = (0.0, 0.0);
    for_each_thread(|name, cpu| {
        if name.starts_with("worker-") || name == "ingest" {
            engine += cpu;
        } else {
            ours += cpu;
        }
    });
    (ours, engine)
}

/// CPU seconds of this process's threads whose name starts with `prefix`
/// (those that are still running: an exited thread's time is gone).
pub fn self_threads_cpu_seconds(prefix: &str) -> f64 {
    let mut sum = 0.0;
    for_each_thread(|name, cpu| {
        if name.starts_with(prefix) {
            sum += cpu;
        }
    });
    sum
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_add_and_reset() {
        let mut a = Tally::new();
        a.deltas = 3;
        a.latency_ns(5_000_000);
        a.violation(ViolationKind::SeqGap, || "x".into());
        let mut b = Tally::new();
        b.deltas = 2;
        b.trades = 1;
        b.latency_ns(1);
        b.violation(ViolationKind::SeqGap, || "y".into());
        b.server_closes.insert(4001, 1);
        a.add(&b);
        assert_eq!((a.deltas, a.delivered(), a.violations_total()), (5, 6, 2));
        assert_eq!(a.samples, vec!["seq_gap: x", "seq_gap: y"]);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(
            a.latency.count_at(LATENCY_LOW_NS),
            1,
            "1 ns is recorded as 1 µs"
        );
        a.reset();
        assert_eq!((a.deltas, a.violations_total(), a.latency.len()), (0, 0, 0));
        assert!(a.server_closes.is_empty());
        a.latency_ns(2_000);
        assert_eq!(
            a.latency.len(),
            1,
            "the histogram still records after a reset"
        );
    }

    #[test]
    fn buckets_round_trip_keeps_percentiles() {
        let mut h = latency_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1_000).unwrap();
        }
        let back = from_buckets(&to_buckets(&h));
        assert_eq!(back.len(), h.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
        let curve = percentile_curve(&h);
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(curve.last().unwrap().0, 100.0);
    }

    #[test]
    fn proc_readers_work_for_this_process() {
        let me = std::process::id();
        assert!(process_cpu_seconds(me).is_some());
        assert!(process_rss_kib(me).unwrap() > 0);
        assert!(open_file_limit().unwrap() > 0);
        let (ours, _) = self_cpu_split();
        assert!(ours >= 0.0);
        assert_eq!(self_threads_cpu_seconds("no-thread-is-named-so"), 0.0);
        assert_eq!(stale_index(b"feed_down"), 3);
        assert_eq!(stale_index(b"what"), 4);
    }
}
