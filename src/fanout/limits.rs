//! Admission limits of PROTOCOL §6–§7 and DESIGN "Connections", as pure
//! state machines: the per-connection request rate ([`RequestLimiter`]) and
//! the per-client-IP connection count and handshake rate ([`IpLimits`]).
//!
//! Owns nothing but counters. Run by whichever thread holds the state: a
//! worker core (request rate, per connection) or the shell's accept path
//! (per IP). Never reads the clock (`now_ns` is an argument, any monotonic
//! origin) and never allocates per request.
//!
//! Both use GCRA (the "virtual scheduling" form of a leaky bucket, as in
//! ATM traffic policing and most HTTP rate limiters): one timestamp per
//! bucket, the *theoretical arrival time*, instead of a token count and a
//! refill time. A bucket of rate `r`/s and burst `b` admits a request at
//! `now` when `tat - now <= (b - 1) / r`; then `tat = max(tat, now) + 1 / r`.

use std::collections::HashMap;
use std::net::IpAddr;

/// A leaky bucket as one timestamp (GCRA). 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gcra {
    tat_ns: u64,
}

/// A rate and a burst. `per_sec == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained events per second; 0: unlimited.
    pub per_sec: u32,
    /// Events admitted back to back from a full bucket (at least 1).
    pub burst: u32,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0,
        burst: 1,
    };

    fn interval_ns(self) -> u64 {
        1_000_000_000 / u64::from(self.per_sec.max(1))
    }

    fn tolerance_ns(self) -> u64 {
        self.interval_ns() * u64::from(self.burst.max(1) - 1)
    }
}

impl Gcra {
    /// Takes one event at `now_ns`: `Ok` if admitted, else `Err(wait_ns)`,
    /// the time until it would be.
    pub fn take(&mut self, rate: Rate, now_ns: u64) -> Result<(), u64> {
        if rate.per_sec == 0 {
            return Ok(());
        }
        let tat = self.tat_ns.max(now_ns);
        let ahead = tat - now_ns;
        let tolerance = rate.tolerance_ns();
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        self.tat_ns = tat + rate.interval_ns();
        Ok(())
    }

    /// Whether the bucket is back to full (it then carries no information
    /// and may be forgotten).
    pub fn is_full(&self, now_ns: u64) -> bool {
        self.tat_ns <= now_ns
    }
}

/// Per-connection request limits (PROTOCOL §6: `rate_limited`; §7: 4002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Client requests. Default 10/s, burst 20.
    pub requests: Rate,
    /// Rate-limited requests a connection may make before it is closed with
    /// 4002: the bucket of "strikes" leaks at `per_sec` and holds `burst`.
    /// Default 1/s, burst 10 (so: more than 10 refused requests in a row, or
    /// more than one refused per second sustained, closes).
    pub strikes: Rate,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            requests: Rate {
                per_sec: 10,
                burst: 20,
            },
            strikes: Rate {
                per_sec: 1,
                burst: 10,
            },
        }
    }
}

/// What a request gets from the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate: handle it.
    Allow,
    /// Over the rate: answer `Error{rate_limited}` (never dropped).
    Limited,
    /// Over the rate once too often: close with 4002.
    Close,
}

/// One connection's request-rate state: 16 bytes, kept beside (not inside)
/// the core's one-cache-line `Conn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestLimiter {
    requests: Gcra,
    strikes: Gcra,
}

impl RequestLimiter {
    pub fn check(&mut self, limits: &RequestLimits, now_ns: u64) -> RateVerdict {
        if self.requests.take(limits.requests, now_ns).is_ok() {
            return RateVerdict::Allow;
        }
        if limits.strikes.per_sec == 0 || self.strikes.take(limits.strikes, now_ns).is_ok() {
            RateVerdict::Limited
        } else {
            RateVerdict::Close
        }
    }
}

/// Per-client-IP limits. 0 disables a limit (the default: behind a load
/// balancer every client shares its address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpLimitConfig {
    /// Connections (TCP, handshaking or open) one IP may hold; the upgrade of
    /// one more is answered 429. 0: unlimited.
    pub max_connections_per_ip: u32,
    /// WebSocket handshakes per IP per second (burst: the same number); over
    /// it, 429 with `Retry-After`. 0: unlimited.
    pub handshakes_per_ip_per_sec: u32,
}

/// Why an upgrade is refused by [`IpLimits::check_upgrade`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpReject {
    /// The IP holds `max_connections_per_ip` connections already.
    Connections,
    /// The IP handshakes too often: retry after this many whole seconds.
    HandshakeRate { retry_after_secs: u32 },
}

#[derive(Debug, Clone, Copy, Default)]
struct IpEntry {
    conns: u32,
    handshakes: Gcra,
}

/// Connection counts and handshake buckets per client IP.
///
/// # Invariants
///
/// - `entries[ip].conns` equals the `connect(ip)` calls not yet matched by
///   `disconnect(ip)`.
/// - An entry exists only while its count is non-zero or its handshake bucket
///   is not full ([`IpLimits::sweep`] forgets the others): memory follows the
///   live clients, not every address ever seen.
#[derive(Debug, Default)]
pub struct IpLimits {
    cfg: IpLimitConfig,
    entries: HashMap<IpAddr, IpEntry>,
}

impl IpLimits {
    pub fn new(cfg: IpLimitConfig) -> IpLimits {
        IpLimits {
            cfg,
            entries: HashMap::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.cfg.max_connections_per_ip != 0 || self.cfg.handshakes_per_ip_per_sec != 0
    }

    /// A TCP connection from `ip` was accepted.
    pub fn connect(&mut self, ip: IpAddr) {
        if self.enabled() {
            self.entries.entry(ip).or_default().conns += 1;
        }
    }

    /// A connection from `ip` (counted by `connect`) is gone.
    pub fn disconnect(&mut self, ip: IpAddr, now_ns: u64) {
        if let Some(e) = self.entries.get_mut(&ip) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 && e.handshakes.is_full(now_ns) {
                self.entries.remove(&ip);
            }
        }
    }

    /// A connection from `ip` (already counted) asks to upgrade at `now_ns`.
    pub fn check_upgrade(&mut self, ip: IpAddr, now_ns: u64) -> Result<(), IpReject> {
        if !self.enabled() {
            return Ok(());
        }
        let cfg = self.cfg;
        let e = self.entries.entry(ip).or_default();
        if cfg.max_connections_per_ip != 0 && e.conns > cfg.max_connections_per_ip {
            return Err(IpReject::Connections);
        }
        let rate = Rate {
            per_sec: cfg.handshakes_per_ip_per_sec,
            burst: cfg.handshakes_per_ip_per_sec,
        };
        e.handshakes
            .take(rate, now_ns)
            .map_err(|wait_ns| IpReject::HandshakeRate {
                retry_after_secs: wait_ns.div_ceil(1_000_000_000).max(1) as u32,
            })
    }

    /// Forgets addresses with no connection and a full bucket (O(entries):
    /// call on a slow period).
    pub fn sweep(&mut self, now_ns: u64) {
        self.entries
            .retain(|_, e| e.conns > 0 || !e.handshakes.is_full(now_ns));
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn gcra_admits_a_burst_then_the_rate() {
        let rate = Rate {
            per_sec: 10,
            burst: 3,
        };
        let mut g = Gcra::default();
        let t0 = 5 * S;
        for _ in 0..3 {
            assert_eq!(g.take(rate, t0), Ok(()));
        }
        assert_eq!(g.take(rate, t0), Err(100 * MS));
        // One more every 100 ms.
        assert_eq!(g.take(rate, t0 + 99 * MS), Err(MS));
        assert_eq!(g.take(rate, t0 + 100 * MS), Ok(()));
        assert!(g.take(rate, t0 + 100 * MS).is_err());
        // Idle refills to the burst, not beyond.
        assert!(!g.is_full(t0 + 300 * MS));
        assert!(g.is_full(t0 + 400 * MS));
        let t1 = t0 + 10 * S;
        for _ in 0..3 {
            assert_eq!(g.take(rate, t1), Ok(()));
        }
        assert!(g.take(rate, t1).is_err());
        // Unlimited.
        for _ in 0..1000 {
            assert_eq!(g.take(Rate::UNLIMITED, 0), Ok(()));
        }
    }

    #[test]
    fn request_limiter_limits_then_closes_sustained_abuse() {
        let limits = RequestLimits {
            requests: Rate {
                per_sec: 10,
                burst: 5,
            },
            strikes: Rate {
                per_sec: 1,
                burst: 3,
            },
        };
        let mut l = RequestLimiter::default();
        let t = S;
        for _ in 0..5 {
            assert_eq!(l.check(&limits, t), RateVerdict::Allow);
        }
        for _ in 0..3 {
            assert_eq!(l.check(&limits, t), RateVerdict::Limited);
        }
        assert_eq!(l.check(&limits, t), RateVerdict::Close);
        // A client that backs off is forgiven: strikes leak at 1/s.
        let mut l = RequestLimiter::default();
        for _ in 0..5 {
            assert_eq!(l.check(&limits, t), RateVerdict::Allow);
        }
        assert_eq!(l.check(&limits, t), RateVerdict::Limited);
        assert_eq!(l.check(&limits, t), RateVerdict::Limited);
        let later = t + 5 * S;
        assert_eq!(l.check(&limits, later), RateVerdict::Allow);
        // Two tries per second at 10/s with burst 5 never trips it.
        let mut l = RequestLimiter::default();
        for i in 0..200 {
            assert_eq!(l.check(&limits, t + i * 500 * MS), RateVerdict::Allow);
        }
        assert_eq!(std::mem::size_of::<RequestLimiter>(), 16);
    }

    #[test]
    fn ip_limits_count_connections_and_handshakes_per_address() {
        let mut ips = IpLimits::new(IpLimitConfig {
            max_connections_per_ip: 2,
            handshakes_per_ip_per_sec: 3,
        });
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let t = 10 * S;
        ips.connect(a);
        ips.connect(a);
        assert_eq!(ips.check_upgrade(a, t), Ok(()));
        assert_eq!(ips.check_upgrade(a, t), Ok(()));
        ips.connect(a);
        assert_eq!(ips.check_upgrade(a, t), Err(IpReject::Connections));
        ips.connect(b);
        assert_eq!(
            ips.check_upgrade(b, t),
            Ok(()),
            "other addresses unaffected"
        );
        ips.disconnect(a, t);
        // Back under the cap, but the handshake rate (3/s) is spent.
        assert_eq!(ips.check_upgrade(a, t), Ok(()));
        assert_eq!(
            ips.check_upgrade(a, t),
            Err(IpReject::HandshakeRate {
                retry_after_secs: 1
            })
        );
        assert_eq!(ips.check_upgrade(a, t + S), Ok(()));
        // Everyone leaves: entries go once their buckets are full again.
        ips.disconnect(a, t + S);
        ips.disconnect(a, t + S);
        ips.disconnect(b, t + S);
        assert_eq!(ips.len(), 1, "a's bucket still counts handshakes");
        ips.sweep(t + 3 * S);
        assert!(ips.is_empty());
        // Disabled: nothing is tracked.
        let mut off = IpLimits::new(IpLimitConfig::default());
        for _ in 0..100 {
            off.connect(a);
            assert_eq!(off.check_upgrade(a, t), Ok(()));
        }
        assert!(off.is_empty());
        off.disconnect(a, t);
    }
}
