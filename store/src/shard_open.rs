//! `ShardStore::open`: map the segment files, recover every slot, rebuild the index.
//!
//! The only directory scan of the v2 store. Recovery rules (`docs/store-format.md`):
//! a slot whose header fails its checksum is free; a ring found in two slots (a move
//! interrupted after the new slot was complete) keeps the copy with the higher move
//! counter, then the higher last_seq, and the other slot is freed; a ring whose state
//! cannot be trusted is dropped and reported, so its channel starts a new epoch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::chunked_vec::ChunkedVec;
use crate::mmap::SegmentMap;
use crate::shard_store::{Class, RingMeta, ShardStore, SlotLoc, StoreConfig};
use crate::slot_format::{self, MAX_CLASS_LOG2, MIN_CLASS_LOG2};
use crate::slot_recover::{self, Recovered};
use crate::space::Space;
use crate::split_map::SplitMap;
use crate::tombstones::{self, Tombstones};
use crate::SyncPolicy;
use crate::{Epoch, StoreError, StoreStats};

/// What [`ShardStore::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardOpenReport {
    /// Rings recovered with their epoch and history.
    pub rings_kept: usize,
    /// Published records dropped because they failed to verify (power loss or outside
    /// damage; a killed process loses at most its in-flight append and reports 0).
    pub torn_tail_dropped: u64,
    /// Rings whose history could not be trusted and was dropped, with the reason; their
    /// channels will be created fresh (new epoch).
    pub rings_reset: Vec<(Box<[u8]>, String)>,
    /// Older copies left by a move to a bigger slot that was interrupted, now freed.
    pub stale_copies_freed: usize,
    /// Segment files mapped.
    pub segments: usize,
    /// Segment files set aside (renamed to `*.corrupt`) because their header was
    /// unreadable, with the reason. Their rings are lost.
    pub segments_discarded: Vec<(PathBuf, String)>,
    /// Tombstones read back (channels let go by policy that go on numbering).
    pub tombstones: usize,
    /// The tombstone file ended in a torn or damaged record, dropped (a kill or power
    /// loss mid-append); those channels' next rings start a new epoch.
    pub tombstones_tail_dropped: bool,
}

struct Candidate {
    loc: SlotLoc,
    log2: u8,
    epoch: u64,
    moves: u32,
    last_seq: u64,
}

impl ShardStore {
    /// Opens (creating if absent) the store in `dir` (one shard's directory, e.g.
    /// [`ShardStore::shard_dir`]): maps every segment, recovers every ring, starts the
    /// background thread. The directory must belong to this store alone.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<(ShardStore, ShardOpenReport), StoreError> {
        if cfg.max_bytes_per_ring < 2 * slot_format::WRAP_LEN as u64
            || cfg.max_bytes_per_ring > 1 << 30
        {
            return Err(StoreError::InvalidConfig(
                "max_bytes_per_ring must be between 64 bytes and 1 GiB",
            ));
        }
        if cfg.segment_bytes == 0 {
            return Err(StoreError::InvalidConfig("segment_bytes must be nonzero"));
        }
        std::fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        let space = Space::start().map_err(StoreError::io("start thread", dir))?;
        let mut store = ShardStore {
            dir: dir.to_path_buf(),
            cfg,
            max_data: cfg.max_bytes_per_ring / slot_format::ALIGN * slot_format::ALIGN,
            segments: Vec::new(),
            classes: (MIN_CLASS_LOG2..=MAX_CLASS_LOG2)
                .map(|_| Class::default())
                .collect(),
            rings: ChunkedVec::new(),
            ring_generations: ChunkedVec::new(),
            free_ids: Vec::new(),
            pinned_rings: 0,
            pinned_bytes: 0,
            index: SplitMap::new(),
            clock: 0,
            used_bytes: 0,
            evict_queue: Vec::new(),
            evicted: Vec::new(),
            stats: StoreStats::default(),
            space,
            pending: 0,
            last_sync: Instant::now(),
            space_error: None,
            sync_sent: 0,
            sync_answered: 0,
            sync_done: 0,
            retiring: Vec::new(),
            freed_unsynced: Vec::new(),
            tombstones: Tombstones::new(0),
            #[cfg(test)]
            evict_scans: 0,
            #[cfg(test)]
            journal: None,
        };
        let mut report = ShardOpenReport::default();
        let mut candidates: HashMap<Box<[u8]>, Vec<Candidate>> = HashMap::new();
        for (path, log2, number) in segment_files(dir)? {
            let map = match SegmentMap::open_existing(&path) {
                Ok(map) => map,
                // Created, then the process died before its header was written.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    set_aside(&path, "empty file", &mut report)?;
                    continue;
                }
                Err(e) => return Err(StoreError::io("open", &path)(e)),
            };
            if let Some(found) = slot_format::newer_version(map.bytes()) {
                // Not damage: a newer binary wrote it. Setting it aside would lose the
                // history on a rollback (found in review).
                return Err(StoreError::NewerFormat {
                    path,
                    found,
                    supported: slot_format::SEG_VERSION,
                });
            }
            let header = match slot_format::read_segment_header(map.bytes()) {
                Ok(h) if h.class_log2 == log2 && h.number == number => h,
                Ok(_) => {
                    set_aside(
                        &path,
                        "class or number differs from the file name",
                        &mut report,
                    )?;
                    continue;
                }
                Err(why) => {
                    set_aside(&path, why, &mut report)?;
                    continue;
                }
            };
            let hw = slot_format::read_high_water(map.bytes())
                .unwrap_or(header.slot_count)
                .min(header.slot_count);
            // Page-sized slots are holes past their first page, used or not: no read-ahead
            // anywhere in such a segment (the scan below touches one page per slot and
            // gains nothing from it). Otherwise only the never-used tail is holes.
            let holes_from = if header.page_sized_slots() {
                0
            } else {
                header.slot_at(hw)
            };
            map.no_read_ahead_from(holes_from);
            let seg = store.add_segment(path, header, map, hw);
            let ci = usize::from(log2 - MIN_CLASS_LOG2);
            let bytes = store.segments[seg as usize].map.bytes();
            for slot in (0..hw).rev() {
                let at = header.slot_at(slot);
                let loc = SlotLoc { seg, slot };
                let s = &bytes[at..at + header.class_size()];
                match slot_format::read_slot_header(s, log2) {
                    Some(h) => {
                        let last_seq =
                            slot_format::read_state(s, h.epoch).map_or(0, |st| st.last_seq);
                        candidates.entry(h.key.into()).or_default().push(Candidate {
                            loc,
                            log2,
                            epoch: h.epoch,
                            moves: h.moves,
                            last_seq,
                        });
                    }
                    None => store.classes[ci].free.push(loc),
                }
            }
        }
        report.segments = store.segments.len();
        for (key, mut cands) in candidates {
            cands.sort_by_key(|c| std::cmp::Reverse((c.moves, c.last_seq)));
            match store.choose_copy(&key, &cands) {
                Ok((best, rec)) => {
                    report.rings_kept += 1;
                    report.torn_tail_dropped += u64::from(rec.torn);
                    store.adopt(&key, &cands[best], rec);
                    for (i, c) in cands.iter().enumerate() {
                        if i != best {
                            store.free_at_open(c.loc, c.log2);
                            report.stale_copies_freed += 1;
                        }
                    }
                }
                Err(why) => {
                    for c in &cands {
                        store.free_at_open(c.loc, c.log2);
                    }
                    report.rings_reset.push((key, why.to_owned()));
                }
            }
        }
        let small = store.class_for(0, 0);
        if store.classes[usize::from(small - MIN_CLASS_LOG2)].free_count() == 0 {
            store.create_segment_now(small)?;
        }
        // Rings whose keys do not fit the smallest class start in the next one: the
        // background thread makes its space now, before the first publish needs it.
        store.prepare_ahead(small);
        let (tombstones, torn) =
            tombstones::load(dir, cfg.max_tombstones, |key| store.index.contains_key(key))
                .map_err(StoreError::io(
                    "read tombstones",
                    dir.join(tombstones::FILE),
                ))?;
        store.tombstones = tombstones;
        report.tombstones = store.tombstones.len();
        report.tombstones_tail_dropped = torn;
        Ok((store, report))
    }

    /// Which copy of a key's ring to keep (`cands` ranked by move count, then last
    /// seq): the first that recovers, unless it lost records its state published and a
    /// lower copy of the same epoch keeps a later record. That is a ring whose move to a
    /// bigger slot reached the disk only in part (the new slot's state page but not all
    /// of its data) while its old slot, kept intact until then (`IntervalMs`), still
    /// holds every record. Seqs any copy of the epoch published stay consumed.
    fn choose_copy(
        &self,
        key: &[u8],
        cands: &[Candidate],
    ) -> Result<(usize, Recovered), &'static str> {
        let mut best: Option<(usize, Recovered)> = None;
        let mut last_reason = "no copy recovered";
        // Per candidate: whether its state recovered (only those count for the seqs
        // published).
        let mut recovered = vec![false; cands.len()];
        for (i, c) in cands.iter().enumerate() {
            let rec = match self.recover_copy(key, c) {
                Ok(rec) => rec,
                Err(why) => {
                    last_reason = why;
                    continue;
                }
            };
            recovered[i] = true;
            match &best {
                None => {
                    let whole = rec.torn == 0;
                    best = Some((i, rec));
                    if whole {
                        break;
                    }
                }
                Some((b, kept)) => {
                    let newest = |r: &Recovered| r.ring.newest_kept_seq().unwrap_or(0);
                    if c.epoch == cands[*b].epoch && newest(&rec) > newest(kept) {
                        best = Some((i, rec));
                    }
                }
            }
        }
        let (i, mut rec) = best.ok_or(last_reason)?;
        // Copies not tried count too (an older copy can be ahead: a growth whose msync
        // failed left a newer copy behind, and appends went on in the old slot), as far
        // as their verified state's last seq is sane.
        let published = cands
            .iter()
            .enumerate()
            .filter(|&(j, c)| c.epoch == cands[i].epoch && (recovered[j] || j > i))
            .map(|(_, c)| c.last_seq)
            .filter(|&seq| seq < u64::MAX / 2)
            .max()
            .unwrap_or(0);
        if published > rec.ring.last_seq() {
            rec.ring.raise_last_seq(published);
            rec.dirty = true;
        }
        Ok((i, rec))
    }

    /// Rebuilds one copy's ring from its slot, without keeping it.
    fn recover_copy(&self, key: &[u8], c: &Candidate) -> Result<Recovered, &'static str> {
        let seg = &self.segments[c.loc.seg as usize];
        let at = seg.header.slot_at(c.loc.slot);
        let slot = &seg.map.bytes()[at..at + (1 << c.log2)];
        let h = slot_format::read_slot_header(slot, c.log2).ok_or("slot header changed")?;
        let st = slot_format::read_state(slot, c.epoch).ok_or("no valid state slot")?;
        let data_off = slot_format::data_offset(key.len());
        let data = &slot[data_off..data_off + h.data_len as usize];
        slot_recover::recover(data, c.epoch, &st)
    }

    /// Keeps the ring recovered from copy `c`.
    fn adopt(&mut self, key: &[u8], c: &Candidate, rec: Recovered) {
        let data_off = slot_format::data_offset(key.len());
        let meta = RingMeta {
            ring: rec.ring,
            loc: c.loc,
            epoch: Epoch(c.epoch),
            last_append_ms: rec.last_append_ms,
            touch: rec.last_append_ms,
            generation: rec.generation,
            moves: c.moves,
            max_records: rec.max_records,
            data_off: data_off as u32,
            class_log2: c.log2,
            pinned: false,
        };
        let idx = self.rings.len();
        self.rings.push(Some(meta));
        self.ring_generations.push(0);
        self.index.insert(key.into(), idx as u32);
        self.used_bytes += 1 << c.log2;
        self.clock = self.clock.max(rec.last_append_ms);
        if rec.dirty {
            self.publish(idx);
            if self.cfg.sync == SyncPolicy::EveryAppend {
                // A raised last seq must stay consumed after a power loss too.
                if self.sync_state(idx).is_err() {
                    self.stats.background_errors += 1;
                }
            }
        }
    }

    fn free_at_open(&mut self, loc: SlotLoc, log2: u8) {
        self.free_slot_bytes(loc, log2);
        self.classes[usize::from(log2 - MIN_CLASS_LOG2)]
            .free
            .push(loc);
    }
}

/// `c<log2>-<number>.seg` files in `dir`, sorted; removes leftover `*.seg.tmp` files (a
/// creation the background thread did not finish).
fn segment_files(dir: &Path) -> Result<Vec<(PathBuf, u8, u32)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
        let path = entry.map_err(StoreError::io("list", dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".seg.tmp") {
            std::fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            continue;
        }
        if let Some((log2, number)) = parse_name(name) {
            out.push((path, log2, number));
        }
    }
    out.sort();
    Ok(out)
}

/// The class and number of a segment file name `c<log2:02>-<number:06>.seg`.
pub(crate) fn parse_name(name: &str) -> Option<(u8, u32)> {
    let rest = name.strip_prefix('c')?.strip_suffix(".seg")?;
    let (log2, number) = rest.split_once('-')?;
    let number = number.parse::<u32>().ok()?;
    let log2: u8 = log2.parse().ok()?;
    (MIN_CLASS_LOG2..=MAX_CLASS_LOG2)
        .contains(&log2)
        .then_some((log2, number))
}

fn set_aside(path: &Path, why: &str, report: &mut ShardOpenReport) -> Result<(), StoreError> {
    let to = path.with_extension("seg.corrupt");
    std::fs::rename(path, &to).map_err(StoreError::io("rename", path))?;
    report.segments_discarded.push((to, why.to_owned()));
    Ok(())
}
