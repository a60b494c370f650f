//! Ring log micro-benchmarks: append (ring wrapping), replay from a seq, reopen.
//!
//! `cargo bench -p ringcast-bench --bench ring_log`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_store::{LogConfig, RingLog, Seq, SyncPolicy};

const KEY: &[u8] = b"bench/chat:lobby";

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        max_records: 1_000,
        max_bytes: 256 * 1024,
        sync,
    }
}

/// Appends into a log that is already full, so every append evicts and the ring wraps.
fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_log/append");
    for size in [64usize, 1024] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("append.rlog");
        let (mut log, _) = RingLog::open(&path, KEY, &config(SyncPolicy::Never)).expect("open");
        let payload = vec![b'x'; size];
        for i in 0..2_000 {
            log.append(i, Some(b"alice"), &payload).expect("append");
        }
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut ts = 0;
            b.iter(|| {
                ts += 1;
                log.append(ts, Some(b"alice"), black_box(payload))
                    .expect("append")
            });
        });
    }
    group.finish();
}

/// Replays the whole kept history (1,000 records of 64 B) from a seq, as a subscribe
/// with `lastEventId` does.
fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replay.rlog");
    let (mut log, _) = RingLog::open(&path, KEY, &config(SyncPolicy::Never)).expect("open");
    for i in 0..1_500 {
        log.append(i, None, &[b'y'; 64]).expect("append");
    }
    let from = Seq(log.first_seq().expect("kept").0 - 1);
    let mut group = c.benchmark_group("ring_log/replay");
    group.throughput(Throughput::Elements(log.len() as u64));
    group.bench_function("iter_after_1000", |b| {
        b.iter(|| {
            log.iter_after(black_box(from))
                .map(|r| r.payload.len())
                .sum::<usize>()
        });
    });
    group.finish();
}

/// Opens an existing 1,000-record log: map, verify every record, build the index.
fn reopen(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reopen.rlog");
    let cfg = config(SyncPolicy::Never);
    {
        let (mut log, _) = RingLog::open(&path, KEY, &cfg).expect("open");
        for i in 0..1_000 {
            log.append(i, None, &[b'z'; 64]).expect("append");
        }
    }
    c.bench_function("ring_log/reopen_1000", |b| {
        b.iter(|| {
            let (log, _) = RingLog::open(&path, KEY, &cfg).expect("reopen");
            assert_eq!(log.len(), 1_000);
            log
        });
    });
}

criterion_group!(benches, append, replay, reopen);
criterion_main!(benches);
