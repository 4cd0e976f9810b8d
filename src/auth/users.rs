//! The per-user connection table (PROTOCOL §8 `max_connections`): how many
//! connections each authenticated user holds in this process, so that the
//! limit is exact across every worker.
//!
//! A pure struct. The shell keeps one per process behind a mutex (like the
//! per-IP table) and touches it only when a connection authenticates (at the
//! upgrade or with a late `auth`) and when an authenticated connection
//! closes: never on the market-data path. Per node: a user may hold
//! `max_connections` on each node of a cluster (cluster-wide quotas are a
//! later step; README "Authentication").

use std::collections::HashMap;
use std::sync::Arc;

/// Why a user may not open one more connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFull {
    pub held: u32,
    pub max: u32,
}

/// Connections per `sub`.
///
/// # Invariants
///
/// - `held[sub]` equals the successful [`UserTable::connect`] calls for
///   `sub` not yet matched by [`UserTable::disconnect`].
/// - A user is in the table only while it holds a connection (memory
///   follows the live users).
#[derive(Debug, Default)]
pub struct UserTable {
    held: HashMap<Arc<str>, u32>,
}

impl UserTable {
    pub fn new() -> UserTable {
        UserTable::default()
    }

    /// One more connection of `sub`, if under `max` (`None`: no limit).
    pub fn connect(&mut self, sub: &Arc<str>, max: Option<u32>) -> Result<(), UserFull> {
        let held = self.held.get(&**sub).copied().unwrap_or(0);
        if let Some(max) = max
            && held >= max
        {
            return Err(UserFull { held, max });
        }
        *self.held.entry(sub.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// A connection of `sub` (counted by `connect`) is gone.
    pub fn disconnect(&mut self, sub: &str) {
        if let Some(n) = self.held.get_mut(sub) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(sub);
            }
        }
    }

    /// Connections `sub` holds.
    pub fn held(&self, sub: &str) -> u32 {
        self.held.get(sub).copied().unwrap_or(0)
    }

    /// Users holding at least one connection.
    pub fn users(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_limit_and_release() {
        let mut t = UserTable::new();
        let a: Arc<str> = Arc::from("alice");
        let b: Arc<str> = Arc::from("bob");
        assert!(t.connect(&a, Some(2)).is_ok());
        assert!(t.connect(&a, Some(2)).is_ok());
        assert_eq!(t.connect(&a, Some(2)), Err(UserFull { held: 2, max: 2 }));
        assert!(t.connect(&b, None).is_ok());
        assert_eq!(t.held("alice"), 2);
        t.disconnect("alice");
        assert!(t.connect(&a, Some(2)).is_ok());
        // A lower limit from a newer token applies to the next connection.
        assert!(t.connect(&a, Some(1)).is_err());
        t.disconnect("alice");
        t.disconnect("alice");
        t.disconnect("bob");
        assert_eq!(t.users(), 0, "no entry survives the last close");
        t.disconnect("nobody");
        assert_eq!(t.users(), 0);
    }
}
