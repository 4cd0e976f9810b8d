//! Tokens and claims (PROTOCOL §8): the input as a presented token, as the
//! claims of a token signed with the right key, and as an ingest token file.
//!
//! 1. `Verifier::verify` of the input as a token (HS256 and EdDSA keys):
//!    never panics; an `Ok` has a `sub` of 1 to 256 bytes and has not expired.
//! 2. The input as a claims payload: `Claims::parse` of its JSON directly,
//!    and `verify` of a token carrying those bytes signed HS256 with the
//!    configured secret, so the fuzzer reaches the claims through the whole
//!    verification. Both agree (the same result, the same claims) whenever
//!    the library reads the payload at all and it names no audience (the
//!    library's own checks). The entitlements then answer for a few symbols
//!    and every §9 channel shape without panicking, and a symbol allowed by
//!    the patterns is allowed by a naive backtracking matcher too.
//! 3. `FeedTokens::parse_file` of the input: never panics, and an error
//!    never holds the file's text.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use tickwire::auth::feeds::FeedTokens;
use tickwire::auth::{AuthError, AuthResult, ChannelSpec, Claims, KeySet, Verifier, VerifierConfig};

const NOW: u64 = 1_732_870_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA98n12ezs4ngzWi0lo6BDdbNy1xTKol26CHDkTD03vPQ=\n-----END PUBLIC KEY-----\n";
const SYMBOLS: [&str; 6] = ["BTC-USD", "ETH-USD", "A", "BTC-", "x.y:z/w-v", "aaaaaaaaab"];

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut keys = KeySet::new();
        keys.add_secret(SECRET).expect("a 32-byte secret");
        keys.add_pem(ED_PUBLIC.as_bytes()).expect("an Ed25519 key");
        Verifier::new(keys, VerifierConfig::default())
    })
}

fn check_ok(c: &Claims) {
    assert!(!c.sub.is_empty() && c.sub.len() <= 256, "sub of {} bytes", c.sub.len());
    assert!(NOW < c.exp_s.saturating_add(60), "expired token accepted");
}

/// `*` as any run, every other byte itself: the obvious exponential matcher.
fn naive(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| naive(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
    }
}

fn check_entitlements(c: &Claims, json: &serde_json::Value) {
    let e = &c.entitlements;
    let patterns: Vec<&str> = json
        .get("tw")
        .and_then(|tw| tw.get("symbols"))
        .and_then(|s| s.as_array())
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    for s in SYMBOLS {
        let allowed = e.allows_symbol(s);
        if json.get("tw").and_then(|tw| tw.get("symbols")).is_some() {
            let expected = patterns.iter().any(|p| naive(p.as_bytes(), s.as_bytes()));
            assert_eq!(allowed, expected, "pattern set disagrees on {s:?}: {patterns:?}");
        } else {
            assert!(allowed);
        }
    }
    for name in ["book", "trades", "book.1", "book.100", "book@20ms", "book.10@1000ms", "book@5000ms"] {
        let spec = ChannelSpec::parse(name).expect("a §9 name");
        let _ = e.allows_channel(spec);
    }
}

fn sign_payload(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let key = EncodingKey::from_secret(SECRET).expect("a secret");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs");
    format!("{message}.{sig}")
}

fuzz_target!(|data: &[u8]| {
    let v = verifier();
    // 1. As a presented token.
    if let Ok(token) = std::str::from_utf8(data)
        && let Ok(c) = v.verify(token, NOW)
    {
        check_ok(&c);
    }
    // 2. As the claims of a token signed with the right key.
    let direct = serde_json::from_slice::<serde_json::Value>(data);
    if data.len() <= 6 * 1024 {
        let signed = v.verify(&sign_payload(data), NOW);
        if let Ok(c) = &signed {
            check_ok(c);
        }
        if let Ok(json) = &direct
            && json.is_object()
            && json.get("aud").is_none()
            && signed != Err(AuthError::Malformed)
        {
            let parsed = Claims::parse(json, NOW, 60);
            match (&parsed, &signed) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "verified claims differ from the parsed ones"),
                (Err(a), Err(b)) => assert_eq!(
                    AuthResult::from(a),
                    AuthResult::from(b),
                    "parse {a:?} but verify {b:?}"
                ),
                _ => panic!("parse {parsed:?} but verify {signed:?}"),
            }
            if let Ok(c) = parsed {
                check_entitlements(&c, json);
            }
        }
    }
    // 3. As an ingest token file.
    match FeedTokens::parse_file(data) {
        Ok(t) => {
            let _ = t.check("aaaaaaaaaaaaaaaa", "");
        }
        Err(e) => assert!(e.to_string().len() < 100, "{e}"),
    }
});
