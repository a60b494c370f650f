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
