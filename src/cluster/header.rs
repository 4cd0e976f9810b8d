//! The fixed header in front of every market-data message on the backplane.
//!
//! An origin publishes each message it produces once, to its symbol's data
//! subject, as this 24-byte header followed by the protobuf `ServerMessage`
//! (the same bytes as the payload of the WebSocket binary frame). A receiver
//! routes and checks order from the header alone; it decodes the body only to
//! apply it to its own book.
//!
//! ```text
//! offset size  field
//!  0      2    magic  b"tw"
//!  2      1    version (1)
//!  3      1    kind   (1 snapshot, 2 delta, 3 trade, 4 stale feed_gap, 5 stale feed_down)
//!  4      4    origin tag, little-endian: FNV-1a of the origin's name
//!  8      8    epoch, little-endian (PROTOCOL §10)
//! 16      8    seq, little-endian: the book seq (snapshot, delta, stale), the trade seq (trade)
//! 24      …    protobuf ServerMessage
//! ```
//!
//! Pure code, used by the ingest thread (encode, decode) and the fuzz target.

use thiserror::Error;

pub const MAGIC: [u8; 2] = *b"tw";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;

/// What a backplane message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The whole book at `seq`: a replaced book on a data subject, or the
    /// answer to a snapshot request.
    Snapshot,
    Delta,
    Trade,
    /// The origin's book stopped being published after a feed gap.
    StaleGap,
    /// The origin's feed for the symbol disconnected.
    StaleDown,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Snapshot => 1,
            Kind::Delta => 2,
            Kind::Trade => 3,
            Kind::StaleGap => 4,
            Kind::StaleDown => 5,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Snapshot,
            2 => Kind::Delta,
            3 => Kind::Trade,
            4 => Kind::StaleGap,
            5 => Kind::StaleDown,
            _ => return None,
        })
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub origin: OriginTag,
    pub epoch: u64,
    pub seq: u64,
}

/// Names an origin in 4 bytes: FNV-1a (32-bit) of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginTag(pub u32);

impl OriginTag {
    pub fn of(name: &str) -> OriginTag {
        let mut h: u32 = 0x811c_9dc5;
        for &b in name.as_bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        OriginTag(h)
    }
}

/// Why bytes on a data subject are not one of our messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("shorter than the {HEADER_LEN}-byte header ({0} bytes)")]
    Truncated(usize),
    #[error("not a tickwire backplane message (bad magic)")]
    BadMagic,
    #[error("unknown backplane format version {0}")]
    UnknownVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
}

impl HeaderError {
    /// The metrics label (`tickwire_backplane_garbage_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            HeaderError::Truncated(_) => "truncated",
            HeaderError::BadMagic => "bad_magic",
            HeaderError::UnknownVersion(_) => "unknown_version",
            HeaderError::UnknownKind(_) => "unknown_kind",
        }
    }
}

impl Header {
    /// Appends the header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.origin.0.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
    }

    /// Splits a backplane message into its header and protobuf body.
    pub fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), HeaderError> {
        let Some((head, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(HeaderError::Truncated(bytes.len()));
        };
        if head[0..2] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if head[2] != VERSION {
            return Err(HeaderError::UnknownVersion(head[2]));
        }
        let kind = Kind::from_code(head[3]).ok_or(HeaderError::UnknownKind(head[3]))?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        Ok((
            Header {
                kind,
                origin: OriginTag(u32_at(4)),
                epoch: u64_at(8),
                seq: u64_at(16),
            },
            body,
        ))
    }
}

/// One whole message: the header, then `body`.
pub fn encode(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    header.write(&mut out);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(kind: Kind) -> Header {
        Header {
            kind,
            origin: OriginTag::of("venue-a"),
            epoch: 1_733_000_000_123,
            seq: u64::MAX - 1,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        for kind in [
            Kind::Snapshot,
            Kind::Delta,
            Kind::Trade,
            Kind::StaleGap,
            Kind::StaleDown,
        ] {
            let bytes = encode(&h(kind), b"body");
            assert_eq!(bytes.len(), HEADER_LEN + 4);
            let (got, body) = Header::parse(&bytes).unwrap();
            assert_eq!(got, h(kind));
            assert_eq!(body, b"body");
        }
    }

    #[test]
    fn layout_is_little_endian_at_fixed_offsets() {
        let bytes = encode(
            &Header {
                kind: Kind::Delta,
                origin: OriginTag(0x0403_0201),
                epoch: 7,
                seq: 0x0102,
            },
            &[],
        );
        assert_eq!(
            bytes,
            [
                b't', b'w', 1, 2, 1, 2, 3, 4, 7, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert_eq!(Header::parse(b""), Err(HeaderError::Truncated(0)));
        assert_eq!(
            Header::parse(&[0u8; HEADER_LEN - 1]),
            Err(HeaderError::Truncated(HEADER_LEN - 1))
        );
        let mut b = encode(&h(Kind::Trade), b"x");
        b[0] = b'x';
        assert_eq!(Header::parse(&b), Err(HeaderError::BadMagic));
        let mut b = encode(&h(Kind::Trade), b"x");
        b[2] = 2;
        assert_eq!(Header::parse(&b), Err(HeaderError::UnknownVersion(2)));
        let mut b = encode(&h(Kind::Trade), b"x");
        b[3] = 0;
        assert_eq!(Header::parse(&b), Err(HeaderError::UnknownKind(0)));
    }

    #[test]
    fn origin_tags_are_fnv1a() {
        // FNV-1a 32 test vectors.
        assert_eq!(OriginTag::of("").0, 0x811c_9dc5);
        assert_eq!(OriginTag::of("a").0, 0xe40c_292c);
        assert_eq!(OriginTag::of("foobar").0, 0xbf9c_f968);
    }
}
