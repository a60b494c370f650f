//! The front door of every TCP connection: read an HTTP/1.1 request (head and body, with
//! a deadline), then either upgrade to WebSocket or answer a plain HTTP request.
//! HTTP and WebSocket share the listener and the shard.
//!
//! ```text
//!  accept ──► serve_connection ──► loop per request (keep-alive, pipelining):
//!               head  (protocol::http::parse_request_head)   ┐ one deadline:
//!               body  (protocol::body::BodyDecoder)          ┘ handshake_timeout_ms
//!               api::serve(shard, &head, &body).await  (/api/…: SPEC §5)
//!               api::ren::open(shard, &head)  (GET /api/maravilla/ren) ──► SSE stream
//!               route(shard, &head) ──► response | upgrade ──► session
//!                                       (`/` and `/demo/*`: demo.rs, when `demo` is on)
//! ```
//!
//! Admission (`admission.rs`) came first, at the accept: a connection whose address is
//! over `max_connections_per_ip` is answered 429 here before anything is read; one past
//! `max_connections` has its head read for a probe, else 503. A connection keeps its
//! place among its address's connections (`per_ip.rs`) through keep-alive and into the
//! WebSocket or SSE stream it becomes; an upgrade takes one handshake of the address's
//! rate.
//!
//! `HEAD` is answered on every GET route as GET is, without the body (RFC 9110 §9.3.2),
//! but for the two that become streams: `HEAD /_rt/ws` gets GET's answer to a request
//! without an upgrade (426), `HEAD /api/maravilla/ren` 405.
//!
//! Deadline: each request's head and body together must arrive within
//! `handshake_timeout_ms`, counted from when the server starts waiting for that request,
//! so a client that trickles bytes cannot hold a connection slot longer than that per
//! request. Past it the answer is 408 and the connection closes. Every HTTP status and
//! error code comes from [`ApiError`]; this file holds no status numbers.
//!
//! Metrics: each answered request is counted by route (a fixed set, [`HttpRoute`]) and
//! status, with its time from the complete request to the answer written; a connection
//! that ends here (not upgraded) is counted with its [`CloseReason`].

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;
use ringcast_protocol::api::Refusal;
use ringcast_protocol::body::{BodyDecoder, BodyError, BodyPoll};
use ringcast_protocol::event::PresenceSpelling;
use ringcast_protocol::http::{
    api_error_response, ok_json, ok_response, parse_request_head, switching_protocols,
    with_connection_option, with_header, without_body, HttpError, RequestHead, Upgrade, CONTINUE,
};
use ringcast_protocol::proxy::{self, ProxyParse};
use ringcast_protocol::ApiError;

use crate::admission::Admission;
use crate::client_addr::canonical;
use crate::demo::DemoSite;
use crate::metrics::{CloseReason, HttpRoute, Transport};
use crate::per_ip::{IpRefused, IpSlot, PerIp};
use crate::session::{start_session, SessionSetup};
use crate::shard::Shard;
use crate::token;

/// What to do with a request.
enum Route {
    Respond(Vec<u8>, bool),
    /// `ip`: see [`admit_upgrade`].
    Upgrade {
        setup: SessionSetup,
        ip: Option<IpSlot>,
    },
}

/// How the HTTP phase of a connection ended. The [`IpSlot`] of a stream is one taken for
/// the client a trusted proxy named, `None` when the connection's own counts for it
/// ([`admit_upgrade`]).
enum Served {
    Close(CloseReason),
    /// `GET /api/maravilla/ren`: the connection becomes a REN (SSE) stream.
    Ren(crate::api::ren::RenOpen, Option<IpSlot>),
    Upgrade(SessionSetup, Option<IpSlot>),
}

/// `/metrics`'s content type: `prometheus-client` writes OpenMetrics text (a closing `#
/// EOF`, counter families named without `_total`), which a Prometheus that believed it
/// 0.0.4 text would parse with the wrong rules.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// After an error answer, how long the server keeps reading (and dropping) what the client
/// still sends, at most.
const LINGER: Duration = Duration::from_secs(1);
/// After an error answer, how many bytes the server reads and drops, at most.
const LINGER_BYTES: usize = 64 * 1024;

/// Serves one accepted connection from `peer` (the address `accept` gave), as
/// `admission` lets it: over its address's budget it gets 429 at once; past
/// `max_connections` the request head is read and answered with 503, or, for `GET
/// /healthz`, `/readyz` and `/metrics`, with their usual answer; either way the
/// connection then closes.
pub async fn serve_connection(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) {
    let peer = canonical(peer.ip());
    let (slot, mut own_ip) = match admission {
        Admission::Open { slot, ip } => (Some(slot), ip),
        Admission::Full { ip } => (None, ip),
        Admission::AddressFull(refused) => {
            let timeout = Duration::from_millis(shard.shared.config.load().handshake_timeout_ms);
            refuse_address(&shard, &mut stream, refused, timeout).await;
            shard.connection_closed(Transport::Http, CloseReason::Limit, peer);
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    // The client the close is logged with: the peer until a request names another.
    let mut client = peer;
    let has_slot = slot.is_some();
    let served = serve_requests(
        &shard,
        &mut stream,
        &mut buf,
        &mut client,
        has_slot,
        &mut own_ip,
    )
    .await;
    match served {
        Served::Close(reason) => {
            shard.connection_closed(Transport::Http, reason, client);
            // The slots are free before the client can see the close: a client that
            // waits for EOF and connects again finds them free.
            drop(own_ip);
            drop(slot);
            drop(stream);
        }
        // A stream's place is the one taken for its client, else the connection's own
        // (always there then: `admit_upgrade`).
        Served::Ren(open, ip) => {
            if let (Some(slot), Some(ip)) = (slot, ip.or(own_ip)) {
                crate::ren::serve::start_stream(shard, stream, open, (slot, ip));
            }
        }
        Served::Upgrade(setup, ip) => {
            if let (Some(slot), Some(ip)) = (slot, ip.or(own_ip)) {
                // Tasks of their own, so this HTTP-phase state is freed while the
                // WebSocket lives (idle connections stay small).
                start_session(shard, stream, buf, setup, (slot, ip));
            }
        }
    }
}

/// Reads and answers requests until one closes the connection or upgrades it. `client`
/// comes in as the TCP peer and is kept up to date with the client address the last
/// request came from (a trusted proxy's PROXY header or `X-Forwarded-For`). `own_ip` is
/// the connection's place among its client's connections: taken at the accept, or here
/// for the client a PROXY header names.
async fn serve_requests(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    client: &mut IpAddr,
    has_slot: bool,
    own_ip: &mut Option<IpSlot>,
) -> Served {
    let peer = *client;
    let (timeout, max_body, proxy_protocol) = {
        let config = shard.shared.config.load();
        (
            Duration::from_millis(config.handshake_timeout_ms),
            config.max_message_bytes,
            config.proxy_protocol,
        )
    };
    // The connection's own client: the peer, or whom a trusted proxy's PROXY header
    // names. Each request may still name another through X-Forwarded-For.
    let mut relayed = peer;
    // A new connection's first bytes have usually arrived by now: take them without an
    // io_uring round trip (`nowait::read_now`). Only here: on a kept-alive connection the next
    // request seldom waits in the socket, and the extra system call would be wasted.
    match crate::nowait::read_now(stream, buf, 1024) {
        Ok(0) => return Served::Close(CloseReason::Client),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return Served::Close(CloseReason::Client),
    }
    // The first request's head and body, and a PROXY header before them, share one
    // deadline from the accept.
    let mut first_deadline = Some(Instant::now() + timeout);
    if proxy_protocol {
        let deadline = first_deadline.expect("set above");
        match monoio::time::timeout_at(deadline, read_proxy_header(stream, buf)).await {
            Err(_) => {
                return timed_out(shard, stream, timeout, "PROXY header", HttpRoute::Unparsed).await
            }
            Ok(Err(ReadError::Closed)) => return Served::Close(CloseReason::Client),
            Ok(Err(_)) => unreachable!("read_proxy_header only fails with Closed"),
            Ok(Ok(ProxyParse::Header {
                len,
                client: client_of_header,
            })) => {
                if !shard.shared.trusted.load().trusts(peer) {
                    let message = "a PROXY header from a peer that is not in trusted_proxies";
                    let error = ApiError::BadRequest;
                    refuse(shard, stream, error, message, timeout, HttpRoute::Unparsed).await;
                    return Served::Close(CloseReason::ProtocolError);
                }
                buf.drain(..len);
                relayed = client_of_header.map_or(peer, |c| canonical(c.ip()));
                *client = relayed;
                // The proxy's connection carries this one client from here on: it counts
                // as the client's, as a direct one would from its accept. (`LOCAL` names
                // no one: the proxy itself, whose connections are not counted.)
                if !shard.shared.trusted.load().trusts(relayed) {
                    let limits = shard.shared.config.load().ip_limits();
                    match PerIp::connect(&shard.shared.per_ip, relayed, limits, shard.now().0) {
                        Ok(ip) => *own_ip = Some(ip),
                        Err(refused) => {
                            refuse_address(shard, stream, refused, timeout).await;
                            return Served::Close(CloseReason::Limit);
                        }
                    }
                }
            }
            Ok(Ok(ProxyParse::Invalid(why))) => {
                let error = ApiError::BadRequest;
                refuse(shard, stream, error, &why, timeout, HttpRoute::Unparsed).await;
                return Served::Close(CloseReason::ProtocolError);
            }
            Ok(Ok(ProxyParse::NotProxy | ProxyParse::Incomplete)) => {}
        }
    }
    loop {
        let first = first_deadline.is_some();
        let deadline = first_deadline
            .take()
            .unwrap_or_else(|| Instant::now() + timeout);
        let unparsed = HttpRoute::Unparsed;
        let mut head_only = false;
        let begun = std::cell::Cell::new(!buf.is_empty());
        let head = match monoio::time::timeout_at(deadline, read_head(stream, buf, &begun)).await {
            // A kept-alive connection with no byte of a next request is idle, not late:
            // closed without a 408 or an error counted (found in review: a proxy's
            // pooled connections each got one every `handshake_timeout_ms`).
            Err(_) if !first && !begun.get() => return Served::Close(CloseReason::Client),
            Err(_) => return timed_out(shard, stream, timeout, "request head", unparsed).await,
            Ok(Err(e)) => {
                return answer_read_error(shard, stream, e, max_body, timeout, unparsed).await
            }
            Ok(Ok(mut head)) => {
                // HEAD goes on as a GET whose answer loses its body (RFC 9110 §9.3.2;
                // found in review: every HEAD got 405).
                if head.method == "HEAD" {
                    head.method = "GET".to_owned();
                    head_only = true;
                }
                head
            }
        };
        let answer = |out: Vec<u8>| if head_only { without_body(out) } else { out };
        // From its head to its answer, shutdown waits for this request.
        let _in_progress = shard.request_in_progress();
        let route_label = HttpRoute::of(&head.path);
        let forwarded: Vec<&[u8]> = head.headers.all_named("x-forwarded-for").collect();
        *client = shard.shared.trusted.load().client(relayed, &forwarded);
        let client = *client;
        if !has_slot {
            // Probes are answered without a slot (then the connection closes): a full
            // server is alive, and a liveness probe that got 503 would restart it.
            if let Some(out) = probe_without_slot(shard, &head) {
                let started = std::time::Instant::now();
                let status = status_of(&out);
                let written = write_within(shard, stream, answer(out), timeout).await;
                count_request(shard, route_label, status, started);
                if written {
                    linger(stream).await;
                }
                return Served::Close(CloseReason::Client);
            }
            let message = "max_connections reached; retry later";
            let error = ApiError::Overloaded;
            let out = answer(api_error_response(error, message, false));
            send_refusal(shard, stream, error, out, timeout, route_label).await;
            return Served::Close(CloseReason::Limit);
        }
        buf.drain(..head.head_len);
        let body = match monoio::time::timeout_at(deadline, read_body(stream, buf, &head, max_body))
            .await
        {
            Err(_) => return timed_out(shard, stream, timeout, "request body", route_label).await,
            Ok(Err(e)) => {
                return answer_read_error(shard, stream, e, max_body, timeout, route_label).await
            }
            Ok(Ok(body)) => body,
        };
        let started = std::time::Instant::now();
        if crate::api::ren::is_stream_request(&head) {
            let opened = if head_only {
                // A stream's GET answer has no end: there is no head of it to give.
                let message = "HEAD cannot open a REN stream; use GET";
                Err(Refusal::new(ApiError::MethodNotAllowed, message).allowing("GET"))
            } else {
                // The address's budget first, as for WebSocket handshakes.
                admit_upgrade(shard, own_ip.as_ref(), client)
                    .and_then(|ip| Ok((crate::api::ren::open(shard, &head)?, ip)))
            };
            match opened {
                Ok((open, ip)) => {
                    count_request(shard, route_label, 200, started);
                    return Served::Ren(open, ip);
                }
                Err(refusal) => {
                    let keep_alive = head.keep_alive() && !shard.is_shutting_down();
                    let out = answer(crate::api::respond_refusal(shard, &refusal, keep_alive));
                    let status = status_of(&out);
                    let written = write_within(shard, stream, out, timeout).await;
                    count_request(shard, route_label, status, started);
                    if !written || !keep_alive {
                        return Served::Close(CloseReason::Client);
                    }
                    continue;
                }
            }
        }
        if crate::api::handles(&head.path) {
            let mut out = answer(crate::api::serve(shard, &head, &body).await);
            if shard.is_shutting_down() {
                // Said in the answer, so a client does not send another request on it.
                out = ringcast_protocol::http::closing(out);
            }
            let status = status_of(&out);
            let written = write_within(shard, stream, out, timeout).await;
            count_request(shard, route_label, status, started);
            if !written || !head.keep_alive() {
                return Served::Close(CloseReason::Client);
            }
            if shard.is_shutting_down() {
                // Answered; no next request is waited for, so shutdown is not held up by
                // a client that keeps its connection busy.
                return Served::Close(CloseReason::Shutdown);
            }
            continue;
        }
        match route(shard, &head, head_only, client, own_ip.as_ref()) {
            Route::Respond(out, keep_alive) => {
                let mut out = answer(out);
                if shard.is_shutting_down() {
                    out = ringcast_protocol::http::closing(out);
                }
                let status = status_of(&out);
                let written = write_within(shard, stream, out, timeout).await;
                count_request(shard, route_label, status, started);
                if !written || !keep_alive {
                    return Served::Close(CloseReason::Client);
                }
                if shard.is_shutting_down() {
                    return Served::Close(CloseReason::Shutdown);
                }
            }
            Route::Upgrade { setup, ip } => {
                // The 101 goes out with `connected`, from the connection's writer.
                count_request(shard, route_label, 101, started);
                return Served::Upgrade(setup, ip);
            }
        }
    }
}

/// Answers a request that could not be read (nothing for a closed connection) and ends
/// the connection.
async fn answer_read_error(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    e: ReadError,
    max_body: usize,
    timeout: Duration,
    route: HttpRoute,
) -> Served {
    let (error, message, reason) = match e {
        ReadError::Closed => return Served::Close(CloseReason::Client),
        ReadError::Head(e @ HttpError::TooLarge) => (
            ApiError::from(e),
            "request head over 16 KiB".to_owned(),
            CloseReason::ProtocolError,
        ),
        ReadError::Head(e) => (
            ApiError::from(e),
            "malformed HTTP request".to_owned(),
            CloseReason::ProtocolError,
        ),
        ReadError::Body(e @ BodyError::TooLarge) => (
            ApiError::from(e),
            format!("request body over {max_body} bytes"),
            CloseReason::Limit,
        ),
        ReadError::Body(e) => (ApiError::from(e), e.to_string(), CloseReason::ProtocolError),
    };
    refuse(shard, stream, error, &message, timeout, route).await;
    Served::Close(reason)
}

/// 408 and close: the deadline passed before the request was complete.
async fn timed_out(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    timeout: Duration,
    what: &str,
    route: HttpRoute,
) -> Served {
    let error = ApiError::Timeout;
    shard.shared.metrics.shard(shard.id).error(error.code());
    let message = format!("{what} not received within {} ms", timeout.as_millis());
    let out = api_error_response(error, &message, false);
    let started = std::time::Instant::now();
    // The client has been silent, so nothing is left unread: close without lingering.
    let _ = write_within(shard, stream, out, timeout).await;
    count_request(shard, route, error.status(), started);
    Served::Close(CloseReason::Timeout)
}

/// An error answer that ends the connection (the request, or its body, was not read to
/// its end, so the connection cannot carry another request).
async fn refuse(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    error: ApiError,
    message: &str,
    timeout: Duration,
    route: HttpRoute,
) {
    let out = api_error_response(error, message, false);
    send_refusal(shard, stream, error, out, timeout, route).await;
}

/// Writes `out`, the answer with `error` that ends the connection, then lingers.
async fn send_refusal(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    error: ApiError,
    out: Vec<u8>,
    timeout: Duration,
    route: HttpRoute,
) {
    shard.shared.metrics.shard(shard.id).error(error.code());
    let started = std::time::Instant::now();
    let written = write_within(shard, stream, out, timeout).await;
    count_request(shard, route, error.status(), started);
    if written {
        linger(stream).await;
    }
}

/// 429 and close for a connection whose client address has `max_connections_per_ip`
/// open, before any request is read (found in review: such connections were read for
/// up to `handshake_timeout_ms` each). What the client sends meanwhile is drained by the
/// linger, so the answer is not lost to a reset.
async fn refuse_address(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    refused: IpRefused,
    timeout: Duration,
) {
    let error = ApiError::RateLimited;
    let out = api_error_response(error, &refused.to_string(), false);
    let out = with_header(out, "Retry-After", "1");
    send_refusal(shard, stream, error, out, timeout, HttpRoute::Unparsed).await;
}

/// Counts one answered request of `route` with `status`, timed from `started`.
fn count_request(shard: &Shard, route: HttpRoute, status: u16, started: std::time::Instant) {
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let counters = shard.shared.metrics.shard(shard.id);
    counters.http_request(route, status, nanos);
}

/// The status of a response the server wrote (`HTTP/1.1 NNN …`).
fn status_of(response: &[u8]) -> u16 {
    response
        .get(9..12)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// Sends FIN after the answer, then reads and drops what the client still sends (bounded
/// in time and bytes): closing with unread bytes would send a reset, which can destroy
/// the answer before the client reads it.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = Vec::with_capacity(4096);
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            scratch.clear();
            let (result, back) = stream.read(scratch).await;
            scratch = back;
            match result {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = monoio::time::timeout(LINGER, drain).await;
}

/// Writes `out` (counted in `ringcast_bytes_out_total{transport="http"}`); false when
/// the write failed or took longer than `timeout` (a client that does not read).
async fn write_within(
    shard: &Shard,
    stream: &mut TcpStream,
    out: Vec<u8>,
    timeout: Duration,
) -> bool {
    let len = out.len() as u64;
    let written = matches!(
        monoio::time::timeout(timeout, stream.write_all(out)).await,
        Ok((Ok(_), _))
    );
    if written {
        let counters = shard.shared.metrics.shard(shard.id);
        counters.bytes_out(Transport::Http, len);
    }
    written
}

enum ReadError {
    Head(HttpError),
    Body(BodyError),
    Closed,
}

/// Reads a request head; `begun` is set once any of its bytes has arrived (a timeout
/// drops the read in progress and the bytes with it, so `buf` cannot tell).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    begun: &std::cell::Cell<bool>,
) -> Result<RequestHead, ReadError> {
    loop {
        if !buf.is_empty() {
            begun.set(true);
            if let Some(head) = parse_request_head(buf).map_err(ReadError::Head)? {
                return Ok(head);
            }
        }
        read_more(stream, buf).await?;
    }
}

/// Reads the body of the request whose head was just drained from the front of `buf`;
/// bytes after the body (a pipelined request) stay in `buf`.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    max_body: usize,
) -> Result<Vec<u8>, ReadError> {
    let framing = head.body_framing().map_err(ReadError::Body)?;
    let mut decoder = BodyDecoder::new(framing, max_body);
    let mut body = Vec::new();
    let mut continue_sent = false;
    loop {
        let used = decoder.handle_bytes(buf, &mut body);
        buf.drain(..used);
        match decoder.poll() {
            BodyPoll::Complete => return Ok(body),
            BodyPoll::Error(e) => return Err(ReadError::Body(e)),
            BodyPoll::NeedMore => {}
        }
        if head.expects_continue() && !continue_sent {
            continue_sent = true;
            let (result, _) = stream.write_all(CONTINUE.to_vec()).await;
            if result.is_err() {
                return Err(ReadError::Closed);
            }
        }
        read_more(stream, buf).await?;
    }
}

/// Admits the upgrade of a connection to a long-lived one (WebSocket, SSE) for
/// `client`, or gives the 429 that refuses it (see `per_ip.rs`). A connection whose own
/// place (`own`) counts for `client` takes one handshake of its rate and keeps that
/// place: `Ok(None)`. Otherwise (a trusted proxy's connection, the client named by
/// `X-Forwarded-For`) a handshake and a place of `client`'s own are taken: `Ok(Some)`.
fn admit_upgrade(
    shard: &Shard,
    own: Option<&IpSlot>,
    client: IpAddr,
) -> Result<Option<IpSlot>, Refusal> {
    let limits = shard.shared.config.load().ip_limits();
    let now = shard.now().0;
    let admitted = match own {
        Some(own) if own.counts_for(client) => own.handshake(limits, now).map(|()| None),
        _ => PerIp::admit(&shard.shared.per_ip, client, limits, now).map(Some),
    };
    admitted
        .map_err(|refused| Refusal::new(ApiError::RateLimited, refused.to_string()).retry_after(1))
}

/// Reads until the start of `buf` is a PROXY header or cannot be one.
async fn read_proxy_header(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<ProxyParse, ReadError> {
    loop {
        match proxy::parse(buf) {
            ProxyParse::Incomplete => read_more(stream, buf).await?,
            done => return Ok(done),
        }
    }
}

/// Appends what the socket has to `buf`; `Closed` on EOF or a read error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(buf.len().max(1024));
    }
    let len = buf.len();
    let (result, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
    *buf = slice.into_inner();
    match result {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(_) => Ok(()),
    }
}

/// Answers a complete request that is not for the HTTP API (`crate::api` answers those).
/// `head_only`: the request was a HEAD, here as a GET.
fn route(
    shard: &Rc<Shard>,
    head: &RequestHead,
    head_only: bool,
    client: IpAddr,
    own_ip: Option<&IpSlot>,
) -> Route {
    let keep_alive = head.keep_alive();
    let respond = |out: Vec<u8>| Route::Respond(out, keep_alive);
    let error = |error: ApiError, message: &str| {
        shard.shared.metrics.shard(shard.id).error(error.code());
        Route::Respond(refusal_response(error, message, keep_alive), keep_alive)
    };
    let path = head.path.as_str();
    let is_get = head.method == "GET";
    if is_get {
        if let Some(out) = probe_response(shard, head, keep_alive) {
            return respond(out);
        }
    }
    match path {
        "/_rt/ws" if !is_get => error(ApiError::MethodNotAllowed, "use GET to open a WebSocket"),
        // What a GET without an upgrade gets: a HEAD cannot upgrade.
        "/_rt/ws" if head_only => error(
            ApiError::UpgradeRequired,
            "this endpoint speaks WebSocket only",
        ),
        "/_rt/ws" => websocket(shard, head, client, own_ip, keep_alive),
        "/healthz" | "/readyz" | "/metrics" if !is_get => {
            error(ApiError::MethodNotAllowed, "use GET")
        }
        _ => match &shard.shared.demo {
            Some(demo) if DemoSite::handles(path) => {
                if !is_get {
                    return error(ApiError::MethodNotAllowed, "use GET");
                }
                match demo.answer(path, keep_alive) {
                    Ok(out) => respond(out),
                    Err((code, message)) => error(code, &message),
                }
            }
            _ => error(ApiError::NotFound, "no such route"),
        },
    }
}

/// The answer to `GET /healthz`, `/readyz` or `/metrics`; `None` for any other path.
fn probe_response(shard: &Shard, head: &RequestHead, keep_alive: bool) -> Option<Vec<u8>> {
    let out = match head.path.as_str() {
        "/healthz" => ok_json(br#"{"status":"ok"}"#, keep_alive),
        "/readyz" => match shard.shared.readiness(shard.mesh.is_shutting_down()) {
            Ok(()) => ok_json(br#"{"status":"ready"}"#, keep_alive),
            Err(why) => {
                let error = ApiError::NotReady;
                shard.shared.metrics.shard(shard.id).error(error.code());
                refusal_response(error, why.message(), keep_alive)
            }
        },
        "/metrics" if !crate::api::auth::may_scrape(head, &shard.shared.config.load()) => {
            let error = ApiError::Unauthorized;
            shard.shared.metrics.shard(shard.id).error(error.code());
            let message = "/metrics needs `Authorization: Bearer <[metrics] bearer_token>`";
            let response = refusal_response(error, message, keep_alive);
            with_header(response, "WWW-Authenticate", "Bearer")
        }
        "/metrics" => {
            let text = shard.shared.render_metrics(shard.mesh.is_shutting_down());
            ok_response(METRICS_CONTENT_TYPE, text.as_bytes(), keep_alive)
        }
        _ => return None,
    };
    Some(out)
}

/// The answer to a probe that arrived while `max_connections` is reached (`GET
/// /healthz`, `/readyz`, `/metrics`, or a HEAD of one, here as a GET), always with
/// `Connection: close`; `None` for any other request, which is refused with 503.
fn probe_without_slot(shard: &Shard, head: &RequestHead) -> Option<Vec<u8>> {
    if head.method != "GET" {
        return None;
    }
    probe_response(shard, head, false)
}

/// The JSON error answer of a route outside the HTTP API, with the header its status
/// requires: `Allow` on a 405 (every such route takes GET, and so HEAD), `Upgrade` on a
/// 426.
fn refusal_response(error: ApiError, message: &str, keep_alive: bool) -> Vec<u8> {
    let response = api_error_response(error, message, keep_alive);
    match error {
        ApiError::MethodNotAllowed => with_header(response, "Allow", "GET, HEAD"),
        ApiError::UpgradeRequired => {
            let response = with_header(response, "Upgrade", "websocket");
            with_connection_option(response, "upgrade")
        }
        _ => response,
    }
}

fn websocket(
    shard: &Rc<Shard>,
    head: &RequestHead,
    client: IpAddr,
    own_ip: Option<&IpSlot>,
    keep_alive: bool,
) -> Route {
    let error = |error: ApiError, message: &str| {
        shard.shared.metrics.shard(shard.id).error(error.code());
        Route::Respond(refusal_response(error, message, keep_alive), keep_alive)
    };
    let accept = match head.websocket_upgrade() {
        Upgrade::Valid { accept } => accept,
        Upgrade::NotRequested => {
            return error(
                ApiError::UpgradeRequired,
                "this endpoint speaks WebSocket only",
            )
        }
        Upgrade::Malformed(why) => return error(ApiError::BadRequest, why),
        // RFC 6455 §4.4: 426 naming the version spoken, so the client can retry with it.
        Upgrade::UnsupportedVersion => {
            let error = ApiError::UpgradeRequired;
            shard.shared.metrics.shard(shard.id).error(error.code());
            let message = "WebSocket version 13 only (Sec-WebSocket-Version: 13)";
            let out = refusal_response(error, message, keep_alive);
            let out = with_header(out, "Sec-WebSocket-Version", "13");
            return Route::Respond(out, keep_alive);
        }
        Upgrade::UnsupportedSubprotocol(offered) => {
            let message = format!(
                "no WebSocket subprotocol is supported (offered: {offered}); \
                 connect without Sec-WebSocket-Protocol"
            );
            return error(ApiError::BadRequest, &message);
        }
    };
    if shard.is_shutting_down() {
        return error(ApiError::Overloaded, "server shutting down");
    }
    // Before the tenant, origin and token checks: a refused handshake uses up the
    // address's budget too (found in review: only handshakes that would succeed
    // counted, so one address could have tokens checked without bound). The slot is
    // given back when the handshake is refused.
    let ip = match admit_upgrade(shard, own_ip, client) {
        Ok(ip) => ip,
        Err(refusal) => {
            let out = crate::api::respond_refusal(shard, &refusal, keep_alive);
            return Route::Respond(out, keep_alive);
        }
    };
    let tenant_id = head.query_param("tenant");
    // With `--dev`, the SDK's default tenant id is the dev tenant, as over HTTP and REN
    // (found in review: `?tenant=dev-tenant-001` got 404 here alone).
    let tenants = shard.shared.tenants.load();
    let config = shard.shared.config.load();
    let named = crate::api::auth::dev_alias(config.dev, &tenants, tenant_id.as_deref());
    // An empty `?tenant=` is the default tenant, as an empty `X-Tenant-Id` is over HTTP
    // and REN (found in a SPEC audit: 404 here alone).
    let Some(tenant) = tenants.resolve(named.filter(|id| !id.is_empty())) else {
        return error(ApiError::UnknownTenant, "no such tenant");
    };
    if let Err(refused) = crate::dev_guard::check(head, &config, &tenant) {
        return error(refused.error, &refused.message);
    }
    if let Some(origin) = head.header("origin") {
        let origin = std::str::from_utf8(origin).unwrap_or("");
        if !tenant.allows_origin(origin.trim()) {
            return error(
                ApiError::Forbidden,
                "this Origin is not in the tenant's allowed_origins",
            );
        }
    }
    let grant = match head.query_param("token").filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => {
            let verified = token::verify(&token, &tenant, shard.token_time());
            let counters = shard.shared.metrics.shard(shard.id);
            counters.token_verification(verified.is_ok());
            match verified {
                Ok(grant) => Some(grant),
                Err(refused) => {
                    let message = format!("connection token refused: {}", refused.message);
                    return error(ApiError::Unauthorized, &message);
                }
            }
        }
    };
    let client_id = head
        .query_param("cid")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| shard.generate_client_id());
    let presence_events = head
        .query_param("presence_events")
        .as_deref()
        .and_then(PresenceSpelling::parse);
    let shard_header = shard.id.to_string();
    let response = switching_protocols(&accept, &[("x-ringcast-shard", &shard_header)]);
    Route::Upgrade {
        setup: SessionSetup {
            tenant,
            client_id,
            presence_events,
            grant,
            response,
        },
        ip,
    }
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn the_status_is_read_from_the_status_line() {
        assert_eq!(status_of(b"HTTP/1.1 503 Service Unavailable\r\n"), 503);
        assert_eq!(status_of(b"HTTP/1.1 101 Switching Protocols\r\n"), 101);
        assert_eq!(status_of(b"junk"), 0);
    }
}
