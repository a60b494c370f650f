//! What the load generator reads about the server and the box from `/proc`.

use std::fs;

/// utime + stime of `pid`, in seconds (from `/proc/<pid>/stat`), summed over its threads.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so utime (14) is index 11, stime 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident set size of `pid` in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmRSS:")
}

/// What `/proc/<pid>/status` says of a process's resident memory, read at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: every resident page, file pages mapped included (Ringcast's history
    /// segments are mmapped files, so they count here while the kernel keeps them).
    pub rss: u64,
    /// `RssAnon`: resident anonymous pages only (heap, stacks, queues): what the
    /// process holds itself, without its mapped files (found in review: W6's growth
    /// could be history pages as well as queues).
    pub rss_anon: u64,
}

/// `VmRSS` and `RssAnon` of `pid` in bytes, from one read of `/proc/<pid>/status`.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory {
        rss: kib_field(&status, "VmRSS:")?,
        rss_anon: kib_field(&status, "RssAnon:")?,
    })
}

/// Kernel slab memory of the whole box in bytes (`Slab` in `/proc/meminfo`). Socket
/// buffers of BOTH ends of a loopback connection land here.
pub fn slab_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "Slab:")
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The most a TCP socket's send buffer grows to, in bytes: the third field of
/// `/proc/sys/net/ipv4/tcp_wmem` (4 MiB on this box).
pub fn tcp_wmem_max() -> Option<u64> {
    nth_number(&fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").ok()?, 2)
}

/// A TCP socket's receive buffer to begin with, in bytes: the second field of
/// `/proc/sys/net/ipv4/tcp_rmem` (128 KiB on this box). One that is not read does not
/// grow past it.
pub fn tcp_rmem_default() -> Option<u64> {
    nth_number(&fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").ok()?, 1)
}

/// The `n`-th (from 0) whitespace-separated number of `text`.
fn nth_number(text: &str, n: usize) -> Option<u64> {
    text.split_whitespace().nth(n)?.parse().ok()
}

/// CPU time the hypervisor gave to others while this box's CPUs wanted it (`steal` of
/// the `cpu` line of `/proc/stat`, all CPUs), in milliseconds. A phase with much of it
/// saw stalls that are neither the server's nor the load generator's.
pub fn steal_ms() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal …
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal as f64 * 1000.0 / clock_ticks())
}

/// Now on `CLOCK_MONOTONIC`, in microseconds: the clock `perf record -k CLOCK_MONOTONIC`
/// stamps samples with, so a latency trace lines up with a server profile.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Raises RLIMIT_NOFILE to its hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit; setting soft = hard is always permitted.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        // Burn a little CPU so the counter is not trivially zero on coarse clocks.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(rss_bytes(me).unwrap() > 100 * 1024);
        let m = memory(me).unwrap();
        assert!(m.rss_anon > 0 && m.rss_anon <= m.rss, "{m:?}");
        assert!(slab_bytes().unwrap() > 0);
        assert!(steal_ms().unwrap() >= 0.0);
        assert!(tcp_wmem_max().unwrap() > 0);
        assert!(tcp_rmem_default().unwrap() > 0);
        assert_eq!(nth_number("4096\t131072\t33554432\n", 1), Some(131072));
        assert_eq!(nth_number("4096 16384", 2), None);
        assert_eq!(
            kib_field("Foo:   12 kB\nSlab:  3 kB\n", "Slab:"),
            Some(3072)
        );
    }
}
