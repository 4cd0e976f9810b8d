//! Scale-out through NATS (DESIGN "Growing past one machine"): the pure
//! parts of the backplane. The NATS client and its runtime live in
//! `net::backplane`, the one I/O shell; everything here is sans-IO and run
//! by the node's market thread (the ingest thread), which stays the single
//! writer of every book and sequence, local or mirrored.
//!
//! - [`subject`]: the subjects (`tw.md.<symbol>`, `tw.snap.<origin>.<symbol>`, `tw.hb.<origin>`).
//! - [`header`]: the 24-byte header in front of each market-data message.
//! - [`heartbeat`]: an origin's once-a-second list of its symbols and seqs.
//! - [`origin`]: what an origin publishes and how it answers snapshot requests.
//! - [`edge`]: what an edge follows, when it resyncs, what each message does.

pub mod edge;
pub mod header;
pub mod heartbeat;
pub mod origin;
pub mod subject;
