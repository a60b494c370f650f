//! The client address behind proxies and the per-address limits (issue #15): only
//! trusted proxies are believed (`X-Forwarded-For`, PROXY protocol v1 and v2), a PROXY
//! header from anyone else is refused, every connection of an address counts from its
//! accept (over the limit it gets 429 before anything is read), and over the handshake
//! rate an upgrade gets 429 while everything else goes on.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;
use ringcast_tests::{poll_until, read_http_response, unmasked_frame, HttpResponse, Server};

const WAIT: Duration = Duration::from_secs(10);

fn start(settings: &str) -> Result<Server> {
    let toml = format!(
        "{settings}\ndefault_tenant = \"acme\"\n[[tenants]]\nid = \"acme\"\nplan = \"pro\"\n"
    );
    Ok(Server::start_with_config(&toml, &[])?.0)
}

fn upgrade(headers: &str) -> Vec<u8> {
    format!(
        "GET /_rt/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    .into_bytes()
}

/// Opens a connection from `local` (any 127.x address), sends `prefix` then an upgrade
/// with `headers`; the response and the socket (kept open: it holds its place).
fn open_from(
    server: &Server,
    local: &str,
    prefix: &[u8],
    headers: &str,
) -> Result<(HttpResponse, TcpStream)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let bind: SocketAddr = format!("{local}:0").parse()?;
    socket.bind(&bind.into())?;
    socket.connect(&server.addr().into())?;
    let mut stream: TcpStream = socket.into();
    let mut bytes = prefix.to_vec();
    bytes.extend(upgrade(headers));
    stream.write_all(&bytes)?;
    Ok((read_http_response(&mut stream, WAIT)?, stream))
}

/// A connection from `local` (any 127.x address).
fn connect_from(server: &Server, local: &str) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let bind: SocketAddr = format!("{local}:0").parse()?;
    socket.bind(&bind.into())?;
    socket.connect(&server.addr().into())?;
    Ok(socket.into())
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

fn open(server: &Server, headers: &str) -> Result<(HttpResponse, TcpStream)> {
    open_from(server, "127.0.0.1", b"", headers)
}

fn proxy_v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 3001\r\n").into_bytes()
}

fn proxy_v2(client: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0x0b, 0xb9]);
    h
}

#[test]
fn over_the_per_address_connection_limit_the_handshake_gets_429_until_one_closes() -> Result<()> {
    let server = start("max_connections_per_ip = 2\nhandshakes_per_sec_per_ip = 0")?;
    let (a, _a) = open(&server, "")?;
    let (b, b_stream) = open(&server, "")?;
    assert_eq!((a.status, b.status), (101, 101));
    let (refused, _) = open(&server, "")?;
    refused.assert_error(429, "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Another address is its own.
    let (other, _other) = open_from(&server, "127.0.0.2", b"", "")?;
    assert_eq!(other.status, 101);
    drop(b_stream);
    let again = poll_until(WAIT, Duration::from_millis(20), || {
        let (resp, stream) = open(&server, "")?;
        Ok((resp.status == 101).then_some(stream))
    })?;
    drop(again);
    Ok(())
}

/// Every connection counts for its address from the accept, not only WebSockets and SSE
/// streams (found in review: 40 kept-alive `/healthz` connections from one address took
/// every `max_connections` slot, and another address's WebSocket got 503). Over the
/// limit a connection gets 429 at once, before its request is read.
#[test]
fn one_address_cannot_take_every_connection_slot() -> Result<()> {
    let server = start(
        "max_connections = 40\nmax_connections_per_ip = 2\nhandshakes_per_sec_per_ip = 0\n\
         handshake_timeout_ms = 3000",
    )?;
    // One at a time, so the first two are the ones admitted.
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut conn = connect_from(&server, "127.0.0.5")?;
        conn.write_all(HEALTHZ)?;
        let resp = read_http_response(&mut conn, WAIT)?;
        if resp.status == 200 {
            assert_eq!(resp.header("connection"), Some("keep-alive"));
        } else {
            resp.assert_error(429, "rate_limited");
            assert_eq!(resp.header("retry-after"), Some("1"));
            assert_eq!(resp.header("connection"), Some("close"));
            refused += 1;
        }
        kept.push(conn);
    }
    assert_eq!(refused, 38, "two of the address's connections admitted");
    // A half-sent head over the limit is refused at once: read, it would wait for the
    // rest until `handshake_timeout_ms` and get 408.
    let mut dripping = connect_from(&server, "127.0.0.5")?;
    dripping.write_all(&HEALTHZ[..10])?;
    read_http_response(&mut dripping, Duration::from_millis(2500))?
        .assert_error(429, "rate_limited");
    // Another address still gets in.
    let (ws, _ws) = open_from(&server, "127.0.0.6", b"", "")?;
    assert_eq!(ws.status, 101, "{}", ws.body_text());
    // The two admitted are still served, kept alive.
    for conn in kept.iter_mut().take(2) {
        conn.write_all(HEALTHZ)?;
        assert_eq!(read_http_response(conn, WAIT)?.status, 200);
    }
    // The address's WebSocket is refused too: its two places are taken.
    let (over, _) = open_from(&server, "127.0.0.5", b"", "")?;
    over.assert_error(429, "rate_limited");
    Ok(())
}

/// Behind a trusted proxy's PROXY header, the connection counts for the client the
/// header names from there on, whatever it carries; the proxy's own connections (no
/// header) are not counted.
#[test]
fn a_proxy_header_counts_the_connection_for_its_client() -> Result<()> {
    let server = start(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 1\n\
         handshakes_per_sec_per_ip = 0",
    )?;
    let mut plain = TcpStream::connect(server.addr())?;
    plain.write_all(&[proxy_v1("198.51.100.7"), HEALTHZ.to_vec()].concat())?;
    assert_eq!(read_http_response(&mut plain, WAIT)?.status, 200);
    let (same, _) = open_from(&server, "127.0.0.1", &proxy_v1("198.51.100.7"), "")?;
    same.assert_error(429, "rate_limited");
    // The proxy's own connections, several at once.
    let mut bare: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(server.addr())?;
        conn.write_all(HEALTHZ)?;
        assert_eq!(read_http_response(&mut conn, WAIT)?.status, 200);
        bare.push(conn);
    }
    drop(plain);
    let again = poll_until(WAIT, Duration::from_millis(20), || {
        let (resp, stream) = open_from(&server, "127.0.0.1", &proxy_v1("198.51.100.7"), "")?;
        Ok((resp.status == 101).then_some(stream))
    })?;
    drop(again);
    Ok(())
}

#[test]
fn handshakes_per_second_are_bounded_per_address() -> Result<()> {
    let server = start("max_connections_per_ip = 0\nhandshakes_per_sec_per_ip = 1")?;
    let started = Instant::now();
    let (first, _first) = open(&server, "")?;
    let (second, _second) = open(&server, "")?;
    assert_eq!(first.status, 101);
    if started.elapsed() < Duration::from_millis(900) {
        second.assert_error(429, "rate_limited");
    }
    Ok(())
}

/// A refused handshake (an unknown tenant here; a bad token or origin alike) uses up
/// the address's handshake budget too: only handshakes that would succeed used to count,
/// so one address could make the server check tokens without bound (found in review).
#[test]
fn refused_handshakes_count_against_the_per_address_rate() -> Result<()> {
    let server = start("max_connections_per_ip = 0\nhandshakes_per_sec_per_ip = 1")?;
    let ghost = |server: &Server| -> Result<HttpResponse> {
        let request =
            String::from_utf8(upgrade(""))?.replacen("/_rt/ws", "/_rt/ws?tenant=ghost", 1);
        ringcast_tests::http_request(server.addr(), request.as_bytes())
    };
    let started = Instant::now();
    let first = ghost(&server)?;
    let second = ghost(&server)?;
    first.assert_error(404, "unknown_tenant");
    if started.elapsed() < Duration::from_millis(900) {
        second.assert_error(429, "rate_limited");
    }
    Ok(())
}

#[test]
fn x_forwarded_for_is_believed_from_trusted_proxies_only() -> Result<()> {
    let trusting = start(
        "trusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 1\nhandshakes_per_sec_per_ip = 0",
    )?;
    let (a, _a) = open(&trusting, "X-Forwarded-For: 203.0.113.1\r\n")?;
    assert_eq!(a.status, 101);
    let (same, _) = open(&trusting, "X-Forwarded-For: 6.6.6.6, 203.0.113.1\r\n")?;
    same.assert_error(429, "rate_limited");
    let (other, _other) = open(&trusting, "X-Forwarded-For: 203.0.113.2\r\n")?;
    assert_eq!(other.status, 101, "another client behind the same proxy");
    // 127.0.0.2 is not trusted: its X-Forwarded-For is ignored, it is the client.
    let (direct, _direct) = open_from(
        &trusting,
        "127.0.0.2",
        b"",
        "X-Forwarded-For: 203.0.113.9\r\n",
    )?;
    assert_eq!(direct.status, 101);
    let (direct2, _) = open_from(
        &trusting,
        "127.0.0.2",
        b"",
        "X-Forwarded-For: 203.0.113.10\r\n",
    )?;
    direct2.assert_error(429, "rate_limited");
    Ok(())
}

#[test]
fn proxy_protocol_names_the_client_and_is_refused_from_untrusted_peers() -> Result<()> {
    let server = start(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 1\nhandshakes_per_sec_per_ip = 0",
    )?;
    let (v1, _v1) = open_from(&server, "127.0.0.1", &proxy_v1("198.51.100.1"), "")?;
    assert_eq!(v1.status, 101);
    let (same, _) = open_from(&server, "127.0.0.1", &proxy_v2([198, 51, 100, 1]), "")?;
    same.assert_error(429, "rate_limited");
    let (v2, _v2) = open_from(&server, "127.0.0.1", &proxy_v2([198, 51, 100, 2]), "")?;
    assert_eq!(v2.status, 101, "v2 names another client");
    // No header from the trusted proxy: the proxy itself is the client.
    let (bare, _bare) = open(&server, "")?;
    assert_eq!(bare.status, 101);
    // A PROXY header from a peer that is not trusted is refused.
    let (forged, _) = open_from(&server, "127.0.0.3", &proxy_v1("198.51.100.3"), "")?;
    forged.assert_error(400, "bad_request");
    let (garbled, _) = open_from(&server, "127.0.0.1", b"PROXY TCP4 nonsense\r\n", "")?;
    garbled.assert_error(400, "bad_request");
    Ok(())
}

/// A PROXY header and the first request share one deadline from the accept: a client
/// dripping both cannot stretch it to twice `handshake_timeout_ms` (found in review).
#[test]
fn a_dripped_proxy_header_and_request_share_one_deadline() -> Result<()> {
    let toml = "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n\
                default_tenant = \"acme\"\n[[tenants]]\nid = \"acme\"\nplan = \"pro\"\n";
    let (server, _) = Server::start_with_config(toml, &["--handshake-timeout-ms", "1000"])?;
    let mut stream = TcpStream::connect(server.addr())?;
    let started = Instant::now();
    let header = proxy_v1("198.51.100.9");
    let (a, b) = header.split_at(10);
    // Paced writes: the client under test is slow on purpose.
    stream.write_all(a)?;
    std::thread::sleep(Duration::from_millis(600));
    stream.write_all(b)?;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(&request[..8])?;
    std::thread::sleep(Duration::from_millis(700));
    // Past the deadline (1 s from the accept): the server may have closed already.
    let _ = stream.write_all(&request[8..]);
    let resp = read_http_response(&mut stream, WAIT)?;
    resp.assert_error(408, "timeout");
    assert!(started.elapsed() < Duration::from_millis(1000 + 1500));
    Ok(())
}

#[test]
fn close_log_lines_name_the_client_address_a_trusted_proxy_gave() -> Result<()> {
    let server = start(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 0\nhandshakes_per_sec_per_ip = 0",
    )?;
    // A WebSocket behind X-Forwarded-For that breaks the protocol (an unmasked frame).
    let (resp, mut ws) = open(&server, "X-Forwarded-For: 203.0.113.7\r\n")?;
    assert_eq!(resp.status, 101);
    ws.write_all(&unmasked_frame(true, 0x1, br#"{"action":"ping"}"#))?;
    let line = server.await_log_line(&["connection closed", "transport=ws", "code=1002"])?;
    assert!(line.contains("client=203.0.113.7"), "{line}");

    // One behind a PROXY v2 header.
    let (resp, mut ws) = open_from(&server, "127.0.0.1", &proxy_v2([198, 51, 100, 4]), "")?;
    assert_eq!(resp.status, 101);
    ws.write_all(&unmasked_frame(true, 0x1, br#"{"action":"ping"}"#))?;
    server.await_log_line(&["connection closed", "client=198.51.100.4", "code=1002"])?;

    // A peer that is not trusted is named itself, whatever its PROXY header says.
    let (forged, _) = open_from(&server, "127.0.0.3", &proxy_v1("198.51.100.5"), "")?;
    forged.assert_error(400, "bad_request");
    let line =
        server.await_log_line(&["connection closed", "transport=http", "client=127.0.0.3"])?;
    assert!(!line.contains("198.51.100.5"), "{line}");
    Ok(())
}
