//! REN (SPEC §7) against the real binary, over raw TCP: `GET /api/maravilla/ren` streams
//! (filters, mirrors of WebSocket and HTTP publishes and presence joins, app events from
//! `POST /api/ren/events`), resume with `Last-Event-ID`, truncation, a stalled reader,
//! refusals with JSON bodies, anonymous/token/CORS rules, connection limits, `:ping`,
//! the SSE series of `/metrics`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ringcast_tests::sse::{SseEvent, SseItem, SseStream};
use ringcast_tests::{http_request, json, poll_until, Client, HttpResponse, Server, TIMEOUT};
use serde_json::Value;

const STREAM: &str = "/api/maravilla/ren";

fn open(server: &Server, target: &str) -> Result<SseStream> {
    open_with(server, target, &[])
}

/// Opens a stream and reads its first item, the `:ok` comment.
fn open_with(server: &Server, target: &str, headers: &[(&str, &str)]) -> Result<SseStream> {
    match SseStream::open(server, target, headers)? {
        Ok(mut stream) => {
            assert_eq!(stream.next_item(TIMEOUT)?, SseItem::Comment("ok".into()));
            Ok(stream)
        }
        Err(resp) => bail!("stream refused: {} {}", resp.status, resp.body_text()),
    }
}

fn refused(server: &Server, target: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
    match SseStream::open(server, target, headers)? {
        Ok(_) => bail!("{target}: a stream opened"),
        Err(resp) => Ok(resp),
    }
}

fn post(server: &Server, path: &str, headers: &str, body: &str) -> Result<HttpResponse> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    http_request(server.addr(), request.as_bytes())
}

/// `POST /api/ren/events` that must be accepted; returns `accepted`.
fn ingest(server: &Server, body: &str) -> Result<u64> {
    let resp = post(server, "/api/ren/events", "", body)?;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let answer = resp.json()?;
    assert_eq!(answer["ok"], true);
    Ok(answer["accepted"].as_u64().expect("accepted"))
}

fn id(event: &SseEvent) -> u64 {
    event
        .id
        .as_deref()
        .expect("id")
        .parse()
        .expect("numeric id")
}

/// Checks the SSE framing against the JSON: `event:` equals `t`.
fn next(stream: &mut SseStream) -> Result<SseEvent> {
    let event = stream.next_event(TIMEOUT)?;
    assert_eq!(event.data["t"], event.event.as_str(), "{event:?}");
    assert!(event.data["ts"].is_u64(), "{event:?}");
    Ok(event)
}

#[test]
fn streams_get_mirrors_and_app_events_their_filter_takes() -> Result<()> {
    let server = Server::start(&[])?;
    let mut wanted = open(
        &server,
        &format!("{STREAM}?s=realtime,presence,kv&cid=tab-1"),
    )?;
    let mut db_only = open(&server, &format!("{STREAM}?s=db"))?;
    // The SDK's default tenant id is `--dev`'s tenant, as on the HTTP API.
    let mut all = open_with(
        &server,
        &format!("{STREAM}?s=*"),
        &[("X-Tenant-Id", "dev-tenant-001")],
    )?;
    assert_eq!(
        wanted.header("content-type"),
        Some("text/event-stream"),
        "{:?}",
        wanted.headers
    );
    assert_eq!(wanted.header("cache-control"), Some("no-cache"));

    // A WebSocket publish (acknowledged: it is in history and mirrored), with the
    // connection's `cid` as `src`, so that client can skip its own write as the seed's
    // REN docs show (`event.src === ren.getClientId()`; the SDK's RealtimeClient sends
    // that id as `cid`).
    let mut ws = Client::connect_on_shard_with(&server, 0, "cid=tab-1")?;
    ws.send_json(&json!({"action":"publish","channel":"chat:lobby","data":{"text":"hi","n":[1,2.50]},"userId":"alice","ref":1}))?;
    ws.expect_event("ack")?;
    let message = next(&mut wanted)?;
    assert_eq!(message.event, "realtime.message");
    assert_eq!(
        message.data,
        json!({"t":"realtime.message","r":"realtime","v":"1","ch":"chat:lobby","src":"tab-1",
               "data":{"text":"hi","n":[1,2.5]},"uid":"alice","ts":message.data["ts"]})
    );
    // An HTTP publish.
    let resp = post(
        &server,
        "/api/realtime/publish",
        "",
        r#"{"channel":"chat:lobby","data":"from http"}"#,
    )?;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let http = next(&mut wanted)?;
    assert_eq!(
        (http.data["data"].as_str(), http.data["v"].as_str()),
        (Some("from http"), Some("2"))
    );
    assert_eq!(id(&http), id(&message) + 1);
    // A presence join (nobody subscribes to the channel: mirrored all the same).
    let mut member = Client::connect_on_shard(&server, 1)?;
    member.send_json(&json!({"action":"presence:join","channel":"chat:lobby","userId":"bob","metadata":{"name":"Bob"}}))?;
    let join = next(&mut wanted)?;
    assert_eq!(join.event, "presence.join");
    assert_eq!(
        (join.data["uid"].as_str(), join.data["r"].as_str()),
        (Some("bob"), Some("presence"))
    );
    assert_eq!(join.data["data"], json!({"name":"Bob"}));
    // App events: one single, then a batch with a domain only `*` takes.
    assert_eq!(
        ingest(
            &server,
            r#"{"t":"kv.put","k":"todo:1","ns":"demo","v":"e1","src":"tab-1"}"#
        )?,
        1
    );
    let kv = next(&mut wanted)?;
    assert_eq!(
        kv.data,
        json!({"t":"kv.put","r":"kv","k":"todo:1","ns":"demo","v":"e1","src":"tab-1","ts":kv.data["ts"]})
    );
    assert_eq!(
        ingest(
            &server,
            r#"[{"t":"db.document.created","k":"d1"},{"t":"jobs.done","data":{"ok":true}}]"#
        )?,
        2
    );
    let db = next(&mut db_only)?;
    assert_eq!(
        (db.event.as_str(), db.data["k"].as_str()),
        ("db.document.created", Some("d1"))
    );
    assert_eq!(id(&db), id(&kv) + 1, "one sequence for the tenant");

    let names: Vec<String> = (0..6)
        .map(|_| next(&mut all).map(|e| e.event))
        .collect::<Result<_>>()?;
    assert_eq!(
        names,
        [
            "realtime.message",
            "realtime.message",
            "presence.join",
            "kv.put",
            "db.document.created",
            "jobs.done"
        ]
    );
    // Nothing else reached the filtered streams: the next event each gets is a fresh one.
    ingest(
        &server,
        r#"[{"t":"kv.delete"},{"t":"db.document.deleted"}]"#,
    )?;
    assert_eq!(next(&mut wanted)?.event, "kv.delete");
    assert_eq!(next(&mut db_only)?.event, "db.document.deleted");
    Ok(())
}

#[test]
fn bad_filters_and_bad_batches_are_refused_with_json_and_change_nothing() -> Result<()> {
    let server = Server::start(&[])?;
    for s in ["KV", "kv,", "kv%20db", "a%2Cb;c", &"x".repeat(33)] {
        refused(&server, &format!("{STREAM}?s={s}"), &[])?.assert_error(400, "bad_request");
    }
    let mut stream = open(&server, STREAM)?;
    let resp = post(
        &server,
        "/api/ren/events",
        "",
        r#"[{"t":"kv.put","k":"1"},{"t":"kv.put","k":"2"},{"t":"kv put","k":"3"}]"#,
    )?;
    resp.assert_error(400, "bad_request");
    let message = resp.json()?["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.starts_with("events[2].t: "), "{message}");
    for (body, named) in [
        (
            r#"{"t":"kv.put","extra":1}"#,
            "event: unknown field `extra`",
        ),
        (
            r#"[{"t":"kv.put"},{"t":"kv.put","ts":"now"}]"#,
            "events[1].ts: ",
        ),
        (r#"[{"t":"kv.put"},{"k":"x"}]"#, "events[1].t: missing"),
        ("[1", "malformed JSON"),
    ] {
        let resp = post(&server, "/api/ren/events", "", body)?;
        resp.assert_error(400, "bad_request");
        let message = resp.json()?["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.starts_with(named), "{body}: {message}");
    }
    // Nothing of the refused batches went out: the next event is this one.
    ingest(&server, r#"{"t":"kv.put","k":"after"}"#)?;
    assert_eq!(next(&mut stream)?.data["k"], "after");
    // Wrong methods.
    post(&server, STREAM, "", "")?.assert_error(405, "method_not_allowed");
    let get = http_request(
        server.addr(),
        b"GET /api/ren/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )?;
    get.assert_error(405, "method_not_allowed");
    Ok(())
}

#[test]
fn a_reconnect_with_last_event_id_gets_exactly_what_it_missed() -> Result<()> {
    let server = Server::start(&[])?;
    let mut first = open(&server, STREAM)?;
    ingest(
        &server,
        r#"[{"t":"kv.put","k":"1"},{"t":"kv.put","k":"2"},{"t":"kv.put","k":"3"}]"#,
    )?;
    let seen: Vec<SseEvent> = (0..3).map(|_| next(&mut first)).collect::<Result<_>>()?;
    drop(first);
    ingest(
        &server,
        r#"[{"t":"kv.put","k":"4"},{"t":"kv.put","k":"5"}]"#,
    )?;
    let last = seen[2].id.clone().unwrap();
    let mut back = open_with(&server, STREAM, &[("Last-Event-ID", &last)])?;
    // The same with ?lastEventId= (for clients that cannot set the header).
    let mut by_query = open(
        &server,
        &format!("{STREAM}?lastEventId={}", seen[1].id.as_deref().unwrap()),
    )?;
    ingest(&server, r#"{"t":"kv.put","k":"6"}"#)?;
    let got: Vec<SseEvent> = (0..3).map(|_| next(&mut back)).collect::<Result<_>>()?;
    let keys: Vec<&str> = got.iter().map(|e| e.data["k"].as_str().unwrap()).collect();
    assert_eq!(keys, ["4", "5", "6"], "missed, then live, nothing twice");
    let ids: Vec<u64> = got.iter().map(id).collect();
    let first_id = id(&seen[2]) + 1;
    assert_eq!(ids, (first_id..first_id + 3).collect::<Vec<_>>());
    let keys: Vec<String> = (0..4)
        .map(|_| next(&mut by_query).map(|e| e.data["k"].as_str().unwrap().to_owned()))
        .collect::<Result<_>>()?;
    assert_eq!(keys, ["3", "4", "5", "6"]);
    Ok(())
}

#[test]
fn a_gap_older_than_the_buffer_gives_ren_meta_then_live_events() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ringcast.toml");
    std::fs::write(&config, "[ren]\nbuffer_events = 2\nbuffer_secs = 300\n")?;
    let server = Server::start(&["--config", config.to_str().unwrap()])?;
    let mut first = open(&server, STREAM)?;
    ingest(
        &server,
        r#"[{"t":"kv.put","k":"1"},{"t":"kv.put","k":"2"},{"t":"kv.put","k":"3"},{"t":"kv.put","k":"4"}]"#,
    )?;
    let seen: Vec<SseEvent> = (0..4).map(|_| next(&mut first)).collect::<Result<_>>()?;
    let mut last_id = seen[3].id.clone();
    for last in [seen[0].id.clone().unwrap(), "not-an-id-of-ours".to_owned()] {
        let mut back = open_with(&server, STREAM, &[("Last-Event-ID", &last)])?;
        let meta = back.next_event(TIMEOUT)?;
        assert_eq!(meta.event, "ren.meta");
        assert_eq!(
            meta.data["data"],
            json!({"truncated": true, "lastEventId": last})
        );
        assert_eq!(meta.id, last_id, "the cursor jumps to the last id");
        ingest(&server, r#"{"t":"kv.put","k":"live"}"#)?;
        assert_eq!(
            next(&mut back)?.data["k"],
            "live",
            "live events follow, no replay"
        );
        let live = next(&mut first)?;
        assert_eq!(live.data["k"], "live");
        last_id = live.id;
    }
    // Still within the buffer: exact.
    let mut exact = open_with(
        &server,
        STREAM,
        &[("Last-Event-ID", seen[3].id.as_deref().unwrap())],
    )?;
    ingest(&server, r#"{"t":"kv.put","k":"next"}"#)?;
    let got: Vec<String> = (0..3)
        .map(|_| next(&mut exact).map(|e| e.data["k"].as_str().unwrap().to_owned()))
        .collect::<Result<_>>()?;
    assert_eq!(got, ["live", "live", "next"]);
    assert!(
        server
            .metric("ringcast_ren_truncated_total")?
            .unwrap_or(0.0)
            >= 2.0
    );
    Ok(())
}

/// A reader that stops reading is closed once its outbound buffer is full (SSE has no
/// close frame: the stream just ends); another stream loses nothing meanwhile.
#[test]
fn a_stalled_reader_is_closed_while_another_stream_keeps_receiving() -> Result<()> {
    const EVENT_BYTES: usize = 4096;
    /// A batch stays well under the reading stream's own 64 KiB bound.
    const BATCH: usize = 8;
    const MAX_BATCHES: usize = 800;
    let server = Server::start(&["--outbound-buffer-bytes", "65536"])?;
    let mut stalled = match SseStream::open_with_rcvbuf(&server, STREAM, 4096)? {
        Ok(stream) => stream,
        Err(resp) => bail!("refused: {}", resp.body_text()),
    };
    let mut reading = open(&server, STREAM)?;
    let fds = || -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", server.pid()))?.count())
    };
    let fds_with_both = fds()?;
    let filler = "p".repeat(EVENT_BYTES);
    let batch: Vec<Value> = (0..BATCH)
        .map(|_| json!({"t":"kv.put","data":filler}))
        .collect();
    let body = serde_json::to_string(&batch)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut expected_id) = (0, None::<u64>);
    let mut cut = false;
    while sent < MAX_BATCHES && Instant::now() < deadline {
        assert_eq!(ingest(&server, &body)?, BATCH as u64);
        sent += 1;
        for _ in 0..BATCH {
            let event = next(&mut reading)?;
            if let Some(expected) = expected_id {
                assert_eq!(id(&event), expected, "the reading stream misses nothing");
            }
            expected_id = Some(id(&event) + 1);
        }
        if server
            .metric("ringcast_slow_consumer_closes_total")?
            .unwrap_or(0.0)
            >= 1.0
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "the stalled stream was not closed after {sent} batches"
    );
    // The server lets go of the stalled socket without the reader ever reading again
    // (its writer, stuck on a full socket, is stopped after a grace of 2 s).
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok((fds()? < fds_with_both).then_some(()))
    })?;
    let bytes = stalled.read_to_eof(TIMEOUT, 64 << 20)?;
    assert!(
        bytes < sent * BATCH * (EVENT_BYTES + 200),
        "it did not get everything"
    );
    // The other stream goes on.
    ingest(&server, r#"{"t":"kv.put","k":"still here"}"#)?;
    assert_eq!(next(&mut reading)?.data["k"], "still here");
    Ok(())
}

#[test]
fn streams_count_against_max_connections() -> Result<()> {
    let server = Server::start(&["--max-connections", "2"])?;
    let first = open(&server, STREAM)?;
    let _second = open(&server, STREAM)?;
    refused(&server, STREAM, &[])?.assert_error(503, "overloaded");
    drop(first);
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        Ok(match SseStream::open(&server, STREAM, &[])? {
            Ok(stream) => Some(stream),
            Err(resp) => {
                resp.assert_error(503, "overloaded");
                None
            }
        })
    })?;
    Ok(())
}

/// Every value of the response header `name` (lower case), in order.
fn header_values<'a>(stream: &'a SseStream, name: &str) -> Vec<&'a str> {
    stream
        .headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// docs/wire-contract.md, REN "CORS": a stream opened with an `Origin` the tenant takes
/// answers `Access-Control-Allow-Origin: <that origin>` with `Vary: Origin`, so a cache
/// keeps one answer per Origin; one opened without `Origin` (a backend) carries neither,
/// as documented.
#[test]
fn a_stream_opened_with_an_origin_answers_vary_origin() -> Result<()> {
    let server = Server::start(&[])?;
    let page = "http://localhost:5173";
    let with_origin = open_with(&server, STREAM, &[("Origin", page)])?;
    assert_eq!(
        header_values(&with_origin, "access-control-allow-origin"),
        [page]
    );
    assert_eq!(header_values(&with_origin, "vary"), ["Origin"]);
    let without = open(&server, STREAM)?;
    assert_eq!(
        header_values(&without, "access-control-allow-origin"),
        Vec::<&str>::new()
    );
    assert_eq!(header_values(&without, "vary"), Vec::<&str>::new());
    Ok(())
}

/// docs/wire-contract.md, REN "Answer": the head carries `X-Accel-Buffering: no` (nginx
/// passes events on as they come instead of buffering the response) and
/// `Connection: close` (the stream has no length; it ends when the connection does),
/// also for a request that asked for keep-alive.
#[test]
fn the_stream_head_tells_proxies_not_to_buffer_and_that_it_ends_the_connection() -> Result<()> {
    let server = Server::start(&[])?;
    let stream = open_with(&server, STREAM, &[("Connection", "keep-alive")])?;
    assert_eq!(header_values(&stream, "x-accel-buffering"), ["no"]);
    assert_eq!(header_values(&stream, "connection"), ["close"]);
    assert_eq!(header_values(&stream, "content-length"), Vec::<&str>::new());
    Ok(())
}

/// Without `--dev`: anonymous streams only where the tenant allows them, otherwise a
/// tenant JWT (`ringcast token`), CORS from `allowed_origins`, ingest behind the API key.
#[test]
fn anonymous_token_cors_and_api_key_rules() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ringcast.toml");
    std::fs::write(
        &config,
        "[[tenants]]\nid = \"open\"\nplan = \"pro\"\napi_keys = [\"k-open-0123456789abcdef\"]\n\
         allow_anonymous_ren = true\nallowed_origins = [\"https://app.example\"]\n\
         [[tenants]]\nid = \"closed\"\nplan = \"pro\"\n\
         [[tenants.token_keys]]\nkid = \"k1\"\nsecret = \"closed-secret-0123456789abcdef-0123\"\n",
    )?;
    let data = tempfile::tempdir()?;
    let server = Server::start_raw(
        vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--shards".into(),
            "2".into(),
            "--data-dir".into(),
            data.path().display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        data,
    )?;
    refused(&server, &format!("{STREAM}?tenant=closed"), &[])?.assert_error(401, "unauthorized");
    refused(&server, &format!("{STREAM}?tenant=closed&token=abc"), &[])?
        .assert_error(401, "unauthorized");
    let minted = std::process::Command::new(ringcast_tests::ringcast_bin())
        .args(["token", "--config", &config.display().to_string()])
        .args([
            "--tenant",
            "closed",
            "--channel",
            "any",
            "--user",
            "ren-user",
        ])
        .output()?;
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout)?.trim().to_owned();
    let _with_token = open(&server, &format!("{STREAM}?tenant=closed&token={token}"))?;
    // A bad token is refused even where anonymous streams are allowed.
    refused(&server, &format!("{STREAM}?tenant=open&token={token}"), &[])?
        .assert_error(401, "unauthorized");
    refused(&server, STREAM, &[])?.assert_error(404, "unknown_tenant");
    refused(&server, &format!("{STREAM}?tenant=nope"), &[])?.assert_error(404, "unknown_tenant");
    refused(
        &server,
        &format!("{STREAM}?tenant=open"),
        &[("Origin", "https://evil.example")],
    )?
    .assert_error(403, "forbidden");
    let mut stream = open_with(
        &server,
        &format!("{STREAM}?tenant=open"),
        &[("Origin", "https://app.example")],
    )?;
    assert_eq!(
        stream.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let mut by_header = open_with(&server, STREAM, &[("X-Tenant-Id", "open")])?;
    assert_eq!(
        by_header.header("access-control-allow-origin"),
        None,
        "no Origin, no CORS"
    );

    let event = r#"{"t":"kv.put","k":"k1"}"#;
    post(&server, "/api/ren/events", "X-Tenant-Id: open\r\n", event)?
        .assert_error(401, "unauthorized");
    let resp = post(
        &server,
        "/api/ren/events",
        "X-Tenant-Id: open\r\nAuthorization: Bearer k-open-0123456789abcdef\r\nX-Ren-Client: tab-9\r\n",
        event,
    )?;
    assert_eq!(resp.json()?, json!({"ok": true, "accepted": 1}));
    for s in [&mut stream, &mut by_header] {
        let got = next(s)?;
        assert_eq!(
            (got.data["k"].as_str(), got.data["src"].as_str()),
            (Some("k1"), Some("tab-9"))
        );
    }
    Ok(())
}

/// REAL TIME: this test waits for the server's 15 s heartbeat (the one test that does;
/// the interval itself is checked on the injected clock in engine/tests/ren.rs).
#[test]
fn a_ping_comment_within_15_seconds_real_time() -> Result<()> {
    let server = Server::start(&[])?;
    let mut stream = open(&server, STREAM)?;
    assert_eq!(
        stream.next_item(Duration::from_secs(17))?,
        SseItem::Comment("ping".into())
    );
    Ok(())
}

/// Reads `series` from `/metrics` until it is `want` (gauges settle after the event
/// that moves them).
fn await_series(server: &Server, series: &str, want: impl Fn(f64) -> bool) -> Result<f64> {
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        let text = server.metrics()?;
        Ok(ringcast_tests::series_value(&text, series).filter(|v| want(*v)))
    })
}

#[test]
fn streams_are_counted_in_metrics_while_open_and_when_they_close() -> Result<()> {
    const OPEN: &str = "ringcast_connections{transport=\"sse\"}";
    const BYTES: &str = "ringcast_bytes_out_total{transport=\"sse\"}";
    const CLOSED: &str = "ringcast_connections_closed_total{transport=\"sse\",reason=\"client\"}";
    let server = Server::start(&[])?;
    let before = server.metrics()?;
    assert_eq!(ringcast_tests::series_value(&before, OPEN), Some(0.0));
    assert_eq!(ringcast_tests::series_value(&before, BYTES), Some(0.0));
    let mut stream = open(&server, &format!("{STREAM}?s=*"))?;
    await_series(&server, OPEN, |v| v == 1.0)?;
    // The response head and `:ok` at least.
    let opened = await_series(&server, BYTES, |v| v > 0.0)?;
    ingest(&server, r#"{"t":"app.note","r":"app","data":{"n":1}}"#)?;
    assert_eq!(next(&mut stream)?.event, "app.note");
    await_series(&server, BYTES, |v| v > opened)?;
    drop(stream);
    await_series(&server, OPEN, |v| v == 0.0)?;
    await_series(&server, CLOSED, |v| v == 1.0)?;
    Ok(())
}
