//! One connection's outbound queue and the slow-consumer policy of PROTOCOL §7.
//!
//! Owns: the frames queued for one connection (ids into the worker's
//! [`Frames`] table, never copies), the write offset into the first one, the
//! buffered byte count, and
//! the connection's dropping episode (when it started). Run by a worker thread,
//! inside [`WorkerCore`](super::worker::WorkerCore).
//!
//! Never: touches a socket, reads a clock (time comes in as `now_ns`), takes a
//! lock, or copies frame bytes. Allocation: the queue's buffer is allocated on
//! the first frame and released by [`Outbox::release_if_idle`] once drained
//! (the worker calls it after an idle grace period, so a hot connection does not
//! allocate once per loop turn).
//!
//! The policy, per frame, by [`FrameClass`]:
//! - [`FrameClass::Control`] (Subscribed, Unsubscribed, Error, pong, close)
//!   and [`FrameClass::Resync`] (snapshots, Stale): never dropped (PROTOCOL
//!   §7: "Control answers are never dropped"), so queued unless that would
//!   take the buffered amount above the hard limit: then the connection is
//!   closed (a client that sends pings and never reads cannot grow its queue
//!   without bound; the worker also stops reading from a connection above
//!   high-water, so its requests wait while its answers are unread).
//! - [`FrameClass::Stream`] (book deltas, trades): dropped while the connection
//!   is in a dropping episode; an episode starts when the buffered amount is
//!   above high-water and lasts until it drains below low-water; above the hard
//!   limit, or when the episode is older than the maximum lag, close (4001).
//!
//! The thresholds apply to the backlog: the queue plus the bytes the kernel
//! accepted for the socket and has not sent (measured by the shell after
//! writes, [`Outbox::set_kernel_unsent`]; the shell also bounds them with
//! `TCP_NOTSENT_LOWAT`), so a client that stopped reading is seen as behind
//! however much the kernel would have taken (DESIGN "Freshness").
//!
//! The caller counts drops per symbol (it holds the subscription entry already)
//! and performs the resync when [`Outbox::consume`] reports
//! [`Consumed::ResyncDue`].

use std::collections::VecDeque;
use std::io::IoSlice;

use super::frames::{FrameId, Frames};

/// Byte thresholds and lag limit of the slow-consumer policy (PROTOCOL §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Above this, stream frames are dropped. Default 256 KiB.
    pub high_water_bytes: usize,
    /// A dropping episode ends (and the resync is due) below this. Default 64 KiB.
    pub low_water_bytes: usize,
    /// Above this the connection is closed with 4001. Default 4 MiB.
    pub hard_limit_bytes: usize,
    /// A dropping episode older than this closes the connection with 4001. Default 10 s.
    pub max_lag_ns: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            high_water_bytes: 256 << 10,
            low_water_bytes: 64 << 10,
            hard_limit_bytes: 4 << 20,
            max_lag_ns: 10_000_000_000,
        }
    }
}

/// What a frame is, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// Control answers and ws control frames: never dropped, bounded by the
    /// hard limit.
    Control,
    /// Snapshots and Stale notices: never dropped, bounded by the hard limit.
    Resync,
    /// Book deltas and trades: dropped above high-water.
    Stream,
}

/// The decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The frame was queued.
    Queue,
    /// The frame was not queued: the connection is in a dropping episode.
    /// The caller counts it against the frame's symbol.
    DropStale,
    /// The frame was not queued and the connection must be closed (4001).
    Close,
}

/// What [`Outbox::consume`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// Bytes remain queued.
    Pending,
    /// Everything queued has been written.
    Drained,
    /// A dropping episode just ended (buffered amount below low-water): the
    /// caller must queue `Stale` + resync for every dropped symbol now.
    ResyncDue,
}

/// The queue of one connection.
///
/// # Invariants
///
/// - `buffered_bytes` equals the sum of the queued frames' lengths minus
///   `head_offset`, and `head_offset` is less than the first frame's length
///   (0 when the queue is empty).
/// - `dropping_since_ns()` is `Some` exactly while a dropping episode is open;
///   no [`FrameClass::Stream`] frame is queued during one.
/// - Per symbol, queued deltas have strictly increasing seq, or a Stale +
///   snapshot precedes them. The outbox does not know symbols: the caller
///   (`WorkerCore`) is the only one that admits deltas and restates this with a
///   `debug_assert!` on the subscription's last queued seq.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<FrameId>,
    buffered_bytes: usize,
    /// Bytes of `queue[0]` already written.
    head_offset: u32,
    /// Bytes the kernel accepted for the socket and has not sent, as last
    /// measured (`SIOCOUTQNSD`, see [`Outbox::set_kernel_unsent`]). Part of the
    /// backlog the policy sees (DESIGN "Freshness").
    kernel_unsent_bytes: u32,
    /// Start of the open dropping episode, [`NOT_DROPPING`] when none.
    dropping_since_ns: u64,
}

/// `dropping_since_ns` when no episode is open (an `Option<u64>` would cost 8
/// more bytes per connection).
const NOT_DROPPING: u64 = u64::MAX;

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

impl Outbox {
    pub const fn new() -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            buffered_bytes: 0,
            head_offset: 0,
            kernel_unsent_bytes: 0,
            dropping_since_ns: NOT_DROPPING,
        }
    }

    /// Bytes queued and not yet consumed.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// What the client has not received as far as the engine can tell: the
    /// queue plus the kernel's unsent bytes. The thresholds (high-water,
    /// low-water, hard limit) apply to this.
    pub fn backlog_bytes(&self) -> usize {
        self.buffered_bytes + self.kernel_unsent_bytes as usize
    }

    /// The kernel's unsent bytes, as last measured.
    pub fn kernel_unsent_bytes(&self) -> usize {
        self.kernel_unsent_bytes as usize
    }

    /// The first queued frame (partially written, perhaps).
    pub fn head(&self) -> Option<FrameId> {
        self.queue.front().copied()
    }

    /// A new measure of the kernel's unsent bytes for the socket. A dropping
    /// episode whose backlog is now below low-water ends here
    /// ([`Consumed::ResyncDue`]), as it would after a write.
    pub fn set_kernel_unsent(&mut self, bytes: usize, limits: &OutboxLimits) -> Consumed {
        self.kernel_unsent_bytes = bytes.min(u32::MAX as usize) as u32;
        self.episode_check(limits)
    }

    fn episode_check(&mut self, limits: &OutboxLimits) -> Consumed {
        if self.dropping_since_ns != NOT_DROPPING && self.backlog_bytes() < limits.low_water_bytes {
            self.dropping_since_ns = NOT_DROPPING;
            return Consumed::ResyncDue;
        }
        if self.queue.is_empty() {
            Consumed::Drained
        } else {
            Consumed::Pending
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of frames queued (the first may be partially written).
    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// Bytes reserved by the queue's buffer (0 while released).
    pub fn capacity_bytes(&self) -> usize {
        self.queue.capacity() * std::mem::size_of::<FrameId>()
    }

    /// When the current dropping episode started, if one is open.
    pub fn dropping_since_ns(&self) -> Option<u64> {
        (self.dropping_since_ns != NOT_DROPPING).then_some(self.dropping_since_ns)
    }

    /// Applies the policy to the frame `id` and queues it (one more count in
    /// `frames`) when the answer is [`Admit::Queue`].
    pub fn admit(
        &mut self,
        frames: &mut Frames,
        id: FrameId,
        class: FrameClass,
        limits: &OutboxLimits,
        now_ns: u64,
    ) -> Admit {
        let len = frames.get(id).len();
        let admit = self.decide(len, class, limits, now_ns);
        if admit == Admit::Queue && len > 0 {
            frames.retain(id);
            self.buffered_bytes += len;
            self.queue.push_back(id);
            self.debug_check(frames);
        }
        admit
    }

    /// The policy alone, without queueing (see the module doc). Opens a
    /// dropping episode when a stream frame is refused.
    pub fn decide(
        &mut self,
        frame_len: usize,
        class: FrameClass,
        limits: &OutboxLimits,
        now_ns: u64,
    ) -> Admit {
        match class {
            FrameClass::Control | FrameClass::Resync => {
                if self.backlog_bytes() + frame_len > limits.hard_limit_bytes {
                    Admit::Close
                } else {
                    Admit::Queue
                }
            }
            FrameClass::Stream => {
                if self.backlog_bytes() > limits.hard_limit_bytes {
                    return Admit::Close;
                }
                if let Some(since_ns) = self.dropping_since_ns() {
                    if now_ns.saturating_sub(since_ns) > limits.max_lag_ns {
                        return Admit::Close;
                    }
                    return Admit::DropStale;
                }
                if self.backlog_bytes() > limits.high_water_bytes {
                    // A clock at u64::MAX would read as "not dropping": clamp.
                    self.dropping_since_ns = now_ns.min(NOT_DROPPING - 1);
                    return Admit::DropStale;
                }
                Admit::Queue
            }
        }
    }

    /// Whether an open dropping episode has lasted longer than the maximum lag.
    pub fn is_lagging(&self, limits: &OutboxLimits, now_ns: u64) -> bool {
        self.dropping_since_ns()
            .is_some_and(|since_ns| now_ns.saturating_sub(since_ns) > limits.max_lag_ns)
    }

    /// Fills `out` with the unwritten bytes, in order, for one `writev`.
    /// Returns how many slices were filled.
    pub fn io_slices<'a>(&self, frames: &'a Frames, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, &id) in self.queue.iter().enumerate() {
            if n == out.len() {
                break;
            }
            let frame = frames.get(id);
            let bytes = if i == 0 {
                &frame.as_bytes()[self.head_offset as usize..]
            } else {
                frame.as_bytes()
            };
            out[n] = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// Records that the socket accepted `n` more bytes (at most
    /// `buffered_bytes`; extra is ignored). Ends the dropping episode when the
    /// buffered amount falls below low-water.
    pub fn consume(&mut self, n: usize, limits: &OutboxLimits, frames: &mut Frames) -> Consumed {
        let mut left = n.min(self.buffered_bytes);
        self.buffered_bytes -= left;
        while left > 0 {
            // `left <= buffered_bytes` before the loop, so a frame is queued.
            let Some(&front) = self.queue.front() else {
                break;
            };
            let rest = frames.get(front).len() - self.head_offset as usize;
            if left >= rest {
                left -= rest;
                self.head_offset = 0;
                self.queue.pop_front();
                frames.release(front);
            } else {
                // rest < frame length, and a frame fits in u32 (frames are < 4 GiB).
                self.head_offset += left as u32;
                left = 0;
            }
        }
        self.debug_check(frames);
        self.episode_check(limits)
    }

    /// Frees the queue's buffer if nothing is queued. Returns whether memory was freed.
    pub fn release_if_idle(&mut self) -> bool {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
            return true;
        }
        false
    }

    /// Drops every frame not yet started (keeps a partially written first
    /// frame, so the stream stays well-framed) and ends any dropping episode.
    /// Used before a close frame on a connection being closed.
    pub fn discard_unstarted(&mut self, frames: &mut Frames) {
        let keep = usize::from(self.head_offset > 0 && !self.queue.is_empty());
        for id in self.queue.drain(keep..) {
            frames.release(id);
        }
        self.buffered_bytes = self
            .queue
            .front()
            .map_or(0, |&f| frames.get(f).len() - self.head_offset as usize);
        self.dropping_since_ns = NOT_DROPPING;
        self.debug_check(frames);
    }

    /// Gives every queued frame back to `frames` and forgets the queue and
    /// any dropping episode (the connection is gone).
    pub fn clear(&mut self, frames: &mut Frames) {
        for id in self.queue.drain(..) {
            frames.release(id);
        }
        *self = Outbox::new();
    }

    fn debug_check(&self, frames: &Frames) {
        debug_assert_eq!(
            self.buffered_bytes,
            self.queue
                .iter()
                .map(|&f| frames.get(f).len())
                .sum::<usize>()
                - self.head_offset as usize,
            "buffered_bytes = queued lengths - head offset"
        );
        debug_assert!(
            self.queue
                .front()
                .map_or(self.head_offset == 0, |&f| (self.head_offset as usize)
                    < frames.get(f).len()),
            "head offset inside the first frame"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::wire::EncodedFrame;

    fn frame(len: usize, fill: u8) -> EncodedFrame {
        EncodedFrame::from_frame_bytes(vec![fill; len])
    }

    /// An outbox with its own frame table; every check also proves that the
    /// table holds exactly the frames the outbox queues (no leak, no early free).
    #[derive(Default)]
    struct Q {
        o: Outbox,
        f: Frames,
    }

    impl Q {
        fn admit(
            &mut self,
            frame: &EncodedFrame,
            class: FrameClass,
            l: &OutboxLimits,
            now_ns: u64,
        ) -> Admit {
            let id = self.f.insert(frame.clone(), 0);
            let admit = self.o.admit(&mut self.f, id, class, l, now_ns);
            self.f.release(id);
            self.check();
            admit
        }

        fn consume(&mut self, n: usize, l: &OutboxLimits) -> Consumed {
            let c = self.o.consume(n, l, &mut self.f);
            self.check();
            c
        }

        fn discard_unstarted(&mut self) {
            self.o.discard_unstarted(&mut self.f);
            self.check();
        }

        fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
            self.o.io_slices(&self.f, out)
        }

        fn check(&self) {
            assert_eq!(self.f.live(), self.o.queued_frames());
        }
    }

    fn limits() -> OutboxLimits {
        OutboxLimits {
            high_water_bytes: 100,
            low_water_bytes: 40,
            hard_limit_bytes: 400,
            max_lag_ns: 1_000,
        }
    }

    fn drain_all(o: &mut Q) -> Vec<u8> {
        let mut out = Vec::new();
        let mut slices = [IoSlice::new(&[]); 4];
        let n = o.io_slices(&mut slices);
        for s in &slices[..n] {
            out.extend_from_slice(s);
        }
        out
    }

    #[test]
    fn stream_dropped_only_above_high_water_and_resync_below_low_water() {
        let l = limits();
        let mut o = Q::default();
        for _ in 0..3 {
            assert_eq!(
                o.admit(&frame(40, 1), FrameClass::Stream, &l, 0),
                Admit::Queue
            );
        }
        // 120 > 100: the next stream frame opens an episode.
        assert_eq!(
            o.admit(&frame(40, 2), FrameClass::Stream, &l, 5),
            Admit::DropStale
        );
        assert_eq!(o.o.dropping_since_ns(), Some(5));
        // Control and resync frames still go in.
        assert_eq!(
            o.admit(&frame(10, 3), FrameClass::Control, &l, 6),
            Admit::Queue
        );
        assert_eq!(
            o.admit(&frame(10, 4), FrameClass::Resync, &l, 6),
            Admit::Queue
        );
        assert_eq!(o.o.buffered_bytes(), 140);
        // Draining to 60 (between low and high): still dropping.
        assert_eq!(o.consume(80, &l), Consumed::Pending);
        assert_eq!(
            o.admit(&frame(1, 5), FrameClass::Stream, &l, 7),
            Admit::DropStale
        );
        // Below low-water: the resync is due once.
        assert_eq!(o.consume(30, &l), Consumed::ResyncDue);
        assert_eq!(o.o.dropping_since_ns(), None);
        assert_eq!(
            o.admit(&frame(1, 6), FrameClass::Stream, &l, 8),
            Admit::Queue
        );
        assert_eq!(o.consume(1000, &l), Consumed::Drained);
        assert_eq!(o.o.buffered_bytes(), 0);
    }

    /// The kernel's unsent bytes count: a client whose socket holds them is
    /// behind even with an empty queue, and its episode ends only once the
    /// kernel has sent them too.
    #[test]
    fn kernel_unsent_bytes_count_toward_every_threshold() {
        let l = limits();
        let mut o = Q::default();
        assert_eq!(o.o.set_kernel_unsent(90, &l), Consumed::Drained);
        assert_eq!(
            o.admit(&frame(20, 1), FrameClass::Stream, &l, 0),
            Admit::Queue
        );
        assert_eq!(o.o.backlog_bytes(), 110);
        assert_eq!(
            o.admit(&frame(20, 2), FrameClass::Stream, &l, 1),
            Admit::DropStale,
            "90 in the kernel + 20 queued > high-water 100"
        );
        // The queue drains into the kernel, which does not send: still behind.
        assert_eq!(o.consume(20, &l), Consumed::Drained);
        assert_eq!(o.o.set_kernel_unsent(110, &l), Consumed::Drained);
        assert!(o.o.dropping_since_ns().is_some());
        assert_eq!(
            o.admit(&frame(300, 3), FrameClass::Resync, &l, 2),
            Admit::Close,
            "110 + 300 > hard limit 400"
        );
        // The kernel sends: below low-water, the resync is due.
        assert_eq!(o.o.set_kernel_unsent(39, &l), Consumed::ResyncDue);
        assert_eq!(o.o.dropping_since_ns(), None);
    }

    #[test]
    fn hard_limit_and_max_lag_close() {
        let l = limits();
        let mut o = Q::default();
        assert_eq!(
            o.admit(&frame(390, 1), FrameClass::Resync, &l, 0),
            Admit::Queue
        );
        assert_eq!(
            o.admit(&frame(20, 1), FrameClass::Resync, &l, 0),
            Admit::Close
        );
        // Control frames (pongs of a ping flood) are bounded the same way.
        assert_eq!(
            o.admit(&frame(20, 1), FrameClass::Control, &l, 0),
            Admit::Close
        );
        assert_eq!(
            o.admit(&frame(10, 1), FrameClass::Control, &l, 0),
            Admit::Queue
        );
        assert_eq!(
            o.o.buffered_bytes(),
            400,
            "up to the hard limit, never past it"
        );
        assert_eq!(
            o.admit(&frame(20, 1), FrameClass::Stream, &l, 0),
            Admit::DropStale
        );

        let mut o = Q::default();
        assert_eq!(
            o.admit(&frame(101, 1), FrameClass::Stream, &l, 0),
            Admit::Queue
        );
        assert_eq!(
            o.admit(&frame(1, 1), FrameClass::Stream, &l, 100),
            Admit::DropStale
        );
        assert!(!o.o.is_lagging(&l, 1_100));
        assert_eq!(
            o.admit(&frame(1, 1), FrameClass::Stream, &l, 1_100),
            Admit::DropStale
        );
        assert!(o.o.is_lagging(&l, 1_101));
        assert_eq!(
            o.admit(&frame(1, 1), FrameClass::Stream, &l, 1_101),
            Admit::Close
        );
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_buffer_is_released() {
        let l = limits();
        let mut o = Q::default();
        assert_eq!(o.o.capacity_bytes(), 0, "no allocation while empty");
        o.admit(
            &EncodedFrame::from_frame_bytes(vec![1, 2, 3]),
            FrameClass::Control,
            &l,
            0,
        );
        o.admit(
            &EncodedFrame::from_frame_bytes(vec![4, 5]),
            FrameClass::Control,
            &l,
            0,
        );
        assert_eq!(o.consume(2, &l), Consumed::Pending);
        assert_eq!(drain_all(&mut o), vec![3, 4, 5]);
        assert_eq!(o.consume(2, &l), Consumed::Pending);
        assert_eq!(drain_all(&mut o), vec![5]);
        assert_eq!(o.consume(1, &l), Consumed::Drained);
        assert!(o.o.capacity_bytes() > 0);
        assert!(o.o.release_if_idle());
        assert_eq!(o.o.capacity_bytes(), 0);
    }

    #[test]
    fn discard_keeps_the_partial_frame_only() {
        let l = limits();
        let mut o = Q::default();
        o.admit(
            &EncodedFrame::from_frame_bytes(vec![1, 2, 3]),
            FrameClass::Control,
            &l,
            0,
        );
        o.admit(
            &EncodedFrame::from_frame_bytes(vec![4, 5]),
            FrameClass::Control,
            &l,
            0,
        );
        o.consume(1, &l);
        o.discard_unstarted();
        assert_eq!(drain_all(&mut o), vec![2, 3]);
        o.consume(2, &l);
        o.admit(
            &EncodedFrame::from_frame_bytes(vec![6]),
            FrameClass::Control,
            &l,
            0,
        );
        o.discard_unstarted();
        assert!(o.o.is_empty());
        assert_eq!(o.o.buffered_bytes(), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Admit { len: usize, class: u8, dt_ns: u64 },
        Consume { n: usize, slices: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..80, 0u8..3, 0u64..300).prop_map(|(len, class, dt_ns)| Step::Admit {
                len,
                class,
                dt_ns
            }),
            (0usize..200, 1usize..5).prop_map(|(n, slices)| Step::Consume { n, slices }),
        ]
    }

    /// The naive model: a byte vector, an episode flag and a start time.
    #[derive(Default)]
    struct Model {
        bytes: VecDeque<u8>,
        dropping_since_ns: Option<u64>,
    }

    proptest! {
        #[test]
        fn outbox_matches_a_naive_byte_model(steps in proptest::collection::vec(step(), 1..120)) {
            let l = limits();
            let mut o = Q::default();
            let mut m = Model::default();
            let mut written = Vec::new();
            let mut expected_written = Vec::new();
            let mut now_ns = 0u64;
            let mut fill = 0u8;
            for s in steps {
                match s {
                    Step::Admit { len, class, dt_ns } => {
                        now_ns += dt_ns;
                        fill = fill.wrapping_add(1);
                        let class = [FrameClass::Control, FrameClass::Resync, FrameClass::Stream][class as usize];
                        let got = o.admit(&frame(len, fill), class, &l, now_ns);
                        let buffered = m.bytes.len();
                        let want = match class {
                            FrameClass::Control | FrameClass::Resync if buffered + len > l.hard_limit_bytes => Admit::Close,
                            FrameClass::Control | FrameClass::Resync => Admit::Queue,
                            FrameClass::Stream if buffered > l.hard_limit_bytes => Admit::Close,
                            FrameClass::Stream => match m.dropping_since_ns {
                                Some(t) if now_ns - t > l.max_lag_ns => Admit::Close,
                                Some(_) => Admit::DropStale,
                                None if buffered > l.high_water_bytes => {
                                    m.dropping_since_ns = Some(now_ns);
                                    Admit::DropStale
                                }
                                None => Admit::Queue,
                            },
                        };
                        prop_assert_eq!(got, want);
                        if want == Admit::Queue {
                            m.bytes.extend(std::iter::repeat_n(fill, len));
                        }
                    }
                    Step::Consume { n, slices } => {
                        // The fake socket takes at most `n` bytes of what io_slices offers.
                        let mut buf = [IoSlice::new(&[]); 4];
                        let k = o.io_slices(&mut buf[..slices]);
                        let mut taken = Vec::new();
                        for sl in &buf[..k] {
                            let room = n - taken.len();
                            taken.extend_from_slice(&sl[..sl.len().min(room)]);
                        }
                        let took = taken.len();
                        written.extend_from_slice(&taken);
                        let got = o.consume(took, &l);
                        expected_written.extend(m.bytes.drain(..took));
                        let want = if m.dropping_since_ns.is_some() && m.bytes.len() < l.low_water_bytes {
                            m.dropping_since_ns = None;
                            Consumed::ResyncDue
                        } else if m.bytes.is_empty() {
                            Consumed::Drained
                        } else {
                            Consumed::Pending
                        };
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(o.o.buffered_bytes(), m.bytes.len());
                prop_assert_eq!(o.o.dropping_since_ns(), m.dropping_since_ns);
                prop_assert_eq!(&written, &expected_written);
            }
            // Whatever is left comes out in order too.
            let mut rest = Vec::new();
            let mut buf = [IoSlice::new(&[]); 256];
            let k = o.io_slices(&mut buf);
            for sl in &buf[..k] {
                rest.extend_from_slice(sl);
            }
            prop_assert_eq!(rest, m.bytes.iter().copied().collect::<Vec<u8>>());
        }
    }
}
