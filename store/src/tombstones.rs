//! Tombstones: the epoch and last seq of rings the store let go by policy (freed as
//! idle, evicted under the node's byte bound), so that the channel's next ring goes on
//! numbering in the same epoch instead of starting again at seq 1.
//!
//! Why: a client that resumes with only `lastEventId` (the official SDK sends no epoch)
//! is read as a position in the current epoch. Had the new ring started at seq 1, a
//! client back after the idle TTL with `lastEventId: 3` would be replayed from seq 4 of
//! the new history, `recovered: true`, having silently missed its seqs 1–3 (found in a
//! SPEC audit). Going on from the old last seq, the new ring's first seq is past what
//! the client has, so the gap shows (`recovered: false`), and a client that had
//! everything before the eviction still resumes with `recovered: true`.
//!
//! In memory, by a 64-bit hash of the key (FNV-1a; a collision would only start a new
//! channel's numbering where the other left off), at most `cap` of them per store, the
//! oldest dropped first. On disk, `<shard dir>/tombstones.log`: one record per
//! tombstone, appended by the background thread (no syscall on the shard's thread),
//! read at open (a later record of a key wins, a torn tail is dropped), and rewritten
//! there without the records a live ring or a later record supersedes.
//!
//! Record: `crc32 (4) | key_len u16 (2) | 0 (2) | epoch u64 (8) | last_seq u64 (8) | key`,
//! little-endian; the CRC covers bytes 4.. of the record.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::path::Path;

use crate::{Epoch, Seq};

/// The file, in a shard's directory.
pub(crate) const FILE: &str = "tombstones.log";
const HEAD: usize = 24;

/// Where a channel whose ring was let go stood in its numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The epoch its next ring keeps.
    pub epoch: Epoch,
    /// The last seq it assigned: its next ring's first record gets the one after.
    pub last_seq: Seq,
}

/// A store's tombstones, in memory.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    /// By key hash: where it stood, and the serial of its entry in `order`.
    map: HashMap<u64, (Tombstone, u32)>,
    /// Oldest first; entries whose serial no longer matches `map` are stale.
    order: VecDeque<(u64, u32)>,
    next_serial: u32,
    cap: usize,
}

impl Tombstones {
    pub(crate) fn new(cap: usize) -> Tombstones {
        Tombstones {
            cap,
            ..Tombstones::default()
        }
    }

    /// Whether tombstones are kept at all (`cap` > 0).
    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Remembers where `key` stood, dropping the oldest past the cap.
    pub(crate) fn insert(&mut self, key: &[u8], stone: Tombstone) {
        if !self.enabled() {
            return;
        }
        let h = hash(key);
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        self.map.insert(h, (stone, serial));
        self.order.push_back((h, serial));
        while self.map.len() > self.cap {
            let Some((old, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|&(_, cur)| cur == s) {
                self.map.remove(&old);
            }
        }
        // Stale entries (keys taken or let go again) go once they outnumber the live.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(h, s)| map.get(h).is_some_and(|&(_, cur)| cur == *s));
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Tombstone> {
        self.map.get(&hash(key)).map(|&(r, _)| r)
    }

    /// Forgets `key` (its channel has a ring again), returning where it stood.
    pub(crate) fn take(&mut self, key: &[u8]) -> Option<Tombstone> {
        self.map.remove(&hash(key)).map(|(r, _)| r)
    }
}

/// FNV-1a, 64 bits: stable across builds (the set is rebuilt from the file at open).
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Record kinds (byte 6).
const KIND_TOMBSTONE: u8 = 0;
const KIND_CONSUMED: u8 = 1;

/// One tombstone record, as appended to the file.
pub(crate) fn encode(key: &[u8], stone: Tombstone) -> Vec<u8> {
    record(key, KIND_TOMBSTONE, stone)
}

/// A record saying `key`'s tombstone was used: a ring goes on from it. Appended (in
/// order with the key's later tombstones) when such a ring is made, so that an open
/// that finds neither that ring nor a later tombstone (a kill before the later one was
/// written, the ring lost to damage) does not bring the older tombstone back: numbering
/// from it would hand out the lost ring's seqs again in the same epoch (found in
/// review). Such a key starts a new epoch at seq 1 instead.
pub(crate) fn encode_consumed(key: &[u8]) -> Vec<u8> {
    let none = Tombstone {
        epoch: Epoch(1),
        last_seq: Seq(0),
    };
    record(key, KIND_CONSUMED, none)
}

fn record(key: &[u8], kind: u8, stone: Tombstone) -> Vec<u8> {
    let key_len = u16::try_from(key.len()).expect("keys are at most 512 bytes");
    let mut rec = Vec::with_capacity(HEAD + key.len());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&key_len.to_le_bytes());
    rec.extend_from_slice(&[kind, 0]);
    rec.extend_from_slice(&stone.epoch.0.to_le_bytes());
    rec.extend_from_slice(&stone.last_seq.0.to_le_bytes());
    rec.extend_from_slice(key);
    let crc = crc32fast::hash(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// A record as read: its key, and its tombstone (`None`: a consumed record).
type Entry<'a> = (&'a [u8], Option<Tombstone>);

/// The records of `bytes`, in order, up to the first torn or damaged one; and whether
/// anything was left after them.
fn decode(bytes: &[u8]) -> (Vec<Entry<'_>>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEAD {
        let rec = &bytes[at..];
        let key_len = usize::from(u16::from_le_bytes([rec[4], rec[5]]));
        if rec.len() < HEAD + key_len {
            break;
        }
        let crc = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
        if crc32fast::hash(&rec[4..HEAD + key_len]) != crc {
            break;
        }
        let word = |i: usize| u64::from_le_bytes(rec[i..i + 8].try_into().expect("8 bytes"));
        let (epoch, last_seq) = (word(8), word(16));
        if epoch == 0 || rec[6] > KIND_CONSUMED {
            break;
        }
        let stone = (rec[6] == KIND_TOMBSTONE).then_some(Tombstone {
            epoch: Epoch(epoch),
            last_seq: Seq(last_seq),
        });
        out.push((&rec[HEAD..HEAD + key_len], stone));
        at += HEAD + key_len;
    }
    (out, at < bytes.len())
}

/// Reads `dir`'s file into a set of at most `cap`, leaving out keys for which `live`
/// says a ring exists, and rewrites the file when that left anything out. Returns the
/// set and whether a torn or damaged tail was dropped. With `cap` 0 the file is removed.
pub(crate) fn load(
    dir: &Path,
    cap: usize,
    live: impl Fn(&[u8]) -> bool,
) -> io::Result<(Tombstones, bool)> {
    let path = dir.join(FILE);
    let mut set = Tombstones::new(cap);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((set, false)),
        Err(e) => return Err(e),
    };
    if cap == 0 {
        std::fs::remove_file(&path)?;
        return Ok((set, false));
    }
    let (records, torn) = decode(&bytes);
    let kept = latest(&records, cap, live);
    for &(key, r) in &kept {
        set.insert(key, r);
    }
    if torn || kept.len() != records.len() {
        let mut out = Vec::new();
        for &(key, r) in &kept {
            out.extend_from_slice(&encode(key, r));
        }
        replace(&path, &out)?;
    }
    Ok((set, torn))
}

/// Of `records` (oldest first), each key's last one, unless it is a consumed record or
/// `live` says the key has a ring, and of those the newest `cap`, in order.
fn latest<'a>(
    records: &[Entry<'a>],
    cap: usize,
    live: impl Fn(&[u8]) -> bool,
) -> Vec<(&'a [u8], Tombstone)> {
    let mut last: HashMap<&[u8], usize> = HashMap::new();
    for (i, (key, _)) in records.iter().enumerate() {
        last.insert(key, i);
    }
    let mut kept: Vec<(&[u8], Tombstone)> = records
        .iter()
        .enumerate()
        .filter(|&(i, (key, _))| last[key] == i && !live(key))
        .filter_map(|(_, &(key, stone))| Some((key, stone?)))
        .collect();
    if kept.len() > cap {
        kept.drain(..kept.len() - cap);
    }
    kept
}

/// Writes `bytes` as the file at `path` through a temporary file and a rename.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Every record of `dir`'s file, as [`load`] left it (one per key, oldest first).
pub(crate) fn read(dir: &Path) -> io::Result<Vec<(Box<[u8]>, Tombstone)>> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (records, _) = decode(&bytes);
    Ok(latest(&records, usize::MAX, |_| false)
        .into_iter()
        .map(|(key, t)| (Box::from(key), t))
        .collect())
}

/// Replaces `dir`'s file with `records` and returns them as a set of at most `cap`
/// (the reshard's moves between stores, before any shard runs).
pub(crate) fn rewrite(
    dir: &Path,
    cap: usize,
    records: &[(Box<[u8]>, Tombstone)],
) -> io::Result<Tombstones> {
    let mut set = Tombstones::new(cap);
    let mut out = Vec::new();
    for (key, t) in records {
        set.insert(key, *t);
        out.extend_from_slice(&encode(key, *t));
    }
    replace(&dir.join(FILE), &out)?;
    Ok(set)
}

/// The background thread's side: appends records to stores' files, and rewrites a file
/// with each key's last record (the newest `cap`) once `cap` more were appended to it
/// since, so a server that runs for months letting channels go keeps it bounded (keys
/// that have a ring again are only dropped at the next open, which knows the rings).
/// A file is opened for each record, so one the start-up replaced is never written
/// through a stale descriptor.
#[derive(Debug, Default)]
pub(crate) struct Appender {
    appended: HashMap<std::path::PathBuf, usize>,
}

impl Appender {
    pub(crate) fn append(&mut self, path: &Path, record: &[u8], cap: usize) -> io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if let Err(e) = file.write_all(record) {
            // A part-written record would hide every later one from `decode` (found in
            // review): cut it off.
            let _ = file.set_len(len);
            return Err(e);
        }
        let appended = self.appended.entry(path.to_path_buf()).or_default();
        *appended += 1;
        if *appended >= cap.max(1) {
            *appended = 0;
            let bytes = std::fs::read(path)?;
            let (records, _) = decode(&bytes);
            let mut out = Vec::new();
            for (key, t) in latest(&records, cap, |_| false) {
                out.extend_from_slice(&encode(key, t));
            }
            replace(path, &out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(epoch: u64, last: u64) -> Tombstone {
        Tombstone {
            epoch: Epoch(epoch),
            last_seq: Seq(last),
        }
    }

    #[test]
    fn a_set_drops_its_oldest_past_the_cap_and_forgets_taken_keys() {
        let mut set = Tombstones::new(2);
        set.insert(b"a", r(1, 3));
        set.insert(b"b", r(2, 4));
        set.insert(b"a", r(1, 5)); // let go again: now the newest
        set.insert(b"c", r(3, 6));
        assert_eq!(set.get(b"b"), None, "the oldest went");
        assert_eq!(set.get(b"a"), Some(r(1, 5)));
        assert_eq!(set.take(b"c"), Some(r(3, 6)));
        assert_eq!(set.get(b"c"), None);
        assert_eq!(set.len(), 1);
        for i in 0..1000u32 {
            set.insert(&i.to_le_bytes(), r(1, 1));
            set.take(&i.to_le_bytes());
        }
        assert!(
            set.order.len() <= 2 * set.len() + 64,
            "stale entries are dropped"
        );
        let mut off = Tombstones::new(0);
        off.insert(b"a", r(1, 1));
        assert_eq!(off.get(b"a"), None);
    }

    #[test]
    fn the_file_keeps_each_keys_last_record_and_drops_a_torn_tail_and_live_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (key, ret) in [
            (&b"a"[..], r(1, 3)),
            (b"b", r(2, 4)),
            (b"a", r(1, 9)),
            (b"live", r(4, 1)),
        ] {
            bytes.extend_from_slice(&encode(key, ret));
        }
        let torn = encode(b"d", r(5, 5));
        bytes.extend_from_slice(&torn[..torn.len() - 1]);
        std::fs::write(dir.path().join(FILE), &bytes).unwrap();
        let (set, was_torn) = load(dir.path(), 10, |k| k == b"live").unwrap();
        assert!(was_torn);
        assert_eq!(set.get(b"a"), Some(r(1, 9)));
        assert_eq!(set.get(b"b"), Some(r(2, 4)));
        assert_eq!(set.get(b"live"), None);
        assert_eq!(set.get(b"d"), None);
        // Rewritten with what was kept, in the order of the last records.
        let again = std::fs::read(dir.path().join(FILE)).unwrap();
        let (records, torn) = decode(&again);
        assert!(!torn);
        assert_eq!(
            records,
            vec![(&b"b"[..], Some(r(2, 4))), (&b"a"[..], Some(r(1, 9)))]
        );
        // Past the cap, the oldest go.
        let (set, _) = load(dir.path(), 1, |_| false).unwrap();
        assert_eq!((set.get(b"a"), set.get(b"b")), (Some(r(1, 9)), None));
    }

    /// Half a record (a kill mid-write; a failed write is cut off by the appender) is
    /// dropped at load and the file rewritten, so later records are read again (found in
    /// review: it hid every later one for good).
    #[test]
    fn a_torn_tail_is_dropped_so_later_records_read_and_a_consumed_record_ends_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut app = Appender::default();
        app.append(&path, &encode(b"a", r(5, 10)), 10).unwrap();
        // What a failed write leaves behind, as the appender's cut would not: a torn tail
        // is dropped at load, and the records before it kept.
        let half = encode(b"a", r(5, 20));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&half[..half.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let (set, torn) = load(dir.path(), 10, |_| false).unwrap();
        assert!(torn);
        assert_eq!(set.get(b"a"), Some(r(5, 10)));
        // Rewritten without the torn tail: a later record is read again.
        app.append(&path, &encode(b"a", r(5, 20)), 10).unwrap();
        let (set, torn) = load(dir.path(), 10, |_| false).unwrap();
        assert!(!torn);
        assert_eq!(set.get(b"a"), Some(r(5, 20)));
        // A consumed record ends the key's tombstone.
        app.append(&path, &encode_consumed(b"a"), 10).unwrap();
        let (set, _) = load(dir.path(), 10, |_| false).unwrap();
        assert_eq!(set.get(b"a"), None);
        assert!(read(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn appended_records_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut app = Appender::default();
        app.append(&path, &encode(b"x", r(7, 70)), 10).unwrap();
        app.append(&path, &encode(b"y", r(8, 80)), 10).unwrap();
        let (set, torn) = load(dir.path(), 10, |_| false).unwrap();
        assert!(!torn);
        assert_eq!(
            (set.get(b"x"), set.get(b"y")),
            (Some(r(7, 70)), Some(r(8, 80)))
        );
        // Past `cap` appends the file is rewritten with each key's last record, the
        // newest `cap` of them: it stays bounded however many rings are let go.
        let len_of = |recs: usize| recs * encode(b"k0", r(1, 1)).len();
        for round in 0..50u64 {
            for k in 0..6u8 {
                app.append(&path, &encode(&[b'k', b'0' + k], r(1, round)), 4)
                    .unwrap();
            }
        }
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(len <= len_of(4 + 4), "{len} bytes");
        let (set, _) = load(dir.path(), 4, |_| false).unwrap();
        assert_eq!(set.get(b"k5"), Some(r(1, 49)), "the newest are kept");
        let (_, _) = load(dir.path(), 0, |_| false).unwrap();
        assert!(!path.exists(), "off: the file goes");
    }
}
