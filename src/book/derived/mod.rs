//! Derived book channels (PROTOCOL §9): the channel grammar ([`Channel`]).
//!
//! Owned and run by the thread that owns the books (the market thread:
//! ingest, or a node's backplane-fed ingest), which computes each derived
//! stream once and encodes it once (DESIGN "Derived channels"). Pure: no
//! I/O, no threads, no clock (time comes in as `now_ns`), never panics.

mod channel;

pub use channel::{Channel, ChannelError, ChannelName, Depth, Interval, MAX_CHANNEL_NAME_BYTES};
