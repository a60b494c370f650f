//! The process's descriptor table, grown once at start-up to the size the server may need.
//!
//! The kernel keeps a process's open descriptors in one table that starts with 64 slots
//! and doubles when a new descriptor does not fit (`expand_files`). When threads share the
//! table, as the shards do, each doubling waits for an RCU grace period
//! (`synchronize_rcu`) inside the `accept4` that needed the slot: 15–20 ms on a small VM,
//! with the whole shard stopped in uninterruptible sleep and every connection on it
//! waiting. A storm of 1,000 new connections crosses four doublings (128 … 1,024); in a
//! trace of one (`perf record -e sched:sched_switch -g`: `accept4 → alloc_fd →
//! expand_files → synchronize_rcu`) the shard slept 15 and 20 ms of an 80 ms storm.
//!
//! [`reserve`] takes the slot at the top of the range right away, which makes the kernel
//! size the table for all of it, and gives the slot back. The table never shrinks, so no
//! later `accept4` waits. It costs the kernel 8 bytes and two bits per slot: 800 KB at a
//! 100,000-descriptor limit. It is done before the shard threads start, when no grace
//! period is needed if the process has a single thread.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Descriptors beyond `max_connections` the server may hold: listeners, io_uring rings
/// and their eventfds, history segment files, the data directory lock, log files. The
/// doctor's open-file check asks for four times this (`doctor::limits::HEADROOM`).
pub const RESERVE: usize = 1024;

/// The soft `RLIMIT_NOFILE`: descriptors at or above it cannot be opened.
pub fn soft_limit() -> io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the struct it is given, which lives on
    // this stack frame for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Grows the descriptor table to hold `descriptors` slots, or as many as the soft
/// `RLIMIT_NOFILE` allows if that is fewer. Returns the number of slots asked for.
pub fn reserve(descriptors: usize) -> io::Result<usize> {
    let slots = descriptors.min(soft_limit()?);
    if slots == 0 {
        return Ok(0);
    }
    let top = libc::c_int::try_from(slots - 1).unwrap_or(libc::c_int::MAX);
    let any = File::open("/dev/null")?;
    // SAFETY: `F_DUPFD_CLOEXEC` reads no memory; it duplicates `any`, which is open for
    // the whole call, into the lowest free descriptor at or above `top`.
    let duplicate = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fcntl` just returned this descriptor as new and nothing else refers to it,
    // so it is owned here and closed exactly once, when `_owned` drops.
    let _owned = unsafe { OwnedFd::from_raw_fd(duplicate) };
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of this process's descriptor table (`FDSize` in `/proc/self/status`).
    fn table_size() -> io::Result<usize> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("FDSize:"))
            .and_then(|size| size.trim().parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no FDSize in status"))
    }

    #[test]
    fn reserving_grows_the_table_and_leaves_no_descriptor_open() {
        let want = 4096.min(soft_limit().unwrap());
        assert_eq!(reserve(want).unwrap(), want);
        assert!(table_size().unwrap() >= want, "FDSize {:?}", table_size());
        // The descriptor that grew the table took the top slot and is closed again.
        let top = std::path::PathBuf::from(format!("/proc/self/fd/{}", want - 1));
        assert!(!top.exists(), "{} is still open", top.display());
    }

    #[test]
    fn a_reservation_past_the_limit_stops_at_the_limit() {
        let limit = soft_limit().unwrap();
        if limit > 1 << 16 {
            return; // a table that large is not worth growing in a unit test
        }
        assert_eq!(reserve(limit + 10).unwrap(), limit);
        assert!(table_size().unwrap() >= limit);
    }
}
