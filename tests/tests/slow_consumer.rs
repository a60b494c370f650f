//! SPEC §9: a subscriber that stops reading is closed with 4008 once its outbound buffer
//! is full; the others on the channel lose nothing; server memory stays bounded.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringcast_tests::{json, Client, Closed, Server, TIMEOUT};

const MESSAGE_BYTES: usize = 4096;
/// Upper bound on messages published; the test stops as soon as the slow consumer is cut.
const MAX_MESSAGES: usize = 6000;
/// Messages the publisher may be ahead of the fast subscriber (keeps the fast one far
/// below its own 64 KiB outbound buffer).
const WINDOW: usize = 8;

#[test]
fn slow_consumer_is_closed_and_others_lose_nothing() -> Result<()> {
    let server = Server::start(&["--outbound-buffer-bytes", "65536"])?;
    let rss_before = server.rss_kib()?;

    // The slow one: small kernel receive buffer, never reads until the end.
    let (mut slow, _) = Client::connect_with_rcvbuf(&server, "cid=slow", 4096)?;
    slow.expect_connected()?;
    slow.subscribe("firehose")?;

    let mut fast = Client::connect_on_shard(&server, 1)?;
    fast.subscribe("firehose")?;
    let mut publisher = Client::connect_on_shard(&server, 0)?;

    // The fast subscriber reads on its own thread and reports progress.
    let progress = Arc::new((Mutex::new(0usize), Condvar::new()));
    let published_total = Arc::new(Mutex::new(None::<usize>));
    let reader = {
        let progress = Arc::clone(&progress);
        let published_total = Arc::clone(&published_total);
        std::thread::spawn(move || -> Result<usize> {
            let mut next_seq = 1u64;
            loop {
                if let Some(total) = *published_total.lock().expect("lock") {
                    if next_seq as usize > total {
                        return Ok(total);
                    }
                }
                let ev = match fast.recv_event(Duration::from_millis(200)) {
                    Ok(ev) => ev,
                    Err(e) if format!("{e}").contains("no message within") => continue,
                    Err(e) => {
                        return Err(e.context(format!("fast subscriber waiting for seq {next_seq}")))
                    }
                };
                if ev["event"] != "realtime.message" {
                    bail!("fast subscriber got {ev}");
                }
                if ev["seq"] != next_seq || ev["data"]["n"] != next_seq {
                    bail!(
                        "fast subscriber expected seq {next_seq}, got seq {} n {}",
                        ev["seq"],
                        ev["data"]["n"]
                    );
                }
                next_seq += 1;
                let (count, cv) = &*progress;
                *count.lock().expect("lock") = next_seq as usize - 1;
                cv.notify_all();
            }
        })
    };

    let filler = "p".repeat(MESSAGE_BYTES);
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cut = false;
    while published < MAX_MESSAGES && Instant::now() < deadline {
        // Stay at most WINDOW messages ahead of the fast subscriber.
        {
            let (count, cv) = &*progress;
            let guard = count.lock().expect("lock");
            let (_guard, timeout) = cv
                .wait_timeout_while(guard, TIMEOUT, |done| published > *done + WINDOW)
                .expect("lock");
            if timeout.timed_out() && reader.is_finished() {
                break;
            }
        }
        published += 1;
        publisher.send_json(&json!({"action": "publish", "channel": "firehose", "data": {"n": published, "f": filler}}))?;
        if published % 100 == 0
            && server.metric("ringcast_slow_consumer_closes_total")? >= Some(1.0)
        {
            cut = true;
            break;
        }
    }
    *published_total.lock().expect("lock") = Some(published);
    let delivered = reader
        .join()
        .expect("reader thread")
        .context("fast subscriber")?;
    assert_eq!(delivered, published, "fast subscriber got every message");

    if !cut {
        let closes = server.metric("ringcast_slow_consumer_closes_total")?;
        assert!(
            closes >= Some(1.0),
            "after {published} messages of {MESSAGE_BYTES} B the slow consumer was not closed \
             (ringcast_slow_consumer_closes_total = {closes:?})"
        );
    }

    // What the slow one has: an in-order prefix, then a close frame 4008 or a dropped TCP.
    let mut next_seq = 1u64;
    let end = loop {
        match slow.recv_message(TIMEOUT) {
            Ok(tungstenite::Message::Text(t)) => {
                let ev: serde_json::Value = serde_json::from_str(t.as_str())?;
                if ev["event"] == "realtime.message" {
                    assert_eq!(ev["seq"], next_seq, "slow consumer's prefix is in order");
                    next_seq += 1;
                }
            }
            Ok(tungstenite::Message::Close(frame)) => {
                break frame
                    .map(|f| Closed::Code(u16::from(f.code)))
                    .unwrap_or(Closed::NoCode)
            }
            Ok(other) => bail!("slow consumer got {other:?}"),
            Err(e) => break Closed::Dropped(format!("{e:#}")),
        }
    };
    eprintln!(
        "slow consumer: {published} published, {} received by the slow one, ended with {end:?}",
        next_seq - 1
    );
    match end {
        Closed::Code(code) => assert_eq!(code, 4008, "slow consumer close code"),
        Closed::NoCode => panic!("slow consumer closed without the 4008 code"),
        Closed::Dropped(why) => {
            assert!(
                !why.contains("no message within"),
                "slow consumer still open: {why}"
            );
            eprintln!(
                "slow consumer saw no close frame ({why}) after {} messages",
                next_seq - 1
            );
        }
    }
    assert!(
        (next_seq as usize) <= published,
        "slow consumer cannot have received everything"
    );

    let rss_after = server.rss_kib()?;
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 64,
        "server RSS grew by {growth_mib} MiB ({rss_before} -> {rss_after} KiB)"
    );

    // One log line says why, and the close is counted by reason.
    let line = server.await_log_line(&["connection closed", "reason=slow_consumer"])?;
    assert!(
        line.contains("code=4008") && line.contains("WARN"),
        "{line}"
    );
    let closes = server.metrics()?;
    let series = "ringcast_connections_closed_total{transport=\"ws\",reason=\"slow_consumer\"}";
    assert!(
        ringcast_tests::series_value(&closes, series) >= Some(1.0),
        "{closes}"
    );

    // The server is still healthy.
    let mut c = Client::open(&server, "")?;
    c.ping_pong()?;
    Ok(())
}
