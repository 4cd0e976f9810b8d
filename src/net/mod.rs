//! The only module that touches sockets, `mio`, threads, wakers and CPU
//! affinity. Everything it decides, it asks the sans-IO modules.

pub mod accept_backoff;
pub mod auth;
pub mod backplane;
pub mod demo;
pub mod echo;
pub mod engine;
pub mod health;
pub mod ingest;
pub mod ring_wake;
pub mod shared;
pub mod sink;
pub mod symbols;
pub mod unsent;
pub mod worker;
