//! Presence end to end: the real binary, a short TTL from the config file, a client that
//! disappears without leaving.

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
