//! `/healthz` and `/readyz`: ready once every shard runs; 503 while draining after
//! SIGTERM (`drain_ms`), while everything else is still served; 503 while the data
//! directory cannot be written; a second signal ends the drain at once. The probes are
//! answered even when `max_connections` is reached (the connection closes after the
//! answer), so a liveness probe never kills a full server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ringcast_tests::{
    http_get, metric_value, poll_until, Client, ConnectError, HttpConn, Server, TIMEOUT,
};

fn readyz(server: &Server) -> Result<(u16, String)> {
    let resp = http_get(server.addr(), "/readyz")?;
    Ok((resp.status, resp.body_text()))
}

/// Polls `/readyz` until it answers `status` (bounded).
fn await_readyz(server: &Server, status: u16) -> Result<String> {
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        let (got, body) = readyz(server)?;
        Ok((got == status).then_some(body))
    })
    .with_context(|| format!("/readyz never answered {status}"))
}

#[test]
fn ready_at_start_then_503_while_draining_with_everything_still_served() -> Result<()> {
    let mut server = Server::start(&["--drain-ms", "3000"])?;
    // The startup line is printed once every shard runs: ready from the first request.
    assert_eq!(readyz(&server)?.0, 200);
    assert_eq!(http_get(server.addr(), "/healthz")?.status, 200);
    assert_eq!(server.metric("ringcast_ready")?, Some(1.0));
    let mut client = Client::open(&server, "")?;
    client.subscribe("drain:a")?;

    server.signal(libc::SIGTERM)?;
    let signalled = Instant::now();
    let body = await_readyz(&server, 503)?;
    assert!(
        body.contains("not_ready") && body.contains("draining"),
        "{body}"
    );

    // Draining: the load balancer is told, the connections are still served.
    assert_eq!(http_get(server.addr(), "/healthz")?.status, 200);
    client.ping_pong()?;
    let mut late = Client::open(&server, "")?;
    late.ping_pong()?;
    let text = server.metrics()?;
    assert_eq!(metric_value(&text, "ringcast_draining"), Some(1.0));
    assert_eq!(metric_value(&text, "ringcast_ready"), Some(0.0));

    // Then every connection closes with 1001 and the process exits 0.
    assert_eq!(client.expect_close(Duration::from_secs(10))?, 1001);
    assert_eq!(late.expect_close(TIMEOUT)?, 1001);
    assert!(
        signalled.elapsed() >= Duration::from_millis(2500),
        "closed {:?} after SIGTERM, before the drain ended",
        signalled.elapsed()
    );
    let status = server.terminate_wait(Duration::from_secs(10))?;
    assert!(status.success(), "{status}");
    let log = server.stderr_text();
    assert!(log.contains("draining"), "{log}");
    Ok(())
}

#[test]
fn a_second_signal_ends_the_drain_at_once() -> Result<()> {
    let mut server = Server::start(&["--drain-ms", "600000"])?;
    let mut client = Client::open(&server, "")?;
    server.signal(libc::SIGTERM)?;
    await_readyz(&server, 503)?;
    client.ping_pong()?;
    server.signal(libc::SIGTERM)?;
    assert_eq!(client.expect_close(TIMEOUT)?, 1001);
    let status = server.terminate_wait(Duration::from_secs(10))?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[test]
fn readyz_is_503_while_the_data_directory_cannot_be_written() -> Result<()> {
    let server = Server::start(&[])?;
    assert_eq!(readyz(&server)?.0, 200);
    let dir = server.data_dir().to_path_buf();
    // Gone (even root cannot write there); the probe runs once a second.
    std::fs::remove_dir_all(&dir)?;
    let body = await_readyz(&server, 503)?;
    assert!(body.contains("data directory"), "{body}");
    assert_eq!(http_get(server.addr(), "/healthz")?.status, 200, "alive");
    std::fs::create_dir_all(&dir)?;
    await_readyz(&server, 200)?;
    let log = server.stderr_text();
    assert!(log.contains("data directory not writable"), "{log}");
    Ok(())
}

#[test]
fn probes_are_answered_when_max_connections_is_reached() -> Result<()> {
    let server = Server::start(&["--max-connections", "1"])?;
    let mut holder = Client::open(&server, "")?;
    let upgrade_refused = |when: &str| -> Result<()> {
        let stream = std::net::TcpStream::connect(server.addr())?;
        match Client::handshake(stream, server.addr(), "") {
            Err(ConnectError::Http(resp)) => resp.assert_error(503, "overloaded"),
            Err(e) => panic!("a new WebSocket {when}: expected HTTP 503, got {e}"),
            Ok(_) => panic!("a new WebSocket {when} was admitted with --max-connections 1"),
        }
        Ok(())
    };
    upgrade_refused("before the probes")?;
    for (path, body) in [
        ("/healthz", r#"{"status":"ok"}"#),
        ("/readyz", r#"{"status":"ready"}"#),
        ("/metrics", "ringcast_connections"),
    ] {
        // A keep-alive request: the server answers it, then closes (no slot to keep).
        let mut conn = HttpConn::open(&server)?;
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n"))?;
        let resp = conn.response()?;
        assert_eq!(resp.status, 200, "{path} while full: {}", resp.body_text());
        assert!(
            resp.body_text().contains(body),
            "{path}: {}",
            resp.body_text()
        );
        assert_eq!(resp.header("connection"), Some("close"), "{path}");
        conn.expect_eof()?;
    }
    // Probes took no slot: the WebSocket is served, and upgrades are still refused.
    holder.ping_pong()?;
    upgrade_refused("after the probes")?;
    Ok(())
}
