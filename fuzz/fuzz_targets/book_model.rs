//! `book::book::OrderBook` against a naive model (one `BTreeMap` per side)
//! under arbitrary updates, removals, snapshots and clears.
//!
//! Invariants, after every operation:
//! - `apply` reports the change the model expects (inserted, updated,
//!   removed, removal of an absent level, negative size refused);
//! - `apply_updates` (a delta's updates, sequentially or by its merge)
//!   equals applying them one by one to the model, or refuses them as the
//!   model does (first bad side or negative size, then a side over the
//!   depth limit) and leaves the book unchanged;
//! - a snapshot is accepted exactly when each side is strictly best first
//!   with sizes > 0, and a refused one leaves the book unchanged;
//! - levels (best first), depth, best, nth, top-n, size_at and emptiness
//!   equal the model's, and `invariants_hold()`;
//! - the checksum equals CRC-32 of the model's top 10 bids then top 10 asks,
//!   price then size as i64 LE (PROTOCOL §5), computed here independently,
//!   and `checksum_levels` of the snapshot levels.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire::book::book::{
    Change, MAX_LEVELS_PER_SIDE, OrderBook, Side, UpdateError, UpdateScratch,
};
use tickwire::book::checksum::checksum_levels;
use tickwire::wire::pb;

#[derive(Arbitrary, Debug)]
enum Op {
    Apply {
        bid: bool,
        price: u8,
        size: i8,
    },
    /// A delta's updates, with the side's depth limit (255: the structural one).
    ApplyUpdates {
        updates: Vec<(u8, u8, i8)>,
        max: u8,
    },
    Snapshot {
        bids: Vec<(u8, u8)>,
        asks: Vec<(u8, u8)>,
    },
    Clear,
}

/// Small prices near zero, and the extremes of `i64`.
fn price(b: u8) -> i64 {
    match b {
        0 => i64::MIN,
        1 => i64::MIN + 1,
        254 => i64::MAX - 1,
        255 => i64::MAX,
        b => i64::from(b) - 128,
    }
}

fn size(s: i8) -> i64 {
    match s {
        i8::MAX => i64::MAX,
        i8::MIN => i64::MIN,
        s => i64::from(s),
    }
}

#[derive(Default, Clone)]
struct Model {
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
}

impl Model {
    fn side(&mut self, side: Side) -> &mut BTreeMap<i64, i64> {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    fn apply(&mut self, side: Side, price: i64, size: i64) -> Change {
        let levels = self.side(side);
        if size < 0 {
            Change::NegativeSize
        } else if size == 0 {
            match levels.remove(&price) {
                Some(_) => Change::Removed,
                None => Change::RemovedAbsent,
            }
        } else {
            match levels.insert(price, size) {
                Some(_) => Change::Updated,
                None => Change::Inserted,
            }
        }
    }

    /// What `OrderBook::apply_updates` must answer, and the model after it.
    fn apply_updates(&self, updates: &[pb::LevelUpdate], max: usize) -> Result<Model, UpdateError> {
        for (index, u) in updates.iter().enumerate() {
            if Side::from_pb(u.side).is_none() {
                return Err(UpdateError::BadSide {
                    index,
                    side: u.side,
                });
            }
            if u.size < 0 {
                return Err(UpdateError::NegativeSize {
                    index,
                    size: u.size,
                });
            }
        }
        let mut after = self.clone();
        for u in updates {
            // Checked above: a known side.
            if let Some(side) = Side::from_pb(u.side) {
                after.apply(side, u.price, u.size);
            }
        }
        let max = max.min(MAX_LEVELS_PER_SIDE);
        for (side, depth) in [(Side::Bid, after.bids.len()), (Side::Ask, after.asks.len())] {
            if depth > max {
                return Err(UpdateError::TooDeep {
                    side: side.label(),
                    depth,
                    max,
                });
            }
        }
        Ok(after)
    }

    /// Best first.
    fn levels(&self, side: Side) -> Vec<pb::Level> {
        let lv = |(&price, &size): (&i64, &i64)| pb::Level { price, size };
        match side {
            Side::Bid => self.bids.iter().rev().map(lv).collect(),
            Side::Ask => self.asks.iter().map(lv).collect(),
        }
    }

    fn checksum(&self) -> u32 {
        let mut bytes = Vec::new();
        for side in [Side::Bid, Side::Ask] {
            for l in self.levels(side).iter().take(10) {
                bytes.extend_from_slice(&l.price.to_le_bytes());
                bytes.extend_from_slice(&l.size.to_le_bytes());
            }
        }
        crc32fast::hash(&bytes)
    }
}

/// Whether `levels` can be a side: strictly best first, sizes > 0.
fn valid_side(side: Side, levels: &[pb::Level]) -> bool {
    levels.iter().all(|l| l.size > 0)
        && levels
            .windows(2)
            .all(|w| side.is_better(w[0].price, w[1].price))
}

fn to_levels(raw: &[(u8, u8)]) -> Vec<pb::Level> {
    raw.iter()
        .map(|&(p, s)| pb::Level {
            price: price(p),
            size: i64::from(s),
        })
        .collect()
}

fn compare(book: &OrderBook, model: &Model, touched: Option<(Side, i64)>) {
    assert!(book.invariants_hold());
    for side in [Side::Bid, Side::Ask] {
        let expected = model.levels(side);
        let levels: Vec<pb::Level> = book.levels(side).collect();
        assert_eq!(levels, expected, "{side:?} levels");
        assert_eq!(book.snapshot_levels(side), expected);
        assert_eq!(book.depth(side), expected.len());
        assert_eq!(book.best(side), expected.first().copied());
        for i in 0..=expected.len() {
            assert_eq!(
                book.nth(side, i),
                expected.get(i).copied(),
                "{side:?} nth {i}"
            );
        }
        for n in [0, 1, 2, 10, 11] {
            let top: Vec<pb::Level> = book.top(side, n).collect();
            assert_eq!(
                top.as_slice(),
                &expected[..n.min(expected.len())],
                "top {n}"
            );
        }
    }
    if let Some((side, price)) = touched {
        let m = match side {
            Side::Bid => &model.bids,
            Side::Ask => &model.asks,
        };
        assert_eq!(book.size_at(side, price), m.get(&price).copied());
    }
    assert_eq!(
        book.is_empty(),
        model.bids.is_empty() && model.asks.is_empty()
    );
    let checksum = model.checksum();
    assert_eq!(book.checksum(), checksum, "checksum");
    assert_eq!(
        checksum_levels(
            book.snapshot_levels(Side::Bid),
            book.snapshot_levels(Side::Ask)
        ),
        checksum
    );
}

fuzz_target!(|ops: Vec<Op>| {
    let mut book = OrderBook::new();
    let mut model = Model::default();
    let mut scratch = UpdateScratch::default();
    for op in ops {
        match op {
            Op::Apply {
                bid,
                price: p,
                size: s,
            } => {
                let side = if bid { Side::Bid } else { Side::Ask };
                let (p, s) = (price(p), size(s));
                assert_eq!(book.apply(side, p, s), model.apply(side, p, s));
                compare(&book, &model, Some((side, p)));
            }
            Op::ApplyUpdates { updates, max } => {
                let updates: Vec<pb::LevelUpdate> = updates
                    .iter()
                    .map(|&(side, p, z)| pb::LevelUpdate {
                        side: match side % 4 {
                            0 => pb::Side::Bid as i32,
                            1 => pb::Side::Ask as i32,
                            2 => pb::Side::Unspecified as i32,
                            _ => 7,
                        },
                        price: price(p),
                        size: size(z),
                    })
                    .collect();
                let max = if max == u8::MAX {
                    usize::MAX
                } else {
                    usize::from(max)
                };
                let before = book.clone();
                let expected = model.apply_updates(&updates, max);
                let got = book.apply_updates(&updates, max, &mut scratch);
                match expected {
                    Ok(after) => {
                        assert_eq!(got, Ok(()), "{updates:?}");
                        model = after;
                    }
                    Err(e) => {
                        assert_eq!(got, Err(e), "{updates:?}");
                        assert_eq!(book, before, "a refused delta changed the book");
                    }
                }
                compare(&book, &model, None);
            }
            Op::Snapshot { bids, asks } => {
                let (bids, asks) = (to_levels(&bids), to_levels(&asks));
                let valid = valid_side(Side::Bid, &bids) && valid_side(Side::Ask, &asks);
                let fresh = OrderBook::from_levels(&bids, &asks);
                assert_eq!(fresh.is_ok(), valid, "from_levels {bids:?} {asks:?}");
                let replaced = book.replace_from_levels(&bids, &asks);
                assert_eq!(replaced.is_ok(), valid, "replace_from_levels");
                if valid {
                    model = Model::default();
                    for l in &bids {
                        model.bids.insert(l.price, l.size);
                    }
                    for l in &asks {
                        model.asks.insert(l.price, l.size);
                    }
                    assert_eq!(fresh.as_ref().ok(), Some(&book));
                }
                compare(&book, &model, None);
            }
            Op::Clear => {
                book.clear();
                model = Model::default();
                compare(&book, &model, None);
            }
        }
    }
});
