//! What to do when `accept` fails for lack of resources (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`): the pending connections stay in the listen backlog,
//! and an edge-triggered listener will not report them again until a new one
//! arrives, so the loop must retry on a timer ([`RETRY_NS`]); and the failure
//! repeats on every retry, so it is logged through a [`LogThrottle`]: the
//! first, then at most once per [`LOG_EVERY_NS`] with a count.
//!
//! Pure: time is an argument. Used by the worker and ingest accept loops.

use std::io;

use crate::metrics::LogThrottle;

/// Retry accepting this long after a resource failure.
pub const RETRY_NS: u64 = 100_000_000;
/// At most one log line per this long while failures go on.
pub const LOG_EVERY_NS: u64 = 10_000_000_000;

/// Whether an accept error is a lack of resources (retry on the timer)
/// rather than a problem of that one connection (carry on at once).
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(errno::EMFILE | errno::ENFILE | errno::ENOBUFS | errno::ENOMEM)
    )
}

/// errno values (Linux), without a libc call for four constants.
mod errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// The state of one accept loop's resource failures.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    retry_at_ns: Option<u64>,
    log: LogThrottle,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            retry_at_ns: None,
            log: LogThrottle::new(LOG_EVERY_NS),
        }
    }
}

/// What the loop does about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnFailure {
    /// Accept again at this time, even without a new readiness event.
    pub retry_at_ns: u64,
    /// Log now, saying that this many failures were not logged since the
    /// last line (0 the first time); `None`: stay quiet.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    /// An accept failed for lack of resources at `now_ns`.
    pub fn on_failure(&mut self, now_ns: u64) -> OnFailure {
        let retry_at_ns = now_ns.saturating_add(RETRY_NS);
        self.retry_at_ns = Some(retry_at_ns);
        OnFailure {
            retry_at_ns,
            log: self.log.handle_event(now_ns),
        }
    }

    /// An accept succeeded, or found the backlog empty: no retry is due.
    /// The log interval goes on (a limit hit again and again, each freed
    /// descriptor taken by the next queued connection, stays one line per
    /// interval).
    pub fn on_success(&mut self) {
        self.retry_at_ns = None;
    }

    /// When to accept again without an event, if a failure is pending.
    pub fn retry_at_ns(&self) -> Option<u64> {
        self.retry_at_ns
    }

    /// Whether the retry is due at `now_ns` (then accept again).
    pub fn due(&self, now_ns: u64) -> bool {
        self.retry_at_ns.is_some_and(|t| now_ns >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_on_a_timer_and_logs_once_per_interval() {
        let mut b = AcceptBackoff::default();
        assert!(!b.due(0));
        let f = b.on_failure(1_000);
        assert_eq!(
            f,
            OnFailure {
                retry_at_ns: 1_000 + RETRY_NS,
                log: Some(0)
            }
        );
        assert!(!b.due(1_000 + RETRY_NS - 1));
        assert!(b.due(1_000 + RETRY_NS));
        // Failing again at every retry: silent until the interval passed.
        let mut t = 1_000;
        for _ in 0..50 {
            t += RETRY_NS;
            assert_eq!(b.on_failure(t).log, None);
        }
        t += LOG_EVERY_NS;
        assert_eq!(b.on_failure(t).log, Some(50), "the 50 silent ones");
        // Accepting works again for a while: no retry due, and the log
        // interval still holds for the next failure.
        b.on_success();
        assert_eq!(b.retry_at_ns(), None);
        assert_eq!(b.on_failure(t + 1).log, None);
        assert_eq!(b.on_failure(t + LOG_EVERY_NS).log, Some(1));
    }

    #[test]
    fn only_resource_errors_back_off() {
        assert!(is_resource_error(&io::Error::from_raw_os_error(24)));
        assert!(is_resource_error(&io::Error::from_raw_os_error(23)));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(103))); // ECONNABORTED
        assert!(!is_resource_error(&io::Error::other("x")));
    }
}
