//! The README's first command: `tickwire demo` starts on its own, serves the
//! dashboard (and the SDK bundle it imports) and live symbols, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn demo_serves_the_dashboard_and_live_symbols() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
            "--ingest-json",
            "127.0.0.1:0",
        ])
        .args(["--workers", "1", "--symbols", "5", "--rate", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tickwire demo starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("demo prints its address").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    let url_line = lines.next().unwrap().unwrap();
    assert!(
        url_line.contains(&format!("http://{addr}/")),
        "prints the dashboard URL: {url_line}"
    );

    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(
        page.contains("<title>") && page.contains("/ws"),
        "the dashboard page"
    );
    // The TypeScript SDK bundle the page imports, served by the binary itself.
    let (status, sdk) = get(addr, "/tickwire.js");
    assert_eq!(status, 200);
    assert!(
        page.contains("from '/tickwire.js'") && sdk.contains("TickwireClient"),
        "the dashboard imports the SDK bundle"
    );
    // Symbols appear and their sequences move: the synthetic feed is live.
    let deadline = Instant::now() + Duration::from_secs(20);
    let seq_of_btc = |body: &str| -> Option<u64> {
        let v: sonic_rs::Value = sonic_rs::from_str(body).ok()?;
        use sonic_rs::{JsonContainerTrait, JsonValueTrait};
        v.get("symbols")?
            .as_array()?
            .iter()
            .find(|s| s.get("symbol").and_then(|x| x.as_str()) == Some("BTC-USD"))?
            .get("seq")?
            .as_u64()
    };
    let first = loop {
        let (status, body) = get(addr, "/symbols");
        assert_eq!(status, 200);
        // The feed's five snapshots are applied one by one: wait for all of
        // them (never more than five).
        let listed = body.matches("\"symbol\"").count();
        assert!(listed <= 5, "{body}");
        if let Some(seq) = seq_of_btc(&body)
            && listed == 5
        {
            break seq;
        }
        assert!(Instant::now() < deadline, "symbols never appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    loop {
        let (_, body) = get(addr, "/symbols");
        if seq_of_btc(&body).is_some_and(|s| s > first) {
            break;
        }
        assert!(Instant::now() < deadline, "BTC-USD never moved");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("demo did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}
