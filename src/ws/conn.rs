//! One WebSocket connection as a sans-IO state machine: HTTP request →
//! open → closing → closed (RFC 6455 §4, §5, §7).
//!
//! Owned and driven by one thread (a worker, the echo server, a load
//! generator task). Inputs are `handle_*`, outputs `poll_*`; time is a plain
//! [`Instant`] the caller passes in. It never touches sockets, never reads
//! the clock, never allocates while idle (buffers exist only while a request
//! head, a message or unprocessed input is in flight), and never panics on
//! peer bytes.
//!
//! ```text
//!   bytes ──handle_read──▶ ┌──────┐ ──poll_event──▶ Request / Text / Binary / Close / …
//!   now ──handle_timeout─▶ │ Conn │ ──poll_transmit─▶ control bytes to write (101, pong, close)
//!   accept / respond / ──▶ └──────┘ ──poll_timeout──▶ deadline to wake up for
//!   close / send_*
//! ```
//!
//! Ordering: input is decoded only up to the next event; the rest waits until
//! that event has been taken. So a reply the caller writes for a message (an
//! echo, a `Subscribed`) goes out before any control frame that input after it
//! causes (a pong, the close reply): RFC 6455 §5.4 order is kept end to end.

use std::time::{Duration, Instant};

use crate::wire::frame::Opcode;

use super::close::{CloseCode, FAIL_CLOSE_TIMEOUT_MS, ProtocolError, parse_close_payload};
use super::deflate::{self, Compressor, Deflate, InflateError};
use super::frame::{
    FrameHeader, MAX_CONTROL_PAYLOAD, Role, apply_mask, write_close_frame, write_frame,
};
use super::handshake::{Endpoint, Upgrade};
use super::http::{HttpError, MAX_HEAD_BYTES, Request, RequestParser, Response};
use super::lazy_buf::LazyBuf;
use super::utf8::Utf8Validator;

/// Per-connection limits. Every default is PROTOCOL's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest message after reassembly, bytes. Default 64 KiB (PROTOCOL §7: 1009 above).
    pub max_message_bytes: u32,
    /// Largest HTTP request head, bytes. Default 8 KiB (PROTOCOL §6: 431 above).
    pub max_head_bytes: u32,
    /// Time for the request head to arrive, ms. Default 10 000 (PROTOCOL §6).
    pub handshake_timeout_ms: u32,
    /// Time for the peer to answer our close frame before we drop it, ms
    /// (at most [`FAIL_CLOSE_TIMEOUT_MS`] when we fail the connection); also
    /// how long a closed connection may take to be written (the linger
    /// deadline). Default 5 000.
    pub close_timeout_ms: u32,
    /// permessage-deflate: messages shorter than this are sent uncompressed
    /// (RSV1 clear), bytes. Default 256 (PROTOCOL §12).
    pub deflate_threshold_bytes: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_bytes: 64 * 1024,
            max_head_bytes: MAX_HEAD_BYTES as u32,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            deflate_threshold_bytes: deflate::DEFAULT_THRESHOLD_BYTES,
        }
    }
}

/// What a binary message from the peer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryPolicy {
    /// Delivered as [`Event::Binary`] (echo endpoint, client role).
    Accept,
    /// Closes the connection with 1003 (PROTOCOL §7: tickwire requests are text).
    Reject,
}

/// The connection's phase, as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading the HTTP request, or waiting for the caller to answer it.
    Handshake,
    /// Messages flow both ways.
    Open,
    /// Server role: the request was answered with a response whose body the
    /// owner writes for as long as it lasts (an SSE stream, PROTOCOL §11):
    /// no frames, no deadline, the peer's further bytes are discarded.
    Streaming,
    /// We sent a close frame and wait for the peer's (until [`Conn::poll_timeout`]).
    Closing,
    /// Done: write what [`Conn::poll_transmit`] still holds, then close the
    /// socket; at [`Conn::poll_timeout`] (the linger deadline), close it
    /// whatever is left unwritten.
    Closed,
}

/// What the connection tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete HTTP request (server role, handshake): answer with
    /// [`Conn::accept`] or [`Conn::respond`] (see [`super::Router::route`]).
    Request(Box<Request>),
    /// The request could not be parsed; the error response (400 or 431) is
    /// queued and the connection is closed.
    BadRequest(HttpError),
    /// A complete text message (valid UTF-8, within the size limit).
    Text(String),
    /// A complete binary message (only with [`BinaryPolicy::Accept`]).
    Binary(Vec<u8>),
    /// The peer's close frame (RFC 6455 §5.5.1): `code` is `None` for an empty
    /// one. Our reply, if one was owed, is queued; the connection is closed.
    Close {
        code: Option<CloseCode>,
        reason: String,
    },
    /// The peer broke the protocol: a close frame with
    /// [`ProtocolError::close_code`] is queued, and the connection is closing.
    ProtocolError(ProtocolError),
}

/// Outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Appended to the bytes [`Conn::poll_transmit`] returns.
    Queued,
    /// Not open (handshake, closing or closed): nothing was queued
    /// (RFC 6455 §5.5.1: no data frame after a close frame).
    NotOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ReadingRequest,
    AwaitingAnswer,
    Open,
    Streaming,
    Closing,
    Closed,
}

/// Where the frame decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Between frames: the next bytes are a header.
    Header,
    /// Inside a data frame's payload (control frames are handled whole).
    Payload {
        fin: bool,
        mask: Option<[u8; 4]>,
        /// Position in the 4-byte mask of the next payload byte.
        mask_phase: u8,
        remaining: u64,
        /// The payload is skipped (a violation was found, or we are closing).
        discard: bool,
    },
    /// The stream can no longer be delimited (64-bit length with the top bit
    /// set): every further byte is ignored.
    Dead,
}

/// One WebSocket connection, either role.
///
/// # Invariants
///
/// - `msg_opcode` is `Some(Text | Binary)` exactly while a message is being
///   reassembled, and then `msg.len() <= max_message_bytes`.
/// - `event` is `Some` only if decoding stopped there: input after it waits in
///   `pending[pending_pos..]`.
/// - In `Closing` and `Closed` no data frame is queued in `tx`.
///
/// # Size
///
/// 192 bytes on 64-bit targets (pinned by a test), and no heap while idle:
/// the request parser, the message buffer, unprocessed input and pending
/// output are allocated only while in use.
#[derive(Debug)]
pub struct Conn {
    role: Role,
    phase: Phase,
    binary: BinaryPolicy,
    rx: Rx,
    msg_opcode: Option<Opcode>,
    /// The message being reassembled had RSV1 set (RFC 7692 §6): it is
    /// inflated once complete.
    msg_compressed: bool,
    /// permessage-deflate, once negotiated (RFC 7692).
    deflate: Option<Deflate>,
    utf8: Utf8Validator,
    config: Config,
    /// Client role: state of the mask-key generator (xorshift64*).
    mask_state: u64,
    deadline: Option<Instant>,
    http: Option<Box<RequestParser>>,
    msg: LazyBuf,
    pending: LazyBuf,
    pending_pos: usize,
    /// The event decoded and not yet taken by [`Conn::poll_event`]; boxed
    /// (an event is a client request, rare), as every slot would otherwise
    /// hold its 32 bytes.
    event: Option<Box<Event>>,
    tx: LazyBuf,
}

impl Conn {
    /// A server-side connection just accepted: it first reads the HTTP
    /// request, for at most `handshake_timeout_ms` from `now`.
    pub fn server(now: Instant, config: Config) -> Conn {
        let mut c = Conn::new(
            Role::Server,
            Phase::ReadingRequest,
            config,
            BinaryPolicy::Reject,
        );
        c.deadline = Some(now + Duration::from_millis(config.handshake_timeout_ms.into()));
        c
    }

    /// A client-side connection whose handshake is done (see
    /// [`super::ClientHandshake`]); feed it the bytes that followed the 101.
    ///
    /// Mask keys come from a xorshift generator seeded with `mask_seed`:
    /// fine for load generation and tests, not for a browser-grade client
    /// (RFC 6455 §10.3 wants keys from a strong entropy source).
    pub fn client(config: Config, mask_seed: u64) -> Conn {
        let mut c = Conn::new(Role::Client, Phase::Open, config, BinaryPolicy::Accept);
        c.mask_state = mask_seed | 1;
        c
    }

    fn new(role: Role, phase: Phase, config: Config, binary: BinaryPolicy) -> Conn {
        Conn {
            role,
            phase,
            binary,
            rx: Rx::Header,
            msg_opcode: None,
            msg_compressed: false,
            deflate: None,
            utf8: Utf8Validator::new(),
            config,
            mask_state: 0,
            deadline: None,
            http: None,
            msg: LazyBuf::default(),
            pending: LazyBuf::default(),
            pending_pos: 0,
            event: None,
            tx: LazyBuf::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::ReadingRequest | Phase::AwaitingAnswer => State::Handshake,
            Phase::Open => State::Open,
            Phase::Streaming => State::Streaming,
            Phase::Closing => State::Closing,
            Phase::Closed => State::Closed,
        }
    }

    /// Whether data frames may be queued now (market data, answers).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the owner streams a response body ([`Conn::stream_response`]).
    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// permessage-deflate as negotiated, if it was (PROTOCOL §12).
    pub fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// Client role: the server's 101 accepted permessage-deflate with these
    /// parameters (see [`super::handshake::deflate_in_response`]).
    pub fn set_deflate(&mut self, deflate: Option<Deflate>) {
        self.deflate = deflate;
    }

    /// Bytes read from the socket.
    pub fn handle_read(&mut self, now: Instant, bytes: &[u8]) {
        match self.phase {
            Phase::ReadingRequest => self.read_request(now, bytes),
            Phase::AwaitingAnswer => self.pending.vec().extend_from_slice(bytes),
            Phase::Open | Phase::Closing => {
                if self.event.is_some() {
                    self.pending.vec().extend_from_slice(bytes);
                } else if self.pending_pos == self.pending.len() {
                    // Common case: nothing waiting, decode straight from the read buffer.
                    let used = self.process(now, bytes);
                    self.pending.free();
                    self.pending_pos = 0;
                    if used < bytes.len() && self.phase != Phase::Closed {
                        self.pending.vec().extend_from_slice(&bytes[used..]);
                    }
                } else {
                    self.pending.vec().extend_from_slice(bytes);
                    self.process_pending(now);
                }
            }
            // Nothing is read from a streamed response's peer (an
            // `EventSource` sends nothing after its request).
            Phase::Streaming | Phase::Closed => {}
        }
    }

    /// The next event, if any. Decodes buffered input up to the next event, so
    /// call it until `None` after each [`Conn::handle_read`], acting on each
    /// event before asking for the next.
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        if let Some(ev) = self.event.take() {
            return Some(*ev);
        }
        if matches!(self.phase, Phase::Open | Phase::Closing) {
            self.process_pending(now);
        }
        self.event.take().map(|ev| *ev)
    }

    /// Appends the bytes to write (101 or error response, pongs, close
    /// frames, messages sent with `send_*`) to `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.tx.len();
        if n > 0 {
            out.extend_from_slice(self.tx.as_slice());
            self.tx.free();
        }
        n
    }

    /// Bytes waiting in [`Conn::poll_transmit`].
    pub fn transmit_len(&self) -> usize {
        self.tx.len()
    }

    /// When [`Conn::handle_timeout`] must be called: the end of the handshake
    /// or of the close handshake.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time passed. A handshake or close handshake past its deadline ends the
    /// connection (PROTOCOL §6: a request not complete within 10 s is closed);
    /// a closed connection past its linger deadline must be dropped now,
    /// written or not.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            if self.phase != Phase::Open {
                self.set_closed(None);
            }
        }
    }

    /// Answers the request with a 101 and opens the WebSocket. The endpoint
    /// sets the binary policy: the echo endpoint accepts binary messages,
    /// `/ws` closes with 1003 on them.
    pub fn accept(&mut self, upgrade: &Upgrade) {
        debug_assert_eq!(
            self.phase,
            Phase::AwaitingAnswer,
            "accept without a request"
        );
        if self.phase != Phase::AwaitingAnswer {
            return;
        }
        upgrade.response().write_to(self.tx.vec());
        self.deflate = upgrade.deflate;
        self.binary = match upgrade.endpoint {
            Endpoint::Echo => BinaryPolicy::Accept,
            _ => BinaryPolicy::Reject,
        };
        self.phase = Phase::Open;
        self.deadline = None;
        // Frames that came with the request are decoded by the next poll_event.
    }

    /// Takes the request as answered by a streamed response (an SSE
    /// stream, PROTOCOL §11): the owner writes its head and body; the
    /// handshake deadline ends; input that came with the request is dropped.
    pub fn stream_response(&mut self) {
        if self.phase == Phase::AwaitingAnswer {
            self.phase = Phase::Streaming;
            self.deadline = None;
            self.http = None;
            self.pending.free();
            self.pending_pos = 0;
        }
    }

    /// Answers the request with `response` (a plain endpoint or an error) and
    /// closes: one request per connection.
    pub fn respond(&mut self, now: Instant, response: &Response) {
        if matches!(self.phase, Phase::ReadingRequest | Phase::AwaitingAnswer) {
            response.write_to(self.tx.vec());
            self.set_closed(Some(now));
        }
    }

    /// Starts the closing handshake with `code` (1000, 1001, 4001, …): the
    /// peer has `close_timeout_ms` to answer. During the handshake, the
    /// connection is just closed.
    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) {
        match self.phase {
            Phase::Open => self.start_closing(now, code, reason),
            // A streamed response just ends (what is queued is still written).
            Phase::ReadingRequest | Phase::AwaitingAnswer | Phase::Streaming => {
                self.set_closed(Some(now))
            }
            Phase::Closing | Phase::Closed => {}
        }
    }

    pub fn send_text(&mut self, text: &str) -> Sent {
        self.send(Opcode::Text, text.as_bytes())
    }

    pub fn send_binary(&mut self, payload: &[u8]) -> Sent {
        self.send(Opcode::Binary, payload)
    }

    /// A ping (heartbeat). At most 125 bytes of `payload` are sent.
    pub fn send_ping(&mut self, payload: &[u8]) -> Sent {
        self.send(
            Opcode::Ping,
            &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
        )
    }

    fn send(&mut self, opcode: Opcode, payload: &[u8]) -> Sent {
        if self.phase != Phase::Open {
            return Sent::NotOpen;
        }
        let key = self.next_mask();
        write_frame(self.role, self.tx.vec(), opcode, payload, key);
        Sent::Queued
    }

    /// Sends a text (`binary` false) or binary message, compressed with `z`
    /// if permessage-deflate was negotiated and the message is at least
    /// `deflate_threshold_bytes` long (PROTOCOL §12); else as
    /// [`Conn::send_text`] / [`Conn::send_binary`] do.
    pub fn send_message(&mut self, z: &mut Compressor, binary: bool, payload: &[u8]) -> Sent {
        let opcode = if binary { Opcode::Binary } else { Opcode::Text };
        let Some(d) = self
            .deflate
            .filter(|_| payload.len() >= self.config.deflate_threshold_bytes as usize)
        else {
            return self.send(opcode, payload);
        };
        if self.phase != Phase::Open {
            return Sent::NotOpen;
        }
        let mut body = Vec::with_capacity(payload.len() / 2 + 16);
        z.compress_for(d, payload, &mut body);
        let key = self.next_mask();
        let tx = self.tx.vec();
        let start = tx.len();
        write_frame(self.role, tx, opcode, &body, key);
        // RFC 7692 §6: RSV1 on the (only) frame marks a compressed message.
        tx[start] |= 0x40;
        Sent::Queued
    }

    fn next_mask(&mut self) -> [u8; 4] {
        if self.role == Role::Server {
            return [0; 4];
        }
        // xorshift64* (Vigna): cheap, full period over non-zero states.
        let mut x = self.mask_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask_state = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 32) as u32).to_ne_bytes()
    }

    fn read_request(&mut self, now: Instant, bytes: &[u8]) {
        let max = self.config.max_head_bytes as usize;
        let parser = self
            .http
            .get_or_insert_with(|| Box::new(RequestParser::new(max)));
        match parser.push(bytes) {
            Ok(None) => {}
            Ok(Some((req, rest))) => {
                self.http = None;
                self.pending.set(rest);
                self.pending_pos = 0;
                self.phase = Phase::AwaitingAnswer;
                self.event = Some(Box::new(Event::Request(Box::new(req))));
            }
            Err(e) => {
                e.response().write_to(self.tx.vec());
                self.set_closed(Some(now));
                self.event = Some(Box::new(Event::BadRequest(e)));
            }
        }
    }

    fn process_pending(&mut self, now: Instant) {
        let start = self.pending_pos;
        if start == self.pending.len() {
            return;
        }
        let pending = self.pending.take();
        let used = self.process(now, &pending[start..]);
        if self.phase == Phase::Closed {
            // set_closed() dropped the input: nothing after a close is read.
            return;
        }
        self.pending.set(pending);
        self.pending_pos = start + used;
        if self.pending_pos == self.pending.len() {
            self.pending.free();
            self.pending_pos = 0;
        } else if self.event.is_none() {
            // Stopped on a cut frame header: keep only the tail.
            self.pending.vec().drain(..self.pending_pos);
            self.pending_pos = 0;
        }
    }

    /// Decodes frames from `input` until an event is produced or the input
    /// runs out; returns the bytes used. Unused bytes are a cut header (or a
    /// cut control frame) or input after the event.
    fn process(&mut self, now: Instant, input: &[u8]) -> usize {
        let mut pos = 0;
        while self.event.is_none() {
            if !matches!(self.phase, Phase::Open | Phase::Closing) {
                return input.len();
            }
            match self.rx {
                Rx::Dead => return input.len(),
                Rx::Header => {
                    let buf = &input[pos..];
                    let h = match FrameHeader::parse(buf) {
                        Ok(Some(h)) => h,
                        Ok(None) => break,
                        Err(e) => {
                            self.rx = Rx::Dead;
                            self.fail(now, e);
                            return input.len();
                        }
                    };
                    let opcode = match h.validate_ext(self.role, self.deflate.is_some()) {
                        Ok(op) => op,
                        Err(e) => {
                            pos += usize::from(h.header_len);
                            self.rx = skip(&h);
                            self.fail(now, e);
                            continue;
                        }
                    };
                    if opcode.is_control() {
                        // Control frames are at most 139 bytes: handle them whole.
                        let hl = usize::from(h.header_len);
                        let len = h.payload_len as usize; // <= 125, validated
                        let Some(bytes) = buf.get(hl..hl + len) else {
                            break;
                        };
                        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
                        let payload = &mut payload[..len];
                        payload.copy_from_slice(bytes);
                        if let Some(key) = h.mask {
                            apply_mask(payload, key, 0);
                        }
                        pos += hl + len;
                        self.on_control(now, opcode, payload);
                    } else {
                        pos += usize::from(h.header_len);
                        self.start_data_frame(now, &h, opcode);
                    }
                }
                Rx::Payload {
                    fin,
                    mask,
                    mask_phase,
                    remaining,
                    discard,
                } => {
                    let avail = (input.len() - pos) as u64;
                    let n = remaining.min(avail) as usize;
                    if n == 0 && remaining > 0 {
                        break;
                    }
                    let chunk = &input[pos..pos + n];
                    pos += n;
                    let ok = discard || self.on_data(now, chunk, mask, mask_phase);
                    let remaining = remaining - n as u64;
                    if remaining > 0 {
                        self.rx = Rx::Payload {
                            fin,
                            mask,
                            mask_phase: ((usize::from(mask_phase) + n) % 4) as u8,
                            remaining,
                            discard: discard || !ok,
                        };
                    } else {
                        self.rx = Rx::Header;
                        if fin && !discard && ok {
                            self.finish_message(now);
                        }
                    }
                }
            }
        }
        pos
    }

    fn start_data_frame(&mut self, now: Instant, h: &FrameHeader, opcode: Opcode) {
        if self.phase != Phase::Open {
            // Closing: data that crossed our close frame is dropped.
            self.rx = skip(h);
            return;
        }
        if let Err(e) = self.check_data_frame(h, opcode) {
            self.rx = skip(h);
            self.fail(now, e);
            return;
        }
        if opcode != Opcode::Continuation {
            self.msg_opcode = Some(opcode);
            self.msg_compressed = h.rsv & 0b100 != 0;
            self.utf8.reset();
        }
        // Nothing is reserved on the header's word: the buffer grows with
        // the payload that arrives (amortized, so many tiny fragments cannot
        // make reassembly quadratic), and an idle peer that sent one header
        // declaring 64 KiB pins nothing.
        self.rx = Rx::Payload {
            fin: h.fin,
            mask: h.mask,
            mask_phase: 0,
            remaining: h.payload_len,
            discard: false,
        };
    }

    fn check_data_frame(&self, h: &FrameHeader, opcode: Opcode) -> Result<(), ProtocolError> {
        // RFC 6455 §5.4: fragments of one message are contiguous; only control
        // frames may be interleaved.
        match (opcode, self.msg_opcode) {
            (Opcode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        // PROTOCOL §7: 1003 for binary on /ws; decided on the header, before any payload.
        if opcode == Opcode::Binary && self.binary == BinaryPolicy::Reject {
            return Err(ProtocolError::BinaryNotAccepted);
        }
        // PROTOCOL §7: 1009 over the limit after reassembly; known from the header.
        let max = self.config.max_message_bytes as usize;
        let len = (self.msg.len() as u64).saturating_add(h.payload_len);
        if len > max as u64 {
            return Err(ProtocolError::MessageTooBig { len, max });
        }
        Ok(())
    }

    /// Appends a payload chunk to the message. False if it broke the message.
    fn on_data(
        &mut self,
        now: Instant,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        mask_phase: u8,
    ) -> bool {
        let msg = self.msg.vec();
        let start = msg.len();
        msg.extend_from_slice(chunk);
        if let Some(key) = mask {
            apply_mask(&mut msg[start..], key, mask_phase.into());
        }
        // RFC 6455 §8.1, checked as each chunk arrives (Autobahn 6.x: fail
        // fast); a compressed message is checked once inflated.
        if self.msg_opcode == Some(Opcode::Text)
            && !self.msg_compressed
            && self.utf8.feed(&msg[start..]).is_err()
        {
            self.fail(now, ProtocolError::InvalidUtf8);
            return false;
        }
        true
    }

    fn finish_message(&mut self, now: Instant) {
        let mut payload = self.msg.take();
        let compressed = std::mem::take(&mut self.msg_compressed);
        if compressed {
            // RFC 7692 §7.2.2, with the output bounded by the message limit
            // (PROTOCOL §12: a message inflating past it is closed with 1009).
            let max = self.config.max_message_bytes as usize;
            let mut plain = Vec::new();
            if let Err(e) = deflate::inflate(&payload, max, &mut plain) {
                self.fail(
                    now,
                    match e {
                        InflateError::TooBig { max } => ProtocolError::MessageTooBig {
                            len: max as u64 + 1,
                            max,
                        },
                        InflateError::Corrupt => ProtocolError::BadCompressedData,
                    },
                );
                return;
            }
            payload = plain;
        }
        match self.msg_opcode.take() {
            Some(Opcode::Text) => {
                // The validator saw every byte (unless it was compressed); the
                // second check costs one pass and keeps this code free of unsafe.
                match String::from_utf8(payload) {
                    Ok(text) if compressed || self.utf8.is_complete() => {
                        self.event = Some(Box::new(Event::Text(text)))
                    }
                    _ => self.fail(now, ProtocolError::InvalidUtf8),
                }
            }
            Some(_) => self.event = Some(Box::new(Event::Binary(payload))),
            None => debug_assert!(false, "finished a message that never started"),
        }
    }

    fn on_control(&mut self, now: Instant, opcode: Opcode, payload: &[u8]) {
        match (self.phase, opcode) {
            // RFC 6455 §5.5.2/§5.5.3: answer a ping with a pong carrying the
            // same payload. Unsolicited pongs need no answer.
            (Phase::Open, Opcode::Ping) => {
                let key = self.next_mask();
                write_frame(self.role, self.tx.vec(), Opcode::Pong, payload, key);
            }
            (Phase::Open, Opcode::Close) => match parse_close_payload(payload) {
                Ok(close) => {
                    // RFC 6455 §5.5.1: answer with a close frame, echoing the code.
                    let key = self.next_mask();
                    match close {
                        Some((code, _)) => {
                            write_close_frame(self.role, self.tx.vec(), code, "", key)
                        }
                        None => write_frame(self.role, self.tx.vec(), Opcode::Close, &[], key),
                    }
                    self.closed_by_peer(now, close);
                }
                Err(e) => {
                    self.fail(now, e);
                    // The peer is done sending: no reply to wait for.
                    self.set_closed(Some(now));
                }
            },
            // RFC 6455 §7.1.2: our close answered; the close handshake is done.
            (Phase::Closing, Opcode::Close) => {
                let close = parse_close_payload(payload).ok().flatten();
                self.closed_by_peer(now, close);
            }
            _ => {}
        }
    }

    fn closed_by_peer(&mut self, now: Instant, close: Option<(CloseCode, &str)>) {
        self.event = Some(Box::new(Event::Close {
            code: close.map(|(c, _)| c),
            reason: close.map(|(_, r)| r.to_owned()).unwrap_or_default(),
        }));
        self.set_closed(Some(now));
    }

    /// RFC 6455 §7.1.7: fail the connection: close frame with the error's code.
    fn fail(&mut self, now: Instant, e: ProtocolError) {
        if self.phase == Phase::Open {
            self.start_closing(now, e.close_code(), e.close_reason());
            self.event = Some(Box::new(Event::ProtocolError(e)));
        }
    }

    fn start_closing(&mut self, now: Instant, code: CloseCode, reason: &str) {
        let key = self.next_mask();
        write_close_frame(self.role, self.tx.vec(), code, reason, key);
        self.phase = Phase::Closing;
        // PROTOCOL §7: a failed connection waits at most 1 s for the peer's
        // close (whose frame a skipped payload may have swallowed).
        let mut wait_ms = self.config.close_timeout_ms;
        if self.role == Role::Server && code.fails_connection() {
            wait_ms = wait_ms.min(FAIL_CLOSE_TIMEOUT_MS);
        }
        self.deadline = Some(now + Duration::from_millis(wait_ms.into()));
        self.drop_message();
        // Data that crosses our close frame is dropped: the rest of a data
        // frame cut short by it is skipped, not reassembled into no message.
        if let Rx::Payload { discard, .. } = &mut self.rx {
            *discard = true;
        }
    }

    /// Closed. `linger_from`: when the last output was queued; the caller has
    /// `close_timeout_ms` from then to write it (a peer that stops reading
    /// cannot hold the socket forever). `None`: the deadline has passed.
    fn set_closed(&mut self, linger_from: Option<Instant>) {
        self.phase = Phase::Closed;
        self.deadline =
            linger_from.map(|now| now + Duration::from_millis(self.config.close_timeout_ms.into()));
        self.http = None;
        self.drop_message();
        self.pending.free();
        self.pending_pos = 0;
    }

    fn drop_message(&mut self) {
        self.msg.free();
        self.msg_opcode = None;
        self.msg_compressed = false;
        self.utf8.reset();
    }
}

/// Skips the payload of the frame `h` starts.
fn skip(h: &FrameHeader) -> Rx {
    Rx::Payload {
        fin: h.fin,
        mask: None,
        mask_phase: 0,
        remaining: h.payload_len,
        discard: true,
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{Frame, decode_frame, write_client_frame};
    use super::super::handshake::{ClientHandshake, Route, Router};
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Every event, in order (no replies are written in between).
    fn drain_events(conn: &mut Conn, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(ev) = conn.poll_event(now) {
            out.push(ev);
        }
        out
    }

    fn t0() -> Instant {
        // A fixed base; tests move time by adding durations to it.
        Instant::now()
    }

    /// A server connection past the handshake, on `endpoint`.
    fn open_server(now: Instant, echo: bool, config: Config) -> Conn {
        let mut c = Conn::server(now, config);
        let path = if echo { "/echo" } else { "/ws" };
        let hs = ClientHandshake::new([1; 16], &[]);
        let mut req = Vec::new();
        hs.write_request(&mut req, "h", path);
        c.handle_read(now, &req);
        let Some(Event::Request(r)) = c.poll_event(now) else {
            panic!("request expected");
        };
        let Route::Upgrade(up) = Router::new().with_echo_path("/echo").route(&r) else {
            panic!("upgrade expected");
        };
        c.accept(&up);
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        assert!(hs.read_response(&out).unwrap().is_some());
        c
    }

    /// A request answered by a streamed response (SSE): no deadline, the
    /// peer's further bytes are dropped (no events, no error), nothing is
    /// written by the codec, and a close just ends it.
    #[test]
    fn a_streamed_response_has_no_deadline_and_ignores_input() {
        let now = t0();
        let mut c = Conn::server(now, Config::default());
        c.handle_read(
            now,
            b"GET /sse?symbols=A&channels=book HTTP/1.1\r\nHost: h\r\n\r\nextra",
        );
        assert!(matches!(c.poll_event(now), Some(Event::Request(_))));
        assert!(c.poll_timeout().is_some(), "the handshake deadline runs");
        c.stream_response();
        assert!(c.is_streaming() && !c.is_open() && !c.is_closed());
        assert_eq!(c.state(), State::Streaming);
        assert_eq!(c.poll_timeout(), None);
        c.handle_read(now, &masked(Opcode::Text, true, b"hello"));
        c.handle_read(now, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(drain_events(&mut c, now), vec![]);
        assert_eq!(tx(&mut c), b"");
        c.handle_timeout(now + Duration::from_secs(3600));
        assert!(c.is_streaming(), "no deadline ends a stream");
        c.close(now, CloseCode::SLOW_CONSUMER, "slow");
        assert!(c.is_closed());
        assert_eq!(tx(&mut c), b"", "no close frame on a stream");
    }

    fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_client_frame(&mut out, fin, opcode, payload, KEY);
        out
    }

    fn tx(c: &mut Conn) -> Vec<u8> {
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        out
    }

    /// The frames a server connection wrote.
    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((f, n)) = decode_frame(Role::Client, &bytes[pos..]).unwrap() {
            out.push(f);
            pos += n;
        }
        assert_eq!(pos, bytes.len(), "trailing bytes");
        out
    }

    fn close_code_of(f: &Frame) -> u16 {
        assert_eq!(f.opcode, Opcode::Close);
        u16::from_be_bytes([f.payload[0], f.payload[1]])
    }

    /// Feeds `bytes`, returns the events and the frames written.
    fn feed(c: &mut Conn, now: Instant, bytes: &[u8]) -> (Vec<Event>, Vec<Frame>) {
        c.handle_read(now, bytes);
        let events = drain_events(c, now);
        (events, frames(&tx(c)))
    }

    fn assert_fails_with(bytes: &[u8], echo: bool, code: u16, err: ProtocolError) {
        let now = t0();
        let mut c = open_server(now, echo, Config::default());
        let (events, out) = feed(&mut c, now, bytes);
        assert_eq!(
            events.last(),
            Some(&Event::ProtocolError(err.clone())),
            "{err}"
        );
        assert_eq!(out.len(), 1, "{err}: one close frame");
        assert_eq!(close_code_of(&out[0]), code, "{err}");
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.send_text("late"), Sent::NotOpen);
    }

    #[test]
    fn handshake_then_masked_hello_is_a_text_event() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.poll_timeout(), None);
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (events, out) = feed(&mut c, now, &hello);
        assert_eq!(events, vec![Event::Text("Hello".into())]);
        assert!(out.is_empty());
    }

    #[test]
    fn frames_pipelined_with_the_request_are_decoded_after_accept() {
        let now = t0();
        let mut c = Conn::server(now, Config::default());
        let hs = ClientHandshake::new([2; 16], &[]);
        let mut bytes = Vec::new();
        hs.write_request(&mut bytes, "h", "/ws");
        bytes.extend(masked(Opcode::Text, true, b"early"));
        c.handle_read(now, &bytes);
        let Some(Event::Request(r)) = c.poll_event(now) else {
            panic!()
        };
        assert_eq!(c.poll_event(now), None, "nothing before the answer");
        let Route::Upgrade(up) = Router::new().route(&r) else {
            panic!()
        };
        c.accept(&up);
        assert_eq!(c.poll_event(now), Some(Event::Text("early".into())));
    }

    #[test]
    fn plain_requests_get_their_response_and_close() {
        let now = t0();
        let mut c = Conn::server(now, Config::default());
        c.handle_read(now, b"GET /healthz HTTP/1.1\r\n\r\n");
        let Some(Event::Request(r)) = c.poll_event(now) else {
            panic!()
        };
        assert_eq!(Router::new().route(&r), Route::Get(Endpoint::Healthz));
        c.respond(t0(), &Response::ok("text/plain", "ok\n"));
        assert_eq!(c.state(), State::Closed);
        assert!(tx(&mut c).starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn bad_and_oversized_requests_are_answered_400_and_431() {
        let now = t0();
        let mut c = Conn::server(now, Config::default());
        c.handle_read(now, b"BLAH\r\n");
        assert!(matches!(c.poll_event(now), Some(Event::BadRequest(_))));
        assert!(tx(&mut c).starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(c.is_closed());

        let mut c = Conn::server(now, Config::default());
        c.handle_read(now, b"GET / HTTP/1.1\r\n");
        for _ in 0..9 {
            c.handle_read(now, &[b'X'; 1000]);
        }
        assert_eq!(
            c.poll_event(now),
            Some(Event::BadRequest(HttpError::HeadTooLarge(8192)))
        );
        assert!(tx(&mut c).starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn a_request_not_complete_within_10s_is_closed() {
        let now = t0();
        let mut c = Conn::server(now, Config::default());
        c.handle_read(now, b"GET / HTTP/1.1\r\n");
        let deadline = c.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(10));
        c.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(c.state(), State::Handshake);
        c.handle_timeout(deadline);
        assert_eq!(c.state(), State::Closed);
        assert!(tx(&mut c).is_empty());
    }

    #[test]
    fn ping_is_answered_with_a_pong_of_the_same_payload() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        let (events, out) = feed(&mut c, now, &masked(Opcode::Ping, true, b"Hello"));
        assert!(events.is_empty());
        assert_eq!(
            out,
            vec![Frame {
                fin: true,
                opcode: Opcode::Pong,
                payload: b"Hello".to_vec()
            }]
        );
        // RFC 6455 §5.7: the unmasked pong bytes.
        let (_, out) = feed(&mut c, now, &masked(Opcode::Ping, true, b"Hello"));
        let mut bytes = Vec::new();
        super::super::frame::encode_frame(Role::Server, &mut bytes, &out[0], [0; 4]);
        assert_eq!(bytes, [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // Pongs need no answer.
        let (events, out) = feed(&mut c, now, &masked(Opcode::Pong, true, b"x"));
        assert!(events.is_empty() && out.is_empty());
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        let mut bytes = masked(Opcode::Text, false, b"Hel");
        bytes.extend(masked(Opcode::Ping, true, b"p"));
        bytes.extend(masked(Opcode::Continuation, false, b""));
        bytes.extend(masked(Opcode::Continuation, true, b"lo"));
        let (events, out) = feed(&mut c, now, &bytes);
        assert_eq!(events, vec![Event::Text("Hello".into())]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].opcode, Opcode::Pong);
    }

    #[test]
    fn control_output_keeps_order_with_replies_to_earlier_messages() {
        // Autobahn 7.1.1: a message then a close in one read; the echo must
        // precede the close reply.
        let now = t0();
        let mut c = open_server(now, true, Config::default());
        let mut bytes = masked(Opcode::Text, true, b"Hello World!");
        let mut close = Vec::new();
        super::super::close::write_close_payload(&mut close, CloseCode::NORMAL, "");
        bytes.extend(masked(Opcode::Close, true, &close));
        c.handle_read(now, &bytes);
        let mut written = Vec::new();
        while let Some(ev) = c.poll_event(now) {
            if let Event::Text(t) = &ev {
                assert_eq!(c.send_text(t), Sent::Queued);
            }
            c.poll_transmit(&mut written);
        }
        let out = frames(&written);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload, b"Hello World!");
        assert_eq!(close_code_of(&out[1]), 1000);
        assert!(c.is_closed());
    }

    #[test]
    fn every_byte_split_gives_the_same_events() {
        let mut bytes = masked(Opcode::Text, false, "κόσ".as_bytes());
        bytes.extend(masked(Opcode::Ping, true, b"ping"));
        bytes.extend(masked(Opcode::Continuation, true, "με".as_bytes()));
        bytes.extend(masked(Opcode::Binary, true, &[1, 2, 3]));
        for cut in 0..=bytes.len() {
            let now = t0();
            let mut c = open_server(now, true, Config::default());
            let (mut events, mut out) = feed(&mut c, now, &bytes[..cut]);
            let (e2, o2) = feed(&mut c, now, &bytes[cut..]);
            events.extend(e2);
            out.extend(o2);
            assert_eq!(
                events,
                vec![Event::Text("κόσμε".into()), Event::Binary(vec![1, 2, 3])],
                "cut {cut}"
            );
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn server_closes_on_unmasked_frame_with_1002() {
        assert_fails_with(
            &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'],
            false,
            1002,
            ProtocolError::UnmaskedFrame,
        );
    }

    #[test]
    fn header_violations_close_with_1002() {
        let mut rsv = masked(Opcode::Text, true, b"x");
        rsv[0] |= 0x40;
        assert_fails_with(&rsv, false, 1002, ProtocolError::ReservedBits(0b100));
        let mut op = masked(Opcode::Text, true, b"x");
        op[0] = 0x80 | 0x5;
        assert_fails_with(&op, false, 1002, ProtocolError::ReservedOpcode(5));
        let long_ping = masked(Opcode::Ping, true, &[0; 126]);
        assert_fails_with(
            &long_ping,
            false,
            1002,
            ProtocolError::ControlFrameTooLong(126),
        );
        let frag_ping = masked(Opcode::Ping, false, b"x");
        assert_fails_with(
            &frag_ping,
            false,
            1002,
            ProtocolError::FragmentedControlFrame,
        );
        let cont = masked(Opcode::Continuation, true, b"x");
        assert_fails_with(&cont, false, 1002, ProtocolError::UnexpectedContinuation);
        let mut two = masked(Opcode::Text, false, b"a");
        two.extend(masked(Opcode::Text, true, b"b"));
        assert_fails_with(&two, false, 1002, ProtocolError::ExpectedContinuation);
        let top = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_fails_with(&top, true, 1002, ProtocolError::LengthTopBitSet);
    }

    #[test]
    fn binary_is_1003_on_ws_and_echoed_on_the_echo_endpoint() {
        let bin = masked(Opcode::Binary, true, &[0xde, 0xad]);
        assert_fails_with(&bin, false, 1003, ProtocolError::BinaryNotAccepted);
        let now = t0();
        let mut c = open_server(now, true, Config::default());
        let (events, _) = feed(&mut c, now, &bin);
        assert_eq!(events, vec![Event::Binary(vec![0xde, 0xad])]);
    }

    #[test]
    fn invalid_utf8_is_1007_and_detected_before_the_frame_ends() {
        assert_fails_with(
            &masked(Opcode::Text, true, b"a\xffb"),
            false,
            1007,
            ProtocolError::InvalidUtf8,
        );
        // Fail fast (Autobahn 6.4.3): only the first half of the frame has arrived.
        let frame = masked(
            Opcode::Text,
            true,
            b"\xce\xba\xf4\x90\x80\x80 and more text",
        );
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        let (events, out) = feed(&mut c, now, &frame[..6 + 4]);
        assert_eq!(
            events,
            vec![Event::ProtocolError(ProtocolError::InvalidUtf8)]
        );
        assert_eq!(close_code_of(&out[0]), 1007);
        // The rest of that frame, then the peer's close reply, finish the handshake.
        let mut rest = frame[10..].to_vec();
        rest.extend(masked(Opcode::Close, true, &[0x03, 0xef]));
        let (events, out) = feed(&mut c, now, &rest);
        assert_eq!(
            events,
            vec![Event::Close {
                code: Some(CloseCode(1007)),
                reason: String::new()
            }]
        );
        assert!(out.is_empty());
        assert!(c.is_closed());
        // Across fragments, and a message that ends inside a code point.
        let mut two = masked(Opcode::Text, false, b"\xce");
        two.extend(masked(Opcode::Continuation, true, b"a"));
        assert_fails_with(&two, false, 1007, ProtocolError::InvalidUtf8);
        assert_fails_with(
            &masked(Opcode::Text, true, b"ok\xce"),
            false,
            1007,
            ProtocolError::InvalidUtf8,
        );
    }

    #[test]
    fn message_over_the_limit_is_1009_after_reassembly() {
        let config = Config {
            max_message_bytes: 10,
            ..Config::default()
        };
        let now = t0();
        let mut c = open_server(now, false, config);
        let (events, _) = feed(&mut c, now, &masked(Opcode::Text, true, &[b'a'; 10]));
        assert_eq!(events, vec![Event::Text("a".repeat(10))]);
        let mut frags = masked(Opcode::Text, false, &[b'a'; 6]);
        frags.extend(masked(Opcode::Continuation, true, &[b'a'; 5]));
        let (events, out) = feed(&mut c, now, &frags);
        assert_eq!(
            events,
            vec![Event::ProtocolError(ProtocolError::MessageTooBig {
                len: 11,
                max: 10
            })]
        );
        assert_eq!(close_code_of(&out[0]), 1009);
        // Default: 64 KiB exactly is fine, one more byte is not.
        let now = t0();
        let mut c = open_server(now, true, Config::default());
        let (events, _) = feed(&mut c, now, &masked(Opcode::Binary, true, &vec![7; 65536]));
        assert_eq!(events, vec![Event::Binary(vec![7; 65536])]);
        assert_fails_with(
            &masked(Opcode::Binary, true, &vec![7; 65537]),
            true,
            1009,
            ProtocolError::MessageTooBig {
                len: 65537,
                max: 65536,
            },
        );
    }

    #[test]
    fn close_frames_with_bad_payloads() {
        for (payload, code, err) in [
            (&[0x03][..], 1002, ProtocolError::CloseTooShort),
            (
                &[0x03, 0xed][..],
                1002,
                ProtocolError::InvalidCloseCode(1005),
            ),
            (&[0x00, 0x00][..], 1002, ProtocolError::InvalidCloseCode(0)),
            (
                &[0x03, 0xe8, 0xff][..],
                1007,
                ProtocolError::InvalidCloseReason,
            ),
        ] {
            let now = t0();
            let mut c = open_server(now, false, Config::default());
            let (events, out) = feed(&mut c, now, &masked(Opcode::Close, true, payload));
            assert_eq!(events, vec![Event::ProtocolError(err.clone())]);
            assert_eq!(close_code_of(&out[0]), code, "{err}");
            assert!(
                c.is_closed(),
                "the peer already closed: no reply to wait for"
            );
        }
    }

    #[test]
    fn peer_close_is_echoed_and_empty_close_answered_empty() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        let (events, out) = feed(&mut c, now, &masked(Opcode::Close, true, b"\x0b\xb8bye"));
        assert_eq!(
            events,
            vec![Event::Close {
                code: Some(CloseCode(3000)),
                reason: "bye".into()
            }]
        );
        assert_eq!(close_code_of(&out[0]), 3000);
        assert!(c.is_closed());
        // Nothing after the close is looked at.
        let (events, out) = feed(&mut c, now, &masked(Opcode::Ping, true, b""));
        assert!(events.is_empty() && out.is_empty());

        let mut c = open_server(now, false, Config::default());
        let (events, out) = feed(&mut c, now, &masked(Opcode::Close, true, b""));
        assert_eq!(
            events,
            vec![Event::Close {
                code: None,
                reason: String::new()
            }]
        );
        assert_eq!(out[0].payload, b"");
    }

    #[test]
    fn server_initiated_close_waits_for_the_reply_or_the_timeout() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        c.close(now, CloseCode::GOING_AWAY, "shutting down");
        assert_eq!(c.state(), State::Closing);
        let out = frames(&tx(&mut c));
        assert_eq!(close_code_of(&out[0]), 1001);
        assert_eq!(&out[0].payload[2..], b"shutting down");
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
        // Data that crossed our close is dropped; pings get no pong.
        let mut bytes = masked(Opcode::Text, true, b"late");
        bytes.extend(masked(Opcode::Ping, true, b""));
        let (events, out) = feed(&mut c, now, &bytes);
        assert!(events.is_empty() && out.is_empty());
        let (events, _) = feed(&mut c, now, &masked(Opcode::Close, true, &[0x03, 0xe9]));
        assert_eq!(
            events,
            vec![Event::Close {
                code: Some(CloseCode::GOING_AWAY),
                reason: String::new()
            }]
        );
        assert!(c.is_closed());
        // Closed: the caller writes what is left, at most until the linger deadline.
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));

        // A close that fails the connection (PROTOCOL §7: 4xxx) waits 1 s.
        let mut c = open_server(now, false, Config::default());
        c.close(now, CloseCode::SLOW_CONSUMER, "");
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(1)));
        c.handle_timeout(now + Duration::from_millis(999));
        assert_eq!(c.state(), State::Closing);
        c.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.poll_timeout(), None, "past the deadline: drop it now");
    }

    /// PROTOCOL §7 / RFC 6455 §7.1.7: after failing a connection the server
    /// closes it itself within 1 s, even when the peer's close reply was
    /// swallowed as the payload of the frame that failed it.
    #[test]
    fn failed_connections_are_closed_within_a_second() {
        let now = t0();
        let later = now + Duration::from_millis(1000);
        let unmasked = {
            let mut b = vec![0x81, 0x02];
            b.extend_from_slice(b"hi");
            b
        };
        let too_big = {
            let mut b = vec![0x81, 0xff]; // masked, 64-bit length
            b.extend_from_slice(&65_537u64.to_be_bytes());
            b.extend_from_slice(&KEY);
            b
        };
        let huge = {
            let mut b = vec![0x81, 0xff];
            b.extend_from_slice(&(1u64 << 40).to_be_bytes());
            b.extend_from_slice(&KEY);
            b
        };
        for (name, bytes, code) in [
            ("unmasked", unmasked, 1002),
            ("65,537 bytes", too_big, 1009),
            ("2^40 bytes", huge, 1009),
        ] {
            let mut c = open_server(now, false, Config::default());
            let (events, out) = feed(&mut c, now, &bytes);
            assert!(
                matches!(events[..], [Event::ProtocolError(_)]),
                "{name}: {events:?}"
            );
            assert_eq!(close_code_of(&out[0]), code, "{name}");
            assert_eq!(c.poll_timeout(), Some(later), "{name}");
            // The peer's close reply (lost inside the declared payload for
            // the oversized frames) does not keep the connection open.
            feed(
                &mut c,
                now,
                &masked(Opcode::Close, true, &code.to_be_bytes()),
            );
            if name == "unmasked" {
                assert!(c.is_closed(), "the reply after a skipped payload is read");
            } else {
                assert_eq!(c.state(), State::Closing, "{name}");
                c.handle_timeout(later);
                assert!(c.is_closed(), "{name}");
                assert_eq!(c.poll_timeout(), None, "{name}");
            }
        }
    }

    /// A closed connection with output (an HTTP answer, a close reply) has a
    /// linger deadline: a peer that never reads cannot hold it forever.
    #[test]
    fn closed_connections_with_output_have_a_linger_deadline() {
        let now = t0();
        let linger = now + Duration::from_secs(5);
        let mut c = Conn::server(now, Config::default());
        c.handle_read(now, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(matches!(c.poll_event(now), Some(Event::Request(_))));
        c.respond(now, &Response::ok("text/plain", "ok\n"));
        assert!(c.is_closed());
        assert_eq!(c.poll_timeout(), Some(linger));
        c.handle_timeout(linger);
        assert_eq!(c.poll_timeout(), None);

        let mut c = Conn::server(now, Config::default());
        c.handle_read(now, &[b'x'; 9000]);
        assert!(matches!(c.poll_event(now), Some(Event::BadRequest(_))));
        assert_eq!(c.poll_timeout(), Some(linger), "431 answer");

        let mut c = open_server(now, false, Config::default());
        feed(&mut c, now, &masked(Opcode::Close, true, &[0x03, 0xe8]));
        assert!(c.is_closed());
        assert_eq!(c.poll_timeout(), Some(linger), "close reply");
    }

    /// A frame header declaring a big payload reserves nothing by itself.
    #[test]
    fn a_header_alone_reserves_no_payload_buffer() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        let mut header = vec![0x81, 0xfe];
        header.extend_from_slice(&65_000u16.to_be_bytes());
        header.extend_from_slice(&KEY);
        let (events, _) = feed(&mut c, now, &header);
        assert!(events.is_empty());
        assert_eq!(c.msg.capacity(), 0);
        let payload: Vec<u8> = (0..100).map(|i| b'a' ^ KEY[i % 4]).collect();
        let (events, _) = feed(&mut c, now, &payload);
        assert!(events.is_empty());
        assert!(c.msg.capacity() < 1024, "{}", c.msg.capacity());
    }

    #[test]
    fn client_role_masks_what_it_sends_and_rejects_masked_server_frames() {
        let now = t0();
        let mut client = Conn::client(Config::default(), 42);
        let mut server = open_server(now, true, Config::default());
        assert_eq!(client.send_text("hi"), Sent::Queued);
        assert_eq!(client.send_binary(&[9; 300]), Sent::Queued);
        let wire = tx(&mut client);
        assert_ne!(wire[1] & 0x80, 0, "masked");
        server.handle_read(now, &wire);
        let got = drain_events(&mut server, now);
        assert_eq!(
            got,
            vec![Event::Text("hi".into()), Event::Binary(vec![9; 300])]
        );
        // Server → client, unmasked.
        server.send_text("back");
        client.handle_read(now, &tx(&mut server));
        assert_eq!(client.poll_event(now), Some(Event::Text("back".into())));
        // A masked frame from the server is a protocol error for the client.
        client.handle_read(now, &masked(Opcode::Text, true, b"x"));
        assert_eq!(
            client.poll_event(now),
            Some(Event::ProtocolError(ProtocolError::MaskedFrame))
        );
        let wire = tx(&mut client);
        let (f, _) = decode_frame(Role::Server, &wire).unwrap().unwrap();
        assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), 1002);
    }

    #[test]
    fn idle_connection_holds_no_buffers_and_stays_small() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        feed(&mut c, now, &masked(Opcode::Text, true, b"hello"));
        assert_eq!(c.msg.capacity(), 0);
        assert_eq!(c.pending.capacity(), 0);
        assert_eq!(c.tx.capacity(), 0);
        assert!(c.http.is_none());
        // A cut frame holds only what it needs.
        c.handle_read(now, &masked(Opcode::Text, true, b"hello")[..3]);
        assert_eq!(c.pending.len(), 3);
        println!("size_of::<Conn>() = {}", std::mem::size_of::<Conn>());
        assert!(
            std::mem::size_of::<Conn>() <= 120,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn many_one_byte_fragments_reassemble_up_to_the_limit() {
        let now = t0();
        let mut c = open_server(now, true, Config::default());
        let mut bytes = masked(Opcode::Binary, false, &[0]);
        for i in 1..65535u32 {
            bytes.extend(masked(Opcode::Continuation, false, &[i as u8]));
        }
        bytes.extend(masked(Opcode::Continuation, true, &[0xff]));
        let (events, out) = feed(&mut c, now, &bytes);
        let expect: Vec<u8> = (0..65535u32).map(|i| i as u8).chain([0xff]).collect();
        assert_eq!(events, vec![Event::Binary(expect)]);
        assert!(out.is_empty());
        // One fragment more is over the limit.
        bytes.truncate(bytes.len() - 7);
        bytes.extend(masked(Opcode::Continuation, false, &[0xff]));
        bytes.extend(masked(Opcode::Continuation, true, &[0xff]));
        let mut c = open_server(now, true, Config::default());
        let (events, _) = feed(&mut c, now, &bytes);
        assert_eq!(
            events,
            vec![Event::ProtocolError(ProtocolError::MessageTooBig {
                len: 65537,
                max: 65536
            })]
        );
    }

    #[test]
    fn input_after_the_close_is_dropped_not_kept() {
        let now = t0();
        let mut c = open_server(now, false, Config::default());
        let mut bytes = masked(Opcode::Text, true, b"first");
        bytes.extend(masked(Opcode::Close, true, &[0x03, 0xe8]));
        bytes.extend(masked(Opcode::Text, true, &[b'z'; 1000]));
        let (events, _) = feed(&mut c, now, &bytes);
        assert_eq!(
            events,
            vec![
                Event::Text("first".into()),
                Event::Close {
                    code: Some(CloseCode::NORMAL),
                    reason: String::new()
                }
            ]
        );
        assert!(c.is_closed());
        assert_eq!(c.pending.capacity(), 0);
        assert_eq!(c.msg.capacity(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic_in_any_phase(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                                 cut in 0usize..300, echo in any::<bool>()) {
            let now = t0();
            let cut = cut.min(bytes.len());
            let mut c = open_server(now, echo, Config { max_message_bytes: 100, ..Config::default() });
            c.handle_read(now, &bytes[..cut]);
            c.handle_read(now, &bytes[cut..]);
            drain_events(&mut c, now);
            let mut h = Conn::server(now, Config::default());
            h.handle_read(now, &bytes);
            drain_events(&mut h, now);
            let mut cl = Conn::client(Config::default(), 1);
            cl.handle_read(now, &bytes);
            drain_events(&mut cl, now);
        }

        #[test]
        fn messages_survive_any_split(texts in proptest::collection::vec("\\PC{0,40}", 1..5), cut in 0usize..400) {
            let mut bytes = Vec::new();
            for t in &texts {
                let b = t.as_bytes();
                let (a, rest) = b.split_at(b.len() / 2);
                bytes.extend(masked(Opcode::Text, false, a));
                bytes.extend(masked(Opcode::Continuation, true, rest));
            }
            let cut = cut.min(bytes.len());
            let now = t0();
            let mut c = open_server(now, false, Config::default());
            c.handle_read(now, &bytes[..cut]);
            let mut events = drain_events(&mut c, now);
            c.handle_read(now, &bytes[cut..]);
            events.extend(drain_events(&mut c, now));
            let expect: Vec<Event> = texts.iter().map(|t| Event::Text(t.clone())).collect();
            prop_assert_eq!(events, expect);
        }
    }

    /// A server connection on `/echo` that negotiated permessage-deflate
    /// (with `deflate`) or not; the 101 is checked and dropped.
    fn open_deflate(now: Instant, deflate: bool) -> Conn {
        let mut c = Conn::server(now, Config::default());
        let mut hs = ClientHandshake::new([1; 16], &[]);
        if deflate {
            hs = hs.with_deflate();
        }
        let mut req = Vec::new();
        hs.write_request(&mut req, "h", "/echo");
        c.handle_read(now, &req);
        let Some(Event::Request(r)) = c.poll_event(now) else {
            panic!("request expected");
        };
        let Route::Upgrade(up) = Router::new().with_echo_path("/echo").route(&r) else {
            panic!("upgrade expected");
        };
        c.accept(&up);
        let out = tx(&mut c);
        assert!(hs.read_response(&out).unwrap().is_some());
        let agreed = crate::ws::deflate_in_response(&out);
        assert_eq!(agreed.is_some(), deflate);
        assert_eq!(c.deflate(), agreed);
        c
    }

    /// A masked client frame with RSV1 set.
    fn masked_rsv1(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = masked(opcode, fin, payload);
        f[0] |= 0x40;
        f
    }

    fn compressed(payload: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        Compressor::new().compress(payload, &mut z);
        z
    }

    fn close_code_in(out: &[u8]) -> u16 {
        let (f, _) = decode_frame(Role::Client, out).unwrap().unwrap();
        assert_eq!(f.opcode, Opcode::Close);
        u16::from_be_bytes([f.payload[0], f.payload[1]])
    }

    #[test]
    fn deflate_compressed_text_is_inflated_also_when_fragmented() {
        let now = t0();
        let mut c = open_deflate(now, true);
        let text = "subscribe ".repeat(100);
        let z = compressed(text.as_bytes());
        c.handle_read(now, &masked_rsv1(Opcode::Text, true, &z));
        assert_eq!(drain_events(&mut c, now), vec![Event::Text(text.clone())]);
        // RSV1 on the first frame only; continuations carry the rest.
        let (a, b) = z.split_at(z.len() / 2);
        let mut input = masked_rsv1(Opcode::Text, false, a);
        input.extend(masked(Opcode::Continuation, true, b));
        c.handle_read(now, &input);
        assert_eq!(drain_events(&mut c, now), vec![Event::Text(text)]);
        // An uncompressed message still works.
        c.handle_read(now, &masked(Opcode::Text, true, b"plain"));
        assert_eq!(drain_events(&mut c, now), vec![Event::Text("plain".into())]);
    }

    #[test]
    fn deflate_send_compresses_only_from_the_threshold() {
        let now = t0();
        let mut z = Compressor::new();
        let mut c = open_deflate(now, true);
        let small = vec![b'a'; 255];
        c.send_message(&mut z, false, &small);
        let out = tx(&mut c);
        assert_eq!(out[0] & 0x40, 0, "under 256 bytes: RSV1 clear");
        assert_eq!(
            decode_frame(Role::Client, &out).unwrap().unwrap().0.payload,
            small
        );
        let big = vec![b'a'; 256];
        c.send_message(&mut z, true, &big);
        let out = tx(&mut c);
        assert_eq!(
            out[0],
            0x80 | 0x40 | Opcode::Binary as u8,
            "FIN, RSV1, binary"
        );
        let body = &out[2..];
        assert!(body.len() < 256);
        let mut back = Vec::new();
        deflate::inflate(body, 1 << 20, &mut back).unwrap();
        assert_eq!(back, big);
        // Without the extension nothing is compressed.
        let mut c = open_deflate(now, false);
        c.send_message(&mut z, true, &big);
        assert_eq!(tx(&mut c)[0] & 0x40, 0);
    }

    #[test]
    fn deflate_bomb_closes_1009() {
        let now = t0();
        let mut c = open_deflate(now, true);
        // 1 MiB of zeros, about 5 KiB compressed: under the 64 KiB
        // limit, far over it inflated.
        let z = compressed(&vec![0u8; 1 << 20]);
        assert!(z.len() < 8192);
        c.handle_read(now, &masked_rsv1(Opcode::Binary, true, &z));
        let evs = drain_events(&mut c, now);
        assert!(
            matches!(
                evs.as_slice(),
                [Event::ProtocolError(ProtocolError::MessageTooBig { .. })]
            ),
            "{evs:?}"
        );
        assert_eq!(close_code_in(&tx(&mut c)), 1009);
    }

    #[test]
    fn rsv1_misuse_closes_1002() {
        let now = t0();
        let z = compressed(b"hello hello hello");
        // Not negotiated.
        let mut c = open_deflate(now, false);
        c.handle_read(now, &masked_rsv1(Opcode::Text, true, &z));
        assert_eq!(
            drain_events(&mut c, now),
            vec![Event::ProtocolError(ProtocolError::ReservedBits(0b100))]
        );
        assert_eq!(close_code_in(&tx(&mut c)), 1002);
        // Negotiated, but on a control frame.
        let mut c = open_deflate(now, true);
        c.handle_read(now, &masked_rsv1(Opcode::Ping, true, b""));
        assert_eq!(
            drain_events(&mut c, now),
            vec![Event::ProtocolError(ProtocolError::ReservedBits(0b100))]
        );
        assert_eq!(close_code_in(&tx(&mut c)), 1002);
        // Negotiated, but on a continuation frame.
        let mut c = open_deflate(now, true);
        let mut input = masked_rsv1(Opcode::Text, false, &z[..2]);
        input.extend(masked_rsv1(Opcode::Continuation, true, &z[2..]));
        c.handle_read(now, &input);
        assert_eq!(
            drain_events(&mut c, now),
            vec![Event::ProtocolError(ProtocolError::ReservedBits(0b100))]
        );
        assert_eq!(close_code_in(&tx(&mut c)), 1002);
        // RSV2 is never allowed.
        let mut c = open_deflate(now, true);
        let mut f = masked(Opcode::Text, true, b"x");
        f[0] |= 0x20;
        c.handle_read(now, &f);
        assert_eq!(close_code_in(&tx(&mut c)), 1002);
    }

    #[test]
    fn corrupt_compressed_data_closes_1007() {
        let now = t0();
        let mut c = open_deflate(now, true);
        c.handle_read(now, &masked_rsv1(Opcode::Text, true, &[0xff; 8]));
        assert_eq!(
            drain_events(&mut c, now),
            vec![Event::ProtocolError(ProtocolError::BadCompressedData)]
        );
        assert_eq!(close_code_in(&tx(&mut c)), 1007);
    }

    #[test]
    fn compressed_text_with_invalid_utf8_closes_1007() {
        let now = t0();
        let mut c = open_deflate(now, true);
        c.handle_read(
            now,
            &masked_rsv1(Opcode::Text, true, &compressed(&[0xc3, 0x28])),
        );
        assert_eq!(
            drain_events(&mut c, now),
            vec![Event::ProtocolError(ProtocolError::InvalidUtf8)]
        );
    }
}
