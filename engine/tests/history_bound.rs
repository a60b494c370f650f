//! `[history] max_total_bytes` on real shards with a fake clock: open channels' rings
//! are never evicted; at the bound a new channel's publish, or one its channel's ring
//! cannot grow for, is refused with `overloaded` and nothing else changes; once channels
//! close, their rings make room (least recently written first) and an evicted channel
//! comes back as a new epoch.

mod support;

use support::{take, Cluster};

/// Room for exactly this many smallest (512-byte) rings on the one shard.
const RINGS: u64 = 8;

fn publish(
    cluster: &mut Cluster,
    conn: &std::rc::Rc<ringcast_engine::conn::Conn>,
    channel: &str,
) -> serde_json::Value {
    let frame = format!(r#"{{"action":"publish","channel":"{channel}","data":1,"ref":1}}"#);
    cluster.send(0, conn, &frame);
    cluster.pump();
    let mut events = take(conn);
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

fn state(
    cluster: &mut Cluster,
    conn: &std::rc::Rc<ringcast_engine::conn::Conn>,
    channel: &str,
) -> serde_json::Value {
    cluster.send(
        0,
        conn,
        &format!(r#"{{"action":"subscribe","channel":"{channel}"}}"#),
    );
    cluster.pump();
    let subscribed = take(conn).remove(0);
    cluster.send(
        0,
        conn,
        &format!(r#"{{"action":"unsubscribe","channel":"{channel}"}}"#),
    );
    cluster.pump();
    take(conn);
    subscribed
}

#[test]
fn the_node_bound_evicts_only_closed_channels_and_refuses_cleanly_when_none_is() {
    let mut cluster = Cluster::with(1, |config| {
        config.history.max_total_bytes = Some(RINGS * 512);
    });
    let conn = cluster.connect(0);
    for i in 0..RINGS {
        let ack = publish(&mut cluster, &conn, &format!("full:{i}"));
        assert_eq!(
            (ack["event"].as_str(), ack["seq"].as_u64()),
            (Some("ack"), Some(1)),
            "{ack}"
        );
    }
    let epoch_of_0 = state(&mut cluster, &conn, "full:0")["epoch"].clone();

    // Every ring belongs to an open channel: nothing may be evicted.
    let refused = publish(&mut cluster, &conn, "full:new");
    assert_eq!(refused["event"], "error", "{refused}");
    assert_eq!(refused["data"]["code"], "overloaded", "{refused}");
    for i in 0..RINGS {
        let s = state(&mut cluster, &conn, &format!("full:{i}"));
        assert_eq!(s["seq"], 1, "full:{i} kept its message: {s}");
    }
    let s = state(&mut cluster, &conn, "full:new");
    assert_eq!(s["seq"], 0, "the refused publish left nothing: {s}");
    let ack = publish(&mut cluster, &conn, "full:3");
    assert_eq!(ack["seq"], 2, "existing channels still publish: {ack}");

    // Past the idle-channel time every channel closes; a new ring then evicts the least
    // recently written one (full:0), and full:3, written last, keeps its history.
    cluster.advance(61_000);
    cluster.advance(1_000);
    let ack = publish(&mut cluster, &conn, "full:new");
    assert_eq!(
        (ack["event"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    // full:0 was evicted: its message is gone, and its numbering stands in its epoch
    // (the store's tombstone), so a client's old position shows the gap.
    let s = state(&mut cluster, &conn, "full:0");
    assert_eq!(
        (&s["seq"], &s["epoch"]),
        (&serde_json::json!(1), &epoch_of_0),
        "{s}"
    );
    let s = state(&mut cluster, &conn, "full:3");
    assert_eq!(s["seq"], 2, "{s}");
}

/// At the bound, with every ring an open channel's, a message larger than a channel's
/// ring as it is (the ring cannot grow) is refused with `overloaded`: not acked, and the
/// channel keeps its messages and its next seq (found in review: it was acked, not kept,
/// and the channel's history was emptied).
#[test]
fn at_the_bound_a_message_its_ring_cannot_grow_for_is_refused_and_the_history_stays() {
    let mut cluster = Cluster::with(1, |config| {
        config.history.max_total_bytes = Some(RINGS * 512);
    });
    let conn = cluster.connect(0);
    for i in 0..RINGS {
        assert_eq!(publish(&mut cluster, &conn, &format!("full:{i}"))["seq"], 1);
    }
    let big = format!(
        r#"{{"action":"publish","channel":"full:3","data":"{}","ref":9}}"#,
        "z".repeat(600)
    );
    cluster.send(0, &conn, &big);
    cluster.pump();
    let events = take(&conn);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error", "{events:?}");
    assert_eq!(events[0]["ref"], 9);
    assert_eq!(events[0]["data"]["code"], "overloaded", "{events:?}");

    assert_eq!(publish(&mut cluster, &conn, "full:3")["seq"], 2);
    cluster.send(
        0,
        &conn,
        r#"{"action":"subscribe","channel":"full:3","lastEventId":0}"#,
    );
    cluster.pump();
    let events = take(&conn);
    assert_eq!(support::seqs(&events), vec![1, 2]);
    assert_eq!(events.last().unwrap()["recovered"], true, "{events:?}");
}

/// A message larger than a channel's history can ever keep (`max_bytes_per_channel`) is
/// refused with `message_too_large` before it gets a seq: acked, delivered but not kept,
/// it used to empty the channel's history (found in review: at the enterprise plan's
/// 1 MiB limit on the default settings). The channel's kept messages stay, and the next
/// publish gets the next seq. A `userId` too long to keep is a `bad_request`.
#[test]
fn a_message_history_cannot_keep_is_refused_and_the_history_stays() {
    let mut cluster = Cluster::with(1, |config| {
        config.history.max_bytes_per_channel = 8 * 1024;
    });
    let conn = cluster.connect(0);
    for seq in 1..=3 {
        assert_eq!(publish(&mut cluster, &conn, "keep")["seq"], seq);
    }
    let big = format!(
        r#"{{"action":"publish","channel":"keep","data":"{}","ref":9}}"#,
        "z".repeat(9_000)
    );
    cluster.send(0, &conn, &big);
    cluster.pump();
    let events = take(&conn);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["ref"], 9);
    assert_eq!(events[0]["data"]["code"], "message_too_large");
    let long_user = format!(
        r#"{{"action":"publish","channel":"keep","data":1,"userId":"{}","ref":8}}"#,
        "u".repeat(70_000)
    );
    cluster.send(0, &conn, &long_user);
    cluster.pump();
    let events = take(&conn);
    assert_eq!(events[0]["data"]["code"], "bad_request", "{events:?}");

    assert_eq!(publish(&mut cluster, &conn, "keep")["seq"], 4);
    cluster.send(
        0,
        &conn,
        r#"{"action":"subscribe","channel":"keep","lastEventId":0}"#,
    );
    cluster.pump();
    let events = take(&conn);
    assert_eq!(support::seqs(&events), vec![1, 2, 3, 4]);
    assert_eq!(events.last().unwrap()["recovered"], true);
}

/// A message too large for any ring, sent to a channel with no history yet, is refused
/// with `message_too_large` before a ring is made for it: the ring it made evicted a
/// closed channel's history under the node bound, and at a bound full of open channels
/// the client got `overloaded` instead (found in review).
#[test]
fn a_message_too_large_for_a_new_channel_makes_no_ring() {
    let mut cluster = Cluster::with(1, |config| {
        config.history.max_bytes_per_channel = 8 * 1024;
        config.history.max_total_bytes = Some(RINGS * 512);
    });
    let conn = cluster.connect(0);
    for i in 0..RINGS {
        assert_eq!(publish(&mut cluster, &conn, &format!("full:{i}"))["seq"], 1);
    }
    let big = |channel: &str| {
        format!(
            r#"{{"action":"publish","channel":"{channel}","data":"{}","ref":9}}"#,
            "z".repeat(9_000)
        )
    };
    // Every ring's channel is open: the refusal is for the message, not for room.
    cluster.send(0, &conn, &big("huge:a"));
    cluster.pump();
    let events = take(&conn);
    assert_eq!(events[0]["data"]["code"], "message_too_large", "{events:?}");
    // Closed channels: nothing is evicted for a message that cannot be kept.
    cluster.advance(61_000);
    cluster.send(0, &conn, &big("huge:b"));
    cluster.pump();
    let events = take(&conn);
    assert_eq!(events[0]["data"]["code"], "message_too_large", "{events:?}");
    for i in 0..RINGS {
        let s = state(&mut cluster, &conn, &format!("full:{i}"));
        assert_eq!(s["seq"], 1, "full:{i} kept its history: {s}");
    }
    // A userId too long to keep is still a bad request, on a new channel too.
    let long_user = format!(
        r#"{{"action":"publish","channel":"huge:c","data":1,"userId":"{}","ref":8}}"#,
        "u".repeat(70_000)
    );
    cluster.send(0, &conn, &long_user);
    cluster.pump();
    let events = take(&conn);
    assert_eq!(events[0]["data"]["code"], "bad_request", "{events:?}");
}
