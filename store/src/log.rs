//! `RingLog`: one channel's history in one mapped file.
//!
//! Write order of an append, and what a crash between steps leaves:
//!
//! 1. If the record evicts older ones, publish the new head first (state slot). A crash
//!    after this loses only records that were about to be overwritten anyway.
//! 2. Write the wrap marker (if any) and the record bytes into free space. A crash here
//!    leaves the published state untouched; reopen may find the complete record past
//!    the published tail (and keeps it) or a torn one (and ignores it).
//! 3. Publish tail, count, last_seq in the other state slot. A torn slot fails its
//!    checksum and reopen uses the previous slot, which is step 1's state.
//! 4. msync according to [`SyncPolicy`].

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::format::{self, Entry, FileHeader, SlotState, HEADER_LEN, MAX_KEY_LEN, REC_HEADER_LEN};
use crate::mmap::{self, Mapping};
use crate::ring::{Plan, Ring};
use crate::{Epoch, LogConfig, OpenReport, Record, Seq, StoreError, SyncPolicy};

/// Smallest accepted data region: room for one wrap marker and a small record.
const MIN_DATA_LEN: u64 = 64;

/// One channel's log. Owns its mapping; holds no file descriptor.
#[derive(Debug)]
pub struct RingLog {
    path: PathBuf,
    map: Mapping,
    ring: Ring,
    epoch: Epoch,
    data_len: u64,
    max_records: u32,
    sync: SyncPolicy,
    generation: u64,
    last_append_ms: u64,
    /// Monotonic ms (see `mono_ms`) of the last msync, for `SyncPolicy::IntervalMs`.
    last_sync_ms: AtomicU64,
}

/// What reopening found in an existing file.
enum Verdict {
    Kept { torn: u32 },
    NewEpoch { reason: String, avoid: Option<u64> },
}

impl RingLog {
    /// Opens the log at `path`, creating it if absent.
    ///
    /// `key` is an opaque identity (tenant + channel bytes, at most 2,048) stored in the
    /// header and checked on reopen. An existing file keeps its epoch and history, minus a
    /// torn tail. A file whose header is corrupt, whose key differs, or whose data region
    /// size differs from `cfg.max_bytes` starts a new epoch with seq restarting at 0, and
    /// the report says why. A smaller `cfg.max_records` than before keeps the epoch and
    /// evicts the oldest records.
    pub fn open(
        path: &Path,
        key: &[u8],
        cfg: &LogConfig,
    ) -> Result<(RingLog, OpenReport), StoreError> {
        RingLog::open_with_epoch(path, key, cfg, None)
    }

    /// Like [`RingLog::open`], but a file created by this call gets `epoch_if_created`
    /// (when given) instead of a fresh epoch. The engine uses this to hand out a channel's
    /// epoch before the channel's first message creates its log.
    pub fn open_with_epoch(
        path: &Path,
        key: &[u8],
        cfg: &LogConfig,
        epoch_if_created: Option<Epoch>,
    ) -> Result<(RingLog, OpenReport), StoreError> {
        let data_len = checked_data_len(cfg)?;
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let opened =
            mmap::open(path, HEADER_LEN as u64 + data_len).map_err(StoreError::io("open", path))?;
        let mut log = RingLog {
            path: path.to_path_buf(),
            map: opened.mapping,
            ring: Ring::new(data_len),
            epoch: Epoch(1),
            data_len,
            max_records: cfg.max_records,
            sync: cfg.sync,
            generation: 0,
            last_append_ms: 0,
            last_sync_ms: AtomicU64::new(mono_ms()),
        };
        let mut report = OpenReport {
            created: opened.created,
            torn_tail_dropped: 0,
            new_epoch_reason: None,
        };
        let verdict = if opened.created {
            Verdict::NewEpoch {
                reason: String::new(),
                avoid: None,
            }
        } else {
            log.recover(key, opened.prior_len)
        };
        match verdict {
            Verdict::Kept { torn } => report.torn_tail_dropped = torn,
            Verdict::NewEpoch { reason, avoid } => {
                let chosen = epoch_if_created.filter(|e| opened.created && e.0 != 0);
                log.start_epoch(key, chosen.unwrap_or_else(|| Epoch::fresh(avoid)))?;
                if !opened.created {
                    report.new_epoch_reason = Some(reason);
                }
            }
        }
        Ok((log, report))
    }

    /// The epoch of this history.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Latest assigned seq (0 if nothing was appended in this epoch).
    pub fn last_seq(&self) -> Seq {
        Seq(self.ring.last_seq())
    }

    /// Seq of the oldest record still kept.
    pub fn first_seq(&self) -> Option<Seq> {
        self.ring.first_seq().map(Seq)
    }

    /// Number of kept records.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// No record is kept.
    pub fn is_empty(&self) -> bool {
        self.ring.len() == 0
    }

    /// `ts_ms` of the newest append (0 if none), for idle TTL.
    pub fn last_append_ms(&self) -> u64 {
        self.last_append_ms
    }

    /// The file this log maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when every seq in `(after, last_seq]` is kept, so a replay with
    /// `iter_after(after)` loses nothing (the protocol's `recovered`). False when some were
    /// evicted, too large to keep, or lost, or when `after` is from the future.
    pub fn replay_complete(&self, after: Seq) -> bool {
        let last = self.ring.last_seq();
        if after.0 >= last {
            return after.0 == last;
        }
        match (self.ring.first_seq(), self.ring.newest_kept_seq()) {
            (Some(first), Some(newest)) => first <= after.0 + 1 && newest == last,
            _ => false,
        }
    }

    /// Appends one record, assigning seq = last_seq + 1.
    ///
    /// Evicts the oldest records to stay within `max_records` and `max_bytes`. A record
    /// too large to ever fit still consumes its seq but is not kept (the log is then
    /// empty with last_seq advanced), so readers see the gap.
    pub fn append(
        &mut self,
        ts_ms: u64,
        uid: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<Seq, StoreError> {
        let uid_len = uid.map_or(0, <[u8]>::len);
        if uid_len > usize::from(u16::MAX) {
            return Err(StoreError::UidTooLong {
                len: uid_len,
                max: usize::from(u16::MAX),
            });
        }
        let seq = self.ring.last_seq() + 1;
        let len = format::record_len(uid_len, payload.len());
        self.last_append_ms = ts_ms;
        let (evict, at, wrap_at) = match self.ring.plan(len, self.max_records) {
            Plan::TooLarge => {
                self.ring.skip_seq();
                self.publish();
                self.sync_after_append(None)?;
                return Ok(Seq(seq));
            }
            Plan::Store { evict, at, wrap_at } => (evict, at, wrap_at),
        };
        if evict > 0 {
            self.ring.evict(evict);
            self.publish();
            if self.sync == SyncPolicy::EveryAppend {
                // On power loss the record pages may reach disk before the header page;
                // the new head must be durable before older records are overwritten.
                self.flush_header()?;
            }
        }
        let epoch = self.epoch.0;
        let data = &mut self.map.bytes_mut()[HEADER_LEN..];
        if let Some(w) = wrap_at {
            format::write_wrap(
                &mut data[w as usize..w as usize + REC_HEADER_LEN],
                epoch,
                seq,
            );
        }
        let rec = Record {
            seq: Seq(seq),
            ts_ms,
            uid,
            payload,
            data_span: (0, payload.len() as u32),
        };
        format::write_record(&mut data[at as usize..(at + len) as usize], epoch, &rec);
        self.ring.push(at, len);
        self.publish();
        self.sync_after_append(Some((at, len, wrap_at)))?;
        Ok(Seq(seq))
    }

    /// Records with seq > `after`, oldest first.
    pub fn iter_after(&self, after: Seq) -> Iter<'_> {
        Iter {
            log: self,
            range: self.ring.index_after(after.0)..self.ring.len(),
        }
    }

    /// Records with seq < `before` (the newest `limit` of them), oldest first — for
    /// paginating backwards.
    pub fn iter_before(&self, before: Seq, limit: usize) -> Iter<'_> {
        let end = self.ring.index_before(before.0);
        Iter {
            log: self,
            range: end.saturating_sub(limit)..end,
        }
    }

    /// msync the whole log now (the engine's timer calls this for `IntervalMs`).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.map
            .flush()
            .map_err(StoreError::io("msync", &self.path))?;
        self.last_sync_ms.store(mono_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Re-reads every kept record from the mapping and checks its checksum and seq.
    /// Returns the number checked.
    pub fn verify(&self) -> Result<usize, StoreError> {
        let data = self.data();
        let first = self.ring.first_seq().unwrap_or(0);
        for i in 0..self.ring.len() {
            let at = self.ring.offset(i);
            let seq = first + i as u64;
            let damaged = |reason| StoreError::Damaged {
                seq,
                offset: at,
                reason,
            };
            match format::read_entry(data, at, self.epoch.0) {
                Ok(Entry::Record { rec, .. }) if rec.seq.0 == seq => {}
                Ok(_) => return Err(damaged("wrong seq or kind")),
                Err(p) => return Err(damaged(p.as_str())),
            }
        }
        Ok(self.ring.len())
    }

    fn data(&self) -> &[u8] {
        &self.map.bytes()[HEADER_LEN..]
    }

    fn record(&self, index: usize) -> Record<'_> {
        format::read_record_trusted(self.data(), self.ring.offset(index))
    }

    /// Writes the in-memory state into the state slot not holding the newest state.
    fn publish(&mut self) {
        self.generation += 1;
        let st = SlotState {
            generation: self.generation,
            head: self.ring.head(),
            tail: self.ring.tail(),
            last_seq: self.ring.last_seq(),
            first_seq: self.ring.first_seq().unwrap_or(self.ring.last_seq() + 1),
            last_append_ms: self.last_append_ms,
            count: self.ring.len() as u32,
            max_records: self.max_records,
        };
        format::write_slot(self.map.bytes_mut(), self.epoch.0, &st);
    }

    fn flush_header(&self) -> Result<(), StoreError> {
        self.map
            .flush_range(0, HEADER_LEN)
            .map_err(StoreError::io("msync", &self.path))
    }

    fn flush_data(&self, at: u64, len: u64) -> Result<(), StoreError> {
        self.map
            .flush_range(HEADER_LEN + at as usize, len as usize)
            .map_err(StoreError::io("msync", &self.path))
    }

    fn sync_after_append(
        &self,
        written: Option<(u64, u64, Option<u64>)>,
    ) -> Result<(), StoreError> {
        match self.sync {
            SyncPolicy::Never => Ok(()),
            SyncPolicy::EveryAppend => {
                // Record bytes first, header second: the published state never points
                // at a record that is not on disk.
                if let Some((at, len, wrap_at)) = written {
                    if let Some(w) = wrap_at {
                        self.flush_data(w, REC_HEADER_LEN as u64)?;
                    }
                    self.flush_data(at, len)?;
                }
                self.flush_header()
            }
            SyncPolicy::IntervalMs(n) => {
                if mono_ms().saturating_sub(self.last_sync_ms.load(Ordering::Relaxed))
                    > u64::from(n)
                {
                    self.flush()
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Discards whatever the file held and starts an empty history with a fresh epoch.
    fn start_epoch(&mut self, key: &[u8], epoch: Epoch) -> Result<(), StoreError> {
        self.epoch = epoch;
        self.ring = Ring::new(self.data_len);
        self.generation = 0;
        self.last_append_ms = 0;
        let header = FileHeader {
            data_len: self.data_len,
            epoch: self.epoch.0,
            key,
        };
        format::write_file_header(self.map.bytes_mut(), &header);
        self.publish();
        if self.sync != SyncPolicy::Never {
            self.flush_header()?;
        }
        Ok(())
    }

    /// Rebuilds the ring from an existing file, or says why a new epoch is needed.
    fn recover(&mut self, key: &[u8], prior_len: u64) -> Verdict {
        let new_epoch = |reason: String, avoid| Verdict::NewEpoch { reason, avoid };
        if prior_len < HEADER_LEN as u64 {
            return new_epoch(
                format!("file is {prior_len} bytes, shorter than its header"),
                None,
            );
        }
        let header = match format::read_file_header(self.map.bytes()) {
            Ok(h) => h,
            Err(problem) => return new_epoch(format!("corrupt header: {problem}"), None),
        };
        let old_epoch = header.epoch;
        if header.key != key {
            return new_epoch(
                "key mismatch: the file belongs to another key".into(),
                Some(old_epoch),
            );
        }
        if header.data_len != self.data_len || prior_len != HEADER_LEN as u64 + header.data_len {
            return new_epoch(
                format!(
                    "geometry changed: data region was {} bytes (file {prior_len} bytes), config wants {}",
                    header.data_len, self.data_len
                ),
                Some(old_epoch),
            );
        }
        let Some(st) = format::read_slot(self.map.bytes(), old_epoch) else {
            return new_epoch("no valid state slot".into(), Some(old_epoch));
        };
        if let Err(problem) = sane(&st, self.data_len) {
            return new_epoch(
                format!("state slot out of range: {problem}"),
                Some(old_epoch),
            );
        }
        self.epoch = Epoch(old_epoch);
        self.generation = st.generation;
        self.last_append_ms = st.last_append_ms;
        let (ring, torn) = self.walk_published(&st);
        self.ring = ring;
        let mut dirty = torn > 0;
        if torn == 0 {
            dirty |= self.adopt_unpublished();
        }
        let excess = self.ring.len().saturating_sub(self.max_records as usize);
        if excess > 0 {
            self.ring.evict(excess);
            dirty = true;
        }
        if dirty || st.max_records != self.max_records {
            self.publish();
        }
        Verdict::Kept { torn }
    }

    /// Follows the published chain from `st.head`; stops at the first entry whose
    /// checksum, kind or seq continuity fails. Returns the kept ring and how many
    /// published records were dropped.
    fn walk_published(&self, st: &SlotState) -> (Ring, u32) {
        let data = self.data();
        let mut ring = Ring::empty_at(self.data_len, st.first_seq - 1);
        let mut pos = st.head;
        for _ in 0..st.count {
            let seq = ring.last_seq() + 1;
            match next_record(data, pos, seq, self.epoch.0) {
                Some((at, len, _)) => {
                    ring.push(at, len);
                    pos = at + len;
                }
                None => break,
            }
        }
        let torn = st.count - ring.len() as u32;
        // Seqs the header published stay consumed even if their records were lost.
        ring.raise_last_seq(st.last_seq);
        (ring, torn)
    }

    /// Keeps the record of an append that was written but not yet published when the
    /// process died, if it is complete and lies in free space.
    fn adopt_unpublished(&mut self) -> bool {
        if self
            .ring
            .newest_kept_seq()
            .is_some_and(|s| s != self.ring.last_seq())
        {
            return false;
        }
        let seq = self.ring.last_seq() + 1;
        let pos = if self.ring.len() == 0 {
            0
        } else {
            self.ring.tail()
        };
        match next_record(self.data(), pos, seq, self.epoch.0) {
            Some((at, len, ts_ms)) if self.ring.is_free(at, len) => {
                self.ring.push(at, len);
                self.last_append_ms = ts_ms;
                true
            }
            _ => false,
        }
    }
}

/// Finds the record with `seq` that continues the chain at `pos`, following a wrap marker
/// or an implicit wrap (too little room left for a header). Returns (offset, len, ts_ms).
fn next_record(data: &[u8], pos: u64, seq: u64, epoch: u64) -> Option<(u64, u64, u64)> {
    let record_at = |at: u64| match format::read_entry(data, at, epoch) {
        Ok(Entry::Record { rec, len }) if rec.seq.0 == seq => Some((at, len, rec.ts_ms)),
        _ => None,
    };
    if pos + REC_HEADER_LEN as u64 > data.len() as u64 {
        return record_at(0);
    }
    match format::read_entry(data, pos, epoch) {
        Ok(Entry::Record { rec, len }) if rec.seq.0 == seq => Some((pos, len, rec.ts_ms)),
        Ok(Entry::Wrap { next_seq }) if next_seq == seq && pos != 0 => record_at(0),
        _ => None,
    }
}

/// Checks a state slot's fields against the data region before trusting them.
fn sane(st: &SlotState, data_len: u64) -> Result<(), &'static str> {
    if (st.head | st.tail) & (format::ALIGN - 1) != 0 {
        return Err("unaligned offset");
    }
    if st.head >= data_len.max(1) || st.tail > data_len {
        return Err("offset past the data region");
    }
    if st.last_seq >= u64::MAX / 2 {
        return Err("last_seq out of range");
    }
    if st.first_seq == 0 || st.first_seq - 1 > st.last_seq {
        return Err("first_seq past last_seq");
    }
    if u64::from(st.count) > st.last_seq - (st.first_seq - 1) {
        return Err("more records than seqs");
    }
    if u64::from(st.count) > data_len / REC_HEADER_LEN as u64 {
        return Err("more records than fit");
    }
    Ok(())
}

fn checked_data_len(cfg: &LogConfig) -> Result<u64, StoreError> {
    if cfg.max_records == 0 {
        return Err(StoreError::InvalidConfig("max_records must be at least 1"));
    }
    let data_len = cfg.max_bytes / format::ALIGN * format::ALIGN;
    if data_len < MIN_DATA_LEN {
        return Err(StoreError::InvalidConfig("max_bytes must be at least 64"));
    }
    if data_len > u64::from(u32::MAX) {
        return Err(StoreError::InvalidConfig("max_bytes must be below 4 GiB"));
    }
    Ok(data_len)
}

impl Epoch {
    /// A nonzero epoch unlikely to repeat (and never `avoid`).
    pub fn fresh(avoid: Option<u64>) -> Epoch {
        fresh_epoch(avoid)
    }
}

/// A nonzero epoch unlikely to repeat: wall-clock nanoseconds, the process id and a
/// counter, through std's randomly keyed SipHash. The process id is read once: `getpid`
/// is a real system call (glibc caches nothing), and this runs for every new channel on
/// the shard thread (3 % of the server's CPU while 10,000 clients connect, W5).
fn fresh_epoch(avoid: Option<u64>) -> Epoch {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PID: OnceLock<u32> = OnceLock::new();
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(*PID.get_or_init(std::process::id));
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut e = h.finish();
    while e == 0 || Some(e) == avoid {
        e = e.wrapping_add(1);
    }
    Epoch(e)
}

/// Milliseconds on a process-wide monotonic clock.
fn mono_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Kept records in seq order, borrowed from the mapping. Returned by
/// [`RingLog::iter_after`] and [`RingLog::iter_before`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    log: &'a RingLog,
    range: std::ops::Range<usize>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        self.range.next().map(|i| self.log.record(i))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|i| self.log.record(i))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests;
