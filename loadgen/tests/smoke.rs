//! The CI smoke test of the harness: an in-process engine (2 workers, no
//! pinning), the synthetic feed, and 300 verifying clients of both encodings
//! for a few seconds on loopback, through ramp, hold and churn phases. Zero
//! violations, data delivered, a JSON report that parses back and an HTML
//! report with its charts.

use std::time::Instant;

use tickwire_loadgen::report::Report;
use tickwire_loadgen::runner::{self, RunOptions};
use tickwire_loadgen::scenario::Scenario;

const SCENARIO: &str = r#"
name = "ci-smoke"
sample_interval_s = 0.5

[engine]
in_process = true
workers = 2

[feed]
symbols = 12
depth = 10
rate = 150
trade_ratio = 0.1

[clients]
count = 300
threads = 2
source_ips = 4
symbols_per_client = 3
json_fraction = 0.2
trades_fraction = 0.5
connect_rate = 3000

[[phase]]
name = "ramp"
duration_s = 1.0
clients = 300
ramp = true
measure = false

[[phase]]
name = "hold"
duration_s = 2.0

[[phase]]
name = "churn"
duration_s = 1.0
churn_per_sec = 100

[objective]
p99_ms = 1000
min_delivered_ratio = 0.8
"#;

#[test]
fn engine_feed_and_300_clients_zero_violations_with_report_and_chart() {
    let started = Instant::now();
    let sc = Scenario::parse(SCENARIO).unwrap();
    let dir = std::env::temp_dir().join(format!("tickwire-loadgen-smoke-{}", std::process::id()));
    let prefix = dir.join("smoke");
    let report = runner::run(
        &sc,
        "run",
        &RunOptions {
            out: Some(prefix.clone()),
            quiet: true,
        },
    )
    .expect("the run completes");
    let s = &report.summary;
    assert_eq!(s.violations, 0, "{:#?}", s.samples);
    let hold = &report.phases[1].summary;
    assert!(
        hold.clients_open >= 290,
        "{} clients open",
        hold.clients_open
    );
    assert!(
        s.clients_open >= 270,
        "{} clients open on average",
        s.clients_open
    );
    let upgrades: u64 = report.phases.iter().map(|p| p.summary.opened).sum();
    assert!(upgrades >= 300, "{upgrades} upgrades");
    assert!(s.churned > 0, "the churn phase closed clients");
    assert!(
        s.deltas > 1_000 && s.trades > 0,
        "{} deltas {} trades",
        s.deltas,
        s.trades
    );
    assert!(s.snapshots >= 300);
    assert!(s.latency.count > 0 && s.latency.p99_ms > 0.0);
    let ratio = s
        .delivered_ratio
        .expect("offered is known with an in-process feed");
    assert!(ratio > 0.8 && ratio < 1.2, "delivered/offered {ratio}");
    assert!(s.loadgen_cpu_cores > 0.0 && s.server_cpu_cores.is_some());
    assert_eq!(report.phases.len(), 3);
    assert!(!report.phases[0].measured && report.phases[1].measured);
    assert!(report.timeline.len() >= 6);
    assert!(
        report.verdict.starts_with("objective met"),
        "{}",
        report.verdict
    );

    // The JSON report parses back to the same report, header included.
    let back = Report::read(&prefix.with_extension("json")).unwrap();
    assert_eq!(back, report);
    let env = &back.env[0];
    assert!(env.cores >= 1 && !env.kernel.is_empty() && env.rustc.starts_with("rustc"));
    assert!(!env.command.is_empty() && !env.git_sha.is_empty());
    // The HTML report holds the charts.
    let html = std::fs::read_to_string(prefix.with_extension("html")).unwrap();
    assert!(html.contains("Latency percentile distribution"));
    assert!(html.contains("Timeline"));
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(report.table().contains("TOTAL"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        started.elapsed().as_secs() < 30,
        "bounded: {:?}",
        started.elapsed()
    );
}
