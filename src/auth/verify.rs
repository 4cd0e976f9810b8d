//! JWT verification over a key set with `jsonwebtoken` (PROTOCOL §8): HS256
//! with a shared secret, RS256, ES256 and EdDSA with public keys (PEM or a
//! JWKS document). Pure: bytes in (the caller reads the files), `now` an
//! argument.
//!
//! What the library does: the signature (with the algorithm the key is for,
//! never the one the token would like), `iss` and `aud`, the presence of
//! `exp`. What this module adds around it: the size cap, the header read
//! first so that `alg: none` and algorithms without a key are named as such,
//! the choice of key (`kid` when both sides have one, else every key of the
//! token's algorithm), and the time checks against the `now` it is given
//! (the library's own would read the system clock, so they are off).
//!
//! Never: logs or `Debug`s key material ([`KeySet`]'s `Debug` lists only
//! algorithms and key ids).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::claims::Claims;
use super::{AuthError, MAX_TOKEN_BYTES};

/// Shortest HS256 secret accepted, bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;
/// Most keys in a set: a bad token is tried against every key of its
/// algorithm (when it names no `kid`), so this bounds the work it can cause.
pub const MAX_KEYS: usize = 32;

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the HS256 secret is shorter than {MIN_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error("not a PEM RSA, P-256 or Ed25519 public key")]
    BadPem,
    #[error("not a JWKS document: {0}")]
    BadJwks(String),
    #[error("the JWKS document holds no usable signing key (RS256, ES256, EdDSA, HS256)")]
    NoUsableKey,
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys tokens may be signed with. Built at start and on SIGHUP.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Lists algorithms and key ids only: never key material.
impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.alg, k.kid.as_deref())))
            .finish()
    }
}

impl KeySet {
    pub fn new() -> KeySet {
        KeySet::default()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn push(&mut self, key: Key) -> Result<(), KeyError> {
        if self.keys.len() == MAX_KEYS {
            return Err(KeyError::TooManyKeys);
        }
        self.keys.push(key);
        Ok(())
    }

    /// An HS256 shared secret: the file's bytes, less one trailing newline
    /// (`echo secret > file`).
    pub fn add_secret(&mut self, secret: &[u8]) -> Result<(), KeyError> {
        let secret = secret
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(secret);
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::ShortSecret);
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::ShortSecret)?;
        self.push(Key {
            kid: None,
            alg: Algorithm::HS256,
            key,
        })
    }

    /// A PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    pub fn add_pem(&mut self, pem: &[u8]) -> Result<(), KeyError> {
        let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, k)
        } else {
            return Err(KeyError::BadPem);
        };
        self.push(Key {
            kid: None,
            alg,
            key,
        })
    }

    /// The signing keys of a JWKS document (RFC 7517 §5). Keys for
    /// encryption (`use: enc`) and algorithms tickwire does not take are
    /// skipped; a document with no usable key is an error. Returns how many
    /// keys were added.
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<usize, KeyError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError::BadJwks(format!("line {} column {}", e.line(), e.column())))?;
        let mut added = 0;
        for jwk in &set.keys {
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let inferred = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Some(Algorithm::ES256)
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Some(Algorithm::EdDSA)
                }
                AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
                _ => None,
            };
            let named = match jwk.common.key_algorithm {
                None => inferred,
                Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
                Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
                Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
                Some(KeyAlgorithm::HS256) => Some(Algorithm::HS256),
                Some(_) => None,
            };
            let (Some(alg), true) = (named, named == inferred) else {
                continue;
            };
            if let AlgorithmParameters::OctetKey(p) = &jwk.algorithm
                && URL_SAFE_NO_PAD
                    .decode(p.value.trim_end_matches('='))
                    .map_or(true, |k| k.len() < MIN_SECRET_BYTES)
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            self.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(KeyError::NoUsableKey);
        }
        Ok(added)
    }
}

/// What is checked besides the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// `--jwt-issuer`: `iss` must be this (and present).
    pub issuer: Option<String>,
    /// `--jwt-audience`: `aud` must be or contain this (and be present).
    /// Unset: a token that carries an `aud` is refused (RFC 7519 §4.1.3:
    /// a token for a named audience is not for us).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 60.
    pub leeway_s: u64,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            issuer: None,
            audience: None,
            leeway_s: 60,
        }
    }
}

/// A key set and what to check: one per process, shared by every worker
/// behind an `Arc` (swapped whole on SIGHUP).
#[derive(Debug)]
pub struct Verifier {
    keys: KeySet,
    cfg: VerifierConfig,
    /// Per algorithm, what the library checks (built once).
    validations: Vec<(Algorithm, Validation)>,
}

/// The algorithms tickwire takes.
const ALGORITHMS: [(&str, Algorithm); 4] = [
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
    ("EdDSA", Algorithm::EdDSA),
];

/// The JOSE header members tickwire reads.
struct HeaderView {
    alg: Algorithm,
    kid: Option<String>,
}

/// Reads the header segment: base64url JSON with a string `alg` tickwire
/// takes (`none` and the rest: [`AuthError::BadAlgorithm`]).
fn read_header(token: &str) -> Result<HeaderView, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthError::Malformed)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    let obj = v.as_object().ok_or(AuthError::Malformed)?;
    let alg = obj
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(AuthError::Malformed)?;
    let alg = ALGORITHMS
        .iter()
        .find(|(name, _)| *name == alg)
        .map(|(_, a)| *a)
        .ok_or(AuthError::BadAlgorithm)?;
    let kid = match obj.get("kid") {
        None => None,
        Some(serde_json::Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(HeaderView { alg, kid })
}

impl Verifier {
    pub fn new(keys: KeySet, cfg: VerifierConfig) -> Verifier {
        let validations = ALGORITHMS
            .iter()
            .map(|&(_, alg)| {
                let mut v = Validation::new(alg);
                // Time is an input: checked in `Claims::parse` against `now`.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.leeway = 0;
                let mut required = vec!["exp"];
                if let Some(iss) = &cfg.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                match &cfg.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    // Unset: the library refuses any token that names an audience.
                    None => v.validate_aud = true,
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Verifier {
            keys,
            cfg,
            validations,
        }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.cfg
    }

    /// Verifies `token` at `now_s` (Unix seconds): its claims, or why not.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = read_header(token)?;
        let same_alg = |k: &&Key| k.alg == header.alg;
        // A `kid` both sides know picks the key; otherwise every key of the
        // token's algorithm is tried (a rotation holds old and new).
        let by_kid = header.kid.as_deref().and_then(|kid| {
            self.keys
                .keys
                .iter()
                .filter(same_alg)
                .find(|k| k.kid.as_deref() == Some(kid))
        });
        let candidates: Vec<&Key> = match by_kid {
            Some(k) => vec![k],
            None => self.keys.keys.iter().filter(same_alg).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::BadAlgorithm);
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::BadAlgorithm)?;
        let mut last = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, validation) {
                Ok(data) => return Claims::parse(&data.claims, now_s, self.cfg.leeway_s),
                Err(e) => {
                    let err = map_error(e.kind());
                    if err != AuthError::BadSignature {
                        // The signature was good (the library checks it
                        // first) or the token is unreadable: no other key
                        // would change the answer.
                        return Err(err);
                    }
                    last = err;
                }
            }
        }
        Err(last)
    }
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthError::BadClaims("exp is required"),
        ErrorKind::InvalidClaimFormat(c) if c == "iss" => AuthError::WrongIssuer,
        ErrorKind::InvalidClaimFormat(c) if c == "aud" => AuthError::WrongAudience,
        ErrorKind::InvalidClaimFormat(_) => {
            AuthError::BadClaims("a registered claim has the wrong type")
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => AuthError::BadAlgorithm,
        // A signature that does not verify with this key, or a key that
        // cannot check it: the next key may.
        _ => AuthError::BadSignature,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    pub const NOW: u64 = 1_732_870_000;
    pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// An Ed25519 key pair (PKCS#8 private, SPKI public), made once with
    /// `openssl genpkey -algorithm ed25519` for these tests.
    pub const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDAZxlzMgl/G8+R62Ik2YWK47IZZYR57YoORDRZwKWoK\n-----END PRIVATE KEY-----\n";
    pub const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA98n12ezs4ngzWi0lo6BDdbNy1xTKol26CHDkTD03vPQ=\n-----END PUBLIC KEY-----\n";
    /// Another Ed25519 key (the wrong key).
    pub const ED_OTHER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEILDlQzsUXJJLXoz4nqzKbzXUnILGUBG0VHfp0lxDMiSR\n-----END PRIVATE KEY-----\n";

    pub fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn ed(claims: serde_json::Value, private: &str, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = kid.map(String::from);
        encode(
            &h,
            &claims,
            &EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn verifier(cfg: VerifierConfig) -> Verifier {
        let mut keys = KeySet::new();
        keys.add_secret(SECRET).unwrap();
        keys.add_pem(ED_PUBLIC.as_bytes()).unwrap();
        Verifier::new(keys, cfg)
    }

    fn ok_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": NOW + 300})
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn good_tokens_of_each_key() {
        let v = verifier(VerifierConfig::default());
        assert_eq!(&*v.verify(&hs(ok_claims()), NOW).unwrap().sub, "alice");
        let t = ed(ok_claims(), ED_PRIVATE, None);
        assert_eq!(v.verify(&t, NOW).unwrap().exp_s, NOW + 300);
    }

    #[test]
    fn every_bad_token_gets_its_answer() {
        let v = verifier(VerifierConfig::default());
        // Malformed.
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            "e30.e30.",
            "bnVsbA.e30.x",
        ] {
            assert_eq!(v.verify(t, NOW), Err(AuthError::Malformed), "{t:?}");
        }
        // Too large.
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(v.verify(&big, NOW), Err(AuthError::TooLarge));
        // alg none, with and without a signature.
        let none = format!("{}.{}.", b64(&json!({"alg":"none"})), b64(&ok_claims()));
        assert_eq!(v.verify(&none, NOW), Err(AuthError::BadAlgorithm));
        let none2 = format!(
            "{}.{}.AAAA",
            b64(&json!({"alg":"none","typ":"JWT"})),
            b64(&ok_claims())
        );
        assert_eq!(v.verify(&none2, NOW), Err(AuthError::BadAlgorithm));
        assert_eq!(
            v.verify(
                &format!(
                    "{}.{}.AAAA",
                    b64(&json!({"alg":"HS512"})),
                    b64(&ok_claims())
                ),
                NOW
            ),
            Err(AuthError::BadAlgorithm)
        );
        // An algorithm no key is for: RS256 against HS256 + EdDSA keys.
        let rs = format!(
            "{}.{}.AAAA",
            b64(&json!({"alg":"RS256"})),
            b64(&ok_claims())
        );
        assert_eq!(v.verify(&rs, NOW), Err(AuthError::BadAlgorithm));
        // The classic confusion: a token signed HS256 with the public key's
        // bytes as the secret, presented where only the EdDSA key exists.
        let mut only_ed = KeySet::new();
        only_ed.add_pem(ED_PUBLIC.as_bytes()).unwrap();
        let only_ed = Verifier::new(only_ed, VerifierConfig::default());
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &ok_claims(),
            &EncodingKey::from_secret(ED_PUBLIC.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(only_ed.verify(&confused, NOW), Err(AuthError::BadAlgorithm));
        // A header that says EdDSA on an HS256 signature.
        let hs_token = hs(ok_claims());
        let (_, rest) = hs_token.split_once('.').unwrap();
        let relabeled = format!("{}.{rest}", b64(&json!({"alg":"EdDSA"})));
        assert_eq!(v.verify(&relabeled, NOW), Err(AuthError::BadSignature));
        // Wrong key.
        let wrong = ed(ok_claims(), ED_OTHER_PRIVATE, None);
        assert_eq!(v.verify(&wrong, NOW), Err(AuthError::BadSignature));
        let wrong_secret = encode(
            &Header::new(Algorithm::HS256),
            &ok_claims(),
            &EncodingKey::from_secret(b"another secret of at least 32 bytes!").unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&wrong_secret, NOW), Err(AuthError::BadSignature));
        // A tampered payload.
        let mut parts: Vec<String> = hs(ok_claims()).split('.').map(String::from).collect();
        parts[1] = b64(&json!({"sub": "mallory", "exp": NOW + 300}));
        assert_eq!(
            v.verify(&parts.join("."), NOW),
            Err(AuthError::BadSignature)
        );
        // Expired, not yet valid.
        assert_eq!(
            v.verify(&hs(json!({"sub": "a", "exp": NOW - 61})), NOW),
            Err(AuthError::Expired)
        );
        assert_eq!(
            v.verify(
                &hs(json!({"sub": "a", "exp": NOW + 900, "nbf": NOW + 300})),
                NOW
            ),
            Err(AuthError::NotYetValid)
        );
        // No exp; claims of the wrong types.
        assert!(matches!(
            v.verify(&hs(json!({"sub": "a"})), NOW),
            Err(AuthError::BadClaims(_))
        ));
        assert!(matches!(
            v.verify(&hs(json!({"sub": "a", "exp": "tomorrow"})), NOW),
            Err(AuthError::BadClaims(_))
        ));
        assert!(matches!(
            v.verify(
                &hs(json!({"sub": "a", "exp": NOW + 9, "tw": {"max_depth": "ten"}})),
                NOW
            ),
            Err(AuthError::BadClaims(_))
        ));
        assert!(matches!(
            v.verify(
                &hs(json!({"sub": "a", "exp": NOW + 9, "tw": {"symbols": ["*a*b*c*d*e"]}})),
                NOW
            ),
            Err(AuthError::BadClaims(_))
        ));
        // A token for a named audience, when none is configured.
        assert_eq!(
            v.verify(
                &hs(json!({"sub": "a", "exp": NOW + 9, "aud": "other"})),
                NOW
            ),
            Err(AuthError::WrongAudience)
        );
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = verifier(VerifierConfig {
            issuer: Some("https://auth.example".into()),
            audience: Some("tickwire".into()),
            leeway_s: 0,
        });
        let good =
            json!({"sub": "a", "exp": NOW + 9, "iss": "https://auth.example", "aud": "tickwire"});
        assert!(v.verify(&hs(good), NOW).is_ok());
        let many_aud = json!({"sub": "a", "exp": NOW + 9, "iss": "https://auth.example", "aud": ["x", "tickwire"]});
        assert!(v.verify(&hs(many_aud), NOW).is_ok());
        for (claims, want) in [
            (
                json!({"sub": "a", "exp": NOW + 9, "aud": "tickwire"}),
                AuthError::WrongIssuer,
            ),
            (
                json!({"sub": "a", "exp": NOW + 9, "iss": "evil", "aud": "tickwire"}),
                AuthError::WrongIssuer,
            ),
            (
                json!({"sub": "a", "exp": NOW + 9, "iss": "https://auth.example"}),
                AuthError::WrongAudience,
            ),
            (
                json!({"sub": "a", "exp": NOW + 9, "iss": "https://auth.example", "aud": "other"}),
                AuthError::WrongAudience,
            ),
            (
                json!({"sub": "a", "exp": NOW + 9, "iss": "https://auth.example", "aud": 7}),
                AuthError::WrongAudience,
            ),
        ] {
            assert_eq!(v.verify(&hs(claims.clone()), NOW), Err(want), "{claims}");
        }
        // Leeway 0: expired at exp.
        let at = json!({"sub": "a", "exp": NOW, "iss": "https://auth.example", "aud": "tickwire"});
        assert_eq!(v.verify(&hs(at), NOW), Err(AuthError::Expired));
    }

    #[test]
    fn jwks_keys_by_kid() {
        // The Ed25519 public key above as a JWK (x = the 32 raw bytes).
        let x = "98n12ezs4ngzWi0lo6BDdbNy1xTKol26CHDkTD03vPQ";
        let doc = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
            {"kty": "oct", "k": "c2hvcnQ", "kid": "short"},
        ]});
        let mut keys = KeySet::new();
        assert_eq!(keys.add_jwks(doc.to_string().as_bytes()), Ok(1));
        assert!(!format!("{keys:?}").contains(x), "{keys:?}");
        let v = Verifier::new(keys, VerifierConfig::default());
        assert!(
            v.verify(&ed(ok_claims(), ED_PRIVATE, Some("k1")), NOW)
                .is_ok()
        );
        assert!(v.verify(&ed(ok_claims(), ED_PRIVATE, None), NOW).is_ok());
        // An unknown kid: every key of the algorithm is tried.
        assert!(
            v.verify(&ed(ok_claims(), ED_PRIVATE, Some("k9")), NOW)
                .is_ok()
        );
        assert_eq!(
            v.verify(&ed(ok_claims(), ED_OTHER_PRIVATE, Some("k1")), NOW),
            Err(AuthError::BadSignature)
        );
        let mut empty = KeySet::new();
        assert_eq!(
            empty.add_jwks(br#"{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}"#),
            Err(KeyError::NoUsableKey)
        );
        assert!(matches!(
            empty.add_jwks(b"not json"),
            Err(KeyError::BadJwks(_))
        ));
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        let mut keys = KeySet::new();
        assert_eq!(keys.add_secret(b"short\n"), Err(KeyError::ShortSecret));
        assert_eq!(
            keys.add_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(KeyError::BadPem)
        );
        let mut with_newline = SECRET.to_vec();
        with_newline.extend_from_slice(b"\r\n");
        keys.add_secret(&with_newline).unwrap();
        let v = Verifier::new(keys, VerifierConfig::default());
        assert!(
            v.verify(&hs(ok_claims()), NOW).is_ok(),
            "the newline is not part of the secret"
        );
        let shown = format!("{v:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }
}
