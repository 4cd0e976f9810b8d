//! [`WorkerCore::check_invariants`]: the index invariants, checked on demand.

use super::{ConnState, WorkerCore};

impl WorkerCore {
    /// Verifies the index invariants (tests and debugging; O(index)).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.subs.check()?;
        for (i, c) in self.conns.iter().enumerate() {
            if c.state != ConnState::Open && self.subs.conn_count(i as u32) > 0 {
                return Err(format!("conn {i} is {:?} but holds subscriptions", c.state));
            }
        }
        Ok(())
    }
}
