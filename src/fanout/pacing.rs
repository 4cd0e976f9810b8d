//! [`Pacer`]: when a worker drains its ring, writes, and sleeps.
//!
//! Owns the worker's pacing state (the last drain, the current pass over the
//! dirty connections, the last pass's length, a pause after a short pass).
//! Run by a worker thread, consulted by the I/O shell (`net::worker`) at each
//! step of its loop turn. Never reads a clock: every method takes `now_ns`
//! (monotonic nanoseconds), so the policy is tested with a manual clock.
//!
//! # The policy
//!
//! The kernel's cost of one `send()` bounds a worker: writing every dirty
//! connection once (a *pass*) takes about that cost times their number, and a
//! message reaches a connection when the pass reaches it. Latency is therefore
//! at least a fraction of a pass, and everything below adds to it as little
//! as it can:
//!
//! 1. **Idle, a message goes out at once.** With no connection waiting to be
//!    written, the ring is drained in the same turn as its wake-up and the
//!    frames are written right after.
//! 2. **Under load, writing never pauses after a long pass.** Passes follow
//!    each other, in slices of [`PacingConfig::flush_slice_ns`] so that
//!    accepts, reads and timers are served between slices (no starvation).
//! 3. **Under load the ring is drained as often as its cost allows.** A
//!    drain visits the queue of every subscriber of what it carries, so its
//!    cost grows with the subscribers, not with the messages (a run of deltas
//!    is one visit). After a drain that took `d`, the next waits
//!    `d × (100 − share) / share` ([`PacingConfig::drain_share_pct`]: draining
//!    takes at most that share of the worker), within
//!    [`PacingConfig::drain_min_ns`]..[`PacingConfig::drain_max_ns`]; sooner
//!    when the ring is a quarter full or the last batch was full. Drained
//!    messages join the pass in progress: connections the pass has not
//!    reached yet carry them in this pass. A message waits at most one drain
//!    interval, the slice in progress and one pass. Cheap drains (few
//!    subscribers, or none of the messages) make the interval the minimum:
//!    under load, about every slice.
//! 4. **Short passes are spaced to [`PacingConfig::min_pass_ns`].** When few
//!    connections are dirty, a pass takes microseconds and each write would
//!    carry a single frame; starting the next pass no sooner than this after
//!    the previous one started makes each write carry what arrived in that
//!    time instead (fewer syscalls for the same delivery, so engines that
//!    share cores with their clients leave them CPU). It costs at most that
//!    much latency, and nothing once passes are longer than it.

/// Pacing thresholds. Defaults measured with the side-by-side benchmark
/// (`tuning/CAPACITY.md` §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingConfig {
    /// A turn writes for about this long before serving accepts, reads,
    /// timers and the ring again. Default 500 µs.
    pub flush_slice_ns: u64,
    /// Under load, draining the ring takes at most this share of the
    /// worker's time (percent, 1..=100). Default 10.
    pub drain_share_pct: u32,
    /// Bounds of the drain interval under load. Defaults 250 µs and 25 ms.
    pub drain_min_ns: u64,
    pub drain_max_ns: u64,
    /// A pass starts no sooner than this after the previous one started.
    /// Default 2 ms; 0: passes follow each other at once.
    pub min_pass_ns: u64,
    /// The loop sleeps at most this long when nothing is due. Default 50 ms.
    pub idle_wake_ns: u64,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            flush_slice_ns: 500_000,
            drain_share_pct: 10,
            drain_min_ns: 250_000,
            drain_max_ns: 25_000_000,
            min_pass_ns: 2_000_000,
            idle_wake_ns: 50_000_000,
        }
    }
}

/// What the shell tells the pacer about its queues before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Some connection waits to be written (the core's dirty queue).
    pub dirty: bool,
    /// Messages waiting in the ingest ring, and its capacity.
    pub ring_len: usize,
    pub ring_capacity: usize,
    /// Reads, accepts or writable sockets are waiting to be served.
    pub io_ready: bool,
}

/// The pacing state of one worker. See the module doc for the policy.
///
/// # Invariants
///
/// `pass` is `Some` exactly while a pass is in progress (between
/// the first flush that found work and the one that finished the pass).
#[derive(Debug, Clone)]
pub struct Pacer {
    cfg: PacingConfig,
    /// When the last drain ended.
    last_drain_ns: u64,
    /// The wait before the next drain under load, from the last one's cost.
    drain_interval_ns: u64,
    /// The last drain filled its batch: more is waiting.
    ring_busy: bool,
    /// The pass in progress: when it started, and the dirty mark that ends it.
    pass: Option<(u64, u64)>,
    /// How long the last complete pass took.
    last_pass_ns: u64,
    /// No pass starts before this.
    resume_at_ns: u64,
}

impl Pacer {
    pub fn new(cfg: PacingConfig) -> Pacer {
        Pacer {
            cfg,
            last_drain_ns: 0,
            drain_interval_ns: cfg.drain_min_ns,
            ring_busy: false,
            pass: None,
            last_pass_ns: 0,
            resume_at_ns: 0,
        }
    }

    /// Length of the last complete pass over the dirty connections.
    pub fn last_pass_ns(&self) -> u64 {
        self.last_pass_ns
    }

    /// Under load, the next drain comes this long after the last one ended
    /// (policy step 3).
    pub fn drain_interval_ns(&self) -> u64 {
        self.drain_interval_ns
    }

    /// When the loop must wake at the latest (it also wakes on any socket
    /// event or ring wake-up): now if I/O or a full ring batch waits; the
    /// ring's next drain; the end of a pause between passes.
    pub fn poll_timeout(&self, now_ns: u64, load: Load) -> u64 {
        let mut wake = now_ns + self.cfg.idle_wake_ns;
        if self.ring_busy || load.io_ready {
            return now_ns;
        }
        if load.ring_len > 0 {
            wake = wake.min(if load.dirty {
                self.last_drain_ns + self.drain_interval_ns()
            } else {
                now_ns
            });
        }
        if load.dirty {
            wake = wake.min(self.resume_at_ns.max(now_ns));
        }
        wake.max(now_ns)
    }

    /// Whether this turn drains the ring (policy steps 1 and 3).
    pub fn drain_due(&self, now_ns: u64, load: Load) -> bool {
        !load.dirty
            || self.ring_busy
            || now_ns.saturating_sub(self.last_drain_ns) >= self.drain_interval_ns()
            || load.ring_len >= load.ring_capacity / 4
    }

    /// The ring was drained from `start_ns` to `end_ns`; `full` when the
    /// batch limit was hit.
    pub fn handle_drained(&mut self, start_ns: u64, end_ns: u64, full: bool) {
        let share = u64::from(self.cfg.drain_share_pct.clamp(1, 100));
        let cost = end_ns.saturating_sub(start_ns);
        self.drain_interval_ns = (cost.saturating_mul(100 - share) / share).clamp(
            self.cfg.drain_min_ns,
            self.cfg.drain_max_ns.max(self.cfg.drain_min_ns),
        );
        self.last_drain_ns = end_ns;
        self.ring_busy = full;
    }

    /// Whether this turn writes (policy step 4: not during a pause).
    pub fn flush_due(&self, now_ns: u64) -> bool {
        now_ns >= self.resume_at_ns
    }

    /// When the flush slice that starts at `now_ns` ends.
    pub fn slice_end(&self, now_ns: u64) -> u64 {
        now_ns + self.cfg.flush_slice_ns
    }

    /// A flush slice ended at `now_ns`. `done` is the core's dirty counter
    /// after it ([`dirty_done`]), `mark` its dirty mark ([`dirty_mark`]) and
    /// `dirty` whether connections still wait.
    ///
    /// [`dirty_done`]: super::worker::WorkerCore::dirty_done
    /// [`dirty_mark`]: super::worker::WorkerCore::dirty_mark
    pub fn handle_flushed(
        &mut self,
        now_ns: u64,
        start_ns: u64,
        done: u64,
        mark: u64,
        dirty: bool,
    ) {
        // A flush with no pass in progress starts one: every connection
        // dirty now belongs to it.
        let (started, end_mark) = self.pass.take().unwrap_or((start_ns, mark));
        if done < end_mark {
            self.pass = Some((started, end_mark));
            return;
        }
        self.last_pass_ns = now_ns.saturating_sub(started);
        self.resume_at_ns = started + self.cfg.min_pass_ns;
        if dirty {
            // The next pass starts once the pause (if any) is over.
            self.pass = Some((self.resume_at_ns.max(now_ns), mark));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const MS: u64 = 1_000_000;

    /// A model of the shell and the core's FIFO dirty queue, with a manual
    /// clock: messages arrive in the ring at given times; a drain queues
    /// every message for every connection, visiting each once (`visit_ns`);
    /// a write of a connection takes `per_conn_ns` and delivers everything
    /// queued for it.
    struct Model {
        pacer: Pacer,
        now: u64,
        per_conn_ns: u64,
        visit_ns: u64,
        /// Time spent draining.
        drain_ns: u64,
        /// Longest drain interval the pacer chose, and longest pass.
        max_drain_interval_ns: u64,
        max_pass_ns: u64,
        /// Arrival time of each message in the ring.
        ring: VecDeque<u64>,
        /// Drained messages by index: their arrival times.
        drained: Vec<u64>,
        queue: VecDeque<usize>,
        is_dirty: Vec<bool>,
        /// Per connection: messages delivered so far.
        delivered: Vec<usize>,
        mark: u64,
        done: u64,
        writes: u64,
        max_latency_ns: u64,
        /// Longest flush slice: accepts, reads and timers wait that long at most.
        max_slice_ns: u64,
    }

    impl Model {
        fn new(cfg: PacingConfig, conns: usize, per_conn_ns: u64) -> Model {
            Model {
                pacer: Pacer::new(cfg),
                now: 1_000 * MS,
                per_conn_ns,
                visit_ns: 0,
                drain_ns: 0,
                max_drain_interval_ns: 0,
                max_pass_ns: 0,
                ring: VecDeque::new(),
                drained: Vec::new(),
                queue: VecDeque::new(),
                is_dirty: vec![false; conns],
                delivered: vec![0; conns],
                mark: 0,
                done: 0,
                writes: 0,
                max_latency_ns: 0,
                max_slice_ns: 0,
            }
        }

        fn load(&self) -> Load {
            Load {
                dirty: !self.queue.is_empty(),
                ring_len: self.ring.len(),
                ring_capacity: 1024,
                io_ready: false,
            }
        }

        fn drain(&mut self) {
            let start = self.now;
            let full = self.ring.len() > 64;
            for _ in 0..self.ring.len().min(64) {
                let t = self.ring.pop_front().unwrap();
                self.drained.push(t);
                for c in 0..self.is_dirty.len() {
                    if !self.is_dirty[c] {
                        self.is_dirty[c] = true;
                        self.queue.push_back(c);
                        self.mark += 1;
                    }
                }
            }
            let cost = self.visit_ns * self.is_dirty.len() as u64;
            self.now += cost;
            self.drain_ns += cost;
            self.pacer.handle_drained(start, self.now, full);
            self.max_drain_interval_ns = self
                .max_drain_interval_ns
                .max(self.pacer.drain_interval_ns());
        }

        fn flush(&mut self) {
            let start = self.now;
            let end = self.pacer.slice_end(start);
            while self.now < end {
                let Some(c) = self.queue.pop_front() else {
                    break;
                };
                self.now += self.per_conn_ns;
                self.is_dirty[c] = false;
                self.done += 1;
                self.writes += 1;
                for &t in &self.drained[self.delivered[c]..] {
                    self.max_latency_ns = self.max_latency_ns.max(self.now - t);
                }
                self.delivered[c] = self.drained.len();
            }
            self.max_slice_ns = self.max_slice_ns.max(self.now - start);
            let dirty = !self.queue.is_empty();
            self.pacer
                .handle_flushed(self.now, start, self.done, self.mark, dirty);
            self.max_pass_ns = self.max_pass_ns.max(self.pacer.last_pass_ns());
        }

        /// Runs the shell's loop turn (poll, drain, flush) until `end_ns`,
        /// with a message arriving every `every_ns` until `stop_ns`.
        fn run(&mut self, every_ns: u64, stop_ns: u64, end_ns: u64) {
            let mut next_msg = self.now;
            while self.now < end_ns {
                // Poll: sleep until the pacer's deadline or the next message.
                let wake = self.pacer.poll_timeout(self.now, self.load());
                let wake = if next_msg < stop_ns {
                    wake.min(next_msg)
                } else {
                    wake
                };
                self.now = self.now.max(wake);
                while next_msg <= self.now && next_msg < stop_ns {
                    self.ring.push_back(next_msg);
                    next_msg += every_ns;
                }
                if self.pacer.drain_due(self.now, self.load()) && !self.ring.is_empty() {
                    self.drain();
                }
                if !self.queue.is_empty() && self.pacer.flush_due(self.now) {
                    self.flush();
                } else if self.ring.is_empty() && self.queue.is_empty() && next_msg >= stop_ns {
                    break;
                }
            }
        }

        fn all_delivered(&self) -> bool {
            self.delivered.iter().all(|&d| d == self.drained.len()) && self.ring.is_empty()
        }
    }

    #[test]
    fn idle_message_is_drained_and_written_in_the_same_turn() {
        let mut m = Model::new(PacingConfig::default(), 10, 1_000);
        m.ring.push_back(m.now);
        assert_eq!(
            m.pacer.poll_timeout(m.now, m.load()),
            m.now,
            "a message in an idle ring wakes at once"
        );
        assert!(m.pacer.drain_due(m.now, m.load()));
        m.drain();
        assert!(m.pacer.flush_due(m.now));
        m.flush();
        assert!(
            m.all_delivered(),
            "ten connections are written within the first slice"
        );
        assert_eq!(m.max_latency_ns, 10_000);
    }

    #[test]
    fn latency_is_bounded_by_a_drain_interval_plus_a_pass() {
        // 10,000 connections at 6 µs: a 60 ms pass; a message every 10 ms.
        let cfg = PacingConfig::default();
        let mut m = Model::new(cfg, 10_000, 6_000);
        let t0 = m.now;
        m.run(10 * MS, t0 + 300 * MS, t0 + 600 * MS);
        assert!(m.all_delivered());
        let pass = m.pacer.last_pass_ns();
        assert!((59 * MS..=62 * MS).contains(&pass), "pass {pass} ns");
        // Drains happen between slices: a message waits for the interval,
        // then for the slice in progress, then for the pass to reach it.
        let bound =
            m.pacer.drain_interval_ns() + cfg.flush_slice_ns + m.max_pass_ns + m.per_conn_ns;
        assert!(
            m.max_latency_ns <= bound,
            "latency {} > bound {bound}",
            m.max_latency_ns
        );
        // And no pause: the worker wrote all the time it had work.
        let busy = m.writes * m.per_conn_ns;
        assert!(busy >= 300 * MS, "busy {busy} ns of 300 ms+");
    }

    #[test]
    fn under_load_each_write_carries_several_messages() {
        // 10,000 connections at 6 µs, a message every 2 ms: each pass (60 ms)
        // carries ~30 messages per write, not one write per message.
        let mut m = Model::new(PacingConfig::default(), 10_000, 6_000);
        let t0 = m.now;
        m.run(2 * MS, t0 + 200 * MS, t0 + 400 * MS);
        assert!(m.all_delivered());
        let msgs = m.drained.len() as u64;
        let per_conn_writes = m.writes / 10_000;
        assert!(
            msgs >= 100 && per_conn_writes <= msgs / 10,
            "{per_conn_writes} writes for {msgs} messages"
        );
    }

    #[test]
    fn accepts_and_reads_are_served_every_slice_during_a_pass() {
        let cfg = PacingConfig::default();
        let mut m = Model::new(cfg, 10_000, 6_000);
        let t0 = m.now;
        m.run(10 * MS, t0 + 100 * MS, t0 + 300 * MS);
        // A turn serves accepts and reads, then flushes one slice at most.
        assert!(
            m.max_slice_ns <= cfg.flush_slice_ns + m.per_conn_ns,
            "a slice took {} ns",
            m.max_slice_ns
        );
    }

    #[test]
    fn short_passes_are_spaced_so_writes_batch() {
        // 100 connections at 5 µs (0.5 ms passes), a message every 100 µs:
        // without spacing one write per message per connection (1,000 each
        // in 100 ms); spaced to 2 ms passes, about 50.
        let cfg = PacingConfig::default();
        let mut m = Model::new(cfg, 100, 5_000);
        let t0 = m.now;
        m.run(100_000, t0 + 100 * MS, t0 + 200 * MS);
        assert!(m.all_delivered());
        let per_conn = m.writes / 100;
        assert!(per_conn <= 60, "{per_conn} writes per connection");
        let bound = cfg.min_pass_ns + cfg.drain_min_ns + 100 * m.per_conn_ns;
        assert!(
            m.max_latency_ns <= bound,
            "latency {} > {bound}",
            m.max_latency_ns
        );

        let unspaced = PacingConfig {
            min_pass_ns: 0,
            drain_min_ns: 0,
            ..cfg
        };
        let mut u = Model::new(unspaced, 100, 5_000);
        let t0 = u.now;
        u.run(100_000, t0 + 100 * MS, t0 + 200 * MS);
        assert!(
            u.writes / 100 > 3 * per_conn,
            "spacing saved writes: {} vs {per_conn}",
            u.writes / 100
        );
    }

    #[test]
    fn drain_interval_is_the_last_drains_cost_over_its_share_within_bounds() {
        let cfg = PacingConfig::default();
        let mut p = Pacer::new(cfg);
        assert_eq!(
            p.drain_interval_ns(),
            cfg.drain_min_ns,
            "no drain yet: the minimum"
        );
        let t0 = 3_000 * MS;
        p.handle_drained(t0, t0 + MS, false);
        assert_eq!(p.drain_interval_ns(), 9 * MS, "1 ms at 10 %: 9 ms after it");
        p.handle_drained(t0, t0 + 10_000 * MS, false);
        assert_eq!(p.drain_interval_ns(), cfg.drain_max_ns);
        p.handle_drained(t0, t0 + 1_000, false);
        assert_eq!(p.drain_interval_ns(), cfg.drain_min_ns, "a cheap drain");
        let all = Pacer::new(PacingConfig {
            drain_share_pct: 100,
            drain_min_ns: 0,
            ..cfg
        });
        let mut all = all;
        all.handle_drained(t0, t0 + MS, false);
        assert_eq!(all.drain_interval_ns(), 0, "100 %: drained every turn");
    }

    #[test]
    fn drains_take_at_most_their_share_and_latency_stays_within_interval_plus_pass() {
        // 10,000 connections at 6 µs (60 ms passes), a drain visiting each
        // for 40 ns (0.4 ms), a message every 500 µs: draining at every turn
        // would take 0.4 ms of each 0.5 ms.
        let cfg = PacingConfig::default();
        let mut m = Model::new(cfg, 10_000, 6_000);
        m.visit_ns = 40;
        let t0 = m.now;
        m.run(500_000, t0 + 300 * MS, t0 + 600 * MS);
        assert!(m.all_delivered());
        let elapsed = m.now - t0;
        assert!(
            m.drain_ns * 100 <= elapsed * u64::from(cfg.drain_share_pct + 1),
            "draining took {} of {elapsed} ns",
            m.drain_ns
        );
        assert_eq!(
            m.max_drain_interval_ns, 3_600_000,
            "0.4 ms drains at 10 %: 3.6 ms apart"
        );
        let bound =
            m.max_drain_interval_ns + cfg.flush_slice_ns + 400_000 + m.max_pass_ns + m.per_conn_ns;
        assert!(
            m.max_latency_ns <= bound,
            "latency {} > bound {bound}",
            m.max_latency_ns
        );
        // Free drains are taken at the minimum interval: the same load
        // waits less for them.
        let mut free = Model::new(cfg, 10_000, 6_000);
        let t0 = free.now;
        free.run(500_000, t0 + 300 * MS, t0 + 600 * MS);
        assert_eq!(free.max_drain_interval_ns, cfg.drain_min_ns);
        assert!(free.max_latency_ns < m.max_latency_ns);
    }

    #[test]
    fn under_load_the_ring_waits_for_the_drain_interval_then_is_drained() {
        let mut p = Pacer::new(PacingConfig::default());
        let t0 = 5_000 * MS;
        // A drain of 1 ms: the next is due 9 ms after it (10 %).
        p.handle_drained(t0 - MS, t0, false);
        // Between two passes (min_pass): the loop sleeps until the earlier of
        // the drain and the next pass.
        p.resume_at_ns = t0 + 20 * MS;
        let load = Load {
            dirty: true,
            ring_len: 3,
            ring_capacity: 1024,
            io_ready: false,
        };
        assert!(!p.drain_due(t0 + 9 * MS - 1, load), "before the interval");
        assert!(p.drain_due(t0 + 9 * MS, load));
        assert_eq!(
            p.poll_timeout(t0 + MS, load),
            t0 + 9 * MS,
            "sleeps until the drain is due"
        );
        let quarter_full = Load {
            ring_len: 256,
            ..load
        };
        assert!(
            p.drain_due(t0 + MS, quarter_full),
            "a quarter-full ring is drained at once"
        );
        p.handle_drained(t0 + MS, t0 + MS, true);
        assert!(
            p.drain_due(t0 + MS, load),
            "after a full batch, drained again next turn"
        );
        assert_eq!(p.poll_timeout(t0 + MS, load), t0 + MS);
    }

    #[test]
    fn io_and_full_batches_never_wait() {
        let mut p = Pacer::new(PacingConfig::default());
        let now = 7 * MS;
        let idle = Load {
            dirty: false,
            ring_len: 0,
            ring_capacity: 1024,
            io_ready: false,
        };
        assert_eq!(
            p.poll_timeout(now, idle),
            now + 50 * MS,
            "idle: the 50 ms tick"
        );
        assert_eq!(
            p.poll_timeout(
                now,
                Load {
                    io_ready: true,
                    ..idle
                }
            ),
            now,
            "reads and accepts first"
        );
        p.handle_drained(now, now, true);
        assert_eq!(p.poll_timeout(now, idle), now, "a full batch: more waits");
    }

    #[test]
    fn a_pause_never_outlasts_min_pass() {
        let cfg = PacingConfig::default();
        let mut m = Model::new(cfg, 10, 1_000);
        m.ring.push_back(m.now);
        m.drain();
        let start = m.now;
        m.flush();
        assert!(m.all_delivered());
        m.ring.push_back(m.now);
        m.drain();
        assert!(!m.pacer.flush_due(m.now), "the second pass waits");
        let wake = m.pacer.poll_timeout(m.now, m.load());
        assert_eq!(
            wake,
            start + cfg.min_pass_ns,
            "until min_pass after the first started"
        );
        assert!(m.pacer.flush_due(wake));
    }
}
