//! Client requests: answers and their order, errors, the rate limit,
//! subscription limits, snapshot coalescing, interest transitions.

use super::harness::*;
use crate::fanout::limits::RequestLimits;
use crate::fanout::ring::{Lane, ToIngest};
use crate::fanout::subs::IndexSizes;
use crate::fanout::worker::{Encoding, WorkerConfig};
use crate::wire::{CloseCode, Rendering};

#[test]
fn subscribe_gives_subscribed_then_snapshot_then_contiguous_deltas() {
    for encoding in [Encoding::Proto, Encoding::Json] {
        let mut h = H::new(cfg());
        let mut c = h.client(encoding);
        h.text(&c, &sub_text(&["BTC-USD"], &["book"], 7));
        let polled = h.drain_to_ingest();
        let mut want = vec![interest(BTC, Lane::Book, true)];
        if encoding == Encoding::Json {
            want.push(ToIngest::Rendering {
                symbol: BTC,
                rendering: Rendering::Json,
                on: true,
            });
        }
        want.push(ToIngest::SnapshotRequest { symbol: BTC });
        assert_eq!(polled, want, "interest before the request that needs it");
        // Deltas already in the ring before the answer: skipped.
        h.delta(BTC);
        h.delta(BTC);
        let a = h.ing.answer(BTC);
        h.ring(a);
        for _ in 0..20 {
            h.delta(BTC);
        }
        c.read_all(&mut h.core, h.now_ns);
        let evs = c.take();
        assert_eq!(evs[0].ty, "subscribed");
        assert_eq!((evs[0].id, evs[0].instruments), (7, 1));
        assert_eq!(evs[0].symbols, vec!["BTC-USD"]);
        assert_eq!(evs[0].channels, vec!["book"]);
        assert_eq!(evs[1].ty, "snapshot");
        assert_eq!(evs[1].seq, 3);
        assert_eq!(evs.len(), 22);
        assert!(
            evs[2..]
                .iter()
                .enumerate()
                .all(|(i, e)| e.ty == "delta" && e.seq == 4 + i as u64)
        );
        assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
        assert_eq!(h.core.stats().contiguity_violations, 0);
    }
}

#[test]
fn errors_follow_the_stated_order_and_change_nothing() {
    let mut h = H::new(WorkerConfig {
        max_subscriptions: 2,
        ..cfg()
    });
    let mut c = h.client(Encoding::Proto);
    let cases = [
        ("garbage", 0, "bad_request"),
        // Invalid symbol beats the limit and the unknown symbol.
        (
            r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD","NOPE","bad sym"],"id":1}"#,
            1,
            "bad_request",
        ),
        (
            r#"{"op":"subscribe","symbols":["BTC-USD"],"channels":["candles"],"id":2}"#,
            2,
            "bad_request",
        ),
        // Over the limit beats the unknown symbol.
        (
            r#"{"op":"subscribe","symbols":["BTC-USD","ETH-USD","NOPE"],"id":3}"#,
            3,
            "too_many_subscriptions",
        ),
        (
            r#"{"op":"subscribe","symbols":["BTC-USD","NOPE"],"id":4}"#,
            4,
            "unknown_symbol",
        ),
        (
            r#"{"op":"unsubscribe","symbols":["NOPE"],"id":5}"#,
            5,
            "unknown_symbol",
        ),
    ];
    for (text, id, code) in cases {
        h.text(&c, text);
        c.read_all(&mut h.core, h.now_ns);
        let evs = c.take();
        assert_eq!(evs.len(), 1, "{text}");
        assert_eq!(
            (evs[0].ty.as_str(), evs[0].id, evs[0].code.as_str()),
            ("error", id, code),
            "{text}"
        );
    }
    // All-or-nothing: nothing was subscribed, nothing asked of ingest.
    assert_eq!(h.core.stats().index, IndexSizes::default());
    assert!(h.drain_to_ingest().is_empty());
    assert_eq!(h.core.stats().requests_rejected, 6);
}

/// PROTOCOL §6–§7: over the request rate, `Error{rate_limited}` (id echoed,
/// never dropped, nothing changes); sustained, 4002 and no trace left; a
/// client that backs off is served again.
#[test]
fn request_rate_limit_answers_rate_limited_then_closes_4002() {
    use crate::fanout::limits::Rate;
    let mut h = H::new(WorkerConfig {
        requests: RequestLimits {
            requests: Rate {
                per_sec: 10,
                burst: 3,
            },
            strikes: Rate {
                per_sec: 1,
                burst: 2,
            },
        },
        ..cfg()
    });
    let mut c = h.client(Encoding::Json);
    let mut polite = h.client(Encoding::Proto);
    for id in 1..=3 {
        h.text(&c, &sub_text(&["BTC-USD"], &["trades"], id));
    }
    h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 4));
    h.text(&c, "not even json");
    c.read_all(&mut h.core, h.now_ns);
    let evs = c.take();
    let got: Vec<_> = evs
        .iter()
        .map(|e| (e.ty.as_str(), e.id, e.code.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("subscribed", 1, ""),
            ("subscribed", 2, ""),
            ("subscribed", 3, ""),
            ("error", 4, "rate_limited"),
            ("error", 0, "rate_limited"),
        ]
    );
    assert_eq!(
        h.core.stats().index.conn_entries,
        1,
        "ETH was not subscribed"
    );
    assert!(h.core.poll_close().is_none());
    // A second connection has its own bucket.
    h.text(&polite, &sub_text(&["ETH-USD"], &["trades"], 9));
    polite.read_all(&mut h.core, h.now_ns);
    assert_eq!(polite.types(), vec!["subscribed"]);
    // After 2 strikes the third refusal closes with 4002.
    h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 5));
    assert_eq!(
        h.core.poll_close().map(|(id, code, _)| (id, code)),
        Some((c.conn, CloseCode::RATE_LIMITED))
    );
    let s = h.core.stats();
    assert_eq!(s.rejected_rate_limited, 2);
    assert_eq!(s.rate_limit_closes, 1);
    assert_eq!(
        s.index.conn_entries, 1,
        "only the polite connection holds one"
    );
    h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 6));
    assert!(h.core.poll_close().is_none(), "closed once");
    h.core.close_conn(c.conn);
    h.core.check_invariants().unwrap();
    // The polite one, backing off, keeps being served.
    for i in 0..5 {
        h.now_ns += 200_000_000;
        h.text(&polite, &unsub_text(&["ETH-USD"], &["trades"], 20 + i));
    }
    polite.read_all(&mut h.core, h.now_ns);
    assert_eq!(polite.types(), vec!["unsubscribed"; 5]);
}

#[test]
fn too_many_subscriptions_counts_symbol_channels_not_repeats() {
    let mut h = H::new(WorkerConfig {
        max_subscriptions: 3,
        ..cfg()
    });
    let mut c = h.client(Encoding::Json);
    h.text(&c, &sub_text(&["BTC-USD"], &["book", "trades"], 1));
    // Re-subscribing to held ones adds nothing new: 2 + 1 = 3 is fine.
    h.text(&c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 2));
    h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 3));
    c.read_all(&mut h.core, h.now_ns);
    let evs: Vec<_> = c.take().into_iter().map(|e| (e.ty, e.id, e.code)).collect();
    assert_eq!(
        evs,
        vec![
            ("subscribed".into(), 1, String::new()),
            ("subscribed".into(), 2, String::new()),
            ("error".into(), 3, "too_many_subscriptions".into()),
        ]
    );
    assert_eq!(h.core.stats().index.conn_entries, 3);
}

#[test]
fn snapshot_requests_are_coalesced_per_symbol() {
    let mut h = H::new(cfg());
    let mut a = h.client(Encoding::Proto);
    let mut b = h.client(Encoding::Json);
    h.text(&a, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
    let polled = h.drain_to_ingest();
    let requests = polled
        .iter()
        .filter(|m| matches!(m, ToIngest::SnapshotRequest { .. }))
        .count();
    assert_eq!(requests, 1);
    assert_eq!(h.core.stats().snapshot_requests_coalesced, 1);
    let ans = h.ing.answer(BTC);
    h.ring(ans);
    h.delta(BTC);
    for c in [&mut a, &mut b] {
        c.read_all(&mut h.core, h.now_ns);
        assert_eq!(c.types(), vec!["subscribed", "snapshot", "delta"]);
    }
    // Nothing outstanding any more: a new client asks again.
    let c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 3));
    assert_eq!(
        h.drain_to_ingest(),
        vec![ToIngest::SnapshotRequest { symbol: BTC }]
    );
}

#[test]
fn resubscribe_sends_a_fresh_snapshot_and_skips_old_deltas() {
    let mut h = H::new(cfg());
    let mut c = h.client(Encoding::Proto);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.serve();
    h.delta(BTC);
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 2));
    assert_eq!(
        h.drain_to_ingest(),
        vec![ToIngest::SnapshotRequest { symbol: BTC }]
    );
    h.delta(BTC); // in the ring before the answer: not for this client
    let ans = h.ing.answer(BTC);
    h.ring(ans);
    h.delta(BTC);
    c.read_all(&mut h.core, h.now_ns);
    let evs = c.take();
    let got: Vec<_> = evs.iter().map(|e| (e.ty.as_str(), e.seq)).collect();
    assert_eq!(
        got,
        vec![
            ("subscribed", 0),
            ("snapshot", 1),
            ("delta", 2),
            ("subscribed", 0),
            ("snapshot", 3),
            ("delta", 4)
        ]
    );
    assert_eq!(c.books["BTC-USD"].1, h.ing.truth(BTC));
}

#[test]
fn unsubscribe_stops_data_and_interest_follows_zero_one_transitions() {
    let mut h = H::new(cfg());
    let mut a = h.client(Encoding::Proto);
    let mut b = h.client(Encoding::Json);
    h.text(&a, &sub_text(&["BTC-USD"], &["book", "trades"], 1));
    h.text(&b, &sub_text(&["BTC-USD"], &["book"], 2));
    assert_eq!(
        h.serve(),
        vec![
            interest(BTC, Lane::Book, true),
            ToIngest::SnapshotRequest { symbol: BTC },
            interest(BTC, Lane::Trades, true),
            ToIngest::Rendering {
                symbol: BTC,
                rendering: Rendering::Json,
                on: true,
            },
        ]
    );
    h.delta(BTC);
    let t = h.ing.trade(BTC);
    h.ring(t);
    h.text(&a, &unsub_text(&["BTC-USD"], &["book"], 9));
    assert!(h.drain_to_ingest().is_empty(), "b still holds the book");
    h.delta(BTC);
    let t = h.ing.trade(BTC);
    h.ring(t);
    a.read_all(&mut h.core, h.now_ns);
    let evs = a.take();
    let got: Vec<_> = evs.iter().map(|e| (e.ty.as_str(), e.seq)).collect();
    assert_eq!(
        got,
        vec![
            ("subscribed", 0),
            ("snapshot", 1),
            ("delta", 2),
            ("trade", 1),
            ("unsubscribed", 0),
            ("trade", 2)
        ]
    );
    assert_eq!(evs[4].id, 9);
    assert_eq!(evs[4].channels, vec!["book"]);
    // Lenient: unsubscribing what is not held is echoed.
    h.text(&a, &unsub_text(&["ETH-USD"], &["book", "trades"], 10));
    a.read_all(&mut h.core, h.now_ns);
    assert_eq!(a.types(), vec!["unsubscribed"]);
    // Unsubscribing nothing (a browser's keepalive probe) is answered, changes
    // nothing and is no bad request.
    h.text(&a, &unsub_text(&[], &["trades"], 12));
    assert!(h.drain_to_ingest().is_empty());
    let t = h.ing.trade(BTC);
    h.ring(t);
    a.read_all(&mut h.core, h.now_ns);
    let evs = a.take();
    let got: Vec<_> = evs.iter().map(|e| (e.ty.as_str(), e.id)).collect();
    assert_eq!(
        got,
        vec![("unsubscribed", 12), ("trade", 0)],
        "trades still held"
    );
    assert_eq!(h.core.stats().rejected_bad_request, 0);
    h.text(&b, &unsub_text(&["BTC-USD"], &["book"], 11));
    assert_eq!(
        h.drain_to_ingest(),
        vec![
            interest(BTC, Lane::Book, false),
            ToIngest::Rendering {
                symbol: BTC,
                rendering: Rendering::Json,
                on: false,
            }
        ]
    );
    h.core.close_conn(a.conn);
    assert_eq!(
        h.drain_to_ingest(),
        vec![interest(BTC, Lane::Trades, false)]
    );
    b.read_all(&mut h.core, h.now_ns);
    assert_eq!(
        b.types(),
        vec!["subscribed", "snapshot", "delta", "delta", "unsubscribed"]
    );
}

/// A resume answer whose `last` is below its frame count (the market thread
/// never sends one; the fuzz target's fake ingest did) is delivered without
/// an arithmetic overflow: `Subscribed`, then the frames, in order.
#[test]
fn an_inconsistent_resume_answer_does_not_panic() {
    use crate::fanout::ring::{ResumeAnswer, ToWorker};
    let mut h = H::new(cfg());
    let mut c = h.client(Encoding::Json);
    h.text(
        &c,
        r#"{"op":"subscribe","symbols":["BTC-USD"],"channels":["trades"],"id":3,"resume":{"BTC-USD":{"epoch":0,"trades":0}}}"#,
    );
    let token = h
        .drain_to_ingest()
        .into_iter()
        .find_map(|m| match m {
            ToIngest::Resume(r) => Some(r.token),
            _ => None,
        })
        .expect("a resume request");
    let t = h.ing.trade(BTC);
    let ToWorker::Data { frames, .. } = t else {
        unreachable!()
    };
    let f = frames.get(Rendering::Json).unwrap().clone();
    h.ring(ToWorker::Resumed {
        token,
        answer: ResumeAnswer::Hit {
            last: 1,
            frames: vec![f.clone(), f.clone(), f],
        },
    });
    c.read_all(&mut h.core, h.now_ns);
    assert_eq!(c.types(), vec!["subscribed", "trade", "trade", "trade"]);
}
