//! Presence end to end: the real binary, a short TTL from the config file, a client that
//! disappears without leaving, the tenant's `presence_events` spelling.

use std::time::{Duration, Instant};

use anyhow::Result;
use ringcast_tests::{json, Client, Server};

#[test]
fn a_dropped_member_expires_after_the_configured_ttl() -> Result<()> {
    let server = Server::start_dev_with_presence_ttl(2)?;
    let channel = "room:ttl";
    // One watcher per spelling, on whichever shards they land.
    let mut watcher = Client::open(&server, "")?;
    watcher.subscribe(channel)?;
    let mut dotted = Client::open(&server, "presence_events=dot")?;
    dotted.subscribe(channel)?;

    let mut alice = Client::open(&server, "")?;
    alice.send_json(&json!({"action": "presence:join", "channel": channel, "userId": "alice", "metadata": {"name": "Alice"}}))?;
    let joined = watcher.expect_event("presence:join")?;
    assert_eq!(joined["userId"], "alice");
    assert_eq!(joined["metadata"]["name"], "Alice");
    assert_eq!(dotted.expect_event("presence.join")?["userId"], "alice");

    // Pings keep it for longer than the TTL.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1_000));
        alice.ping_pong()?;
    }
    // Gone without a leave: the TCP connection just ends.
    drop(alice);
    let dropped = Instant::now();
    let left = watcher.recv_until(|e| e["event"] != "pong", Duration::from_secs(8))?;
    let waited = dropped.elapsed();
    assert_eq!(left["event"], "presence:leave", "{left}");
    assert_eq!(left["userId"], "alice");
    assert_eq!(left["channel"], channel);
    assert!(
        waited >= Duration::from_millis(1_500),
        "kept until the TTL, not dropped at once: {waited:?}"
    );
    assert_eq!(dotted.expect_event("presence.leave")?["userId"], "alice");
    Ok(())
}

/// SPEC §3 "Presence event names" and README's `presence_events = "dot"`: the tenant
/// setting in the config file, with no `?presence_events=` on the connection, makes that
/// tenant's WebSocket subscribers get `presence.join` / `presence.update` /
/// `presence.leave`; another tenant of the same server keeps the SDK's colon spelling.
#[test]
fn the_tenant_setting_presence_events_dot_spells_only_that_tenants_events_dotted() -> Result<()> {
    let (server, _) = Server::start_with_config(
        "[[tenants]]\nid = \"dotted\"\nplan = \"pro\"\npresence_events = \"dot\"\n\
         [[tenants]]\nid = \"plain\"\nplan = \"pro\"\n",
        &[],
    )?;
    let channel = "room:spelling";
    for (tenant, sep) in [("dotted", '.'), ("plain", ':')] {
        let query = format!("tenant={tenant}");
        let mut watcher = Client::open(&server, &query)?;
        watcher.subscribe(channel)?;
        let mut member = Client::open(&server, &query)?;
        for frame in [
            json!({"action": "presence:join", "channel": channel, "userId": "ana", "metadata": {"v": 1}}),
            json!({"action": "presence:update", "channel": channel, "userId": "ana", "metadata": {"v": 2}}),
            json!({"action": "presence:leave", "channel": channel}),
        ] {
            member.send_json(&frame)?;
        }
        for kind in ["join", "update", "leave"] {
            // The very next event, so the other spelling arriving instead fails here.
            let event = watcher.expect_event(&format!("presence{sep}{kind}"))?;
            assert_eq!(
                (event["channel"].as_str(), event["userId"].as_str()),
                (Some(channel), Some("ana")),
                "{tenant}: {event}"
            );
        }
    }
    Ok(())
}
