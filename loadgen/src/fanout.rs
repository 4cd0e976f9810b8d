//! The fan-out benchmark: see `Args`. Bounded in time and connections; stops
//! by itself.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use prost::Message;
use tickwire::book::decode::encode_proto;
use tickwire::wire::pb::{self, ingest_message, server_message};
use tickwire::ws::frame::{FrameHeader, write_client_frame};
use tickwire::ws::{ClientHandshake, Opcode};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The engine's WebSocket address.
    #[arg(long)]
    ws: SocketAddr,
    /// The engine's protobuf ingest address (this process is the feed).
    #[arg(long)]
    ingest: SocketAddr,
    /// WebSocket clients, all on one symbol.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Client threads (mio loops).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Deltas per second the feed sends (0: idle, for memory measurement).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Level updates per delta (4 gives ~100-byte frames).
    #[arg(long, default_value_t = 4)]
    updates: usize,
    /// Seconds of warm-up before measuring (the ramp included).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds over which the feed ramps linearly from 0 to `--rate`, once
    /// every client is open (before that it sends only the snapshot), so the
    /// run measures the steady state rather than recovery from a connect-time
    /// backlog. 0: full rate at once.
    #[arg(long, default_value_t = 2.0)]
    ramp: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Decode every frame of one connection in this many, for latency.
    #[arg(long, default_value_t = 50)]
    sample_every: usize,
    /// The engine's pid, to report its CPU and memory beside ours.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Client threads never block in `epoll_wait`: they poll without waiting
    /// and sleep this many microseconds when nothing was ready (0: block, the
    /// default). On loopback the sender's core does the receiver's wakeup
    /// (an inter-processor interrupt per write to a sleeping client: ~10% of
    /// the engine's core here), which remote clients would do on their own
    /// machines; this takes it off the engine's bill, at the cost of up to
    /// this much extra measured latency.
    #[arg(long, default_value_t = 0)]
    poll_sleep_us: u64,
    /// Symbol name used by the benchmark feed.
    #[arg(long, default_value = "BENCH-1")]
    symbol: String,
    /// Fraction of the clients (spread evenly) that subscribe, then never
    /// read again, with a 4 KiB receive buffer: slow consumers. Latency is
    /// measured on the others only.
    #[arg(long, default_value_t = 0.0)]
    stalled_fraction: f64,
    /// Extra clients connected and disconnected per second, each doing a
    /// full handshake and subscription (0: none). Runs from warm-up to the end.
    #[arg(long, default_value_t = 0)]
    churn_per_sec: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Default)]
struct Totals {
    frames: AtomicU64,
    bytes: AtomicU64,
    open: AtomicU64,
    errors: AtomicU64,
    gaps: AtomicU64,
}

/// The feed: a snapshot, then deltas on a fixed schedule. Each delta's
/// `exchange_ts_ns` is its scheduled time (coordinated-omission correction).
fn feed(args: &Args, go: &AtomicBool, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut s = StdTcpStream::connect(args.ingest).context("connect to ingest")?;
    s.set_nodelay(true)?;
    let depth = 20i64;
    let mid = 1_000_000i64;
    let mut buf = Vec::new();
    let snap = pb::BookSnapshot {
        symbol: args.symbol.clone(),
        seq: 1,
        bids: (1..=depth)
            .map(|i| pb::Level {
                price: mid - i,
                size: 100,
            })
            .collect(),
        asks: (1..=depth)
            .map(|i| pb::Level {
                price: mid + i,
                size: 100,
            })
            .collect(),
        price_decimals: 2,
        size_decimals: 2,
        exchange_ts_ns: now_ns(),
        ..Default::default()
    };
    encode_proto(
        &pb::IngestMessage {
            body: Some(ingest_message::Body::Snapshot(snap)),
        },
        &mut buf,
    );
    s.write_all(&buf)?;
    if args.rate == 0 {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    }
    while !go.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ramp = Ramp {
        rate: args.rate as f64,
        secs: args.ramp.max(0.0),
    };
    let start = Instant::now();
    let start_ns = now_ns();
    let mut sent: u64 = 0;
    let mut seq = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let due = ramp.due(start.elapsed().as_secs_f64());
        buf.clear();
        while sent < due {
            seq += 1;
            let updates = (0..args.updates)
                .map(|k| {
                    let i = ((sent as usize * args.updates + k) % depth as usize) as i64 + 1;
                    pb::LevelUpdate {
                        side: if k % 2 == 0 {
                            pb::Side::Bid as i32
                        } else {
                            pb::Side::Ask as i32
                        },
                        price: if k % 2 == 0 { mid - i } else { mid + i },
                        size: 100 + (sent % 97) as i64,
                    }
                })
                .collect();
            let scheduled = start_ns + (ramp.time_of(sent) * 1e9) as u64;
            let d = pb::BookDelta {
                symbol: args.symbol.clone(),
                seq,
                updates,
                exchange_ts_ns: scheduled,
                ..Default::default()
            };
            encode_proto(
                &pb::IngestMessage {
                    body: Some(ingest_message::Body::Delta(d)),
                },
                &mut buf,
            );
            sent += 1;
        }
        if !buf.is_empty() {
            s.write_all(&buf)?;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

/// The feed's schedule: a linear ramp from 0 to `rate` deltas/s over `secs`,
/// then `rate`.
struct Ramp {
    rate: f64,
    secs: f64,
}

impl Ramp {
    /// Deltas due by `t` seconds after the start.
    fn due(&self, t: f64) -> u64 {
        let n = if t < self.secs {
            self.rate * t * t / (2.0 * self.secs)
        } else {
            self.rate * (t - self.secs / 2.0)
        };
        n as u64
    }

    /// When delta `k` (0-based) is due, in seconds after the start: the
    /// inverse of `due`, and the delta's `exchange_ts_ns` (latency is measured
    /// from the schedule, so a late feed or engine cannot hide it).
    fn time_of(&self, k: u64) -> f64 {
        let k = k as f64;
        if k < self.rate * self.secs / 2.0 {
            (2.0 * k * self.secs / self.rate).sqrt()
        } else {
            k / self.rate + self.secs / 2.0
        }
    }
}

struct Conn {
    stream: TcpStream,
    open: bool,
    /// Subscribes, then never reads again.
    stalled: bool,
    hs: ClientHandshake,
    carry: Vec<u8>,
    sampled: bool,
    last_seq: u64,
}

/// One client thread: connects its share, subscribes, counts every frame.
fn clients(
    args: &Args,
    n: usize,
    id: usize,
    totals: &Totals,
    hist: &std::sync::Mutex<Histogram<u64>>,
    measuring: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    let mut events = Events::with_capacity(4096);
    let mut sub = Vec::new();
    let req = format!(
        r#"{{"op":"subscribe","symbols":["{}"],"channels":["book"],"id":1}}"#,
        args.symbol
    );
    let mut local = Histogram::<u64>::new_with_bounds(1_000, 120_000_000_000, 3)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut connected = 0;
    let mut opened = 0;
    let mut frames: u64 = 0;
    let mut bytes: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        // Connect in batches, with at most 400 handshakes outstanding, so the
        // accept queue never overflows (an overflow strands connections).
        let batch = (n - connected)
            .min(200)
            .min(400usize.saturating_sub(connected - opened));
        for k in 0..batch {
            let i = connected + k;
            let f = args.stalled_fraction.clamp(0.0, 1.0);
            let stalled = (i as f64 * f).floor() != ((i + 1) as f64 * f).floor();
            let mut stream = if stalled {
                stalled_stream(args.ws)?
            } else {
                TcpStream::connect(args.ws)?
            };
            poll.registry().register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&((id * 1_000_003 + i) as u64).to_le_bytes());
            let hs = ClientHandshake::new(nonce, &[]);
            conns.push(Conn {
                stream,
                open: false,
                hs,
                carry: Vec::new(),
                stalled,
                sampled: !stalled && i % args.sample_every.max(1) == 0,
                last_seq: 0,
            });
        }
        connected += batch;
        let wait = if args.poll_sleep_us > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(5)
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if args.poll_sleep_us > 0 && events.is_empty() {
            std::thread::sleep(Duration::from_micros(args.poll_sleep_us));
        }
        let is_measuring = measuring.load(Ordering::Relaxed);
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && !c.open && c.carry.is_empty() {
                // First writable: send the upgrade (once; carry then holds a marker).
                let mut out = Vec::new();
                c.hs.write_request(&mut out, &args.ws.to_string(), "/ws");
                if c.stream.write_all(&out).is_err() {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                c.carry.push(0xFF);
            }
            if !ev.is_readable() || (c.stalled && c.open) {
                continue;
            }
            loop {
                let k = match c.stream.read(&mut buf) {
                    Ok(0) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                let data: &[u8] = if c.carry.is_empty() {
                    &buf[..k]
                } else {
                    c.carry.extend_from_slice(&buf[..k]);
                    &c.carry
                };
                let mut pos = 0;
                if !c.open {
                    // carry[0] is the "request sent" marker.
                    let head = &data[1..];
                    match c.hs.read_response(head) {
                        Ok(Some((_, len))) => {
                            c.open = true;
                            opened += 1;
                            totals.open.fetch_add(1, Ordering::Relaxed);
                            sub.clear();
                            write_client_frame(
                                &mut sub,
                                true,
                                Opcode::Text,
                                req.as_bytes(),
                                [1, 2, 3, 4],
                            );
                            let _ = c.stream.write_all(&sub);
                            pos = 1 + len;
                        }
                        Ok(None) => continue,
                        Err(_) => {
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                let now = if c.sampled { now_ns() } else { 0 };
                while let Ok(Some(h)) = FrameHeader::parse(&data[pos..]) {
                    let end = pos + h.header_len as usize + h.payload_len as usize;
                    if end > data.len() {
                        break;
                    }
                    frames += 1;
                    bytes += (end - pos) as u64;
                    if h.opcode == Opcode::Ping as u8 {
                        // RFC 6455 §5.5.2: answer with a pong of the same
                        // payload (the server closes silent clients with 4003).
                        let mut pong = Vec::new();
                        write_client_frame(
                            &mut pong,
                            true,
                            Opcode::Pong,
                            &data[pos + h.header_len as usize..end],
                            [9, 8, 7, 6],
                        );
                        let _ = c.stream.write_all(&pong);
                    }
                    if c.sampled
                        && let Ok(msg) =
                            pb::ServerMessage::decode(&data[pos + h.header_len as usize..end])
                    {
                        match msg.body {
                            Some(server_message::Body::Delta(d)) => {
                                if c.last_seq != 0 && d.seq != c.last_seq + 1 {
                                    totals.gaps.fetch_add(1, Ordering::Relaxed);
                                }
                                c.last_seq = d.seq;
                                if is_measuring {
                                    let _ = local
                                        .record(now.saturating_sub(d.exchange_ts_ns).max(1_000));
                                }
                            }
                            Some(server_message::Body::Snapshot(s)) => c.last_seq = s.seq,
                            _ => {}
                        }
                    }
                    pos = end;
                }
                let rest = data[pos..].to_vec();
                c.carry = rest;
                if !c.open {
                    c.carry.insert(0, 0xFF);
                }
            }
        }
        if frames > 0 {
            totals.frames.fetch_add(frames, Ordering::Relaxed);
            totals.bytes.fetch_add(bytes, Ordering::Relaxed);
            frames = 0;
            bytes = 0;
        }
        if !local.is_empty()
            && let Ok(mut h) = hist.lock()
        {
            let _ = h.add(&local);
            local.reset();
        }
    }
    Ok(())
}

/// A non-blocking connection with a small receive buffer (set before
/// connecting, so the advertised window is small too).
fn stalled_stream(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_recv_buffer_size(4096)?;
    s.set_nonblocking(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e.into()),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Connects and disconnects `per_sec` clients a second (handshake, subscribe,
/// read the answer, close) until `stop`; counts completed cycles.
fn churn(args: &Args, per_sec: u64, stop: &AtomicBool, done: &AtomicU64, failed: &AtomicU64) {
    let req = format!(
        r#"{{"op":"subscribe","symbols":["{}"],"channels":["book"],"id":1}}"#,
        args.symbol
    );
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let due = start.elapsed().as_nanos() as u64 * per_sec / 1_000_000_000;
        if n >= due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        n += 1;
        let mut cycle = || -> anyhow::Result<()> {
            let mut s = StdTcpStream::connect(args.ws)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            let hs = ClientHandshake::new(nonce, &[]);
            let mut out = Vec::new();
            hs.write_request(&mut out, &args.ws.to_string(), "/ws");
            s.write_all(&out)?;
            let mut got = Vec::new();
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    bail!("closed during handshake");
                }
                got.extend_from_slice(&buf[..k]);
                if hs.read_response(&got)?.is_some() {
                    break;
                }
            }
            out.clear();
            write_client_frame(&mut out, true, Opcode::Text, req.as_bytes(), [1, 2, 3, 4]);
            s.write_all(&out)?;
            // Read the Subscribed (and usually the snapshot), then go.
            let _ = s.read(&mut buf)?;
            out.clear();
            write_client_frame(
                &mut out,
                true,
                Opcode::Close,
                &1000u16.to_be_bytes(),
                [5, 6, 7, 8],
            );
            let _ = s.write_all(&out);
            Ok(())
        };
        match cycle() {
            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.clients == 0 || args.threads == 0 {
        bail!("--clients and --threads must be positive");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals::default());
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1_000,
        120_000_000_000,
        3,
    )?));
    let server = args.server_pid.map(|p| p.to_string());
    let rss_before = server.as_deref().and_then(rss_kib);

    let go = Arc::new(AtomicBool::new(false));
    let feed_args = args.clone();
    let (feed_go, feed_stop) = (go.clone(), stop.clone());
    let feed_thread = std::thread::spawn(move || feed(&feed_args, &feed_go, &feed_stop));
    std::thread::sleep(Duration::from_millis(300));
    let mut threads = Vec::new();
    for t in 0..args.threads {
        let n = args.clients / args.threads + usize::from(t < args.clients % args.threads);
        let (a, tot, h, m, s) = (
            args.clone(),
            totals.clone(),
            hist.clone(),
            measuring.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            clients(&a, n, t, &tot, &h, &m, &s)
        }));
    }
    // Wait for every client to be open (bounded), then warm up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while totals.open.load(Ordering::Relaxed) < args.clients as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    go.store(true, Ordering::Relaxed);
    let open = totals.open.load(Ordering::Relaxed);
    eprintln!(
        "fanout: {open}/{} clients open; warming up {} s (feed ramping over {} s)",
        args.clients, args.warmup, args.ramp
    );
    let churn_done = Arc::new(AtomicU64::new(0));
    let churn_failed = Arc::new(AtomicU64::new(0));
    // Several blocking churners, so one slow handshake does not hold back the rate.
    let churners = (args.churn_per_sec / 25).clamp(1, 16);
    let churn_threads: Vec<_> = (0..churners)
        .filter(|_| args.churn_per_sec > 0)
        .map(|k| {
            let (a, s, d, f) = (
                args.clone(),
                stop.clone(),
                churn_done.clone(),
                churn_failed.clone(),
            );
            let per_sec = a.churn_per_sec / churners + u64::from(k < a.churn_per_sec % churners);
            std::thread::spawn(move || churn(&a, per_sec, &s, &d, &f))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.warmup));
    let rss_loaded = server.as_deref().and_then(rss_kib);
    let me = std::process::id().to_string();
    let (f0, b0) = (
        totals.frames.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
    );
    let (c0, s0) = (cpu_seconds(&me), server.as_deref().and_then(cpu_seconds));
    if let Ok(mut h) = hist.lock() {
        h.reset();
    }
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut rss_samples = Vec::new();
    for _ in 0..args.duration {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(r) = server.as_deref().and_then(rss_kib) {
            rss_samples.push(r);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    let (f1, b1) = (
        totals.frames.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
    );
    let (c1, s1) = (cpu_seconds(&me), server.as_deref().and_then(cpu_seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    feed_thread
        .join()
        .map_err(|_| anyhow::anyhow!("feed thread panicked"))??;
    for t in churn_threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))?;
    }

    let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?;
    let rate = (f1 - f0) as f64 / secs;
    let offered = args.rate as f64 * open as f64;
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(p) as f64 / 1e6
        }
    };
    println!("clients open        {open}");
    println!(
        "offered msgs/s      {offered:.0}  ({} deltas/s x {open} clients)",
        args.rate
    );
    println!(
        "delivered msgs/s    {rate:.0}  ({:.1} MB/s)",
        (b1 - b0) as f64 / secs / 1e6
    );
    println!(
        "latency ms          p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        q(1.0),
        h.len()
    );
    if let (Some(c0), Some(c1)) = (c0, c1) {
        println!(
            "loadgen CPU         {:.0}% of a core",
            (c1 - c0) / secs * 100.0
        );
    }
    if let (Some(s0), Some(s1)) = (s0, s1) {
        println!(
            "server CPU          {:.0}% of a core",
            (s1 - s0) / secs * 100.0
        );
    }
    if let (Some(before), Some(loaded)) = (rss_before, rss_loaded) {
        println!(
            "server RSS          {before} KiB before clients, {loaded} KiB with them: {:.2} KiB per connection",
            loaded.saturating_sub(before) as f64 / open.max(1) as f64
        );
    }
    if let (Some(first), Some(last)) = (rss_samples.first(), rss_samples.last()) {
        let max = rss_samples.iter().max().copied().unwrap_or(0);
        let min = rss_samples.iter().min().copied().unwrap_or(0);
        println!(
            "server RSS measured {first} KiB first s, {last} KiB last s (min {min}, max {max}; {:+.1}% first to last)",
            (*last as f64 - *first as f64) / *first as f64 * 100.0
        );
    }
    if args.stalled_fraction > 0.0 {
        println!(
            "stalled clients     {:.0}% (not measured; 4 KiB receive buffers)",
            args.stalled_fraction * 100.0
        );
    }
    if args.churn_per_sec > 0 {
        println!(
            "churn               {} connect/disconnect cycles done, {} failed ({} /s asked)",
            churn_done.load(Ordering::Relaxed),
            churn_failed.load(Ordering::Relaxed),
            args.churn_per_sec
        );
    }
    println!(
        "gaps seen           {}",
        totals.gaps.load(Ordering::Relaxed)
    );
    println!(
        "client errors       {}",
        totals.errors.load(Ordering::Relaxed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Ramp;

    #[test]
    fn ramp_reaches_the_rate_and_time_of_inverts_due() {
        let r = Ramp {
            rate: 1000.0,
            secs: 2.0,
        };
        assert_eq!(r.due(0.0), 0);
        assert_eq!(r.due(1.0), 250, "a quarter of the ramp's area by half-time");
        assert_eq!(r.due(2.0), 1000);
        assert_eq!(r.due(3.0) - r.due(2.0), 1000, "full rate after the ramp");
        for k in [0u64, 1, 10, 999, 1000, 1001, 5000] {
            let t = r.time_of(k);
            assert!(r.due(t + 1e-9) >= k, "delta {k} is due at its own time");
            assert!(r.due((t - 1e-6).max(0.0)) <= k, "and not much before");
        }
        let flat = Ramp {
            rate: 100.0,
            secs: 0.0,
        };
        assert_eq!(flat.due(1.5), 150);
        assert!((flat.time_of(150) - 1.5).abs() < 1e-12);
    }
}
