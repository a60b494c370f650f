//! The HTTP API of SPEC §5 against the real binary: publish (fanned out to WebSocket
//! subscribers on every shard, idempotent retries), history pages both ways, active
//! channels, presence (join / update / leave seen by WebSocket subscribers, members, TTL
//! expiry of HTTP joins), every error status with its JSON body, keep-alive, pipelining,
//! chunked bodies.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ringcast_tests::{
    encode_component, json, json_request, poll_until, Client, HttpConn, HttpResponse, Server,
    TIMEOUT,
};
use serde_json::Value;

fn post(path: &str, body: &str) -> String {
    json_request("POST", path, "", body)
}

fn get(path: &str) -> String {
    json_request("GET", path, "", "")
}

/// One request on a fresh connection.
fn call(server: &Server, req: String) -> Result<HttpResponse> {
    let mut conn = HttpConn::open(server)?;
    conn.send(req)?;
    conn.response()
}

fn ok_json(resp: &HttpResponse) -> Result<Value> {
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    resp.json()
}

fn publish(server: &Server, channel: &str, data: &str) -> Result<Value> {
    let body = format!(r#"{{"channel":{},"data":{data}}}"#, json!(channel));
    ok_json(&call(server, post("/api/realtime/publish", &body))?)
}

/// The `"data":…` part of a delivered frame, as raw text.
fn raw_data(frame: &str) -> &str {
    let start = frame.find("\"data\":").expect("data in frame") + 7;
    let end = frame
        .find(",\"userId\"")
        .or_else(|| frame.find(",\"seq\""))
        .unwrap();
    &frame[start..end]
}

#[test]
fn publish_reaches_subscribers_on_every_shard_byte_for_byte() -> Result<()> {
    let server = Server::start(&[])?;
    let channel = "private-room:vip";
    let mut subs = Vec::new();
    for shard in 0..2 {
        let mut c = Client::connect_on_shard(&server, shard)?;
        // WebSocket clients need a token for private channels; the API does not.
        c.subscribe("room")?;
        subs.push(c);
    }
    let data = r#"{"big":123456789012345678901234567890,"huge":1e400,"s":"é\u00e9","l":[1.50,-0]}"#;
    let body = format!(r#"{{"channel":"room","data":{data},"userId":"backend"}}"#);
    let answer = ok_json(&call(&server, post("/api/realtime/publish", &body))?)?;
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["seq"], 1);
    assert!(answer["ts"].as_u64().unwrap() > 1_600_000_000_000);
    for c in &mut subs {
        let frame = c.recv_text(TIMEOUT)?;
        assert_eq!(raw_data(&frame), data, "{frame}");
        // (serde_json cannot read 1e400, which is the point: read the frame as text.)
        let rest = &frame[frame.find(",\"userId\"").unwrap()..];
        let expected = format!(r#","userId":"backend","seq":1,"ts":{}}}"#, answer["ts"]);
        assert_eq!(rest, expected, "{frame}");
    }
    // A private channel, published with no token, kept in history.
    let answer = publish(&server, channel, "{\"vip\":true}")?;
    assert_eq!(answer["seq"], 1);
    let page = ok_json(&call(
        &server,
        get("/api/realtime/history/private-room%3Avip"),
    )?)?;
    assert_eq!(page["messages"][0]["data"], json!({"vip": true}));
    assert_eq!(page["messages"][0]["channel"], channel);
    Ok(())
}

#[test]
fn websocket_publish_accepts_numbers_beyond_64_bits() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::open(&server, "")?;
    sub.subscribe("nums")?;
    let mut publisher = Client::open(&server, "")?;
    let data = r#"[123456789012345678901234567890,1e400,-1E-400]"#;
    publisher.send_raw_text(&format!(
        r#"{{"action":"publish","channel":"nums","data":{data},"ref":1}}"#
    ))?;
    let ack = publisher.expect_event("ack")?;
    assert_eq!(ack["seq"], 1, "{ack}");
    let frame = sub.recv_text(TIMEOUT)?;
    assert_eq!(raw_data(&frame), data, "{frame}");
    // And the same bytes come back from history.
    let resp = call(&server, get("/api/realtime/history/nums"))?;
    assert!(resp.body_text().contains(data), "{}", resp.body_text());
    Ok(())
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn history_pages_both_ways_oldest_first() -> Result<()> {
    let server = Server::start(&[])?;
    for i in 1..=10 {
        publish(&server, "feed", &i.to_string())?;
    }
    let page = |query: &str| -> Result<Vec<u64>> {
        let resp = call(&server, get(&format!("/api/realtime/history/feed{query}")))?;
        Ok(seqs(&ok_json(&resp)?))
    };
    assert_eq!(page("")?, (1..=10).collect::<Vec<_>>());
    assert_eq!(page("?limit=3")?, vec![8, 9, 10], "latest N");
    assert_eq!(page("?limit=3&after=2")?, vec![3, 4, 5], "first N after");
    assert_eq!(page("?limit=3&after=5")?, vec![6, 7, 8]);
    assert_eq!(page("?limit=2&before=4")?, vec![2, 3], "the N just below");
    assert_eq!(page("?limit=5&before=3")?, vec![1, 2]);
    assert_eq!(page("?after=3&before=6")?, vec![4, 5]);
    assert_eq!(page("?after=10")?, Vec::<u64>::new());
    let resp = call(&server, get("/api/realtime/history/never-used"))?;
    assert_eq!(ok_json(&resp)?, json!({"messages": []}));
    let one = ok_json(&call(&server, get("/api/realtime/history/feed?limit=1"))?)?;
    let m = &one["messages"][0];
    assert_eq!(
        (m["seq"].clone(), m["data"].clone(), m["channel"].clone()),
        (json!(10), json!(10), json!("feed"))
    );
    assert!(m["ts"].is_u64() && m.get("uid").is_none(), "{m}");
    Ok(())
}

#[test]
fn channels_lists_the_tenants_channels_with_subscribers() -> Result<()> {
    let server = Server::start(&[])?;
    let list = || -> Result<Value> { ok_json(&call(&server, get("/api/realtime/channels"))?) };
    assert_eq!(list()?, json!({"channels": []}));
    let mut a = Client::connect_on_shard(&server, 0)?;
    let mut b = Client::connect_on_shard(&server, 1)?;
    for i in 0..6 {
        a.subscribe(&format!("a:{i}"))?;
    }
    b.subscribe("b:only")?;
    b.subscribe("a:0")?;
    publish(&server, "published-only", "1")?;
    let mut expected: Vec<String> = (0..6).map(|i| format!("a:{i}")).collect();
    expected.push("b:only".into());
    expected.sort();
    assert_eq!(list()?, json!({ "channels": expected }));
    b.close_quietly();
    let expected_after: Vec<String> = (0..6).map(|i| format!("a:{i}")).collect();
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        Ok((list()? == json!({ "channels": expected_after })).then_some(()))
    })
    .context("b:only still listed after its only subscriber left")?;
    Ok(())
}

#[test]
fn idempotent_retries_answer_the_same_seq_and_deliver_once() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::open(&server, "")?;
    sub.subscribe("orders")?;
    let with_header = |key: &str, data: &str| {
        json_request(
            "POST",
            "/api/realtime/publish",
            &format!("Idempotency-Key: {key}\r\n"),
            &format!(r#"{{"channel":"orders","data":{data}}}"#),
        )
    };
    let first = ok_json(&call(&server, with_header("order-1", "1"))?)?;
    let retry = ok_json(&call(&server, with_header("order-1", "1"))?)?;
    assert_eq!(
        first, retry,
        "a retry answers the first publish's seq and ts"
    );
    // The same key in the body is the same key.
    let body = r#"{"channel":"orders","data":1,"idempotencyKey":"order-1"}"#;
    assert_eq!(
        ok_json(&call(&server, post("/api/realtime/publish", body))?)?,
        first
    );
    // The same key on another channel is another key.
    let other = r#"{"channel":"other","data":1,"idempotencyKey":"order-1"}"#;
    assert_eq!(
        ok_json(&call(&server, post("/api/realtime/publish", other))?)?["seq"],
        1
    );
    let second = ok_json(&call(&server, with_header("order-2", "2"))?)?;
    assert_eq!(second["seq"], 2);
    let ev = sub.expect_event("realtime.message")?;
    assert_eq!(
        (ev["seq"].clone(), ev["data"].clone()),
        (json!(1), json!(1))
    );
    let ev = sub.expect_event("realtime.message")?;
    assert_eq!(
        (ev["seq"].clone(), ev["data"].clone()),
        (json!(2), json!(2)),
        "one delivery per key"
    );
    let page = ok_json(&call(&server, get("/api/realtime/history/orders"))?)?;
    assert_eq!(seqs(&page), vec![1, 2]);
    // Body and header naming different keys is a client bug.
    let both = json_request(
        "POST",
        "/api/realtime/publish",
        "Idempotency-Key: x\r\n",
        r#"{"channel":"orders","data":1,"idempotencyKey":"y"}"#,
    );
    call(&server, both)?.assert_error(400, "bad_request");
    Ok(())
}

#[test]
fn idempotency_keys_expire_after_the_configured_ttl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("ringcast.toml");
    std::fs::write(&conf, "idempotency_ttl_secs = 1\n")?;
    let server = Server::start(&["--config", &conf.display().to_string()])?;
    let body = r#"{"channel":"c","data":1,"idempotencyKey":"k"}"#;
    let first = ok_json(&call(&server, post("/api/realtime/publish", body))?)?;
    assert_eq!(
        ok_json(&call(&server, post("/api/realtime/publish", body))?)?,
        first
    );
    std::thread::sleep(Duration::from_millis(1200));
    let later = ok_json(&call(&server, post("/api/realtime/publish", body))?)?;
    assert_eq!(later["seq"], 2, "expired: published again");
    Ok(())
}

#[test]
fn keep_alive_pipelining_and_chunked_bodies() -> Result<()> {
    let server = Server::start(&[])?;
    let mut conn = HttpConn::open(&server)?;
    // Several requests, one after another, on one connection.
    for i in 1..=3u64 {
        conn.send(post(
            "/api/realtime/publish",
            &format!(r#"{{"channel":"ka","data":{i}}}"#),
        ))?;
        let resp = conn.response()?;
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert_eq!(ok_json(&resp)?["seq"], i);
    }
    conn.send(get("/api/realtime/history/ka?limit=2"))?;
    assert_eq!(seqs(&ok_json(&conn.response()?)?), vec![2, 3]);

    // A pipelined burst: every request written at once, answered in order.
    let burst: String = (4..=23)
        .map(|i| {
            post(
                "/api/realtime/publish",
                &format!(r#"{{"channel":"ka","data":{i}}}"#),
            )
        })
        .chain([
            get("/api/realtime/channels"),
            post("/api/realtime/publish", "{"),
        ])
        .collect();
    conn.send(burst)?;
    for i in 4..=23u64 {
        let resp = conn
            .response()
            .with_context(|| format!("burst answer {i}"))?;
        assert_eq!(ok_json(&resp)?["seq"], i);
    }
    assert_eq!(ok_json(&conn.response()?)?["channels"], json!([]));
    conn.response()?.assert_error(400, "bad_request");

    // A chunked body, sent in pieces.
    let body = r#"{"channel":"ka","data":{"text":"in chunks"}}"#;
    conn.send(format!(
        "POST /api/realtime/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n",
        10,
        &body[..10]
    ))?;
    std::thread::sleep(Duration::from_millis(50));
    conn.send(format!("{:x}\r\n{}\r\n", body.len() - 10, &body[10..]))?;
    std::thread::sleep(Duration::from_millis(50));
    conn.send("0\r\n\r\n")?;
    assert_eq!(ok_json(&conn.response()?)?["seq"], 24);
    conn.send(get("/api/realtime/history/ka?limit=1"))?;
    let page = ok_json(&conn.response()?)?;
    assert_eq!(page["messages"][0]["data"], json!({"text": "in chunks"}));
    Ok(())
}

/// A server without `--dev`: tenant `a` (keys, 2 KiB messages; the default tenant),
/// tenant `b` (its own key), tenant `open` (no keys configured).
fn keyed_server(extra: &[&str]) -> Result<Server> {
    let toml = r#"default_tenant = "a"
[[tenants]]
id = "a"
plan = "free"
max_message_bytes = 2048
api_keys = ["key-a-0123456789abcdef", "key-a2-0123456789abcdef"]
[[tenants]]
id = "b"
plan = "pro"
api_keys = ["key-b-0123456789abcdef"]
[[tenants]]
id = "open"
plan = "pro"
"#;
    Ok(Server::start_with_config(toml, extra)?.0)
}

#[test]
fn api_keys_are_checked_per_tenant() -> Result<()> {
    let server = keyed_server(&[])?;
    let body = r#"{"channel":"c","data":1}"#;
    let with = |headers: &str| json_request("POST", "/api/realtime/publish", headers, body);
    call(&server, with(""))?.assert_error(401, "unauthorized");
    call(&server, with("Authorization: Bearer nope\r\n"))?.assert_error(401, "unauthorized");
    call(
        &server,
        with("Authorization: Bearer key-b-0123456789abcdef\r\n"),
    )?
    .assert_error(403, "forbidden");
    call(&server, with("X-Tenant-Id: ghost\r\n"))?.assert_error(404, "unknown_tenant");
    ok_json(&call(
        &server,
        with("Authorization: Bearer key-a2-0123456789abcdef\r\n"),
    )?)?;
    ok_json(&call(
        &server,
        with("X-Tenant-Id: b\r\nAuthorization: bearer key-b-0123456789abcdef\r\n"),
    )?)?;
    // No keys configured for the tenant: its API is closed outside --dev.
    call(&server, with("X-Tenant-Id: open\r\n"))?.assert_error(401, "unauthorized");
    // Every route checks: history and channels too.
    call(&server, get("/api/realtime/channels"))?.assert_error(401, "unauthorized");
    call(&server, get("/api/realtime/history/c"))?.assert_error(401, "unauthorized");
    // Tenants are separate: `b`'s channel `c` is not `a`'s.
    let resp = call(
        &server,
        json_request(
            "GET",
            "/api/realtime/history/c",
            "X-Tenant-Id: b\r\nAuthorization: Bearer key-b-0123456789abcdef\r\n",
            "",
        ),
    )?;
    assert_eq!(seqs(&ok_json(&resp)?), vec![1]);
    Ok(())
}

#[test]
fn every_error_status_has_a_json_body() -> Result<()> {
    let server = keyed_server(&["--max-message-bytes", "8192"])?;
    let auth = "Authorization: Bearer key-a-0123456789abcdef\r\n";
    let publish_with = |body: &str| json_request("POST", "/api/realtime/publish", auth, body);
    // 400
    call(&server, publish_with("{not json"))?.assert_error(400, "bad_request");
    call(&server, publish_with(r#"{"channel":"c"}"#))?.assert_error(400, "bad_request");
    call(&server, publish_with(r#"{"channel":"","data":1}"#))?.assert_error(400, "invalid_channel");
    call(
        &server,
        json_request("GET", "/api/realtime/history/c?limit=0", auth, ""),
    )?
    .assert_error(400, "bad_request");
    call(
        &server,
        json_request("GET", "/api/realtime/history/%FF", auth, ""),
    )?
    .assert_error(400, "bad_request");
    // 401, 403
    call(
        &server,
        post("/api/realtime/publish", r#"{"channel":"c","data":1}"#),
    )?
    .assert_error(401, "unauthorized");
    call(
        &server,
        json_request(
            "GET",
            "/api/realtime/channels",
            "Authorization: Bearer key-b-0123456789abcdef\r\n",
            "",
        ),
    )?
    .assert_error(403, "forbidden");
    // 404
    call(&server, json_request("GET", "/api/realtime/nope", auth, ""))?
        .assert_error(404, "not_found");
    call(
        &server,
        json_request(
            "GET",
            "/api/realtime/channels",
            "X-Tenant-Id: ghost\r\n",
            "",
        ),
    )?
    .assert_error(404, "unknown_tenant");
    // 405, naming the route's method
    let wrong = call(
        &server,
        json_request("GET", "/api/realtime/publish", auth, ""),
    )?;
    wrong.assert_error(405, "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("POST"));
    call(
        &server,
        json_request("DELETE", "/api/realtime/history/c", auth, ""),
    )?
    .assert_error(405, "method_not_allowed");
    // 413: over the tenant's message size (2 KiB), and over the server's body limit.
    let big = format!(r#"{{"channel":"c","data":"{}"}}"#, "x".repeat(3000));
    call(&server, publish_with(&big))?.assert_error(413, "message_too_large");
    let huge = format!(r#"{{"channel":"c","data":"{}"}}"#, "x".repeat(9000));
    call(&server, publish_with(&huge))?.assert_error(413, "payload_too_large");
    // A REN stream of a tenant without anonymous streams needs a token.
    call(&server, json_request("GET", "/api/maravilla/ren", auth, ""))?
        .assert_error(401, "unauthorized");
    call(
        &server,
        json_request("POST", "/api/realtime/tokens", auth, "{}"),
    )?
    .assert_error(400, "bad_request");
    // 503: every connection slot taken (a server of its own, so that the slots of the
    // connections above, closed but perhaps not yet seen closed, do not count).
    let full = keyed_server(&["--max-connections", "1"])?;
    let mut held = HttpConn::open(&full)?;
    held.send(json_request("GET", "/api/realtime/channels", auth, ""))?;
    ok_json(&held.response()?)?;
    call(&full, publish_with(r#"{"channel":"c","data":1}"#))?.assert_error(503, "overloaded");
    Ok(())
}

fn presence_path(channel: &str, action: &str) -> String {
    let channel = encode_component(channel);
    match action {
        "" => format!("/api/realtime/presence/{channel}"),
        action => format!("/api/realtime/presence/{channel}/{action}"),
    }
}

fn presence_post(server: &Server, channel: &str, action: &str, body: Value) -> Result<Value> {
    let resp = call(
        server,
        post(&presence_path(channel, action), &body.to_string()),
    )?;
    ok_json(&resp)
}

fn presence_members(server: &Server, channel: &str) -> Result<Value> {
    ok_json(&call(server, get(&presence_path(channel, "")))?)
}

/// The next presence event a subscriber receives (pongs are skipped), within `timeout`.
fn next_presence_event(client: &mut Client, timeout: Duration) -> Result<Value> {
    client.recv_until(
        |e| {
            e["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("presence"))
        },
        timeout,
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn presence_over_http_is_seen_by_websocket_subscribers() -> Result<()> {
    let server = Server::start(&[])?;
    // Characters `encodeURIComponent` escapes, `/` included.
    let channel = "room:lobby/α b";
    let mut subs = Vec::new();
    for shard in 0..2 {
        let mut c = Client::connect_on_shard(&server, shard)?;
        c.subscribe(channel)?;
        subs.push(c);
    }
    let mut dotted = Client::open(&server, "presence_events=dot")?;
    dotted.subscribe(channel)?;

    let alice = json!({"userId": "alice", "metadata": {"name": "Alice", "tags": [1, null]}});
    assert_eq!(
        presence_post(&server, channel, "join", alice.clone())?,
        json!({"isNew": true})
    );
    for c in &mut subs {
        let ev = c.expect_event("presence:join")?;
        assert_eq!(ev["channel"], channel);
        assert_eq!(ev["userId"], "alice");
        assert_eq!(ev["metadata"], alice["metadata"]);
    }
    assert_eq!(dotted.expect_event("presence.join")?["userId"], "alice");
    assert_eq!(
        presence_post(&server, channel, "join", alice.clone())?,
        json!({"isNew": false}),
        "a second join refreshes"
    );
    // bob joins without metadata (the SDK leaves the key out when it is undefined).
    let before = now_secs();
    assert_eq!(
        presence_post(&server, channel, "join", json!({"userId": "bob"}))?,
        json!({"isNew": true})
    );
    for c in &mut subs {
        let ev = c.expect_event("presence:join")?;
        assert_eq!(
            (ev["userId"].clone(), ev["metadata"].clone()),
            (json!("bob"), Value::Null),
            "{ev}"
        );
    }
    let listed = presence_members(&server, channel)?;
    let members = listed["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{listed}");
    assert_eq!(members[0]["userId"], "alice");
    assert_eq!(members[0]["metadata"], alice["metadata"]);
    assert_eq!(members[1]["userId"], "bob");
    assert_eq!(members[1]["metadata"], Value::Null);
    let last_seen = members[1]["lastSeen"]
        .as_u64()
        .expect("lastSeen in seconds");
    assert!(
        (before..=now_secs()).contains(&last_seen),
        "lastSeen {last_seen} is epoch seconds"
    );

    let away = json!({"userId": "alice", "metadata": {"name": "Alice", "status": "away"}});
    assert_eq!(
        presence_post(&server, channel, "update", away.clone())?,
        json!({"updated": true})
    );
    for c in &mut subs {
        let ev = next_presence_event(c, TIMEOUT)?;
        assert_eq!(ev["event"], "presence:update", "not a leave/join: {ev}");
        assert_eq!(ev["metadata"], away["metadata"]);
    }
    assert_eq!(
        presence_post(
            &server,
            channel,
            "update",
            json!({"userId": "nobody", "metadata": 1})
        )?,
        json!({"updated": false})
    );
    assert_eq!(
        presence_members(&server, channel)?["members"][0]["metadata"],
        away["metadata"]
    );

    assert_eq!(
        presence_post(&server, channel, "leave", json!({"userId": "alice"}))?,
        json!({"wasPresent": true})
    );
    for c in &mut subs {
        let ev = next_presence_event(c, TIMEOUT)?;
        assert_eq!(ev["event"], "presence:leave", "{ev}");
        assert_eq!(
            (ev["userId"].clone(), ev["channel"].clone()),
            (json!("alice"), json!(channel))
        );
    }
    let dotted_events: Vec<(Value, Value)> = (0..3)
        .map(|_| {
            dotted
                .recv_event(TIMEOUT)
                .map(|e| (e["event"].clone(), e["userId"].clone()))
        })
        .collect::<Result<_>>()?;
    assert_eq!(
        dotted_events,
        [
            (json!("presence.join"), json!("bob")),
            (json!("presence.update"), json!("alice")),
            (json!("presence.leave"), json!("alice")),
        ]
    );
    assert_eq!(
        presence_post(&server, channel, "leave", json!({"userId": "alice"}))?,
        json!({"wasPresent": false})
    );
    let listed = presence_members(&server, channel)?;
    assert_eq!(
        listed["members"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["members"][0]["userId"], "bob");
    assert_eq!(
        presence_members(&server, "never-joined")?,
        json!({"members": []})
    );

    // The API is trusted: a private channel without a token. A channel with a member
    // and no subscriber is active.
    assert_eq!(
        presence_post(
            &server,
            "private-room:vip",
            "join",
            json!({"userId": "carol"})
        )?,
        json!({"isNew": true})
    );
    assert_eq!(
        presence_members(&server, "private-room:vip")?["members"][0]["userId"],
        "carol"
    );
    let channels = ok_json(&call(&server, get("/api/realtime/channels"))?)?;
    assert!(
        channels["channels"]
            .as_array()
            .expect("channels")
            .contains(&json!("private-room:vip")),
        "{channels}"
    );
    Ok(())
}

#[test]
fn an_http_join_expires_after_the_ttl_unless_joined_again() -> Result<()> {
    let server = Server::start_dev_with_presence_ttl(2)?;
    let channel = "room:ttl";
    let mut watcher = Client::open(&server, "")?;
    watcher.subscribe(channel)?;
    let join = || presence_post(&server, channel, "join", json!({"userId": "server-bob"}));
    assert_eq!(join()?, json!({"isNew": true}));
    assert_eq!(
        watcher.expect_event("presence:join")?["userId"],
        "server-bob"
    );

    // Joined again every second for 4 s, twice the TTL (plus its second of grace): it
    // never lapses, so each join is a refresh.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            join()?,
            json!({"isNew": false}),
            "lapsed although refreshed"
        );
    }
    let last_join = Instant::now();
    assert_eq!(
        presence_members(&server, channel)?["members"][0]["userId"],
        "server-bob"
    );
    // Not joined again: one presence:leave, between the TTL and a second after it.
    let left = next_presence_event(&mut watcher, Duration::from_secs(8))?;
    let waited = last_join.elapsed();
    assert_eq!(left["event"], "presence:leave", "{left}");
    assert_eq!(left["userId"], "server-bob");
    assert!(
        waited >= Duration::from_millis(1_500),
        "kept until the TTL: {waited:?}"
    );
    assert_eq!(presence_members(&server, channel)?, json!({"members": []}));
    assert_eq!(
        join()?,
        json!({"isNew": true}),
        "a join after expiry is new"
    );
    Ok(())
}

#[test]
fn presence_routes_refuse_bad_requests_with_json_errors() -> Result<()> {
    let server = keyed_server(&[])?;
    let auth = "Authorization: Bearer key-a-0123456789abcdef\r\n";
    let post_with = |path: &str, body: &str| call(&server, json_request("POST", path, auth, body));
    let join = "/api/realtime/presence/room/join";
    for body in [
        "",
        "{not json",
        "[\"alice\"]",
        "{}",
        r#"{"userId":""}"#,
        r#"{"userId":7}"#,
        r#"{"userId":null}"#,
    ] {
        let resp = post_with(join, body)?;
        assert_eq!(resp.status, 400, "{body:?}: {}", resp.body_text());
        resp.assert_error(400, "bad_request");
    }
    post_with("/api/realtime/presence/room/update", r#"{"userId":"a"}"#)?
        .assert_error(400, "bad_request");
    post_with("/api/realtime/presence/room/leave", r#"{"userId":false}"#)?
        .assert_error(400, "bad_request");
    // Bad channel names in the path.
    post_with("/api/realtime/presence//join", r#"{"userId":"a"}"#)?
        .assert_error(400, "invalid_channel");
    post_with("/api/realtime/presence/a%00b/join", r#"{"userId":"a"}"#)?
        .assert_error(400, "invalid_channel");
    post_with("/api/realtime/presence/%FF/join", r#"{"userId":"a"}"#)?
        .assert_error(400, "bad_request");
    // Metadata over the tenant's limit (4 KiB by default): presence_limit, as on
    // WebSocket, and nothing joined.
    let big = format!(r#"{{"userId":"a","metadata":"{}"}}"#, "x".repeat(5000));
    post_with(join, &big)?.assert_error(403, "presence_limit");
    // A userId over 256 bytes, as on WebSocket.
    let long_user = format!(r#"{{"userId":"{}"}}"#, "u".repeat(257));
    post_with(join, &long_user)?.assert_error(400, "bad_request");
    let listed = call(
        &server,
        json_request("GET", "/api/realtime/presence/room", auth, ""),
    )?;
    assert_eq!(ok_json(&listed)?, json!({"members": []}));
    // Methods, unknown actions, keys.
    call(&server, json_request("GET", join, auth, ""))?.assert_error(405, "method_not_allowed");
    call(
        &server,
        json_request("POST", "/api/realtime/presence/room", auth, "{}"),
    )?
    .assert_error(405, "method_not_allowed");
    call(
        &server,
        json_request("DELETE", "/api/realtime/presence/room/leave", auth, ""),
    )?
    .assert_error(405, "method_not_allowed");
    post_with("/api/realtime/presence/room/kick", r#"{"userId":"a"}"#)?
        .assert_error(404, "not_found");
    call(&server, post(join, r#"{"userId":"a"}"#))?.assert_error(401, "unauthorized");
    call(
        &server,
        json_request(
            "GET",
            "/api/realtime/presence/room",
            "Authorization: Bearer key-b-0123456789abcdef\r\n",
            "",
        ),
    )?
    .assert_error(403, "forbidden");
    // And a good request on the same server works.
    assert_eq!(
        ok_json(&post_with(
            join,
            r#"{"userId":"a","metadata":{"ok":true}}"#
        )?)?,
        json!({"isNew": true})
    );
    Ok(())
}
