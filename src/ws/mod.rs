//! The sans-IO HTTP/WebSocket codec (RFC 6455): everything a worker needs to
//! turn the bytes of a client connection into requests and messages, and
//! control answers back into bytes.
//!
//! - [`http`]: HTTP/1.1 request parsing (incremental), response building.
//! - [`handshake`]: the opening handshake, [`Router`] for the client port
//!   (PROTOCOL §6), the client side of the handshake.
//! - [`frame`]: frame headers, masking, encoding, for both [`Role`]s.
//! - [`utf8`]: incremental, fail-fast UTF-8 validation.
//! - [`close`]: close codes and [`ProtocolError`], the one error type whose
//!   [`ProtocolError::close_code`] says how a connection ends (PROTOCOL §7).
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compression,
//!   bounded inflation.
//! - [`conn`]: [`Conn`], one connection's state machine.
//! - [`sse`]: Server-Sent Events (PROTOCOL §11): the `/sse` request, the
//!   stream's head and events, the resume token of `Last-Event-ID`.
//!
//! Run by whichever thread owns the connection (a worker, the echo server, a
//! load-generator task). This module never touches sockets or `mio`, never
//! reads the clock (`now` is always an argument), and never panics on peer
//! input. Outgoing market data does not pass through here: it is pre-encoded
//! once as [`crate::wire::EncodedFrame`]s and queued by the worker next to the
//! control bytes [`Conn::poll_transmit`] hands out.
//!
//! # Driving a connection
//!
//! One loop turn of a worker for one readable socket (`now` is the turn's
//! clock reading):
//!
//! ```
//! use std::time::Instant;
//! use tickwire::ws::{Conn, Event, Response, Route, Router};
//!
//! fn on_readable(conn: &mut Conn, router: &Router, now: Instant, bytes: &[u8], out: &mut Vec<u8>) {
//!     conn.handle_read(now, bytes);
//!     while let Some(event) = conn.poll_event(now) {
//!         match event {
//!             Event::Request(req) => match router.route(&req) {
//!                 Route::Upgrade(up) => conn.accept(&up), // 101; `up.encoding`: proto or json
//!                 Route::Get(_endpoint) => conn.respond(now, &Response::ok("text/plain", "ok")),
//!                 Route::Reject(resp) => conn.respond(now, &resp), // 400/403/404/405/426
//!                 Route::Sse(_open) => { /* answer ws::sse::response_head and stream */ }
//!             },
//!             Event::Text(_request) => { /* subscribe / unsubscribe */ }
//!             Event::Binary(_) | Event::Close { .. } | Event::ProtocolError(_) | Event::BadRequest(_) => {}
//!         }
//!         conn.poll_transmit(out); // 101, pongs, close frames: in order with the answers
//!     }
//!     if conn.poll_timeout().is_some_and(|deadline| now >= deadline) {
//!         conn.handle_timeout(now);
//!     }
//!     // Closed and `out` written: close the socket.
//! }
//! ```

pub mod close;
pub mod conn;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod lazy_buf;
pub mod sse;
pub mod utf8;

pub use crate::wire::frame::Opcode;
pub use close::{CloseCode, ProtocolError};
pub use conn::{BinaryPolicy, Config, Conn, Event, Sent, State};
pub use frame::{Frame, Role};
pub use handshake::{
    ClientHandshake, ClientHandshakeError, Encoding, Endpoint, Route, Router, Upgrade,
    deflate_in_response,
};
pub use http::{HttpError, Request, Response};
