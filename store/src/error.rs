//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything the store can fail with.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem or msync call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "msync", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The `LogConfig` cannot describe a usable ring.
    #[error("invalid log config: {0}")]
    InvalidConfig(&'static str),
    /// The key does not fit in the header.
    #[error("log key is {len} bytes; the header holds at most {max}")]
    KeyTooLong {
        /// Length given.
        len: usize,
        /// Largest accepted.
        max: usize,
    },
    /// The uid does not fit in a record header's 16-bit length.
    #[error("uid is {len} bytes; a record holds at most {max}")]
    UidTooLong {
        /// Length given.
        len: usize,
        /// Largest accepted.
        max: usize,
    },
    /// A segment file was written by a newer format than this binary reads: refused, the
    /// file left as it is (run the newer binary, or move the data directory aside).
    #[error("{path}: history format version {found} is newer than this binary reads ({supported}); run the newer ringcast or move the data directory aside")]
    NewerFormat {
        /// The segment file.
        path: PathBuf,
        /// The version it says.
        found: u32,
        /// The version this binary writes and reads.
        supported: u32,
    },
    /// A record larger than any slot of its ring holds (`max_bytes_per_ring`): refused,
    /// nothing changed (no seq consumed).
    #[error("a record of {len} bytes is larger than a ring keeps ({max} bytes)")]
    RecordTooLarge {
        /// The record's length as stored (header, uid, payload, padding).
        len: u64,
        /// The largest record the ring's biggest slot holds.
        max: u64,
    },
    /// A kept record no longer matches its checksum (found by [`crate::RingLog::verify`]).
    #[error("record seq {seq} at data offset {offset} is damaged: {reason}")]
    Damaged {
        /// Seq the record should carry.
        seq: u64,
        /// Its offset in the data region.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },
    /// `create` was given a key that already has a ring.
    #[error("the key already has a ring")]
    KeyExists,
    /// The byte bound leaves no room for a new ring, or for a record that needs its ring
    /// to grow, even with every other unpinned ring evicted; nothing was evicted (the
    /// engine answers `overloaded`).
    #[error("store is full: the byte bound leaves no room, even with every unpinned ring evicted")]
    Full,
    /// The `RingId` was freed or evicted.
    #[error("unknown or freed ring")]
    UnknownRing,
    /// The `data` span given to `append` is not inside the payload.
    #[error("data span {start}..{end} is not inside a payload of {payload_len} bytes")]
    DataSpan {
        /// Span start.
        start: u32,
        /// Span end.
        end: u32,
        /// Payload length.
        payload_len: usize,
    },
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}
