//! `cluster`: scale-out on one machine, measured in one run. loadgen starts
//! a `nats-server`, one **origin** (`tickwire serve --publish … --origin-id
//! …`, the feed goes into its TCP ingest) and two **edges** (`tickwire serve
//! --backplane …`), then holds the same verifying fleet on each of the three
//! nodes at once: same clients, same symbol subsets (one seed), same feed.
//!
//! ```text
//!  lg-feed ──ingest──▶ origin ──NATS──▶ edge-1 ──WebSocket──▶ lg-e1-* fleet
//!                        │         └──▶ edge-2 ──WebSocket──▶ lg-e2-* fleet
//!                        └───────────────────────WebSocket──▶ lg-or-* fleet
//! ```
//!
//! Latency is receipt − the feed's *scheduled* send time on every node, so an
//! edge's percentile minus the origin's is what the NATS hop adds (printed as
//! "hop added"). Per node: delivered msgs/s, p50/p90/p99/max, violations
//! (the whole run, warm-up and shutdown included), the engine's CPU and the
//! CPU of that node's client threads; beside them nats-server's and
//! loadgen's CPU.
//!
//! Reuses the harness: [`Feed`], [`Fleet`], [`Window`]/[`Summary`] and
//! [`Report`], and [`SpawnedEngine`] (how `--spawn` starts an engine on port
//! 0 and learns its addresses). Everything it starts is stopped by PID when
//! the run ends, fails or panics (guards); every wait is bounded; loopback
//! only, no fixed port.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tickwire::book::synth::SynthConfig;
use tickwire::wire::StaleReason;
use tickwire_loadgen::env::Env;
use tickwire_loadgen::feed::{Feed, FeedConfig};
use tickwire_loadgen::fleet::{Fleet, FleetConfig};
use tickwire_loadgen::report::{ClusterReport, NodeReport, Point, Report, Summary, Window};
use tickwire_loadgen::runner::{Progress, SpawnedEngine, wait_for_symbols};
use tickwire_loadgen::stats::{
    Tally, open_file_limit, process_cpu_seconds, process_rss_kib, self_threads_cpu_seconds,
};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The tickwire binary (started three times: origin, edge-1, edge-2).
    #[arg(long, default_value = "target/release/tickwire")]
    tickwire: PathBuf,
    /// The nats-server binary (a bare name is looked up on PATH, then in
    /// /usr/sbin and /usr/local/sbin).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Feed events (deltas + trades) per second into the origin.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Symbols the feed sends (BTC-USD, ETH-USD, … then SYN-010, …).
    #[arg(long, default_value_t = 20)]
    symbols: usize,
    /// Verifying WebSocket clients on each node.
    #[arg(long, default_value_t = 200)]
    clients_per_node: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at full rate before measuring (clients already open).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Workers of each engine (`tickwire serve --workers`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Client threads (mio loops) per node.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Symbols per client, drawn by Zipf popularity (the same on every node).
    #[arg(long, default_value_t = 3)]
    symbols_per_client: usize,
    #[arg(long, default_value_t = 1.0)]
    popularity_zipf: f64,
    /// Fraction of clients also subscribing to trades.
    #[arg(long, default_value_t = 0.5)]
    trades_fraction: f64,
    /// Fraction of clients using JSON.
    #[arg(long, default_value_t = 0.1)]
    json_fraction: f64,
    /// Zipf exponent of the feed's activity across symbols (0: uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Fraction of feed events that are trades.
    #[arg(long, default_value_t = 0.1)]
    trade_ratio: f64,
    /// Book depth, levels per side.
    #[arg(long, default_value_t = 20)]
    depth: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write PREFIX.json and PREFIX.html (report with charts).
    #[arg(long, value_name = "PREFIX")]
    out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// The longest `--duration` / `--warmup` accepted, s.
const MAX_SECS: f64 = 3600.0;
/// Bound on every readiness wait (nats-server, an edge's symbol list).
const READY_WAIT: Duration = Duration::from_secs(15);
/// Attempts to start nats-server on ports picked free (another process may
/// take one in between).
const NATS_ATTEMPTS: usize = 3;
/// Sockets kept free for everything but the clients (feed, engines' pipes,
/// HTTP probes, /proc reads).
const FD_MARGIN: u64 = 300;
/// How often the run samples counters and CPU.
const SAMPLE: Duration = Duration::from_secs(1);
/// The origin's name on the backplane.
const ORIGIN_ID: &str = "lg-origin";

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("--rate must be a positive number of events per second");
        }
        if self.symbols == 0 || self.clients_per_node == 0 {
            bail!("--symbols and --clients-per-node must be positive");
        }
        if self.workers == 0 || self.threads == 0 {
            bail!("--workers and --threads must be positive");
        }
        if !(self.duration > 0.0 && self.duration <= MAX_SECS) {
            bail!("--duration must be in (0, {MAX_SECS}]");
        }
        if !(self.warmup >= 0.0 && self.warmup <= MAX_SECS) {
            bail!("--warmup must be in [0, {MAX_SECS}]");
        }
        let need = 3 * self.clients_per_node as u64 + FD_MARGIN;
        if let Some(limit) = open_file_limit()
            && need > limit
        {
            bail!(
                "3 × {} clients need about {need} open files; this process may hold {limit} (ulimit -n)",
                self.clients_per_node
            );
        }
        Ok(())
    }
}

/// `path` itself when it names a directory part; a bare name is looked up on
/// `PATH`, then in `extra` directories.
fn find_program(path: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
    if path.components().count() > 1 {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("{} not found", path.display());
    }
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(path))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{} not found on PATH nor in {extra:?} (install it, or pass its path)",
                path.display()
            )
        })
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The run's directory: the NATS config, every process's log. Kept (and its
/// path printed) unless the run succeeded.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "tickwire-lg-cluster-{}-{nanos:09}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(WorkDir { path, keep: true })
    }

    /// The last `n` lines of a log in this directory.
    fn tail(&self, file: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.path.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = format!("--- {} (last {n} lines)\n", self.path.join(file).display());
        for l in &lines[lines.len().saturating_sub(n)..] {
            out += l;
            out.push('\n');
        }
        out
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("cluster: logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The `nats-server` this run started; killed by its PID when dropped.
struct Nats {
    child: Option<Child>,
    url: String,
    pid: u32,
    version: String,
}

impl Nats {
    /// Starts one server on free loopback ports (retrying with new ports if
    /// it exits at start), ready when `/healthz` answers and `/varz` names it.
    fn start(bin: &Path, dir: &WorkDir) -> anyhow::Result<Nats> {
        let version = Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut last = String::new();
        for attempt in 1..=NATS_ATTEMPTS {
            match Nats::try_start(bin, dir, attempt)? {
                Ok(mut n) => {
                    n.version = version;
                    return Ok(n);
                }
                Err(why) => last = why,
            }
        }
        bail!("nats-server did not start in {NATS_ATTEMPTS} attempts; last: {last}")
    }

    /// `Ok(Err(why))`: the server exited at start (a port was taken: retry).
    fn try_start(
        bin: &Path,
        dir: &WorkDir,
        attempt: usize,
    ) -> anyhow::Result<Result<Nats, String>> {
        let (port, monitor) = (free_port()?, free_port()?);
        let name = format!("tw-lg-{}-{attempt}", std::process::id());
        let log = dir.path.join("nats.log");
        let conf = dir.path.join("nats.conf");
        // Minimal: loopback listeners, the server's log in the run directory,
        // no system account ($SYS traffic would move the counters on its own).
        let text = format!(
            "# Written by tickwire-loadgen cluster for one run.\n\
             server_name: \"{name}\"\n\
             listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             no_system_account: true\n\
             log_file: \"{}\"\n",
            log.display()
        );
        std::fs::write(&conf, text).with_context(|| format!("write {}", conf.display()))?;
        let stderr = File::create(dir.path.join("nats.stderr.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id();
        let mut nats = Nats {
            child: Some(child),
            url: format!("nats://127.0.0.1:{port}"),
            pid,
            version: String::new(),
        };
        let client = SocketAddr::from(([127, 0, 0, 1], port));
        let monitor = SocketAddr::from(([127, 0, 0, 1], monitor));
        let want = format!("\"server_name\": \"{name}\"");
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(c) = nats.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                nats.child = None;
                return Ok(Err(format!(
                    "nats-server exited at start ({status})\n{}{}",
                    dir.tail("nats.log", 10),
                    dir.tail("nats.stderr.log", 10)
                )));
            }
            if http_get(monitor, "/healthz").is_ok_and(|(code, _)| code == 200)
                && http_get(monitor, "/varz").is_ok_and(|(_, body)| body.contains(&want))
                && TcpStream::connect_timeout(&client, Duration::from_secs(1)).is_ok()
            {
                return Ok(Ok(nats));
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server (pid {pid}) not ready within {READY_WAIT:?}\n{}",
                    dir.tail("nats.log", 10)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL to its PID, then reaps it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Plain HTTP/1.0 GET: (status, body). Bounded by 1 s to connect and 5 s to
/// read.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// One node: its engine, the fleet on it, and what was counted.
struct Node {
    name: &'static str,
    role: &'static str,
    /// Its log file in the run directory.
    log: String,
    /// Client thread names start with this (CPU per fleet).
    threads: &'static str,
    engine: SpawnedEngine,
    fleet: Option<Fleet>,
    last_engine_cpu: Option<f64>,
    last_fleet_cpu: f64,
    /// The measured window.
    measured: Window,
    /// Everything counted outside it (opening, warm-up, shutdown): only its
    /// violations are reported.
    outside: Tally,
}

impl Node {
    fn start(
        name: &'static str,
        role: &'static str,
        threads: &'static str,
        tickwire: &Path,
        extra: &[String],
        dir: &WorkDir,
    ) -> anyhow::Result<Node> {
        let log = format!("{name}.log");
        let stderr = File::create(dir.path.join(&log))?;
        let engine = SpawnedEngine::start(
            &[tickwire.display().to_string()],
            extra,
            Stdio::from(stderr),
        )
        .with_context(|| format!("start the {name} engine\n{}", dir.tail(&log, 10)))?;
        Ok(Node {
            name,
            role,
            log,
            threads,
            engine,
            fleet: None,
            last_engine_cpu: None,
            last_fleet_cpu: 0.0,
            measured: Window::default(),
            outside: Tally::new(),
        })
    }

    fn cpu(&self) -> (Option<f64>, f64) {
        (
            process_cpu_seconds(self.engine.pid()),
            self_threads_cpu_seconds(self.threads),
        )
    }

    /// Restarts the CPU counters (the next sample counts from now).
    fn mark_cpu(&mut self) {
        (self.last_engine_cpu, self.last_fleet_cpu) = self.cpu();
    }

    /// One interval of `secs`: what the fleet counted, the offered load from
    /// the feed's per-symbol counts `(deltas, trades)` in the interval, CPU.
    fn sample(&mut self, secs: f64, feed: &(Vec<u64>, Vec<u64>), behind_ns: u64) -> Window {
        let mut w = Window {
            secs,
            ..Window::default()
        };
        if let Some(fl) = &self.fleet {
            fl.take(&mut w.tally);
            w.clients_open = fl.open() as u64;
            w.clients_target = fl.target() as u64;
            w.open_secs = w.clients_open as f64 * secs;
            let offered = (0..feed.0.len())
                .map(|i| fl.subscribers.offered(i, feed.0[i], feed.1[i]))
                .sum();
            w.offered = Some(offered);
        }
        w.feed_events = Some(feed.0.iter().chain(&feed.1).sum());
        w.feed_behind_ns = Some(behind_ns);
        let (engine, fleet) = self.cpu();
        w.server_cpu_s = match (engine, self.last_engine_cpu) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        w.loadgen_cpu_s = fleet - self.last_fleet_cpu;
        (self.last_engine_cpu, self.last_fleet_cpu) = (engine, fleet);
        w.server_rss_kib = process_rss_kib(self.engine.pid());
        w
    }
}

/// Per-symbol feed counts since the last call.
struct FeedCounter {
    last: (Vec<u64>, Vec<u64>),
}

impl FeedCounter {
    fn delta(&mut self, feed: &Feed) -> (Vec<u64>, Vec<u64>) {
        let now = feed.counts();
        let sub = |a: &[u64], b: &[u64]| -> Vec<u64> {
            a.iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        let d = (sub(&now.0, &self.last.0), sub(&now.1, &self.last.1));
        self.last = now;
        d
    }
}

/// Everything running. Dropping it (also on an error or a panic) stops, in
/// order, the fleets, the feed, the engines (SIGTERM to each PID, then
/// SIGKILL after 5 s) and nats-server (SIGKILL to its PID).
struct Cluster {
    args: Args,
    dir: WorkDir,
    nats: Nats,
    nodes: Vec<Node>,
    feed: Option<Feed>,
    counter: FeedCounter,
    progress: Progress,
    start: Instant,
    timeline: Vec<Point>,
    last_self_cpu: f64,
    last_nats_cpu: Option<f64>,
}

/// What the measured window adds up to beside the nodes.
#[derive(Default)]
struct Whole {
    loadgen_cpu_s: f64,
    nats_cpu_s: Option<f64>,
}

impl Cluster {
    fn start(args: Args) -> anyhow::Result<Cluster> {
        let tickwire = find_program(&args.tickwire, &[]).context(
            "the tickwire binary (cargo build --release -p tickwire, or --tickwire PATH)",
        )?;
        let nats_bin = find_program(&args.nats_server, &["/usr/sbin", "/usr/local/sbin"])?;
        let dir = WorkDir::create()?;
        let nats = Nats::start(&nats_bin, &dir)?;
        let workers = args.workers.to_string();
        let mut origin_args = vec!["--workers".to_owned(), workers.clone()];
        origin_args.extend([
            "--publish".into(),
            nats.url.clone(),
            "--origin-id".into(),
            ORIGIN_ID.into(),
        ]);
        let edge_args = vec![
            "--workers".to_owned(),
            workers,
            "--backplane".into(),
            nats.url.clone(),
        ];
        let mut c = Cluster {
            dir,
            nats,
            nodes: Vec::new(),
            feed: None,
            counter: FeedCounter {
                last: (Vec::new(), Vec::new()),
            },
            progress: Progress::new(args.quiet),
            start: Instant::now(),
            timeline: Vec::new(),
            last_self_cpu: 0.0,
            last_nats_cpu: None,
            args,
        };
        for (name, role, threads, extra) in [
            ("origin", "origin", "lg-or", &origin_args),
            ("edge-1", "edge", "lg-e1", &edge_args),
            ("edge-2", "edge", "lg-e2", &edge_args),
        ] {
            let node = Node::start(name, role, threads, &tickwire, extra, &c.dir)?;
            c.nodes.push(node);
        }
        let a = &c.args;
        let ingest = c.nodes[0]
            .engine
            .target
            .ingest
            .context("the origin printed no protobuf ingest address")?;
        // Snapshots now; events once every client is open.
        let feed = Feed::start(FeedConfig {
            ingest,
            json: false,
            synth: SynthConfig {
                seed: a.seed,
                symbols: a.symbols,
                depth: a.depth,
                zipf_exponent: a.zipf,
                trade_ratio: a.trade_ratio,
                max_updates_per_delta: 4,
            },
            rate: 0.0,
            token: None,
        })
        .context("the feed into the origin")?;
        let names = feed.names.clone();
        c.feed = Some(feed);
        // The origin knows them from the feed; the edges from its heartbeats.
        for n in &c.nodes {
            wait_for_symbols(n.engine.target.ws, &names, READY_WAIT).with_context(|| {
                format!("{}'s GET /symbols\n{}", n.name, c.dir.tail(&n.log, 10))
            })?;
        }
        for n in &mut c.nodes {
            let fleet = Fleet::start(
                FleetConfig {
                    ws: n.engine.target.ws,
                    threads: a.threads,
                    symbols: names.clone(),
                    symbols_per_client: a.symbols_per_client,
                    popularity_zipf: a.popularity_zipf,
                    trades_fraction: a.trades_fraction,
                    json_fraction: a.json_fraction,
                    // One seed: the same clients, with the same symbol
                    // subsets and encodings, on every node.
                    seed: a.seed,
                    thread_name: n.threads.into(),
                    ..FleetConfig::default()
                },
                a.clients_per_node,
            )?;
            n.fleet = Some(fleet);
        }
        Ok(c)
    }

    fn feed(&self) -> anyhow::Result<&Feed> {
        self.feed.as_ref().context("the feed is gone")
    }

    /// Fails when a process this run started has exited, or the feed.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if !n.engine.is_running() {
                bail!(
                    "the {} engine (pid {}) exited\n{}",
                    n.name,
                    n.engine.pid(),
                    self.dir.tail(&n.log, 20)
                );
            }
        }
        if !self.nats.is_running() {
            bail!(
                "nats-server (pid {}) exited\n{}",
                self.nats.pid,
                self.dir.tail("nats.log", 20)
            );
        }
        if self.feed()?.is_finished() {
            bail!(
                "the feed stopped (the origin closed its ingest connection?)\n{}",
                self.dir.tail(&self.nodes[0].log, 20)
            );
        }
        Ok(())
    }

    /// Waits (bounded) until every fleet holds its clients; says so when
    /// some are missing and goes on (the table shows how many were open).
    fn wait_open(&mut self) -> anyhow::Result<()> {
        let want = self.args.clients_per_node;
        // Connects are paced at 5 000/s per fleet: a generous bound.
        let bound = Duration::from_secs(10) + Duration::from_millis(want as u64);
        let deadline = Instant::now() + bound;
        loop {
            self.check_alive()?;
            let open: Vec<usize> = self
                .nodes
                .iter()
                .map(|n| n.fleet.as_ref().map_or(0, Fleet::open))
                .collect();
            if open.iter().all(|&o| o >= want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "cluster: after {bound:?} the fleets hold {open:?} of {want} clients each; measuring anyway"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `secs` at the current rate, sampling every second; adds each
    /// sample to the nodes' measured windows when `measure`, else keeps it
    /// aside (violations only). Returns loadgen's and nats-server's CPU.
    fn run_for(&mut self, secs: f64, label: &str, measure: bool) -> anyhow::Result<Whole> {
        let begin = Instant::now();
        let dur = Duration::from_secs_f64(secs);
        let mut last = begin;
        let mut whole = Whole::default();
        let mut k = 0u64;
        // At most one sample a second plus one at the end: bounded by `secs`.
        while last.duration_since(begin) < dur && k <= secs.ceil() as u64 + 1 {
            k += 1;
            let next = (last + SAMPLE).min(begin + dur);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            self.check_alive()?;
            let now = Instant::now();
            let iv = now.duration_since(last).as_secs_f64();
            last = now;
            let feed = self.feed.as_ref().context("the feed is gone")?;
            let behind = feed
                .stats
                .behind_ns
                .load(std::sync::atomic::Ordering::Relaxed);
            let counts = self.counter.delta(feed);
            let windows: Vec<Window> = self
                .nodes
                .iter_mut()
                .map(|n| n.sample(iv, &counts, behind))
                .collect();
            let me = process_cpu_seconds(std::process::id()).unwrap_or(0.0);
            let nats = process_cpu_seconds(self.nats.pid);
            let lg = me - self.last_self_cpu;
            whole.loadgen_cpu_s += lg;
            if let (Some(a), Some(b)) = (nats, self.last_nats_cpu) {
                *whole.nats_cpu_s.get_or_insert(0.0) += a - b;
            }
            (self.last_self_cpu, self.last_nats_cpu) = (me, nats);
            self.record(&windows, iv, lg, label, (now - begin).as_secs_f64(), secs);
            for (n, w) in self.nodes.iter_mut().zip(windows) {
                if measure {
                    n.measured.add(&w);
                } else {
                    n.outside.add(&w.tally);
                }
            }
        }
        Ok(whole)
    }

    /// A timeline point (all nodes) and the progress line.
    fn record(&mut self, windows: &[Window], iv: f64, lg_cpu: f64, label: &str, at: f64, of: f64) {
        let mut total = Window {
            secs: iv,
            loadgen_cpu_s: lg_cpu,
            ..Window::default()
        };
        let mut parts = Vec::new();
        for (n, w) in self.nodes.iter().zip(windows) {
            let s = w.summary();
            total.tally.add(&w.tally);
            total.offered = Some(total.offered.unwrap_or(0.0) + w.offered.unwrap_or(0.0));
            total.clients_open += w.clients_open;
            total.open_secs += w.open_secs;
            total.server_cpu_s =
                Some(total.server_cpu_s.unwrap_or(0.0) + w.server_cpu_s.unwrap_or(0.0));
            parts.push(format!(
                "{} {}/{} {}/s p99 {:.2}ms cpu {}",
                n.name,
                s.clients_open,
                s.clients_target,
                tickwire_loadgen::chart::short(s.delivered_per_s),
                s.latency.p99_ms,
                s.server_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            ));
        }
        let s = total.summary();
        self.timeline.push(Point {
            t_s: self.start.elapsed().as_secs_f64(),
            clients_open: s.clients_open,
            received_per_s: s.received_per_s,
            delivered_per_s: s.delivered_per_s,
            offered_per_s: s.offered_per_s,
            p50_ms: s.latency.p50_ms,
            p99_ms: s.latency.p99_ms,
            violations: s.violations,
            loadgen_cpu_cores: s.loadgen_cpu_cores,
            server_cpu_cores: s.server_cpu_cores,
        });
        self.progress.show(&format!(
            "[{label} {at:.0}/{of:.0} s] {} | viol {} | loadgen cpu {:.2}",
            parts.join(" | "),
            s.violations,
            s.loadgen_cpu_cores
        ));
    }

    /// Opens, warms up, measures, stops; returns the report.
    fn run(mut self) -> anyhow::Result<Report> {
        let env = Env::capture();
        self.wait_open()?;
        // Whatever arrived while opening (snapshots) is not measured.
        for n in &mut self.nodes {
            if let Some(fl) = &n.fleet {
                fl.take(&mut n.outside);
            }
            n.mark_cpu();
        }
        self.counter.last = self.feed()?.counts();
        self.feed()?.set_rate(self.args.rate);
        if !self.args.quiet {
            eprintln!(
                "cluster: nats {} (pid {}), {}; feed {} events/s into the origin; {} clients per node; warm-up {} s, measuring {} s",
                self.nats.url,
                self.nats.pid,
                self.nodes
                    .iter()
                    .map(|n| format!("{} {} (pid {})", n.name, n.engine.target.ws, n.engine.pid()))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.args.rate,
                self.args.clients_per_node,
                self.args.warmup,
                self.args.duration
            );
        }
        self.start = Instant::now();
        self.last_self_cpu = process_cpu_seconds(std::process::id()).unwrap_or(0.0);
        self.last_nats_cpu = process_cpu_seconds(self.nats.pid);
        if self.args.warmup > 0.0 {
            self.run_for(self.args.warmup, "warm-up", false)?;
        }
        let whole = self.run_for(self.args.duration, "measure", true)?;
        self.progress.done();
        // Stop the clients first (what they counted meanwhile is checked for
        // violations), then the feed; the engines and NATS on drop.
        for n in &mut self.nodes {
            if let Some(fl) = n.fleet.take() {
                fl.take(&mut n.outside);
                fl.stop();
            }
        }
        if let Some(f) = self.feed.take() {
            f.stop().context("the feed")?;
        }
        let report = self.report(env, whole);
        self.dir.keep = false;
        Ok(report)
    }

    fn report(&self, env: Env, whole: Whole) -> Report {
        let a = &self.args;
        let mut report = Report::new("cluster", env);
        let mut total = Window::default();
        for n in &self.nodes {
            let mut s = n.measured.summary();
            // Violations of the whole run count, not only the measured ones.
            let mut all = n.measured.tally.clone();
            all.add(&n.outside);
            s.violations = all.violations_total();
            s.violations_by_kind = all
                .violations
                .iter()
                .map(|(k, c)| (k.label().to_owned(), *c))
                .collect();
            s.samples = all.samples;
            // So do the connection counters (clients open before measuring).
            s.connects = all.connects;
            s.opened = all.opened;
            s.connect_errors = all.connect_errors;
            s.handshake_errors = all.handshake_errors;
            s.server_closes = all
                .server_closes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            report.nodes.push(NodeReport {
                name: n.name.into(),
                role: n.role.into(),
                pid: n.engine.pid(),
                ws: n.engine.target.ws.to_string(),
                summary: s,
                ..NodeReport::default()
            });
            let w = &n.measured;
            total.tally.add(&w.tally);
            total.secs = w.secs;
            total.offered = Some(total.offered.unwrap_or(0.0) + w.offered.unwrap_or(0.0));
            total.feed_events = w.feed_events;
            total.feed_behind_ns = w.feed_behind_ns;
            total.server_cpu_s =
                Some(total.server_cpu_s.unwrap_or(0.0) + w.server_cpu_s.unwrap_or(0.0));
            total.clients_target += w.clients_target;
            total.clients_open += w.clients_open;
            total.open_secs += w.open_secs;
        }
        let origin = report.nodes[0].summary.clone();
        for n in &mut report.nodes {
            n.set_hop(&origin);
        }
        total.loadgen_cpu_s = whole.loadgen_cpu_s;
        let mut summary = total.summary();
        summary.violations = report.nodes.iter().map(|n| n.summary.violations).sum();
        summary.violations_by_kind.clear();
        summary.samples.clear();
        summary.server_closes.clear();
        (summary.connects, summary.opened) = (0, 0);
        (summary.connect_errors, summary.handshake_errors) = (0, 0);
        for n in &report.nodes {
            for (k, c) in &n.summary.violations_by_kind {
                *summary.violations_by_kind.entry(k.clone()).or_default() += c;
            }
            summary.connects += n.summary.connects;
            summary.opened += n.summary.opened;
            summary.connect_errors += n.summary.connect_errors;
            summary.handshake_errors += n.summary.handshake_errors;
            for (k, c) in &n.summary.server_closes {
                *summary.server_closes.entry(k.clone()).or_default() += c;
            }
            for x in &n.summary.samples {
                if summary.samples.len() < tickwire_loadgen::stats::MAX_SAMPLES {
                    summary.samples.push(format!("{}: {x}", n.name));
                }
            }
        }
        let secs = total.secs.max(1e-9);
        report.cluster = Some(ClusterReport {
            nats_url: self.nats.url.clone(),
            nats_version: self.nats.version.clone(),
            nats_cpu_cores: whole.nats_cpu_s.map(|c| c / secs),
            tickwire: a.tickwire.display().to_string(),
            workers: a.workers,
            rate: a.rate,
            symbols: a.symbols,
            clients_per_node: a.clients_per_node,
            engines_cpu_cores: summary.server_cpu_cores.unwrap_or(0.0),
        });
        report.summary = summary;
        report.timeline = self.timeline.clone();
        let silent: Vec<&str> = report
            .nodes
            .iter()
            .filter(|n| n.summary.delivered_per_s <= 0.0)
            .map(|n| n.name.as_str())
            .collect();
        report.verdict = if report.summary.violations > 0 {
            format!("{} violations", report.summary.violations)
        } else if !silent.is_empty() {
            format!("nothing delivered on {}", silent.join(", "))
        } else {
            let hops: Vec<String> = report
                .nodes
                .iter()
                .filter(|n| n.hop_added_p50_ms.is_some())
                .map(|n| format!("{} {}", n.name, n.hop_text()))
                .collect();
            format!("zero violations on every node; {}", hops.join("; "))
        };
        let saturated: Vec<String> = report
            .nodes
            .iter()
            .filter_map(|n| saturation(&n.summary).map(|why| format!("{} {why}", n.name)))
            .collect();
        if !saturated.is_empty() {
            report.verdict += &format!(
                "; SATURATED ({}): the latencies are queueing, so the hop figures are not the hop's cost; lower --rate or --clients-per-node",
                saturated.join(", ")
            );
        }
        report
    }
}

/// Delivered below this share of the offered load: the node (or the
/// machine) did not keep up.
const KEPT_UP_RATIO: f64 = 0.95;

/// Why a node's measured window shows it could not keep up, if it does:
/// delivered well below offered, or clients dropped as slow consumers.
fn saturation(s: &Summary) -> Option<String> {
    let slow: u64 = [StaleReason::SlowConsumer, StaleReason::SlowConsumerTrades]
        .iter()
        .filter_map(|r| s.stale.get(r.as_str()))
        .sum();
    match s.delivered_ratio {
        Some(r) if r < KEPT_UP_RATIO => Some(format!("delivered {:.0}% of offered", r * 100.0)),
        _ if slow > 0 => Some(format!("{slow} slow-consumer Stale")),
        _ => None,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(f) = n.fleet.take() {
                f.stop();
            }
        }
        self.feed.take();
        // SIGTERM to all first, so they shut down side by side.
        for n in &self.nodes {
            n.engine.terminate();
        }
        for n in self.nodes.drain(..) {
            n.engine.stop();
        }
        self.nats.stop();
    }
}

/// The subcommand: prints the table, writes the report when asked; exit
/// status 2 when any node saw a violation, an error when a node delivered
/// nothing.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let out = args.out.clone();
    let quiet = args.quiet;
    let cluster = Cluster::start(args)?;
    let report = cluster.run()?;
    if let Some(prefix) = &out {
        let (j, h) = report.write(prefix)?;
        if !quiet {
            eprintln!("wrote {} and {}", j.display(), h.display());
        }
    }
    print!("{}", report.table());
    if report.summary.violations > 0 {
        eprintln!("{} violations", report.summary.violations);
        std::process::exit(2);
    }
    if report
        .nodes
        .iter()
        .any(|n| n.summary.delivered_per_s <= 0.0)
    {
        bail!("{}", report.verdict);
    }
    Ok(())
}
