//! `tickwire serve --config FILE` against the real binary: the file's values
//! take effect, flags override them, the annotated example starts, and a bad
//! file stops the start with a message naming the file, line and key. Every
//! port 0, one worker, every wait bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::harness::serve_refused;
use common::{SocketOpts, try_upgrade};

/// A config file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("tickwire-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every listener on loopback port 0, one worker, unpinned.
const LOOPBACK: &str = "listen = \"127.0.0.1:0\"\ningest = \"127.0.0.1:0\"\n\
                        ingest-json = \"127.0.0.1:0\"\nworkers = 1\npin = false\n";

/// `tickwire serve ARGS` started; returns it and the address it listens on.
fn start(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tickwire");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a line").expect("stdout");
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().parse().expect("an address");
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// The statuses of `n` WebSocket upgrades held open together.
fn upgrades(addr: SocketAddr, n: u64) -> Vec<u16> {
    let mut held = Vec::new();
    (0..n)
        .map(|seed| {
            let (status, _, stream) = try_upgrade(addr, SocketOpts::default(), seed);
            held.push(stream);
            status
        })
        .collect()
}

fn stop(mut child: Child) {
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn file_values_take_effect() {
    let file = TempFile::new("effect", &format!("{LOOPBACK}max-connections = 1\n"));
    let (child, addr) = start(&["--config", file.path()]);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(upgrades(addr, 2), [101, 503]);
    stop(child);
}

#[test]
fn flags_override_the_file() {
    let file = TempFile::new("override", &format!("{LOOPBACK}max-connections = 1\n"));
    let (child, addr) = start(&["--config", file.path(), "--max-connections", "2"]);
    assert_eq!(upgrades(addr, 3), [101, 101, 503]);
    stop(child);
}

#[test]
fn the_annotated_example_starts() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/tickwire.toml");
    let (child, addr) = start(&[
        "--config",
        example.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--ingest",
        "127.0.0.1:0",
        "--ingest-json",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--no-pin",
    ]);
    assert_eq!(upgrades(addr, 1), [101]);
    stop(child);
}

#[test]
fn an_unknown_key_is_refused_by_name_and_line() {
    let file = TempFile::new("unknown", &format!("{LOOPBACK}max-conections = 1\n"));
    let err = serve_refused(&["--config", file.path()]);
    assert!(
        err.contains(&format!("{}:6: unknown key `max-conections`", file.path())),
        "{err}"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused() {
    let file = TempFile::new("type", &format!("{LOOPBACK}max-connections = \"lots\"\n"));
    let err = serve_refused(&["--config", file.path()]);
    assert!(
        err.contains(":6: `max-connections` = \"lots\": invalid digit found in string"),
        "{err}"
    );
    let file = TempFile::new(
        "type2",
        &format!("{LOOPBACK}allowed-origin = \"https://a\"\n"),
    );
    let err = serve_refused(&["--config", file.path()]);
    assert!(err.contains(":6: `allowed-origin` takes an array"), "{err}");
}

#[test]
fn a_missing_file_is_refused_by_name() {
    let err = serve_refused(&["--config", "/nonexistent/tickwire.toml"]);
    assert!(
        err.contains("config file /nonexistent/tickwire.toml: No such file"),
        "{err}"
    );
}

#[test]
fn inconsistent_values_from_the_file_are_a_config_error() {
    let file = TempFile::new(
        "inconsistent",
        &format!("{LOOPBACK}low-water-bytes = 100000\nhigh-water-bytes = 100000\n"),
    );
    let err = serve_refused(&["--config", file.path()]);
    assert!(err.contains("invalid configuration"), "{err}");
    assert!(
        err.contains("low-water (100000) must be below high-water (100000)"),
        "{err}"
    );
}
