//! [`Renderer`]: every rendering of a market-data message that some
//! connection uses, each built once and shared ([`Rendered`]).
//!
//! A message is encoded once in protobuf by the market thread
//! ([`EncodedFrame::binary`]); the router asks here for the other
//! renderings the workers with interest in its stream want (their
//! interest, per rendering, comes from `ToIngest::Rendering`): JSON
//! (PROTOCOL §6), the compressed forms of both (§12: permessage-deflate
//! without context takeover, so the compressed bytes are the same for every
//! connection that negotiated it), and the Server-Sent Events body (§11).
//! A rendering nobody uses is never built.
//!
//! Run by the market thread (router, derived streams, resume answers).
//! Sans-IO; holds one compressor and reused buffers.
//!
//! Compression policy (PROTOCOL §12): a message whose payload is shorter
//! than the threshold (default 256 bytes) goes uncompressed, RSV1 clear, as
//! does one that deflate would not make shorter; the "compressed" rendering
//! is then the uncompressed frame itself (the same shared bytes).
//!
//! NB: compression is bounded by a time budget per second of the market
//! thread (default 100 ms, [`DeflateBudget`]); past it, messages go
//! uncompressed until the next second (RFC 7692 §6 lets any message go with
//! RSV1 clear), counted as `budget`. The reason is the cost: each message
//! is compressed on its own (no context takeover), and resetting the
//! compressor's tables costs ~7–20 µs whatever the message's size
//! (`benches/render.rs`), while every browser offers permessage-deflate: a
//! few dashboards on busy full-depth JSON books would otherwise put
//! compression ahead of every book on the thread that owns them. The
//! budget keeps deflate best-effort and the books fresh.

use prost::Message;

use crate::wire::json::{self, Decimals};
use crate::wire::{EncodedFrame, Rendering, Renderings, pb};
use crate::ws::deflate::Compressor;

/// One message in the renderings built for it. The protobuf frame is always
/// there; the others only when wanted.
#[derive(Debug, Clone)]
pub struct Rendered {
    proto: EncodedFrame,
    /// The other renderings, at [`Rendering::index`] - 1.
    others: [Option<EncodedFrame>; Rendering::COUNT - 1],
}

/// The slot of a rendering other than protobuf in `Rendered::others`.
fn slot(r: Rendering) -> usize {
    r.index() - 1
}

impl Rendered {
    /// A message with only its protobuf frame.
    pub fn proto(frame: EncodedFrame) -> Rendered {
        Rendered {
            proto: frame,
            others: Default::default(),
        }
    }

    /// The protobuf frame.
    pub fn proto_frame(&self) -> &EncodedFrame {
        &self.proto
    }

    /// The frame of rendering `r`, if it was built.
    pub fn get(&self, r: Rendering) -> Option<&EncodedFrame> {
        match r {
            Rendering::Proto => Some(&self.proto),
            r => self.others[slot(r)].as_ref(),
        }
    }

    /// Adds (or replaces) the frame of a rendering other than protobuf.
    pub fn set(&mut self, r: Rendering, frame: EncodedFrame) {
        match r {
            Rendering::Proto => self.proto = frame,
            r => self.others[slot(r)] = Some(frame),
        }
    }

    /// The renderings held.
    pub fn renderings(&self) -> Renderings {
        let mut s = Renderings::of(Rendering::Proto);
        for r in &Rendering::ALL[1..] {
            if self.others[slot(*r)].is_some() {
                s.insert(*r);
            }
        }
        s
    }

    /// The protobuf frame and those of `wanted` (what one worker takes).
    pub fn only(&self, wanted: Renderings) -> Rendered {
        let mut out = Rendered::proto(self.proto.clone());
        for r in wanted.iter() {
            if r != Rendering::Proto {
                out.others[slot(r)] = self.others[slot(r)].clone();
            }
        }
        out
    }

    /// Bytes held in every rendering.
    pub fn len(&self) -> usize {
        self.proto.len()
            + self
                .others
                .iter()
                .flatten()
                .map(EncodedFrame::len)
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of the renderer (its thread is their single writer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RenderStats {
    /// Frames built, by [`Rendering::index`] (protobuf frames are counted
    /// by the market, not here).
    pub rendered: [u64; Rendering::COUNT],
    /// Payload bytes given to deflate, and the compressed bytes it made,
    /// for the messages sent compressed.
    pub deflate_in_bytes: u64,
    pub deflate_out_bytes: u64,
    /// Messages of a deflate rendering sent uncompressed: under the
    /// threshold, or not made shorter.
    pub deflate_skipped: u64,
    /// ... and because the second's compression budget was spent.
    pub deflate_over_budget: u64,
    /// Nanoseconds spent compressing.
    pub deflate_ns: u64,
}

/// How much of each second the market thread may spend compressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateBudget {
    /// Per second, at most (ns); 0: never compress.
    pub per_second_ns: u64,
}

impl Default for DeflateBudget {
    fn default() -> DeflateBudget {
        DeflateBudget {
            per_second_ns: 100_000_000,
        }
    }
}

/// Monotonic nanoseconds since the first call (the renderer's clock).
pub fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Builds renderings on the market thread.
pub struct Renderer {
    threshold: usize,
    budget: DeflateBudget,
    /// Reads monotonic ns around each compression (injected by tests).
    clock: fn() -> u64,
    /// The current second of the budget: its start and the ns spent.
    window: (u64, u64),
    compressor: Compressor,
    json: String,
    bytes: Vec<u8>,
    stats: RenderStats,
}

impl Renderer {
    /// `deflate_threshold_bytes`: payloads shorter than this go
    /// uncompressed; the default compression budget.
    pub fn new(deflate_threshold_bytes: usize) -> Renderer {
        Renderer::with_budget(
            deflate_threshold_bytes,
            DeflateBudget::default(),
            monotonic_ns,
        )
    }

    /// With a compression budget and the clock that measures it.
    pub fn with_budget(
        deflate_threshold_bytes: usize,
        budget: DeflateBudget,
        clock: fn() -> u64,
    ) -> Renderer {
        Renderer {
            threshold: deflate_threshold_bytes,
            budget,
            clock,
            window: (0, 0),
            compressor: Compressor::new(),
            json: String::new(),
            bytes: Vec::new(),
            stats: RenderStats::default(),
        }
    }

    pub fn stats(&self) -> RenderStats {
        self.stats
    }

    /// Builds in `frames` each rendering of `wanted` it lacks. `msg` is the
    /// message when at hand; otherwise it is decoded from the protobuf frame
    /// if JSON must be rendered. `decimals`: the symbol's (PROTOCOL §1).
    pub fn complete(
        &mut self,
        frames: &mut Rendered,
        wanted: Renderings,
        decimals: Decimals,
        msg: Option<&pb::ServerMessage>,
    ) {
        let needs_json = [Rendering::Json, Rendering::JsonDeflate, Rendering::Sse]
            .into_iter()
            .any(|r| wanted.contains(r) && frames.get(r).is_none());
        if needs_json && frames.get(Rendering::Json).is_none() {
            let decoded;
            let msg = match msg {
                Some(m) => m,
                None => {
                    decoded = pb::ServerMessage::decode(frames.proto.payload()).unwrap_or_default();
                    &decoded
                }
            };
            self.json.clear();
            json::render(msg, decimals, &mut self.json);
            frames.set(Rendering::Json, EncodedFrame::text(&self.json));
            self.stats.rendered[Rendering::Json.index()] += 1;
        }
        for r in [
            Rendering::ProtoDeflate,
            Rendering::JsonDeflate,
            Rendering::Sse,
        ] {
            if !wanted.contains(r) || frames.get(r).is_some() {
                continue;
            }
            let frame = match (r, r.deflates()) {
                (_, Some(plain)) => match frames.get(plain) {
                    Some(f) => self.deflate(f),
                    None => continue,
                },
                _ => match frames.get(Rendering::Json) {
                    Some(f) => self.sse(f),
                    None => continue,
                },
            };
            self.stats.rendered[r.index()] += 1;
            frames.set(r, frame);
        }
    }

    /// The compressed form of `frame`, or `frame` itself when it is under
    /// the threshold or deflate would not shorten it.
    fn deflate(&mut self, frame: &EncodedFrame) -> EncodedFrame {
        let payload = frame.payload();
        if payload.len() < self.threshold {
            self.stats.deflate_skipped += 1;
            return frame.clone();
        }
        let start = (self.clock)();
        if start.saturating_sub(self.window.0) >= 1_000_000_000 {
            self.window = (start, 0);
        }
        if self.window.1 >= self.budget.per_second_ns {
            self.stats.deflate_over_budget += 1;
            return frame.clone();
        }
        self.bytes.clear();
        self.compressor.compress(payload, &mut self.bytes);
        let spent = (self.clock)().saturating_sub(start);
        self.window.1 += spent;
        self.stats.deflate_ns += spent;
        let Some(opcode) = frame.opcode().filter(|_| self.bytes.len() < payload.len()) else {
            self.stats.deflate_skipped += 1;
            return frame.clone();
        };
        self.stats.deflate_in_bytes += payload.len() as u64;
        self.stats.deflate_out_bytes += self.bytes.len() as u64;
        EncodedFrame::deflated(opcode, &self.bytes)
    }

    /// The SSE body of a JSON frame: `event: <type>` and `data: <json>`;
    /// the connection ends the event (its `id:` line, the blank line).
    fn sse(&mut self, json: &EncodedFrame) -> EncodedFrame {
        self.bytes.clear();
        let json = json.payload();
        crate::ws::sse::write_event_body(json::type_of(json), json, &mut self.bytes);
        EncodedFrame::raw(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::inflate;

    fn delta(levels: usize) -> pb::ServerMessage {
        pb::ServerMessage {
            body: Some(pb::server_message::Body::Delta(pb::BookDelta {
                symbol: "BTC-USD".into(),
                seq: 42,
                updates: (0..levels)
                    .map(|i| pb::LevelUpdate {
                        side: 1,
                        price: 3_000_000 + i as i64,
                        size: 10,
                    })
                    .collect(),
                prev_seq: 41,
                ..Default::default()
            })),
        }
    }

    fn all() -> Renderings {
        let mut s = Renderings::NONE;
        for r in Rendering::ALL {
            s.insert(r);
        }
        s
    }

    #[test]
    fn a_large_message_is_compressed_once_and_inflates_back() {
        let msg = delta(100);
        let mut r = Renderer::new(256);
        let mut frames = Rendered::proto(EncodedFrame::binary(&msg));
        r.complete(&mut frames, all(), Decimals::default(), Some(&msg));
        for (z, plain) in [
            (Rendering::ProtoDeflate, Rendering::Proto),
            (Rendering::JsonDeflate, Rendering::Json),
        ] {
            let zf = frames.get(z).unwrap();
            let pf = frames.get(plain).unwrap();
            assert!(zf.is_deflated(), "{z:?} is compressed");
            assert_eq!(zf.opcode(), pf.opcode());
            assert!(
                zf.len() < pf.len() / 2,
                "{z:?}: {} vs {}",
                zf.len(),
                pf.len()
            );
            let mut out = Vec::new();
            inflate(zf.payload(), 1 << 20, &mut out).unwrap();
            assert_eq!(out, pf.payload());
        }
        // Built once: completing again renders nothing more.
        let before = r.stats();
        r.complete(&mut frames, all(), Decimals::default(), Some(&msg));
        assert_eq!(r.stats(), before);
        assert_eq!(before.rendered, [0, 1, 1, 1, 1]);
        assert!(before.deflate_out_bytes < before.deflate_in_bytes);
    }

    /// Past the second's budget, messages go uncompressed (the same shared
    /// frame) until the next second.
    #[test]
    fn compression_stops_at_the_budget_until_the_next_second() {
        thread_local! {
            static NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        // Each read of the clock advances it 1 ms: a compression costs 1 ms.
        fn clock() -> u64 {
            NOW.with(|n| {
                n.set(n.get() + 1_000_000);
                n.get()
            })
        }
        let budget = DeflateBudget {
            per_second_ns: 3_000_000,
        };
        let mut r = Renderer::with_budget(256, budget, clock);
        let msg = delta(100);
        let compressed = |r: &mut Renderer| {
            let mut f = Rendered::proto(EncodedFrame::binary(&msg));
            r.complete(
                &mut f,
                Renderings::of(Rendering::ProtoDeflate),
                Decimals::default(),
                None,
            );
            f.get(Rendering::ProtoDeflate).unwrap().is_deflated()
        };
        let first: Vec<bool> = (0..5).map(|_| compressed(&mut r)).collect();
        assert_eq!(first, [true, true, true, false, false]);
        assert_eq!(r.stats().deflate_over_budget, 2);
        NOW.with(|n| n.set(n.get() + 1_000_000_000));
        assert!(compressed(&mut r), "a new second, a new budget");
        let mut never = Renderer::with_budget(256, DeflateBudget { per_second_ns: 0 }, clock);
        assert!(!compressed(&mut never), "a zero budget never compresses");
    }

    #[test]
    fn a_small_message_goes_uncompressed_as_the_same_frame() {
        let msg = delta(1);
        let mut r = Renderer::new(256);
        let mut frames = Rendered::proto(EncodedFrame::binary(&msg));
        r.complete(&mut frames, all(), Decimals::default(), None);
        assert!(
            frames
                .get(Rendering::ProtoDeflate)
                .unwrap()
                .same(frames.proto_frame())
        );
        assert!(
            frames
                .get(Rendering::JsonDeflate)
                .unwrap()
                .same(frames.get(Rendering::Json).unwrap())
        );
        assert_eq!(r.stats().deflate_skipped, 2);
    }

    #[test]
    fn only_what_is_wanted_is_built() {
        let msg = delta(100);
        let mut r = Renderer::new(256);
        let mut frames = Rendered::proto(EncodedFrame::binary(&msg));
        r.complete(
            &mut frames,
            Renderings::of(Rendering::ProtoDeflate),
            Decimals::default(),
            Some(&msg),
        );
        assert_eq!(
            frames.renderings(),
            {
                let mut s = Renderings::of(Rendering::Proto);
                s.insert(Rendering::ProtoDeflate);
                s
            },
            "no JSON was rendered for a protobuf-only deflate interest"
        );
        let one = frames.only(Renderings::NONE);
        assert_eq!(one.renderings(), Renderings::of(Rendering::Proto));
    }

    #[test]
    fn the_sse_body_names_the_event_and_holds_the_json_on_one_line() {
        let msg = delta(3);
        let mut r = Renderer::new(256);
        let mut frames = Rendered::proto(EncodedFrame::binary(&msg));
        r.complete(
            &mut frames,
            Renderings::of(Rendering::Sse),
            Decimals::default(),
            None,
        );
        let sse = std::str::from_utf8(frames.get(Rendering::Sse).unwrap().as_bytes()).unwrap();
        let json = std::str::from_utf8(frames.get(Rendering::Json).unwrap().payload()).unwrap();
        assert_eq!(sse, format!("event: delta\ndata: {json}\n"));
    }
}
