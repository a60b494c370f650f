//! Metrics written by the shards' handlers, driven message by message (see
//! `support/mod.rs`): exact values, per shard and per tenant, and the close reason of
//! a slow consumer.

mod support;

use ringcast_engine::keys::ShardId;
use ringcast_engine::metrics::CloseReason;
use support::{take, Cluster};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn handlers_count_exactly_and_a_slow_consumer_is_counted_by_reason() {
    let mut cluster = Cluster::with(2, |config| {
        config.outbound_buffer_bytes = 2048;
        config.metrics.tenant_labels = true;
    });
    let channel = cluster.channel_owned_by(0, "m:");
    let (fast, slow, publisher) = (cluster.connect(1), cluster.connect(1), cluster.connect(0));
    let subscribe = format!(r#"{{"action":"subscribe","channel":"{channel}"}}"#);
    cluster.send(1, &fast, &subscribe);
    cluster.send(1, &slow, &subscribe);
    cluster.pump();
    take(&fast);
    take(&slow);
    let filler = "x".repeat(800);
    for n in 1..=3 {
        let publish = format!(
            r#"{{"action":"publish","channel":"{channel}","data":{{"n":{n},"f":"{filler}"}}}}"#
        );
        cluster.send(0, &publisher, &publish);
        cluster.pump();
        // The fast one reads everything; the slow one never does.
        assert_eq!(take(&fast).len(), 1);
    }
    let text = cluster.shared.render_metrics(false);
    for (series, value) in [
        ("ringcast_messages_published_total", 3.0),
        ("ringcast_history_appends_total", 3.0),
        // 3 to the fast one, 2 queued to the slow one before the third overflowed it.
        ("ringcast_deliveries_total", 5.0),
        ("ringcast_slow_consumer_closes_total", 1.0),
        ("ringcast_subscriptions", 2.0),
        ("ringcast_channels", 1.0),
        ("ringcast_connections{transport=\"ws\"}", 3.0),
        (
            "ringcast_tenant_connections{tenant=\"dev\",transport=\"ws\"}",
            3.0,
        ),
        ("ringcast_tenant_subscriptions{tenant=\"dev\"}", 2.0),
        (
            "ringcast_tenant_messages_published_total{tenant=\"dev\"}",
            3.0,
        ),
        ("ringcast_tenant_deliveries_total{tenant=\"dev\"}", 5.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert_eq!(slow.outbound().close_reason(), CloseReason::SlowConsumer);

    // The session ends: the shard counts why, and its gauges follow.
    slow.mark_closed();
    cluster.shards[1].unregister_conn(&slow, None);
    cluster.pump();
    let counters = cluster.shared.metrics.shard(ShardId(1));
    assert_eq!(counters.ws_connections.get(), 1);
    let text = cluster.shared.render_metrics(false);
    let closed = "ringcast_connections_closed_total{transport=\"ws\",reason=\"slow_consumer\"}";
    assert_eq!(sample(&text, closed), Some(1.0), "{text}");
    assert_eq!(sample(&text, "ringcast_subscriptions"), Some(1.0));
    assert_eq!(
        sample(&text, "ringcast_tenant_subscriptions{tenant=\"dev\"}"),
        Some(1.0)
    );

    // A client's own close, whatever its code, is the client's.
    fast.outbound()
        .close_by_client(ringcast_protocol::CloseCode::GOING_AWAY);
    fast.mark_closed();
    cluster.shards[1].unregister_conn(&fast, None);
    let text = cluster.shared.render_metrics(false);
    let client = "ringcast_connections_closed_total{transport=\"ws\",reason=\"client\"}";
    assert_eq!(sample(&text, client), Some(1.0), "{text}");
    let shutdown = "ringcast_connections_closed_total{transport=\"ws\",reason=\"shutdown\"}";
    assert_eq!(sample(&text, shutdown), Some(0.0));
    // Unregistering twice counts once.
    cluster.shards[1].unregister_conn(&fast, None);
    let counters = cluster.shared.metrics.shard(ShardId(1));
    assert_eq!(counters.ws_connections.get(), 0);
}
