//! The ingest hot path per delta: decode (length-delimited protobuf) +
//! validate + apply to a 50-level book + checksum + encode once into a
//! WebSocket frame. Typical deltas of 1–5 level updates from the synthetic
//! market. Also the same through the JSON-lines decoder, for comparison.
//!
//! Run: `cargo bench --bench ingest`. Target: < 1 µs per protobuf delta.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use tickwire::book::FeedId;
use tickwire::book::decode::{Decoded, FeedDecoder, Framing, encode_json_line, encode_proto};
use tickwire::book::market::{Market, Published};
use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::config::MAX_INGEST_FRAME_BYTES;
use tickwire::wire::EncodedFrame;
use tickwire::wire::pb::ingest_message::Body;

fn synth() -> SynthMarket {
    SynthMarket::new(SynthConfig {
        seed: 42,
        symbols: 10,
        depth: 50,
        trade_ratio: 0.0,
        max_updates_per_delta: 5,
        ..SynthConfig::default()
    })
}

/// Encodes the snapshots and then `n` deltas in the given framing.
fn stream(framing: Framing, n: u64) -> (Vec<u8>, Vec<u8>) {
    let mut s = synth();
    let mut snaps = Vec::new();
    let mut deltas = Vec::new();
    match framing {
        Framing::Protobuf => {
            for m in s.snapshots(1) {
                encode_proto(&m, &mut snaps);
            }
            for _ in 0..n {
                encode_proto(&s.next_event(2), &mut deltas);
            }
        }
        Framing::JsonLines => {
            let mut line = String::new();
            for m in s.snapshots(1) {
                encode_json_line(&m, 0, 0, &mut line);
            }
            snaps = line.into_bytes();
            let mut line = String::new();
            for _ in 0..n {
                let m = s.next_event(2);
                let name = match &m.body {
                    Some(Body::Delta(d)) => d.symbol.clone(),
                    _ => unreachable!("trade_ratio is 0"),
                };
                let (pd, sd) = s.decimals(s.index_of(&name).unwrap()).unwrap();
                encode_json_line(&m, pd, sd, &mut line);
            }
            deltas = line.into_bytes();
        }
    }
    (snaps, deltas)
}

/// Deltas in the pre-generated stream; replayed after re-sending the snapshots
/// (which resets the books and the expected feed sequence).
const STREAM_DELTAS: u64 = 100_000;

fn cached(framing: Framing) -> &'static (Vec<u8>, Vec<u8>) {
    static PROTO: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    static JSON: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    match framing {
        Framing::Protobuf => PROTO.get_or_init(|| stream(framing, STREAM_DELTAS)),
        Framing::JsonLines => JSON.get_or_init(|| stream(framing, STREAM_DELTAS)),
    }
}

/// Times `iters` deltas through decode → market → encode once.
fn run(framing: Framing, iters: u64) -> Duration {
    let (snaps, deltas) = cached(framing);
    let mut market = Market::new();
    let mut dec = FeedDecoder::new(framing, None, MAX_INGEST_FRAME_BYTES);
    let mut out: Vec<Published> = Vec::with_capacity(4);
    let feed = FeedId(1);
    let apply =
        |dec: &mut FeedDecoder, market: &mut Market, out: &mut Vec<Published>, limit: u64| {
            let mut n = 0u64;
            while n < limit
                && let Ok(Some(msg)) = dec.poll_message(&|s| market.decimals(s))
            {
                match msg.expect("valid synthetic stream") {
                    Decoded::Snapshot(s) => drop(market.handle_snapshot(feed, s, 3, out)),
                    Decoded::Delta(d) => {
                        market
                            .handle_delta(feed, d, 3, out)
                            .expect("contiguous synthetic stream");
                        n += 1;
                    }
                    _ => {}
                }
                for p in out.drain(..) {
                    black_box(EncodedFrame::binary(p.msg()));
                }
            }
            n
        };
    // Feed the deltas in 64 KiB reads, as the socket would; stop after `iters`.
    let start = Instant::now();
    let mut applied = 0;
    'replay: loop {
        dec.handle_bytes(snaps);
        apply(&mut dec, &mut market, &mut out, u64::MAX);
        for chunk in deltas.chunks(64 * 1024) {
            dec.handle_bytes(chunk);
            applied += apply(&mut dec, &mut market, &mut out, iters - applied);
            if applied == iters {
                break 'replay;
            }
        }
    }
    start.elapsed()
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest_per_delta");
    g.bench_function("protobuf_decode_apply_checksum_encode", |b| {
        b.iter_custom(|n| run(Framing::Protobuf, n))
    });
    g.bench_function("json_decode_apply_checksum_encode", |b| {
        b.iter_custom(|n| run(Framing::JsonLines, n))
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
