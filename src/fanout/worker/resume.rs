//! Resume after reconnect (PROTOCOL §10), the worker's side: a subscribe
//! whose `resume` names where the client's `book` or `trades` stood asks the
//! market thread for everything after it, and answers the client once every
//! answer is in: `Subscribed` with `resumed`, then per channel the missed
//! messages and live from there, or the usual snapshot (book) or
//! `Stale{slow_consumer_trades}` (trades).
//!
//! Until then each subscription the request touches is
//! [`SubState::Resuming`]: it takes nothing from the ring (what it misses
//! there is in the answer, which the same FIFO ring brings after it), so
//! nothing of it can reach the client before its `Subscribed`.

use super::WorkerCore;
use super::delivery::{encode_control, stale_msg};
use crate::book::SymbolId;
use crate::fanout::outbox::{Admit, FrameClass};
use crate::fanout::ring::{Lane, ResumeAnswer, ResumeRequest, ToIngest};
use crate::fanout::subs::SubState;
use crate::wire::pb::{self, server_message::Body};
use crate::wire::{Rendering, StaleReason};

/// A subscribe waiting for its resume answers.
#[derive(Debug)]
pub(super) struct PendingSubscribe {
    conn: u32,
    answer: pb::Subscribed,
    items: Vec<Item>,
}

/// One subscription a waiting subscribe touched.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) stream: SymbolId,
    pub(super) lane: Lane,
    /// The symbol's name (for `resumed` and `Stale`).
    pub(super) name: std::sync::Arc<str>,
    /// The resume asked for, and its answer once in.
    pub(super) token: Option<u64>,
    pub(super) answer: Option<ResumeAnswer>,
}

impl WorkerCore {
    /// Holds `answer` until the resume requests of `items` (those with a
    /// token, sent by [`WorkerCore::resume_item`]) are answered.
    pub(super) fn defer_subscribed(&mut self, conn: u32, answer: pb::Subscribed, items: Vec<Item>) {
        self.resumes.push(PendingSubscribe {
            conn,
            answer,
            items,
        });
    }

    /// A fresh token for a resume request (never reused).
    pub(super) fn resume_token(&mut self) -> u64 {
        self.next_resume_token += 1;
        self.next_resume_token
    }

    /// Queues one resume request for the market thread.
    pub(super) fn request_resume(
        &mut self,
        token: u64,
        symbol: SymbolId,
        lane: Lane,
        epoch: u64,
        after_seq: u64,
        rendering: Rendering,
    ) {
        self.stats.resume_requests += 1;
        self.to_ingest.push_back(ToIngest::Resume(ResumeRequest {
            token,
            symbol,
            lane,
            epoch,
            after_seq,
            rendering,
        }));
    }

    /// One answer from the market thread; the subscribe it completes is
    /// answered to its client.
    pub(super) fn handle_resumed(&mut self, token: u64, answer: ResumeAnswer, now_ns: u64) {
        let Some(i) = self
            .resumes
            .iter()
            .position(|p| p.items.iter().any(|it| it.token == Some(token)))
        else {
            // Its connection closed meanwhile.
            return;
        };
        let p = &mut self.resumes[i];
        if let Some(it) = p.items.iter_mut().find(|it| it.token == Some(token)) {
            it.answer = Some(answer);
        }
        if p.items
            .iter()
            .all(|it| it.token.is_none() || it.answer.is_some())
        {
            let p = self.resumes.remove(i);
            self.finish_subscribe(p, now_ns);
        }
    }

    /// The item of a waiting subscribe for one subscription: with a resume
    /// request sent when `after` (epoch, seq) is given.
    pub(super) fn resume_item(
        &mut self,
        symbol: SymbolId,
        stream: SymbolId,
        lane: Lane,
        after: Option<(u64, u64)>,
        rendering: Rendering,
    ) -> Item {
        let token = after.map(|(epoch, seq)| {
            let token = self.resume_token();
            self.request_resume(token, symbol, lane, epoch, seq, rendering);
            token
        });
        Item {
            stream,
            lane,
            name: self.name_of(symbol),
            token,
            answer: None,
        }
    }

    /// Answers `conn`'s last waiting subscribe if it waits for nothing.
    pub(super) fn finish_ready(&mut self, conn: u32, now_ns: u64) {
        if let Some(i) = self.resumes.iter().rposition(|p| {
            p.conn == conn
                && p.items
                    .iter()
                    .all(|it| it.token.is_none() || it.answer.is_some())
        }) {
            let p = self.resumes.remove(i);
            self.finish_subscribe(p, now_ns);
        }
    }

    /// A closed connection's waiting subscribes are forgotten.
    pub(super) fn forget_resumes(&mut self, conn: u32) {
        self.resumes.retain(|p| p.conn != conn);
    }

    fn finish_subscribe(&mut self, p: PendingSubscribe, now_ns: u64) {
        let PendingSubscribe {
            conn,
            mut answer,
            items,
        } = p;
        for it in &items {
            if matches!(it.answer, Some(ResumeAnswer::Hit { .. })) {
                let lane = match it.lane {
                    Lane::Book => "book",
                    Lane::Trades => "trades",
                };
                answer.resumed.push(format!("{}:{lane}", it.name));
            }
        }
        self.send_control(
            conn,
            &pb::ServerMessage {
                body: Some(Body::Subscribed(answer)),
            },
            now_ns,
        );
        let rendering = self.conns[conn as usize].rendering;
        for it in items {
            let Some(pos) = self.subs.find(conn, it.stream, it.lane) else {
                continue; // Unsubscribed meanwhile.
            };
            if self.subs.sub_mut(it.stream, it.lane, pos).state != SubState::Resuming {
                continue;
            }
            match (it.lane, it.answer) {
                (_, Some(ResumeAnswer::Hit { last, frames })) => {
                    self.stats.resumed += 1;
                    let mut dropped = 0u32;
                    // Replayed seqs are contiguous: the k-th of n is `last - (n - 1 - k)`.
                    let n = frames.len();
                    for (k, f) in frames.iter().enumerate() {
                        if dropped > 0 {
                            dropped += 1;
                            continue;
                        }
                        let mut sink = self.sink();
                        let seq = last.saturating_sub((n - 1 - k) as u64);
                        sink.event = Some((it.stream, it.lane, seq));
                        match sink.admit(conn, f, FrameClass::Stream, now_ns) {
                            Admit::Queue => {}
                            Admit::DropStale => dropped = 1,
                            Admit::Close => return,
                        }
                    }
                    let sub = self.subs.sub_mut(it.stream, it.lane, pos);
                    sub.seq = last;
                    if dropped > 0 {
                        // The sink listed the connection as dropping: it
                        // resyncs this once drained.
                        sub.state = SubState::Dropping;
                        sub.dropped = dropped;
                    } else {
                        sub.state = SubState::Live;
                    }
                }
                (Lane::Book, Some(ResumeAnswer::Stale(reason))) => {
                    let msg = stale_msg(&it.name, 0, reason.into());
                    let frame = encode_control(rendering, &msg, &mut self.json_buf);
                    self.sink().admit(conn, &frame, FrameClass::Resync, now_ns);
                    self.subs.sub_mut(it.stream, it.lane, pos).state = SubState::AwaitingFeed;
                }
                (Lane::Trades, Some(ResumeAnswer::Miss { dropped })) => {
                    let msg = stale_msg(&it.name, dropped, StaleReason::SlowConsumerTrades);
                    let frame = encode_control(rendering, &msg, &mut self.json_buf);
                    self.sink().admit(conn, &frame, FrameClass::Resync, now_ns);
                    let sub = self.subs.sub_mut(it.stream, it.lane, pos);
                    sub.state = SubState::Live;
                    sub.seq = 0;
                }
                (Lane::Book, _) => {
                    self.subs.sub_mut(it.stream, it.lane, pos).state = SubState::Awaiting;
                    self.request_snapshot(it.stream);
                }
                (Lane::Trades, _) => {
                    let sub = self.subs.sub_mut(it.stream, it.lane, pos);
                    sub.state = SubState::Live;
                    sub.seq = 0;
                }
            }
        }
    }
}
