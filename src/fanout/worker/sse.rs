//! Server-Sent Events streams (PROTOCOL §11) in the core.
//!
//! An SSE connection is a core connection of [`Rendering::Sse`]: it opens
//! with one subscribe made from its URL (the same grammar, limits and
//! entitlements as a WebSocket `subscribe`, checked before anything is
//! streamed, so a refusal is an HTTP error), and takes the same shared
//! frames, in their SSE rendering, under the same slow-consumer policy.
//!
//! The one thing an SSE connection adds per event is its `id:` line: the
//! resume token ([`ResumeToken`]) a browser's `EventSource` sends back as
//! `Last-Event-ID` when it reconnects. It holds where this connection stands
//! on every `book` and `trades` channel of its URL, so it is the
//! connection's own: the sink writes it after each market-data event it
//! queues ([`SseStream::id_line`], a few dozen bytes), while the event itself
//! (its JSON rendered once on the market thread) stays shared. Derived book
//! channels do not resume (PROTOCOL §10); their position stays 0.
//!
//! A token resumes only the stream it was made for: its digest covers the
//! symbols in URL order and each one's epoch, so another URL, or any epoch
//! change, starts with snapshots as usual.

use std::collections::HashMap;

use super::{ConnId, WorkerCore};
use crate::auth::Claims;
use crate::book::SymbolId;
use crate::fanout::outbox::FrameClass;
use crate::fanout::request::{ClientRequest, ErrorCode, RequestError, parse_client_request};
use crate::fanout::ring::Lane;
use crate::wire::{EncodedFrame, Rendering};
use crate::ws::sse::{ResumeToken, epoch_digest};

/// What the shell hands the core to open a stream (parsed by
/// [`crate::ws::sse::parse_open`]).
#[derive(Debug, Clone, Copy)]
pub struct SseStart<'a> {
    pub symbols: &'a [String],
    pub channels: &'a [String],
    /// The `Last-Event-ID` the client came back with.
    pub last_event_id: Option<&'a ResumeToken>,
    /// The response head (and the `retry:` field), queued before anything.
    pub head: &'a [u8],
}

/// One SSE connection's positions, in URL order.
#[derive(Debug)]
pub(super) struct SseStream {
    symbols: Vec<Option<SymbolId>>,
    /// Per symbol: the last `book` and `trades` seq queued (0: none).
    positions: Vec<(u64, u64)>,
    digest: u64,
}

impl SseStream {
    /// `stream`'s `lane` reached `seq` (a symbol's plain book or trades;
    /// a derived stream is no symbol of the URL and changes nothing).
    pub(super) fn advance(&mut self, stream: SymbolId, lane: Lane, seq: u64) {
        if let Some(i) = self.symbols.iter().position(|s| *s == Some(stream)) {
            let p = &mut self.positions[i];
            match lane {
                Lane::Book => p.0 = seq,
                Lane::Trades => p.1 = seq,
            }
        }
    }

    /// `id: <token>` and the blank line that ends the event.
    pub(super) fn id_line(&self, out: &mut Vec<u8>) {
        ResumeToken::write_id_line(self.digest, &self.positions, out);
    }
}

/// The SSE connections of a worker, by connection slot.
pub(super) type SseStreams = HashMap<u32, SseStream>;

impl WorkerCore {
    /// Opens an SSE stream: queues `start.head`, then subscribes as a
    /// WebSocket `subscribe` of the URL's symbols and channels would,
    /// resuming from `Last-Event-ID` when it was made for this stream (its
    /// digest matches). A refusal (what a WebSocket would get as `Error`)
    /// frees the slot and comes back for the shell to answer as HTTP.
    pub fn open_sse(
        &mut self,
        start: SseStart<'_>,
        claims: Option<Claims>,
        now_ns: u64,
    ) -> Result<ConnId, RequestError> {
        let symbols: Vec<Option<SymbolId>> = start.symbols.iter().map(|n| self.lookup(n)).collect();
        let digest = self.epoch_digest_of(start.symbols, &symbols);
        let resumed = start
            .last_event_id
            .filter(|t| t.digest == digest && t.positions.len() == symbols.len());
        let mut request = serde_json::json!({
            "op": "subscribe",
            "id": 0,
            "symbols": start.symbols,
            "channels": start.channels,
        });
        if let Some(t) = resumed {
            let mut points = serde_json::Map::new();
            for ((name, id), &(book, trades)) in
                start.symbols.iter().zip(&symbols).zip(&t.positions)
            {
                let Some(epoch) = id.and_then(|id| self.epoch_of(id)) else {
                    continue;
                };
                let mut p = serde_json::json!({ "epoch": epoch });
                if book > 0 {
                    p["book"] = book.into();
                }
                if trades > 0 {
                    p["trades"] = trades.into();
                }
                if book > 0 || trades > 0 {
                    points.insert(name.clone(), p);
                }
            }
            if !points.is_empty() {
                request["resume"] = points.into();
            }
        }
        let conn = self.open_conn_with(Rendering::Sse, claims, now_ns);
        let positions = match resumed {
            Some(t) => t.positions.clone(),
            None => vec![(0, 0); symbols.len()],
        };
        self.sse.insert(
            conn.0,
            SseStream {
                symbols,
                positions,
                digest,
            },
        );
        self.sink().admit(
            conn.0,
            &EncodedFrame::raw(start.head),
            FrameClass::Control,
            now_ns,
        );
        let result = match parse_client_request(&request.to_string()) {
            Ok(ClientRequest::Subscription(req)) if !self.may_subscribe(conn.0) => {
                Err(WorkerCore::not_authenticated(req.id))
            }
            Ok(ClientRequest::Subscription(req)) => self.subscribe(conn.0, req, now_ns),
            Ok(ClientRequest::Auth { id, .. }) => Err(RequestError {
                id,
                code: ErrorCode::BadRequest,
                message: "not a subscription".into(),
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.stats.requests_ok += 1;
                self.stats.sse_opened += 1;
                self.finish_closes();
                Ok(conn)
            }
            Err(e) => {
                self.count_rejection(e.code);
                self.close_conn(conn);
                Err(e)
            }
        }
    }

    /// The digest a resume token of these symbols carries now.
    fn epoch_digest_of(&self, names: &[String], ids: &[Option<SymbolId>]) -> u64 {
        epoch_digest(
            names
                .iter()
                .zip(ids)
                .map(|(n, id)| (n.as_str(), id.and_then(|id| self.epoch_of(id)).unwrap_or(0))),
        )
    }

    fn epoch_of(&self, symbol: SymbolId) -> Option<u64> {
        self.instruments
            .get(symbol.index())?
            .as_ref()
            .map(|i| i.epoch)
    }
}
