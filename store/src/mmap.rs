//! The only module with `unsafe`: mapping log files (v1) and segment files (v2) into
//! memory.
//!
//! A [`Mapping`] owns a shared, writable mapping of the whole file. The file descriptor is
//! closed as soon as the mapping exists (the mapping keeps the file alive), so thousands
//! of open logs cost thousands of mappings (`vm.max_map_count`) but no descriptors.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;

use memmap2::{MmapMut, MmapRaw};

use crate::slot_format;

/// A read-write shared mapping of one log file.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: MmapMut,
}

/// A mapping plus what the file looked like before `open` resized it.
#[derive(Debug)]
pub(crate) struct Opened {
    pub mapping: Mapping,
    /// The file did not exist.
    pub created: bool,
    /// Its length before `open` (0 if created).
    pub prior_len: u64,
}

/// Opens (creating if absent) the file at `path`, sets its length to `len` (sparse: the
/// disk holds only pages that get written) and maps all of it.
pub(crate) fn open(path: &Path, len: u64) -> io::Result<Opened> {
    let (file, created) = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            (OpenOptions::new().read(true).write(true).open(path)?, false)
        }
        Err(e) => return Err(e),
    };
    let prior_len = file.metadata()?.len();
    if prior_len != len {
        file.set_len(len)?;
    }
    // SAFETY: memmap2 requires that the file is not truncated or modified by anyone else
    // while mapped (a truncation would turn accesses into SIGBUS; outside writes would
    // change bytes under `&[u8]` borrows). The store's contract (crate docs, LogDir docs)
    // is that a log file is owned by exactly one `RingLog` in one process; `LogDir`
    // removes only files the caller says are not open. The length was just set to `len`,
    // so the whole mapping is backed by the file.
    let map = unsafe { MmapMut::map_mut(&file)? };
    // The mapping keeps the file alive; dropping `file` here closes the descriptor.
    drop(file);
    Ok(Opened {
        mapping: Mapping { map },
        created,
        prior_len,
    })
}

impl Mapping {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// msync `[offset, offset + len)` (memmap2 widens it to page boundaries).
    pub(crate) fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.map.flush_range(offset, len)
    }

    /// msync the whole file.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
}

/// A read-write shared mapping of one segment file of a [`crate::ShardStore`].
///
/// Built on `MmapRaw` so that a [`FlushHandle`] to the same mapping can travel to the
/// store's background thread, which only ever asks the kernel to write pages back
/// (msync) and never reads or writes the bytes itself. Byte access goes through
/// `&self`/`&mut self` of the one `SegmentMap`, which is not `Clone`, so Rust's aliasing
/// rules hold for every slice handed out.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    raw: Arc<MmapRaw>,
}

/// msync-only access to a segment's mapping, for the background thread.
#[derive(Debug, Clone)]
pub(crate) struct FlushHandle {
    raw: Arc<MmapRaw>,
}

impl SegmentMap {
    /// Creates `path` (which must not exist), sets its length to `len` (sparse) and maps it.
    pub(crate) fn create(path: &Path, len: u64) -> io::Result<SegmentMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(len)?;
        let map = SegmentMap::map(file)?;
        map.no_read_ahead_from(0);
        Ok(map)
    }

    /// Maps an existing segment file at its current length.
    pub(crate) fn open_existing(path: &Path) -> io::Result<SegmentMap> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        SegmentMap::map(file)
    }

    fn map(file: std::fs::File) -> io::Result<SegmentMap> {
        if file.metadata()?.len() == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty segment"));
        }
        // Creating an `MmapRaw` is safe; the obligations (a segment file belongs to exactly
        // one `ShardStore` in one process, nobody truncates it while mapped) are stated
        // where bytes are accessed, in `bytes`/`bytes_mut`.
        let raw = memmap2::MmapOptions::new().map_raw(&file)?;
        drop(file);
        Ok(SegmentMap { raw: Arc::new(raw) })
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    /// Turns read-ahead off for the mapping from `offset` (rounded down to a page) to its
    /// end: the part of a segment that is holes of its sparse file (slots not used yet,
    /// or all of a segment of page-sized slots). The first touch of a hole is a
    /// page-cache miss, and with read-ahead on the kernel zero-fills the device's whole
    /// read-ahead window into the page cache inside that fault, on the shard thread
    /// (with `read_ahead_kb = 8192`, ~17 ms every 8 MiB of new slots: the W2 p99, bench
    /// README). With it off each fault fills one page. The price (since Linux 6.3):
    /// reclaim ignores accessed bits in this range; see `docs/store-format.md`, "What
    /// the advice costs".
    ///
    /// Advisory: if the kernel refuses (it cannot for a valid range of a live mapping),
    /// the store works as before, only with those stalls.
    pub(crate) fn no_read_ahead_from(&self, offset: usize) {
        let offset = offset.min(self.raw.len());
        let _ = self
            .raw
            .advise_range(memmap2::Advice::Random, offset, self.raw.len() - offset);
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len()` bytes (the file is owned by one
        // `ShardStore` in one process and never truncated while mapped, so no SIGBUS) for as long as `self.raw` lives
        // (we hold an `Arc` to it). The only other holders of the `Arc` are
        // `FlushHandle`s, which call msync and never touch the bytes, and there is no
        // other `SegmentMap` for this mapping, so no `&mut` to these bytes can exist
        // while this shared borrow of `self` does.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr(), self.raw.len()) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` proves that no other slice from this
        // `SegmentMap` is alive, and nobody else reads or writes the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr(), self.raw.len()) }
    }

    /// Writes every page of `range` back unchanged (one byte per page), so the kernel
    /// counts them dirty again: after a failed writeback it may have marked them clean,
    /// and an msync would then write nothing.
    pub(crate) fn redirty(&mut self, range: std::ops::Range<usize>) {
        let bytes = self.bytes_mut();
        let end = range.end.min(bytes.len());
        for at in (range.start..end).step_by(4096) {
            let b = &mut bytes[at];
            // SAFETY: `b` is a valid, aligned, exclusive reference into the mapping
            // (`bytes_mut` takes `&mut self`); the volatile read and write keep the
            // compiler from dropping a store of the value that is already there.
            unsafe { std::ptr::write_volatile(b, std::ptr::read_volatile(b)) };
        }
    }

    /// msync `[offset, offset + len)` now, on the calling thread.
    pub(crate) fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        #[cfg(test)]
        sync_journal::record(self, offset, len);
        self.raw.flush_range(offset, len)
    }

    pub(crate) fn flush_handle(&self) -> FlushHandle {
        FlushHandle {
            raw: Arc::clone(&self.raw),
        }
    }
}

impl FlushHandle {
    /// Normal read-ahead (and, since Linux 6.3, reclaim's use of accessed bits) for the
    /// mapping's first `until` bytes, rounded down to a page: the part of a small-slot
    /// segment whose pages every used slot has written. Advisory, as
    /// [`SegmentMap::no_read_ahead_from`].
    pub(crate) fn read_ahead_until(&self, until: usize) {
        let page = slot_format::SEG_HEADER_LEN;
        let until = until.min(self.raw.len()) / page * page;
        let _ = self.raw.advise_range(memmap2::Advice::Normal, 0, until);
    }

    /// Faults `[offset, offset + len)` (widened to pages) in for writing
    /// (`MADV_POPULATE_WRITE`, Linux 5.14+): page-cache pages for the file's holes,
    /// present and writable in the page tables, so the shard's first write to them takes
    /// no fault. The bytes stay what they were (zeros, for a hole); the pages become
    /// dirty, so the file holds them on disk from the next writeback. Advisory, as
    /// [`SegmentMap::no_read_ahead_from`]: an older kernel refuses it and the shard
    /// faults the pages in itself, as before.
    pub(crate) fn populate_for_write(&self, offset: usize, len: usize) {
        let page = slot_format::SEG_HEADER_LEN;
        let start = offset.min(self.raw.len()) / page * page;
        let end = (offset + len).min(self.raw.len());
        if end > start {
            let _ = self
                .raw
                .advise_range(memmap2::Advice::PopulateWrite, start, end - start);
        }
    }

    /// msync `[offset, offset + len)` (memmap2 widens it to page boundaries).
    pub(crate) fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.raw.flush_range(offset, len)
    }
}

#[cfg(test)]
pub(crate) mod tests;

/// Tests only: the pages each msync on this thread wrote, as they were then, so a test
/// can build the disk image a power loss right now would leave (each page as last
/// msynced, nothing written back by the kernel on its own).
#[cfg(test)]
pub(crate) mod sync_journal {
    use std::cell::RefCell;

    use super::SegmentMap;

    /// (mapping's base address, page-aligned offset, the pages' bytes).
    pub(crate) type Synced = Vec<(usize, usize, Vec<u8>)>;

    thread_local! {
        static JOURNAL: RefCell<Option<Synced>> = const { RefCell::new(None) };
    }

    /// Starts recording this thread's msyncs.
    pub(crate) fn start() {
        JOURNAL.with(|j| *j.borrow_mut() = Some(Vec::new()));
    }

    /// Stops recording and returns what was recorded.
    pub(crate) fn take() -> Synced {
        JOURNAL.with(|j| j.borrow_mut().take().unwrap_or_default())
    }

    pub(super) fn record(map: &SegmentMap, offset: usize, len: usize) {
        JOURNAL.with(|j| {
            if let Some(j) = j.borrow_mut().as_mut() {
                let bytes = map.bytes();
                let from = offset & !(4096 - 1);
                let to = (offset + len).next_multiple_of(4096).min(bytes.len());
                j.push((bytes.as_ptr() as usize, from, bytes[from..to].to_vec()));
            }
        });
    }
}
