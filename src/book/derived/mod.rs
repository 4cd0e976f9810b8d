//! Derived book channels (PROTOCOL §9): the channel grammar ([`Channel`]),
//! the depth-limited view ([`TopN`], `book.N`) and the conflated views
//! ([`Conflated`], `book@Tms`; [`ConflatedTopN`], `book.N@Tms`), behind one
//! [`BookView`] per (symbol, channel) that someone holds.
//!
//! Owned and run by the thread that owns the books (the market thread:
//! ingest, or a node's backplane-fed ingest), which computes each derived
//! stream once and encodes it once (DESIGN "Derived channels"). Pure: no
//! I/O, no threads, no clock (time comes in as `now_ns`), never panics.
//!
//! # How the market thread drives them
//!
//! 1. For a delta of a symbol with a view that [`BookView::needs_changes`]
//!    (`book@Tms`): capture [`LevelChanges`] from the book *before* handing
//!    the delta to the market (a rejected delta's changes are dropped).
//! 2. Once the market accepted it with seq `S`: [`BookView::handle_delta`]`(S,
//!    &updates, &changes, book)` on each view; a `book.N` view answers with
//!    its delta at once, conflated ones merge it.
//! 3. Each loop turn (or at the earliest [`BookView::poll_timeout`]):
//!    [`BookView::poll_emit`]`(now, book)` on each conflated view.
//! 4. A feed snapshot replaced the book at seq `S`: [`BookView::reset`]; every
//!    subscriber of the variant gets [`BookView::snapshot`].
//! 5. A new subscriber (or a resync) gets [`BookView::snapshot`]: its `seq`
//!    is the channel's last message, so the next message's `prev_seq`
//!    matches it.
//! 6. While the book is stale (PROTOCOL §3 `feed_gap`, `feed_down`), its
//!    conflated views are not polled: their subscribers got the `Stale`,
//!    and the feed's next snapshot resets the views (step 4), so what was
//!    pending is never sent after the `Stale`.
//!
//! Every message a view yields carries `seq`, `prev_seq` (the channel's
//! previous message) and the §5 checksum of the client's book after it.

mod changes;
mod channel;
mod conflate;
mod top_n;

pub use changes::{LevelChange, LevelChanges};
pub use channel::{Channel, ChannelError, ChannelName, Depth, Interval, MAX_CHANNEL_NAME_BYTES};
pub use conflate::{Cadence, Conflated, ConflatedTopN};
pub use top_n::TopN;

use crate::wire::pb;

use super::book::OrderBook;

/// A delta of a derived channel, borrowed from the view that computed it
/// (encode it before touching the view again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewDelta<'a> {
    pub seq: u64,
    /// The seq of the channel's previous message for this symbol.
    pub prev_seq: u64,
    /// Absolute sizes, 0 removing the level; bids then asks, each best first,
    /// one update per level.
    pub updates: &'a [pb::LevelUpdate],
    /// §5's checksum of the client's book after this delta.
    pub checksum: u32,
}

/// A derived channel's snapshot: the client's book at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSnapshot {
    pub seq: u64,
    /// Best first.
    pub bids: Vec<pb::Level>,
    /// Best first.
    pub asks: Vec<pb::Level>,
    /// §5's checksum of these levels.
    pub checksum: u32,
}

/// One derived book channel of one symbol.
#[derive(Debug, Clone)]
pub enum BookView {
    /// `book.N`.
    TopN(TopN),
    /// `book@Tms`.
    Conflated(Conflated),
    /// `book.N@Tms`.
    ConflatedTopN(ConflatedTopN),
}

impl BookView {
    /// The view of `channel` for a book at `seq`, created at `now_ns`; `None`
    /// for plain `book` and `trades`, which are not derived.
    pub fn new(channel: Channel, seq: u64, book: &OrderBook, now_ns: u64) -> Option<BookView> {
        let Channel::Book { depth, interval } = channel else {
            return None;
        };
        Some(match (depth, interval) {
            (None, None) => return None,
            (Some(n), None) => BookView::TopN(TopN::new(n, seq, book)),
            (None, Some(t)) => BookView::Conflated(Conflated::new(t, seq, now_ns)),
            (Some(n), Some(t)) => {
                BookView::ConflatedTopN(ConflatedTopN::new(n, t, seq, book, now_ns))
            }
        })
    }

    /// The channel this view serves.
    pub fn channel(&self) -> Channel {
        match self {
            BookView::TopN(v) => Channel::Book {
                depth: Some(v.depth()),
                interval: None,
            },
            BookView::Conflated(v) => Channel::Book {
                depth: None,
                interval: Some(v.cadence().interval()),
            },
            BookView::ConflatedTopN(v) => Channel::Book {
                depth: Some(v.top().depth()),
                interval: Some(v.cadence().interval()),
            },
        }
    }

    /// Whether [`BookView::handle_delta`] needs the delta's [`LevelChanges`]
    /// captured before it was applied: only `book@Tms` does (the others
    /// ignore them, so a symbol without one need not capture).
    pub fn needs_changes(&self) -> bool {
        matches!(self, BookView::Conflated(_))
    }

    /// The full book accepted the delta `seq` of these level `updates`
    /// (`book_after` is the book now; `changes` were captured from `updates`
    /// before it was applied if [`BookView::needs_changes`], else ignored). A
    /// `book.N` view returns its delta, if the top N changed; conflated views
    /// merge it and return `None`.
    pub fn handle_delta(
        &mut self,
        seq: u64,
        updates: &[pb::LevelUpdate],
        changes: &LevelChanges,
        book_after: &OrderBook,
    ) -> Option<ViewDelta<'_>> {
        match self {
            BookView::TopN(v) => v.handle_delta(seq, updates, book_after),
            BookView::Conflated(v) => {
                debug_assert!(changes.is_capture_of(updates), "changes of another delta");
                v.handle_delta(seq, changes);
                None
            }
            BookView::ConflatedTopN(v) => {
                v.handle_delta(seq);
                None
            }
        }
    }

    /// When [`BookView::poll_emit`] has something to do; `None`: nothing
    /// waits (always for `book.N`).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self {
            BookView::TopN(_) => None,
            BookView::Conflated(v) => v.poll_timeout(),
            BookView::ConflatedTopN(v) => v.poll_timeout(),
        }
    }

    /// A conflated view's emission, if due and the interval changed the
    /// client's book; `book` is the full book now.
    pub fn poll_emit(&mut self, now_ns: u64, book: &OrderBook) -> Option<ViewDelta<'_>> {
        match self {
            BookView::TopN(_) => None,
            BookView::Conflated(v) => v.poll_emit(now_ns, book),
            BookView::ConflatedTopN(v) => v.poll_emit(now_ns, book),
        }
    }

    /// The book was replaced by a feed snapshot at `seq`, at `now_ns`.
    pub fn reset(&mut self, seq: u64, book: &OrderBook, now_ns: u64) {
        match self {
            BookView::TopN(v) => v.reset(seq, book),
            BookView::Conflated(v) => v.reset(seq, now_ns),
            BookView::ConflatedTopN(v) => v.reset(seq, book, now_ns),
        }
    }

    /// The seq of the channel's last message.
    pub fn seq(&self) -> u64 {
        match self {
            BookView::TopN(v) => v.seq(),
            BookView::Conflated(v) => v.seq(),
            BookView::ConflatedTopN(v) => v.seq(),
        }
    }

    /// The variant's snapshot for a new or resyncing subscriber; `book` is
    /// the full book now.
    pub fn snapshot(&self, book: &OrderBook) -> ViewSnapshot {
        match self {
            BookView::TopN(v) => v.snapshot(),
            BookView::Conflated(v) => v.snapshot(book),
            BookView::ConflatedTopN(v) => v.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests;
