//! What one token costs a worker to verify (PROTOCOL §8,
//! [`tickwire::auth::Verifier::verify`]): header, signature through
//! `jsonwebtoken`, claims and entitlements (a `tw` claim with symbol
//! patterns and channels), for HS256 and EdDSA, with keys made here.
//!
//! - `verify/hs256`, `verify/eddsa`: a good token, its claims parsed.
//! - `verify/eddsa_wrong_key`: a token signed by another key (what a bad
//!   client costs: the signature check is the whole price).
//! - `verify/hs256_bad_claims`: a good signature, claims refused.
//!
//! The handshake rate of a worker with auth on and off, against the real
//! engine: `benches/auth_handshake.rs`.
//!
//! Run: `cargo bench --bench auth`.

#[path = "../tests/common/keys.rs"]
mod keys;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tickwire::auth::{KeySet, Verifier, VerifierConfig};

fn verify(c: &mut Criterion) {
    let secret = keys::hs256_secret();
    let (private, public) = keys::ed25519_pems();
    let (other_private, _) = keys::ed25519_pems();
    let mut set = KeySet::new();
    set.add_secret(secret.as_bytes()).expect("a secret");
    set.add_pem(public.as_bytes()).expect("an Ed25519 key");
    let v = Verifier::new(set, VerifierConfig::default());
    let now = keys::now_s();
    let claims = json!({
        "sub": "bench-user", "exp": now + 3600,
        "tw": {
            "symbols": ["BTC-*", "ETH-*", "SOL-USD", "*-EUR"],
            "channels": ["book.10@1000ms", "trades"],
            "max_depth": 10, "min_interval_ms": 1000,
            "max_connections": 5, "max_subscriptions": 100, "requests_per_sec": 5
        }
    });
    let hs = keys::sign_hs256(&secret, &claims);
    let ed = keys::sign_ed25519(&private, &claims);
    let ed_wrong = keys::sign_ed25519(&other_private, &claims);
    let bad_claims = keys::sign_hs256(
        &secret,
        &json!({"sub": "x", "exp": now + 3600, "tw": {"max_depth": "ten"}}),
    );
    assert!(v.verify(&hs, now).is_ok());
    assert!(v.verify(&ed, now).is_ok());
    assert!(v.verify(&ed_wrong, now).is_err());
    assert!(v.verify(&bad_claims, now).is_err());
    let mut g = c.benchmark_group("verify");
    g.bench_function("hs256", |b| b.iter(|| v.verify(black_box(&hs), now)));
    g.bench_function("eddsa", |b| b.iter(|| v.verify(black_box(&ed), now)));
    g.bench_function("eddsa_wrong_key", |b| {
        b.iter(|| v.verify(black_box(&ed_wrong), now))
    });
    g.bench_function("hs256_bad_claims", |b| {
        b.iter(|| v.verify(black_box(&bad_claims), now))
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
