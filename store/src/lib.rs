//! Ringcast's history store: every channel's history as a bounded, checksummed,
//! crash-safe ring of opaque records.
//!
//! The store knows nothing about WebSocket, JSON, tenants or channels. It keeps opaque,
//! already-encoded bytes under an opaque key, assigns each record the channel's next
//! [`Seq`], and forgets the oldest records once the ring is over its record or byte bound.
//!
//! Two formats (byte layouts, recovery rules and durability in `docs/store-format.md`):
//!
//! - **Version 2, [`ShardStore`]** — what the engine uses. One store per shard, owned by
//!   the shard's thread. All its channels' rings live in fixed-size slots of a few shared
//!   segment files (one mapping per segment, not per channel), so a node holds a million
//!   channels at ~512 B of disk each, and a new channel costs no syscall.
//! - **Version 1, [`RingLog`]/[`LogDir`]** — one file and one mapping per channel. Kept to
//!   read old data directories ([`migrate_v1`]) and for its tests.
//!
//! ```text
//!   engine (owner shard of a channel)
//!       │ create(key, epoch, max_records) ─► RingId      lookup(key) ─► RingId
//!       │ append(ring, ts_ms, uid, payload, data) ─► Seq  iter_after(ring, seq) ─► replay
//!       ▼                                                      ▲
//!   ShardStore ── shard_store.rs: slots, growth to bigger classes, byte-bound eviction
//!       │         ring.rs: where the next record goes, what it evicts (pure, tested)
//!       │         slot_format.rs: segment/slot headers, state slots, records (pure)
//!       │         shard_open.rs + slot_recover.rs: scan slots, rebuild index, torn tails
//!       │         space.rs: background thread — creates segments ahead of need, msyncs
//!       │         tombstones.rs: epoch + last seq of rings let go, so numbering goes on
//!       ▼
//!   mmap.rs ── the one place with `unsafe`: maps `<root>/shard-<k>/c<class>-<n>.seg`
//!       ▼
//!   page cache ──(msync per SyncPolicy: in append, or on the background thread)──► disk
//! ```
//!
//! Contract:
//!
//! - Records are written first and published second (a checksummed state slot in the
//!   ring's slot header), so a process killed mid-append leaves every earlier record
//!   intact; the next open drops the torn tail and keeps the rest. A move to a bigger
//!   slot writes the new slot completely before freeing the old one.
//! - Within one [`Epoch`] a [`Seq`] is never reused. A ring freed or evicted leaves a
//!   tombstone ([`Tombstone`]: its epoch and last seq), and the key's next ring goes on
//!   from it; a new epoch begins only when the history was lost (unrecoverable:
//!   [`ShardOpenReport`] says which; or its tombstone dropped past the cap); the caller
//!   supplies it to [`ShardStore::create`].
//! - Kept records always form one gap-free run of seqs; [`ShardStore::replay_complete`]
//!   answers "was everything after this seq kept?".
//! - A ring only ever reads and writes its own slot; rings never overlap (checked by
//!   property tests and the fuzz hook).
//! - One `ShardStore` per shard directory, in one process. The append path makes no
//!   blocking syscall except under [`SyncPolicy::EveryAppend`], and `create` waits only
//!   when the background thread has no slot ready ([`StoreStats::space_waits`]).
//!
//! API of [`ShardStore`] (all on the owning shard's thread):
//!
//! ```text
//! open(dir, StoreConfig) -> (ShardStore, ShardOpenReport)      shard_dir(root, k)
//! lookup(key) -> Option<RingId>       create(key, epoch, max_records) -> RingId
//! append(ring, ts_ms, uid, payload, data: Range<u32>) -> Seq   (RingId stays valid)
//! epoch / last_seq / first_seq / len / max_records / last_append_ms / key (ring)
//! replay_complete(ring, after)   iter_after(ring, after)   iter_before(ring, before, limit)
//! set_max_records(ring, n)   pin / unpin (ring)   free(ring)   idle_rings(older_than_ms)
//! take_evicted() -> keys      flush() (non-blocking)   sync_all() (blocking)   stats()
//! tombstone / take_tombstone / put_tombstone (key)   create_for_record_after(…, after, …)
//! migrate_v1(v1_dir, root, shards, cfg, owner_of, data_span)   reshard(root, shards, cfg, owner_of)
//! open_for_start(root, shards, cfg, owner_of, data_span) -> Started   (both, one open each)
//! ```

#![deny(unsafe_code)]

mod chunked_vec;
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
pub mod split_map;
mod tombstones;

use std::fmt;

pub use dir::LogDir;
pub use error::StoreError;
pub use log::{Iter, RingLog};
pub use migrate::{migrate_v1, open_for_start, reshard, MigrateReport, ReshardReport, Started};
pub use shard_open::ShardOpenReport;
pub use shard_store::{RingId, ShardIter, ShardStore, StoreConfig, StoreStats, DEFAULT_TOMBSTONES};
pub use split_map::SplitMap;
pub use tombstones::Tombstone;

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

/// When `append` asks the kernel to write the mapping back to disk (msync). For
/// [`ShardStore`], `IntervalMs` and `flush` hand the msync to the store's background
/// thread; `EveryAppend` msyncs in `append`.
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

/// Bounds and durability of one v1 log.
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

/// What [`RingLog::open`] found (format v1).
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
