//! The origin's side of the backplane: what this node publishes for the
//! books its own feeds own.
//!
//! Sans-IO, run by the market thread (the ingest thread): each published
//! event becomes one backplane message (the header of [`super::header`] in
//! front of the frame's protobuf payload, encoded once already); snapshot
//! requests are answered from the market, encoded once and cached until the
//! book changes; once a second a heartbeat lists every symbol with its last
//! seq. Mirrored books (owned by another origin) are never republished.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::book::SymbolId;
use crate::book::market::{FeedStale, Market, Published};
use crate::wire::EncodedFrame;
use crate::wire::pb;

use super::header::{HEADER_LEN, Header, Kind, OriginTag};
use super::heartbeat::{BookState, Entry, Heartbeat, MAX_ENTRIES};
use super::subject;

/// Heartbeats are sent this often.
pub const HEARTBEAT_INTERVAL_NS: u64 = 1_000_000_000;

/// One message for the NATS shell to publish. The subject is shared: a
/// symbol's data subject is built once, and publishing takes no allocation
/// for it on the market thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub subject: Arc<str>,
    pub payload: Bytes,
}

/// See the module doc.
pub struct OriginCore {
    name: String,
    tag: OriginTag,
    /// Data subject per symbol, built once.
    subjects: Vec<Option<Arc<str>>>,
    /// The encoded snapshot answer per symbol: (seq, stale, bytes).
    answers: HashMap<SymbolId, (u64, Option<FeedStale>, Bytes)>,
    next_beat_ns: u64,
}

impl OriginCore {
    /// `name` must satisfy [`subject::is_valid_origin`].
    pub fn new(name: &str) -> OriginCore {
        OriginCore {
            name: name.to_string(),
            tag: OriginTag::of(name),
            subjects: Vec::new(),
            answers: HashMap::new(),
            next_beat_ns: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backplane message for one published event, unless the symbol is
    /// mirrored from another origin.
    pub fn publish(
        &mut self,
        market: &Market,
        event: &Published,
        frame: &EncodedFrame,
    ) -> Option<Outgoing> {
        let symbol = event.symbol();
        let info = market.info(symbol)?;
        if info.mirrored {
            return None;
        }
        let (kind, seq) = match event {
            Published::Snapshot { seq, .. } => (Kind::Snapshot, *seq),
            Published::Delta { seq, .. } => (Kind::Delta, *seq),
            Published::Trade { seq, .. } => (Kind::Trade, *seq),
            Published::Stale { reason, .. } => (
                match reason {
                    FeedStale::FeedGap => Kind::StaleGap,
                    FeedStale::FeedDown => Kind::StaleDown,
                },
                info.seq,
            ),
        };
        let header = Header {
            kind,
            origin: self.tag,
            epoch: info.epoch,
            seq,
        };
        let body = frame.payload();
        let mut payload = Vec::with_capacity(HEADER_LEN + body.len());
        header.write(&mut payload);
        payload.extend_from_slice(body);
        let i = symbol.0 as usize;
        if self.subjects.len() <= i {
            self.subjects.resize(i + 1, None);
        }
        let subject = self.subjects[i]
            .get_or_insert_with(|| subject::data(info.name).into())
            .clone();
        Some(Outgoing {
            subject,
            payload: payload.into(),
        })
    }

    /// The answer to a snapshot request for `symbol`: the book at its seq,
    /// or a header saying it is stale, or nothing (empty) when this origin
    /// does not own it.
    pub fn answer_snapshot(&mut self, market: &Market, symbol: &str) -> Bytes {
        let Some(id) = market.symbol_id(symbol) else {
            return Bytes::new();
        };
        let Some(info) = market.info(id) else {
            return Bytes::new();
        };
        if info.mirrored || !info.has_book {
            return Bytes::new();
        }
        if let Some((seq, stale, bytes)) = self.answers.get(&id)
            && *seq == info.seq
            && *stale == info.stale
        {
            return bytes.clone();
        }
        let (kind, body) = match info.stale {
            Some(FeedStale::FeedGap) => (Kind::StaleGap, Vec::new()),
            Some(FeedStale::FeedDown) => (Kind::StaleDown, Vec::new()),
            None => {
                let msg = pb::ServerMessage {
                    body: Some(pb::server_message::Body::Snapshot(market.snapshot(id))),
                };
                (Kind::Snapshot, prost::Message::encode_to_vec(&msg))
            }
        };
        let header = Header {
            kind,
            origin: self.tag,
            epoch: info.epoch,
            seq: info.seq,
        };
        let bytes: Bytes = super::header::encode(&header, &body).into();
        self.answers
            .insert(id, (info.seq, info.stale, bytes.clone()));
        bytes
    }

    /// The heartbeat messages when one is due (every second), else nothing.
    pub fn poll_heartbeat(&mut self, market: &Market, now_ns: u64) -> Vec<Outgoing> {
        if now_ns < self.next_beat_ns {
            return Vec::new();
        }
        self.next_beat_ns = now_ns + HEARTBEAT_INTERVAL_NS;
        let entries: Vec<Entry> = market
            .symbols()
            .filter(|s| !s.mirrored && s.has_book)
            .map(|s| Entry {
                symbol: s.name.to_string(),
                seq: s.seq,
                trade_seq: s.trade_seq,
                price_decimals: s.price_decimals,
                size_decimals: s.size_decimals,
                state: match s.stale {
                    None => BookState::Live,
                    Some(FeedStale::FeedGap) => BookState::FeedGap,
                    Some(FeedStale::FeedDown) => BookState::FeedDown,
                },
            })
            .collect();
        let subject: Arc<str> = subject::heartbeat(&self.name).into();
        let mut out: Vec<Outgoing> = entries
            .chunks(MAX_ENTRIES)
            .map(|c| Outgoing {
                subject: subject.clone(),
                payload: Heartbeat::encode(&self.name, market.epoch(), c).into(),
            })
            .collect();
        if out.is_empty() {
            out.push(Outgoing {
                subject,
                payload: Heartbeat::encode(&self.name, market.epoch(), &[]).into(),
            });
        }
        out
    }
}
