//! The WebSocket opening handshake (RFC 6455 §4) on top of [`super::http`],
//! and the router that answers every request on the client port
//! (PROTOCOL §6): which path is known, which method is allowed, whether an
//! upgrade is valid, which encoding the client chose.
//!
//! Also the client side (load generator, tests): building an upgrade request
//! and checking the server's 101.
//!
//! Pure functions, run by the worker that owns the connection. Never touches
//! sockets or the clock, and never answers for data it does not own: plain
//! endpoints (`/healthz`, `/metrics`, …) are routed here but answered by the
//! caller.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use super::deflate::{self, Deflate};
use super::http::{Request, Response, ResponseHead, Version};
use super::sse::{self, SseOpen};
pub use crate::wire::encoding::{Encoding, PROTOCOL_JSON, PROTOCOL_PROTO};

/// RFC 6455 §1.3: the GUID appended to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2 item 5.4):
/// base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The paths the client port serves (PROTOCOL §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/`: the dashboard page.
    Root,
    /// `/tickwire.js`: the TypeScript SDK's browser bundle, which the dashboard imports.
    Sdk,
    /// `/ws`: the tickwire WebSocket.
    Ws,
    /// `/healthz`.
    Healthz,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/symbols`: JSON list of symbols.
    Symbols,
    /// The conformance echo WebSocket (off unless configured).
    Echo,
    /// `/sse`: Server-Sent Events (PROTOCOL §11).
    Sse,
}

impl Endpoint {
    fn is_websocket(self) -> bool {
        matches!(self, Endpoint::Ws | Endpoint::Echo)
    }
}

/// An upgrade that passed every check: what the 101 says and how the
/// connection then behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// [`Endpoint::Ws`] or [`Endpoint::Echo`].
    pub endpoint: Endpoint,
    /// Encoding of server messages (always the default on the echo endpoint).
    pub encoding: Encoding,
    /// The chosen subprotocol, echoed in the 101 (RFC 6455 §4.2.2 item 5.5).
    pub protocol: Option<&'static str>,
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// permessage-deflate, if the client offered it acceptably (PROTOCOL §12).
    pub deflate: Option<Deflate>,
}

impl Upgrade {
    /// The 101 response.
    pub fn response(&self) -> Response {
        let r = Response::switching_protocols(&self.accept, self.protocol);
        match &self.deflate {
            Some(d) => r.with_header("Sec-WebSocket-Extensions", d.response_value()),
            None => r,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Answer 101 and switch to WebSocket ([`super::Conn::accept`]).
    Upgrade(Upgrade),
    /// A plain GET of a known endpoint: the caller builds the 200 (or 503…).
    Get(Endpoint),
    /// A valid `GET /sse` (PROTOCOL §11): the caller checks the token and
    /// entitlements, then answers [`sse::response_head`] and streams.
    Sse(SseOpen),
    /// Answer this error response and close. A refused `/sse` request is
    /// here too, as its [`sse::SseRefusal::response`] (400 with a JSON
    /// `Error` body): the caller answers every refusal alike.
    Reject(Response),
}

/// Routes requests on the client port (PROTOCOL §6).
///
/// Unknown path: 404 whatever the method. Known path, method other than GET:
/// 405. WebSocket path without an upgrade: 426. Then the upgrade checks of
/// RFC 6455 §4.2.1, in this order: HTTP/1.1 and a `Host` (400), version 13
/// (426 with `Sec-WebSocket-Version: 13`), a valid key (400), an allowed
/// `Origin` (403), a valid `?encoding=` (400).
///
/// `GET /sse`: the same `Origin` check (403), then [`sse::parse_open`] on the
/// query and `Last-Event-ID` (400 with a JSON `Error` body).
#[derive(Debug, Clone, Default)]
pub struct Router {
    echo_path: Option<String>,
    allowed_origins: Option<Vec<String>>,
}

impl Router {
    /// Known paths: `/`, `/tickwire.js`, `/ws`, `/sse`, `/healthz`,
    /// `/metrics`, `/symbols`. Any origin.
    pub fn new() -> Router {
        Router::default()
    }

    /// Also serve the conformance echo WebSocket on `path`.
    pub fn with_echo_path(mut self, path: impl Into<String>) -> Router {
        self.echo_path = Some(path.into());
        self
    }

    /// Accept upgrades and SSE streams only from these origins (compared ASCII
    /// case-insensitively). Without a list any origin is accepted; a request
    /// without an `Origin` header (not a browser) is always accepted.
    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> Router {
        self.allowed_origins = Some(origins);
        self
    }

    /// The endpoint at `path`, if any.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        // A configured echo path wins over the built-in paths.
        if self.echo_path.as_deref() == Some(path) {
            return Some(Endpoint::Echo);
        }
        match path {
            "/" => Some(Endpoint::Root),
            "/tickwire.js" => Some(Endpoint::Sdk),
            "/ws" => Some(Endpoint::Ws),
            "/sse" => Some(Endpoint::Sse),
            "/healthz" => Some(Endpoint::Healthz),
            "/metrics" => Some(Endpoint::Metrics),
            "/symbols" => Some(Endpoint::Symbols),
            _ => None,
        }
    }

    /// Decides what `req` gets.
    pub fn route(&self, req: &Request) -> Route {
        let Some(endpoint) = self.endpoint(&req.path) else {
            return Route::Reject(Response::not_found());
        };
        if req.method != "GET" {
            return Route::Reject(Response::method_not_allowed());
        }
        if endpoint == Endpoint::Sse {
            return self.check_sse(req);
        }
        if !endpoint.is_websocket() {
            return Route::Get(endpoint);
        }
        match self.check_upgrade(endpoint, req) {
            Ok(up) => Route::Upgrade(up),
            Err(resp) => Route::Reject(resp),
        }
    }

    /// Whether `req` may proceed under the `Origin` allow-list: no list, no
    /// `Origin` header, or a listed origin.
    fn origin_allowed(&self, req: &Request) -> bool {
        match (&self.allowed_origins, req.header("Origin")) {
            (Some(list), Some(origin)) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
            _ => true,
        }
    }

    /// PROTOCOL §11: the WebSocket upgrade's Origin check, then the query.
    fn check_sse(&self, req: &Request) -> Route {
        if !self.origin_allowed(req) {
            return Route::Reject(Response::forbidden());
        }
        match sse::parse_open(req.query.as_deref(), req.header("Last-Event-ID")) {
            Ok(open) => Route::Sse(open),
            Err(refusal) => Route::Reject(refusal.response()),
        }
    }

    fn check_upgrade(&self, endpoint: Endpoint, req: &Request) -> Result<Upgrade, Response> {
        // RFC 6455 §4.2.1 items 3 and 4: `Upgrade: websocket` and `Connection: Upgrade`.
        if !req.has_token("Upgrade", "websocket") || !req.has_token("Connection", "upgrade") {
            return Err(Response::upgrade_required());
        }
        // Item 1: HTTP/1.1 or higher; item 2: a Host header.
        if req.version < Version::Http11 {
            return Err(Response::bad_request("WebSocket upgrade needs HTTP/1.1"));
        }
        if req.header("Host").is_none() {
            return Err(Response::bad_request("missing Host"));
        }
        // Item 6 and §4.4: version 13, else 426 naming the versions we speak.
        if req.header("Sec-WebSocket-Version") != Some("13") {
            return Err(Response::upgrade_required());
        }
        // Item 5: a base64 nonce that decodes to 16 bytes.
        let key = req.header("Sec-WebSocket-Key").unwrap_or("");
        if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
            return Err(Response::bad_request(
                "missing or invalid Sec-WebSocket-Key",
            ));
        }
        // §10.2: the Origin check that protects browsers (PROTOCOL §6: 403).
        if !self.origin_allowed(req) {
            return Err(Response::forbidden());
        }
        let (encoding, protocol) = match endpoint {
            // The echo endpoint accepts any subprotocol offer and selects none.
            Endpoint::Echo => (Encoding::default(), None),
            _ => choose_encoding(req)?,
        };
        Ok(Upgrade {
            endpoint,
            encoding,
            protocol,
            accept: accept_key(key),
            // RFC 7692 §5: the first acceptable offer; none acceptable is
            // not an error, the 101 just goes without the extension.
            deflate: deflate::negotiate(req.header_list("Sec-WebSocket-Extensions")),
        })
    }
}

/// PROTOCOL §6: the first offered subprotocol we speak wins (and is echoed);
/// else `?encoding=proto|json`; else protobuf. Offers we do not speak are
/// ignored (RFC 6455 §4.2.2: the server selects one of the offers or none).
fn choose_encoding(req: &Request) -> Result<(Encoding, Option<&'static str>), Response> {
    if let Some(enc) = req
        .header_list("Sec-WebSocket-Protocol")
        .find_map(Encoding::from_protocol)
    {
        return Ok((enc, Some(enc.protocol())));
    }
    match req.query_param("encoding") {
        None => Ok((Encoding::default(), None)),
        Some(v) => Encoding::from_query(v)
            .map(|e| (e, None))
            .ok_or_else(|| Response::bad_request("encoding must be proto or json")),
    }
}

/// Why a server's answer to our upgrade is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    #[error(transparent)]
    Http(#[from] super::http::HttpError),
    #[error("server answered {0} instead of 101")]
    Status(u16),
    #[error("missing Upgrade: websocket / Connection: Upgrade")]
    NotUpgraded,
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    #[error("server selected subprotocol {0:?}, which was not offered")]
    UnofferedProtocol(String),
}

/// The client side of the opening handshake (RFC 6455 §4.1).
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: String,
    protocols: Vec<String>,
    deflate: bool,
}

impl ClientHandshake {
    /// `nonce` is the 16 random bytes of `Sec-WebSocket-Key` (RFC 6455 §4.1:
    /// randomly selected; the caller supplies them, this module has no RNG).
    pub fn new(nonce: [u8; 16], protocols: &[&str]) -> ClientHandshake {
        ClientHandshake {
            key: BASE64.encode(nonce),
            protocols: protocols.iter().map(|p| p.to_string()).collect(),
            deflate: false,
        }
    }

    /// Also offer permessage-deflate (RFC 7692); see [`deflate_in_response`]
    /// for what the server answered.
    pub fn with_deflate(mut self) -> ClientHandshake {
        self.deflate = true;
        self
    }

    /// The `Sec-WebSocket-Key` value.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends the upgrade request for `path_and_query` on `host`.
    pub fn write_request(&self, out: &mut Vec<u8>, host: &str, path_and_query: &str) {
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.key
        );
        if !self.protocols.is_empty() {
            req.push_str("Sec-WebSocket-Protocol: ");
            req.push_str(&self.protocols.join(", "));
            req.push_str("\r\n");
        }
        if self.deflate {
            req.push_str(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            );
        }
        req.push_str("\r\n");
        out.extend_from_slice(req.as_bytes());
    }

    /// Checks the server's answer (RFC 6455 §4.1, the client's checks 1–6).
    /// `Ok(Some((protocol, head_len)))` once the head is complete: bytes after
    /// `head_len` are the first WebSocket frames. `Ok(None)`: more bytes needed.
    pub fn read_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(Option<String>, usize)>, ClientHandshakeError> {
        let Some((head, len)) = super::http::parse_response(buf, super::http::MAX_HEAD_BYTES)?
        else {
            return Ok(None);
        };
        check_response(&head, &self.key, &self.protocols).map(|p| Some((p, len)))
    }
}

/// Client side: the permessage-deflate parameters a complete 101 head at the
/// start of `buf` accepted, if any (read it after
/// [`ClientHandshake::read_response`] succeeded).
pub fn deflate_in_response(buf: &[u8]) -> Option<Deflate> {
    let (head, _) = super::http::parse_response(buf, super::http::MAX_HEAD_BYTES)
        .ok()
        .flatten()?;
    deflate::negotiate(head.header_list("Sec-WebSocket-Extensions"))
}

fn check_response(
    head: &ResponseHead,
    key: &str,
    offered: &[String],
) -> Result<Option<String>, ClientHandshakeError> {
    if head.status != 101 {
        return Err(ClientHandshakeError::Status(head.status));
    }
    if !head.has_token("Upgrade", "websocket") || !head.has_token("Connection", "upgrade") {
        return Err(ClientHandshakeError::NotUpgraded);
    }
    if head.header("Sec-WebSocket-Accept") != Some(accept_key(key).as_str()) {
        return Err(ClientHandshakeError::BadAccept);
    }
    match head.header("Sec-WebSocket-Protocol") {
        None => Ok(None),
        Some(p) if offered.iter().any(|o| o == p) => Ok(Some(p.to_owned())),
        Some(p) => Err(ClientHandshakeError::UnofferedProtocol(p.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::{MAX_HEAD_BYTES, parse_request};
    use super::*;

    /// The RFC 6455 §1.3 example key.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(raw: &str) -> Request {
        parse_request(raw.as_bytes(), MAX_HEAD_BYTES)
            .unwrap()
            .unwrap()
            .0
    }

    fn upgrade(path: &str, extra: &str) -> Request {
        req(&format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        ))
    }

    fn status(route: Route) -> u16 {
        match route {
            Route::Upgrade(_) => 101,
            Route::Get(_) | Route::Sse(_) => 200,
            Route::Reject(r) => r.status(),
        }
    }

    fn accepted(route: Route) -> Upgrade {
        match route {
            Route::Upgrade(u) => u,
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    #[test]
    fn rfc_1_3_accept_key() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn upgrade_of_ws_is_101_with_accept_and_default_proto() {
        let up = accepted(Router::new().route(&upgrade("/ws", "")));
        assert_eq!(up.endpoint, Endpoint::Ws);
        assert_eq!(up.encoding, Encoding::Proto);
        assert_eq!(up.protocol, None);
        let bytes = String::from_utf8(up.response().to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(bytes.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!bytes.contains("Sec-WebSocket-Protocol"));
        assert!(!bytes.contains("Content-Length"));
    }

    #[test]
    fn encoding_by_subprotocol_then_query_then_default() {
        let r = Router::new();
        let up = accepted(r.route(&upgrade(
            "/ws",
            "Sec-WebSocket-Protocol: tickwire.v1.json\r\n",
        )));
        assert_eq!(
            (up.encoding, up.protocol),
            (Encoding::Json, Some(PROTOCOL_JSON))
        );
        assert!(
            String::from_utf8(up.response().to_bytes())
                .unwrap()
                .contains("\r\nSec-WebSocket-Protocol: tickwire.v1.json\r\n")
        );
        // First offer we speak wins; unknown offers are skipped.
        let up = accepted(r.route(&upgrade(
            "/ws?encoding=json",
            "Sec-WebSocket-Protocol: chat, tickwire.v1.proto, tickwire.v1.json\r\n",
        )));
        assert_eq!(
            (up.encoding, up.protocol),
            (Encoding::Proto, Some(PROTOCOL_PROTO))
        );
        let up = accepted(r.route(&upgrade("/ws?encoding=json", "")));
        assert_eq!((up.encoding, up.protocol), (Encoding::Json, None));
        let up = accepted(r.route(&upgrade(
            "/ws?encoding=proto",
            "Sec-WebSocket-Protocol: chat\r\n",
        )));
        assert_eq!((up.encoding, up.protocol), (Encoding::Proto, None));
        assert_eq!(status(r.route(&upgrade("/ws?encoding=xml", ""))), 400);
    }

    #[test]
    fn echo_path_accepts_any_or_no_subprotocol_and_is_404_when_not_configured() {
        let r = Router::new().with_echo_path("/echo");
        let up = accepted(r.route(&upgrade("/echo", "Sec-WebSocket-Protocol: whatever\r\n")));
        assert_eq!((up.endpoint, up.protocol), (Endpoint::Echo, None));
        let up = accepted(r.route(&upgrade("/echo?encoding=bogus", "")));
        assert_eq!(up.endpoint, Endpoint::Echo);
        assert_eq!(status(Router::new().route(&upgrade("/echo", ""))), 404);
    }

    #[test]
    fn router_answers_404_405_426_and_routes_plain_gets() {
        let r = Router::new();
        assert_eq!(status(r.route(&req("GET /nope HTTP/1.1\r\n\r\n"))), 404);
        assert_eq!(status(r.route(&req("POST /nope HTTP/1.1\r\n\r\n"))), 404);
        assert_eq!(status(r.route(&req("POST /healthz HTTP/1.1\r\n\r\n"))), 405);
        assert_eq!(status(r.route(&req("DELETE /ws HTTP/1.1\r\n\r\n"))), 405);
        assert_eq!(
            status(r.route(&req("GET /ws HTTP/1.1\r\nHost: h\r\n\r\n"))),
            426
        );
        for (path, ep) in [
            ("/", Endpoint::Root),
            ("/tickwire.js", Endpoint::Sdk),
            ("/healthz", Endpoint::Healthz),
            ("/metrics", Endpoint::Metrics),
            ("/symbols?x=1", Endpoint::Symbols),
        ] {
            assert_eq!(
                r.route(&req(&format!("GET {path} HTTP/1.1\r\n\r\n"))),
                Route::Get(ep)
            );
        }
        let Route::Reject(resp) = r.route(&req("GET /ws HTTP/1.1\r\n\r\n")) else {
            panic!("426 expected");
        };
        assert_eq!(resp.header("Upgrade"), Some("websocket"));
    }

    #[test]
    fn sse_is_routed_with_origin_check_and_json_refusals() {
        let r = Router::new().with_allowed_origins(vec!["https://dash.example".into()]);
        let sse = |target: &str, extra: &str| {
            r.route(&req(&format!(
                "GET {target} HTTP/1.1\r\nHost: h\r\n{extra}\r\n"
            )))
        };
        let Route::Sse(open) = sse(
            "/sse?symbols=BTC-USD,ETH-USD&channels=trades",
            "Origin: https://DASH.example\r\n",
        ) else {
            panic!("an SSE route expected");
        };
        assert_eq!(open.symbols, ["BTC-USD", "ETH-USD"]);
        assert_eq!(open.channels, ["trades"]);
        // Last-Event-ID reaches the parser.
        let token = sse::ResumeToken {
            digest: 9,
            positions: vec![(1, 2)],
        }
        .encode();
        let Route::Sse(open) = sse(
            "/sse?symbols=A&channels=book",
            &format!("Last-Event-ID: {token}\r\n"),
        ) else {
            panic!("an SSE route expected");
        };
        assert_eq!(open.last_event_id.map(|t| t.positions), Some(vec![(1, 2)]));
        // Origin outside the list: the upgrades' 403, before the query.
        assert_eq!(
            sse(
                "/sse?symbols=A&channels=book",
                "Origin: https://evil.example\r\n"
            ),
            Route::Reject(Response::forbidden())
        );
        // A refused query: 400 with the JSON Error body.
        let Route::Reject(resp) = sse("/sse?symbols=A", "") else {
            panic!("a refusal expected");
        };
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.header("Content-Type"), Some("application/json"));
        assert_eq!(
            resp.body(),
            br#"{"type":"error","id":0,"code":"bad_request","message":"missing channels"}"#
        );
        let Route::Reject(resp) = sse("/sse?symbols=A&channels=book", "Last-Event-ID: x\r\n")
        else {
            panic!("a refusal expected");
        };
        assert_eq!(resp.status(), 400);
        assert_eq!(status(r.route(&req("POST /sse HTTP/1.1\r\n\r\n"))), 405);
        assert_eq!(r.endpoint("/sse"), Some(Endpoint::Sse));
    }

    #[test]
    fn bad_version_is_426_with_version_13() {
        let r = Router::new();
        for version in ["8", "14", ""] {
            let raw = format!(
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
            );
            let Route::Reject(resp) = r.route(&req(&raw)) else {
                panic!("426 expected");
            };
            assert_eq!(resp.status(), 426);
            assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"));
        }
    }

    #[test]
    fn missing_or_invalid_key_is_400() {
        let r = Router::new();
        for key_line in [
            "",
            "Sec-WebSocket-Key: \r\n",
            "Sec-WebSocket-Key: not base64!\r\n",
            "Sec-WebSocket-Key: AAAA\r\n",
        ] {
            let raw = format!(
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 {key_line}Sec-WebSocket-Version: 13\r\n\r\n"
            );
            assert_eq!(status(r.route(&req(&raw))), 400, "{key_line:?}");
        }
        // HTTP/1.0 and a missing Host are refused too.
        let raw = format!(
            "GET /ws HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(status(r.route(&req(&raw))), 400);
        let raw = format!(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(status(r.route(&req(&raw))), 400);
    }

    #[test]
    fn origin_allow_list_is_403_outside_and_absent_origin_is_allowed() {
        let r = Router::new().with_allowed_origins(vec!["https://dash.example".into()]);
        assert_eq!(
            status(r.route(&upgrade("/ws", "Origin: https://evil.example\r\n"))),
            403
        );
        assert_eq!(
            status(r.route(&upgrade("/ws", "Origin: HTTPS://DASH.example\r\n"))),
            101
        );
        assert_eq!(status(r.route(&upgrade("/ws", ""))), 101);
        // No list: any origin.
        assert_eq!(
            status(Router::new().route(&upgrade("/ws", "Origin: https://evil.example\r\n"))),
            101
        );
    }

    #[test]
    fn client_request_is_accepted_by_the_router_and_its_101_by_the_client() {
        let hs = ClientHandshake::new(*b"the sample nonce", &[PROTOCOL_JSON]);
        assert_eq!(hs.key(), KEY);
        let mut out = Vec::new();
        hs.write_request(&mut out, "127.0.0.1:8080", "/ws");
        let request = parse_request(&out, MAX_HEAD_BYTES).unwrap().unwrap().0;
        let up = accepted(Router::new().route(&request));
        assert_eq!(up.encoding, Encoding::Json);

        let mut resp = up.response().to_bytes();
        let head_len = resp.len();
        resp.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(hs.read_response(&resp[..head_len - 1]), Ok(None));
        assert_eq!(
            hs.read_response(&resp),
            Ok(Some((Some(PROTOCOL_JSON.to_owned()), head_len)))
        );
    }

    #[test]
    fn deflate_offer_is_answered_with_no_context_takeover_or_declined() {
        let r = Router::new().with_echo_path("/echo");
        for path in ["/ws", "/echo"] {
            let up = accepted(r.route(&upgrade(
                path,
                "Sec-WebSocket-Extensions: x-foo, permessage-deflate; client_max_window_bits\r\n",
            )));
            assert!(up.deflate.is_some());
            let bytes = String::from_utf8(up.response().to_bytes()).unwrap();
            assert!(bytes.contains(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover\r\n"
            ));
        }
        // A bad offer is declined, not an error: 101 without the extension.
        let up = accepted(r.route(&upgrade(
            "/ws",
            "Sec-WebSocket-Extensions: permessage-deflate; bogus=1\r\n",
        )));
        assert_eq!(up.deflate, None);
        assert!(
            !String::from_utf8(up.response().to_bytes())
                .unwrap()
                .contains("Sec-WebSocket-Extensions")
        );
        // Offers split over two header lines.
        let up = accepted(r.route(&upgrade(
            "/ws",
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=3\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n",
        )));
        assert_eq!(up.deflate.unwrap().server_max_window_bits, Some(9));
        assert_eq!(accepted(r.route(&upgrade("/ws", ""))).deflate, None);
    }

    #[test]
    fn client_rejects_a_bad_101() {
        let hs = ClientHandshake::new([7; 16], &[]);
        let ok = Response::switching_protocols(&accept_key(hs.key()), None);
        assert!(matches!(
            hs.read_response(&ok.to_bytes()),
            Ok(Some((None, _)))
        ));
        let wrong = Response::switching_protocols("AAAA", None).to_bytes();
        assert_eq!(
            hs.read_response(&wrong),
            Err(ClientHandshakeError::BadAccept)
        );
        let unoffered = Response::switching_protocols(&accept_key(hs.key()), Some("x")).to_bytes();
        assert_eq!(
            hs.read_response(&unoffered),
            Err(ClientHandshakeError::UnofferedProtocol("x".into()))
        );
        let not_found = Response::not_found().to_bytes();
        assert_eq!(
            hs.read_response(&not_found),
            Err(ClientHandshakeError::Status(404))
        );
        let no_upgrade = Response::new(101).to_bytes();
        assert_eq!(
            hs.read_response(&no_upgrade),
            Err(ClientHandshakeError::NotUpgraded)
        );
    }
}
