//! [`CloseCode`]: the WebSocket close status code (RFC 6455 §7.4, PROTOCOL §7),
//! with the codes tickwire uses as named constants. Low in the module map so
//! that the worker core (`fanout`) and the codec (`ws`, which re-exports it)
//! speak of closes in one type.
//!
//! Pure values. Never touches sockets or the clock.

use std::fmt;

/// A WebSocket close status code (RFC 6455 §7.4).
///
/// A newtype rather than an enum: application codes (4000–4999) are open-ended
/// and a peer may send any `u16`; [`CloseCode::is_valid_on_wire`] says whether
/// a received one is acceptable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: going away (server shutting down).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: unsupported data (PROTOCOL §7: a binary frame from a client).
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (RFC 6455 §7.4.1: for APIs, never
    /// sent in a close frame).
    pub const NO_STATUS_RECEIVED: CloseCode = CloseCode(1005);
    /// 1006: closed without a close frame (RFC 6455 §7.4.1: for APIs, never
    /// sent in a close frame).
    pub const ABNORMAL_CLOSURE: CloseCode = CloseCode(1006);
    /// 1007: invalid frame payload data (invalid UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: message too big (after reassembly).
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: internal error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 4001: slow consumer (PROTOCOL §7).
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4001);
    /// 4002: rate limited (PROTOCOL §7).
    pub const RATE_LIMITED: CloseCode = CloseCode(4002);
    /// 4003: heartbeat timeout (PROTOCOL §7).
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4003);
    /// 4004: the token expired without a refresh (PROTOCOL §8).
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4004);
    /// 4005: unauthorized, or forbidden by the token (PROTOCOL §8).
    pub const UNAUTHORIZED: CloseCode = CloseCode(4005);
    /// 4006: too many connections for this user (PROTOCOL §8).
    pub const USER_CONNECTIONS: CloseCode = CloseCode(4006);

    /// Whether the server sending this code fails the connection (PROTOCOL §7:
    /// any 1002, 1003, 1007, 1009 or 4xxx, and the other errors 1008, 1011):
    /// it then waits at most [`crate::ws::close::FAIL_CLOSE_TIMEOUT_MS`] for the
    /// peer's close.
    pub fn fails_connection(self) -> bool {
        !matches!(self.0, 1000 | 1001)
    }

    /// Whether a peer may put this code in a close frame.
    ///
    /// RFC 6455 §7.4.1/§7.4.2: 0–999 are unused; 1004, 1005, 1006 and 1015 are
    /// reserved and MUST NOT be sent; 1000–2999 are for the protocol and its
    /// extensions (of those, IANA has registered 1000–1003 and 1007–1014);
    /// 3000–4999 are for libraries and applications; 5000+ are undefined.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_valid_on_the_wire_follow_rfc6455_7_4() {
        // The lists Autobahn 7.7.x (valid) and 7.9.x (invalid) use.
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
        // Registered by IANA after RFC 6455: service restart, try again later, bad gateway.
        for code in [1012, 1013, 1014] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }
}
