//! [`Encoding`]: how a connection's server messages are framed (PROTOCOL §6),
//! and the subprotocol names that select it. One type for the whole engine:
//! the handshake chooses it (`ws::handshake`), the worker core renders for it
//! (`fanout::worker`).
//!
//! Pure values. Never touches sockets.

/// Subprotocol for protobuf binary frames (PROTOCOL §6).
pub const PROTOCOL_PROTO: &str = "tickwire.v1.proto";
/// Subprotocol for JSON text frames (PROTOCOL §6).
pub const PROTOCOL_JSON: &str = "tickwire.v1.json";

/// The encoding of server messages on a tickwire connection (PROTOCOL §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// One binary frame per `ServerMessage` (the default).
    #[default]
    Proto,
    /// One text frame per JSON object.
    Json,
}

impl Encoding {
    /// The subprotocol name that selects this encoding.
    pub fn protocol(self) -> &'static str {
        match self {
            Encoding::Proto => PROTOCOL_PROTO,
            Encoding::Json => PROTOCOL_JSON,
        }
    }

    /// The encoding a subprotocol name selects, if we speak it.
    pub(crate) fn from_protocol(p: &str) -> Option<Encoding> {
        match p {
            PROTOCOL_PROTO => Some(Encoding::Proto),
            PROTOCOL_JSON => Some(Encoding::Json),
            _ => None,
        }
    }

    /// The encoding an `?encoding=` query value selects, if valid.
    pub(crate) fn from_query(v: &str) -> Option<Encoding> {
        match v {
            "proto" => Some(Encoding::Proto),
            "json" => Some(Encoding::Json),
            _ => None,
        }
    }
}
