//! HTTP/1.1 request heads (parsed with httparse) and the responses the server writes
//! before any upgrade: WebSocket handshakes, JSON bodies and JSON errors.

use std::fmt::Write as _;

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
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
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
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(RequestHead {
        method: request.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
        head_len,
    }))
}

impl RequestHead {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first query parameter named `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether the client asked to keep the connection open after the response.
    pub fn keep_alive(&self) -> bool {
        !self
            .header("connection")
            .is_some_and(|v| header_has_token(v, "close"))
    }

    /// The `Content-Length`, if any and valid.
    pub fn content_length(&self) -> Option<usize> {
        std::str::from_utf8(self.header("content-length")?)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// What the request says about a WebSocket upgrade.
    pub fn websocket_upgrade(&self) -> Upgrade {
        let wants_upgrade = self
            .header("upgrade")
            .is_some_and(|v| header_has_token(v, "websocket"));
        if !wants_upgrade {
            return Upgrade::NotRequested;
        }
        if !self
            .header("connection")
            .is_some_and(|v| header_has_token(v, "upgrade"))
        {
            return Upgrade::Malformed("`Connection: Upgrade` missing");
        }
        if self.header("sec-websocket-version") != Some(b"13") {
            return Upgrade::Malformed("`Sec-WebSocket-Version: 13` required");
        }
        match self.header("sec-websocket-key") {
            Some(key) if !key.is_empty() => Upgrade::Valid {
                accept: tungstenite::handshake::derive_accept_key(key),
            },
            _ => Upgrade::Malformed("`Sec-WebSocket-Key` missing"),
        }
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

/// `{"error":{"code":…,"message":…}}` with `status`.
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
