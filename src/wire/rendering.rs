//! [`Rendering`]: the bytes a connection takes for each server message,
//! chosen when it opens: the encoding (PROTOCOL §6), whether
//! permessage-deflate was negotiated (§12), or a Server-Sent Events stream
//! (§11). Every market-data message is rendered at most once per rendering
//! that some connection uses (`fanout::render`), and shared.
//!
//! Pure values. Never touches sockets.

use super::Encoding;

/// How one connection's server messages go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[repr(u8)]
pub enum Rendering {
    /// One binary WebSocket frame per protobuf `ServerMessage`.
    #[default]
    Proto = 0,
    /// One text WebSocket frame per JSON object.
    Json = 1,
    /// `Proto`, compressed (RSV1) when at least the threshold long.
    ProtoDeflate = 2,
    /// `Json`, compressed (RSV1) when at least the threshold long.
    JsonDeflate = 3,
    /// One Server-Sent Event per JSON object (`event:`, `data:`); the
    /// connection adds its own `id:` line to book and trade events.
    Sse = 4,
}

impl Rendering {
    /// Every rendering, in index order.
    pub const ALL: [Rendering; 5] = [
        Rendering::Proto,
        Rendering::Json,
        Rendering::ProtoDeflate,
        Rendering::JsonDeflate,
        Rendering::Sse,
    ];
    pub const COUNT: usize = Rendering::ALL.len();

    /// The rendering of a WebSocket connection.
    pub fn websocket(encoding: Encoding, deflate: bool) -> Rendering {
        match (encoding, deflate) {
            (Encoding::Proto, false) => Rendering::Proto,
            (Encoding::Json, false) => Rendering::Json,
            (Encoding::Proto, true) => Rendering::ProtoDeflate,
            (Encoding::Json, true) => Rendering::JsonDeflate,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The encoding of its messages: JSON for SSE.
    pub fn encoding(self) -> Encoding {
        match self {
            Rendering::Proto | Rendering::ProtoDeflate => Encoding::Proto,
            Rendering::Json | Rendering::JsonDeflate | Rendering::Sse => Encoding::Json,
        }
    }

    /// The rendering its deflated variant compresses (`None`: not deflated).
    pub fn deflates(self) -> Option<Rendering> {
        match self {
            Rendering::ProtoDeflate => Some(Rendering::Proto),
            Rendering::JsonDeflate => Some(Rendering::Json),
            _ => None,
        }
    }

    /// The Prometheus label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rendering::Proto => "proto",
            Rendering::Json => "json",
            Rendering::ProtoDeflate => "proto_deflate",
            Rendering::JsonDeflate => "json_deflate",
            Rendering::Sse => "sse",
        }
    }
}

impl From<Encoding> for Rendering {
    /// The uncompressed WebSocket rendering of an encoding.
    fn from(e: Encoding) -> Rendering {
        Rendering::websocket(e, false)
    }
}

/// A set of renderings (a bit per [`Rendering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Renderings(u8);

impl Renderings {
    pub const NONE: Renderings = Renderings(0);

    pub fn of(r: Rendering) -> Renderings {
        Renderings(1 << r.index())
    }

    pub fn contains(self, r: Rendering) -> bool {
        self.0 & (1 << r.index()) != 0
    }

    pub fn insert(&mut self, r: Rendering) {
        self.0 |= 1 << r.index();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Rendering> {
        Rendering::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_renderings_keep_their_encoding() {
        for enc in [Encoding::Proto, Encoding::Json] {
            for deflate in [false, true] {
                let r = Rendering::websocket(enc, deflate);
                assert_eq!(r.encoding(), enc);
                assert_eq!(r.deflates().is_some(), deflate);
                assert_eq!(
                    r.deflates().map(Rendering::encoding),
                    deflate.then_some(enc)
                );
            }
        }
        assert_eq!(Rendering::Sse.encoding(), Encoding::Json);
        for (i, r) in Rendering::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn sets_hold_what_was_inserted() {
        let mut s = Renderings::NONE;
        assert!(s.is_empty());
        s.insert(Rendering::Sse);
        s.insert(Rendering::Json);
        assert!(s.contains(Rendering::Sse) && s.contains(Rendering::Json));
        assert!(!s.contains(Rendering::Proto));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Rendering::Json, Rendering::Sse]
        );
        assert_eq!(Renderings::of(Rendering::Proto).iter().count(), 1);
    }
}
