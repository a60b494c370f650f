use std::path::Path;

use super::*;
use crate::slot_format::data_offset;
use crate::ShardOpenReport;

pub(crate) fn small_cfg() -> StoreConfig {
    StoreConfig {
        max_bytes_per_ring: 8 * 1024,
        max_total_bytes: None,
        sync: SyncPolicy::Never,
        segment_bytes: 64 * 1024,
    }
}

pub(crate) fn open(dir: &Path, cfg: StoreConfig) -> (ShardStore, ShardOpenReport) {
    ShardStore::open(dir, cfg).unwrap()
}

fn payloads(s: &ShardStore, r: RingId, after: u64) -> Vec<(u64, Vec<u8>)> {
    s.iter_after(r, Seq(after))
        .map(|rec| (rec.seq.0, rec.payload.to_vec()))
        .collect()
}

fn put(s: &mut ShardStore, r: RingId, ts: u64, payload: &[u8]) -> Seq {
    s.append(r, ts, Some(b"u1"), payload, 1..payload.len().max(1) as u32)
        .unwrap()
}

#[test]
fn create_append_replay_and_reopen_keep_epoch_seq_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let epoch;
    {
        let (mut s, report) = open(dir.path(), small_cfg());
        assert_eq!(report.rings_kept, 0);
        let r = s.create(b"t/a", Epoch(77), 10).unwrap();
        assert_eq!(s.lookup(b"t/a"), Some(r));
        assert_eq!((s.last_seq(r), s.first_seq(r), s.len(r)), (Seq(0), None, 0));
        assert!(s.replay_complete(r, Seq(0)));
        for i in 1..=5u64 {
            assert_eq!(put(&mut s, r, 100 + i, format!("{{m{i}}}").as_bytes()), Seq(i));
        }
        let rec = s.iter_after(r, Seq(3)).next().unwrap();
        assert_eq!((rec.seq, rec.ts_ms, rec.uid), (Seq(4), 104, Some(&b"u1"[..])));
        assert_eq!(rec.payload, b"{m4}");
        assert_eq!(rec.data(), b"m4}");
        let before: Vec<u64> = s.iter_before(r, Seq(5), 2).map(|r| r.seq.0).collect();
        assert_eq!(before, [3, 4]);
        assert_eq!(s.key(r), b"t/a");
        assert_eq!(s.last_append_ms(r), 105);
        epoch = s.epoch(r);
        assert_eq!(
            s.append(r, 0, None, b"xy", 1..3).unwrap_err().to_string(),
            "data span 1..3 is not inside a payload of 2 bytes"
        );
        assert!(matches!(s.create(b"t/a", Epoch(1), 1), Err(StoreError::KeyExists)));
        s.check_invariants().unwrap();
    }
    let (s, report) = open(dir.path(), small_cfg());
    assert_eq!(report.rings_kept, 1);
    assert_eq!(report.torn_tail_dropped, 0);
    let r = s.lookup(b"t/a").unwrap();
    assert_eq!((s.epoch(r), s.last_seq(r)), (epoch, Seq(5)));
    assert_eq!(s.max_records(r), 10);
    assert_eq!(payloads(&s, r, 0).len(), 5);
    assert_eq!(s.iter_after(r, Seq(4)).next().unwrap().data(), b"m5}");
    s.check_invariants().unwrap();
}

#[test]
fn a_ring_grows_through_classes_and_keeps_every_record_until_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), small_cfg());
    let r = s.create(b"grow", Epoch(5), 1_000).unwrap();
    let other = s.create(b"other", Epoch(6), 1_000).unwrap();
    put(&mut s, other, 1, b"neighbour");
    for i in 1..=60u64 {
        put(&mut s, r, i, &[i as u8; 100]);
        s.check_invariants().unwrap();
    }
    // 60 records of 144 bytes do not fit in 8 KiB: the ring wrapped in its top class.
    let kept = payloads(&s, r, 0);
    assert!(kept.len() < 60 && kept.len() > 8192 / 144 / 2, "{}", kept.len());
    assert_eq!(kept.last().unwrap().0, 60);
    assert!(kept.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    assert!(kept.iter().all(|(seq, p)| p == &vec![*seq as u8; 100]));
    assert!(s.stats().growths >= 4, "{:?}", s.stats());
    assert_eq!(payloads(&s, other, 0), [(1, b"neighbour".to_vec())]);
    drop(s);
    let (s, report) = open(dir.path(), small_cfg());
    assert_eq!(report.rings_kept, 2);
    assert_eq!(report.stale_copies_freed, 0);
    let r = s.lookup(b"grow").unwrap();
    assert_eq!(payloads(&s, r, 0), kept);
    s.check_invariants().unwrap();
}

#[test]
fn max_records_bounds_and_plan_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), small_cfg());
    let r = s.create(b"k", Epoch(9), 3).unwrap();
    for i in 1..=7 {
        put(&mut s, r, i, b"abc");
    }
    assert_eq!(s.len(r), 3);
    assert_eq!(s.first_seq(r), Some(Seq(5)));
    assert!(s.replay_complete(r, Seq(4)));
    assert!(!s.replay_complete(r, Seq(3)));
    s.set_max_records(r, 1).unwrap();
    assert_eq!(payloads(&s, r, 0), [(7, b"abc".to_vec())]);
    drop(s);
    let (s, _) = open(dir.path(), small_cfg());
    let r = s.lookup(b"k").unwrap();
    assert_eq!((s.max_records(r), s.len(r), s.last_seq(r)), (1, 1, Seq(7)));
}

#[test]
fn too_large_record_consumes_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), small_cfg());
    let r = s.create(b"k", Epoch(9), 100).unwrap();
    put(&mut s, r, 1, b"small");
    assert_eq!(put(&mut s, r, 2, &[0; 9000]), Seq(2));
    assert_eq!((s.len(r), s.last_seq(r)), (0, Seq(2)));
    assert!(!s.replay_complete(r, Seq(0)));
    assert!(s.replay_complete(r, Seq(2)));
    assert_eq!(put(&mut s, r, 3, b"next"), Seq(3));
    s.check_invariants().unwrap();
}

#[test]
fn freed_slots_are_reused_and_idle_rings_skip_pinned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), small_cfg());
    let a = s.create(b"a", Epoch(1), 10).unwrap();
    let b = s.create(b"b", Epoch(2), 10).unwrap();
    let c = s.create(b"c", Epoch(3), 10).unwrap();
    put(&mut s, a, 100, b"x");
    put(&mut s, b, 200, b"x");
    put(&mut s, c, 300, b"x");
    s.pin(a);
    let mut idle = s.idle_rings(250);
    idle.sort_by_key(|r| s.key(*r).to_vec());
    assert_eq!(idle, [b]);
    let loc_b = s.rings[b.index as usize].as_ref().unwrap().loc;
    s.free(b).unwrap();
    assert!(!s.is_live(b));
    assert!(matches!(s.append(b, 1, None, b"", 0..0), Err(StoreError::UnknownRing)));
    assert_eq!(s.lookup(b"b"), None);
    let d = s.create(b"d", Epoch(4), 10).unwrap();
    assert_eq!(s.rings[d.index as usize].as_ref().unwrap().loc, loc_b);
    assert_ne!(d, b, "a stale handle never names the new ring");
    s.check_invariants().unwrap();
    drop(s);
    let (s, report) = open(dir.path(), small_cfg());
    assert_eq!(report.rings_kept, 3);
    assert_eq!(s.lookup(b"b"), None);
    assert!(s.lookup(b"d").is_some());
}

#[test]
fn byte_bound_evicts_unpinned_least_recently_appended_first_then_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_total_bytes: Some(4 * 512),
        ..small_cfg()
    };
    let (mut s, _) = open(dir.path(), cfg);
    let ids: Vec<RingId> = (0..4u8)
        .map(|i| s.create(&[b'k', i], Epoch(1 + u64::from(i)), 5).unwrap())
        .collect();
    for (n, &r) in ids.iter().enumerate().rev() {
        put(&mut s, r, n as u64, b"x");
    }
    s.pin(ids[0]);
    // ids[3] was appended first, so it goes first (ids[0] is pinned).
    let e = s.create(b"new1", Epoch(10), 5).unwrap();
    assert_eq!(s.take_evicted(), vec![Box::from(&[b'k', 3][..])]);
    assert!(!s.is_live(ids[3]));
    s.pin(e);
    s.pin(ids[1]);
    s.pin(ids[2]);
    assert!(matches!(s.create(b"new2", Epoch(11), 5), Err(StoreError::Full)));
    assert_eq!(s.stats().evictions, 1);
    s.unpin(ids[2]);
    s.create(b"new2", Epoch(11), 5).unwrap();
    assert_eq!(s.take_evicted(), vec![Box::from(&[b'k', 2][..])]);
    s.check_invariants().unwrap();
}

#[test]
fn every_sync_policy_appends_grows_and_flushes() {
    for sync in [SyncPolicy::Never, SyncPolicy::EveryAppend, SyncPolicy::IntervalMs(0)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig { sync, ..small_cfg() };
        {
            let (mut s, _) = open(dir.path(), cfg);
            let r = s.create(b"k", Epoch(3), 100).unwrap();
            for i in 0..40 {
                put(&mut s, r, i, &[7; 90]);
            }
            s.flush();
            s.sync_all().unwrap();
            assert_eq!(s.stats().background_errors, 0);
        }
        let (s, _) = open(dir.path(), cfg);
        assert_eq!(s.last_seq(s.lookup(b"k").unwrap()), Seq(40));
    }
}

#[test]
fn the_key_sets_the_first_class_and_data_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), small_cfg());
    let short = s.create(b"k", Epoch(1), 1).unwrap();
    let long = s.create(&[b'x'; 512], Epoch(2), 1).unwrap();
    assert_eq!(s.rings[short.index as usize].as_ref().unwrap().class_log2, 9);
    assert_eq!(s.rings[long.index as usize].as_ref().unwrap().class_log2, 10);
    assert_eq!(data_offset(512), 640);
    assert!(matches!(
        s.create(&[b'x'; 513], Epoch(2), 1),
        Err(StoreError::KeyTooLong { len: 513, max: 512 })
    ));
    assert_eq!(s.key(long), &[b'x'; 512][..]);
}
