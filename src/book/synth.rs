//! A synthetic, seeded market: what an exchange feed handler would send, for
//! the demo mode, the load generator and tests.
//!
//! [`SynthMarket`] keeps its own book per symbol so that every delta it
//! produces is consistent: removals target existing levels, books stay
//! uncrossed and near the configured depth, and the stream applied to a
//! [`Market`](super::market::Market) yields zero rejections. Same seed and same
//! calls ⇒ same stream, on any machine ([`Rng`] is xoshiro256**, no
//! platform-dependent floats beyond IEEE arithmetic).
//!
//! Run by whichever thread drives a feed (demo feed, loadgen). It never does
//! I/O, never reads a clock (timestamps are arguments) and never panics,
//! whatever the configuration.

use crate::wire::pb;
use crate::wire::pb::ingest_message::Body;

use super::book::{OrderBook, Side};

/// A small seeded PRNG: xoshiro256** (Blackman & Vigna), state seeded by
/// splitmix64 as its authors recommend. Not cryptographic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        // splitmix64 is a bijection of distinct counters: at most one of the
        // four words is 0, never the all-zero state xoshiro must avoid.
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (multiply-shift; bias below 2^-64 · n); 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p` (≤ 0: never; ≥ 1: always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit_f64() < p
    }
}

/// What to simulate. Out-of-range values are clamped (see each field), never
/// an error.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub seed: u64,
    /// Number of symbols, 1..=100 000: `BTC-USD`, `ETH-USD`, … (ten real
    /// names) then `SYN-010`, `SYN-011`, … Memory is about
    /// `symbols × depth × 32` bytes.
    pub symbols: usize,
    /// Target levels per side, 1..=10 000.
    pub depth: usize,
    /// Zipf exponent `s` of activity across symbols: symbol `i` (0-based) is
    /// picked with weight `1 / (i + 1)^s`. 0 is uniform; negative or non-finite
    /// is taken as 0.
    pub zipf_exponent: f64,
    /// Fraction of events that are trades, 0..=1 (non-finite: 0). Each trade is
    /// followed by the delta that takes its size off the book.
    pub trade_ratio: f64,
    /// Most level updates in one delta, 1..=64 (each delta has 1..=this).
    pub max_updates_per_delta: usize,
}

impl Default for SynthConfig {
    fn default() -> SynthConfig {
        SynthConfig {
            seed: 1,
            symbols: 10,
            depth: 50,
            zipf_exponent: 1.1,
            trade_ratio: 0.1,
            max_updates_per_delta: 5,
        }
    }
}

/// The real names: (symbol, mid price mantissa, price decimals, size decimals).
const NAMED: [(&str, i64, u32, u32); 10] = [
    ("BTC-USD", 3_000_000, 2, 4), // 30000.00
    ("ETH-USD", 200_000, 2, 4),   // 2000.00
    ("SOL-USD", 150_000, 3, 2),   // 150.000
    ("XRP-USD", 5_000, 4, 1),     // 0.5000
    ("DOGE-USD", 8_000, 5, 0),    // 0.08000
    ("ADA-USD", 3_500, 4, 1),     // 0.3500
    ("AVAX-USD", 3_500, 2, 3),    // 35.00
    ("LINK-USD", 14_000, 3, 2),   // 14.000
    ("DOT-USD", 6_000, 3, 2),     // 6.000
    ("LTC-USD", 7_000, 2, 4),     // 70.00
];

/// Most symbols a synthetic market simulates.
const MAX_SYMBOLS: usize = 100_000;

/// Probability that the mid price moves one tick before a delta.
const MID_MOVE_CHANCE: f64 = 0.2;

/// One simulated instrument.
///
/// # Invariants
///
/// - Every bid is below `mid` and every ask above it: the book is uncrossed.
/// - `book` is what a client holds after the snapshot and every event so far.
#[derive(Debug, Clone)]
struct SynthSymbol {
    name: String,
    price_decimals: u32,
    size_decimals: u32,
    /// Mid price mantissa; levels sit at `mid ± k` for k ≥ 1 (tick = 1 mantissa unit).
    mid: i64,
    /// Largest size mantissa of a new level.
    max_size: i64,
    book: OrderBook,
    /// The feed sequence of the last event sent (the snapshot's before any delta).
    feed_seq: u64,
    trades: u64,
}

/// A seeded synthetic market; see the module doc.
#[derive(Debug, Clone)]
pub struct SynthMarket {
    cfg: SynthConfig,
    rng: Rng,
    symbols: Vec<SynthSymbol>,
    /// Cumulative Zipf weights, normalised to end at 1.
    cdf: Vec<f64>,
    /// The book reaction to the last trade, sent as the next event.
    /// (symbol, side, price, new size).
    pending: Option<(usize, Side, i64, i64)>,
}

impl SynthMarket {
    pub fn new(cfg: SynthConfig) -> SynthMarket {
        let cfg = SynthConfig {
            symbols: cfg.symbols.clamp(1, MAX_SYMBOLS),
            depth: cfg.depth.clamp(1, 10_000),
            zipf_exponent: if cfg.zipf_exponent.is_finite() {
                cfg.zipf_exponent.max(0.0)
            } else {
                0.0
            },
            trade_ratio: if cfg.trade_ratio.is_finite() {
                cfg.trade_ratio.clamp(0.0, 1.0)
            } else {
                0.0
            },
            max_updates_per_delta: cfg.max_updates_per_delta.clamp(1, 64),
            ..cfg
        };
        let mut rng = Rng::new(cfg.seed);
        let symbols = (0..cfg.symbols)
            .map(|i| new_symbol(i, cfg.depth, &mut rng))
            .collect();
        let mut cdf: Vec<f64> = Vec::with_capacity(cfg.symbols);
        let mut total = 0.0;
        for i in 0..cfg.symbols {
            total += ((i + 1) as f64).powf(-cfg.zipf_exponent);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        SynthMarket {
            cfg,
            rng,
            symbols,
            cdf,
            pending: None,
        }
    }

    /// The configuration in use, after clamping.
    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Symbol names, by index (the hottest first).
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.symbols.iter().map(|s| s.name.as_str())
    }

    /// The index of `name`; a linear scan (O(symbols)), for tests and setup.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.symbols.iter().position(|s| s.name == name)
    }

    /// The book a client holds for symbol `i` after everything sent so far.
    pub fn book(&self, i: usize) -> Option<&OrderBook> {
        self.symbols.get(i).map(|s| &s.book)
    }

    /// `(price_decimals, size_decimals)` of symbol `i`.
    pub fn decimals(&self, i: usize) -> Option<(u32, u32)> {
        self.symbols
            .get(i)
            .map(|s| (s.price_decimals, s.size_decimals))
    }

    /// One snapshot per symbol of the current books, with each symbol's
    /// current feed seq (the next delta carries that + 1).
    pub fn snapshots(&self, exchange_ts_ns: u64) -> Vec<pb::IngestMessage> {
        (0..self.symbols.len())
            .map(|i| self.snapshot(i, exchange_ts_ns))
            .collect()
    }

    /// The snapshot of symbol `i` (a feed resync); `i` is taken modulo
    /// the number of symbols.
    pub fn snapshot(&self, i: usize, exchange_ts_ns: u64) -> pb::IngestMessage {
        let s = &self.symbols[i % self.symbols.len()];
        pb::IngestMessage {
            body: Some(Body::Snapshot(pb::BookSnapshot {
                symbol: s.name.clone(),
                seq: s.feed_seq,
                bids: s.book.snapshot_levels(Side::Bid),
                asks: s.book.snapshot_levels(Side::Ask),
                price_decimals: s.price_decimals as i32,
                size_decimals: s.size_decimals as i32,
                exchange_ts_ns,
                ingest_ts_ns: 0,
                checksum: 0,
                epoch: 0,
                channel: String::new(),
            })),
        }
    }

    /// The next event: a delta with its symbol's next feed seq, or a trade.
    pub fn next_event(&mut self, exchange_ts_ns: u64) -> pb::IngestMessage {
        if let Some((i, side, price, size)) = self.pending.take() {
            let mut updates = Vec::with_capacity(1);
            push(&mut self.symbols[i], &mut updates, side, price, size);
            return self.delta(i, updates, exchange_ts_ns);
        }
        let i = self.pick_symbol();
        if self.rng.chance(self.cfg.trade_ratio)
            && let Some(msg) = self.trade(i, exchange_ts_ns)
        {
            return msg;
        }
        let updates = self.random_updates(i);
        self.delta(i, updates, exchange_ts_ns)
    }

    /// A Zipf-distributed symbol index.
    fn pick_symbol(&mut self) -> usize {
        let u = self.rng.unit_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.symbols.len() - 1)
    }

    /// Wraps `updates`, already applied to symbol `i`'s book, in a delta with
    /// the next feed seq.
    fn delta(
        &mut self,
        i: usize,
        updates: Vec<pb::LevelUpdate>,
        exchange_ts_ns: u64,
    ) -> pb::IngestMessage {
        let s = &mut self.symbols[i];
        s.feed_seq = s.feed_seq.wrapping_add(1);
        pb::IngestMessage {
            body: Some(Body::Delta(pb::BookDelta {
                symbol: s.name.clone(),
                seq: s.feed_seq,
                updates,
                exchange_ts_ns,
                ingest_ts_ns: 0,
                checksum: 0,
                prev_seq: 0,
                channel: String::new(),
            })),
        }
    }

    /// A trade at the touch of symbol `i`, and the pending delta that takes
    /// its size off the level it hit. `None` if the side it would hit is empty.
    fn trade(&mut self, i: usize, exchange_ts_ns: u64) -> Option<pb::IngestMessage> {
        let aggressor = if self.rng.below(2) == 0 {
            Side::Bid
        } else {
            Side::Ask
        };
        // A buyer lifts the best ask; a seller hits the best bid.
        let hit = if aggressor == Side::Bid {
            Side::Ask
        } else {
            Side::Bid
        };
        let level = self.symbols[i].book.best(hit)?;
        let size = 1 + self.rng.below(level.size as u64) as i64;
        let s = &mut self.symbols[i];
        s.trades += 1;
        self.pending = Some((i, hit, level.price, level.size - size));
        Some(pb::IngestMessage {
            body: Some(Body::Trade(pb::Trade {
                symbol: s.name.clone(),
                seq: s.trades,
                price: level.price,
                size,
                aggressor: aggressor.to_pb() as i32,
                exchange_ts_ns,
                ingest_ts_ns: 0,
                trade_id: format!("{}-{}", s.name, s.trades),
            })),
        })
    }

    /// 1..=max updates for symbol `i`, applied to its book: maybe a one-tick
    /// move of the mid (with the removal of the level it crosses), then
    /// inserts, updates and removals that pull each side towards the target
    /// depth, each chosen against the book as the ones before it leave it.
    fn random_updates(&mut self, i: usize) -> Vec<pb::LevelUpdate> {
        let target = self.cfg.depth;
        let n = 1 + self.rng.below(self.cfg.max_updates_per_delta as u64) as usize;
        let mut updates = Vec::with_capacity(n);
        let rng = &mut self.rng;
        let s = &mut self.symbols[i];
        if rng.chance(MID_MOVE_CHANCE) {
            let up = rng.below(2) == 0;
            s.mid = if up {
                s.mid.saturating_add(1)
            } else {
                s.mid.saturating_sub(1)
            };
            // Levels sit at ≥ 1 tick from the old mid, so at most one level,
            // the best of the side the mid moved towards, is now at the mid:
            // remove it.
            let side = if up { Side::Ask } else { Side::Bid };
            if let Some(best) = s.book.best(side)
                && best.price == s.mid
            {
                push(s, &mut updates, side, best.price, 0);
            }
        }
        while updates.len() < n {
            let side = if rng.below(2) == 0 {
                Side::Bid
            } else {
                Side::Ask
            };
            let depth = s.book.depth(side);
            let roll = rng.below(100);
            // (insert below, update below): the rest removes.
            let (ins, upd) = match depth.cmp(&target) {
                _ if depth == 0 => (100, 100),
                std::cmp::Ordering::Less => (50, 85),
                std::cmp::Ordering::Equal => (30, 70),
                std::cmp::Ordering::Greater => (15, 50),
            };
            if roll < ins {
                // A price within twice the target depth of the mid: about
                // half the ticks there hold a level at the target depth.
                let offset = 1 + rng.below(2 * target as u64) as i64;
                let price = match side {
                    Side::Bid => s.mid.saturating_sub(offset),
                    Side::Ask => s.mid.saturating_add(offset),
                };
                let size = 1 + rng.below(s.max_size as u64) as i64;
                push(s, &mut updates, side, price, size);
            } else if roll < upd || depth == 1 {
                // Activity concentrates near the touch: min of two uniforms.
                let k = rng.below(depth as u64).min(rng.below(depth as u64)) as usize;
                if let Some(level) = s.book.nth(side, k) {
                    let size = 1 + rng.below(s.max_size as u64) as i64;
                    push(s, &mut updates, side, level.price, size);
                }
            } else {
                let k = rng.below(depth as u64) as usize;
                if let Some(level) = s.book.nth(side, k) {
                    push(s, &mut updates, side, level.price, 0);
                }
            }
        }
        debug_assert!(s.book.invariants_hold());
        updates
    }
}

/// Applies one update to the simulated book and records it for the delta.
fn push(
    s: &mut SynthSymbol,
    updates: &mut Vec<pb::LevelUpdate>,
    side: Side,
    price: i64,
    size: i64,
) {
    s.book.apply(side, price, size);
    updates.push(pb::LevelUpdate {
        side: side.to_pb() as i32,
        price,
        size,
    });
}

/// Symbol `i` with a fresh book of `depth` levels per side.
fn new_symbol(i: usize, depth: usize, rng: &mut Rng) -> SynthSymbol {
    let (name, mid, price_decimals, size_decimals) = match NAMED.get(i) {
        Some(&(name, mid, pd, sd)) => (name.to_string(), mid, pd, sd),
        None => (
            format!("SYN-{i:03}"),
            1_000 + rng.below(100_000) as i64,
            2,
            4,
        ),
    };
    // Up to 5 units (0.0005 BTC … 5 BTC at 4 decimals).
    let max_size = 5 * 10i64.pow(size_decimals);
    let mut bids = Vec::with_capacity(depth);
    let mut asks = Vec::with_capacity(depth);
    for (side, levels) in [(Side::Bid, &mut bids), (Side::Ask, &mut asks)] {
        // `depth` distinct offsets among 1..=2·depth (a partial Fisher–Yates).
        let mut offsets: Vec<i64> = (1..=2 * depth as i64).collect();
        for k in 0..depth {
            let j = k + rng.below((offsets.len() - k) as u64) as usize;
            offsets.swap(k, j);
        }
        offsets.truncate(depth);
        offsets.sort_unstable();
        for off in offsets {
            let price = if side == Side::Bid {
                mid - off
            } else {
                mid + off
            };
            levels.push(pb::Level {
                price,
                size: 1 + rng.below(max_size as u64) as i64,
            });
        }
    }
    // Sorted best first with distinct prices and sizes > 0: always valid.
    let book = OrderBook::from_levels(&bids, &asks).unwrap_or_default();
    SynthSymbol {
        name,
        price_decimals,
        size_decimals,
        mid,
        max_size,
        book,
        feed_seq: 1_000 + rng.below(1_000_000),
        trades: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::FeedId;
    use crate::book::market::{Market, Published};

    fn cfg(seed: u64) -> SynthConfig {
        SynthConfig {
            seed,
            symbols: 12,
            depth: 20,
            trade_ratio: 0.2,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn rng_is_xoshiro256starstar() {
        // Reference: the first outputs of xoshiro256** from state [1, 2, 3, 4]
        // (the `rand_xoshiro` test vector), recomputed in Python:
        // M=(1<<64)-1; rotl=lambda x,k: ((x<<k)|(x>>(64-k)))&M; s=[1,2,3,4]
        // each step: r=rotl(s[1]*5&M,7)*9&M; t=s[1]<<17&M; s[2]^=s[0]; s[3]^=s[1];
        //            s[1]^=s[2]; s[0]^=s[3]; s[2]^=t; s[3]=rotl(s[3],45)
        let mut r = Rng { s: [1, 2, 3, 4] };
        let expect = [11520u64, 0, 1509978240, 1215971899390074240];
        for e in expect {
            assert_eq!(r.next_u64(), e);
        }
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| c.next_u64()).collect::<Vec<_>>());
        for _ in 0..1000 {
            assert!(a.below(7) < 7);
            let u = a.unit_f64();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = SynthMarket::new(cfg(9));
        let mut b = SynthMarket::new(cfg(9));
        let mut c = SynthMarket::new(cfg(10));
        assert_eq!(a.snapshots(0), b.snapshots(0));
        assert_ne!(a.snapshots(0), c.snapshots(0));
        let mut differs = false;
        for ts in 0..2_000 {
            let ea = a.next_event(ts);
            assert_eq!(ea, b.next_event(ts));
            differs |= ea != c.next_event(ts);
        }
        assert!(differs);
    }

    #[test]
    fn names_decimals_and_depth() {
        let m = SynthMarket::new(SynthConfig {
            symbols: 12,
            depth: 30,
            ..SynthConfig::default()
        });
        let names: Vec<_> = m.names().collect();
        assert_eq!(&names[..3], &["BTC-USD", "ETH-USD", "SOL-USD"]);
        assert_eq!(&names[10..], &["SYN-010", "SYN-011"]);
        assert_eq!(m.decimals(0), Some((2, 4)));
        for i in 0..m.len() {
            let b = m.book(i).unwrap();
            assert_eq!((b.depth(Side::Bid), b.depth(Side::Ask)), (30, 30));
        }
    }

    #[test]
    fn books_stay_uncrossed_positive_and_near_depth() {
        let depth = 25;
        let mut m = SynthMarket::new(SynthConfig { depth, ..cfg(3) });
        let (mut deltas, mut trades, mut removals, mut inserts) = (0, 0, 0, 0);
        for ts in 0..20_000 {
            match m.next_event(ts).body {
                Some(Body::Delta(d)) => {
                    deltas += 1;
                    assert!((1..=5).contains(&d.updates.len()));
                    removals += d.updates.iter().filter(|u| u.size == 0).count();
                    inserts += d.updates.iter().filter(|u| u.size > 0).count();
                }
                Some(Body::Trade(t)) => {
                    trades += 1;
                    assert!(t.size > 0);
                }
                other => panic!("{other:?}"),
            }
            for i in 0..m.len() {
                let b = m.book(i).unwrap();
                assert!(b.invariants_hold());
                if let (Some(bid), Some(ask)) = (b.best(Side::Bid), b.best(Side::Ask)) {
                    assert!(bid.price < ask.price, "crossed at {ts}: {bid:?} {ask:?}");
                }
            }
        }
        assert!(trades > 2_000 && deltas > 15_000, "{trades} {deltas}");
        assert!(removals > 1_000 && inserts > 1_000);
        // The hottest symbol has seen thousands of events and kept its depth.
        let b = m.book(0).unwrap();
        for side in [Side::Bid, Side::Ask] {
            let d = b.depth(side);
            assert!((depth / 2..=depth * 2).contains(&d), "{side:?} depth {d}");
        }
    }

    #[test]
    fn activity_is_zipf_skewed() {
        let mut m = SynthMarket::new(SynthConfig {
            symbols: 20,
            trade_ratio: 0.0,
            ..cfg(5)
        });
        let mut counts = [0usize; 20];
        for ts in 0..20_000 {
            let Some(Body::Delta(d)) = m.next_event(ts).body else {
                panic!()
            };
            counts[m.index_of(&d.symbol).unwrap()] += 1;
        }
        // Weight 1 vs 1/20^1.1 ≈ 0.037: the head dwarfs the tail, all get some.
        assert!(counts[0] > 10 * counts[19], "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > counts[4]);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        // Exponent 0 is uniform.
        let mut m = SynthMarket::new(SynthConfig {
            symbols: 4,
            zipf_exponent: 0.0,
            trade_ratio: 0.0,
            ..cfg(5)
        });
        let mut counts = [0usize; 4];
        for ts in 0..8_000 {
            let Some(Body::Delta(d)) = m.next_event(ts).body else {
                panic!()
            };
            counts[m.index_of(&d.symbol).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1_700..2_300).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn trades_are_at_the_touch_and_followed_by_their_fill() {
        let mut m = SynthMarket::new(SynthConfig {
            trade_ratio: 1.0,
            ..cfg(8)
        });
        let mut seen = 0;
        for ts in 0..500 {
            let Some(Body::Trade(t)) = m.next_event(ts).body else {
                continue;
            };
            seen += 1;
            let i = m.index_of(&t.symbol).unwrap();
            let hit = if t.aggressor == pb::Side::Bid as i32 {
                Side::Ask
            } else {
                Side::Bid
            };
            let best = m.book(i).unwrap().best(hit).unwrap();
            assert_eq!(t.price, best.price);
            assert!(t.size <= best.size);
            let Some(Body::Delta(d)) = m.next_event(ts).body else {
                panic!("fill expected")
            };
            assert_eq!(d.symbol, t.symbol);
            assert_eq!(
                d.updates,
                vec![pb::LevelUpdate {
                    side: hit.to_pb() as i32,
                    price: best.price,
                    size: best.size - t.size
                }]
            );
        }
        assert!(seen > 100);
    }

    #[test]
    fn stream_applied_to_a_market_has_zero_rejections() {
        let mut synth = SynthMarket::new(cfg(11));
        let mut market = Market::new();
        let mut out = Vec::new();
        let feed = FeedId(1);
        for s in synth.snapshots(0) {
            let Some(Body::Snapshot(s)) = s.body else {
                panic!()
            };
            market.handle_snapshot(feed, s, 0, &mut out).unwrap();
        }
        for ts in 1..=20_000 {
            let r = match synth.next_event(ts).body {
                Some(Body::Delta(d)) => market.handle_delta(feed, d, ts, &mut out),
                Some(Body::Trade(t)) => market.handle_trade(feed, t, ts, &mut out),
                other => panic!("{other:?}"),
            };
            assert!(r.is_ok(), "{r:?}");
        }
        assert!(!out.iter().any(|p| matches!(p, Published::Stale { .. })));
        for i in 0..synth.len() {
            let id = market.symbol_id(synth.names().nth(i).unwrap()).unwrap();
            assert_eq!(Some(market.book(id)), synth.book(i));
        }
    }

    #[test]
    fn silly_configs_are_clamped_not_panics() {
        let mut m = SynthMarket::new(SynthConfig {
            seed: 0,
            symbols: 0,
            depth: 0,
            zipf_exponent: f64::NAN,
            trade_ratio: f64::INFINITY,
            max_updates_per_delta: 0,
        });
        assert_eq!(m.len(), 1);
        assert_eq!(m.config().depth, 1);
        assert_eq!(m.config().trade_ratio, 0.0);
        for ts in 0..1_000 {
            m.next_event(ts);
            assert!(m.book(0).unwrap().invariants_hold());
        }
        let _ = m.snapshot(usize::MAX, 0);
    }
}
