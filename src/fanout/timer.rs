//! [`TimerWheel`]: the one timer structure of a worker (DESIGN "Connections"):
//! a hashed timing wheel (Varghese & Lauck) holding every deadline of every
//! connection (handshake, close handshake, auth) and the worker's one
//! recurring heartbeat entry (see [`sweep`](super::sweep)).
//!
//! Owned by one worker thread. Never reads the clock: `now_ns` is an argument
//! (any monotonic origin). O(1) to insert and to cancel; expiry costs one
//! visit per slot tick plus one per entry per wheel revolution it waits.
//!
//! Entries live in a slab, linked per slot (index links, no per-entry
//! allocation once the slab has grown). A [`TimerHandle`] names an entry;
//! cancelling a handle whose entry already fired or was cancelled is a no-op
//! (each slab slot carries a generation), so a connection can always cancel
//! its handles when it closes and no entry survives it.

use std::num::NonZeroU32;

/// Names one scheduled entry. 8 bytes, and so is an `Option` of it (the
/// generation is never 0): connection slots hold one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerHandle {
    index: u32,
    generation: NonZeroU32,
}

const NIL: u32 = u32::MAX;
/// An empty wheel with room for more nodes than this gives the room back
/// (after a storm of handshakes, say).
const KEEP_NODES: usize = 256;

#[derive(Debug, Clone)]
struct Node<T> {
    deadline_ns: u64,
    value: Option<T>,
    generation: NonZeroU32,
    slot: u32,
    prev: u32,
    next: u32,
}

/// A hashed timing wheel of `slots` buckets, `tick_ns` wide each.
///
/// # Invariants
///
/// - Every live node is in exactly one slot list, the one of
///   `max(its deadline tick, done_tick)` modulo `slots`.
/// - `len` is the number of live nodes; `free` lists the others.
/// - A node's `generation` changes whenever it is freed, to a value no node
///   of this wheel had before (one counter for the wheel), so stale handles
///   miss, even after the nodes were given back and made anew.
#[derive(Debug)]
pub struct TimerWheel<T> {
    tick_ns: u64,
    heads: Vec<u32>,
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    len: usize,
    /// The generation the next created or freed node takes.
    next_generation: NonZeroU32,
    /// The last tick processed (its slot is visited again by the next poll,
    /// so entries inserted past due there still fire at once).
    done_tick: u64,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel starting at `now_ns`. `slots` × `tick_ns` is the span one
    /// revolution covers; longer deadlines are visited once per revolution.
    pub fn new(tick_ns: u64, slots: usize, now_ns: u64) -> TimerWheel<T> {
        let tick_ns = tick_ns.max(1);
        TimerWheel {
            tick_ns,
            heads: vec![NIL; slots.max(1)],
            nodes: Vec::new(),
            free: Vec::new(),
            len: 0,
            next_generation: NonZeroU32::MIN,
            done_tick: now_ns / tick_ns,
        }
    }

    /// Entries scheduled and not yet fired or cancelled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `value` for `deadline_ns` (a deadline already past fires at
    /// the next [`TimerWheel::poll_expired`]).
    pub fn insert(&mut self, deadline_ns: u64, value: T) -> TimerHandle {
        let tick = (deadline_ns / self.tick_ns).max(self.done_tick);
        let slot = (tick % self.heads.len() as u64) as u32;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let generation = self.take_generation();
                self.nodes.push(Node {
                    deadline_ns: 0,
                    value: None,
                    generation,
                    slot: 0,
                    prev: NIL,
                    next: NIL,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        let head = self.heads[slot as usize];
        let n = &mut self.nodes[index as usize];
        n.deadline_ns = deadline_ns;
        n.value = Some(value);
        n.slot = slot;
        n.prev = NIL;
        n.next = head;
        let generation = n.generation;
        if head != NIL {
            self.nodes[head as usize].prev = index;
        }
        self.heads[slot as usize] = index;
        self.len += 1;
        TimerHandle { index, generation }
    }

    /// The deadline of the entry, if it is still scheduled.
    pub fn deadline_ns(&self, h: TimerHandle) -> Option<u64> {
        let n = self.nodes.get(h.index as usize)?;
        (n.generation == h.generation && n.value.is_some()).then_some(n.deadline_ns)
    }

    /// Removes the entry if it is still scheduled; returns its value.
    pub fn cancel(&mut self, h: TimerHandle) -> Option<T> {
        let n = self.nodes.get(h.index as usize)?;
        if n.generation != h.generation || n.value.is_none() {
            return None;
        }
        let v = self.remove(h.index);
        self.give_back_room();
        Some(v)
    }

    fn take_generation(&mut self) -> NonZeroU32 {
        let g = self.next_generation;
        self.next_generation = g.checked_add(1).unwrap_or(NonZeroU32::MIN);
        g
    }

    /// An empty wheel keeps room for at most [`KEEP_NODES`] nodes: the
    /// handshakes of a reconnect storm do not stay resident for the life of
    /// the process. Checked after a cancel and at the end of a poll, when a
    /// recurring entry that just fired (a worker's heartbeat sweep) is out
    /// of the wheel until it is inserted again.
    fn give_back_room(&mut self) {
        if self.len == 0 && self.nodes.capacity() > KEEP_NODES {
            self.nodes = Vec::new();
            self.free = Vec::new();
        }
    }

    /// Room for nodes, live or free (for tests and metrics).
    pub fn capacity(&self) -> usize {
        self.nodes.capacity()
    }

    fn remove(&mut self, index: u32) -> T {
        let (prev, next, slot) = {
            let n = &self.nodes[index as usize];
            (n.prev, n.next, n.slot)
        };
        if prev == NIL {
            self.heads[slot as usize] = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let generation = self.take_generation();
        let n = &mut self.nodes[index as usize];
        n.generation = generation;
        n.prev = NIL;
        n.next = NIL;
        self.free.push(index);
        self.len -= 1;
        // Only live nodes are linked, and live nodes hold a value.
        n.value.take().expect("a linked node holds a value")
    }

    /// Moves every entry due at `now_ns` to `out` (with its deadline).
    /// Returns how many.
    pub fn poll_expired(&mut self, now_ns: u64, out: &mut Vec<(u64, T)>) -> usize {
        let now_tick = (now_ns / self.tick_ns).max(self.done_tick);
        if self.len == 0 {
            self.done_tick = now_tick;
            return 0;
        }
        let slots = self.heads.len() as u64;
        // After a long pause every slot is visited once, not once per tick.
        let first = self.done_tick.max((now_tick + 1).saturating_sub(slots));
        let mut fired = 0;
        for tick in first..=now_tick {
            let slot = (tick % slots) as usize;
            let mut i = self.heads[slot];
            while i != NIL {
                let n = &self.nodes[i as usize];
                let next = n.next;
                if n.deadline_ns / self.tick_ns <= now_tick {
                    let deadline = n.deadline_ns;
                    let v = self.remove(i);
                    out.push((deadline, v));
                    fired += 1;
                }
                i = next;
            }
        }
        self.done_tick = now_tick;
        self.give_back_room();
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn fired(w: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        w.poll_expired(now, &mut out);
        let mut v: Vec<u32> = out.into_iter().map(|(_, v)| v).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn entries_fire_at_their_tick_not_before() {
        let mut w = TimerWheel::new(10 * MS, 8, 0);
        w.insert(25 * MS, 1);
        w.insert(30 * MS, 2);
        w.insert(5 * MS, 3);
        assert_eq!(w.len(), 3);
        assert_eq!(fired(&mut w, 9 * MS), vec![3]);
        assert_eq!(fired(&mut w, 19 * MS), Vec::<u32>::new());
        assert_eq!(
            fired(&mut w, 20 * MS),
            vec![1],
            "tick resolution: 25 ms fires in tick 2"
        );
        assert_eq!(fired(&mut w, 35 * MS), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        // 8 slots of 10 ms: 80 ms per revolution.
        let mut w = TimerWheel::new(10 * MS, 8, 0);
        w.insert(250 * MS, 7);
        w.insert(10 * MS, 8);
        let mut now = 0;
        let mut got = Vec::new();
        while now <= 300 * MS {
            for v in fired(&mut w, now) {
                got.push((v, now));
            }
            now += 10 * MS;
        }
        assert_eq!(got, vec![(8, 10 * MS), (7, 250 * MS)]);
    }

    #[test]
    fn a_long_pause_fires_everything_due_once() {
        let mut w = TimerWheel::new(MS, 16, 0);
        for i in 0..100u32 {
            w.insert(u64::from(i) * 3 * MS, i);
        }
        let got = fired(&mut w, 1_000 * MS);
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert!(w.is_empty());
        // Past deadlines inserted later fire on the next poll.
        w.insert(0, 5);
        assert_eq!(fired(&mut w, 1_000 * MS), vec![5]);
    }

    #[test]
    fn an_empty_wheel_gives_back_its_room_and_old_handles_still_miss() {
        let mut w = TimerWheel::new(10 * MS, 64, 0);
        let storm: Vec<_> = (0..5_000u32).map(|i| w.insert(20 * MS, i)).collect();
        assert!(w.capacity() >= 5_000);
        for &h in &storm[..4_000] {
            assert!(w.cancel(h).is_some());
        }
        assert!(w.capacity() >= 5_000, "not empty: the room stays");
        assert_eq!(fired(&mut w, 20 * MS).len(), 1_000);
        assert_eq!(w.capacity(), 0, "empty: the room is given back");
        // New entries reuse the indices of the storm's; none of its handles
        // names them.
        let fresh: Vec<_> = (0..10u32).map(|i| w.insert(50 * MS, 100 + i)).collect();
        for &h in &storm {
            assert_eq!(w.cancel(h), None);
        }
        assert_eq!(w.len(), 10);
        assert_eq!(w.cancel(fresh[3]), Some(103));
    }

    #[test]
    fn cancel_removes_and_stale_handles_miss() {
        let mut w = TimerWheel::new(10 * MS, 4, 0);
        let a = w.insert(20 * MS, 1);
        let b = w.insert(20 * MS, 2);
        let c = w.insert(20 * MS, 3);
        assert_eq!(w.cancel(b), Some(2), "middle of a slot list");
        assert_eq!(w.cancel(b), None, "twice is a no-op");
        assert_eq!(w.cancel(c), Some(3), "head of a slot list");
        assert_eq!(w.len(), 1);
        // b's node is reused; the old handle must not cancel the new entry.
        let d = w.insert(30 * MS, 4);
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.cancel(c), None);
        assert_eq!(fired(&mut w, 40 * MS), vec![1, 4]);
        assert_eq!(w.cancel(a), None, "already fired");
        assert_eq!(w.cancel(d), None);
        assert!(w.is_empty());
    }

    /// Against a naive model: a list of (deadline, id) pairs.
    #[test]
    fn matches_a_naive_model() {
        let mut w = TimerWheel::new(7 * MS, 13, 0);
        let mut model: Vec<(u64, u32, TimerHandle)> = Vec::new();
        let mut x = 0x2545_F491_u64;
        let mut now = 0;
        for id in 0..5_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 4 {
                0 | 1 => {
                    let d = now + (x >> 8) % (300 * MS);
                    let h = w.insert(d, id);
                    model.push((d, id, h));
                }
                2 if !model.is_empty() => {
                    let k = (x >> 16) as usize % model.len();
                    let (_, v, h) = model.swap_remove(k);
                    assert_eq!(w.cancel(h), Some(v));
                }
                _ => {
                    now += (x >> 8) % (20 * MS);
                    let got = fired(&mut w, now);
                    let tick = now / (7 * MS);
                    let mut want: Vec<u32> = model
                        .iter()
                        .filter(|(d, _, _)| d / (7 * MS) <= tick)
                        .map(|&(_, v, _)| v)
                        .collect();
                    want.sort_unstable();
                    model.retain(|(d, _, _)| d / (7 * MS) > tick);
                    assert_eq!(got, want, "at {now}");
                }
            }
            assert_eq!(w.len(), model.len());
        }
    }
}
