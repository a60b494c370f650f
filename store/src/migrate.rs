//! Start-up moves of history between layouts: format v1 files into v2 shard stores, and
//! rings between shard stores when the shard count changed. Both keep each ring's epoch
//! and seqs, so clients see `recovered: true` across the upgrade or the resharding.
//!
//! Both run once, before the shards start, and are safe to rerun after a crash: the
//! source copy is removed only after the target copy is complete (and msynced), and a
//! target copy left by an interrupted run is replaced.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::format;
use crate::tombstones;
use crate::{
    Epoch, LogConfig, RingLog, ShardOpenReport, ShardStore, StoreConfig, StoreError, SyncPolicy,
};

/// What [`migrate_v1`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// v1 files carried over (and deleted).
    pub migrated: usize,
    /// Records carried over.
    pub records: u64,
    /// v1 files whose header was unreadable: deleted, their history lost.
    pub unreadable: Vec<PathBuf>,
}

/// What [`reshard`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReshardReport {
    /// Rings moved to their new owner shard.
    pub moved: usize,
    /// Shard directories past the new shard count that were emptied and removed.
    pub dirs_removed: usize,
}

/// One record, owned: ts_ms, uid, payload, data span.
type OwnedRecord = (u64, Option<Vec<u8>>, Vec<u8>, Range<u32>);

/// One ring's contents, owned, for copying between stores.
struct Owned {
    key: Box<[u8]>,
    epoch: Epoch,
    max_records: u32,
    last_seq: u64,
    first_seq: u64,
    records: Vec<OwnedRecord>,
}

/// A data directory's shard stores, each opened once at start-up ([`open_for_start`]).
#[derive(Debug)]
pub struct Started {
    /// The stores of shards `0..shards`.
    pub stores: Vec<ShardStore>,
    /// The format-1 logs carried over.
    pub migrated: MigrateReport,
    /// The rings moved to their owners for the shard count.
    pub resharded: ReshardReport,
}

/// What a server runs before its shards start: opens every shard store under `root`
/// once, and hands `on_open` each one's index and open report as soon as it is open (so
/// what recovery found and repaired is told even when a later step fails; shard
/// indexes at or past `shards` are directories a run with more shards left). Then
/// carries the format-1 logs directly in `root` over ([`migrate_v1`]), moves rings
/// whose owner changed with the shard count ([`reshard`]), and hands on the stores of
/// shards `0..shards` (found in review: start-up opened every store once per step, so
/// each recovery ran two or three times, and what the first found, a ring reset or a
/// segment set aside, was repaired without a word).
pub fn open_for_start(
    root: &Path,
    shards: usize,
    cfg: StoreConfig,
    owner_of: impl Fn(&[u8]) -> usize,
    data_span: impl Fn(&[u8]) -> Range<u32>,
    mut on_open: impl FnMut(usize, &ShardOpenReport),
) -> Result<Started, StoreError> {
    let mut stores = Vec::new();
    for (k, (store, report)) in open_all(root, existing_shards(root, shards), cfg)?
        .into_iter()
        .enumerate()
    {
        on_open(k, &report);
        stores.push(store);
    }
    let migrated = migrate_into(root, &mut stores[..shards], &owner_of, &data_span)?;
    let moved = move_to_owners(&mut stores, shards, &owner_of)?;
    move_tombstones(&mut stores, shards, &owner_of)?;
    let dirs_removed = remove_surplus(root, &mut stores, shards)?;
    Ok(Started {
        stores,
        migrated,
        resharded: ReshardReport {
            moved,
            dirs_removed,
        },
    })
}

/// Carries every `*.rlog` file (format v1) in `v1_dir` into the v2 store of the shard
/// `owner_of(key)` picks (`<root>/shard-<k>`, `k < shards`), with the same epoch and
/// seqs, then deletes the v1 files. `data_span(payload)` gives the span of the JSON
/// `data` inside a stored payload (v1 did not record it).
pub fn migrate_v1(
    v1_dir: &Path,
    root: &Path,
    shards: usize,
    cfg: StoreConfig,
    owner_of: impl Fn(&[u8]) -> usize,
    data_span: impl Fn(&[u8]) -> Range<u32>,
) -> Result<MigrateReport, StoreError> {
    let mut stores: Vec<ShardStore> = open_all(root, shards, cfg)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    migrate_into(v1_dir, &mut stores, &owner_of, &data_span)
}

/// [`migrate_v1`] into stores already open (`stores[k]` is shard `k`'s).
fn migrate_into(
    v1_dir: &Path,
    stores: &mut [ShardStore],
    owner_of: &impl Fn(&[u8]) -> usize,
    data_span: &impl Fn(&[u8]) -> Range<u32>,
) -> Result<MigrateReport, StoreError> {
    let mut report = MigrateReport::default();
    let mut files = Vec::new();
    match std::fs::read_dir(v1_dir) {
        Ok(entries) => {
            for e in entries {
                let path = e.map_err(StoreError::io("list", v1_dir))?.path();
                if path.extension().is_some_and(|x| x == "rlog") {
                    files.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(StoreError::io("list", v1_dir)(e)),
    }
    if files.is_empty() {
        return Ok(report);
    }
    files.sort();
    for path in &files {
        let Some(owned) = read_v1(path, data_span)? else {
            report.unreadable.push(path.clone());
            continue;
        };
        let k = owner_of(&owned.key).min(stores.len() - 1);
        report.records += owned.records.len() as u64;
        put(&mut stores[k], &owned)?;
        report.migrated += 1;
    }
    // Every copy is on disk before any source goes.
    for s in stores.iter_mut() {
        s.sync_all()?;
    }
    for path in files {
        std::fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
    }
    Ok(report)
}

/// Moves every ring found under `<root>/shard-*` whose key `owner_of` now assigns to
/// another shard into that shard's store (same epoch and seqs), and removes shard
/// directories at or past `shards` once empty. Run once at start-up when the shard count
/// may have changed.
pub fn reshard(
    root: &Path,
    shards: usize,
    cfg: StoreConfig,
    owner_of: impl Fn(&[u8]) -> usize,
) -> Result<ReshardReport, StoreError> {
    let mut stores: Vec<ShardStore> = open_all(root, existing_shards(root, shards), cfg)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let moved = move_to_owners(&mut stores, shards, &owner_of)?;
    move_tombstones(&mut stores, shards, &owner_of)?;
    let dirs_removed = remove_surplus(root, &mut stores, shards)?;
    Ok(ReshardReport {
        moved,
        dirs_removed,
    })
}

/// How many shard stores `root` holds: `shards`, or more when a run with more shards
/// left `shard-<k>` directories past them.
fn existing_shards(root: &Path, shards: usize) -> usize {
    let mut existing = shards;
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name();
            if let Some(k) = name
                .to_str()
                .and_then(|n| n.strip_prefix("shard-"))
                .and_then(|n| n.parse::<usize>().ok())
            {
                existing = existing.max(k + 1);
            }
        }
    }
    existing
}

/// [`reshard`]'s moves among open stores (`stores[k]` is shard `k`'s, `shards` of them
/// keep rings): returns how many rings moved.
fn move_to_owners(
    stores: &mut [ShardStore],
    shards: usize,
    owner_of: &impl Fn(&[u8]) -> usize,
) -> Result<usize, StoreError> {
    let mut count = 0;
    for j in 0..stores.len() {
        let keys: Vec<Box<[u8]>> = stores[j].index.keys().cloned().collect();
        // Every ring of `j` that belongs elsewhere is written there first; the targets
        // are msynced once, and only then are the sources freed (found in review: an
        // msync of the whole target per ring made a large reshard take minutes).
        let mut moved = Vec::new();
        let mut targets = vec![false; stores.len()];
        for key in keys {
            let k = owner_of(&key).min(shards - 1);
            if k == j {
                continue;
            }
            let Some(r) = stores[j].lookup(&key) else {
                continue;
            };
            let owned = own(&stores[j], r, key);
            put(&mut stores[k], &owned)?;
            targets[k] = true;
            moved.push(r);
        }
        for (k, touched) in targets.iter().enumerate() {
            if *touched {
                stores[k].sync_all()?;
            }
        }
        for r in moved {
            stores[j].forget(r)?;
            count += 1;
        }
    }
    for s in stores.iter_mut() {
        s.sync_all()?;
    }
    Ok(count)
}

/// Moves tombstones (`tombstones.rs`) to their keys' owner shards, as
/// [`move_to_owners`] did the rings, so a channel let go before a change of `--shards`
/// still goes on numbering. Only when some store holds another's: the files are then
/// rewritten, each with its own.
fn move_tombstones(
    stores: &mut [ShardStore],
    shards: usize,
    owner_of: &impl Fn(&[u8]) -> usize,
) -> Result<(), StoreError> {
    let mut held = Vec::with_capacity(stores.len());
    for s in stores.iter_mut() {
        // Evictions made by the moves queued their tombstones: in the files first.
        s.wait_for_background();
        let path = s.dir.join(tombstones::FILE);
        held.push(tombstones::read(&s.dir).map_err(StoreError::io("read tombstones", path))?);
    }
    let owner = |key: &[u8]| owner_of(key).min(shards - 1);
    let foreign = held
        .iter()
        .enumerate()
        .any(|(j, records)| records.iter().any(|(key, _)| owner(key) != j));
    if !foreign {
        return Ok(());
    }
    let mut by_owner: Vec<Vec<_>> = (0..shards).map(|_| Vec::new()).collect();
    for records in held {
        for (key, t) in records {
            let k = owner(&key);
            if stores[k].lookup(&key).is_none() {
                by_owner[k].push((key, t));
            }
        }
    }
    for (k, records) in by_owner.iter().enumerate() {
        let s = &mut stores[k];
        let path = s.dir.join(tombstones::FILE);
        s.tombstones = tombstones::rewrite(&s.dir, s.cfg.max_tombstones, records)
            .map_err(StoreError::io("write tombstones", path))?;
    }
    Ok(())
}

/// Closes the stores at or past `shards` (emptied by [`move_to_owners`]) and removes
/// their directories; returns how many.
fn remove_surplus(
    root: &Path,
    stores: &mut Vec<ShardStore>,
    shards: usize,
) -> Result<usize, StoreError> {
    let existing = stores.len();
    stores.truncate(shards);
    for j in shards..existing {
        let dir = ShardStore::shard_dir(root, j);
        std::fs::remove_dir_all(&dir).map_err(StoreError::io("remove", &dir))?;
    }
    Ok(existing.saturating_sub(shards))
}

fn open_all(
    root: &Path,
    n: usize,
    cfg: StoreConfig,
) -> Result<Vec<(ShardStore, ShardOpenReport)>, StoreError> {
    if n == 0 {
        return Err(StoreError::InvalidConfig("at least one shard"));
    }
    (0..n)
        .map(|k| ShardStore::open(&ShardStore::shard_dir(root, k), cfg))
        .collect()
}

fn own(s: &ShardStore, r: crate::RingId, key: Box<[u8]>) -> Owned {
    Owned {
        key,
        epoch: s.epoch(r),
        max_records: s.max_records(r),
        last_seq: s.last_seq(r).0,
        first_seq: s.first_seq(r).map_or(s.last_seq(r).0 + 1, |f| f.0),
        records: s
            .iter_after(r, crate::Seq(0))
            .map(|rec| {
                let (a, l) = rec.data_span;
                (
                    rec.ts_ms,
                    rec.uid.map(<[u8]>::to_vec),
                    rec.payload.to_vec(),
                    a..a + l,
                )
            })
            .collect(),
    }
}

/// Writes `o` into `s`, replacing a copy an interrupted earlier run left there, unless
/// that copy is of the same epoch and at least as far ahead (a rerun with another shard
/// count can meet a partial copy after the complete one; found in review: it replaced
/// it, losing acked messages and handing their seqs out again in the same epoch).
fn put(s: &mut ShardStore, o: &Owned) -> Result<(), StoreError> {
    if let Some(old) = s.lookup(&o.key) {
        let ahead = (s.last_seq(old).0, s.len(old)) >= (o.last_seq, o.records.len());
        if s.epoch(old) == o.epoch && ahead {
            return Ok(());
        }
        s.forget(old)?;
    }
    let r = s.create_at(
        &o.key,
        o.epoch,
        o.max_records.max(1),
        o.first_seq - 1,
        crate::shard_store::INITIAL_DATA,
    )?;
    s.pin(r);
    for (seq, (ts, uid, payload, data)) in (o.first_seq..).zip(&o.records) {
        match s.append(r, *ts, uid.as_deref(), payload, data.clone()) {
            // Kept before under a larger `max_bytes_per_ring`, or larger than the slot
            // the node bound leaves this ring: its seq stays consumed and the run breaks
            // there, so a resume from before it is told of the gap.
            Err(StoreError::RecordTooLarge { .. } | StoreError::Full) => {
                s.raise_last_seq(r, crate::Seq(seq))?;
            }
            other => {
                other?;
            }
        }
    }
    s.raise_last_seq(r, crate::Seq(o.last_seq))?;
    s.unpin(r);
    Ok(())
}

/// Reads a v1 file without changing its geometry; `None` if its header is unreadable.
fn read_v1(
    path: &Path,
    data_span: &impl Fn(&[u8]) -> Range<u32>,
) -> Result<Option<Owned>, StoreError> {
    let head = std::fs::read(path).map_err(StoreError::io("read", path))?;
    let Ok(h) = format::read_file_header(&head) else {
        return Ok(None);
    };
    let max_records = format::read_slot(&head, h.epoch).map_or(1_000, |st| st.max_records.max(1));
    let key: Box<[u8]> = h.key.into();
    let cfg = LogConfig {
        // Keep everything the file holds; the plan's bound is restored below.
        max_records: u32::MAX,
        max_bytes: h.data_len,
        sync: SyncPolicy::Never,
    };
    drop(head);
    let (log, report) = RingLog::open(path, &key, &cfg)?;
    if report.new_epoch_reason.is_some() {
        return Ok(None);
    }
    let records = log
        .iter_after(crate::Seq(0))
        .map(|rec| {
            let span = data_span(rec.payload);
            let span = if span.start <= span.end && span.end as usize <= rec.payload.len() {
                span
            } else {
                0..rec.payload.len() as u32
            };
            (
                rec.ts_ms,
                rec.uid.map(<[u8]>::to_vec),
                rec.payload.to_vec(),
                span,
            )
        })
        .collect();
    Ok(Some(Owned {
        key,
        epoch: log.epoch(),
        max_records,
        last_seq: log.last_seq().0,
        first_seq: log.first_seq().map_or(log.last_seq().0 + 1, |f| f.0),
        records,
    }))
}

#[cfg(test)]
mod tests;
