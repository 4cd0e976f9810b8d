//! Tests of the worker core through a deterministic pipeline harness
//! ([`harness`]): a fake ingest thread, fake clients that decode what the
//! core queues, and a manual clock. One file per concern of the core.

mod auth;
mod backlog;
mod conns;
mod delivery;
mod harness;
mod requests;
