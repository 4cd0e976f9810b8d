//! The handshake rate of one worker with authentication off and on, in one
//! run (PROTOCOL §8): three engines of one worker each on loopback (`--auth
//! off`; `--auth required` with the token in `Authorization: Bearer`, HS256;
//! the same with EdDSA), the same client load on each in turns (rounds
//! interleaved so the machine's noise falls on all three alike), and the
//! ratios. A handshake is: TCP connect, the upgrade request, the whole 101
//! read, the socket closed (the engine then drops it). Two client threads
//! keep the worker busy; the clients run on the same machine, so what is
//! compared is the ratio, not the absolute rates.
//!
//! Bounded: `ROUNDS` × `PER_ROUND` handshakes per engine (a few seconds).
//!
//! Run: `cargo bench --bench auth_handshake`.

#[path = "../tests/common/keys.rs"]
mod keys;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tickwire::auth::AuthMode;
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::ws::ClientHandshake;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 1_000;
const CLIENT_THREADS: usize = 2;

fn engine(mode: AuthMode, dir: &std::path::Path) -> Engine {
    let mut cfg = EngineConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        workers: 1,
        pin: false,
        ..EngineConfig::default()
    };
    cfg.ingest.proto_addr = "127.0.0.1:0".parse().expect("an address");
    cfg.ingest.json_addr = "127.0.0.1:0".parse().expect("an address");
    cfg.shell.max_connections = 1_000_000;
    cfg.auth.mode = mode;
    cfg.auth.secret_file = Some(dir.join("secret"));
    cfg.auth.public_key_files = vec![dir.join("ed.pub")];
    Engine::start(cfg).expect("engine starts")
}

/// One handshake; panics unless it is a 101.
fn handshake(addr: SocketAddr, header: &str, nonce: u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&nonce.to_le_bytes());
    let hs = ClientHandshake::new(key, &[]);
    let mut req = Vec::new();
    hs.write_request(&mut req, "bench", "/ws");
    if !header.is_empty() {
        req.truncate(req.len() - 2);
        req.extend_from_slice(header.as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
    }
    s.write_all(&req).expect("write");
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((_, _)) = hs.read_response(&buf).expect("a 101") {
            return;
        }
    }
}

/// `PER_ROUND` handshakes over `CLIENT_THREADS` threads; the elapsed time.
fn round(addr: SocketAddr, header: &str, base: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..CLIENT_THREADS {
            s.spawn(move || {
                for i in 0..PER_ROUND / CLIENT_THREADS {
                    handshake(addr, header, base + (t * PER_ROUND + i) as u64);
                }
            });
        }
    });
    start.elapsed()
}

fn main() {
    // `cargo test --benches` runs benches with `--bench` absent: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("auth_handshake: run with `cargo bench --bench auth_handshake`");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tickwire-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let secret = keys::hs256_secret();
    std::fs::write(dir.join("secret"), &secret).expect("write");
    let (private, public) = keys::ed25519_pems();
    std::fs::write(dir.join("ed.pub"), public).expect("write");
    let claims = json!({"sub": "bench", "exp": keys::now_s() + 3600,
        "tw": {"symbols": ["BTC-*", "ETH-*"], "channels": ["book", "trades"]}});
    let cases = [
        ("auth off", AuthMode::Off, String::new()),
        (
            "auth required, HS256",
            AuthMode::Required,
            format!(
                "Authorization: Bearer {}",
                keys::sign_hs256(&secret, &claims)
            ),
        ),
        (
            "auth required, EdDSA",
            AuthMode::Required,
            format!(
                "Authorization: Bearer {}",
                keys::sign_ed25519(&private, &claims)
            ),
        ),
    ];
    let engines: Vec<Engine> = cases.iter().map(|(_, m, _)| engine(*m, &dir)).collect();
    // Warm up each (and check every handshake is a 101).
    for (e, (_, _, h)) in engines.iter().zip(&cases) {
        round(e.ws_addr, h, 0);
    }
    let mut totals = vec![Duration::ZERO; cases.len()];
    for r in 0..ROUNDS {
        for (i, (e, (_, _, h))) in engines.iter().zip(&cases).enumerate() {
            totals[i] += round(e.ws_addr, h, ((r + 1) * 1_000_000 + i * 100_000) as u64);
        }
    }
    let n = (ROUNDS * PER_ROUND) as f64;
    let off = n / totals[0].as_secs_f64();
    println!(
        "handshakes of one worker, {CLIENT_THREADS} client threads, {ROUNDS} x {PER_ROUND} each, interleaved:"
    );
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let rate = n / totals[i].as_secs_f64();
        println!(
            "  {name:<22} {rate:>9.0} handshakes/s   ratio to off {:.3}",
            rate / off
        );
    }
    drop(engines);
    let _ = std::fs::remove_dir_all(&dir);
}
