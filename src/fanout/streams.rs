//! [`DerivedStreams`]: the node's table of derived book channels (PROTOCOL §9),
//! each a stream with its own [`SymbolId`], so that the router and the
//! workers route, subscribe, resync and drop it exactly like a symbol's
//! full book.
//!
//! Shared by every worker (which allocates the id when a client first
//! subscribes to a channel on this node) and the market thread (which looks
//! up what an id means when a worker declares interest in it). Locked only
//! on those two events, never per message. Ids are never reused: a stream's
//! view is dropped when nobody holds it, its id stays and is taken again by
//! the next subscriber.
//!
//! The table is bounded (`max`): a node serves at most that many distinct
//! (symbol, channel) pairs; past it a subscription to a new one is refused
//! with `too_many_subscriptions`, never an unbounded table.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::book::SymbolId;
use crate::book::derived::Channel;

/// Default bound of [`DerivedStreams`]: room for every depth and interval
/// of a hundred symbols, or the few popular variants of many thousands.
pub const DEFAULT_MAX_DERIVED_STREAMS: usize = 100_000;

#[derive(Debug)]
pub struct DerivedStreams {
    table: Mutex<Table>,
    max: usize,
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<(SymbolId, Channel), SymbolId>,
    /// Indexed by the derived stream's number.
    keys: Vec<(SymbolId, Channel)>,
}

impl Default for DerivedStreams {
    fn default() -> DerivedStreams {
        DerivedStreams::new(DEFAULT_MAX_DERIVED_STREAMS)
    }
}

impl DerivedStreams {
    pub fn new(max: usize) -> DerivedStreams {
        DerivedStreams {
            table: Mutex::new(Table::default()),
            max: max.min(i32::MAX as usize),
        }
    }

    /// The id of `channel` of `symbol`, allocated on first use; `None` when
    /// the table is full. `channel` must be a derived book channel.
    pub fn get_or_insert(&self, symbol: SymbolId, channel: Channel) -> Option<SymbolId> {
        debug_assert!(channel.is_derived_book() && !symbol.is_derived());
        let mut t = self.lock();
        if let Some(&id) = t.by_key.get(&(symbol, channel)) {
            return Some(id);
        }
        if t.keys.len() >= self.max {
            return None;
        }
        // Bounded by `max` < 2^31 above.
        let id = SymbolId::derived(t.keys.len() as u32);
        t.keys.push((symbol, channel));
        t.by_key.insert((symbol, channel), id);
        Some(id)
    }

    /// The symbol and channel of a derived stream id.
    pub fn key(&self, id: SymbolId) -> Option<(SymbolId, Channel)> {
        let n = id.derived_number()?;
        self.lock().keys.get(n).copied()
    }

    /// Streams allocated so far.
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is consistent after every operation (no panic while
        // locked), so a poisoned lock still holds a valid table.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    #[test]
    fn ids_are_stable_distinct_and_bounded() {
        let t = DerivedStreams::new(2);
        let a = t.get_or_insert(SymbolId(0), ch("book.10")).unwrap();
        let b = t.get_or_insert(SymbolId(0), ch("book.10@100ms")).unwrap();
        assert_ne!(a, b);
        assert!(a.is_derived() && b.is_derived());
        assert_eq!(t.get_or_insert(SymbolId(0), ch("book.10")), Some(a));
        assert_eq!(t.key(b), Some((SymbolId(0), ch("book.10@100ms"))));
        assert_eq!(t.key(SymbolId(0)), None, "a symbol is no derived stream");
        assert_eq!(t.get_or_insert(SymbolId(1), ch("book.1")), None, "full");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn symbols_and_streams_interleave_densely() {
        assert_eq!(SymbolId(0).index(), 0);
        assert_eq!(SymbolId::derived(0).index(), 1);
        assert_eq!(SymbolId(3).index(), 6);
        assert_eq!(SymbolId::derived(3).index(), 7);
    }
}
