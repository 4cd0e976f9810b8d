//! One client connection, sans-IO: the HTTP upgrade, RFC 6455 framing in the
//! client role (tickwire's own codec: [`ClientHandshake`], [`FrameHeader`],
//! [`write_client_frame`]), the subscription, and the [`Verifier`].
//!
//! Bytes in ([`Session::handle_read`]), bytes out ([`Session::pending_out`]);
//! the client thread (`fleet`) only moves them. Complete frames are read in
//! place from the caller's buffer (no copy, no allocation per message); only
//! a frame cut by a read boundary is carried over.
//!
//! `tickwire::ws::Conn` in the client role would do the same framing, but
//! hands every message out as an owned `Vec`: one allocation per message is
//! too much for a client that must outrun the server.

use tickwire::ws::close::parse_close_payload;
use tickwire::ws::frame::{
    FrameHeader, MAX_HEADER_LEN, Role, write_client_frame, write_close_frame,
};
use tickwire::ws::handshake::{PROTOCOL_JSON, PROTOCOL_PROTO};
use tickwire::ws::{ClientHandshake, CloseCode, Opcode};

use crate::stats::{Tally, ViolationKind};
use crate::verify::{ChecksumMemo, Verifier};

/// How a client asks for its encoding (PROTOCOL §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Protobuf, the default (no subprotocol, no query).
    Proto,
    /// Protobuf via `Sec-WebSocket-Protocol: tickwire.v1.proto`.
    ProtoProtocol,
    /// JSON via `Sec-WebSocket-Protocol: tickwire.v1.json`.
    JsonProtocol,
    /// JSON via `?encoding=json`.
    JsonQuery,
}

impl Encoding {
    pub fn is_json(self) -> bool {
        matches!(self, Encoding::JsonProtocol | Encoding::JsonQuery)
    }
}

/// Largest server frame accepted (a deep snapshot is well below).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Largest HTTP response head read during the upgrade.
const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Upgrade request sent, waiting for the 101.
    Handshake,
    Open,
    /// This side sent a close frame; waiting for the server's.
    Closing,
    /// Done: the shell flushes what is pending and drops the socket.
    Closed,
}

/// What the session needs to start.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `Host` header value.
    pub host: String,
    pub encoding: Encoding,
    /// The `Sec-WebSocket-Key` nonce.
    pub nonce: [u8; 16],
    /// Seed of the client's mask keys.
    pub mask_seed: u64,
    pub symbols: Vec<String>,
    pub book: bool,
    pub trades: bool,
}

/// What one read is handled with.
struct Cx<'a> {
    now_ns: u64,
    t: &'a mut Tally,
    memo: &'a mut ChecksumMemo,
}

/// One client connection; see the module doc.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    encoding: Encoding,
    hs: Option<Box<(ClientHandshake, Vec<u8>)>>,
    verifier: Verifier,
    /// A strict prefix of a frame whose end has not arrived yet.
    carry: Vec<u8>,
    /// A fragmented message being reassembled: (is text, bytes so far).
    frag: Option<(bool, Vec<u8>)>,
    out: Vec<u8>,
    out_pos: usize,
    mask_state: u64,
    next_id: u64,
    /// The subscribe request, sent once the upgrade completes.
    subscribe: Option<String>,
    /// The close code the server sent, if it closed first (1005: no code).
    pub server_close: Option<u16>,
}

fn json_list(items: &[&str]) -> String {
    let mut s = String::from("[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        tickwire::wire::json::write_json_str(&mut s, it);
    }
    s.push(']');
    s
}

/// The subscribe request of PROTOCOL §6.
pub fn subscribe_request(symbols: &[&str], channels: &[&str], id: u64) -> String {
    format!(
        r#"{{"op":"subscribe","symbols":{},"channels":{},"id":{id}}}"#,
        json_list(symbols),
        json_list(channels)
    )
}

impl Session {
    /// A session whose upgrade request is already queued in its output.
    pub fn new(cfg: SessionConfig) -> Session {
        let protocols: &[&str] = match cfg.encoding {
            Encoding::ProtoProtocol => &[PROTOCOL_PROTO],
            Encoding::JsonProtocol => &[PROTOCOL_JSON],
            Encoding::Proto | Encoding::JsonQuery => &[],
        };
        let path = if cfg.encoding == Encoding::JsonQuery {
            "/ws?encoding=json"
        } else {
            "/ws"
        };
        let hs = ClientHandshake::new(cfg.nonce, protocols);
        let mut out = Vec::with_capacity(256);
        hs.write_request(&mut out, &cfg.host, path);
        let symbols: Vec<&str> = cfg.symbols.iter().map(String::as_str).collect();
        let mut channels = Vec::with_capacity(2);
        if cfg.book {
            channels.push("book");
        }
        if cfg.trades {
            channels.push("trades");
        }
        let mut verifier = Verifier::new();
        verifier.expect(&symbols, cfg.book, cfg.trades);
        Session {
            phase: Phase::Handshake,
            encoding: cfg.encoding,
            hs: Some(Box::new((hs, Vec::new()))),
            verifier,
            carry: Vec::new(),
            frag: None,
            out,
            out_pos: 0,
            mask_state: cfg.mask_seed | 1,
            next_id: 2,
            subscribe: Some(subscribe_request(&symbols, &channels, 1)),
            server_close: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Bytes waiting to be written.
    pub fn pending_out(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Session::pending_out`] were written.
    pub fn advance_out(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 4096 {
                self.out = Vec::new();
            }
        }
    }

    fn mask_key(&mut self) -> [u8; 4] {
        // xorshift64: mask keys need only be unpredictable to intermediaries.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_le_bytes()
    }

    fn send_text(&mut self, text: &str) {
        let key = self.mask_key();
        write_client_frame(&mut self.out, true, Opcode::Text, text.as_bytes(), key);
    }

    /// Starts a normal close (1000); the server answers and closes.
    pub fn close(&mut self) {
        match self.phase {
            Phase::Open => {
                let key = self.mask_key();
                write_close_frame(Role::Client, &mut self.out, CloseCode::NORMAL, "bye", key);
                self.phase = Phase::Closing;
            }
            Phase::Handshake => self.phase = Phase::Closed,
            Phase::Closing | Phase::Closed => {}
        }
    }

    /// Marks the connection dead (EOF, reset, timeout).
    pub fn abort(&mut self) {
        self.phase = Phase::Closed;
    }

    /// Bytes read from the socket at `now_ns` (wall clock, ns since the epoch).
    /// `memo` is the client thread's (see [`ChecksumMemo`]).
    pub fn handle_read(
        &mut self,
        data: &[u8],
        now_ns: u64,
        t: &mut Tally,
        memo: &mut ChecksumMemo,
    ) {
        t.bytes += data.len() as u64;
        let cx = &mut Cx { now_ns, t, memo };
        match self.phase {
            Phase::Handshake => self.read_handshake(data, cx),
            Phase::Open | Phase::Closing => self.read_frames(data, cx),
            Phase::Closed => {}
        }
        if self.verifier.wants_resync() && self.phase == Phase::Open {
            let mut reqs = Vec::new();
            self.verifier.take_resyncs(|sym| reqs.push(sym.to_owned()));
            for sym in reqs {
                cx.t.resubscribes += 1;
                let id = self.next_id;
                self.next_id += 1;
                let req = subscribe_request(&[&sym], &["book"], id);
                self.send_text(&req);
            }
        }
    }

    fn read_handshake(&mut self, data: &[u8], cx: &mut Cx<'_>) {
        let Some(mut hs) = self.hs.take() else {
            return;
        };
        hs.1.extend_from_slice(data);
        match hs.0.read_response(&hs.1) {
            Ok(Some((protocol, len))) => {
                let want = match self.encoding {
                    Encoding::ProtoProtocol => Some(PROTOCOL_PROTO),
                    Encoding::JsonProtocol => Some(PROTOCOL_JSON),
                    Encoding::Proto | Encoding::JsonQuery => None,
                };
                if protocol.as_deref() != want {
                    cx.t.violation(ViolationKind::Protocol, || {
                        format!("asked for subprotocol {want:?}, the 101 selected {protocol:?}")
                    });
                }
                cx.t.opened += 1;
                self.phase = Phase::Open;
                if let Some(req) = self.subscribe.take() {
                    self.send_text(&req);
                }
                let rest = hs.1.split_off(len);
                self.read_frames(&rest, cx);
            }
            Ok(None) if hs.1.len() <= MAX_RESPONSE_BYTES => self.hs = Some(hs),
            Ok(None) | Err(_) => {
                cx.t.handshake_errors += 1;
                self.phase = Phase::Closed;
            }
        }
    }

    fn read_frames(&mut self, mut data: &[u8], cx: &mut Cx<'_>) {
        // First complete the frame carried from the last read, copying only
        // the bytes it still needs.
        while !self.carry.is_empty() && !data.is_empty() {
            let need = match FrameHeader::parse(&self.carry) {
                Ok(Some(h)) => match h.frame_len() {
                    Some(len) if len <= MAX_FRAME_BYTES => len.saturating_sub(self.carry.len()),
                    _ => return self.fail(cx.t, "frame too large".into()),
                },
                Ok(None) => MAX_HEADER_LEN - self.carry.len().min(MAX_HEADER_LEN - 1),
                Err(e) => return self.fail(cx.t, e.to_string()),
            };
            let take = need.max(1).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            let carry = std::mem::take(&mut self.carry);
            let used = self.frames(&carry, cx);
            self.carry = carry;
            self.carry.drain(..used);
        }
        if !self.carry.is_empty() || self.phase == Phase::Closed {
            return;
        }
        let used = self.frames(data, cx);
        if self.phase != Phase::Closed {
            self.carry.extend_from_slice(&data[used..]);
        }
    }

    /// Handles the complete frames at the start of `data`; returns the bytes used.
    fn frames(&mut self, data: &[u8], cx: &mut Cx<'_>) -> usize {
        let mut pos = 0;
        while pos < data.len() && matches!(self.phase, Phase::Open | Phase::Closing) {
            let h = match FrameHeader::parse(&data[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.fail(cx.t, e.to_string());
                    return data.len();
                }
            };
            let len = match h.frame_len() {
                Some(len) if len <= MAX_FRAME_BYTES => len,
                _ => {
                    self.fail(cx.t, format!("frame of {} bytes", h.payload_len));
                    return data.len();
                }
            };
            if data.len() - pos < len {
                break;
            }
            let payload = &data[pos + usize::from(h.header_len)..pos + len];
            pos += len;
            self.frame(h, payload, cx);
        }
        pos
    }

    fn fail(&mut self, t: &mut Tally, why: String) {
        t.violation(ViolationKind::Protocol, || why);
        self.phase = Phase::Closed;
        self.carry.clear();
    }

    fn frame(&mut self, h: FrameHeader, payload: &[u8], cx: &mut Cx<'_>) {
        let opcode = match h.validate(Role::Client) {
            Ok(op) => op,
            Err(e) => return self.fail(cx.t, e.to_string()),
        };
        match opcode {
            Opcode::Text | Opcode::Binary if self.frag.is_some() => {
                self.fail(cx.t, "data frame inside a fragmented message".into());
            }
            Opcode::Text | Opcode::Binary if h.fin => {
                self.message(opcode == Opcode::Text, payload, cx);
            }
            Opcode::Text | Opcode::Binary => {
                self.frag = Some((opcode == Opcode::Text, payload.to_vec()));
            }
            Opcode::Continuation => match self.frag.as_mut() {
                None => self.fail(cx.t, "continuation without a message".into()),
                Some((_, buf)) if buf.len() + payload.len() > MAX_FRAME_BYTES => {
                    self.fail(cx.t, "fragmented message too large".into());
                }
                Some((text, buf)) => {
                    buf.extend_from_slice(payload);
                    if h.fin {
                        let text = *text;
                        if let Some((_, whole)) = self.frag.take() {
                            self.message(text, &whole, cx);
                        }
                    }
                }
            },
            Opcode::Ping => {
                if self.phase == Phase::Open {
                    let key = self.mask_key();
                    write_client_frame(&mut self.out, true, Opcode::Pong, payload, key);
                }
            }
            Opcode::Pong => {}
            Opcode::Close => {
                let code = match parse_close_payload(payload) {
                    Ok(Some((code, _))) => code.0,
                    Ok(None) => CloseCode::NO_STATUS_RECEIVED.0,
                    Err(e) => return self.fail(cx.t, format!("close frame: {e}")),
                };
                if self.phase == Phase::Open {
                    // RFC 6455 §5.5.1: answer a close with a close (same code).
                    self.server_close = Some(code);
                    *cx.t.server_closes.entry(code).or_default() += 1;
                    let key = self.mask_key();
                    let echo = if code == CloseCode::NO_STATUS_RECEIVED.0 {
                        CloseCode::NORMAL
                    } else {
                        CloseCode(code)
                    };
                    write_close_frame(Role::Client, &mut self.out, echo, "", key);
                }
                self.phase = Phase::Closed;
            }
        }
    }

    fn message(&mut self, text: bool, payload: &[u8], cx: &mut Cx<'_>) {
        match (self.encoding.is_json(), text) {
            (false, false) => self
                .verifier
                .handle_binary(payload, cx.now_ns, cx.t, cx.memo),
            (true, true) => self.verifier.handle_text(payload, cx.now_ns, cx.t, cx.memo),
            (json, _) => cx.t.violation(ViolationKind::WrongEncoding, || {
                format!(
                    "{} frame on a {} connection",
                    if text { "text" } else { "binary" },
                    if json { "JSON" } else { "protobuf" }
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tickwire::book::book::{OrderBook, Side};
    use tickwire::wire::frame::{EncodedFrame, write_server_frame};
    use tickwire::wire::pb::{self, server_message::Body};
    use tickwire::ws::handshake::accept_key;

    fn session(encoding: Encoding) -> Session {
        Session::new(SessionConfig {
            host: "127.0.0.1:1".into(),
            encoding,
            nonce: [7; 16],
            mask_seed: 3,
            symbols: vec!["BTC-USD".into()],
            book: true,
            trades: false,
        })
    }

    fn frame(body: Body) -> Vec<u8> {
        EncodedFrame::binary(&pb::ServerMessage { body: Some(body) })
            .as_bytes()
            .to_vec()
    }

    fn server_stream() -> Vec<u8> {
        let mut book = OrderBook::new();
        book.apply(Side::Bid, 10, 1);
        book.apply(Side::Ask, 12, 1);
        let mut out = frame(Body::Subscribed(pb::Subscribed {
            id: 1,
            symbols: vec!["BTC-USD".into()],
            channels: vec!["book".into()],
            instruments: vec![],
            resumed: Vec::new(),
        }));
        out.extend(frame(Body::Snapshot(pb::BookSnapshot {
            symbol: "BTC-USD".into(),
            seq: 4,
            bids: book.snapshot_levels(Side::Bid),
            asks: book.snapshot_levels(Side::Ask),
            checksum: book.checksum(),
            ..Default::default()
        })));
        for seq in 5..40 {
            book.apply(Side::Bid, 10, seq as i64);
            out.extend(frame(Body::Delta(pb::BookDelta {
                symbol: "BTC-USD".into(),
                seq,
                updates: vec![pb::LevelUpdate {
                    side: 1,
                    price: 10,
                    size: seq as i64,
                }],
                exchange_ts_ns: 1,
                ingest_ts_ns: 1,
                checksum: book.checksum(),
                channel: String::new(),
                prev_seq: 0,
            })));
        }
        out
    }

    fn response(s: &Session, protocol: Option<&str>) -> Vec<u8> {
        let req = String::from_utf8(s.pending_out().to_vec()).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut r = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(key)
        );
        if let Some(p) = protocol {
            r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    #[test]
    fn upgrade_subscribe_and_a_stream_split_at_every_byte() {
        let stream = server_stream();
        for chunk in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut s = session(Encoding::Proto);
            let mut t = Tally::new();
            let mut bytes = response(&s, None);
            s.advance_out(s.pending_out().len());
            bytes.extend_from_slice(&stream);
            for c in bytes.chunks(chunk) {
                s.handle_read(c, 10, &mut t, &mut ChecksumMemo::new());
            }
            assert_eq!(s.phase(), Phase::Open);
            assert_eq!(t.violations_total(), 0, "chunk {chunk}: {:?}", t.samples);
            assert_eq!(
                (t.opened, t.snapshots, t.deltas),
                (1, 1, 35),
                "chunk {chunk}"
            );
            // The subscribe request went out as one masked text frame.
            let (h, _) = tickwire::ws::frame::decode_header(Role::Server, s.pending_out())
                .unwrap()
                .unwrap();
            assert_eq!(h.opcode, Opcode::Text as u8);
        }
    }

    #[test]
    fn ping_is_answered_and_server_close_is_echoed() {
        let mut s = session(Encoding::JsonProtocol);
        let mut t = Tally::new();
        let r = response(&s, Some(PROTOCOL_JSON));
        s.advance_out(s.pending_out().len());
        s.handle_read(&r, 0, &mut t, &mut ChecksumMemo::new());
        s.advance_out(s.pending_out().len());
        let mut ping = Vec::new();
        write_server_frame(&mut ping, Opcode::Ping, b"hi");
        s.handle_read(&ping, 0, &mut t, &mut ChecksumMemo::new());
        let (h, _) = tickwire::ws::frame::decode_header(Role::Server, s.pending_out())
            .unwrap()
            .unwrap();
        assert_eq!((h.opcode, h.payload_len), (Opcode::Pong as u8, 2));
        s.advance_out(s.pending_out().len());
        let mut close = Vec::new();
        write_server_frame(&mut close, Opcode::Close, &4001u16.to_be_bytes());
        s.handle_read(&close, 0, &mut t, &mut ChecksumMemo::new());
        assert_eq!(s.phase(), Phase::Closed);
        assert_eq!(s.server_close, Some(4001));
        assert_eq!(t.server_closes.get(&4001), Some(&1));
        assert_eq!(t.violations_total(), 0);
    }

    #[test]
    fn wrong_encoding_bad_handshake_and_protocol_errors_are_counted() {
        // Asked for JSON, the server chose nothing and sends binary.
        let mut s = session(Encoding::JsonProtocol);
        let mut t = Tally::new();
        let mut bytes = response(&s, None);
        bytes.extend(frame(Body::Stale(pb::Stale::default())));
        s.handle_read(&bytes, 0, &mut t, &mut ChecksumMemo::new());
        assert_eq!(t.violations.get(&ViolationKind::Protocol), Some(&1));
        assert_eq!(t.violations.get(&ViolationKind::WrongEncoding), Some(&1));
        // A 503 is a handshake error, not a violation.
        let mut s = session(Encoding::Proto);
        let mut t = Tally::new();
        s.handle_read(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            0,
            &mut t,
            &mut ChecksumMemo::new(),
        );
        assert_eq!((s.phase(), t.handshake_errors), (Phase::Closed, 1));
        assert_eq!(t.violations_total(), 0);
        // A masked server frame is a protocol violation and ends the session.
        let mut s = session(Encoding::Proto);
        let mut t = Tally::new();
        let mut bytes = response(&s, None);
        write_client_frame(&mut bytes, true, Opcode::Binary, b"x", [1, 2, 3, 4]);
        s.handle_read(&bytes, 0, &mut t, &mut ChecksumMemo::new());
        assert_eq!(t.violations.get(&ViolationKind::Protocol), Some(&1));
        assert_eq!(s.phase(), Phase::Closed);
    }

    #[test]
    fn fragmented_messages_are_reassembled() {
        let mut s = session(Encoding::Proto);
        let mut t = Tally::new();
        let mut bytes = response(&s, None);
        let whole = pb::ServerMessage {
            body: Some(Body::Subscribed(pb::Subscribed {
                id: 1,
                symbols: vec!["BTC-USD".into()],
                channels: vec!["book".into()],
                instruments: vec![],
                resumed: Vec::new(),
            })),
        }
        .encode_to_vec();
        let (a, b) = whole.split_at(3);
        tickwire::wire::frame::write_server_header(&mut bytes, false, Opcode::Binary, a.len());
        bytes.extend_from_slice(a);
        tickwire::wire::frame::write_server_header(&mut bytes, true, Opcode::Continuation, b.len());
        bytes.extend_from_slice(b);
        s.handle_read(&bytes, 0, &mut t, &mut ChecksumMemo::new());
        assert_eq!((t.control, t.violations_total()), (1, 0), "{:?}", t.samples);
    }
}
