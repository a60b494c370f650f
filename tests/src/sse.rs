//! A Server-Sent Events client over a raw TCP socket, for the REN stream
//! (`GET /api/maravilla/ren`): the response head, then events (`id:`, `event:`, `data:`
//! lines) and comments (`:ping`), one at a time. Every read is bounded in time.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{parse_response_head, HttpResponse, Server};

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// A comment line (`:ping` → `"ping"`).
    Comment(String),
    /// An event.
    Event(SseEvent),
}

/// An event with its fields; `data` parsed as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `id:`.
    pub id: Option<String>,
    /// `event:` (`message` when absent).
    pub event: String,
    /// `data:` (lines joined with `\n`), parsed.
    pub data: Value,
}

/// An open stream.
#[derive(Debug)]
pub struct SseStream {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Response headers (names lower-cased).
    pub headers: Vec<(String, String)>,
}

impl SseStream {
    /// `GET target` with `headers`; the stream when the answer is 200 `text/event-stream`,
    /// else the (error) response.
    pub fn open(
        server: &Server,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<std::result::Result<SseStream, HttpResponse>> {
        let stream = TcpStream::connect(server.addr())?;
        SseStream::open_on(stream, server, target, headers)
    }

    /// Like [`SseStream::open`] on a socket whose receive buffer is `rcvbuf` bytes (a
    /// reader that stalls fills it quickly).
    pub fn open_with_rcvbuf(
        server: &Server,
        target: &str,
        rcvbuf: usize,
    ) -> Result<std::result::Result<SseStream, HttpResponse>> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(rcvbuf)?;
        socket.connect(&server.addr().into())?;
        SseStream::open_on(socket.into(), server, target, &[])
    }

    fn open_on(
        mut stream: TcpStream,
        server: &Server,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<std::result::Result<SseStream, HttpResponse>> {
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
            server.addr()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes())?;
        let mut sse = SseStream {
            stream,
            buf: Vec::new(),
            headers: Vec::new(),
        };
        let deadline = Instant::now() + crate::TIMEOUT;
        let head_end = loop {
            if let Some(pos) = sse.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if sse.fill(deadline)? == 0 {
                bail!(
                    "EOF before a response head: {:?}",
                    String::from_utf8_lossy(&sse.buf)
                );
            }
        };
        let (status, headers) = parse_response_head(&sse.buf[..head_end])?;
        sse.buf.drain(..head_end);
        let is_stream = headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"));
        if status == 200 && is_stream {
            sse.headers = headers;
            return Ok(Ok(sse));
        }
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .context("an error answer without Content-Length")?;
        while sse.buf.len() < length {
            if sse.fill(deadline)? == 0 {
                bail!("EOF inside the error body");
            }
        }
        Ok(Err(HttpResponse {
            status,
            headers,
            body: sse.buf[..length].to_vec(),
        }))
    }

    /// First response header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn fill(&mut self, deadline: Instant) -> Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no SSE data in time; buffered {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next item, within `timeout`.
    pub fn next_item(&mut self, timeout: Duration) -> Result<SseItem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block[..end].to_vec()).context("UTF-8")?;
                return parse_block(&text);
            }
            if self.fill(deadline)? == 0 {
                bail!("the stream ended (EOF)");
            }
        }
    }

    /// The next event (comments skipped), within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let SseItem::Event(event) = self.next_item(left)? {
                return Ok(event);
            }
        }
    }

    /// Reads until the server closes the stream; how many bytes came before, at most
    /// `max_bytes`. Fails past `timeout`.
    pub fn read_to_eof(&mut self, timeout: Duration, max_bytes: usize) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut total = self.buf.len();
        self.buf.clear();
        while total <= max_bytes {
            let n = self.fill(deadline)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
            self.buf.clear();
        }
        bail!("more than {max_bytes} bytes and still open")
    }
}

fn parse_block(text: &str) -> Result<SseItem> {
    let mut id = None;
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            return Ok(SseItem::Comment(comment.trim().to_owned()));
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value),
            "retry" => {}
            other => bail!("unknown SSE field {other:?} in {text:?}"),
        }
    }
    let joined = data.join("\n");
    Ok(SseItem::Event(SseEvent {
        id,
        event: event.unwrap_or_else(|| "message".to_owned()),
        data: serde_json::from_str(&joined)
            .with_context(|| format!("data is not JSON: {joined:?}"))?,
    }))
}
