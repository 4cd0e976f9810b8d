//! A blocking WebSocket test client that speaks PROTOCOL §6 with tickwire's own
//! codec in the client role, and verifies what it receives: a snapshot, then
//! contiguous deltas whose checksums match the book it rebuilds, or an
//! explicit Stale then a snapshot.
#![allow(dead_code)]

pub mod harness;
pub mod keys;
pub mod nats;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use prost::Message;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};
use tickwire::book::book::{OrderBook, Side};
use tickwire::wire::decimal::{parse_price, parse_size};
use tickwire::wire::pb::{self, server_message::Body};
use tickwire::ws::{self, ClientHandshake, Event};

/// How a client asks for its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    Proto,
    /// `Sec-WebSocket-Protocol: tickwire.v1.json`.
    JsonProtocol,
    /// `?encoding=json`.
    JsonQuery,
}

/// One symbol's book as a client holds it.
#[derive(Debug, Default, Clone)]
pub struct ClientBook {
    pub book: OrderBook,
    /// Last book seq applied (0: no snapshot yet).
    pub seq: u64,
    /// A Stale arrived: a snapshot must come before any delta.
    pub awaiting: bool,
    pub deltas: u64,
    pub snapshots: u64,
    pub trades: u64,
    pub last_trade_seq: u64,
    /// The epoch of the last snapshot (PROTOCOL §10).
    pub epoch: u64,
    /// The book channel of the last snapshot ("" for plain `book`).
    pub channel: String,
}

pub struct Client {
    stream: TcpStream,
    conn: ws::Conn,
    pub json: bool,
    pending: Vec<Body>,
    decimals: HashMap<String, (u32, u32)>,
    pub books: HashMap<String, ClientBook>,
    /// Every message received, in order (for tests that look at sequences).
    pub log: Vec<Body>,
    pub violations: Vec<String>,
    pub closed: Option<(u16, String)>,
    /// How much of `log` [`Client::next_in_log`] has gone through.
    pub cursor: usize,
    /// permessage-deflate as the server's 101 accepted it (PROTOCOL §12).
    pub deflate: Option<ws::deflate::Deflate>,
    /// Bytes read from the socket after the handshake.
    pub wire_bytes: u64,
    /// An SSE stream (PROTOCOL §11) instead of a WebSocket: its events are
    /// parsed here and verified like JSON messages.
    pub sse: Option<SseReader>,
}

/// The reading side of an `EventSource` (the HTML event-stream format, as
/// far as PROTOCOL §11 uses it): `event:`, `data:`, `id:` fields, comment
/// lines, a blank line dispatching the event.
#[derive(Debug, Default)]
pub struct SseReader {
    buf: Vec<u8>,
    event: String,
    data: Option<String>,
    id_seen: bool,
    /// The last event ID (what a browser would send as `Last-Event-ID`).
    pub last_event_id: Option<String>,
    /// Every event dispatched: (type, data, whether it had an `id:` line).
    pub events: Vec<(String, String, bool)>,
    /// Comment lines (`: ping`).
    pub comments: usize,
    /// `retry:` fields.
    pub retry: Option<u64>,
}

impl SseReader {
    /// Bytes of the body; returns the data of the events dispatched.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8(line[..line.len() - 1].to_vec()).expect("UTF-8 stream");
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    let ev = std::mem::take(&mut self.event);
                    self.events.push((ev, data.clone(), self.id_seen));
                    out.push(data);
                }
                self.event.clear();
                self.id_seen = false;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_string(),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                "id" => {
                    self.last_event_id = Some(value.to_string());
                    self.id_seen = true;
                }
                "retry" => self.retry = value.parse().ok(),
                _ => {}
            }
        }
        out
    }
}

/// `GET path` (with `headers`) on a fresh connection: the status, the head
/// and whatever of the body came within `wait` (an SSE refusal's body, or
/// the start of a stream).
pub fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
    wait: Duration,
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, buf[end + 4..].to_vec())
}

fn rand_bytes(seed: u64) -> [u8; 16] {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// The text of a subscription request (PROTOCOL §6).
pub fn request_text(op: &str, symbols: &[&str], channels: &[&str], id: u64) -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"op":"{op}","symbols":[{}],"channels":[{}],"id":{id}}}"#,
        list(symbols),
        list(channels)
    )
}

/// A JSON channel name as protobuf carries it: plain `book` is "".
fn plain_book(channel: String) -> String {
    if channel == "book" {
        String::new()
    } else {
        channel
    }
}

/// How the client's socket is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOpts {
    /// Source address (any of 127.0.0.0/8 works on loopback): per-IP tests.
    pub bind: Option<IpAddr>,
    /// `SO_RCVBUF` set before connecting (so the window is small too).
    pub recv_buffer: Option<usize>,
}

/// A TCP connection made as `opts` say (bounded by a 10 s connect timeout).
pub fn tcp_connect(addr: SocketAddr, opts: SocketOpts) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    if let Some(n) = opts.recv_buffer {
        s.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    if let Some(ip) = opts.bind {
        s.bind(&SocketAddr::new(ip, 0).into()).expect("bind source");
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(10))
        .expect("connect");
    s.into()
}

/// The answer to a WebSocket upgrade that may be refused: status, the
/// `Retry-After` header, and the stream (open after a 101).
pub fn try_upgrade(
    addr: SocketAddr,
    opts: SocketOpts,
    seed: u64,
) -> (u16, Option<String>, TcpStream) {
    let (status, head, stream) = try_upgrade_to(addr, opts, seed, "/ws", &[]);
    let retry = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_string())
    });
    (status, retry, stream)
}

/// Appends header lines to a request head that ends with its blank line.
fn add_headers(req: &mut Vec<u8>, headers: &[&str]) {
    if headers.is_empty() {
        return;
    }
    assert!(req.ends_with(b"\r\n\r\n"));
    req.truncate(req.len() - 2);
    for h in headers {
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
}

/// An upgrade at `path` with extra header lines that may be refused: the
/// status, the whole response head, and the stream (open after a 101).
pub fn try_upgrade_to(
    addr: SocketAddr,
    opts: SocketOpts,
    seed: u64,
    path: &str,
    headers: &[&str],
) -> (u16, String, TcpStream) {
    let mut stream = tcp_connect(addr, opts);
    let hs = ClientHandshake::new(rand_bytes(seed), &[]);
    let mut req = Vec::new();
    hs.write_request(&mut req, &addr.to_string(), path);
    add_headers(&mut req, headers);
    stream.write_all(&req).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            return (status, head, stream);
        }
        assert!(n > 0, "closed before an HTTP answer");
    }
}

impl Client {
    /// A client over an open `stream`, nothing received yet.
    fn new(
        stream: TcpStream,
        conn: ws::Conn,
        json: bool,
        deflate: Option<ws::deflate::Deflate>,
        sse: Option<SseReader>,
    ) -> Client {
        Client {
            stream,
            conn,
            json,
            pending: Vec::new(),
            decimals: HashMap::new(),
            books: HashMap::new(),
            log: Vec::new(),
            violations: Vec::new(),
            closed: None,
            cursor: 0,
            deflate,
            wire_bytes: 0,
            sse,
        }
    }

    pub fn connect(addr: SocketAddr, enc: Enc, seed: u64) -> Client {
        Client::connect_with(addr, enc, seed, SocketOpts::default())
    }

    pub fn connect_with(addr: SocketAddr, enc: Enc, seed: u64, opts: SocketOpts) -> Client {
        Client::connect_to(addr, enc, seed, opts, Client::ws_path(enc), &[])
    }

    fn ws_path(enc: Enc) -> &'static str {
        if enc == Enc::JsonQuery {
            "/ws?encoding=json"
        } else {
            "/ws"
        }
    }

    /// Offers permessage-deflate; the codec inflates what comes compressed.
    pub fn connect_deflate(addr: SocketAddr, enc: Enc, seed: u64) -> Client {
        let path = Client::ws_path(enc);
        Client::connect_ext(addr, enc, seed, SocketOpts::default(), path, &[], true)
    }

    /// Upgrades at `path` (with its query) with extra request header lines
    /// (`"Authorization: Bearer …"`); panics unless the answer is a 101.
    pub fn connect_to(
        addr: SocketAddr,
        enc: Enc,
        seed: u64,
        opts: SocketOpts,
        path: &str,
        headers: &[&str],
    ) -> Client {
        Client::connect_ext(addr, enc, seed, opts, path, headers, false)
    }

    fn connect_ext(
        addr: SocketAddr,
        enc: Enc,
        seed: u64,
        opts: SocketOpts,
        path: &str,
        headers: &[&str],
        deflate: bool,
    ) -> Client {
        let mut stream = tcp_connect(addr, opts);
        stream.set_nodelay(true).unwrap();
        let protocols: &[&str] = match enc {
            Enc::JsonProtocol => &["tickwire.v1.json"],
            _ => &[],
        };
        let mut hs = ClientHandshake::new(rand_bytes(seed), protocols);
        if deflate {
            hs = hs.with_deflate();
        }
        let mut req = Vec::new();
        hs.write_request(&mut req, &addr.to_string(), path);
        add_headers(&mut req, headers);
        stream.write_all(&req).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (rest, _proto) = loop {
            let n = stream.read(&mut chunk).expect("handshake read");
            assert!(n > 0, "server closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some((proto, len)) = hs.read_response(&buf).expect("101") {
                break (buf[len..].to_vec(), proto);
            }
        };
        let agreed = ws::deflate_in_response(&buf);
        let mut conn = ws::Conn::client(ws::Config::default(), seed | 1);
        conn.set_deflate(agreed);
        conn.handle_read(Instant::now(), &rest);
        let mut c = Client::new(stream, conn, enc != Enc::Proto, agreed, None);
        c.wire_bytes = rest.len() as u64;
        c.collect_events();
        c
    }

    pub fn send(&mut self, text: &str) {
        let _ = self.conn.send_text(text);
        self.flush();
    }

    pub fn subscribe(&mut self, symbols: &[&str], channels: &[&str], id: u64) {
        self.request("subscribe", symbols, channels, id);
    }

    /// Sends the subscribe `request` (whose id is `id`) until it is answered
    /// with `Subscribed` rather than `unknown_symbol` (the workers learn a
    /// new symbol through their rings, a moment after the market), at most
    /// [`harness::WAIT`]; any other answer fails the test.
    pub fn subscribe_when_known(&mut self, request: &str, id: u64) -> pb::Subscribed {
        let deadline = Instant::now() + harness::WAIT;
        loop {
            self.send(request);
            let answer = self.read_until(harness::WAIT, |m| {
                matches!(m, Body::Subscribed(s) if s.id == id)
                    || matches!(m, Body::Error(e) if e.id == id)
            });
            match answer {
                Some(Body::Subscribed(s)) => return s,
                Some(Body::Error(e)) if e.code == "unknown_symbol" && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("{request}: {other:?}"),
            }
        }
    }

    pub fn unsubscribe(&mut self, symbols: &[&str], channels: &[&str], id: u64) {
        self.request("unsubscribe", symbols, channels, id);
    }

    /// Sends `{"op":op,"symbols":[…],"channels":[…],"id":id}` (PROTOCOL §6).
    fn request(&mut self, op: &str, symbols: &[&str], channels: &[&str], id: u64) {
        self.send(&request_text(op, symbols, channels, id));
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        self.conn.poll_transmit(&mut out);
        if !out.is_empty() {
            let _ = self.stream.write_all(&out);
        }
    }

    /// Sends raw bytes (a broken frame, say).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends a close frame with `code` (the server echoes it).
    pub fn close(&mut self, code: u16) {
        self.conn.close(Instant::now(), ws::CloseCode(code), "bye");
        self.flush();
    }

    fn collect_events(&mut self) {
        while let Some(ev) = self.conn.poll_event(Instant::now()) {
            match ev {
                Event::Binary(b) => match pb::ServerMessage::decode(b.as_slice()) {
                    Ok(pb::ServerMessage { body: Some(body) }) => self.pending.push(body),
                    other => self
                        .violations
                        .push(format!("undecodable binary frame: {other:?}")),
                },
                Event::Text(t) => match self.json_to_body(&t) {
                    Some(body) => self.pending.push(body),
                    None => self.violations.push(format!("bad JSON message: {t}")),
                },
                Event::Close { code, reason } => {
                    self.closed = Some((code.map_or(1005, |c| c.0), reason));
                }
                Event::ProtocolError(e) => self.violations.push(format!("protocol error: {e}")),
                _ => {}
            }
        }
        self.flush();
    }

    /// Opens `GET path` as an `EventSource` would (with `Last-Event-ID`
    /// when given); panics unless the answer is a `text/event-stream` 200.
    pub fn connect_sse(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Client {
        Client::connect_sse_with(addr, path, last_event_id, SocketOpts::default())
    }

    /// [`Client::connect_sse`] on a socket made as `opts` say.
    pub fn connect_sse_with(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
        opts: SocketOpts,
    ) -> Client {
        let mut stream = tcp_connect(addr, opts);
        stream.set_nodelay(true).unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = stream.read(&mut chunk).expect("response read");
            assert!(
                n > 0,
                "server closed before its head: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "{head}\n{}",
            String::from_utf8_lossy(&buf[end..])
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        let conn = ws::Conn::client(ws::Config::default(), 1);
        let mut c = Client::new(stream, conn, true, None, Some(SseReader::default()));
        let rest = buf[end + 4..].to_vec();
        c.collect_sse(&rest);
        c
    }

    fn collect_sse(&mut self, bytes: &[u8]) {
        let Some(sse) = self.sse.as_mut() else {
            return;
        };
        for data in sse.feed(bytes) {
            match self.json_to_body(&data) {
                Some(body) => self.pending.push(body),
                None => self.violations.push(format!("bad JSON event: {data}")),
            }
        }
    }

    /// Reads for at most `wait`, returning the messages that arrived (also verified and logged).
    pub fn read_for(&mut self, wait: Duration) -> Vec<Body> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            for body in std::mem::take(&mut self.pending) {
                self.verify(&body);
                self.log.push(body.clone());
                got.push(body);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed.is_some() {
                return got;
            }
            self.stream
                .set_read_timeout(Some(
                    left.min(Duration::from_millis(20))
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    if self.closed.is_none() {
                        self.closed = Some((1006, "eof".into()));
                    }
                }
                Ok(n) => {
                    self.wire_bytes += n as u64;
                    if self.sse.is_some() {
                        self.collect_sse(&buf[..n]);
                    } else {
                        self.conn.handle_read(Instant::now(), &buf[..n]);
                        self.collect_events();
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    if self.closed.is_none() {
                        self.closed = Some((1006, "reset".into()));
                    }
                }
            }
        }
    }

    /// The next message of `log` after the last one this returned for which
    /// `pred` holds (reading for at most `wait`); none is skipped however
    /// the messages were batched in reads.
    pub fn next_in_log(
        &mut self,
        wait: Duration,
        mut pred: impl FnMut(&Body) -> bool,
    ) -> Option<Body> {
        let deadline = Instant::now() + wait;
        loop {
            while self.cursor < self.log.len() {
                self.cursor += 1;
                if pred(&self.log[self.cursor - 1]) {
                    return Some(self.log[self.cursor - 1].clone());
                }
            }
            if Instant::now() >= deadline || self.closed.is_some() {
                return None;
            }
            self.read_for(Duration::from_millis(20));
        }
    }

    /// Reads until `pred` holds for a received message, at most `wait`.
    pub fn read_until(
        &mut self,
        wait: Duration,
        mut pred: impl FnMut(&Body) -> bool,
    ) -> Option<Body> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            for b in self.read_for(left.min(Duration::from_millis(20))) {
                if pred(&b) {
                    return Some(b);
                }
            }
            if self.closed.is_some() {
                return None;
            }
        }
    }

    /// Reads until every symbol in `targets` reached its book seq, at most `wait`.
    pub fn read_until_seqs(&mut self, wait: Duration, targets: &HashMap<String, u64>) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let done = targets
                .iter()
                .all(|(s, &t)| self.books.get(s).is_some_and(|b| b.seq >= t && !b.awaiting));
            if done {
                return true;
            }
            if Instant::now() >= deadline || self.closed.is_some() {
                return false;
            }
            self.read_for(Duration::from_millis(20));
        }
    }

    fn verify(&mut self, body: &Body) {
        match body {
            Body::Subscribed(s) => {
                for i in &s.instruments {
                    self.decimals.insert(
                        i.symbol.clone(),
                        (i.price_decimals as u32, i.size_decimals as u32),
                    );
                }
            }
            Body::Snapshot(s) => {
                let b = self.books.entry(s.symbol.clone()).or_default();
                match OrderBook::from_levels(&s.bids, &s.asks) {
                    Ok(book) => b.book = book,
                    Err(e) => self
                        .violations
                        .push(format!("{}: bad snapshot levels {e}", s.symbol)),
                }
                if s.seq < b.seq && s.epoch == b.epoch && s.channel == b.channel {
                    self.violations.push(format!(
                        "{}: snapshot seq {} went back from {}",
                        s.symbol, s.seq, b.seq
                    ));
                }
                if b.book.checksum() != s.checksum {
                    self.violations.push(format!(
                        "{}: snapshot checksum mismatch at {}",
                        s.symbol, s.seq
                    ));
                }
                b.seq = s.seq;
                b.epoch = s.epoch;
                b.channel = s.channel.clone();
                b.awaiting = false;
                b.snapshots += 1;
            }
            Body::Delta(d) => {
                let Some(b) = self.books.get_mut(&d.symbol) else {
                    self.violations
                        .push(format!("{}: delta before any snapshot", d.symbol));
                    return;
                };
                if b.awaiting || b.seq == 0 {
                    self.violations.push(format!(
                        "{}: delta {} while awaiting a snapshot",
                        d.symbol, d.seq
                    ));
                    return;
                }
                // PROTOCOL §9: every delta says the seq it follows; on
                // plain `book` that is always the seq before.
                if d.prev_seq != b.seq {
                    self.violations.push(format!(
                        "{}: delta {} has prev_seq {}, the client holds {}",
                        d.symbol, d.seq, d.prev_seq, b.seq
                    ));
                }
                if d.channel.is_empty() && d.seq != b.seq + 1 {
                    self.violations
                        .push(format!("{}: delta seq {} after {}", d.symbol, d.seq, b.seq));
                }
                if !d.channel.is_empty() && d.seq <= b.seq {
                    self.violations.push(format!(
                        "{}: {} delta seq {} not after {}",
                        d.symbol, d.channel, d.seq, b.seq
                    ));
                }
                if d.channel != b.channel {
                    self.violations.push(format!(
                        "{}: delta of channel {:?} on a book of {:?}",
                        d.symbol, d.channel, b.channel
                    ));
                }
                for u in &d.updates {
                    match Side::from_pb(u.side) {
                        Some(side) => {
                            b.book.apply(side, u.price, u.size);
                        }
                        None => self
                            .violations
                            .push(format!("{}: update without side", d.symbol)),
                    }
                }
                if b.book.checksum() != d.checksum {
                    self.violations
                        .push(format!("{}: checksum mismatch at {}", d.symbol, d.seq));
                }
                b.seq = d.seq;
                b.deltas += 1;
            }
            Body::Trade(t) => {
                let b = self.books.entry(t.symbol.clone()).or_default();
                if b.last_trade_seq != 0 && t.seq != b.last_trade_seq + 1 {
                    self.violations.push(format!(
                        "{}: trade seq {} after {}",
                        t.symbol, t.seq, b.last_trade_seq
                    ));
                }
                b.last_trade_seq = t.seq;
                b.trades += 1;
            }
            Body::Stale(s) => {
                if s.reason != "slow_consumer_trades"
                    && let Some(b) = self.books.get_mut(&s.symbol)
                {
                    b.awaiting = true;
                }
                // Trade sequences may jump after a Stale.
                if let Some(b) = self.books.get_mut(&s.symbol) {
                    b.last_trade_seq = 0;
                }
            }
            _ => {}
        }
    }

    /// Converts a JSON message (PROTOCOL §6) to the protobuf body it stands for.
    fn json_to_body(&mut self, text: &str) -> Option<Body> {
        let v: Value = sonic_rs::from_str(text).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64());
        let strs = |k: &str| -> Option<Vec<String>> {
            v.get(k)?
                .as_array()?
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        let pairs = |k: &str, pd: u32, sd: u32| -> Option<Vec<(i64, i64)>> {
            v.get(k)?
                .as_array()?
                .iter()
                .map(|p| {
                    let a = p.as_array()?;
                    Some((
                        parse_price(a.first()?.as_str()?, pd).ok()?,
                        parse_size(a.get(1)?.as_str()?, sd).ok()?,
                    ))
                })
                .collect()
        };
        let body = match v.get("type")?.as_str()? {
            "subscribed" => Body::Subscribed(pb::Subscribed {
                id: n("id")?,
                symbols: strs("symbols")?,
                channels: strs("channels")?,
                instruments: v
                    .get("instruments")?
                    .as_array()?
                    .iter()
                    .map(|i| {
                        Some(pb::Instrument {
                            symbol: i.get("symbol")?.as_str()?.to_string(),
                            price_decimals: i.get("price_decimals")?.as_i64()? as i32,
                            size_decimals: i.get("size_decimals")?.as_i64()? as i32,
                            epoch: i.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0),
                        })
                    })
                    .collect::<Option<_>>()?,
                resumed: strs("resumed")?,
            }),
            "unsubscribed" => Body::Unsubscribed(pb::Unsubscribed {
                id: n("id")?,
                symbols: strs("symbols")?,
                channels: strs("channels")?,
            }),
            "error" => Body::Error(pb::Error {
                id: n("id")?,
                code: s("code")?,
                message: s("message")?,
            }),
            "stale" => Body::Stale(pb::Stale {
                symbol: s("symbol")?,
                dropped: n("dropped")?,
                reason: s("reason")?,
            }),
            "authenticated" => Body::Authenticated(pb::Authenticated {
                id: n("id")?,
                sub: s("sub")?,
                expires_at_ns: n("expires_at_ns")?,
            }),
            "snapshot" => {
                let (pd, sd) = (n("price_decimals")? as u32, n("size_decimals")? as u32);
                let lv = |k| {
                    pairs(k, pd, sd).map(|l| {
                        l.into_iter()
                            .map(|(price, size)| pb::Level { price, size })
                            .collect()
                    })
                };
                Body::Snapshot(pb::BookSnapshot {
                    symbol: s("symbol")?,
                    seq: n("seq")?,
                    bids: lv("bids")?,
                    asks: lv("asks")?,
                    price_decimals: pd as i32,
                    size_decimals: sd as i32,
                    exchange_ts_ns: n("exchange_ts_ns")?,
                    ingest_ts_ns: n("ingest_ts_ns")?,
                    checksum: n("checksum")? as u32,
                    epoch: n("epoch").unwrap_or(0),
                    channel: plain_book(s("channel")?),
                })
            }
            "delta" => {
                let symbol = s("symbol")?;
                let (pd, sd) = *self.decimals.get(&symbol)?;
                let mut updates = Vec::new();
                for (k, side) in [("bids", pb::Side::Bid), ("asks", pb::Side::Ask)] {
                    for (price, size) in pairs(k, pd, sd)? {
                        updates.push(pb::LevelUpdate {
                            side: side as i32,
                            price,
                            size,
                        });
                    }
                }
                Body::Delta(pb::BookDelta {
                    symbol,
                    seq: n("seq")?,
                    updates,
                    exchange_ts_ns: n("exchange_ts_ns")?,
                    ingest_ts_ns: n("ingest_ts_ns")?,
                    checksum: n("checksum")? as u32,
                    // Always present in JSON (PROTOCOL §6, §9); "book" is
                    // protobuf's "".
                    channel: plain_book(s("channel")?),
                    prev_seq: n("prev_seq")?,
                })
            }
            "trade" => {
                let symbol = s("symbol")?;
                let (pd, sd) = *self.decimals.get(&symbol)?;
                Body::Trade(pb::Trade {
                    seq: n("seq")?,
                    price: parse_price(&s("price")?, pd).ok()?,
                    size: parse_size(&s("size")?, sd).ok()?,
                    aggressor: match s("aggressor")?.as_str() {
                        "bid" => pb::Side::Bid as i32,
                        "ask" => pb::Side::Ask as i32,
                        _ => 0,
                    },
                    exchange_ts_ns: n("exchange_ts_ns")?,
                    ingest_ts_ns: n("ingest_ts_ns")?,
                    trade_id: s("trade_id")?,
                    symbol,
                })
            }
            _ => return None,
        };
        // Decimals are needed to read the deltas that may follow in the same read.
        if let Body::Subscribed(s) = &body {
            for i in &s.instruments {
                self.decimals.insert(
                    i.symbol.clone(),
                    (i.price_decimals as u32, i.size_decimals as u32),
                );
            }
        }
        Some(body)
    }
}
