//! PROTOCOL §8 against the real engine, with real tokens signed in the test
//! by `jsonwebtoken` with keys the test makes (tests/common/keys.rs): every
//! way of presenting a token, each claim enforced, refresh, expiry on time
//! in a burst, `max_connections` exact over two workers, the anonymous tier,
//! every bad token answered and counted with other clients undisturbed, the
//! ingest token file and its reload, and (the real binary) SIGHUP and secrets
//! kept out of `--help`, logs and `/metrics`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::harness::{config, delta, metric_with, proto, snap, wait_until};
use common::keys::{self, ed25519_pems, forge, hs256_secret, now_s, sign_ed25519, sign_hs256};
use common::{Client, Enc, SocketOpts, try_upgrade_to};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tickwire::auth::AuthMode;
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::wire::pb::{self, server_message::Body};

const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

/// Key files of one test, in a fresh directory.
struct Keys {
    dir: PathBuf,
    secret: String,
    ed_private: String,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!(
            "tickwire-auth-{name}-{}-{:x}",
            std::process::id(),
            u64::from_le_bytes(keys::random_bytes())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = hs256_secret();
        std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap();
        let (ed_private, ed_public) = ed25519_pems();
        std::fs::write(dir.join("ed.pub"), ed_public).unwrap();
        Keys {
            dir,
            secret,
            ed_private,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn hs(&self, claims: &Value) -> String {
        sign_hs256(&self.secret, claims)
    }

    fn ed(&self, claims: &Value) -> String {
        sign_ed25519(&self.ed_private, claims)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user(sub: &str, exp_in_s: u64, tw: Value) -> Value {
    json!({"sub": sub, "exp": now_s() + exp_in_s, "tw": tw})
}

/// An engine authenticating in `mode` with the HS256 secret and the Ed25519
/// key of `k`, and BTC-USD, ETH-USD, SOL-USD from a feed (kept open).
fn engine(
    k: &Keys,
    mode: AuthMode,
    workers: usize,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Engine, TcpStream) {
    let mut cfg = config(workers);
    cfg.auth.mode = mode;
    cfg.auth.secret_file = Some(k.path("secret"));
    cfg.auth.public_key_files = vec![k.path("ed.pub")];
    tune(&mut cfg);
    let e = Engine::start(cfg).expect("engine starts");
    let mut feed = TcpStream::connect(e.ingest.proto_addr).unwrap();
    feed.write_all(&proto(&[
        snap("BTC-USD", 1, 100, 101),
        snap("ETH-USD", 1, 200, 201),
        snap("SOL-USD", 1, 300, 301),
    ]))
    .unwrap();
    wait_until("three symbols", || {
        e.ingest
            .with_market(WAIT, |m| m.symbols().len())
            .unwrap_or(0)
            == 3
    });
    (e, feed)
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

fn connect(e: &Engine, seed: u64, path: &str, headers: &[&str]) -> Client {
    Client::connect_to(
        e.ws_addr,
        Enc::Proto,
        seed,
        SocketOpts::default(),
        path,
        headers,
    )
}

/// The upgrade's status and response head.
fn upgrade(e: &Engine, seed: u64, path: &str, headers: &[&str]) -> (u16, String) {
    let (status, head, _s) = try_upgrade_to(e.ws_addr, SocketOpts::default(), seed, path, headers);
    (status, head)
}

fn auth(c: &mut Client, token: &str, id: u64) {
    c.send(&format!(r#"{{"op":"auth","token":"{token}","id":{id}}}"#));
}

/// The next answer (not market data) within `WAIT`.
fn answer(c: &mut Client) -> Body {
    c.next_in_log(WAIT, |b| {
        matches!(
            b,
            Body::Subscribed(_) | Body::Unsubscribed(_) | Body::Error(_) | Body::Authenticated(_)
        )
    })
    .unwrap_or_else(|| panic!("no answer; closed: {:?}", c.closed))
}

fn error_code(b: &Body) -> Option<(u64, &str)> {
    match b {
        Body::Error(e) => Some((e.id, e.code.as_str())),
        _ => None,
    }
}

/// Subscribes and returns the answer's code ("subscribed" or the error's).
fn sub(c: &mut Client, symbols: &[&str], channels: &[&str], id: u64) -> String {
    c.subscribe(symbols, channels, id);
    match answer(c) {
        Body::Subscribed(s) => {
            assert_eq!(s.id, id);
            "subscribed".into()
        }
        Body::Error(e) => {
            assert_eq!(e.id, id);
            e.code
        }
        other => panic!("{other:?}"),
    }
}

/// Nothing but what `allowed` accepts arrives for `SHORT`.
fn nothing_more(c: &mut Client, what: &str) {
    let got = c.read_for(SHORT);
    assert!(got.is_empty(), "{what}: {got:?}");
}

fn close_code(c: &mut Client) -> u16 {
    let deadline = Instant::now() + WAIT;
    while c.closed.is_none() && Instant::now() < deadline {
        c.read_for(Duration::from_millis(50));
    }
    c.closed.as_ref().map_or(0, |(code, _)| *code)
}

fn rejections(e: &Engine, reason: &str) -> u64 {
    metric_with(
        e,
        "tickwire_rejections_total",
        &format!("reason=\"{reason}\""),
    )
}

fn auth_results(e: &Engine, result: &str) -> u64 {
    metric_with(
        e,
        "tickwire_authentications_total",
        &format!("result=\"{result}\""),
    )
}

/// PROTOCOL §8, first match wins: `Authorization: Bearer`, `?token=`, a
/// first `auth` request. Until authenticated: `Error{unauthorized}`.
#[test]
fn each_way_of_presenting_a_token() {
    let k = Keys::new("ways");
    let (e, _feed) = engine(&k, AuthMode::Required, 1, |_| {});
    let claims = user("alice", 600, json!({}));
    // Header, HS256.
    let mut a = connect(&e, 1, "/ws", &[&bearer(&k.hs(&claims))]);
    assert_eq!(sub(&mut a, &["BTC-USD"], &["book"], 1), "subscribed");
    // Query, EdDSA, JSON encoding.
    let mut b = Client::connect_to(
        e.ws_addr,
        Enc::JsonQuery,
        2,
        SocketOpts::default(),
        &format!("/ws?encoding=json&token={}", k.ed(&claims)),
        &[],
    );
    assert_eq!(sub(&mut b, &["BTC-USD"], &["book"], 2), "subscribed");
    // The header wins over the query: a bad header token with a good query one.
    let (status, head) = upgrade(
        &e,
        3,
        &format!("/ws?token={}", k.hs(&claims)),
        &[&bearer("bad.token.here")],
    );
    assert_eq!(status, 401);
    assert!(
        head.contains("WWW-Authenticate: Bearer error=\"invalid_token\""),
        "{head}"
    );
    // No token at the upgrade: only `auth` is served.
    let mut c = connect(&e, 4, "/ws", &[]);
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 5), "unauthorized");
    auth(&mut c, &k.ed(&claims), 6);
    match answer(&mut c) {
        Body::Authenticated(a) => {
            assert_eq!((a.id, a.sub.as_str()), (6, "alice"));
            assert_eq!(
                a.expires_at_ns,
                claims["exp"].as_u64().unwrap() * 1_000_000_000
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 7), "subscribed");
    // A bad token in `auth`: Error{unauthorized}, then 4005.
    let mut d = connect(&e, 5, "/ws", &[]);
    auth(
        &mut d,
        &k.hs(&json!({"sub": "alice", "exp": now_s() - 120})),
        8,
    );
    assert_eq!(error_code(&answer(&mut d)), Some((8, "unauthorized")));
    assert_eq!(close_code(&mut d), 4005);
    // The others are served all along.
    for (cl, n) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        assert!(cl.closed.is_none(), "{n} closed: {:?}", cl.closed);
        assert!(cl.violations.is_empty(), "{n}: {:?}", cl.violations);
    }
    wait_until("counted", || {
        auth_results(&e, "ok") == 3 && rejections(&e, "unauthorized") >= 3
    });
}

/// RS256 and ES256 (PROTOCOL §8), with keys made by `openssl` for this test:
/// each verifies with its own public key file, a token of one signed with the
/// other's key (or claiming the other algorithm) is refused.
#[test]
fn rs256_and_es256_tokens_verify_with_their_public_keys() {
    let (Some((rsa_private, rsa_public)), Some((ec_private, ec_public))) =
        (keys::openssl_pems("rsa"), keys::openssl_pems("ec"))
    else {
        panic!("openssl is needed to make the RSA and P-256 test keys");
    };
    let k = Keys::new("rsa-ec");
    std::fs::write(k.path("rsa.pub"), rsa_public).unwrap();
    std::fs::write(k.path("ec.pub"), ec_public).unwrap();
    let (e, _feed) = engine(&k, AuthMode::Required, 1, |cfg| {
        cfg.auth.public_key_files = vec![k.path("rsa.pub"), k.path("ec.pub")];
    });
    let claims = user("carol", 600, json!({}));
    let rs = keys::sign_pem(Algorithm::RS256, &rsa_private, &claims);
    let es = keys::sign_pem(Algorithm::ES256, &ec_private, &claims);
    let mut a = connect(&e, 1, "/ws", &[&bearer(&rs)]);
    assert_eq!(sub(&mut a, &["BTC-USD"], &["book"], 1), "subscribed");
    let mut b = connect(&e, 2, "/ws", &[]);
    auth(&mut b, &es, 2);
    assert!(matches!(answer(&mut b), Body::Authenticated(_)));
    assert_eq!(sub(&mut b, &["BTC-USD"], &["book"], 3), "subscribed");
    // An RS256 header over an ES256 signature, and a token signed by a key
    // the engine does not hold: 401 at the upgrade.
    let parts: Vec<&str> = es.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        rs.split('.').next().unwrap(),
        parts[1],
        parts[2]
    );
    let (stranger_private, _) = keys::openssl_pems("ec").unwrap();
    let stranger = keys::sign_pem(Algorithm::ES256, &stranger_private, &claims);
    for bad in [forged, stranger] {
        let (status, _) = upgrade(&e, 3, "/ws", &[&bearer(&bad)]);
        assert_eq!(status, 401, "{bad}");
    }
    assert!(a.closed.is_none() && b.closed.is_none());
    wait_until("counted", || auth_results(&e, "ok") == 2);
}

/// Each claim of `tw`: a subscription outside it is refused and changes
/// nothing (no snapshot follows; all-or-nothing); one inside is served.
#[test]
fn each_claim_is_enforced() {
    let k = Keys::new("claims");
    let (e, _feed) = engine(&k, AuthMode::Required, 1, |_| {});
    let with =
        |tw: Value, seed: u64| connect(&e, seed, "/ws", &[&bearer(&k.hs(&user("u", 600, tw)))]);

    let mut c = with(json!({"symbols": ["BTC-*", "SOL-USD"]}), 1);
    assert_eq!(
        sub(&mut c, &["BTC-USD", "ETH-USD"], &["book"], 1),
        "forbidden"
    );
    nothing_more(&mut c, "all-or-nothing: no BTC snapshot");
    assert_eq!(
        sub(&mut c, &["BTC-USD", "SOL-USD"], &["book"], 2),
        "subscribed"
    );

    let mut c = with(json!({"channels": ["trades"]}), 2);
    assert_eq!(
        sub(&mut c, &["BTC-USD"], &["book", "trades"], 1),
        "forbidden"
    );
    nothing_more(&mut c, "channels");
    assert_eq!(sub(&mut c, &["BTC-USD"], &["trades"], 2), "subscribed");

    // `book` counts as unlimited depth and real time.
    let mut c = with(json!({"max_depth": 10}), 3);
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 1), "forbidden");
    assert_eq!(sub(&mut c, &["BTC-USD"], &["trades"], 2), "subscribed");
    let mut c = with(json!({"min_interval_ms": 100}), 4);
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 1), "forbidden");
    assert_eq!(sub(&mut c, &["BTC-USD"], &["trades"], 2), "subscribed");

    let mut c = with(json!({"max_subscriptions": 1}), 5);
    assert_eq!(
        sub(&mut c, &["BTC-USD", "ETH-USD"], &["book"], 1),
        "too_many_subscriptions"
    );
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 2), "subscribed");
    assert_eq!(
        sub(&mut c, &["ETH-USD"], &["trades"], 3),
        "too_many_subscriptions"
    );

    // 1 request/s: a burst of 2, then rate_limited.
    let mut c = with(json!({"requests_per_sec": 1}), 6);
    assert_eq!(sub(&mut c, &["BTC-USD"], &["trades"], 1), "subscribed");
    assert_eq!(sub(&mut c, &["ETH-USD"], &["trades"], 2), "subscribed");
    assert_eq!(sub(&mut c, &["SOL-USD"], &["trades"], 3), "rate_limited");

    // The check order: bad_request, forbidden, too_many_subscriptions, unknown_symbol.
    let mut c = with(json!({"symbols": ["BTC-*"], "max_subscriptions": 1}), 7);
    assert_eq!(
        sub(&mut c, &["BTC-USD", "bad sym"], &["book"], 1),
        "bad_request"
    );
    assert_eq!(
        sub(&mut c, &["ETH-USD", "BTC-X", "BTC-Y"], &["book"], 2),
        "forbidden"
    );
    assert_eq!(
        sub(&mut c, &["BTC-X", "BTC-Y"], &["book"], 3),
        "too_many_subscriptions"
    );
    assert_eq!(sub(&mut c, &["BTC-X"], &["book"], 4), "unknown_symbol");
    wait_until("forbidden counted", || rejections(&e, "forbidden") == 5);
}

/// `auth` again with a newer token of the same `sub`: widened, then
/// narrowed (what is no longer allowed ends with `Unsubscribed` id 0 and no
/// more of it arrives); another user's token: `forbidden`, nothing changes.
#[test]
fn refresh_widens_and_narrows() {
    let k = Keys::new("refresh");
    let (e, mut feed) = engine(&k, AuthMode::Required, 1, |_| {});
    let mut c = connect(&e, 1, "/ws", &[]);
    auth(
        &mut c,
        &k.hs(&user("carol", 600, json!({"symbols": ["BTC-USD"]}))),
        1,
    );
    assert!(matches!(answer(&mut c), Body::Authenticated(_)));
    assert_eq!(sub(&mut c, &["ETH-USD"], &["book"], 2), "forbidden");
    auth(
        &mut c,
        &k.ed(&user("carol", 700, json!({"symbols": ["*"]}))),
        3,
    );
    assert!(matches!(answer(&mut c), Body::Authenticated(_)));
    assert_eq!(
        sub(&mut c, &["BTC-USD", "ETH-USD"], &["book"], 4),
        "subscribed"
    );
    auth(
        &mut c,
        &k.hs(&user("carol", 800, json!({"symbols": ["ETH-*"]}))),
        5,
    );
    assert!(matches!(answer(&mut c), Body::Authenticated(a) if a.id == 5));
    match answer(&mut c) {
        Body::Unsubscribed(u) => {
            assert_eq!(u.id, 0);
            assert_eq!(u.symbols, vec!["BTC-USD"]);
            assert_eq!(u.channels, vec!["book"]);
        }
        other => panic!("{other:?}"),
    }
    auth(&mut c, &k.hs(&user("mallory", 900, json!({}))), 6);
    assert_eq!(error_code(&answer(&mut c)), Some((6, "forbidden")));
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 7), "forbidden");
    // Only ETH's deltas arrive now.
    feed.write_all(&proto(&[
        delta("BTC-USD", 2, 99, 5),
        delta("ETH-USD", 2, 199, 5),
    ]))
    .unwrap();
    let got = c.read_for(Duration::from_millis(500));
    let deltas: Vec<&str> = got
        .iter()
        .filter_map(|b| match b {
            Body::Delta(d) => Some(d.symbol.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, vec!["ETH-USD"]);
    assert!(c.closed.is_none() && c.violations.is_empty());
    wait_until("refreshes counted", || {
        auth_results(&e, "refreshed") == 2 && auth_results(&e, "other_user") == 1
    });
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// At `exp` (leeway 0) the connection is closed 4004, on time, although a
/// burst of deltas keeps its worker busy; through the timing wheel.
#[test]
fn expiry_closes_4004_on_time_in_a_burst() {
    let k = Keys::new("expiry");
    let (e, feed) = engine(&k, AuthMode::Required, 1, |cfg| {
        cfg.auth.verifier.leeway_s = 0;
    });
    // At least 1.5 s of life: exp is in whole seconds.
    let exp = (unix_ns() + 1_500_000_000).div_ceil(1_000_000_000);
    let t = k.hs(&json!({"sub": "dave", "exp": exp}));
    let mut c = connect(&e, 1, "/ws", &[&bearer(&t)]);
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 1), "subscribed");
    let stop = Arc::new(AtomicBool::new(false));
    let burst = {
        let stop = stop.clone();
        let mut feed = feed.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut seq = 2;
            while !stop.load(Ordering::Relaxed) && seq < 2_000_000 {
                let batch: Vec<_> = (0..50)
                    .map(|i| delta("BTC-USD", seq + i, 90 + (seq + i) as i64 % 7, 1 + i as i64))
                    .collect();
                seq += 50;
                if feed.write_all(&proto(&batch)).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let code = close_code(&mut c);
    let at = unix_ns();
    stop.store(true, Ordering::Relaxed);
    burst.join().unwrap();
    let exp_ns = exp * 1_000_000_000;
    assert_eq!(code, 4004, "{:?}", c.closed);
    assert!(
        at + 20_000_000 >= exp_ns,
        "closed {} ms early",
        (exp_ns - at) / 1_000_000
    );
    assert!(
        at < exp_ns + 400_000_000,
        "closed {} ms late",
        (at - exp_ns) / 1_000_000
    );
    let deltas = c.books.get("BTC-USD").map_or(0, |b| b.deltas);
    assert!(deltas > 100, "the burst reached the client: {deltas}");
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    wait_until("counted", || rejections(&e, "token_expired") == 1);
}

/// A user's `max_connections` is exact for the process, whichever worker
/// each connection landed on: 429 at the upgrade, 4006 after a late `auth`;
/// a close gives the slot back.
#[test]
fn max_connections_is_exact_over_two_workers() {
    let k = Keys::new("maxconn");
    let (e, _feed) = engine(&k, AuthMode::Required, 2, |_| {});
    let sockets = |w: u32| metric_with(&e, "tickwire_worker_sockets", &format!("worker=\"{w}\""));
    // Unauthenticated connections until both workers hold three.
    let mut pending = Vec::new();
    for seed in 0..64 {
        if sockets(0) >= 3 && sockets(1) >= 3 {
            break;
        }
        pending.push(connect(&e, 100 + seed, "/ws", &[]));
    }
    assert!(
        sockets(0) >= 3 && sockets(1) >= 3,
        "spread over both workers"
    );
    let max = 4;
    let t = k.hs(&user("erin", 600, json!({"max_connections": max})));
    for (i, c) in pending.iter_mut().enumerate() {
        auth(c, &t, i as u64);
    }
    let mut ok = 0;
    let mut refused = 0;
    for c in pending.iter_mut() {
        match c.read_until(WAIT, |b| matches!(b, Body::Authenticated(_))) {
            Some(_) => ok += 1,
            None => {
                assert_eq!(c.closed.as_ref().map(|x| x.0), Some(4006), "{:?}", c.closed);
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (max, pending.len() - max));
    // At the upgrade: 429.
    let (status, head) = upgrade(&e, 7, "/ws", &[&bearer(&t)]);
    assert_eq!(status, 429, "{head}");
    // One closes: its slot is free again, for exactly one.
    let i = pending.iter().position(|c| c.closed.is_none()).unwrap();
    pending[i].close(1000);
    assert_eq!(close_code(&mut pending[i]), 1000);
    let mut again = None;
    wait_until("a slot given back", || {
        let (status, _, s) =
            try_upgrade_to(e.ws_addr, SocketOpts::default(), 8, "/ws", &[&bearer(&t)]);
        if status == 101 {
            again = Some(s);
        }
        status == 101
    });
    assert_eq!(upgrade(&e, 9, "/ws", &[&bearer(&t)]).0, 429);
    // The 4006s and the two 429s above (and any while the slot came back).
    wait_until("counted", || {
        rejections(&e, "user_connections") >= (pending.len() - max) as u64 + 2
    });
    // Another user is not limited by erin's count.
    let other = k.hs(&user("frank", 600, json!({"max_connections": 1})));
    assert_eq!(upgrade(&e, 10, "/ws", &[&bearer(&other)]).0, 101);
    drop(again);
}

/// `--auth optional`: clients without a token get the `--anonymous-*`
/// entitlements (here `book.10@1000ms,trades` of BTC-*: no full book);
/// `auth` makes one a user.
#[test]
fn anonymous_tier() {
    let k = Keys::new("anon");
    let (e, _feed) = engine(&k, AuthMode::Optional, 1, |cfg| {
        cfg.auth.anonymous.channels = vec!["book.10@1000ms".into(), "trades".into()];
        cfg.auth.anonymous.symbols = vec!["BTC-*".into()];
    });
    let mut c = connect(&e, 1, "/ws", &[]);
    assert_eq!(sub(&mut c, &["BTC-USD"], &["book"], 1), "forbidden");
    assert_eq!(sub(&mut c, &["ETH-USD"], &["trades"], 2), "forbidden");
    assert_eq!(sub(&mut c, &["BTC-USD"], &["trades"], 3), "subscribed");
    // The variants it allows and the coarser ones are served (PROTOCOL §9);
    // finer ones are not.
    assert_eq!(
        sub(&mut c, &["BTC-USD"], &["book.10@100ms"], 6),
        "forbidden"
    );
    assert_eq!(
        sub(&mut c, &["BTC-USD"], &["book.20@1000ms"], 7),
        "forbidden"
    );
    assert_eq!(
        sub(&mut c, &["BTC-USD"], &["book.10@1000ms"], 8),
        "subscribed"
    );
    assert_eq!(
        sub(&mut c, &["BTC-USD"], &["book.5@5000ms"], 9),
        "subscribed"
    );
    // A token at the upgrade still counts, and a bad one is still 401.
    assert_eq!(upgrade(&e, 2, "/ws", &[&bearer("x.y.z")]).0, 401);
    let mut u = connect(
        &e,
        3,
        "/ws",
        &[&bearer(&k.hs(&user("gina", 600, json!({}))))],
    );
    assert_eq!(sub(&mut u, &["ETH-USD"], &["book"], 1), "subscribed");
    auth(&mut c, &k.hs(&user("gina", 600, json!({}))), 4);
    assert!(matches!(answer(&mut c), Body::Authenticated(_)));
    assert_eq!(sub(&mut c, &["ETH-USD"], &["book"], 5), "subscribed");
    wait_until("tiers published", || {
        metric_with(&e, "tickwire_connections_by_tier", "tier=\"user\"") == 2
    });
}

/// Every bad token of the issue, at the upgrade (401) or in `auth`
/// (`Error{unauthorized}` + 4005), each counted by result, and a client
/// already connected keeps receiving meanwhile. A flood of `auth` counts
/// against the request rate (then 4002).
#[test]
fn bad_tokens_are_answered_counted_and_harmless() {
    let k = Keys::new("bad");
    let (e, mut feed) = engine(&k, AuthMode::Required, 1, |cfg| {
        cfg.auth.verifier.audience = Some("tickwire".into());
    });
    let good = |tw: Value| json!({"sub": "h", "exp": now_s() + 600, "aud": "tickwire", "tw": tw});
    let mut watcher = connect(&e, 1, "/ws", &[&bearer(&k.hs(&good(json!({}))))]);
    assert_eq!(sub(&mut watcher, &["BTC-USD"], &["book"], 1), "subscribed");
    let (other_private, _) = ed25519_pems();
    let now = now_s();
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "not-a-jwt".into()),
        ("malformed", "a.b.c".into()),
        (
            "bad_algorithm",
            forge(r#"{"alg":"none"}"#, &good(json!({})), ""),
        ),
        (
            "bad_algorithm",
            forge(r#"{"alg":"RS256"}"#, &good(json!({})), "AAAA"),
        ),
        (
            "bad_algorithm",
            forge(r#"{"alg":"HS512"}"#, &good(json!({})), "AAAA"),
        ),
        (
            "bad_signature",
            sign_ed25519(&other_private, &good(json!({}))),
        ),
        (
            "bad_signature",
            sign_hs256(&hs256_secret(), &good(json!({}))),
        ),
        (
            "expired",
            k.hs(&json!({"sub": "h", "exp": now - 120, "aud": "tickwire"})),
        ),
        (
            "not_yet_valid",
            k.ed(&json!({"sub": "h", "exp": now + 900, "nbf": now + 600, "aud": "tickwire"})),
        ),
        (
            "wrong_audience",
            k.hs(&json!({"sub": "h", "exp": now + 600, "aud": "other"})),
        ),
        (
            "wrong_audience",
            k.hs(&json!({"sub": "h", "exp": now + 600})),
        ),
        (
            "bad_claims",
            k.hs(&json!({"sub": 7, "exp": now + 600, "aud": "tickwire"})),
        ),
        ("bad_claims", k.hs(&good(json!({"max_depth": "ten"})))),
        (
            "bad_claims",
            k.hs(&good(json!({"symbols": ["*a*b*c*d*e"]}))),
        ),
        ("bad_claims", k.hs(&good(json!({"channels": ["quotes"]})))),
    ];
    // An EdDSA header on an HS256 signature: the algorithm does not match the key.
    let hs = k.hs(&good(json!({})));
    let relabeled = format!(
        "{}.{}",
        forge(r#"{"alg":"EdDSA"}"#, &json!({}), "")
            .split('.')
            .next()
            .unwrap(),
        hs.split_once('.').unwrap().1
    );
    let mut cases = cases;
    cases.push(("bad_signature", relabeled));
    for (i, (result, t)) in cases.iter().enumerate() {
        let (status, head) = upgrade(&e, 100 + i as u64, "/ws", &[&bearer(t)]);
        assert_eq!(status, 401, "{result}: {head}");
    }
    // The same through `auth`, and an oversized token (over 8 KiB: too big
    // for a request head, so only an `auth` can carry it).
    let mut in_auth = cases.clone();
    in_auth.push((
        "too_large",
        format!("{}.{}.x", "e".repeat(6000), "e".repeat(6000)),
    ));
    for (i, (result, t)) in in_auth.iter().enumerate() {
        let mut c = connect(&e, 200 + i as u64, "/ws", &[]);
        auth(&mut c, t, 9);
        assert_eq!(
            error_code(&answer(&mut c)),
            Some((9, "unauthorized")),
            "{result}"
        );
        assert_eq!(close_code(&mut c), 4005, "{result}");
    }
    for result in [
        "malformed",
        "too_large",
        "bad_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "bad_claims",
    ] {
        let n = in_auth.iter().filter(|(r, _)| *r == result).count() as u64;
        let want = n * 2 - u64::from(result == "too_large");
        wait_until(&format!("{result} counted {want} times"), || {
            auth_results(&e, result) == want
        });
    }
    // A flood of `auth`: rate_limited (the burst is 20), then 4002.
    let mut flood = connect(&e, 300, "/ws", &[]);
    let t = k.hs(&good(json!({})));
    for i in 0..60 {
        auth(&mut flood, &t, i);
    }
    assert_eq!(close_code(&mut flood), 4002);
    assert!(
        flood
            .log
            .iter()
            .any(|b| error_code(b).is_some_and(|(_, c)| c == "rate_limited"))
    );
    // Undisturbed: the watcher is open and gets the next delta.
    feed.write_all(&proto(&[delta("BTC-USD", 2, 99, 5)]))
        .unwrap();
    assert!(
        watcher
            .read_until(WAIT, |b| matches!(b, Body::Delta(_)))
            .is_some(),
        "{:?}",
        watcher.closed
    );
    assert!(watcher.violations.is_empty());
}

fn hello(feed_id: &str, token: &str) -> pb::IngestMessage {
    pb::IngestMessage {
        body: Some(pb::ingest_message::Body::Hello(pb::Hello {
            feed_id: feed_id.into(),
            token: token.into(),
        })),
    }
}

/// Is the feed socket closed by the engine (EOF or reset) within `WAIT`?
fn feed_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn symbol_count(e: &Engine) -> usize {
    e.ingest.with_market(WAIT, |m| m.symbols().len()).unwrap()
}

/// Per-feed tokens from a file: each feed its own; a reload that drops a
/// token closes that feed (`token_revoked`) and refuses it after, while the
/// other feeds carry on.
#[test]
fn ingest_token_file_and_revocation() {
    let dir = Keys::new("feeds");
    let file = dir.path("feeds.txt");
    let (ta, tb) = ("a".repeat(20), "b".repeat(20));
    std::fs::write(&file, format!("# feeds\nfeed-a {ta}\nfeed-b {tb}\n")).unwrap();
    let mut cfg = config(1);
    cfg.ingest.token_file = Some(file.clone());
    let e = Engine::start(cfg).unwrap();
    let mut a = TcpStream::connect(e.ingest.proto_addr).unwrap();
    a.write_all(&proto(&[hello("", &ta), snap("AAA", 1, 1, 2)]))
        .unwrap();
    let mut b = TcpStream::connect(e.ingest.proto_addr).unwrap();
    b.write_all(&proto(&[hello("feed-b", &tb), snap("BBB", 1, 1, 2)]))
        .unwrap();
    wait_until("both feeds' symbols", || symbol_count(&e) == 2);
    // Another feed's name with a's token, and an unknown token: closed.
    let mut wrong = TcpStream::connect(e.ingest.proto_addr).unwrap();
    wrong.write_all(&proto(&[hello("feed-b", &ta)])).unwrap();
    assert!(feed_closed(&mut wrong));
    // Revoke a.
    std::fs::write(&file, format!("feed-b {tb}\n")).unwrap();
    e.reload().unwrap();
    assert!(feed_closed(&mut a), "the revoked feed is closed");
    let mut again = TcpStream::connect(e.ingest.proto_addr).unwrap();
    again
        .write_all(&proto(&[hello("", &ta), snap("CCC", 1, 1, 2)]))
        .unwrap();
    assert!(feed_closed(&mut again));
    b.write_all(&proto(&[snap("DDD", 1, 1, 2)])).unwrap();
    wait_until("b carries on", || symbol_count(&e) == 3);
    let closed = |reason: &str| {
        metric_with(
            &e,
            "tickwire_ingest_feeds_closed_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert_eq!(closed("token_revoked"), 1);
    assert_eq!(closed("bad_token"), 2);
    // A file that no longer parses leaves the last one in force.
    std::fs::write(&file, "feed-b short\n").unwrap();
    assert!(e.reload().is_err());
    b.write_all(&proto(&[snap("EEE", 1, 1, 2)])).unwrap();
    wait_until("b still carries on", || symbol_count(&e) == 4);
}

/// The real binary: SIGHUP re-reads the key files without dropping a
/// connection; `--help`, the logs (at debug) and `/metrics` never show the
/// secret or a token.
#[test]
fn sighup_reloads_keys_and_secrets_stay_secret() {
    use std::process::{Command, Stdio};
    let k = Keys::new("sighup");
    let help = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        help.contains("--jwt-secret-file") && help.contains("--auth"),
        "{help}"
    );
    let log = k.path("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
        ])
        .args([
            "--ingest-json",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--auth",
            "required",
        ])
        .arg("--jwt-secret-file")
        .arg(k.path("secret"))
        .arg("--jwt-public-key-file")
        .arg(k.path("ed.pub"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("a line").unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.trim().parse().unwrap();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        addr
    };
    let first = k.ed(&user("ivy", 600, json!({})));
    let mut c = Client::connect_to(
        addr,
        Enc::Proto,
        1,
        SocketOpts::default(),
        "/ws",
        &[&bearer(&first)],
    );
    // A new Ed25519 key replaces the old one; SIGHUP.
    let (new_private, new_public) = ed25519_pems();
    std::fs::write(k.path("ed.pub"), new_public).unwrap();
    // SAFETY: kill(2) on the pid of a child this test spawned and has not waited for.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(sent, 0);
    let second = sign_ed25519(&new_private, &user("ivy", 600, json!({})));
    let up =
        |t: &str, seed| try_upgrade_to(addr, SocketOpts::default(), seed, "/ws", &[&bearer(t)]).0;
    wait_until("the new key is in force", || up(&second, 2) == 101);
    assert_eq!(up(&first, 3), 401, "the old key is gone");
    assert_eq!(
        up(&k.hs(&user("ivy", 600, json!({}))), 4),
        101,
        "the secret stays"
    );
    // The connection made with the old key is still served.
    c.subscribe(&["NOPE"], &["book"], 5);
    assert!(matches!(answer(&mut c), Body::Error(e) if e.code == "unknown_symbol"));
    let (_, metrics) = common::harness::http_get(addr, "/metrics", "GET");
    assert!(metrics.contains("tickwire_authentications_total"));
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("reloaded"), "the reload is logged");
    for (what, text) in [("help", &help), ("logs", &logs), ("metrics", &metrics)] {
        for secret in [&k.secret, &first, &second] {
            assert!(!text.contains(secret.as_str()), "{what} shows a secret");
        }
        assert!(
            !text.contains(first.split('.').nth(2).unwrap()),
            "{what} shows a signature"
        );
    }
}

/// PROTOCOL §11 under §8: an SSE stream takes its token in `?token=` (an
/// `EventSource` sets no header). Without one (`required`), or with a bad
/// one: 401; outside its entitlements: 403; both with a JSON `Error` body
/// and before anything is streamed. With a good one, the stream is served.
#[test]
fn sse_streams_are_authenticated_and_entitled() {
    let k = Keys::new("sse");
    let (e, _feed) = engine(&k, AuthMode::Required, 2, |_| {});
    let path =
        |token: &str, symbols: &str| format!("/sse?symbols={symbols}&channels=book&token={token}");
    let btc_only = k.hs(&user("s", 600, json!({"symbols": ["BTC-*"]})));
    let cases = [
        (
            "/sse?symbols=BTC-USD&channels=book".to_string(),
            401,
            "unauthorized",
        ),
        (path("not.a.jwt", "BTC-USD"), 401, "unauthorized"),
        (path(&btc_only, "BTC-USD,ETH-USD"), 403, "forbidden"),
    ];
    for (p, status, code) in &cases {
        let (got, head, body) = common::http_request(e.ws_addr, p, &[], SHORT);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(got, *status, "{p}: {head}\n{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["code"], *code, "{p}: {body}");
    }
    let mut c = Client::connect_sse(e.ws_addr, &path(&btc_only, "BTC-USD"), None);
    wait_until("snapshot", || {
        c.read_for(Duration::from_millis(10));
        c.books.get("BTC-USD").is_some_and(|b| b.seq == 1)
    });
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}
