//! # tickwire
//!
//! A market-data fan-out engine: exchange feed handlers push order-book
//! snapshots, deltas and trades over TCP; very many WebSocket clients subscribe
//! by symbol. Books are never silently wrong: a client receives a gap-free
//! sequence or an explicit `Stale` followed by a snapshot.
//!
//! ## Threads
//!
//! ```text
//!  feed handlers ──TCP──▶ ingest thread ──rtrb ring per worker──▶ worker-N (mio) ──▶ sockets
//!  (protobuf or           owns every book,        ◀──snapshot requests──
//!   JSON lines)           assigns sequences,
//!                         encodes each message ONCE into a WebSocket frame
//!                              ▲ │ rtrb rings (scale-out only)
//!                              │ ▼
//!  NATS ◀────────────▶ backplane thread (async-nats, current-thread Tokio):
//!                      an origin publishes its books' messages; an edge
//!                      follows other origins' symbols (`cluster`, `net::backplane`)
//! ```
//!
//! ## Where to look: the hot path of one message
//!
//! 1. **Ingest read**: `net::ingest` reads feed sockets (bounded per turn) and
//!    decodes with [`book::decode`] (protobuf) or [`wire::json`] (JSON lines).
//! 2. **Book**: [`book::market::Market`] applies the delta to its
//!    [`book::book::OrderBook`], assigns the seq and checksum, or marks the book stale.
//! 3. **Encode once**: [`wire::EncodedFrame`] builds the whole WebSocket frame
//!    and [`fanout::render`] builds each other rendering (JSON, compressed,
//!    SSE: [`wire::Rendering`]) once, only while some worker has
//!    subscribers that take it.
//! 4. **Ring**: [`fanout::router`] pushes it to the `rtrb` ring of each worker
//!    with interest in the symbol ([`fanout::ring::ToWorker`]); the worker is
//!    woken only if it may sleep (`net::ring_wake`).
//! 5. **Worker core**: [`fanout::worker::WorkerCore::handle_ring_batch`]
//!    queues the frame (a run of deltas joined into one) in each
//!    subscriber's [`fanout::outbox::Outbox`] under the slow-consumer policy.
//! 6. **Pacing and socket**: [`fanout::pacing::Pacer`] says when to drain
//!    and write; `net::worker` (duty cycle, numbered in its doc) writes each
//!    dirty connection once per pass, one `send` of everything queued.
//!
//! ## Modules (dependency arrows point one way)
//!
//! `net → {fanout, ws, book, metrics} → {wire, config, auth}`
//!
//! - [`wire`]: generated protobuf types, [`wire::EncodedFrame`], JSON rendering.
//! - [`book`]: order books, checksums, sequencing and ownership ([`book::market`]),
//!   ingest decoding, decimals, the synthetic market. Pure code.
//! - [`ws`]: the sans-IO HTTP/WebSocket codec. No sockets, no clock.
//! - [`auth`]: JWT verification over a key set, entitlements, symbol
//!   patterns, the per-user connection table, ingest tokens (PROTOCOL §8).
//!   Pure: `now` is an argument, files are read by `net`.
//! - [`cluster`]: the NATS backplane's pure parts (subjects, header,
//!   heartbeat, what an origin publishes, what an edge follows).
//! - [`net`]: the only module that touches sockets, `mio`, threads and wakers.
//! - [`metrics`]: counters and Prometheus text.
//! - [`config`]: typed configuration, every default with its unit.
//! - [`config_file`]: `--config FILE`: every long flag is a key of the TOML
//!   file; the command line overrides it.
//!
//! ## Invariants index
//!
//! - The ingest thread is the single writer of every book and sequence
//!   ([`book::market::Market`]).
//! - Every outgoing market-data message is encoded once ([`wire::EncodedFrame`]).
//! - Peer input never panics the process: every decoder returns errors as values.
//! - Every way a connection ends goes through one place
//!   (`net::worker::Worker::drop_client`), which removes it from the core's
//!   indexes, the timing wheel, the per-IP counts and the open counts
//!   (`tests/lifecycle.rs` churns thousands of connections back to zero).
//! - A client's backlog is what it has not received: its queue plus the bytes
//!   its kernel socket holds unsent (bounded by `TCP_NOTSENT_LOWAT`, measured
//!   with `SIOCOUTQNSD` in [`net::unsent`], the one module with `unsafe`);
//!   the slow-consumer policy and the maximum lag apply to that
//!   ([`fanout::outbox`], `WorkerCore::handle_kernel_unsent`).
//! - A thread that dies is never left half alive ([`net::health`]).
//! - What one feed can make the ingest thread hold and do is bounded:
//!   symbols, levels per side and updates per delta
//!   ([`config::MarketLimits`]), the time to a first and to each message,
//!   and the work of one turn ([`net::ingest`]).
//! - The market thread (ingest) stays the single writer of every book, local
//!   or mirrored from another node through NATS ([`cluster`],
//!   `net::backplane`): a mirrored book keeps its origin's seq, checksum and
//!   epoch, follows on or turns stale and resyncs; the backplane thread never
//!   blocks it (bounded rings, drops counted).
//! - Authentication never touches the market-data path: a token is verified
//!   once per connection (and per refresh) by the worker that owns it;
//!   entitlements are checked where subscriptions change; expiry is a
//!   timing-wheel entry; the per-user table is locked only on connect, auth
//!   and close ([`auth`], `fanout::worker::auth`, `net::auth`). Secrets and
//!   tokens are never logged nor `Debug`-printed.
//! - Limits answer, never silently drop: 503/429 with `Retry-After`,
//!   `Error{rate_limited}`, close 4001/4002/4003/1009; each counted by reason
//!   ([`fanout::limits`], [`net::shared::Reject`]).
// `deny`, not `forbid`: the one exception is `net::unsent` (a single ioctl
// with no safe wrapper available), which allows it for itself.
#![deny(unsafe_code)]

pub mod auth;
pub mod book;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod fanout;
pub mod metrics;
pub mod net;
pub mod wire;
pub mod ws;
