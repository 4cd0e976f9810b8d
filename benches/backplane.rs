//! An edge's cost per delta from the backplane: decode the header, decode
//! the protobuf, check that it follows on, apply it to the mirrored book,
//! check the origin's checksum, encode the WebSocket frame once and route it
//! to a worker with interest (`EdgeCore` → `Market::mirror_delta` →
//! `EncodedFrame::binary` → `Router::publish`). The messages are the
//! origin's own output (`OriginCore::publish`) for the synthetic market:
//! 50-level books, 1–5 updates per delta, 10 symbols.
//!
//! Run: `cargo bench --bench backplane`. Target (scale-out issue): ≤ 2 µs per
//! delta; compare with `ingest_per_delta` (the origin's own path) in the same run.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};

use tickwire::book::FeedId;
use tickwire::book::market::{Market, Published};
use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::cluster::edge::{EdgeConfig, EdgeCore, Inbound};
use tickwire::cluster::origin::OriginCore;
use tickwire::fanout::ring::{Lane, ToIngest, ToWorker};
use tickwire::fanout::router::{Rings, Router};
use tickwire::wire::EncodedFrame;
use tickwire::wire::pb::ingest_message::Body;

const STREAM_DELTAS: usize = 100_000;

/// What an origin sent: heartbeats, a snapshot answer per symbol, then the
/// deltas as (symbol, payload).
struct Stream {
    heartbeats: Vec<Bytes>,
    answers: Vec<(String, Bytes)>,
    deltas: Vec<(Arc<str>, Bytes)>,
}

fn stream() -> &'static Stream {
    static S: OnceLock<Stream> = OnceLock::new();
    S.get_or_init(|| {
        let mut synth = SynthMarket::new(SynthConfig {
            seed: 42,
            symbols: 10,
            depth: 50,
            trade_ratio: 0.0,
            max_updates_per_delta: 5,
            ..SynthConfig::default()
        });
        let mut market = Market::new().with_epoch(7);
        let mut origin = OriginCore::new("bench");
        let mut out: Vec<Published> = Vec::new();
        let feed = FeedId(1);
        for m in synth.snapshots(1) {
            if let Some(Body::Snapshot(s)) = m.body {
                market.handle_snapshot(feed, s, 3, &mut out).unwrap();
            }
        }
        out.clear();
        let names: Vec<String> = synth.names().map(str::to_string).collect();
        let answers = names
            .iter()
            .map(|n| (n.clone(), origin.answer_snapshot(&market, n)))
            .collect();
        let heartbeats = origin
            .poll_heartbeat(&market, 0)
            .into_iter()
            .map(|o| o.payload)
            .collect();
        let mut deltas = Vec::with_capacity(STREAM_DELTAS);
        while deltas.len() < STREAM_DELTAS {
            if let Some(Body::Delta(d)) = synth.next_event(2).body {
                let symbol = d.symbol.clone();
                market.handle_delta(feed, d, 3, &mut out).unwrap();
                for p in out.drain(..) {
                    let frame = EncodedFrame::binary(p.msg());
                    let o = origin.publish(&market, &p, &frame).unwrap();
                    deltas.push((Arc::from(symbol.as_str()), o.payload));
                }
            }
        }
        Stream {
            heartbeats,
            answers,
            deltas,
        }
    })
}

/// A worker ring that takes everything.
struct Sink(u64);

impl Rings for Sink {
    fn workers(&self) -> usize {
        1
    }

    fn try_push(&mut self, _: usize, msg: ToWorker) -> Result<(), ToWorker> {
        self.0 += 1;
        black_box(msg);
        Ok(())
    }
}

/// Times `iters` deltas through a live edge (set up outside the timing).
fn run(iters: u64) -> Duration {
    let s = stream();
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let mut market = Market::new();
        let mut edge = EdgeCore::new(EdgeConfig::default(), 1);
        let mut router = Router::new(1, tickwire::fanout::render::Renderer::new(256));
        let mut rings = Sink(0);
        let mut out: Vec<Published> = Vec::new();
        for hb in &s.heartbeats {
            let hb = Inbound::Heartbeat {
                payload: hb.clone(),
            };
            edge.handle_inbound(&mut market, hb, 1, &mut out);
        }
        while let Some(id) = edge.poll_announce() {
            router.announce_listed(&market, id, &mut rings);
            let on = ToIngest::Interest {
                symbol: id,
                channel: Lane::Book,
                on: true,
            };
            router.handle_request(0, on, &market, &mut rings);
            edge.handle_interest(&mut market, id, true, 2);
        }
        while edge.poll_command().is_some() {}
        for (symbol, payload) in &s.answers {
            let reply = Inbound::SnapshotReply {
                symbol: symbol.clone(),
                payload: payload.clone(),
            };
            edge.handle_inbound(&mut market, reply, 3, &mut out);
        }
        out.clear();
        let n = (iters - done).min(s.deltas.len() as u64) as usize;
        let start = Instant::now();
        for (symbol, payload) in &s.deltas[..n] {
            let data = Inbound::Data {
                symbol: symbol.clone(),
                payload: payload.clone(),
            };
            edge.handle_inbound(&mut market, data, 4, &mut out);
            for p in out.drain(..) {
                let frame = EncodedFrame::binary(p.msg());
                router.publish(&market, &p, &frame, &mut rings);
            }
        }
        total += start.elapsed();
        assert_eq!(edge.stats().resyncs, 0, "the stream follows on");
        done += n as u64;
    }
    total
}

fn backplane(c: &mut Criterion) {
    let mut g = c.benchmark_group("backplane_per_delta");
    g.bench_function("edge_header_decode_apply_checksum_encode_route", |b| {
        b.iter_custom(run)
    });
    g.finish();
}

criterion_group!(benches, backplane);
criterion_main!(benches);
