//! Authentication and entitlements (PROTOCOL §8) through the core, with
//! tokens signed by the test and a manual clock: the tiers, `auth` and its
//! answers, the check order with `forbidden`, refresh widening and
//! narrowing, expiry and the 5 s deadline, the per-user admission.

use std::sync::Arc;

use serde_json::json;

use super::harness::*;
use crate::auth::verify::tests::{NOW, SECRET, hs};
use crate::auth::{AuthMode, AuthResult, Entitlements, KeySet, Verifier, VerifierConfig};
use crate::fanout::limits::{Rate, RequestLimits};
use crate::fanout::ring::Lane;
use crate::fanout::subs::IndexSizes;
use crate::fanout::worker::{AuthSetup, ConnId, Encoding, Tier, WorkerConfig};
use crate::wire::close::CloseCode;

const SEC: u64 = 1_000_000_000;

fn verifier(leeway_s: u64) -> Arc<Verifier> {
    let mut keys = KeySet::new();
    keys.add_secret(SECRET).unwrap();
    Arc::new(Verifier::new(
        keys,
        VerifierConfig {
            leeway_s,
            ..VerifierConfig::default()
        },
    ))
}

/// A harness whose core authenticates in `mode`, its Unix clock at `NOW`.
fn h_with(mode: AuthMode, anonymous: Entitlements, cfg: WorkerConfig) -> H {
    let mut h = H::new(cfg);
    h.core.set_auth(AuthSetup {
        mode,
        verifier: Some(verifier(0)),
        anonymous: Arc::new(anonymous),
    });
    h.core.set_unix_offset_ns(NOW * SEC, h.now_ns);
    h
}

fn auth_text(token: &str, id: u64) -> String {
    format!(r#"{{"op":"auth","token":"{token}","id":{id}}}"#)
}

fn token(sub: &str, exp_in_s: u64, tw: serde_json::Value) -> String {
    hs(json!({"sub": sub, "exp": NOW + exp_in_s, "tw": tw}))
}

/// (type, id, code or sub) of each message the client got.
fn got(h: &mut H, c: &mut Client) -> Vec<(String, u64, String)> {
    c.read_all(&mut h.core, h.now_ns);
    c.take()
        .into_iter()
        .map(|e| {
            let detail = if e.ty == "authenticated" {
                e.symbol.clone()
            } else if e.ty == "unsubscribed" {
                format!("{}:{}", e.symbols.join(","), e.channels.join(","))
            } else {
                e.code.clone()
            };
            (e.ty, e.id, detail)
        })
        .collect()
}

fn ev(ty: &str, id: u64, detail: &str) -> (String, u64, String) {
    (ty.to_string(), id, detail.to_string())
}

fn closes(h: &mut H) -> Vec<(ConnId, CloseCode)> {
    std::iter::from_fn(|| h.core.poll_close())
        .map(|(c, code, _)| (c, code))
        .collect()
}

#[test]
fn required_serves_only_auth_until_authenticated() {
    let mut h = h_with(AuthMode::Required, Entitlements::unlimited(), cfg());
    let mut c = h.client(Encoding::Json);
    assert_eq!(h.core.conn_tier(c.conn), Some(Tier::Pending));
    // The 5 s deadline is reported for the wheel.
    assert_eq!(
        h.core.poll_auth_deadline(),
        Some((c.conn, crate::auth::AUTH_DEADLINE_NS))
    );
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&c, "garbage");
    assert_eq!(
        got(&mut h, &mut c),
        vec![
            ev("error", 1, "unauthorized"),
            ev("error", 0, "bad_request")
        ]
    );
    assert_eq!(h.core.stats().index, IndexSizes::default());
    h.text(&c, &auth_text(&token("alice", 60, json!({})), 2));
    assert_eq!(got(&mut h, &mut c), vec![ev("authenticated", 2, "alice")]);
    assert_eq!(h.core.conn_tier(c.conn), Some(Tier::User));
    assert_eq!(h.core.conn_user(c.conn).map(|s| &**s), Some("alice"));
    assert_eq!(
        h.core.poll_auth_deadline(),
        Some((c.conn, h.now_ns + 60 * SEC))
    );
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 3));
    assert_eq!(got(&mut h, &mut c), vec![ev("subscribed", 3, "")]);
    let s = h.core.stats();
    assert_eq!(s.auth_results[AuthResult::Ok as usize], 1);
    assert_eq!(s.rejected_unauthorized, 1);
    assert_eq!(s.tiers[Tier::User as usize], 1);
}

#[test]
fn a_bad_token_answers_unauthorized_then_closes_4005() {
    let mut h = h_with(AuthMode::Required, Entitlements::unlimited(), cfg());
    let bad = [
        ("not.a.token".to_string(), AuthResult::Malformed),
        (String::new(), AuthResult::Malformed),
        (token("a", 0, json!({})), AuthResult::Expired),
        (
            token("a", 9, json!({"max_depth": "x"})),
            AuthResult::BadClaims,
        ),
    ];
    for (t, result) in bad {
        let mut c = h.client(Encoding::Proto);
        h.text(&c, &auth_text(&t, 5));
        assert_eq!(got(&mut h, &mut c), vec![ev("error", 5, "unauthorized")]);
        assert_eq!(
            closes(&mut h),
            vec![(c.conn, CloseCode::UNAUTHORIZED)],
            "{t}"
        );
        assert!(
            h.core.stats().auth_results[result as usize] >= 1,
            "{result:?}"
        );
        h.core.close_conn(c.conn);
    }
}

#[test]
fn no_auth_within_5_s_closes_4005() {
    let mut h = h_with(AuthMode::Required, Entitlements::unlimited(), cfg());
    let c = h.client(Encoding::Proto);
    let (conn, at) = h.core.poll_auth_deadline().unwrap();
    h.core.handle_auth_timer(conn, at - 1);
    assert!(closes(&mut h).is_empty());
    assert_eq!(h.core.poll_auth_deadline(), Some((conn, at)), "asked again");
    h.core.handle_auth_timer(conn, at);
    assert_eq!(closes(&mut h), vec![(c.conn, CloseCode::UNAUTHORIZED)]);
    assert_eq!(h.core.stats().auth_results[AuthResult::Timeout as usize], 1);
}

/// PROTOCOL §8: `bad_request`, `forbidden`, `too_many_subscriptions`,
/// `unknown_symbol`, the first failure answers; nothing changes.
#[test]
fn forbidden_takes_its_place_in_the_check_order() {
    let mut h = h_with(
        AuthMode::Required,
        Entitlements::unlimited(),
        WorkerConfig {
            max_subscriptions: 2,
            ..cfg()
        },
    );
    let mut c = h.client(Encoding::Proto);
    h.text(
        &c,
        &auth_text(
            &token(
                "bob",
                60,
                json!({"symbols": ["BTC-*", "ETH-USD", "NOPE*"], "channels": ["book"]}),
            ),
            1,
        ),
    );
    got(&mut h, &mut c);
    h.drain_to_ingest();
    let cases = [
        (
            sub_text(&["SOL-USD", "bad sym"], &["book"], 2),
            "bad_request",
        ),
        (sub_text(&["SOL-USD"], &["book"], 3), "forbidden"),
        (sub_text(&["BTC-USD"], &["trades"], 4), "forbidden"),
        (sub_text(&["BTC-USD", "SOL-USD"], &["book"], 5), "forbidden"),
        (
            sub_text(&["BTC-USD", "ETH-USD", "NOPE1"], &["book"], 6),
            "too_many_subscriptions",
        ),
        (
            sub_text(&["BTC-USD", "NOPE1"], &["book"], 7),
            "unknown_symbol",
        ),
    ];
    for (text, code) in &cases {
        h.text(&c, text);
        let evs = got(&mut h, &mut c);
        assert_eq!(evs.len(), 1, "{text}");
        assert_eq!(
            (evs[0].0.as_str(), evs[0].2.as_str()),
            ("error", *code),
            "{text}"
        );
    }
    assert_eq!(
        h.core.stats().index,
        IndexSizes::default(),
        "nothing changed"
    );
    assert!(h.drain_to_ingest().is_empty());
    assert_eq!(h.core.stats().rejected_forbidden, 3);
    h.text(&c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 8));
    assert_eq!(got(&mut h, &mut c), vec![ev("subscribed", 8, "")]);
}

#[test]
fn refresh_widens_and_narrows() {
    let mut h = h_with(AuthMode::Required, Entitlements::unlimited(), cfg());
    let mut c = h.client(Encoding::Json);
    h.text(
        &c,
        &auth_text(&token("carol", 60, json!({"symbols": ["BTC-USD"]})), 1),
    );
    h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 2));
    assert_eq!(
        got(&mut h, &mut c),
        vec![ev("authenticated", 1, "carol"), ev("error", 2, "forbidden")]
    );
    // Widened: ETH allowed now, BTC still.
    h.text(
        &c,
        &auth_text(&token("carol", 120, json!({"symbols": ["*-USD"]})), 3),
    );
    h.text(
        &c,
        &sub_text(&["BTC-USD", "ETH-USD"], &["book", "trades"], 4),
    );
    assert_eq!(
        got(&mut h, &mut c),
        vec![ev("authenticated", 3, "carol"), ev("subscribed", 4, "")]
    );
    h.serve();
    // Narrowed to ETH trades only: BTC's book and trades and ETH's book end.
    h.text(
        &c,
        &auth_text(
            &token(
                "carol",
                180,
                json!({"symbols": ["ETH-*"], "channels": ["trades"]}),
            ),
            5,
        ),
    );
    let evs = got(&mut h, &mut c);
    assert_eq!(
        evs.iter()
            .filter(|e| e.0 != "snapshot")
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            ev("authenticated", 5, "carol"),
            ev("unsubscribed", 0, "BTC-USD,ETH-USD:book"),
            ev("unsubscribed", 0, "BTC-USD:trades"),
        ]
    );
    let to_ingest = h.drain_to_ingest();
    assert!(to_ingest.contains(&interest(BTC, Lane::Book, false)));
    assert!(to_ingest.contains(&interest(ETH, Lane::Book, false)));
    assert!(to_ingest.contains(&interest(BTC, Lane::Trades, false)));
    assert!(!to_ingest.contains(&interest(ETH, Lane::Trades, false)));
    // Nothing more of what ended arrives; ETH trades still do.
    h.delta(BTC);
    h.delta(ETH);
    let t = h.ing.trade(ETH);
    h.ring(t);
    let t = h.ing.trade(BTC);
    h.ring(t);
    c.read_all(&mut h.core, h.now_ns);
    let evs = c.take();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].ty.as_str(), evs[0].symbol.as_str()),
        ("trade", "ETH-USD")
    );
    // Another user's token, or an older one: forbidden, nothing changes.
    h.text(&c, &auth_text(&token("mallory", 999, json!({})), 6));
    h.text(&c, &auth_text(&token("carol", 150, json!({})), 7));
    assert_eq!(
        got(&mut h, &mut c),
        vec![ev("error", 6, "forbidden"), ev("error", 7, "forbidden")]
    );
    assert_eq!(h.core.conn_user(c.conn).map(|s| &**s), Some("carol"));
    let s = h.core.stats();
    assert_eq!(s.auth_results[AuthResult::Refreshed as usize], 2);
    assert_eq!(s.auth_results[AuthResult::OtherUser as usize], 1);
    assert_eq!(s.auth_results[AuthResult::Older as usize], 1);
    assert!(closes(&mut h).is_empty());
}

#[test]
fn expiry_closes_4004_at_exp_and_a_refresh_moves_it() {
    let mut h = h_with(AuthMode::Required, Entitlements::unlimited(), cfg());
    let mut c = h.client(Encoding::Proto);
    h.core.poll_auth_deadline();
    h.text(&c, &auth_text(&token("dave", 2, json!({})), 1));
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 2));
    h.serve();
    got(&mut h, &mut c);
    let (conn, at) = h.core.poll_auth_deadline().unwrap();
    assert_eq!(at, h.now_ns + 2 * SEC);
    // A refresh before it: the old deadline fires and finds the new one.
    h.text(&c, &auth_text(&token("dave", 3, json!({})), 3));
    got(&mut h, &mut c);
    let (_, at3) = h.core.poll_auth_deadline().unwrap();
    assert_eq!(at3, h.now_ns + 3 * SEC);
    h.core.handle_auth_timer(conn, at);
    assert!(closes(&mut h).is_empty());
    assert_eq!(h.core.poll_auth_deadline(), Some((conn, at3)));
    // Data queued but not yet written when the token expires never leaves.
    for _ in 0..5 {
        h.delta(BTC);
    }
    h.core.handle_auth_timer(conn, at3);
    assert_eq!(closes(&mut h), vec![(c.conn, CloseCode::TOKEN_EXPIRED)]);
    c.read_all(&mut h.core, h.now_ns);
    assert!(c.take().is_empty(), "nothing after the expiry");
    assert_eq!(h.core.stats().token_expired_closes, 1);
    assert_eq!(h.core.stats().index, IndexSizes::default());
}

#[test]
fn admission_refused_closes_4006() {
    let mut h = h_with(AuthMode::Required, Entitlements::unlimited(), cfg());
    let mut c = h.client(Encoding::Proto);
    let t = token("erin", 60, json!({"max_connections": 1}));
    let mut asked = Vec::new();
    h.core
        .handle_text_admit(c.conn, &auth_text(&t, 1), h.now_ns, &mut |sub, max| {
            asked.push((sub.to_string(), max));
            false
        });
    assert_eq!(asked, vec![("erin".to_string(), Some(1))]);
    assert!(got(&mut h, &mut c).is_empty());
    assert_eq!(closes(&mut h), vec![(c.conn, CloseCode::USER_CONNECTIONS)]);
    assert_eq!(h.core.stats().rejected_user_connections, 1);
    // A refresh is never asked: the connection is counted already.
    let mut d = h.client(Encoding::Proto);
    h.text(&d, &auth_text(&t, 2));
    h.core
        .handle_text_admit(d.conn, &auth_text(&t, 3), h.now_ns, &mut |_, _| {
            panic!("a refresh is no new connection")
        });
    assert_eq!(
        got(&mut h, &mut d),
        vec![
            ev("authenticated", 2, "erin"),
            ev("authenticated", 3, "erin")
        ]
    );
}

/// `--auth optional`: without a token, the anonymous entitlements; `auth`
/// upgrades the connection to its user's.
#[test]
fn anonymous_tier_then_auth() {
    let anon =
        Entitlements::from_claim(&json!({"channels": ["trades"], "symbols": ["BTC-USD"]})).unwrap();
    let mut h = h_with(AuthMode::Optional, anon, cfg());
    let mut c = h.client(Encoding::Proto);
    assert_eq!(h.core.conn_tier(c.conn), Some(Tier::Anonymous));
    assert_eq!(
        h.core.poll_auth_deadline(),
        None,
        "no deadline for anonymous"
    );
    h.text(&c, &sub_text(&["BTC-USD"], &["book"], 1));
    h.text(&c, &sub_text(&["ETH-USD"], &["trades"], 2));
    h.text(&c, &sub_text(&["BTC-USD"], &["trades"], 3));
    assert_eq!(
        got(&mut h, &mut c),
        vec![
            ev("error", 1, "forbidden"),
            ev("error", 2, "forbidden"),
            ev("subscribed", 3, "")
        ]
    );
    h.text(&c, &auth_text(&token("frank", 60, json!({})), 4));
    h.text(&c, &sub_text(&["ETH-USD"], &["book"], 5));
    assert_eq!(
        got(&mut h, &mut c),
        vec![ev("authenticated", 4, "frank"), ev("subscribed", 5, "")]
    );
    assert_eq!(h.core.stats().tiers[Tier::User as usize], 1);
}

/// The entitlement's request rate and subscription limit apply when lower
/// than the server's; `auth` requests count against the rate.
#[test]
fn per_user_rate_and_subscription_limit() {
    let mut h = h_with(
        AuthMode::Required,
        Entitlements::unlimited(),
        WorkerConfig {
            requests: RequestLimits {
                requests: Rate {
                    per_sec: 100,
                    burst: 100,
                },
                strikes: Rate::UNLIMITED,
            },
            ..cfg()
        },
    );
    let mut c = h.client(Encoding::Proto);
    let t = token(
        "gus",
        60,
        json!({"requests_per_sec": 1, "max_subscriptions": 1}),
    );
    h.text(&c, &auth_text(&t, 1));
    h.text(&c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 2));
    got(&mut h, &mut c);
    // 1/s with a burst of 2: the two above used it; an `auth` flood is limited.
    for i in 0..3 {
        h.text(&c, &auth_text(&t, 10 + i));
    }
    let evs = got(&mut h, &mut c);
    assert!(evs.iter().all(|e| e.2 == "rate_limited"), "{evs:?}");
    h.now_ns += 2 * SEC;
    h.text(&c, &sub_text(&["BTC-USD", "ETH-USD"], &["book"], 20));
    assert_eq!(
        got(&mut h, &mut c),
        vec![ev("error", 20, "too_many_subscriptions")]
    );
}

/// Authentication off: `auth` is a `bad_request`, everything else as before.
#[test]
fn off_is_as_before() {
    let mut h = H::new(cfg());
    let mut c = h.client(Encoding::Proto);
    assert_eq!(h.core.conn_tier(c.conn), Some(Tier::Open));
    h.text(&c, &auth_text("x.y.z", 1));
    h.text(&c, &sub_text(&["BTC-USD"], &["book", "trades"], 2));
    assert_eq!(
        got(&mut h, &mut c),
        vec![ev("error", 1, "bad_request"), ev("subscribed", 2, "")]
    );
    assert_eq!(h.core.poll_auth_deadline(), None);
}
