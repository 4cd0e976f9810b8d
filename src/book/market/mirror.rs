//! Mirrored books: symbols whose origin is another node, kept exact from the
//! origin's messages on the backplane (DESIGN "Growing past one machine").
//!
//! The origin's numbers are kept as they are: a mirrored book's `seq`, trade
//! seq, checksum and epoch are the origin's, so a client sees the same numbers
//! on every node. The market checks that each message follows on (same epoch,
//! `seq` = last + 1) and that the checksum after a delta is the origin's;
//! anything else turns the book stale (`Stale{feed_gap}` to its subscribers)
//! until the next snapshot, which the caller ([`crate::cluster::edge`])
//! requests. Run by the node's market thread (the ingest thread), like the
//! rest of [`Market`].

use crate::book::FeedId;
use crate::book::book::OrderBook;
use crate::wire::pb;
use crate::wire::pb::server_message::Body;

use super::{
    FeedStale, Market, Published, RejectReason, SymbolId, SymbolState, decimals, mark_stale, wrap,
};

/// Origins' feed ids carry this bit; local feeds' ids never do.
pub const ORIGIN_FEED_BIT: u64 = 1 << 63;

/// The [`FeedId`] under which a mirrored symbol is owned by origin `tag`.
pub fn origin_feed(tag: u32) -> FeedId {
    FeedId(ORIGIN_FEED_BIT | u64::from(tag))
}

/// Why an origin's message was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorReject {
    #[error("symbol not known here")]
    Unknown,
    #[error("owned by a local feed")]
    Local,
    #[error("no book yet: waiting for a snapshot")]
    NoBook,
    #[error("book stale: waiting for a snapshot")]
    Stale,
    #[error("from another origin than the book's")]
    OtherOrigin,
    #[error("epoch {got}, the book is at {held}")]
    Epoch { held: u64, got: u64 },
    #[error("seq {got} already applied (at {held})")]
    Old { held: u64, got: u64 },
    #[error("gap: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("checksum {got:#x} after the delta, the origin's is {want:#x}")]
    Checksum { want: u32, got: u32 },
    #[error("invalid: {0}")]
    Invalid(RejectReason),
}

impl MirrorReject {
    /// Whether the book must be resynced (a snapshot requested). Another
    /// origin's message says nothing about the book held: it is dropped.
    pub fn needs_resync(&self) -> bool {
        !matches!(
            self,
            MirrorReject::Unknown
                | MirrorReject::Local
                | MirrorReject::Old { .. }
                | MirrorReject::OtherOrigin
        )
    }

    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            MirrorReject::Unknown => "unknown_symbol",
            MirrorReject::Local => "local_symbol",
            MirrorReject::NoBook => "no_book",
            MirrorReject::Stale => "stale",
            MirrorReject::OtherOrigin => "other_origin",
            MirrorReject::Epoch { .. } => "epoch",
            MirrorReject::Old { .. } => "old",
            MirrorReject::Gap { .. } => "gap",
            MirrorReject::Checksum { .. } => "checksum",
            MirrorReject::Invalid(_) => "invalid",
        }
    }
}

impl Market {
    /// An origin's heartbeat lists `name` at `seq`: the symbol exists here
    /// from now on (workers may accept subscriptions to it), with no book
    /// until synced; until then its seq, decimals and epoch are the
    /// heartbeat's (what `/symbols` shows). Returns its id and whether it is
    /// new or any of those changed (the caller announces it). A symbol owned
    /// by a local feed is left alone (`Local`).
    pub fn mirror_listing(
        &mut self,
        origin: FeedId,
        name: &str,
        seq: u64,
        (price_decimals, size_decimals): (u32, u32),
        epoch: u64,
    ) -> Result<(SymbolId, bool), MirrorReject> {
        if let Some(id) = self.symbol_id(name) {
            let st = self.state_mut(id);
            if !st.mirrored {
                return Err(MirrorReject::Local);
            }
            if st.has_book {
                return Ok((id, false));
            }
            let changed = (st.seq, st.price_decimals, st.size_decimals, st.epoch)
                != (seq, price_decimals, size_decimals, epoch);
            st.seq = seq;
            st.price_decimals = price_decimals;
            st.size_decimals = size_decimals;
            st.epoch = epoch;
            return Ok((id, changed));
        }
        let id = self.new_symbol(name, OrderBook::new())?;
        let st = self.state_mut(id);
        st.seq = seq;
        st.price_decimals = price_decimals;
        st.size_decimals = size_decimals;
        st.epoch = epoch;
        self.set_owner(id, origin);
        self.state_mut(id).stale = None;
        Ok((id, true))
    }

    /// The origin's snapshot of `snap.symbol` at `snap.seq` in `epoch`
    /// replaces the book (creating the symbol if needed) and is published as
    /// it came, numbers included. The levels must reproduce the origin's
    /// checksum.
    pub fn mirror_snapshot(
        &mut self,
        origin: FeedId,
        epoch: u64,
        mut snap: pb::BookSnapshot,
        out: &mut Vec<Published>,
    ) -> Result<SymbolId, MirrorReject> {
        let pd = decimals(snap.price_decimals).map_err(MirrorReject::Invalid)?;
        let sd = decimals(snap.size_decimals).map_err(MirrorReject::Invalid)?;
        let max = self.limits.max_book_levels;
        if snap.bids.len() > max || snap.asks.len() > max {
            return Err(MirrorReject::Invalid(RejectReason::BookTooDeep {
                symbol: snap.symbol,
                side: if snap.bids.len() > max { "bid" } else { "ask" },
                depth: snap.bids.len().max(snap.asks.len()),
                max,
            }));
        }
        let book = OrderBook::from_levels(&snap.bids, &snap.asks).map_err(|e| {
            MirrorReject::Invalid(RejectReason::BadLevel(format!("{}: {e}", snap.symbol)))
        })?;
        if book.checksum() != snap.checksum {
            return Err(MirrorReject::Checksum {
                want: snap.checksum,
                got: book.checksum(),
            });
        }
        let id = match self.symbol_id(&snap.symbol) {
            Some(id) if !self.state_mut(id).mirrored => return Err(MirrorReject::Local),
            Some(id) => {
                self.state_mut(id).book = book;
                id
            }
            None => self.new_symbol(&snap.symbol, book)?,
        };
        self.set_owner(id, origin);
        let st = self.state_mut(id);
        if st.epoch != epoch {
            st.trade_seq = 0;
        }
        st.epoch = epoch;
        st.seq = snap.seq;
        st.has_book = true;
        st.stale = None;
        st.price_decimals = pd;
        st.size_decimals = sd;
        st.exchange_ts_ns = snap.exchange_ts_ns;
        st.ingest_ts_ns = snap.ingest_ts_ns;
        snap.epoch = epoch;
        let seq = st.seq;
        self.debug_check(id);
        out.push(Published::Snapshot {
            symbol: id,
            seq,
            msg: wrap(Body::Snapshot(snap)),
        });
        Ok(id)
    }

    /// The origin's delta: applied and published as it came when it follows
    /// on. A gap, another epoch or a checksum that differs from the origin's
    /// turns a live book stale (one `Stale{feed_gap}`); the caller resyncs.
    pub fn mirror_delta(
        &mut self,
        origin: FeedId,
        epoch: u64,
        delta: pb::BookDelta,
        out: &mut Vec<Published>,
    ) -> Result<SymbolId, MirrorReject> {
        let id = self.mirrored_id(&delta.symbol, origin)?;
        let max_updates = self.limits.max_delta_updates;
        let max_levels = self.limits.max_book_levels;
        let st = &mut self.symbols[id.0 as usize];
        if let Err(e) = follows_on(st, epoch, delta.seq) {
            if e.needs_resync() && st.stale.is_none() {
                mark_stale(id, st, FeedStale::FeedGap, out);
            }
            return Err(e);
        }
        if delta.updates.len() > max_updates {
            mark_stale(id, st, FeedStale::FeedGap, out);
            return Err(MirrorReject::Invalid(RejectReason::TooManyUpdates {
                symbol: delta.symbol,
                updates: delta.updates.len(),
                max: max_updates,
            }));
        }
        if let Err(e) = st
            .book
            .apply_updates(&delta.updates, max_levels, &mut self.scratch)
        {
            mark_stale(id, st, FeedStale::FeedGap, out);
            return Err(MirrorReject::Invalid(RejectReason::BadLevel(format!(
                "{}: {e}",
                delta.symbol
            ))));
        }
        let got = st.book.checksum();
        if got != delta.checksum {
            mark_stale(id, st, FeedStale::FeedGap, out);
            return Err(MirrorReject::Checksum {
                want: delta.checksum,
                got,
            });
        }
        st.seq = delta.seq;
        st.exchange_ts_ns = delta.exchange_ts_ns;
        st.ingest_ts_ns = delta.ingest_ts_ns;
        let seq = st.seq;
        let mut delta = delta;
        // PROTOCOL §9: on `book`, the previous message is the seq before.
        delta.prev_seq = seq.saturating_sub(1);
        delta.channel.clear();
        out.push(Published::Delta {
            symbol: id,
            seq,
            msg: wrap(Body::Delta(delta)),
        });
        Ok(id)
    }

    /// The origin's trade, published as it came. Returns how many trades
    /// before it never arrived (the caller tells the trades subscribers).
    /// Trades flow while the book is stale, as on the origin.
    pub fn mirror_trade(
        &mut self,
        origin: FeedId,
        epoch: u64,
        trade: pb::Trade,
        out: &mut Vec<Published>,
    ) -> Result<(SymbolId, u64), MirrorReject> {
        let id = self.mirrored_id(&trade.symbol, origin)?;
        let st = self.state_mut(id);
        if st.epoch != epoch {
            return Err(MirrorReject::Epoch {
                held: st.epoch,
                got: epoch,
            });
        }
        if trade.seq <= st.trade_seq {
            return Err(MirrorReject::Old {
                held: st.trade_seq,
                got: trade.seq,
            });
        }
        let lost = if st.trade_seq == 0 {
            0
        } else {
            trade.seq - st.trade_seq - 1
        };
        st.trade_seq = trade.seq;
        out.push(Published::Trade {
            symbol: id,
            seq: trade.seq,
            msg: wrap(Body::Trade(trade)),
        });
        Ok((id, lost))
    }

    /// The origin's book stopped being published (its feed's gap or
    /// disconnect): the mirrored book turns stale for the same reason.
    pub fn mirror_stale(
        &mut self,
        origin: FeedId,
        symbol: &str,
        reason: FeedStale,
        out: &mut Vec<Published>,
    ) -> Result<SymbolId, MirrorReject> {
        let id = self.mirrored_id(symbol, origin)?;
        if self.state_mut(id).stale == Some(reason) {
            return Ok(id);
        }
        // `# Invariants`: no owner exactly when stale for `FeedDown`. An
        // origin reporting a gap speaks for the book (it is not down).
        match reason {
            FeedStale::FeedDown => self.clear_owner(id),
            FeedStale::FeedGap => self.set_owner(id, origin),
        }
        let st = self.state_mut(id);
        mark_stale(id, st, reason, out);
        self.debug_check(id);
        Ok(id)
    }

    /// The node stopped following `id` (no local interest): its book is no
    /// longer kept up to date, so it is not served until synced again.
    pub fn mirror_forget(&mut self, id: SymbolId) {
        if let Some(st) = self.symbols.get_mut(id.0 as usize)
            && st.mirrored
        {
            st.has_book = false;
        }
    }

    /// Marks the mirrored book stale for a gap the caller found (a lost
    /// message, another epoch in a heartbeat), publishing one `Stale{feed_gap}`.
    pub fn mirror_gap(&mut self, id: SymbolId, out: &mut Vec<Published>) {
        if let Some(st) = self.symbols.get_mut(id.0 as usize)
            && st.mirrored
            && st.has_book
            && st.stale.is_none()
        {
            mark_stale(id, st, FeedStale::FeedGap, out);
        }
    }

    /// The trade seq of `id` as this node last saw it.
    pub fn trade_seq(&self, id: SymbolId) -> u64 {
        self.state(id).map_or(0, |st| st.trade_seq)
    }

    /// Skips trades that will never arrive (the origin's heartbeat is ahead).
    pub fn mirror_skip_trades(&mut self, id: SymbolId, to: u64) -> u64 {
        let Some(st) = self.symbols.get_mut(id.0 as usize) else {
            return 0;
        };
        let lost = to.saturating_sub(st.trade_seq);
        st.trade_seq = st.trade_seq.max(to);
        lost
    }

    fn mirrored_id(&mut self, name: &str, origin: FeedId) -> Result<SymbolId, MirrorReject> {
        let id = self.symbol_id(name).ok_or(MirrorReject::Unknown)?;
        let st = self.state_mut(id);
        if !st.mirrored {
            return Err(MirrorReject::Local);
        }
        if st.owner.is_some_and(|o| o != origin) {
            return Err(MirrorReject::OtherOrigin);
        }
        Ok(id)
    }

    fn new_symbol(&mut self, name: &str, book: OrderBook) -> Result<SymbolId, MirrorReject> {
        if self.symbols.len() >= self.limits.max_symbols {
            return Err(MirrorReject::Invalid(RejectReason::TooManySymbols {
                symbol: name.to_string(),
                max: self.limits.max_symbols,
            }));
        }
        let id = self
            .push_symbol(name, book, true)
            .map_err(MirrorReject::Invalid)?;
        // No owner yet: `# Invariants` wants it stale for feed_down until
        // the caller gives it its origin.
        self.state_mut(id).stale = Some(FeedStale::FeedDown);
        Ok(id)
    }
}

/// Whether a delta at `seq` in `epoch` follows on the book held.
fn follows_on(st: &SymbolState, epoch: u64, seq: u64) -> Result<(), MirrorReject> {
    if !st.has_book {
        return Err(MirrorReject::NoBook);
    }
    if st.stale.is_some() {
        return Err(MirrorReject::Stale);
    }
    if st.epoch != epoch {
        return Err(MirrorReject::Epoch {
            held: st.epoch,
            got: epoch,
        });
    }
    if seq <= st.seq {
        return Err(MirrorReject::Old {
            held: st.seq,
            got: seq,
        });
    }
    if seq != st.seq + 1 {
        return Err(MirrorReject::Gap {
            expected: st.seq + 1,
            got: seq,
        });
    }
    Ok(())
}
