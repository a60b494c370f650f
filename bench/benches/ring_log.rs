//! Ring log micro-benchmarks: append (ring wrapping), replay from a seq, reopen — for
//! the v1 per-channel files (`ring_log/*`) and the v2 shared-segment store
//! (`shard_store/*`) side by side, plus v2's create-and-first-append.
//!
//! `cargo bench -p ringcast-bench --bench ring_log`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_store::{Epoch, LogConfig, RingLog, Seq, ShardStore, StoreConfig, SyncPolicy};

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

/// Opens an existing log of 1,000 records, and one of 10 (a small channel's file, the
/// format-1 counterpart of one of `shard_store/reopen_rings`' 10,000 rings): map,
/// verify every record, build the index.
fn reopen(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(SyncPolicy::Never);
    for records in [1_000u64, 10] {
        let path = dir.path().join(format!("reopen-{records}.rlog"));
        {
            let (mut log, _) = RingLog::open(&path, KEY, &cfg).expect("open");
            for i in 0..records {
                log.append(i, None, &[b'z'; 64]).expect("append");
            }
        }
        c.bench_function(&format!("ring_log/reopen_{records}"), |b| {
            b.iter(|| {
                let (log, _) = RingLog::open(&path, KEY, &cfg).expect("reopen");
                assert_eq!(log.len() as u64, records);
                log
            });
        });
    }
}

fn store_config() -> StoreConfig {
    StoreConfig {
        max_bytes_per_ring: 256 * 1024,
        ..StoreConfig::default()
    }
}

/// Appends into a ring that is already full (1,000 records, wrapping in its top slot).
fn store_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_store/append");
    for size in [64usize, 150, 1024] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, _) = ShardStore::open(dir.path(), store_config()).expect("open");
        let r = s.create(KEY, Epoch(1), 1_000).expect("create");
        let payload = vec![b'x'; size];
        let span = 0..size as u32;
        for i in 0..2_000 {
            s.append(r, i, Some(b"alice"), &payload, span.clone())
                .expect("append");
        }
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut ts = 0;
            b.iter(|| {
                ts += 1;
                s.append(r, ts, Some(b"alice"), black_box(payload), span.clone())
                    .expect("append")
            });
        });
    }
    group.finish();
}

/// A channel's first publish: create its ring and append one 150-byte record (then free
/// the ring, so the store's size stays constant; `free` is one write into the mapping).
fn store_create(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _) = ShardStore::open(dir.path(), store_config()).expect("open");
    // A populated store, so the index and free lists are not trivially small.
    for i in 0..10_000u64 {
        let r = s
            .create(format!("bench/pre-{i}").as_bytes(), Epoch(i + 1), 100)
            .expect("create");
        s.append(r, i, None, &[b'p'; 150], 0..150).expect("append");
    }
    let payload = [b'y'; 150];
    let mut n = 0u64;
    c.bench_function("shard_store/create_first_append_free_150", |b| {
        b.iter(|| {
            n += 1;
            let key = n.to_le_bytes();
            let r = s.create(&key, Epoch(n), 100).expect("create");
            let seq = s
                .append(r, n, None, black_box(&payload), 0..150)
                .expect("append");
            s.free(r).expect("free");
            seq
        });
    });
    assert_eq!(s.stats().space_waits, 0, "{:?}", s.stats());
}

/// Replays the whole kept history (1,000 records of 64 B) from a seq.
fn store_replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _) = ShardStore::open(dir.path(), store_config()).expect("open");
    let r = s.create(KEY, Epoch(1), 1_000).expect("create");
    for i in 0..1_500 {
        s.append(r, i, None, &[b'y'; 64], 0..64).expect("append");
    }
    let from = Seq(s.first_seq(r).expect("kept").0 - 1);
    let mut group = c.benchmark_group("shard_store/replay");
    group.throughput(Throughput::Elements(s.len(r) as u64));
    group.bench_function("iter_after_1000", |b| {
        b.iter(|| {
            s.iter_after(r, black_box(from))
                .map(|rec| rec.payload.len())
                .sum::<usize>()
        });
    });
    group.finish();
}

/// Opens a store holding one 1,000-record ring: map segments, scan slots, verify every
/// record, build the index (and start the background thread).
fn store_reopen(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut s, _) = ShardStore::open(dir.path(), store_config()).expect("open");
        let r = s.create(KEY, Epoch(1), 1_000).expect("create");
        for i in 0..1_000 {
            s.append(r, i, None, &[b'z'; 64], 0..64).expect("append");
        }
    }
    c.bench_function("shard_store/reopen_1000", |b| {
        b.iter(|| {
            let (s, _) = ShardStore::open(dir.path(), store_config()).expect("reopen");
            assert_eq!(s.len(s.lookup(KEY).expect("ring")), 1_000);
            s
        });
    });
}

/// Opens a store holding 10,000 rings of 10 records each (64 B): what a shard with many
/// small channels does at start-up. Format 1 would open 10,000 files for the same
/// channels (`ring_log/reopen_1000` is one of them).
fn store_reopen_many(c: &mut Criterion) {
    const RINGS: u64 = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut s, _) = ShardStore::open(dir.path(), store_config()).expect("open");
        for i in 0..RINGS {
            let key = format!("bench/u:{i}");
            let r = s.create(key.as_bytes(), Epoch(i + 1), 100).expect("create");
            for n in 0..10 {
                s.append(r, n, None, &[b'z'; 64], 0..64).expect("append");
            }
        }
    }
    let mut group = c.benchmark_group("shard_store/reopen_rings");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RINGS));
    group.bench_function("10000_of_10", |b| {
        b.iter(|| {
            let (s, report) = ShardStore::open(dir.path(), store_config()).expect("reopen");
            assert_eq!(report.rings_kept, RINGS as usize);
            s
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    append,
    replay,
    reopen,
    store_append,
    store_create,
    store_replay,
    store_reopen,
    store_reopen_many
);
criterion_main!(benches);
