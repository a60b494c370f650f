//! One server per data directory: an exclusive `flock` on `<data_dir>/LOCK`, held for
//! the life of the process (the kernel drops it when the process dies, kill -9 included,
//! so a crash never leaves a stale lock behind). The file holds the holder's pid, so a
//! second server can say who has the directory.
//!
//! [`probe_writable`] is what `/readyz` relies on for "the data directory is writable":
//! the main thread calls it once a second and caches the answer; requests never touch
//! the disk.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the file the write probe creates and removes.
pub const PROBE_FILE: &str = ".write-probe";

/// Creates a small file in `dir`, writes to it and removes it: fails when the directory
/// is read-only, out of space (delayed allocation reserves a block at `write`), or gone.
pub fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let written = writeln!(file, "{}", std::process::id());
    drop(file);
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "data directory {dir} is in use by another ringcast process (pid {pid}); \
         stop it or start this one with another --data-dir"
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid as it wrote it (`unknown` if unreadable).
        pid: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed and takes its lock.
pub fn lock(dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |source| LockError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::InUse {
                dir: dir.to_path_buf(),
                pid: if pid.is_empty() {
                    "unknown".to_owned()
                } else {
                    pid.to_owned()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_lock_frees_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        drop(held);
        assert!(lock(dir.path()).is_ok());
    }

    #[test]
    fn the_write_probe_leaves_nothing_and_fails_where_nothing_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(dir.path()).unwrap();
        assert!(!dir.path().join(PROBE_FILE).exists());
        // A path under a regular file is never a writable directory (even for root).
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(probe_writable(&file).is_err());
        assert!(probe_writable(&dir.path().join("gone")).is_err());
    }
}
