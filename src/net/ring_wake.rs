//! When the producer of an `rtrb` ring must wake its consumer.
//!
//! Consumers drain their ring until it is empty, then sleep in `epoll_wait`
//! (or on a `Notify`) until woken or until their timeout. A producer that
//! checks "was it empty?" *before* pushing loses a wakeup when the consumer
//! takes the last item between that check and the push: the new item then
//! waits for the consumer's next timeout (up to 100 ms, seen as the p99 of
//! clients on a backplane edge). Checking *after* the push cannot miss it:
//! if the ring holds only what was just pushed, the consumer had drained it
//! and may be asleep. The only cost is a rare spurious wake.

/// After a successful push: whether the consumer must be woken.
pub fn must_wake<T>(producer: &rtrb::Producer<T>) -> bool {
    producer.buffer().capacity() - producer.slots() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_item_taken_between_check_and_push_still_wakes() {
        let (mut p, mut c) = rtrb::RingBuffer::<u32>::new(4);
        p.push(1).unwrap();
        assert!(must_wake(&p), "first item: wake");
        // The producer's old check would run here and see the ring non-empty;
        // then the consumer drains it and goes to sleep.
        let was_empty_before = p.slots() == p.buffer().capacity();
        assert_eq!(c.pop(), Ok(1));
        p.push(2).unwrap();
        assert!(!was_empty_before, "the old rule would not have woken");
        assert!(must_wake(&p), "the new rule does");
        // Items behind one not yet taken: the consumer is awake for them.
        p.push(3).unwrap();
        assert!(!must_wake(&p));
    }
}
