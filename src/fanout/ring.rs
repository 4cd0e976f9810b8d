//! The messages that cross threads on the market-data path: one `rtrb` SPSC
//! ring ingest → worker ([`ToWorker`]) and one worker → ingest ([`ToIngest`])
//! per worker. Frames inside are already encoded: a worker never encodes
//! market data.
//!
//! # Invariants
//!
//! - Each ring is FIFO, so per symbol a worker sees data in the ingest thread's
//!   publish order: after a [`ToWorker::Snapshot`] with seq `S`, every
//!   [`DataKind::Delta`] of that symbol has seq > `S`.
//! - The ingest thread never blocks on a ring: when one is full it drops data for
//!   that worker and later sends [`ToWorker::Dropped`] for each symbol it dropped,
//!   before any further data of that symbol.

use std::sync::Arc;

use crate::book::SymbolId;
use crate::book::market::FeedStale;
use crate::wire::{EncodedFrame, Rendering};

use super::render::Rendered;

/// Index of a worker thread (`worker-N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u16);

/// Which list of a stream a subscriber is on: every book channel (a
/// symbol's full book, or a derived stream of it, PROTOCOL §9) is `Book`;
/// the symbol's trades are `Trades`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Book,
    Trades,
}

/// One published message and how a worker routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A book delta: to book subscribers that hold a snapshot older than it.
    Delta,
    /// A trade: to trades subscribers.
    Trade,
    /// The feed replaced the book: a full `BookSnapshot` to every book
    /// subscriber; a subscriber awaiting a snapshot takes it as its snapshot.
    BookReplaced,
    /// `Stale{feed_gap|feed_down}`: to book subscribers (and, for `FeedDown`,
    /// trades subscribers too, PROTOCOL §4).
    FeedStale(FeedStale),
}

/// Ingest → worker.
#[derive(Debug, Clone)]
pub enum ToWorker {
    /// A symbol appeared or its decimals or epoch changed. Sent to every worker, never
    /// dropped; workers keep their own directory from these.
    Instrument {
        symbol: SymbolId,
        name: Arc<str>,
        price_decimals: u32,
        size_decimals: u32,
        /// PROTOCOL §10: the history the symbol's seq belongs to.
        epoch: u64,
    },
    /// Published market data for a stream this worker has interest in.
    /// `seq` is the book seq (deltas, replaced books) or the trade seq (trades).
    /// `prev_seq` is the seq of the stream's previous delta (PROTOCOL §9): a
    /// subscriber holding it takes this one; on a symbol's full book it is
    /// `seq - 1`, on a derived one the last emission's.
    /// `frames` holds the protobuf frame and each rendering the worker has
    /// interest in for the stream (`ToIngest::Rendering`).
    Data {
        symbol: SymbolId,
        kind: DataKind,
        seq: u64,
        prev_seq: u64,
        ingest_ts_ns: u64,
        frames: Rendered,
    },
    /// The answer to [`ToIngest::SnapshotRequest`]: the current book at `seq`,
    /// or, if the book is stale for a feed reason, `stale` and no frames (the
    /// snapshot follows as [`DataKind::BookReplaced`] when the feed recovers).
    Snapshot {
        symbol: SymbolId,
        seq: u64,
        frames: Option<Rendered>,
        stale: Option<FeedStale>,
    },
    /// The answer to the [`ToIngest::Resume`] with this `token`.
    Resumed { token: u64, answer: ResumeAnswer },
    /// The ring was full: this many deltas and trades of `symbol` never reached
    /// this worker. Book subscribers must resync (Stale + snapshot).
    /// `feed_down`: a `Stale{feed_down}` was among the lost messages, so trades
    /// subscribers must be told it too (PROTOCOL §4: every subscriber gets it;
    /// book subscribers learn it from their resync's answer).
    Dropped {
        symbol: SymbolId,
        deltas: u64,
        trades: u64,
        feed_down: bool,
    },
}

/// The answer to [`ToIngest::Resume`] (PROTOCOL §10).
#[derive(Debug, Clone)]
pub enum ResumeAnswer {
    /// Every message after the client's seq, in the client's rendering,
    /// oldest first; the stream continues after `last` (the client's seq
    /// when nothing was missed).
    Hit {
        last: u64,
        frames: Vec<EncodedFrame>,
    },
    /// Not held any more (or never, or another epoch): a book resyncs with
    /// a snapshot; trades get `Stale{slow_consumer_trades, dropped}`.
    Miss { dropped: u64 },
    /// The book is stale for a feed reason: the client gets that `Stale`
    /// and the snapshot when the feed recovers.
    Stale(FeedStale),
}

/// Worker → ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToIngest {
    /// The worker's first local subscriber of `channel` on `symbol` (`on`), or its last one left.
    Interest {
        symbol: SymbolId,
        channel: Lane,
        on: bool,
    },
    /// Whether the worker has any subscriber of `symbol` (a stream) that
    /// takes `rendering` (never sent for protobuf, which every message has).
    Rendering {
        symbol: SymbolId,
        rendering: Rendering,
        on: bool,
    },
    /// One request per (worker, symbol) however many local clients wait.
    SnapshotRequest { symbol: SymbolId },
    /// One client's resume (PROTOCOL §10), answered by
    /// [`ToWorker::Resumed`] through the same FIFO ring, so what follows it
    /// is gap-free.
    Resume(ResumeRequest),
}

/// "Every message of `symbol`'s `lane` after `after_seq` in `epoch`, in
/// `rendering`", for the answer with this `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeRequest {
    pub token: u64,
    pub symbol: SymbolId,
    pub lane: Lane,
    pub epoch: u64,
    pub after_seq: u64,
    pub rendering: Rendering,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring slot holds one `ToWorker`: its size times `--ring-capacity`
    /// is each worker ring's memory (the renderings are 80 of them).
    #[test]
    fn ring_messages_stay_small() {
        let slot = std::mem::size_of::<ToWorker>();
        // 112 bytes: 7 MiB per worker at the default 65,536 slots.
        assert!(slot <= 112, "ToWorker is {slot} bytes");
        assert!(std::mem::size_of::<ToIngest>() <= 48);
    }
}
