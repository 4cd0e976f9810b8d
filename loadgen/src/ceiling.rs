//! The loopback ceiling: the kernel's floor cost of one TCP `send()` when one
//! thread writes round-robin to many client sockets. That is the best any
//! fan-out server can do on this machine, whatever its code.
//!
//! It owns two processes, because each end holds N sockets and one process may
//! not hold 2 N files under the open-file limit (20,000 here):
//!
//! ```text
//!  tickwire-loadgen ceiling (sender, main thread, pinned to --sender-core)
//!    │ spawns, stdin = a pipe it holds       ▲ stdout lines:
//!    ▼                                        │ listening ADDR / ready N P / done BYTES READS
//!  tickwire-loadgen ceiling-receiver (main thread: a mio loop, pinned to --receiver-core;
//!                                      thread ceiling-stdin: wakes it on stdin EOF)
//! ```
//!
//! The sender connects N sockets (TCP_NODELAY, nonblocking after connect),
//! warms up for [`WARMUP`], then for `--seconds` writes `--bytes` to each
//! socket in turn (a *pass*), counting sends and would-blocks and timing every
//! pass; its CPU time is its own thread's (`/proc/thread-self/schedstat`). Then
//! it closes the sockets, and the receiver, having read every byte, reports
//! what it received and exits.
//!
//! With `--uring-batch B` the same sends go through io_uring, `B` of them
//! per system call (registered files, `MSG_DONTWAIT`): what a server saves by
//! batching its system calls, measured against one `send()` each in the same
//! run of the machine.
//!
//! What it must never do: block in the measured loop (every socket is
//! nonblocking), write anything but the payload (no framing: this is the
//! kernel's cost, not tickwire's), or outlive its budget. Each wait is bounded,
//! the receiver stops by itself at a deadline (or when its stdin closes, i.e.
//! the sender is gone), and the sender kills and reaps it on every exit path.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tickwire_loadgen::env::Env;
use tickwire_loadgen::stats::open_file_limit;

/// Passes before measuring: the first writes to each socket grow its buffers.
const WARMUP: Duration = Duration::from_secs(1);
/// All N connects together (loopback: ~10,000 take about a second).
const CONNECT_BUDGET: Duration = Duration::from_secs(60);
/// One connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The receiver's first line (it only binds and prints).
const LISTEN_BUDGET: Duration = Duration::from_secs(10);
/// From the last connect to the receiver having accepted them all.
const READY_BUDGET: Duration = Duration::from_secs(10);
/// From closing the sockets to the receiver having read every byte.
const DRAIN_BUDGET: Duration = Duration::from_secs(20);
/// From closing the receiver's stdin to its exit, before it is killed.
const EXIT_BUDGET: Duration = Duration::from_secs(5);
/// Files each process needs beside its sockets (stdio, epoll, pipes, listener).
const SPARE_FILES: u64 = 64;
/// Longest measurement accepted, so that a typo cannot hold a core for a day.
const MAX_SECONDS: f64 = 3600.0;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Client sockets the sender writes to round-robin; the receiver process
    /// holds the other ends.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Bytes per `send()` (1700: ~20 messages of 85 bytes flushed at once).
    #[arg(long, default_value_t = 1700)]
    bytes: usize,
    /// Seconds measured, after a 1 s warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Core the sender is pinned to (a warning if that fails).
    #[arg(long, default_value_t = 0)]
    sender_core: usize,
    /// Core the receiver process is pinned to (a warning if that fails).
    #[arg(long, default_value_t = 1)]
    receiver_core: usize,
    /// Where the receiver listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Submit the sends through io_uring, this many per system call (0: one
    /// `send()` each).
    #[arg(long, default_value_t = 0)]
    uring_batch: u32,
}

/// The receiving end, started by `ceiling` itself (hidden from `--help`).
#[derive(clap::Args, Debug, Clone)]
pub struct ReceiverArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// Connections to accept before saying `ready`.
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    core: usize,
    /// Seconds after which it stops, whatever happens.
    #[arg(long)]
    deadline_s: f64,
}

/// What `ceiling` prints, as one JSON object with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    env: Env,
    connections: usize,
    bytes_per_send: usize,
    /// Sends per io_uring submission; 0: one `send()` system call each.
    uring_batch: u32,
    sender_core: usize,
    sender_pinned: bool,
    receiver_core: usize,
    receiver_pinned: bool,
    /// Wall time of the measured passes.
    measured_s: f64,
    passes: u64,
    /// `send()` calls that wrote at least one byte.
    sends: u64,
    sends_per_sec: f64,
    /// Sender thread CPU time per send: the floor cost of one `send()`.
    us_per_send_cpu: Option<f64>,
    us_per_send_wall: f64,
    /// Fraction of the wall time the sender thread was on a CPU.
    sender_cpu_busy: Option<f64>,
    /// Same for the receiver's loop: near 1, it may be what limits the sender.
    receiver_cpu_busy: Option<f64>,
    /// `send()` calls that wrote nothing (socket buffer full).
    would_block: u64,
    /// `send()` calls that wrote part of the payload.
    partial_sends: u64,
    bytes_sent: u64,
    megabytes_per_sec: f64,
    pass_ms_min: f64,
    pass_ms_median: f64,
    pass_ms_p99: f64,
    pass_ms_max: f64,
    /// Warm-up included; equals `bytes_received_total` when nothing was lost.
    bytes_sent_total: u64,
    bytes_received_total: u64,
}

/// Nanoseconds a thread has run on a CPU: the first field of a `schedstat`
/// file (`/proc/thread-self/schedstat`, `/proc/PID/schedstat`).
fn schedstat_ns(path: &str) -> Option<u64> {
    parse_schedstat(&std::fs::read_to_string(path).ok()?)
}

fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Pins the calling thread to `core`; says so on stderr and goes on if it can't.
fn pin(core: usize, role: &str) -> bool {
    let found = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == core);
    let pinned = found.is_some_and(core_affinity::set_for_current);
    if !pinned {
        eprintln!("ceiling: warning: could not pin the {role} to core {core}; running unpinned");
    }
    pinned
}

/// The value at quantile `q` of ascending `sorted` (nearest rank; 0 if empty).
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The receiver child: its stdout lines arrive on a channel so every wait for
/// one is bounded; dropped, it is killed and reaped.
struct ReceiverProcess {
    child: Child,
    /// Held open for the child's whole life: its EOF tells the child to stop.
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ReceiverProcess {
    fn spawn(args: &Args, deadline: Duration) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("find this executable to start the receiver")?;
        let mut child = Command::new(&exe)
            .arg("ceiling-receiver")
            .args(["--listen", &args.listen.to_string()])
            .args(["--connections", &args.connections.to_string()])
            .args(["--core", &args.receiver_core.to_string()])
            .args(["--deadline-s", &deadline.as_secs_f64().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start the receiver ({} ceiling-receiver)", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the receiver's stdout")?;
        let (tx, lines) = mpsc::channel();
        // Ends by itself at the child's exit (EOF on the pipe).
        std::thread::Builder::new()
            .name("ceiling-rx-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawn the thread reading the receiver")?;
        Ok(ReceiverProcess {
            child,
            stdin,
            lines,
        })
    }

    /// Waits up to `timeout` for the next line, which must start with `word`;
    /// returns the rest of it.
    fn expect(&mut self, word: &str, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => match line.strip_prefix(word) {
                Some(rest) => Ok(rest.trim().to_owned()),
                None => bail!("the receiver said {line:?}, expected `{word} …`"),
            },
            Err(RecvTimeoutError::Timeout) => {
                bail!("the receiver did not say `{word}` within {timeout:?}")
            }
            Err(RecvTimeoutError::Disconnected) => bail!(
                "the receiver exited before saying `{word}` ({})",
                match self.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    Ok(None) => "still running".to_owned(),
                    Err(e) => e.to_string(),
                }
            ),
        }
    }

    /// CPU nanoseconds of the receiver's loop (its main thread).
    fn cpu_ns(&self) -> Option<u64> {
        schedstat_ns(&format!("/proc/{}/schedstat", self.child.id()))
    }

    /// Closes its stdin and gives it `EXIT_BUDGET` to exit before `Drop` kills it.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_BUDGET;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!("ceiling: warning: the receiver did not exit within {EXIT_BUDGET:?}; killing it");
    }
}

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Connects `n` sockets to `addr`: TCP_NODELAY, nonblocking once connected.
fn connect_all(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<StdTcpStream>> {
    let deadline = Instant::now() + CONNECT_BUDGET;
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("connected only {i} of {n} sockets within {CONNECT_BUDGET:?}");
        }
        let s = StdTcpStream::connect_timeout(&addr, left.min(CONNECT_TIMEOUT))
            .with_context(|| format!("connect socket {i} of {n} to the receiver at {addr}"))?;
        s.set_nodelay(true).context("set TCP_NODELAY")?;
        s.set_nonblocking(true)
            .context("make a socket nonblocking")?;
        streams.push(s);
    }
    Ok(streams)
}

#[derive(Debug, Default)]
struct Counts {
    sends: u64,
    would_block: u64,
    partial: u64,
    bytes: u64,
}

impl Counts {
    /// A send that wrote `n` bytes of a `len`-byte payload.
    fn wrote(&mut self, n: usize, len: usize) {
        self.sends += 1;
        self.bytes += n as u64;
        self.partial += u64::from(n < len);
    }
}

/// One pass: `payload` to every socket once, in order. Never blocks.
fn pass(streams: &mut [StdTcpStream], payload: &[u8], counts: &mut Counts) -> anyhow::Result<()> {
    for (i, s) in streams.iter_mut().enumerate() {
        match s.write(payload) {
            Ok(n) => counts.wrote(n, payload.len()),
            // EINTR wrote nothing either; like a full buffer, the next pass retries.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                counts.would_block += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("send on socket {i}")),
        }
    }
    Ok(())
}

/// The sends of a pass submitted through io_uring, `batch` per system call.
struct UringSender {
    ring: io_uring::IoUring,
    batch: usize,
}

/// `MSG_DONTWAIT`: a full socket buffer completes with `EAGAIN`, as `send()`
/// on a nonblocking socket returns `WouldBlock`.
const MSG_DONTWAIT: i32 = 0x40;
const EAGAIN: i32 = 11;
const EINTR: i32 = 4;

impl UringSender {
    /// A ring of `batch` entries with every socket registered (fixed files:
    /// no file-table lookup per send).
    fn new(streams: &[StdTcpStream], batch: u32) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let ring = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(batch.next_power_of_two())
            .context("set up io_uring (kernel 6.1 or later)")?;
        let fds: Vec<i32> = streams.iter().map(AsRawFd::as_raw_fd).collect();
        ring.submitter()
            .register_files(&fds)
            .context("register the sockets with io_uring")?;
        Ok(UringSender {
            ring,
            batch: batch as usize,
        })
    }

    /// One pass over `n` registered sockets, `batch` sends per submission,
    /// each batch complete before the next.
    fn pass(&mut self, n: usize, payload: &[u8], counts: &mut Counts) -> anyhow::Result<()> {
        use io_uring::{opcode, types};
        let mut first = 0;
        while first < n {
            let end = (first + self.batch).min(n);
            {
                let mut sq = self.ring.submission();
                for i in first..end {
                    let send = opcode::Send::new(
                        types::Fixed(i as u32),
                        payload.as_ptr(),
                        payload.len() as u32,
                    )
                    .flags(MSG_DONTWAIT)
                    .build()
                    .user_data(i as u64);
                    // SAFETY: `payload` outlives the batch: every entry is
                    // completed below before this function returns.
                    unsafe { sq.push(&send) }
                        .map_err(|_| anyhow::anyhow!("io_uring queue full"))?;
                }
            }
            let mut left = end - first;
            while left > 0 {
                self.ring.submit_and_wait(1).context("io_uring submit")?;
                for cqe in self.ring.completion() {
                    left -= 1;
                    match cqe.result() {
                        n if n >= 0 => counts.wrote(n as usize, payload.len()),
                        e if e == -EAGAIN || e == -EINTR => counts.would_block += 1,
                        e => bail!("send on socket {}: errno {}", cqe.user_data(), -e),
                    }
                }
            }
            first = end;
        }
        Ok(())
    }
}

/// How a pass is written: one `send()` each, or batched through io_uring.
enum Sender {
    Syscalls,
    Uring(Box<UringSender>),
}

impl Sender {
    fn pass(
        &mut self,
        streams: &mut [StdTcpStream],
        payload: &[u8],
        counts: &mut Counts,
    ) -> anyhow::Result<()> {
        match self {
            Sender::Syscalls => pass(streams, payload, counts),
            Sender::Uring(u) => u.pass(streams.len(), payload, counts),
        }
    }
}

/// `tickwire-loadgen ceiling`: see the module doc.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 || args.bytes == 0 {
        bail!("--connections and --bytes must be positive");
    }
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        bail!("--seconds must be in (0, {MAX_SECONDS}]");
    }
    if let Some(limit) = open_file_limit()
        && args.connections as u64 + SPARE_FILES > limit
    {
        bail!(
            "--connections {} needs {} open files in each process; the limit is {limit} (ulimit -n)",
            args.connections,
            args.connections as u64 + SPARE_FILES
        );
    }
    let env = Env::capture();
    let measure = Duration::from_secs_f64(args.seconds);
    // Every stage the sender waits for, with a margin: the receiver stops by
    // then even if the sender hangs.
    let receiver_deadline = LISTEN_BUDGET
        + CONNECT_BUDGET
        + READY_BUDGET
        + WARMUP
        + measure
        + DRAIN_BUDGET
        + Duration::from_secs(10);
    let mut rx = ReceiverProcess::spawn(&args, receiver_deadline)?;
    // Pinned after the spawn, so the child does not inherit this core.
    let sender_pinned = pin(args.sender_core, "sender");
    let addr: SocketAddr = rx
        .expect("listening", LISTEN_BUDGET)?
        .parse()
        .context("parse the receiver's address")?;

    let mut streams = connect_all(addr, args.connections)?;
    let ready = rx.expect("ready", READY_BUDGET)?;
    let receiver_pinned = ready.split_whitespace().nth(1) == Some("1");

    let payload = vec![b'x'; args.bytes];
    let mut sender = match args.uring_batch {
        0 => Sender::Syscalls,
        batch => Sender::Uring(Box::new(UringSender::new(&streams, batch)?)),
    };
    let mut warm = Counts::default();
    let warm_end = Instant::now() + WARMUP;
    while Instant::now() < warm_end {
        sender.pass(&mut streams, &payload, &mut warm)?;
    }

    let mut counts = Counts::default();
    let mut pass_ns: Vec<u64> = Vec::with_capacity(4096);
    let cpu0 = schedstat_ns("/proc/thread-self/schedstat");
    let rx_cpu0 = rx.cpu_ns();
    let t0 = Instant::now();
    let end = t0 + measure;
    // One clock read per pass: the end of one pass is the start of the next.
    let mut t = t0;
    while t < end {
        sender.pass(&mut streams, &payload, &mut counts)?;
        let now = Instant::now();
        pass_ns.push((now - t).as_nanos() as u64);
        t = now;
    }
    let wall_ns = (t - t0).as_nanos() as u64;
    let cpu_ns = cpu0
        .zip(schedstat_ns("/proc/thread-self/schedstat"))
        .map(|(a, b)| b.saturating_sub(a));
    let rx_cpu_ns = rx_cpu0.zip(rx.cpu_ns()).map(|(a, b)| b.saturating_sub(a));

    // Closing sends a FIN after the buffered bytes; the receiver reads to EOF.
    // A ring holds its registered sockets open: it goes first.
    drop(sender);
    drop(streams);
    let done = rx.expect("done", DRAIN_BUDGET)?;
    let bytes_received_total: u64 = done
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .with_context(|| format!("parse the receiver's `done {done}`"))?;
    rx.finish();

    pass_ns.sort_unstable();
    let wall_s = wall_ns as f64 / 1e9;
    let sends = counts.sends.max(1) as f64;
    let report = Report {
        env,
        connections: args.connections,
        bytes_per_send: args.bytes,
        uring_batch: args.uring_batch,
        sender_core: args.sender_core,
        sender_pinned,
        receiver_core: args.receiver_core,
        receiver_pinned,
        measured_s: wall_s,
        passes: pass_ns.len() as u64,
        sends: counts.sends,
        sends_per_sec: counts.sends as f64 / wall_s,
        us_per_send_cpu: cpu_ns.map(|c| c as f64 / 1e3 / sends),
        us_per_send_wall: wall_ns as f64 / 1e3 / sends,
        sender_cpu_busy: cpu_ns.map(|c| c as f64 / wall_ns as f64),
        receiver_cpu_busy: rx_cpu_ns.map(|c| c as f64 / wall_ns as f64),
        would_block: counts.would_block,
        partial_sends: counts.partial,
        bytes_sent: counts.bytes,
        megabytes_per_sec: counts.bytes as f64 / 1e6 / wall_s,
        pass_ms_min: ms(pass_ns.first().copied().unwrap_or(0)),
        pass_ms_median: ms(nearest_rank(&pass_ns, 0.5)),
        pass_ms_p99: ms(nearest_rank(&pass_ns, 0.99)),
        pass_ms_max: ms(pass_ns.last().copied().unwrap_or(0)),
        bytes_sent_total: warm.bytes + counts.bytes,
        bytes_received_total,
    };
    if report.bytes_received_total != report.bytes_sent_total {
        eprintln!(
            "ceiling: warning: sent {} bytes but the receiver read {}",
            report.bytes_sent_total, report.bytes_received_total
        );
    }
    if args.json {
        println!(
            "{}",
            sonic_rs::to_string(&report).context("serialize the report")?
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The human-readable report: one line per figure.
fn table(r: &Report) -> String {
    let opt = |v: Option<f64>, scale: f64, unit: &str| {
        v.map_or_else(|| "n/a".to_owned(), |v| format!("{:.2}{unit}", v * scale))
    };
    let pinned = |p: bool| if p { "pinned" } else { "NOT pinned" };
    let lines = [
        format!("environment              {}", r.env.one_line()),
        format!("connections              {}", r.connections),
        format!("bytes per send           {}", r.bytes_per_send),
        format!(
            "sent by                  {}",
            match r.uring_batch {
                0 => "one send() each".to_owned(),
                b => format!("io_uring, {b} sends per submission"),
            }
        ),
        format!(
            "sender core              {} ({})",
            r.sender_core,
            pinned(r.sender_pinned)
        ),
        format!(
            "receiver core            {} ({})",
            r.receiver_core,
            pinned(r.receiver_pinned)
        ),
        format!("measured                 {:.2} s", r.measured_s),
        format!("passes                   {}", r.passes),
        format!("sends                    {}", r.sends),
        format!("sends/s                  {:.0}", r.sends_per_sec),
        format!(
            "µs per send (CPU)        {}",
            opt(r.us_per_send_cpu, 1.0, "")
        ),
        format!("µs per send (wall)       {:.2}", r.us_per_send_wall),
        format!(
            "sender CPU busy          {}",
            opt(r.sender_cpu_busy, 100.0, " %")
        ),
        format!(
            "receiver CPU busy        {}",
            opt(r.receiver_cpu_busy, 100.0, " %")
        ),
        format!("would-block sends        {}", r.would_block),
        format!("partial sends            {}", r.partial_sends),
        format!("throughput               {:.1} MB/s", r.megabytes_per_sec),
        format!("pass time min            {:.3} ms", r.pass_ms_min),
        format!("pass time median         {:.3} ms", r.pass_ms_median),
        format!("pass time p99            {:.3} ms", r.pass_ms_p99),
        format!("pass time max            {:.3} ms", r.pass_ms_max),
        format!(
            "bytes sent / received    {} / {}",
            r.bytes_sent_total, r.bytes_received_total
        ),
        format!(
            "latency floor            a server that writes every client once per pass cannot \
             deliver to {} clients in less than {:.3} ms on one core",
            r.connections, r.pass_ms_median
        ),
    ];
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
/// Connection k has token `FIRST_CONN + k`.
const FIRST_CONN: usize = 2;
/// Read buffer: bigger than what a socket holds after a few passes, so one
/// read usually empties it.
const READ_BUF: usize = 256 * 1024;
/// Longest sleep in `poll`, so the deadline is seen without any event.
const TICK: Duration = Duration::from_millis(100);

/// Binds with a backlog of `backlog` (the kernel caps it at
/// `net.core.somaxconn`), so a burst of connects is not dropped.
fn listen(addr: SocketAddr, backlog: usize) -> anyhow::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("create the listening socket")?;
    s.set_reuse_address(true).context("set SO_REUSEADDR")?;
    s.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .context("listen")?;
    s.set_nonblocking(true)
        .context("make the listener nonblocking")?;
    Ok(TcpListener::from_std(s.into()))
}

/// What reading one ready connection found.
enum Drained {
    /// Nothing more to read for now; a new edge will say when there is.
    Open,
    /// EOF (or an error): deregister and drop it.
    Closed,
}

/// Reads one connection after a readiness event. `read_closed`: the event
/// carried the peer's FIN, so read to EOF.
fn drain(
    stream: &mut TcpStream,
    buf: &mut [u8],
    read_closed: bool,
    bytes: &mut u64,
    reads: &mut u64,
) -> Drained {
    loop {
        match stream.read(buf) {
            Ok(0) => return Drained::Closed,
            Ok(n) => {
                *bytes += n as u64;
                *reads += 1;
                // NB: a short read ends the turn rather than a read that
                // returns WouldBlock (mio's general rule): on a TCP socket a
                // short read means the buffer was emptied, and any later
                // arrival raises a new edge, so this saves one EAGAIN read per
                // wakeup. The FIN is the exception: once reported it raises
                // no further edge, hence `read_closed` reads on to EOF.
                if n < buf.len() && !read_closed {
                    return Drained::Open;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Drained::Open,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("ceiling-receiver: warning: read failed ({e}); closing that connection");
                return Drained::Closed;
            }
        }
    }
}

/// `tickwire-loadgen ceiling-receiver`: accepts, reads everything, reports.
/// Stops when every accepted connection is closed after `ready`, when stdin
/// closes, or at the deadline.
pub fn run_receiver(args: ReceiverArgs) -> anyhow::Result<()> {
    let deadline = Instant::now()
        + Duration::try_from_secs_f64(args.deadline_s).context("--deadline-s must be >= 0")?;
    let pinned = pin(args.core, "receiver");
    let mut listener = listen(args.listen, args.connections)?;
    let addr = listener.local_addr().context("the listener's address")?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;

    let mut poll = Poll::new().context("create the poll")?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .context("register the listener")?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).context("create the waker")?);
    let stdin_closed = Arc::new(AtomicBool::new(false));
    {
        let (closed, waker) = (stdin_closed.clone(), waker.clone());
        // The sender never writes to our stdin: EOF (or an error) means it is
        // done or gone.
        std::thread::Builder::new()
            .name("ceiling-stdin".into())
            .spawn(move || {
                let _ = io::copy(&mut io::stdin(), &mut io::sink());
                closed.store(true, Ordering::Release);
                let _ = waker.wake();
            })
            .context("spawn the stdin watcher")?;
    }

    let mut conns: Vec<Option<TcpStream>> = Vec::with_capacity(args.connections);
    let mut open = 0usize;
    let (mut bytes, mut reads) = (0u64, 0u64);
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Events::with_capacity(1024);
    let mut announced = false;
    loop {
        if stdin_closed.load(Ordering::Acquire) || (announced && open == 0) {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("ceiling-receiver: deadline passed; stopping");
            break;
        }
        match poll.poll(&mut events, Some(TICK)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("poll"),
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let token = Token(FIRST_CONN + conns.len());
                            poll.registry()
                                .register(&mut s, token, Interest::READABLE)
                                .context("register a connection")?;
                            conns.push(Some(s));
                            open += 1;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                            ) => {}
                        Err(e) => return Err(e).context("accept"),
                    }
                },
                WAKE => {}
                Token(t) => {
                    let slot = t.checked_sub(FIRST_CONN).and_then(|k| conns.get_mut(k));
                    let Some(slot) = slot else { continue };
                    let Some(s) = slot.as_mut() else { continue };
                    let closed = ev.is_read_closed() || ev.is_error();
                    if let Drained::Closed = drain(s, &mut buf, closed, &mut bytes, &mut reads) {
                        // Dropping closes it, which also removes it from the epoll set.
                        *slot = None;
                        open -= 1;
                    }
                }
            }
        }
        if !announced && conns.len() >= args.connections {
            writeln!(out, "ready {} {}", conns.len(), u8::from(pinned))?;
            out.flush()?;
            announced = true;
        }
    }
    // A closed stdin means the sender stopped listening: nobody to tell.
    if !stdin_closed.load(Ordering::Acquire) {
        writeln!(out, "done {bytes} {reads}")?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_the_ranked_value() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.5), 50);
        assert_eq!(nearest_rank(&v, 0.99), 99);
        assert_eq!(nearest_rank(&v, 1.0), 100);
        assert_eq!(nearest_rank(&v, 0.0), 1);
        assert_eq!(nearest_rank(&[7], 0.5), 7);
        assert_eq!(nearest_rank(&[], 0.5), 0);
    }

    #[test]
    fn schedstat_first_field_is_run_time_ns() {
        assert_eq!(parse_schedstat("506911711 158205 14\n"), Some(506_911_711));
        assert_eq!(parse_schedstat(""), None);
        assert!(schedstat_ns("/proc/thread-self/schedstat").is_some());
    }
}
