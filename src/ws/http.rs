//! HTTP/1.1 messages, as much as a WebSocket server needs: incremental request
//! parsing (the upgrade and the plain endpoints), response parsing for the
//! client side of the handshake, and response building.
//!
//! Owns nothing but the bytes of one request head while it arrives; run by the
//! worker that owns the connection. Never touches sockets or the clock and
//! never panics on peer bytes: "need more bytes" is `Ok(None)`, anything else
//! an [`HttpError`] with its status code.
//!
//! Limits (PROTOCOL §6): a request head (request line + header fields) over
//! [`MAX_HEAD_BYTES`] is answered 431. Request bodies are not supported: every
//! endpoint is a GET, and a server answers with `Connection: close`.

use std::fmt::Write as _;

/// Default limit on a request head, in bytes (PROTOCOL §6: 8 KiB).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header fields accepted in one head.
const MAX_HEADERS: usize = 100;

/// Why a request (or response) head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head exceeds the limit without ending (431).
    #[error("request header fields exceed {0} bytes")]
    HeadTooLarge(usize),
    /// Not an HTTP/1.x message (400).
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge(_) => 431,
            HttpError::Malformed(_) => 400,
        }
    }

    /// The complete response for this error.
    pub fn response(&self) -> Response {
        match self {
            HttpError::HeadTooLarge(_) => Response::header_fields_too_large(),
            HttpError::Malformed(why) => Response::bad_request(why),
        }
    }
}

/// HTTP minor version: `HTTP/1.0` or `HTTP/1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path of the request target, without the query.
    pub path: String,
    /// The query (after `?`), if any.
    pub query: Option<String>,
    pub version: Version,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_values(&self.headers, name)
    }

    /// The comma-separated elements of every `name` header, trimmed
    /// (RFC 9110 §5.6.1: `Connection: keep-alive, Upgrade`).
    pub fn header_list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_list(&self.headers, name)
    }

    /// Whether header `name` lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_list(name)
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The value of query parameter `key` (first occurrence, not
    /// percent-decoded; tickwire's parameters are plain ASCII).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then_some(v)
        })
    }

    /// All header fields as (name, value), names as sent.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_list<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    header_values(headers, name)
        .flat_map(|v| v.split(','))
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

/// Where the head ends: the index just past the empty line, if present.
/// Lines end in CRLF; a bare LF is accepted too (RFC 9112 §2.2). `from` is
/// where to resume scanning (a previous call's `buf.len()`).
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Resume a little before `from` so a terminator split across calls is seen.
    let start = from.saturating_sub(3);
    let mut i = start;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + nl;
        // The line before this LF is empty if it is preceded by LF or CRLF.
        let empty = match at {
            0 => true,
            1 => buf[0] == b'\r',
            _ => buf[at - 1] == b'\n' || (buf[at - 1] == b'\r' && buf[at - 2] == b'\n'),
        };
        if empty {
            return Some(at + 1);
        }
        i = at + 1;
    }
    None
}

/// Splits a complete head into lines without their CRLF / LF.
fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses header field lines (RFC 9112 §5) up to the empty line.
fn parse_fields<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        // RFC 9112 §5.2: obsolete line folding is rejected.
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HttpError::Malformed("folded header line"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::Malformed("header line without a colon"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // RFC 9112 §5.1: no whitespace between the field name and the colon.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::Malformed("invalid header name"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::Malformed("control character in header value"));
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::Malformed("too many header fields"));
        }
        let value = String::from_utf8_lossy(value);
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
    }
    Ok(headers)
}

fn parse_version(v: &[u8]) -> Result<Version, HttpError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        _ => Err(HttpError::Malformed("unsupported HTTP version")),
    }
}

/// Checks and splits a request line: `method SP target SP version`.
fn parse_request_line(line: &[u8]) -> Result<(String, String, Option<String>, Version), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("method"));
    }
    let version = parse_version(version)?;
    // Origin form only (RFC 9112 §3.2.1): a path starting with '/'.
    if target.first() != Some(&b'/') || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(HttpError::Malformed("request target"));
    }
    // ASCII was checked just above, so these conversions are lossless.
    let target = String::from_utf8_lossy(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.into_owned(), None),
    };
    Ok((
        String::from_utf8_lossy(method).into_owned(),
        path,
        query,
        version,
    ))
}

/// Parses a request head at the start of `buf`. `Ok(Some((request,
/// head_len)))` when complete: bytes after `head_len` belong to whatever
/// follows (for an upgrade, the first WebSocket frames). `Ok(None)`: more bytes
/// are needed. A head longer than `max_head_bytes` is [`HttpError::HeadTooLarge`].
pub fn parse_request(
    buf: &[u8],
    max_head_bytes: usize,
) -> Result<Option<(Request, usize)>, HttpError> {
    RequestParser::new(max_head_bytes).parse_from(buf, 0)
}

/// Parses a request head that arrives in pieces, without rescanning what it
/// has already seen.
#[derive(Debug, Clone)]
pub struct RequestParser {
    buf: Vec<u8>,
    max_head_bytes: usize,
}

impl RequestParser {
    pub fn new(max_head_bytes: usize) -> RequestParser {
        RequestParser {
            buf: Vec::new(),
            max_head_bytes,
        }
    }

    /// Adds the next bytes. When the head is complete, returns the request and
    /// the bytes that followed it in the stream (pipelined data), and the
    /// parser is spent.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(Request, Vec<u8>)>, HttpError> {
        let scanned = self.buf.len();
        self.buf.extend_from_slice(bytes);
        match self.parse_from(&self.buf, scanned)? {
            Some((req, head_len)) => {
                let rest = self.buf.split_off(head_len);
                self.buf = Vec::new();
                Ok(Some((req, rest)))
            }
            None => Ok(None),
        }
    }

    fn parse_from(
        &self,
        buf: &[u8],
        scanned: usize,
    ) -> Result<Option<(Request, usize)>, HttpError> {
        // Only the bytes within the limit are judged, and a byte that no
        // request line may hold is reported alike in a complete or a partial
        // line: the answer never depends on how the head was split into reads.
        let within = &buf[..buf.len().min(self.max_head_bytes)];
        let newline = within.iter().position(|&b| b == b'\n');
        let line = &within[..newline.unwrap_or(within.len())];
        // Fail fast on a request line that can never be valid (a TLS hello, a
        // port scan) instead of waiting for a head that never ends. Re-checking
        // the first line on each push is cheap: it is at most one line.
        if line
            .iter()
            .any(|&b| !(b.is_ascii_graphic() || b == b' ' || b == b'\r'))
        {
            return Err(HttpError::Malformed("request line"));
        }
        if newline.is_some() {
            parse_request_line(line.strip_suffix(b"\r").unwrap_or(line))?;
        }
        // A head that ends beyond the limit is not found within it: 431.
        let Some(end) = find_head_end(within, scanned.min(within.len())) else {
            if buf.len() > self.max_head_bytes {
                return Err(HttpError::HeadTooLarge(self.max_head_bytes));
            }
            return Ok(None);
        };
        let mut lines = head_lines(&buf[..end]);
        let first = lines.next().ok_or(HttpError::Malformed("empty request"))?;
        let (method, path, query, version) = parse_request_line(first)?;
        let headers = parse_fields(lines)?;
        Ok(Some((
            Request {
                method,
                path,
                query,
                version,
                headers,
            },
            end,
        )))
    }
}

/// A parsed response head (the client side of the opening handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: Version,
    headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    pub fn has_token(&self, name: &str, token: &str) -> bool {
        header_list(&self.headers, name).any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The comma-separated elements of every `name` header, trimmed.
    pub fn header_list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_list(&self.headers, name)
    }
}

/// Parses a response head at the start of `buf`; like [`parse_request`].
pub fn parse_response(
    buf: &[u8],
    max_head_bytes: usize,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let Some(end) = find_head_end(buf, 0) else {
        if buf.len() > max_head_bytes {
            return Err(HttpError::HeadTooLarge(max_head_bytes));
        }
        return Ok(None);
    };
    let mut lines = head_lines(&buf[..end]);
    let status_line = lines.next().ok_or(HttpError::Malformed("status line"))?;
    let mut parts = status_line.splitn(3, |&b| b == b' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed("status line"));
    };
    let version = parse_version(version)?;
    let status = std::str::from_utf8(code)
        .ok()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("status code"))?;
    let headers = parse_fields(lines)?;
    Ok(Some((
        ResponseHead {
            status,
            version,
            headers,
        },
        end,
    )))
}

/// An HTTP response to write: status, header fields, body.
///
/// Every response but 101 carries `Content-Length` and `Connection: close`:
/// the server answers one request per connection, then closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// The reason phrase for the statuses tickwire sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

impl Response {
    /// A response with `status`, no header fields and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// 200 with a body of `content_type`.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response::new(200)
            .with_header("Content-Type", content_type)
            .with_body(body)
    }

    /// `status` with a short plain-text body.
    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(format!("{body}\n"))
    }

    pub fn bad_request(why: &str) -> Response {
        Response::text(400, &format!("bad request: {why}"))
    }

    /// 401 for a bad token at the upgrade (RFC 6750 §3: the scheme and the
    /// error code in `WWW-Authenticate`).
    pub fn invalid_token() -> Response {
        Response::text(401, "unauthorized: invalid token")
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
    }

    pub fn forbidden() -> Response {
        Response::text(403, "origin not allowed")
    }

    pub fn not_found() -> Response {
        Response::text(404, "not found")
    }

    /// 405 with `Allow: GET` (RFC 9110 §15.5.6: a 405 MUST list the allowed methods).
    pub fn method_not_allowed() -> Response {
        Response::text(405, "method not allowed").with_header("Allow", "GET")
    }

    /// 426 (RFC 6455 §4.2.2, RFC 9110 §15.5.22): names the protocol to
    /// upgrade to and the WebSocket version understood.
    pub fn upgrade_required() -> Response {
        Response::text(426, "upgrade required: WebSocket version 13")
            .with_header("Upgrade", "websocket")
            .with_header("Sec-WebSocket-Version", "13")
    }

    /// 429 with `Retry-After` in seconds.
    pub fn too_many_requests(retry_after_secs: u32) -> Response {
        Response::text(429, "too many requests")
            .with_header("Retry-After", retry_after_secs.to_string())
    }

    pub fn header_fields_too_large() -> Response {
        Response::text(431, "request header fields too large")
    }

    /// 503 with `Retry-After` in seconds (e.g. max connections reached).
    pub fn service_unavailable(retry_after_secs: u32) -> Response {
        Response::text(503, "service unavailable")
            .with_header("Retry-After", retry_after_secs.to_string())
    }

    /// 503 for `/healthz` when a thread died or stalled: the reason as body.
    pub fn unhealthy(why: &str) -> Response {
        Response::text(503, why)
    }

    /// 101 for an accepted WebSocket upgrade (RFC 6455 §4.2.2).
    pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Response {
        let r = Response::new(101)
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade")
            .with_header("Sec-WebSocket-Accept", accept);
        match protocol {
            Some(p) => r.with_header("Sec-WebSocket-Protocol", p),
            None => r,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends the response in wire format.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(128);
        // Writing into a String cannot fail.
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if self.status != 101 {
            let _ = write!(
                head,
                "Content-Length: {}\r\nConnection: close\r\n",
                self.body.len()
            );
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
    }

    /// The response in wire format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UPGRADE: &[u8] = b"GET /ws?encoding=json&x=1 HTTP/1.1\r\n\
        Host: example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Origin: http://example.com\r\n\r\n";

    fn parse(bytes: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(bytes, MAX_HEAD_BYTES)
    }

    #[test]
    fn parses_method_path_query_and_headers() {
        let (req, used) = parse(UPGRADE).unwrap().unwrap();
        assert_eq!(used, UPGRADE.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query.as_deref(), Some("encoding=json&x=1"));
        assert_eq!(req.query_param("encoding"), Some("json"));
        assert_eq!(req.query_param("x"), Some("1"));
        assert_eq!(req.query_param("y"), None);
        assert_eq!(req.version, Version::Http11);
        assert_eq!(req.header("HOST"), Some("example.com"));
        assert_eq!(
            req.header("sec-websocket-key"),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert!(req.has_token("connection", "upgrade"));
        assert!(req.has_token("Connection", "KEEP-ALIVE"));
        assert!(!req.has_token("Connection", "close"));
        assert_eq!(req.headers().len(), 6);
    }

    #[test]
    fn repeated_headers_and_token_lists_across_lines() {
        let raw = b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nconnection:Upgrade \r\n\r\n";
        let (req, _) = parse(raw).unwrap().unwrap();
        assert_eq!(
            req.header_list("Connection").collect::<Vec<_>>(),
            ["keep-alive", "Upgrade"]
        );
        assert!(req.has_token("connection", "upgrade"));
    }

    #[test]
    fn pipelined_bytes_after_the_head_are_left_alone() {
        let mut raw = UPGRADE.to_vec();
        raw.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, used) = parse(&raw).unwrap().unwrap();
        assert_eq!(&raw[used..], &[0x81, 0x80, 1, 2, 3, 4]);

        let mut p = RequestParser::new(MAX_HEAD_BYTES);
        let (req, rest) = p.push(&raw).unwrap().unwrap();
        assert_eq!(req.path, "/ws");
        assert_eq!(rest, [0x81, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let (req, used) = parse(b"GET /healthz HTTP/1.0\nHost: x\n\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(
            (req.path.as_str(), req.version, used),
            ("/healthz", Version::Http10, 31)
        );
    }

    #[test]
    fn incomplete_heads_need_more_bytes() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"GET / HT"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), Ok(None));
    }

    #[test]
    fn head_over_8k_is_431_and_just_under_is_fine() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        raw.resize(MAX_HEAD_BYTES - 4, b'a');
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw.len(), MAX_HEAD_BYTES);
        assert!(parse(&raw).unwrap().is_some());

        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        let err = parse(&big).unwrap_err();
        assert_eq!(err, HttpError::HeadTooLarge(MAX_HEAD_BYTES));
        assert_eq!(err.status(), 431);
        assert_eq!(err.response().status(), 431);

        // Also when it ends, but too late.
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&big).unwrap_err().status(), 431);

        // And when it arrives in pieces.
        let mut p = RequestParser::new(MAX_HEAD_BYTES);
        let mut res = Ok(None);
        for chunk in big.chunks(1000) {
            res = p.push(chunk);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res.unwrap_err().status(), 431);
    }

    #[test]
    fn malformed_requests_are_400() {
        for raw in [
            &b"GET / HTTP/1.1 extra\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.status(), 400, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn an_impossible_request_line_fails_before_the_head_ends() {
        // A TLS ClientHello starts with 0x16 0x03.
        assert_eq!(parse(b"\x16\x03\x01\x02\x00").unwrap_err().status(), 400);
        assert_eq!(parse(b"HELLO THERE\r\n").unwrap_err().status(), 400);
        let mut p = RequestParser::new(MAX_HEAD_BYTES);
        assert_eq!(p.push(b"GET / HTTP/1.1").unwrap(), None);
        assert_eq!(p.push(b"x\r\n").unwrap_err().status(), 400);
    }

    #[test]
    fn response_heads_parse() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00";
        let (head, used) = parse_response(raw, MAX_HEAD_BYTES).unwrap().unwrap();
        assert_eq!((head.status, used), (101, raw.len() - 2));
        assert!(head.has_token("connection", "upgrade"));
        assert_eq!(head.header("upgrade"), Some("websocket"));
        assert_eq!(parse_response(b"HTTP/1.1 10", MAX_HEAD_BYTES), Ok(None));
        assert!(parse_response(b"HTTP/1.1 1x1 X\r\n\r\n", MAX_HEAD_BYTES).is_err());
    }

    #[test]
    fn responses_write_status_headers_length_and_close() {
        let r = Response::ok("text/plain", "ok\n");
        assert_eq!(
            r.to_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        let r = Response::service_unavailable(5);
        assert_eq!(r.status(), 503);
        assert_eq!(r.header("retry-after"), Some("5"));
        let bytes = String::from_utf8(r.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(bytes.contains("\r\nRetry-After: 5\r\n"));
        let r = Response::too_many_requests(2);
        assert_eq!((r.status(), r.header("Retry-After")), (429, Some("2")));
        let r = Response::method_not_allowed();
        assert_eq!((r.status(), r.header("Allow")), (405, Some("GET")));
        let r = Response::upgrade_required();
        assert_eq!(
            (r.status(), r.header("Sec-WebSocket-Version")),
            (426, Some("13"))
        );
        assert_eq!(Response::not_found().status(), 404);
        assert_eq!(Response::forbidden().status(), 403);
        assert_eq!(Response::header_fields_too_large().status(), 431);
        assert_eq!(Response::bad_request("x").status(), 400);

        let r =
            Response::switching_protocols("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", Some("tickwire.v1.json"));
        assert_eq!(
            r.to_bytes(),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: tickwire.v1.json\r\n\r\n"
        );
    }

    proptest! {
        #[test]
        fn every_split_point_parses_like_the_whole(cut in 0usize..=UPGRADE.len(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut raw = UPGRADE.to_vec();
            raw.extend_from_slice(&extra);
            let (whole, used) = parse(&raw).unwrap().unwrap();
            let mut p = RequestParser::new(MAX_HEAD_BYTES);
            let (a, b) = raw.split_at(cut);
            let first = p.push(a).unwrap();
            let (req, rest) = match first {
                Some(done) => {
                    prop_assert!(cut >= used);
                    done
                }
                None => p.push(b).unwrap().unwrap(),
            };
            prop_assert_eq!(req, whole);
            let mut expect_rest = raw[used..cut.max(used)].to_vec();
            if cut >= used {
                // The second piece was never pushed.
            } else {
                expect_rest = extra.clone();
            }
            prop_assert_eq!(rest, expect_rest);
        }

        #[test]
        fn byte_at_a_time_parses_like_the_whole(_x in 0..1u8) {
            let mut p = RequestParser::new(MAX_HEAD_BYTES);
            let mut got = None;
            for (i, b) in UPGRADE.iter().enumerate() {
                if let Some(done) = p.push(&[*b]).unwrap() {
                    prop_assert_eq!(i, UPGRADE.len() - 1);
                    got = Some(done);
                }
            }
            prop_assert_eq!(got.unwrap().0, parse(UPGRADE).unwrap().unwrap().0);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
            let _ = parse_response(&bytes, MAX_HEAD_BYTES);
            let mut p = RequestParser::new(64);
            let _ = p.push(&bytes[..bytes.len() / 2]);
            let _ = p.push(&bytes[bytes.len() / 2..]);
        }

        #[test]
        fn random_header_soup_never_panics(lines in proptest::collection::vec("[ -~\t:]{0,20}", 0..10)) {
            let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
            for l in &lines {
                raw.extend_from_slice(l.as_bytes());
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            let _ = parse(&raw);
        }
    }
}
