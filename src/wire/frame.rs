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

/// RSV1 of a frame's first byte: the message is compressed (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

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

/// Bytes reserved in front of a delta body: frame header (≤ 10) + oneof key (1)
/// + body length varint (≤ 10).
const DELTA_PREFIX_ROOM: usize = 21;

/// Appends `d` in protobuf wire format (proto3: default values omitted, fields
/// in number order, exactly as prost encodes it), computing each length once.
/// A `LevelUpdate` is at most 33 bytes, so its length is always one byte and is
/// patched in after its fields.
pub fn encode_delta_body(d: &pb::BookDelta, out: &mut Vec<u8>) {
    use prost::encoding::encode_varint;
    if !d.symbol.is_empty() {
        out.push(0x0A);
        encode_varint(d.symbol.len() as u64, out);
        out.extend_from_slice(d.symbol.as_bytes());
    }
    if d.seq != 0 {
        out.push(0x10);
        encode_varint(d.seq, out);
    }
    for u in &d.updates {
        out.push(0x1A);
        out.push(0);
        let start = out.len();
        if u.side != 0 {
            out.push(0x08);
            // int32 fields are sign-extended to 64 bits on the wire.
            encode_varint(u.side as i64 as u64, out);
        }
        if u.price != 0 {
            out.push(0x10);
            encode_varint(u.price as u64, out);
        }
        if u.size != 0 {
            out.push(0x18);
            encode_varint(u.size as u64, out);
        }
        let len = out.len() - start;
        debug_assert!(len < 128, "a LevelUpdate is at most 33 bytes");
        out[start - 1] = len as u8;
    }
    if d.exchange_ts_ns != 0 {
        out.push(0x20);
        encode_varint(d.exchange_ts_ns, out);
    }
    if d.ingest_ts_ns != 0 {
        out.push(0x28);
        encode_varint(d.ingest_ts_ns, out);
    }
    if d.checksum != 0 {
        out.push(0x30);
        encode_varint(u64::from(d.checksum), out);
    }
    if d.prev_seq != 0 {
        out.push(0x38);
        encode_varint(d.prev_seq, out);
    }
    if !d.channel.is_empty() {
        out.push(0x42);
        encode_varint(d.channel.len() as u64, out);
        out.extend_from_slice(d.channel.as_bytes());
    }
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
    /// message than encoding into a fresh `Vec` and converting it). Deltas, the
    /// hot message, take [`encode_delta_body`], which computes every length once
    /// where prost's generic encoder computes nested lengths twice.
    pub fn binary(msg: &pb::ServerMessage) -> EncodedFrame {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            let frame = match &msg.body {
                Some(pb::server_message::Body::Delta(d)) => {
                    // Room for the largest frame header and the oneof key + length.
                    buf.resize(DELTA_PREFIX_ROOM, 0);
                    encode_delta_body(d, &mut buf);
                    let body_len = buf.len() - DELTA_PREFIX_ROOM;
                    // ServerMessage field 2 (delta), wire type 2: key 0x12, length, body.
                    let varint_len = prost::encoding::encoded_len_varint(body_len as u64);
                    let payload_len = 1 + varint_len + body_len;
                    let header_len = server_header_len(payload_len);
                    let start = DELTA_PREFIX_ROOM - header_len - 1 - varint_len;
                    let mut prefix = [0u8; DELTA_PREFIX_ROOM];
                    let mut w = 0;
                    prefix[0] = 0x80 | Opcode::Binary as u8;
                    match header_len {
                        2 => prefix[1] = payload_len as u8,
                        4 => {
                            prefix[1] = 126;
                            prefix[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                        }
                        _ => {
                            prefix[1] = 127;
                            prefix[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
                        }
                    }
                    w += header_len;
                    prefix[w] = 0x12;
                    w += 1;
                    let mut v = body_len as u64;
                    while v >= 0x80 {
                        prefix[w] = (v as u8 & 0x7f) | 0x80;
                        v >>= 7;
                        w += 1;
                    }
                    prefix[w] = v as u8;
                    w += 1;
                    buf[start..DELTA_PREFIX_ROOM].copy_from_slice(&prefix[..w]);
                    EncodedFrame(Arc::from(&buf[start..]))
                }
                _ => {
                    let len = msg.encoded_len();
                    write_server_header(&mut buf, true, Opcode::Binary, len);
                    msg.encode_raw(&mut *buf);
                    EncodedFrame(Arc::from(&buf[..]))
                }
            };
            // Keep the scratch buffer from growing without bound after a huge snapshot.
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            frame
        })
    }

    /// Whether both are the same shared frame (not merely equal bytes).
    pub fn same(&self, other: &EncodedFrame) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A text frame holding `json` (already rendered, valid UTF-8).
    pub fn text(json: &str) -> EncodedFrame {
        let mut buf = Vec::with_capacity(server_header_len(json.len()) + json.len());
        write_server_frame(&mut buf, Opcode::Text, json.as_bytes());
        EncodedFrame(buf.into())
    }

    /// A frame of `opcode` whose payload is a message compressed with
    /// permessage-deflate (RFC 7692 §6: RSV1 set on the first frame).
    pub fn deflated(opcode: Opcode, compressed: &[u8]) -> EncodedFrame {
        let mut buf = Vec::with_capacity(server_header_len(compressed.len()) + compressed.len());
        write_server_frame(&mut buf, opcode, compressed);
        buf[0] |= RSV1;
        EncodedFrame(buf.into())
    }

    /// Bytes that go on the wire as they are, with no WebSocket header (an
    /// SSE event, PROTOCOL §11).
    pub fn raw(bytes: &[u8]) -> EncodedFrame {
        EncodedFrame(bytes.into())
    }

    /// The opcode of a WebSocket frame (`None` for [`EncodedFrame::raw`]
    /// bytes that do not start like one).
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.0.first()? & 0x0f)
    }

    /// Whether RSV1 is set: a compressed message (RFC 7692).
    pub fn is_deflated(&self) -> bool {
        self.0.first().is_some_and(|b| b & RSV1 != 0)
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

    fn generic_frame(msg: &pb::ServerMessage) -> Vec<u8> {
        let mut v = Vec::new();
        write_server_header(&mut v, true, Opcode::Binary, msg.encoded_len());
        msg.encode_raw(&mut v);
        v
    }

    proptest::proptest! {
        /// The hand-written delta encoder is byte-identical to prost's.
        #[test]
        fn delta_fast_path_equals_prost(
            symbol in "[A-Z.-]{0,32}",
            seq in proptest::prelude::any::<u64>(),
            updates in proptest::collection::vec(
                (-3i32..4, proptest::prelude::any::<i64>(), proptest::prelude::any::<i64>()), 0..200),
            ts in proptest::prelude::any::<(u64, u64, u32)>(),
            prev_seq in proptest::prelude::any::<u64>(),
            channel in "(book(\\.[0-9]{1,3})?(@[0-9]{1,4}ms)?)?",
        ) {
            let d = pb::BookDelta {
                symbol,
                seq,
                updates: updates.into_iter().map(|(side, price, size)| pb::LevelUpdate { side, price, size }).collect(),
                exchange_ts_ns: ts.0,
                ingest_ts_ns: ts.1,
                checksum: ts.2,
                prev_seq,
                channel,
            };
            let msg = pb::ServerMessage { body: Some(pb::server_message::Body::Delta(d)) };
            let frame = EncodedFrame::binary(&msg);
            proptest::prop_assert_eq!(frame.as_bytes(), &generic_frame(&msg)[..]);
            proptest::prop_assert_eq!(pb::ServerMessage::decode(frame.payload()).unwrap(), msg);
        }
    }

    #[test]
    fn delta_fast_path_handles_defaults_and_large_bodies() {
        for d in [
            pb::BookDelta::default(),
            pb::BookDelta {
                updates: vec![pb::LevelUpdate::default(); 3],
                ..Default::default()
            },
            pb::BookDelta {
                symbol: "BTC-USD".into(),
                updates: vec![
                    pb::LevelUpdate {
                        side: 1,
                        price: -1,
                        size: i64::MAX
                    };
                    5000
                ],
                ..Default::default()
            },
        ] {
            let msg = pb::ServerMessage {
                body: Some(pb::server_message::Body::Delta(d)),
            };
            assert_eq!(
                EncodedFrame::binary(&msg).as_bytes(),
                &generic_frame(&msg)[..]
            );
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
