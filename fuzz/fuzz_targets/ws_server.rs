//! `ws::Conn::server` (src/ws/conn.rs) fed a valid upgrade request and then
//! arbitrary bytes, in arbitrary reads, driven as a worker drives it:
//! `poll_event` until `None` (the request routed and accepted, each message
//! echoed), `poll_transmit` after each event, `handle_timeout` when due.
//!
//! Options byte: bit 0 the path (`/ws` or the echo path), bits 1–2 the
//! message limit (64 KiB, 16, 125, 1000 bytes), bit 3 a ping after each read,
//! bits 4–5 the time between reads (0, 100 ms, 1 s, 3 s), bit 6 offers the
//! JSON subprotocol, bit 7 has the server close (1001, as at shutdown) after
//! the first read that follows the upgrade.
//!
//! Invariants:
//! - every Text event is at most `max_message_bytes` (and a `String`, so
//!   UTF-8); Binary only on the echo path;
//! - the bytes written are a 101 and then a valid server stream, decoded in
//!   the client role: no masked frame, no fragment, control payloads ≤ 125,
//!   at most one close frame and nothing after it, its code valid on the wire
//!   (RFC 6455 §7.4) and its reason UTF-8;
//! - the data frames written are exactly the echoes the connection queued, in
//!   order; pings are ours, pongs answer the peer.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tickwire::ws::close::parse_close_payload;
use tickwire::ws::frame::decode_frame;
use tickwire::ws::{
    ClientHandshake, CloseCode, Config, Conn, Event, Opcode, Role, Route, Router, Sent, State,
};
use tickwire_fuzz::cut;

const ECHO_PATH: &str = "/echo";
const PING: &[u8] = b"hb";

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n) % 8;
    if rest.len() < n {
        return;
    }
    let (lengths, peer_bytes) = rest.split_at(n);

    let echo = options & 1 != 0;
    let max_message_bytes: u32 = match (options >> 1) & 3 {
        0 => 64 * 1024,
        1 => 16,
        2 => 125,
        _ => 1000,
    };
    let ping_each_read = options & 8 != 0;
    let step = Duration::from_millis(match (options >> 4) & 3 {
        0 => 0,
        1 => 100,
        2 => 1000,
        _ => 3000,
    });
    let server_closes = options & 128 != 0;
    let protocols: &[&str] = if options & 64 != 0 {
        &["tickwire.v1.json"]
    } else {
        &[]
    };

    let hs = ClientHandshake::new([7; 16], protocols);
    let mut stream = Vec::new();
    hs.write_request(&mut stream, "fuzz", if echo { ECHO_PATH } else { "/ws" });
    stream.extend_from_slice(peer_bytes);

    let config = Config {
        max_message_bytes,
        ..Config::default()
    };
    let router = Router::new().with_echo_path(ECHO_PATH);
    let mut now = Instant::now();
    let mut conn = Conn::server(now, config);
    let mut out = Vec::new();
    // The data frames and pings the connection agreed to queue, in order.
    let mut sent: Vec<(Opcode, Vec<u8>)> = Vec::new();
    let mut upgraded = false;

    for chunk in cut(&stream, lengths) {
        now += step;
        let was_upgraded = upgraded;
        conn.handle_read(now, chunk);
        while let Some(event) = conn.poll_event(now) {
            match event {
                Event::Request(req) => match router.route(&req) {
                    Route::Upgrade(up) => {
                        conn.accept(&up);
                        upgraded = true;
                    }
                    other => panic!("a valid upgrade was routed to {other:?}"),
                },
                Event::BadRequest(e) => panic!("a valid upgrade was refused: {e}"),
                Event::Text(text) => {
                    assert!(
                        text.len() <= max_message_bytes as usize,
                        "text of {} bytes, limit {max_message_bytes}",
                        text.len()
                    );
                    if conn.send_text(&text) == Sent::Queued {
                        sent.push((Opcode::Text, text.into_bytes()));
                    }
                }
                Event::Binary(bytes) => {
                    assert!(echo, "binary message delivered on /ws");
                    assert!(bytes.len() <= max_message_bytes as usize);
                    if conn.send_binary(&bytes) == Sent::Queued {
                        sent.push((Opcode::Binary, bytes));
                    }
                }
                Event::Close { code, .. } => {
                    assert!(code.is_none_or(|c| c.is_valid_on_wire()), "{code:?}");
                    assert!(
                        conn.is_closed(),
                        "closed by the peer but {:?}",
                        conn.state()
                    );
                }
                Event::ProtocolError(_) => {
                    assert!(matches!(conn.state(), State::Closing | State::Closed));
                }
            }
            conn.poll_transmit(&mut out);
        }
        if server_closes && was_upgraded {
            conn.close(now, CloseCode::GOING_AWAY, "shutting down");
        }
        if ping_each_read && conn.send_ping(PING) == Sent::Queued {
            sent.push((Opcode::Ping, PING.to_vec()));
        }
        if conn.poll_timeout().is_some_and(|deadline| now >= deadline) {
            conn.handle_timeout(now);
        }
        conn.poll_transmit(&mut out);
        assert_eq!(conn.transmit_len(), 0);
    }
    // Long after: a close handshake still open has timed out.
    now += Duration::from_secs(3600);
    conn.handle_timeout(now);
    conn.poll_transmit(&mut out);
    if conn.state() != State::Open {
        assert!(conn.is_closed(), "still {:?} an hour later", conn.state());
    }

    if !upgraded {
        // Only the handshake timeout ends a valid request before its 101.
        assert!(step > Duration::ZERO, "no 101 for a valid request");
        assert!(conn.is_closed());
        assert!(
            out.is_empty(),
            "wrote {} bytes without a request",
            out.len()
        );
        return;
    }
    let (_, len) = hs
        .read_response(&out)
        .expect("a valid 101")
        .expect("a complete 101");
    check_server_stream(&out[len..], &sent);
});

/// Decodes what the server wrote after its 101, as a client does.
fn check_server_stream(mut bytes: &[u8], sent: &[(Opcode, Vec<u8>)]) {
    let mut data = Vec::new();
    let mut closed = false;
    while !bytes.is_empty() {
        assert!(!closed, "{} bytes after the close frame", bytes.len());
        let (frame, used) = match decode_frame(Role::Client, bytes) {
            Ok(Some(f)) => f,
            Ok(None) => panic!("a cut frame at the end: {bytes:?}"),
            Err(e) => panic!("invalid server frame ({e}): {bytes:?}"),
        };
        bytes = &bytes[used..];
        assert!(frame.fin, "the server never fragments");
        match frame.opcode {
            Opcode::Close => {
                closed = true;
                let close = parse_close_payload(&frame.payload)
                    .unwrap_or_else(|e| panic!("bad close payload ({e}): {:?}", frame.payload));
                if let Some((code, _)) = close {
                    assert!(code.is_valid_on_wire(), "close code {code}");
                }
            }
            Opcode::Pong => {}
            Opcode::Text => {
                assert!(std::str::from_utf8(&frame.payload).is_ok());
                data.push((frame.opcode, frame.payload));
            }
            Opcode::Binary | Opcode::Ping => data.push((frame.opcode, frame.payload)),
            Opcode::Continuation => panic!("a continuation frame from the server"),
        }
    }
    assert_eq!(
        data.as_slice(),
        sent,
        "data frames on the wire differ from those queued"
    );
}
