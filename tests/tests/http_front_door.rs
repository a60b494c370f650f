//! The HTTP front door: request bodies (Content-Length and chunked) read under the
//! `handshake_timeout_ms` deadline, keep-alive, pipelining, and the error answers of the
//! wire contract (408, 413, 400) with the connection slot released.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ringcast_tests::{HttpConn as Conn, HttpResponse, Server};

fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n{body}"
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

fn assert_keep_alive(resp: &HttpResponse) {
    assert_eq!(
        resp.header("connection"),
        Some("keep-alive"),
        "status {}: {}",
        resp.status,
        resp.body_text()
    );
}

#[test]
fn never_sent_body_is_408_within_the_deadline_and_frees_the_slot() -> Result<()> {
    let server = Server::start(&["--handshake-timeout-ms", "500", "--max-connections", "1"])?;
    let mut conn = Conn::open(&server)?;
    let start = Instant::now();
    // A head that declares 100 bytes, and only a few of them.
    conn.send(post(
        "/api/realtime/publish",
        "Content-Length: 100\r\n",
        r#"{"chan"#,
    ))?;
    let resp = conn.response_within(Duration::from_millis(500 + 2500))?;
    let elapsed = start.elapsed();
    resp.assert_error(408, "timeout");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        elapsed >= Duration::from_millis(400),
        "408 after {elapsed:?}, before the 500 ms deadline"
    );
    conn.expect_eof()?;
    assert!(
        start.elapsed() < Duration::from_millis(500 + 2500),
        "closed only after {:?}",
        start.elapsed()
    );

    // The only slot is free again: a request that needs one (probes such as /healthz
    // are answered without a slot) gets its route's answer, not 503.
    let mut next = Conn::open(&server)?;
    next.send(get("/no/such/route"))?;
    let resp = next.response()?;
    resp.assert_error(404, "not_found");
    Ok(())
}

/// A kept-alive connection that sends nothing more is closed at the deadline without a
/// 408 and without an error counted (found in review: every idle pooled connection of a
/// proxy got a 408 and counted as an error each `handshake_timeout_ms`). A next request
/// begun but not finished still gets its 408.
#[test]
fn an_idle_kept_alive_connection_is_closed_quietly() -> Result<()> {
    let server = Server::start(&["--handshake-timeout-ms", "300"])?;
    let mut conn = Conn::open(&server)?;
    conn.send(get("/no/such/route"))?;
    assert_keep_alive(&conn.response()?);
    conn.expect_eof()?;
    let mut late = Conn::open(&server)?;
    late.send(get("/no/such/route"))?;
    assert_keep_alive(&late.response()?);
    late.send(b"GET /no/such/route HTTP/1.1\r\nHo")?;
    late.response()?.assert_error(408, "timeout");
    let metrics = ringcast_tests::http_get(server.addr(), "/metrics")?;
    let text = String::from_utf8_lossy(&metrics.body);
    let timeouts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ringcast_errors_total{code=\"timeout\"}"))
        .collect();
    assert_eq!(
        timeouts,
        ["ringcast_errors_total{code=\"timeout\"} 1"],
        "{text}"
    );
    Ok(())
}

#[test]
fn oversized_bodies_are_413() -> Result<()> {
    let server = Server::start(&["--max-message-bytes", "4096"])?;
    // Declared too large: answered from the head alone.
    let mut conn = Conn::open(&server)?;
    conn.send(post(
        "/api/realtime/publish",
        "Content-Length: 4097\r\n",
        "",
    ))?;
    let resp = conn.response()?;
    resp.assert_error(413, "payload_too_large");
    assert_eq!(resp.header("connection"), Some("close"));
    conn.expect_eof()?;

    // A chunk whose size line goes over the limit.
    let mut conn = Conn::open(&server)?;
    conn.send(post(
        "/api/realtime/publish",
        "Transfer-Encoding: chunked\r\n",
        "1001\r\n",
    ))?;
    conn.response()?.assert_error(413, "payload_too_large");
    conn.expect_eof()?;

    // Exactly the limit is read and routed (the publish route refuses it: not JSON), and
    // the connection stays usable.
    let mut conn = Conn::open(&server)?;
    let body = "b".repeat(4096);
    conn.send(post(
        "/api/realtime/publish",
        "Content-Length: 4096\r\n",
        &body,
    ))?;
    let resp = conn.response()?;
    resp.assert_error(400, "bad_request");
    assert_keep_alive(&resp);
    conn.send(get("/healthz"))?;
    assert_eq!(conn.response()?.status, 200);
    Ok(())
}

#[test]
fn keep_alive_serves_three_requests_on_one_connection() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = Conn::open(&server)?;

    conn.send(get("/healthz"))?;
    let resp = conn.response()?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()?["status"], "ok");
    assert_keep_alive(&resp);

    conn.send(post(
        "/api/realtime/publish",
        "Content-Length: 13\r\n",
        r#"{"channel":1}"#,
    ))?;
    let resp = conn.response()?;
    resp.assert_error(400, "bad_request");
    assert_keep_alive(&resp);

    conn.send(get("/nope"))?;
    let resp = conn.response()?;
    resp.assert_error(404, "not_found");
    assert_keep_alive(&resp);
    Ok(())
}

#[test]
fn pipelined_requests_are_answered_in_order() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = Conn::open(&server)?;
    let burst = [
        get("/healthz"),
        post("/api/realtime/publish", "Content-Length: 2\r\n", "{}"),
        get("/nope"),
        post(
            "/api/realtime/presence/room/join",
            "Transfer-Encoding: chunked\r\n",
            "2\r\n{}\r\n0\r\n\r\n",
        ),
        "GET /_rt/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
    ]
    .concat();
    conn.send(burst)?;
    let expected = [
        (200, None),
        (400, Some("bad_request")),
        (404, Some("not_found")),
        (400, Some("bad_request")),
        (426, Some("upgrade_required")),
    ];
    for (i, (status, code)) in expected.into_iter().enumerate() {
        let resp = conn
            .response()
            .with_context(|| format!("response {i} of the burst"))?;
        match code {
            Some(code) => resp.assert_error(status, code),
            None => assert_eq!(resp.status, status, "response {i}: {}", resp.body_text()),
        }
    }
    // The last request asked to close.
    conn.expect_eof()?;
    Ok(())
}

/// `Expect: 100-continue` makes the arrival of the body observable: the server says
/// `100 Continue` only once it has read the head and needs body bytes, so the rest of the
/// body surely comes in reads of its own.
#[test]
fn content_length_body_in_several_writes_is_read_fully() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = Conn::open(&server)?;
    let body = r#"{"channel":"chat:lobby","data":{"text":"hello in pieces"}}"#;
    let head = post(
        "/api/realtime/publish",
        &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", body.len()),
        "",
    );
    conn.send(format!("{head}{}", &body[..10]))?;
    assert_eq!(conn.response()?.status, 100, "100 Continue");
    conn.send(&body[10..30])?;
    conn.send(&body[30..])?;
    conn.send(get("/healthz"))?;
    let published = conn.response()?;
    assert_eq!(published.status, 200, "{}", published.body_text());
    assert_eq!(published.json()?["ok"], true);
    let resp = conn.response()?;
    assert_eq!(
        resp.status,
        200,
        "the request after the body: {}",
        resp.body_text()
    );
    Ok(())
}

#[test]
fn chunked_body_in_several_writes_is_read_fully() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = Conn::open(&server)?;
    let head = post(
        "/api/realtime/presence/private-room%3Avip/join",
        "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n",
        "",
    );
    conn.send(format!("{head}5\r\n{{\"use"))?;
    assert_eq!(conn.response()?.status, 100, "100 Continue");
    // `{"userId":"alice"}` as 5 + 9 + 4 bytes, an extension and a trailer.
    conn.send("\r\n9;ext=\"x\"\r\nrId\":\"ali\r\n")?;
    conn.send("4\r\nce\"}\r\n0\r\nX-Trailer: t\r\n")?;
    conn.send(format!("\r\n{}", get("/nope")))?;
    let joined = conn.response()?;
    assert_eq!(joined.status, 200, "{}", joined.body_text());
    assert_eq!(joined.json()?["isNew"], true, "the whole body arrived");
    conn.response()?.assert_error(404, "not_found");
    Ok(())
}

#[test]
fn malformed_chunked_body_is_400_and_closes() -> Result<()> {
    let server = Server::start(&[])?;
    for (what, body) in [
        ("size not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("no CRLF after the data", "5\r\nhelloXX0\r\n\r\n"),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let mut conn = Conn::open(&server)?;
        conn.send(post(
            "/api/realtime/publish",
            "Transfer-Encoding: chunked\r\n",
            body,
        ))?;
        let resp = conn.response().with_context(|| what.to_owned())?;
        resp.assert_error(400, "bad_request");
        assert_eq!(resp.header("connection"), Some("close"), "{what}");
        conn.expect_eof().with_context(|| what.to_owned())?;
    }
    Ok(())
}

#[test]
fn conflicting_or_invalid_framing_is_refused() -> Result<()> {
    let server = Server::start(&[])?;
    for (what, headers, status, code) in [
        (
            "Content-Length and Transfer-Encoding",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            400,
            "bad_request",
        ),
        (
            "Content-Length not a number",
            "Content-Length: abc\r\n",
            400,
            "bad_request",
        ),
        (
            "two different Content-Lengths",
            "Content-Length: 2\r\nContent-Length: 3\r\n",
            400,
            "bad_request",
        ),
        (
            "a coding before chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
            501,
            "not_implemented",
        ),
    ] {
        let mut conn = Conn::open(&server)?;
        conn.send(post(
            "/api/realtime/publish",
            headers,
            "5\r\nhello\r\n0\r\n\r\n",
        ))?;
        let resp = conn.response().with_context(|| what.to_owned())?;
        resp.assert_error(status, code);
        conn.expect_eof().with_context(|| what.to_owned())?;
    }
    Ok(())
}

#[test]
fn api_paths_are_percent_decoded() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = Conn::open(&server)?;
    // What encodeURIComponent makes of `private-room:vip` and `a/b`.
    conn.send(get("/api/realtime/history/private-room%3Avip"))?;
    let resp = conn.response()?;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(resp.json()?["messages"], serde_json::json!([]));
    let body = r#"{"userId":"u"}"#;
    conn.send(post(
        "/api/realtime/presence/a%2Fb/join",
        &format!("Content-Length: {}\r\n", body.len()),
        body,
    ))?;
    assert_eq!(conn.response()?.status, 200);
    conn.send(get("/api/realtime/presence/a%2Fb"))?;
    let members = conn.response()?.json()?;
    assert_eq!(
        members["members"][0]["userId"], "u",
        "the channel is `a/b`: {members}"
    );
    for path in ["/api/realtime/history/bad%zz", "/api/realtime/history/%FF"] {
        conn.send(get(path))?;
        let resp = conn.response()?;
        resp.assert_error(400, "bad_request");
        assert_keep_alive(&resp);
    }
    Ok(())
}

fn head(path: &str) -> String {
    format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// HEAD is answered on GET routes as GET is, without the body (found in review: every
/// HEAD got 405); the connection then carries the next request. On the two stream
/// routes it gets what a GET without the stream gets (`/_rt/ws`: 426), or 405.
#[test]
fn head_gets_the_get_answer_without_its_body() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = Conn::open(&server)?;
    for path in ["/healthz", "/readyz", "/api/realtime/channels"] {
        conn.send(get(path))?;
        let full = conn.response()?;
        assert_eq!(full.status, 200, "GET {path}: {}", full.body_text());
        conn.send(head(path))?;
        let bare = conn.head_response()?;
        assert_eq!(bare.status, 200, "HEAD {path}");
        assert_keep_alive(&bare);
        assert_eq!(
            bare.header("content-length"),
            Some(full.body.len().to_string().as_str()),
            "HEAD {path} names the GET body's length"
        );
        assert_eq!(bare.header("content-type"), full.header("content-type"));
        // No body came: the next answer on the connection starts right after the head.
        conn.send(get("/healthz"))?;
        let next = conn.response()?;
        assert_eq!(next.status, 200, "after HEAD {path}");
        assert_eq!(next.body_text(), r#"{"status":"ok"}"#);
    }
    conn.send(head("/_rt/ws"))?;
    let ws = conn.head_response()?;
    assert_eq!(ws.status, 426);
    assert_eq!(ws.header("upgrade"), Some("websocket"));
    conn.send(head("/api/maravilla/ren"))?;
    let ren = conn.head_response()?;
    assert_eq!((ren.status, ren.header("allow")), (405, Some("GET")));
    conn.send(head("/nope"))?;
    assert_eq!(conn.head_response()?.status, 404);
    // Another method names HEAD as allowed.
    conn.send(post("/healthz", "Content-Length: 0\r\n", ""))?;
    let post = conn.response()?;
    post.assert_error(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    conn.send(get("/healthz"))?;
    assert_eq!(conn.response()?.status, 200, "still kept alive");
    Ok(())
}

/// The `text/plain` publish a page can send without a preflight, with `Host: host` and
/// `Origin: origin` (none when `None`).
fn page_publish(server: &Server, host: &str, origin: Option<&str>) -> Result<HttpResponse> {
    let body = r#"{"channel":"guard","data":1}"#;
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let mut conn = Conn::open(server)?;
    conn.send(format!(
        "POST /api/realtime/publish HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n\
         {origin}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))?;
    conn.response()
}

/// `--dev` asks for no API key, so it takes browser requests from local pages only: a
/// page on another site cannot publish (a `text/plain` POST needs no preflight) or open
/// a WebSocket, and a DNS name rebound to the loopback listener is refused (found in
/// review). Requests without `Origin` (backends, the SDK in Node) are not affected.
#[test]
fn dev_refuses_foreign_pages_and_rebound_hosts() -> Result<()> {
    let server = Server::start(&[])?;
    let publish = |host: &str, origin: Option<&str>| page_publish(&server, host, origin);
    let local = server.addr().to_string();
    publish(&local, Some("https://evil.example"))?.assert_error(403, "forbidden");
    publish(&local, Some("null"))?.assert_error(403, "forbidden");
    // A page served from a public address is foreign too (found in review: any IP
    // address passed).
    publish(&local, Some("http://203.0.113.5"))?.assert_error(403, "forbidden");
    publish(&local, Some("http://[2001:db8::1]:8080"))?.assert_error(403, "forbidden");
    publish("evil.example:3001", Some("http://evil.example:3001"))?.assert_error(403, "forbidden");
    publish("evil.example", None)?.assert_error(403, "forbidden");
    // A page opened from disk (Firefox sends `null`, Chromium's WebSocket `file://`).
    publish(&local, Some("file://"))?.assert_error(403, "forbidden");
    // A page of another host on this network, on a server it reached over loopback:
    // that host could not reach the server itself (found in review: any private
    // address passed, so another guest of a café's Wi-Fi could drive it).
    assert!(
        std::net::UdpSocket::bind("192.168.1.5:0").is_err(),
        "this test needs 192.168.1.5 not to be an address of this machine"
    );
    for host in [
        local.as_str(),
        "localhost:3001",
        "[::1]:3001",
        "0.0.0.0:3001",
    ] {
        publish(host, Some("http://192.168.1.5:5173"))?.assert_error(403, "forbidden");
    }
    let mut ok = vec![
        (local.clone(), None),
        (local.clone(), Some("http://localhost:5173".to_owned())),
        (local.clone(), Some("http://127.0.0.1:8080".to_owned())),
        (
            "localhost:3001".to_owned(),
            Some("http://app.localhost:5173".to_owned()),
        ),
        ("ringcast".to_owned(), None),
        ("host.docker.internal:3001".to_owned(), None),
        // Podman's, Lima's and Docker's other names for the host (found in review).
        ("host.containers.internal:3001".to_owned(), None),
        ("host.lima.internal:3001".to_owned(), None),
        ("gateway.docker.internal:3001".to_owned(), None),
        // Pages only this machine serves: Python's `http.server` prints 0.0.0.0.
        (local.clone(), Some("http://0.0.0.0:8000".to_owned())),
        (local.clone(), Some("http://[::]:8000".to_owned())),
        // Reached over the network: its hosts can reach the server anyway.
        (
            "192.168.1.5:3001".to_owned(),
            Some("http://192.168.1.77:5173".to_owned()),
        ),
        (
            "[fd00::5]:3001".to_owned(),
            Some("http://[fe80::9]:5173".to_owned()),
        ),
    ];
    // A page on this machine's own private address (a dev server started with
    // `--host`), when the machine has one: its route to a private network says which.
    if let Some(own) = own_private_address() {
        let origin = match own {
            std::net::IpAddr::V4(v4) => format!("http://{v4}:5173"),
            std::net::IpAddr::V6(v6) => format!("http://[{v6}]:5173"),
        };
        ok.push((local.clone(), Some(origin)));
    } else {
        eprintln!("no private address on this machine: its own-address case is not run");
    }
    for (host, origin) in &ok {
        let resp = publish(host, origin.as_deref())?;
        assert_eq!(resp.status, 200, "{host} {origin:?}: {}", resp.body_text());
    }

    let upgrade = |origin: &str| {
        format!(
            "GET /_rt/ws HTTP/1.1\r\nHost: {local}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    let mut conn = Conn::open(&server)?;
    conn.send(upgrade("https://evil.example"))?;
    conn.response()?.assert_error(403, "forbidden");
    let mut conn = Conn::open(&server)?;
    conn.send(upgrade("http://localhost:5173"))?;
    assert_eq!(conn.response()?.status, 101);

    let mut conn = Conn::open(&server)?;
    conn.send(format!(
        "GET /api/maravilla/ren HTTP/1.1\r\nHost: {local}\r\nOrigin: https://evil.example\r\n\r\n"
    ))?;
    conn.response()?.assert_error(403, "forbidden");
    Ok(())
}

/// This machine's address on a private network (RFC 1918 or IPv6 unique-local), if it
/// has one: the source address of a route to such a network (a UDP `connect` sends
/// nothing).
fn own_private_address() -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, UdpSocket};
    let private = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    [
        ("0.0.0.0:0", "10.255.255.254:9"),
        ("0.0.0.0:0", "172.31.255.254:9"),
        ("0.0.0.0:0", "192.168.255.254:9"),
        ("[::]:0", "[fdff:ffff:ffff::1]:9"),
    ]
    .into_iter()
    .filter_map(|(bind, to)| {
        let socket = UdpSocket::bind(bind).ok()?;
        socket.connect(to).ok()?;
        Some(socket.local_addr().ok()?.ip())
    })
    .find(private)
}

/// `dev_allowed_hosts` names are taken as page origins too (found in review: with the
/// page behind one tunnel and the server behind another, both listed, the page got 403),
/// and an entry that could never match (a scheme, a port, a path) is refused at reload
/// and by `check-config`, naming it.
#[test]
fn dev_takes_listed_hosts_as_origins_and_refuses_entries_that_cannot_match() -> Result<()> {
    let good =
        "dev = true\ndev_allowed_hosts = [\"a.tunnel.dev\", \"b.tunnel.dev\", \"192.168.1.77\"]\n";
    let (server, path) = Server::start_with_config(good, &[])?;
    let publish = |host: &str, origin: &str| page_publish(&server, host, Some(origin));
    let local = server.addr().to_string();
    let check = || -> Result<()> {
        for (host, origin) in [
            ("b.tunnel.dev", "https://a.tunnel.dev"),
            ("b.tunnel.dev:443", "https://A.tunnel.dev:8443"),
            // A listed address on a server reached over loopback.
            (local.as_str(), "http://192.168.1.77:5173"),
        ] {
            let resp = publish(host, origin)?;
            assert_eq!(resp.status, 200, "{host} {origin}: {}", resp.body_text());
        }
        publish("b.tunnel.dev", "https://c.tunnel.dev")?.assert_error(403, "forbidden");
        publish(&local, "http://192.168.1.78:5173")?.assert_error(403, "forbidden");
        Ok(())
    };
    check()?;

    for entry in [
        "a.tunnel.dev:443",
        "https://a.tunnel.dev",
        "a.tunnel.dev/app",
        "",
    ] {
        let bad = format!("dev = true\ndev_allowed_hosts = [\"b.tunnel.dev\", \"{entry}\"]\n");
        std::fs::write(&path, &bad)?;
        let out = std::process::Command::new(ringcast_tests::ringcast_bin())
            .arg("check-config")
            .arg(&path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{entry:?}: {stderr}");
        assert!(
            stderr.contains(&format!("dev_allowed_hosts entry `{entry}`")),
            "{entry:?}: {stderr}"
        );
    }
    // A reload with such an entry is refused whole: the listed names still hold.
    server.signal(libc::SIGHUP)?;
    server.await_log_line(&["config reload refused", "dev_allowed_hosts entry ``"])?;
    check()?;
    Ok(())
}

/// With `allowed_origins` on the dev tenant, those decide on the HTTP API too, and
/// `dev_allowed_hosts` adds names with a dot (found in review: with `allowed_origins`
/// the HTTP API checked no Origin at all).
#[test]
fn dev_with_allowed_origins_checks_them_on_the_api_and_takes_listed_hosts() -> Result<()> {
    let (server, _config) = Server::start_with_config(
        "dev = true\ndev_allowed_hosts = [\"mybox.lan\"]\n\
         [[tenants]]\nid = \"dev\"\nplan = \"enterprise\"\nallowed_origins = [\"http://ok.example\"]\n",
        &[],
    )?;
    let publish = |host: &str, origin: &str| page_publish(&server, host, Some(origin));
    let local = server.addr().to_string();
    publish(&local, "https://evil.example")?.assert_error(403, "forbidden");
    publish(&local, "http://localhost:5173")?.assert_error(403, "forbidden");
    assert_eq!(publish(&local, "http://ok.example")?.status, 200);
    assert_eq!(publish("mybox.lan:3001", "http://ok.example")?.status, 200);
    publish("other.lan:3001", "http://ok.example")?.assert_error(403, "forbidden");
    Ok(())
}
