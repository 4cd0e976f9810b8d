//! Fan-out: what crosses the rings between the ingest thread and the workers
//! ([`ring`]), the ingest side's routing by interest ([`router`]) and the
//! renderings it attaches ([`render`]: JSON, compressed, SSE), and the
//! sans-IO worker core ([`worker`]): subscriptions, client requests,
//! per-connection outboxes and the slow-consumer policy; the admission
//! limits ([`limits`]), the worker's timing wheel ([`timer`]) and its
//! heartbeat sweep ([`sweep`]).
//!
//! Nothing here touches sockets, `mio` or the clock: `net` drives it.

pub mod derived;
pub mod frames;
pub mod limits;
pub mod outbox;
pub mod pacing;
pub mod render;
pub mod replay;
pub mod request;
pub mod ring;
pub mod router;
pub mod streams;
pub mod subs;
pub mod sweep;
pub mod timer;
pub mod worker;
