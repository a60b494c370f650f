use super::*;
use crate::{Seq, SyncPolicy};

const CFG: LogConfig = LogConfig {
    max_records: 100,
    max_bytes: 4096,
    sync: SyncPolicy::Never,
};

#[test]
fn file_names_are_stable_escaped_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogDir::new(&dir.path().join("nested/logs")).unwrap();
    assert!(logs.root().is_dir());
    let name = |k: &[u8]| {
        logs.path_for(k)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        name(b"dev/chat:lobby"),
        format!(
            "dev%2Fchat%3Alobby-{:016x}.rlog",
            fnv1a64(b"dev/chat:lobby")
        )
    );
    assert_eq!(name(b"dev/chat:lobby"), name(b"dev/chat:lobby"));
    assert_ne!(name(b"dev/a"), name(b"dev/b"));
    assert!(name(b"..").starts_with("%2E.-"), "no hidden or dot names");
    let long_a = [&[b'/'; 150][..], b"a"].concat();
    let long_b = [&[b'/'; 150][..], b"b"].concat();
    assert!(name(&long_a).len() <= 255);
    assert_ne!(
        name(&long_a),
        name(&long_b),
        "the hash separates keys sharing a long prefix"
    );
    assert_eq!(logs.path_for(b"x").parent(), Some(logs.root()));
    // FNV-1a 64 test vector: file names must not change between versions.
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn a_name_collision_starts_a_new_epoch_instead_of_serving_another_history() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogDir::new(dir.path()).unwrap();
    let (mut a, _) = logs.open(b"t/a", &CFG).unwrap();
    a.append(1, None, b"secret").unwrap();
    drop(a);
    // Pretend "t/b" hashed to the same file.
    let (b, report) = RingLog::open(&logs.path_for(b"t/a"), b"t/b", &CFG).unwrap();
    assert!(report.new_epoch_reason.unwrap().contains("key mismatch"));
    assert_eq!(b.iter_after(Seq(0)).count(), 0);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn thousands_of_logs_leave_no_descriptors_open() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogDir::new(dir.path()).unwrap();
    let before = open_fds();
    let mut kept = Vec::new();
    for i in 0..3_000u32 {
        let key = format!("tenant/channel-{i}");
        let (mut log, report) = logs.open(key.as_bytes(), &CFG).unwrap();
        assert!(report.created);
        log.append(u64::from(i), None, key.as_bytes()).unwrap();
        // Keep a few hundred mapped at once too: mappings, not descriptors.
        if i % 10 == 0 {
            kept.push(log);
        }
    }
    // Other tests run in parallel threads and may hold a few descriptors meanwhile.
    let after = open_fds();
    assert!(
        after <= before + 16,
        "descriptors grew from {before} to {after}"
    );
    assert_eq!(kept.len(), 300);
    assert!(kept.iter().all(|l| l.len() == 1));
    drop(kept);
    let (log, report) = logs.open(b"tenant/channel-2999", &CFG).unwrap();
    assert_eq!((report.created, log.last_seq()), (false, Seq(1)));
    // Sparse files: 3,000 logs of 8 KiB apparent size use about two pages each.
    let disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            use std::os::unix::fs::MetadataExt;
            e.unwrap().metadata().unwrap().blocks() * 512
        })
        .sum();
    assert!(disk <= 3_000 * 2 * 4096, "disk use {disk}");
}

#[test]
fn remove_idle_deletes_only_idle_logs_that_are_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogDir::new(dir.path()).unwrap();
    for (key, ts) in [
        (&b"t/old"[..], 1_000),
        (b"t/fresh", 9_000),
        (b"t/old-but-open", 1_000),
    ] {
        let (mut log, _) = logs.open(key, &CFG).unwrap();
        log.append(ts, None, b"x").unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"not a log").unwrap();
    let removed = logs
        .remove_idle(10_000, 5_000, |k| k == b"t/old-but-open")
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!logs.path_for(b"t/old").exists());
    assert!(logs.path_for(b"t/fresh").exists());
    assert!(logs.path_for(b"t/old-but-open").exists());
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn remove_idle_judges_unwritten_and_unreadable_logs_by_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let logs = LogDir::new(dir.path()).unwrap();
    drop(logs.open(b"t/never", &CFG).unwrap());
    std::fs::write(logs.path_for(b"t/garbage"), b"junk").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(
        logs.remove_idle(now, 60_000, |_| false).unwrap(),
        0,
        "just written"
    );
    assert_eq!(
        logs.remove_idle(now + 120_000, 60_000, |_| false).unwrap(),
        2
    );
}

#[test]
fn chosen_epoch_applies_only_to_a_created_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path()).unwrap();
    let cfg = LogConfig {
        max_records: 10,
        max_bytes: 4096,
        sync: crate::SyncPolicy::Never,
    };
    assert!(!dir.exists(b"k"));
    let (mut log, report) = dir.open_with_epoch(b"k", &cfg, Some(Epoch(77))).unwrap();
    assert!(report.created);
    assert_eq!(log.epoch(), Epoch(77));
    log.append(1, None, b"x").unwrap();
    drop(log);
    assert!(dir.exists(b"k"));
    // An existing log keeps its own epoch whatever the caller proposes.
    let (log, _) = dir.open_with_epoch(b"k", &cfg, Some(Epoch(5))).unwrap();
    assert_eq!((log.epoch(), log.last_seq()), (Epoch(77), crate::Seq(1)));
}
