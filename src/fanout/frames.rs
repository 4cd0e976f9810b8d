//! [`Frames`]: a worker's table of the shared frames its outboxes hold.
//!
//! Owns: one [`EncodedFrame`] per slot with a plain (non-atomic) count of the
//! outbox entries that refer to it. Outboxes queue 4-byte [`FrameId`]s
//! instead of `Arc` clones. Run by one worker thread, inside
//! [`WorkerCore`](super::worker::WorkerCore).
//!
//! NB: the reason is the fan-out loop. Queueing one message for 10,000
//! connections with `Arc::clone` puts a locked increment after each store into
//! a different connection's queue; the lock waits for that store, which
//! misses the cache, so every queueing paid a full memory round trip in turn
//! (`Sink::admit` was 45% of the worker's CPU at 3 M msgs/s in the fan-out
//! benchmark). A plain increment lets the stores overlap, and 4-byte entries
//! put four times as many per cache line.
//!
//! Never: shared between threads, or freed while counted. The table holds its
//! own reference to each frame (the `EncodedFrame`), so the bytes stay valid
//! for as long as an id is counted.

use crate::wire::EncodedFrame;

/// A slot of [`Frames`]; valid while the slot's count is above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameId(u32);

#[derive(Default)]
pub struct Frames {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

struct Slot {
    frame: Option<EncodedFrame>,
    refs: u32,
    /// When the frame entered the worker (monotonic ns): the age of the
    /// oldest byte a connection has not received is measured from it.
    born_ns: u64,
}

impl Frames {
    pub fn new() -> Frames {
        Frames::default()
    }

    /// Stores `frame` with a count of one (the caller's, given back with
    /// [`Frames::release`]).
    pub fn insert(&mut self, frame: EncodedFrame, born_ns: u64) -> FrameId {
        let slot = Slot {
            frame: Some(frame),
            refs: 1,
            born_ns,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                FrameId(i)
            }
            None => {
                // Live frames are bounded by the outboxes' hard limits, far
                // below 2^32.
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 live frames");
                self.slots.push(slot);
                FrameId(i)
            }
        }
    }

    /// One more holder of `id`.
    pub fn retain(&mut self, id: FrameId) {
        self.slots[id.0 as usize].refs += 1;
    }

    /// One holder fewer; the last one frees the slot (and drops the table's
    /// reference to the frame).
    pub fn release(&mut self, id: FrameId) {
        let slot = &mut self.slots[id.0 as usize];
        debug_assert!(slot.refs > 0, "release of a free frame slot");
        slot.refs -= 1;
        if slot.refs == 0 {
            slot.frame = None;
            self.free.push(id.0);
        }
    }

    /// The frame of a counted id.
    pub fn get(&self, id: FrameId) -> &EncodedFrame {
        // A counted slot always holds its frame: only the last release empties it.
        self.slots[id.0 as usize]
            .frame
            .as_ref()
            .expect("a counted frame id")
    }

    /// Frames currently held (slots in use).
    /// When the frame `id` entered the worker (see `insert`).
    pub fn born_ns(&self, id: FrameId) -> u64 {
        self.slots[id.0 as usize].born_ns
    }

    pub fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_freed_and_reused() {
        let mut f = Frames::new();
        let a = f.insert(EncodedFrame::from_frame_bytes(vec![1, 2]), 0);
        let b = f.insert(EncodedFrame::from_frame_bytes(vec![3]), 0);
        f.retain(a);
        assert_eq!(f.live(), 2);
        f.release(a);
        assert_eq!(f.get(a).as_bytes(), &[1, 2], "still counted once");
        f.release(a);
        assert_eq!(f.live(), 1);
        let c = f.insert(EncodedFrame::from_frame_bytes(vec![4]), 0);
        assert_eq!(c, a, "a freed slot is reused");
        assert_eq!(f.get(c).as_bytes(), &[4]);
        assert_eq!(f.get(b).as_bytes(), &[3]);
        f.release(b);
        f.release(c);
        assert_eq!(f.live(), 0);
    }

    #[test]
    fn the_table_keeps_the_frame_alive_on_its_own() {
        let mut f = Frames::new();
        let frame = EncodedFrame::from_frame_bytes(vec![7; 3]);
        let id = f.insert(frame.clone(), 0);
        drop(frame);
        assert_eq!(f.get(id).as_bytes(), &[7, 7, 7]);
    }
}
