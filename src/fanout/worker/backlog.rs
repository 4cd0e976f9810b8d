//! Freshness and slow consumers: what the socket took (`handle_written`),
//! what the kernel holds unsent, blocked writes, the resync when a dropping
//! episode ends, the slow-consumer closes (4001), and the periodic duties.

use super::delivery::{encode_control, stale_msg};
use super::{ConnId, ConnState, WorkerCore};
use crate::fanout::outbox::{Admit, Consumed, FrameClass};
use crate::fanout::ring::Lane;
use crate::fanout::subs::SubState;
use crate::wire::{CloseCode, StaleReason};

/// What the core knows of the bytes a connection's kernel socket holds
/// unsent (cold: beside `conns`). Ages are from [`Frames::born_ns`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KernelBacklog {
    /// The oldest frame of the last write, and that write's size.
    last_write_born_ns: u64,
    last_write_bytes: u32,
    /// The oldest frame of the first write since the last measure (0: none).
    since_measure_born_ns: u64,
    /// When the oldest byte the kernel still holds entered the worker, as
    /// far as the measures tell (0: the kernel holds nothing).
    oldest_born_ns: u64,
}

impl WorkerCore {
    /// The socket of `conn` accepted `n` bytes of [`Outbox::io_slices`](crate::fanout::outbox::Outbox::io_slices).
    /// Resyncs the dropped symbols when a dropping episode ends.
    pub fn handle_written(&mut self, conn: ConnId, n: usize, now_ns: u64) -> Consumed {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else {
            return Consumed::Drained;
        };
        if c.state == ConnState::Free {
            return Consumed::Drained;
        }
        if n > 0 && !c.in_unmeasured_list {
            c.in_unmeasured_list = true;
            self.unmeasured.push(conn.0);
        }
        if let Some(head) = c.outbox.head() {
            let k = &mut self.kernel[conn.0 as usize];
            k.last_write_born_ns = self.frames.born_ns(head);
            k.last_write_bytes = n.min(u32::MAX as usize) as u32;
            if k.since_measure_born_ns == 0 {
                k.since_measure_born_ns = k.last_write_born_ns;
            }
        }
        let dropping_since = c.outbox.dropping_since_ns();
        let consumed = c.outbox.consume(n, &self.limits, &mut self.frames);
        self.after_consumed(conn.0, consumed, dropping_since, now_ns);
        self.finish_closes();
        consumed
    }

    /// The kernel holds `bytes` of `conn`'s output unsent (`SIOCOUTQNSD`,
    /// measured by the shell after a blocked write, and every housekeeping
    /// turn while it is not zero). They count in the connection's backlog and
    /// in its lag; a dropping episode may end here.
    pub fn handle_kernel_unsent(&mut self, conn: ConnId, bytes: usize, now_ns: u64) -> Consumed {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else {
            return Consumed::Drained;
        };
        if c.state == ConnState::Free {
            return Consumed::Drained;
        }
        let k = &mut self.kernel[conn.0 as usize];
        k.oldest_born_ns = if bytes == 0 {
            0
        } else if bytes <= k.last_write_bytes as usize {
            // Every unsent byte is from the last write.
            k.last_write_born_ns
        } else if k.oldest_born_ns != 0 {
            k.oldest_born_ns
        } else {
            k.since_measure_born_ns.max(1)
        };
        k.since_measure_born_ns = 0;
        let dropping_since = c.outbox.dropping_since_ns();
        let consumed = c.outbox.set_kernel_unsent(bytes, &self.limits);
        if bytes > 0 && !c.in_backlog_list {
            c.in_backlog_list = true;
            self.backlogged.push(conn.0);
        }
        self.after_consumed(conn.0, consumed, dropping_since, now_ns);
        self.finish_closes();
        consumed
    }

    /// `conn`'s socket would take no more: its queue is a backlog whose lag
    /// housekeeping watches.
    pub fn handle_blocked(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn.0 as usize)
            && c.state != ConnState::Free
            && !c.in_backlog_list
        {
            c.in_backlog_list = true;
            self.backlogged.push(conn.0);
        }
    }

    /// A connection written since its kernel backlog was last measured (each
    /// once; the shell measures a bounded number per housekeeping turn, so a
    /// write that the kernel took but could not send is seen within about a
    /// second, without a syscall per write).
    pub fn poll_unmeasured(&mut self) -> Option<ConnId> {
        while let Some(id) = self.unmeasured.pop() {
            let c = &mut self.conns[id as usize];
            if c.in_unmeasured_list {
                c.in_unmeasured_list = false;
                if c.state != ConnState::Free {
                    return Some(ConnId(id));
                }
            }
        }
        None
    }

    /// Connections whose kernel socket held unsent bytes at the last measure
    /// (the shell measures them again each housekeeping turn).
    pub fn kernel_backlogged(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.backlogged
            .iter()
            .filter(|&&id| self.conns[id as usize].outbox.kernel_unsent_bytes() > 0)
            .map(|&id| ConnId(id))
    }

    /// Age of the oldest byte `conn` has not received, as far as the engine
    /// knows: its queue's first frame, or the kernel's oldest unsent byte.
    fn backlog_age_ns(&self, conn: u32, now_ns: u64) -> u64 {
        let c = &self.conns[conn as usize];
        let queued = c.outbox.head().map(|h| self.frames.born_ns(h));
        let k = self.kernel[conn as usize].oldest_born_ns;
        let kernel = (c.outbox.kernel_unsent_bytes() > 0 && k != 0).then_some(k);
        match queued.into_iter().chain(kernel).min() {
            Some(born) => now_ns.saturating_sub(born),
            None => 0,
        }
    }

    pub(super) fn after_consumed(
        &mut self,
        conn: u32,
        consumed: Consumed,
        dropping_since: Option<u64>,
        now_ns: u64,
    ) {
        let c = &mut self.conns[conn as usize];
        match consumed {
            Consumed::ResyncDue => {
                if let Some(since) = dropping_since {
                    self.stats.resync_lag.record(now_ns.saturating_sub(since));
                }
                if c.state == ConnState::Open {
                    self.resync_dropped(conn, now_ns);
                }
            }
            Consumed::Drained => {
                if !c.in_idle_list {
                    c.in_idle_list = true;
                    self.idle.push((conn, now_ns));
                }
            }
            Consumed::Pending => {}
        }
    }

    /// Periodic duties: closes connections dropping for longer than the max
    /// lag (4001) and frees the queue buffers of connections idle for
    /// `idle_release_ns`. Returns how many connections it acted on.
    pub fn handle_timeout(&mut self, now_ns: u64) -> usize {
        let mut done = self.check_backlog_lag(now_ns);
        let mut i = 0;
        while i < self.dropping.len() {
            let id = self.dropping[i];
            let c = &mut self.conns[id as usize];
            if c.state == ConnState::Open && c.outbox.dropping_since_ns().is_some() {
                if c.outbox.is_lagging(&self.limits, now_ns) {
                    c.state = ConnState::Closing;
                    self.pending_close.push(id);
                    done += 1;
                } else {
                    i += 1;
                    continue;
                }
            }
            c.in_dropping_list = false;
            self.dropping.swap_remove(i);
        }
        let mut i = 0;
        while i < self.idle.len() {
            let (id, drained_at_ns) = self.idle[i];
            let c = &mut self.conns[id as usize];
            if c.state != ConnState::Free && c.outbox.is_empty() {
                if now_ns.saturating_sub(drained_at_ns) < self.cfg.idle_release_ns {
                    i += 1;
                    continue;
                }
                done += usize::from(c.outbox.release_if_idle());
            }
            c.in_idle_list = false;
            self.idle.swap_remove(i);
        }
        self.finish_closes();
        give_back_room(&mut self.idle);
        give_back_room(&mut self.dropping);
        give_back_room(&mut self.backlogged);
        give_back_room(&mut self.unmeasured);
        give_back_room(&mut self.pending_close);
        if let Some(room) = room_to_keep(self.dirty.len(), self.dirty.capacity()) {
            self.dirty.shrink_to(room);
        }
        done
    }

    /// PROTOCOL §7 wherever the backlog sits: a backlogged connection whose
    /// oldest unreceived byte is older than the maximum lag is closed 4001
    /// (queued bytes, or bytes the kernel holds unsent). Connections with
    /// nothing left leave the list. Also publishes the oldest age.
    fn check_backlog_lag(&mut self, now_ns: u64) -> usize {
        let mut done = 0;
        let mut oldest = 0;
        let mut i = 0;
        while i < self.backlogged.len() {
            let id = self.backlogged[i];
            let c = &self.conns[id as usize];
            let keep = c.state == ConnState::Open
                && (!c.outbox.is_empty() || c.outbox.kernel_unsent_bytes() > 0);
            if keep {
                let age = self.backlog_age_ns(id, now_ns);
                if age > self.cfg.max_lag_ns {
                    self.stats.lag_closes += 1;
                    let c = &mut self.conns[id as usize];
                    c.state = ConnState::Closing;
                    self.pending_close.push(id);
                    done += 1;
                } else {
                    oldest = oldest.max(age);
                    i += 1;
                    continue;
                }
            }
            self.conns[id as usize].in_backlog_list = false;
            self.backlogged.swap_remove(i);
        }
        self.stats.oldest_backlog_age_ns = oldest;
        done
    }

    /// A dropping episode of `conn` ended: report every dropped symbol-channel
    /// (books resync through the coalesced snapshot path).
    pub(super) fn resync_dropped(&mut self, conn: u32, now_ns: u64) {
        let rendering = self.conns[conn as usize].rendering;
        let mut i = 0;
        while let Some(cs) = self.subs.conn_subs(conn).get(i).copied() {
            i += 1;
            let sub = *self.subs.sub_mut(cs.symbol, cs.channel, cs.pos());
            if sub.state != SubState::Dropping {
                continue;
            }
            let reason = match cs.channel {
                Lane::Book => StaleReason::SlowConsumer,
                Lane::Trades => StaleReason::SlowConsumerTrades,
            };
            let msg = stale_msg(&self.name_of(cs.symbol), u64::from(sub.dropped), reason);
            let frame = encode_control(rendering, &msg, &mut self.json_buf);
            if self.sink().admit(conn, &frame, FrameClass::Resync, now_ns) != Admit::Queue {
                return;
            }
            self.stats.slow_consumer_resyncs += 1;
            let s = self.subs.sub_mut(cs.symbol, cs.channel, cs.pos());
            s.dropped = 0;
            match cs.channel {
                Lane::Book => {
                    s.state = SubState::Awaiting;
                    self.request_snapshot(cs.symbol);
                }
                Lane::Trades => {
                    s.state = SubState::Live;
                    s.seq = 0;
                }
            }
        }
    }

    /// Connections the policy decided to close: out of every index now, their
    /// unstarted frames discarded, reported through `poll_close`.
    pub(super) fn finish_closes(&mut self) {
        while let Some(id) = self.pending_close.pop() {
            self.stats.slow_consumer_closes += 1;
            self.remove_all_subs(id);
            self.conns[id as usize]
                .outbox
                .discard_unstarted(&mut self.frames);
            self.closes
                .push_back((ConnId(id), CloseCode::SLOW_CONSUMER, "slow consumer"));
        }
    }
}

/// Lists of connections keep room for this many entries at least.
const KEEP_ROOM: usize = 1024;

/// A list grown by a storm (every connection's snapshot at once, say) keeps
/// room for at most four times what it holds: the room is given back, so it
/// does not stay resident for the life of the process.
fn give_back_room<T>(v: &mut Vec<T>) {
    if let Some(room) = room_to_keep(v.len(), v.capacity()) {
        v.shrink_to(room);
    }
}

/// The room a list of `len` entries with room for `capacity` shrinks to, if
/// it is over a quarter empty (and larger than [`KEEP_ROOM`]).
fn room_to_keep(len: usize, capacity: usize) -> Option<usize> {
    (capacity > KEEP_ROOM && len < capacity / 4).then_some(len * 2)
}
