//! Inputs the fuzz targets (fuzz/, README "Fuzzing") found, minimized, each
//! fed through the same API as the target that found it, with the answer
//! the engine must give. One test per finding, named after the target.

use std::time::Instant;

use tickwire::fanout::request::{ErrorCode, parse_request as parse_client_request};

use tickwire::ws::frame::{decode_frame, write_client_frame};
use tickwire::ws::http::{RequestParser, parse_request};
use tickwire::ws::{
    ClientHandshake, CloseCode, Config, Conn, Event, HttpError, Opcode, Role, Route, Router, State,
};

/// Pushes `reads` one after the other until the parser answers.
fn push_reads(max_head_bytes: usize, reads: &[&[u8]]) -> Result<bool, HttpError> {
    let mut parser = RequestParser::new(max_head_bytes);
    for read in reads {
        if parser.push(read)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// http_request: `"\0  \n"` was `Malformed("method")` in one read but
/// `Malformed("request line")` when the NUL came alone: a request line
/// holding a byte no request line may hold is now the same 400 either way.
#[test]
fn http_request_bad_byte_is_the_same_error_whatever_the_split() {
    let whole = parse_request(b"\0  \n", 1024);
    assert_eq!(whole, Err(HttpError::Malformed("request line")));
    assert_eq!(
        push_reads(1024, &[b"\0", b"  \n"]),
        Err(HttpError::Malformed("request line"))
    );
}

/// http_request: a request line longer than the head limit was 431 when a
/// read ended before its newline, but 400 when its (bad) end came in the
/// same read: only the bytes within the limit are judged now, so it is 431.
#[test]
fn http_request_overlong_request_line_is_431_whatever_the_split() {
    let line = b"GET /aaaaaaaaaaaa HTTP/1.2\r\n\r\n";
    assert_eq!(parse_request(line, 16), Err(HttpError::HeadTooLarge(16)));
    assert_eq!(
        push_reads(16, &[&line[..20], &line[20..]]),
        Err(HttpError::HeadTooLarge(16))
    );
}

/// ws_server: the server closing (1001, as at shutdown) while a client's
/// text frame was half read went on reassembling the rest of that frame
/// into a message it had already dropped, and tripped the debug assertion
/// "finished a message that never started" at the frame's end. The rest of
/// the frame is now skipped: no event, and nothing but the close frame sent.
#[test]
fn ws_server_close_in_the_middle_of_a_frame_skips_its_rest() {
    let now = Instant::now();
    let hs = ClientHandshake::new([7; 16], &[]);
    let mut request = Vec::new();
    hs.write_request(&mut request, "fuzz", "/echo");
    let mut conn = Conn::server(now, Config::default());
    conn.handle_read(now, &request);
    let Some(Event::Request(req)) = conn.poll_event(now) else {
        panic!("the upgrade request");
    };
    let Route::Upgrade(up) = Router::new().with_echo_path("/echo").route(&req) else {
        panic!("an upgrade");
    };
    conn.accept(&up);
    let mut out = Vec::new();
    conn.poll_transmit(&mut out);
    let (_, head_len) = hs.read_response(&out).unwrap().unwrap();

    let mut frame = Vec::new();
    write_client_frame(&mut frame, true, Opcode::Text, &[b'x'; 15], [0x8f; 4]);
    conn.handle_read(now, &frame[..8]);
    assert_eq!(conn.poll_event(now), None);
    conn.close(now, CloseCode::GOING_AWAY, "shutting down");
    conn.handle_read(now, &frame[8..]);
    assert_eq!(
        conn.poll_event(now),
        None,
        "no message from a frame cut by our close"
    );
    assert_eq!(conn.state(), State::Closing);

    conn.poll_transmit(&mut out);
    let (close, used) = decode_frame(Role::Client, &out[head_len..])
        .unwrap()
        .unwrap();
    assert_eq!(close.opcode, Opcode::Close);
    assert_eq!(&close.payload[..2], &1001u16.to_be_bytes());
    assert_eq!(head_len + used, out.len(), "nothing after the close frame");
}

/// client_request: 40 DEL characters in an unknown channel name (the op and
/// a symbol alike) were echoed as 40 `\u{7f}` escapes, a 253-byte error
/// message; the echo is now cut at 40 characters once escaped.
#[test]
fn client_request_escaped_echo_is_short() {
    let del = "\u{7f}".repeat(40);
    for text in [
        format!(r#"{{"op":"subscribe","symbols":["A"],"channels":["b{del}"]}}"#),
        format!(r#"{{"op":"{del}","symbols":["A"]}}"#),
        format!(r#"{{"op":"subscribe","symbols":["{del}"]}}"#),
    ] {
        let e = parse_client_request(&text).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message.len() < 100,
            "{} bytes: {}",
            e.message.len(),
            e.message
        );
    }
}

/// backplane: an origin's `feed_gap` for a mirrored book that was stale for
/// `feed_down` (its origin had gone silent, so it had no owner) left it
/// stale for the gap with no owner, breaking the market's invariant "no
/// owner exactly when stale for feed_down" (a debug assertion, so a panic).
/// An origin reporting a gap speaks for the book: it owns it again.
#[test]
fn backplane_feed_gap_after_feed_down_restores_the_owner() {
    use tickwire::book::market::{FeedStale, Market, origin_feed};
    use tickwire::cluster::header::OriginTag;
    let mut m = Market::new();
    let origin = origin_feed(OriginTag::of("o").0);
    let (id, _) = m
        .mirror_listing(origin, "BTC-USD", 3, (2, 0), 7)
        .expect("listed");
    let mut out = Vec::new();
    m.handle_feed_down(origin, &mut out);
    assert_eq!(m.info(id).unwrap().stale, Some(FeedStale::FeedDown));
    assert_eq!(m.info(id).unwrap().owner, None);
    m.mirror_stale(origin, "BTC-USD", FeedStale::FeedGap, &mut out)
        .expect("the origin's own book");
    let info = m.info(id).unwrap();
    assert_eq!(info.stale, Some(FeedStale::FeedGap));
    assert_eq!(info.owner, Some(origin));
}
