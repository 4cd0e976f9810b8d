//! What permessage-deflate saves (PROTOCOL §12) and what it costs on the
//! market thread, per message and rendering, on the synthetic market:
//! snapshots of 10, 100 and 1,000 levels a side, and its deltas and trades.
//!
//! First prints a table of bytes before and after for each kind and
//! encoding (the threshold of 256 bytes applied: shorter messages go
//! uncompressed and save nothing), then times the compression of one
//! message of each size with criterion. The renderer compresses each
//! message once however many connections take it, so this is the whole
//! cost of compression for a message.
//!
//! And what an SSE connection adds to each event it takes: its `id:` line.
//!
//! Run: `cargo bench --bench render`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::fanout::render::{DeflateBudget, Rendered, Renderer, monotonic_ns};
use tickwire::wire::json::Decimals;
use tickwire::wire::pb::{self, ingest_message, server_message};
use tickwire::wire::{EncodedFrame, Rendering, Renderings};
use tickwire::ws::sse::ResumeToken;

const THRESHOLD: usize = 256;

fn to_server(m: pb::IngestMessage) -> Option<pb::ServerMessage> {
    let body = match m.body? {
        ingest_message::Body::Snapshot(s) => server_message::Body::Snapshot(s),
        ingest_message::Body::Delta(d) => server_message::Body::Delta(pb::BookDelta {
            prev_seq: d.seq.saturating_sub(1),
            checksum: 0x1234_5678,
            ingest_ts_ns: 1_765_000_000_000_000_000,
            ..d
        }),
        ingest_message::Body::Trade(t) => server_message::Body::Trade(t),
        _ => return None,
    };
    Some(pb::ServerMessage { body: Some(body) })
}

fn snapshot(depth: usize) -> pb::ServerMessage {
    let m = SynthMarket::new(SynthConfig {
        seed: 3,
        symbols: 1,
        depth,
        ..SynthConfig::default()
    });
    to_server(m.snapshots(1).remove(0)).expect("a snapshot")
}

fn stream(kind: &str, n: usize) -> Vec<pb::ServerMessage> {
    let mut m = SynthMarket::new(SynthConfig {
        seed: 5,
        symbols: 1,
        depth: 100,
        ..SynthConfig::default()
    });
    (0..n as u64 * 4)
        .filter_map(|ts| to_server(m.next_event(ts)))
        .filter(|msg| {
            matches!(
                (&msg.body, kind),
                (Some(server_message::Body::Delta(_)), "delta")
                    | (Some(server_message::Body::Trade(_)), "trade")
            )
        })
        .take(n)
        .collect()
}

fn all_deflate() -> Renderings {
    let mut s = Renderings::of(Rendering::ProtoDeflate);
    s.insert(Rendering::JsonDeflate);
    s
}

fn table() {
    let decimals = Decimals { price: 2, size: 4 };
    let mut rows: Vec<(String, Vec<pb::ServerMessage>)> = [10, 100, 1_000]
        .into_iter()
        .map(|d| (format!("snapshot, {d} levels a side"), vec![snapshot(d)]))
        .collect();
    rows.push(("delta (1,000 of the stream)".into(), stream("delta", 1_000)));
    rows.push(("trade (1,000 of the stream)".into(), stream("trade", 1_000)));
    println!("| message | encoding | bytes | deflated | saved |");
    println!("|---|---|---|---|---|");
    for (name, msgs) in rows {
        let mut totals = [(0usize, 0usize); 2];
        for msg in &msgs {
            let mut r = Renderer::new(THRESHOLD);
            let mut f = Rendered::proto(EncodedFrame::binary(msg));
            r.complete(&mut f, all_deflate(), decimals, Some(msg));
            for (i, (plain, z)) in [
                (Rendering::Proto, Rendering::ProtoDeflate),
                (Rendering::Json, Rendering::JsonDeflate),
            ]
            .into_iter()
            .enumerate()
            {
                totals[i].0 += f.get(plain).map_or(0, EncodedFrame::len);
                totals[i].1 += f.get(z).map_or(0, EncodedFrame::len);
            }
        }
        for (i, enc) in ["protobuf", "JSON"].into_iter().enumerate() {
            let (a, b) = totals[i];
            println!(
                "| {name} | {enc} | {a} | {b} | {:.0}% |",
                100.0 * (1.0 - b as f64 / a as f64)
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    table();
    let decimals = Decimals { price: 2, size: 4 };
    let mut g = c.benchmark_group("deflate_once");
    for (name, msg) in [
        ("snapshot_100_json", snapshot(100)),
        ("snapshot_1000_json", snapshot(1_000)),
        ("delta_json", stream("delta", 1).remove(0)),
    ] {
        let json = {
            let mut f = Rendered::proto(EncodedFrame::binary(&msg));
            Renderer::new(THRESHOLD).complete(
                &mut f,
                Renderings::of(Rendering::Json),
                decimals,
                Some(&msg),
            );
            f
        };
        // No budget: every iteration compresses (the engine's default budget
        // would make most of them the uncompressed fallback).
        let unlimited = DeflateBudget {
            per_second_ns: u64::MAX,
        };
        let mut r = Renderer::with_budget(THRESHOLD, unlimited, monotonic_ns);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut f = json.clone();
                r.complete(
                    &mut f,
                    Renderings::of(Rendering::JsonDeflate),
                    decimals,
                    None,
                );
                black_box(f)
            })
        });
    }
    g.finish();
    // What an SSE connection adds per event: its `id:` line (PROTOCOL §11).
    let mut g = c.benchmark_group("sse_id_line");
    for n in [1usize, 5, 50] {
        let positions: Vec<(u64, u64)> =
            (0..n as u64).map(|i| (1_000_000 + i, 50_000 + i)).collect();
        let mut out = Vec::with_capacity(1024);
        g.bench_function(format!("{n}_symbols"), |b| {
            b.iter(|| {
                out.clear();
                ResumeToken::write_id_line(black_box(0x1234_5678_9abc_def0), &positions, &mut out);
                black_box(out.len())
            })
        });
        out.clear();
        ResumeToken::write_id_line(0, &positions, &mut out);
        println!("sse id line, {n} symbols: {} bytes", out.len());
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
