//! Connections: per-connection state size, the dirty queue, and closes
//! that leave every index empty (proptest).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::harness::*;
use crate::book::SymbolId;
use crate::fanout::outbox::{Consumed, Outbox};
use crate::fanout::ring::ToIngest;
use crate::fanout::subs::IndexSizes;
use crate::fanout::worker::{CONN_STATE_BYTES, Conn, ConnId, Encoding};
use crate::wire::EncodedFrame;

#[test]
fn per_connection_state_is_small() {
    // Reported in the module's hand-off: keep an eye on it.
    assert_eq!(CONN_STATE_BYTES, 88, "per-connection state changed size");
    assert_eq!(std::mem::size_of::<Outbox>(), 56);
    assert_eq!(std::mem::size_of::<Conn>(), 64);
}

#[test]
fn dirty_queue_is_fifo_and_marks_tell_when_a_pass_is_over() {
    let mut h = H::new(cfg());
    let clients: Vec<Client> = (0..3).map(|_| h.client(Encoding::Proto)).collect();
    for c in &clients {
        h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
    }
    h.serve();
    while h.core.poll_dirty().is_some() {}
    h.delta(BTC);
    let first_mark = h.core.dirty_mark();
    let x = h.core.poll_dirty().unwrap();
    assert!(h.core.dirty_done() < first_mark);
    // x gets more output while the others still wait: it goes to the
    // back of the queue, behind them, once.
    h.delta(BTC);
    let second_mark = h.core.dirty_mark();
    assert_eq!(second_mark, first_mark + 1);
    let y = h.core.poll_dirty().unwrap();
    let z = h.core.poll_dirty().unwrap();
    assert_eq!(h.core.dirty_done(), first_mark);
    assert_eq!(h.core.poll_dirty(), Some(x));
    assert_eq!(h.core.dirty_done(), second_mark);
    assert_eq!(h.core.poll_dirty(), None);
    let mut seen = vec![x, y, z];
    seen.sort();
    assert_eq!(seen, clients.iter().map(|c| c.conn).collect::<Vec<_>>());
}

#[test]
fn poll_dirty_yields_each_connection_once_per_batch() {
    let mut h = H::new(cfg());
    let mut clients: Vec<Client> = (0..3).map(|_| h.client(Encoding::Proto)).collect();
    for c in &clients {
        h.text(c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 1));
    }
    h.serve();
    for _ in 0..50 {
        h.delta(BTC);
        h.delta(ETH);
    }
    let mut dirty: Vec<_> = std::iter::from_fn(|| h.core.poll_dirty()).collect();
    dirty.sort();
    assert_eq!(dirty, clients.iter().map(|c| c.conn).collect::<Vec<_>>());
    for c in &mut clients {
        c.read_all(&mut h.core, h.now_ns);
        assert_eq!(c.take().len(), 1 + 2 + 100);
    }
    assert_eq!(h.core.poll_dirty(), None);
    assert_eq!(h.core.stats().delivered_msgs, 3 * 102);
}

#[test]
fn requests_from_closed_or_unknown_connections_are_ignored() {
    let mut h = H::new(cfg());
    let c = h.client(Encoding::Proto);
    h.core.close_conn(c.conn);
    h.core.close_conn(c.conn);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.core.handle_text(ConnId(999), "{}", 0);
    h.core.queue_control(ConnId(999), EncodedFrame::text("x"));
    assert_eq!(h.core.handle_written(ConnId(999), 10, 0), Consumed::Drained);
    assert!(h.core.outbox(ConnId(999)).is_empty());
    assert_eq!(h.core.stats().index, IndexSizes::default());
    assert!(h.drain_to_ingest().is_empty());
    // The slot is reused.
    assert_eq!(h.core.open_conn(Encoding::Json), c.conn);
}

#[derive(Debug, Clone)]
enum Act {
    Open(bool),
    Sub { conn: usize, syms: u8, chans: u8 },
    Unsub { conn: usize, syms: u8, chans: u8 },
    Close(usize),
    Serve,
    Delta(u8),
    Trade(u8),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        any::<bool>().prop_map(Act::Open),
        (0usize..8, 1u8..8, 1u8..4).prop_map(|(conn, syms, chans)| Act::Sub { conn, syms, chans }),
        (0usize..8, 1u8..8, 1u8..4).prop_map(|(conn, syms, chans)| Act::Unsub {
            conn,
            syms,
            chans
        }),
        (0usize..8).prop_map(Act::Close),
        Just(Act::Serve),
        (0u8..3).prop_map(Act::Delta),
        (0u8..3).prop_map(Act::Trade),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn close_leaves_every_index_empty_and_interest_balanced(acts in proptest::collection::vec(act(), 1..80)) {
        let mut h = H::new(cfg());
        let mut open: Vec<Client> = Vec::new();
        let mut polled = Vec::new();
        for a in acts {
            match a {
                Act::Open(json) => open.push(h.client(if json { Encoding::Json } else { Encoding::Proto })),
                Act::Sub { conn, syms, chans } | Act::Unsub { conn, syms, chans } if !open.is_empty() => {
                    let c = &open[conn % open.len()];
                    let (s, ch) = (pick(syms, &NAMES), pick(chans, &["book", "trades"]));
                    let text = if matches!(a, Act::Sub { .. }) { sub_text(&s, &ch, 1) } else { unsub_text(&s, &ch, 1) };
                    h.text(c, &text);
                }
                Act::Close(i) if !open.is_empty() => {
                    let c = open.swap_remove(i % open.len());
                    h.core.close_conn(c.conn);
                }
                Act::Serve => polled.extend(h.serve()),
                Act::Delta(s) => h.delta(SymbolId(s as u32)),
                Act::Trade(s) => { let t = h.ing.trade(SymbolId(s as u32)); h.ring(t); }
                _ => {}
            }
            prop_assert!(h.core.check_invariants().is_ok(), "{:?}", h.core.check_invariants());
            for c in &mut open {
                c.read_all(&mut h.core, h.now_ns); // asserts contiguity per client
            }
        }
        for c in open.drain(..) {
            h.core.close_conn(c.conn);
        }
        polled.extend(h.drain_to_ingest());
        let s = h.core.stats();
        prop_assert_eq!(s.index.book_entries + s.index.trades_entries + s.index.conn_entries + s.index.rendering_entries, 0);
        prop_assert_eq!(s.index.symbols_with_interest, 0);
        prop_assert_eq!((s.connections, s.dirty_pending, s.buffered_bytes, s.awaiting_subs, s.live_frames), (0, 0, 0, 0, 0));
        prop_assert_eq!(s.contiguity_violations, 0);
        // Interest and rendering interest alternate on/off per key and end off.
        let mut state: BTreeMap<String, bool> = BTreeMap::new();
        for m in &polled {
            let (key, on) = match m {
                ToIngest::Interest { symbol, channel, on } => (format!("{}/{:?}", symbol.0, channel), *on),
                ToIngest::Rendering { symbol, rendering, on } => (format!("{}/{}", symbol.0, rendering.as_str()), *on),
                ToIngest::SnapshotRequest { .. } | ToIngest::Resume(_) => continue,
            };
            let prev = state.insert(key.clone(), on).unwrap_or(false);
            prop_assert_ne!(prev, on, "{} repeated", key);
        }
        prop_assert!(state.values().all(|on| !on));
    }
}
