//! The shard-thread cost of a channel's first publish (its history ring created) against
//! a publish to a channel that already has one, on a real `ShardCore` without sockets:
//! parse, owner append, encode, `ack`. Issue #9's goal: first ≤ 1.5 × existing at p50
//! and p99.
//!
//! Publishes alternate (new channel, existing channel) so both see the same table sizes
//! and the same store; `ROUNDS` new channels are created. Each publish is timed alone
//! with `Instant` (≈ 20–30 ns of its own), into an HdrHistogram.
//!
//! Run: `cargo bench -p ringcast-bench --bench first_publish` (about 10 s).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use ringcast_engine::clock::{Clock, ManualClock, Millis};
use ringcast_engine::config::{Config, Overrides};
use ringcast_engine::core::ShardCore;
use ringcast_engine::history;
use ringcast_engine::keys::ShardId;
use ringcast_engine::mesh::Mesh;
use ringcast_engine::metrics::Metrics;
use ringcast_engine::shared::Shared;
use ringcast_engine::tenant::TenantTable;

/// New channels created (and as many publishes to existing ones).
const ROUNDS: usize = 300_000;
/// Channels that exist before the measurement.
const EXISTING: usize = 1_000;

fn main() {
    let data = tempfile::tempdir().expect("temp dir");
    let flags = Overrides {
        dev: true,
        shards: Some(1),
        data_dir: Some(data.path().to_path_buf()),
        ..Overrides::default()
    };
    let config = Config::load(None, &flags).expect("dev config");
    let mesh = Mesh::with_capacity(1, config.inbox_capacity);
    let tenants = TenantTable::new(&config.tenants, config.default_tenant.as_deref());
    let tenant = tenants.resolve(None).expect("dev tenant");
    let shared = Arc::new(Shared {
        tenants: ArcSwap::from_pointee(tenants),
        config: ArcSwap::from_pointee(config.clone()),
        metrics: Metrics::new(mesh.clone()),
        open_connections: AtomicUsize::new(0),
        ready_shards: AtomicUsize::new(0),
        ren: Default::default(),
    });
    let store = history::open_all(data.path(), &config.history, 1)
        .expect("history")
        .pop()
        .expect("one shard");
    let clock = ManualClock::new(Millis(1_700_000_000_000));
    let mut core = ShardCore::new(ShardId(0), mesh, shared, store, Clock::Manual(clock));
    let conn = core.register_conn(tenant, "bench");
    let publish = |channel: usize| {
        format!(
            r#"{{"action":"publish","channel":"bench:{channel}","data":{{"n":{channel},"text":"hello"}},"ref":1}}"#
        )
    };
    for c in 0..EXISTING {
        core.on_text(&conn, publish(c).as_bytes());
    }
    conn.discard_queued();

    let mut first = Histogram::<u64>::new(3).expect("histogram");
    let mut again = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for round in 0..ROUNDS {
        let new = publish(EXISTING + round);
        let old = publish(round % EXISTING);
        let t = Instant::now();
        core.on_text(&conn, new.as_bytes());
        let t_new = t.elapsed();
        let t = Instant::now();
        core.on_text(&conn, old.as_bytes());
        let t_old = t.elapsed();
        let _ = first.record(t_new.as_nanos() as u64);
        let _ = again.record(t_old.as_nanos() as u64);
        if round % 64 == 0 {
            conn.discard_queued();
        }
    }
    let wall = started.elapsed();

    println!(
        "first_publish: {ROUNDS} new channels beside {EXISTING} existing, one shard, {wall:.2?}"
    );
    println!("| publish to | p50 ns | p99 ns | p99.9 ns | mean ns |");
    println!("|---|---|---|---|---|");
    for (name, h) in [
        ("a new channel (ring created)", &first),
        ("an existing channel", &again),
    ] {
        println!(
            "| {name} | {} | {} | {} | {:.0} |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.mean()
        );
    }
    let ratio =
        |q: f64| first.value_at_quantile(q) as f64 / again.value_at_quantile(q).max(1) as f64;
    println!(
        "| new ÷ existing | {:.2} | {:.2} | {:.2} | {:.2} |",
        ratio(0.5),
        ratio(0.99),
        ratio(0.999),
        first.mean() / again.mean().max(1.0)
    );
}
