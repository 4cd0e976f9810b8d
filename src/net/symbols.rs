//! The `/symbols` directory (PROTOCOL §6): every symbol with its decimals and
//! its book `seq`, current when a request is answered.
//!
//! One writer, the ingest thread ([`super::sink::FanoutSink`]), which stores a
//! symbol's new `seq` before the message carrying it enters any ring, so no
//! client can have received a `seq` newer than the one `/symbols` reports. The
//! readers are the workers answering `GET /symbols`, which render the JSON
//! body themselves: the ingest thread pays one atomic store per published
//! book message and never renders anything, however often `/symbols` is
//! asked for. The lock is taken by the ingest thread only when a symbol is
//! added, and by a worker for one rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::book::SymbolId;
use crate::wire::json::write_json_str;

/// One symbol's public state.
#[derive(Debug)]
pub struct SymbolEntry {
    name: Arc<str>,
    seq: AtomicU64,
    price_decimals: AtomicU32,
    size_decimals: AtomicU32,
    epoch: AtomicU64,
}

/// The directory, indexed by [`SymbolId`].
#[derive(Debug, Default)]
pub struct SymbolDirectory {
    entries: Mutex<Vec<Arc<SymbolEntry>>>,
}

/// The ingest thread's handle: its own copy of the entries, so a seq update
/// takes no lock.
#[derive(Debug)]
pub struct DirectoryWriter {
    dir: Arc<SymbolDirectory>,
    local: Vec<Arc<SymbolEntry>>,
}

impl SymbolDirectory {
    /// The writer of `dir` (one per process: the ingest thread's).
    pub fn writer(dir: &Arc<SymbolDirectory>) -> DirectoryWriter {
        DirectoryWriter {
            dir: dir.clone(),
            local: Vec::new(),
        }
    }

    /// The `/symbols` body: `{"symbols":[{"symbol":…,"seq":…,…},…]}`.
    pub fn render_json(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = String::with_capacity(16 + entries.len() * 72);
        body.push_str("{\"symbols\":[");
        for (i, e) in entries.iter().filter(|e| !e.name.is_empty()).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"symbol\":");
            write_json_str(&mut body, &e.name);
            // Writing to a String cannot fail.
            let _ = write!(
                body,
                ",\"seq\":{},\"price_decimals\":{},\"size_decimals\":{},\"epoch\":{}}}",
                e.seq.load(Ordering::Acquire),
                e.price_decimals.load(Ordering::Relaxed),
                e.size_decimals.load(Ordering::Relaxed),
                e.epoch.load(Ordering::Relaxed),
            );
        }
        body.push_str("]}");
        body
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |g| g.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DirectoryWriter {
    /// A snapshot was published (or, on an edge, the symbol's origin listed
    /// it): the symbol exists (added if new) with these decimals, `seq` and `epoch`.
    pub fn snapshot(
        &mut self,
        id: SymbolId,
        name: &str,
        seq: u64,
        price_decimals: u32,
        size_decimals: u32,
        epoch: u64,
    ) {
        let i = id.0 as usize;
        while self.local.len() <= i {
            // Ids are dense and assigned in order by the market; a gap would
            // only come from a skipped id, which gets a placeholder name.
            let next = self.local.len();
            let entry = Arc::new(SymbolEntry {
                name: Arc::from(if next == i { name } else { "" }),
                seq: AtomicU64::new(0),
                price_decimals: AtomicU32::new(0),
                size_decimals: AtomicU32::new(0),
                epoch: AtomicU64::new(0),
            });
            self.dir
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.clone());
            self.local.push(entry);
        }
        let e = &self.local[i];
        e.price_decimals.store(price_decimals, Ordering::Relaxed);
        e.size_decimals.store(size_decimals, Ordering::Relaxed);
        e.epoch.store(epoch, Ordering::Relaxed);
        e.seq.store(seq, Ordering::Release);
    }

    /// A delta was published with this `seq`.
    pub fn delta(&mut self, id: SymbolId, seq: u64) {
        if let Some(e) = self.local.get(id.0 as usize) {
            e.seq.store(seq, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_last_stored() {
        let dir = Arc::new(SymbolDirectory::default());
        assert_eq!(dir.render_json(), r#"{"symbols":[]}"#);
        let mut w = SymbolDirectory::writer(&dir);
        w.snapshot(SymbolId(0), "BTC-USD", 1, 2, 4, 1_733_000_000_000);
        w.snapshot(SymbolId(1), "a\"b", 7, 0, 0, 5);
        w.delta(SymbolId(0), 2);
        assert_eq!(
            dir.render_json(),
            r#"{"symbols":[{"symbol":"BTC-USD","seq":2,"price_decimals":2,"size_decimals":4,"epoch":1733000000000},{"symbol":"a\"b","seq":7,"price_decimals":0,"size_decimals":0,"epoch":5}]}"#
        );
        // A replaced book with new decimals.
        w.snapshot(SymbolId(0), "BTC-USD", 3, 1, 1, 1_733_000_000_000);
        assert!(
            dir.render_json()
                .contains(r#""seq":3,"price_decimals":1,"size_decimals":1"#)
        );
        // A delta for an unknown id changes nothing.
        w.delta(SymbolId(9), 5);
        assert_eq!(dir.len(), 2);
    }
}
