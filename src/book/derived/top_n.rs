//! [`TopN`]: the `book.N` view of one symbol's book (PROTOCOL §9), the top
//! N levels per side as a client of that channel holds them.
//!
//! One instance per (symbol, N) that someone holds, owned by the market
//! thread beside the book. After each delta the full book accepted, it says
//! what the `book.N` delta is: the levels of the client's top-N book that
//! changed, including the removal of a level that falls out of the top N and
//! the insertion, with its full size, of one that enters it; nothing when the
//! top N did not change. Also the `book.N` snapshot and its checksum (§5 on
//! the top min(N, 10) levels).
//!
//! Never does I/O, reads a clock or panics; allocation-free once warm.
//!
//! # Cost per delta
//!
//! O(U) to see whether any of the delta's U level updates is within the
//! client's top N (an update strictly worse than the N-th level cannot move
//! the top N), and only for a side where one is: one O(N) walk of the book's
//! top N against the held one, and the §5 checksum of the N-level book when
//! it changed. The book itself is never copied, and the view needs nothing
//! captured before the delta (no [`LevelChanges`](super::LevelChanges)).
//! `benches/derived.rs` measures it on a 1,000-level book.

use crate::wire::pb;

use super::super::book::{OrderBook, Side};
use super::super::checksum::checksum_levels;
use super::{Depth, ViewDelta, ViewSnapshot};

/// The `book.N` view; see the module doc.
///
/// # Invariants
///
/// - `bids` and `asks` hold at most `depth` levels each, best first, sizes > 0:
///   the client's book at `seq`. When the view is fed every delta
///   ([`TopN::handle_delta`]), that is the full book's top N after the last
///   delta fed.
/// - `checksum` is §5's checksum of `bids` and `asks`.
#[derive(Debug, Clone)]
pub struct TopN {
    depth: Depth,
    bids: Vec<pb::Level>,
    asks: Vec<pb::Level>,
    /// The seq of the last message of this channel (snapshot or delta).
    seq: u64,
    checksum: u32,
    /// The last delta's updates, handed out as a slice.
    updates: Vec<pb::LevelUpdate>,
}

impl TopN {
    /// The view of `book` at `seq` (the book's current seq): its snapshot is
    /// the book's top `depth` levels.
    pub fn new(depth: Depth, seq: u64, book: &OrderBook) -> TopN {
        let mut view = TopN {
            depth,
            bids: Vec::with_capacity(depth.get()),
            asks: Vec::with_capacity(depth.get()),
            seq,
            checksum: 0,
            updates: Vec::new(),
        };
        view.reset(seq, book);
        view
    }

    /// The book was replaced (a feed snapshot at `seq`): the view restarts
    /// from its top N; the channel's next message is a snapshot.
    pub fn reset(&mut self, seq: u64, book: &OrderBook) {
        let n = self.depth.get();
        self.bids.clear();
        self.bids.extend(book.top(Side::Bid, n));
        self.asks.clear();
        self.asks.extend(book.top(Side::Ask, n));
        self.seq = seq;
        self.updates.clear();
        self.checksum = checksum_levels(self.bids.iter().copied(), self.asks.iter().copied());
        debug_assert!(self.invariants_hold());
    }

    /// The full book accepted the delta `seq` with these level `updates`;
    /// `book_after` is the book after it. Returns the `book.N` delta, or
    /// `None` when the top N did not change.
    pub fn handle_delta(
        &mut self,
        seq: u64,
        updates: &[pb::LevelUpdate],
        book_after: &OrderBook,
    ) -> Option<ViewDelta<'_>> {
        debug_assert!(seq > self.seq, "deltas after the view's seq");
        self.updates.clear();
        let [bids, asks] = self.touched(updates);
        if bids {
            self.diff_side(Side::Bid, book_after);
        }
        if asks {
            self.diff_side(Side::Ask, book_after);
        }
        self.finish(seq)
    }

    /// Brings the client's book to `book`'s top N at `seq`, whatever happened
    /// since the last message: the `book.N@Tms` emission. Returns the delta,
    /// or `None` when the top N is the same. O(N).
    pub fn refresh(&mut self, seq: u64, book: &OrderBook) -> Option<ViewDelta<'_>> {
        self.updates.clear();
        self.diff_side(Side::Bid, book);
        self.diff_side(Side::Ask, book);
        self.finish(seq)
    }

    fn finish(&mut self, seq: u64) -> Option<ViewDelta<'_>> {
        if self.updates.is_empty() {
            return None;
        }
        let prev_seq = self.seq;
        self.seq = seq;
        self.checksum = checksum_levels(self.bids.iter().copied(), self.asks.iter().copied());
        debug_assert!(self.invariants_hold());
        Some(ViewDelta {
            seq,
            prev_seq,
            updates: &self.updates,
            checksum: self.checksum,
        })
    }

    /// Which sides, `[bids, asks]`, `updates` may have changed within the
    /// top N.
    fn touched(&self, updates: &[pb::LevelUpdate]) -> [bool; 2] {
        let mut touched = [false; 2];
        for u in updates {
            let Some(side) = Side::from_pb(u.side) else {
                // Never in a delta the book accepted; diffing both sides is
                // right whatever happened.
                return [true, true];
            };
            let i = match side {
                Side::Bid => 0,
                Side::Ask => 1,
            };
            touched[i] = touched[i] || self.may_move(side, u.price);
        }
        touched
    }

    /// Whether a change at `price` can move `side`'s top N.
    fn may_move(&self, side: Side, price: i64) -> bool {
        let held = self.levels(side);
        // Fewer than N held: the view is that whole side.
        if held.len() < self.depth.get() {
            return true;
        }
        // N held: the N levels at or better than the worst held one stay the
        // top N unless one of them changes.
        held.last()
            .is_none_or(|worst| !side.is_better(worst.price, price))
    }

    /// Diffs the held side against `book`'s top N, appending the updates
    /// (best first) and replacing the held side.
    fn diff_side(&mut self, side: Side, book: &OrderBook) {
        let held = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        let pb_side = side.to_pb() as i32;
        let mut new = book.top(side, self.depth.get()).peekable();
        let mut i = 0;
        let out = &mut self.updates;
        let mut push = |price: i64, size: i64| {
            out.push(pb::LevelUpdate {
                side: pb_side,
                price,
                size,
            })
        };
        let mut changed = false;
        loop {
            match (held.get(i), new.peek()) {
                (None, None) => break,
                (Some(h), Some(n)) if h.price == n.price => {
                    if h.size != n.size {
                        push(n.price, n.size);
                        changed = true;
                    }
                    i += 1;
                    new.next();
                }
                (Some(h), Some(n)) if side.is_better(h.price, n.price) => {
                    push(h.price, 0);
                    changed = true;
                    i += 1;
                }
                (None, Some(n)) | (Some(_), Some(n)) => {
                    push(n.price, n.size);
                    changed = true;
                    new.next();
                }
                (Some(h), None) => {
                    push(h.price, 0);
                    changed = true;
                    i += 1;
                }
            }
        }
        if changed {
            held.clear();
            held.extend(book.top(side, self.depth.get()));
        }
    }

    /// The levels of `side` the client holds, best first.
    pub fn levels(&self, side: Side) -> &[pb::Level] {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    /// N.
    pub fn depth(&self) -> Depth {
        self.depth
    }

    /// The seq of the channel's last message: what a new subscriber's
    /// snapshot carries (the next delta's `prev_seq`).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// §5's checksum of the client's book.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// The `book.N` snapshot: the held levels at [`TopN::seq`].
    pub fn snapshot(&self) -> ViewSnapshot {
        ViewSnapshot {
            seq: self.seq,
            bids: self.bids.clone(),
            asks: self.asks.clone(),
            checksum: self.checksum,
        }
    }

    fn invariants_hold(&self) -> bool {
        let n = self.depth.get();
        let side_ok = |side: Side, levels: &[pb::Level]| {
            levels.len() <= n
                && levels.iter().all(|l| l.size > 0)
                && levels
                    .windows(2)
                    .all(|w| side.is_better(w[0].price, w[1].price))
        };
        side_ok(Side::Bid, &self.bids)
            && side_ok(Side::Ask, &self.asks)
            && self.checksum
                == checksum_levels(self.bids.iter().copied(), self.asks.iter().copied())
    }
}
