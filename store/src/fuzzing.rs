//! Hooks for `fuzz/` (cargo-fuzz targets are thin shells over these) and for the unit
//! tests that run the same checks on hand-made inputs. Not part of the stable API.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::HEADER_LEN;
use crate::{LogConfig, RingLog, Seq, SyncPolicy};

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
