//! [`LogThrottle`]: when to log an event that can repeat without end (accept
//! failing for want of file descriptors, connections refused at a limit): the
//! first time, then at most once per interval with how many were not logged.
//!
//! A sans-IO decision owned by the one thread that logs the event; `now_ns`
//! is an argument (any monotonic origin). Never logs itself.

/// The logging decision for one kind of repeating event.
///
/// # Invariants
///
/// - `suppressed` counts the events since the last one logged.
/// - Two logged events are at least `interval_ns` apart.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    interval_ns: u64,
    /// When the next event may be logged; `None` before the first.
    next_ns: Option<u64>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `interval_ns`.
    pub const fn new(interval_ns: u64) -> LogThrottle {
        LogThrottle {
            interval_ns,
            next_ns: None,
            suppressed: 0,
        }
    }

    /// One event at `now_ns`. `Some(n)`: log it, saying that `n` more
    /// happened since the last line (0 the first time); `None`: stay quiet
    /// (the event is counted for the next line).
    pub fn handle_event(&mut self, now_ns: u64) -> Option<u64> {
        match self.next_ns {
            Some(next) if now_ns < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next_ns = Some(now_ns.saturating_add(self.interval_ns));
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Events not logged since the last line.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn first_then_once_per_interval_with_the_count() {
        let mut t = LogThrottle::new(10 * S);
        assert_eq!(t.handle_event(5 * S), Some(0));
        // A retry every 100 ms for 10 s: quiet, counted.
        for i in 1..100 {
            assert_eq!(t.handle_event(5 * S + i * S / 10), None);
        }
        assert_eq!(t.suppressed(), 99);
        assert_eq!(t.handle_event(15 * S), Some(99));
        assert_eq!(t.suppressed(), 0);
        assert_eq!(t.handle_event(15 * S + 1), None);
        // After a quiet spell the next event logs at once.
        assert_eq!(t.handle_event(100 * S), Some(1));
        assert_eq!(t.handle_event(100 * S), None);
    }

    #[test]
    fn time_zero_and_the_end_of_time() {
        let mut t = LogThrottle::new(u64::MAX);
        assert_eq!(t.handle_event(0), Some(0));
        assert_eq!(t.handle_event(u64::MAX - 1), None);
        let mut t = LogThrottle::new(10);
        assert_eq!(t.handle_event(u64::MAX - 20), Some(0));
        assert_eq!(t.handle_event(u64::MAX - 11), None);
        // No overflow past the end: the deadline saturates.
        assert_eq!(t.handle_event(u64::MAX), Some(1));
        assert_eq!(t.handle_event(u64::MAX), Some(0));
    }
}
