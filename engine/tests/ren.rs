//! REN (SPEC §7) on real shards driven message by message with the injected clock
//! (`support/mod.rs`): mirrors of channel publishes and presence changes, app events,
//! filters, the per-tenant sequence, resume and truncation, heartbeats, idle tenants,
//! slow streams.

mod support;

use std::rc::Rc;

use bytes::Bytes;
use ringcast_engine::keys::{tenant_owner, ShardId};
use ringcast_engine::mesh::{Answer, PublishExtras};
use ringcast_engine::outbound::ConnState;
use ringcast_engine::ren::stream::RenStream;
use ringcast_engine::ren::Resume;
use ringcast_protocol::api::ApiParser;
use ringcast_protocol::ren::RenFilter;
use ringcast_protocol::{CloseCode, TenantId};
use serde_json::Value;
use support::{poll_answer, take, Cluster};

/// One chunk a stream was sent.
#[derive(Debug, Clone, PartialEq)]
enum Chunk {
    Head,
    Opened,
    Ping,
    Event { id: u64, event: String, data: Value },
}

impl Chunk {
    fn id(&self) -> u64 {
        match self {
            Chunk::Event { id, .. } => *id,
            other => panic!("not an event: {other:?}"),
        }
    }

    fn event(&self) -> &str {
        match self {
            Chunk::Event { event, .. } => event,
            _ => "",
        }
    }

    fn data(&self) -> &Value {
        match self {
            Chunk::Event { data, .. } => data,
            other => panic!("not an event: {other:?}"),
        }
    }
}

fn parse(chunk: &[u8]) -> Chunk {
    match chunk {
        b"HEAD" => return Chunk::Head,
        b":ok\n\n" => return Chunk::Opened,
        b":ping\n\n" => return Chunk::Ping,
        _ => {}
    }
    let text = std::str::from_utf8(chunk).expect("UTF-8");
    assert!(text.ends_with("\n\n"), "{text:?}");
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    let [id, event, data] = lines[..] else {
        panic!("three lines expected: {text:?}")
    };
    Chunk::Event {
        id: id.strip_prefix("id: ").unwrap().parse().unwrap(),
        event: event.strip_prefix("event: ").unwrap().to_owned(),
        data: serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
    }
}

/// Every chunk queued for `stream` since the last call.
fn chunks(stream: &RenStream) -> Vec<Chunk> {
    stream
        .outbound()
        .take_queued()
        .iter()
        .map(|c| parse(c))
        .collect()
}

/// Only the events (no head, no comments).
fn events(stream: &RenStream) -> Vec<Chunk> {
    chunks(stream)
        .into_iter()
        .filter(|c| matches!(c, Chunk::Event { .. }))
        .collect()
}

fn open(cluster: &mut Cluster, shard: usize, s: &str, resume: Resume) -> Rc<RenStream> {
    let tenant = cluster.shared.tenants.load().resolve(None).expect("dev");
    let filter = RenFilter::parse(Some(s)).expect("filter");
    let stream = cluster.shards[shard].ren_open(tenant, filter, "cid", resume, b"HEAD".to_vec());
    cluster.pump();
    stream
}

/// Opens a stream and checks its first chunks: head, `:ok`.
fn open_live(cluster: &mut Cluster, shard: usize, s: &str) -> Rc<RenStream> {
    let stream = open(cluster, shard, s, Resume::Fresh);
    assert_eq!(chunks(&stream), vec![Chunk::Head, Chunk::Opened]);
    stream
}

/// `POST /api/ren/events` with `body`, through `shard`; returns `accepted`.
fn ingest(cluster: &mut Cluster, shard: usize, body: &str) -> usize {
    let now = cluster.clock.now().0;
    let events = ApiParser::new()
        .ren_events(body.as_bytes(), now, Some("header-cid"), 1 << 20)
        .expect("valid events");
    let mut rx = cluster.shards[shard].ren_ingest_for_task(TenantId::new("dev"), events, 1_000);
    cluster.pump();
    match poll_answer(&mut rx) {
        Some(Ok(Answer::RenAccepted { accepted })) => accepted,
        other => panic!("{other:?}"),
    }
}

fn publish(cluster: &mut Cluster, shard: usize, channel: &str, data: &str) {
    let conn = cluster.connect(shard);
    let frame =
        format!(r#"{{"action":"publish","channel":"{channel}","data":{data},"userId":"alice"}}"#);
    cluster.send(shard, &conn, &frame);
    cluster.pump();
}

fn ids(chunks: &[Chunk]) -> Vec<u64> {
    chunks.iter().map(Chunk::id).collect()
}

/// Ticks the injected clock one housekeeping second at a time.
fn run_for(cluster: &mut Cluster, ms: u64) {
    for _ in 0..ms / 1_000 {
        cluster.advance(1_000);
        cluster.pump();
    }
}

#[test]
fn publishes_presence_and_app_events_reach_every_stream_whose_filter_takes_them() {
    let mut cluster = Cluster::new(2);
    let all = open_live(&mut cluster, 0, "*");
    let realtime = open_live(&mut cluster, 1, "realtime");
    let kv_presence = open_live(&mut cluster, 1, "kv,presence");

    // A WebSocket publish on a channel owned by shard 1, from a connection on shard 0.
    let channel = cluster.channel_owned_by(1, "room:");
    publish(&mut cluster, 0, &channel, r#"{"text":"hi","n":1.50}"#);
    // An HTTP publish on a channel owned by shard 0, asked from shard 1, from the browser
    // session `tab-7` (its `X-Ren-Client`).
    let other = cluster.channel_owned_by(0, "http:");
    let data = Bytes::from_static(b"[1,2]");
    let http = PublishExtras {
        src: Some(Box::from("tab-7")),
        ..PublishExtras::default()
    };
    let key = support::key(&other);
    let mut rx = cluster.shards[1].publish_for_task_once(key, data, None, http, 1_000);
    cluster.pump();
    assert!(matches!(
        poll_answer(&mut rx),
        Some(Ok(Answer::Published { seq: 1, .. }))
    ));
    // A presence join (the channel has no subscribers: it is mirrored all the same).
    let member = cluster.connect(0);
    let join = format!(
        r#"{{"action":"presence:join","channel":"{channel}","userId":"bob","metadata":{{"name":"Bob"}}}}"#
    );
    cluster.send(0, &member, &join);
    cluster.pump();
    // App events, one of a domain only `*` takes.
    assert_eq!(
        ingest(
            &mut cluster,
            0,
            r#"[{"t":"kv.put","k":"todo:1"},{"t":"jobs.done"}]"#
        ),
        2
    );

    // A private channel's message reaches no anonymous stream.
    let private = support::key("private-room:vip");
    let data = Bytes::from_static(b"\"secret\"");
    let mut rx = cluster.shards[0].publish_for_task(private, data, None, 1_000);
    cluster.pump();
    assert!(matches!(
        poll_answer(&mut rx),
        Some(Ok(Answer::Published { .. }))
    ));

    let seen = events(&all);
    let names: Vec<&str> = seen.iter().map(Chunk::event).collect();
    assert_eq!(
        names,
        [
            "realtime.message",
            "realtime.message",
            "presence.join",
            "kv.put",
            "jobs.done"
        ]
    );
    let first = ids(&seen)[0];
    assert_eq!(
        ids(&seen),
        (first..first + 5).collect::<Vec<_>>(),
        "one sequence, no gaps"
    );
    assert_eq!(
        first,
        cluster.clock.now().0 * 1000 + 1,
        "the sequence starts at 1000 × the wall clock"
    );
    let message = seen[0].data();
    assert_eq!(message["r"], "realtime");
    assert_eq!(message["ch"], channel);
    assert_eq!(message["uid"], "alice");
    assert_eq!(message["v"], "1");
    assert_eq!(message["data"]["text"], "hi");
    assert_eq!(
        message["src"], "test",
        "a WebSocket publish names its connection's client id"
    );
    assert_eq!(seen[1].data()["data"], serde_json::json!([1, 2]));
    assert_eq!(
        seen[1].data()["src"],
        "tab-7",
        "the publisher's X-Ren-Client"
    );
    let presence = seen[2].data();
    assert_eq!(
        (
            presence["r"].as_str(),
            presence["uid"].as_str(),
            presence["ch"].as_str()
        ),
        (Some("presence"), Some("bob"), Some(channel.as_str()))
    );
    assert_eq!(presence["data"]["name"], "Bob");
    assert_eq!(seen[3].data()["src"], "header-cid");
    assert_eq!(seen[4].data()["r"], "jobs");

    let names = |stream: &RenStream| -> Vec<String> {
        events(stream)
            .iter()
            .map(|c| c.event().to_owned())
            .collect()
    };
    assert_eq!(names(&realtime), ["realtime.message", "realtime.message"]);
    assert_eq!(names(&kv_presence), ["presence.join", "kv.put"]);
}

#[test]
fn an_event_is_encoded_once_and_shared_by_every_stream_on_every_shard() {
    let mut cluster = Cluster::new(2);
    let streams = [
        open_live(&mut cluster, 0, "kv"),
        open_live(&mut cluster, 1, "kv"),
        open_live(&mut cluster, 1, "kv"),
        open_live(&mut cluster, 1, "*"),
    ];
    assert_eq!(
        cluster.shards[1].ren_filter_classes(&TenantId::new("dev")),
        2,
        "three streams on shard 1, two filter classes"
    );
    ingest(&mut cluster, 1, r#"{"t":"kv.put"}"#);
    let queued: Vec<Bytes> = streams
        .iter()
        .map(|s| {
            let mut q = s.outbound().take_queued();
            assert_eq!(q.len(), 1);
            q.remove(0)
        })
        .collect();
    for chunk in &queued[1..] {
        assert_eq!(
            chunk.as_ptr(),
            queued[0].as_ptr(),
            "the same bytes, not a copy"
        );
    }
}

/// A stream that reconnects with `Last-Event-ID` gets exactly what it missed, while
/// another shard keeps producing events: in every interleaving of the two shards' steps,
/// each id after its `Last-Event-ID` arrives once, in order, replay before live.
#[test]
fn resume_gets_exactly_the_missed_events_in_any_interleaving() {
    for seed in 0u64..40 {
        let mut cluster = Cluster::new(2);
        let owner = tenant_owner(&TenantId::new("dev"), 2).index();
        let other = 1 - owner;
        let first = open_live(&mut cluster, owner, "*");
        for n in 0..5 {
            ingest(
                &mut cluster,
                other,
                &format!(r#"{{"t":"kv.put","k":"{n}"}}"#),
            );
        }
        let seen = ids(&events(&first));
        assert_eq!(seen.len(), 5);
        let last_seen = seen[2];
        let now = cluster.clock.now().0;
        let tenant = cluster.shared.tenants.load().resolve(None).unwrap();
        let resumed = cluster.shards[other].ren_open(
            tenant,
            RenFilter::All,
            "cid",
            Resume::After(last_seen),
            b"HEAD".to_vec(),
        );
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut pending = Vec::new();
        for n in 5..25 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            let parsed = ApiParser::new()
                .ren_events(
                    format!(r#"{{"t":"kv.put","k":"{n}"}}"#).as_bytes(),
                    now,
                    None,
                    100,
                )
                .unwrap();
            let asker = (rng >> 40) as usize % 2;
            pending.push(cluster.shards[asker].ren_ingest_for_task(
                TenantId::new("dev"),
                parsed,
                10_000,
            ));
            // Let one shard or the other run one message at a time, in a seeded order.
            cluster.step((rng >> 33) as usize % 2, 1);
        }
        cluster.pump();
        for mut rx in pending {
            assert!(matches!(
                poll_answer(&mut rx),
                Some(Ok(Answer::RenAccepted { accepted: 1 }))
            ));
        }
        let got = chunks(&resumed);
        assert_eq!(got[..2], [Chunk::Head, Chunk::Opened], "seed {seed}");
        let got = ids(&got[2..]);
        assert_eq!(
            got,
            (last_seen + 1..=seen[0] + 24).collect::<Vec<_>>(),
            "seed {seed}"
        );
    }
}

#[test]
fn a_gap_older_than_the_buffer_gives_one_ren_meta_then_live_events() {
    let mut cluster = Cluster::with(2, |config| config.ren.buffer_events = 3);
    let first = open_live(&mut cluster, 0, "kv");
    for _ in 0..5 {
        ingest(&mut cluster, 1, r#"{"t":"kv.put"}"#);
    }
    let seen = ids(&events(&first));
    let mut last = *seen.last().unwrap();

    // Kept: the last 3. Resuming after the 2nd is exact; after the 1st is truncated.
    let exact = open(&mut cluster, 1, "kv", Resume::After(seen[1]));
    assert_eq!(ids(&events(&exact)), seen[2..].to_vec());
    for resume in [
        Resume::After(last + 1),
        Resume::After(seen[0]),
        Resume::After(1),
        Resume::Unknown("from-elsewhere".into()),
    ] {
        let stream = open(&mut cluster, 1, "kv", resume.clone());
        let got = chunks(&stream);
        assert_eq!(
            got.len(),
            3,
            "{resume:?}: head, :ok, ren.meta only: {got:?}"
        );
        assert_eq!(got[2].event(), "ren.meta");
        assert_eq!(got[2].id(), last, "the cursor moves to the last id");
        assert_eq!(got[2].data()["data"]["truncated"], true);
        assert_eq!(got[2].data()["r"], "ren");
        ingest(&mut cluster, 0, r#"{"t":"kv.put"}"#);
        last += 1;
        assert_eq!(ids(&events(&stream)), vec![last], "then live events");
    }
    let truncated: u64 = (0..2)
        .map(|s| cluster.shared.metrics.shard(ShardId(s)).ren_truncated.get())
        .sum();
    assert_eq!(truncated, 4);
}

#[test]
fn a_ping_every_15_seconds_on_the_injected_clock() {
    let mut cluster = Cluster::new(1);
    cluster.advance(500); // streams opening mid-tick still get the shard's next ping
    let stream = open_live(&mut cluster, 0, "*");
    run_for(&mut cluster, 14_000);
    assert!(chunks(&stream).is_empty(), "no ping before 15 s");
    run_for(&mut cluster, 1_000);
    assert_eq!(chunks(&stream), vec![Chunk::Ping]);
    run_for(&mut cluster, 14_000);
    assert!(chunks(&stream).is_empty());
    run_for(&mut cluster, 1_000);
    assert_eq!(chunks(&stream), vec![Chunk::Ping]);
}

#[test]
fn a_tenant_without_streams_costs_its_publishes_nothing_after_buffer_secs() {
    let mut cluster = Cluster::with(2, |config| config.ren.buffer_secs = 10);
    let channel = cluster.channel_owned_by(0, "c:");
    let sequenced = |cluster: &Cluster| -> u64 {
        (0..2)
            .map(|s| cluster.shared.metrics.shard(ShardId(s)).ren_events.get())
            .sum()
    };
    publish(&mut cluster, 0, &channel, "1");
    assert_eq!(sequenced(&cluster), 0, "no stream ever: nothing mirrored");
    assert!(!cluster.shared.ren.is_active(&TenantId::new("dev")));

    let stream = open_live(&mut cluster, 1, "*");
    publish(&mut cluster, 0, &channel, "2");
    let seen = events(&stream);
    assert_eq!(seen.len(), 1);
    cluster.shards[1].ren_close(&stream);
    cluster.pump();
    // Within buffer_secs a reconnect resumes what happened meanwhile.
    publish(&mut cluster, 0, &channel, "3");
    assert_eq!(sequenced(&cluster), 2);
    let back = open(&mut cluster, 1, "*", Resume::After(seen[0].id()));
    assert_eq!(events(&back)[0].data()["data"], 3);
    cluster.shards[1].ren_close(&back);
    cluster.pump();

    run_for(&mut cluster, 10_000);
    assert!(!cluster.shared.ren.is_active(&TenantId::new("dev")));
    publish(&mut cluster, 0, &channel, "4");
    assert_eq!(sequenced(&cluster), 2, "idle tenant: not mirrored");
    // What happened while nobody listened cannot be resumed: truncated, not silence.
    let late = open(&mut cluster, 1, "*", Resume::After(seen[0].id() + 1));
    let got = chunks(&late);
    assert_eq!(got[2].event(), "ren.meta", "{got:?}");
    publish(&mut cluster, 0, &channel, "5");
    let live = events(&late);
    assert_eq!(live[0].data()["data"], 5);
    assert!(
        live[0].id() > seen[0].id() + 2,
        "the sequence moved past the gap"
    );
}

#[test]
fn a_stalled_stream_is_closed_while_another_keeps_receiving() {
    let mut cluster = Cluster::with(2, |config| config.outbound_buffer_bytes = 4096);
    let stalled = open_live(&mut cluster, 0, "*");
    let reading = open_live(&mut cluster, 1, "*");
    let mut received = 0;
    for _ in 0..20 {
        let data = format!(r#"{{"t":"kv.put","data":"{}"}}"#, "x".repeat(400));
        ingest(&mut cluster, 1, &data);
        received += events(&reading).len();
    }
    assert_eq!(received, 20, "the reading stream got every event");
    assert_eq!(
        stalled.state(),
        ConnState::Closing(CloseCode::SLOW_CONSUMER)
    );
    assert!(
        stalled.outbound().take_queued().is_empty(),
        "no farewell frame for SSE"
    );
    let closes = cluster
        .shared
        .metrics
        .shard(ShardId(0))
        .slow_consumer_closes
        .get();
    assert_eq!(closes, 1);
    cluster.shards[0].ren_close(&stalled);
    cluster.pump();
    assert_eq!(cluster.shards[0].ren_stream_count(), 0);
}

#[test]
fn a_stream_closed_before_its_answer_is_forgotten() {
    let mut cluster = Cluster::new(2);
    let owner = tenant_owner(&TenantId::new("dev"), 2).index();
    let other = 1 - owner;
    let tenant = cluster.shared.tenants.load().resolve(None).unwrap();
    let stream = cluster.shards[other].ren_open(
        tenant,
        RenFilter::All,
        "cid",
        Resume::Fresh,
        b"HEAD".to_vec(),
    );
    cluster.shards[other].ren_close(&stream);
    cluster.pump();
    assert!(
        stream.outbound().take_queued().is_empty(),
        "never answered: no head"
    );
    let unclaimed = cluster
        .shared
        .metrics
        .shard(ShardId(other as u16))
        .answers_unclaimed
        .get();
    assert_eq!(unclaimed, 1);
    let live = open_live(&mut cluster, owner, "*");
    ingest(&mut cluster, other, r#"{"t":"kv.put"}"#);
    assert_eq!(events(&live).len(), 1);
    assert!(take(&cluster.connect(0)).is_empty());
}

/// Two shards whose dev tenant has a token key.
fn cluster_with_token_key() -> Cluster {
    use ringcast_engine::tenant::TokenKeyConfig;
    Cluster::with(2, |config| {
        config.tenants[0].token_keys = vec![TokenKeyConfig {
            kid: "k1".into(),
            secret: "dev-secret-0123456789abcdef-0123456789".into(),
        }];
    })
}

/// A verified grant of the dev tenant on `channel`, minted now, valid `secs`.
fn grant_on(
    cluster: &Cluster,
    channel: &str,
    permissions: Vec<ringcast_engine::token::Permission>,
    secs: u64,
) -> ringcast_engine::token::Grant {
    use ringcast_engine::token::{self, MintRequest};
    let tenant = cluster.shared.tenants.load().resolve(None).expect("dev");
    let now = cluster.clock.now().0;
    let request = MintRequest {
        channels: vec![channel.to_owned()],
        user: Some("u".into()),
        permissions,
        expires_in_secs: secs,
        kid: None,
    };
    let jwt = token::mint(&tenant, &request, now).unwrap();
    token::verify(&jwt, &tenant, token::CheckTime::at(now)).unwrap()
}

/// A fresh `*` stream of the dev tenant on `shard`, admitted with `grant`, opened.
fn open_granted(
    cluster: &mut Cluster,
    shard: usize,
    grant: Option<ringcast_engine::token::Grant>,
) -> Rc<RenStream> {
    let tenant = cluster.shared.tenants.load().resolve(None).expect("dev");
    let filter = RenFilter::parse(Some("*")).unwrap();
    let stream = cluster.shards[shard].ren_open_with(
        tenant,
        filter,
        "cid",
        Resume::Fresh,
        b"HEAD".to_vec(),
        grant,
    );
    cluster.pump();
    assert_eq!(chunks(&stream), vec![Chunk::Head, Chunk::Opened]);
    stream
}

#[test]
fn a_private_channels_events_reach_only_streams_whose_token_allows_them() {
    use ringcast_engine::token::Permission;
    let mut cluster = cluster_with_token_key();
    let tenant = cluster.shared.tenants.load().resolve(None).expect("dev");
    let vip = grant_on(&cluster, "private-vip", vec![Permission::Subscribe], 60);
    let other = grant_on(&cluster, "private-other", vec![Permission::Subscribe], 60);
    let vip_publish = grant_on(&cluster, "private-vip", vec![Permission::Publish], 60);
    let allowed = open_granted(&mut cluster, 0, Some(vip));
    let elsewhere = open_granted(&mut cluster, 1, Some(other));
    let publish_only = open_granted(&mut cluster, 1, Some(vip_publish));
    let anonymous = open_live(&mut cluster, 0, "*");

    let data = Bytes::from_static(b"\"secret\"");
    let mut rx = cluster.shards[1].publish_for_task(support::key("private-vip"), data, None, 1_000);
    cluster.pump();
    assert!(matches!(
        poll_answer(&mut rx),
        Some(Ok(Answer::Published { .. }))
    ));
    publish(&mut cluster, 0, "lobby", "1");

    let got = events(&allowed);
    let names: Vec<&str> = got.iter().map(Chunk::event).collect();
    assert_eq!(names, ["realtime.message", "realtime.message"]);
    assert_eq!(got[0].data()["ch"], "private-vip");
    for other in [&elsewhere, &publish_only, &anonymous] {
        let seen = events(other);
        assert_eq!(seen.len(), 1, "only the public message: {seen:?}");
        assert_eq!(seen[0].data()["ch"], "lobby");
    }
    // A resume replays by the same rule.
    let first = got[0].id();
    let filter = RenFilter::parse(Some("*")).unwrap();
    let resumed = cluster.shards[0].ren_open(
        tenant.clone(),
        filter,
        "cid",
        Resume::After(first - 1),
        b"HEAD".to_vec(),
    );
    cluster.pump();
    let replayed = events(&resumed);
    assert_eq!(
        replayed.len(),
        1,
        "anonymous: the public one only: {replayed:?}"
    );
}

/// An app event naming a `private-` channel in `ch` follows the same rule as that
/// channel's mirrored messages: only streams whose token grants it get it (found in
/// review: ingested events reached anonymous streams whatever `ch` said).
#[test]
fn an_app_event_on_a_private_channel_reaches_only_streams_allowed_it() {
    use ringcast_engine::token::Permission;
    let mut cluster = cluster_with_token_key();
    let vip = grant_on(&cluster, "private-vip", vec![Permission::Subscribe], 60);
    let allowed = open_granted(&mut cluster, 0, Some(vip));
    let anonymous = open_live(&mut cluster, 1, "*");
    let body =
        r#"[{"t":"kv.put","ch":"private-vip","data":1},{"t":"kv.put","ch":"lobby","data":2}]"#;
    assert_eq!(ingest(&mut cluster, 0, body), 2);
    let got: Vec<String> = events(&allowed)
        .iter()
        .map(|c| c.data()["ch"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["private-vip", "lobby"]);
    let seen = events(&anonymous);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].data()["ch"], "lobby");
}

#[test]
fn a_stream_admitted_by_a_token_is_closed_when_the_token_expires() {
    use ringcast_engine::token::{Permission, SKEW_SECS};
    let mut cluster = cluster_with_token_key();
    let grant = grant_on(&cluster, "private-vip", vec![Permission::Subscribe], 5);
    let granted = open_granted(&mut cluster, 1, Some(grant.clone()));
    let anonymous = open_granted(&mut cluster, 1, None);
    // One that leaves before its token expires has its deadline cancelled with it.
    let left = open_granted(&mut cluster, 1, Some(grant));
    left.mark_closed();
    cluster.shards[1].ren_close(&left);

    cluster.advance((5 + SKEW_SECS) * 1000 - 1);
    cluster.pump();
    assert_eq!(granted.state(), ConnState::Open);
    cluster.advance(1);
    cluster.pump();
    assert_eq!(granted.state(), ConnState::Closing(CloseCode::AUTH_EXPIRED));
    assert_eq!(
        granted.outbound().close_reason(),
        ringcast_engine::metrics::CloseReason::Auth
    );
    assert_eq!(anonymous.state(), ConnState::Open, "no token, no expiry");
    assert_eq!(cluster.shards[1].token_deadlines(), 0);
}

/// A resume whose replay would not fit the stream's outbound buffer: the stream gets
/// its head and `ren.meta` (truncated, `id:` the replay's last id) instead of being
/// closed before its head went out, which had the client resume the same way for ever
/// (found in review; reachable with `outbound_buffer_bytes` below `[ren] buffer_bytes`).
#[test]
fn a_replay_larger_than_the_outbound_buffer_is_sent_as_truncated() {
    let mut cluster = Cluster::with(2, |config| config.outbound_buffer_bytes = 4096);
    let live = open_live(&mut cluster, 0, "*");
    let mut sent = Vec::new();
    for _ in 0..20 {
        let data = format!(r#"{{"t":"kv.put","data":"{}"}}"#, "x".repeat(400));
        ingest(&mut cluster, 1, &data);
        // Read as it comes, so the live stream's own 4 KiB buffer never fills.
        sent.extend(events(&live));
    }
    assert_eq!(sent.len(), 20);
    let (first, last) = (sent[0].id(), sent[19].id());
    let resumed = open(&mut cluster, 1, "*", Resume::After(first));
    assert_eq!(resumed.state(), ConnState::Open);
    let got = chunks(&resumed);
    assert_eq!(got[..2], [Chunk::Head, Chunk::Opened]);
    assert_eq!(got.len(), 3, "{got:?}");
    let Chunk::Event { id, event, data } = &got[2] else {
        panic!("{got:?}")
    };
    assert_eq!((*id, event.as_str()), (last, "ren.meta"));
    assert_eq!(data["data"]["truncated"], true);
    assert_eq!(data["data"]["lastEventId"], first.to_string());
    let metrics = cluster.shared.render_metrics(false);
    assert!(
        metrics
            .lines()
            .any(|l| l == "ringcast_ren_truncated_total 1"),
        "counted"
    );
    // Live afterwards.
    ingest(&mut cluster, 0, r#"{"t":"kv.put","data":"after"}"#);
    assert_eq!(events(&resumed).len(), 1);
}
