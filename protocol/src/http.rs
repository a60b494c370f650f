//! HTTP/1.1 request heads (parsed with httparse), their paths, and the responses the
//! server writes before any upgrade: WebSocket handshakes, JSON bodies and JSON errors.
//! Request bodies are in [`crate::body`]; HTTP statuses of errors come from
//! [`ApiError`] only.

use std::fmt::Write as _;

use crate::error::ApiError;

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Headers, names lower-cased.
    pub headers: Headers,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// `x` of `HTTP/1.x`: 0 for HTTP/1.0 (no keep-alive unless asked, no chunked
    /// bodies), 1 for HTTP/1.1.
    pub minor_version: u8,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Not HTTP/1.x.
    #[error("malformed request head")]
    Malformed,
    /// Over [`MAX_HEAD_BYTES`].
    #[error("request head too large")]
    TooLarge,
}

/// Parses the request head at the front of `buf`; `Ok(None)` means incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(HttpError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(_) => return Err(HttpError::Malformed),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::TooLarge);
    }
    let target = origin_form(request.path.unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok(Some(RequestHead {
        method: request.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: Headers::from_parsed(request.headers),
        head_len,
        minor_version: request.version.unwrap_or(1),
    }))
}

/// The path and query of a request target: an absolute-form target
/// (`http://host/healthz?x`, which servers must accept, RFC 9112 §3.2.2) loses its scheme
/// and authority; any other target is returned as it is.
fn origin_form(target: &str) -> &str {
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some("http://") {
        &target[7..]
    } else if lower(8).as_deref() == Some("https://") {
        &target[8..]
    } else {
        return target;
    };
    // `http://host?x` gives `?x`, whose empty path the caller reads as `/`.
    rest.find(['/', '?']).map_or("/", |at| &rest[at..])
}

/// A request's headers in one buffer: names lower-cased, each entry the ends of its name
/// and value in it. Two allocations for the whole head, not two per header (a browser's
/// WebSocket upgrade sends ten or more).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers {
    bytes: Vec<u8>,
    /// Per header: where its name starts, where its name ends and its value starts, and
    /// where its value ends.
    entries: Vec<[u32; 3]>,
}

impl Headers {
    fn from_parsed(parsed: &[httparse::Header<'_>]) -> Headers {
        let len = parsed.iter().map(|h| h.name.len() + h.value.len()).sum();
        let mut headers = Headers {
            bytes: Vec::with_capacity(len),
            entries: Vec::with_capacity(parsed.len()),
        };
        for h in parsed {
            // Within MAX_HEAD_BYTES, so the offsets fit in u32.
            let start = headers.bytes.len() as u32;
            headers
                .bytes
                .extend(h.name.bytes().map(|b| b.to_ascii_lowercase()));
            let name_end = headers.bytes.len() as u32;
            headers.bytes.extend_from_slice(h.value);
            headers
                .entries
                .push([start, name_end, headers.bytes.len() as u32]);
        }
        headers
    }

    /// Every header as (lower-case name, value), in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.entries.iter().map(|&[start, name_end, end]| {
            let name = &self.bytes[start as usize..name_end as usize];
            // Names are HTTP tokens (httparse checked them): ASCII.
            let name = std::str::from_utf8(name).unwrap_or("");
            (name, &self.bytes[name_end as usize..end as usize])
        })
    }

    /// The values of every header named `name` (lower case), in the order sent.
    pub fn all_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl RequestHead {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The first query parameter named `name`, percent-decoded. A raw `?` inside the
    /// query separates parameters as `&` does: the SDK appends `?cid=…` to an endpoint
    /// that may carry its own query (`/_rt/ws?tenant=acme`), which made the tenant
    /// `acme?cid=…` (found in review). No parameter of ours holds a `?` (a value that
    /// needs one sends `%3F`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split(['&', '?'])
            .flat_map(|pair| form_urlencoded::parse(pair.as_bytes()))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether the connection stays open after the response: HTTP/1.1 unless any
    /// `Connection` header says `close`; HTTP/1.0 only if one says `keep-alive` (and none
    /// `close`).
    pub fn keep_alive(&self) -> bool {
        let says = |token: &str| {
            self.headers
                .all_named("connection")
                .any(|v| header_has_token(v, token))
        };
        !says("close") && (self.minor_version >= 1 || says("keep-alive"))
    }

    /// Whether the client waits for `100 Continue` before sending its body (never an
    /// HTTP/1.0 client, which cannot take a 1xx answer).
    pub fn expects_continue(&self) -> bool {
        self.minor_version >= 1
            && self
                .header("expect")
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    }

    /// The path split at `/` into percent-decoded segments: `/api/realtime/history/
    /// private-room%3Avip` gives `["api", "realtime", "history", "private-room:vip"]`.
    /// An encoded `/` (`%2F`) stays inside its segment; `+` stays `+`. `/` gives no
    /// segments; empty segments (`//`, a trailing `/`) are kept so routes can refuse them.
    pub fn path_segments(&self) -> Result<Vec<String>, PathError> {
        let rest = self.path.strip_prefix('/').unwrap_or(&self.path);
        if rest.is_empty() {
            return Ok(Vec::new());
        }
        rest.split('/').map(percent_decode_segment).collect()
    }

    /// What the request says about a WebSocket upgrade (RFC 6455 §4.2.1). `Upgrade` and
    /// `Connection` are lists, read across every line of each (found in review: only the
    /// first line was read, so `Connection: keep-alive` and `Connection: Upgrade` on two
    /// lines were refused).
    pub fn websocket_upgrade(&self) -> Upgrade {
        let lists = |name: &'static str, token: &str| {
            self.headers
                .all_named(name)
                .any(|v| header_has_token(v, token))
        };
        // An `Upgrade` header in an HTTP/1.0 request is ignored (RFC 9110 §7.8).
        if self.minor_version < 1 || !lists("upgrade", "websocket") {
            return Upgrade::NotRequested;
        }
        if !lists("connection", "upgrade") {
            return Upgrade::Malformed("`Connection: Upgrade` missing");
        }
        match self.header("sec-websocket-version").map(<[u8]>::trim_ascii) {
            None => return Upgrade::Malformed("`Sec-WebSocket-Version: 13` required"),
            Some(b"13") => {}
            // Answered 426 with the version spoken, so the client can retry with it
            // (RFC 6455 §4.4).
            Some(_) => return Upgrade::UnsupportedVersion,
        }
        let accept = match self.header("sec-websocket-key").map(<[u8]>::trim_ascii) {
            None | Some(b"") => return Upgrade::Malformed("`Sec-WebSocket-Key` missing"),
            Some(key) if !is_websocket_key(key) => {
                return Upgrade::Malformed(
                    "`Sec-WebSocket-Key` must be the base64 of 16 bytes (24 characters)",
                )
            }
            Some(key) => tungstenite::handshake::derive_accept_key(key),
        };
        // No subprotocol is spoken: one offered is refused by name, where answering
        // without one would leave the client (a browser fails the connection) guessing.
        let offered: Vec<String> = self
            .headers
            .all_named("sec-websocket-protocol")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if !offered.is_empty() {
            return Upgrade::UnsupportedSubprotocol(offered.join(", "));
        }
        Upgrade::Valid { accept }
    }
}

/// Whether `key` is a `Sec-WebSocket-Key`: the base64 of 16 bytes, 22 characters of the
/// base64 alphabet and `==` (RFC 6455 §4.1, item 7).
fn is_websocket_key(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24 && key[..22].iter().all(base64) && &key[22..] == b"=="
}

/// Why a request path was refused ([`ApiError::BadRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent escape in the path")]
    InvalidEscape,
    /// A segment that is not UTF-8 once decoded.
    #[error("path segment is not UTF-8 once percent-decoded")]
    NotUtf8,
}

/// Percent-decodes one path segment (RFC 3986 §2.1; what `encodeURIComponent` produced).
pub fn percent_decode_segment(segment: &str) -> Result<String, PathError> {
    if !segment.contains('%') {
        return Ok(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let high = bytes.get(at + 1).and_then(|&b| hex_digit(b));
            let low = bytes.get(at + 2).and_then(|&b| hex_digit(b));
            let (Some(high), Some(low)) = (high, low) else {
                return Err(PathError::InvalidEscape);
            };
            out.push(high << 4 | low);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The outcome of checking a request for a WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// No `Upgrade: websocket` header.
    NotRequested,
    /// A valid upgrade; `accept` is the `Sec-WebSocket-Accept` value.
    Valid {
        /// The `Sec-WebSocket-Accept` value.
        accept: String,
    },
    /// An upgrade with missing or wrong headers.
    Malformed(&'static str),
    /// `Sec-WebSocket-Version` is not 13, the one version spoken.
    UnsupportedVersion,
    /// `Sec-WebSocket-Protocol` offers subprotocols (the list, as sent); none is spoken.
    UnsupportedSubprotocol(String),
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `101 Switching Protocols` with any extra headers.
pub fn switching_protocols(accept: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::with_capacity(160);
    out.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    let _ = write!(out, "Sec-WebSocket-Accept: {accept}\r\n");
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// `response` (complete, from this module) as the answer to a `HEAD` request: the same
/// status and headers, `Content-Length` (of the body a GET gets) included, and no body
/// (RFC 9110 §9.3.2).
pub fn without_body(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(at + 4);
    }
    response
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

const OK: u16 = 200;

/// `200 OK` with a JSON body.
pub fn ok_json(body: &[u8], keep_alive: bool) -> Vec<u8> {
    json_response(OK, body, keep_alive)
}

/// `200 OK` with any content type.
pub fn ok_response(content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response(OK, content_type, body, keep_alive)
}

/// The JSON error answer for `error`: its status and `{"error":{"code":…,"message":…}}`.
pub fn api_error_response(error: ApiError, message: &str, keep_alive: bool) -> Vec<u8> {
    let (status, code) = error.wire();
    error_response(status, code, message, keep_alive)
}

/// `response` (complete, from this module) with one more header after its status line.
pub fn with_header(mut response: Vec<u8>, name: &str, value: &str) -> Vec<u8> {
    let at = response
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(response.len(), |i| i + 2);
    let header = format!("{name}: {value}\r\n");
    response.splice(at..at, header.into_bytes());
    response
}

/// `response` (complete, from this module) made to close its connection: the
/// `keep-alive` of its `Connection` header (`keep-alive`, or `upgrade, keep-alive` of a
/// 426) becomes `close` (the server is shutting down).
pub fn closing(response: Vec<u8>) -> Vec<u8> {
    const NAME: &[u8] = b"\r\nConnection: ";
    const KEEP: &[u8] = b"keep-alive";
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |at| at + 2);
    let Some(line) = response[..head_end]
        .windows(NAME.len())
        .position(|w| w == NAME)
    else {
        return response;
    };
    let value = line + NAME.len();
    let line_end = response[value..head_end]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(head_end, |at| value + at);
    let Some(at) = response[value..line_end]
        .windows(KEEP.len())
        .position(|w| w == KEEP)
    else {
        return response;
    };
    let mut out = response;
    out.splice(
        value + at..value + at + KEEP.len(),
        b"close".iter().copied(),
    );
    out
}

/// `response` (complete, from this module) whose `Connection` header also names
/// `option` (`upgrade` with the `Upgrade` header of a 426, RFC 9110 §7.8).
pub fn with_connection_option(response: Vec<u8>, option: &str) -> Vec<u8> {
    const NAME: &[u8] = b"\r\nConnection: ";
    let Some(at) = response.windows(NAME.len()).position(|w| w == NAME) else {
        return with_header(response, "Connection", option);
    };
    let at = at + NAME.len();
    let mut out = response;
    out.splice(at..at, format!("{option}, ").into_bytes());
    out
}

/// A complete response with a JSON body.
pub fn json_response(status: u16, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response(status, "application/json", body, keep_alive)
}

/// A complete response with any content type.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = String::with_capacity(128);
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `{"error":{"code":…,"message":…}}` with `status`. Prefer [`api_error_response`], which
/// takes the status and code from the one table.
pub fn error_response(status: u16, code: &str, message: &str, keep_alive: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    body.extend_from_slice(b"{\"error\":{\"code\":");
    crate::json::write_str(&mut body, code);
    body.extend_from_slice(b",\"message\":");
    crate::json::write_str(&mut body, message);
    body.extend_from_slice(b"}}");
    json_response(status, &body, keep_alive)
}

/// The reason phrase of the statuses the server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /_rt/ws?cid=a%20b&tenant=dev HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_kept_alive_response_can_be_made_to_close() {
        let out = closing(ok_json(b"{}", true));
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{out:?}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(!text.contains("keep-alive"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        let already = ok_json(b"{}", false);
        assert_eq!(closing(already.clone()), already);
        let upgrade = with_connection_option(
            api_error_response(ApiError::UpgradeRequired, "ws only", true),
            "upgrade",
        );
        let text = String::from_utf8(closing(upgrade)).unwrap();
        assert!(
            text.contains("\r\nConnection: upgrade, close\r\n"),
            "{text}"
        );
    }

    /// What the SDK sends for an endpoint that has a query of its own: `?cid=` appended.
    #[test]
    fn a_second_question_mark_separates_parameters() {
        let head = parse_request_head(
            b"GET /_rt/ws?tenant=acme&token=a.b-c_d?cid=tab-1 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.query_param("tenant").as_deref(), Some("acme"));
        assert_eq!(head.query_param("token").as_deref(), Some("a.b-c_d"));
        assert_eq!(head.query_param("cid").as_deref(), Some("tab-1"));
        let head = parse_request_head(b"GET /x?q=a%3Fb HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            head.query_param("q").as_deref(),
            Some("a?b"),
            "an encoded one stays"
        );
    }

    #[test]
    fn parses_an_upgrade() {
        let head = parse_request_head(UPGRADE).unwrap().unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("GET", "/_rt/ws")
        );
        assert_eq!(head.query_param("cid").as_deref(), Some("a b"));
        assert_eq!(head.head_len, UPGRADE.len());
        // RFC 6455's example key and accept value.
        assert_eq!(
            head.websocket_upgrade(),
            Upgrade::Valid {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
    }

    fn head_of(raw: &str) -> RequestHead {
        parse_request_head(raw.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn keep_alive_follows_the_version_and_every_connection_header() {
        let keep = |raw: &str| head_of(raw).keep_alive();
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(
            !keep("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"),
            "a second Connection header counts"
        );
        assert!(
            !keep("GET / HTTP/1.0\r\n\r\n"),
            "HTTP/1.0 closes by default"
        );
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(head_of("GET / HTTP/1.0\r\n\r\n").minor_version, 0);
    }

    #[test]
    fn an_http_1_0_request_neither_upgrades_nor_expects_100_continue() {
        let upgrade = std::str::from_utf8(UPGRADE)
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(head_of(&upgrade).websocket_upgrade(), Upgrade::NotRequested);
        let expect = "POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n";
        assert!(head_of(expect).expects_continue());
        assert!(!head_of(&expect.replace("HTTP/1.1", "HTTP/1.0")).expects_continue());
    }

    #[test]
    fn a_connection_option_joins_the_connection_header() {
        let out = with_connection_option(ok_json(b"{}", true), "upgrade");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\r\nConnection: upgrade, keep-alive\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("Connection:").count(), 1);
    }

    #[test]
    fn an_absolute_form_target_is_read_as_its_path_and_query() {
        let target = |raw: &str| {
            let h = head_of(raw);
            (h.path, h.query)
        };
        assert_eq!(
            target("GET http://x:8080/healthz?a=1 HTTP/1.1\r\n\r\n"),
            ("/healthz".into(), "a=1".into())
        );
        assert_eq!(
            target("GET HTTPS://x/api/realtime/channels HTTP/1.1\r\n\r\n"),
            ("/api/realtime/channels".into(), String::new())
        );
        assert_eq!(
            target("GET http://x HTTP/1.1\r\n\r\n"),
            ("/".into(), String::new())
        );
        assert_eq!(
            target("GET http://x?a=1 HTTP/1.1\r\n\r\n"),
            ("/".into(), "a=1".into())
        );
        assert_eq!(
            target("GET /http://x HTTP/1.1\r\n\r\n"),
            ("/http://x".into(), String::new()),
            "an origin-form path is left alone"
        );
    }

    #[test]
    fn incomplete_and_oversized_heads() {
        assert_eq!(parse_request_head(&UPGRADE[..30]), Ok(None));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse_request_head(huge.as_bytes()),
            Err(HttpError::TooLarge)
        );
        assert_eq!(
            parse_request_head(b"\x00\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed)
        );
    }

    #[test]
    fn upgrade_checks() {
        let plain = parse_request_head(b"GET /_rt/ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(plain.websocket_upgrade(), Upgrade::NotRequested);
        let no_key = parse_request_head(
            b"GET /_rt/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(matches!(no_key.websocket_upgrade(), Upgrade::Malformed(_)));
    }

    /// `UPGRADE` with `from` replaced by `to`.
    fn upgrade_with(from: &str, to: &str) -> Upgrade {
        let raw = std::str::from_utf8(UPGRADE).unwrap();
        assert!(raw.contains(from), "{from}");
        head_of(&raw.replacen(from, to, 1)).websocket_upgrade()
    }

    #[test]
    fn a_version_other_than_13_is_unsupported() {
        let version = "Sec-WebSocket-Version: 13\r\n";
        assert_eq!(
            upgrade_with(version, "Sec-WebSocket-Version: 8\r\n"),
            Upgrade::UnsupportedVersion
        );
        assert_eq!(
            upgrade_with(version, "Sec-WebSocket-Version: 14\r\n"),
            Upgrade::UnsupportedVersion
        );
        assert!(matches!(
            upgrade_with(version, ""),
            Upgrade::Malformed(why) if why.contains("Version")
        ));
    }

    #[test]
    fn the_key_is_the_base64_of_16_bytes() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        for bad in [
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",      // short
            "abc",                          // not 16 bytes
            "dGhlIHNhbXBsZSBub25jZQ==dGhl", // longer
            "dGhlIHNhbXBsZSBub25j!Q==",     // outside the alphabet
            "dGhlIHNhbXBsZSBub25jZQQ=",     // 17 bytes' worth
        ] {
            assert!(
                matches!(upgrade_with(key, bad), Upgrade::Malformed(why) if why.contains("16 bytes")),
                "{bad}"
            );
        }
        assert!(matches!(
            upgrade_with(key, "AAAAAAAAAAAAAAAAAAAAAA=="),
            Upgrade::Valid { .. }
        ));
        assert!(matches!(
            upgrade_with(key, "+/+/+/+/+/+/+/+/+/+/+w=="),
            Upgrade::Valid { .. }
        ));
    }

    #[test]
    fn an_offered_subprotocol_is_refused_by_name() {
        let last = "\r\n\r\n";
        assert_eq!(
            upgrade_with(last, "\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n"),
            Upgrade::UnsupportedSubprotocol("chat, superchat".into())
        );
        assert_eq!(
            upgrade_with(
                last,
                "\r\nSec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Protocol: wamp\r\n\r\n"
            ),
            Upgrade::UnsupportedSubprotocol("mqtt, wamp".into())
        );
        assert!(
            matches!(
                upgrade_with(last, "\r\nSec-WebSocket-Protocol:\r\n\r\n"),
                Upgrade::Valid { .. }
            ),
            "an empty offer offers nothing"
        );
    }

    /// `Connection` and `Upgrade` are lists across every line of each (found in review).
    #[test]
    fn connection_and_upgrade_are_read_across_lines() {
        let connection = "Connection: keep-alive, Upgrade\r\n";
        assert!(matches!(
            upgrade_with(
                connection,
                "Connection: keep-alive\r\nConnection: Upgrade\r\n"
            ),
            Upgrade::Valid { .. }
        ));
        assert!(matches!(
            upgrade_with(
                "Upgrade: websocket\r\n",
                "Upgrade: h2c\r\nUpgrade: websocket\r\n"
            ),
            Upgrade::Valid { .. }
        ));
        assert!(matches!(
            upgrade_with(connection, "Connection: keep-alive\r\n"),
            Upgrade::Malformed(_)
        ));
    }

    #[test]
    fn a_head_answer_keeps_status_and_headers_but_no_body() {
        let get = ok_json(br#"{"status":"ok"}"#, true);
        let text = String::from_utf8(without_body(get)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 15\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn headers_keep_order_case_folded_names_and_raw_values() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-FOR: 10.0.0.2\r\nX-Bin: \xff\xfe\r\nEmpty:\r\n\r\n";
        let head = parse_request_head(raw).unwrap().unwrap();
        assert_eq!(head.headers.len(), 5);
        let names: Vec<&str> = head.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "host",
                "x-forwarded-for",
                "x-forwarded-for",
                "x-bin",
                "empty"
            ]
        );
        let forwarded: Vec<&[u8]> = head.headers.all_named("x-forwarded-for").collect();
        assert_eq!(forwarded, [&b"10.0.0.1"[..], b"10.0.0.2"]);
        assert_eq!(head.header("x-bin"), Some(&b"\xff\xfe"[..]));
        assert_eq!(head.header("empty"), Some(&b""[..]));
        assert_eq!(
            head.header("X-Bin"),
            None,
            "names are looked up in lower case"
        );
        assert_eq!(head.header("missing"), None);
    }

    fn head_with_path(path: &str) -> RequestHead {
        parse_request_head(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        let segments = |path: &str| head_with_path(path).path_segments();
        assert_eq!(
            segments("/api/realtime/history/private-room%3Avip?limit=5"),
            Ok(vec![
                "api".to_owned(),
                "realtime".into(),
                "history".into(),
                "private-room:vip".into()
            ])
        );
        // What encodeURIComponent makes of "a/b c+é".
        assert_eq!(
            segments("/api/realtime/presence/a%2Fb%20c%2B%C3%A9/join"),
            Ok(vec![
                "api".to_owned(),
                "realtime".into(),
                "presence".into(),
                "a/b c+é".into(),
                "join".into()
            ])
        );
        assert_eq!(segments("/a+b"), Ok(vec!["a+b".to_owned()]));
        assert_eq!(segments("/"), Ok(vec![]));
        assert_eq!(
            segments("/a//b/"),
            Ok(vec!["a".to_owned(), "".into(), "b".into(), "".into()])
        );
        for bad in ["/a%", "/a%4", "/a%zz", "/%%41", "/x%4g"] {
            assert_eq!(segments(bad), Err(PathError::InvalidEscape), "{bad}");
        }
        assert_eq!(segments("/a%FF"), Err(PathError::NotUtf8));
        assert_eq!(segments("/a%C3"), Err(PathError::NotUtf8));
        assert_eq!(
            ApiError::from(PathError::NotUtf8).wire(),
            (400, "bad_request")
        );
    }

    #[test]
    fn expect_continue() {
        let head = parse_request_head(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.expects_continue());
        assert!(!head_with_path("/").expects_continue());
    }

    #[test]
    fn api_errors_use_the_table() {
        let text =
            String::from_utf8(api_error_response(ApiError::PayloadTooLarge, "big", true)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("\"code\":\"payload_too_large\""), "{text}");
        assert!(text.contains("Connection: keep-alive"), "{text}");
    }

    #[test]
    fn error_bodies_are_json() {
        let out = error_response(404, "not_found", "no \"route\"", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no \"route\"");
    }
}
