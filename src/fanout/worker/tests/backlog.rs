//! Slow consumers and freshness: high/low water, hard limit, max lag,
//! kernel-unsent bytes, backlog ages, idle buffer release.

use super::harness::*;
use crate::book::SymbolId;
use crate::fanout::outbox::Consumed;
use crate::fanout::ring::{Lane, ToIngest};
use crate::fanout::worker::{Encoding, WorkerConfig};
use crate::wire::{CloseCode, EncodedFrame};

fn small_limits() -> WorkerConfig {
    WorkerConfig {
        high_water_bytes: 2_000,
        low_water_bytes: 500,
        hard_limit_bytes: 20_000,
        max_lag_ns: 1_000_000,
        ..cfg()
    }
}

#[test]
fn slow_consumer_drops_above_high_water_and_resyncs_below_low_water() {
    for encoding in [Encoding::Proto, Encoding::Json] {
        let mut h = H::new(small_limits());
        let mut slow = h.client(encoding);
        let mut fast = h.client(Encoding::Proto);
        h.text(
            &slow,
            &sub_text(&["BTC-USD", "ETH-USD"], &["book", "trades"], 1),
        );
        h.text(&fast, &sub_text(&["BTC-USD"], &["book"], 2));
        h.serve();
        let mut dropped_at = None;
        for i in 0..400 {
            h.delta(BTC);
            h.delta(ETH);
            let t = h.ing.trade(BTC);
            h.ring(t);
            fast.read_all(&mut h.core, h.now_ns);
            let buffered = h.core.outbox(slow.conn).buffered_bytes();
            if dropped_at.is_none() && h.core.stats().dropped_deltas > 0 {
                dropped_at = Some(i);
                assert!(
                    buffered > 2_000 - 200,
                    "no drop far below high-water ({buffered})"
                );
            }
            assert!(
                buffered <= 2_000 + 200,
                "stream frames stop near high-water ({buffered})"
            );
        }
        assert!(dropped_at.is_some());
        let s = h.core.stats();
        assert!(s.dropped_deltas > 0 && s.dropped_trades > 0);
        // Control answers still go in above high-water.
        h.text(&slow, &sub_text(&["SOL-USD"], &["trades"], 5));
        assert_eq!(
            h.drain_to_ingest()[0],
            interest(SymbolId(2), Lane::Trades, true)
        );
        assert!(h.core.outbox(slow.conn).buffered_bytes() > 2_000);
        // Draining 300 bytes per step: no resync until below low-water.
        let requests = loop {
            let before = h.core.outbox(slow.conn).buffered_bytes();
            slow.read(&mut h.core, 300, h.now_ns);
            let polled = h.drain_to_ingest();
            if !polled.is_empty() {
                assert!(
                    before.saturating_sub(300) < 500,
                    "resync only below low-water"
                );
                break polled;
            }
            assert!(before >= 500, "no resync although below low-water");
        };
        assert_eq!(
            requests,
            vec![
                ToIngest::SnapshotRequest { symbol: BTC },
                ToIngest::SnapshotRequest { symbol: ETH }
            ]
        );
        for r in requests {
            if let ToIngest::SnapshotRequest { symbol } = r {
                let a = h.ing.answer(symbol);
                h.ring(a);
            }
        }
        h.delta(BTC);
        h.delta(ETH);
        slow.read_all(&mut h.core, h.now_ns);
        fast.read_all(&mut h.core, h.now_ns);
        let evs = slow.take();
        let stales: Vec<_> = evs
            .iter()
            .filter(|e| e.ty == "stale")
            .map(|e| (e.symbol.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(stales.len(), 3, "{stales:?}");
        assert!(stales.contains(&("BTC-USD", "slow_consumer")));
        assert!(stales.contains(&("ETH-USD", "slow_consumer")));
        assert!(stales.contains(&("BTC-USD", "slow_consumer_trades")));
        let dropped: u64 = evs
            .iter()
            .filter(|e| e.reason == "slow_consumer")
            .map(|e| e.dropped)
            .sum();
        assert_eq!(dropped, s.dropped_deltas);
        assert!(
            evs.iter().any(|e| e.ty == "subscribed" && e.id == 5),
            "control answer survived"
        );
        assert_eq!(slow.books["BTC-USD"].1, h.ing.truth(BTC));
        assert_eq!(slow.books["ETH-USD"].1, h.ing.truth(ETH));
        assert_eq!(
            fast.books["BTC-USD"].1,
            h.ing.truth(BTC),
            "the fast client never noticed"
        );
        assert_eq!(h.core.stats().contiguity_violations, 0);
        assert!(h.core.poll_close().is_none());
    }
}

#[test]
fn hard_limit_closes_with_4001_and_leaves_no_trace() {
    let mut h = H::new(small_limits());
    h.ing.books[0].pad_levels = 1_500; // a ~10 KB snapshot
    let mut c = h.client(Encoding::Proto);
    let keep = h.client(Encoding::Proto);
    h.text(&keep, &sub_text(&["ETH-USD"], &["book"], 1));
    let mut polled = Vec::new();
    for i in 0..3 {
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 10 + i));
        polled.extend(h.serve());
    }
    let (id, code, _) = h.core.poll_close().expect("closed above the hard limit");
    assert_eq!((id, code), (c.conn, CloseCode(4001)));
    assert!(h.core.outbox(c.conn).buffered_bytes() <= 20_000);
    assert_eq!(polled.last(), Some(&interest(BTC, Lane::Book, false)));
    // Closing frames still go out, then the shell forgets the connection.
    h.core.queue_control(
        c.conn,
        EncodedFrame::from_frame_bytes(vec![0x88, 0x02, 0x0f, 0xa1]),
    );
    c.read_all(&mut h.core, h.now_ns);
    assert_eq!(c.take().last().map(|e| e.ty.as_str()), Some("opcode-8"));
    h.core.close_conn(c.conn);
    let s = h.core.stats();
    assert_eq!(
        (s.connections, s.index.conn_entries, s.index.book_entries),
        (1, 1, 1)
    );
    assert_eq!(s.slow_consumer_closes, 1);
    h.core.check_invariants().unwrap();
}

#[test]
fn max_lag_closes_with_4001_by_timeout_or_on_delivery() {
    for by_timeout in [true, false] {
        let mut h = H::new(small_limits());
        let c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        while h.core.stats().dropped_deltas == 0 {
            h.delta(BTC);
        }
        h.now_ns += 1_000_000; // exactly max lag: not yet
        assert_eq!(h.core.handle_timeout(h.now_ns), 0);
        h.delta(BTC);
        assert!(h.core.poll_close().is_none());
        h.now_ns += 1;
        if by_timeout {
            assert_eq!(h.core.handle_timeout(h.now_ns), 1);
        } else {
            h.delta(BTC);
        }
        assert_eq!(
            h.core.poll_close().map(|(id, code, _)| (id, code)),
            Some((c.conn, CloseCode(4001)))
        );
        assert_eq!(h.core.stats().index.book_entries, 0);
    }
}

/// DESIGN "Freshness": bytes the kernel holds unsent count in the
/// backlog. A client whose kernel socket took everything is still seen
/// as behind: dropped above high-water, resynced once the kernel sends.
#[test]
fn kernel_unsent_bytes_open_and_close_a_dropping_episode() {
    let mut h = H::new(small_limits());
    let mut c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.serve();
    c.read_all(&mut h.core, h.now_ns);
    c.take();
    // Everything was "written", but the kernel sent none of 2,500 bytes.
    assert_eq!(
        h.core.handle_kernel_unsent(c.conn, 2_500, h.now_ns),
        Consumed::Drained
    );
    h.delta(BTC);
    assert_eq!(h.core.stats().dropped_deltas, 1, "2,500 > high-water");
    // The kernel sends it all: the resync comes now, not at a write.
    assert_eq!(
        h.core.handle_kernel_unsent(c.conn, 0, h.now_ns),
        Consumed::ResyncDue
    );
    h.serve();
    c.read_all(&mut h.core, h.now_ns);
    let types = c.types();
    assert!(
        types.contains(&"stale:slow_consumer".to_string()),
        "{types:?}"
    );
    assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
    assert_eq!(h.core.stats().resync_lag.count, 1);
}

/// PROTOCOL §7 wherever the backlog sits: older than the max lag, in the
/// queue (a blocked socket) or unsent in the kernel, closes 4001; a
/// backlog younger than it does not.
#[test]
fn a_backlog_older_than_the_max_lag_closes_4001_queued_or_in_the_kernel() {
    for in_kernel in [false, true] {
        let mut h = H::new(small_limits());
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
        h.serve();
        c.read_all(&mut h.core, h.now_ns);
        // A few deltas, well under high-water, that the client never gets.
        h.delta(BTC);
        h.delta(BTC);
        if in_kernel {
            // Written to the socket, all unsent.
            let n = c.read(&mut h.core, usize::MAX / 2, h.now_ns);
            assert_eq!(
                h.core.handle_kernel_unsent(c.conn, n, h.now_ns),
                Consumed::Drained
            );
            assert!(h.core.outbox(c.conn).is_empty());
            assert_eq!(h.core.kernel_backlogged().count(), 1);
        } else {
            h.core.handle_blocked(c.conn);
        }
        assert_eq!(h.core.stats().dropped_deltas, 0);
        h.now_ns += 1_000_000; // exactly the max lag: not yet
        assert_eq!(h.core.handle_timeout(h.now_ns), 0);
        assert!(h.core.stats().oldest_backlog_age_ns >= 1_000_000);
        h.now_ns += 1;
        assert_eq!(h.core.handle_timeout(h.now_ns), 1, "in_kernel={in_kernel}");
        assert_eq!(
            h.core.poll_close().map(|(id, code, _)| (id, code)),
            Some((c.conn, CloseCode(4001)))
        );
        assert_eq!(h.core.stats().lag_closes, 1);
    }
    // A client that keeps up leaves the list and is never closed.
    let mut h = H::new(small_limits());
    let mut c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.serve();
    h.core.handle_blocked(c.conn);
    c.read_all(&mut h.core, h.now_ns);
    h.core.handle_kernel_unsent(c.conn, 0, h.now_ns);
    h.now_ns += 10_000_000;
    assert_eq!(h.core.handle_timeout(h.now_ns), 0);
    assert!(h.core.poll_close().is_none());
    assert_eq!(h.core.stats().oldest_backlog_age_ns, 0);
}

/// Every connection written since its last measure is handed out once
/// (the shell measures them once a second); closed ones are skipped.
#[test]
fn written_connections_are_handed_out_once_for_a_measure() {
    let mut h = H::new(cfg());
    let mut a = h.client(Encoding::Proto);
    let mut b = h.client(Encoding::Json);
    let mut gone = h.client(Encoding::Proto);
    for c in [&a, &b, &gone] {
        h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
    }
    h.serve();
    for c in [&mut a, &mut b, &mut gone] {
        c.read_all(&mut h.core, h.now_ns);
    }
    h.core.close_conn(gone.conn);
    let mut got: Vec<_> = std::iter::from_fn(|| h.core.poll_unmeasured()).collect();
    got.sort();
    assert_eq!(got, vec![a.conn, b.conn]);
    assert_eq!(h.core.poll_unmeasured(), None, "once until written again");
    h.delta(BTC);
    a.read_all(&mut h.core, h.now_ns);
    assert_eq!(h.core.poll_unmeasured(), Some(a.conn));
}

/// The kernel's oldest unsent byte is dated by the write it came from:
/// when every unsent byte is from the last write, that write's oldest
/// frame; when more is unsent, the older estimate stands.
#[test]
fn kernel_backlog_age_follows_the_writes_it_came_from() {
    let mut h = H::new(small_limits());
    let mut c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.serve();
    c.read_all(&mut h.core, h.now_ns);
    let t0 = h.now_ns;
    h.delta(BTC);
    let first = c.read(&mut h.core, usize::MAX / 2, h.now_ns);
    h.core.handle_kernel_unsent(c.conn, first, h.now_ns);
    h.now_ns += 500_000;
    h.delta(BTC);
    let second = c.read(&mut h.core, usize::MAX / 2, h.now_ns);
    // Both writes unsent: the age is the first one's.
    h.core
        .handle_kernel_unsent(c.conn, first + second, h.now_ns);
    h.now_ns += 400_000;
    h.core.handle_timeout(h.now_ns);
    assert_eq!(h.core.stats().oldest_backlog_age_ns, h.now_ns - t0);
    // The first write was sent: only the second's bytes remain.
    h.core.handle_kernel_unsent(c.conn, second, h.now_ns);
    h.core.handle_timeout(h.now_ns);
    assert_eq!(h.core.stats().oldest_backlog_age_ns, 400_000);
}

#[test]
fn idle_buffers_are_released_after_the_grace_period() {
    let mut h = H::new(WorkerConfig {
        idle_release_ns: 100,
        ..cfg()
    });
    let mut c = h.client(Encoding::Proto);
    assert_eq!(h.core.stats().queue_capacity_bytes, 0);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    c.read_all(&mut h.core, h.now_ns);
    assert!(h.core.stats().queue_capacity_bytes > 0, "kept while hot");
    h.core.handle_timeout(h.now_ns + 99);
    assert!(h.core.stats().queue_capacity_bytes > 0);
    h.core.handle_timeout(h.now_ns + 100);
    assert_eq!(h.core.stats().queue_capacity_bytes, 0);
    assert_eq!(h.core.stats().idle_list, 0);
}

/// A storm (5,000 connections served their snapshots at once) grows the
/// lists of connections; once they empty, their room is given back rather
/// than staying resident.
#[test]
fn lists_grown_by_a_storm_give_their_room_back() {
    let mut h = H::new(WorkerConfig {
        idle_release_ns: 100,
        ..cfg()
    });
    let mut clients: Vec<_> = (0..5_000).map(|_| h.client(Encoding::Proto)).collect();
    for c in &clients {
        h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
    }
    for c in &mut clients {
        c.read_all(&mut h.core, h.now_ns);
    }
    let stormy = h.core.stats();
    assert_eq!(stormy.idle_list, 5_000);
    assert!(stormy.lists_room >= 10_000, "{}", stormy.lists_room);
    // The shell takes the written connections off the dirty queue and
    // measures their sockets' kernel backlog meanwhile.
    while h.core.poll_dirty().is_some() {}
    while h.core.poll_unmeasured().is_some() {}
    h.core.handle_timeout(h.now_ns + 100);
    let calm = h.core.stats();
    assert_eq!(calm.idle_list, 0);
    assert!(calm.lists_room <= 6 * 1024, "{}", calm.lists_room);
}
