//! The subscription index of one worker: per symbol and channel, the local
//! subscribers (a dense array scanned linearly on every tick); per connection,
//! its subscriptions. Each entry stores the index of its twin on the other side,
//! so adding and removing are O(1) (`swap_remove` + fixing one back-index), and
//! closing a connection costs O(its subscriptions), never a scan of a symbol's
//! 10,000 subscribers.
//!
//! Run by a worker thread, inside [`WorkerCore`](super::worker::WorkerCore).
//! Never: touches sockets or the clock, hashes on the delivery path (symbols
//! and connections are dense indices), allocates per delivery.
//!
//! It also reports the 0↔1 transitions of each symbol-channel's local count
//! and of each symbol's entries per rendering (other than protobuf), which
//! become `ToIngest::Interest` and `ToIngest::Rendering`.

use smallvec::SmallVec;

use crate::book::SymbolId;
use crate::fanout::ring::Lane;
use crate::wire::Rendering;

/// Where a subscriber stands on its symbol-channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Receiving. Book: `seq` is the last book seq queued for it (snapshot or
    /// delta). Trades: `seq` is the last trade seq queued (0: none yet).
    Live,
    /// Book only: waiting for the answer to a snapshot request (or a
    /// `BookReplaced`); deltas are skipped.
    Awaiting,
    /// Book only: told the book is stale for a feed reason; waits for the feed's
    /// next `BookReplaced` without a request of its own.
    AwaitingFeed,
    /// Waiting for the answer to a resume request (PROTOCOL §10), or for the
    /// other resumes of its subscribe: takes nothing until then (see
    /// `fanout::worker::resume`).
    Resuming,
    /// The connection is a slow consumer: `dropped` counts what it missed; the
    /// worker reports it (and, for books, resyncs) when the connection drains.
    Dropping,
}

/// One local subscriber of a symbol-channel. 24 bytes, scanned linearly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// Dense connection slot.
    pub conn: u32,
    /// Index of the twin [`ConnSub`] in the connection's list.
    back: u32,
    pub seq: u64,
    pub dropped: u32,
    pub state: SubState,
    /// The connection's rendering (cached here: the delivery loop picks
    /// the frame without touching the connection).
    pub rendering: Rendering,
}

/// One subscription of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSub {
    pub symbol: SymbolId,
    pub channel: Lane,
    /// Index of the twin [`Sub`] in the symbol-channel's list.
    pos: u32,
}

impl ConnSub {
    /// Position of the twin [`Sub`] in its symbol-channel list.
    pub fn pos(&self) -> usize {
        self.pos as usize
    }
}

/// Local subscribers of one symbol.
#[derive(Debug, Default)]
pub struct SymbolSubs {
    lists: [Vec<Sub>; 2],
    /// Entries per rendering ([`Rendering::index`]).
    rendering_entries: [u32; Rendering::COUNT],
    /// A `SnapshotRequest` for this symbol is on its way and not yet answered.
    pub snapshot_outstanding: bool,
    /// Answers still to come for requests made before the book interest last
    /// went to zero: they predate a gap in the data and must be ignored.
    pub ignore_answers: u16,
}

impl SymbolSubs {
    pub fn list(&self, channel: Lane) -> &[Sub] {
        &self.lists[ch(channel)]
    }

    pub fn list_mut(&mut self, channel: Lane) -> &mut [Sub] {
        &mut self.lists[ch(channel)]
    }
}

/// The 0↔1 transitions caused by one insert or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transitions {
    /// The symbol-channel's local count went 0→1 (insert) or 1→0 (remove).
    pub interest: bool,
    /// The symbol's entries of this rendering went 0→1 or 1→0 (never
    /// reported for protobuf, which every message has).
    pub rendering: Option<Rendering>,
}

/// Sizes of every index, to prove that nothing survives a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexSizes {
    pub book_entries: usize,
    pub trades_entries: usize,
    pub conn_entries: usize,
    /// Entries of a rendering other than protobuf.
    pub rendering_entries: usize,
    pub symbols_with_interest: usize,
    pub snapshots_outstanding: usize,
}

/// Both directions of the index.
///
/// # Invariants
///
/// - For every `Sub` at `symbols[s].lists[c][p]`, `conns[sub.conn][sub.back]`
///   is `ConnSub { symbol: s, channel: c, pos: p }`, and every `ConnSub` has
///   such a twin (checked by [`SubIndex::check`] in tests and by
///   `debug_assert!`s on every removal).
/// - A connection holds at most one entry per symbol-channel.
/// - `rendering_entries[r]` of a symbol is the number of its entries with
///   rendering `r`.
#[derive(Debug, Default)]
pub struct SubIndex {
    symbols: Vec<SymbolSubs>,
    conns: Vec<ConnSubs>,
}

/// A connection's subscriptions. Most connections hold one symbol-channel:
/// it is kept inline, so an idle subscribed connection allocates nothing
/// here (a heap list of one cost 32 bytes more per connection).
pub type ConnSubs = SmallVec<[ConnSub; 1]>;

fn ch(c: Lane) -> usize {
    match c {
        Lane::Book => 0,
        Lane::Trades => 1,
    }
}

impl SubIndex {
    pub fn new() -> SubIndex {
        SubIndex::default()
    }

    /// Reserves room for `n` connections (see `WorkerCore::reserve_conns`).
    pub fn reserve_conns(&mut self, n: usize) {
        self.conns.reserve_exact(n.saturating_sub(self.conns.len()));
    }

    /// The subscribers of `symbol`, if it ever had any.
    pub fn symbol(&self, symbol: SymbolId) -> Option<&SymbolSubs> {
        self.symbols.get(symbol.index())
    }

    pub fn symbol_mut(&mut self, symbol: SymbolId) -> Option<&mut SymbolSubs> {
        self.symbols.get_mut(symbol.index())
    }

    /// The subscriptions of `conn`.
    pub fn conn_subs(&self, conn: u32) -> &[ConnSub] {
        self.conns.get(conn as usize).map_or(&[], |v| v.as_slice())
    }

    /// How many symbol-channels `conn` holds.
    pub fn conn_count(&self, conn: u32) -> usize {
        self.conn_subs(conn).len()
    }

    /// Position of `conn`'s entry in the symbol-channel list. Linear in the
    /// connection's subscriptions (≤ the per-connection limit): requests only.
    pub fn find(&self, conn: u32, symbol: SymbolId, channel: Lane) -> Option<usize> {
        self.conn_subs(conn)
            .iter()
            .find(|c| c.symbol == symbol && c.channel == channel)
            .map(|c| c.pos as usize)
    }

    /// The entry at `pos` of a symbol-channel list (from [`SubIndex::find`]).
    pub fn sub_mut(&mut self, symbol: SymbolId, channel: Lane, pos: usize) -> &mut Sub {
        &mut self.symbols[symbol.index()].lists[ch(channel)][pos]
    }

    /// Adds `conn` to a symbol-channel it is not in yet. Returns the entry's
    /// position and the transitions.
    pub fn insert(
        &mut self,
        conn: u32,
        symbol: SymbolId,
        channel: Lane,
        rendering: Rendering,
        state: SubState,
    ) -> (usize, Transitions) {
        debug_assert!(
            self.find(conn, symbol, channel).is_none(),
            "one entry per symbol-channel"
        );
        let si = symbol.index();
        if self.symbols.len() <= si {
            self.symbols.resize_with(si + 1, SymbolSubs::default);
        }
        if self.conns.len() <= conn as usize {
            self.conns.resize_with(conn as usize + 1, ConnSubs::new);
        }
        let subs = &mut self.symbols[si];
        let clist = &mut self.conns[conn as usize];
        let list = &mut subs.lists[ch(channel)];
        let pos = list.len();
        list.push(Sub {
            conn,
            back: clist.len() as u32,
            seq: 0,
            dropped: 0,
            state,
            rendering,
        });
        clist.push(ConnSub {
            symbol,
            channel,
            pos: pos as u32,
        });
        let n = &mut subs.rendering_entries[rendering.index()];
        *n += 1;
        let t = Transitions {
            interest: pos == 0,
            rendering: (*n == 1 && rendering != Rendering::Proto).then_some(rendering),
        };
        (pos, t)
    }

    /// Removes `conn` from a symbol-channel. `None` if it was not in it.
    pub fn remove(&mut self, conn: u32, symbol: SymbolId, channel: Lane) -> Option<Transitions> {
        let back = self
            .conn_subs(conn)
            .iter()
            .position(|c| c.symbol == symbol && c.channel == channel)?;
        Some(self.remove_at(conn, back))
    }

    /// Removes the connection's `back`-th subscription: two `swap_remove`s and
    /// two back-index fixes.
    fn remove_at(&mut self, conn: u32, back: usize) -> Transitions {
        let clist = &mut self.conns[conn as usize];
        let cs = clist.swap_remove(back);
        if let Some(moved) = clist.get(back).copied() {
            self.symbols[moved.symbol.index()].lists[ch(moved.channel)][moved.pos as usize].back =
                back as u32;
        }
        let subs = &mut self.symbols[cs.symbol.index()];
        let list = &mut subs.lists[ch(cs.channel)];
        let pos = cs.pos as usize;
        let gone = list.swap_remove(pos);
        debug_assert_eq!(
            (gone.conn, gone.back as usize),
            (conn, back),
            "twin entries agree"
        );
        if let Some(moved) = list.get(pos).copied() {
            self.conns[moved.conn as usize][moved.back as usize].pos = pos as u32;
        }
        let n = &mut subs.rendering_entries[gone.rendering.index()];
        *n -= 1;
        Transitions {
            interest: list.is_empty(),
            rendering: (*n == 0 && gone.rendering != Rendering::Proto).then_some(gone.rendering),
        }
    }

    /// Removes every subscription of `conn`, calling `on_removed` for each, and
    /// frees the connection's list. O(its subscriptions).
    pub fn remove_conn(&mut self, conn: u32, mut on_removed: impl FnMut(&ConnSub, Transitions)) {
        while let Some(last) = self.conn_subs(conn).last().copied() {
            let back = self.conn_count(conn) - 1;
            let t = self.remove_at(conn, back);
            on_removed(&last, t);
        }
        if let Some(l) = self.conns.get_mut(conn as usize) {
            *l = ConnSubs::new();
        }
    }

    pub fn sizes(&self) -> IndexSizes {
        let mut s = IndexSizes::default();
        for subs in &self.symbols {
            s.book_entries += subs.lists[0].len();
            s.trades_entries += subs.lists[1].len();
            s.rendering_entries += subs.rendering_entries[1..].iter().sum::<u32>() as usize;
            s.symbols_with_interest +=
                usize::from(!subs.lists[0].is_empty() || !subs.lists[1].is_empty());
            s.snapshots_outstanding += usize::from(subs.snapshot_outstanding);
        }
        s.conn_entries = self.conns.iter().map(|l| l.len()).sum();
        s
    }

    /// Verifies every invariant of the type. O(index); tests and debugging only.
    pub fn check(&self) -> Result<(), String> {
        for (si, subs) in self.symbols.iter().enumerate() {
            let mut counts = [0u32; Rendering::COUNT];
            for c in [Lane::Book, Lane::Trades] {
                for (p, sub) in subs.lists[ch(c)].iter().enumerate() {
                    counts[sub.rendering.index()] += 1;
                    let twin = self
                        .conns
                        .get(sub.conn as usize)
                        .and_then(|l| l.get(sub.back as usize))
                        .ok_or_else(|| format!("sub {si}/{c:?}/{p} has no twin"))?;
                    if *twin
                        != (ConnSub {
                            symbol: SymbolId::from_index(si),
                            channel: c,
                            pos: p as u32,
                        })
                    {
                        return Err(format!("sub {si}/{c:?}/{p} twin mismatch: {twin:?}"));
                    }
                }
            }
            if counts != subs.rendering_entries {
                return Err(format!(
                    "symbol {si}: rendering_entries {:?} != {counts:?}",
                    subs.rendering_entries
                ));
            }
        }
        let total: usize = self.conns.iter().map(|l| l.len()).sum();
        let entries: usize = self
            .symbols
            .iter()
            .map(|s| s.lists[0].len() + s.lists[1].len())
            .sum();
        if total != entries {
            return Err(format!(
                "{total} connection entries, {entries} symbol entries"
            ));
        }
        for (conn, l) in self.conns.iter().enumerate() {
            for (i, a) in l.iter().enumerate() {
                if l[..i]
                    .iter()
                    .any(|b| b.symbol == a.symbol && b.channel == a.channel)
                {
                    return Err(format!("conn {conn} holds {a:?} twice"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_of_entries_stay_small() {
        assert_eq!(std::mem::size_of::<Sub>(), 24);
        assert_eq!(std::mem::size_of::<ConnSub>(), 12);
        assert_eq!(std::mem::size_of::<ConnSubs>(), 24);
    }

    #[test]
    fn transitions_at_zero_and_one_only() {
        let mut ix = SubIndex::new();
        let s = SymbolId(3);
        let (_, t) = ix.insert(0, s, Lane::Book, Rendering::Proto, SubState::Awaiting);
        assert_eq!(
            t,
            Transitions {
                interest: true,
                rendering: None
            }
        );
        let (_, t) = ix.insert(1, s, Lane::Book, Rendering::Json, SubState::Awaiting);
        assert_eq!(
            t,
            Transitions {
                interest: false,
                rendering: Some(Rendering::Json)
            }
        );
        let (_, t) = ix.insert(1, s, Lane::Trades, Rendering::Json, SubState::Live);
        assert_eq!(
            t,
            Transitions {
                interest: true,
                rendering: None
            }
        );
        assert_eq!(
            ix.remove(1, s, Lane::Book),
            Some(Transitions {
                interest: false,
                rendering: None
            })
        );
        assert_eq!(ix.remove(1, s, Lane::Book), None);
        assert_eq!(
            ix.remove(1, s, Lane::Trades),
            Some(Transitions {
                interest: true,
                rendering: Some(Rendering::Json)
            })
        );
        assert_eq!(
            ix.remove(0, s, Lane::Book),
            Some(Transitions {
                interest: true,
                rendering: None
            })
        );
        assert_eq!(ix.sizes(), IndexSizes::default());
        ix.check().unwrap();
    }

    #[test]
    fn removal_fixes_the_moved_twins() {
        let mut ix = SubIndex::new();
        for conn in 0..5 {
            for sym in 0..4 {
                ix.insert(
                    conn,
                    SymbolId(sym),
                    Lane::Book,
                    Rendering::ALL[conn as usize % Rendering::COUNT],
                    SubState::Live,
                );
            }
        }
        ix.check().unwrap();
        ix.remove(0, SymbolId(1), Lane::Book).unwrap();
        ix.check().unwrap();
        let mut seen = Vec::new();
        ix.remove_conn(2, |cs, _| seen.push(cs.symbol.0));
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3]);
        ix.check().unwrap();
        assert_eq!(ix.symbol(SymbolId(2)).unwrap().list(Lane::Book).len(), 4);
        assert!(
            ix.symbol(SymbolId(2))
                .unwrap()
                .list(Lane::Book)
                .iter()
                .all(|s| s.conn != 2)
        );
    }

    proptest! {
        #[test]
        fn random_inserts_and_removes_keep_twins_and_counts(
            ops in proptest::collection::vec((0u8..3, 0u32..6, 0u32..5, any::<bool>()), 1..300)
        ) {
            let mut ix = SubIndex::new();
            let mut model = std::collections::BTreeSet::new();
            for (op, conn, sym, trades) in ops {
                let c = if trades { Lane::Trades } else { Lane::Book };
                let key = (conn, sym, trades);
                match op {
                    0 if !model.contains(&key) => {
                        let before = model.iter().filter(|(_, s, t)| *s == sym && *t == trades).count();
                        let (_, t) = ix.insert(conn, SymbolId(sym), c, Rendering::ALL[conn as usize % Rendering::COUNT], SubState::Live);
                        prop_assert_eq!(t.interest, before == 0);
                        model.insert(key);
                    }
                    1 => {
                        let r = ix.remove(conn, SymbolId(sym), c);
                        prop_assert_eq!(r.is_some(), model.remove(&key));
                        if let Some(t) = r {
                            let after = model.iter().filter(|(_, s, t)| *s == sym && *t == trades).count();
                            prop_assert_eq!(t.interest, after == 0);
                        }
                    }
                    2 => {
                        ix.remove_conn(conn, |_, _| {});
                        model.retain(|k| k.0 != conn);
                    }
                    _ => {}
                }
                prop_assert!(ix.check().is_ok(), "{:?}", ix.check());
                prop_assert_eq!(ix.sizes().conn_entries, model.len());
            }
        }
    }
}
