//! Thousands of channels with history: the server keeps no file descriptor per channel,
//! one mapping per open channel log, and disk use proportional to what was written
//! (logs are sparse files).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use ringcast_tests::{json, Client, Server};

const CHANNELS: usize = 3_000;

fn count_entries(dir: &str) -> Result<usize> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("read {dir}"))?
        .count())
}

/// Bytes actually allocated on disk under `dir` (st_blocks × 512), recursively.
fn disk_use(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_use(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

#[test]
fn three_thousand_channels_without_fds_or_disk_blowup() -> Result<()> {
    let server = Server::start(&[])?;
    let pid = server.pid();
    let fds_before = count_entries(&format!("/proc/{pid}/fd"))?;

    let (mut publisher, _) = Client::connect(&server, "cid=many")?;
    publisher.expect_connected()?;
    // Windows of 200 publishes, each window acknowledged before the next, so the test
    // also works with small socket buffers.
    for window in (0..CHANNELS).collect::<Vec<_>>().chunks(200) {
        for &i in window {
            let frame = json!({"action": "publish", "channel": format!("many:{i}"), "data": {"i": i}, "ref": i});
            publisher.send_json(&frame)?;
        }
        for _ in window {
            let ack = publisher.expect_event("ack")?;
            assert_eq!(
                ack["seq"], 1,
                "first message of each channel has seq 1: {ack}"
            );
        }
    }

    let fds_after = count_entries(&format!("/proc/{pid}/fd"))?;
    assert!(
        fds_after < fds_before + 50,
        "file descriptors grew from {fds_before} to {fds_after} for {CHANNELS} channels"
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let log_mappings = maps.lines().filter(|l| l.contains("/history/")).count();
    assert!(
        (CHANNELS..=CHANNELS + 16).contains(&log_mappings),
        "expected one mapping per open channel log, found {log_mappings}"
    );
    let used = disk_use(&server.data_dir().join("history"))?;
    assert!(
        used < 64 * 1024 * CHANNELS as u64,
        "{used} bytes on disk for {CHANNELS} one-message channels: logs are not sparse"
    );

    // Every channel's history is readable.
    let (mut reader, _) = Client::connect(&server, "cid=reader")?;
    reader.expect_connected()?;
    for i in [0, CHANNELS / 2, CHANNELS - 1] {
        reader.send_json(
            &json!({"action": "subscribe", "channel": format!("many:{i}"), "lastEventId": 0}),
        )?;
        let message = reader.expect_event("realtime.message")?;
        assert_eq!(message["data"]["i"], i, "{message}");
        let subscribed = reader.expect_event("subscribed")?;
        assert_eq!(
            (
                subscribed["seq"].as_u64(),
                subscribed["recovered"].as_bool()
            ),
            (Some(1), Some(true))
        );
    }
    Ok(())
}

#[test]
fn subscribing_creates_no_log_until_the_first_message() -> Result<()> {
    let server = Server::start(&[])?;
    let history = server.data_dir().join("history");
    let logs = || std::fs::read_dir(&history).map(|d| d.count()).unwrap_or(0);
    let (mut client, _) = Client::connect(&server, "cid=idle")?;
    client.expect_connected()?;
    for i in 0..500 {
        client.send_json(&json!({"action": "subscribe", "channel": format!("idle:{i}")}))?;
        let subscribed = client.expect_event("subscribed")?;
        assert_eq!(subscribed["seq"], 0, "{subscribed}");
    }
    assert_eq!(
        logs(),
        0,
        "subscribing to never-published channels created log files"
    );

    // The epoch handed out before the first message is the log's epoch after it.
    client.send_json(&json!({"action": "subscribe", "channel": "idle:epoch"}))?;
    let before = client.expect_event("subscribed")?;
    client
        .send_json(&json!({"action": "publish", "channel": "idle:epoch", "data": 1, "ref": 1}))?;
    client.recv_until(|e| e["event"] == "ack", ringcast_tests::TIMEOUT)?;
    assert_eq!(logs(), 1);
    let (mut other, _) = Client::connect(&server, "cid=other")?;
    other.expect_connected()?;
    other.send_json(&json!({"action": "subscribe", "channel": "idle:epoch", "lastEventId": 0, "epoch": before["epoch"]}))?;
    other.expect_event("realtime.message")?;
    let after = other.expect_event("subscribed")?;
    assert_eq!(
        after["epoch"], before["epoch"],
        "epoch changed when the log was created"
    );
    assert_eq!(after["recovered"], true, "{after}");
    Ok(())
}
