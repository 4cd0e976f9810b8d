//! Thread liveness: the engine's one policy for a thread that dies or stalls.
//!
//! Every engine thread (`ingest`, `worker-N`, `backplane`) holds a [`Liveness`]: it beats
//! once per loop turn, and a [`ThreadGuard`] created at the top of the thread
//! marks it `Died` if the thread unwinds (a panic) or `Exited` if it returns.
//!
//! The policy, honest rather than half alive:
//! - `GET /healthz` answers 503 with the reason as soon as any thread died, or
//!   has not completed a loop turn for [`STALL_MS`] (every loop sleeps at most
//!   100 ms, so that is a thread stuck in one turn);
//! - the binary (`tickwire serve`, `demo`) checks [`Health::failure`] every
//!   50 ms and exits with status 70 (`EX_SOFTWARE`) after logging the dead
//!   thread, so a supervisor (systemd `Restart=on-failure`, Kubernetes)
//!   restarts the process; clients reconnect and resync as after any restart.
//!   A dead worker's connections, ring and counts are never left to rot.
//!
//! Written by each thread for itself (atomics only), read by whichever worker
//! answers `/healthz` and by the main thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use tracing::error;

/// A thread that has not completed a loop turn for this long is stalled.
pub const STALL_MS: u64 = 5_000;

const RUNNING: u8 = 0;
const EXITED: u8 = 1;
const DIED: u8 = 2;

/// One thread's liveness.
#[derive(Debug)]
pub struct Liveness {
    name: String,
    started: Instant,
    /// Milliseconds since `started` at the end of the last loop turn.
    last_turn_ms: AtomicU64,
    state: AtomicU8,
}

impl Liveness {
    pub fn new(name: impl Into<String>) -> Arc<Liveness> {
        Arc::new(Liveness {
            name: name.into(),
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A loop turn completed.
    pub fn beat(&self) {
        self.last_turn_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Held by the thread for its whole life (see the module doc).
    pub fn guard(self: &Arc<Self>) -> ThreadGuard {
        self.beat();
        ThreadGuard(self.clone())
    }

    fn died(&self) -> bool {
        self.state.load(Ordering::Relaxed) == DIED
    }

    /// Milliseconds since the last completed loop turn, if still running.
    fn stalled_ms(&self, now: Instant) -> Option<u64> {
        if self.state.load(Ordering::Relaxed) != RUNNING {
            return None;
        }
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let since = now_ms.saturating_sub(self.last_turn_ms.load(Ordering::Relaxed));
        (since >= STALL_MS).then_some(since)
    }
}

/// Marks its thread `Died` when dropped by a panic's unwinding, `Exited`
/// otherwise.
#[derive(Debug)]
pub struct ThreadGuard(Arc<Liveness>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.state.store(DIED, Ordering::Relaxed);
            error!(thread = %self.0.name, "thread died (panic); the process must be restarted");
        } else {
            self.0.state.store(EXITED, Ordering::Relaxed);
        }
    }
}

/// Every thread of the engine.
#[derive(Debug, Default)]
pub struct Health {
    threads: Vec<Arc<Liveness>>,
}

impl Health {
    pub fn new(threads: Vec<Arc<Liveness>>) -> Health {
        Health { threads }
    }

    /// One more thread under the same policy (the backplane's).
    pub fn with(mut self, thread: Arc<Liveness>) -> Health {
        self.threads.push(thread);
        self
    }

    /// The first dead thread, if any: the process should exit non-zero.
    pub fn failure(&self) -> Option<String> {
        self.threads
            .iter()
            .find(|t| t.died())
            .map(|t| format!("{} died", t.name))
    }

    /// `Ok` when every thread is running and turning; else why not (the
    /// `/healthz` 503 body).
    pub fn check(&self, now: Instant) -> Result<(), String> {
        if let Some(f) = self.failure() {
            return Err(f);
        }
        for t in &self.threads {
            if let Some(ms) = t.stalled_ms(now) {
                return Err(format!("{} stalled for {ms} ms", t.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_panicking_thread_is_dead_and_a_returning_one_is_not() {
        let a = Liveness::new("worker-0");
        let b = Liveness::new("ingest");
        let health = Health::new(vec![a.clone(), b.clone()]);
        assert_eq!(health.check(Instant::now()), Ok(()));
        let a2 = a.clone();
        let t = std::thread::spawn(move || {
            let _g = a2.guard();
            panic!("injected");
        });
        assert!(t.join().is_err());
        let b2 = b.clone();
        std::thread::spawn(move || {
            let _g = b2.guard();
        })
        .join()
        .unwrap();
        assert_eq!(health.failure().as_deref(), Some("worker-0 died"));
        assert_eq!(health.check(Instant::now()), Err("worker-0 died".into()));
    }

    #[test]
    fn a_thread_without_a_turn_for_the_stall_time_is_reported() {
        let a = Liveness::new("worker-1");
        let health = Health::new(vec![a.clone()]);
        a.beat();
        let soon = Instant::now() + Duration::from_millis(STALL_MS - 1_000);
        assert_eq!(health.check(soon), Ok(()));
        let later = Instant::now() + Duration::from_millis(STALL_MS + 1_000);
        let err = health.check(later).unwrap_err();
        assert!(err.starts_with("worker-1 stalled for "), "{err}");
        // An exited thread is not stalled.
        drop(a.guard());
        assert_eq!(health.check(later), Ok(()));
    }
}
