//! The `tickwire` command line: parse flags, build the config, start the
//! threads, wait for a signal.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use tickwire::auth::{AuthMode, VerifierConfig};
use tickwire::book::resume::HistoryLimits;
use tickwire::book::synth::SynthConfig;
use tickwire::config::{
    AnonymousConfig, AuthConfig, BackplaneSettings, IngestConfig, MarketLimits,
};
use tickwire::fanout::limits::{IpLimitConfig, Rate, RequestLimits};
use tickwire::fanout::pacing::PacingConfig;
use tickwire::fanout::render::DeflateBudget;
use tickwire::fanout::worker::WorkerConfig;
use tickwire::net::demo::{self, DemoFeedConfig};
use tickwire::net::engine::{Engine, EngineConfig};
use tickwire::net::worker::ShellConfig;
use tickwire::ws;

#[derive(Parser, Debug)]
#[command(
    name = "tickwire",
    version,
    about = "Market-data fan-out engine: feeds in over TCP, WebSocket subscribers out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine: ingest listeners for feed handlers, WebSocket/HTTP for clients.
    Serve(ServeArgs),
    /// Run the engine fed by the built-in synthetic market, through the normal
    /// ingest path, and print the dashboard URL.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Symbols in the synthetic market.
        #[arg(long, default_value_t = 20)]
        symbols: usize,
        /// Deltas and trades per second across all symbols.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Levels per side of each synthetic book.
        #[arg(long, default_value_t = SynthConfig::default().depth)]
        depth: usize,
        /// Seed of the synthetic market (same seed, same market).
        #[arg(long, default_value_t = SynthConfig::default().seed)]
        seed: u64,
    },
    /// WebSocket echo server for the Autobahn conformance suite (a test aid,
    /// never part of the demo or production defaults).
    Echo {
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Path that upgrades to the echo endpoint.
        #[arg(long, default_value = "/echo")]
        echo_path: String,
    },
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// A TOML file of settings: every long flag below is a key (`max-feeds =
    /// 1024`); flags given here override it (tuning/tickwire.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Client port: WebSocket (/ws) and HTTP (/, /healthz, /metrics, /symbols).
    #[arg(long, default_value_t = EngineConfig::default().listen)]
    listen: SocketAddr,
    /// Protobuf ingest listener (length-delimited IngestMessage).
    #[arg(long, default_value_t = IngestConfig::default().proto_addr)]
    ingest: SocketAddr,
    /// JSON-lines ingest listener.
    #[arg(long, default_value_t = IngestConfig::default().json_addr)]
    ingest_json: SocketAddr,
    /// Worker threads [default: available cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Pin each worker to a core.
    #[arg(long, overrides_with = "no_pin")]
    pin: bool,
    /// Do not pin workers (the default).
    #[arg(long)]
    no_pin: bool,
    /// Allowed Origin of WebSocket upgrades (repeatable); none given: any origin.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Token every feed must present in its Hello (or set TICKWIRE_INGEST_TOKEN;
    /// its value is never printed, not even by --help).
    #[arg(long, env = "TICKWIRE_INGEST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Feed connections at most (both listeners); more are closed at accept.
    #[arg(long, default_value_t = IngestConfig::default().max_feeds)]
    max_feeds: usize,
    /// A feed connection must complete its first message within this (ms); 0: no deadline.
    #[arg(long, default_value_t = IngestConfig::default().feed_hello_timeout_ms)]
    feed_hello_timeout_ms: u64,
    /// A feed message must complete within this of its first bytes (ms); 0: no deadline.
    #[arg(long, default_value_t = IngestConfig::default().feed_message_timeout_ms)]
    feed_message_timeout_ms: u64,
    /// Symbols at most (created by a first snapshot, never removed); more: `too_many_symbols`.
    #[arg(long, default_value_t = MarketLimits::default().max_symbols)]
    max_symbols: usize,
    /// Levels per side of a book at most (levels); deeper: `book_too_deep`.
    #[arg(long, default_value_t = MarketLimits::default().max_book_levels)]
    max_book_levels: usize,
    /// Level updates in one delta at most (updates); more: `too_many_updates`.
    #[arg(long, default_value_t = MarketLimits::default().max_delta_updates)]
    max_delta_updates: usize,
    /// Resume history (PROTOCOL §10): messages kept per symbol's book and per symbol's trades.
    #[arg(long, default_value_t = HistoryLimits::default().max_entries)]
    resume_max_messages: usize,
    /// Resume history: oldest message replayed (ms).
    #[arg(long, default_value_t = HistoryLimits::default().max_age_ns / 1_000_000)]
    resume_max_age_ms: u64,
    /// Resume history: memory of all symbols together at most (bytes).
    #[arg(long, default_value_t = HistoryLimits::default().max_total_bytes)]
    resume_max_bytes: usize,
    /// permessage-deflate (PROTOCOL §12): messages shorter than this go uncompressed (bytes).
    #[arg(long, default_value_t = ws::Config::default().deflate_threshold_bytes)]
    deflate_threshold_bytes: u32,
    /// permessage-deflate: market-thread time spent compressing per second at most (ms); past it, uncompressed; 0: never compress.
    #[arg(long, default_value_t = EngineConfig::default().deflate_budget.per_second_ns / 1_000_000)]
    deflate_budget_ms: u64,
    /// WebSocket connections at most (503 past it).
    #[arg(long, default_value_t = ShellConfig::default().max_connections)]
    max_connections: usize,
    /// Symbol-channel subscriptions per connection at most.
    #[arg(long, default_value_t = WorkerConfig::default().max_subscriptions)]
    max_subscriptions: usize,
    /// Per-connection buffered bytes above which deltas and trades are dropped (bytes).
    #[arg(long, default_value_t = WorkerConfig::default().high_water_bytes)]
    high_water_bytes: usize,
    /// Buffered bytes below which dropped books are resynced (bytes).
    #[arg(long, default_value_t = WorkerConfig::default().low_water_bytes)]
    low_water_bytes: usize,
    /// Buffered bytes above which a connection is closed with 4001 (bytes).
    #[arg(long, default_value_t = WorkerConfig::default().hard_limit_bytes)]
    hard_limit_bytes: usize,
    /// A connection dropping data for longer than this is closed with 4001 (ms).
    #[arg(long, default_value_t = WorkerConfig::default().max_lag_ns / 1_000_000)]
    max_lag_ms: u64,
    /// Largest client message after reassembly (bytes); 1009 above.
    #[arg(long, default_value_t = ws::Config::default().max_message_bytes)]
    max_message_bytes: u32,
    /// Connections (any state) one client IP may hold; 429 past it. 0: unlimited.
    #[arg(long, default_value_t = IpLimitConfig::default().max_connections_per_ip)]
    max_connections_per_ip: u32,
    /// WebSocket handshakes per client IP per second (burst the same); 429
    /// with Retry-After past it. 0: unlimited.
    #[arg(long, default_value_t = IpLimitConfig::default().handshakes_per_ip_per_sec)]
    handshakes_per_ip_per_sec: u32,
    /// Client requests per connection per second; `rate_limited` past it. 0: unlimited.
    #[arg(long, default_value_t = RequestLimits::default().requests.per_sec)]
    requests_per_sec: u32,
    /// Requests a connection may send back to back.
    #[arg(long, default_value_t = RequestLimits::default().requests.burst)]
    request_burst: u32,
    /// Rate-limited requests in a row (leaking 1/s) before closing with 4002.
    #[arg(long, default_value_t = RequestLimits::default().strikes.burst)]
    rate_limited_before_close: u32,
    /// Server ping period (ms); 0: no heartbeat.
    #[arg(long, default_value_t = ShellConfig::default().ping_interval_ms)]
    ping_interval_ms: u64,
    /// A connection silent for ping interval + this (ms) is closed with 4003.
    #[arg(long, default_value_t = ShellConfig::default().pong_timeout_ms)]
    pong_timeout_ms: u64,
    /// SSE streams (PROTOCOL §11): period of the `: ping` comment line (ms); 0: none.
    #[arg(long, default_value_t = ShellConfig::default().sse_ping_interval_ms)]
    sse_ping_interval_ms: u64,
    /// On SIGTERM/SIGINT: time to flush and finish close handshakes (ms).
    #[arg(long, default_value_t = ShellConfig::default().shutdown_timeout_ms)]
    shutdown_timeout_ms: u64,
    /// SO_SNDBUF of client sockets (bytes); 0: the kernel's default (autotuned).
    #[arg(long, default_value_t = ShellConfig::default().socket_send_buffer_bytes)]
    socket_send_buffer_bytes: usize,
    /// TCP_NOTSENT_LOWAT of client sockets (bytes): the most a client's kernel
    /// socket holds unsent; counted in its backlog. 0: not set.
    #[arg(long, default_value_t = ShellConfig::default().kernel_unsent_bytes)]
    kernel_unsent_bytes: usize,
    /// Pacing: a pass over the waiting connections starts no sooner than this
    /// after the previous one started (µs; batches writes when passes are
    /// short, costs at most this much latency; 0: never wait).
    #[arg(long, default_value_t = PacingConfig::default().min_pass_ns / 1_000)]
    min_pass_us: u64,
    /// Pacing: under load, draining the ring takes at most this share of a
    /// worker's time (percent, 1–100): after a drain that took d, the next
    /// waits d × (100 − share) / share, within --drain-min-us and 25 ms.
    #[arg(long, default_value_t = PacingConfig::default().drain_share_pct)]
    drain_share_pct: u32,
    /// Pacing: under load the ring is drained no more often than this (µs).
    #[arg(long, default_value_t = PacingConfig::default().drain_min_ns / 1_000)]
    drain_min_us: u64,
    /// Slots of each ingest → worker ring (messages).
    #[arg(long, default_value_t = EngineConfig::default().ring_capacity)]
    ring_capacity: usize,
    /// Serve the conformance echo endpoint at this path (a test aid; off by default).
    #[arg(long)]
    echo_path: Option<String>,
    /// Origin role (scale-out): publish every message of this node's books to
    /// NATS at these servers (comma-separated `nats://host:port`).
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Edge role (scale-out): follow the symbols local clients want from
    /// their origins through NATS at these servers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    backplane: Vec<String>,
    /// This origin's name on the backplane: 1 to 32 of `A-Za-z0-9_-`.
    /// Among origins listing one symbol, the smallest name owns it.
    #[arg(long, default_value = "origin")]
    origin_id: String,
    /// An origin whose heartbeat is silent this long is down for an edge
    /// (its books turn `Stale{feed_down}`), in ms.
    #[arg(long, default_value_t = 3_000)]
    backplane_timeout_ms: u64,
    /// Per-feed ingest tokens: a file of `feed-name token` lines (re-read on
    /// SIGHUP; a feed whose token is gone is closed). Instead of --token.
    #[arg(long)]
    ingest_token_file: Option<PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Client authentication (PROTOCOL §8; README "Authentication"). Key files
/// are re-read on SIGHUP without dropping a connection; their contents are
/// never printed.
#[derive(Args, Debug, Clone)]
struct AuthArgs {
    /// off (default): no tokens; optional: clients without a token get the
    /// --anonymous-* entitlements; required: every client authenticates.
    #[arg(long, default_value = "off", value_parser = parse_auth_mode)]
    auth: AuthMode,
    /// HS256 shared secret: a file of at least 32 bytes (one trailing newline ignored).
    #[arg(long)]
    jwt_secret_file: Option<PathBuf>,
    /// RS256, ES256 or EdDSA public key, PEM (repeatable).
    #[arg(long = "jwt-public-key-file")]
    jwt_public_key_files: Vec<PathBuf>,
    /// A JWKS document of public keys (RFC 7517).
    #[arg(long)]
    jwt_jwks_file: Option<PathBuf>,
    /// Tokens must carry this `iss`.
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Tokens must carry this `aud` (unset: a token naming an audience is refused).
    #[arg(long)]
    jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (s).
    #[arg(long, default_value_t = 60)]
    jwt_leeway_secs: u64,
    /// Anonymous clients (--auth optional): symbol patterns, comma-separated (`*` any run).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    anonymous_symbols: Vec<String>,
    /// Anonymous clients: channels, comma-separated (PROTOCOL §9 names, e.g.
    /// `book.10@1000ms,trades`; each allows its coarser views).
    #[arg(long, value_delimiter = ',', default_value = "book,trades")]
    anonymous_channels: Vec<String>,
    /// Anonymous clients: largest N of `book.N` (`book` is then refused).
    #[arg(long)]
    anonymous_max_depth: Option<u32>,
    /// Anonymous clients: smallest conflation interval (ms).
    #[arg(long, default_value_t = 0)]
    anonymous_min_interval_ms: u32,
    /// Anonymous clients: symbol-channels per connection (at most --max-subscriptions).
    #[arg(long)]
    anonymous_max_subscriptions: Option<u32>,
    /// Anonymous clients: requests per second per connection (at most --requests-per-sec).
    #[arg(long)]
    anonymous_requests_per_sec: Option<u32>,
}

fn parse_auth_mode(s: &str) -> Result<AuthMode, String> {
    AuthMode::parse(s).ok_or_else(|| format!("{s:?}: expected off, optional or required"))
}

impl AuthArgs {
    fn config(&self) -> AuthConfig {
        AuthConfig {
            mode: self.auth,
            secret_file: self.jwt_secret_file.clone(),
            public_key_files: self.jwt_public_key_files.clone(),
            jwks_file: self.jwt_jwks_file.clone(),
            verifier: VerifierConfig {
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
                leeway_s: self.jwt_leeway_secs,
            },
            anonymous: AnonymousConfig {
                symbols: self.anonymous_symbols.clone(),
                channels: self.anonymous_channels.clone(),
                max_depth: self.anonymous_max_depth,
                min_interval_ms: self.anonymous_min_interval_ms,
                max_subscriptions: self.anonymous_max_subscriptions,
                requests_per_sec: self.anonymous_requests_per_sec,
            },
        }
    }
}

impl ServeArgs {
    /// `--publish` and `--backplane` share one NATS connection: a node that
    /// is both uses the `--publish` servers.
    fn backplane_settings(&self) -> Option<BackplaneSettings> {
        let servers = if self.publish.is_empty() {
            &self.backplane
        } else {
            &self.publish
        };
        (!servers.is_empty()).then(|| BackplaneSettings {
            servers: servers.clone(),
            origin: (!self.publish.is_empty()).then(|| self.origin_id.clone()),
            edge: !self.backplane.is_empty(),
            heartbeat_timeout_ms: self.backplane_timeout_ms,
        })
    }

    fn engine_config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        EngineConfig {
            ingest: IngestConfig {
                proto_addr: self.ingest,
                json_addr: self.ingest_json,
                token: self.token.as_deref().map(Arc::from),
                token_file: self.ingest_token_file.clone(),
                max_feeds: self.max_feeds,
                feed_hello_timeout_ms: self.feed_hello_timeout_ms,
                feed_message_timeout_ms: self.feed_message_timeout_ms,
                market: MarketLimits {
                    max_symbols: self.max_symbols,
                    max_book_levels: self.max_book_levels,
                    max_delta_updates: self.max_delta_updates,
                },
                backplane: self.backplane_settings(),
                ..IngestConfig::default()
            },
            resume: HistoryLimits {
                max_entries: self.resume_max_messages,
                max_age_ns: self.resume_max_age_ms.saturating_mul(1_000_000),
                max_total_bytes: self.resume_max_bytes,
            },
            deflate_budget: DeflateBudget {
                per_second_ns: self.deflate_budget_ms.saturating_mul(1_000_000),
            },
            listen: self.listen,
            workers: self.workers.unwrap_or(defaults.workers),
            pin: self.pin && !self.no_pin,
            ring_capacity: self.ring_capacity,
            worker: WorkerConfig {
                max_subscriptions: self.max_subscriptions,
                high_water_bytes: self.high_water_bytes,
                low_water_bytes: self.low_water_bytes,
                hard_limit_bytes: self.hard_limit_bytes,
                max_lag_ns: self.max_lag_ms.saturating_mul(1_000_000),
                requests: RequestLimits {
                    requests: Rate {
                        per_sec: self.requests_per_sec,
                        burst: self.request_burst.max(1),
                    },
                    strikes: Rate {
                        burst: self.rate_limited_before_close.max(1),
                        ..RequestLimits::default().strikes
                    },
                },
                ..WorkerConfig::default()
            },
            ws: ws::Config {
                max_message_bytes: self.max_message_bytes,
                deflate_threshold_bytes: self.deflate_threshold_bytes,
                ..ws::Config::default()
            },
            allowed_origins: self.allowed_origins.clone(),
            echo_path: self.echo_path.clone(),
            shell: ShellConfig {
                max_connections: self.max_connections,
                ping_interval_ms: self.ping_interval_ms,
                sse_ping_interval_ms: self.sse_ping_interval_ms,
                pong_timeout_ms: self.pong_timeout_ms,
                shutdown_timeout_ms: self.shutdown_timeout_ms,
                socket_send_buffer_bytes: self.socket_send_buffer_bytes,
                kernel_unsent_bytes: self.kernel_unsent_bytes,
            },
            ip_limits: IpLimitConfig {
                max_connections_per_ip: self.max_connections_per_ip,
                handshakes_per_ip_per_sec: self.handshakes_per_ip_per_sec,
            },
            pacing: PacingConfig {
                min_pass_ns: self.min_pass_us.saturating_mul(1_000),
                drain_share_pct: self.drain_share_pct,
                drain_min_ns: self.drain_min_us.saturating_mul(1_000),
                ..PacingConfig::default()
            },
            auth: self.auth.config(),
        }
    }
}

fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    Ok(stop)
}

/// Set by SIGHUP: re-read the JWT keys and the ingest token file.
fn reload_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    Ok(hup)
}

/// Exit status when an engine thread died (`EX_SOFTWARE`): the supervisor
/// restarts the process (see `tickwire::net::health`).
const EXIT_THREAD_DIED: i32 = 70;

/// Waits for SIGTERM/SIGINT; exits the process non-zero if a thread dies.
fn wait_for(stop: &AtomicBool, engine: &Engine) {
    let hup = match reload_flag() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP not handled: no reloads");
            Arc::new(AtomicBool::new(false))
        }
    };
    if let Err(why) = engine.supervise_reloading(stop, &hup) {
        tracing::error!("{why}: exiting with status {EXIT_THREAD_DIED} for a restart");
        std::process::exit(EXIT_THREAD_DIED);
    }
}

/// PROTOCOL §6 allows any Origin when no list is configured; an operator
/// exposing the port beyond loopback should know.
fn warn_if_open_to_any_origin(cfg: &EngineConfig) {
    if cfg.allowed_origins.is_empty() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %cfg.listen,
            "no --allowed-origin: any web page can open WebSockets to this non-loopback address"
        );
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli: Cli = tickwire::config_file::parse()?;
    match cli.command {
        Command::Serve(args) => {
            let stop = stop_flag()?;
            let cfg = args.engine_config();
            cfg.validate().context("invalid configuration")?;
            warn_if_open_to_any_origin(&cfg);
            let engine = Engine::start(cfg).context("starting the engine")?;
            println!("listening on {}", engine.ws_addr);
            println!(
                "ingest protobuf {} json {}",
                engine.ingest.proto_addr, engine.ingest.json_addr
            );
            wait_for(&stop, &engine);
            engine.shutdown();
        }
        Command::Demo {
            serve,
            symbols,
            rate,
            depth,
            seed,
        } => {
            let stop = stop_flag()?;
            let mut cfg = serve.engine_config();
            // The synthetic books hover around `depth`: leave them room.
            let levels = &mut cfg.ingest.market.max_book_levels;
            *levels = (*levels).max(depth.saturating_mul(2));
            cfg.validate().context("invalid configuration")?;
            warn_if_open_to_any_origin(&cfg);
            let engine = Engine::start(cfg.clone()).context("starting the engine")?;
            let feed = demo::spawn(
                DemoFeedConfig {
                    ingest: engine.ingest.proto_addr,
                    synth: SynthConfig {
                        seed,
                        symbols,
                        depth,
                        ..SynthConfig::default()
                    },
                    events_per_sec: rate,
                    token: serve.token.clone(),
                },
                stop.clone(),
            )?;
            let mut shown = engine.ws_addr;
            if shown.ip().is_unspecified() {
                shown.set_ip([127, 0, 0, 1].into());
            }
            println!("listening on {}", engine.ws_addr);
            println!("tickwire demo: open http://{shown}/ for the live dashboard");
            println!(
                "  WebSocket: ws://{shown}/ws   symbols: http://{shown}/symbols   metrics: http://{shown}/metrics"
            );
            println!(
                "  feed handlers: protobuf {}  JSON lines {}",
                engine.ingest.proto_addr, engine.ingest.json_addr
            );
            wait_for(&stop, &engine);
            let _ = feed.join();
            engine.shutdown();
        }
        Command::Echo { listen, echo_path } => {
            let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
            println!("listening on {}", listener.local_addr()?);
            let stop = stop_flag()?;
            tickwire::net::echo::run(listener, &echo_path, stop)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/tickwire.toml");

    /// The keys the annotated example shows, set or commented out (`# key = `).
    fn example_keys(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| {
                let (key, _) = l.trim_start_matches("# ").split_once(" = ")?;
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    .then(|| key.to_owned())
            })
            .collect()
    }

    fn serve(argv: &[&str]) -> ServeArgs {
        let cli: Cli =
            tickwire::config_file::try_parse_from(["tickwire", "serve"].iter().chain(argv))
                .unwrap();
        match cli.command {
            Command::Serve(args) => args,
            other => unreachable!("parsed serve: {other:?}"),
        }
    }

    /// A flag added to `serve` without a line in tuning/tickwire.toml fails
    /// here (it is a key of the file anyway: the keys are the flags).
    #[test]
    fn every_serve_flag_is_a_key_of_the_annotated_example() {
        let cli = Cli::command();
        let flags: BTreeSet<String> =
            tickwire::config_file::key_names(cli.find_subcommand("serve").unwrap())
                .into_iter()
                .collect();
        assert!(flags.contains("max-feeds") && flags.contains("jwt-leeway-secs"));
        assert!(!flags.contains("config") && !flags.contains("help"));
        let shown = example_keys(&std::fs::read_to_string(EXAMPLE).unwrap());
        let missing: Vec<_> = flags.difference(&shown).collect();
        let not_flags: Vec<_> = shown.difference(&flags).collect();
        assert!(missing.is_empty(), "flags not in the example: {missing:?}");
        assert!(
            not_flags.is_empty(),
            "example keys that are no flag: {not_flags:?}"
        );
    }

    /// The example loads and validates, and its values are the built-in
    /// defaults but for the two lines it marks "production".
    #[test]
    fn the_annotated_example_states_the_defaults() {
        let from_file = serve(&["--config", EXAMPLE]).engine_config();
        from_file.validate().unwrap();
        let by_flags = serve(&["--pin", "--max-connections", "1000000"]).engine_config();
        assert_eq!(format!("{from_file:?}"), format!("{by_flags:?}"));
        assert_ne!(
            format!("{from_file:?}"),
            format!("{:?}", serve(&[]).engine_config())
        );
    }

    /// The commented-out examples have the right types too.
    #[test]
    fn the_examples_commented_out_parse() {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let keys = example_keys(&text);
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| keys.contains(k)) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "tickwire-example-uncommented-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, uncommented).unwrap();
        let args = serve(&["--config", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(args.workers, Some(8));
        assert_eq!(args.echo_path.as_deref(), Some("/echo"));
        assert_eq!(args.auth.anonymous_requests_per_sec, Some(5));
    }
}
