//! The controller: starts (or finds) the engine, the feed and the fleet,
//! walks a scenario's phases or a capacity search's steps, samples every
//! second (timeline, progress line), and builds the report.
//!
//! Runs on the main thread; every wait is bounded by the scenario's
//! durations and timeouts. Thread CPU is read from `/proc` (loadgen's own
//! beside the engine's).

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tickwire::book::synth::SynthConfig;
use tickwire::net::engine::{Engine, EngineConfig};

use crate::env::Env;
use crate::feed::{Feed, FeedConfig};
use crate::fleet::{Fleet, FleetConfig};
use crate::report::{PhaseReport, Point, Report, StepReport, Summary, Window, knee};
use crate::scenario::{Objective, PhaseSpec, Scenario};
use crate::stats::{process_cpu_seconds, process_rss_kib, self_cpu_split};

/// How a run reports.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write `<out>.json` and `<out>.html`.
    pub out: Option<PathBuf>,
    /// No progress line (tests).
    pub quiet: bool,
}

/// The engine being loaded.
enum EngineHandle {
    External,
    InProcess(Box<Engine>),
    Spawned(SpawnedEngine),
}

/// Where the engine is.
#[derive(Debug, Clone)]
pub struct Target {
    pub ws: SocketAddr,
    pub ingest: Option<SocketAddr>,
    pub ingest_json: Option<SocketAddr>,
    pub server_pid: Option<u32>,
    pub in_process: bool,
}

fn parse_addr(what: &str, s: &Option<String>) -> anyhow::Result<Option<SocketAddr>> {
    s.as_deref()
        .map(|a| {
            a.parse()
                .with_context(|| format!("{what}: {a:?} is not an address"))
        })
        .transpose()
}

fn start_engine(sc: &Scenario) -> anyhow::Result<(EngineHandle, Target)> {
    let e = &sc.engine;
    if e.in_process {
        let mut cfg = EngineConfig {
            listen: "127.0.0.1:0".parse()?,
            workers: e.workers.max(1),
            pin: e.pin,
            ..EngineConfig::default()
        };
        cfg.ingest.proto_addr = "127.0.0.1:0".parse()?;
        cfg.ingest.json_addr = "127.0.0.1:0".parse()?;
        cfg.ingest.token = sc.feed.token.as_deref().map(Into::into);
        let engine = Engine::start(cfg).context("start the in-process engine")?;
        let target = Target {
            ws: engine.ws_addr,
            ingest: Some(engine.ingest.proto_addr),
            ingest_json: Some(engine.ingest.json_addr),
            server_pid: None,
            in_process: true,
        };
        return Ok((EngineHandle::InProcess(Box::new(engine)), target));
    }
    if !e.spawn.is_empty() {
        let engine = SpawnedEngine::start(&e.spawn, &e.spawn_args, Stdio::null())?;
        let target = engine.target.clone();
        return Ok((EngineHandle::Spawned(engine), target));
    }
    let ws = parse_addr("engine.ws", &e.ws)?.context(
        "the scenario names no engine: set engine.ws (+ ingest), engine.spawn or engine.in_process",
    )?;
    Ok((
        EngineHandle::External,
        Target {
            ws,
            ingest: parse_addr("engine.ingest", &e.ingest)?,
            ingest_json: parse_addr("engine.ingest_json", &e.ingest_json)?,
            server_pid: e.server_pid,
            in_process: false,
        },
    ))
}

fn stop_engine(h: EngineHandle) {
    match h {
        EngineHandle::External => {}
        EngineHandle::InProcess(e) => e.shutdown(),
        EngineHandle::Spawned(e) => e.stop(),
    }
}

/// An engine this process started as a child (`CMD serve` on port-0
/// listeners), stopped by its PID when stopped or dropped (also on error and
/// panic paths): SIGTERM, up to 5 s to exit, then SIGKILL.
pub struct SpawnedEngine {
    child: Option<Child>,
    /// Its addresses, as it printed them, and its PID.
    pub target: Target,
}

impl SpawnedEngine {
    /// Runs `cmd[0] cmd[1..] serve --listen 127.0.0.1:0 --ingest 127.0.0.1:0
    /// --ingest-json 127.0.0.1:0 extra…` and reads the addresses it prints
    /// ("listening on ADDR", "ingest protobuf ADDR json ADDR"), waiting at
    /// most 15 s. Its stderr goes to `stderr`.
    pub fn start(cmd: &[String], extra: &[String], stderr: Stdio) -> anyhow::Result<SpawnedEngine> {
        let (prog, args) = cmd.split_first().context("no engine command")?;
        let child = Command::new(prog)
            .args(args)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ingest",
                "127.0.0.1:0",
                "--ingest-json",
                "127.0.0.1:0",
            ])
            .args(extra)
            // Plain text logs, when its stderr goes to a file.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let pid = child.id();
        // From here on, every early return stops the child (Drop).
        let mut engine = SpawnedEngine {
            child: Some(child),
            target: Target {
                ws: SocketAddr::from(([127, 0, 0, 1], 0)),
                ingest: None,
                ingest_json: None,
                server_pid: Some(pid),
                in_process: false,
            },
        };
        let stdout = engine
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .context("engine stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the two address lines, then drains stdout until the engine exits.
        std::thread::Builder::new()
            .name("lg-engine-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut ws, mut ingest, mut json) = (None, None, None);
        while ws.is_none() || ingest.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                bail!(
                    "the spawned engine {cmd:?} (pid {pid}) did not print its addresses within 15 s"
                );
            };
            if let Some(a) = line.strip_prefix("listening on ") {
                ws = a.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix("ingest protobuf ") {
                let mut it = rest.split_whitespace();
                ingest = it.next().and_then(|a| a.parse().ok());
                json = it.nth(1).and_then(|a| a.parse().ok());
            }
        }
        engine.target.ws = ws.context("engine address")?;
        engine.target.ingest = ingest;
        engine.target.ingest_json = json;
        Ok(engine)
    }

    pub fn pid(&self) -> u32 {
        self.target.server_pid.unwrap_or(0)
    }

    /// `true` while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM to its PID without waiting (`stop` waits).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops the engine (see the type's doc).
    pub fn stop(mut self) {
        self.stop_child();
    }

    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SIGTERM first (the engine closes its clients with 1001), by pid.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for SpawnedEngine {
    fn drop(&mut self) {
        self.stop_child();
    }
}

/// `GET /symbols` of the engine once, hottest (highest seq) first.
fn get_symbols(ws: SocketAddr) -> anyhow::Result<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&ws, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /symbols HTTP/1.1\r\nHost: {ws}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    #[derive(serde::Deserialize)]
    struct Sym {
        symbol: String,
        #[serde(default)]
        seq: u64,
    }
    #[derive(serde::Deserialize)]
    struct Syms {
        symbols: Vec<Sym>,
    }
    let mut syms: Syms = sonic_rs::from_str(body).context("parse /symbols")?;
    syms.symbols
        .sort_by(|a, b| b.seq.cmp(&a.seq).then(a.symbol.cmp(&b.symbol)));
    Ok(syms.symbols.into_iter().map(|s| s.symbol).collect())
}

/// `GET /symbols` of the engine, hottest (highest seq) first; waits up to
/// 10 s for at least one symbol.
pub fn fetch_symbols(ws: SocketAddr) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get_symbols(ws);
        match got {
            Ok(v) if !v.is_empty() => return Ok(v),
            _ if Instant::now() >= deadline => {
                bail!("the engine at {ws} listed no symbols within 10 s ({got:?})")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Judges a window against the objective; returns why it fails.
pub fn evaluate(obj: &Objective, s: &Summary, target: u64, expect_data: bool) -> Vec<String> {
    let mut failed = Vec::new();
    if s.violations > obj.max_violations {
        failed.push(format!("{} violations", s.violations));
    }
    if s.latency.count > 0 && s.latency.p99_ms > obj.p99_ms {
        failed.push(format!(
            "p99 {:.2} ms > {:.2} ms",
            s.latency.p99_ms, obj.p99_ms
        ));
    }
    if expect_data && s.latency.count == 0 {
        failed.push("nothing delivered".into());
    }
    if let Some(r) = s.delivered_ratio
        && r < obj.min_delivered_ratio
    {
        failed.push(format!(
            "delivered {:.1}% of offered < {:.1}%",
            r * 100.0,
            obj.min_delivered_ratio * 100.0
        ));
    }
    if (s.clients_open as f64) < obj.min_open_ratio * target as f64 {
        failed.push(format!("{} of {target} clients open", s.clients_open));
    }
    failed
}

/// The progress line on stderr: redrawn in place on a terminal, one line
/// every 5 s otherwise, nothing when quiet.
pub struct Progress {
    tty: bool,
    quiet: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet,
            last: None,
            drawn: false,
        }
    }

    pub fn show(&mut self, line: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            self.drawn = true;
        } else if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            let _ = writeln!(err, "{line}");
            self.last = Some(Instant::now());
        }
    }

    /// Ends a line drawn in place (before other output).
    pub fn done(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// A running harness: engine, feed, fleet, samples.
struct Harness {
    scenario: Scenario,
    engine: Option<EngineHandle>,
    target: Target,
    feed: Option<Feed>,
    fleet: Option<Fleet>,
    start: Instant,
    last: Instant,
    last_counts: (Vec<u64>, Vec<u64>),
    last_cpu: (f64, Option<f64>),
    timeline: Vec<Point>,
    progress: Progress,
    label: String,
}

impl Harness {
    fn start(sc: &Scenario, opts: &RunOptions, want_fleet: bool) -> anyhow::Result<Harness> {
        let (engine, target) = start_engine(sc)?;
        let mut h = Harness {
            scenario: sc.clone(),
            engine: Some(engine),
            target,
            feed: None,
            fleet: None,
            start: Instant::now(),
            last: Instant::now(),
            last_counts: (Vec::new(), Vec::new()),
            last_cpu: (0.0, None),
            timeline: Vec::new(),
            progress: Progress::new(opts.quiet),
            label: String::new(),
        };
        let f = &sc.feed;
        let symbols = if f.enabled {
            let json = match f.encoding.as_str() {
                "proto" | "protobuf" => false,
                "json" => true,
                other => bail!("feed.encoding must be proto or json, not {other:?}"),
            };
            let ingest = if json {
                h.target.ingest_json
            } else {
                h.target.ingest
            }
            .context("the feed needs the engine's ingest address (engine.ingest / ingest_json)")?;
            let feed = Feed::start(FeedConfig {
                ingest,
                json,
                synth: SynthConfig {
                    seed: f.seed,
                    symbols: f.symbols,
                    depth: f.depth,
                    zipf_exponent: f.zipf,
                    trade_ratio: f.trade_ratio,
                    max_updates_per_delta: f.max_updates,
                },
                rate: 0.0,
                token: f.token.clone(),
            })?;
            let names = feed.names.clone();
            h.feed = Some(feed);
            if want_fleet {
                wait_for_symbols(h.target.ws, &names, Duration::from_secs(10))?;
            }
            names
        } else if want_fleet {
            fetch_symbols(h.target.ws)?
        } else {
            Vec::new()
        };
        if want_fleet {
            let c = &sc.clients;
            h.fleet = Some(Fleet::start(
                FleetConfig {
                    ws: h.target.ws,
                    threads: c.threads.max(1),
                    source_ips: c.source_ips,
                    symbols,
                    symbols_per_client: c.symbols_per_client,
                    popularity_zipf: c.popularity_zipf,
                    trades_fraction: c.trades_fraction,
                    json_fraction: c.json_fraction,
                    slow_read_bytes_per_sec: c.slow_read_bytes_per_sec,
                    slow_max_fraction: sc.slow_max_fraction(),
                    slow_recv_buffer: c.slow_recv_buffer,
                    connect_rate_per_sec: c.connect_rate,
                    handshake_timeout_ms: c.handshake_timeout_ms,
                    seed: c.seed,
                    thread_name: "lg-client".into(),
                },
                0,
            )?);
            if let Some(fl) = &h.fleet {
                fl.set_churn(c.churn_per_sec);
                fl.set_slow_fraction(c.slow_fraction);
            }
        }
        if let Some(feed) = &h.feed {
            feed.set_rate(f.rate);
            h.last_counts = feed.counts();
        }
        h.last_cpu = h.cpu();
        h.start = Instant::now();
        h.last = h.start;
        Ok(h)
    }

    fn cpu(&self) -> (f64, Option<f64>) {
        if self.target.in_process {
            let (ours, engine) = self_cpu_split();
            (ours, Some(engine))
        } else {
            (
                process_cpu_seconds(std::process::id()).unwrap_or(0.0),
                self.target.server_pid.and_then(process_cpu_seconds),
            )
        }
    }

    fn server_rss(&self) -> Option<u64> {
        self.target.server_pid.and_then(process_rss_kib)
    }

    /// One interval since the last sample.
    fn sample(&mut self) -> anyhow::Result<Window> {
        let now = Instant::now();
        let mut w = Window {
            secs: now.duration_since(self.last).as_secs_f64(),
            ..Window::default()
        };
        self.last = now;
        if let Some(fl) = &self.fleet {
            fl.take(&mut w.tally);
            w.clients_open = fl.open() as u64;
            w.clients_target = fl.target() as u64;
            w.open_secs = w.clients_open as f64 * w.secs;
        }
        if let Some(feed) = &self.feed {
            if feed.is_finished() {
                bail!("the feed stopped (the engine closed the ingest connection?)");
            }
            let counts = feed.counts();
            let (mut offered, mut events) = (0.0, 0u64);
            for i in 0..counts.0.len() {
                let d = counts.0[i] - self.last_counts.0.get(i).copied().unwrap_or(0);
                let t = counts.1[i] - self.last_counts.1.get(i).copied().unwrap_or(0);
                events += d + t;
                if let Some(fl) = &self.fleet {
                    offered += fl.subscribers.offered(i, d, t);
                }
            }
            self.last_counts = counts;
            w.feed_events = Some(events);
            w.feed_behind_ns = Some(feed.stats.behind_ns.load(Ordering::Relaxed));
            if self.fleet.is_some() {
                w.offered = Some(offered);
            }
        }
        let cpu = self.cpu();
        w.loadgen_cpu_s = cpu.0 - self.last_cpu.0;
        w.server_cpu_s = match (cpu.1, self.last_cpu.1) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        self.last_cpu = cpu;
        w.server_rss_kib = self.server_rss();
        let s = w.summary();
        self.timeline.push(Point {
            t_s: now.duration_since(self.start).as_secs_f64(),
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
        let feed_part = match (&self.feed, s.feed_events_per_s) {
            (Some(_), Some(e)) => format!(
                "  feed {}/s{}",
                crate::chart::short(e),
                match s.feed_behind_ms {
                    Some(b) if b > 10.0 => format!(" ({b:.0} ms behind)"),
                    _ => String::new(),
                }
            ),
            _ => String::new(),
        };
        let line = format!(
            "[{}] clients {}/{}  recv {}/s  deliv {}/s{}  p99 {:.2} ms  viol {}{}  cpu lg {:.2} srv {}",
            self.label,
            s.clients_open,
            s.clients_target,
            crate::chart::short(s.received_per_s),
            crate::chart::short(s.delivered_per_s),
            s.delivered_ratio
                .map_or(String::new(), |r| format!(" ({:.1}%)", r * 100.0)),
            s.latency.p99_ms,
            s.violations,
            feed_part,
            s.loadgen_cpu_cores,
            s.server_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
        );
        self.progress.show(&line);
        Ok(w)
    }

    /// Samples for `secs`, calling `each` every 100 ms with the elapsed
    /// fraction; returns the window.
    fn run_for(
        &mut self,
        secs: f64,
        mut each: impl FnMut(&Harness, f64),
    ) -> anyhow::Result<Window> {
        let mut win = Window::default();
        let begin = Instant::now();
        let dur = Duration::from_secs_f64(secs.max(0.0));
        let every = Duration::from_secs_f64(self.scenario.sample_interval_s.max(0.1));
        let mut next_sample = begin + every;
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(begin);
            each(self, (elapsed.as_secs_f64() / secs.max(1e-9)).min(1.0));
            if now >= next_sample || elapsed >= dur {
                let iv = self.sample()?;
                win.add(&iv);
                next_sample = now + every;
            }
            if elapsed >= dur {
                return Ok(win);
            }
            let wake = (begin + dur)
                .min(next_sample)
                .min(now + Duration::from_millis(100));
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
    }

    /// Stops everything; returns what the fleet counted since the last sample.
    fn finish(mut self) -> anyhow::Result<(Window, Vec<Point>)> {
        self.progress.done();
        let mut last = Window::default();
        if let Some(fl) = self.fleet.take() {
            fl.take(&mut last.tally);
            fl.stop();
        }
        let feed_result = self.feed.take().map(Feed::stop);
        if let Some(e) = self.engine.take() {
            stop_engine(e);
        }
        if let Some(Err(e)) = feed_result {
            return Err(e.context("feed"));
        }
        Ok((last, std::mem::take(&mut self.timeline)))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.fleet.take();
        self.feed.take();
        if let Some(e) = self.engine.take() {
            stop_engine(e);
        }
    }
}

/// Waits (at most `within`, polling every 50 ms) until the engine at `ws`
/// lists every one of `names` in `GET /symbols`, so that no client
/// subscribes to a symbol the engine does not know yet.
pub fn wait_for_symbols(ws: SocketAddr, names: &[String], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let known = get_symbols(ws).unwrap_or_default();
        if names.iter().all(|n| known.contains(n)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the engine at {ws} lists {} of the feed's {} symbols after {:.0} s",
                known.iter().filter(|k| names.contains(k)).count(),
                names.len(),
                within.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run`: the scenario's phases. Returns the report (written when asked).
pub fn run(sc: &Scenario, kind: &str, opts: &RunOptions) -> anyhow::Result<Report> {
    let want_fleet = kind != "feed";
    let mut h = Harness::start(sc, opts, want_fleet)?;
    let mut report = Report::new(kind, Env::capture());
    report.scenario = Some(sc.to_toml());
    let mut total = Window::default();
    let mut any_measured = false;
    let phases = sc.phases();
    let mut target = 0usize;
    let mut rate = sc.feed.enabled.then_some(sc.feed.rate);
    let mut churn = sc.clients.churn_per_sec;
    let mut slow = sc.clients.slow_fraction;
    for ph in &phases {
        let from = target;
        let to = ph.clients.unwrap_or(target);
        if let Some(r) = ph.rate {
            rate = Some(r);
            if let Some(f) = &h.feed {
                f.set_rate(r);
            }
        }
        if let Some(c) = ph.churn_per_sec {
            churn = c;
        }
        if let Some(s) = ph.slow_fraction {
            slow = s;
        }
        if let Some(fl) = &h.fleet {
            fl.set_churn(churn);
            fl.set_slow_fraction(slow);
            if !ph.ramp {
                fl.set_target(to);
            }
        }
        h.label = ph.name.clone();
        let ramp = ph.ramp;
        let start_s = h.start.elapsed().as_secs_f64();
        let win = h.run_for(ph.duration_s, |h, frac| {
            if ramp && let Some(fl) = &h.fleet {
                fl.set_target(from + ((to as f64 - from as f64) * frac).round() as usize);
            }
        })?;
        target = to;
        if ph.measure {
            total.add(&win);
            any_measured = true;
        }
        report.phases.push(PhaseReport {
            name: ph.name.clone(),
            start_s,
            measured: ph.measure,
            clients: to as u64,
            rate,
            churn_per_sec: churn,
            slow_fraction: slow,
            summary: win.summary(),
        });
    }
    let (last, timeline) = h.finish()?;
    // What arrived after the last sample (shutdown) still counts for violations.
    let mut tail = Window {
        clients_open: total.clients_open,
        clients_target: total.clients_target,
        ..Window::default()
    };
    tail.tally.violations = last.tally.violations.clone();
    tail.tally.samples = last.tally.samples.clone();
    total.add(&tail);
    if !any_measured {
        report.verdict = "no phase was measured".into();
    }
    report.summary = total.summary();
    report.timeline = timeline;
    let expect = want_fleet && sc.feed.enabled;
    let failed = if want_fleet {
        evaluate(
            &sc.objective,
            &report.summary,
            report.summary.clients_target,
            expect,
        )
    } else {
        Vec::new()
    };
    if any_measured {
        report.verdict = if failed.is_empty() {
            format!(
                "objective met (violations ≤ {}, p99 ≤ {} ms, delivered ≥ {:.0}% of offered, open ≥ {:.0}% of target)",
                sc.objective.max_violations,
                sc.objective.p99_ms,
                sc.objective.min_delivered_ratio * 100.0,
                sc.objective.min_open_ratio * 100.0
            )
        } else {
            format!("objective missed: {}", failed.join("; "))
        };
    }
    if let Some(out) = &opts.out {
        let (j, hfile) = report.write(out)?;
        if !opts.quiet {
            eprintln!("wrote {} and {}", j.display(), hfile.display());
        }
    }
    Ok(report)
}

/// `capacity`: steps load up until the objective breaks; reports the knee.
pub fn capacity(sc: &Scenario, opts: &RunOptions) -> anyhow::Result<Report> {
    let steps = sc.capacity.steps()?;
    let mut h = Harness::start(sc, opts, true)?;
    let mut report = Report::new("capacity", Env::capture());
    report.scenario = Some(sc.to_toml());
    // Engine memory before any client, for per-connection memory.
    let rss_base = h.server_rss();
    let mut total = Window::default();
    for (i, &(clients, rate)) in steps.iter().enumerate() {
        if let Some(f) = &h.feed {
            f.set_rate(rate);
        }
        if let Some(fl) = &h.fleet {
            fl.set_target(clients);
        }
        // Settle: wait for the connections, bounded.
        h.label = format!("step {} settle", i + 1);
        let settle_end = Instant::now() + Duration::from_secs_f64(sc.capacity.settle_timeout_s);
        let need = (clients as f64 * sc.objective.min_open_ratio).ceil() as usize;
        while h.fleet.as_ref().is_some_and(|f| f.open() < need) && Instant::now() < settle_end {
            h.run_for(0.5, |_, _| {})?;
        }
        h.label = format!("step {} warmup", i + 1);
        h.run_for(sc.capacity.warmup_s, |_, _| {})?;
        h.label = format!("step {}: {} clients, {} ev/s", i + 1, clients, rate);
        let win = h.run_for(sc.capacity.measure_s, |_, _| {})?;
        total.add(&win);
        let summary = win.summary();
        let failed = evaluate(&sc.objective, &summary, clients as u64, sc.feed.enabled);
        let per_client = match (summary.server_rss_kib, rss_base) {
            (Some(now), Some(base)) if summary.clients_open > 0 => {
                Some(now.saturating_sub(base) as f64 / summary.clients_open as f64)
            }
            _ => None,
        };
        let pass = failed.is_empty();
        report.steps.push(StepReport {
            index: i,
            clients: clients as u64,
            rate,
            pass,
            failed,
            server_kib_per_client: per_client,
            summary,
        });
        if !pass && sc.capacity.stop_at_break {
            break;
        }
    }
    let (_, timeline) = h.finish()?;
    report.timeline = timeline;
    report.summary = total.summary();
    report.knee = report.steps.iter().rev().find(|s| s.pass).map(knee);
    let broke = report.steps.iter().find(|s| !s.pass);
    report.verdict = match (&report.knee, broke) {
        (Some(k), Some(b)) => format!(
            "{}; the next step ({} clients, {:.0} ev/s) broke the objective: {}",
            k.sentence,
            b.clients,
            b.rate,
            b.failed.join("; ")
        ),
        (Some(k), None) => format!(
            "{}; no step broke the objective (add larger steps)",
            k.sentence
        ),
        (None, Some(b)) => format!(
            "the first step already broke the objective: {}",
            b.failed.join("; ")
        ),
        (None, None) => "no step ran".into(),
    };
    if let Some(out) = &opts.out {
        let (j, hfile) = report.write(out)?;
        if !opts.quiet {
            eprintln!("wrote {} and {}", j.display(), hfile.display());
        }
    }
    Ok(report)
}

/// A phase list for the simple subcommands: ramp (not measured) then hold.
pub fn ramp_and_hold(clients: usize, ramp_s: f64, hold_s: f64) -> Vec<PhaseSpec> {
    vec![
        PhaseSpec {
            name: "ramp".into(),
            duration_s: ramp_s,
            clients: Some(clients),
            ramp: true,
            measure: false,
            ..PhaseSpec::default()
        },
        PhaseSpec {
            name: "hold".into(),
            duration_s: hold_s,
            clients: Some(clients),
            ..PhaseSpec::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencySummary;

    #[test]
    fn objective_reasons() {
        let obj = Objective::default();
        let mut s = Summary {
            clients_open: 100,
            delivered_ratio: Some(0.99),
            latency: LatencySummary {
                count: 10,
                p99_ms: 5.0,
                ..LatencySummary::default()
            },
            ..Summary::default()
        };
        assert!(evaluate(&obj, &s, 100, true).is_empty());
        s.violations = 1;
        s.latency.p99_ms = 500.0;
        s.delivered_ratio = Some(0.5);
        s.clients_open = 10;
        let why = evaluate(&obj, &s, 100, true);
        assert_eq!(why.len(), 4, "{why:?}");
        s.latency.count = 0;
        assert!(evaluate(&obj, &s, 100, true).contains(&"nothing delivered".to_owned()));
    }
}
