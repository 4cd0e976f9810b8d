//! Scenario files (TOML): which engine, what feed, what clients, and the
//! phases of a run (ramp up, hold, churn, slow readers) or the steps of a
//! capacity search, with the objective a step must meet.
//!
//! Every field has a default, so a scenario states only what it changes;
//! unknown keys are errors (a typo must not silently run another test).
//! See `loadgen/scenarios/*.toml` for commented examples.

use serde::{Deserialize, Serialize};

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub name: String,
    pub engine: EngineSpec,
    pub feed: FeedSpec,
    pub clients: ClientsSpec,
    /// Phases of `run`, in order. None given: ramp 5 s, hold 10 s.
    pub phase: Vec<PhaseSpec>,
    pub objective: Objective,
    pub capacity: CapacitySpec,
    /// Seconds between timeline samples (and progress lines).
    pub sample_interval_s: f64,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            name: String::new(),
            engine: EngineSpec::default(),
            feed: FeedSpec::default(),
            clients: ClientsSpec::default(),
            phase: Vec::new(),
            objective: Objective::default(),
            capacity: CapacitySpec::default(),
            sample_interval_s: 1.0,
        }
    }
}

/// Which engine to load. Exactly one of: `ws` (+ `ingest`) of a running
/// engine, `spawn` (a command that runs the `tickwire` binary), or
/// `in_process` (the engine library in this process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSpec {
    /// WebSocket address of a running engine.
    pub ws: Option<String>,
    /// Its protobuf ingest address (for the feed).
    pub ingest: Option<String>,
    /// Its JSON-lines ingest address (for a JSON feed).
    pub ingest_json: Option<String>,
    /// Its process id, to report its CPU and memory beside loadgen's.
    pub server_pid: Option<u32>,
    /// Command starting the `tickwire` binary, e.g. `["taskset", "-c", "0",
    /// "target/release/tickwire"]`; loadgen appends `serve` with port-0
    /// listeners and `spawn_args`, reads the addresses it prints, and stops
    /// it at the end.
    pub spawn: Vec<String>,
    pub spawn_args: Vec<String>,
    /// Run the engine inside this process (its threads' CPU is told apart
    /// by name).
    pub in_process: bool,
    /// Workers of an in-process engine.
    pub workers: usize,
    /// Pin an in-process engine's workers to cores.
    pub pin: bool,
}

impl Default for EngineSpec {
    fn default() -> EngineSpec {
        EngineSpec {
            ws: None,
            ingest: None,
            ingest_json: None,
            server_pid: None,
            spawn: Vec::new(),
            spawn_args: Vec::new(),
            in_process: false,
            workers: 1,
            pin: false,
        }
    }
}

/// The synthetic feed (`tickwire::book::synth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSpec {
    /// Run a feed (off: the clients subscribe to what the engine has).
    pub enabled: bool,
    /// `proto` or `json`.
    pub encoding: String,
    pub symbols: usize,
    /// Zipf exponent of activity across symbols.
    pub zipf: f64,
    /// Fraction of events that are trades.
    pub trade_ratio: f64,
    /// Levels per side.
    pub depth: usize,
    /// Most level updates per delta (1 gives the smallest deltas).
    pub max_updates: usize,
    /// Events (deltas + trades) per second.
    pub rate: f64,
    pub seed: u64,
    /// Hello token, if the engine requires one.
    pub token: Option<String>,
}

impl Default for FeedSpec {
    fn default() -> FeedSpec {
        FeedSpec {
            enabled: true,
            encoding: "proto".into(),
            symbols: 20,
            zipf: 1.1,
            trade_ratio: 0.1,
            depth: 20,
            max_updates: 4,
            rate: 2_000.0,
            seed: 1,
            token: None,
        }
    }
}

/// The client fleet (see `fleet::FleetConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsSpec {
    /// Connections to hold (the first phase starts from 0 and ramps to it
    /// unless it says otherwise).
    pub count: usize,
    pub threads: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N (loopback engines).
    pub source_ips: u8,
    pub symbols_per_client: usize,
    pub popularity_zipf: f64,
    pub trades_fraction: f64,
    pub json_fraction: f64,
    pub slow_fraction: f64,
    pub slow_read_bytes_per_sec: u64,
    /// Receive buffer of clients that may read slowly (bytes; 0: default).
    pub slow_recv_buffer: usize,
    pub churn_per_sec: f64,
    pub connect_rate: u64,
    pub handshake_timeout_ms: u64,
    pub seed: u64,
}

impl Default for ClientsSpec {
    fn default() -> ClientsSpec {
        ClientsSpec {
            count: 100,
            threads: 1,
            source_ips: 8,
            symbols_per_client: 3,
            popularity_zipf: 1.0,
            trades_fraction: 0.5,
            json_fraction: 0.1,
            slow_fraction: 0.0,
            slow_read_bytes_per_sec: 64 * 1024,
            slow_recv_buffer: 8 * 1024,
            churn_per_sec: 0.0,
            connect_rate: 5_000,
            handshake_timeout_ms: 10_000,
            seed: 1,
        }
    }
}

/// One phase: it sets what it names; the rest carries over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhaseSpec {
    pub name: String,
    pub duration_s: f64,
    /// Connections to hold during (or, with `ramp`, by the end of) the phase.
    pub clients: Option<usize>,
    /// Move the connection target linearly from the previous value.
    pub ramp: bool,
    /// Feed events per second.
    pub rate: Option<f64>,
    pub churn_per_sec: Option<f64>,
    pub slow_fraction: Option<f64>,
    /// Count this phase in the totals and the objective.
    pub measure: bool,
}

impl Default for PhaseSpec {
    fn default() -> PhaseSpec {
        PhaseSpec {
            name: "phase".into(),
            duration_s: 10.0,
            clients: None,
            ramp: false,
            rate: None,
            churn_per_sec: None,
            slow_fraction: None,
            measure: true,
        }
    }
}

/// What a healthy window is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Objective {
    /// p99 delivery latency at most this (ms).
    pub p99_ms: f64,
    /// Delivered at least this fraction of offered.
    pub min_delivered_ratio: f64,
    /// Violations at most this many (the contract says 0).
    pub max_violations: u64,
    /// Open connections at least this fraction of the target.
    pub min_open_ratio: f64,
}

impl Default for Objective {
    fn default() -> Objective {
        Objective {
            p99_ms: 100.0,
            min_delivered_ratio: 0.95,
            max_violations: 0,
            min_open_ratio: 0.99,
        }
    }
}

/// The steps of `capacity`: `clients[i]` with `rates[i]`; a list of one
/// value is used at every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacitySpec {
    pub clients: Vec<usize>,
    pub rates: Vec<f64>,
    /// Seconds after the target is reached before measuring.
    pub warmup_s: f64,
    pub measure_s: f64,
    /// Longest wait for the connections of a step (s).
    pub settle_timeout_s: f64,
    /// Stop at the first step that breaks the objective.
    pub stop_at_break: bool,
}

impl Default for CapacitySpec {
    fn default() -> CapacitySpec {
        CapacitySpec {
            clients: vec![100, 200, 400, 800, 1600, 3200],
            rates: vec![2_000.0],
            warmup_s: 2.0,
            measure_s: 5.0,
            settle_timeout_s: 60.0,
            stop_at_break: true,
        }
    }
}

impl CapacitySpec {
    /// The (clients, rate) of each step.
    pub fn steps(&self) -> anyhow::Result<Vec<(usize, f64)>> {
        let n = self.clients.len().max(self.rates.len());
        let at = |v: &[f64], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let ok = |len: usize| len == 1 || len == n;
        if n == 0 || !ok(self.clients.len()) || !ok(self.rates.len()) {
            anyhow::bail!(
                "capacity: `clients` ({}) and `rates` ({}) must have the same length, or one of them a single value",
                self.clients.len(),
                self.rates.len()
            );
        }
        let clients: Vec<f64> = self.clients.iter().map(|&c| c as f64).collect();
        Ok((0..n)
            .map(|i| (at(&clients, i) as usize, at(&self.rates, i)))
            .collect())
    }
}

impl Scenario {
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let mut s: Scenario = toml::from_str(text)?;
        if s.sample_interval_s <= 0.0 {
            s.sample_interval_s = 1.0;
        }
        Ok(s)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The largest slow-reader fraction the run sets.
    pub fn slow_max_fraction(&self) -> f64 {
        self.phase
            .iter()
            .filter_map(|p| p.slow_fraction)
            .fold(self.clients.slow_fraction, f64::max)
    }

    /// The phases to run: the file's, or ramp + hold.
    pub fn phases(&self) -> Vec<PhaseSpec> {
        if !self.phase.is_empty() {
            return self.phase.clone();
        }
        vec![
            PhaseSpec {
                name: "ramp".into(),
                duration_s: 5.0,
                clients: Some(self.clients.count),
                ramp: true,
                measure: false,
                ..PhaseSpec::default()
            },
            PhaseSpec {
                name: "hold".into(),
                duration_s: 10.0,
                ..PhaseSpec::default()
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_states_only_what_it_changes() {
        let s = Scenario::parse(
            r#"
            name = "t"
            [engine]
            in_process = true
            workers = 2
            [feed]
            rate = 500
            [clients]
            count = 300
            json_fraction = 0.5
            [[phase]]
            name = "ramp"
            duration_s = 1
            clients = 300
            ramp = true
            measure = false
            [[phase]]
            name = "churn"
            duration_s = 2
            churn_per_sec = 50
            [capacity]
            clients = [10, 20]
            "#,
        )
        .unwrap();
        assert!(s.engine.in_process);
        assert_eq!(s.feed.rate, 500.0);
        assert_eq!(s.feed.symbols, 20);
        assert_eq!(s.clients.count, 300);
        assert_eq!(s.phases().len(), 2);
        assert_eq!(s.phases()[1].churn_per_sec, Some(50.0));
        assert!(s.phases()[1].measure);
        assert_eq!(
            s.capacity.steps().unwrap(),
            vec![(10, 2000.0), (20, 2000.0)]
        );
        assert_eq!(s.sample_interval_s, 1.0);
        let again = Scenario::parse(&s.to_toml()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let s = Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            s.capacity.steps().unwrap();
            assert!(!s.phases().is_empty());
            n += 1;
        }
        assert!(n >= 4, "{n} scenarios");
    }

    #[test]
    fn typos_and_mismatched_steps_are_errors() {
        assert!(Scenario::parse("[clients]\ncont = 3").is_err());
        let c = CapacitySpec {
            clients: vec![1, 2, 3],
            rates: vec![1.0, 2.0],
            ..CapacitySpec::default()
        };
        assert!(c.steps().is_err());
        assert_eq!(Scenario::default().phases()[0].name, "ramp");
    }
}
