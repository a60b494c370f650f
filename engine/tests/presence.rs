//! Presence (SPEC §4) on shards driven message by message with a fake clock.

mod support;

use std::rc::Rc;

use bytes::Bytes;
use ringcast_engine::conn::Conn;
use ringcast_engine::mesh::{Answer, Question};
use ringcast_engine::presence::PresenceHolder;
use ringcast_protocol::event::PresenceSpelling;
use serde_json::Value;
use support::{key, poll_answer, take, Cluster};

const TTL_MS: u64 = 30_000;
/// The TTL plus the one-tick grace (`presence::EXPIRY_GRACE_MS`).
const EXPIRES_AFTER_MS: u64 = TTL_MS + 1_000;

fn subscribe(cluster: &mut Cluster, shard: usize, conn: &Rc<Conn>, channel: &str) {
    cluster.send(
        shard,
        conn,
        &format!(r#"{{"action":"subscribe","channel":"{channel}"}}"#),
    );
    cluster.pump();
    let events = take(conn);
    assert_eq!(events.last().unwrap()["event"], "subscribed", "{events:?}");
}

fn join(cluster: &mut Cluster, shard: usize, conn: &Rc<Conn>, channel: &str, user: &str) {
    let frame = format!(
        r#"{{"action":"presence:join","channel":"{channel}","userId":"{user}","metadata":{{"name":"{user}"}}}}"#
    );
    cluster.send(shard, conn, &frame);
    cluster.pump();
}

fn leave(cluster: &mut Cluster, shard: usize, conn: &Rc<Conn>, channel: &str) {
    let frame = format!(r#"{{"action":"presence:leave","channel":"{channel}"}}"#);
    cluster.send(shard, conn, &frame);
    cluster.pump();
}

/// Moves time by `ms` in one-second ticks, letting messages flow after each.
fn run_for(cluster: &mut Cluster, ms: u64) {
    for _ in 0..ms / 1_000 {
        cluster.advance(1_000);
        cluster.pump();
    }
}

/// `(event, userId)` of the presence events in `events`.
fn presence_events(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"].as_str().unwrap_or("").starts_with("presence"))
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["userId"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(event: &str, user: &str) -> (String, String) {
    (event.to_owned(), user.to_owned())
}

fn members(cluster: &mut Cluster, asker: usize, channel: &str) -> Vec<(String, u64)> {
    let question = Question::PresenceMembers { key: key(channel) };
    let mut rx = cluster.shards[asker].ask(&key(channel), question, 1_000);
    cluster.pump();
    match poll_answer(&mut rx) {
        Some(Ok(Answer::PresenceMembers { members })) => members
            .into_iter()
            .map(|m| (m.user_id, m.last_seen_secs))
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn ask(cluster: &mut Cluster, asker: usize, channel: &str, question: Question) -> Answer {
    let mut rx = cluster.shards[asker].ask(&key(channel), question, 1_000);
    cluster.pump();
    match poll_answer(&mut rx) {
        Some(Ok(answer)) => answer,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_member_on_another_shard_joins_and_expires_after_the_ttl() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "room:");
    let (watcher0, watcher1, alice) = (cluster.connect(0), cluster.connect(1), cluster.connect(0));
    subscribe(&mut cluster, 0, &watcher0, &channel);
    subscribe(&mut cluster, 1, &watcher1, &channel);
    join(&mut cluster, 0, &alice, &channel, "alice");
    assert!(take(&alice).is_empty(), "a join is answered with nothing");

    let frames0 = watcher0.outbound().take_queued();
    let frames1 = watcher1.outbound().take_queued();
    assert_eq!((frames0.len(), frames1.len()), (1, 1));
    assert_eq!(
        frames0[0].as_ptr(),
        frames1[0].as_ptr(),
        "one encoding shared by subscribers on both shards"
    );
    let joined = support::decode_server_frame(&frames0[0]);
    assert_eq!(joined["event"], "presence:join");
    assert_eq!(joined["channel"], channel.as_str());
    assert_eq!(joined["userId"], "alice");
    assert_eq!(joined["metadata"]["name"], "alice");

    // Silent for the whole TTL: still a member; one tick after the grace: gone.
    run_for(&mut cluster, TTL_MS);
    assert!(presence_events(&take(&watcher0)).is_empty());
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
    run_for(&mut cluster, EXPIRES_AFTER_MS - TTL_MS);
    for watcher in [&watcher0, &watcher1] {
        assert_eq!(
            presence_events(&take(watcher)),
            vec![pair("presence:leave", "alice")]
        );
    }
    assert!(members(&mut cluster, 1, &channel).is_empty());
    assert_eq!(cluster.shards[1].presence().channel_count(), 0);
}

#[test]
fn pings_and_frames_from_the_joining_connection_refresh_it() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "ping:");
    let (watcher, alice) = (cluster.connect(1), cluster.connect(0));
    subscribe(&mut cluster, 1, &watcher, &channel);
    join(&mut cluster, 0, &alice, &channel, "alice");
    let joined_at = cluster.clock.now().0 / 1000;
    take(&watcher);
    // Three TTLs: a ping every 25 s (the SDK's interval), or any other frame.
    for round in 0..4 {
        run_for(&mut cluster, 25_000);
        let frame = if round % 2 == 0 {
            r#"{"action":"ping"}"#.to_owned()
        } else {
            format!(r#"{{"action":"publish","channel":"other","data":{round}}}"#)
        };
        cluster.send(0, &alice, &frame);
        cluster.pump();
    }
    run_for(&mut cluster, 2_000);
    assert!(presence_events(&take(&watcher)).is_empty(), "never expired");
    let listed = members(&mut cluster, 0, &channel);
    assert_eq!(listed.len(), 1);
    assert!(listed[0].1 >= joined_at + 100, "lastSeen moved: {listed:?}");
    // Silence again: expired one TTL (plus grace) after the last frame.
    run_for(&mut cluster, EXPIRES_AFTER_MS);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:leave", "alice")]
    );
}

#[test]
fn a_websocket_ping_frame_refreshes_too() {
    let mut cluster = Cluster::new(1);
    let channel = "wsping";
    let (watcher, alice) = (cluster.connect(0), cluster.connect(0));
    subscribe(&mut cluster, 0, &watcher, channel);
    join(&mut cluster, 0, &alice, channel, "alice");
    take(&watcher);
    for _ in 0..3 {
        run_for(&mut cluster, 20_000);
        cluster.shards[0].on_ws_ping(&alice);
    }
    run_for(&mut cluster, 2_000);
    assert!(presence_events(&take(&watcher)).is_empty());
}

#[test]
fn two_connections_of_one_user_count_once() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(0, "two:");
    let watcher = cluster.connect(1);
    let (tab1, tab2) = (cluster.connect(0), cluster.connect(1));
    subscribe(&mut cluster, 1, &watcher, &channel);
    join(&mut cluster, 0, &tab1, &channel, "alice");
    join(&mut cluster, 1, &tab2, &channel, "alice");
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:join", "alice")],
        "the second connection does not re-announce"
    );
    assert_eq!(members(&mut cluster, 1, &channel).len(), 1);
    leave(&mut cluster, 0, &tab1, &channel);
    assert!(
        presence_events(&take(&watcher)).is_empty(),
        "tab2 still holds"
    );
    leave(&mut cluster, 1, &tab2, &channel);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:leave", "alice")]
    );
    assert!(members(&mut cluster, 1, &channel).is_empty());
}

#[test]
fn a_reconnect_within_the_ttl_gives_no_leave_and_a_drop_one_leave_after_it() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "re:");
    let watcher = cluster.connect(1);
    subscribe(&mut cluster, 1, &watcher, &channel);
    let first = cluster.connect(0);
    join(&mut cluster, 0, &first, &channel, "alice");
    take(&watcher);

    // The connection drops without a leave; the client reconnects 10 s later, on the
    // other shard, and rejoins (what the SDK does on reconnect).
    cluster.shards[0].unregister_conn(&first, None);
    cluster.pump();
    run_for(&mut cluster, 10_000);
    assert_eq!(
        members(&mut cluster, 0, &channel).len(),
        1,
        "kept while dropped"
    );
    let second = cluster.connect(1);
    join(&mut cluster, 1, &second, &channel, "alice");
    // Past the first connection's TTL, the second keeps pinging.
    for _ in 0..3 {
        run_for(&mut cluster, 20_000);
        cluster.send(1, &second, r#"{"action":"ping"}"#);
        cluster.pump();
    }
    assert!(
        presence_events(&take(&watcher)).is_empty(),
        "no leave/join flicker"
    );

    // Now it drops for good: exactly one leave, one TTL after it was last seen.
    cluster.shards[1].unregister_conn(&second, None);
    cluster.pump();
    run_for(&mut cluster, TTL_MS - 1_000);
    assert!(presence_events(&take(&watcher)).is_empty());
    run_for(&mut cluster, 10_000);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:leave", "alice")]
    );
    assert!(members(&mut cluster, 0, &channel).is_empty());
}

#[test]
fn members_listing_drops_expired_members_even_before_the_tick() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "list:");
    let watcher = cluster.connect(0);
    subscribe(&mut cluster, 0, &watcher, &channel);
    let (alice, bob) = (cluster.connect(0), cluster.connect(1));
    join(&mut cluster, 0, &alice, &channel, "alice");
    run_for(&mut cluster, 10_000);
    join(&mut cluster, 1, &bob, &channel, "bob");
    let now_secs = cluster.clock.now().0 / 1000;
    let listed = members(&mut cluster, 0, &channel);
    assert_eq!(
        listed,
        vec![
            ("alice".to_owned(), now_secs - 10),
            ("bob".to_owned(), now_secs)
        ]
    );
    take(&watcher);
    // Time passes without any tick: the listing itself expires alice.
    cluster.clock.advance(EXPIRES_AFTER_MS - 10_000);
    let listed = members(&mut cluster, 0, &channel);
    assert_eq!(
        listed.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        vec!["bob"]
    );
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:leave", "alice")]
    );
}

#[test]
fn update_replaces_metadata_without_a_leave_or_join() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "upd:");
    let (watcher, alice) = (cluster.connect(0), cluster.connect(0));
    subscribe(&mut cluster, 0, &watcher, &channel);
    join(&mut cluster, 0, &alice, &channel, "alice");
    take(&watcher);
    let update = format!(
        r#"{{"action":"presence:update","channel":"{channel}","userId":"alice","metadata":{{"status":"away"}}}}"#
    );
    cluster.send(0, &alice, &update);
    cluster.pump();
    let events = take(&watcher);
    assert_eq!(
        presence_events(&events),
        vec![pair("presence:update", "alice")]
    );
    assert_eq!(events[0]["metadata"]["status"], "away");
    assert!(take(&alice).is_empty());

    // Updating a channel it did not join, or as another user, is refused locally.
    let stranger = cluster.connect(0);
    cluster.send(0, &stranger, &update);
    let errors = take(&stranger);
    assert_eq!(errors[0]["data"]["code"], "bad_request");
}

#[test]
fn dotted_spelling_per_connection_and_each_spelling_encoded_once() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(0, "dot:");
    let colon = [cluster.connect(0), cluster.connect(1)];
    let dot = [
        cluster.connect_spelled(0, PresenceSpelling::Dot),
        cluster.connect_spelled(1, PresenceSpelling::Dot),
    ];
    for (shard, conn) in [(0, &colon[0]), (1, &colon[1]), (0, &dot[0]), (1, &dot[1])] {
        subscribe(&mut cluster, shard, conn, &channel);
    }
    let alice = cluster.connect(1);
    join(&mut cluster, 1, &alice, &channel, "alice");
    let frames = |conns: &[Rc<Conn>; 2]| -> Vec<Bytes> {
        conns
            .iter()
            .flat_map(|c| c.outbound().take_queued())
            .collect()
    };
    let (colon_frames, dot_frames) = (frames(&colon), frames(&dot));
    assert_eq!(colon_frames[0].as_ptr(), colon_frames[1].as_ptr());
    assert_eq!(dot_frames[0].as_ptr(), dot_frames[1].as_ptr());
    assert_eq!(
        support::decode_server_frame(&colon_frames[0])["event"],
        "presence:join"
    );
    assert_eq!(
        support::decode_server_frame(&dot_frames[0])["event"],
        "presence.join"
    );
}

#[test]
fn limits_answer_presence_limit_and_change_nothing() {
    let mut cluster = Cluster::with(2, |config| {
        let dev = config.tenants.iter_mut().find(|t| t.id == "dev").unwrap();
        dev.max_presence_members = Some(1);
        dev.max_presence_metadata_bytes = Some(16);
        dev.max_presence_channels_per_connection = Some(1);
    });
    let channel = cluster.channel_owned_by(1, "lim:");
    let watcher = cluster.connect(0);
    subscribe(&mut cluster, 0, &watcher, &channel);
    let (alice, bob) = (cluster.connect(0), cluster.connect(0));
    join(&mut cluster, 0, &alice, &channel, "alice");
    take(&watcher);

    join(&mut cluster, 0, &bob, &channel, "bob");
    let refused = take(&bob);
    assert_eq!(refused[0]["data"]["code"], "presence_limit", "{refused:?}");
    assert!(
        bob.presence.borrow().is_empty(),
        "the refused join is forgotten"
    );

    let big = format!(
        r#"{{"action":"presence:join","channel":"{channel}","userId":"alice","metadata":"{}"}}"#,
        "x".repeat(32)
    );
    cluster.send(0, &alice, &big);
    cluster.pump();
    assert_eq!(take(&alice)[0]["data"]["code"], "presence_limit");

    join(&mut cluster, 0, &alice, "elsewhere", "alice");
    assert_eq!(take(&alice)[0]["data"]["code"], "presence_limit");

    assert!(presence_events(&take(&watcher)).is_empty());
    let listed = members(&mut cluster, 0, &channel);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "alice");
}

#[test]
fn private_channels_refuse_presence_until_tokens_exist() {
    let mut cluster = Cluster::new(1);
    let alice = cluster.connect(0);
    join(&mut cluster, 0, &alice, "private-room", "alice");
    let events = take(&alice);
    assert_eq!(events[0]["data"]["code"], "unauthorized");
    assert!(alice.presence.borrow().is_empty());
}

#[test]
fn the_engine_functions_behind_the_http_routes() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "http:");
    let watcher = cluster.connect(0);
    subscribe(&mut cluster, 0, &watcher, &channel);
    let join = |metadata: &'static [u8]| Question::PresenceJoin {
        key: key(&channel),
        user_id: "server-bob".into(),
        metadata: Some(Bytes::from_static(metadata)),
        holder: PresenceHolder::Http,
    };
    assert_eq!(
        ask(&mut cluster, 0, &channel, join(b"{\"a\":1}")),
        Answer::PresenceJoined { is_new: true }
    );
    assert_eq!(
        ask(&mut cluster, 0, &channel, join(b"{\"a\":1}")),
        Answer::PresenceJoined { is_new: false }
    );
    let update = |user: &str| Question::PresenceUpdate {
        key: key(&channel),
        user_id: user.into(),
        metadata: Some(Bytes::from_static(b"{\"a\":2}")),
        holder: PresenceHolder::Http,
    };
    assert_eq!(
        ask(&mut cluster, 0, &channel, update("server-bob")),
        Answer::PresenceUpdated { updated: true }
    );
    assert_eq!(
        ask(&mut cluster, 0, &channel, update("nobody")),
        Answer::PresenceUpdated { updated: false }
    );
    // An HTTP join must be repeated within the TTL: 20 s later it is, 40 s later not.
    run_for(&mut cluster, 20_000);
    ask(&mut cluster, 0, &channel, join(b"{\"a\":2}"));
    run_for(&mut cluster, 20_000);
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
    let leave = || Question::PresenceLeave {
        key: key(&channel),
        user_id: "server-bob".into(),
        holder: PresenceHolder::Http,
    };
    assert_eq!(
        ask(&mut cluster, 0, &channel, leave()),
        Answer::PresenceLeft { was_present: true }
    );
    assert_eq!(
        ask(&mut cluster, 0, &channel, leave()),
        Answer::PresenceLeft { was_present: false }
    );
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![
            pair("presence:join", "server-bob"),
            pair("presence:update", "server-bob"),
            pair("presence:leave", "server-bob"),
        ]
    );
    ask(&mut cluster, 0, &channel, join(b"1"));
    run_for(&mut cluster, EXPIRES_AFTER_MS);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![
            pair("presence:join", "server-bob"),
            pair("presence:leave", "server-bob")
        ]
    );
}

#[test]
fn idle_channel_housekeeping_keeps_a_channel_with_members() {
    let mut cluster = Cluster::new(1);
    let (watcher, alice) = (cluster.connect(0), cluster.connect(0));
    subscribe(&mut cluster, 0, &watcher, "idle");
    cluster.send(0, &watcher, r#"{"action":"unsubscribe","channel":"idle"}"#);
    join(&mut cluster, 0, &alice, "idle", "alice");
    assert_eq!(cluster.shards[0].open_channel_count(), 1);
    for _ in 0..4 {
        run_for(&mut cluster, 20_000);
        cluster.send(0, &alice, r#"{"action":"ping"}"#);
    }
    assert_eq!(
        cluster.shards[0].open_channel_count(),
        1,
        "idle for 80 s but has a member"
    );
    leave(&mut cluster, 0, &alice, "idle");
    run_for(&mut cluster, 62_000);
    assert_eq!(cluster.shards[0].open_channel_count(), 0);
}

/// A member held both by a WebSocket connection and by the HTTP API: an HTTP leave
/// removes it outright (the seed's server `presence.leave` "removes a user"); the
/// connection may join again. A connection leaving while the HTTP hold is live keeps
/// the member; once the hold lapsed (no HTTP join within the TTL), it does not.
#[test]
fn http_and_websocket_holders_of_one_member() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "mixed:");
    let (watcher, tab) = (cluster.connect(0), cluster.connect(0));
    subscribe(&mut cluster, 0, &watcher, &channel);
    let http_join = || Question::PresenceJoin {
        key: key(&channel),
        user_id: "alice".into(),
        metadata: None,
        holder: PresenceHolder::Http,
    };
    let http_leave = || Question::PresenceLeave {
        key: key(&channel),
        user_id: "alice".into(),
        holder: PresenceHolder::Http,
    };

    join(&mut cluster, 0, &tab, &channel, "alice");
    assert_eq!(
        ask(&mut cluster, 0, &channel, http_join()),
        Answer::PresenceJoined { is_new: false },
        "already present through the connection"
    );
    assert_eq!(
        ask(&mut cluster, 1, &channel, http_leave()),
        Answer::PresenceLeft { was_present: true }
    );
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![
            pair("presence:join", "alice"),
            pair("presence:leave", "alice")
        ],
        "removed although the connection still held it"
    );
    assert!(members(&mut cluster, 0, &channel).is_empty());
    join(&mut cluster, 0, &tab, &channel, "alice");
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:join", "alice")],
        "the connection joins again"
    );

    // Held by both; the connection leaves while the HTTP join is fresh: still present.
    ask(&mut cluster, 0, &channel, http_join());
    leave(&mut cluster, 0, &tab, &channel);
    assert!(presence_events(&take(&watcher)).is_empty());
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
    // Not joined again over HTTP: expired one TTL after that join.
    run_for(&mut cluster, EXPIRES_AFTER_MS);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:leave", "alice")]
    );

    // The HTTP hold lapses while the connection keeps the member alive with pings;
    // when the connection leaves, nothing holds it: one leave, at once.
    ask(&mut cluster, 0, &channel, http_join());
    join(&mut cluster, 0, &tab, &channel, "alice");
    for _ in 0..2 {
        run_for(&mut cluster, 20_000);
        cluster.send(0, &tab, r#"{"action":"ping"}"#);
        cluster.pump();
    }
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![
            pair("presence:join", "alice"),
            pair("presence:update", "alice")
        ],
        "joined over HTTP without metadata; the connection's join brought some"
    );
    leave(&mut cluster, 0, &tab, &channel);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![pair("presence:leave", "alice")]
    );
    assert_eq!(
        ask(&mut cluster, 0, &channel, http_leave()),
        Answer::PresenceLeft { was_present: false }
    );
}

/// A join refused while a later join of the same channel and user is in flight, the
/// later one accepted: the connection keeps its hold, so its updates, pings and close
/// still reach the owner (found in review: the first refusal dropped the hold, and the
/// member expired with a `presence:leave` while its connection was still pinging).
#[test]
fn a_refusal_answered_after_a_later_accepted_join_keeps_the_hold() {
    let mut cluster = Cluster::with(2, |config| {
        config.tenants[0].max_presence_members = Some(1);
    });
    let channel = cluster.channel_owned_by(1, "pres:");
    let (a, b, watcher) = (cluster.connect(0), cluster.connect(0), cluster.connect(1));
    subscribe(&mut cluster, 1, &watcher, &channel);
    join(&mut cluster, 0, &a, &channel, "x");
    take(&watcher);
    // Sent in one turn: b's first join finds the channel full, a leaves, b's second
    // join gets in.
    let join_y = format!(r#"{{"action":"presence:join","channel":"{channel}","userId":"y"}}"#);
    cluster.send(0, &b, &join_y);
    let leave_x = format!(r#"{{"action":"presence:leave","channel":"{channel}"}}"#);
    cluster.send(0, &a, &leave_x);
    cluster.send(0, &b, &join_y);
    cluster.pump();
    let to_b = take(&b);
    assert_eq!(to_b.len(), 1, "one refusal: {to_b:?}");
    assert_eq!(to_b[0]["data"]["code"], "presence_limit");
    assert_eq!(
        presence_events(&take(&watcher)),
        [pair("presence:leave", "x"), pair("presence:join", "y")]
    );
    let name = ringcast_protocol::ChannelName::new(&channel).unwrap();
    assert_eq!(b.presence_user(&name).as_deref(), Some("y"));
    // b's update is accepted, and its pings keep y present past the TTL.
    let update = format!(
        r#"{{"action":"presence:update","channel":"{channel}","userId":"y","metadata":1}}"#
    );
    cluster.send(0, &b, &update);
    cluster.pump();
    assert!(take(&b).iter().all(|e| e["event"] != "error"));
    for _ in 0..40 {
        cluster.send(0, &b, r#"{"action":"ping"}"#);
        run_for(&mut cluster, 1_000);
    }
    let events = presence_events(&take(&watcher));
    assert!(
        !events.iter().any(|(event, _)| event.ends_with("leave")),
        "{events:?}"
    );
}

/// A resume (`lastEventId`) while subscribed keeps presence events flowing to the
/// connection while the owner answers (found in review of a change that paused live
/// delivery for the resume, and with it these).
#[test]
fn a_presence_join_during_a_resume_reaches_the_resuming_subscriber() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "pres:");
    let (sub, member) = (cluster.connect(0), cluster.connect(1));
    subscribe(&mut cluster, 0, &sub, &channel);
    let resume = format!(r#"{{"action":"subscribe","channel":"{channel}","lastEventId":0}}"#);
    cluster.send(0, &sub, &resume);
    let frame = format!(r#"{{"action":"presence:join","channel":"{channel}","userId":"m"}}"#);
    cluster.send(1, &member, &frame);
    cluster.pump();
    let events = take(&sub);
    assert_eq!(
        presence_events(&events),
        [pair("presence:join", "m")],
        "{events:?}"
    );
}

/// A join whose owner does not answer in time is an error to the client, so the
/// connection must not be left present: the late join is undone by a leave that follows
/// it (found in review: the hold stayed, and the member with it, while the connection
/// pinged). A later join works as usual.
#[test]
fn a_join_that_times_out_leaves_no_member_behind() {
    let mut cluster = Cluster::with(2, |config| config.request_timeout_ms = 500);
    let channel = cluster.channel_owned_by(1, "slow:");
    let watcher = cluster.connect(0);
    subscribe(&mut cluster, 0, &watcher, &channel);
    let alice = cluster.connect(0);
    let frame = format!(r#"{{"action":"presence:join","channel":"{channel}","userId":"alice"}}"#);
    cluster.send(0, &alice, &frame);
    cluster.advance(500);
    let events = take(&alice);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["code"], "overloaded");
    cluster.pump(); // the owner runs at last
    assert_eq!(members(&mut cluster, 0, &channel), vec![]);
    assert!(take(&alice).is_empty(), "no error for the undoing leave");
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![
            ("presence:join".to_owned(), "alice".to_owned()),
            ("presence:leave".to_owned(), "alice".to_owned()),
        ]
    );
    let leave = format!(r#"{{"action":"presence:leave","channel":"{channel}"}}"#);
    cluster.send(0, &alice, &leave);
    cluster.pump();
    assert_eq!(
        take(&alice)[0]["data"]["code"],
        "bad_request",
        "not present"
    );

    join(&mut cluster, 0, &alice, &channel, "alice");
    assert!(take(&alice).is_empty());
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
}

/// A re-join that times out does not undo a membership an earlier join made (found in
/// review of the fix above: the leave sent after it removed a member who was present).
#[test]
fn a_rejoin_that_times_out_keeps_the_member() {
    let mut cluster = Cluster::with(2, |config| config.request_timeout_ms = 500);
    let channel = cluster.channel_owned_by(1, "rejoin:");
    let watcher = cluster.connect(0);
    subscribe(&mut cluster, 0, &watcher, &channel);
    let alice = cluster.connect(0);
    join(&mut cluster, 0, &alice, &channel, "alice");
    assert!(take(&alice).is_empty());
    take(&watcher);
    // Again, with new metadata; the owner is late this time.
    let frame = format!(
        r#"{{"action":"presence:join","channel":"{channel}","userId":"alice","metadata":{{"v":2}}}}"#
    );
    cluster.send(0, &alice, &frame);
    cluster.advance(500);
    assert_eq!(take(&alice)[0]["data"]["code"], "overloaded");
    cluster.pump();
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
    let left: Vec<_> = presence_events(&take(&watcher))
        .into_iter()
        .filter(|(e, _)| e == "presence:leave")
        .collect();
    assert_eq!(left, vec![], "alice stays");
    let update = format!(
        r#"{{"action":"presence:update","channel":"{channel}","userId":"alice","metadata":{{"v":3}}}}"#
    );
    cluster.send(0, &alice, &update);
    cluster.pump();
    assert!(take(&alice).is_empty(), "still joined");
}

/// A member whose connection sends nothing but answers the server's pings stays present:
/// the server pings a connection holding presence within half the TTL, and the pong
/// counts as seen (found in review: a background browser tab throttles the SDK's 25 s
/// pings to about one a minute, and its member expired while the socket stayed open,
/// for good). Here the idle timeout is off, as in the harness: presence alone asks.
#[test]
fn a_member_that_only_answers_pings_stays_present() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "tab:");
    let watcher = cluster.connect(0);
    subscribe(&mut cluster, 0, &watcher, &channel);
    let tab = cluster.connect(0);
    join(&mut cluster, 0, &tab, &channel, "alice");
    take(&tab);
    take(&watcher);
    let mut pings = 0;
    for _ in 0..120 {
        cluster.advance(1_000);
        cluster.pump();
        for frame in take(&tab) {
            if frame.get("ping").is_some() {
                // The browser answers by itself; its session marks what it reads.
                pings += 1;
                tab.heard.set(true);
                cluster.shards[0].on_ws_ping(&tab);
            }
        }
    }
    assert!(pings >= 4, "{pings} pings in 120 s");
    let left: Vec<_> = presence_events(&take(&watcher))
        .into_iter()
        .filter(|(e, _)| e == "presence:leave")
        .collect();
    assert_eq!(left, vec![]);
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
}

/// The same with the shortest TTLs the config takes (1 and 2 s), joined mid-tick or
/// right after a housekeeping tick: the pings come often enough, and early enough, that
/// each pong reaches the owner before the member's deadline (found with the second soak,
/// `tests/tests/soak_http.rs`, run with a 1 s TTL: pings went out every other tick, a
/// tick after the quiet half-TTL was noticed, and a member answering every one expired
/// about two seconds after its join).
#[test]
fn a_member_that_only_answers_pings_stays_present_with_a_short_ttl() {
    for ttl in [1, 2] {
        for join_after_ms in [500, 1_001] {
            let mut cluster = Cluster::with(2, |config| {
                let dev = config.tenants.iter_mut().find(|t| t.id == "dev");
                dev.expect("a dev tenant").presence_ttl_secs = Some(ttl);
            });
            let channel = cluster.channel_owned_by(1, "tab:");
            let watcher = cluster.connect(0);
            subscribe(&mut cluster, 0, &watcher, &channel);
            let tab = cluster.connect(0);
            // (1,001 ms: just after the first housekeeping tick.)
            cluster.advance(join_after_ms);
            cluster.pump();
            join(&mut cluster, 0, &tab, &channel, "alice");
            take(&watcher);
            let mut pings = 0;
            for step in 0..200 {
                if step > 0 {
                    cluster.advance(100);
                    cluster.pump();
                }
                for frame in take(&tab) {
                    if frame.get("ping").is_some() {
                        pings += 1;
                        tab.heard.set(true);
                        cluster.shards[0].on_ws_ping(&tab);
                    }
                }
            }
            let what = format!("TTL {ttl} s, joined at {join_after_ms} ms");
            assert!(pings >= 10, "{what}: {pings} pings in 20 s");
            let left: Vec<_> = presence_events(&take(&watcher))
                .into_iter()
                .filter(|(e, _)| e == "presence:leave")
                .collect();
            assert_eq!(left, vec![], "{what}");
            assert_eq!(members(&mut cluster, 0, &channel).len(), 1, "{what}");
        }
    }
}

/// A WebSocket `presence:update` renews no HTTP hold: after it the connection's leave,
/// with the HTTP join long lapsed, removes the member at once (found in review: any
/// update renewed the HTTP hold, so the leave waited for one more TTL).
#[test]
fn a_websocket_update_renews_no_http_hold() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "upd:");
    let (watcher, tab) = (cluster.connect(0), cluster.connect(0));
    subscribe(&mut cluster, 0, &watcher, &channel);
    let http_join = Question::PresenceJoin {
        key: key(&channel),
        user_id: "alice".into(),
        metadata: None,
        holder: PresenceHolder::Http,
    };
    ask(&mut cluster, 0, &channel, http_join);
    join(&mut cluster, 0, &tab, &channel, "alice");
    for _ in 0..2 {
        run_for(&mut cluster, 20_000);
        cluster.send(0, &tab, r#"{"action":"ping"}"#);
        cluster.pump();
    }
    take(&watcher);
    let update = format!(
        r#"{{"action":"presence:update","channel":"{channel}","userId":"alice","metadata":{{"n":2}}}}"#
    );
    cluster.send(0, &tab, &update);
    cluster.pump();
    leave(&mut cluster, 0, &tab, &channel);
    assert_eq!(
        presence_events(&take(&watcher)),
        vec![
            pair("presence:update", "alice"),
            pair("presence:leave", "alice")
        ]
    );
}

/// A `userId` is 1 to 256 bytes: an empty or longer one is a bad request, over
/// WebSocket as over HTTP, and nobody joins (found in review: only the frame bound, 2 MiB
/// by default, bounded it, and every join went to every subscriber whole).
#[test]
fn a_presence_user_id_is_bounded() {
    let mut cluster = Cluster::new(2);
    let channel = cluster.channel_owned_by(1, "uid:");
    let conn = cluster.connect(0);
    for user in [String::new(), "u".repeat(257)] {
        join(&mut cluster, 0, &conn, &channel, &user);
        let events = take(&conn);
        assert_eq!(events[0]["data"]["code"], "bad_request", "{events:?}");
        assert!(conn.presence.borrow().is_empty());
    }
    join(&mut cluster, 0, &conn, &channel, &"u".repeat(256));
    assert!(take(&conn).is_empty(), "256 bytes is fine");
    assert_eq!(members(&mut cluster, 0, &channel).len(), 1);
}

/// A re-join refused because the channel is full leaves the connection holding nothing,
/// even when an earlier join of that user had been accepted: the member had expired (its
/// connection stayed quiet), so the owner no longer has it (found in review: the hold
/// stayed, and counted against the connection's channels).
#[test]
fn a_refused_rejoin_of_an_expired_member_drops_the_hold() {
    let mut cluster = Cluster::with(2, |config| {
        let dev = config.tenants.iter_mut().find(|t| t.id == "dev").unwrap();
        dev.max_presence_members = Some(1);
        config.idle_timeout_secs = 0;
    });
    let channel = cluster.channel_owned_by(1, "full:");
    let (alice, bob) = (cluster.connect(0), cluster.connect(0));
    join(&mut cluster, 0, &alice, &channel, "alice");
    assert_eq!(alice.presence.borrow().len(), 1);
    // Alice sends nothing and answers no ping: she expires.
    run_for(&mut cluster, EXPIRES_AFTER_MS + 1_000);
    take(&alice);
    assert!(members(&mut cluster, 0, &channel).is_empty());
    join(&mut cluster, 0, &bob, &channel, "bob");
    join(&mut cluster, 0, &alice, &channel, "alice");
    let events = take(&alice);
    assert_eq!(events[0]["data"]["code"], "presence_limit", "{events:?}");
    assert!(
        alice.presence.borrow().is_empty(),
        "the refused join holds nothing"
    );
}
