//! Step 7 of the duty cycle: the timing wheel (handshake, close and auth
//! deadlines), the heartbeat sweep (ping / 4003, the SSE comment line),
//! housekeeping every 100 ms (kernel unsent bytes, the core's lag and idle
//! duties) and publishing statistics.

use super::*;

/// What a wheel entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerKind {
    /// The codec's deadline: the handshake or the close handshake.
    Codec,
    /// The worker's one recurring entry (not a connection's): the heartbeat
    /// sweep checks its share of the connections, every wheel tick.
    HeartbeatSweep,
    /// The connection's auth deadline: 5 s to authenticate (4005), or its
    /// token's `exp` (4004) (PROTOCOL §8; `auth.rs`).
    Auth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TimerKey {
    pub(super) slot: u32,
    pub(super) generation: u32,
    pub(super) kind: TimerKind,
}

impl Worker {
    /// Keeps the wheel's entry for the codec's deadline (handshake or close
    /// handshake) equal to [`ws::Conn::poll_timeout`].
    pub(super) fn sync_codec_timer(&mut self, slot: usize) {
        let epoch = self.shared.epoch;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let want = c.ws.poll_timeout().map(|d| {
            // A deadline at the epoch itself reads as 1 ns after it.
            (d.saturating_duration_since(epoch).as_nanos() as u64).max(1)
        });
        let have = c.codec_timer.and_then(|h| self.timers.deadline_ns(h));
        if want == have {
            return;
        }
        if let Some(h) = c.codec_timer.take() {
            self.timers.cancel(h);
        }
        if let Some(at) = want {
            let key = TimerKey {
                slot: slot as u32,
                generation: self.generations[slot],
                kind: TimerKind::Codec,
            };
            c.codec_timer = Some(self.timers.insert(at, key));
        }
    }

    /// When connection `c` is next due for a heartbeat check: its next ping,
    /// or the end of its allowed silence, whichever comes first. `None`:
    /// never (heartbeats off, or not upgraded).
    fn heartbeat_due_ns(&self, c: &Client) -> Option<u64> {
        let ping_ns = self.cfg.ping_interval_ms * 1_000_000;
        let silence_ns = ping_ns + self.cfg.pong_timeout_ms * 1_000_000;
        let sse_ping_ns = self.cfg.sse_ping_interval_ms * 1_000_000;
        if !c.upgraded {
            return None;
        }
        // An SSE stream gets a comment line every 15 s and answers nothing
        // (PROTOCOL §11): no silence limit; a dead peer shows as a write error
        // or a slow consumer.
        match c.ws.is_streaming() {
            true if sse_ping_ns == 0 => None,
            true => Some(c.last_ping_ns + sse_ping_ns),
            false if ping_ns == 0 => None,
            false => Some((c.last_ping_ns + ping_ns).min(c.last_read_ns + silence_ns)),
        }
    }

    /// The heartbeat sweep's period: an eighth of the shortest ping interval
    /// (a ping is late by at most that), at least one wheel tick. `None`:
    /// heartbeats are off.
    pub(super) fn sweep_period_ns(cfg: &ShellConfig) -> Option<u64> {
        [cfg.ping_interval_ms, cfg.sse_ping_interval_ms]
            .into_iter()
            .filter(|&ms| ms > 0)
            .min()
            .map(|ms| (ms * 1_000_000 / 8).max(WHEEL_TICK_NS))
    }

    /// Checks the share of the connections the heartbeat sweep hands out now
    /// ([`fanout::sweep`](crate::fanout::sweep)). Run by the worker's one
    /// [`TimerKind::HeartbeatSweep`] entry, so heartbeats cost the wheel one
    /// entry per worker, not one per connection.
    fn sweep_heartbeats(&mut self, now: Instant, now_ns: u64) {
        let Some(sweep) = self.sweep.as_mut() else {
            return;
        };
        for slot in sweep.advance(now_ns, self.clients.len()) {
            let due = self.clients[slot]
                .as_ref()
                .and_then(|c| self.heartbeat_due_ns(c));
            if due.is_some_and(|at| now_ns >= at) {
                self.heartbeat(slot, now, now_ns);
            }
        }
    }

    pub(super) fn timers(&mut self, now: Instant, now_ns: u64) -> usize {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        let fired = self.timers.poll_expired(now_ns, &mut expired);
        for &(_, key) in &expired {
            if key.kind == TimerKind::HeartbeatSweep {
                self.sweep_heartbeats(now, now_ns);
                self.timers.insert(now_ns + WHEEL_TICK_NS, key);
                continue;
            }
            let slot = key.slot as usize;
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if self.generations[slot] != key.generation {
                continue;
            }
            match key.kind {
                TimerKind::Codec => {
                    c.codec_timer = None;
                    if c.ws.state() == ws::State::Handshake {
                        self.me.counters.reject(Reject::HandshakeTimeout);
                    }
                    c.ws.handle_timeout(now);
                    if c.ws.is_closed() {
                        // Whatever was not written by now will not be: the peer is not reading.
                        self.drop_client(slot, now_ns);
                    } else {
                        self.sync_codec_timer(slot);
                    }
                }
                TimerKind::Auth => self.auth_deadline(slot, now, now_ns),
                // Not a connection's: run above.
                TimerKind::HeartbeatSweep => {}
            }
        }
        self.expired = expired;
        if now_ns.saturating_sub(self.last_housekeeping_ns) >= HOUSEKEEPING_NS {
            self.last_housekeeping_ns = now_ns;
            // Sockets that held unsent bytes get no event as the kernel
            // drains them (or does not): measure them again.
            let mut ids: Vec<ConnId> = self.core.kernel_backlogged().collect();
            // And a bounded share of the connections written since their
            // last measure, so a write the kernel took but could not send is
            // seen within about a second at 10,000 active connections,
            // without a syscall per write or a long turn.
            ids.extend(std::iter::from_fn(|| self.core.poll_unmeasured()).take(MEASURES_PER_TURN));
            for id in ids {
                if let Some(&slot) = self.by_core.get(id.0 as usize) {
                    self.measure_unsent(slot as usize, id, now_ns);
                }
            }
            self.core.handle_timeout(now_ns);
        }
        if now_ns.saturating_sub(self.last_publish_ns) >= PUBLISH_NS {
            self.last_publish_ns = now_ns;
            self.publish_stats();
            if let Ok(mut h) = self.me.latency_ns.lock() {
                h.clone_from(&self.latency);
            }
            if self.shared.ip_limits_on {
                self.shared.ip_limits().sweep(now_ns);
            }
        }
        fired
    }

    /// A heartbeat is due (PROTOCOL §7): close 4003 after ping interval +
    /// pong timeout of silence, else ping when a ping interval has passed.
    pub(super) fn heartbeat(&mut self, slot: usize, now: Instant, now_ns: u64) {
        let ping_ns = self.cfg.ping_interval_ms * 1_000_000;
        let silence_ns = ping_ns + self.cfg.pong_timeout_ms * 1_000_000;
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if c.ws.is_streaming() {
            c.last_ping_ns = now_ns;
            if let Some(id) = c.core {
                self.core
                    .queue_control(id, EncodedFrame::raw(ws::sse::PING));
            }
            return;
        }
        if !c.ws.is_open() {
            // Closing: the close-handshake deadline takes over.
            return;
        }
        if now_ns.saturating_sub(c.last_read_ns) >= silence_ns {
            debug!(worker = self.id.0, ip = %c.ip, "heartbeat timeout");
            self.me.counters.reject(Reject::HeartbeatTimeout);
            c.ws.close(now, CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout");
            self.move_codec_output(slot);
            return;
        }
        if now_ns.saturating_sub(c.last_ping_ns) >= ping_ns {
            c.last_ping_ns = now_ns;
            let _ = c.ws.send_ping(&[]);
            self.move_codec_output(slot);
        }
    }

    /// Publishes the core's counters for scrapes (O(connections): once a second).
    pub(super) fn publish_stats(&self) {
        let s = self.core.stats();
        let c = &self.me.counters;
        c.subscriptions.set(s.index.conn_entries as u64);
        c.messages_out.set(s.delivered_msgs);
        c.snapshot_requests.set(s.snapshot_requests_sent);
        c.snapshot_requests_coalesced
            .set(s.snapshot_requests_coalesced);
        c.dropped_slow.set(s.dropped_deltas + s.dropped_trades);
        c.core_connections.set(s.connections as u64);
        let i = &s.index;
        c.index_entries.set(
            (i.book_entries
                + i.trades_entries
                + i.conn_entries
                + i.rendering_entries
                + i.symbols_with_interest) as u64,
        );
        for (r, v) in [
            (Reject::RateLimited, s.rejected_rate_limited),
            (Reject::BadRequest, s.rejected_bad_request),
            (
                Reject::TooManySubscriptions,
                s.rejected_too_many_subscriptions,
            ),
            (Reject::UnknownSymbol, s.rejected_unknown_symbol),
            (Reject::Forbidden, s.rejected_forbidden),
            (Reject::Unauthorized, s.rejected_unauthorized),
            (Reject::TokenExpired, s.token_expired_closes),
            (Reject::UserConnections, s.rejected_user_connections),
        ] {
            c.rejections[r as usize].set(v);
        }
        for (counter, &v) in c.auth_results.iter().zip(&s.auth_results) {
            counter.set(v);
        }
        for (gauge, &v) in c.tiers.iter().zip(&s.tiers) {
            gauge.set(v as u64);
        }
        // Connections' deadlines: the heartbeat sweep's entry is the worker's.
        let own = usize::from(self.sweep.is_some());
        c.timers.set(self.timers.len().saturating_sub(own) as u64);
        c.oldest_backlog_age_ns.set(s.oldest_backlog_age_ns);
        c.lag_closes.set(s.lag_closes);
        if let Ok(mut h) = self.me.resync_lag.lock() {
            *h = s.resync_lag;
        }
    }
}
