//! Fan-out and cross-shard hand-off, without sockets.
//!
//! - `fanout/encode_once/N`: one encoded frame queued to N subscribers (what the engine
//!   does) versus `fanout/encode_each/N`: encoding per subscriber (what it avoids).
//! - `cross_shard/handoff`: messages through a shard inbox from another thread.
//! - `topic_table/*`: subscribe/unsubscribe bookkeeping on a shard's local table.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_engine::conn::Conn;
use ringcast_engine::keys::{ChannelKey, ConnId, ShardId};
use ringcast_engine::mesh::{Mesh, ShardMsg};
use ringcast_engine::tenant::{Plan, TenantConfig, TenantTable};
use ringcast_engine::topic_table::LocalTopics;
use ringcast_protocol::{event, ChannelName, TenantId};

fn key(channel: &str) -> ChannelKey {
    ChannelKey::new(
        TenantId::new("dev"),
        ChannelName::new(channel).expect("valid channel"),
    )
}

fn subscribers(n: usize) -> (LocalTopics, Vec<Rc<Conn>>) {
    let tenant = TenantTable::new(&[TenantConfig::new("dev", Plan::Enterprise)], Some("dev"))
        .resolve(None)
        .unwrap();
    let mut topics = LocalTopics::default();
    let conns: Vec<Rc<Conn>> = (0..n)
        .map(|i| Rc::new(Conn::new(ConnId(i as u64), tenant.clone(), usize::MAX / 2)))
        .collect();
    for conn in &conns {
        topics.begin_subscribe(&key("bench"));
        topics.finish_subscribe(&key("bench"), Some(conn.clone()));
    }
    (topics, conns)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    let data = format!(r#"{{"text":"{}"}}"#, "x".repeat(48));
    for n in [100usize, 1_000, 10_000] {
        let (topics, conns) = subscribers(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode_once", n), &n, |b, _| {
            b.iter(|| {
                let frame = event::message("bench", data.as_bytes(), None, 1, 1);
                for conn in topics.get(&key("bench")).unwrap().subscribers() {
                    conn.push(frame.clone());
                }
                conns.iter().map(|c| c.discard_queued()).sum::<usize>()
            })
        });
        group.bench_with_input(BenchmarkId::new("encode_each", n), &n, |b, _| {
            b.iter(|| {
                for conn in topics.get(&key("bench")).unwrap().subscribers() {
                    conn.push(event::message("bench", data.as_bytes(), None, 1, 1));
                }
                conns.iter().map(|c| c.discard_queued()).sum::<usize>()
            })
        });
    }
    group.finish();
}

fn cross_shard(c: &mut Criterion) {
    const MESSAGES: usize = 10_000;
    let mut group = c.benchmark_group("cross_shard");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    let frame = Bytes::from_static(b"frame");
    group.bench_function("handoff", |b| {
        b.iter(|| {
            let mesh = Mesh::new(2);
            let producer_mesh = Arc::clone(&mesh);
            let frame = frame.clone();
            let producer = std::thread::spawn(move || {
                for _ in 0..MESSAGES {
                    let mut msg = ShardMsg::Deliver {
                        key: key("bench"),
                        frame: frame.clone(),
                    };
                    // The inbox is bounded: wait for room as a spilling shard would.
                    while let Err(back) = producer_mesh.try_send(ShardId(1), msg) {
                        msg = back;
                        std::hint::spin_loop();
                    }
                }
            });
            let mut received = 0;
            let mut batch = Vec::with_capacity(256);
            while received < MESSAGES {
                mesh.inbox(ShardId(1)).try_recv_batch(&mut batch, 256);
                received += batch.len();
                batch.clear();
            }
            producer.join().unwrap();
            black_box(received)
        })
    });
    group.finish();
}

fn topic_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_table");
    let (_, conns) = subscribers(1_000);
    let keys: Vec<ChannelKey> = (0..1_000).map(|i| key(&format!("room:{i}"))).collect();
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("subscribe_unsubscribe_1000_channels", |b| {
        b.iter(|| {
            let mut topics = LocalTopics::default();
            for (k, conn) in keys.iter().zip(&conns) {
                topics.begin_subscribe(k);
                topics.finish_subscribe(k, Some(conn.clone()));
            }
            for (k, conn) in keys.iter().zip(&conns) {
                black_box(topics.remove(k, conn.id));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, fanout, cross_shard, topic_table);
criterion_main!(benches);
