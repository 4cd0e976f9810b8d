//! Reports: the JSON document a run writes (environment header, summaries,
//! per-phase and per-step results, a timeline, latency histograms), the text
//! table printed at the end, and `merge`, which adds up the reports of
//! several loadgen processes run side by side (one process holds at most as
//! many sockets as its open-file limit).
//!
//! Plain data and formatting; the only I/O is reading and writing files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::stats::{
    LatencySummary, STALE_REASONS, Tally, from_buckets, percentile_curve, to_buckets,
};

/// Results over one window of time (a phase, a capacity step, a whole run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Seconds the window lasted.
    pub secs: f64,
    /// Connections the fleet aimed for at the end of the window.
    pub clients_target: u64,
    /// Connections open, averaged over the window (under churn some are
    /// always between a close and the next upgrade).
    pub clients_open: u64,
    pub connects: u64,
    pub opened: u64,
    pub connect_errors: u64,
    pub handshake_errors: u64,
    pub churned: u64,
    pub shed: u64,
    /// Connections the server closed, by close code.
    pub server_closes: BTreeMap<String, u64>,
    /// WebSocket messages received (every kind).
    pub messages: u64,
    pub deltas: u64,
    pub trades: u64,
    pub snapshots: u64,
    pub control: u64,
    pub bytes: u64,
    pub received_per_s: f64,
    /// Deltas and trades received per second.
    pub delivered_per_s: f64,
    /// Deltas and trades the feed sent × subscribers, per second (known when
    /// this process ran the feed).
    pub offered_per_s: Option<f64>,
    pub delivered_ratio: Option<f64>,
    pub feed_events_per_s: Option<f64>,
    /// Worst lag of the feed behind its schedule seen in the window, ms.
    pub feed_behind_ms: Option<f64>,
    pub stale: BTreeMap<String, u64>,
    pub resubscribes: u64,
    pub server_errors: u64,
    pub violations: u64,
    pub violations_by_kind: BTreeMap<String, u64>,
    pub samples: Vec<String>,
    pub latency: LatencySummary,
    /// The latency histogram, `(ns, count)` buckets (for `merge`).
    pub latency_buckets: Vec<(u64, u64)>,
    /// CPU used by loadgen's threads, in cores (CPU seconds / wall seconds).
    pub loadgen_cpu_cores: f64,
    /// CPU used by the engine, in cores (when known).
    pub server_cpu_cores: Option<f64>,
    /// Messages received per loadgen CPU second: loadgen's own cost.
    pub received_per_loadgen_core: Option<f64>,
    /// Deltas and trades delivered per engine CPU second.
    pub delivered_per_server_core: Option<f64>,
    /// Engine resident memory at the end of the window, KiB.
    pub server_rss_kib: Option<u64>,
}

/// Accumulates a window from interval samples (see `runner`).
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub tally: Tally,
    pub secs: f64,
    pub offered: Option<f64>,
    pub feed_events: Option<u64>,
    pub feed_behind_ns: Option<u64>,
    pub loadgen_cpu_s: f64,
    pub server_cpu_s: Option<f64>,
    pub clients_target: u64,
    /// Open connections at the last sample.
    pub clients_open: u64,
    /// Open connections × seconds, for the window's average (a sample sets
    /// it to `clients_open × secs`).
    pub open_secs: f64,
    pub server_rss_kib: Option<u64>,
}

fn add_opt<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, None) => a,
        (None, b) => b,
    }
}

fn max_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

impl Window {
    /// Adds an interval (already summed over threads).
    pub fn add(&mut self, iv: &Window) {
        self.tally.add(&iv.tally);
        self.secs += iv.secs;
        self.offered = add_opt(self.offered, iv.offered);
        self.feed_events = add_opt(self.feed_events, iv.feed_events);
        self.feed_behind_ns = max_opt(self.feed_behind_ns, iv.feed_behind_ns);
        self.loadgen_cpu_s += iv.loadgen_cpu_s;
        self.server_cpu_s = add_opt(self.server_cpu_s, iv.server_cpu_s);
        self.clients_target = iv.clients_target;
        self.clients_open = iv.clients_open;
        self.open_secs += iv.open_secs;
        self.server_rss_kib = iv.server_rss_kib.or(self.server_rss_kib);
    }

    pub fn summary(&self) -> Summary {
        let t = &self.tally;
        let secs = self.secs.max(1e-9);
        let per_s = |n: f64| finite(n / secs);
        let delivered = t.delivered() as f64;
        let lg_cores = finite(self.loadgen_cpu_s / secs);
        Summary {
            secs: self.secs,
            clients_target: self.clients_target,
            clients_open: if self.open_secs > 0.0 {
                (self.open_secs / secs).round() as u64
            } else {
                self.clients_open
            },
            connects: t.connects,
            opened: t.opened,
            connect_errors: t.connect_errors,
            handshake_errors: t.handshake_errors,
            churned: t.churned,
            shed: t.shed,
            server_closes: t
                .server_closes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            messages: t.messages,
            deltas: t.deltas,
            trades: t.trades,
            snapshots: t.snapshots,
            control: t.control,
            bytes: t.bytes,
            received_per_s: per_s(t.messages as f64),
            delivered_per_s: per_s(delivered),
            offered_per_s: self.offered.map(per_s),
            delivered_ratio: self
                .offered
                .filter(|&o| o > 0.0)
                .map(|o| finite(delivered / o)),
            feed_events_per_s: self.feed_events.map(|e| per_s(e as f64)),
            feed_behind_ms: self.feed_behind_ns.map(|n| n as f64 / 1e6),
            stale: STALE_REASONS
                .iter()
                .zip(t.stale)
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
            resubscribes: t.resubscribes,
            server_errors: t.server_errors,
            violations: t.violations_total(),
            violations_by_kind: t
                .violations
                .iter()
                .map(|(k, v)| (k.label().to_owned(), *v))
                .collect(),
            samples: t.samples.clone(),
            latency: LatencySummary::of(&t.latency),
            latency_buckets: to_buckets(&t.latency),
            loadgen_cpu_cores: lg_cores,
            server_cpu_cores: self.server_cpu_s.map(|c| finite(c / secs)),
            received_per_loadgen_core: (self.loadgen_cpu_s > 0.0)
                .then(|| finite(t.messages as f64 / self.loadgen_cpu_s)),
            delivered_per_server_core: self
                .server_cpu_s
                .filter(|&c| c > 0.0)
                .map(|c| finite(delivered / c)),
            server_rss_kib: self.server_rss_kib,
        }
    }
}

/// One phase of a scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub start_s: f64,
    pub measured: bool,
    pub clients: u64,
    pub rate: Option<f64>,
    pub churn_per_sec: f64,
    pub slow_fraction: f64,
    pub summary: Summary,
}

/// One step of `capacity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub index: usize,
    pub clients: u64,
    /// Feed events per second.
    pub rate: f64,
    pub pass: bool,
    /// Why the step broke the objective (empty when it passed).
    pub failed: Vec<String>,
    /// Engine RSS growth per open connection since before any client, KiB.
    pub server_kib_per_client: Option<f64>,
    pub summary: Summary,
}

/// The highest passing step of `capacity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Knee {
    pub clients: u64,
    pub rate: f64,
    pub delivered_per_s: f64,
    pub p99_ms: f64,
    pub sentence: String,
}

/// One node of a `cluster` run: its engine and the fleet that loaded it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// `origin`, `edge-1`, `edge-2`.
    pub name: String,
    /// `origin` (takes the feed, publishes to NATS) or `edge` (follows
    /// through NATS).
    pub role: String,
    /// The engine's PID and WebSocket address during the run.
    pub pid: u32,
    pub ws: String,
    /// The measured window of this node's fleet: delivered rate, latency
    /// (from the feed's scheduled send time), `server_cpu_cores` = this
    /// engine's CPU, `loadgen_cpu_cores` = this fleet's client threads.
    /// `violations` (and their samples) and the connection counters
    /// (`connects`, `opened`, errors, `server_closes`) count the whole run:
    /// opening, warm-up and shutdown too.
    pub summary: Summary,
    /// This node's latency percentile minus the origin's (edges only): what
    /// the hop through NATS adds, ms.
    pub hop_added_p50_ms: Option<f64>,
    pub hop_added_p90_ms: Option<f64>,
    pub hop_added_p99_ms: Option<f64>,
}

impl NodeReport {
    /// Sets the hop figures of an edge against the origin's summary.
    pub fn set_hop(&mut self, origin: &Summary) {
        let (a, o) = (&self.summary.latency, &origin.latency);
        let known = self.role == "edge" && a.count > 0 && o.count > 0;
        self.hop_added_p50_ms = known.then_some(a.p50_ms - o.p50_ms);
        self.hop_added_p90_ms = known.then_some(a.p90_ms - o.p90_ms);
        self.hop_added_p99_ms = known.then_some(a.p99_ms - o.p99_ms);
    }

    /// "hop added p50 +0.21 ms p99 +0.80 ms" (edges), else "".
    pub fn hop_text(&self) -> String {
        match (self.hop_added_p50_ms, self.hop_added_p99_ms) {
            (Some(p50), Some(p99)) => {
                format!("hop added p50 {p50:+.3} ms p99 {p99:+.3} ms")
            }
            _ => String::new(),
        }
    }
}

/// What a `cluster` run set up, beside its nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The NATS server loadgen started (`nats://127.0.0.1:PORT`).
    pub nats_url: String,
    /// `nats-server --version`.
    pub nats_version: String,
    /// Its CPU over the measured window, cores.
    pub nats_cpu_cores: Option<f64>,
    /// The engine command and the workers of each engine.
    pub tickwire: String,
    pub workers: usize,
    /// Feed events (deltas + trades) per second into the origin.
    pub rate: f64,
    pub symbols: usize,
    pub clients_per_node: usize,
    /// Sum of the three engines' CPU over the measured window, cores.
    pub engines_cpu_cores: f64,
}

/// One timeline sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t_s: f64,
    pub clients_open: u64,
    pub received_per_s: f64,
    pub delivered_per_s: f64,
    pub offered_per_s: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub violations: u64,
    pub loadgen_cpu_cores: f64,
    pub server_cpu_cores: Option<f64>,
}

/// A whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// `run`, `clients`, `feed`, `capacity`, `cluster` or `merged`.
    pub kind: String,
    /// One header per process (several after `merge`).
    pub env: Vec<Env>,
    /// The scenario as run (TOML), when there was one.
    pub scenario: Option<String>,
    /// Over the measured phases (or steps).
    pub summary: Summary,
    pub phases: Vec<PhaseReport>,
    pub steps: Vec<StepReport>,
    pub knee: Option<Knee>,
    /// `cluster`: one entry per node, origin first.
    #[serde(default)]
    pub nodes: Vec<NodeReport>,
    #[serde(default)]
    pub cluster: Option<ClusterReport>,
    pub timeline: Vec<Point>,
    /// Objective and what it concluded, in words.
    pub verdict: String,
}

impl Report {
    pub fn new(kind: &str, env: Env) -> Report {
        Report {
            tool: "tickwire-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: kind.into(),
            env: vec![env],
            ..Report::default()
        }
    }

    /// Writes `<prefix>.json` and `<prefix>.html`; returns their paths.
    pub fn write(&self, prefix: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let json = prefix.with_extension("json");
        let html = prefix.with_extension("html");
        let text = sonic_rs::to_string_pretty(self).context("serialize the report")?;
        std::fs::write(&json, text).with_context(|| format!("write {}", json.display()))?;
        std::fs::write(&html, crate::chart::html_report(self))
            .with_context(|| format!("write {}", html.display()))?;
        Ok((json, html))
    }

    pub fn read(path: &Path) -> anyhow::Result<Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        sonic_rs::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// The percentile curve of the summary's latency, for charts.
    pub fn latency_curve(s: &Summary) -> Vec<(f64, f64)> {
        percentile_curve(&from_buckets(&s.latency_buckets))
    }

    /// The final table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for e in &self.env {
            let _ = writeln!(out, "# {}", e.one_line());
            let _ = writeln!(out, "# command: {}", e.command.join(" "));
        }
        let header = format!(
            "{:<14} {:>6} {:>8} {:>11} {:>11} {:>7} {:>7} {:>7} {:>8} {:>7} {:>5} {:>6} {:>6} {:>7}",
            "window",
            "secs",
            "clients",
            "offered/s",
            "deliv/s",
            "deliv%",
            "p50ms",
            "p99ms",
            "p99.9ms",
            "maxms",
            "viol",
            "stale",
            "lgCPU",
            "srvCPU"
        );
        let _ = writeln!(out, "{header}");
        let row = |out: &mut String, name: &str, s: &Summary| {
            let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
            let _ = writeln!(
                out,
                "{:<14} {:>6.1} {:>8} {:>11} {:>11.0} {:>7} {:>7.2} {:>7.2} {:>8.2} {:>7.1} {:>5} {:>6} {:>6.2} {:>7}",
                truncate(name, 14),
                s.secs,
                s.clients_open,
                opt(s.offered_per_s, &|v| format!("{v:.0}")),
                s.delivered_per_s,
                opt(s.delivered_ratio, &|v| format!("{:.1}", v * 100.0)),
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.p999_ms,
                s.latency.max_ms,
                s.violations,
                s.stale.values().sum::<u64>(),
                s.loadgen_cpu_cores,
                opt(s.server_cpu_cores, &|v| format!("{v:.2}")),
            );
        };
        for p in &self.phases {
            let name = if p.measured {
                p.name.clone()
            } else {
                format!("({})", p.name)
            };
            row(&mut out, &name, &p.summary);
        }
        for st in &self.steps {
            let name = format!(
                "step {} {}",
                st.index + 1,
                if st.pass { "ok" } else { "BREAK" }
            );
            row(&mut out, &name, &st.summary);
        }
        for n in &self.nodes {
            row(&mut out, &n.name, &n.summary);
        }
        row(&mut out, "TOTAL", &self.summary);
        for n in self.nodes.iter().filter(|n| n.hop_added_p50_ms.is_some()) {
            let _ = writeln!(out, "{}: {}", n.name, n.hop_text());
        }
        if let Some(c) = &self.cluster {
            let _ = writeln!(
                out,
                "cluster: engines {:.2} cores ({}), nats-server {} cores, loadgen {:.2} cores; {} ({})",
                c.engines_cpu_cores,
                self.nodes
                    .iter()
                    .map(|n| format!(
                        "{} {}",
                        n.name,
                        n.summary
                            .server_cpu_cores
                            .map_or("-".into(), |c| format!("{c:.2}"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.nats_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
                self.summary.loadgen_cpu_cores,
                c.nats_url,
                c.nats_version
            );
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "connections: {} started, {} upgraded, {} connect errors, {} handshake errors, {} churned, {} shed, server closes {:?}",
            s.connects,
            s.opened,
            s.connect_errors,
            s.handshake_errors,
            s.churned,
            s.shed,
            s.server_closes
        );
        let _ = writeln!(
            out,
            "received: {} messages ({} deltas, {} trades, {} snapshots, {} control), {:.1} MB; stale {:?}; resubscribes {}; server errors {}",
            s.messages,
            s.deltas,
            s.trades,
            s.snapshots,
            s.control,
            s.bytes as f64 / 1e6,
            s.stale,
            s.resubscribes,
            s.server_errors
        );
        if let Some(r) = s.received_per_loadgen_core {
            let _ = writeln!(
                out,
                "loadgen cost: {:.2} cores for {:.0} msgs/s = {:.2} M msgs/s per loadgen core",
                s.loadgen_cpu_cores,
                s.received_per_s,
                r / 1e6
            );
        }
        if let Some(r) = s.delivered_per_server_core {
            let _ = writeln!(
                out,
                "engine cost: {:.2} cores = {:.2} M delivered msgs/s per engine core",
                s.server_cpu_cores.unwrap_or(0.0),
                r / 1e6
            );
        }
        let _ = writeln!(
            out,
            "violations: {} {:?}",
            s.violations, s.violations_by_kind
        );
        for sample in &s.samples {
            let _ = writeln!(out, "  {sample}");
        }
        if let Some(k) = &self.knee {
            let _ = writeln!(out, "knee: {}", k.sentence);
        }
        if !self.verdict.is_empty() {
            let _ = writeln!(out, "verdict: {}", self.verdict);
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Adds up summaries of windows that ran at the same time in different
/// processes: counts and rates add, latency histograms merge, CPU adds.
pub fn merge_summaries(parts: &[&Summary]) -> Summary {
    let mut out = Summary::default();
    let mut hist = crate::stats::latency_histogram();
    for s in parts {
        out.secs = out.secs.max(s.secs);
        out.clients_target += s.clients_target;
        out.clients_open += s.clients_open;
        out.connects += s.connects;
        out.opened += s.opened;
        out.connect_errors += s.connect_errors;
        out.handshake_errors += s.handshake_errors;
        out.churned += s.churned;
        out.shed += s.shed;
        for (k, v) in &s.server_closes {
            *out.server_closes.entry(k.clone()).or_default() += v;
        }
        out.messages += s.messages;
        out.deltas += s.deltas;
        out.trades += s.trades;
        out.snapshots += s.snapshots;
        out.control += s.control;
        out.bytes += s.bytes;
        out.received_per_s += s.received_per_s;
        out.delivered_per_s += s.delivered_per_s;
        out.offered_per_s = add_opt(out.offered_per_s, s.offered_per_s);
        out.feed_events_per_s = add_opt(out.feed_events_per_s, s.feed_events_per_s);
        out.feed_behind_ms = max_opt(out.feed_behind_ms, s.feed_behind_ms);
        for (k, v) in &s.stale {
            *out.stale.entry(k.clone()).or_default() += v;
        }
        out.resubscribes += s.resubscribes;
        out.server_errors += s.server_errors;
        out.violations += s.violations;
        for (k, v) in &s.violations_by_kind {
            *out.violations_by_kind.entry(k.clone()).or_default() += v;
        }
        for x in &s.samples {
            if out.samples.len() < crate::stats::MAX_SAMPLES {
                out.samples.push(x.clone());
            }
        }
        let _ = hist.add(from_buckets(&s.latency_buckets));
        out.loadgen_cpu_cores += s.loadgen_cpu_cores;
        // The engine is shared by every process: its figures are not added.
        out.server_cpu_cores = max_opt(out.server_cpu_cores, s.server_cpu_cores);
        out.server_rss_kib = max_opt(out.server_rss_kib, s.server_rss_kib);
    }
    // Recomputed from the sums.
    out.delivered_ratio = out
        .offered_per_s
        .filter(|&o| o > 0.0)
        .map(|o| finite(out.delivered_per_s / o));
    out.received_per_loadgen_core =
        (out.loadgen_cpu_cores > 0.0).then(|| finite(out.received_per_s / out.loadgen_cpu_cores));
    out.delivered_per_server_core = out
        .server_cpu_cores
        .filter(|&c| c > 0.0)
        .map(|c| finite(out.delivered_per_s / c));
    out.latency = LatencySummary::of(&hist);
    out.latency_buckets = to_buckets(&hist);
    out
}

/// Merges reports of processes that ran side by side against one engine.
/// Phases and steps are matched by position, timeline points by whole second.
pub fn merge(reports: &[Report]) -> Report {
    let mut out = Report {
        tool: "tickwire-loadgen".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        kind: "merged".into(),
        ..Report::default()
    };
    for r in reports {
        out.env.extend(r.env.iter().cloned());
    }
    out.scenario = reports.iter().find_map(|r| r.scenario.clone());
    out.summary = merge_summaries(&reports.iter().map(|r| &r.summary).collect::<Vec<_>>());
    let phases = reports.iter().map(|r| r.phases.len()).max().unwrap_or(0);
    for i in 0..phases {
        let parts: Vec<&PhaseReport> = reports.iter().filter_map(|r| r.phases.get(i)).collect();
        let first = parts[0];
        out.phases.push(PhaseReport {
            clients: parts.iter().map(|p| p.clients).sum(),
            summary: merge_summaries(&parts.iter().map(|p| &p.summary).collect::<Vec<_>>()),
            ..first.clone()
        });
    }
    let steps = reports.iter().map(|r| r.steps.len()).max().unwrap_or(0);
    for i in 0..steps {
        let parts: Vec<&StepReport> = reports.iter().filter_map(|r| r.steps.get(i)).collect();
        let mut failed: Vec<String> = parts.iter().flat_map(|p| p.failed.clone()).collect();
        failed.dedup();
        out.steps.push(StepReport {
            index: i,
            clients: parts.iter().map(|p| p.clients).sum(),
            rate: parts[0].rate,
            pass: parts.iter().all(|p| p.pass),
            failed,
            server_kib_per_client: None,
            summary: merge_summaries(&parts.iter().map(|p| &p.summary).collect::<Vec<_>>()),
        });
    }
    if let Some(k) = out.steps.iter().rev().find(|s| s.pass) {
        out.knee = Some(knee(k));
    }
    let nodes = reports.iter().map(|r| r.nodes.len()).max().unwrap_or(0);
    for i in 0..nodes {
        let parts: Vec<&NodeReport> = reports.iter().filter_map(|r| r.nodes.get(i)).collect();
        out.nodes.push(NodeReport {
            summary: merge_summaries(&parts.iter().map(|p| &p.summary).collect::<Vec<_>>()),
            ..parts[0].clone()
        });
    }
    if let Some(origin) = out.nodes.first().map(|n| n.summary.clone()) {
        for n in &mut out.nodes {
            n.set_hop(&origin);
        }
    }
    let mut by_second: BTreeMap<i64, Point> = BTreeMap::new();
    for r in reports {
        for p in &r.timeline {
            let e = by_second.entry(p.t_s.round() as i64).or_default();
            e.t_s = p.t_s.round();
            e.clients_open += p.clients_open;
            e.received_per_s += p.received_per_s;
            e.delivered_per_s += p.delivered_per_s;
            e.offered_per_s = add_opt(e.offered_per_s, p.offered_per_s);
            e.p50_ms = e.p50_ms.max(p.p50_ms);
            e.p99_ms = e.p99_ms.max(p.p99_ms);
            e.violations += p.violations;
            e.loadgen_cpu_cores += p.loadgen_cpu_cores;
            e.server_cpu_cores = max_opt(e.server_cpu_cores, p.server_cpu_cores);
        }
    }
    out.timeline = by_second.into_values().collect();
    out.verdict = format!(
        "merged {} reports: {} violations{}",
        reports.len(),
        out.summary.violations,
        if reports.iter().all(|r| r.timeline.is_empty()) {
            ""
        } else {
            " (timeline p50/p99 are the worst process's, not merged percentiles)"
        }
    );
    out
}

/// The knee sentence of a passing step.
pub fn knee(step: &StepReport) -> Knee {
    let s = &step.summary;
    Knee {
        clients: s.clients_open,
        rate: step.rate,
        delivered_per_s: s.delivered_per_s,
        p99_ms: s.latency.p99_ms,
        sentence: format!(
            "this machine carries {} clients at {:.0} msgs/s delivered ({:.0} feed events/s) with p99 {:.2} ms",
            s.clients_open, s.delivered_per_s, step.rate, s.latency.p99_ms
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(deltas: u64, lat_ns: u64, cpu: f64) -> Window {
        let mut w = Window {
            secs: 2.0,
            offered: Some(deltas as f64 * 1.25),
            loadgen_cpu_s: cpu,
            server_cpu_s: Some(1.0),
            clients_open: 10,
            clients_target: 10,
            ..Window::default()
        };
        w.tally.deltas = deltas;
        w.tally.messages = deltas;
        for _ in 0..deltas {
            w.tally.latency_ns(lat_ns);
        }
        w
    }

    #[test]
    fn summary_rates_and_costs() {
        let s = window(1000, 2_000_000, 0.5).summary();
        assert_eq!(s.delivered_per_s, 500.0);
        assert_eq!(s.offered_per_s, Some(625.0));
        assert_eq!(s.delivered_ratio, Some(0.8));
        assert_eq!(s.received_per_loadgen_core, Some(2000.0));
        assert_eq!(s.loadgen_cpu_cores, 0.25);
        assert!((s.latency.p99_ms - 2.0).abs() < 0.01);
    }

    #[test]
    fn merged_reports_add_counts_and_merge_histograms() {
        let mut a = Report::new("clients", Env::default());
        a.summary = window(1000, 1_000_000, 0.5).summary();
        a.phases.push(PhaseReport {
            name: "hold".into(),
            clients: 10,
            summary: a.summary.clone(),
            ..PhaseReport::default()
        });
        a.timeline.push(Point {
            t_s: 1.02,
            delivered_per_s: 5.0,
            ..Point::default()
        });
        let mut b = a.clone();
        b.summary = window(3000, 9_000_000, 0.5).summary();
        b.timeline[0].t_s = 0.98;
        let m = merge(&[a, b]);
        assert_eq!(m.env.len(), 2);
        assert_eq!(m.summary.deltas, 4000);
        assert_eq!(m.summary.clients_open, 20);
        assert_eq!(m.summary.delivered_per_s, 2000.0);
        assert_eq!(m.summary.latency.count, 4000);
        // 3/4 of samples are at 9 ms: the median moves there.
        assert!((m.summary.latency.p50_ms - 9.0).abs() < 0.01);
        assert_eq!(
            m.summary.server_cpu_cores,
            Some(0.5),
            "the engine is not added"
        );
        assert_eq!(m.phases[0].clients, 20);
        assert_eq!(m.timeline.len(), 1);
        assert_eq!(m.timeline[0].delivered_per_s, 10.0);
        // JSON round trip.
        let text = sonic_rs::to_string(&m).unwrap();
        let back: Report = sonic_rs::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert!(m.table().contains("TOTAL"));
    }

    #[test]
    fn cluster_nodes_carry_hop_figures_through_json_table_and_merge() {
        let node = |name: &str, role: &str, lat_ns: u64| NodeReport {
            name: name.into(),
            role: role.into(),
            pid: 7,
            ws: "127.0.0.1:1".into(),
            summary: window(1000, lat_ns, 0.1).summary(),
            ..NodeReport::default()
        };
        let mut r = Report::new("cluster", Env::default());
        r.nodes = vec![
            node("origin", "origin", 1_000_000),
            node("edge-1", "edge", 1_500_000),
        ];
        let origin = r.nodes[0].summary.clone();
        for n in &mut r.nodes {
            n.set_hop(&origin);
        }
        assert_eq!(r.nodes[0].hop_added_p50_ms, None, "the origin has no hop");
        let hop = r.nodes[1].hop_added_p50_ms.unwrap();
        assert!((hop - 0.5).abs() < 0.01, "{hop}");
        r.cluster = Some(ClusterReport {
            nats_url: "nats://127.0.0.1:4222".into(),
            ..ClusterReport::default()
        });
        let table = r.table();
        assert!(table.contains("edge-1: hop added p50 +0.500 ms"), "{table}");
        assert!(table.contains("nats://127.0.0.1:4222"), "{table}");
        let text = sonic_rs::to_string(&r).unwrap();
        let back: Report = sonic_rs::from_str(&text).unwrap();
        assert_eq!(back, r);
        let m = merge(&[r.clone(), r]);
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.nodes[1].summary.deltas, 2000);
        assert!((m.nodes[1].hop_added_p50_ms.unwrap() - 0.5).abs() < 0.01);
        // Reports written before nodes existed still parse.
        let old: Report = sonic_rs::from_str(
            &text
                .replace(r#""nodes":"#, r#""unused_nodes":"#)
                .replace(r#""cluster":"#, r#""unused_cluster":"#),
        )
        .unwrap();
        assert!(old.nodes.is_empty() && old.cluster.is_none());
    }
}
