//! `LogDir`: one directory of logs, a stable file name per key, idle-log removal.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::format::{self, HEADER_LEN};
use crate::{Epoch, LogConfig, OpenReport, RingLog, StoreError};

/// File name suffix of log files; other files in the directory are left alone.
const SUFFIX: &str = ".rlog";
/// Longest escaped key prefix kept in a file name (the hash keeps names unique).
const NAME_PREFIX_MAX: usize = 96;

/// A directory of ring logs, one file per key.
///
/// File names are `<escaped key prefix>-<16 hex digits of FNV-1a 64 of the key>.rlog`.
/// The escaped prefix keeps names readable (`[A-Za-z0-9._-]` as is, any other byte as
/// `%XX`, cut at 96 characters); the hash makes long keys and keys sharing a prefix
/// distinct. Two keys mapping to the same name would need the same prefix and a 64-bit
/// hash collision; should it happen anyway, the header's stored key differs, so opening
/// the other key starts a new epoch (reason "key mismatch") instead of serving the
/// wrong history.
///
/// Each file must be open in at most one [`RingLog`] at a time, in one process.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
}

impl LogDir {
    /// Uses `root` as the log directory, creating it (and its parents) if absent.
    pub fn new(root: &Path) -> Result<LogDir, StoreError> {
        fs::create_dir_all(root).map_err(StoreError::io("create directory", root))?;
        Ok(LogDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stable file path for a key.
    pub fn path_for(&self, key: &[u8]) -> PathBuf {
        self.root.join(file_name(key))
    }

    /// Opens (creating if absent) the log for `key`. See [`RingLog::open`].
    pub fn open(&self, key: &[u8], cfg: &LogConfig) -> Result<(RingLog, OpenReport), StoreError> {
        RingLog::open(&self.path_for(key), key, cfg)
    }

    /// Like [`LogDir::open`]; a log created by this call gets `epoch_if_created`.
    /// See [`RingLog::open_with_epoch`].
    pub fn open_with_epoch(
        &self,
        key: &[u8],
        cfg: &LogConfig,
        epoch_if_created: Option<Epoch>,
    ) -> Result<(RingLog, OpenReport), StoreError> {
        RingLog::open_with_epoch(&self.path_for(key), key, cfg, epoch_if_created)
    }

    /// Whether a log file exists for `key` (without opening or mapping it).
    pub fn exists(&self, key: &[u8]) -> bool {
        self.path_for(key).exists()
    }

    /// Deletes log files whose newest append is at least `ttl_ms` older than `now_ms`,
    /// skipping keys for which `is_open` says true. Returns how many were removed.
    ///
    /// Only the header page of each file is read (no mapping). A file with no append
    /// yet, or with an unreadable header, is judged by its modification time instead;
    /// `now_ms` is therefore wall-clock epoch milliseconds, like `append`'s `ts_ms`.
    /// A file whose header is unreadable has no key to ask `is_open` about; it cannot be
    /// open, because opening rewrites a bad header.
    pub fn remove_idle(
        &self,
        now_ms: u64,
        ttl_ms: u64,
        is_open: impl Fn(&[u8]) -> bool,
    ) -> Result<usize, StoreError> {
        let entries = fs::read_dir(&self.root).map_err(StoreError::io("list", &self.root))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &self.root))?;
            let path = entry.path();
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(SUFFIX))
            {
                continue;
            }
            let Some(idle_since) = idle_since(&path, &is_open) else {
                continue;
            };
            if now_ms.saturating_sub(idle_since) >= ttl_ms {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    // Removed by someone else meanwhile: nothing left to do.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", path)(e)),
                }
            }
        }
        Ok(removed)
    }
}

/// When the log at `path` was last written to, or `None` to leave it alone (open, or
/// vanished while we looked).
fn idle_since(path: &Path, is_open: &impl Fn(&[u8]) -> bool) -> Option<u64> {
    let mut file = fs::File::open(path).ok()?;
    let mut page = vec![0; HEADER_LEN];
    let read = read_up_to(&mut file, &mut page);
    let mtime_ms = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let Ok(header) = format::read_file_header(&page[..read]) else {
        return Some(mtime_ms);
    };
    if is_open(header.key) {
        return None;
    }
    match format::read_slot(&page, header.epoch) {
        Some(st) if st.last_append_ms > 0 => Some(st.last_append_ms),
        _ => Some(mtime_ms),
    }
}

fn read_up_to(file: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// `<escaped prefix>-<fnv64 hex>.rlog`.
fn file_name(key: &[u8]) -> String {
    let mut name = String::with_capacity(NAME_PREFIX_MAX + 24);
    for (i, &b) in key.iter().enumerate() {
        // A leading '.' would make a hidden file (or "." / ".."-like names).
        let plain = is_plain(b) && !(i == 0 && b == b'.');
        let escaped_len = if plain { 1 } else { 3 };
        if name.len() + escaped_len > NAME_PREFIX_MAX {
            break;
        }
        if plain {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(&format!("-{:016x}{SUFFIX}", fnv1a64(key)));
    name
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// FNV-1a, 64 bit: stable across versions and platforms (std's hashers are not).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
