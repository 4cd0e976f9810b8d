//! Delivery of ring messages: feed Stale and book replacement, ring drops,
//! gaps, JSON interest, stale answers, batched delivery against one message
//! at a time (proptest), and a cost-per-delivery bench (`#[ignore]`).

use std::io::IoSlice;

use proptest::prelude::*;

use super::harness::*;
use crate::book::SymbolId;
use crate::book::market::FeedStale;
use crate::fanout::ring::{ToIngest, ToWorker};
use crate::fanout::worker::{ConnId, Encoding, WorkerConfig, WorkerCore};
use crate::wire::{Rendering, Renderings};

#[test]
fn feed_gap_then_book_replaced() {
    let mut h = H::new(cfg());
    let mut book = h.client(Encoding::Proto);
    let mut trades = h.client(Encoding::Json);
    h.text(&book, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&trades, &sub_text(&["BTC-USD"], &["trades"], 2));
    h.serve();
    h.delta(BTC);
    let m = h.ing.feed_stale(BTC, FeedStale::FeedGap);
    h.ring(m);
    let t = h.ing.trade(BTC);
    h.ring(t); // trades keep flowing through a gap
    let m = h.ing.replace(BTC);
    h.ring(m);
    h.delta(BTC);
    book.read_all(&mut h.core, h.now_ns);
    trades.read_all(&mut h.core, h.now_ns);
    assert_eq!(
        book.types(),
        vec![
            "subscribed",
            "snapshot",
            "delta",
            "stale:feed_gap",
            "snapshot",
            "delta"
        ]
    );
    assert_eq!(trades.types(), vec!["subscribed", "trade"]);
    assert_eq!(book.books["BTC-USD"].1, h.ing.truth(BTC));
    assert!(
        h.drain_to_ingest().is_empty(),
        "the snapshot comes from the feed: no request"
    );
}

#[test]
fn feed_down_reaches_trades_and_new_subscribers_wait_for_the_feed() {
    let mut h = H::new(cfg());
    let mut book = h.client(Encoding::Json);
    let mut trades = h.client(Encoding::Proto);
    h.text(&book, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&trades, &sub_text(&["BTC-USD"], &["trades"], 2));
    h.serve();
    let m = h.ing.feed_stale(BTC, FeedStale::FeedDown);
    h.ring(m);
    // A late subscriber to the stale book: Subscribed, Stale at once.
    let mut late = h.client(Encoding::Proto);
    h.text(&late, &sub_text(&["BTC-USD"], &["book"], 3));
    assert_eq!(
        h.drain_to_ingest(),
        vec![ToIngest::SnapshotRequest { symbol: BTC }]
    );
    h.ring(ToWorker::Snapshot {
        symbol: BTC,
        seq: 1,
        frames: None,
        stale: Some(FeedStale::FeedDown),
    });
    h.delta(BTC); // cannot happen while stale, but must not reach anyone waiting
    let m = h.ing.replace(BTC);
    h.ring(m);
    h.delta(BTC);
    book.read_all(&mut h.core, h.now_ns);
    trades.read_all(&mut h.core, h.now_ns);
    late.read_all(&mut h.core, h.now_ns);
    assert_eq!(
        book.types(),
        vec![
            "subscribed",
            "snapshot",
            "stale:feed_down",
            "snapshot",
            "delta"
        ]
    );
    assert_eq!(trades.types(), vec!["subscribed", "stale:feed_down"]);
    assert_eq!(
        late.types(),
        vec!["subscribed", "stale:feed_down", "snapshot", "delta"]
    );
    assert_eq!(late.books["BTC-USD"].1, h.ing.truth(BTC));
}

#[test]
fn ring_drops_give_stale_then_resync() {
    let mut h = H::new(cfg());
    let mut a = h.client(Encoding::Proto);
    let mut b = h.client(Encoding::Json);
    h.text(&a, &sub_text(&["BTC-USD"], &["book", "trades"], 1));
    h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
    h.serve();
    h.delta(BTC);
    // The ingest ring lost 3 deltas and 2 trades.
    for _ in 0..3 {
        h.ing.delta(BTC);
    }
    h.ing.trade(BTC);
    h.ing.trade(BTC);
    h.ring(ToWorker::Dropped {
        symbol: BTC,
        deltas: 3,
        trades: 2,
        feed_down: false,
    });
    assert_eq!(h.serve(), vec![ToIngest::SnapshotRequest { symbol: BTC }]);
    h.delta(BTC);
    let t = h.ing.trade(BTC);
    h.ring(t);
    for c in [&mut a, &mut b] {
        c.read_all(&mut h.core, h.now_ns);
        let evs = c.take();
        let stale = evs
            .iter()
            .find(|e| e.reason == "slow_consumer")
            .expect("stale");
        assert_eq!(stale.dropped, 3);
        assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
        assert_eq!(evs.iter().filter(|e| e.ty == "snapshot").count(), 2);
    }
    // a also had trades: the loss is reported, the stream restarts.
    h.text(&a, &sub_text(&["ETH-USD"], &["book"], 3));
    a.read_all(&mut h.core, h.now_ns);
    assert_eq!(h.core.stats().contiguity_violations, 0);
    assert_eq!(h.core.stats().ring_dropped_trades, 2);
}

/// PROTOCOL §4: `feed_down` reaches every subscriber, trades-only ones
/// too, even when the notice itself was lost in a full ring.
#[test]
fn a_feed_down_lost_in_the_ring_still_reaches_trades_only_subscribers() {
    let mut h = H::new(cfg());
    let mut a = h.client(Encoding::Proto);
    let mut b = h.client(Encoding::Json);
    h.text(&a, &sub_text(&["BTC-USD"], &["trades"], 1));
    h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
    h.serve();
    // The ring lost the feed_down notice (counted as a book message).
    h.ring(ToWorker::Dropped {
        symbol: BTC,
        deltas: 1,
        trades: 0,
        feed_down: true,
    });
    a.read_all(&mut h.core, h.now_ns);
    let stales: Vec<_> = a
        .take()
        .into_iter()
        .filter(|e| e.ty == "stale")
        .map(|e| e.reason)
        .collect();
    assert_eq!(stales, vec!["feed_down"]);
    // The book subscriber resyncs as for any ring drop.
    assert!(
        h.drain_to_ingest()
            .contains(&ToIngest::SnapshotRequest { symbol: BTC })
    );
    b.read_all(&mut h.core, h.now_ns);
    assert!(b.take().iter().any(|e| e.reason == "slow_consumer"));
}

#[test]
fn ring_dropped_trades_report_slow_consumer_trades() {
    let mut h = H::new(cfg());
    let mut a = h.client(Encoding::Proto);
    h.text(&a, &sub_text(&["BTC-USD"], &["trades"], 1));
    let t = h.ing.trade(BTC);
    h.ring(t);
    h.ing.trade(BTC);
    h.ring(ToWorker::Dropped {
        symbol: BTC,
        deltas: 0,
        trades: 1,
        feed_down: false,
    });
    let t = h.ing.trade(BTC);
    h.ring(t);
    a.read_all(&mut h.core, h.now_ns);
    let evs = a.take();
    let got: Vec<_> = evs
        .iter()
        .map(|e| (e.ty.as_str(), e.seq, e.dropped))
        .collect();
    assert_eq!(
        got,
        vec![
            ("subscribed", 0, 0),
            ("trade", 1, 0),
            ("stale", 0, 1),
            ("trade", 3, 0)
        ]
    );
    assert_eq!(evs[2].reason, "slow_consumer_trades");
    assert_eq!(h.core.stats().contiguity_violations, 0);
    assert!(
        h.drain_to_ingest()
            .iter()
            .all(|m| !matches!(m, ToIngest::SnapshotRequest { .. }))
    );
}

#[test]
fn a_gap_is_never_sent_the_client_is_resynced() {
    let mut h = H::new(cfg());
    let mut c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.serve();
    h.delta(BTC);
    h.ing.delta(BTC); // lost without a Dropped notice: an ingest bug
    h.delta(BTC);
    assert_eq!(h.core.stats().contiguity_violations, 1);
    assert_eq!(h.serve(), vec![ToIngest::SnapshotRequest { symbol: BTC }]);
    h.delta(BTC);
    c.read_all(&mut h.core, h.now_ns); // the client asserts contiguity itself
    assert_eq!(
        c.types(),
        vec!["subscribed", "snapshot", "delta", "snapshot", "delta"]
    );
    assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
}

#[test]
fn json_client_joining_a_proto_request_asks_again_for_json() {
    let mut h = H::new(cfg());
    let mut p = h.client(Encoding::Proto);
    let mut j = h.client(Encoding::Json);
    h.text(&p, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&j, &sub_text(&["BTC-USD"], &["book"], 2));
    let polled = h.drain_to_ingest();
    assert_eq!(
        polled.last(),
        Some(&ToIngest::Rendering {
            symbol: BTC,
            rendering: Rendering::Json,
            on: true,
        })
    );
    // The answer was encoded before the Json interest arrived.
    let ToWorker::Snapshot {
        symbol,
        seq,
        frames: Some(frames),
        ..
    } = h.ing.answer(BTC)
    else {
        unreachable!()
    };
    h.ring(ToWorker::Snapshot {
        symbol,
        seq,
        frames: Some(frames.only(Renderings::NONE)),
        stale: None,
    });
    assert_eq!(h.serve(), vec![ToIngest::SnapshotRequest { symbol: BTC }]);
    h.delta(BTC);
    p.read_all(&mut h.core, h.now_ns);
    j.read_all(&mut h.core, h.now_ns);
    assert_eq!(p.types(), vec!["subscribed", "snapshot", "delta"]);
    assert_eq!(j.types(), vec!["subscribed", "snapshot", "delta"]);
}

#[test]
fn answers_from_before_interest_went_away_are_ignored() {
    let mut h = H::new(cfg());
    let mut c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&c, &unsub_text(&["BTC-USD"], &["book"], 2));
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 3));
    let polled = h.drain_to_ingest();
    assert_eq!(
        polled
            .iter()
            .filter(|m| matches!(m, ToIngest::SnapshotRequest { .. }))
            .count(),
        2
    );
    let old = h.ing.answer(BTC);
    h.ring(old);
    h.ing.delta(BTC); // not routed: no interest at the time
    let fresh = h.ing.answer(BTC);
    h.ring(fresh);
    h.delta(BTC);
    c.read_all(&mut h.core, h.now_ns);
    let got: Vec<_> = c.take().into_iter().map(|e| (e.ty, e.seq)).collect();
    assert_eq!(
        got,
        vec![
            ("subscribed".into(), 0),
            ("unsubscribed".into(), 0),
            ("subscribed".into(), 0),
            ("snapshot".into(), 2),
            ("delta".into(), 3)
        ]
    );
    assert_eq!(h.core.stats().snapshot_answers_ignored, 1);
}

/// Takes up to `budget` bytes of `conn`'s queue, as a socket would.
fn take_bytes(core: &mut WorkerCore, conn: ConnId, budget: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut slices = [IoSlice::new(&[]); 8];
        let k = core.io_slices(conn, &mut slices);
        let before = out.len();
        for s in &slices[..k] {
            let room = budget - out.len();
            out.extend_from_slice(&s[..s.len().min(room)]);
        }
        let took = out.len() - before;
        if took == 0 {
            return out;
        }
        core.handle_written(conn, took, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// `handle_ring_batch` (runs of deltas delivered subscriber by
    /// subscriber) gives every client the same bytes and the worker the
    /// same counters as `handle_ring` one message at a time, slow
    /// consumers, drops and resyncs included.
    #[test]
    fn batched_delivery_equals_one_message_at_a_time(
        clients in proptest::collection::vec((any::<bool>(), 1u8..8), 1..6),
        steps in proptest::collection::vec((proptest::collection::vec(0u8..10, 1..12), 0usize..700), 1..40),
    ) {
        let cfg = WorkerConfig { high_water_bytes: 600, low_water_bytes: 200, ..cfg() };
        let (mut one, mut batched) = (H::new(cfg), H::new(cfg));
        let mut conns = Vec::new();
        for &(json, mask) in &clients {
            let enc = if json { Encoding::Json } else { Encoding::Proto };
            let (a, b) = (one.client(enc), batched.client(enc));
            let text = sub_text(&pick(mask, &NAMES), &["book", "trades"], 1);
            one.text(&a, &text);
            batched.text(&b, &text);
            conns.push((a.conn, b.conn));
        }
        // One ingest (`one.ing`) feeds both workers, and answers their
        // snapshot requests, which must be the same.
        let serve = |one: &mut H, batched: &mut H| -> Result<(), TestCaseError> {
            let asked = one.drain_to_ingest();
            prop_assert_eq!(&asked, &batched.drain_to_ingest());
            for m in &asked {
                if let ToIngest::SnapshotRequest { symbol } = m {
                    let answer = one.ing.answer(*symbol);
                    one.ring(answer.clone());
                    batched.core.handle_ring_batch(&mut vec![answer], batched.now_ns);
                }
            }
            Ok(())
        };
        serve(&mut one, &mut batched)?;
        for (kinds, budget) in steps {
            let mut chunk = Vec::new();
            for k in kinds {
                let symbol = SymbolId(u32::from(k % 3));
                chunk.push(if k >= 8 { one.ing.trade(symbol) } else { one.ing.delta(symbol) });
            }
            for m in &chunk {
                one.ring(m.clone());
            }
            batched.core.handle_ring_batch(&mut chunk, batched.now_ns);
            prop_assert!(chunk.is_empty());
            serve(&mut one, &mut batched)?;
            for &(a, b) in &conns {
                prop_assert_eq!(take_bytes(&mut one.core, a, budget), take_bytes(&mut batched.core, b, budget));
            }
            serve(&mut one, &mut batched)?;
        }
        for &(a, b) in &conns {
            prop_assert_eq!(take_bytes(&mut one.core, a, usize::MAX), take_bytes(&mut batched.core, b, usize::MAX));
        }
        // Runs are queued as one frame per subscriber: the batched queues
        // hold fewer entries, so their buffers may be smaller; nothing else differs.
        let (a, mut b) = (one.core.stats(), batched.core.stats());
        prop_assert!(b.queue_capacity_bytes <= a.queue_capacity_bytes);
        b.queue_capacity_bytes = a.queue_capacity_bytes;
        prop_assert_eq!(a, b);
    }
}

/// CPU time of this thread, ns (Linux schedstat; wall time lies on a
/// shared, loaded machine).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// Cost per delivery on the hot path. Run with
/// `cargo test --release --lib fanout::worker -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_delta_fanout_per_delivery() {
    let subscribers: usize = std::env::var("BENCH_SUBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut h = H::new(WorkerConfig {
        high_water_bytes: usize::MAX / 4,
        hard_limit_bytes: usize::MAX / 2,
        ..cfg()
    });
    let clients: Vec<Client> = (0..subscribers)
        .map(|i| {
            h.client(if i % 10 == 0 {
                Encoding::Json
            } else {
                Encoding::Proto
            })
        })
        .collect();
    for c in &clients {
        h.text(c, &sub_text(&["BTC-USD"], &["book"], 1));
    }
    h.serve();
    let ticks = 400;
    let deltas: Vec<ToWorker> = (0..ticks).map(|_| h.ing.delta(BTC)).collect();
    let (mut fanout, mut flush) = (0u64, 0u64);
    let mut deltas = deltas.into_iter();
    for turn in 0..ticks / 16 {
        // One loop turn: 16 ticks fanned out, then one flush, as the shell does.
        let t0 = thread_cpu_ns();
        for d in deltas.by_ref().take(16) {
            h.core.handle_ring(d, 0);
        }
        let t1 = thread_cpu_ns();
        while let Some(conn) = h.core.poll_dirty() {
            let n: usize = {
                let mut slices = [IoSlice::new(&[]); 64];
                let k = h.core.io_slices(conn, &mut slices);
                slices[..k].iter().map(|s| s.len()).sum()
            };
            h.core.handle_written(conn, n, 0);
        }
        if turn >= ticks / 32 {
            // The first half warms the queues up.
            fanout += t1 - t0;
            flush += thread_cpu_ns() - t1;
        }
    }
    let n = ((ticks / 16 - ticks / 32) * 16 * subscribers) as f64;
    eprintln!(
        "{subscribers} subscribers: handle_ring {:.1} ns per delivery; flush bookkeeping {:.1} ns per delivery",
        fanout as f64 / n,
        flush as f64 / n
    );
}
