//! The resume history of PROTOCOL §10: per symbol, the recent full-depth
//! book deltas and trades, already encoded, so that a client that reconnects
//! with "I hold seq S in epoch E" gets every message after S instead of a
//! snapshot.
//!
//! Owned by the market thread, beside the books (DESIGN "Derived channels,
//! resume, auth"): it records each published delta and trade, and answers a
//! worker's "everything after S" the way it answers a snapshot request,
//! through the same FIFO ring, so a resumed client is gap-free by the same
//! argument as a snapshot. Pure: no I/O, no clock (`now_ns` is an argument),
//! never panics, whatever seq a client claims.
//!
//! # What it holds
//!
//! Two streams per symbol, [`Stream::Book`] and [`Stream::Trades`], each with
//! its own sequence (the book's seq, and the trades' seq that restarts at 1
//! in a new epoch). A stream holds a gap-free run of messages `floor+1 ..=
//! last`, bounded by:
//! - count: at most [`HistoryLimits::max_entries`] per stream (default 8,192);
//! - age: a message older than [`HistoryLimits::max_age_ns`] (default 10 s)
//!   is never replayed, and is dropped by the next [`ResumeHistory::push`] or
//!   [`ResumeHistory::expire`];
//! - memory: all streams of all symbols together charge at most
//!   [`HistoryLimits::max_total_bytes`]; past it the oldest message of any
//!   stream goes first. Each message charges its frame's bytes plus a fixed
//!   per-entry overhead ([`ResumeHistory::entry_cost`]).
//!
//! The history restarts (nothing before can be resumed) when the book is
//! replaced by a feed snapshot ([`ResumeHistory::reset`]: a client that held
//! an older seq needs the new snapshot anyway), when a message does not follow
//! on from the last one (a gap, e.g. trades an edge lost on the backplane),
//! and when the epoch changes.
//!
//! Whether the book is stale is the market's business, not this history's: a
//! client resuming a stale book still needs its `Stale`.

use std::collections::HashMap;
use std::collections::VecDeque;

use super::SymbolId;

/// The two channels that resume (PROTOCOL §10: only `book` and `trades`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Full-depth book deltas, in the book's seq.
    Book,
    /// Trades, in the symbol's trade seq.
    Trades,
}

/// One stream of one symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub symbol: SymbolId,
    pub stream: Stream,
}

impl StreamKey {
    /// `symbol`'s book deltas.
    pub fn book(symbol: SymbolId) -> StreamKey {
        StreamKey {
            symbol,
            stream: Stream::Book,
        }
    }

    /// `symbol`'s trades.
    pub fn trades(symbol: SymbolId) -> StreamKey {
        StreamKey {
            symbol,
            stream: Stream::Trades,
        }
    }
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Book => 0,
            Stream::Trades => 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Stream::Book => "book",
            Stream::Trades => "trades",
        }
    }
}

/// The bounds of the history (PROTOCOL §10: "the last 10 s or 8,192 messages
/// each, whichever is fewer, within a memory budget").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages per stream (each symbol's book, each symbol's trades). Default 8,192.
    pub max_entries: usize,
    /// Oldest message replayed, in nanoseconds. Default 10 s.
    pub max_age_ns: u64,
    /// Bytes charged by all streams together (frames plus per-entry
    /// overhead, see [`ResumeHistory::entry_cost`]). Default 64 MiB.
    pub max_total_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_entries: 8_192,
            max_age_ns: 10_000_000_000,
            max_total_bytes: 64 << 20,
        }
    }
}

/// One recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    pub seq: u64,
    /// The encoded message, shared (e.g. an `EncodedFrame`, an `Arc<[u8]>`).
    pub frame: T,
    /// The frame's size in bytes, as given to [`ResumeHistory::push`].
    pub bytes: usize,
    /// When it was recorded (never earlier than the entry before it).
    pub time_ns: u64,
    /// Push order across every stream, for eviction by memory.
    id: u64,
}

/// The answer to "everything after seq S in epoch E".
#[derive(Debug)]
pub enum Resume<'a, T> {
    /// Every message after S, gap-free, oldest first (possibly none: S is the
    /// last one).
    Hit(Replay<'a, T>),
    Miss(Miss),
}

/// Why a resume cannot be served (the client gets a snapshot, or for trades
/// a `Stale{slow_consumer_trades}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Nothing was ever recorded for this symbol's stream.
    NoHistory,
    /// The client's seq belongs to another epoch (the engine or the symbol's
    /// origin restarted since): it means nothing here.
    Epoch { held: u64 },
    /// The client claims a seq beyond the last one published (a client
    /// ahead of a lagging node, or garbage such as `u64::MAX`).
    Future { last: u64 },
    /// The history restarts after `since` (book replaced by a snapshot, a
    /// gap in the stream, or an epoch change), and S is before it.
    Replaced { since: u64, last: u64 },
    /// Messages after S were dropped (by count, age or memory); `oldest` is
    /// the smallest seq a client could still resume from.
    Evicted { oldest: u64, last: u64 },
}

impl Miss {
    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Miss::NoHistory => "no_history",
            Miss::Epoch { .. } => "epoch",
            Miss::Future { .. } => "future",
            Miss::Replaced { .. } => "replaced",
            Miss::Evicted { .. } => "evicted",
        }
    }

    /// How many messages after `after_seq` the client cannot get replayed:
    /// `Stale.dropped` for trades (PROTOCOL §10); 0 when unknown.
    pub fn unrecoverable(self, after_seq: u64) -> u64 {
        match self {
            Miss::Replaced { last, .. } | Miss::Evicted { last, .. } => {
                last.saturating_sub(after_seq)
            }
            Miss::NoHistory | Miss::Epoch { .. } | Miss::Future { .. } => 0,
        }
    }
}

/// A hit's messages, oldest first.
#[derive(Debug, Clone)]
pub struct Replay<'a, T> {
    entries: std::collections::vec_deque::Iter<'a, Entry<T>>,
}

impl<'a, T> Iterator for Replay<'a, T> {
    type Item = &'a Entry<T>;

    fn next(&mut self) -> Option<&'a Entry<T>> {
        self.entries.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl<T> ExactSizeIterator for Replay<'_, T> {}

/// Counters for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryCounters {
    /// Messages held now, all streams.
    pub entries: usize,
    /// Bytes charged now (see [`ResumeHistory::entry_cost`]).
    pub bytes: usize,
    /// Messages recorded since the start.
    pub pushed: u64,
    /// Dropped because their stream held `max_entries`.
    pub evicted_count: u64,
    /// Dropped because older than `max_age_ns`.
    pub evicted_age: u64,
    /// Dropped to stay within `max_total_bytes` (oldest first, any stream),
    /// including a message too big for the budget on its own.
    pub evicted_memory: u64,
    /// Dropped because their stream restarted (snapshot, gap, epoch).
    pub evicted_restart: u64,
}

/// Why entries leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Count,
    Age,
    Memory,
    Restart,
}

/// One stream of one symbol.
#[derive(Debug)]
struct StreamHistory<T> {
    epoch: u64,
    /// `entries` hold exactly the seqs `floor+1 ..= last`.
    entries: VecDeque<Entry<T>>,
    floor: u64,
    last: u64,
    /// Where the history last restarted; `barrier ≤ floor`.
    barrier: u64,
}

impl<T> StreamHistory<T> {
    fn new(epoch: u64, seq: u64) -> StreamHistory<T> {
        StreamHistory {
            epoch,
            entries: VecDeque::new(),
            floor: seq,
            last: seq,
            barrier: seq,
        }
    }

    /// Whether the entry pushed with `id` is still held (ids increase along
    /// a stream, and entries leave only from the front).
    fn holds(&self, id: u64) -> bool {
        self.entries.front().is_some_and(|e| e.id <= id)
    }
}

/// Where an entry is, in push order across all streams.
#[derive(Debug, Clone, Copy)]
struct Ref {
    key: StreamKey,
    id: u64,
}

/// The resume history of every symbol; see the module doc.
///
/// # Invariants
///
/// - In each stream, `entries` hold the seqs `floor+1 ..= last`, contiguous
///   and increasing, with increasing `id` and non-decreasing `time_ns`;
///   `barrier ≤ floor ≤ last`; at most `max_entries` of them.
/// - `counters.entries` and `counters.bytes` are the number of entries held
///   and the sum of their [`ResumeHistory::entry_cost`];
///   `counters.bytes ≤ max_total_bytes` after every call.
/// - Every held entry has exactly one `Ref` in `order`, and `order` is in
///   push order (increasing `id`); refs of entries that left are skipped when
///   met, and swept once they outnumber the live ones.
#[derive(Debug)]
pub struct ResumeHistory<T> {
    limits: HistoryLimits,
    symbols: HashMap<SymbolId, [Option<StreamHistory<T>>; 2]>,
    order: VecDeque<Ref>,
    next_id: u64,
    /// The latest time seen, so that times never go backwards in a stream
    /// (CLOCK_REALTIME may step back).
    last_time_ns: u64,
    counters: HistoryCounters,
}

impl<T> ResumeHistory<T> {
    pub fn new(limits: HistoryLimits) -> ResumeHistory<T> {
        ResumeHistory {
            limits,
            symbols: HashMap::new(),
            order: VecDeque::new(),
            next_id: 0,
            last_time_ns: 0,
            counters: HistoryCounters::default(),
        }
    }

    pub fn limits(&self) -> &HistoryLimits {
        &self.limits
    }

    pub fn counters(&self) -> HistoryCounters {
        self.counters
    }

    /// What a message of `frame_bytes` bytes charges against the budget: its
    /// bytes plus the bookkeeping of one entry.
    pub fn entry_cost(frame_bytes: usize) -> usize {
        frame_bytes.saturating_add(std::mem::size_of::<Entry<T>>() + std::mem::size_of::<Ref>())
    }

    /// `key`'s history restarts at `seq` in `epoch`: the book was replaced by
    /// a feed snapshot that took `seq`, or (trades) the trade seq restarts,
    /// at 0 in a new epoch. A client holding `seq` can resume; one holding an
    /// earlier seq cannot.
    pub fn reset(&mut self, key: StreamKey, epoch: u64, seq: u64) {
        if let Some(old) = self.slot_mut(key).take() {
            Self::drop_entries(&mut self.counters, old.entries, Cause::Restart);
        }
        *self.slot_mut(key) = Some(StreamHistory::new(epoch, seq));
        self.maybe_sweep();
    }

    /// Records the message `seq` of `key` in `epoch`, published
    /// at `now_ns`, and drops what the limits no longer allow. A message that
    /// does not follow on from the last one (another epoch, a gap, a repeat)
    /// restarts the stream's history just before it. Seq 0 is never a
    /// message and is ignored.
    pub fn push(
        &mut self,
        now_ns: u64,
        key: StreamKey,
        epoch: u64,
        seq: u64,
        frame: T,
        bytes: usize,
    ) {
        if seq == 0 {
            return;
        }
        let now_ns = now_ns.max(self.last_time_ns);
        self.expire(now_ns);
        let cost = Self::entry_cost(bytes);
        let id = self.next_id;
        self.next_id += 1;
        let counters = &mut self.counters;
        let slot = &mut self.symbols.entry(key.symbol).or_default()[key.stream.index()];
        let follows_on = slot
            .as_ref()
            .is_some_and(|s| s.epoch == epoch && s.last.checked_add(1) == Some(seq));
        if !follows_on {
            if let Some(old) = slot.take() {
                Self::drop_entries(counters, old.entries, Cause::Restart);
            }
            *slot = Some(StreamHistory::new(epoch, seq - 1));
        }
        let Some(s) = slot.as_mut() else {
            return; // Set just above.
        };
        s.last = seq;
        if cost > self.limits.max_total_bytes || self.limits.max_entries == 0 {
            // Can never be held: the stream's history now starts after it,
            // and nobody else's is evicted for it.
            let held = std::mem::take(&mut s.entries);
            Self::drop_entries(counters, held, Cause::Memory);
            counters.evicted_memory += 1;
            counters.pushed += 1;
            s.floor = seq;
            return;
        }
        s.entries.push_back(Entry {
            seq,
            frame,
            bytes,
            time_ns: now_ns,
            id,
        });
        counters.entries += 1;
        counters.bytes += cost;
        counters.pushed += 1;
        self.order.push_back(Ref { key, id });
        while s.entries.len() > self.limits.max_entries {
            if let Some(e) = s.entries.pop_front() {
                s.floor = e.seq;
                Self::account_drop(counters, &e, Cause::Count);
            }
        }
        while self.counters.bytes > self.limits.max_total_bytes {
            if !self.evict_oldest(Cause::Memory, |_| true) {
                break;
            }
        }
        self.maybe_sweep();
        debug_assert!(self.counters.bytes <= self.limits.max_total_bytes);
    }

    /// Drops every message older than the age limit at `now_ns`; returns how
    /// many. [`ResumeHistory::push`] does it too; call it on idle turns so that
    /// memory is returned when nothing is published.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let now_ns = now_ns.max(self.last_time_ns);
        self.last_time_ns = now_ns;
        let max_age = self.limits.max_age_ns;
        let mut n = 0;
        while self.evict_oldest(Cause::Age, |e| now_ns.saturating_sub(e.time_ns) > max_age) {
            n += 1;
        }
        n
    }

    /// Everything after `after_seq` in `epoch` for `key`, as
    /// held at `now_ns` (a message older than the age limit is not replayed,
    /// even if not yet dropped).
    pub fn query(&self, now_ns: u64, key: StreamKey, epoch: u64, after_seq: u64) -> Resume<'_, T> {
        let Some(s) = self.slot(key) else {
            return Resume::Miss(Miss::NoHistory);
        };
        if s.epoch != epoch {
            return Resume::Miss(Miss::Epoch { held: s.epoch });
        }
        if after_seq > s.last {
            return Resume::Miss(Miss::Future { last: s.last });
        }
        // Entries too old to replay count as gone.
        let max_age = self.limits.max_age_ns;
        let fresh = s
            .entries
            .partition_point(|e| now_ns.saturating_sub(e.time_ns) > max_age);
        let floor = match fresh.checked_sub(1) {
            Some(i) => s.entries[i].seq,
            None => s.floor,
        };
        if after_seq < floor {
            return Resume::Miss(if after_seq < s.barrier {
                Miss::Replaced {
                    since: s.barrier,
                    last: s.last,
                }
            } else {
                Miss::Evicted {
                    oldest: floor,
                    last: s.last,
                }
            });
        }
        // floor ≤ after_seq ≤ last, and entries hold floor+1 ..= last: the
        // first to replay is at after_seq - floor.
        let first = (after_seq - s.floor) as usize;
        Resume::Hit(Replay {
            entries: s.entries.range(first..),
        })
    }

    /// The epoch of `key`'s history and its last seq.
    pub fn last_seq(&self, key: StreamKey) -> Option<(u64, u64)> {
        self.slot(key).map(|s| (s.epoch, s.last))
    }

    /// Messages held for `key` (some may be too old to replay).
    pub fn held(&self, key: StreamKey) -> usize {
        self.slot(key).map_or(0, |s| s.entries.len())
    }

    fn slot(&self, key: StreamKey) -> Option<&StreamHistory<T>> {
        self.symbols.get(&key.symbol)?[key.stream.index()].as_ref()
    }

    fn slot_mut(&mut self, key: StreamKey) -> &mut Option<StreamHistory<T>> {
        &mut self.symbols.entry(key.symbol).or_default()[key.stream.index()]
    }

    /// Evicts the oldest entry held, across all streams, if `pred` accepts
    /// it; returns whether it did.
    fn evict_oldest(&mut self, cause: Cause, pred: impl Fn(&Entry<T>) -> bool) -> bool {
        while let Some(&r) = self.order.front() {
            let s = self
                .symbols
                .get_mut(&r.key.symbol)
                .and_then(|streams| streams[r.key.stream.index()].as_mut());
            let Some(s) = s.filter(|s| s.holds(r.id)) else {
                // An entry that already left (count, restart): skip its ref.
                self.order.pop_front();
                continue;
            };
            // The oldest live ref is its stream's front (`# Invariants`).
            debug_assert_eq!(s.entries.front().map(|e| e.id), Some(r.id));
            let Some(front) = s.entries.front() else {
                return false;
            };
            if !pred(front) {
                return false;
            }
            self.order.pop_front();
            if let Some(e) = s.entries.pop_front() {
                s.floor = e.seq;
                Self::account_drop(&mut self.counters, &e, cause);
            }
            return true;
        }
        false
    }

    /// Drops refs of entries that left once they outnumber the live ones.
    /// Amortized O(1) per push.
    fn maybe_sweep(&mut self) {
        if self.order.len() <= 2 * self.counters.entries + 64 {
            return;
        }
        let symbols = &self.symbols;
        self.order.retain(|r| {
            symbols
                .get(&r.key.symbol)
                .and_then(|s| s[r.key.stream.index()].as_ref())
                .is_some_and(|s| s.holds(r.id))
        });
        debug_assert_eq!(self.order.len(), self.counters.entries);
    }

    fn drop_entries(counters: &mut HistoryCounters, entries: VecDeque<Entry<T>>, cause: Cause) {
        for e in &entries {
            Self::account_drop(counters, e, cause);
        }
    }

    fn account_drop(counters: &mut HistoryCounters, e: &Entry<T>, cause: Cause) {
        counters.entries -= 1;
        counters.bytes -= Self::entry_cost(e.bytes);
        match cause {
            Cause::Count => counters.evicted_count += 1,
            Cause::Age => counters.evicted_age += 1,
            Cause::Memory => counters.evicted_memory += 1,
            Cause::Restart => counters.evicted_restart += 1,
        }
    }
}

impl<T> Default for ResumeHistory<T> {
    fn default() -> Self {
        ResumeHistory::new(HistoryLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;
    const A: SymbolId = SymbolId(0);
    const B: SymbolId = SymbolId(1);

    /// Frames that say what they are: (symbol, stream, epoch, seq).
    type Frame = (u32, Stream, u64, u64);

    fn hist(max_entries: usize, max_age_ns: u64, max_total_bytes: usize) -> ResumeHistory<Frame> {
        ResumeHistory::new(HistoryLimits {
            max_entries,
            max_age_ns,
            max_total_bytes,
        })
    }

    fn k(symbol: SymbolId, stream: Stream) -> StreamKey {
        StreamKey { symbol, stream }
    }

    fn push(
        h: &mut ResumeHistory<Frame>,
        now: u64,
        key: StreamKey,
        epoch: u64,
        seq: u64,
        bytes: usize,
    ) {
        h.push(
            now,
            key,
            epoch,
            seq,
            (key.symbol.0, key.stream, epoch, seq),
            bytes,
        );
    }

    /// The seqs of a hit, or the miss.
    fn seqs(r: Resume<'_, Frame>) -> Result<Vec<u64>, Miss> {
        match r {
            Resume::Hit(replay) => Ok(replay.map(|e| e.seq).collect()),
            Resume::Miss(m) => Err(m),
        }
    }

    fn cost(bytes: usize) -> usize {
        ResumeHistory::<Frame>::entry_cost(bytes)
    }

    #[test]
    fn everything_after_s_or_why_not() {
        let mut h = hist(100, 10 * S, 1 << 20);
        assert_eq!(
            seqs(h.query(0, k(A, Stream::Book), 7, 0)),
            Err(Miss::NoHistory)
        );
        // The snapshot at seq 10, then deltas 11..=15.
        h.reset(k(A, Stream::Book), 7, 10);
        assert_eq!(seqs(h.query(0, k(A, Stream::Book), 7, 10)), Ok(vec![]));
        for seq in 11..=15 {
            push(&mut h, seq, k(A, Stream::Book), 7, seq, 50);
        }
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Book), 7, 12)),
            Ok(vec![13, 14, 15])
        );
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Book), 7, 10)),
            Ok(vec![11, 12, 13, 14, 15])
        );
        assert_eq!(seqs(h.query(20, k(A, Stream::Book), 7, 15)), Ok(vec![]));
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Book), 7, 16)),
            Err(Miss::Future { last: 15 })
        );
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Book), 7, u64::MAX)),
            Err(Miss::Future { last: 15 })
        );
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Book), 6, 12)),
            Err(Miss::Epoch { held: 7 })
        );
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Book), 7, 9)),
            Err(Miss::Replaced {
                since: 10,
                last: 15
            })
        );
        assert_eq!(
            Miss::Replaced {
                since: 10,
                last: 15
            }
            .unrecoverable(9),
            6
        );
        // Another symbol, and this one's trades: nothing.
        assert_eq!(
            seqs(h.query(20, k(B, Stream::Book), 7, 0)),
            Err(Miss::NoHistory)
        );
        assert_eq!(
            seqs(h.query(20, k(A, Stream::Trades), 7, 0)),
            Err(Miss::NoHistory)
        );
        let c = h.counters();
        assert_eq!((c.entries, c.bytes, c.pushed), (5, 5 * cost(50), 5));
        // The frames are the ones pushed.
        let Resume::Hit(mut r) = h.query(20, k(A, Stream::Book), 7, 14) else {
            panic!("a hit");
        };
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.next().map(|e| (e.frame, e.bytes, e.time_ns)),
            Some(((0, Stream::Book, 7, 15), 50, 15))
        );
    }

    #[test]
    fn trades_have_their_own_seq_from_one() {
        let mut h = hist(100, 10 * S, 1 << 20);
        push(&mut h, 1, k(A, Stream::Book), 7, 3, 10);
        // The first trade: a client that subscribed before it holds trade seq 0.
        push(&mut h, 1, k(A, Stream::Trades), 7, 1, 10);
        push(&mut h, 2, k(A, Stream::Trades), 7, 2, 10);
        assert_eq!(seqs(h.query(3, k(A, Stream::Trades), 7, 0)), Ok(vec![1, 2]));
        assert_eq!(seqs(h.query(3, k(A, Stream::Book), 7, 2)), Ok(vec![3]));
        assert_eq!(h.last_seq(k(A, Stream::Trades)), Some((7, 2)));
        // A new epoch (a local feed took over a mirrored book): trades restart at 1.
        push(&mut h, 4, k(A, Stream::Trades), 8, 1, 10);
        assert_eq!(
            seqs(h.query(5, k(A, Stream::Trades), 7, 0)),
            Err(Miss::Epoch { held: 8 })
        );
        assert_eq!(seqs(h.query(5, k(A, Stream::Trades), 8, 0)), Ok(vec![1]));
        assert_eq!(h.counters().evicted_restart, 2);
    }

    #[test]
    fn a_gap_restarts_the_stream() {
        let mut h = hist(100, 10 * S, 1 << 20);
        for seq in 1..=3 {
            push(&mut h, 0, k(A, Stream::Trades), 1, seq, 10);
        }
        // Trades 4 and 5 were lost on the way (an edge's backplane).
        push(&mut h, 0, k(A, Stream::Trades), 1, 6, 10);
        assert_eq!(seqs(h.query(0, k(A, Stream::Trades), 1, 5)), Ok(vec![6]));
        let miss = Miss::Replaced { since: 5, last: 6 };
        assert_eq!(seqs(h.query(0, k(A, Stream::Trades), 1, 3)), Err(miss));
        assert_eq!(miss.unrecoverable(3), 3);
        // A repeat restarts it too (never expected; never a wrong replay).
        push(&mut h, 0, k(A, Stream::Trades), 1, 6, 10);
        assert_eq!(seqs(h.query(0, k(A, Stream::Trades), 1, 5)), Ok(vec![6]));
        assert_eq!(h.held(k(A, Stream::Trades)), 1);
        // Seq 0 is never a message.
        push(&mut h, 0, k(A, Stream::Trades), 1, 0, 10);
        assert_eq!(h.counters().pushed, 5);
        // After u64::MAX nothing follows on.
        h.reset(k(B, Stream::Book), 1, u64::MAX - 1);
        push(&mut h, 0, k(B, Stream::Book), 1, u64::MAX, 10);
        assert_eq!(
            seqs(h.query(0, k(B, Stream::Book), 1, u64::MAX - 1)),
            Ok(vec![u64::MAX])
        );
        assert_eq!(
            seqs(h.query(0, k(B, Stream::Book), 1, u64::MAX)),
            Ok(vec![])
        );
    }

    #[test]
    fn bounded_by_count() {
        let mut h = hist(3, 10 * S, 1 << 20);
        h.reset(k(A, Stream::Book), 1, 0);
        for seq in 1..=5 {
            push(&mut h, 0, k(A, Stream::Book), 1, seq, 10);
        }
        assert_eq!(
            seqs(h.query(0, k(A, Stream::Book), 1, 2)),
            Ok(vec![3, 4, 5])
        );
        assert_eq!(
            seqs(h.query(0, k(A, Stream::Book), 1, 1)),
            Err(Miss::Evicted { oldest: 2, last: 5 })
        );
        assert_eq!(
            seqs(h.query(0, k(A, Stream::Book), 1, 0)),
            Err(Miss::Evicted { oldest: 2, last: 5 })
        );
        let c = h.counters();
        assert_eq!((c.entries, c.evicted_count), (3, 2));
    }

    #[test]
    fn bounded_by_age() {
        let mut h = hist(100, 10 * S, 1 << 20);
        h.reset(k(A, Stream::Book), 1, 0);
        push(&mut h, 0, k(A, Stream::Book), 1, 1, 10);
        push(&mut h, 5 * S, k(A, Stream::Book), 1, 2, 10);
        // At 10 s the first is exactly 10 s old: still replayed.
        assert_eq!(
            seqs(h.query(10 * S, k(A, Stream::Book), 1, 0)),
            Ok(vec![1, 2])
        );
        // Past it, gone from the answer before being dropped.
        assert_eq!(
            seqs(h.query(10 * S + 1, k(A, Stream::Book), 1, 0)),
            Err(Miss::Evicted { oldest: 1, last: 2 })
        );
        assert_eq!(h.held(k(A, Stream::Book)), 2);
        assert_eq!(h.expire(10 * S + 1), 1);
        assert_eq!(h.counters().evicted_age, 1);
        // All too old: a client holding the last seq missed nothing.
        assert_eq!(seqs(h.query(20 * S, k(A, Stream::Book), 1, 2)), Ok(vec![]));
        assert_eq!(
            seqs(h.query(20 * S, k(A, Stream::Book), 1, 1)),
            Err(Miss::Evicted { oldest: 2, last: 2 })
        );
        assert_eq!(h.expire(20 * S), 1);
        assert_eq!(h.counters().bytes, 0);
        // A clock that steps back records at the latest time seen.
        push(&mut h, 19 * S, k(A, Stream::Book), 1, 3, 10);
        assert_eq!(seqs(h.query(30 * S, k(A, Stream::Book), 1, 2)), Ok(vec![3]));
    }

    #[test]
    fn the_memory_budget_is_shared_and_the_oldest_go_first() {
        let mut h = hist(100, 10 * S, 4 * cost(100));
        push(&mut h, 1, k(A, Stream::Book), 1, 1, 100);
        push(&mut h, 2, k(B, Stream::Book), 1, 1, 100);
        push(&mut h, 3, k(A, Stream::Trades), 1, 1, 100);
        push(&mut h, 4, k(A, Stream::Book), 1, 2, 100);
        assert_eq!(h.counters().bytes, 4 * cost(100));
        // One more: A's first book delta, the oldest of all, goes.
        push(&mut h, 5, k(B, Stream::Book), 1, 2, 100);
        assert_eq!(seqs(h.query(5, k(A, Stream::Book), 1, 1)), Ok(vec![2]));
        assert_eq!(
            seqs(h.query(5, k(A, Stream::Book), 1, 0)),
            Err(Miss::Evicted { oldest: 1, last: 2 })
        );
        assert_eq!(seqs(h.query(5, k(B, Stream::Book), 1, 0)), Ok(vec![1, 2]));
        // A big one takes the room of three.
        push(
            &mut h,
            6,
            k(B, Stream::Trades),
            1,
            1,
            3 * cost(100) - cost(0),
        );
        assert_eq!(h.counters().bytes, 4 * cost(100));
        assert_eq!(seqs(h.query(6, k(B, Stream::Book), 1, 1)), Ok(vec![2]));
        assert_eq!(h.held(k(A, Stream::Trades)) + h.held(k(A, Stream::Book)), 0);
        // One over the whole budget evicts nobody else and is not held.
        push(&mut h, 7, k(A, Stream::Trades), 1, 2, 4 * cost(100));
        assert_eq!(h.held(k(B, Stream::Book)), 1);
        assert_eq!(seqs(h.query(7, k(A, Stream::Trades), 1, 2)), Ok(vec![]));
        assert_eq!(
            seqs(h.query(7, k(A, Stream::Trades), 1, 1)),
            Err(Miss::Evicted { oldest: 2, last: 2 })
        );
        let c = h.counters();
        assert_eq!(c.evicted_memory, 5);
        assert_eq!(c.pushed, c.entries as u64 + c.evicted_memory);
    }

    #[test]
    fn stale_refs_are_swept() {
        // A stream evicting by count leaves a ref behind per message, here
        // behind the live ref of another stream's older message.
        let mut h = hist(4, 10 * S, 1 << 30);
        push(&mut h, 0, k(B, Stream::Trades), 1, 1, 10);
        for seq in 1..=10_000 {
            push(&mut h, 0, k(A, Stream::Book), 1, seq, 10);
        }
        assert!(h.order.len() <= 2 * 5 + 64 + 1);
        assert_eq!(
            seqs(h.query(0, k(A, Stream::Book), 1, 9_996)),
            Ok(vec![9_997, 9_998, 9_999, 10_000])
        );
        assert_eq!(seqs(h.query(0, k(B, Stream::Trades), 1, 0)), Ok(vec![1]));
    }

    // ---- Against a naive model ----

    #[derive(Debug, Clone)]
    enum Op {
        /// The next message of (symbol, stream); `skip` > 0 makes a gap,
        /// `new_epoch` moves to the next epoch.
        Push {
            sym: u32,
            trades: bool,
            skip: u64,
            new_epoch: bool,
            bytes: usize,
            dt: u64,
            back: bool,
        },
        Reset {
            sym: u32,
            trades: bool,
            ahead: u64,
        },
        Expire {
            dt: u64,
        },
        Query {
            sym: u32,
            trades: bool,
            epoch_off: u64,
            after: u64,
            dt: u64,
        },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0u32..3, any::<bool>(), prop_oneof![30 => Just(0u64), 1 => 1u64..3], prop::bool::weighted(0.03), 0usize..3_000, 0u64..S / 10, prop::bool::weighted(0.05))
                .prop_map(|(sym, trades, skip, new_epoch, bytes, dt, back)| Op::Push { sym, trades, skip, new_epoch, bytes, dt, back }),
            1 => (0u32..3, any::<bool>(), 0u64..3).prop_map(|(sym, trades, ahead)| Op::Reset { sym, trades, ahead }),
            1 => (0u64..5 * S).prop_map(|dt| Op::Expire { dt }),
            8 => (prop_oneof![9 => 0u32..3, 1 => Just(3u32)], any::<bool>(), prop_oneof![6 => Just(0u64), 1 => 1u64..3], any::<u64>(), 0u64..S)
                .prop_map(|(sym, trades, epoch_off, after, dt)| Op::Query { sym, trades, epoch_off, after, dt }),
        ]
    }

    #[derive(Debug, Clone)]
    struct MEntry {
        key: (u32, Stream),
        seq: u64,
        bytes: usize,
        time: u64,
        epoch: u64,
    }

    #[derive(Debug, Clone, Copy)]
    struct MStream {
        epoch: u64,
        last: u64,
        barrier: u64,
    }

    /// The same rules, written the plain way: every live entry in one list in
    /// push order, scanned each time.
    #[derive(Debug, Default)]
    struct Model {
        live: Vec<MEntry>,
        streams: std::collections::HashMap<(u32, Stream), MStream>,
        last_time: u64,
    }

    impl Model {
        fn cost(&self) -> usize {
            self.live.iter().map(|e| cost(e.bytes)).sum()
        }

        fn push(
            &mut self,
            l: &HistoryLimits,
            now: u64,
            key: (u32, Stream),
            epoch: u64,
            seq: u64,
            bytes: usize,
        ) {
            let now = now.max(self.last_time);
            self.last_time = now;
            self.live.retain(|e| now - e.time <= l.max_age_ns);
            let follows = self
                .streams
                .get(&key)
                .is_some_and(|s| s.epoch == epoch && s.last + 1 == seq);
            if !follows {
                self.live.retain(|e| e.key != key);
                self.streams.insert(
                    key,
                    MStream {
                        epoch,
                        last: seq - 1,
                        barrier: seq - 1,
                    },
                );
            }
            self.streams.get_mut(&key).unwrap().last = seq;
            if cost(bytes) > l.max_total_bytes || l.max_entries == 0 {
                self.live.retain(|e| e.key != key);
                return;
            }
            self.live.push(MEntry {
                key,
                seq,
                bytes,
                time: now,
                epoch,
            });
            while self.live.iter().filter(|e| e.key == key).count() > l.max_entries {
                let i = self.live.iter().position(|e| e.key == key).unwrap();
                self.live.remove(i);
            }
            while self.cost() > l.max_total_bytes {
                self.live.remove(0);
            }
        }

        fn reset(&mut self, key: (u32, Stream), epoch: u64, seq: u64) {
            self.live.retain(|e| e.key != key);
            self.streams.insert(
                key,
                MStream {
                    epoch,
                    last: seq,
                    barrier: seq,
                },
            );
        }

        fn query(
            &self,
            l: &HistoryLimits,
            now: u64,
            key: (u32, Stream),
            epoch: u64,
            after: u64,
        ) -> Result<Vec<u64>, Miss> {
            let Some(s) = self.streams.get(&key) else {
                return Err(Miss::NoHistory);
            };
            if s.epoch != epoch {
                return Err(Miss::Epoch { held: s.epoch });
            }
            if after > s.last {
                return Err(Miss::Future { last: s.last });
            }
            let held: Vec<&MEntry> = self.live.iter().filter(|e| e.key == key).collect();
            // What is held is a gap-free run ending at the last seq.
            for (i, e) in held.iter().enumerate() {
                assert_eq!(e.seq, s.last - (held.len() - 1 - i) as u64);
                assert_eq!(e.epoch, s.epoch);
            }
            let fresh: Vec<u64> = held
                .iter()
                .filter(|e| now.saturating_sub(e.time) <= l.max_age_ns)
                .map(|e| e.seq)
                .collect();
            let floor = fresh.first().map_or(s.last, |&first| first - 1);
            if after < floor {
                return Err(if after < s.barrier {
                    Miss::Replaced {
                        since: s.barrier,
                        last: s.last,
                    }
                } else {
                    Miss::Evicted {
                        oldest: floor,
                        last: s.last,
                    }
                });
            }
            Ok(fresh.into_iter().filter(|&q| q > after).collect())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn history_answers_exactly_as_the_model_within_budget(
            max_entries in prop_oneof![1 => Just(0usize), 9 => 1usize..40],
            max_age_s in 1u64..6,
            budget_entries in prop_oneof![1 => 0usize..2, 9 => 2usize..60],
            ops in prop::collection::vec(arb_op(), 1..200),
        ) {
            let limits = HistoryLimits {
                max_entries,
                max_age_ns: max_age_s * S,
                max_total_bytes: budget_entries * cost(1_500),
            };
            let mut h: ResumeHistory<Frame> = ResumeHistory::new(limits);
            let mut m = Model::default();
            let mut now = 1_000 * S;
            // Each (symbol, stream)'s epoch and next seq as the market would number them.
            let mut next: std::collections::HashMap<(u32, Stream), (u64, u64)> = Default::default();
            for op in ops {
                match op {
                    Op::Push { sym, trades, skip, new_epoch, bytes, dt, back } => {
                        let st = if trades { Stream::Trades } else { Stream::Book };
                        let key = (sym, st);
                        let (epoch, seq) = next.entry(key).or_insert((1, 1));
                        if new_epoch {
                            *epoch += 1;
                            *seq = 1;
                        }
                        *seq += skip;
                        let (e, q) = (*epoch, *seq);
                        *seq += 1;
                        now += dt;
                        // A clock that steps back for one message.
                        let at = if back { now - 3 * S } else { now };
                        h.push(at, k(SymbolId(sym), st), e, q, (sym, st, e, q), bytes);
                        m.push(&limits, at, key, e, q, bytes);
                    }
                    Op::Reset { sym, trades, ahead } => {
                        let st = if trades { Stream::Trades } else { Stream::Book };
                        let key = (sym, st);
                        let (epoch, seq) = next.entry(key).or_insert((1, 1));
                        // The snapshot takes a seq of its own.
                        *seq += ahead;
                        let (e, q) = (*epoch, *seq);
                        *seq += 1;
                        h.reset(k(SymbolId(sym), st), e, q);
                        m.reset(key, e, q);
                    }
                    Op::Expire { dt } => {
                        now += dt;
                        h.expire(now);
                        let t = now.max(m.last_time);
                        m.last_time = t;
                        m.live.retain(|e| t - e.time <= limits.max_age_ns);
                    }
                    Op::Query { sym, trades, epoch_off, after, dt } => {
                        let st = if trades { Stream::Trades } else { Stream::Book };
                        let key = (sym, st);
                        let (epoch, seq) = next.get(&key).copied().unwrap_or((1, 1));
                        let epoch = epoch - epoch_off.min(epoch - 1) + u64::from(epoch_off == 2);
                        // Mostly near the last seq, sometimes anything at all.
                        let after = match after % 8 {
                            0 => after,
                            _ => (seq - 1).saturating_sub(after % 8) + u64::from(after % 7 == 0),
                        };
                        let at = now + dt;
                        let got = seqs(h.query(at, k(SymbolId(sym), st), epoch, after));
                        let want = m.query(&limits, at, key, epoch, after);
                        prop_assert_eq!(&got, &want);
                        if let Resume::Hit(r) = h.query(at, k(SymbolId(sym), st), epoch, after) {
                            for e in r {
                                prop_assert_eq!(e.frame, (sym, st, epoch, e.seq));
                            }
                        }
                    }
                }
                let c = h.counters();
                prop_assert!(c.bytes <= limits.max_total_bytes, "over budget");
                prop_assert_eq!(c.entries, m.live.len());
                prop_assert_eq!(c.bytes, m.cost());
                prop_assert_eq!(
                    c.pushed,
                    c.entries as u64 + c.evicted_count + c.evicted_age + c.evicted_memory + c.evicted_restart
                );
                prop_assert!(h.order.len() <= 2 * c.entries + 64 + 1);
            }
        }
    }
}
