//! Counters and the Prometheus text format.
//!
//! Each counter set has exactly one writing thread (the ingest thread for
//! [`IngestCounters`], a worker for its own counters); readers (a `/metrics`
//! scrape) load them with relaxed ordering. A scrape may see counters a few
//! increments apart from each other, never torn values.

pub mod throttle;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub use throttle::LogThrottle;

/// A monotonically increasing counter written by one thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Publishes a running total kept elsewhere by the same single writer.
    pub fn set(&self, total: u64) {
        self.0.store(total, Ordering::Relaxed);
    }
}

/// A value that goes up and down (connections open, say).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter per label value, the label values fixed at compile time.
#[derive(Debug)]
pub struct LabeledCounter<const N: usize> {
    labels: &'static [&'static str; N],
    values: [Counter; N],
}

impl<const N: usize> LabeledCounter<N> {
    pub fn new(labels: &'static [&'static str; N]) -> Self {
        LabeledCounter {
            labels,
            values: std::array::from_fn(|_| Counter::default()),
        }
    }

    /// Counts one for `label`. An unknown label is a programming error: it is
    /// counted under the last label (by convention `other`) rather than lost.
    pub fn inc(&self, label: &str) {
        let i = self
            .labels
            .iter()
            .position(|l| *l == label)
            .unwrap_or(N - 1);
        debug_assert!(self.labels[i] == label, "unknown metric label {label}");
        self.values[i].inc();
    }

    pub fn get(&self, label: &str) -> u64 {
        self.labels
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| self.values[i].get())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.labels
            .iter()
            .copied()
            .zip(self.values.iter().map(Counter::get))
    }

    pub fn total(&self) -> u64 {
        self.values.iter().map(Counter::get).sum()
    }
}

/// Kinds of ingest message, as metric labels.
pub const INGEST_KINDS: [&str; 4] = ["snapshot", "delta", "trade", "hello"];

/// Reasons a readable ingest message is rejected (see `book::RejectReason::label`).
pub const REJECT_REASONS: [&str; 15] = [
    "invalid_symbol",
    "bad_decimal",
    "empty_message",
    "bad_decimals",
    "bad_level",
    "bad_message",
    "no_snapshot",
    "not_owner",
    "feed_gap",
    "book_stale",
    "late_hello",
    "too_many_symbols",
    "book_too_deep",
    "too_many_updates",
    "other",
];

/// Reasons a feed connection ends (see `book::StreamError::label`, plus EOF/IO).
pub const FEED_CLOSE_REASONS: [&str; 15] = [
    "frame_too_large",
    "bad_length",
    "undecodable",
    "not_json_object",
    "line_too_long",
    "missing_hello",
    "bad_token",
    "hello_timeout",
    "message_timeout",
    "feed_id_too_long",
    "eof",
    "io_error",
    "too_many_feeds",
    "token_revoked",
    "other",
];

/// Counters of the ingest thread (its single writer).
#[derive(Debug)]
pub struct IngestCounters {
    pub feeds_open: Gauge,
    pub feeds_accepted: Counter,
    /// `accept` on a feed listener failed (out of file descriptors, say).
    pub accept_errors: Counter,
    pub feeds_closed: LabeledCounter<15>,
    pub bytes_read: Counter,
    pub accepted: LabeledCounter<4>,
    pub rejected: LabeledCounter<15>,
    pub published_deltas: Counter,
    pub published_snapshots: Counter,
    pub published_trades: Counter,
    pub published_stale: Counter,
}

impl Default for IngestCounters {
    fn default() -> Self {
        IngestCounters {
            feeds_open: Gauge::default(),
            feeds_accepted: Counter::default(),
            accept_errors: Counter::default(),
            feeds_closed: LabeledCounter::new(&FEED_CLOSE_REASONS),
            bytes_read: Counter::default(),
            accepted: LabeledCounter::new(&INGEST_KINDS),
            rejected: LabeledCounter::new(&REJECT_REASONS),
            published_deltas: Counter::default(),
            published_snapshots: Counter::default(),
            published_trades: Counter::default(),
            published_stale: Counter::default(),
        }
    }
}

impl IngestCounters {
    /// Appends these counters in Prometheus text format.
    pub fn render(&self, out: &mut PromText) {
        out.gauge(
            "tickwire_ingest_feeds_open",
            "Feed connections open now.",
            self.feeds_open.get(),
        );
        out.counter(
            "tickwire_ingest_feeds_accepted_total",
            "Feed connections accepted.",
            self.feeds_accepted.get(),
        );
        out.counter(
            "tickwire_ingest_accept_errors_total",
            "Failed accepts on the feed listeners (e.g. out of file descriptors); retried every 100 ms.",
            self.accept_errors.get(),
        );
        out.labeled_counter(
            "tickwire_ingest_feeds_closed_total",
            "Feed connections closed, by reason.",
            "reason",
            self.feeds_closed.iter(),
        );
        out.counter(
            "tickwire_ingest_bytes_total",
            "Bytes read from feeds.",
            self.bytes_read.get(),
        );
        out.labeled_counter(
            "tickwire_ingest_messages_total",
            "Ingest messages accepted, by kind.",
            "kind",
            self.accepted.iter(),
        );
        out.labeled_counter(
            "tickwire_ingest_rejected_total",
            "Ingest messages rejected (connection kept), by reason.",
            "reason",
            self.rejected.iter(),
        );
        out.labeled_counter(
            "tickwire_published_total",
            "Messages published to subscribers, by kind.",
            "kind",
            [
                ("snapshot", self.published_snapshots.get()),
                ("delta", self.published_deltas.get()),
                ("trade", self.published_trades.get()),
                ("stale", self.published_stale.get()),
            ]
            .into_iter(),
        );
    }
}

/// A Prometheus text-format (version 0.0.4) document being written.
#[derive(Debug, Default)]
pub struct PromText {
    buf: String,
}

impl PromText {
    pub fn new() -> Self {
        PromText::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.buf, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.buf, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.buf, "{name} {value}");
    }

    pub fn labeled_counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl Iterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, help, "counter");
        for (v, n) in values {
            let _ = writeln!(self.buf, "{name}{{{label}=\"{v}\"}} {n}");
        }
    }

    /// Appends raw, already formatted lines.
    pub fn raw(&mut self) -> &mut String {
        &mut self.buf
    }

    pub fn finish(self) -> String {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labeled_counter_counts_by_label_and_renders() {
        let c = IngestCounters::default();
        c.rejected.inc("bad_decimal");
        c.rejected.inc("bad_decimal");
        c.rejected.inc("not_owner");
        assert_eq!(c.rejected.get("bad_decimal"), 2);
        assert_eq!(c.rejected.get("not_owner"), 1);
        assert_eq!(c.rejected.total(), 3);
        let mut text = PromText::new();
        c.render(&mut text);
        let text = text.finish();
        assert!(
            text.contains("tickwire_ingest_rejected_total{reason=\"bad_decimal\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE tickwire_ingest_rejected_total counter\n"));
    }

    #[test]
    fn label_lists_cover_every_reject_and_close_reason() {
        use crate::book::{RejectReason, StreamError};
        let rejects = [
            RejectReason::InvalidSymbol(String::new()),
            RejectReason::BadDecimal(String::new()),
            RejectReason::EmptyMessage,
            RejectReason::BadDecimals(0),
            RejectReason::BadLevel(String::new()),
            RejectReason::BadMessage(String::new()),
            RejectReason::NoSnapshot(String::new()),
            RejectReason::NotOwner(String::new()),
            RejectReason::FeedGap {
                symbol: String::new(),
                expected: 0,
                got: 0,
            },
            RejectReason::BookStale(String::new()),
            RejectReason::LateHello,
            RejectReason::TooManySymbols {
                symbol: String::new(),
                max: 0,
            },
            RejectReason::BookTooDeep {
                symbol: String::new(),
                side: "bid",
                depth: 0,
                max: 0,
            },
            RejectReason::TooManyUpdates {
                symbol: String::new(),
                updates: 0,
                max: 0,
            },
        ];
        for r in rejects {
            assert!(REJECT_REASONS.contains(&r.label()), "{}", r.label());
        }
        let closes = [
            StreamError::FrameTooLarge(0),
            StreamError::BadLength,
            StreamError::Undecodable(String::new()),
            StreamError::NotJsonObject(String::new()),
            StreamError::LineTooLong,
            StreamError::MissingHello,
            StreamError::BadToken,
            StreamError::HelloTimeout { after_ms: 0 },
            StreamError::MessageTimeout { after_ms: 0 },
            StreamError::FeedIdTooLong { bytes: 0 },
        ];
        for c in closes {
            assert!(FEED_CLOSE_REASONS.contains(&c.label()), "{}", c.label());
        }
    }
}
