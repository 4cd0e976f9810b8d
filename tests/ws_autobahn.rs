//! Loopback checks of the conformance echo server (`net::echo`) with the
//! client role of the `ws` codec: the handshake answers, echo of text and
//! binary, fragmentation with an interleaved ping, the close handshake, and
//! survival of garbage. A few Autobahn cases in miniature; the full suite runs
//! in `.ci/autobahn.sh`. Port 0, every wait bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickwire::ws::frame::write_client_frame;
use tickwire::ws::{ClientHandshake, CloseCode, Config, Conn, Event, Opcode, State};

const WAIT: Duration = Duration::from_secs(5);

struct Server {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || tickwire::net::echo::run(listener, "/echo", flag));
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The loop polls with a 100 ms timeout, so this join is bounded.
            let result = t.join().expect("echo thread panicked");
            if !std::thread::panicking() {
                result.expect("echo server failed");
            }
        }
    }
}

/// Reads until EOF (or the read timeout): the whole answer to a plain request.
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// An open client connection: handshake done.
struct Client {
    stream: TcpStream,
    conn: Conn,
    buf: Vec<u8>,
}

impl Client {
    fn open(server: &Server) -> Client {
        let mut stream = server.connect();
        let hs = ClientHandshake::new(*b"0123456789abcdef", &[]);
        let mut req = Vec::new();
        hs.write_request(&mut req, &server.addr.to_string(), "/echo");
        stream.write_all(&req).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        let (protocol, head_len) = loop {
            assert!(Instant::now() < deadline, "no 101");
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during handshake");
            got.extend_from_slice(&chunk[..n]);
            if let Some(done) = hs.read_response(&got).unwrap() {
                break done;
            }
        };
        assert_eq!(protocol, None);
        let mut conn = Conn::client(Config::default(), 0x5eed);
        conn.handle_read(Instant::now(), &got[head_len..]);
        Client {
            stream,
            conn,
            buf: Vec::new(),
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        self.conn.poll_transmit(&mut out);
        self.stream.write_all(&out).unwrap();
    }

    /// The next event, reading from the socket as needed (bounded wait).
    /// `None` when the server closed the TCP connection.
    fn next_event(&mut self) -> Option<Event> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ev) = self.conn.poll_event(Instant::now()) {
                self.flush();
                return Some(ev);
            }
            assert!(Instant::now() < deadline, "no event in time");
            self.buf.resize(64 * 1024, 0);
            let n = self.stream.read(&mut self.buf).expect("read timed out");
            if n == 0 {
                return None;
            }
            self.conn.handle_read(Instant::now(), &self.buf[..n]);
            self.flush();
        }
    }
}

fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(&mut out, fin, opcode, payload, [1, 2, 3, 4]);
    out
}

#[test]
fn echoes_text_and_binary_of_every_length_class() {
    let server = Server::start();
    let mut c = Client::open(&server);
    for len in [0usize, 1, 125, 126, 65535, 65536] {
        let text = "x".repeat(len);
        c.conn.send_text(&text);
        c.flush();
        assert_eq!(c.next_event(), Some(Event::Text(text)), "text {len}");
        let bin = vec![0xa5u8; len];
        c.conn.send_binary(&bin);
        c.flush();
        assert_eq!(c.next_event(), Some(Event::Binary(bin)), "binary {len}");
    }
}

#[test]
fn fragmented_message_with_ping_in_between_and_frames_cut_in_pieces() {
    let server = Server::start();
    let mut c = Client::open(&server);
    let mut bytes = masked(Opcode::Text, false, "Hello, ".as_bytes());
    bytes.extend(masked(Opcode::Ping, true, b"are you there"));
    bytes.extend(masked(Opcode::Continuation, true, "wörld".as_bytes()));
    // Autobahn "chopped" style: a few bytes per write.
    for piece in bytes.chunks(3) {
        c.write_raw(piece);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The pong is handled inside the client codec; only the message surfaces.
    assert_eq!(c.next_event(), Some(Event::Text("Hello, wörld".into())));
}

#[test]
fn close_handshake_is_echoed_and_the_server_closes_tcp() {
    let server = Server::start();
    let mut c = Client::open(&server);
    c.conn.close(Instant::now(), CloseCode::NORMAL, "bye");
    c.flush();
    assert_eq!(
        c.next_event(),
        Some(Event::Close {
            code: Some(CloseCode::NORMAL),
            reason: String::new()
        })
    );
    assert_eq!(c.conn.state(), State::Closed);
    // RFC 6455 §7.1.1: the server closes the TCP connection first.
    assert_eq!(c.next_event(), None);
}

#[test]
fn protocol_errors_close_with_their_code() {
    let server = Server::start();
    for (bytes, code) in [
        (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked
        (masked(Opcode::Text, true, b"\xff"), 1007),
        (masked(Opcode::Continuation, true, b"x"), 1002),
        (masked(Opcode::Binary, true, &vec![0; 65537]), 1009),
    ] {
        let mut c = Client::open(&server);
        c.write_raw(&bytes);
        assert_eq!(
            c.next_event(),
            Some(Event::Close {
                code: Some(CloseCode(code)),
                reason: match code {
                    1002 if bytes[1] & 0x80 == 0 => "unmasked frame".into(),
                    1002 => "unexpected continuation".into(),
                    1007 => "invalid utf-8".into(),
                    _ => "message too big".into(),
                }
            })
        );
        // Our codec answered the close; the server then drops the connection.
        assert_eq!(c.next_event(), None);
    }
}

#[test]
fn http_answers_on_the_echo_port() {
    let server = Server::start();
    let ask = |raw: &[u8]| {
        let mut s = server.connect();
        s.write_all(raw).unwrap();
        String::from_utf8_lossy(&read_to_end(&mut s)).into_owned()
    };
    assert!(ask(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(ask(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
    let plain = ask(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    assert!(plain.contains("Sec-WebSocket-Version: 13\r\n"));
    assert!(ask(b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 405 "));
    assert!(ask(b"\x16\x03\x01\x00\xa5\x01\x00").starts_with("HTTP/1.1 400 "));
    let mut big = b"GET /echo HTTP/1.1\r\nX: ".to_vec();
    big.resize(9000, b'a');
    assert!(ask(&big).starts_with("HTTP/1.1 431 "));
}

#[test]
fn garbage_and_abrupt_disconnects_do_not_disturb_other_clients() {
    let server = Server::start();
    let mut steady = Client::open(&server);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..20 {
        let mut c = Client::open(&server);
        let mut junk = vec![0u8; 200 + round * 37];
        for b in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let _ = c.stream.write_all(&junk);
        drop(c); // Abrupt close, maybe with unread data on either side.
        steady.conn.send_text(&format!("still here {round}"));
        steady.flush();
        assert_eq!(
            steady.next_event(),
            Some(Event::Text(format!("still here {round}")))
        );
    }
}
