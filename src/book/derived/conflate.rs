//! Conflated books (`@Tms`, PROTOCOL §9): [`Conflated`] for `book@Tms` and
//! [`ConflatedTopN`] for `book.N@Tms`, each with its [`Cadence`].
//!
//! One instance per (symbol, channel) that someone holds, owned by the market
//! thread beside the book; conflation timers live on that thread too
//! (DESIGN "Derived channels"). Time is an input: each instance says when its
//! next emission is due ([`Conflated::poll_timeout`]) and emits when polled at
//! or after it ([`Conflated::poll_emit`]). Never does I/O, never reads a
//! clock, never panics; allocation-free once warm.
//!
//! # What an emission is
//!
//! All deltas since the previous emission merged into one: per (side, price)
//! the last size, and only the levels whose size differs from the one the
//! client held at the previous emission (so a level added and removed within
//! the interval, absent at both ends, is left out, and so is one that came
//! back to its size). `seq` is the last merged delta's, `prev_seq` the
//! previous emission's (or the snapshot's), the checksum that of the client's
//! book after it. An interval without net change emits nothing.
//!
//! For `book.N@Tms` the change is relative to the client's top-N book at the
//! previous emission: the book's top N at emission time, diffed against it
//! ([`TopN::refresh`]), O(N) per emission and nothing per delta.
//!
//! # When
//!
//! Emissions fall in windows `[k·T, (k+1)·T)` of the nanosecond clock, at most
//! one per window. A change is emitted at the first poll in a window that has
//! had no emission yet: at the next window's start under steady traffic
//! (every conflator of a given T fires on the same loop turn, and on every
//! node alike), or at once after a quiet window, so the first change after a
//! lull is not held back for nothing. Creating a view or resetting it (a
//! snapshot of the variant goes out then) counts as its window's message.

use crate::wire::pb;

use super::super::book::{OrderBook, Side};
use super::super::checksum::checksum_levels;
use super::changes::LevelChanges;
use super::top_n::TopN;
use super::{Depth, Interval, ViewDelta, ViewSnapshot};

/// When a conflated view may emit: at most once per window of its interval;
/// see the module doc.
///
/// # Invariants
///
/// - `next_due_ns` is the start of a window (a multiple of the interval), or
///   `u64::MAX` at the end of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    interval: Interval,
    next_due_ns: u64,
}

impl Cadence {
    /// A cadence whose window containing `now_ns` is taken (by the snapshot).
    pub fn new(interval: Interval, now_ns: u64) -> Cadence {
        let mut c = Cadence {
            interval,
            next_due_ns: 0,
        };
        c.emitted(now_ns);
        c
    }

    /// The start of the first window in which an emission is allowed.
    pub fn next_due_ns(&self) -> u64 {
        self.next_due_ns
    }

    pub fn is_due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_due_ns
    }

    /// Something went out at `now_ns`: nothing more in its window.
    pub fn emitted(&mut self, now_ns: u64) {
        let t = self.interval.ns();
        self.next_due_ns = (now_ns / t)
            .checked_add(1)
            .and_then(|w| w.checked_mul(t))
            .unwrap_or(u64::MAX);
    }

    pub fn interval(&self) -> Interval {
        self.interval
    }
}

/// One level touched since the last emission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    price: i64,
    /// The size the client holds (at the last emission); 0: absent.
    start: i64,
    /// The size now; 0: absent.
    last: i64,
}

/// The `book@Tms` view: full depth, conflated; see the module doc.
///
/// # Invariants
///
/// - Each side's `pending` is sorted like the book's storage, best level last
///   (bids ascending, asks descending), one entry per price, and
///   `start != last` in every entry: exactly the levels where the client's
///   book (at `seq`) and the full book differ. An entry whose level comes back
///   to its start is dropped, since the next change's `before` says the same
///   thing again; so the pending set never exceeds the two books' depth.
/// - `pending_seq`, when set, is > `seq`.
#[derive(Debug, Clone)]
pub struct Conflated {
    cadence: Cadence,
    /// The seq of the channel's last message (emission or snapshot).
    seq: u64,
    /// The last delta merged since, if any.
    pending_seq: Option<u64>,
    bids: Vec<Pending>,
    asks: Vec<Pending>,
    updates: Vec<pb::LevelUpdate>,
}

impl Conflated {
    /// The view of a book at `seq`, created at `now_ns`.
    pub fn new(interval: Interval, seq: u64, now_ns: u64) -> Conflated {
        Conflated {
            cadence: Cadence::new(interval, now_ns),
            seq,
            pending_seq: None,
            bids: Vec::new(),
            asks: Vec::new(),
            updates: Vec::new(),
        }
    }

    /// The book was replaced (a feed snapshot at `seq`, sent at `now_ns` to
    /// this channel's subscribers as the variant's snapshot): nothing pending.
    pub fn reset(&mut self, seq: u64, now_ns: u64) {
        self.seq = seq;
        self.pending_seq = None;
        self.bids.clear();
        self.asks.clear();
        self.cadence.emitted(now_ns);
    }

    /// Merges the delta `seq` (its `changes` captured before it was applied).
    /// O(log P) per change for P pending levels, plus the shift of an insert
    /// or removal (small near the touch, where activity is).
    pub fn handle_delta(&mut self, seq: u64, changes: &LevelChanges) {
        debug_assert!(seq > self.pending_seq.unwrap_or(self.seq));
        self.pending_seq = Some(seq);
        for c in changes.iter() {
            let pending = match c.side {
                Side::Bid => &mut self.bids,
                Side::Ask => &mut self.asks,
            };
            match search(c.side, pending, c.price) {
                Ok(i) if pending[i].start == c.after => {
                    pending.remove(i);
                }
                Ok(i) => pending[i].last = c.after,
                Err(i) => pending.insert(
                    i,
                    Pending {
                        price: c.price,
                        start: c.before,
                        last: c.after,
                    },
                ),
            }
        }
        debug_assert!(self.invariants_hold());
    }

    /// When the next emission is due, if a delta is waiting for one.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending_seq.map(|_| self.cadence.next_due_ns())
    }

    /// At or after the due time: the merged delta, if the interval changed
    /// the book. `book` is the full book now (after the last merged delta),
    /// for the checksum.
    pub fn poll_emit(&mut self, now_ns: u64, book: &OrderBook) -> Option<ViewDelta<'_>> {
        if !self.cadence.is_due(now_ns) {
            return None;
        }
        let seq = self.pending_seq.take()?;
        self.updates.clear();
        for (side, pending) in [(Side::Bid, &mut self.bids), (Side::Ask, &mut self.asks)] {
            let pb_side = side.to_pb() as i32;
            // Best first: the storage order reversed.
            self.updates
                .extend(pending.iter().rev().map(|p| pb::LevelUpdate {
                    side: pb_side,
                    price: p.price,
                    size: p.last,
                }));
            pending.clear();
        }
        if self.updates.is_empty() {
            // Deltas, but no net change: nothing goes out, the window stays open.
            return None;
        }
        let prev_seq = self.seq;
        self.seq = seq;
        self.cadence.emitted(now_ns);
        Some(ViewDelta {
            seq,
            prev_seq,
            updates: &self.updates,
            checksum: book.checksum(),
        })
    }

    /// The seq of the channel's last message: a new subscriber's snapshot's.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn cadence(&self) -> &Cadence {
        &self.cadence
    }

    /// Levels that differ between the client's book and the full book.
    pub fn pending_levels(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    /// The `book@Tms` snapshot: the client's book at [`Conflated::seq`],
    /// rebuilt from the full book `book` (now) with every pending level put
    /// back to its size at the last emission. O(L + P).
    pub fn snapshot(&self, book: &OrderBook) -> ViewSnapshot {
        let bids = self.client_side(Side::Bid, book);
        let asks = self.client_side(Side::Ask, book);
        let checksum = checksum_levels(bids.iter().copied(), asks.iter().copied());
        ViewSnapshot {
            seq: self.seq,
            bids,
            asks,
            checksum,
        }
    }

    /// One side of the client's book, best first.
    fn client_side(&self, side: Side, book: &OrderBook) -> Vec<pb::Level> {
        let pending = match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        };
        let mut out = Vec::with_capacity(book.depth(side) + pending.len());
        let mut levels = book.levels(side).peekable();
        let mut pend = pending.iter().rev().peekable();
        loop {
            match (levels.peek(), pend.peek()) {
                (None, None) => break,
                (Some(l), Some(p)) if l.price == p.price => {
                    if p.start > 0 {
                        out.push(pb::Level {
                            price: p.price,
                            size: p.start,
                        });
                    }
                    levels.next();
                    pend.next();
                }
                (Some(l), Some(p)) if side.is_better(p.price, l.price) => {
                    if p.start > 0 {
                        out.push(pb::Level {
                            price: p.price,
                            size: p.start,
                        });
                    }
                    pend.next();
                }
                (Some(&l), _) => {
                    out.push(l);
                    levels.next();
                }
                (None, Some(p)) => {
                    if p.start > 0 {
                        out.push(pb::Level {
                            price: p.price,
                            size: p.start,
                        });
                    }
                    pend.next();
                }
            }
        }
        out
    }

    fn invariants_hold(&self) -> bool {
        let side_ok = |side: Side, pending: &[Pending]| {
            pending.iter().all(|p| p.start != p.last)
                && pending
                    .windows(2)
                    .all(|w| side.is_better(w[1].price, w[0].price))
        };
        side_ok(Side::Bid, &self.bids)
            && side_ok(Side::Ask, &self.asks)
            && self.pending_seq.is_none_or(|s| s > self.seq)
    }
}

/// Where `price` is in a side's pending levels (storage order, best last).
fn search(side: Side, pending: &[Pending], price: i64) -> Result<usize, usize> {
    match side {
        Side::Bid => pending.binary_search_by(|p| p.price.cmp(&price)),
        Side::Ask => pending.binary_search_by(|p| price.cmp(&p.price)),
    }
}

/// The `book.N@Tms` view: the top N, conflated; see the module doc.
#[derive(Debug, Clone)]
pub struct ConflatedTopN {
    cadence: Cadence,
    /// The client's top-N book at the last emission.
    top: TopN,
    /// The last delta since the last emission, if any.
    pending_seq: Option<u64>,
}

impl ConflatedTopN {
    /// The view of `book` at `seq`, created at `now_ns`.
    pub fn new(
        depth: Depth,
        interval: Interval,
        seq: u64,
        book: &OrderBook,
        now_ns: u64,
    ) -> ConflatedTopN {
        ConflatedTopN {
            cadence: Cadence::new(interval, now_ns),
            top: TopN::new(depth, seq, book),
            pending_seq: None,
        }
    }

    /// The book was replaced (a feed snapshot at `seq`, sent at `now_ns`).
    pub fn reset(&mut self, seq: u64, book: &OrderBook, now_ns: u64) {
        self.top.reset(seq, book);
        self.pending_seq = None;
        self.cadence.emitted(now_ns);
    }

    /// The full book accepted the delta `seq`. O(1): the work is at emission.
    pub fn handle_delta(&mut self, seq: u64) {
        debug_assert!(seq > self.pending_seq.unwrap_or(self.top.seq()));
        self.pending_seq = Some(seq);
    }

    /// When the next emission is due, if a delta is waiting for one.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending_seq.map(|_| self.cadence.next_due_ns())
    }

    /// At or after the due time: the change of the top N since the last
    /// emission, if any. `book` is the full book now.
    pub fn poll_emit(&mut self, now_ns: u64, book: &OrderBook) -> Option<ViewDelta<'_>> {
        if !self.cadence.is_due(now_ns) {
            return None;
        }
        let seq = self.pending_seq.take()?;
        let delta = self.top.refresh(seq, book);
        if delta.is_some() {
            self.cadence.emitted(now_ns);
        }
        delta
    }

    /// The seq of the channel's last message: a new subscriber's snapshot's.
    pub fn seq(&self) -> u64 {
        self.top.seq()
    }

    pub fn cadence(&self) -> &Cadence {
        &self.cadence
    }

    /// The client's top-N book at the last emission.
    pub fn top(&self) -> &TopN {
        &self.top
    }

    /// The `book.N@Tms` snapshot: the client's top N at [`ConflatedTopN::seq`].
    pub fn snapshot(&self) -> ViewSnapshot {
        self.top.snapshot()
    }
}
