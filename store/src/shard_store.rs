//! `ShardStore`: every channel history of one shard, as rings in shared segment files.
//!
//! A ring lives in one fixed-size slot of a segment file that holds slots of one size
//! class (512 B, 1 KiB, … powers of two). It starts in the smallest class that fits and
//! moves to a bigger slot when it would otherwise evict by bytes while below its record
//! bound. Write order of an append is the one of format version 1 (record first, state
//! second); write order of a move is "new slot complete, then old slot freed". The byte
//! format and the recovery rules are in `docs/store-format.md` ("Format version 2").
//!
//! Opening segments, recovering slots and rebuilding the index is in `shard_open.rs`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::chunked_vec::ChunkedVec;
use crate::mmap::SegmentMap;
use crate::ring::{Plan, Ring};
use crate::slot_format::{
    self, NewRecord, SegmentHeader, SlotHeader, State, MAX_CLASS_LOG2, MAX_KEY_LEN, MIN_CLASS_LOG2,
    REC_HEADER_LEN, WRAP_LEN,
};
use crate::space::{self, Done, Job, Space};
use crate::split_map::SplitMap;
use crate::tombstones::{self, Tombstone, Tombstones};
use crate::{Epoch, Record, Seq, StoreError, SyncPolicy};

/// A new ring starts in the smallest class with at least this many data bytes.
pub(crate) const INITIAL_DATA: u64 = 128;
/// How many eviction candidates one scan of the rings collects (oldest first).
const EVICT_BATCH: usize = 1024;
/// How far ahead of a segment's high-water mark its pages are faulted in (at least one
/// slot; [`ShardStore::populate_ahead`]). Those pages are dirtied with zeros, so this is
/// also about the most disk a segment holds past its used slots.
const POPULATE_AHEAD_BYTES: usize = 256 * 1024;

/// Bounds, durability and sizing of one [`ShardStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Size of a ring's data region in its largest slot (record headers and padding
    /// count). A ring never holds more than this many bytes of records.
    pub max_bytes_per_ring: u64,
    /// Bound on the slot bytes in use by all rings of this store (the node bound divided
    /// by the shard count). Creating or growing a ring past it evicts unpinned rings,
    /// least recently appended first. `None`: unbounded.
    pub max_total_bytes: Option<u64>,
    /// When appends reach the disk.
    pub sync: SyncPolicy,
    /// Target size of one segment file (virtual; files are sparse). A segment holds
    /// `segment_bytes / slot size` slots, at least 4.
    pub segment_bytes: u64,
    /// How many channels whose rings were let go by policy (freed as idle, evicted under
    /// the byte bound) keep their epoch and last seq, so that their next ring goes on
    /// numbering (`tombstones.rs`); the oldest go first past it. 0: none do (their next
    /// ring starts a new epoch at seq 1).
    pub max_tombstones: usize,
}

/// [`StoreConfig::max_tombstones`] by default: about 26 MB of memory per store when full
/// (a review measured 102 MB per store at 1,048,576 in a release build: the map's and
/// the age queue's capacity doubling).
pub const DEFAULT_TOMBSTONES: usize = 1 << 18;

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_bytes_per_ring: 1 << 20,
            max_total_bytes: None,
            sync: SyncPolicy::Never,
            segment_bytes: 64 << 20,
            max_tombstones: DEFAULT_TOMBSTONES,
        }
    }
}

/// Handle on one ring of a [`ShardStore`]. Stays valid when the ring moves to a bigger
/// slot; becomes stale when the ring is freed or evicted (then methods returning
/// `Result` answer [`StoreError::UnknownRing`] and the others panic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingId {
    index: u32,
    generation: u32,
}

/// Counters for the engine's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Rings held.
    pub rings: usize,
    /// Of which pinned.
    pub pinned: usize,
    /// Slot bytes in use (what `max_total_bytes` bounds).
    pub bytes_used: u64,
    /// Segment files mapped.
    pub segments: usize,
    /// Virtual bytes mapped (all segments' lengths).
    pub bytes_mapped: u64,
    /// Times a create or growth had to wait for the background thread to make space.
    pub space_waits: u64,
    /// Rings evicted to stay under `max_total_bytes`.
    pub evictions: u64,
    /// Moves of a ring to a bigger slot.
    pub growths: u64,
    /// Segment files created by the background thread.
    pub segments_prepared: u64,
    /// Background msyncs or segment creations that failed.
    pub background_errors: u64,
    /// Records appended (their seqs consumed) but not kept. Stays 0: `append` refuses
    /// what it cannot keep, before it takes a seq ([`StoreError::RecordTooLarge`], or
    /// [`StoreError::Full`] when the node bound leaves no room to grow), so every seq
    /// it hands out is a kept record. Kept for the engine's
    /// `ringcast_history_records_not_kept_total`, which graphs stay on.
    pub records_not_kept: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SlotLoc {
    pub seg: u32,
    pub slot: u32,
}

/// A slot a ring moved out of under `IntervalMs`, kept intact until the background
/// msync that covers the ring's new slot has completed: the kernel may write the old
/// segment's pages back before the new one's, and a power loss in between would find
/// neither copy. Open keeps the copy with the higher move count.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retiring {
    pub loc: SlotLoc,
    pub log2: u8,
    /// Index of the ring that moved (its slot is released early if it is removed).
    pub ring: u32,
    /// The `Sync` job whose completion makes the new slot durable.
    pub after_sync: u64,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub map: SegmentMap,
    pub header: SegmentHeader,
    pub path: PathBuf,
    /// File byte range written since the last flush.
    pub dirty: Option<(usize, usize)>,
    /// Fresh slots below this one have had their pages asked for ahead of need
    /// ([`ShardStore::populate_ahead`]).
    pub populated_to: u32,
}

/// Free space of one size class.
#[derive(Debug, Default)]
pub(crate) struct Class {
    /// Slots freed (or found free at open), reused first.
    pub free: Vec<SlotLoc>,
    /// Never-used slots: (segment, next, end).
    pub fresh: Vec<(u32, u32, u32)>,
    /// Segments of this class the background thread is preparing.
    pub preparing: u32,
    pub next_number: u32,
}

impl Class {
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
            + self
                .fresh
                .iter()
                .map(|&(_, n, e)| (e - n) as usize)
                .sum::<usize>()
    }
}

/// In-memory state of one ring: what `append` needs without reading the mapping.
#[derive(Debug)]
pub(crate) struct RingMeta {
    pub ring: Ring,
    pub loc: SlotLoc,
    pub epoch: Epoch,
    pub last_append_ms: u64,
    /// Logical clock of the last create/append, for least-recently-appended eviction.
    pub touch: u64,
    pub generation: u32,
    pub moves: u32,
    pub max_records: u32,
    pub data_off: u32,
    pub class_log2: u8,
    pub pinned: bool,
}

/// Every channel history of one shard. Owned by that shard's thread (`Send`, not shared).
#[derive(Debug)]
pub struct ShardStore {
    pub(crate) dir: PathBuf,
    pub(crate) cfg: StoreConfig,
    pub(crate) max_data: u64,
    pub(crate) segments: Vec<Segment>,
    /// Indexed by `class_log2 - MIN_CLASS_LOG2`.
    pub(crate) classes: Vec<Class>,
    /// By ring index, in chunks: a new ring never moves the others.
    pub(crate) rings: ChunkedVec<Option<RingMeta>>,
    pub(crate) ring_generations: ChunkedVec<u32>,
    pub(crate) free_ids: Vec<u32>,
    /// Rings with `pinned` set (kept here so the counters need no scan of every ring).
    pub(crate) pinned_rings: usize,
    /// Slot bytes of the rings with `pinned` set: what no eviction can free, so that
    /// `make_room` refuses at once what it could not get (no scan, nothing evicted).
    pub(crate) pinned_bytes: u64,
    pub(crate) index: SplitMap<Box<[u8]>, u32>,
    pub(crate) clock: u64,
    pub(crate) used_bytes: u64,
    pub(crate) evict_queue: Vec<(u64, u32, u32)>,
    pub(crate) evicted: Vec<Box<[u8]>>,
    pub(crate) stats: StoreStats,
    pub(crate) space: Space,
    pub(crate) pending: u32,
    pub(crate) last_sync: Instant,
    /// The last segment creation that failed, with its class.
    pub(crate) space_error: Option<(u8, StoreError)>,
    /// Serial of the last `Sync` job sent, of the last one answered, and of the last
    /// one answered as done.
    pub(crate) sync_sent: u64,
    pub(crate) sync_answered: u64,
    pub(crate) sync_done: u64,
    pub(crate) retiring: Vec<Retiring>,
    /// `EveryAppend`: freed slot headers not yet msynced, by segment and offset. They
    /// are msynced before the next `create`, so a key never comes back in a new slot
    /// while an old copy of it could still be read from the disk.
    pub(crate) freed_unsynced: Vec<(u32, usize)>,
    /// Where channels whose rings were let go by policy stood (`tombstones.rs`).
    pub(crate) tombstones: Tombstones,
    /// Scans of every ring for eviction candidates (tests count them).
    #[cfg(test)]
    pub(crate) evict_scans: u64,
    #[cfg(test)]
    pub(crate) journal: Option<Vec<(PathBuf, usize, Vec<u8>)>>,
}

impl ShardStore {
    /// The directory of shard `k` under `root`: `<root>/shard-<k>`.
    pub fn shard_dir(root: &Path, k: usize) -> PathBuf {
        root.join(format!("shard-{k}"))
    }

    /// The ring holding `key`'s history, if any.
    pub fn lookup(&self, key: &[u8]) -> Option<RingId> {
        self.index.get(key).map(|&i| self.id_of(i))
    }

    /// Whether a ring for `key` could ever keep a record of `payload_len` bytes with a
    /// `uid_len`-byte user id: [`StoreError::RecordTooLarge`] if not. Asked before
    /// [`ShardStore::create`] for a first record, so a record no ring could keep makes no
    /// ring (which might evict another for it).
    pub fn check_first_record(
        &self,
        key: &[u8],
        uid_len: usize,
        payload_len: usize,
    ) -> Result<(), StoreError> {
        if uid_len > usize::from(u16::MAX) {
            return Err(StoreError::UidTooLong {
                len: uid_len,
                max: usize::from(u16::MAX),
            });
        }
        let len = slot_format::record_len(uid_len, payload_len);
        let max = self.data_len(self.top_class(key.len()), key.len());
        if len > max {
            return Err(StoreError::RecordTooLarge { len, max });
        }
        Ok(())
    }

    /// Creates an empty ring for `key` (opaque, at most 512 bytes) with `epoch` and
    /// record bound `max_records` (at least 1). Fails with [`StoreError::KeyExists`] if
    /// the key has a ring, [`StoreError::Full`] if the byte bound leaves no room even
    /// after evicting every unpinned ring. Waits (counted in
    /// [`StoreStats::space_waits`]) only if the background thread has no slot ready.
    /// A key with a tombstone (its ring let go by policy) keeps the tombstone's epoch
    /// instead, and its first record gets the seq after the tombstone's.
    pub fn create(
        &mut self,
        key: &[u8],
        epoch: Epoch,
        max_records: u32,
    ) -> Result<RingId, StoreError> {
        let (epoch, after) = self.continued(key, epoch, 0);
        let ring = self.create_at(key, epoch, max_records, after, INITIAL_DATA)?;
        self.consumed(key, after);
        Ok(ring)
    }

    /// A key let go by policy goes on numbering where it stood (`tombstones.rs`), unless
    /// the caller took its tombstone and says where (`after` > 0).
    fn continued(&self, key: &[u8], epoch: Epoch, after: u64) -> (Epoch, u64) {
        match self.tombstones.get(key) {
            Some(t) if after == 0 => (t.epoch, t.last_seq.0),
            _ => (epoch, after),
        }
    }

    /// Like `create`, for a ring whose first record has a `uid_len`-byte user id and a
    /// `payload_len`-byte payload: refused as [`ShardStore::check_first_record`] would,
    /// and made in a class that holds the record, so the room asked of the byte bound
    /// is the room the record needs (found in review: a create evicted another ring for
    /// an initial slot, then the append could not grow and was refused).
    pub fn create_for_record(
        &mut self,
        key: &[u8],
        epoch: Epoch,
        max_records: u32,
        uid_len: usize,
        payload_len: usize,
    ) -> Result<RingId, StoreError> {
        self.create_for_record_after(key, epoch, max_records, Seq(0), uid_len, payload_len)
    }

    /// Like `create_for_record`, for a key whose numbering stood at `after` in `epoch`
    /// (a [`ShardStore::take_tombstone`]): its first record gets seq `after + 1`.
    pub fn create_for_record_after(
        &mut self,
        key: &[u8],
        epoch: Epoch,
        max_records: u32,
        after: Seq,
        uid_len: usize,
        payload_len: usize,
    ) -> Result<RingId, StoreError> {
        self.check_first_record(key, uid_len, payload_len)?;
        let len = slot_format::record_len(uid_len, payload_len);
        let (epoch, after) = self.continued(key, epoch, after.0);
        let ring = self.create_at(key, epoch, max_records, after, len.max(INITIAL_DATA))?;
        self.consumed(key, after);
        Ok(ring)
    }

    /// Where `key`'s numbering stood when its ring was let go by policy, if it was and
    /// its tombstone is still kept. Its next `create` goes on from there.
    pub fn tombstone(&self, key: &[u8]) -> Option<Tombstone> {
        self.tombstones.get(key)
    }

    /// Like [`ShardStore::tombstone`], and forgets it (in memory; the file keeps it until
    /// the next open finds the key's ring): for a caller that will create the ring with
    /// [`ShardStore::create_for_record_after`], or give it back with
    /// [`ShardStore::put_tombstone`], so that no other eviction's cap drops it meanwhile.
    pub fn take_tombstone(&mut self, key: &[u8]) -> Option<Tombstone> {
        self.tombstones.take(key)
    }

    /// Gives back a tombstone [`ShardStore::take_tombstone`] took, its ring not created.
    pub fn put_tombstone(&mut self, key: &[u8], stone: Tombstone) {
        if self.lookup(key).is_none() {
            self.tombstones.insert(key, stone);
        }
    }

    /// Tombstones kept in memory.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Ring `idx` is let go by policy: where its numbering stood is kept, in memory and
    /// (by the background thread) in the file.
    fn bury(&mut self, key: &[u8], stone: Tombstone) {
        if !self.tombstones.enabled() {
            return;
        }
        self.tombstones.insert(key, stone);
        self.append_tombstone_record(tombstones::encode(key, stone));
    }

    /// Queues `record` for the background thread's append to the tombstone file.
    fn append_tombstone_record(&mut self, record: Vec<u8>) {
        let path = self.dir.join(tombstones::FILE);
        let cap = self.cfg.max_tombstones;
        if !self.space.send(Job::Tombstone { path, record, cap }) {
            self.stats.background_errors += 1;
        }
    }

    /// A ring was made for `key` going on from a tombstone (`after` > 0): the file gets
    /// a consumed record, so the tombstone cannot come back at an open that finds
    /// neither this ring nor a later tombstone (`tombstones::encode_consumed`).
    fn consumed(&mut self, key: &[u8], after: u64) {
        if after == 0 || !self.tombstones.enabled() {
            return;
        }
        self.append_tombstone_record(tombstones::encode_consumed(key));
    }

    /// Waits until the background thread has done every job queued so far (start-up
    /// only: a reshard reads the tombstone files that evictions during its moves append
    /// to; found in review).
    pub(crate) fn wait_for_background(&mut self) {
        if !self.space.send(Job::Barrier) {
            return;
        }
        while let Some(done) = self.space.recv() {
            if matches!(done, Done::Barrier) {
                break;
            }
            self.install(done);
        }
    }

    /// Where ring `idx`'s numbering stands.
    fn stone_of(&self, idx: usize) -> Tombstone {
        let m = self.rings[idx].as_ref().expect("live ring");
        Tombstone {
            epoch: m.epoch,
            last_seq: Seq(m.ring.last_seq()),
        }
    }

    /// Like `create`, but the first append gets seq `last_seq_before + 1` (migration),
    /// in the smallest class with `data` bytes of records.
    pub(crate) fn create_at(
        &mut self,
        key: &[u8],
        epoch: Epoch,
        max_records: u32,
        last_seq_before: u64,
        data: u64,
    ) -> Result<RingId, StoreError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        if max_records == 0 || epoch.0 == 0 {
            return Err(StoreError::InvalidConfig(
                "max_records and epoch must be nonzero",
            ));
        }
        if self.index.contains_key(key) {
            return Err(StoreError::KeyExists);
        }
        self.sync_freed()?;
        self.poll_space();
        let log2 = self.class_for(key.len(), data.max(INITIAL_DATA));
        if !self.make_room(1 << log2, None) {
            return Err(StoreError::Full);
        }
        let loc = self.alloc_slot(log2)?;
        let data_off = slot_format::data_offset(key.len());
        let data_len = self.data_len(log2, key.len());
        let ring = Ring::empty_at(data_len, last_seq_before);
        self.clock += 1;
        let meta = RingMeta {
            ring,
            loc,
            epoch,
            last_append_ms: 0,
            touch: self.clock,
            generation: 0,
            moves: 0,
            max_records,
            data_off: data_off as u32,
            class_log2: log2,
            pinned: false,
        };
        self.write_new_slot(&meta, key, None);
        let index = match self.free_ids.pop() {
            Some(i) => i,
            None => {
                self.rings.push(None);
                self.ring_generations.push(0);
                (self.rings.len() - 1) as u32
            }
        };
        let mut meta = meta;
        meta.generation = 1;
        self.rings[index as usize] = Some(meta);
        self.index.insert(key.into(), index);
        self.tombstones.take(key);
        self.used_bytes += 1 << log2;
        if self.cfg.sync == SyncPolicy::EveryAppend {
            if let Err(e) = self.sync_slot(loc, log2) {
                // Not created after all: the caller's next create of the key may retry.
                self.remove(index as usize);
                return Err(e);
            }
        }
        Ok(self.id_of(index))
    }

    /// Appends one record, assigning seq = last_seq + 1. `data` is the span of the
    /// message's `data` inside `payload` (kept for [`Record::data`]).
    ///
    /// Grows the ring into a bigger slot instead of evicting by bytes while it is below
    /// `max_records` and its largest slot; evicts the oldest records otherwise. A record
    /// too large for the largest slot is refused with [`StoreError::RecordTooLarge`];
    /// one larger than the ring's current slot that the byte bound leaves no room to
    /// grow for, with [`StoreError::Full`]. Either takes no seq and changes nothing.
    /// The [`RingId`] stays valid.
    pub fn append(
        &mut self,
        ring: RingId,
        ts_ms: u64,
        uid: Option<&[u8]>,
        payload: &[u8],
        data: Range<u32>,
    ) -> Result<Seq, StoreError> {
        let idx = self.check(ring)?;
        let uid_len = uid.map_or(0, <[u8]>::len);
        if uid_len > usize::from(u16::MAX) {
            return Err(StoreError::UidTooLong {
                len: uid_len,
                max: usize::from(u16::MAX),
            });
        }
        if data.start > data.end || data.end as usize > payload.len() {
            return Err(StoreError::DataSpan {
                start: data.start,
                end: data.end,
                payload_len: payload.len(),
            });
        }
        if payload.len() > u32::MAX as usize / 2 {
            return Err(StoreError::InvalidConfig("payload larger than 2 GiB"));
        }
        if self.pending > 0 {
            self.poll_space();
        }
        let len = slot_format::record_len(uid_len, payload.len());
        let plan = self.plan_or_grow(idx, len);
        if matches!(plan, None | Some(Plan::TooLarge)) {
            // Off the common path (the record fits the slot as it is): one that no slot
            // of this ring could hold is refused before it takes a seq, so the ring
            // keeps what it has (found in review: consuming the seq emptied the ring of
            // an acked publish's neighbours, and the publish itself was not kept).
            let max = self.max_record_len(idx);
            if len > max {
                return Err(StoreError::RecordTooLarge { len, max });
            }
        }
        let plan = match plan {
            Some(plan) => plan,
            None => {
                // Moved or not (the node's byte bound may leave no room), the placement
                // is computed afresh: not moved, the ring evicts its own oldest records.
                self.grow(idx, len)?;
                let m = self.rings[idx].as_ref().expect("live ring");
                m.ring.plan(len, m.max_records)
            }
        };
        let Plan::Store { evict, at, wrap_at } = plan else {
            // Larger than the ring's slot, and the node bound left no room to grow it:
            // refused before it takes a seq, as a create at the bound is (the engine
            // answers `overloaded`), so the ring keeps what it has and nothing is acked
            // that is not kept (found in review: the seq was consumed and the ring
            // emptied, and the engine acked the message).
            return Err(StoreError::Full);
        };
        let rec = NewRecord {
            seq: 0,
            ts_ms,
            uid,
            payload,
            data: (data.start, data.end - data.start),
        };
        self.append_in_place(idx, rec, len, (evict, at, wrap_at))
    }

    /// Writes `rec` (`len` bytes) where `ring.plan` placed it: `(evict, at, wrap_at)` of
    /// its `Plan::Store`.
    fn append_in_place(
        &mut self,
        idx: usize,
        mut rec: NewRecord<'_>,
        len: u64,
        (evict, at, wrap_at): (usize, u64, Option<u64>),
    ) -> Result<Seq, StoreError> {
        self.clock += 1;
        let clock = self.clock;
        let m = self.meta_mut(idx);
        let seq = m.ring.last_seq() + 1;
        rec.seq = seq;
        m.last_append_ms = rec.ts_ms;
        m.touch = clock;
        if evict > 0 {
            let ring = &self.rings[idx].as_ref().expect("live ring").ring;
            // Some records stay and the new bytes land where the old state calls free:
            // at its tail, or at 0 behind a wrap (marked or implicit) there, which is
            // where open looks for an unpublished record. A kill before the final publish
            // then leaves an adoptable record, and open evicts the excess as this append
            // would. An append that evicts every record may place its record anywhere,
            // so it publishes the empty ring first.
            let into_free = evict < ring.len()
                && ring.is_free(at, len)
                && wrap_at.is_none_or(|w| ring.is_free(w, WRAP_LEN as u64));
            self.meta_mut(idx).ring.evict(evict);
            if !into_free {
                // The new head must be published (with `EveryAppend`: durable) before
                // evicted records are overwritten.
                self.publish(idx);
                if self.cfg.sync == SyncPolicy::EveryAppend {
                    self.sync_state(idx)?;
                }
            }
        }
        let m = self.rings[idx].as_ref().expect("live ring");
        let (loc, data_off, epoch) = (m.loc, m.data_off as usize, m.epoch.0);
        let seg = &mut self.segments[loc.seg as usize];
        let base = seg.header.slot_at(loc.slot) + data_off;
        if let Some(w) = wrap_at {
            let w = base + w as usize;
            slot_format::write_wrap(&mut seg.map.bytes_mut()[w..w + WRAP_LEN], epoch, seq);
            self.touched(loc.seg, w..w + WRAP_LEN);
        }
        let seg = &mut self.segments[loc.seg as usize];
        let r = base + at as usize..base + (at + len) as usize;
        slot_format::write_record(&mut seg.map.bytes_mut()[r.clone()], epoch, &rec);
        self.touched(loc.seg, r);
        self.meta_mut(idx).ring.push(at, len);
        self.publish(idx);
        self.sync_after_append(idx, Some((at, len, wrap_at)))?;
        Ok(Seq(seq))
    }

    /// Whether an append of `len` bytes should first move the ring to a bigger slot.
    #[cfg(test)]
    fn wants_growth(&self, idx: usize, len: u64) -> bool {
        self.plan_or_grow(idx, len).is_none()
    }

    /// The placement of an append of `len` bytes in the ring's current slot, or `None`
    /// when the ring should first move to a bigger slot.
    fn plan_or_grow(&self, idx: usize, len: u64) -> Option<Plan> {
        let m = self.rings[idx].as_ref().expect("live ring");
        let plan = m.ring.plan(len, m.max_records);
        // Any key length with the same padded data offset gives the same classes.
        let key_len = m.data_off as usize - slot_format::SLOT_HEADER_LEN;
        let top = self.top_class(key_len);
        if m.class_log2 >= top {
            // A ring given a smaller region under an earlier, smaller
            // `max_bytes_per_ring` of the same class moves to a fresh slot of its class
            // with the whole region when a record fits only there (found in review: it
            // refused, or before that emptied, what new channels took).
            let smaller = m.class_log2 == top && m.ring.data_len() < self.data_len(top, key_len);
            if smaller && matches!(plan, Plan::TooLarge) {
                return None;
            }
            return Some(plan);
        }
        let broken_run = m
            .ring
            .newest_kept_seq()
            .is_some_and(|s| s != m.ring.last_seq());
        if broken_run && !matches!(plan, Plan::TooLarge) {
            // A run broken by lost records restarts; that is not byte pressure. A record
            // larger than the slot still grows it (found in review: it took its seq and
            // was not kept).
            return Some(plan);
        }
        let count_evict = (m.ring.len() + 1).saturating_sub(m.max_records as usize);
        match plan {
            Plan::TooLarge => None,
            Plan::Store { evict, .. } if evict > count_evict => None,
            Plan::Store { .. } => Some(plan),
        }
    }

    /// Moves ring `idx` into a slot big enough for its kept records plus `len` bytes.
    /// Returns false (ring stays) if the byte bound leaves no room.
    fn grow(&mut self, idx: usize, len: u64) -> Result<bool, StoreError> {
        let m = self.rings[idx].as_ref().expect("live ring");
        let key_len = m.data_off as usize - slot_format::SLOT_HEADER_LEN;
        let old_log2 = m.class_log2;
        let old_loc = m.loc;
        let count = m.ring.len();
        // A broken run restarts at this append (see `Ring::plan`): nothing of it is
        // copied, so the room asked for is the new record's (found in review).
        let broken_run = (m.ring.newest_kept_seq()).is_some_and(|s| s != m.ring.last_seq());
        let keep_from = if broken_run {
            count
        } else {
            (count + 1)
                .saturating_sub(m.max_records as usize)
                .min(count)
        };
        let old_data = self.data_of(m);
        let mut bytes = 0;
        for i in keep_from..count {
            bytes += slot_format::record_len_at(old_data, m.ring.offset(i));
        }
        let need = bytes + len;
        let log2 = self
            .class_for(key_len, need)
            .max(old_log2 + 1)
            .min(self.top_class(key_len));
        let data_len = self.data_len(log2, key_len);
        // The same class only for a region larger than the ring's (see `plan_or_grow`).
        let same_class = log2 == old_log2 && data_len > m.ring.data_len();
        if (log2 <= old_log2 && !same_class) || data_len < len {
            return Ok(false);
        }
        let extra = (1u64 << log2) - (1u64 << old_log2);
        // A same-class move adds nothing: it asks for no room (found in review: over a
        // node bound lowered since, it evicted other channels for nothing).
        if extra > 0 && !self.make_room(extra, Some(idx as u32)) {
            return Ok(false);
        }
        let loc = self.alloc_slot(log2)?;
        // Copy the kept records, oldest first, to the start of the new data region.
        let m = self.rings[idx].as_ref().expect("live ring");
        let first_kept = m.ring.first_seq().map_or(0, |f| f + keep_from as u64);
        let mut ring = Ring::empty_at(
            data_len,
            if keep_from < count {
                first_kept - 1
            } else {
                m.ring.last_seq()
            },
        );
        let old_at = self.segments[old_loc.seg as usize]
            .header
            .slot_at(old_loc.slot)
            + m.data_off as usize;
        let new_at = self.segments[loc.seg as usize].header.slot_at(loc.slot) + m.data_off as usize;
        let mut pos = 0u64;
        for i in keep_from..count {
            let at = m.ring.offset(i);
            let src = self.segments[old_loc.seg as usize].map.bytes();
            let rl = slot_format::record_len_at(&src[old_at..], at);
            let from = old_at + at as usize;
            let to = new_at + pos as usize;
            let (src_seg, dst_seg) = (old_loc.seg as usize, loc.seg as usize);
            copy_between(
                &mut self.segments,
                (src_seg, from),
                (dst_seg, to),
                rl as usize,
            );
            ring.push(pos, rl);
            pos += rl;
        }
        ring.raise_last_seq(m.ring.last_seq());
        let moved = RingMeta {
            ring,
            loc,
            epoch: m.epoch,
            last_append_ms: m.last_append_ms,
            touch: m.touch,
            generation: m.generation,
            moves: m.moves.wrapping_add(1),
            max_records: m.max_records,
            data_off: m.data_off,
            class_log2: log2,
            pinned: m.pinned,
        };
        let key: Box<[u8]> = self.key_at(old_loc, old_log2).into();
        if pos > 0 {
            self.touched(loc.seg, new_at..new_at + pos as usize);
        }
        self.write_new_slot(&moved, &key, Some(pos));
        if self.cfg.sync == SyncPolicy::EveryAppend {
            if let Err(e) = self.sync_slot(loc, log2) {
                // The ring stays in its old slot: the new copy must not outrank it at
                // the next open (it has the higher move count), and it may be on disk
                // already, so its release is msynced now (best effort).
                self.release_slot(loc, log2);
                if self.sync_freed().is_err() {
                    self.stats.background_errors += 1;
                }
                return Err(e);
            }
        }
        // Only now is the old copy redundant: in memory, and (but with `IntervalMs`, on
        // disk) as far as this policy promises.
        if matches!(self.cfg.sync, SyncPolicy::IntervalMs(_)) {
            self.retiring.push(Retiring {
                loc: old_loc,
                log2: old_log2,
                ring: idx as u32,
                after_sync: self.sync_sent + 1,
            });
        } else {
            self.release_slot(old_loc, old_log2);
        }
        let mut moved = moved;
        moved.generation = moved.generation.wrapping_add(1);
        if moved.pinned {
            self.pinned_bytes += extra;
        }
        self.rings[idx] = Some(moved);
        self.used_bytes += extra;
        self.stats.growths += 1;
        Ok(true)
    }

    /// Writes a slot for `m` (key, cleared tail, state generation + 1, header last) at
    /// `m.loc`. `records_end` is where copied records end (`None`: empty ring).
    fn write_new_slot(&mut self, m: &RingMeta, key: &[u8], records_end: Option<u64>) {
        let size = 1usize << m.class_log2;
        let seg_i = m.loc.seg;
        let seg = &mut self.segments[seg_i as usize];
        let at = seg.header.slot_at(m.loc.slot);
        let data_off = m.data_off as usize;
        let data_len = m.ring.data_len() as usize;
        let generation = m.generation.wrapping_add(1);
        let slot = &mut seg.map.bytes_mut()[at..at + size];
        slot_format::write_key(slot, key);
        // No stale entry of an earlier occupant may sit where recovery looks for an
        // unpublished append.
        let end = records_end.unwrap_or(0) as usize;
        let clear = end..(end + REC_HEADER_LEN).min(data_len);
        slot[data_off + clear.start..data_off + clear.end].fill(0);
        let st = state_of(m, generation);
        slot_format::clear_state(slot, generation.wrapping_add(1));
        slot_format::write_state(slot, m.epoch.0, &st);
        self.touched(seg_i, at..at + data_off + clear.end);
        let seg = &mut self.segments[seg_i as usize];
        let slot = &mut seg.map.bytes_mut()[at..at + size];
        slot_format::write_slot_header(
            slot,
            &SlotHeader {
                class_log2: m.class_log2,
                epoch: m.epoch.0,
                moves: m.moves,
                data_len: data_len as u32,
                key,
            },
        );
        self.touched(seg_i, at..at + slot_format::FREE_LEN);
    }

    /// Changes a ring's record bound (plan change); evicts the oldest records if it
    /// holds more. `n` is raised to at least 1.
    pub fn set_max_records(&mut self, ring: RingId, n: u32) -> Result<(), StoreError> {
        let idx = self.check(ring)?;
        let m = self.meta_mut(idx);
        m.max_records = n.max(1);
        let excess = m.ring.len().saturating_sub(m.max_records as usize);
        m.ring.evict(excess);
        self.publish(idx);
        Ok(())
    }

    /// Raises last_seq without keeping records (migration: seqs consumed in v1).
    pub(crate) fn raise_last_seq(&mut self, ring: RingId, to: Seq) -> Result<(), StoreError> {
        let idx = self.check(ring)?;
        self.meta_mut(idx).ring.raise_last_seq(to.0);
        self.publish(idx);
        Ok(())
    }

    /// Whether `ring` is a live handle (not freed or evicted).
    pub fn is_live(&self, ring: RingId) -> bool {
        self.check(ring).is_ok()
    }

    /// The epoch of the ring's history.
    pub fn epoch(&self, ring: RingId) -> Epoch {
        self.meta(ring).epoch
    }

    /// Latest assigned seq (0 if nothing was appended in this epoch).
    pub fn last_seq(&self, ring: RingId) -> Seq {
        Seq(self.meta(ring).ring.last_seq())
    }

    /// Seq of the oldest record still kept.
    pub fn first_seq(&self, ring: RingId) -> Option<Seq> {
        self.meta(ring).ring.first_seq().map(Seq)
    }

    /// Number of kept records.
    pub fn len(&self, ring: RingId) -> usize {
        self.meta(ring).ring.len()
    }

    /// The ring's record bound.
    pub fn max_records(&self, ring: RingId) -> u32 {
        self.meta(ring).max_records
    }

    /// `ts_ms` of the newest append (0 if none), for idle TTL.
    pub fn last_append_ms(&self, ring: RingId) -> u64 {
        self.meta(ring).last_append_ms
    }

    /// The key the ring was created with (borrowed from the mapping).
    pub fn key(&self, ring: RingId) -> &[u8] {
        let m = self.meta(ring);
        self.key_at(m.loc, m.class_log2)
    }

    /// Number of rings held.
    pub fn ring_count(&self) -> usize {
        self.index.len()
    }

    /// True when every seq in `(after, last_seq]` is kept, so a replay with
    /// `iter_after(after)` loses nothing (the protocol's `recovered`).
    pub fn replay_complete(&self, ring: RingId, after: Seq) -> bool {
        let r = &self.meta(ring).ring;
        let last = r.last_seq();
        if after.0 >= last {
            return after.0 == last;
        }
        match (r.first_seq(), r.newest_kept_seq()) {
            (Some(first), Some(newest)) => first <= after.0 + 1 && newest == last,
            _ => false,
        }
    }

    /// Records with seq > `after`, oldest first, borrowed from the mapping.
    pub fn iter_after(&self, ring: RingId, after: Seq) -> ShardIter<'_> {
        let m = self.meta(ring);
        ShardIter {
            data: self.data_of(m),
            ring: &m.ring,
            range: m.ring.index_after(after.0)..m.ring.len(),
        }
    }

    /// Records with seq < `before` (the newest `limit` of them), oldest first.
    pub fn iter_before(&self, ring: RingId, before: Seq, limit: usize) -> ShardIter<'_> {
        let m = self.meta(ring);
        let end = m.ring.index_before(before.0);
        ShardIter {
            data: self.data_of(m),
            ring: &m.ring,
            range: end.saturating_sub(limit)..end,
        }
    }

    /// Protects a ring from eviction under the byte bound (the engine pins the channels
    /// it has open). Pinning is a flag, not a count.
    pub fn pin(&mut self, ring: RingId) {
        let idx = self.check(ring).expect("pin: stale RingId");
        let m = self.meta_mut(idx);
        let (was, size) = (std::mem::replace(&mut m.pinned, true), 1u64 << m.class_log2);
        if !was {
            self.pinned_rings += 1;
            self.pinned_bytes += size;
        }
    }

    /// Makes a ring evictable again.
    pub fn unpin(&mut self, ring: RingId) {
        let idx = self.check(ring).expect("unpin: stale RingId");
        let m = self.meta_mut(idx);
        let (was, size) = (
            std::mem::replace(&mut m.pinned, false),
            1u64 << m.class_log2,
        );
        if was {
            self.pinned_rings -= 1;
            self.pinned_bytes -= size;
            self.queue_for_eviction(idx);
        }
    }

    /// Deletes a ring (idle channel): its slot is marked free with one write into the
    /// mapping, no syscall, and reused by later rings. The handle becomes stale; the
    /// key's records are gone, and its next `create` goes on numbering in the same epoch
    /// (its tombstone, while kept; else a new history).
    pub fn free(&mut self, ring: RingId) -> Result<(), StoreError> {
        let idx = self.check(ring)?;
        let stone = self.stone_of(idx);
        let key = self.remove(idx);
        self.bury(&key, stone);
        Ok(())
    }

    /// Deletes a ring whose history lives on elsewhere (migration, reshard): no
    /// tombstone.
    pub(crate) fn forget(&mut self, ring: RingId) -> Result<(), StoreError> {
        let idx = self.check(ring)?;
        self.remove(idx);
        Ok(())
    }

    /// [`ShardStore::idle_rings`] over `count` ring indices from `start` (wrapping at the
    /// end), for a sweep spread over many calls. Returns the idle rings found and where
    /// the next call should start.
    pub fn idle_rings_from(
        &self,
        start: usize,
        count: usize,
        older_than_ms: u64,
    ) -> (Vec<RingId>, usize) {
        let len = self.rings.len();
        if len == 0 {
            return (Vec::new(), 0);
        }
        let start = start % len;
        let mut idle = Vec::new();
        for i in (start..start + count.min(len)).map(|i| i % len) {
            if let Some(m) = &self.rings[i] {
                if !m.pinned && m.last_append_ms < older_than_ms {
                    idle.push(self.id_of(i as u32));
                }
            }
        }
        (idle, (start + count.min(len)) % len)
    }

    /// Unpinned rings whose newest append is older than `older_than_ms` (rings never
    /// appended to count as 0), from the in-memory state only: no directory scan.
    pub fn idle_rings(&self, older_than_ms: u64) -> Vec<RingId> {
        self.rings
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let m = m.as_ref()?;
                (!m.pinned && m.last_append_ms < older_than_ms).then(|| self.id_of(i as u32))
            })
            .collect()
    }

    /// Keys of rings evicted under the byte bound since the last call (for the engine's
    /// log). Their channels' next rings go on from their tombstones (while kept).
    pub fn take_evicted(&mut self) -> Vec<Box<[u8]>> {
        std::mem::take(&mut self.evicted)
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            rings: self.index.len(),
            pinned: self.pinned_rings,
            bytes_used: self.used_bytes,
            segments: self.segments.len(),
            bytes_mapped: self.segments.iter().map(|s| s.map.len() as u64).sum(),
            ..self.stats
        }
    }

    /// Hands every range written since the last flush to the background thread for
    /// msync and returns at once (the engine's timer calls this for `IntervalMs`; an
    /// `IntervalMs` store also calls it from `append` when the interval has passed).
    pub fn flush(&mut self) {
        self.poll_space();
        let mut ranges = Vec::new();
        for s in &mut self.segments {
            if let Some((lo, hi)) = s.dirty.take() {
                ranges.push((s.map.flush_handle(), lo, hi - lo));
            }
        }
        self.last_sync = Instant::now();
        if ranges.is_empty() {
            return;
        }
        let serial = self.sync_sent + 1;
        if self.space.send(Job::Sync { ranges, serial }) {
            self.sync_sent = serial;
        } else {
            self.stats.background_errors += 1;
        }
    }

    /// msyncs every segment now, on the calling thread (shutdown, migration, tests).
    pub fn sync_all(&mut self) -> Result<(), StoreError> {
        for s in &mut self.segments {
            s.map
                .flush_range(0, s.map.len())
                .map_err(StoreError::io("msync", &s.path))?;
            s.dirty = None;
        }
        self.freed_unsynced.clear();
        // Every ring's slot is on disk: the slots rings moved out of can go.
        self.release_retired(true);
        Ok(())
    }

    /// Re-reads every kept record of `ring` and checks its checksum and seq.
    pub fn verify(&self, ring: RingId) -> Result<usize, StoreError> {
        let m = self.meta(ring);
        verify_meta(self.data_of(m), m)
    }

    // ---- internals ----

    pub(crate) fn id_of(&self, index: u32) -> RingId {
        RingId {
            index,
            generation: self.ring_generations[index as usize],
        }
    }

    pub(crate) fn check(&self, ring: RingId) -> Result<usize, StoreError> {
        let i = ring.index as usize;
        match (self.rings.get(i), self.ring_generations.get(i)) {
            (Some(Some(_)), Some(&g)) if g == ring.generation => Ok(i),
            _ => Err(StoreError::UnknownRing),
        }
    }

    fn meta(&self, ring: RingId) -> &RingMeta {
        let i = self.check(ring).expect("stale RingId");
        self.rings[i].as_ref().expect("live ring")
    }

    fn meta_mut(&mut self, idx: usize) -> &mut RingMeta {
        self.rings[idx].as_mut().expect("live ring")
    }

    pub(crate) fn data_of(&self, m: &RingMeta) -> &[u8] {
        let seg = &self.segments[m.loc.seg as usize];
        let at = seg.header.slot_at(m.loc.slot) + m.data_off as usize;
        &seg.map.bytes()[at..at + m.ring.data_len() as usize]
    }

    pub(crate) fn key_at(&self, loc: SlotLoc, log2: u8) -> &[u8] {
        let seg = &self.segments[loc.seg as usize];
        let at = seg.header.slot_at(loc.slot);
        slot_format::key_of(&seg.map.bytes()[at..at + (1 << log2)])
    }

    /// Data bytes a ring with a `key_len`-byte key has in class `log2`.
    pub(crate) fn data_len(&self, log2: u8, key_len: usize) -> u64 {
        let room = (1u64 << log2).saturating_sub(slot_format::data_offset(key_len) as u64);
        room.min(self.max_data) / slot_format::ALIGN * slot_format::ALIGN
    }

    /// The longest record ring `idx` can keep: its top class's data region (a ring in a
    /// class above the top, from an earlier larger `max_bytes_per_ring`, keeps its own).
    fn max_record_len(&self, idx: usize) -> u64 {
        let m = self.rings[idx].as_ref().expect("live ring");
        let key_len = m.data_off as usize - slot_format::SLOT_HEADER_LEN;
        let top = self.top_class(key_len);
        if m.class_log2 > top {
            m.ring.data_len()
        } else {
            self.data_len(top, key_len)
        }
    }

    /// The class whose data region holds `max_bytes_per_ring` for this key length.
    pub(crate) fn top_class(&self, key_len: usize) -> u8 {
        let need = self.max_data + slot_format::data_offset(key_len) as u64;
        (need.next_power_of_two().trailing_zeros() as u8).clamp(MIN_CLASS_LOG2, MAX_CLASS_LOG2)
    }

    /// Smallest class with at least `need` data bytes (the top class if none).
    pub(crate) fn class_for(&self, key_len: usize, need: u64) -> u8 {
        let top = self.top_class(key_len);
        (MIN_CLASS_LOG2..=top)
            .find(|&c| self.data_len(c, key_len) >= need)
            .unwrap_or(top)
    }

    pub(crate) fn slots_per_segment(&self, log2: u8) -> u32 {
        (self.cfg.segment_bytes >> log2).clamp(4, u64::from(u32::MAX / 2)) as u32
    }

    /// Notes that file bytes `range` of segment `seg` were written: dirty range for the
    /// next flush (and, in tests, the crash-simulation journal).
    pub(crate) fn touched(&mut self, seg: u32, range: Range<usize>) {
        let s = &mut self.segments[seg as usize];
        s.dirty = Some(match s.dirty {
            Some((lo, hi)) => (lo.min(range.start), hi.max(range.end)),
            None => (range.start, range.end),
        });
        #[cfg(test)]
        if let Some(j) = self.journal.as_mut() {
            let bytes = s.map.bytes()[range.clone()].to_vec();
            j.push((s.path.clone(), range.start, bytes));
        }
    }

    /// Writes the in-memory state into the state slot not holding the newest state.
    pub(crate) fn publish(&mut self, idx: usize) {
        let m = self.rings[idx].as_mut().expect("live ring");
        m.generation = m.generation.wrapping_add(1);
        let st = state_of(m, m.generation);
        let (loc, log2, epoch) = (m.loc, m.class_log2, m.epoch.0);
        let seg = &mut self.segments[loc.seg as usize];
        let at = seg.header.slot_at(loc.slot);
        slot_format::write_state(&mut seg.map.bytes_mut()[at..at + (1 << log2)], epoch, &st);
        let r = slot_format::state_range(st.generation);
        self.touched(loc.seg, at + r.start..at + r.end);
    }

    pub(crate) fn sync_state(&self, idx: usize) -> Result<(), StoreError> {
        let m = self.rings[idx].as_ref().expect("live ring");
        let seg = &self.segments[m.loc.seg as usize];
        let at = seg.header.slot_at(m.loc.slot);
        seg.map
            .flush_range(at, slot_format::SLOT_HEADER_LEN)
            .map_err(StoreError::io("msync", &seg.path))
    }

    fn sync_slot(&self, loc: SlotLoc, log2: u8) -> Result<(), StoreError> {
        let seg = &self.segments[loc.seg as usize];
        seg.map
            .flush_range(seg.header.slot_at(loc.slot), 1 << log2)
            .map_err(StoreError::io("msync", &seg.path))
    }

    fn sync_after_append(
        &mut self,
        idx: usize,
        written: Option<(u64, u64, Option<u64>)>,
    ) -> Result<(), StoreError> {
        match self.cfg.sync {
            SyncPolicy::Never => Ok(()),
            SyncPolicy::EveryAppend => {
                // Record bytes first, state second. The state is already in the mapping,
                // so the kernel may write its page back before the record's: a power
                // loss in between leaves a published record that is torn, which open
                // drops (its append had not returned). Once this returns, both are on
                // disk.
                let m = self.rings[idx].as_ref().expect("live ring");
                let seg = &self.segments[m.loc.seg as usize];
                let base = seg.header.slot_at(m.loc.slot) + m.data_off as usize;
                let io = StoreError::io("msync", &seg.path);
                if let Some((at, len, wrap_at)) = written {
                    let res = wrap_at
                        .map_or(Ok(()), |w| seg.map.flush_range(base + w as usize, WRAP_LEN))
                        .and_then(|()| seg.map.flush_range(base + at as usize, len as usize));
                    res.map_err(io)?;
                }
                self.sync_state(idx)
            }
            SyncPolicy::IntervalMs(n) => {
                if self.last_sync.elapsed().as_millis() > u128::from(n) {
                    self.flush();
                }
                Ok(())
            }
        }
    }

    /// Frees a slot no ring uses any more and puts it on its class's free list.
    fn release_slot(&mut self, loc: SlotLoc, log2: u8) {
        self.free_slot_bytes(loc, log2);
        self.classes[usize::from(log2 - MIN_CLASS_LOG2)]
            .free
            .push(loc);
    }

    /// Releases the retiring slots whose ring's new slot is on disk now (every one
    /// with `all`: after a `sync_all`, or at drop once the last sync is answered).
    pub(crate) fn release_retired(&mut self, all: bool) {
        let done = self.sync_done;
        self.release_retiring(|r| all || r.after_sync <= done);
    }

    /// Releases the retiring slots `which` picks.
    fn release_retiring(&mut self, which: impl Fn(&Retiring) -> bool) {
        let mut i = 0;
        while i < self.retiring.len() {
            let r = self.retiring[i];
            if which(&r) {
                self.retiring.swap_remove(i);
                self.release_slot(r.loc, r.log2);
            } else {
                i += 1;
            }
        }
    }

    /// The `Sync` job `failed` did not reach the disk: the retiring slots waiting on it
    /// wait for the next one, which is made to cover their rings' new slots again.
    fn retry_retiring(&mut self, failed: u64) {
        let next = self.sync_sent + 1;
        for i in 0..self.retiring.len() {
            let r = self.retiring[i];
            if r.after_sync > failed {
                continue;
            }
            self.retiring[i].after_sync = next;
            if let Some(m) = self.rings[r.ring as usize].as_ref() {
                let (loc, log2) = (m.loc, m.class_log2);
                // The pages the ring uses: its header and state, and its data up to its
                // tail (a wrapped ring's whole data region). Never-used pages hold
                // nothing to write and are left alone.
                let used = if m.ring.len() == 0 {
                    0
                } else if m.ring.tail() > m.ring.head() {
                    m.ring.tail()
                } else {
                    m.ring.data_len()
                };
                let len = (m.data_off as usize + used as usize).min(1 << log2);
                let seg = &mut self.segments[loc.seg as usize];
                let at = seg.header.slot_at(loc.slot);
                // After a failed writeback the kernel may count these pages clean: dirty
                // them again, so the next msync writes them.
                seg.map.redirty(at..at + len);
                self.touched(loc.seg, at..at + len);
            }
        }
    }

    /// `EveryAppend`: msyncs the freed slot headers not yet on disk, one range per
    /// segment.
    fn sync_freed(&mut self) -> Result<(), StoreError> {
        if self.freed_unsynced.is_empty() {
            return Ok(());
        }
        self.freed_unsynced.sort_unstable();
        let mut i = 0;
        while i < self.freed_unsynced.len() {
            let start = i;
            let seg = self.freed_unsynced[i].0;
            let from = self.freed_unsynced[i].1;
            let mut to = from;
            while i < self.freed_unsynced.len() && self.freed_unsynced[i].0 == seg {
                to = self.freed_unsynced[i].1;
                i += 1;
            }
            let s = &mut self.segments[seg as usize];
            // Written back unchanged first: after a failed msync the kernel may count
            // these pages clean, and a retry would then write nothing.
            for &(_, at) in self.freed_unsynced[start..i].iter() {
                s.map.redirty(at..at + slot_format::FREE_LEN);
            }
            s.map
                .flush_range(from, to - from + slot_format::FREE_LEN)
                .map_err(StoreError::io("msync", &s.path))?;
        }
        self.freed_unsynced.clear();
        Ok(())
    }

    pub(crate) fn free_slot_bytes(&mut self, loc: SlotLoc, log2: u8) {
        let seg = &mut self.segments[loc.seg as usize];
        let at = seg.header.slot_at(loc.slot);
        slot_format::free_slot(&mut seg.map.bytes_mut()[at..at + (1 << log2)]);
        self.touched(loc.seg, at..at + slot_format::FREE_LEN);
        if self.cfg.sync == SyncPolicy::EveryAppend {
            // Durable before the next create (`sync_freed`): a freed copy still on disk
            // would outrank a new epoch's ring of the key at open (higher last_seq).
            self.freed_unsynced.push((loc.seg, at));
        }
    }

    /// Forgets ring `idx` and frees its slot.
    fn remove(&mut self, idx: usize) -> Box<[u8]> {
        let m = self.rings[idx].take().expect("live ring");
        if m.pinned {
            self.pinned_rings -= 1;
            self.pinned_bytes -= 1 << m.class_log2;
        }
        let key: Box<[u8]> = self.key_at(m.loc, m.class_log2).into();
        self.index.remove(&key);
        self.release_slot(m.loc, m.class_log2);
        // Slots this ring moved out of go too: left intact, an older copy would bring
        // the freed ring back at the next open.
        self.release_retiring(|r| r.ring == idx as u32);
        self.used_bytes -= 1 << m.class_log2;
        self.ring_generations[idx] = self.ring_generations[idx].wrapping_add(1);
        self.free_ids.push(idx as u32);
        key
    }

    /// Evicts unpinned rings other than `exclude` (the ring growing), least recently
    /// appended first, until `extra` more slot bytes fit under the bound. False, with
    /// nothing evicted, if evicting all of them would not be enough.
    fn make_room(&mut self, extra: u64, exclude: Option<u32>) -> bool {
        let Some(max) = self.cfg.max_total_bytes else {
            return true;
        };
        if self.used_bytes + extra <= max {
            return true;
        }
        // Decided from the counters before anything goes (found in review: evictions
        // made for a room never reached stayed made, and each refusal at a bound full of
        // pinned rings scanned every ring).
        let excluded = exclude
            .and_then(|i| self.rings[i as usize].as_ref())
            .filter(|m| !m.pinned)
            .map_or(0, |m| 1u64 << m.class_log2);
        if self.pinned_bytes + excluded + extra > max {
            return false;
        }
        while self.used_bytes + extra > max {
            if !self.evict_one(exclude) {
                return false;
            }
        }
        true
    }

    /// Puts ring `idx`, just unpinned, into the eviction queue if it is older than the
    /// queue's newest entry. The queue holds the oldest candidates, and every unpinned
    /// ring left out of it is newer than all of them, so eviction goes least recently
    /// written first (found in review: a ring pinned when the queue was built, unpinned
    /// since, went after newer rings). An empty queue is rebuilt by the next eviction.
    fn queue_for_eviction(&mut self, idx: usize) {
        let m = self.rings[idx].as_ref().expect("live ring");
        let entry = (m.touch, idx as u32, self.ring_generations[idx]);
        let q = &mut self.evict_queue;
        // Newest first: the last entry is evicted first.
        if q.first().is_none_or(|&newest| entry > newest) {
            return;
        }
        // Still there (and valid again) if it was queued before it was pinned.
        if let Err(at) = q.binary_search_by(|e| entry.cmp(e)) {
            q.insert(at, entry);
            if q.len() > EVICT_BATCH {
                // The newest goes: what is left out stays newer than what is in.
                q.remove(0);
            }
        }
    }

    fn evict_one(&mut self, exclude: Option<u32>) -> bool {
        let mut rebuilt = false;
        loop {
            while let Some((touch, i, g)) = self.evict_queue.pop() {
                let ok = self.ring_generations[i as usize] == g
                    && Some(i) != exclude
                    && self.rings[i as usize]
                        .as_ref()
                        .is_some_and(|m| !m.pinned && m.touch == touch);
                if ok {
                    let stone = self.stone_of(i as usize);
                    let key = self.remove(i as usize);
                    self.bury(&key, stone);
                    self.evicted.push(key);
                    self.stats.evictions += 1;
                    return true;
                }
            }
            if rebuilt {
                return false;
            }
            rebuilt = true;
            #[cfg(test)]
            {
                self.evict_scans += 1;
            }
            let mut cands: Vec<(u64, u32, u32)> = self
                .rings
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let m = m.as_ref()?;
                    (!m.pinned && Some(i as u32) != exclude)
                        .then(|| (m.touch, i as u32, self.ring_generations[i]))
                })
                .collect();
            if cands.len() > EVICT_BATCH {
                cands.select_nth_unstable(EVICT_BATCH);
                cands.truncate(EVICT_BATCH);
            }
            // Popped from the back: oldest last.
            cands.sort_unstable_by(|a, b| b.cmp(a));
            self.evict_queue = cands;
        }
    }

    /// A free slot of class `log2`; waits for the background thread only if none is
    /// ready, and asks it for the next segment when the class runs low.
    fn alloc_slot(&mut self, log2: u8) -> Result<SlotLoc, StoreError> {
        let ci = usize::from(log2 - MIN_CLASS_LOG2);
        let mut waited = false;
        let loc = loop {
            if let Some(loc) = self.classes[ci].free.pop() {
                break loc;
            }
            if let Some(f) = self.classes[ci].fresh.first_mut() {
                let loc = SlotLoc {
                    seg: f.0,
                    slot: f.1,
                };
                f.1 += 1;
                let hw = f.1;
                if f.1 == f.2 {
                    self.classes[ci].fresh.remove(0);
                }
                let seg = &mut self.segments[loc.seg as usize];
                slot_format::write_high_water(seg.map.bytes_mut(), hw);
                self.touched(loc.seg, slot_format::HIGH_WATER_RANGE);
                if self.cfg.sync == SyncPolicy::EveryAppend {
                    // Open looks only below the high-water mark on disk: the slot's
                    // own msync would not make it findable after a power loss.
                    let seg = &self.segments[loc.seg as usize];
                    let r = slot_format::HIGH_WATER_RANGE;
                    if let Err(e) = seg.map.flush_range(r.start, r.end - r.start) {
                        let e = StoreError::io("msync", &seg.path)(e);
                        // Fresh again: the next allocation of it raises and msyncs the
                        // mark anew (a free slot would be taken without that).
                        let end = loc.slot + 1;
                        match self.classes[ci].fresh.first_mut() {
                            Some(f) if f.0 == loc.seg && f.1 == end => f.1 = loc.slot,
                            _ => self.classes[ci].fresh.insert(0, (loc.seg, loc.slot, end)),
                        }
                        return Err(e);
                    }
                }
                self.read_ahead_behind(loc.seg, hw);
                self.populate_ahead(loc.seg, hw);
                break loc;
            }
            if self.classes[ci].preparing == 0 {
                self.request_segment(log2);
            }
            if self.pending == 0 {
                return Err(StoreError::Io {
                    op: "prepare segment",
                    path: self.dir.clone(),
                    source: std::io::Error::other("background thread is gone"),
                });
            }
            if !waited {
                self.stats.space_waits += 1;
                waited = true;
            }
            // Only a failure to make this class's segment, answering this wait, fails
            // this allocation; others were counted in `background_errors`.
            self.space_error = None;
            match self.space.recv() {
                Some(done) => self.install(done),
                None => {
                    return Err(StoreError::Io {
                        op: "prepare segment",
                        path: self.dir.clone(),
                        source: std::io::Error::other("background thread is gone"),
                    })
                }
            }
            if let Some((_, e)) = self.space_error.take().filter(|(c, _)| *c == log2) {
                return Err(e);
            }
        };
        self.prepare_ahead(log2);
        Ok(loc)
    }

    /// Keeps space ahead of need, so that no create or growth waits for the background
    /// thread: class `log2` keeps at least one segment's worth of slots free or being
    /// prepared (a storm of growths into one class can use a whole segment faster than
    /// one is made), and the next class up, where this class's rings grow to, has space
    /// from the moment this one is in use (up to the top class of the plan's bound).
    /// A storm of more growths into one class than a segment holds, faster than the
    /// background thread makes one, still waits (with 64 MiB segments: 2,048 rings
    /// growing into the 32 KiB class at once).
    pub(crate) fn prepare_ahead(&mut self, log2: u8) {
        let ci = usize::from(log2 - MIN_CLASS_LOG2);
        let slots = self.slots_per_segment(log2) as usize;
        let class = &self.classes[ci];
        if class.free_count() + class.preparing as usize * slots < slots {
            self.request_segment(log2);
        }
        if log2 < self.top_class(0) {
            let next = &self.classes[ci + 1];
            if next.preparing == 0 && next.free_count() == 0 {
                self.request_segment(log2 + 1);
            }
        }
    }

    pub(crate) fn segment_path(&self, log2: u8, number: u32) -> PathBuf {
        self.dir.join(format!("c{log2:02}-{number:06}.seg"))
    }

    fn request_segment(&mut self, log2: u8) {
        let ci = usize::from(log2 - MIN_CLASS_LOG2);
        let number = self.classes[ci].next_number;
        self.classes[ci].next_number += 1;
        self.classes[ci].preparing += 1;
        let header = SegmentHeader {
            class_log2: log2,
            slot_count: self.slots_per_segment(log2),
            number,
        };
        let path = self.segment_path(log2, number);
        let job = Job::Create { path, header };
        if self.space.send(job) {
            self.pending += 1;
        } else {
            self.classes[ci].preparing -= 1;
        }
    }

    /// Picks up what the background thread finished, without blocking.
    pub(crate) fn poll_space(&mut self) {
        while let Some(done) = self.space.try_recv() {
            self.install(done);
        }
    }

    pub(crate) fn install(&mut self, done: Done) {
        match done {
            Done::Created { path, header, map } => {
                self.pending -= 1;
                self.stats.segments_prepared += 1;
                self.add_segment(path, header, map, 0);
                let ci = usize::from(header.class_log2 - MIN_CLASS_LOG2);
                self.classes[ci].preparing -= 1;
            }
            Done::CreateFailed {
                header,
                path,
                error,
            } => {
                self.pending -= 1;
                self.stats.background_errors += 1;
                let ci = usize::from(header.class_log2 - MIN_CLASS_LOG2);
                self.classes[ci].preparing -= 1;
                let error = StoreError::io("create segment", path)(error);
                self.space_error = Some((header.class_log2, error));
            }
            Done::Synced { serial, ok: true } => {
                self.sync_answered = self.sync_answered.max(serial);
                self.sync_done = self.sync_done.max(serial);
                self.release_retired(false);
            }
            Done::Synced { serial, ok: false } => {
                self.sync_answered = self.sync_answered.max(serial);
                self.stats.background_errors += 1;
                self.retry_retiring(serial);
            }
            Done::TombstoneFailed => self.stats.background_errors += 1,
            Done::Barrier => {}
        }
    }

    /// Adds a mapped segment whose slots from `high_water` on are unused.
    pub(crate) fn add_segment(
        &mut self,
        path: PathBuf,
        header: SegmentHeader,
        map: SegmentMap,
        high_water: u32,
    ) -> u32 {
        let seg = self.segments.len() as u32;
        self.segments.push(Segment {
            map,
            header,
            path,
            dirty: None,
            populated_to: high_water,
        });
        let ci = usize::from(header.class_log2 - MIN_CLASS_LOG2);
        if high_water < header.slot_count {
            self.classes[ci]
                .fresh
                .push((seg, high_water, header.slot_count));
            self.populate_ahead(seg, high_water);
        }
        let c = &mut self.classes[ci];
        c.next_number = c.next_number.max(header.number + 1);
        seg
    }

    /// Once a small-slot segment's high-water mark has moved on by a sixteenth of the
    /// segment, asks the background thread to give the pages behind it normal read-ahead
    /// back. A segment is mapped without read-ahead because its unused pages are holes
    /// (`SegmentMap::no_read_ahead_from`); below the high-water mark of a class under a
    /// page every page holds a written slot header, so the advice has nothing left to
    /// guard there and would only keep reclaim blind to which pages are hot. Segments of
    /// page-sized slots keep it: their used slots are holes past the first page.
    fn read_ahead_behind(&self, seg: u32, hw: u32) {
        let s = &self.segments[seg as usize];
        let h = s.header;
        if h.page_sized_slots() || hw == 0 {
            return;
        }
        let page = slot_format::SEG_HEADER_LEN;
        let chunk = (h.file_len() as usize / 16 / page * page).max(page);
        let (before, after) = (h.slot_at(hw - 1) / chunk, h.slot_at(hw) / chunk);
        if after > before {
            let until = after * chunk;
            // Advisory: a lost job only leaves these pages without read-ahead.
            let _ = self.space.send(Job::ReadAhead {
                map: s.map.flush_handle(),
                until,
            });
        }
    }

    /// Keeps the pages of the next fresh slots of `seg` (from `hw`, its high-water mark)
    /// in memory ahead of need: when fewer than half of [`POPULATE_AHEAD_BYTES`] worth of
    /// slots (at least one slot) past `hw` have been asked for, the background thread is
    /// asked to fault the next window in (`MADV_POPULATE_WRITE`). Otherwise the first
    /// write to each new page of a new or grown ring takes a page fault on the shard
    /// thread: a page-cache miss on a hole of the sparse file, ~10–15 µs each (bench
    /// README, "Fresh slots faulted in ahead"). Advisory: a lost or refused job only
    /// leaves those faults to the shard.
    pub(crate) fn populate_ahead(&mut self, seg: u32, hw: u32) {
        let s = &self.segments[seg as usize];
        let h = s.header;
        let ahead = (POPULATE_AHEAD_BYTES / h.class_size()).max(1) as u32;
        if s.populated_to >= h.slot_count || s.populated_to > hw + ahead / 2 {
            return;
        }
        let from = s.populated_to.max(hw);
        let to = (hw + ahead).min(h.slot_count);
        if to <= from {
            return;
        }
        let (at, len) = (h.slot_at(from), h.slot_at(to) - h.slot_at(from));
        let map = s.map.flush_handle();
        self.segments[seg as usize].populated_to = to;
        // Advisory: a lost job only leaves these pages to be faulted in on first write.
        let _ = self.space.send(Job::Populate { map, at, len });
    }

    /// Creates a segment on the calling thread (only `open` does this).
    pub(crate) fn create_segment_now(&mut self, log2: u8) -> Result<(), StoreError> {
        let ci = usize::from(log2 - MIN_CLASS_LOG2);
        let number = self.classes[ci].next_number;
        let header = SegmentHeader {
            class_log2: log2,
            slot_count: self.slots_per_segment(log2),
            number,
        };
        let path = self.segment_path(log2, number);
        let map = space::create(&path, &header).map_err(StoreError::io("create segment", &path))?;
        self.add_segment(path, header, map, 0);
        Ok(())
    }

    /// Checks the store's structural invariants: every ring's slot is inside its
    /// segment, of its class, used by no other ring and not on a free list; every kept
    /// record verifies with gap-free seqs; bounds hold; the index agrees. For tests and
    /// the fuzz hooks.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        let mut used = 0u64;
        for (i, m) in self.rings.iter().enumerate() {
            let Some(m) = m else { continue };
            let seg = self
                .segments
                .get(m.loc.seg as usize)
                .ok_or("ring in a missing segment")?;
            if seg.header.class_log2 != m.class_log2 || m.loc.slot >= seg.header.slot_count {
                return Err(format!("ring {i} outside its segment's slots"));
            }
            if !seen.insert(m.loc) {
                return Err(format!("ring {i} shares slot {:?}", m.loc));
            }
            let c = &self.classes[usize::from(m.class_log2 - MIN_CLASS_LOG2)];
            if c.free.contains(&m.loc)
                || c.fresh
                    .iter()
                    .any(|&(s, n, e)| s == m.loc.seg && (n..e).contains(&m.loc.slot))
            {
                return Err(format!("ring {i}'s slot is also free"));
            }
            let data_end = m.data_off as u64 + m.ring.data_len();
            if data_end > 1 << m.class_log2 {
                return Err(format!("ring {i}'s data region leaves its slot"));
            }
            verify_meta(self.data_of(m), m).map_err(|e| format!("ring {i}: {e}"))?;
            if self.retiring.iter().any(|r| r.loc == m.loc) {
                return Err(format!("ring {i}'s slot is also retiring"));
            }
            if m.ring.len() > m.max_records as usize {
                return Err(format!("ring {i} over max_records"));
            }
            if self.index.get(self.key_at(m.loc, m.class_log2)) != Some(&(i as u32)) {
                return Err(format!("ring {i} not indexed under its key"));
            }
            used += 1 << m.class_log2;
        }
        let pinned = self.rings.iter().flatten().filter(|m| m.pinned).count();
        if pinned != self.pinned_rings {
            return Err(format!(
                "{pinned} rings pinned, {} counted",
                self.pinned_rings
            ));
        }
        let pinned_bytes: u64 = (self.rings.iter().flatten())
            .filter(|m| m.pinned)
            .map(|m| 1u64 << m.class_log2)
            .sum();
        if pinned_bytes != self.pinned_bytes {
            return Err(format!(
                "{pinned_bytes} slot bytes pinned, {} counted",
                self.pinned_bytes
            ));
        }
        if used != self.used_bytes || seen.len() != self.index.len() {
            return Err("byte or ring accounting is off".into());
        }
        Ok(())
    }
}

impl Drop for ShardStore {
    fn drop(&mut self) {
        if self.cfg.sync != SyncPolicy::Never {
            // Queued before the background thread is joined (Space's drop).
            self.flush();
        }
        if !self.retiring.is_empty() {
            // Wait for the last sync's answer, then let the moved-out slots whose new
            // slot is on disk go, so the next open finds one copy of each ring (it
            // would keep the right one anyway). Advisory jobs still queued are skipped.
            self.space.skip_advisory();
            while self.sync_answered < self.sync_sent {
                match self.space.recv() {
                    Some(done) => self.install(done),
                    None => break,
                }
            }
            self.release_retired(false);
        }
    }
}

fn state_of(m: &RingMeta, generation: u32) -> State {
    State {
        generation,
        head: m.ring.head() as u32,
        tail: m.ring.tail() as u32,
        count: m.ring.len() as u32,
        max_records: m.max_records,
        last_seq: m.ring.last_seq(),
        first_seq: m.ring.first_seq().unwrap_or(m.ring.last_seq() + 1),
        last_append_ms: m.last_append_ms,
    }
}

fn verify_meta(data: &[u8], m: &RingMeta) -> Result<usize, StoreError> {
    let first = m.ring.first_seq().unwrap_or(0);
    for i in 0..m.ring.len() {
        let at = m.ring.offset(i);
        let seq = first + i as u64;
        let damaged = |reason| StoreError::Damaged {
            seq,
            offset: at,
            reason,
        };
        match slot_format::read_entry(data, at, m.epoch.0) {
            Ok(slot_format::Entry::Record { rec, .. }) if rec.seq.0 == seq => {}
            Ok(_) => return Err(damaged("wrong seq or kind")),
            Err(p) => return Err(damaged(p)),
        }
    }
    Ok(m.ring.len())
}

/// Copies `len` bytes at `from` in segment `a` to `to` in segment `b`. A move within a
/// class (see `plan_or_grow`) may stay in its segment, between two of its slots, which
/// never overlap.
fn copy_between(
    segments: &mut [Segment],
    (a, from): (usize, usize),
    (b, to): (usize, usize),
    len: usize,
) {
    if a == b {
        segments[a]
            .map
            .bytes_mut()
            .copy_within(from..from + len, to);
        return;
    }
    let (src, dst) = two_mut(segments, a, b);
    dst.map.bytes_mut()[to..to + len].copy_from_slice(&src.map.bytes()[from..from + len]);
}

/// Two distinct elements of a slice, both mutable.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "a ring never moves within its own segment");
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// Kept records in seq order, borrowed from the mapping. Returned by
/// [`ShardStore::iter_after`] and [`ShardStore::iter_before`].
#[derive(Debug, Clone)]
pub struct ShardIter<'a> {
    data: &'a [u8],
    ring: &'a Ring,
    range: Range<usize>,
}

impl<'a> Iterator for ShardIter<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        self.range
            .next()
            .map(|i| slot_format::read_record_trusted(self.data, self.ring.offset(i)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for ShardIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range
            .next_back()
            .map(|i| slot_format::read_record_trusted(self.data, self.ring.offset(i)))
    }
}

impl ExactSizeIterator for ShardIter<'_> {}

#[cfg(test)]
mod tests;
