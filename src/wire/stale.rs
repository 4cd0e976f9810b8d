//! [`StaleReason`]: every `Stale.reason` a client can be sent (PROTOCOL §4),
//! and the one place their strings are spelled. The engine renders them, the
//! load generator counts them by the same names.
//!
//! Pure values. Never touches sockets.

/// Why a client is told a stream is stale (`Stale.reason`, PROTOCOL §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleReason {
    /// The client's connection fell behind and book deltas were dropped for
    /// it; a snapshot follows.
    SlowConsumer,
    /// The same for trades; the trade stream restarts with the next trade.
    SlowConsumerTrades,
    /// The owning feed skipped a sequence number or sent a delta that could
    /// not be applied; a snapshot follows when the feed replaces the book.
    FeedGap,
    /// The owning feed disconnected (book and trades subscribers are told).
    FeedDown,
}

impl StaleReason {
    /// Every reason, in the order the load generator reports them.
    pub const ALL: [StaleReason; 4] = [
        StaleReason::SlowConsumer,
        StaleReason::SlowConsumerTrades,
        StaleReason::FeedGap,
        StaleReason::FeedDown,
    ];

    /// The `Stale.reason` string (PROTOCOL §4).
    pub const fn as_str(self) -> &'static str {
        match self {
            StaleReason::SlowConsumer => "slow_consumer",
            StaleReason::SlowConsumerTrades => "slow_consumer_trades",
            StaleReason::FeedGap => "feed_gap",
            StaleReason::FeedDown => "feed_down",
        }
    }

    /// The reason a `Stale.reason` string names, if it is one of ours.
    pub fn from_bytes(reason: &[u8]) -> Option<StaleReason> {
        StaleReason::ALL
            .into_iter()
            .find(|r| r.as_str().as_bytes() == reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_string() {
        for r in StaleReason::ALL {
            assert_eq!(StaleReason::from_bytes(r.as_str().as_bytes()), Some(r));
        }
        assert_eq!(StaleReason::from_bytes(b"other"), None);
    }
}
