//! [`FeedDeadlines`]: the two deadlines of one feed connection (PROTOCOL §3
//! leaves them to the server): its first message must be complete within the
//! hello timeout of the accept, and a message once begun must be complete
//! within the message timeout.
//!
//! The first stops silent connections from holding the `max_feeds` slots
//! (with a token configured, nobody without it holds a slot for longer). The
//! second closes a slow-loris sender, or a feed handler stuck half-way through
//! a write, whose books would otherwise look live while nothing arrives:
//! closing it publishes `Stale{feed_down}`. Between messages a feed may stay
//! silent as long as it likes (a quiet market is no fault).
//!
//! Sans-IO, owned by the ingest thread, one per feed: the loop reports each
//! read with the monotonic time it was made and asks, now and then, whether a
//! deadline has passed.

use super::StreamError;

/// The deadlines of one feed connection; see the module doc.
///
/// # Invariants
///
/// - `partial_since_ns` is set exactly when the decoder holds bytes of an
///   incomplete message (as of the last read), and is then the time of the
///   first read since the last complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedDeadlines {
    accepted_ns: u64,
    first_done: bool,
    partial_since_ns: Option<u64>,
}

impl FeedDeadlines {
    /// A connection accepted at `now_ns`.
    pub fn new(now_ns: u64) -> FeedDeadlines {
        FeedDeadlines {
            accepted_ns: now_ns,
            first_done: false,
            partial_since_ns: None,
        }
    }

    /// A read at `now_ns` after which the decoder yielded `completed`
    /// messages (accepted or rejected: both were readable) and still holds
    /// `buffered_bytes` of the next one.
    pub fn handle_read(&mut self, now_ns: u64, completed: usize, buffered_bytes: usize) {
        if completed > 0 {
            self.first_done = true;
            self.partial_since_ns = None;
        }
        if buffered_bytes == 0 {
            self.partial_since_ns = None;
        } else if self.partial_since_ns.is_none() {
            self.partial_since_ns = Some(now_ns);
        }
    }

    /// Whether the first message has been completed.
    pub fn greeted(&self) -> bool {
        self.first_done
    }

    /// The deadline that has passed at `now_ns`, if any, as the reason to
    /// close. A timeout of 0 is no deadline.
    pub fn poll_expired(
        &self,
        now_ns: u64,
        hello_timeout_ms: u64,
        message_timeout_ms: u64,
    ) -> Option<StreamError> {
        let passed = |since: u64, ms: u64| {
            ms > 0 && now_ns.saturating_sub(since) >= ms.saturating_mul(1_000_000)
        };
        if !self.first_done && passed(self.accepted_ns, hello_timeout_ms) {
            return Some(StreamError::HelloTimeout {
                after_ms: hello_timeout_ms,
            });
        }
        match self.partial_since_ns {
            Some(since) if passed(since, message_timeout_ms) => Some(StreamError::MessageTimeout {
                after_ms: message_timeout_ms,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn silence_after_connecting_hits_the_hello_deadline() {
        let d = FeedDeadlines::new(1_000 * MS);
        assert_eq!(d.poll_expired(1_000 * MS, 100, 500), None);
        assert_eq!(d.poll_expired(1_099 * MS, 100, 500), None);
        assert_eq!(
            d.poll_expired(1_100 * MS, 100, 500),
            Some(StreamError::HelloTimeout { after_ms: 100 })
        );
        // 0: no deadline.
        assert_eq!(d.poll_expired(u64::MAX, 0, 0), None);
        assert!(!d.greeted());
    }

    #[test]
    fn a_first_message_dribbled_in_too_slowly_is_a_hello_timeout() {
        let mut d = FeedDeadlines::new(0);
        for t in 0..10 {
            d.handle_read(t * 10 * MS, 0, t as usize + 1);
        }
        assert_eq!(
            d.poll_expired(100 * MS, 100, 500),
            Some(StreamError::HelloTimeout { after_ms: 100 })
        );
        // Without a hello deadline the message deadline still applies.
        assert_eq!(d.poll_expired(100 * MS, 0, 500), None);
        assert_eq!(
            d.poll_expired(500 * MS, 0, 500),
            Some(StreamError::MessageTimeout { after_ms: 500 })
        );
    }

    #[test]
    fn a_steady_feed_never_expires_even_when_every_read_ends_mid_message() {
        let mut d = FeedDeadlines::new(0);
        // Each read completes messages and leaves the start of the next one.
        for t in 1..=10_000u64 {
            d.handle_read(t * MS, 3, 100);
            assert_eq!(d.poll_expired(t * MS + 499 * MS, 100, 500), None);
        }
        assert!(d.greeted());
        // Idle between messages: no deadline at all.
        d.handle_read(20_000 * MS, 1, 0);
        assert_eq!(d.poll_expired(u64::MAX, 100, 500), None);
    }

    #[test]
    fn a_message_begun_must_complete_in_time() {
        let mut d = FeedDeadlines::new(0);
        d.handle_read(10 * MS, 1, 0);
        // One byte a second of the next message: the clock runs from the first.
        for t in 0..5u64 {
            d.handle_read((1_000 + t * 100) * MS, 0, t as usize + 1);
        }
        assert_eq!(d.poll_expired(1_499 * MS, 100, 500), None);
        assert_eq!(
            d.poll_expired(1_500 * MS, 100, 500),
            Some(StreamError::MessageTimeout { after_ms: 500 })
        );
        // Completing it clears the deadline.
        d.handle_read(1_450 * MS, 1, 0);
        assert_eq!(d.poll_expired(10_000 * MS, 100, 500), None);
    }
}
