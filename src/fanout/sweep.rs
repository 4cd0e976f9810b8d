//! [`Sweep`]: visits every connection slot of a worker once per period, a
//! share at a time, for the checks that need no exact deadline: heartbeats
//! (PROTOCOL §7: ping, 4003 after silence; §11: the SSE comment line).
//!
//! Why not an entry per connection in the timing wheel: every open
//! connection is always due for its next heartbeat, so the wheel would hold
//! one node per connection (40 bytes, plus the handle in the slot) for the
//! whole life of every idle connection. The worker's wheel holds one
//! recurring entry that runs the sweep instead, and the sweep holds nothing
//! per connection: the slot's own `last_read_ns` and
//! `last_ping_ns` say whether it is due. Its cost is the same order as the
//! wheel's (one visit per connection per period, spread evenly over the
//! period, never a burst), and a check is late by at most one period, which
//! the worker sets to a fraction of the ping interval.
//!
//! Sans-IO: `now_ns` is an argument (any monotonic origin).

/// A cursor over `0..len` that advances in proportion to time.
///
/// # Invariants
///
/// - Between two calls, the slots handed out are the ones following the
///   last handed out (wrapping at `len`), as many as `len × elapsed /
///   period` with the remainder carried, and never more than `len`: so with
///   `len` fixed, every slot is handed out once in every span of one period
///   (plus the gap between two calls).
#[derive(Debug, Clone)]
pub struct Sweep {
    period_ns: u64,
    cursor: usize,
    last_ns: u64,
    /// Slot-nanoseconds not yet turned into a visit (< `period_ns`).
    owed: u128,
}

impl Sweep {
    /// A sweep starting at `now_ns` that covers every slot once per
    /// `period_ns` (at least 1 ns).
    pub fn new(period_ns: u64, now_ns: u64) -> Sweep {
        Sweep {
            period_ns: period_ns.max(1),
            cursor: 0,
            last_ns: now_ns,
            owed: 0,
        }
    }

    /// The slots to visit now, of `len` in all: the share of `len` that the
    /// time since the last call is of the period, following on from the last
    /// visit. A clock that went back hands out nothing.
    pub fn advance(&mut self, now_ns: u64, len: usize) -> impl Iterator<Item = usize> + use<> {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.owed += len as u128 * u128::from(elapsed);
        let mut n = self.owed / u128::from(self.period_ns);
        self.owed %= u128::from(self.period_ns);
        if n >= len as u128 {
            // A stall longer than the period (or no slots): each slot once.
            n = len as u128;
            self.owed = 0;
        }
        let (n, len) = (n as usize, len.max(1));
        let start = self.cursor % len;
        self.cursor = (start + n) % len;
        (start..start + n).map(move |i| i % len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn every_slot_once_per_period_in_small_steps() {
        let mut s = Sweep::new(100 * MS, 0);
        let mut visits = vec![0u32; 1_000];
        // Ten periods in steps of 3 ms (not a divisor of the period).
        let mut now = 0;
        while now + 3 * MS <= 1_000 * MS {
            now += 3 * MS;
            for slot in s.advance(now, visits.len()) {
                visits[slot] += 1;
            }
        }
        // 999 ms of ten 100 ms periods: each slot 9 or 10 times, in order.
        assert!(visits.iter().all(|&v| (9..=10).contains(&v)), "{visits:?}");
        let total: u32 = visits.iter().sum();
        assert_eq!(total, 9_990);
    }

    #[test]
    fn no_slot_waits_longer_than_a_period_and_a_step() {
        let mut s = Sweep::new(40 * MS, 0);
        let len = 777;
        let mut last_seen = vec![0u64; len];
        let mut now = 0;
        for _ in 0..2_000 {
            now += MS;
            for slot in s.advance(now, len) {
                assert!(
                    now - last_seen[slot] <= 40 * MS + MS,
                    "slot {slot} waited {} ms",
                    (now - last_seen[slot]) / MS
                );
                last_seen[slot] = now;
            }
        }
        assert!(last_seen.iter().all(|&t| now - t <= 41 * MS));
    }

    #[test]
    fn a_stall_visits_each_slot_once_not_more() {
        let mut s = Sweep::new(10 * MS, 0);
        let mut visits = vec![0u32; 50];
        for slot in s.advance(10_000 * MS, visits.len()) {
            visits[slot] += 1;
        }
        assert!(visits.iter().all(|&v| v == 1), "{visits:?}");
        // And the sweep carries on from there at its normal pace.
        assert_eq!(s.advance(10_001 * MS, 50).count(), 5);
    }

    #[test]
    fn nothing_to_visit_and_a_clock_that_goes_back() {
        let mut s = Sweep::new(10 * MS, 5 * MS);
        assert_eq!(s.advance(20 * MS, 0).count(), 0);
        assert_eq!(s.advance(MS, 100).count(), 0, "time went back");
        assert_eq!(s.advance(20 * MS, 100).count(), 0, "not past the last call");
        assert_eq!(s.advance(21 * MS, 100).count(), 10);
    }

    #[test]
    fn slots_added_or_removed_are_covered() {
        let mut s = Sweep::new(10 * MS, 0);
        // Half a period over 10 slots: slots 0..5.
        assert_eq!(s.advance(5 * MS, 10).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        // The table shrank below the cursor: it wraps, nothing is skipped twice.
        assert_eq!(s.advance(8 * MS, 4).collect::<Vec<_>>(), [1]);
        // It grew: the new slots come in turn.
        let v: Vec<_> = s.advance(18 * MS, 20).collect();
        assert_eq!(v, (2..22).map(|i| i % 20).collect::<Vec<_>>());
    }
}
