//! `tickwire-loadgen cluster` end to end: the real binary starts a real
//! nats-server, one origin and two edges (the real `tickwire` binary of this
//! build), holds 30 verifying clients on each node for 2 s at 500 events/s
//! over 3 symbols, and stops everything by itself (killed after 120 s
//! otherwise). Zero violations, every node delivered, and the JSON report
//! holds the per-node figures. nats-server must be installed (CI installs
//! it): without it the test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

const LIMIT: Duration = Duration::from_secs(120);

/// Reads a pipe to its end on a thread, so a full pipe cannot stall the child.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// The engine binary: `$TICKWIRE_BIN`, else `tickwire` of this workspace
/// built now with this test's profile and target directory (`cargo build
/// -p tickwire --bin tickwire`: a no-op when it is fresh, and never a stale
/// binary). Cargo gives an integration test only its own package's
/// binaries (`CARGO_BIN_EXE_*`), hence the build.
fn tickwire_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TICKWIRE_BIN") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/cluster-<hash>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    // Not the variables `cargo test` sets for this process: build scripts
    // that watch one (ring watches CARGO_MANIFEST_DIR) would rebuild on
    // every run, here and in the next `cargo test`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.args(["build", "--quiet", "-p", "tickwire", "--bin", "tickwire"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .expect("run cargo build for the tickwire binary");
    assert!(status.success(), "cargo build -p tickwire: {status}");
    let bin = profile_dir.join("tickwire");
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
}

#[test]
fn origin_and_two_edges_through_nats_zero_violations_with_per_node_figures() {
    let tickwire = tickwire_bin();
    let dir = std::env::temp_dir().join(format!("tickwire-lg-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("cluster");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire-loadgen"))
        .arg("cluster")
        .arg("--tickwire")
        .arg(&tickwire)
        .args([
            "--rate",
            "500",
            "--symbols",
            "3",
            "--clients-per-node",
            "30",
            "--warmup",
            "1",
            "--duration",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tickwire-loadgen");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tickwire-loadgen") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let status =
        status.unwrap_or_else(|| panic!("still running after {LIMIT:?}; stderr:\n{stderr}"));
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("hop added p50"), "{stdout}");

    let text = std::fs::read_to_string(prefix.with_extension("json")).expect("the JSON report");
    let report: Value = sonic_rs::from_str(&text).expect("the report is JSON");
    assert_eq!(report.get("kind").and_then(|v| v.as_str()), Some("cluster"));
    let nodes = report
        .get("nodes")
        .and_then(|v| v.as_array())
        .expect("nodes in the report");
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n.get("name").and_then(|v| v.as_str()))
        .collect();
    assert_eq!(names, ["origin", "edge-1", "edge-2"], "{text}");
    for n in nodes.iter() {
        let name = n.get("name").and_then(|v| v.as_str()).unwrap();
        let s = n.get("summary").expect("node summary");
        let num = |v: Option<&Value>, what: &str| {
            v.and_then(|x| x.as_f64())
                .unwrap_or_else(|| panic!("{name}: no number {what}"))
        };
        assert_eq!(
            num(s.get("violations"), "violations"),
            0.0,
            "{name}: {text}"
        );
        assert!(
            num(s.get("delivered_per_s"), "delivered_per_s") > 0.0,
            "{name}"
        );
        assert_eq!(
            num(s.get("clients_open"), "clients_open"),
            30.0,
            "{name}: every client open"
        );
        let lat = s.get("latency").expect("latency");
        for p in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            assert!(num(lat.get(p), p) > 0.0, "{name}: {p}");
        }
        assert!(
            num(lat.get("p99_ms"), "p99") >= num(lat.get("p50_ms"), "p50"),
            "{name}"
        );
        // The engine's CPU and the CPU of this node's client threads.
        assert!(num(s.get("server_cpu_cores"), "server_cpu_cores") >= 0.0);
        assert!(num(s.get("loadgen_cpu_cores"), "loadgen_cpu_cores") >= 0.0);
        assert!(num(n.get("pid"), "pid") > 0.0);
        let hop = n.get("hop_added_p50_ms");
        if name == "origin" {
            assert!(hop.is_some_and(|h| h.is_null()), "{name}: no hop figure");
        } else {
            num(hop, "hop_added_p50_ms");
            num(n.get("hop_added_p99_ms"), "hop_added_p99_ms");
        }
    }
    let cluster = report.get("cluster").expect("cluster section");
    assert!(
        cluster
            .get("nats_url")
            .and_then(|v| v.as_str())
            .is_some_and(|u| u.starts_with("nats://127.0.0.1:")),
        "{text}"
    );
    assert!(
        cluster
            .get("engines_cpu_cores")
            .and_then(|v| v.as_f64())
            .is_some()
    );
    let summary = report.get("summary").unwrap();
    assert_eq!(summary.get("violations").and_then(|v| v.as_u64()), Some(0));
    assert!(
        summary
            .get("loadgen_cpu_cores")
            .and_then(|v| v.as_f64())
            .is_some()
    );
    let html = std::fs::read_to_string(prefix.with_extension("html")).expect("the HTML report");
    assert!(html.contains("edge-2") && html.contains("Added by the NATS hop"));
    let _ = std::fs::remove_dir_all(&dir);
}
