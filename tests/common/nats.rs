//! Real `nats-server` processes for integration tests: one server, or a
//! cluster of n (cluster "tickwire") plus an optional leaf node, each on free
//! loopback ports with its config and log in its own temp dir; bounded
//! readiness waits; kill/restart by the child's PID; monitoring reads (the
//! server's own counters, to prove what crossed a route or a leaf link); and
//! `RawNats`, a tiny blocking NATS protocol client over `TcpStream`.
//!
//! Only processes started here are ever killed (`Child::kill`, SIGKILL to
//! that PID). `NATS_SERVER` overrides the binary (default: `nats-server` on
//! `PATH`, then `/usr/sbin/nats-server`).
//!
//! Field names read from the monitoring JSON, as nats-server 2.9.10 prints
//! them: `/varz` `in_msgs`, `out_msgs`, `server_name`; `/routez`
//! `num_routes`, `routes[].subscriptions_list`; `/leafz` `leafnodes`,
//! `leafs[].in_msgs`, `leafs[].out_msgs`, `leafs[].subscriptions_list`;
//! `/connz` `connections[].in_msgs`, `connections[].out_msgs`.
//!
//! The servers run with `no_system_account: true`: without it, system events
//! ($SYS STATSZ and the like) travel over routes and make `/varz` counters of
//! cluster members move on their own. With it, every counter here moves only
//! by what a test sends, so tests can assert exact numbers.

use std::collections::VecDeque;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

/// Bound on every readiness wait (health, routes, leaf connection).
pub const READY_WAIT: Duration = Duration::from_secs(10);
/// Attempts to start a server (or a whole cluster) when one fails to bind a
/// port picked free (another process took it in between).
const START_ATTEMPTS: usize = 3;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A port that was free on 127.0.0.1 a moment ago (bound to 0, read, closed).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The `nats-server` binary: `$NATS_SERVER`, else on `PATH`, else
/// `/usr/sbin/nats-server` (where the Debian package puts it).
pub fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(
        bin.is_file(),
        "nats-server not found (set NATS_SERVER, or `apt-get install nats-server`)"
    );
    bin
}

/// Server settings that matter for tickwire; defaults are test values.
#[derive(Debug, Clone)]
pub struct NatsTuning {
    /// Outbound bytes buffered per connection before it is a slow consumer.
    pub max_pending: &'static str,
    /// A write to one connection blocked this long closes it (slow consumer).
    pub write_deadline: &'static str,
    /// Server PINGs every connection this often; `ping_max` unanswered close it.
    pub ping_interval: &'static str,
    pub ping_max: u32,
    pub max_payload: &'static str,
}

impl Default for NatsTuning {
    fn default() -> Self {
        NatsTuning {
            max_pending: "8MB",
            write_deadline: "2s",
            ping_interval: "5s",
            ping_max: 3,
            max_payload: "1MB",
        }
    }
}

/// One `nats-server` process this test started.
pub struct NatsServer {
    pub name: String,
    pub client_port: u16,
    pub monitor_port: u16,
    /// Route listen port (cluster members).
    pub cluster_port: Option<u16>,
    /// Leaf-node listen port (cluster members of a cluster with a leaf).
    pub leaf_port: Option<u16>,
    /// Its own temp dir: `nats.conf`, `nats.log`, `stderr.log`.
    pub data_dir: PathBuf,
    child: Option<Child>,
}

/// Why a start failed: `Exited` (likely a port taken meanwhile: retry with
/// fresh ports) or anything else (retrying would not help).
enum StartError {
    Exited(String),
    Other(String),
}

impl StartError {
    fn text(&self) -> &str {
        match self {
            StartError::Exited(s) | StartError::Other(s) => s,
        }
    }
}

impl NatsServer {
    /// Writes the config for a server in a fresh dir (nothing started yet).
    fn prepare(
        role: &str,
        tuning: &NatsTuning,
        cluster: Option<(u16, &[u16])>,
        leaf_listen: Option<u16>,
        leaf_remotes: &[u16],
    ) -> NatsServer {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tw-{}-{n}-{role}", std::process::id());
        let dir = std::env::temp_dir().join(format!("tickwire-nats-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create nats temp dir");
        let s = NatsServer {
            name,
            client_port: free_port(),
            monitor_port: free_port(),
            cluster_port: cluster.map(|(p, _)| p),
            leaf_port: leaf_listen,
            data_dir: dir,
            child: None,
        };
        let mut conf = format!(
            "# Written by tests/common/nats.rs for one test run.\n\
             server_name: \"{name}\"\n\
             listen: \"127.0.0.1:{client}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             no_system_account: true\n\
             max_pending: {mp}\n\
             max_payload: {mpl}\n\
             write_deadline: \"{wd}\"\n\
             ping_interval: \"{pi}\"\n\
             ping_max: {pm}\n\
             log_file: \"{log}\"\n",
            name = s.name,
            client = s.client_port,
            monitor = s.monitor_port,
            mp = tuning.max_pending,
            mpl = tuning.max_payload,
            wd = tuning.write_deadline,
            pi = tuning.ping_interval,
            pm = tuning.ping_max,
            log = s.log_path().display(),
        );
        if let Some((port, peers)) = cluster {
            let routes: Vec<String> = peers
                .iter()
                .map(|p| format!("    \"nats-route://127.0.0.1:{p}\"\n"))
                .collect();
            conf += &format!(
                "cluster {{\n  name: tickwire\n  listen: \"127.0.0.1:{port}\"\n  routes: [\n{}  ]\n}}\n",
                routes.concat()
            );
        }
        if let Some(port) = leaf_listen {
            conf += &format!("leafnodes {{\n  listen: \"127.0.0.1:{port}\"\n}}\n");
        }
        if !leaf_remotes.is_empty() {
            let urls: Vec<String> = leaf_remotes
                .iter()
                .map(|p| format!("\"nats-leaf://127.0.0.1:{p}\""))
                .collect();
            conf += &format!(
                "leafnodes {{\n  remotes: [\n    {{ urls: [{}] }}\n  ]\n}}\n",
                urls.join(", ")
            );
        }
        fs::write(s.conf_path(), conf).expect("write nats.conf");
        s
    }

    pub fn conf_path(&self) -> PathBuf {
        self.data_dir.join("nats.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("nats.log")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// PID of the running process (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns the process on its written config.
    fn spawn(&mut self) -> Result<(), StartError> {
        assert!(self.child.is_none(), "{} already running", self.name);
        let stderr = fs::File::create(self.data_dir.join("stderr.log"))
            .map_err(|e| StartError::Other(format!("stderr.log: {e}")))?;
        let child = Command::new(nats_bin())
            .arg("-c")
            .arg(self.conf_path())
            .stdin(Stdio::null())
            .stdout(
                stderr
                    .try_clone()
                    .map_err(|e| StartError::Other(e.to_string()))?,
            )
            .stderr(stderr)
            .spawn()
            .map_err(|e| StartError::Other(format!("spawn {}: {e}", nats_bin().display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (bounded) until `/healthz` answers 200 and `/varz` names this
    /// server (so not some other service that took the port), the process
    /// still alive.
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_WAIT;
        let want = format!("\"server_name\": \"{}\"", self.name);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(StartError::Exited(format!(
                    "{} exited during startup ({status})\n{}",
                    self.name,
                    self.log_tail(20)
                )));
            }
            if let Ok((200, _)) = self.http_get("/healthz")
                && let Ok((200, body)) = self.http_get("/varz")
                && body.contains(&want)
                && TcpStream::connect_timeout(&self.client_addr(), Duration::from_secs(1)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(format!(
                    "{} not healthy on 127.0.0.1:{} within {READY_WAIT:?}\n{}",
                    self.name,
                    self.monitor_port,
                    self.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the server's log (and of its stderr).
    pub fn log_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for f in ["nats.log", "stderr.log"] {
            let text = fs::read_to_string(self.data_dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {}/{f} (last {n} lines)\n", self.data_dir.display());
            for l in &lines[lines.len().saturating_sub(n)..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// SIGKILL to this server's PID, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports and config (killing it
    /// first if it runs); panics if it is not ready within [`READY_WAIT`].
    /// A port freed by the kill can be taken for a moment by another test's
    /// outgoing connection, so an exit at startup is retried after a pause.
    pub fn restart(&mut self) {
        self.kill();
        let what = format!("restart {}", self.name);
        with_retries(&what, || {
            let started = self.spawn().and_then(|()| self.wait_ready());
            if started.is_err() {
                self.kill();
                std::thread::sleep(Duration::from_millis(250));
            }
            started
        });
    }

    /// Plain HTTP/1.0 GET on the monitoring port: (status, body).
    fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "no HTTP header end"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "no HTTP status"))?;
        Ok((status, body.to_string()))
    }

    /// The body of a monitoring endpoint, e.g. `/varz`, `/subsz?subs=1`,
    /// `/routez?subs=1`, `/leafz?subs=1`, `/connz?subs=1`; panics unless 200.
    pub fn monitor_json(&self, path: &str) -> String {
        match self.http_get(path) {
            Ok((200, body)) => body,
            other => panic!("{} GET {path}: {other:?}", self.name),
        }
    }

    fn monitor_value(&self, path: &str) -> Value {
        let body = self.monitor_json(path);
        sonic_rs::from_str(&body)
            .unwrap_or_else(|e| panic!("{} {path}: bad JSON ({e}): {body}", self.name))
    }

    fn varz_u64(&self, field: &str) -> u64 {
        let v = self.monitor_value("/varz");
        v.get(field)
            .and_then(|x| x.as_u64())
            .unwrap_or_else(|| panic!("{} /varz has no {field}", self.name))
    }

    /// `/varz` `in_msgs`: messages received from clients, routes and leafs.
    pub fn varz_in_msgs(&self) -> u64 {
        self.varz_u64("in_msgs")
    }

    /// `/varz` `out_msgs`: messages sent to clients, routes and leafs.
    pub fn varz_out_msgs(&self) -> u64 {
        self.varz_u64("out_msgs")
    }

    /// `/routez` `num_routes`.
    pub fn num_routes(&self) -> u64 {
        let v = self.monitor_value("/routez");
        v.get("num_routes").and_then(|x| x.as_u64()).unwrap_or(0)
    }

    /// `/leafz` `leafnodes`: leaf connections on this server (either side).
    pub fn num_leafs(&self) -> u64 {
        let v = self.monitor_value("/leafz");
        v.get("leafnodes").and_then(|x| x.as_u64()).unwrap_or(0)
    }

    /// `subscriptions_list` of every entry of `list` in `path`.
    fn subjects(&self, path: &str, list: &str) -> Vec<String> {
        let v = self.monitor_value(path);
        let mut out = Vec::new();
        if let Some(conns) = v.get(list).and_then(|x| x.as_array()) {
            for c in conns.iter() {
                if let Some(subs) = c.get("subscriptions_list").and_then(|x| x.as_array()) {
                    out.extend(subs.iter().filter_map(|s| s.as_str()).map(str::to_string));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Subjects the far side of this server's leaf connections registered
    /// interest in (`/leafz?subs=1`). On a hub, that is what the leaf's
    /// clients want: exactly the subjects that cross the leaf link towards it.
    pub fn leaf_subjects(&self) -> Vec<String> {
        self.subjects("/leafz?subs=1", "leafs")
    }

    /// Subjects the cluster peers registered over routes (`/routez?subs=1`).
    pub fn route_subjects(&self) -> Vec<String> {
        self.subjects("/routez?subs=1", "routes")
    }

    /// Whether this server knows remote interest (route or leaf) in `subject`
    /// (literal match): a publish here will be forwarded.
    pub fn knows_remote_interest(&self, subject: &str) -> bool {
        let s = subject.to_string();
        self.route_subjects().contains(&s) || self.leaf_subjects().contains(&s)
    }

    fn sum_in_out(&self, path: &str, list: &str) -> (u64, u64) {
        let v = self.monitor_value(path);
        let mut sum = (0, 0);
        if let Some(conns) = v.get(list).and_then(|x| x.as_array()) {
            for c in conns.iter() {
                sum.0 += c.get("in_msgs").and_then(|x| x.as_u64()).unwrap_or(0);
                sum.1 += c.get("out_msgs").and_then(|x| x.as_u64()).unwrap_or(0);
            }
        }
        sum
    }

    /// (`in_msgs`, `out_msgs`) summed over this server's leaf connections
    /// (`/leafz`): on the leaf, `in` is what crossed the link towards it.
    pub fn leaf_in_out_msgs(&self) -> (u64, u64) {
        self.sum_in_out("/leafz", "leafs")
    }

    /// (`in_msgs`, `out_msgs`) summed over this server's route connections.
    pub fn route_in_out_msgs(&self) -> (u64, u64) {
        self.sum_in_out("/routez", "routes")
    }

    /// (`in_msgs`, `out_msgs`) summed over this server's client connections
    /// (`/connz`; routes and leafs are not clients).
    pub fn client_in_out_msgs(&self) -> (u64, u64) {
        self.sum_in_out("/connz", "connections")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("{}", self.log_tail(15));
        }
        self.kill();
        let _ = fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs `f` up to [`START_ATTEMPTS`] times while it fails with `Exited`.
fn with_retries<T>(what: &str, mut f: impl FnMut() -> Result<T, StartError>) -> T {
    let mut last = String::new();
    for attempt in 1..=START_ATTEMPTS {
        match f() {
            Ok(t) => return t,
            Err(StartError::Exited(e)) => {
                eprintln!("{what}: attempt {attempt}/{START_ATTEMPTS} failed: {e}");
                last = e;
            }
            Err(StartError::Other(e)) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: gave up after {START_ATTEMPTS} attempts; last: {last}");
}

/// One standalone server with the test tuning, ready.
pub fn start_single() -> NatsServer {
    start_single_with(&NatsTuning::default())
}

pub fn start_single_with(tuning: &NatsTuning) -> NatsServer {
    with_retries("start nats-server", || {
        let mut s = NatsServer::prepare("single", tuning, None, None, &[]);
        s.spawn()?;
        s.wait_ready()?;
        Ok(s)
    })
}

/// `n` servers routed to each other (cluster "tickwire") and optionally one
/// leaf-node server whose remote lists every member's leaf port.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    pub leaf: Option<NatsServer>,
}

/// Polls `cond` every 20 ms for at most [`READY_WAIT`].
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a ready cluster: every member with `n - 1` routes and, with a
/// leaf, one leaf connection seen from both sides.
pub fn start_cluster(n: usize, with_leaf: bool) -> NatsCluster {
    assert!(n >= 1, "a cluster needs a server");
    let tuning = NatsTuning::default();
    with_retries("start nats cluster", || {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::with_capacity(n);
        for (i, &port) in cluster_ports.iter().enumerate() {
            let peers: Vec<u16> = cluster_ports
                .iter()
                .copied()
                .filter(|&p| p != port)
                .collect();
            let leaf_listen = with_leaf.then(free_port);
            servers.push(NatsServer::prepare(
                &format!("n{i}"),
                &tuning,
                Some((port, &peers)),
                leaf_listen,
                &[],
            ));
        }
        let mut c = NatsCluster {
            servers,
            leaf: None,
        };
        for s in &mut c.servers {
            s.spawn()?;
        }
        for s in &mut c.servers {
            s.wait_ready()?;
        }
        for s in &c.servers {
            if !wait_for(|| s.num_routes() == (n - 1) as u64) {
                return Err(StartError::Other(format!(
                    "{} has {} routes, not {} after {READY_WAIT:?}\n{}",
                    s.name,
                    s.num_routes(),
                    n - 1,
                    s.log_tail(20)
                )));
            }
        }
        if with_leaf {
            let remotes: Vec<u16> = c.servers.iter().filter_map(|s| s.leaf_port).collect();
            let mut leaf = NatsServer::prepare("leaf", &tuning, None, None, &remotes);
            leaf.spawn()?;
            leaf.wait_ready()?;
            let ok = wait_for(|| {
                leaf.num_leafs() == 1 && c.servers.iter().map(|s| s.num_leafs()).sum::<u64>() == 1
            });
            if !ok {
                return Err(StartError::Other(format!(
                    "leaf {} not connected to the cluster after {READY_WAIT:?} \
                     (leaf sees {}, hubs see {:?})\n{}",
                    leaf.name,
                    leaf.num_leafs(),
                    c.servers.iter().map(|s| s.num_leafs()).collect::<Vec<_>>(),
                    leaf.log_tail(20)
                )));
            }
            c.leaf = Some(leaf);
        }
        Ok(c)
    })
}

impl NatsCluster {
    /// Client URLs of the cluster members, comma-separated.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member the leaf node is connected to (the leaf picks one of its
    /// remote URLs at random).
    pub fn leaf_hub(&self) -> &NatsServer {
        self.servers
            .iter()
            .find(|s| s.num_leafs() > 0)
            .expect("no cluster member has a leaf connection")
    }
}

/// One message as `RawNats` received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsMsg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    pub payload: Vec<u8>,
}

/// A minimal blocking NATS client (core protocol, no headers): CONNECT,
/// SUB/UNSUB, PUB, MSG, PING/PONG. Answers server PINGs whenever it reads.
pub struct RawNats {
    stream: TcpStream,
    buf: Vec<u8>,
    msgs: VecDeque<NatsMsg>,
    pongs: u64,
}

impl RawNats {
    /// Connects to `127.0.0.1:port`, reads INFO, sends CONNECT and waits for
    /// the PONG (5 s bound).
    pub fn connect(port: u16) -> RawNats {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect NATS {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut c = RawNats {
            stream,
            buf: Vec::new(),
            msgs: VecDeque::new(),
            pongs: 0,
        };
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"rawnats\"}\r\n");
        c.flush();
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        self.stream.write_all(bytes).expect("write to NATS");
    }

    pub fn sub(&mut self, subject: &str, sid: u64) {
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes());
    }

    pub fn unsub(&mut self, sid: u64) {
        self.send(format!("UNSUB {sid}\r\n").as_bytes());
    }

    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.send(&out);
    }

    /// PING, then reads until the matching PONG (5 s bound): everything sent
    /// before has been processed by the server. Messages read meanwhile are
    /// kept for `read_msg`.
    pub fn flush(&mut self) {
        let want = self.pongs + 1;
        self.send(b"PING\r\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pongs < want {
            assert!(Instant::now() < deadline, "no PONG from NATS within 5 s");
            self.read_some(deadline);
        }
    }

    /// The next message, waiting at most `timeout`.
    pub fn read_msg(&mut self, timeout: Duration) -> Option<NatsMsg> {
        let deadline = Instant::now() + timeout;
        loop {
            self.parse();
            if let Some(m) = self.msgs.pop_front() {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.read_some(deadline);
        }
    }

    /// One read, bounded by `deadline`, then parses what arrived.
    fn read_some(&mut self, deadline: Instant) {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("NATS server closed the connection"),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read from NATS: {e}"),
        }
        self.parse();
    }

    /// Consumes complete protocol lines (and MSG payloads) from the buffer.
    fn parse(&mut self) {
        loop {
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line = String::from_utf8_lossy(&self.buf[..eol]).to_string();
            let mut consumed = eol + 2;
            let mut words = line.split_ascii_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("MSG") => {
                    let args: Vec<&str> = words.collect();
                    let (subject, sid, reply, len) = match args.as_slice() {
                        [s, i, n] => (*s, *i, None, *n),
                        [s, i, r, n] => (*s, *i, Some(r.to_string()), *n),
                        _ => panic!("bad MSG line from NATS: {line}"),
                    };
                    let len: usize = len.parse().expect("MSG size");
                    if self.buf.len() < consumed + len + 2 {
                        return; // payload not complete yet
                    }
                    self.msgs.push_back(NatsMsg {
                        subject: subject.to_string(),
                        sid: sid.parse().expect("MSG sid"),
                        reply,
                        payload: self.buf[consumed..consumed + len].to_vec(),
                    });
                    consumed += len + 2;
                }
                Some("PING") => self.send(b"PONG\r\n"),
                Some("PONG") => self.pongs += 1,
                Some("+OK") | Some("INFO") => {}
                Some("-ERR") => panic!("NATS error: {line}"),
                _ => panic!("unexpected line from NATS: {line}"),
            }
            self.buf.drain(..consumed);
        }
    }
}
