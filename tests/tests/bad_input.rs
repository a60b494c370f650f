//! Bad frames, protocol violations and HTTP errors: SPEC §3 error codes, the wire
//! contract's close codes and HTTP error table.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use ringcast_tests::{
    frame_header, http_get, http_request, json, masked_frame, read_http_response, unmasked_frame,
    upgrade_request, Client, ConnectError, HttpResponse, Server, TIMEOUT,
};
use serde_json::Value;

fn expect_error(c: &mut Client, code: &str, what: &str) -> Value {
    let ev = c
        .recv_event(TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: no error event: {e:#}"));
    assert_eq!(ev["event"], "error", "{what}: {ev}");
    assert_eq!(ev["data"]["code"], code, "{what}: {ev}");
    assert!(
        ev["data"]["message"].is_string(),
        "{what}: data.message is a string: {ev}"
    );
    assert!(ev["ts"].is_u64(), "{what}: ts: {ev}");
    ev
}

#[test]
fn bad_frames_get_bad_request_and_connection_survives() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    let cases: &[(&str, &str)] = &[
        ("malformed JSON", r#"{"action":"publish","#),
        ("not JSON at all", "hello"),
        ("unknown action", r#"{"action":"dance","channel":"x"}"#),
        ("missing action", r#"{"channel":"x"}"#),
        (
            "publish without channel",
            r#"{"action":"publish","data":1}"#,
        ),
        ("subscribe without channel", r#"{"action":"subscribe"}"#),
        ("mistyped channel", r#"{"action":"subscribe","channel":42}"#),
        ("array frame", "[1,2]"),
        ("string frame", r#""x""#),
        ("number frame", "42"),
    ];
    for (what, frame) in cases {
        c.send_raw_text(frame)?;
        expect_error(&mut c, "bad_request", what);
        c.ping_pong()
            .unwrap_or_else(|e| panic!("after {what}: connection no longer answers ping: {e:#}"));
    }
    c.send_binary(br#"{"action":"ping"}"#)?;
    expect_error(&mut c, "bad_request", "binary frame");
    c.ping_pong()?;
    // Still a working subscriber.
    c.subscribe("still:fine")?;
    Ok(())
}

#[test]
fn errors_carry_the_frames_ref() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    c.send_json(&json!({"action": "publish", "channel": "", "data": 1, "ref": "r-9"}))?;
    let ev = expect_error(
        &mut c,
        "invalid_channel",
        "publish to empty channel with ref",
    );
    assert_eq!(ev["ref"], "r-9", "{ev}");

    c.send_json(&json!({"action": "publish", "data": 1, "ref": 5}))?;
    let ev = expect_error(
        &mut c,
        "bad_request",
        "publish without channel with numeric ref",
    );
    assert_eq!(ev["ref"], 5, "{ev}");

    // Without ref: no ref key (or null).
    c.send_json(&json!({"action": "publish", "channel": "", "data": 1}))?;
    let ev = expect_error(&mut c, "invalid_channel", "publish to empty channel");
    assert!(ev.get("ref").is_none_or(Value::is_null), "{ev}");
    Ok(())
}

#[test]
fn invalid_channel_names() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    let long = "x".repeat(256);
    for (what, name) in [
        ("empty", ""),
        ("256 bytes", long.as_str()),
        ("control char", "a\u{1}b"),
        ("newline", "a\nb"),
    ] {
        c.send_json(&json!({"action": "subscribe", "channel": name}))?;
        expect_error(&mut c, "invalid_channel", &format!("subscribe {what}"));
        c.send_json(&json!({"action": "publish", "channel": name, "data": 1}))?;
        expect_error(&mut c, "invalid_channel", &format!("publish {what}"));
    }
    // 255 bytes (multi-byte UTF-8 counts in bytes) is fine.
    let max = "é".repeat(127) + "x";
    assert_eq!(max.len(), 255);
    c.subscribe(&max)?;
    c.ping_pong()?;
    Ok(())
}

#[test]
fn invalid_utf8_text_frame_closes_1007() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    c.send_frame_raw(&masked_frame(
        true,
        0x1,
        b"{\"action\":\"ping\",\"x\":\"\xff\xfe\"}",
    ))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1007);
    Ok(())
}

#[test]
fn unmasked_client_frame_closes_1002() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    c.send_frame_raw(&unmasked_frame(true, 0x1, br#"{"action":"ping"}"#))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1002);
    Ok(())
}

#[test]
fn message_over_max_message_bytes_closes_1009() -> Result<()> {
    let server = Server::start(&["--max-message-bytes", "65536"])?;
    // A real message just over the limit.
    let mut c = Client::open(&server, "")?;
    let data = "y".repeat(70_000);
    c.send_json(&json!({"action": "publish", "channel": "big", "data": data}))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1009);

    // A header claiming 1 TiB: refused from the header, nothing buffered.
    let mut c = Client::open(&server, "")?;
    let mut frame = frame_header(true, 0x1, 1 << 40, true);
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[b'a'; 64]);
    c.send_frame_raw(&frame)?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1009);

    // Fragments that add up to more than the limit.
    let mut c = Client::open(&server, "")?;
    let chunk = vec![b'z'; 40_000];
    c.send_frame_raw(&masked_frame(false, 0x1, &chunk))?;
    c.send_frame_raw(&masked_frame(true, 0x0, &chunk))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1009);

    // Just under the limit is fine.
    let mut c = Client::open(&server, "")?;
    c.send_json(
        &json!({"action": "publish", "channel": "big", "data": "y".repeat(60_000), "ref": 1}),
    )?;
    c.expect_event("ack")?;
    Ok(())
}

#[test]
fn data_over_tenant_limit_is_message_too_large() -> Result<()> {
    // The dev tenant is on `enterprise` (1 MB messages); the socket allows 4 MiB.
    let server = Server::start(&["--max-message-bytes", "4194304"])?;
    let mut sub = Client::connect_on_shard(&server, 0)?;
    let mut c = Client::connect_on_shard(&server, 1)?;
    sub.subscribe("huge")?;
    let data = "w".repeat(1_100_000);
    c.send_json(&json!({"action": "publish", "channel": "huge", "data": data, "ref": "big"}))?;
    let ev = expect_error(&mut c, "message_too_large", "1.1 MB publish");
    assert_eq!(ev["ref"], "big", "{ev}");
    c.ping_pong()?;
    // Nothing was published: the next message is seq 1.
    c.send_json(&json!({"action": "publish", "channel": "huge", "data": "small", "ref": "ok"}))?;
    assert_eq!(c.expect_event("ack")?["seq"], 1);
    let ev = sub.expect_event("realtime.message")?;
    assert_eq!(
        (ev["data"].clone(), ev["seq"].clone()),
        (json!("small"), json!(1)),
        "{ev}"
    );
    Ok(())
}

#[test]
fn presence_actions_out_of_order_are_refused_and_the_connection_stays() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    for (frame, code) in [
        (
            json!({"action": "presence:update", "channel": "room", "userId": "alice", "metadata": {"a": 1}}),
            "bad_request",
        ),
        (
            json!({"action": "presence:leave", "channel": "room"}),
            "bad_request",
        ),
        (
            json!({"action": "presence:join", "channel": "room"}),
            "bad_request",
        ),
        (
            json!({"action": "presence:join", "channel": "private-room", "userId": "alice"}),
            "unauthorized",
        ),
    ] {
        c.send_json(&frame)?;
        expect_error(&mut c, code, &frame.to_string());
        c.ping_pong()?;
    }
    c.send_json(
        &json!({"action": "presence:join", "channel": "room", "userId": "alice", "metadata": {}}),
    )?;
    c.ping_pong()?;
    Ok(())
}

#[test]
fn http_unknown_path_is_404() -> Result<()> {
    let server = Server::start(&[])?;
    http_get(server.addr(), "/nope")?.assert_error(404, "not_found");
    Ok(())
}

#[test]
fn http_ws_without_upgrade_is_426_and_wrong_method_405() -> Result<()> {
    let server = Server::start(&[])?;
    let plain = http_get(server.addr(), "/_rt/ws")?;
    plain.assert_error(426, "upgrade_required");
    assert_eq!(plain.header("upgrade"), Some("websocket"));
    assert_eq!(plain.header("connection"), Some("upgrade, close"));
    let addr = server.addr();
    let post = format!(
        "POST /_rt/ws HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let refused = http_request(addr, post.as_bytes())?;
    refused.assert_error(405, "method_not_allowed");
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    Ok(())
}

/// RFC 6455 §4.4: a version other than 13 gets 426 naming 13; a key that is not the
/// base64 of 16 bytes, or an offered subprotocol (none is spoken), gets 400 saying so;
/// `Connection` split over two lines is one list (found in review).
#[test]
fn websocket_handshakes_are_checked_as_rfc_6455_asks() -> Result<()> {
    let server = Server::start(&[])?;
    let addr = server.addr();
    let upgrade = String::from_utf8(upgrade_request(addr, "/_rt/ws"))?;
    let with = |from: &str, to: &str| -> Result<HttpResponse> {
        assert!(upgrade.contains(from), "{from}");
        http_request(addr, upgrade.replacen(from, to, 1).as_bytes())
    };
    let old = with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")?;
    old.assert_error(426, "upgrade_required");
    assert_eq!(old.header("sec-websocket-version"), Some("13"));
    assert_eq!(old.header("upgrade"), Some("websocket"));
    let short = with("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")?;
    short.assert_error(400, "bad_request");
    assert!(
        short.body_text().contains("16 bytes"),
        "{}",
        short.body_text()
    );
    let chat = with("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n")?;
    chat.assert_error(400, "bad_request");
    assert!(chat.body_text().contains("chat"), "{}", chat.body_text());
    let split = with(
        "Connection: Upgrade\r\n",
        "Connection: keep-alive\r\nConnection: Upgrade\r\n",
    )?;
    assert_eq!(split.status, 101, "{}", split.body_text());
    Ok(())
}

/// HTTP/1.0: the connection closes after the response unless the client asked for
/// keep-alive, and a chunked body is refused as faulty framing (found in review: a 1.0
/// client reading to end of stream waited for the request deadline, then got a 408).
#[test]
fn http_1_0_closes_after_its_response_and_refuses_chunked_bodies() -> Result<()> {
    let server = Server::start(&[])?;
    let addr = server.addr();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
    let started = Instant::now();
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after the response, not at a deadline"
    );
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one response: {text}");

    let kept = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(kept)?;
    let first = read_http_response(&mut stream, Duration::from_secs(5))?;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    stream.write_all(kept)?;
    assert_eq!(
        read_http_response(&mut stream, Duration::from_secs(5))?.status,
        200
    );

    let chunked =
        b"POST /api/realtime/publish HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    http_request(addr, chunked)?.assert_error(400, "bad_request");
    Ok(())
}

#[test]
fn http_health_ready_metrics() -> Result<()> {
    let server = Server::start(&[])?;
    let health = http_get(server.addr(), "/healthz")?;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()?, json!({"status": "ok"}));
    assert_eq!(http_get(server.addr(), "/readyz")?.status, 200);

    let _c = Client::open(&server, "")?;
    let metrics = server.metrics()?;
    for name in [
        "ringcast_connections",
        "ringcast_connections_accepted_total",
        "ringcast_messages_published_total",
        "ringcast_deliveries_total",
        "ringcast_slow_consumer_closes_total",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "/metrics lacks {name}:\n{metrics}"
        );
    }
    let connections = server
        .metric("ringcast_connections")?
        .expect("ringcast_connections");
    assert!(
        connections >= 1.0,
        "ringcast_connections {connections} with one client open"
    );
    Ok(())
}

#[test]
fn metrics_count_publishes_deliveries_and_errors() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::open(&server, "")?;
    sub.subscribe("m")?;
    let mut c = Client::open(&server, "")?;
    for i in 0..3 {
        c.send_json(&json!({"action": "publish", "channel": "m", "data": i, "ref": i}))?;
        c.expect_event("ack")?;
    }
    for _ in 0..3 {
        sub.expect_event("realtime.message")?;
    }
    c.send_raw_text("{")?;
    expect_error(&mut c, "bad_request", "malformed");
    let metrics = server.metrics()?;
    let published = ringcast_tests::metric_value(&metrics, "ringcast_messages_published_total");
    let delivered = ringcast_tests::metric_value(&metrics, "ringcast_deliveries_total");
    assert!(
        published >= Some(3.0),
        "published {published:?}:\n{metrics}"
    );
    assert!(
        delivered >= Some(3.0),
        "delivered {delivered:?}:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ringcast_errors_total{") && l.contains("code=\"bad_request\"")),
        "no ringcast_errors_total{{code=\"bad_request\"}}:\n{metrics}"
    );
    Ok(())
}

#[test]
fn unknown_tenant_is_404() -> Result<()> {
    let server = Server::start(&[])?;
    let resp = http_request(
        server.addr(),
        &upgrade_request(server.addr(), "/_rt/ws?tenant=nope"),
    )?;
    resp.assert_error(404, "unknown_tenant");
    // The default tenant named explicitly works.
    let mut c = Client::open(&server, "tenant=dev")?;
    c.ping_pong()?;
    Ok(())
}

#[test]
fn request_head_over_16k_is_431() -> Result<()> {
    let server = Server::start(&[])?;
    let addr = server.addr();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(20 * 1024)
    );
    http_request(addr, req.as_bytes())?.assert_error(431, "headers_too_large");
    Ok(())
}

#[test]
fn unfinished_handshake_times_out() -> Result<()> {
    let server = Server::start(&["--handshake-timeout-ms", "500"])?;
    let mut stream = TcpStream::connect(server.addr())?;
    let start = Instant::now();
    stream.write_all(b"GET /_rt/w")?;
    // Either a 408 then close, or a plain close, well within the timeout plus margin.
    match read_http_response(&mut stream, Duration::from_millis(500 + 2500)) {
        Ok(resp) => resp.assert_error(408, "timeout"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.contains("connection closed") || msg.contains("reset"),
                "neither 408 nor a close within 3 s: {msg}"
            );
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed after {elapsed:?}, before the 500 ms timeout"
    );
    // A complete request on a fresh connection is not affected.
    assert_eq!(http_get(server.addr(), "/healthz")?.status, 200);
    Ok(())
}

#[test]
fn max_connections_refuses_with_503() -> Result<()> {
    let server = Server::start(&["--max-connections", "3"])?;
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client::open(&server, ""))
        .collect::<Result<_>>()?;
    let stream = TcpStream::connect(server.addr())?;
    match Client::handshake(stream, server.addr(), "") {
        Err(ConnectError::Http(resp)) => resp.assert_error(503, "overloaded"),
        Err(e) => panic!("4th connection: expected HTTP 503, got {e}"),
        Ok(_) => panic!("4th connection was accepted with --max-connections 3"),
    }
    for c in &mut clients {
        c.ping_pong()?;
    }
    // Freeing a slot lets a new connection in (the server notices the close asynchronously).
    clients.pop().expect("3 clients").close_quietly();
    let mut admitted = None;
    for _ in 0..100 {
        let stream = TcpStream::connect(server.addr())?;
        match Client::handshake(stream, server.addr(), "") {
            Ok((c, _)) => {
                admitted = Some(c);
                break;
            }
            Err(ConnectError::Http(resp)) if resp.status == 503 => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("after freeing a slot: {e}"),
        }
    }
    let mut c = admitted.expect("a connection is admitted after one of three closed");
    c.expect_connected()?;
    c.ping_pong()?;
    Ok(())
}
