//! The write path: step 6 of the duty cycle (a flush slice over the dirty
//! connections), one `send` of everything queued per connection, and what
//! follows a write (blocked sockets, the kernel's unsent bytes, paused reads).

use super::*;

/// Largest write gathered into one contiguous buffer (see `flush_conn`).
const GATHER_BYTES: usize = 64 * 1024;

thread_local! {
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Outcome of writing one connection's queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Drained,
    /// The socket is full: wait for writable.
    Blocked,
}

/// Writes `conn`'s queued frames to `w`, as many per `writev` as fit, until
/// the queue is empty or the writer would block. Returns the write calls made.
pub fn flush_conn<W: Write>(
    w: &mut W,
    core: &mut WorkerCore,
    conn: ConnId,
    now_ns: u64,
    writes: &mut u64,
    bytes: &mut u64,
) -> io::Result<Flush> {
    loop {
        let n = {
            let mut slices = [IoSlice::new(&[]); IOVECS];
            let k = core.io_slices(conn, &mut slices);
            if k == 0 {
                return Ok(Flush::Drained);
            }
            *writes += 1;
            // NB: small frames are gathered into one contiguous buffer and sent
            // with one `write`: in the fan-out bench (10,000 clients) the
            // kernel's per-segment work in `writev` cost more than the copy.
            let total: usize = slices[..k].iter().map(|s| s.len()).sum();
            let result = if k > 1 && total <= GATHER_BYTES {
                GATHER.with(|g| {
                    let mut g = g.borrow_mut();
                    g.clear();
                    for s in &slices[..k] {
                        g.extend_from_slice(s);
                    }
                    w.write(&g)
                })
            } else {
                w.write_vectored(&slices[..k])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        *bytes += n as u64;
        if core.handle_written(conn, n, now_ns) == Consumed::Drained {
            return Ok(Flush::Drained);
        }
    }
}

impl Worker {
    /// Writes dirty connections, oldest first, for one slice of the pacer
    /// ([`Pacer::slice_end`]); the rest wait for the next turn, after reads,
    /// accepts and the ring. A connection that gets more output while others
    /// wait goes behind them, so a frame waits at most one pass over the
    /// connections dirty before it, and under load each write carries every
    /// frame that arrived during that pass (the batch grows with the load).
    pub(super) fn flush(&mut self, start_ns: u64) -> usize {
        let end_ns = self.pacer.slice_end(start_ns);
        let mut n = 0;
        let (mut writes, mut bytes) = (0u64, 0u64);
        let mut now_ns = start_ns;
        while let Some(id) = self.core.poll_dirty() {
            n += 1;
            self.flush_one(id, start_ns, &mut writes, &mut bytes);
            if n % FLUSH_CLOCK_EVERY == 0 {
                now_ns = self.mono_ns(Instant::now());
                if now_ns >= end_ns {
                    break;
                }
            }
        }
        if n % FLUSH_CLOCK_EVERY != 0 {
            now_ns = self.mono_ns(Instant::now());
        }
        self.me.counters.writes.add(writes);
        self.me.counters.bytes_out.add(bytes);
        let done = self.core.dirty_done();
        let mark = self.core.dirty_mark();
        self.pacer
            .handle_flushed(now_ns, start_ns, done, mark, self.core.has_dirty());
        self.me.counters.last_pass_ns.set(self.pacer.last_pass_ns());
        if self.batch_ts.front().is_some_and(|&(_, mark)| mark <= done) {
            let done_ns = realtime_ns();
            while let Some(&(ts, mark)) = self.batch_ts.front() {
                if mark > done {
                    break;
                }
                let _ = self.latency.record(done_ns.saturating_sub(ts).max(1_000));
                self.batch_ts.pop_front();
            }
        }
        n
    }

    pub(super) fn flush_one(&mut self, id: ConnId, now_ns: u64, writes: &mut u64, bytes: &mut u64) {
        let Some(&slot) = self.by_core.get(id.0 as usize) else {
            return;
        };
        let slot = slot as usize;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if c.blocked {
            // Its writable event will flush it.
            return;
        }
        let result = flush_conn(&mut c.stream, &mut self.core, id, now_ns, writes, bytes);
        self.after_flush(slot, id, result, now_ns);
    }

    /// After writing a core connection: drop it if closed and written;
    /// otherwise note a block, measure the kernel's unsent bytes when they
    /// may matter (a blocked write, or some were unsent last time), and
    /// resume reading it if it was paused.
    pub(super) fn after_flush(
        &mut self,
        slot: usize,
        id: ConnId,
        result: io::Result<Flush>,
        now_ns: u64,
    ) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match result {
            Ok(Flush::Drained) if c.ws.is_closed() => return self.drop_client(slot, now_ns),
            Err(_) => return self.drop_client(slot, now_ns),
            Ok(Flush::Blocked) => {
                c.blocked = true;
                self.core.handle_blocked(id);
                self.measure_unsent(slot, id, now_ns);
            }
            Ok(Flush::Drained) => {
                if self.core.outbox(id).kernel_unsent_bytes() > 0 {
                    self.measure_unsent(slot, id, now_ns);
                }
            }
        }
        self.resume_reads(slot);
    }

    /// Asks the kernel how much of `slot`'s output it holds unsent and tells
    /// the core (DESIGN "Freshness").
    pub(super) fn measure_unsent(&mut self, slot: usize, id: ConnId, now_ns: u64) {
        let Some(c) = self.clients.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if let Ok(n) = unsent_bytes(&c.stream) {
            self.core.handle_kernel_unsent(id, n, now_ns);
        }
    }

    /// A paused client (see `read_client`) whose queue is back under
    /// high-water is read again; edge-triggered, so it is queued for a read.
    pub(super) fn resume_reads(&mut self, slot: usize) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if c.read_paused && c.core.is_none_or(|id| !self.core.over_high_water(id)) {
            c.read_paused = false;
            self.pending_reads.push(slot);
        }
    }

    /// Writes the clients that became writable or got shell output (HTTP
    /// answers, echoes); not held for the dirty queue, so handshakes stay quick.
    pub(super) fn write_pending(&mut self, now_ns: u64) -> usize {
        let (mut writes, mut bytes) = (0u64, 0u64);
        let mut n = 0;
        for slot in std::mem::take(&mut self.pending_writes) {
            n += self.write_client(slot, now_ns, &mut writes, &mut bytes);
        }
        self.me.counters.writes.add(writes);
        self.me.counters.bytes_out.add(bytes);
        n
    }

    /// Writes a client's pending output after a writable event or new shell output.
    pub(super) fn write_client(
        &mut self,
        slot: usize,
        now_ns: u64,
        writes: &mut u64,
        bytes: &mut u64,
    ) -> usize {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return 0;
        };
        let result = match c.core {
            Some(id) => {
                let result = flush_conn(&mut c.stream, &mut self.core, id, now_ns, writes, bytes);
                self.after_flush(slot, id, result, now_ns);
                return 1;
            }
            None => loop {
                let Some(out) = c.out.as_mut().filter(|o| o.pos < o.bytes.len()) else {
                    c.out = None;
                    break Ok(Flush::Drained);
                };
                *writes += 1;
                match c.stream.write(&out.bytes[out.pos..]) {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *bytes += n as u64;
                        out.pos += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flush::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
        };
        match result {
            Ok(Flush::Drained) if c.ws.is_closed() => self.drop_client(slot, now_ns),
            Ok(_) => self.resume_reads(slot),
            Err(_) => self.drop_client(slot, now_ns),
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::SymbolId;
    use crate::fanout::render::Rendered;
    use crate::fanout::ring::DataKind;
    use crate::wire::pb::{self, server_message::Body};

    /// A socket stand-in that counts write calls and takes everything.
    #[derive(Default)]
    struct CountingWriter {
        calls: usize,
        bytes: Vec<u8>,
    }

    impl Write for CountingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                self.bytes.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(body: Body) -> EncodedFrame {
        EncodedFrame::binary(&pb::ServerMessage { body: Some(body) })
    }

    /// N ticks queued for one connection in a loop turn leave in one write, not N.
    #[test]
    fn queued_ticks_leave_in_one_write() {
        let mut core = WorkerCore::new(Default::default());
        let sym = SymbolId(0);
        core.handle_ring(
            ToWorker::Instrument {
                symbol: sym,
                name: "BTC-USD".into(),
                price_decimals: 2,
                size_decimals: 4,
                epoch: 0,
            },
            0,
        );
        let conn = core.open_conn(ws::Encoding::Proto);
        core.handle_text(
            conn,
            r#"{"op":"subscribe","symbols":["BTC-USD"],"id":1}"#,
            0,
        );
        while core.poll_to_ingest().is_some() {}
        let snapshot = pb::BookSnapshot {
            symbol: "BTC-USD".into(),
            seq: 10,
            ..Default::default()
        };
        core.handle_ring(
            ToWorker::Snapshot {
                symbol: sym,
                seq: 10,
                frames: Some(Rendered::proto(frame(Body::Snapshot(snapshot)))),
                stale: None,
            },
            0,
        );
        // Flush the Subscribed + snapshot first, so only the ticks remain.
        let mut w = CountingWriter::default();
        let (mut writes, mut bytes) = (0, 0);
        while let Some(c) = core.poll_dirty() {
            flush_conn(&mut w, &mut core, c, 0, &mut writes, &mut bytes).unwrap();
        }
        let ticks = 40;
        for seq in 11..11 + ticks {
            let delta = pb::BookDelta {
                symbol: "BTC-USD".into(),
                seq,
                ..Default::default()
            };
            core.handle_ring(
                ToWorker::Data {
                    symbol: sym,
                    kind: DataKind::Delta,
                    seq,
                    prev_seq: seq - 1,
                    ingest_ts_ns: 0,
                    frames: Rendered::proto(frame(Body::Delta(delta))),
                },
                0,
            );
        }
        let mut w = CountingWriter::default();
        let (mut writes, mut bytes) = (0, 0);
        let dirty: Vec<_> = std::iter::from_fn(|| core.poll_dirty()).collect();
        assert_eq!(
            dirty,
            vec![conn],
            "the connection is dirty once, not once per tick"
        );
        assert_eq!(
            flush_conn(&mut w, &mut core, conn, 0, &mut writes, &mut bytes).unwrap(),
            Flush::Drained
        );
        assert_eq!(w.calls, 1, "{ticks} ticks in one writev");
        assert_eq!(writes, 1);
        assert_eq!(bytes as usize, w.bytes.len());
        // And the bytes are the ticks, in order.
        let mut rest = &w.bytes[..];
        let mut seqs = Vec::new();
        while !rest.is_empty() {
            let len = rest[1] as usize;
            let msg = <pb::ServerMessage as prost::Message>::decode(&rest[2..2 + len]).unwrap();
            if let Some(Body::Delta(d)) = msg.body {
                seqs.push(d.seq);
            }
            rest = &rest[2 + len..];
        }
        assert_eq!(seqs, (11..11 + ticks).collect::<Vec<_>>());
    }
}
