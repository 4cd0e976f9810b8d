//! The claims tickwire reads from a verified token (PROTOCOL §8): `sub`,
//! `exp`, `nbf`, and `tw`, the entitlements. Pure: a function of the decoded
//! claims and `now`.
//!
//! Strict about what it reads: a known claim of the wrong type, a number out
//! of range, an unknown channel name or a pattern too expensive to match is
//! `bad_claims`, never a silent default (a token that meant to narrow
//! something must not widen it by a typo). Unknown members of `tw` are
//! ignored, as JWT ignores unknown claims (a newer issuer may add some).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::AuthError;
use super::channel::ChannelSpec;
use super::pattern::PatternSet;

/// Longest `sub`, bytes.
pub const MAX_SUB_BYTES: usize = 256;
/// Most entries in `tw.channels`.
pub const MAX_CHANNELS: usize = 32;
/// Largest `max_connections`, `max_subscriptions`, `requests_per_sec` a token may carry.
pub const MAX_LIMIT: u64 = 1_000_000;
/// Largest `min_interval_ms` (an hour).
pub const MAX_MIN_INTERVAL_MS: u64 = 3_600_000;

/// What a client may do (the `tw` claim, or the `--anonymous-*` flags).
/// `None` is "not limited by the entitlement" (the server's own limits
/// still apply).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entitlements {
    /// Symbol patterns; `None`: any symbol.
    pub symbols: Option<PatternSet>,
    /// Channels, each allowing its coarser views too ([`ChannelSpec::covers`]);
    /// `None`: any channel.
    pub channels: Option<Vec<ChannelSpec>>,
    /// Largest N of `book.N` (`book` counts as unlimited, so it is refused).
    pub max_depth: Option<u32>,
    /// Smallest conflation interval, ms; 0: real time allowed.
    pub min_interval_ms: u32,
    /// Connections this user may hold at once on this node.
    pub max_connections: Option<u32>,
    /// Symbol-channels one connection may hold (at most the server's limit).
    pub max_subscriptions: Option<u32>,
    /// Requests per second of one connection (at most the server's limit).
    pub requests_per_sec: Option<u32>,
}

impl Entitlements {
    /// Everything allowed (a connection when authentication is off).
    pub fn unlimited() -> Entitlements {
        Entitlements::default()
    }

    /// Whether `channel` may be subscribed: covered by some listed channel,
    /// within `max_depth` and `min_interval_ms`.
    pub fn allows_channel(&self, channel: ChannelSpec) -> bool {
        if let Some(list) = &self.channels
            && !list.iter().any(|g| g.covers(channel))
        {
            return false;
        }
        match channel {
            ChannelSpec::Trades => true,
            ChannelSpec::Book { depth, interval_ms } => {
                let depth_ok = match (self.max_depth, depth) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(m), Some(d)) => d <= m,
                };
                depth_ok && interval_ms >= self.min_interval_ms
            }
        }
    }

    pub fn allows_symbol(&self, symbol: &str) -> bool {
        self.symbols.as_ref().is_none_or(|s| s.matches(symbol))
    }

    /// Reads the `tw` claim (an object).
    pub fn from_claim(tw: &Value) -> Result<Entitlements, &'static str> {
        let obj = tw.as_object().ok_or("tw must be an object")?;
        let symbols = match obj.get("symbols") {
            None => None,
            Some(v) => {
                let list = strings(v, "tw.symbols must be an array of strings")?;
                Some(PatternSet::parse(list).map_err(|e| match e {
                    super::pattern::PatternError::TooManyPatterns => "too many symbol patterns",
                    super::pattern::PatternError::TooManyWildcards => {
                        "too many symbol patterns with '*'"
                    }
                    super::pattern::PatternError::TooManyStars => {
                        "a symbol pattern has too many '*'"
                    }
                    super::pattern::PatternError::TooLong => "a symbol pattern is too long",
                    _ => "a symbol pattern is not a symbol with '*'",
                })?)
            }
        };
        let channels = match obj.get("channels") {
            None => None,
            Some(v) => {
                let list = strings(v, "tw.channels must be an array of strings")?;
                let mut out = Vec::new();
                for (n, name) in list.enumerate() {
                    if n == MAX_CHANNELS {
                        return Err("too many channels");
                    }
                    out.push(ChannelSpec::parse(name).ok_or("unknown channel in tw.channels")?);
                }
                Some(out)
            }
        };
        Ok(Entitlements {
            symbols,
            channels,
            max_depth: limit(
                obj,
                "max_depth",
                1,
                u64::from(super::channel::MAX_BOOK_DEPTH),
            )?,
            min_interval_ms: limit(obj, "min_interval_ms", 0, MAX_MIN_INTERVAL_MS)?.unwrap_or(0),
            max_connections: limit(obj, "max_connections", 1, MAX_LIMIT)?,
            max_subscriptions: limit(obj, "max_subscriptions", 0, MAX_LIMIT)?,
            requests_per_sec: limit(obj, "requests_per_sec", 1, MAX_LIMIT)?,
        })
    }
}

fn strings<'a>(
    v: &'a Value,
    why: &'static str,
) -> Result<impl Iterator<Item = &'a str> + 'a, &'static str> {
    let arr = v.as_array().ok_or(why)?;
    if arr.iter().any(|x| !x.is_string()) {
        return Err(why);
    }
    Ok(arr.iter().filter_map(Value::as_str))
}

/// An optional integer member within `[min, max]`.
fn limit(
    obj: &Map<String, Value>,
    key: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u32>, &'static str> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    let n = v.as_u64().ok_or(match key {
        "max_depth" => "tw.max_depth must be an integer from 1 to 100",
        "min_interval_ms" => "tw.min_interval_ms must be a non-negative integer",
        "max_connections" => "tw.max_connections must be a positive integer",
        "max_subscriptions" => "tw.max_subscriptions must be a non-negative integer",
        _ => "tw.requests_per_sec must be a positive integer",
    })?;
    if n < min || n > max {
        return Err(match key {
            "max_depth" => "tw.max_depth out of range",
            "min_interval_ms" => "tw.min_interval_ms out of range",
            "max_connections" => "tw.max_connections out of range",
            "max_subscriptions" => "tw.max_subscriptions out of range",
            _ => "tw.requests_per_sec out of range",
        });
    }
    // `max` is at most MAX_LIMIT, which fits.
    Ok(Some(n as u32))
}

/// A verified token's claims, as a connection holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user (`sub`).
    pub sub: Arc<str>,
    /// `exp`, seconds since the Unix epoch.
    pub exp_s: u64,
    pub entitlements: Arc<Entitlements>,
}

/// A NumericDate (RFC 7519 §2): non-negative seconds, fractions allowed
/// (rounded, as `jsonwebtoken` reads them). `None` for anything else.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (0.0..u64::MAX as f64)
        .contains(&f)
        .then(|| f.round() as u64)
}

impl Claims {
    /// Reads the claims of a token whose signature, issuer and audience were
    /// checked, at `now_s` (Unix seconds) with `leeway_s` of clock skew
    /// allowed either way: expired from `exp + leeway` on (RFC 7519 §4.1.4:
    /// the time must be before `exp`), not yet valid while `now_s + leeway < nbf`.
    pub fn parse(v: &Value, now_s: u64, leeway_s: u64) -> Result<Claims, AuthError> {
        let obj = v
            .as_object()
            .ok_or(AuthError::BadClaims("claims must be an object"))?;
        let exp_s = match obj.get("exp") {
            None => return Err(AuthError::BadClaims("exp is required")),
            Some(e) => numeric_date(e).ok_or(AuthError::BadClaims("exp must be a NumericDate"))?,
        };
        let nbf_s = match obj.get("nbf") {
            None => None,
            Some(n) => {
                Some(numeric_date(n).ok_or(AuthError::BadClaims("nbf must be a NumericDate"))?)
            }
        };
        let sub = match obj.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUB_BYTES => s,
            Some(Value::String(_)) => {
                return Err(AuthError::BadClaims("sub must be 1 to 256 bytes"));
            }
            Some(_) => return Err(AuthError::BadClaims("sub must be a string")),
            None => return Err(AuthError::BadClaims("sub is required")),
        };
        let entitlements = match obj.get("tw") {
            None => Entitlements::unlimited(),
            Some(tw) => Entitlements::from_claim(tw).map_err(AuthError::BadClaims)?,
        };
        if now_s >= exp_s.saturating_add(leeway_s) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = nbf_s
            && now_s.saturating_add(leeway_s) < nbf
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(Claims {
            sub: Arc::from(sub.as_str()),
            exp_s,
            entitlements: Arc::new(entitlements),
        })
    }

    /// When the connection holding these claims must close with 4004:
    /// `exp + leeway`, Unix ns (the moment a verification first calls the
    /// token expired).
    pub fn expires_at_unix_ns(&self, leeway_s: u64) -> u64 {
        self.exp_s
            .saturating_add(leeway_s)
            .saturating_mul(1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_732_870_000;

    fn parse(v: Value) -> Result<Claims, AuthError> {
        Claims::parse(&v, NOW, 60)
    }

    fn ch(s: &str) -> ChannelSpec {
        ChannelSpec::parse(s).unwrap()
    }

    #[test]
    fn reads_every_entitlement() {
        let c = parse(json!({
            "sub": "alice", "exp": NOW + 600,
            "tw": {
                "symbols": ["BTC-*", "ETH-USD"],
                "channels": ["book.10@1000ms", "trades"],
                "max_depth": 10, "min_interval_ms": 1000,
                "max_connections": 2, "max_subscriptions": 50, "requests_per_sec": 5,
                "future_thing": {"x": 1}
            }
        }))
        .unwrap();
        assert_eq!(&*c.sub, "alice");
        assert_eq!(c.exp_s, NOW + 600);
        let e = &c.entitlements;
        assert!(e.allows_symbol("BTC-USD"));
        assert!(e.allows_symbol("ETH-USD"));
        assert!(!e.allows_symbol("SOL-USD"));
        assert!(e.allows_channel(ch("book.10@1000ms")));
        assert!(e.allows_channel(ch("book.5@2000ms")));
        assert!(e.allows_channel(ch("trades")));
        assert!(!e.allows_channel(ch("book")));
        assert!(!e.allows_channel(ch("book.10@500ms")));
        assert_eq!(e.max_connections, Some(2));
        assert_eq!(e.max_subscriptions, Some(50));
        assert_eq!(e.requests_per_sec, Some(5));
    }

    #[test]
    fn no_tw_is_unlimited() {
        let c = parse(json!({"sub": "bob", "exp": NOW + 1})).unwrap();
        assert_eq!(*c.entitlements, Entitlements::unlimited());
        assert!(c.entitlements.allows_channel(ChannelSpec::BOOK));
        assert!(c.entitlements.allows_symbol("ANY"));
    }

    /// `max_depth` and `min_interval_ms` alone, without a channel list:
    /// `book` counts as unlimited depth and interval 0.
    #[test]
    fn depth_and_interval_limits_alone() {
        let e = Entitlements::from_claim(&json!({"max_depth": 20})).unwrap();
        assert!(!e.allows_channel(ch("book")));
        assert!(!e.allows_channel(ch("book@100ms")));
        assert!(e.allows_channel(ch("book.20")));
        assert!(!e.allows_channel(ch("book.21")));
        assert!(e.allows_channel(ch("trades")));
        let e = Entitlements::from_claim(&json!({"min_interval_ms": 100})).unwrap();
        assert!(!e.allows_channel(ch("book")));
        assert!(!e.allows_channel(ch("book.5@50ms")));
        assert!(e.allows_channel(ch("book@100ms")));
        assert!(e.allows_channel(ch("book.5@5000ms")));
        assert!(e.allows_channel(ch("trades")));
        let e = Entitlements::from_claim(&json!({"channels": ["trades"]})).unwrap();
        assert!(!e.allows_channel(ch("book")));
        assert!(e.allows_channel(ch("trades")));
    }

    #[test]
    fn time_claims_with_leeway() {
        assert!(parse(json!({"sub": "a", "exp": NOW - 59})).is_ok());
        assert_eq!(
            parse(json!({"sub": "a", "exp": NOW - 60})),
            Err(AuthError::Expired)
        );
        assert!(parse(json!({"sub": "a", "exp": NOW + 9, "nbf": NOW + 60})).is_ok());
        assert_eq!(
            parse(json!({"sub": "a", "exp": NOW + 900, "nbf": NOW + 61})),
            Err(AuthError::NotYetValid)
        );
        assert!(parse(json!({"sub": "a", "exp": (NOW + 1) as f64 + 0.5})).is_ok());
        let c = Claims::parse(&json!({"sub": "a", "exp": NOW + 2}), NOW, 0).unwrap();
        assert_eq!(c.expires_at_unix_ns(0), (NOW + 2) * 1_000_000_000);
    }

    #[test]
    fn wrong_types_are_bad_claims() {
        for v in [
            json!([]),
            json!({"sub": "a"}),
            json!({"sub": "a", "exp": "soon"}),
            json!({"sub": "a", "exp": -1}),
            json!({"sub": "a", "exp": 1e300}),
            json!({"sub": "a", "exp": NOW, "nbf": "x"}),
            json!({"exp": NOW}),
            json!({"sub": 7, "exp": NOW}),
            json!({"sub": "", "exp": NOW}),
            json!({"sub": "x".repeat(257), "exp": NOW}),
            json!({"sub": "a", "exp": NOW, "tw": []}),
            json!({"sub": "a", "exp": NOW, "tw": {"symbols": "BTC-USD"}}),
            json!({"sub": "a", "exp": NOW, "tw": {"symbols": ["BTC", 1]}}),
            json!({"sub": "a", "exp": NOW, "tw": {"symbols": ["a*a*a*a*a*a"]}}),
            json!({"sub": "a", "exp": NOW, "tw": {"symbols": ["BTC USD"]}}),
            json!({"sub": "a", "exp": NOW, "tw": {"channels": ["quotes"]}}),
            json!({"sub": "a", "exp": NOW, "tw": {"channels": "book"}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_depth": 0}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_depth": 101}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_depth": "10"}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_depth": 10.5}}),
            json!({"sub": "a", "exp": NOW, "tw": {"min_interval_ms": -5}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_connections": 0}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_connections": true}}),
            json!({"sub": "a", "exp": NOW, "tw": {"max_subscriptions": 1e12}}),
            json!({"sub": "a", "exp": NOW, "tw": {"requests_per_sec": 0}}),
            json!({"sub": "a", "exp": NOW, "tw": {"requests_per_sec": null}}),
        ] {
            match parse(v.clone()) {
                Err(AuthError::BadClaims(why)) => assert!(why.len() < 80, "{why}"),
                other => panic!("{v}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..=MAX_CHANNELS).map(|_| "trades".to_string()).collect();
        assert!(matches!(
            parse(json!({"sub": "a", "exp": NOW, "tw": {"channels": many}})),
            Err(AuthError::BadClaims(_))
        ));
    }
}
