//! Client input: accepts (bounded per turn, with the resource backoff),
//! reads (bounded per client per turn, paused above high-water), and the
//! codec's events (HTTP requests, WebSocket messages, closes).

use super::*;

impl Worker {
    pub(super) fn accept(&mut self, now: Instant, now_ns: u64) -> usize {
        self.accept_pending = false;
        let mut n = 0;
        loop {
            if n == ACCEPTS_PER_TURN {
                self.accept_pending = true;
                break;
            }
            let Some(listener) = self.listener.as_ref() else {
                break;
            };
            let (mut stream, addr) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_backoff.on_success();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    // EMFILE and friends: the backlog keeps the connections;
                    // retry on a timer (no new event will come for them),
                    // carry on serving, log once per interval.
                    self.me.counters.accept_failures.inc();
                    let f = self.accept_backoff.on_failure(now_ns);
                    if let Some(not_logged) = f.log {
                        warn!(worker = self.id.0, error = %e, failures_since_last_line = not_logged, "accept failed: out of resources; retrying every 100 ms");
                    }
                    break;
                }
                Err(e) => {
                    // That connection's own problem (ECONNABORTED…): next.
                    debug!(worker = self.id.0, error = %e, "accept failed");
                    continue;
                }
            };
            self.accept_backoff.on_success();
            n += 1;
            self.me.counters.connections_accepted.inc();
            let _ = stream.set_nodelay(true);
            if self.cfg.socket_send_buffer_bytes > 0 {
                let _ = socket2::SockRef::from(&stream)
                    .set_send_buffer_size(self.cfg.socket_send_buffer_bytes);
            }
            if self.cfg.kernel_unsent_bytes > 0 {
                let _ = socket2::SockRef::from(&stream)
                    .set_tcp_notsent_lowat(self.cfg.kernel_unsent_bytes as u32);
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.clients.push(None);
                self.generations.push(0);
                self.clients.len() - 1
            });
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot + FIRST_CLIENT),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(worker = self.id.0, error = %e, "register failed");
                self.free.push(slot);
                continue;
            }
            if self.shared.ip_limits_on {
                self.shared.ip_limits().connect(addr.ip());
            }
            self.generations[slot] = self.generations[slot].wrapping_add(1);
            self.me.counters.sockets.inc();
            self.clients[slot] = Some(Client {
                stream,
                ip: addr.ip(),
                ws: ws::Conn::server(now, self.ws_config),
                core: None,
                out: None,
                upgraded: false,
                read_paused: false,
                blocked: false,
                last_read_ns: now_ns,
                last_ping_ns: now_ns,
                codec_timer: None,
                auth: None,
            });
            self.sync_codec_timer(slot);
            // Edge-triggered: bytes may already wait.
            self.pending_reads.push(slot);
        }
        n
    }

    pub(super) fn read_client(&mut self, slot: usize, now: Instant, now_ns: u64) -> usize {
        let mut reads = 0;
        loop {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return reads;
            };
            if c.ws.is_closed() {
                return reads;
            }
            if reads == READS_PER_TURN {
                self.pending_reads.push(slot);
                return reads;
            }
            // A peer that does not read its answers (pongs of a ping flood,
            // errors of a request flood) is not read either until they drain
            // (`resume_reads`): its queue stays near high-water and TCP flow
            // control holds the rest of its input in the kernel.
            if let Some(id) = c.core
                && self.core.over_high_water(id)
            {
                if !c.read_paused {
                    c.read_paused = true;
                    self.me.counters.reads_paused.inc();
                }
                return reads;
            }
            match c.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    debug!(worker = self.id.0, ip = %c.ip, "peer closed");
                    self.drop_client(slot, now_ns);
                    return reads;
                }
                Ok(n) => {
                    reads += 1;
                    c.last_read_ns = now_ns;
                    c.ws.handle_read(now, &self.read_buf[..n]);
                    self.handle_events(slot, now, now_ns);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return reads,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(worker = self.id.0, error = %e, "read failed");
                    self.drop_client(slot, now_ns);
                    return reads;
                }
            }
        }
    }

    /// Acts on every event the codec has, then moves its output to the socket queue.
    pub(super) fn handle_events(&mut self, slot: usize, now: Instant, now_ns: u64) {
        loop {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let Some(ev) = c.ws.poll_event(now) else {
                break;
            };
            match ev {
                Event::Request(req) => self.handle_request(slot, &req, now, now_ns),
                Event::BadRequest(e) => {
                    debug!(worker = self.id.0, ip = %c.ip, error = %e, "bad HTTP request");
                    self.me.counters.reject(if e.status() == 431 {
                        Reject::HeaderTooLarge
                    } else {
                        Reject::BadHttpRequest
                    });
                }
                Event::Text(text) => match c.core {
                    Some(id) => self.client_text(slot, id, &text, now_ns),
                    None => {
                        let _ = c.ws.send_text(&text);
                    }
                },
                Event::Binary(bytes) => {
                    // Only the echo endpoint accepts binary messages.
                    let _ = c.ws.send_binary(&bytes);
                }
                Event::Close { .. } => {}
                Event::ProtocolError(e) => {
                    debug!(worker = self.id.0, ip = %c.ip, error = %e, "protocol error");
                    self.me
                        .counters
                        .reject(if e.close_code() == CloseCode::MESSAGE_TOO_BIG {
                            Reject::MessageTooBig
                        } else {
                            Reject::ProtocolError
                        });
                }
            }
        }
        self.move_codec_output(slot);
    }

    /// Moves what the codec wants to send (HTTP answers, pings, pongs, close
    /// frames, echoes) to the connection's queue, schedules its write, and
    /// keeps the codec's deadline in the wheel. A core connection whose codec
    /// left `Open` gets no more market data.
    pub(super) fn move_codec_output(&mut self, slot: usize) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Some(id) = c.core
            && !c.ws.is_open()
            && !c.ws.is_streaming()
        {
            self.core.handle_closing(id);
        }
        if c.ws.transmit_len() > 0 {
            match c.core {
                Some(id) => {
                    self.scratch.clear();
                    c.ws.poll_transmit(&mut self.scratch);
                    // Per-connection control bytes (ping, pong, close): a copy is expected here.
                    self.core
                        .queue_control(id, EncodedFrame::from_frame_bytes(self.scratch.clone()));
                }
                None => {
                    c.ws.poll_transmit(&mut c.out.get_or_insert_default().bytes);
                    self.pending_writes.push(slot);
                }
            }
        } else if c.ws.is_closed() {
            // Nothing more to say: let the flush step drop it once written.
            self.pending_writes.push(slot);
        }
        self.sync_codec_timer(slot);
    }
}
