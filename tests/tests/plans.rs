//! SPEC §8: per-tenant plan limits. Exceeding one answers the matching error event and
//! changes nothing else: no partial publish, no lost message, no closed connection.

use anyhow::Result;
use ringcast_tests::{json, Client, Server};

/// A server with the dev tenant plus tenant `small` on the `free` plan.
fn start() -> Result<Server> {
    let data_dir = tempfile::Builder::new()
        .prefix("ringcast-data-")
        .tempdir()?;
    let conf = data_dir.path().join("ringcast.toml");
    std::fs::write(&conf, "[[tenants]]\nid = \"small\"\nplan = \"free\"\n")?;
    let args = [
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--config",
        &conf.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut args = args;
    args.extend([
        "--data-dir".to_string(),
        data_dir.path().join("data").display().to_string(),
    ]);
    Server::start_raw(args, data_dir)
}

fn expect_error(c: &mut Client, code: &str) -> serde_json::Value {
    let ev = c
        .expect_event("error")
        .unwrap_or_else(|e| panic!("no `{code}` error: {e:#}"));
    assert_eq!(ev["data"]["code"], code, "{ev}");
    ev
}

#[test]
fn free_plan_message_size_limit() -> Result<()> {
    let server = start()?;
    let mut c = Client::open(&server, "tenant=small")?;
    c.send_json(
        &json!({"action": "publish", "channel": "s", "data": "x".repeat(70_000), "ref": 1}),
    )?;
    assert_eq!(expect_error(&mut c, "message_too_large")["ref"], 1);
    // 60 KB is within the free plan's 64 KB.
    c.send_json(
        &json!({"action": "publish", "channel": "s", "data": "x".repeat(60_000), "ref": 2}),
    )?;
    let ack = c.expect_event("ack")?;
    assert_eq!(
        (ack["ref"].clone(), ack["seq"].clone()),
        (json!(2), json!(1)),
        "{ack}"
    );
    // The dev tenant (enterprise) takes 70 KB.
    let mut d = Client::open(&server, "")?;
    d.send_json(
        &json!({"action": "publish", "channel": "s", "data": "x".repeat(70_000), "ref": 3}),
    )?;
    assert_eq!(
        d.expect_event("ack")?["seq"],
        1,
        "tenants have separate channels"
    );
    Ok(())
}

#[test]
fn free_plan_channel_limit() -> Result<()> {
    let server = start()?;
    let mut c = Client::open(&server, "tenant=small")?;
    for i in 0..10 {
        c.subscribe(&format!("ch:{i}"))?;
    }
    c.send_json(&json!({"action": "subscribe", "channel": "ch:10"}))?;
    let ev = expect_error(&mut c, "channel_limit");
    assert!(ev["channel"] == "ch:10" || ev["channel"].is_null(), "{ev}");
    c.ping_pong()?;
    // An existing channel still works (the client is subscribed to it), and the dev
    // tenant is not limited.
    c.send_json(&json!({"action": "publish", "channel": "ch:3", "data": "still", "ref": "p"}))?;
    // A subscribed publisher gets its own message before the ack (the ack waits for the
    // fan-out; see harness.rs, subscribe_and_publish_on_the_owner_itself_keep_order).
    assert_eq!(c.expect_event("realtime.message")?["data"], "still");
    assert_eq!(
        c.expect_event("ack")?["ref"],
        "p",
        "an existing channel still takes publishes"
    );
    let mut d = Client::open(&server, "")?;
    for i in 0..12 {
        d.subscribe(&format!("ch:{i}"))?;
    }
    Ok(())
}

#[test]
fn free_plan_publish_rate_limit() -> Result<()> {
    const SENT: usize = 530;
    let server = start()?;
    let mut sub = Client::open(&server, "tenant=small")?;
    sub.subscribe("rate")?;
    let mut c = Client::open(&server, "tenant=small")?;
    for i in 0..SENT {
        c.send_json(&json!({"action": "publish", "channel": "rate", "data": i, "ref": i}))?;
    }
    let mut acked = Vec::new();
    let mut limited = Vec::new();
    for _ in 0..SENT {
        let ev = c.recv_event(ringcast_tests::TIMEOUT)?;
        match ev["event"].as_str() {
            Some("ack") => acked.push(ev["seq"].as_u64().expect("seq")),
            Some("error") => {
                assert_eq!(ev["data"]["code"], "rate_limited", "{ev}");
                limited.push(
                    ev["ref"]
                        .as_u64()
                        .expect("rate_limited error carries the ref"),
                );
            }
            _ => panic!("unexpected {ev}"),
        }
    }
    assert!(
        !limited.is_empty(),
        "{SENT} publishes at once on a 500/min plan: none rate_limited"
    );
    assert!(
        (500..SENT).contains(&acked.len()),
        "acked {} of {SENT} on a 500/min plan",
        acked.len()
    );
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "refused publishes take no seq"
    );
    // The subscriber gets exactly the accepted ones.
    for seq in 1..=acked.len() as u64 {
        assert_eq!(sub.expect_event("realtime.message")?["seq"], seq);
    }
    c.ping_pong()?;
    sub.ping_pong()?;
    Ok(())
}
