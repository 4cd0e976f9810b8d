//! `tickwire-loadgen`: the capacity-planning harness (see the library doc).
//!
//! - `feed`: the synthetic market into an engine's ingest at a rate.
//! - `clients`: a fleet of verifying WebSocket clients against an engine.
//! - `run`: a TOML scenario (engine, feed, clients, phases).
//! - `capacity`: steps load up until the objective breaks; reports the knee.
//! - `merge`: adds up the JSON reports of processes run side by side.
//! - `fanout`: the purpose-built one-symbol fan-out benchmark.
//! - `cluster`: nats-server, one origin and two edges on this machine, the
//!   same verifying fleet on each node at once; what the NATS hop adds.
//! - `ceiling`: the kernel's floor cost of one loopback `send()` over many
//!   sockets (no engine): the best any fan-out server can do here.

mod ceiling;
mod cluster;
mod fanout;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tickwire_loadgen::report::{Report, merge};
use tickwire_loadgen::runner::{self, RunOptions, ramp_and_hold};
use tickwire_loadgen::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "tickwire-loadgen",
    version,
    about = "Load generator and capacity-planning harness for tickwire"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N clients subscribed to one symbol; a feed at a fixed rate; report
    /// delivered messages/s, latency percentiles, CPU and server memory.
    Fanout(fanout::Args),
    /// Send the synthetic market to an engine's ingest at a target rate.
    Feed(FeedArgs),
    /// Hold a fleet of verifying WebSocket clients against an engine.
    Clients(ClientsArgs),
    /// Run a TOML scenario: engine, feed, clients, phases.
    Run(RunArgs),
    /// Step load up until the objective breaks; report the knee.
    Capacity(CapacityArgs),
    /// Merge the JSON reports of loadgen processes run side by side.
    Merge(MergeArgs),
    /// Measure the kernel's floor cost of one TCP send() on loopback when one
    /// core writes round-robin to many sockets; report sends/s and pass times.
    Ceiling(ceiling::Args),
    /// Start nats-server, one origin and two edges (tickwire serve --publish /
    /// --backplane) on loopback, load every node with the same verifying
    /// fleet at once; report delivered msgs/s, latency, violations and CPU per
    /// node, and what the NATS hop adds to latency.
    Cluster(cluster::Args),
    /// The receiving end of `ceiling`, which starts it itself.
    #[command(hide = true)]
    CeilingReceiver(ceiling::ReceiverArgs),
}

#[derive(Args, Debug)]
struct Output {
    /// Write PREFIX.json and PREFIX.html (report with charts).
    #[arg(long, value_name = "PREFIX")]
    out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

impl Output {
    fn options(&self) -> RunOptions {
        RunOptions {
            out: self.out.clone(),
            quiet: self.quiet,
        }
    }
}

#[derive(Args, Debug)]
struct FeedArgs {
    /// The engine's ingest address (protobuf, or JSON lines with --json).
    #[arg(long)]
    ingest: String,
    /// Send JSON lines instead of length-delimited protobuf.
    #[arg(long)]
    json: bool,
    /// Events (deltas + trades) per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Symbols (BTC-USD, ETH-USD, … then SYN-010, …).
    #[arg(long, default_value_t = 20)]
    symbols: usize,
    /// Zipf exponent of activity across symbols (0: uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Fraction of events that are trades.
    #[arg(long, default_value_t = 0.1)]
    trade_ratio: f64,
    /// Book depth, levels per side.
    #[arg(long, default_value_t = 20)]
    depth: usize,
    /// Most level updates per delta.
    #[arg(long, default_value_t = 4)]
    max_updates: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Hello token, if the engine requires one.
    #[arg(long)]
    token: Option<String>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args, Debug)]
struct ClientsArgs {
    /// The engine's WebSocket address.
    #[arg(long)]
    ws: String,
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Client threads (mio loops).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Symbols per client, drawn by Zipf popularity from GET /symbols.
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
    /// Fraction of clients reading slowly.
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// Read budget of a slow client (bytes/s).
    #[arg(long, default_value_t = 65536)]
    slow_read_bps: u64,
    /// Connections closed and reopened per second.
    #[arg(long, default_value_t = 0.0)]
    churn_per_sec: f64,
    /// New connections per second.
    #[arg(long, default_value_t = 5000)]
    connect_rate: u64,
    /// Seconds to ramp up (not measured).
    #[arg(long, default_value_t = 5.0)]
    ramp: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The engine's pid, to report its CPU and memory beside loadgen's.
    #[arg(long)]
    server_pid: Option<u32>,
    /// p99 bound of the objective (ms).
    #[arg(long, default_value_t = 100.0)]
    p99_ms: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    output: Output,
}

#[derive(Args, Debug)]
struct EngineOverrides {
    /// A running engine's WebSocket address (overrides the scenario).
    #[arg(long)]
    ws: Option<String>,
    /// Its protobuf ingest address.
    #[arg(long)]
    ingest: Option<String>,
    /// Its JSON-lines ingest address.
    #[arg(long)]
    ingest_json: Option<String>,
    /// Its pid (CPU and memory reported beside loadgen's).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start the engine with this command (split on spaces), e.g.
    /// "taskset -c 0 target/release/tickwire"; `serve` and port-0 listeners are appended.
    #[arg(long)]
    spawn: Option<String>,
    /// Extra arguments for the spawned engine (split on spaces), e.g. "--workers 1".
    #[arg(long, allow_hyphen_values = true)]
    spawn_args: Option<String>,
    /// Run the engine in this process.
    #[arg(long)]
    in_process: bool,
    /// Workers of an in-process engine.
    #[arg(long)]
    workers: Option<usize>,
    /// Client threads (overrides clients.threads).
    #[arg(long)]
    threads: Option<usize>,
}

impl EngineOverrides {
    fn apply(&self, sc: &mut Scenario) {
        let e = &mut sc.engine;
        if self.ws.is_some() || self.spawn.is_some() || self.in_process {
            e.ws = None;
            e.spawn.clear();
            e.in_process = false;
        }
        if let Some(ws) = &self.ws {
            e.ws = Some(ws.clone());
        }
        if let Some(a) = &self.ingest {
            e.ingest = Some(a.clone());
        }
        if let Some(a) = &self.ingest_json {
            e.ingest_json = Some(a.clone());
        }
        if let Some(p) = self.server_pid {
            e.server_pid = Some(p);
        }
        if let Some(cmd) = &self.spawn {
            e.spawn = cmd.split_whitespace().map(str::to_owned).collect();
        }
        if let Some(a) = &self.spawn_args {
            e.spawn_args = a.split_whitespace().map(str::to_owned).collect();
        }
        if self.in_process {
            e.in_process = true;
        }
        if let Some(w) = self.workers {
            e.workers = w;
        }
        if let Some(t) = self.threads {
            sc.clients.threads = t;
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The scenario file (TOML; see loadgen/scenarios/).
    scenario: PathBuf,
    #[command(flatten)]
    engine: EngineOverrides,
    #[command(flatten)]
    output: Output,
}

#[derive(Args, Debug)]
struct CapacityArgs {
    /// The scenario file (TOML): engine, feed, clients, objective, capacity.
    scenario: PathBuf,
    /// Clients per step, comma-separated (overrides capacity.clients).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<usize>,
    /// Feed events/s per step, comma-separated (overrides capacity.rates).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// p99 bound of the objective (ms).
    #[arg(long)]
    p99_ms: Option<f64>,
    /// Seconds measured per step.
    #[arg(long)]
    measure_s: Option<f64>,
    #[command(flatten)]
    engine: EngineOverrides,
    #[command(flatten)]
    output: Output,
}

#[derive(Args, Debug)]
struct MergeArgs {
    /// JSON reports to merge.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Write PREFIX.json and PREFIX.html.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
}

fn load(path: &PathBuf) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Scenario::parse(&text).with_context(|| format!("parse {}", path.display()))
}

/// Prints the table; exit status 2 when the stream had violations.
fn finish(report: &Report) -> anyhow::Result<()> {
    print!("{}", report.table());
    if report.summary.violations > 0 {
        eprintln!("{} violations", report.summary.violations);
        std::process::exit(2);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fanout(args) => fanout::run(args),
        Command::Ceiling(args) => ceiling::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::CeilingReceiver(args) => ceiling::run_receiver(args),
        Command::Feed(a) => {
            let mut sc = Scenario::default();
            sc.engine.ingest = Some(a.ingest.clone());
            sc.engine.ingest_json = Some(a.ingest.clone());
            sc.engine.ws = Some(a.ingest.clone());
            sc.feed.encoding = if a.json { "json" } else { "proto" }.into();
            sc.feed.rate = a.rate;
            sc.feed.symbols = a.symbols;
            sc.feed.zipf = a.zipf;
            sc.feed.trade_ratio = a.trade_ratio;
            sc.feed.depth = a.depth;
            sc.feed.max_updates = a.max_updates;
            sc.feed.seed = a.seed;
            sc.feed.token = a.token.clone();
            sc.phase = vec![tickwire_loadgen::scenario::PhaseSpec {
                name: "feed".into(),
                duration_s: a.duration,
                ..Default::default()
            }];
            let r = runner::run(&sc, "feed", &a.output.options())?;
            finish(&r)
        }
        Command::Clients(a) => {
            let mut sc = Scenario::default();
            sc.engine.ws = Some(a.ws.clone());
            sc.engine.server_pid = a.server_pid;
            sc.feed.enabled = false;
            sc.clients.count = a.count;
            sc.clients.threads = a.threads;
            sc.clients.source_ips = a.source_ips;
            sc.clients.symbols_per_client = a.symbols_per_client;
            sc.clients.popularity_zipf = a.popularity_zipf;
            sc.clients.trades_fraction = a.trades_fraction;
            sc.clients.json_fraction = a.json_fraction;
            sc.clients.slow_fraction = a.slow_fraction;
            sc.clients.slow_read_bytes_per_sec = a.slow_read_bps;
            sc.clients.churn_per_sec = a.churn_per_sec;
            sc.clients.connect_rate = a.connect_rate;
            sc.clients.seed = a.seed;
            sc.objective.p99_ms = a.p99_ms;
            sc.phase = ramp_and_hold(a.count, a.ramp, a.duration);
            let r = runner::run(&sc, "clients", &a.output.options())?;
            finish(&r)
        }
        Command::Run(a) => {
            let mut sc = load(&a.scenario)?;
            a.engine.apply(&mut sc);
            let r = runner::run(&sc, "run", &a.output.options())?;
            finish(&r)
        }
        Command::Capacity(a) => {
            let mut sc = load(&a.scenario)?;
            a.engine.apply(&mut sc);
            if !a.clients.is_empty() {
                sc.capacity.clients = a.clients.clone();
            }
            if !a.rates.is_empty() {
                sc.capacity.rates = a.rates.clone();
            }
            if let Some(p) = a.p99_ms {
                sc.objective.p99_ms = p;
            }
            if let Some(m) = a.measure_s {
                sc.capacity.measure_s = m;
            }
            let r = runner::capacity(&sc, &a.output.options())?;
            finish(&r)
        }
        Command::Merge(a) => {
            let reports = a
                .inputs
                .iter()
                .map(|p| Report::read(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut merged = merge(&reports);
            merged.verdict = format!(
                "{} (by: {})",
                merged.verdict,
                std::env::args().collect::<Vec<_>>().join(" ")
            );
            let (j, h) = merged.write(&a.out)?;
            eprintln!("wrote {} and {}", j.display(), h.display());
            finish(&merged)
        }
    }
}
