//! Ringcast's history store: one memory-mapped ring log per channel.
//!
//! The store knows nothing about WebSocket, JSON, tenants or channels. It keeps opaque,
//! already-encoded bytes under an opaque key, assigns each record the channel's next
//! [`Seq`], and forgets the oldest records once the log is over its record or byte bound.
//!
//! ```text
//!   engine (owner shard of a channel)
//!       │ append(ts_ms, uid, payload) ──► Seq            iter_after(seq) ──► replay
//!       ▼                                                      ▲
//!   RingLog ── ring.rs: where the next record goes, what it evicts (pure, property-tested)
//!       │      format.rs: header, state slots, record bytes, checksums (pure)
//!       ▼
//!   mmap.rs ── the one place with `unsafe`: maps `<root>/<name>.rlog` and drops the fd
//!       ▼
//!   page cache ──(msync per SyncPolicy, or the engine's timer calling flush())──► disk
//! ```
//!
//! Contract:
//!
//! - Records are written first and published second (a small checksummed state slot in
//!   the header), so a process killed mid-append leaves every earlier record intact; the
//!   next [`RingLog::open`] drops the torn tail and keeps the rest.
//! - Within one [`Epoch`] a [`Seq`] is never reused. A new epoch (seq restarting at 1)
//!   begins only when the history was lost: the file was absent, its header was corrupt,
//!   its key differed, or its byte geometry changed. [`OpenReport`] says which.
//! - Kept records always form one gap-free run of seqs. That run ends at
//!   [`RingLog::last_seq`] except when a seq was consumed without being kept (a record too
//!   large for the ring, or published records lost to a power failure);
//!   [`RingLog::replay_complete`] answers "was everything after this seq kept?".
//! - One `RingLog` per file, in one process: the engine opens a channel's log on the shard
//!   that owns the channel. No file descriptor stays open after `open` returns.
//!
//! The byte format, recovery rules and durability table are in `docs/store-format.md`.

#![deny(unsafe_code)]

mod dir;
mod error;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod log;
mod migrate;
mod mmap;
mod ring;
mod shard_open;
mod shard_store;
mod slot_format;
mod slot_recover;
mod space;

use std::fmt;

pub use dir::LogDir;
pub use error::StoreError;
pub use log::{Iter, RingLog};
pub use migrate::{migrate_v1, reshard, MigrateReport, ReshardReport};
pub use shard_open::ShardOpenReport;
pub use shard_store::{RingId, ShardIter, ShardStore, StoreConfig, StoreStats};

/// Per-channel sequence number. The first record of an epoch is 1; `Seq(0)` means
/// "nothing yet" (as in `subscribed.seq` for a channel never published to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Identifies one unbroken history of a channel. Never zero; a fresh epoch is drawn at
/// random whenever the history is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// When `append` asks the kernel to write the mapping back to disk (msync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Page cache only: survives a kill -9 of the process, not a power loss.
    /// `append` never calls msync.
    Never,
    /// msync the record and then the header before `append` returns: survives a power
    /// loss once `append` has returned.
    EveryAppend,
    /// `append` msyncs the whole log when more than this many milliseconds passed since
    /// the last msync. A log that goes quiet is synced only by the engine's timer calling
    /// [`RingLog::flush`].
    IntervalMs(u32),
}

/// Bounds and durability of one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// At most this many records are kept (the tenant plan's history length).
    pub max_records: u32,
    /// Size of the ring's data region in bytes (rounded down to a multiple of 8). Record
    /// headers and padding count against it. Changing it starts a new epoch.
    pub max_bytes: u64,
    /// When appends reach the disk.
    pub sync: SyncPolicy,
}

/// One kept record, borrowed from the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Seq assigned by `append`.
    pub seq: Seq,
    /// Timestamp the caller gave to `append` (epoch milliseconds).
    pub ts_ms: u64,
    /// Optional user id bytes (at most 65,535).
    pub uid: Option<&'a [u8]>,
    /// The opaque payload, byte for byte as appended: what a replay sends.
    pub payload: &'a [u8],
    /// `(start, len)` of the message's `data` inside `payload` (format v2 records keep
    /// the span `append` was given; v1 records say "the whole payload").
    pub(crate) data_span: (u32, u32),
}

impl<'a> Record<'a> {
    /// The message's `data` bytes inside [`Record::payload`], as the span given to
    /// [`ShardStore::append`] said, so history pages need no re-parsing.
    pub fn data(&self) -> &'a [u8] {
        let (start, len) = (self.data_span.0 as usize, self.data_span.1 as usize);
        self.payload.get(start..start + len).unwrap_or_default()
    }
}

/// What [`RingLog::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// The file did not exist and was created (with a new epoch).
    pub created: bool,
    /// Records the header had published that failed their checksum or seq continuity and
    /// were dropped (only possible after a power loss or outside damage; a process
    /// killed mid-append loses only the unacknowledged record and reports 0).
    pub torn_tail_dropped: u32,
    /// Why an existing file's history was discarded and a new epoch started; `None` when
    /// the history was kept or the file was new.
    pub new_epoch_reason: Option<String>,
}
