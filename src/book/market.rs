//! The market: every order book, every sequence number, and which feed owns
//! which symbol (PROTOCOL §3 "Sequences and ownership", §4).
//!
//! Run by the ingest thread, its single writer: the ingest server hands it
//! each decoded message with the time it was read, and gets back what to
//! publish, in order, as [`Published`] events (each carrying the
//! `ServerMessage` to encode once). The fan-out engine reads it for
//! subscribers' snapshots and `GET /symbols`.
//!
//! It never does I/O, never reads a clock (`ingest_ts_ns` is an argument),
//! never panics whatever the feeds send, and allocates nothing on the delta
//! hot path beyond what the incoming message already carries: the incoming
//! `BookDelta` becomes the outgoing one.
//!
//! Decisions it owns (the ingest decoder has already checked syntax):
//! - A symbol belongs to the feed that last sent its snapshot; deltas **and
//!   trades** from any other feed are rejected with `NotOwner` (tickwire's
//!   choice for trades: one feed speaks for a symbol at a time).
//! - Feed sequences are contiguous per symbol. On a gap the book stops being
//!   published: one `Stale{feed_gap}`, the offending delta rejected with
//!   `FeedGap`, later ones with `BookStale`, until a snapshot from any feed.
//!   Trades keep flowing.
//! - tickwire's own book sequence per symbol starts at 1 and takes one number
//!   per published delta or snapshot, never decreasing; the trade sequence is
//!   separate, contiguous from 1.
//! - What one feed can make it hold and do is bounded ([`MarketLimits`]):
//!   symbols (`TooManySymbols`), levels per side (`BookTooDeep`) and level
//!   updates per delta (`TooManyUpdates`). A rejected delta for a book its
//!   feed owns turns the book stale, as for a gap.

use std::collections::HashMap;

use crate::wire::StaleReason;
use crate::wire::decimal::MAX_DECIMALS;
use crate::wire::pb;
use crate::wire::pb::server_message::Body;

use super::book::{MAX_LEVELS_PER_SIDE, OrderBook, Side, UpdateError, UpdateScratch};
use super::{FeedId, RejectReason, SymbolId};
pub use crate::config::MarketLimits;
pub use mirror::{MirrorReject, ORIGIN_FEED_BIT, origin_feed};

mod mirror;

/// Why a book is not being published (PROTOCOL §3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedStale {
    /// The owning feed skipped a sequence number or sent a delta that could
    /// not be applied: the book can no longer be trusted.
    FeedGap,
    /// The owning feed disconnected.
    FeedDown,
}

/// What clients are told: `Stale{feed_gap}` or `Stale{feed_down}`.
impl From<FeedStale> for StaleReason {
    fn from(r: FeedStale) -> StaleReason {
        match r {
            FeedStale::FeedGap => StaleReason::FeedGap,
            FeedStale::FeedDown => StaleReason::FeedDown,
        }
    }
}

/// What the ingest thread must publish, in the order the market produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// The book was replaced by a feed snapshot. `msg` holds a `BookSnapshot`
    /// with tickwire's `seq`, the checksum and `ingest_ts_ns`.
    Snapshot {
        symbol: SymbolId,
        seq: u64,
        msg: pb::ServerMessage,
    },
    /// A delta was applied. `msg` holds the `BookDelta` with tickwire's `seq`,
    /// the checksum of the book after it, and `ingest_ts_ns`.
    Delta {
        symbol: SymbolId,
        seq: u64,
        msg: pb::ServerMessage,
    },
    /// A trade, with the symbol's trade `seq`.
    Trade {
        symbol: SymbolId,
        seq: u64,
        msg: pb::ServerMessage,
    },
    /// The book stopped being published: `msg` holds
    /// `Stale{reason: "feed_gap" | "feed_down", dropped: 0}`.
    Stale {
        symbol: SymbolId,
        reason: FeedStale,
        msg: pb::ServerMessage,
    },
}

impl Published {
    pub fn symbol(&self) -> SymbolId {
        match self {
            Published::Snapshot { symbol, .. }
            | Published::Delta { symbol, .. }
            | Published::Trade { symbol, .. }
            | Published::Stale { symbol, .. } => *symbol,
        }
    }

    pub fn msg(&self) -> &pb::ServerMessage {
        match self {
            Published::Snapshot { msg, .. }
            | Published::Delta { msg, .. }
            | Published::Trade { msg, .. }
            | Published::Stale { msg, .. } => msg,
        }
    }

    pub fn into_msg(self) -> pb::ServerMessage {
        match self {
            Published::Snapshot { msg, .. }
            | Published::Delta { msg, .. }
            | Published::Trade { msg, .. }
            | Published::Stale { msg, .. } => msg,
        }
    }

    /// The book sequence of a snapshot or delta, the trade sequence of a
    /// trade; `None` for `Stale`.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Published::Snapshot { seq, .. }
            | Published::Delta { seq, .. }
            | Published::Trade { seq, .. } => Some(*seq),
            Published::Stale { .. } => None,
        }
    }
}

/// One symbol as `GET /symbols` and the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolInfo<'a> {
    pub id: SymbolId,
    pub name: &'a str,
    /// The last book sequence published (≥ 1).
    pub seq: u64,
    /// The last trade sequence published (0: no trade yet).
    pub trade_seq: u64,
    pub price_decimals: u32,
    pub size_decimals: u32,
    /// The feed that sent the last snapshot, until it disconnects.
    pub owner: Option<FeedId>,
    /// The owner's last accepted feed sequence.
    pub feed_seq: u64,
    pub stale: Option<FeedStale>,
    pub bid_depth: usize,
    pub ask_depth: usize,
    pub epoch: u64,
    /// Mirrored from an origin through the backplane (see [`Market::mirror_snapshot`]).
    pub mirrored: bool,
    /// Whether there is a book to serve (false for a mirrored symbol not synced yet).
    pub has_book: bool,
}

/// Per-symbol state, indexed by `SymbolId`.
#[derive(Debug)]
struct SymbolState {
    name: Box<str>,
    book: OrderBook,
    /// Last book sequence published; ≥ 1 once the symbol exists.
    seq: u64,
    /// Last trade sequence published; 0 before the first trade.
    trade_seq: u64,
    /// The owner's last accepted feed sequence (its snapshot's, then each delta's).
    feed_seq: u64,
    owner: Option<FeedId>,
    /// Index of this symbol in `Market::owned[owner]`; meaningless without owner.
    owner_pos: usize,
    stale: Option<FeedStale>,
    price_decimals: u32,
    size_decimals: u32,
    /// Timestamps of the last message applied to the book.
    exchange_ts_ns: u64,
    ingest_ts_ns: u64,
    /// The history `seq` belongs to (PROTOCOL §10): the market's own epoch for
    /// a local feed's book, the origin's for a mirrored one.
    epoch: u64,
    /// False only for a mirrored symbol listed by its origin's heartbeat and
    /// not synced yet (or no longer followed): no book to serve.
    has_book: bool,
    /// Owned through the backplane ([`Market::mirror_snapshot`]), not by a
    /// local feed: never republished by this node.
    mirrored: bool,
}

/// Every book and sequence of the process; see the module doc.
///
/// # Invariants
///
/// - `ids[name] == id` exactly when `symbols[id].name == name`; ids are dense,
///   assigned on a symbol's first snapshot and never removed.
/// - `symbols[id].owner == Some(f)` exactly when `owned[f][symbols[id].owner_pos] == id`;
///   no list in `owned` is empty.
/// - `owner.is_none()` exactly when `stale == Some(FeedDown)`: only a feed's
///   disconnect clears ownership, and only a snapshot sets it (and clears `stale`).
/// - `seq ≥ 1` and never decreases; `trade_seq` never decreases.
/// - `symbols.len() ≤ limits.max_symbols`; each side of each book holds at
///   most `limits.max_book_levels` levels.
#[derive(Debug, Default)]
pub struct Market {
    ids: HashMap<Box<str>, SymbolId>,
    symbols: Vec<SymbolState>,
    owned: HashMap<FeedId, Vec<SymbolId>>,
    limits: MarketLimits,
    /// Buffers of [`OrderBook::apply_updates`], kept warm across deltas.
    scratch: UpdateScratch,
    /// The epoch of the local feeds' books (PROTOCOL §10): set once at start.
    epoch: u64,
}

impl Market {
    /// A market with the default [`MarketLimits`].
    pub fn new() -> Market {
        Market::default()
    }

    /// A market with `limits` (the depth cap taken at most
    /// [`MAX_LEVELS_PER_SIDE`], the symbol cap at most `u32::MAX`).
    pub fn with_limits(limits: MarketLimits) -> Market {
        Market {
            limits: MarketLimits {
                max_symbols: limits.max_symbols.min(u32::MAX as usize),
                max_book_levels: limits.max_book_levels.min(MAX_LEVELS_PER_SIDE),
                max_delta_updates: limits.max_delta_updates,
            },
            ..Market::default()
        }
    }

    pub fn limits(&self) -> &MarketLimits {
        &self.limits
    }

    /// Sets the epoch of the local feeds' books (PROTOCOL §10); the engine
    /// takes its start time in milliseconds, so a restart changes it.
    pub fn with_epoch(mut self, epoch: u64) -> Market {
        self.epoch = epoch;
        self
    }

    /// The epoch of the local feeds' books.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A feed's snapshot replaces the symbol's whole book (creating the symbol
    /// on its first snapshot), makes `feed` its owner, clears any staleness, and
    /// takes the next book sequence. Publishes the snapshot (the incoming levels,
    /// already best first, with tickwire's seq, checksum and `ingest_ts_ns`).
    ///
    /// Rejected, changing nothing, in the order checked: decimals outside
    /// 0..=18 (`BadDecimals`); a new symbol when the market already holds
    /// `max_symbols` (`TooManySymbols`); more than `max_book_levels` levels on
    /// a side (`BookTooDeep`); levels that are not strictly best first with
    /// sizes > 0 (`BadLevel`). A rejected snapshot leaves the symbol as it was
    /// (its feed's next delta will not follow on, and is a gap).
    pub fn handle_snapshot(
        &mut self,
        feed: FeedId,
        mut snap: pb::BookSnapshot,
        ingest_ts_ns: u64,
        out: &mut Vec<Published>,
    ) -> Result<SymbolId, RejectReason> {
        let price_decimals = decimals(snap.price_decimals)?;
        let size_decimals = decimals(snap.size_decimals)?;
        let existing = self.ids.get(snap.symbol.as_str()).copied();
        if existing.is_none() && self.symbols.len() >= self.limits.max_symbols {
            return Err(RejectReason::TooManySymbols {
                symbol: snap.symbol,
                max: self.limits.max_symbols,
            });
        }
        let max = self.limits.max_book_levels;
        for (side, levels) in [("bid", &snap.bids), ("ask", &snap.asks)] {
            if levels.len() > max {
                return Err(RejectReason::BookTooDeep {
                    symbol: snap.symbol,
                    side,
                    depth: levels.len(),
                    max,
                });
            }
        }
        let bad_level =
            |e: super::book::LevelError| RejectReason::BadLevel(format!("{}: {e}", snap.symbol));
        let id = match existing {
            Some(id) => {
                self.state_mut(id)
                    .book
                    .replace_from_levels(&snap.bids, &snap.asks)
                    .map_err(bad_level)?;
                id
            }
            None => {
                let book = OrderBook::from_levels(&snap.bids, &snap.asks).map_err(bad_level)?;
                self.push_symbol(&snap.symbol, book, false)?
            }
        };
        self.set_owner(id, feed);
        let epoch = self.epoch;
        let st = self.state_mut(id);
        if st.mirrored || st.epoch != epoch {
            // A local feed takes over a mirrored book: its history restarts
            // here (seq continues, never decreasing, in this node's epoch).
            st.mirrored = false;
            st.epoch = epoch;
            st.trade_seq = 0;
        }
        st.has_book = true;
        // Unreachable in practice (one number per published message: 584 years
        // at 10^9 a second); saturating keeps "never decreases" regardless.
        st.seq = st.seq.saturating_add(1);
        st.feed_seq = snap.seq;
        st.stale = None;
        st.price_decimals = price_decimals;
        st.size_decimals = size_decimals;
        st.exchange_ts_ns = snap.exchange_ts_ns;
        st.ingest_ts_ns = ingest_ts_ns;
        snap.seq = st.seq;
        snap.ingest_ts_ns = ingest_ts_ns;
        snap.checksum = st.book.checksum();
        snap.epoch = st.epoch;
        let seq = st.seq;
        self.debug_check(id);
        out.push(Published::Snapshot {
            symbol: id,
            seq,
            msg: wrap(Body::Snapshot(snap)),
        });
        Ok(id)
    }

    /// Applies a feed's delta and publishes it with the next book sequence, the
    /// checksum of the book after it, and `ingest_ts_ns`. The hot path: no
    /// allocation unless rejected.
    ///
    /// Rejections, in the order checked:
    /// - `NoSnapshot`: the symbol never had a snapshot.
    /// - `NotOwner`: `feed` is not the symbol's owner.
    /// - `BookStale`: the book is stale after a gap; waiting for a snapshot.
    /// - `FeedGap`: `seq` is not the previous one + 1. The book turns stale and
    ///   one `Stale{feed_gap}` is published.
    /// - `TooManyUpdates`: more than `max_delta_updates` level updates.
    /// - `BadLevel`: an update with an unknown side or a negative size.
    /// - `BookTooDeep`: after the delta a side would hold more than
    ///   `max_book_levels` levels (counted exactly: updates and removals of
    ///   existing levels do not count).
    ///
    /// For the last three nothing is applied, and the book turns stale as for
    /// a gap (PROTOCOL §3: an owner's rejected delta). The work is bounded by
    /// the limits: see [`OrderBook::apply_updates`].
    pub fn handle_delta(
        &mut self,
        feed: FeedId,
        mut delta: pb::BookDelta,
        ingest_ts_ns: u64,
        out: &mut Vec<Published>,
    ) -> Result<SymbolId, RejectReason> {
        let Some(&id) = self.ids.get(delta.symbol.as_str()) else {
            return Err(RejectReason::NoSnapshot(delta.symbol));
        };
        // Ids in `ids` are in bounds (`# Invariants`); borrowed by field so that
        // the scratch buffers can be lent alongside.
        let st = &mut self.symbols[id.0 as usize];
        if st.owner != Some(feed) {
            return Err(RejectReason::NotOwner(delta.symbol));
        }
        if st.stale.is_some() {
            return Err(RejectReason::BookStale(delta.symbol));
        }
        let expected = st.feed_seq.checked_add(1);
        if expected != Some(delta.seq) {
            mark_stale(id, st, FeedStale::FeedGap, out);
            // After u64::MAX no seq can follow; report the wrapped value 0.
            let expected = expected.unwrap_or(0);
            return Err(RejectReason::FeedGap {
                symbol: delta.symbol,
                expected,
                got: delta.seq,
            });
        }
        let max = self.limits.max_delta_updates;
        if delta.updates.len() > max {
            mark_stale(id, st, FeedStale::FeedGap, out);
            return Err(RejectReason::TooManyUpdates {
                updates: delta.updates.len(),
                symbol: delta.symbol,
                max,
            });
        }
        let applied = st.book.apply_updates(
            &delta.updates,
            self.limits.max_book_levels,
            &mut self.scratch,
        );
        if let Err(why) = applied {
            mark_stale(id, st, FeedStale::FeedGap, out);
            return Err(match why {
                UpdateError::TooDeep { side, depth, max } => RejectReason::BookTooDeep {
                    symbol: delta.symbol,
                    side,
                    depth,
                    max,
                },
                e => RejectReason::BadLevel(format!("{}: {e}", delta.symbol)),
            });
        }
        st.feed_seq = delta.seq;
        st.seq = st.seq.saturating_add(1);
        st.exchange_ts_ns = delta.exchange_ts_ns;
        st.ingest_ts_ns = ingest_ts_ns;
        delta.seq = st.seq;
        // PROTOCOL §9: on `book`, the previous message is the seq before.
        delta.prev_seq = st.seq - 1;
        delta.channel.clear();
        delta.ingest_ts_ns = ingest_ts_ns;
        delta.checksum = st.book.checksum();
        let seq = st.seq;
        self.debug_check(id);
        out.push(Published::Delta {
            symbol: id,
            seq,
            msg: wrap(Body::Delta(delta)),
        });
        Ok(id)
    }

    /// Publishes a trade with the symbol's next trade sequence (the incoming
    /// `seq` is ignored) and `ingest_ts_ns`. Trades flow while the book is stale
    /// after a gap. Rejected: `NoSnapshot` for a symbol never snapshotted,
    /// `NotOwner` from a feed other than the owner (or when it has none).
    pub fn handle_trade(
        &mut self,
        feed: FeedId,
        mut trade: pb::Trade,
        ingest_ts_ns: u64,
        out: &mut Vec<Published>,
    ) -> Result<SymbolId, RejectReason> {
        let Some(&id) = self.ids.get(trade.symbol.as_str()) else {
            return Err(RejectReason::NoSnapshot(trade.symbol));
        };
        let st = self.state_mut(id);
        if st.owner != Some(feed) {
            return Err(RejectReason::NotOwner(trade.symbol));
        }
        st.trade_seq = st.trade_seq.saturating_add(1);
        trade.seq = st.trade_seq;
        trade.ingest_ts_ns = ingest_ts_ns;
        let seq = st.trade_seq;
        out.push(Published::Trade {
            symbol: id,
            seq,
            msg: wrap(Body::Trade(trade)),
        });
        Ok(id)
    }

    /// A delta from `feed` for `symbol` was rejected before reaching the market
    /// (bad decimal, bad level…). If `feed` owns that book and it is live, the
    /// book can no longer be trusted: it turns stale as for a gap, with one
    /// `Stale{feed_gap}` (PROTOCOL §3). Otherwise nothing changes.
    pub fn handle_invalid_delta(&mut self, feed: FeedId, symbol: &str, out: &mut Vec<Published>) {
        let Some(&id) = self.ids.get(symbol) else {
            return;
        };
        let st = self.state_mut(id);
        if st.owner == Some(feed) && st.stale.is_none() {
            mark_stale(id, st, FeedStale::FeedGap, out);
        }
    }

    /// `feed` disconnected: each symbol it owned keeps its book, loses its
    /// owner, and publishes `Stale{feed_down}` (in `SymbolId` order). O(owned).
    pub fn handle_feed_down(&mut self, feed: FeedId, out: &mut Vec<Published>) {
        let Some(mut owned) = self.owned.remove(&feed) else {
            return;
        };
        owned.sort_unstable();
        for id in owned {
            let st = self.state_mut(id);
            st.owner = None;
            mark_stale(id, st, FeedStale::FeedDown, out);
            self.debug_check(id);
        }
    }

    /// The id of `name`, once it had a snapshot.
    pub fn symbol_id(&self, name: &str) -> Option<SymbolId> {
        self.ids.get(name).copied()
    }

    /// `(price_decimals, size_decimals)` of `name`, from its last snapshot.
    pub fn decimals(&self, name: &str) -> Option<(u32, u32)> {
        let st = self.state(self.symbol_id(name)?)?;
        Some((st.price_decimals, st.size_decimals))
    }

    /// The current book of `id` as a `BookSnapshot` for subscribers: the last
    /// published seq, the checksum, and the timestamps of the last message
    /// applied to the book. An id this market did not assign (a caller bug)
    /// answers an empty snapshot with seq 0, never a panic.
    pub fn snapshot(&self, id: SymbolId) -> pb::BookSnapshot {
        let Some(st) = self.state(id) else {
            return pb::BookSnapshot::default();
        };
        pb::BookSnapshot {
            symbol: st.name.to_string(),
            seq: st.seq,
            bids: st.book.snapshot_levels(Side::Bid),
            asks: st.book.snapshot_levels(Side::Ask),
            // Validated 0..=18 on the way in.
            price_decimals: st.price_decimals as i32,
            size_decimals: st.size_decimals as i32,
            exchange_ts_ns: st.exchange_ts_ns,
            ingest_ts_ns: st.ingest_ts_ns,
            checksum: st.book.checksum(),
            epoch: st.epoch,
            // PROTOCOL §9: "" is `book` in protobuf.
            channel: String::new(),
        }
    }

    /// [`Self::snapshot`] without its levels and checksum: the fields a
    /// derived channel's snapshot shares with the full book's.
    pub fn snapshot_header(&self, id: SymbolId) -> pb::BookSnapshot {
        let Some(st) = self.state(id) else {
            return pb::BookSnapshot::default();
        };
        pb::BookSnapshot {
            symbol: st.name.to_string(),
            seq: st.seq,
            price_decimals: st.price_decimals as i32,
            size_decimals: st.size_decimals as i32,
            exchange_ts_ns: st.exchange_ts_ns,
            ingest_ts_ns: st.ingest_ts_ns,
            epoch: st.epoch,
            ..pb::BookSnapshot::default()
        }
    }

    /// `(exchange_ts_ns, ingest_ts_ns)` of the last message applied to the
    /// book of `id` (zeros for an unknown id).
    pub fn timestamps(&self, id: SymbolId) -> (u64, u64) {
        self.state(id)
            .map_or((0, 0), |st| (st.exchange_ts_ns, st.ingest_ts_ns))
    }

    /// Whether `id` has a book to serve: false for an unknown id and for a
    /// mirrored symbol not synced yet.
    pub fn has_book(&self, id: SymbolId) -> bool {
        self.state(id).is_some_and(|st| st.has_book)
    }

    /// The epoch of `id`'s book (0 for an unknown id).
    pub fn symbol_epoch(&self, id: SymbolId) -> u64 {
        self.state(id).map_or(0, |st| st.epoch)
    }

    /// The seq that [`Self::snapshot`] would carry now: the last published book
    /// sequence (0 for an unknown id).
    pub fn snapshot_seq(&self, id: SymbolId) -> u64 {
        self.state(id).map_or(0, |st| st.seq)
    }

    /// Why `id`'s book is not being published, if it is not.
    pub fn stale_reason(&self, id: SymbolId) -> Option<FeedStale> {
        self.state(id)?.stale
    }

    /// The book of `id` (an empty book for an unknown id).
    pub fn book(&self, id: SymbolId) -> &OrderBook {
        static EMPTY: OrderBook = OrderBook::new();
        self.state(id).map_or(&EMPTY, |st| &st.book)
    }

    /// The name of `id` (empty for an unknown id).
    pub fn name(&self, id: SymbolId) -> &str {
        self.state(id).map_or("", |st| &st.name)
    }

    pub fn info(&self, id: SymbolId) -> Option<SymbolInfo<'_>> {
        Some(info(id, self.state(id)?))
    }

    /// Every symbol, in `SymbolId` order.
    pub fn symbols(&self) -> impl ExactSizeIterator<Item = SymbolInfo<'_>> + '_ {
        // Ids were created from indices that fit in u32 (see `handle_snapshot`).
        self.symbols
            .iter()
            .enumerate()
            .map(|(i, st)| info(SymbolId(i as u32), st))
    }

    /// The symbols `feed` owns, in no particular order.
    pub fn owned_by(&self, feed: FeedId) -> &[SymbolId] {
        self.owned.get(&feed).map_or(&[], Vec::as_slice)
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    fn state(&self, id: SymbolId) -> Option<&SymbolState> {
        self.symbols.get(id.0 as usize)
    }

    /// For ids taken from `self.ids` or `self.owned`, which only ever hold ids
    /// of existing symbols (`# Invariants`): the index is in bounds.
    fn state_mut(&mut self, id: SymbolId) -> &mut SymbolState {
        &mut self.symbols[id.0 as usize]
    }

    /// Makes `feed` the owner of `id`, moving it out of its previous owner's list.
    fn set_owner(&mut self, id: SymbolId, feed: FeedId) {
        let st = self.state_mut(id);
        let (old, old_pos) = (st.owner, st.owner_pos);
        if old == Some(feed) {
            return;
        }
        if let Some(old) = old
            && let Some(list) = self.owned.get_mut(&old)
            && old_pos < list.len()
        {
            list.swap_remove(old_pos);
            if let Some(&moved) = list.get(old_pos) {
                self.symbols[moved.0 as usize].owner_pos = old_pos;
            }
            if list.is_empty() {
                self.owned.remove(&old);
            }
        }
        let list = self.owned.entry(feed).or_default();
        let pos = list.len();
        list.push(id);
        let st = self.state_mut(id);
        st.owner = Some(feed);
        st.owner_pos = pos;
    }

    /// A new symbol with `book` (no owner, seq 0): a local feed's (`mirrored`
    /// false, has a book) or a mirrored one (no book to serve until synced).
    /// The caller checked `max_symbols`.
    fn push_symbol(
        &mut self,
        name: &str,
        book: OrderBook,
        mirrored: bool,
    ) -> Result<SymbolId, RejectReason> {
        let Ok(raw) = u32::try_from(self.symbols.len()) else {
            return Err(RejectReason::BadMessage("symbol table full".into()));
        };
        let id = SymbolId(raw);
        let name: Box<str> = name.into();
        self.ids.insert(name.clone(), id);
        self.symbols.push(SymbolState {
            name,
            book,
            seq: 0,
            trade_seq: 0,
            feed_seq: 0,
            owner: None,
            owner_pos: 0,
            stale: None,
            price_decimals: 0,
            size_decimals: 0,
            exchange_ts_ns: 0,
            ingest_ts_ns: 0,
            epoch: 0,
            has_book: !mirrored,
            mirrored,
        });
        Ok(id)
    }

    /// `id` loses its owner (without publishing anything).
    fn clear_owner(&mut self, id: SymbolId) {
        let st = self.state_mut(id);
        let (Some(old), pos) = (st.owner.take(), st.owner_pos) else {
            return;
        };
        if let Some(list) = self.owned.get_mut(&old)
            && pos < list.len()
        {
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                self.symbols[moved.0 as usize].owner_pos = pos;
            }
            if list.is_empty() {
                self.owned.remove(&old);
            }
        }
    }

    /// Checks the `# Invariants` that concern `id` (debug builds; O(1) apart
    /// from the hash lookups).
    fn debug_check(&self, id: SymbolId) {
        if cfg!(debug_assertions) {
            let Some(st) = self.state(id) else {
                debug_assert!(false, "unknown symbol id {id:?}");
                return;
            };
            debug_assert_eq!(self.ids.get(&*st.name), Some(&id));
            debug_assert!(st.seq >= 1 || !st.has_book);
            debug_assert_eq!(st.owner.is_none(), st.stale == Some(FeedStale::FeedDown));
            if let Some(owner) = st.owner {
                debug_assert_eq!(
                    self.owned.get(&owner).and_then(|l| l.get(st.owner_pos)),
                    Some(&id)
                );
            }
        }
    }
}

fn info(id: SymbolId, st: &SymbolState) -> SymbolInfo<'_> {
    SymbolInfo {
        id,
        name: &st.name,
        seq: st.seq,
        trade_seq: st.trade_seq,
        price_decimals: st.price_decimals,
        size_decimals: st.size_decimals,
        owner: st.owner,
        feed_seq: st.feed_seq,
        stale: st.stale,
        bid_depth: st.book.depth(Side::Bid),
        ask_depth: st.book.depth(Side::Ask),
        epoch: st.epoch,
        mirrored: st.mirrored,
        has_book: st.has_book,
    }
}

fn wrap(body: Body) -> pb::ServerMessage {
    pb::ServerMessage { body: Some(body) }
}

fn decimals(d: i32) -> Result<u32, RejectReason> {
    match u32::try_from(d) {
        Ok(u) if u <= MAX_DECIMALS => Ok(u),
        _ => Err(RejectReason::BadDecimals(d)),
    }
}

/// The book stops being published for `reason`: publish one `Stale`.
fn mark_stale(id: SymbolId, st: &mut SymbolState, reason: FeedStale, out: &mut Vec<Published>) {
    st.stale = Some(reason);
    let msg = wrap(Body::Stale(pb::Stale {
        symbol: st.name.to_string(),
        dropped: 0,
        reason: StaleReason::from(reason).as_str().to_string(),
    }));
    out.push(Published::Stale {
        symbol: id,
        reason,
        msg,
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::book::synth::{Rng, SynthConfig, SynthMarket};
    use crate::config::MAX_INGEST_FRAME_BYTES;
    use crate::wire::pb::ingest_message::Body as In;

    const A: FeedId = FeedId(1);
    const B: FeedId = FeedId(2);

    fn lv(price: i64, size: i64) -> pb::Level {
        pb::Level { price, size }
    }

    fn snap(symbol: &str, seq: u64, bids: &[(i64, i64)], asks: &[(i64, i64)]) -> pb::BookSnapshot {
        pb::BookSnapshot {
            symbol: symbol.into(),
            seq,
            bids: bids.iter().map(|&(p, s)| lv(p, s)).collect(),
            asks: asks.iter().map(|&(p, s)| lv(p, s)).collect(),
            price_decimals: 2,
            size_decimals: 4,
            exchange_ts_ns: 1_000,
            ingest_ts_ns: 0,
            checksum: 0,
            epoch: 0,
            channel: String::new(),
        }
    }

    fn upd(side: pb::Side, price: i64, size: i64) -> pb::LevelUpdate {
        pb::LevelUpdate {
            side: side as i32,
            price,
            size,
        }
    }

    fn delta(symbol: &str, seq: u64, updates: Vec<pb::LevelUpdate>) -> pb::BookDelta {
        pb::BookDelta {
            symbol: symbol.into(),
            seq,
            updates,
            exchange_ts_ns: 2_000,
            ingest_ts_ns: 0,
            checksum: 0,
            channel: String::new(),
            prev_seq: 0,
        }
    }

    fn trade(symbol: &str) -> pb::Trade {
        pb::Trade {
            symbol: symbol.into(),
            seq: 999,
            price: 100,
            size: 1,
            aggressor: pb::Side::Bid as i32,
            exchange_ts_ns: 3_000,
            ingest_ts_ns: 0,
            trade_id: "t".into(),
        }
    }

    /// A market with `BTC-USD` snapshotted by feed A at feed seq 10.
    fn market_with_btc() -> (Market, SymbolId) {
        let mut m = Market::new();
        let mut out = Vec::new();
        let id = m
            .handle_snapshot(
                A,
                snap("BTC-USD", 10, &[(100, 5), (99, 1)], &[(101, 2)]),
                50,
                &mut out,
            )
            .unwrap();
        (m, id)
    }

    fn bid_delta(symbol: &str, seq: u64) -> pb::BookDelta {
        delta(symbol, seq, vec![upd(pb::Side::Bid, 98, 7)])
    }

    fn stale_reasons(out: &[Published]) -> Vec<(SymbolId, FeedStale)> {
        out.iter()
            .filter_map(|p| match p {
                Published::Stale { symbol, reason, .. } => Some((*symbol, *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_snapshot_creates_the_symbol_with_seq_1() {
        let mut m = Market::new();
        let mut out = Vec::new();
        let id = m
            .handle_snapshot(
                A,
                snap("BTC-USD", 77, &[(100, 5)], &[(101, 2)]),
                42,
                &mut out,
            )
            .unwrap();
        assert_eq!(m.symbol_id("BTC-USD"), Some(id));
        assert_eq!(m.decimals("BTC-USD"), Some((2, 4)));
        assert_eq!(out.len(), 1);
        let Published::Snapshot { symbol, seq, msg } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!((*symbol, *seq), (id, 1));
        let Some(Body::Snapshot(s)) = &msg.body else {
            panic!()
        };
        assert_eq!(s.seq, 1);
        assert_eq!(s.ingest_ts_ns, 42);
        assert_eq!(s.exchange_ts_ns, 1_000);
        assert_eq!(s.checksum, m.book(id).checksum());
        assert_ne!(s.checksum, 0);
        assert_eq!(s.bids, vec![lv(100, 5)]);
        assert_eq!(m.snapshot(id), *s);
        let info = m.info(id).unwrap();
        assert_eq!(
            (info.seq, info.feed_seq, info.owner, info.trade_seq),
            (1, 77, Some(A), 0)
        );
    }

    #[test]
    fn deltas_take_the_next_seq_and_carry_the_checksum_after() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", 11), 60, &mut out),
            Ok(id)
        );
        assert_eq!(
            m.handle_delta(
                A,
                delta(
                    "BTC-USD",
                    12,
                    vec![upd(pb::Side::Ask, 101, 0), upd(pb::Side::Ask, 102, 3)]
                ),
                70,
                &mut out
            ),
            Ok(id)
        );
        assert_eq!(out.len(), 2);
        let mut expect = OrderBook::from_levels(&[lv(100, 5), lv(99, 1)], &[lv(101, 2)]).unwrap();
        for (p, seq, ts) in [(&out[0], 2, 60), (&out[1], 3, 70)] {
            let Published::Delta {
                symbol,
                seq: s,
                msg,
            } = p
            else {
                panic!()
            };
            let Some(Body::Delta(d)) = &msg.body else {
                panic!()
            };
            for u in &d.updates {
                expect.apply(Side::from_pb(u.side).unwrap(), u.price, u.size);
            }
            assert_eq!(
                (*symbol, *s, d.seq, d.ingest_ts_ns, d.exchange_ts_ns),
                (id, seq, seq, ts, 2_000)
            );
            assert_eq!(d.checksum, expect.checksum());
        }
        assert_eq!(m.book(id), &expect);
        assert_eq!(m.snapshot_seq(id), 3);
        assert_eq!(m.info(id).unwrap().feed_seq, 12);
        let s = m.snapshot(id);
        assert_eq!((s.seq, s.ingest_ts_ns, s.exchange_ts_ns), (3, 70, 2_000));
        assert_eq!(s.asks, vec![lv(102, 3)]);
    }

    #[test]
    fn no_snapshot_rejects_deltas_and_trades() {
        let (mut m, _) = market_with_btc();
        let mut out = Vec::new();
        assert_eq!(
            m.handle_delta(A, bid_delta("ETH-USD", 1), 1, &mut out),
            Err(RejectReason::NoSnapshot("ETH-USD".into()))
        );
        assert_eq!(
            m.handle_trade(A, trade("ETH-USD"), 1, &mut out),
            Err(RejectReason::NoSnapshot("ETH-USD".into()))
        );
        m.handle_invalid_delta(A, "ETH-USD", &mut out);
        assert!(out.is_empty());
        assert_eq!(m.len(), 1);
        assert_eq!(m.symbol_id("ETH-USD"), None);
        assert_eq!(m.decimals("ETH-USD"), None);
    }

    #[test]
    fn snapshot_from_another_feed_takes_over() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_delta(A, bid_delta("BTC-USD", 11), 1, &mut out)
            .unwrap();
        // B takes over with its own feed sequence.
        m.handle_snapshot(B, snap("BTC-USD", 500, &[(90, 1)], &[(95, 1)]), 2, &mut out)
            .unwrap();
        assert_eq!(m.owned_by(A), &[] as &[SymbolId]);
        assert_eq!(m.owned_by(B), &[id]);
        out.clear();
        let book_before = m.book(id).clone();
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", 12), 3, &mut out),
            Err(RejectReason::NotOwner("BTC-USD".into()))
        );
        assert_eq!(
            m.handle_trade(A, trade("BTC-USD"), 3, &mut out),
            Err(RejectReason::NotOwner("BTC-USD".into()))
        );
        // An invalid delta from a non-owner does not make the book stale.
        m.handle_invalid_delta(A, "BTC-USD", &mut out);
        assert!(out.is_empty());
        assert_eq!(m.book(id), &book_before);
        assert_eq!((m.snapshot_seq(id), m.info(id).unwrap().trade_seq), (3, 0));
        // B's deltas continue from B's snapshot seq.
        assert_eq!(
            m.handle_delta(B, bid_delta("BTC-USD", 501), 4, &mut out),
            Ok(id)
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq(), Some(4));
        assert_eq!(m.stale_reason(id), None);
    }

    #[test]
    fn re_snapshot_continues_the_sequence() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_delta(A, bid_delta("BTC-USD", 11), 1, &mut out)
            .unwrap();
        m.handle_delta(A, bid_delta("BTC-USD", 12), 1, &mut out)
            .unwrap();
        // Same feed, lower feed seq (the feed restarted its numbering): fine.
        m.handle_snapshot(A, snap("BTC-USD", 3, &[(100, 1)], &[]), 2, &mut out)
            .unwrap();
        // Another feed.
        m.handle_snapshot(B, snap("BTC-USD", 0, &[], &[(100, 1)]), 3, &mut out)
            .unwrap();
        m.handle_delta(B, bid_delta("BTC-USD", 1), 4, &mut out)
            .unwrap();
        let seqs: Vec<_> = out.iter().map(|p| p.seq().unwrap()).collect();
        assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
        assert!(matches!(out[2], Published::Snapshot { .. }));
        assert!(matches!(out[3], Published::Snapshot { .. }));
        assert_eq!(m.snapshot_seq(id), 6);
    }

    #[test]
    fn gap_emits_one_stale_then_book_stale_until_a_snapshot() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_delta(A, bid_delta("BTC-USD", 11), 1, &mut out)
            .unwrap();
        out.clear();
        let book_before = m.book(id).clone();
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", 13), 2, &mut out),
            Err(RejectReason::FeedGap {
                symbol: "BTC-USD".into(),
                expected: 12,
                got: 13
            })
        );
        assert_eq!(stale_reasons(&out), vec![(id, FeedStale::FeedGap)]);
        let Some(Body::Stale(s)) = &out[0].msg().body else {
            panic!()
        };
        assert_eq!(
            (s.symbol.as_str(), s.reason.as_str(), s.dropped),
            ("BTC-USD", "feed_gap", 0)
        );
        assert_eq!(m.stale_reason(id), Some(FeedStale::FeedGap));
        out.clear();
        // Later deltas, even the one that would have been next, are BookStale.
        for seq in [12, 14, 15] {
            assert_eq!(
                m.handle_delta(A, bid_delta("BTC-USD", seq), 3, &mut out),
                Err(RejectReason::BookStale("BTC-USD".into()))
            );
        }
        // An invalid delta does not emit a second Stale.
        m.handle_invalid_delta(A, "BTC-USD", &mut out);
        assert!(out.is_empty());
        assert_eq!(m.book(id), &book_before);
        assert_eq!(m.snapshot_seq(id), 2);
        // Trades keep flowing.
        assert_eq!(m.handle_trade(A, trade("BTC-USD"), 4, &mut out), Ok(id));
        assert_eq!(out.len(), 1);
        out.clear();
        // A snapshot resumes the book with the next seq.
        m.handle_snapshot(A, snap("BTC-USD", 20, &[(1, 1)], &[(2, 2)]), 5, &mut out)
            .unwrap();
        assert_eq!(m.stale_reason(id), None);
        assert_eq!(out[0].seq(), Some(3));
        m.handle_delta(A, bid_delta("BTC-USD", 21), 6, &mut out)
            .unwrap();
        assert_eq!(out[1].seq(), Some(4));
    }

    #[test]
    fn gap_resumed_by_another_feeds_snapshot() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        assert!(
            m.handle_delta(A, bid_delta("BTC-USD", 10), 1, &mut out)
                .is_err()
        ); // repeat = gap
        m.handle_snapshot(B, snap("BTC-USD", 1, &[], &[]), 2, &mut out)
            .unwrap();
        assert_eq!(m.stale_reason(id), None);
        m.handle_delta(B, bid_delta("BTC-USD", 2), 3, &mut out)
            .unwrap();
        let seqs: Vec<_> = out.iter().filter_map(Published::seq).collect();
        assert_eq!(seqs, vec![2, 3]);
    }

    #[test]
    fn invalid_delta_from_the_owner_is_a_gap() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_invalid_delta(A, "BTC-USD", &mut out);
        assert_eq!(stale_reasons(&out), vec![(id, FeedStale::FeedGap)]);
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", 11), 1, &mut out),
            Err(RejectReason::BookStale("BTC-USD".into()))
        );
        assert_eq!(out.len(), 1);
        assert_eq!(m.snapshot_seq(id), 1);
    }

    #[test]
    fn an_unappliable_delta_is_rejected_whole_and_is_a_gap() {
        for bad in [
            upd(pb::Side::Unspecified, 98, 1),
            upd(pb::Side::Bid, 98, -1),
            pb::LevelUpdate {
                side: 7,
                price: 1,
                size: 1,
            },
        ] {
            let (mut m, id) = market_with_btc();
            let before = m.book(id).clone();
            let mut out = Vec::new();
            let r = m.handle_delta(
                A,
                delta("BTC-USD", 11, vec![upd(pb::Side::Bid, 100, 0), bad]),
                1,
                &mut out,
            );
            assert!(matches!(r, Err(RejectReason::BadLevel(_))), "{r:?}");
            assert_eq!(m.book(id), &before, "nothing applied");
            assert_eq!(stale_reasons(&out), vec![(id, FeedStale::FeedGap)]);
            assert_eq!(m.snapshot_seq(id), 1);
        }
    }

    #[test]
    fn feed_down_stales_only_that_feeds_symbols() {
        let mut m = Market::new();
        let mut out = Vec::new();
        let btc = m
            .handle_snapshot(A, snap("BTC-USD", 1, &[(1, 1)], &[]), 0, &mut out)
            .unwrap();
        let eth = m
            .handle_snapshot(B, snap("ETH-USD", 1, &[(1, 1)], &[]), 0, &mut out)
            .unwrap();
        let sol = m
            .handle_snapshot(A, snap("SOL-USD", 1, &[(1, 1)], &[]), 0, &mut out)
            .unwrap();
        // A gapped book also gets feed_down.
        m.handle_invalid_delta(A, "SOL-USD", &mut out);
        out.clear();
        m.handle_feed_down(A, &mut out);
        assert_eq!(
            stale_reasons(&out),
            vec![(btc, FeedStale::FeedDown), (sol, FeedStale::FeedDown)]
        );
        let Some(Body::Stale(s)) = &out[0].msg().body else {
            panic!()
        };
        assert_eq!(
            (s.symbol.as_str(), s.reason.as_str(), s.dropped),
            ("BTC-USD", "feed_down", 0)
        );
        assert_eq!(m.stale_reason(btc), Some(FeedStale::FeedDown));
        assert_eq!(m.stale_reason(eth), None);
        assert_eq!(m.info(btc).unwrap().owner, None);
        // Books stay as they were.
        assert_eq!(m.book(btc).bids().collect::<Vec<_>>(), vec![lv(1, 1)]);
        // A second feed_down for the same feed does nothing.
        out.clear();
        m.handle_feed_down(A, &mut out);
        assert!(out.is_empty());
        // Nobody owns BTC now: deltas and trades from anyone are NotOwner.
        let r = m.handle_delta(B, bid_delta("BTC-USD", 2), 0, &mut out);
        assert_eq!(r, Err(RejectReason::NotOwner("BTC-USD".into())));
        assert!(m.handle_trade(B, trade("BTC-USD"), 0, &mut out).is_err());
        // B's ETH is untouched.
        assert_eq!(
            m.handle_delta(B, bid_delta("ETH-USD", 2), 0, &mut out),
            Ok(eth)
        );
    }

    #[test]
    fn a_reconnected_feed_owns_nothing_until_it_snapshots() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_feed_down(A, &mut out);
        let a2 = FeedId(3);
        assert_eq!(m.owned_by(a2), &[] as &[SymbolId]);
        assert_eq!(
            m.handle_delta(a2, bid_delta("BTC-USD", 11), 0, &mut out),
            Err(RejectReason::NotOwner("BTC-USD".into()))
        );
        out.clear();
        m.handle_snapshot(a2, snap("BTC-USD", 11, &[(5, 5)], &[]), 0, &mut out)
            .unwrap();
        assert_eq!(out[0].seq(), Some(2));
        assert_eq!(m.stale_reason(id), None);
        assert_eq!(
            m.handle_delta(a2, bid_delta("BTC-USD", 12), 0, &mut out),
            Ok(id)
        );
    }

    #[test]
    fn trades_have_their_own_contiguous_seq() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_trade(A, trade("BTC-USD"), 10, &mut out).unwrap();
        m.handle_delta(A, bid_delta("BTC-USD", 11), 11, &mut out)
            .unwrap();
        m.handle_trade(A, trade("BTC-USD"), 12, &mut out).unwrap();
        let Published::Trade { seq, msg, .. } = &out[2] else {
            panic!()
        };
        let Some(Body::Trade(t)) = &msg.body else {
            panic!()
        };
        assert_eq!(
            (
                *seq,
                t.seq,
                t.ingest_ts_ns,
                t.exchange_ts_ns,
                t.trade_id.as_str()
            ),
            (2, 2, 12, 3_000, "t")
        );
        assert_eq!(out[0].seq(), Some(1));
        assert_eq!(m.info(id).unwrap().trade_seq, 2);
        assert_eq!(m.snapshot_seq(id), 2);
    }

    #[test]
    fn bad_snapshots_change_nothing() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        let mut s = snap("BTC-USD", 1, &[(1, 1)], &[]);
        s.price_decimals = 19;
        assert_eq!(
            m.handle_snapshot(B, s, 0, &mut out),
            Err(RejectReason::BadDecimals(19))
        );
        let mut s = snap("ETH-USD", 1, &[(1, 1)], &[]);
        s.size_decimals = -1;
        assert_eq!(
            m.handle_snapshot(B, s, 0, &mut out),
            Err(RejectReason::BadDecimals(-1))
        );
        for (bids, asks) in [
            (vec![(1, 1), (2, 1)], vec![]),
            (vec![(1, 0)], vec![]),
            (vec![], vec![(5, 1), (5, 1)]),
        ] {
            let r = m.handle_snapshot(B, snap("BTC-USD", 1, &bids, &asks), 0, &mut out);
            assert!(matches!(r, Err(RejectReason::BadLevel(_))), "{r:?}");
            let r = m.handle_snapshot(B, snap("NEW", 1, &bids, &asks), 0, &mut out);
            assert!(matches!(r, Err(RejectReason::BadLevel(_))), "{r:?}");
        }
        assert!(out.is_empty());
        assert_eq!(m.len(), 1);
        assert_eq!(m.symbol_id("NEW"), None);
        assert_eq!(m.info(id).unwrap().owner, Some(A));
        assert_eq!(m.snapshot_seq(id), 1);
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", 11), 0, &mut out),
            Ok(id)
        );
    }

    #[test]
    fn re_snapshot_may_change_decimals() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        let mut s = snap("BTC-USD", 1, &[], &[]);
        s.price_decimals = 0;
        s.size_decimals = 18;
        m.handle_snapshot(A, s, 0, &mut out).unwrap();
        assert_eq!(m.decimals("BTC-USD"), Some((0, 18)));
        let s = m.snapshot(id);
        assert_eq!((s.price_decimals, s.size_decimals, s.checksum), (0, 18, 0));
    }

    fn limited(max_symbols: usize, max_book_levels: usize, max_delta_updates: usize) -> Market {
        Market::with_limits(MarketLimits {
            max_symbols,
            max_book_levels,
            max_delta_updates,
        })
    }

    #[test]
    fn a_new_symbol_past_the_limit_is_rejected_and_the_others_carry_on() {
        let mut m = limited(2, 100, 100);
        let mut out = Vec::new();
        let btc = m
            .handle_snapshot(A, snap("BTC-USD", 1, &[(1, 1)], &[]), 0, &mut out)
            .unwrap();
        m.handle_snapshot(B, snap("ETH-USD", 1, &[(1, 1)], &[]), 0, &mut out)
            .unwrap();
        out.clear();
        assert_eq!(
            m.handle_snapshot(A, snap("SOL-USD", 1, &[(1, 1)], &[]), 0, &mut out),
            Err(RejectReason::TooManySymbols {
                symbol: "SOL-USD".into(),
                max: 2
            })
        );
        assert_eq!(
            RejectReason::TooManySymbols {
                symbol: String::new(),
                max: 0
            }
            .label(),
            "too_many_symbols"
        );
        assert!(out.is_empty());
        assert_eq!((m.len(), m.symbol_id("SOL-USD")), (2, None));
        // Existing symbols: re-snapshots (even by another feed), deltas and trades.
        assert_eq!(
            m.handle_snapshot(B, snap("BTC-USD", 5, &[(2, 2)], &[]), 0, &mut out),
            Ok(btc)
        );
        assert_eq!(
            m.handle_delta(B, bid_delta("BTC-USD", 6), 0, &mut out),
            Ok(btc)
        );
        assert_eq!(m.handle_trade(B, trade("BTC-USD"), 0, &mut out), Ok(btc));
        assert_eq!(m.snapshot_seq(btc), 3);
    }

    #[test]
    fn a_snapshot_deeper_than_the_limit_is_rejected_and_changes_nothing() {
        let mut m = limited(10, 3, 100);
        let mut out = Vec::new();
        let id = m
            .handle_snapshot(
                A,
                snap("BTC-USD", 10, &[(100, 5)], &[(101, 2)]),
                0,
                &mut out,
            )
            .unwrap();
        out.clear();
        let four = [(100, 1), (99, 1), (98, 1), (97, 1)];
        let four_asks = [(101, 1), (102, 1), (103, 1), (104, 1)];
        for (bids, asks, side) in [
            (&four[..], &[][..], "bid"),
            (&[][..], &four_asks[..], "ask"),
        ] {
            for name in ["BTC-USD", "NEW"] {
                let r = m.handle_snapshot(B, snap(name, 1, bids, asks), 0, &mut out);
                assert_eq!(
                    r,
                    Err(RejectReason::BookTooDeep {
                        symbol: name.into(),
                        side,
                        depth: 4,
                        max: 3
                    })
                );
            }
        }
        assert!(out.is_empty());
        assert_eq!((m.len(), m.symbol_id("NEW")), (1, None));
        assert_eq!(m.info(id).unwrap().owner, Some(A));
        assert_eq!(m.book(id).bids().collect::<Vec<_>>(), vec![lv(100, 5)]);
        // Exactly at the limit is fine.
        let asks = [(101, 1), (102, 1), (103, 1)];
        m.handle_snapshot(A, snap("BTC-USD", 20, &four[..3], &asks), 0, &mut out)
            .unwrap();
        assert_eq!(m.info(id).unwrap().bid_depth, 3);
    }

    /// A delta rejected for a limit is an owner's rejected delta: the book
    /// turns stale (one `Stale{feed_gap}`), stays as it was, and resumes on
    /// the next snapshot; other books are untouched.
    #[test]
    fn deltas_past_the_depth_or_update_limits_gap_the_book() {
        let mut m = limited(10, 3, 4);
        let mut out = Vec::new();
        let btc = m
            .handle_snapshot(
                A,
                snap("BTC-USD", 10, &[(100, 5), (99, 1)], &[]),
                0,
                &mut out,
            )
            .unwrap();
        let eth = m
            .handle_snapshot(A, snap("ETH-USD", 1, &[(50, 1)], &[]), 0, &mut out)
            .unwrap();
        let cases: [(Vec<pb::LevelUpdate>, RejectReason); 2] = [
            (
                vec![upd(pb::Side::Bid, 98, 1), upd(pb::Side::Bid, 97, 1)],
                RejectReason::BookTooDeep {
                    symbol: "BTC-USD".into(),
                    side: "bid",
                    depth: 4,
                    max: 3,
                },
            ),
            (
                vec![upd(pb::Side::Bid, 100, 1); 5],
                RejectReason::TooManyUpdates {
                    symbol: "BTC-USD".into(),
                    updates: 5,
                    max: 4,
                },
            ),
        ];
        let mut feed_seq = 10;
        for (updates, reason) in cases {
            let before = m.book(btc).clone();
            out.clear();
            feed_seq += 1;
            let r = m.handle_delta(A, delta("BTC-USD", feed_seq, updates), 0, &mut out);
            assert_eq!(r, Err(reason));
            assert_eq!(stale_reasons(&out), vec![(btc, FeedStale::FeedGap)]);
            assert_eq!(m.book(btc), &before, "nothing applied");
            assert_eq!(
                m.handle_delta(A, bid_delta("BTC-USD", feed_seq + 1), 0, &mut out),
                Err(RejectReason::BookStale("BTC-USD".into()))
            );
            // ETH, same feed, carries on.
            let eth_seq = m.info(eth).unwrap().feed_seq + 1;
            assert_eq!(
                m.handle_delta(
                    A,
                    delta("ETH-USD", eth_seq, vec![upd(pb::Side::Bid, 49, 1)]),
                    0,
                    &mut out
                ),
                Ok(eth)
            );
            // A snapshot resumes BTC.
            feed_seq = 100;
            m.handle_snapshot(
                A,
                snap("BTC-USD", feed_seq, &[(100, 5), (99, 1)], &[]),
                0,
                &mut out,
            )
            .unwrap();
            assert_eq!(m.stale_reason(btc), None);
        }
        // At the limits exactly: 4 updates, ending at 3 levels, are applied.
        let ok = vec![
            upd(pb::Side::Bid, 98, 1),
            upd(pb::Side::Bid, 97, 1),
            upd(pb::Side::Bid, 99, 0),
            upd(pb::Side::Bid, 100, 7),
        ];
        assert_eq!(
            m.handle_delta(A, delta("BTC-USD", 101, ok), 0, &mut out),
            Ok(btc)
        );
        assert_eq!(
            m.book(btc).bids().collect::<Vec<_>>(),
            vec![lv(100, 7), lv(98, 1), lv(97, 1)]
        );
    }

    #[test]
    fn extreme_feed_seqs_never_panic() {
        let (mut m, id) = market_with_btc();
        let mut out = Vec::new();
        m.handle_snapshot(A, snap("BTC-USD", u64::MAX - 1, &[], &[]), 0, &mut out)
            .unwrap();
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", u64::MAX), 0, &mut out),
            Ok(id)
        );
        // Nothing can follow u64::MAX: any next delta is a gap.
        assert_eq!(
            m.handle_delta(A, bid_delta("BTC-USD", 0), 0, &mut out),
            Err(RejectReason::FeedGap {
                symbol: "BTC-USD".into(),
                expected: 0,
                got: 0
            })
        );
        m.handle_snapshot(A, snap("BTC-USD", u64::MAX, &[], &[]), 0, &mut out)
            .unwrap();
        assert!(
            m.handle_delta(A, bid_delta("BTC-USD", u64::MAX), 0, &mut out)
                .is_err()
        );
        // Invalid ids answer None.
        assert_eq!(m.snapshot(SymbolId(99)), pb::BookSnapshot::default());
        assert_eq!(m.snapshot_seq(SymbolId(99)), 0);
        assert_eq!(m.name(SymbolId(99)), "");
        assert!(m.book(SymbolId(u32::MAX)).is_empty());
        assert_eq!(m.stale_reason(SymbolId(1)), None);
    }

    #[test]
    fn many_feeds_and_symbols_keep_ownership_lists_consistent() {
        let mut m = Market::new();
        let mut out = Vec::new();
        let names: Vec<String> = (0..20).map(|i| format!("S{i}")).collect();
        let mut owner: HashMap<String, FeedId> = HashMap::new();
        let mut rng = Rng::new(7);
        for step in 0..2_000u64 {
            let name = &names[rng.below(20) as usize];
            let feed = FeedId(rng.below(4));
            if rng.below(10) == 0 {
                m.handle_feed_down(feed, &mut out);
                owner.retain(|_, f| *f != feed);
            } else {
                m.handle_snapshot(feed, snap(name, step, &[], &[]), 0, &mut out)
                    .unwrap();
                owner.insert(name.clone(), feed);
            }
            for f in 0..4 {
                let mut mine: Vec<_> = m
                    .owned_by(FeedId(f))
                    .iter()
                    .map(|&id| m.name(id).to_string())
                    .collect();
                mine.sort();
                let mut expect: Vec<_> = owner
                    .iter()
                    .filter(|(_, o)| o.0 == f)
                    .map(|(n, _)| n.clone())
                    .collect();
                expect.sort();
                assert_eq!(mine, expect);
            }
        }
        let infos: Vec<_> = m.symbols().collect();
        assert_eq!(infos.len(), m.len());
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(info.id, SymbolId(i as u32));
            assert_eq!(info.owner, owner.get(info.name).copied());
        }
    }

    /// What a client that applies every published message holds per symbol.
    #[derive(Default)]
    struct Client {
        book: Option<OrderBook>,
        seq: u64,
        trade_seq: u64,
        stale: bool,
    }

    /// Applies `out` to the clients, checking PROTOCOL §4 on the way.
    fn consume(
        clients: &mut HashMap<SymbolId, Client>,
        out: &mut Vec<Published>,
    ) -> Result<(), TestCaseError> {
        for p in out.drain(..) {
            let c = clients.entry(p.symbol()).or_default();
            match p {
                Published::Snapshot { seq, msg, .. } => {
                    let Some(Body::Snapshot(s)) = msg.body else {
                        return Err(TestCaseError::fail("not a snapshot"));
                    };
                    prop_assert_eq!(seq, c.seq + 1);
                    prop_assert_eq!(s.seq, seq);
                    let book = OrderBook::from_levels(&s.bids, &s.asks)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(book.checksum(), s.checksum);
                    c.book = Some(book);
                    c.seq = seq;
                    c.stale = false;
                }
                Published::Delta { seq, msg, .. } => {
                    let Some(Body::Delta(d)) = msg.body else {
                        return Err(TestCaseError::fail("not a delta"));
                    };
                    prop_assert!(!c.stale, "delta after Stale without a snapshot");
                    prop_assert_eq!(seq, c.seq + 1);
                    prop_assert_eq!(d.seq, seq);
                    let Some(book) = c.book.as_mut() else {
                        return Err(TestCaseError::fail("delta before snapshot"));
                    };
                    for u in &d.updates {
                        book.apply(Side::from_pb(u.side).unwrap(), u.price, u.size);
                    }
                    prop_assert_eq!(book.checksum(), d.checksum);
                    c.seq = seq;
                }
                Published::Trade { seq, .. } => {
                    prop_assert_eq!(seq, c.trade_seq + 1);
                    c.trade_seq = seq;
                }
                Published::Stale { .. } => c.stale = true,
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A client rebuilding books from the published snapshots and deltas
        /// holds the market's books, with matching checksums, whatever gaps,
        /// invalid deltas, re-snapshots, feed switches and disconnects happen.
        #[test]
        fn published_stream_rebuilds_the_market(
            seed in any::<u64>(),
            symbols in 1usize..6,
            depth in 1usize..30,
            events in 0usize..400,
            gap_per_mille in 0u64..60,
            invalid_per_mille in 0u64..30,
            resnap_per_mille in 0u64..60,
            switch_per_mille in 0u64..15,
        ) {
            let mut synth = SynthMarket::new(SynthConfig { seed, symbols, depth, trade_ratio: 0.2, ..SynthConfig::default() });
            let mut rng = Rng::new(seed ^ 0x5eed);
            let mut m = Market::new();
            let mut out = Vec::new();
            let mut clients = HashMap::new();
            let mut feed = FeedId(1);
            // Symbols whose feed stream lost a delta since their last snapshot.
            let mut gapped = vec![false; symbols];
            for s in synth.snapshots(0) {
                let Some(In::Snapshot(s)) = s.body else { unreachable!() };
                m.handle_snapshot(feed, s, 0, &mut out).unwrap();
            }
            consume(&mut clients, &mut out)?;
            for ts in 1..=events as u64 {
                let ev = synth.next_event(ts);
                match ev.body {
                    Some(In::Delta(d)) => {
                        let i = synth.index_of(&d.symbol).unwrap();
                        if rng.below(1000) < gap_per_mille {
                            gapped[i] = true; // lost on the way
                        } else if rng.below(1000) < invalid_per_mille {
                            m.handle_invalid_delta(feed, &d.symbol, &mut out);
                            gapped[i] = true;
                        } else {
                            let r = m.handle_delta(feed, d, ts, &mut out);
                            if gapped[i] {
                                prop_assert!(matches!(r, Err(RejectReason::FeedGap { .. } | RejectReason::BookStale(_))), "{:?}", r);
                            } else {
                                prop_assert!(r.is_ok(), "{:?}", r);
                            }
                        }
                    }
                    Some(In::Trade(t)) => prop_assert!(m.handle_trade(feed, t, ts, &mut out).is_ok()),
                    other => return Err(TestCaseError::fail(format!("unexpected event {other:?}"))),
                }
                if rng.below(1000) < resnap_per_mille {
                    let i = rng.below(symbols as u64) as usize;
                    let Some(In::Snapshot(s)) = synth.snapshot(i, ts).body else { unreachable!() };
                    m.handle_snapshot(feed, s, ts, &mut out).unwrap();
                    gapped[i] = false;
                }
                if rng.below(1000) < switch_per_mille {
                    if rng.below(2) == 0 {
                        m.handle_feed_down(feed, &mut out);
                    }
                    feed = FeedId(feed.0 + 1);
                    for s in synth.snapshots(ts) {
                        let Some(In::Snapshot(s)) = s.body else { unreachable!() };
                        m.handle_snapshot(feed, s, ts, &mut out).unwrap();
                    }
                    gapped.iter_mut().for_each(|g| *g = false);
                }
                consume(&mut clients, &mut out)?;
            }
            for info in m.symbols() {
                let c = &clients[&info.id];
                prop_assert_eq!(c.book.as_ref(), Some(m.book(info.id)));
                prop_assert_eq!(c.seq, info.seq);
                prop_assert_eq!(c.trade_seq, info.trade_seq);
                prop_assert_eq!(c.stale, info.stale.is_some());
                let s = m.snapshot(info.id);
                prop_assert_eq!(s.checksum, c.book.as_ref().unwrap().checksum());
                prop_assert_eq!(s.seq, c.seq);
                // Where no gap happened, the market's book is the feed's.
                let i = synth.index_of(info.name).unwrap();
                if !gapped[i] {
                    prop_assert_eq!(Some(m.book(info.id)), synth.book(i));
                }
            }
        }
    }

    /// The worst costs the default limits allow, printed, not asserted (a
    /// timing, not a test): run in release,
    /// `cargo test --release --lib book::market::tests::worst_case_costs -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing: run in release with --ignored --nocapture"]
    fn worst_case_costs() {
        use std::time::{Duration, Instant};

        use crate::book::decode::{FeedDecoder, Framing, encode_json_line, encode_proto};

        const ROUNDS: usize = 7;
        /// Median of `ROUNDS` runs of `f` (each on fresh state from `setup`).
        fn median<S>(mut setup: impl FnMut() -> S, mut f: impl FnMut(S)) -> Duration {
            let mut times: Vec<Duration> = (0..ROUNDS)
                .map(|_| {
                    let s = setup();
                    let t = Instant::now();
                    f(s);
                    t.elapsed()
                })
                .collect();
            times.sort();
            times[ROUNDS / 2]
        }
        let limits = MarketLimits::default();
        let cap = limits.max_book_levels as i64;
        let max_updates = limits.max_delta_updates;
        let full: Vec<(i64, i64)> = (0..cap).map(|i| (1_000_000 - i, 1)).collect();
        let full_asks: Vec<(i64, i64)> = (0..cap).map(|i| (1_000_001 + i, 1)).collect();
        let full_market = || {
            let mut m = Market::with_limits(limits);
            let mut out = Vec::new();
            m.handle_snapshot(A, snap("X", 0, &full, &full_asks), 0, &mut out)
                .unwrap();
            m
        };
        let deepest = 1_000_000 - cap + 1;
        println!(
            "limits: {} levels a side, {} updates a delta",
            cap, max_updates
        );

        // 1. One delta at the caps, every update shifting a whole side: the
        //    deepest bid removed and put back, over and over.
        let churn: Vec<pb::LevelUpdate> = (0..max_updates)
            .map(|k| upd(pb::Side::Bid, deepest, (k % 2) as i64))
            .collect();
        let t = median(full_market, |mut m| {
            let mut out = Vec::new();
            m.handle_delta(A, delta("X", 1, churn.clone()), 0, &mut out)
                .unwrap();
        });
        let t_old = median(
            || full_market().book(SymbolId(0)).clone(),
            |mut b| {
                for u in &churn {
                    b.apply(Side::Bid, u.price, u.size);
                }
            },
        );
        println!(
            "worst delta ({max_updates} deep moves on {cap} levels): {t:?}; one update at a time: {t_old:?}"
        );
        // 1b. A delta rewriting both full sides: every level removed, as many new.
        let rewrite: Vec<pb::LevelUpdate> = (0..cap)
            .flat_map(|i| {
                [
                    upd(pb::Side::Bid, 1_000_000 - i, 0),
                    upd(pb::Side::Bid, 1_000_000 - cap - i, 1),
                ]
            })
            .take(max_updates)
            .collect();
        let t = median(full_market, |mut m| {
            let mut out = Vec::new();
            m.handle_delta(A, delta("X", 1, rewrite.clone()), 0, &mut out)
                .unwrap();
        });
        println!(
            "delta rewriting a full side ({} updates): {t:?}",
            rewrite.len()
        );

        // 2. A stream of one-update deltas, each shifting a whole side.
        let n = 20_000u64;
        let mut bytes = Vec::new();
        encode_proto(
            &pb::IngestMessage {
                body: Some(In::Delta(delta(
                    "X",
                    1,
                    vec![upd(pb::Side::Bid, deepest, 0)],
                ))),
            },
            &mut bytes,
        );
        for (name, price) in [("deep", deepest), ("touch", 1_000_000)] {
            let t = median(full_market, |mut m| {
                let mut out = Vec::new();
                for seq in 1..=n {
                    let size = (seq % 2) as i64;
                    let d = delta("X", seq, vec![upd(pb::Side::Bid, price, size)]);
                    m.handle_delta(A, d, 0, &mut out).unwrap();
                    out.clear();
                }
            });
            let per = t / n as u32;
            let per_mib = per * ((1u32 << 20) / bytes.len() as u32);
            println!(
                "one-update deltas at the {name} of a {cap}-level side: {per:?} each; \
                 {per_mib:?} per MiB of such deltas ({} bytes each)",
                bytes.len()
            );
        }

        // 3. The largest messages the frame limit allows, rejected.
        let decode_and_apply = |framing: Framing, input: &[u8], m: &mut Market| {
            let mut dec = FeedDecoder::new(framing, None, MAX_INGEST_FRAME_BYTES);
            dec.handle_bytes(input);
            let mut out = Vec::new();
            let mut reasons = Vec::new();
            while let Ok(Some(msg)) = dec.poll_message(&|s| m.decimals(s)) {
                let r = match msg {
                    Ok(crate::book::decode::Decoded::Delta(d)) => m.handle_delta(A, d, 0, &mut out),
                    Ok(crate::book::decode::Decoded::Snapshot(s)) => {
                        m.handle_snapshot(A, s, 0, &mut out)
                    }
                    other => panic!("{other:?}"),
                };
                reasons.push(r.map_err(|e| e.label()));
            }
            reasons
        };
        let big_updates: Vec<pb::LevelUpdate> = (0..131_000)
            .map(|k| upd(pb::Side::Bid, k % 100, 1))
            .collect();
        let mut proto_delta = Vec::new();
        encode_proto(
            &pb::IngestMessage {
                body: Some(In::Delta(delta("X", 1, big_updates.clone()))),
            },
            &mut proto_delta,
        );
        let mut json_delta = String::new();
        encode_json_line(
            &pb::IngestMessage {
                body: Some(In::Delta(delta("X", 1, big_updates[..70_000].to_vec()))),
            },
            0,
            0,
            &mut json_delta,
        );
        let scrambled: Vec<(i64, i64)> = (0..65_000).map(|k| ((k * 7_919) % 65_003, 1)).collect();
        let mut proto_snap = Vec::new();
        encode_proto(
            &pb::IngestMessage {
                body: Some(In::Snapshot(snap("X", 1, &scrambled, &[]))),
            },
            &mut proto_snap,
        );
        let sorted: Vec<(i64, i64)> = (0..65_000).map(|k| (100_000 - k, 1)).collect();
        let mut proto_sorted = Vec::new();
        encode_proto(
            &pb::IngestMessage {
                body: Some(In::Snapshot(snap("X", 1, &sorted, &[]))),
            },
            &mut proto_sorted,
        );
        let mut proto_full = Vec::new();
        encode_proto(
            &pb::IngestMessage {
                body: Some(In::Snapshot(snap("X", 1, &full, &full_asks))),
            },
            &mut proto_full,
        );
        for (name, framing, input) in [
            (
                "protobuf delta, too many updates",
                Framing::Protobuf,
                &proto_delta,
            ),
            (
                "JSON delta, too many updates",
                Framing::JsonLines,
                json_delta.as_bytes().to_vec().as_ref(),
            ),
            (
                "protobuf snapshot, unordered levels",
                Framing::Protobuf,
                &proto_snap,
            ),
            (
                "protobuf snapshot, too deep",
                Framing::Protobuf,
                &proto_sorted,
            ),
            (
                "protobuf snapshot at the depth cap",
                Framing::Protobuf,
                &proto_full,
            ),
        ] {
            let mut reasons = Vec::new();
            let t = median(full_market, |mut m| {
                reasons = decode_and_apply(framing, input, &mut m);
            });
            println!(
                "{name} ({} KiB): {t:?} to decode and answer {reasons:?}",
                input.len() / 1024
            );
        }
    }
}
