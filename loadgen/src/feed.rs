//! The feed: tickwire's own synthetic market ([`SynthMarket`]) sent to the
//! engine's protobuf or JSON-lines ingest at a target rate.
//!
//! Coordinated omission: every event is stamped with its *scheduled* send
//! time (`exchange_ts_ns`), not the time it was written. If the feed, the
//! socket or the engine stalls, events pile up behind schedule and their
//! latency, measured by the clients from that stamp, shows the stall instead
//! of hiding it (the correction wrk2 makes).
//!
//! One thread (`lg-feed`); stops when told or at its deadline. Counts events
//! per symbol so the controller can compute the offered load (events ×
//! subscribers).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tickwire::book::decode::{encode_json_line, encode_proto};
use tickwire::book::synth::{SynthConfig, SynthMarket};
use tickwire::wire::pb::{self, ingest_message::Body};

/// Feed settings.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The ingest listener (protobuf or JSON lines, see `json`).
    pub ingest: SocketAddr,
    /// JSON lines instead of length-delimited protobuf.
    pub json: bool,
    pub synth: SynthConfig,
    /// Events (deltas and trades) per second at start.
    pub rate: f64,
    /// Token for the `Hello`, when the engine requires one.
    pub token: Option<String>,
}

/// What the feed shares with the controller.
#[derive(Debug)]
pub struct FeedStats {
    /// Events per second × 1000 (changed by the controller).
    rate_milli: AtomicU64,
    stop: AtomicBool,
    /// Deltas and trades sent, per symbol index.
    pub deltas: Vec<AtomicU64>,
    pub trades: Vec<AtomicU64>,
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    /// How far behind schedule the feed is now, ns.
    pub behind_ns: AtomicU64,
}

/// A running feed.
pub struct Feed {
    pub stats: Arc<FeedStats>,
    /// Symbol names, hottest first (index = the index in the stats vectors).
    pub names: Vec<String>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Largest batch written at once.
const BATCH_BYTES: usize = 64 * 1024;

impl Feed {
    /// Connects (retrying for up to 5 s), sends every symbol's snapshot, and
    /// starts sending events at the configured rate.
    pub fn start(cfg: FeedConfig) -> anyhow::Result<Feed> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match TcpStream::connect(cfg.ingest) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("connect to ingest {}", cfg.ingest));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_nodelay(true)?;
        let market = SynthMarket::new(cfg.synth.clone());
        let names: Vec<String> = market.names().map(str::to_owned).collect();
        let n = names.len();
        let stats = Arc::new(FeedStats {
            rate_milli: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            deltas: (0..n).map(|_| AtomicU64::new(0)).collect(),
            trades: (0..n).map(|_| AtomicU64::new(0)).collect(),
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            behind_ns: AtomicU64::new(0),
        });
        let mut feed = Feed {
            stats: stats.clone(),
            names,
            thread: None,
        };
        feed.set_rate(cfg.rate);
        let mut sender = Sender::new(cfg, market, stream, stats)?;
        feed.thread = Some(
            std::thread::Builder::new()
                .name("lg-feed".into())
                .spawn(move || sender.run())?,
        );
        Ok(feed)
    }

    /// Events per second from now on (0 pauses).
    pub fn set_rate(&self, rate: f64) {
        let v = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        self.stats
            .rate_milli
            .store((v * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn rate(&self) -> f64 {
        self.stats.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Per-symbol event counts so far: (deltas, trades).
    pub fn counts(&self) -> (Vec<u64>, Vec<u64>) {
        let load = |v: &Vec<AtomicU64>| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        (load(&self.stats.deltas), load(&self.stats.trades))
    }

    /// `true` once the feed thread has ended (error or stop).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the thread and returns how it ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stats.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("feed thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stats.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Sender {
    cfg: FeedConfig,
    market: SynthMarket,
    stream: TcpStream,
    stats: Arc<FeedStats>,
    index: HashMap<String, usize>,
    decimals: Vec<(u32, u32)>,
    bin: Vec<u8>,
    text: String,
}

impl Sender {
    fn new(
        cfg: FeedConfig,
        market: SynthMarket,
        stream: TcpStream,
        stats: Arc<FeedStats>,
    ) -> io::Result<Sender> {
        let index = market
            .names()
            .enumerate()
            .map(|(i, n)| (n.to_owned(), i))
            .collect();
        let decimals = (0..market.len())
            .map(|i| market.decimals(i).unwrap_or((0, 0)))
            .collect();
        Ok(Sender {
            cfg,
            market,
            stream,
            stats,
            index,
            decimals,
            bin: Vec::with_capacity(BATCH_BYTES + 4096),
            text: String::with_capacity(BATCH_BYTES + 4096),
        })
    }

    fn encode(&mut self, msg: &pb::IngestMessage) {
        if self.cfg.json {
            let (pd, sd) = match &msg.body {
                Some(Body::Delta(d)) => self.index.get(&d.symbol).map(|&i| self.decimals[i]),
                Some(Body::Trade(t)) => self.index.get(&t.symbol).map(|&i| self.decimals[i]),
                _ => None,
            }
            .unwrap_or((0, 0));
            encode_json_line(msg, pd, sd, &mut self.text);
        } else {
            encode_proto(msg, &mut self.bin);
        }
    }

    fn write_batch(&mut self) -> io::Result<()> {
        let bytes = if self.cfg.json {
            self.text.as_bytes()
        } else {
            &self.bin[..]
        };
        if !bytes.is_empty() {
            self.stream.write_all(bytes)?;
            self.stats
                .bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.text.clear();
        self.bin.clear();
        Ok(())
    }

    fn count(&self, msg: &pb::IngestMessage) {
        let (sym, trade) = match &msg.body {
            Some(Body::Delta(d)) => (&d.symbol, false),
            Some(Body::Trade(t)) => (&t.symbol, true),
            _ => return,
        };
        if let Some(&i) = self.index.get(sym) {
            let v = if trade {
                &self.stats.trades
            } else {
                &self.stats.deltas
            };
            v[i].fetch_add(1, Ordering::Relaxed);
        }
        self.stats.events.fetch_add(1, Ordering::Relaxed);
    }

    fn run(&mut self) -> anyhow::Result<()> {
        if let Some(token) = self.cfg.token.clone() {
            let hello = pb::IngestMessage {
                body: Some(Body::Hello(pb::Hello {
                    feed_id: "tickwire-loadgen".into(),
                    token,
                })),
            };
            self.encode(&hello);
        }
        for snap in self.market.snapshots(wall_ns()) {
            self.encode(&snap);
            if self.bin.len() + self.text.len() >= BATCH_BYTES {
                self.write_batch().context("send snapshots")?;
            }
        }
        self.write_batch().context("send snapshots")?;
        let start = Instant::now();
        let start_wall = wall_ns();
        // The next event's scheduled time, ns after `start` (f64: exact to
        // the nanosecond for 100 days, and fractional intervals add up).
        let mut next = 0.0f64;
        let mut last_rate = 0.0;
        while !self.stats.stop.load(Ordering::Relaxed) {
            let rate = self.stats.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            let now = start.elapsed().as_nanos() as f64;
            if rate <= 0.0 {
                next = now;
                last_rate = rate;
                self.stats.behind_ns.store(0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if last_rate <= 0.0 {
                // Resuming from a pause: the schedule starts now.
                next = next.max(now);
            }
            last_rate = rate;
            let interval = 1e9 / rate;
            while next <= now && self.bin.len() + self.text.len() < BATCH_BYTES {
                let ev = self.market.next_event(start_wall + next as u64);
                self.encode(&ev);
                self.count(&ev);
                next += interval;
            }
            self.stats
                .behind_ns
                .store((now - next).max(0.0) as u64, Ordering::Relaxed);
            self.write_batch().context("send events")?;
            let now = start.elapsed().as_nanos() as f64;
            if next > now {
                std::thread::sleep(Duration::from_nanos((next - now).min(1e6) as u64));
            }
        }
        Ok(())
    }
}
