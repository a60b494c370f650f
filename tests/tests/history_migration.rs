//! A data directory written by a server of history format 1 (one `*.rlog` file per
//! channel) is carried over to format 2 at start-up: same epoch, same seqs, so clients
//! resuming with `lastEventId` and `epoch` see `recovered: true` and nothing twice.

use anyhow::Result;
use ringcast_protocol::event;
use ringcast_store::{LogConfig, LogDir, SyncPolicy};
use ringcast_tests::{json, Client, Server};

/// `tenant` NUL `channel`: how the engine names a channel's history.
fn log_key(tenant: &str, channel: &str) -> Vec<u8> {
    [tenant.as_bytes(), b"\0", channel.as_bytes()].concat()
}

#[test]
fn format_1_logs_are_carried_over_with_their_epoch_and_seqs() -> Result<()> {
    let mut server = Server::start(&["--shards", "2"])?;
    server.kill9();
    let dir = LogDir::new(&server.data_dir().join("history"))?;
    let cfg = LogConfig {
        max_records: 1000,
        max_bytes: 1 << 20,
        sync: SyncPolicy::Never,
    };
    let mut epochs = Vec::new();
    for c in 0..20 {
        let channel = format!("old:{c}");
        let (mut log, _) = dir.open(&log_key("dev", &channel), &cfg)?;
        for seq in 1..=3u64 {
            let data = format!(r#"{{"c":{c},"seq":{seq}}}"#);
            let frame = event::message(&channel, data.as_bytes(), Some("u1"), seq, 1_000 + seq);
            assert_eq!(log.append(1_000 + seq, Some(b"u1"), &frame)?.0, seq);
        }
        log.flush()?;
        epochs.push(log.epoch().0.to_string());
    }

    server.restart_after_kill9()?;
    let leftover = std::fs::read_dir(server.data_dir().join("history"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "rlog"))
        .count();
    assert_eq!(leftover, 0, "format-1 files are removed once carried over");

    let (mut client, _) = Client::connect(&server, "cid=resume")?;
    client.expect_connected()?;
    for (c, epoch) in epochs.iter().enumerate() {
        let channel = format!("old:{c}");
        client.send_json(
            &json!({"action": "subscribe", "channel": channel, "lastEventId": 1, "epoch": epoch}),
        )?;
        for seq in 2..=3 {
            let message = client.expect_event("realtime.message")?;
            assert_eq!(message["seq"], seq, "{message}");
            assert_eq!(message["data"], json!({"c": c, "seq": seq}), "{message}");
            assert_eq!(message["userId"], "u1", "{message}");
        }
        let subscribed = client.expect_event("subscribed")?;
        assert_eq!(subscribed["epoch"], epoch.as_str(), "{subscribed}");
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        assert_eq!(subscribed["seq"], 3, "{subscribed}");
    }

    // History pages read the carried-over records' data spans.
    let page = ringcast_tests::http_get(server.addr(), "/api/realtime/history/old%3A7?limit=2")?;
    assert_eq!(page.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&page.body)?;
    let text = body.to_string();
    assert!(
        text.contains(r#""c":7"#) && text.contains(r#""seq":3"#),
        "{text}"
    );

    // The next publish continues the old seqs.
    client.send_json(&json!({"action": "publish", "channel": "old:0", "data": 4, "ref": 1}))?;
    let ack = client.recv_until(|e| e["event"] == "ack", ringcast_tests::TIMEOUT)?;
    assert_eq!(ack["seq"], 4, "{ack}");
    Ok(())
}
