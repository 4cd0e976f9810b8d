//! Conformance echo server (test aid, off by default). Filled in by the ws codec work.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Serves WebSocket echo on `echo_path` until `stop` is set.
pub fn run(_listener: TcpListener, _echo_path: &str, _stop: Arc<AtomicBool>) -> std::io::Result<()> {
    Err(std::io::Error::other("echo server not built yet"))
}
