//! Keys and tokens made by the tests themselves (PROTOCOL §8): a random
//! HS256 secret, a random Ed25519 key pair as PEM files would hold them, and
//! tokens signed with `jsonwebtoken`, the library the engine verifies with.
//! Also used by `benches/auth.rs` (through `#[path]`).
#![allow(dead_code)]

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

/// `n` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .expect("/dev/urandom");
    out
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A fresh Ed25519 key pair: (PKCS#8 private PEM, SPKI public PEM), as
/// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write them.
pub fn ed25519_pems() -> (String, String) {
    let seed: [u8; 32] = random_bytes();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    // RFC 8410 §7 and §4: the fixed DER prefixes of an Ed25519 key.
    let mut private_der = hex("302e020100300506032b657004220420");
    private_der.extend_from_slice(&seed);
    let mut public_der = hex("302a300506032b6570032100");
    public_der.extend_from_slice(&public);
    (
        pem("PRIVATE KEY", &private_der),
        pem("PUBLIC KEY", &public_der),
    )
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A fresh HS256 secret: 32 random bytes as 64 hex characters (what a
/// secret file holds).
pub fn hs256_secret() -> String {
    random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sign_hs256(secret: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).expect("a secret"),
    )
    .expect("HS256 signs")
}

pub fn sign_ed25519(private_pem: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::EdDSA),
        claims,
        &EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("an Ed25519 key"),
    )
    .expect("EdDSA signs")
}

/// A token with header `header` (JSON text) and claims, signature bytes as given.
pub fn forge(header: &str, claims: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A fresh key pair made by the `openssl` command line (PKCS#8 private PEM,
/// SPKI public PEM): `rsa` (2048 bits, RS256) or `ec` (P-256, ES256). `None`
/// when `openssl` is not installed.
pub fn openssl_pems(kind: &str) -> Option<(String, String)> {
    let dir = std::env::temp_dir().join(format!(
        "tickwire-openssl-{kind}-{}-{:x}",
        std::process::id(),
        u64::from_le_bytes(random_bytes())
    ));
    std::fs::create_dir_all(&dir).ok()?;
    let private = dir.join("key.pem");
    let public = dir.join("pub.pem");
    let gen_args: &[&str] = match kind {
        "rsa" => &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        _ => &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    };
    let ok = std::process::Command::new("openssl")
        .args(gen_args)
        .arg("-out")
        .arg(&private)
        .status()
        .ok()?
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .ok()?
            .success();
    let pems = ok.then(|| {
        (
            std::fs::read_to_string(&private).expect("the private key"),
            std::fs::read_to_string(&public).expect("the public key"),
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    pems
}

/// Signs with an RSA (RS256) or EC P-256 (ES256) private PEM.
pub fn sign_pem(alg: Algorithm, private_pem: &str, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(private_pem.as_bytes()),
    }
    .expect("a private key");
    encode(&Header::new(alg), claims, &key).expect("signs")
}
