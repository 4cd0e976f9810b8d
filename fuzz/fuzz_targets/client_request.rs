//! Client requests (PROTOCOL §6): `fanout::request::parse_request` on
//! arbitrary UTF-8, then each line of the input as a request to a
//! `WorkerCore` with three connections and three instruments.
//!
//! Invariants:
//! - on `Ok`: every symbol valid, no symbol twice, at most
//!   `MAX_SYMBOLS_PER_REQUEST`, channels non-empty;
//! - on `Err`: a short message (under 200 bytes) whatever the input size;
//! - the worker core's `check_invariants()` after every request, every
//!   snapshot answer and every close, with its output drained as a socket would.
//!
//! A line `#close` makes the shell close that line's connection and open a new one.
#![no_main]

use std::collections::HashSet;
use std::io::IoSlice;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tickwire::book::SymbolId;
use tickwire::book::symbol::is_valid_symbol;
use tickwire::fanout::request::{MAX_SYMBOLS_PER_REQUEST, Op, parse_request};
use tickwire::book::market::FeedStale;
use tickwire::fanout::ring::{ResumeAnswer, ToIngest, ToWorker};
use tickwire::fanout::worker::{Encoding, WorkerConfig, WorkerCore};
use tickwire::fanout::render::{Rendered, Renderer};
use tickwire::wire::json::Decimals;
use tickwire::wire::{EncodedFrame, Rendering, Renderings};
use tickwire::wire::pb::{self, server_message::Body};

const NAMES: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];
const MAX_ERROR_MESSAGE_BYTES: usize = 200;
/// Requests sent to the worker per input (the rest of the lines are ignored).
const MAX_LINES: usize = 64;
const STEP_NS: u64 = 37_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_parse(text);

    let mut core = WorkerCore::new(WorkerConfig {
        max_subscriptions: 4,
        ..WorkerConfig::default()
    });
    for (i, name) in NAMES.iter().enumerate() {
        core.handle_ring(
            ToWorker::Instrument {
                symbol: SymbolId(i as u32),
                name: Arc::from(*name),
                price_decimals: 2,
                size_decimals: 4,
                epoch: 0,
            },
            0,
        );
    }
    let mut conns = [
        core.open_conn(Encoding::Proto),
        core.open_conn(Encoding::Json),
        core.open_conn(Encoding::Proto),
    ];
    let mut now_ns = 0;
    for (i, line) in text.split('\n').take(MAX_LINES).enumerate() {
        now_ns += STEP_NS;
        let slot = i % conns.len();
        if line == "#close" {
            core.handle_closing(conns[slot]);
            core.close_conn(conns[slot]);
            conns[slot] = core.open_conn(if slot == 1 {
                Encoding::Json
            } else {
                Encoding::Proto
            });
        } else {
            check_parse(line);
            core.handle_text(conns[slot], line, now_ns);
        }
        check(&core, "after a request");
        answer_snapshots(&mut core, now_ns);
        check(&core, "after snapshot answers");
        drain(&mut core, now_ns);
        while let Some((conn, _code, _reason)) = core.poll_close() {
            core.close_conn(conn);
            if let Some(c) = conns.iter_mut().find(|c| **c == conn) {
                *c = core.open_conn(Encoding::Proto);
            }
        }
        check(&core, "after closes");
    }
});

fn check(core: &WorkerCore, when: &str) {
    if let Err(e) = core.check_invariants() {
        panic!("worker invariants broken {when}: {e}");
    }
}

fn check_parse(text: &str) {
    match parse_request(text) {
        Ok(req) => {
            // Only an unsubscribe may name no symbol (the protocol's no-op).
            assert!(!req.symbols.is_empty() || req.op == Op::Unsubscribe);
            assert!(req.symbols.len() <= MAX_SYMBOLS_PER_REQUEST);
            for s in &req.symbols {
                assert!(is_valid_symbol(s), "invalid symbol {s:?} accepted");
            }
            let unique: HashSet<&String> = req.symbols.iter().collect();
            assert_eq!(unique.len(), req.symbols.len(), "a symbol twice");
            assert!(!req.channels.is_empty());
            // PROTOCOL §9: one book variant at most; §10: resume names only
            // symbols the request subscribes, each once.
            assert!(req.channels.iter().filter(|c| c.is_book()).count() <= 1);
            let resumed: HashSet<&String> = req.resume.iter().map(|(s, _)| s).collect();
            assert_eq!(resumed.len(), req.resume.len(), "a symbol resumed twice");
            assert!(resumed.iter().all(|s| unique.contains(s)));
        }
        Err(e) => assert!(
            e.message.len() < MAX_ERROR_MESSAGE_BYTES,
            "error message of {} bytes: {:?}",
            e.message.len(),
            e.message
        ),
    }
}

/// Plays the ingest thread: every snapshot request gets the symbol's book
/// (a derived stream's too); resume requests are answered in turn with a
/// hit of one message, a miss and a feed-stale book.
fn answer_snapshots(core: &mut WorkerCore, now_ns: u64) {
    let mut requests = Vec::new();
    let mut resumes = Vec::new();
    while let Some(msg) = core.poll_to_ingest() {
        match msg {
            ToIngest::SnapshotRequest { symbol } => requests.push(symbol),
            ToIngest::Resume(r) => resumes.push((r.token, r.after_seq)),
            _ => {}
        }
    }
    for (token, after_seq) in resumes {
        let answer = match token % 3 {
            0 => ResumeAnswer::Hit {
                last: after_seq.saturating_add(1),
                frames: vec![EncodedFrame::text("{}")],
            },
            1 => ResumeAnswer::Miss { dropped: 3 },
            _ => ResumeAnswer::Stale(FeedStale::FeedGap),
        };
        core.handle_ring(ToWorker::Resumed { token, answer }, now_ns);
    }
    for symbol in requests {
        let msg = pb::ServerMessage {
            body: Some(Body::Snapshot(pb::BookSnapshot {
                symbol: NAMES[symbol.index() / 2 % NAMES.len()].into(),
                seq: 1,
                bids: vec![pb::Level {
                    price: 100,
                    size: 5,
                }],
                asks: vec![pb::Level {
                    price: 101,
                    size: 7,
                }],
                price_decimals: 2,
                size_decimals: 4,
                ..Default::default()
            })),
        };
        // Every rendering, as the market thread builds them.
        let mut frames = Rendered::proto(EncodedFrame::binary(&msg));
        let mut all = Renderings::NONE;
        for r in Rendering::ALL {
            all.insert(r);
        }
        Renderer::new(256).complete(&mut frames, all, Decimals { price: 2, size: 4 }, Some(&msg));
        core.handle_ring(
            ToWorker::Snapshot {
                symbol,
                seq: 1,
                frames: Some(frames),
                stale: None,
            },
            now_ns,
        );
    }
}

/// Plays the sockets: every dirty connection takes everything queued.
fn drain(core: &mut WorkerCore, now_ns: u64) {
    while let Some(conn) = core.poll_dirty() {
        // Each write takes at least one whole slice: bounded by the frames queued.
        for writes in 0.. {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = core.io_slices(conn, &mut slices);
            if n == 0 {
                break;
            }
            assert!(writes < 100_000, "{conn:?} never drains");
            let bytes = slices[..n].iter().map(|s| s.len()).sum();
            core.handle_written(conn, bytes, now_ns);
        }
    }
}
