//! Server frames (RFC 6455 §5.2) and [`EncodedFrame`].
//!
//! A server never masks (RFC 6455 §5.1), so a frame's bytes are the same for
//! every recipient: the ingest thread builds each one once and workers share it
//! by reference.

use std::sync::Arc;

use prost::Message;

use super::pb;

/// WebSocket opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    pub fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Largest server frame header: 2 bytes + 8-byte extended length, no mask.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Length of the unmasked header for a payload of `payload_len` bytes.
pub fn server_header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Appends an unmasked frame header (RFC 6455 §5.2): FIN as given, RSV 0,
/// the opcode, and the 7/16/64-bit payload length in network byte order.
pub fn write_server_header(out: &mut Vec<u8>, fin: bool, opcode: Opcode, payload_len: usize) {
    let b0 = (if fin { 0x80 } else { 0 }) | opcode as u8;
    match payload_len {
        0..=125 => out.extend_from_slice(&[b0, payload_len as u8]),
        126..=65535 => {
            out.extend_from_slice(&[b0, 126]);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[b0, 127]);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
}

/// Appends a complete unmasked, unfragmented frame.
pub fn write_server_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    write_server_header(out, true, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// A complete WebSocket frame (header + payload), immutable and shared.
///
/// Built once per outgoing message on the ingest thread; cloning is a reference
/// count increment. A per-client copy or re-encode of market data is a bug.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedFrame(Arc<[u8]>);

impl EncodedFrame {
    /// Encodes `msg` once as a binary frame holding one protobuf `ServerMessage`.
    ///
    /// NB: encodes into a reused per-thread buffer and copies once into the
    /// shared allocation (`benches/ingest.rs`: one malloc/free pair fewer per
    /// message than encoding into a fresh `Vec` and converting it).
    pub fn binary(msg: &pb::ServerMessage) -> EncodedFrame {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            let len = msg.encoded_len();
            write_server_header(&mut buf, true, Opcode::Binary, len);
            msg.encode_raw(&mut *buf);
            let frame = EncodedFrame(Arc::from(&buf[..]));
            // Keep the scratch buffer from growing without bound after a huge snapshot.
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            frame
        })
    }

    /// A text frame holding `json` (already rendered, valid UTF-8).
    pub fn text(json: &str) -> EncodedFrame {
        let mut buf = Vec::with_capacity(server_header_len(json.len()) + json.len());
        write_server_frame(&mut buf, Opcode::Text, json.as_bytes());
        EncodedFrame(buf.into())
    }

    /// Wraps bytes that already form one complete frame.
    pub fn from_frame_bytes(bytes: Vec<u8>) -> EncodedFrame {
        EncodedFrame(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The payload, without the header.
    pub fn payload(&self) -> &[u8] {
        let b1 = self.0[1] & 0x7f;
        let start = match b1 {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &self.0[start..]
    }
}

impl std::fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedFrame({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_follow_rfc6455_5_2() {
        for (len, expect) in [(0usize, vec![0x82, 0]), (125, vec![0x82, 125])] {
            let mut out = Vec::new();
            write_server_header(&mut out, true, Opcode::Binary, len);
            assert_eq!(out, expect);
        }
        let mut out = Vec::new();
        write_server_header(&mut out, true, Opcode::Text, 126);
        assert_eq!(out, vec![0x81, 126, 0, 126]);
        let mut out = Vec::new();
        write_server_header(&mut out, true, Opcode::Binary, 65536);
        assert_eq!(out, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        for len in [0, 125, 126, 65535, 65536] {
            assert_eq!(server_header_len(len), {
                let mut v = Vec::new();
                write_server_header(&mut v, true, Opcode::Binary, len);
                v.len()
            });
        }
    }

    #[test]
    fn binary_frame_payload_decodes_back() {
        let msg = pb::ServerMessage {
            body: Some(pb::server_message::Body::Stale(pb::Stale {
                symbol: "BTC-USD".into(),
                dropped: 3,
                reason: "feed_gap".into(),
            })),
        };
        let frame = EncodedFrame::binary(&msg);
        assert_eq!(frame.as_bytes()[0], 0x82);
        assert_eq!(pb::ServerMessage::decode(frame.payload()).unwrap(), msg);
    }
}
