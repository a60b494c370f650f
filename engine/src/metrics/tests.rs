use super::*;
use crate::tenant::{Plan, TenantConfig};
use ringcast_protocol::ErrorCode;

fn metrics(tenant_labels: bool, max_tenant_labels: usize) -> Metrics {
    let settings = MetricsConfig {
        tenant_labels,
        max_tenant_labels,
        ..MetricsConfig::default()
    };
    Metrics::new(Mesh::new(2), &settings)
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn renders_the_documented_names_summed_over_shards() {
    let metrics = metrics(false, 100);
    metrics.shard(ShardId(0)).slow_consumer_closes.inc();
    metrics.shard(ShardId(1)).slow_consumer_closes.add(2);
    metrics.shard(ShardId(1)).error("bad_request");
    metrics.shard(ShardId(0)).error_event(ErrorCode::BadRequest);
    metrics.shard(ShardId(0)).error("no_such_code");
    metrics.shard(ShardId(1)).connections.add(3);
    metrics.shard(ShardId(1)).connections.add(-1);
    metrics.shard(ShardId(1)).ws_connections.add(1);
    metrics.shard(ShardId(0)).token_verification(true);
    metrics.shard(ShardId(1)).token_verification(false);
    metrics.shard(ShardId(1)).token_verification(false);
    let text = metrics.render(Scrape::default());
    for (series, value) in [
        ("ringcast_connections{transport=\"http\"}", 1.0),
        ("ringcast_connections{transport=\"ws\"}", 1.0),
        ("ringcast_connections{transport=\"sse\"}", 0.0),
        ("ringcast_connections_accepted_total", 0.0),
        ("ringcast_slow_consumer_closes_total", 3.0),
        ("ringcast_errors_total{code=\"bad_request\"}", 2.0),
        ("ringcast_errors_total{code=\"other\"}", 1.0),
        (
            "ringcast_token_verifications_total{result=\"accepted\"}",
            1.0,
        ),
        (
            "ringcast_token_verifications_total{result=\"refused\"}",
            2.0,
        ),
        ("ringcast_inbox_depth{shard=\"1\"}", 0.0),
        ("ringcast_inbox_capacity", 8192.0),
        ("ringcast_shards", 2.0),
        ("ringcast_ready", 0.0),
        ("ringcast_messages_published_total", 0.0),
        ("ringcast_deliveries_total", 0.0),
        ("ringcast_subscriptions", 0.0),
        ("ringcast_channels", 0.0),
        ("ringcast_presence_members", 0.0),
        ("ringcast_history_appends_total", 0.0),
        ("ringcast_history_truncations_total", 0.0),
        ("ringcast_bytes_out_total{transport=\"ws\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(!text.contains("tokens_accepted"), "old name gone");
    assert!(!text.contains("ringcast_tenant_"), "tenant labels are off");
}

#[test]
fn closes_are_counted_by_transport_and_reason() {
    let metrics = metrics(false, 100);
    metrics
        .shard(ShardId(0))
        .closed(Transport::Ws, CloseReason::SlowConsumer);
    metrics
        .shard(ShardId(1))
        .closed(Transport::Ws, CloseReason::SlowConsumer);
    metrics
        .shard(ShardId(1))
        .closed(Transport::Http, CloseReason::Limit);
    let text = metrics.render(Scrape::default());
    let series = |t: &str, r: &str| {
        format!("ringcast_connections_closed_total{{transport=\"{t}\",reason=\"{r}\"}}")
    };
    assert_eq!(sample(&text, &series("ws", "slow_consumer")), Some(2.0));
    assert_eq!(sample(&text, &series("http", "limit")), Some(1.0));
    assert_eq!(sample(&text, &series("sse", "client")), Some(0.0));
}

#[test]
fn histograms_render_cumulative_buckets_sum_and_count() {
    let metrics = metrics(false, 100);
    metrics.shard(ShardId(0)).write_batch_frames.observe(1);
    metrics.shard(ShardId(1)).write_batch_frames.observe(3);
    metrics.shard(ShardId(1)).write_batch_frames.observe(2000);
    metrics
        .shard(ShardId(0))
        .http_request(HttpRoute::Metrics, 200, 2_000_000);
    metrics
        .shard(ShardId(1))
        .http_request(HttpRoute::ApiPublish, 429, 50_000);
    let text = metrics.render(Scrape::default());
    for (series, value) in [
        ("ringcast_write_batch_frames_bucket{le=\"1.0\"}", 1.0),
        ("ringcast_write_batch_frames_bucket{le=\"4.0\"}", 2.0),
        ("ringcast_write_batch_frames_bucket{le=\"1024.0\"}", 2.0),
        ("ringcast_write_batch_frames_bucket{le=\"+Inf\"}", 3.0),
        ("ringcast_write_batch_frames_count", 3.0),
        ("ringcast_write_batch_frames_sum", 2004.0),
        ("ringcast_loop_turn_seconds_count", 0.0),
        (
            "ringcast_http_requests_total{route=\"metrics\",status=\"200\"}",
            1.0,
        ),
        (
            "ringcast_http_requests_total{route=\"api_publish\",status=\"429\"}",
            1.0,
        ),
        (
            "ringcast_http_request_duration_seconds_bucket{le=\"0.001\",route=\"metrics\"}",
            0.0,
        ),
        (
            "ringcast_http_request_duration_seconds_bucket{le=\"0.005\",route=\"metrics\"}",
            1.0,
        ),
        (
            "ringcast_http_request_duration_seconds_count{route=\"api_publish\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        !text.contains("route=\"healthz\",status"),
        "pairs never seen are not rendered"
    );
}

#[test]
fn tenant_families_are_bounded_by_max_tenant_labels() {
    let metrics = metrics(true, 2);
    let configs: Vec<TenantConfig> = ["c", "a", "b", "d"]
        .iter()
        .map(|id| TenantConfig::new(id, Plan::Free))
        .collect();
    let table = Arc::new(TenantTable::new(&configs, None));
    for (id, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        let tenant = table.get(id).unwrap();
        tenant
            .metrics
            .shard(ShardId(n % 2), 2)
            .ws_connections
            .add(n as i64);
        tenant
            .metrics
            .shard(ShardId(0), 2)
            .messages_published
            .add(10 * u64::from(n));
    }
    let text = metrics.render(Scrape {
        tenants: Some(table),
        ready: true,
        draining: false,
    });
    for (series, value) in [
        (
            "ringcast_tenant_connections{tenant=\"a\",transport=\"ws\"}",
            1.0,
        ),
        (
            "ringcast_tenant_connections{tenant=\"b\",transport=\"ws\"}",
            2.0,
        ),
        (
            "ringcast_tenant_connections{tenant=\"_other\",transport=\"ws\"}",
            7.0,
        ),
        (
            "ringcast_tenant_messages_published_total{tenant=\"_other\"}",
            70.0,
        ),
        ("ringcast_tenant_subscriptions{tenant=\"a\"}", 0.0),
        ("ringcast_ready", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(!text.contains("tenant=\"c\""), "{text}");
}

/// `_other` sums whichever tenants sit past `max_tenant_labels`; a reload that changes
/// who they are must not make its counters go down (Prometheus reads a drop as a reset,
/// and `increase()` then shows a false spike; found in review), nor jump up by what a
/// tenant moving in counted before. Gauges may go down.
#[test]
fn the_other_tenants_counters_never_go_down() {
    let metrics = metrics(true, 1);
    let build = |ids: &[&str], previous: Option<&TenantTable>| {
        let configs: Vec<TenantConfig> = ids
            .iter()
            .map(|id| TenantConfig::new(id, Plan::Free))
            .collect();
        Arc::new(match previous {
            Some(previous) => TenantTable::rebuild(&configs, None, previous),
            None => TenantTable::new(&configs, None),
        })
    };
    let published = |metrics: &Metrics, table: &Arc<TenantTable>| {
        let text = metrics.render(Scrape {
            tenants: Some(table.clone()),
            ready: true,
            draining: false,
        });
        sample(
            &text,
            "ringcast_tenant_messages_published_total{tenant=\"_other\"}",
        )
    };
    let first = build(&["a", "b", "c"], None);
    for (id, n) in [("b", 3), ("c", 5)] {
        let tenant = first.get(id).unwrap();
        tenant
            .metrics
            .shard(ShardId(0), 2)
            .messages_published
            .add(n);
    }
    assert_eq!(published(&metrics, &first), Some(8.0));
    // c goes: `_other` is b alone now, 3 by its own count.
    let second = build(&["a", "b"], Some(&first));
    assert_eq!(published(&metrics, &second), Some(8.0), "held, not 3");
    second
        .get("b")
        .unwrap()
        .metrics
        .shard(ShardId(1), 2)
        .messages_published
        .add(2);
    assert_eq!(published(&metrics, &second), Some(10.0), "and counting on");

    // Nor jump: a tenant moving into `_other` (a reload adds one that sorts before it)
    // brings only what it counts from then on, not its lifetime count, which
    // `increase()` would show as a burst that never happened (found in review).
    let metrics = self::metrics(true, 1);
    let render = |table: &Arc<TenantTable>| {
        metrics.render(Scrape {
            tenants: Some(table.clone()),
            ready: true,
            draining: false,
        })
    };
    let shown = |text: &str, tenant: &str| {
        sample(
            text,
            &format!("ringcast_tenant_messages_published_total{{tenant=\"{tenant}\"}}"),
        )
    };
    let publish = |table: &TenantTable, id: &str, n: u64| {
        let tenant = table.get(id).unwrap();
        tenant
            .metrics
            .shard(ShardId(0), 2)
            .messages_published
            .add(n);
    };
    let first = build(&["b", "c"], None);
    publish(&first, "b", 1_000_000);
    publish(&first, "c", 5);
    let text = render(&first);
    assert_eq!(shown(&text, "b"), Some(1_000_000.0));
    assert_eq!(shown(&text, "_other"), Some(5.0));
    // a sorts first: a named, b moves into `_other`.
    let second = build(&["a", "b", "c"], Some(&first));
    let text = render(&second);
    assert_eq!(shown(&text, "b"), None, "b has no label of its own now");
    assert_eq!(shown(&text, "_other"), Some(5.0), "not 1,000,005");
    publish(&second, "b", 1);
    assert_eq!(shown(&render(&second), "_other"), Some(6.0));
    publish(&second, "c", 2);
    assert_eq!(shown(&render(&second), "_other"), Some(8.0));
    // And back: b leaves `_other` (a goes); `_other` holds, b shows its own count.
    let third = build(&["b", "c"], Some(&second));
    let text = render(&third);
    assert_eq!(shown(&text, "b"), Some(1_000_001.0));
    assert_eq!(shown(&text, "_other"), Some(8.0));
    publish(&third, "c", 1);
    assert_eq!(shown(&render(&third), "_other"), Some(9.0));
}

#[test]
fn every_error_event_code_has_its_own_label() {
    for code in ErrorCode::ALL {
        assert!(ERROR_LABELS.contains(&code.as_str()), "{code}");
    }
    for error in ringcast_protocol::ApiError::ALL {
        assert!(ERROR_LABELS.contains(&error.code()), "{}", error.code());
    }
}
