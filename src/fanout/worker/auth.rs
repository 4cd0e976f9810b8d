//! Authentication and entitlements of the worker's connections (PROTOCOL §8):
//! each connection's tier (open, anonymous, authenticating, a user), the
//! `auth` request and its refresh, the entitlement check of a subscription,
//! the per-connection request rate and subscription limit the tier gives,
//! and the deadlines (5 s to authenticate, the token's `exp`) that the shell
//! keeps in its timing wheel.
//!
//! Time is an input: deadlines are monotonic ns like every other of the
//! core's; tokens speak Unix seconds, so the shell tells the core the offset
//! between its clock and the Unix clock ([`WorkerCore::set_unix_offset_ns`]).
//! The per-user connection count is the shell's (a table shared by every
//! worker): a new user is admitted through the `admit` callback of
//! [`WorkerCore::handle_text_admit`], the only place it is asked.
//!
//! Never: logs a token, keeps one after it was verified, or checks
//! entitlements on the delivery path (only where subscriptions change).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::{ConnId, ConnState, WorkerCore};
use crate::auth::{AuthMode, AuthResult, ChannelSpec, Claims, Entitlements, Verifier};
use crate::book::SymbolId;
use crate::book::derived::Channel;
use crate::fanout::limits::{Rate, RequestLimits};
use crate::fanout::request::{ErrorCode, RequestError};
use crate::fanout::ring::Lane;
use crate::wire::Rendering;
use crate::wire::close::CloseCode;
use crate::wire::pb::{self, server_message::Body};

/// How a worker authenticates (one per process; the verifier is swapped
/// whole when the keys are reloaded).
#[derive(Debug, Clone, Default)]
pub struct AuthSetup {
    pub mode: AuthMode,
    /// The key set and checks; `None` only when `mode` is off.
    pub verifier: Option<Arc<Verifier>>,
    /// What a client without a token gets under `--auth optional`.
    pub anonymous: Arc<Entitlements>,
}

/// Why the shell refused an upgrade for its token (PROTOCOL §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    Unauthorized,
    /// 429: the user holds its `max_connections` in this process.
    UserConnections,
}

/// A connection's standing, as counted by `tickwire_connections_by_tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Authentication is off: everything the server allows.
    Open,
    /// `--auth optional` without a token: the anonymous entitlements.
    Anonymous,
    /// `--auth required`, no token yet: only `auth` is served.
    Pending,
    /// Authenticated: the token's entitlements.
    User,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Open, Tier::Anonymous, Tier::Pending, Tier::User];

    pub fn label(self) -> &'static str {
        match self {
            Tier::Open => "open",
            Tier::Anonymous => "anonymous",
            Tier::Pending => "pending",
            Tier::User => "user",
        }
    }
}

/// What one connection holds (cold: beside `conns`, like the limiters).
#[derive(Debug, Clone, Default)]
pub(super) enum ConnAuth {
    #[default]
    Open,
    Anonymous,
    Pending {
        deadline_ns: u64,
    },
    User(Box<UserAuth>),
}

#[derive(Debug, Clone)]
pub(super) struct UserAuth {
    sub: Arc<str>,
    exp_s: u64,
    /// `exp + leeway`, monotonic ns: close 4004 from then on.
    expires_at_ns: u64,
    entitlements: Arc<Entitlements>,
}

impl ConnAuth {
    fn tier(&self) -> Tier {
        match self {
            ConnAuth::Open => Tier::Open,
            ConnAuth::Anonymous => Tier::Anonymous,
            ConnAuth::Pending { .. } => Tier::Pending,
            ConnAuth::User(_) => Tier::User,
        }
    }
}

/// The core's authentication state.
#[derive(Debug, Default)]
pub(super) struct CoreAuth {
    setup: AuthSetup,
    /// Unix ns minus monotonic ns (set by the shell).
    unix_offset_ns: i128,
    pub(super) conns: Vec<ConnAuth>,
    /// Deadlines for the shell's wheel: (connection, monotonic ns).
    deadlines: VecDeque<(ConnId, u64)>,
}

impl CoreAuth {
    fn unix_s(&self, now_ns: u64) -> u64 {
        let unix_ns = i128::from(now_ns) + self.unix_offset_ns;
        u64::try_from(unix_ns.max(0) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    fn mono_ns(&self, unix_ns: u64) -> u64 {
        let mono = i128::from(unix_ns) - self.unix_offset_ns;
        u64::try_from(mono.max(0)).unwrap_or(u64::MAX)
    }

    fn leeway_s(&self) -> u64 {
        self.setup
            .verifier
            .as_ref()
            .map_or(0, |v| v.config().leeway_s)
    }

    fn user(&self, claims: Claims) -> UserAuth {
        UserAuth {
            expires_at_ns: self.mono_ns(claims.expires_at_unix_ns(self.leeway_s())),
            sub: claims.sub,
            exp_s: claims.exp_s,
            entitlements: claims.entitlements,
        }
    }
}

/// The entitlement check's view of a channel.
fn spec(c: Channel) -> ChannelSpec {
    match c {
        Channel::Trades => ChannelSpec::Trades,
        Channel::Book { depth, interval } => ChannelSpec::Book {
            depth: depth.map(|d| d.get() as u32),
            interval_ms: interval.map_or(0, |i| i.ms()),
        },
    }
}

fn unauthorized(id: u64, message: impl Into<String>) -> RequestError {
    RequestError {
        id,
        code: ErrorCode::Unauthorized,
        message: message.into(),
    }
}

fn forbidden(id: u64, message: impl Into<String>) -> RequestError {
    RequestError {
        id,
        code: ErrorCode::Forbidden,
        message: message.into(),
    }
}

impl WorkerCore {
    /// Sets how connections authenticate (before the first connection).
    pub fn set_auth(&mut self, setup: AuthSetup) {
        self.auth.setup = setup;
    }

    /// A reloaded key set (SIGHUP): later verifications use it; connections
    /// keep what they were given.
    pub fn set_verifier(&mut self, verifier: Arc<Verifier>) {
        self.auth.setup.verifier = Some(verifier);
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.auth.setup.mode
    }

    /// The key set and checks in force for new verifications.
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.auth.setup.verifier.as_ref()
    }

    /// The Unix clock as the shell reads it, with the monotonic `now_ns` of
    /// the same moment: how the core turns token times into deadlines.
    pub fn set_unix_offset_ns(&mut self, unix_ns: u64, now_ns: u64) {
        self.auth.unix_offset_ns = i128::from(unix_ns) - i128::from(now_ns);
    }

    /// A new connection after its upgrade, with the claims of the token it
    /// presented there (verified and admitted by the shell), if any.
    /// Without claims: open when authentication is off, anonymous when it
    /// is optional, and authenticating (5 s) when it is required.
    pub fn open_conn_with(
        &mut self,
        rendering: impl Into<Rendering>,
        claims: Option<Claims>,
        now_ns: u64,
    ) -> ConnId {
        let id = self.alloc_conn(rendering.into());
        let state = match (claims, self.auth.setup.mode) {
            (Some(c), _) => {
                let user = self.auth.user(c);
                self.auth.deadlines.push_back((id, user.expires_at_ns));
                ConnAuth::User(Box::new(user))
            }
            (None, AuthMode::Off) => ConnAuth::Open,
            (None, AuthMode::Optional) => ConnAuth::Anonymous,
            (None, AuthMode::Required) => {
                let deadline_ns = now_ns.saturating_add(crate::auth::AUTH_DEADLINE_NS);
                self.auth.deadlines.push_back((id, deadline_ns));
                ConnAuth::Pending { deadline_ns }
            }
        };
        self.auth.conns[id.0 as usize] = state;
        id
    }

    /// A deadline for the shell's wheel: call [`WorkerCore::handle_auth_timer`]
    /// for that connection at that time. A later one for the same connection
    /// replaces the earlier.
    pub fn poll_auth_deadline(&mut self) -> Option<(ConnId, u64)> {
        self.auth.deadlines.pop_front()
    }

    /// A connection's auth deadline came: close 4005 if it never
    /// authenticated, 4004 if its token expired (nothing more is sent: what
    /// was queued and not started is dropped); otherwise (refreshed) the
    /// next deadline is reported again.
    pub fn handle_auth_timer(&mut self, conn: ConnId, now_ns: u64) {
        let i = conn.0 as usize;
        if self.conns.get(i).map(|c| c.state) != Some(ConnState::Open) {
            return;
        }
        match &self.auth.conns[i] {
            ConnAuth::Pending { deadline_ns } if now_ns >= *deadline_ns => {
                self.stats.auth_results[AuthResult::Timeout as usize] += 1;
                self.stats.rejected_unauthorized += 1;
                self.close_for_auth(
                    conn.0,
                    CloseCode::UNAUTHORIZED,
                    "authentication timeout",
                    false,
                );
            }
            ConnAuth::User(u) if now_ns >= u.expires_at_ns => {
                self.stats.token_expired_closes += 1;
                self.close_for_auth(conn.0, CloseCode::TOKEN_EXPIRED, "token expired", true);
            }
            ConnAuth::Pending { deadline_ns } => {
                self.auth.deadlines.push_back((conn, *deadline_ns));
            }
            ConnAuth::User(u) => self.auth.deadlines.push_back((conn, u.expires_at_ns)),
            ConnAuth::Open | ConnAuth::Anonymous => {}
        }
    }

    /// The shell's answer to an upgrade's token, counted with the core's
    /// (one place for `/metrics`): its result, and the refusal if any.
    pub fn note_upgrade_auth(&mut self, result: AuthResult, refused: Option<UpgradeRefusal>) {
        self.stats.auth_results[result as usize] += 1;
        match refused {
            Some(UpgradeRefusal::Unauthorized) => self.stats.rejected_unauthorized += 1,
            Some(UpgradeRefusal::UserConnections) => self.stats.rejected_user_connections += 1,
            None => {}
        }
    }

    /// The user a connection authenticated as, if any.
    pub fn conn_user(&self, conn: ConnId) -> Option<&Arc<str>> {
        match self.auth.conns.get(conn.0 as usize)? {
            ConnAuth::User(u) => Some(&u.sub),
            _ => None,
        }
    }

    pub fn conn_tier(&self, conn: ConnId) -> Option<Tier> {
        if self.conns.get(conn.0 as usize)?.state == ConnState::Free {
            return None;
        }
        Some(self.auth.conns[conn.0 as usize].tier())
    }

    /// Connections per tier, indexed like [`Tier::ALL`].
    pub(super) fn tier_counts(&self) -> [usize; 4] {
        let mut out = [0; 4];
        for (c, a) in self.conns.iter().zip(&self.auth.conns) {
            if c.state != ConnState::Free {
                out[a.tier() as usize] += 1;
            }
        }
        out
    }

    /// Whether `conn` may make subscription requests (not still authenticating).
    pub(super) fn may_subscribe(&self, conn: u32) -> bool {
        !matches!(self.auth.conns[conn as usize], ConnAuth::Pending { .. })
    }

    /// The entitlements that limit `conn` (`None`: only the server's limits).
    pub(super) fn entitlements(&self, conn: u32) -> Option<&Entitlements> {
        match &self.auth.conns[conn as usize] {
            ConnAuth::Open | ConnAuth::Pending { .. } => None,
            ConnAuth::Anonymous => Some(&self.auth.setup.anonymous),
            ConnAuth::User(u) => Some(&u.entitlements),
        }
    }

    /// The request rate of `conn`: the server's, or the entitlement's when lower.
    pub(super) fn request_limits(&self, conn: u32) -> RequestLimits {
        let mut limits = self.cfg.requests;
        if let Some(rps) = self.entitlements(conn).and_then(|e| e.requests_per_sec) {
            let server = limits.requests.per_sec;
            if server == 0 || rps < server {
                limits.requests = Rate {
                    per_sec: rps,
                    burst: limits.requests.burst.min(rps.saturating_mul(2)).max(1),
                };
            }
        }
        limits
    }

    /// The subscription limit of `conn`: the server's, or the entitlement's when lower.
    pub(super) fn max_subscriptions(&self, conn: u32) -> usize {
        let server = self.cfg.max_subscriptions;
        self.entitlements(conn)
            .and_then(|e| e.max_subscriptions)
            .map_or(server, |m| server.min(m as usize))
    }

    /// PROTOCOL §8: every symbol and channel of a subscribe within the
    /// entitlements, or `forbidden` (checked after `bad_request`, before
    /// `too_many_subscriptions`).
    pub(super) fn check_entitlements(
        &self,
        conn: u32,
        id: u64,
        symbols: &[String],
        channels: impl Iterator<Item = Channel>,
    ) -> Result<(), RequestError> {
        let Some(e) = self.entitlements(conn) else {
            return Ok(());
        };
        for c in channels {
            if !e.allows_channel(spec(c)) {
                return Err(forbidden(id, format!("channel \"{c}\" not allowed")));
            }
        }
        for s in symbols {
            if !e.allows_symbol(s) {
                return Err(forbidden(id, format!("symbol {s:?} not allowed")));
            }
        }
        Ok(())
    }

    /// Until authenticated, every other request gets this.
    pub(super) fn not_authenticated(id: u64) -> RequestError {
        unauthorized(
            id,
            "authenticate first: {\"op\":\"auth\",\"token\":\"<jwt>\"}",
        )
    }

    /// An `auth` request (PROTOCOL §8). A bad token: `Error{unauthorized}`
    /// then close 4005. A first valid one: `admit(sub, max_connections)`
    /// asks the shell's user table; refused, close 4006. A valid one of the
    /// same user (a refresh, `exp` not earlier than the one held) replaces
    /// it; another user's or an older one is `forbidden` and changes
    /// nothing. After a success, `Authenticated`, then an `Unsubscribed`
    /// (id 0) for what the new entitlements no longer allow.
    pub(super) fn handle_auth(
        &mut self,
        conn: u32,
        id: u64,
        token: &str,
        now_ns: u64,
        admit: &mut dyn FnMut(&Arc<str>, Option<u32>) -> bool,
    ) -> Result<(), RequestError> {
        let Some(verifier) = self.auth.setup.verifier.clone() else {
            return Err(RequestError {
                id,
                code: ErrorCode::BadRequest,
                message: "authentication is off".into(),
            });
        };
        if self.auth.setup.mode == AuthMode::Off {
            return Err(RequestError {
                id,
                code: ErrorCode::BadRequest,
                message: "authentication is off".into(),
            });
        }
        let claims = match verifier.verify(token, self.auth.unix_s(now_ns)) {
            Ok(c) => c,
            Err(e) => {
                self.stats.auth_results[AuthResult::from(&e) as usize] += 1;
                self.answer_error(conn, unauthorized(id, e.to_string()), now_ns);
                self.close_for_auth(conn, CloseCode::UNAUTHORIZED, "unauthorized", false);
                return Ok(());
            }
        };
        let i = conn as usize;
        let refresh = match &self.auth.conns[i] {
            ConnAuth::User(u) => {
                if u.sub != claims.sub {
                    self.stats.auth_results[AuthResult::OtherUser as usize] += 1;
                    return Err(forbidden(id, "a token of another user"));
                }
                if claims.exp_s < u.exp_s {
                    self.stats.auth_results[AuthResult::Older as usize] += 1;
                    return Err(forbidden(id, "a token older than the one held"));
                }
                true
            }
            _ => false,
        };
        if !refresh && !admit(&claims.sub, claims.entitlements.max_connections) {
            self.stats.auth_results[AuthResult::Ok as usize] += 1;
            self.stats.rejected_user_connections += 1;
            self.close_for_auth(
                conn,
                CloseCode::USER_CONNECTIONS,
                "too many connections for this user",
                false,
            );
            return Ok(());
        }
        self.stats.auth_results[if refresh {
            AuthResult::Refreshed
        } else {
            AuthResult::Ok
        } as usize] += 1;
        let answer = pb::ServerMessage {
            body: Some(Body::Authenticated(pb::Authenticated {
                id,
                sub: claims.sub.to_string(),
                expires_at_ns: claims.exp_s.saturating_mul(1_000_000_000),
            })),
        };
        let user = self.auth.user(claims);
        self.auth
            .deadlines
            .push_back((ConnId(conn), user.expires_at_ns));
        self.auth.conns[i] = ConnAuth::User(Box::new(user));
        self.send_control(conn, &answer, now_ns);
        self.end_disallowed(conn, now_ns);
        Ok(())
    }

    /// Ends the subscriptions of `conn` its entitlements no longer allow,
    /// with one `Unsubscribed` (id 0) per channel.
    fn end_disallowed(&mut self, conn: u32, now_ns: u64) {
        let Some(e) = self.entitlements(conn).cloned() else {
            return;
        };
        let held: Vec<(SymbolId, Lane)> = self
            .subs
            .conn_subs(conn)
            .iter()
            .map(|c| (c.symbol, c.channel))
            .collect();
        let mut ended: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (symbol, lane) in held {
            let name = self.name_of(symbol);
            let channel = self.channel_of(symbol, lane);
            if e.allows_channel(spec(channel)) && e.allows_symbol(&name) {
                continue;
            }
            if let Some(t) = self.subs.remove(conn, symbol, lane) {
                self.emit_transitions(symbol, lane, t, false);
            }
            ended
                .entry(channel.to_string())
                .or_default()
                .push(name.to_string());
        }
        for (channel, symbols) in ended {
            let msg = pb::ServerMessage {
                body: Some(Body::Unsubscribed(pb::Unsubscribed {
                    id: 0,
                    symbols,
                    channels: vec![channel.to_string()],
                })),
            };
            self.send_control(conn, &msg, now_ns);
        }
    }

    /// Closes `conn` for an auth reason: out of every index now (and, for
    /// an expired token, nothing queued and not started goes out), the close
    /// reported through `poll_close`.
    fn close_for_auth(&mut self, conn: u32, code: CloseCode, reason: &'static str, discard: bool) {
        let c = &mut self.conns[conn as usize];
        if c.state != ConnState::Open {
            return;
        }
        c.state = ConnState::Closing;
        self.remove_all_subs(conn);
        if discard {
            self.conns[conn as usize]
                .outbox
                .discard_unstarted(&mut self.frames);
        }
        self.closes.push_back((ConnId(conn), code, reason));
    }
}
