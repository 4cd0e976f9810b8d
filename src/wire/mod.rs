//! The wire contract in code: the generated protobuf types ([`pb`]), the
//! server-frame header of RFC 6455, [`EncodedFrame`] (a complete WebSocket frame
//! built once and shared by every connection), JSON rendering, and the
//! [`Encoding`] a connection chose.
//!
//! Run by the ingest thread (encoding) and read by workers (sharing). Never
//! touches sockets.

pub mod close;
pub mod decimal;
pub mod encoding;
pub mod frame;
pub mod json;
pub mod nesting;
pub mod rendering;
pub mod stale;
pub mod varint;

pub mod pb {
    //! Generated from `proto/tickwire.proto` by prost (see `build.rs`).
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/tickwire.v1.rs"));
}

pub use close::CloseCode;
pub use encoding::Encoding;
pub use frame::{EncodedFrame, Opcode};
pub use rendering::{Rendering, Renderings};
pub use stale::StaleReason;
