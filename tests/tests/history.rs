//! SPEC §3 history and catch-up: `subscribe` with `lastEventId` replays what was missed,
//! in order, then `subscribed`; acknowledged messages survive kill -9 with their seq and
//! epoch; a wiped data directory changes the epoch and reports `recovered: false`.

use anyhow::{Context, Result};
use ringcast_tests::{json, Client, Server, TIMEOUT};
use serde_json::Value;

/// Publishes `data` values to `channel` with refs and waits for every ack; returns the seqs.
fn publish_acked(
    c: &mut Client,
    channel: &str,
    data: impl IntoIterator<Item = Value>,
) -> Result<Vec<u64>> {
    let mut n = 0;
    for (i, d) in data.into_iter().enumerate() {
        c.send_json(&json!({"action": "publish", "channel": channel, "data": d, "ref": i}))?;
        n += 1;
    }
    let mut seqs = Vec::new();
    for _ in 0..n {
        let ack = c.expect_event("ack")?;
        seqs.push(
            ack["seq"]
                .as_u64()
                .with_context(|| format!("ack seq: {ack}"))?,
        );
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Subscribes with `lastEventId` (and `epoch` when given); returns the replayed messages
/// and the `subscribed` event.
fn subscribe_from(
    c: &mut Client,
    channel: &str,
    last_event_id: u64,
    epoch: Option<&Value>,
) -> Result<(Vec<Value>, Value)> {
    let mut frame =
        json!({"action": "subscribe", "channel": channel, "lastEventId": last_event_id});
    if let Some(epoch) = epoch {
        frame["epoch"] = epoch.clone();
    }
    c.send_json(&frame)?;
    let mut replayed = Vec::new();
    for _ in 0..5000 {
        let ev = c
            .recv_event(TIMEOUT)
            .context("waiting for replay / subscribed")?;
        match ev["event"].as_str() {
            Some("realtime.message") => {
                assert_eq!(ev["channel"], channel, "{ev}");
                replayed.push(ev);
            }
            Some("subscribed") => {
                assert_eq!(ev["channel"], channel, "{ev}");
                return Ok((replayed, ev));
            }
            _ => panic!("unexpected event during catch-up: {ev}"),
        }
    }
    panic!("no `subscribed` after 5000 events")
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[test]
fn last_event_id_replays_missed_messages_then_live() -> Result<()> {
    let server = Server::start(&[])?;
    let mut publisher = Client::connect_on_shard(&server, 0)?;
    let acked = publish_acked(&mut publisher, "hist:a", (1..=5).map(|i| json!({"i": i})))?;
    assert_eq!(acked, vec![1, 2, 3, 4, 5]);

    let mut sub = Client::connect_on_shard(&server, 1)?;
    let (replayed, subscribed) = subscribe_from(&mut sub, "hist:a", 2, None)?;
    assert_eq!(
        seqs(&replayed),
        vec![3, 4, 5],
        "replay of seq > lastEventId, in order"
    );
    for m in &replayed {
        assert_eq!(
            m["data"]["i"], m["seq"],
            "replayed data matches its seq: {m}"
        );
        assert!(m["ts"].is_u64(), "{m}");
    }
    assert_eq!(subscribed["seq"], 5, "{subscribed}");
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert!(
        subscribed["epoch"].is_string(),
        "epoch is a string: {subscribed}"
    );

    // The next live message is seq 6: nothing lost or duplicated between replay and live.
    publish_acked(&mut publisher, "hist:a", [json!("live")])?;
    let live = sub.expect_event("realtime.message")?;
    assert_eq!(
        (live["seq"].clone(), live["data"].clone()),
        (json!(6), json!("live")),
        "{live}"
    );

    // lastEventId at the head: nothing to replay.
    let mut up_to_date = Client::open(&server, "")?;
    let (replayed, subscribed) = subscribe_from(&mut up_to_date, "hist:a", 6, None)?;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        (subscribed["seq"].clone(), subscribed["recovered"].clone()),
        (json!(6), json!(true))
    );
    Ok(())
}

#[test]
fn catch_up_while_publishing_loses_and_duplicates_nothing() -> Result<()> {
    let server = Server::start(&[])?;
    let mut publisher = Client::connect_on_shard(&server, 0)?;
    publish_acked(&mut publisher, "hist:race", (1..=50).map(|i| json!(i)))?;
    // Keep publishing while the subscriber catches up.
    let handle = std::thread::spawn(move || {
        publish_acked(&mut publisher, "hist:race", (51..=250).map(|i| json!(i)))
    });
    let mut sub = Client::connect_on_shard(&server, 1)?;
    let (replayed, subscribed) = subscribe_from(&mut sub, "hist:race", 10, None)?;
    handle.join().expect("publisher thread")?;
    let head = subscribed["seq"].as_u64().expect("seq");
    assert_eq!(
        seqs(&replayed),
        (11..=head).collect::<Vec<_>>(),
        "replay is 11..=subscribed.seq"
    );
    let mut live = Vec::new();
    for _ in head..250 {
        live.push(sub.expect_event("realtime.message")?);
    }
    assert_eq!(
        seqs(&live),
        (head + 1..=250).collect::<Vec<_>>(),
        "live continues at subscribed.seq + 1"
    );
    for m in replayed.iter().chain(&live) {
        assert_eq!(m["data"], m["seq"], "{m}");
    }
    Ok(())
}

#[test]
fn acked_messages_survive_kill9() -> Result<()> {
    let mut server = Server::start(&[])?;
    let mut publisher = Client::open(&server, "")?;
    let mut first = Client::open(&server, "")?;
    first.subscribe("hist:durable")?;
    publish_acked(
        &mut publisher,
        "hist:durable",
        (1..=3).map(|i| json!({"n": i})),
    )?;
    // A subscriber received them too (either condition alone must make them durable).
    for seq in 1..=3 {
        assert_eq!(first.expect_event("realtime.message")?["seq"], seq);
    }
    drop((publisher, first));
    let (_, before) = subscribe_from(&mut Client::open(&server, "")?, "hist:durable", 3, None)?;
    assert_eq!(before["seq"], 3);
    let epoch_before = before["epoch"].clone();

    server.restart_after_kill9()?;
    let mut sub = Client::open(&server, "")?;
    let (replayed, subscribed) = subscribe_from(&mut sub, "hist:durable", 0, Some(&epoch_before))?;
    assert_eq!(
        seqs(&replayed),
        vec![1, 2, 3],
        "acked messages after kill -9"
    );
    assert_eq!(replayed[2]["data"], json!({"n": 3}));
    assert_eq!(subscribed["seq"], 3, "{subscribed}");
    assert_eq!(
        subscribed["epoch"], epoch_before,
        "epoch survives kill -9: {subscribed}"
    );
    assert_eq!(subscribed["recovered"], true, "{subscribed}");

    // seq is never reused: the next publish is 4.
    let mut publisher = Client::open(&server, "")?;
    assert_eq!(
        publish_acked(&mut publisher, "hist:durable", [json!("after")])?,
        vec![4]
    );
    Ok(())
}

#[test]
fn history_survives_graceful_restart() -> Result<()> {
    let mut server = Server::start(&[])?;
    let mut publisher = Client::open(&server, "")?;
    publish_acked(&mut publisher, "hist:graceful", (1..=4).map(|i| json!(i)))?;
    drop(publisher);
    server.restart_after_terminate()?;
    let mut sub = Client::open(&server, "")?;
    let (replayed, subscribed) = subscribe_from(&mut sub, "hist:graceful", 1, None)?;
    assert_eq!(seqs(&replayed), vec![2, 3, 4]);
    assert_eq!(
        (subscribed["seq"].clone(), subscribed["recovered"].clone()),
        (json!(4), json!(true))
    );
    Ok(())
}

#[test]
fn wiped_data_dir_changes_epoch_and_is_not_recovered() -> Result<()> {
    let mut server = Server::start(&[])?;
    let mut publisher = Client::open(&server, "")?;
    publish_acked(&mut publisher, "hist:wiped", (1..=3).map(|i| json!(i)))?;
    let (_, before) = subscribe_from(&mut Client::open(&server, "")?, "hist:wiped", 3, None)?;
    let epoch_before = before["epoch"].clone();
    drop(publisher);

    server.kill9();
    for entry in std::fs::read_dir(server.data_dir())? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    server.restart_after_kill9()?;
    let mut sub = Client::open(&server, "")?;
    let (replayed, subscribed) = subscribe_from(&mut sub, "hist:wiped", 3, Some(&epoch_before))?;
    assert!(
        replayed.is_empty(),
        "nothing to replay from a wiped directory: {replayed:?}"
    );
    assert_ne!(
        subscribed["epoch"], epoch_before,
        "epoch must change when history was lost: {subscribed}"
    );
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    Ok(())
}

#[test]
fn replay_beyond_kept_history_is_not_recovered() -> Result<()> {
    // The dev tenant is enterprise: 1,000 messages kept per channel.
    let server = Server::start(&[])?;
    let mut publisher = Client::open(&server, "")?;
    let acked = publish_acked(&mut publisher, "hist:long", (1..=1010).map(|i| json!(i)))?;
    assert_eq!(acked.last(), Some(&1010));
    let mut sub = Client::open(&server, "")?;
    let (replayed, subscribed) = subscribe_from(&mut sub, "hist:long", 0, None)?;
    let got = seqs(&replayed);
    assert!(
        got.len() >= 1000,
        "at least the plan's 1,000 messages are kept, got {}",
        got.len()
    );
    let first = got[0];
    assert_eq!(
        got,
        (first..=1010).collect::<Vec<_>>(),
        "replay is the contiguous tail"
    );
    assert!(
        first > 1,
        "all 1010 messages kept with a 1,000 message plan"
    );
    assert_eq!(
        subscribed["recovered"], false,
        "a gap must be reported: {subscribed}"
    );
    assert_eq!(subscribed["seq"], 1010);
    Ok(())
}
