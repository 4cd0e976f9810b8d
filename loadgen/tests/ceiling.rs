//! `tickwire-loadgen ceiling` end to end: the real binary, its receiver child,
//! 50 loopback connections on port 0 for one second. The JSON report must
//! show sends and pass times, and the run must finish by itself (killed after
//! 60 s otherwise). Pinning to cores 0 and 1 fits a 2-core machine; where it
//! fails, the binary only warns.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sonic_rs::JsonValueTrait;

const LIMIT: Duration = Duration::from_secs(60);

/// Reads a pipe to its end on a thread, so a full pipe cannot stall the child.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `ceiling --json` over 50 connections for one second with `extra`
/// arguments; checks that it finished by itself, that every byte sent was
/// read and that sends and passes were counted; returns the report.
fn ceiling_report(extra: &[&str]) -> sonic_rs::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire-loadgen"))
        .args(["ceiling", "--connections", "50", "--seconds", "1", "--json"])
        .args(extra)
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
    assert!(status.success(), "{status}; stderr:\n{stderr}");

    let report: sonic_rs::Value = sonic_rs::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"));
    let number = |key: &str| {
        report
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("no number {key} in {stdout}"))
    };
    assert_eq!(report.get("connections").and_then(|v| v.as_u64()), Some(50));
    assert!(number("sends_per_sec") > 0.0, "{stdout}");
    assert!(number("pass_ms_median") > 0.0, "{stdout}");
    assert!(number("passes") >= 1.0, "{stdout}");
    assert_eq!(
        number("bytes_sent_total"),
        number("bytes_received_total"),
        "every byte sent is read by the receiver: {stdout}"
    );
    report
}

#[test]
fn ceiling_json_with_50_connections_finishes_by_itself() {
    let report = ceiling_report(&[]);
    assert_eq!(report.get("uring_batch").and_then(|v| v.as_u64()), Some(0));
}

/// The same sends through io_uring, 16 per submission: counted like
/// `send()`s, every byte read by the receiver.
#[test]
fn ceiling_through_io_uring_sends_every_byte() {
    let report = ceiling_report(&["--uring-batch", "16"]);
    assert_eq!(report.get("uring_batch").and_then(|v| v.as_u64()), Some(16));
}

/// Arguments it cannot honour are refused up front, with a message naming
/// the flag, before any receiver or socket exists.
#[test]
fn ceiling_refuses_impossible_arguments_with_a_clear_error() {
    for (args, expected) in [
        (&["--seconds", "0"][..], "--seconds must be in (0, 3600]"),
        (
            &["--connections", "0"][..],
            "--connections and --bytes must be positive",
        ),
        (
            &["--bytes", "0"][..],
            "--connections and --bytes must be positive",
        ),
        (
            &["--connections", "10000000"][..],
            "open files in each process",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tickwire-loadgen"))
            .arg("ceiling")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tickwire-loadgen");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a report");
    }
}
