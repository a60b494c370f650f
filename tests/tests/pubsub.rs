//! SPEC §3 pub/sub over WebSocket: connected, subscribe, publish, ack, unsubscribe, ping,
//! cross-shard fan-out and ordering under many clients.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use ringcast_tests::{json, masked_frame, strip_json_whitespace, Client, Server, TIMEOUT};
use serde_json::Value;

fn assert_ts(ev: &Value) {
    let ts = ev["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("`ts` is not an integer: {ev}"));
    // Epoch milliseconds: after 2020-01-01 and not in seconds or microseconds.
    assert!(
        (1_577_836_800_000..4_102_444_800_000).contains(&ts),
        "ts {ts} is not epoch ms: {ev}"
    );
}

#[test]
fn connected_carries_given_or_generated_client_id() -> Result<()> {
    let server = Server::start(&[])?;
    let (mut c, _) = Client::connect(&server, "cid=abc123")?;
    let ev = c.recv_event(TIMEOUT)?;
    assert_eq!(ev["event"], "connected", "{ev}");
    assert_eq!(ev["data"]["clientId"], "abc123", "{ev}");
    assert_ts(&ev);

    // The SDK appends `?cid=` to an endpoint that has its own query: a second `?`
    // separates parameters too.
    let (mut sdk_like, _) = Client::connect(&server, "tenant=dev?cid=tab-7")?;
    assert_eq!(sdk_like.expect_connected()?, "tab-7");

    let (mut c1, _) = Client::connect(&server, "")?;
    let (mut c2, _) = Client::connect(&server, "")?;
    let id1 = c1.expect_connected()?;
    let id2 = c2.expect_connected()?;
    assert!(!id1.is_empty(), "generated clientId is empty");
    assert_ne!(
        id1, id2,
        "two anonymous connections got the same generated clientId"
    );
    Ok(())
}

#[test]
fn shard_header_names_a_valid_shard() -> Result<()> {
    let server = Server::start(&[])?;
    assert_eq!(server.shards(), 2);
    let a = Client::connect_on_shard(&server, 0)?;
    let b = Client::connect_on_shard(&server, 1)?;
    assert_eq!((a.shard, b.shard), (0, 1));
    Ok(())
}

#[test]
fn publish_reaches_subscriber_on_other_shard() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::connect_on_shard(&server, 0)?;
    let mut publisher = Client::connect_on_shard(&server, 1)?;

    let subscribed = sub.subscribe("chat:lobby")?;
    assert_eq!(
        subscribed["seq"], 0,
        "a never-published channel has seq 0: {subscribed}"
    );
    assert_ts(&subscribed);

    // Raw text, so the exact bytes of `data` are under test (1.50 must not become 1.5,
    // key order must not change).
    let data = r#"{"b":1,"a":[1.50,"x"]}"#;
    publisher.send_raw_text(&format!(
        r#"{{"action":"publish","channel":"chat:lobby","data":{data},"userId":"alice"}}"#
    ))?;
    let raw = sub.recv_text(TIMEOUT)?;
    let ev: Value = serde_json::from_str(&raw)?;
    assert_eq!(ev["event"], "realtime.message", "{raw}");
    assert_eq!(ev["channel"], "chat:lobby", "{raw}");
    assert_eq!(ev["userId"], "alice", "{raw}");
    assert_eq!(ev["seq"], 1, "{raw}");
    assert_ts(&ev);
    let compact = strip_json_whitespace(&raw);
    assert!(
        compact.contains(&format!(r#""data":{data}"#)),
        "data not delivered byte-for-byte: {raw}"
    );

    // Without userId the message has none; seq goes on.
    publisher.send_json(&json!({"action": "publish", "channel": "chat:lobby", "data": "two"}))?;
    let ev = sub.recv_event(TIMEOUT)?;
    assert_eq!(ev["event"], "realtime.message", "{ev}");
    assert_eq!(ev["data"], "two");
    assert_eq!(ev["seq"], 2);
    assert!(
        ev.get("userId").is_none_or(Value::is_null),
        "userId must be absent: {ev}"
    );

    // A later subscriber learns the latest seq.
    let mut late = Client::connect_on_shard(&server, 1)?;
    assert_eq!(late.subscribe("chat:lobby")?["seq"], 2);
    Ok(())
}

#[test]
fn publisher_gets_own_message_only_when_subscribed() -> Result<()> {
    let server = Server::start(&[])?;
    let mut a = Client::open(&server, "cid=a")?;
    let mut b = Client::open(&server, "cid=b")?;
    b.subscribe("room")?;

    // `a` is not subscribed: its next event after publishing must be the pong, not the
    // message (the ping goes after the publish on the same connection).
    a.send_json(&json!({"action": "publish", "channel": "room", "data": 1}))?;
    assert_eq!(b.expect_event("realtime.message")?["data"], 1);
    a.ping_pong()?;

    a.subscribe("room")?;
    a.send_json(&json!({"action": "publish", "channel": "room", "data": 2}))?;
    let own = a.expect_event("realtime.message")?;
    assert_eq!(
        (own["data"].clone(), own["seq"].clone()),
        (json!(2), json!(2)),
        "{own}"
    );
    assert_eq!(b.expect_event("realtime.message")?["seq"], 2);
    Ok(())
}

#[test]
fn publish_with_ref_is_acked() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::connect_on_shard(&server, 0)?;
    let mut publisher = Client::connect_on_shard(&server, 1)?;
    sub.subscribe("acks")?;

    publisher.send_json(
        &json!({"action": "publish", "channel": "acks", "data": {"x": 1}, "ref": "r-1"}),
    )?;
    let ack = publisher.expect_event("ack")?;
    assert_eq!(ack["ref"], "r-1", "{ack}");
    assert_eq!(ack["channel"], "acks", "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_ts(&ack);

    publisher
        .send_json(&json!({"action": "publish", "channel": "acks", "data": {"x": 2}, "ref": 77}))?;
    let ack = publisher.expect_event("ack")?;
    assert_eq!(ack["ref"], 77, "numeric ref comes back as a number: {ack}");
    assert_eq!(ack["seq"], 2, "{ack}");

    // The acked seqs are the delivered seqs.
    let m1 = sub.expect_event("realtime.message")?;
    let m2 = sub.expect_event("realtime.message")?;
    assert_eq!((m1["seq"].clone(), m2["seq"].clone()), (json!(1), json!(2)));
    assert_eq!(m2["data"], json!({"x": 2}));
    // No ack without ref.
    publisher.send_json(&json!({"action": "publish", "channel": "acks", "data": 3}))?;
    publisher
        .ping_pong()
        .context("a publish without ref is not acked")?;
    Ok(())
}

#[test]
fn unsubscribe_stops_delivery() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::connect_on_shard(&server, 0)?;
    let mut publisher = Client::connect_on_shard(&server, 1)?;
    sub.subscribe("a")?;
    sub.subscribe("b")?;
    publisher.send_json(&json!({"action": "publish", "channel": "a", "data": "before"}))?;
    assert_eq!(sub.expect_event("realtime.message")?["data"], "before");

    sub.send_json(&json!({"action": "unsubscribe", "channel": "a"}))?;
    let ev = sub.expect_event("unsubscribed")?;
    assert_eq!(ev["channel"], "a", "{ev}");
    assert_ts(&ev);

    // A message on `a`, then one on `b` from the same publisher: `b`'s acts as a barrier.
    publisher
        .send_json(&json!({"action": "publish", "channel": "a", "data": "after", "ref": 1}))?;
    publisher.expect_event("ack")?;
    publisher
        .send_json(&json!({"action": "publish", "channel": "b", "data": "barrier", "ref": 2}))?;
    publisher.expect_event("ack")?;
    let ev = sub.expect_event("realtime.message")?;
    assert_eq!(
        ev["channel"], "b",
        "delivery on an unsubscribed channel: {ev}"
    );
    assert_eq!(ev["data"], "barrier");
    sub.ping_pong()?;
    Ok(())
}

#[test]
fn ping_pong() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    c.send_json(&json!({"action": "ping"}))?;
    let pong = c.expect_event("pong")?;
    assert_ts(&pong);
    Ok(())
}

/// ≥ 40 subscribers over 10 channels on both shards, 4 publishers (2 per shard), 400
/// messages: every subscriber gets every message of its channels exactly once, in seq
/// order, with contiguous seq, and per-publisher order is kept.
#[test]
fn many_clients_many_channels_exactly_once_in_order() -> Result<()> {
    const CHANNELS: usize = 10;
    const SUBSCRIBERS: usize = 40;
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 100;

    let server = Server::start(&[])?;
    let channel = |i: usize| format!("load:{i}");

    // Subscriber i listens on channels i % 10 and (i * 3 + 1) % 10 (two distinct ones).
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = Client::connect_on_shard(&server, (i % 2) as u32)?;
        let mut mine = vec![i % CHANNELS, (i * 3 + 1) % CHANNELS];
        mine.dedup();
        for &ch in &mine {
            let ev = c.subscribe(&channel(ch))?;
            assert_eq!(ev["seq"], 0, "{ev}");
        }
        subs.push((c, mine));
    }

    let publishers: Vec<Client> = (0..PUBLISHERS)
        .map(|p| Client::connect_on_shard(&server, (p % 2) as u32))
        .collect::<Result<_>>()?;
    let handles: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut c)| {
            std::thread::spawn(move || -> Result<()> {
                for i in 0..PER_PUBLISHER {
                    let ch = format!("load:{}", (p * 7 + i) % CHANNELS);
                    c.send_json(&json!({"action": "publish", "channel": ch, "data": {"p": p, "i": i}, "ref": i}))?;
                }
                // Acks of different channels may come back in any order (different owner
                // shards); within a channel, publish order is seq order.
                let mut acks = Vec::new();
                for _ in 0..PER_PUBLISHER {
                    let ack = c.expect_event("ack")?;
                    acks.push((ack["ref"].as_u64().expect("ref"), ack["seq"].as_u64().expect("seq")));
                }
                acks.sort_unstable();
                let refs: Vec<u64> = acks.iter().map(|a| a.0).collect();
                assert_eq!(refs, (0..PER_PUBLISHER as u64).collect::<Vec<_>>(), "publisher {p}: one ack per ref");
                for ch in 0..CHANNELS {
                    let seqs: Vec<u64> =
                        acks.iter().filter(|a| (p * 7 + a.0 as usize) % CHANNELS == ch).map(|a| a.1).collect();
                    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "publisher {p} channel {ch}: acked seqs {seqs:?}");
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("publisher thread")?;
    }

    // Expected per channel: which (p, i) pairs.
    let mut expected: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    for p in 0..PUBLISHERS {
        for i in 0..PER_PUBLISHER {
            expected
                .entry((p * 7 + i) % CHANNELS)
                .or_default()
                .push((p as u64, i as u64));
        }
    }

    for (n, (sub, mine)) in subs.iter_mut().enumerate() {
        let total: usize = mine.iter().map(|ch| expected[ch].len()).sum();
        let mut got: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
        for k in 0..total {
            let ev = sub
                .recv_event(Duration::from_secs(10))
                .with_context(|| format!("subscriber {n}: message {k} of {total}"))?;
            assert_eq!(ev["event"], "realtime.message", "subscriber {n}: {ev}");
            let seq = ev["seq"].as_u64().expect("seq");
            let (p, i) = (
                ev["data"]["p"].as_u64().expect("p"),
                ev["data"]["i"].as_u64().expect("i"),
            );
            got.entry(ev["channel"].as_str().expect("channel").to_owned())
                .or_default()
                .push((seq, p, i));
        }
        for &ch in mine.iter() {
            let msgs = got.remove(&channel(ch)).unwrap_or_default();
            let seqs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
            let want: Vec<u64> = (1..=expected[&ch].len() as u64).collect();
            assert_eq!(
                seqs, want,
                "subscriber {n} channel {ch}: seq not 1..=N contiguous in order"
            );
            let mut pairs: Vec<(u64, u64)> = msgs.iter().map(|m| (m.1, m.2)).collect();
            // Per-publisher order is publish order.
            for p in 0..PUBLISHERS as u64 {
                let is: Vec<u64> = pairs.iter().filter(|x| x.0 == p).map(|x| x.1).collect();
                assert!(
                    is.windows(2).all(|w| w[0] < w[1]),
                    "subscriber {n} channel {ch}: publisher {p} reordered"
                );
            }
            pairs.sort_unstable();
            let mut want_pairs = expected[&ch].clone();
            want_pairs.sort_unstable();
            assert_eq!(
                pairs, want_pairs,
                "subscriber {n} channel {ch}: not every message exactly once"
            );
        }
        assert!(
            got.is_empty(),
            "subscriber {n} got messages of channels it never subscribed: {got:?}"
        );
    }

    // Nothing extra is queued: a final marker per channel is the next message everywhere.
    let mut marker = Client::connect_on_shard(&server, 0)?;
    for ch in 0..CHANNELS {
        marker.send_json(
            &json!({"action": "publish", "channel": channel(ch), "data": "end", "ref": ch}),
        )?;
        marker.expect_event("ack")?;
    }
    for (n, (sub, mine)) in subs.iter_mut().enumerate() {
        for _ in 0..mine.len() {
            let ev = sub.recv_event(TIMEOUT)?;
            assert_eq!(
                ev["data"], "end",
                "subscriber {n}: extra message after the expected ones: {ev}"
            );
        }
    }
    Ok(())
}

/// A burst of publishes in one write (its messages reach subscribers as delivery runs,
/// several joined into one buffer): subscribers on both shards get every message once,
/// in seq order, with its own data; the publisher gets every ack in order.
#[test]
fn a_burst_written_at_once_arrives_whole_and_in_order_on_both_shards() -> Result<()> {
    const BURST: u64 = 200;
    let server = Server::start(&[])?;
    let mut near = Client::connect_on_shard(&server, 0)?;
    let mut far = Client::connect_on_shard(&server, 1)?;
    let mut publisher = Client::connect_on_shard(&server, 0)?;
    near.subscribe("burst:e2e")?;
    far.subscribe("burst:e2e")?;
    let mut bytes = Vec::new();
    for n in 1..=BURST {
        let text =
            format!(r#"{{"action":"publish","channel":"burst:e2e","data":{{"n":{n}}},"ref":{n}}}"#);
        bytes.extend(masked_frame(true, 0x1, text.as_bytes()));
    }
    publisher.send_frame_raw(&bytes)?;
    for (name, conn) in [("near", &mut near), ("far", &mut far)] {
        for n in 1..=BURST {
            let ev = conn.expect_event("realtime.message")?;
            assert_eq!(ev["seq"], n, "{name}: {ev}");
            assert_eq!(ev["data"]["n"], n, "{name}: {ev}");
        }
    }
    for n in 1..=BURST {
        let ack = publisher.expect_event("ack")?;
        assert_eq!(
            (ack["ref"].as_u64(), ack["seq"].as_u64()),
            (Some(n), Some(n))
        );
    }
    Ok(())
}

/// A storm of connects: connections that wait in the listeners' backlogs together are
/// each served (a shard takes its backlog without an io_uring accept per connection), and
/// each holds its admission slot exactly until it closes.
#[test]
fn connections_queued_together_are_all_served_and_counted() -> Result<()> {
    const N: usize = 300;
    let server = Server::start(&["--shards", "2"])?;
    let accepted_before = server
        .metric("ringcast_connections_accepted_total")?
        .context("ringcast_connections_accepted_total")?;
    // Every TCP connect first: the kernel queues them before any handshake is sent.
    let streams = (0..N)
        .map(|_| std::net::TcpStream::connect(server.addr()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut clients = Vec::with_capacity(N);
    let mut per_shard = BTreeMap::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let (mut c, shard) = Client::handshake(stream, server.addr(), &format!("cid=storm{i}"))
            .map_err(|e| anyhow::anyhow!("connection {i}: {e}"))?;
        assert_eq!(c.expect_connected()?, format!("storm{i}"));
        *per_shard.entry(shard).or_insert(0) += 1;
        clients.push(c);
    }
    assert_eq!(per_shard.values().sum::<usize>(), N, "{per_shard:?}");
    // Each scrape is a connection of its own: this one counts as accepted too.
    let metrics = server.metrics()?;
    let accepted = ringcast_tests::metric_value(&metrics, "ringcast_connections_accepted_total");
    assert_eq!(accepted, Some(accepted_before + N as f64 + 1.0));
    let open_ws = ringcast_tests::series_value(&metrics, "ringcast_connections{transport=\"ws\"}");
    assert_eq!(open_ws, Some(N as f64));

    // Every connection still works: one publish reaches all of them.
    for c in &mut clients {
        c.subscribe("storm")?;
    }
    clients[0].send_json(&json!({"action": "publish", "channel": "storm", "data": 1, "ref": 1}))?;
    for (i, c) in clients.iter_mut().enumerate() {
        let ev = c.expect_event("realtime.message")?;
        assert_eq!(ev["data"], 1, "connection {i}: {ev}");
    }

    for c in clients {
        c.close_quietly();
    }
    // The gauge counts the slots back down as the shards see the closes (bounded wait).
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let open = ringcast_tests::series_value(
            &server.metrics()?,
            "ringcast_connections{transport=\"ws\"}",
        );
        if open == Some(0.0) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "ringcast_connections still {open:?} after every client closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A burst written one piece at a time to a channel with many subscribers on the
/// publisher's shard: the session takes what arrives while it handles the burst's start
/// (so the burst reaches each subscriber in one send), and nothing is lost, duplicated
/// or reordered, even when a piece ends in the middle of a frame.
#[test]
fn a_burst_trickling_in_reaches_many_subscribers_whole_and_in_order() -> Result<()> {
    const SUBSCRIBERS: usize = 80; // past the session's top-up threshold (64)
    const MESSAGES: usize = 60;
    let server = Server::start(&["--shards", "1"])?;
    let mut subscribers = (0..SUBSCRIBERS)
        .map(|_| {
            let mut c = Client::open(&server, "")?;
            c.subscribe("trickle")?;
            Ok(c)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut publisher = Client::open(&server, "")?;
    let mut bytes = Vec::new();
    for i in 0..MESSAGES {
        let text = json!({"action": "publish", "channel": "trickle", "data": i, "ref": i});
        bytes.extend(masked_frame(true, 0x1, text.to_string().as_bytes()));
    }
    // Pieces of 37 bytes, each its own write (TCP_NODELAY): most frames are split, and
    // the server reads the burst while it is still arriving.
    for piece in bytes.chunks(37) {
        publisher.send_frame_raw(piece)?;
    }
    for i in 0..MESSAGES {
        let ack = publisher.expect_event("ack")?;
        assert_eq!(ack["ref"], i, "ack {i}: {ack}");
    }
    for (s, c) in subscribers.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            let ev = c.expect_event("realtime.message")?;
            assert_eq!(ev["data"], i, "subscriber {s}, message {i}: {ev}");
        }
    }
    Ok(())
}
