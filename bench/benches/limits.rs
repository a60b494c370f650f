//! What plan limits and tokens cost per action (issue #12), on a real `ShardCore`
//! without sockets:
//!
//! - `publish/unlimited` vs `publish/rate_limited`: one WebSocket publish (parse, owner
//!   append, encode, `ack`; K = 1) to an existing channel, for a tenant without a
//!   publish limit and for one with `publishes_per_minute = 100,000` (never reached:
//!   the manual clock moves 1 ms per publish, so the sliding log holds 60,000 entries,
//!   its steady state under a high rate);
//! - `usage/try_publish`: the sliding-log check alone, uncontended;
//! - `usage/try_publish_2_threads`: the same from two threads at once (two shards
//!   owning channels of one busy tenant);
//! - `token/verify`: one HS256 channel token verified (the cost a `private-` subscribe
//!   or publish with a token adds).
//!
//! Run: `cargo bench -p ringcast-bench --bench limits` (about 30 s).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use ringcast_engine::clock::{Clock, ManualClock, Millis};
use ringcast_engine::config::{Config, Overrides};
use ringcast_engine::core::ShardCore;
use ringcast_engine::history;
use ringcast_engine::keys::ShardId;
use ringcast_engine::mesh::Mesh;
use ringcast_engine::shared::Shared;
use ringcast_engine::tenant::{Tenant, TenantUsage, TokenKeyConfig};
use ringcast_engine::token::{self, MintRequest, Permission};

const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";

/// A one-shard core whose dev tenant has `rate` as its publish limit.
type Bench = (ShardCore, ManualClock, Arc<Tenant>, tempfile::TempDir);

fn core(rate: Option<u32>) -> Bench {
    let data = tempfile::tempdir().expect("temp dir");
    let flags = Overrides {
        dev: true,
        shards: Some(1),
        data_dir: Some(data.path().to_path_buf()),
        ..Overrides::default()
    };
    let mut config = Config::load(None, &flags).expect("dev config");
    config.tenants[0].publishes_per_minute = rate;
    config.tenants[0].token_keys = vec![TokenKeyConfig {
        kid: "k1".into(),
        secret: SECRET.into(),
    }];
    let mesh = Mesh::with_capacity(1, config.inbox_capacity);
    let shared = Arc::new(Shared::new(config.clone(), mesh.clone()));
    let store = history::open_all(data.path(), &config.history, 1)
        .expect("history")
        .pop()
        .expect("one shard");
    let clock = ManualClock::new(Millis(1_700_000_000_000));
    let tenant = shared.tenants.load().get("dev").expect("dev tenant");
    let core = ShardCore::new(
        ShardId(0),
        mesh,
        shared,
        store,
        Clock::Manual(clock.clone()),
    );
    (core, clock, tenant, data)
}

fn publish(c: &mut Criterion) {
    let frame = br#"{"action":"publish","channel":"bench","data":{"n":1,"text":"hello"},"ref":1}"#;
    let mut group = c.benchmark_group("publish");
    for (name, rate) in [("unlimited", None), ("rate_limited", Some(100_000))] {
        let (mut core, clock, tenant, _data) = core(rate);
        let conn = core.register_conn(tenant, "bench");
        // Fill the sliding log to its steady state first.
        for _ in 0..60_000 {
            clock.advance(1);
            core.on_text(&conn, frame);
        }
        conn.discard_queued();
        group.bench_function(name, |b| {
            b.iter(|| {
                clock.advance(1);
                core.on_text(&conn, frame);
                conn.discard_queued();
            })
        });
    }
    group.finish();
}

fn usage(c: &mut Criterion) {
    let usage = TenantUsage::default();
    let mut now = 0u64;
    for _ in 0..60_000 {
        now += 1;
        usage
            .try_publish(now, Some(100_000))
            .expect("under the limit");
    }
    c.bench_function("usage/try_publish", |b| {
        b.iter(|| {
            now += 1;
            usage.try_publish(now, Some(100_000))
        })
    });
}

/// Two threads (two shards owning channels of one tenant) recording publishes at once:
/// the time per publish of each, lock contention included.
fn contended(c: &mut Criterion) {
    let usage = Arc::new(TenantUsage::default());
    let clock = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tick = |clock: &std::sync::atomic::AtomicU64| {
        clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed) / 2
    };
    c.bench_function("usage/try_publish_2_threads", |b| {
        b.iter_custom(|iters| {
            let other = {
                let (usage, clock) = (usage.clone(), clock.clone());
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        let _ = usage.try_publish(tick(&clock), Some(1_000_000));
                    }
                })
            };
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let _ = usage.try_publish(tick(&clock), Some(1_000_000));
            }
            let mine = start.elapsed();
            other.join().expect("other thread");
            mine
        })
    });
}

fn verify(c: &mut Criterion) {
    let (_core, clock, tenant, _data) = core(None);
    let request = MintRequest {
        channels: vec!["private-room".into()],
        user: Some("alice".into()),
        permissions: vec![Permission::Subscribe, Permission::Publish],
        expires_in_secs: 3600,
        kid: None,
    };
    let now = clock.now().0;
    let jwt = token::mint(&tenant, &request, now).expect("mint");
    c.bench_function("token/verify", |b| {
        b.iter(|| token::verify(&jwt, &tenant, token::CheckTime::at(now)).expect("valid"))
    });
}

criterion_group!(benches, publish, usage, contended, verify);
criterion_main!(benches);
