//! Typed configuration. Every default is documented with its unit; the
//! command line (`main.rs`) only fills these structs.

use std::net::SocketAddr;
use std::sync::Arc;

/// Largest ingest frame or JSON line, in bytes (PROTOCOL §3: 1 MiB).
pub const MAX_INGEST_FRAME_BYTES: usize = 1 << 20;

/// The ingest side: feed handler listeners and their policy.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Length-delimited protobuf listener. Default `127.0.0.1:7001`.
    pub proto_addr: SocketAddr,
    /// JSON-lines listener. Default `127.0.0.1:7002`.
    pub json_addr: SocketAddr,
    /// When set, every feed must open with a `Hello` carrying this token.
    pub token: Option<Arc<str>>,
    /// Largest frame or line accepted, bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Most feed connections at once; further ones are closed at accept. Default 1024.
    pub max_feeds: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            proto_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            json_addr: SocketAddr::from(([127, 0, 0, 1], 7002)),
            token: None,
            max_frame_bytes: MAX_INGEST_FRAME_BYTES,
            max_feeds: 1024,
        }
    }
}
