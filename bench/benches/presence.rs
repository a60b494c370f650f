//! Presence at the owner shard, without sockets.
//!
//! - `presence/join_leave/N`: N users join one channel (each from its own connection),
//!   then all leave. Per-member time must stay flat from 1,000 to 10,000 (no O(n²)).
//! - `presence/seen_batch/10000`: the owner applying one tick's `PresenceSeen` for
//!   10,000 online members (what heartbeats cost the owner per tick).
//! - `presence/heartbeats_two_shards/10000`: the whole path on real `ShardCore`s: 10,000
//!   connections on shard 0, each in one channel owned by shard 1, each sends a `ping`;
//!   then shard 0's housekeeping tick batches them and shard 1 applies the batch.
//! - `presence/expire/10000`: 10,000 members expiring through the deadline queue.
//!
//! Memory per member is measured with a counting allocator and printed first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_engine::clock::{Clock, ManualClock, Millis};
use ringcast_engine::config::{Config, Overrides};
use ringcast_engine::conn::Conn;
use ringcast_engine::core::{ShardCore, HOUSEKEEPING_MS};
use ringcast_engine::history;
use ringcast_engine::keys::{ChannelKey, ConnId, ShardId};
use ringcast_engine::mesh::Mesh;
use ringcast_engine::metrics::Metrics;
use ringcast_engine::presence::{PresenceHolder, PresenceTable};
use ringcast_engine::shared::Shared;
use ringcast_engine::tenant::{PresenceLimits, TenantTable};
use ringcast_protocol::{ChannelName, TenantId};

/// Counts live heap bytes, for the memory-per-member figure.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MEMBERS: usize = 10_000;

fn key(channel: &str) -> ChannelKey {
    ChannelKey::new(
        TenantId::new("dev"),
        ChannelName::new(channel).expect("valid channel"),
    )
}

fn holder(i: usize) -> PresenceHolder {
    PresenceHolder::Conn {
        shard: ShardId(0),
        conn: ConnId(i as u64),
    }
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i:06}")).collect()
}

fn filled(users: &[String], metadata: &Bytes) -> PresenceTable {
    let mut table = PresenceTable::default();
    let limits = PresenceLimits::default();
    for (i, user) in users.iter().enumerate() {
        table
            .join(
                &key("room"),
                user,
                Some(metadata.clone()),
                holder(i),
                &limits,
                Millis(0),
            )
            .unwrap();
    }
    table
}

fn memory_per_member() {
    let users = users(MEMBERS);
    let metadata = Bytes::from_static(br#"{"name":"Alice","status":"online"}"#);
    let before = LIVE.load(Ordering::Relaxed);
    let table = filled(&users, &metadata);
    let after = LIVE.load(Ordering::Relaxed);
    let per = (after - before) as f64 / MEMBERS as f64;
    println!(
        "presence/memory: {per:.0} bytes per member at {MEMBERS} members (userId 11 bytes, \
         {}-byte metadata shared, WebSocket holder, deadline entry, holder index)",
        metadata.len()
    );
    drop(black_box(table));
}

fn join_leave(c: &mut Criterion) {
    memory_per_member();
    let mut group = c.benchmark_group("presence");
    let metadata = Bytes::from_static(br#"{"name":"x"}"#);
    let limits = PresenceLimits::default();
    for n in [1_000usize, MEMBERS] {
        let users = users(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("join_leave", n), &n, |b, _| {
            b.iter(|| {
                let mut table = PresenceTable::default();
                let k = key("room");
                for (i, user) in users.iter().enumerate() {
                    let joined = table
                        .join(
                            &k,
                            user,
                            Some(metadata.clone()),
                            holder(i),
                            &limits,
                            Millis(0),
                        )
                        .unwrap();
                    black_box(joined.is_new);
                }
                for (i, user) in users.iter().enumerate() {
                    black_box(table.leave(&k, user, holder(i)));
                }
                assert_eq!(table.channel_count(), 0);
            })
        });
    }

    let users_10k = users(MEMBERS);
    let conns: Vec<ConnId> = (0..MEMBERS as u64).map(ConnId).collect();
    let mut table = filled(&users_10k, &metadata);
    let mut now = 0;
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function(BenchmarkId::new("seen_batch", MEMBERS), |b| {
        b.iter(|| {
            now += 1_000;
            table.seen(ShardId(0), &conns, Millis(now));
        })
    });

    group.bench_function(BenchmarkId::new("expire", MEMBERS), |b| {
        b.iter_batched(
            || filled(&users_10k, &metadata),
            |mut table| {
                let mut expired = 0;
                while table.pop_expired(Millis(u64::MAX / 2)).is_some() {
                    expired += 1;
                }
                assert_eq!(expired, MEMBERS);
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Two real shard cores on a manual clock (the shape of `engine/tests/support`).
struct Pair {
    mesh: Arc<Mesh>,
    clock: ManualClock,
    cores: Vec<ShardCore>,
    _data: tempfile::TempDir,
}

impl Pair {
    fn new() -> Pair {
        let data = tempfile::tempdir().unwrap();
        let flags = Overrides {
            dev: true,
            shards: Some(2),
            data_dir: Some(data.path().to_path_buf()),
            ..Overrides::default()
        };
        let mut config = Config::load(None, &flags).unwrap();
        config.inbox_capacity = 1 << 16;
        let mesh = Mesh::with_capacity(2, config.inbox_capacity);
        let shared = Arc::new(Shared {
            tenants: ArcSwap::from_pointee(TenantTable::new(
                &config.tenants,
                config.default_tenant.as_deref(),
            )),
            config: ArcSwap::from_pointee(config.clone()),
            metrics: Metrics::new(mesh.clone()),
            open_connections: AtomicUsize::new(0),
            ready_shards: AtomicUsize::new(0),
            ren: Default::default(),
        });
        let clock = ManualClock::new(Millis(1_700_000_000_000));
        let histories = history::open_all(data.path(), &config.history, 2).unwrap();
        let cores = histories
            .into_iter()
            .enumerate()
            .map(|(i, history)| {
                ShardCore::new(
                    ShardId(i as u16),
                    mesh.clone(),
                    shared.clone(),
                    history,
                    Clock::Manual(clock.clone()),
                )
            })
            .collect();
        Pair {
            mesh,
            clock,
            cores,
            _data: data,
        }
    }

    fn pump(&mut self) {
        let mut batch = Vec::new();
        loop {
            let mut moved = 0;
            for (i, core) in self.cores.iter_mut().enumerate() {
                self.mesh
                    .inbox(ShardId(i as u16))
                    .try_recv_batch(&mut batch, 4096);
                moved += batch.len();
                for msg in batch.drain(..) {
                    core.handle(msg);
                }
                core.retry_spills();
            }
            if moved == 0 {
                return;
            }
        }
    }
}

fn heartbeats(c: &mut Criterion) {
    let mut pair = Pair::new();
    let channel = (0..)
        .map(|i| format!("hb:{i}"))
        .find(|name| key(name).owner(2) == ShardId(1))
        .unwrap();
    let tenant = TenantTable::new(
        &[ringcast_engine::tenant::TenantConfig::new(
            "dev",
            ringcast_engine::tenant::Plan::Enterprise,
        )],
        Some("dev"),
    )
    .resolve(None)
    .unwrap();
    let conns: Vec<Rc<Conn>> = (0..MEMBERS)
        .map(|_| pair.cores[0].register_conn(tenant.clone(), "bench"))
        .collect();
    for (i, conn) in conns.iter().enumerate() {
        let join = format!(
            r#"{{"action":"presence:join","channel":"{channel}","userId":"user-{i}","metadata":{{"n":{i}}}}}"#
        );
        pair.cores[0].on_text(conn, join.as_bytes());
        if i % 1000 == 999 {
            pair.pump();
        }
    }
    pair.pump();
    assert_eq!(
        pair.cores[1].presence().member_count(&key(&channel)),
        MEMBERS
    );
    for conn in &conns {
        conn.discard_queued();
    }
    let mut group = c.benchmark_group("presence");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function(BenchmarkId::new("heartbeats_two_shards", MEMBERS), |b| {
        b.iter(|| {
            for conn in &conns {
                pair.cores[0].on_text(conn, br#"{"action":"ping"}"#);
                conn.discard_queued();
            }
            pair.clock.advance(HOUSEKEEPING_MS);
            pair.cores[0].on_tick();
            pair.cores[1].on_tick();
            pair.pump();
        })
    });
    group.finish();
    assert_eq!(
        pair.cores[1].presence().member_count(&key(&channel)),
        MEMBERS
    );
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = join_leave, heartbeats
}
criterion_main!(benches);
