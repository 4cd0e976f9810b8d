//! Starts the engine: the ingest thread, N workers each with its own
//! `SO_REUSEPORT` listener on the client port, and the rings between them.
//! [`Engine::shutdown`] stops them gracefully: each worker stops accepting,
//! closes its clients with 1001 and flushes for at most the shutdown timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use mio::{Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::auth::AuthMode;
use crate::book::resume::HistoryLimits;
use crate::config::{AuthConfig, ConfigError, IngestConfig};
use crate::fanout::limits::IpLimitConfig;
use crate::fanout::render::{DeflateBudget, Renderer, monotonic_ns};
use crate::fanout::ring::WorkerId;
use crate::fanout::worker::{AuthSetup, WorkerConfig, WorkerCore};
use crate::ws;

use super::auth::{AuthShared, load_verifier};
use super::ingest::{IngestHandle, IngestServer, load_feed_tokens};
use super::shared::Shared;
use super::sink::{FanoutSink, RtrbRings};
use crate::fanout::pacing::PacingConfig;

use super::worker::{ShellConfig, Worker, WorkerParams};

/// Everything `tickwire serve` configures.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub ingest: IngestConfig,
    /// The client port (WebSocket and HTTP). Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Worker threads. Default: the available cores.
    pub workers: usize,
    /// Pin worker N to core N (`core_affinity`). Default on; tests turn it off.
    pub pin: bool,
    /// Slots of each ingest → worker ring (messages). Default 65 536.
    pub ring_capacity: usize,
    pub worker: WorkerConfig,
    pub ws: ws::Config,
    /// Allowed `Origin`s; empty: any.
    pub allowed_origins: Vec<String>,
    /// The conformance echo endpoint (off unless set).
    pub echo_path: Option<String>,
    /// Connection caps, heartbeat, shutdown deadline, socket buffers
    /// (defaults: 100 000 connections, ping 30 s, pong 10 s, shutdown 5 s).
    pub shell: ShellConfig,
    /// Per-client-IP connection cap and handshake rate (default: off; behind a
    /// load balancer every client has its address).
    pub ip_limits: IpLimitConfig,
    /// When workers drain their ring, write and sleep (`fanout::pacing`).
    pub pacing: PacingConfig,
    /// Client authentication and entitlements (PROTOCOL §8). Default off.
    pub auth: AuthConfig,
    /// The resume history's bounds (PROTOCOL §10): 8,192 messages per
    /// symbol's book and trades, 10 s, 64 MiB in all.
    pub resume: HistoryLimits,
    /// permessage-deflate: how much of each second the market thread may
    /// spend compressing (PROTOCOL §12, `fanout::render`). Default 100 ms.
    pub deflate_budget: DeflateBudget,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ingest: IngestConfig::default(),
            resume: HistoryLimits::default(),
            deflate_budget: DeflateBudget::default(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: true,
            ring_capacity: 65_536,
            worker: WorkerConfig::default(),
            ws: ws::Config::default(),
            allowed_origins: Vec::new(),
            echo_path: None,
            shell: ShellConfig::default(),
            ip_limits: IpLimitConfig::default(),
            pacing: PacingConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// A running engine.
pub struct Engine {
    /// The bound client address (the real port when `listen` had port 0).
    pub ws_addr: SocketAddr,
    pub ingest: IngestHandle,
    pub shared: Arc<Shared>,
    /// The key files and the ingest token file, for [`Engine::reload`].
    auth: AuthConfig,
    token_file: Option<std::path::PathBuf>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

const WORKER_WAKER: Token = Token(1);

/// A non-blocking listener with `SO_REUSEPORT`, so every worker can bind the port.
fn reuseport_listener(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

impl EngineConfig {
    /// Thresholds that cannot work together are a configuration error at
    /// start, not a surprise under load.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ingest.token.is_some() && self.ingest.token_file.is_some() {
            return Err(ConfigError::TokenAndTokenFile);
        }
        if self.auth.mode != AuthMode::Off && !self.auth.has_keys() {
            return Err(ConfigError::AuthWithoutKey);
        }
        let w = &self.worker;
        let k = self.shell.kernel_unsent_bytes;
        if w.low_water_bytes >= w.high_water_bytes {
            return Err(ConfigError::LowWaterNotBelowHighWater {
                low_water_bytes: w.low_water_bytes,
                high_water_bytes: w.high_water_bytes,
            });
        }
        if w.high_water_bytes >= w.hard_limit_bytes {
            return Err(ConfigError::HighWaterNotBelowHardLimit {
                high_water_bytes: w.high_water_bytes,
                hard_limit_bytes: w.hard_limit_bytes,
            });
        }
        if k > w.low_water_bytes {
            return Err(ConfigError::KernelUnsentAboveLowWater {
                kernel_unsent_bytes: k,
                low_water_bytes: w.low_water_bytes,
            });
        }
        if self.pacing.drain_min_ns > self.pacing.drain_max_ns {
            return Err(ConfigError::DrainMinAboveMax {
                drain_min_ns: self.pacing.drain_min_ns,
                drain_max_ns: self.pacing.drain_max_ns,
            });
        }
        if !(1..=100).contains(&self.pacing.drain_share_pct) {
            return Err(ConfigError::DrainShareOutOfRange(
                self.pacing.drain_share_pct,
            ));
        }
        if self.shell.ping_interval_ms > 0 && self.shell.pong_timeout_ms == 0 {
            return Err(ConfigError::PingWithoutPongTimeout);
        }
        if let Some(b) = &self.ingest.backplane {
            if let Some(o) = &b.origin
                && !crate::cluster::subject::is_valid_origin(o)
            {
                return Err(ConfigError::InvalidOriginId(o.clone()));
            }
            for s in &b.servers {
                if s.parse::<async_nats::ServerAddr>().is_err() {
                    return Err(ConfigError::InvalidNatsServer(s.clone()));
                }
            }
            if b.heartbeat_timeout_ms < 1_500 {
                return Err(ConfigError::BackplaneTimeoutTooShort {
                    heartbeat_timeout_ms: b.heartbeat_timeout_ms,
                });
            }
        }
        Ok(())
    }
}

impl Engine {
    pub fn start(cfg: EngineConfig) -> io::Result<Engine> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let workers = cfg.workers.clamp(1, crate::fanout::router::MAX_WORKERS);
        let ingest = IngestServer::bind(cfg.ingest.clone())?;
        let mut shared = Shared::new(ingest.counters(), ingest.liveness(), workers, cfg.ip_limits);
        if cfg.ingest.backplane.is_some() {
            shared = shared.with_backplane(ingest.backplane_counters());
        }
        let mut auth_setup = AuthSetup::default();
        if cfg.auth.mode != AuthMode::Off {
            let verifier = load_verifier(&cfg.auth)?;
            let anonymous = cfg
                .auth
                .anonymous
                .entitlements()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let shared_auth = AuthShared::new(verifier);
            auth_setup = AuthSetup {
                mode: cfg.auth.mode,
                verifier: Some(shared_auth.verifier().0),
                anonymous: Arc::new(anonymous),
            };
            shared = shared.with_auth(shared_auth);
        }
        let shared = Arc::new(shared);
        let stop = Arc::new(AtomicBool::new(false));
        // The first listener fixes the port (port 0 picks one); the others join it.
        let first = reuseport_listener(cfg.listen)?;
        let ws_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(reuseport_listener(ws_addr)?);
        }
        let mut router = ws::Router::new();
        if !cfg.allowed_origins.is_empty() {
            router = router.with_allowed_origins(cfg.allowed_origins.clone());
        }
        if let Some(p) = &cfg.echo_path {
            router = router.with_echo_path(p.clone());
        }
        let cores = if cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut producers = Vec::new();
        let mut wakers = Vec::new();
        let mut requests = Vec::new();
        let mut params = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WORKER_WAKER)?);
            let (p, ring) = rtrb::RingBuffer::new(cfg.ring_capacity);
            let (to_ingest, req) = rtrb::RingBuffer::new(cfg.ring_capacity.min(16_384));
            producers.push(p);
            wakers.push(waker);
            requests.push(req);
            params.push(WorkerParams {
                id: WorkerId(i as u16),
                poll,
                listener,
                ring,
                to_ingest,
                ingest_waker: ingest.waker(),
                core: {
                    let mut core = WorkerCore::new(cfg.worker);
                    core.set_auth(auth_setup.clone());
                    core.share_streams(shared.streams.clone());
                    core
                },
                ws_config: cfg.ws,
                router: router.clone(),
                shared: shared.clone(),
                stop: stop.clone(),
                shell: cfg.shell,
                pacing: cfg.pacing,
            });
        }
        let sink = FanoutSink::new(
            RtrbRings {
                producers,
                wakers: wakers.clone(),
            },
            requests,
            shared.clone(),
            cfg.resume,
            // One threshold for the shared market-data renderings and the
            // codec's own messages (PROTOCOL §12).
            Renderer::with_budget(
                cfg.ws.deflate_threshold_bytes as usize,
                cfg.deflate_budget,
                monotonic_ns,
            ),
        );
        let ingest = ingest.spawn(Box::new(sink))?;
        let mut threads = Vec::new();
        for (i, p) in params.into_iter().enumerate() {
            let core = cores.get(i % cores.len().max(1)).copied();
            let worker = Worker::new(p)?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        if let Some(core) = core
                            && !core_affinity::set_for_current(core)
                        {
                            warn!(worker = i, "could not pin to core {}", core.id);
                        }
                        worker.run();
                    })?,
            );
        }
        info!(%ws_addr, proto = %ingest.proto_addr, json = %ingest.json_addr, workers, "tickwire serving");
        Ok(Engine {
            ws_addr,
            ingest,
            shared,
            auth: cfg.auth.clone(),
            token_file: cfg.ingest.token_file.clone(),
            stop,
            wakers,
            threads,
        })
    }

    /// Re-reads the JWT key files and the ingest token file (SIGHUP). A file
    /// that no longer reads or parses leaves what was loaded in force (the
    /// error is returned for the log); no connection is dropped, except a
    /// feed whose token the new token file no longer holds.
    pub fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(a) = &self.shared.auth {
            match load_verifier(&self.auth) {
                Ok(v) => {
                    info!(keys = v.keys().len(), "JWT keys reloaded");
                    a.set_verifier(v);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(path) = &self.token_file {
            match load_feed_tokens(path) {
                Ok(t) => self.ingest.set_feed_tokens(t),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The first engine thread that died, if any (see [`super::health`]).
    pub fn failure(&self) -> Option<String> {
        self.shared.health.failure()
    }

    /// Waits until `stop` is set (`Ok`) or an engine thread dies (`Err` with
    /// which one), checking every 50 ms. The binary exits non-zero on `Err`
    /// so that its supervisor restarts it.
    pub fn supervise(&self, stop: &AtomicBool) -> Result<(), String> {
        self.supervise_reloading(stop, &AtomicBool::new(false))
    }

    /// [`Engine::supervise`], and a [`Engine::reload`] each time `reload`
    /// is set (the binary sets it on SIGHUP).
    pub fn supervise_reloading(
        &self,
        stop: &AtomicBool,
        reload: &AtomicBool,
    ) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            if reload.swap(false, Ordering::Relaxed) {
                match self.reload() {
                    Ok(()) => info!("reloaded"),
                    Err(e) => warn!(error = %e, "reload failed; what was loaded stays in force"),
                }
            }
            if let Some(why) = self.failure() {
                return Err(why);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the workers (each stops accepting, closes its clients with 1001
    /// and flushes for at most `shell.shutdown_timeout_ms`) and returns when
    /// they are done.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackplaneSettings;

    /// The defaults, and a valid backplane to break one field of.
    fn valid() -> EngineConfig {
        let cfg = EngineConfig {
            ingest: IngestConfig {
                backplane: Some(BackplaneSettings {
                    servers: vec!["nats://127.0.0.1:4222".into()],
                    origin: Some("origin-1".into()),
                    edge: true,
                    heartbeat_timeout_ms: 3_000,
                }),
                ..IngestConfig::default()
            },
            ..EngineConfig::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
        cfg
    }

    #[test]
    fn low_water_must_be_below_high_water() {
        let mut cfg = valid();
        cfg.worker.low_water_bytes = cfg.worker.high_water_bytes;
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::LowWaterNotBelowHighWater {
                low_water_bytes: 256 << 10,
                high_water_bytes: 256 << 10,
            }
        );
        assert_eq!(
            err.to_string(),
            "low-water (262144) must be below high-water (262144)"
        );
    }

    #[test]
    fn high_water_must_be_below_the_hard_limit() {
        let mut cfg = valid();
        cfg.worker.high_water_bytes = cfg.worker.hard_limit_bytes + 1;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::HighWaterNotBelowHardLimit {
                high_water_bytes: (4 << 20) + 1,
                hard_limit_bytes: 4 << 20,
            })
        );
    }

    #[test]
    fn kernel_unsent_bytes_must_be_at_most_low_water() {
        let mut cfg = valid();
        cfg.shell.kernel_unsent_bytes = cfg.worker.low_water_bytes;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.shell.kernel_unsent_bytes += 1;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::KernelUnsentAboveLowWater {
                kernel_unsent_bytes: (64 << 10) + 1,
                low_water_bytes: 64 << 10,
            })
        );
    }

    #[test]
    fn the_drain_interval_minimum_must_be_at_most_its_maximum() {
        let mut cfg = valid();
        cfg.pacing.drain_min_ns = cfg.pacing.drain_max_ns;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.pacing.drain_min_ns += 1;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::DrainMinAboveMax {
                drain_min_ns: 25_000_001,
                drain_max_ns: 25_000_000,
            })
        );
    }

    #[test]
    fn the_drain_share_is_a_percentage() {
        let mut cfg = valid();
        for ok in [1, 10, 100] {
            cfg.pacing.drain_share_pct = ok;
            assert_eq!(cfg.validate(), Ok(()));
        }
        for bad in [0, 101] {
            cfg.pacing.drain_share_pct = bad;
            assert_eq!(cfg.validate(), Err(ConfigError::DrainShareOutOfRange(bad)));
        }
    }

    #[test]
    fn a_ping_interval_needs_a_pong_timeout() {
        let mut cfg = valid();
        cfg.shell.pong_timeout_ms = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::PingWithoutPongTimeout));
        cfg.shell.ping_interval_ms = 0;
        assert_eq!(cfg.validate(), Ok(()), "no heartbeat at all is allowed");
    }

    #[test]
    fn the_origin_id_must_be_one_subject_token() {
        let mut cfg = valid();
        let b = cfg.ingest.backplane.as_mut().unwrap();
        b.origin = Some("a.b".into());
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::InvalidOriginId("a.b".into()))
        );
    }

    #[test]
    fn nats_servers_must_be_urls() {
        let mut cfg = valid();
        let b = cfg.ingest.backplane.as_mut().unwrap();
        b.servers.push("nats://[bad".into());
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::InvalidNatsServer("nats://[bad".into()))
        );
    }

    #[test]
    fn the_backplane_timeout_must_outlast_a_heartbeat() {
        let mut cfg = valid();
        let b = cfg.ingest.backplane.as_mut().unwrap();
        b.heartbeat_timeout_ms = 1_499;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::BackplaneTimeoutTooShort {
                heartbeat_timeout_ms: 1_499
            })
        );
    }
}
