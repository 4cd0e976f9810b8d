//! Client requests (PROTOCOL §6): the rate limit, subscribe and unsubscribe,
//! the answers, and what they ask of the ingest thread (interest, snapshots).

use std::collections::HashMap;
use std::sync::Arc;

use super::delivery::encode_control;
use super::{ConnId, ConnState, WorkerCore};
use crate::book::SymbolId;
use crate::fanout::limits::RateVerdict;
use crate::fanout::outbox::FrameClass;
use crate::fanout::request::{
    ClientRequest, ErrorCode, Op, Request, RequestError, ResumePoint, parse_client_request,
    request_id,
};
use crate::fanout::ring::{Lane, ToIngest};
use crate::fanout::subs::{SubState, Transitions};
use crate::wire::CloseCode;
use crate::wire::pb::{self, server_message::Body};

/// Most channels one subscribe resumes (PROTOCOL §10); the rest of its
/// `resume` start with a snapshot (trades: with the next trade). Bounds what
/// one request makes the market thread gather (each answer is itself bounded
/// by `fanout::replay::MAX_REPLAY_BYTES`).
pub const MAX_RESUMES_PER_REQUEST: usize = 64;

/// What a connection holds of one symbol (see `held_by_symbol`).
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// The book stream held and the entry's position in its list.
    book: Option<(SymbolId, usize)>,
    trades: bool,
}

impl WorkerCore {
    /// One client request (PROTOCOL §6, §8). Answers are queued on the
    /// connection. A first `auth` is admitted by anyone (see
    /// [`WorkerCore::handle_text_admit`] for the per-user connection limit).
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now_ns: u64) {
        self.handle_text_admit(conn, text, now_ns, &mut |_, _| true);
    }

    /// One client request. `admit(sub, max_connections)` is asked once when
    /// an `auth` makes the connection a new user's: whether that user may
    /// hold one more connection (the shell's table of every worker's users).
    ///
    /// The request rate is checked first (the tier's rate: an `auth` counts
    /// too): over it, the answer is `Error{rate_limited}` whatever the
    /// request says (its `id` echoed when readable), and a connection that
    /// keeps going over it is closed with 4002 (reported by
    /// [`WorkerCore::poll_close`]). Until authenticated (`--auth required`),
    /// any request but `auth` is `Error{unauthorized}`.
    pub fn handle_text_admit(
        &mut self,
        conn: ConnId,
        text: &str,
        now_ns: u64,
        admit: &mut dyn FnMut(&Arc<str>, Option<u32>) -> bool,
    ) {
        if self.conns.get(conn.0 as usize).map(|c| c.state) != Some(ConnState::Open) {
            return;
        }
        let limits = self.request_limits(conn.0);
        let result = match self.limiters[conn.0 as usize].check(&limits, now_ns) {
            RateVerdict::Allow => match parse_client_request(text) {
                Ok(ClientRequest::Auth { id, token }) => {
                    self.handle_auth(conn.0, id, &token, now_ns, admit)
                }
                Ok(ClientRequest::Subscription(req)) if !self.may_subscribe(conn.0) => {
                    Err(WorkerCore::not_authenticated(req.id))
                }
                Ok(ClientRequest::Subscription(req)) => match req.op {
                    Op::Subscribe => self.subscribe(conn.0, req, now_ns),
                    Op::Unsubscribe => self.unsubscribe(conn.0, req, now_ns),
                },
                Err(e) => Err(e),
            },
            RateVerdict::Limited => Err(RequestError {
                id: request_id(text),
                code: ErrorCode::RateLimited,
                message: "over the request rate limit".to_string(),
            }),
            RateVerdict::Close => {
                self.stats.rate_limit_closes += 1;
                self.close_rate_limited(conn.0);
                return;
            }
        };
        match result {
            Err(e) => self.answer_error(conn.0, e, now_ns),
            Ok(()) => self.stats.requests_ok += 1,
        }
        self.finish_closes();
    }

    /// Counts a refused request and queues its `Error` answer.
    pub(super) fn answer_error(&mut self, conn: u32, e: RequestError, now_ns: u64) {
        self.count_rejection(e.code);
        let msg = pb::ServerMessage {
            body: Some(Body::Error(pb::Error {
                id: e.id,
                code: e.code.as_str().to_string(),
                message: e.message,
            })),
        };
        self.send_control(conn, &msg, now_ns);
    }

    /// Counts a refused request by its code.
    pub(super) fn count_rejection(&mut self, code: ErrorCode) {
        self.stats.requests_rejected += 1;
        match code {
            ErrorCode::BadRequest => self.stats.rejected_bad_request += 1,
            ErrorCode::TooManySubscriptions => self.stats.rejected_too_many_subscriptions += 1,
            ErrorCode::UnknownSymbol => self.stats.rejected_unknown_symbol += 1,
            ErrorCode::RateLimited => self.stats.rejected_rate_limited += 1,
            ErrorCode::Forbidden => self.stats.rejected_forbidden += 1,
            ErrorCode::Unauthorized => self.stats.rejected_unauthorized += 1,
        }
    }

    pub(super) fn lookup(&self, name: &str) -> Option<SymbolId> {
        self.by_name.get(name).copied()
    }

    /// What `conn` holds, per symbol: its book stream (plain `book` or a
    /// derived one) with the entry's position, and whether it holds trades.
    /// One pass over its subscriptions, so a request of many symbols costs
    /// O(symbols + held), never symbols × held.
    fn held_by_symbol(&self, conn: u32) -> HashMap<SymbolId, Held> {
        let mut held: HashMap<SymbolId, Held> = HashMap::new();
        for c in self.subs.conn_subs(conn) {
            let (symbol, _) = self.stream_key(c.symbol);
            let h = held.entry(symbol).or_default();
            match c.channel {
                Lane::Book => h.book = Some((c.symbol, c.pos())),
                Lane::Trades => h.trades = true,
            }
        }
        held
    }

    pub(super) fn subscribe(
        &mut self,
        conn: u32,
        req: Request,
        now_ns: u64,
    ) -> Result<(), RequestError> {
        // PROTOCOL §8: forbidden after bad_request (the parser's), before the rest.
        self.check_entitlements(conn, req.id, &req.symbols, req.channels.iter())?;
        // too_many_subscriptions before unknown_symbol (PROTOCOL §6): an unknown
        // symbol counts as new. A book variant replacing the one held adds nothing.
        let held = self.held_by_symbol(conn);
        let held_count = self.subs.conn_count(conn);
        let book = req.channels.book_variant();
        let trades = req.channels.has_trades();
        let mut added = 0usize;
        for name in &req.symbols {
            let h = self.lookup(name).and_then(|id| held.get(&id)).copied();
            let h = h.unwrap_or_default();
            added += usize::from(book.is_some() && h.book.is_none());
            added += usize::from(trades && !h.trades);
        }
        let max = self.max_subscriptions(conn);
        if held_count + added > max {
            return Err(RequestError {
                id: req.id,
                code: ErrorCode::TooManySubscriptions,
                message: format!(
                    "{held_count} symbol-channels held, {added} more requested, limit {max}"
                ),
            });
        }
        let ids = self.resolve(&req)?;
        // The stream of the requested book variant, per symbol.
        let mut streams = Vec::with_capacity(ids.len());
        for &id in &ids {
            let stream = match book {
                Some(c) if c.is_derived_book() => {
                    let Some(stream) = self.streams.get_or_insert(id, c) else {
                        return Err(RequestError {
                            id: req.id,
                            code: ErrorCode::TooManySubscriptions,
                            message: format!(
                                "this node serves at most {} derived book channels",
                                self.streams.len()
                            ),
                        });
                    };
                    self.register_stream(stream, id, c);
                    Some(stream)
                }
                Some(_) => Some(id),
                None => None,
            };
            streams.push(stream);
        }
        let instruments = ids
            .iter()
            .map(|id| {
                // `resolve` only returns ids present in the directory.
                let ins = self.instruments[id.index()]
                    .as_ref()
                    .expect("resolved id is known");
                pb::Instrument {
                    symbol: ins.name.to_string(),
                    price_decimals: ins.price_decimals as i32,
                    size_decimals: ins.size_decimals as i32,
                    epoch: ins.epoch,
                }
            })
            .collect();
        let channels = req.channels.names();
        let resume: HashMap<&str, ResumePoint> =
            req.resume.iter().map(|(s, p)| (s.as_str(), *p)).collect();
        // PROTOCOL §10: with `resume`, `Subscribed` waits for the market
        // thread's answers, and every subscription the request touches takes
        // nothing until then (`resume.rs`).
        let deferred = !resume.is_empty();
        let answer = pb::Subscribed {
            id: req.id,
            symbols: req.symbols,
            channels,
            instruments,
            resumed: Vec::new(),
        };
        // Sent now, or held for the resume answers.
        let held_answer = if deferred {
            Some(answer)
        } else {
            let msg = pb::ServerMessage {
                body: Some(Body::Subscribed(answer)),
            };
            self.send_control(conn, &msg, now_ns);
            None
        };
        let rendering = self.conns[conn as usize].rendering;
        let (book_state, trades_state) = if deferred {
            (SubState::Resuming, SubState::Resuming)
        } else {
            (SubState::Awaiting, SubState::Live)
        };
        let mut items = Vec::new();
        let mut asked = 0usize;
        for (id, stream) in ids.into_iter().zip(streams) {
            let h = held.get(&id).copied().unwrap_or_default();
            let point = if deferred {
                resume.get(&*self.name_of(id)).copied()
            } else {
                None
            };
            if let Some(stream) = stream {
                let fresh = match h.book {
                    Some((s, pos)) if s == stream => {
                        // A client-requested resync: a fresh snapshot.
                        let sub = self.subs.sub_mut(s, Lane::Book, pos);
                        sub.state = book_state;
                        sub.dropped = 0;
                        false
                    }
                    other => {
                        // PROTOCOL §9: another variant replaces the one held.
                        if let Some((old, _)) = other
                            && let Some(t) = self.subs.remove(conn, old, Lane::Book)
                        {
                            self.emit_transitions(old, Lane::Book, t, false);
                        }
                        let (_, t) =
                            self.subs
                                .insert(conn, stream, Lane::Book, rendering, book_state);
                        self.emit_transitions(stream, Lane::Book, t, true);
                        true
                    }
                };
                if deferred {
                    // Only plain `book` resumes; a variant starts with its
                    // snapshot, as does a book already held.
                    let after = point
                        .filter(|_| fresh && stream == id && asked < MAX_RESUMES_PER_REQUEST)
                        .and_then(|p| Some((p.epoch, p.book?)));
                    asked += usize::from(after.is_some());
                    items.push(self.resume_item(id, stream, Lane::Book, after, rendering));
                } else {
                    self.request_snapshot(stream);
                }
            }
            if trades && !h.trades {
                let (_, t) = self
                    .subs
                    .insert(conn, id, Lane::Trades, rendering, trades_state);
                self.emit_transitions(id, Lane::Trades, t, true);
                if deferred {
                    let after = point
                        .filter(|_| asked < MAX_RESUMES_PER_REQUEST)
                        .and_then(|p| Some((p.epoch, p.trades?)));
                    asked += usize::from(after.is_some());
                    items.push(self.resume_item(id, id, Lane::Trades, after, rendering));
                }
            }
        }
        if let Some(answer) = held_answer {
            let waits = items.iter().any(|it| it.token.is_some());
            self.defer_subscribed(conn, answer, items);
            if !waits {
                // Nothing to ask (e.g. only variants or held channels): answer now.
                self.finish_ready(conn, now_ns);
            }
        }
        Ok(())
    }

    /// Ends what is held of the named channels; `book` (any variant) ends
    /// whichever book variant is held (PROTOCOL §9).
    fn unsubscribe(&mut self, conn: u32, req: Request, now_ns: u64) -> Result<(), RequestError> {
        let ids = self.resolve(&req)?;
        // Only what is held is looked for (a request may name 10,000 symbols).
        let held = self.held_by_symbol(conn);
        let book = req.channels.book_variant().is_some();
        let trades = req.channels.has_trades();
        for id in ids {
            let Some(h) = held.get(&id) else {
                continue;
            };
            if book
                && let Some((stream, _)) = h.book
                && let Some(t) = self.subs.remove(conn, stream, Lane::Book)
            {
                self.emit_transitions(stream, Lane::Book, t, false);
            }
            if trades
                && h.trades
                && let Some(t) = self.subs.remove(conn, id, Lane::Trades)
            {
                self.emit_transitions(id, Lane::Trades, t, false);
            }
        }
        let msg = pb::ServerMessage {
            body: Some(Body::Unsubscribed(pb::Unsubscribed {
                id: req.id,
                symbols: req.symbols,
                channels: req.channels.names(),
            })),
        };
        self.send_control(conn, &msg, now_ns);
        Ok(())
    }

    fn resolve(&self, req: &Request) -> Result<Vec<SymbolId>, RequestError> {
        req.symbols
            .iter()
            .map(|name| {
                self.lookup(name).ok_or_else(|| RequestError {
                    id: req.id,
                    code: ErrorCode::UnknownSymbol,
                    message: format!("unknown symbol {name:?}"),
                })
            })
            .collect()
    }

    pub(super) fn emit_transitions(
        &mut self,
        symbol: SymbolId,
        channel: Lane,
        t: Transitions,
        on: bool,
    ) {
        if t.interest {
            self.to_ingest.push_back(ToIngest::Interest {
                symbol,
                channel,
                on,
            });
            if !on && channel == Lane::Book {
                // Answers to requests made before this point predate a gap in
                // the data the worker receives: ignore them, ask afresh later.
                if let Some(ss) = self.subs.symbol_mut(symbol)
                    && ss.snapshot_outstanding
                {
                    ss.snapshot_outstanding = false;
                    ss.ignore_answers = ss.ignore_answers.saturating_add(1);
                }
            }
        }
        if let Some(rendering) = t.rendering {
            self.to_ingest.push_back(ToIngest::Rendering {
                symbol,
                rendering,
                on,
            });
        }
    }

    pub(super) fn send_control(&mut self, conn: u32, msg: &pb::ServerMessage, now_ns: u64) {
        let rendering = self.conns[conn as usize].rendering;
        let frame = encode_control(rendering, msg, &mut self.json_buf);
        self.sink().admit(conn, &frame, FrameClass::Control, now_ns);
    }

    /// One `SnapshotRequest` per symbol while one is outstanding.
    pub(super) fn request_snapshot(&mut self, symbol: SymbolId) {
        let Some(ss) = self.subs.symbol_mut(symbol) else {
            return;
        };
        if ss.snapshot_outstanding {
            self.stats.snapshot_requests_coalesced += 1;
        } else {
            ss.snapshot_outstanding = true;
            self.stats.snapshot_requests_sent += 1;
            self.to_ingest
                .push_back(ToIngest::SnapshotRequest { symbol });
        }
    }

    /// Like [`Self::request_snapshot`], but asks again even if a request is
    /// outstanding (its answer may be lost, e.g. after the ring dropped data).
    pub(super) fn force_snapshot_request(&mut self, symbol: SymbolId) {
        if let Some(ss) = self.subs.symbol_mut(symbol) {
            ss.snapshot_outstanding = false;
        }
        self.request_snapshot(symbol);
    }

    /// Closes `conn` with 4002: out of every index now; what is queued
    /// (answers, the `rate_limited` errors) still leaves before the close frame.
    pub(super) fn close_rate_limited(&mut self, conn: u32) {
        let c = &mut self.conns[conn as usize];
        if c.state != ConnState::Open {
            return;
        }
        c.state = ConnState::Closing;
        self.remove_all_subs(conn);
        self.closes
            .push_back((ConnId(conn), CloseCode::RATE_LIMITED, "rate limited"));
    }
}
