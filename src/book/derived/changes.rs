//! [`LevelChanges`]: the net effect of one delta on each level it touches,
//! with the level's size before and after, captured from the book *before*
//! the delta is applied.
//!
//! The full-depth conflated view needs the size a level had before a delta
//! (it leaves out a level that was absent when its interval started and is
//! absent at its end), and the full book only holds the size after. So,
//! when a symbol has such a view, the market thread captures the changes
//! once per delta, before
//! [`Market::handle_delta`](crate::book::market::Market::handle_delta)
//! applies it, and hands the same [`LevelChanges`] to every view of the
//! symbol once the market has accepted the delta (a rejected delta's changes
//! are simply dropped). Capturing changes nothing.
//!
//! Run by the market thread. Never does I/O, never panics; allocation-free
//! once its buffer has grown to the largest delta seen.

use crate::wire::pb;

use super::super::book::{OrderBook, Side};

/// One level's net change over a delta. Sizes are absolute; 0 means absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelChange {
    pub side: Side,
    pub price: i64,
    /// The size before the delta (0: the book did not hold the level).
    pub before: i64,
    /// The size after the delta (0: removed, or never there).
    pub after: i64,
}

/// The level changes of one delta; see the module doc.
///
/// # Invariants
///
/// - Bids first, then asks; within a side, prices strictly increasing (one
///   entry per level).
/// - `before != after` for every entry (an update to the size a level already
///   had, or the removal of an absent level, is no change), both ≥ 0.
#[derive(Debug, Clone, Default)]
pub struct LevelChanges {
    changes: Vec<LevelChange>,
    /// What it was captured from: see [`LevelChanges::is_capture_of`].
    source: Fingerprint,
}

/// The number of updates and a hash of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    hash: u64,
}

impl Default for Fingerprint {
    /// That of no update.
    fn default() -> Fingerprint {
        Fingerprint::of(&[])
    }
}

impl Fingerprint {
    /// FNV-1a over each update's fields: enough to catch changes handed to a
    /// view with another delta (a wiring bug), not an adversary.
    fn of(updates: &[pb::LevelUpdate]) -> Fingerprint {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for u in updates {
            for word in [u.side as u64, u.price as u64, u.size as u64] {
                hash = (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        Fingerprint {
            len: updates.len(),
            hash,
        }
    }
}

impl LevelChanges {
    pub fn new() -> LevelChanges {
        LevelChanges::default()
    }

    /// Replaces the contents with the net changes that `updates`, applied in
    /// order, make to `book_before`: per level the last size wins (sizes are
    /// absolute). Updates with an unknown side or a negative size are skipped
    /// (the market rejects such a delta whole, and then these changes are
    /// not used).
    ///
    /// Cost: O(U log U) to sort U updates, O(U log L) to look up their sizes
    /// on sides of L levels.
    pub fn capture(&mut self, book_before: &OrderBook, updates: &[pb::LevelUpdate]) {
        self.source = Fingerprint::of(updates);
        let changes = &mut self.changes;
        changes.clear();
        changes.extend(updates.iter().filter_map(|u| {
            let side = Side::from_pb(u.side)?;
            (u.size >= 0).then_some(LevelChange {
                side,
                price: u.price,
                before: 0,
                after: u.size,
            })
        }));
        // Stable: within a level the updates stay in delta order, and the
        // dedup keeps the last one's size.
        changes.sort_by_key(|c| (side_rank(c.side), c.price));
        changes.dedup_by(|later, kept| {
            if later.side == kept.side && later.price == kept.price {
                kept.after = later.after;
                true
            } else {
                false
            }
        });
        changes.retain_mut(|c| {
            c.before = book_before.size_at(c.side, c.price).unwrap_or(0);
            c.before != c.after
        });
        debug_assert!(self.invariants_hold());
    }

    /// Empties the set, as captured from a delta of no update.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.source = Fingerprint::default();
    }

    /// Whether these are the changes last captured from `updates` (the same
    /// updates, in the same order): what a conflated view checks in debug
    /// builds before trusting them.
    pub fn is_capture_of(&self, updates: &[pb::LevelUpdate]) -> bool {
        self.source == Fingerprint::of(updates)
    }

    /// The changes, bids first, then asks, each by increasing price.
    pub fn as_slice(&self) -> &[LevelChange] {
        &self.changes
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &LevelChange> + '_ {
        self.changes.iter()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes of one side, by increasing price.
    pub fn side(&self, side: Side) -> &[LevelChange] {
        let split = self.changes.partition_point(|c| c.side == Side::Bid);
        match side {
            Side::Bid => &self.changes[..split],
            Side::Ask => &self.changes[split..],
        }
    }

    fn invariants_hold(&self) -> bool {
        self.changes
            .windows(2)
            .all(|w| (side_rank(w[0].side), w[0].price) < (side_rank(w[1].side), w[1].price))
            && self
                .changes
                .iter()
                .all(|c| c.before != c.after && c.before >= 0 && c.after >= 0)
    }
}

fn side_rank(side: Side) -> u8 {
    match side {
        Side::Bid => 0,
        Side::Ask => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(price: i64, size: i64) -> pb::Level {
        pb::Level { price, size }
    }

    fn up(side: Side, price: i64, size: i64) -> pb::LevelUpdate {
        pb::LevelUpdate {
            side: side.to_pb() as i32,
            price,
            size,
        }
    }

    fn ch(side: Side, price: i64, before: i64, after: i64) -> LevelChange {
        LevelChange {
            side,
            price,
            before,
            after,
        }
    }

    #[test]
    fn last_size_per_level_with_the_size_before() {
        let book = OrderBook::from_levels(&[lv(100, 5), lv(99, 6)], &[lv(101, 7)]).unwrap();
        let mut c = LevelChanges::new();
        c.capture(
            &book,
            &[
                up(Side::Ask, 103, 1),
                up(Side::Bid, 100, 9),
                up(Side::Bid, 98, 2),
                up(Side::Bid, 100, 4),
                up(Side::Ask, 101, 0),
                up(Side::Bid, 99, 6),  // the size it has: no change
                up(Side::Bid, 97, 0),  // removing an absent level: no change
                up(Side::Ask, 102, 3), // added ...
                up(Side::Ask, 102, 0), // ... and removed: no change
                up(Side::Bid, 1, 1),
            ],
        );
        assert_eq!(
            c.as_slice(),
            &[
                ch(Side::Bid, 1, 0, 1),
                ch(Side::Bid, 98, 0, 2),
                ch(Side::Bid, 100, 5, 4),
                ch(Side::Ask, 101, 7, 0),
                ch(Side::Ask, 103, 0, 1),
            ]
        );
        assert_eq!(c.side(Side::Bid).len(), 3);
        assert_eq!(c.side(Side::Ask).len(), 2);
    }

    #[test]
    fn invalid_updates_are_skipped_and_the_buffer_reused() {
        let book = OrderBook::from_levels(&[lv(100, 5)], &[]).unwrap();
        let mut c = LevelChanges::new();
        let bad_side = pb::LevelUpdate {
            side: 0,
            price: 100,
            size: 1,
        };
        c.capture(&book, &[bad_side, up(Side::Bid, 100, -1)]);
        assert!(c.is_empty());
        c.capture(&book, &[up(Side::Bid, 100, 0)]);
        assert_eq!(c.as_slice(), &[ch(Side::Bid, 100, 5, 0)]);
        assert_eq!(c.side(Side::Ask), &[]);
        c.clear();
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn knows_what_it_was_captured_from() {
        let book = OrderBook::from_levels(&[lv(100, 5)], &[]).unwrap();
        let mut c = LevelChanges::new();
        assert!(c.is_capture_of(&[]));
        let delta = [up(Side::Bid, 100, 0), up(Side::Bid, 99, 1)];
        c.capture(&book, &delta);
        assert!(c.is_capture_of(&delta));
        assert!(!c.is_capture_of(&delta[..1]));
        assert!(!c.is_capture_of(&[delta[1], delta[0]]));
        assert!(!c.is_capture_of(&[up(Side::Bid, 100, 0), up(Side::Bid, 99, 2)]));
        assert!(!c.is_capture_of(&[]));
        c.clear();
        assert!(c.is_capture_of(&[]));
    }
}
