//! The built-in demo feed: the synthetic market sent over the normal
//! protobuf ingest path, as a real feed handler would, so the demo exercises
//! the whole engine. Runs on its own thread named `demo-feed`.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::book::decode::encode_proto;
use crate::book::synth::{SynthConfig, SynthMarket};
use crate::wire::pb;

/// The demo feed's settings.
#[derive(Debug, Clone)]
pub struct DemoFeedConfig {
    /// The engine's protobuf ingest address.
    pub ingest: SocketAddr,
    pub synth: SynthConfig,
    /// Events (deltas and trades) per second across all symbols.
    pub events_per_sec: u64,
    /// Sent in the Hello when the engine requires a token.
    pub token: Option<String>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Starts the feed; it reconnects (and re-sends snapshots) until `stop` is set.
pub fn spawn(cfg: DemoFeedConfig, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("demo-feed".into())
        .spawn(move || {
            let mut market = SynthMarket::new(cfg.synth.clone());
            while !stop.load(Ordering::Relaxed) {
                match run_once(&cfg, &mut market, &stop) {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(error = %e, "demo feed disconnected; reconnecting");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        })
}

fn run_once(cfg: &DemoFeedConfig, market: &mut SynthMarket, stop: &AtomicBool) -> io::Result<()> {
    let mut stream = TcpStream::connect(cfg.ingest)?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let hello = pb::IngestMessage {
        body: Some(pb::ingest_message::Body::Hello(pb::Hello {
            feed_id: "demo".into(),
            token: cfg.token.clone().unwrap_or_default(),
        })),
    };
    encode_proto(&hello, &mut buf);
    for snap in market.snapshots(now_ns()) {
        encode_proto(&snap, &mut buf);
    }
    stream.write_all(&buf)?;
    info!(
        symbols = market.len(),
        rate = cfg.events_per_sec,
        "demo feed streaming"
    );
    // Pace in 1 ms steps: send what is due, then sleep.
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due =
            (start.elapsed().as_nanos() as u64).saturating_mul(cfg.events_per_sec) / 1_000_000_000;
        buf.clear();
        let ts = now_ns();
        while sent < due {
            encode_proto(&market.next_event(ts), &mut buf);
            sent += 1;
        }
        if !buf.is_empty() {
            stream.write_all(&buf)?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
