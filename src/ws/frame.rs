//! RFC 6455 §5 framing for both roles: decoding frame headers, unmasking,
//! and encoding control frames and (for the load generator and tests) masked
//! client frames.
//!
//! One decoder serves both ends: [`Role::Server`] decodes client frames (which
//! MUST be masked), [`Role::Client`] decodes server frames (which MUST NOT be).
//! Server frames are encoded with [`crate::wire::frame`]'s header writer; this
//! module never has a second copy of it.
//!
//! Pure functions over byte slices, run by whichever thread owns the
//! connection. Never touches sockets or the clock, and never panics on peer
//! bytes: "need more bytes" is `Ok(None)`, a violation is a [`ProtocolError`].

use crate::wire::frame::{Opcode, write_server_frame, write_server_header};

use super::close::{CloseCode, ProtocolError, write_close_payload};

/// Which end of the connection this endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts connections: decodes masked client frames, sends unmasked frames.
    Server,
    /// Opens connections: decodes unmasked server frames, sends masked frames.
    Client,
}

/// Largest frame header: 2 bytes, 8-byte extended length, 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A decoded frame header (RFC 6455 §5.2), before any validation of what the
/// peer may send. See [`FrameHeader::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    /// The raw 4-bit opcode (reserved values included).
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header occupies on the wire (2 to 14).
    pub header_len: u8,
}

impl FrameHeader {
    /// Parses the header at the start of `buf` without judging it, except for
    /// what makes the frame impossible to delimit (a 64-bit length with its top
    /// bit set). `Ok(None)`: more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        let (payload_len, ext) = match b1 & 0x7f {
            126 => match rest {
                [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
                _ => return Ok(None),
            },
            127 => match rest.first_chunk::<8>() {
                Some(bytes) => {
                    let len = u64::from_be_bytes(*bytes);
                    // RFC 6455 §5.2: the most significant bit MUST be 0.
                    if len >> 63 != 0 {
                        return Err(ProtocolError::LengthTopBitSet);
                    }
                    (len, 8)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        let mask = if b1 & 0x80 != 0 {
            match rest[ext..].first_chunk::<4>() {
                Some(key) => Some(*key),
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            mask,
            payload_len,
            header_len: (2 + ext + if mask.is_some() { 4 } else { 0 }) as u8,
        }))
    }

    /// Checks what a peer of `role`'s endpoint may send, returning the opcode
    /// (no extension negotiated: every RSV bit must be clear).
    pub fn validate(&self, role: Role) -> Result<Opcode, ProtocolError> {
        self.validate_ext(role, false)
    }

    /// [`FrameHeader::validate`] on a connection where permessage-deflate
    /// was negotiated if `deflate`.
    pub fn validate_ext(&self, role: Role, deflate: bool) -> Result<Opcode, ProtocolError> {
        let opcode =
            Opcode::from_u8(self.opcode).ok_or(ProtocolError::ReservedOpcode(self.opcode))?;
        // RFC 6455 §5.2: RSV bits MUST be 0 unless an extension defines them.
        // RFC 7692 §6: permessage-deflate defines RSV1 ("compressed") on the
        // first frame of a text or binary message only; never on a control
        // or continuation frame.
        let allowed = if deflate && matches!(opcode, Opcode::Text | Opcode::Binary) {
            0b100
        } else {
            0
        };
        if self.rsv & !allowed != 0 {
            return Err(ProtocolError::ReservedBits(self.rsv));
        }
        match (role, self.mask.is_some()) {
            // RFC 6455 §5.1: a server MUST close on an unmasked frame.
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            // RFC 6455 §5.1: a client MUST close on a masked frame.
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if opcode.is_control() {
            // RFC 6455 §5.5: control frames are at most 125 bytes, never fragmented.
            if self.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong(self.payload_len));
            }
            if !self.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
        }
        Ok(opcode)
    }

    /// Header plus payload length, or `None` if it does not fit a `usize`.
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len)
            .ok()?
            .checked_add(usize::from(self.header_len))
    }
}

/// Parses and validates the header at the start of `buf` for an endpoint of
/// `role`. `Ok(None)`: more bytes are needed.
pub fn decode_header(
    role: Role,
    buf: &[u8],
) -> Result<Option<(FrameHeader, Opcode)>, ProtocolError> {
    match FrameHeader::parse(buf)? {
        Some(h) => Ok(Some((h, h.validate(role)?))),
        None => Ok(None),
    }
}

/// XORs `buf` with the masking key (RFC 6455 §5.3). `offset` is the position
/// of `buf[0]` within the frame payload, so a payload can be unmasked in
/// pieces as it arrives.
///
/// NB: eight bytes at a time through a `u64` (`benches/ws_codec.rs`,
/// `unmask_64k`: word-at-a-time vs [`apply_mask_bytewise`]). Safe code only:
/// `chunks_exact_mut` + `from_ne_bytes` compile to plain word loads.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let k = rotated_key(key, offset);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // chunks_exact_mut yields exactly 8-byte chunks, so the conversion cannot fail.
        let bytes: [u8; 8] = (&*chunk).try_into().expect("8-byte chunk");
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key phase is unchanged.
    for (b, m) in chunks.into_remainder().iter_mut().zip(k.iter().cycle()) {
        *b ^= m;
    }
}

/// Reference implementation of [`apply_mask`], one byte at a time (tests and
/// the benchmark baseline).
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

fn rotated_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(offset % 4);
    k
}

/// A whole frame with an unmasked payload: what [`decode_frame`] returns and
/// [`encode_frame`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

/// Decodes one complete frame at the start of `buf` for an endpoint of `role`,
/// returning it (unmasked) and the bytes it took. `Ok(None)`: more bytes are
/// needed. Frame-level rules only: message rules (fragment order, UTF-8, size
/// limit) are [`super::conn::Conn`]'s.
pub fn decode_frame(role: Role, buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some((h, opcode)) = decode_header(role, buf)? else {
        return Ok(None);
    };
    let Some(total) = h.frame_len().filter(|&t| t <= buf.len()) else {
        return Ok(None);
    };
    let mut payload = buf[usize::from(h.header_len)..total].to_vec();
    if let Some(key) = h.mask {
        apply_mask(&mut payload, key, 0);
    }
    Ok(Some((
        Frame {
            fin: h.fin,
            opcode,
            payload,
        },
        total,
    )))
}

/// Appends `frame` as an endpoint of `role` sends it: unmasked for a server,
/// masked with `mask_key` for a client (RFC 6455 §5.1).
pub fn encode_frame(role: Role, out: &mut Vec<u8>, frame: &Frame, mask_key: [u8; 4]) {
    match role {
        Role::Server => {
            write_server_header(out, frame.fin, frame.opcode, frame.payload.len());
            out.extend_from_slice(&frame.payload);
        }
        Role::Client => write_client_frame(out, frame.fin, frame.opcode, &frame.payload, mask_key),
    }
}

/// Appends a masked client frame (RFC 6455 §5.2/§5.3). The caller supplies the
/// key; RFC 6455 §10.3 wants it unpredictable.
pub fn write_client_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    key: [u8; 4],
) {
    let start = out.len();
    // The server header is the client header without the MASK bit and key.
    write_server_header(out, fin, opcode, payload.len());
    out[start + 1] |= 0x80;
    out.extend_from_slice(&key);
    let body = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[body..], key, 0);
}

/// Appends a complete unfragmented frame as `role` sends it (`mask_key` is
/// used only by a client).
pub fn write_frame(
    role: Role,
    out: &mut Vec<u8>,
    opcode: Opcode,
    payload: &[u8],
    mask_key: [u8; 4],
) {
    match role {
        Role::Server => write_server_frame(out, opcode, payload),
        Role::Client => write_client_frame(out, true, opcode, payload, mask_key),
    }
}

/// Appends a close frame with `code` and `reason` (cut to fit 125 bytes).
pub fn write_close_frame(
    role: Role,
    out: &mut Vec<u8>,
    code: CloseCode,
    reason: &str,
    mask_key: [u8; 4],
) {
    let mut payload = Vec::with_capacity(MAX_CONTROL_PAYLOAD);
    write_close_payload(&mut payload, code, reason);
    write_frame(role, out, Opcode::Close, &payload, mask_key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Frame {
        Frame {
            fin,
            opcode,
            payload: payload.to_vec(),
        }
    }

    fn decoded(role: Role, bytes: &[u8]) -> Frame {
        let (f, used) = decode_frame(role, bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        f
    }

    // RFC 6455 §5.7 examples.

    #[test]
    fn rfc_5_7_single_frame_unmasked_hello() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decoded(Role::Client, &bytes),
            frame(true, Opcode::Text, b"Hello")
        );
        let mut out = Vec::new();
        write_server_frame(&mut out, Opcode::Text, b"Hello");
        assert_eq!(out, bytes);
        // A server refuses it: RFC 6455 §5.1.
        assert_eq!(
            decode_frame(Role::Server, &bytes),
            Err(ProtocolError::UnmaskedFrame)
        );
    }

    #[test]
    fn rfc_5_7_single_frame_masked_hello() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decoded(Role::Server, &bytes),
            frame(true, Opcode::Text, b"Hello")
        );
        let mut out = Vec::new();
        write_client_frame(&mut out, true, Opcode::Text, b"Hello", KEY);
        assert_eq!(out, bytes);
        // A client refuses it: RFC 6455 §5.1.
        assert_eq!(
            decode_frame(Role::Client, &bytes),
            Err(ProtocolError::MaskedFrame)
        );
    }

    #[test]
    fn rfc_5_7_fragmented_unmasked_text() {
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let second = [0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(
            decoded(Role::Client, &first),
            frame(false, Opcode::Text, b"Hel")
        );
        assert_eq!(
            decoded(Role::Client, &second),
            frame(true, Opcode::Continuation, b"lo")
        );
    }

    #[test]
    fn rfc_5_7_ping_and_masked_pong() {
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decoded(Role::Client, &ping),
            frame(true, Opcode::Ping, b"Hello")
        );
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decoded(Role::Server, &pong),
            frame(true, Opcode::Pong, b"Hello")
        );
        let mut out = Vec::new();
        write_frame(Role::Client, &mut out, Opcode::Pong, b"Hello", KEY);
        assert_eq!(out, pong);
    }

    #[test]
    fn rfc_5_7_256_bytes_and_64k_binary_use_16_and_64_bit_lengths() {
        let payload = vec![0xabu8; 256];
        let mut out = Vec::new();
        write_server_frame(&mut out, Opcode::Binary, &payload);
        assert_eq!(out[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(
            decoded(Role::Client, &out),
            frame(true, Opcode::Binary, &payload)
        );

        let payload = vec![0xcdu8; 65536];
        let mut out = Vec::new();
        write_server_frame(&mut out, Opcode::Binary, &payload);
        assert_eq!(out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
        assert_eq!(
            decoded(Role::Client, &out),
            frame(true, Opcode::Binary, &payload)
        );

        let mut out = Vec::new();
        write_client_frame(&mut out, true, Opcode::Binary, &payload, KEY);
        assert_eq!(
            out[..14],
            [
                0x82, 0xff, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00, 0x37, 0xfa, 0x21, 0x3d
            ]
        );
        assert_eq!(
            decoded(Role::Server, &out),
            frame(true, Opcode::Binary, &payload)
        );
    }

    #[test]
    fn header_violations_each_have_their_error() {
        let m = |b0: u8, len: u8| vec![b0, 0x80 | len, 1, 2, 3, 4];
        assert_eq!(
            decode_header(Role::Server, &m(0xc1, 0)),
            Err(ProtocolError::ReservedBits(0b100))
        );
        assert_eq!(
            decode_header(Role::Server, &m(0x91, 0)),
            Err(ProtocolError::ReservedBits(0b001))
        );
        assert_eq!(
            decode_header(Role::Server, &m(0x83, 0)),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            decode_header(Role::Server, &m(0x8b, 0)),
            Err(ProtocolError::ReservedOpcode(0xb))
        );
        assert_eq!(
            decode_header(Role::Server, &m(0x09, 0)),
            Err(ProtocolError::FragmentedControlFrame)
        );
        let mut long_ping = vec![0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4];
        assert_eq!(
            decode_header(Role::Server, &long_ping),
            Err(ProtocolError::ControlFrameTooLong(126))
        );
        long_ping[1] = 0x80 | 125;
        assert!(decode_header(Role::Server, &long_ping).unwrap().is_some());
        let mut top = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            FrameHeader::parse(&top),
            Err(ProtocolError::LengthTopBitSet)
        );
        top[2] = 0x7f;
        assert_eq!(FrameHeader::parse(&top), Ok(None), "mask key still missing");
        assert_eq!(
            decode_header(Role::Server, &[0x81, 0x05]),
            Err(ProtocolError::UnmaskedFrame)
        );
        assert_eq!(
            decode_header(Role::Client, &m(0x81, 0)),
            Err(ProtocolError::MaskedFrame)
        );
    }

    #[test]
    fn header_lengths_and_frame_len() {
        let (h, _) = decode_header(Role::Client, &[0x82, 126, 0x01, 0x00])
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.payload_len, h.header_len, h.frame_len()),
            (256, 4, Some(260))
        );
        let mut b = vec![0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0];
        b.extend_from_slice(&KEY);
        let (h, _) = decode_header(Role::Server, &b).unwrap().unwrap();
        assert_eq!(
            (h.payload_len, h.header_len, h.mask),
            (65536, 14, Some(KEY))
        );
    }

    #[test]
    fn word_unmask_matches_bytewise_at_every_alignment_offset_and_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..8 {
            for len in (0..=40).chain([63, 64, 65, 255, 292]) {
                if start + len > data.len() {
                    continue;
                }
                for offset in 0..8 {
                    let mut a = data.clone();
                    let mut b = data.clone();
                    apply_mask(&mut a[start..start + len], KEY, offset);
                    apply_mask_bytewise(&mut b[start..start + len], KEY, offset);
                    assert_eq!(a, b, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, KEY, 0);
        for cut in 0..data.len() {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, KEY, 0);
            apply_mask(b, KEY, cut);
            assert_eq!(pieces, whole, "cut {cut}");
        }
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let data = prop_oneof![
            (
                any::<bool>(),
                0u8..3,
                proptest::collection::vec(any::<u8>(), 0..300)
            ),
            (
                any::<bool>(),
                0u8..3,
                proptest::collection::vec(any::<u8>(), 65530..65542)
            ),
        ]
        .prop_map(|(fin, op, payload)| Frame {
            fin,
            opcode: [Opcode::Continuation, Opcode::Text, Opcode::Binary][op as usize],
            payload,
        });
        let control =
            (0u8..3, proptest::collection::vec(any::<u8>(), 0..=125)).prop_map(|(op, payload)| {
                Frame {
                    fin: true,
                    opcode: [Opcode::Close, Opcode::Ping, Opcode::Pong][op as usize],
                    payload,
                }
            });
        prop_oneof![data, control]
    }

    fn any_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Server), Just(Role::Client)]
    }

    /// The role that decodes what `role` sends.
    fn peer(role: Role) -> Role {
        match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn decode_of_encode_is_identity(f in any_frame(), role in any_role(), key in any::<[u8; 4]>()) {
            let mut out = Vec::new();
            encode_frame(role, &mut out, &f, key);
            let (back, used) = decode_frame(peer(role), &out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(back, f);
        }

        #[test]
        fn every_strict_prefix_needs_more_bytes(f in any_frame(), role in any_role(), key in any::<[u8; 4]>()) {
            let mut out = Vec::new();
            encode_frame(role, &mut out, &f, key);
            let step = if out.len() > 400 { 97 } else { 1 };
            for end in (0..out.len()).step_by(step).chain([out.len() - 1]) {
                prop_assert_eq!(decode_frame(peer(role), &out[..end]), Ok(None), "prefix {}", end);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), role in any_role()) {
            let _ = decode_frame(role, &bytes);
            let _ = FrameHeader::parse(&bytes);
        }
    }
}
