//! # tickwire-loadgen
//!
//! The capacity-planning harness: how many clients, at what tick rate, with
//! what latency, on this machine. It drives a real engine with tickwire's own
//! synthetic market and a fleet of verifying WebSocket clients, and reports
//! numbers (a table, JSON with an environment header) and pictures (HTML with
//! SVG charts).
//!
//! ```text
//!  feed (lg-feed) ──TCP ingest──▶ tickwire ──WebSocket──▶ lg-client-0 (mio) ─┐
//!  SynthMarket at a rate,                               ▶ lg-client-1 (mio) ─┼─▶ Tally ─▶ controller
//!  exchange_ts_ns = scheduled time                      ▶ …                  ─┘   (runner: phases,
//!                                                                                  steps, samples, report)
//! ```
//!
//! ## Modules (dependency arrows point one way)
//!
//! `runner → {fleet, feed, report, chart, scenario, env} → {session → verify → pbscan, stats}`
//!
//! - [`pbscan`]: zero-copy reading of the hot server messages (deltas, trades).
//! - [`verify`]: the per-connection verifier (snapshot, contiguous seq,
//!   checksums, Stale + snapshot resyncs, trade seq). Pure.
//! - [`session`]: one client connection, sans-IO (upgrade, framing, pings,
//!   close, resubscribe on a broken book). Pure.
//! - [`fleet`]: the client threads (mio loops) around sessions: pacing,
//!   source addresses, slow readers, churn.
//! - [`feed`]: the synthetic market over protobuf or JSON ingest at a rate.
//! - [`stats`]: counters, latency histograms, `/proc` CPU and memory.
//! - [`scenario`], [`runner`]: TOML scenarios, phases, capacity steps.
//! - [`report`], [`chart`], [`env`]: JSON, table, merge, SVG/HTML, header.
//!
//! ## Measuring honestly
//!
//! - Latency is receipt time − the feed's *scheduled* send time
//!   (`exchange_ts_ns`), so a stall anywhere shows up (coordinated omission).
//! - loadgen's own CPU is reported beside the engine's; when loadgen nears a
//!   full core per client thread, it is measuring itself.
//! - Violations must be zero: every one is a broken contract.
#![forbid(unsafe_code)]

pub mod chart;
pub mod env;
pub mod feed;
pub mod fleet;
pub mod pbscan;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod session;
pub mod stats;
pub mod verify;
