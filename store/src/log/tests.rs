use proptest::prelude::*;

use super::*;
use crate::fuzzing;

const KEY: &[u8] = b"dev/chat:lobby";

fn cfg(max_records: u32, max_bytes: u64) -> LogConfig {
    LogConfig {
        max_records,
        max_bytes,
        sync: SyncPolicy::Never,
    }
}

fn open(path: &Path, c: &LogConfig) -> (RingLog, OpenReport) {
    RingLog::open(path, KEY, c).expect("open")
}

fn payloads(log: &RingLog, after: u64) -> Vec<(u64, Vec<u8>)> {
    log.iter_after(Seq(after))
        .map(|r| (r.seq.0, r.payload.to_vec()))
        .collect()
}

#[test]
fn append_replay_and_reopen_keep_epoch_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let c = cfg(100, 4096);
    let (mut log, report) = open(&path, &c);
    assert_eq!(
        report,
        OpenReport {
            created: true,
            torn_tail_dropped: 0,
            new_epoch_reason: None
        }
    );
    assert_eq!(
        (log.last_seq(), log.first_seq(), log.len()),
        (Seq(0), None, 0)
    );
    assert!(log.replay_complete(Seq(0)));
    assert_eq!(log.append(10, Some(b"alice"), b"one").unwrap(), Seq(1));
    assert_eq!(log.append(20, None, b"two").unwrap(), Seq(2));
    assert_eq!(log.append(30, None, b"three").unwrap(), Seq(3));
    let epoch = log.epoch();
    assert_eq!(log.last_append_ms(), 30);
    let first = log.iter_after(Seq(0)).next().unwrap();
    assert_eq!(
        (first.seq, first.ts_ms, first.uid, first.payload),
        (Seq(1), 10, Some(&b"alice"[..]), &b"one"[..])
    );
    assert_eq!(
        payloads(&log, 1),
        vec![(2, b"two".to_vec()), (3, b"three".to_vec())]
    );
    assert_eq!(
        log.iter_before(Seq(3), 1)
            .map(|r| r.seq.0)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(
        log.iter_before(Seq(100), 10)
            .map(|r| r.seq.0)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(log.iter_before(Seq(1), 10).count(), 0);
    drop(log);

    let (mut log, report) = open(&path, &c);
    assert_eq!(
        (
            report.created,
            report.torn_tail_dropped,
            report.new_epoch_reason
        ),
        (false, 0, None)
    );
    assert_eq!(
        (log.epoch(), log.last_seq(), log.first_seq(), log.len()),
        (epoch, Seq(3), Some(Seq(1)), 3)
    );
    assert_eq!(log.last_append_ms(), 30);
    assert_eq!(log.append(40, None, b"four").unwrap(), Seq(4));
    assert_eq!(log.verify().unwrap(), 4);
}

#[test]
fn a_lost_file_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let (mut log, _) = open(&path, &cfg(10, 1024));
    log.append(1, None, b"x").unwrap();
    let epoch = log.epoch();
    drop(log);
    std::fs::remove_file(&path).unwrap();
    let (log, report) = open(&path, &cfg(10, 1024));
    assert!(report.created);
    assert_ne!(log.epoch(), epoch);
    assert_eq!(log.last_seq(), Seq(0));
}

#[test]
fn too_large_record_consumes_its_seq_and_empties_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let (mut log, _) = open(&path, &cfg(10, 256));
    log.append(1, None, b"small").unwrap();
    assert_eq!(log.append(2, None, &[0; 300]).unwrap(), Seq(2));
    assert_eq!(
        (log.len(), log.first_seq(), log.last_seq()),
        (0, None, Seq(2))
    );
    assert!(!log.replay_complete(Seq(1)), "seq 2 was never kept");
    assert!(log.replay_complete(Seq(2)));
    assert_eq!(log.append(3, None, b"next").unwrap(), Seq(3));
    assert_eq!(payloads(&log, 0), vec![(3, b"next".to_vec())]);
    drop(log);
    let (log, _) = open(&path, &cfg(10, 256));
    assert_eq!((log.len(), log.last_seq()), (1, Seq(3)));
}

#[test]
fn uid_too_long_is_an_error_and_consumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(&dir.path().join("a.rlog"), &cfg(10, 1 << 20));
    let uid = vec![b'u'; 70_000];
    assert!(matches!(
        log.append(1, Some(&uid), b"x"),
        Err(StoreError::UidTooLong { len: 70_000, .. })
    ));
    assert_eq!(log.last_seq(), Seq(0));
}

#[test]
fn invalid_configs_and_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    assert!(matches!(
        RingLog::open(&path, KEY, &cfg(0, 4096)),
        Err(StoreError::InvalidConfig(_))
    ));
    assert!(matches!(
        RingLog::open(&path, KEY, &cfg(10, 63)),
        Err(StoreError::InvalidConfig(_))
    ));
    assert!(matches!(
        RingLog::open(&path, KEY, &cfg(10, 1 << 33)),
        Err(StoreError::InvalidConfig(_))
    ));
    assert!(matches!(
        RingLog::open(&path, &[0; 3000], &cfg(10, 4096)),
        Err(StoreError::KeyTooLong { .. })
    ));
}

#[test]
fn every_sync_policy_appends_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    for (i, sync) in [
        SyncPolicy::Never,
        SyncPolicy::EveryAppend,
        SyncPolicy::IntervalMs(0),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("{i}.rlog"));
        let c = LogConfig {
            max_records: 4,
            max_bytes: 256,
            sync,
        };
        let (mut log, _) = RingLog::open(&path, KEY, &c).unwrap();
        for n in 0..20u8 {
            log.append(u64::from(n), None, &[n; 40]).unwrap();
        }
        log.flush().unwrap();
        drop(log);
        let (log, report) = RingLog::open(&path, KEY, &c).unwrap();
        assert_eq!((report.new_epoch_reason, log.last_seq()), (None, Seq(20)));
        assert_eq!(log.verify().unwrap(), log.len());
    }
}

fn damaged_header_reason(damage: impl FnOnce(&mut Vec<u8>)) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let c = cfg(10, 1024);
    let (mut log, _) = open(&path, &c);
    log.append(1, None, b"x").unwrap();
    let epoch = log.epoch();
    drop(log);
    let mut file = std::fs::read(&path).unwrap();
    damage(&mut file);
    std::fs::write(&path, &file).unwrap();
    let (mut log, report) = open(&path, &c);
    assert!(!report.created);
    assert_eq!((log.last_seq(), log.len()), (Seq(0), 0));
    assert_eq!(log.append(2, None, b"y").unwrap(), Seq(1));
    (
        report.new_epoch_reason.expect("new epoch"),
        log.epoch() != epoch,
    )
}

#[test]
fn corrupt_header_starts_a_new_epoch_with_a_reason() {
    let (reason, changed) = damaged_header_reason(|f| f[3] ^= 1);
    assert!(reason.contains("bad magic") && changed, "{reason}");
    let (reason, changed) = damaged_header_reason(|f| f[20] ^= 1);
    assert!(reason.contains("checksum") && changed, "{reason}");
    let (reason, _) = damaged_header_reason(|f| f.truncate(100));
    assert!(reason.contains("shorter than its header"), "{reason}");
    let (reason, changed) = damaged_header_reason(|f| {
        f[3072..3200].fill(0x5A);
    });
    assert!(
        reason.contains("no valid state slot") && changed,
        "{reason}"
    );
    let (reason, _) = damaged_header_reason(|f| f.truncate(HEADER_LEN + 100));
    assert!(reason.contains("geometry"), "{reason}");
}

#[test]
fn key_mismatch_and_geometry_change_start_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let (mut log, _) = open(&path, &cfg(10, 1024));
    log.append(1, None, b"x").unwrap();
    let epoch = log.epoch();
    drop(log);
    let (log, report) = RingLog::open(&path, b"other/key", &cfg(10, 1024)).unwrap();
    assert!(report.new_epoch_reason.unwrap().contains("key mismatch"));
    assert_ne!(log.epoch(), epoch);
    drop(log);
    let (mut log, _) = RingLog::open(&path, KEY, &cfg(10, 1024)).unwrap();
    log.append(1, None, b"x").unwrap();
    let epoch = log.epoch();
    drop(log);
    let (log, report) = open(&path, &cfg(10, 2048));
    assert!(report
        .new_epoch_reason
        .unwrap()
        .contains("geometry changed"));
    assert_ne!(log.epoch(), epoch);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        HEADER_LEN as u64 + 2048
    );
}

#[test]
fn fewer_max_records_keeps_the_epoch_and_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let (mut log, _) = open(&path, &cfg(10, 4096));
    for i in 0..8u8 {
        log.append(1, None, &[i]).unwrap();
    }
    let epoch = log.epoch();
    drop(log);
    let (log, report) = open(&path, &cfg(3, 4096));
    assert_eq!(report.new_epoch_reason, None);
    assert_eq!(
        (log.epoch(), log.first_seq(), log.last_seq(), log.len()),
        (epoch, Some(Seq(6)), Seq(8), 3)
    );
    drop(log);
    let (log, _) = open(&path, &cfg(10, 4096));
    assert_eq!(log.len(), 3, "the trim was published");
}

#[test]
fn garbled_published_record_is_dropped_without_reusing_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rlog");
    let (mut log, _) = open(&path, &cfg(10, 4096));
    for i in 0..5u8 {
        log.append(1, None, &[i; 20]).unwrap();
    }
    let last_at = HEADER_LEN + log.ring.offset(4) as usize;
    let epoch = log.epoch();
    drop(log);
    let mut file = std::fs::read(&path).unwrap();
    file[last_at + 40] ^= 0xFF;
    std::fs::write(&path, &file).unwrap();
    let (mut log, report) = open(&path, &cfg(10, 4096));
    assert_eq!(
        (report.torn_tail_dropped, report.new_epoch_reason),
        (1, None)
    );
    assert_eq!((log.epoch(), log.len(), log.last_seq()), (epoch, 4, Seq(5)));
    assert_eq!(
        payloads(&log, 0).last().unwrap().0,
        4,
        "records before the torn one are kept"
    );
    assert!(!log.replay_complete(Seq(2)), "seq 5 is lost");
    assert!(log.replay_complete(Seq(5)));
    assert_eq!(
        log.append(2, None, b"six").unwrap(),
        Seq(6),
        "seq 5 is not reused"
    );
    assert_eq!(
        payloads(&log, 0),
        vec![(6, b"six".to_vec())],
        "kept records stay gap-free"
    );
}

#[test]
fn fuzz_hook_survives_hand_made_corruption() {
    let len = fuzzing::fuzz_file_len();
    let overlay = |at: u16, patch: &[u8]| {
        let mut v = vec![1];
        v.extend_from_slice(&at.to_le_bytes());
        v.extend_from_slice(patch);
        v
    };
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0; len + 1],
        [vec![0], b"RCSTRLOG".to_vec(), vec![0xFF; 200]].concat(),
        overlay(0, b"XX"),
        overlay(8, &[2, 0, 0, 0]),
        overlay(16, &[0xFF; 8]),
        overlay(3072, &[0xFF; 128]),
        overlay(3072 + 8, &[0x10, 0, 0, 0]),
        overlay(HEADER_LEN as u16, &[0; 64]),
        overlay(HEADER_LEN as u16 + 100, &[0xAB; 300]),
        overlay(HEADER_LEN as u16 + 500, &[0xAB; 100]),
        overlay(u16::MAX - 4, &[1, 2, 3, 4]),
    ];
    for input in inputs {
        fuzzing::open_corrupt(&input);
    }
}

/// The bytes `append` changes in the data region, in address order.
fn changed_positions(before: &[u8], after: &[u8]) -> Vec<usize> {
    (HEADER_LEN..after.len())
        .filter(|&i| before[i] != after[i])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Against a model: every kept record is one of the newest appended, byte for byte,
    /// gap-free and ending at last_seq; iter_after / iter_before select exactly by seq;
    /// reopening at any point changes nothing.
    #[test]
    fn matches_a_model_across_appends_and_reopens(
        max_records in 1u32..8,
        max_bytes in 64u64..700,
        ops in prop::collection::vec((0usize..200, any::<bool>(), 0u8..10), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.rlog");
        let c = cfg(max_records, max_bytes);
        let (mut log, _) = open(&path, &c);
        let epoch = log.epoch();
        let mut model: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
        for (len, with_uid, action) in ops {
            if action == 0 {
                drop(log);
                let (l, report) = open(&path, &c);
                prop_assert_eq!(report.new_epoch_reason, None);
                prop_assert_eq!(report.torn_tail_dropped, 0);
                log = l;
            } else {
                let uid = with_uid.then(|| vec![b'u'; len % 7]);
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 + model.len()) as u8).collect();
                let seq = log.append(model.len() as u64, uid.as_deref(), &payload).unwrap();
                model.push((uid, payload));
                prop_assert_eq!(seq.0, model.len() as u64);
            }
            prop_assert_eq!(log.epoch(), epoch);
            prop_assert_eq!(log.last_seq().0, model.len() as u64);
            prop_assert!(log.len() <= max_records as usize);
            let kept: Vec<Record<'_>> = log.iter_after(Seq(0)).collect();
            prop_assert_eq!(kept.len(), log.len());
            if let Some(last) = kept.last() {
                prop_assert_eq!(last.seq, log.last_seq());
            }
            for (i, r) in kept.iter().enumerate() {
                prop_assert_eq!(r.seq.0, kept[0].seq.0 + i as u64);
                let (uid, payload) = &model[r.seq.0 as usize - 1];
                prop_assert_eq!(r.uid, uid.as_deref());
                prop_assert_eq!(r.payload, &payload[..]);
                prop_assert_eq!(r.ts_ms, r.seq.0 - 1);
            }
            let last = log.last_seq().0;
            for after in [0, last / 2, last.saturating_sub(1), last, last + 3] {
                let want: Vec<u64> = kept.iter().map(|r| r.seq.0).filter(|&s| s > after).collect();
                let got: Vec<u64> = log.iter_after(Seq(after)).map(|r| r.seq.0).collect();
                prop_assert_eq!(got, want);
                let mut before: Vec<u64> = kept.iter().map(|r| r.seq.0).filter(|&s| s < after).collect();
                before.drain(..before.len().saturating_sub(2));
                let got: Vec<u64> = log.iter_before(Seq(after), 2).map(|r| r.seq.0).collect();
                prop_assert_eq!(got, before);
            }
            prop_assert_eq!(log.verify().unwrap(), log.len());
        }
    }

    /// A process killed while `append` wrote its record leaves some prefix of the new
    /// bytes in the page cache, with the header published before (plus the eviction
    /// publish, if any) or torn. Reopen keeps every record that was kept before the
    /// append (minus what it evicted), and the new record only if it is complete.
    #[test]
    fn reopen_after_every_prefix_of_a_torn_append_keeps_earlier_records(
        max_records in 2u32..8,
        lens in prop::collection::vec(0usize..120, 1..20),
        new_len in 0usize..120,
        torn_slot_bytes in 0usize..64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.rlog");
        let c = cfg(max_records, 512);
        let (mut log, _) = open(&path, &c);
        for (i, &len) in lens.iter().enumerate() {
            log.append(i as u64, None, &vec![i as u8; len]).unwrap();
        }
        let n = log.last_seq().0;
        let before_kept = payloads(&log, 0);
        let slot_before = log.generation;
        let a = std::fs::read(&path).unwrap();
        log.append(99, Some(b"id"), &vec![0xEE; new_len]).unwrap();
        let evicted = log.generation - slot_before == 2;
        let after_kept = payloads(&log, 0);
        let b = std::fs::read(&path).unwrap();
        drop(log);
        // Records from before the append that the append did not evict.
        let survivors: Vec<_> = after_kept.iter().filter(|r| r.0 <= n).cloned().collect();
        prop_assert!(before_kept.ends_with(&survivors));

        // The header as a crash during the data writes leaves it: the old state, plus the
        // eviction publish (generation + 1) if there was one.
        let mut mid = a.clone();
        if evicted {
            let st = format::read_slot(&b, read_epoch(&b)).unwrap();
            let slot = format::SLOT_AT[((st.generation - 1) % 2) as usize];
            mid[slot..slot + 64].copy_from_slice(&b[slot..slot + 64]);
        }
        let changed = changed_positions(&a, &b);
        let step = (changed.len() / 24).max(1);
        let mut cuts: Vec<usize> = (0..=changed.len()).step_by(step).collect();
        cuts.push(changed.len());
        for cut in cuts {
            let mut file = mid.clone();
            for &i in &changed[..cut] {
                file[i] = b[i];
            }
            // Tear the final publish too: a prefix of the last slot write lands.
            if cut == changed.len() {
                let st = format::read_slot(&b, read_epoch(&b)).unwrap();
                let slot = format::SLOT_AT[(st.generation % 2) as usize];
                file[slot..slot + torn_slot_bytes].copy_from_slice(&b[slot..slot + torn_slot_bytes]);
            }
            std::fs::write(&path, &file).unwrap();
            let (log, report) = open(&path, &c);
            prop_assert_eq!(report.new_epoch_reason, None);
            prop_assert_eq!(report.torn_tail_dropped, 0);
            let got = payloads(&log, 0);
            if log.last_seq().0 == n + 1 {
                prop_assert_eq!(&got, &after_kept, "a recovered append is the complete record");
            } else {
                prop_assert_eq!(log.last_seq().0, n);
                prop_assert_eq!(&got[got.len() - survivors.len()..], &survivors[..]);
                if !evicted {
                    prop_assert_eq!(&got, &before_kept);
                }
            }
            if cut == changed.len() {
                prop_assert_eq!(log.last_seq().0, n + 1, "complete bytes are adopted even without the publish");
            }
            prop_assert_eq!(log.verify().unwrap(), log.len());
        }
    }

    /// Random damage anywhere in the file never panics and never yields a record that
    /// fails its checksum (the fuzz target's invariants, on proptest's inputs).
    #[test]
    fn random_damage_keeps_invariants(input in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::open_corrupt(&input);
    }
}

fn read_epoch(file: &[u8]) -> u64 {
    format::read_file_header(file).unwrap().epoch
}
