//! The full-depth order book of one symbol: both sides, prices and sizes as
//! fixed-point `i64` mantissas (PROTOCOL §1).
//!
//! Owned by the ingest thread through [`Market`](super::market::Market), its
//! single writer; read by anyone holding a shared reference (snapshots,
//! checksums, the synthetic market, tests). It never does I/O, never reads a
//! clock and never panics on any input: an invalid update is reported as a
//! [`Change`] or a [`LevelError`] and leaves the book as it was.

// `book::book`: the module map names the file; the type inside is `OrderBook`.
#![allow(clippy::module_inception)]

use crate::wire::pb;

use super::checksum;

/// Most levels one side may ever hold, whatever the configuration: the
/// structural ceiling behind [`OrderBook::apply`]'s `SideFull`. The market
/// enforces a much lower, configured cap
/// ([`MarketLimits::max_book_levels`](crate::config::MarketLimits), default
/// 5 000) through [`OrderBook::apply_updates`].
pub const MAX_LEVELS_PER_SIDE: usize = 1 << 20;

/// Levels that [`OrderBook::apply_updates`] may shift with one-by-one inserts
/// and removes, beyond twice the book's depth, before it merges the rest of
/// the delta in one pass instead.
const SEQUENTIAL_MOVE_SLACK: usize = 64;

/// A side of the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Bid,
    Ask,
}

impl Side {
    /// The side of a protobuf `Side` field; `None` for `SIDE_UNSPECIFIED` or
    /// an unknown value.
    pub fn from_pb(side: i32) -> Option<Side> {
        match pb::Side::try_from(side) {
            Ok(pb::Side::Bid) => Some(Side::Bid),
            Ok(pb::Side::Ask) => Some(Side::Ask),
            _ => None,
        }
    }

    pub fn to_pb(self) -> pb::Side {
        match self {
            Side::Bid => pb::Side::Bid,
            Side::Ask => pb::Side::Ask,
        }
    }

    /// `true` when `a` is a strictly better price than `b` on this side.
    pub fn is_better(self, a: i64, b: i64) -> bool {
        match self {
            Side::Bid => a > b,
            Side::Ask => a < b,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

/// What [`OrderBook::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new level.
    Inserted,
    /// An existing level got a new size (possibly the same one).
    Updated,
    /// An existing level was removed (size 0).
    Removed,
    /// Size 0 for a price the book does not hold: nothing to do. Binance's and
    /// Coinbase's documented client algorithms ignore such removals too (the
    /// level may have been created and cancelled between two snapshots).
    RemovedAbsent,
    /// Negative size: refused, the book is unchanged.
    NegativeSize,
    /// An insert into a side already holding [`MAX_LEVELS_PER_SIDE`] levels:
    /// refused, the book is unchanged.
    SideFull,
}

/// Why a set of levels cannot form a book side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    #[error(
        "{side} level {index} is not strictly worse than the one before it (best first, no duplicates)"
    )]
    NotBestFirst { side: &'static str, index: usize },
    #[error("{side} level {index} has size {size}; sizes in a book are > 0")]
    NonPositiveSize {
        side: &'static str,
        index: usize,
        size: i64,
    },
    #[error("{side} has {depth} levels, over the limit of {MAX_LEVELS_PER_SIDE}")]
    TooDeep { side: &'static str, depth: usize },
}

/// Why a delta's level updates cannot be applied to a book; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("update {index} has side {side}; must be BID or ASK")]
    BadSide { index: usize, side: i32 },
    #[error("update {index} has negative size {size}")]
    NegativeSize { index: usize, size: i64 },
    #[error("the {side} side would hold {depth} levels, over the limit of {max}")]
    TooDeep {
        side: &'static str,
        depth: usize,
        max: usize,
    },
}

/// Reusable buffers for [`OrderBook::apply_updates`], so that its merge path
/// allocates only until they have grown to the largest delta and side seen.
#[derive(Debug, Default)]
pub struct UpdateScratch {
    updates: Vec<pb::LevelUpdate>,
    levels: Vec<pb::Level>,
}

/// Checks that `levels` (best first) can be one side of a book: prices
/// strictly worse one after the other, sizes > 0, at most
/// [`MAX_LEVELS_PER_SIDE`] levels.
pub fn validate_side(side: Side, levels: &[pb::Level]) -> Result<(), LevelError> {
    let name = side.label();
    if levels.len() > MAX_LEVELS_PER_SIDE {
        return Err(LevelError::TooDeep {
            side: name,
            depth: levels.len(),
        });
    }
    let mut prev: Option<i64> = None;
    for (index, l) in levels.iter().enumerate() {
        if l.size <= 0 {
            return Err(LevelError::NonPositiveSize {
                side: name,
                index,
                size: l.size,
            });
        }
        if let Some(p) = prev
            && !side.is_better(p, l.price)
        {
            return Err(LevelError::NotBestFirst { side: name, index });
        }
        prev = Some(l.price);
    }
    Ok(())
}

/// A full-depth order book.
///
/// Each side is a `Vec<pb::Level>` sorted so that its **best level is last**:
/// bids ascending by price, asks descending. Why this and not a `BTreeMap`:
/// nearly all activity is within a few levels of the touch, so inserting or
/// removing there moves only the few elements after it (a short `memmove`),
/// the top-N walk for the checksum reads the last 10 contiguous elements, and a
/// binary search over a 50-level side is 6 comparisons in one or two cache
/// lines, against a pointer chase per node and an allocation per insert for a
/// tree. Deep-book changes cost O(depth) moves of 16 bytes, cheap at the
/// depths feeds publish.
///
/// # Invariants
///
/// - `bids` is sorted by strictly increasing price, `asks` by strictly
///   decreasing price: the best level of each side is its last element, and
///   no price appears twice on a side.
/// - Every size is > 0.
/// - Each side holds at most [`MAX_LEVELS_PER_SIDE`] levels.
///
/// The book may be crossed (best bid ≥ best ask): it mirrors what the feed
/// sent, and feeds do publish transiently crossed books.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderBook {
    /// Ascending by price: the best (highest) bid is last.
    bids: Vec<pb::Level>,
    /// Descending by price: the best (lowest) ask is last.
    asks: Vec<pb::Level>,
}

impl OrderBook {
    pub const fn new() -> OrderBook {
        OrderBook {
            bids: Vec::new(),
            asks: Vec::new(),
        }
    }

    /// A book holding `bids` and `asks`, each best first (the snapshot order of
    /// PROTOCOL §2).
    pub fn from_levels(bids: &[pb::Level], asks: &[pb::Level]) -> Result<OrderBook, LevelError> {
        let mut book = OrderBook::new();
        book.replace_from_levels(bids, asks)?;
        Ok(book)
    }

    /// Replaces the whole book with `bids` and `asks`, each best first. On an
    /// error (see [`validate_side`]) the book is unchanged. Reuses the
    /// book's allocations.
    pub fn replace_from_levels(
        &mut self,
        bids: &[pb::Level],
        asks: &[pb::Level],
    ) -> Result<(), LevelError> {
        validate_side(Side::Bid, bids)?;
        validate_side(Side::Ask, asks)?;
        self.bids.clear();
        self.bids.extend(bids.iter().rev().copied());
        self.asks.clear();
        self.asks.extend(asks.iter().rev().copied());
        debug_assert!(self.invariants_hold());
        Ok(())
    }

    /// Empties both sides.
    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    fn side_vec(&self, side: Side) -> &Vec<pb::Level> {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    /// Where `price` is in the side's storage order: `Ok(i)` if present,
    /// `Err(i)` for the insertion point.
    fn search(side: Side, levels: &[pb::Level], price: i64) -> Result<usize, usize> {
        match side {
            Side::Bid => levels.binary_search_by(|l| l.price.cmp(&price)),
            Side::Ask => levels.binary_search_by(|l| price.cmp(&l.price)),
        }
    }

    /// Sets the level at `price` to the absolute `size`; size 0 removes it.
    /// Removing a price the book does not hold is a no-op
    /// ([`Change::RemovedAbsent`]); a negative size, or an insert into a full
    /// side, is refused and leaves the book unchanged.
    pub fn apply(&mut self, side: Side, price: i64, size: i64) -> Change {
        if size < 0 {
            return Change::NegativeSize;
        }
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        match (Self::search(side, levels, price), size) {
            (Ok(i), 0) => {
                levels.remove(i);
                Change::Removed
            }
            (Ok(i), _) => {
                debug_assert!(size > 0);
                levels[i].size = size;
                Change::Updated
            }
            (Err(_), 0) => Change::RemovedAbsent,
            (Err(_), _) if levels.len() >= MAX_LEVELS_PER_SIDE => Change::SideFull,
            (Err(i), _) => {
                levels.insert(i, pb::Level { price, size });
                // The invariants around the new level (the rest of the side is
                // untouched by an insert).
                debug_assert!(i == 0 || side.is_better(price, levels[i - 1].price));
                debug_assert!(i + 1 == levels.len() || side.is_better(levels[i + 1].price, price));
                Change::Inserted
            }
        }
    }

    /// Applies a delta's `updates` in order (each sets the absolute size of a
    /// level; 0 removes it), all or nothing: an update with an unknown side or
    /// a negative size, or a result with more than `max_levels_per_side`
    /// levels on a side (counted exactly, after the whole delta), is an error
    /// and the book is unchanged.
    ///
    /// # Cost
    ///
    /// O(U log L) searches for U updates on sides of L levels, plus at most
    /// 2·L + 64 levels shifted one by one, plus, past that, one merge of the
    /// rest: O(U log U) to sort it and one pass over each side. Updates near
    /// the touch (the normal case) shift a few levels each and never reach the
    /// merge; a delta of deep inserts and removes, each shifting a whole side,
    /// switches to the merge after two or three of them. Without the merge, a
    /// 10 000-update delta of deep moves on a 5 000-level side shifted 50 M
    /// levels (800 MB of `memmove`).
    ///
    /// Measured at the default caps (5 000 levels a side, 10 000 updates;
    /// release build on one shared core, `cargo test --release --lib
    /// book::market::tests::worst_case_costs -- --ignored --nocapture`, two
    /// runs): the delta above applies in 0.45–0.47 ms (26–50 ms one update at
    /// a time); the costliest, 10 000 distinct prices rewriting a full side
    /// (two sorts and a merge), in 1.7–1.8 ms. What the merge cannot remove is
    /// one deep insert or remove per delta: a one-update delta that shifts a
    /// full side costs 2.4–2.9 µs against 0.2–0.45 µs at the touch, about
    /// 130–160 ms per MiB of such 19-byte deltas.
    pub fn apply_updates(
        &mut self,
        updates: &[pb::LevelUpdate],
        max_levels_per_side: usize,
        scratch: &mut UpdateScratch,
    ) -> Result<(), UpdateError> {
        let max = max_levels_per_side.min(MAX_LEVELS_PER_SIDE);
        // Inserts per side, counting repeats: an upper bound on the growth.
        let mut inserts = [0usize; 2];
        for (index, u) in updates.iter().enumerate() {
            let Some(side) = Side::from_pb(u.side) else {
                return Err(UpdateError::BadSide {
                    index,
                    side: u.side,
                });
            };
            if u.size < 0 {
                return Err(UpdateError::NegativeSize {
                    index,
                    size: u.size,
                });
            }
            if u.size > 0 {
                inserts[side_index(side)] += 1;
            }
        }
        for side in [Side::Bid, Side::Ask] {
            let depth = self.depth(side);
            if depth.saturating_add(inserts[side_index(side)]) <= max {
                continue;
            }
            let after = self.depth_after(side, updates, scratch);
            if after > max {
                return Err(UpdateError::TooDeep {
                    side: side.label(),
                    depth: after,
                    max,
                });
            }
        }
        // One by one while that stays cheap (and no insert could hit the
        // structural ceiling on the way); then merge what is left.
        let one_by_one = [Side::Bid, Side::Ask]
            .iter()
            .all(|&s| self.depth(s).saturating_add(inserts[side_index(s)]) <= MAX_LEVELS_PER_SIDE);
        let budget = 2 * (self.bids.len() + self.asks.len()) + SEQUENTIAL_MOVE_SLACK;
        let mut moved = 0usize;
        let mut done = 0;
        if one_by_one {
            while done < updates.len() && moved <= budget {
                let u = &updates[done];
                // Validated above: the side is known, the size >= 0.
                if let Some(side) = Side::from_pb(u.side) {
                    moved += self.set_level(side, u.price, u.size);
                }
                done += 1;
            }
        }
        if done < updates.len() {
            self.merge(&updates[done..], scratch);
        }
        debug_assert!(self.bids.len() <= max && self.asks.len() <= max);
        debug_assert!(self.invariants_hold());
        Ok(())
    }

    /// The depth of `side` after `updates` (their last size per price wins).
    fn depth_after(
        &self,
        side: Side,
        updates: &[pb::LevelUpdate],
        scratch: &mut UpdateScratch,
    ) -> usize {
        let ups = &mut scratch.updates;
        ups.clear();
        ups.extend(updates.iter().filter(|u| u.side == side.to_pb() as i32));
        last_per_price(ups);
        let levels = self.side_vec(side);
        let mut depth = levels.len();
        for u in ups.iter() {
            match (Self::search(side, levels, u.price).is_ok(), u.size > 0) {
                (false, true) => depth += 1,
                (true, false) => depth -= 1,
                _ => {}
            }
        }
        depth
    }

    /// Sets one level (validated side, size >= 0, room on the side); returns
    /// how many levels it shifted.
    fn set_level(&mut self, side: Side, price: i64, size: i64) -> usize {
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        match (Self::search(side, levels, price), size) {
            (Ok(i), 0) => {
                levels.remove(i);
                levels.len() - i
            }
            (Ok(i), _) => {
                levels[i].size = size;
                0
            }
            (Err(_), 0) => 0,
            (Err(i), _) => {
                levels.insert(i, pb::Level { price, size });
                levels.len() - 1 - i
            }
        }
    }

    /// Applies `updates` (validated) as one merge per side: sorted by price,
    /// the last size per price wins (sizes are absolute, so that is what
    /// applying them in order gives), then each side is rebuilt in one pass.
    fn merge(&mut self, updates: &[pb::LevelUpdate], scratch: &mut UpdateScratch) {
        for side in [Side::Bid, Side::Ask] {
            let ups = &mut scratch.updates;
            ups.clear();
            ups.extend(updates.iter().filter(|u| u.side == side.to_pb() as i32));
            if ups.is_empty() {
                continue;
            }
            last_per_price(ups);
            let levels = match side {
                Side::Bid => &mut self.bids,
                Side::Ask => &mut self.asks,
            };
            let new = &mut scratch.levels;
            new.clear();
            new.reserve(levels.len() + ups.len());
            let mut i = 0;
            // Storage order: bids ascending, asks descending (best last).
            let mut step = |u: &pb::LevelUpdate| {
                while i < levels.len() && side.is_better(u.price, levels[i].price) {
                    new.push(levels[i]);
                    i += 1;
                }
                if i < levels.len() && levels[i].price == u.price {
                    i += 1;
                }
                if u.size > 0 {
                    new.push(pb::Level {
                        price: u.price,
                        size: u.size,
                    });
                }
            };
            match side {
                Side::Bid => ups.iter().for_each(&mut step),
                Side::Ask => ups.iter().rev().for_each(&mut step),
            }
            new.extend_from_slice(&levels[i..]);
            std::mem::swap(levels, new);
        }
    }

    /// The levels of `side`, best first.
    pub fn levels(
        &self,
        side: Side,
    ) -> impl DoubleEndedIterator<Item = pb::Level> + ExactSizeIterator + '_ {
        self.side_vec(side).iter().rev().copied()
    }

    /// Bids, best (highest) first.
    pub fn bids(&self) -> impl DoubleEndedIterator<Item = pb::Level> + ExactSizeIterator + '_ {
        self.levels(Side::Bid)
    }

    /// Asks, best (lowest) first.
    pub fn asks(&self) -> impl DoubleEndedIterator<Item = pb::Level> + ExactSizeIterator + '_ {
        self.levels(Side::Ask)
    }

    /// The best `n` levels of `side` (fewer if the side is shallower), best
    /// first, as a slice-backed iterator.
    pub fn top(
        &self,
        side: Side,
        n: usize,
    ) -> impl DoubleEndedIterator<Item = pb::Level> + ExactSizeIterator + '_ {
        let v = self.side_vec(side);
        v[v.len().saturating_sub(n)..].iter().rev().copied()
    }

    /// The best level of `side`.
    pub fn best(&self, side: Side) -> Option<pb::Level> {
        self.side_vec(side).last().copied()
    }

    /// The level `i` places from the best of `side` (0 = best).
    pub fn nth(&self, side: Side, i: usize) -> Option<pb::Level> {
        let v = self.side_vec(side);
        let idx = v.len().checked_sub(1)?.checked_sub(i)?;
        v.get(idx).copied()
    }

    /// The size at `price` on `side`, if the book holds that level.
    pub fn size_at(&self, side: Side, price: i64) -> Option<i64> {
        let v = self.side_vec(side);
        Self::search(side, v, price).ok().map(|i| v[i].size)
    }

    /// Number of levels on `side`.
    pub fn depth(&self, side: Side) -> usize {
        self.side_vec(side).len()
    }

    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// The levels of `side`, best first, as a snapshot carries them.
    pub fn snapshot_levels(&self, side: Side) -> Vec<pb::Level> {
        self.levels(side).collect()
    }

    /// The checksum of PROTOCOL §5.
    pub fn checksum(&self) -> u32 {
        checksum::checksum(self)
    }

    /// `true` when both sides are strictly sorted with the best level last and
    /// every size is > 0 (the `# Invariants`). O(depth): for assertions.
    pub fn invariants_hold(&self) -> bool {
        fn side_ok(side: Side, levels: &[pb::Level]) -> bool {
            levels.len() <= MAX_LEVELS_PER_SIDE
                && levels.iter().all(|l| l.size > 0)
                && levels
                    .windows(2)
                    .all(|w| side.is_better(w[1].price, w[0].price))
        }
        side_ok(Side::Bid, &self.bids) && side_ok(Side::Ask, &self.asks)
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Bid => 0,
        Side::Ask => 1,
    }
}

/// Sorts one side's updates by price, keeping only the last of each price (a
/// stable sort keeps them in delta order within a price).
fn last_per_price(ups: &mut Vec<pb::LevelUpdate>) {
    ups.sort_by_key(|u| u.price);
    ups.dedup_by(|later, kept| {
        if later.price == kept.price {
            kept.size = later.size;
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(price: i64, size: i64) -> pb::Level {
        pb::Level { price, size }
    }

    fn prices(it: impl Iterator<Item = pb::Level>) -> Vec<i64> {
        it.map(|l| l.price).collect()
    }

    #[test]
    fn sides_iterate_best_first() {
        let mut b = OrderBook::new();
        for p in [100, 102, 99, 101] {
            assert_eq!(b.apply(Side::Bid, p, 1), Change::Inserted);
        }
        for p in [105, 103, 104, 110] {
            assert_eq!(b.apply(Side::Ask, p, 2), Change::Inserted);
        }
        assert_eq!(prices(b.bids()), vec![102, 101, 100, 99]);
        assert_eq!(prices(b.asks()), vec![103, 104, 105, 110]);
        assert_eq!(b.best(Side::Bid), Some(lv(102, 1)));
        assert_eq!(b.best(Side::Ask), Some(lv(103, 2)));
        assert_eq!(prices(b.top(Side::Bid, 2)), vec![102, 101]);
        assert_eq!(prices(b.top(Side::Ask, 10)), vec![103, 104, 105, 110]);
        assert_eq!(b.nth(Side::Bid, 3), Some(lv(99, 1)));
        assert_eq!(b.nth(Side::Bid, 4), None);
        assert_eq!(b.depth(Side::Bid), 4);
        assert_eq!(b.depth(Side::Ask), 4);
        assert!(b.invariants_hold());
    }

    #[test]
    fn negative_prices_sort_correctly() {
        let mut b = OrderBook::new();
        for p in [-5, 3, -100, 0] {
            b.apply(Side::Bid, p, 1);
            b.apply(Side::Ask, p + 1000, 1);
        }
        b.apply(Side::Ask, -2, 1);
        assert_eq!(prices(b.bids()), vec![3, 0, -5, -100]);
        assert_eq!(prices(b.asks()), vec![-2, 900, 995, 1000, 1003]);
    }

    #[test]
    fn update_and_remove_by_absolute_size() {
        let mut b = OrderBook::new();
        b.apply(Side::Bid, 100, 5);
        b.apply(Side::Bid, 99, 6);
        assert_eq!(b.apply(Side::Bid, 100, 7), Change::Updated);
        assert_eq!(b.size_at(Side::Bid, 100), Some(7));
        assert_eq!(b.apply(Side::Bid, 100, 0), Change::Removed);
        assert_eq!(b.size_at(Side::Bid, 100), None);
        assert_eq!(b.bids().collect::<Vec<_>>(), vec![lv(99, 6)]);
        // The same price on the other side is another level.
        assert_eq!(b.apply(Side::Ask, 99, 0), Change::RemovedAbsent);
        assert_eq!(b.depth(Side::Ask), 0);
    }

    #[test]
    fn removing_an_absent_level_is_a_no_op() {
        let mut b = OrderBook::from_levels(&[lv(10, 1), lv(8, 1)], &[lv(12, 1)]).unwrap();
        let before = b.clone();
        assert_eq!(b.apply(Side::Bid, 9, 0), Change::RemovedAbsent);
        assert_eq!(b.apply(Side::Ask, 11, 0), Change::RemovedAbsent);
        assert_eq!(b.apply(Side::Ask, 1_000, 0), Change::RemovedAbsent);
        assert_eq!(b, before);
    }

    #[test]
    fn negative_size_is_refused_and_changes_nothing() {
        let mut b = OrderBook::from_levels(&[lv(10, 1)], &[]).unwrap();
        let before = b.clone();
        assert_eq!(b.apply(Side::Bid, 10, -1), Change::NegativeSize);
        assert_eq!(b.apply(Side::Bid, 11, i64::MIN), Change::NegativeSize);
        assert_eq!(b, before);
    }

    #[test]
    fn replace_from_snapshot_levels_round_trips() {
        let bids = [lv(300, 1), lv(200, 2), lv(-100, 3)];
        let asks = [lv(301, 4), lv(400, 5)];
        let mut b = OrderBook::new();
        b.apply(Side::Bid, 250, 9);
        b.apply(Side::Ask, 1, 9);
        b.replace_from_levels(&bids, &asks).unwrap();
        assert_eq!(b.snapshot_levels(Side::Bid), bids.to_vec());
        assert_eq!(b.snapshot_levels(Side::Ask), asks.to_vec());
        assert_eq!(b.size_at(Side::Bid, 250), None);
        assert!(b.invariants_hold());
        b.replace_from_levels(&[], &[]).unwrap();
        assert!(b.is_empty());
    }

    #[test]
    fn replace_rejects_bad_levels_and_keeps_the_book() {
        let mut b = OrderBook::from_levels(&[lv(5, 1)], &[lv(6, 1)]).unwrap();
        let before = b.clone();
        // Bids not descending.
        assert_eq!(
            b.replace_from_levels(&[lv(1, 1), lv(2, 1)], &[]),
            Err(LevelError::NotBestFirst {
                side: "bid",
                index: 1
            })
        );
        // Duplicate ask price.
        assert_eq!(
            b.replace_from_levels(&[], &[lv(7, 1), lv(7, 2)]),
            Err(LevelError::NotBestFirst {
                side: "ask",
                index: 1
            })
        );
        // Asks not ascending.
        assert!(b.replace_from_levels(&[], &[lv(8, 1), lv(7, 2)]).is_err());
        // Zero size.
        assert_eq!(
            b.replace_from_levels(&[lv(1, 0)], &[]),
            Err(LevelError::NonPositiveSize {
                side: "bid",
                index: 0,
                size: 0
            })
        );
        assert_eq!(b, before);
    }

    #[test]
    fn side_from_pb() {
        assert_eq!(Side::from_pb(1), Some(Side::Bid));
        assert_eq!(Side::from_pb(2), Some(Side::Ask));
        assert_eq!(Side::from_pb(0), None);
        assert_eq!(Side::from_pb(3), None);
        assert_eq!(Side::from_pb(-1), None);
        assert_eq!(Side::Bid.to_pb() as i32, 1);
        assert_eq!(Side::Ask.to_pb() as i32, 2);
    }

    #[test]
    fn top_of_book_churn_keeps_order() {
        // Insert and remove at the touch, then deep, many times over.
        let mut b = OrderBook::new();
        for p in 0..50 {
            b.apply(Side::Bid, 1000 - p, 1);
            b.apply(Side::Ask, 1001 + p, 1);
        }
        for i in 0..200i64 {
            let p = 1000 + (i % 3);
            b.apply(Side::Bid, p, i % 2);
            b.apply(Side::Ask, 1001 - (i % 3) + 3, (i + 1) % 2);
            b.apply(Side::Bid, 900 + (i % 7), i % 5);
            assert!(b.invariants_hold());
        }
        let bids = prices(b.bids());
        let mut sorted = bids.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(bids, sorted);
    }

    fn up(side: Side, price: i64, size: i64) -> pb::LevelUpdate {
        pb::LevelUpdate {
            side: side.to_pb() as i32,
            price,
            size,
        }
    }

    /// The reference: [`OrderBook::apply`] one update after the other.
    fn one_by_one(book: &OrderBook, updates: &[pb::LevelUpdate]) -> OrderBook {
        let mut b = book.clone();
        for u in updates {
            b.apply(Side::from_pb(u.side).unwrap(), u.price, u.size);
        }
        b
    }

    fn ladder(depth: i64) -> OrderBook {
        let bids: Vec<_> = (0..depth).map(|i| lv(1_000 - i, 1 + i)).collect();
        let asks: Vec<_> = (0..depth).map(|i| lv(1_001 + i, 1 + i)).collect();
        OrderBook::from_levels(&bids, &asks).unwrap()
    }

    #[test]
    fn apply_updates_is_all_or_nothing() {
        let mut b = ladder(3);
        let before = b.clone();
        let mut scratch = UpdateScratch::default();
        let bad_side = [
            up(Side::Bid, 990, 1),
            pb::LevelUpdate {
                side: 0,
                price: 1,
                size: 1,
            },
        ];
        assert_eq!(
            b.apply_updates(&bad_side, 100, &mut scratch),
            Err(UpdateError::BadSide { index: 1, side: 0 })
        );
        let negative = [up(Side::Bid, 990, 1), up(Side::Ask, 2_000, -5)];
        assert_eq!(
            b.apply_updates(&negative, 100, &mut scratch),
            Err(UpdateError::NegativeSize { index: 1, size: -5 })
        );
        assert_eq!(b, before);
    }

    #[test]
    fn the_depth_cap_counts_the_result_exactly() {
        let mut scratch = UpdateScratch::default();
        // A side at the cap of 3: updating, removing-then-adding, and adding
        // then removing within one delta are fine.
        let mut b = ladder(3);
        let ok = [
            up(Side::Bid, 1_000, 9), // update in place
            up(Side::Bid, 998, 0),   // remove ...
            up(Side::Bid, 995, 4),   // ... and add: still 3
            up(Side::Bid, 990, 1),   // 4 for a moment ...
            up(Side::Bid, 990, 0),   // ... back to 3
            up(Side::Bid, 1_005, 0), // removing an absent level: a no-op
            up(Side::Ask, 1_001, 2), // the other side, in place
        ];
        let expect = one_by_one(&b, &ok);
        assert_eq!(b.apply_updates(&ok, 3, &mut scratch), Ok(()));
        assert_eq!(b, expect);
        assert_eq!(b.depth(Side::Bid), 3);
        // One level more than the cap: refused, the book unchanged.
        let before = b.clone();
        let grow = [
            up(Side::Ask, 1_001, 0),
            up(Side::Ask, 1_100, 1),
            up(Side::Ask, 1_101, 1),
        ];
        assert_eq!(
            b.apply_updates(&grow, 3, &mut scratch),
            Err(UpdateError::TooDeep {
                side: "ask",
                depth: 4,
                max: 3
            })
        );
        assert_eq!(b, before);
        // The same price twice counts once; its last size decides.
        let twice = [
            up(Side::Ask, 1_100, 1),
            up(Side::Ask, 1_100, 2),
            up(Side::Ask, 1_001, 0),
        ];
        assert_eq!(b.apply_updates(&twice, 3, &mut scratch), Ok(()));
        assert_eq!(b.size_at(Side::Ask, 1_100), Some(2));
        assert_eq!(b.depth(Side::Ask), 3);
    }

    #[test]
    fn deep_moves_give_the_same_book_as_one_by_one() {
        // Alternating inserts and removes of the deepest bid shift the whole
        // side each time: the budget (2 × 400 + 64) is spent after ~2 of them.
        let b = ladder(200);
        let updates: Vec<_> = (0..1_000)
            .map(|k| up(Side::Bid, 1, (k + 1) % 2))
            .chain((0..1_000).map(|k| up(Side::Ask, 5_000 + k % 7, k % 3)))
            .collect();
        let mut got = b.clone();
        got.apply_updates(&updates, 10_000, &mut UpdateScratch::default())
            .unwrap();
        assert_eq!(got, one_by_one(&b, &updates));
        assert!(got.invariants_hold());
    }

    #[test]
    fn merge_equals_one_by_one_on_mixed_updates() {
        let mut rng = crate::book::synth::Rng::new(5);
        let mut scratch = UpdateScratch::default();
        for round in 0..300 {
            let depth = rng.below(40) as i64;
            let book = ladder(depth);
            let n = rng.below(60) as usize;
            let updates: Vec<_> = (0..n)
                .map(|_| {
                    let side = if rng.below(2) == 0 {
                        Side::Bid
                    } else {
                        Side::Ask
                    };
                    // Prices inside, around and beyond both sides; many repeats.
                    let price = 950 + rng.below(100) as i64;
                    up(side, price, rng.below(3) as i64)
                })
                .collect();
            let expect = one_by_one(&book, &updates);
            let mut merged = book.clone();
            merged.merge(&updates, &mut scratch);
            assert_eq!(merged, expect, "round {round}");
            assert!(merged.invariants_hold());
            let mut applied = book.clone();
            applied
                .apply_updates(&updates, MAX_LEVELS_PER_SIDE, &mut scratch)
                .unwrap();
            assert_eq!(applied, expect, "round {round}");
        }
    }
}
