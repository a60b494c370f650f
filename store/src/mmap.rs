//! The only module with `unsafe`: mapping a log file into memory.
//!
//! A [`Mapping`] owns a shared, writable mapping of the whole file. The file descriptor is
//! closed as soon as the mapping exists (the mapping keeps the file alive), so thousands
//! of open logs cost thousands of mappings (`vm.max_map_count`) but no descriptors.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use memmap2::MmapMut;

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
