//! Close codes ([`CloseCode`], defined in `wire`; RFC 6455 §7.4, PROTOCOL §7),
//! close-frame payloads, and
//! [`ProtocolError`]: the one error type for everything a peer can get wrong
//! on an open WebSocket, each variant mapped to the close code it earns.
//!
//! Pure values, used by whichever thread owns the connection. Never touches
//! sockets or the clock.

pub use crate::wire::close::CloseCode;

/// PROTOCOL §7: a server that fails a connection closes the TCP connection
/// itself once its close frame is written and the peer's close has arrived
/// or this long has passed.
pub const FAIL_CLOSE_TIMEOUT_MS: u32 = 1_000;

/// Largest close reason that fits a control frame: 125 bytes of payload
/// (RFC 6455 §5.5) minus the 2-byte code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Every way a peer can violate RFC 6455 (or tickwire's limits) on an open
/// connection. [`ProtocolError::close_code`] is the code the connection is
/// closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RFC 6455 §5.1: a server MUST close on an unmasked client frame.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// RFC 6455 §5.1: a client MUST close on a masked server frame.
    #[error("server frame is masked")]
    MaskedFrame,
    /// RFC 6455 §5.2: RSV1–3 must be 0 unless an extension defines them
    /// (RFC 7692 §6: RSV1 only on the first frame of a data message, and only
    /// once permessage-deflate was negotiated).
    #[error("reserved bits set ({0:#05b})")]
    ReservedBits(u8),
    /// RFC 6455 §5.2: opcodes 0x3–0x7 and 0xB–0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RFC 6455 §5.5: control frames carry at most 125 bytes.
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlFrameTooLong(u64),
    /// RFC 6455 §5.5: control frames MUST NOT be fragmented.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0.
    #[error("64-bit payload length has its top bit set")]
    LengthTopBitSet,
    /// RFC 6455 §5.4: a continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new text/binary frame while a fragmented message is
    /// still in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// RFC 6455 §8.1: text messages MUST be valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// PROTOCOL §7: a client message over the limit after reassembly.
    #[error("message of at least {len} bytes exceeds the {max}-byte limit")]
    MessageTooBig { len: u64, max: usize },
    /// PROTOCOL §7: tickwire requests are text; a binary message is refused.
    #[error("binary messages are not accepted on this endpoint")]
    BinaryNotAccepted,
    /// RFC 6455 §5.5.1: a close payload is empty or at least 2 bytes.
    #[error("close frame payload of 1 byte")]
    CloseTooShort,
    /// RFC 6455 §7.4: a close code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// RFC 6455 §5.5.1: the close reason MUST be UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// RFC 7692 §7.2.2: a compressed message that is not valid deflate data.
    #[error("invalid compressed data")]
    BadCompressedData,
}

impl ProtocolError {
    /// The close code this violation earns (PROTOCOL §7).
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidCloseReason
            | ProtocolError::BadCompressedData => CloseCode::INVALID_PAYLOAD,
            ProtocolError::MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::BinaryNotAccepted => CloseCode::UNSUPPORTED_DATA,
            ProtocolError::UnmaskedFrame
            | ProtocolError::MaskedFrame
            | ProtocolError::ReservedBits(_)
            | ProtocolError::ReservedOpcode(_)
            | ProtocolError::ControlFrameTooLong(_)
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::LengthTopBitSet
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::CloseTooShort
            | ProtocolError::InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame (ASCII, well under 123 bytes).
    pub fn close_reason(&self) -> &'static str {
        match self {
            ProtocolError::UnmaskedFrame => "unmasked frame",
            ProtocolError::MaskedFrame => "masked frame",
            ProtocolError::ReservedBits(_) => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::ControlFrameTooLong(_) => "control frame too long",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::LengthTopBitSet => "invalid length",
            ProtocolError::UnexpectedContinuation => "unexpected continuation",
            ProtocolError::ExpectedContinuation => "expected continuation",
            ProtocolError::InvalidUtf8 => "invalid utf-8",
            ProtocolError::MessageTooBig { .. } => "message too big",
            ProtocolError::BinaryNotAccepted => "binary not accepted",
            ProtocolError::CloseTooShort => "close payload of 1 byte",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::InvalidCloseReason => "invalid close reason",
            ProtocolError::BadCompressedData => "invalid compressed data",
        }
    }
}

/// Parses a close frame's (unmasked) payload (RFC 6455 §5.5.1): empty, or a
/// valid 2-byte code followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Appends a close payload: the code in network byte order, then `reason`
/// cut at a character boundary to fit [`MAX_CLOSE_REASON_BYTES`].
pub fn write_close_payload(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(truncate_reason(reason).as_bytes());
}

/// `reason`, cut at a character boundary to at most [`MAX_CLOSE_REASON_BYTES`].
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_maps_to_its_close_code() {
        use ProtocolError::*;
        let cases: [(ProtocolError, u16); 15] = [
            (UnmaskedFrame, 1002),
            (MaskedFrame, 1002),
            (ReservedBits(0b100), 1002),
            (ReservedOpcode(3), 1002),
            (ControlFrameTooLong(126), 1002),
            (FragmentedControlFrame, 1002),
            (LengthTopBitSet, 1002),
            (UnexpectedContinuation, 1002),
            (ExpectedContinuation, 1002),
            (InvalidUtf8, 1007),
            (
                MessageTooBig {
                    len: 65537,
                    max: 65536,
                },
                1009,
            ),
            (BinaryNotAccepted, 1003),
            (CloseTooShort, 1002),
            (InvalidCloseCode(1005), 1002),
            (InvalidCloseReason, 1007),
        ];
        for (err, code) in cases {
            assert_eq!(err.close_code(), CloseCode(code), "{err}");
            assert!(err.close_reason().len() <= MAX_CLOSE_REASON_BYTES);
        }
    }

    #[test]
    fn close_payloads_parse_or_fail_with_the_right_error() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtocolError::CloseTooShort)
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8]),
            Ok(Some((CloseCode::NORMAL, "")))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe9bye"),
            Ok(Some((CloseCode::GOING_AWAY, "bye")))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xed]),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xff]),
            Err(ProtocolError::InvalidCloseReason)
        );
    }

    #[test]
    fn close_payload_round_trips_and_long_reasons_are_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        write_close_payload(&mut out, CloseCode::SLOW_CONSUMER, "slow");
        assert_eq!(out, b"\x0f\xa1slow");
        assert_eq!(
            parse_close_payload(&out),
            Ok(Some((CloseCode::SLOW_CONSUMER, "slow")))
        );

        let long = "é".repeat(100); // 200 bytes, 2 per char
        let mut out = Vec::new();
        write_close_payload(&mut out, CloseCode::NORMAL, &long);
        assert_eq!(out.len(), 2 + 122);
        assert!(parse_close_payload(&out).is_ok());
    }
}
