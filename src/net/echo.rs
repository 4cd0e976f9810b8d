//! Conformance echo server (a test aid, off by default): a single-threaded
//! mio loop that upgrades requests for `echo_path` and sends every text and
//! binary message back. The Autobahn|Testsuite (`.ci/autobahn.sh`) drives it.
//!
//! Runs on the thread that calls [`run`] (the `tickwire echo` main thread).
//! It only moves bytes: every decision (HTTP parsing, routing, framing,
//! close handshake, timeouts) is [`crate::ws::Conn`]'s and the
//! [`crate::ws::Router`]'s. It must never panic on peer input and never block:
//! sockets are non-blocking and one slow peer only grows its own buffer.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::ws::deflate::Compressor;
use crate::ws::{CloseCode, Config, Conn, Endpoint, Event, Response, Route, Router};

const LISTENER: Token = Token(usize::MAX);
/// Wake-up period: how quickly `stop` and deadlines are noticed.
const TICK: Duration = Duration::from_millis(100);
/// After our side is done, how long the peer gets to close its side.
const LINGER: Duration = Duration::from_secs(2);
/// Stop reading from a peer that does not read its echoes past this backlog.
const MAX_BACKLOG_BYTES: usize = 4 << 20;
const READ_CHUNK: usize = 64 * 1024;

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadStop {
    WouldBlock,
    Eof,
    /// The peer does not read its echoes: wait until the backlog drains.
    Backlog,
}

/// One accepted socket and its codec.
struct Client {
    stream: TcpStream,
    conn: Conn,
    /// Bytes to write; `out[out_pos..]` is not yet accepted by the kernel.
    out: Vec<u8>,
    out_pos: usize,
    /// Set once our side is shut down: the socket is dropped on the peer's
    /// EOF or at this instant.
    linger_until: Option<Instant>,
}

/// Serves WebSocket echo on `echo_path` until `stop` is set. Other paths get
/// 404, other requests on `echo_path` the router's answer (400, 405, 426…).
pub fn run(listener: TcpListener, echo_path: &str, stop: Arc<AtomicBool>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let router = Router::new().with_echo_path(echo_path);
    // permessage-deflate: one compressor for every connection (no context
    // takeover, so no connection keeps its own).
    let mut z = Compressor::new();
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut scratch = vec![0u8; READ_CHUNK];

    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(TICK)) {
            Ok(()) => {}
            // A signal (SIGTERM sets `stop`): look at the flag again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&mut listener, &poll, &mut clients, now)?;
                continue;
            }
            let slot = ev.token().0;
            let Some(Some(client)) = clients.get_mut(slot) else {
                continue;
            };
            let alive = client.on_ready(now, &router, &mut z, &mut scratch);
            if !alive {
                clients[slot] = None;
            }
        }
        for slot in clients.iter_mut() {
            if let Some(client) = slot
                && !client.on_tick(now)
            {
                *slot = None;
            }
        }
    }
    // Going away (RFC 6455 §7.4.1: 1001), best effort: one write attempt each.
    let now = Instant::now();
    for client in clients.iter_mut().flatten() {
        client
            .conn
            .close(now, CloseCode::GOING_AWAY, "server stopping");
        client.conn.poll_transmit(&mut client.out);
        let _ = client.flush();
    }
    Ok(())
}

fn accept_all(
    listener: &mut mio::net::TcpListener,
    poll: &Poll,
    clients: &mut Vec<Option<Client>>,
    now: Instant,
) -> io::Result<()> {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Out of descriptors, a connection reset before accept…: skip it.
            Err(e) => {
                tracing::warn!(error = %e, "echo: accept failed");
                return Ok(());
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = match clients.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                clients.push(None);
                clients.len() - 1
            }
        };
        poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        tracing::debug!(%peer, slot, "echo: accepted");
        clients[slot] = Some(Client {
            stream,
            conn: Conn::server(
                now,
                Config {
                    // Every echo compressed once negotiated: Autobahn 12/13's
                    // runner mishandles uncompressed messages on a deflate
                    // connection (RFC 7692 allows them; /ws sends them).
                    deflate_threshold_bytes: 0,
                    ..Config::default()
                },
            ),
            out: Vec::new(),
            out_pos: 0,
            linger_until: None,
        });
    }
}

impl Client {
    /// Socket readiness: read what there is, answer, write what we can.
    /// False when the socket should be dropped.
    fn on_ready(
        &mut self,
        now: Instant,
        router: &Router,
        z: &mut Compressor,
        scratch: &mut [u8],
    ) -> bool {
        loop {
            let stopped = match self.read_all(now, router, z, scratch) {
                Ok(stopped) => stopped,
                Err(_) => return false,
            };
            if self.flush().is_err() {
                return false;
            }
            match stopped {
                // The peer is gone (or half-closed after its close frame):
                // nothing more will be read, so the connection is over.
                ReadStop::Eof => return false,
                // The backlog drained in this flush: no event will say so.
                ReadStop::Backlog if self.backlog() <= MAX_BACKLOG_BYTES => continue,
                ReadStop::Backlog | ReadStop::WouldBlock => return self.finish_if_done(now),
            }
        }
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Timers: the codec's deadline and our linger.
    fn on_tick(&mut self, now: Instant) -> bool {
        if self.conn.poll_timeout().is_some_and(|d| now >= d) {
            self.conn.handle_timeout(now);
            self.conn.poll_transmit(&mut self.out);
            if self.flush().is_err() {
                return false;
            }
        }
        if self.linger_until.is_some_and(|t| now >= t) {
            return false;
        }
        self.finish_if_done(now)
    }

    /// Reads until the socket would block, the peer closes, or the backlog
    /// is too big.
    fn read_all(
        &mut self,
        now: Instant,
        router: &Router,
        z: &mut Compressor,
        scratch: &mut [u8],
    ) -> io::Result<ReadStop> {
        loop {
            if self.backlog() > MAX_BACKLOG_BYTES {
                return Ok(ReadStop::Backlog);
            }
            let n = match self.stream.read(scratch) {
                Ok(0) => return Ok(ReadStop::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadStop::WouldBlock),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.linger_until.is_some() {
                continue; // Our side is done: discard.
            }
            self.conn.handle_read(now, &scratch[..n]);
            self.drive(now, router, z);
        }
    }

    /// Acts on every event in order, queueing each answer before the next
    /// event is decoded (so an echo precedes a later close reply).
    fn drive(&mut self, now: Instant, router: &Router, z: &mut Compressor) {
        while let Some(ev) = self.conn.poll_event(now) {
            match ev {
                Event::Request(req) => match router.route(&req) {
                    Route::Upgrade(up) if up.endpoint == Endpoint::Echo => self.conn.accept(&up),
                    Route::Reject(resp) if router.endpoint(&req.path) == Some(Endpoint::Echo) => {
                        self.conn.respond(now, &resp)
                    }
                    _ => self.conn.respond(now, &Response::not_found()),
                },
                Event::Text(text) => {
                    self.conn.send_message(z, false, text.as_bytes());
                }
                Event::Binary(data) => {
                    self.conn.send_message(z, true, &data);
                }
                Event::BadRequest(e) => tracing::debug!(error = %e, "echo: bad request"),
                Event::ProtocolError(e) => tracing::debug!(error = %e, "echo: protocol error"),
                Event::Close { code, .. } => tracing::debug!(?code, "echo: peer closed"),
            }
            self.conn.poll_transmit(&mut self.out);
        }
        self.conn.poll_transmit(&mut self.out);
    }

    /// Writes as much of the backlog as the kernel takes.
    fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Everything written: give the memory back.
        self.out = Vec::new();
        self.out_pos = 0;
        Ok(())
    }

    /// Once the codec is closed and everything is written, shut our side
    /// (the server closes the TCP connection first: RFC 6455 §7.1.1) and
    /// linger for the peer's FIN, so unread bytes cannot turn into a reset
    /// that destroys our last frames.
    fn finish_if_done(&mut self, now: Instant) -> bool {
        if self.conn.is_closed() && self.out.is_empty() && self.linger_until.is_none() {
            if self.stream.shutdown(Shutdown::Write).is_err() {
                return false;
            }
            self.linger_until = Some(now + LINGER);
        }
        true
    }
}
