//! One log line per connection closed abnormally, with its reason (text and JSON);
//! none for a client that leaves normally; at most 10 lines per second per shard per
//! reason, the rest summed in a "suppressed" line. (The slow consumer's 4008 line is
//! checked in `slow_consumer.rs`, the removed tenant's 4510 in `tenants.rs`.)

use std::time::Duration;

use anyhow::{Context, Result};
use ringcast_tests::{
    frame_header, http_request, json, poll_until, unmasked_frame, upgrade_request, Client, Server,
    TIMEOUT,
};
use serde_json::Value;

#[test]
fn protocol_errors_and_limits_leave_one_line_each_and_a_normal_close_none() -> Result<()> {
    let server = Server::start(&["--max-message-bytes", "65536", "--max-connections", "3"])?;

    let mut c = Client::open(&server, "")?;
    c.send_frame_raw(&unmasked_frame(true, 0x1, br#"{"action":"ping"}"#))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1002);
    let line = server.await_log_line(&["connection closed", "reason=protocol_error"])?;
    assert!(
        line.contains("code=1002") && line.contains("transport=ws"),
        "{line}"
    );
    assert!(line.contains("dev"), "the tenant is named: {line}");

    let mut c = Client::open(&server, "")?;
    let mut frame = frame_header(true, 0x1, 1 << 40, true);
    frame.extend_from_slice(&[1, 2, 3, 4]);
    c.send_frame_raw(&frame)?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1009);
    let line = server.await_log_line(&["connection closed", "reason=limit", "code=1009"])?;
    assert!(line.contains("WARN"), "limits are warnings: {line}");

    // max_connections: the fourth TCP connection is refused with 503 and logged (once
    // the two closed above have given their slots back; the scrape holds one itself).
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        let open = ringcast_tests::metric_value(&server.metrics()?, "ringcast_connections");
        Ok((open == Some(1.0)).then_some(()))
    })?;
    let held: Vec<Client> = (0..3)
        .map(|_| Client::open(&server, ""))
        .collect::<Result<_>>()?;
    // (A WebSocket upgrade: probes such as /healthz are answered even when full.)
    let refused = http_request(server.addr(), &upgrade_request(server.addr(), "/_rt/ws"))?;
    refused.assert_error(503, "overloaded");
    server.await_log_line(&["connection closed", "reason=limit", "transport=http"])?;

    // A normal close by the client: counted, not logged.
    for mut c in held {
        c.close()?;
        let _ = c.wait_closed(TIMEOUT);
    }
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        let text = server.metrics()?;
        let series = "ringcast_connections_closed_total{transport=\"ws\",reason=\"client\"}";
        Ok((ringcast_tests::series_value(&text, series) == Some(3.0)).then_some(()))
    })?;
    let log = server.stderr_text();
    assert!(!log.contains("reason=client"), "{log}");
    Ok(())
}

#[test]
fn json_lines_carry_the_fields_at_the_top_level() -> Result<()> {
    let server = Server::start(&["--log-format", "json"])?;
    let mut c = Client::open(&server, "")?;
    c.send_frame_raw(&unmasked_frame(true, 0x1, br#"{"action":"ping"}"#))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1002);
    let line = server.await_log_line(&["connection closed"])?;
    let v: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
    assert_eq!(v["message"], "connection closed", "{v}");
    assert_eq!(v["reason"], "protocol_error", "{v}");
    assert_eq!(v["transport"], "ws", "{v}");
    assert_eq!(v["code"], 1002, "{v}");
    assert_eq!(v["tenant"], "dev", "{v}");
    assert_eq!(v["client"], "127.0.0.1", "{v}");
    assert_eq!(v["level"], "INFO", "{v}");
    // Every line is JSON, the start-up line included.
    for line in server.stderr_text().lines() {
        let v: Value = serde_json::from_str(line).with_context(|| line.to_owned())?;
        assert!(v["timestamp"].is_string(), "{v}");
    }
    Ok(())
}

#[test]
fn a_storm_of_closes_is_rate_limited_and_the_rest_summed() -> Result<()> {
    const CLOSES: usize = 60;
    let server = Server::start(&["--shards", "1", "--log-format", "json"])?;
    let mut clients = Vec::with_capacity(CLOSES);
    for _ in 0..CLOSES {
        clients.push(Client::open(&server, "")?);
    }
    for c in &mut clients {
        c.send_frame_raw(&unmasked_frame(true, 0x1, br#"{"action":"ping"}"#))?;
    }
    for c in &mut clients {
        assert_eq!(c.expect_close(TIMEOUT)?, 1002);
    }
    // Each close is either its own line or counted in a "suppressed" line (those come
    // with the next line of the reason, or at the next housekeeping tick).
    let (logged, suppressed) = poll_until(TIMEOUT, Duration::from_millis(50), || {
        let (mut logged, mut suppressed) = (0u64, 0u64);
        for line in server.stderr_text().lines() {
            let v: Value = serde_json::from_str(line)?;
            if v["reason"] != "protocol_error" {
                continue;
            }
            match v["suppressed"].as_u64() {
                Some(n) => suppressed += n,
                None => logged += 1,
            }
        }
        Ok((logged + suppressed == CLOSES as u64).then_some((logged, suppressed)))
    })
    .with_context(|| server.stderr_tail())?;
    assert!(suppressed > 0, "{logged} lines for {CLOSES} closes");
    assert!(logged < CLOSES as u64);
    // The server still serves.
    let mut c = Client::open(&server, "")?;
    c.send_json(&json!({"action": "ping"}))?;
    c.expect_event("pong")?;
    Ok(())
}
