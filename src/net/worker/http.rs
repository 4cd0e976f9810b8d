//! HTTP answers: the routes of the client port (`/ws` upgrades under the
//! connection and per-IP limits, the dashboard and its SDK bundle, `/healthz`, `/metrics`,
//! `/symbols`, the echo endpoint).

use super::*;
use crate::fanout::request::ErrorCode;
use crate::fanout::worker::SseStart;
use crate::wire::Rendering;

/// The dashboard page served at `GET /` (embedded; no build step).
pub const DASHBOARD_HTML: &str = include_str!("../dashboard.html");

/// The TypeScript SDK's self-contained browser ES module, served at
/// `GET /tickwire.js` for the dashboard's `import` (checked in, built by
/// `npm run bundle` in `clients/ts`; users need no build step).
pub const SDK_JS: &str = include_str!("../../../clients/ts/dist/tickwire.browser.js");

/// `Retry-After` of a 503 (global cap) or a 429 for the per-IP connection cap.
const RETRY_AFTER_SECS: u32 = 1;

impl Worker {
    /// The answer to an upgrade under the connection limits, if refused.
    pub(super) fn check_limits(&mut self, ip: IpAddr, now_ns: u64) -> Option<ws::Response> {
        if self.shared.ip_limits_on {
            let verdict = self.shared.ip_limits().check_upgrade(ip, now_ns);
            match verdict {
                Ok(()) => {}
                Err(IpReject::Connections) => {
                    self.me.counters.reject(Reject::IpConnections);
                    return Some(ws::Response::too_many_requests(RETRY_AFTER_SECS));
                }
                Err(IpReject::HandshakeRate { retry_after_secs }) => {
                    self.me.counters.reject(Reject::IpHandshakeRate);
                    return Some(ws::Response::too_many_requests(retry_after_secs));
                }
            }
        }
        // Reserve the slot first so concurrent workers cannot overshoot the cap.
        if self.shared.ws_open.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_connections {
            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
            self.me.counters.reject(Reject::MaxConnections);
            return Some(ws::Response::service_unavailable(RETRY_AFTER_SECS));
        }
        None
    }

    /// `GET /sse` (PROTOCOL §11): under the same connection limits and
    /// authentication as an upgrade, the core opens the stream (its
    /// subscribe checked as a WebSocket one) or refuses it; a refusal is the
    /// HTTP error with the JSON `Error` body.
    fn open_sse(
        &mut self,
        slot: usize,
        req: &ws::Request,
        open: &ws::sse::SseOpen,
        ip: IpAddr,
        now: Instant,
        now_ns: u64,
    ) {
        self.me.counters.http_requests.inc();
        let respond = |w: &mut Worker, resp: &ws::Response| {
            if let Some(c) = w.clients.get_mut(slot).and_then(Option::as_mut) {
                c.ws.respond(now, resp);
            }
        };
        if let Some(resp) = self.check_limits(ip, now_ns) {
            respond(self, &resp);
            return;
        }
        let mut claims = None;
        if self.auth_on() {
            match self.upgrade_auth(req, now_ns) {
                Ok(c) => claims = c,
                Err(resp) => {
                    self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
                    let resp = if resp.status() == 401 {
                        ws::sse::SseRefusal::unauthorized("unauthorized", "invalid token")
                            .response()
                    } else {
                        resp
                    };
                    respond(self, &resp);
                    return;
                }
            }
        }
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        if let Some(cl) = &claims {
            // Counted in the per-user table: released with the client.
            c.auth.get_or_insert_default().user = Some(cl.sub.clone());
        }
        let mut head = ws::sse::response_head(req.header("Origin"));
        head.extend_from_slice(ws::sse::RETRY);
        let start = SseStart {
            symbols: &open.symbols,
            channels: &open.channels,
            last_event_id: open.last_event_id.as_ref(),
            head: &head,
        };
        match self.core.open_sse(start, claims, now_ns) {
            Ok(id) => {
                c.ws.stream_response();
                c.upgraded = true;
                c.last_read_ns = now_ns;
                c.last_ping_ns = now_ns;
                c.core = Some(id);
                self.me.counters.connections_open.inc();
                self.me.counters.sse_opened.inc();
                let i = id.0 as usize;
                if self.by_core.len() <= i {
                    self.by_core.resize(i + 1, u32::MAX);
                }
                self.by_core[i] = slot as u32;
                self.sync_codec_timer(slot);
                self.sync_auth_deadlines();
            }
            Err(e) => {
                self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
                let refusal = match e.code {
                    ErrorCode::Unauthorized => {
                        ws::sse::SseRefusal::unauthorized(e.code.as_str(), e.message)
                    }
                    ErrorCode::Forbidden => {
                        ws::sse::SseRefusal::forbidden(e.code.as_str(), e.message)
                    }
                    _ => ws::sse::SseRefusal {
                        status: 400,
                        code: e.code.as_str(),
                        message: e.message,
                    },
                };
                c.ws.respond(now, &refusal.response());
            }
        }
    }

    pub(super) fn handle_request(
        &mut self,
        slot: usize,
        req: &ws::Request,
        now: Instant,
        now_ns: u64,
    ) {
        let route = self.router.route(req);
        let Some(ip) = self
            .clients
            .get(slot)
            .and_then(Option::as_ref)
            .map(|c| c.ip)
        else {
            return;
        };
        match route {
            Route::Upgrade(up) => {
                if let Some(resp) = self.check_limits(ip, now_ns) {
                    if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                        c.ws.respond(now, &resp);
                    }
                    return;
                }
                // PROTOCOL §8: a token at the upgrade, after the cheap limits.
                let mut claims = None;
                if up.endpoint == Endpoint::Ws && self.auth_on() {
                    match self.upgrade_auth(req, now_ns) {
                        Ok(c) => claims = c,
                        Err(resp) => {
                            // The slot `check_limits` reserved is not taken.
                            self.shared.ws_open.fetch_sub(1, Ordering::Relaxed);
                            if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                                c.ws.respond(now, &resp);
                            }
                            return;
                        }
                    }
                }
                let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
                    return;
                };
                c.ws.accept(&up);
                c.upgraded = true;
                c.last_read_ns = now_ns;
                c.last_ping_ns = now_ns;
                self.me.counters.connections_open.inc();
                if up.endpoint == Endpoint::Ws {
                    if let Some(cl) = &claims {
                        c.auth.get_or_insert_default().user = Some(cl.sub.clone());
                    }
                    // Compressed market data only under a full window: a
                    // client that narrowed the server's window takes the
                    // shared frames uncompressed (RSV1 clear, RFC 7692 §6).
                    let deflate = up.deflate.is_some_and(|d| d.fits_window(usize::MAX));
                    let rendering = Rendering::websocket(up.encoding, deflate);
                    let id = self.core.open_conn_with(rendering, claims, now_ns);
                    c.core = Some(id);
                    let i = id.0 as usize;
                    if self.by_core.len() <= i {
                        self.by_core.resize(i + 1, u32::MAX);
                    }
                    self.by_core[i] = slot as u32;
                }
                self.sync_auth_deadlines();
            }
            Route::Get(endpoint) => {
                self.me.counters.http_requests.inc();
                let resp = match endpoint {
                    Endpoint::Root => ws::Response::ok("text/html; charset=utf-8", DASHBOARD_HTML),
                    Endpoint::Sdk => ws::Response::ok("text/javascript; charset=utf-8", SDK_JS),
                    Endpoint::Healthz => match self.shared.health.check(now) {
                        Ok(()) => ws::Response::ok("text/plain; charset=utf-8", "ok"),
                        Err(why) => ws::Response::unhealthy(&why),
                    },
                    Endpoint::Metrics => ws::Response::ok(
                        "text/plain; version=0.0.4; charset=utf-8",
                        self.shared.render_metrics(),
                    ),
                    Endpoint::Symbols => ws::Response::ok(
                        "application/json",
                        self.shared.symbols.render_json().into_bytes(),
                    ),
                    Endpoint::Ws | Endpoint::Echo => ws::Response::upgrade_required(),
                    // The router answers /sse with Route::Sse or a refusal, never Get.
                    Endpoint::Sse => ws::Response::not_found(),
                };
                if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                    c.ws.respond(now, &resp);
                }
            }
            Route::Sse(open) => self.open_sse(slot, req, &open, ip, now, now_ns),
            Route::Reject(resp) => {
                self.me.counters.http_requests.inc();
                if resp.status() == 403 {
                    self.me.counters.reject(Reject::OriginForbidden);
                }
                if let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) {
                    c.ws.respond(now, &resp);
                }
            }
        }
    }
}
