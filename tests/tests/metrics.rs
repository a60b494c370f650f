//! `/metrics` moves with traffic by the exact amounts: publishes, deliveries, history
//! appends, resumes (replayed and truncated), subscriptions, channels, presence members,
//! connections by transport and tenant, closes by reason, HTTP requests by route and
//! status, token verifications, bytes out.

use std::time::Duration;

use anyhow::{Context, Result};
use ringcast_tests::sse::{SseItem, SseStream};
use ringcast_tests::{
    config_file, http_get, json, poll_until, series_value, Client, Server, TIMEOUT,
};

fn scrape(server: &Server) -> Result<String> {
    server.metrics()
}

fn value(text: &str, series: &str) -> f64 {
    series_value(text, series).unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

/// Waits until `series` reads `want` (gauges that settle after a close, counters that
/// move after the answer the client saw).
fn await_value(server: &Server, series: &str, want: f64) -> Result<()> {
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        let text = scrape(server)?;
        Ok((series_value(&text, series) == Some(want)).then_some(()))
    })
    .with_context(|| {
        let now = scrape(server).ok().and_then(|t| series_value(&t, series));
        format!("{series} never reached {want} (now {now:?})")
    })
}

#[test]
fn counters_move_by_the_exact_amounts_of_traffic() -> Result<()> {
    let (_config_dir, config) = config_file("[metrics]\ntenant_labels = true\n")?;
    let server = Server::start(&["--config", &config.display().to_string()])?;
    let before = scrape(&server)?;
    assert_eq!(value(&before, "ringcast_messages_published_total"), 0.0);

    // Three subscribers on both shards, one publisher.
    let mut subscribers = vec![
        Client::connect_on_shard(&server, 0)?,
        Client::connect_on_shard(&server, 1)?,
        Client::connect_on_shard(&server, 1)?,
    ];
    for s in &mut subscribers {
        s.subscribe("m:room")?;
    }
    let mut publisher = Client::connect_on_shard(&server, 0)?;
    const N: u64 = 5;
    for n in 1..=N {
        publisher.send_json(&json!({"action": "publish", "channel": "m:room", "data": {"n": n}, "ref": format!("r{n}")}))?;
        publisher.expect_event("ack")?;
    }
    let mut received_bytes = 0usize;
    for s in &mut subscribers {
        for n in 1..=N {
            let text = s.recv_text(TIMEOUT)?;
            let ev: serde_json::Value = serde_json::from_str(&text)?;
            assert_eq!(ev["seq"], n);
            received_bytes += text.len();
        }
    }
    // Deliveries are counted when queued, before the subscribers read them: exact now.
    let text = scrape(&server)?;
    assert_eq!(value(&text, "ringcast_messages_published_total"), N as f64);
    assert_eq!(value(&text, "ringcast_deliveries_total"), 3.0 * N as f64);
    assert_eq!(value(&text, "ringcast_history_appends_total"), N as f64);
    assert!(value(&text, "ringcast_history_appended_bytes_total") > 0.0);
    assert_eq!(value(&text, "ringcast_subscriptions"), 3.0);
    assert_eq!(value(&text, "ringcast_channels"), 1.0);
    assert_eq!(
        value(
            &text,
            "ringcast_tenant_messages_published_total{tenant=\"dev\"}"
        ),
        N as f64
    );
    assert_eq!(
        value(&text, "ringcast_tenant_deliveries_total{tenant=\"dev\"}"),
        3.0 * N as f64
    );
    assert_eq!(
        value(&text, "ringcast_tenant_subscriptions{tenant=\"dev\"}"),
        3.0
    );
    assert!(
        value(&text, "ringcast_bytes_out_total{transport=\"ws\"}") >= received_bytes as f64,
        "bytes out counts at least the payloads the subscribers read ({received_bytes})"
    );
    assert!(value(&text, "ringcast_write_batch_frames_count") > 0.0);
    assert!(value(&text, "ringcast_loop_turn_seconds_count") > 0.0);

    // Connections: the connect_on_shard attempts that landed elsewhere close quietly.
    await_value(&server, "ringcast_connections{transport=\"ws\"}", 4.0)?;
    await_value(
        &server,
        "ringcast_tenant_connections{tenant=\"dev\",transport=\"ws\"}",
        4.0,
    )?;

    // A resume that is recovered (3 replayed) and one that is not (seq above the channel's).
    let mut resumer = Client::open(&server, "")?;
    resumer.send_json(&json!({"action": "subscribe", "channel": "m:room", "lastEventId": "2"}))?;
    let subscribed = resumer.recv_until(|e| e["event"] == "subscribed", TIMEOUT)?;
    assert_eq!(subscribed["recovered"], true);
    resumer.send_json(&json!({"action": "subscribe", "channel": "m:room", "lastEventId": "99"}))?;
    let subscribed = resumer.recv_until(|e| e["event"] == "subscribed", TIMEOUT)?;
    assert_eq!(subscribed["recovered"], false);
    let text = scrape(&server)?;
    assert_eq!(value(&text, "ringcast_history_replays_total"), 2.0);
    assert_eq!(
        value(&text, "ringcast_history_replayed_messages_total"),
        3.0
    );
    assert_eq!(value(&text, "ringcast_history_truncations_total"), 1.0);
    assert_eq!(value(&text, "ringcast_subscriptions"), 4.0);

    // Presence: one member.
    resumer.send_json(&json!({"action": "presence:join", "channel": "m:room", "userId": "ann"}))?;
    await_value(&server, "ringcast_presence_members", 1.0)?;

    // A token that does not verify.
    resumer
        .send_json(&json!({"action": "subscribe", "channel": "private-m", "token": "not.a.jwt"}))?;
    let refused = resumer.recv_until(|e| e["event"] == "error", TIMEOUT)?;
    assert_eq!(refused["data"]["code"], "unauthorized");
    let text = scrape(&server)?;
    assert_eq!(
        value(
            &text,
            "ringcast_token_verifications_total{result=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "ringcast_token_verifications_total{result=\"accepted\"}"
        ),
        0.0
    );

    // HTTP requests by route and status: counted once the answer is written.
    for _ in 0..2 {
        assert_eq!(http_get(server.addr(), "/healthz")?.status, 200);
    }
    assert_eq!(http_get(server.addr(), "/no/such/route")?.status, 404);
    await_value(
        &server,
        "ringcast_http_requests_total{route=\"healthz\",status=\"200\"}",
        2.0,
    )?;
    let text = scrape(&server)?;
    assert_eq!(
        value(
            &text,
            "ringcast_http_requests_total{route=\"not_found\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "ringcast_http_request_duration_seconds_count{route=\"healthz\"}"
        ),
        2.0
    );
    assert!(
        value(
            &text,
            "ringcast_http_requests_total{route=\"ws\",status=\"101\"}"
        ) >= 5.0
    );

    // A client's close is counted as `client`; the gauges follow.
    let ws_client_closes = "ringcast_connections_closed_total{transport=\"ws\",reason=\"client\"}";
    let closed_before = value(&text, ws_client_closes);
    let mut leaving = subscribers.pop().expect("three");
    leaving.close()?;
    let _ = leaving.wait_closed(TIMEOUT);
    await_value(&server, ws_client_closes, closed_before + 1.0)?;
    await_value(&server, "ringcast_subscriptions", 3.0)?;
    await_value(
        &server,
        "ringcast_tenant_subscriptions{tenant=\"dev\"}",
        3.0,
    )?;

    // Every accepted connection is open or was counted closed exactly once.
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        let text = scrape(&server)?;
        let accepted = value(&text, "ringcast_connections_accepted_total");
        let open = ringcast_tests::metric_value(&text, "ringcast_connections").unwrap_or(0.0);
        let closed =
            ringcast_tests::metric_value(&text, "ringcast_connections_closed_total").unwrap_or(0.0);
        Ok((accepted == open + closed).then_some(()))
    })
    .context("accepted == open + closed")?;
    Ok(())
}

#[test]
fn the_body_is_openmetrics_and_says_so() -> Result<()> {
    let server = Server::start(&[])?;
    let resp = http_get(server.addr(), "/metrics")?;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    // What makes it OpenMetrics rather than Prometheus text 0.0.4: the closing `# EOF`,
    // and a counter's family named without the `_total` of its samples.
    let text = resp.body_text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE ringcast_connections_accepted counter\n")
            && text.contains("\nringcast_connections_accepted_total "),
        "{text}"
    );
    Ok(())
}

#[test]
fn tenant_families_are_absent_unless_asked_for() -> Result<()> {
    let server = Server::start(&[])?;
    let text = scrape(&server)?;
    assert!(!text.contains("ringcast_tenant_"), "{text}");
    assert!(text.contains("ringcast_token_verifications_total"));
    assert!(
        !text.contains("ringcast_tokens_accepted"),
        "the old name is gone"
    );
    Ok(())
}

#[test]
fn tenant_connections_count_sse_streams() -> Result<()> {
    const SSE: &str = "ringcast_tenant_connections{tenant=\"dev\",transport=\"sse\"}";
    const WS: &str = "ringcast_tenant_connections{tenant=\"dev\",transport=\"ws\"}";
    let (_config_dir, config) = config_file("[metrics]\ntenant_labels = true\n")?;
    let server = Server::start(&["--config", &config.display().to_string()])?;
    assert_eq!(value(&scrape(&server)?, SSE), 0.0);
    let mut stream = match SseStream::open(&server, "/api/maravilla/ren?s=*", &[])? {
        Ok(stream) => stream,
        Err(resp) => anyhow::bail!("stream refused: {} {}", resp.status, resp.body_text()),
    };
    // Counted when the stream starts, before its first bytes go out.
    assert_eq!(stream.next_item(TIMEOUT)?, SseItem::Comment("ok".into()));
    let text = scrape(&server)?;
    assert_eq!(value(&text, SSE), 1.0);
    assert_eq!(value(&text, WS), 0.0);
    assert_eq!(value(&text, "ringcast_connections{transport=\"sse\"}"), 1.0);
    drop(stream);
    await_value(&server, SSE, 0.0)?;
    Ok(())
}

/// With `[metrics] bearer_token`, a scrape needs `Authorization: Bearer <token>`: the
/// scrape is served on the public port and, with `tenant_labels`, lists every tenant
/// (found in review). Probes stay open.
#[test]
fn a_bearer_token_closes_metrics_to_anyone_without_it() -> Result<()> {
    const TOKEN: &str = "scrape-0123456789abcdef";
    let (_config_dir, config) = config_file(&format!(
        "[metrics]\ntenant_labels = true\nbearer_token = \"{TOKEN}\"\n"
    ))?;
    let server = Server::start(&["--config", &config.display().to_string()])?;
    let addr = server.addr();
    let scrape_with = |authorization: &str| {
        ringcast_tests::http_request(
            addr,
            format!(
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    for refused in ["", "Authorization: Bearer wrong-0123456789abcdef\r\n"] {
        let resp = scrape_with(refused)?;
        resp.assert_error(401, "unauthorized");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        assert!(!resp.body_text().contains("tenant="), "nothing listed");
    }
    let resp = scrape_with(&format!("Authorization: Bearer {TOKEN}\r\n"))?;
    assert_eq!(resp.status, 200);
    assert!(resp.body_text().contains("ringcast_tenant_"), "scraped");
    assert_eq!(http_get(addr, "/healthz")?.status, 200);
    Ok(())
}
