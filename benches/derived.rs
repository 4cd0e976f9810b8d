//! The market thread's cost per delta for a `book.10` subscription on a
//! 1,000-level book: apply the delta ([`OrderBook::apply_updates`]), then
//! compute the `book.10` delta ([`TopN::handle_delta`]). Measured next to the
//! apply alone, in the same run: the difference is what the `book.10` view
//! adds per delta. Also capture + apply: what a `book@Tms` view's
//! [`LevelChanges::capture`] (from the book before the delta) adds.
//!
//! Two streams: the synthetic market's (1–5 updates a delta, activity
//! concentrated near the touch but spread over the whole depth: about 5.5%
//! of its deltas change the top 10), and a worst case where every delta
//! changes a level of the top 10 (the O(N) diff and the §5 checksum of the
//! 20 levels run every time).
//!
//! And the dashboard pair, `book.10` and `book.10@100ms` fed together
//! (`apply_top10_and_top10_at_100ms`): issue 15's target is under 1 µs per
//! delta for the two views, i.e. this minus `apply`.
//!
//! Run: `cargo bench --bench derived`.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use tickwire::book::book::{OrderBook, Side, UpdateScratch};
use tickwire::book::derived::{ConflatedTopN, Depth, Interval, LevelChanges, TopN};
use tickwire::book::synth::{Rng, SynthConfig, SynthMarket};
use tickwire::wire::pb;
use tickwire::wire::pb::ingest_message::Body;

const DEPTH: usize = 1_000;
const STREAM_DELTAS: usize = 100_000;
const MAX_LEVELS: usize = 10_000;

/// A starting book and a stream of deltas that applies to it in order.
struct Stream {
    start: OrderBook,
    deltas: Vec<Vec<pb::LevelUpdate>>,
}

/// The synthetic market's deltas on one 1,000-level book.
fn synth_stream() -> &'static Stream {
    static S: OnceLock<Stream> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = SynthMarket::new(SynthConfig {
            seed: 7,
            symbols: 1,
            depth: DEPTH,
            trade_ratio: 0.0,
            max_updates_per_delta: 5,
            ..SynthConfig::default()
        });
        let start = s.book(0).expect("one symbol").clone();
        let deltas = (0..STREAM_DELTAS)
            .map(|_| match s.next_event(0).body {
                Some(Body::Delta(d)) => d.updates,
                _ => unreachable!("trade_ratio is 0"),
            })
            .collect();
        Stream { start, deltas }
    })
}

/// Every delta sets a new size on one of the top 10 levels of a side.
fn touch_stream() -> &'static Stream {
    static S: OnceLock<Stream> = OnceLock::new();
    S.get_or_init(|| {
        let start = synth_stream().start.clone();
        let mut rng = Rng::new(11);
        let deltas = (0..STREAM_DELTAS)
            .map(|_| {
                let side = if rng.below(2) == 0 {
                    Side::Bid
                } else {
                    Side::Ask
                };
                let level = start.nth(side, rng.below(10) as usize).expect("deep book");
                vec![pb::LevelUpdate {
                    side: side.to_pb() as i32,
                    price: level.price,
                    size: 1 + rng.below(1_000) as i64,
                }]
            })
            .collect();
        Stream { start, deltas }
    })
}

/// What is done per delta.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    Apply,
    ApplyTop10,
    CaptureApply,
    /// The dashboard pair of issue 15: `book.10` and `book.10@100ms` views
    /// both fed, the clock advancing 100 µs per delta (10,000 deltas/s on
    /// the symbol: one conflated emission per 1,000 deltas).
    ApplyTop10AndConflated,
}

/// Times `iters` deltas of `stream`.
fn run(stream: &Stream, work: Work, iters: u64) -> Duration {
    let mut book = stream.start.clone();
    let mut scratch = UpdateScratch::default();
    let mut changes = LevelChanges::new();
    let depth = Depth::new(10).expect("1..=100");
    let mut view = TopN::new(depth, 1, &book);
    let mut conflated = ConflatedTopN::new(depth, Interval::Ms100, 1, &book, 0);
    let mut now_ns = 0u64;
    let mut seq = 1;
    let mut done = 0u64;
    let mut elapsed = Duration::ZERO;
    while done < iters {
        let n = (iters - done).min(stream.deltas.len() as u64) as usize;
        let start = Instant::now();
        for updates in &stream.deltas[..n] {
            seq += 1;
            if work == Work::CaptureApply {
                changes.capture(&book, updates);
                black_box(&changes);
            }
            book.apply_updates(updates, MAX_LEVELS, &mut scratch)
                .expect("a consistent stream");
            if work == Work::ApplyTop10 {
                black_box(view.handle_delta(seq, updates, &book));
            }
            if work == Work::ApplyTop10AndConflated {
                now_ns += 100_000;
                black_box(view.handle_delta(seq, updates, &book));
                conflated.handle_delta(seq);
                black_box(conflated.poll_emit(now_ns, &book));
            }
        }
        elapsed += start.elapsed();
        done += n as u64;
        // Replay from the start (untimed).
        book = stream.start.clone();
        view.reset(seq, &book);
        conflated.reset(seq, &book, now_ns);
    }
    black_box(&book);
    elapsed
}

fn derived(c: &mut Criterion) {
    let mut g = c.benchmark_group("book_n_per_delta_1000_levels");
    for (name, stream) in [("synth", synth_stream()), ("touch", touch_stream())] {
        for (work_name, work) in [
            ("apply", Work::Apply),
            ("apply_top10", Work::ApplyTop10),
            ("capture_apply", Work::CaptureApply),
            (
                "apply_top10_and_top10_at_100ms",
                Work::ApplyTop10AndConflated,
            ),
        ] {
            g.bench_function(format!("{name}_{work_name}"), |b| {
                b.iter_custom(|n| run(stream, work, n))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, derived);
criterion_main!(benches);
