//! Hooks for `fuzz/` (cargo-fuzz targets are thin shells over these) and for the unit
//! tests that run the same checks on hand-made inputs. Not part of the stable API.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::HEADER_LEN;
use crate::{Epoch, LogConfig, RingLog, Seq, ShardStore, StoreConfig, SyncPolicy};

const KEY: &[u8] = b"fuzz-tenant/fuzz-channel";

/// The config every hook uses: small enough that a few appends wrap the ring.
pub const FUZZ_CONFIG: LogConfig = LogConfig {
    max_records: 6,
    max_bytes: 512,
    sync: SyncPolicy::Never,
};

/// Builds a valid log, lets `bytes` damage its file, reopens it and checks invariants.
///
/// Input layout: byte 0 selects the mode. Even: the rest of the input replaces the
/// whole file. Odd: bytes 1..3 are a little-endian offset into the file and the rest is
/// written over the file from there (extending it if needed).
///
/// Panics if an invariant fails: the reopened log's records must have strictly
/// increasing, gap-free seqs ending at or before `last_seq`, pass their checksums, number
/// at most `max_records`; an append must get `last_seq + 1` and survive another reopen
/// with the same epoch.
pub fn open_corrupt(bytes: &[u8]) {
    let path = scratch_path();
    let _cleanup = RemoveOnDrop(path.clone());
    {
        let (mut log, _) = RingLog::open(&path, KEY, &FUZZ_CONFIG).expect("create scratch log");
        for i in 0..9u64 {
            let payload = vec![i as u8; 10 + (i as usize * 13) % 70];
            let uid = (i % 2 == 0).then_some(&b"user"[..]);
            log.append(1_000 + i, uid, &payload)
                .expect("append to scratch log");
        }
    }
    let mut file = std::fs::read(&path).expect("read scratch log");
    match bytes.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => file = rest.to_vec(),
        Some((_, rest)) if rest.len() >= 2 => {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let patch = &rest[2..];
            if file.len() < at + patch.len() {
                file.resize(at + patch.len(), 0);
            }
            file[at..at + patch.len()].copy_from_slice(patch);
        }
        _ => {}
    }
    std::fs::write(&path, &file).expect("write damaged log");
    check_reopened(&path);
}

/// Opens the log at `path` with [`FUZZ_CONFIG`] and asserts the invariants listed on
/// [`open_corrupt`].
pub fn check_reopened(path: &std::path::Path) {
    let Ok((mut log, report)) = RingLog::open(path, KEY, &FUZZ_CONFIG) else {
        // The only failures left are I/O ones; nothing to check.
        return;
    };
    assert_eq!(
        log.verify().expect("every kept record passes its checksum"),
        log.len()
    );
    assert!(log.len() <= FUZZ_CONFIG.max_records as usize);
    let seqs: Vec<u64> = log.iter_after(Seq(0)).map(|r| r.seq.0).collect();
    assert_eq!(seqs.len(), log.len());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free: {seqs:?}"
    );
    assert_eq!(seqs.first().copied(), log.first_seq().map(|s| s.0));
    if let Some(&newest) = seqs.last() {
        assert!(newest <= log.last_seq().0);
    }
    if report.new_epoch_reason.is_some() {
        assert_eq!(log.last_seq(), Seq(0));
    }
    let (epoch, last) = (log.epoch(), log.last_seq());
    let seq = log
        .append(9_999, None, b"after")
        .expect("append after reopen");
    assert_eq!(seq.0, last.0 + 1);
    assert_eq!(
        log.iter_after(last).next().map(|r| r.payload),
        Some(&b"after"[..])
    );
    drop(log);
    let (log, report) = RingLog::open(path, KEY, &FUZZ_CONFIG).expect("reopen after append");
    assert_eq!(report.new_epoch_reason, None);
    assert_eq!((log.epoch(), log.last_seq()), (epoch, seq));
    assert_eq!(log.iter_after(last).next().map(|r| r.seq), Some(seq));
}

/// The file length `FUZZ_CONFIG` gives.
pub fn fuzz_file_len() -> usize {
    HEADER_LEN + FUZZ_CONFIG.max_bytes as usize
}

fn scratch_path() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "ringcast-store-fuzz-{}-{n}.rlog",
        std::process::id()
    ))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The store config the format v2 hooks use: tiny segments (8 slots of 512 B) and a
/// small byte bound, so a few appends spread rings over several classes and segments.
pub fn fuzz_store_config() -> StoreConfig {
    StoreConfig {
        max_bytes_per_ring: 2048,
        max_total_bytes: None,
        sync: SyncPolicy::Never,
        segment_bytes: 4096,
        max_tombstones: crate::DEFAULT_TOMBSTONES,
    }
}

/// Builds a valid shard store (several rings, some grown into bigger classes), lets
/// `bytes` damage one of its segment files, reopens it and checks invariants.
///
/// Input layout: byte 0 picks the segment file (`byte0 / 2` modulo their number) and
/// the mode (`byte0 % 2`). Mode 0: the rest replaces the whole file. Mode 1: bytes 1..3
/// are a little-endian offset into the file and the rest is written over it from there
/// (extending the file if needed).
///
/// Panics if an invariant fails: every ring left verifies (checksums, gap-free seqs),
/// holds at most `max_records`, occupies a slot no other ring uses and no free list
/// holds (`ShardStore::check_invariants`); an append to every ring gets `last_seq + 1`,
/// and a second reopen keeps every ring's epoch and seq.
pub fn open_corrupt_segment(bytes: &[u8]) {
    let dir = scratch_path().with_extension("d");
    let _cleanup = RemoveDirOnDrop(dir.clone());
    let cfg = fuzz_store_config();
    {
        let (mut s, _) = ShardStore::open(&dir, cfg).expect("create scratch store");
        for k in 0..6u8 {
            let key = [b'f', b'/', k];
            let r = s.create(&key, Epoch(1 + u64::from(k)), 5).expect("create");
            for i in 0..u64::from(k) * 3 {
                let payload = vec![k; 10 + (i as usize * 37) % 200];
                let uid = (i % 2 == 0).then_some(&b"user"[..]);
                s.append(r, 1_000 + i, uid, &payload, 0..payload.len() as u32)
                    .expect("append to scratch store");
            }
        }
        if let Some(r) = s.lookup(&[b'f', b'/', 0]) {
            s.free(r).expect("free");
        }
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("list scratch store")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    if let Some((&sel, rest)) = bytes.split_first() {
        let path = &segs[usize::from(sel / 2) % segs.len()];
        let mut file = std::fs::read(path).expect("read segment");
        if sel % 2 == 0 {
            file = rest.to_vec();
        } else if rest.len() >= 2 {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let patch = &rest[2..];
            if file.len() < at + patch.len() {
                file.resize(at + patch.len(), 0);
            }
            file[at..at + patch.len()].copy_from_slice(patch);
        }
        std::fs::write(path, &file).expect("write damaged segment");
    }
    check_reopened_store(&dir, cfg);
}

/// Opens the store in `dir` and asserts the invariants listed on
/// [`open_corrupt_segment`].
pub fn check_reopened_store(dir: &std::path::Path, cfg: StoreConfig) {
    let Ok((mut s, _report)) = ShardStore::open(dir, cfg) else {
        // Only I/O failures are left; nothing to check.
        return;
    };
    s.check_invariants().expect("store invariants after damage");
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut expect = Vec::new();
    for k in 0..=255u8 {
        let key = [b'f', b'/', k];
        let Some(r) = s.lookup(&key) else { continue };
        assert_eq!(s.verify(r).expect("every kept record verifies"), s.len(r));
        assert!(s.len(r) <= s.max_records(r) as usize);
        let seqs: Vec<u64> = s.iter_after(r, Seq(0)).map(|rec| rec.seq.0).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "gap-free: {seqs:?}"
        );
        assert_eq!(seqs.first().copied(), s.first_seq(r).map(|f| f.0));
        if let Some(&newest) = seqs.last() {
            assert!(newest <= s.last_seq(r).0);
        }
        let last = s.last_seq(r);
        let seq = s
            .append(r, 9_999, None, b"after", 0..5)
            .expect("append after reopen");
        assert_eq!(seq.0, last.0 + 1);
        assert_eq!(
            s.iter_after(r, last).next().map(|rec| rec.payload),
            Some(&b"after"[..])
        );
        keys.push(key.to_vec());
        expect.push((s.epoch(r), seq));
    }
    s.check_invariants()
        .expect("store invariants after appends");
    drop(s);
    let (s, report) = ShardStore::open(dir, cfg).expect("reopen after append");
    assert!(report.rings_reset.is_empty(), "{report:?}");
    for (key, want) in keys.iter().zip(expect) {
        let r = s.lookup(key).expect("ring kept across reopen");
        assert_eq!((s.epoch(r), s.last_seq(r)), want);
    }
}

struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
